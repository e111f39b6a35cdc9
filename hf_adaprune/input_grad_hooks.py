"""The hooks and flags gradient checkpointing leaves on a model, kept across work that removes or replaces modules.

``gradient_checkpointing_enable`` (transformers) puts a forward hook on each input embedding
(``enable_input_require_grads``: their output requires gradients, so checkpointed layers get gradients) and keeps
the handles on the model (``_require_grads_hooks``), and sets ``gradient_checkpointing`` with its
``_gradient_checkpointing_func`` on the modules that checkpoint. A function that swaps an embedding module
(:func:`~hf_adaprune.deploy.factor_embeddings`) or rebuilds a stack (Marian's decoder vocabulary) would leave the
handles pointing at modules no longer in the model (``copy.deepcopy`` then fails: "cannot create weak reference to
'NoneType' object") and the new modules unhooked and not checkpointed.
"""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def without_input_grad_hooks(model: nn.Module):
    """The model without the hooks gradient checkpointing puts on its input embeddings, put back after on the
    input embeddings the model has then (the same ones, or those that replaced them meanwhile)."""
    owners = [module for module in model.modules() if getattr(module, "_require_grads_hooks", None)]
    for owner in owners:
        owner.disable_input_require_grads()
    try:
        yield model
    finally:
        for owner in owners:
            owner.enable_input_require_grads()


def checkpointing_flags(model: nn.Module) -> dict[str, tuple]:
    """Each checkpointing module's ``(gradient_checkpointing, _gradient_checkpointing_func)``, by name."""
    return {name: (module.gradient_checkpointing, getattr(module, "_gradient_checkpointing_func", None))
            for name, module in model.named_modules() if getattr(module, "gradient_checkpointing", False)}


def restore_checkpointing_flags(model: nn.Module, flags: dict[str, tuple]) -> None:
    """Put :func:`checkpointing_flags` back on the modules of the same names (a rebuilt stack's new modules)."""
    modules = dict(model.named_modules())
    for name, (enabled, function) in flags.items():
        module = modules.get(name)
        if module is not None and hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = enabled
            if function is not None:
                module._gradient_checkpointing_func = function
