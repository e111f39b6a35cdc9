#!/usr/bin/env python
"""Fine-tune and prune a decoder-only language model in one run (in the shape of transformers' ``run_clm.py``).

The model (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Gemma3, SmolLM3, OLMo, Granite: the families
hf_adaprune prunes as causal language models) is fine-tuned with :class:`hf_adaprune.AdaptivePruningTrainer`,
which removes key/value groups, FFN neurons (and, with ``--prune heads,ffn,layers``, whole layers) while it
trains, steered by the loss on the validation blocks; the pruned model is saved in the Hub format, scored on the
test blocks (loss and perplexity) and compared with the dense model (parameters, FLOPs, ``generate`` latency).

Run it from the repository root, with a config file (YAML or JSON) or with flags::

    python recipes/language_modeling.py recipes/configs/language_modeling_smollm2_multi30k.yaml
    python -m recipes.language_modeling recipes/configs/language_modeling_smollm2_multi30k.yaml --max_steps 50
    python recipes/language_modeling.py --model_name_or_path HuggingFaceTB/SmolLM2-135M \\
        --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 --block_size 512 --output_dir out
    python recipes/language_modeling.py --config_name my_llama_config/ --tokenizer_name my_tokenizer/ \\
        --train_file train.txt --validation_file val.txt --test_file test.txt --output_dir out

Arguments are those of ``ModelArguments``, ``DataTrainingArguments`` (below) and
:class:`hf_adaprune.PruningArguments` (``TrainingArguments`` plus the ``--pruning_*`` options); a config file may
be followed by flags, which override its values.

Data: ``--dataset_name`` (anything ``datasets.load_dataset`` loads; splits "train", "validation", "test") or
``--train_file`` / ``--validation_file`` / ``--test_file``: ``.txt`` (one text a line), or ``.csv``, ``.tsv``,
``.json``, ``.jsonl`` with the text in ``--text_column_name`` (default ``text``); optionally compressed (.gz,
.bz2, .xz). Blank texts are left out. Without a validation split ``--validation_split_percentage`` holds out the
first that many percent of the training texts, in order (as ``run_clm.py`` does: a held-out text's neighbours,
often of the same document, mostly stay on its side). Each split's texts are tokenized (with the special tokens
the tokenizer adds to a text), concatenated and cut into blocks of ``--block_size`` tokens (default: the smallest
of 1024, the tokenizer's ``model_max_length`` and the model's positions; the last, shorter piece is dropped); the
labels are the inputs (the model shifts them). ``--max_train_samples`` / ``--max_eval_samples`` /
``--max_test_samples`` take the first blocks. A tokenizer without a pad token is fine: blocks need no padding.

The pruning metric is the eval loss (``--pruning_metric loss``, the default; ``--pruning_tolerance`` is in loss
units, or relative with ``--pruning_tolerance_type relative``); a metric computed from predictions is refused.
Test metrics: ``loss`` (mean cross-entropy per predicted token) and ``perplexity`` (its exp), of the pruned model,
the dense model at the pruning reference (after ``--pruning_warmup_steps``) and, with ``--dense_control true``,
the dense model fine-tuned for the same steps without pruning (``OUTPUT_DIR/dense_control``). FLOPs are counted
at ``--pruning_seq_len`` tokens, which defaults to the block size here. Latency: greedy ``generate`` at batch 1 of
exactly ``--latency_new_tokens`` tokens after a prompt of ``--latency_prompt_tokens`` (the first tokens of the
first test block, else validation block), the dense control (else the dense model as loaded) and the pruned model
timed alternately in one process.

Refused before any data is read: a model that is not a causal language model of a family hf_adaprune prunes (an
encoder such as BERT, an encoder-decoder, a family it cannot prune), a ``--block_size`` beyond the model's
positions, a ``--pruning_metric`` other than loss, ``--export_onnx`` (a graph without the KV cache) and
``--export_ctranslate2``. Refused before training: a split whose texts make less than one block (the message
says how many tokens there are). ``--quantize int8`` writes ``OUTPUT_DIR/deploy/int8`` (``save_int8``) and
``--prune_vocabulary`` ``OUTPUT_DIR/deploy/vocabulary`` (a tied LM head is cut with the table: the model then writes
only the kept tokens); each is scored on the test blocks read through its own tokenizer where that reads the test
text in the pruned model's tokens, else not scored, saying why (a per-token loss over other tokens does not compare).

Outputs in ``--output_dir``: the pruned model (``model.safetensors``, ``config.json`` with the ``adaprune``
record, tokenizer, model card), ``pruning_report.json`` and plots from the trainer, ``results.json`` with the
dense/pruned comparison. The folder loads with ``AutoPrunedModel.from_pretrained`` and with stock
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset, Value
from transformers import AutoModelForCausalLM, HfArgumentParser, default_data_collator
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from hf_adaprune import PruningArguments
from hf_adaprune.families import UnsupportedModelError, get_adapter, positions_note, readable_positions
from hf_adaprune.families.llama import LLAMA_TYPES
from hf_adaprune.hub.config_marker import base_model_type
from hf_adaprune.reporting.latency import GenerateExactly, compare_latency, format_latency
from recipes.arguments import (
    DataArguments,
    ModelSourceArguments,
    RecipeError,
    check_minimum,
    check_text_sources,
    check_unused_flags,
    data_file_extension,
    load_named_dataset,
    no_validation_message,
    recipe_argv,
)
from recipes.deploy import NotScored
from recipes.loading import load_config, load_tokenizer, pretrained_or_new
from recipes.results import format_metric
from recipes.skeleton import Run, Task, scoring_every_row
from recipes.tables import FILE_TYPES, LINE_COLUMN, OPENERS, read_table, read_text

logger = logging.getLogger("hf_adaprune.recipes.language_modeling")

SPLITS = ("train", "validation", "test")
TEXT_FILE = ".txt"
DEFAULT_BLOCK_SIZE = 1024  # run_clm's cap on the default block size
TEST_METRICS = ("loss", "perplexity")
DEPLOY_REFUSED = {
    "export_onnx": "ONNX export does not handle decoder-only language models: its graph would give logits without "
                   "the KV cache, so every generated token would run the whole prefix again; generate with the pruned "
                   "model in transformers, or save int8 weights (--quantize int8, or hf_adaprune.deploy.save_int8("
                   "AutoPrunedModel.from_pretrained(OUTPUT_DIR), folder, tokenizer=tokenizer))",
    "export_ctranslate2": "CTranslate2 conversion serves Whisper and Marian (the ASR and translation recipes); "
                          "generate with the pruned model in transformers, or save int8 weights (--quantize int8)",
}


@dataclass
class ModelArguments(ModelSourceArguments):
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained causal language model: Hub id (e.g. HuggingFaceTB/SmolLM2-135M), local folder "
                          "or package:NAME/path. Leave it out and give --config_name and --tokenizer_name to train a "
                          "model from scratch."},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id written as base_model in the model card. Default: --model_name_or_path."},
    )


@dataclass
class DataTrainingArguments(DataArguments):
    train_file: str | None = field(
        default=None, metadata={"help": "Training texts: .txt (one text a line), .csv, .tsv, .json or .jsonl."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation texts, whose loss steers pruning (same types)."})
    test_file: str | None = field(
        default=None, metadata={"help": "Test texts: dense and pruned models are scored on them (same types)."})
    validation_split_percentage: float | None = field(
        default=None,
        metadata={"help": "Without validation data, hold out the first this many percent of the training texts "
                          "(in order, as run_clm.py does)."},
    )
    text_column_name: str = field(
        default="text", metadata={"help": "The text column of .csv / .tsv / .json / .jsonl files and datasets."})
    block_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per training / evaluation block (texts are concatenated, then cut). Default: the "
                          "smallest of 1024, the tokenizer's model_max_length and the model's positions."},
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use the first N validation blocks."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use the first N test blocks."})
    latency_repeats: int = field(
        default=10, metadata={"help": "Alternating repeats for the batch-1 generate latency comparison (0 skips it)."}
    )
    latency_new_tokens: int = field(
        default=32, metadata={"help": "Tokens each model generates (exactly: greedy, no early end) per timing."})
    latency_prompt_tokens: int = field(
        default=32, metadata={"help": "Prompt length of the latency timing: the first tokens of the first test "
                                      "(else validation) block; at most --block_size."})


# -- arguments ---------------------------------------------------------------------------------------
def argument_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataTrainingArguments, PruningArguments))


def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataTrainingArguments, PruningArguments) from flags or a config file (+ overriding flags)."""
    parser = argument_parser()
    model_args, data_args, training_args, unused = parser.parse_args_into_dataclasses(
        args=recipe_argv(argv, parser), return_remaining_strings=True)
    check_unused_flags(unused, "language-modeling")
    return model_args, data_args, training_args


