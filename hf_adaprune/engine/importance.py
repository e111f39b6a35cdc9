"""Importance criteria: one score per head and per FFN neuron.

* :class:`TaylorImportance` – first-order Taylor, ``|sum(grad * weight)|`` over a
  structure's parameters, read from ``.grad`` after an ordinary backward pass.
  Scores are the **mean over optimizer steps of the per-step absolute value**
  (not the absolute value of a mean), so steps whose gradients point in opposite
  directions do not cancel. Each step's values are divided by their sum over all
  structures first: every step then weighs the same, and the scores do not
  depend on how the loss was scaled (e.g. summed rather than averaged over
  gradient-accumulation micro-batches, as some Trainer/model pairs do).
  A whole layer's score is ``|dL/dg|`` of its output gate (see ``engine.masks``), normalised per step
  among the layers apart from the heads and neurons: it estimates the loss change of removing the layer
  the way a head's score estimates that of removing the head, and costs one product per layer in the
  backward pass already running.
  With ``ema`` in (0, 1) the scores are an exponential moving average instead
  (``ema * previous + (1 - ema) * step``, as AdaLoRA/PLATON), so they follow the
  model as it changes rather than weighing the first steps as much as the last.
  A head or neuron whose mask is below 1 (masked, or fading out under ``pruning_ramp_steps``) gets no gradient or a
  scaled one, so its score is held while it is (not averaged towards 0); that step's values of the others are
  divided by their own sum and given the share of the scores they hold, so the scores keep summing to 1 and a
  candidate rolled back returns its structures with the scores, and ranks, they had.
* :class:`FisherImportance` – the same accumulation of ``(sum(grad * weight))**2``
  per optimizer step (the squared, Fisher-like variant of Kwon et al. 2022, here
  per optimizer step rather than per example).
* :class:`MagnitudeImportance` – ``sum |weight|``, the classic baseline.
* :class:`RandomImportance` – seeded random scores, a floor for comparisons.

All share ``update(model, groups)`` / ``scores(model, groups)`` / ``state_dict()``,
so the trainer can swap them. Adding a criterion is one subclass of
:class:`Importance` with a ``name``: it registers itself for
``--pruning_criterion``; ``needs_gradients`` says whether it reads ``.grad``.
On several processes, :func:`reduce_scores` averages the scores before selection (a layer's score comes from
each process's own activations, which DDP does not average).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..families import Group, LayerGroup, get_adapter, layer_of_group
from ..layout import read_record
from .masks import get_masks, structure_count
from .selection import check_score_dict


def structure_sums(base_model: nn.Module, group: Group, value: Callable[[torch.Tensor], torch.Tensor | None]):
    """Sum ``value(param)`` over each head's (or neuron's) parameters; ``None`` if any value is missing.

    A head owns its rows of Q, K, V (weights and biases), its columns of the output
    projection and its slice of per-head tensors; a neuron its row(s) of the input
    projection(s) and its column of the output projection.
    """
    n = structure_count(base_model, group)
    total = torch.zeros(n, dtype=torch.float32, device=_device(base_model))
    if n == 0:
        return total
    if isinstance(group, LayerGroup):  # a layer owns all its parameters
        for index, layer in enumerate(base_model.get_submodule(group.name)):
            for param in layer.parameters():
                v = value(param)
                if v is None:
                    return None
                total[index] += v.float().sum()
        return total
    for path in group.row_linears:
        linear = base_model.get_submodule(path)
        for param in (linear.weight, linear.bias):
            if param is None:
                continue
            v = value(param)
            if v is None:
                return None
            total += v.float().reshape(group.row_parts, n, -1).sum((0, 2))  # fused blocks: a structure in each
    out = base_model.get_submodule(group.output).weight
    v = value(out)
    if v is None:
        return None
    total += v.float().reshape(v.shape[0], n, -1).sum((0, 2))
    for path, dim in getattr(group, "per_head_params", ()):
        param = base_model.get_parameter(path)
        v = value(param)
        if v is None:
            return None
        total += v.float().movedim(dim, 0).reshape(n, -1).sum(1)
    return total


def frozen_groups(model: nn.Module, groups: list[Group]) -> list[str]:
    """Names of the ``groups`` that own a parameter which does not require gradients (frozen by hand, or left
    frozen by PEFT's ``merge_and_unload``): a criterion that reads ``.grad`` can never score them."""
    base = model.base_model
    return [g.name for g in groups
            if structure_sums(base, g, lambda p: p.detach() if p.requires_grad else None) is None]


def _refuse_frozen(model: nn.Module, groups: list[Group], criterion: str) -> None:
    """Refuse scoring ``groups`` when some of them are frozen: their gradients never come, and every step would be
    skipped for all the groups (the trainer refuses such groups when it is built)."""
    frozen = frozen_groups(model, groups)
    if frozen:
        raise ValueError(
            f"{len(frozen)} of the {len(groups)} groups given to {criterion}.update have parameters that do not "
            f"require gradients ({', '.join(frozen[:3])}{', ...' if len(frozen) > 3 else ''}), so no step can "
            "score them. Unfreeze them (model.requires_grad_(True)) or leave them out of the groups scored and "
            "pruned (filter_groups)")


def pruned_structure(model: nn.Module) -> frozenset:
    """What compaction removed from ``model`` (from its pruning record): per group and layer stack that lost
    some, the original indices it keeps. Scores accumulated before a change name other structures."""
    record = read_record(model.config)
    if record is None:
        return frozenset()
    entries = list(record["groups"].items()) + list(record.get("layers", {}).items())
    return frozenset((name, tuple(entry["kept"])) for name, entry in entries if len(entry["kept"]) != entry["original"])


class _TorchDistributed:
    """What :func:`~hf_adaprune.trainer.distributed.reduced_scores` reads of an ``accelerate.Accelerator``, on
    ``torch.distributed``: a user's own loop may have no accelerator."""

    def __init__(self):
        self.num_processes = dist.get_world_size()

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        dist.all_reduce(tensor)  # a sum: ReduceOp.AVG exists on NCCL only
        return tensor / self.num_processes


def reduce_scores(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``scores`` (``{group name: tensor}``) averaged over the processes of ``torch.distributed``, so that every
    process selects the same structures; every process must call it, with the same groups. Without
    ``torch.distributed`` initialised, or on one process, ``scores`` come back as they are.

    Head and neuron scores read ``.grad``, which DDP averages already; a layer's score is read at its gate from
    the process's own micro-batches, so it differs per process until reduced (as the trainer does)."""
    check_score_dict(scores)
    if not scores or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scores
    from ..trainer.distributed import reduced_scores  # the trainer's reduction, on torch.distributed

    names = sorted(scores)  # one order on every process
    device = scores[names[0]].device
    if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only: scores held on the CPU go through the GPU
        device = torch.device("cuda", torch.cuda.current_device())
    return reduced_scores(_TorchDistributed(), scores, names, device)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _grad_times_weight(param: torch.Tensor):
    # in float32: an fp16 product flushes the small ones to zero before the sums would be cast
    return None if param.grad is None else param.grad.detach().float() * param.detach().float()


IMPORTANCE_CRITERIA: dict[str, type["Importance"]] = {}


class Importance:
    """Base class: a criterion scores every structure of the groups it is given.

    Subclasses either accumulate scores in ``update`` (kept in ``self._scores``,
    saved with ``state_dict``) or compute them in ``scores``.
    """

    name = ""  # the --pruning_criterion value; a subclass with a name registers itself
    needs_gradients = False  # reads .grad in update(): the trainer must run optimizer steps before pruning

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            IMPORTANCE_CRITERIA[cls.name] = cls

    def __init__(self):
        self._scores: dict[str, torch.Tensor] = {}
        self.num_updates = 0
        # (config.adaprune, pruned_structure(model)) at the last update: the scores are of that model's structures
        self._structure = None

    def update(self, model: nn.Module, groups: list[Group]) -> bool:
        """Called once per optimizer step (after backward); returns whether the step counted."""
        self.num_updates += 1
        return True

    def scores(self, model: nn.Module, groups: list[Group]) -> dict[str, torch.Tensor]:
        """Group name -> one float score per structure, for the ``groups`` that have scores."""
        return {g.name: self._scores[g.name] for g in groups if g.name in self._scores}

    def reset(self) -> None:
        self._scores, self.num_updates, self._structure = {}, 0, None

    def state_dict(self) -> dict:
        return {"scores": {k: v.cpu() for k, v in self._scores.items()}, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        """``state`` from :meth:`state_dict` (saved on the CPU); ``device``: where the model's gradients are, which
        later updates mix with these scores (None: where the state is)."""
        self._scores = {k: v.to(device, copy=True) if device is not None else v.clone()
                        for k, v in state["scores"].items()}
        self.num_updates = int(state["num_updates"])
        self._structure = None

    def set_scores(self, scores: dict[str, torch.Tensor], num_updates: int) -> None:
        """Replace the accumulated scores (e.g. with the average over processes)."""
        self._scores, self.num_updates = dict(scores), num_updates


class TaylorImportance(Importance):
    """Running mean over optimizer steps of ``|sum(grad * weight)|`` per structure, normalised per step."""

    name = "taylor"
    needs_gradients = True

    def __init__(self, ema: float = 0.0):
        super().__init__()
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0: running mean); got {ema}")
        self.ema = ema

    def step_value(self, sums: torch.Tensor) -> torch.Tensor:
        """One optimizer step's score per structure from its ``sum(grad * weight)``."""
        return sums.abs()

    def _compacted_since(self, model: nn.Module) -> bool:
        """Whether ``model`` was compacted since the scores began (else its structure is recorded)."""
        saved = getattr(model.config, "adaprune", None)  # compaction writes a new one: decode only then
        if self._structure is not None and saved is self._structure[0]:
            return False
        structure = pruned_structure(model)
        if self._scores and self._structure is not None and structure != self._structure[1]:
            return True
        self._structure = (saved, structure)
        return False

    def check_structure(self, model: nn.Module) -> None:
        """Refuse a model compacted since the scores began: after layers are removed, the groups found again name
        other structures (``encoder.layer.2`` becomes ``encoder.layer.1``), which a running mean would continue."""
        if self._compacted_since(model):
            raise ValueError(
                f"the model was compacted since this {type(self).__name__} began scoring it ({self.num_updates} "
                "steps): its groups now name other structures, so the scores would continue those of removed or "
                "renamed ones. After compact(), score with a new importance (or call importance.reset()) and the "
                "groups found again (find_groups(model))")

    def scores(self, model: nn.Module, groups: list[Group]) -> dict[str, torch.Tensor]:
        """As :meth:`Importance.scores`. On a model compacted since the scores began, only through the group
        objects they were taken with (a trainer's ``pruning_groups``, read after training): groups found again
        name other structures (after layers are removed, the old scores would go to the layers now under their
        names) and are refused, as :meth:`update` refuses them."""
        if self._scores:
            get_adapter(model)  # a wrapper (DDP, accelerate): refused naming it, before its config is read
            scored = getattr(self, "_scored_groups", {})
            if any(scored.get(group.name) is not group for group in groups if group.name in self._scores):
                self.check_structure(model)
        return super().scores(model, groups)

    def reset(self) -> None:
        super().reset()
        self._scored_groups = {}

    @torch.no_grad()
    def update(self, model: nn.Module, groups: list[Group]) -> bool:
        get_adapter(model)  # a wrapper (DDP, accelerate): refused before base_model is read
        self.check_structure(model)
        self._scored_groups = {**getattr(self, "_scored_groups", {}), **{group.name: group for group in groups}}
        base = model.base_model
        batch = {}
        for group in groups:
            if isinstance(group, LayerGroup):  # dL/dg read by the layer gates during backward
                masks = get_masks(model)
                if masks is None or group.name not in masks.layer_taylor:
                    raise ValueError(f"the layers of {group.name} are scored from their gates: "
                                     "attach_masks(model, layers=True) before the backward pass")
                sums = masks.take_layer_taylor(group.name)
            else:
                sums = structure_sums(base, group, _grad_times_weight)
            if sums is None:  # no gradient reached this group: nothing to learn from, unless it never can
                _refuse_frozen(model, groups, type(self).__name__)
                return False
            batch[group.name] = self.step_value(sums)
        held = self._held(model, groups, batch)
        # layers apart from heads and neurons: a layer's score is on another scale than one head's. Each step's
        # values are divided by their sum over the structures it scores (not those held), and given the share of
        # the scores those structures hold (1 when none is held): held and new scores stay on one scale, so a
        # candidate rolled back returns its structures at the rank they had
        totals, shares = {}, {}  # per scale: the step's sum, and what the scored structures hold (None: unknown)
        for group in groups:
            key, value, previous = group.kind == "layers", batch[group.name], self._scores.get(group.name)
            scored = ~held[group.name] if group.name in held else None
            totals[key] = totals.get(key, 0.0) + _scored_sum(value, scored)
            known = previous is not None and previous.shape == value.shape
            shares.setdefault(key, []).append(_scored_sum(previous, scored) if known else None)
        # all gradients zero, or an overflow (fp16 loss scaling: the optimizer skips the step): nothing to learn
        if any(not math.isfinite(total) or total <= 0 for total in totals.values()):
            return False
        scale = {key: ((sum(shares[key]) if held and None not in shares[key] else 0.0) or 1.0) / total
                 for key, total in totals.items()}
        batch = {g.name: batch[g.name] * scale[g.kind == "layers"] for g in groups}
        self.num_updates += 1
        for group in groups:
            name, value = group.name, batch[group.name]
            previous = self._scores.get(name)
            if previous is None or previous.shape != value.shape:
                self._scores[name] = value
                continue
            if name in held:  # masked or fading: no gradient, or a scaled one, reached it
                value = torch.where(held[name], previous, value)
            # running mean, or the moving average's share of the newest step
            previous += (value - previous) * ((1.0 - self.ema) if self.ema else 1.0 / self.num_updates)
        return True

    def _held(self, model: nn.Module, groups: list[Group], batch: dict) -> dict[str, torch.Tensor]:
        """Per head / FFN group with scores to hold: which structures' masks are below 1 (masked, or fading out
        under a ramp), all of them in a layer whose gate is, and keep their score this step. A layer's dL/dg is
        read at its gate whatever its mask."""
        masks = get_masks(model)
        if masks is None:
            return {}
        stacks = [g for g in masks.groups.values() if isinstance(g, LayerGroup)]
        held = {}
        for group in groups:
            previous = self._scores.get(group.name)
            if (group.kind == "layers" or group.name not in masks.masks or previous is None
                    or previous.shape != batch[group.name].shape):
                continue
            below = masks.masks[group.name].to(previous.device) < 1
            where = layer_of_group(stacks, group.name)
            if where is not None and float(masks.masks[where[0]][where[1]]) < 1:  # in a layer gated off or fading:
                below = torch.ones_like(below)  # no gradient, or a scaled one, reaches any of its structures
            if bool(below.any()):
                held[group.name] = below
        return held


def _scored_sum(values: torch.Tensor, scored: torch.Tensor | None) -> float:
    """The sum of ``values`` where ``scored`` holds (None: all of them)."""
    return float(values.sum() if scored is None else values[scored].sum())


class FisherImportance(TaylorImportance):
    """:class:`TaylorImportance` accumulating ``(sum(grad * weight))**2`` per structure and optimizer step."""

    name = "fisher"

    def step_value(self, sums: torch.Tensor) -> torch.Tensor:
        return sums.square()


class MagnitudeImportance(Importance):
    """``sum |weight|`` per structure, computed from the current weights."""

    name = "magnitude"

    @torch.no_grad()
    def scores(self, model: nn.Module, groups: list[Group]) -> dict[str, torch.Tensor]:
        get_adapter(model)  # a wrapper (DDP, accelerate): refused before base_model is read
        base = model.base_model
        return {g.name: structure_sums(base, g, lambda p: p.detach().abs()) for g in groups}


class RandomImportance(Importance):
    """Uniform random scores from a fixed seed: the no-information baseline."""

    name = "random"

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed

    def scores(self, model: nn.Module, groups: list[Group]) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        get_adapter(model)
        base = model.base_model
        return {g.name: torch.rand(structure_count(base, g), generator=generator) for g in groups}


def make_importance(name: str, **kwargs) -> Importance:
    if name not in IMPORTANCE_CRITERIA:
        raise ValueError(f"unknown importance criterion {name!r}; choose one of {sorted(IMPORTANCE_CRITERIA)}")
    return IMPORTANCE_CRITERIA[name](**kwargs)
