"""Losses that do not depend on the number of processes or on gradient accumulation.

Given the batch's item count, ``Trainer.compute_loss`` multiplies the loss of a model that takes loss kwargs (a
``forward`` with ``**kwargs``) by the number of processes, and ``training_step`` leaves it undivided by the
accumulation steps: it expects the model to divide by the count of every process's items. Most models pruned here
take ``**kwargs`` and ignore the count (their loss is the batch's mean), so under N processes ``eval_loss`` (and a
decision steered by it), the logged training loss and the gradients would be N times the loss, and K accumulation
steps K times it, clipping at a fraction of the norm asked. Each evaluation batch's loss is its mean instead, as on
one process; in training, the model's loss is probed once (in eval mode, without gradients: does it change with the
count?) and one that ignores the count is treated as transformers treats a model declaring
``accepts_loss_kwargs = False``: a mean, divided by the accumulation steps, not multiplied by the processes. A
``compute_loss_func`` of the user's, and Trainer's label smoother, still get the count, as ``Trainer`` gives it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from transformers import PreTrainedModel

from ..modes import restore_modes, training_modes
from .distributed import failing_processes


class EvalLossMixin:
    """``compute_loss`` without the item count where the loss ignores it: mix in before the ``Trainer`` class."""

    _reads_item_count = None  # whether the model's loss reads num_items_in_batch (probed once a model)
    _declared_loss_kwargs = None  # Trainer's model_accepts_loss_kwargs before a probe changed it

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training and self.compute_loss_func is None:
            num_items_in_batch = None
        elif (model.training and self.model_accepts_loss_kwargs and self.compute_loss_func is None
              and self._loss_ignores_item_count(model, inputs)):
            self._declared_loss_kwargs, self.model_accepts_loss_kwargs = self.model_accepts_loss_kwargs, False
            num_items_in_batch = None
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _reset_item_count_probe(self) -> None:
        """A new model: probe its loss again, from what Trainer read of it."""
        self._reads_item_count = None
        if self._declared_loss_kwargs is not None:
            self.model_accepts_loss_kwargs, self._declared_loss_kwargs = self._declared_loss_kwargs, None

    def _loss_reads_item_count(self, model, inputs) -> bool:
        """Whether the task loss Trainer computes reads ``num_items_in_batch``: its label smoother does; a model's
        loss is probed once, in eval mode without gradients, on the first training batch (forward signatures take
        ``**kwargs`` whether or not they read it)."""
        return self._item_count_probe(model, inputs)[0]

    def _loss_ignores_item_count(self, model, inputs) -> bool:
        """Whether the model's loss was measured not to change with ``num_items_in_batch`` (a model that returns no
        loss from these inputs is left as Trainer treats it)."""
        reads, measured = self._item_count_probe(model, inputs)
        return measured and not reads

    _probe_tries = 0
    PROBE_TRIES = 8  # batches whose loss is not finite (every label ignored) before the probe gives up

    def _item_count_probe(self, model, inputs) -> tuple[bool, bool]:
        """``(reads, measured)``, probed once a model, alike on every process: measured only where every process
        measured a finite loss (a batch whose labels are all ignored gives NaN: the next batch is probed, up to
        ``PROBE_TRIES``), and read where any process saw it read the count."""
        if self._reads_item_count is None:
            reads = measured = False
            if self.label_smoother is not None:  # Trainer's own loss of the logits, normalised by the count
                reads = measured = True
            # without **kwargs the count cannot reach the model's loss; a model that is not a transformers model
            # (a SentenceTransformer, whose trainer computes its loss otherwise) is left as Trainer treats it
            elif self.model_accepts_loss_kwargs and isinstance(self.accelerator.unwrap_model(model), PreTrainedModel):
                unwrapped = self.accelerator.unwrap_model(model)
                modes = training_modes(unwrapped)
                unwrapped.eval()
                try:
                    with torch.no_grad():
                        plain = _loss_of(unwrapped(**inputs))
                        counted = _loss_of(unwrapped(**inputs, num_items_in_batch=torch.tensor(1_000_003)))
                except (TypeError, ValueError):  # inputs its forward does not take as they come: not measured
                    plain = counted = None
                finally:
                    restore_modes(modes)
                returned = plain is not None and counted is not None
                finite = returned and bool(torch.isfinite(plain) and torch.isfinite(counted))
                device = self.args.device
                # every process takes the same branch (one flag apart would gather alone in Trainer's item count)
                if failing_processes(self.accelerator, returned and not finite, device):
                    self._probe_tries += 1
                    if self._probe_tries < self.PROBE_TRIES:
                        return False, False  # not cached: the next batch is probed
                elif not failing_processes(self.accelerator, not returned, device):
                    measured = True
                    reads = bool(failing_processes(self.accelerator, not torch.allclose(plain, counted), device))
            self._reads_item_count = (reads, measured)
        return self._reads_item_count

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


def _loss_of(outputs):
    """The loss in a model's outputs as ``Trainer.compute_loss`` reads it (a ``ModelOutput`` or dict's ``loss``, a
    tuple's first item), or None where there is no scalar loss (no labels given: a tuple then starts with logits)."""
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    elif isinstance(outputs, (tuple, list)) and outputs:
        loss = outputs[0]
    else:
        loss = getattr(outputs, "loss", None)
    return loss.detach().float() if isinstance(loss, torch.Tensor) and loss.dim() == 0 else None
