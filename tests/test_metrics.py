"""Tests for hf_adaprune.metrics and the in-process metrics of hf_adaprune.task_metrics (no Hub access)."""

from __future__ import annotations

import math
import socket
import sys

import huggingface_hub.constants
import numpy as np

import evaluate
import evaluate.config
import pytest
import sacrebleu
from transformers import EvalPrediction

from hf_adaprune.metrics import (
    headline_value,
    known_greater_is_better,
    load_metric,
    metric_greater_is_better,
    metric_key,
)
from hf_adaprune.task_metrics import LOCAL_METRICS, LocalMetric, classification_metrics, local_metric

PREDS, REFS = [0, 1, 1, 0], [0, 1, 0, 0]
# Binary (positive class 1): TP=1 (i=1), FP=1 (i=2), FN=0, TN=2 (i=0,3).
#   precision = 1/2, recall = 1/1, f1 = 2*0.5*1/1.5 = 2/3
# Class 0 as positive: TP=2, FP=0, FN=1 -> precision 1, recall 2/3, f1 = 0.8
#   macro precision = (1 + 1/2)/2 = 3/4, macro recall = (2/3 + 1)/2 = 5/6,
#   macro f1 = (0.8 + 2/3)/2 = 11/15
# MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2/sqrt(2*1*3*2) = 1/sqrt(3)
HYP, REF = "the cat sat on the mat", "the cat sat on a mat"
# n-gram precisions of HYP vs REF: 5/6, 3/5, 2/4, 1/3; equal lengths so BP = 1;
# BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** (1/4)
LABEL_METRICS = {"accuracy", "f1", "precision", "recall", "matthews_correlation"}


def compute(name: str, **inputs):
    return local_metric(name).compute(**inputs)


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE alone (evaluate's own downloader ignores it); any socket use fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_EVALUATE_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", False)
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    yield attempts
    assert attempts == []


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("accuracy", {}, 0.75),
        ("accuracy", {"normalize": False}, 3.0),
        ("f1", {}, 2 / 3),
        ("f1", {"average": "macro"}, 11 / 15),
        ("precision", {}, 0.5),
        ("precision", {"average": "macro"}, 0.75),
        ("recall", {}, 1.0),
        ("recall", {"average": "macro"}, 5 / 6),
        ("matthews_correlation", {}, 1 / math.sqrt(3)),
    ],
)
def test_classification_values(name, kwargs, expected):
    result = compute(name, predictions=PREDS, references=REFS, **kwargs)
    assert list(result) == [name]
    assert isinstance(result[name], float)
    assert result[name] == pytest.approx(expected)


def test_f1_per_class_array():
    result = compute("f1", predictions=PREDS, references=REFS, average=None)
    assert list(result["f1"]) == pytest.approx([0.8, 2 / 3])


def test_sacrebleu_matches_corpus_bleu():
    hyps, refs = [HYP, "a dog ran"], ["the cat sat on a mat", "the dog ran away"]
    expected = sacrebleu.corpus_bleu(hyps, [refs])
    result = compute("sacrebleu", predictions=hyps, references=[[r] for r in refs])
    assert result["score"] == pytest.approx(expected.score)
    assert result["bp"] == pytest.approx(expected.bp) and result["bp"] < 1
    assert (result["sys_len"], result["ref_len"]) == (expected.sys_len, expected.ref_len)
    assert result["counts"] == expected.counts
    # A plain string per prediction is one reference.
    assert compute("sacrebleu", predictions=hyps, references=refs)["score"] == pytest.approx(expected.score)


def test_sacrebleu_perfect_multi_reference_and_kwargs():
    result = compute("sacrebleu", predictions=[HYP], references=[["something else", HYP]])
    assert result["score"] == pytest.approx(100.0)
    lower = compute("sacrebleu", predictions=[HYP.upper()], references=[[HYP]], lowercase=True)
    assert lower["score"] == pytest.approx(100.0)


def test_sacrebleu_rejects_ragged_references():
    with pytest.raises(ValueError, match="same number of references"):
        compute("sacrebleu", predictions=["a", "b"], references=[["a"], ["b", "c"]])


