"""Measured speed of pruned decoder-only language models (the Llama layout): generate at batch 1, and a forward
over a prompt (what a decoder classifier or the prefill costs), widths against whole layers.

No checkpoint installs offline, so the model has a checkpoint's configuration and random weights: the timing depends
on how many key/value groups, neurons and layers are kept, not on their values. Shape: HuggingFaceTB/SmolLM2-135M
(Llama: 30 layers of 576, 9 query heads sharing 3 key/value heads, gated FFN 1,536, tied 49,152-token vocabulary).
Variants, each removing the given share of the layers' FLOPs (attention + FFN at seq 128): widths (key/value groups
and FFN neurons, magnitude scores, one global ranking), and whole layers (the first layers kept: which ones does not
change the timing). All models are timed round-robin in one process (``compare_latency``: medians, 1 thread): greedy
``generate`` of exactly ``--new_tokens`` tokens after a 16-token prompt at batch 1, and the decoder stack's forward
(``model.model``: what a classifier head reads; the LM head over every position left out) at batch 1 / 8 over 128
tokens.

    python benchmarks/decoder_speed.py        # -> benchmarks/results/smollm2_135m_speed.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

import torch
import transformers

from multiple_of import pruned_model, remove_layers  # this script's neighbour (its folder is on sys.path)
from run_record import make_parent_folder
from hf_adaprune.reporting.flops import model_profile
from hf_adaprune.reporting.latency import GenerateExactly, compare_latency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=8192, rope_theta=100000,
                    tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def layer_flops(model) -> float:
    return model_profile(model, seq_len=128)["layer_flops"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5])
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "smollm2_135m_speed"))
    opts = parser.parse_args(argv)
    for name in ("repeats", "new_tokens", "threads"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not all(0 < target < 1 for target in opts.targets):
        parser.error(f"--targets must lie in (0, 1); got {opts.targets}")
    torch.set_num_threads(opts.threads)
    make_parent_folder(opts.out)
    started = time.time()
    torch.manual_seed(0)
    dense = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM2_135M)).eval()
    models, rows = {"dense": dense}, {"dense": {"layers": 30, "layer_flops_removed": 0.0}}
    dense_flops = layer_flops(dense)
    for target in opts.targets:
        widths, _, _ = pruned_model(dense, target, 1)
        layers = remove_layers(copy.deepcopy(dense), round(30 * (1 - target)))
        for kind, model in (("widths", widths), ("layers", layers)):
            name = f"{kind} {target:.0%}"
            models[name] = model.eval()
            rows[name] = {"layers": model.config.num_hidden_layers,
                          "layer_flops_removed": 1 - layer_flops(model) / dense_flops}
    prompt = {"input_ids": torch.randint(1, 49152, (1, 16), generator=torch.Generator().manual_seed(0))}
    timings = {"generate b1": compare_latency({n: GenerateExactly(m, opts.new_tokens) for n, m in models.items()},
                                              prompt, repeats=opts.repeats, warmup=2)}
    for batch in (1, 8):
        inputs = {"input_ids": torch.randint(1, 49152, (batch, 128), generator=torch.Generator().manual_seed(1))}
        timings[f"stack b{batch} seq 128"] = compare_latency({n: m.model for n, m in models.items()}, inputs,
                                                            repeats=opts.repeats, warmup=2)
    for name, row in rows.items():
        row["parameters"] = sum(p.numel() for p in models[name].parameters())
        for label, table in timings.items():
            row[label] = {"median_ms": 1000 * table[name]["median_s"], "speedup": table[name]["speedup"]}
    record = {"command": "python benchmarks/decoder_speed.py " + " ".join(argv or []), "shape": "SmolLM2-135M",
              "threads": opts.threads, "new_tokens": opts.new_tokens, "repeats": opts.repeats,
              "machine": platform.machine(), "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d"),
              "minutes": (time.time() - started) / 60, "rows": rows}
    with open(opts.out + ".json", "w") as f:
        json.dump(record, f, indent=1)
    labels = list(timings)
    lines = [f"SmolLM2-135M shape (random weights), {opts.threads} thread(s), medians of {opts.repeats} round-robin "
             f"rounds; generate: exactly {opts.new_tokens} new tokens after 16 prompt tokens",
             "", "| variant | layers | parameters | layer FLOPs removed | " + " | ".join(labels) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(labels)]
    for name, row in rows.items():
        cells = [f"{row[label]['median_ms']:.1f} ms ({row[label]['speedup']:.2f}x)" for label in labels]
        lines.append(f"| {name} | {row['layers']} | {row['parameters'] / 1e6:.1f}M | "
                     f"{row['layer_flops_removed']:.1%} | " + " | ".join(cells) + " |")
    lines += ["", f"load average at the end: {os.getloadavg()[0]:.1f}; run time {record['minutes']:.1f} min"]
    with open(opts.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    main()
