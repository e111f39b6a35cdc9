"""int8: the saved folder reloads to the very same quantized model (identical predictions), is smaller on disk,
and stays close to the float model; requests the backend cannot serve fail before any work."""

from __future__ import annotations

import json

import pytest
import torch

from hf_adaprune import compact, save_pruned
from hf_adaprune.deploy import load_int8, save_int8

from conftest import text_batch, tiny_model
from test_deploy_vocabulary import tiny_marian
from test_surgery import random_masks

# int8 against float32: the largest logit error allowed, as a share of the largest float logit (in absolute value);
# measured on these models the int8 error is 1.5-3.5% of it. (A fixed 0.05 let wrong int8 models through: at BERT's
# initializer range the tiny models' logits are only ~0.02 in size.)
INT8_SHARE = 0.06


def assert_int8_close(quantized, reference):
    """``quantized`` logits (torch or numpy) within INT8_SHARE of the float ``reference``'s largest, and unequal to
    it (it was quantized). The reference's rows (inputs, and positions for token logits) are asserted to differ by
    more than twice that tolerance in some logit, so no answer the same for every input (say, only the classifier's
    bias, or an encoder that passes the same thing on) could pass."""
    quantized, reference = torch.as_tensor(quantized), torch.as_tensor(reference)
    rows = reference.reshape(-1, reference.shape[-1])
    tolerance = INT8_SHARE * float(rows.abs().max())
    spread = float((rows.amax(0) - rows.amin(0)).max())
    assert spread > 2 * tolerance, f"the rows' logits differ by {spread:.3g} at most, allowed error {tolerance:.3g}"
    error = float((quantized - reference).abs().max())
    assert 0 < error <= tolerance, f"int8 error {error:.3g}, allowed {tolerance:.3g}"


def weighty_model(model_type="bert", head="AutoModelForSequenceClassification"):
    """A tiny model whose encoder moves its logits: at BERT's initializer_range of 0.02 each block adds ~0.1 to a
    residual stream of size ~1, and an int8 model with every encoder linear zeroed comes as close to the float
    logits as a correct one (1.4% of the largest); at 0.1 it is 27% or more off."""
    return tiny_model(model_type, head, vocab_size=500, initializer_range=0.1)


def folder_bytes(path):
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".safetensors")


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_int8_round_trip_pruned_encoder(model_type, tmp_path):
    model = weighty_model(model_type)
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
    assert_int8_close(in_memory, reference)
    model.save_pretrained(tmp_path / "float")
    assert folder_bytes(tmp_path / "int8") < 0.4 * folder_bytes(tmp_path / "float")


def test_int8_round_trip_masked_lm_with_its_tied_decoder_bias(tmp_path):
    model = weighty_model("bert", "AutoModelForMaskedLM")
    random_masks(model)
    compact(model)
    batch = text_batch()
    quantized = save_int8(model, tmp_path)
    reloaded = load_int8(tmp_path)
    assert reloaded.cls.predictions.decoder.bias() is not None
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, quantized(**batch).logits)
        assert_int8_close(quantized(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_load_int8_of_a_tied_output_projection_warns_nothing(model_type, tmp_path, caplog):
    """The decoder's dequantized weight written beside its table made transformers warn that the checkpoint's tied
    weights differ and advise tie_word_embeddings=False; the folder records the tie and loading keeps it."""
    import json

    from transformers.utils import logging as hf_logging

    model = weighty_model(model_type, "AutoModelForMaskedLM")
    quantized = save_int8(model, tmp_path)
    assert json.loads((tmp_path / "int8.json").read_text())["tied_linears"] == [
        "cls.predictions.decoder" if model_type == "bert" else "vocab_projector"]
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            reloaded = load_int8(tmp_path)
    finally:
        hf_logging.disable_propagation()
    assert not [r for r in caplog.records if "tie" in r.getMessage()]
    batch = text_batch()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, quantized(**batch).logits)


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
    import transformers

    from hf_adaprune import AutoPrunedModel

    model = tiny_model("bert")
    random_masks(model)
    save_int8(model, tmp_path)
    with pytest.raises(ValueError, match="holds int8 weights written by hf_adaprune's save_int8, which no float "
                                         r"loader reads: load it with hf_adaprune.deploy.load_int8\(folder\)"):
        AutoPrunedModel.from_pretrained(tmp_path)
    # stock transformers runs the folder's remote code, which reads no file of its own but the config it is handed:
    # the config says so (it stopped on the missing model.safetensors, naming nothing of load_int8)
    with pytest.raises(OSError, match=r"int8 weights \(model_int8.safetensors\) written by hf_adaprune's save_int8, "
                                      r"which transformers does not read: load it with hf_adaprune.deploy.load_int8"):
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)
    assert load_int8(tmp_path) is not None
    # subfolder= names the folder read: a float model beside (under) the int8 one loads, an int8 one is sent on
    save_pruned(model, tmp_path / "float")
    assert AutoPrunedModel.from_pretrained(tmp_path, subfolder="float") is not None
    save_int8(model, tmp_path / "float" / "int8")
    with pytest.raises(ValueError, match="int8 holds int8 weights written by hf_adaprune's save_int8"):
        AutoPrunedModel.from_pretrained(tmp_path / "float", subfolder="int8")


