"""The recipes on a user's own material: a folder a recipe saved as the model to start from, a local audio folder
without torchcodec, a rerun after an error with --fsdd_dir, and YAML configs whose text values look like booleans.

Tiny models built here; no Hub, no prompt (``input`` fails the test if transformers asks for trust_remote_code).
"""

from __future__ import annotations

import builtins
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from hf_adaprune import attach_masks, save_pruned
from hf_adaprune.layout import PrunedModelMixin, read_record

from conftest import load_recipe

text_classification = load_recipe("text_classification")
translation = load_recipe("translation")
asr = load_recipe("asr")
skeleton = load_recipe("skeleton")
arguments = load_recipe("arguments")
RecipeError = arguments.RecipeError

WORDS = ["a", "fine", "dull", "film", "great", "poor", "plot", "acting", "story", "ending", "cast", "scenes"]
REVIEWS = [("a fine film", "yes"), ("a dull film", "no"), ("great acting", "yes"), ("poor plot", "no"),
           ("fine story", "yes"), ("dull ending", "no"), ("great cast", "yes"), ("poor scenes", "no")]
TRAINING = ["--max_steps", "4", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--learning_rate", "1e-3", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
            "--dataloader_pin_memory", "false", "--disable_tqdm", "true", "--pruning_warmup_steps", "1",
            "--pruning_interval", "1", "--pruning_initial_step", "0.3", "--pruning_target", "0.3",
            "--pruning_tolerance", "100", "--latency_repeats", "1"]


