"""Physical removal: slice pruned heads and neurons out of the weight matrices.

``compact(model)`` works in three steps: it records the pruned layout (new module
shapes, head counts, sliced per-head parameters, kept heads of shared-bias
attentions) together with the sliced weights, applies that layout with
:func:`hf_adaprune.layout.apply_layout` (the function that also rebuilds a saved
model) and loads the sliced weights into it. The record ends up in
``model.config.adaprune``.

Masked whole layers are then deleted from their ``ModuleList`` (:func:`remove_layers`): the
config's layer count, the KV-cache layer indices and every path in the record follow the
renumbering, and a removed first layer hands on what the later ones read from it (T5's and
WavLM's relative position bias), so stock transformers builds the smaller model from the config.
An audio classifier weighing every hidden state (``use_weighted_layer_sum``) gets one weight per
kept state, a removed layer's weight folded into the state it copies.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .engine.masks import detach_masks, get_masks, structure_count
from .families import HeadGroup, LayerGroup, find_groups, get_adapter, layer_of_group
from .families.registry import check_transformers_model
from .families.whisper import renumber_alignment_heads
from .layout import (TABLES, apply_layout, empty_record, layout_of_present_stacks, linear_spec, parent_and_name,
                     read_record, set_attribute, write_record)

logger = logging.getLogger(__name__)


def _expand_heads(kept: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (kept[:, None] * head_dim + torch.arange(head_dim, device=kept.device)[None, :]).flatten()


def _in_every_part(rows: torch.Tensor, part: int, parts: int) -> torch.Tensor:
    """``rows`` of the first of ``parts`` stacked blocks of ``part`` rows, and the same rows of the others (a fused
    q/k/v or gated-FFN linear)."""
    return torch.cat([rows + index * part for index in range(parts)]) if parts > 1 else rows


class _Plan:
    """The layout changes of one compaction and the weights that go into the new shapes."""

    def __init__(self, base_model: nn.Module):
        self.base = base_model
        self.layout = {name: {} for name in TABLES}
        self.weights: dict[str, torch.Tensor] = {}  # parameter path (under base_model) -> sliced tensor
        self.frozen: set[str] = set()  # parameter paths that did not require grad
        self.forgotten: list[str] = []  # module paths whose earlier layout entries no longer apply

    def _weight(self, path: str, value: torch.Tensor, requires_grad: bool) -> None:
        self.weights[path] = value.detach()
        if not requires_grad:
            self.frozen.add(path)

    def linear(self, path: str, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
        """Record ``path`` (a Linear) keeping ``rows`` of its outputs and ``cols`` of its inputs."""
        linear = self.base.get_submodule(path)
        weight, bias = linear.weight, linear.bias
        new_weight = weight if rows is None else weight.index_select(0, rows.to(weight.device))
        new_weight = new_weight if cols is None else new_weight.index_select(1, cols.to(weight.device))
        self.layout["modules"][path] = {"type": "Linear", "in_features": new_weight.shape[1],
                                        "out_features": new_weight.shape[0], "bias": bias is not None}
        self._weight(f"{path}.weight", new_weight, weight.requires_grad)
        if bias is not None:
            new_bias = bias if rows is None else bias.index_select(0, rows.to(bias.device))
            self._weight(f"{path}.bias", new_bias, bias.requires_grad)

    def per_head_parameter(self, path: str, dim: int, kept: torch.Tensor) -> None:
        module_path, _, name = path.rpartition(".")
        module = self.base.get_submodule(module_path)
        param = getattr(module, name)
        sliced = param.index_select(dim, kept.to(param.device))
        if isinstance(module, nn.Embedding):
            self.layout["modules"][module_path] = {"type": "Embedding", "num_embeddings": sliced.shape[0],
                                                   "embedding_dim": sliced.shape[1]}
        elif name in module._parameters:  # a plain parameter of the module, e.g. WavLM's gru_rel_pos_const
            self.layout["parameters"][path] = list(sliced.shape)
        else:
            raise NotImplementedError(f"per-head parameter {path!r} lives in a {type(module).__name__}")
        self._weight(path, sliced, param.requires_grad)

    def attribute(self, path: str, value) -> None:
        module_path, _, name = path.rpartition(".")
        if hasattr(self.base.get_submodule(module_path), name):
            self.layout["attributes"][path] = value

    def empty_attention(self, group: HeadGroup) -> None:
        """Record ``group.core`` as an :class:`~hf_adaprune.layout.EmptyAttention` keeping its output bias."""
        spec = {"type": "EmptyAttention", "output_name": None}
        if group.output_attentions_arg is not None:
            spec["output_attentions_arg"] = group.output_attentions_arg
        # decoder attentions keep their KV cache entries consistent (see EmptyAttention)
        if group.role in ("decoder_self", "cross"):
            cache_layer = getattr(self.base.get_submodule(group.core), "layer_idx", None)
            if cache_layer is not None:
                spec.update(cache_layer=int(cache_layer), cross_attention=group.role == "cross")
        # an earlier compaction's entries under the core (its sliced q/k/v) describe modules that are now gone
        self.forgotten.append(group.core)
        no_inputs = torch.zeros(0, dtype=torch.long)
        if group.output_in_core:
            name = group.output[len(group.core) + 1:]
            output = self.base.get_submodule(group.output)
            spec.update(output_name=name, output=dict(linear_spec(output), in_features=0))
            self._weight(f"{group.output}.weight", output.weight[:, :0], output.weight.requires_grad)
            if output.bias is not None:
                self._weight(f"{group.output}.bias", output.bias, output.bias.requires_grad)
        else:
            self.linear(group.output, cols=no_inputs)  # zero-input linear: the output bias alone
        self.layout["modules"][group.core] = spec

    def apply(self, layout: dict) -> None:
        """Apply the recorded changes to the model, load the sliced weights, merge into ``layout``."""
        for prefix in self.forgotten:
            for table in layout.values():
                for key in [k for k in table if k == prefix or k.startswith(prefix + ".")]:
                    del table[key]
        apply_layout(self.base, self.layout)
        with torch.no_grad():
            for path, value in self.weights.items():
                target = self.base.get_parameter(path)
                target.copy_(value)
                target.requires_grad_(path not in self.frozen)
        for name, table in self.layout.items():
            layout[name].update(table)


def _plan_heads(plan: _Plan, group: HeadGroup, kept: torch.Tensor, original: dict) -> None:
    """``kept``: indices among the group's current heads; ``original``: its record (original indices and count)."""
    if kept.numel() == 0 and group.shared_bias is None:
        plan.empty_attention(group)
        return
    count = structure_count(plan.base, group)
    for path in group.row_linears:
        unit = group.rows_per_structure(path)
        plan.linear(path, rows=_in_every_part(_expand_heads(kept, unit), count * unit, group.row_parts))
    plan.linear(group.output, cols=_expand_heads(kept, group.columns_per_structure))
    for path, dim in group.per_head_params:
        plan.per_head_parameter(path, dim, kept)
    for path in group.head_count_attrs:
        plan.attribute(path, int(kept.numel()))
    for path in group.width_attrs:
        plan.attribute(path, int(kept.numel()) * group.columns_per_structure)
    _plan_shared_bias(plan, group, original)


