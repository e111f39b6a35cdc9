"""Wav2Vec2, HuBERT and Data2Vec-Audio: encoder self-attention heads and feed-forward neurons.

The three families share one layout (``encoder.layers.<i>.attention`` with
``q_proj``/``k_proj``/``v_proj``/``out_proj`` and ``encoder.layers.<i>.feed_forward``
with ``intermediate_dense``/``output_dense``), with and without
``do_stable_layer_norm``; the layer classes differ only in where the layer norms
sit, which pruning does not touch. The convolutional feature encoder, the
positional convolution and the optional adapters are left whole.

The attention forward reshapes with ``-1`` heads and reads only ``head_dim``
(and ``scaling``), which stay the same; ``num_heads`` is updated anyway so that
the module describes itself truthfully. ``embed_dim`` is the hidden size the
block reads and writes, not its inner width, so it is left alone.
"""

from __future__ import annotations

from .base import NeuronGroup, layer_stacks, proj_attention
from .registry import register_family


def wav2vec2_groups(base_model, config):
    head_dim = config.hidden_size // config.num_attention_heads
    groups = []
    for i, _ in enumerate(base_model.encoder.layers):
        layer = f"encoder.layers.{i}"
        groups.append(proj_attention(f"{layer}.attention", head_dim))
        ffn = f"{layer}.feed_forward"
        groups.append(
            NeuronGroup(name=f"{layer}.ffn", inputs=(f"{ffn}.intermediate_dense",), output=f"{ffn}.output_dense")
        )
    return groups


register_family(("wav2vec2", "hubert", "data2vec-audio"), wav2vec2_groups,
                layer_stacks=lambda base, config: layer_stacks(base, [("encoder.layers", "num_hidden_layers", "encoder")]))
