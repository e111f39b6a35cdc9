"""CTranslate2 export of pruned Whisper and Marian models (the runtime faster-whisper serves).

What CTranslate2's model spec (4.x) can hold, and how a pruned model is fitted into it:

* **FFN widths per layer**: as they are; the spec's FFN weights carry their own
  shapes. A fully removed FFN becomes one zero neuron (``fc1`` row, bias and
  ``fc2`` column zero: the activation of 0 is 0, so it adds nothing).
* **Heads**: the spec has *one* head count per stack (``num_heads`` of the
  encoder; of the decoder for its self- *and* cross-attentions) and a head size
  per attention layer (``head_dim``). A layer that kept fewer heads than the
  stack's largest count is padded with **zero heads**: their query, key and
  value rows and output-projection columns are zero, so each attends uniformly
  to zero values and contributes exactly nothing. Outputs are those of the
  pruned model; the FFN savings stay, the attention projections of padded
  layers grow back to the stack's largest count. A fully removed attention is
  all zero heads. With ``pruning_scope=layer`` every layer of a role keeps the
  same count and nothing is padded (decoder self- and cross-attentions share
  one count, so prune them to the same number of heads to pad nothing there).

Whisper's alignment heads (word timestamps) need nothing either: compaction
already moved them onto the kept heads' positions (``renumber_alignment_heads``)
and zero heads are appended after the kept ones. Removed layers (``--prune layers``) need
nothing: compaction deleted them and set the config's layer counts, which the
spec follows.

Marian: CTranslate2's layout (OPUS-MT's) drops ``<pad>``, the last token, and
starts the decoder from a zero embedding, which is what a trained OPUS-MT model
does (its pad row is the embedding's zero ``padding_idx``). A model whose pad
token is elsewhere has its rows reordered (CTranslate2 takes token strings, so
users see no difference); one whose start embedding is not zero (trained from
scratch with weight decay, say) keeps ``<pad>`` and starts from its embedding,
as transformers does (``pad_kept`` in the returned record; suppress ``<pad>``
with ``suppress_sequences=[["<pad>"]]`` if transformers' ``bad_words_ids`` did).

The conversion itself is CTranslate2's own loader for the family
(``WhisperLoader``, ``MarianMTLoader``), run on a padded copy of the model.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..hub.save import move_into, temporary_folder
from ..engine.masks import get_masks
from ..layout import read_record
from ..surgery import compact

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
EXPORT_RECORD = "adaprune_ctranslate2.json"
# files of the source folder that CTranslate2 users expect next to model.bin (faster-whisper reads them)
COPIED_FILES = ("tokenizer.json", "preprocessor_config.json", "generation_config.json")

logger = logging.getLogger(__name__)


def _require_ctranslate2():
    try:
        from ctranslate2.converters import transformers as ct2_transformers
    except ImportError as error:
        raise ImportError("CTranslate2 export needs ctranslate2: pip install ctranslate2") from error
    return ct2_transformers


# the families this exporter converts: transformers class -> (CTranslate2's loader class, model_type)
LOADERS = {"WhisperForConditionalGeneration": ("WhisperLoader", "whisper"),
           "MarianMTModel": ("MarianMTLoader", "marian")}


def _family(model) -> tuple[str, str]:
    import transformers

    for class_name, entry in LOADERS.items():
        if isinstance(model, getattr(transformers, class_name)):
            return entry
    raise ValueError(f"CTranslate2 export converts {', '.join(LOADERS)} models; got {type(model).__name__}. "
                     "Export other families with export_onnx")


def _check_quantization(quantization: str | None) -> None:
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"CTranslate2 quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")


def _check_marian_vocabularies(model, tokenizer=None) -> None:
    """CTranslate2's Marian layout holds one vocabulary for both sides: refuse a decoder with a table of its own and
    a tokenizer with separate source and target vocabularies."""
    if not getattr(model.config, "share_encoder_decoder_embeddings", True):
        raise ValueError("the model's decoder has a vocabulary of its own (share_encoder_decoder_embeddings=False, "
                         "as prune_vocabulary(decoder_vocabulary=True) makes it), and CTranslate2's Marian converter "
                         "registers one vocabulary for both sides. Convert a model with one shared table, or use "
                         "export_onnx")
    if getattr(tokenizer, "separate_vocabs", False):
        raise ValueError("the tokenizer has separate source and target vocabularies, and CTranslate2's Marian layout "
                         "holds one for both sides: its output would be spelt with the source vocabulary. Export a "
                         "model with a shared vocabulary, or use export_onnx")


def check_ctranslate2_request(model, quantization: str | None = None, *, tokenizer=None) -> None:
    """Refuse, before any work, a family or quantization this exporter cannot convert, a Marian model or tokenizer
    with separate source and target vocabularies (``tokenizer``: the one the export will be given, or a processor
    holding it), or a missing ctranslate2."""
    _, family = _family(model)
    _check_quantization(quantization)
    if family == "marian":
        _check_marian_vocabularies(model, getattr(tokenizer, "tokenizer", tokenizer))
    _require_ctranslate2()


# -- padding to one head count per stack ----------------------------------------------------------------------


class _Attention(nn.Module):
    """The four projections CTranslate2's loader reads (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``)."""

    def __init__(self, q_proj, k_proj, v_proj, out_proj):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj


