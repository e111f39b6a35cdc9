"""int8: the saved folder reloads to the very same quantized model (identical predictions), is smaller on disk,
and stays close to the float model; requests the backend cannot serve fail before any work."""

from __future__ import annotations

import pytest
import torch

from hf_adaprune import compact
from hf_adaprune.deploy import load_int8, save_int8

from conftest import text_batch, tiny_model
from test_deploy_vocabulary import tiny_marian
from test_surgery import random_masks

FLOAT_TOL = 0.05  # int8 against float32 on a tiny random model (logits of size ~1)


def folder_bytes(path):
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".safetensors")


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_int8_round_trip_pruned_encoder(model_type, tmp_path):
    model = tiny_model(model_type, vocab_size=500)
    random_masks(model)  # uneven heads, one attention and one FFN fully removed
    compact(model)
    batch = text_batch()
    with torch.no_grad():
        reference = model(**batch).logits
    quantized = save_int8(model, tmp_path / "int8")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference), "the float model stays as it was"
        in_memory = quantized(**batch).logits
        reloaded = load_int8(tmp_path / "int8")(**batch).logits
    assert torch.equal(reloaded, in_memory)
    assert 0 < (in_memory - reference).abs().max() <= FLOAT_TOL
    model.save_pretrained(tmp_path / "float")
    assert folder_bytes(tmp_path / "int8") < 0.4 * folder_bytes(tmp_path / "float")


def test_int8_round_trip_masked_lm_with_its_tied_decoder_bias(tmp_path):
    model = tiny_model("bert", "AutoModelForMaskedLM", vocab_size=500)
    random_masks(model)
    compact(model)
    batch = text_batch()
    quantized = save_int8(model, tmp_path)
    reloaded = load_int8(tmp_path)
    assert reloaded.cls.predictions.decoder.bias() is not None
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, quantized(**batch).logits)
        assert (quantized(**batch).logits - model(**batch).logits).abs().max() <= FLOAT_TOL


def test_a_failed_int8_save_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    import hf_adaprune.deploy.quantize as quantize

    model = tiny_model("bert", vocab_size=500)
    random_masks(model)
    compact(model)
    model.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(quantize, "_packed_linears", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        save_int8(model, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_int8_round_trip_marian_generate(tmp_path):
    model = tiny_marian(120)
    random_masks(model, seed=2)
    compact(model)
    inputs = text_batch(vocab_size=120)
    quantized = save_int8(model, tmp_path)
    reloaded = load_int8(tmp_path)
    with torch.no_grad():
        expected = quantized.generate(**inputs, max_new_tokens=10, do_sample=False)
        assert torch.equal(reloaded.generate(**inputs, max_new_tokens=10, do_sample=False), expected)


def test_int8_refuses_what_the_backend_cannot():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="float32 weights; call model.float"):
        save_int8(model.half(), "unused")
    with pytest.raises(ValueError, match=r"runs on the CPU .*\['meta'\]"):
        save_int8(tiny_model("bert").to("meta"), "unused")


def test_load_int8_refuses_a_float_folder(tmp_path):
    model = tiny_model("bert")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not saved with save_int8"):
        load_int8(tmp_path)


def test_the_pruned_loader_sends_an_int8_folder_to_load_int8(tmp_path):
    # (the shipped remote code reads no file of its own, so stock transformers gives its own missing-weights error)
    from hf_adaprune import AutoPrunedModel

    model = tiny_model("bert")
    random_masks(model)
    save_int8(model, tmp_path)
    with pytest.raises(ValueError, match="holds int8 weights written by hf_adaprune's save_int8, which no float "
                                         r"loader reads: load it with hf_adaprune.deploy.load_int8\(folder\)"):
        AutoPrunedModel.from_pretrained(tmp_path)
    assert load_int8(tmp_path) is not None


def test_a_masked_model_is_compacted_before_it_is_quantized_and_saved(tmp_path):
    model = tiny_model("bert", vocab_size=500)
    random_masks(model)  # masks attached, not compacted
    batch = text_batch()
    with torch.no_grad():
        masked = model(**batch).logits
    quantized = save_int8(model, tmp_path)
    reloaded = load_int8(tmp_path)  # the saved config and the int8 weights agree on the pruned shapes
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, quantized(**batch).logits)
        assert (quantized(**batch).logits - masked).abs().max() <= FLOAT_TOL
    with pytest.raises(ValueError, match="the model is int8 already"):
        save_int8(quantized, tmp_path / "again")


def test_a_float_save_over_an_int8_folder_removes_the_int8_weights(tmp_path):
    from hf_adaprune import save_pruned

    old = tiny_model("bert", vocab_size=500)
    random_masks(old)
    save_int8(old, tmp_path)
    new = tiny_model("bert", vocab_size=500, seed=1)
    random_masks(new)
    save_pruned(new, tmp_path)
    assert not (tmp_path / "model_int8.safetensors").exists() and not (tmp_path / "int8.json").exists()
    with pytest.raises(ValueError, match="holds no int8.json"):
        load_int8(tmp_path)  # it read the earlier model's int8 weights under the new config
