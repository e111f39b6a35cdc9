"""recipes/translation.py: a smoke run on real Multi30k pairs with a tiny Marian, and its fail-fast errors."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pytest
import sacrebleu
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, MarianConfig, PreTrainedTokenizerFast, T5Config

from hf_adaprune import AutoPrunedModel

from conftest import ROOT, SHARED_DATA, load_recipe, multi30k_lines

MULTI30K = SHARED_DATA / "multi30k"
SIZES = {"train": 50, "val": 16, "test_2016_flickr": 16}
recipe = load_recipe("translation")


def _write(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """~50 Multi30k pairs (train gzipped, val and test plain), a tiny shared BPE and a tiny Marian config."""
    tmp = tmp_path_factory.mktemp("translation")
    texts = []
    for split, n in SIZES.items():
        for lang in ("en", "de"):
            lines = multi30k_lines(f"{split}.{lang}.gz", n)
            texts += lines
            _write(tmp / (f"{split}.{lang}.gz" if split == "train" else f"{split}.{lang}"), lines)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.NFKC()
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"],
                                                       show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=128).save_pretrained(tmp / "tokenizer")
    vocab = bpe.get_vocab_size()
    MarianConfig(vocab_size=vocab, decoder_vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
                 max_position_embeddings=128, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                 forced_eos_token_id=1, scale_embedding=True).save_pretrained(tmp / "config")
    return tmp


def base_args(ws: Path, out: Path) -> list[str]:
    return [
        "--config_name", str(ws / "config"), "--tokenizer_name", str(ws / "tokenizer"),
        "--train_source_file", str(ws / "train.en.gz"), "--train_target_file", str(ws / "train.de.gz"),
        "--validation_source_file", str(ws / "val.en"), "--validation_target_file", str(ws / "val.de"),
        "--output_dir", str(out), "--report_to", "none",
    ]


SMOKE_CONFIG = """\
# what a config file for the recipe looks like; paths are filled in by the test
config_name: {ws}/config
tokenizer_name: {ws}/tokenizer
source_lang: en
target_lang: de
train_source_file: {ws}/train.en.gz
train_target_file: {ws}/train.de.gz
validation_source_file: {ws}/val.en
validation_target_file: {ws}/val.de
test_source_file: {ws}/test_2016_flickr.en
test_target_file: {ws}/test_2016_flickr.de
max_source_length: 32
max_target_length: 32
num_beams: 1
output_dir: {ws}/not_used
max_steps: 8
learning_rate: 3e-3
per_device_train_batch_size: 8
per_device_eval_batch_size: 16
pruning_target: 0.5
pruning_tolerance: 100.0
pruning_warmup_steps: 2
pruning_interval: 2
pruning_initial_step: 0.25
pruning_seq_len: 32
save_strategy: "no"
dataloader_pin_memory: false
disable_tqdm: true
report_to: none
latency_repeats: 2
dense_control: true
"""


def test_smoke_run_from_yaml_config(workspace, tmp_path):
    config = tmp_path / "smoke.yaml"
    config.write_text(SMOKE_CONFIG.format(ws=workspace))
    out = tmp_path / "out"
    results = recipe.main([str(config), "--output_dir", str(out)])  # flags after the file override it

    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "pruning_report.json",
            "results.json", "README.md", "modeling_adaprune.py"} <= files
    saved = json.loads((out / "config.json").read_text())
    assert saved["adaprune"]["groups"] and saved["model_type"] == "adaprune_marian"
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["metric_name"] == "sacrebleu" and report["target_type"] == "flops"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))

    assert results["samples"] == {"train": 50, "validation": 16, "test": 16}
    assert results["validation"]["metric"] == "sacrebleu"  # the recipe's default metric
    assert results["validation"]["tolerance"] == 100.0
    assert results["pruning"]["final_sparsity"] == pytest.approx(0.5)
    assert results["comparison"]["layer_flops_removed"] > 0.3
    test = results["test"]
    assert test["samples"] == 16 and test["dense_step"] == 2
    for key in ("dense_sacrebleu", "pruned_sacrebleu", "dense_chrf", "pruned_chrf"):
        assert 0.0 <= test[key] <= 100.0
    assert set(results["latency"]["results"]) == {"dense", "pruned"}
    assert results["latency"]["batch_size"] == 1 and results["latency"]["dense_model"] == "dense control"
    assert results["dense_control"]["steps"] == results["train"]["global_step"] == test["control_steps"]
    for key in ("control_sacrebleu", "control_chrf"):
        assert 0.0 <= test[key] <= 100.0
    # the saved generation config is the one the translations were scored with: pipeline() translates alike
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["max_length"], generation.get("num_beams", 1)) == (32, 1)

    # the folder loads with AutoPrunedModel and its tokenizer, generates, and reproduces the recipe's test chrF
    model = AutoPrunedModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    sources = (workspace / "test_2016_flickr.en").read_text().splitlines()
    references = (workspace / "test_2016_flickr.de").read_text().splitlines()
    hypotheses = []
    for start in range(0, len(sources), 16):  # the recipe's eval batches
        batch = tokenizer(sources[start:start + 16], max_length=32, truncation=True, padding=True,
                          return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**batch, max_length=32, num_beams=1)
        assert generated.shape[0] == len(sources[start:start + 16]) and generated.shape[1] > 1
        hypotheses += [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert chrf == pytest.approx(test["pruned_chrf"], abs=1e-6)


def _mismatched(ws: Path, tmp: Path) -> list[str]:
    short = _write(tmp / "train_short.de.gz", multi30k_lines("train.de.gz", 47))
    args = base_args(ws, tmp / "out")
    args[args.index("--train_target_file") + 1] = str(short)
    return args


def _too_many_empty(ws: Path, tmp: Path) -> list[str]:
    lines = multi30k_lines("train.de.gz", 50)
    for i in (3, 10, 11):
        lines[i] = "   " if i == 10 else ""
    broken = _write(tmp / "train_holes.de", lines)
    args = base_args(ws, tmp / "out")
    args[args.index("--train_target_file") + 1] = str(broken)
    return args


def _user_folder(tmp):
    folder = tmp / "user"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.parametrize(
    "make_args, error, message",
    [
        (_mismatched, recipe.RecipeError,
         r"train: the source and target files must be line-aligned, but \S*train\.en\.gz has 50 lines and "
         r"\S*train_short\.de\.gz has 47"),
        (_too_many_empty, recipe.RecipeError,
         r"train: 3 of 50 pairs \(6\.0%\) have an empty side \(0 empty in \S*train\.en\.gz, 3 in "
         r"\S*train_holes\.de; first at line 4 of \S*train_holes\.de\), more than --max_empty_fraction 0\.01"),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--pruning_metric", "no_such_metric_xyz"], ValueError,
         re.escape("Cannot load metric 'no_such_metric_xyz'")),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--pruning_metric", "accuracy"], recipe.RecipeError,
         re.escape("--pruning_metric 'accuracy' is a classification metric")),
        (lambda ws, tmp: base_args(ws, tmp / "out")[:-8] + ["--output_dir", str(tmp / "out")], recipe.RecipeError,
         "no validation data: the pruning controller measures --pruning_metric sacrebleu on it"),
        (lambda ws, tmp: base_args(ws, tmp / "out")[:-6] + ["--output_dir", str(tmp / "out")], recipe.RecipeError,
         "--validation_source_file needs --validation_target_file"),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--test_source_file", str(tmp / "nope.en"),
                                                       "--test_target_file", str(ws / "val.de")],
         recipe.RecipeError, r"--test_source_file '\S*nope\.en' does not exist"),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--dataset_name", "wmt16"], recipe.RecipeError,
         "give --dataset_name or parallel text files"),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--max_empty_fraction", "1.5"], recipe.RecipeError,
         re.escape("--max_empty_fraction must be in [0, 1); got 1.5")),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--pruning_metric", "bleu"], recipe.RecipeError,
         re.escape("--pruning_metric bleu is on a 0-1 scale, so --pruning_tolerance 1 (absolute) allows any drop")),
        (lambda ws, tmp: base_args(ws, tmp / "out")[:4] + base_args(ws, tmp / "out")[-4:]
         + ["--dataset_name", str(tmp / "nowhere"), "--source_lang", "en", "--target_lang", "de"],
         recipe.RecipeError, r"--dataset_name \S*nowhere: cannot load it"),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--output_dir", str(_user_folder(tmp))], recipe.RecipeError,
         re.escape("already holds 1 entries (notes.txt); choose another folder or pass --overwrite_output_dir")),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--max_source_length", "512"], recipe.RecipeError,
         re.escape("--max_source_length 512: the model reads at most 128 positions")),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--max_target_length", "300"], recipe.RecipeError,
         re.escape("--max_target_length 300: the model reads at most 128 positions")),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--generation_max_length", "300"], recipe.RecipeError,
         re.escape("--generation_max_length 300: the decoder reads at most 128 positions (max_position_embeddings "
                   "(128)); pass --generation_max_length 128 or less")),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--source_prefix", "translate English to German: ",
                                                       "--max_source_length", "6"],
         recipe.RecipeError, r"--source_prefix .* takes \d+ tokens .* --max_source_length 6 leaves no room"),
        (lambda ws, tmp: base_args(ws, tmp / "out") + ["--num_beams", "1", "--generation_num_beams", "2"],
         recipe.RecipeError, re.escape("--num_beams 1 and --generation_num_beams 2 both set the beams of every "
                                       "evaluation; give one of them")),
    ],
    ids=["mismatched_lines", "too_many_empty", "unknown_metric", "classification_metric", "no_validation",
         "half_a_pair", "missing_file", "dataset_and_files", "bad_fraction", "bleu_tolerance", "dataset_not_loading",
         "user_files_in_output_dir", "source_length_beyond_positions", "target_length_beyond_positions",
         "generation_length_beyond_positions",
         "prefix_fills_the_source_length",
         "two_beam_flags"],
)
def test_fails_fast(workspace, tmp_path, make_args, error, message):
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        recipe.main(make_args(workspace, tmp_path))
    assert not (out / "model.safetensors").exists()


def test_few_empty_lines_are_dropped(workspace, tmp_path):
    args = _too_many_empty(workspace, tmp_path) + ["--max_empty_fraction", "0.1"]
    model_args, data_args, training_args = recipe.parse_args(args)
    recipe.validate_args(model_args, data_args, training_args)
    raw = recipe.load_raw_datasets(data_args, model_args)
    assert len(raw["train"]) == 47 and len(raw["validation"]) == 16 and "test" not in raw
    assert all(t.strip() for t in raw["train"]["target"])
    assert raw["train"]["source"][3] == multi30k_lines("train.en.gz", 5)[4]  # pair 4 (line 4) is gone, alignment kept


def test_dataset_with_translation_column(workspace, tmp_path):
    """--dataset_name: a dataset with a WMT-style translation column (here a local folder of JSON lines)."""
    folder = tmp_path / "wmt_like"
    folder.mkdir()
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test_2016_flickr")):
        en, de = multi30k_lines(f"{name}.en.gz", 10), multi30k_lines(f"{name}.de.gz", 10)
        if split == "train":
            de[2] = ""
        rows = [json.dumps({"translation": {"de": d, "en": e}}) for e, d in zip(en, de)]
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    common = ["--dataset_name", str(folder), "--cache_dir", str(tmp_path / "cache"), "--config_name", "x",
              "--tokenizer_name", "x", "--output_dir", str(tmp_path / "out")]

    def load(*extra):
        model_args, data_args, training_args = recipe.parse_args(common + list(extra))
        recipe.validate_args(model_args, data_args, training_args)
        return recipe.load_raw_datasets(data_args, model_args)

    raw = load("--source_lang", "en", "--target_lang", "de", "--max_empty_fraction", "0.2")
    assert {k: len(v) for k, v in raw.items()} == {"train": 9, "validation": 10, "test": 10}
    assert raw["validation"][0] == {"source": multi30k_lines("val.en.gz", 1)[0], "target": multi30k_lines("val.de.gz", 1)[0]}
    with pytest.raises(recipe.RecipeError, match=r"train: 1 of 10 pairs \(10\.0%\) have an empty side .*first at "
                                                 r"row 3 of de"):
        load("--source_lang", "en", "--target_lang", "de")
    with pytest.raises(recipe.RecipeError, match="--target_lang 'fr' is not a language of .*languages: de, en"):
        load("--source_lang", "en", "--target_lang", "fr")
    with pytest.raises(recipe.RecipeError, match="--dataset_name needs --source_lang and --target_lang"):
        load()


def test_reader_splits_on_newline_only(tmp_path):
    path = tmp_path / "odd.txt.gz"
    with gzip.open(path, "wb") as f:
        f.write("one\r\ntwo \u2028 still two\rthree? no, two\nlast line without newline".encode())
    assert recipe.read_lines(str(path)) == ["one", "two \u2028 still two\rthree? no, two", "last line without newline"]
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(recipe.RecipeError, match=r"latin1\.txt, line 1: byte 0xe9 is not UTF-8 text"):
        recipe.read_lines(str(tmp_path / "latin1.txt"))


def test_t5_without_prefix_warns():
    data_args = recipe.DataTrainingArguments(source_lang="en", target_lang="de")
    message = recipe.source_prefix_warning(T5Config(), data_args)
    assert message and "--source_prefix 'translate en to de: '" in message
    data_args.source_prefix = "translate English to German: "
    assert recipe.source_prefix_warning(T5Config(), data_args) is None
    assert recipe.source_prefix_warning(MarianConfig(), recipe.DataTrainingArguments()) is None


def test_recipe_defaults_and_overrides(workspace, tmp_path):
    _, _, training_args = recipe.parse_args(base_args(workspace, tmp_path / "out"))
    assert training_args.pruning_metric == "sacrebleu" and training_args.pruning_tolerance == 1.0
    assert training_args.predict_with_generate
    _, _, training_args = recipe.parse_args(base_args(workspace, tmp_path / "out") +
                                            ["--pruning_metric", "chrf", "--pruning_tolerance", "2"])
    assert training_args.pruning_metric == "chrf" and training_args.pruning_tolerance == 2.0


def test_shipped_config_parses(monkeypatch):
    monkeypatch.chdir(ROOT)  # its relative paths start at the repository root
    model_args, data_args, training_args = recipe.parse_args(["recipes/configs/translation_marian_multi30k.yaml"])
    assert training_args.pruning_metric == "sacrebleu" and training_args.predict_with_generate
    assert training_args.pruning_target_type == "flops" and training_args.pruning_target >= 0.4
    assert training_args.pruning_tolerance == 1.0 and training_args.pruning_eval_samples == 200
    assert isinstance(training_args.learning_rate, float)
    # greedy through --generation_num_beams, so that the flag given on the command line replaces it (the config's
    # num_beams: 1 overrode a --generation_num_beams 2 without a word)
    assert training_args.generation_num_beams == 1 and data_args.num_beams is None
    assert recipe.parse_args(["recipes/configs/translation_marian_multi30k.yaml", "--generation_num_beams",
                              "2"])[2].generation_num_beams == 2
    # and either name on the command line replaces the file's value (--num_beams 4 was refused as a second flag)
    for flag in ("--num_beams", "--num-beams", "--num_beams=4"):
        model_args, data_args, training_args = recipe.parse_args(
            ["recipes/configs/translation_marian_multi30k.yaml", *([flag] if "=" in flag else [flag, "4"])])
        assert (data_args.num_beams, training_args.generation_num_beams) == (4, None)
    if not MULTI30K.exists():
        pytest.skip(f"Multi30k data not found at {MULTI30K}")
    # its model is the benchmark's dense Marian (outputs/marian_multi30k/dense), or one named on the command line
    model_args, data_args, training_args = recipe.parse_args(["recipes/configs/translation_marian_multi30k.yaml",
                                                              "--model_name_or_path", "Helsinki-NLP/opus-mt-en-de"])
    files = recipe.validate_args(model_args, data_args, training_args)
    assert len(files) == 6 and all(os.path.isfile(p) for p in files.values())


def test_layerdrop_is_off_while_pruning_unless_asked(workspace, tmp_path):
    """M2M100's config drops layers at random (0.05): the gradient scores would miss them, and the trainer refuses
    such a model; the recipe sets both fields to --layerdrop (0 by default)."""
    config = MarianConfig.from_pretrained(workspace / "config")
    config.encoder_layerdrop = config.decoder_layerdrop = 0.05
    config.save_pretrained(tmp_path / "config")
    argv = base_args(workspace, tmp_path / "out")
    argv[argv.index("--config_name") + 1] = str(tmp_path / "config")
    model_args, data_args, _ = recipe.parse_args(argv)
    model, _ = recipe.load_model_and_tokenizer(model_args, data_args)
    assert (model.config.encoder_layerdrop, model.config.decoder_layerdrop) == (0.0, 0.0)
    model_args, data_args, _ = recipe.parse_args(argv + ["--layerdrop", "0.1"])
    model, _ = recipe.load_model_and_tokenizer(model_args, data_args)
    assert (model.config.encoder_layerdrop, model.config.decoder_layerdrop) == (0.1, 0.1)


def test_greedy_generation_of_a_beam_search_model_saves(tmp_path):
    """A model shipped for beam search (bart-base: num_beams 4, early_stopping) run with --num_beams 1: the generation
    config the recipe writes drops the beam-only settings, so save_pretrained accepts it after training."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from recipes.loading import apply_generation_config
    from test_seq2seq_families import tiny_seq2seq

    model = tiny_seq2seq("marian")
    model.generation_config = GenerationConfig(num_beams=4, early_stopping=True, length_penalty=2.0,
                                               num_return_sequences=2, decoder_start_token_id=2, eos_token_id=2,
                                               pad_token_id=1)
    apply_generation_config(model, SimpleNamespace(generation_config=None, generation_max_length=10,
                                                   generation_num_beams=1))
    assert (model.generation_config.max_length, model.generation_config.num_beams) == (10, 1)
    model.save_pretrained(tmp_path)  # raised: early_stopping / num_return_sequences without beams
    assert json.loads((tmp_path / "generation_config.json").read_text())["max_length"] == 10


