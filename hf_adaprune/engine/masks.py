"""Head and neuron masks, applied as gates on the input of each output projection.

Masking leaves every trainable weight untouched: a gate zeroes the pruned heads'
slice of the attention output (or the pruned neurons of the FFN) right before
the projection that mixes them back into the hidden size. Compaction later
removes exactly those slices, so masked and compacted models agree.

A whole layer's gate ``g`` sits on its output: ``g * layer(x) + (1 - g) * x``, so
a layer masked to 0 passes its input through unchanged, as the model without the
layer does. Its importance is the first-order Taylor estimate of the loss change
when ``g`` goes from 1 to 0, ``dL/dg = <dL/d output, layer(x) - x>``, read in the
ordinary backward pass by a hook on the gated output (no extra pass).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..families import Group, HeadGroup, LayerGroup, find_groups, find_layer_groups, get_adapter
from ..families.registry import check_transformers_model
from ..layout import install_shared_bias
from .selection import check_group_objects

logger = logging.getLogger(__name__)

_ATTR = "_adaprune_masks"


def structure_count(base_model: nn.Module, group: Group) -> int:
    """Number of heads (or neurons, or layers) the group has now."""
    if isinstance(group, LayerGroup):
        return len(base_model.get_submodule(group.name))
    first = group.row_linears[0]
    rows = base_model.get_submodule(first).out_features // group.row_parts
    return rows // group.rows_per_structure(first) if isinstance(group, HeadGroup) else rows


def _prepare_core(base_model: nn.Module, group: Group) -> None:
    """Give an attention core whose stock forward bypasses its output projection the family's forward."""
    forward = getattr(group, "shared_bias", None)
    if forward is None or not forward.gates_need_wrapper:
        return
    core = base_model.get_submodule(group.core)
    if getattr(core, "adaprune_kind", None) == forward.adaprune_kind:
        # pruned before (its class may come from a folder's modeling_adaprune.py, a copy of this forward): keep
        # its heads of the shared bias, with this copy of the forward
        if not isinstance(core, forward):
            install_shared_bias(core, forward, core.adaprune_kept_heads, core.adaprune_num_heads)
        return
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
        gate = self.masks.masks[self.name].to(device=x.device, dtype=x.dtype)  # no copy on the same device
        if self.repeat > 1:
            gate = gate.repeat_interleave(self.repeat)
        return (x * gate,) + tuple(args[1:])


class _LayerGate:
    """Forward hook on one layer: its output becomes ``g * output + (1 - g) * input`` (exact at g = 0 and 1).

    While gradients flow, a hook on the gated output adds ``<dL/d output, output - input>`` (dL/dg) to the
    masks' per-layer Taylor accumulator.
    """

    def __init__(self, masks: "PruningMasks", name: str, index: int):
        self.masks, self.name, self.index = masks, name, index

    def __call__(self, module, args, kwargs, output):
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output[0] if isinstance(output, tuple) else output
        gate = self.masks.masks[self.name][self.index].to(device=hidden_out.device, dtype=hidden_out.dtype)
        gated = hidden_out * gate + hidden_in * (1 - gate)
        if gated.requires_grad:
            change = (hidden_out - hidden_in).detach()
            accumulator, index = self.masks.layer_taylor[self.name], self.index

            def accumulate(grad):
                with torch.no_grad():
                    accumulator[index] += (grad.float() * change.float()).sum().to(accumulator.device)

            gated.register_hook(accumulate)
        return (gated,) + tuple(output[1:]) if isinstance(output, tuple) else gated


def _group_paths(group: Group) -> tuple[str, ...]:
    """The module paths (under the base model) that gating ``group`` reads."""
    if isinstance(group, LayerGroup):
        return (group.name,)
    if isinstance(group, HeadGroup):
        return (group.core, group.query, group.key, group.value, group.output)
    return (*getattr(group, "inputs", ()), group.output)


