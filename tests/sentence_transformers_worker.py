"""Run by tests/test_sentence_transformers.py under torchrun: a tiny SentenceTransformer pruning run, masks per rank.

Usage: torchrun --nproc_per_node 2 tests/sentence_transformers_worker.py ENCODER_FOLDER OUTPUT_DIR [STEER]

STEER: ``agreement`` (default: agreement with the dense embeddings of the eval sentences) or ``sts`` (an
``EmbeddingSimilarityEvaluator``, which names its primary metric only once it has run, and only rank 0 runs it);
``loss_rows``: no training, the decision loss on 33 eval rows written per rank (``loss_rank{rank}.json``).
"""

from __future__ import annotations

import json
import os
import sys

import torch
from datasets import Dataset
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

# run as a script, so its own folder (tests/) is on sys.path
from test_sentence_transformers import decision_loss_of_odd_rows, make_args, sentences, tiny_sentence_transformer

from hf_adaprune import get_masks
from hf_adaprune.sentence_transformers import AdaptivePruningSentenceTransformerTrainer


def main():
    encoder_folder, output_dir = sys.argv[1], sys.argv[2]
    # As a user launches it on a CPU-only machine: PruningArguments switches to the CPU (gloo) by itself.
    distributed = dict(use_cpu=False) if not torch.cuda.is_available() else dict(ddp_backend="gloo")
    if len(sys.argv) > 3 and sys.argv[3] == "loss_rows":
        loss = decision_loss_of_odd_rows(encoder_folder, output_dir, **distributed)
        rank = int(os.environ["RANK"])
        with open(os.path.join(output_dir, f"loss_rank{rank}.json"), "w") as file:
            json.dump(loss, file)
        return
    model = tiny_sentence_transformer(encoder_folder)
    corpus = sentences(64)
    args = make_args(output_dir, compact_at_end=False, **distributed)
    steering = dict(eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}))
    if len(sys.argv) > 3 and sys.argv[3] == "sts":
        scores = [(i % 5) / 4 for i in range(16)]
        steering = dict(evaluator=EmbeddingSimilarityEvaluator(corpus[:16], corpus[16:32], scores, name="dev"))
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"sentence": corpus}), **steering)
    trainer.train()
    rank = trainer.args.process_index
    torch.save(get_masks(trainer.pruned_model).state_dict(), os.path.join(output_dir, f"masks_rank{rank}.pt"))


if __name__ == "__main__":
    main()
