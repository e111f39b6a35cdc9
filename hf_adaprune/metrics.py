"""Resolve metric names to ``evaluate`` metrics, with an offline fallback.

:func:`load_metric` first tries :func:`evaluate.load`, which fetches a metric
script from the Hugging Face Hub (or reuses a cached/local copy). Offline, a
plain ``evaluate.load`` is slow to fail: it sends about nine HEAD requests with
10-100 s timeouts and 0.5 s retry sleeps, which can mean minutes on a network
that drops packets. So when the Hub is known to be unreachable
(``HF_EVALUATE_OFFLINE`` / ``HF_HUB_OFFLINE`` set, or a TCP probe of the
endpoint failing within :data:`HUB_PROBE_TIMEOUT` seconds, done once per
process), ``evaluate.load`` runs with ``evaluate``'s offline mode switched on:
local scripts and cached Hub modules still load, anything else fails at once.

When ``evaluate.load`` fails, names in :data:`BUILTIN_METRICS` resolve to small
``evaluate.Metric`` subclasses computed with scikit-learn, sacrebleu and jiwer.
They accept the same inputs, compute keyword arguments and result keys as the
Hub metrics of the same name, except where a class docstring says otherwise.

Results are dicts, except for ``wer`` and ``cer`` which return a bare float (as
the Hub versions do). Use :func:`headline_value` to read the main number from
either, and :func:`metric_greater_is_better` for the optimisation direction.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import urlsplit

import datasets
import evaluate
import evaluate.config
import numpy as np
from sklearn import metrics as skm

__all__ = [
    "BUILTIN_METRICS",
    "headline_value",
    "load_metric",
    "metric_greater_is_better",
    "metric_key",
]

logger = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT = 2.0
_TRUE = {"1", "ON", "YES", "TRUE"}
# evaluate.load() arguments that only concern fetching the module.
_LOAD_ONLY_KWARGS = {"module_type", "download_config", "download_mode", "revision"}

_LABELS = datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")})
_TEXT_PAIRS = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})
_MULTI_REF = [
    datasets.Features(
        {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
    ),
    _TEXT_PAIRS,
]


def _optional(module: str, extra: str) -> Any:
    """Import an optional dependency (sacrebleu, jiwer), naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"This metric needs {module!r}: pip install 'hf-adaprune[{extra}]'") from err


class _BuiltinMetric(evaluate.Metric):
    """Base class: metric info built from the class docstring and ``features``."""

    features: ClassVar[datasets.Features | list[datasets.Features]]

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.__doc__ or "",
            citation="",
            inputs_description="",
            features=self.features,
        )


class _SklearnMetric(_BuiltinMetric):
    """Integer-label metric delegating to a scikit-learn ``score_fn(y_true, y_pred, **kwargs)``."""

    features = _LABELS
    key: ClassVar[str]
    score_fn: ClassVar[Callable[..., Any]]

    def _compute(self, predictions: Sequence[int], references: Sequence[int], **kwargs: Any) -> dict[str, Any]:
        score = type(self).score_fn(references, predictions, **kwargs)
        return {self.key: float(score) if np.size(score) == 1 else score}


class Accuracy(_SklearnMetric):
    """Accuracy (``sklearn.metrics.accuracy_score``); kwargs: ``normalize``, ``sample_weight``."""

    key, score_fn = "accuracy", skm.accuracy_score


class F1(_SklearnMetric):
    """F1 (``sklearn.metrics.f1_score``); kwargs: ``average`` (default "binary"), ``labels``, ``pos_label``, ..."""

    key, score_fn = "f1", skm.f1_score


class Precision(_SklearnMetric):
    """Precision (``sklearn.metrics.precision_score``); kwargs as for :class:`F1` plus ``zero_division``."""

    key, score_fn = "precision", skm.precision_score


class Recall(_SklearnMetric):
    """Recall (``sklearn.metrics.recall_score``); kwargs as for :class:`F1` plus ``zero_division``."""

    key, score_fn = "recall", skm.recall_score


