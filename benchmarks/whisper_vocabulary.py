#!/usr/bin/env python
"""Whisper tiny.en on spoken digits: the trained width+layers model, then its vocabulary pruned, at batch 1.

Where batch-1 ``generate`` time goes in Whisper tiny.en (``benchmarks/layers_generate.py``): a third of it is the
output projection over the 51,864-token vocabulary, which no head, neuron or layer pruning touches. A model
fine-tuned for one task writes a handful of those tokens; ``prune_vocabulary`` keeps the tokens of the training
transcripts, every special and timestamp token (Whisper finds them as offsets from ``<|notimestamps|>``) and the
ids the generation config names, and slices the decoder's tied embedding and output projection to them.

Reads the folder ``examples/prune_whisper_fsdd.py --prune heads,ffn,layers`` writes (``--run_dir``: the pruned
model in ``pruned/``, the equally trained dense model in ``pruned/dense_control/``, the manifests in
``manifests/``), then:

1. prunes the pruned model's vocabulary to the tokens of the training transcripts, saves it with its processor
   and reloads it with ``AutoPrunedModel`` (the model users would serve);
2. transcribes the test clips with each model (greedy, at most 8 new tokens, the run's 2 s window) and scores
   WER/CER after the run's normalisation; checks that the pruned and pruned + vocabulary transcripts agree;
3. times ``generate`` for exactly ``--tokens`` new tokens at batch 1 and 16, every model once per round,
   round-robin in this process (medians, ratios against the dense model).

::

    python examples/prune_whisper_fsdd.py --prune heads,ffn,layers --output_dir outputs/prune_whisper_fsdd_layers
    python benchmarks/whisper_vocabulary.py   # -> benchmarks/results/whisper_vocabulary.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import WhisperForConditionalGeneration, WhisperProcessor  # noqa: E402

from hf_adaprune import AutoPrunedModel, save_pruned  # noqa: E402
from hf_adaprune.deploy import prune_vocabulary  # noqa: E402
from hf_adaprune.reporting.latency import GenerateExactly, compare_latency, format_latency  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes import asr  # noqa: E402
from recipes.speech.data import make_normalizer, parse_normalization  # noqa: E402
from recipes.speech.metrics import error_rates  # noqa: E402
from recipes.speech.model import transcribe  # noqa: E402

import run_record  # noqa: E402 (this script's neighbour)

NORMALIZATION = "lowercase,punctuation,digits"  # the example's


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default=str(ROOT / "outputs" / "prune_whisper_fsdd_layers"))
    parser.add_argument("--pad_seconds", type=float, default=0.25, help="silence around each clip (the example's)")
    parser.add_argument("--tokens", type=int, default=4, help="new tokens per timed generate (the example's)")
    parser.add_argument("--repeats", type=int, nargs=2, default=[30, 10], help="rounds at batch 1 and 16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "whisper_vocabulary.json"))
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    transformers.logging.set_verbosity_error()  # generate's notes on max_length vs max_new_tokens, once per call
    started, load_start = time.time(), os.getloadavg()
    run = Path(opts.run_dir)
    if not (run / "pruned" / "dense_control").is_dir():
        sys.exit(f"{run} has no pruned/ and pruned/dense_control/: run examples/prune_whisper_fsdd.py "
                 f"--prune heads,ffn,layers --output_dir {run} first")

    processor = WhisperProcessor.from_pretrained(run / "pruned")
    dense = WhisperForConditionalGeneration.from_pretrained(run / "pruned" / "dense_control").eval()
    pruned = AutoPrunedModel.from_pretrained(run / "pruned").eval()
    train_rows = asr.read_manifest(str(run / "manifests" / "train.csv"), "--train_manifest", "path", "text")

    def with_vocabulary(model):
        """A copy of ``model`` with the training transcripts' vocabulary, saved and reloaded as users would."""
        model = copy.deepcopy(model)
        tokenizer = prune_vocabulary(model, processor.tokenizer, target_texts=[r["text"] for r in train_rows])
        with tempfile.TemporaryDirectory(prefix="adaprune-whisper-vocab-") as saved:
            save_pruned(model, saved, processor=WhisperProcessor(feature_extractor=processor.feature_extractor,
                                                                 tokenizer=tokenizer))
            return AutoPrunedModel.from_pretrained(saved).eval(), WhisperProcessor.from_pretrained(saved)

    fewer_layers = (pruned.config.encoder_layers, pruned.config.decoder_layers) != (dense.config.encoder_layers,
                                                                                       dense.config.decoder_layers)
    pruned_name = "pruned (heads, FFN, layers)" if fewer_layers else "pruned (heads, FFN)"  # what --run_dir removed
    models = {"dense (equally trained)": (dense, processor),
              "dense + vocabulary": with_vocabulary(dense),
              pruned_name: (pruned, processor),
              "pruned + vocabulary": with_vocabulary(pruned)}
    vocab_processor = models["pruned + vocabulary"][1]
    print(f"vocabulary {processor.tokenizer.vocab_size + len(processor.tokenizer.added_tokens_decoder):,} -> "
          f"{len(vocab_processor.tokenizer):,} tokens", flush=True)

    rows = asr.read_manifest(str(run / "manifests" / "test.csv"), "--test_manifest", "path", "text")
    audio = [asr.decode_audio(r["source"], 16000, r["name"], opts.pad_seconds) for r in rows]
    normalize = make_normalizer(parse_normalization(NORMALIZATION))
    references = [normalize(r["text"]) for r in rows]
    results, transcripts = {}, {}
    for name, (model, proc) in models.items():
        texts = transcribe(model, proc, audio, batch_size=16, max_new_tokens=8)
        transcripts[name] = texts
        rates = error_rates([normalize(t) for t in texts], references)
        results[name] = {"test_wer": rates["wer"], "test_cer": rates["cer"], "parameters": parameters(model),
                         "vocab_size": model.config.vocab_size,
                         "decoder_layers": model.config.decoder_layers, "encoder_layers": model.config.encoder_layers}
        print(f"{name}: test WER {100 * rates['wer']:.2f}%, CER {100 * rates['cer']:.2f}%", flush=True)
    same = {source: sum(a == b for a, b in zip(transcripts[source], transcripts[target]))
            for source, target in (("dense (equally trained)", "dense + vocabulary"),
                                   (pruned_name, "pruned + vocabulary"))}

    latency = {}
    for batch_size, repeats in zip((1, 16), opts.repeats):
        clips = (audio * 16)[:batch_size]
        inputs = {"input_features": processor.feature_extractor(clips, sampling_rate=16000,
                                                                return_tensors="pt")["input_features"]}
        timing = compare_latency({name: GenerateExactly(model, opts.tokens) for name, (model, _) in models.items()},
                                 inputs, repeats=repeats, warmup=2)
        print(format_latency(timing, title=f"generate, batch {batch_size}, {opts.tokens} new tokens"), flush=True)
        latency[f"batch_{batch_size}"] = timing
    out = {"results": results, "latency": latency, "test_clips": len(rows),
           "same_transcripts_with_vocabulary": same,
           "settings": {k: v for k, v in vars(opts).items() if k != "output"},
           "machine": run_record.machine(load_start),
           "minutes": (time.time() - started) / 60}
    run_record.write_outputs(opts.output, out, format_table(out))
    return out


