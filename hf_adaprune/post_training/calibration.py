"""Calibration data and importance scores for pruning without training.

Scores come from per-example *mask gradients*: a probe multiplies the input of
every group's output projection by a mask variable of ones, one per example and
structure, and one backward pass of the summed loss gives ``dL_n/dm_i`` for every
example ``n`` and structure ``i``. At ``m = 1`` this equals ``sum(grad * w)``
over the structure's columns of the output projection for that example alone
(Kwon et al. 2022), so per-example statistics cost one forward and one backward
pass per batch, with no weight gradients:

* ``taylor``: ``mean_n |dL_n/dm_i|`` — the first-order estimate of the loss change;
* ``fisher``: ``mean_n (dL_n/dm_i)^2`` — the diagonal Fisher information of the mask,
  the second-order estimate Kwon et al. use.

The model's weights are never changed and no optimizer is involved.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable

import torch
from torch import nn
from transformers.utils.logging import tqdm  # off under disable_progress_bar()

from ..families import Group, HeadGroup
from ..engine.masks import structure_count
from ..modes import restore_modes, training_modes

SCORE_KINDS = ("fisher", "taylor")
LABEL_KEYS = ("labels", "label", "label_ids")


def no_loss_message(model: nn.Module, batch: dict) -> str:
    """Why a forward returned no loss: the label arguments of its ``forward`` the batch lacks (BertForPreTraining
    computes its loss only with both ``labels`` and ``next_sentence_label``)."""
    wanted = [name for name in inspect.signature(model.forward).parameters if "label" in name]
    lacking = [name for name in wanted if batch.get(name) is None]
    if lacking and len(lacking) < len(wanted):
        return (f"the model returned no loss on a calibration batch: {type(model).__name__} computes its loss from "
                f"{', '.join(wanted)}, and the batch lacks {', '.join(lacking)}")
    return "the model returned no loss on a calibration batch: the examples need labels"


def model_input_names(model: nn.Module) -> set[str]:
    """The keyword arguments ``model.forward`` accepts, plus the label keys a collator produces."""
    return set(inspect.signature(model.forward).parameters) | set(LABEL_KEYS)


@contextlib.contextmanager
def whole_feed_forward(model: nn.Module):
    """Run a chunked FFN (``config.chunk_size_feed_forward > 0``: transformers calls it once per chunk of positions,
    the same result) in one call per batch, as the probes and re-fit hooks here read it; restored afterwards."""
    chunked = [(module, module.chunk_size_feed_forward) for module in model.modules()
               if getattr(module, "chunk_size_feed_forward", 0)]
    for module, _ in chunked:
        module.chunk_size_feed_forward = 0
    try:
        yield
    finally:
        for module, size in chunked:
            module.chunk_size_feed_forward = size


def calibration_batches(dataset, collator, batch_size: int, accepted: set[str] | None) -> list[dict]:
    """``dataset`` cut into collated batches, shortest examples together (less padding, same statistics).

    Columns the model does not take (raw text, ids) are dropped before collation, and so are the label columns
    after a row's first (:func:`label_key`, the one the checks read): a collator would otherwise pick its own.
    ``accepted=None``: every row goes to the collator as it is, as the Trainer hands rows over under
    ``remove_unused_columns=False`` (a collator that reads a column the model does not take, a class or a language
    column, gets it). Boolean labels are class ids 0 / 1.
    """
    rows = dataset_rows(dataset)
    lengths = [len(example["input_ids"]) if "input_ids" in example else 0 for example in rows]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches = []
    for start in range(0, len(order), batch_size):
        batch = collator([model_columns(rows[i], accepted) for i in order[start:start + batch_size]])
        for key in LABEL_KEYS[1:]:  # as the Trainer's collators do: a model's forward takes labels= only
            if key in batch and "labels" not in batch:
                batch["labels"] = batch.pop(key)
        if isinstance(batch.get("labels"), torch.Tensor) and batch["labels"].dtype == torch.bool:
            batch["labels"] = batch["labels"].long()  # the losses take class ids as integers
        batches.append(batch)
    return batches


def label_key(row) -> str | None:
    """The label column a row is read by: the first of LABEL_KEYS it has (None: it has none)."""
    return next((key for key in LABEL_KEYS if key in row), None)


def model_columns(row, accepted: set[str] | None) -> dict:
    """The columns of ``row`` the model takes, with its one label column (:func:`label_key`); ``accepted=None``:
    ``row`` as it is."""
    if accepted is None:
        return row
    label = label_key(row)
    return {k: v for k, v in row.items() if k in accepted and (k not in LABEL_KEYS or k == label)}


def dataset_rows(dataset) -> list:
    """Every row of a map-style ``dataset``, by index (a list or tuple of rows as it is)."""
    if isinstance(dataset, (list, tuple)):
        return dataset
    return [dataset[i] for i in range(len(dataset))]


def device_batch(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def token_mask(batch: dict, group: Group) -> torch.Tensor | None:
    """Which positions of the group's input are real tokens (None: all are).

    Encoder groups read the encoder's ``attention_mask``; decoder groups (decoder
    self-attention, cross-attention, decoder FFN) the positions with a label.
    """
    if group.role in ("encoder_self", "encoder"):
        mask = batch.get("attention_mask")
    else:
        mask = batch.get("decoder_attention_mask")
        if mask is None and batch.get("labels") is not None:
            mask = batch["labels"] != -100
    return None if mask is None else mask.bool()


class _MaskProbe:
    """Forward pre-hook: gates the projection input with per-example mask variables of ones."""

    def __init__(self, count: int, repeat: int):
        self.count, self.repeat = count, repeat
        self.variable: torch.Tensor | None = None

    def __call__(self, module, args):
        x = args[0]
        self.variable = torch.ones(x.shape[0], self.count, device=x.device, dtype=x.dtype, requires_grad=True)
        gate = self.variable.repeat_interleave(self.repeat, dim=1)
        gate = gate.reshape(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])
        return (x * gate,) + tuple(args[1:])


def mask_gradient_scores(model: nn.Module, groups: list[Group], batches: Iterable[dict],
                         progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """``{"taylor": {group: scores}, "fisher": {group: scores}}`` from per-example mask gradients.

    The model runs in eval mode (no dropout), its parameters are not asked for
    gradients and are left as they were.
    """
    base = model.base_model
    device = next(model.parameters()).device
    probes, handles = {}, []
    for group in groups:
        repeat = group.columns_per_structure if isinstance(group, HeadGroup) else 1
        probes[group.name] = _MaskProbe(structure_count(base, group), repeat)
        handles.append(base.get_submodule(group.output).register_forward_pre_hook(probes[group.name]))
    modes = training_modes(model)
    requires = [(p, p.requires_grad) for p in model.parameters()]
    sums = {kind: {g.name: torch.zeros(probes[g.name].count, dtype=torch.float64) for g in groups}
            for kind in SCORE_KINDS}
    seen = 0
    with whole_feed_forward(model):
        try:
            model.eval()
            for p, _ in requires:
                p.requires_grad_(False)
            for batch in tqdm(list(batches), desc="calibration: scores", disable=not progress):
                batch = device_batch(batch, device)
                outputs = model(**batch, return_dict=True)  # also under config.return_dict=False
                if outputs.loss is None:
                    raise ValueError(no_loss_message(model, batch))
                size = next(iter(probes.values())).variable.shape[0]
                # the models' losses are means over the batch: times its size, each example's gradient is its own
                names = [g.name for g in groups]
                grads = torch.autograd.grad(outputs.loss * size, [probes[n].variable for n in names])
                for name, grad in zip(names, grads):
                    grad = grad.detach().double().cpu()
                    sums["taylor"][name] += grad.abs().sum(0)
                    sums["fisher"][name] += grad.square().sum(0)
                seen += size
        finally:
            for handle in handles:
                handle.remove()
            for p, flag in requires:
                p.requires_grad_(flag)
            restore_modes(modes)
    return {kind: {name: (total / max(seen, 1)).float() for name, total in per_group.items()}
            for kind, per_group in sums.items()}
