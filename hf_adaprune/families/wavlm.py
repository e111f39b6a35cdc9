"""WavLM: a wav2vec2-style encoder whose attention adds a gated relative position bias.

The first layer computes the bias (``rel_attn_embed``, one column per head) and
hands it to the later layers; each layer gates it per head with
``gru_rel_pos_const`` (one entry per head, owned by that head) and a gate read
from the head's slice of the layer input. The stock forward runs
``F.multi_head_attention_forward`` (all heads, projections used functionally),
so the attention gets :class:`WavLMSharedBias`'s forward as soon as masks are
attached; it takes each kept head's slice of the full-size shared bias.

:class:`WavLMSharedBias` is also copied into the ``modeling_adaprune.py`` of
every saved WavLM model, so it uses only torch and the names of
``hf_adaprune.layout``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layout import SharedBiasMixin, kept_heads_index, register_shared_bias
from .base import NeuronGroup, layer_stacks, proj_attention
from .registry import register_family


@register_shared_bias
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
        kept = kept_heads_index(self, hidden_states.device)
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


def wavlm_groups(base_model, config):
    groups = []
    for i, _ in enumerate(base_model.encoder.layers):
        layer = f"encoder.layers.{i}"
        attn = f"{layer}.attention"
        groups.append(proj_attention(
            attn, base_model.get_submodule(attn).head_dim,
            per_head_params=((f"{attn}.gru_rel_pos_const", 1),), shared_bias=WavLMSharedBias,
        ))
        ff = f"{layer}.feed_forward"
        groups.append(NeuronGroup(name=f"{layer}.ffn", inputs=(f"{ff}.intermediate_dense",),
                                  output=f"{ff}.output_dense"))
    return groups


def wavlm_stacks(base_model, config):
    # the first layer's attention owns the relative position bias every layer reads
    return layer_stacks(base_model, [("encoder.layers", "num_hidden_layers", "encoder",
                                      ("attention.rel_attn_embed", "attention.has_relative_position_bias"))])


register_family(("wavlm",), wavlm_groups, attention_forward=WavLMSharedBias, layer_stacks=wavlm_stacks)
