"""Vocabulary pruning: keep the tokens a task uses, slice the embeddings to them.

A fine-tuned classifier reads a few thousand of its 30,522 WordPiece tokens; the
rest of the input embedding is dead weight (11.7M of all-MiniLM-L6-v2's 22.7M
parameters). :func:`prune_vocabulary` keeps the tokens that occur in the given
texts plus every special token and every id the config or generation config
names, renumbers them in their old order, slices the input embeddings (and the
tied output embeddings and ``final_logits_bias`` of seq2seq models) and returns
a tokenizer that maps text straight to the new ids (see :mod:`.tokenizer_vocab`
for what happens to text outside the kept vocabulary). ``min_count`` drops tokens
that occur in too few training rows. Whisper keeps every special and timestamp
token (its ``generate`` finds them as offsets from ``<|notimestamps|>``); its
generation config's ids are renumbered, so the model then writes only kept tokens.

A Marian model shares one table between the encoder's input, the decoder's input and
the output projection, so every decoding step scores both languages' tokens.
``decoder_vocabulary=True`` gives the decoder a table of its own holding only the tokens of
the targets: they are numbered first (ids ``0 .. decoder_vocab_size - 1``, so one
tokenizer still serves both sides), the encoder keeps every kept token, and the output
projection and ``final_logits_bias`` shrink to the decoder's tokens. Each generated
token then costs a smaller projection and fewer logits to process, for
``decoder_vocab_size x d_model`` more parameters (the decoder's rows are no longer shared).

Save the two with ``save_pruned(model, path, tokenizer=new_tokenizer)``: the
config records the new ``vocab_size``, so ``AutoPrunedModel``, stock
``AutoModel...(trust_remote_code=True)`` and ``AutoTokenizer`` load the folder.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from ..engine.masks import get_masks
from ..input_grad_hooks import checkpointing_flags, restore_checkpointing_flags, without_input_grad_hooks
from ..token_ids import token_id_list
from .checks import check_transformers_model
from .tokenizer_vocab import tokenizer_family

# config / generation-config fields that hold token ids; the tokens they name always stay
ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id",
             "cls_token_id", "mask_token_id", "unk_token_id", "forced_bos_token_id", "forced_eos_token_id",
             "no_timestamps_token_id", "prev_sot_token_id")
ID_LIST_FIELDS = ("bad_words_ids", "suppress_tokens", "begin_suppress_tokens")
ID_MAP_FIELDS = ("lang_to_id", "task_to_id")  # Whisper: {"<|en|>": id, ...}
ID_PAIR_FIELDS = ("forced_decoder_ids",)  # [[position, id], ...]: only the ids are renumbered


def _whisper_tail(model, tokenizer) -> set[int]:
    """Whisper's generate() and tokenizer find timestamp tokens as offsets from ``<|notimestamps|>`` (and the
    language tokens through ``lang_to_id``): every id from ``<|endoftext|>`` to the end of the vocabulary stays,
    so the special and timestamp tokens keep their order and spacing under new ids."""
    first = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    first = first if isinstance(first, int) else model.config.eos_token_id
    return set(range(first, model.get_input_embeddings().num_embeddings))


# model type -> ids that family's generate() needs beyond the tokens of the texts
ALWAYS_KEPT = {"whisper": _whisper_tail}


def _remap_ids(value, old_to_new: dict[int, int]):
    if value is None:
        return None
    if isinstance(value, int):
        return old_to_new[value]
    return [_remap_ids(item, old_to_new) for item in value]


def _named_ids(config) -> list[int]:
    ids = [i for field in ID_FIELDS + ID_LIST_FIELDS for i in token_id_list(getattr(config, field, None))]
    ids += [i for field in ID_MAP_FIELDS for i in (getattr(config, field, None) or {}).values()]
    # a multilingual Whisper leaves the language slot open: [[1, None], [2, <|transcribe|>]]
    ids += [pair[1] for field in ID_PAIR_FIELDS for pair in (getattr(config, field, None) or [])
            if pair[1] is not None]
    return ids


def _configs(model):
    configs = [model.config]
    if getattr(model, "generation_config", None) is not None:
        configs.append(model.generation_config)
    return configs


def ids_named_by_configs(model) -> set[int]:
    return {i for config in _configs(model) for i in _named_ids(config)}


def token_row_counts(tokenizer, texts: Iterable[str] = (), target_texts: Iterable[str] | None = None,
                     tokenized: Iterable[Sequence[int]] = (), batch_size: int = 1000,
                     table_size: int | None = None, name: str = "tokenized") -> Counter:
    """How many rows each id occurs in: the rows ``tokenizer`` makes of ``texts`` (and, as targets,
    ``target_texts``) and the already tokenized rows ``tokenized``. ``table_size``: refuse ids of ``tokenized``
    outside a table of that many rows (-100, labels' padding, aside): rows of another tokenizer."""
    for label, value in (("texts", texts), ("target_texts", target_texts)):
        if isinstance(value, str):  # read letter by letter, each a text
            raise ValueError(f"{label} is one string; pass a list of texts ([{value[:20]!r}, ...])")
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral):
        raise TypeError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    if isinstance(tokenized, Mapping):  # a tokenizer's BatchEncoding, a dict of columns
        raise ValueError(f"{name} is a mapping of columns ({', '.join(map(str, list(tokenized)[:3]))}); pass its "
                         f"rows of ids, e.g. {name}=encoding['input_ids']")
    counts: Counter = Counter()
    for source, as_target in ((texts, False), (target_texts, True)):
        if source is None:
            continue
        source = list(source)
        for start in range(0, len(source), batch_size):
            chunk = source[start:start + batch_size]
            encoded = tokenizer(text_target=chunk) if as_target else tokenizer(chunk)
            for ids in encoded["input_ids"]:
                counts.update(set(ids))
    for ids in tokenized:
        if isinstance(ids, Mapping):  # a tokenized datasets.Dataset's rows
            raise ValueError(f"{name} rows are lists of token ids; got a row with the columns "
                             f"{sorted(ids)[:4]}: pass one column, e.g. {name}=dataset['input_ids']")
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # a torch- or numpy-formatted dataset's rows
        row = set(ids) if isinstance(ids, (list, tuple)) else {ids}
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in row):
            raise ValueError(f"{name} rows are lists of token ids (ints); got a row of "
                             f"{sorted({type(i).__name__ for i in row})}")
        outside = sorted(i for i in row if i != -100 and (i < 0 or table_size is not None and i >= table_size))
        if outside:
            raise ValueError(f"{name} holds ids outside the model's table of {table_size} rows ({outside[:5]}): "
                             "rows of another tokenizer? Count rows the model's own tokenizer made")
        row.discard(-100)  # a label's padding, not a token: it counts towards no min_count or max_size
        counts.update(row)
    return counts


