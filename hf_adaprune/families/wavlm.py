"""WavLM: a wav2vec2-style encoder whose attention adds a gated relative position bias.

The first layer computes the bias (``rel_attn_embed``, one column per head) and
hands it to the later layers; each layer gates it per head with
``gru_rel_pos_const`` (one entry per head, owned by that head) and a gate read
from the head's slice of the layer input. The stock forward runs
``F.multi_head_attention_forward`` (all heads, projections used functionally),
so the attention gets ``modeling_adaprune.WavLMSharedBias``'s forward as soon as
masks are attached; it takes each kept head's slice of the full-size shared bias.
"""

from __future__ import annotations

from .base import NeuronGroup, proj_attention
from .registry import register_family, skip_empty


def wavlm_groups(base_model, config):
    groups = []
    for i, _ in enumerate(base_model.encoder.layers):
        layer = f"encoder.layers.{i}"
        attn = f"{layer}.attention"
        groups.append(proj_attention(
            attn, base_model.get_submodule(attn).head_dim,
            per_head_params=((f"{attn}.gru_rel_pos_const", 1),), shared_bias="wavlm",
        ))
        ff = f"{layer}.feed_forward"
        groups.append(NeuronGroup(name=f"{layer}.ffn", inputs=(f"{ff}.intermediate_dense",),
                                  output=f"{ff}.output_dense"))
    return skip_empty(base_model, groups)


register_family(("wavlm",), wavlm_groups)
