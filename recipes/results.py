"""What a recipe run reports: ``results.json`` (one schema for every recipe) and the table printed at the end.

``results.json`` keys, for every recipe:

* ``recipe``, ``base_model``, ``dataset``, ``data_files``, ``output_dir``, ``samples`` (rows per split),
  ``task`` (what is particular to the task: labels, languages, audio settings, ...);
* ``test``: ``samples``, ``metrics`` (the names reported), ``dense_step`` (the step of the pruning
  reference, where the dense model was scored), ``test_before_pruning`` (False: that scoring was switched
  off), ``control_steps``, and for each metric NAME
  ``dense_NAME`` (dense model at the reference), ``control_NAME`` (the dense control trained for the
  same steps, with ``--dense_control``) and ``pruned_NAME``; the trainer's raw metrics under ``dense``,
  ``control`` and ``pruned``;
* ``validation``: the steering metric on the decision set (``dense_reference``,
  ``pruned_last_decision``, ``pruned_final``, ``tolerance``, ``tolerance_type``);
* ``pruning`` (criterion, target, the kinds pruned as ``structures``, sparsity reached, stop reason),
  ``comparison`` (parameters and FLOPs before / after), ``latency`` (or None), ``train`` (train metrics),
  ``dense_control`` (its steps, folder and train metrics, or None), ``wall_time_s``.
"""

from __future__ import annotations

import os

from hf_adaprune.reporting.report import sparsity_basis, write_json

RESULTS_FILE = "results.json"
PRUNING_KEYS = ("criterion", "target", "target_type", "structures", "final_sparsity", "stop_reason", "start_pruned",
                "distillation")
TEST_SIDES = ("dense", "control", "pruned")


# -- number formats ----------------------------------------------------------------------------------
def format_count(n) -> str:
    """A parameter or FLOP count with a K / M / G suffix (two decimals); ``-`` for None."""
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def format_ms(seconds, digits: int = 1) -> str:
    """Seconds as milliseconds (``digits`` decimals); ``-`` for None."""
    return "-" if seconds is None else f"{1000 * seconds:.{digits}f} ms"


def format_rate(value) -> str:
    """An error rate (fraction) as a percentage with two decimals; ``-`` for None."""
    return "-" if value is None else f"{100 * value:.2f}%"


def format_metric(value, digits: int = 4) -> str:
    """A metric value with ``digits`` decimals; ``-`` for None."""
    return "-" if value is None else f"{value:.{digits}f}"


# -- results.json ------------------------------------------------------------------------------------
def pruning_record(summary: dict) -> dict:
    """How the run pruned, from ``trainer.pruning_summary()``: criterion, target (and its type), sparsity, stop."""
    return {k: summary.get(k) for k in PRUNING_KEYS}


def without_layers(comparison: dict | None) -> dict | None:
    """A :func:`hf_adaprune.reporting.flops.compare_profiles` result without its per-layer rows (None stays None)."""
    return comparison and {k: v for k, v in comparison.items() if k != "layers"}


def validation_results(summary: dict, samples: int, final_metrics: dict) -> dict:
    """The "validation" entry: the steering metric of the dense reference, the last decision and the final model.

    ``summary`` is ``trainer.pruning_summary()``, ``final_metrics`` the pruned model's
    evaluation on the ``samples`` validation rows the controller decided on. ``pruned_final`` is the final check's
    measurement where there is one (row-exact on any number of processes, where ``evaluate``'s loss counts the
    repeated rows that pad the last process's batches), else ``final_metrics``'.
    """
    final_check = summary.get("final_check") or {}
    return {
        "metric": summary["metric_name"],
        "samples": samples,
        "dense_reference": summary["metric_before"],
        "pruned_last_decision": summary["metric_after"],
        "pruned_final": final_check["metric"] if final_check.get("metric") is not None else
        final_metrics.get(summary["metric_key"]),
        "pruned": final_metrics,
        "tolerance": summary["tolerance"],
        "tolerance_type": summary["tolerance_type"],
        # the final model measured against the tolerance after training (None: not measured)
        "within_tolerance": (summary.get("final_check") or {}).get("within_tolerance"),
    }


def test_results(samples: int, names, scores: dict, dense_step: int | None, control_steps: int | None,
                 dense_asked: bool = True) -> dict:
    """The "test" entry from ``scores`` = {side: {"values": {NAME: value}, "metrics": raw} or None} for the sides
    dense (at the reference), control and pruned; ``dense_asked``: whether the dense model was to be scored at the
    reference (--test_before_pruning)."""
    test = {"samples": samples, "metrics": list(names), "dense_step": dense_step, "test_before_pruning": dense_asked,
            "control_steps": control_steps}
    for side in TEST_SIDES:
        scored = scores.get(side)
        for name in names:
            test[f"{side}_{name}"] = None if scored is None else scored["values"].get(name)
        test[side] = None if scored is None else scored["metrics"]
    return test


def save_results(results: dict, table: str, training_args) -> None:
    """On the saving process: write ``results`` to ``OUTPUT_DIR/results.json`` and print ``table`` and the path."""
    if training_args.should_save:
        path = os.path.join(training_args.output_dir, RESULTS_FILE)
        write_json(path, results)
        print(f"\n{table}\n\nwrote {path}")


