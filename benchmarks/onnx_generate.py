#!/usr/bin/env python
"""ONNX greedy decoding of a pruned Marian with and without the past-key-values graph, per generated token.

Latency only, no quality. The model has the README's Marian shape (d_model 256, 3+3 layers, 4 heads, FFN 1,024,
8,000 tokens; random weights, or ``--model`` for a saved folder), its heads and FFN neurons pruned by magnitude
to ``--target`` of its attention+FFN FLOPs (kept heads per layer in the JSON), compacted and exported with
``export_onnx``. Both paths run ``OnnxSeq2Seq.generate`` on the same sessions and generate exactly
``--new_tokens`` tokens (no end token), so the two timings cover the same decoding work: ``use_cache=True``
(first step on the start token, then one token per step with the past key values) and ``use_cache=False`` (the
whole prefix every step). Transformers' cached
``generate`` on the same model is timed alongside as a reference. All three run round-robin in one process
(``compare_latency``), medians; per-token figures are the median divided by ``--new_tokens``.

    python benchmarks/onnx_generate.py      # -> benchmarks/results/onnx_generate.json

With ``--dense FOLDER`` (the dense model ``--model`` was pruned from) the dense model is exported and timed in
the same round-robin, with and without onnxruntime, so the pruned model's speed-up shows in both runtimes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

from hf_adaprune import AutoPrunedModel, attach_masks, compact
from hf_adaprune.deploy import OnnxSeq2Seq, export_onnx
from hf_adaprune.engine.importance import MagnitudeImportance
from hf_adaprune.engine.selection import select_masks_by_kind
from hf_adaprune.reporting.flops import structure_costs
from hf_adaprune.reporting.latency import compare_latency, format_latency

ROOT = Path(__file__).resolve().parents[1]
MARIAN = dict(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=128,
              pad_token_id=7999, eos_token_id=0, decoder_start_token_id=7999)


class _Call(nn.Module):
    """A zero-argument call in the shape ``compare_latency`` times (``module(**inputs)``)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self):
        return self.fn()


def pruned_marian(target: float, seq_len: int, seed: int):
    torch.manual_seed(seed)
    model = transformers.MarianMTModel(transformers.MarianConfig(**MARIAN)).eval()
    masks = attach_masks(model)
    groups = list(masks.groups.values())
    scores = MagnitudeImportance().scores(model, groups)
    costs = structure_costs(model, groups, seq_len)
    masks.update(select_masks_by_kind(groups, scores, masks.state_dict(), target, scope="global", costs=costs))
    compact(model)
    return model


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a saved (pruned) Marian folder instead of the random one")
    p.add_argument("--dense", default=None, help="also time this dense Marian folder (e.g. --model's dense start)")
    p.add_argument("--target", type=float, default=0.5, help="share of attention+FFN FLOPs removed")
    p.add_argument("--source_length", type=int, default=14, help="source tokens (Multi30k's median is ~14)")
    p.add_argument("--new_tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=str(ROOT / "benchmarks/results/onnx_generate.json"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    model = (AutoPrunedModel.from_pretrained(args.model) if args.model else
             pruned_marian(args.target, args.source_length, seed=0)).eval()
    config = model.generation_config
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size - 1, (1, args.source_length), generator=generator)
    ids[0, -1] = model.config.eos_token_id
    mask = torch.ones_like(ids)
    kwargs = dict(decoder_start_token_id=config.decoder_start_token_id, eos_token_id=-1,  # never stops early
                  pad_token_id=config.pad_token_id, max_new_tokens=args.new_tokens)
    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as dense_folder:
        export_onnx(model, folder)
        runner = OnnxSeq2Seq(folder, threads=args.threads)
        dense_calls = {}
        if args.dense:
            dense = transformers.AutoModelForSeq2SeqLM.from_pretrained(args.dense).eval()
            export_onnx(dense, dense_folder)
            dense_runner = OnnxSeq2Seq(dense_folder, threads=args.threads)
            dense_calls = {
                "dense: onnx, past": _Call(lambda: dense_runner.generate(ids.numpy(), mask.numpy(), use_cache=True,
                                                                         **kwargs)),
                "dense: transformers generate (cache)": _Call(lambda: dense.generate(
                    input_ids=ids, attention_mask=mask, min_new_tokens=args.new_tokens,
                    max_new_tokens=args.new_tokens, num_beams=1, do_sample=False))}
        with_past = runner.generate(ids.numpy(), mask.numpy(), use_cache=True, **kwargs)
        without = runner.generate(ids.numpy(), mask.numpy(), use_cache=False, **kwargs)
        assert np.array_equal(with_past, without), "the two paths must give the same tokens"
        assert with_past.shape[1] == args.new_tokens + 1
        calls = dense_calls | {
            "onnx, no past": _Call(lambda: runner.generate(ids.numpy(), mask.numpy(), use_cache=False, **kwargs)),
            "onnx, past": _Call(lambda: runner.generate(ids.numpy(), mask.numpy(), use_cache=True, **kwargs)),
            "transformers generate (cache)": _Call(lambda: model.generate(
                input_ids=ids, attention_mask=mask, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens,
                num_beams=1, do_sample=False)),
        }
        timing = compare_latency(calls, {}, repeats=args.repeats, warmup=3)
    print(format_latency(timing, title=f"Marian greedy decoding, batch 1, source {args.source_length} tokens, "
                                       f"exactly {args.new_tokens} new tokens"))
    per_token = {name: t["median_s"] / args.new_tokens * 1000 for name, t in timing.items()}
    for name, ms in per_token.items():
        print(f"{name}: {ms:.2f} ms per generated token")
    ratio = per_token["onnx, no past"] / per_token["onnx, past"]
    print(f"past vs no past: {ratio:.2f}x faster per generated token")
    pruned_vs_dense = {}
    if args.dense:
        pruned_vs_dense = {
            "onnxruntime": per_token["dense: onnx, past"] / per_token["onnx, past"],
            "transformers": per_token["dense: transformers generate (cache)"]
            / per_token["transformers generate (cache)"],
            "pruned onnxruntime vs dense transformers": per_token["dense: transformers generate (cache)"]
            / per_token["onnx, past"]}
        print("pruned vs dense: " + ", ".join(f"{k} {v:.2f}x" for k, v in pruned_vs_dense.items()))
    heads = {f"decoder.layers.{i}": (layer.self_attn.num_heads if hasattr(layer.self_attn, "num_heads") else 0,
                                     layer.encoder_attn.num_heads if hasattr(layer.encoder_attn, "num_heads") else 0)
             for i, layer in enumerate(model.model.decoder.layers)}
    result = {"model": args.model or "random Marian " + json.dumps(MARIAN), "target": None if args.model else args.target,  # --model: pruned already, --target unused
              "decoder_heads_self_cross": heads, "source_length": args.source_length, "new_tokens": args.new_tokens,
              "threads": args.threads, "timing": timing, "ms_per_token": per_token, "past_speedup_per_token": ratio,
              "dense": args.dense, "pruned_vs_dense_per_token": pruned_vs_dense}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
