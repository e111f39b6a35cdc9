"""compare_latency / format_latency: result shape and round-robin order (no timing assertions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_adaprune import attach_masks, compact
from hf_adaprune.reporting.flops import example_inputs
from hf_adaprune.reporting.latency import compare_latency, format_latency

from conftest import tiny_model


class Recorder(nn.Module):
    """Records every call into a shared log, with the grad mode it ran under."""

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log
        self.linear = nn.Linear(2, 2)

    def forward(self, x):
        self.log.append((self.name, torch.is_inference_mode_enabled(), self.training))
        return self.linear(x)


def test_models_run_round_robin_under_inference_mode():
    log = []
    models = {"a": Recorder("a", log), "b": Recorder("b", log), "c": Recorder("c", log)}
    models["b"].eval()
    results = compare_latency(models, {"x": torch.ones(1, 2)}, repeats=4, warmup=2)
    assert [name for name, _, _ in log] == ["a", "b", "c"] * (2 + 4)
    assert all(inference and not training for _, inference, training in log)
    # training flags are restored
    assert models["a"].training and not models["b"].training and models["c"].training
    assert list(results) == ["a", "b", "c"]


def test_result_shape_on_tiny_models():
    dense = tiny_model("bert")
    pruned = tiny_model("bert")
    masks = attach_masks(pruned)
    masks.set("encoder.layer.0.attention", torch.tensor([1.0, 0.0, 0.0, 1.0]))
    compact(pruned)
    inputs = example_inputs(dense, seq_len=16, batch_size=2)
    results = compare_latency({"dense": dense, "pruned": pruned}, inputs, repeats=3, warmup=1)
    assert set(results) == {"dense", "pruned"}
    for r in results.values():
        assert set(r) == {"median_s", "p90_s", "mean_s", "min_s", "repeats", "threads", "speedup"}
        assert r["repeats"] == 3
        assert 0 < r["min_s"] <= r["median_s"] <= r["p90_s"]
    assert results["dense"]["speedup"] == 1.0
    assert results["pruned"]["speedup"] == pytest.approx(results["dense"]["median_s"] / results["pruned"]["median_s"])
    table = format_latency(results, title="batch 2, seq 16")
    assert table.splitlines()[0] == "batch 2, seq 16"
    assert "dense" in table and "pruned" in table and "speed-up vs 'dense'" in table


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one model"):
        compare_latency({}, {})
    with pytest.raises(ValueError, match="repeats >= 1"):
        compare_latency({"a": nn.Identity()}, {"input": torch.ones(1)}, repeats=0)


def test_generate_exactly_writes_the_same_number_of_tokens():
    """Timed generate runs the same decoding work for every model, even one that would stop at once."""
    from hf_adaprune.reporting.latency import GenerateExactly

    import transformers

    torch.manual_seed(0)
    model = transformers.MarianMTModel(transformers.MarianConfig(
        vocab_size=20, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, max_position_embeddings=32)).eval()
    with torch.no_grad():  # make end-of-sequence the best token everywhere: plain generate stops after it
        model.final_logits_bias[0, model.config.eos_token_id] = 1e4
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        assert model.generate(**inputs, max_new_tokens=6).shape[1] < 7
        out = GenerateExactly(model, 6)(**inputs)
    assert out.shape == (1, 7)  # the start token and exactly 6 new ones


def test_every_submodule_keeps_its_training_flag():
    """A wrapper built around a model in eval mode (GenerateModule) and a model whose parts are in mixed modes
    come back exactly as they were: a dropout left on would make every later evaluation random."""
    from hf_adaprune.reporting.latency import GenerateModule

    log = []
    inner = Recorder("inner", log).eval()
    inner.generate = inner.forward
    wrapper = GenerateModule(inner)
    assert not wrapper.training  # takes the model's mode, not nn.Module's default
    mixed = Recorder("mixed", log)
    mixed.linear.eval()
    compare_latency({"wrapper": wrapper, "mixed": mixed}, {"x": torch.ones(1, 2)}, repeats=1, warmup=0)
    assert not wrapper.training and not inner.training
    assert mixed.training and not mixed.linear.training


def test_threads_are_each_models_own():
    """A model that says how many threads it runs on (an ONNX Runtime session) is reported with them."""
    log = []
    own = Recorder("own", log)
    own.threads = 7
    results = compare_latency({"torch": Recorder("torch", log), "own": own}, {"x": torch.ones(1, 2)}, repeats=1)
    assert results["torch"]["threads"] == torch.get_num_threads()
    assert results["own"]["threads"] == 7
    assert f"threads: torch {torch.get_num_threads()}, own 7" in format_latency(results)
