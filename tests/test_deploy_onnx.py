"""ONNX export of pruned models (uneven heads, removed layers, fully removed attentions and FFNs): onnxruntime
outputs within 1e-4 of transformers for encoders; for Marian/BART and Whisper, greedy tokens identical to
transformers' cached ``generate`` with and without the past-key-values graph, and the decoder's logits within 1e-4
step by step through the cache; Whisper's prompt and suppressed tokens from its generation config, as its
generate takes them; onnxruntime int8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install onnx onnxruntime")
pytest.importorskip("onnxruntime", reason="the parity checks need onnxruntime: pip install onnxruntime")

from hf_adaprune import compact, find_groups  # noqa: E402
from hf_adaprune.deploy import OnnxEncoder, OnnxSeq2Seq, export_onnx, onnx_session, quantize_onnx  # noqa: E402
from hf_adaprune.deploy.vocabulary import split_decoder_vocabulary  # noqa: E402

from conftest import text_batch, tiny_model  # noqa: E402
from test_seq2seq_families import pattern_masks, seq2seq_batch, tiny_seq2seq  # noqa: E402
from test_speech_families import set_masks, tiny_whisper, whisper_batch, whisper_features  # noqa: E402
from test_layers import build_seq2seq, mask_layers, tiny_whisper3  # noqa: E402
from test_surgery import random_masks  # noqa: E402

TOL = 1e-4


def run_encoder(folder, batch, file="model.onnx"):
    session = onnx_session(folder, file)
    wanted = [i.name for i in session.get_inputs()]
    batch = {"token_type_ids": torch.zeros_like(batch["input_ids"]), **batch}  # BERT graphs take segments too
    return session.run(None, {k: v.numpy() for k, v in batch.items() if k in wanted})[0]


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


SEQ2SEQ_GRAPHS = ["encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"]


def greedy_onnx(folder, model, inputs, attention_mask=None, max_new_tokens=12, use_cache=None):
    config = model.generation_config
    return OnnxSeq2Seq(folder).generate(
        inputs.numpy(), None if attention_mask is None else attention_mask.numpy(),
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, max_new_tokens=max_new_tokens,
        forced_eos_token_id=getattr(config, "forced_eos_token_id", None), use_cache=use_cache)


def assert_greedy_identical(folder, model, inputs, mask=None, max_new_tokens=12):
    """Greedy tokens with and without the past graph equal transformers' cached ``generate``."""
    extra = {} if mask is None else {"attention_mask": mask}
    with torch.no_grad():
        expected = model.generate(inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  use_cache=True, **extra).numpy()
    for use_cache in (True, False):  # Whisper's rows leave out the prompt and end-of-text, as its generate does
        got = greedy_onnx(folder, model, inputs, mask, max_new_tokens, use_cache=use_cache)
        np.testing.assert_array_equal(got, expected, err_msg=f"use_cache={use_cache}")
    return expected


def stepwise_logits(folder, inputs, mask, prefix: np.ndarray, first: int = 1):
    """Decoder logits for ``prefix``: the first step on ``prefix[:, :first]``, then one token at a time through
    the past graph; also returns the last step's self-attention cache shapes per layer."""
    encoder, first_step, with_past = (onnx_session(folder, name) for name in SEQ2SEQ_GRAPHS)
    feed = {encoder.get_inputs()[0].name: inputs}
    if mask is not None:
        feed["attention_mask"] = mask
    hidden = encoder.run(None, feed)[0]
    feed = {"decoder_input_ids": prefix[:, :first], "encoder_hidden_states": hidden}
    if mask is not None:
        feed["encoder_attention_mask"] = mask
    logits, *present = first_step.run(None, feed)
    past = {o.name.replace("present", "past_key_values"): v for o, v in zip(first_step.get_outputs()[1:], present)}
    steps, wanted = [logits], {i.name for i in with_past.get_inputs()}
    for t in range(first, prefix.shape[1]):
        feed = {"decoder_input_ids": prefix[:, t:t + 1]} | {k: v for k, v in past.items() if k in wanted}
        if mask is not None:
            feed["encoder_attention_mask"] = mask
        logits, *present = with_past.run(None, feed)
        past |= {o.name.replace("present", "past_key_values"): v
                 for o, v in zip(with_past.get_outputs()[1:], present)}
        steps.append(logits)
    return np.concatenate(steps, axis=1), past


def cache_heads(past: dict, layers: int, part: str) -> list[int]:
    return [past[f"past_key_values.{i}.{part}.key"].shape[1] for i in range(layers)]