class MatthewsCorrelation(_SklearnMetric):
    """Matthews correlation coefficient (``sklearn.metrics.matthews_corrcoef``); kwarg ``sample_weight``."""

    key, score_fn = "matthews_correlation", skm.matthews_corrcoef


def _reference_streams(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Turn per-prediction references (a string or a list each) into sacrebleu's per-reference streams."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    if len({len(r) for r in refs}) > 1:
        raise ValueError("Every prediction needs the same number of references.")
    return [list(stream) for stream in zip(*refs)]


class Sacrebleu(_BuiltinMetric):
    """SacreBLEU (0-100) via ``sacrebleu.corpus_bleu``; kwargs as ``corpus_bleu`` (smooth_method, tokenize, ...)."""

    features = _MULTI_REF

    def _compute(self, predictions: Sequence[str], references: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
        sacrebleu = _optional("sacrebleu", "translation")
        out = sacrebleu.corpus_bleu(list(predictions), _reference_streams(references), **kwargs)
        return {
            "score": out.score,
            "counts": out.counts,
            "totals": out.totals,
            "precisions": out.precisions,
            "bp": out.bp,
            "sys_len": out.sys_len,
            "ref_len": out.ref_len,
        }


class Bleu(_BuiltinMetric):
    """BLEU in 0..1 with the keys of the Hub ``bleu`` metric, computed by sacrebleu.

    Differences from the Hub metric: ``tokenize`` takes a sacrebleu tokenizer
    name (default "13a", the Hub default) rather than a callable; ``smooth=True``
    uses sacrebleu's add-k (k=1) smoothing, which leaves unigram precision
    unsmoothed where the Hub's smoothing adds one to every order; every
    prediction needs the same number of references.
    """

    features = _MULTI_REF

    def _compute(
        self,
        predictions: Sequence[str],
        references: Sequence[Any],
        max_order: int = 4,
        smooth: bool = False,
        tokenize: str = "13a",
    ) -> dict[str, Any]:
        bleu = _optional("sacrebleu", "translation").BLEU(
            max_ngram_order=max_order, smooth_method="add-k" if smooth else "none", tokenize=tokenize
        )
        out = bleu.corpus_score(list(predictions), _reference_streams(references))
        return {
            "bleu": out.score / 100,
            "precisions": [p / 100 for p in out.precisions],
            "brevity_penalty": out.bp,
            "length_ratio": out.sys_len / out.ref_len if out.ref_len else 0.0,
            "translation_length": out.sys_len,
            "reference_length": out.ref_len,
        }


class Chrf(_BuiltinMetric):
    """chrF / chrF++ (0-100) via ``sacrebleu.metrics.CHRF``; kwargs as ``CHRF`` (char_order, word_order, beta, ...)."""

    features = _MULTI_REF

    def _compute(self, predictions: Sequence[str], references: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
        chrf = _optional("sacrebleu", "translation").CHRF(**kwargs)
        out = chrf.corpus_score(list(predictions), _reference_streams(references))
        return {"score": out.score, "char_order": chrf.char_order, "word_order": chrf.word_order, "beta": chrf.beta}


class _ErrorRate(_BuiltinMetric):
    """Corpus-level error rate from the jiwer function named ``measure``; returns a float."""

    features = _TEXT_PAIRS
    measure: ClassVar[str]

    def _compute(
        self, predictions: Sequence[str], references: Sequence[str], concatenate_texts: bool = False
    ) -> float:
        # Total edits over total reference length, so concatenate_texts (kept
        # for Hub compatibility) gives the same value either way.
        measure = getattr(_optional("jiwer", "audio"), self.measure)
        return float(measure(reference=list(references), hypothesis=list(predictions)))


class Wer(_ErrorRate):
    """Word error rate (``jiwer.wer``)."""

    measure = "wer"


class Cer(_ErrorRate):
    """Character error rate (``jiwer.cer``)."""

    measure = "cer"


BUILTIN_METRICS: dict[str, type[evaluate.Metric]] = {
    "accuracy": Accuracy,
    "f1": F1,
    "precision": Precision,
    "recall": Recall,
    "matthews_correlation": MatthewsCorrelation,
    "sacrebleu": Sacrebleu,
    "bleu": Bleu,
    "chrf": Chrf,
    "wer": Wer,
    "cer": Cer,
}

_HEADLINE_KEYS: dict[str, str | None] = {"sacrebleu": "score", "chrf": "score", "wer": None, "cer": None}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").upper() in _TRUE


def _hub_offline() -> bool:
    """Whether offline mode is requested through evaluate's or huggingface_hub's settings."""
    import huggingface_hub.constants

    return bool(
        evaluate.config.HF_EVALUATE_OFFLINE
        or huggingface_hub.constants.HF_HUB_OFFLINE
        or _flag("HF_EVALUATE_OFFLINE")
        or _flag("HF_HUB_OFFLINE")
    )


@lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """TCP-probe the Hub endpoint (DNS included) within ``HUB_PROBE_TIMEOUT``; assume reachable behind a proxy."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(evaluate.config.HF_ENDPOINT)
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    reached: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=HUB_PROBE_TIMEOUT).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT)
    return bool(reached)


def _evaluate_load(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """``evaluate.load`` that stays off the network when the Hub is unreachable (local files and cache only)."""
    if os.path.exists(name) or (not _hub_offline() and _hub_reachable()):
        return evaluate.load(name, **kwargs)
    # evaluate reads this module-level flag at call time; the swap is not thread-safe.
    previous, evaluate.config.HF_EVALUATE_OFFLINE = evaluate.config.HF_EVALUATE_OFFLINE, True
    try:
        return evaluate.load(name, **kwargs)
    finally:
        evaluate.config.HF_EVALUATE_OFFLINE = previous


def load_metric(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """Return ``evaluate.load(name, **kwargs)``, or the built-in metric of that name if that fails.

    ``kwargs`` are ``evaluate.load`` arguments; those other than module_type,
    download_config, download_mode and revision are passed to the built-in's
    constructor. Raises ``ValueError`` if neither works.
    """
    try:
        return _evaluate_load(name, **kwargs)
    except Exception as err:
        builtin = BUILTIN_METRICS.get(name.removeprefix("evaluate-metric/"))
        if builtin is None:
            raise ValueError(
                f"Cannot load metric {name!r}: evaluate.load failed ({type(err).__name__}: {err}); the Hugging Face "
                f"Hub could not be reached or has no such metric, and it is not built in. "
                f"Built-in metrics: {', '.join(sorted(BUILTIN_METRICS))}."
            ) from err
        logger.warning("evaluate.load(%r) failed (%s: %s); using the built-in metric.", name, type(err).__name__, err)
        return builtin(**{k: v for k, v in kwargs.items() if k not in _LOAD_ONLY_KWARGS})


def _base_name(name: str) -> str:
    """``"evaluate-metric/WER"`` -> ``"wer"``; ``"eval_accuracy"`` -> ``"accuracy"``."""
    return name.rsplit("/", 1)[-1].lower().removeprefix("eval_")


def metric_greater_is_better(name: str) -> bool:
    """False for error rates (wer, cer) and losses (names ending in "loss"), True otherwise."""
    base = _base_name(name)
    return not (base in {"wer", "cer"} or base.endswith("loss"))


def metric_key(name: str) -> str | None:
    """Key of the headline value in the ``compute()`` result, or None where the result is a bare float (wer, cer).

    Names without a known key map to themselves, the Hub convention (e.g. "accuracy" -> "accuracy").
    """
    base = _base_name(name)
    return _HEADLINE_KEYS.get(base, base)


def headline_value(name: str, result: Mapping[str, Any] | float) -> float:
    """The main number of a ``compute()`` result: ``result[metric_key(name)]`` for dicts, the value itself otherwise."""
    if not isinstance(result, Mapping):
        return float(result)
    key = metric_key(name)
    if key not in result:
        raise KeyError(f"Result of metric {name!r} has no key {key!r}; keys: {sorted(result)}")
    return float(result[key])
