"""BERT and its encoder look-alikes: RoBERTa, XLM-RoBERTa, ELECTRA, CamemBERT."""

from __future__ import annotations

from .base import HeadGroup, NeuronGroup, layer_stacks
from .registry import register_family


def bert_groups(base_model, config):
    head_dim = config.hidden_size // config.num_attention_heads
    groups = []
    for i, _ in enumerate(base_model.encoder.layer):
        layer = f"encoder.layer.{i}"
        attn = f"{layer}.attention"
        groups.append(
            HeadGroup(
                name=attn,
                query=f"{attn}.self.query",
                key=f"{attn}.self.key",
                value=f"{attn}.self.value",
                output=f"{attn}.output.dense",
                head_dim=head_dim,
                core=f"{attn}.self",
                head_count_attrs=(f"{attn}.self.num_attention_heads",),
                width_attrs=(f"{attn}.self.all_head_size",),
            )
        )
        groups.append(
            NeuronGroup(name=f"{layer}.ffn", inputs=(f"{layer}.intermediate.dense",), output=f"{layer}.output.dense")
        )
    return groups


register_family(("bert", "roberta", "xlm-roberta", "electra", "camembert"), bert_groups,
                layer_stacks=lambda base, config: layer_stacks(base, [("encoder.layer", "num_hidden_layers", "encoder")]))