@pytest.mark.parametrize("model_type, pattern", [("marian", "A"), ("bart", "B"), ("t5", "A")])
def test_seq2seq_greedy_tokens_identical(model_type, pattern, tmp_path):
    model = tiny_seq2seq(model_type)
    pattern_masks(model, pattern)
    compact(model)
    paths = export_onnx(model, tmp_path)
    assert [p.name for p in paths] == SEQ2SEQ_GRAPHS
    batch = seq2seq_batch()
    inputs, mask = batch["input_ids"], batch["attention_mask"]
    expected = assert_greedy_identical(tmp_path, model, inputs, mask)
    assert expected.shape[1] > 4, "the tiny model should not stop at once"
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    decoder_logits = onnx_session(tmp_path, "decoder_model.onnx").run(["logits"], {
        "decoder_input_ids": batch["decoder_input_ids"].numpy(),
        "encoder_hidden_states": onnx_session(tmp_path, "encoder_model.onnx").run(
            None, {"input_ids": inputs.numpy(), "attention_mask": mask.numpy()})[0],
        "encoder_attention_mask": mask.numpy()})[0]
    valid = batch["decoder_attention_mask"].bool().numpy()
    assert np.abs(decoder_logits - logits)[valid].max() <= TOL
    # a folder without the past graph (exported before it existed) decodes on the whole prefix
    (tmp_path / "decoder_with_past_model.onnx").unlink()
    np.testing.assert_array_equal(greedy_onnx(tmp_path, model, inputs, mask), expected)
    with pytest.raises(ValueError, match="use_cache=True needs decoder_with_past_model.onnx"):
        greedy_onnx(tmp_path, model, inputs, mask, use_cache=True)


def test_whisper_greedy_tokens_identical(tmp_path):
    model = tiny_whisper()
    by_role = {}
    for group in find_groups(model):
        by_role.setdefault(group.role, []).append(group.name)
    set_masks(model, seed=4, empty=[by_role["decoder_self"][0], by_role["cross"][1], by_role["encoder_self"][0]])
    compact(model)
    export_onnx(model, tmp_path)
    features = whisper_features()
    assert_greedy_identical(tmp_path, model, features, max_new_tokens=10)
    # the decoder on a random prefix (the tiny model's greedy output repeats one token)
    batch = whisper_batch()
    with torch.no_grad():
        logits = model(input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]).logits
    hidden = onnx_session(tmp_path, "encoder_model.onnx").run(None, {"input_features": features.numpy()})[0]
    got_logits = onnx_session(tmp_path, "decoder_model.onnx").run(["logits"], {
        "decoder_input_ids": batch["decoder_input_ids"].numpy(), "encoder_hidden_states": hidden})[0]
    assert np.abs(got_logits - logits.numpy()).max() <= TOL


# tiny.en's generation config in small: <|startoftranscript|> (3), <|notimestamps|> (63, the last token: no
# timestamp tokens, which Whisper's generate would read as segment ends), end-of-text as padding,
# begin_suppress_tokens [blank, end-of-text], suppress_tokens with the prompt's tokens; 24 is the token the
# random model repeats, 18 the first token of one row: both suppressed, so the bare greedy argmax differs
EOT, NO_TIMESTAMPS = 13, 63


def tiny_whisper_like_tiny_en(**generation):
    model = tiny_whisper()
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=3, bos_token_id=3, eos_token_id=EOT, pad_token_id=EOT,
        no_timestamps_token_id=NO_TIMESTAMPS, is_multilingual=False, return_timestamps=False,
        suppress_tokens=[1, 3, NO_TIMESTAMPS, 24], begin_suppress_tokens=[18, EOT], max_length=12, **generation)
    return model


def whisper_generate(model, features, **kwargs):
    with torch.no_grad():
        return model.generate(features, do_sample=False, num_beams=1, **kwargs).numpy()


