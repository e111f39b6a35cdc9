"""What the re-fit aims at: the dense model's activations where each group meets the residual stream.

A pruned group's output projection ``y = W x + b`` is added to the residual stream and the sum goes
into a LayerNorm (after the sub-layer in post-LN encoders). Three targets for the re-fit:

* ``"same_input"``: the dense projection of the pruned model's *own* input, ``W x_p + b``. Errors
  the earlier layers made are carried along, never corrected.
* ``"dense_output"``: the dense model's projection output ``W x_d + b`` (a dense copy run on the
  same batches), so the re-fit also pulls the output back towards the dense model's.
* ``"dense_residual"``: the dense model's residual-stream sum minus the pruned model's residual,
  ``W x_d + b + r_d - r_p``: the pruned sum ``y_p + r_p`` then matches the dense LayerNorm input,
  so the re-fit also absorbs the drift the residual stream carries in (Kwon et al. 2022 reconstruct
  each layer's output towards the dense model's).

The dense values depend only on the dense model and the calibration batches, so they are captured
once per :func:`post_training_prune` call and reused by every ratio the controller tries. They are
kept in memory (float32, real tokens only): tokens x hidden size x 4 bytes per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..families import Group
from ..modes import restore_modes, training_modes
from .calibration import device_batch, token_mask, whole_feed_forward

REFIT_TARGETS = ("dense_residual", "dense_output", "same_input")


@dataclass
class DenseTargets:
    """The dense model's values per group and per calibration batch, on the batch's real tokens only.

    ``kind``: one of :data:`REFIT_TARGETS` but ``"same_input"``. ``norms``: for each group, the path
    (under ``base_model``) of the LayerNorm that reads its output plus the residual. ``values``: per
    group, one ``tokens x hidden`` float32 tensor per batch: the dense projection output
    (``"dense_output"``) or the dense LayerNorm input (``"dense_residual"``).
    """

    kind: str
    norms: dict[str, str]
    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)


@torch.no_grad()
def residual_norms(model: nn.Module, groups: Sequence[Group], batch: dict) -> dict[str, str]:
    """For each group, the first LayerNorm (by call order in one forward pass) run after its output projection.

    Found by running the model on ``batch`` rather than from a per-family table: in the post-LN
    encoders post-training pruning supports, that LayerNorm's input is the projection output plus the
    residual (in a pre-LN model it would be the next sub-layer's LayerNorm, whose input is the same sum).
    """
    base = model.base_model
    outputs = {base.get_submodule(g.output): g.output for g in groups}
    norms = {module: name for name, module in base.named_modules() if isinstance(module, nn.LayerNorm)}
    order: list[tuple[str, str]] = []  # ("projection" | "norm", path) in call order
    handles = [module.register_forward_hook(lambda m, a, o, path=path: order.append(("projection", path)))
               for module, path in outputs.items()]
    handles += [module.register_forward_pre_hook(lambda m, a, path=path: order.append(("norm", path)))
                for module, path in norms.items()]
    modes = training_modes(model)
    try:
        model.eval()
        model(**device_batch(batch, next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        restore_modes(modes)
    found = {}
    for position, (kind, path) in enumerate(order):
        if kind == "projection" and path not in found:
            found[path] = next((p for k, p in order[position + 1:] if k == "norm"), None)
    result = {}
    for group in groups:
        norm = found.get(group.output)
        width = base.get_submodule(group.output).out_features
        if norm is None or base.get_submodule(norm).normalized_shape[-1] != width:
            raise ValueError(f"no LayerNorm of width {width} runs after {group.output}: the re-fit target "
                             f"'dense_residual' needs one; use refit_target='dense_output' or 'same_input'")
        result[group.name] = norm
    return result


class _Capture:
    """Hook that keeps its tensor (an input or an output) on the batch's real tokens, as float32 on the CPU."""

    def __init__(self, sink: list, output: bool):
        self.sink, self.output = sink, output
        self.valid: torch.Tensor | None = None

    def __call__(self, module, args, result=None):
        value = (result if self.output else args[0]).detach()
        self.sink.append(real_tokens(value, self.valid).float().cpu())


def real_tokens(value: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``value`` (batch x tokens x width) flattened to the rows ``valid`` marks (all rows if None)."""
    flat = value.reshape(-1, value.shape[-1])
    if valid is not None and valid.numel() == flat.shape[0]:
        flat = flat[valid.reshape(-1).to(flat.device)]
    return flat


DENSE_TARGETS_WARNING_BYTES = 2 * 1024 ** 3  # re-fit targets above this are named in a warning, not the info log


def dense_target_bytes(model: nn.Module, groups: Sequence[Group], batches: Sequence[dict]) -> int:
    """The memory :func:`capture_dense_targets` will hold on ``batches``: 4 bytes per real token and output
    feature of each group (a batch without a token mask counts every position of its ``input_ids``)."""
    base, total = model.base_model, 0
    for group in groups:
        width = base.get_submodule(group.output).out_features
        for batch in batches:
            mask = token_mask(batch, group)
            total += width * (int(mask.sum()) if mask is not None else batch["input_ids"].numel())
    return 4 * total


@torch.no_grad()
def capture_dense_targets(model: nn.Module, groups: Sequence[Group], batches: Sequence[dict],
                          kind: str = "dense_residual") -> DenseTargets:
    """The dense ``model``'s values the re-fit aims at, one forward pass per batch (call before any mask)."""
    if kind not in REFIT_TARGETS or kind == "same_input":
        raise ValueError(f"dense targets are 'dense_residual' or 'dense_output', got {kind!r}")
    with whole_feed_forward(model):  # the hooks read one FFN call per batch
        base = model.base_model
        device = next(model.parameters()).device
        targets = DenseTargets(kind=kind, norms=residual_norms(model, groups, batches[0]) if batches else {})
        captures, handles = {}, []
        for group in groups:
            targets.values[group.name] = []
            capture = captures[group.name] = _Capture(targets.values[group.name], output=kind == "dense_output")
            if kind == "dense_output":
                handles.append(base.get_submodule(group.output).register_forward_hook(capture))
            else:
                handles.append(base.get_submodule(targets.norms[group.name]).register_forward_pre_hook(capture))
        modes = training_modes(model)
        try:
            model.eval()
            for batch in batches:
                batch = device_batch(batch, device)
                for group in groups:
                    captures[group.name].valid = token_mask(batch, group)
                model(**batch)
        finally:
            for handle in handles:
                handle.remove()
            restore_modes(modes)
        return targets
