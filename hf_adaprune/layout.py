"""The saved layout of a pruned model: one codec used by compaction and by loading.

``config.adaprune`` (the *record*) holds ``version``, ``groups`` (per group: kind,
role, original count, kept original indices; named by the layers the model has now),
``layers`` (per layer stack that lost whole layers: role, original count, kept
original layer indices; the config's layer count says how many it has) and ``layout``: every module whose
shape differs from the dense architecture (``modules``), every attribute the
forward pass reads (``attributes``, e.g. head counts), plain per-head parameters
that were sliced (``parameters``) and the attention modules that keep a subset
of heads of a position bias shared across layers (``shared_bias``).
:func:`apply_layout` turns a dense base model into that shape; compaction
(``hf_adaprune.surgery``) records a layout, applies it with the same function and
then loads the sliced weights, so a compacted model and a reloaded one are built
by the same code.

This file is also the first part of the ``modeling_adaprune.py`` shipped next to
every saved model (followed by the attention forwards of the model's family and
one class per saved head class), so it imports nothing but torch and
transformers.
"""

from __future__ import annotations

import functools
import sys
import warnings

import torch
from torch import nn

# 1: modules + attributes. 2: adds ``parameters``, ``shared_bias`` and EmptyAttention's cache placeholders.
# 3: a group's kept structures as one hex bitmap (``kept_mask``) instead of a list of indices (``kept``).
# 4: adds ``layers`` (stacks that lost whole layers; paths elsewhere name the layers as renumbered).
FORMAT_VERSION = 4


# -- one copy of each module helper --------------------------------------------------------------------


def parent_and_name(root: nn.Module, path: str):
    parent_path, _, name = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), name


def set_attribute(root: nn.Module, path: str, value) -> None:
    parent, name = parent_and_name(root, path)
    setattr(parent, name, value)


def _placement(like: nn.Module | torch.Tensor | None) -> dict:
    ref = getattr(like, "weight", like)
    return {} if not isinstance(ref, torch.Tensor) else {"device": ref.device, "dtype": ref.dtype}


def new_linear(in_features: int, out_features: int, bias: bool, like=None) -> nn.Linear:
    """An uninitialised-looking ``nn.Linear`` on the device/dtype of ``like`` (a module or tensor)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a zero-width linear warns that its init is a no-op
        return nn.Linear(in_features, out_features, bias=bias, **_placement(like))


def new_embedding(num_embeddings: int, embedding_dim: int, like=None) -> nn.Embedding:
    return nn.Embedding(num_embeddings, embedding_dim, **_placement(like))


# -- an input embedding whose rare tokens share a low-rank basis ------------------------------------------


class FactoredEmbedding(nn.Module):
    """An input embedding that keeps the rows of its common tokens and stores the rare ones at low rank.

    ``slot[i]`` is token i's row: below ``full_rows`` a row of ``full`` (the original row, so text made of common
    tokens embeds exactly as before), from there on a ``rank``-wide code in ``rare`` that ``up`` maps to the
    embedding width. Built by :func:`hf_adaprune.deploy.factor_embeddings`; a saved folder rebuilds it from its
    layout entry (``type: FactoredEmbedding``).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, full_rows: int, rank: int, like=None):
        super().__init__()
        placement = _placement(like)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.full = nn.Embedding(full_rows, embedding_dim, **placement)
        self.rare = nn.Embedding(num_embeddings - full_rows, rank, **placement)
        self.up = nn.Linear(rank, embedding_dim, bias=False, **placement)
        self.register_buffer("slot", torch.arange(num_embeddings, device=placement.get("device")))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        slot = self.slot[input_ids]
        full_rows = self.full.num_embeddings
        common = self.full(slot.clamp(max=full_rows - 1))
        rare = self.up(self.rare((slot - full_rows).clamp(min=0)))
        return torch.where((slot < full_rows).unsqueeze(-1), common, rare)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table, one row per token (computed), for code that reads an embedding's weight."""
        return self.forward(torch.arange(self.num_embeddings, device=self.slot.device))


# -- attention blocks with no head left ----------------------------------------------------------------


