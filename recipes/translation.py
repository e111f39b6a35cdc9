#!/usr/bin/env python
"""Fine-tune and prune a translation model in one run (in the shape of transformers' ``run_translation.py``).

The model is fine-tuned with :class:`hf_adaprune.AdaptivePruningSeq2SeqTrainer`, which
prunes attention heads (encoder self-, decoder self- and cross-attention) and FFN
neurons while it trains, steered by BLEU (or chrF) of greedy/beam translations of the
validation set; the pruned model is saved in the Hub format, scored on the test set
and compared with the dense model (BLEU, chrF, parameters, FLOPs, generate latency).

Run it from the repository root, with a config file (YAML or JSON) or with flags::

    python recipes/translation.py recipes/configs/translation_marian_multi30k.yaml \\
        --model_name_or_path outputs/marian_multi30k/dense
    python -m recipes.translation recipes/configs/translation_marian_multi30k.yaml --model_name_or_path DENSE
    python recipes/translation.py --model_name_or_path Helsinki-NLP/opus-mt-en-de \\
        --dataset_name wmt16 --dataset_config_name de-en --source_lang en --target_lang de \\
        --output_dir out --max_steps 2000 --pruning_eval_samples 500
    python recipes/translation.py --config_name my_marian_config/ --tokenizer_name my_tokenizer/ \\
        --train_source_file train.en.gz --train_target_file train.de.gz \\
        --validation_source_file val.en.gz --validation_target_file val.de.gz --output_dir out

Arguments are those of ``ModelArguments``, ``DataTrainingArguments`` (below) and
:class:`hf_adaprune.Seq2SeqPruningArguments` (``Seq2SeqTrainingArguments`` plus the
``--pruning_*`` options). A config file may be followed by flags, which override its
values. The recipe's own defaults differ from the library's in three places:
``--pruning_metric sacrebleu``, ``--pruning_tolerance 1.0`` (BLEU points, absolute)
and ``--predict_with_generate true`` (always switched on: every evaluation, test
included, scores generated translations).

Data: ``--dataset_name`` (anything ``datasets.load_dataset`` loads with a
``translation`` column of ``{lang: text}`` dicts, as WMT; splits "train",
"validation", "test"), with ``--source_lang`` / ``--target_lang``; or line-aligned
parallel text files, one sentence a line, plain or compressed (.gz, .bz2, .xz):
``--train_source_file`` / ``--train_target_file``, ``--validation_*`` and ``--test_*``.
Files are checked before any model is loaded: a source file and its target file
must have the same number of lines, and at most ``--max_empty_fraction`` of the pairs
may have an empty side (those pairs are dropped; more means misaligned or broken
files, and the run stops).

T5 needs a task prefix on every source sentence (``--source_prefix "translate
English to German: "``); the recipe warns when a T5 model gets none. Tokenizers with
language codes (mBART, mBART-50, M2M100, NLLB) need ``--source_lang_code`` /
``--target_lang_code`` (e.g. ``en_XX`` / ``de_DE``): the data is tagged with them and
the decoder starts each translation with the target's code.

Outputs in ``--output_dir``: the pruned model (``model.safetensors``, ``config.json``
with the ``adaprune`` record, tokenizer, model card), ``pruning_report.json`` and
plots from the trainer, ``results.json`` with the dense/pruned comparison.

The dense test BLEU is that of the model at the pruning reference (after
``--pruning_warmup_steps`` of fine-tuning); the pruned one after training. With
``--dense_control true`` the dense model is also fine-tuned for the same steps without
pruning (``OUTPUT_DIR/dense_control``) and the table compares the pruned model with it.
Latency: ``generate`` on one test (else validation) sentence at batch size 1, the dense
control (else the dense model as loaded) vs the pruned model, timed alternately in one
process.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
)

from hf_adaprune import Seq2SeqPruningArguments
from hf_adaprune.families import positions_note, readable_positions
from hf_adaprune.metrics import headline_value, load_metric
from hf_adaprune.reporting.latency import GenerateModule, compare_latency, format_latency
from hf_adaprune.task_metrics import decode_ids, generation_metrics
from recipes.arguments import (
    DataArguments,
    ModelSourceArguments,
    RecipeError,
    check_metric,
    check_minimum,
    check_model_source,
    check_unused_flags,
    load_named_dataset,
    no_validation_message,
    recipe_argv,
    require_file,
    resolve_package_path,
)
from recipes.loading import (align_vocabulary, apply_generation_config, load_config, load_tokenizer,
                             pretrained_or_new)
from recipes.deploy import NotScored, runtime_of
from recipes.results import format_metric
from recipes.skeleton import Run, Task, combine_metrics, map_splits, scoring_every_row, subsample
from recipes.tables import read_text

logger = logging.getLogger("hf_adaprune.recipes.translation")

SPLITS = ("train", "validation", "test")
# always computed (besides the steering metric): both are cheap next to generation
REPORTED_METRICS = ("sacrebleu", "chrf")
CLASSIFICATION_METRICS = {"accuracy", "f1", "precision", "recall", "matthews_correlation"}
# the recipe's defaults where they differ from Seq2SeqPruningArguments'; a config file or flags override them
RECIPE_DEFAULTS = ["--pruning_metric", "sacrebleu", "--pruning_tolerance", "1.0"]
T5_TYPES = ("t5", "mt5", "umt5", "longt5")


@dataclass
class ModelArguments(ModelSourceArguments):
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained model: Hub id (e.g. Helsinki-NLP/opus-mt-en-de) or local folder. Leave it out "
                          "and give --config_name and --tokenizer_name to train a model from scratch."},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id written as base_model in the model card. Default: --model_name_or_path."},
    )
    layerdrop: float = field(
        default=0.0,
        metadata={"help": "encoder_layerdrop and decoder_layerdrop of a model that has them (M2M100's config says "
                          "0.05): 0 while pruning, as the gradient scores need every layer in every step."},
    )


@dataclass
class DataTrainingArguments(DataArguments):
    dataset_name: str | None = field(
        default=None, metadata={"help": "Dataset for datasets.load_dataset with a 'translation' column (as WMT)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name, e.g. de-en."})
    source_lang: str | None = field(
        default=None, metadata={"help": "Source language key of the translation dicts (needed with --dataset_name)."}
    )
    target_lang: str | None = field(
        default=None, metadata={"help": "Target language key of the translation dicts (needed with --dataset_name)."}
    )
    source_lang_code: str | None = field(
        default=None, metadata={"help": "For tokenizers that tag text with language codes (mBART, mBART-50, M2M100, "
                                        "NLLB): the sources' code, e.g. en_XX (mBART), en (M2M100), eng_Latn (NLLB)."}
    )
    target_lang_code: str | None = field(
        default=None, metadata={"help": "For tokenizers with language codes: the targets' code, e.g. de_DE, de, "
                                        "deu_Latn; the decoder is trained on it and generation starts with it."}
    )
    train_source_file: str | None = field(default=None, metadata={"help": "Training sources, one a line (.gz ok)."})
    train_target_file: str | None = field(default=None, metadata={"help": "Training targets, line-aligned."})
    validation_source_file: str | None = field(
        default=None, metadata={"help": "Validation sources; the pruning metric is measured on this set."}
    )
    validation_target_file: str | None = field(default=None, metadata={"help": "Validation targets, line-aligned."})
    test_source_file: str | None = field(default=None, metadata={"help": "Test sources: dense and pruned are scored."})
    test_target_file: str | None = field(default=None, metadata={"help": "Test targets, line-aligned."})
    source_prefix: str | None = field(
        default=None, metadata={"help": "Prepended to every source sentence (T5: 'translate English to German: ')."}
    )
    max_source_length: int = field(
        default=128, metadata={"help": "Source sentences are truncated to this many tokens."}
    )
    max_target_length: int = field(
        default=128,
        metadata={"help": "Targets are truncated to this many tokens; also the generation length limit unless "
                          "--generation_max_length is given."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use a random subset of the training pairs."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Use a random subset of the validation pairs (see also --pruning_eval_samples)."},
    )
    max_test_samples: int | None = field(default=None, metadata={"help": "Use the first N test pairs."})
    num_beams: int | None = field(
        default=None,
        metadata={"help": "Beams for every evaluation's generate (default: --generation_num_beams, else the model's "
                          "generation config, usually 1 = greedy)."},
    )
    sequence_distillation: bool = field(
        default=False,
        metadata={"help": "Prune on the model's own translations of the training sources (as loaded, before any "
                          "training; greedy or --num_beams, at most --generation_max_length tokens) instead of the "
                          "reference targets: sequence-level distillation, which helps a model that loses decoder "
                          "layers. The dense control still trains on the references. Every process translates the "
                          "whole training set once, before training."},
    )
    max_empty_fraction: float = field(
        default=0.01,
        metadata={"help": "Pairs with an empty source or target are dropped; if more than this fraction of a split "
                          "is such pairs, the run stops (the files are probably misaligned or broken)."},
    )
    latency_repeats: int = field(
        default=10, metadata={"help": "Alternating repeats for the batch-1 generate latency comparison (0 skips it)."}
    )


# -- arguments ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataTrainingArguments, Seq2SeqPruningArguments) from flags or a config file (+ flags)."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqPruningArguments))
    # recipe defaults first: argparse keeps the last value of a repeated flag
    argv = RECIPE_DEFAULTS + recipe_argv(argv, parser) + ["--predict_with_generate", "true"]
    model_args, data_args, training_args, unused = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True)
    check_unused_flags(unused, "translation")
    return model_args, data_args, training_args


def _file_pairs():
    return [(split, f"{split}_source_file", f"{split}_target_file") for split in SPLITS]


def validate_args(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> dict[str, str]:
    """Checks that need no data and no model; returns the data files given."""
    check_model_source(model_args)

    files = {}
    for split, source, target in _file_pairs():
        src, tgt = getattr(data_args, source), getattr(data_args, target)
        if (src is None) != (tgt is None):
            given, missing = (source, target) if src is not None else (target, source)
            raise RecipeError(f"--{given} needs --{missing}: parallel data comes as a line-aligned pair of files")
        for name, path in ((source, src), (target, tgt)):
            if path is not None:
                path = resolve_package_path(path, f"--{name}")
                setattr(data_args, name, path)
                require_file(path, f"--{name}")
                files[name] = path
    if data_args.dataset_name is None and data_args.train_source_file is None:
        raise RecipeError("no training data: give --dataset_name or --train_source_file and --train_target_file")
    if data_args.dataset_name is not None and files:
        raise RecipeError("give --dataset_name or parallel text files (--train_source_file, ...), not both")
    if data_args.dataset_name is not None and not (data_args.source_lang and data_args.target_lang):
        raise RecipeError("--dataset_name needs --source_lang and --target_lang: the keys of its translation dicts, "
                          "e.g. --source_lang en --target_lang de")
    if data_args.train_source_file is not None and data_args.validation_source_file is None:
        raise RecipeError(_no_validation_message(training_args))
    if data_args.source_lang and data_args.source_lang == data_args.target_lang:
        raise RecipeError(f"--source_lang and --target_lang are both {data_args.source_lang!r}")
    if data_args.dataset_card_name is None:
        data_args.dataset_card_name = data_args.dataset_name
    check_minimum(data_args, ("max_source_length", "max_target_length"), 1)
    if not 0.0 <= data_args.max_empty_fraction < 1.0:
        raise RecipeError(f"--max_empty_fraction must be in [0, 1); got {data_args.max_empty_fraction}")
    check_minimum(data_args, ("num_beams",), 1)
    if data_args.num_beams is not None and training_args.generation_num_beams not in (None, data_args.num_beams):
        raise RecipeError(f"--num_beams {data_args.num_beams} and --generation_num_beams "
                          f"{training_args.generation_num_beams} both set the beams of every evaluation; give one of "
                          "them (a config file may set the other)")
    check_minimum(data_args, ("latency_repeats",), 0)
    check_minimum(data_args, ("max_train_samples", "max_eval_samples", "max_test_samples"), 1)
    check_metric(training_args.pruning_metric, "translation", (*REPORTED_METRICS, "bleu"), CLASSIFICATION_METRICS)
    if training_args.pruning_metric == "bleu" and training_args.pruning_tolerance_type == "absolute" \
            and training_args.pruning_tolerance >= 1.0:
        raise RecipeError(f"--pruning_metric bleu is on a 0-1 scale, so --pruning_tolerance "
                          f"{training_args.pruning_tolerance:g} (absolute) allows any drop and every pruning step "
                          "would be kept: give it on that scale (0.01 = one BLEU point), or steer by sacrebleu (0-100)")
    return files


def _no_validation_message(training_args) -> str:
    return no_validation_message(training_args, "give --validation_source_file and --validation_target_file")


# -- data ----------------------------------------------------------------------------------------------
def read_lines(path: str, what: str = "file") -> list[str]:
    """Lines of a plain or compressed (.gz, .bz2, .xz) UTF-8 text file, without line endings.

    Lines end at "\\n" only (as ``wc -l`` counts them), so a stray carriage return or
    Unicode line separator inside a sentence does not shift the alignment.
    """
    lines = read_text(path, what).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's last line break
    return [line.removesuffix("\r") for line in lines]


def check_empty_pairs(empty_source, empty_target, split: str, max_fraction: float, where: tuple[str, str],
                      unit: str = "line") -> np.ndarray | None:
    """Indices of the pairs to keep when some have an empty side (None: all are kept).

    Fails if more than ``max_fraction`` of the pairs have an empty (or blank) side:
    that many means misaligned or broken data rather than a few stray blank lines.
    """
    empty_source, empty_target = np.asarray(empty_source, dtype=bool), np.asarray(empty_target, dtype=bool)
    empty = empty_source | empty_target
    count, n = int(empty.sum()), len(empty)
    if count == 0:
        return None
    fraction = count / n
    if fraction > max_fraction:
        first = int(np.argmax(empty))
        side = where[0] if empty_source[first] else where[1]
        raise RecipeError(
            f"{split}: {count} of {n} pairs ({fraction:.1%}) have an empty side ({int(empty_source.sum())} empty in "
            f"{where[0]}, {int(empty_target.sum())} in {where[1]}; first at {unit} {first + 1} of {side}), more "
            f"than --max_empty_fraction {max_fraction}: the data is probably misaligned or broken "
            f"(raise --max_empty_fraction to drop those pairs and go on)"
        )
    logger.warning("%s: dropped %d of %d pairs with an empty side (%d empty in %s, %d in %s)", split, count, n,
                   int(empty_source.sum()), where[0], int(empty_target.sum()), where[1])
    return np.flatnonzero(~empty)


def _blank(texts) -> list[bool]:
    return [not t.strip() for t in texts]


def read_parallel(source_file: str, target_file: str, split: str, max_empty_fraction: float):
    sources = read_lines(source_file, f"--{split}_source_file")
    targets = read_lines(target_file, f"--{split}_target_file")
    if len(sources) != len(targets):
        raise RecipeError(
            f"{split}: the source and target files must be line-aligned, but {source_file} has {len(sources):,} "
            f"lines and {target_file} has {len(targets):,}"
        )
    if not sources:
        raise RecipeError(f"{split}: {source_file} and {target_file} are empty")
    keep = check_empty_pairs(_blank(sources), _blank(targets), split, max_empty_fraction, (source_file, target_file))
    if keep is not None:
        sources, targets = [sources[i] for i in keep], [targets[i] for i in keep]
    return sources, targets


TRANSLATION_LAYOUT = ('JSON lines, one {"translation": {"en": "...", "de": "..."}} a line, in train.jsonl, '
                      'validation.jsonl (and test.jsonl) of one folder passed as --dataset_name')


def check_translation_column(dataset, split: str, dataset_name: str) -> None:
    """The ``translation`` column must hold {lang: text} records (a struct, or ``datasets.Translation``): text (a CSV
    cell holding a dict's repr, as pandas' ``to_csv`` writes a dict column) or lists were read as languages."""
    import datasets
    from datasets import Sequence, Translation, TranslationVariableLanguages, Value

    # datasets >= 4 names a list feature List (and LargeList); 3.x has Sequence alone, or a Python list of a feature
    lists = (list, Sequence, *(getattr(datasets, name) for name in ("List", "LargeList") if hasattr(datasets, name)))
    feature = dataset.features["translation"]
    if isinstance(feature, (dict, Translation)):
        return
    if type(feature).__name__ == "Json":  # datasets 5 reads records whose keys differ (a language missing) as Json
        odd = next((i for i, value in enumerate(dataset["translation"]) if not isinstance(value, dict)), None)
        if odd is None:
            return  # a missing language is an empty side (--max_empty_fraction)
        found = f"a {type(dataset[odd]['translation']).__name__} in row {odd + 1}"
        raise RecipeError(f"--dataset_name {dataset_name}: the {split} split's 'translation' column holds {found}, "
                          f"not a {{lang: text}} record: write the data as {TRANSLATION_LAYOUT}")
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        first = dataset[0]["translation"] if len(dataset) else None
        found = "text" + (" (a dict written as text, as pandas' to_csv writes one)"
                          if isinstance(first, str) and first.lstrip().startswith("{") else "")
    elif isinstance(feature, lists):
        found = "lists"
    elif isinstance(feature, TranslationVariableLanguages):
        found = "TranslationVariableLanguages records ({'language': [...], 'translation': [...]})"
    else:
        found = f"{type(feature).__name__} values"
    raise RecipeError(f"--dataset_name {dataset_name}: the {split} split's 'translation' column holds {found}, not "
                      f"{{lang: text}} records: write the data as {TRANSLATION_LAYOUT}")


def load_raw_datasets(data_args: DataTrainingArguments, model_args: ModelArguments) -> DatasetDict:
    """Splits "train", "validation" and, where given, "test", each with columns "source" and "target"."""
    raw = DatasetDict()
    if data_args.dataset_name is not None:
        loaded = load_named_dataset(data_args, model_args.cache_dir)
        if os.path.isfile(data_args.dataset_name) and "validation" not in loaded:
            raise RecipeError(f"--dataset_name {data_args.dataset_name}: a data file is read as the train split "
                              f"only, and the run needs a validation split: put the splits in one folder as "
                              f"train.jsonl and validation.jsonl (and test.jsonl) and pass the folder")
        for required in ("train", "validation"):
            if required not in loaded:
                raise RecipeError(f"--dataset_name {data_args.dataset_name}: no {required!r} split; splits: "
                                  f"{sorted(loaded)}")
        src, tgt = data_args.source_lang, data_args.target_lang
        for split in SPLITS:
            if split not in loaded:
                continue
            dataset = loaded[split]
            if "translation" not in dataset.column_names:
                raise RecipeError(f"--dataset_name {data_args.dataset_name}: the {split} split has no 'translation' "
                                  f"column; columns: {', '.join(dataset.column_names)}. Write the data as "
                                  f"{TRANSLATION_LAYOUT}, or as parallel text files (--train_source_file, "
                                  "--train_target_file, ...: one sentence a line)")
            check_translation_column(dataset, split, data_args.dataset_name)
            # every row's languages (a Json column's records may each lack one: those are empty sides)
            languages = sorted({lang for record in dataset["translation"] for lang in (record or {})})
            for option, lang in (("source_lang", src), ("target_lang", tgt)):
                if lang not in languages:
                    raise RecipeError(f"--{option} {lang!r} is not a language of {data_args.dataset_name} "
                                      f"({split}); languages: {', '.join(languages)}")

            def to_pairs(batch):
                pairs = [p or {} for p in batch["translation"]]
                return {"source": [p.get(src) or "" for p in pairs], "target": [p.get(tgt) or "" for p in pairs]}

            dataset = dataset.map(to_pairs, batched=True, remove_columns=dataset.column_names,
                                  desc=f"reading {split}")
            flags = dataset.map(lambda b: {"s": _blank(b["source"]), "t": _blank(b["target"])}, batched=True,
                                remove_columns=dataset.column_names).with_format("numpy")
            keep = check_empty_pairs(flags["s"], flags["t"], split, data_args.max_empty_fraction,
                                     (f"{src} ({data_args.dataset_name})", f"{tgt} ({data_args.dataset_name})"),
                                     unit="row")
            raw[split] = dataset if keep is None else dataset.select(keep)
    else:
        for split, source, target in _file_pairs():
            src_file, tgt_file = getattr(data_args, source), getattr(data_args, target)
            if src_file is not None:
                sources, targets = read_parallel(src_file, tgt_file, split, data_args.max_empty_fraction)
                raw[split] = Dataset.from_dict({"source": sources, "target": targets})
    return raw


def source_prefix_warning(config, data_args: DataTrainingArguments) -> str | None:
    """A warning for T5-family models without --source_prefix (they were pre-trained with task prefixes)."""
    if getattr(config, "model_type", None) in T5_TYPES and not data_args.source_prefix:
        src, tgt = data_args.source_lang or "English", data_args.target_lang or "German"
        return (f"a {config.model_type} model without --source_prefix: T5 was trained with task prefixes, e.g. "
                f"--source_prefix 'translate {src} to {tgt}: ' (for en->de: 'translate English to German: ')")
    return None


def tokenize(raw: DatasetDict, tokenizer, data_args: DataTrainingArguments) -> DatasetDict:
    prefix = data_args.source_prefix or ""

    def preprocess(batch):
        encoded = tokenizer([prefix + s for s in batch["source"]], max_length=data_args.max_source_length,
                            truncation=True)
        labels = tokenizer(text_target=batch["target"], max_length=data_args.max_target_length, truncation=True)
        encoded["labels"] = labels["input_ids"]
        return encoded

    return map_splits(raw, preprocess)


# -- model -----------------------------------------------------------------------------------------------
def align_config_with_tokenizer(config, tokenizer) -> list[str]:
    """For a model built from a config: vocabulary size and special token ids as the tokenizer has them.

    Returns what changed. The decoder start token follows the pad token (Marian, T5)
    or the eos token (BART) as it did in the config.
    """
    old_pad, old_eos = config.pad_token_id, config.eos_token_id
    changes = align_vocabulary(config, tokenizer)
    start = getattr(config, "decoder_start_token_id", None)
    new_start = {old_pad: config.pad_token_id, old_eos: config.eos_token_id}.get(start, start)
    if new_start != start:
        changes.append(f"decoder_start_token_id {start} -> {new_start}")
        config.decoder_start_token_id = new_start
    if getattr(config, "forced_eos_token_id", None) not in (None, config.eos_token_id):
        changes.append(f"forced_eos_token_id {config.forced_eos_token_id} -> {config.eos_token_id}")
        config.forced_eos_token_id = config.eos_token_id
    return changes


def load_model_and_tokenizer(model_args: ModelArguments, data_args: DataTrainingArguments):
    config = load_config(model_args.config_name or model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    for field_name in ("encoder_layerdrop", "decoder_layerdrop"):
        if hasattr(config, field_name):
            setattr(config, field_name, model_args.layerdrop)
    if not getattr(config, "is_encoder_decoder", False):
        raise RecipeError(f"{model_args.config_name or model_args.model_name_or_path} is a {config.model_type} "
                          f"model, not an encoder-decoder (Marian, BART, mBART, M2M100, T5, ...)")
    warning = source_prefix_warning(config, data_args)
    if warning:
        logger.warning(warning)
    tokenizer_path = model_args.tokenizer_name or model_args.model_name_or_path
    tokenizer = load_tokenizer(tokenizer_path, model_args.cache_dir)
    if tokenizer.pad_token_id is None:
        raise RecipeError(f"the tokenizer {model_args.tokenizer_name or model_args.model_name_or_path} has no pad "
                          f"token; seq2seq batches need one")
    model = pretrained_or_new(AutoModelForSeq2SeqLM, model_args, config, tokenizer, tokenizer_path,
                              align=align_config_with_tokenizer)
    generation = model.generation_config
    if getattr(generation, "decoder_start_token_id", None) is None:
        generation.decoder_start_token_id = config.decoder_start_token_id
    set_language_codes(model, tokenizer, data_args)
    return model, tokenizer


def _language_code_id(tokenizer, code: str) -> int | None:
    if hasattr(tokenizer, "get_lang_id"):  # M2M100: the code "en" is the token "__en__"
        try:
            return tokenizer.get_lang_id(code)
        except KeyError:
            return None
    token_id = tokenizer.convert_tokens_to_ids(code)
    return None if token_id is None or token_id == tokenizer.unk_token_id else token_id


def set_language_codes(model, tokenizer, data_args: DataTrainingArguments) -> None:
    """Tokenizers with language codes (mBART, mBART-50, M2M100, NLLB) tag sources and targets with them, and the
    decoder must start each translation with the target's code: the tokenizer's ``src_lang`` / ``tgt_lang`` and the
    model's generation are set from --source_lang_code / --target_lang_code (without them the targets were tagged
    with the tokenizer's default source code while generation started with another)."""
    codes = {"source_lang_code": data_args.source_lang_code, "target_lang_code": data_args.target_lang_code}
    given = [f"--{name}" for name, code in codes.items() if code]
    if not hasattr(tokenizer, "src_lang"):
        if given:
            raise RecipeError(f"{' and '.join(given)}: {type(tokenizer).__name__} has no language codes (they are "
                              "for mBART, mBART-50, M2M100 and NLLB tokenizers); leave them out")
        return
    missing = [f"--{name}" for name, code in codes.items() if not code]
    if missing:
        raise RecipeError(f"{type(tokenizer).__name__} tags sources and targets with language codes: pass "
                          f"{' and '.join(missing)} (e.g. en_XX and de_DE for mBART, en and de for M2M100, eng_Latn "
                          f"and deu_Latn for NLLB); left unset, the targets would be tagged {tokenizer.src_lang!r}")
    ids = {name: _language_code_id(tokenizer, code) for name, code in codes.items()}
    for name, code in codes.items():
        if ids[name] is None:
            raise RecipeError(f"--{name} {code!r} is not a language code of {type(tokenizer).__name__}")
    tokenizer.src_lang, tokenizer.tgt_lang = codes["source_lang_code"], codes["target_lang_code"]
    target_id = ids["target_lang_code"]
    target = tokenizer(text_target="a").input_ids
    if target[:1] == [target_id]:  # mBART-50, M2M100, NLLB: "de_DE ... </s>"; generation starts "</s> de_DE"
        model.generation_config.forced_bos_token_id = target_id
    elif target[-1:] == [target_id]:  # mBART: "... </s> de_DE"; its shift puts the code first in the decoder
        model.config.decoder_start_token_id = model.generation_config.decoder_start_token_id = target_id
    else:
        raise RecipeError(f"{type(tokenizer).__name__} does not put --target_lang_code {codes['target_lang_code']!r} "
                          f"at either end of a target ({tokenizer.convert_ids_to_tokens(target)}); this recipe knows "
                          "the mBART, mBART-50, M2M100 and NLLB layouts")


