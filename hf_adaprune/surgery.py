"""Physical removal: slice pruned heads and neurons out of the weight matrices.

``compact(model)`` turns the masks into smaller ``nn.Linear`` modules, updates the
attributes the forward pass reads (head counts), swaps fully pruned attention
blocks for :class:`EmptyAttention`, and records the result in
``model.config.adaprune`` (kept original indices per group and the module layout
the Hub loader rebuilds).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .families import HeadGroup
from .modeling_adaprune import EmptyAttention, install_shared_bias
from .engine.masks import detach_masks, get_masks, structure_count


def _parent_and_name(root: nn.Module, path: str):
    parent_path, _, name = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), name


def _sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight = weight.index_select(0, rows)
        bias = None if bias is None else bias.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-element init warns; the values are overwritten anyway
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


def _linear_spec(linear: nn.Linear) -> dict:
    return {"type": "Linear", "in_features": linear.in_features, "out_features": linear.out_features,
            "bias": linear.bias is not None}


def _expand_heads(kept: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (kept[:, None] * head_dim + torch.arange(head_dim, device=kept.device)[None, :]).flatten()


class _LayoutWriter:
    """Applies module swaps to the base model and records them for the Hub loader."""

    def __init__(self, base_model: nn.Module, layout: dict):
        self.base, self.layout = base_model, layout

    def replace(self, path: str, module: nn.Module, spec: dict) -> None:
        parent, name = _parent_and_name(self.base, path)
        setattr(parent, name, module)
        self.layout["modules"][path] = spec

    def set_attr(self, path: str, value) -> None:
        parent_path, _, attr = path.rpartition(".")
        module = self.base.get_submodule(parent_path)
        if hasattr(module, attr):
            setattr(module, attr, value)
            self.layout["attributes"][path] = value

    def table(self, name: str) -> dict:
        """A table added in layout version 2 (``parameters``, ``shared_bias``); marks the layout as needing it."""
        self.needs_version(2)
        return self.layout.setdefault(name, {})

    def needs_version(self, version: int) -> None:
        self.layout["version"] = max(self.layout.get("version", 1), version)

    def forget_under(self, prefix: str) -> None:
        for name in ("modules", "attributes", "parameters", "shared_bias"):
            table = self.layout.get(name, {})
            for key in [k for k in table if k.startswith(prefix + ".") or k == prefix]:
                del table[key]


def _compact_heads(writer: _LayoutWriter, group: HeadGroup, kept: torch.Tensor, original: dict) -> None:
    """``kept``: indices among the group's current heads; ``original``: its record (original indices and count)."""
    base = writer.base
    output = base.get_submodule(group.output)
    if kept.numel() == 0 and not group.shared_bias:
        bias_only = _sliced_linear(output, cols=kept)  # zero-input linear: the output bias alone
        # decoder attentions keep their KV cache entries consistent (see EmptyAttention)
        cache_layer, cross = None, group.role == "cross"
        if group.role in ("decoder_self", "cross"):
            cache_layer = getattr(base.get_submodule(group.core), "layer_idx", None)
        writer.forget_under(group.core)
        if group.output_in_core:
            name = group.output[len(group.core) + 1:]
            empty = EmptyAttention(name, bias_only, group.empty_extra_outputs, cache_layer, cross)
            spec = {"type": "EmptyAttention", "output_name": name, "output": _linear_spec(bias_only),
                    "extra_outputs": group.empty_extra_outputs}
        else:
            empty = EmptyAttention(None, None, group.empty_extra_outputs, cache_layer, cross)
            spec = {"type": "EmptyAttention", "output_name": None, "extra_outputs": group.empty_extra_outputs}
            writer.replace(group.output, bias_only, _linear_spec(bias_only))
        if cache_layer is not None:
            spec.update(cache_layer=int(cache_layer), cross_attention=cross)
            writer.needs_version(2)
        writer.replace(group.core, empty, spec)
        return
    rows = _expand_heads(kept, group.head_dim)
    for path in group.row_linears:
        new = _sliced_linear(base.get_submodule(path), rows=rows.to(base.get_submodule(path).weight.device))
        writer.replace(path, new, _linear_spec(new))
    new_out = _sliced_linear(output, cols=rows.to(output.weight.device))
    writer.replace(group.output, new_out, _linear_spec(new_out))
    for path, dim in group.per_head_params:
        _slice_parameter(writer, path, dim, kept)
    for path in group.head_count_attrs:
        writer.set_attr(path, int(kept.numel()))
    for path in group.width_attrs:
        writer.set_attr(path, int(kept.numel()) * group.head_dim)
    if group.shared_bias:
        spec = {"kind": group.shared_bias, "kept_heads": list(original["kept"]), "num_heads": original["original"]}
        install_shared_bias(base.get_submodule(group.core), spec["kind"], spec["kept_heads"], spec["num_heads"])
        writer.table("shared_bias")[group.core] = spec


