#!/usr/bin/env python
"""What else than a smaller tokenizer could give the dropped tokens: all-MiniLM-L6-v2 on SST-2.

``prune_vocabulary`` drops the tokens the training phrases never use, so text with such a word is split into
other, kept pieces and the model reads another sequence (the deploy benchmark's accuracy changes come from
there). The alternatives measured here keep the whole tokenizer, so every sentence keeps its tokens, and give
each dropped token a cheaper row instead:

* ``nearest kept row``: the kept token whose embedding is closest in cosine (no extra parameters; a saved
  folder would need a token -> row table);
* ``one shared row``: the mean of the kept rows for every dropped token;
* ``rank r``: the dropped rows replaced by their best rank-``r`` approximation (SVD), which would cost
  ``r x (dropped + hidden)`` parameters in a factorized embedding.

All start from the pruned model of ``benchmarks/deploy.py`` (its cache) with the same kept tokens (those of the
9,048 training phrases the models saw). Scored on the 500 check rows (the only rows a choice may be made on),
the 1,000 unseen ``dev.tsv`` rows and ``test.tsv``; predictions are also compared with the pruned model's
(share of rows whose label changes). None of the alternatives is built into the library::

    python benchmarks/deploy.py                    # caches the dense and pruned models (once)
    python benchmarks/vocabulary_alternatives.py   # -> benchmarks/results/vocabulary_alternatives.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from hf_adaprune import AutoPrunedModel
from hf_adaprune.deploy import prune_vocabulary
import run_record  # noqa: E402 (neighbour)
from post_training import load_data, log, start_minilm_run  # noqa: E402 (neighbour)

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("check", "dev", "test")


@torch.inference_mode()
def predictions(model, split, collator) -> torch.Tensor:
    model.eval()
    loader = torch.utils.data.DataLoader(split, batch_size=128, collate_fn=collator)
    return torch.cat([model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
                      for batch in loader])


def with_rows(model, rows: torch.Tensor):
    """A copy of ``model`` whose input embedding is ``rows``."""
    copied = copy.deepcopy(model)
    copied.get_input_embeddings().weight.data = rows
    return copied


def alternatives(model, kept_ids: list[int], ranks: list[int]) -> dict:
    """Embedding rows that keep every token: dropped tokens get a substitute row."""
    rows = model.get_input_embeddings().weight.data
    kept = torch.tensor(kept_ids)
    dropped = torch.ones(rows.shape[0], dtype=torch.bool)
    dropped[kept] = False
    dropped = dropped.nonzero().squeeze(1)
    out = {}
    unit = torch.nn.functional.normalize(rows, dim=1)
    nearest = kept[(unit[dropped] @ unit[kept].T).argmax(1)]
    out["nearest kept row"] = rows.index_put((dropped,), rows[nearest])
    out["one shared row"] = rows.index_put((dropped,), rows[kept].mean(0).expand(len(dropped), -1))
    u, s, vh = torch.linalg.svd(rows[dropped], full_matrices=False)
    for rank in ranks:
        out[f"rank {rank}"] = rows.index_put((dropped,), (u[:, :rank] * s[:rank]) @ vh[:rank])
    return out, len(dropped)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--pruned", default=str(ROOT / "outputs" / "post_training_benchmark" / "deploy_pruned_0.5"),
                        help="the pruned classifier (benchmarks/deploy.py's cache)")
    parser.add_argument("--dense_samples", type=int, default=7000)
    parser.add_argument("--calibration_samples", type=int, default=2048)
    parser.add_argument("--check_samples", type=int, default=500)
    parser.add_argument("--dev_samples", type=int, default=1000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "vocabulary_alternatives.json"))
    opts = parser.parse_args(argv)
    tokenizer, collator, started, load_start = start_minilm_run(opts)
    data = load_data(Path(opts.data_dir), tokenizer, opts, by_length=False)  # rows in one order for both tokenizers
    pruned = AutoPrunedModel.from_pretrained(opts.pruned).eval()
    seen = [row for split in ("dense", "calibration") for row in data[split]["input_ids"]]

    reference = {s: predictions(pruned, data[s], collator) for s in SPLITS}
    labels = {s: torch.tensor(data[s]["labels"]) for s in SPLITS}

    def score(model, splits) -> dict:
        row = {}
        for s in SPLITS:
            predicted = predictions(model, splits[s], collator)
            row[f"{s}_accuracy"] = float((predicted == labels[s]).float().mean())
            row[f"{s}_changed"] = float((predicted != reference[s]).float().mean())
        return row

    results = {"pruned (every token)": score(pruned, data)}
    vocab_model = copy.deepcopy(pruned)
    vocab_tokenizer = prune_vocabulary(vocab_model, tokenizer, tokenized=seen)
    kept_ids = sorted(set(tokenizer.convert_tokens_to_ids(t) for t in vocab_tokenizer.get_vocab()))
    results["smaller tokenizer (prune_vocabulary)"] = score(
        vocab_model, load_data(Path(opts.data_dir), vocab_tokenizer, opts, by_length=False))
    rows, dropped = alternatives(pruned, kept_ids, opts.ranks)
    for name, embedding in rows.items():
        results[f"every token, {name}"] = score(with_rows(pruned, embedding), data)
        log(f"{name}: {results[f'every token, {name}']}")
    hidden = pruned.config.hidden_size
    extra = {f"every token, rank {r}": r * (dropped + hidden) for r in opts.ranks}
    out = {"results": results, "kept_tokens": len(kept_ids), "dropped_tokens": dropped,
           "extra_parameters": extra, "settings": {k: v for k, v in vars(opts).items() if k != "output"},
           # which pruned model: deploy.py's stamp (its settings and the dense model's fingerprint), if it has one
           "pruned_model_stamp": pruned_stamp(Path(opts.pruned)),
           "machine": run_record.machine(load_start), "minutes": (time.time() - started) / 60}
    run_record.write_outputs(opts.output, out, format_table(out))
    return out


def pruned_stamp(folder: Path) -> dict | None:
    """``benchmark_settings.json`` of a pruned folder deploy.py cached (None for another folder): a rerun after
    deploy.py pruned again into the same folder says it measured another model."""
    stamp = folder / "benchmark_settings.json"
    return json.loads(stamp.read_text()) if stamp.is_file() else None


def format_table(out: dict) -> str:
    settings = out.get("settings", {})
    lines = [f"all-MiniLM-L6-v2 pruned to 50% of layer FLOPs; {out['kept_tokens']:,} kept tokens, "
             f"{out['dropped_tokens']:,} dropped. Accuracy, and in brackets the share of rows whose prediction "
             "differs from the pruned model with every token.", "",
             f"| variant | extra parameters | check ({settings.get('check_samples', 500):,}, steers) | unseen dev "
             f"({settings.get('dev_samples', 1000):,}) | test |",
             "|---|---:|---:|---:|---:|"]
    for name, row in out["results"].items():
        extra = out["extra_parameters"].get(name, 0)
        cells = " | ".join(f"{100 * row[f'{s}_accuracy']:.2f}% ({100 * row[f'{s}_changed']:.1f}%)" for s in SPLITS)
        lines.append(f"| {name} | {extra / 1e6:.2f}M | {cells} |")
    lines += ["", f"Run time {out['minutes']:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main() and 0)
