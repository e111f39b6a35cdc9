"""The recipes score the ONNX and CTranslate2 copies on the test split as they score the vocabulary and int8 ones:
each loaded from its folder, the same rows and metrics; a copy the runtime cannot score as the test set was scored
(beams asked of the greedy ONNX runner) says why, and a scoring that fails leaves the run and its results.json
whole, the error in the copy's entry."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from hf_adaprune import AutoPrunedModel
from hf_adaprune.deploy import onnx_session

from test_recipe_deploy_flags import (SHORT_RUN, classification, classification_args, clips_of_the_test_manifest,
                                      expected_error_rates, transcripts_one_clip_at_a_time, translation,
                                      translation_deploy_run, whisper_deploy_run)
from test_recipe_text_classification import workspace  # noqa: F401 - the fixture
from test_recipe_translation import workspace as translation_workspace  # noqa: F401 - the fixture
from test_recipe_asr import asr, manifests  # noqa: F401 - the fixture

pytest.importorskip("onnxruntime", reason="scoring the ONNX graphs runs them with onnxruntime")


def onnx_accuracy(folder, graph: str, texts: list[str], labels: list[int]) -> float:
    """The test accuracy of an encoder graph, computed apart from the recipe: the folder's tokenizer, onnxruntime."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    session = onnx_session(folder, graph)
    feed = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    return float((session.run(None, feed)[0].argmax(-1) == np.array(labels)).mean())