def test_generation_lengths_that_would_differ_from_the_recorded_one_are_refused_or_cleared(tmp_path, caplog):
    """A --generation_config with max_new_tokens 6: every evaluation was cut to 6 tokens while results.json said
    --generation_max_length (32), and the deploy copies, scored at 32, looked 8 chrF better. Refused; a model's own
    max_new_tokens is cleared with a warning; a file's max_length that gives way to --generation_max_length is named."""
    import logging
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from recipes.loading import apply_generation_config
    from test_seq2seq_families import tiny_seq2seq

    def args(**kwargs):
        return SimpleNamespace(**{"generation_config": None, "generation_max_length": 32, "generation_num_beams": None,
                                  **kwargs})

    GenerationConfig(max_new_tokens=6).save_pretrained(tmp_path / "short")
    model = tiny_seq2seq("marian")
    with pytest.raises(recipe.RecipeError, match=r"sets max_new_tokens 6, which generate\(\) prefers over "
                                                 r"--generation_max_length \(32\)"):
        apply_generation_config(model, args(generation_config=str(tmp_path / "short")))
    model.generation_config.max_new_tokens = 6
    with caplog.at_level(logging.WARNING):
        apply_generation_config(model, args())
    assert model.generation_config.max_new_tokens is None and model.generation_config.max_length == 32
    assert "the model's generation config sets max_new_tokens 6" in caplog.text
    GenerationConfig(max_length=8, num_beams=3).save_pretrained(tmp_path / "eight")
    with caplog.at_level(logging.WARNING):
        apply_generation_config(model, args(generation_config=str(tmp_path / "eight")))
    assert (model.generation_config.max_length, model.generation_config.num_beams) == (32, 3)
    assert "its max_length 8 gives way to --generation_max_length 32" in caplog.text


