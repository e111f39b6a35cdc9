#!/usr/bin/env python
"""How to split a layer-FLOP cut between attention heads and FFN neurons, without training.

The selection prunes each kind by the same fraction of its own FLOPs (``select_masks_by_kind``): at 50%, heads
lose 50% of the attention FLOPs and neurons 50% of the FFN FLOPs. This benchmark asks whether another split of
the same total does better: for each ``--head_ratios`` value ``h``, ``post_training_prune`` removes ``h`` of the
heads' FLOPs (Taylor scores, re-fit), then, on that model, the FFN fraction that brings the whole to ``--total``
of the layer FLOPs (scores and re-fit again). The dense model is the accuracy benchmark's
(all-MiniLM-L6-v2 fine-tuned one epoch on ``--dense_samples`` SST-2 training phrases, cached). Scored on:

* ``steer``: 3,000 ``train.tsv`` phrases no model saw and no other part uses (after the dense, calibration and
  625-step pool phrases), and ``check``: the 500 ``dev.tsv`` rows of the metric check: the rows to choose on;
* ``unseen dev`` (``--dev_samples`` other ``dev.tsv`` rows): reported, never used to choose.

One command, 2 threads (about 5 minutes once the dense model is cached)::

    python benchmarks/kind_split.py   # -> benchmarks/results/kind_split.json and .md
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from hf_adaprune import find_groups
from hf_adaprune.engine.masks import structure_count
from hf_adaprune.post_training import post_training_prune
from hf_adaprune.reporting.flops import model_profile, structure_costs
import run_record  # noqa: E402 (neighbour)
from post_training import (SEQ_LEN, accuracy, add_data_arguments, dense_model, load_data, log, minilm_path,
                           start_minilm_run)

ROOT = Path(__file__).resolve().parents[1]
POOL, STEER = 20_000, 3_000  # the 625-step pool of the accuracy benchmark, then the steering phrases


def ffn_flops(model, seq_len: int) -> float:
    """The FLOPs of every FFN at ``seq_len`` tokens (batch 1), as the selection counts them."""
    groups = [group for group in find_groups(model) if group.kind == "ffn"]
    costs = structure_costs(model, groups, seq_len)
    return sum(costs[group.name] * structure_count(model.base_model, group) for group in groups)


def minilm_ffn_share() -> float:
    """The FFN share of the layer FLOPs at ``SEQ_LEN`` of the dense model's architecture (all-MiniLM-L6-v2 with a
    2-label head; the weights do not matter, so no training or cached model is needed)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(minilm_path(), num_labels=2))
    return ffn_flops(model, SEQ_LEN) / model_profile(model, seq_len=SEQ_LEN)["layer_flops"]


