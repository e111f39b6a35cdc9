"""Where a pruned encoder's time goes: all-MiniLM-L6-v2 at batch 32, seq 128, by kind of operator (CPU).

Speed-up / ideal (``multiple_of.py``) falls from ~0.95 at 50% of the layer FLOPs removed to ~0.8 at 80%. This
script profiles ``forward`` of the dense model and of magnitude-pruned copies (widths, and widths with whole
layers; the timing depends on the kept shapes, not on which structures are kept) with ``torch.profiler`` and sums
the operators' own CPU time by kind: matrix products (what the FLOP count covers and pruning shrinks), attention
kernels, LayerNorm, GELU, elementwise adds/multiplies (residuals, masks), copies and the rest. The share of each
kind in the pruned model's time, against the dense model's, says what keeps the speed-up below the FLOP ratio::

    python benchmarks/op_breakdown.py        # -> benchmarks/results/op_breakdown.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections import defaultdict

import torch
import transformers
from torch.profiler import ProfilerActivity, profile

from multiple_of import pruned_model, with_layers  # this script's neighbour (its folder is on sys.path when it runs)
from post_training import minilm_path
from run_record import make_parent_folder
from hf_adaprune.reporting.flops import example_inputs, model_profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = (  # (kind, operator name fragments); the first match wins, so attention's baddbmm goes before "bmm"
    ("attention kernel", ("scaled_dot_product", "softmax", "baddbmm")),
    ("matrix products", ("addmm", "aten::mm", "bmm", "aten::matmul", "linear")),
    ("LayerNorm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("elementwise", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::where", "aten::masked_fill",
                     "aten::rsub", "aten::tanh")),
    ("copies and views", ("copy_", "contiguous", "clone", "aten::view", "reshape", "transpose", "permute",
                          "expand", "aten::to", "_to_copy", "cat", "index_select", "embedding", "slice", "select",
                          "unsqueeze", "empty", "as_strided")),
)
EXACT = {"aten::t": "copies and views"}  # names too short to match as fragments ("t" is in every "aten::")


def kind_of(name: str) -> str:
    if name in EXACT:
        return EXACT[name]
    for kind, fragments in KINDS:
        if any(fragment in name for fragment in fragments):
            return kind
    return "other"


def profiled_ms(model, inputs) -> dict[str, float]:
    """One profiled forward: each kind's own CPU time (ms), and their sum (``total``)."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**inputs)
    totals = defaultdict(float)
    for event in prof.key_averages():
        totals[kind_of(event.key)] += event.self_cpu_time_total / 1000
    return {**{kind: totals[kind] for kind in [k for k, _ in KINDS] + ["other"]}, "total": sum(totals.values())}


def breakdowns(models: dict, inputs, repeats: int) -> dict[str, dict[str, float]]:
    """Per model, the median over ``repeats`` rounds (each model profiled once per round, in turn) of
    :func:`profiled_ms`."""
    with torch.inference_mode():
        for model in models.values():
            model(**inputs)  # one unprofiled forward each first
    runs = {name: defaultdict(list) for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            for kind, ms in profiled_ms(model, inputs).items():
                runs[name][kind].append(ms)
    return {name: {kind: statistics.median(values) for kind, values in per_kind.items()}
            for name, per_kind in runs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "op_breakdown"),
                        help="file-name stem: writes STEM.json and STEM.md (their folder is made first)")
    opts = parser.parse_args(argv)
    make_parent_folder(opts.out)  # before the work: a bad --out fails now, not after it
    torch.set_num_threads(opts.threads)
    load_start = os.getloadavg()
    dense = transformers.AutoModel.from_pretrained(minilm_path()).eval()
    models = {"dense": dense,
              "50% widths": pruned_model(dense, 0.5, 16)[0],
              "80% widths": pruned_model(dense, 0.8, 16)[0],
              "80%: 3 of 6 layers + widths": with_layers(dense, 0.8, 3, 16)[0]}
    dense_flops = model_profile(dense, seq_len=128)["flops"]
    inputs = example_inputs(dense, seq_len=128, batch_size=opts.batch_size)
    rows = {}
    for name, ms in breakdowns(models, inputs, opts.repeats).items():
        flops = model_profile(models[name], seq_len=128)["flops"]
        rows[name] = {"flops_kept": flops / dense_flops, "ms": ms}
        print(name, {k: round(v, 1) for k, v in ms.items()}, flush=True)
    kinds = [k for k, _ in KINDS] + ["other", "total"]
    lines = [f"# all-MiniLM-L6-v2, forward at batch {opts.batch_size}, seq 128, {opts.threads} thread(s): operators' "
             f"own CPU time by kind (ms, median of {opts.repeats} rounds in which each model ran once, profiled; "
             f"torch.profiler adds overhead of its own, so totals exceed plain timings)", "",
             "| model | FLOPs kept | " + " | ".join(kinds) + " |", "|---|---:|" + "---:|" * len(kinds)]
    for name, row in rows.items():
        cells = [f"{row['ms'][k]:.1f} ({100 * row['ms'][k] / row['ms']['total']:.0f}%)" for k in kinds[:-1]]
        lines.append(f"| {name} | {100 * row['flops_kept']:.1f}% | " + " | ".join(cells)
                     + f" | {row['ms']['total']:.1f} |")
    lines += ["", "Time kept against the dense model, per kind (pruned ms / dense ms):", "",
              "| model | FLOPs kept | " + " | ".join(kinds) + " |", "|---|---:|" + "---:|" * len(kinds)]
    for name, row in list(rows.items())[1:]:
        lines.append(f"| {name} | {100 * row['flops_kept']:.1f}% | " + " | ".join(
            f"{row['ms'][k] / max(rows['dense']['ms'][k], 1e-9):.2f}" for k in kinds) + " |")
    lines += ["", f"Load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}; "
              f"{platform.platform()}, torch {torch.__version__}."]
    with open(opts.out + ".json", "w") as f:
        json.dump({"rows": rows, "settings": vars(opts), "load_average_start_end": [load_start[0], os.getloadavg()[0]]},
                  f, indent=1)
    with open(opts.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
