"""T5 and mT5, including the gated FFN (``wi_0``/``wi_1``) of T5 v1.1 / mT5.

The first block of each stack computes the relative position bias and hands it
to the later blocks; the decoder's first cross-attention likewise hands on an
all-zero bias. Every T5 attention group therefore uses :class:`T5SharedBias`:
pruned, its module keeps the full-size bias embedding and slices the bias for
its own heads, also when no head is left. ``relative_attention_bias`` serves
every block of its stack, so it belongs to no single group's heads (not a
``per_head_params`` entry, never sliced, not in Taylor scores). Groups are named
after the block (``encoder.block.0.self_attn``, ``decoder.block.0.cross_attn``,
``decoder.block.0.ffn``).

:class:`T5SharedBias` is also copied into the ``modeling_adaprune.py`` of every
saved T5 model, so it uses only torch and the names of ``hf_adaprune.layout``.
"""

from __future__ import annotations

import dataclasses

import torch

from ..layout import (
    SharedBiasMixin,
    cache_placeholder,
    cross_cache_placeholder,
    empty_attention_weights,
    kept_heads_index,
    register_shared_bias,
)
from .base import HeadGroup, NeuronGroup, layer_stacks
from .registry import register_family


@register_shared_bias
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
            position_bias = full.index_select(1, kept_heads_index(self, full.device))
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
        return full.index_select(1, kept_heads_index(self, full.device))

    def _adaprune_empty_forward(self, hidden_states, key_value_states, position_bias, cache):
        batch, query_length = hidden_states.shape[:2]
        past = 0
        if key_value_states is None:
            if cache is not None:
                past = cache.get_seq_length(self.layer_idx)
                # a static cache's count is a tensor the placeholder's update below advances in place (T5Attention
                # clones it too): the bias must see the positions before this step
                past = past.clone() if isinstance(past, torch.Tensor) else past
            keys = cache_placeholder(cache, self.layer_idx, hidden_states)
            key_length = query_length if keys is None else keys.shape[-2]
        else:
            key_length = key_value_states.shape[1]
            cross_cache_placeholder(cache, self.layer_idx, key_value_states)
        if position_bias is None:
            if self.has_relative_attention_bias:
                position_bias = super().compute_bias(query_length, key_length, device=hidden_states.device,
                                                     past_seen_tokens=past)
            else:
                position_bias = hidden_states.new_zeros(1, self.adaprune_num_heads, query_length, key_length)
        out = self.o(hidden_states.new_zeros(batch, query_length, 0))
        # zero-head weights keep output_attentions' tuples one entry per block (T5 records its layer's last output)
        return out, position_bias, empty_attention_weights(self, hidden_states, key_length)


def _attention(base_model, name: str, path: str, role: str) -> HeadGroup:
    return HeadGroup(
        name=name,
        query=f"{path}.q",
        key=f"{path}.k",
        value=f"{path}.v",
        output=f"{path}.o",
        head_dim=base_model.get_submodule(path).key_value_proj_dim,
        core=path,
        output_in_core=True,
        head_count_attrs=(f"{path}.n_heads",),
        width_attrs=(f"{path}.inner_dim",),
        role=role,
        shared_bias=T5SharedBias,
    )


def t5_groups(base_model, config):
    groups = []
    for stack, self_role, ffn_role in (("encoder", "encoder_self", "encoder"), ("decoder", "decoder_self", "decoder")):
        module = getattr(base_model, stack, None)
        if module is None:
            continue
        for i, block in enumerate(module.block):
            layer = f"{stack}.block.{i}"
            groups.append(_attention(base_model, f"{layer}.self_attn", f"{layer}.layer.0.SelfAttention", self_role))
            if block.is_decoder:
                cross = f"{layer}.layer.1.EncDecAttention"
                groups.append(_attention(base_model, f"{layer}.cross_attn", cross, "cross"))
            ff = f"{layer}.layer.{len(block.layer) - 1}.DenseReluDense"
            dense = base_model.get_submodule(ff)
            inputs = (f"{ff}.wi_0", f"{ff}.wi_1") if hasattr(dense, "wi_0") else (f"{ff}.wi",)
            groups.append(NeuronGroup(name=f"{layer}.ffn", inputs=inputs, output=f"{ff}.wo", role=ffn_role))
    return groups


_FIRST_BLOCK_BIAS = ("layer.0.SelfAttention.relative_attention_bias", "layer.0.SelfAttention.has_relative_attention_bias")


def t5_stacks(base_model, config):
    # the first block of each stack owns the relative position bias the later blocks read
    stacks = layer_stacks(base_model, [("encoder.block", "num_layers", "encoder", _FIRST_BLOCK_BIAS),
                                       ("decoder.block", "num_decoder_layers", "decoder", _FIRST_BLOCK_BIAS)])
    if len(stacks) == 2:
        # transformers sizes the KV cache by num_hidden_layers, which T5 maps to the encoder's num_layers
        stacks[0] = dataclasses.replace(stacks[0], refuse=(
            "T5's encoder layers cannot be removed while the model has a decoder: transformers sizes T5's KV "
            "cache by the encoder's layer count (num_layers), so generate() with the cache fails once the decoder "
            "has more layers. Remove decoder layers only: --pruning_roles encoder_self,decoder_self,cross,decoder "
            "keeps every kind but the encoder's FFN neurons and layers, --pruning_roles decoder the decoder's alone "
            "(a T5EncoderModel's layers can go)."))
    return stacks


register_family(("t5", "mt5"), t5_groups, attention_forward=T5SharedBias, layer_stacks=t5_stacks)
