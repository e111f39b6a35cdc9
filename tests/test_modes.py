"""Functions that run a model in eval mode give every module its own mode back: a caller's mixed modes (a model in
training whose embeddings are in eval mode) survive, also when the function fails."""

from __future__ import annotations

import pytest
import torch

from hf_adaprune import count_flops, model_profile
from hf_adaprune.families import find_groups
from hf_adaprune.post_training import evaluate, mask_gradient_scores
from hf_adaprune.reporting.latency import compare_latency

from conftest import tiny_model
from test_post_training import batches_for, labelled_examples


def mixed_modes_model():
    model = tiny_model("bert").train()
    model.bert.embeddings.eval()  # e.g. frozen embeddings with their dropout off
    return model


def modes(model):
    return [module.training for module in model.modules()]


def inputs():
    return {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), "attention_mask": torch.ones(2, 4, dtype=torch.long)}


CALLS = {
    "count_flops": lambda m: count_flops(m, inputs()),
    "model_profile": lambda m: model_profile(m, seq_len=16),
    "compare_latency": lambda m: compare_latency({"m": m}, inputs(), repeats=1, warmup=0),
    "evaluate": lambda m: evaluate(m, [dict(inputs(), labels=torch.tensor([0, 1]))], "accuracy", progress=False),
    "mask_gradient_scores": lambda m: mask_gradient_scores(m, find_groups(m), batches_for(m, labelled_examples(8)),
                                                           progress=False),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_module_keeps_its_own_mode(name):
    model = mixed_modes_model()
    before = modes(model)
    CALLS[name](model)
    assert modes(model) == before


def test_export_onnx_gives_each_module_its_mode_back(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install onnx onnxruntime")
    from hf_adaprune import export_onnx

    model = mixed_modes_model()
    before = modes(model)
    export_onnx(model, tmp_path / "onnx")
    assert modes(model) == before


def test_count_flops_that_fails_gives_the_modes_back():
    model = mixed_modes_model()
    before = modes(model)
    too_long = {"input_ids": torch.ones(1, model.config.max_position_embeddings + 8, dtype=torch.long)}
    with pytest.raises((IndexError, RuntimeError)):
        count_flops(model, too_long)
    assert modes(model) == before
