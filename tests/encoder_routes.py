"""The routes an encoder classifier of any family takes, as checks the family test files share (test_deberta.py,
test_modernbert.py): train and prune, then serve the folder; post-training pruning; vocabulary and int8; ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from hf_adaprune import AdaptivePruningTrainer, AutoPrunedModel, attach_masks, compact, find_groups, save_pruned
from hf_adaprune.engine.masks import structure_count

from conftest import text_batch, tiny_model
from test_post_training import labelled_examples, pad_collator
from test_trainer import make_args, toy_dataset

TOL = 1e-5
WORDS = "the a film movie good bad great awful funny dull plot actor story boring gripping".split()
TEXTS = ["a gripping film", "the plot is dull and boring", "great actor, awful story zzz"]
REFIT_SEARCH = dict(pruning_schedule="search_then_recover", pruning_search_steps=0, pruning_refit=True,
                    pruning_refit_samples=32)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def set_masks(model, seed=0, empty=None):
    """Random head / neuron masks (each group keeps one structure), ``empty``: an attention that loses every head."""
    masks = attach_masks(model)
    generator = torch.Generator().manual_seed(seed)
    for name, mask in masks.masks.items():
        values = (torch.rand(mask.shape, generator=generator) > 0.5).float()
        values[0] = 1
        masks.set(name, torch.zeros_like(values) if name == empty else values)
    return masks


def train_prune_and_serve(tmp_path, model_type: str, tokenizer, **schedule) -> None:
    """A tiny 3-layer, 4-head, 37-neuron classifier of ``model_type`` trained and pruned on the toy rows: something
    is removed, and the saved folder gives the pruned model's logits through stock transformers and pipeline."""
    model = tiny_model(model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    data = toy_dataset().map(lambda row: {"input_ids": [i % len(tokenizer) for i in row["input_ids"]]})
    trainer = AdaptivePruningTrainer(model=model, args=make_args(tmp_path, **schedule), train_dataset=data,
                                     eval_dataset=data.select(range(48)), processing_class=tokenizer)
    trainer.train()
    pruned = trainer.model.eval()
    assert sum(structure_count(pruned.base_model, g) for g in find_groups(pruned)) < 3 * (4 + 37), "nothing removed"
    trainer.save_model()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    expected = logits(pruned, batch)
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert (logits(stock, batch) - expected).abs().max() <= TOL
    classify = transformers.pipeline("text-classification", model=str(tmp_path), trust_remote_code=True, top_k=None)
    for text, scores, row in zip(TEXTS, classify(TEXTS), expected.softmax(-1)):
        by_label = {s["label"]: s["score"] for s in scores}
        assert [by_label[pruned.config.id2label[i]] for i in range(3)] == pytest.approx(row.tolist(), abs=1e-5), text


def post_training_round_trip(tmp_path, model) -> None:
    """post_training_prune with the re-fit to half the layer FLOPs; the saved folder gives the pruned logits."""
    from hf_adaprune import post_training_prune

    result = post_training_prune(model, labelled_examples(64), 0.5, eval_dataset=labelled_examples(24, seed=5),
                                 data_collator=pad_collator, batch_size=8, seq_len=16, progress=False,
                                 output_dir=tmp_path)
    assert result.comparison["layer_flops_removed"] == pytest.approx(0.5, abs=0.1)
    batch = pad_collator(labelled_examples(4, seed=8))
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    assert (logits(loaded, batch) - logits(result.model.eval(), batch)).abs().max() <= TOL


def vocabulary_and_int8_round_trip(tmp_path, model, tokenizer) -> None:
    """On a compacted ``model``: a vocabulary cut to three texts' tokens gives those texts the same logits, its saved
    tokenizer encodes them alike, and the int8 folder reloads to the in-memory int8 model's logits."""
    from hf_adaprune.deploy import load_int8, prune_vocabulary, save_int8

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


def onnx_parity(tmp_path, model) -> None:
    """The compacted ``model`` exported to ONNX gives its logits in onnxruntime (1e-4) at two batch shapes."""
    from test_deploy_onnx import run_encoder  # skips without onnx / onnxruntime, naming them

    from hf_adaprune.deploy import export_onnx

    compact(model)
    export_onnx(model, tmp_path)
    for batch in (text_batch(), text_batch(batch=4, seq=5, seed=3)):
        assert np.abs(run_encoder(tmp_path, batch) - logits(model, batch).numpy()).max() <= 1e-4
