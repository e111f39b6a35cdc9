"""The run every recipe shares; a recipe is one :class:`Task` that fills in its steps.

:func:`run_task` goes through the same steps for every task::

    parse -> validate (arguments only; output folder; checkpoint to resume and its pruning arguments) ->
    load data (read, check, subsample) -> build (model, processing class, datasets, collator, metrics) ->
    copies for the dense snapshot, the control and latency -> pruning trainer -> train and save ->
    decision-set evaluation -> test evaluation (pruned, dense at the reference, control) -> dense control
    (with --dense_control) -> latency -> deployed copies (--prune_vocabulary, --quantize, --export_*) ->
    results.json and the table (written also when a deployed copy fails)

Everything a task can get wrong from the user's input fails before the model is built,
as a :class:`~recipes.arguments.RecipeError`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import transformers
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback, set_seed

from hf_adaprune import AdaptivePruningSeq2SeqTrainer, AdaptivePruningTrainer, DatasetOrderEvalMixin
from hf_adaprune.plain_forward import plain_forward
from hf_adaprune.trainer.eval_loss import EvalLossMixin
from hf_adaprune.reporting.report import write_text
from hf_adaprune.trainer.arguments import pruning_arguments
from hf_adaprune.trainer.checkpoint import check_resume_arguments as compare_resume_arguments
from hf_adaprune.trainer.checkpoint import read_pruning_state
from hf_adaprune.trainer.eval_order import first_rows  # the decision set, sliced as the trainer slices it
from hf_adaprune.trainer.report import card_path

from . import deploy
from .hub_push import folder_state, push_run_outputs, reach_hub_repo
from .arguments import (RecipeError, check_integrations, check_output_dir, check_written_subfolders,
                        remove_earlier_run_outputs, resumes_run_in, warn_folders_left)
from .results import (
    pruning_record,
    results_table,
    save_results,
    test_results,
    validation_results,
    without_layers,
)

logger = logging.getLogger("hf_adaprune.recipes")

LOG_FORMAT = "%(asctime)s - %(levelname)s - %(name)s - %(message)s"
CONTROL_DIR = "dense_control"
PRUNING_STATE_FILE = "pruning_state.pt"  # what makes a checkpoint folder a pruning checkpoint
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
RESUME_LATEST = ("true", "yes", "latest", "last")
RESUME_NONE = ("false", "no", "none", "")


class DenseTrainer(DatasetOrderEvalMixin, EvalLossMixin, Trainer):
    """A plain ``Trainer`` that evaluates in dataset order, with the pruning trainer's eval loss (the same on any
    number of processes): the dense control and the dense snapshot's scoring."""


class DenseSeq2SeqTrainer(DatasetOrderEvalMixin, EvalLossMixin, Seq2SeqTrainer):
    """A plain ``Seq2SeqTrainer`` that evaluates in dataset order, with the pruning trainer's eval loss."""


@dataclass
class Run:
    """What the steps of one run hand on to each other."""

    model_args: Any
    data_args: Any
    training_args: Any
    data_files: dict = field(default_factory=dict)  # as given on the command line, for results.json
    model_paths: list = field(default_factory=list)  # local folders loaded from: never written over
    own_outputs: dict = field(default_factory=dict)  # {file (relative): text} written into --output_dir before the model
    files_before: dict = field(default_factory=dict)  # --output_dir's files before the run wrote any: never pushed
    splits: dict = field(default_factory=dict)  # rows per split after checks and subsampling
    model: Any = None
    processing_class: Any = None
    datasets: dict = field(default_factory=dict)  # model-ready "train", "validation" and maybe "test"
    data_collator: Any = None
    compute_metrics: Any = None
    preprocess_logits_for_metrics: Any = None
    seq2seq: bool = False  # generation during evaluation: the Seq2Seq trainers
    task_results: dict = field(default_factory=dict)  # the "task" entry of results.json
    texts: dict = field(default_factory=dict)  # raw texts per split, where a recipe reads them again after build
    max_input_length: int | None = None  # the longest input in tokens the task feeds the model, where it has one

    def trainer_kwargs(self, model, args, pruning: bool = False) -> dict:
        # "pruning_train": what the pruning run trains on where it differs from the control's (a teacher's labels)
        train = self.datasets.get("pruning_train", self.datasets["train"]) if pruning else self.datasets["train"]
        return dict(model=model, args=args, train_dataset=train,
                    eval_dataset=self.datasets["validation"], processing_class=self.processing_class,
                    data_collator=self.data_collator, compute_metrics=self.compute_metrics,
                    preprocess_logits_for_metrics=self.preprocess_logits_for_metrics)


