#!/usr/bin/env python
"""Prune a sentence-embedding model (sentence-transformers in, a sentence-transformers folder out).

Two objectives:

- ``--objective cosent``: ``CoSENTLoss`` on the scored pairs of STS Benchmark ``sts-train.csv``;
- ``--objective distillation``: label-free, the model distils its own dense embeddings (MSE + cosine)
  on unlabeled sentences (``--sentence_files``: .csv, .tsv, .json or .jsonl with a ``sentence`` column, or
  plain text, one sentence a line, optionally .gz, .bz2 or .xz).

Pruning is steered by Spearman (cosine) on the first ``--max_dev_pairs`` pairs of ``sts-dev.csv``
(``--steer sts``) or, without labels, by agreement with the dense embeddings of the first
``--max_dev_pairs`` dev sentence pairs (``--steer teacher``); ``sts-test.csv`` only reports. With
``--layer_drop_baseline`` the run also trains sentence-transformers' usual route to a smaller model: a
copy of the dense model keeping the layers ``--keep_layers`` (3 of 6: 50% of the layer FLOPs; a start model an
earlier run pruned keeps its layout record, renumbered for the layers kept), distilled
to the dense embeddings with the same loss, steps, batch size, accumulation, optimizer, learning-rate schedule
and ``--prompts`` on the same sentences. A run with ``--compact_at_end false`` is measured on a compacted copy,
as its saved folder holds it. The recipe has no deploy step: the other recipes' ``--prune_vocabulary``,
``--quantize`` and ``--export_onnx`` are refused before any work, naming the library functions to run on the saved
folder instead (``prune_vocabulary`` / ``save_int8`` / ``export_onnx`` on ``st[0].auto_model``).

Reported (``results.json``, printed table): STS-B test Spearman (cosine), and on the ``--max_dev_pairs``
dev pairs, of the dense, pruned and layer-dropped models; parameters; FLOPs of the encoder layers at ``--pruning_seq_len`` tokens;
encode throughput (sentences/s at batch 1 and ``--throughput_batch``, real test sentences, tokenized
once; the models are timed alternately in one process).

    python recipes/sentence_embeddings.py recipes/configs/sts_minilm.yaml
    python recipes/sentence_embeddings.py recipes/configs/sts_minilm_distillation.yaml --max_steps 20

Uses :mod:`recipes.arguments` (``recipe_argv``: a YAML/JSON config file as flags;
``resolve_package_path``: ``package:NAME/path`` values) and :func:`recipes.skeleton.run_cli`; it trains a
``SentenceTransformer``, not a transformers model, so it does not run through the skeleton's ``Task``.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
from sentence_transformers.sentence_transformer.losses import CoSENTLoss
from sentence_transformers.sentence_transformer.modules import Pooling
from sentence_transformers.util import load_file_path
from transformers import HfArgumentParser

from hf_adaprune import compact, get_masks
from hf_adaprune.families import LayerGroup, check_sequence_length, find_layer_groups
from hf_adaprune.layout import empty_record, read_record, write_record
from hf_adaprune.plain_forward import drop_autocast_forward
from hf_adaprune.reporting.flops import model_profile
from hf_adaprune.reporting.latency import compare_latency
from hf_adaprune.reporting.report import write_json
from hf_adaprune.sentence_transformers import (
    AdaptivePruningSentenceTransformerTrainer,
    SentenceTransformerPruningArguments,
    TeacherAgreementEvaluator,
    embedding_distillation_loss,
    load_pruned_sentence_transformer,
    transformer_module,
    with_teacher_embeddings,
)
from hf_adaprune.sentence_transformers.losses import distillation_distances, text_column
from hf_adaprune.sentence_transformers.trainer import training_prompt
from hf_adaprune.surgery import check_layer_removal, remove_layers

from recipes.arguments import (RecipeError, check_integrations, check_output_dir, check_unused_flags,
                               check_written_subfolders, data_file_extension, flag_names, recipe_argv,
                               remove_earlier_run_outputs, resolve_package_path, resumes_run_in, warn_folders_left)
from recipes.hub_push import folder_state, push_run_outputs, reach_hub_repo
from recipes.loading import check_tokenizer_has_vocabulary, is_pruned_source, pad_with_end_of_text
from recipes.skeleton import (RecipeOptionsRecorder, check_recorded_options, check_resume_arguments, file_identity,
                              load_error, recipe_log_level, resolve_resume, run_cli)
from recipes.tables import FILE_TYPES, read_table, read_text

logger = logging.getLogger(__name__)
OBJECTIVES = ("cosent", "distillation")
STEERS = ("sts", "teacher")
LAYER_DROP_DIR = "layer_drop"  # OUTPUT_DIR/layer_drop: the --layer_drop_baseline model


@dataclass
class SentenceEmbeddingArguments:
    model_name_or_path: str = field(metadata={
        "help": "A sentence-transformers folder (or package:NAME/path). A plain transformers encoder (no modules.json) "
                "gets sentence-transformers' default mean pooling, without normalization, with a warning."})
    stsb_dir: str = field(default="../shared/data/stsb", metadata={"help": "Folder with sts-{train,dev,test}.csv."})
    objective: str = field(default="cosent", metadata={"help": "cosent (STS-B train pairs) or distillation."})
    sentence_files: list[str] = field(default_factory=list,
                                      metadata={"help": "Unlabeled sentences for --objective distillation: .csv, "
                                                        ".tsv, .json, .jsonl with a 'sentence' column, or plain text "
                                                        "(one sentence a line)."})
    distillation_distance: str = field(default="mse+cosine", metadata={"help": "mse, cosine or mse+cosine."})
    steer: str = field(default="sts", metadata={"help": "sts: dev Spearman; teacher: agreement with the dense model."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Training pairs / sentences used."})
    max_dev_pairs: int | None = field(default=500, metadata={"help": "Dev pairs that steer pruning."})
    max_seq_length: int = field(default=128, metadata={
        "help": "Tokens a sentence is cut to in training, evaluation and timing; the saved models keep it as their "
                "max_seq_length (the model's own limit, e.g. 256, is replaced)."})
    layer_drop_baseline: bool = field(default=False, metadata={"help": "Also train the layer-dropped model."})
    keep_layers: str = field(default="0,2,4", metadata={
        "help": "Layers the layer-dropped model keeps (indices of the start model's layers, run in their order)."})
    throughput_batch: int = field(default=64)
    throughput_repeats: int = field(default=10)
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into an --output_dir that is not empty (files of the same names are "
                                         "replaced)."})


def read_sts(path: str, limit: int | None = None) -> Dataset:
    """STS Benchmark file: tab-separated, no header, no quoting; score in column 5, sentences in 6 and 7."""
    if not os.path.isfile(path):
        raise RecipeError(f"{path} not found (--stsb_dir; relative paths start at {os.getcwd()})")
    rows = {"sentence1": [], "sentence2": [], "score": []}
    text = io.StringIO(read_text(path, "--stsb_dir file"))
    for line, parts in enumerate(csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
        if not "".join(parts).strip():  # a blank line (a trailing one too)
            continue
        if len(parts) < 7:
            raise RecipeError(f"{path}, line {line}: not an STS Benchmark row (tab-separated: genre, file, "
                              f"year, id, score 0-5, sentence1, sentence2; got {len(parts)} fields)")
        rows["score"].append(sts_score(parts[4], path, line))
        rows["sentence1"].append(parts[5])
        rows["sentence2"].append(parts[6])
        if limit and len(rows["score"]) >= limit:
            break
    if not rows["score"]:
        raise RecipeError(f"{path} holds no rows")
    return Dataset.from_dict(rows)


def sts_score(value: str, path: str, line: int) -> float:
    """The score cell of an STS Benchmark row, scaled to 0-1; RecipeError for one that is not a finite number."""
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):  # a NaN would rank arbitrarily in CoSENT and make Spearman NaN
        raise RecipeError(f"{path}, line {line}: score {value!r} is not a number (column 5 of a tab-separated STS "
                          "Benchmark row; the file has no header row)")
    return score / 5.0


def read_sentences(paths: list[str], limit: int | None) -> list[str]:
    """Unique non-empty sentences, each file's in its order: with ``limit``, an equal share of it from each file,
    where a file holds fewer than its share the rest coming from the others (files of 3 and 100 sentences, limit
    10: 3 and 7), so that ``limit`` sentences are read whenever the files hold that many.

    A .csv, .tsv, .json or .jsonl file is read by its ``sentence`` column, anything else one sentence a line (.gz,
    .bz2, .xz too); a file that is not UTF-8 text or does not decompress is one error line naming it.
    """
    seen: set[str] = set()
    per_file: list[list[str]] = []  # each file's sentences no earlier file has, at most ``limit``
    for path in paths:
        path = resolve_package_path(path, "--sentence_files")
        if not os.path.isfile(path):
            raise RecipeError(f"--sentence_files {path} not found (relative paths start at {os.getcwd()})")
        new: list[str] = []
        read = 0
        for read, line in enumerate(sentence_lines(path), start=1):
            sentence = line.strip()
            if sentence and sentence not in seen:
                seen.add(sentence)
                new.append(sentence)
                if limit and len(new) >= limit:  # no file's share is more than the limit
                    break
        logger.info("--sentence_files %s: %d unique sentences of the %d lines or rows read (blank ones and "
                    "repeats dropped)", path, len(new), read)
        per_file.append(new)
    if not any(per_file):
        raise RecipeError(f"--sentence_files {', '.join(paths)}: no sentences in them")
    quotas = sentence_shares([len(new) for new in per_file], limit)
    return [sentence for new, quota in zip(per_file, quotas) for sentence in new[:quota]]


def table_extension(path: str) -> str | None:
    """The table type of ``path`` by its extension (a compression suffix left out), None for other files."""
    ext = data_file_extension(path)
    return ext if ext in FILE_TYPES else None


def sentence_lines(path: str):
    """The sentences of one --sentence_files file, unstripped: a table's ``sentence`` column, else its lines."""
    if table_extension(path) is None:
        return io.StringIO(read_text(path, "--sentence_files"))
    table = read_table(path, "--sentence_files")
    if "sentence" not in table.columns:
        raise RecipeError(f"--sentence_files {path}: a {table_extension(path)} file is read by its 'sentence' column; "
                          f"it has {table.columns} (or give plain text, one sentence a line)")
    return (row.get("sentence") or "" for row in table.rows)


