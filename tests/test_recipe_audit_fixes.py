"""Recipe fixes from an audit: options a resume must keep, folders the run writes a model into, default text
columns, label options that match no row, --test_before_pruning with --post_training, the sentence share of short
files, and --fsdd_validation_takes beside other data."""

from __future__ import annotations

import json
import logging
import re

import pytest
from transformers import BertConfig

from conftest import load_recipe
from test_recipe_post_training import fine_tuned, post_args  # noqa: F401 (the fixture)
from test_recipe_text_classification import base_args, workspace  # noqa: F401 (the fixture)

recipe = load_recipe("text_classification")
skeleton = load_recipe("skeleton")
asr = load_recipe("asr")
sentence_embeddings = load_recipe("sentence_embeddings")
RecipeError = recipe.RecipeError

ROWS = [("a fine film", "pos"), ("a dull film", "neg"), ("great acting", "pos"), ("poor plot", "neg"),
        ("lovely story", "pos"), ("weak ending", "neg"), ("a plot summary", "plot"), ("another summary", "plot")]


def write_csv(path, rows, header="sentence,label") -> str:
    path.write_text("\n".join([header] + [",".join(map(str, row)) for row in rows]) + "\n", encoding="utf-8")
    return str(path)


def data_args(tmp_path, train, *extra) -> list[str]:
    return ["--config_name", "unused", "--tokenizer_name", "unused", "--train_file", train,
            "--validation_file", train, "--output_dir", str(tmp_path / "out"), *extra]


def prepare(argv):
    run, _ = skeleton.prepare_run(recipe.TASK, argv)
    return run


