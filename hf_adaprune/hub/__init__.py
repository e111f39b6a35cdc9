"""Hub format: save a pruned model so that ``from_pretrained`` rebuilds its shapes."""

from .load import AutoPrunedModel, pruned_class
from .save import save_pruned

__all__ = ["AutoPrunedModel", "pruned_class", "save_pruned"]