def sentence_shares(counts: list[int], limit: int | None) -> list[int]:
    """How many sentences to take from files holding ``counts``: all of them without ``limit``; else ``limit``
    shared equally (the first files taking one more where it does not divide), a file's unused share going to the
    files that have more."""
    if not limit:
        return list(counts)
    quotas = [0] * len(counts)
    remaining, open_files = limit, [i for i, count in enumerate(counts) if count > 0]
    while remaining > 0 and open_files:
        share, extra = divmod(remaining, len(open_files))
        for k, i in enumerate(open_files):
            given = min(counts[i] - quotas[i], share + (k < extra))
            quotas[i] += given
            remaining -= given
        open_files = [i for i in open_files if quotas[i] < counts[i]]
    return quotas


def sts_evaluator(pairs: Dataset, name: str) -> EmbeddingSimilarityEvaluator:
    return EmbeddingSimilarityEvaluator(pairs["sentence1"], pairs["sentence2"], pairs["score"],
                                        main_similarity="cosine", similarity_fn_names=["cosine"], name=name)


def spearman(model: SentenceTransformer, evaluator: EmbeddingSimilarityEvaluator) -> float:
    return float(evaluator(model)[evaluator.primary_metric])


def layer_stack(inner) -> LayerGroup:
    """The encoder's layer stack (BERT-like models: ``encoder.layer``; DistilBERT: ``transformer.layer``; a T5
    encoder: ``encoder.block``), as hf_adaprune's layer removal takes it."""
    stacks = [stack for stack in find_layer_groups(inner) if stack.role == "encoder"]
    if len(stacks) != 1:
        raise RecipeError(f"--layer_drop_baseline: {type(inner).__name__} has "
                          f"{'no' if not stacks else len(stacks)} encoder layer stacks hf_adaprune can remove layers "
                          "of; leave the baseline out")
    return stacks[0]


