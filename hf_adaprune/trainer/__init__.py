"""The Trainer integration: arguments, the pruning trainers, evaluation in dataset order.

The trainers load on first use (``transformers.Trainer`` imports datasets and pandas).
"""

from .arguments import PruningArguments, Seq2SeqPruningArguments

_LAZY = {
    "AdaptivePruningSeq2SeqTrainer": ".trainer",
    "AdaptivePruningTrainer": ".trainer",
    "PruningTrainerMixin": ".trainer",
    "DatasetOrderEvalMixin": ".eval_order",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdaptivePruningSeq2SeqTrainer",
    "AdaptivePruningTrainer",
    "DatasetOrderEvalMixin",
    "PruningArguments",
    "PruningTrainerMixin",
    "Seq2SeqPruningArguments",
]
