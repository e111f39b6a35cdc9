"""Load a pruned folder with hf_adaprune installed (no ``trust_remote_code`` needed)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import sys
from pathlib import Path

import transformers
from transformers import CONFIG_MAPPING, PretrainedConfig

try:  # transformers 5: what each model class can record, by class name (private; absent in other releases)
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
except ImportError:  # pragma: no cover
    _CAN_RECORD_REGISTRY = None

from ..engine.masks import get_masks
from ..families import get_adapter
from ..families.registry import family_of
from ..layout import PrunedModelMixin, read_record
from .config_marker import base_model_type, mark_config, pruned_config_class, shipped_code_base
from .remote_code import missing_stacks, set_auto_map, short_cache_problem, write_remote_code
from .save import remove_stale_weight_files, save_beside_model, weight_file_states

logger = logging.getLogger(__name__)


class SavesRemoteCode:
    """``save_pretrained`` (so also ``push_to_hub`` and ``Trainer.save_model``) writes the folder any
    remote-code model has: ``auto_map`` in config.json and ``modeling_adaprune.py`` next to the weights."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        get_adapter(self)  # refused before anything is written: the remote code needs the family's adapter
        masks = get_masks(self)
        if masks is not None and any(bool((mask < 0.5).any()) for mask in masks.masks.values()) \
                and not Path(save_directory).name.startswith("checkpoint-"):  # a Trainer's checkpoint keeps them apart
            logger.warning("%s has pruning masks attached that remove structures, which save_pretrained does not "
                           "save: it writes the unmasked weights. compact(model) first, or save with "
                           "save_pruned(model, folder), which compacts", type(self).__name__)
        mark_config(self.config)  # model_type adaprune_<family> in config.json
        set_auto_map(self)
        before = weight_file_states(save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)
        if (args[0] if args else kwargs.get("is_main_process", True)):
            write_remote_code(self, save_directory)
            # weight files of an earlier save that this one did not rewrite (a single file where shards were
            # written now, or an index where one file was): transformers would load them, as save_pruned knows
            after = weight_file_states(save_directory)
            unwritten = {name for name, state in before.items() if after.get(name) == state}
            remove_stale_weight_files(Path(save_directory), unwritten, Path(save_directory), set(after) - unwritten)

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        # every upload of a model goes through here: save_pretrained(push_to_hub=True) uploads at the end of
        # transformers' own save_pretrained, before the one above writes the remote code the auto_map points at
        write_remote_code(self, working_dir)
        for extra in getattr(self, "_adaprune_upload_extras", ()):  # save_pruned's tokenizer / processor
            save_beside_model(extra, working_dir)
        card = getattr(self, "_adaprune_upload_card", None)  # save_pruned into a folder with a README.md of its own
        if card is not None:
            (Path(working_dir) / "README.md").write_text(card)
        return super()._upload_modified_files(working_dir, *args, **kwargs)


def pruned_class(base_class: type) -> type:
    """``base_class`` with :class:`PrunedModelMixin` mixed in, under its own name: transformers infers the
    task (model card, ``pipeline``) from the class name. A class loaded from a folder's remote code gives the
    class its transformers class gives (one class per name: pickled by reference)."""
    if issubclass(base_class, SavesRemoteCode):
        return base_class
    return _pruned_class(shipped_code_base(base_class))


@functools.cache
def _pruned_class(base_class: type) -> type:
    name = base_class.__name__
    cls = type(name, (SavesRemoteCode, PrunedModelMixin, base_class), {"__module__": __name__})
    setattr(sys.modules[__name__], name, cls)  # picklable by reference
    return cls


