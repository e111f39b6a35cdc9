"""T5 and mT5, including the gated FFN (``wi_0``/``wi_1``) of T5 v1.1 / mT5.

The first block of each stack computes the relative position bias and hands it
to the later blocks; the decoder's first cross-attention likewise hands on an
all-zero bias. Every T5 attention group is therefore a ``shared_bias="t5"``
group: pruned, its module keeps the full-size bias embedding and slices the bias
for its own heads (see ``modeling_adaprune.T5SharedBias``), also when no head is
left. ``relative_attention_bias`` serves every block of its stack, so it belongs
to no single group's heads (not a ``per_head_params`` entry, never sliced, not
in Taylor scores). Groups are named after the block (``encoder.block.0.self_attn``,
``decoder.block.0.cross_attn``, ``decoder.block.0.ffn``).
"""

from __future__ import annotations

from .base import HeadGroup, NeuronGroup
from .registry import register_family, skip_empty


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
        shared_bias="t5",
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
    return skip_empty(base_model, groups)


register_family(("t5", "mt5"), t5_groups)
