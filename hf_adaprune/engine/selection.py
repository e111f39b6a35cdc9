"""Which heads / neurons to prune, given scores and the masks pruned so far.

Pruning is monotone: a structure pruned in the current masks stays pruned. The
fraction ``ratio`` counts against the structures the masks started with.
``scope="layer"`` prunes the same fraction in every group; ``scope="global"``
ranks all groups of a kind together after dividing each group's scores by
their L2 norm (over the structures still alive), so that layers whose scores
are larger overall do not keep everything (``normalize=False``: the raw scores, as
estimates of the loss change on one scale, are ranked as they are; the trainer and ``post_training_prune``
pass it by default, these functions keep ``normalize=True`` for callers written before). Either scope prunes
the number of structures nearest to ``ratio`` of them (of their cost, given ``costs``), so a
ratio below half a structure prunes nothing.

``multiple_of`` rounds each pruned group's kept width to a multiple (GEMM kernels
run fastest on widths that are multiples of 8 or 16): an FFN keeps a multiple of
neurons, an attention a number of heads whose width (heads x head_dim) is a
multiple. The kept count goes to the nearest such multiple the group still has
alive, and the best-scored structures fill it.

Whole layers (kind ``"layers"``, one group per layer stack) are selected like any
other kind, at least one layer kept per stack. Pruned together with heads and/or
neurons, layers take ``1 - sqrt(1 - ratio)`` of the layer cost (in whole layers: the nearest count), so that
layers and widths each keep about the square root of what is kept overall; the heads and neurons
of removed layers then count as pruned, and widths are selected up to ``ratio``
(with ``scope="layer"``: every surviving group loses the share that brings the
whole to ``ratio``). Given ``costs``, ``ratio`` is a fraction of the prunable cost,
every removed layer's whole cost counted: the widths' ratio is then the one that
brings that fraction nearest to ``ratio``, so with one width kind (``ffn,layers``)
the FFN loses more than ``ratio`` of its own cost, as the attention it leaves also
counts in the layers' cost.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

from ..families import KINDS, Group, layer_of_group

SCOPES = ("layer", "global")


def _floor_for(count: int, floor: int) -> int:
    return min(max(floor, 0), count)


def select_masks(
    scores: dict[str, torch.Tensor],
    current: dict[str, torch.Tensor],
    ratio: float,
    scope: str = "layer",
    floor: int = 1,
    costs: dict[str, float] | None = None,
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """New masks for the groups in ``current`` that prune ``ratio`` of their structures.

    ``costs`` (per group: cost of one structure, e.g. FLOPs) makes the global
    ratio a fraction of total cost instead of count. ``floor`` is the minimum
    number of structures kept per group (0 lets a whole sub-layer go). Under ``scope="global"`` all the groups
    given are ranked together: give it one kind (heads or neurons) at a time, as :func:`select_masks_by_kind` does.
    """
    check_ratio(ratio)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    check_count("floor", floor, 0)
    floor = int(floor)
    check_scores(scores, current, current)
    if scope == "layer":
        return {name: _select_in_group(scores[name], mask, ratio, floor) for name, mask in current.items()}
    return _select_global(scores, current, ratio, floor, costs, normalize)


def select_masks_by_kind(
    groups,
    scores: dict[str, torch.Tensor],
    current: dict[str, torch.Tensor],
    ratio: float,
    kinds=("heads", "ffn"),
    scope: str = "layer",
    floors: dict[str, int] | None = None,
    costs: dict[str, float] | None = None,
    multiple_of: int = 1,
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """:func:`select_masks` run for each kind of structure apart, so heads and neurons each lose ``ratio``.

    ``groups`` are the groups to prune; ``floors`` maps a kind to its per-group floor (default 1);
    ``multiple_of`` rounds kept widths; ``normalize``: L2-normalise each group's scores under
    ``scope="global"`` (see the module docstring).
    """
    new = {}
    check_ratio(ratio)
    groups = check_group_objects(groups)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if floors is not None and not isinstance(floors, Mapping):
        raise TypeError(f"floors must map a kind to its per-group floor, e.g. {{'heads': 1}}; got {floors!r}")
    unknown = sorted((set(kinds) | set(floors or {})) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown kinds {unknown} (in kinds or floors): the kinds are {', '.join(KINDS)}")
    for kind, floor in (floors or {}).items():
        check_count(f"floors[{kind!r}]", floor, 0)
    check_count("multiple_of", multiple_of, 1)
    floors = None if floors is None else {kind: int(floor) for kind, floor in floors.items()}  # 1.0 -> 1
    multiple_of = int(multiple_of)
    names = [g.name for g in groups if g.kind in kinds or "layers" in kinds]  # removed layers' groups are read too
    check_scores(scores, [g.name for g in groups if g.kind in kinds], current, masks_for=names)
    problem = multiple_of > 1 and multiple_problem([g for g in groups if g.kind in kinds],
                                                   {n: m.numel() for n, m in current.items()}, multiple_of)
    if problem:  # rounding a width below the multiple would empty the group, whatever the floors say
        raise ValueError(problem)
    target = ratio
    layer_groups = [g for g in groups if g.kind == "layers"] if "layers" in kinds else []
    refused = [g.refuse for g in layer_groups if getattr(g, "refuse", "")]
    if refused:  # a stack whose layers compaction could not remove (e.g. T5's encoder beside a decoder)
        raise ValueError(refused[0])
    if layer_groups:
        names = [g.name for g in layer_groups]
        new.update(select_masks({n: scores[n] for n in names}, {n: current[n] for n in names},
                                layer_ratio(ratio, kinds), scope=scope, floor=(floors or {}).get("layers", 1),
                                costs=costs_of(costs, names), normalize=normalize))
        for group in layer_groups:
            if getattr(group, "keep_last", ""):
                new[group.name] = keep_last_layer(scores[group.name], current[group.name], new[group.name])
        current = dict(current)
        for group in groups:
            where = None if group.kind == "layers" else layer_of_group(layer_groups, group.name)
            if where is not None and new[where[0]][where[1]] < 0.5:  # in a removed layer: pruned with it
                current[group.name] = torch.zeros_like(current[group.name])
        if scope == "layer":  # each surviving group loses what the removed layers leave to reach ratio
            removed = selected_fraction({n: new[n] for n in names},
                                        costs_of(costs, names))
            ratio = min(1.0, max(0.0, 1.0 - (1.0 - ratio) / max(1.0 - removed, 1e-9)))
    widths = [g for g in groups if g.kind in kinds and g.kind != "layers"]

    def select_widths(width_ratio: float) -> dict[str, torch.Tensor]:
        out = {}
        for kind in (k for k in kinds if k != "layers"):
            kind_groups = [g for g in widths if g.kind == kind]
            names = [g.name for g in kind_groups]
            if not names:
                continue
            floor = (floors or {}).get(kind, 1)
            selected = select_masks(
                {n: scores[n] for n in names},
                {n: current[n] for n in names},
                width_ratio,
                scope=scope,
                floor=floor,
                costs=costs_of(costs, names),
                normalize=normalize,
            )
            for group in kind_groups if multiple_of > 1 else ():
                multiple = structure_multiple(group, multiple_of)
                if multiple > 1:
                    selected[group.name] = round_kept(scores[group.name], current[group.name], selected[group.name],
                                                      multiple, floor)
            out.update(selected)
        return out

    if layer_groups and widths and costs is not None:
        new.update(_widths_to_cost_fraction(select_widths, new, layer_groups + widths, costs, target))
    else:
        new.update(select_widths(ratio))
    return new


def _widths_to_cost_fraction(select_widths, layers: dict[str, torch.Tensor], groups, costs: dict[str, float],
                             target: float) -> dict[str, torch.Tensor]:
    """The widths ``select_widths(width_ratio)`` gives for the width ratio that, beside the selected ``layers``,
    brings :func:`prunable_cost_fraction` nearest to ``target``. The fraction grows with the width ratio, nearly in
    proportion: the search starts at ``target`` itself, then interpolates (every other step halves the bracket)
    until a selection is within half the cheapest structure of ``target``, a few selections in practice."""
    widths = [g for g in groups if g.kind != "layers"]

    def reached(width_ratio):
        selected = select_widths(width_ratio)
        return width_ratio, selected, prunable_cost_fraction(groups, {**layers, **selected}, costs)

    low, high = reached(0.0), reached(1.0)
    if high[2] <= target:  # even every width at its floor falls short (unreachable_target warned of it)
        return high[1]
    # half the cheapest structure, as a share of the widths' cost: no selection comes closer than that
    tolerance = 0.5 * min(float(costs[g.name]) for g in widths) / sum(float(costs[g.name]) * high[1][g.name].numel()
                                                                       for g in widths)
    best = min((low, high), key=lambda point: abs(point[2] - target))
    for step in range(60):
        if abs(best[2] - target) <= tolerance or high[0] - low[0] <= 1e-9:
            break
        if step == 0:
            ratio = min(max(target, low[0]), high[0])
        elif step % 2 and high[2] > low[2]:
            ratio = low[0] + (target - low[2]) * (high[0] - low[0]) / (high[2] - low[2])
        else:
            ratio = (low[0] + high[0]) / 2
        point = reached(min(max(ratio, low[0]), high[0]))
        low, high = (point, high) if point[2] <= target else (low, point)
        best = min((best, point), key=lambda p: (abs(p[2] - target), p[2]))
    return min((low, high, best), key=lambda p: (abs(p[2] - target), p[2]))[1]


def prunable_cost_fraction(groups, masks: dict[str, torch.Tensor], costs: dict[str, float]) -> float:
    """With whole layers among the kinds: the fraction of the prunable cost that ``masks`` remove, each removed
    layer's whole cost and the pruned heads / neurons of the layers kept (and of groups in no pruned stack)."""
    stacks = [g for g in groups if g.kind == "layers"]
    total = removed = 0.0
    for stack in stacks:
        stack_total, stack_removed = group_costs(costs, stack.name, masks[stack.name])
        total, removed = total + stack_total, removed + stack_removed
    for group in groups:
        if group.kind == "layers":
            continue
        where = layer_of_group(stacks, group.name)
        mask, cost = masks[group.name], float(costs[group.name])
        if where is None:
            total += cost * mask.numel()
        elif masks[where[0]][where[1]] < 0.5:
            continue  # counted with its layer
        removed += cost * int((mask < 0.5).sum())
    return 0.0 if total == 0 else removed / total


