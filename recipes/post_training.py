"""``--post_training``: the text-classification recipe pruning a fine-tuned model without training.

The same arguments, data checks, output folder and ``results.json`` as the training path, but
:func:`hf_adaprune.post_training_prune` instead of the trainer: scores from ``--post_training_calibration_samples``
training rows, the least-squares re-fit, the metric check (or the ratio search) on the validation rows
the trainer would decide on, no optimizer step. The test set scores the model as loaded (dense; not with
``--test_before_pruning false``) and the pruned one.
"""

from __future__ import annotations

import copy
import logging
import os
import time

from hf_adaprune.post_training import (REFIT_TARGETS, SCORE_KINDS, SUPPORTED_MODEL_TYPES, length_mixed_calibration,
                                      post_training_prune)
from hf_adaprune.post_training.calibration_rows import LONG_FRACTION
from hf_adaprune.post_training.prune import SEARCH_INITIAL_STEP, SEARCH_MIN_STEP, SEARCH_STEP_GROWTH
from hf_adaprune.reporting.report import STRUCTURE_NAMES, hub_id_or_none, write_text
from hf_adaprune.surgery import was_pruned
from hf_adaprune.trainer.arguments import changed_options, prune_kinds, pruning_fields
from hf_adaprune.trainer.eval_order import first_rows
from hf_adaprune.trainer.report import card_path

from . import deploy
from .arguments import RecipeError, check_minimum
from .loading import class_names, load_config
from .results import results_table, test_results, without_layers
from .skeleton import (DenseTrainer, Run, Task, _as_recipe_error, append_to_card, build_model, clear_earlier_run,
                       deploy_and_save, load_error, prepare_run, results_header, subsample)

logger = logging.getLogger("hf_adaprune.recipes.post_training")

KINDS = ("heads", "ffn")  # whole layers only while training
# options of the training path that have no meaning without training: (option, value that is fine)
TRAINING_ONLY = (("dense_control", False), ("distillation", False), ("teacher_model_name_or_path", None),
                 ("pruning_score_ema", 0.0), ("pruning_schedule", "gradual"))
# options post_training_prune has no counterpart for: (option, the only value it runs with, what it does instead)
FIXED = (("pruning_target_type", "flops", "removes a fraction of the layer FLOPs"),
         ("pruning_roles", "all", "prunes every role"),
         ("pruning_multiple_of", 1, "keeps widths unrounded"),
         ("pruning_scope", "global", "ranks the structures of all layers together"),
         # the --post_training_search controller's steps are post_training_prune's fixed ones
         ("pruning_initial_step", SEARCH_INITIAL_STEP, f"searches with a first step of {SEARCH_INITIAL_STEP}"),
         ("pruning_min_step", SEARCH_MIN_STEP, f"searches down to steps of {SEARCH_MIN_STEP}"),
         ("pruning_step_growth", SEARCH_STEP_GROWTH, f"grows its search steps by {SEARCH_STEP_GROWTH}"))
# the training path's options --post_training reads; the others are refused away from their defaults
READ = ("prune", "pruning_criterion", "pruning_target", "pruning_metric", "pruning_tolerance", "pruning_tolerance_type",
        "min_heads_per_layer", "min_neurons_per_layer", "pruning_eval_samples", "pruning_normalize_scores",
        "pruning_seq_len")
# the training path's re-fit options and the --post_training ones that do their work
TWINS = {"pruning_refit": "post_training_refit", "pruning_refit_target": "post_training_refit_target",
         "pruning_refit_samples": "post_training_refit_samples", "pruning_refit_long_share": "post_training_long_share"}
POOL_FACTOR = 5  # --post_training_long_share: training rows tokenized per calibration row