def check_data_file(path: str, what: str) -> str:
    """The type of a data file (``.txt`` or a table type, compression suffix aside); RecipeError for others."""
    ext = data_file_extension(path)
    if ext not in (TEXT_FILE, *FILE_TYPES):
        raise RecipeError(f"{what} {path!r}: cannot read files of type {ext or '(no extension)'!r}; use "
                          f"{', '.join((TEXT_FILE, *FILE_TYPES))} (optionally compressed: {', '.join(OPENERS)})")
    return ext


def validate_args(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> dict[str, str]:
    """Checks that need neither data nor model. Resolves package: paths in place; returns the data files as given."""
    given = check_text_sources(model_args, data_args, check_data_file)
    percentage = data_args.validation_split_percentage
    if percentage is not None and not 0 < percentage < 100:
        raise RecipeError(f"--validation_split_percentage must be in (0, 100); got {percentage}")
    if percentage is not None and data_args.validation_file is not None:
        raise RecipeError("give --validation_file or --validation_split_percentage, not both")
    if data_args.train_file is not None and data_args.validation_file is None and percentage is None:
        raise RecipeError(_no_validation_message(training_args))
    if not (data_args.text_column_name or "").strip():
        raise RecipeError("--text_column_name is empty: name the column that holds the texts")
    check_minimum(data_args, ("block_size", "latency_new_tokens", "latency_prompt_tokens"), 1)
    check_minimum(data_args, ("latency_repeats",), 0)
    check_minimum(data_args, ("max_train_samples", "max_eval_samples", "max_test_samples"), 1)
    if training_args.pruning_metric != "loss":
        raise RecipeError(f"--pruning_metric {training_args.pruning_metric!r}: the language-modeling recipe is "
                          "steered by the eval loss of the validation blocks (perplexity is its exp, and moves with "
                          "it); a metric computed from predictions (accuracy, sacrebleu, ...) is not one it "
                          "computes: leave --pruning_metric out, or pass loss")
    for name, reason in DEPLOY_REFUSED.items():
        if getattr(data_args, name):
            raise RecipeError(f"--{name}: {reason}")
    return given


def _no_validation_message(training_args, dataset_name: str | None = None) -> str:
    if dataset_name:
        return no_validation_message(training_args, f"--dataset_name {dataset_name} has no validation split: give "
                                                    "--validation_split_percentage to hold out part of the training "
                                                    "texts")
    return no_validation_message(training_args, "give --validation_file, or --validation_split_percentage to hold "
                                                "out part of the training texts")


def check_causal_model(model_args: ModelArguments, block_size: int | None) -> None:
    """Before any data is read: the config (of --config_name or --model_name_or_path) is a causal language model of
    a family hf_adaprune prunes, and --block_size fits its positions. A config that cannot be read is named when
    the model is loaded (with what to do)."""
    path = model_args.config_name or model_args.model_name_or_path
    try:
        config = load_config(path, cache_dir=model_args.cache_dir)
    except (OSError, ValueError):
        return
    try:
        get_adapter(config)
    except UnsupportedModelError as err:
        raise RecipeError(f"{path}: {err}") from None
    model_type = base_model_type(str(config.model_type))
    architectures = ", ".join(getattr(config, "architectures", None) or []) or "no architectures named"
    if getattr(config, "is_encoder_decoder", False):
        raise RecipeError(f"{path} is a {model_type} model ({architectures}), an encoder-decoder: this recipe trains "
                          "decoder-only language models; translation and speech models have recipes of their own "
                          "(recipes/translation.py, recipes/asr.py)")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise RecipeError(f"{path} is a {model_type} model ({architectures}), for which transformers has no causal "
                          "language-modeling head (AutoModelForCausalLM): give a decoder-only language model of "
                          f"model type {', '.join(LLAMA_TYPES)}")
    if model_type not in LLAMA_TYPES:
        raise RecipeError(f"{path} is a {model_type} model ({architectures}), an encoder that reads the whole text "
                          "both ways, not a decoder-only language model: this recipe trains the causal language models "
                          f"hf_adaprune prunes, of model type {', '.join(LLAMA_TYPES)} (encoder classifiers: "
                          "recipes/text_classification.py)")
    positions = readable_positions(config)
    if block_size is not None and positions and block_size > positions:
        raise RecipeError(f"--block_size {block_size}: the model reads at most {positions} positions "
                          f"({positions_note(config)}); pass --block_size {positions} or less")


# -- data --------------------------------------------------------------------------------------------
def read_text_lines(path: str, what: str) -> list[str]:
    """The lines of a plain or compressed UTF-8 text file (lines end at "\\n"; a "\\r" before it is dropped)."""
    lines = read_text(path, what).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_file(path: str, what: str, column: str) -> list[str]:
    """The texts of one data file: a .txt file's lines, or a table's ``column`` (RecipeError naming the columns
    where it has none)."""
    if data_file_extension(path) == TEXT_FILE:
        return read_text_lines(path, what)
    table = read_table(path, what)
    if column not in table.columns:
        raise RecipeError(f"--text_column_name {column!r} is not a column of {what} {path}; columns: "
                          f"{', '.join(c for c in table.columns if c != LINE_COLUMN)}")
    return [row.get(column) for row in table.rows]


def load_raw_texts(data_args: DataTrainingArguments, model_args: ModelArguments) -> dict[str, list[str]]:
    """The texts of the splits "train" and, where given, "validation" and "test", as read (blanks kept)."""
    column = data_args.text_column_name
    texts = {}
    if data_args.dataset_name is not None:
        loaded = load_named_dataset(data_args, model_args.cache_dir)
        if "train" not in loaded:
            raise RecipeError(f"--dataset_name {data_args.dataset_name}: no 'train' split; splits: {sorted(loaded)}")
        for split in SPLITS:
            if split not in loaded:
                continue
            dataset = loaded[split]
            if column not in dataset.column_names:
                raise RecipeError(f"--text_column_name {column!r} is not a column of --dataset_name "
                                  f"{data_args.dataset_name} ({split}); columns: {', '.join(dataset.column_names)}")
            feature = dataset.features[column]
            if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
                raise RecipeError(f"column {column!r} of --dataset_name {data_args.dataset_name} ({split}) holds "
                                  f"{feature}, not text: pass the text column with --text_column_name")
            texts[split] = list(dataset[column])
        return texts
    for split in SPLITS:
        path = getattr(data_args, f"{split}_file")
        if path is not None:
            texts[split] = read_file(path, f"--{split}_file", column)
    return texts


def _source(data_args, split: str) -> str:
    if data_args.dataset_name is not None:
        return f"--dataset_name {data_args.dataset_name} ({split})"
    path = getattr(data_args, f"{split}_file")
    return path or f"the {split} texts held out of {data_args.train_file or data_args.dataset_name}"


def without_blanks(texts: dict[str, list], data_args) -> dict[str, list[str]]:
    """Every split without its blank texts (a blank line would add the tokenizer's special tokens alone); a split
    with no text left is a RecipeError."""
    kept = {}
    for split, rows in texts.items():
        kept[split] = [t for t in rows if isinstance(t, str) and t.strip()]
        if len(kept[split]) < len(rows):
            logger.info("%s: left out %d blank texts of %d", split, len(rows) - len(kept[split]), len(rows))
        if not kept[split]:
            raise RecipeError(f"{_source(data_args, split)}: no text (every one of its {len(rows)} rows is blank)")
    return kept


def hold_out(texts: dict[str, list[str]], data_args) -> dict[str, list[str]]:
    """The validation texts carved off the start of the training texts by --validation_split_percentage (as
    run_clm.py: ``train[:N%]``), where the data has no validation split; a percentage beside one is refused."""
    percentage = data_args.validation_split_percentage
    if "validation" in texts:
        if percentage:
            raise RecipeError(f"--validation_split_percentage {percentage:g}: the data has a validation split of its "
                              f"own ({_source(data_args, 'validation')}), which the run uses; leave the percentage "
                              "out")
        return texts
    train = texts["train"]
    size = max(1, round(len(train) * percentage / 100))
    if size >= len(train):
        raise RecipeError(f"--validation_split_percentage {percentage:g} leaves no training texts ({len(train)} "
                          "texts)")
    return {**texts, "validation": train[:size], "train": train[size:]}


def load_data(run: Run) -> None:
    """Read the texts, drop blanks, hold a validation split out; the tokens are counted once the tokenizer is
    loaded (:func:`build`), before the model."""
    data_args = run.data_args
    texts = load_raw_texts(data_args, run.model_args)
    if "validation" not in texts and not data_args.validation_split_percentage:
        raise RecipeError(_no_validation_message(run.training_args, data_args.dataset_name))
    texts = hold_out(without_blanks(texts, data_args), data_args)
    logger.info("data: %s texts", {split: len(rows) for split, rows in texts.items()})
    run.splits = {split: Dataset.from_dict({"text": rows}) for split, rows in texts.items()}
    run.task_results = {"text_column": data_args.text_column_name,
                        "texts": {split: len(rows) for split, rows in texts.items()}}


# -- blocks ------------------------------------------------------------------------------------------
def token_stream(tokenizer, texts, batch: int = 1000) -> np.ndarray:
    """The token ids of ``texts`` one after the other (each with the special tokens the tokenizer adds to a text)."""
    parts = []
    for start in range(0, len(texts), batch):
        encoded = tokenizer(list(texts[start:start + batch]), verbose=False)["input_ids"]
        parts += [np.asarray(ids, dtype=np.int64) for ids in encoded]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def blocks(tokenizer, texts, block_size: int, what: str) -> tuple[Dataset, int]:
    """(the blocks of ``block_size`` tokens of the concatenated ``texts``, with labels = inputs; the token count).
    Texts of fewer tokens than one block: RecipeError naming how many there are."""
    tokens = token_stream(tokenizer, texts)
    count = len(tokens) // block_size
    if count == 0:
        raise RecipeError(f"{what}: its {len(texts)} texts make {len(tokens)} tokens, fewer than one block of "
                          f"--block_size {block_size}: give more text, or a smaller --block_size")
    rows = tokens[:count * block_size].reshape(count, block_size).tolist()
    return Dataset.from_dict({"input_ids": rows, "labels": rows}), len(tokens)


def first_blocks(dataset: Dataset, n: int | None) -> Dataset:
    return dataset if n is None or n >= len(dataset) else dataset.select(range(n))


def choose_block_size(data_args, tokenizer, config) -> int:
    """--block_size, or the smallest of 1024, the tokenizer's model_max_length and the model's positions (as
    run_clm.py chooses it); a given size beyond the tokenizer's limit is cut to it with a warning (as run_clm.py)."""
    positions = readable_positions(config)
    limit = tokenizer.model_max_length or DEFAULT_BLOCK_SIZE
    if data_args.block_size is None:
        size = min(DEFAULT_BLOCK_SIZE, limit, *([positions] if positions else []))
        logger.info("--block_size %d (the smallest of %d, the tokenizer's model_max_length %s and the model's "
                    "positions %s)", size, DEFAULT_BLOCK_SIZE, limit, positions)
        return size
    if positions and data_args.block_size > positions:  # a --model_name_or_path config unread in validate
        raise RecipeError(f"--block_size {data_args.block_size}: the model reads at most {positions} positions "
                          f"({positions_note(config)}); pass --block_size {positions} or less")
    if data_args.block_size > limit:
        logger.warning("--block_size %d is beyond the tokenizer's model_max_length %d: blocks of %d tokens",
                       data_args.block_size, limit, limit)
        return limit
    return data_args.block_size


# -- model -------------------------------------------------------------------------------------------
def build(run: Run) -> None:
    """Config, tokenizer, the blocks of every split (too little text fails here, before the model is loaded), then
    the model."""
    model_args, data_args, training_args = run.model_args, run.data_args, run.training_args
    config_path = model_args.config_name or model_args.model_name_or_path
    config = load_config(config_path, cache_dir=model_args.cache_dir)
    check_causal_model(model_args, data_args.block_size)  # a Hub config read only now (from the cache) too
    tokenizer_path = model_args.tokenizer_name or model_args.model_name_or_path
    tokenizer = load_tokenizer(tokenizer_path, model_args.cache_dir)
    block_size = choose_block_size(data_args, tokenizer, config)
    prompt = min(data_args.latency_prompt_tokens, block_size)
    positions = readable_positions(config)
    if data_args.latency_repeats and positions and prompt + data_args.latency_new_tokens > positions:
        raise RecipeError(f"--latency_prompt_tokens {prompt} + --latency_new_tokens {data_args.latency_new_tokens} "
                          f"needs {prompt + data_args.latency_new_tokens} positions, and the model reads at most "
                          f"{positions} ({positions_note(config)}): pass fewer, or --latency_repeats 0")

    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_test_samples}
    datasets, tokens = {}, {}
    for split, rows in run.splits.items():
        dataset, tokens[split] = blocks(tokenizer, rows["text"], block_size, _source(data_args, split))
        datasets[split] = first_blocks(dataset, limits[split])
    logger.info("blocks of %d tokens: %s (tokens: %s)", block_size, {k: len(v) for k, v in datasets.items()}, tokens)

    model = pretrained_or_new(AutoModelForCausalLM, model_args, config, tokenizer, tokenizer_path)
    data_args.block_size = block_size  # what a checkpoint records and a resume compares: the size used
    default_seq_len = PruningArguments.__dataclass_fields__["pruning_seq_len"].default
    if training_args.pruning_seq_len == default_seq_len and block_size != default_seq_len:
        training_args.pruning_seq_len = block_size
        logger.info("--pruning_seq_len %d: FLOPs are counted at the block size", block_size)
    time_latency_as_reported(training_args, prompt, data_args.latency_new_tokens)

    run.model, run.processing_class = model, tokenizer
    if "test" in run.splits:  # read again through a deployed copy's tokenizer
        run.texts = {"test": list(run.splits["test"]["text"])}
    run.datasets = datasets
    run.splits = datasets  # results.json's "samples": blocks per split
    run.data_collator = default_data_collator
    run.max_input_length = block_size
    run.task_results.update({"block_size": block_size, "tokens": tokens,
                             "blocks": {split: len(rows) for split, rows in datasets.items()},
                             "latency": {"prompt_tokens": prompt, "new_tokens": data_args.latency_new_tokens}})


