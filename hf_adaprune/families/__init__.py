"""Per-family descriptions of where attention heads and FFN neurons live.

Adding a family is one small module in this folder that calls
:func:`register_family`; every module here is imported (and so registered) on
package import.
"""

import importlib
import pkgutil

from .base import Group, HeadGroup, NeuronGroup
from .registry import (
    UnsupportedModelError,
    filter_groups,
    find_groups,
    get_adapter,
    register_family,
    supported_model_types,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in {"base", "registry"}:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Group",
    "HeadGroup",
    "NeuronGroup",
    "UnsupportedModelError",
    "filter_groups",
    "find_groups",
    "get_adapter",
    "register_family",
    "supported_model_types",
]
