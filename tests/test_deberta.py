"""DeBERTa-v2 / v3: heads (with their separate position projections), FFN neurons and whole layers removed exactly;
a trained, pruned classifier whose folder loads everywhere and serves a pipeline with its Unigram tokenizer;
post-training pruning; the deploy routes (vocabulary, int8, ONNX). The tiny model of ``conftest.tiny_config`` is
set up as DeBERTa-v3 (relative positions only, position projections shared with the content ones); the broader
family tests (``ENCODER_FAMILIES``) run it too."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import transformers

from hf_adaprune import (AdaptivePruningTrainer, AutoPrunedModel, attach_masks, compact, find_groups, save_pruned)
from hf_adaprune.engine.masks import structure_count
from hf_adaprune.families import find_layer_groups

from conftest import random_biases, text_batch, tiny_model
from test_post_training import labelled_examples, pad_collator
from test_trainer import make_args, toy_dataset

TOL = 1e-5
WORDS = "the a film movie good bad great awful funny dull plot actor story boring gripping".split()


def deberta(**overrides):
    return random_biases(tiny_model("deberta-v2", **overrides))


def unigram_tokenizer():
    """A DeBERTa-v3 style tokenizer (tokenizers' Unigram, SentencePiece pieces) of a few words and the letters."""
    vocab = [("[PAD]", 0.0), ("[UNK]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
    vocab += [("\u2581" + w, -2.0 - i * 0.1) for i, w in enumerate(WORDS)]
    vocab += [("\u2581", -5.0)] + [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return transformers.DebertaV2Tokenizer(vocab=vocab)


def set_masks(model, seed=0, empty=None):
    """Random head / neuron masks (each group keeps one structure), ``empty``: an attention that loses every head."""
    masks = attach_masks(model)
    generator = torch.Generator().manual_seed(seed)
    for name, mask in masks.masks.items():
        values = (torch.rand(mask.shape, generator=generator) > 0.5).float()
        values[0] = 1
        masks.set(name, torch.zeros_like(values) if name == empty else values)
    return masks


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("pos_att_type", [["c2p"], ["p2c"], ["p2c", "c2p"]])
def test_separate_position_projections_lose_the_rows_of_their_heads(pos_att_type, tmp_path):
    """Without share_att_key each layer has its own pos_key_proj (c2p) / pos_query_proj (p2c), one slice per head:
    left whole, the reshapes by the kept head count fail or mix heads."""
    model = deberta(share_att_key=False, pos_att_type=pos_att_type)
    batch = text_batch()
    masks = set_masks(model, empty="encoder.layer.1.attention")
    expected = logits(model, batch)
    kept = int(masks.masks["encoder.layer.0.attention"].sum())
    compact(model)
    attention = model.base_model.encoder.layer[0].attention.self
    names = [n for n in ("pos_key_proj", "pos_query_proj") if hasattr(attention, n)]
    assert len(names) == len(pos_att_type)
    for name in names:
        assert getattr(attention, name).out_features == kept * 8
    assert attention.num_attention_heads == kept and attention.all_head_size == kept * 8
    assert (logits(model, batch) - expected).abs().max() <= TOL
    save_pruned(model, tmp_path)
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path),
                   transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)):
        assert (logits(loaded.eval(), batch) - expected).abs().max() <= TOL


def test_deberta_v2_absolute_positions_prune_exactly():
    """The DeBERTa-v2 layout without relative attention (absolute positions added to the input)."""
    model = deberta(relative_attention=False, pos_att_type=None, position_biased_input=True)
    batch = text_batch()
    set_masks(model, seed=3)
    expected = logits(model, batch)
    compact(model)
    assert (logits(model, batch) - expected).abs().max() <= TOL


def test_a_convolution_after_the_first_layer_keeps_the_layers(tmp_path):
    """conv_kernel_size > 0 (deberta-v2-xlarge): the encoder convolves the first layer's output, so a removed first
    layer would move the convolution; whole layers are refused before training, heads and neurons still prune."""
    model = deberta(conv_kernel_size=3)
    (stack,) = find_layer_groups(model)
    assert "convolves the first layer's output" in stack.refuse
    data = toy_dataset()
    with pytest.raises(ValueError, match="convolves the first layer's output"):
        AdaptivePruningTrainer(model=model, args=make_args(tmp_path, prune="layers"), train_dataset=data,
                               eval_dataset=data.select(range(16)))
    batch = text_batch()
    set_masks(model, seed=1)
    expected = logits(model, batch)
    compact(model)
    assert (logits(model, batch) - expected).abs().max() <= TOL


def test_sequences_longer_than_max_position_embeddings_are_read():
    """DeBERTa-v3 has no absolute position table: max_position_embeddings limits nothing it reads."""
    from hf_adaprune.families import check_sequence_length, readable_positions

    model = deberta()
    assert readable_positions(model.config) is None
    check_sequence_length(model, 4 * model.config.max_position_embeddings)  # no error
    absolute = deberta(position_biased_input=True)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        check_sequence_length(absolute, 4 * absolute.config.max_position_embeddings)


@pytest.mark.parametrize("schedule", [dict(prune="heads,ffn,layers"),
                                      dict(pruning_schedule="search_then_recover", pruning_search_steps=0,
                                           pruning_refit=True, pruning_refit_samples=32)])
def test_trainer_prunes_and_the_folder_serves_a_pipeline(tmp_path, schedule):
    tokenizer = unigram_tokenizer()
    model = tiny_model("deberta-v2", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    data = toy_dataset().map(lambda row: {"input_ids": [i % len(tokenizer) for i in row["input_ids"]]})
    trainer = AdaptivePruningTrainer(model=model, args=make_args(tmp_path, **schedule),
                                     train_dataset=data, eval_dataset=data.select(range(48)),
                                     processing_class=tokenizer)
    trainer.train()
    pruned = trainer.model.eval()
    kept = [structure_count(pruned.base_model, g) for g in find_groups(pruned)]
    assert sum(kept) < 3 * (4 + 37), "something was removed"
    trainer.save_model()
    texts = ["a gripping film", "the plot is dull and boring", "great actor, awful story zzz"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    expected = logits(pruned, batch)
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert (logits(stock, batch) - expected).abs().max() <= TOL
    classify = transformers.pipeline("text-classification", model=str(tmp_path), trust_remote_code=True, top_k=None)
    for text, scores, row in zip(texts, classify(texts), expected.softmax(-1)):
        by_label = {s["label"]: s["score"] for s in scores}
        assert [by_label[pruned.config.id2label[i]] for i in range(3)] == pytest.approx(row.tolist(), abs=1e-5), text


def test_post_training_prune_with_the_refit(tmp_path):
    from hf_adaprune import post_training_prune

    model = deberta()
    result = post_training_prune(model, labelled_examples(64), 0.5, eval_dataset=labelled_examples(24, seed=5),
                                 data_collator=pad_collator, batch_size=8, seq_len=16, progress=False,
                                 output_dir=tmp_path)
    assert result.comparison["layer_flops_removed"] == pytest.approx(0.5, abs=0.1)
    batch = pad_collator(labelled_examples(4, seed=8))
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    assert (logits(loaded, batch) - logits(result.model.eval(), batch)).abs().max() <= TOL


def test_vocabulary_and_int8_of_a_pruned_model(tmp_path):
    from hf_adaprune.deploy import load_int8, prune_vocabulary, save_int8

    tokenizer = unigram_tokenizer()
    model = deberta(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    set_masks(model, seed=2)
    compact(model)
    texts = ["a good film", "the dull plot", "a great story"]
    before = logits(model, tokenizer(texts, padding=True, return_tensors="pt"))
    new_tokenizer = prune_vocabulary(model, tokenizer, texts)
    assert model.get_input_embeddings().num_embeddings == len(new_tokenizer) < len(tokenizer)
    batch = new_tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(logits(model, batch), before), "texts whose tokens are all kept give the same logits"
    save_pruned(model, tmp_path / "float", tokenizer=new_tokenizer)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "float")
    assert reloaded(texts)["input_ids"] == new_tokenizer(texts)["input_ids"]
    quantized = save_int8(model, tmp_path / "int8")
    assert torch.equal(logits(load_int8(tmp_path / "int8"), batch), logits(quantized, batch))


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                    reason="ONNX export needs onnx and onnxruntime: pip install onnx onnxruntime")
def test_onnx_export_parity(tmp_path):
    from hf_adaprune.deploy import export_onnx, onnx_session

    model = deberta()
    set_masks(model, seed=4, empty="encoder.layer.2.attention")
    compact(model)
    export_onnx(model, tmp_path)
    session = onnx_session(tmp_path, "model.onnx")
    wanted = [i.name for i in session.get_inputs()]
    for batch in (text_batch(), text_batch(batch=4, seq=5, seed=3)):
        feed = {"token_type_ids": torch.zeros_like(batch["input_ids"]), **batch}
        got = session.run(None, {k: v.numpy() for k, v in feed.items() if k in wanted})[0]
        assert np.abs(got - logits(model, batch).numpy()).max() <= 1e-4
