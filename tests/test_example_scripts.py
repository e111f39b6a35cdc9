"""The example scripts' checks that run before any work: their pruning flags, --latency_repeats 0 (skip timing) and
the record of the data a dense MiniLM was fine-tuned on (``--dense_model``). No example trains here."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import load_script

MINILM, MARIAN, WHISPER = "prune_minilm_sst2", "train_prune_marian_multi30k", "prune_whisper_fsdd"


@pytest.fixture(scope="module")
def examples():
    return {name: load_script("examples", name) for name in (MINILM, MARIAN, WHISPER)}


# -- bad pruning flags fail when the arguments are parsed, in the library's words ---------------------------------
BAD_FLAGS = [
    (MARIAN, ["--prune", "heads,fnn"], "--prune must be one of heads, ffn, layers"),
    (MARIAN, ["--roles", "decoder_slef"], "--pruning_roles has unknown roles ['decoder_slef']"),
    (MARIAN, ["--initial_step", "0"], "--pruning_initial_step <= 1"),
    (MARIAN, ["--initial_step", "-1"], "--pruning_initial_step <= 1"),
    (MARIAN, ["--tolerance", "-1"], "--pruning_tolerance must be >= 0"),
    (MINILM, ["--initial_step", "0"], "--pruning_initial_step <= 1"),
    (MINILM, ["--initial_step", "-1"], "--pruning_initial_step <= 1"),
    (MINILM, ["--tolerance", "-1"], "--pruning_tolerance must be >= 0"),
    (MINILM, ["--interval", "0"], "--pruning_interval >= 1"),
    (WHISPER, ["--prune", "heads,fnn"], "--prune must be one of heads, ffn, layers"),
    (WHISPER, ["--initial_step", "0"], "--pruning_initial_step <= 1"),
    (WHISPER, ["--tolerance", "-1"], "--pruning_tolerance must be >= 0"),
    (MINILM, ["--latency_repeats", "-1"], "--latency_repeats must be >= 0"),
    (MARIAN, ["--latency_repeats", "-1"], "--latency_repeats must be >= 0"),
    (WHISPER, ["--latency_repeats", "-1"], "--latency_repeats must be >= 0"),
    (MINILM, ["--dense_model", "no/such/folder"], "--dense_model no/such/folder is not a folder"),
    (MARIAN, ["--dense_model", "no/such/folder"], "--dense_model no/such/folder is not a folder"),
    (MARIAN, ["--control_only", "--latency_repeats", "-1"], "--latency_repeats must be >= 0"),
]


@pytest.mark.parametrize("script, flags, message", BAD_FLAGS)
def test_bad_flags_are_refused_by_parse_args(examples, capsys, tmp_path, script, flags, message):
    """main() parses first: a refusal here comes before the dense stage trains and overwrites <output_dir>/dense."""
    with pytest.raises(SystemExit) as exit_info:
        examples[script].parse_args(["--output_dir", str(tmp_path / "run"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script, flags", [
    (MINILM, []), (MARIAN, []), (WHISPER, []),
    (MARIAN, ["--prune", "heads,ffn,layers", "--roles", "decoder_self,cross"]),
    (MINILM, ["--latency_repeats", "0"]), (MARIAN, ["--latency_repeats", "0"]), (WHISPER, ["--latency_repeats", "0"]),
])
def test_good_flags_parse_into_the_pruning_arguments_the_run_uses(examples, tmp_path, script, flags):
    example = examples[script]
    args = example.parse_args(["--output_dir", str(tmp_path / "run"), *flags])
    if script == WHISPER:
        example.recipe_run_flags(args, "/converted", example.PLACEHOLDER_MANIFESTS)
    else:
        common = (example.common_training_arguments if script == MINILM else example.pruning_common_arguments)(args)
        assert example.pruning_arguments(args, common).output_dir == str(tmp_path / "run" / "pruned")
    assert not (tmp_path / "run").exists()  # nothing written while parsing


def test_the_checked_pruning_arguments_are_the_ones_the_runs_use(examples, tmp_path):
    minilm = examples[MINILM]
    args = minilm.parse_args(["--output_dir", str(tmp_path), "--initial_step", "0.9", "--target", "0.4"])
    built = minilm.pruning_arguments(args, minilm.common_training_arguments(args))
    assert (built.output_dir, built.pruning_initial_step, built.pruning_target) == (str(tmp_path / "pruned"), 0.4, 0.4)
    marian = examples[MARIAN]
    args = marian.parse_args(["--output_dir", str(tmp_path), "--prune", "heads,layers", "--roles", "decoder"])
    built = marian.pruning_arguments(args, marian.pruning_common_arguments(args))
    assert (built.prune, built.pruning_roles, built.data_seed) == ("heads,layers", "decoder", args.seed + 1)
    whisper = examples[WHISPER]
    args = whisper.parse_args(["--output_dir", str(tmp_path), "--prune", "layers"])
    flags = whisper.recipe_run_flags(args, "/converted", whisper.PLACEHOLDER_MANIFESTS)
    assert flags[flags.index("--prune") + 1] == "layers"
    assert flags[flags.index("--output_dir") + 1] == str(tmp_path / "pruned")
    # --control_only trains without pruning: its pruning flags are not read, so not refused either
    assert marian.parse_args(["--output_dir", str(tmp_path), "--control_only", "--roles", "decoder_slef"]).control_only


# -- --latency_repeats 0 skips timing in all three ------------------------------------------------------------------
@pytest.mark.parametrize("script", [MINILM, MARIAN, WHISPER])
def test_latency_repeats_help_says_zero_skips(examples, capsys, script):
    with pytest.raises(SystemExit) as exit_info:
        examples[script].parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    entry = text[text.index("\n  --latency_repeats"):]  # the option's entry, after the usage lines
    assert "0: skip timing" in entry[:entry.index("\n  --", 1)]


@pytest.mark.parametrize("script", [MINILM, MARIAN])
def test_zero_latency_repeats_means_zero_not_the_default(examples, script):
    repeats = examples[script].timing_repeats
    assert repeats(0, 50) == 0
    assert repeats(None, 50) == 50
    assert repeats(3, 50) == 3


SIZES = {f"{k}_{side}": 1e6 for k in ("params", "flops", "layer_flops") for side in ("before", "after")}
COMPARISON = {**SIZES, "seq_len": 128, "params_removed": 0.1, "flops_removed": 0.2, "layer_flops_removed": 0.5}
TIMING = {"dense": {"median_s": 0.01}, "pruned": {"median_s": 0.005, "speedup": 2.0}}


def minilm_results(latency):
    return {"dense": {"test_accuracy": 0.9}, "dense_control": None, "comparison": COMPARISON, "latency": latency,
            "pruned": {"test_accuracy": 0.89, "dev_accuracy": 0.88, "dev_reference": 0.89, "final_sparsity": 0.5,
                       "stop_reason": "target reached"},
            "setup": {"test_samples": 872, "eval_samples": 2000, "tolerance": 0.01, "dense_model_reused": None,
                      "dense_train_samples": 16000, "train_total": 60614, "prune_steps": 400,
                      "prune_train_samples": 12800, "target": 0.5, "threads": 1}}


def marian_results(latency):
    test = {"sacrebleu": 30.0, "chrf": 55.0}
    return {"dense": {"test": test}, "pruned": {"test": test, "val_reference": 30.0, "val_final": 29.5,
                                                "final_sparsity": 0.5, "stop_reason": "target reached"},
            "dense_control": None, "comparison": {**COMPARISON, "seq_len": 32}, "latency": latency,
            "setup": {"test_split": "test_2016_flickr", "test_samples": 1000, "num_beams": 1, "eval_samples": 200,
                      "tolerance": 1.0, "dense_model_reused": "dense", "d_model": 256, "layers": 3, "heads": 4,
                      "ffn_dim": 1024, "vocab": 8000, "prune_steps": 400, "target": 0.5, "prune_minutes": 5.0,
                      "max_length": 64, "threads": 1}}


@pytest.mark.parametrize("script, results, timed", [
    (MINILM, minilm_results, {"batch_1_seq_128": TIMING}),
    (MARIAN, marian_results, {"batch_1": {"results": TIMING, "batch_size": 1,
                                          "output_length": {"dense": 12, "pruned": 12}}}),
])
def test_results_table_says_latency_was_not_timed(examples, script, results, timed):
    markdown = examples[script].markdown
    untimed = markdown(results({}))
    assert "not timed (--latency_repeats 0)" in untimed and "latency" not in untimed.split("\n\n")[0].lower()
    table = markdown(results(timed))
    assert "not timed" not in table and "speed-up" in table


def test_whisper_table_says_latency_was_not_timed(examples):
    whisper = examples[WHISPER]
    results = {
        "settings": {"model": "my/whisper", "latency_tokens": 4, "latency_repeats": 0, "window_seconds": 2,
                     "max_steps": 4, "tolerance": 0.01, "train_samples": 32, "batch_size": 16, "learning_rate": 1e-4},
        "threads": 1, "wall_time_s": 60.0, "latency": None, "converted": {},
        "dense": {"test_samples": 16, "test_wer": 0.0, "test_cer": 0.0},
        "pruned": {"test_samples": 16, "test_wer": 0.0, "test_cer": 0.0, "comparison": COMPARISON,
                   "pruning": {"final_sparsity": 0.5, "target": 0.5, "stop_reason": "target reached"},
                   "validation": {"samples": 16, "dense_reference": 0.0, "pruned_final": 0.0}},
    }
    table = whisper.markdown(results)
    assert "Latency: not timed (--latency_repeats 0" in table and "(0 repeats" not in table
    timed = whisper.markdown({**results, "settings": {**results["settings"], "latency_repeats": 10},
                              "latency": {"batch_1": TIMING, "batch_16": TIMING}})
    assert "(10 repeats, 1 threads)" in timed and "not timed" not in timed and "2.00x at batch 1" in timed


# -- --dense_model: the record of the phrases the dense MiniLM was fine-tuned on -----------------------------------
def sst2_folder(tmp_path: Path, rows: int = 40) -> Path:
    data = tmp_path / "sst2"
    data.mkdir()
    for name, n in (("train.tsv", rows), ("dev.tsv", 8), ("test.tsv", 8)):
        lines = ["sentence\tlabel"] + [f"phrase number {i}\t{i % 2}" for i in range(n)]
        (data / name).write_text("\n".join(lines) + "\n")
    return data


def test_dense_record_check(examples, tmp_path, caplog):
    minilm = examples[MINILM]
    dense = tmp_path / "dense"
    dense.mkdir()
    args = minilm.parse_args(["--output_dir", str(tmp_path), "--data_dir", str(tmp_path / "sst2"),
                              "--dense_model", str(dense)])
    current = minilm.dense_data_record(args, 60614, 16000)
    with caplog.at_level(logging.WARNING, logger=minilm.logger.name):  # no record: a warning, the run goes on
        minilm.check_dense_data_record(dense, current)
    assert "cannot check" in caplog.text and minilm.DENSE_DATA_FILE in caplog.text

    (dense / minilm.DENSE_DATA_FILE).write_text(json.dumps(current))
    minilm.check_dense_data_record(dense, current)  # the same settings: no error
    for changed, value in (("seed", 7), ("dense_train_samples", 20000), ("train_total", 100)):
        (dense / minilm.DENSE_DATA_FILE).write_text(json.dumps({**current, changed: value}))
        with pytest.raises(SystemExit) as exit_info:
            minilm.check_dense_data_record(dense, current)
        message = str(exit_info.value.code)
        assert f"{changed} {value} there, {current[changed]} here" in message and "overlap" in message


def test_reused_dense_model_with_other_data_settings_is_refused_before_tokenizing(examples, tmp_path):
    minilm = examples[MINILM]
    data = sst2_folder(tmp_path)
    dense = tmp_path / "dense"
    dense.mkdir()
    made = minilm.parse_args(["--output_dir", str(tmp_path), "--data_dir", str(data), "--seed", "7",
                              "--dense_train_samples", "10"])
    (dense / minilm.DENSE_DATA_FILE).write_text(json.dumps(minilm.dense_data_record(made, 40, 10)))
    reused = minilm.parse_args(["--output_dir", str(tmp_path), "--data_dir", str(data), "--dense_model", str(dense),
                                "--dense_train_samples", "10", "--prune_train_samples", "8"])  # --seed 42
    with pytest.raises(SystemExit) as exit_info:
        minilm.load_sst2(data, reused, tokenizer=None)  # refused before the tokenizer is used
    assert "seed 7 there, 42 here" in str(exit_info.value.code)


def test_dense_train_samples_that_leave_no_pruning_rows_are_refused(examples, tmp_path):
    """All of train.tsv for the dense model: a bare IndexError from datasets' select."""
    minilm = examples[MINILM]
    data = sst2_folder(tmp_path, rows=40)
    args = minilm.parse_args(["--output_dir", str(tmp_path / "run"), "--data_dir", str(data),
                              "--dense_train_samples", "40"])
    with pytest.raises(SystemExit) as exit_info:
        minilm.load_sst2(data, args, tokenizer=None)  # refused before the tokenizer is used
    message = str(exit_info.value.code)
    assert "--dense_train_samples 40 leaves no train.tsv rows for pruning" in message
    assert "has 40 rows; lower --dense_train_samples below that" in message