def costs_of(costs: dict[str, float] | None, names) -> dict[str, float] | None:
    """The entries of ``costs`` for the groups ``names``: each group's cost and its layers' own (``name.index``)."""
    if costs is None:
        return None
    names = set(names)
    return {key: value for key, value in costs.items() if key in names or key.rpartition(".")[0] in names}


def structure_cost(costs: dict[str, float] | None, name: str, index: int) -> float:
    """Structure ``index`` of group ``name``: 1 without ``costs``; a layer of a stack, its own cost where the table
    has it under its path ``name.index`` (layers pruned to other widths before cost other amounts); else the
    group's cost per structure (a stack's average layer)."""
    if costs is None:
        return 1.0
    return float(costs.get(f"{name}.{index}", costs[name]))


def group_costs(costs: dict[str, float] | None, name: str, mask: torch.Tensor) -> tuple[float, float]:
    """(the cost of group ``name``'s structures, the cost of those ``mask`` prunes): structure by structure for a
    stack whose layers have their own costs, else its count times the cost of one."""
    if costs is not None and f"{name}.0" in costs:
        units = [structure_cost(costs, name, index) for index in range(mask.numel())]
        return sum(units), sum(unit for unit, kept in zip(units, mask.flatten().tolist()) if kept < 0.5)
    unit = structure_cost(costs, name, 0)
    return unit * mask.numel(), unit * int((mask < 0.5).sum())


