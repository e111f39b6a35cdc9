"""Audio data of the ASR recipe: manifests, the Free Spoken Digit Dataset, decoding and resampling, transcripts.

Audio is decoded with ``soundfile`` (mixed down to mono) and resampled with
``scipy.signal.resample_poly`` (else linear interpolation); ``datasets.Audio`` would
need ``torchcodec`` for decoding, which this recipe does without. Everything is decoded
before training, so a missing or unreadable file stops the run at once, naming it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from recipes.arguments import RecipeError, load_named_dataset, require_file
from recipes.tables import read_table
from hf_adaprune.reporting.report import write_text

logger = logging.getLogger("hf_adaprune.recipes.asr")

DEFAULT_FSDD_RECORDINGS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fsdd" / "recordings"
MANIFEST_TYPES = (".csv", ".tsv", ".jsonl", ".json")

# "whisper": transformers' BasicTextNormalizer (Whisper's normaliser for any language: lower case, bracketed
# text dropped, symbols and punctuation, apostrophes included, become spaces)
NORMALIZATION_STEPS = ("lowercase", "punctuation", "digits", "whisper")

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

FSDD_MANIFEST_DIR = "manifests"  # --fsdd_dir: where in --output_dir the manifests are written
FSDD_SPLITS = ("train", "validation", "test")

FSDD_PATTERN = re.compile(r"^(\d)_([^_]+)_(\d+)\.wav$")

MIN_SAMPLING_RATE = 1000  # below this a file is not speech audio (or its header is broken)

MAX_RESAMPLE_FACTOR = 1000  # up/down factors of the reduced ratio; standard rates need at most 882


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

    whisper = None
    if "whisper" in steps:
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer

        whisper = BasicTextNormalizer()

    def normalize(text: str) -> str:
        if whisper is not None:
            text = whisper(text)
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
    """Write train/validation/test .csv manifests (columns path, text) for the Free Spoken Digit Dataset
    (:func:`fsdd_manifest_texts`) into ``out_dir``. Returns ``{split: path}``."""
    texts = fsdd_manifest_texts(recordings, test_takes, validation_takes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, text in texts.items():
        target = out_dir / f"{split}.csv"
        write_text(target, text)
        written[split] = str(target)
    logger.info("FSDD manifests in %s: %s", out_dir, {split: len(text.splitlines()) - 1 for split, text in texts.items()})
    return written


def fsdd_manifest_texts(recordings=str(DEFAULT_FSDD_RECORDINGS), test_takes=range(0, 5),
                        validation_takes: int = 5) -> dict[str, str]:
    """The text of each split's .csv manifest (columns path, text) for the Free Spoken Digit Dataset.

    Files are ``{digit}_{speaker}_{take}.wav``; transcripts are the digit's English word
    (zero..nine). Takes in ``test_takes`` (0-4, the dataset's official test split) are the
    test set; of the others, the last ``validation_takes`` takes (45-49 by default) are the
    validation set and the rest the training set. Rows are ordered by take, then speaker,
    then digit, so any prefix of the validation set covers every digit and speaker.
    Returns ``{split: text}`` for the splits that have rows.
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
    splits = {split: [] for split in FSDD_SPLITS}
    for take, speaker, digit, path in rows:
        split = "test" if take in test_takes else "validation" if take in held_out else "train"
        splits[split].append((str(path), DIGIT_WORDS[digit]))
    texts = {}
    for split, items in splits.items():
        if items:
            text = io.StringIO(newline="")
            writer = csv.writer(text)
            writer.writerow(["path", "text"])
            writer.writerows(items)
            texts[split] = text.getvalue()
    return texts

def _manifest_type(path: str, what: str) -> str:
    ext = os.path.splitext(path.lower())[1]
    if ext not in MANIFEST_TYPES:
        raise RecipeError(f"{what} {path!r}: cannot read manifests of type {ext or '(no extension)'!r}; use "
                          f"{', '.join(MANIFEST_TYPES)}")
    return ext


def read_manifest(path: str, what: str, audio_column: str, text_column: str) -> list[dict]:
    """Rows ``{"source": absolute path, "name": path as written, "text": transcript, "row": line}``.

    Read with :func:`recipes.tables.read_table`, as the other recipes read their data files: a .tsv is tab-separated
    text without quoting, a .csv strict CSV; a ragged row, an unclosed quote, a broken JSON line, a non-UTF-8 byte or
    an empty file is a RecipeError naming the file and the line.
    """
    _manifest_type(path, what)
    require_file(path, what)
    table = read_table(path, what)
    columns, unit = table.columns, table.unit
    for option, column in (("audio_column_name", audio_column), ("text_column_name", text_column)):
        if column not in columns:
            raise RecipeError(f"{what} {path!r} has no column {column!r} (--{option}); columns: "
                              f"{', '.join(map(str, columns)) or '(none)'}")
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    for line, record in zip(table.lines, table.rows):
        where = f"{what} {path}, {unit} {line}"
        audio, text = record.get(audio_column), record.get(text_column)  # text, or None (a JSON row without it)
        if audio is None or audio.strip() == "":
            raise RecipeError(f"{where}: no audio path in column {audio_column!r}")
        name = audio.strip()
        source = name if os.path.isabs(name) else os.path.join(base, name)
        if text is None or text.strip() == "":
            raise RecipeError(f"{where} ({name}): missing or empty transcript in column {text_column!r}")
        rows.append({"source": source, "name": name, "text": text.strip(), "row": where})
    missing = [r for r in rows if not os.path.isfile(r["source"])]
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise RecipeError(f"audio file {first['source']} does not exist ({first['row']}){more}")
    return rows


def dataset_folder(dataset_name: str) -> str | None:
    """The folder that relative audio paths of a local ``--dataset_name`` are read from: the folder itself, or the
    folder of a data file; None for a Hub dataset (its paths are taken as they are)."""
    if os.path.isdir(dataset_name):
        return os.path.abspath(dataset_name)
    if os.path.isfile(dataset_name):
        return os.path.dirname(os.path.abspath(dataset_name))
    return None


def _audio_path(audio) -> str | None:
    """The file path an audio value names (a path string, or a {"path"} dict without bytes); None for decoded or
    in-memory audio."""
    if isinstance(audio, str):
        return audio
    if isinstance(audio, dict) and audio.get("array") is None and not audio.get("bytes"):
        return audio.get("path")
    return None


def read_dataset_split(data_args, split: str, cache_dir: str | None, audio_column: str) -> list[dict]:
    """Rows of a ``datasets`` split; audio is decoded later with soundfile (the column is cast to decode=False).

    As in a manifest, a relative audio path of a local ``--dataset_name`` (a folder, or a data file) is relative to
    that folder (the data file's folder), not to the current directory, and every file named must exist (a
    RecipeError naming the first one missing, its split and row)."""
    from datasets import Audio

    dataset = load_named_dataset(data_args, cache_dir, split)
    what = f"--dataset_name {data_args.dataset_name} split {split!r}"
    base = dataset_folder(data_args.dataset_name)
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
            # the csv loader (pandas) reads a cell holding None, NA, null, n/a, ... as a missing value
            hint = "" if text is not None else (" (a CSV cell that reads None, NA, null or n/a is read as missing by "
                                                "the csv loader: give the data as manifests, --train_manifest / "
                                                "--validation_manifest, which read such words as text)")
            raise RecipeError(f"{where} ({name}): missing or empty transcript in column "
                              f"{data_args.text_column_name!r}{hint}")
        path = _audio_path(audio)
        if path is not None:
            if path.strip() == "":
                raise RecipeError(f"{where}: no audio path in column {audio_column!r}")
            path = path.strip()
            audio = path if base is None or os.path.isabs(path) else os.path.join(base, path)
        rows.append({"source": audio, "name": str(name), "text": str(text).strip(), "row": where})
    missing = [r for r in rows if isinstance(r["source"], str) and not os.path.isfile(r["source"])]
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        relative = f"; relative paths are read from {base}" if base is not None else ""
        raise RecipeError(f"audio file {first['source']} does not exist ({first['row']}){more}{relative}")
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

def load_rows(data_args, model_args, training_args) -> dict[str, list[dict]]:
    """{split: rows} from manifests, FSDD or a datasets split; every path checked, nothing decoded yet."""
    if data_args.fsdd_dir:
        written = make_fsdd_manifests(os.path.join(training_args.output_dir, FSDD_MANIFEST_DIR), data_args.fsdd_dir,
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

def write_fsdd_manifests_cli(argv: list[str]) -> None:
    """Only the FSDD manifests: ``python -m recipes.asr --make_fsdd_manifests DIR [--fsdd_dir RECORDINGS]
    [--fsdd_validation_takes N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m recipes.asr --make_fsdd_manifests")
    parser.add_argument("--make_fsdd_manifests", required=True, metavar="DIR")
    parser.add_argument("--fsdd_dir", default=str(DEFAULT_FSDD_RECORDINGS))
    parser.add_argument("--fsdd_validation_takes", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for split, path in make_fsdd_manifests(args.make_fsdd_manifests, args.fsdd_dir,
                                           validation_takes=args.fsdd_validation_takes).items():
        print(f"{split}: {path}")
