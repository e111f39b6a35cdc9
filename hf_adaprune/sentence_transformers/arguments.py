"""``SentenceTransformerPruningArguments``: ``SentenceTransformerTrainingArguments`` + :class:`PruningArguments`."""

from __future__ import annotations

from dataclasses import dataclass, field

from sentence_transformers import SentenceTransformerTrainingArguments

from ..trainer.arguments import PruningArguments

EVALUATOR_METRIC = "evaluator"


@dataclass
class SentenceTransformerPruningArguments(SentenceTransformerTrainingArguments, PruningArguments):
    """Every sentence-transformers training argument and every pruning argument.

    ``pruning_metric`` defaults to ``"evaluator"``: the primary metric of the trainer's evaluator (the
    teacher-agreement evaluator when none is given), in the direction the evaluator declares. Any other
    key the evaluator returns (e.g. ``sts-dev_pearson_cosine``) or ``"loss"`` (needs an ``eval_dataset``)
    can be named instead.
    """

    pruning_metric: str = field(
        default=EVALUATOR_METRIC,
        metadata={"help": "'evaluator' (the evaluator's primary metric), a key the evaluator returns, or 'loss'."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.pruning_refit:
            raise ValueError("--pruning_refit is not available for sentence-transformers: it collates tokenized "
                             "task rows (input_ids) as a transformers model's inputs, and these rows are texts the "
                             "model tokenizes itself. Train without --pruning_refit")
