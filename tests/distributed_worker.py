"""Run by tests/test_distributed.py under torchrun (or alone): a tiny pruning run, masks written per rank.

Usage: python tests/distributed_worker.py OUTPUT_DIR PER_DEVICE_BATCH [--break-rank R] [--crash-after STEP]
       [--resume CHECKPOINT] [--schedule gradual|search_then_recover] [--search-steps N] [--ramp-steps N] [--refit]
       [--latency] [--dense-eval] [--metric-fails-on-rank R]

--dense-eval: no pruning run; the recipes' plain DenseTrainer evaluates the model, eval_loss written per rank.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import transformers

# run as a script, so its own folder (tests/) is on sys.path
from conftest import tiny_model
from test_trainer import make_args, toy_dataset

from hf_adaprune import AdaptivePruningTrainer, get_masks


class CrashAfter(transformers.TrainerCallback):
    """Simulates a killed job: exits hard right after the checkpoint of ``step`` is written."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            os._exit(17)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("batch", type=int)
    parser.add_argument("--break-rank", type=int, default=None)
    parser.add_argument("--crash-after", type=int, default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--schedule", default="gradual")
    parser.add_argument("--search-steps", type=int, default=0)
    parser.add_argument("--distill", action="store_true")
    parser.add_argument("--prune", default="both")
    parser.add_argument("--ramp-steps", type=int, default=0)
    parser.add_argument("--refit", action="store_true", help="also writes each rank's weights")
    parser.add_argument("--latency", action="store_true", help="a latency budget; writes each rank's cost table")
    parser.add_argument("--evaluate-first", action="store_true",
                        help="trainer.evaluate() before train(); writes each rank's weights")
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--eval-rows", type=int, default=48)
    parser.add_argument("--dense-eval", action="store_true")
    parser.add_argument("--metric-fails-on-rank", type=int, default=None,
                        help="a compute_metrics that raises on that process only")
    opts = parser.parse_args()
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    distributed = {}
    if "WORLD_SIZE" in os.environ:
        # As a user launches it on a CPU-only machine: no --use_cpu, no --ddp_backend (PruningArguments
        # switches to the CPU and accelerate picks gloo). With GPUs, stay on the CPU with gloo.
        distributed = dict(use_cpu=False) if not torch.cuda.is_available() else dict(ddp_backend="gloo")
    # Gradient clipping stays on (transformers would scale the loss of BERT, which takes loss kwargs and ignores
    # num_items_in_batch, by the number of processes, clipping 2-process gradients at half the norm; the trainer
    # treats such a loss as a mean). A sequential sampler gives both runs the same global batches (the random
    # samplers of one and of several processes are seeded differently).
    args = make_args(opts.output_dir, per_device_train_batch_size=opts.batch, save_strategy="steps", save_steps=12,
                     max_steps=30, compact_at_end=False, max_grad_norm=0.05,
                     train_sampling_strategy="sequential", prune=opts.prune, pruning_schedule=opts.schedule,
                     pruning_search_steps=opts.search_steps, pruning_ramp_steps=opts.ramp_steps,
                     pruning_refit=opts.refit, pruning_metric=opts.metric, **distributed,
                     **(dict(distillation=True, distillation_hidden_weight=0.5) if opts.distill else {}),
                     **(dict(pruning_target_type="latency", pruning_latency_batch_size=2) if opts.latency else {}))
    data = toy_dataset()
    if opts.dense_eval:
        from recipes.skeleton import DenseTrainer

        dense = DenseTrainer(model=model, args=args, eval_dataset=data.select(range(opts.eval_rows)))
        loss = dense.evaluate()["eval_loss"]
        with open(os.path.join(opts.output_dir, f"eval_loss_rank{dense.args.process_index}.json"), "w") as file:
            json.dump(loss, file)
        return
    compute_metrics = None
    if opts.metric_fails_on_rank is not None:
        def compute_metrics(prediction):
            if args.process_index == opts.metric_fails_on_rank:
                raise ValueError("the metric fails on this process")
            return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}
    trainer = AdaptivePruningTrainer(model=model, args=args, train_dataset=data, compute_metrics=compute_metrics,
                                     eval_dataset=data.select(range(opts.eval_rows)))
    rank = trainer.args.process_index
    if opts.break_rank is not None and rank == opts.break_rank:
        import hf_adaprune.trainer.trainer as trainer_module

        original = trainer_module.reduced_scores

        def corrupted(*args, **kwargs):  # a rank whose scores were never reduced: different selection
            scores = original(*args, **kwargs)
            return {name: torch.rand_like(value) for name, value in scores.items()}

        trainer_module.reduced_scores = corrupted
    if opts.crash_after is not None:
        trainer.add_callback(CrashAfter(opts.crash_after))
    if opts.evaluate_first:
        trainer.evaluate()
    teacher = {}  # the run lets its teacher go once train() is over: read at on_train_end
    trainer.add_callback(type("SeeTeacher", (transformers.TrainerCallback,), {
        "on_train_end": lambda self, *a, **kw: teacher.update(model=trainer.distillation_teacher)}))
    trainer.train(resume_from_checkpoint=opts.resume)
    torch.save(get_masks(trainer.model).state_dict(), os.path.join(opts.output_dir, f"masks_rank{rank}.pt"))
    torch.save(trainer.controller.state_dict(), os.path.join(opts.output_dir, f"controller_rank{rank}.pt"))
    torch.save(trainer.importance.scores(trainer.model, trainer.pruning_groups),
               os.path.join(opts.output_dir, f"scores_rank{rank}.pt"))
    if opts.refit or opts.evaluate_first:
        torch.save(trainer.model.state_dict(), os.path.join(opts.output_dir, f"weights_rank{rank}.pt"))
    if opts.latency:
        torch.save(trainer.costs, os.path.join(opts.output_dir, f"costs_rank{rank}.pt"))
    if teacher.get("model") is not None:
        torch.save(teacher["model"].state_dict(), os.path.join(opts.output_dir, f"teacher_rank{rank}.pt"))


if __name__ == "__main__":
    main()