def time_latency_as_reported(training_args, prompt: int, new_tokens: int) -> None:
    """Under --pruning_target_type latency, the table that steers pruning times ``generate`` as the reported latency
    does (--latency_prompt_tokens, --latency_new_tokens) where --pruning_latency_seq_len and
    --pruning_generation_tokens are left at their defaults (a whole block as the prompt, 16 tokens)."""
    if training_args.pruning_target_type != "latency":
        return
    fields = PruningArguments.__dataclass_fields__
    if training_args.pruning_latency_seq_len == fields["pruning_latency_seq_len"].default:
        training_args.pruning_latency_seq_len = prompt
    if training_args.pruning_generation_tokens == fields["pruning_generation_tokens"].default:
        training_args.pruning_generation_tokens = new_tokens
    logger.info("latency table: generate of %d tokens after a prompt of %d, as the latency is reported",
                training_args.pruning_generation_tokens, training_args.pruning_latency_seq_len)


# -- scores ------------------------------------------------------------------------------------------
def perplexity(loss) -> float | None:
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def score_test(trainer, dataset, run: Run) -> dict:
    """The mean loss per predicted token of the test blocks (every block is as long: the mean over blocks) and its
    exp, the perplexity."""
    with scoring_every_row(trainer, dataset):
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="test")
    loss = metrics.get("test_loss")
    metrics["test_perplexity"] = perplexity(loss)
    return {"values": {"loss": loss, "perplexity": metrics["test_perplexity"]}, "metrics": metrics}