def check_arguments(model_args, data_args, training_args) -> None:
    """Combinations ``--post_training`` cannot run, refused before data or model are loaded."""
    if not model_args.model_name_or_path:
        raise RecipeError("--post_training prunes a fine-tuned model: give --model_name_or_path (a model built "
                          "from --config_name has nothing to keep)")
    if getattr(model_args, "config_name", None):  # the model is built from its own config, whose weights it holds
        raise RecipeError(f"--config_name {model_args.config_name}: --post_training prunes the fine-tuned model of "
                          "--model_name_or_path as saved, with its own config (another config would drop or "
                          "misread its weights); leave --config_name out")
    for name, fine in TRAINING_ONLY:
        if getattr(training_args, name, getattr(data_args, name, fine)) != fine:
            raise RecipeError(f"--{name} applies to pruning while training; --post_training does not train. Leave "
                              f"it out, or drop --post_training")
    for name, only, instead in FIXED:
        if getattr(training_args, name) != only:
            raise RecipeError(f"--{name} {getattr(training_args, name)!r}: --post_training {instead}; leave --{name} "
                              f"at {only!r}")
    checked = set(READ) | {name for name, _ in TRAINING_ONLY} | {name for name, _, _ in FIXED}
    for name in changed_options(training_args, [f.name for f in pruning_fields() if f.name not in checked]):
        value = getattr(training_args, name)
        if name in TWINS:
            raise RecipeError(f"--{name} {value!r} applies to the re-fit while training; --post_training's re-fit "
                              f"takes --{TWINS[name]}")
        raise RecipeError(f"--{name} {value!r} applies to pruning while training; --post_training does not read it. "
                          "Leave it out, or drop --post_training")
    if training_args.push_to_hub:
        raise RecipeError("--push_to_hub: --post_training writes its folder without a Trainer and pushes nothing; "
                          "leave --push_to_hub out and upload OUTPUT_DIR when the run is done (e.g. `hf upload "
                          "REPO_ID OUTPUT_DIR`, or save_pruned(model, folder, push_to_hub=True, repo_id=REPO_ID))")
    if training_args.resume_from_checkpoint not in (None, False, "", "false", "False"):
        raise RecipeError("--resume_from_checkpoint: --post_training has no checkpoints to resume from; leave it out")
    if not set(prune_kinds(training_args.prune)) <= set(KINDS):  # a bad value failed when the flags were parsed
        raise RecipeError(f"--prune {training_args.prune!r}: --post_training prunes heads and FFN neurons "
                          "(heads, ffn, both or heads,ffn); whole layers only while training")
    if training_args.pruning_criterion not in SCORE_KINDS:
        raise RecipeError(f"--pruning_criterion {training_args.pruning_criterion!r}: --post_training scores with "
                          f"{' or '.join(SCORE_KINDS)}")
    if data_args.post_training_refit_target not in REFIT_TARGETS:
        raise RecipeError(f"--post_training_refit_target must be one of {', '.join(REFIT_TARGETS)}; got "
                          f"{data_args.post_training_refit_target!r}")
    if data_args.post_training_ridge < 0:
        raise RecipeError(f"--post_training_ridge must be >= 0; got {data_args.post_training_ridge}")
    check_minimum(data_args, ("post_training_calibration_samples", "post_training_refit_samples"), 1)
    if not 0.0 <= data_args.post_training_long_share <= 1.0:
        raise RecipeError(f"--post_training_long_share is the share of calibration rows drawn from the longest "
                          f"training rows; it must lie in [0, 1], got {data_args.post_training_long_share}")
    try:
        config = load_config(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    except (OSError, ValueError) as err:
        raise load_error([model_args.model_name_or_path], err) from err
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise RecipeError(f"--post_training supports the encoder families {', '.join(SUPPORTED_MODEL_TYPES)}; "
                          f"{model_args.model_name_or_path} is {config.model_type!r}. Drop --post_training to prune "
                          f"it while fine-tuning")
    if not any(name.endswith("ForSequenceClassification") for name in config.architectures or []):
        raise RecipeError(f"--post_training needs a fine-tuned sequence classifier; {model_args.model_name_or_path} "
                          f"is {config.architectures} (its classification head would be untrained). Fine-tune it "
                          f"first, or drop --post_training to fine-tune and prune in one run")


def check_labels(run: Run) -> None:
    """The data's classes are the model's: same count and, where the model names them, the same names (in any
    order: the data's labels are then numbered as the model's when it is built)."""
    config = load_config(run.model_args.model_name_or_path, cache_dir=run.model_args.cache_dir)
    names, model_names = run.task_results["labels"], class_names(config)
    if len(names) != config.num_labels or (model_names is not None and sorted(model_names) != sorted(names)):
        model_names = model_names or [config.id2label[i] for i in range(config.num_labels)]
        raise RecipeError(f"the data's labels {names} are not the model's {model_names}: --post_training keeps the "
                          f"model's classifier, so the classes must be the same (name them as the model does, or "
                          f"in its order, with --label_mapping)")


def long_rows_fraction(rows: int, drawn: int, long_share: float) -> float:
    """The share of the ``rows`` tokenized training rows that count as long: the longest fifth, or, where a small
    training split's fifth holds fewer than the ``long_share`` of the ``drawn`` rows wanted (or the other rows fewer
    than the rest), the share that holds both (named in a warning) rather than a failure after loading."""
    wanted = round(long_share * drawn)
    fifth = round(LONG_FRACTION * rows)
    long_rows = min(max(fifth, wanted), rows - (drawn - wanted))
    if long_rows == fifth:
        return LONG_FRACTION
    logger.warning("--post_training_long_share %s: %d long rows and %d others of %d drawn do not fit the longest fifth "
                   "of the training split's %d rows (%d); the longest %d rows count as long instead", long_share,
                   wanted, drawn - wanted, drawn, rows, fifth, long_rows)
    return long_rows / rows


def run_post_training(task: Task, argv: list[str] | None = None) -> dict:
    """The ``--post_training`` run of ``task`` (text classification); returns what it writes to results.json."""
    started = time.time()
    run, _ = prepare_run(task, argv)
    model_args, data_args, training_args = run.model_args, run.data_args, run.training_args
    check_labels(run)
    # only the calibration rows of the training data are used: tokenize no more (with long rows mixed in, a pool
    # of POOL_FACTOR times as many rows to find the longest fifth in), unless --prune_vocabulary keeps the tokens
    # of the whole training split (the same rows are drawn from it below)
    samples = data_args.post_training_calibration_samples
    pool = samples * (POOL_FACTOR if data_args.post_training_long_share > 0 else 1)
    if not data_args.prune_vocabulary:
        run.splits["train"] = subsample(run.splits["train"], pool, training_args.seed)
    build_model(task, run)
    deploy.check_request(run)
    deploy.check_rows(run)
    run.model.config._name_or_path = model_args.base_model_id or ""
    clear_earlier_run(run, None)  # an earlier training run's checkpoints and metrics are not this model's
    decision_set = first_rows(run.datasets["validation"], training_args.pruning_eval_samples)
    calibration = subsample(run.datasets["train"], pool, training_args.seed)
    if data_args.post_training_long_share > 0:
        drawn = min(samples, len(calibration))
        long_fraction = long_rows_fraction(len(calibration), drawn, data_args.post_training_long_share)
        calibration = _as_recipe_error(lambda: length_mixed_calibration(
            calibration, drawn, long_share=data_args.post_training_long_share, long_fraction=long_fraction,
            seed=training_args.seed))
    result = _as_recipe_error(lambda: post_training_prune(  # bad values fail before any forward pass
        run.model, calibration, training_args.pruning_target, metric=training_args.pruning_metric,
        tolerance=training_args.pruning_tolerance, eval_dataset=decision_set,
        tolerance_type=training_args.pruning_tolerance_type, scores=training_args.pruning_criterion,
        refit=data_args.post_training_refit, refit_target=data_args.post_training_refit_target,
        ridge=data_args.post_training_ridge, refit_samples=data_args.post_training_refit_samples,
        search=data_args.post_training_search, kinds=prune_kinds(training_args.prune),
        normalize_scores=training_args.pruning_normalize_scores,
        min_heads_per_layer=training_args.min_heads_per_layer,
        min_neurons_per_layer=training_args.min_neurons_per_layer, seq_len=training_args.pruning_seq_len,
        batch_size=training_args.per_device_train_batch_size, tokenizer=run.processing_class,
        data_collator=run.data_collator,
        output_dir=training_args.output_dir if training_args.should_save else None,
        progress=not training_args.disable_tqdm))
    return finish(task, run, result, started, len(calibration))


def finish(task: Task, run: Run, result, started: float, calibration_samples: int) -> dict:
    """Test scores (dense as loaded, unless --test_before_pruning false; pruned), latency, deployed copies, model
    card and results.json."""
    data_args, training_args = run.data_args, run.training_args
    test_dataset = run.datasets.get("test")
    scores = {}
    if test_dataset is not None:  # plain Trainers only evaluate: no optimizer is created
        # --test_before_pruning false: the model as loaded is not scored on the test set
        sides = [("dense", run.model)] if data_args.test_before_pruning else []
        sides.append(("pruned", result.model))
        for side, model in sides:
            scores[side] = task.score_test(DenseTrainer(**run.trainer_kwargs(model, training_args)), test_dataset, run)
    repeats = getattr(data_args, "latency_repeats", 0) if task.latency else 0
    latency = None
    if repeats:
        latency = task.latency(copy.deepcopy(run.model), result.model, run)
        latency["dense_model"] = "dense, as loaded"
    comparison = result.comparison.to_dict()
    stop = "searched the ratio" if data_args.post_training_search else "fixed target"
    refit = data_args.post_training_refit  # its settings are reported where it ran (None: nothing used them)
    results = {
        **results_header(task, run, mode="post_training"),
        "test": None if test_dataset is None else test_results(len(test_dataset), task.reported_metrics(run), scores, None,
                                                               None, dense_asked=data_args.test_before_pruning),
        "validation": {"metric": training_args.pruning_metric, "samples": len(first_rows(
            run.datasets["validation"], training_args.pruning_eval_samples)),
            "dense_reference": result.reference, "pruned_last_decision": result.metric,
            "pruned_final": result.metric, "within_tolerance": result.within_tolerance,
            "tolerance": training_args.pruning_tolerance, "tolerance_type": training_args.pruning_tolerance_type},
        "pruning": {"criterion": training_args.pruning_criterion, "target": training_args.pruning_target,
                    "target_type": "flops", "final_sparsity": comparison["layer_flops_removed"],
                    "stop_reason": f"post-training, no optimizer step ({stop})",
                    # a folder pruned before: every "dense" figure is of the model as loaded
                    "start_pruned": was_pruned(run.model)},
        "post_training": {"calibration_samples": calibration_samples,
                          "long_share": data_args.post_training_long_share,
                          "structures": list(prune_kinds(training_args.prune)),
                          "refit": data_args.post_training_refit,
                          # the pruned groups re-fitted, and those left un-fitted (too few calibration tokens)
                          "refitted": sorted(result.refit_errors), "refit_skipped": result.refit_skipped,
                          "refit_target": data_args.post_training_refit_target if refit else None,
                          # the calibration rows the re-fit read: no more than there are
                          "refit_samples": _refit_rows(data_args, calibration_samples) if refit else None,
                          "ridge": data_args.post_training_ridge if refit else None, "ratio": result.ratio,
                          "history": result.history, "timings": result.timings},
        "comparison": without_layers(comparison),
        "latency": latency,
        "train": None,  # no training step
        "dense_control": None,
        "deploy": None,
        "wall_time_s": None,
    }
    start = "start" if results["pruning"]["start_pruned"] else "dense"
    table = results_table(results, task.format_value) + (
        f"\npost-training: the model as loaded was pruned without training (no optimizer step); the {start} column "
        "is that model") + ("" if test_dataset is None or data_args.test_before_pruning else
                            f"\nnote: --test_before_pruning false: the {start} model was not scored on the test set")
    if training_args.should_save:
        write_card(training_args.output_dir, results, task.format_value)
        if task.card_lines is not None:
            append_to_card(training_args.output_dir, task.card_lines(run) or [])
    deploy_and_save(task, run, result.model, results, table, started)
    return results


def _refit_rows(data_args, calibration_samples: int) -> int | None:
    """The calibration rows the re-fit read (None: no re-fit): --post_training_refit_samples, or all of them when
    there are fewer (or it is None)."""
    if not data_args.post_training_refit:
        return None
    asked = data_args.post_training_refit_samples
    return calibration_samples if asked is None else min(asked, calibration_samples)


def write_card(folder: str, results: dict, format_value) -> None:
    """``README.md`` in ``folder``: what the model is and that it was pruned without training."""
    cmp, test, val = results["comparison"], results["test"], results["validation"]
    metric, post = val["metric"], results["post_training"]
    structures = " and ".join(STRUCTURE_NAMES[kind] for kind in post["structures"])
    skipped = ", ".join(post["refit_skipped"])
    if not post["refit"]:
        refit = ""
    elif skipped and not post["refitted"]:
        refit = f", no output projection re-fitted (too few calibration tokens for {skipped})"
    else:
        refit = ", each pruned layer's output projection re-fitted by least squares" + (
            f" except those of {skipped} (too few calibration tokens)" if skipped else "")
    base = results["base_model"] or "the model given"
    start = "start" if results["pruning"].get("start_pruned") else "dense"
    of_start = " of the model as loaded (pruned before)" if start == "start" else ""
    lines = ["---", "library_name: transformers", "pipeline_tag: text-classification", "tags:", "- hf_adaprune",
             "- pruned", "- post-training-pruning",
             *([f"base_model: {hub_id}"] if (hub_id := hub_id_or_none(results["base_model"])) else []), "---", "",
             f"# {os.path.basename(os.path.abspath(folder))}", "",
             f"A fine-tuned classifier based on {base}, pruned **without training** by hf_adaprune's post-training "
             f"pruning (after Kwon et al. 2022): "
             f"{structures} scored on {post['calibration_samples']} training rows, "
             f"{100 * cmp['layer_flops_removed']:.1f}% of the layer FLOPs{of_start} removed"
             f"{refit}; no optimizer step.", "",
             f"| | {start} | pruned |", "|---|---|---|",
             f"| validation {val['metric']} (n={val['samples']}) | {format_value(metric, val['dense_reference'])} "
             f"| {format_value(metric, val['pruned_final'])} |"]
    for name in (test or {}).get("metrics", []):
        lines.append(f"| test {name} (n={test['samples']}) | {format_value(name, test[f'dense_{name}'])} "
                     f"| {format_value(name, test[f'pruned_{name}'])} |")
    if val.get("within_tolerance") is False:
        lines += ["", f"The pruned model's validation {metric} is **beyond the tolerance** asked "
                      f"({val['tolerance']} {val['tolerance_type']}) of the {start} model's."]
    lines += ["", "Load it with `hf_adaprune.AutoPrunedModel.from_pretrained(folder)` or with "
                  "`trust_remote_code=True`."]
    write_text(card_path(folder), "\n".join(lines) + "\n")  # beside a README.md of the user's own, not over it
