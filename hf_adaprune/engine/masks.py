"""Head and neuron masks, applied as gates on the input of each output projection.

Masking leaves every trainable weight untouched: a gate zeroes the pruned heads'
slice of the attention output (or the pruned neurons of the FFN) right before
the projection that mixes them back into the hidden size. Compaction later
removes exactly those slices, so masked and compacted models agree.
"""

from __future__ import annotations

import torch
from torch import nn

from ..families import Group, HeadGroup, find_groups
from ..layout import install_shared_bias

_ATTR = "_adaprune_masks"


def structure_count(base_model: nn.Module, group: Group) -> int:
    """Number of heads (or neurons) the group has now."""
    rows = base_model.get_submodule(group.row_linears[0]).out_features
    return rows // group.head_dim if isinstance(group, HeadGroup) else rows


def _prepare_core(base_model: nn.Module, group: Group) -> None:
    """Give an attention core whose stock forward bypasses its output projection the family's forward."""
    forward = getattr(group, "shared_bias", None)
    if forward is None or not forward.gates_need_wrapper:
        return
    core = base_model.get_submodule(group.core)
    if not isinstance(core, forward):
        count = structure_count(base_model, group)
        install_shared_bias(core, forward, range(count), count)


class _Gate:
    """Forward pre-hook multiplying the projection input by the group's mask.

    It always multiplies (by ones while nothing is pruned): a branch on the mask's
    values would break a ``torch.compile`` graph at every hook. The mask tensor is
    updated in place (:meth:`PruningMasks.set`), so a compiled graph sees new
    values without recompiling.
    """

    def __init__(self, masks: "PruningMasks", name: str, repeat: int):
        self.masks, self.name, self.repeat = masks, name, repeat

    def __call__(self, module, args):
        x = args[0]
        gate = self.masks.masks[self.name].to(dtype=x.dtype)
        if self.repeat > 1:
            gate = gate.repeat_interleave(self.repeat)
        return (x * gate,) + tuple(args[1:])


class PruningMasks:
    """The masks of one model: a 0/1 float tensor per group, 1 = kept."""

    def __init__(self, model: nn.Module, groups: list[Group] | None = None):
        self.groups: dict[str, Group] = {g.name: g for g in (groups if groups is not None else find_groups(model))}
        base = model.base_model
        device = next(model.parameters()).device
        self.masks: dict[str, torch.Tensor] = {
            name: torch.ones(structure_count(base, g), device=device) for name, g in self.groups.items()
        }
        self._handles = []
        for g in self.groups.values():
            _prepare_core(base, g)
        for name, g in self.groups.items():
            repeat = g.head_dim if isinstance(g, HeadGroup) else 1
            out = base.get_submodule(g.output)
            self._handles.append(out.register_forward_pre_hook(_Gate(self, name, repeat)))

    # -- reading -------------------------------------------------------------------------------
    def kept_indices(self, name: str) -> list[int]:
        return torch.nonzero(self.masks[name] > 0.5).flatten().tolist()

    def of_kind(self, kind: str) -> list[str]:
        return [n for n, g in self.groups.items() if g.kind == kind]

    def pruned_fraction(self, kind: str) -> float:
        names = self.of_kind(kind)
        total = sum(self.masks[n].numel() for n in names)
        kept = sum(float(self.masks[n].sum()) for n in names)
        return 0.0 if total == 0 else 1.0 - kept / total

    def summary(self) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in self.masks.items()}

    # -- writing -------------------------------------------------------------------------------
    def set(self, name: str, mask: torch.Tensor) -> None:
        current = self.masks[name]
        if mask.shape != current.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, expected {tuple(current.shape)}")
        with torch.no_grad():
            current.copy_(mask)  # in place: compiled graphs read the same tensor

    def update(self, masks: dict[str, torch.Tensor]) -> None:
        for name, mask in masks.items():
            self.set(name, mask)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the masks (later updates do not change them)."""
        return {name: mask.detach().cpu().clone() for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unknown = set(state) - set(self.masks)
        if unknown:
            raise KeyError(f"masks for unknown groups: {sorted(unknown)}")
        self.update(state)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def attach_masks(model: nn.Module) -> PruningMasks:
    """Gate ``model``'s heads and neurons (all kept); returns the existing masks if already attached."""
    masks = getattr(model, _ATTR, None)
    if masks is None:
        masks = PruningMasks(model)
        model.__dict__[_ATTR] = masks
    return masks


def get_masks(model: nn.Module) -> PruningMasks | None:
    return getattr(model, _ATTR, None)


def detach_masks(model: nn.Module) -> None:
    masks = model.__dict__.pop(_ATTR, None)
    if masks is not None:
        masks.remove()
