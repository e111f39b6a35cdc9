"""An evaluation loss that does not depend on the number of processes.

Given the batch's item count, ``Trainer.compute_loss`` multiplies the loss of a model that takes loss kwargs by the
number of processes (it expects the model to divide by the count of every process's items); the models pruned here
ignore the count, so under N processes ``eval_loss`` (and a decision steered by it) would be N times the loss. Each
evaluation batch's loss is its mean instead, as on one process. A ``compute_loss_func`` of the user's still gets the
count, as ``Trainer`` gives it.
"""

from __future__ import annotations


class EvalLossMixin:
    """``compute_loss`` without the item count in evaluation: mix in before the ``Trainer`` class."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training and self.compute_loss_func is None:
            num_items_in_batch = None
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
