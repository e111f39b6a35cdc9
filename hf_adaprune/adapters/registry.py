"""Maps a ``config.model_type`` to the function that lists its prunable groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .base import FamilyAdapter, Group, HeadGroup

_FAMILIES: dict[str, FamilyAdapter] = {}


class UnsupportedModelError(ValueError):
    """Raised before any work when a model family has no adapter."""


def register_family(model_types: Iterable[str], find_groups: Callable, notes: str = "") -> FamilyAdapter:
    adapter = FamilyAdapter(model_types=tuple(model_types), find_groups=find_groups, notes=notes)
    for model_type in adapter.model_types:
        _FAMILIES[model_type] = adapter
    return adapter


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def get_adapter(model_or_config) -> FamilyAdapter:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        reason = ""
        if model_type == "albert":
            reason = " (ALBERT shares one set of weights across layers, so per-layer pruning does not apply)"
        raise UnsupportedModelError(
            f"hf_adaprune cannot prune model_type {model_type!r}{reason}. "
            f"Supported model types: {', '.join(supported_model_types())}."
        )
    return _FAMILIES[model_type]


def find_groups(model) -> list[Group]:
    """All prunable groups of ``model`` (any head class of a supported family), in layer order."""
    adapter = get_adapter(model)
    return list(adapter.find_groups(model.base_model, model.config))


def skip_empty(base_model, groups: list[Group]) -> list[Group]:
    """Drop attention groups whose heads were all removed by an earlier compaction."""
    kept = []
    for group in groups:
        if isinstance(group, HeadGroup) and getattr(base_model.get_submodule(group.core), "is_empty_attention", False):
            continue
        kept.append(group)
    return kept
