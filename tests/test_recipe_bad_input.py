"""Bad input to the text-classification recipe: one clear error before any model is built, nothing overwritten.

Labels are read with one type in every split; a label the training data never had, a
one-row class and numbers mixed with words are errors naming value, file and line; broken
data files (empty, header only, non-UTF-8, ragged, bad JSON) give the recipe's own one-line
error; the output folder is never the loaded model's and never another model's without
--overwrite_output_dir; --resume_from_checkpoint true finds the newest complete checkpoint.
A fuzz test feeds a few hundred corrupted small files through the data steps.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, load_recipe, one_thread_env

recipe = load_recipe("text_classification")
skeleton = load_recipe("skeleton")
RecipeError = recipe.RecipeError

ROWS = [("a fine film", 1), ("a dull film", 0), ("great acting", 1), ("poor plot", 0), ("lovely story", 1),
        ("weak ending", 0), ("superb cast", 1), ("boring scenes", 0)]


def write_csv(path, rows, header="sentence,label") -> str:
    path.write_text("\n".join([header] + [f"{s},{y}" for s, y in rows]) + "\n", encoding="utf-8")
    return str(path)


def data_args(tmp_path, train, validation, *extra) -> list[str]:
    return ["--config_name", "unused", "--tokenizer_name", "unused", "--train_file", train,
            "--validation_file", validation, "--output_dir", str(tmp_path / "out"), *extra]


def prepare(argv):
    run, _ = skeleton.prepare_run(recipe.TASK, argv)
    return run


def write_pruning_state(folder, **arguments) -> None:
    """A ``pruning_state.pt`` the library reads, written under the pruning ``arguments`` given (the others unsaved,
    so not compared)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"controller": {}, "arguments": arguments}, folder / "pruning_state.pt")


# -- labels ------------------------------------------------------------------------------------------
def test_blank_label_in_validation_keeps_two_classes(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    validation = tmp_path / "dev.csv"
    validation.write_text("sentence,label\nfine film,1\nbad film,\ndull film,0\n")
    run = prepare(data_args(tmp_path, train, str(validation)))
    assert run.task_results["labels"] == ["0", "1"]
    assert len(run.splits["validation"]) == 2  # the row without a label is dropped, not a class of its own
    assert set(run.splits["validation"]["label"]) == {"0", "1"}


def test_unseen_validation_label_names_value_file_and_line(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    validation = write_csv(tmp_path / "dev.csv", [("fine", 1), ("odd", 2), ("bad", 0)])
    with pytest.raises(RecipeError, match=re.escape(f"label '2' of column 'label' ({validation}, line 3) never "
                                                    f"occurs in the training data")):
        prepare(data_args(tmp_path, train, validation))


def test_one_row_class_and_mixed_labels_are_refused(tmp_path):
    validation = write_csv(tmp_path / "dev.csv", ROWS[:2])
    typo = write_csv(tmp_path / "typo.csv", ROWS + [("nice", 7)])
    with pytest.raises(RecipeError, match=re.escape(f"label '7' of column 'label' occurs in one training row only "
                                                    f"({typo}, line 10)")):
        prepare(data_args(tmp_path, typo, validation))
    mixed = write_csv(tmp_path / "mixed.csv", ROWS + [("nice", "yes"), ("fine", "yes")])
    with pytest.raises(RecipeError, match=r"mixes numbers \['0', '1'\] and words \['yes'\] \(first word at "
                                          r"\S*mixed\.csv, line 10\)"):
        prepare(data_args(tmp_path, mixed, validation))


# -- data files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "is empty"),
    ("header.csv", b"sentence,label\n", "has a header (sentence, label) but no data rows"),
    ("latin1.csv", "sentence,label\ncaf\xe9,1\n".encode("latin-1"), "line 2: byte 0xe9 is not UTF-8 text"),
    ("ragged.csv", b"sentence,label\na,1\nb,0,extra\n", "line 3: 3 field(s) where the header has 2"),
    ("short.csv", b"sentence,label\na,1\nb\n", "line 3: 1 field(s) where the header has 2"),
    ("quote.csv", b'sentence,label\n"a,1\nb,0\n', "line 2: a quoted field starts on this line and never ends"),
    ("broken.jsonl", b'{"sentence": "a", "label": 1}\n{"sentence": "b", "label": \n', "line 2: not valid JSON"),
    ("list.jsonl", b'{"sentence": "a", "label": 1}\n[1, 2]\n', "line 2: a list, not an object"),
    ("nul.csv", b"sentence,label\na\x00,1\n", "line 2: a NUL byte"),
    # pandas' DataFrame.to_json() writes columns by default; such a file was read as one row of JSON text
    ("columns.json", b'{"sentence": {"0": "a", "1": "b"}, "label": {"0": 1, "1": 0}}',
     "one JSON object of columns ('sentence', 'label'); write one object per row"),
    ("lists.json", b'{"sentence": ["a", "b"], "label": [1, 0]}', "one JSON object of columns"),
])
def test_broken_validation_file_gets_one_line_naming_file_and_line(tmp_path, name, content, message):
    train = write_csv(tmp_path / "train.csv", ROWS)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RecipeError) as error:
        prepare(data_args(tmp_path, train, str(tmp_path / name)))
    text = str(error.value)
    assert text.startswith(f"--validation_file {tmp_path / name}") and message in text and "\n" not in text