@contextlib.contextmanager
def scoring_every_row(trainer, dataset):
    """Score ``dataset`` (the test split, the decision rows) with ``trainer`` on every row: one row a batch where the
    processes' sampler would pad the last batches (``EvalLossMixin.loss_of_every_row``: the loss is the mean over
    the rows on any number of processes), no ``dataloader_drop_last``, and a loader of its own: under
    --dataloader_persistent_workers ``Trainer.evaluate`` hands back the loader it cached for the validation set,
    whatever dataset it is given (``EvalLossMixin.reading_every_row``)."""
    with trainer.reading_every_row(), trainer.loss_of_every_row(dataset):
        yield


def evaluate_scores(trainer, dataset, run: Run, names) -> dict:
    """Default test scoring: ``trainer.evaluate`` with prefix "test" (:func:`scoring_every_row`); values
    ``test_NAME`` for each of ``names``."""
    with scoring_every_row(trainer, dataset):
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="test")
    return {"values": {name: metrics.get(f"test_{name}") for name in names}, "metrics": metrics}


@dataclass
class Task:
    """One recipe: its steps (functions of a :class:`Run`) and how its results read.

    ``validate`` checks arguments only (no data, no model) and fills ``run.data_files``
    and ``run.model_paths``; ``load_data`` reads and checks the data and fills
    ``run.splits``; ``build`` fills the model and everything the trainer takes.
    ``score(trainer, dataset, run)`` returns ``{"values": {NAME: value}, "metrics": raw}``
    for the ``test_metrics``; ``latency(dense, pruned, run)`` a latency record or None;
    ``after_save(run, folder)`` saves what ``save_model`` does not (a processor);
    ``before_training(run)`` does what needs the built model once every request is checked.
    """

    name: str
    parse_args: Callable
    validate: Callable[[Run], None]
    load_data: Callable[[Run], None]
    build: Callable[[Run], None]
    test_metrics: tuple[str, ...]
    format_value: Callable[[str, Any], str]
    score: Callable | None = None
    latency: Callable | None = None
    after_save: Callable | None = None
    before_training: Callable[[Run], None] | None = None  # work that needs the model, after every check
    quiet_datasets: bool = True
    # pruning arguments build() may still set (ASR's --pruning_seq_len of a CTC model): compared with a checkpoint's
    # once the model is built, the others before any work
    arguments_set_in_build: tuple[str, ...] = ()
    # the recipe's own options that change the steering metric (ASR's --text_normalization): each checkpoint records
    # them (RECIPE_OPTIONS_FILE) and a resume under others is refused, as under other pruning arguments
    metric_options: tuple[str, ...] = ()
    # those of ``metric_options`` that build() settles (the language-modeling recipe's --block_size, chosen from the
    # tokenizer and model where not given): compared with a checkpoint's once the model is built
    metric_options_set_in_build: tuple[str, ...] = ()
    # score_deployed(run, model, tokenizer): the test metrics {NAME: value} of a deployed copy (read through its own
    # tokenizer), on the saving process alone; None: the recipe's deployed copies are written, not scored
    score_deployed: Callable | None = None
    # whether the test scores also report --pruning_metric where it is not among test_metrics (text classification:
    # a run steered by f1 compares the models in f1 too, not in accuracy alone)
    reports_pruning_metric: bool = False
    # card_lines(run): what the pruned model's card adds about this recipe's training (translation: trained on the
    # model's own translations); [] or None: nothing
    card_lines: Callable[[Run], list[str]] | None = None

    def reported_metrics(self, run: Run) -> tuple[str, ...]:
        """The test metrics of this run: ``test_metrics``, and --pruning_metric after them where the task reports it
        (not the loss)."""
        steering = run.training_args.pruning_metric
        if self.reports_pruning_metric and steering != "loss" and steering not in self.test_metrics:
            return (*self.test_metrics, steering)
        return tuple(self.test_metrics)

    def main(self, argv: list[str] | None = None) -> dict:
        """Run the recipe; returns what it writes to results.json. Bad arguments or data raise RecipeError first."""
        return run_task(self, argv)

    def cli(self, argv: list[str] | None = None) -> None:
        """The command line: ``main``, with a RecipeError as one ``error:`` line and exit status 2."""
        run_cli(self.main, argv)

    def score_test(self, trainer, dataset, run: Run) -> dict:
        if self.score is not None:
            return self.score(trainer, dataset, run)
        return evaluate_scores(trainer, dataset, run, self.reported_metrics(run))


