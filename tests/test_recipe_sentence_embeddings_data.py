"""The sentence-embeddings recipe fed with a user's own data: STS files with non-finite or unreadable scores, blank
lines, too few or constant dev / test pairs; --sentence_files as tables; what a resume must keep (the STS files and
the training options, files by content); the sentences kept from --sentence_files, logged."""

from __future__ import annotations

import json
import logging
import re
import shutil
from types import SimpleNamespace

import pytest

pytest.importorskip("sentence_transformers")
from conftest import load_recipe  # noqa: E402
from test_sentence_transformers import encoder_folder, recipe_workspace, sentences  # noqa: E402, F401 (the fixture)

recipe = load_recipe("sentence_embeddings")
RecipeError = recipe.RecipeError

BASE = ["--max_steps", "4", "--per_device_train_batch_size", "8", "--pruning_warmup_steps", "1",
        "--pruning_interval", "1", "--pruning_initial_step", "0.3", "--pruning_tolerance", "1.0",
        "--pruning_seq_len", "32", "--max_seq_length", "32", "--use_cpu", "true", "--report_to", "none",
        "--disable_tqdm", "true", "--throughput_batch", "4", "--throughput_repeats", "1"]


def sts_row(i: int, score: str, first: str = "a cat sat", second: str = "the dog ran") -> str:
    return f"genre\tfile\t2012\t{i}\t{score}\t{first}\t{second}"


def write_sts(path, scores) -> str:
    path.write_text("\n".join(sts_row(i, s) for i, s in enumerate(scores)) + "\n")
    return str(path)


def replace_split(stsb, split: str, scores) -> None:
    """sts-SPLIT.csv of ``stsb`` with its first len(scores) rows, rescored."""
    path = stsb / f"sts-{split}.csv"
    rows = path.read_text().splitlines()[:len(scores)]
    path.write_text("\n".join("\t".join([*r.split("\t")[:4], s, *r.split("\t")[5:]]) for r, s in zip(rows, scores))
                    + "\n")


