"""Parameter and FLOP counts, measured on the real forward pass.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``. Its table has no
entry for the CPU fused attention kernel, so attention would silently count as
zero on CPU; :func:`register_cpu_attention_flops` adds the same formula torch
uses for the CUDA kernels.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ..engine.masks import get_masks, structure_count
from ..layout import read_record
from ..input_grad_hooks import without_input_grad_hooks
from ..modes import restore_modes, training_modes
from ..surgery import kept_structure, original_path
from .summary import LayerComparison, ProfileComparison

_aten = torch.ops.aten


def register_cpu_attention_flops() -> None:
    """Teach FlopCounterMode the CPU flash-attention kernel (forward and backward); idempotent."""
    forward = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    registry = flop_counter.flop_registry
    if forward is not None and forward not in registry and forward.default not in registry:
        @flop_counter.register_flop_formula(forward)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward is not None and backward not in registry and backward.default not in registry:
        @flop_counter.register_flop_formula(backward)
        def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


register_cpu_attention_flops()


def example_inputs(model: nn.Module, seq_len: int = 128, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """Dummy inputs of the right kind for ``model`` (text ids, audio samples or mel features).

    Drawn from a generator of their own: measuring a model (the trainer does it while it is set up) leaves the
    training's random state as it was, so a run draws what a plain ``Trainer`` with the same seed draws.
    """
    config = model.config
    device = next(model.parameters()).device
    # audio comes in the weights' dtype (a model loaded in bfloat16 / float16 takes half-precision samples)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    generator = torch.Generator().manual_seed(0)
    name = getattr(model, "main_input_name", "input_ids")
    if name == "input_values":  # raw audio; seq_len counts samples
        inputs = {"input_values": torch.randn(batch_size, seq_len, generator=generator).to(device, dtype)}
    elif name == "input_features":
        mels = getattr(config, "num_mel_bins", 80)
        frames = 2 * getattr(config, "max_source_positions", seq_len // 2)
        inputs = {"input_features": torch.randn(batch_size, mels, frames, generator=generator).to(device, dtype)}
    else:
        vocab = getattr(config, "vocab_size", 1000)
        ids = torch.randint(3, vocab, (batch_size, seq_len), generator=generator).to(device)
        eos = getattr(config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        if isinstance(eos, int) and 0 <= eos < vocab:  # one <eos> per row, last: what seq2seq classifiers pool
            ids[ids == eos] = 3 if eos != 3 else 4
            ids[:, -1] = eos
        inputs = {"input_ids": ids,
                  "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device)}
    if getattr(config, "is_encoder_decoder", False):
        start = getattr(config, "decoder_start_token_id", None) or 0
        inputs["decoder_input_ids"] = torch.full((batch_size, seq_len), start, dtype=torch.long, device=device)
    if type(model).__name__.endswith("ForMultipleChoice"):  # [batch, choices, sequence]: one choice each
        inputs = {name: value.unsqueeze(1) for name, value in inputs.items()}
    return inputs


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _base_prefix(model: nn.Module) -> str:
    root = type(model).__name__
    for name, module in model.named_modules():
        if module is model.base_model:
            return f"{root}.{name}" if name else root
    return root


@torch.no_grad()
def count_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[int, dict[str, int]]:
    """Total forward FLOPs and FLOPs per module path (relative to ``model.base_model``)."""
    from ..families.registry import check_transformers_model

    check_transformers_model(model, "count_flops")  # a wrapper (DDP, torch.compile): named, before its forward runs
    modes = training_modes(model)
    model.eval()
    try:
        with without_input_grad_hooks(model), FlopCounterMode(display=False) as counter:
            model(**inputs)
    finally:
        restore_modes(modes)
    prefix = _base_prefix(model)
    per_module = {}
    for name, ops in counter.get_flop_counts().items():
        if name == prefix:
            per_module[""] = sum(ops.values())
        elif name.startswith(prefix + "."):
            per_module[name[len(prefix) + 1:]] = sum(ops.values())
    return counter.get_total_flops(), per_module


def structure_costs(model, groups, seq_len: int) -> dict[str, float]:
    """Forward FLOPs of one head / one neuron in each group, read off a FlopCounterMode run.

    Attention and FFN FLOPs are linear in the number of heads / neurons, so a
    group's measured FLOPs divided by its count is the cost of one structure; a
    layer stack's cost is that of its average layer, and each of its layers' own
    cost is there too under the layer's path (see :func:`per_layer_costs`).
    """
    _, per_module = count_flops(model, example_inputs(model, seq_len=seq_len))
    return per_layer_costs(model.base_model, groups, per_module)


def per_layer_costs(base_model: nn.Module, groups, per_module: dict[str, float]) -> dict[str, float]:
    """``{group name: cost of one structure}`` from each module's measured cost, plus ``{layer path: its cost}`` for
    every layer of a stack: the layers of a model pruned before have other widths, and cost other amounts."""
    costs = {group.name: sum(per_module.get(p, 0) for p in structure_modules(base_model, group))
             / max(structure_count(base_model, group), 1) for group in groups}
    for group in groups:
        if group.kind == "layers":
            costs.update({path: per_module.get(path, 0) for path in structure_modules(base_model, group)})
    return costs


def structure_modules(base_model: nn.Module, group) -> list[str]:
    """The modules (paths under ``base_model``) whose cost a group's structures share: the attention block (and an
    output projection outside it), the FFN linears, or each whole layer of a stack."""
    if group.kind == "layers":
        return [group.layer_path(i) for i in range(structure_count(base_model, group))]
    if group.kind == "heads":
        return [group.core] + ([] if group.output_in_core else [group.output])
    return list(group.inputs) + [group.output]


def layer_of(group_name: str) -> str:
    """``encoder.layer.3.attention`` -> ``encoder.layer.3``: the row a group belongs to in reports."""
    return group_name.rpartition(".")[0]


def _structure_by_layer(model) -> dict[str, dict[str, list]]:
    rows: dict[str, dict[str, list]] = {}
    for name, info in kept_structure(model).items():
        key = "heads" if info["kind"] == "heads" else "ffn"
        rows.setdefault(layer_of(name), {}).setdefault(key, []).append((info["original"], info["kept"]))
    return rows


def model_profile(model: nn.Module, seq_len: int = 128, batch_size: int = 1) -> dict:
    """Params and FLOPs of the whole model and of each layer holding prunable groups.

    A model that still has masks is profiled as is (masks do not save FLOPs);
    compact it first to see the saving.
    """
    from ..families import check_sequence_length, find_groups
    from ..families.registry import check_transformers_model

    check_transformers_model(model, "model_profile")
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    seq_len, batch_size = int(seq_len), int(batch_size)  # numpy integers too; the record holds plain ints
    check_sequence_length(model, seq_len)
    inputs = example_inputs(model, seq_len, batch_size)
    total, per_module = count_flops(model, inputs)
    record = read_record(model.config)
    # rows are named by the dense model's layers (after layers were removed, path != name)
    paths = {original_path(record, layer_of(g.name)): layer_of(g.name) for g in find_groups(model)}
    structure = _structure_by_layer(model)
    layers = sorted(set(paths) | set(structure), key=_natural_key)
    base = model.base_model
    rows = []
    for layer in layers:
        info = structure.get(layer, {})
        path = paths.get(layer, layer)
        rows.append({
            "layer": layer,
            "params": count_params(base.get_submodule(path)),
            "flops": per_module.get(path, 0),
            "heads": [k for _, k in info.get("heads", [])],
            "ffn": [k for _, k in info.get("ffn", [])],
        })
    return {
        "seq_len": seq_len,
        "batch_size": batch_size,
        "params": count_params(model),
        "flops": total,
        "layer_params": sum(r["params"] for r in rows),
        "layer_flops": sum(r["flops"] for r in rows),
        "layers": rows,
        "masked": get_masks(model) is not None,
    }


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in text.split(".")]


def compare_profiles(before: dict, after: dict) -> ProfileComparison:
    """Before/after figures of two :func:`model_profile` results, with the fractions removed."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        raise TypeError(f"compare_profiles takes two model_profile(...) results, got {type(before).__name__} and "
                        f"{type(after).__name__}: profile each model first")
    for key in ("seq_len", "batch_size"):
        if before.get(key) != after.get(key):  # FLOPs grow with both: the fractions would compare unlike inputs
            raise ValueError(f"the profiles were taken at other {key}s ({before.get(key)} and {after.get(key)}): "
                             f"profile both models at one {key}")

    def removed(key):
        return 1.0 - after[key] / before[key] if before[key] else 0.0

    def width(counts):
        return sum(counts) if counts else None

    after_rows = {r["layer"]: r for r in after["layers"]}
    layers = []
    for row in before["layers"]:
        # a layer missing after pruning was removed whole
        new = after_rows.get(row["layer"], {"heads": [0] * len(row["heads"]), "ffn": [0] * len(row["ffn"]),
                                            "params": 0, "flops": 0})
        layers.append(LayerComparison(
            layer=row["layer"], heads_before=width(row["heads"]), heads_after=width(new["heads"]),
            ffn_before=width(row["ffn"]), ffn_after=width(new["ffn"]),
            params_before=row["params"], params_after=new["params"],
            flops_before=row["flops"], flops_after=new["flops"],
        ))
    return ProfileComparison(
        seq_len=before["seq_len"],
        params_before=before["params"], params_after=after["params"], params_removed=removed("params"),
        flops_before=before["flops"], flops_after=after["flops"], flops_removed=removed("flops"),
        layer_flops_before=before["layer_flops"], layer_flops_after=after["layer_flops"],
        layer_flops_removed=removed("layer_flops"),
        layers=layers,
    )


