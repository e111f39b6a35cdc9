"""``pruning_refit``: re-fit the output projections of the groups a pruning step has just cut.

A candidate judged right after masking (``search_then_recover`` with few or no search steps) has had
no training to make up for what it lost. When the candidate's 0/1 masks are in place (at once, or when
a ramp ends), the output projection (weight and bias) of every head / FFN group that lost structures
is re-fitted by least squares (:func:`hf_adaprune.post_training.refit.refit_groups`) so that, on a few
calibration batches from the training data, it reproduces what the accepted model (the masks before this
candidate) computed there. ``pruning_refit_target`` says what is matched, as in post-training pruning:
``"dense_residual"`` (default) the accepted model's residual-stream sum before the LayerNorm that follows
(captured with the accepted masks put back for one pass per batch), so the re-fit also absorbs the drift
the cut groups upstream pass on; ``"same_input"`` the accepted projection of the candidate's own input.
The default follows the accuracy benchmark (``benchmarks/accuracy.py``: MiniLM on SST-2, 2 seeds, with
search_then_recover and no search steps it reached 50% at once in both seeds, -0.88 unseen dev against
the control where ``same_input`` reached 48.5% / 50% at -1.23).
Columns of structures the accepted masks had already removed are zeroed first (they are gated off, so
the model does not change): the re-fit then matches the accepted model, not weights that an earlier
re-fit has already folded into the kept columns.

Processes: the calibration rows are drawn from the training set with a generator seeded by ``--seed``,
so every process re-fits on the same batches; rank 0's re-fitted weights are then broadcast, so the
ranks hold equal weights even where kernels are not bit-for-bit deterministic.

Columns: the calibration rows reach the ``data_collator`` as training rows do: with ``--remove_unused_columns``
(the default) only the columns the model's forward takes, the label columns and ``label_names``; without it every
column, so a collator that reads another one (a class or language column) gets it. Two rows are collated when the
trainer is built, so a collator that fails on them is reported before training, not at the first candidate.

Roll-back: the change each re-fit made is kept until its candidate is decided; a rolled-back candidate
subtracts it (whatever training did meanwhile stays), a kept one forgets it.
"""

from __future__ import annotations

import torch
from torch.utils.data import Subset
from transformers.utils import logging

from ..post_training.calibration import calibration_batches, model_input_names
from ..post_training.calibration_rows import length_mixed_rows, long_row_count, row_lengths
from ..post_training.dense_targets import capture_dense_targets, dense_target_bytes
from ..post_training.prune import SUPPORTED_MODEL_TYPES
from ..post_training.refit import column_mask, refit_groups
from .eval_order import is_map_style

logger = logging.get_logger(__name__)


