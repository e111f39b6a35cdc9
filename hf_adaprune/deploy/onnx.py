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
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.masks import get_masks
from ..families.llama import LLAMA_TYPES
from ..families.registry import readable_positions
from ..hub.config_marker import MODEL_TYPE_PREFIX, transformers_base
from ..hub.save import WEIGHT_FILE, check_save_request, check_tokenizer_fits, move_into, temporary_folder
from ..modes import restore_modes, training_modes
from ..plain_forward import plain_forward
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
    stock.dtype = torch.float32  # the graphs' (export takes a float32 model; model.float() leaves config.dtype)
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
    if not getattr(model.config, "is_encoder_decoder", False) and model.can_generate():
        raise ValueError(f"ONNX export does not handle decoder-only language models ({type(model).__name__}): its "
                         "graph would give logits without the KV cache, so every generated token would run the "
                         "whole prefix again. It exports encoders, classification heads (a decoder's "
                         "...ForSequenceClassification too) and encoder-decoder models with their past graphs; "
                         "generate with the pruned model in transformers (or save_int8 it)")
    if model.config.model_type in LLAMA_TYPES and getattr(model.config, "pad_token_id", None) is None:
        raise ValueError(f"{type(model).__name__} reads each row's last token before the padding, and its config has "
                         "no pad_token_id, so it cannot run a padded batch (the export runs one): set "
                         "model.config.pad_token_id = tokenizer.pad_token_id first (a tokenizer without a pad token, "
                         "as Llama's: tokenizer.pad_token = tokenizer.eos_token)")
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
    check_tokenizer_fits(model, tokenizer, processor)
    _check_not_a_model_folder(Path(save_directory))
    with plain_forward(model):  # a model trained with --bf16 / --fp16: the graph computes in float32 as saved
        if not model.config.is_encoder_decoder:  # a head whose outputs it cannot export: refused before compact
            _encoder_inputs_and_outputs(model)
        if get_masks(model) is not None:
            compact(model)
        modes, device = training_modes(model), next(model.parameters()).device
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        try:  # into a temporary folder first: an export that fails leaves the folder (an earlier one too) as it was
            with temporary_folder(save_directory, "onnx") as tmp:
                paths = _export_all(model.eval().cpu(), Path(tmp), tokenizer, processor)
                _remove_stale_graphs(save_directory, {item.name for item in Path(tmp).iterdir()})
                move_into(Path(tmp), save_directory)
        finally:  # the caller's model comes back as it came: mode and device
            restore_modes(modes)
            model.to(device)
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
    weights = sorted(item.name for item in save_directory.iterdir() if WEIGHT_FILE.fullmatch(item.name))
    if weights:  # a dense model's folder: its config (labels, settings of its own) would be replaced
        raise ValueError(f"{save_directory} holds a saved model ({', '.join(weights)}): export_onnx writes the "
                         "config.json of the model it exports beside its graphs, which would replace that model's; "
                         f"export into another folder (e.g. {save_directory / 'onnx'})")


def _encoder_inputs_and_outputs(model) -> tuple[dict, list[str], object]:
    """An encoder's example inputs, the outputs its graph will return and the probe's outputs (on ``model`` in eval
    mode, no gradients; its mode is restored)."""
    example = _example_inputs(model)
    inputs = {"input_ids": example["inputs"], "attention_mask": example["attention_mask"]}
    if _uses_token_types(model):
        inputs["token_type_ids"] = torch.zeros_like(example["inputs"])
        inputs["token_type_ids"][:, 4:] = 1  # a sentence pair: the segment embedding is in the trace
    modes = training_modes(model)
    try:
        with torch.no_grad():
            probe = model.eval()(**{k: v.to(next(model.parameters()).device) for k, v in inputs.items()})
    finally:
        restore_modes(modes)
    return inputs, _encoder_outputs(probe), probe


INT8_SUFFIX = ".int8.onnx"  # quantize_onnx's graph beside each float one