def _is_group(group) -> bool:
    """A group as the selection reads it (its ``name`` and ``kind``), not a group's name."""
    return isinstance(group, Group) or (not isinstance(group, str) and hasattr(group, "name")
                                        and hasattr(group, "kind"))


def check_group_objects(groups) -> list:
    """``groups`` as a list, refusing group names and the ``masks.groups`` dict where groups are asked for."""
    groups = groups if isinstance(groups, (str, dict)) else list(groups)
    if isinstance(groups, (str, dict)) or not all(_is_group(g) for g in groups):
        wrong = groups if isinstance(groups, (str, dict)) else next(g for g in groups if not _is_group(g))
        raise TypeError(f"groups must be the groups hf_adaprune.find_groups(model) returns (or a selection of them), "
                        f"not {type(wrong).__name__} {str(wrong)[:60]!r} (group names? masks.groups is a dict: pass "
                        "list(masks.groups.values()))")
    return groups


def check_score_dict(scores) -> None:
    """Refuse scores that are not a dict of tensors by group name."""
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a dict {{group name: tensor}}, as importance.scores(model, groups) returns; "
                        f"got {type(scores).__name__}")


def check_ratio(ratio) -> None:
    """Refuse a ratio that is not a number (a string from a config file, None)."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        hint = " (ratio.item())" if isinstance(ratio, torch.Tensor) else ""
        raise TypeError(f"ratio must be a number in [0, 1] (the fraction to prune), got {type(ratio).__name__} "
                        f"{ratio!r}{hint}")


def check_count(name: str, value, least: int) -> None:
    """Refuse ``value`` for argument ``name`` unless it is a whole number >= ``least`` (8.0 is one)."""
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole or value < least:
        raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")


def check_scores(scores: dict[str, torch.Tensor], names, current: dict[str, torch.Tensor] | None = None,
                 masks_for=None) -> None:
    """Refuse selecting ``names`` when ``scores`` or ``current`` is not a dict, a group has no mask in ``current``
    (nor do the groups ``masks_for``), no scores, scores not shaped like its mask (one per structure), or a score
    that is not finite."""
    if current is not None and not isinstance(current, Mapping):
        hint = " (pass masks.masks, the dict the PruningMasks holds)" if hasattr(current, "masks") else ""
        raise TypeError(f"the current masks must be a dict {{group name: mask tensor}}{hint}; got "
                        f"{type(current).__name__}")
    check_score_dict(scores)
    names = list(names)
    absent = [] if current is None else [n for n in (names if masks_for is None else masks_for) if n not in current]
    if absent:
        raise ValueError(f"no masks for groups {absent[:3]}{' ...' if len(absent) > 3 else ''}: the masks were "
                         "attached on other groups (attach_masks(model, groups=...)); select the groups the masks hold "
                         "(list(masks.groups.values())), or attach masks on these")
    missing = sorted(set(names) - set(scores))
    if missing:
        raise KeyError(f"no scores for groups {missing}: did update() count any step? (it counts none, and returns "
                       "False, while no gradient reaches the groups)")
    for name in names if current is not None else ():
        shape, mask = tuple(getattr(scores[name], "shape", ())), current.get(name)
        if mask is not None and shape != tuple(mask.shape):  # (n, 1) would rank along the wrong dimension
            raise ValueError(f"scores for {name!r} have shape {shape}, but the group has {mask.numel()} structures "
                             f"(mask shape {tuple(mask.shape)}): give one score per structure, shaped like the "
                             "group's mask (squeeze a keepdim=True reduction)")
    # one NaN or inf would rank its group first or last, or leave it unnormalised under scope="global"
    bad = [name for name in names if not bool(torch.isfinite(scores[name]).all())]
    if bad:
        raise ValueError(f"scores that are NaN or infinite for groups {bad[:3]}{' ...' if len(bad) > 3 else ''}: "
                         "selection ranks finite scores only (an overflowed fp16 step, or a criterion dividing by "
                         "zero, gives such values)")


def keep_last_layer(score: torch.Tensor, current: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """``selected`` (a stack's layer mask) with its last layer kept, in place of the lowest-scored other layer
    kept: as many layers go. A last layer removed in ``current`` stays removed (compaction refuses it)."""
    if selected[-1] >= 0.5 or current[-1] < 0.5:
        return selected
    new = selected.clone()
    new[-1] = 1
    others = torch.nonzero(selected[:-1].cpu() >= 0.5).flatten()
    if others.numel():
        ranked = score.detach().float().cpu()[others]
        new[int(others[torch.argsort(ranked, stable=True)[0]])] = 0
    return new


def layer_ratio(ratio: float, kinds) -> float:
    """The fraction of the layer cost that whole layers take when ``kinds`` are pruned to ``ratio``."""
    return ratio if set(kinds) <= {"layers"} else 1.0 - math.sqrt(1.0 - ratio)


def layer_target_problem(groups, sizes: dict[str, int], target: float, kinds,
                         costs: dict[str, float] | None = None) -> str | None:
    """Why ``target`` would need a stack to lose every layer (each keeps one), or None."""
    stacks = [g for g in groups if g.kind == "layers"] if "layers" in kinds else []
    refused = [g.refuse for g in stacks if getattr(g, "refuse", "")]
    if refused:
        return refused[0]
    if not stacks:
        return None
    needed = layer_ratio(target, kinds)
    reachable = reachable_fraction({g.name: sizes[g.name] for g in stacks}, 1, costs_of(costs, [g.name for g in stacks]),
                                   keep_last={g.name for g in stacks if getattr(g, "keep_last", "")})
    if needed <= reachable + 1e-9:
        return None
    counts = ", ".join(f"{g.name}: {sizes[g.name]}" for g in stacks)
    widths = [kind for kind in ("heads", "ffn") if kind in kinds]
    if len(widths) < 2:
        names = {"heads": "heads", "ffn": "FFN neurons"}
        missing = " and ".join(names[kind] for kind in ("heads", "ffn") if kind not in widths)
        advice = f"prune {missing} as well (--prune heads,ffn,layers), "
    else:  # widths already take their share: what is left is the widths alone
        advice = "prune heads and FFN neurons alone (--prune heads,ffn), "
    return (f"pruning target {target} needs {needed:.4f} of the layers removed, but every stack keeps at least one "
            f"layer ({counts} layers), so at most {reachable:.4f} can go. Lower --pruning_target, {advice}"
            "or include more stacks in --pruning_roles.")


def structure_multiple(group, multiple_of: int) -> int:
    """How many structures of ``group`` make a width that is a multiple of ``multiple_of``: the multiple itself
    for FFN neurons, ``multiple_of / gcd(multiple_of, head_dim)`` heads for an attention (1 when head_dim is
    already a multiple, as 64 is of 8 and 16)."""
    if group.kind == "ffn":
        return multiple_of
    if group.kind == "heads":
        return multiple_of // math.gcd(multiple_of, group.head_dim)
    return 1


def _floor_in_multiples(count: int, floor: int, multiple: int) -> int:
    """The fewest of ``count`` structures a group rounded to ``multiple`` keeps: its floor, rounded up."""
    return -(-_floor_for(count, floor) // multiple) * multiple


def round_kept(score: torch.Tensor, current: torch.Tensor, selected: torch.Tensor, multiple: int,
               floor: int) -> torch.Tensor:
    """``selected`` with its kept count rounded to the nearest multiple of ``multiple`` that the structures alive
    in ``current`` allow (and at least the floor, rounded up); the best-scored alive structures are kept.
    A group the selection left whole stays whole."""
    alive = current >= 0.5
    alive_count, kept = int(alive.sum()), int((selected >= 0.5).sum())
    if kept == alive_count or alive_count < multiple:  # fewer alive than the multiple (masks pruned without
        return selected  # rounding, resumed with it): no multiple fits, and rounding down would empty the group
    rounded = min(int(math.floor(kept / multiple + 0.5)) * multiple, alive_count // multiple * multiple)
    least = _floor_in_multiples(selected.numel(), floor, multiple)
    rounded = max(rounded, min(least, alive_count // multiple * multiple))
    ranked = score.detach().float().cpu().clone()
    ranked[~alive.cpu()] = -math.inf
    order = torch.argsort(ranked, descending=True, stable=True)
    new = torch.zeros_like(selected)
    new[order[:rounded].to(selected.device)] = 1
    return new


def multiple_problem(groups, sizes: dict[str, int], multiple_of: int) -> str | None:
    """Why ``multiple_of`` cannot be honoured by some group (a width smaller than the multiple), or None."""
    for group in groups:
        multiple = structure_multiple(group, multiple_of)
        if multiple > 1 and 0 < sizes[group.name] < multiple:  # a group emptied before keeps 0, a multiple
            unit = "neurons" if group.kind == "ffn" else f"heads of {group.head_dim} dimensions" if \
                group.queries_per_key == 1 else (f"key/value groups (a key/value head of {group.head_dim} dimensions "
                                                 f"with the {group.queries_per_key} query heads that read it)")
            return (f"--pruning_multiple_of {multiple_of} cannot be honoured by {group.name}: it has "
                    f"{sizes[group.name]} {unit}, fewer than the {multiple} a multiple of {multiple_of} needs. "
                    "Use a smaller multiple (1 turns rounding off) or leave that group out of --pruning_roles.")
    return None


def rounding_limit(groups, sizes: dict[str, int], target: float, multiple_of: int, kinds=("heads", "ffn"),
                   floors: dict[str, int] | None = None,
                   costs: dict[str, float] | None = None) -> tuple[str | None, str | None]:
    """(refusal, warning) for what rounding kept widths to multiples of ``multiple_of`` leaves prunable: a group
    keeps a multiple of its unit that holds its floor, or all of it, so a width of 64 at a multiple of 48 can lose
    16 neurons and at a multiple of 64 none. Refused when no head or neuron of the kinds pruned can go (and no whole
    layer either); a warning naming the largest fraction of a kind that can go when it is below ``target``."""
    if multiple_of <= 1:
        return None, None
    rows = []  # (kind, largest prunable fraction, an example: width, unit, fewest kept)
    for kind in ("heads", "ffn"):
        named = [g for g in groups if g.kind == kind and sizes.get(g.name, 0) > 0] if kind in kinds else []
        total = prunable = 0.0
        example = None
        for group in named:
            width, unit = sizes[group.name], structure_multiple(group, multiple_of)
            least = min(width, _floor_in_multiples(width, (floors or {}).get(kind, 1), unit))
            units = [structure_cost(costs, group.name, index) for index in range(width)]
            total += sum(units)
            prunable += _most_prunable(units, least)
            if example is None or least == width:
                example = (width, unit, least)
        if named:
            rows.append((kind, 0.0 if total == 0 else prunable / total, example))
    clauses = "; ".join(
        f"a group of {width} {'neurons' if kind == 'ffn' else structures_named(groups, kind)} keeps a multiple of "
        f"{unit} {'head' if kind == 'heads' else 'neuron'}{'s' if unit > 1 else ''} holding its floor, so at least "
        f"{least}, and at most {reachable:.4f} of the {kind} can go" for kind, reachable, (width, unit, least) in rows)
    fix = "Use a smaller --pruning_multiple_of (1 turns rounding off)"
    if rows and all(reachable <= 1e-9 for _, reachable, _ in rows) and "layers" not in kinds:
        return (f"--pruning_multiple_of {multiple_of} leaves nothing to prune: {clauses}. {fix}, or lower "
                "min_heads_per_layer / min_neurons_per_layer where they round up to the whole width."), None
    if "layers" in kinds:  # removed layers take their heads and neurons: only a kind that cannot shrink is said
        stuck = [kind for kind, reachable, _ in rows if reachable <= 1e-9]
        return None, (f"--pruning_multiple_of {multiple_of}: {clauses}. The {' and '.join(stuck)} of the layers "
                      f"kept will not be pruned. {fix}." if stuck else None)
    short = [kind for kind, reachable, _ in rows if reachable < target - 1e-9]
    if not short:
        return None, None
    return None, (f"--pruning_multiple_of {multiple_of}: {clauses}. Pruning target {target} cannot be reached by "
                  f"{' and '.join(short)}; pruning stops short and the report gives the sparsity reached. {fix} or "
                  "lower the target.")


def selected_fraction(masks: dict[str, torch.Tensor], costs: dict[str, float] | None = None) -> float:
    """The fraction of the structures (of their cost, with ``costs``) that ``masks`` prune."""
    total = pruned = 0.0
    for name, mask in masks.items():
        group_total, group_pruned = group_costs(costs, name, mask)
        total, pruned = total + group_total, pruned + group_pruned
    return 0.0 if total == 0 else pruned / total


def selected_fraction_by_kind(groups, masks: dict[str, torch.Tensor], kinds=("heads", "ffn"),
                              costs: dict[str, float] | None = None) -> float:
    """What :func:`select_masks_by_kind` actually reached: the smallest fraction pruned over ``kinds`` (with layers
    and widths together, the widths' fraction, which counts the structures of removed layers; given ``costs``,
    :func:`prunable_cost_fraction`)."""
    fractions = []
    kinds = tuple(kinds)
    if "layers" in kinds and set(kinds) - {"layers"} and costs is not None:
        kind_groups = [g for g in groups if g.kind in kinds]
        if any(g.kind == "layers" for g in kind_groups) and any(g.kind != "layers" for g in kind_groups):
            return prunable_cost_fraction(kind_groups, masks, costs)
    for kind in (k for k in kinds if k != "layers") if set(kinds) - {"layers"} else kinds:
        names = [g.name for g in groups if g.kind == kind]
        if names:
            fractions.append(selected_fraction({n: masks[n] for n in names},
                                               costs_of(costs, names)))
    return min(fractions, default=0.0)


def _most_prunable(units: list[float], keep: int, keep_last: bool = False) -> float:
    """The most cost pruning takes from structures costing ``units`` when ``keep`` of them stay: the cheapest (a
    ``keep_last`` stack keeps its last among them)."""
    if keep <= 0:
        return sum(units)
    kept = [units[-1], *sorted(units[:-1])[:keep - 1]] if keep_last else sorted(units)[:keep]
    return sum(units) - sum(kept)


def reachable_fraction(sizes: dict[str, int], floor: int, costs: dict[str, float] | None = None,
                       keep_last=()) -> float:
    """The largest fraction of the structures (of their cost) that a per-group ``floor`` leaves prunable: the
    floor kept in the cheapest structures (a stack whose layers cost differently keeps its cheapest layer; one named
    in ``keep_last``, its last)."""
    total = prunable = 0.0
    for name, count in sizes.items():
        units = [structure_cost(costs, name, index) for index in range(count)]
        total += sum(units)
        prunable += _most_prunable(units, _floor_for(count, floor), name in keep_last)
    return 0.0 if total == 0 else prunable / total


FLOOR_OPTIONS = {"heads": "min_heads_per_layer", "ffn": "min_neurons_per_layer"}


def _reachable_by_kind(groups, sizes: dict[str, int], kinds, floors: dict[str, int] | None,
                       costs: dict[str, float] | None) -> list[tuple[str, int, float]]:
    """(kind, floor, largest prunable fraction) for each kind of ``kinds`` that has groups; none with whole layers
    among the kinds (removed layers take the heads and neurons the floors keep)."""
    if "layers" in kinds:
        return []
    rows = []
    for kind in kinds:
        names = [g.name for g in groups if g.kind == kind]
        if names:
            floor = (floors or {}).get(kind, 1)
            rows.append((kind, floor, reachable_fraction({n: sizes[n] for n in names}, floor,
                                                         costs_of(costs, names))))
    return rows


def structures_named(groups, kind: str) -> str:
    """How messages name the structures of ``kind``: a grouped-query attention's "heads" are key/value groups."""
    grouped = [g for g in groups if g.kind == kind and getattr(g, "queries_per_key", 1) > 1]
    if not grouped:
        return kind
    return (f"{kind} (key/value groups here: a key/value head with the {grouped[0].queries_per_key} query heads that "
            "read it)")


def _floor_clauses(blocked, groups=()) -> str:
    return "; ".join(f"keeping at least {floor} of the {structures_named(groups, kind)} in each layer "
                     f"({FLOOR_OPTIONS.get(kind, 'the floor')}={floor}) leaves at most {reachable:.4f} of them "
                     "prunable" for kind, floor, reachable in blocked)


def unreachable_target(groups, sizes: dict[str, int], target: float, kinds=("heads", "ffn"),
                       floors: dict[str, int] | None = None, costs: dict[str, float] | None = None,
                       scope: str = "global") -> str | None:
    """Why the per-group floors make ``target`` unreachable for some kinds (each with its reachable maximum), or None.

    With whole layers among the kinds, removed layers take the heads and neurons the floors keep (the layer stacks'
    own limit is :func:`layer_target_problem`'s); given ``costs``, the target counts every removed layer's whole
    cost, and width kinds that make up only part of a layer (``ffn,layers``) may not remove the rest of it:
    :func:`_layers_and_widths_limit` (``scope``, the selection's, decides how many whole layers can go)."""
    if "layers" in kinds:
        return _layers_and_widths_limit(groups, sizes, target, kinds, floors, costs, scope)
    blocked = [row for row in _reachable_by_kind(groups, sizes, kinds, floors, costs) if target > row[2] + 1e-9]
    if not blocked:
        return None
    options = " / ".join(FLOOR_OPTIONS.get(kind, "the floor") for kind, _, _ in blocked)
    return (f"pruning target {target} cannot be reached: {_floor_clauses(blocked, groups)}. Pruning stops there and "
            f"the report gives the sparsity reached; lower the target to <= {min(r for _, _, r in blocked):.4f} or "
            f"lower {options} to reach it.")


def _layer_counts(stacks, sizes: dict[str, int], target: float, kinds, floors: dict[str, int] | None,
                  costs: dict[str, float], scope: str) -> list[dict[str, int]]:
    """Every count of whole layers per stack that :func:`select_masks_by_kind` may remove at ``target`` from
    unpruned masks: its selection of the stacks at ``layer_ratio(target)``, in whole layers, each stack keeping
    its floor. Under ``scope="layer"`` one (each stack rounds its own share); under ``scope="global"`` the scores
    decide which stack's layer comes next in the cost budget, so each order of stacks the greedy pass can meet
    gives its counts (one when there is one stack), each layer counted at its stack's average cost (which of a
    stack's layers the scores take first is not known before training)."""
    ratio = min(max(layer_ratio(target, kinds), 0.0), 1.0)
    floor = (floors or {}).get("layers", 1)
    names = [g.name for g in stacks]
    if scope == "layer":
        return [{n: max(0, min(round(ratio * sizes[n]), sizes[n] - _floor_for(sizes[n], floor))) for n in names}]
    unit = [float(costs[n]) for n in names]
    budget = ratio * sum(u * sizes[n] for u, n in zip(unit, names))
    outcomes, seen = set(), set()
    pending = [(tuple(0 for _ in names), frozenset())]
    while pending:  # as _select_global: a stack passed over once (at its floor, or overshooting) stays passed over
        state = pending.pop()
        if state in seen:
            continue
        seen.add(state)
        counts, passed = state
        pruned = sum(u * k for u, k in zip(unit, counts))
        if pruned >= budget - 1e-9 or len(passed) == len(names):
            outcomes.add(counts)
            continue
        for i, name in enumerate(names):
            if i in passed:
                continue
            alive = sizes[name] - counts[i]
            if alive <= _floor_for(sizes[name], floor) or pruned + unit[i] > budget + 0.5 * unit[i]:
                pending.append((counts, passed | {i}))
            else:
                pending.append((counts[:i] + (counts[i] + 1,) + counts[i + 1:], passed))
    return [dict(zip(names, counts)) for counts in sorted(outcomes)]


def _kept_widths_prunable(stack, widths, sizes: dict[str, int], floors: dict[str, int] | None,
                          costs: dict[str, float], removed: int) -> tuple[float, float, int]:
    """When ``removed`` of the layers of ``stack`` go: the most cost the widths can take, each at its floor, in the
    layers kept, the cost of the layers that go (each its own), and how many go. The layers that go are those that
    give the most beyond what their widths could (with layers of one cost, those whose widths have the least to
    give); a ``keep_last`` stack keeps its last."""
    count = sizes[stack.name]
    per_layer = [0.0] * count
    for group in widths:
        where = layer_of_group([stack], group.name)
        if where is not None and where[1] < count:
            per_layer[where[1]] += float(costs[group.name]) * (
                sizes[group.name] - _floor_for(sizes[group.name], (floors or {}).get(group.kind, 1)))
    layer_cost = [structure_cost(costs, stack.name, index) for index in range(count)]
    candidates = range(count - 1) if getattr(stack, "keep_last", "") else range(count)
    gone = sorted(candidates, key=lambda i: (per_layer[i] - layer_cost[i], i))[:removed]
    return sum(per_layer) - sum(per_layer[i] for i in gone), sum(layer_cost[i] for i in gone), len(gone)


def _layers_and_widths_limit(groups, sizes: dict[str, int], target: float, kinds, floors: dict[str, int] | None,
                             costs: dict[str, float] | None, scope: str = "global") -> str | None:
    """With layers and width kinds under a cost target: why no selection at ``target`` brings
    :func:`prunable_cost_fraction` to it (with the most one can), or None. The selection removes whole layers
    (:func:`_layer_counts`), which ones the scores decide: the most is with the layers whose widths have the least
    to give removed, and the widths, each at its floor, in the layers kept."""
    stacks = [g for g in groups if g.kind == "layers"]
    widths = [g for g in groups if g.kind in kinds and g.kind != "layers"]
    if costs is None or not stacks or not widths:
        return None
    total = sum(structure_cost(costs, s.name, index) for s in stacks for index in range(sizes[s.name]))
    layer_total, outside = total, 0.0
    for group in (g for g in widths if layer_of_group(stacks, g.name) is None):  # in no pruned stack
        count = sizes[group.name]
        total += float(costs[group.name]) * count
        outside += float(costs[group.name]) * (count - _floor_for(count, (floors or {}).get(group.kind, 1)))
    best = None  # (reachable, cost of the layers removed, layers removed)
    for counts in _layer_counts(stacks, sizes, target, kinds, floors, costs, scope):
        removed, layer_removed, layers = outside, 0.0, 0
        for stack in stacks:
            kept, gone_cost, gone = _kept_widths_prunable(stack, widths, sizes, floors, costs, counts[stack.name])
            layer_removed += gone_cost
            removed += gone_cost + kept
            layers += gone
        point = (removed / total if total else 0.0, layer_removed, layers)
        best = point if best is None or point[0] > best[0] else best
    reachable, layer_removed, layers = best
    if target <= reachable + 1e-9:
        return None
    removed_layers = layer_removed / layer_total if layer_total else 0.0
    count = f"{layers} of {sum(sizes[s.name] for s in stacks)} layers, removed whole"
    pruned = ",".join(k for k in KINDS if k in kinds)
    missing = [k for k in KINDS if k not in kinds]
    rest = ("the rest of each kept layer is of kinds not pruned" if missing else
            "the rest of each kept layer is its floors and what no head or neuron holds: norms, residual adds, "
            "per-call time")
    advice = (f"prune more kinds (--prune {','.join(KINDS)}) or lower" if missing else
              "rank the structures of all layers together (--pruning_scope global) or lower" if scope == "layer" else
              "lower")
    return (f"pruning target {target} cannot be reached with --prune {pruned}: the layers take {removed_layers:.4f} of "
            f"the layer cost ({count}), and the {' and '.join(k for k in KINDS if k in kinds and k != 'layers')} "
            f"left in the others, at their floors, about {reachable - removed_layers:.4f} more, so about "
            f"{reachable:.4f} can go ({rest}). Pruning stops there and the report gives the sparsity reached; "
            f"{advice} the target to <= {reachable:.4f}.")


def nothing_prunable(groups, sizes: dict[str, int], kinds=("heads", "ffn"), floors: dict[str, int] | None = None,
                     costs: dict[str, float] | None = None) -> str | None:
    """Why the per-group floors leave no structure of any kind in ``kinds`` to prune, or None."""
    rows = _reachable_by_kind(groups, sizes, kinds, floors, costs)
    if not rows or any(reachable > 1e-9 for _, _, reachable in rows):
        return None
    options = " and ".join(f"--{FLOOR_OPTIONS.get(kind, 'the floor')}" for kind, _, _ in rows)
    return (f"nothing to prune: {_floor_clauses(rows, groups)}, so no structure can be removed. Give {options} below "
            "what a layer has, or prune other kinds (--prune).")


def _select_in_group(score: torch.Tensor, mask: torch.Tensor, ratio: float, floor: int) -> torch.Tensor:
    n = mask.numel()
    already = int((mask < 0.5).sum())
    target = max(already, min(round(ratio * n), n - _floor_for(n, floor)))
    ranked = score.detach().float().cpu().clone()
    ranked[mask.cpu() < 0.5] = -math.inf  # pruned ones first, so they stay pruned
    order = torch.argsort(ranked, stable=True)
    new = torch.ones_like(mask)
    new[order[:target].to(mask.device)] = 0
    return new


def _select_global(scores, current, ratio, floor, costs, normalize=True):
    entries = []  # (normalised score, group, index)
    budget_total, pruned_cost = 0.0, 0.0
    alive_count = {}
    for name, mask in current.items():
        alive = mask.cpu() >= 0.5
        units = [structure_cost(costs, name, index) for index in range(mask.numel())]
        budget_total += sum(units)
        pruned_cost += sum(unit for unit, kept in zip(units, alive.tolist()) if not kept)
        alive_count[name] = int(alive.sum())
        score = scores[name].detach().float().cpu()
        norm = score[alive].norm()
        normalised = score / norm if norm > 0 and normalize else score
        entries += [(float(normalised[i]), name, i) for i in torch.nonzero(alive).flatten().tolist()]
    new = {name: mask.clone() for name, mask in current.items()}
    target_cost = ratio * budget_total
    for _, name, index in sorted(entries, key=lambda e: e[0]):
        if pruned_cost >= target_cost - 1e-9:
            break
        n = current[name].numel()
        if alive_count[name] <= _floor_for(n, floor):
            continue
        unit = structure_cost(costs, name, index)
        if pruned_cost + unit > target_cost + 0.5 * unit:
            continue  # it would overshoot by more than half its cost: try cheaper ones (equal costs: nearest count)
        new[name][index] = 0
        alive_count[name] -= 1
        pruned_cost += unit
    return new
