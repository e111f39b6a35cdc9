"""Layer-wise least-squares re-fit of the output projections of pruned groups.

After masking, a group's output projection ``y = W x + b`` reads only the kept
columns of ``x`` (heads' outputs or FFN neurons). The re-fit chooses new kept
columns ``W'_K`` and bias ``b'`` so that, on the calibration tokens,
``W'_K x_K + b'`` matches the dense projection ``W x + b`` of the *same* input in
the least-squares sense, ridge-regularised (Kwon et al. 2022 re-fit the mask
values layer by layer; here the whole kept projection is re-fit, which can also
fold what the removed columns carried into the kept ones and the bias).

Both sides are linear in ``[x, 1]``, so one Gram matrix ``G = sum [x,1]^T [x,1]``
of the projection's (ungated) input per group is all the solve needs:
``(G_KK + lambda D) theta = G_K: [W, b]^T``, with ``D`` the identity on the kept
columns and 0 on the bias. The removed columns stay behind the mask gate and
compaction slices them off, so the compacted model equals the re-fitted masked one.

Groups are re-fit in forward order, each on inputs produced by the already
re-fitted earlier layers; each pass stops right after the group it measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..engine.masks import PruningMasks
from ..families import Group, HeadGroup
from .calibration import device_batch, token_mask

DEFAULT_RIDGE = 1e-3


class _StopForward(Exception):
    """Raised by the Gram hook once it has read its input: the rest of the forward pass is not needed."""


class _GramHook:
    """Forward pre-hook (ahead of the mask gate): adds ``[x, 1]^T [x, 1]`` over the batch's real tokens."""

    def __init__(self, width: int):
        self.gram = torch.zeros(width + 1, width + 1, dtype=torch.float64)
        self.valid: torch.Tensor | None = None
        self.tokens = 0

    def __call__(self, module, args):
        x = args[0].detach()
        flat = x.reshape(-1, x.shape[-1])
        if self.valid is not None and self.valid.numel() == flat.shape[0]:
            flat = flat[self.valid.reshape(-1).to(flat.device)]
        augmented = torch.cat([flat.float(), flat.new_ones(flat.shape[0], 1, dtype=torch.float32)], 1)
        self.gram += (augmented.T @ augmented).double().cpu()  # per batch in float32, summed in float64
        self.tokens += flat.shape[0]
        raise _StopForward


def kept_columns(masks: PruningMasks, group: Group) -> torch.Tensor:
    """Input columns of the group's output projection that its mask keeps."""
    kept = torch.tensor(masks.kept_indices(group.name), dtype=torch.long)
    if isinstance(group, HeadGroup):
        kept = (kept[:, None] * group.head_dim + torch.arange(group.head_dim)[None, :]).flatten()
    return kept


@torch.no_grad()
def solve_refit(weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor, kept: torch.Tensor,
                ridge: float = DEFAULT_RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """New ``(kept columns of the weight, bias)`` minimising ``||W'_K x_K + b' - (W x + b)||^2`` over the Gram's tokens.

    ``ridge`` is relative: lambda = ridge x the mean of ``x_k^2`` over the kept columns, so it does not
    depend on the activations' scale. The bias is not penalised.
    """
    width = weight.shape[1]
    full = torch.cat([weight.double(), _bias_column(bias, weight)], 1)  # [W, b]: out x (width + 1)
    index = torch.cat([kept, torch.tensor([width])])
    lhs = gram[index][:, index].clone()
    if kept.numel():  # the Gram's diagonal is sum(x_k^2): its mean over the kept columns sets the scale
        diagonal = range(kept.numel())
        lhs[diagonal, diagonal] += ridge * max(float(torch.diagonal(lhs)[:-1].mean()), 1e-12)
    rhs = gram[index] @ full.T  # (|K| + 1) x out
    try:
        theta = torch.linalg.solve(lhs, rhs)
    except RuntimeError:  # singular without ridge (e.g. a kept column that is always 0): least norm instead
        theta = torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution
    return theta[:-1].T.to(weight.dtype), theta[-1].to(weight.dtype)


def _run_until(model: nn.Module, batch: dict) -> None:
    try:
        model(**batch)
    except _StopForward:
        pass


@torch.no_grad()
def refit_groups(model: nn.Module, masks: PruningMasks, groups: Sequence[Group], batches: Sequence[dict],
                 ridge: float = DEFAULT_RIDGE, progress: bool = True) -> dict[str, float]:
    """Re-fit, in forward order, the output projection (weight and bias) of every group that lost structures.

    Changes the kept columns and bias of those projections in place; returns the relative output error
    ``||W'_K x_K + b' - (W x + b)|| / ||W x + b - mean||`` per re-fitted group on the calibration tokens.
    """
    base = model.base_model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    errors = {}
    pruned = [g for g in groups if bool((masks.masks[g.name] < 0.5).any())]
    try:
        for group in tqdm(pruned, desc="calibration: re-fit", disable=not progress):
            projection = base.get_submodule(group.output)
            hook = _GramHook(projection.in_features)
            handle = projection.register_forward_pre_hook(hook, prepend=True)  # sees the input before the gate
            try:
                for batch in batches:
                    batch = device_batch(batch, device)
                    hook.valid = token_mask(batch, group)
                    _run_until(model, batch)
            finally:
                handle.remove()
            kept = kept_columns(masks, group)
            weight, bias = solve_refit(projection.weight, projection.bias, hook.gram, kept, ridge)
            errors[group.name] = refit_error(projection.weight, projection.bias, hook.gram, kept, weight, bias)
            projection.weight[:, kept.to(device)] = weight.to(device)
            if projection.bias is not None:
                projection.bias.copy_(bias.to(device))
            elif bias.abs().max() > 0:
                raise ValueError(f"{group.output} has no bias to take the re-fit's constant term")
    finally:
        model.train(was_training)
    return errors


def refit_error(weight, bias, gram, kept, new_weight, new_bias) -> float:
    """Relative error of ``new`` (kept columns) against the full projection, from the Gram matrix alone."""
    width = weight.shape[1]
    full = torch.cat([weight.double(), _bias_column(bias, weight)], 1)
    approx = torch.zeros_like(full)
    approx[:, kept] = new_weight.double()
    approx[:, width] = new_bias.double()
    diff = full - approx
    residual = float(torch.einsum("oi,ij,oj->", diff, gram, diff))
    tokens = float(gram[width, width])
    mean = gram[width] @ full.T / max(tokens, 1.0)  # mean output per dimension
    spread = float(torch.einsum("oi,ij,oj->", full, gram, full)) - tokens * float(mean @ mean)
    return (max(residual, 0.0) / max(spread, 1e-30)) ** 0.5


def _bias_column(bias, weight) -> torch.Tensor:
    if bias is None:
        return torch.zeros(weight.shape[0], 1, dtype=torch.float64)
    return bias.double()[:, None]
