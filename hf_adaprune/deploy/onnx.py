"""ONNX export of pruned models, laid out as optimum lays them out, and an onnxruntime runner.

Encoders: ``model.onnx`` (ids, mask and, for BERT-family models with segment
embeddings, ``token_type_ids`` in; ``logits``, QA's ``start_logits`` and
``end_logits``, or ``last_hidden_state`` out). Seq2seq (Marian, BART, Whisper, ...): ``encoder_model.onnx``,
``decoder_model.onnx`` (the first step, or every step on the whole prefix) and
``decoder_with_past_model.onnx`` (later steps on one new token with the past
key values; per-layer cache shapes, see :mod:`.onnx_past`). Batch and sequence
axes are dynamic. Uneven heads per layer, removed layers and fully removed
attentions or FFNs export as they are: the graphs are traced from the compacted
model.

``export_onnx`` also writes the config, generation config and tokenizer or
processor next to the graphs; :class:`OnnxEncoder` runs an encoder graph and
:class:`OnnxSeq2Seq` greedy decoding with onnxruntime; int8 graphs come from
:func:`~.onnx_int8.quantize_onnx`.
"""

from __future__ import annotations

import copy
import inspect
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.masks import get_masks
from ..families.registry import readable_positions
from ..hub.config_marker import MODEL_TYPE_PREFIX, transformers_base
from ..hub.save import check_save_request, move_into
from ..surgery import compact
from .checks import check_transformers_model
from .onnx_past import DECODER_FILE, DECODER_WITH_PAST_FILE, export_decoders, greedy_with_past

ENCODER_FILE = "model.onnx"
SEQ2SEQ_FILES = ("encoder_model.onnx", DECODER_FILE, DECODER_WITH_PAST_FILE)
OPSET = 17


def _require(package: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(f"ONNX export needs {package}: pip install onnx onnxruntime") from error


class _EncoderOnly(nn.Module):
    def __init__(self, model, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        result = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return tuple(getattr(result, name) for name in self.outputs)


# what an encoder graph returns, by the outputs its head has: classifiers' logits, QA's start/end logits, or states
ENCODER_OUTPUTS = (("logits",), ("start_logits", "end_logits"), ("last_hidden_state",))


def _encoder_outputs(probe) -> list[str]:
    for names in ENCODER_OUTPUTS:
        if all(getattr(probe, name, None) is not None for name in names):
            return list(names)
    raise ValueError(f"ONNX export of encoders handles outputs {ENCODER_OUTPUTS}; this model returns "
                     f"{list(probe.keys())}")


def _uses_token_types(model) -> bool:
    """BERT-family models whose segment embedding has more than one row: sentence pairs need token_type_ids."""
    return getattr(model.config, "type_vocab_size", 0) > 1 and \
        "token_type_ids" in inspect.signature(model.forward).parameters


class _Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, inputs, attention_mask=None):
        extra = {} if attention_mask is None else {"attention_mask": attention_mask}
        return self.encoder(inputs, **extra).last_hidden_state


def _export(module, args: tuple, path: Path, input_names, output_names, dynamic_axes):
    module.eval()  # the exporter restores the wrapper's mode afterwards, and with it the model's: keep both in eval
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks of transformers
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)


def _uses_audio(model) -> bool:
    return model.main_input_name == "input_features"