def keep_layer_indices(value: str, inner) -> list[int]:
    """``--keep_layers`` as layer indices of ``inner``, checked."""
    stack = layer_stack(inner)
    layers = len(inner.base_model.get_submodule(stack.name))
    try:
        keep = [int(i) for i in value.split(",") if i.strip()]
    except ValueError:
        raise RecipeError(f"--keep_layers must be layer indices separated by commas (e.g. 0,2,4); got {value!r}") \
            from None
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < layers for i in keep):
        raise RecipeError(f"--keep_layers {value}: distinct indices of the model's {layers} layers (0 to {layers - 1})")
    keep.sort()  # the kept layers run in the model's order
    try:  # a stack whose layers (or whose last layer) this family cannot lose
        check_layer_removal(stack, keep, layers)
    except ValueError as err:
        raise RecipeError(f"--keep_layers {value}: {err}") from None
    return keep


def layer_dropped(model: SentenceTransformer, keep: list[int]) -> SentenceTransformer:
    """A copy of ``model`` keeping only the encoder layers ``keep`` (sentence-transformers' distillation example).

    The layers go as hf_adaprune's compaction removes them (:func:`hf_adaprune.surgery.remove_layers`): the config's
    layer count, and, for a model an earlier run pruned, its layout record (``config.adaprune``: the kept layers,
    the heads and neurons of each renumbered) follow, so that the copy is profiled, saved and reloaded as the model
    it is. The copy gets a model card of its own: ``model``'s holds ``model``'s evaluation figures.
    """
    student = copy.deepcopy(model)
    card_data = type(model.model_card_data)(local_files_only=True)  # no evaluation figures of ``model``
    for name in ("base_model", "base_model_revision", "language", "license"):
        setattr(card_data, name, getattr(model.model_card_data, name, None))
    student.model_card_data = card_data
    card_data.register_model(student)
    student._model_card_text = None  # a loaded folder's README.md describes the model it was loaded as
    inner = student[0].auto_model
    record = read_record(inner.config)
    remove_layers(inner, layer_stack(inner), sorted(keep), record if record is not None else empty_record())
    if record is not None:  # a dense model stays without a record: stock transformers builds its fewer layers
        write_record(inner.config, record)
    return student


