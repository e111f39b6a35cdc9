#!/usr/bin/env python
"""From pruned to deployed: all-MiniLM-L6-v2 on SST-2, dense vs pruned vs pruned + vocabulary vs + int8.

Takes the dense and pruned classifiers that ``examples/prune_minilm_sst2.py`` writes (``OUT/dense``,
``OUT/pruned``), prunes the pruned model's vocabulary to the tokens of SST-2 training phrases (never the
test split), quantizes it to int8 (``save_int8``) and reports, for every variant: accuracy on ``test.tsv``
(the 872 GLUE validation sentences), parameters, weights on disk and batch-1 CPU latency at seq 128
(median, all variants timed round-robin in one process)::

    python examples/prune_minilm_sst2.py --output_dir OUT ...
    python benchmarks/deploy.py --dense OUT/dense --pruned OUT/pruned --output benchmarks/results/deploy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_adaprune import AutoPrunedModel, save_pruned
from hf_adaprune.deploy import load_int8, prune_vocabulary, save_int8
from hf_adaprune.reporting.latency import compare_latency, format_latency

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def read_tsv(path: Path, n: int | None = None) -> tuple[list[str], list[int]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    rows = rows[:n] if n else rows
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def accuracy(model, tokenizer, texts, labels, batch_size=64) -> float:
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            predictions = model(**batch).logits.argmax(-1)
            correct += (predictions == torch.tensor(labels[start:start + batch_size])).sum().item()
    return correct / len(texts)


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def parameters(model) -> int:
    """Parameters, counting each int8 linear's weights and biases too (they leave ``parameters()``)."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._packed_params._weight_bias()
            count += weight.numel() + (bias.numel() if bias is not None else 0)
    return count


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", required=True, help="fine-tuned dense classifier folder")
    p.add_argument("--pruned", required=True, help="pruned classifier folder (save_pruned / the trainer's save)")
    p.add_argument("--data_dir", default=str(DEFAULT_DATA))
    p.add_argument("--vocab_samples", type=int, default=20000,
                   help="train.tsv phrases whose tokens the pruned vocabulary keeps")
    p.add_argument("--max_test_samples", type=int, default=None)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    started = time.time()
    data = Path(args.data_dir)
    train_texts, _ = read_tsv(data / "train.tsv", args.vocab_samples)
    test_texts, test_labels = read_tsv(data / "test.tsv", args.max_test_samples)

    tokenizer = AutoTokenizer.from_pretrained(args.pruned)
    dense = AutoModelForSequenceClassification.from_pretrained(args.dense).eval()
    pruned = AutoPrunedModel.from_pretrained(args.pruned).eval()
    variants = {"dense": (dense, tokenizer), "pruned": (pruned, tokenizer)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dense.save_pretrained(tmp / "dense")
        save_pruned(pruned, tmp / "pruned")
        vocab_model = AutoPrunedModel.from_pretrained(args.pruned).eval()
        vocab_tokenizer = prune_vocabulary(vocab_model, tokenizer, train_texts)
        save_pruned(vocab_model, tmp / "pruned_vocab", tokenizer=vocab_tokenizer)
        variants["pruned + vocabulary"] = (vocab_model, vocab_tokenizer)
        save_int8(vocab_model, tmp / "pruned_vocab_int8", tokenizer=vocab_tokenizer)
        variants["pruned + vocabulary + int8"] = (load_int8(tmp / "pruned_vocab_int8"), vocab_tokenizer)
        sizes = {name: weights_bytes(tmp / folder) for name, folder in zip(
            variants, ("dense", "pruned", "pruned_vocab", "pruned_vocab_int8"))}

    results = {name: {"test_accuracy": accuracy(model, tok, test_texts, test_labels),
                      "parameters": parameters(model), "weights_bytes": sizes[name]}
               for name, (model, tok) in variants.items()}
    vocab_size = vocab_model.config.vocab_size
    inputs = {"input_ids": torch.randint(1000, vocab_size, (1, 128)),  # ids every variant's vocabulary holds
              "attention_mask": torch.ones(1, 128, dtype=torch.long)}
    inputs["input_ids"][:, 0] = vocab_tokenizer.cls_token_id
    latency = compare_latency({name: model for name, (model, _) in variants.items()}, inputs, repeats=args.repeats)
    print(format_latency(latency, title="batch 1, seq 128"))
    dense_row = results["dense"]
    for name, row in results.items():
        row["latency_ms"] = 1000 * latency[name]["median_s"]
        row["speedup_vs_dense"] = latency[name]["speedup"]
        row["parameters_vs_dense"] = row["parameters"] / dense_row["parameters"]
        row["size_vs_dense"] = row["weights_bytes"] / dense_row["weights_bytes"]
    print("| | test accuracy | parameters | weights on disk | batch-1 latency |\n|---|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {100 * row['test_accuracy']:.2f}% | {row['parameters'] / 1e6:.2f}M "
              f"({100 * row['parameters_vs_dense']:.0f}%) | {row['weights_bytes'] / 1e6:.1f} MB "
              f"({100 * row['size_vs_dense']:.0f}%) | {row['latency_ms']:.1f} ms "
              f"({row['speedup_vs_dense']:.2f}x) |")
    out = {"results": results, "latency": latency, "vocab_size": vocab_size, "threads": torch.get_num_threads(),
           "test_samples": len(test_texts), "vocab_samples": len(train_texts), "minutes": (time.time() - started) / 60}
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