def __getattr__(name: str):
    """A pruned class asked for by name (unpickling a pruned model in a process that has not made its class yet):
    made from the transformers class of that name."""
    base = getattr(transformers, name, None) if not name.startswith("_") else None
    if isinstance(base, type) and issubclass(base, transformers.PreTrainedModel):
        return pruned_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_pruned_auto_classes(config_class: type) -> None:
    """Make transformers' auto classes build the pruned classes from a marked ``config_class`` (a pruned model's
    config, ``load_pruned_config``'s): ``AutoModelFor...from_config(config)`` builds the pruned shapes its record
    gives instead of the dense stock model (transformers matches configs to classes by the config class's name,
    which is the stock one's)."""
    from .remote_code import _auto_mappings

    for auto_name, table in _auto_mappings().items():
        names = table.get(config_class.model_type)
        name = names[0] if isinstance(names, (tuple, list)) else names
        auto, stock = getattr(transformers, auto_name, None), getattr(transformers, name or "", None)
        # a table may map the family's model_type to a class of another config (qwen2 -> JevForDecision)
        if isinstance(auto, type) and isinstance(stock, type) and issubclass(config_class, stock.config_class):
            auto.register(config_class, pruned_class(stock), exist_ok=True)


def as_pruned(model):
    """Give a compacted ``model`` its pruned class (same object, same weights), so that it saves as one."""
    model.__class__ = pruned_class(type(model))
    if _CAN_RECORD_REGISTRY is not None:
        # transformers 5 looks up what a model can record (hidden states, attentions) by its class name, filled in
        # __init__: without this, a swapped bare model silently ignores output_hidden_states / output_attentions
        _CAN_RECORD_REGISTRY[model] = getattr(model, "_can_record_outputs", None)
    return model


# where a folder or Hub repo is read from: the config and the weights must be read from the same place
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


def load_pruned_config(path, **kwargs):
    """The config of a pruned folder as its family's (marked) config class; no remote code runs.

    ``kwargs``: the Hub arguments (``revision``, ``subfolder``, ``cache_dir``, ...) and, as for any
    ``from_pretrained``, config values to override (``return_unused_kwargs=True`` returns the others).
    A dense folder's config loads too (its family's class; saved again it would say ``adaprune_<family>``)."""
    config_dict, _ = PretrainedConfig.get_config_dict(path, **{k: v for k, v in kwargs.items() if k in HUB_KWARGS})
    if not config_dict:
        raise ValueError(f"{path} holds no config.json: give the folder a pruned model was saved to")
    model_type = base_model_type(str(config_dict.get("model_type", "")))
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{path}: unknown model_type {config_dict.get('model_type')!r} in config.json")
    return pruned_config_class(CONFIG_MAPPING[model_type]).from_pretrained(path, **kwargs)


# set while a trainer reads its own checkpoint's weights (the masks come from its pruning_state.pt): not refused
_READING_CHECKPOINT = contextvars.ContextVar("adaprune_reading_checkpoint", default=False)


@contextlib.contextmanager
def reading_checkpoint():
    """Within it, :meth:`AutoPrunedModel.from_pretrained` reads a pruning run's checkpoint folder (``pruning_state.pt``
    beside the weights, trainer.checkpoint.PRUNING_STATE_FILE), which it otherwise refuses: for a trainer that puts
    the checkpoint's masks back itself."""
    token = _READING_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _READING_CHECKPOINT.reset(token)


class AutoPrunedModel:
    """``AutoPrunedModel.from_pretrained(dir)`` loads the class the model was saved as;
    ``auto_class=AutoModel`` (or any ``AutoModelFor...``) picks another head."""

    @staticmethod
    def from_pretrained(path, auto_class=None, **kwargs):
        folder = os.path.join(path, kwargs.get("subfolder") or "")  # the folder the weights are read from
        if os.path.isfile(os.path.join(folder, "pruning_state.pt")) and not _READING_CHECKPOINT.get():
            raise ValueError(f"{os.path.normpath(folder)} is a pruning run's checkpoint: its weights are those the "
                             "run trains, under masks kept in pruning_state.pt, which no loader applies (the model "
                             "would come back as it was before this run pruned it). Resume the run from it "
                             "(trainer.train(resume_from_checkpoint=...)), or load the model the run saved")
        if os.path.isfile(os.path.join(folder, "int8.json")):
            raise ValueError(f"{folder} holds int8 weights written by hf_adaprune's save_int8, which no float loader "
                             "reads: load it with hf_adaprune.deploy.load_int8(folder)")
        model_class, config, kwargs = pruned_model_class(path, auto_class, **kwargs)
        return model_class.from_pretrained(path, config=config, **kwargs)