class EmptyAttention(nn.Module):
    """Stands in for an attention block whose heads were all pruned.

    The attention then contributes a constant: the bias of its output projection
    (kept as a zero-input linear under its original name when it lives inside the
    block) or nothing (a zero-width tensor, when the projection follows the block).

    ``cache_layer`` (the layer index of a decoder self- or, with
    ``cross_attention``, cross-attention) keeps the KV cache consistent: the
    decoder reads the number of cached tokens from layer 0, and some callers
    (Whisper's generate) read every layer's entries, so an empty layer still
    stores one placeholder entry per token (of the decoder, or of the encoder
    output it would attend to). ``extra_outputs`` is read from records that set it.

    ``record_keys`` (the keys of ``output_attentions`` / ``cross_attentions`` under
    which transformers recorded the module it replaces, see :func:`recorded_as`)
    keep those tuples one entry per layer: when the model collects them with eager
    attention (the implementation that returns weights), the block records a
    zero-head weight tensor ``(batch, 0, queries, keys)`` in its place. A model that
    collects the weights from what its attention returns (DeBERTa) gets them as the
    second output when its ``output_attentions`` argument, positional argument
    ``output_attentions_arg`` after ``hidden_states`` or keyword, is true.
    """

    is_empty_attention = True

    def __init__(self, output_name: str | None = None, output: nn.Module | None = None, extra_outputs: int = 0,
                 cache_layer: int | None = None, cross_attention: bool = False,
                 output_attentions_arg: int | None = None):
        super().__init__()
        self.output_attentions_arg = output_attentions_arg
        self.output_name = output_name
        self.extra_outputs = extra_outputs
        self.cache_layer = cache_layer
        self.cross_attention = cross_attention
        self.record_keys: tuple[str, ...] = ()
        self.config = None  # the replaced module's config: which attention implementation the model runs
        if output_name is not None:
            self.add_module(output_name, output)

    def forward(self, hidden_states, *args, **kwargs):
        keys = None
        if self.cache_layer is not None:
            cache = kwargs.get("cache")
            cache = kwargs.get("past_key_values") if cache is None else cache
            if self.cross_attention:
                cross_cache_placeholder(cache, self.cache_layer, kwargs.get("key_value_states"))
            else:
                keys = cache_placeholder(cache, self.cache_layer, hidden_states)
        if self.record_keys:
            sources = kwargs.get("key_value_states") if self.cross_attention else keys
            key_length = hidden_states.shape[1] if sources is None else sources.shape[-2]
            record_empty_weights(self, self.record_keys, hidden_states, key_length)
        weights, flag = None, self.output_attentions_arg
        if flag is not None:
            wanted = args[flag] if len(args) > flag else kwargs.get("output_attentions")
            weights = empty_attention_weights(self, hidden_states, hidden_states.shape[1]) if wanted else None
        out = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.output_name is not None:
            out = getattr(self, self.output_name)(out)
        return (out, weights) + (None,) * self.extra_outputs


def returns_attention_weights(module: nn.Module) -> bool:
    """Whether the model ``module`` belongs to runs an attention that returns its weights (eager; sdpa and the
    kernels return none, and transformers then collects no ``attentions``)."""
    implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
    return implementation in (None, "eager")


def empty_attention_weights(module: nn.Module, hidden_states: torch.Tensor, key_length: int):
    """The weights of an attention with no head left, ``(batch, 0, queries, keys)``, where its model's
    attentions return weights; else None (as theirs are)."""
    if not returns_attention_weights(module):
        return None
    return hidden_states.new_zeros(hidden_states.shape[0], 0, hidden_states.shape[1], key_length)


def record_empty_weights(module: nn.Module, record_keys, hidden_states: torch.Tensor, key_length: int) -> None:
    """Add ``module``'s zero-head weights to the tuples transformers is collecting under ``record_keys``
    (``output_attentions=True``), where the hooks it puts on its own attention classes cannot see this one."""
    # transformers' collector of the current forward (loaded with its models); a transformers that collects
    # otherwise has none, and the tuple then lacks this layer's entry
    collector = getattr(sys.modules.get("transformers.utils.output_capturing"), "_active_collector", None)
    collected = None if collector is None else collector.get()
    if collected is None or not any(key in collected for key in record_keys):
        return
    weights = empty_attention_weights(module, hidden_states, key_length)
    if weights is not None:
        for key in record_keys:
            if key in collected:
                collected[key].append(weights)


