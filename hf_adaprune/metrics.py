"""Metric names: how to load them, which way is better, which number is the headline.

:func:`load_metric` keeps ``evaluate`` as the front door: ``evaluate.load(name)``
(Hub, cache or a local script; only local files and the cache when
``HF_HUB_OFFLINE`` / ``HF_EVALUATE_OFFLINE`` say so, passed per call). When that fails, or ``evaluate`` is not
installed, names in :data:`hf_adaprune.task_metrics.LOCAL_METRICS` are computed
in-process with scikit-learn, sacrebleu or jiwer, with the inputs, keyword
arguments and result keys of the Hub metric of the same name.

Nothing here imports ``evaluate``, scikit-learn or the text metrics at module
import: ``import hf_adaprune`` stays light.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "LOWER_IS_BETTER",
    "HIGHER_IS_BETTER",
    "headline_value",
    "known_greater_is_better",
    "load_metric",
    "metric_greater_is_better",
    "metric_key",
]

logger = logging.getLogger(__name__)

# evaluate.load() arguments that only concern fetching the module.
_LOAD_ONLY_KWARGS = {"module_type", "download_config", "download_mode", "revision", "cache_dir", "keep_in_memory",
                     "experiment_id", "num_process", "process_id"}
# rouge returns every variant: a variant's name loads it (evaluate has no module rouge1, ...)
_ROUGE_VARIANTS = {"rouge1": "rouge1", "rouge2": "rouge2", "rougel": "rougeL", "rougelsum": "rougeLsum"}

# Directions of the metrics people steer by; anything else must be told (--pruning_greater_is_better).
LOWER_IS_BETTER = frozenset({"wer", "cer", "mer", "wil", "ter", "mse", "rmse", "mae", "mape", "smape", "perplexity"})
HIGHER_IS_BETTER = frozenset({
    "accuracy", "f1", "precision", "recall", "matthews_correlation", "sacrebleu", "bleu", "chrf", "chrf++",
    "rouge1", "rouge2", "rougel", "rougelsum", "meteor", "exact_match", "exact", "pearson", "pearsonr",
    "spearman", "spearmanr", "r_squared", "r2", "roc_auc", "auc", "squad", "squad_v2", "bertscore", "google_bleu",
    "comet", "rouge",
})

# Key of the headline number in a Hub metric's compute() result where it is not the metric's own name (None: the
# result is a bare float). rouge returns rouge1 / rouge2 / rougeL / rougeLsum: the headline is rougeL (longest common
# subsequence, the ROUGE most summarization results quote); name rouge1, rouge2 or rougeLsum to steer by another.
# squad / squad_v2 return exact_match (exact) and f1: the headline is f1, the SQuAD leaderboard's main number.
_HEADLINE_KEYS: dict[str, str | None] = {
    "sacrebleu": "score", "chrf": "score", "ter": "score", "wer": None, "cer": None,
    "perplexity": "mean_perplexity", "comet": "mean_score", "squad": "f1", "squad_v2": "f1",
    "rouge": "rougeL", **_ROUGE_VARIANTS,
}


def _evaluate_has_locally(name: str) -> bool:
    """A local metric script or folder, or a Hub metric evaluate has cached before."""
    import evaluate.config

    if os.path.exists(name):
        return True
    repo = name if "/" in name else f"evaluate-metric/{name}"
    cached = os.path.join(evaluate.config.HF_MODULES_CACHE, "evaluate_modules", "metrics", repo.replace("/", "--"))
    return os.path.isdir(cached)


def _hub_offline() -> bool:
    """Offline as the user asked: ``HF_HUB_OFFLINE`` (which evaluate's own downloads ignore) or ``HF_EVALUATE_OFFLINE``."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_EVALUATE_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or flag


def load_metric(name: str, **kwargs: Any):
    """``evaluate.load(name, **kwargs)``, or the in-process metric of that name if that fails.

    The fallback has ``compute(predictions=..., references=..., **kwargs)`` and returns what
    the Hub metric returns. Raises ``ValueError`` if neither works.
    """
    from .task_metrics import LOCAL_METRICS, local_metric

    name = "rouge" if name.lower() in _ROUGE_VARIANTS else name
    try:
        import evaluate
    except ImportError as err:
        evaluate_error: Exception = err
    else:
        if _hub_offline() and not _evaluate_has_locally(name):
            # evaluate's downloader ignores HF_HUB_OFFLINE: it would try the Hub, with retries
            evaluate_error = FileNotFoundError(f"offline (HF_HUB_OFFLINE) and {name!r} is neither a local "
                                               "script nor in evaluate's module cache")
        else:
            try:
                return evaluate.load(name, **kwargs)
            except Exception as err:  # evaluate raises FileNotFoundError, ConnectionError, ValueError, ...
                evaluate_error = err
    base = name.removeprefix("evaluate-metric/")
    base = base if base in LOCAL_METRICS else base.lower()  # "Accuracy", "WER": known names in another case
    if base not in LOCAL_METRICS:
        raise ValueError(
            f"Cannot load metric {name!r}: evaluate.load failed ({type(evaluate_error).__name__}: {evaluate_error}); "
            f"the Hugging Face Hub could not be reached or has no such metric, and it is not computed in-process. "
            f"In-process metrics: {', '.join(sorted(LOCAL_METRICS))}."
        ) from evaluate_error
    if kwargs.get("config_name") is not None:  # e.g. f1's "multilabel": another computation, not one of ours
        raise ValueError(f"Cannot load metric {name!r} with config_name={kwargs['config_name']!r}: evaluate.load "
                         f"failed ({type(evaluate_error).__name__}: {evaluate_error}), and the in-process {base} has "
                         "no configurations") from evaluate_error
    logger.info("evaluate.load(%r) failed (%s); computing %s in-process", name, type(evaluate_error).__name__, base)
    return local_metric(base, **{k: v for k, v in kwargs.items() if k not in _LOAD_ONLY_KWARGS | {"config_name"}})


def _base_name(name: str) -> str:
    """``"evaluate-metric/WER"`` -> ``"wer"``; ``"eval_accuracy"`` -> ``"accuracy"``."""
    return name.rsplit("/", 1)[-1].lower().removeprefix("eval_")


def known_greater_is_better(name: str) -> bool | None:
    """The direction of a known metric (losses count as lower-is-better); None for names not known here."""
    base = _base_name(name)
    if base in LOWER_IS_BETTER or base == "loss" or base.endswith("_loss"):
        return False
    if base in HIGHER_IS_BETTER:
        return True
    return None


# higher-is-better metrics whose lowest value is 0: a model measuring 0 cannot measure worse
ZERO_FLOOR = frozenset({
    "accuracy", "f1", "precision", "recall", "sacrebleu", "bleu", "google_bleu", "chrf", "chrf++", "rouge", "rouge1",
    "rouge2", "rougel", "rougelsum", "meteor", "exact_match", "exact", "squad", "squad_v2",
})


def at_floor(name: str, value: float) -> bool:
    """Whether ``value`` is the lowest a known higher-is-better metric ``name`` can measure (0)."""
    return _base_name(name) in ZERO_FLOOR and value <= 0


def metric_greater_is_better(name: str) -> bool:
    """The direction of a known metric; ``ValueError`` naming the option to set for any other name."""
    direction = known_greater_is_better(name)
    if direction is None:
        raise ValueError(
            f"cannot tell whether a higher {name!r} is better: set --pruning_greater_is_better true or false")
    return direction


def metric_key(name: str) -> str | None:
    """Key of the headline value in the ``compute()`` result, or None where the result is a bare float (wer, cer).

    Names without a known key map to themselves, the Hub convention (e.g. "accuracy" -> "accuracy").
    """
    base = _base_name(name)
    return _HEADLINE_KEYS.get(base, base)


def headline_value(name: str, result: Mapping[str, Any] | float) -> float:
    """The main number of a ``compute()`` result: ``result[metric_key(name)]`` for dicts, the value itself otherwise.

    A result without that key but with a numeric ``"score"`` (the sacrebleu-style metrics) gives its score."""
    if not isinstance(result, Mapping):
        return float(result)
    key = metric_key(name)
    score = result.get("score")
    if key not in result and isinstance(score, numbers.Real) and not isinstance(score, bool):
        key = "score"
    if key not in result:
        raise KeyError(f"Result of metric {name!r} has no key {key!r}; keys: {sorted(result)}")
    return float(result[key])
