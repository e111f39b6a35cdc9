"""The ``model_type`` a pruned folder is saved under, so stock transformers asks for ``trust_remote_code``.

A saved pruned BERT's ``config.json`` says ``"model_type": "adaprune_bert"``. Stock transformers does not know
that type, finds ``auto_map["AutoConfig"]`` and refuses to load without ``trust_remote_code=True`` (with the
message saying so), where ``"bert"`` would have made it build a dense BERT and fail on the first pruned weight
with a bare size mismatch. Once loaded, the config *is* the family's config class (same name, same
``model_type``): ``pipeline()``, the auto mappings, tokenizer and feature-extractor lookups and every
``config.model_type == "whisper"`` check in transformers see the stock family. Only the JSON carries the
marker, written by :meth:`PrunedConfigMixin.to_json_string` and removed again when the file is read.

The mixin is copied into the shipped ``modeling_adaprune.py``; it imports nothing but ``json`` (stdlib).
"""

from __future__ import annotations

import functools
import sys

MODEL_TYPE_PREFIX = "adaprune_"


class PrunedConfigMixin:
    """Mixed into a transformers config class: reads and writes ``model_type`` as ``adaprune_<family>``."""

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if str(config_dict.get("model_type", "")).startswith("adaprune_"):
            config_dict["model_type"] = cls.model_type  # the family's own type, as the stock class expects
        return config_dict, kwargs

    def to_json_string(self, use_diff: bool = True) -> str:
        import json  # as transformers' own to_json_string, plus the marker

        config_dict = self.to_diff_dict() if use_diff else self.to_dict()
        encode = getattr(self, "_encode_special_floats", None)  # +/-inf and NaN, where transformers has it
        config_dict = encode(config_dict) if encode else config_dict
        config_dict["model_type"] = "adaprune_" + type(self).model_type
        return json.dumps(config_dict, indent=2, sort_keys=True) + "\n"


def base_model_type(model_type: str) -> str:
    """``adaprune_bert`` -> ``bert`` (folders saved before the marker say ``bert`` already)."""
    return model_type.removeprefix(MODEL_TYPE_PREFIX)


def transformers_base(cls: type) -> type | None:
    """The transformers class ``cls`` is, or extends (a pruned model or marked config class is a subclass)."""
    import transformers

    return next((c for c in cls.__mro__ if getattr(transformers, c.__name__, None) is c), None)


def shipped_code_base(cls: type) -> type:
    """A class loaded from a folder's ``modeling_adaprune.py`` (``trust_remote_code=True``) -> the transformers class
    it extends; any other class as it is. Saved as the loaded class, transformers would treat the model as remote
    code and copy hf_adaprune's own modules beside it (and point ``auto_map`` at them)."""
    if cls.__module__.rpartition(".")[2] != "modeling_adaprune":
        return cls
    return transformers_base(cls)


def pruned_config_class(base_class: type) -> type:
    """``base_class`` with :class:`PrunedConfigMixin`, under the same name (transformers looks configs up by name)."""
    if issubclass(base_class, PrunedConfigMixin):
        return base_class
    return _pruned_config_class(shipped_code_base(base_class))


@functools.cache
def _pruned_config_class(base_class: type) -> type:
    cls = type(base_class.__name__, (PrunedConfigMixin, base_class), {"__module__": __name__})
    setattr(sys.modules[__name__], base_class.__name__, cls)  # picklable by reference
    from .load import register_pruned_auto_classes  # here: load imports this module

    register_pruned_auto_classes(cls)
    return cls


def __getattr__(name: str):
    """A marked config class asked for by name (unpickling in a process that has not made it yet): made from the
    transformers config class of that name."""
    import transformers

    base = getattr(transformers, name, None) if not name.startswith("_") else None
    if isinstance(base, type) and issubclass(base, transformers.PretrainedConfig):
        return pruned_config_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mark_config(config):
    """Give ``config`` its marked class in place (same object and values)."""
    config.__class__ = pruned_config_class(type(config))
    return config