def _plan_shared_bias(plan: _Plan, group: HeadGroup, original: dict) -> None:
    """An attention of a shared position bias keeps the forward it ran under masks (the heads it kept among the
    original ones), also when it kept every head: WavLM's stock forward returns head-averaged attention weights,
    the masked model's per-head ones, so a reloaded layer gives what the in-memory one gave."""
    if group.shared_bias is not None:
        plan.layout["shared_bias"][group.core] = {
            "kind": group.shared_bias.adaprune_kind, "kept_heads": list(original["kept"]),
            "num_heads": original["original"],
        }


def _plan_neurons(plan: _Plan, group, kept: torch.Tensor) -> None:
    part = structure_count(plan.base, group)
    for path in group.inputs:
        plan.linear(path, rows=_in_every_part(kept, part, group.row_parts))
    plan.linear(group.output, cols=kept)
    for path in group.width_attrs:
        plan.attribute(path, int(kept.numel()))


def compact(model: nn.Module) -> dict:
    """Remove the masked heads and neurons of ``model`` in place; returns the record as
    :func:`~hf_adaprune.layout.read_record` reads it (kept indices as lists; ``model.config.adaprune`` holds
    the saved form).

    The masks are detached afterwards (the model has no pruned structure left to
    gate). A model without masks keeps its shapes. Either way the model gets its
    pruned class (a subclass of its own), whose ``save_pretrained`` writes a
    folder stock transformers loads with ``trust_remote_code=True``.

    The projections that lose rows or columns are new ``nn.Linear`` modules (and removed layers leave their
    ``ModuleList``): hooks registered on them, and an optimizer holding their parameters, do not follow;
    register hooks and build optimizers after compacting. Neither does a wrapper for several processes
    (``DistributedDataParallel``, ``accelerator.prepare``), which is refused here: unwrap the model, compact it,
    prepare (wrap) it again, then build the optimizer. The masks detached here refuse later ``set`` / ``update``
    (``attach_masks(model)`` again to prune on), and an importance that scored the model before refuses to go on.
    """
    from .hub.load import as_pruned  # here: hub saves through this module

    get_adapter(model)  # an unsupported family is refused before its class or config changes
    masks = get_masks(model)
    record = read_record(model.config) or empty_record()
    check_record_fits(model, record)
    if masks is not None:
        _compact_masked(model, masks, record)
        detach_masks(model)
    write_record(model.config, record)
    as_pruned(model)
    return record