def throughput(models: dict[str, SentenceTransformer], sentences: list[str], batch: int, repeats: int) -> dict:
    """Sentences/s of each model's forward on one tokenized batch (tokenization excluded), timed alternately."""
    batch = len(sentences[:batch])  # fewer sentences than asked: the batch timed is what there is
    features = next(iter(models.values())).tokenize(sentences[:batch])
    timings = compare_latency(models, {"input": features}, repeats=repeats, warmup=2)
    return {name: {"sentences_per_s": batch / t["median_s"], "median_ms": 1000 * t["median_s"],
                   "speedup": t["speedup"], "batch": batch} for name, t in timings.items()}


# what the layer-drop baseline trains with, as the pruning run does: the same steps, batches, optimizer and schedule
BASELINE_TRAINING_ARGUMENTS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim",
    "optim_args", "seed", "data_seed", "use_cpu", "fp16", "bf16", "prompts", "dataloader_drop_last", "logging_steps")


def as_saved(model: SentenceTransformer) -> SentenceTransformer:
    """``model`` as its saved folder holds it: one still masked (``--compact_at_end false``) is measured on a
    compacted copy (the same embeddings, the smaller matrices), so its size, FLOPs and speed are the pruned ones."""
    if get_masks(transformer_module(model).auto_model) is None:
        return model
    model = copy.deepcopy(model)
    compact(transformer_module(model).auto_model)
    return model


def profile(model: SentenceTransformer, seq_len: int) -> dict:
    """Parameters of the whole model (modules after pooling, e.g. a Dense layer, included); FLOPs of its
    transformer."""
    p = model_profile(model[0].auto_model, seq_len=seq_len)
    return {"params": sum(param.numel() for param in model.parameters()), "layer_flops": p["layer_flops"],
            "flops": p["flops"]}


def training_data(opts):
    """(train dataset, its sentences) of the objective: STS-B train pairs, or unlabeled sentences."""
    if opts.objective == "cosent":
        train = read_sts(os.path.join(opts.stsb_dir, "sts-train.csv"), opts.max_train_samples)
        return train, list(dict.fromkeys(list(train["sentence1"]) + list(train["sentence2"])))
    if not opts.sentence_files:
        raise RecipeError("--objective distillation needs --sentence_files (unlabeled sentences)")
    sentences = read_sentences(opts.sentence_files, opts.max_train_samples)
    if opts.max_train_samples and len(sentences) < opts.max_train_samples:
        logger.warning("--max_train_samples %d: --sentence_files hold only %d unique sentences; training on those",
                       opts.max_train_samples, len(sentences))
    return Dataset.from_dict({"sentence": sentences}), sentences


def pruned_folder(path: str) -> bool:
    """Whether ``path`` holds a sentence-transformers model an earlier run pruned (its config.json says so)."""
    try:
        return is_pruned_source(path)
    except (OSError, ValueError):  # no config.json at the top (a Hub id offline, another layout): load as given
        return False


