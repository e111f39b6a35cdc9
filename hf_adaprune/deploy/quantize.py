"""int8 that saves and loads: dynamic int8 linears (fbgemm/x86) and int8 embeddings on disk.

Every ``nn.Linear`` becomes torch's dynamically quantized linear (int8 weights,
one scale per output row; activations quantized per batch), the fastest CPU int8
path in PyTorch here: torchao's int8 configs measured slower than fp32 on this
CPU (no int8 CPU kernels for them in torchao 0.18 with torch 2.13), see the
README. Outside PyTorch, onnxruntime's int8 (:func:`~.onnx_int8.quantize_onnx`)
is faster still at batch 1 (pruned MiniLM: 3.68x the dense model against 2.64x).
Embedding tables are rounded to int8 per row and kept as float32 in
memory (gathers do not get faster in int8, but the file gets 4x smaller).

``save_int8`` writes the folder ``save_pruned`` writes (config with the pruned
layout, remote code, tokenizer) with ``model_int8.safetensors`` instead of the
float weights; ``load_int8`` rebuilds the quantized model from it with the very
same int8 values, so predictions equal the in-memory quantized model's.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig

from ..engine.masks import get_masks
from ..hub import save_pruned
from ..hub.load import pruned_model_class
from ..hub.save import check_save_request, check_tokenizer_fits, write_through_temporary
from ..plain_forward import drop_autocast_forward
from ..surgery import compact
from .checks import check_transformers_model

INT8_WEIGHTS = "model_int8.safetensors"
INT8_RECORD = "int8.json"
# in an int8 folder's config.json: transformers' loaders, the folder's own remote code included, read the config
# but not the int8 weights; the shipped loader (PrunedModelMixin.from_pretrained) refuses such a config by this key
INT8_CONFIG_KEY = "adaprune_int8_weights"
FORMAT = 1


def check_int8_request() -> None:
    """Refuse, before any work, int8 on a torch build without the CPU int8 kernels (the model's device and dtype
    are checked when it is quantized: a CPU float32 model is taken, another refused with what to call; the recipes
    quantize a CPU float32 copy of a model trained elsewhere)."""
    engines = torch.backends.quantized.supported_engines
    if not {"x86", "fbgemm"} & set(engines):
        raise ValueError(f"int8 quantization needs the x86 or fbgemm quantized engine; this torch build has {engines}")


def _check_backend(model, function: str):
    check_transformers_model(model, function)
    if any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules()):
        raise ValueError("the model is int8 already (quantize_int8 / load_int8 output); quantize the float model")
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"int8 quantization runs on the CPU (fbgemm/x86 kernels); the model is on {sorted(devices)}: "
                         "move it with model.cpu() first")
    check_int8_request()
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("int8 quantization starts from float32 weights; call model.float() first")


def _linear_names(model) -> list[str]:
    # zero-width linears stand in for fully pruned attentions: nothing to quantize there
    return [name for name, m in model.named_modules()
            if type(m) is nn.Linear and m.in_features > 0 and m.out_features > 0]


def _embedding_names(model) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Embedding)]


ROWS_PER_CHUNK = 4096  # rows rounded at a time: float temporaries of a chunk, not of a whole vocabulary's table


def _row_chunks(count: int):
    """Slices of at most :data:`ROWS_PER_CHUNK` rows covering ``count`` rows."""
    return (slice(start, start + ROWS_PER_CHUNK) for start in range(0, count, ROWS_PER_CHUNK))


def _int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 values and scales of a 2-d float tensor (rows are independent: rounded in chunks)."""
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    values = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    for rows in _row_chunks(weight.shape[0]):
        values[rows] = torch.round(weight[rows] / scale[rows, None]).clamp(-127, 127)
    return values, scale


def _quantize_linears(model, names: list[str]):
    with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao; its CPU kernels stay
        warnings.simplefilter("ignore")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(model, {name: qconfig for name in names}, inplace=True)


