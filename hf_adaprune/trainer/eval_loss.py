"""An evaluation loss that does not depend on the number of processes.

Given the batch's item count, ``Trainer.compute_loss`` multiplies the loss of a model that takes loss kwargs by the
number of processes (it expects the model to divide by the count of every process's items); the models pruned here
ignore the count, so under N processes ``eval_loss`` (and a decision steered by it) would be N times the loss. Each
evaluation batch's loss is its mean instead, as on one process. A ``compute_loss_func`` of the user's still gets the
count, as ``Trainer`` gives it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping


class EvalLossMixin:
    """``compute_loss`` without the item count in evaluation: mix in before the ``Trainer`` class."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training and self.compute_loss_func is None:
            num_items_in_batch = None
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    @contextlib.contextmanager
    def loss_of_every_row(self, dataset):
        """Rows that do not fill the last batch of every process are padded with repeats of the first ones (the
        last global batch of world size x batch size rows is split over the processes, and the short ones are
        filled up); a batch's loss is its mean, entered once per row, and gathering drops the repeats' entries but
        not their share of their batch's mean. One row per batch then, so that the loss of ``dataset`` is the mean
        over its rows (slower: only on several processes with such a row count): the pruning decisions' loss and
        the recipes' test loss. A dict of eval sets: if any of them has such a count."""
        parts = list(dataset.values()) if isinstance(dataset, Mapping) else [dataset]
        rows_per_step = self.args.world_size * self.args.per_device_eval_batch_size
        if self.args.world_size == 1 or not any(hasattr(part, "__len__") and len(part) % rows_per_step
                                                for part in parts):
            yield
            return
        size, self.args.per_device_eval_batch_size = self.args.per_device_eval_batch_size, 1
        try:
            yield
        finally:
            self.args.per_device_eval_batch_size = size

    @contextlib.contextmanager
    def reading_every_row(self):
        """Loaders that read every row of the set they are given: ``dataloader_drop_last`` (meant for training
        batches) off, and ``dataloader_persistent_workers`` off (with it, ``get_eval_dataloader`` hands back the
        loader it cached for another set, and caches this one in its place)."""
        args = self.args
        saved = args.dataloader_drop_last, args.dataloader_persistent_workers
        args.dataloader_drop_last = args.dataloader_persistent_workers = False
        try:
            yield
        finally:
            args.dataloader_drop_last, args.dataloader_persistent_workers = saved
