"""Run by tests/test_distributed.py under torchrun: the Seq2Seq trainer's decisions on generated text count each row once.

Usage: python tests/seq2seq_worker.py OUTPUT_DIR ROWS. The decision metric is the number of generated rows the metric
receives; each rank writes the reference it took to ``reference_rank{R}.json``.
"""

from __future__ import annotations

import argparse
import json
import os

import datasets
import torch

# run as a script, so its own folder (tests/) is on sys.path
from test_seq2seq_families import tiny_seq2seq

from hf_adaprune import AdaptivePruningSeq2SeqTrainer, Seq2SeqPruningArguments


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("rows", type=int)
    opts = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    data = datasets.Dataset.from_dict({"input_ids": torch.randint(5, 99, (32, 9), generator=generator).tolist(),
                                       "labels": torch.randint(5, 99, (32, 7), generator=generator).tolist()})
    distributed = dict(use_cpu=False) if "WORLD_SIZE" in os.environ else dict(use_cpu=True)
    args = Seq2SeqPruningArguments(
        opts.output_dir, predict_with_generate=True, generation_max_length=6, per_device_eval_batch_size=4,
        per_device_train_batch_size=4, max_steps=2, pruning_warmup_steps=1, pruning_interval=1, pruning_target=0.5,
        pruning_metric="rows", pruning_greater_is_better=True, pruning_tolerance=100.0, pruning_seq_len=9,
        save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=100, seed=0, **distributed)
    trainer = AdaptivePruningSeq2SeqTrainer(
        model=tiny_seq2seq("marian"), args=args, train_dataset=data, eval_dataset=data.select(range(opts.rows)),
        compute_metrics=lambda prediction: {"rows": float(len(prediction.predictions))})
    trainer.train()
    reference = trainer.controller.state.history[0]["metric"]
    rank = int(os.environ.get("RANK", 0))
    with open(os.path.join(opts.output_dir, f"reference_rank{rank}.json"), "w") as f:
        json.dump({"reference": reference}, f)


if __name__ == "__main__":
    main()