def test_whisper_generate_follows_the_generation_config_as_transformers_does(tmp_path):
    """The prompt (start, <|notimestamps|>), suppress_tokens, begin_suppress_tokens, end-of-text and the
    padding of rows that end early: the tokens of transformers' Whisper generate, batch 1 and a padded batch."""
    model = tiny_whisper_like_tiny_en()
    export_onnx(model, tmp_path)
    runner = OnnxSeq2Seq(tmp_path)
    features = whisper_features(batch=4, seed=5)
    expected = whisper_generate(model, features, max_new_tokens=10)
    lengths = [int((row != EOT).sum()) for row in expected]
    assert min(lengths) < 10 and len(set(lengths)) > 1, "rows should end at different steps (a padded batch)"
    assert not np.isin(expected, [1, 3, NO_TIMESTAMPS, 24]).any() and (expected[:, 0] != 18).all()
    for use_cache in (True, False):  # the ids given as a text model takes them
        np.testing.assert_array_equal(greedy_onnx(tmp_path, model, features, max_new_tokens=10, use_cache=use_cache),
                                      expected, err_msg=f"use_cache={use_cache}")
        for row in range(2):  # batch 1
            np.testing.assert_array_equal(
                greedy_onnx(tmp_path, model, features[row:row + 1], max_new_tokens=10, use_cache=use_cache),
                whisper_generate(model, features[row:row + 1], max_new_tokens=10), err_msg=f"row {row}")
    # the ids and lengths of the folder's generation config (its max_length counts the prompt)
    np.testing.assert_array_equal(runner.generate(features.numpy()), whisper_generate(model, features))
    np.testing.assert_array_equal(runner.generate(features.numpy(), max_new_tokens=6),
                                  whisper_generate(model, features, max_new_tokens=6))
    with pytest.raises(ValueError, match="English-only"):
        runner.generate(features.numpy(), language="en")


def test_multilingual_whisper_generate_detects_or_takes_the_language_and_task(tmp_path):
    """forced_decoder_ids with an open language slot: the language detected per row; language and task given:
    their tokens, as transformers' Whisper generate puts them in the prompt."""
    model = tiny_whisper_like_tiny_en(lang_to_id={"<|en|>": 5, "<|de|>": 6, "<|fr|>": 7},
                                      task_to_id={"transcribe": 8, "translate": 9},
                                      forced_decoder_ids=[[1, None], [2, 8]])
    model.generation_config.is_multilingual = True
    model.generation_config.suppress_tokens = [1, 3, 5, 6, 7, 8, 9, NO_TIMESTAMPS, 24]
    export_onnx(model, tmp_path)
    runner = OnnxSeq2Seq(tmp_path)
    features = whisper_features(batch=3, seed=5)
    config = model.generation_config
    ids = dict(decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
               pad_token_id=config.pad_token_id)
    for kwargs in ({}, {"language": "de", "task": "translate"}, {"language": ["french", "en", "de"]}):
        for use_cache in (True, False):
            np.testing.assert_array_equal(
                runner.generate(features.numpy(), max_new_tokens=8, use_cache=use_cache, **ids, **kwargs),
                whisper_generate(model, features, max_new_tokens=8, **kwargs), err_msg=f"{kwargs} {use_cache}")


def _marian3():
    return tiny_seq2seq("marian", encoder_layers=3, decoder_layers=3)


def _seq2seq_inputs():
    batch = seq2seq_batch()
    return batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"]


def _whisper_inputs():
    generator = torch.Generator().manual_seed(2)
    prefix = torch.randint(4, 64, (2, 7), generator=generator)
    prefix[:, 0] = 3
    return whisper_features(), None, prefix


