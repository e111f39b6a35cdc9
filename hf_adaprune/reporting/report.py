"""What a pruning run leaves behind for people: a JSON report, two plots and a model card."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .summary import PruningSummary

logger = logging.getLogger(__name__)

REPORT_FILE = "pruning_report.json"
CURVE_FILE = "pruning_curve.png"
LAYERS_FILE = "pruning_layers.png"
POST_TRAINING_REPORT_FILE = "post_training_report.json"
CARD_BESIDE_USER_README = "README.hf_adaprune.md"  # where the card goes when README.md is the user's own
# what a pruning trainer writes beside its model besides the card
TRAINING_REPORT_FILES = (REPORT_FILE, CURVE_FILE, LAYERS_FILE, "training_args.bin")
# in the stop reason of a run whose load_best_model_at_end restored a checkpoint from before the pruning reference
BEST_BEFORE_REFERENCE = "predates the pruning reference"


def card_data(path: str) -> dict | None:
    """The metadata of the card at ``path`` (None: no file, or not a model card)."""
    if not os.path.isfile(path):
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(path).data.to_dict()
    except Exception:  # not a card at all: the user's text
        return None


def card_tags(path: str) -> set[str] | None:
    """The tags of the card at ``path`` (None: no file, or not a model card)."""
    data = card_data(path)
    return None if data is None else _tags(data)


def _tags(data: dict) -> set[str]:
    tags = data.get("tags") or []
    return set(tags if isinstance(tags, list) else [tags])


def is_adaprune_card(path: str) -> bool:
    """Whether ``path`` is a model card hf_adaprune wrote (tagged hf_adaprune)."""
    return "hf_adaprune" in (card_tags(path) or set())


def is_user_readme(path: str) -> bool:
    """Whether ``path`` is a README.md that is not a card a library wrote for the model saved there: neither
    hf_adaprune's (tagged hf_adaprune), nor transformers' ``create_model_card`` of an earlier run in the folder
    (tagged generated_from_trainer, which describes the dense fine-tuning), nor the card sentence-transformers'
    ``save`` writes (``library_name: sentence-transformers``: generated for the dense model, or the card of the
    folder it was loaded from). Those are replaced by the pruned model's card."""
    if not os.path.isfile(path):
        return False
    data = card_data(path)
    if data is None:
        return True
    generated = {"hf_adaprune", "generated_from_trainer"} & _tags(data)
    return not (generated or data.get("library_name") == "sentence-transformers")