@pytest.fixture(autouse=True)
def _no_prompt(monkeypatch):
    """Offline, and a prompt (transformers' trust_remote_code question) fails the test instead of waiting."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def prompt(*args, **kwargs):
        raise AssertionError(f"asked for input: {args}")

    monkeypatch.setattr(builtins, "input", prompt)


def prune_and_save(model, folder: Path, **extras) -> Path:
    """Prune the first half of every head / neuron group of ``model`` and save it as a recipe does."""
    masks = attach_masks(model)
    for name, mask in masks.masks.items():
        kept = torch.ones(mask.numel())
        kept[: mask.numel() // 2] = 0
        masks.set(name, kept)
    save_pruned(model, folder, **extras)
    assert json.loads((folder / "config.json").read_text())["model_type"].startswith("adaprune_")
    return folder


# -- 1. a folder a recipe saved is a model to start from -----------------------------------------------------
@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """Review CSVs with yes/no labels, a word-level BERT tokenizer and a tiny BERT config."""
    tmp = tmp_path_factory.mktemp("reviews")
    for split in ("train", "dev"):
        (tmp / f"{split}.csv").write_text("review,label\n" + "".join(f"{t},{y}\n" for t, y in REVIEWS))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (tmp / "vocab.txt").write_text("\n".join(specials + WORDS) + "\n")
    transformers.BertTokenizerFast(vocab=str(tmp / "vocab.txt")).save_pretrained(tmp / "tokenizer")
    transformers.BertConfig(vocab_size=len(specials) + len(WORDS), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=48,
                            max_position_embeddings=64).save_pretrained(tmp / "config")
    return tmp


def review_args(ws: Path, out: Path, *model) -> list[str]:
    return [*model, "--train_file", str(ws / "train.csv"), "--validation_file", str(ws / "dev.csv"),
            "--text_column_name", "review", "--output_dir", str(out), "--max_seq_length", "16",
            "--pruning_seq_len", "16", "--pruning_metric", "accuracy"]


@pytest.fixture(scope="module")
def pruned_classifier(reviews, tmp_path_factory):
    """What a first text-classification run saved: a pruned classifier folder (model_type adaprune_bert)."""
    out = tmp_path_factory.mktemp("first") / "out"
    text_classification.main(review_args(reviews, out, "--config_name", str(reviews / "config"),
                                         "--tokenizer_name", str(reviews / "tokenizer")) + TRAINING)
    assert json.loads((out / "config.json").read_text())["model_type"] == "adaprune_bert"
    return out


def test_a_folder_the_recipe_saved_is_pruned_again(reviews, pruned_classifier, tmp_path, capsys):
    out = tmp_path / "second"
    results = text_classification.main(review_args(reviews, out, "--model_name_or_path", str(pruned_classifier))
                                       + TRAINING)
    assert json.loads((out / "pruning_report.json").read_text())["start_pruned"] is True
    assert results["pruning"]["start_pruned"] is True
    header = next(line for line in capsys.readouterr().out.splitlines()
                  if line.split()[:1] in (["dense"], ["start"]) and "pruned" in line)
    assert header.split()[0] == "start"  # the table names the start as the card does, not "dense"
    first = json.loads((pruned_classifier / "results.json").read_text())
    assert results["comparison"]["params_before"] == first["comparison"]["params_after"]  # starts where it ended
    assert results["comparison"]["params_after"] < results["comparison"]["params_before"]


def test_a_saved_folder_is_pruned_again_without_training(reviews, pruned_classifier, tmp_path):
    results = text_classification.main(review_args(reviews, tmp_path / "pt", "--model_name_or_path",
                                                   str(pruned_classifier)) + [
        "--post_training", "true", "--pruning_target", "0.3", "--pruning_tolerance", "100", "--report_to", "none",
        "--latency_repeats", "1", "--post_training_calibration_samples", "8", "--post_training_refit_samples", "8"])
    assert results["comparison"]["params_after"] < results["comparison"]["params_before"]


def test_a_saved_folder_with_a_broken_record_is_one_error_line(reviews, pruned_classifier, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in pruned_classifier.iterdir():
        if path.is_file():
            (broken / path.name).write_bytes(path.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    del config["adaprune"]["groups"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as done:
        text_classification.TASK.cli(review_args(reviews, tmp_path / "out", "--model_name_or_path", str(broken))
                                     + TRAINING)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"error: cannot load the model / tokenizer from {broken}")
    assert "the hf_adaprune record (adaprune)" in err[-1] and "is incomplete (missing: groups" in err[-1]


def test_translation_loads_a_pruned_folder_and_its_tokenizer(tmp_path):
    pairs = [("a house", "ein haus"), ("a dog", "ein hund"), ("the house", "das haus"), ("the dog", "der hund")]
    for lang, side in (("en", 0), ("de", 1)):
        (tmp_path / f"train.{lang}").write_text("".join(p[side] + "\n" for p in pairs))
    words = sorted({w for pair in pairs for text in pair for w in text.split()})
    words_model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + words)},
                                     unk_token="<unk>"))
    words_model.pre_tokenizer = pre_tokenizers.Whitespace()
    words_model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=words_model, pad_token="<pad>", eos_token="</s>",
                                                     unk_token="<unk>", model_max_length=64)
    config = transformers.MarianConfig(
        vocab_size=len(tokenizer), decoder_vocab_size=len(tokenizer), d_model=16, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=24,
        decoder_ffn_dim=24, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        forced_eos_token_id=1)
    torch.manual_seed(0)
    folder = prune_and_save(transformers.MarianMTModel(config), tmp_path / "pruned", tokenizer=tokenizer)
    train = ["--train_source_file", str(tmp_path / "train.en"), "--train_target_file", str(tmp_path / "train.de")]
    run, _ = skeleton.prepare_run(translation.TASK, [
        "--model_name_or_path", str(folder), *train, "--validation_source_file", str(tmp_path / "train.en"),
        "--validation_target_file", str(tmp_path / "train.de"), "--output_dir", str(tmp_path / "out"),
        "--max_source_length", "16", "--max_target_length", "16", "--report_to", "none"])
    skeleton.build_model(translation.TASK, run)
    assert isinstance(run.model, PrunedModelMixin) and read_record(run.model.config)
    assert run.processing_class("a dog").input_ids == tokenizer("a dog").input_ids


# -- audio ------------------------------------------------------------------------------------------------------
CLIPS = {"train": [("a.wav", "one"), ("b.wav", "two")], "validation": [("c.wav", "one"), ("d.wav", "two")]}


def write_clip(path: Path, seed: int, seconds: float = 0.3, rate: int = 16000) -> None:
    rng = np.random.default_rng(seed)
    soundfile.write(path, (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32), rate)


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    """An audiofolder (datasets' local layout): SPLIT/*.wav with SPLIT/metadata.csv (file_name, transcription)."""
    root = tmp_path_factory.mktemp("audiofolder")
    for i, (split, clips) in enumerate(CLIPS.items()):
        (root / split).mkdir()
        with open(root / split / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "transcription"])
            for j, (name, text) in enumerate(clips):
                write_clip(root / split / name, 10 * i + j)
                writer.writerow([name, text])
    return root


