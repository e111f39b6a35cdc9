#!/usr/bin/env python
"""Dense vs pruned seq2seq ``generate`` latency at equal output lengths, on CPU.

A pruned translation model may stop after a different number of tokens than the dense one,
which mixes decoding length into a plain ``generate`` comparison. Here both models generate
exactly ``--new_tokens`` tokens (``min_new_tokens = max_new_tokens``, greedy), so the two
timings cover the same decoding work. Batch 1 uses the source sentence of median length,
batch N the first N sentences; dense and pruned are timed alternately in one process
(medians). The pruned folder is the Hub format ``save_pruned`` writes; several pruned folders are timed
in one round-robin (``--labels`` names them). Run from the repository root::

    python benchmarks/generate_latency.py --dense outputs/marian_multi30k/dense \\
        --pruned outputs/marian_multi30k/pruned --source_file ../shared/data/multi30k/test_2016_flickr.en.gz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from hf_adaprune import AutoPrunedModel
from hf_adaprune.reporting.latency import format_latency

import recipes.translation as recipe  # reading files, timing generate


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense", required=True, help="dense model folder (with its tokenizer unless --tokenizer)")
    p.add_argument("--pruned", required=True, nargs="+", help="pruned model folder(s) (Hub format)")
    p.add_argument("--labels", nargs="+", default=None, help="a name per pruned folder (default: 'pruned', or the "
                                                              "folder paths when there are several)")
    p.add_argument("--tokenizer", default=None, help="default: the dense folder's")
    p.add_argument("--source_file", required=True, help="source sentences, one per line (plain or .gz)")
    p.add_argument("--source_prefix", default="", help="e.g. 'translate English to German: ' for T5")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--new_tokens", type=int, default=24, help="tokens every model generates")
    p.add_argument("--max_source_length", type=int, default=64)
    p.add_argument("--repeats", type=int, nargs="+", default=None,
                   help="alternating repeats per batch size (default: 20 at batch 1, 5 otherwise)")
    p.add_argument("--output", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.repeats is not None and len(args.repeats) != len(args.batch_sizes):
        p.error("--repeats needs one value per --batch_sizes entry")
    if args.labels is not None and len(args.labels) != len(args.pruned):
        p.error("--labels needs one name per --pruned folder")
    labels = args.labels or (["pruned"] if len(args.pruned) == 1 else args.pruned)
    if "dense" in labels or len(set(labels)) != len(labels):
        p.error(f"--labels must be distinct and not 'dense'; got {labels}")

    transformers.utils.logging.set_verbosity_error()  # min/max_new_tokens override the models' max_length: intended
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.dense)
    dense = AutoModelForSeq2SeqLM.from_pretrained(args.dense).eval()
    models = {"dense": dense} | {label: AutoPrunedModel.from_pretrained(folder).eval()
                                 for label, folder in zip(labels, args.pruned)}
    sources = [line.strip() for line in recipe.read_lines(args.source_file) if line.strip()]
    if not sources:
        sys.exit(f"{args.source_file} has no non-empty lines")
    if max(args.batch_sizes) > len(sources):
        p.error(f"--batch_sizes {max(args.batch_sizes)}: --source_file has {len(sources)} non-empty lines; a batch "
                "would be timed smaller than its label says")
    sources = sources[:max(args.batch_sizes + [1000])]
    median_sentence = recipe.median_length_sentence(sources, tokenizer, args.max_source_length)
    data_args = recipe.DataTrainingArguments(max_source_length=args.max_source_length, source_prefix=args.source_prefix)
    generate_kwargs = {"min_new_tokens": args.new_tokens, "max_new_tokens": args.new_tokens, "num_beams": 1,
                       "do_sample": False}
    results = {"threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "batches": {}}
    for i, batch in enumerate(args.batch_sizes):
        repeats = args.repeats[i] if args.repeats else (20 if batch == 1 else 5)
        batch_sources = [median_sentence] if batch == 1 else sources[:batch]
        timing = recipe.measure_generate_latencies(models, tokenizer, batch_sources, data_args, generate_kwargs,
                                                   repeats=repeats, warmup=min(2, repeats))
        results["batches"][str(batch)] = timing
        print(format_latency(timing["results"], title=f"generate, batch {len(batch_sources)}, exactly "
                             f"{args.new_tokens} new tokens (output lengths {timing['output_length']})"), flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
