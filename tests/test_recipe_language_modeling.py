"""recipes/language_modeling.py: a smoke run on real English text (Multi30k captions) with a tiny Llama, a run from a
saved causal LM whose tokenizer has no pad token, and the fail-fast errors."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from hf_adaprune import AutoPrunedModel

from conftest import load_recipe, multi30k_lines

recipe = load_recipe("language_modeling")
BLOCK = 32


def caption_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer trained on ``texts`` that adds a begin-of-text token and has no pad token (as
    Llama's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")


def tiny_llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    settings = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64, bos_token_id=1,
                    eos_token_id=2, pad_token_id=None)
    settings.update(overrides)
    return LlamaConfig(**settings)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Multi30k English captions as .txt files (train / val / test), a BPE tokenizer trained on the training ones
    and a tiny Llama config."""
    tmp = tmp_path_factory.mktemp("lm_recipe")
    splits = {"train": multi30k_lines("train.en.gz", 300), "val": multi30k_lines("val.en.gz", 60),
              "test": multi30k_lines("test_2016_flickr.en.gz", 60)}
    for name, rows in splits.items():
        (tmp / f"{name}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    tokenizer = caption_tokenizer(splits["train"])
    tokenizer.save_pretrained(tmp / "tokenizer")
    tiny_llama_config(len(tokenizer)).save_pretrained(tmp / "config")
    return tmp


def base_args(ws: Path, out: Path) -> list[str]:
    return ["--config_name", str(ws / "config"), "--tokenizer_name", str(ws / "tokenizer"),
            "--train_file", str(ws / "train.txt"), "--validation_file", str(ws / "val.txt"),
            "--test_file", str(ws / "test.txt"), "--output_dir", str(out), "--block_size", str(BLOCK)]


SMOKE = ["--max_steps", "12", "--learning_rate", "3e-3", "--per_device_train_batch_size", "8",
         "--per_device_eval_batch_size", "16", "--pruning_target", "0.5", "--pruning_tolerance", "10.0",
         "--pruning_warmup_steps", "4", "--pruning_interval", "2", "--pruning_initial_step", "0.25",
         "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
         "--latency_repeats", "2", "--latency_prompt_tokens", "8", "--latency_new_tokens", "6", "--seed", "0"]


def test_blocks_are_the_concatenated_texts(workspace):
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    texts = ["a dog runs .", "two men sit on a bench ."]
    dataset, count = recipe.blocks(tokenizer, texts, 4, "texts")
    stream = [i for text in texts for i in tokenizer(text)["input_ids"]]
    assert count == len(stream) and stream[0] == tokenizer.bos_token_id
    assert dataset["input_ids"] == dataset["labels"] == [stream[i:i + 4] for i in range(0, len(stream) // 4 * 4, 4)]
    with pytest.raises(recipe.RecipeError, match=rf"texts: its 2 texts make {count} tokens, fewer than one block of "
                                                 rf"--block_size 64"):
        recipe.blocks(tokenizer, texts, 64, "texts")


def _recomputed_loss(folder: Path, text_file: Path, block: int) -> float:
    """The mean loss over the test blocks, from the saved folder and the raw test file alone."""
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # a pruned folder's config
    model = AutoPrunedModel.from_pretrained(folder).eval()
    stream = [i for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()
              for i in tokenizer(line)["input_ids"]]
    ids = torch.tensor(stream[:len(stream) // block * block]).view(-1, block)
    with torch.no_grad():
        return sum(float(model(input_ids=row[None], labels=row[None]).loss) for row in ids) / len(ids)


def test_smoke_run_from_a_config(workspace, tmp_path):
    out = tmp_path / "out"
    results = recipe.main(base_args(workspace, out) + SMOKE + ["--prune", "heads,ffn,layers"])

    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "pruning_report.json", "results.json", "README.md"} <= files
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["recipe"] == "language_modeling"
    task = results["task"]
    assert task["block_size"] == BLOCK and task["texts"] == {"train": 300, "validation": 60, "test": 60}
    assert results["samples"] == task["blocks"] == {split: task["tokens"][split] // BLOCK for split in task["tokens"]}
    test = results["test"]
    assert test["metrics"] == ["loss", "perplexity"] and test["dense_step"] == 4
    for side in ("dense", "pruned"):
        assert test[f"{side}_perplexity"] == pytest.approx(math.exp(test[f"{side}_loss"]))
        assert 0 < test[f"{side}_loss"] < math.log(task.get("vocab_size", 400)) + 1
    assert results["validation"]["metric"] == "loss"
    assert results["pruning"]["final_sparsity"] > 0 and results["comparison"]["flops_removed"] > 0
    assert results["comparison"]["seq_len"] == BLOCK  # FLOPs counted at the block size
    latency = results["latency"]
    assert latency["prompt_tokens"] == 8 and latency["new_tokens"] == 6
    assert set(latency["results"]) == {"dense", "pruned"}
    assert "blocks of 32 tokens (`--block_size`)" in (out / "README.md").read_text()

    # both loaders give the same greedy tokens; the recipe's test loss is the folder's on the test blocks
    pruned = AutoPrunedModel.from_pretrained(out).eval()
    stock = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert sum(p.numel() for p in pruned.parameters()) < sum(
        p.numel() for p in AutoModelForCausalLM.from_config(LlamaConfig.from_pretrained(workspace / "config"))
        .parameters())
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert tokenizer.pad_token is None
    prompt = tokenizer("A man in a blue shirt", return_tensors="pt")
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    expected = pruned.generate(**prompt, **kwargs)
    assert expected.shape[1] == prompt["input_ids"].shape[1] + 8
    assert torch.equal(stock.generate(**prompt, **kwargs), expected)
    assert _recomputed_loss(out, workspace / "test.txt", BLOCK) == pytest.approx(test["pruned_loss"], abs=1e-4)


def test_run_from_a_saved_causal_lm_without_a_pad_token(workspace, tmp_path):
    """--model_name_or_path a saved LlamaForCausalLM (its tokenizer without a pad token, its config without a pad
    id), data as JSON lines with a text column of another name, validation held out of the training texts, the
    block size left to its default (the model's 64 positions) and --quantize int8 scored on the test blocks."""
    base = tmp_path / "base"
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_llama_config(len(tokenizer))).save_pretrained(base)
    tokenizer.save_pretrained(base)
    for split in ("train", "test"):
        lines = (workspace / f"{split}.txt").read_text(encoding="utf-8").splitlines()
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"caption": line}) + "\n" for line in lines))
    out = tmp_path / "out"
    results = recipe.main([
        "--model_name_or_path", str(base), "--train_file", str(tmp_path / "train.jsonl"),
        "--test_file", str(tmp_path / "test.jsonl"), "--validation_split_percentage", "20",
        "--text_column_name", "caption", "--output_dir", str(out), "--max_test_samples", "5",
        "--quantize", "int8", "--dense_control", "true", *SMOKE, "--latency_repeats", "0"])
    task = results["task"]
    assert task["block_size"] == 64 and task["texts"] == {"train": 240, "validation": 60, "test": 60}
    assert results["samples"]["test"] == 5 and results["latency"] is None
    assert results["base_model"] == str(base)
    assert results["pruning"]["final_sparsity"] > 0
    int8 = results["deploy"]["written"]["int8"]
    assert set(int8["test"]) == {"loss", "perplexity"}
    assert abs(int8["test_change"]["loss"]) < 0.5  # int8 weights: close to the pruned model's loss
    assert AutoTokenizer.from_pretrained(out, trust_remote_code=True).pad_token is None
    assert control_scored(results)


