"""hf_adaprune: adaptive structured pruning of attention heads and FFN neurons for transformers.

Data flows gradients -> scores (:mod:`engine.importance`) -> masks (:mod:`engine.masks`,
:mod:`engine.selection`, steered by :mod:`engine.controller`) -> compaction (:mod:`surgery`, through the
layout codec :mod:`layout`) -> Hub-format save (:mod:`hub`) -> deployment (:mod:`deploy`).
"""

from .verbosity import install_library_logger

install_library_logger()  # first, before any module logs: hf_adaprune's lines follow transformers' verbosity

from .trainer.arguments import PruningArguments, Seq2SeqPruningArguments
from .engine.controller import AdaptiveController
from .families import (UnsupportedModelError, filter_groups, find_groups, get_adapter, register_family,
                       supported_model_types)
from .reporting.flops import compare_profiles, count_flops, format_comparison, model_profile
from .hub import AutoPrunedModel, save_pruned
from .engine.importance import MagnitudeImportance, RandomImportance, TaylorImportance, make_importance, reduce_scores
from .engine.masks import PruningMasks, attach_masks, detach_masks, get_masks
from .engine.selection import select_masks, select_masks_by_kind
from .surgery import compact, kept_structure

__version__ = "0.1.0"

# Loaded on first use, so that `import hf_adaprune` (for loading a pruned model, say) stays light:
# transformers.Trainer imports datasets (and pandas); the deployment helpers reach for onnx/onnxruntime.
_LAZY = {
    "AdaptivePruningTrainer": "trainer",
    "AdaptivePruningSeq2SeqTrainer": "trainer",
    "DatasetOrderEvalMixin": "trainer",
    "post_training_prune": "post_training",
    "prune_vocabulary": "deploy",
    "factor_embeddings": "deploy",
    "quantize_int8": "deploy",
    "save_int8": "deploy",
    "load_int8": "deploy",
    "export_onnx": "deploy",
    "export_ctranslate2": "deploy",
    "sequence_distillation_targets": "sequence_distillation",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def __dir__():  # the lazily loaded names too, for tab completion
    return sorted(set(globals()) | set(_LAZY))


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
    "filter_groups",
    "detach_masks",
    "export_ctranslate2",
    "export_onnx",
    "find_groups",
    "format_comparison",
    "get_adapter",
    "get_masks",
    "kept_structure",
    "load_int8",
    "make_importance",
    "model_profile",
    "post_training_prune",
    "prune_vocabulary",
    "factor_embeddings",
    "quantize_int8",
    "reduce_scores",
    "register_family",
    "save_int8",
    "save_pruned",
    "select_masks",
    "select_masks_by_kind",
    "sequence_distillation_targets",
    "supported_model_types",
]
