"""ONNX seq2seq decoders with past key values, as optimum lays them out, and greedy decoding that uses them.

``decoder_model.onnx`` runs the first step: ``decoder_input_ids``, ``encoder_hidden_states`` (and
``encoder_attention_mask`` for text) in; ``logits`` and, per decoder layer ``i``,
``present.{i}.decoder.key/value`` (self-attention) and ``present.{i}.encoder.key/value`` (cross-attention) out.
``decoder_with_past_model.onnx`` runs every later step on one new token: ``decoder_input_ids`` of length 1,
(``encoder_attention_mask``) and ``past_key_values.{i}.decoder.key/value`` /
``past_key_values.{i}.encoder.key/value`` in; ``logits`` and ``present.{i}.decoder.key/value`` (the self-attention
cache grown by one token) out; the cross-attention cache of the first step is fed back unchanged.

A pruned decoder's caches differ per layer: each is ``[batch, heads kept in that layer, sequence, head_dim]``.
Removed layers have no entries (the graphs number the layers the model has now). An attention with no head left
carries the placeholder the pruned model's own cache keeps for it, ``[batch, 1, sequence, 1]`` of zeros (the
decoder reads the number of cached tokens from layer 0's self-attention keys, and a zero-head tensor would
report no tokens), so every layer has its four entries and the past length is always readable. The with-past
graph has no input for what nothing reads: an emptied cross-attention's placeholder value (and its key, except
in layer 0, whose cross keys give the encoder output's length); feed only the inputs the session lists.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import EncoderDecoderCache

DECODER_FILE = "decoder_model.onnx"
DECODER_WITH_PAST_FILE = "decoder_with_past_model.onnx"
CACHE_PARTS = (("decoder", "key"), ("decoder", "value"), ("encoder", "key"), ("encoder", "value"))


def cache_names(prefix: str, layers: int, parts=CACHE_PARTS) -> list[str]:
    """``{prefix}.{i}.{decoder|encoder}.{key|value}`` for every layer, in the graphs' input/output order."""
    return [f"{prefix}.{i}.{part}.{kv}" for i in range(layers) for part, kv in parts]


def decoder_layer_count(model) -> int:
    """The layers the decoder has now (T5 sizes its cache by the encoder's count, which can be larger)."""
    decoder = model.get_decoder()
    for name in ("layers", "block"):
        stack = getattr(decoder, name, None)
        if isinstance(stack, nn.ModuleList):
            return len(stack)
    raise ValueError(f"{type(decoder).__name__} has no layer list (layers / block) to export a cache for")


def _flat_cache(cache: EncoderDecoderCache, layers: int, parts=CACHE_PARTS) -> list[torch.Tensor]:
    caches = {"decoder": cache.self_attention_cache, "encoder": cache.cross_attention_cache}
    return [getattr(caches[part].layers[i], kv + "s") for i in range(layers) for part, kv in parts]


def _cache_axes(names: list[str], past_axis: str) -> dict[str, dict[int, str]]:
    return {name: {0: "batch", 2: past_axis if ".decoder." in name else "encoder_sequence"} for name in names}