@pytest.mark.parametrize("name", sorted(LOCAL_METRICS))
def test_predictions_and_references_of_different_lengths_are_refused(name):
    """bleu / sacrebleu / chrf scored only the zipped pairs: 2 predictions against 1 reference gave a perfect 1.0."""
    preds, refs = (PREDS, REFS[:3]) if name in LABEL_METRICS else ([HYP, "completely wrong output"], [HYP])
    with pytest.raises(ValueError, match=rf"mismatch in the number of predictions \({len(preds)}\) and "
                                         rf"references \({len(refs)}\)"):
        compute(name, predictions=preds, references=refs)


def test_bleu_is_zero_to_one():
    result = compute("bleu", predictions=[HYP], references=[[REF]])
    assert result["bleu"] == pytest.approx((1 / 12) ** 0.25)
    assert result["precisions"] == pytest.approx([5 / 6, 3 / 5, 2 / 4, 1 / 3])
    assert result["brevity_penalty"] == 1.0 and result["length_ratio"] == 1.0
    assert compute("bleu", predictions=[HYP], references=[[HYP]])["bleu"] == pytest.approx(1.0)
    short = compute("bleu", predictions=["the cat sat on"], references=[[REF]])
    assert short["brevity_penalty"] == pytest.approx(math.exp(1 - 6 / 4))
    assert short["bleu"] == pytest.approx(math.exp(1 - 6 / 4))  # all n-grams match


def test_bleu_smoothing_and_reference_length_follow_the_hub_metric():
    # Hub ``bleu`` smoothing adds one to matches and candidates of every order (sacrebleu's add-k leaves unigrams)
    smooth = compute("bleu", predictions=[HYP], references=[[REF]], smooth=True)
    assert smooth["precisions"] == pytest.approx([6 / 7, 4 / 6, 3 / 5, 2 / 4])
    assert smooth["bleu"] == pytest.approx((6 / 7 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25)
    # Hub ``bleu`` counts the shortest reference (sacrebleu the closest one: 6 words here, so BP < 1)
    multi = compute("bleu", predictions=["a b c d e"], references=[["a b c", "a b c d e f"]])
    assert multi["reference_length"] == 3 and multi["brevity_penalty"] == 1.0
    assert sacrebleu.corpus_bleu(["a b c d e"], [["a b c"], ["a b c d e f"]]).bp < 1.0
    # a tokenizer callable, as the Hub metric accepts
    chars = compute("bleu", predictions=["abcd"], references=[["abcd"]], tokenizer=list)
    assert chars["bleu"] == pytest.approx(1.0) and chars["translation_length"] == 4


def test_chrf_matches_sacrebleu():
    expected = sacrebleu.corpus_chrf([HYP], [[REF]]).score
    result = compute("chrf", predictions=[HYP], references=[[REF]])
    assert result["score"] == pytest.approx(expected) and 0 < result["score"] < 100
    assert (result["char_order"], result["word_order"], result["beta"]) == (6, 0, 2)
    assert compute("chrf", predictions=[HYP], references=[[HYP]])["score"] == pytest.approx(100.0)
    plus = compute("chrf", predictions=[HYP], references=[[REF]], word_order=2)
    assert plus["word_order"] == 2
    assert plus["score"] == pytest.approx(sacrebleu.corpus_chrf([HYP], [[REF]], word_order=2).score)


def test_wer_and_cer_return_floats():
    wer = compute("wer", predictions=["the cat sit"], references=["the cat sat"])
    assert isinstance(wer, float) and wer == pytest.approx(1 / 3)
    # Corpus level: 1 error over 6 reference words, not the mean of per-sentence rates (0.25).
    assert compute("wer", predictions=["a x", "c d e f"], references=["a b", "c d e f"]) == pytest.approx(1 / 6)
    cer = compute("cer", predictions=["abcd", "xyz"], references=["abce", "xyz"])
    assert isinstance(cer, float) and cer == pytest.approx(1 / 7)


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jiwer", None)
    with pytest.raises(ImportError, match=r"hf-adaprune\[audio\]"):
        compute("wer", predictions=["a"], references=["a"])


def test_load_metric_falls_back_offline_without_network(offline):
    metric = load_metric("evaluate-metric/wer", keep_in_memory=True, download_mode="reuse_dataset_if_exists")
    assert isinstance(metric, LocalMetric) and metric.name == "wer"
    assert metric.compute(predictions=["the cat sit"], references=["the cat sat"]) == pytest.approx(1 / 3)
    assert load_metric("accuracy").compute(predictions=PREDS, references=REFS) == {"accuracy": pytest.approx(0.75)}


def test_load_metric_tries_evaluate_first_and_leaves_its_settings_alone(monkeypatch, tmp_path):
    seen, sentinel = [], object()
    before = evaluate.config.HF_EVALUATE_OFFLINE

    def fake_load(name, **kwargs):
        seen.append((name, kwargs, evaluate.config.HF_EVALUATE_OFFLINE))
        return sentinel

    monkeypatch.setattr(evaluate, "load", fake_load)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_EVALUATE_OFFLINE", raising=False)
    assert load_metric("rouge", cache_dir="/tmp/x") is sentinel
    assert seen == [("rouge", {"cache_dir": "/tmp/x"}, before)]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # offline: only what is local or cached
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", str(tmp_path))
    assert isinstance(load_metric("accuracy"), LocalMetric) and len(seen) == 1
    (tmp_path / "evaluate_modules" / "metrics" / "evaluate-metric--accuracy").mkdir(parents=True)
    assert load_metric("accuracy") is sentinel and evaluate.config.HF_EVALUATE_OFFLINE == before


def test_load_metric_without_evaluate_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "evaluate", None)
    metric = load_metric("f1", average="macro")
    assert isinstance(metric, LocalMetric)
    assert metric.compute(predictions=PREDS, references=REFS)["f1"] == pytest.approx(11 / 15)


