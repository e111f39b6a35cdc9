"""The callback through which the training loop drives pruning; it calls only the trainer's public pruning methods."""

from __future__ import annotations

import os

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


class PruningCallback(TrainerCallback):
    """Begin (checks), step begin (with no warm-up the reference; the next candidate), step end (reference /
    decide), save (``pruning_state.pt``) and finish (compact, report)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.begin_pruning()

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.start_step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.pruning_step(state.global_step)

    def on_save(self, args, state, control, **kwargs):
        # The Trainer has just written checkpoint-<global_step>; the pruning state goes next to it.
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            self.trainer.save_pruning_state(folder)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.finish_pruning()