def _slice_parameter(writer: _LayoutWriter, path: str, dim: int, kept: torch.Tensor) -> None:
    module_path, _, param_name = path.rpartition(".")
    module = writer.base.get_submodule(module_path)
    param = getattr(module, param_name)
    sliced = param.detach().index_select(dim, kept.to(param.device)).clone()
    if isinstance(module, nn.Embedding):
        new = nn.Embedding(sliced.shape[0], sliced.shape[1], device=sliced.device, dtype=sliced.dtype)
        with torch.no_grad():
            new.weight.copy_(sliced)
        writer.replace(module_path, new, {"type": "Embedding", "num_embeddings": sliced.shape[0],
                                          "embedding_dim": sliced.shape[1]})
    elif param_name in module._parameters:  # a plain parameter of the module, e.g. WavLM's gru_rel_pos_const
        setattr(module, param_name, nn.Parameter(sliced, requires_grad=param.requires_grad))
        writer.table("parameters")[path] = list(sliced.shape)
    else:
        raise NotImplementedError(f"per-head parameter {path!r} lives in a {type(module).__name__}")


def _compact_neurons(writer: _LayoutWriter, group, kept: torch.Tensor) -> None:
    base = writer.base
    for path in group.inputs:
        linear = base.get_submodule(path)
        new = _sliced_linear(linear, rows=kept.to(linear.weight.device))
        writer.replace(path, new, _linear_spec(new))
    output = base.get_submodule(group.output)
    new_out = _sliced_linear(output, cols=kept.to(output.weight.device))
    writer.replace(group.output, new_out, _linear_spec(new_out))
    for path in group.width_attrs:
        writer.set_attr(path, int(kept.numel()))


def empty_record() -> dict:
    # version 1 unless something needs the version-2 loader (see _LayoutWriter.needs_version)
    return {"version": 1, "groups": {}, "layout": {"version": 1, "modules": {}, "attributes": {}}}


def compact(model: nn.Module) -> dict:
    """Remove the masked heads and neurons of ``model`` in place; returns ``model.config.adaprune``.

    The masks are detached afterwards (the model has no pruned structure left to
    gate). A model without masks is returned unchanged apart from the record.
    """
    masks = get_masks(model)
    record = getattr(model.config, "adaprune", None) or empty_record()
    if masks is None:
        model.config.adaprune = record
        return record
    base = model.base_model
    writer = _LayoutWriter(base, record["layout"])
    for name, group in masks.groups.items():
        kept = torch.tensor(masks.kept_indices(name), dtype=torch.long)
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
            continue
        if isinstance(group, HeadGroup):
            _compact_heads(writer, group, kept, record["groups"][name])
        else:
            _compact_neurons(writer, group, kept)
    record["version"] = max(record.get("version", 1), record["layout"].get("version", 1))
    detach_masks(model)
    model.config.adaprune = record
    return record


def kept_structure(model: nn.Module) -> dict[str, dict]:
    """Per group: kind, original count and kept count (from the record, live masks or the shapes)."""
    from .families import find_groups

    record = getattr(model.config, "adaprune", None) or empty_record()
    result = {name: {"kind": g["kind"], "original": g["original"], "kept": len(g["kept"])}
              for name, g in record["groups"].items()}
    masks = get_masks(model)
    base = model.base_model
    for group in find_groups(model):
        count = structure_count(base, group)
        kept = int(masks.masks[group.name].sum()) if masks is not None and group.name in masks.masks else count
        original = result.get(group.name, {}).get("original", count)
        result[group.name] = {"kind": group.kind, "original": original, "kept": kept}
    return result
