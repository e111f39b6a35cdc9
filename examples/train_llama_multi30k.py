#!/usr/bin/env python
"""Train a small Llama language model on the English Multi30k captions from scratch, for the language-modeling
recipe to prune (no pretrained causal LM installs offline).

1. Text: the English side of ``../shared/data/multi30k`` (train, val, test_2016_flickr) written as one caption a
   line to ``OUTPUT_DIR/text/{train,val,test}.txt``, the files the recipe reads.
2. Tokenizer: a byte-level BPE of ``--vocab_size`` tokens (default 4,000) trained on the training captions; each
   caption reads ``<s> ... </s>`` (so a model learns where a caption ends), no pad token (as Llama's).
3. Dense model: a ``LlamaForCausalLM`` (default 4 layers of 256, 4 query heads sharing 2 key/value heads, gated FFN
   of 1,024, tied embeddings) trained with a plain ``Trainer`` on blocks of ``--block_size`` tokens of the
   concatenated captions (the recipe's own blocks), for at most ``--minutes`` of wall-clock time or ``--max_steps``
   steps, inverse-square-root learning rate (no step count needed). Saved with its tokenizer in ``OUTPUT_DIR/dense``.

Then prune it with the recipe (``recipes/configs/language_modeling_llama_multi30k.yaml`` reads these folders)::

    python examples/train_llama_multi30k.py                # -> outputs/llama_multi30k/{text,dense}
    python recipes/language_modeling.py recipes/configs/language_modeling_llama_multi30k.yaml
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer, TrainerCallback,
                          TrainingArguments, default_data_collator)

from recipes.language_modeling import blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI30K = os.path.join(ROOT, "..", "shared", "data", "multi30k")
SPLITS = {"train": "train.en.gz", "val": "val.en.gz", "test": "test_2016_flickr.en.gz"}


def read_captions(name: str) -> list[str]:
    with gzip.open(os.path.join(MULTI30K, name), "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                             special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=512)


class StopAfter(TrainerCallback):
    """End training once ``minutes`` of wall-clock time have passed."""

    def __init__(self, minutes: float):
        self.deadline = time.time() + 60 * minutes

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() > self.deadline:
            control.should_training_stop = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "outputs", "llama_multi30k"))
    parser.add_argument("--vocab_size", type=int, default=4000)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv_heads", type=int, default=2)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--max_steps", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    opts = parser.parse_args(argv)
    for name in ("vocab_size", "hidden_size", "layers", "heads", "kv_heads", "ffn", "block_size", "batch_size",
                 "max_steps", "threads"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if opts.minutes <= 0:
        parser.error("--minutes must be > 0")
    torch.set_num_threads(opts.threads)
    text_dir, dense_dir = os.path.join(opts.output_dir, "text"), os.path.join(opts.output_dir, "dense")
    os.makedirs(text_dir, exist_ok=True)
    captions = {split: read_captions(name) for split, name in SPLITS.items()}
    for split, rows in captions.items():
        with open(os.path.join(text_dir, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
    tokenizer = train_tokenizer(captions["train"], opts.vocab_size)
    train, tokens = blocks(tokenizer, captions["train"], opts.block_size, "training captions")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=opts.hidden_size, num_hidden_layers=opts.layers,
                         num_attention_heads=opts.heads, num_key_value_heads=opts.kv_heads,
                         intermediate_size=opts.ffn, max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(opts.seed)
    model = LlamaForCausalLM(config)
    args = TrainingArguments(os.path.join(opts.output_dir, "dense_training"), max_steps=opts.max_steps,
                             per_device_train_batch_size=opts.batch_size, learning_rate=opts.learning_rate,
                             lr_scheduler_type="inverse_sqrt", warmup_steps=200, weight_decay=0.01,
                             logging_steps=100, save_strategy="no", report_to="none", seed=opts.seed, use_cpu=True,
                             dataloader_pin_memory=False, disable_tqdm=True)
    started = time.time()
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=default_data_collator,
                      callbacks=[StopAfter(opts.minutes)])
    trainer.train()
    model.save_pretrained(dense_dir)
    tokenizer.save_pretrained(dense_dir)
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {"parameters": sum(p.numel() for p in model.parameters()), "steps": trainer.state.global_step,
               "epochs": trainer.state.global_step * opts.batch_size / len(train), "training_tokens": tokens,
               "blocks": len(train), "minutes": (time.time() - started) / 60,
               "mean_train_loss": trainer.state.log_history[-1].get("train_loss"),  # over the whole run
               "last_logged_loss": logged[-1] if logged else None, "options": vars(opts)}
    with open(os.path.join(opts.output_dir, "dense.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
