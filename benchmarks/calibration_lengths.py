#!/usr/bin/env python
"""Which rows to calibrate on: random training rows vs ``length_mixed_calibration`` (half from the longest fifth).

The dense all-MiniLM-L6-v2 of ``benchmarks/post_training.py`` (fine-tuned one epoch on 7,000 SST-2 training
phrases, cached in ``outputs/post_training_benchmark/dense``) is pruned with ``post_training_prune`` (Taylor
scores, the default re-fit on every calibration row) to each ``--targets`` fraction of its layer FLOPs,
once per calibration kind and ``--seeds`` draw. The calibration rows (``--calibration_samples``) come from
``train.tsv`` phrases the dense model never saw (after its 7,000 and the post-training benchmark's 2,048
calibration phrases). Scored on:

* ``check``: the 500 ``dev.tsv`` rows of the post-training metric check (steering rows);
* ``long check``: 1,000 rows of the longest fifth of 10,000 further ``train.tsv`` phrases, disjoint from every
  calibration candidate (steering rows too: SST-2's training rows are phrases, median 7 words, its test
  sentences median 19, and these are the sentence-like training rows);
* ``unseen dev`` (1,000 ``dev.tsv`` rows) and ``test.tsv`` (872 sentences): never used to choose anything.

One command, 2 threads (about 6 minutes on the idle machine once the dense model is cached)::

    python benchmarks/calibration_lengths.py   # -> benchmarks/results/calibration_lengths.json and .md
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from hf_adaprune.post_training import length_mixed_calibration, post_training_prune
import run_record  # noqa: E402 (neighbour)
from post_training import (SEED, SEQ_LEN, accuracy, add_data_arguments, dense_model, load_data, log,  # noqa: E402
                           start_minilm_run)

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES, HELD_OUT = 30_000, 10_000  # pool rows: calibration candidates, then the long check's source
KINDS = {"random": 0.0, "length_mixed": 0.5}  # calibration kind -> long_share
SPLITS = ("check", "long_check", "dev", "test")


def long_check(pool, rows: int, seed: int):
    """``rows`` random rows of the longest fifth of ``pool``."""
    lengths = [len(ids) for ids in pool["input_ids"]]
    longest = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))[:len(lengths) // 5]
    generator = torch.Generator().manual_seed(seed)
    return pool.select(sorted(longest[i] for i in torch.randperm(len(longest), generator=generator)[:rows].tolist()))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration draws")
    parser.add_argument("--long_check_samples", type=int, default=1000)
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), help="calibration kinds")
    parser.add_argument("--refit_samples", type=int, default=None,
                        help="calibration rows the re-fit reads (default: all, post_training_prune's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "calibration_lengths.json"))
    opts = parser.parse_args(argv)
    tokenizer, collator, started, load_start = start_minilm_run(opts)
    data = load_data(Path(opts.data_dir), tokenizer, opts, pool_samples=CANDIDATES + HELD_OUT)
    candidates = data["pool"].select(range(CANDIDATES))
    data["long_check"] = long_check(data["pool"].select(range(CANDIDATES, CANDIDATES + HELD_OUT)),
                                    opts.long_check_samples, SEED)
    dense = dense_model(Path(opts.cache_dir) / "dense", data, tokenizer, collator, Path(opts.data_dir)).eval()
    reference = {split: accuracy(dense, data[split], collator) for split in SPLITS}
    log("dense: " + ", ".join(f"{split} {value:.4f}" for split, value in reference.items()))

    runs = []
    for target in opts.targets:
        for seed in opts.seeds:
            for kind, long_share in ((kind, KINDS[kind]) for kind in opts.kinds):
                calibration = length_mixed_calibration(candidates, opts.calibration_samples, long_share=long_share,
                                                       seed=seed)
                began = time.time()
                result = post_training_prune(copy.deepcopy(dense), calibration, target, metric="accuracy",
                                             eval_dataset=data["check"], data_collator=collator, seq_len=SEQ_LEN,
                                             refit_samples=opts.refit_samples, progress=False,
                                             normalize_scores=True)  # as the README's figures were measured
                run = {"target": target, "calibration": kind, "long_share": long_share, "seed": seed,
                       "seconds": time.time() - began,
                       "calibration_tokens_mean": sum(map(len, calibration["input_ids"])) / len(calibration)}
                run |= {split: accuracy(result.model, data[split], collator) for split in SPLITS}
                runs.append(run)
                log(f"{target:.0%} {kind} seed {seed}: " + ", ".join(
                    f"{split} {run[split] - reference[split]:+.4f}" for split in SPLITS) + f", {run['seconds']:.0f} s")
    out = {"dense": reference, "runs": runs, "sizes": {split: len(data[split]) for split in SPLITS},
           "settings": {k: v for k, v in vars(opts).items() if k != "output"},
           "machine": run_record.machine(load_start), "minutes": (time.time() - started) / 60}
    run_record.write_outputs(opts.output, out, format_table(out))
    return out


def format_table(out: dict) -> str:
    dense, sizes, settings = out["dense"], out["sizes"], out["settings"]
    lines = ["all-MiniLM-L6-v2 on SST-2, post_training_prune with random vs length-mixed calibration "
             f"({settings['calibration_samples']} rows, the re-fit on {settings.get('refit_samples') or 'all'}; "
             "accuracy change against the dense model, points)", "",
             f"dense: check {100 * dense['check']:.2f}% ({sizes['check']} rows), long check "
             f"{100 * dense['long_check']:.2f}% ({sizes['long_check']}), unseen dev {100 * dense['dev']:.2f}% "
             f"({sizes['dev']}), test {100 * dense['test']:.2f}% ({sizes['test']})", "",
             "| target | calibration | seed | mean tokens | check | long check | unseen dev | test | wall time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in out["runs"]:
        changes = " | ".join(f"{100 * (run[split] - dense[split]):+.2f}" for split in SPLITS)
        lines.append(f"| {run['target']:.0%} | {run['calibration']} | {run['seed']} "
                     f"| {run['calibration_tokens_mean']:.1f} | {changes} | {run['seconds']:.0f} s |")
    means = {}
    for run in out["runs"]:
        means.setdefault((run["target"], run["calibration"]), []).append(run)
    lines += ["", "Means over seeds:", "", "| target | calibration | check | long check | unseen dev | test |",
              "|---|---|---:|---:|---:|---:|"]
    for (target, kind), rows in means.items():
        changes = " | ".join(f"{100 * sum(r[s] - dense[s] for r in rows) / len(rows):+.2f}" for s in SPLITS)
        lines.append(f"| {target:.0%} | {kind} | {changes} |")
    lines += ["", f"Run time {out['minutes']:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main() and 0)
