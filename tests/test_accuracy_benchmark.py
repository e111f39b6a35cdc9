"""benchmarks/accuracy.py: the arguments its parts get, and the summary it rebuilds from their JSON files."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, load_script

RESULTS = ROOT / "benchmarks" / "results" / "accuracy_625_dense20000"


def load_accuracy():
    return load_script("benchmarks", "accuracy")


def test_default_dense_start_adds_no_arguments_so_earlier_parts_stay_valid(tmp_path):
    accuracy = load_accuracy()
    opts = accuracy.arguments(["--output_dir", str(tmp_path)])
    argv = accuracy.schedule_argv(opts, 42, tmp_path / "schedules_seed42.json")
    assert "--dense_samples" not in argv and "--cache_dir" not in argv
    assert "--dense_samples" not in accuracy.post_training_argv(opts, tmp_path / "post_training.json")


def test_dense_samples_go_to_both_parts_with_a_cache_of_their_own(tmp_path):
    accuracy = load_accuracy()
    opts = accuracy.arguments(["--output_dir", str(tmp_path), "--dense_samples", "20000"])
    for argv in (accuracy.schedule_argv(opts, 43, tmp_path / "s.json"),
                 accuracy.post_training_argv(opts, tmp_path / "p.json")):
        assert argv[argv.index("--dense_samples") + 1] == "20000"
        assert argv[argv.index("--cache_dir") + 1] == str(ROOT / "outputs" / "accuracy_dense20000")


@pytest.mark.parametrize("dense_samples", [[], ["--dense_samples", "20000"]])
def test_a_cache_dir_outside_the_repository_reaches_both_parts(tmp_path, dense_samples):
    """The dense start and the control teachers could only be cached in the repository's outputs/ (a read-only
    checkout could not run the benchmark)."""
    accuracy = load_accuracy()
    opts = accuracy.arguments(["--output_dir", str(tmp_path), "--cache_dir", str(tmp_path / "cache"), *dense_samples])
    for argv in (accuracy.schedule_argv(opts, 43, tmp_path / "s.json"),
                 accuracy.post_training_argv(opts, tmp_path / "p.json")):
        assert argv[argv.index("--cache_dir") + 1] == str(tmp_path / "cache")
        assert argv.count("--cache_dir") == 1


def test_summary_is_the_mean_change_against_each_seeds_control():
    text = load_accuracy().summary(RESULTS)
    changes = []
    for seed in (42, 43):
        runs = json.loads((RESULTS / f"schedules_seed{seed}.json").read_text())["runs"]
        control = next(r for r in runs if r["variant"] == "dense control")
        run = next(r for r in runs if r["variant"] == "one-shot + re-fit + fine-tuning" and r["target"] == 0.5)
        changes.append(100 * (run["dev_accuracy"] - control["dev_accuracy"]))
    row = next(line for line in text.splitlines() if line.startswith("| 50% | one-shot + re-fit + fine-tuning |"))
    assert f"| {changes[0]:+.2f}, {changes[1]:+.2f} | {sum(changes) / 2:+.2f} |" in row
    assert "distillation (hidden weight 1)" in text and "distillation (hidden weight 10)" in text


def test_summary_refuses_seed_files_of_other_settings(tmp_path):
    import shutil


    shutil.copy(RESULTS / "schedules_seed42.json", tmp_path)
    other = json.loads((RESULTS / "schedules_seed43.json").read_text())
    argv = other["argv"]
    argv[argv.index("--steps") + 1] = "200"  # another budget
    (tmp_path / "schedules_seed43.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="the seed files come from runs with other settings"):
        load_accuracy().summary(tmp_path)


def test_summary_refuses_seed_files_of_other_dense_starts(tmp_path):
    """A part skipped as done (same arguments) may come from a dense start the cache held before it was trained
    again: seed 42 from the 2026-12-03 start and seed 43 from the 2026-12-04 one would be averaged."""
    import shutil


    shutil.copy(RESULTS / "schedules_seed42.json", tmp_path)
    other = json.loads((RESULTS / "schedules_seed43.json").read_text())
    other["dense"] = json.loads((RESULTS.parent / "accuracy_625_dense20000_20261204" / "schedules_seed43.json")
                                .read_text())["dense"]
    (tmp_path / "schedules_seed43.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"the seed files start from other dense models \(test, unseen dev and check "
                                         r"accuracies: schedules_seed42.json \(0.884"):
        load_accuracy().summary(tmp_path)
    load_accuracy().summary(RESULTS)  # the published folder: one dense start


def test_schedule_append_refuses_runs_of_other_settings(tmp_path):

    schedule = load_script("benchmarks", "schedule")
    earlier = json.loads((RESULTS / "schedules_seed42.json").read_text())["settings"]
    same = type("Opts", (), {**earlier, "output": "x.json"})()
    schedule.refuse_other_settings(earlier, same)  # the runs this folder holds were appended this way
    with pytest.raises(SystemExit, match=r"--append: the runs in x.json used other settings \(steps 625 -> 200\)"):
        schedule.refuse_other_settings(earlier, type("Opts", (), {**earlier, "steps": 200, "output": "x.json"})())


def test_schedule_append_refuses_runs_of_another_dense_start():
    """The cached dense start can be trained again (another machine's sums): appending rows to runs from the old
    one would mix two starts. Files without the fingerprint are compared by the dense start's accuracies."""

    schedule = load_script("benchmarks", "schedule")
    earlier = json.loads((RESULTS / "schedules_seed42.json").read_text())["dense"]
    opts = type("Opts", (), {"output": "x.json", "cache_dir": "cache"})()
    schedule.refuse_other_dense(earlier, {**earlier, "fingerprint": "1.0e+05"}, opts)
    with pytest.raises(SystemExit, match=r"--append: the runs in x.json started from another dense model than the "
                                         r"one in cache \(dev_accuracy 0\.907 -> 0\.9058\)"):
        schedule.refuse_other_dense(earlier, {**earlier, "dev_accuracy": 0.9058, "fingerprint": "1.0e+05"}, opts)
    with pytest.raises(SystemExit, match=r"\(fingerprint 1\.0e\+05 -> 2\.0e\+05\)"):
        schedule.refuse_other_dense({"fingerprint": "1.0e+05"}, {"fingerprint": "2.0e+05"}, opts)


def test_summary_only_of_a_folder_without_results_is_refused_and_not_made(tmp_path):
    """A mistyped --output_dir: the folder was made and given a summary.md with an empty table (exit status 0)."""

    typo = tmp_path / "acuracy"
    with pytest.raises(SystemExit, match=r"acuracy holds no schedules_seed\*\.json or post_training\.json: nothing "
                                         r"to summarise \(check --output_dir"):
        load_accuracy().main(["--summary_only", "--output_dir", str(typo)])
    assert not typo.exists()
