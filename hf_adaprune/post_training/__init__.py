"""Pruning without training: a fine-tuned model made smaller from a few thousand calibration examples.

Data flows calibration rows (:mod:`calibration_rows`) -> calibration batches -> mask-gradient
scores (:mod:`calibration`) -> global selection under the FLOP budget -> least-squares re-fit of
each pruned group's output projection (:mod:`refit`, towards the dense model's activations,
:mod:`dense_targets`) -> metric check or ratio search -> compaction -> Hub-format save (:mod:`prune`).
"""

from .calibration import SCORE_KINDS, mask_gradient_scores
from .calibration_rows import length_mixed_calibration
from .dense_targets import REFIT_TARGETS, DenseTargets, capture_dense_targets
from .prune import SUPPORTED_MODEL_TYPES, PostTrainingResult, evaluate, post_training_prune
from .refit import refit_groups, solve_refit

__all__ = [
    "REFIT_TARGETS",
    "SCORE_KINDS",
    "SUPPORTED_MODEL_TYPES",
    "DenseTargets",
    "PostTrainingResult",
    "capture_dense_targets",
    "evaluate",
    "length_mixed_calibration",
    "mask_gradient_scores",
    "post_training_prune",
    "refit_groups",
    "solve_refit",
]