def test_marian_with_a_decoder_vocabulary_of_its_own_decodes_alike(tmp_path):
    """prune_vocabulary(decoder_vocabulary=True)'s layout: the decoder graphs score the decoder's tokens only."""
    model = tiny_seq2seq("marian")
    pattern_masks(model, "A")
    compact(model)
    decoder_size = model.config.vocab_size - 30
    split_decoder_vocabulary(model, decoder_size)
    export_onnx(model, tmp_path)
    batch = seq2seq_batch()
    expected = assert_greedy_identical(tmp_path, model, batch["input_ids"], batch["attention_mask"])
    assert expected.shape[1] > 4 and expected.max() < decoder_size
    hidden = onnx_session(tmp_path, "encoder_model.onnx").run(None, {
        "input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()})[0]
    logits = onnx_session(tmp_path, "decoder_model.onnx").run(["logits"], {
        "decoder_input_ids": expected[:, :3], "encoder_hidden_states": hidden,
        "encoder_attention_mask": batch["attention_mask"].numpy()})[0]
    assert logits.shape == (3, 3, decoder_size)


@pytest.mark.parametrize("family, build, inputs_of", [("marian", _marian3, _seq2seq_inputs),
                                                       ("whisper", tiny_whisper3, _whisper_inputs)])
def test_decoder_with_past_uneven_heads_removed_layer(family, build, inputs_of, tmp_path):
    """Uneven heads, decoder layer 1 of 3 removed, the first kept layer's self-attention and the last one's
    cross-attention emptied: per-layer cache shapes, logits through the cache, greedy tokens."""
    model = build()
    masks = mask_layers(model, {"decoder.layers": [0, 2]}, widths_seed=3)
    masks.set("decoder.layers.0.self_attn", torch.zeros_like(masks.masks["decoder.layers.0.self_attn"]))
    masks.set("decoder.layers.2.encoder_attn", torch.zeros_like(masks.masks["decoder.layers.2.encoder_attn"]))
    compact(model)
    assert model.config.decoder_layers == 2
    export_onnx(model, tmp_path)
    inputs, mask, prefix = inputs_of()
    with torch.no_grad():
        extra = {} if mask is None else {"attention_mask": mask}
        expected = model(inputs, decoder_input_ids=prefix, **extra).logits.numpy()
    for first in (1, 3):  # the first step on one token or on a longer prefix
        got, past = stepwise_logits(tmp_path, inputs.numpy(), None if mask is None else mask.numpy(),
                                    prefix.numpy(), first=first)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= TOL
    layers = model.model.decoder.layers
    kept_self = [layers[1].self_attn.num_heads]
    kept_cross = [layers[0].encoder_attn.num_heads]
    assert cache_heads(past, 2, "decoder") == [1] + kept_self  # the emptied attention's placeholder: one head
    assert cache_heads(past, 2, "encoder") == kept_cross + [1]
    assert past["past_key_values.0.decoder.key"].shape[-1] == 1
    head_dim = model.config.d_model // model.config.decoder_attention_heads
    assert past["past_key_values.1.decoder.key"].shape == (prefix.shape[0], kept_self[0], prefix.shape[1], head_dim)
    assert 0 < kept_self[0] < 4 or 0 < kept_cross[0] < 4, "the widths should be uneven"
    assert_greedy_identical(tmp_path, model, inputs, mask, max_new_tokens=10)


@pytest.mark.parametrize("kept", [[0, 2], [2]])
def test_t5_with_decoder_blocks_removed_exports_only_its_layers_caches(kept, tmp_path):
    """T5 sizes its cache by the encoder's layer count; the graphs carry one cache entry per kept decoder block."""
    model = build_seq2seq("t5")
    mask_layers(model, {"decoder.block": kept}, widths_seed=4)
    compact(model)
    export_onnx(model, tmp_path)
    names = [o.name for o in onnx_session(tmp_path, "decoder_model.onnx").get_outputs()]
    assert names[0] == "logits" and len(names) == 1 + 4 * len(kept)
    inputs, mask, _ = _seq2seq_inputs()
    assert_greedy_identical(tmp_path, model, inputs, mask, max_new_tokens=10)


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


def test_a_new_export_removes_the_earlier_exports_graphs_and_keeps_other_files(tmp_path):
    model = tiny_model("bert")
    export_onnx(model, tmp_path)
    quantize_onnx(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    other = tiny_model("bert", seed=1)
    random_masks(other)
    compact(other)
    assert [p.name for p in export_onnx(other, tmp_path)] == ["model.onnx"]
    assert not (tmp_path / "model.int8.onnx").exists()  # the int8 graph of the earlier model would run stale
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_onnxruntime_int8_scales_per_output_channel_by_default(tmp_path):
    model = tiny_model("bert")
    compact(model)
    export_onnx(model, tmp_path)
    import onnx

    def scale_sizes(file):
        graph = onnx.load(str(tmp_path / file)).graph
        return sorted({int(np.prod(t.dims)) for t in graph.initializer  # the matrix products' weight scales
                       if t.name.endswith("_scale") and not t.name.endswith("_row_scale")
                       and t.data_type == onnx.TensorProto.FLOAT})

    quantize_onnx(tmp_path)
    assert max(scale_sizes("model.int8.onnx")) == model.config.intermediate_size  # one scale per output row
    (tmp_path / "model.int8.onnx").unlink()
    quantize_onnx(tmp_path, per_channel=False)
    assert scale_sizes("model.int8.onnx") == [1]


def test_onnx_int8_stores_embedding_tables_as_int8_rows(tmp_path):
    import onnx
    from onnx import numpy_helper

    model = tiny_model("bert")
    compact(model)
    export_onnx(model, tmp_path)
    quantize_onnx(tmp_path)
    initializers = {t.name: t for t in onnx.load(str(tmp_path / "model.int8.onnx")).graph.initializer}
    word = model.get_input_embeddings().weight.detach().numpy()
    tables = [t for t in initializers.values()
              if t.data_type == onnx.TensorProto.INT8 and list(t.dims) == list(word.shape)]
    assert len(tables) == 1, "the word embeddings are stored as int8"
    scale = numpy_helper.to_array(initializers[tables[0].name.replace("_int8", "_row_scale")])
    assert scale.shape == (word.shape[0], 1), "one scale per row"
    rows = numpy_helper.to_array(tables[0]).astype(np.float32) * scale
    assert np.abs(rows - word).max() <= np.abs(word).max(axis=1).max() / 127 / 2 + 1e-7  # rounding only
    assert not any(t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == list(word.shape)
                   for t in initializers.values()), "no float copy of the table is left"


def test_int8_embedding_rows_leave_a_table_a_matmul_also_reads_in_float():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from hf_adaprune.deploy.onnx_int8 import int8_embedding_rows

    table = numpy_helper.from_array(np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
             helper.make_node("MatMul", ["rows", "table_t"], ["logits"]),
             helper.make_node("Transpose", ["table"], ["table_t"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 10])], [table])
    model = helper.make_model(graph)
    assert int8_embedding_rows(model) == []
    assert [t.name for t in model.graph.initializer] == ["table"]
    untied = helper.make_graph(nodes[:1], "untied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                               [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [2, 4])], [table])
    model = helper.make_model(untied)
    assert int8_embedding_rows(model) == ["table"]
    onnx.checker.check_model(model)
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"ids": np.array([3, 7])})[0]
    expected = numpy_helper.to_array(table)[[3, 7]]
    assert np.abs(got - expected).max() <= np.abs(expected).max() / 127


def test_sentence_pairs_keep_their_segments_and_qa_heads_export_both_logits(tmp_path):
    for head, outputs in (("AutoModelForSequenceClassification", ["logits"]),
                          ("AutoModelForQuestionAnswering", ["start_logits", "end_logits"])):
        model = tiny_model("bert", head)
        with torch.no_grad():  # segment embeddings that matter, so a graph without them would differ
            model.bert.embeddings.token_type_embeddings.weight.normal_(0, 1.0)
        random_masks(model)
        compact(model)
        model.train()
        export_onnx(model, tmp_path / head)
        assert model.training, "the caller's model keeps its mode"
        model.eval()
        runner = OnnxEncoder(tmp_path / head, threads=1)
        assert "token_type_ids" in runner.input_names and runner.output_names == outputs
        batch = text_batch(batch=3, seq=9, seed=2)
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        batch["token_type_ids"][:, 5:] = 1  # the second sentence of each pair
        with torch.no_grad():
            expected = model(**batch)
            without_segments = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        got = runner(**batch)
        for name in outputs:
            torch.testing.assert_close(got[name], expected[name], atol=TOL, rtol=0)
            # the segments change the outputs far more than the export does: a graph ignoring them would show it
            error = (got[name] - expected[name]).abs().max()
            assert (expected[name] - without_segments[name]).abs().max() > 100 * error


@pytest.mark.parametrize("head, output", [("AutoModelForSequenceClassification", "logits"),
                                          ("AutoModel", "last_hidden_state")])
def test_onnx_encoder_is_called_like_the_model(head, output, tmp_path):
    model = tiny_model("bert", head)
    random_masks(model)
    compact(model)
    export_onnx(model, tmp_path)
    runner = OnnxEncoder(tmp_path, threads=1)
    batch = text_batch(batch=3, seq=6, seed=1)
    with torch.no_grad():
        expected = getattr(model(**batch), output)
    got = runner(**batch)  # no token_type_ids given: zeros, as the model takes them
    assert isinstance(got[output], torch.Tensor) and got[output].shape == expected.shape
    torch.testing.assert_close(got[output], expected, atol=TOL, rtol=0)
    no_mask = runner(input_ids=batch["input_ids"])[output]  # no mask: every position attends
    with torch.no_grad():
        torch.testing.assert_close(no_mask, getattr(model(input_ids=batch["input_ids"]), output), atol=TOL, rtol=0)
    runner.eval()  # an nn.Module: compare_latency and evaluation loops switch modes on it
    assert runner.threads == 1  # what compare_latency reports for it
    assert OnnxEncoder(tmp_path).threads == "onnxruntime default"  # not torch's thread count


def test_trainer_evaluate_takes_the_onnx_encoder_as_it_takes_the_model(tmp_path):
    import datasets

    model = tiny_model("bert")
    random_masks(model)
    compact(model)
    export_onnx(model, tmp_path / "onnx")
    batch = text_batch(batch=3, seq=6, seed=1)
    data = datasets.Dataset.from_dict({"input_ids": batch["input_ids"].tolist(),
                                       "attention_mask": batch["attention_mask"].tolist(), "labels": [0, 2, 1]})

    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    results = []
    for evaluated in (model, OnnxEncoder(tmp_path / "onnx", threads=1)):
        args = transformers.TrainingArguments(str(tmp_path / "eval"), report_to="none", use_cpu=True)
        results.append(transformers.Trainer(model=evaluated, args=args, compute_metrics=accuracy).evaluate(data))
    assert results[1]["eval_accuracy"] == results[0]["eval_accuracy"]
    assert results[1]["eval_loss"] == pytest.approx(results[0]["eval_loss"], abs=TOL)


@pytest.mark.parametrize("model_type", ["marian", "bart"])
def test_onnxruntime_int8_seq2seq_graphs_decode_close_to_float(model_type, tmp_path):
    model = tiny_seq2seq(model_type)
    pattern_masks(model, "A")
    compact(model)
    export_onnx(model, tmp_path)
    int8 = quantize_onnx(tmp_path)
    assert [p.name for p in int8] == [name.replace(".onnx", ".int8.onnx") for name in sorted(SEQ2SEQ_GRAPHS)]
    batch = seq2seq_batch()
    inputs, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    float_hidden = onnx_session(tmp_path, "encoder_model.onnx").run(None, {"input_ids": inputs, "attention_mask": mask})
    int8_hidden = onnx_session(tmp_path, "encoder_model.int8.onnx").run(
        None, {"input_ids": inputs, "attention_mask": mask})
    scale = np.abs(float_hidden[0]).max()
    assert 0 < np.abs(int8_hidden[0] - float_hidden[0]).max() <= 0.1 * scale  # int8 rounding, nothing broken
    config = model.generation_config
    runner = OnnxSeq2Seq(tmp_path, *(name.replace(".onnx", ".int8.onnx") for name in SEQ2SEQ_GRAPHS))
    tokens = runner.generate(inputs, mask, decoder_start_token_id=config.decoder_start_token_id,
                             eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, max_new_tokens=6)
    assert tokens.shape[0] == inputs.shape[0] and 1 < tokens.shape[1] <= 7
    assert (tokens[:, 0] == config.decoder_start_token_id).all()


def test_export_refuses_a_half_precision_model(tmp_path):
    with pytest.raises(ValueError, match="float32 model; call model.float"):
        export_onnx(tiny_model("bert").half(), tmp_path)


def test_export_refuses_a_torch_int8_model_naming_the_onnx_route(tmp_path):
    from hf_adaprune.deploy import quantize_int8

    with pytest.raises(ValueError, match="torch int8 linears .* Export the float model, then quantize the graph with "
                                         "quantize_onnx"):
        export_onnx(quantize_int8(tiny_model("bert")), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_a_masked_model_exports_its_kept_structures_with_a_config_stock_loaders_read(tmp_path):
    from hf_adaprune import get_masks, save_pruned

    from hf_adaprune import AutoPrunedModel

    save_pruned(tiny_model("bert"), tmp_path / "saved")
    model = AutoPrunedModel.from_pretrained(tmp_path / "saved").eval()  # its config has an auto_map
    random_masks(model)  # pruned again, not compacted
    batch = text_batch()
    with torch.no_grad():
        masked = model(**batch).logits
    export_onnx(model, tmp_path / "onnx")
    assert get_masks(model) is None  # compacted, as save_pruned compacts
    widths = [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer]
    assert widths != [37] * 3
    torch.testing.assert_close(torch.from_numpy(run_encoder(tmp_path / "onnx", batch)), masked, atol=TOL, rtol=0)
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["model_type"] == "bert" and "auto_map" not in config
    loaded = transformers.AutoConfig.from_pretrained(tmp_path / "onnx")  # no remote code, no prompt
    assert type(loaded) is transformers.BertConfig


def test_export_refuses_an_encoder_decoder_classifier_before_writing(tmp_path):
    config = tiny_seq2seq("t5").config
    config.num_labels = 2
    model = transformers.T5ForSequenceClassification(config)
    with pytest.raises(ValueError, match="encoder-decoder with a task head"):
        export_onnx(model, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_a_failed_or_refused_export_leaves_the_earlier_export_as_it_was(tmp_path, monkeypatch):
    import hf_adaprune.deploy.onnx as onnx_module

    export_onnx(tiny_seq2seq("marian"), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    choice = transformers.BertForMultipleChoice(tiny_model("bert").config)
    with pytest.raises(ValueError, match="ONNX export does not handle multiple-choice heads"):
        export_onnx(choice, tmp_path)

    def fail(*args, **kwargs):  # the decoders fail after the encoder graph is written
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(onnx_module, "export_decoders", fail)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(tiny_seq2seq("bart"), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no temporary folder left


def test_seq2seq_generate_without_a_mask_reads_every_token(tmp_path):
    model = tiny_seq2seq("marian")
    export_onnx(model, tmp_path)
    inputs = seq2seq_batch()["input_ids"][1:2]  # a row holding pad ids: a mask made from them would hide those
    pad = model.generation_config.pad_token_id
    assert (inputs == pad).any()
    every_token = greedy_onnx(tmp_path, model, inputs, torch.ones_like(inputs))
    np.testing.assert_array_equal(greedy_onnx(tmp_path, model, inputs), every_token)
    assert not np.array_equal(greedy_onnx(tmp_path, model, inputs, (inputs != pad).long()), every_token)


def test_seq2seq_generate_takes_torch_tensors_and_any_integer_ids_and_refuses_float_ids(tmp_path):
    """What a tokenizer's return_tensors="pt" gives, and int32 arrays, decode as the int64 arrays do."""
    model = tiny_seq2seq("marian")
    export_onnx(model, tmp_path)
    batch = seq2seq_batch()
    inputs, mask = batch["input_ids"], batch["attention_mask"]
    expected = greedy_onnx(tmp_path, model, inputs, mask)
    config = model.generation_config
    ids = dict(decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
               pad_token_id=config.pad_token_id, max_new_tokens=12,
               forced_eos_token_id=getattr(config, "forced_eos_token_id", None))
    runner = OnnxSeq2Seq(tmp_path)
    np.testing.assert_array_equal(runner.generate(inputs, mask, **ids), expected)
    np.testing.assert_array_equal(runner.generate(inputs.numpy().astype(np.int32), mask.int(), **ids), expected)
    with pytest.raises(TypeError, match="input_ids: got an array of float32; give int64 values"):
        runner.generate(inputs.float(), mask, **ids)
    # a tokenizer's output unpacked (**tokenizer(...)): input_ids= names the inputs (it was a TypeError)
    np.testing.assert_array_equal(runner.generate(**batch_inputs(batch), **ids), expected)
    with pytest.raises(TypeError, match=r"generate takes the inputs once \(inputs, input_ids= or input_features=\)"):
        runner.generate(inputs, input_ids=inputs, **ids)


def batch_inputs(batch):
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def test_whisper_generate_takes_torch_and_half_precision_features(tmp_path):
    model = tiny_whisper()
    export_onnx(model, tmp_path)
    features = whisper_features()
    runner = OnnxSeq2Seq(tmp_path)
    kwargs = dict(max_new_tokens=6, decoder_start_token_id=model.generation_config.decoder_start_token_id)
    expected = runner.generate(features.numpy(), **kwargs)
    np.testing.assert_array_equal(runner.generate(features, **kwargs), expected)
    np.testing.assert_array_equal(runner.generate(input_features=features, **kwargs), expected)  # **processor(...)
    np.testing.assert_array_equal(runner.generate(features.numpy().astype(np.float16).astype(np.float32), **kwargs),
                                  runner.generate(features.half(), **kwargs))


def test_onnx_encoder_loss_ignores_labels_of_minus_100(tmp_path):
    """``labels`` of -100 are left out of the loss, as transformers' heads leave them out."""
    model = tiny_model("bert")
    random_masks(model)
    compact(model)
    export_onnx(model, tmp_path)
    runner = OnnxEncoder(tmp_path, threads=1)
    batch = text_batch(batch=3, seq=6, seed=1)
    labels = torch.tensor([0, -100, 1])
    with torch.no_grad():
        expected = model(**batch, labels=labels).loss
        kept_rows = model(**{k: v[[0, 2]] for k, v in batch.items()}, labels=labels[[0, 2]]).loss
    torch.testing.assert_close(expected, kept_rows)  # the reference itself leaves the row out
    torch.testing.assert_close(runner(**batch, labels=labels)["loss"], expected, atol=TOL, rtol=0)


def test_int8_embedding_rows_leave_a_table_gathered_along_its_columns_in_float():
    """Only a table gathered along axis 0 holds rows: one gathered along its columns stays float and exact."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from hf_adaprune.deploy.onnx_int8 import int8_embedding_rows

    values = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["columns"], axis=1)]
    graph = helper.make_graph(nodes, "columns", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("columns", TensorProto.FLOAT, [10, 2])],
                              [numpy_helper.from_array(values, "table")])
    model = helper.make_model(graph)
    assert int8_embedding_rows(model) == []
    assert [t.name for t in model.graph.initializer] == ["table"]
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"ids": np.array([1, 3])})[0], values[:, [1, 3]])


def test_int8_embedding_rows_round_each_row_with_its_own_scale():
    """A row of small values beside rows of large ones is rounded to half a step of its own scale."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from hf_adaprune.deploy.onnx_int8 import int8_embedding_rows

    values = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    values[::2] *= 1e-3  # every other row a thousand times smaller
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)]
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("ids", TensorProto.INT64, [10])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [10, 4])],
                              [numpy_helper.from_array(values, "table")])
    model = helper.make_model(graph)
    assert int8_embedding_rows(model) == ["table"]
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"ids": np.arange(10)})[0]
    bound = np.abs(values).max(axis=1, keepdims=True) / 127 / 2 * (1 + 1e-5)
    assert (np.abs(got - values) <= bound).all()
    assert (np.abs(got[::2]).max(axis=1) > 0).all(), "the small rows keep their values"