def int8_graph(name: str) -> str:
    """The name :func:`~.onnx_int8.quantize_onnx` gives the int8 graph of float graph ``name`` (``X.onnx`` ->
    ``X.int8.onnx``)."""
    return name.replace(".onnx", INT8_SUFFIX)


def _remove_stale_graphs(save_directory: Path, written: set[str]) -> None:
    """Graphs of an earlier export that this one did not write (its int8 ones too) would run stale beside the new
    ones: removed. Other files there stay."""
    for name in (ENCODER_FILE, *SEQ2SEQ_FILES):
        for stale in (name, int8_graph(name)):
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


def _array(values, dtype, name: str) -> np.ndarray:
    """``values`` (a numpy array, a torch tensor or nested lists) as a numpy array of ``dtype``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = (values.float() if values.is_floating_point() else values).numpy()
    values = np.asarray(values)
    if values.dtype.kind not in "iubf" or (np.issubdtype(dtype, np.integer) and values.dtype.kind == "f"):
        raise TypeError(f"{name}: got an array of {values.dtype}; give {np.dtype(dtype).name} values (a tokenizer's "
                        "return_tensors='np' or 'pt')")
    return values.astype(dtype, copy=False)


class OnnxSeq2Seq:
    """Greedy decoding with the encoder and decoder graphs of :func:`export_onnx` (onnxruntime, CPU).

    With ``decoder_with_past_model.onnx`` in the folder, each step after the first feeds one new token and the
    past key values (``use_cache=False`` in :meth:`generate`, or a folder without it: the whole prefix each step).
    ``threads``: onnxruntime's intra-op threads (None: its default, one per core). For Whisper, the folder's
    ``generation_config.json`` and ``config.json`` (which :func:`export_onnx` writes) give the decoder prompt, the
    suppressed tokens and the lengths, as they give them to transformers' ``generate``.
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
        self.whisper = self.encoder_inputs[0] == "input_features"
        self.generation_config = _saved_generation_config(folder)
        config = folder / "config.json"
        self.config = json.loads(config.read_text()) if config.is_file() else {}

    def generate(self, inputs=None, attention_mask=None, *,
                 decoder_start_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None, max_new_tokens: int | None = None,
                 forced_eos_token_id: int | None = None, use_cache: bool | None = None,
                 generation_config=None, language: str | list[str] | None = None,
                 task: str | None = None, input_ids=None, input_features=None) -> np.ndarray:
        """Greedy tokens; ``use_cache``: None uses the past key values when the folder has their graph.
        ``inputs`` / ``attention_mask``: numpy arrays or torch tensors (ids of any integer type; Whisper's features
        are run in float32).

        Text models (Marian, BART, T5): start token first, ``pad_token_id`` after each row's end, as ``generate``
        returns them; ``decoder_start_token_id``, ``eos_token_id``, ``pad_token_id`` and ``max_new_tokens`` are
        required; ``forced_eos_token_id`` (Marian, BART) is forced at the last step, as ``generate`` forces it.

        Whisper: what transformers' ``WhisperForConditionalGeneration.generate(input_features, ...)`` returns for
        greedy decoding without timestamps (``return_timestamps=False``; one 30 s window). The decoder starts from
        the generation config's prompt: ``decoder_start_token_id``, the ids of ``forced_decoder_ids``, for a
        multilingual model the language (detected per row when none is given or forced) and task tokens, then
        ``<|notimestamps|>``; ``suppress_tokens`` are never chosen, ``begin_suppress_tokens`` not at the first
        step. The rows hold the new tokens only (no prompt, no end-of-text), padded with ``pad_token_id`` to the
        longest, so ``processor.batch_decode(tokens, skip_special_tokens=True)`` gives transformers' text.
        ``generation_config``: used instead of the folder's ``generation_config.json``; ids given here replace
        its ones. ``max_new_tokens`` None: the generation config's ``max_new_tokens``, else its ``max_length``
        (prompt included, at most ``max_target_positions``). ``language`` (one, or one per row) and ``task``
        (``"transcribe"`` / ``"translate"``): as ``generate`` takes them. Temperature fallback, no-speech
        skipping and other logits processors of the generation config are not applied. ``input_ids=`` /
        ``input_features=`` name ``inputs`` as a tokenizer's or processor's output does (``**tokenizer(...)``)."""
        given = [value for value in (inputs, input_ids, input_features) if value is not None]
        if len(given) != 1:
            raise TypeError(f"generate takes the inputs once (inputs, input_ids= or input_features=); got {len(given)}")
        inputs = given[0]
        if use_cache and self.decoder_with_past is None:
            raise ValueError(f"use_cache=True needs {SEQ2SEQ_FILES[2]} next to the decoder: export again "
                             "with export_onnx")
        if not self.whisper:
            missing = [name for name, value in (("decoder_start_token_id", decoder_start_token_id),
                                                ("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id),
                                                ("max_new_tokens", max_new_tokens)) if value is None]
            if missing:
                raise TypeError(f"OnnxSeq2Seq.generate of a text model needs {', '.join(missing)}")
            if language is not None or task is not None or generation_config is not None:
                raise ValueError("generation_config, language and task are read for Whisper only; give a text "
                                 "model's ids as arguments")
        # numpy or torch, any int (ids) / float (Whisper features) dtype: the graph's own
        inputs = _array(inputs, np.float32 if self.whisper else np.int64, self.encoder_inputs[0])
        attention_mask = None if attention_mask is None else _array(attention_mask, np.int64, "attention_mask")
        feed = {self.encoder_inputs[0]: inputs}
        if attention_mask is None and inputs.ndim == 2:  # text without a mask: every token counts
            attention_mask = np.ones_like(inputs, dtype=np.int64)
        mask = None if attention_mask is None else attention_mask.astype(np.int64)
        if "attention_mask" in self.encoder_inputs:
            feed["attention_mask"] = mask
        decoder_mask = mask if "encoder_attention_mask" in self.decoder_inputs else None
        hidden = self.encoder.run(None, feed)[0]
        batch = inputs.shape[0]
        suppress = begin_suppress = None
        if self.whisper:
            config = self._whisper_config(generation_config, decoder_start_token_id, eos_token_id, pad_token_id,
                                          language, task)
            tokens = whisper_prompt(config, batch, lambda: self._detect_language(config, hidden),
                                    self.config.get("forced_decoder_ids"))
            eos_token_id, pad_token_id = config.eos_token_id, config.pad_token_id
            max_new_tokens = whisper_max_new_tokens(config, max_new_tokens, tokens.shape[1],
                                                    self.config.get("max_target_positions"))
            suppress, begin_suppress = config.suppress_tokens, config.begin_suppress_tokens
        else:
            tokens = np.full((batch, 1), decoder_start_token_id, dtype=np.int64)
        prompt_length = tokens.shape[1]
        done = np.zeros(batch, dtype=bool)

        def pick_next(logits: np.ndarray, index: int):
            if suppress or (begin_suppress and index == 0):  # transformers' SuppressTokens(AtBegin)LogitsProcessor
                logits = logits.copy()
                logits[:, token_mask(suppress, logits.shape[-1])] = -np.inf
                if index == 0:
                    logits[:, token_mask(begin_suppress, logits.shape[-1])] = -np.inf
            step = logits.argmax(-1)
            if forced_eos_token_id is not None and index == max_new_tokens - 1:
                step = np.full_like(step, forced_eos_token_id)
            step = np.where(done, pad_token_id, step)
            done[:] |= step == eos_token_id
            return step, bool(done.all()) or index == max_new_tokens - 1

        tokens = self._greedy(hidden, decoder_mask, tokens, pick_next, max_new_tokens, use_cache)
        if self.whisper:
            return whisper_sequences(tokens[:, prompt_length:], eos_token_id, pad_token_id)
        return tokens

    def _greedy(self, hidden, decoder_mask, tokens, pick_next, max_new_tokens: int, use_cache) -> np.ndarray:
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

    def _whisper_config(self, generation_config, decoder_start_token_id, eos_token_id, pad_token_id, language,
                        task):
        """A copy of the generation config ``generate`` decodes with (the argument, else the folder's), with
        the ids, language and task given, checked as transformers' Whisper ``generate`` checks them."""
        from transformers import GenerationConfig

        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        if config is None:  # a folder exported without a generation config: the ids given here only
            config = GenerationConfig()
        for name, value in (("decoder_start_token_id", decoder_start_token_id), ("eos_token_id", eos_token_id),
                            ("pad_token_id", pad_token_id)):
            if value is not None:
                setattr(config, name, value)
        missing = [name for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id")
                   if getattr(config, name, None) is None]
        if missing:
            raise TypeError(f"OnnxSeq2Seq.generate of Whisper needs {', '.join(missing)}: give them, or export the "
                            "model with its generation config (export_onnx writes generation_config.json)")
        if hasattr(config, "is_multilingual") and not config.is_multilingual \
                and (task is not None or language is not None):
            raise ValueError("Cannot specify `task` or `language` for an English-only model")
        for value, name, table in ((language, "language", "lang_to_id"), (task, "task", "task_to_id")):
            if value is not None:
                if not hasattr(config, table):
                    raise ValueError(f"`{name}` needs `{table}` in the generation config, which this one lacks")
                setattr(config, name, value)
        return config

    def _detect_language(self, config, hidden: np.ndarray) -> list[int]:
        """Per row, the language token the decoder scores highest after the start token (transformers'
        ``detect_language``)."""
        first = np.full((hidden.shape[0], 1), config.decoder_start_token_id, dtype=np.int64)
        logits = self.decoder.run(["logits"], {"decoder_input_ids": first, "encoder_hidden_states": hidden})[0]
        logits = logits[:, -1].copy()
        logits[:, ~token_mask(list(config.lang_to_id.values()), logits.shape[-1])] = -np.inf
        return logits.argmax(-1).tolist()


def _saved_generation_config(folder: Path):
    if not (folder / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(folder)


def token_mask(ids, vocab_size: int) -> np.ndarray:
    """Which of ``vocab_size`` logits ``ids`` name (ids outside the vocabulary are left out, as transformers'
    suppressing processors leave them out)."""
    return np.isin(np.arange(vocab_size), np.asarray(list(ids or []), dtype=np.int64))


def whisper_prompt(config, batch: int, detect_language, forced_decoder_ids=None) -> np.ndarray:
    """The decoder prompt transformers' Whisper ``generate`` starts from without timestamps (its
    ``_retrieve_init_tokens``): ``decoder_start_token_id``; with neither ``config.language`` nor ``config.task``,
    the ids of ``forced_decoder_ids`` (the generation config's, else ``forced_decoder_ids`` of the model config);
    a multilingual model's language (``config.language``, else ``detect_language()``: one id per row, when no
    forced id gives it) and task tokens; ``<|notimestamps|>`` last. ``[batch, prompt length]``."""
    from transformers.models.whisper.tokenization_whisper import TASK_IDS, TO_LANGUAGE_CODE

    task, language = getattr(config, "task", None), getattr(config, "language", None)
    start = [config.decoder_start_token_id]
    if task is None and language is None:
        forced = getattr(config, "forced_decoder_ids", None)
        if forced is None:
            forced = forced_decoder_ids
        if forced is not None and forced[0][0] == 1:
            position = 1
            while len(forced) > 0 and forced[0][0] == position:
                start.append(forced[0][1])
                forced, position = forced[1:], position + 1
            if len(forced) > 0:
                raise ValueError(f"forced_decoder_ids {forced} do not follow Whisper's prompt pattern: they need an "
                                 f"entry for every index >= 1 and < {forced[0][0]}")
    language_undefined = len(start) <= 1 or start[1] is None

    def language_id(name: str) -> int:
        name = name.lower()
        if name in config.lang_to_id:
            token = name
        elif name in TO_LANGUAGE_CODE:
            token = f"<|{TO_LANGUAGE_CODE[name]}|>"
        elif name in TO_LANGUAGE_CODE.values():
            token = f"<|{name}|>"
        else:
            raise ValueError(f"Unsupported language: {name}")
        if token not in config.lang_to_id:
            raise ValueError(f"{token} is not supported by this model (not in the generation config's lang_to_id)")
        return config.lang_to_id[token]

    if isinstance(language, (list, tuple)):
        if len(language) != batch or any(name is None for name in language):
            raise ValueError(f"a list of languages needs one language per row ({batch})")
        languages = list(language)
    else:
        languages = [None] * batch if language is None else [language]
    rows = [list(start) for _ in languages]
    language_ids = None
    if language is not None:
        language_ids = [language_id(name) for name in languages]
    elif hasattr(config, "lang_to_id") and language_undefined:
        language_ids = list(detect_language())
    if language_ids is not None:
        for row, token in zip(rows, language_ids):
            if len(row) > 1:
                row[1] = token
            else:
                row.append(token)
    no_timestamps = getattr(config, "no_timestamps_token_id", None)
    for i, row in enumerate(rows):
        if task is not None:
            if task not in TASK_IDS:
                raise ValueError(f"The `{task}` task is not supported. The task should be one of `{TASK_IDS}`")
            row.append(config.task_to_id[task])
        elif language is not None and hasattr(config, "task_to_id"):
            if not any(token in row for token in config.task_to_id.values()):
                row.append(config.task_to_id["transcribe"])
        if hasattr(config, "no_timestamps_token_id") and row[-1] != no_timestamps:
            row.append(no_timestamps)
        rows[i] = [token for token in row if token is not None]
    prompt = np.asarray(rows, dtype=np.int64)
    return np.broadcast_to(prompt, (batch, prompt.shape[1])).copy()


def whisper_max_new_tokens(config, max_new_tokens: int | None, prompt_length: int,
                           max_target_positions: int | None) -> int:
    """How many tokens Whisper's ``generate`` adds to a prompt of ``prompt_length``: ``max_new_tokens`` (or the
    generation config's), else the generation config's ``max_length`` counted with the prompt, at most
    ``max_target_positions``; else transformers' default of 20."""
    if max_new_tokens is None:
        max_new_tokens = getattr(config, "max_new_tokens", None)
    if max_new_tokens is not None:
        if max_target_positions is not None and max_new_tokens + prompt_length > max_target_positions:
            raise ValueError(f"the decoder prompt ({prompt_length} tokens) and max_new_tokens ({max_new_tokens}) "
                             f"exceed Whisper's max_target_positions ({max_target_positions})")
        return max_new_tokens
    max_length = getattr(config, "max_length", None)
    if max_length is None:
        return 20
    total = max_length + prompt_length
    if max_target_positions is not None:
        total = min(total, max_target_positions)
    return total - prompt_length


def whisper_sequences(new_tokens: np.ndarray, eos_token_id: int, pad_token_id: int) -> np.ndarray:
    """Whisper ``generate``'s rows from the greedy new tokens: a row that ends in padding loses as many tokens
    as it holds ``pad_token_id`` (but keeps its end-of-text when that is the padding token), then its final
    end-of-text; the rows are padded with ``pad_token_id`` to the longest (transformers'
    ``generate_with_fallback`` and ``_pad_to_max_length``)."""
    rows = []
    for row in new_tokens:
        if len(row) and row[-1] == pad_token_id:
            paddings = int((row == pad_token_id).sum()) - (pad_token_id == eos_token_id)
            if paddings:
                row = row[:-paddings]
        if len(row) and row[-1] == eos_token_id:
            row = row[:-1]
        rows.append(row)
    longest = max((len(row) for row in rows), default=0)
    out = np.full((len(rows), longest), pad_token_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out