def refit_problem(model, train_dataset, kinds) -> str | None:
    """Why ``--pruning_refit`` cannot run for this model and data (None when it can)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (f"--pruning_refit supports the encoder families {', '.join(SUPPORTED_MODEL_TYPES)}; got "
                f"{model_type!r}. Train without --pruning_refit.")
    if not set(kinds) & {"heads", "ffn"}:
        return "--pruning_refit re-fits the output projections of heads and FFN neurons: --prune names neither"
    if train_dataset is None or not is_map_style(train_dataset):
        return ("--pruning_refit draws its calibration rows from the train_dataset, which needs a map-style "
                "dataset (indexable, with a length), not an iterable one")
    if len(train_dataset) and "input_ids" not in train_dataset[0]:
        return ("--pruning_refit collates train_dataset rows as the model's inputs: they need input_ids (a "
                f"tokenized dataset); the first row has {sorted(train_dataset[0])}")
    return None


def refit_columns(model, remove_unused_columns: bool = True, label_names=()) -> set[str] | None:
    """The columns of a training row the re-fit hands the collator, as the Trainer does: with
    ``remove_unused_columns`` those ``model.forward`` takes, the label columns and ``label_names``; without, every
    column (None), so a collator that reads a column the model does not take gets it."""
    return model_input_names(model) | set(label_names) if remove_unused_columns else None


def refit_collation_problem(model, dataset, collator, remove_unused_columns: bool = True,
                            label_names=()) -> str | None:
    """Why the collator cannot build the re-fit's batches (None when it can): 2 training rows are collated as
    :func:`refit_calibration_batches` collates them, so a collator that fails on them does so before training, not
    at the first pruning step after the warm-up."""
    if not len(dataset):
        return None
    rows = list(range(min(2, len(dataset))))
    subset = dataset.select(rows) if hasattr(dataset, "select") else Subset(dataset, rows)
    try:
        calibration_batches(subset, collator, 2, refit_columns(model, remove_unused_columns, label_names))
    except Exception as err:  # the user's collator: whatever it raises
        columns = "every column of the rows (--remove_unused_columns false)" if not remove_unused_columns else \
            "the columns the model's forward takes and the label columns (--remove_unused_columns true)"
        return (f"--pruning_refit collates train_dataset rows with the data_collator, handing it {columns}, as "
                f"training does; it failed on the first rows: {type(err).__name__}: {err}. Fix the collator or the "
                "dataset, or train without --pruning_refit")
    return None


def refit_calibration_batches(model, dataset, collator, samples: int, batch_size: int, seed: int,
                              long_share: float = 0.0, remove_unused_columns: bool = True,
                              label_names=()) -> list[dict]:
    """``samples`` rows of ``dataset`` chosen by ``seed`` (the same on every process), collated into batches.

    ``long_share`` > 0: that share of the rows from the longest fifth of the dataset's rows (by their number of
    ``input_ids``), the others from the rest, as :func:`~hf_adaprune.post_training.length_mixed_calibration` draws
    them; a dataset whose longest fifth is too small gives all of it (a warning says so).
    ``remove_unused_columns`` / ``label_names``: the training arguments'; which columns reach the collator
    (:func:`refit_columns`).
    """
    subset = _subset(dataset, refit_rows(dataset, samples, seed, long_share))
    return calibration_batches(subset, collator, batch_size, refit_columns(model, remove_unused_columns, label_names))


def refit_rows(dataset, samples: int, seed: int, long_share: float = 0.0, warn: bool = True) -> list[int]:
    """The indices of the ``samples`` rows :func:`refit_calibration_batches` draws (sorted)."""
    samples = min(samples, len(dataset))
    if not long_share:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        return sorted(order[:samples].tolist())
    lengths = row_lengths(dataset)
    long_rows = long_row_count(len(lengths))
    asked = round(long_share * samples)
    wanted = min(max(asked, samples - (len(lengths) - long_rows)), long_rows)  # what the two parts can give
    if wanted < asked and warn:
        logger.warning("--pruning_refit_long_share %s: the longest fifth of the training set holds %d rows, so "
                       "%d of the %d re-fit rows come from it, not %d", long_share, long_rows, wanted, samples, asked)
    return sorted(length_mixed_rows(lengths, samples, long_share=wanted / samples, seed=seed))


def _subset(dataset, rows: list[int]):
    return dataset.select(rows) if hasattr(dataset, "select") else Subset(dataset, rows)


def refit_target_bytes_bound(model, groups, dataset, samples: int, seed: int, long_share: float = 0.0) -> int:
    """The most memory the dense targets of one candidate's re-fit take (``pruning_refit_target`` other than
    ``same_input``): every head / FFN group cut, on the real tokens of the rows :func:`refit_rows` draws; 4 bytes
    per token and output feature of each group."""
    rows = refit_rows(dataset, samples, seed, long_share, warn=False)
    if not rows:
        return 0
    widths = sum(model.base_model.get_submodule(g.output).out_features for g in groups if g.kind in ("heads", "ffn"))
    return 4 * widths * sum(row_lengths(_subset(dataset, rows)))


@torch.no_grad()
def refit_candidate(model, masks, groups, accepted: dict[str, torch.Tensor], batches, accelerator,
                    ridge: float, target: str = "dense_residual", progress: bool = False,
                    warned: set[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Re-fit the groups whose masks lost structures against ``accepted``; returns each projection's change.

    ``target``: ``"same_input"``, ``"dense_output"`` or ``"dense_residual"``, where "dense" is the model under the
    ``accepted`` masks. ``progress``: a progress bar over the groups re-fitted. ``warned``: as in
    :func:`~hf_adaprune.post_training.refit.refit_groups` (the trainer keeps one set for its run)."""
    base = model.base_model
    cut = [g for g in groups if g.kind in ("heads", "ffn")
           and bool((masks.masks[g.name].cpu() < accepted[g.name] - 0.5).any())]
    projections = {g.output: base.get_submodule(g.output) for g in cut}
    before = {name: _parameters(p) for name, p in projections.items()}
    try:
        for group in cut:  # gated off already: zero, so the target is the accepted model's projection
            weight = projections[group.output].weight
            weight[:, column_mask(group, accepted[group.name]).to(weight.device) < 0.5] = 0
        dense = None
        if cut and target != "same_input":
            candidate = masks.state_dict()
            masks.load_state_dict(accepted)
            logger.info("re-fit target %r: the accepted model's activations take %.1f MiB for %d groups", target,
                        dense_target_bytes(model, cut, batches) / 1024 ** 2, len(cut))
            try:
                dense = capture_dense_targets(model, cut, batches, target)
            finally:
                masks.load_state_dict(candidate)
        refit_groups(model, masks, cut, batches, ridge=ridge, progress=progress, dense=dense, warned=warned)
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            for projection in projections.values():
                for tensor in _parameters(projection, clone=False).values():
                    broadcast(tensor.data, from_process=0)
    except BaseException:  # an error, Ctrl-C mid-way: the projections as they were, not partly re-fitted
        for name, projection in projections.items():
            for key, tensor in _parameters(projection, clone=False).items():
                tensor.copy_(before[name][key])
        raise
    return {name: {key: (value - before[name][key]).cpu() for key, value in _parameters(p).items()}
            for name, p in projections.items()}


@torch.no_grad()
def undo_refit(model, change: dict[str, dict[str, torch.Tensor]]) -> None:
    """Subtract the change :func:`refit_candidate` made (a rolled-back candidate)."""
    base = model.base_model
    for name, parts in change.items():
        parameters = _parameters(base.get_submodule(name), clone=False)
        for key, delta in parts.items():
            parameters[key].sub_(delta.to(parameters[key].device, parameters[key].dtype))


def _parameters(projection, clone: bool = True) -> dict[str, torch.Tensor]:
    parts = {"weight": projection.weight}
    if projection.bias is not None:
        parts["bias"] = projection.bias
    return {key: value.detach().clone() if clone else value for key, value in parts.items()}
