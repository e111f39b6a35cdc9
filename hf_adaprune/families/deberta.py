"""DeBERTa-v2 and DeBERTa-v3 (``model_type`` ``deberta-v2``): disentangled attention.

Each head reads the layer's own query / key projections of the relative position embeddings (or, without
``share_att_key``, its separate ``pos_key_proj`` / ``pos_query_proj``, sliced with the head), so heads come and go
like BERT's; the position table itself is shared and has the hidden size, which pruning keeps.
"""

from __future__ import annotations

from .base import HeadGroup, LayerGroup, NeuronGroup
from .registry import register_family


def _position_projections(attention, path: str) -> tuple[str, ...]:
    """The separate position projections a layer without ``share_att_key`` has (one per c2p / p2c term)."""
    return tuple(f"{path}.{name}" for name in ("pos_key_proj", "pos_query_proj") if hasattr(attention, name))


def deberta_v2_groups(base_model, config):
    head_dim = getattr(config, "attention_head_size", None) or config.hidden_size // config.num_attention_heads
    groups = []
    for i, layer_module in enumerate(base_model.encoder.layer):
        layer = f"encoder.layer.{i}"
        attn = f"{layer}.attention"
        groups.append(
            HeadGroup(
                name=attn,
                query=f"{attn}.self.query_proj",
                key=f"{attn}.self.key_proj",
                value=f"{attn}.self.value_proj",
                output=f"{attn}.output.dense",
                head_dim=head_dim,
                core=f"{attn}.self",
                head_count_attrs=(f"{attn}.self.num_attention_heads",),
                width_attrs=(f"{attn}.self.all_head_size",),
                more_rows=_position_projections(layer_module.attention.self, f"{attn}.self"),
                output_attentions_arg=1,  # self.self(hidden_states, attention_mask, output_attentions, ...)
            )
        )
        groups.append(NeuronGroup(name=f"{layer}.ffn", inputs=(f"{layer}.intermediate.dense",),
                                  output=f"{layer}.output.dense"))
    return groups


def deberta_v2_layers(base_model, config):
    refuse = ""
    if getattr(base_model.encoder, "conv", None) is not None:
        # the encoder convolves the embeddings with the first layer's output, wherever that layer went: a removed
        # first layer would move the convolution onto the next one, which the masked model never ran
        refuse = ("this DeBERTa-v2 encoder convolves the first layer's output (conv_kernel_size > 0), so removing "
                  "whole layers would change what the convolution reads; prune heads and FFN neurons instead")
    return [LayerGroup(name="encoder.layer", count_attr="num_hidden_layers", role="encoder", refuse=refuse)]


register_family(("deberta-v2",), deberta_v2_groups, layer_stacks=deberta_v2_layers)
