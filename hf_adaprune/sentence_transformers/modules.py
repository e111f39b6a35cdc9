"""Which module of a ``SentenceTransformer`` is pruned: its first one, a transformers encoder of a supported family."""

from __future__ import annotations

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Transformer

from ..families import UnsupportedModelError, get_adapter, supported_model_types


def transformer_module(model: SentenceTransformer) -> Transformer:
    """``model[0]``, checked: a sentence-transformers ``Transformer`` wrapping a supported transformers model.

    Raises :class:`UnsupportedModelError` (with the supported model types) for anything else, e.g. a
    ``StaticEmbedding`` or a CLIP module, before any training.
    """
    if not isinstance(model, SentenceTransformer):
        raise TypeError(f"expected a sentence_transformers.SentenceTransformer, got {type(model).__name__}")
    first = model[0] if len(model) else None
    if not isinstance(first, Transformer) or getattr(first, "backend", "torch") != "torch":
        raise UnsupportedModelError(
            f"hf_adaprune prunes the transformers model in a SentenceTransformer's first module, a "
            f"sentence_transformers.models.Transformer (torch backend); this model's first module is "
            f"{type(first).__name__}. Supported model types: {', '.join(supported_model_types())}."
        )
    get_adapter(first.auto_model)  # raises with the supported list for an unsupported family
    return first