# -- small steps -------------------------------------------------------------------------------------
def recipe_log_level(training_args) -> int:
    """hf_adaprune's level in a recipe: ``--log_level`` (``--log_level_replica`` on the processes that do not log)
    where given; otherwise INFO on the process that logs (the run's decisions, re-fits and deploy steps) and WARNING
    on the others."""
    given = training_args.log_level if training_args.should_log else training_args.log_level_replica
    if given != "passive":
        return training_args.get_process_log_level()
    return logging.INFO if training_args.should_log else logging.WARNING


def setup_logging(training_args, quiet_datasets: bool = True) -> None:
    """Log lines to stdout: hf_adaprune at :func:`recipe_log_level`, transformers as the training arguments say,
    and ``datasets`` at WARNING unless ``quiet_datasets`` is False."""
    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    logging.getLogger("hf_adaprune").setLevel(recipe_log_level(training_args))
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    if quiet_datasets:
        import datasets

        datasets.utils.logging.set_verbosity(logging.WARNING)


def subsample(dataset, n: int | None, seed: int, shuffle: bool = True):
    """``n`` rows of a ``datasets.Dataset`` (all if ``n`` is None or too large): seeded random ones, or the first."""
    if n is None or n >= len(dataset):
        return dataset
    return (dataset.shuffle(seed=seed) if shuffle else dataset).select(range(n))


def map_splits(raw, preprocess, desc: str = "tokenizing") -> dict:
    """``preprocess`` (batched) over every split of ``raw``, in place of the original columns."""
    return {split: dataset.map(preprocess, batched=True, remove_columns=dataset.column_names, desc=f"{desc} {split}")
            for split, dataset in raw.items()}


def combine_metrics(functions):
    """One ``compute_metrics`` returning the union of what each of ``functions`` returns for an ``EvalPrediction``."""

    def compute_metrics(eval_pred):
        out = {}
        for function in functions:
            out.update(function(eval_pred))
        return out

    # the built-in class metrics among them (the trainer checks that the decision rows can move them)
    compute_metrics.class_metrics = tuple(name for function in functions
                                          for name in getattr(function, "class_metrics", ()))
    return compute_metrics


def resolve_resume(training_args) -> str | None:
    """The checkpoint folder ``--resume_from_checkpoint`` asks for, checked before any work.

    ``true`` (or ``latest``) means the newest ``checkpoint-N`` in ``--output_dir`` that
    holds ``pruning_state.pt``: an interrupted save leaves a newer folder without it, and
    the run then resumes from the newest complete one (with a warning).
    """
    value = training_args.resume_from_checkpoint
    if value is None or str(value).strip().lower() in RESUME_NONE:
        return None
    if str(value).strip().lower() not in RESUME_LATEST:
        if not os.path.isfile(os.path.join(value, PRUNING_STATE_FILE)):
            raise RecipeError(f"--resume_from_checkpoint {value}: not a pruning checkpoint folder (no "
                              f"{PRUNING_STATE_FILE} in it); give a checkpoint-N folder of a pruning run, or true "
                              f"for the latest in --output_dir")
        return value
    out = training_args.output_dir
    found = sorted((int(m.group(1)), name) for name in (os.listdir(out) if os.path.isdir(out) else [])
                   if (m := CHECKPOINT_PATTERN.match(name)) and os.path.isdir(os.path.join(out, name)))
    if not found:
        raise RecipeError(f"--resume_from_checkpoint {value}: no checkpoint-N folder in --output_dir {out}")
    complete = [name for _, name in found if os.path.isfile(os.path.join(out, name, PRUNING_STATE_FILE))]
    if not complete:
        raise RecipeError(f"--resume_from_checkpoint {value}: none of the checkpoints in {out} "
                          f"({', '.join(name for _, name in found)}) holds {PRUNING_STATE_FILE}; they were not "
                          f"written by a pruning run, or their saves were interrupted")
    if complete[-1] != found[-1][1]:
        logger.warning("%s has no %s (an interrupted save?): resuming from %s", found[-1][1], PRUNING_STATE_FILE,
                       complete[-1])
    return os.path.join(out, complete[-1])


