"""The recipes on a user's own data files (the audit_userdata findings): multi-label and nested JSON columns through
--train_file and --dataset_name, whole-number labels written as floats, a data file given as --dataset_name, a T5
--source_prefix recorded in the saved folder, and a carved validation split holding a class training never sees.

Data are written here; no model is built except the tiny T5 of the --source_prefix run.
"""

from __future__ import annotations

import json
import re

import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from conftest import load_recipe
from test_recipe_bad_input import data_args, prepare, write_csv
from test_recipe_own_data import _no_prompt  # noqa: F401  offline, and no prompt

text_classification = load_recipe("text_classification")
translation = load_recipe("translation")
skeleton = load_recipe("skeleton")
RecipeError = text_classification.RecipeError

POSITIVE = ["a great film", "i loved it", "brilliant acting", "superb story"]
NEGATIVE = ["a boring mess", "i hated it", "awful acting", "dull and slow"]


def reviews(n: int) -> list[tuple[str, str]]:
    return [((POSITIVE if i % 2 == 0 else NEGATIVE)[i % 4], "positive" if i % 2 == 0 else "negative")
            for i in range(n)]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def dataset_folder(folder, make_record) -> str:
    """A local dataset folder (train.jsonl, validation.jsonl) of ``make_record(text, label)`` rows."""
    folder.mkdir()
    for split, n in (("train", 8), ("validation", 4)):
        write_jsonl(folder / f"{split}.jsonl", [make_record(text, label) for text, label in reviews(n)])
    return str(folder)


def named(tmp_path, folder, *extra) -> list[str]:
    return ["--config_name", "unused", "--tokenizer_name", "unused", "--dataset_name", folder, "--cache_dir",
            str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"), *extra]


# -- 1. label lists and records through --dataset_name ------------------------------------------------------
def test_label_lists_through_dataset_name_are_one_error_line_as_through_files(tmp_path, capsys):
    folder = dataset_folder(tmp_path / "multilabel", lambda text, label: {"text": text, "label": [label, "film"]})
    with pytest.raises(SystemExit) as done:  # was a pyarrow ArrowNotImplementedError from Dataset.unique
        text_classification.cli(named(tmp_path, folder, "--drop_labels", "film"))
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1] == (f"error: column 'label' of --dataset_name {folder} (train) holds lists of labels (multi-label "
                       f"rows): this recipe trains single-label classifiers; prune a multi-label model with "
                       f"AdaptivePruningTrainer (problem_type='multi_label_classification') in a script of your own")
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": [y]} for t, y in reviews(8)])
    with pytest.raises(RecipeError, match=re.escape(f"column 'label' of {train}, line 1 holds lists of labels")):
        prepare(data_args(tmp_path, train, train))


def test_a_record_label_through_dataset_name_is_refused(tmp_path):
    folder = dataset_folder(tmp_path / "nested_label", lambda text, label: {"text": text, "meta": {"label": label}})
    with pytest.raises(RecipeError, match=re.escape(
            f"column 'meta' of --dataset_name {folder} (train) holds objects (records with fields 'label'), not "
            f"labels: flatten the records so that each field is a column of its own (pandas.json_normalize names "
            f"them 'meta.label') and pass the one to read with --label_column_name")):
        prepare(named(tmp_path, folder, "--label_column_name", "meta"))


# -- 2. nested JSON records are not text ---------------------------------------------------------------------
def test_record_columns_of_json_files_are_refused_naming_the_column(tmp_path):
    records = [{"review": {"text": t, "stars": 5}, "meta": {"label": y}} for t, y in reviews(8)]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(records))
    args = data_args(tmp_path, str(train), str(train), "--text_column_name", "review", "--label_column_name", "meta")
    with pytest.raises(RecipeError, match=re.escape(
            f"column 'review' of {train}, line 1 holds objects (records with fields 'text', 'stars'), not text: "
            f"flatten the records so that each field is a column of its own (pandas.json_normalize names them "
            f"'review.text', 'review.stars') and pass the one to read with --text_column_name")):
        prepare(args)
    flat = write_jsonl(tmp_path / "flat.jsonl", [{"text": t, "meta": {"label": y}} for t, y in reviews(8)])
    with pytest.raises(RecipeError, match=re.escape(f"column 'meta' of {flat}, line 1 holds objects (records with "
                                                    f"fields 'label'), not labels")):
        prepare(data_args(tmp_path, flat, flat, "--label_column_name", "meta"))
    lists = write_jsonl(tmp_path / "tokens.jsonl", [{"text": t.split(), "label": y} for t, y in reviews(8)])
    with pytest.raises(RecipeError, match=re.escape(f"column 'text' of {lists}, line 1 holds lists, not text")):
        prepare(data_args(tmp_path, lists, lists))