def test_unknown_metric_raises(offline):
    with pytest.raises(ValueError) as info:
        load_metric("no_such_metric_xyz")
    message = str(info.value)
    assert "no_such_metric_xyz" in message and "could not be reached" in message
    assert all(name in message for name in LOCAL_METRICS)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("accuracy", True),
        ("eval_f1", True),
        ("sacrebleu", True),
        ("wer", False),
        ("CER", False),
        ("eval_wer", False),
        ("loss", False),
        ("eval_loss", False),
        ("distill_loss", False),
    ],
)
def test_metric_greater_is_better(name, expected):
    assert metric_greater_is_better(name) is expected


@pytest.mark.parametrize("name", ["mse", "rmse", "mae", "ter", "perplexity", "eval_mse"])
def test_error_metrics_are_lower_is_better(name):
    assert metric_greater_is_better(name) is False


def test_unknown_direction_asks_for_the_option():
    assert known_greater_is_better("my_score") is None
    with pytest.raises(ValueError, match="--pruning_greater_is_better"):
        metric_greater_is_better("my_score")


@pytest.mark.parametrize(
    "name, key",
    [
        ("accuracy", "accuracy"),
        ("f1", "f1"),
        ("matthews_correlation", "matthews_correlation"),
        ("sacrebleu", "score"),
        ("chrf", "score"),
        ("bleu", "bleu"),
        ("wer", None),
        ("cer", None),
        ("rouge1", "rouge1"),
        ("ter", "score"),
        ("perplexity", "mean_perplexity"),
        ("comet", "mean_score"),
        ("squad", "f1"),
        ("squad_v2", "f1"),
        ("rouge", "rougeL"),
        ("eval_rougeL", "rougeL"),
        ("rougeLsum", "rougeLsum"),
    ],
)
def test_metric_key(name, key):
    assert metric_key(name) == key