def kept_anyway(model, tokenizer, keep_tokens: Iterable[str] = (), keep_ids: Iterable[int] = ()) -> set[int]:
    """The ids ``prune_vocabulary`` keeps whatever their count, on both sides: special and added tokens, ids the
    configs name, the family's own (Whisper's timestamps), ``keep_tokens`` / ``keep_ids``."""
    always = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    always |= ids_named_by_configs(model)
    if model.config.model_type in ALWAYS_KEPT:
        always |= ALWAYS_KEPT[model.config.model_type](model, tokenizer)
    return always | {tokenizer.convert_tokens_to_ids(token) for token in keep_tokens} | {int(i) for i in keep_ids}


def _within_size(ranked: list[int], always: set[int], max_size: int | None, required, old_size: int) -> set[int]:
    """The ids kept: ``always``, the ``ranked`` ids (most common first) and what the tokenizer family needs to
    produce them (``required``), with as many of ``ranked`` as ``max_size`` leaves room for (None: all of them)."""
    def keep(count: int) -> set[int]:
        ids = always | set(ranked[:count])
        return {i for i in ids | required(ids) if 0 <= i < old_size}

    if max_size is None:
        return keep(len(ranked))
    low, high = 0, max(0, min(len(ranked), max_size - len(always)))  # keep(count) grows with count: bisect
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(keep(middle)) <= max_size else (low, middle - 1)
    kept = keep(low)
    if len(kept) > max_size:
        raise ValueError(f"max_size={max_size} is below the {len(kept)} tokens kept whatever their count (special "
                         "and added tokens, ids the configs name, keep_tokens / keep_ids and the pieces the "
                         "tokenizer needs): give a larger max_size")
    return kept