def test_quantize_onnx_takes_the_paths_export_onnx_returns(tmp_path):
    model = tiny_model("bert")
    paths = export_onnx(model, tmp_path)
    assert quantize_onnx(tmp_path, paths) == [tmp_path / "model.int8.onnx"]  # a TypeError (Path.replace) before
    assert quantize_onnx(tmp_path, ["model.onnx"]) == [tmp_path / "model.int8.onnx"]


def test_quantize_onnx_takes_the_relative_paths_export_onnx_returns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a folder given relative to the working directory: so are the paths returned
    paths = export_onnx(tiny_model("bert"), "out-onnx")
    assert paths == [Path("out-onnx/model.onnx")]
    assert quantize_onnx("out-onnx", paths) == [Path("out-onnx/model.int8.onnx")]  # out-onnx/out-onnx/... before
    assert (tmp_path / "out-onnx" / "model.int8.onnx").is_file()
    with pytest.raises(FileNotFoundError, match="no ONNX graph missing.onnx"):
        quantize_onnx("out-onnx", ["missing.onnx"])


def test_export_refuses_a_saved_pruned_models_folder(tmp_path):
    """The stock config.json the graphs get would replace the one that loads the pruned model (trust_remote_code
    loading failed on a size mismatch afterwards)."""
    from hf_adaprune import save_pruned

    model = tiny_model("bert")
    random_masks(model)
    compact(model)
    save_pruned(model, tmp_path / "pruned")
    config = (tmp_path / "pruned" / "config.json").read_text()
    with pytest.raises(ValueError, match="holds a saved pruned model: export_onnx writes the stock config.json"):
        export_onnx(model, tmp_path / "pruned")
    assert (tmp_path / "pruned" / "config.json").read_text() == config
    assert not list((tmp_path / "pruned").glob("*.onnx"))
    assert [p.name for p in export_onnx(model, tmp_path / "pruned" / "onnx")] == ["model.onnx"]
    # a dense model's folder: its config.json (labels, settings of its own) was replaced without a word
    dense = tiny_model("bert")
    dense.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    dense.save_pretrained(tmp_path / "dense")
    config = (tmp_path / "dense" / "config.json").read_text()
    with pytest.raises(ValueError, match=r"holds a saved model \(model.safetensors\): export_onnx writes the config"):
        export_onnx(model, tmp_path / "dense")
    assert (tmp_path / "dense" / "config.json").read_text() == config
    export_onnx(model, tmp_path / "pruned" / "onnx")  # an earlier export's folder (graphs, no weights): replaced