# -- audit fixes: a translation column that is not {lang: text}, the beams recorded, empty teacher translations ---


def test_translation_column_holding_text_or_lists_is_refused(workspace, tmp_path):
    """A CSV written by pandas from a dict column holds the dict's repr as text, and JSON lines may hold [en, de]
    lists: the languages listed were the characters of the first cell (or the two sentences)."""
    import csv
    import io

    en, de = multi30k_lines("val.en.gz", 4), multi30k_lines("val.de.gz", 4)
    cells = io.StringIO()
    csv.writer(cells).writerows([["translation"]] + [[str({"en": e, "de": d})] for e, d in zip(en, de)])
    layouts = {
        "csv_dict": ("csv", cells.getvalue(), "text"),  # as pandas' to_csv writes a column of dicts
        "jsonl_list": ("jsonl", "".join(json.dumps({"translation": [e, d]}) + "\n" for e, d in zip(en, de)), "lists"),
    }
    for name, (suffix, text, found) in layouts.items():
        folder = tmp_path / name
        folder.mkdir()
        for split in ("train", "validation"):
            (folder / f"{split}.{suffix}").write_text(text, encoding="utf-8")
        model_args, data_args, training_args = recipe.parse_args([
            "--dataset_name", str(folder), "--source_lang", "en", "--target_lang", "de", "--config_name", "x",
            "--tokenizer_name", "x", "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out")])
        recipe.validate_args(model_args, data_args, training_args)
        with pytest.raises(recipe.RecipeError, match=rf"--dataset_name \S*{name}: the train split's 'translation' "
                                                     rf"column holds {found}.*, not \{{lang: text\}} records: write "
                                                     r"the data as JSON lines, one \{\"translation\": \{\"en\""):
            recipe.load_raw_datasets(data_args, model_args)
    # flat records ({"src": ..., "tgt": ...}): the error listed the columns without the layout to write
    folder = tmp_path / "flat"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"src": e, "tgt": d}) + "\n" for e, d in zip(en, de)),
                                                encoding="utf-8")
    data_args.dataset_name = str(folder)
    with pytest.raises(recipe.RecipeError, match=r"the train split has no 'translation' column; columns: src, tgt\. "
                                                 r"Write the data as JSON lines, one \{\"translation\".*or as parallel "
                                                 r"text files"):
        recipe.load_raw_datasets(data_args, model_args)