def test_headline_value():
    assert headline_value("sacrebleu", {"score": 42.0, "bp": 1.0}) == 42.0
    assert headline_value("accuracy", {"accuracy": 0.75}) == 0.75
    assert headline_value("wer", 0.25) == 0.25
    with pytest.raises(KeyError, match="accuracy"):
        headline_value("accuracy", {"f1": 0.5})
    for name in LOCAL_METRICS:
        preds, refs = (PREDS, REFS) if name in LABEL_METRICS else ([HYP], [REF])
        assert isinstance(headline_value(name, compute(name, predictions=preds, references=refs)), float)


def test_headline_value_of_hub_results_keyed_other_than_their_name():
    """The Hub ter result is {'score', 'num_edits', 'ref_length'}: headline_value('ter', ...) raised KeyError."""
    out = sacrebleu.metrics.TER().corpus_score(["the cat sat"], [["the cat sat down"]])
    ter = {"score": out.score, "num_edits": out.num_edits, "ref_length": out.ref_length}
    assert headline_value("ter", ter) == pytest.approx(out.score) and out.score > 0
    assert headline_value("eval_ter", ter) == pytest.approx(out.score)
    hub_results = {
        "perplexity": ({"perplexities": [3.0, 5.0], "mean_perplexity": 4.0}, 4.0),
        "comet": ({"scores": [0.5, 0.7], "mean_score": 0.6}, 0.6),
        "squad": ({"exact_match": 50.0, "f1": 62.5}, 62.5),
        "squad_v2": ({"exact": 50.0, "f1": 62.5, "total": 2, "HasAns_f1": 62.5}, 62.5),
        "rouge": ({"rouge1": 0.5, "rouge2": 0.25, "rougeL": 0.4, "rougeLsum": 0.45}, 0.4),
        "rougeLsum": ({"rouge1": 0.5, "rouge2": 0.25, "rougeL": 0.4, "rougeLsum": 0.45}, 0.45),
        "my_bleu_variant": ({"score": 12.5, "bp": 1.0}, 12.5),  # no key of its name: its one numeric score
    }
    for name, (result, expected) in hub_results.items():
        assert headline_value(name, result) == pytest.approx(expected), name
    with pytest.raises(KeyError, match="has no key 'my_metric'"):
        headline_value("my_metric", {"score": "n/a"})  # a score that is no number is not a headline
    for name in ("ter", "perplexity"):
        assert metric_greater_is_better(name) is False
    for name in ("comet", "squad", "squad_v2", "rouge", "rougeL", "rougeLsum"):
        assert metric_greater_is_better(name) is True


def test_f1_precision_recall_are_binary_for_two_classes_and_macro_averaged_for_more():
    from sklearn.metrics import f1_score, precision_score, recall_score
    from transformers import EvalPrediction

    from hf_adaprune.task_metrics import classification_metrics

    rng = np.random.default_rng(0)
    for classes, average in ((2, "binary"), (3, "macro")):
        logits = rng.normal(size=(40, classes))
        labels = rng.integers(0, classes, size=40)
        predictions = logits.argmax(-1)
        for name, score in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
            value = classification_metrics(name)(EvalPrediction(predictions=logits, label_ids=labels))[name]
            assert value == pytest.approx(score(labels, predictions, average=average), abs=1e-12), (name, classes)
    # a three-class head scored on rows holding two of its classes: macro over the references' classes (a row
    # predicted as the third counts as a miss of its own class, not as a third class scoring 0)
    logits = rng.normal(size=(10, 3))
    assert 2 in logits.argmax(-1)
    value = classification_metrics("f1")(EvalPrediction(predictions=logits, label_ids=np.array([0, 1] * 5)))["f1"]
    assert value == pytest.approx(f1_score([0, 1] * 5, logits.argmax(-1), average="macro", labels=[0, 1]),
                                  abs=1e-12)


