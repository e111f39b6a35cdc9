"""The check every deploy function that takes a model makes first: that it was given a transformers model."""

from ..families.registry import check_transformers_model

__all__ = ["check_transformers_model"]
