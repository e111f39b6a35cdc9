"""Every module's own train/eval mode, saved and put back.

``model.train(flag)`` sets the flag on every submodule, so restoring a mode that way loses a caller's mixed modes
(say a model in training whose embeddings were put in eval mode). Functions that run a model in eval mode save
the modes with :func:`training_modes` and put them back with :func:`restore_modes`.
"""

from __future__ import annotations

from torch import nn


def training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(module, module.training) for module in model.modules()]


def restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for module, training in modes:
        module.training = training
