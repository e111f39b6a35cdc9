"""A target the per-layer floors make unreachable is reported before training with the reachable maximum, and
the report gives the sparsity actually selected."""

from __future__ import annotations

import json
import logging

import pytest

from test_trainer import make_trainer


@pytest.mark.parametrize("floor, reachable", [(3, "0.2500")])  # floors that leave nothing: test_trainer_input_checks
def test_trainer_warns_of_a_target_the_floors_block(tmp_path, caplog, floor, reachable):
    with caplog.at_level(logging.WARNING, logger="hf_adaprune.trainer.trainer"):
        make_trainer(tmp_path, prune="heads", pruning_target=0.5, min_heads_per_layer=floor)
    assert any("target 0.5 cannot be reached" in r.message and f"min_heads_per_layer={floor}" in r.message
               and f"at most {reachable}" in r.message for r in caplog.records), caplog.text


def test_report_gives_the_sparsity_selected_not_the_target(tmp_path):
    trainer = make_trainer(tmp_path, prune="heads", pruning_target=0.5, min_heads_per_layer=3,
                           pruning_initial_step=0.5, pruning_tolerance=10.0, max_steps=12)
    trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["stop_reason"].startswith("target tried, but the selection stops at 0.250")
    assert report["final_sparsity"] == pytest.approx(0.25)  # 1 of 4 heads per layer: the floor keeps 3
