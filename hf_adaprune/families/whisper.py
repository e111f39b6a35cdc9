"""Whisper: encoder self-attention, decoder self-attention and cross-attention heads, FFN neurons.

Every attention is a ``WhisperAttention`` whose q/k/v/out projections live in
the block itself. Its forward reshapes keys and values with the stored
``num_heads`` (``view(batch, -1, self.num_heads, self.head_dim)``), so that
attribute must follow pruning per layer; ``head_dim`` and ``scaling`` are per
head and ``embed_dim`` is the model width the block reads and writes, so they
stay. ``k_proj`` has no bias, which the slicing handles.

Works on every Whisper head class: ``WhisperModel`` /
``WhisperForConditionalGeneration`` (encoder and decoder),
``WhisperForAudioClassification`` (encoder only; its base model is the model
itself) and ``WhisperForCausalLM`` (decoder only, under ``decoder``).

Group names: ``encoder.layers.<i>.self_attn``, ``encoder.layers.<i>.ffn``,
``decoder.layers.<i>.self_attn``, ``decoder.layers.<i>.encoder_attn`` and
``decoder.layers.<i>.ffn``.
"""

from __future__ import annotations

from .base import NeuronGroup, layer_stacks, proj_attention
from .registry import register_family


def _ffn(layer: str, role: str) -> NeuronGroup:
    return NeuronGroup(name=f"{layer}.ffn", inputs=(f"{layer}.fc1",), output=f"{layer}.fc2", role=role)


def whisper_groups(base_model, config):
    groups = []
    encoder = getattr(base_model, "encoder", None)
    if encoder is not None:
        head_dim = config.d_model // config.encoder_attention_heads
        for i, _ in enumerate(encoder.layers):
            layer = f"encoder.layers.{i}"
            groups.append(proj_attention(f"{layer}.self_attn", head_dim, "encoder_self"))
            groups.append(_ffn(layer, "encoder"))
    decoder = getattr(base_model, "decoder", None)
    if decoder is not None:
        head_dim = config.d_model // config.decoder_attention_heads
        for i, _ in enumerate(decoder.layers):
            layer = f"decoder.layers.{i}"
            groups.append(proj_attention(f"{layer}.self_attn", head_dim, "decoder_self"))
            groups.append(proj_attention(f"{layer}.encoder_attn", head_dim, "cross"))
            groups.append(_ffn(layer, "decoder"))
    return groups


def whisper_stacks(base_model, config):
    return layer_stacks(base_model, [("encoder.layers", "encoder_layers", "encoder"),
                                     ("decoder.layers", "decoder_layers", "decoder")])


register_family(("whisper",), whisper_groups, layer_stacks=whisper_stacks)
