# Copyright hf_adaprune authors. Apache-2.0.
"""Loads a model pruned by hf_adaprune with nothing but torch and transformers.

This file is copied next to the weights of every saved pruned model and named in
``config.json``'s ``auto_map``, so ``AutoModel...from_pretrained(dir,
trust_remote_code=True)`` works where hf_adaprune is not installed. It must stay
self-contained: no import of hf_adaprune.

``config.adaprune["layout"]`` lists every module whose shape differs from the
dense architecture and every attribute the forward pass reads (head counts).
The model is built dense, then those modules are swapped for ones of the pruned
shape before the weights are loaded into them.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

LAYOUT_VERSION = 1


class EmptyAttention(nn.Module):
    """Stands in for an attention block whose heads were all pruned.

    The attention then contributes a constant: the bias of its output projection
    (kept as a zero-input linear under its original name when it lives inside the
    block) or nothing (a zero-width tensor, when the projection follows the block).
    """

    is_empty_attention = True

    def __init__(self, output_name: str | None = None, output: nn.Module | None = None, extra_outputs: int = 0):
        super().__init__()
        self.output_name = output_name
        self.extra_outputs = extra_outputs
        if output_name is not None:
            self.add_module(output_name, output)

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.output_name is not None:
            out = getattr(self, self.output_name)(out)
        return (out, None) + (None,) * self.extra_outputs


def _parent_and_name(root: nn.Module, path: str):
    parent_path, _, name = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), name


def _linear_like(old: nn.Module | None, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    ref = getattr(old, "weight", None)
    kwargs = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    return nn.Linear(in_features, out_features, bias=bias, **kwargs)


def apply_pruned_layout(base_model: nn.Module, layout: dict) -> None:
    """Reshape ``base_model`` in place to the pruned layout (weights are left uninitialised)."""
    if layout.get("version", LAYOUT_VERSION) > LAYOUT_VERSION:
        raise ValueError(f"pruned layout version {layout['version']} is newer than this loader ({LAYOUT_VERSION})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a zero-width linear warns that its init is a no-op
        _swap_modules(base_model, layout.get("modules", {}))
    for path, value in layout.get("attributes", {}).items():
        parent_path, _, attr = path.rpartition(".")
        setattr(base_model.get_submodule(parent_path), attr, value)


def _swap_modules(base_model: nn.Module, modules: dict) -> None:
    for path, spec in modules.items():
        parent, name = _parent_and_name(base_model, path)
        old = getattr(parent, name, None)
        kind = spec["type"]
        if kind == "Linear":
            new = _linear_like(old, spec["in_features"], spec["out_features"], spec["bias"])
        elif kind == "Embedding":
            new = nn.Embedding(spec["num_embeddings"], spec["embedding_dim"])
            if old is not None:
                new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        elif kind == "EmptyAttention":
            output = None
            if spec.get("output_name") is not None:
                out = spec["output"]
                output = _linear_like(
                    getattr(old, spec["output_name"], None), 0, out["out_features"], out["bias"]
                )
            new = EmptyAttention(spec.get("output_name"), output, spec.get("extra_outputs", 0))
        else:
            raise ValueError(f"unknown module type {kind!r} in pruned layout at {path!r}")
        setattr(parent, name, new)


class PrunedModelMixin:
    """Mixed into a transformers model class: builds the pruned shapes, refuses partial loads."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        record = getattr(config, "adaprune", None)
        if record:
            apply_pruned_layout(self.base_model, record["layout"])

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        layers = _pruned_layers(model.config)
        prefix = model.base_model_prefix + "."
        missing = [
            key for key in info.get("missing_keys", [])
            if any((key[len(prefix):] if key.startswith(prefix) else key).startswith(layer) for layer in layers)
        ]
        mismatched = info.get("mismatched_keys", [])
        if missing or mismatched:
            raise ValueError(
                "The weights do not match the pruned structure recorded in config.json "
                f"(missing: {sorted(missing)[:8]}, shape mismatches: {list(mismatched)[:8]}). "
                "The folder is inconsistent; refusing to re-initialise those layers."
            )
        return (model, info) if wants_info else model


def _pruned_layers(config) -> set[str]:
    """Module prefixes of the layers holding pruned groups (``encoder.layer.3.``)."""
    groups = (getattr(config, "adaprune", None) or {}).get("groups", {})
    return {name.rpartition(".")[0] + "." for name in groups}
