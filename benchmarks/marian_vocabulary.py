#!/usr/bin/env python
"""Marian en->de on Multi30k: dense and pruned models, each with and without a decoder vocabulary of its own.

A Marian model shares one token table between the encoder, the decoder and the output projection, so every
generated token is scored against both languages' tokens. ``prune_vocabulary(decoder_vocabulary=True)`` keeps
the tokens of the training sources for the encoder and gives the decoder a table and output projection of the
training targets' tokens alone (5,478 of the 8,000 shared BPE tokens for Multi30k's German). This script:

1. makes a decoder-vocabulary copy of every model given, saves it with its tokenizer and reloads it as users
   would (``AutoPrunedModel`` for a pruned folder, ``AutoModelForSeq2SeqLM`` for a dense one);
2. translates ``test_2016_flickr`` with every model (greedy, at most ``--max_length`` tokens) and scores
   sacreBLEU / chrF against the raw references; counts the translations the smaller vocabulary changes;
3. times ``generate`` for exactly ``--tokens`` new tokens at batch 1 (the source of median length) and
   ``--batch`` (the first sources), every model once per round, round-robin in this process; each model reads
   the sources as its own tokenizer writes them. Medians; speed-ups against the first model (the dense one).

::

    python benchmarks/marian_vocabulary.py --dense outputs/marian_multi30k/dense \\
        --pruned outputs/marian_multi30k/pruned --labels widths
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
from torch import nn  # noqa: E402
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

from hf_adaprune import AutoPrunedModel, save_pruned  # noqa: E402
from hf_adaprune.deploy import prune_vocabulary  # noqa: E402
from hf_adaprune.hub.load import load_pruned_config  # noqa: E402
from hf_adaprune.layout import read_record  # noqa: E402
from hf_adaprune.reporting.latency import compare_latency, format_latency  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import recipes.translation as recipe  # noqa: E402 (reading files, scoring translations)

import run_record  # noqa: E402 (this script's neighbour)


class GenerateOwnInputs(nn.Module):
    """``generate`` on inputs bound at construction (each model's own tokenization), for ``compare_latency``."""

    def __init__(self, model, inputs: dict, new_tokens: int):
        super().__init__()
        self.model, self.inputs = model, inputs
        self.kwargs = {"min_new_tokens": new_tokens, "max_new_tokens": new_tokens, "num_beams": 1, "do_sample": False}

    def forward(self, **_):
        return self.model.generate(**self.inputs, **self.kwargs)


def load(folder: str):
    """A folder as users load it: a pruned one with ``AutoPrunedModel``, a dense one with transformers alone."""
    config = load_pruned_config(folder)  # the family's config class: no remote-code prompt for the tokenizer
    if read_record(config):
        model = AutoPrunedModel.from_pretrained(folder, config=config)
    else:  # a dense folder
        model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    return model.eval(), AutoTokenizer.from_pretrained(folder, config=config)


def with_decoder_vocabulary(model, tokenizer, sources: list[str], targets: list[str]):
    """A copy of ``model`` with the training targets' decoder vocabulary, saved and reloaded."""
    model = copy.deepcopy(model)
    new_tokenizer = prune_vocabulary(model, tokenizer, sources, target_texts=targets, decoder_vocabulary=True)
    with tempfile.TemporaryDirectory(prefix="adaprune-marian-vocab-") as saved:
        if getattr(model.config, "adaprune", None):
            save_pruned(model, saved, tokenizer=new_tokenizer)
        else:
            model.save_pretrained(saved)
            new_tokenizer.save_pretrained(saved)
        return load(saved)


def translate(model, tokenizer, sources: list[str], max_length: int, batch_size: int = 100) -> list[str]:
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[str | None] = [None] * len(sources)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            batch = tokenizer([sources[i] for i in indices], max_length=max_length, truncation=True, padding=True,
                              return_tensors="pt")
            generated = model.generate(**batch, max_length=max_length, num_beams=1, do_sample=False)
            for i, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True)):
                out[i] = text
    return out


