"""Position pruning: keep the position rows a deployed encoder can reach.

A BERT-family encoder learns one row per position up to ``max_position_embeddings`` (512 for
all-MiniLM-L6-v2: 0.2M of its 22.7M parameters, 2% of a pruned model with a pruned vocabulary). A
model served on inputs of at most ``max_length`` tokens never reads the rows beyond. :func:`prune_positions`
slices the table (and the ``position_ids`` / ``token_type_ids`` buffers built from its size) to the rows
those inputs reach, records the new ``max_position_embeddings`` in the config, so stock
``from_pretrained`` builds the smaller table, and sets the tokenizer's ``model_max_length``, so
``truncation=True`` cuts longer text to fit. Outputs on inputs of at most ``max_length`` tokens are
bit-identical; longer inputs cannot be read any more.
"""

from __future__ import annotations

from torch import nn

from ..families.registry import OFFSET_POSITIONS, readable_positions
from .checks import check_transformers_model

SUPPORTED = ("bert", "electra", "distilbert", *OFFSET_POSITIONS)


def _embeddings(model) -> nn.Module:
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    return getattr(base, "embeddings", None)


def position_rows(config, max_length: int) -> int:
    """The rows of the position table that inputs of ``max_length`` tokens read (RoBERTa-style encoders count
    positions from ``pad_token_id + 1``)."""
    return max_length + config.max_position_embeddings - readable_positions(config)


def check_positions_model(model) -> None:
    """Refuse, before any work, a model whose family :func:`prune_positions` does not serve."""
    check_transformers_model(model, "prune_positions")
    model_type = getattr(model.config, "model_type", None)
    embeddings = _embeddings(model)
    if model_type not in SUPPORTED or not isinstance(getattr(embeddings, "position_embeddings", None), nn.Embedding):
        raise ValueError(f"position pruning is for encoders with a learned position table ({', '.join(SUPPORTED)}); "
                         f"{model_type!r} is not one of them")


def check_positions_request(model, max_length: int) -> None:
    """Refuse, before any work, a model or length :func:`prune_positions` cannot serve."""
    check_positions_model(model)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length={max_length!r}: give the longest input, in tokens, the model will be served")
    readable = readable_positions(model.config)
    if max_length > readable:
        raise ValueError(f"max_length={max_length}: the model reads at most {readable} positions, so max_length can "
                         f"be at most {readable}")


def prune_positions(model, max_length: int, tokenizer=None) -> int:
    """Keep the position rows inputs of at most ``max_length`` tokens read (in place); returns the rows kept.

    ``tokenizer`` (optional) gets ``model_max_length = max_length``. Works on a masked or compacted model; save
    it with ``save_pruned`` as usual.
    """
    check_positions_request(model, max_length)
    embeddings = _embeddings(model)
    rows = position_rows(model.config, max_length)
    table = embeddings.position_embeddings
    kept = nn.Embedding(rows, table.embedding_dim, padding_idx=table.padding_idx,
                        device=table.weight.device, dtype=table.weight.dtype)
    kept.weight.data.copy_(table.weight.data[:rows])
    kept.weight.requires_grad_(table.weight.requires_grad)
    embeddings.position_embeddings = kept
    for name in ("position_ids", "token_type_ids"):  # buffers the size of the table: [1, max_position_embeddings]
        buffer = getattr(embeddings, name, None)
        if buffer is not None and buffer.shape[-1] > rows:
            setattr(embeddings, name, nn.Buffer(buffer[..., :rows].clone(), persistent=False))
    model.config.max_position_embeddings = rows
    if tokenizer is not None:
        tokenizer.model_max_length = max_length
    return rows