def test_a_record_text_column_through_dataset_name_is_refused(tmp_path):
    folder = dataset_folder(tmp_path / "nested_text",
                            lambda text, label: {"review": {"title": "t", "body": text}, "label": label})
    with pytest.raises(RecipeError, match=re.escape(
            f"column 'review' of --dataset_name {folder} (train) holds objects (records with fields 'title', "
            f"'body'), not text")):
        prepare(named(tmp_path, folder, "--text_column_name", "review"))


def test_json_text_that_is_not_a_record_is_still_text(tmp_path):
    rows = [{"text": "{a brace}" if i == 0 else t, "label": y} for i, (t, y) in enumerate(reviews(8))]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    assert prepare(data_args(tmp_path, train, train)).task_results["labels"] == ["negative", "positive"]


# -- 3. whole numbers written as floats ----------------------------------------------------------------------
def test_whole_number_labels_written_as_floats_are_the_same_classes_as_ints(tmp_path):
    # pandas writes an int column that holds a blank as 1.0 / 0.0; the validation file says 1 / 0
    rows = [(t, "1.0" if y == "positive" else "0.0") for t, y in reviews(8)] + [("no label here", "")]
    train = write_csv(tmp_path / "train.csv", rows)
    validation = write_csv(tmp_path / "dev.csv", [(t, "1" if y == "positive" else "0") for t, y in reviews(4)])
    run = prepare(data_args(tmp_path, train, validation))
    assert run.task_results["labels"] == ["0", "1"]
    assert set(run.splits["validation"]["label"]) == set(run.splits["train"]["label"]) == {"0", "1"}
    for mapping in ("1:good,0:bad", "1.0:good,0.0:bad"):
        run = prepare(data_args(tmp_path, train, validation, "--label_mapping", mapping))
        assert run.task_results["labels"] == ["good", "bad"] and run.task_results["label_values"] == ["1", "0"]


def test_whole_number_classes_written_as_floats_are_sorted_by_number(tmp_path):
    stars = write_csv(tmp_path / "stars.csv", [(f"review {i}", f"{1 + i % 12}.0") for i in range(36)])
    assert prepare(data_args(tmp_path, stars, stars)).task_results["labels"] == [str(n) for n in range(1, 13)]
    words = write_csv(tmp_path / "words.csv", [(f"review {i}", ["b10", "b2", "a"][i % 3]) for i in range(9)])
    assert prepare(data_args(tmp_path, words, words)).task_results["labels"] == ["a", "b10", "b2"]  # text: unchanged


# -- 4. a data file as --dataset_name ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["train.csv", "train.tsv", "train.jsonl", "train.json"])
def test_a_data_file_as_dataset_name_is_the_train_split(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".csv"):
        write_csv(path, reviews(8))
    elif name.endswith(".tsv"):
        path.write_text("sentence\tlabel\n" + "".join(f'"{t}\t{y}\n' for t, y in reviews(8)))  # GLUE: no quoting
    else:
        write_jsonl(path, [{"sentence": t, "label": y} for t, y in reviews(8)])
    run = prepare(named(tmp_path, str(path), "--validation_split_percentage", "25"))
    assert {split: len(rows) for split, rows in run.splits.items()} == {"train": 6, "validation": 2}
    assert run.task_results["labels"] == ["negative", "positive"]
    texts = set(run.splits["train"]["sentence"]) | set(run.splits["validation"]["sentence"])
    assert texts == {("\"" if name.endswith(".tsv") else "") + t for t, _ in reviews(8)}


def test_a_data_file_as_dataset_name_says_what_else_to_pass(tmp_path):
    notes = tmp_path / "train.txt"
    notes.write_text("a great film\n")
    with pytest.raises(RecipeError, match=re.escape(
            f"--dataset_name {notes}: a file of type '.txt'; --dataset_name takes a data file of type .json, .jsonl, "
            f".csv, .tsv, .parquet (read as the train split), a dataset folder or a Hub dataset id")):
        prepare(named(tmp_path, str(notes), "--validation_split_percentage", "25"))
    pairs = write_jsonl(tmp_path / "train.jsonl", [{"translation": {"en": "a house", "de": "ein haus"}}] * 4)
    with pytest.raises(RecipeError, match=re.escape(
            f"--dataset_name {pairs}: a data file is read as the train split only, and the run needs a validation "
            f"split: put the splits in one folder as train.jsonl and validation.jsonl (and test.jsonl) and pass the "
            f"folder")):
        skeleton.prepare_run(translation.TASK, named(tmp_path, pairs, "--source_lang", "en", "--target_lang", "de"))


