"""``output_attentions=True`` on a compacted model: one entry per layer, also for an attention with no head left.

An emptied attention's entry is a zero-head weight tensor ``(batch, 0, queries, keys)``, so ``attentions[i]`` stays
layer i's (word timestamps index Whisper's cross-attentions by layer: ``test_whisper_alignment_heads.py``); every
other entry equals the masked model's. Under sdpa, which returns no weights, the tuples stay empty, as the stock
model's are."""

from __future__ import annotations

import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel, attach_masks, compact, save_pruned

from conftest import text_batch, tiny_model
from test_seq2seq_families import seq2seq_batch, tiny_seq2seq
from test_speech_families import audio_batch, tiny_ctc_model, tiny_whisper, whisper_batch
from test_wavlm import audio_batch as wavlm_batch, tiny_wavlm

TOL = 1e-5
KEYS = ("attentions", "encoder_attentions", "decoder_attentions", "cross_attentions")

BUILDERS = {
    "bert": lambda: (tiny_model("bert"), text_batch()),
    "distilbert": lambda: (tiny_model("distilbert"), text_batch()),
    "deberta-v2": lambda: (tiny_model("deberta-v2"), text_batch()),
    "modernbert": lambda: (tiny_model("modernbert"), text_batch()),
    "mpnet": lambda: (tiny_model("mpnet"), text_batch()),
    "bart": lambda: (tiny_seq2seq("bart"), seq2seq_batch()),
    "marian": lambda: (tiny_seq2seq("marian"), seq2seq_batch()),
    "t5": lambda: (tiny_seq2seq("t5"), seq2seq_batch()),
    "whisper": lambda: (tiny_whisper(), whisper_batch()),
    "wav2vec2": lambda: (tiny_ctc_model("wav2vec2"), audio_batch()),
    "wavlm": lambda: (tiny_wavlm(), wavlm_batch()),
}


STOCK_AUTO = {"BertForSequenceClassification": "AutoModelForSequenceClassification",
              "DistilBertForSequenceClassification": "AutoModelForSequenceClassification",
              "DebertaV2ForSequenceClassification": "AutoModelForSequenceClassification",
              "ModernBertForSequenceClassification": "AutoModelForSequenceClassification",
              "MPNetForSequenceClassification": "AutoModelForSequenceClassification",
              "BartForConditionalGeneration": "AutoModelForSeq2SeqLM", "MarianMTModel": "AutoModelForSeq2SeqLM",
              "T5ForConditionalGeneration": "AutoModelForSeq2SeqLM",
              "WhisperForConditionalGeneration": "AutoModelForSpeechSeq2Seq", "Wav2Vec2ForCTC": "AutoModelForCTC",
              "WavLMForCTC": "AutoModelForCTC"}


def stock_reload(model, folder):
    """The folder as stock transformers loads it (its remote code)."""
    name = next(cls.__name__ for cls in type(model).__mro__ if cls.__name__ in STOCK_AUTO)
    return getattr(transformers, STOCK_AUTO[name]).from_pretrained(folder, trust_remote_code=True)


def empty_first_layer_attentions(model) -> list[str]:
    """Every attention group of the first layer of each stack loses all its heads; the rest stays whole."""
    masks = attach_masks(model)
    emptied = [name for name in masks.of_kind("heads") if ".0." in name]
    for name in emptied:
        masks.set(name, torch.zeros_like(masks.masks[name]))
    return emptied


def attention_outputs(model, batch, implementation="eager") -> dict[str, tuple]:
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    return {key: tuple(getattr(out, key)) for key in KEYS if getattr(out, key, None) is not None}


def assert_one_entry_per_layer(compacted: dict, masked: dict, values: bool = True) -> None:
    assert compacted.keys() == masked.keys()
    for key, entries in masked.items():
        assert len(compacted[key]) == len(entries), key
        for before, after in zip(entries, compacted[key]):
            if after.shape[1] == 0:  # the emptied attention: as many queries and keys, no head
                assert after.shape[:1] + after.shape[2:] == before.shape[:1] + before.shape[2:]
            else:
                assert after.shape == before.shape, key
                assert not values or (after - before).abs().max() <= TOL, key


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_emptied_attentions_keep_their_entry_in_memory_and_reloaded(family, tmp_path):
    model, batch = BUILDERS[family]()
    emptied = empty_first_layer_attentions(model)
    masked = attention_outputs(model, batch)
    assert masked and all(len(entries) >= 2 for entries in masked.values())
    save_pruned(model, tmp_path)  # compacts
    compacted = attention_outputs(model, batch)
    assert sum(entry.shape[1] == 0 for entries in compacted.values() for entry in entries) == len(emptied)
    assert_one_entry_per_layer(compacted, masked)
    # WavLM's layer that kept every head reloads with the per-head forward it ran under masks, not the stock one,
    # whose weights are averaged over the heads (transformers' own quirk): its entry was the average before
    for reloaded in (AutoPrunedModel.from_pretrained(tmp_path), stock_reload(model, tmp_path)):
        assert_one_entry_per_layer(attention_outputs(reloaded.eval(), batch), masked)


@pytest.mark.parametrize("family", ["bert", "bart"])
def test_sdpa_collects_no_weights_for_an_emptied_attention_either(family):
    model, batch = BUILDERS[family]()
    empty_first_layer_attentions(model)
    masked = attention_outputs(model, batch, "sdpa")
    compact(model)
    assert attention_outputs(model, batch, "sdpa") == masked  # empty tuples, as the stock model's
    assert all(entries == () for entries in masked.values())


def test_a_second_compaction_keeps_the_emptied_attentions_entry():
    model, batch = BUILDERS["bart"]()
    empty_first_layer_attentions(model)
    compact(model)
    masks = attach_masks(model)  # prune one more head of the second encoder layer, compact again
    name = "encoder.layers.1.self_attn"
    mask = torch.ones_like(masks.masks[name])
    mask[0] = 0
    masks.set(name, mask)
    masked = attention_outputs(model, batch)
    compact(model)
    compacted = attention_outputs(model, batch)
    assert [tuple(e.shape[:2]) for e in compacted["encoder_attentions"]] == [(3, 0), (3, 3)]
    assert len(compacted["cross_attentions"]) == len(masked["cross_attentions"]) == 2