@pytest.mark.parametrize("max_size", [None, 300])
def test_copies_with_a_smaller_vocabulary_are_scored_where_they_read_the_test_text_alike(workspace, tmp_path,
                                                                                         max_size):
    """--prune_vocabulary with --quantize int8: both copies read the test text through the vocabulary kept. Every
    token of the training text kept (the tokenizer was trained on it): the test text reads in the same tokens, both
    copies are scored; 300 of the 400 tokens kept: the test text splits otherwise, not scored, saying into how many
    tokens (the int8 copy was left unscored, with that reason, even where the vocabulary changed
    nothing)."""
    results = recipe.main(base_args(workspace, tmp_path / "out") + SMOKE + [
        "--prune_vocabulary", "true", *(["--vocabulary_max_size", str(max_size)] if max_size else []), "--quantize",
        "int8", "--latency_repeats", "0"])
    written = results["deploy"]["written"]
    for name in ("vocabulary", "int8"):
        if max_size is None:
            assert set(written[name]["test"]) == {"loss", "perplexity"}, written[name]
        else:
            assert re.match(r"its smaller vocabulary splits the test text into \d+ tokens where the pruned model "
                            r"reads \d+", written[name].get("not_scored", "")), written[name]
    if max_size is None:  # the vocabulary alone changes nothing the test text reads
        assert written["vocabulary"]["vocab_size"] == written["vocabulary"]["vocab_size_before"]
        assert written["vocabulary"]["test_change"]["loss"] == pytest.approx(0, abs=1e-5)
    else:
        assert written["vocabulary"]["vocab_size"] < written["vocabulary"]["vocab_size_before"]


