"""Maps a ``config.model_type`` to its family: the function listing its prunable groups and the attention
forward (if any) its pruned models need. The role and kind vocabularies are defined here, once."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from torch import nn

from .base import FamilyAdapter, Group, HeadGroup, LayerGroup

HEAD_ROLES = ("encoder_self", "decoder_self", "cross")
NEURON_ROLES = ("encoder", "decoder")
ROLES = HEAD_ROLES + NEURON_ROLES
KINDS = ("heads", "ffn", "layers")

_FAMILIES: dict[str, FamilyAdapter] = {}


class UnsupportedModelError(ValueError):
    """Raised before any work when a model family has no adapter."""


def register_family(model_types: str | Iterable[str], find_groups: Callable,
                    attention_forward: type | None = None, layer_stacks: Callable | None = None) -> FamilyAdapter:
    """Register a family. ``find_groups(base_model, config)`` lists every group, including attentions emptied
    by an earlier compaction (they are skipped here). ``attention_forward``: the family's shared-bias forward
    (decorated with ``layout.register_shared_bias``), when its groups set ``shared_bias``. ``layer_stacks(base_model,
    config)`` lists its :class:`~.base.LayerGroup` stacks, for removing whole layers. ``model_types``: one
    ``config.model_type`` or several."""
    model_types = (model_types,) if isinstance(model_types, str) else tuple(model_types)
    if not model_types or not all(isinstance(name, str) and name for name in model_types):
        raise TypeError(f"model_types must be a config.model_type (a string) or several, got {model_types!r}")
    for name, function in (("find_groups", find_groups), ("layer_stacks", layer_stacks)):
        if not callable(function) and (name == "find_groups" or function is not None):
            raise TypeError(f"{name} must be a function of (base_model, config), got {function!r}")
    adapter = FamilyAdapter(model_types=model_types, find_groups=find_groups,
                            attention_forward=attention_forward, layer_stacks=layer_stacks)
    for model_type in adapter.model_types:
        _FAMILIES[model_type] = adapter
    return adapter


# families whose position ids start after the padding index: they read max_position_embeddings - (pad + 1) tokens
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")


def readable_positions(config) -> int | None:
    """How many tokens the model's position embeddings can read (None: no such limit)."""
    if getattr(config, "position_biased_input", True) is False:  # DeBERTa-v3: relative positions only, no table
        return None
    positions = getattr(config, "max_position_embeddings", None)
    if positions and config.model_type in OFFSET_POSITIONS:
        # MPNet's embeddings count from padding_idx 1 whatever the config's pad_token_id
        positions -= 2 if config.model_type == "mpnet" else (config.pad_token_id or 0) + 1
    return positions


def decoder_positions(config) -> int | None:
    """How many tokens a decoder's position embeddings can read: Whisper's ``max_target_positions``, else the
    ``max_position_embeddings`` its encoder shares (Marian, BART); None where no table limits it (T5)."""
    return getattr(config, "max_target_positions", None) or readable_positions(config)


def decoder_positions_note(config) -> str:
    """The config field behind decoder_positions, for messages."""
    if getattr(config, "max_target_positions", None):
        return "max_target_positions"
    return positions_note(config)


def shortest_audio(config) -> int | None:
    """The fewest raw audio samples a model's convolutional feature encoder turns into one frame (its receptive
    field; wav2vec2-style configs), or None for other models."""
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if not kernels or not strides:
        return None
    samples = 1
    for kernel, stride in zip(reversed(kernels), reversed(strides)):
        samples = (samples - 1) * stride + kernel
    return samples


def positions_note(config) -> str:
    """``max_position_embeddings (N)``, and how many tokens that is where a padding offset takes some."""
    positions = config.max_position_embeddings
    readable = readable_positions(config)
    return f"max_position_embeddings ({positions})" + (
        f", of which it reads {readable} tokens after the padding offset" if readable != positions else "")


def check_sequence_length(model, length: int, name: str = "seq_len", meaning: str = "") -> None:
    """Refuse ``length`` tokens where ``model``'s position embeddings read fewer (text models; audio lengths count
    samples, which no position table limits). ``meaning``: what the length is for, named in the message."""
    positions = readable_positions(model.config)
    if getattr(model, "main_input_name", "input_ids") == "input_ids" and positions and length > positions:
        raise ValueError(f"{name} {length}{f' ({meaning})' if meaning else ''} exceeds the model's "
                         f"{positions_note(model.config)}; pass {name} <= {positions}")


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def check_transformers_model(model, function: str) -> None:
    """Refuse, before any work, anything but a transformers model given to ``function``, saying what to pass
    instead: a folder is loaded first, a SentenceTransformer gives its transformer; a wrapper (``torch.compile``,
    DDP) is refused naming the model it wraps."""
    check_not_wrapped(model)
    if hasattr(model, "main_input_name"):
        return
    hint = ""
    if isinstance(model, (str, os.PathLike)):
        hint = (" Load the folder first: hf_adaprune.AutoPrunedModel.from_pretrained(folder) for a pruned one, a "
                "transformers AutoModelFor... class for a dense one.")
    elif type(model).__name__ == "SentenceTransformer":
        hint = (f" For a SentenceTransformer, pass its transformer: {function}(st[0].auto_model, ...) with "
                "st.tokenizer; its pooling and normalisation then run outside it.")
    raise TypeError(f"{function} takes a transformers model (PreTrainedModel); got {type(model).__name__}.{hint}")


