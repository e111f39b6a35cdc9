"""Bad input to the library's entry points: refused before any work and before the user's model changes, with a
message that says what is wrong."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from datasets import Dataset

from hf_adaprune import get_masks, post_training_prune, save_pruned
from hf_adaprune.deploy import export_onnx, prune_positions, prune_vocabulary, save_int8

from conftest import text_batch, tiny_model
from test_surgery import random_masks

HAS_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None


def masked_model():
    model = tiny_model("bert")
    random_masks(model)
    return model


def untouched(model, weights) -> bool:
    return get_masks(model) is not None and all(torch.equal(value, weights[name])
                                                for name, value in model.state_dict().items())


def writers():
    yield "save_pruned", save_pruned
    yield "save_int8", save_int8
    if HAS_ONNX:
        yield "export_onnx", export_onnx


@pytest.mark.parametrize("name, write", list(writers()))
def test_a_folder_that_cannot_be_made_is_refused_before_the_model_is_compacted(tmp_path, name, write):
    (tmp_path / "a_file").write_text("mine")
    for folder in (tmp_path / "a_file", tmp_path / "a_file" / "model"):
        model = masked_model()
        weights = {key: value.clone() for key, value in model.state_dict().items()}
        with pytest.raises(NotADirectoryError, match=f"cannot save into {folder}: {tmp_path / 'a_file'} is a file"):
            write(model, folder)
        assert untouched(model, weights), f"{name} compacted the model before failing"
    assert (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.parametrize("name, write", list(writers()))
def test_a_model_passed_as_the_tokenizer_is_refused(tmp_path, name, write):
    model = masked_model()
    weights = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(TypeError, match="tokenizer= got a BertForSequenceClassification: pass the model's tokenizer"):
        write(model, tmp_path / "out", tokenizer=tiny_model("bert"))
    assert untouched(model, weights) and not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_ONNX, reason="onnx / onnxruntime not installed")
def test_export_onnx_refuses_a_half_precision_model_before_compacting_it(tmp_path):
    model = masked_model().half()
    with pytest.raises(ValueError, match="ONNX export starts from a float32 model; call model.float"):
        export_onnx(model, tmp_path / "onnx")
    assert get_masks(model) is not None, "still masked: not compacted"


def test_post_training_prune_refuses_an_output_dir_under_a_file_before_pruning_in_place(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    model = tiny_model("bert")
    weights = {key: value.clone() for key, value in model.state_dict().items()}
    batch = text_batch(batch=8, seq=11)
    rows = Dataset.from_dict({**{k: v.tolist() for k, v in batch.items()}, "labels": [0, 1, 2, 0, 1, 2, 0, 1]})
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        post_training_prune(model, rows, 0.5, eval_dataset=rows, inplace=True, seq_len=16,
                            output_dir=tmp_path / "a_file" / "out")
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())
    assert model.config.num_attention_heads == 4 and get_masks(model) is None


def test_keep_ids_as_one_string_is_refused():
    from test_deploy_vocabulary import minilm_tokenizer, sst2_sentences, tiny_bert

    tokenizer = minilm_tokenizer()
    model = tiny_bert(len(tokenizer))
    for name, value in (("keep_ids", "12"), ("keep_tokens", "w5")):
        with pytest.raises(ValueError, match=f"{name} is one string; pass a list"):
            prune_vocabulary(model, tokenizer, sst2_sentences(n=20), **{name: value})
    assert model.config.vocab_size == len(tokenizer)


def test_prune_positions_refuses_a_bool_length():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="max_length=True: give the longest input"):
        prune_positions(model, True)
    assert model.bert.embeddings.position_embeddings.num_embeddings == 64


@pytest.mark.skipif(not HAS_ONNX, reason="onnx / onnxruntime not installed")
def test_quantize_onnx_refuses_one_string_and_quantized_graphs(tmp_path):
    from hf_adaprune.deploy import quantize_onnx

    with pytest.raises(ValueError, match=r"files='model.onnx' is one string; pass a list of graph names"):
        quantize_onnx(tmp_path, files="model.onnx")
    with pytest.raises(ValueError, match="model.int8.onnx is a quantized graph already"):
        quantize_onnx(tmp_path, files=["model.int8.onnx"])


def test_post_training_prune_names_rows_tokenized_for_another_model():
    model = tiny_model("bert")  # 99 token ids
    batch = text_batch(batch=4, seq=11, vocab_size=300, seed=2)
    rows = Dataset.from_dict({**{k: v.tolist() for k, v in batch.items()}, "labels": [0, 1, 2, 0]})
    largest = int(batch["input_ids"].max())
    with pytest.raises(ValueError, match=f"calibration_dataset holds token id {largest}, but the model's embedding "
                                         "table has 99 rows: the rows were tokenized with another model's"):
        post_training_prune(model, rows, 0.5, eval_dataset=rows, seq_len=16)


def test_model_profile_and_compare_profiles_refuse_what_they_cannot_measure():
    from hf_adaprune import compare_profiles, model_profile

    model = tiny_model("bert")
    for kwargs, message in ((dict(seq_len=0), "seq_len must be a whole number >= 1, got 0"),
                            (dict(seq_len="128"), "seq_len must be a whole number >= 1, got '128'"),
                            (dict(batch_size=0), "batch_size must be a whole number >= 1, got 0"),
                            (dict(seq_len=1000), r"seq_len 1000 exceeds the model's max_position_embeddings \(64\)")):
        with pytest.raises(ValueError, match=message):
            model_profile(model, **kwargs)
    with pytest.raises(TypeError, match=r"compare_profiles takes two model_profile\(...\) results"):
        compare_profiles(model, model)


def test_attach_masks_refuses_groups_found_on_another_model_naming_the_group():
    """DistilBERT groups given for a BERT failed in torch's get_submodule: 'BertModel has no attribute transformer'."""
    from hf_adaprune import attach_masks, compact, find_groups

    bert, distilbert = tiny_model("bert"), tiny_model("distilbert")
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in bert.modules())
    with pytest.raises(ValueError, match=r"group 'transformer.layer.0.attention' is not in this "
                                         r"BertForSequenceClassification: it has no module 'transformer.layer.0."
                                         r"attention'.*Pass groups found on this model: hf_adaprune.find_groups"):
        attach_masks(bert, groups=find_groups(distilbert))
    deeper = tiny_model("bert", num_hidden_layers=4)  # the same family, a layer more
    with pytest.raises(ValueError, match=r"group 'encoder.layer.3.attention' is not in this .*no module "
                                         r"'encoder.layer.3.attention.self'"):
        attach_masks(bert, groups=find_groups(deeper))
    assert get_masks(bert) is None  # nothing attached, no gate left behind
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in bert.modules()) == hooks
    # groups found before a compaction removed every head of an attention
    groups = find_groups(bert)
    masks = attach_masks(bert)
    masks.set("encoder.layer.1.attention", torch.zeros(4))
    compact(bert)
    with pytest.raises(ValueError, match=r"group 'encoder.layer.1.attention' has no heads left .*find_groups\(model\)"):
        attach_masks(bert, groups=groups)
    attach_masks(bert, groups=find_groups(bert))