def check_groups_belong(model: nn.Module, groups) -> None:
    """Refuse groups whose modules ``model`` lacks (groups found on another model), naming the first."""
    base = model.base_model
    for group in check_group_objects(groups):
        for path in _group_paths(group):
            try:
                module = base.get_submodule(path)
            except AttributeError:
                raise ValueError(
                    f"group {group.name!r} is not in this {type(model).__name__}: it has no module {path!r} (groups "
                    "found on another model?). Pass groups found on this model: hf_adaprune.find_groups(model), "
                    "or a selection of them") from None
            if isinstance(group, HeadGroup) and getattr(module, "is_empty_attention", False):
                raise ValueError(f"group {group.name!r} has no heads left in this {type(model).__name__} (a compaction "
                                 "removed them all): pass groups found on the model as it is now, "
                                 "hf_adaprune.find_groups(model), which leaves it out")


class PruningMasks:
    """The masks of one model: a 0/1 float tensor per group, 1 = kept."""

    def __init__(self, model: nn.Module, groups: list[Group] | None = None):
        get_adapter(model)  # a wrapper (DDP, accelerate), a PEFT model or another family: refused before any hook
        self.detached = False  # set by remove() (compact, detach_masks): the gates are gone, writing has no effect
        if groups is not None:
            check_groups_belong(model, groups)
        self.groups: dict[str, Group] = {g.name: g for g in (groups if groups is not None else find_groups(model))}
        base = model.base_model
        device = next(model.parameters()).device
        self.masks: dict[str, torch.Tensor] = {
            name: torch.ones(structure_count(base, g), device=device) for name, g in self.groups.items()
        }
        # per layer stack: sum of dL/dg over the micro-batches since the importance last read it
        self.layer_taylor: dict[str, torch.Tensor] = {}
        self._handles = []
        for g in self.groups.values():
            self._install(base, g, device)

    def _install(self, base: nn.Module, group: Group, device) -> None:
        name = group.name
        if isinstance(group, LayerGroup):
            self.layer_taylor[name] = torch.zeros(len(self.masks[name]), device=device)
            for index, layer in enumerate(base.get_submodule(name)):
                self._handles.append(layer.register_forward_hook(_LayerGate(self, name, index), with_kwargs=True,
                                                                  prepend=True))
            return
        _prepare_core(base, group)
        repeat = group.columns_per_structure if isinstance(group, HeadGroup) else 1
        out = base.get_submodule(group.output)
        self._handles.append(out.register_forward_pre_hook(_Gate(self, name, repeat)))

    def add_groups(self, model: nn.Module, groups: list[Group]) -> None:
        """Gate further groups (all kept), e.g. the layer stacks of masks attached without them."""
        base = model.base_model
        device = next(model.parameters()).device
        for group in groups:
            if group.name not in self.groups:
                self.groups[group.name] = group
                self.masks[group.name] = torch.ones(structure_count(base, group), device=device)
                self._install(base, group, device)

    def to(self, device) -> "PruningMasks":
        """Move the masks (and the layer accumulators) to ``device``: a model placed after its masks were made
        (the Trainer postpones placement for ``fp16_full_eval`` / ``bf16_full_eval``, DeepSpeed, FSDP)."""
        device = torch.device(device)
        for store in (self.masks, self.layer_taylor):
            for name, tensor in store.items():
                if tensor.device != device:
                    store[name] = tensor.to(device)
        return self

    def take_layer_taylor(self, name: str) -> torch.Tensor:
        """The stack's accumulated dL/dg per layer since the last call (then reset to zero)."""
        accumulator = self.layer_taylor[name]
        value = accumulator.clone()
        accumulator.zero_()
        return value

    # -- reading -------------------------------------------------------------------------------
    def kept_indices(self, name: str) -> list[int]:
        return torch.nonzero(self.masks[name] >= 0.5).flatten().tolist()

    def of_kind(self, kind: str) -> list[str]:
        return [n for n, g in self.groups.items() if g.kind == kind]

    def pruned_fraction(self, kind: str) -> float:
        names = self.of_kind(kind)
        total = sum(self.masks[n].numel() for n in names)
        kept = sum(float(self.masks[n].sum()) for n in names)
        return 0.0 if total == 0 else 1.0 - kept / total

    def kept_count(self, name: str) -> int:
        """The structures of ``name`` that compaction keeps (mask >= 0.5)."""
        return int((self.masks[name] >= 0.5).sum())

    def summary(self) -> dict[str, int]:
        return {name: self.kept_count(name) for name in self.masks}

    # -- writing -------------------------------------------------------------------------------
    def _checked(self, name: str, mask) -> torch.Tensor:
        if name not in self.masks:
            raise KeyError(f"no mask for group {name!r}; the masks are for {sorted(self.masks)[:4]}...")
        mask, current = torch.as_tensor(mask), self.masks[name]
        if mask.shape != current.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, expected {tuple(current.shape)}")
        if not (torch.isfinite(mask).all() and (mask >= 0).all() and (mask <= 1).all()):
            raise ValueError(f"mask for {name!r} must hold values in [0, 1] (1 = kept, 0 = pruned); "
                             f"got {mask.tolist()}")
        return mask

    def set(self, name: str, mask: torch.Tensor) -> None:
        self.update({name: mask})

    def update(self, masks: dict[str, torch.Tensor]) -> None:
        """Set every mask of ``masks``, or none of them when one is wrong."""
        if self.detached:  # the model no longer reads these tensors (and after compact has other shapes)
            raise RuntimeError("these masks were detached by compact() (or detach_masks()): they no longer gate the "
                               "model, and setting them has no effect. attach_masks(model) again, and find the "
                               "groups again (find_groups(model)): a compacted model has other shapes")
        checked = {name: self._checked(name, mask) for name, mask in masks.items()}
        with torch.no_grad():
            for name, mask in checked.items():
                self.masks[name].copy_(mask)  # in place: compiled graphs read the same tensor

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the masks (later updates do not change them)."""
        return {name: mask.detach().cpu().clone() for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unknown = set(state) - set(self.masks)
        if unknown:
            raise KeyError(f"masks for unknown groups: {sorted(unknown)}")
        self.update(state)

    def remove(self) -> None:
        """Take the gates off the model (``compact`` and ``detach_masks`` call this); the masks can be read but
        no longer set."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.detached = True


