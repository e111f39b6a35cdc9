"""Pruning without training: a fine-tuned model made smaller from a few thousand calibration examples.

Data flows calibration batches -> mask-gradient scores (:mod:`calibration`) -> global selection
under the FLOP budget -> least-squares re-fit of each pruned group's output projection
(:mod:`refit`) -> metric check or ratio search -> compaction -> Hub-format save (:mod:`prune`).
"""

from .calibration import SCORE_KINDS, mask_gradient_scores
from .prune import SUPPORTED_MODEL_TYPES, PostTrainingResult, evaluate, post_training_prune
from .refit import refit_groups, solve_refit

__all__ = [
    "SCORE_KINDS",
    "SUPPORTED_MODEL_TYPES",
    "PostTrainingResult",
    "evaluate",
    "mask_gradient_scores",
    "post_training_prune",
    "refit_groups",
    "solve_refit",
]
