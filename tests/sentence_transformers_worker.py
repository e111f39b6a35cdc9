"""Run by tests/test_sentence_transformers.py under torchrun: a tiny SentenceTransformer pruning run, masks per rank.

Usage: torchrun --nproc_per_node 2 tests/sentence_transformers_worker.py ENCODER_FOLDER OUTPUT_DIR
"""

from __future__ import annotations

import os
import sys

import torch
from datasets import Dataset

# run as a script, so its own folder (tests/) is on sys.path
from test_sentence_transformers import make_args, sentences, tiny_sentence_transformer

from hf_adaprune import get_masks
from hf_adaprune.sentence_transformers import AdaptivePruningSentenceTransformerTrainer


def main():
    encoder_folder, output_dir = sys.argv[1], sys.argv[2]
    model = tiny_sentence_transformer(encoder_folder)
    corpus = sentences(64)
    # As a user launches it on a CPU-only machine: PruningArguments switches to the CPU (gloo) by itself.
    distributed = dict(use_cpu=False) if not torch.cuda.is_available() else dict(ddp_backend="gloo")
    args = make_args(output_dir, compact_at_end=False, **distributed)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"sentence": corpus}),
        eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}))
    trainer.train()
    rank = trainer.args.process_index
    torch.save(get_masks(trainer.pruned_model).state_dict(), os.path.join(output_dir, f"masks_rank{rank}.pt"))


if __name__ == "__main__":
    main()
