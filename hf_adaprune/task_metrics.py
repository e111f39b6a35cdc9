"""Metrics computed in-process, and ``compute_metrics`` functions for the Trainer built from a metric name.

:data:`LOCAL_METRICS` computes what the Hub metrics of the same names compute, with
the same inputs, keyword arguments and result keys, from scikit-learn (labels),
sacrebleu (``sacrebleu``, ``bleu``, ``chrf``) and jiwer (``wer``, ``cer``), imported
when a metric is computed. ``bleu`` is the Hub ``bleu`` algorithm (clipped n-gram
precisions over 13a tokens, Hub smoothing), not sacrebleu's BLEU.

:func:`classification_metrics` / :func:`generation_metrics` are used when a user
names ``--pruning_metric`` but passes no ``compute_metrics``. Each returns
``{metric_name: value}``, so the Trainer logs ``eval_<metric_name>``.
"""

from __future__ import annotations

import collections
import importlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# metrics whose references are lists of strings (several references per prediction)
_MULTI_REFERENCE = {"sacrebleu", "bleu", "chrf"}


def _optional(module: str, extra: str) -> Any:
    """Import an optional dependency (sacrebleu, jiwer), naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"This metric needs {module!r}: pip install 'hf-adaprune[{extra}]'") from err


def _sklearn(score_name: str, key: str) -> Callable[..., dict]:
    def compute(predictions, references, **kwargs):
        from sklearn import metrics as sklearn_metrics  # a dependency, imported when a label metric runs

        score_fn = getattr(sklearn_metrics, score_name)
        score = score_fn(references, predictions, **kwargs)
        return {key: float(score) if np.size(score) == 1 else score}

    return compute


def _reference_streams(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Per-prediction references (a string or a list each) as sacrebleu's per-reference streams."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if len({len(r) for r in refs}) > 1:
        raise ValueError("Every prediction needs the same number of references.")
    return [list(stream) for stream in zip(*refs)]


def _sacrebleu(predictions, references, **kwargs) -> dict:
    out = _optional("sacrebleu", "translation").corpus_bleu(list(predictions), _reference_streams(references), **kwargs)
    return {"score": out.score, "counts": out.counts, "totals": out.totals, "precisions": out.precisions,
            "bp": out.bp, "sys_len": out.sys_len, "ref_len": out.ref_len}


def _chrf(predictions, references, **kwargs) -> dict:
    chrf = _optional("sacrebleu", "translation").CHRF(**kwargs)
    out = chrf.corpus_score(list(predictions), _reference_streams(references))
    return {"score": out.score, "char_order": chrf.char_order, "word_order": chrf.word_order, "beta": chrf.beta}


def _ngrams(tokens: list[str], max_order: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1)
                               for i in range(len(tokens) - n + 1))


def _bleu(predictions, references, tokenizer=None, max_order: int = 4, smooth: bool = False) -> dict:
    """The Hub ``bleu`` metric (tensorflow/nmt ``compute_bleu``): 0..1, add-one smoothing on every order."""
    if tokenizer is None:
        split_13a = _optional("sacrebleu.tokenizers.tokenizer_13a", "translation").Tokenizer13a()

        def tokenizer(text):
            return split_13a(text).split()

    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    matches, possible = [0] * max_order, [0] * max_order
    reference_length = translation_length = 0
    for candidates, prediction in zip(refs, predictions):
        translation = tokenizer(prediction)
        tokenized = [tokenizer(r) for r in candidates]
        reference_length += min(len(r) for r in tokenized)
        translation_length += len(translation)
        merged = collections.Counter()
        for reference in tokenized:
            merged |= _ngrams(reference, max_order)
        for ngram, count in (_ngrams(translation, max_order) & merged).items():
            matches[len(ngram) - 1] += count
        for order in range(1, max_order + 1):
            possible[order - 1] += max(len(translation) - order + 1, 0)
    if smooth:
        precisions = [(m + 1.0) / (p + 1.0) for m, p in zip(matches, possible)]
    else:
        precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    geo_mean = math.exp(sum(math.log(p) / max_order for p in precisions)) if min(precisions) > 0 else 0.0
    ratio = translation_length / reference_length if reference_length else 0.0
    bp = 1.0 if ratio > 1.0 else (math.exp(1 - 1 / ratio) if ratio > 0 else 0.0)
    return {"bleu": geo_mean * bp, "precisions": precisions, "brevity_penalty": bp, "length_ratio": ratio,
            "translation_length": translation_length, "reference_length": reference_length}


def _error_rate(measure: str) -> Callable[..., float]:
    def compute(predictions, references, concatenate_texts: bool = False) -> float:
        # Total edits over total reference length, so concatenate_texts (kept for Hub
        # compatibility) gives the same value either way.
        jiwer = _optional("jiwer", "audio")
        return float(getattr(jiwer, measure)(reference=list(references), hypothesis=list(predictions)))

    return compute


LOCAL_METRICS: dict[str, Callable[..., Any]] = {
    "accuracy": _sklearn("accuracy_score", "accuracy"),
    "f1": _sklearn("f1_score", "f1"),
    "precision": _sklearn("precision_score", "precision"),
    "recall": _sklearn("recall_score", "recall"),
    "matthews_correlation": _sklearn("matthews_corrcoef", "matthews_correlation"),
    "sacrebleu": _sacrebleu,
    "bleu": _bleu,
    "chrf": _chrf,
    "wer": _error_rate("wer"),
    "cer": _error_rate("cer"),
}


@dataclass(frozen=True)
class LocalMetric:
    """A metric of :data:`LOCAL_METRICS` with the ``compute`` call of an ``evaluate`` module."""

    name: str
    init_kwargs: dict = field(default_factory=dict)

    def compute(self, *, predictions, references, **kwargs):
        predictions, references = list(predictions), list(references)
        if len(predictions) != len(references):  # sacrebleu / bleu would score only the zipped pairs
            raise ValueError(f"{self.name}: mismatch in the number of predictions ({len(predictions)}) and references "
                             f"({len(references)}): pass one reference (or one list of references) per prediction")
        return LOCAL_METRICS[self.name](predictions, references, **{**self.init_kwargs, **kwargs})


def local_metric(name: str, **kwargs) -> LocalMetric:
    if name not in LOCAL_METRICS:
        raise ValueError(f"no in-process metric {name!r}; known: {', '.join(sorted(LOCAL_METRICS))}")
    return LocalMetric(name, kwargs)


# label metrics that average over classes: binary for two classes, macro-averaged for more
AVERAGED = ("f1", "precision", "recall")
# label metrics over classes: not defined for generated sequences (accuracy is: whole-sequence exact match)
CLASS_METRICS = AVERAGED + ("matthews_correlation",)
# metrics of generated text (references are strings): no classifier's predictions can be scored with them
TEXT_METRICS = ("sacrebleu", "bleu", "chrf", "wer", "cer", "mer", "wil", "ter", "rouge", "meteor", "google_bleu")


# label metrics scikit-learn computes on multi-label (multi-hot) rows: subset accuracy, micro-averaged f1/p/r
MULTI_LABEL = ("accuracy", "f1", "precision", "recall")


def _multi_label(name: str, logits: np.ndarray, labels: np.ndarray) -> dict:
    """``name`` of a multi-label head (``problem_type="multi_label_classification"``): a label is predicted
    where its logit is positive (sigmoid > 0.5); accuracy is the share of rows with every label right."""
    if name not in MULTI_LABEL:
        raise ValueError(f"--pruning_metric {name} is not defined for a multi-label head; use one of "
                         f"{', '.join(MULTI_LABEL)} or loss, or pass a compute_metrics")
    options = {} if name == "accuracy" else {"average": "micro", "zero_division": 0}
    return LOCAL_METRICS[name]((logits > 0).astype(int), np.rint(labels).astype(int), **options)


def row_labels(dataset) -> list[int] | None:
    """The class ids of a ``datasets.Dataset``'s label column (``labels``, ``label`` or ``label_ids``; token labels
    flattened, -100 left out), or None for other datasets or labels that are not whole numbers."""
    names = getattr(dataset, "column_names", None)
    column = next((name for name in ("labels", "label", "label_ids") if names and name in names), None)
    if column is None:
        return None
    plain = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset  # torch / numpy formats
    flat = []
    for value in plain[column]:
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
                return None
            if item != -100:
                flat.append(int(item))
    return flat


def positive_class(config):
    """What binary f1 / precision / recall score as positive: class 1, by its name in ``id2label`` where it has one."""
    return (getattr(config, "id2label", None) or {}).get(1, 1)


def unmovable_metric(name: str, labels: list[int], config) -> str | None:
    """Why the built-in ``name`` cannot follow pruning on rows with these class ids (None: it can): binary f1,
    precision and recall score class 1, and stay at 0 on rows without one whatever the model predicts; Matthews
    correlation is 0 on rows of one class."""
    if getattr(config, "problem_type", None) == "multi_label_classification":
        return None  # micro-averaged over labels: no class is "the positive one"
    present = set(labels)
    num_labels = getattr(config, "num_labels", None)
    if name in AVERAGED and num_labels == 2 and 1 not in present:
        return (f"{name} on two classes scores class 1 ({positive_class(config)!r}), and none of the {len(labels)} rows that "
                f"pruning decisions read has it: {name} would stay at 0 whatever pruning removes, and every step "
                "would be kept")
    if name == "matthews_correlation" and len(present) < 2:
        return (f"matthews_correlation is 0 on rows of one class, and the {len(labels)} rows that pruning decisions "
                f"read are all class {next(iter(present), '?')}: it would not move whatever pruning removes")
    return None


def multi_label_rows(config, predictions: np.ndarray, labels: np.ndarray) -> bool:
    """Whether :func:`classification_metrics` scores ``predictions`` as a multi-label head's rows: the config's
    ``problem_type`` says so, or (none set yet) the labels are multi-hot rows shaped like 2-D predictions (float
    labels, BCE's, or float predictions)."""
    problem = getattr(config, "problem_type", None)
    if problem:
        return problem == "multi_label_classification"
    class_ids = np.issubdtype(predictions.dtype, np.integer) and predictions.shape == labels.shape
    return labels.shape == predictions.shape and predictions.ndim == 2 and predictions.shape[-1] > 1 and (
        np.issubdtype(labels.dtype, np.floating) or not class_ids)


def probability_scores(logits, predictions) -> bool:
    """Whether ``predictions`` (what a ``preprocess_logits_for_metrics`` made of ``logits``, one tensor or a tuple
    of them) look like probabilities: floats in [0, 1], not all 0 / 1, and not the logits themselves (a function
    that picks the logits out of the model's outputs)."""
    import torch

    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0] if predictions else None
    if not isinstance(predictions, torch.Tensor) or not predictions.is_floating_point() or not predictions.numel():
        return False
    values = predictions.detach().float()
    raw = logits if isinstance(logits, (tuple, list)) else (logits,)
    if any(isinstance(r, torch.Tensor) and r.shape == values.shape  # logits on the GPU, predictions moved off it
           and torch.equal(r.detach().float().to(values.device), values) for r in raw):
        return False
    if bool(values.isnan().any()) or values.min() < 0 or values.max() > 1:
        return False
    return not bool(((values == 0) | (values == 1)).all())