def control_scored(results) -> bool:
    """--dense_control: the control trained for as many steps, scored in loss and perplexity."""
    test = results["test"]
    return (results["dense_control"]["steps"] == results["train"]["global_step"] == 12
            and test["control_perplexity"] == pytest.approx(math.exp(test["control_loss"])))


@pytest.mark.parametrize("extra, message", [
    (["--block_size", "65"], "--block_size 65: the model reads at most 64 positions (max_position_embeddings (64)); "
                             "pass --block_size 64 or less"),
    (["--text_column_name", "caption", "--train_file", "{ws}/train.csv"],
     "--text_column_name 'caption' is not a column of --train_file {ws}/train.csv; columns: sentence, label"),
    (["--pruning_metric", "accuracy"], "--pruning_metric 'accuracy': the language-modeling recipe is steered by the "
                                       "eval loss of the validation blocks"),
    (["--export_onnx", "true"], "--export_onnx: ONNX export does not handle decoder-only language models"),
    (["--validation_file", "{ws}/short.txt"], "{ws}/short.txt: its 2 texts make {n} tokens, fewer than one block of "
                                              "--block_size 32: give more text, or a smaller --block_size"),
])
def test_fails_fast(workspace, tmp_path, extra, message):
    (workspace / "train.csv").write_text("sentence,label\na dog runs,1\n")
    (workspace / "short.txt").write_text("A dog runs .\nTwo men sit .\n")
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    n = sum(len(tokenizer(line)["input_ids"]) for line in ("A dog runs .", "Two men sit ."))
    out = tmp_path / "out"
    extra = [item.format(ws=workspace) for item in extra]
    with pytest.raises(recipe.RecipeError, match=re.escape(message.format(ws=workspace, n=n))):
        recipe.main(base_args(workspace, out) + extra + SMOKE)
    assert not (out / "model.safetensors").exists()


def test_models_that_are_not_causal_language_models_are_refused_before_the_data(workspace, tmp_path):
    """A BERT classifier (BertLMHeadModel exists, but BERT is an encoder), an encoder without any causal head and a
    family hf_adaprune cannot prune: refused with the data file missing, so before any data is read."""
    bert = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=37, architectures=["BertForSequenceClassification"])
    bert.save_pretrained(tmp_path / "bert")
    transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37).save_pretrained(
        tmp_path / "distilbert")
    transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4).save_pretrained(tmp_path / "gpt2")
    args = base_args(workspace, tmp_path / "out")
    args[args.index("--train_file") + 1] = str(tmp_path / "not_read.txt")
    (tmp_path / "not_read.txt").write_text("x\n")
    (tmp_path / "not_read.txt").chmod(0)  # reading it would fail otherwise
    for folder, message in (
            ("bert", "is a bert model (BertForSequenceClassification), an encoder that reads the whole text both "
                     "ways, not a decoder-only language model"),
            ("distilbert", "is a distilbert model (no architectures named), for which transformers has no causal "
                           "language-modeling head (AutoModelForCausalLM)"),
            ("gpt2", "hf_adaprune cannot prune model_type 'gpt2'")):
        args[args.index("--config_name") + 1] = str(tmp_path / folder)
        with pytest.raises(recipe.RecipeError, match=re.escape(message)):
            recipe.main(args)