def _rows(linear: nn.Linear | None, rows: int, columns: int, bias: bool) -> nn.Linear:
    """A ``rows x columns`` linear holding ``linear``'s weights in its first rows, zeros below."""
    out = nn.Linear(columns, rows, bias=bias)
    with torch.no_grad():
        out.weight.zero_()
        if bias:
            out.bias.zero_()
        if linear is not None and linear.out_features:
            out.weight[: linear.out_features] = linear.weight
            if bias and linear.bias is not None:
                out.bias[: linear.out_features] = linear.bias
    return out


def _columns(linear: nn.Linear, columns: int) -> nn.Linear:
    """``linear`` widened to ``columns`` inputs, the new columns zero."""
    out = nn.Linear(columns, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[:, : linear.in_features] = linear.weight
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    return out


def _kept_heads(attention: nn.Module, head_dim: int) -> int:
    if getattr(attention, "is_empty_attention", False):
        return 0
    return attention.q_proj.out_features // head_dim


def _pad_attention(attention: nn.Module, heads: int, head_dim: int, d_model: int, key_bias: bool) -> nn.Module:
    width = heads * head_dim
    if getattr(attention, "is_empty_attention", False):
        projections = {name: None for name in ("q_proj", "k_proj", "v_proj")}
        out_proj = getattr(attention, attention.output_name or "", None)
        if out_proj is None:
            raise ValueError("a removed attention without its output projection cannot be converted")
    else:
        if attention.q_proj.out_features == width:
            return attention
        projections = {name: getattr(attention, name) for name in ("q_proj", "k_proj", "v_proj")}
        out_proj = attention.out_proj
    padded = {name: _rows(linear, width, d_model, bias=key_bias or name != "k_proj")
              for name, linear in projections.items()}
    return _Attention(padded["q_proj"], padded["k_proj"], padded["v_proj"], _columns(out_proj, width))


def _pad_ffn(layer: nn.Module) -> None:
    if layer.fc1.out_features == 0:  # one zero neuron: act(0) = 0 for every activation these families use
        layer.fc1 = _rows(None, 1, layer.fc1.in_features, bias=layer.fc1.bias is not None)
        layer.fc2 = _columns(layer.fc2, 1)


@dataclass
class CTranslate2Export:
    """What :func:`export_ctranslate2` wrote: the folder, each stack's head count, the zero heads added, and for
    Marian whether ``<pad>`` stayed in the vocabulary (a decoder start embedding that is not zero)."""

    path: str
    family: str
    num_heads: dict[str, int]
    kept_heads: int
    zero_heads: int
    quantization: str | None
    pad_kept: bool = False


def _alignment_heads_on_kept_heads(model) -> None:
    """Whisper's word-timestamp heads on real heads only. Compaction moved the model's own onto the kept heads;
    without any, CTranslate2 would take every head of the last half of the decoder, including the zero heads
    padding adds and the heads of removed cross-attentions: the kept heads of that half are taken instead."""
    config = model.generation_config
    if getattr(config, "alignment_heads", None) is not None:
        return
    layers = model.model.decoder.layers
    head_dim = model.config.d_model // model.config.decoder_attention_heads
    config.alignment_heads = [[index, head] for index in range(len(layers) // 2, len(layers))
                              for head in range(_kept_heads(layers[index].encoder_attn, head_dim))]
    if not config.alignment_heads:
        logger.warning("no cross-attention head is left in the last half of the decoder: the CTranslate2 model has "
                       "no alignment heads, so word timestamps are unavailable")


def _pad_to_stack_heads(model, family: str) -> dict:
    """Pad ``model`` (a private copy) in place to one head count per stack; returns the counts."""
    config, base = model.config, model.model
    head_dim = config.d_model // config.encoder_attention_heads
    if config.d_model // config.decoder_attention_heads != head_dim:
        raise ValueError("CTranslate2 export needs the encoder and decoder heads of one size")
    key_bias = family != "whisper"  # Whisper's k_proj has no bias
    stacks = {"encoder": [(layer, "self_attn") for layer in base.encoder.layers],
              "decoder": [(layer, name) for layer in base.decoder.layers for name in ("self_attn", "encoder_attn")]}
    counts, kept_total, zero_total = {}, 0, 0
    for stack, attentions in stacks.items():
        kept = [_kept_heads(getattr(layer, name), head_dim) for layer, name in attentions]
        heads = max(max(kept), 1)
        for (layer, name), k in zip(attentions, kept):
            setattr(layer, name, _pad_attention(getattr(layer, name), heads, head_dim, config.d_model, key_bias))
        counts[stack] = heads
        kept_total += sum(kept)
        zero_total += heads * len(kept) - sum(kept)
    for layer in itertools.chain(base.encoder.layers, base.decoder.layers):
        _pad_ffn(layer)
    config.encoder_attention_heads, config.decoder_attention_heads = counts["encoder"], counts["decoder"]
    return {"num_heads": counts, "head_dim": head_dim, "kept_heads": kept_total, "zero_heads": zero_total}


def _set_head_counts(spec, num_heads: dict[str, int], head_dim: int) -> None:
    # the seq2seq loaders give the decoder the encoder's head count (one count for the model); a pruned model
    # has one per stack
    for stack, heads in num_heads.items():
        getattr(spec, stack).num_heads = np.dtype("int16").type(heads)
    # CTranslate2 derives a head's size as d_model / num_heads unless the attention spec has a head_dim; the
    # loaders build their specs without one and specs refuse new attributes after construction, so it is set
    # as MultiHeadAttentionSpec(head_dim=...) itself sets it
    for layer in itertools.chain(spec.encoder.layer, spec.decoder.layer):
        for name in ("self_attention", "attention"):
            if hasattr(layer, name):
                object.__setattr__(getattr(layer, name), "head_dim", np.dtype("int32").type(head_dim))


def _starts_from_zero(model) -> bool:
    """Whether the decoder starts from the pad token and its embedding row is zero (a trained OPUS-MT Marian:
    the row is the embedding's padding_idx), which CTranslate2's Marian layout expresses as a zero start."""
    start = model.generation_config.decoder_start_token_id
    row = model.get_decoder().embed_tokens.weight[start]
    return start == model.config.pad_token_id and not bool(row.abs().max() > 0)


def _marian_keeping_pad(ct2_transformers):
    """CTranslate2's Marian loader without its zero-start convention: <pad> stays in the vocabulary and the
    decoder starts from the start token's embedding, as transformers' Marian does (used when that embedding is
    not zero, e.g. a Marian trained from scratch with weight decay)."""
    base = ct2_transformers.BartLoader

    class MarianKeepingPad(ct2_transformers.MarianMTLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return base.get_model_spec(self, model)  # the pad row stays

        def get_vocabulary(self, model, tokenizer):
            return base.get_vocabulary(self, model, tokenizer)  # <pad> stays

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.generation_config.decoder_start_token_id)

        def set_decoder(self, spec, decoder):
            base.set_decoder(self, spec, decoder)  # no start_from_zero_embedding

    return MarianKeepingPad()


class _MarianVocabulary:
    """The tokenizer as CTranslate2's Marian loader reads it (``get_vocab`` and the special tokens), with ids
    renumbered so that the pad token comes last, under the name ``<pad>`` the loader looks for there."""

    def __init__(self, tokenizer, order: list[int], pad: int):
        self._tokenizer = tokenizer
        self._new_id = {old: new for new, old in enumerate(order)}
        self._pad = pad

    def get_vocab(self) -> dict[str, int]:
        vocab = {token: self._new_id[i] for token, i in self._tokenizer.get_vocab().items()
                 if i in self._new_id and i != self._pad}
        return vocab | {"<pad>": self._new_id[self._pad]}

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _marian_vocabulary(model, tokenizer) -> _MarianVocabulary:
    """CTranslate2's Marian layout (OPUS-MT's) has ``<pad>`` as the last token, which it drops: its decoder starts
    from a zero embedding instead. A model with the pad token elsewhere gets its vocabulary rows reordered (of
    its private copy); CTranslate2 speaks in token strings, so the order is invisible to its users."""
    from .vocabulary import slice_vocabulary

    size, pad = model.get_input_embeddings().num_embeddings, model.config.pad_token_id
    if "<pad>" in tokenizer.get_vocab() and tokenizer.get_vocab()["<pad>"] != pad:
        raise ValueError("the tokenizer has a '<pad>' token that is not its pad token; CTranslate2's Marian layout "
                         "reserves that name for the padding token")
    order = [i for i in range(size) if i != pad] + [pad]
    if pad != size - 1:
        slice_vocabulary(model, order)
    return _MarianVocabulary(tokenizer, order, pad)


def _load(model_or_folder, tokenizer):
    import transformers
    from transformers import AutoTokenizer

    from ..hub import AutoPrunedModel
    from ..hub.load import load_pruned_config

    if isinstance(model_or_folder, (str, Path)):
        folder = Path(model_or_folder)
        config = load_pruned_config(folder)  # reads model_type adaprune_<family> without remote code
        if read_record(config, str(folder / "config.json")):
            model = AutoPrunedModel.from_pretrained(folder, config=config)
        else:  # a dense folder converts too (the reference the pruned one is compared with)
            model = getattr(transformers, config.architectures[0]).from_pretrained(folder)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(folder, config=config)
        return model.eval(), tokenizer, folder
    if tokenizer is None:
        raise ValueError("export_ctranslate2 of a model in memory needs its tokenizer (tokenizer=...): "
                         "CTranslate2 stores the vocabulary as token strings")
    model = copy.deepcopy(model_or_folder).eval().cpu()
    if get_masks(model) is not None:  # masks are forward hooks, which CTranslate2 never runs: remove for real
        compact(model)
    return model, tokenizer, None


def export_ctranslate2(model_or_folder, output_dir, tokenizer=None, quantization: str | None = None,
                       force: bool = False) -> CTranslate2Export:
    """Convert a pruned (or dense) Whisper or Marian model to a CTranslate2 folder ``output_dir``.

    ``model_or_folder``: a saved folder (``save_pruned``/``save_model`` output, tokenizer inside) or a model in
    memory (then pass ``tokenizer``; it is copied, never changed). ``quantization``: CTranslate2's weight type
    (``int8``, ``float16``, ...; None keeps float32). Layers with fewer heads than their stack's largest count
    are padded with zero heads (exact; see the module docstring); the returned record says how many.
    ``output_dir`` must not be the source folder; an existing one is replaced only with ``force``.
    """
    ct2_transformers = _require_ctranslate2()
    _check_quantization(quantization)
    output_dir = Path(output_dir)
    if isinstance(model_or_folder, (str, Path)):
        source = Path(model_or_folder).resolve()
        if source == output_dir.resolve() or output_dir.resolve() in source.parents:
            # CTranslate2 replaces output_dir (with force, deleting it first), then copies files from the source
            raise ValueError(f"output_dir {output_dir} is or contains the model folder {model_or_folder}: write the "
                             "CTranslate2 model elsewhere (a folder inside the model folder is fine)")
    if output_dir.exists() and not force:
        raise FileExistsError(f"{output_dir} exists; pass force=True to replace it")
    model, tokenizer, folder = _load(model_or_folder, tokenizer)
    loader_name, family = _family(model)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()
    loader, pad_kept = getattr(ct2_transformers, loader_name)(), False
    if family == "marian":
        _check_marian_vocabularies(model, tokenizer)
    if family == "whisper":
        _alignment_heads_on_kept_heads(model)
    if family == "marian" and _starts_from_zero(model):
        tokenizer = _marian_vocabulary(model, tokenizer)
    elif family == "marian":
        loader, pad_kept = _marian_keeping_pad(ct2_transformers), True
    padding = _pad_to_stack_heads(model, family)
    with torch.no_grad():
        spec = loader(model, tokenizer)
    _set_head_counts(spec, padding["num_heads"], padding["head_dim"])
    if folder is not None:
        for name in COPIED_FILES:
            if (folder / name).is_file():
                spec.register_file(str(folder / name))
    result = CTranslate2Export(path=str(output_dir), family=family, num_heads=padding["num_heads"],
                               kept_heads=padding["kept_heads"], zero_heads=padding["zero_heads"],
                               quantization=quantization, pad_kept=pad_kept)
    _save(spec, output_dir, quantization, json.dumps(asdict(result), indent=2) + "\n")
    return result


def _save(spec, output_dir: Path, quantization: str | None, record: str) -> None:
    """CTranslate2's own ``Converter.convert`` (validate, optimize/quantize, save) on the spec built here, into a
    temporary folder inside ``output_dir`` whose files then replace the folder's: a conversion that fails leaves an
    earlier export as it was, the folder itself stays (a mount point, a link), and what of it the export does not
    write again is named in a warning (CTranslate2's ``force`` deleted a whole folder silently)."""
    from ctranslate2.converters.converter import Converter

    class FromSpec(Converter):
        def _load(self):
            return spec

    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        with temporary_folder(output_dir, "ct2") as tmp:
            written = Path(tmp) / "model"
            FromSpec().convert(str(written), quantization=quantization)
            (written / EXPORT_RECORD).write_text(record)
            dropped = sorted(item.name for item in output_dir.iterdir()
                             if item.name != Path(tmp).name and not (written / item.name).exists())
            if dropped:
                logger.warning("replacing %s (force=True): %s, which this export does not write, removed", output_dir,
                               ", ".join(dropped))
            for item in (output_dir / name for name in dropped):
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                else:
                    item.unlink()
            move_into(written, output_dir)
    except BaseException:
        if created:  # nothing was there: nothing stays
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