def kept_vocabulary(model, tokenizer, counts: Counter, min_count: int = 1, max_size: int | None = None,
                    keep_tokens: Iterable[str] = (), keep_ids: Iterable[int] = ()) -> set[int]:
    """The ids :func:`prune_vocabulary` keeps for these row counts: those kept anyway, the counted ids in at least
    ``min_count`` rows (the most common first, within ``max_size``) and the pieces the tokenizer needs for them."""
    family, spec = tokenizer_family(tokenizer)
    always = kept_anyway(model, tokenizer, keep_tokens, keep_ids)
    counted = [i for i, count in counts.items() if count >= min_count and i not in always]
    return _within_size(sorted(counted, key=lambda i: (-counts[i], i)), always, max_size,
                        lambda ids: family.required(tokenizer, spec, ids), model.get_input_embeddings().num_embeddings)


def smallest_size(model, tokenizer, keep_tokens: Iterable[str] = (), keep_ids: Iterable[int] = ()) -> int:
    """The fewest tokens ``prune_vocabulary`` can keep (its smallest ``max_size``): those kept whatever their count,
    with the pieces the tokenizer family needs to produce them."""
    family, spec = tokenizer_family(tokenizer)
    return len(_within_size([], kept_anyway(model, tokenizer, keep_tokens, keep_ids), None,
                            lambda ids: family.required(tokenizer, spec, ids),
                            model.get_input_embeddings().num_embeddings))


def highest_min_count(counts: Counter, always: set[int]) -> int:
    """The largest ``min_count`` that keeps a token of the rows besides those kept anyway (0: no such token), from
    :func:`token_row_counts`' ``counts`` and :func:`kept_anyway`'s ids."""
    return max((count for i, count in counts.items() if i not in always), default=0)


def token_ids_in(tokenizer, texts: Iterable[str], target_texts: Iterable[str] | None = None,
                 batch_size: int = 1000) -> set[int]:
    """Every id ``tokenizer`` produces for ``texts`` (and, as targets, ``target_texts``)."""
    return set(token_row_counts(tokenizer, texts, target_texts, batch_size=batch_size))


def _check_model(model):
    check_transformers_model(model, "prune_vocabulary")
    try:
        embeddings = model.get_input_embeddings()
    except NotImplementedError:  # models that read audio frames, not token ids (wav2vec2, ...)
        embeddings = None
    if embeddings is None:
        raise ValueError(f"{type(model).__name__} has no input token embeddings to prune; vocabulary pruning is for "
                         "models that read token ids (text encoders, Marian, BART, ...)")
    if not isinstance(embeddings, nn.Embedding):  # a FactoredEmbedding: its rows are not the table's rows
        raise ValueError(f"the input embedding is a {type(embeddings).__name__}, not a plain table: prune the "
                         "vocabulary first, then factor_embeddings")


def check_vocabulary_request(model, tokenizer, decoder_vocabulary: bool = False) -> None:
    """Refuse, before any work, a model or tokenizer that :func:`prune_vocabulary` cannot handle."""
    _check_model(model)
    if decoder_vocabulary:
        check_decoder_vocabulary_model(model)
    tokenizer_family(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                         f"{model.get_input_embeddings().num_embeddings} rows; they do not belong together")