def built_run(workspace, tmp_path, *extra):
    """The run as the recipe has it before training: data read, the tiny Marian built from its config."""
    skeleton = load_recipe("skeleton")
    run, _ = skeleton.prepare_run(recipe.TASK, base_args(workspace, tmp_path / "out") + [
        "--max_source_length", "32", "--max_target_length", "12", "--max_train_samples", "8",
        "--per_device_eval_batch_size", "4", "--disable_tqdm", "true", *extra])
    skeleton.build_model(recipe.TASK, run)
    return run


def test_generation_beams_recorded_are_those_used_without_a_beam_flag(workspace, tmp_path):
    """transformers 5 leaves a generation config's num_beams None for generate's default of 1: results.json's
    task.generation.num_beams said null."""
    run = built_run(workspace, tmp_path)
    assert run.training_args.generation_num_beams is None  # no --num_beams / --generation_num_beams
    assert run.task_results["generation"] == {"max_length": 12, "num_beams": 1}
    run = built_run(workspace, tmp_path, "--num_beams", "3")
    assert run.task_results["generation"] == {"max_length": 12, "num_beams": 3}


def test_sequence_distillation_with_empty_teacher_translations(workspace, tmp_path, monkeypatch, caplog):
    """A teacher that writes nothing (here forced to end at once; an untrained T5 writes only <pad>): all rows empty
    is an error before training (training failed inside T5's _shift_right), some a warning, those rows keeping
    their reference."""
    import hf_adaprune.sequence_distillation as sd

    run = built_run(workspace, tmp_path, "--sequence_distillation", "true")
    tokenizer = run.processing_class
    run.model.generation_config.forced_bos_token_id = tokenizer.eos_token_id
    with pytest.raises(recipe.RecipeError, match=r"--sequence_distillation: the model as loaded translated all 8 "
                                                 r"training sources into empty text"):
        recipe.before_training(run)
    assert "pruning_train" not in run.datasets

    run.model.generation_config.forced_bos_token_id = None
    real = sd.sequence_distillation_targets

    def two_empty(*args, **kwargs):  # rows 1 and 4 come back empty: no token at all, only </s>
        out = real(*args, **kwargs)
        labels = list(out["labels"])
        labels[1], labels[4] = [], [tokenizer.eos_token_id]
        return out.remove_columns("labels").add_column("labels", labels)

    monkeypatch.setattr(sd, "sequence_distillation_targets", two_empty)
    with caplog.at_level("WARNING", logger="hf_adaprune.recipes.translation"):
        recipe.before_training(run)
    assert "2 of 8 translations are empty" in caplog.text
    taught, references = run.datasets["pruning_train"]["labels"], run.datasets["train"]["labels"]
    assert taught[1] == references[1] and taught[4] == references[4] and all(taught)
    assert run.task_results["sequence_distillation"]["empty_translations"] == 2