def test_export_refuses_a_head_it_cannot_export_before_compacting(tmp_path):
    from conftest import tiny_config
    from hf_adaprune.engine.masks import get_masks

    torch.manual_seed(0)
    model = transformers.BertForPreTraining(tiny_config("bert")).eval()
    random_masks(model)
    width = model.bert.encoder.layer[1].attention.self.query.out_features
    with pytest.raises(ValueError, match="ONNX export of encoders handles outputs"):
        export_onnx(model, tmp_path / "onnx")
    assert get_masks(model) is not None  # the user's masked model as it was: not compacted
    assert model.bert.encoder.layer[1].attention.self.query.out_features == width
    assert not (tmp_path / "onnx").exists()


def test_quantize_onnx_leaves_an_unconfigured_program_s_logging_unconfigured(tmp_path):
    """onnxruntime's quantizer logs a hint with logging.warning(), which set up the root logger: the program's own
    logging.basicConfig(...) afterwards did nothing."""
    import subprocess
    import sys

    from conftest import ROOT, one_thread_env

    script = (
        "import logging, sys; sys.path.insert(0, 'tests')\n"
        "from conftest import tiny_model\n"
        "from hf_adaprune.deploy import export_onnx, quantize_onnx\n"
        f"export_onnx(tiny_model('bert'), {str(tmp_path)!r}); quantize_onnx({str(tmp_path)!r})\n"
        "print('root handlers:', len(logging.getLogger().handlers))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=one_thread_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "root handlers: 0"
    assert (tmp_path / "model.int8.onnx").is_file()