def test_deploy_and_argument_refusals(workspace, tmp_path):
    args = base_args(workspace, tmp_path / "out")
    with pytest.raises(recipe.RecipeError, match=r"--export_ctranslate2: CTranslate2 conversion serves Whisper and "
                                                 r"Marian"):
        recipe.main(args + ["--export_ctranslate2", "true"])
    with pytest.raises(recipe.RecipeError, match=r"no validation data: the pruning controller measures "
                                                 r"--pruning_metric loss on it"):
        recipe.main(args[:args.index("--validation_file")] + args[args.index("--validation_file") + 2:])
    with pytest.raises(recipe.RecipeError, match=r"--post_training: pruning without training serves encoder "
                                                 r"classifiers"):
        recipe.main(args + ["--post_training", "true"])


def test_a_resume_under_another_block_size_is_refused(workspace, tmp_path):
    """The validation blocks the decisions were measured on are cut by the block size: a resume under another one is
    refused before training; under the same one it resumes, also where the first run left --block_size to its
    default and the resume writes that size out (it was compared as typed: "checkpoint None, now 64")."""
    out = tmp_path / "out"
    args = base_args(workspace, out) + SMOKE + ["--save_strategy", "steps", "--save_steps", "6",
                                                "--latency_repeats", "0"]
    at = args.index("--block_size")
    del args[at:at + 2]  # the default: the model's 64 positions
    recipe.main(args)
    checkpoint = out / "checkpoint-6"
    assert json.loads((checkpoint / "recipe_options.json").read_text())["block_size"] == 64
    with pytest.raises(recipe.RecipeError, match=r"options that change what is trained or measured \(--block_size: "
                                                 r"checkpoint 64, now 16\)"):
        recipe.main(args + ["--resume_from_checkpoint", str(checkpoint), "--block_size", "16"])
    resumed = recipe.main(args + ["--resume_from_checkpoint", str(checkpoint), "--block_size", "64"])
    assert resumed["train"]["global_step"] == 12 and resumed["task"]["block_size"] == 64


def test_a_latency_target_times_generate_as_the_latency_is_reported(workspace, tmp_path, caplog):
    """With the block size at its default (the model's 64 positions) the latency table's prompt was a whole block:
    with 16 generated tokens beyond the positions, the run was refused naming --pruning_generation_tokens. The table
    now times what the reported latency times (--latency_prompt_tokens, --latency_new_tokens)."""
    args = base_args(workspace, tmp_path / "out") + SMOKE + ["--pruning_target_type", "latency"]
    at = args.index("--block_size")
    del args[at:at + 2]
    with caplog.at_level(logging.INFO, logger="hf_adaprune"):
        results = recipe.main(args)
    assert "latency table: generate of 6 tokens after a prompt of 8, as the latency is reported" in caplog.text
    assert results["task"]["block_size"] == 64 and results["pruning"]["final_sparsity"] > 0


def test_the_shipped_config_reads_and_names_its_missing_data_first(tmp_path, monkeypatch):
    """recipes/configs/language_modeling_*.yaml parse (typed values, flags after the file override it); run from a
    folder without the copied captions (or the model of examples/train_llama_multi30k.py), the first thing refused is
    the missing training file or model folder (no model is read)."""
    from conftest import ROOT

    monkeypatch.chdir(tmp_path)
    for config in sorted((ROOT / "recipes" / "configs").glob("language_modeling_*.yaml")):
        model_args, data_args, training_args = recipe.parse_args([str(config), "--max_steps", "7"])
        assert training_args.pruning_metric == "loss" and training_args.max_steps == 7
        assert isinstance(training_args.learning_rate, float) and data_args.block_size >= 1
        with pytest.raises(recipe.RecipeError, match=r"--train_file 'outputs/.*\.txt(\.gz)?' does not exist|"
                                                     r"--model_name_or_path outputs/\S+: no such folder"):
            recipe.main([str(config), "--output_dir", str(tmp_path / "out")])