# -- 5. T5 --source_prefix in the saved folder ---------------------------------------------------------------
def tiny_t5(folder, words: list[str]) -> None:
    """A word-level tokenizer and a 1-layer T5 config with a summarization prefix, as T5 configs have."""
    vocabulary = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + words)}
    model = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>", model_max_length=32).save_pretrained(folder)
    transformers.T5Config(vocab_size=len(vocabulary), d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=4,
                          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                          task_specific_params={"summarization": {"prefix": "summarize: "}}).save_pretrained(folder)


def test_a_t5_source_prefix_is_recorded_in_the_saved_config_and_results(tmp_path):
    pairs = [("a house", "ein haus"), ("a dog", "ein hund"), ("the house", "das haus"), ("the dog", "der hund")]
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "validation"):
        write_jsonl(folder / f"{split}.jsonl", [{"translation": {"en": en, "de": de}} for en, de in pairs])
    tiny_t5(tmp_path / "t5", sorted({w for pair in pairs for text in pair for w in text.split()} | {"translate"}))
    out = tmp_path / "out"
    prefix = "translate English to German: "
    results = translation.main([
        "--config_name", str(tmp_path / "t5"), "--tokenizer_name", str(tmp_path / "t5"), "--dataset_name",
        str(folder), "--cache_dir", str(tmp_path / "cache"), "--source_lang", "en", "--target_lang", "de",
        "--source_prefix", prefix, "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm",
        "true", "--dataloader_pin_memory", "false", "--pruning_warmup_steps", "1", "--pruning_interval", "1",
        "--pruning_tolerance", "100", "--max_source_length", "16", "--max_target_length", "16",
        "--generation_max_length", "8", "--num_beams", "1", "--pruning_seq_len", "16", "--latency_repeats", "0"])
    assert json.loads((out / "config.json").read_text())["task_specific_params"] == {
        "summarization": {"prefix": "summarize: "}, "translation_en_to_de": {"prefix": prefix}}
    assert results["task"]["source_prefix"] == prefix
    assert json.loads((out / "results.json").read_text())["task"]["source_prefix"] == prefix


# -- 6. a carved validation split holding a class training never sees ----------------------------------------
def test_a_carved_split_holding_every_row_of_a_class_is_refused(tmp_path):
    train = write_csv(tmp_path / "train.csv", reviews(20) + [("it was ok", "neutral"), ("so so", "neutral")])
    args = ["--config_name", "unused", "--tokenizer_name", "unused", "--train_file", train,
            "--validation_split_percentage", "20", "--output_dir", str(tmp_path / "out")]
    model_args, data, _ = text_classification.parse_args(args)
    raw = text_classification.clean_rows(text_classification.load_raw_datasets(data, model_args), ["sentence"],
                                         "label", [])

    def carves_neutral_out(seed):
        return "neutral" not in text_classification.hold_out(raw, data, seed)["train"]["label"]

    seed = next(s for s in range(500) if carves_neutral_out(s))
    with pytest.raises(RecipeError, match=re.escape(
            f"--validation_split_percentage 20 (--seed {seed}) holds out every row of label 'neutral' (column "
            f"'label') as validation rows: training would never see that class; pass another --seed, a smaller "
            f"--validation_split_percentage (a larger training share), or give a --validation_file")):
        prepare(args + ["--seed", str(seed)])
    kept = next(s for s in range(500) if not carves_neutral_out(s))
    assert prepare(args + ["--seed", str(kept)]).task_results["labels"] == ["negative", "neutral", "positive"]


# -- whitespace-only cells are blank -------------------------------------------------------------------------
def test_a_text_or_label_of_spaces_only_is_a_blank_cell(tmp_path):
    """A text of spaces only was kept and trained on as an empty sentence; a label of spaces became a class."""
    rows = [("a fine film", 1), ("a dull film", 0), ("great acting", 1), ("poor plot", 0), ("lovely story", 1),
            ("weak ending", 0), ("superb cast", 1), ("boring scenes", 0)]
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\n" + "".join(f"{s},{y}\n" for s, y in rows) + '"   ",1\nodd film,"  "\n')
    validation = write_csv(tmp_path / "dev.csv", rows[:4])
    run = prepare(data_args(tmp_path, str(train), validation))
    assert len(run.splits["train"]) == len(rows)
    assert run.task_results["labels"] == ["0", "1"]