# -- metrics -----------------------------------------------------------------------------------------------
def build_compute_metrics(pruning_metric: str, tokenizer):
    """sacrebleu and chrF of the decoded translations, the steering metric if it is another one, and gen_len."""
    names = list(REPORTED_METRICS) + ([pruning_metric] if pruning_metric not in (*REPORTED_METRICS, "loss") else [])
    generated_metrics = combine_metrics([generation_metrics(name, tokenizer) for name in names])

    def compute_metrics(eval_pred):
        out = generated_metrics(eval_pred)
        predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        predictions = np.asarray(predictions)
        generated = (predictions != tokenizer.pad_token_id) & (predictions >= 0)
        out["gen_len"] = float(generated.sum(-1).mean()) if predictions.size else 0.0
        return out

    return compute_metrics


def score_translations(predictions, references: list[str], tokenizer) -> dict[str, float]:
    """sacrebleu and chrF of generated ids against the raw reference sentences.

    The trainer's metrics compare with the references as the tokenizer gives them
    back (decoded label ids: normalised, unknown characters dropped, truncated to
    --max_target_length); this scores against the text of the target file, the
    number to report.
    """
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    hypotheses = decode_ids(predictions, tokenizer)
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} translations for {len(references)} references")
    out = {}
    for name in REPORTED_METRICS:
        result = load_metric(name).compute(predictions=hypotheses, references=[[r] for r in references])
        out[name] = headline_value(name, result)
    return out