# the token tables of the families (an encoder-decoder's shared table and each stack's own); position, token-type
# and relative-position tables can have as many rows as the vocabulary and stay whole
TOKEN_EMBEDDING_NAMES = ("word_embeddings", "embed_tokens", "shared")


def slice_vocabulary(model, kept_ids: list[int]) -> None:
    """Keep rows ``kept_ids`` (old ids, in their new order: ascending when slicing, any permutation to reorder)
    of every vocabulary-sized token embedding, output projection and ``final_logits_bias`` of ``model``, in place;
    tied weights stay tied. ``kept_ids`` are checked before anything is sliced."""
    old_size = model.get_input_embeddings().num_embeddings
    kept_ids = _checked_kept_ids(model, kept_ids, old_size)
    index = torch.tensor(kept_ids, dtype=torch.long)
    new_size = len(kept_ids)
    sliced: set[int] = set()

    def take_rows(param, dim=0):
        if id(param) not in sliced:  # a tied parameter appears in several modules: slice it once
            param.data = param.data.index_select(dim, index.to(param.device)).contiguous()
            sliced.add(id(param))

    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    output = model.get_output_embeddings()
    tokens = model.get_input_embeddings()
    for name, module in model.named_modules():
        is_token_table = module is tokens or name.rsplit(".", 1)[-1] in TOKEN_EMBEDDING_NAMES
        if isinstance(module, nn.Embedding) and is_token_table and module.num_embeddings == old_size:
            take_rows(module.weight)
            module.num_embeddings = new_size
            if module.padding_idx is not None:
                module.padding_idx = old_to_new[module.padding_idx]
        elif isinstance(module, nn.Linear) and module is output and module.out_features == old_size:
            take_rows(module.weight)
            if module.bias is not None:
                take_rows(module.bias)
            module.out_features = new_size
    for name, param in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith(OUTPUT_BIAS_NAMES) and param.shape[-1] == old_size:
            take_rows(param, dim=param.dim() - 1)
    for name, param in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith(OUTPUT_BIAS_NAMES) and param.shape[-1] != new_size:
            raise RuntimeError(f"{name} was not sliced")


def _checked_kept_ids(model, kept_ids, old_size: int) -> list[int]:
    """``kept_ids`` as a list of ints: non-empty, unique, within the table, every token table's padding id among them."""
    if isinstance(kept_ids, torch.Tensor):
        kept_ids = kept_ids.tolist()
    kept_ids = list(kept_ids)
    if not all(isinstance(i, Integral) and not isinstance(i, bool) for i in kept_ids):
        raise TypeError(f"kept_ids must be integer token ids, got {kept_ids[:8]}")
    kept_ids = [int(i) for i in kept_ids]
    if not kept_ids:
        raise ValueError("kept_ids is empty: a vocabulary keeps at least its special tokens")
    outside = sorted({i for i in kept_ids if not 0 <= i < old_size})
    if outside:
        raise ValueError(f"kept_ids holds ids outside the model's {old_size}-token table: {outside[:8]}")
    repeated = sorted(i for i, count in Counter(kept_ids).items() if count > 1)
    if repeated:
        raise ValueError(f"kept_ids holds ids more than once: {repeated[:8]}")
    padding = {m.padding_idx for m in model.modules() if isinstance(m, nn.Embedding) and m.padding_idx is not None
               and m.num_embeddings == old_size} - set(kept_ids)
    if padding:
        raise ValueError(f"kept_ids leaves out the padding id {sorted(padding)} of the token table(s): keep it")
    return kept_ids


# output biases kept apart from the output projection, over the vocabulary: BERT's MLM head's (a parameter of its
# own), RoBERTa / XLM-R's lm_head.bias (its own once the embeddings are untied; the saved folder holds it), Marian /
# BART's final_logits_bias buffer
OUTPUT_BIAS_NAMES = ("final_logits_bias", "predictions.bias", "lm_head.bias")


