#!/usr/bin/env python
"""Post-training pruning with the scores ranked globally as they are, or after dividing each layer's by their L2 norm.

``post_training_prune`` (Taylor scores, global selection, the default re-fit) of a cached dense all-MiniLM-L6-v2
SST-2 classifier to each target, once with ``normalize_scores=True`` (each layer's scores divided by their L2 norm
before the global ranking, the trainer's selection) and once with ``False`` (the raw per-example scores, which
estimate the loss change on one scale). Scored on ``steer``: ``--steer_samples`` ``train.tsv`` phrases after
``--steer_offset`` further ones past the dense and calibration phrases (no model saw them; the rows to choose a
default on, with the 500 check rows), and, never used to choose, unseen ``dev.tsv`` rows and ``test.tsv``.

Two dense models (about 8 minutes each on 1 thread once cached)::

    python benchmarks/score_normalization.py   # the post-training benchmark's -> results/score_normalization.json, .md
    python benchmarks/score_normalization.py --dense_samples 20000 --cache_dir outputs/accuracy_dense20000 \\
        --steer_offset 20000 --steer_samples 3000 --dev_samples 5000 \\
        --output benchmarks/results/score_normalization_dense20000.json   # the accuracy benchmark's dense start
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from hf_adaprune.post_training import post_training_prune
import run_record  # noqa: E402 (neighbour)
from post_training import SEQ_LEN, accuracy, add_data_arguments, dense_model, load_data, log, start_minilm_run

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("steer", "check", "dev", "test")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.65])
    parser.add_argument("--steer_offset", type=int, default=0, help="train.tsv phrases skipped after the calibration")
    parser.add_argument("--steer_samples", type=int, default=5000)
    parser.add_argument("--refit_samples", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "score_normalization.json"))
    opts = parser.parse_args(argv)
    tokenizer, collator, started, load_start = start_minilm_run(opts)
    data = load_data(Path(opts.data_dir), tokenizer, opts, pool_samples=opts.steer_offset + opts.steer_samples)
    data["steer"] = data["pool"].select(range(opts.steer_offset, opts.steer_offset + opts.steer_samples))
    dense = dense_model(Path(opts.cache_dir) / "dense", data, tokenizer, collator, Path(opts.data_dir))
    results = {"dense": {split: accuracy(dense, data[split], collator) for split in SPLITS}, "runs": []}
    scores = "taylor"  # computed by the first call, reused by the others
    for target in opts.targets:
        for normalize in (True, False):
            begun = time.time()
            result = post_training_prune(copy.deepcopy(dense), data["calibration"], target, scores=scores,
                                         refit_samples=opts.refit_samples, normalize_scores=normalize,
                                         data_collator=collator, seq_len=SEQ_LEN, progress=False)
            scores = result.scores
            run = {"target": target, "normalize_scores": normalize, "selected": result.selected,
                   "seconds": time.time() - begun}
            run |= {split: accuracy(result.model, data[split], collator) for split in SPLITS}
            results["runs"].append(run)
            log(f"{target:.0%}, normalize_scores={normalize}: steer {run['steer']:.4f}, check {run['check']:.4f}, "
                f"dev {run['dev']:.4f}, test {run['test']:.4f}")
    results |= run_record.run_fields(opts, started, load_start)
    run_record.write_outputs(opts.output, results, table(results))
    return results


def table(results: dict) -> str:
    dense, opts = results["dense"], results["settings"]
    lines = [f"Post-training pruning, scores normalised per layer or not (`python benchmarks/score_normalization.py`; "
             f"dense model of {opts['dense_samples']:,} phrases): accuracy in % (change against the dense model). "
             f"steer = {opts['steer_samples']:,} unseen training phrases and check = the "
             f"{opts.get('check_samples', 500):,} check rows (to choose "
             "on); unseen dev and test never steer.", "",
             "| target | scores | " + " | ".join(SPLITS) + " |", "|---:|---|" + "---:|" * len(SPLITS)]
    lines.append("| dense | | " + " | ".join(f"{100 * dense[s]:.2f}" for s in SPLITS) + " |")
    for run in results["runs"]:
        name = "normalised per layer" if run["normalize_scores"] else "raw"
        cells = [f"{100 * run[s]:.2f} ({100 * (run[s] - dense[s]):+.2f})" for s in SPLITS]
        lines.append(f"| {run['target']:.0%} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", run_record.run_footer(results)])


if __name__ == "__main__":
    main()