def block_loss(model, dataset, batch_size: int) -> float:
    """The mean of the blocks' losses of ``model`` in a plain loop (the deployed copies, on the saving process)."""
    total, rows = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = default_data_collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            size = len(batch["input_ids"])
            total += float(model(**batch).loss) * size
            rows += size
    return total / rows


def score_deployed(run: Run, model, tokenizer) -> dict:
    """Test loss and perplexity of a deployed copy on the test blocks, read through its own tokenizer; a copy whose
    smaller vocabulary splits the test text into other tokens is not scored (its loss per token does not compare
    with the pruned model's)."""
    dataset = run.datasets["test"]
    if tokenizer is not run.processing_class:
        texts, original = run.texts["test"], run.processing_class
        own = [tokenizer.convert_ids_to_tokens(int(i)) for i in token_stream(tokenizer, texts)]
        read = [original.convert_ids_to_tokens(int(i)) for i in token_stream(original, texts)]
        if own != read:
            raise NotScored(f"its smaller vocabulary splits the test text into {len(own)} tokens where the pruned "
                            f"model reads {len(read)} (or into other ones), so its loss per token does not compare "
                            "with the pruned model's")
        dataset, _ = blocks(tokenizer, texts, run.task_results["block_size"], "the test texts")
        dataset = first_blocks(dataset, run.data_args.max_test_samples)
    loss = block_loss(model, dataset, run.training_args.per_device_eval_batch_size)
    return {"loss": loss, "perplexity": perplexity(loss)}