def test_text_classification_scores_the_float_and_int8_graphs(workspace, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    results = classification.main(classification_args(workspace, out) + SHORT_RUN + [
        "--quantize", "int8", "--export_onnx", "true", "--max_seq_length", "32"])
    onnx = results["deploy"]["written"]["onnx"]
    rows = [line.split("\t") for line in (workspace / "test.tsv").read_text().splitlines()[1:]]
    texts, labels = [text for text, _ in rows], [int(label) for _, label in rows]
    folder = out / "deploy" / "onnx"
    for entry, graph in ((onnx, "model.onnx"), (onnx["int8"], "model.int8.onnx")):
        expected = onnx_accuracy(folder, graph, texts, labels)
        assert entry["test"] == {"accuracy": pytest.approx(expected)}
        assert entry["test_change"] == {"accuracy": pytest.approx(expected - results["test"]["pruned_accuracy"])}
    assert onnx["int8"]["graphs"] == ["model.int8.onnx"]
    # the float graph computes the pruned model's logits (to 1e-4): the same predictions, the same accuracy
    assert onnx["test"]["accuracy"] == pytest.approx(results["test"]["pruned_accuracy"])
    assert json.loads((out / "results.json").read_text())["deploy"] == json.loads(json.dumps(results["deploy"]))
    table = capsys.readouterr().out
    assert "deploy/onnx: test accuracy" in table and "deploy/onnx int8: test accuracy" in table


def test_a_scoring_that_fails_keeps_the_run_and_records_the_error(workspace, tmp_path, monkeypatch, capsys):  # noqa: F811
    import recipes.deploy as recipe_deploy

    def broken(*args, **kwargs):
        raise RuntimeError("onnxruntime could not load the graph")

    monkeypatch.setattr(recipe_deploy, "onnx_runner", broken)
    out = tmp_path / "out"
    results = classification.main(classification_args(workspace, out) + SHORT_RUN + [
        "--quantize", "int8", "--export_onnx", "true"])
    written = results["deploy"]["written"]
    assert "error" not in results["deploy"] and written["int8"]["test"]["accuracy"] is not None
    for entry in (written["onnx"], written["onnx"]["int8"]):
        assert entry["test_error"] == "RuntimeError: onnxruntime could not load the graph" and "test" not in entry
    assert json.loads((out / "results.json").read_text())["deploy"]["written"]["onnx"]["test_error"]
    assert "deploy/onnx: scoring failed (RuntimeError: onnxruntime could not load the graph)" in capsys.readouterr().out


def torch_translation_scores(model, tokenizer, ws, max_length: int) -> dict:
    """sacreBLEU / chrF of the torch model's greedy translations of the test sources, computed apart from the
    recipe's scoring helpers."""
    from hf_adaprune.metrics import headline_value, load_metric
    from hf_adaprune.sequence_distillation import sequence_distillation_targets

    sources = (ws / "test_2016_flickr.en").read_text().splitlines()
    references = [[r] for r in (ws / "test_2016_flickr.de").read_text().splitlines()]
    rows = Dataset.from_dict(dict(tokenizer(sources, max_length=32, truncation=True)))
    ids = list(sequence_distillation_targets(model, rows, batch_size=8, max_length=max_length, num_beams=1)["labels"])
    hypotheses = [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return {name: headline_value(name, load_metric(name).compute(predictions=hypotheses, references=references))
            for name in ("sacrebleu", "chrf")}


def test_translation_scores_onnx_and_ctranslate2(translation_workspace, tmp_path, capsys):  # noqa: F811
    """Marian's ONNX greedy decoding and CTranslate2 translate as the pruned model does (the parity tests hold the
    tokens identical): the same BLEU and chrF, exactly."""
    pytest.importorskip("ctranslate2", reason="--export_ctranslate2 needs ctranslate2")
    out, ws = tmp_path / "out", translation_workspace
    results = translation_deploy_run(ws, out, "--export_onnx", "true", "--export_ctranslate2", "true")
    written = results["deploy"]["written"]
    pruned = AutoPrunedModel.from_pretrained(out).eval()
    expected = torch_translation_scores(pruned, AutoTokenizer.from_pretrained(out), ws, max_length=10)
    assert set(expected) == set(results["test"]["metrics"]) and expected["chrf"] > 0  # the model says something
    for name in ("onnx", "ctranslate2"):
        assert written[name]["test"] == pytest.approx(expected, abs=1e-9), name
        assert written[name]["test_change"] == pytest.approx(
            {metric: value - results["test"][f"pruned_{metric}"] for metric, value in expected.items()})
    table = capsys.readouterr().out
    assert "deploy/onnx: test sacrebleu" in table and "deploy/ctranslate2: test sacrebleu" in table


def test_onnx_translation_with_beams_is_not_scored():
    """OnnxSeq2Seq decodes greedily: under beam search its figure would not compare with the pruned model's."""
    from recipes.deploy import NotScored

    run = SimpleNamespace(task_results={"generation": {"num_beams": 4}},
                          training_args=SimpleNamespace(per_device_eval_batch_size=8, generation_max_length=10))
    with pytest.raises(NotScored, match="4 beams and OnnxSeq2Seq decodes greedily only"):
        translation.onnx_translations(run, None, None, None)


@pytest.fixture(scope="module")
def talking_whisper_dir(tiny_whisper_dir, tmp_path_factory):  # noqa: F811 - the fixture
    """The tiny Whisper with sharper weights and no end-of-text logit: it says something for every clip, so equal
    error rates mean equal transcripts, not two empty ones."""
    import shutil

    from transformers import WhisperForConditionalGeneration

    folder = tmp_path_factory.mktemp("talking_whisper")
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "proj_out" not in name:
                module.weight.mul_(8.0)
        model.model.decoder.embed_tokens.weight[model.generation_config.eos_token_id] = 0  # tied to proj_out
    model.save_pretrained(folder)
    for path in tiny_whisper_dir.iterdir():  # the processor's files
        if not (folder / path.name).exists():
            shutil.copy(path, folder / path.name)
    return folder


def test_onnx_and_ctranslate2_whisper_are_scored_on_the_test_clips(tmp_path, manifests, talking_whisper_dir):  # noqa: F811
    """Each runtime transcribes the test clips as the pruned model does: the same WER and CER."""
    pytest.importorskip("ctranslate2", reason="--export_ctranslate2 needs ctranslate2")
    from transformers import WhisperProcessor

    out = tmp_path / "whisper"
    results = whisper_deploy_run(talking_whisper_dir, manifests, out, "--export_onnx", "true",
                                 "--export_ctranslate2", "true")
    written = results["deploy"]["written"]
    model = AutoPrunedModel.from_pretrained(out).eval()
    texts = transcripts_one_clip_at_a_time(model, WhisperProcessor.from_pretrained(out),
                                           clips_of_the_test_manifest(manifests), 6)
    assert all(text.strip() for text in texts), texts
    expected = expected_error_rates(results, manifests, texts)
    for name in ("onnx", "ctranslate2"):
        assert written[name]["test"] == pytest.approx(expected), name
        assert written[name]["test_change"] == pytest.approx(
            {metric: value - results["test"][f"pruned_{metric}"] for metric, value in expected.items()})


def test_onnx_whisper_with_beams_is_not_scored():
    from transformers import GenerationConfig

    from recipes.deploy import NotScored

    runner = SimpleNamespace(generation_config=GenerationConfig(num_beams=1, max_length=20))
    with pytest.raises(NotScored, match="3 beams"):
        asr.onnx_transcripts(runner, torch.zeros(1, 80, 100), {"num_beams": 3, "max_length": 6})


def test_after_bf16_training_each_copy_is_counted_against_the_pruned_model_without_autocast(workspace, tmp_path):  # noqa: F811
    """The run's own test figures are computed under --bf16 autocast, its copies in their own precision: the int8
    copy's "change" was the precision's as well (a CTC WER 6.25 -> 6.0 that scoring the saved float32 model gave
    too). The pruned model is scored again as the copies are, and each change counted against that."""
    out = tmp_path / "out"
    results = classification.main(classification_args(workspace, out) + SHORT_RUN + [
        "--quantize", "int8", "--bf16", "true", "--use_cpu", "true"])
    deploy = results["deploy"]
    saved = AutoPrunedModel.from_pretrained(out).eval()  # float32, as the run saved it
    rows = [line.split("\t") for line in (workspace / "test.tsv").read_text().splitlines()[1:]]
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer([text for text, _ in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        predictions = saved(**batch).logits.argmax(-1)
    expected = float((predictions == torch.tensor([int(label) for _, label in rows])).float().mean())
    assert deploy["reference"]["test"] == {"accuracy": pytest.approx(expected)}
    int8 = deploy["written"]["int8"]
    assert int8["test_change"] == {"accuracy": pytest.approx(int8["test"]["accuracy"] - expected, abs=1e-6)}


def test_a_model_stored_in_half_precision_counts_its_int8_copy_against_itself_cast_to_float32(workspace, tmp_path,  # noqa: F811
                                                                                               capsys):
    """The int8 and ONNX copies are made from a float32 copy: counted against the bfloat16 model, their change was
    the cast's too (a CTC WER +37.5 points that int8 itself did not make). A float32 reference is scored for them;
    the lines say what each change is against."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "bf16"
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(workspace / "config", num_labels=2)
    BertForSequenceClassification(config).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(workspace / "tokenizer").save_pretrained(folder)
    args = classification_args(workspace, tmp_path / "out")
    args = args[:args.index("--config_name")] + args[args.index("--config_name") + 4:]  # no config or tokenizer
    results = classification.main(["--model_name_or_path", str(folder), *args, *SHORT_RUN, "--quantize", "int8"])
    deploy = results["deploy"]
    assert "reference" not in deploy  # no autocast: the run's own figure is the stored model's
    reference = deploy["reference_float32"]["test"]["accuracy"]
    int8 = deploy["written"]["int8"]
    assert int8["test_change"] == {"accuracy": pytest.approx(int8["test"]["accuracy"] - reference, abs=1e-6)}
    assert int8["test_change_against"] == "pruned in float32"
    assert "vs pruned in float32)" in capsys.readouterr().out


def test_a_model_stored_in_half_precision_without_int8_or_onnx_copies_gets_no_float32_reference(workspace,  # noqa: F811
                                                                                                 tmp_path):
    """Only the int8 and ONNX copies are made from the float32 cast: the vocabulary copy alone needs no such pass."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "bf16"
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig.from_pretrained(workspace / "config", num_labels=2)).to(
        torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(workspace / "tokenizer").save_pretrained(folder)
    args = classification_args(workspace, tmp_path / "out")
    args = args[:args.index("--config_name")] + args[args.index("--config_name") + 4:]
    results = classification.main(["--model_name_or_path", str(folder), *args, *SHORT_RUN,
                                   "--prune_vocabulary", "true"])
    assert "reference_float32" not in results["deploy"]
    assert results["deploy"]["written"]["vocabulary"]["test_change_against"] == "pruned"
