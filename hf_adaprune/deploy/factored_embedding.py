"""Rare tokens at low rank: a smaller input embedding that keeps every token of the task's vocabulary.

:func:`~.vocabulary.prune_vocabulary` keeps the tokens of the task's training text; a token it drops is split
into kept pieces, so text using it reads other tokens (the deploy benchmark's accuracy changes come from there).
Keeping more tokens keeps more text as it was, at 384 parameters per token (all-MiniLM-L6-v2). Here the
``full_rows`` most common tokens of the training text keep their rows and every other token gets a ``rank``-wide
code times one shared ``rank x hidden`` basis (the best rank-``rank`` approximation of their rows, by SVD):
``rank x (tokens - full_rows + hidden)`` parameters for them instead of ``hidden x (tokens - full_rows)``. Text
made of common tokens embeds exactly as before; rare tokens move by their approximation error.

The model's layout records the :class:`~hf_adaprune.layout.FactoredEmbedding`, so ``save_pruned`` writes a folder
both loaders rebuild (``AutoPrunedModel``, or stock ``from_pretrained`` with ``trust_remote_code=True``). Encoder
classifiers of the BERT, DeBERTa-v2 / v3 and MPNet families; a model with a vocabulary output head (a masked LM) is
refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..hub.save import check_tokenizer_fits
from ..input_grad_hooks import without_input_grad_hooks
from ..layout import FactoredEmbedding, empty_record, read_record, set_attribute, write_record
from .checks import check_transformers_model
from .vocabulary import ids_named_by_configs, kept_anyway, token_row_counts

SUPPORTED = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "mpnet")
EMBEDDING_PATH = "embeddings.word_embeddings"  # under the base model, in every supported family


def check_factoring_request(model, full_rows: int, rank: int) -> None:
    """Refuse, before any work, a model or setting :func:`factor_embeddings` cannot serve, saying why."""
    check_factoring_model(model)
    table = model.get_input_embeddings()
    check_factoring_sizes(table.num_embeddings, table.embedding_dim, full_rows, rank)


def check_factoring_model(model) -> None:
    """Refuse a model whose input table :func:`factor_embeddings` cannot replace (whatever the setting)."""
    from ..engine.masks import get_masks

    check_transformers_model(model, "factor_embeddings")
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED:
        raise ValueError(f"factor_embeddings serves encoder classifiers of the BERT, DeBERTa-v2 / v3 and MPNet "
                         f"families ({', '.join(SUPPORTED)}); {model_type!r} is not one of them")
    table = model.get_input_embeddings()
    if not isinstance(table, nn.Embedding):
        raise ValueError(f"the input embedding is a {type(table).__name__}, not a plain table: factor a model once")
    # a vocabulary head (masked / causal LM) reads the input table: tied, or by reference as DeBERTa-v2's non-legacy
    # MLM head does (its output embeddings are then another linear); classifiers have none
    if model.get_output_embeddings() is not None:
        raise ValueError("the model has a vocabulary output head (a masked or causal LM), which reads the input table: "
                         "its rare rows would change the predictions over the whole vocabulary; factor classifiers "
                         "only")
    if get_masks(model) is not None:
        raise ValueError("factor_embeddings replaces the input embedding of a compacted model: compact it first "
                         "(hf_adaprune.compact(model))")


def check_factoring_sizes(tokens: int, hidden: int, full_rows: int, rank: int, kept_whole: int = 0) -> None:
    """Refuse ``full_rows`` / ``rank`` a table of ``tokens`` rows of width ``hidden`` cannot take: the whole rows
    leave at least two rows to factor and hold the ``kept_whole`` ids that always stay whole (the special tokens);
    the rank is below the width and below the number of factored rows (else nothing is saved)."""
    for name, value, low, high in (("full_rows", full_rows, 1, tokens - 2), ("rank", rank, 1, hidden - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name}={value!r}: give a whole number from {low} to {high} (the table has {tokens} "
                             f"tokens of width {hidden})")
    if full_rows < kept_whole:
        raise ValueError(f"full_rows={full_rows} is below the {kept_whole} special tokens kept whole")
    if rank >= tokens - full_rows:
        raise ValueError(f"rank={rank}: only {tokens - full_rows} rows are factored ({tokens} tokens, {full_rows} "
                         f"whole); give a rank below {tokens - full_rows}, or fewer whole rows")


def factor_embeddings(model, tokenizer=None, texts: Iterable[str] = (), *, tokenized: Iterable[Sequence[int]] = (),
                      full_rows: int, rank: int) -> dict:
    """Keep the rows of the ``full_rows`` most common tokens of ``texts`` / ``tokenized`` (rows of ids, counted
    by rows; ties: the lower id; the tokenizer's special tokens and the ids the config names always) and store
    every other token's row at rank ``rank`` (in place). Returns ``{"full_rows", "rank", "parameters_before",
    "parameters_after"}`` of the table. Count the texts the model will read (the training inputs, tokenized by the
    model's tokenizer, after ``prune_vocabulary`` if it ran)."""
    if isinstance(texts, str) or isinstance(tokenized, str):
        raise ValueError("texts / tokenized is one string; pass a list of texts (or rows of ids)")
    check_factoring_request(model, full_rows, rank)
    table = model.get_input_embeddings()
    tokens, hidden = table.num_embeddings, table.embedding_dim
    texts = list(texts)
    if texts and tokenizer is None:
        raise ValueError("texts need the model's tokenizer: factor_embeddings(model, tokenizer, texts, ...)")
    if tokenizer is not None:  # the tokenizer a vocabulary was pruned from would count other tokens' ids
        check_tokenizer_fits(model, tokenizer)
    counts = token_row_counts(tokenizer, texts, tokenized=tokenized, table_size=tokens)
    if not counts:
        raise ValueError("no texts or rows to count: pass the texts the model will read (its training inputs)")
    # the ids prune_vocabulary keeps whatever their count (the config's alone without a tokenizer) stay whole
    always = kept_anyway(model, tokenizer) if tokenizer is not None else ids_named_by_configs(model)
    always = {i for i in always if 0 <= i < tokens}
    check_factoring_sizes(tokens, hidden, full_rows, rank, kept_whole=len(always))
    order = sorted(range(tokens), key=lambda i: (i not in always, -counts[i], i))
    full = torch.tensor(sorted(order[:full_rows]))
    rare = torch.tensor(sorted(order[full_rows:]))
    weight = table.weight.detach()
    u, s, vh = torch.linalg.svd(weight[rare].float(), full_matrices=False)
    factored = FactoredEmbedding(tokens, hidden, full_rows, rank, like=table)
    with torch.no_grad():
        factored.full.weight.copy_(weight[full])
        factored.rare.weight.copy_((u[:, :rank] * s[:rank]).to(weight.dtype))
        factored.up.weight.copy_(vh[:rank].T.to(weight.dtype))
        slot = torch.empty(tokens, dtype=torch.long)
        slot[full] = torch.arange(full_rows)
        slot[rare] = torch.arange(len(rare)) + full_rows
        factored.slot.copy_(slot)
    factored.requires_grad_(table.weight.requires_grad)
    factored.train(table.training)
    with without_input_grad_hooks(model):  # gradient checkpointing's hook moves to the new table
        set_attribute(model.base_model, EMBEDDING_PATH, factored)
    record = read_record(model.config) or empty_record()
    record["layout"].setdefault("modules", {})[EMBEDDING_PATH] = {
        "type": "FactoredEmbedding", "num_embeddings": tokens, "embedding_dim": hidden, "full_rows": full_rows,
        "rank": rank}
    write_record(model.config, record)
    from ..hub.load import as_pruned

    as_pruned(model)  # its save_pretrained writes the layout's loader
    return {"full_rows": full_rows, "rank": rank, "parameters_before": tokens * hidden,
            "parameters_after": sum(p.numel() for p in factored.parameters())}


__all__ = ["check_factoring_model", "check_factoring_request", "check_factoring_sizes", "factor_embeddings"]