def test_asr_loads_a_pruned_folder_and_its_processor(tmp_path, audio_folder, tiny_ctc_dir):
    processor = transformers.Wav2Vec2Processor.from_pretrained(tiny_ctc_dir)
    folder = prune_and_save(transformers.Wav2Vec2ForCTC.from_pretrained(tiny_ctc_dir), tmp_path / "pruned",
                            processor=processor)
    run, _ = skeleton.prepare_run(asr.TASK, [
        "--model_name_or_path", str(folder), "--train_manifest", str(audio_folder / "train" / "metadata.csv"),
        "--validation_manifest", str(audio_folder / "validation" / "metadata.csv"), "--audio_column_name",
        "file_name", "--text_column_name", "transcription", "--output_dir", str(tmp_path / "out"),
        "--pruning_metric", "wer", "--report_to", "none"])
    skeleton.build_model(asr.TASK, run)
    assert isinstance(run.model, PrunedModelMixin) and read_record(run.model.config)
    assert run.processing_class.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_an_audio_folder_without_torchcodec_is_one_error_line_naming_the_manifest_route(
        tmp_path, audio_folder, tiny_ctc_dir, monkeypatch, capsys):
    for name in ("torchcodec", "torchcodec.encoders", "torchcodec.decoders"):
        monkeypatch.setitem(sys.modules, name, None)  # import torchcodec fails, installed or not
    with pytest.raises(SystemExit) as done:
        asr.TASK.cli(["--model_name_or_path", str(tiny_ctc_dir), "--dataset_name", str(audio_folder),
                      "--text_column_name", "transcription", "--output_dir", str(tmp_path / "out"),
                      "--cache_dir", str(tmp_path / "cache"), "--pruning_metric", "wer", "--report_to", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"error: --dataset_name {audio_folder}: datasets needs torchcodec")
    assert "--train_manifest" in err[-1] and "--audio_column_name file_name" in err[-1]


def test_fsdd_manifests_of_a_run_that_stopped_do_not_block_the_corrected_rerun(tmp_path, tiny_ctc_dir):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for take in range(7):  # takes 0-4 are the test split, 5 training, 6 validation
        for digit in (1, 2):
            write_clip(recordings / f"{digit}_spk_{take}.wav", 10 * take + digit)
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_ctc_dir), "--fsdd_dir", str(recordings), "--fsdd_validation_takes", "1",
            "--output_dir", str(out), "--pruning_metric", "wer", "--report_to", "none"]
    with pytest.raises(RecipeError, match="apply to Whisper models only"):  # when the model is built
        asr.main(argv + ["--whisper_window_seconds", "2"])
    assert sorted(p.name for p in (out / "manifests").iterdir()) == ["test.csv", "train.csv", "validation.csv"]
    run, _ = skeleton.prepare_run(asr.TASK, argv)  # the same command without the mistake
    assert [r["text"] for r in run.splits["validation"]] == ["one", "two"]
    (out / "notes.txt").write_text("mine")  # anything else in the folder still makes it another's
    with pytest.raises(RecipeError, match=r"already holds 2 entries \(manifests, notes.txt\)"):
        skeleton.prepare_run(asr.TASK, argv)
    (out / "notes.txt").unlink()
    # manifests of the same names with other rows are the user's (edited, or another --fsdd_validation_takes): they
    # were replaced without --overwrite_output_dir
    mine = "path,text\n/my/own/clip.wav,my own transcript\n"
    (out / "manifests" / "train.csv").write_text(mine)
    with pytest.raises(RecipeError, match=r"already holds 1 entries \(manifests\)"):
        skeleton.prepare_run(asr.TASK, argv)
    assert (out / "manifests" / "train.csv").read_text() == mine


# -- 4. YAML configs: only true / false are booleans ------------------------------------------------------------
def test_yaml_yes_no_on_off_are_text_and_true_false_booleans(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("drop_labels: no\nsource_lang: no\nlabel_mapping: yes:1,no:0\ntask: off\nlanguage: On\n"
                      "dense_control: true\noverwrite_output_dir: False\nlearning_rate: 5e-5\nmax_steps: 8\n")
    assert arguments.expand_config_file([str(config), "--max_steps", "9"]) == [
        "--drop_labels", "no", "--source_lang", "no", "--label_mapping", "yes:1,no:0", "--task", "off",
        "--language", "On", "--dense_control", "true", "--overwrite_output_dir", "false", "--learning_rate", "5e-5",
        "--max_steps", "8", "--max_steps", "9"]


def test_a_yaml_no_drops_the_label_as_the_flag_does(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("sentence,label\n" + "".join(f"{t},{y}\n" for t, y in REVIEWS + [("so so", "maybe")] * 2))
    config = tmp_path / "run.yaml"
    config.write_text(f"config_name: unused\ntokenizer_name: unused\ntrain_file: {data}\nvalidation_file: {data}\n"
                      f"output_dir: {tmp_path / 'out'}\ndrop_labels: no\n")
    run, _ = skeleton.prepare_run(text_classification.TASK, [str(config)])
    assert run.task_results["labels"] == ["maybe", "yes"]
