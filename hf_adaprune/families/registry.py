"""Maps a ``config.model_type`` to the function that lists its prunable groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .base import FamilyAdapter, Group, HeadGroup

HEAD_ROLES = ("encoder_self", "decoder_self", "cross")
NEURON_ROLES = ("encoder", "decoder")

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


def filter_groups(
    groups: Iterable[Group], roles: Iterable[str] | str | None = None, kind: str | None = None
) -> list[Group]:
    """The groups with a role in ``roles`` (and of ``kind`` "heads"/"neurons" if given), in their order.

    E.g. ``filter_groups(find_groups(model), roles="cross")`` for the decoder cross-attentions only, or
    ``roles=("decoder_self", "cross", "decoder")`` for the whole decoder. Pass the result to
    ``PruningMasks(model, groups)`` / importance / selection to work on those groups alone.
    """
    if isinstance(roles, str):
        roles = (roles,)
    roles = None if roles is None else set(roles)
    unknown = (roles or set()) - set(HEAD_ROLES + NEURON_ROLES)
    if unknown:
        raise ValueError(f"unknown group roles {sorted(unknown)}; roles are {HEAD_ROLES + NEURON_ROLES}")
    if kind not in (None, "heads", "neurons"):
        raise ValueError(f"kind must be 'heads' or 'neurons', got {kind!r}")
    return [g for g in groups if (roles is None or g.role in roles) and (kind is None or g.kind == kind)]