def test_command_line_prints_one_error_line_without_traceback(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    (tmp_path / "dev.csv").write_bytes(b"sentence,label\na,1\nb,0,extra\n")
    done = subprocess.run([sys.executable, "recipes/text_classification.py", *data_args(tmp_path, train,
                           str(tmp_path / "dev.csv"))], cwd=ROOT, capture_output=True, text=True,
                          env=one_thread_env(), timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"error: --validation_file {tmp_path / 'dev.csv'}, line 3: 3 "
                                                    f"field(s) where the header has 2 (sentence, label); a stray "
                                                    f"delimiter, quote or line break?")


# -- output folder -----------------------------------------------------------------------------------
def test_output_dir_is_never_the_loaded_model_nor_another_model_without_overwrite(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    train = write_csv(tmp_path / "train.csv", ROWS)
    args = ["--model_name_or_path", str(model), "--train_file", train, "--validation_file", train]
    for extra in ([], ["--overwrite_output_dir", "true"]):
        with pytest.raises(RecipeError, match="is the folder the model is loaded from"):
            prepare(args + ["--output_dir", str(model) + "/", *extra])
    other = tmp_path / "earlier_run"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(RecipeError, match="already holds a saved model; choose another folder or pass "
                                          "--overwrite_output_dir true"):
        prepare(args + ["--output_dir", str(other)])
    assert prepare(args + ["--output_dir", str(other), "--overwrite_output_dir", "true"]).splits["train"]
    assert (other / "model.safetensors").read_bytes() == b""  # nothing was written before the check
    notes = tmp_path / "notes"  # the user's own files, no model: refused as well
    notes.mkdir()
    (notes / "README.md").write_text("mine")
    (notes / "results.json").write_text("{}")
    with pytest.raises(RecipeError, match=r"already holds 2 entries \(README.md, results.json\); choose another "
                                          r"folder or pass --overwrite_output_dir true"):
        prepare(args + ["--output_dir", str(notes)])
    assert (notes / "README.md").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert prepare(args + ["--output_dir", str(tmp_path / "empty")]).splits["train"]


def test_a_teacher_folder_is_never_written_over_nor_removed(tmp_path):
    """--teacher_model_name_or_path in --output_dir: the final save wrote over it (exit 0), or, as an earlier run's
    checkpoint, --overwrite_output_dir removed it before it loaded; refused as the loaded model is."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    train = write_csv(tmp_path / "train.csv", ROWS)
    out = tmp_path / "out"
    teacher = out / "checkpoint-4"
    teacher.mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    (teacher / "model.safetensors").write_bytes(b"teacher")
    args = ["--model_name_or_path", str(model), "--train_file", train, "--validation_file", train, "--distillation",
            "true"]
    with pytest.raises(RecipeError, match=re.escape(f"--output_dir {teacher} is the folder the model is loaded from "
                                                    f"({teacher})")):
        prepare(args + ["--teacher_model_name_or_path", str(teacher), "--output_dir", str(teacher)])
    with pytest.raises(RecipeError, match=re.escape(f"--output_dir {out} holds the checkpoint a model, config or "
                                                    f"tokenizer is loaded from ({teacher}), and --overwrite_output_dir "
                                                    "removes an earlier run's checkpoints")):
        prepare(args + ["--teacher_model_name_or_path", str(teacher), "--output_dir", str(out),
                        "--overwrite_output_dir", "true"])
    assert (teacher / "model.safetensors").read_bytes() == b"teacher"


def test_folders_an_earlier_run_left_are_named(tmp_path, caplog):
    import logging

    train = write_csv(tmp_path / "train.csv", ROWS)
    out = tmp_path / "out"
    (out / "dense_control").mkdir(parents=True)
    (out / "deploy" / "vocabulary").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        prepare(data_args(tmp_path, train, train, "--overwrite_output_dir", "true"))
    assert "holds dense_control/ and deploy/ from an earlier run, which this run does not write" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare(data_args(tmp_path, train, train, "--overwrite_output_dir", "true", "--dense_control", "true",
                          "--prune_vocabulary", "true"))
    assert "from an earlier run" not in caplog.text  # this run writes both anew


def test_deploy_subfolders_an_earlier_run_left_are_named(tmp_path, caplog):
    import logging

    train = write_csv(tmp_path / "train.csv", ROWS)
    out = tmp_path / "out"
    for name in ("vocabulary", "onnx", "int8"):
        (out / "deploy" / name).mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        prepare(data_args(tmp_path, train, train, "--overwrite_output_dir", "true", "--quantize", "int8"))
    assert f"{out / 'deploy'} holds vocabulary/ and onnx/ from an earlier run, which this run does not write" \
        in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare(data_args(tmp_path, train, train, "--overwrite_output_dir", "true", "--quantize", "int8",
                          "--export_onnx", "true", "--prune_vocabulary", "true"))
    assert "from an earlier run" not in caplog.text  # this run writes all three anew


def test_an_overwriting_run_removes_the_earlier_runs_checkpoints_and_metrics_only(tmp_path, caplog):
    import logging

    train = write_csv(tmp_path / "train.csv", ROWS)
    out = tmp_path / "out"
    for step in (3, 12):  # --resume_from_checkpoint true would take checkpoint-12 of the earlier run
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "pruning_state.pt").write_bytes(b"")
    # results.json / .md: a run stopped after saving its model would leave the earlier run's figures beside it
    for name in ("all_results.json", "test_results.json", "results.json", "results.md", "README.md", "notes.txt"):
        (out / name).write_text("{}")
    run, resume_from = skeleton.prepare_run(recipe.TASK, data_args(tmp_path, train, train, "--overwrite_output_dir",
                                                                    "true"))
    assert (out / "checkpoint-12").is_dir()  # nothing is removed before the model is built and training starts
    with caplog.at_level(logging.WARNING):
        skeleton.clear_earlier_run(run, resume_from)
    assert "removing what an earlier run left" in caplog.text and "checkpoint-12" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "notes.txt"]  # replaced by the run, or not its


def test_an_evaluators_appended_files_go_and_the_users_files_beside_them_stay(tmp_path):
    from recipes.arguments import remove_earlier_run_outputs

    (tmp_path / "eval").mkdir()
    for name in ("eval/similarity_evaluation_sts-dev_results.csv", "eval/my_human_ratings.csv", "notes.txt",
                 "results.json"):
        (tmp_path / name).write_text("x")
    remove_earlier_run_outputs(str(tmp_path), patterns=("eval/*_results.csv",))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["eval", "eval/my_human_ratings.csv",
                                                                                 "notes.txt"]


def test_an_overwriting_run_removes_the_reports_of_an_earlier_run_of_either_mode(tmp_path, caplog):
    import logging

    train = write_csv(tmp_path / "train.csv", ROWS)
    out = tmp_path / "out"
    out.mkdir()
    reports = ["post_training_report.json", "pruning_curve.png", "pruning_layers.png", "pruning_report.json",
               "training_args.bin"]  # a training run's and a --post_training run's: neither is this run's
    for name in reports + ["model.safetensors"]:
        (out / name).write_bytes(b"earlier")
    run, resume_from = skeleton.prepare_run(recipe.TASK, data_args(tmp_path, train, train, "--overwrite_output_dir",
                                                                    "true"))
    with caplog.at_level(logging.WARNING):
        skeleton.clear_earlier_run(run, resume_from)
    assert f"removing what an earlier run left in {out} and this run would be mixed with: {', '.join(reports)}" \
        in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]  # replaced when the run saves its model


def test_deploy_folder_refuses_the_loaded_model_inside_it_not_a_sibling_with_the_same_prefix(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    out = tmp_path / "out"
    for name in ("deployment_v1", "deploy/model"):
        (out / name).mkdir(parents=True)
        (out / name / "config.json").write_text("{}")
    args = ["--train_file", train, "--validation_file", train, "--output_dir", str(out), "--overwrite_output_dir",
            "true", "--quantize", "int8"]
    assert prepare(["--model_name_or_path", str(out / "deployment_v1"), *args]).splits["train"]
    with pytest.raises(RecipeError, match="the deployed copies go to .*, which holds the model the run loads"):
        prepare(["--model_name_or_path", str(out / "deploy" / "model"), *args])


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_split_file_and_its_split_percentage_are_refused_together(tmp_path, split):
    train = write_csv(tmp_path / "train.csv", ROWS)
    extra = ["--test_file", train] if split == "test" else []
    with pytest.raises(RecipeError, match=f"give --{split}_file or --{split}_split_percentage, not both"):
        prepare(data_args(tmp_path, train, train, *extra, f"--{split}_split_percentage", "20"))


@pytest.mark.parametrize("flags", [["--do_train", "false"], ["--do_eval=False"], ["--do_predict", "no"]])
def test_run_mode_flags_set_to_false_are_refused_not_ignored(tmp_path, flags):
    train = write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(RecipeError, match=f"--{flags[0].lstrip('-').partition('=')[0]} .*the recipes do not read it"):
        prepare(data_args(tmp_path, train, train, *flags))
    assert prepare(data_args(tmp_path, train, train, "--do_train", "--do_eval", "true")).splits["train"]


@pytest.mark.parametrize("flags, flag", [(["--do-train", "false"], "do_train"), (["--do-predict=false"], "do_predict"),
                                         (["--do_tr", "false"], "do_train"), (["--do-ev", "0"], "do_eval"),
                                         (["CONFIG"], "do_train")])
def test_run_mode_flags_set_to_false_are_refused_however_spelt(tmp_path, flags, flag):
    train = write_csv(tmp_path / "train.csv", ROWS)
    argv = data_args(tmp_path, train, train, *flags)
    if flags == ["CONFIG"]:  # a config file's key, spelt with a dash
        (tmp_path / "run.yaml").write_text("do-train: false\n")
        argv = [str(tmp_path / "run.yaml"), *argv[:-1]]
    with pytest.raises(RecipeError, match=f"^--{flag} false: the recipes do not read it"):
        prepare(argv)
    assert prepare(data_args(tmp_path, train, train, "--do-train", "--do_ev=true")).splits["train"]


def test_help_shows_the_run_mode_flags_defaults(capsys):
    with pytest.raises(SystemExit):
        recipe.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    # Python 3.13's argparse writes the metavar once for the two spellings, earlier ones after each
    spelled = re.search(r"--do_train(?: \[DO_TRAIN\])?, --do-train \[DO_TRAIN\] Whether to run training\.", help_text)
    assert spelled, help_text[:2000]
    do_train = help_text[spelled.start():].split("--do_eval")[0]
    assert do_train.rstrip().endswith("(default: False)")  # not the None the run-mode check reads them with


def test_a_checkpoint_linked_into_the_output_dir_resumes_that_run(tmp_path):
    """--resume_from_checkpoint true finds out/checkpoint-6, a link to another disk: the run continues the one the
    folder holds (the link's target was compared with the folder, and the run was refused as another's)."""
    elsewhere = tmp_path / "scratch" / "checkpoint-6"
    elsewhere.mkdir(parents=True)
    (elsewhere / "pruning_state.pt").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint-6").symlink_to(elsewhere, target_is_directory=True)
    (out / "trainer_state.json").write_text("{}")
    arguments = load_recipe("arguments")
    assert arguments.resumes_run_in(str(out), str(out / "checkpoint-6"))
    arguments.check_output_dir(str(out), [], overwrite=False, resume_from=str(out / "checkpoint-6"))


def test_metric_of_generated_text_is_refused(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    for name in ("sacrebleu", "wer"):
        with pytest.raises(RecipeError, match=f"--pruning_metric '{name}' scores generated text; text classification "
                                              "is steered by accuracy"):
            prepare(data_args(tmp_path, train, train, "--pruning_metric", name))


def test_model_without_a_classification_head_is_one_error_line(tmp_path):
    from transformers import MarianConfig

    folder = tmp_path / "marian"
    MarianConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32).save_pretrained(folder)
    train = write_csv(tmp_path / "train.csv", ROWS)
    done = subprocess.run([sys.executable, "recipes/text_classification.py", "--model_name_or_path", str(folder),
                           "--train_file", train, "--validation_file", train, "--output_dir", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"error: {folder} is a marian model, which has no "
                                                    "sequence-classification head in transformers; give a text "
                                                    "encoder (BERT, RoBERTa, ...): translation and speech models have "
                                                    "recipes of their own")


@pytest.mark.parametrize("post_training", [False, True])
def test_a_family_it_cannot_prune_is_named_before_the_data_is_read(tmp_path, post_training):
    """DeBERTa v1 was refused only once the data was tokenized and the model built; under --post_training the error
    said to drop the flag, and the run without it then failed the same way."""
    from transformers import DebertaConfig

    folder = tmp_path / "deberta"
    DebertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  architectures=["DebertaForSequenceClassification"]).save_pretrained(folder)
    train = write_csv(tmp_path / "train.csv", ROWS)
    argv = ["--model_name_or_path", str(folder), "--train_file", train, "--validation_file", train, "--output_dir",
            str(tmp_path / "out")] + (["--post_training", "true"] if post_training else [])
    with pytest.raises(RecipeError, match=r"hf_adaprune cannot prune model_type 'deberta' \(DeBERTa v1, "
                                          r"microsoft/deberta-base / -large; DeBERTa-v2 and v3, model_type "
                                          r"'deberta-v2', are\)"):
        prepare(argv)


# -- resuming ----------------------------------------------------------------------------------------
def test_resume_true_takes_the_newest_complete_checkpoint(tmp_path):
    out = tmp_path / "out"
    train = write_csv(tmp_path / "train.csv", ROWS)
    args = data_args(tmp_path, train, train, "--resume_from_checkpoint", "true")
    with pytest.raises(RecipeError, match=r"--resume_from_checkpoint true: no checkpoint-N folder in --output_dir"):
        skeleton.prepare_run(recipe.TASK, args)
    for step in (2, 4, 10):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    with pytest.raises(RecipeError, match=r"none of the checkpoints in \S+ \(checkpoint-2, checkpoint-4, "
                                          r"checkpoint-10\) holds pruning_state\.pt"):
        skeleton.prepare_run(recipe.TASK, args)
    for step in (2, 4):
        write_pruning_state(out / f"checkpoint-{step}")
    _, resume_from = skeleton.prepare_run(recipe.TASK, args)
    assert resume_from == str(out / "checkpoint-4")  # checkpoint-10 lacks its pruning state
    with pytest.raises(RecipeError, match=r"already holds 3 entries \(checkpoint-10, checkpoint-2, checkpoint-4\); "
                                          r"choose another folder, --resume_from_checkpoint true to continue"):
        skeleton.prepare_run(recipe.TASK, args[:-1] + ["false"])
    _, resume_from = skeleton.prepare_run(recipe.TASK, args[:-1] + ["false", "--overwrite_output_dir", "true"])
    assert resume_from is None
    with pytest.raises(RecipeError, match="not a pruning checkpoint folder"):
        skeleton.prepare_run(recipe.TASK, args[:-1] + [str(out / "checkpoint-10")])


def test_resuming_another_folders_checkpoint_needs_an_empty_output_dir_or_overwrite(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    earlier = tmp_path / "earlier" / "checkpoint-4"
    write_pruning_state(earlier)
    mine = tmp_path / "mine"  # a folder of the user's, not the run the checkpoint belongs to
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"mine")
    args = ["--config_name", "unused", "--tokenizer_name", "unused", "--train_file", train, "--validation_file", train,
            "--resume_from_checkpoint", str(earlier), "--output_dir", str(mine)]
    with pytest.raises(RecipeError, match="already holds a saved model; choose another folder or pass "
                                          "--overwrite_output_dir true"):
        skeleton.prepare_run(recipe.TASK, args)
    assert (mine / "model.safetensors").read_bytes() == b"mine"
    _, resume_from = skeleton.prepare_run(recipe.TASK, args + ["--overwrite_output_dir", "true"])
    assert resume_from == str(earlier)
    # the run a folder holds continues without --overwrite_output_dir
    _, resume_from = skeleton.prepare_run(recipe.TASK, args[:-1] + [str(earlier.parent)])
    assert resume_from == str(earlier)


@pytest.mark.parametrize("name", ["text_classification", "sentence_embeddings"])
def test_resuming_under_other_pruning_arguments_is_one_error_line_before_any_work(tmp_path, monkeypatch, name):
    out = tmp_path / "out"
    write_pruning_state(out / "checkpoint-4", pruning_target=0.3)
    args = ["--output_dir", str(out), "--resume_from_checkpoint", "true", "--pruning_target", "0.4"]
    if name == "text_classification":
        def not_now(*args, **kwargs):
            raise AssertionError("the data was read before the checkpoint's pruning arguments were compared")

        monkeypatch.setattr(recipe, "load_raw_datasets", not_now)
        train = write_csv(tmp_path / "train.csv", ROWS)
        start = lambda: prepare(data_args(tmp_path, train, train)[:-2] + args)  # noqa: E731
    else:  # no model to load: the check comes first
        start = lambda: load_recipe("sentence_embeddings").main(  # noqa: E731
            ["--model_name_or_path", str(tmp_path / "no_model"), "--stsb_dir", str(tmp_path), *args])
    with pytest.raises(RecipeError, match=re.escape(f"--resume_from_checkpoint {out / 'checkpoint-4'}: ") +
                       r".*--pruning_target: checkpoint 0\.3, now 0\.4"):
        start()
    (out / "checkpoint-4" / "pruning_state.pt").write_bytes(b"")  # a damaged state: one line as well
    with pytest.raises(RecipeError, match="cannot read the pruning state"):
        start()


def test_overwrite_output_dir_never_clears_the_folder_a_model_is_loaded_from(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    out = tmp_path / "out"
    model = out / "checkpoint-8"  # an earlier run's checkpoint, which the new run would remove
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    args = ["--model_name_or_path", str(model), "--train_file", train, "--validation_file", train,
            "--output_dir", str(out), "--overwrite_output_dir", "true"]
    with pytest.raises(RecipeError, match=r"holds the checkpoint a model, config or tokenizer is loaded from \(\S+"
                                          r"checkpoint-8\), and --overwrite_output_dir removes an earlier run's"):
        prepare(args)
    assert (model / "config.json").is_file()


# -- fuzz --------------------------------------------------------------------------------------------
def _corrupt(data: bytes, rng: random.Random) -> bytes:
    """One random corruption of a small data file."""
    i = rng.randrange(len(data) + 1)
    kind = rng.randrange(9)
    if kind == 0:  # flip a byte
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    if kind == 1:  # insert random bytes (often not UTF-8)
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))) + data[i:]
    if kind == 2:  # cut a piece out
        return data[:i] + data[i + rng.randint(1, 12):]
    if kind == 3:  # truncate
        return data[:i]
    if kind == 4:  # a stray delimiter, quote, brace or line break
        return data[:i] + rng.choice([b",", b'"', b"\t", b"\n", b"{", b"}", b":", b"\r"]) + data[i:]
    lines = data.split(b"\n")
    j = rng.randrange(len(lines))
    if kind == 5:  # a line duplicated
        return b"\n".join(lines[:j + 1] + lines[j:])
    if kind == 6:  # a line dropped
        return b"\n".join(lines[:j] + lines[j + 1:])
    if kind == 7:  # a label changed to another value
        return data.replace(b"1", rng.choice([b"2", b"", b"x", b"1.0", b"-1"]), 1)
    return b""  # emptied


def _jsonl(rows) -> bytes:
    return "".join(json.dumps({"sentence": s, "label": y}) + "\n" for s, y in rows).encode()


def _csv(rows) -> bytes:
    return ("sentence,label\n" + "".join(f"{s},{y}\n" for s, y in rows)).encode()


def test_fuzz_corrupted_files_end_in_success_or_one_error_line(tmp_path, monkeypatch):
    # the data steps are under test: building the metric (an evaluate.load attempt each time) is not
    monkeypatch.setattr(recipe, "build_compute_metrics", lambda name: None)
    rng = random.Random(1234)
    clean_train, clean_validation = ROWS * 2, ROWS[:4]
    outcomes = {"ok": 0, "error": 0}
    started = time.process_time()  # CPU time: bounded whatever else the machine runs
    for case in range(300):
        ext, dump = (".csv", _csv) if case % 2 == 0 else (".jsonl", _jsonl)
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        files = {"train": dump(clean_train), "dev": dump(clean_validation)}
        target = rng.choice(["train", "dev"])
        files[target] = _corrupt(files[target], rng)
        for name, content in files.items():
            (folder / f"{name}{ext}").write_bytes(content)
        argv = data_args(folder, str(folder / f"train{ext}"), str(folder / f"dev{ext}"))
        try:
            run = prepare(argv)
        except RecipeError as err:
            assert "\n" not in str(err), (case, files[target], str(err))
            outcomes["error"] += 1
        except Exception as err:  # noqa: BLE001 - any other exception is a traceback for the user
            pytest.fail(f"case {case}: {type(err).__name__}: {err}\n{target}{ext}: {files[target]!r}")
        else:
            # success never changes the classes: the two labels of the clean files, in order
            assert run.task_results["labels"] == ["0", "1"], (case, files[target], run.task_results["labels"])
            assert len(run.splits["train"]) > 0 and len(run.splits["validation"]) > 0
            outcomes["ok"] += 1
    assert outcomes["ok"] > 30 and outcomes["error"] > 30, outcomes  # both outcomes were exercised
    assert time.process_time() - started < 120


@pytest.mark.parametrize("script, flags, message", [
    ("examples/convert_whisper_tiny.py", ["--src", "/nonexistent", "OUT"],
     "error: /nonexistent is not a directory (expected a CTranslate2 model folder)"),
    ("examples/prune_whisper_fsdd.py", ["--model", "/nonexistent", "--max_steps", "2", "--recordings", "REC"],
     "error: cannot load the model / tokenizer from /nonexistent"),
])
def test_example_scripts_name_a_bad_model_path_in_one_line(tmp_path, script, flags, message):
    recordings = tmp_path / "recordings"  # FSDD-named files: the manifests are written before the model loads
    recordings.mkdir()
    for digit in range(10):
        for index in range(50):
            (recordings / f"{digit}_jackson_{index}.wav").write_bytes(b"")
    flags = [str(recordings) if f == "REC" else str(tmp_path / "out") if f == "OUT" else f for f in flags]
    done = subprocess.run([sys.executable, script, *flags, *(["--output_dir", str(tmp_path / "run")]
                                                             if "fsdd" in script else [])],
                          cwd=ROOT, capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr


# -- labels this recipe cannot train, and named datasets with ClassLabel labels ------------------------
def test_scores_label_lists_and_one_name_for_two_values_are_refused(tmp_path):
    validation = write_csv(tmp_path / "dev.csv", ROWS[:2])
    scores = write_csv(tmp_path / "scores.csv", [(text, f"{0.5 * (i % 4)}") for i, (text, _) in enumerate(ROWS)])
    with pytest.raises(RecipeError, match=r"holds scores \(\[0\.0, 0\.5, 1\.0\]\.\.\.\), not classes"):
        prepare(data_args(tmp_path, scores, validation))
    lists = tmp_path / "lists.jsonl"
    lists.write_text("\n".join(f'{{"sentence": "{t}", "label": [{y}]}}' for t, y in ROWS) + "\n")
    with pytest.raises(RecipeError, match=r"holds lists of labels \(multi-label rows\)"):
        prepare(data_args(tmp_path, str(lists), validation))
    train = write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(RecipeError, match="--label_mapping gives two values one name: '0:neg,1:neg'"):
        prepare(data_args(tmp_path, train, validation, "--label_mapping", "0:neg,1:neg"))
    # class names written in brackets are classes, not lists (they were refused as multi-label rows)
    bracketed = [(text, "[pos]" if y else "[neg]") for text, y in ROWS]
    run = prepare(data_args(tmp_path, write_csv(tmp_path / "brackets.csv", bracketed),
                            write_csv(tmp_path / "brackets_dev.csv", bracketed[:2])))
    assert run.task_results["labels"] == ["[neg]", "[pos]"]


def _class_label_dataset(folder, test_labels):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    (folder / "data").mkdir(parents=True)
    for split, labels in (("train", [y for _, y in ROWS]), ("validation", [1, 0]), ("test", test_labels)):
        texts = [t for t, _ in ROWS][:len(labels)]
        Dataset.from_dict({"sentence": texts, "label": labels}, features=features).to_parquet(
            str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return str(folder)


def test_a_named_datasets_unlabelled_test_split_is_left_out_and_a_label_outside_the_classes_refused(tmp_path, caplog):
    import logging

    args = ["--config_name", "unused", "--tokenizer_name", "unused", "--output_dir", str(tmp_path / "out")]
    glue_like = _class_label_dataset(tmp_path / "glue_like", [-1, -1, -1])  # as GLUE's test splits
    with caplog.at_level(logging.WARNING):
        run = prepare(["--dataset_name", glue_like, *args])
    assert "test" not in run.splits and "the test split has no labels" in caplog.text
    odd = _class_label_dataset(tmp_path / "odd", [1, -1, 0])
    with pytest.raises(RecipeError, match=r"label -1 of column 'label' \(--dataset_name \S+ \(test\)\) is not one of "
                                          r"the 2 classes \['negative', 'positive'\].*--drop_labels -1"):
        prepare(["--dataset_name", odd, *args])


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_split_percentage_for_a_split_the_named_dataset_has_is_refused(tmp_path, split):
    args = ["--config_name", "unused", "--tokenizer_name", "unused", "--output_dir", str(tmp_path / "out")]
    named = _class_label_dataset(tmp_path / "named", [1, 0, 1])  # train, validation and a labelled test split
    with pytest.raises(RecipeError, match=re.escape(f"--{split}_split_percentage 20: the data has a {split} split "
                                                    f"of its own (--dataset_name {named} ({split})), which the run "
                                                    f"uses; leave the percentage out")):
        prepare(["--dataset_name", named, f"--{split}_split_percentage", "20", *args])
    glue_like = _class_label_dataset(tmp_path / "glue_like", [-1, -1, -1])  # its test split is left out: held out
    assert len(prepare(["--dataset_name", glue_like, "--test_split_percentage", "25", *args]).splits["test"]) == 2


# -- output folder and config file ------------------------------------------------------------------------
def test_an_output_dir_that_is_a_file_and_a_config_file_after_the_flags_are_refused(tmp_path):
    from recipes.arguments import expand_config_file

    train = write_csv(tmp_path / "train.csv", ROWS)
    validation = write_csv(tmp_path / "dev.csv", ROWS[:2])
    (tmp_path / "afile").write_text("")
    argv = data_args(tmp_path, train, validation)
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "afile")
    with pytest.raises(RecipeError, match="--output_dir .*afile is a file, not a folder"):
        prepare(argv)
    with pytest.raises(RecipeError, match="the config file run.yaml must come first"):
        expand_config_file(["--learning_rate", "5e-5", "run.yaml"])
    assert expand_config_file(["--deepspeed", "ds.json"]) == ["--deepspeed", "ds.json"]  # a flag's value


def test_options_of_several_values_and_abbreviations_are_read_as_the_parser_reads_them(tmp_path):
    # --sentence_files a.txt b.json: the second file was taken for a misplaced config file; --num_beam 2 (argparse's
    # abbreviation of --num_beams) did not replace the config's generation_num_beams, and the run refused both
    from dataclasses import dataclass, field

    from transformers import HfArgumentParser

    from recipes.arguments import expand_config_file

    @dataclass
    class Options:
        sentence_files: list[str] = field(default_factory=list)
        num_beams: int | None = None
        generation_num_beams: int | None = None

    parser = HfArgumentParser(Options)
    argv = ["--sentence_files", "a.txt", "b.json"]
    assert expand_config_file(argv, parser) == argv
    with pytest.raises(RecipeError, match="the config file b.json must come first"):
        expand_config_file(argv)  # without the parser an item after a value cannot be told from a config file
    with pytest.raises(RecipeError, match="the config file run.yaml must come first"):
        expand_config_file(["--num_beams", "2", "run.yaml"], parser)
    with pytest.raises(RecipeError, match="the config file run.yaml must come first"):  # not read as a sentence file
        expand_config_file(["--sentence_files", "a.txt", "run.yaml"], parser)
    config = tmp_path / "run.yaml"
    config.write_text("generation_num_beams: 1\n")
    assert expand_config_file([str(config), "--num_beam", "2"], parser) == ["--num_beam", "2"]


def test_a_reporting_integration_not_installed_and_a_push_offline_are_refused_before_the_data(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from transformers.integrations import get_available_reporting_integrations

    train = write_csv(tmp_path / "train.csv", ROWS)
    validation = write_csv(tmp_path / "dev.csv", ROWS[:2])
    absent = next(name for name in ("tensorboard", "wandb", "mlflow", "comet_ml")
                  if name not in get_available_reporting_integrations())
    with pytest.raises(RecipeError, match=f"--report_to {absent}: its package is not installed"):
        prepare(data_args(tmp_path, train, validation, "--report_to", absent))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RecipeError, match="--push_to_hub: HF_HUB_OFFLINE is set"):
        prepare(data_args(tmp_path, train, validation, "--push_to_hub", "true", "--hub_model_id", "me/m"))


def test_a_label_mapping_written_as_a_mapping_in_a_config_file_orders_and_names_the_classes(tmp_path):
    """label_mapping: {1: positive, 0: negative} in a YAML file became JSON text, which the recipe split on commas
    and colons: an error sending the user to --drop_labels."""
    from recipes.arguments import expand_config_file

    validation = write_csv(tmp_path / "dev.csv", ROWS[:2])
    train = write_csv(tmp_path / "train.csv", ROWS)
    config = tmp_path / "run.yaml"
    config.write_text("label_mapping: {1: positive, 0: negative}\n")
    run = prepare([*expand_config_file([str(config)]), *data_args(tmp_path, train, validation)])
    assert run.task_results["labels"] == ["positive", "negative"]
    assert run.data_args.label_mapping == "1:positive,0:negative"  # as resumes compare it
    with pytest.raises(RecipeError, match=r"--label_mapping '\{\"0\": \"a,b\"\}': give value:name pairs without commas"):
        prepare(data_args(tmp_path, train, validation, "--label_mapping", '{"0": "a,b"}'))


@pytest.mark.parametrize("test_file", [
    "sentence\n{texts}",  # Kaggle's layout: no label column
    "sentence,label\n{texts_minus_one}",  # every label -1
    "sentence,label\n{texts_blank}",  # every label blank
])
def test_a_dataset_folders_unlabelled_test_file_is_left_out(tmp_path, caplog, test_file):
    """A --dataset_name folder of CSV files whose test.csv holds no labels was refused ('no rows left after removing
    labels []', then --drop_labels, which led back to it): left out with a warning, as GLUE's -1 test splits are."""
    import logging

    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "train.csv", ROWS)
    write_csv(folder / "validation.csv", ROWS[:2])
    texts = [t for t, _ in ROWS[:3]]
    (folder / "test.csv").write_text(test_file.format(
        texts="\n".join(texts) + "\n", texts_minus_one="".join(f"{t},-1\n" for t in texts),
        texts_blank="".join(f"{t},\n" for t in texts)))
    args = ["--config_name", "unused", "--tokenizer_name", "unused", "--output_dir", str(tmp_path / "out")]
    with caplog.at_level(logging.WARNING):
        run = prepare(["--dataset_name", str(folder), *args])
    assert "test" not in run.splits and "the test split has no labels" in caplog.text
    assert len(run.splits["train"]) == len(ROWS)


def test_a_dataset_folder_whose_classes_include_minus_one_keeps_its_test_file(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [(text, -1 if y == 0 else 1) for text, y in ROWS]
    write_csv(folder / "train.csv", rows)
    write_csv(folder / "validation.csv", rows[:2])
    write_csv(folder / "test.csv", [(t, "-1") for t, _ in rows[:3]])
    args = ["--config_name", "unused", "--tokenizer_name", "unused", "--output_dir", str(tmp_path / "out")]
    assert len(prepare(["--dataset_name", str(folder), *args]).splits["test"]) == 3
