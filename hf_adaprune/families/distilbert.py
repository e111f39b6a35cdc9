"""DistilBERT: q/k/v/out projections live in one attention module."""

from __future__ import annotations

from .base import HeadGroup, NeuronGroup, layer_stacks
from .registry import register_family


def distilbert_groups(base_model, config):
    head_dim = config.dim // config.n_heads
    groups = []
    for i, _ in enumerate(base_model.transformer.layer):
        layer = f"transformer.layer.{i}"
        attn = f"{layer}.attention"
        groups.append(
            HeadGroup(
                name=attn,
                query=f"{attn}.q_lin",
                key=f"{attn}.k_lin",
                value=f"{attn}.v_lin",
                output=f"{attn}.out_lin",
                head_dim=head_dim,
                core=attn,
                output_in_core=True,
                head_count_attrs=(f"{attn}.n_heads",),
            )
        )
        groups.append(NeuronGroup(name=f"{layer}.ffn", inputs=(f"{layer}.ffn.lin1",), output=f"{layer}.ffn.lin2"))
    return groups


register_family(("distilbert",), distilbert_groups,
                layer_stacks=lambda base, config: layer_stacks(base, [("transformer.layer", "n_layers", "encoder")]))
