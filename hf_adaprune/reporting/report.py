"""What a pruning run leaves behind for people: a JSON report, two plots and a model card."""

from __future__ import annotations

import json
import os
from pathlib import Path

REPORT_FILE = "pruning_report.json"
CURVE_FILE = "pruning_curve.png"
LAYERS_FILE = "pruning_layers.png"


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write through a temporary file so a crash never leaves half a report."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def plot_pruning_curve(history: list[dict], metric_name: str, path: str | os.PathLike) -> None:
    """Metric vs sparsity for every decision: kept steps in green, roll-backs in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    points = [h for h in history if "metric" in h]
    kept = [h for h in points if h["event"] in ("reference", "keep")]
    rolled = [h for h in points if h["event"] == "rollback"]
    ax.plot([h["ratio"] for h in kept], [h["metric"] for h in kept], "o-", color="tab:green", label="kept")
    ax.plot([h["ratio"] for h in rolled], [h["metric"] for h in rolled], "x", color="tab:red", markersize=9,
            label="rolled back")
    if points:
        ax.axhline(points[0]["metric"], color="grey", linestyle=":", label="dense reference")
    ax.set_xlabel("sparsity (fraction pruned)")
    ax.set_ylabel(metric_name)
    ax.set_title("Adaptive pruning decisions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_layer_structure(groups: dict[str, dict], path: str | os.PathLike) -> None:
    """Kept fraction of heads and FFN width per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = {k: v for k, v in groups.items() if v["kind"] == "heads"}
    ffn = {k: v for k, v in groups.items() if v["kind"] != "heads"}
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3, 0.3 * max(len(heads), len(ffn), 1) + 1.5)))
    for ax, items, title in ((axes[0], heads, "attention heads kept"), (axes[1], ffn, "FFN width kept")):
        names = list(items)
        kept = [items[n]["kept"] for n in names]
        original = [items[n]["original"] for n in names]
        ax.barh(names, original, color="lightgrey", label="original")
        ax.barh(names, kept, color="tab:blue", label="kept")
        ax.invert_yaxis()
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def model_card(summary: dict) -> str:
    """Markdown model card of a pruned model from the run summary (see the trainer's ``pruning_summary``)."""
    base = summary.get("base_model") or "unknown"
    dataset = summary.get("dataset")
    lines = ["---", "library_name: transformers", "tags:", "- hf_adaprune", "- pruning", "- structured-pruning"]
    if base != "unknown":
        lines.append(f"base_model: {base}")
    if dataset:
        lines += ["datasets:", f"- {dataset}"]
    lines += ["---", "", f"# {summary.get('model_name') or 'Pruned model'}", ""]
    lines.append(
        f"Pruned from `{base}` by adaptive structured pruning (attention heads and FFN neurons, "
        f"{summary.get('criterion', 'taylor')} importance) while fine-tuning"
        + (f" on `{dataset}`." if dataset else ".")
    )
    lines += ["", "| | dense | pruned |", "|---|---|---|"]
    metric = summary.get("metric_name", "metric")
    if summary.get("metric_before") is not None:
        after = summary.get("metric_after")
        lines.append(f"| {metric} (eval) | {summary['metric_before']:.4f} | "
                     f"{'n/a' if after is None else f'{after:.4f}'} |")
    profile = summary.get("comparison")
    if profile:
        lines.append(f"| parameters | {profile['params_before']:,} | {profile['params_after']:,} "
                     f"(-{100 * profile['params_removed']:.1f}%) |")
        lines.append(f"| FLOPs (seq {profile['seq_len']}) | {profile['flops_before']:,} | {profile['flops_after']:,} "
                     f"(-{100 * profile['flops_removed']:.1f}%) |")
    lines += ["", "## Kept structure per layer", "", "| group | kind | kept / original |", "|---|---|---|"]
    for name, g in summary.get("groups", {}).items():
        lines.append(f"| {name} | {g['kind']} | {g['kept']} / {g['original']} |")
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from transformers import AutoModel  # or the AutoModelFor... class of the task",
        "model = AutoModel.from_pretrained(path, trust_remote_code=True)  # modeling_adaprune.py rebuilds the shapes",
        "```",
        "",
        "With `hf_adaprune` installed, `hf_adaprune.AutoPrunedModel.from_pretrained(path)` needs no remote code.",
        "",
    ]
    return "\n".join(lines)