def score(hypotheses: list[str], references: list[str]) -> dict:
    return {name: recipe.headline_value(name, recipe.load_metric(name).compute(
        predictions=hypotheses, references=[[r] for r in references])) for name in recipe.REPORTED_METRICS}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", required=True, help="the dense model's folder (tokenizer inside)")
    parser.add_argument("--pruned", nargs="*", default=[], help="pruned folders (Hub format, tokenizer inside)")
    parser.add_argument("--labels", nargs="*", default=None, help="a name per pruned folder")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "multi30k"))
    parser.add_argument("--test_split", default="test_2016_flickr")
    parser.add_argument("--max_length", type=int, default=64, help="source truncation and generation limit")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per timed generate")
    parser.add_argument("--batch", type=int, default=32, help="the second timed batch size")
    parser.add_argument("--repeats", type=int, nargs=2, default=[40, 10], help="rounds at batch 1 and --batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "marian_vocabulary.json"))
    opts = parser.parse_args(argv)
    labels = opts.labels or [Path(p).name for p in opts.pruned]
    if len(labels) != len(opts.pruned):
        parser.error("--labels needs one name per --pruned folder")
    if "dense" in labels or len(set(labels)) != len(labels) or any(
            label.endswith(" + decoder vocabulary") for label in labels):  # models are keyed by label: one would go
        parser.error(f"--labels must be distinct, not 'dense' and not end in ' + decoder vocabulary'; got {labels}"
                     + ("" if opts.labels else " (the folder names: name the folders with --labels)"))
    torch.set_num_threads(opts.threads)
    transformers.logging.set_verbosity_error()  # min/max_new_tokens override the models' max_length: intended
    started, load_start = time.time(), os.getloadavg()
    data = Path(opts.data_dir)
    train_sources = recipe.read_lines(str(data / "train.en.gz"))
    train_targets = recipe.read_lines(str(data / "train.de.gz"))
    test_sources = recipe.read_lines(str(data / f"{opts.test_split}.en.gz"))
    test_references = recipe.read_lines(str(data / f"{opts.test_split}.de.gz"))

    models = {}
    for label, folder in [("dense", opts.dense)] + list(zip(labels, opts.pruned)):
        model, tokenizer = load(folder)
        models[label] = (model, tokenizer)
        models[f"{label} + decoder vocabulary"] = with_decoder_vocabulary(model, tokenizer, train_sources,
                                                                          train_targets)

    results, translations = {}, {}
    for name, (model, tokenizer) in models.items():
        t0 = time.time()
        translations[name] = translate(model, tokenizer, test_sources, opts.max_length)
        config = model.config
        results[name] = {
            **score(translations[name], test_references),
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": config.vocab_size,
            "decoder_vocab_size": config.vocab_size if config.share_encoder_decoder_embeddings
            else config.decoder_vocab_size,
            "layers": f"{config.encoder_layers}+{config.decoder_layers}",
        }
        print(f"{name}: BLEU {results[name]['sacrebleu']:.2f}, chrF {results[name]['chrf']:.2f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    for name in list(results):
        if name.endswith(" + decoder vocabulary"):
            base = name.removesuffix(" + decoder vocabulary")
            results[name]["same_translations"] = sum(a == b for a, b in zip(translations[base], translations[name]))

    dense_tokenizer = models["dense"][1]
    median_sentence = recipe.median_length_sentence(test_sources, dense_tokenizer, opts.max_length)
    latency = {}
    for batch_size, repeats in zip((1, opts.batch), opts.repeats):
        sentences = [median_sentence] if batch_size == 1 else test_sources[:batch_size]
        modules = {name: GenerateOwnInputs(model, dict(tokenizer(sentences, max_length=opts.max_length,
                                                                  truncation=True, padding=True,
                                                                  return_tensors="pt")), opts.tokens)
                   for name, (model, tokenizer) in models.items()}
        timing = compare_latency(modules, {}, repeats=repeats, warmup=2)
        print(format_latency(timing, title=f"generate, batch {batch_size}, exactly {opts.tokens} new tokens"),
              flush=True)
        latency[f"batch_{batch_size}"] = timing
    out = {"results": results, "latency": latency, "test_sentences": len(test_sources),
           "settings": {k: v for k, v in vars(opts).items() if k != "output"} | {"labels": labels},
           "machine": run_record.machine(load_start), "minutes": (time.time() - started) / 60}
    run_record.write_outputs(opts.output, out, format_table(out))
    return out


def format_table(out: dict) -> str:
    s = out["settings"]
    lines = [f"Marian en->de on Multi30k {s['test_split']} ({out['test_sentences']} sentences, greedy): generate "
             f"for exactly {s['tokens']} new tokens, {s['threads']} thread(s), medians of {s['repeats'][0]} "
             f"(batch 1) and {s['repeats'][1]} (batch {s['batch']}) round-robin rounds", "",
             f"| model | layers (enc+dec) | vocabulary (encoder / decoder) | parameters | test BLEU | test chrF "
             f"| generate b1 | speed-up | generate b{s['batch']} | speed-up |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    b1, bn = out["latency"]["batch_1"], out["latency"][f"batch_{s['batch']}"]
    for name, row in out["results"].items():
        lines.append(f"| {name} | {row['layers']} | {row['vocab_size']:,} / {row['decoder_vocab_size']:,} "
                     f"| {row['parameters'] / 1e6:.2f}M | {row['sacrebleu']:.2f} | {row['chrf']:.2f} "
                     f"| {1000 * b1[name]['median_s']:.1f} ms | {b1[name]['speedup']:.2f}x "
                     f"| {1000 * bn[name]['median_s']:.1f} ms | {bn[name]['speedup']:.2f}x |")
    same = [f"{row['same_translations']} of {out['test_sentences']} ({name.removesuffix(' + decoder vocabulary')})"
            for name, row in out["results"].items() if "same_translations" in row]
    lines += ["", "Translations with the decoder vocabulary equal those without on " + ", ".join(same) + ". "
              + run_record.run_footer(out)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main() and 0)