RECIPE_OPTIONS_FILE = "recipe_options.json"


class RecipeOptionsRecorder(TrainerCallback):
    """Writes the recipe options that change the steering metric into each checkpoint the trainer saves."""

    def __init__(self, options: dict):
        self.options = options

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            write_text(os.path.join(folder, RECIPE_OPTIONS_FILE), json.dumps(self.options, indent=2) + "\n")


# the options that choose the validation rows pruning is steered on, in whichever recipe has them
STEERING_ROWS = ("dataset_name", "dataset_config_name", "eval_split_name", "validation_file", "validation_source_file",
                 "validation_target_file", "validation_manifest", "fsdd_dir", "fsdd_validation_takes",
                 "validation_split_percentage", "max_eval_samples")


def metric_options(task: "Task", run: "Run") -> dict:
    """``task.metric_options`` and the options that choose the steering rows, with their values in this run (data or
    model options; a file as its name, size and the hash of its start, so that a moved copy is the same file), and
    the seed where it draws those rows (a random subset, or a split of the training rows)."""
    options = {}
    for name in (*task.metric_options, *STEERING_ROWS):
        owner = next((args for args in (run.data_args, run.model_args) if hasattr(args, name)), None)
        if owner is not None:
            options[name] = file_identity(getattr(owner, name))
    if options.get("fsdd_dir"):  # the recipe writes the manifests from it (and sets the manifest options) later
        for name in ("train_manifest", "validation_manifest", "test_manifest"):
            options.pop(name, None)
    if options.get("validation_split_percentage"):  # carved from the training rows, after the test split's share
        for name in ("train_file", "test_split_percentage"):
            if hasattr(run.data_args, name):
                options[name] = file_identity(getattr(run.data_args, name))
    if options.get("max_eval_samples") is not None or options.get("validation_split_percentage"):
        options["seed"] = run.training_args.seed
    return options


def file_identity(value):
    """``value``; for a path to a file: its name, size and the SHA-1 of its first MB; to a folder: its real path."""
    if isinstance(value, str) and os.path.isdir(value):
        return os.path.realpath(value)
    if not isinstance(value, str) or not os.path.isfile(value):
        return value
    with open(value, "rb") as file:
        digest = hashlib.sha1(file.read(1 << 20)).hexdigest()[:12]
    return f"{os.path.basename(value)} ({os.path.getsize(value)} bytes, sha1 {digest})"


def check_resume_options(task: "Task", run: "Run", resume_from: str | None, compared=lambda name: True) -> None:
    """The checkpoint's recipe options (RECIPE_OPTIONS_FILE; checkpoints written before it was recorded have none)
    against this run's (those for which ``compared(name)`` holds): a resume under others compared decisions measured
    two ways. --pruning_resume_with_new_arguments continues with a warning."""
    current = {name: value for name, value in metric_options(task, run).items() if compared(name)}
    check_recorded_options(current, resume_from, run.training_args.pruning_resume_with_new_arguments)


def check_recorded_options(current: dict, resume_from: str | None, allow_new: bool) -> None:
    """``current`` (recipe options that change the steering metric) against those :class:`RecipeOptionsRecorder`
    wrote into the checkpoint ``resume_from`` (none recorded: nothing to compare); RecipeError when they differ,
    unless ``allow_new`` (a warning then)."""
    path = None if resume_from is None else os.path.join(resume_from, RECIPE_OPTIONS_FILE)
    if path is None or not os.path.isfile(path):
        return
    saved = {name: value for name, value in json.loads(Path(path).read_text()).items() if name in current}
    try:
        compare_resume_arguments(saved, current, allow_new, what="options that change what is trained or measured")
    except ValueError as err:
        raise RecipeError(f"--resume_from_checkpoint {resume_from}: {err}") from err