def format_table(out: dict) -> str:
    s = out["settings"]
    lines = [f"Whisper tiny.en on FSDD ({out['test_clips']} test clips): generate for exactly {s['tokens']} new "
             "tokens, "
             f"{s['threads']} thread(s), medians of {s['repeats'][0]} (batch 1) and {s['repeats'][1]} (batch 16) "
             "round-robin rounds", "",
             "| model | layers (enc+dec) | vocabulary | parameters | test WER | test CER | generate b1 | speed-up "
             "| generate b16 | speed-up |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    b1, b16 = out["latency"]["batch_1"], out["latency"]["batch_16"]
    for name, row in out["results"].items():
        lines.append(f"| {name} | {row['encoder_layers']}+{row['decoder_layers']} | {row['vocab_size']:,} "
                     f"| {row['parameters'] / 1e6:.2f}M | {100 * row['test_wer']:.2f}% | {100 * row['test_cer']:.2f}% "
                     f"| {1000 * b1[name]['median_s']:.1f} ms | {b1[name]['speedup']:.2f}x "
                     f"| {1000 * b16[name]['median_s']:.1f} ms | {b16[name]['speedup']:.2f}x |")
    same = out["same_transcripts_with_vocabulary"]
    lines += ["", "Transcripts with the pruned vocabulary equal those without on "
              + ", ".join(f"{n} of {out['test_clips']} test clips ({name})" for name, n in same.items()) + ". "
              + run_record.run_footer(out)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main() and 0)