# multi-hot rows: logits > 0 predict [1,0,1], [0,1,0], [1,1,1] against labels [1,0,1], [0,1,0], [1,0,1]:
#   subset accuracy 2/3; micro counts TP 5, FP 1, FN 0: precision 5/6, recall 1, f1 10/11
MULTI_LABEL_LOGITS = np.array([[1.0, -1.0, 2.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
MULTI_LABEL_LABELS = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


@pytest.mark.parametrize("name, expected", [("accuracy", 2 / 3), ("precision", 5 / 6), ("recall", 1.0),
                                            ("f1", 10 / 11)])
def test_named_metric_of_a_multi_label_head(offline, name, expected):
    compute = classification_metrics(name)
    value = compute(EvalPrediction(MULTI_LABEL_LOGITS, MULTI_LABEL_LABELS))[name]
    assert value == pytest.approx(expected)


def test_named_metric_refuses_what_the_head_cannot_give(offline):
    with pytest.raises(ValueError, match="matthews_correlation is not defined for a multi-label head"):
        classification_metrics("matthews_correlation")(EvalPrediction(MULTI_LABEL_LOGITS, MULTI_LABEL_LABELS))
    with pytest.raises(ValueError, match="needs classes, but the model has one output \\(regression\\)"):
        classification_metrics("accuracy")(EvalPrediction(np.zeros((4, 1)), np.array([0.1, 0.5, 0.2, 0.9])))
    with pytest.raises(ValueError, match="--pruning_metric bleu scores generated text, and this model's predictions "
                                         "are classes"):
        classification_metrics("bleu")  # when it is built: it failed on the first evaluation, deep in the metric
    qa = EvalPrediction((np.zeros((4, 12)), np.zeros((4, 12))), (np.array([1, 2, 3, 4]), np.array([2, 3, 4, 5])))
    with pytest.raises(ValueError, match="rows carry 2 label columns \\(question answering's start/end positions"):
        classification_metrics("accuracy")(qa)


@pytest.mark.parametrize("name", ["f1", "precision", "recall", "matthews_correlation"])
def test_a_class_metric_of_generated_text_is_refused_by_name(name):
    from hf_adaprune.task_metrics import generation_metrics

    with pytest.raises(ValueError, match=f"--pruning_metric {name} averages over classes, and generated text has none"):
        generation_metrics(name, tokenizer=None)


def test_macro_scores_average_over_the_classes_the_references_hold():
    """Three classes, the decision rows hold two: one wrong row predicted as the absent class scored macro F1 0.65
    (sklearn averaged in that class's 0), the same row predicted as the other present class 0.95: decisions followed
    which wrong class a pruned model chose. Averaged over the references' classes, both are near 0.95."""
    from transformers import EvalPrediction

    from hf_adaprune.task_metrics import classification_metrics

    labels = np.array([0] * 10 + [1] * 10)
    config = type("Config", (), {"num_labels": 3, "problem_type": None})()
    compute = classification_metrics("f1", config=config)
    values = {}
    for wrong in (0, 2):
        predicted = labels.copy()
        predicted[10] = wrong  # one class-1 row wrong
        values[wrong] = compute(EvalPrediction(predictions=np.eye(3)[predicted], label_ids=labels))["f1"]
    assert values[0] == pytest.approx((20 / 21 + 18 / 19) / 2)
    assert values[2] == pytest.approx((1.0 + 18 / 19) / 2)


@pytest.mark.parametrize("form", [None, "numpy", "torch"])
def test_row_labels_read_a_formatted_dataset(form):
    """A torch-formatted eval set (set_format("torch")) gave 0-d tensors, and the decision-row check was skipped."""
    import datasets

    from hf_adaprune.task_metrics import row_labels

    rows = datasets.Dataset.from_dict({"input_ids": [[5, 6]] * 4, "labels": [0, 1, 0, 0]})
    assert row_labels(rows.with_format(form)) == [0, 1, 0, 0]
    tokens = datasets.Dataset.from_dict({"labels": [[0, -100, 1], [1, 1, -100]]})
    assert row_labels(tokens.with_format(form)) == [0, 1, 1, 1]


def test_nan_logits_score_nan_not_the_share_of_class_zero(caplog):
    """argmax took a NaN for class 0: a model whose outputs were all NaN scored 0.9 accuracy on rows 90% class 0, and
    pruning went on to the target within tolerance."""
    import logging

    logits = np.full((10, 2), np.nan, dtype=np.float32)
    labels = np.array([0] * 9 + [1])
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        for name in ("accuracy", "f1", "matthews_correlation"):
            assert math.isnan(classification_metrics(name)(EvalPrediction(logits, labels))[name])
    assert "--pruning_metric accuracy: 20 of the 20 logits scored are not finite; the metric is NaN" in caplog.text
    tokens = np.zeros((2, 3, 2), dtype=np.float32)  # token classification: a NaN where the label is padding counts not
    tokens[1, 2] = np.nan
    assert classification_metrics("accuracy")(EvalPrediction(tokens, np.array([[0, 0, 0], [0, 0, -100]]))) == \
        {"accuracy": 1.0}
    multi = np.full((4, 3), np.nan, dtype=np.float32)
    assert math.isnan(classification_metrics("accuracy")(EvalPrediction(multi, np.zeros((4, 3))))["accuracy"])
    logits[3, 1] = 0.0
    assert math.isnan(classification_metrics("accuracy")(EvalPrediction(logits, labels))["accuracy"])


def test_generated_text_accuracy_is_exact_match_in_process_whatever_evaluate_loads(monkeypatch):
    """evaluate's Hub accuracy takes class ids: where it loads (online, or cached), decoded strings failed with
    'invalid literal for int()'."""
    from hf_adaprune.task_metrics import generation_metrics

    class ClassIdsOnly:
        def compute(self, predictions, references):
            return {"accuracy": float(np.mean([int(p) == int(r) for p, r in zip(predictions, references)]))}

    monkeypatch.setattr(evaluate, "load", lambda name, **kwargs: ClassIdsOnly())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    class Tokenizer:
        pad_token_id, eos_token_id = 0, 1

        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(f"w{i}" for i in row if i > 1) for row in ids]

    for name in ("accuracy", "evaluate-metric/accuracy"):
        metric = generation_metrics(name, Tokenizer())
        scores = metric(EvalPrediction(np.array([[2, 3, 1], [2, 4, 1]]), np.array([[2, 3, 1], [2, 3, 1]])))
        assert list(scores.values()) == [0.5]


def test_load_metric_names_and_options(monkeypatch):
    """Names in another case (Accuracy, WER) and evaluate.load's process options loaded in-process only at
    compute() to fail; a configuration the in-process metric does not have is refused at load; rouge1 / rougeLsum
    load rouge (evaluate has no module of those names)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert load_metric("Accuracy").compute(predictions=PREDS, references=REFS) == {"accuracy": pytest.approx(0.75)}
    assert load_metric("WER").compute(predictions=["a b"], references=["a c"]) == pytest.approx(0.5)
    assert load_metric("accuracy", experiment_id="x", num_process=2, process_id=0).compute(
        predictions=PREDS, references=REFS) == {"accuracy": pytest.approx(0.75)}
    with pytest.raises(ValueError, match="with config_name='multilabel'.*the in-process f1 has no configurations"):
        load_metric("f1", config_name="multilabel")
    seen = []
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(evaluate, "load", lambda name, **kwargs: seen.append(name) or "module")
    assert load_metric("rouge1") == "module" and load_metric("rougeLsum") == "module" and seen == ["rouge", "rouge"]
    assert headline_value("rouge1", {"rouge1": 0.4, "rougeL": 0.3}) == 0.4
    assert headline_value("rougeLsum", {"rougeLsum": 0.2, "rougeL": 0.3}) == 0.2


def test_at_floor_knows_the_higher_is_better_metrics_that_stop_at_0():
    from hf_adaprune.metrics import at_floor

    assert at_floor("accuracy", 0.0) and at_floor("evaluate-metric/sacrebleu", 0) and at_floor("eval_f1", 0.0)
    assert not at_floor("accuracy", 0.2)
    assert not at_floor("wer", 0.0) and not at_floor("loss", 0.0)  # lower is better: 0 is the best, not the worst
    assert not at_floor("matthews_correlation", 0.0) and not at_floor("my_metric", 0.0)  # -1 floor; unknown