def check_record_fits(model: nn.Module, record: dict) -> None:
    """Refuse a pruning record that describes shapes ``model`` does not have: a config copied from a pruned model
    into a freshly built (dense) one. Compacting it would read kept lists of another size, and a saved folder would
    not load."""
    base, problems = model.base_model, []
    layout = layout_of_present_stacks(base, record["layout"])  # a one-stack head class keeps one stack's entries
    for path, spec in layout.get("modules", {}).items():
        if spec.get("type") != "Linear":
            continue
        module = _submodule_or_none(base, path)
        if module is None:
            problems.append(f"{path} is missing")
        elif (getattr(module, "out_features", None), getattr(module, "in_features", None)) not in (
                (spec["out_features"], spec["in_features"]), (None, None)):  # a linear (int8 ones too) of other size
            problems.append(f"{path} is {module.out_features}x{module.in_features}, the record says "
                            f"{spec['out_features']}x{spec['in_features']}")
    for path, shape in layout.get("parameters", {}).items():
        parent, name = parent_and_name(base, path)
        parameter = getattr(parent, name, None)
        if parameter is not None and list(parameter.shape) != list(shape):
            problems.append(f"{path} has shape {list(parameter.shape)}, the record says {list(shape)}")
    for stack, entry in record["layers"].items():
        layers = _submodule_or_none(base, stack)
        if layers is not None and len(layers) != len(entry["kept"]):
            problems.append(f"{stack} has {len(layers)} layers, the record says {len(entry['kept'])}")
    for group in find_groups(model):  # compaction maps kept positions through the record's kept lists
        entry = record["groups"].get(group.name)
        if entry is not None and len(entry["kept"]) != structure_count(base, group):
            problems.append(f"{group.name} has {structure_count(base, group)} {group.kind}, the record keeps "
                            f"{len(entry['kept'])}")
    if problems:
        raise ValueError("model.config.adaprune records a pruned model whose shapes this model does not have ("
                         + "; ".join(problems[:3]) + (f"; {len(problems) - 3} more" if len(problems) > 3 else "")
                         + "): was the model built from a pruned model's config? Load a pruned folder with "
                         "AutoPrunedModel.from_pretrained; for a dense model, drop the record first "
                         "(del model.config.adaprune)")


def _submodule_or_none(base: nn.Module, path: str) -> nn.Module | None:
    try:
        return base.get_submodule(path)
    except AttributeError:
        return None


