# Copyright hf_adaprune authors. Apache-2.0.
"""Loads a model pruned by hf_adaprune with nothing but torch and transformers.

This file is copied next to the weights of every saved pruned model and named in
``config.json``'s ``auto_map``, so ``AutoModel...from_pretrained(dir,
trust_remote_code=True)`` works where hf_adaprune is not installed. It must stay
self-contained: no import of hf_adaprune.

``config.adaprune["layout"]`` lists every module whose shape differs from the
dense architecture, every attribute the forward pass reads (head counts), plain
per-head parameters that were sliced (``parameters``) and the attention modules
that keep a subset of heads of a position bias shared across layers
(``shared_bias``, see :func:`install_shared_bias`). The model is built dense,
then those modules are swapped for ones of the pruned shape before the weights
are loaded into them.
"""

from __future__ import annotations

import functools
import sys
import warnings

import torch
from torch import nn

# 1: modules + attributes. 2: adds ``parameters``, ``shared_bias`` and EmptyAttention's cache placeholders.
LAYOUT_VERSION = 2


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
    output it would attend to).
    """

    is_empty_attention = True

    def __init__(self, output_name: str | None = None, output: nn.Module | None = None, extra_outputs: int = 0,
                 cache_layer: int | None = None, cross_attention: bool = False):
        super().__init__()
        self.output_name = output_name
        self.extra_outputs = extra_outputs
        self.cache_layer = cache_layer
        self.cross_attention = cross_attention
        if output_name is not None:
            self.add_module(output_name, output)

    def forward(self, hidden_states, *args, **kwargs):
        if self.cache_layer is not None:
            cache = _cache_argument(kwargs)
            if self.cross_attention:
                _cross_cache_placeholder(cache, self.cache_layer, kwargs.get("key_value_states"))
            else:
                _cache_placeholder(cache, self.cache_layer, hidden_states)
        out = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.output_name is not None:
            out = getattr(self, self.output_name)(out)
        return (out, None) + (None,) * self.extra_outputs


def _cache_argument(kwargs: dict):
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def _cache_placeholder(cache, layer_idx: int, hidden_states: torch.Tensor):
    """Append one (1-head, width-1) zero entry per token to a self-attention cache; returns the cached keys.

    A zero-width entry would not do: the cache reports an empty tensor as length 0.
    """
    if cache is None:
        return None
    cache = getattr(cache, "self_attention_cache", cache)
    placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
    keys, _ = cache.update(placeholder, placeholder, layer_idx)
    return keys


def _cross_cache_placeholder(cache, layer_idx: int, key_value_states: torch.Tensor | None) -> None:
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
# module's class is swapped for a subclass with one of the mixins below, so
# parameter names (and so the checkpoint) stay those of the dense model.


def _kept_index(module: nn.Module, device) -> torch.Tensor:
    return torch.tensor(module.adaprune_kept_heads, dtype=torch.long, device=device)


class SharedBiasMixin:
    """Common part of the shared-bias wrappers."""

    adaprune_kind = None
    # the stock forward bypasses the output projection module, so mask gates need this forward from the start
    gates_need_wrapper = False

    @property
    def is_empty_attention(self) -> bool:
        return len(self.adaprune_kept_heads) == 0


class T5SharedBias(SharedBiasMixin):
    """T5 / mT5 attention keeping a subset of heads; the position bias in and out has all heads.

    Returns ``(output, full position bias, weights)`` like ``T5Attention``. With no
    head left, the block still computes (first block) or passes on the bias, and
    a decoder self-attention still advances the KV cache.
    """

    adaprune_kind = "t5"

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        if cache is None and "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if not self.adaprune_kept_heads:
            return self._adaprune_empty_forward(hidden_states, key_value_states, position_bias, cache)
        full = position_bias
        if full is not None:
            position_bias = full.index_select(1, _kept_index(self, full.device))
        self.__dict__["_adaprune_computed"] = None
        try:
            out = super().forward(hidden_states, mask=mask, key_value_states=key_value_states,
                                  position_bias=position_bias, cache=cache, **kwargs)
            if full is None:
                full = self.__dict__["_adaprune_computed"]
        finally:
            self.__dict__["_adaprune_computed"] = None
        if full is None:  # no relative bias here: the block made an all-zero one for its own heads
            shape = list(out[1].shape)
            shape[1] = self.adaprune_num_heads
            full = out[1].new_zeros(shape)
        return (out[0], full) + tuple(out[2:])

    def compute_bias(self, *args, **kwargs):
        full = super().compute_bias(*args, **kwargs)
        self.__dict__["_adaprune_computed"] = full
        return full.index_select(1, _kept_index(self, full.device))

    def _adaprune_empty_forward(self, hidden_states, key_value_states, position_bias, cache):
        batch, query_length = hidden_states.shape[:2]
        past = 0
        if key_value_states is None:
            if cache is not None:
                past = cache.get_seq_length(self.layer_idx)
            keys = _cache_placeholder(cache, self.layer_idx, hidden_states)
            key_length = query_length if keys is None else keys.shape[-2]
        else:
            key_length = key_value_states.shape[1]
            _cross_cache_placeholder(cache, self.layer_idx, key_value_states)
        if position_bias is None:
            if self.has_relative_attention_bias:
                position_bias = super().compute_bias(query_length, key_length, device=hidden_states.device,
                                                     past_seen_tokens=past)
            else:
                position_bias = hidden_states.new_zeros(1, self.adaprune_num_heads, query_length, key_length)
        out = self.o(hidden_states.new_zeros(batch, query_length, 0))
        return out, position_bias, None


class WavLMSharedBias(SharedBiasMixin):
    """WavLM attention keeping a subset of heads.

    The stock forward runs ``F.multi_head_attention_forward``, which needs all
    heads and calls the projections functionally (so hooks on ``out_proj`` never
    fire). This forward computes the same thing head by head: each kept head takes
    its slice of the shared position bias (``(batch * heads, T, T)``, all original
    heads), its gate reads its original slice of the input, as in the dense model.
    """

    adaprune_kind = "wavlm"
    gates_need_wrapper = True

    def forward(self, hidden_states, attention_mask=None, position_bias=None, index=0, **kwargs):
        batch, length, _ = hidden_states.shape
        heads = self.adaprune_num_heads
        kept = _kept_index(self, hidden_states.device)
        n = kept.numel()
        if position_bias is None:
            position_bias = self.compute_bias(length, length)
            position_bias = position_bias.unsqueeze(0).repeat(batch, 1, 1, 1).view(batch * heads, length, length)
        own_bias = position_bias.view(batch, heads, length, length).index_select(1, kept)

        gate_input = hidden_states.view(batch, length, heads, -1).index_select(2, kept).permute(0, 2, 1, 3)
        projected = self.gru_rel_pos_linear(gate_input)
        projected = projected.view(projected.shape[:-1] + (2, 4)).sum(-1)
        gate_a, gate_b = torch.sigmoid(projected).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0  # (batch, n, T, 1)
        scores_bias = gate * own_bias

        def split(x):
            return x.view(batch, length, n, self.head_dim).transpose(1, 2)

        query = split(self.q_proj(hidden_states)) * self.scaling
        key = split(self.k_proj(hidden_states))
        value = split(self.v_proj(hidden_states))
        scores = torch.matmul(query, key.transpose(-1, -2)) + scores_bias
        if attention_mask is not None:
            padding = attention_mask.ne(1)[:, None, None, :]
            scores = scores.masked_fill(padding, float("-inf"))
        weights = nn.functional.softmax(scores, dim=-1)
        weights = nn.functional.dropout(weights, p=self.dropout, training=self.training)
        out = torch.matmul(weights, value).transpose(1, 2).reshape(batch, length, n * self.head_dim)
        return self.out_proj(out), weights, position_bias


SHARED_BIAS_WRAPPERS = {cls.adaprune_kind: cls for cls in (T5SharedBias, WavLMSharedBias)}


@functools.cache
def _shared_bias_class(mixin: type, base: type) -> type:
    cls = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {"__module__": __name__})
    module = sys.modules.get(__name__)
    if module is not None:
        setattr(module, cls.__name__, cls)  # picklable by reference
    return cls


def install_shared_bias(module: nn.Module, kind: str, kept_heads, num_heads: int) -> nn.Module:
    """Make ``module`` (an attention block of family ``kind``) use ``kept_heads`` of ``num_heads`` original heads."""
    mixin = SHARED_BIAS_WRAPPERS[kind]
    if not isinstance(module, mixin):
        module.__class__ = _shared_bias_class(mixin, type(module))
    module.adaprune_kept_heads = [int(h) for h in kept_heads]
    module.adaprune_num_heads = int(num_heads)
    return module


def _parent_and_name(root: nn.Module, path: str):
    parent_path, _, name = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), name


def _linear_like(old: nn.Module | None, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    ref = getattr(old, "weight", None)
    kwargs = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    return nn.Linear(in_features, out_features, bias=bias, **kwargs)


def apply_pruned_layout(base_model: nn.Module, layout: dict) -> None:
    """Reshape ``base_model`` in place to the pruned layout (weights are left uninitialised)."""
    if layout.get("version", LAYOUT_VERSION) > LAYOUT_VERSION:
        raise ValueError(f"pruned layout version {layout['version']} is newer than this loader ({LAYOUT_VERSION})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a zero-width linear warns that its init is a no-op
        _swap_modules(base_model, layout.get("modules", {}))
    for path, shape in layout.get("parameters", {}).items():
        parent, name = _parent_and_name(base_model, path)
        old = getattr(parent, name)
        setattr(parent, name, nn.Parameter(torch.empty(shape, device=old.device, dtype=old.dtype),
                                           requires_grad=old.requires_grad))
    for path, value in layout.get("attributes", {}).items():
        parent_path, _, attr = path.rpartition(".")
        setattr(base_model.get_submodule(parent_path), attr, value)
    for path, spec in layout.get("shared_bias", {}).items():
        install_shared_bias(base_model.get_submodule(path), spec["kind"], spec["kept_heads"], spec["num_heads"])


def _swap_modules(base_model: nn.Module, modules: dict) -> None:
    for path, spec in modules.items():
        parent, name = _parent_and_name(base_model, path)
        old = getattr(parent, name, None)
        kind = spec["type"]
        if kind == "Linear":
            new = _linear_like(old, spec["in_features"], spec["out_features"], spec["bias"])
        elif kind == "Embedding":
            new = nn.Embedding(spec["num_embeddings"], spec["embedding_dim"])
            if old is not None:
                new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        elif kind == "EmptyAttention":
            output = None
            if spec.get("output_name") is not None:
                out = spec["output"]
                output = _linear_like(
                    getattr(old, spec["output_name"], None), 0, out["out_features"], out["bias"]
                )
            new = EmptyAttention(spec.get("output_name"), output, spec.get("extra_outputs", 0), spec.get("cache_layer"),
                                 spec.get("cross_attention", False))
        else:
            raise ValueError(f"unknown module type {kind!r} in pruned layout at {path!r}")
        setattr(parent, name, new)


class PrunedModelMixin:
    """Mixed into a transformers model class: builds the pruned shapes, refuses partial loads."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        record = getattr(config, "adaprune", None)
        if record:
            apply_pruned_layout(self.base_model, record["layout"])

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        layers = _pruned_layers(model.config)
        prefix = model.base_model_prefix + "."
        missing = [
            key for key in info.get("missing_keys", [])
            if any((key[len(prefix):] if key.startswith(prefix) else key).startswith(layer) for layer in layers)
        ]
        mismatched = info.get("mismatched_keys", [])
        if missing or mismatched:
            raise ValueError(
                "The weights do not match the pruned structure recorded in config.json "
                f"(missing: {sorted(missing)[:8]}, shape mismatches: {list(mismatched)[:8]}). "
                "The folder is inconsistent; refusing to re-initialise those layers."
            )
        return (model, info) if wants_info else model


def _pruned_layers(config) -> set[str]:
    """Module prefixes of the layers holding pruned groups (``encoder.layer.3.``)."""
    groups = (getattr(config, "adaprune", None) or {}).get("groups", {})
    return {name.rpartition(".")[0] + "." for name in groups}
