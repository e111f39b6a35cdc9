"""BART and its seq2seq look-alikes: Marian, mBART, M2M100.

All four lay out their layers the same way (``encoder.layers.N`` /
``decoder.layers.N`` with ``self_attn``, ``encoder_attn``, ``fc1``/``fc2``).
Their attention reshapes with ``view(..., -1, head_dim)``, so ``num_heads`` is
informational; it is kept in step anyway. The same adapter serves the decoder
alone (``...ForCausalLM``, whose base model has only ``decoder``).
"""

from __future__ import annotations

from .base import NeuronGroup, layer_stacks, proj_attention
from .registry import register_family


def _attention(base_model, config, path: str, role: str):
    heads = config.encoder_attention_heads if role == "encoder_self" else config.decoder_attention_heads
    # an attention emptied by compaction (layout.EmptyAttention) has no head_dim; the config keeps the dense one
    head_dim = getattr(base_model.get_submodule(path), "head_dim", None) or config.d_model // heads
    return proj_attention(path, head_dim, role)


def bart_groups(base_model, config):
    groups = []
    for stack, self_role, ffn_role in (("encoder", "encoder_self", "encoder"), ("decoder", "decoder_self", "decoder")):
        module = getattr(base_model, stack, None)
        if module is None:
            continue
        for i, layer_module in enumerate(module.layers):
            layer = f"{stack}.layers.{i}"
            groups.append(_attention(base_model, config, f"{layer}.self_attn", self_role))
            if hasattr(layer_module, "encoder_attn"):
                groups.append(_attention(base_model, config, f"{layer}.encoder_attn", "cross"))
            groups.append(NeuronGroup(name=f"{layer}.ffn", inputs=(f"{layer}.fc1",), output=f"{layer}.fc2",
                                      role=ffn_role))
    return groups


def bart_stacks(base_model, config):
    return layer_stacks(base_model, [("encoder.layers", "encoder_layers", "encoder"),
                                     ("decoder.layers", "decoder_layers", "decoder")])


register_family(("bart", "marian", "mbart", "m2m_100"), bart_groups, layer_stacks=bart_stacks)