def _compact_masked(model: nn.Module, masks, record: dict) -> None:
    base = model.base_model
    scaled = [name for name, mask in masks.masks.items() if ((mask > 0) & (mask < 1)).any()]
    if scaled:  # a structure is kept or removed whole: its scale would be lost without a word
        logger.warning("compacting masks with values between 0 and 1 (%s): structures at or above 0.5 are kept "
                       "unscaled, the others removed, so the outputs change", ", ".join(scaled[:3]))
    stacks = [g for g in masks.groups.values() if isinstance(g, LayerGroup)]
    kept_layers = {g.name: masks.kept_indices(g.name) for g in stacks}
    for stack in stacks:  # refuse before any weight is sliced: a refusal leaves the model as it was
        check_layer_removal(stack, kept_layers[stack.name], len(base.get_submodule(stack.name)))
    plan = _Plan(base)
    kept_heads = {}
    for name, group in masks.groups.items():
        where = None if isinstance(group, LayerGroup) else layer_of_group(stacks, name)
        if isinstance(group, LayerGroup) or (where is not None and where[1] not in kept_layers[where[0]]):
            continue  # layers go below; a removed layer's heads and neurons go with it
        kept = torch.tensor(masks.kept_indices(name), dtype=torch.long)
        kept_heads[name] = kept.tolist()
        count = structure_count(base, group)
        previous = record["groups"].get(name)
        original_kept = previous["kept"] if previous else list(range(count))
        record["groups"][name] = {
            "kind": group.kind,
            "role": group.role,
            "original": previous["original"] if previous else count,
            "kept": [original_kept[i] for i in kept.tolist()],
        }
        if kept.numel() == count:
            if isinstance(group, HeadGroup):
                _plan_shared_bias(plan, group, record["groups"][name])
            continue
        if isinstance(group, HeadGroup):
            _plan_heads(plan, group, kept, record["groups"][name])
        else:
            _plan_neurons(plan, group, kept)
    plan.apply(record["layout"])
    for stack in stacks:
        remove_layers(model, stack, kept_layers[stack.name], record)
    # Whisper's word-timestamp heads are (layer, head) positions: they move with the kept layers and heads
    renumber_alignment_heads(model, kept_heads, kept_layers.get("decoder.layers"))


def check_layer_removal(stack: LayerGroup, kept: list[int], count: int) -> None:
    """Refuse keeping ``kept`` of the ``count`` layers of ``stack`` when the stack cannot lose them."""
    if len(kept) == count:
        return
    if not kept:
        raise ValueError(f"cannot remove every layer of {stack.name}: a stack keeps at least one layer")
    if stack.refuse:
        raise ValueError(stack.refuse)
    if stack.keep_last and kept[-1] != count - 1:
        raise ValueError(stack.keep_last)


def remove_layers(model: nn.Module, stack: LayerGroup, kept: list[int], record: dict) -> None:
    """Keep only the layers ``kept`` (current indices) of ``stack``; renumber the model and ``record``."""
    base = model.base_model
    layers = base.get_submodule(stack.name)
    if len(kept) == len(layers):
        return
    check_layer_removal(stack, kept, len(layers))
    if kept[0] != 0:
        for module_path, flag in stack.hand_on:
            owner, name = parent_and_name(layers[0], module_path)
            module = getattr(owner, name, None)
            if module is not None:
                set_attribute(layers[kept[0]], module_path, module)
                set_attribute(layers[kept[0]], flag, True)
    set_attribute(base, stack.name, nn.ModuleList([layers[i] for i in kept]))
    for name in stack.config_lists:
        entries = getattr(model.config, name, None)
        if isinstance(entries, (list, tuple)) and len(entries) == len(layers):
            setattr(model.config, name, [entries[i] for i in kept])
    for index, layer in enumerate(base.get_submodule(stack.name)):
        for module in layer.modules():  # the KV cache is indexed by position in the stack
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
            if getattr(module, "is_empty_attention", False) and getattr(module, "cache_layer", None) is not None:
                module.cache_layer = index
    _fold_layer_weights(model, stack, kept, len(layers))
    setattr(model.config, stack.count_attr, len(kept))
    _renumber_record(record, stack.name, kept)
    previous = record["layers"].get(stack.name)
    original = previous["kept"] if previous else list(range(len(layers)))
    record["layers"][stack.name] = {"role": stack.role, "original": previous["original"] if previous else len(layers),
                                    "kept": [original[i] for i in kept]}


def _fold_layer_weights(model: nn.Module, stack: LayerGroup, kept: list[int], count: int) -> None:
    """Shrink the ``layer_weights`` of a head with ``use_weighted_layer_sum`` (audio classifiers: a softmax-weighted
    sum of the encoder's ``count + 1`` hidden states) to the layers ``kept``, outputs unchanged.

    A removed layer passes its input on, so its hidden state equals the one before it: its weight joins that
    state's (``logsumexp`` of their logits keeps every softmax weight).
    """
    weights = getattr(model, "layer_weights", None)
    if not getattr(model.config, "use_weighted_layer_sum", False) or weights is None or stack.role != "encoder" \
            or weights.numel() != count + 1:
        return
    owner = [0]  # hidden state i + 1 is the output of layer i; each goes to the kept state it equals
    for layer in range(count):
        owner.append(owner[-1] + 1 if layer in kept else owner[-1])
    index = torch.tensor(owner, device=weights.device)
    with torch.no_grad():
        logits = weights.detach().float()
        folded = torch.stack([logits[index == k].logsumexp(0) for k in range(len(kept) + 1)])
    model.layer_weights = nn.Parameter(folded.to(weights.dtype), requires_grad=weights.requires_grad)


