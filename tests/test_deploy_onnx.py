"""ONNX export of pruned models (uneven heads, fully removed attentions and FFNs): onnxruntime outputs within
1e-4 of transformers for encoders, greedy tokens identical for Marian/BART and Whisper; onnxruntime int8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install onnx onnxruntime")
pytest.importorskip("onnxruntime", reason="the parity checks need onnxruntime: pip install onnxruntime")

from hf_adaprune import compact, find_groups  # noqa: E402
from hf_adaprune.deploy import OnnxSeq2Seq, export_onnx, onnx_session, quantize_onnx  # noqa: E402

from conftest import text_batch, tiny_model  # noqa: E402
from test_seq2seq_families import pattern_masks, seq2seq_batch, tiny_seq2seq  # noqa: E402
from test_speech_families import set_masks, tiny_whisper, whisper_batch, whisper_features  # noqa: E402
from test_surgery import random_masks  # noqa: E402

TOL = 1e-4


def run_encoder(folder, batch, file="model.onnx"):
    return onnx_session(folder, file).run(None, {k: v.numpy() for k, v in batch.items()})[0]


@pytest.mark.parametrize("model_type, head", [("bert", "AutoModelForSequenceClassification"),
                                              ("distilbert", "AutoModelForSequenceClassification"),
                                              ("roberta", "AutoModel")])
def test_encoder_parity(model_type, head, tmp_path):
    model = tiny_model(model_type, head)
    random_masks(model)  # uneven heads; one attention and one FFN removed entirely
    compact(model)
    paths = export_onnx(model, tmp_path)
    assert [p.name for p in paths] == ["model.onnx"]
    assert json.loads((tmp_path / "config.json").read_text())["adaprune"]
    for batch in (text_batch(), text_batch(batch=4, seq=5, seed=3)):  # other batch and sequence sizes
        with torch.no_grad():
            out = model(**batch)
        expected = (out.logits if head.endswith("Classification") else out.last_hidden_state).numpy()
        got = run_encoder(tmp_path, batch)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= TOL


def greedy_onnx(folder, model, inputs, attention_mask=None, max_new_tokens=12):
    config = model.generation_config
    return OnnxSeq2Seq(folder).generate(
        inputs.numpy(), None if attention_mask is None else attention_mask.numpy(),
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, max_new_tokens=max_new_tokens,
        forced_eos_token_id=getattr(config, "forced_eos_token_id", None))


@pytest.mark.parametrize("model_type, pattern", [("marian", "A"), ("bart", "B")])
def test_seq2seq_greedy_tokens_identical(model_type, pattern, tmp_path):
    model = tiny_seq2seq(model_type)
    pattern_masks(model, pattern)
    compact(model)
    paths = export_onnx(model, tmp_path)
    assert [p.name for p in paths] == ["encoder_model.onnx", "decoder_model.onnx"]
    batch = seq2seq_batch()
    inputs, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        expected = model.generate(input_ids=inputs, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                  num_beams=1)
        logits = model(**batch).logits.numpy()
    got = greedy_onnx(tmp_path, model, inputs, mask)
    assert got.shape[1] > 4, "the tiny model should not stop at once"
    np.testing.assert_array_equal(got, expected.numpy())
    decoder_logits = onnx_session(tmp_path, "decoder_model.onnx").run(None, {
        "decoder_input_ids": batch["decoder_input_ids"].numpy(),
        "encoder_hidden_states": onnx_session(tmp_path, "encoder_model.onnx").run(
            None, {"input_ids": inputs.numpy(), "attention_mask": mask.numpy()})[0],
        "encoder_attention_mask": mask.numpy()})[0]
    valid = batch["decoder_attention_mask"].bool().numpy()
    assert np.abs(decoder_logits - logits)[valid].max() <= TOL


def test_whisper_greedy_tokens_identical(tmp_path):
    model = tiny_whisper()
    by_role = {}
    for group in find_groups(model):
        by_role.setdefault(group.role, []).append(group.name)
    set_masks(model, seed=4, empty=[by_role["decoder_self"][0], by_role["cross"][1], by_role["encoder_self"][0]])
    compact(model)
    export_onnx(model, tmp_path)
    features = whisper_features()
    with torch.no_grad():
        expected = model.generate(input_features=features, max_new_tokens=10, do_sample=False, num_beams=1)
    got = greedy_onnx(tmp_path, model, features, max_new_tokens=10)
    np.testing.assert_array_equal(got[:, 1:], expected.numpy())  # Whisper's generate leaves out the start token
    # the decoder on a random prefix (the tiny model's greedy output repeats one token)
    batch = whisper_batch()
    with torch.no_grad():
        logits = model(input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]).logits
    hidden = onnx_session(tmp_path, "encoder_model.onnx").run(None, {"input_features": features.numpy()})[0]
    got_logits = onnx_session(tmp_path, "decoder_model.onnx").run(None, {
        "decoder_input_ids": batch["decoder_input_ids"].numpy(), "encoder_hidden_states": hidden})[0]
    assert np.abs(got_logits - logits.numpy()).max() <= TOL


def test_onnxruntime_int8_close_to_float(tmp_path):
    model = tiny_model("bert")
    random_masks(model)
    compact(model)
    export_onnx(model, tmp_path)
    assert [p.name for p in quantize_onnx(tmp_path)] == ["model.int8.onnx"]
    batch = text_batch()
    float_logits, int8_logits = run_encoder(tmp_path, batch), run_encoder(tmp_path, batch, "model.int8.onnx")
    assert 0 < np.abs(float_logits - int8_logits).max() <= 0.05
    import onnx

    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) >= 6  # the linears of the tiny model's kept layers


def test_export_refuses_a_half_precision_model(tmp_path):
    with pytest.raises(ValueError, match="float32 model; call model.float"):
        export_onnx(tiny_model("bert").half(), tmp_path)