def latency_prompt(run: Run) -> list[int]:
    split = "test" if "test" in run.datasets else "validation"
    return list(run.datasets[split][0]["input_ids"][:run.task_results["latency"]["prompt_tokens"]])


def latency(dense, pruned, run: Run) -> dict:
    """Greedy ``generate`` of exactly --latency_new_tokens tokens after the prompt, batch 1, dense and pruned timed
    alternately (:class:`GenerateExactly`: a model that would end earlier does the same decoding work)."""
    new_tokens = run.data_args.latency_new_tokens
    device = next(pruned.parameters()).device
    prompt = torch.tensor([latency_prompt(run)], device=device)
    inputs = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}
    eos = getattr(pruned.generation_config, "eos_token_id", None)
    if getattr(pruned.generation_config, "pad_token_id", None) is None and eos is not None:
        inputs["pad_token_id"] = eos if isinstance(eos, int) else list(eos)[0]  # no padding: said, not warned about
    modules = {"dense": GenerateExactly(dense.to(device).eval(), new_tokens),
               "pruned": GenerateExactly(pruned.eval(), new_tokens)}
    timings = compare_latency(modules, inputs, repeats=run.data_args.latency_repeats, warmup=2)
    logger.info("latency:\n%s", format_latency(timings, title=f"generate, batch 1, {prompt.shape[1]} + {new_tokens} "
                                                              "tokens"))
    return {"label": f"generate latency b1, {prompt.shape[1]}+{new_tokens} tokens", "batch_size": 1,
            "prompt_tokens": int(prompt.shape[1]), "new_tokens": new_tokens,
            "threads": timings["dense"]["threads"], "results": timings}