def check_resume_arguments(training_args, resume_from: str | None, compared=lambda name: True) -> None:
    """The pruning arguments ``pruning_state.pt`` of the checkpoint to resume from was written with, against this
    run's (those for which ``compared(name)`` holds), as the trainer compares them when it resumes, but before any
    work and as one error line; a state that cannot be read is one too. With --pruning_resume_with_new_arguments
    the trainer warns about the differences."""
    if resume_from is None:
        return
    try:
        state = read_pruning_state(resume_from)
        if not training_args.pruning_resume_with_new_arguments:
            saved = {name: value for name, value in (state.get("arguments") or {}).items() if compared(name)}
            compare_resume_arguments(saved, pruning_arguments(training_args), allow_new=False)
    except (OSError, ValueError) as err:
        raise RecipeError(f"--resume_from_checkpoint {resume_from}: {err}") from err


def train_and_save(trainer, training_args, resume_from: str | None = None) -> dict:
    """Train from the same random state as any other run of these arguments, save; log and save the metrics."""
    set_seed(training_args.seed)  # the pruning run and its control see the same data order
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model()
    train_metrics = {**train_result.metrics, "global_step": train_result.global_step}
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    return train_metrics


class DenseSnapshot(TrainerCallback):
    """The weights at the step where the pruning controller takes its reference (``--pruning_warmup_steps``).

    They are taken right after that step's optimizer step, before the step ends: at its end the pruning callback
    (which runs before the recipe's callbacks) measures the reference and may already have masked, judged and, with
    ``--pruning_refit``, re-fitted a candidate, which changes output projections. Masks do not change the weights.
    They are copied into ``template`` (a dense copy of the model taken before training), which becomes ``model``;
    ``step`` says when.
    """

    def __init__(self, template):
        self.template = template
        self.model = None
        self.step = None

    def _take(self, args, state, model, step: int) -> None:
        if self.model is None and model is not None and step == args.pruning_warmup_steps:
            self.template.load_state_dict(model.state_dict())
            self.model, self.step = self.template.eval(), step

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # no warm-up: the model as given
        self._take(args, state, model, state.global_step)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):  # global_step counts it at the end
        self._take(args, state, model, state.global_step + 1)


def run_cli(function, *args):
    """``function(*args)``, with a RecipeError printed as ``error: ...`` and exit status 2 (no traceback)."""
    try:
        return function(*args)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _as_recipe_error(step, *args):
    """``step(*args)`` with a ValueError (bad argument values, unknown metric names) raised as RecipeError."""
    try:
        return step(*args)
    except RecipeError:
        raise
    except ValueError as err:
        raise RecipeError(str(err)) from err


# -- the run -----------------------------------------------------------------------------------------
def prepare_run(task: Task, argv: list[str] | None = None) -> tuple[Run, str | None]:
    """The steps before any model is built: parse, validate, check the output folder and the checkpoint to resume
    from, load and check the data. Returns the run and the checkpoint folder (or None)."""
    run = Run(*_as_recipe_error(task.parse_args, argv))
    setup_logging(run.training_args, quiet_datasets=task.quiet_datasets)
    _as_recipe_error(task.validate, run)
    teacher = getattr(run.training_args, "teacher_model_name_or_path", None)
    if teacher and getattr(run.training_args, "distillation", False):  # loaded like the model: never written over
        run.model_paths.append(teacher)
    if run.data_args.dense_control:  # the control is saved into OUTPUT_DIR/dense_control: never over a loaded model
        check_written_subfolders(run.training_args.output_dir, run.model_paths, {CONTROL_DIR: "--dense_control true"})
    check_integrations(run.training_args)
    resume_from = resolve_resume(run.training_args)
    late = set(task.arguments_set_in_build)
    check_resume_arguments(run.training_args, resume_from, lambda name: name not in late)
    check_resume_options(task, run, resume_from, lambda name: name not in task.metric_options_set_in_build)
    check_output_dir(run.training_args.output_dir, run.model_paths, run.data_args.overwrite_output_dir,
                     resume_from=resume_from, own=run.own_outputs,
                     resumable=not getattr(run.data_args, "post_training", False))  # --post_training has no checkpoints
    deploy.check_arguments(run.data_args, run.training_args, run.model_paths)
    warn_earlier_outputs(run)
    reach_hub_repo(run.training_args)  # --push_to_hub without network or write access: before any work
    run.files_before = folder_state(run.training_args.output_dir)
    task.load_data(run)
    return run, resume_from