def attach_masks(model: nn.Module, layers: bool = False, groups: list[Group] | None = None) -> PruningMasks:
    """Gate ``model``'s heads and neurons (all kept), and with ``layers`` its whole layers; returns the existing
    masks if already attached (adding the layer gates they lack). ``groups``: gate these groups only (e.g. those
    :func:`~hf_adaprune.families.filter_groups` picks); ``compact`` and ``save_pruned`` then remove what their
    masks prune."""
    get_adapter(model)  # refuses a wrapper (DDP, accelerate: pass the model it wraps) before anything is gated
    if not isinstance(layers, bool):  # "no" would gate the layers
        raise TypeError(f"layers must be True or False, got {layers!r}")
    masks = getattr(model, _ATTR, None)
    if masks is not None and groups is not None and {g.name for g in groups} != set(masks.groups):
        raise ValueError("the model already has masks on other groups: detach_masks(model) first")
    if masks is None:
        masks = PruningMasks(model, list(groups) if groups is not None else
                             find_groups(model) + (find_layer_groups(model) if layers else []))
        model.__dict__[_ATTR] = masks
    elif layers:
        masks.add_groups(model, find_layer_groups(model))
    else:
        return masks
    _drop_compiled_graphs(model)
    return masks


def _drop_compiled_graphs(model: nn.Module) -> None:
    """A model compiled in place (``model.compile()``) that has run keeps graphs traced without the gates just
    added, and would run them, ignoring the masks: they are dropped (``torch._dynamo.reset()``, every compiled
    graph of the process: the next calls compile again)."""
    if any(getattr(module, "_compiled_call_impl", None) is not None for module in model.modules()):
        logger.warning("the model was compiled in place (model.compile()): its compiled graphs, traced without the "
                       "pruning gates, are dropped (torch._dynamo.reset()) and the next call compiles again")
        torch._dynamo.reset()


def get_masks(model: nn.Module) -> PruningMasks | None:
    return getattr(model, _ATTR, None)


def detach_masks(model: nn.Module) -> None:
    check_transformers_model(model, "detach_masks")
    masks = model.__dict__.pop(_ATTR, None)
    if masks is not None:
        masks.remove()