def check_not_wrapped(model) -> None:
    """Refuse a wrapper around a transformers model (``DistributedDataParallel``, what ``accelerator.prepare``
    returns on several processes, FSDP): it has none of the model's ``base_model`` or ``config``, so hf_adaprune
    works on the model it wraps."""
    from transformers import PreTrainedModel

    compiled = getattr(model, "_orig_mod", None) if isinstance(model, nn.Module) else None
    if isinstance(compiled, PreTrainedModel) and not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"{type(model).__name__} wraps a {type(compiled).__name__}: torch.compile(model) returns a wrapper, and "
            "hf_adaprune prunes the model itself. Pass model._orig_mod and compile again after pruning (graphs "
            "traced before the masks were attached do not see them), or compile in place with model.compile() "
            "(attach_masks then drops its graphs), or let the Trainer compile (torch_compile=True).")
    inner = getattr(model, "module", None) if isinstance(model, nn.Module) else None
    if isinstance(inner, PreTrainedModel) and not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"{type(model).__name__} wraps a {type(inner).__name__}: hf_adaprune prunes the model itself, not a "
            "wrapper for several processes. Unwrap it first: accelerator.unwrap_model(model) (accelerate), or "
            "model.module (DistributedDataParallel); after compact(), wrap the unwrapped model again.")


def family_of(model_type: str | None) -> FamilyAdapter | None:
    """The registered family of ``model_type`` (``config.model_type``), or None."""
    return _FAMILIES.get(model_type)


def get_adapter(model_or_config) -> FamilyAdapter:
    """The adapter of the model's family; a family it cannot prune, a PEFT model and a model wrapped for several
    processes (DDP, accelerate) are refused here, before any entry point (trainer, ``post_training_prune``,
    ``attach_masks``, ``save_pruned``, ...) touches the model."""
    if isinstance(model_or_config, (str, os.PathLike)):
        check_transformers_model(model_or_config, "hf_adaprune")
    check_not_wrapped(model_or_config)
    if hasattr(model_or_config, "get_base_model"):
        raise TypeError(
            f"{type(model_or_config).__name__} is a PEFT model: hf_adaprune prunes a plain transformers model. Merge "
            "the adapters first (model = model.merge_and_unload()) and fine-tune and prune the merged model.")
    if hasattr(model_or_config, "peft_config"):  # adapters injected into the model itself: no merge_and_unload here
        raise TypeError(
            f"{type(model_or_config).__name__} carries PEFT adapters (its peft_config) outside a PeftModel: "
            "hf_adaprune prunes a plain transformers model. Merge them on the PeftModel they came from "
            "(model = peft_model.merge_and_unload()), or prune before adding adapters.")
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        reason = ""
        if model_type == "albert":
            reason = " (ALBERT shares one set of weights across layers, so per-layer pruning does not apply)"
        elif model_type == "deberta":
            reason = " (DeBERTa v1, microsoft/deberta-base / -large; DeBERTa-v2 and v3, model_type 'deberta-v2', are)"
        raise UnsupportedModelError(
            f"hf_adaprune cannot prune model_type {model_type!r}{reason}. "
            f"Supported model types: {', '.join(supported_model_types())}."
        )
    return _FAMILIES[model_type]


def find_groups(model) -> list[Group]:
    """All prunable groups of ``model`` (any head class of a supported family), in layer order.

    Attention groups whose heads were all removed by an earlier compaction are left out.
    """
    check_transformers_model(model, "find_groups")  # a path, a config
    adapter = get_adapter(model)  # refuses a wrapper or another family before base_model is read
    base = model.base_model
    return [g for g in adapter.find_groups(base, model.config) if not _emptied(base, g)]


def find_layer_groups(model) -> list[LayerGroup]:
    """The layer stacks of ``model`` whose whole layers can be pruned (``[]`` for a family that lists none)."""
    adapter = get_adapter(model)
    return [] if adapter.layer_stacks is None else adapter.layer_stacks(model.base_model, model.config)


def layer_of_group(layer_groups: Iterable[LayerGroup], group_name: str) -> tuple[str, int] | None:
    """``(stack name, layer index)`` of the layer holding the head / FFN group ``group_name``, or None."""
    for stack in layer_groups:
        head, _, rest = group_name.partition(stack.name + ".")
        index = rest.partition(".")[0]
        if head == "" and rest and index.isdigit():
            return stack.name, int(index)
    return None


def _emptied(base_model, group: Group) -> bool:
    return isinstance(group, HeadGroup) and getattr(base_model.get_submodule(group.core), "is_empty_attention", False)


def filter_groups(
    groups: Iterable[Group], roles: Iterable[str] | str | None = None, kind: Iterable[str] | str | None = None
) -> list[Group]:
    """The groups with a role in ``roles`` and a kind in ``kind`` ("heads", "ffn", "layers"; all if None), in order.

    E.g. ``filter_groups(find_groups(model), roles="cross")`` for the decoder cross-attentions only, or
    ``roles=("decoder_self", "cross", "decoder")`` for the whole decoder (layer stacks have role "encoder" or
    "decoder", like FFNs). Pass the result to ``attach_masks(model, groups=...)`` / importance / selection to
    work on those groups alone.
    """
    roles = None if roles is None else {roles} if isinstance(roles, str) else set(roles)
    kinds = None if kind is None else {kind} if isinstance(kind, str) else set(kind)
    unknown = (roles or set()) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown group roles {sorted(unknown)}; roles are {ROLES}")
    if (kinds or set()) - set(KINDS):
        raise ValueError(f"kind must be among {KINDS}, got {kind!r}")
    return [g for g in groups if (roles is None or g.role in roles) and (kinds is None or g.kind in kinds)]
