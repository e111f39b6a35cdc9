"""hf_adaprune: adaptive structured pruning of attention heads and FFN neurons for transformers.

Data flows gradients -> scores (:mod:`importance`) -> masks (:mod:`masks`,
:mod:`selection`) -> compaction (:mod:`surgery`) -> Hub-format save (:mod:`hub`).
"""

from .trainer.arguments import PruningArguments, Seq2SeqPruningArguments
from .engine.controller import AdaptiveController
from .families import UnsupportedModelError, find_groups, get_adapter, register_family, supported_model_types
from .reporting.flops import compare_profiles, count_flops, format_comparison, model_profile
from .hub import AutoPrunedModel, save_pruned
from .engine.importance import MagnitudeImportance, RandomImportance, TaylorImportance, make_importance
from .engine.masks import PruningMasks, attach_masks, detach_masks, get_masks
from .engine.selection import select_masks, select_masks_by_kind
from .surgery import compact, kept_structure

__version__ = "0.1.0"

# transformers.Trainer imports datasets (and pandas): the trainers load on first use (hf_adaprune.trainer),
# so that `import hf_adaprune` (for loading a pruned model, say) stays light.
_FROM_TRAINER = {"AdaptivePruningTrainer", "AdaptivePruningSeq2SeqTrainer", "DatasetOrderEvalMixin"}


def __getattr__(name: str):
    if name not in _FROM_TRAINER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import trainer

    return getattr(trainer, name)


__all__ = [
    "AdaptiveController",
    "AdaptivePruningSeq2SeqTrainer",
    "AdaptivePruningTrainer",
    "PruningArguments",
    "Seq2SeqPruningArguments",
    "AutoPrunedModel",
    "DatasetOrderEvalMixin",
    "MagnitudeImportance",
    "PruningMasks",
    "RandomImportance",
    "TaylorImportance",
    "UnsupportedModelError",
    "attach_masks",
    "compact",
    "compare_profiles",
    "count_flops",
    "detach_masks",
    "find_groups",
    "format_comparison",
    "get_adapter",
    "get_masks",
    "kept_structure",
    "make_importance",
    "model_profile",
    "register_family",
    "save_pruned",
    "select_masks",
    "select_masks_by_kind",
    "supported_model_types",
]