def check_decoder_vocabulary_model(model) -> None:
    """Refuse a model whose decoder cannot get a vocabulary of its own (anything but a Marian sharing one)."""
    config = model.config
    if not hasattr(config, "share_encoder_decoder_embeddings") or not hasattr(config, "decoder_vocab_size"):
        raise ValueError(f"decoder_vocabulary=True gives the decoder a table of its own, which Marian models can "
                         f"hold (config.decoder_vocab_size); {type(model).__name__} has one vocabulary for both sides")
    if not config.share_encoder_decoder_embeddings:
        raise ValueError("decoder_vocabulary=True: the model's decoder already has a vocabulary of its own "
                         "(share_encoder_decoder_embeddings=False)")
    if get_masks(model) is not None:  # the rebuilt modules would not carry the masks' hooks
        raise ValueError("decoder_vocabulary=True rebuilds the model's modules, which a masked model's masks are "
                         "attached to: compact it first (hf_adaprune.compact(model))")


def split_decoder_vocabulary(model, decoder_size: int) -> None:
    """Give ``model`` (a Marian with one shared table, in place) a decoder table and output projection of the
    first ``decoder_size`` ids; the encoder keeps the whole table.

    The model is rebuilt from its config with ``share_encoder_decoder_embeddings=False`` (transformers' own
    layout for separate tables, which stock ``from_pretrained`` reads) and takes over the rebuilt modules:
    parameters keep ``requires_grad``, gradient checkpointing stays as it was; other hooks registered on the old
    modules are not carried over.
    """
    config = model.config
    outside = sorted(i for i in ids_named_by_configs(model) if i >= decoder_size)
    if outside:
        raise ValueError(f"ids the config or generation config name ({outside[:5]}) are not among the decoder's "
                         f"first {decoder_size} ids: number the decoder's tokens first")
    state = model.state_dict()
    trainable = {name: param.requires_grad for name, param in model.named_parameters(remove_duplicate=False)}
    prefix = model.base_model_prefix + "."
    shared = state.pop(prefix + "shared.weight")
    # the tables the forward reads: the shared one, or (tie_word_embeddings=False) each stack's own copy
    encoder = state.get(prefix + "encoder.embed_tokens.weight", shared)
    decoder = state.get(prefix + "decoder.embed_tokens.weight", shared)
    state[prefix + "encoder.embed_tokens.weight"] = encoder
    state[prefix + "decoder.embed_tokens.weight"] = decoder[:decoder_size].clone()
    state["lm_head.weight"] = state["lm_head.weight"][:decoder_size].clone()
    state["final_logits_bias"] = state["final_logits_bias"][..., :decoder_size].clone()
    config.share_encoder_decoder_embeddings = False
    config.decoder_vocab_size = decoder_size
    rebuilt = type(model)(config).to(device=shared.device, dtype=shared.dtype).train(model.training)
    rebuilt.load_state_dict(state, strict=True)
    if config.tie_word_embeddings:
        rebuilt.tie_weights()
    for name, param in rebuilt.named_parameters(remove_duplicate=False):  # frozen stays frozen
        param.requires_grad_(trainable.get(name, trainable.get(prefix + "shared.weight", True)))
    flags = checkpointing_flags(model)
    with without_input_grad_hooks(model):  # gradient checkpointing's hooks and flags carry over to the new modules
        for name, module in list(rebuilt.named_children()):
            setattr(model, name, module)
        restore_checkpointing_flags(model, flags)
    model.register_buffer("final_logits_bias", rebuilt.final_logits_bias)
    for attribute in ("_tied_weights_keys", "all_tied_weights_keys"):
        if hasattr(rebuilt, attribute):
            setattr(model, attribute, getattr(rebuilt, attribute))