def recorded_as(base_model: nn.Module, path: str, module: nn.Module) -> tuple[str, ...]:
    """The keys (``attentions``, ``cross_attentions``) under which transformers records ``module``'s attention
    weights at ``path`` (read from the ``_can_record_outputs`` of the model that owns it, as transformers matches
    them: by class, and by layer name where one is given). An emptied attention keeps the keys it had."""
    if getattr(module, "is_empty_attention", False):
        return tuple(module.record_keys)
    owner, name = base_model, path  # the innermost model on the path with recording specs, and the path inside it
    parts = path.split(".")
    for i in range(1, len(parts)):
        child = base_model.get_submodule(".".join(parts[:i]))
        if getattr(child, "_can_record_outputs", None):
            owner, name = child, ".".join(parts[i:])
    keys = []
    for key, specs in (getattr(owner, "_can_record_outputs", None) or {}).items():
        if "hidden_states" in key:
            continue
        for spec in specs if isinstance(specs, list) else [specs]:
            target = getattr(spec, "target_class", spec if isinstance(spec, type) else None)
            class_name = spec if isinstance(spec, str) else getattr(spec, "class_name", None)
            layer_name = getattr(spec, "layer_name", None)
            matches = (target is not None and isinstance(module, target)) or \
                (class_name is not None and ("." + name).endswith(class_name))
            if matches and (layer_name is None or f".{layer_name.strip('.')}." in f".{name}."):
                keys.append(key)
                break
    return tuple(keys)


def cache_placeholder(cache, layer_idx: int, hidden_states: torch.Tensor):
    """Append one (1-head, width-1) zero entry per token to a self-attention cache; returns the cached keys.

    A zero-width entry would not do: the cache reports an empty tensor as length 0.
    """
    if cache is None:
        return None
    cache = getattr(cache, "self_attention_cache", cache)
    placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
    keys, _ = cache.update(placeholder, placeholder, layer_idx)
    return keys


def cross_cache_placeholder(cache, layer_idx: int, key_value_states: torch.Tensor | None) -> None:
    """Fill an empty cross-attention's entry of an encoder-decoder cache once, as its attention would."""
    if cache is None or key_value_states is None or not hasattr(cache, "cross_attention_cache"):
        return
    if cache.is_updated.get(layer_idx):
        return
    placeholder = key_value_states.new_zeros(key_value_states.shape[0], 1, key_value_states.shape[1], 1)
    cache.cross_attention_cache.update(placeholder, placeholder, layer_idx)
    cache.is_updated[layer_idx] = True


# -- attention blocks sharing a position bias across layers ------------------------------------------
#
# T5 computes its relative position bias in the first block of a stack and hands it
# to the later ones; WavLM does the same with its (gated) relative bias. The bias
# has one slice per *original* head. A pruned attention module keeps the bias
# tensors at full size (the embedding producing it stays untouched), knows which
# original heads it kept (``adaprune_kept_heads``) and slices the bias for its own
# use inside its forward, while handing the full bias on to the next layer. The
# module's class is swapped for a subclass with the family's forward (a
# :class:`SharedBiasMixin` subclass in the family's file, registered with
# :func:`register_shared_bias`), so parameter names (and so the checkpoint) stay
# those of the dense model.

SHARED_BIAS_WRAPPERS: dict[str, type] = {}


def register_shared_bias(cls: type) -> type:
    """Class decorator: make ``cls`` the shared-bias forward saved layouts call ``cls.adaprune_kind``."""
    SHARED_BIAS_WRAPPERS[cls.adaprune_kind] = cls
    return cls


def kept_heads_index(module: nn.Module, device) -> torch.Tensor:
    """``module.adaprune_kept_heads`` as an index tensor on ``device``, made once per device and kept list (a new
    tensor in every forward is a blocking host-to-GPU copy per attention and generated token)."""
    key = (str(device), tuple(module.adaprune_kept_heads))
    cached = module.__dict__.get("_adaprune_kept_index")
    if cached is None or cached[0] != key:
        with torch.inference_mode(False):  # made under inference mode it could not serve a later training forward
            cached = (key, torch.tensor(module.adaprune_kept_heads, dtype=torch.long, device=device))
        module.__dict__["_adaprune_kept_index"] = cached  # not a buffer: no state_dict entry, nothing to save
    return cached[1]


