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

``generation_config.alignment_heads`` (the cross-attention heads Whisper's
``return_token_timestamps`` reads) names ``(layer, head)`` positions, which
compaction moves: :func:`renumber_alignment_heads` keeps them on the same heads.
"""

from __future__ import annotations

import dataclasses
import warnings

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
    stacks = layer_stacks(base_model, [("encoder.layers", "encoder_layers", "encoder"),
                                       ("decoder.layers", "decoder_layers", "decoder")])
    if getattr(config, "use_weighted_layer_sum", False) and getattr(base_model, "layer_weights", None) is not None:
        # WhisperForAudioClassification (its base model is itself) weighs every encoder hidden state, the last one
        # layer-normed: the other removed layers' weights fold into the states they copy (surgery), not that one
        stacks = [dataclasses.replace(stack, keep_last=(
            "the last encoder layer of a Whisper classifier with use_weighted_layer_sum cannot be removed: the "
            "classifier weighs every encoder hidden state and the last one is layer-normed, so the smaller model "
            "would have no weight for the unnormed output of the layer before it, which the masked model weighs. "
            "Keep that layer (selection does) or remove others")) if stack.role == "encoder" else stack
            for stack in stacks]
    return stacks


register_family(("whisper",), whisper_groups, layer_stacks=whisper_stacks)


def renumber_alignment_heads(model, kept_heads: dict[str, list[int]], kept_layers: list[int] | None) -> None:
    """Move ``model.generation_config.alignment_heads`` onto the heads one compaction keeps.

    ``kept_heads``: per group name (current layer numbering) the current head indices it keeps (a group absent
    keeps every head); ``kept_layers``: the current indices of the decoder layers kept (None: all). A pair whose
    layer or head is removed is dropped; with none left the attribute goes, so ``return_token_timestamps`` says
    that the model has no alignment heads instead of reading a head that is gone.
    """
    config = getattr(model, "generation_config", None)
    pairs = getattr(config, "alignment_heads", None)
    if not pairs:
        return
    renumbered = []
    for layer, head in pairs:
        kept = kept_heads.get(f"decoder.layers.{layer}.encoder_attn")
        if (kept_layers is not None and layer not in kept_layers) or (kept is not None and head not in kept):
            continue
        renumbered.append([kept_layers.index(layer) if kept_layers is not None else int(layer),
                           kept.index(head) if kept is not None else int(head)])
    if renumbered:
        config.alignment_heads = renumbered
        return
    del config.alignment_heads
    warnings.warn(f"pruning removed every alignment head of generation_config.alignment_heads ({pairs}): "
                  "word timestamps (generate(return_token_timestamps=True)) are unavailable for this model; set "
                  "generation_config.alignment_heads to kept cross-attention heads to use them", stacklevel=4)

