"""Per-family descriptions of where attention heads and FFN neurons live.

Adding a family is one module in this folder that calls :func:`register_family`
(with its attention forward, if its attention reads a position bias shared
across layers, as T5 and WavLM do); every module here is imported (and so
registered) on package import.
"""

import importlib
import pkgutil

from .base import Group, HeadGroup, LayerGroup, NeuronGroup
from .registry import (
    HEAD_ROLES,
    KINDS,
    NEURON_ROLES,
    ROLES,
    UnsupportedModelError,
    check_sequence_length,
    decoder_positions,
    decoder_positions_note,
    filter_groups,
    find_groups,
    find_layer_groups,
    get_adapter,
    layer_of_group,
    positions_note,
    readable_positions,
    shortest_audio,
    register_family,
    supported_model_types,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in {"base", "registry"}:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "HEAD_ROLES",
    "KINDS",
    "NEURON_ROLES",
    "ROLES",
    "Group",
    "HeadGroup",
    "LayerGroup",
    "NeuronGroup",
    "UnsupportedModelError",
    "check_sequence_length",
    "filter_groups",
    "find_groups",
    "find_layer_groups",
    "get_adapter",
    "layer_of_group",
    "positions_note",
    "readable_positions",
    "decoder_positions",
    "decoder_positions_note",
    "shortest_audio",
    "register_family",
    "supported_model_types",
]