def quantize_int8(model):
    """A copy of ``model`` (float32, CPU) with int8 dynamic linears and int8-rounded embeddings."""
    _check_backend(model, "quantize_int8")
    model = drop_autocast_forward(copy.deepcopy(model)).eval()  # after --bf16 training: float32 activations
    if get_masks(model) is not None:  # masked, not compacted: quantize the weights the masks keep
        compact(model)
    with torch.no_grad():
        for name in _embedding_names(model):
            weight = model.get_submodule(name).weight
            values, scale = _int8_rows(weight)
            for rows in _row_chunks(weight.shape[0]):
                weight[rows] = values[rows].float() * scale[rows, None]
    return _quantize_linears(model, _linear_names(model))


def _packed_linears(quantized) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    return {name: m._packed_params._weight_bias() for name, m in quantized.named_modules()
            if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)}


def save_int8(model, save_directory, tokenizer=None, processor=None):
    """Quantize ``model`` (see :func:`quantize_int8`), save it to ``save_directory``, return the quantized model.

    A model with masks attached is compacted first, in place, as :func:`save_pruned` compacts it."""
    _check_backend(model, "save_int8")
    check_save_request(save_directory, tokenizer=tokenizer, processor=processor)
    check_tokenizer_fits(model, tokenizer, processor)
    if get_masks(model) is not None:
        compact(model)
    quantized = quantize_int8(model)

    def write(folder: Path) -> None:
        save_pruned(model, folder, tokenizer=tokenizer, processor=processor)
        for stale in folder.glob("model*.safetensors*"):  # the float weights are replaced by the int8 file
            stale.unlink()
        _set_int8_config_key(folder, INT8_WEIGHTS)
        tensors, aliases = _int8_tensors(quantized)
        from safetensors.torch import save_file

        save_file(tensors, str(folder / INT8_WEIGHTS))
        record = {"format": FORMAT, "linears": sorted(_packed_linears(quantized)), "aliases": aliases,
                  "tied_linears": _linears_tied_to_embeddings(model),
                  "scheme": "int8 weights, symmetric per output row; dynamic int8 activations (torch fbgemm/x86)"}
        (folder / INT8_RECORD).write_text(json.dumps(record, indent=2))

    write_through_temporary(save_directory, write)  # a failure leaves an earlier folder as it was
    return quantized


def _linears_tied_to_embeddings(model) -> list[str]:
    """Linears whose weight is an embedding table (a masked LM's decoder): loading ties them to the table again."""
    tables = {model.get_submodule(name).weight.data_ptr() for name in _embedding_names(model)}
    return sorted(name for name in _linear_names(model) if model.get_submodule(name).weight.data_ptr() in tables)


