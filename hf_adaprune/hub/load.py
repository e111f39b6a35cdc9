"""Load a pruned folder with hf_adaprune installed (no ``trust_remote_code`` needed)."""

from __future__ import annotations

import functools
import sys

import transformers
from transformers import AutoConfig

from ..layout import PrunedModelMixin, read_record
from .remote_code import pruned_class_name, set_auto_map, write_remote_code


class SavesRemoteCode:
    """``save_pretrained`` (so also ``push_to_hub`` and ``Trainer.save_model``) writes the folder any
    remote-code model has: ``auto_map`` in config.json and ``modeling_adaprune.py`` next to the weights."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        class_names = set_auto_map(self)
        super().save_pretrained(save_directory, *args, **kwargs)
        if (args[0] if args else kwargs.get("is_main_process", True)):
            write_remote_code(self, save_directory, class_names)


@functools.cache
def pruned_class(base_class: type, name: str | None = None) -> type:
    """``base_class`` with :class:`PrunedModelMixin` mixed in (one class per base class and name)."""
    name = name or pruned_class_name(base_class.__name__)
    cls = type(name, (SavesRemoteCode, PrunedModelMixin, base_class), {"__module__": __name__})
    setattr(sys.modules[__name__], name, cls)  # picklable by reference
    return cls


def as_pruned(model):
    """Give a compacted ``model`` its pruned class (same object, same weights), so that it saves as one."""
    if not isinstance(model, SavesRemoteCode):
        # keeps its class name: transformers infers the task (model card, pipeline) from it
        model.__class__ = pruned_class(type(model), type(model).__name__)
    return model


class AutoPrunedModel:
    """``AutoPrunedModel.from_pretrained(dir)`` loads the class the model was saved as;
    ``auto_class=AutoModel`` (or any ``AutoModelFor...``) picks another head."""

    @staticmethod
    def from_pretrained(path, auto_class=None, **kwargs):
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
        if not read_record(config, f"{path}/config.json"):
            raise ValueError(f"{path} holds no hf_adaprune record (config.adaprune); load it with transformers directly")
        if auto_class is not None:
            base_class = auto_class._model_mapping[type(config)]
        else:
            architecture = (config.architectures or [""])[0] or ""
            # a pruned model saved again records its own class (PrunedBert...): build from the transformers class
            base_class = getattr(transformers, architecture, None) or getattr(
                transformers, architecture.removeprefix(pruned_class_name("")), None)
            if base_class is None:
                raise ValueError(f"cannot tell which model class to build from architectures={config.architectures}")
        return pruned_class(base_class).from_pretrained(path, config=config, **kwargs)