def card_lines(run: Run) -> list[str]:
    """The card's note on what the loss and perplexity are measured on."""
    size = run.task_results.get("block_size")
    if not size:
        return []
    return ["", "## Blocks", "",
            f"Trained and scored on the texts concatenated and cut into blocks of {size} tokens (`--block_size`): the "
            "loss is the mean cross-entropy of each token given the ones before it in its block, the perplexity its "
            "exp."]


def validate(run: Run) -> None:
    run.data_files = validate_args(run.model_args, run.data_args, run.training_args)
    check_causal_model(run.model_args, run.data_args.block_size)
    run.model_paths = [run.model_args.model_name_or_path, run.model_args.config_name, run.model_args.tokenizer_name]


def format_value(name: str, value) -> str:
    return format_metric(value, 2 if name == "perplexity" else 4)


TASK = Task(
    name="language_modeling",
    parse_args=parse_args,
    validate=validate,
    load_data=load_data,
    build=build,
    test_metrics=TEST_METRICS,
    format_value=format_value,
    score=score_test,
    latency=latency,
    score_deployed=score_deployed,
    # how the validation blocks are cut (a resume under another block size compares losses of other blocks)
    metric_options=("block_size", "text_column_name"),
    metric_options_set_in_build=("block_size",),  # chosen from the tokenizer and model where not given
    # FLOPs are counted at the block size where --pruning_seq_len is left at its default; the latency table times
    # what the reported latency times
    arguments_set_in_build=("pruning_seq_len", "pruning_latency_seq_len", "pruning_generation_tokens"),
    card_lines=card_lines,
)


main = TASK.main  # main(argv) runs the recipe and returns what it writes to results.json
cli = TASK.cli

if __name__ == "__main__":
    cli()
