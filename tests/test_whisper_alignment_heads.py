"""Whisper's ``generation_config.alignment_heads`` after compaction: pairs follow the kept decoder layers and
cross-attention heads (in memory and in the saved folder), word-timestamp ``generate`` gives the masked model's
timestamps (also with a cross-attention emptied), and a model that lost every alignment head says so."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from hf_adaprune import AutoPrunedModel, attach_masks, compact, save_pruned

from test_layers import mask_layers, tiny_whisper3
from test_speech_families import whisper_features

TOL = 1e-5
ALIGNMENT_HEADS = [[0, 1], [1, 0], [1, 3], [2, 2], [2, 3]]
# decoder layer 1 removed; layer 0's cross-attention keeps heads 1, 2 and layer 2's keeps 0, 3
SURVIVING = [[0, 1], [2, 3]]
RENUMBERED = [[0, 0], [1, 1]]


def keep(heads: list[int], count: int = 4) -> torch.Tensor:
    mask = torch.zeros(count)
    mask[heads] = 1
    return mask


def pruned_whisper(alignment_heads=ALIGNMENT_HEADS, empty=()):
    """A masked (not yet compacted) 3-layer tiny Whisper with ``alignment_heads`` in the dense numbering."""
    model = tiny_whisper3()
    model.generation_config.alignment_heads = [list(pair) for pair in alignment_heads]
    masks = mask_layers(model, {"decoder.layers": [0, 2]}, widths_seed=None)
    masks.set("decoder.layers.0.encoder_attn", keep([1, 2]))
    masks.set("decoder.layers.2.encoder_attn", keep([0, 3]))
    for name in empty:
        masks.set(name, torch.zeros(4))
    return model


def cross_attentions(model, features, tokens):
    model.set_attn_implementation("eager")  # attention weights are returned by the eager forward
    with torch.no_grad():
        return model(features, decoder_input_ids=tokens, output_attentions=True).cross_attentions


def timestamps(model, features):
    with torch.no_grad():
        out = model.generate(features, max_new_tokens=5, do_sample=False, return_token_timestamps=True)
    return out["sequences"], out["token_timestamps"]


def test_renumbered_pairs_point_at_the_same_heads():
    model = pruned_whisper()
    features = whisper_features()
    tokens = torch.tensor([[3, 7, 9, 11, 5], [3, 12, 4, 8, 30]])
    masked = cross_attentions(model, features, tokens)
    compact(model)
    assert model.config.decoder_layers == 2
    assert model.generation_config.alignment_heads == RENUMBERED
    compacted = cross_attentions(model, features, tokens)
    for (layer, head), (new_layer, new_head) in zip(SURVIVING, RENUMBERED):
        assert (compacted[new_layer][:, new_head] - masked[layer][:, head]).abs().max() <= TOL


def test_word_timestamps_equal_the_masked_models_in_memory_and_saved(tmp_path):
    model = pruned_whisper()
    features = whisper_features()
    model.generation_config.alignment_heads = SURVIVING  # the masked model reads the dense numbering
    masked_tokens, masked_times = timestamps(model, features)
    model.generation_config.alignment_heads = ALIGNMENT_HEADS  # pairs of removed heads are dropped
    save_pruned(model, tmp_path)  # compacts
    tokens, times = timestamps(model, features)
    assert torch.equal(tokens, masked_tokens)
    assert times.shape == masked_times.shape and (times - masked_times).abs().max() <= TOL
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["alignment_heads"] == RENUMBERED
    reloaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    assert reloaded.generation_config.alignment_heads == RENUMBERED
    tokens, times = timestamps(reloaded, features)
    assert torch.equal(tokens, masked_tokens) and (times - masked_times).abs().max() <= TOL


def test_second_compaction_renumbers_from_the_first():
    model = pruned_whisper()
    compact(model)  # [[0, 0], [1, 1]]: layer 0 keeps original heads 1, 2; layer 1 (was 2) keeps 0, 3
    masks = attach_masks(model, layers=True)
    masks.set("decoder.layers", keep([1], 2))
    masks.set("decoder.layers.1.encoder_attn", keep([1], 2))
    compact(model)
    assert model.config.decoder_layers == 1
    assert model.generation_config.alignment_heads == [[0, 0]]  # original (2, 3): layer 2 -> 0, head 3 -> 0


def test_no_alignment_head_left_warns_and_drops_the_attribute(tmp_path):
    model = pruned_whisper(alignment_heads=[[1, 0], [2, 1]])  # layer 1 removed, head 1 of layer 2 pruned
    with pytest.warns(UserWarning, match=r"removed every alignment head .* word timestamps"):
        save_pruned(model, tmp_path)
    assert not hasattr(model.generation_config, "alignment_heads")
    assert "alignment_heads" not in json.loads((tmp_path / "generation_config.json").read_text())
    with pytest.raises(ValueError, match="no `alignment_heads`"):
        timestamps(model, whisper_features())


def test_emptied_cross_attention_keeps_word_timestamps_and_one_attention_entry_per_layer(tmp_path):
    # layer 0's cross-attention loses every head: its zero-head entry keeps cross_attentions[i] layer i's, which
    # word timestamps index by the renumbered pairs
    model = pruned_whisper(empty=["decoder.layers.0.encoder_attn"])
    features = whisper_features()
    tokens = torch.tensor([[3, 7, 9, 11, 5], [3, 12, 4, 8, 30]])
    masked = cross_attentions(model, features, tokens)
    model.generation_config.alignment_heads = [[2, 3]]  # the one surviving pair, dense numbering
    masked_tokens, masked_times = timestamps(model, features)
    model.generation_config.alignment_heads = ALIGNMENT_HEADS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left to warn about
        save_pruned(model, tmp_path)
    assert model.generation_config.alignment_heads == [[1, 1]]
    compacted = cross_attentions(model, features, tokens)
    assert [tuple(a.shape[:2]) for a in compacted] == [(2, 0), (2, 2)]
    assert (compacted[1][:, 1] - masked[2][:, 3]).abs().max() <= TOL
    for loaded in (model, AutoPrunedModel.from_pretrained(tmp_path).eval()):
        tokens_out, times = timestamps(loaded, features)
        assert torch.equal(tokens_out, masked_tokens) and (times - masked_times).abs().max() <= TOL


def test_a_model_without_alignment_heads_is_left_alone():
    model = pruned_whisper(alignment_heads=[])
    compact(model)
    assert model.generation_config.alignment_heads == []
