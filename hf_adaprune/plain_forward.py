"""A model's own forward, without the autocast wrapper that mixed-precision training leaves on it.

Trainer's ``bf16`` / ``fp16`` train through accelerate, which replaces ``model.forward`` on the model object with a
wrapper running under autocast (the original kept as ``model._original_forward``), and the wrapper stays after
training. A graph exported through it, int8 linears fed by it, or a latency timed with it would see half-precision
activations that the saved float32 model never computes. Deploy functions and timings run the plain forward.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


def has_autocast_forward(model: nn.Module) -> bool:
    return "_original_forward" in model.__dict__ and "forward" in model.__dict__


def drop_autocast_forward(model: nn.Module) -> nn.Module:
    """Remove the wrapper from ``model`` (in place: for a copy the caller owns); returns ``model``."""
    if has_autocast_forward(model):
        model.forward = model.__dict__.pop("_original_forward")
    return model


@contextmanager
def plain_forward(model: nn.Module):
    """Within the block ``model`` runs its plain forward; the wrapper is put back after."""
    if not has_autocast_forward(model):
        yield model
        return
    wrapped, original = model.__dict__["forward"], model.__dict__["_original_forward"]
    drop_autocast_forward(model)
    try:
        yield model
    finally:
        model.forward, model._original_forward = wrapped, original
