"""``compute_metrics`` functions for the Trainer, built from a metric name.

Used when a user names ``--pruning_metric`` but passes no ``compute_metrics``.
Each returns ``{metric_name: value}``, so the Trainer logs ``eval_<metric_name>``.
"""

from __future__ import annotations

import numpy as np

from .metrics import headline_value, load_metric

# metrics whose references are lists of strings (several references per prediction)
_MULTI_REFERENCE = {"sacrebleu", "bleu", "chrf"}


def classification_metrics(name: str):
    """Argmax over logits, then ``name`` against the labels."""
    metric = load_metric(name)

    def compute_metrics(eval_pred):
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        predictions = np.asarray(logits).argmax(-1)
        labels = np.asarray(labels)
        keep = labels != -100  # token classification pads labels with -100
        result = metric.compute(predictions=predictions[keep].tolist(), references=labels[keep].tolist())
        return {name: headline_value(name, result)}

    return compute_metrics


def decode_ids(ids, tokenizer) -> list[str]:
    ids = np.asarray(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = np.where(ids < 0, pad, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generation_metrics(name: str, tokenizer, normalize=None):
    """Decode generated ids and labels with ``tokenizer``, then ``name`` (BLEU, chrF, WER, CER, ...)."""
    metric = load_metric(name)

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
