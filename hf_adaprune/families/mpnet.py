"""MPNet (all-mpnet-base-v2 and its sentence-embedding kin): BERT-like layers whose attention adds a relative
position bias the encoder computes once (``encoder.relative_attention_bias``, one column per head) and hands to
every layer. A pruned attention keeps that bias at full size and takes its kept heads' slices
(:class:`MPNetSharedBias`), also with no head left; the bias table belongs to no layer, so whole layers go freely.

:class:`MPNetSharedBias` is also copied into the ``modeling_adaprune.py`` of every saved MPNet model, so it uses
only torch and the names of ``hf_adaprune.layout``.
"""

from __future__ import annotations

from ..layout import SharedBiasMixin, empty_attention_weights, kept_heads_index, register_shared_bias
from .base import HeadGroup, NeuronGroup, layer_stacks
from .registry import register_family


@register_shared_bias
class MPNetSharedBias(SharedBiasMixin):
    """MPNet self-attention keeping a subset of heads; the position bias it is given has all original heads."""

    adaprune_kind = "mpnet"

    def forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
        if position_bias is not None:
            position_bias = position_bias.index_select(1, kept_heads_index(self, position_bias.device))
        if not self.adaprune_kept_heads:  # the output projection's bias alone; one weights entry per layer
            out = self.o(hidden_states.new_zeros(*hidden_states.shape[:-1], 0))
            return (out, empty_attention_weights(self, hidden_states, hidden_states.shape[1])) \
                if output_attentions else (out,)
        return super().forward(hidden_states, attention_mask, position_bias, output_attentions=output_attentions,
                               **kwargs)


def mpnet_groups(base_model, config):
    head_dim = config.hidden_size // config.num_attention_heads
    groups = []
    for i, _ in enumerate(base_model.encoder.layer):
        layer = f"encoder.layer.{i}"
        attn = f"{layer}.attention.attn"
        groups.append(HeadGroup(
            name=f"{layer}.attention", query=f"{attn}.q", key=f"{attn}.k", value=f"{attn}.v", output=f"{attn}.o",
            head_dim=head_dim, core=attn, output_in_core=True, head_count_attrs=(f"{attn}.num_attention_heads",),
            width_attrs=(f"{attn}.all_head_size",), shared_bias=MPNetSharedBias))
        groups.append(NeuronGroup(name=f"{layer}.ffn", inputs=(f"{layer}.intermediate.dense",),
                                  output=f"{layer}.output.dense"))
    return groups


register_family(("mpnet",), mpnet_groups, attention_forward=MPNetSharedBias,
                layer_stacks=lambda base, config: layer_stacks(base, [("encoder.layer", "num_hidden_layers",
                                                                       "encoder")]))