def same_family(config: PretrainedConfig, config_class: type) -> bool:
    """Whether a model class taking ``config_class`` serves ``config``: its own class, or a config class of the
    same hf_adaprune family (a T5EncoderModel built on an MT5Config, a RoBERTa class on an XLM-R config)."""
    if isinstance(config, config_class):
        return True
    family = family_of(base_model_type(str(getattr(config, "model_type", ""))))
    return family is not None and family is family_of(getattr(config_class, "model_type", None))


def pruned_model_class(path, auto_class=None, **kwargs) -> tuple[type, PretrainedConfig, dict]:
    """The pruned class :meth:`AutoPrunedModel.from_pretrained` builds for the folder ``path``, its config, and the
    ``kwargs`` left for the class's ``from_pretrained`` (config values among them go into the config)."""
    config = kwargs.pop("config", None)
    config_given = config is not None
    if config is None:  # as transformers' auto classes: config values among kwargs go into the config
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        given = dict(kwargs)
        overrides = {k: v for k, v in kwargs.items() if k not in ("dtype", "torch_dtype", "quantization_config")}
        config, kwargs = load_pruned_config(path, return_unused_kwargs=True, **hub, **overrides)
        kwargs.update({k: given[k] for k in ("dtype", "torch_dtype", "quantization_config") if k in given}, **hub)
    if not read_record(config, f"{path}/config.json"):
        if config_given:
            raise ValueError("the config passed has no hf_adaprune record (config.adaprune): leave config out, "
                             f"or pass AutoConfig.from_pretrained({str(path)!r}, trust_remote_code=True)")
        raise ValueError(f"{path} holds no hf_adaprune record (config.adaprune); load it with transformers directly")
    if auto_class is not None:
        mapping = getattr(auto_class, "_model_mapping", None)
        if mapping is None:
            raise TypeError(f"auto_class must be a transformers auto class (transformers.AutoModel, "
                            f"AutoModelForSequenceClassification, ...), got {auto_class!r}")
        if type(config) not in mapping:
            raise ValueError(f"{getattr(auto_class, '__name__', auto_class)} has no {config.model_type} model "
                             f"class: pass an AutoModel... class that maps {type(config).__name__}, or leave "
                             f"auto_class out for the saved class ({(config.architectures or ['?'])[0]})")
        base_class = mapping[type(config)]
        problem = short_cache_problem(config, base_class.__name__)
        if problem:
            raise ValueError(problem)
        lacking = missing_stacks(config, base_class.__name__)
        if lacking:  # as the stock loader, which fails on the sizes, instead of random dense layers
            raise ValueError(f"{path} holds a pruned {config.architectures[0]}, which has no {', '.join(lacking)}: "
                             f"{base_class.__name__} would build {'it' if len(lacking) == 1 else 'them'} dense "
                             "with random weights. Load it with a head of the stacks it has, or leave auto_class "
                             "out for the saved class")
    else:
        architecture = (config.architectures or [""])[0] or ""
        # folders saved before classes kept their names say PrunedBert...: build from the transformers class
        base_class = getattr(transformers, architecture, None) or getattr(
            transformers, architecture.removeprefix("Pruned"), None)
        if base_class is None:
            raise ValueError(f"cannot tell which model class to build from architectures={config.architectures}")
        if not (isinstance(base_class, type) and issubclass(base_class, transformers.PreTrainedModel)
                and same_family(config, base_class.config_class)):
            raise ValueError(f"{path}/config.json: architectures={config.architectures} names no "
                             f"{config.model_type} model class of transformers; restore config.json, or pass "
                             "auto_class (e.g. AutoModelForSequenceClassification)")
    return pruned_class(base_class), config, kwargs