def run_flags(model_dir, stsb, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--stsb_dir", str(stsb), "--output_dir", str(out), *BASE, *extra]


# -- F1: a score that is not a finite number --------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-Infinity"])
def test_a_non_finite_sts_score_is_refused_naming_file_and_line(tmp_path, value):
    path = write_sts(tmp_path / "sts-dev.csv", ["1.0", "2.5", value, "4.0"])
    with pytest.raises(RecipeError, match=re.escape(f"sts-dev.csv, line 3: score {value!r} is not a number")):
        recipe.read_sts(path)


def test_a_nan_score_in_the_test_file_stops_the_run_before_training(encoder_folder, tmp_path):  # noqa: F811
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    replace_split(stsb, "test", ["1.0", "nan", "3.0", "4.0"])
    with pytest.raises(RecipeError, match=r"sts-test.csv, line 2: score 'nan' is not a number"):
        recipe.main(run_flags(model_dir, stsb, tmp_path / "out", "--save_strategy", "no"))
    assert not list(tmp_path.glob("out/**/*.safetensors"))


# -- F5: blank lines, and the score cell named when it is the problem ---------------------------------------------
def test_blank_lines_in_an_sts_file_are_skipped(tmp_path):
    path = tmp_path / "sts-dev.csv"
    path.write_text(sts_row(0, "1.0") + "\n\n" + sts_row(1, "4.0") + "\n\n")
    assert recipe.read_sts(str(path))["score"] == [0.2, 0.8]


@pytest.mark.parametrize("first, message", [
    ("genre\tfile\tyear\tid\tscore\tsentence1\tsentence2", "line 1: score 'score' is not a number (column 5 of a "
                                                            "tab-separated STS Benchmark row; the file has no header "
                                                            "row)"),
    (sts_row(0, "high"), "line 1: score 'high' is not a number"),
    (sts_row(0, ""), "line 1: score '' is not a number")])
def test_an_unreadable_sts_score_is_named_with_its_value(tmp_path, first, message):
    path = tmp_path / "sts-dev.csv"
    path.write_text(first + "\n" + sts_row(1, "4.0") + "\n")
    with pytest.raises(RecipeError, match=re.escape(message)):
        recipe.read_sts(str(path))


# -- F4: dev / test pairs no rank correlation can be measured on -------------------------------------------------
@pytest.mark.parametrize("split, scores, message", [
    ("dev", ["3.0"], r"sts-dev.csv: 1 pair\(s\) to steer by; a rank correlation needs at least 3"),
    ("dev", ["1.0", "4.0"], r"sts-dev.csv: 2 pair\(s\) to steer by; a rank correlation needs at least 3"),
    ("dev", ["2.5"] * 6, "sts-dev.csv: the 6 steering pairs all have the score 2.5; their Spearman is undefined"),
    ("test", ["3.0"], r"sts-test.csv: 1 pair\(s\); a Spearman correlation needs at least 3"),
    ("test", ["1.0", "4.0"], r"sts-test.csv: 2 pair\(s\); a Spearman correlation needs at least 3"),
    ("test", ["2.5"] * 6, "sts-test.csv: every pair has the score 0.5; a Spearman correlation needs scores that "
                          "differ"),
])
def test_too_few_or_constant_dev_and_test_pairs_are_refused_before_training(encoder_folder, tmp_path,  # noqa: F811
                                                                           split, scores, message):
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    replace_split(stsb, split, scores)
    with pytest.raises(RecipeError, match=message):
        recipe.main(run_flags(model_dir, stsb, tmp_path / "out", "--save_strategy", "no"))
    assert not list(tmp_path.glob("out/**/*.safetensors"))


def test_check_steering_pairs_takes_three_varied_pairs_and_constant_ones_under_teacher_steering():
    from datasets import Dataset

    varied = Dataset.from_dict({"sentence1": ["a"] * 3, "sentence2": ["b"] * 3, "score": [0.1, 0.5, 0.9]})
    recipe.check_steering_pairs(varied, "sts-dev.csv", "sts")
    constant = Dataset.from_dict({"sentence1": ["a"] * 3, "sentence2": ["b"] * 3, "score": [0.5] * 3})
    recipe.check_steering_pairs(constant, "sts-dev.csv", "teacher")  # agreement with the dense model: no scores
    with pytest.raises(RecipeError, match="all have the score 2.5"):
        recipe.check_steering_pairs(constant, "sts-dev.csv", "sts")


# -- F2: --sentence_files as tables, decided by the extension ----------------------------------------------------
def test_sentence_files_in_table_formats_are_read_by_their_sentence_column(tmp_path):
    (tmp_path / "s.csv").write_text('id,sentence\n1,"a cat sat, really"\n2,the dog ran\n')
    (tmp_path / "s.jsonl").write_text('{"sentence": "a red car"}\n{"sentence": "the big tree"}\n')
    (tmp_path / "s.json").write_text(json.dumps([{"sentence": "a man walks"}, {"sentence": "the child plays"}]))
    paths = [str(tmp_path / name) for name in ("s.csv", "s.jsonl", "s.json")]
    assert recipe.read_sentences(paths, None) == ["a cat sat, really", "the dog ran", "a red car", "the big tree",
                                                  "a man walks", "the child plays"]


def test_a_table_sentence_file_without_a_sentence_column_is_refused(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"text": "a red car"}\n')
    with pytest.raises(RecipeError, match=re.escape("s.jsonl: a .jsonl file is read by its 'sentence' column; it has "
                                                    "['text'] (or give plain text, one sentence a line)")):
        recipe.read_sentences([str(tmp_path / "s.jsonl")], None)


def test_a_sentence_file_is_a_table_by_its_extension_not_by_tsv_in_its_path(tmp_path):
    folder = tmp_path / "corpus.tsv_old"
    folder.mkdir()
    (folder / "x.txt").write_text("a cat sat\tby the tree\nthe dog ran\n")
    assert recipe.read_sentences([str(folder / "x.txt")], None) == ["a cat sat\tby the tree", "the dog ran"]


# -- F3 / F6: what a resume must keep -----------------------------------------------------------------------------
@pytest.fixture
def distilled_run(encoder_folder, tmp_path):  # noqa: F811
    """A 4-step distillation run steered by dev Spearman, its checkpoints (2 and 4) kept: (folder, flags)."""
    run = tmp_path / "run"
    model_dir, stsb = recipe_workspace(encoder_folder, run)
    (run / "sents.txt").write_text("\n".join(sentences(40, seed=9)) + "\n")
    flags = run_flags(model_dir, stsb, run / "out", "--objective", "distillation", "--sentence_files",
                      str(run / "sents.txt"), "--save_strategy", "steps", "--save_steps", "2")
    recipe.main(flags)
    return run, flags


def test_a_resume_refuses_sts_files_edited_in_place_and_takes_a_moved_copy(distilled_run):
    run, flags = distilled_run
    dev = run / "stsb" / "sts-dev.csv"
    original = dev.read_text()
    replace_split(run / "stsb", "dev", [f"{5 - i * 0.4:.2f}" for i in range(12)])
    with pytest.raises(RecipeError, match=r"--stsb_dir/sts-dev.csv: checkpoint 'sts-dev.csv \(\d+ bytes, sha1 "):
        recipe.main([*flags, "--resume_from_checkpoint", "true"])
    dev.write_text(original)
    shutil.move(run / "stsb", run / "stsb_moved")  # the same files elsewhere: the same steering rows
    (run / "elsewhere").mkdir()
    shutil.move(run / "sents.txt", run / "elsewhere" / "sents.txt")
    moved = [flag.replace(str(run / "stsb"), str(run / "stsb_moved")).replace(str(run / "sents.txt"),
                                                                              str(run / "elsewhere" / "sents.txt"))
             for flag in flags]
    results = recipe.main([*moved, "--resume_from_checkpoint", "true"])
    assert results["pruning"]["decisions"]


def test_metric_options_record_the_sts_train_file_by_content(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for split in ("train", "dev"):
            write_sts(tmp_path / name / f"sts-{split}.csv", ["1.0", "2.0", "3.0"])
    opts = SimpleNamespace(steer="sts", max_dev_pairs=500, max_seq_length=32, objective="cosent",
                           distillation_distance="mse+cosine", sentence_files=[], stsb_dir=str(tmp_path / "a"))
    recorded = recipe.metric_options(opts)
    assert recipe.metric_options(SimpleNamespace(**{**vars(opts), "stsb_dir": str(tmp_path / "b")})) == recorded
    write_sts(tmp_path / "b" / "sts-train.csv", ["1.0", "2.0", "3.5"])
    assert recipe.metric_options(SimpleNamespace(**{**vars(opts), "stsb_dir": str(tmp_path / "b")})) != recorded


def without_sentence_files(flags: list[str]) -> list[str]:
    """``flags`` training cosent (which takes no --sentence_files) instead of distillation."""
    at = flags.index("--sentence_files")
    flags = flags[:at] + flags[at + 2:]
    return [*flags[:flags.index("--objective")], *flags[flags.index("--objective") + 2:], "--objective", "cosent"]


@pytest.mark.parametrize("change, message", [
    ("cosent", "--objective: checkpoint 'distillation', now 'cosent'"),
    ("mse", "--distillation_distance: checkpoint 'mse+cosine', now 'mse'"),
    ("edited sentences", "--sentence_files: checkpoint ['sents.txt ("),
])
def test_a_resume_refuses_another_objective_distance_or_sentence_file(distilled_run, change, message):
    run, flags = distilled_run
    if change == "cosent":
        flags = without_sentence_files(flags)
    elif change == "mse":
        flags = [*flags, "--distillation_distance", "mse"]
    else:
        (run / "sents.txt").write_text("\n".join(sentences(40, seed=10)) + "\n")
    with pytest.raises(RecipeError, match=re.escape(message)):
        recipe.main([*flags, "--resume_from_checkpoint", "true"])


# -- F7: the sentences kept, logged ---------------------------------------------------------------------------
def test_the_unique_sentences_read_are_logged_and_a_short_supply_warned_about(tmp_path, caplog):
    path = tmp_path / "dups.txt"
    path.write_text("a cat sat\n\nthe dog ran\na cat sat\n  \nthe dog ran\na red car\n")
    opts = SimpleNamespace(objective="distillation", sentence_files=[str(path)], max_train_samples=50)
    with caplog.at_level(logging.INFO):
        _, kept = recipe.training_data(opts)
    assert kept == ["a cat sat", "the dog ran", "a red car"]
    assert f"--sentence_files {path}: 3 unique sentences of the 7 lines or rows read" in caplog.text
    assert "--max_train_samples 50: --sentence_files hold only 3 unique sentences; training on those" in caplog.text


@pytest.mark.parametrize("flag", ["--gradient_accumulation_steps", "--per_device_train_batch_size",
                                  "--per_device_eval_batch_size"])
def test_counts_below_one_are_refused_before_any_work(encoder_folder, tmp_path, flag):  # noqa: F811
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    with pytest.raises(RecipeError, match=f"{flag} must be >= 1; got 0"):
        recipe.main(run_flags(model_dir, stsb, tmp_path / "out", flag, "0"))


def test_a_first_module_hf_adaprune_cannot_prune_is_refused_before_any_work(tmp_path, monkeypatch):
    """A StaticEmbedding model failed setting max_seq_length (a property without a setter)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "cat": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)]).save(str(tmp_path / "static"))
    evaluated = []
    monkeypatch.setattr(recipe, "spearman", lambda *args: evaluated.append(args))
    with pytest.raises(RecipeError, match="--model_name_or_path: hf_adaprune prunes the transformers model in a "
                                          "SentenceTransformer's first module.*first module is StaticEmbedding"):
        recipe.main(run_flags(tmp_path / "static", tmp_path / "stsb", tmp_path / "out"))
    assert evaluated == []


def test_a_run_in_bf16_scores_and_times_the_models_as_saved(encoder_folder, tmp_path, monkeypatch):  # noqa: F811
    """--bf16 leaves accelerate's autocast wrapper on the trained models: the pruned and layer-drop models were
    scored and timed under autocast, the dense one not (the speed-up overstated)."""
    from hf_adaprune.plain_forward import has_autocast_forward

    timed, compare_latency = [], recipe.compare_latency

    def recording(models, inputs, **kwargs):
        timed.extend((name, has_autocast_forward(model)) for name, model in models.items())
        return compare_latency(models, inputs, **kwargs)

    monkeypatch.setattr(recipe, "compare_latency", recording)
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    recipe.main(run_flags(model_dir, stsb, tmp_path / "out", "--bf16", "true", "--layer_drop_baseline", "true",
                          "--keep_layers", "0", "--save_strategy", "no"))
    assert {name for name, _ in timed} == {"dense", "pruned", "layer_drop"}
    assert not any(wrapped for _, wrapped in timed), timed


def test_the_parameters_reported_count_a_dense_layer_after_pooling(encoder_folder):  # noqa: F811 - the fixture
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense
    from test_sentence_transformers import tiny_sentence_transformer

    base = tiny_sentence_transformer(encoder_folder)
    model = SentenceTransformer(modules=[base[0], base[1], Dense(base.get_sentence_embedding_dimension(), 8)])
    assert recipe.profile(model, 16)["params"] == sum(p.numel() for p in model.parameters())
    assert recipe.profile(model, 16)["params"] > sum(p.numel() for p in base[0].auto_model.parameters())
