"""int8 ONNX graphs: onnxruntime's dynamic quantization of the matrix products, int8 embedding rows.

:func:`quantize_onnx` turns ``X.onnx`` (from :func:`~.onnx.export_onnx`) into ``X.int8.onnx``:

* every ``MatMul`` with a weight gets onnxruntime's dynamic int8 (``quantize_dynamic``): int8 weights with one
  scale per output channel, activations quantized per call (uint8);
* every embedding table (a float initializer that only ``Gather`` nodes read along its rows) is stored as int8
  rows with one scale per row: the ``Gather`` picks int8 rows, which are cast and multiplied by their gathered
  scales. onnxruntime's own ``Gather`` quantization uses one scale for the whole table, so a row of small
  values is rounded as coarsely as the largest one; per-row scales are never coarser. On pruned MiniLM (SST-2,
  the 500 steering rows) per-row tables follow the float model closer in logits (mean absolute difference
  0.047 against 0.052), with predictions agreeing on 98.0% of the rows against 98.4%.

Nodes reading an empty weight (a fully removed attention or FFN) are left alone: there is nothing to quantize
and onnxruntime's per-channel quantizer fails on them.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .onnx import INT8_SUFFIX, _require, int8_graph
from .quantize import _int8_rows


@contextlib.contextmanager
def _root_logging_left_alone():
    """onnxruntime's quantizer calls ``logging.warning(...)`` (a pre-processing hint), which configures the root
    logger (``basicConfig``) when the program has not: the program's own ``basicConfig`` then does nothing. A
    handler that drops records stands on an unconfigured root meanwhile."""
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)


def _nodes_with_empty_weights(graph) -> list[str]:
    empty = {t.name for t in graph.initializer if 0 in t.dims}
    return [node.name for node in graph.node if empty & set(node.input)]


def _gather_axis(node) -> int:
    return next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 0)


def int8_embedding_rows(model) -> list[str]:
    """Store every embedding table of ``model`` (an ``onnx.ModelProto``, changed in place) as int8 rows with
    per-row scales; returns the tables' names. A table is a 2-d float initializer that only ``Gather`` nodes
    read, along axis 0 (a table also read by a ``MatMul``, say a tied output projection, stays float)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    users = defaultdict(list)
    for node in graph.node:
        for position, name in enumerate(node.input):
            users[name].append((node, position))
    outputs = {o.name for o in graph.output}
    converted = []
    for tensor in list(graph.initializer):
        uses = users.get(tensor.name, [])
        if (tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2 or 0 in tensor.dims or not uses
                or tensor.name in outputs
                or not all(n.op_type == "Gather" and p == 0 and _gather_axis(n) == 0 for n, p in uses)):
            continue
        values, scale = _int8_rows(torch.from_numpy(numpy_helper.to_array(tensor).astype(np.float32)))
        rows, scales = f"{tensor.name}_int8", f"{tensor.name}_row_scale"
        graph.initializer.remove(tensor)
        graph.initializer.extend([numpy_helper.from_array(values.numpy(), rows),
                                  numpy_helper.from_array(scale[:, None].numpy(), scales)])
        for node, _ in uses:
            result, ids = node.output[0], node.input[1]
            # names onnxruntime's quantizer does not give (it adds <input>_scale for a MatMul reading the rows)
            node.input[0], node.output[0] = rows, f"{result}_rows_int8"
            added = [helper.make_node("Cast", [f"{result}_rows_int8"], [f"{result}_rows_float"],
                                      to=TensorProto.FLOAT, name=f"{node.name}_cast"),
                     helper.make_node("Gather", [scales, ids], [f"{result}_row_scale"], axis=0,
                                      name=f"{node.name}_row_scale"),
                     helper.make_node("Mul", [f"{result}_rows_float", f"{result}_row_scale"], [result],
                                      name=f"{node.name}_dequantize")]
            index = list(graph.node).index(node)
            for offset, new in enumerate(added, start=1):
                graph.node.insert(index + offset, new)
        converted.append(tensor.name)
    return converted


def _graph_path(folder: Path, name) -> Path:
    """A graph named in ``folder``, or a path as :func:`~.onnx.export_onnx` returns it (relative to the working
    directory when the export's folder was)."""
    name = Path(name)
    candidates = [folder / name] if len(name.parts) == 1 else [name, folder / name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no ONNX graph {name} (looked for {' and '.join(map(str, candidates))}); give the "
                            f"names of graphs in {folder} or the paths export_onnx returned")


def quantize_onnx(folder, files: list[str] | None = None, per_channel: bool = True,
                  reduce_range: bool = False) -> list[Path]:
    """int8 graphs of the graphs in ``folder``: ``X.onnx`` -> ``X.int8.onnx`` (see the module docstring).

    ``files``: the graphs to quantize, names in ``folder`` or paths (what :func:`~.onnx.export_onnx` returns);
    default every float graph there.

    ``per_channel=False``: one weight scale per matrix (on pruned MiniLM, 84.8% on the steering rows against
    86.0% per channel, at the same speed); ``reduce_range``: 7-bit weights (onnxruntime's advice for CPUs
    without VNNI)."""
    _require("onnxruntime")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    if isinstance(files, str):
        raise ValueError(f"files={files!r} is one string; pass a list of graph names, e.g. [{files!r}]")
    quantized = [name for name in files or () if str(name).endswith(INT8_SUFFIX)]
    if quantized:
        raise ValueError(f"{quantized[0]} is a quantized graph already: give the float graphs (model.onnx, ...)")
    files = files or [p.name for p in sorted(folder.glob("*.onnx")) if not p.name.endswith(INT8_SUFFIX)]
    if not files:
        raise ValueError(f"{folder} holds no .onnx graph to quantize: run export_onnx first")
    out = []
    for name in files:
        source = _graph_path(folder, name)
        target = source.with_name(int8_graph(source.name))
        skipped = _nodes_with_empty_weights(onnx.load(str(source), load_external_data=False).graph)
        with _root_logging_left_alone():
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                             reduce_range=reduce_range, nodes_to_exclude=skipped, op_types_to_quantize=["MatMul"])
        model = onnx.load(str(target))
        if int8_embedding_rows(model):
            onnx.save(model, str(target))
        out.append(target)
    return out