def test_a_masked_model_is_compacted_before_it_is_quantized_and_saved(tmp_path):
    model = weighty_model()
    random_masks(model)  # masks attached, not compacted
    batch = text_batch()
    with torch.no_grad():
        masked = model(**batch).logits
    quantized = save_int8(model, tmp_path)
    reloaded = load_int8(tmp_path)  # the saved config and the int8 weights agree on the pruned shapes
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, quantized(**batch).logits)
        assert_int8_close(quantized(**batch).logits, masked)
    with pytest.raises(ValueError, match="the model is int8 already"):
        save_int8(quantized, tmp_path / "again")


def test_a_float_save_over_an_int8_folder_removes_the_int8_weights(tmp_path):
    old = tiny_model("bert", vocab_size=500)
    random_masks(old)
    save_int8(old, tmp_path)
    new = tiny_model("bert", vocab_size=500, seed=1)
    random_masks(new)
    save_pruned(new, tmp_path)
    assert not (tmp_path / "model_int8.safetensors").exists() and not (tmp_path / "int8.json").exists()
    with pytest.raises(ValueError, match="holds no int8.json"):
        load_int8(tmp_path)  # it read the earlier model's int8 weights under the new config


def test_int8_embedding_rows_are_rounded_with_a_scale_of_their_own():
    """Each embedding row gets its own scale: a row of small values is rounded as finely as its own largest value
    allows (one scale for the whole table would round the small rows to zero)."""
    from hf_adaprune.deploy import quantize_int8

    model = tiny_model("bert", vocab_size=500)
    with torch.no_grad():
        table = model.get_input_embeddings().weight
        table[::2] *= 1e-3  # every other row a thousand times smaller
        reference = table.detach().clone()
    got = quantize_int8(model).get_input_embeddings().weight.detach()
    assert torch.equal(model.get_input_embeddings().weight, reference), "the float model stays as it was"
    bound = reference.abs().amax(dim=1, keepdim=True) / 127 / 2 + 1e-12  # half a step of the row's own scale
    assert ((got - reference).abs() <= bound).all()
    # the small rows keep their values (the padding row is zero in both)
    assert torch.equal(got.abs().amax(dim=1) > 0, reference.abs().amax(dim=1) > 0)