def _int8_tensors(quantized) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of the int8 file, and which tied names are stored under another (loading ties them again)."""
    tensors, aliases = {}, {}
    seen: dict[tuple, str] = {}
    packed = _packed_linears(quantized)

    def add(name, tensor):
        storage = (tensor.data_ptr(), tensor.shape)  # empty tensors share a null pointer; tied weights their storage
        if tensor.numel() and storage in seen:  # tied weights are stored once (a masked LM's decoder bias, too)
            aliases[name] = seen[storage]
            return
        seen[storage] = name
        tensors[name] = tensor.contiguous()

    for name, weight in quantized.state_dict().items():
        if isinstance(weight, torch.Tensor) and name.rsplit(".", 1)[0] not in packed and "_packed_params" not in name:
            add(name, weight)
    embeddings = [f"{name}.weight" for name in _embedding_names(quantized)]
    for key in [k for k in embeddings if k in tensors]:
        tensors[key + ".int8"], tensors[key + ".scale"] = _int8_rows(tensors.pop(key))
    for name, (weight, bias) in packed.items():
        tensors[f"{name}.weight.int8"] = weight.int_repr()
        tensors[f"{name}.weight.scale"] = weight.q_per_channel_scales().float()
        tensors[f"{name}.weight.zero_point"] = weight.q_per_channel_zero_points()
        if bias is not None:
            add(f"{name}.bias", bias.detach())
    return tensors, aliases


def _set_int8_config_key(folder: Path, weights: str | None) -> None:
    """Point ``folder``'s config.json at the int8 weights file, or (None) take the pointer out."""
    config = json.loads((folder / "config.json").read_text())
    config.pop(INT8_CONFIG_KEY, None)
    if weights is not None:
        config[INT8_CONFIG_KEY] = weights
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _read_int8_record(path: Path) -> dict:
    """``int8.json`` of the folder ``path``, checked: a record of a format this version reads."""
    where = path / INT8_RECORD
    try:
        record = json.loads(where.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON ({error}): the folder is damaged; save it again with save_int8")
    version = record.get("format") if isinstance(record, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT:
        raise ValueError(f"{where} has format {version}, written by a newer hf_adaprune than this one (which reads "
                         f"format {FORMAT}): upgrade hf_adaprune (pip install -U hf-adaprune)")
    if version != FORMAT or not isinstance(record.get("linears"), list):
        raise ValueError(f"{where} is not a save_int8 record (format {FORMAT} with its list of linears): the folder is "
                         "damaged; save it again with save_int8")
    return record


def _check_int8_tensors(path: Path, record: dict, tensors: dict) -> None:
    """Every int8 weight has its scale (a linear's its zero point too), every linear of the record its weight."""
    needed = [f"{key[:-len('.int8')]}.scale" for key in tensors if key.endswith(".weight.int8")]
    needed += [f"{name}.weight.{part}" for name in record["linears"] for part in ("int8", "scale", "zero_point")]
    missing = sorted({key for key in needed if key not in tensors})
    if missing:
        raise ValueError(f"{path / INT8_WEIGHTS} lacks {missing[:8]}: the folder is damaged; save it again with "
                         "save_int8")


def load_int8(path, auto_class=None):
    """The quantized model saved by :func:`save_int8` (``auto_class`` as in ``AutoPrunedModel``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / INT8_RECORD).exists():
        raise ValueError(f"{path} holds no {INT8_RECORD}: it was not saved with save_int8")
    record = _read_int8_record(path)
    tensors = load_file(str(path / INT8_WEIGHTS))
    _check_int8_tensors(path, record, tensors)
    float_weights, packed = {}, {}
    for key, value in tensors.items():
        if key.endswith(".weight.int8"):
            base = key[: -len(".int8")]
            scale = tensors[base + ".scale"]
            if base[: -len(".weight")] not in record.get("tied_linears", ()):  # a tied one: the table's rows
                float_weights[base] = value.float() * scale[:, None]
            if base[: -len(".weight")] in record["linears"]:
                packed[base[: -len(".weight")]] = torch._make_per_channel_quantized_tensor(
                    value, scale.double(), tensors[base + ".zero_point"], 0)
        elif not key.endswith((".scale", ".zero_point")):
            float_weights[key] = value
    # tied weights (record["aliases"]) are left out, as save_pretrained leaves them out: loading ties them again
    model_class, config, _ = pruned_model_class(str(path), auto_class)
    if hasattr(config, INT8_CONFIG_KEY):  # (folders saved before 2026-12-05 lack it) the float skeleton the int8
        delattr(config, INT8_CONFIG_KEY)  # weights go into, built from memory
    model, info = model_class.from_pretrained(None, config=config, state_dict=float_weights,
                                              output_loading_info=True)
    if info.get("missing_keys"):  # transformers would initialise them at random
        raise ValueError(f"{path / INT8_WEIGHTS} lacks weights of the model its config.json describes: "
                         f"{sorted(info['missing_keys'])[:8]}; the folder is damaged, save it again with save_int8")
    model.eval()
    if model.can_generate() and (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    quantized = _quantize_linears(model, record["linears"])
    for name, weight in packed.items():
        module = quantized.get_submodule(name)
        module.set_weight_bias(weight, module.bias())
    return quantized