def _layer_path_renamer(stack: str, new_index: dict[int, int]):
    """``stack.<old>.rest`` -> ``stack.<new>.rest``; None for a path inside a removed layer; others unchanged."""
    prefix = stack + "."

    def rename(path: str) -> str | None:
        index, _, rest = path[len(prefix):].partition(".") if path.startswith(prefix) else ("", "", "")
        if not index.isdigit():
            return path
        if int(index) not in new_index:
            return None
        return f"{prefix}{new_index[int(index)]}" + (f".{rest}" if rest else "")

    return rename


def _renumber_record(record: dict, stack: str, kept: list[int]) -> None:
    rename = _layer_path_renamer(stack, {old: new for new, old in enumerate(kept)})

    def renamed(table: dict) -> dict:
        return {rename(key): value for key, value in table.items() if rename(key) is not None}

    record["groups"] = renamed(record["groups"])
    record["layout"] = {name: renamed(table) for name, table in record["layout"].items()}
    for path, spec in record["layout"]["modules"].items():
        if spec.get("type") == "EmptyAttention" and spec.get("cache_layer") is not None and \
                path.startswith(stack + "."):
            spec["cache_layer"] = int(path[len(stack) + 1:].partition(".")[0])


def original_path(record: dict | None, path: str) -> str:
    """``path`` (a module of the model as it is now) named by the layer index it had before layers were removed."""
    for stack, info in (record or {}).get("layers", {}).items():
        rename = _layer_path_renamer(stack, dict(enumerate(info["kept"])))
        path = rename(path) or path
    return path


def removed_layers(model: nn.Module) -> list[str]:
    """Layers of the dense model (before any pruning) that ``model`` no longer has, or whose layer mask is 0, named
    by their index in the dense model: the compactions of earlier runs (the record) and this run's masks."""
    from .families import find_layer_groups

    record = read_record(model.config) or empty_record()
    saved = record.get("layers") or {}
    masks = get_masks(model)
    stacks = {stack.name for stack in find_layer_groups(model)}
    removed = []
    for name in sorted(set(saved) | stacks):
        count = len(model.base_model.get_submodule(name)) if name in stacks else 0
        kept = list(saved[name]["kept"]) if name in saved else list(range(count))
        original = saved[name]["original"] if name in saved else count
        mask = masks.masks.get(name) if masks is not None else None
        if mask is not None:
            kept = [index for index, on in zip(kept, mask.tolist()) if on >= 0.5]
        removed += [f"{name}.{index}" for index in range(original) if index not in kept]
    return removed


def was_pruned(model: nn.Module) -> bool:
    """Whether ``model`` carries the record of an earlier compaction that removed something."""
    record = read_record(model.config)
    if record is None:
        return False
    return any(len(g["kept"]) < g["original"] for g in record["groups"].values()) or any(
        len(s["kept"]) < s["original"] for s in (record.get("layers") or {}).values())


def kept_structure(model: nn.Module) -> dict[str, dict]:
    """Per group: kind, original count and kept count (from the record, live masks or the shapes), named by the
    layers of the dense model (a group of a removed layer is absent)."""
    check_transformers_model(model, "kept_structure")
    record = read_record(model.config) or empty_record()
    result = {name: {"kind": g["kind"], "original": g["original"], "kept": len(g["kept"])}
              for name, g in record["groups"].items()}
    masks = get_masks(model)
    base = model.base_model
    stacks = [g for g in masks.groups.values() if isinstance(g, LayerGroup)] if masks is not None else []
    for group in find_groups(model):
        where = layer_of_group(stacks, group.name)
        if where is not None and masks.masks[where[0]][where[1]] < 0.5:  # a masked layer: compaction removes it
            result.pop(group.name, None)
            continue
        count = structure_count(base, group)
        kept = masks.kept_count(group.name) if masks is not None and group.name in masks.masks else count
        original = result.get(group.name, {}).get("original", count)
        result[group.name] = {"kind": group.kind, "original": original, "kept": kept}
    return {original_path(record, name): info for name, info in result.items()}
