"""recipes/translation.py with tokenizers that tag text with language codes (mBART, mBART-50): the codes given
by --source_lang_code / --target_lang_code tag the data, and the decoder trains and generates from the target's."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import SentencePieceUnigramTokenizer
from transformers import DataCollatorForSeq2Seq, MBart50Tokenizer, MBartConfig, MBartForConditionalGeneration, \
    MBartTokenizer

from hf_adaprune import AutoPrunedModel
from hf_adaprune.sequence_distillation import sequence_distillation_targets

from conftest import load_recipe
from test_recipe_translation import base_args
from test_recipe_translation import workspace  # noqa: F401 - the fixture

recipe = load_recipe("translation")
RecipeError = recipe.RecipeError
CODES = ["--source_lang_code", "en_XX", "--target_lang_code", "de_DE"]


def mbart_folder(ws, folder, tokenizer_class):
    """A tiny mBART with a Unigram vocabulary of the workspace's sentences and ``tokenizer_class``'s codes."""
    texts = [line for name in ("val.en", "val.de") for line in (ws / name).read_text().splitlines()]
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(texts * 4, vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                unk_token="<unk>", show_progress=False)
    tokenizer = tokenizer_class(vocab=[tuple(v) for v in json.loads(unigram.to_str())["model"]["vocab"]])
    tokenizer.save_pretrained(folder)
    config = MBartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    MBartForConditionalGeneration(config).save_pretrained(folder)
    return folder


def mbart_args(ws, folder, out):
    args = base_args(ws, out)
    at = args.index("--config_name")
    return args[:at] + ["--model_name_or_path", str(folder)] + args[at + 4:]


def built(args):
    model_args, data_args, training_args = recipe.parse_args(args)
    recipe.validate_args(model_args, data_args, training_args)
    model, tokenizer = recipe.load_model_and_tokenizer(model_args, data_args)
    tokenized = recipe.tokenize(recipe.load_raw_datasets(data_args, model_args), tokenizer, data_args)
    return model, tokenizer, tokenized


def test_mbart_targets_end_with_the_target_code_and_the_decoder_starts_with_it(workspace, tmp_path):  # noqa: F811
    folder = mbart_folder(workspace, tmp_path / "mbart", MBartTokenizer)
    model, tokenizer, tokenized = built(mbart_args(workspace, folder, tmp_path / "out") + CODES)
    de, en = tokenizer.convert_tokens_to_ids("de_DE"), tokenizer.convert_tokens_to_ids("en_XX")
    row = tokenized["train"][0]
    assert row["input_ids"][-2:] == [tokenizer.eos_token_id, en]
    assert row["labels"][-2:] == [tokenizer.eos_token_id, de]  # the source's code before the fix
    batch = DataCollatorForSeq2Seq(tokenizer, model=model)([row])
    assert batch["decoder_input_ids"][0, 0] == de == model.generation_config.decoder_start_token_id
    assert model.config.decoder_start_token_id == de
    # sequence distillation: the teacher's rows end as the data's do, so training starts the decoder alike
    teacher_rows = sequence_distillation_targets(model, tokenized["train"].select(range(3)), max_length=8,
                                                 progress=False)
    for labels in teacher_rows["labels"]:
        assert labels[-1] == de
        assert DataCollatorForSeq2Seq(tokenizer, model=model)([{"input_ids": [5], "labels": labels}])[
            "decoder_input_ids"][0, 0] == de


def test_mbart50_targets_start_with_the_code_and_generation_is_forced_to_it(workspace, tmp_path):  # noqa: F811
    folder = mbart_folder(workspace, tmp_path / "mbart50", MBart50Tokenizer)
    model, tokenizer, tokenized = built(mbart_args(workspace, folder, tmp_path / "out") + CODES)
    de = tokenizer.convert_tokens_to_ids("de_DE")
    assert tokenized["train"][0]["labels"][0] == de and tokenized["train"][0]["input_ids"][0] == \
        tokenizer.convert_tokens_to_ids("en_XX")
    assert model.generation_config.forced_bos_token_id == de
    inputs = tokenizer(["A man walks."], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated[0, :2].tolist() == [tokenizer.eos_token_id, de]


def test_mbart_recipe_run_saves_a_model_that_generates_from_the_target_code(workspace, tmp_path):  # noqa: F811
    folder = mbart_folder(workspace, tmp_path / "mbart", MBartTokenizer)
    out = tmp_path / "out"
    results = recipe.main(mbart_args(workspace, folder, out) + CODES + [
        "--max_steps", "4", "--per_device_train_batch_size", "8", "--pruning_target", "0.3",
        "--pruning_tolerance", "100", "--pruning_warmup_steps", "1", "--pruning_interval", "2",
        "--max_eval_samples", "8", "--max_target_length", "16", "--save_strategy", "no", "--disable_tqdm", "true",
        "--latency_repeats", "0", "--dataloader_pin_memory", "false"])
    assert results["task"]["languages"]["target_code"] == "de_DE"
    loaded = AutoPrunedModel.from_pretrained(out)
    tokenizer = MBartTokenizer.from_pretrained(out)
    assert loaded.generation_config.decoder_start_token_id == tokenizer.convert_tokens_to_ids("de_DE")


@pytest.mark.parametrize("extra, message", [
    ([], "MBartTokenizer tags sources and targets with language codes: pass --source_lang_code and "
         "--target_lang_code"),
    (["--source_lang_code", "en_XX"], "pass --target_lang_code"),
    (["--source_lang_code", "en_XX", "--target_lang_code", "xx_YY"], "--target_lang_code 'xx_YY' is not a language "
                                                                      "code of MBartTokenizer"),
])
def test_mbart_codes_missing_or_unknown_are_refused(workspace, tmp_path, extra, message):  # noqa: F811
    folder = mbart_folder(workspace, tmp_path / "mbart", MBartTokenizer)
    with pytest.raises(RecipeError, match=message):
        built(mbart_args(workspace, folder, tmp_path / "out") + extra)


def test_codes_for_a_tokenizer_without_them_are_refused(workspace, tmp_path):  # noqa: F811
    with pytest.raises(RecipeError, match="--source_lang_code and --target_lang_code: TokenizersBackend has no "
                                          "language codes"):
        built(base_args(workspace, tmp_path / "out") + CODES)