# -- latency -----------------------------------------------------------------------------------------------
def median_length_sentence(sentences: list[str], tokenizer, max_length: int) -> str:
    """The sentence of median token length: a typical input for batch-1 latency."""
    lengths = [len(ids) for ids in tokenizer(sentences, max_length=max_length, truncation=True)["input_ids"]]
    return sentences[sorted(range(len(sentences)), key=lengths.__getitem__)[len(sentences) // 2]]


def measure_generate_latency(dense, pruned, tokenizer, sentences: list[str], data_args, generate_kwargs: dict,
                             repeats: int, warmup: int = 2) -> dict:
    """Median ``generate`` time of ``dense`` and ``pruned`` on ``sentences`` (one batch), timed alternately."""
    return measure_generate_latencies({"dense": dense, "pruned": pruned}, tokenizer, sentences, data_args,
                                      generate_kwargs, repeats, warmup)


def measure_generate_latencies(models: dict, tokenizer, sentences: list[str], data_args, generate_kwargs: dict,
                               repeats: int, warmup: int = 2) -> dict:
    """Median ``generate`` time of each of ``models`` ({name: model}, the first the reference of the speed-ups)
    on ``sentences`` (one batch), timed round-robin on equal decoding work: every model generates as many tokens
    as the first one does by itself (``output_length``: what each writes when free to stop; ``timed_length``: what
    each was timed writing), so a model that stops earlier does not look faster."""
    prefix = data_args.source_prefix or ""
    device = next(list(models.values())[-1].parameters()).device
    inputs = tokenizer([prefix + s for s in sentences], max_length=data_args.max_source_length, truncation=True,
                       padding=True, return_tensors="pt").to(device)
    # eval mode before the free-length run: a model left in training mode (a control with no test split to score
    # it, one built from --config_name) would stop where its dropout happens to let it
    free = {name: GenerateModule(model.to(device).eval(), **generate_kwargs) for name, model in models.items()}
    with torch.inference_mode():
        lengths = {name: int(m(**inputs).shape[-1]) for name, m in free.items()}
    timed_length = next(iter(lengths.values()))
    exact = {k: v for k, v in generate_kwargs.items() if k not in ("max_new_tokens", "min_new_tokens")}
    exact |= {"min_length": timed_length, "max_length": timed_length}  # the end of sequence waits for the length
    modules = {name: GenerateModule(model, **exact) for name, model in models.items()}
    timings = compare_latency(modules, dict(inputs), repeats=repeats, warmup=warmup)
    return {"batch_size": len(sentences), "source_tokens": int(inputs["attention_mask"].sum()),
            "output_length": lengths, "timed_length": timed_length, "generate_kwargs": generate_kwargs,
            "threads": next(iter(timings.values()))["threads"], "results": timings}


# -- the task ---------------------------------------------------------------------------------------------
def validate(run: Run) -> None:
    data_args, training_args = run.data_args, run.training_args
    run.data_files = validate_args(run.model_args, data_args, training_args)
    run.model_paths = [run.model_args.model_name_or_path, run.model_args.config_name, run.model_args.tokenizer_name]
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length
    if data_args.num_beams is not None:
        training_args.generation_num_beams = data_args.num_beams


def load_data(run: Run) -> None:
    """Read and check the parallel data before any model is loaded; subsample."""
    data_args, seed = run.data_args, run.training_args.seed
    raw = load_raw_datasets(data_args, run.model_args)
    if "validation" not in raw:
        raise RecipeError(_no_validation_message(run.training_args))
    raw["train"] = subsample(raw["train"], data_args.max_train_samples, seed)
    raw["validation"] = subsample(raw["validation"], data_args.max_eval_samples, seed)
    if "test" in raw:
        raw["test"] = subsample(raw["test"], data_args.max_test_samples, seed, shuffle=False)
    logger.info("data: %s pairs", {k: len(v) for k, v in raw.items()})
    run.splits = raw
    run.task_results = {
        "languages": {"source": data_args.source_lang, "target": data_args.target_lang,
                      "source_code": data_args.source_lang_code, "target_code": data_args.target_lang_code},
        "generation": {"max_length": run.training_args.generation_max_length,
                       "num_beams": run.training_args.generation_num_beams},
        "test_references": "raw target text",
        "source_prefix": data_args.source_prefix,
    }


def check_lengths(model, tokenizer, data_args: DataTrainingArguments, training_args) -> None:
    """Lengths the model can read, and room for the sentence after --source_prefix: before any training step."""
    if data_args.source_prefix:
        taken = len(tokenizer(data_args.source_prefix).input_ids)  # with the special tokens around it
        if taken >= data_args.max_source_length:
            raise RecipeError(f"--source_prefix {data_args.source_prefix!r} takes {taken} tokens (with the special "
                              f"tokens), --max_source_length {data_args.max_source_length} leaves no room for the "
                              f"sentence: raise --max_source_length")
    positions = readable_positions(model.config)
    # --generation_max_length: recipes.loading.check_generation_lengths, with the decoder's own limit
    lengths = {"max_source_length": data_args.max_source_length, "max_target_length": data_args.max_target_length}
    for name, value in lengths.items():
        if positions and value is not None and value > positions:
            raise RecipeError(f"--{name} {value}: the model reads at most {positions} positions "
                              f"({positions_note(model.config)}); pass --{name} {positions} or less")


def record_source_prefix(model, data_args: DataTrainingArguments) -> None:
    """--source_prefix in the config's ``task_specific_params``, where transformers' T5 configs hold theirs (and
    transformers 4's translation pipeline reads it): whoever loads the saved folder sees what to prefix sources with.
    Other entries are kept."""
    if not data_args.source_prefix:
        return
    # the key a translation_en_to_de pipeline looks up; without languages (parallel files) the plain task's
    task = f"translation_{data_args.source_lang}_to_{data_args.target_lang}" \
        if data_args.source_lang and data_args.target_lang else "translation"
    params = dict(getattr(model.config, "task_specific_params", None) or {})
    params[task] = {**params.get(task, {}), "prefix": data_args.source_prefix}
    model.config.task_specific_params = params


def beams(training_args, model) -> int:
    """The beams evaluations use: --generation_num_beams, else the generation config's, else generate's default
    (transformers 5 leaves a generation config's num_beams None for 1)."""
    return training_args.generation_num_beams or model.generation_config.num_beams or 1


def build(run: Run) -> None:
    model, tokenizer = load_model_and_tokenizer(run.model_args, run.data_args)
    record_source_prefix(model, run.data_args)
    # before the generation lengths: a --generation_max_length copied from an over-long --max_target_length (validate)
    # is refused naming the flag given
    check_lengths(model, tokenizer, run.data_args, run.training_args)
    apply_generation_config(model, run.training_args)
    # what evaluations use (max_length is --generation_max_length, set in validate)
    run.task_results["generation"]["num_beams"] = beams(run.training_args, model)
    run.model, run.processing_class, run.seq2seq = model, tokenizer, True
    run.compute_metrics = build_compute_metrics(run.training_args.pruning_metric, tokenizer)
    run.datasets = tokenize(run.splits, tokenizer, run.data_args)
    run.data_collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)


def before_training(run: Run) -> None:
    if run.data_args.sequence_distillation:  # after the checks of build and deploy: translating takes a while
        run.datasets["pruning_train"] = teacher_translations(run.model, run.datasets["train"], run)


def teacher_translations(model, dataset, run: Run):
    """``dataset`` with the model's own translations of its sources as labels, generated on the training device
    (the model goes back to the CPU it was loaded on)."""
    from hf_adaprune.sequence_distillation import sequence_distillation_targets

    training_args, started = run.training_args, time.time()
    num_beams = beams(training_args, model)
    logger.info("sequence distillation: translating the %d training sources with the model as loaded", len(dataset))
    try:
        translated = sequence_distillation_targets(
            model.to(training_args.device), dataset, batch_size=training_args.per_device_eval_batch_size,
            max_length=training_args.generation_max_length, num_beams=num_beams,
            progress=not training_args.disable_tqdm)
    finally:
        model.to("cpu")
    translated, empty = keep_references_for_empty_translations(translated, dataset, run.processing_class)
    changed = sum(a != b for a, b in zip(translated["labels"], dataset["labels"]))
    run.task_results["sequence_distillation"] = {
        "rows": len(dataset), "num_beams": num_beams, "max_length": training_args.generation_max_length,
        "rows_unlike_the_reference": changed, "empty_translations": empty,
        "minutes": round((time.time() - started) / 60, 2)}
    logger.info("sequence distillation: %d of %d translations differ from the references (%.1f min)", changed,
                len(dataset), (time.time() - started) / 60)
    return translated


def keep_references_for_empty_translations(translated, dataset, tokenizer):
    """(``translated``, how many of its label rows were empty) where an empty row (no token but special ones: a
    teacher that writes only <pad> or </s>) takes the reference's labels back. All of them empty: a RecipeError
    before training (an untrained teacher, or wrong pad / decoder start ids; a batch of empty label rows fails
    inside the model); some: a warning."""
    special = set(tokenizer.all_special_ids)
    labels = list(translated["labels"])
    empty = [i for i, row in enumerate(labels) if all(token in special for token in row)]
    if not empty:
        return translated, 0
    if len(empty) == len(labels):
        raise RecipeError(f"--sequence_distillation: the model as loaded translated all {len(labels)} training "
                          "sources into empty text (nothing but special tokens such as <pad> or </s>), so there is "
                          "nothing to train on: an untrained model, or wrong pad / decoder start / end token ids in "
                          "its (generation) config; leave --sequence_distillation out to train on the references")
    logger.warning("sequence distillation: %d of %d translations are empty (nothing but special tokens); those rows "
                   "keep their reference as the target", len(empty), len(labels))
    references = list(dataset["labels"])
    for i in empty:
        labels[i] = references[i]
    return translated.remove_columns("labels").add_column("labels", labels), len(empty)


def score_test(trainer, dataset, run: Run) -> dict:
    """sacreBLEU and chrF of ``trainer``'s model's translations against the raw reference sentences."""
    with scoring_every_row(trainer, dataset):  # the test loss the same on any number of processes
        output = trainer.predict(dataset, metric_key_prefix="test")
    values = score_translations(output.predictions, run.splits["test"]["target"], run.processing_class)
    return {"values": values, "metrics": output.metrics}


def score_deployed(run: Run, model, tokenizer) -> dict:
    """sacreBLEU and chrF of a deployed copy: the test sources read by ``tokenizer`` (a pruned vocabulary's splits
    some words otherwise) and translated as the test set is (greedy or --generation_num_beams, at most
    --generation_max_length tokens), in a plain loop on this process alone (the copies are written by the saving
    process only; a Trainer's prediction would wait for the others). ``model``: a torch model, an ONNX export's
    ``OnnxSeq2Seq`` or a CTranslate2 ``Translator`` (:func:`deployed_translations`)."""
    dataset = run.datasets["test"] if tokenizer is run.processing_class else \
        tokenize({"test": run.splits["test"]}, tokenizer, run.data_args)["test"]
    translated = deployed_translations(run, model, tokenizer, dataset)
    width = max(map(len, translated), default=0)
    ids = np.array([row + [-100] * (width - len(row)) for row in translated], dtype=np.int64)
    return score_translations(ids, run.splits["test"]["target"], tokenizer)


def deployed_translations(run: Run, model, tokenizer, dataset) -> list[list[int]]:
    """The ids of each test row's translation by a deployed copy, each runtime driven as a user drives it."""
    from hf_adaprune.sequence_distillation import sequence_distillation_targets

    runtime = runtime_of(model)
    if runtime == "onnx":
        return onnx_translations(run, model, tokenizer, dataset)
    if runtime == "ctranslate2":
        return ctranslate2_translations(run, model, tokenizer, dataset)
    args = run.training_args
    return list(sequence_distillation_targets(
        model, dataset, batch_size=args.per_device_eval_batch_size, max_length=args.generation_max_length,
        num_beams=beams(args, model), progress=False)["labels"])


def onnx_translations(run: Run, runner, tokenizer, dataset) -> list[list[int]]:
    """``OnnxSeq2Seq.generate`` of the test rows with the ids of the export's generation config (a smaller
    vocabulary numbers them otherwise), at most --generation_max_length tokens with the start token, as
    ``generate`` counts them. It decodes greedily only: a test set translated with beams is not scored
    (:class:`~recipes.deploy.NotScored`), since a greedy figure would not compare with the pruned model's."""
    from hf_adaprune.token_ids import token_id_list

    num_beams = run.task_results["generation"]["num_beams"]
    if num_beams != 1:
        raise NotScored(f"the test set is translated with {num_beams} beams and OnnxSeq2Seq decodes greedily only; "
                        "--generation_num_beams 1 (or --num_beams 1) scores it")
    config, size = runner.generation_config, run.training_args.per_device_eval_batch_size
    ids = {name: next(iter(token_id_list(getattr(config, name, None))), None) for name in  # a list: its first
           ("decoder_start_token_id", "eos_token_id", "pad_token_id", "forced_eos_token_id")}
    rows = []
    for start in range(0, len(dataset), size):
        batch = tokenizer.pad({"input_ids": dataset[start:start + size]["input_ids"]}, return_tensors="np")
        rows += runner.generate(batch["input_ids"], batch["attention_mask"],
                                max_new_tokens=run.training_args.generation_max_length - 1,
                                **ids).tolist()
    return rows


def ctranslate2_translations(run: Run, translator, tokenizer, dataset) -> list[list[int]]:
    """``Translator.translate_batch`` of the test rows' tokens with the test set's beams; its length counts
    neither the start token nor the end token ``generate`` forces at its last step."""
    forced_end = getattr(run.model.generation_config, "forced_eos_token_id", None) is not None
    results = translator.translate_batch(
        [tokenizer.convert_ids_to_tokens(ids) for ids in dataset["input_ids"]],
        beam_size=run.task_results["generation"]["num_beams"],
        max_batch_size=run.training_args.per_device_eval_batch_size,
        max_decoding_length=run.training_args.generation_max_length - 1 - forced_end)
    return [tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]


def latency(dense, pruned, run: Run) -> dict:
    training_args = run.training_args
    sentences = run.splits["test" if "test" in run.splits else "validation"]["source"][:1]
    generate_kwargs = {"max_length": training_args.generation_max_length,
                       "num_beams": beams(training_args, pruned)}
    result = measure_generate_latency(dense, pruned, run.processing_class, sentences, run.data_args, generate_kwargs,
                                      repeats=run.data_args.latency_repeats)
    logger.info("latency:\n%s", format_latency(result["results"], title="generate, batch 1"))
    return {"label": f"generate latency b{result['batch_size']}, {result['timed_length']} tokens", **result}


def card_lines(run) -> list[str]:
    """The card's note on the training targets: with --sequence_distillation, the model's own translations."""
    record = run.task_results.get("sequence_distillation")
    if not record:
        return []
    beams = f"beam search of {record['num_beams']}" if record["num_beams"] > 1 else "greedy decoding"
    return ["", "## Training targets", "",
            f"Sequence distillation: the pruned model was trained on the translations the model as loaded wrote for "
            f"the {record['rows']} training sources ({beams}, at most {record['max_length']} tokens; "
            f"{record['rows_unlike_the_reference']} differ from the references; empty translations, replaced by their "
            f"references: {record['empty_translations']}), not on the references themselves."]


TASK = Task(
    name="translation",
    parse_args=parse_args,
    validate=validate,
    load_data=load_data,
    build=build,
    test_metrics=REPORTED_METRICS,
    format_value=lambda name, value: format_metric(value, 2),
    score=score_test,
    latency=latency,
    score_deployed=score_deployed,
    before_training=before_training,
    # what the sources and targets the metric reads look like: a resume under others would compare unlike BLEU
    # (the lengths too: sources cut shorter, or references cut shorter, moved BLEU 70 points against the reference)
    metric_options=("source_prefix", "source_lang_code", "target_lang_code", "sequence_distillation",
                    "max_source_length", "max_target_length"),
    card_lines=card_lines,
)


main = TASK.main  # main(argv) runs the recipe and returns what it writes to results.json
cli = TASK.cli

if __name__ == "__main__":
    cli()