def warn_earlier_outputs(run: Run) -> None:
    """Name the folders an earlier run left in ``--output_dir`` (and in its ``deploy/``) that this run will not
    replace (after ``--overwrite_output_dir``): they are not this run's, whatever their place suggests."""
    output_dir, data_args = run.training_args.output_dir, run.data_args
    warn_folders_left(output_dir, [name for name, written in (
        (CONTROL_DIR, data_args.dense_control), (deploy.DEPLOY_DIR, deploy.requested(data_args))) if not written])
    if deploy.requested(data_args):  # deploy/ is written, but only the subfolders of this run's options
        warn_folders_left(os.path.join(output_dir, deploy.DEPLOY_DIR), deploy.folders_not_written(data_args))


def clear_earlier_run(run: Run, resume_from: str | None) -> None:
    """After ``--overwrite_output_dir`` (and not resuming the run ``--output_dir`` holds), just before training:
    :func:`remove_earlier_run_outputs`."""
    if run.data_args.overwrite_output_dir and run.training_args.should_save and \
            not resumes_run_in(run.training_args.output_dir, resume_from):
        remove_earlier_run_outputs(run.training_args.output_dir)


def load_error(paths, err: Exception) -> RecipeError:
    """The one-line error for a model, config or tokenizer that transformers cannot load from ``paths``."""
    return RecipeError(f"cannot load the model / tokenizer from {', '.join(p for p in paths if p)} (a local folder "
                       f"with config.json, or a Hub id that is reachable or cached): {' '.join(str(err).split())}")


def build_model(task: Task, run: Run) -> None:
    """``task.build(run)``, with a model, config or tokenizer that cannot be loaded as one ``error:`` line."""
    try:
        task.build(run)
    except RecipeError:
        raise
    except (OSError, ValueError) as err:  # a missing folder, a Hub id offline, a folder without config.json; a
        # config transformers does not know or would need remote code for, a pruned folder whose record is broken
        raise load_error(run.model_paths, err) from err


