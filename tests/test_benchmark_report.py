"""benchmarks/run.py --report_only: the report and plots are rebuilt from the suite's JSON files alone."""

from __future__ import annotations

import json
import shutil

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
