"""After mixed-precision training (Trainer's bf16 / fp16) accelerate leaves an autocast wrapper on model.forward:
deploy functions and timings run the model's plain forward, as the saved float32 model computes."""

from __future__ import annotations

import copy
import json
from types import MethodType

import numpy as np
import pytest
import torch
from accelerate.utils import convert_outputs_to_fp32

from hf_adaprune import compact
from hf_adaprune.deploy import quantize_int8
from hf_adaprune.plain_forward import drop_autocast_forward, has_autocast_forward, plain_forward

from conftest import text_batch, tiny_model
from test_surgery import random_masks


def trained_in_bf16():
    """A compacted tiny BERT carrying the wrapper accelerate puts on a model Trainer trains with bf16=True."""
    model = tiny_model("bert")
    random_masks(model)
    compact(model)
    # as accelerate's prepare_model under mixed_precision="bf16" (an Accelerator here would clash with the
    # process-wide state other tests' Trainers set up)
    model._original_forward = model.forward
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    model.forward = MethodType(convert_outputs_to_fp32(autocast(model.forward.__func__)), model)
    assert has_autocast_forward(model)
    return model.eval()


def test_plain_forward_runs_the_float32_forward_and_puts_the_wrapper_back():
    model, batch = trained_in_bf16(), text_batch()
    plain = drop_autocast_forward(copy.deepcopy(model))
    assert not has_autocast_forward(plain)
    with torch.no_grad():
        expected = plain(**batch).logits
        assert (model(**batch).logits - expected).abs().max() > 1e-4  # under autocast: bf16 matmuls
        with plain_forward(model):
            torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=0)
    assert has_autocast_forward(model)


def test_int8_of_a_model_trained_in_bf16_runs_and_equals_the_plain_models():
    pytest.importorskip("torch.ao.quantization")
    model, batch = trained_in_bf16(), text_batch()
    quantized = quantize_int8(model)  # failed with "expected scalar type Float but found BFloat16"
    with torch.no_grad():
        expected = quantize_int8(drop_autocast_forward(copy.deepcopy(model)))(**batch).logits
        torch.testing.assert_close(quantized(**batch).logits, expected, rtol=0, atol=0)
    assert has_autocast_forward(model)  # the caller's model is not changed


def test_onnx_export_of_a_model_trained_in_bf16_computes_in_float32(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs onnx")
    pytest.importorskip("onnxruntime", reason="the parity check needs onnxruntime")
    from hf_adaprune.deploy import export_onnx
    from test_deploy_onnx import TOL, run_encoder

    model, batch = trained_in_bf16(), text_batch()
    export_onnx(model, tmp_path)  # failed inside torch.onnx: "ScalarType ComplexDouble is an unexpected ..."
    assert has_autocast_forward(model)
    with torch.no_grad(), plain_forward(model):
        expected = model(**batch).logits.numpy()
    assert np.abs(run_encoder(tmp_path, batch) - expected).max() <= TOL
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float32"