def _fmt(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def format_comparison(report: ProfileComparison | dict) -> str:
    """A plain-text table of :func:`compare_profiles`' result (or of its ``to_dict()``)."""
    if not isinstance(report, ProfileComparison):
        report = ProfileComparison.from_dict(report)

    def arrow(a, b):
        return "-" if a is None else f"{a}->{b}"

    header = f"{'layer':<28} {'heads':>9} {'ffn':>11} {'params':>17} {'FLOPs':>17}"
    lines = [header, "-" * len(header)]
    for r in report.layers:
        lines.append(
            f"{r.layer:<28} {arrow(r.heads_before, r.heads_after):>9} {arrow(r.ffn_before, r.ffn_after):>11} "
            f"{_fmt(r.params_before) + '->' + _fmt(r.params_after):>17} "
            f"{_fmt(r.flops_before) + '->' + _fmt(r.flops_after):>17}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"model: params {_fmt(report.params_before)} -> {_fmt(report.params_after)} "
        f"(-{100 * report.params_removed:.1f}%), FLOPs@seq{report.seq_len} "
        f"{_fmt(report.flops_before)} -> {_fmt(report.flops_after)} (-{100 * report.flops_removed:.1f}%), "
        f"layer FLOPs -{100 * report.layer_flops_removed:.1f}%"
    )
    return "\n".join(lines)