class SharedBiasMixin:
    """Common part of the shared-bias forwards."""

    adaprune_kind = None
    # the stock forward bypasses the output projection module, so mask gates need this forward from the start
    gates_need_wrapper = False

    @property
    def is_empty_attention(self) -> bool:
        return len(self.adaprune_kept_heads) == 0

    def __reduce_ex__(self, protocol):
        # the class is made at run time: pickle how to make it (the forward's mixin and the stock class), so that
        # another process (torch.save / load, spawned workers) rebuilds it
        reduced = list(super().__reduce_ex__(protocol))
        cls = type(self)
        mixin = next(c for c in cls.__mro__ if c in SHARED_BIAS_WRAPPERS.values())
        reduced[0], reduced[1] = _new_shared_bias_module, (mixin, stock_module_class(cls))
        return tuple(reduced)


def _new_shared_bias_module(mixin: type, base: type) -> nn.Module:
    """An empty instance of ``mixin`` over ``base`` (unpickling fills its state in)."""
    return object.__new__(_shared_bias_class(mixin, base))


@functools.cache
def _shared_bias_class(mixin: type, base: type) -> type:
    cls = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {"__module__": __name__})
    module = sys.modules.get(__name__)
    if module is not None:
        setattr(module, cls.__name__, cls)  # picklable by reference
    return cls


def stock_module_class(cls: type) -> type:
    """``cls`` without any shared-bias forward mixed in (by this code or by another copy of it)."""
    return next(c for c in cls.__mro__ if issubclass(c, nn.Module) and getattr(c, "adaprune_kind", None) is None)


def install_shared_bias(module: nn.Module, kind, kept_heads, num_heads: int) -> nn.Module:
    """Make ``module`` use ``kept_heads`` of its ``num_heads`` original heads with the forward ``kind``
    (a registered :class:`SharedBiasMixin` subclass or its ``adaprune_kind``)."""
    mixin = SHARED_BIAS_WRAPPERS[kind] if isinstance(kind, str) else kind
    if not isinstance(module, mixin):
        # built on the stock class, also when ``module`` has another copy's forward (a model loaded with a folder's
        # modeling_adaprune.py): two forwards stacked would both slice the bias
        module.__class__ = _shared_bias_class(mixin, stock_module_class(type(module)))
    module.adaprune_kept_heads = [int(h) for h in kept_heads]
    module.adaprune_num_heads = int(num_heads)
    return module


# -- the record --------------------------------------------------------------------------------------

TABLES = ("modules", "attributes", "parameters", "shared_bias")


def empty_record() -> dict:
    return {"version": FORMAT_VERSION, "groups": {}, "layers": {}, "layout": {name: {} for name in TABLES}}


def encode_kept(kept, original: int) -> str:
    """The kept original indices as a hex bitmap: bit ``i`` set = structure ``i`` kept ("a" = 1010: 1 and 3).

    A list of 3,072 neuron indices is 3,072 lines of config.json; the bitmap is 768 characters.
    """
    return format(sum(1 << int(i) for i in kept), f"0{max(1, (original + 3) // 4)}x")


def decode_kept(group: dict) -> list[int]:
    """A saved group's kept original indices (``kept_mask`` of version 3, ``kept`` before)."""
    if "kept_mask" not in group:
        return [int(i) for i in group["kept"]]
    bits = int(group["kept_mask"], 16)
    if bits >> int(group["original"]):
        raise ValueError(f"kept_mask {group['kept_mask']} keeps structures beyond the {group['original']} there were")
    return [i for i in range(int(group["original"])) if bits >> i & 1]


def write_record(config, record: dict) -> dict:
    """Store ``record`` (as :func:`read_record` returns it) on ``config`` in the saved form; returns that form."""
    saved = {
        "version": FORMAT_VERSION,
        "groups": {name: {"kind": g["kind"], "role": g["role"], "original": g["original"],
                          "kept_mask": encode_kept(g["kept"], g["original"])}
                   for name, g in record["groups"].items()},
        "layout": {name: table for name, table in record["layout"].items() if table},
    }
    if record.get("layers"):
        saved["layers"] = {name: {"role": s["role"], "original": s["original"], "kept": list(s["kept"])}
                           for name, s in record["layers"].items()}
    config.adaprune = saved
    return saved


