"""Position pruning: bit-identical outputs on inputs that fit, a smaller table that stock transformers loads, refusals
that say what is supported."""

from __future__ import annotations

import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel, compact, save_pruned
from hf_adaprune.deploy import export_onnx, load_int8, prune_positions, save_int8

from conftest import ENCODER_FAMILIES, text_batch, tiny_model
from test_surgery import random_masks

MAX_LENGTH = 16  # text_batch's 11 tokens fit; the tiny models have 64 positions


def pruned_copy(model_type, head="AutoModelForSequenceClassification"):
    model = tiny_model(model_type, head=head)
    random_masks(model)
    compact(model)
    return model


# DeBERTa-v3 reads relative positions, ModernBERT rotary ones
POSITION_TABLE_FAMILIES = [f for f in ENCODER_FAMILIES if f not in ("deberta-v2", "modernbert")]


@pytest.mark.parametrize("model_type", ["deberta-v2", "modernbert"])
def test_a_model_without_a_position_table_is_refused(model_type):
    with pytest.raises(ValueError, match="position pruning is for encoders with a learned position table .*; "
                                         f"'{model_type}' is not one of them"):
        prune_positions(pruned_copy(model_type), MAX_LENGTH)


@pytest.mark.parametrize("model_type", POSITION_TABLE_FAMILIES)
def test_outputs_identical_and_table_smaller(model_type):
    model = pruned_copy(model_type)
    batch = text_batch(seq=MAX_LENGTH)  # the longest input kept: reads the last kept row
    with torch.no_grad():
        before = model(**batch).logits
    offset = model.config.pad_token_id + 1 if model_type in ("roberta", "xlm-roberta", "mpnet") else 0
    rows = prune_positions(model, MAX_LENGTH)
    assert rows == MAX_LENGTH + offset
    assert model.get_input_embeddings().num_embeddings == 99  # the vocabulary is not touched
    base = getattr(model, model.base_model_prefix)
    assert base.embeddings.position_embeddings.weight.shape[0] == rows
    assert base.embeddings.position_ids.shape[-1] == rows
    assert model.config.max_position_embeddings == rows
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


def test_round_trip_stock_and_pruned_loaders(tmp_path):
    model = pruned_copy("bert")
    prune_positions(model, MAX_LENGTH)
    batch = text_batch(seq=MAX_LENGTH)
    with torch.no_grad():
        expected = model(**batch).logits
    save_pruned(model, tmp_path)
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path),
                   transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)):
        assert loaded.config.max_position_embeddings == MAX_LENGTH
        with torch.no_grad():
            assert torch.equal(loaded.eval()(**batch).logits, expected)
    dense = tiny_model("bert")  # unpruned: the stock class without remote code builds the smaller table too
    prune_positions(dense, MAX_LENGTH)
    with torch.no_grad():
        expected = dense(**batch).logits
    dense.save_pretrained(tmp_path / "dense")
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "dense").eval()
    assert stock.bert.embeddings.position_embeddings.num_embeddings == MAX_LENGTH
    with torch.no_grad():
        assert torch.equal(stock(**batch).logits, expected)


def test_int8_and_onnx_follow(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'hf-adaprune[deploy]')")
    model = pruned_copy("bert")
    prune_positions(model, MAX_LENGTH)
    batch = text_batch()
    quantized = save_int8(model, tmp_path / "int8")
    reloaded = load_int8(tmp_path / "int8")
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, quantized(**batch).logits)
    from hf_adaprune.deploy import OnnxEncoder

    export_onnx(model, tmp_path / "onnx")
    with torch.no_grad():
        expected = model(**batch).logits
    torch.testing.assert_close(OnnxEncoder(tmp_path / "onnx")(**batch).logits, expected, atol=1e-4, rtol=0)


def test_tokenizer_truncates_to_the_kept_positions():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    tokenizer = transformers.BertTokenizerFast(vocab=dict(zip(vocab, range(len(vocab)))))
    model = tiny_model("bert")
    prune_positions(model, MAX_LENGTH, tokenizer=tokenizer)
    assert tokenizer.model_max_length == MAX_LENGTH
    ids = tokenizer(" ".join(["a"] * 40), truncation=True, return_tensors="pt")["input_ids"]
    assert ids.shape[-1] == MAX_LENGTH
    with torch.no_grad():
        model(input_ids=ids)  # reads only kept rows


@pytest.mark.parametrize("max_length, message", [
    (0, "give the longest input"),
    (None, "give the longest input"),
    (65, "max_length can be at most 64"),
])
def test_bad_lengths_refused(max_length, message):
    model = tiny_model("bert")
    with pytest.raises(ValueError, match=message):
        prune_positions(model, max_length)
    assert model.config.max_position_embeddings == 64


def test_roberta_limit_counts_the_offset():
    model = tiny_model("roberta")
    with pytest.raises(ValueError, match="max_length can be at most 62"):
        prune_positions(model, 63)


def test_other_families_refused():
    config = transformers.MarianConfig(vocab_size=99, d_model=32, encoder_layers=1, decoder_layers=1,
                                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                                       decoder_ffn_dim=37, max_position_embeddings=64, pad_token_id=0)
    model = transformers.MarianMTModel(config)
    with pytest.raises(ValueError, match="position pruning is for encoders with a learned position table"):
        prune_positions(model, MAX_LENGTH)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "roberta"])
def test_onnx_export_of_a_table_cut_below_the_export_example(tmp_path, model_type):
    # keyword queries of at most 4 tokens: the export's traced example must not be longer than the table reads
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'hf-adaprune[deploy]')")
    from hf_adaprune.deploy import OnnxEncoder

    model = pruned_copy(model_type)
    prune_positions(model, 4)
    export_onnx(model, tmp_path)
    for length in (1, 3, 4):
        batch = text_batch(seq=length)
        with torch.no_grad():
            expected = model(**batch).logits
        torch.testing.assert_close(OnnxEncoder(tmp_path)(**batch).logits, expected, atol=1e-4, rtol=0)
