"""FLOP and parameter counts come from the real forward pass, attention included."""

from __future__ import annotations

import json

import pytest
import torch

from hf_adaprune import attach_masks, compact, compare_profiles, count_flops, format_comparison, model_profile
from hf_adaprune.reporting.flops import example_inputs

from conftest import tiny_model


def test_cpu_fused_attention_is_counted():
    # The eager implementation is plain matmuls, which FlopCounterMode always knew; the fused CPU
    # kernel (sdpa) is counted through the formula hf_adaprune registers. Both must agree.
    eager = tiny_model("bert", attn_implementation="eager")
    fused = tiny_model("bert", attn_implementation="sdpa")
    inputs = example_inputs(eager, seq_len=16)
    eager_total, _ = count_flops(eager, inputs)
    fused_total, per_module = count_flops(fused, inputs)
    assert fused_total == eager_total
    # attention scores and weighted sum: 2 matmuls of 2*b*s*s*head_dim*heads FLOPs each, per layer
    linear_flops = 2 * 16 * (3 * 32 * 32) + 2 * 16 * 32 * 32
    assert per_module["encoder.layer.0.attention.self"] == linear_flops - 2 * 16 * 32 * 32 + 2 * 2 * 16 * 16 * 32


def test_profile_before_and_after_compaction():
    model = tiny_model("bert")
    before = model_profile(model, seq_len=16)
    assert before["params"] == sum(p.numel() for p in model.parameters())
    masks = attach_masks(model)
    masks.set("encoder.layer.0.attention", torch.tensor([1.0, 0.0, 0.0, 0.0]))
    masks.set("encoder.layer.2.ffn", torch.zeros(37))
    compact(model)
    after = model_profile(model, seq_len=16)
    report = compare_profiles(before, after)
    layer0, layer2 = report["layers"][0], report["layers"][2]
    assert (layer0["heads_before"], layer0["heads_after"]) == (4, 1)
    assert (layer2["ffn_before"], layer2["ffn_after"]) == (37, 0)
    assert layer0["flops_after"] < layer0["flops_before"] and layer2["params_after"] < layer2["params_before"]
    assert report["layers"][1]["flops_after"] == report["layers"][1]["flops_before"]
    assert 0 < report["flops_removed"] < report["layer_flops_removed"] < 1
    table = format_comparison(report)
    assert "encoder.layer.0" in table and "4->1" in table and "37->0" in table


def test_comparison_is_typed_and_keeps_its_json_keys():
    from hf_adaprune.reporting.summary import LayerComparison, ProfileComparison

    model = tiny_model("bert")
    before = model_profile(model, seq_len=16)
    attach_masks(model).set("encoder.layer.1.ffn", torch.zeros(37))
    compact(model)
    report = compare_profiles(before, model_profile(model, seq_len=16))
    assert isinstance(report, ProfileComparison) and isinstance(report.layers[1], LayerComparison)
    assert (report.layers[1].ffn_before, report.layers[1].ffn_after) == (37, 0)
    data = json.loads(json.dumps(report.to_dict()))
    assert list(data) == ["seq_len", "params_before", "params_after", "params_removed", "flops_before",
                          "flops_after", "flops_removed", "layer_flops_before", "layer_flops_after",
                          "layer_flops_removed", "layers"]
    assert list(data["layers"][0]) == ["layer", "heads_before", "heads_after", "ffn_before", "ffn_after",
                                       "params_before", "params_after", "flops_before", "flops_after"]
    assert ProfileComparison.from_dict(data) == report
    assert report["flops_removed"] == report.flops_removed and dict(report)["layers"] == data["layers"]
    assert format_comparison(data) == format_comparison(report)


def test_write_json_writes_records_nested_in_results(tmp_path):
    """The examples put the comparison record itself into their results; the JSON holds its dict."""
    from hf_adaprune.reporting.report import write_json

    model = tiny_model("bert")
    report = compare_profiles(model_profile(model, seq_len=16), model_profile(model, seq_len=16))
    write_json(tmp_path / "results.json", {"comparison": report, "loss": torch.tensor(0.5)})
    data = json.loads((tmp_path / "results.json").read_text())
    assert data == {"comparison": json.loads(json.dumps(report.to_dict())), "loss": 0.5}


def test_profiles_of_other_inputs_are_not_compared():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="the profiles were taken at other seq_lens \\(8 and 16\\)"):
        compare_profiles(model_profile(model, seq_len=8), model_profile(model, seq_len=16))


@pytest.mark.parametrize("model_type", ["wav2vec2", "whisper"])
def test_audio_models_in_half_precision_are_measured_in_their_dtype(model_type):
    """A speech model loaded in bfloat16 got float32 samples: model_profile (and so the trainer's set-up, under
    every target type) failed inside torch ("Input type (float) and bias type (c10::BFloat16) should be the same")."""
    from test_layers import tiny_ctc3, tiny_whisper3

    model = (tiny_ctc3(model_type) if model_type == "wav2vec2" else tiny_whisper3()).to(torch.bfloat16)
    seq_len = 1600 if model_type == "wav2vec2" else 16  # samples; Whisper: decoder tokens
    inputs = example_inputs(model, seq_len=seq_len)
    audio = inputs.get("input_values", inputs.get("input_features"))
    assert audio.dtype == torch.bfloat16
    assert model_profile(model, seq_len=seq_len)["flops"] > 0


@pytest.mark.parametrize("model_type", ["bart", "mbart"])
def test_a_model_with_gradient_checkpointing_on_is_counted_and_keeps_its_hooks(model_type):
    """Gradient checkpointing hooks the input embeddings so that their output requires gradients; under no_grad
    the FLOP counter's module tracker asserted on the slice of it BART's position embeddings take
    ("Expected gradient function to be set"), so a run ended without its report. Counted without the hooks, which
    are back afterwards: the same counts as the model without checkpointing."""
    from test_seq2seq_families import tiny_seq2seq

    plain, checkpointed = tiny_seq2seq(model_type), tiny_seq2seq(model_type)
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed._require_grads_hooks
    assert model_profile(checkpointed, seq_len=8) == model_profile(plain, seq_len=8)
    assert checkpointed._require_grads_hooks  # put back: training goes on with them
    embeddings = checkpointed.get_input_embeddings()(torch.tensor([[3, 4]]))
    assert embeddings.requires_grad