# -- 1. a resume under another --label_mapping order ------------------------------------------------------------
def test_resume_under_another_label_mapping_order_is_refused(workspace, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = base_args(workspace, out) + [
        "--label_mapping", "0:negative,1:positive", "--max_seq_length", "16", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--pruning_target", "0.5", "--pruning_tolerance", "1.0",
        "--pruning_warmup_steps", "1", "--pruning_interval", "1", "--save_strategy", "steps", "--save_steps", "2",
        "--report_to", "none", "--disable_tqdm", "true", "--latency_repeats", "0"]
    recipe.main(args)
    checkpoint = out / "checkpoint-2"
    recorded = json.loads((checkpoint / "recipe_options.json").read_text())
    assert recorded["label_mapping"] == "0:negative,1:positive" and recorded["max_seq_length"] == 16
    resume = args + ["--resume_from_checkpoint", str(checkpoint)]
    with pytest.raises(RecipeError, match=re.escape(
            f"--resume_from_checkpoint {checkpoint}: the checkpoint was written with other options that change what "
            "is trained or measured (--label_mapping: checkpoint '0:negative,1:positive', now "
            "'1:positive,0:negative')")):
        prepare(resume + ["--label_mapping", "1:positive,0:negative"])
    with pytest.raises(RecipeError, match=r"--max_eval_samples: checkpoint None, now 8"):
        prepare(resume + ["--max_eval_samples", "8"])
    # another validation file steered nothing so far: refused (it was accepted, paired with the old reference)
    other = tmp_path / "other" / "dev.tsv"
    other.parent.mkdir()
    rows = (workspace / "dev.tsv").read_text().splitlines()
    other.write_text("\n".join(rows[:1] + rows[1:][::-1][:12]) + "\n")
    with pytest.raises(RecipeError, match=r"--validation_file: checkpoint 'dev.tsv \(\d+ bytes, sha1 \w+\)', now "
                                          r"'dev.tsv \(\d+ bytes, sha1 \w+\)'"):
        prepare(replaced(resume, "--validation_file", str(other)))
    moved = tmp_path / "moved" / "dev.tsv"  # the same file elsewhere is the same rows
    moved.parent.mkdir()
    moved.write_bytes((workspace / "dev.tsv").read_bytes())
    prepare(replaced(resume, "--validation_file", str(moved)))
    run = prepare(resume)  # the same options resume
    assert run.task_results["labels"] == ["negative", "positive"]


def replaced(argv: list[str], flag: str, value: str) -> list[str]:
    return [value if i and argv[i - 1] == flag else arg for i, arg in enumerate(argv)]


def test_resume_under_another_seed_is_refused_where_the_seed_draws_the_steering_rows(workspace, tmp_path):  # noqa: F811
    """--max_eval_samples draws a random subset of the validation rows by --seed: a resume under another seed was
    accepted and steered on other rows than the reference was measured on."""
    out = tmp_path / "out"
    args = base_args(workspace, out) + [
        "--max_eval_samples", "8", "--max_seq_length", "16", "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--pruning_target", "0.5", "--pruning_tolerance", "1.0", "--pruning_warmup_steps", "1",
        "--pruning_interval", "1", "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none",
        "--disable_tqdm", "true", "--latency_repeats", "0", "--seed", "42"]
    recipe.main(args)
    resume = args + ["--resume_from_checkpoint", str(out / "checkpoint-2")]
    with pytest.raises(RecipeError, match=r"--seed: checkpoint 42, now 7"):
        prepare(replaced(resume, "--seed", "7"))
    prepare(resume)


# -- 2. a model loaded from a folder the run saves a model into ------------------------------------------------
def _model_folder(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_text_classification_refuses_to_write_the_dense_control_over_the_loaded_model(tmp_path):
    out = tmp_path / "out"
    model = _model_folder(out / "dense_control")
    train = write_csv(tmp_path / "train.csv", ROWS[:6])
    args = ["--model_name_or_path", str(model), "--train_file", train, "--validation_file", train,
            "--output_dir", str(out), "--overwrite_output_dir", "true"]
    with pytest.raises(RecipeError, match=re.escape(
            f"--output_dir {out}: the model, config or tokenizer is loaded from {model}, which is the run's "
            "dense_control/ folder (or inside it), and --dense_control true saves a model there")):
        prepare(args + ["--dense_control", "true"])
    assert prepare(args).splits["train"]  # without the control nothing is written there


def test_asr_refuses_to_write_the_dense_control_over_the_loaded_model(tmp_path):
    out = tmp_path / "out"
    model = _model_folder(out / "dense_control" / "inner")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,text\n")
    args = ["--model_name_or_path", str(model), "--train_manifest", str(manifest), "--validation_manifest",
            str(manifest), "--output_dir", str(out), "--pruning_metric", "wer", "--dense_control", "true"]
    with pytest.raises(RecipeError, match=r"which is the run's dense_control/ folder \(or inside it\), and "
                                          r"--dense_control true saves a model there"):
        skeleton.prepare_run(asr.TASK, args)


def test_sentence_embeddings_refuses_to_write_the_layer_drop_baseline_over_the_loaded_model(tmp_path):
    out = tmp_path / "out"
    model = _model_folder(out / "layer_drop")
    with pytest.raises(RecipeError, match=re.escape(
            f"the model, config or tokenizer is loaded from {model}, which is the run's layer_drop/ folder (or inside "
            "it), and --layer_drop_baseline true saves a model there")):
        sentence_embeddings.main(["--model_name_or_path", str(model), "--stsb_dir", str(tmp_path / "no_stsb"),
                                  "--layer_drop_baseline", "true", "--max_steps", "1", "--output_dir", str(out),
                                  "--overwrite_output_dir", "true", "--report_to", "none"])


# -- 3. sentence pairs before single columns ---------------------------------------------------------------------
def test_a_question_sentence_file_reads_both_columns_and_a_sentence_file_its_one(tmp_path):
    pairs = write_csv(tmp_path / "qs.csv", [(f"what is {i}?", f"it is {i}", i % 2) for i in range(8)],
                      header="question,sentence,label")
    assert prepare(data_args(tmp_path, pairs)).task_results["text_columns"] == ["question", "sentence"]
    single = write_csv(tmp_path / "s.csv", [(f"film {i}", i % 2) for i in range(8)])
    assert prepare(data_args(tmp_path, single)).task_results["text_columns"] == ["sentence"]


# -- 4. label options that match no row --------------------------------------------------------------------------
def test_a_dropped_label_no_row_has_is_refused(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(RecipeError, match=re.escape(
            "--drop_labels 'plto': no row of any split has that label (column 'label' holds ['neg', 'plot', 'pos'])")):
        prepare(data_args(tmp_path, train, "--drop_labels", "plto"))
    assert prepare(data_args(tmp_path, train, "--drop_labels", "plot")).task_results["labels"] == ["neg", "pos"]


def test_a_mapped_label_no_row_has_is_refused_unless_it_keeps_a_classifiers_classes(tmp_path, caplog):
    train = write_csv(tmp_path / "train.csv", [(t, 0 if y == "neg" else 1) for t, y in ROWS[:6]])
    with pytest.raises(RecipeError, match=re.escape(
            "--label_mapping '0:neg,1:pos,2:neutral' lists '2', which no row of any split has (column 'label' holds "
            "['0', '1']): the classifier would get a class without a single row")):
        prepare(data_args(tmp_path, train, "--label_mapping", "0:neg,1:pos,2:neutral"))
    classifier = tmp_path / "classifier"  # a 3-class classifier: listing its class keeps its head
    BertConfig(num_labels=3, architectures=["BertForSequenceClassification"]).save_pretrained(classifier)
    args = ["--model_name_or_path", str(classifier), "--train_file", train, "--validation_file", train,
            "--output_dir", str(tmp_path / "out"), "--label_mapping", "0:neg,1:pos,2:neutral"]
    with caplog.at_level(logging.WARNING):
        run = prepare(args)
    assert run.task_results["labels"] == ["neg", "pos", "neutral"]
    assert "lists ['2'], which no row of any split has: kept as classes of" in caplog.text


# -- 5. --post_training with --test_before_pruning false ---------------------------------------------------------
def test_post_training_honours_test_before_pruning_false(workspace, fine_tuned, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    results = recipe.main(post_args(workspace, fine_tuned, out, "--test_before_pruning", "false"))
    test = results["test"]
    assert test["test_before_pruning"] is False
    assert test["dense"] is None and test["dense_accuracy"] is None  # the model as loaded was not scored
    assert test["pruned"] is not None and test["pruned_accuracy"] is not None
    assert json.loads((out / "results.json").read_text())["test"]["test_before_pruning"] is False
    assert "--test_before_pruning false: the dense model was not scored on the test set" in capsys.readouterr().out


# -- 6. a short sentence file's share goes to the others --------------------------------------------------------
def test_max_train_samples_takes_the_short_files_share_from_the_others(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a one\na two\na three\n")
    long = tmp_path / "long.txt"
    long.write_text("".join(f"b sentence {i}\n" for i in range(100)))
    for paths in ([short, long], [long, short]):
        sentences = sentence_embeddings.read_sentences([str(p) for p in paths], 10)
        assert len(sentences) == 10 and len(set(sentences)) == 10
        assert {"a one", "a two", "a three"} <= set(sentences)
    assert len(set(sentence_embeddings.read_sentences([str(long), str(long)], 10))) == 10  # a sentence counts once
    assert len(sentence_embeddings.read_sentences([str(short), str(long)], None)) == 103


# -- 7. --fsdd_validation_takes beside manifests or a dataset -------------------------------------------------
@pytest.mark.parametrize("data, splits", [
    (["--train_manifest", "t.csv", "--validation_manifest", "v.csv"],
     "manifests the splits are --train_manifest / --validation_manifest / --test_manifest"),
    (["--dataset_name", "some/dataset"],
     "--dataset_name the splits are --train_split_name / --eval_split_name / --test_split_name")])
def test_fsdd_validation_takes_beside_other_data_is_refused(tmp_path, data, splits):
    argv = ["--model_name_or_path", "unused", *data, "--output_dir", str(tmp_path / "o"), "--pruning_metric", "wer"]
    with pytest.raises(RecipeError, match=re.escape(f"--fsdd_validation_takes 2: it chooses the validation takes of "
                                                    f"--fsdd_dir; with {splits}: leave it out")):
        asr.validate_args(*asr.parse_args(argv + ["--fsdd_validation_takes", "2"]))
    asr.validate_args(*asr.parse_args(["--model_name_or_path", "unused", "--fsdd_dir", str(tmp_path),
                                       "--fsdd_validation_takes", "2", "--output_dir", str(tmp_path / "o"),
                                       "--pruning_metric", "wer"]))


def test_translation_refuses_to_write_the_dense_control_over_the_loaded_model(tmp_path):
    translation = load_recipe("translation")
    out = tmp_path / "out"
    model = _model_folder(out / "dense_control")
    (tmp_path / "s.en").write_text("".join(f"a house {i}\n" for i in range(8)), encoding="utf-8")
    (tmp_path / "s.de").write_text("".join(f"ein Haus {i}\n" for i in range(8)), encoding="utf-8")
    files = {"source": str(tmp_path / "s.en"), "target": str(tmp_path / "s.de")}
    args = ["--model_name_or_path", str(model), "--output_dir", str(out), "--overwrite_output_dir", "true",
            "--dense_control", "true", *[item for split in ("train", "validation") for side in ("source", "target")
                                         for item in (f"--{split}_{side}_file", files[side])]]
    with pytest.raises(RecipeError, match=re.escape(
            f"the model, config or tokenizer is loaded from {model}, which is the run's dense_control/ folder (or "
            "inside it), and --dense_control true saves a model there")):
        skeleton.prepare_run(translation.TASK, args)


def test_translation_records_sequence_distillation_and_refuses_a_resume_that_switches_it(tmp_path):
    """Training on the teacher's translations or on the references: a resume may not switch between them unasked."""
    translation = load_recipe("translation")
    (tmp_path / "s.en").write_text("a house\n", encoding="utf-8")
    (tmp_path / "s.de").write_text("ein Haus\n", encoding="utf-8")
    args = ["--model_name_or_path", "unused", "--output_dir", str(tmp_path / "out"), "--sequence_distillation", "true",
            *[item for split in ("train", "validation") for side, ext in (("source", "en"), ("target", "de"))
              for item in (f"--{split}_{side}_file", str(tmp_path / f"s.{ext}"))]]
    run = skeleton.Run(*translation.parse_args(args))
    options = skeleton.metric_options(translation.TASK, run)
    assert options["sequence_distillation"] is True
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / skeleton.RECIPE_OPTIONS_FILE).write_text(json.dumps({**options, "sequence_distillation": False}))
    with pytest.raises(RecipeError, match=re.escape(
            "other options that change what is trained or measured (--sequence_distillation: checkpoint False, "
            "now True)")):
        skeleton.check_recorded_options(options, str(checkpoint), allow_new=False)
    skeleton.check_recorded_options(options, str(checkpoint), allow_new=True)  # asked for: a warning


@pytest.mark.parametrize("flag", ["max_source_length", "max_target_length"])
def test_a_translation_resume_under_other_lengths_is_refused(tmp_path, flag):
    """Sources or references cut at another length: the resumed decisions compared BLEU on 8-token sources with a
    reference measured on 32 (a 69-point 'drop'), and the run stopped early, unwarned."""
    translation = load_recipe("translation")
    (tmp_path / "s.en").write_text("a house\n", encoding="utf-8")
    (tmp_path / "s.de").write_text("ein Haus\n", encoding="utf-8")
    args = ["--model_name_or_path", "unused", "--output_dir", str(tmp_path / "out"), f"--{flag}", "8",
            *[item for split in ("train", "validation") for side, ext in (("source", "en"), ("target", "de"))
              for item in (f"--{split}_{side}_file", str(tmp_path / f"s.{ext}"))]]
    options = skeleton.metric_options(translation.TASK, skeleton.Run(*translation.parse_args(args)))
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / skeleton.RECIPE_OPTIONS_FILE).write_text(json.dumps({**options, flag: 32}))
    with pytest.raises(RecipeError, match=re.escape(f"(--{flag}: checkpoint 32, now 8)")):
        skeleton.check_recorded_options(options, str(checkpoint), allow_new=False)


def test_the_steering_options_of_an_fsdd_run_are_the_same_before_and_after_its_manifests_are_written(tmp_path):
    """--fsdd_dir: the recipe writes the manifests and sets --validation_manifest once the data loads, after the
    resume check; comparing the manifest would refuse every resume of an FSDD run."""
    from types import SimpleNamespace

    manifest = tmp_path / "validation.csv"
    manifest.write_text("path,text\na.wav,one\n")
    task = SimpleNamespace(metric_options=("text_normalization",))

    def options(validation_manifest):
        data = SimpleNamespace(fsdd_dir="/data/fsdd", fsdd_validation_takes=5, validation_manifest=validation_manifest,
                               max_eval_samples=None, text_normalization="lowercase")
        return skeleton.metric_options(task, SimpleNamespace(data_args=data, model_args=SimpleNamespace(),
                                                             training_args=SimpleNamespace(seed=42)))

    assert options(None) == options(str(manifest)) == {
        "text_normalization": "lowercase", "fsdd_dir": "/data/fsdd", "fsdd_validation_takes": 5,
        "max_eval_samples": None}


def test_a_validation_split_of_the_training_rows_records_what_it_is_carved_from(tmp_path):
    """--validation_split_percentage carves the steering rows from --train_file after --test_split_percentage's
    share: a resume with another of either steered on other rows, and was accepted."""
    from types import SimpleNamespace

    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("sentence,label\na,0\n")
    second.write_text("sentence,label\nb,1\nc,0\n")

    def options(test_share, train_file):
        data = SimpleNamespace(validation_split_percentage=10, test_split_percentage=test_share, train_file=train_file,
                               validation_file=None, max_eval_samples=None)
        return skeleton.metric_options(SimpleNamespace(metric_options=()), SimpleNamespace(
            data_args=data, model_args=SimpleNamespace(), training_args=SimpleNamespace(seed=42)))

    assert options(None, str(first)) != options(20, str(first))
    assert options(None, str(first)) != options(None, str(second))
    assert options(None, str(first)) == options(None, str(first))
    assert options(None, str(first))["train_file"].startswith("a.csv (")


@pytest.mark.parametrize("world_size, rows, batch_seen", [(2, 7, 1), (2, 8, 4), (1, 7, 4), (3, 13, 1)])
def test_test_loss_is_scored_one_row_a_batch_where_processes_would_pad_it(world_size, rows, batch_seen):
    """On N processes the sampler fills the last batches up with repeats of the first rows, whose share of their
    batch's mean loss gathering cannot drop: 7 test rows on 2 processes with batches of 4 gave test_loss 0.694723
    where one process gave 0.694206. The recipes score the test set one row a batch then (as the pruning decisions
    do: under torchrun both now give 0.694206), and give the batch size back after."""
    from types import SimpleNamespace

    from hf_adaprune.trainer.eval_loss import EvalLossMixin
    from recipes.skeleton import evaluate_scores

    class Scoring(EvalLossMixin):
        def __init__(self):
            self.args = SimpleNamespace(world_size=world_size, per_device_eval_batch_size=4,
                                        dataloader_persistent_workers=True, dataloader_drop_last=True)

        def evaluate(self, eval_dataset, metric_key_prefix):
            args = self.args
            self.seen = args.per_device_eval_batch_size, args.dataloader_persistent_workers, args.dataloader_drop_last
            return {f"{metric_key_prefix}_loss": 0.5}

    trainer = Scoring()
    scores = evaluate_scores(trainer, list(range(rows)), None, ("loss",))
    # persistent workers off while the test rows are read: Trainer.evaluate would hand back its cached validation
    # loader (the recorded "test" loss was the validation set's, 1.099796 for 1.098093); drop_last off: 16 of 24
    # test rows were scored under the 24 results.json named
    assert trainer.seen == (batch_seen, False, False)
    args = trainer.args
    assert args.per_device_eval_batch_size == 4 and args.dataloader_persistent_workers and args.dataloader_drop_last
    assert scores["values"] == {"loss": 0.5}


def test_the_recipes_load_marian_with_its_unsaved_position_tables_frozen(tmp_path):
    """The recipes' dense control trains with a plain Trainer: the tables its folder leaves out stay as loaded."""
    import transformers

    from recipes.loading import load_model
    from test_layers import build_seq2seq

    build_seq2seq("marian").save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    model = load_model(transformers.AutoModelForSeq2SeqLM, str(tmp_path), config)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}


def test_test_scores_are_the_test_rows_under_persistent_workers(tmp_path):
    """With --dataloader_persistent_workers Trainer.evaluate hands back the loader it cached for the validation set,
    whatever dataset it is given: the recipes' "test" loss was the validation set's (1.099796 for 1.098093)."""
    from transformers import TrainingArguments

    from conftest import tiny_model
    from recipes.skeleton import DenseTrainer, evaluate_scores
    from test_trainer import toy_dataset

    data = toy_dataset()
    validation = data.select(range(48))
    test = data.select(range(100, 130)).map(lambda row: {"labels": (row["labels"] + 1) % 3})
    args = TrainingArguments(str(tmp_path / "a"), per_device_eval_batch_size=16, report_to="none", use_cpu=True,
                             dataloader_num_workers=1, dataloader_persistent_workers=True)
    trainer = DenseTrainer(model=tiny_model("bert"), args=args, eval_dataset=validation)
    validation_loss = trainer.evaluate()["eval_loss"]  # caches the validation loader
    recorded = evaluate_scores(trainer, test, None, ("loss",))["values"]["loss"]
    plain = TrainingArguments(str(tmp_path / "b"), per_device_eval_batch_size=16, report_to="none", use_cpu=True)
    expected = DenseTrainer(model=trainer.model, args=plain).evaluate(test)["eval_loss"]
    assert recorded == pytest.approx(expected, rel=1e-6) and abs(expected - validation_loss) > 1e-4
    assert trainer.args.dataloader_persistent_workers  # given back


def test_the_validation_figures_are_the_decision_rows_under_persistent_workers(workspace, tmp_path):  # noqa: F811
    """results.json's validation "pruned" entry is documented as the decision rows' evaluation: under persistent
    workers Trainer.evaluate handed back the whole validation set's cached loader (0.5 where the 8 rows give 0.375).
    It now equals the trainer's own final check on those rows."""
    recipe = load_recipe("text_classification")
    args = base_args(workspace, tmp_path / "out") + [
        "--max_seq_length", "16", "--max_steps", "4", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--pruning_target", "0.5", "--pruning_tolerance", "1.0",
        "--pruning_warmup_steps", "1", "--pruning_interval", "1", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--latency_repeats", "0", "--eval_strategy", "steps", "--eval_steps", "2",
        "--pruning_eval_samples", "8", "--dataloader_num_workers", "1", "--dataloader_persistent_workers", "true",
        "--dataloader_drop_last", "true"]
    validation = recipe.main(args)["validation"]
    assert validation["samples"] == 8
    assert validation["pruned"]["eval_accuracy"] == pytest.approx(validation["pruned_final"])


def test_translation_json_lines_with_a_row_missing_a_language_load_as_an_empty_side(tmp_path):
    """datasets 5 reads {"translation": {...}} records whose keys differ as a Json column: the recipe said the column
    was not {lang: text} records and asked for the very layout the folder had."""
    translation = load_recipe("translation")
    rows = [{"en": f"A dog runs {i}.", "de": f"Ein Hund rennt {i}."} for i in range(20)]
    rows[3] = {"en": "A row whose German is missing."}
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"translation": r}) + "\n" for r in rows))
    model_args, data_args, training_args = translation.parse_args([
        "--dataset_name", str(tmp_path), "--source_lang", "en", "--target_lang", "de", "--config_name", "x",
        "--tokenizer_name", "x", "--max_empty_fraction", "0.1", "--cache_dir", str(tmp_path / "cache"),
        "--output_dir", str(tmp_path / "out")])
    translation.validate_args(model_args, data_args, training_args)
    raw = translation.load_raw_datasets(data_args, model_args)
    assert len(raw["train"]) == 19 and "A row whose German is missing." not in raw["train"]["source"]
    rows[0], rows[3] = rows[3], rows[0]  # the first row lacks it: its languages were taken for all rows'
    first = tmp_path / "first"
    first.mkdir()
    for split in ("train", "validation"):
        (first / f"{split}.jsonl").write_text("".join(json.dumps({"translation": r}) + "\n" for r in rows))
    data_args.dataset_name = str(first)
    raw = translation.load_raw_datasets(data_args, model_args)
    assert len(raw["train"]) == 19 and "A row whose German is missing." not in raw["train"]["source"]
