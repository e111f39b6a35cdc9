"""ModernBERT: one fused ``Wqkv`` projection (q, k and v blocks, one slice per head in each) and a gated FFN whose
``Wi`` stacks the input and gate halves (one row per neuron in each). Its attention reshapes with
``view(..., 3, -1, head_dim)``, so the head count follows the kept rows.

Whole layers stay: a stock model built from a config with fewer layers gives its first layer no attention
LayerNorm and assigns sliding and global attention by layer index, so a model without a removed layer would not
rebuild from its config (refused before training).
"""

from __future__ import annotations

from .base import HeadGroup, LayerGroup, NeuronGroup
from .registry import register_family


def modernbert_groups(base_model, config):
    head_dim = config.hidden_size // config.num_attention_heads
    groups = []
    for i in range(len(base_model.layers)):
        attn = f"layers.{i}.attn"
        groups.append(HeadGroup(name=attn, query=f"{attn}.Wqkv", key=f"{attn}.Wqkv", value=f"{attn}.Wqkv",
                                output=f"{attn}.Wo", head_dim=head_dim, core=attn, output_in_core=True,
                                row_parts=3))
        groups.append(NeuronGroup(name=f"layers.{i}.ffn", inputs=(f"layers.{i}.mlp.Wi",),
                                  output=f"layers.{i}.mlp.Wo", row_parts=2))
    return groups


def modernbert_layers(base_model, config):
    return [LayerGroup(name="layers", count_attr="num_hidden_layers", role="encoder", refuse=(
        "ModernBERT's layers cannot be removed: transformers builds its first layer without an attention LayerNorm "
        "and chooses sliding or global attention by layer index, so the model would not rebuild from its config; "
        "prune heads and FFN neurons (--prune heads,ffn)"))]


register_family(("modernbert",), modernbert_groups, layer_stacks=modernbert_layers)