def test_the_card_says_the_model_trained_on_the_models_own_translations(tmp_path):
    """--sequence_distillation was recorded in results.json only; the card said nothing of the training targets."""
    from types import SimpleNamespace

    skeleton = load_recipe("skeleton")
    record = {"rows": 50, "num_beams": 4, "max_length": 32, "rows_unlike_the_reference": 47, "empty_translations": 1,
              "minutes": 0.1}
    assert recipe.card_lines(SimpleNamespace(task_results={})) == []
    card = tmp_path / "README.md"
    card.write_text("---\ntags:\n- hf_adaprune\n---\n\n# out\n\nPruned.\n")
    skeleton.append_to_card(str(tmp_path), recipe.card_lines(SimpleNamespace(
        task_results={"sequence_distillation": record})))
    assert card.read_text().endswith(
        "Pruned.\n\n## Training targets\n\nSequence distillation: the pruned model was trained on the translations the "
        "model as loaded wrote for the 50 training sources (beam search of 4, at most 32 tokens; 47 differ from the "
        "references; empty translations, replaced by their references: 1), not on the references themselves.\n")


def test_a_marian_folder_without_tokenizer_files_is_one_error_line(tmp_path):
    # MarianTokenizer failed inside with "TypeError: expected str, bytes or os.PathLike object, not NoneType"
    from recipes.loading import load_tokenizer
    from test_deploy_vocabulary import tiny_marian

    tiny_marian(40).save_pretrained(tmp_path)
    with pytest.raises(recipe.RecipeError, match=re.escape(f"no tokenizer could be loaded from {tmp_path} (TypeError: ")
                       + ".*save the tokenizer with the model .*or give --tokenizer_name"):
        load_tokenizer(str(tmp_path))
    # T5 gets its special tokens and a bare "▁" there: every word read as "▁ <unk>", and the run trained on it
    from test_seq2seq_families import tiny_seq2seq

    tiny_seq2seq("t5").save_pretrained(tmp_path / "t5")
    with pytest.raises(recipe.RecipeError, match=re.escape(f"the tokenizer loaded from {tmp_path / 't5'} holds only "
                                                           "its ")):
        load_tokenizer(str(tmp_path / "t5"))