def read_record(config, where: str | None = None) -> dict | None:
    """``config.adaprune`` in the current vocabulary, or None when the config has none.

    Records saved by earlier versions load too (FFN groups of kind ``"neurons"``,
    a second version number inside ``layout``); a record this code cannot read is
    refused with what to do.
    """
    record = getattr(config, "adaprune", None)
    if not record:
        return None
    if where is None:
        folder = getattr(config, "_name_or_path", "")
        where = f"{folder}/config.json" if folder else "config.json"
    if not isinstance(record, dict) or not isinstance(record.get("layout"), dict) \
            or not isinstance(record.get("groups"), dict):
        missing = [k for k in ("layout", "groups") if not isinstance(record, dict) or k not in record]
        raise ValueError(
            f"the hf_adaprune record (adaprune) in {where} is incomplete (missing: {', '.join(missing) or 'none'}; "
            "found: " + (", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__)
            + "). It says which modules were pruned to what shape and cannot be rebuilt from the weights alone: "
            "restore config.json from the saved folder or the Hub repository."
        )
    layout = record["layout"]
    try:
        version = max(int(record.get("version", 1)), int(layout.get("version", 1)))
    except (TypeError, ValueError):
        raise ValueError(f"the pruned layout version in {where} is not a number ({record.get('version')!r}, "
                         f"{layout.get('version')!r}): restore config.json from the saved folder") from None
    if version > FORMAT_VERSION:
        if __name__.rpartition(".")[2] == "modeling_adaprune":  # running as the folder's shipped remote code
            advice = ("the folder's modeling_adaprune.py is older than its config.json: re-save the folder with the "
                      "hf_adaprune that wrote it, or load it with that hf_adaprune's AutoPrunedModel")
        else:
            advice = "upgrade hf_adaprune, or load it with trust_remote_code=True (its own modeling_adaprune.py)"
        raise ValueError(f"pruned layout version {version} in {where} is newer than this loader ({FORMAT_VERSION}): "
                         + advice)
    try:
        groups = {name: {"kind": "ffn" if g.get("kind") == "neurons" else g.get("kind"), "role": g.get("role"),
                         "original": _count(g["original"]), "kept": _indices(decode_kept(g), g["original"])}
                  for name, g in record["groups"].items()}
        tables = {name: dict(layout.get(name, {})) for name in TABLES}
        layers = {name: {"role": s["role"], "original": _count(s["original"]),
                         "kept": _indices(s["kept"], s["original"])}
                  for name, s in (record.get("layers") or {}).items()}
        for spec in tables["shared_bias"].values():
            _indices(spec["kept_heads"], spec["num_heads"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"the hf_adaprune record (adaprune) in {where} is damaged ({_described(error)}): restore "
                         "config.json from the saved folder or the Hub repository") from None
    return {"version": version, "groups": groups, "layers": layers, "layout": tables}


def _count(value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return int(value)


def _indices(values, original) -> list[int]:
    """``values`` as original indices: whole numbers in ``[0, original)``, each once, in increasing order."""
    original, values = _count(original), [int(i) for i in values]
    if any(not 0 <= i < original for i in values) or values != sorted(set(values)):
        raise ValueError(f"{values[:8]} are not increasing indices below {original}")
    return values


def _described(error: Exception) -> str:
    return f"missing key {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"


# -- applying a layout -------------------------------------------------------------------------------


def module_from_spec(spec: dict, old: nn.Module | None, path: str = "?") -> nn.Module:
    """The (uninitialised) module a layout entry describes, on ``old``'s device and dtype."""
    kind = spec["type"]
    if kind == "Linear":
        return new_linear(spec["in_features"], spec["out_features"], spec["bias"], like=old)
    if kind == "Embedding":
        return new_embedding(spec["num_embeddings"], spec["embedding_dim"], like=old)
    if kind == "FactoredEmbedding":
        return FactoredEmbedding(spec["num_embeddings"], spec["embedding_dim"], spec["full_rows"], spec["rank"],
                                 like=old)
    if kind == "EmptyAttention":
        name, output = spec.get("output_name"), None
        if name is not None:
            out = spec["output"]
            output = new_linear(0, out["out_features"], out["bias"], like=getattr(old, name, None))
        empty = EmptyAttention(name, output, spec.get("extra_outputs", 0), spec.get("cache_layer"),
                               spec.get("cross_attention", False), spec.get("output_attentions_arg"))
        empty.config = getattr(old, "config", None)
        return empty
    raise ValueError(f"unknown module type {kind!r} in pruned layout at {path!r}")


def linear_spec(linear: nn.Linear) -> dict:
    return {"type": "Linear", "in_features": linear.in_features, "out_features": linear.out_features,
            "bias": linear.bias is not None}


def apply_layout(base_model: nn.Module, layout: dict) -> list[nn.Module]:
    """Reshape ``base_model`` in place to ``layout``; return the new modules (initialised as PyTorch does; the
    model's own init is the caller's to apply). A reshaped parameter starts as the leading slice of the one it
    replaces (WavLM's per-head ``gru_rel_pos_const``: the model's init value), or uninitialised if it grew."""
    created = []

    def replace_module(path, spec):
        parent, name = parent_and_name(base_model, path)
        old = getattr(parent, name, None)
        created.append(module_from_spec(spec, old, path))
        if getattr(created[-1], "is_empty_attention", False) and old is not None:
            created[-1].record_keys = recorded_as(base_model, path, old)
        setattr(parent, name, created[-1])

    def reshape_parameter(path, shape):
        parent, name = parent_and_name(base_model, path)
        old = getattr(parent, name)
        shape = tuple(shape)
        if len(shape) == old.dim() and all(n <= o for n, o in zip(shape, old.shape)):
            value = old.detach()[tuple(slice(0, n) for n in shape)].clone()
        else:
            value = torch.empty(shape, device=old.device, dtype=old.dtype)
        setattr(parent, name, nn.Parameter(value, requires_grad=old.requires_grad))

    def shared_bias(path, spec):
        install_shared_bias(base_model.get_submodule(path), spec["kind"], spec["kept_heads"], spec["num_heads"])

    for table, apply in (("modules", replace_module), ("parameters", reshape_parameter),
                         ("attributes", lambda path, value: set_attribute(base_model, path, value)),
                         ("shared_bias", shared_bias)):
        for path, entry in layout.get(table, {}).items():
            try:
                apply(path, entry)
            except (AttributeError, KeyError, TypeError, IndexError, RuntimeError) as error:
                raise LayoutMismatch(f"adaprune.layout.{table}[{path!r}] does not fit the model its config builds "
                                     f"({_described(error)})") from None
    return created


class LayoutMismatch(ValueError):
    """A layout entry the model built from the config cannot take (the caller names the config file)."""


def check_layer_counts(base_model: nn.Module, record: dict) -> None:
    """Refuse a model whose stacks (built from the config's layer counts) hold another number of layers than the
    record keeps: a layer would be left at random, or a trained one dropped."""
    for stack, entry in record["layers"].items():
        try:
            layers = base_model.get_submodule(stack)
        except AttributeError:  # a one-stack head class of an encoder-decoder
            continue
        if len(layers) != len(entry["kept"]):
            raise LayoutMismatch(f"{stack} is built with {len(layers)} layers but adaprune.layers keeps "
                                 f"{len(entry['kept'])} of its {entry['original']}: the config's layer count "
                                 "disagrees with its record")
    for path, spec in record["layout"]["shared_bias"].items():
        try:
            module = base_model.get_submodule(path)
        except AttributeError:
            continue
        heads = getattr(module, "n_heads", getattr(module, "num_heads", None))
        if isinstance(heads, int) and heads != len(spec["kept_heads"]):
            raise LayoutMismatch(f"adaprune.layout.shared_bias[{path!r}] keeps {len(spec['kept_heads'])} heads "
                                 f"where the attention has {heads}")


# -- loading ---------------------------------------------------------------------------------------


def layout_of_present_stacks(base_model: nn.Module, layout: dict) -> dict:
    """``layout`` without the entries of a stack ``base_model`` does not have: an encoder-only or decoder-only
    head class (``T5EncoderModel``, ``BartForCausalLM``) loading an encoder-decoder's folder keeps one stack."""
    present = {}

    def has(path: str) -> bool:
        top = path.partition(".")[0]
        if top not in present:
            try:
                base_model.get_submodule(top)
                present[top] = True
            except AttributeError:
                present[top] = False
        return present[top]

    return {name: ({path: value for path, value in table.items() if has(path)} if isinstance(table, dict) else table)
            for name, table in layout.items()}


class PrunedModelMixin:
    """Mixed into a transformers model class: builds the pruned shapes, refuses partial loads."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        record = read_record(config)
        if record:
            try:
                created = apply_layout(self.base_model, layout_of_present_stacks(self.base_model, record["layout"]))
                check_layer_counts(self.base_model, record)
            except LayoutMismatch as error:
                folder = getattr(config, "_name_or_path", "")
                raise ValueError(f"{folder + '/' if folder else ''}config.json: {error}; restore config.json from "
                                 "the saved folder or the Hub repository") from None
            # post_init ran before the layout: the new modules get the model's own init (from_config, training the
            # pruned shape anew); from_pretrained builds on the meta device and loads every weight instead
            for module in created:
                for part in module.modules():
                    if not any(p.is_meta for p in part.parameters(recurse=False)):
                        self._init_weights(part)

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """As the transformers class this one extends answers: transformers reads the source of a class's own
        module, and this one's ``EmptyAttention`` (which calls no attention function) made it answer no, so
        ``set_attn_implementation`` did nothing on a model the shipped loader built."""
        for base in cls.__mro__[1:]:
            if base.__module__.startswith("transformers.") and hasattr(base, "_can_set_attn_implementation"):
                return base._can_set_attn_implementation()
        return False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        int8_weights = getattr(kwargs.get("config"), "adaprune_int8_weights", None)
        if int8_weights:  # the auto classes hand over the config they read: a save_int8 folder says so in it
            raise OSError(f"this folder holds int8 weights ({int8_weights}) written by hf_adaprune's save_int8, "
                          "which transformers does not read: load it with hf_adaprune.deploy.load_int8(folder) "
                          "(pip install hf-adaprune)")
        if cls.__name__.endswith("ForCausalLM") and kwargs.get("key_mapping") is None:
            # a BART-like encoder-decoder saves its shared token table once, as model.shared: its decoder-only
            # head reads it as its decoder's table (and the output layer tied to it), not a new random one
            kwargs["key_mapping"] = {r"^model\.shared\.": "model.decoder.embed_tokens."}
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        record = read_record(model.config) or empty_record()
        layers = {name.rpartition(".")[0] + "." for name in record["groups"]}
        prefix = model.base_model_prefix + "."

        def in_pruned_layers(key):
            return any((key[len(prefix):] if key.startswith(prefix) else key).startswith(layer) for layer in layers)

        missing = [key for key in info.get("missing_keys", []) if in_pruned_layers(key)]
        # outside the pruned layers (a new classifier with ignore_mismatched_sizes) transformers' rules apply
        mismatched = [entry for entry in info.get("mismatched_keys", [])
                      if in_pruned_layers(entry[0] if isinstance(entry, (tuple, list)) else entry)]
        if missing or mismatched:
            raise ValueError(
                "The weights do not match the pruned structure recorded in config.json "
                f"(missing: {sorted(missing)[:8]}, shape mismatches: {list(mismatched)[:8]}). "
                "The folder is inconsistent; refusing to re-initialise those layers."
            )
        freeze_unsaved_parameters(model)
        return (model, info) if wants_info else model


def freeze_unsaved_parameters(model) -> list[str]:
    """Freeze the trainable parameters that the model's own save leaves out (``_keys_to_ignore_on_save``: Marian's
    sinusoidal position tables); returns their names. transformers 5's ``from_pretrained`` hands them back trainable
    (a model built from its config has them frozen), so training would change what no saved folder keeps, and what
    is measured in memory would not be the saved model."""
    unsaved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    frozen = [name for name, parameter in model.named_parameters() if name in unsaved and parameter.requires_grad]
    for name in frozen:
        model.get_parameter(name).requires_grad_(False)
    return frozen