# -- the table printed at the end of a run -----------------------------------------------------------
def format_table(rows, footer: list[str] = ()) -> str:
    """Rows of strings (the first one the header) as aligned columns, a rule under the header, then ``footer``.

    The first and the last column (labels, notes) are left-aligned, the values between right-aligned.
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    last = len(widths) - 1
    lines = ["  ".join(cell.ljust(w) if i in (0, last) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in [*lines, *footer])


def results_table(results: dict, format_value, metric_label: str = "test {name}") -> str:
    """The end-of-run table of ``results``: dense at the reference, dense control (if trained), pruned.

    ``format_value(name, value)`` formats a metric value. The change column compares
    the pruned model with the control when there is one, else with the dense column.
    """
    test, val, cmp, lat = results["test"], results["validation"], results["comparison"], results["latency"]
    control = results["dense_control"] is not None
    dense_step = test["dense_step"] if test else None
    start = "start" if results["pruning"].get("start_pruned") else "dense"  # a pruned folder pruned further
    header = ["", f"{start} (step {dense_step})" if dense_step is not None else start]
    header += [f"control ({results['dense_control']['steps']} steps)"] if control else []
    header += ["pruned", "change vs control" if control else "note"]
    rows = [tuple(header)]

    def row(label, dense, ctrl, pruned, note):
        return (label, dense, *([ctrl] if control else []), pruned, note)

    if test is not None:
        for name in test["metrics"]:
            values = {side: test[f"{side}_{name}"] for side in TEST_SIDES}
            base = values["control"] if control else values["dense"]
            change = ""
            if base is not None and values["pruned"] is not None:
                diff = values["pruned"] - base
                change = ("+" if diff >= 0 else "") + format_value(name, diff)
            rows.append(row(metric_label.format(name=name, n=test["samples"]) + f" (n={test['samples']})",
                            format_value(name, values["dense"]), format_value(name, values["control"]),
                            format_value(name, values["pruned"]), change))
    metric = val["metric"]
    rows.append(row(f"validation {metric} (steering, n={val['samples']})", format_value(metric, val["dense_reference"]),
                    "", format_value(metric, val["pruned_final"]),
                    # an absolute tolerance in the metric's own format (WER 0.01 reads 1.00%, as the WERs beside it)
                    f"tolerance {format_value(metric, val['tolerance']) if val['tolerance_type'] == 'absolute' else val['tolerance']} "
                    f"{val['tolerance_type']}"
                    + (", BEYOND it" if val.get("within_tolerance") is False else "")))
    if cmp is not None:
        for label, key, removed in (("params", "params", "params_removed"),
                                    (f"FLOPs @ seq {cmp['seq_len']}", "flops", "flops_removed")):
            note = f"-{100 * cmp[removed]:.1f}%"
            if key == "flops":
                note += f" (layers -{100 * cmp['layer_flops_removed']:.1f}%)"
            before = format_count(cmp[f"{key}_before"])
            rows.append(row(label, before, before, format_count(cmp[f"{key}_after"]), note))
    if lat is not None:
        dense, pruned = lat["results"]["dense"], lat["results"]["pruned"]
        timed = format_ms(dense["median_s"], 2)
        rows.append(row(f"{lat['label']} (median)", "" if control else timed, timed if control else "",
                        format_ms(pruned["median_s"], 2), f"{pruned['speedup']:.2f}x, {lat['threads']} threads"))
    footer = []
    pruning = results["pruning"]
    # what the figure is a fraction of: the trainer's depends on the kinds pruned (sparsity_basis); --post_training
    # records the layer FLOPs the compacted model lost
    basis = ("the layer FLOPs removed" if results.get("mode") == "post_training" else
             sparsity_basis(pruning.get("structures"), pruning["target_type"]))
    footer.append(f"sparsity {pruning['final_sparsity']:.3f} of {pruning['target_type']} ({basis}; "
                  f"target {pruning['target']}), stopped: {pruning['stop_reason']}")
    if test is not None and not control and results["train"] is not None and not test.get("test_before_pruning", True):
        footer.append("note: no dense column: --test_before_pruning false left the dense model at the pruning "
                      "reference unscored; --dense_control true adds a dense model trained for the same steps.")
    elif test is not None and not control and results["train"] is not None and dense_step is None:
        footer.append("note: no dense column: this run did not see the weights of the pruning reference (step "
                      "--pruning_warmup_steps): it resumed past that step, or ended before it.")
    elif test is not None and not control and results["train"] is not None:  # None: pruned without training
        steps = results["train"].get("global_step", "all")
        what = ("the pruned model --model_name_or_path holds, " if start == "start" else "") + "the model"
        footer.append(f"note: the {start} column is {what} at step {dense_step} (the pruning reference); the pruned "
                      f"model trained to step {steps}, so it had more training. --dense_control true adds a "
                      f"{'start' if start == 'start' else 'dense'} model trained for the same steps.")
    return format_table(rows, footer)