def _update_configs(model, old_size: int, old_to_new: dict[int, int]) -> None:
    new_size = len(old_to_new)
    config = model.config
    config.vocab_size = new_size
    if getattr(config, "decoder_vocab_size", None) == old_size:  # Marian keeps a second copy
        config.decoder_vocab_size = new_size
    for cfg in _configs(model):
        for field in ID_FIELDS + ID_LIST_FIELDS:
            if getattr(cfg, field, None) is not None:
                setattr(cfg, field, _remap_ids(getattr(cfg, field), old_to_new))
        for field in ID_MAP_FIELDS:
            if getattr(cfg, field, None):
                setattr(cfg, field, {key: old_to_new[i] for key, i in getattr(cfg, field).items()})
        for field in ID_PAIR_FIELDS:
            if getattr(cfg, field, None):
                setattr(cfg, field, [[position, None if i is None else old_to_new[i]]
                                     for position, i in getattr(cfg, field)])


def prune_vocabulary(model, tokenizer, texts: Iterable[str] = (), *, target_texts: Iterable[str] | None = None,
                     tokenized: Iterable[Sequence[int]] = (), min_count: int = 1, max_size: int | None = None,
                     keep_tokens: Iterable[str] = (), keep_ids: Iterable[int] = (),
                     decoder_vocabulary: bool = False, target_tokenized: Iterable[Sequence[int]] | None = None):
    """Shrink ``model``'s vocabulary (in place) to the tokens of ``texts``; return the matching tokenizer.

    ``texts``: the task's training inputs (for seq2seq, ``target_texts``: its training targets, tokenized
    as targets); ``tokenized``: training rows already tokenized (lists of ids, e.g. a dataset's ``input_ids``),
    counted like texts. ``min_count``: keep a token of these rows only when it occurs in at least that many
    of them (as TextPruner's ``min_count``; rows, not occurrences, so one long row does not decide): 1 keeps
    every token seen, a higher count drops rare tokens for a smaller embedding, and text using them is then
    split into kept pieces by the tokenizer (see :mod:`.tokenizer_vocab`). ``max_size``: a budget instead of (or
    beside) a count: at most that many tokens in the new vocabulary, the tokens kept anyway (below) included and
    the rest the most common of the counted tokens (by rows; ties: the lower id); a budget below the tokens kept
    anyway is refused. Counting a large training set and keeping its ``max_size`` most common tokens changes the
    tokens of fewer texts than keeping every token of a smaller sample at the same size. ``keep_tokens``: token strings to
    keep as well; ``keep_ids``: token ids to keep as well, whatever their count. Special tokens, added tokens
    and ids named by the config or generation config always stay. Unsupported models or tokenizers and a
    ``min_count`` below 1 are refused before any work. Logits on text whose tokens are all kept equal the
    unpruned model's.

    ``decoder_vocabulary=True`` (Marian): the decoder's table and the output projection keep only the tokens of
    the targets (``target_texts`` and ``target_tokenized``, counted with ``min_count``), the special tokens,
    the ids the configs name and ``keep_tokens`` / ``keep_ids``; see the module's docstring. Logits on targets
    whose tokens are all decoder tokens equal the unpruned model's at those tokens; training such a model
    further needs targets made of its decoder tokens.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a whole number >= 1 (rows a token must occur in), got {min_count!r}")
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
        raise ValueError(f"max_size must be a whole number >= 1 (tokens in the new vocabulary) or None, got "
                         f"{max_size!r}")
    for name, value in (("texts", texts), ("target_texts", target_texts), ("keep_tokens", keep_tokens),
                        ("keep_ids", keep_ids), ("tokenized", tokenized), ("target_tokenized", target_tokenized)):
        if isinstance(value, str):
            what = {"keep_tokens": "tokens", "keep_ids": "ids"}.get(name, "texts" if name.endswith("texts") else
                                                                    "rows of ids")
            raise ValueError(f"{name} is one string; pass a list of {what} (a string would be read letter by letter)")
    check_vocabulary_request(model, tokenizer, decoder_vocabulary=decoder_vocabulary)
    if decoder_vocabulary and target_texts is None and target_tokenized is None:
        raise ValueError("decoder_vocabulary=True keeps the tokens of the targets in the decoder: pass target_texts "
                         "(the training targets) or target_tokenized (their token ids, e.g. a dataset's labels)")
    family, spec = tokenizer_family(tokenizer)
    old_size = model.get_input_embeddings().num_embeddings
    keep_tokens, keep_ids = list(keep_tokens), [int(i) for i in keep_ids]
    vocabulary = tokenizer.get_vocab()
    unknown = [token for token in keep_tokens if token not in vocabulary]
    if unknown:
        raise ValueError(f"keep_tokens not in the tokenizer's vocabulary: {unknown[:5]} (give tokens as "
                         "tokenizer.tokenize writes them, e.g. with '##' or '▁')")
    outside = [i for i in keep_ids if not 0 <= i < old_size]
    if outside:
        raise ValueError(f"keep_ids outside the model's vocabulary of {old_size} ids: {outside[:5]}")
    tokenless = [i for i in keep_ids if i >= len(tokenizer)]
    if tokenless:  # a table padded beyond the tokenizer (T5's): the new tokenizer could not number them
        raise ValueError(f"keep_ids with no token in the tokenizer ({len(tokenizer)} tokens; the model's table has "
                         f"{old_size} rows): {tokenless[:5]}")
    target_counts = token_row_counts(tokenizer, target_texts=target_texts,
                                     tokenized=() if target_tokenized is None else target_tokenized,
                                     table_size=old_size, name="target_tokenized")
    counts = token_row_counts(tokenizer, texts, tokenized=tokenized, table_size=old_size) + target_counts
    if not counts:
        raise ValueError("no training rows to count tokens in (texts, target_texts and tokenized are empty or "
                         "exhausted): the vocabulary would keep the special tokens alone")
    always = kept_anyway(model, tokenizer, keep_tokens, keep_ids)
    most = highest_min_count(counts, always)
    if most == 0:
        raise ValueError("the training rows hold no token besides the special ones and those kept anyway (blank "
                         "texts?): the vocabulary would keep the special tokens alone")
    if most < min_count:
        raise ValueError(f"no token occurs in min_count={min_count} rows (the most common in {most}): the "
                         "vocabulary would keep the special tokens alone; lower min_count")
    if decoder_vocabulary:  # the decoder's own tokens come from the targets alone: none would leave it mute
        target_most = highest_min_count(target_counts, always)
        if target_most < min_count:
            found = "no target rows" if not target_counts else (
                "no target token besides the special ones and those kept anyway" if target_most == 0 else
                f"no target token in min_count={min_count} rows (the most common in {target_most})")
            raise ValueError(f"decoder_vocabulary=True: {found} (target_texts / target_tokenized empty, "
                             "exhausted or blank?): the decoder could write the special tokens alone")
    kept = kept_vocabulary(model, tokenizer, counts, min_count, max_size, keep_tokens, keep_ids)
    kept_ids = sorted(kept)
    decoder_ids = []
    if decoder_vocabulary:  # the decoder's tokens first, so that its table is the head of the encoder's
        decoder = {i for i, count in target_counts.items() if count >= min_count and i in kept} | always
        decoder_ids = [i for i in kept_ids if i in decoder]
        kept_ids = decoder_ids + [i for i in kept_ids if i not in decoder]
    old_to_new = {old: new for new, old in enumerate(kept_ids)}
    with tempfile.TemporaryDirectory(prefix="adaprune-vocab-") as folder:  # first: a failure leaves the model whole
        tokenizer.save_pretrained(folder)
        family.rewrite(Path(folder), old_to_new)
        new_tokenizer = type(tokenizer).from_pretrained(folder)
    slice_vocabulary(model, kept_ids)
    _update_configs(model, old_size, old_to_new)
    if decoder_vocabulary:
        split_decoder_vocabulary(model, len(decoder_ids))
    return new_tokenizer