def refuse_impossible_splits(parser: argparse.ArgumentParser, opts) -> None:
    """Every ``--head_ratios`` value must leave an FFN fraction in (0, 1) to reach ``--total``: checked before any
    work from the architecture's FFN share (the heads' removal is whole heads, so the run's own FFN fraction can
    differ by about a point; it is checked again there)."""
    if not 0 < opts.total < 1:
        parser.error(f"--total must be in (0, 1); got {opts.total}")
    if not all(0 < h < 1 for h in opts.head_ratios):
        parser.error(f"--head_ratios must be in (0, 1); got {' '.join(map(str, opts.head_ratios))}")
    share = minilm_ffn_share()
    bad = {h: (opts.total - h * (1 - share)) / share for h in opts.head_ratios}
    bad = {h: ffn for h, ffn in bad.items() if not 0 < ffn < 1}
    if bad:
        parser.error(f"--head_ratios {' '.join(map(str, bad))} leave(s) an FFN fraction of "
                     f"{', '.join(f'{ffn:.3f}' for ffn in bad.values())} to reach --total {opts.total} (heads are "
                     f"{1 - share:.1%} of the layer FLOPs, FFN {share:.1%}): choose head ratios between "
                     f"{max(0.0, (opts.total - share) / (1 - share)):.3f} and {min(1.0, opts.total / (1 - share)):.3f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.set_defaults(dense_samples=20_000, cache_dir=str(ROOT / "outputs" / "accuracy_dense20000"),
                        dev_samples=5000)
    parser.add_argument("--total", type=float, default=0.5, help="fraction of the layer FLOPs removed")
    parser.add_argument("--head_ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.85],
                        help="fractions of the heads' FLOPs removed (0.5 at --total 0.5: the selection's own split)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "kind_split.json"))
    opts = parser.parse_args(argv)
    refuse_impossible_splits(parser, opts)
    tokenizer, collator, started, load_start = start_minilm_run(opts)
    data = load_data(Path(opts.data_dir), tokenizer, opts, pool_samples=POOL + STEER)
    steer = data["pool"].select(range(POOL, POOL + STEER))  # after the pool the accuracy benchmark trains on
    splits = {"steer": steer, "check": data["check"], "dev": data["dev"]}
    dense = dense_model(Path(opts.cache_dir) / "dense", data, tokenizer, collator, Path(opts.data_dir))
    layer_flops = model_profile(dense, seq_len=SEQ_LEN)["layer_flops"]
    ffn_share = ffn_flops(dense, SEQ_LEN) / layer_flops
    results = {"dense": {name: accuracy(dense, rows, collator) for name, rows in splits.items()}, "runs": []}
    for head_ratio in opts.head_ratios:
        begun = time.time()
        heads = post_training_prune(copy.deepcopy(dense), data["calibration"], head_ratio, kinds=("heads",),
                                    data_collator=collator, seq_len=SEQ_LEN, progress=False,
                                    normalize_scores=True).model  # as the README's figures were measured
        removed = 1 - model_profile(heads, seq_len=SEQ_LEN)["layer_flops"] / layer_flops
        ffn_ratio = (opts.total - removed) / ffn_share
        if not 0 < ffn_ratio < 1:
            raise SystemExit(f"--head_ratios {head_ratio} leaves an FFN fraction of {ffn_ratio:.3f} to reach "
                             f"--total {opts.total}; choose head ratios that leave one in (0, 1)")
        model = post_training_prune(heads, data["calibration"], ffn_ratio, kinds=("ffn",), data_collator=collator,
                                    seq_len=SEQ_LEN, progress=False, normalize_scores=True).model
        run = {"head_ratio": head_ratio, "ffn_ratio": ffn_ratio,
               "layer_flops_removed": 1 - model_profile(model, seq_len=SEQ_LEN)["layer_flops"] / layer_flops,
               "seconds": time.time() - begun}
        run |= {name: accuracy(model, rows, collator) for name, rows in splits.items()}
        results["runs"].append(run)
        log(f"heads {head_ratio:.2f} / FFN {ffn_ratio:.3f}: steer {run['steer']:.4f}, check {run['check']:.4f}, "
            f"unseen dev {run['dev']:.4f}")
    results["settings"] = vars(opts) | {"ffn_share": ffn_share, "minutes": (time.time() - started) / 60}
    results["machine"] = run_record.machine(load_start)
    run_record.write_outputs(opts.output, results, format_table(results))
    return results


def format_table(results: dict) -> str:
    dense, s = results["dense"], results["settings"]
    lines = [f"{s['total']:.0%} of the layer FLOPs removed without training, split between heads and FFN neurons "
             f"(FFN: {s['ffn_share']:.1%} of the layer FLOPs at seq {SEQ_LEN}); "
             f"dense: steer {100 * dense['steer']:.2f}%, "
             f"check {100 * dense['check']:.2f}%, unseen dev {100 * dense['dev']:.2f}%; {s['minutes']:.1f} min", "",
             "| heads' FLOPs removed | FFN FLOPs removed | layer FLOPs removed | steer (choose on) | check (choose on) "
             "| unseen dev |", "|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        cells = [f"{100 * r[k]:.2f}% ({100 * (r[k] - dense[k]):+.2f})" for k in ("steer", "check", "dev")]
        lines.append(f"| {r['head_ratio']:.2f} | {r['ffn_ratio']:.3f} | {r['layer_flops_removed']:.3f} "
                     f"| {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