def check_options(opts, args) -> None:
    """What the flags alone can tell is wrong, before any model or data is loaded."""
    if opts.objective not in OBJECTIVES or opts.steer not in STEERS:
        raise RecipeError(f"--objective must be one of {OBJECTIVES}, --steer one of {STEERS}")
    try:
        distillation_distances(opts.distillation_distance)
    except ValueError:
        raise RecipeError(f"--distillation_distance must be mse, cosine or mse+cosine; "
                          f"got {opts.distillation_distance!r}") from None
    if opts.max_train_samples is not None and opts.max_train_samples < 1:
        raise RecipeError(f"--max_train_samples must be >= 1 (or left out for all rows); got {opts.max_train_samples}")
    if opts.max_dev_pairs is not None and opts.max_dev_pairs < 3:  # Spearman of 2 pairs is always +-1
        raise RecipeError(f"--max_dev_pairs must be >= 3 (a rank correlation of fewer pairs steers nothing); got "
                          f"{opts.max_dev_pairs}")
    if opts.sentence_files and opts.objective != "distillation":
        raise RecipeError(f"--sentence_files are the unlabeled sentences of --objective distillation; --objective "
                          f"{opts.objective} trains on the scored pairs of {os.path.join(opts.stsb_dir, 'sts-train.csv')}"
                          ": add --objective distillation, or leave --sentence_files out")
    if args.pruning_eval_samples is not None:
        raise RecipeError("--pruning_eval_samples: this recipe's decisions read the first --max_dev_pairs pairs of "
                          "sts-dev.csv (--steer sts: their Spearman; --steer teacher: agreement on their sentences); "
                          "set --max_dev_pairs instead")
    for name in ("max_seq_length", "throughput_batch", "throughput_repeats"):
        if getattr(opts, name) < 1:
            raise RecipeError(f"--{name} must be >= 1; got {getattr(opts, name)}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise RecipeError(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.pruning_metric == "loss":
        raise RecipeError("--pruning_metric loss needs a labelled eval_dataset, which this recipe does not build: it "
                          "steers by an evaluator (--steer sts: Spearman on dev pairs; --steer teacher: agreement "
                          "with the dense model); leave --pruning_metric out")
    if opts.layer_drop_baseline and args.max_steps < 1:
        raise RecipeError("--layer_drop_baseline trains the baseline for the same --max_steps as the pruning run: "
                          "set --max_steps")


# the other recipes' deploy options (recipes/arguments.py, recipes/deploy.py): this recipe has no deploy step
DEPLOY_FLAGS = ("prune_vocabulary", "vocabulary_min_count", "vocabulary_max_size", "vocabulary_full_rows",
                "vocabulary_rank", "decoder_vocabulary", "prune_positions", "quantize", "export_onnx",
                "export_ctranslate2")


def check_unknown_flags(unknown: list[str]) -> None:
    """Refuse the flags no arguments class took; the other recipes' deploy and ``--post_training`` options with where to
    go instead."""
    if not unknown:
        return
    deploy = [f"--{name}" for name in flag_names(unknown) if name in DEPLOY_FLAGS]
    if deploy:
        raise RecipeError(
            f"{', '.join(deploy)}: the sentence-embeddings recipe has no deploy step (no --prune_vocabulary, "
            "--quantize or --export_onnx); leave them out and deploy the saved folder with the library: "
            "st = load_pruned_sentence_transformer(OUTPUT_DIR); st[0].processor = prune_vocabulary(st[0].auto_model, "
            "st.tokenizer, texts), then save_pruned_sentence_transformer(st, folder); save_int8(st[0].auto_model, "
            "folder, tokenizer=st.tokenizer); export_onnx(st[0].auto_model, folder, tokenizer=st.tokenizer), pooling "
            "(and normalizing) outside the graph (README, \"Deploy\")")
    check_unused_flags(unknown, "sentence-embeddings")


def warn_if_new_modules(model: SentenceTransformer, path: str) -> None:
    """A plain transformers checkpoint (no modules.json) loads as sentence-transformers' default: the encoder with
    a new pooling and no normalization. Legitimate (training an embedding model from an encoder), but not the
    sentence-transformers folder the option asks for: said in a warning."""
    try:
        modules_json = load_file_path(path, "modules.json", local_files_only=True)
    except Exception:  # noqa: BLE001 - a path sentence-transformers loaded: when in doubt, say nothing
        return
    if modules_json is not None:
        return
    pooling = next((m for m in model if isinstance(m, Pooling)), None)
    mode = getattr(pooling, "pooling_mode", None)
    mode = "+".join(mode) if isinstance(mode, (list, tuple)) else mode or "no"
    logger.warning("--model_name_or_path %s: no sentence-transformers modules found (no modules.json): "
                   "sentence-transformers added a new %s pooling without normalization after the encoder; the run "
                   "prunes and reports on that embedding model (give a sentence-transformers folder for its own "
                   "pooling and normalization)", path, mode)


def check_model(model: SentenceTransformer, opts, args) -> None:
    """What the loaded model tells is wrong, before any training."""
    try:  # a first module hf_adaprune cannot prune (a StaticEmbedding, an unsupported family): said before any work
        inner = transformer_module(model).auto_model
    except (TypeError, ValueError) as err:
        raise RecipeError(f"--model_name_or_path: {err}") from None
    for name, value in (("max_seq_length", opts.max_seq_length), ("pruning_seq_len", args.pruning_seq_len)):
        try:
            check_sequence_length(inner, value, f"--{name}")
        except ValueError as err:
            raise RecipeError(str(err)) from None
    if opts.layer_drop_baseline:
        keep_layer_indices(opts.keep_layers, inner)


def metric_options(opts) -> dict:
    """The options that change the steering metric (which dev pairs, how they are read and embedded) or what is
    trained, recorded in every checkpoint: a resume under others would judge its decisions against a reference
    measured otherwise. Files by name, size and the hash of their start, so that a moved copy is the same file."""
    distillation = opts.objective == "distillation"
    return {"steer": opts.steer, "max_dev_pairs": opts.max_dev_pairs, "max_seq_length": opts.max_seq_length,
            "stsb_dir/sts-dev.csv": file_identity(os.path.join(opts.stsb_dir, "sts-dev.csv")),
            "stsb_dir/sts-train.csv": None if distillation else file_identity(os.path.join(opts.stsb_dir,
                                                                                            "sts-train.csv")),
            "objective": opts.objective,
            "distillation_distance": opts.distillation_distance if distillation else None,
            "sentence_files": [file_identity(resolve_package_path(p, "--sentence_files")) for p in opts.sentence_files]}


def check_steering_pairs(pairs: Dataset, path: str, steer: str) -> None:
    """Refuse dev pairs no rank correlation can be steered by: fewer than 3 (Spearman of 2 is always +-1), or,
    with --steer sts, scores all equal (Spearman undefined: nothing would be pruned)."""
    if len(pairs) < 3:
        raise RecipeError(f"{path}: {len(pairs)} pair(s) to steer by; a rank correlation needs at least 3 (as "
                          "--max_dev_pairs)")
    if steer == "sts" and len(set(pairs["score"])) < 2:
        raise RecipeError(f"{path}: the {len(pairs)} steering pairs all have the score {5 * pairs['score'][0]:g}; "
                          "their Spearman is undefined (give pairs of different scores, or --steer teacher)")


def check_test_pairs(pairs: Dataset, path: str) -> None:
    """Refuse test pairs no Spearman correlation can score: fewer than 3 (of 2 it is always +-1), or scores all
    equal (undefined: the run would end with no test figure)."""
    if len(pairs) < 3:
        raise RecipeError(f"{path}: {len(pairs)} pair(s); a Spearman correlation needs at least 3")
    if len(set(pairs["score"])) < 2:
        raise RecipeError(f"{path}: every pair has the score {pairs['score'][0]}; a Spearman correlation needs scores "
                          "that differ")


def main(argv=None):
    parser = HfArgumentParser((SentenceEmbeddingArguments, SentenceTransformerPruningArguments))
    try:
        opts, args, unknown = parser.parse_args_into_dataclasses(args=recipe_argv(argv, parser),
                                                                 return_remaining_strings=True)
    except ValueError as err:  # argument values the arguments classes refuse
        raise RecipeError(str(err)) from err
    check_unknown_flags(unknown)
    check_options(opts, args)
    check_integrations(args)
    path = resolve_package_path(opts.model_name_or_path, "--model_name_or_path")
    resume_from = resolve_resume(args)  # checked before any work, as the other recipes do
    check_resume_arguments(args, resume_from)
    check_recorded_options(metric_options(opts), resume_from, args.pruning_resume_with_new_arguments)
    check_output_dir(args.output_dir, [path], opts.overwrite_output_dir, resume_from=resume_from)
    if opts.layer_drop_baseline:  # the baseline is saved into OUTPUT_DIR/layer_drop
        check_written_subfolders(args.output_dir, [path], {LAYER_DROP_DIR: "--layer_drop_baseline true"})
    reach_hub_repo(args)  # --push_to_hub without network or write access: before any work
    files_before = folder_state(args.output_dir)  # --push_to_hub uploads what the run writes, not these
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hf_adaprune").setLevel(recipe_log_level(args))
    torch.manual_seed(args.seed)
    # a folder an earlier run saved (pruned): hf_adaprune's classes build it, without remote code or a prompt
    pruned = pruned_folder(path)
    if pruned and os.path.isdir(path) and not os.path.isfile(os.path.join(path, "modules.json")):
        raise RecipeError(f"--model_name_or_path {path} holds a pruned transformers model, not a sentence-transformers "
                          "folder (no modules.json): give a sentence-transformers model, or the folder this recipe (or "
                          "save_pruned_sentence_transformer) wrote")
    try:
        load = load_pruned_sentence_transformer if pruned else SentenceTransformer
        model = load(path, device="cpu" if args.use_cpu else None)
    except (OSError, ValueError) as err:
        raise load_error([path], err) from err
    check_model(model, opts, args)
    # a decoder embedder (last-token pooling) whose tokenizer has no pad token: sentence-transformers would refuse
    # every batch of two sentences
    pad_with_end_of_text(getattr(model, "tokenizer", None), transformer_module(model).auto_model.config.model_type,
                         f"--model_name_or_path {path}")
    if getattr(model, "tokenizer", None) is not None:
        check_tokenizer_has_vocabulary(model.tokenizer, path, "Save the model with its tokenizer "
                                                              "(SentenceTransformer.save(folder) writes both)")
    warn_if_new_modules(model, path)
    model.max_seq_length = opts.max_seq_length
    dense = copy.deepcopy(model).eval()
    dev = read_sts(os.path.join(opts.stsb_dir, "sts-dev.csv"))
    test = read_sts(os.path.join(opts.stsb_dir, "sts-test.csv"))
    steer_pairs = dev.select(range(min(len(dev), opts.max_dev_pairs or len(dev))))
    check_steering_pairs(steer_pairs, os.path.join(opts.stsb_dir, "sts-dev.csv"), opts.steer)
    check_test_pairs(test, os.path.join(opts.stsb_dir, "sts-test.csv"))
    dev_eval, test_eval = sts_evaluator(steer_pairs, "sts-dev"), sts_evaluator(test, "sts-test")
    if opts.steer == "sts":
        evaluator = sts_evaluator(steer_pairs, "sts-dev-steer")
    else:
        steer_sentences = list(dict.fromkeys(list(steer_pairs["sentence1"]) + list(steer_pairs["sentence2"])))
        evaluator = TeacherAgreementEvaluator(steer_sentences, teacher=dense, batch_size=args.per_device_eval_batch_size)
    train, train_sentences = training_data(opts)
    loss = CoSENTLoss(model) if opts.objective == "cosent" else embedding_distillation_loss(model, opts.distillation_distance)
    if opts.objective == "distillation":  # the dense embeddings of the text as training feeds it (--prompts)
        train = with_teacher_embeddings(train, dense, args.per_device_eval_batch_size,
                                        training_prompt(args.prompts, text_column(train)))

    results = {"dense": {"sts_test": spearman(dense, test_eval), "sts_dev": spearman(dense, dev_eval),
                         **profile(dense, args.pruning_seq_len)}}
    logger.info("dense: %s", results["dense"])
    if opts.overwrite_output_dir and args.should_save and not resumes_run_in(args.output_dir, resume_from):
        # the STS evaluators append to eval/similarity_evaluation_<name>_results.csv; other files there are the user's
        remove_earlier_run_outputs(args.output_dir, patterns=("eval/similarity_evaluation_*_results.csv",))
        warn_folders_left(args.output_dir, [] if opts.layer_drop_baseline else [LAYER_DROP_DIR])
    trainer = None
    try:
        trainer = AdaptivePruningSentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss,
                                                             evaluator=evaluator,
                                                             callbacks=[RecipeOptionsRecorder(metric_options(opts))])
        trainer.train(resume_from_checkpoint=resume_from)
    except (KeyError, ValueError) as err:  # refused before the first step: a metric key the evaluator lacks, ...
        if trainer is not None and trainer.state.global_step > 0:
            raise
        raise RecipeError(str(err).strip('"')) from err
    push, args.push_to_hub = args.push_to_hub, False  # one push, at the end: results.json too
    if push and args.hub_model_id:  # the card is written before the push: named after the repo
        trainer.set_card_args(model_name=args.hub_model_id.split("/")[-1])
    trainer.save_model()
    # after --bf16 / --fp16 training accelerate's autocast wrapper stays on the model: scored and timed as saved
    pruned = drop_autocast_forward(as_saved(trainer.model)).eval()
    results["pruned"] = {"sts_test": spearman(pruned, test_eval), "sts_dev": spearman(pruned, dev_eval),
                         **profile(pruned, args.pruning_seq_len)}
    summary = trainer.pruning_summary()
    results["pruning"] = {k: summary[k] for k in ("metric_name", "metric_before", "metric_after", "final_sparsity",
                                                  "stop_reason", "decisions")}
    models = {"dense": dense, "pruned": pruned}

    if opts.layer_drop_baseline:
        keep = keep_layer_indices(opts.keep_layers, dense[0].auto_model)
        student = layer_dropped(dense, keep)
        student.max_seq_length = opts.max_seq_length
        # the sentences the budget reaches (max_steps optimizer steps of every process's batches), shuffled like
        # the pruning run's data
        needed = min(len(train_sentences), args.max_steps * args.per_device_train_batch_size
                     * args.gradient_accumulation_steps * args.world_size)
        distil = Dataset.from_dict({"sentence": train_sentences}).shuffle(seed=args.seed).select(range(needed))
        distil = with_teacher_embeddings(distil, dense, args.per_device_eval_batch_size,
                                         training_prompt(args.prompts, "sentence"))
        base_args = SentenceTransformerTrainingArguments(
            output_dir=os.path.join(args.output_dir, LAYER_DROP_DIR), max_steps=args.max_steps,
            save_strategy="no", report_to="none",
            **{name: getattr(args, name) for name in BASELINE_TRAINING_ARGUMENTS})
        SentenceTransformerTrainer(model=student, args=base_args, train_dataset=distil,
                                   loss=embedding_distillation_loss(student, opts.distillation_distance)).train()
        drop_autocast_forward(student).eval()  # scored and timed as saved, as the pruned model
        # scored before it is saved: the evaluators put their figures into its card (model-index)
        results["layer_drop"] = {"kept_layers": keep, "sts_test": spearman(student, test_eval),
                                 "sts_dev": spearman(student, dev_eval), **profile(student, args.pruning_seq_len)}
        if args.should_save:  # one process writes the folder
            student.save(os.path.join(args.output_dir, LAYER_DROP_DIR))
        models["layer_drop"] = student

    if not args.should_save:  # the other processes of a multi-process run: timing and writing are the main one's
        return results
    test_sentences = list(dict.fromkeys(list(test["sentence1"]) + list(test["sentence2"])))
    results["throughput"] = {
        "batch_1": throughput(models, test_sentences[:1], 1, opts.throughput_repeats * 5),
        f"batch_{opts.throughput_batch}": throughput(models, test_sentences, opts.throughput_batch,
                                                     opts.throughput_repeats),
        "threads": torch.get_num_threads(),
    }
    write_json(os.path.join(args.output_dir, "results.json"), results)  # atomic; a NaN is written as null
    print(format_results(results, opts.throughput_batch))
    if push:  # the layer-drop baseline stays local, as the other recipes' dense control
        args.push_to_hub = True
        push_run_outputs(trainer, args, files_before, left_local=(f"{LAYER_DROP_DIR}/*",))
    return results


def format_results(results: dict, batch: int) -> str:
    names = [n for n in ("dense", "pruned", "layer_drop") if n in results]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    dense = results["dense"]
    rows = [("STS-B test Spearman (cosine)", "sts_test", lambda v: f"{100 * v:.2f}"),
            ("STS-B dev Spearman (cosine), steering pairs", "sts_dev", lambda v: f"{100 * v:.2f}"),
            ("parameters", "params", lambda v: f"{v / 1e6:.2f}M"),
            ("encoder layer FLOPs", "layer_flops", lambda v: f"{v / 1e9:.2f}G ({100 * (1 - v / dense['layer_flops']):.1f}% removed)")]
    for label, key, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(results[n][key]) for n in names) + " |")
    for batch_key in ("batch_1", f"batch_{batch}"):
        t = results["throughput"][batch_key]
        lines.append(f"| encode sentences/s, {batch_key.replace('_', ' ')} | " + " | ".join(
            f"{t[n]['sentences_per_s']:.1f} ({t[n]['speedup']:.2f}x)" for n in names) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