def run_task(task: Task, argv: list[str] | None = None) -> dict:
    """Run ``task`` with ``argv`` (default: the command line); returns what it writes to results.json."""
    started = time.time()
    run, resume_from = prepare_run(task, argv)
    model_args, data_args, training_args = run.model_args, run.data_args, run.training_args
    set_seed(training_args.seed)
    build_model(task, run)
    if task.metric_options_set_in_build:  # first: what build set the late arguments from (a block size) is named
        check_resume_options(task, run, resume_from, lambda name: name in task.metric_options_set_in_build)
    if task.arguments_set_in_build:
        check_resume_arguments(training_args, resume_from, lambda name: name in task.arguments_set_in_build)
    deploy.check_request(run)  # e.g. --export_ctranslate2 of a family it cannot convert: before training
    if task.before_training is not None:
        task.before_training(run)
    deploy.check_rows(run)  # --vocabulary_min_count: once a teacher's translations, which count too, exist
    run.model.config._name_or_path = model_args.base_model_id or ""  # None for a model built from a config
    test_dataset = run.datasets.get("test")
    repeats = getattr(data_args, "latency_repeats", 0) if task.latency else 0
    control_model = copy.deepcopy(run.model) if data_args.dense_control else None
    if control_model is not None and test_dataset is None:
        use = "" if task.latency is None else \
            f"; it serves as the latency baseline{'' if repeats else ' (with --latency_repeats)'} only"
        logger.warning("--dense_control true without a test split: the control is trained, but no test rows score "
                       "it%s", use or ", and nothing else reads it")
    dense_for_latency = copy.deepcopy(run.model) if repeats and control_model is None else None
    snapshot = DenseSnapshot(copy.deepcopy(run.model)) \
        if test_dataset is not None and data_args.test_before_pruning else None

    clear_earlier_run(run, resume_from)
    pruning_class = AdaptivePruningSeq2SeqTrainer if run.seq2seq else AdaptivePruningTrainer
    trainer = _as_recipe_error(  # model / argument mismatches the trainer finds (e.g. --pruning_seq_len)
        lambda: pruning_class(**run.trainer_kwargs(run.model, training_args, pruning=True),
                              callbacks=[snapshot] if snapshot else None, dataset_name=data_args.dataset_card_name))
    if task.metric_options:
        trainer.add_callback(RecipeOptionsRecorder(metric_options(task, run)))
    # one push, at the end: the folder then holds the test scores, the card's control table and deploy/ as well
    push, training_args.push_to_hub = training_args.push_to_hub, False
    if push and training_args.hub_model_id:  # the card is written before the push: named after the repo, as a
        trainer.set_card_args(model_name=training_args.hub_model_id.split("/")[-1])  # trainer's push names it
    try:
        results = _train_test_and_save(task, run, trainer, resume_from, test_dataset, snapshot, control_model,
                                       dense_for_latency, repeats, started)
    finally:
        training_args.push_to_hub = push
    if push:
        push_run_outputs(trainer, training_args, run.files_before, left_local=(f"{CONTROL_DIR}/*",))
    return results


def _train_test_and_save(task: Task, run: Run, trainer, resume_from, test_dataset, snapshot, control_model,
                         dense_for_latency, repeats: int, started: float) -> dict:
    data_args, training_args = run.data_args, run.training_args
    train_metrics = train_and_save(trainer, training_args, resume_from)
    if task.after_save is not None and training_args.should_save:
        task.after_save(run, training_args.output_dir)
    summary = trainer.pruning_summary()

    decision_set = first_rows(run.datasets["validation"], training_args.pruning_eval_samples)
    with scoring_every_row(trainer, decision_set):
        final_val = trainer.evaluate(eval_dataset=decision_set)
    scores = {}
    if test_dataset is not None:
        scores["pruned"] = task.score_test(trainer, test_dataset, run)
        trainer.save_metrics("test", scores["pruned"]["metrics"])
        if snapshot is not None and snapshot.model is None:
            logger.warning("no dense test scores: this run did not see the weights at step %d, where the pruning "
                           "reference is taken (it resumed past it, or ended before it)",
                           training_args.pruning_warmup_steps)
        elif snapshot is not None:
            scores["dense"] = task.score_test(_plain_trainer(run, snapshot.model, training_args), test_dataset, run)

    control = None
    if control_model is not None:
        control_trainer, control = train_control(task, run, control_model)
        if test_dataset is not None:
            scores["control"] = task.score_test(control_trainer, test_dataset, run)

    latency = None
    if repeats:
        dense = control_model if control_model is not None else dense_for_latency
        with plain_forward(dense), plain_forward(trainer.model):  # after --bf16 / --fp16: both as saved, float32
            latency = task.latency(dense, trainer.model, run)
        latency["dense_model"] = "dense control" if control_model is not None else "dense, as loaded"
    results = {
        **results_header(task, run),
        "test": None if test_dataset is None else test_results(
            len(test_dataset), task.reported_metrics(run), scores, snapshot.step if snapshot else None,
            control and control["steps"], dense_asked=data_args.test_before_pruning),
        "validation": validation_results(summary, len(decision_set), final_val),
        "pruning": pruning_record(summary),
        "comparison": without_layers(summary["comparison"]),
        "latency": latency,
        "train": train_metrics,
        "dense_control": control,
        "deploy": None,
        "wall_time_s": None,
    }
    deploy_and_save(task, run, trainer.model, results, results_table(results, task.format_value), started)
    if task.card_lines is not None and training_args.should_save:
        append_to_card(training_args.output_dir, task.card_lines(run) or [])
    if control is not None and results["test"] is not None and training_args.should_save:
        add_control_to_card(training_args.output_dir, results, task.format_value)
    return results


