"""Layer-wise least-squares re-fit of the output projections of pruned groups.

After masking, a group's output projection ``y = W x + b`` reads only the kept
columns of ``x`` (heads' outputs or FFN neurons). The re-fit chooses new kept
columns ``W'_K`` and bias ``b'`` so that, on the calibration tokens,
``W'_K x_K + b'`` matches a target ``t`` in the least-squares sense, ridge-regularised
(Kwon et al. 2022 re-fit the mask values layer by layer; here the whole kept projection
is re-fit, which can also fold what the removed columns carried into the kept ones and
the bias). The target (:mod:`dense_targets`) is the dense projection of the same input
``W x + b`` by default, or, given the dense model's activations, its projection output or
its residual-stream sum, so that errors of earlier layers are corrected too.

Everything the solve needs is linear in ``[x, 1]``: the Gram matrix ``G = sum [x,1]^T [x,1]``
of the projection's (ungated) input and the cross term ``C = sum [x,1]^T t`` per group
(for the same-input target ``C = G [W, b]^T``):
``(G_KK + lambda D) theta = C_K:``, with ``D`` the identity on the kept columns and 0 on
the bias. The removed columns stay behind the mask gate and compaction slices them off,
so the compacted model equals the re-fitted masked one.

Groups are re-fit in forward order, each on inputs produced by the already re-fitted
earlier layers; each pass stops right after the group it measures, and the layers already finished are
replayed from their kept outputs (:mod:`layer_replay`) rather than run again. A group whose calibration
tokens are too few for its kept columns (:func:`refit_token_floor`) is not re-fit: it keeps its
weights, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils.logging import tqdm  # off under disable_progress_bar()

from ..engine.masks import PruningMasks
from ..families import Group, HeadGroup
from ..modes import restore_modes, training_modes
from .calibration import device_batch, token_mask, whole_feed_forward
from .dense_targets import DenseTargets, real_tokens
from .layer_replay import FinishedLayers

logger = logging.getLogger(__name__)

DEFAULT_RIDGE = 1e-3
TOKENS_PER_UNKNOWN = 2  # see refit_token_floor


def refit_token_floor(columns: int) -> int:
    """The fewest real calibration tokens a re-fit of ``columns`` kept input columns (plus the bias) is made on.

    Each output row is a least-squares fit of ``p = columns + 1`` unknowns to ``n`` tokens. With ``n < p`` the
    system is underdetermined: it interpolates the calibration tokens (a near-zero error on them) and the
    small ridge alone picks the solution, which can move the outputs of other tokens arbitrarily far. With
    ``n`` barely above ``p`` it is still fitted mostly to noise: the in-sample residual of least squares is
    ``(n - p) / n`` of the noise and the error on new tokens about ``n / (n - p)`` of it, so the error reported
    (measured on the same tokens) hides the damage. ``n >= 2 p`` keeps as many residual degrees of freedom as
    unknowns: the in-sample error is at least half the noise, the held-out one about twice it at most.
    Real runs are far above it (2,048 phrases of about 10 tokens against 2 x 1,537 for MiniLM's FFN).
    """
    return TOKENS_PER_UNKNOWN * (columns + 1)


class _StopForward(Exception):
    """Raised once a pass has read what it needs: the rest of the forward pass is not needed."""


@dataclass
class LeastSquares:
    """Sufficient statistics of one group's re-fit over the calibration tokens (float64, on the CPU)."""

    gram: torch.Tensor  # sum [x,1]^T [x,1]: (width + 1)^2
    cross: torch.Tensor  # sum [x,1]^T t: (width + 1) x out
    target_square: float  # sum ||t||^2
    target_sum: torch.Tensor  # sum t: out

    @classmethod
    def same_input(cls, gram: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> "LeastSquares":
        """Target ``W x + b`` on the Gram's own inputs: every statistic follows from the Gram."""
        full = _full(weight, bias)
        width = weight.shape[1]
        return cls(gram, gram @ full.T, float(torch.einsum("oi,ij,oj->", full, gram, full)), gram[width] @ full.T)


class _Statistics:
    """Hooks of one pass: the projection's (ungated) input, its output, and the LayerNorm input after it.

    ``dense``: the group's dense values per batch (None: the same-input target, the Gram alone).
    """

    def __init__(self, width: int, out: int, dense: DenseTargets | None, name: str):
        self.gram = torch.zeros(width + 1, width + 1, dtype=torch.float64)
        self.cross = torch.zeros(width + 1, out, dtype=torch.float64)
        self.target_square, self.target_sum = 0.0, torch.zeros(out, dtype=torch.float64)
        self.dense = None if dense is None else dense.values[name]
        self.kind = None if dense is None else dense.kind
        self.valid: torch.Tensor | None = None
        self.batch = 0
        self.augmented = self.output = None

    def projection_input(self, module, args):
        flat = real_tokens(args[0].detach(), self.valid).float()
        self.augmented = torch.cat([flat, flat.new_ones(flat.shape[0], 1)], 1)
        self.gram += (self.augmented.T @ self.augmented).double().cpu()  # per batch in float32, summed in float64
        if self.dense is None:
            raise _StopForward

    def projection_output(self, module, args, output):
        self.output = real_tokens(output.detach(), self.valid).float()
        if self.kind == "dense_output":
            self._add_target(self.dense[self.batch].to(self.output.device))

    def norm_input(self, module, args):
        # dense sum minus the pruned residual (its sum minus its projection output): y_p + r_p -> dense sum
        pruned_sum = real_tokens(args[0].detach(), self.valid).float()
        self._add_target(self.dense[self.batch].to(pruned_sum.device) - pruned_sum + self.output)

    def _add_target(self, target: torch.Tensor) -> None:
        self.cross += (self.augmented.T @ target).double().cpu()
        self.target_square += float(target.double().square().sum())
        self.target_sum += target.double().sum(0).cpu()
        raise _StopForward

    def problem(self, weight, bias) -> LeastSquares:
        if self.dense is None:
            return LeastSquares.same_input(self.gram, weight, bias)
        return LeastSquares(self.gram, self.cross, self.target_square, self.target_sum)


def column_mask(group: Group, mask: torch.Tensor) -> torch.Tensor:
    """A structure mask spread over the output projection's input columns (a head covers head_dim columns)."""
    return mask.repeat_interleave(group.columns_per_structure) if isinstance(group, HeadGroup) else mask


def kept_columns(masks: PruningMasks, group: Group) -> torch.Tensor:
    """Input columns of the group's output projection that its mask keeps."""
    return torch.nonzero(column_mask(group, masks.masks[group.name].detach().cpu()) >= 0.5).flatten()


@torch.no_grad()
def solve_refit(weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor, kept: torch.Tensor,
                ridge: float = DEFAULT_RIDGE, cross: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """New ``(kept columns of the weight, bias)`` minimising ``||W'_K x_K + b' - t||^2`` over the Gram's tokens.

    ``cross``: ``sum [x,1]^T t``; None: the target is the full projection of the same input,
    ``t = W x + b``. ``ridge`` is relative: lambda = ridge x the mean of ``x_k^2`` over the kept
    columns, so it does not depend on the activations' scale. The bias is not penalised. A projection
    without a bias (ModernBERT's) is fitted without the constant term, and gets a zero one back.
    """
    width = weight.shape[1]
    if cross is None:
        cross = gram @ _full(weight, bias).T
    constant = bias is not None
    index = torch.cat([kept, torch.tensor([width])]) if constant else kept
    if index.numel() == 0:  # no kept column and no bias: nothing to fit
        # on the CPU, where every other fit comes from (the Gram's device)
        return torch.zeros(weight.shape[0], 0, dtype=weight.dtype), torch.zeros(weight.shape[0], dtype=weight.dtype)
    lhs = gram[index][:, index].clone()
    if kept.numel():  # the Gram's diagonal is sum(x_k^2): its mean over the kept columns sets the scale
        diagonal = range(kept.numel())
        lhs[diagonal, diagonal] += ridge * max(float(torch.diagonal(lhs)[:kept.numel()].mean()), 1e-12)
    rhs = cross[index]  # (|K| (+ 1)) x out
    try:
        theta = torch.linalg.solve(lhs, rhs)
    except RuntimeError:  # singular without ridge (e.g. a kept column that is always 0): least norm instead
        theta = torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution
    if not constant:
        return theta.T.to(weight.dtype), torch.zeros(weight.shape[0], dtype=weight.dtype)
    return theta[:-1].T.to(weight.dtype), theta[-1].to(weight.dtype)


def _run_until(model: nn.Module, batch: dict) -> None:
    try:
        model(**batch)
    except _StopForward:
        pass


@torch.no_grad()
def refit_groups(model: nn.Module, masks: PruningMasks, groups: Sequence[Group], batches: Sequence[dict],
                 ridge: float = DEFAULT_RIDGE, progress: bool = True, dense: DenseTargets | None = None,
                 skipped: dict[str, dict[str, int]] | None = None,
                 warned: set[str] | None = None) -> dict[str, float]:
    """Re-fit, in forward order, the output projection (weight and bias) of every group that lost structures.

    ``dense``: the dense model's values on ``batches`` (:func:`capture_dense_targets`) to aim at; None:
    the dense projection of the pruned model's own input. Changes the kept columns and bias of those
    projections in place; returns the relative error ``||W'_K x_K + b' - t|| / ||t - mean(t)||`` per
    re-fitted group on the calibration tokens (the tokens it was fitted on: optimistic, see
    :func:`refit_token_floor`). A group with fewer real tokens than :func:`refit_token_floor` of its kept
    columns keeps its weights, is left out of the errors, is warned about and, given ``skipped``, recorded
    there as ``{group: {"tokens", "kept_columns", "needed"}}``. ``warned``: the groups a search has already warned
    about (one set for all its re-fits, so each group is named once, not once per ratio tried); updated.
    """
    with whole_feed_forward(model):  # the hooks read one FFN call per batch
        base = model.base_model
        device = next(model.parameters()).device
        modes = training_modes(model)
        model.eval()
        errors = {}
        pruned = [g for g in groups if bool((masks.masks[g.name] < 0.5).any())]
        finished = FinishedLayers(base)
        try:
            for group in tqdm(pruned, desc="calibration: re-fit", disable=not progress):
                projection = base.get_submodule(group.output)
                statistics = _Statistics(projection.in_features, projection.out_features, dense, group.name)
                # prepended: the Gram sees the input before the mask gate
                handles = [projection.register_forward_pre_hook(statistics.projection_input, prepend=True)]
                if dense is not None:
                    handles.append(projection.register_forward_hook(statistics.projection_output))
                    if dense.kind == "dense_residual":
                        norm = base.get_submodule(dense.norms[group.name])
                        handles.append(norm.register_forward_pre_hook(statistics.norm_input))
                try:
                    for number, batch in enumerate(batches):
                        batch = device_batch(batch, device)
                        statistics.valid, statistics.batch = token_mask(batch, group), number
                        with finished.replaying(group, number):
                            _run_until(model, batch)
                finally:
                    for handle in handles:
                        handle.remove()
                problem = statistics.problem(projection.weight, projection.bias)
                kept = kept_columns(masks, group)
                tokens, needed = round(float(problem.gram[-1, -1])), refit_token_floor(kept.numel())  # sum of 1 * 1
                if tokens < needed:
                    if warned is None or group.name not in warned:
                        logger.warning("re-fit of %s: %d calibration tokens for %d kept columns (plus the bias) "
                                       "are fewer than the %d a fair fit needs; it keeps its weights (pass more "
                                       "calibration rows or refit_samples, or refit=False)", group.name, tokens,
                                       kept.numel(), needed)
                    if warned is not None:
                        warned.add(group.name)
                    if skipped is not None:
                        skipped[group.name] = {"tokens": tokens, "kept_columns": kept.numel(), "needed": needed}
                    continue
                weight, bias = solve_refit(projection.weight, projection.bias, problem.gram, kept, ridge, problem.cross)
                errors[group.name] = refit_error(problem, kept, weight, bias)
                projection.weight[:, kept.to(device)] = weight.to(device)
                if projection.bias is not None:  # (one without a bias was fitted without the constant term)
                    projection.bias.copy_(bias.to(device))
        finally:
            restore_modes(modes)
        return errors


def refit_error(problem: LeastSquares, kept: torch.Tensor, new_weight: torch.Tensor, new_bias: torch.Tensor) -> float:
    """Relative error of ``W'_K x_K + b'`` against the target, from the sufficient statistics alone."""
    width = problem.gram.shape[0] - 1
    index = torch.cat([kept, torch.tensor([width])])
    theta = torch.cat([new_weight.double().T, new_bias.double()[None, :]], 0)  # (|K| + 1) x out
    fitted_square = float(torch.einsum("io,ij,jo->", theta, problem.gram[index][:, index], theta))
    residual = fitted_square - 2 * float((theta * problem.cross[index]).sum()) + problem.target_square
    tokens = float(problem.gram[width, width])
    spread = problem.target_square - float(problem.target_sum @ problem.target_sum) / max(tokens, 1.0)
    return (max(residual, 0.0) / max(spread, 1e-30)) ** 0.5


def _full(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``[W, b]`` in float64: out x (width + 1)."""
    if bias is None:
        column = torch.zeros(weight.shape[0], 1, dtype=torch.float64)
    else:
        column = bias.detach().double().cpu()[:, None]
    return torch.cat([weight.detach().double().cpu(), column], 1)