class DecoderFirstStep(nn.Module):
    """The first decoder step on the encoder's output: logits and the whole cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask=None):
        extra = {} if encoder_attention_mask is None else {"attention_mask": encoder_attention_mask}
        # an explicit all-ones decoder mask: without one, transformers probes position ids for packed
        # sequences with torch.diff, which has no ONNX export
        out = self.model(encoder_outputs=(encoder_hidden_states,), decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=torch.ones_like(decoder_input_ids), use_cache=True, **extra)
        return (out.logits, *_flat_cache(out.cache, decoder_layer_count(self.model)))


class DecoderWithPast(nn.Module):
    """One decoder step on one new token, reading the cache as flat tensors (four per layer)."""

    def __init__(self, model, with_mask: bool):
        super().__init__()
        self.model, self.with_mask = model, with_mask

    def forward(self, decoder_input_ids, *inputs):
        mask, past = (inputs[0], inputs[1:]) if self.with_mask else (None, inputs)
        cache = EncoderDecoderCache([tuple(past[i:i + 4]) for i in range(0, len(past), 4)])
        extra = {} if mask is None else {"attention_mask": mask}
        self_keys = past[0]
        decoder_mask = torch.ones(self_keys.shape[0], self_keys.shape[2] + decoder_input_ids.shape[1],
                                  dtype=torch.long, device=decoder_input_ids.device)
        # the cross-attention keys and values come from the cache; the decoder only reads the encoder output's
        # batch size and length (and that it is given at all), which a zero-width view of the first cross keys has
        cross_keys = past[2]
        encoder_hidden_states = cross_keys[:, 0, :, :0]
        out = self.model(encoder_outputs=(encoder_hidden_states,), decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=decoder_mask, cache=cache, use_cache=True, **extra)
        return (out.logits, *_flat_cache(out.cache, decoder_layer_count(self.model), CACHE_PARTS[:2]))


def export_decoders(model, save_directory, export, decoder_ids, hidden, mask) -> list:
    """Write ``decoder_model.onnx`` and ``decoder_with_past_model.onnx``; ``export`` is the ONNX export function,
    ``decoder_ids`` / ``hidden`` / ``mask`` (None for audio) example inputs of the first step."""
    with_mask = mask is not None
    first_args = (decoder_ids, hidden) + ((mask,) if with_mask else ())
    with torch.no_grad():
        past = DecoderFirstStep(model)(*first_args)[1:]
    layers = len(past) // len(CACHE_PARTS)  # the cache has one entry per decoder layer, whatever the stack's name
    first_inputs = ["decoder_input_ids", "encoder_hidden_states"] + (["encoder_attention_mask"] if with_mask else [])
    presents = cache_names("present", layers)
    axes = {"decoder_input_ids": {0: "batch", 1: "decoder_sequence"},
            "encoder_hidden_states": {0: "batch", 1: "encoder_sequence"},
            "logits": {0: "batch", 1: "decoder_sequence"}} | _cache_axes(presents, "decoder_sequence")
    if with_mask:
        axes["encoder_attention_mask"] = {0: "batch", 1: "encoder_sequence"}
    paths = [save_directory / DECODER_FILE, save_directory / DECODER_WITH_PAST_FILE]
    export(DecoderFirstStep(model), first_args, paths[0], first_inputs, ["logits"] + presents, axes)

    past_names = cache_names("past_key_values", layers)
    new_presents = cache_names("present", layers, CACHE_PARTS[:2])
    inputs = ["decoder_input_ids"] + (["encoder_attention_mask"] if with_mask else []) + past_names
    axes = {"decoder_input_ids": {0: "batch"}, "logits": {0: "batch"}} \
        | _cache_axes(past_names, "past_sequence") | _cache_axes(new_presents, "past_sequence + 1")
    if with_mask:
        axes["encoder_attention_mask"] = {0: "batch", 1: "encoder_sequence"}
    step_ids = decoder_ids[:, -1:]
    export(DecoderWithPast(model, with_mask), (step_ids,) + ((mask,) if with_mask else ()) + tuple(past), paths[1],
           inputs, ["logits"] + new_presents, axes)
    return paths


def greedy_with_past(first_step, with_past, hidden: np.ndarray, mask: np.ndarray | None, tokens: np.ndarray,
                     pick_next) -> np.ndarray:
    """Greedy decoding: ``first_step`` on ``tokens`` (the start tokens), then ``with_past`` on one new token per
    step. ``pick_next(logits, step) -> (tokens, done)`` chooses each step's tokens and says when all rows are done."""
    names = [o.name for o in first_step.get_outputs()][1:]
    feed = {"decoder_input_ids": tokens, "encoder_hidden_states": hidden}
    if mask is not None:
        feed["encoder_attention_mask"] = mask
    logits, *present = first_step.run(None, feed)
    past = {name.replace("present", "past_key_values", 1): value for name, value in zip(names, present)}
    step_names = [o.name.replace("present", "past_key_values", 1) for o in with_past.get_outputs()][1:]
    wanted = {i.name for i in with_past.get_inputs()}  # an emptied cross-attention's entries are not read
    index = 0
    while True:
        step, done = pick_next(logits[:, -1], index)
        tokens = np.concatenate([tokens, step[:, None]], axis=1)
        if done:
            return tokens
        index += 1
        feed = {"decoder_input_ids": step[:, None]} | {name: value for name, value in past.items() if name in wanted}
        if mask is not None:
            feed["encoder_attention_mask"] = mask
        logits, *present = with_past.run(None, feed)
        past |= dict(zip(step_names, present))
