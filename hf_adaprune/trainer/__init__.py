"""The Trainer integration: arguments, the pruning trainers, evaluation in dataset order."""

from .arguments import PruningArguments, Seq2SeqPruningArguments
from .eval_order import DatasetOrderEvalMixin
from .trainer import AdaptivePruningSeq2SeqTrainer, AdaptivePruningTrainer, PruningTrainerMixin

__all__ = [
    "AdaptivePruningSeq2SeqTrainer",
    "AdaptivePruningTrainer",
    "DatasetOrderEvalMixin",
    "PruningArguments",
    "PruningTrainerMixin",
    "Seq2SeqPruningArguments",
]