def remove_reports_of_another_model(folder: str | os.PathLike, names: Iterable[str], card: bool, why: str) -> list[str]:
    """Remove from ``folder`` the files of ``names`` and, with ``card``, a README.md a trainer wrote (hf_adaprune's
    card, or transformers' of the dense fine-tuning; never the user's own): they describe another model than the
    one just saved there. Warns naming them; returns their names."""
    folder = Path(folder)
    removed = [name for name in names if (folder / name).is_file()]
    if card and (folder / "README.md").is_file() and not is_user_readme(str(folder / "README.md")):
        removed.append("README.md")
    beside = folder / CARD_BESIDE_USER_README  # the card written beside a README.md of the user's own
    if card and is_adaprune_card(str(beside)):
        removed.append(CARD_BESIDE_USER_README)
    for name in removed:
        (folder / name).unlink()
    if removed:
        logger.warning("removed from %s: %s, which described the model saved there before (%s)", folder,
                       ", ".join(removed), why)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` through a temporary file in the same folder, so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _plain(value):
    """JSON form of what ``json`` does not know: records (``to_dict``), other mappings, tensors and numpy arrays
    and scalars (``tolist``: lists of any shape, ints stay ints, bools stay bools), other numbers (``float``)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    if callable(getattr(value, "tolist", None)):  # torch.Tensor, np.ndarray, np.int64, np.bool_, ...
        return value.tolist()
    return float(value)


def write_json(path: str | os.PathLike, data: dict) -> None:
    """``data`` as strict JSON: a NaN or infinite metric is written as null (bare NaN is not JSON)."""
    write_text(path, json.dumps(_finite(data), indent=2, default=lambda value: _finite(_plain(value)),
                                allow_nan=False))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _pyplot(path):
    """``matplotlib.pyplot`` on the Agg backend, or None (logged) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("%s not written: matplotlib is not installed (pip install 'hf-adaprune[plots]')", path)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pruning_curve(history: list[dict], metric_name: str, path: str | os.PathLike) -> None:
    """Metric vs sparsity for every decision: kept steps in green, roll-backs in red (skipped without matplotlib)."""
    plt = _pyplot(path)
    if plt is None:
        return

    fig, ax = plt.subplots(figsize=(6, 4))
    points = [h for h in history if "metric" in h]
    kept = [h for h in points if h["event"] in ("reference", "keep")]
    rolled = [h for h in points if h["event"] == "rollback"]
    # the sparsity the masks reached (floors and whole structures can stop short of the ratio tried)
    ax.plot([h.get("selected", h["ratio"]) for h in kept], [h["metric"] for h in kept], "o-", color="tab:green",
            label="kept")
    ax.plot([h.get("selected", h["ratio"]) for h in rolled], [h["metric"] for h in rolled], "x", color="tab:red",
            markersize=9, label="rolled back")
    if points:
        ax.axhline(points[0]["metric"], color="grey", linestyle=":", label="dense reference")
    ax.set_xlabel("sparsity (fraction pruned)")
    ax.set_ylabel(metric_name)
    ax.set_title("Adaptive pruning decisions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _natural_key(name: str) -> list:
    """``encoder.layer.10`` after ``encoder.layer.2``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split(" ")[0].split(".")]


def layer_structure_rows(groups: dict[str, dict], removed: Iterable[str] = ()) -> dict[str, list[tuple]]:
    """The rows of the layer plot: per panel (``heads``, ``ffn``), ``(name, kept, original)`` in layer order; a
    layer removed whole is a row ``"LAYER (removed)"`` with 0 kept of the widest of its stack's groups of that kind
    (the dense layers of a stack are alike)."""
    panels = {"heads": {}, "ffn": {}}
    for name, group in groups.items():
        panels["heads" if group["kind"] == "heads" else "ffn"][name] = (group["kept"], group["original"])
    for layer in removed:
        stack = layer.rsplit(".", 1)[0] + "."
        for rows in panels.values():
            widths = [original for name, (_, original) in rows.items() if name.startswith(stack)]
            widths = widths or [original for _, original in rows.values()]
            if widths:
                rows[f"{layer} (removed)"] = (0, max(widths))
    return {kind: [(name, *rows[name]) for name in sorted(rows, key=_natural_key)] for kind, rows in panels.items()}


def plot_layer_structure(groups: dict[str, dict], path: str | os.PathLike, removed: Iterable[str] = ()) -> None:
    """Kept fraction of heads and FFN width per layer, layers removed whole at 0 (skipped without matplotlib)."""
    plt = _pyplot(path)
    if plt is None:
        return

    panels = layer_structure_rows(groups, removed)
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3, 0.3 * max(map(len, panels.values()), default=1) + 1.5)))
    for ax, rows, title in ((axes[0], panels["heads"], "attention heads kept"),
                            (axes[1], panels["ffn"], "FFN width kept")):
        names = [row[0] for row in rows]
        ax.barh(names, [row[2] for row in rows], color="lightgrey", label="original")
        ax.barh(names, [row[1] for row in rows], color="tab:blue", label="kept")
        ax.invert_yaxis()
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


DATA_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt", ".parquet", ".arrow", ".gz", ".zip", ".bz2", ".xz")


def hub_id_or_none(name: str | None) -> str | None:
    """``name`` if it reads as a Hub repo id and is not a local path (one that does not exist from here, such as
    ``data/train.csv``, included: a name ending in a data file's suffix); None otherwise."""
    if not name or os.path.exists(name) or os.path.isabs(name) or name.startswith((".", "~")) \
            or name.lower().endswith(DATA_FILE_SUFFIXES):
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [v for v in value if v is not None]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def pruned_metric(summary: PruningSummary) -> float | None:
    """The saved model's metric: the final check, measured on the weights and masks the model was saved with
    (``load_best_model_at_end`` included), else the last kept decision's."""
    return summary.final_check["metric"] if summary.final_check else summary.metric_after


def metric_rows_note(summary: PruningSummary) -> str:
    """``eval``, or ``first N of M eval rows`` where the decisions read a part of the eval set: what the card's
    metric was measured on."""
    if summary.eval_rows is None or summary.eval_set_rows is None or summary.eval_rows >= summary.eval_set_rows:
        return "eval"
    return f"first {summary.eval_rows:,} of {summary.eval_set_rows:,} eval {summary.eval_unit}"


def _eval_results(summary: PruningSummary, task: str | None, dataset_id: str | None, dataset_name: str):
    """The model-index entries: the steering metric of the dense reference (the starting model's, "start", when it
    was already pruned, as the card's text says) and of the pruned model."""
    from huggingface_hub import EvalResult

    if task is None:
        return None
    results = []
    reference = "start" if summary.start_pruned else "dense"
    note = metric_rows_note(summary)
    rows = "" if note == "eval" else f", {note}"
    for label, value in ((reference, summary.metric_before), ("pruned", pruned_metric(summary))):
        if value is not None:
            results.append(EvalResult(
                task_type=task, dataset_type=dataset_id or "custom", dataset_name=dataset_name,
                metric_type=summary.metric_name, metric_value=float(value),
                metric_name=f"{summary.metric_name} ({label}{rows})"))
    return results or None


def model_card(summary: PruningSummary, *, language=None, license=None, tags: Iterable[str] | None = None,
               tasks=None, datasets=None, hyperparameters: dict | None = None, trained: bool = True):
    """A ``huggingface_hub.ModelCard`` for a pruned model, from the run summary and the Trainer's card arguments.

    ``base_model`` goes into the metadata only when it is a Hub id (never a local path); so do
    ``datasets`` entries; other dataset names appear in the text only. ``trained=False``: the model is saved
    before any training of the run (``save_model()`` before ``train()``); the card says so and shows no results.
    """
    from huggingface_hub import ModelCard, ModelCardData

    base = hub_id_or_none(summary.base_model)
    dataset_names = _as_list(datasets) or _as_list(summary.dataset)
    dataset_ids = [d for d in map(hub_id_or_none, dataset_names) if d]
    task = (_as_list(tasks) or [None])[0]
    shown_dataset = ", ".join(dataset_names) if dataset_names else "evaluation set"
    data = ModelCardData(
        base_model=base, datasets=dataset_ids or None, language=language, license=license,
        library_name="transformers", pipeline_tag=task, model_name=summary.model_name,
        tags=["hf_adaprune", "pruning", "structured-pruning"] + [t for t in _as_list(tags) if t],
        eval_results=_eval_results(summary, task, dataset_ids[0] if dataset_ids else None, shown_dataset),
    )
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}",
                                   body=_card_body(summary, base, dataset_names, hyperparameters) if trained
                                   else _untrained_card_body(summary, base))
    return card


STRUCTURE_NAMES = {"heads": "attention heads", "ffn": "FFN neurons", "layers": "whole layers"}


def structure_names(summary: PruningSummary) -> str:
    """What the run could remove, in words: ``attention heads, FFN neurons and whole layers``."""
    names = [STRUCTURE_NAMES.get(kind, kind) for kind in summary.structures.split(",") if kind]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def sparsity_basis(structures: str | None, target_type: str) -> str:
    """What a run's ``final_sparsity`` is a fraction of, in words, for the kinds ``structures`` names (``--prune``,
    e.g. ``heads,ffn,layers``) and the target type: the figure ``selected_fraction_by_kind`` gives. Widths alone:
    the least pruned kind's fraction (of its cost under flops and latency). Layers alone: the layers' fraction.
    Layers and widths under flops or latency: the fraction of the prunable cost, every removed layer's whole cost
    counted (no one kind's); under structures: the least pruned width kind's count, the heads and neurons of
    removed layers counted as pruned."""
    kinds = [kind.strip() for kind in (structures or "heads,ffn").split(",") if kind.strip()]
    widths = [kind for kind in ("heads", "ffn") if kind in kinds]
    cost = {"flops": "FLOPs", "latency": "time in the latency table"}.get(target_type)
    if "layers" not in kinds:
        return "of the least pruned kind"
    if not widths:
        return f"of the layers' {cost}" if cost else "of the layers"
    if cost:
        return f"of the prunable {cost}, removed layers counted whole"
    which = {"heads": "heads", "ffn": "FFN neurons"}[widths[0]] if len(widths) == 1 else \
        "least pruned of heads and FFN neurons"
    return f"of the {which}, those of removed layers counted as pruned"


def removed_layers(summary: PruningSummary) -> list[str]:
    """Layers of the dense model the pruned one no longer has (reports written before the summary listed them:
    the layers compaction left without parameters)."""
    if summary.removed_layers:
        return list(summary.removed_layers)
    profile = summary.comparison
    return [row.layer for row in (profile.layers if profile else []) if row.params_before and not row.params_after]


def nothing_removed(summary: PruningSummary) -> bool:
    """Whether this run removed nothing from the model it started from (all steps rolled back, or none kept)."""
    profile = summary.comparison
    if profile is not None:
        return profile.params_after >= profile.params_before and profile.flops_after >= profile.flops_before
    if summary.final_sparsity > 0 or (removed_layers(summary) and not summary.start_pruned):
        return False
    if summary.start_pruned:  # the groups' counts are against the dense model, which this run did not start from
        return True
    return bool(summary.groups) and all(g["kept"] == g["original"] for g in summary.groups.values())


def _from_scratch(summary: PruningSummary, base: str | None) -> bool:
    """Whether the model was built from a config: no Hub id and no base model (a local path) to name."""
    return not base and not summary.base_model


def _untrained_card_body(summary: PruningSummary, base: str | None) -> str:
    """The card of a model saved before the pruning trainer trained it: what is configured, nothing of a run."""
    source = f"`{base}`" if base else "the model the trainer was given" + (
        " (built from a config, with no base model)" if _from_scratch(summary, base) else "")
    lines = [f"# {summary.model_name or 'Model'}", "",
             f"This is {source}, saved before training: it has not been trained or pruned by this trainer yet. "
             f"Adaptive structured pruning is configured ({structure_names(summary)}, {summary.criterion} importance, "
             f"target {summary.target} of the {summary.target_type}) but has not run."]
    return "\n".join(lines + _card_footer())


def _card_body(summary: PruningSummary, base: str | None, datasets: list[str], hyperparameters) -> str:
    scratch = _from_scratch(summary, base)
    origin = "from scratch" if scratch else f"from `{base}`" if base else "from its base model"
    trained = "Trained" if scratch else "Fine-tuned"
    lines = [f"# {summary.model_name or 'Pruned model'}", ""]
    on = f" on `{', '.join(datasets)}`" if datasets else ""
    stopped = f" (stopped: {summary.stop_reason})" if summary.stop_reason else ""
    result = ("nothing more was removed; this is the model it started from, pruned before"
              if summary.start_pruned else "nothing was removed; this is the dense model")
    if summary.metric_before is None and BEST_BEFORE_REFERENCE in (summary.stop_reason or ""):
        lines.append(f"{trained} {origin}{on}. Adaptive structured pruning ran, but load_best_model_at_end "
                     f"restored a checkpoint from before it ({summary.stop_reason}): {result}.")
    elif summary.metric_before is None:  # training ended before the pruning reference: nothing was removed
        why = (f"training ended before its warm-up was over, stopped: {summary.stop_reason}" if summary.stop_reason
               else "training stopped before its warm-up was over")
        lines.append(f"{trained} {origin}{on}. Adaptive structured pruning was configured but did not start ({why}): "
                     f"{result}.")
    elif nothing_removed(summary):
        lines.append(f"{trained} {origin}{on}. Adaptive structured pruning ({structure_names(summary)}, "
                     f"{summary.criterion} importance) ran but kept no pruning step{stopped}: {result}.")
    elif scratch:
        lines.append(f"Trained from scratch{on} and pruned by adaptive structured pruning ({structure_names(summary)}, "
                     f"{summary.criterion} importance) while training.")
    else:
        lines.append(f"Pruned {origin} by adaptive structured pruning ({structure_names(summary)}, "
                     f"{summary.criterion} importance) while fine-tuning{on}.")
    if summary.distillation:
        d = summary.distillation
        hidden = f", layer outputs weighted {d['hidden_weight']}" if d.get("hidden_weight") else ""
        until = (f", until step {d['until_step']}, where the run resumed without distillation"
                 if d.get("until_step") is not None else "")
        lines += ["", f"It was distilled from {d['teacher']} while pruned{until} (task loss weighted {d['alpha']}, "
                  f"logit KL {round(1 - d['alpha'], 6)} at temperature {d['temperature']}{hidden})."]
    if summary.start_pruned:
        lines += ["", "The run started from a model pruned before: the *start* column is that model, and the kept "
                  "structure below counts against the dense model before any pruning."]
    rows = []
    if summary.metric_before is not None:
        after = pruned_metric(summary)
        rows.append(f"| {summary.metric_name} ({metric_rows_note(summary)}) | {summary.metric_before:.4f} | "
                    f"{'n/a' if after is None else f'{after:.4f}'} |")
    profile = summary.comparison
    if profile:
        rows.append(f"| parameters | {profile.params_before:,} | {profile.params_after:,} "
                    f"(-{100 * profile.params_removed:.1f}%) |")
        rows.append(f"| FLOPs (seq {profile.seq_len}) | {profile.flops_before:,} | {profile.flops_after:,} "
                    f"(-{100 * profile.flops_removed:.1f}%) |")
    if rows:
        lines += ["", f"| | {'start' if summary.start_pruned else 'dense'} | pruned |", "|---|---|---|", *rows]
    # widths alone: the least pruned kind's fraction (a run that pruned neurons but no head reads 0 here), so the
    # FLOPs say more; with layers: see sparsity_basis
    flops = f", {100 * profile.layer_flops_removed:.1f}% of the layer FLOPs removed" if profile else ""
    lines += ["", f"Target: {summary.target} of the {summary.target_type}; reached sparsity "
              f"{summary.final_sparsity:.3f} ({sparsity_basis(summary.structures, summary.target_type)}){flops}"
              f"{stopped}.", ""]
    lines += ["## Kept structure per layer", ""]
    if summary.queries_per_key > 1:
        lines += [f"The attention is grouped-query: a *heads* row counts key/value groups, each one key/value head "
                  f"with the {summary.queries_per_key} query heads that read it.", ""]
    lines += ["| group | kind | kept / original |", "|---|---|---|"]
    gone = removed_layers(summary)
    for name, g in summary.groups.items():
        if not any(name.startswith(layer + ".") for layer in gone):  # listed below as removed whole
            lines.append(f"| {name} | {g['kind']} | {g['kept']} / {g['original']} |")
    for layer in gone:
        lines.append(f"| {layer} | layer | removed whole |")
    if hyperparameters:
        lines += ["", "## Training hyperparameters", ""]
        lines += [f"- {key}: {value}" for key, value in hyperparameters.items()]
    return "\n".join(lines + _card_footer())


def _card_footer() -> list[str]:
    """The card's framework versions and how to load the saved folder."""
    lines = ["", "## Framework versions", ""]
    for package in ("hf-adaprune", "transformers", "torch", "datasets", "tokenizers"):
        version = _version(package)
        if version:
            lines.append(f"- {package}: {version}")
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from transformers import AutoModel  # or the AutoModelFor... class of the task",
        "model = AutoModel.from_pretrained(path, trust_remote_code=True)  # modeling_adaprune.py rebuilds the shapes",
        "```",
        "",
        "The pruned shapes need the shipped `modeling_adaprune.py`: without `trust_remote_code=True` transformers "
        "refuses the folder (`config.json` says `model_type: adaprune_<family>`). Pass it to `pipeline(...)`, "
        "`AutoTokenizer` and `AutoProcessor` too.",
        "With `hf_adaprune` installed, `hf_adaprune.AutoPrunedModel.from_pretrained(path)` needs no remote code.",
        "",
    ]
    return lines