def _example_inputs(model) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)  # an export leaves the caller's random state as it was
    if _uses_audio(model):
        config = model.config
        frames = 2 * config.max_source_positions  # Whisper's encoder wants exactly its window
        return {"inputs": torch.randn(1, config.num_mel_bins, frames, generator=generator)}
    length = min(7, readable_positions(model.config) or 7)  # a position table cut by prune_positions reads fewer
    ids = torch.randint(3, model.config.vocab_size, (2, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, max(1, length - 2):] = 0  # the second row padded
    return {"inputs": ids, "attention_mask": mask}


def stock_config(config):
    """A copy of ``config`` as the family's stock class, without ``auto_map``: a graph folder holds no remote code,
    and the marked ``model_type`` (``adaprune_bert``) would send loaders looking for it."""
    stock = copy.deepcopy(config)
    stock.__class__ = transformers_base(type(config)) or type(config)
    stock.__dict__.pop("auto_map", None)
    return stock


def check_onnx_request(model, int8: bool = False) -> None:
    """Refuse, before any work, a model :func:`export_onnx` cannot export, or a missing onnx package (with
    ``int8``: or a missing onnxruntime, which :func:`~.onnx_int8.quantize_onnx` runs)."""
    _require("onnx")
    if int8:
        _require("onnxruntime")
    check_transformers_model(model, "export_onnx")
    if any(type(module).__module__.startswith("torch.ao.nn.quantized") for module in model.modules()):
        raise ValueError("ONNX export starts from the float model: this one has torch int8 linears (quantize_int8 / "
                         "load_int8), which ONNX cannot express. Export the float model, then quantize the graph "
                         "with quantize_onnx")
    if type(model).__name__.endswith("ForMultipleChoice"):
        raise ValueError(f"ONNX export does not handle multiple-choice heads ({type(model).__name__}: inputs of "
                         "[batch, choices, sequence]); it exports encoders with one sequence per row and seq2seq "
                         "models")
    if model.main_input_name not in ("input_ids", "input_features"):
        raise ValueError(f"ONNX export handles text models (input_ids) and Whisper (input_features); "
                         f"{type(model).__name__} takes {model.main_input_name}")
    if getattr(model.config, "is_encoder_decoder", False) and not model.can_generate():
        raise ValueError(f"ONNX export handles encoder-decoder models that generate (encoder + decoder graphs, "
                         f"as optimum lays them out) and encoders; {type(model).__name__} is an encoder-decoder "
                         f"with a task head, which it does not export")


def export_onnx(model, save_directory, tokenizer=None, processor=None) -> list[Path]:
    """Export ``model`` (float) to ONNX graphs in ``save_directory``; returns their paths. A model that still has
    masks is compacted first (in place, as :func:`~hf_adaprune.save_pruned` does): the graph holds the kept
    structures only. The folder's ``config.json`` is the family's stock config (``model_type`` ``bert``, no
    ``auto_map``), which any transformers or optimum loader reads without remote code."""
    check_onnx_request(model)
    if any(p.dtype != torch.float32 for p in model.parameters()):  # before compact, which changes the model
        raise ValueError("ONNX export starts from a float32 model; call model.float() first "
                         "(quantize the exported graph with quantize_onnx)")
    check_save_request(save_directory, tokenizer=tokenizer, processor=processor)
    _check_not_a_model_folder(Path(save_directory))
    if not model.config.is_encoder_decoder:  # a head whose outputs it cannot export: refused before compact
        _encoder_inputs_and_outputs(model)
    if get_masks(model) is not None:
        compact(model)
    training, device = model.training, next(model.parameters()).device
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    try:  # into a temporary folder first: an export that fails leaves the folder (an earlier export too) as it was
        with tempfile.TemporaryDirectory(dir=save_directory, prefix=".adaprune-onnx-") as tmp:
            paths = _export_all(model.eval().cpu(), Path(tmp), tokenizer, processor)
            _remove_stale_graphs(save_directory, {item.name for item in Path(tmp).iterdir()})
            move_into(Path(tmp), save_directory)
    finally:  # the caller's model comes back as it came: mode and device
        model.train(training).to(device)
    return [save_directory / path.name for path in paths]


def _check_not_a_model_folder(save_directory: Path) -> None:
    """The graphs' folder gets the stock config.json: written into a saved pruned model's folder, it would replace
    the config that loads the model (its ``auto_map``, ``model_type`` ``adaprune_...``)."""
    config = save_directory / "config.json"
    if not config.is_file():
        return
    try:
        saved = json.loads(config.read_text())
    except ValueError:
        return
    if "auto_map" in saved or str(saved.get("model_type", "")).startswith(MODEL_TYPE_PREFIX):
        raise ValueError(f"{save_directory} holds a saved pruned model: export_onnx writes the stock config.json "
                         "beside its graphs, which would replace the one that loads the model with "
                         f"trust_remote_code; export into another folder (e.g. {save_directory / 'onnx'})")


def _encoder_inputs_and_outputs(model) -> tuple[dict, list[str], object]:
    """An encoder's example inputs, the outputs its graph will return and the probe's outputs (on ``model`` in eval
    mode, no gradients; its mode is restored)."""
    example = _example_inputs(model)
    inputs = {"input_ids": example["inputs"], "attention_mask": example["attention_mask"]}
    if _uses_token_types(model):
        inputs["token_type_ids"] = torch.zeros_like(example["inputs"])
        inputs["token_type_ids"][:, 4:] = 1  # a sentence pair: the segment embedding is in the trace
    training = model.training
    try:
        with torch.no_grad():
            probe = model.eval()(**{k: v.to(next(model.parameters()).device) for k, v in inputs.items()})
    finally:
        model.train(training)
    return inputs, _encoder_outputs(probe), probe


def _remove_stale_graphs(save_directory: Path, written: set[str]) -> None:
    """Graphs of an earlier export that this one did not write (its int8 ones too) would run stale beside the new
    ones: removed. Other files there stay."""
    for name in (ENCODER_FILE, *SEQ2SEQ_FILES):
        for stale in (name, name.replace(".onnx", ".int8.onnx")):
            for path in (save_directory / stale, save_directory / f"{stale}.data", save_directory / f"{stale}_data"):
                if path.name not in written:
                    path.unlink(missing_ok=True)


def _export_all(model, save_directory: Path, tokenizer, processor) -> list[Path]:
    if not model.config.is_encoder_decoder:
        inputs, outputs, probe = _encoder_inputs_and_outputs(model)
        path = save_directory / ENCODER_FILE
        axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
        for name in outputs:
            per_token = probe[name].dim() == 3 or name in ("start_logits", "end_logits")  # one value per token
            axes[name] = {0: "batch"} | ({1: "sequence"} if per_token else {})
        _export(_EncoderOnly(model, outputs), tuple(inputs.values()), path, list(inputs), outputs, axes)
        paths = [path]
    else:
        example = _example_inputs(model)
        paths = [save_directory / name for name in SEQ2SEQ_FILES]
        audio = _uses_audio(model)
        input_name = "input_features" if audio else "input_ids"
        encoder_args = (example["inputs"],) if audio else (example["inputs"], example["attention_mask"])
        encoder_inputs = [input_name] if audio else [input_name, "attention_mask"]
        axes = {input_name: {0: "batch"} | ({} if audio else {1: "sequence"}),
                "last_hidden_state": {0: "batch", 1: "encoder_sequence"}}
        if not audio:
            axes["attention_mask"] = {0: "batch", 1: "sequence"}
        _export(_Encoder(model), encoder_args, paths[0], encoder_inputs, ["last_hidden_state"], axes)
        with torch.no_grad():
            hidden = _Encoder(model)(*encoder_args)
        start = model.generation_config.decoder_start_token_id
        decoder_ids = torch.full((hidden.shape[0], 3), start if start is not None else 0, dtype=torch.long)
        paths[1:] = export_decoders(model, save_directory, _export, decoder_ids, hidden,
                                    None if audio else example["attention_mask"])
    stock_config(model.config).save_pretrained(save_directory)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(save_directory)
    for extra in (tokenizer, processor):
        if extra is not None:
            extra.save_pretrained(save_directory)
    return paths


def _session(path: Path, threads: int | None = None):
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_session(folder, file: str = ENCODER_FILE):
    """An onnxruntime session (CPU) of ``folder/file``."""
    return _session(Path(folder) / file)


class OnnxEncoder(nn.Module):
    """An encoder graph of :func:`export_onnx` (``model.onnx`` or its ``model.int8.onnx``) run by onnxruntime, called
    like the transformers model it came from: ``OnnxEncoder(folder)(input_ids=..., attention_mask=...)`` returns a
    ``ModelOutput`` whose ``logits`` (or ``last_hidden_state``) is a torch tensor, so evaluation loops and
    :func:`~hf_adaprune.reporting.latency.compare_latency` take it as they take the model. ``threads``:
    onnxruntime's intra-op threads (None: its default, one per core)."""

    def __init__(self, folder, file: str = ENCODER_FILE, threads: int | None = None):
        super().__init__()
        self.session = _session(Path(folder) / file, threads)
        self.threads = threads or "onnxruntime default"  # what compare_latency reports for this model
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_name = self.output_names[0]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **_ignored):
        """``labels``: as the transformers model takes them, for a ``loss`` in the output (``Trainer.evaluate``
        finds the labels by this argument)."""
        from transformers.utils import ModelOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {k: v.cpu().numpy().astype(np.int64) for k, v in feed.items() if k in self.input_names}
        outputs = self.session.run(self.output_names, feed)
        outputs = {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)}
        if labels is not None and "logits" in outputs:
            outputs = {"loss": classifier_loss(outputs["logits"], labels), **outputs}
        return ModelOutput(outputs)


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss transformers' heads compute: MSE for one output (regression), binary cross-entropy for float
    multi-hot labels shaped like the logits (multi-label), else cross-entropy over the classes (-100 ignored)."""
    from torch.nn import functional

    logits = logits.float()
    if logits.shape[-1] == 1 and labels.dtype.is_floating_point:
        return functional.mse_loss(logits.squeeze(-1), labels.float().view(logits.shape[:-1]))
    if labels.dtype.is_floating_point and labels.shape == logits.shape:
        return functional.binary_cross_entropy_with_logits(logits, labels)
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.long().reshape(-1), ignore_index=-100)


class OnnxSeq2Seq:
    """Greedy decoding with the encoder and decoder graphs of :func:`export_onnx` (onnxruntime, CPU).

    With ``decoder_with_past_model.onnx`` in the folder, each step after the first feeds one new token and the
    past key values (``use_cache=False`` in :meth:`generate`, or a folder without it: the whole prefix each step).
    ``threads``: onnxruntime's intra-op threads (None: its default, one per core).
    """

    def __init__(self, folder, encoder_file: str = SEQ2SEQ_FILES[0], decoder_file: str = SEQ2SEQ_FILES[1],
                 decoder_with_past_file: str = SEQ2SEQ_FILES[2], threads: int | None = None):
        folder = Path(folder)
        self.encoder = _session(folder / encoder_file, threads)
        self.decoder = _session(folder / decoder_file, threads)
        past = folder / decoder_with_past_file
        self.decoder_with_past = _session(past, threads) if past.is_file() else None
        self.threads = threads or "onnxruntime default"
        self.encoder_inputs = [i.name for i in self.encoder.get_inputs()]
        self.decoder_inputs = [i.name for i in self.decoder.get_inputs()]

    def generate(self, inputs: np.ndarray, attention_mask: np.ndarray | None = None, *,
                 decoder_start_token_id: int, eos_token_id: int, pad_token_id: int,
                 max_new_tokens: int, forced_eos_token_id: int | None = None,
                 use_cache: bool | None = None) -> np.ndarray:
        """Greedy tokens (start token first, ``pad_token_id`` after each row's end), as ``generate`` returns them;
        ``forced_eos_token_id`` (Marian, BART) is forced at the last step, as ``generate`` forces it.
        ``use_cache``: None uses the past key values when the folder has their graph."""
        if use_cache and self.decoder_with_past is None:
            raise ValueError(f"use_cache=True needs {SEQ2SEQ_FILES[2]} next to the decoder: export again "
                             "with export_onnx")
        feed = {self.encoder_inputs[0]: inputs}
        if attention_mask is None and inputs.ndim == 2:  # text without a mask: every token counts
            attention_mask = np.ones_like(inputs, dtype=np.int64)
        mask = None if attention_mask is None else attention_mask.astype(np.int64)
        if "attention_mask" in self.encoder_inputs:
            feed["attention_mask"] = mask
        decoder_mask = mask if "encoder_attention_mask" in self.decoder_inputs else None
        hidden = self.encoder.run(None, feed)[0]
        tokens = np.full((inputs.shape[0], 1), decoder_start_token_id, dtype=np.int64)
        done = np.zeros(inputs.shape[0], dtype=bool)

        def pick_next(logits: np.ndarray, index: int):
            step = logits.argmax(-1)
            if forced_eos_token_id is not None and index == max_new_tokens - 1:
                step = np.full_like(step, forced_eos_token_id)
            step = np.where(done, pad_token_id, step)
            done[:] |= step == eos_token_id
            return step, bool(done.all()) or index == max_new_tokens - 1

        if max_new_tokens <= 0:
            return tokens
        if use_cache is not False and self.decoder_with_past is not None:
            return greedy_with_past(self.decoder, self.decoder_with_past, hidden, decoder_mask, tokens, pick_next)
        for index in range(max_new_tokens):
            feed = {"decoder_input_ids": tokens, "encoder_hidden_states": hidden}
            if decoder_mask is not None:
                feed["encoder_attention_mask"] = decoder_mask
            logits = self.decoder.run(["logits"], feed)[0]
            step, finished = pick_next(logits[:, -1], index)
            tokens = np.concatenate([tokens, step[:, None]], axis=1)
            if finished:
                break
        return tokens
