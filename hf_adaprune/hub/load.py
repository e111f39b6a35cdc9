"""Load a pruned folder with hf_adaprune installed (no ``trust_remote_code`` needed)."""

from __future__ import annotations

import functools

import transformers
from transformers import AutoConfig

from ..layout import PrunedModelMixin, read_record
from .remote_code import pruned_class_name


@functools.cache
def pruned_class(base_class: type) -> type:
    """``base_class`` with :class:`PrunedModelMixin` mixed in (one class per base class)."""
    return type(pruned_class_name(base_class.__name__), (PrunedModelMixin, base_class), {})


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
            architecture = (config.architectures or [None])[0]
            base_class = getattr(transformers, architecture or "", None)
            if base_class is None:
                raise ValueError(f"cannot tell which model class to build from architectures={config.architectures}")
        return pruned_class(base_class).from_pretrained(path, config=config, **kwargs)