def test_save_pruned_of_an_int8_model_is_refused_naming_save_int8(tmp_path):
    # transformers failed with "'torch.dtype' object has no attribute 'data_ptr'" and left an empty folder
    model = weighty_model()
    quantized = save_int8(model, tmp_path / "int8")
    with pytest.raises(ValueError, match=r"the model is int8 .*save_int8\(float_model, folder\) writes the int8 "
                                         r"folder, load_int8\(folder\) reads it"):
        save_pruned(quantized, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_int8_rows_in_chunks_equal_the_whole_table_at_once(monkeypatch):
    """Embedding rows are rounded a chunk at a time (float temporaries of a chunk, not of a 50,000-token table):
    the same values and scales as the whole table at once, a last short chunk included."""
    import hf_adaprune.deploy.quantize as quantize

    weight = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    whole = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    monkeypatch.setattr(quantize, "ROWS_PER_CHUNK", 3)
    values, scales = quantize._int8_rows(weight)
    assert values.dtype == torch.int8 and torch.equal(values, whole) and torch.equal(scales, scale)
    assert int(values.abs().max()) == 127


def test_int8_embeddings_rounded_in_chunks_equal_those_rounded_at_once(monkeypatch):
    import hf_adaprune.deploy.quantize as quantize

    model = tiny_model("bert")  # 99-token table: 15 chunks of 7 rows, the last of 1
    at_once = quantize.quantize_int8(model).bert.embeddings.word_embeddings.weight
    monkeypatch.setattr(quantize, "ROWS_PER_CHUNK", 7)
    chunked = quantize.quantize_int8(model).bert.embeddings.word_embeddings.weight
    assert torch.equal(chunked, at_once) and not torch.equal(chunked, model.bert.embeddings.word_embeddings.weight)


def test_load_int8_writes_nothing(tmp_path, monkeypatch):
    """load_int8 wrote the model's float weights to a temporary folder to load them (a small /tmp failed with
    "No space left on device"): it now builds the model from the tensors in memory."""
    import tempfile

    import safetensors.torch

    model = tiny_marian(120)
    model.generation_config.max_length = 17  # read from the folder's generation_config.json
    quantized = save_int8(model, tmp_path / "int8")

    def no_writing(*args, **kwargs):
        raise OSError("load_int8 wrote a file")

    monkeypatch.setattr(safetensors.torch, "save_file", no_writing)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_writing)
    monkeypatch.setattr(tempfile, "mkdtemp", no_writing)
    loaded = load_int8(tmp_path / "int8")
    assert loaded.generation_config.max_length == 17
    ids = torch.tensor([[5, 9, 11, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, decoder_input_ids=ids).logits,
                           quantized(input_ids=ids, decoder_input_ids=ids).logits)


@pytest.mark.parametrize("damage, message", [
    ("format 99", r"int8.json has format 99, written by a newer hf_adaprune than this one \(which reads format 1\)"),
    ("record not json", r"int8.json is not valid JSON .*the folder is damaged"),
    ("no linears", r"int8.json is not a save_int8 record"),
    ("scale missing", r"model_int8.safetensors lacks \['classifier.weight.scale'\]"),
    ("classifier missing", r"model_int8.safetensors lacks weights of the model its config.json describes: "
                           r"\['classifier.bias', 'classifier.weight'\]"),
])
def test_a_damaged_int8_folder_is_named_not_loaded(tmp_path, damage, message):
    """A newer record format loaded silently, missing classifier tensors gave a random classifier (transformers'
    MISSING report only), a missing scale a bare KeyError."""
    from safetensors.torch import load_file, save_file

    save_int8(tiny_model("bert"), tmp_path)
    record = json.loads((tmp_path / "int8.json").read_text())
    tensors = load_file(str(tmp_path / "model_int8.safetensors"))
    if damage == "format 99":
        record["format"] = 99
    elif damage == "no linears":
        del record["linears"]
    elif damage == "scale missing":
        del tensors["classifier.weight.scale"]
    elif damage == "classifier missing":
        record["linears"].remove("classifier")
        tensors = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
    (tmp_path / "int8.json").write_text("{" if damage == "record not json" else json.dumps(record))
    save_file(tensors, str(tmp_path / "model_int8.safetensors"))
    with pytest.raises(ValueError, match=message):
        load_int8(tmp_path)


def test_an_int8_folder_saved_before_its_config_named_the_int8_weights_loads(tmp_path):
    """Folders saved before 2026-12-05 lack adaprune_int8_weights in config.json: load_int8 failed on them."""
    quantized = save_int8(tiny_model("bert"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["adaprune_int8_weights"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    ids = torch.tensor([[5, 9, 11, 2]])
    with torch.no_grad():
        assert torch.equal(load_int8(tmp_path)(input_ids=ids).logits, quantized(input_ids=ids).logits)