def deploy_and_save(task: Task, run: Run, model, results: dict, table: str, started: float) -> None:
    """The deployed copies of ``model`` (if asked) into ``results["deploy"]``, scored on the test split where the
    recipe can (``task.score_deployed``), then results.json and ``table``: written also when a deployed copy fails
    (its error recorded under ``deploy``), so that the run's figures are kept."""
    data_args, training_args = run.data_args, run.training_args
    record: dict = {}
    try:
        if deploy.requested(data_args) and training_args.should_save:
            score = task.score_deployed if "test" in run.datasets else None
            results["deploy"] = deploy.deploy(run, model, score=score, pruned_test=results["test"], record=record)
            table += "".join(f"\n{line}" for line in deploy.score_lines(results["deploy"], task.format_value))
    except Exception as err:  # the copies written before the one that failed stay listed
        results["deploy"] = {**record, "folder": os.path.join(training_args.output_dir, deploy.DEPLOY_DIR),
                             "error": f"{type(err).__name__}: {err}"}
        raise
    finally:
        results["wall_time_s"] = time.time() - started
        save_results(results, table, training_args)


def results_header(task: Task, run: Run, **extra) -> dict:
    """The first keys of every recipe's results.json: what ran, on what data, written where."""
    model_args, data_args, training_args = run.model_args, run.data_args, run.training_args
    return {"recipe": task.name, **extra, "base_model": model_args.base_model_id, "dataset": data_args.dataset_name,
            "data_files": run.data_files, "output_dir": training_args.output_dir,
            "samples": {k: len(v) for k, v in run.splits.items()}, "task": run.task_results}


def append_to_card(folder: str, lines: list[str]) -> None:
    """Append ``lines`` to the model card the trainer wrote in ``folder`` (``README.md``, or beside a README.md of the
    user's own); nothing without lines or a card."""
    path = card_path(folder)
    if not lines or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        card = f.read()
    write_text(path, card.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def add_control_to_card(folder: str, results: dict, format_value) -> None:
    """Append the test comparison with the dense control to the model card (``README.md``) in ``folder``: the
    card is written when the model is saved, before the control exists."""
    test, steps = results["test"], results["dense_control"]["steps"]
    lines = ["", "## Compared with an equally trained dense model", "",
             f"The dense control is the same model fine-tuned for the same {steps} steps on the same data, in the "
             f"same order, without pruning. Test set: {test['samples']} examples.", "",
             "| metric | dense control | pruned | change |", "|---|---|---|---|"]
    for name in test["metrics"]:
        control, pruned = test[f"control_{name}"], test[f"pruned_{name}"]
        change = "" if control is None or pruned is None else \
            ("+" if pruned >= control else "") + format_value(name, pruned - control)
        lines.append(f"| {name} | {format_value(name, control)} | {format_value(name, pruned)} | {change} |")
    append_to_card(folder, lines)


def _plain_trainer(run: Run, model, args):
    trainer_class = DenseSeq2SeqTrainer if run.seq2seq else DenseTrainer
    return trainer_class(**run.trainer_kwargs(model, args))


def train_control(task: Task, run: Run, model) -> tuple[Any, dict]:
    """Fine-tune ``model`` (the dense model as built) without pruning: same data, seed, steps; saved to
    ``OUTPUT_DIR/dense_control``. Returns its trainer and its "dense_control" record."""
    args = copy.copy(run.training_args)
    args.output_dir = os.path.join(run.training_args.output_dir, CONTROL_DIR)
    args.save_strategy = "no"  # its checkpoints would only take disk space
    args.push_to_hub, args.hub_model_id = False, None  # the Hub repo is the pruned model's: the control stays local
    trainer = _plain_trainer(run, model, args)
    logger.info("dense control: fine-tuning without pruning, %s", args.output_dir)
    metrics = train_and_save(trainer, args)
    if task.after_save is not None and args.should_save:
        task.after_save(run, args.output_dir)
    return trainer, {"steps": metrics["global_step"], "output_dir": args.output_dir, "train": metrics}
