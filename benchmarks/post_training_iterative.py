#!/usr/bin/env python
"""Iterative post-training pruning: reach the target in several steps, scoring the re-fitted model again before each.

``post_training_prune`` scores the dense model once, selects the target's structures and re-fits. Here the same
target is reached in ``k`` equal steps (``--steps``): before step ``i`` the model as the previous step left it
(masked and re-fitted) is scored again (Taylor, per-example mask gradients on the calibration rows), the selection
adds structures up to ``i / k`` of the target (those already masked stay masked), and every group that lost
structures is re-fitted towards the dense model's residual-stream sum (the default re-fit, captured once from the
dense model). ``k = 1`` is ``post_training_prune`` itself. The dense model and rows are the post-training
benchmark's (all-MiniLM-L6-v2 fine-tuned one epoch on 7,000 SST-2 phrases, cached; 2,048 calibration phrases,
the re-fit on the first 1,024); accuracy on the 500 check rows (the rows to choose on), and, never used to
choose, on 1,000 other ``dev.tsv`` rows and ``test.tsv``.

One command, 1 thread (about 13 minutes once the dense model is cached)::

    python benchmarks/post_training_iterative.py   # -> benchmarks/results/post_training_iterative.json and .md
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from hf_adaprune import attach_masks, compact, find_groups, select_masks_by_kind
from hf_adaprune.engine.selection import selected_fraction_by_kind
from hf_adaprune.post_training import capture_dense_targets, mask_gradient_scores, refit_groups
from hf_adaprune.post_training.calibration import calibration_batches, model_input_names
from hf_adaprune.reporting.flops import structure_costs
import run_record  # noqa: E402 (neighbour)
from post_training import SEQ_LEN, accuracy, add_data_arguments, dense_model, load_data, log, start_minilm_run

ROOT = Path(__file__).resolve().parents[1]
KINDS, FLOORS, BATCH = ("heads", "ffn"), {"heads": 1, "ffn": 1}, 32
SPLITS = ("check", "dev", "test")


def prune_in_steps(dense, calibration, refit_rows, target: float, steps: int, collator, scores: str = "taylor"):
    """A copy of ``dense`` pruned to ``target`` of the layer FLOPs in ``steps`` score-select-re-fit rounds."""
    model = copy.deepcopy(dense)
    groups = find_groups(model)
    accepted = model_input_names(model)
    batches = calibration_batches(calibration, collator, BATCH, accepted)
    refit_batches = calibration_batches(refit_rows, collator, BATCH, accepted)
    costs = structure_costs(model, groups, SEQ_LEN)
    targets = capture_dense_targets(model, groups, refit_batches, "dense_residual")
    masks = attach_masks(model)
    for step in range(1, steps + 1):
        step_scores = mask_gradient_scores(model, groups, batches, progress=False)[scores]
        masks.update(select_masks_by_kind(groups, step_scores, masks.masks, target * step / steps, kinds=KINDS,
                                          scope="global", floors=FLOORS, costs=costs))
        refit_groups(model, masks, groups, refit_batches, progress=False, dense=targets)
    reached = selected_fraction_by_kind(groups, masks.masks, KINDS, costs)
    compact(model)
    return model, reached


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.65])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="rounds to reach each target")
    parser.add_argument("--refit_samples", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "post_training_iterative.json"))
    opts = parser.parse_args(argv)
    tokenizer, collator, started, load_start = start_minilm_run(opts)
    data = load_data(Path(opts.data_dir), tokenizer, opts)
    dense = dense_model(Path(opts.cache_dir) / "dense", data, tokenizer, collator, Path(opts.data_dir))
    refit_rows = data["calibration"].select(range(min(opts.refit_samples, len(data["calibration"]))))
    results = {"dense": {split: accuracy(dense, data[split], collator) for split in SPLITS}, "runs": []}
    for target in opts.targets:
        for steps in opts.steps:
            begun = time.time()
            model, reached = prune_in_steps(dense, data["calibration"], refit_rows, target, steps, collator)
            run = {"target": target, "steps": steps, "reached": reached, "seconds": time.time() - begun}
            run |= {split: accuracy(model, data[split], collator) for split in SPLITS}
            results["runs"].append(run)
            log(f"{target:.0%} in {steps} step(s): check {run['check']:.4f}, dev {run['dev']:.4f}, "
                f"test {run['test']:.4f} ({run['seconds']:.0f} s)")
    results |= run_record.run_fields(opts, started, load_start)
    run_record.write_outputs(opts.output, results, table(results))
    return results


def table(results: dict) -> str:
    dense, check = results["dense"], results.get("settings", {}).get("check_samples", 500)
    lines = ["Iterative post-training pruning (`python benchmarks/post_training_iterative.py`): accuracy in % "
             f"(change against the dense model); check = the {check:,} steering rows, dev and test never steer.", "",
             f"Dense: check {100 * dense['check']:.1f}, unseen dev {100 * dense['dev']:.1f}, "
             f"test {100 * dense['test']:.2f}.", "",
             "| target | rounds | FLOPs removed | check | unseen dev | test | wall time |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for run in results["runs"]:
        cells = [f"{100 * run[s]:.2f} ({100 * (run[s] - dense[s]):+.2f})" for s in SPLITS]
        lines.append(f"| {run['target']:.0%} | {run['steps']} | {100 * run['reached']:.1f}% | " + " | ".join(cells)
                     + f" | {run['seconds']:.0f} s |")
    return "\n".join(lines + ["", run_record.run_footer(results)])


if __name__ == "__main__":
    main()