def _regression_head(problem_type: str | None, logits: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the logits are a regression head's values, not class scores: its config says so, or it has one output
    and the labels are float (or one number per row), whatever their shape ((N,), (N, 1))."""
    if problem_type == "regression":
        return True
    return logits.shape[-1] == 1 and (labels.ndim == 1 or np.issubdtype(labels.dtype, np.floating))


def classification_metrics(name: str, config=None):
    """Argmax over logits, then ``name`` against the labels.

    ``f1``, ``precision`` and ``recall`` are binary (class 1) for a two-class head and macro-averaged over
    the classes for a head with more (the Hub metrics' binary default would fail on more than two classes,
    and only once the evaluated rows hold a third class, possibly hours into a run). A multi-label head
    (multi-hot labels shaped like the logits) predicts every label whose logit is positive: subset accuracy,
    micro-averaged f1/precision/recall; its predictions are logits or 0/1, not probabilities (a sigmoid's, all
    positive, would predict every label: the pruning trainer refuses a ``preprocess_logits_for_metrics`` that
    returns them before training, see :func:`probability_scores`). A single-output (regression) head is refused:
    it has no classes.

    Integer predictions shaped like the labels are class ids already (a ``preprocess_logits_for_metrics`` that
    returns ``logits.argmax(-1)``) and are scored as they are, unless the head is multi-label. ``config``: the
    model's, read when the metric runs (transformers sets ``problem_type`` at the first labelled forward): its
    ``problem_type`` tells a multi-label head, its ``num_labels`` how class ids are averaged. Without it (or
    before ``problem_type`` is set) float labels shaped like 2-D predictions are multi-hot rows.
    """
    from .metrics import headline_value, load_metric

    if name.lower() in TEXT_METRICS:
        raise ValueError(f"--pruning_metric {name} scores generated text, and this model's predictions are classes: "
                         f"use a label metric ({', '.join(MULTI_LABEL)}, matthews_correlation) or loss; {name} needs a "
                         "seq2seq model trained with AdaptivePruningSeq2SeqTrainer and --predict_with_generate")
    metric = load_metric(name)

    def compute_metrics(eval_pred):
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(labels, (tuple, list)):
            raise ValueError(f"--pruning_metric {name} compares one label per row (or token) with the argmax of the "
                             f"logits, but the rows carry {len(labels)} label columns (question answering's "
                             "start/end positions?): use --pruning_metric loss, or pass a compute_metrics "
                             "(e.g. exact match / F1 of the predicted spans)")
        if isinstance(logits, tuple):
            logits = logits[0]
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        problem = getattr(config, "problem_type", None)
        num_labels = getattr(config, "num_labels", None)
        class_ids = np.issubdtype(logits.dtype, np.integer) and logits.shape == labels.shape
        scored = logits[labels != -100] if labels.shape == logits.shape[:-1] else logits  # tokens: labelled ones
        if np.issubdtype(logits.dtype, np.floating) and not np.isfinite(scored).all():
            # argmax takes a NaN for class 0 (a model broken by pruning scored the share of class 0 rows): NaN,
            # which no pruning decision keeps
            logger.warning("--pruning_metric %s: %d of the %d logits scored are not finite; the metric is NaN", name,
                           int((~np.isfinite(scored)).sum()), scored.size)
            return {name: float("nan")}
        if multi_label_rows(config, logits, labels):
            return {name: headline_value(name, _multi_label(name, logits, labels))}
        if not class_ids and _regression_head(problem, logits, labels):
            outputs = "one output" if logits.shape[-1] == 1 else f"{logits.shape[-1]} outputs"
            raise ValueError(f"--pruning_metric {name} needs classes, but the model has {outputs} (regression): "
                             "use --pruning_metric loss, or pass a compute_metrics (e.g. Pearson correlation)")
        predictions = logits if class_ids else logits.argmax(-1)
        keep = labels != -100  # token classification pads labels with -100
        classes = (num_labels or int(max(predictions.max(initial=0), labels[keep].max(initial=0))) + 1) \
            if class_ids else logits.shape[-1]
        references = labels[keep].tolist()
        # macro averages over the classes of the references, the same rows at every decision (sklearn's default, the
        # classes of references and predictions together, changed with what a pruned model predicts: one row
        # predicted as a class no reference has moved macro F1 by 0.3)
        options = {"average": "macro", "labels": sorted(set(references))} if name in AVERAGED and classes > 2 else {}
        result = metric.compute(predictions=predictions[keep].tolist(), references=references, **options)
        return {name: headline_value(name, result)}

    compute_metrics.class_metrics = (name,)  # the trainer checks that the decision rows can move it
    return compute_metrics


def decode_ids(ids, tokenizer) -> list[str]:
    ids = np.asarray(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = np.where(ids < 0, pad, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generation_metrics(name: str, tokenizer, normalize=None):
    """Decode generated ids and labels with ``tokenizer``, then ``name`` (BLEU, chrF, WER, CER, ...)."""
    from .metrics import headline_value, load_metric

    if name.lower() in CLASS_METRICS:
        raise ValueError(f"--pruning_metric {name} averages over classes, and generated text has none: use a text "
                         f"metric ({', '.join(TEXT_METRICS[:5])}, ...), accuracy (whole-sequence exact match) or loss, "
                         "or pass a compute_metrics")
    # accuracy of generated text is whole-sequence exact match, in-process: the Hub's accuracy takes class ids only
    exact_match = name.lower().rsplit("/", 1)[-1] == "accuracy"  # evaluate-metric/accuracy too
    metric = local_metric("accuracy") if exact_match else load_metric(name)

    def compute_metrics(eval_pred):
        predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        hypotheses = decode_ids(predictions, tokenizer)
        references = decode_ids(eval_pred.label_ids, tokenizer)
        if normalize is not None:
            hypotheses, references = [normalize(t) for t in hypotheses], [normalize(t) for t in references]
        if name in _MULTI_REFERENCE:
            result = metric.compute(predictions=hypotheses, references=[[r] for r in references])
        else:
            result = metric.compute(predictions=hypotheses, references=references)
        return {name: headline_value(name, result)}

    return compute_metrics