# -- paths that do not exist: one line at parse time, not a traceback ---------------------------------------------
@pytest.mark.parametrize("script", [MINILM, MARIAN])
def test_dense_model_that_is_not_a_folder_is_refused_by_parse_args(examples, capsys, tmp_path, script):
    """A missing folder was taken for a Hub id: an HFValidationError traceback once the dense model was loaded."""
    with pytest.raises(SystemExit) as exit_info:
        examples[script].parse_args(["--output_dir", str(tmp_path / "run"), "--dense_model", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert f"--dense_model {tmp_path / 'nope'} is not a folder" in capsys.readouterr().err


def test_convert_whisper_tiny_names_its_own_flag_to_replace_a_folder(tmp_path, monkeypatch):
    """The refusal to replace a folder with files said --overwrite, a flag this script does not have."""
    source = tmp_path / "ct2"
    source.mkdir()
    (source / "model.bin").write_bytes(b"")  # the destination is checked before the model is read
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    example = load_script("examples", "convert_whisper_tiny")
    monkeypatch.setattr("sys.argv", ["convert_whisper_tiny.py", str(mine), "--src", str(source)])
    with pytest.raises(SystemExit) as exit_info:
        example.main()
    message = str(exit_info.value.code)
    assert "exists and is not empty" in message and "pass --force to replace it" in message
    assert "--overwrite" not in message and (mine / "notes.txt").read_text() == "my notes"


def test_train_llama_multi30k_writes_the_text_and_a_dense_model_the_recipe_reads(tmp_path, capsys):
    """examples/train_llama_multi30k.py: the captions as the recipe's .txt files, a tokenizer that ends every caption
    with </s> and has no pad token, and a trained LlamaForCausalLM that loads with it; bad counts refused."""
    import transformers

    from conftest import SHARED_DATA

    if not (SHARED_DATA / "multi30k" / "train.en.gz").exists():
        pytest.skip("Multi30k data not found")
    example = load_script("examples", "train_llama_multi30k")
    with pytest.raises(SystemExit):
        example.main(["--output_dir", str(tmp_path / "bad"), "--layers", "0"])
    assert "--layers must be >= 1" in capsys.readouterr().err
    example.main(["--output_dir", str(tmp_path), "--vocab_size", "400", "--hidden_size", "32", "--layers", "1",
                  "--ffn", "48", "--max_steps", "3", "--block_size", "16", "--batch_size", "4"])
    lines = (tmp_path / "text" / "val.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1014 and all(line.strip() for line in lines)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "dense")
    ids = tokenizer(lines[0])["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and tokenizer.pad_token is None
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    assert model.config.num_hidden_layers == 1 and model.config.vocab_size == len(tokenizer)
    record = json.loads((tmp_path / "dense.json").read_text())
    assert record["steps"] == 3 and record["parameters"] == sum(p.numel() for p in model.parameters())
