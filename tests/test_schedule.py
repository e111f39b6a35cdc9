"""``pruning_schedule``: search the ratio with little training, then recover at a fixed shape; the final re-check."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers

from hf_adaprune import AdaptiveController, get_masks
from hf_adaprune.reporting.summary import PruningSummary
from hf_adaprune.trainer.trainer import PRUNING_STATE_FILE

from test_controller import run
from test_distributed import TORCHRUN, masks_of, run_worker
from test_trainer import make_args, make_trainer


class MaskSpy(transformers.TrainerCallback):
    """``masks[s]``: the masks optimizer step s ends with, as the step after it trains with them (read at the end of
    step s, after the pruning callback acted on it, and again when step s + 1 begins, after a candidate due from
    step s's decision was masked)."""

    def __init__(self, trainer):
        self.trainer, self.masks = trainer, {}

    def on_step_end(self, args, state, control, **kwargs):
        self._record(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._record(state.global_step)  # global_step still counts the steps done

    def _record(self, step):
        masks = get_masks(self.trainer.model)
        if masks is not None:
            self.masks[step] = {k: v.clone() for k, v in masks.state_dict().items()}


def spied(trainer):
    spy = MaskSpy(trainer)
    trainer.add_callback(spy)  # after PruningCallback: sees the masks that step ends with
    return spy


def scripted(trainer, metrics):
    """Replace the decision metric with ``metrics`` in order; records the heads pruned at each evaluation."""
    metrics, seen = iter(metrics), []

    def metric():
        seen.append(get_masks(trainer.model).pruned_fraction("heads"))
        return next(metrics), {}

    trainer._decision_metric = metric
    return seen


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_bisect_tries_the_target_first_and_never_beyond_a_failed_ratio():
    c = AdaptiveController(target=0.5, initial_step=0.1, min_step=0.05, tolerance=0.01, search="bisect")
    tried, decisions = run(c, 0.90, [0.80, 0.90, 0.80, 0.90])
    assert tried == pytest.approx([0.5, 0.25, 0.375, 0.3125])
    assert decisions == ["rollback", "keep", "rollback", "keep"]
    # 0.375 failed and 0.3125 kept: the next midpoint would be 0.03125 away, below min_step
    assert c.state.done and c.state.stop_reason == "step below minimum"
    assert c.state.ratio == pytest.approx(0.3125) and c.state.ceiling == pytest.approx(0.375)


def test_bisect_keeps_the_target_in_one_evaluation():
    c = AdaptiveController(target=0.65, initial_step=0.1, min_step=0.05, tolerance=0.01, search="bisect")
    tried, decisions = run(c, 0.90, [0.895])
    assert tried == [0.65] and decisions == ["keep"] and c.state.stop_reason == "target reached"


def test_search_then_recover_reaches_the_target_at_the_warmup_then_trains_at_that_shape(tmp_path):
    trainer = make_trainer(tmp_path, pruning_schedule="search_then_recover", pruning_tolerance=1.0,
                           pruning_warmup_steps=6, max_steps=20, compact_at_end=False)
    spy = spied(trainer)
    trainer.train()
    events = [h["event"] for h in trainer.controller.state.history]
    assert events == ["reference", "keep", "stop"]
    assert trainer.controller.state.stop_reason == "target reached"
    assert trainer.controller.state.selected == pytest.approx(0.5, abs=0.05)
    assert all(float(m.sum()) == m.numel() for m in spy.masks[5].values()), "dense before the warm-up ends"
    for step in range(6, 21):  # masked at step 6 and never changed again: 14 steps of recovery at that shape
        assert same(spy.masks[step], spy.masks[6]), step
    decided = [e["step"] for e in trainer.state.log_history if "pruning/metric" in e]
    assert decided == [6, 6], "reference and the decision in the same step"


def test_search_then_recover_rolls_back_a_candidate_beyond_tolerance(tmp_path):
    trainer = make_trainer(tmp_path, pruning_schedule="search_then_recover", pruning_tolerance=0.05,
                           pruning_target=0.6, pruning_min_step=0.1, pruning_warmup_steps=6, max_steps=14,
                           compact_at_end=False)
    spy = spied(trainer)
    # reference, 0.6 too far, 0.3 fine, 0.45 too far, then the final re-check
    seen = scripted(trainer, [0.9, 0.5, 0.9, 0.5, 0.88])
    trainer.train()
    history = trainer.controller.state.history
    assert [(h["event"], round(h.get("ratio", 0), 4)) for h in history[1:4]] == [
        ("rollback", 0.6), ("keep", 0.3), ("rollback", 0.45)]
    assert trainer.controller.state.stop_reason == "step below minimum"
    assert trainer.controller.state.ratio == pytest.approx(0.3)
    assert seen[1] > seen[2] < seen[3], "each candidate was masked before it was measured"
    final = get_masks(trainer.model).state_dict()
    assert seen[-1] == pytest.approx(seen[2]), "the re-check measured the kept 0.3 masks"
    for step in range(6, 15):
        assert same(spy.masks[step], final), "the search ran within step 6; training went on at the kept shape"
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["schedule"] == "search_then_recover"
    assert report["final_check"] == {"step": 14, "metric": 0.88, "reference": 0.9,
                                     "drop": pytest.approx(0.02), "allowed_drop": 0.05, "within_tolerance": True}


@pytest.mark.parametrize("schedule", ["gradual", "search_then_recover"])
def test_final_check_beyond_tolerance_is_reported_and_warned(tmp_path, caplog, schedule):
    trainer = make_trainer(tmp_path, pruning_schedule=schedule, pruning_tolerance=0.05, pruning_target=0.3,
                           pruning_initial_step=0.3, max_steps=18)
    scripted(trainer, [0.9, 0.88, 0.7])  # reference, the target kept, then the final model fell back
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["decisions"][1]["event"] == "keep"
    check = report["final_check"]
    assert check["metric"] == 0.7 and check["within_tolerance"] is False and check["drop"] == pytest.approx(0.2)
    assert "beyond the tolerance" in caplog.text
    assert PruningSummary.from_dict(report).final_check == check


def test_final_check_is_none_when_pruning_never_started(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, pruning_warmup_steps=6)
    trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["final_check"] is None and report["schedule"] == "gradual"


def test_a_report_without_the_new_keys_still_reads():
    report = PruningSummary(None, None, "m", "taylor", "accuracy", "eval_accuracy", True, 0.9, 0.89, 0.01,
                            "absolute", 0.5, "flops", 0.5, "target reached").to_dict()
    del report["schedule"], report["final_check"]
    summary = PruningSummary.from_dict(report)
    assert summary.schedule == "gradual" and summary.final_check is None


def test_resume_mid_search_matches_the_uninterrupted_run(tmp_path):
    # candidates judged 4 steps after masking, so the search spans checkpoints: warm-up 6, candidates at
    # 6 and 10, ..., checkpoint at step 8 holds a pending candidate
    options = dict(pruning_schedule="search_then_recover", pruning_search_steps=4, pruning_tolerance=0.0,
                   pruning_min_step=0.1, max_steps=24)

    def within_tolerance_up_to_0_3(trainer):  # a metric of the masks alone: the same in both runs
        trainer._decision_metric = lambda: (float(get_masks(trainer.model).pruned_fraction("heads") <= 0.3), {})
        return trainer

    full = within_tolerance_up_to_0_3(make_trainer(tmp_path / "full", save_strategy="steps", save_steps=8, **options))
    full.train()
    state = torch.load(tmp_path / "full" / "checkpoint-8" / PRUNING_STATE_FILE, weights_only=True)
    assert state["controller"]["pending"] is not None and not state["controller"]["done"], "checkpoint is mid-search"
    resumed = within_tolerance_up_to_0_3(make_trainer(tmp_path / "full", save_strategy="no", **options))
    resumed.args.output_dir = str(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-8"))
    a = json.loads((tmp_path / "full" / "pruning_report.json").read_text())
    b = json.loads((tmp_path / "resumed" / "pruning_report.json").read_text())
    assert len(a["decisions"]) >= 4, "the search took several decisions"
    assert [(d["event"], d.get("ratio")) for d in a["decisions"]] == [(d["event"], d.get("ratio"))
                                                                      for d in b["decisions"]]
    assert [d.get("metric") for d in a["decisions"]] == pytest.approx([d.get("metric") for d in b["decisions"]])
    assert a["groups"] == b["groups"] and a["final_check"] == pytest.approx(b["final_check"])


def test_search_then_recover_names_the_gradual_options_it_does_not_read_and_resumes_under_others(tmp_path, caplog):
    """They were taken silently, and a resume under another (unread) value was refused."""
    options = dict(pruning_schedule="search_then_recover", pruning_tolerance=1.0, max_steps=12)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        first = make_trainer(tmp_path, save_strategy="steps", save_steps=8, pruning_step_growth=2.0, **options)
    assert ("--pruning_interval 6, --pruning_initial_step 0.2, --pruning_step_growth 2.0 not read: --pruning_schedule "
            "search_then_recover tries the target first") in caplog.text
    first.train()
    resumed = make_trainer(tmp_path, pruning_interval=9, pruning_initial_step=0.3, **options)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert resumed.state.global_step == 12
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        make_trainer(tmp_path / "gradual", pruning_step_growth=2.0)
    assert "not read" not in caplog.text


def test_search_steps_leave_room_warning_names_the_right_option(tmp_path, caplog):
    trainer = make_trainer(tmp_path, pruning_schedule="search_then_recover", pruning_search_steps=5, max_steps=8,
                           pruning_warmup_steps=6)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    assert "leaves 2 steps, fewer than pruning_search_steps 5" in caplog.text


def test_a_search_at_the_last_step_is_not_warned_of_as_no_pruning(tmp_path, caplog):
    """search_then_recover with 0 search steps judges every candidate within the reference's step: a warm-up of
    max_steps still prunes, where the warning said the model would not be pruned."""
    trainer = make_trainer(tmp_path / "search", pruning_schedule="search_then_recover", pruning_tolerance=1.0,
                           pruning_warmup_steps=6, max_steps=6)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    assert "no pruning decision fits this schedule" not in caplog.text
    assert trainer.controller.state.ratio > 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):  # gradual at the same schedule: not pruned
        gradual = make_trainer(tmp_path / "gradual", pruning_warmup_steps=6, max_steps=6)
        gradual.train()
    assert "no pruning decision fits this schedule" in caplog.text and gradual.controller.state.ratio == 0


@pytest.mark.parametrize("overrides, message", [
    (dict(pruning_schedule="oneshot"), "--pruning_schedule must be one of gradual, search_then_recover"),
    (dict(pruning_search_steps=-1), "--pruning_search_steps must be >= 0"),
    (dict(pruning_search_steps=5), "--pruning_search_steps 5 sets how long search_then_recover trains a candidate "
                                   "before judging it; --pruning_schedule gradual does not read it"),
])
def test_bad_schedule_arguments_fail_when_parsed(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def same_masks_on_two_processes_as_on_one(tmp_path, extra) -> tuple:
    """Run the worker on two processes and on one with ``extra``; assert every rank ends with the one-process
    masks (and that something was pruned); returns the two output folders."""
    two, result = run_worker(tmp_path, "two", batch=8, nproc=2, extra=extra)
    assert result.returncode == 0, result.stderr[-4000:]
    one, result = run_worker(tmp_path, "one", batch=16, nproc=1, extra=extra)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1, single = masks_of(two, 0), masks_of(two, 1), masks_of(one, 0)
    assert any(float(m.sum()) < m.numel() for m in rank0.values()), "something was pruned"
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]) and torch.equal(rank0[name], single[name]), name
    return two, one


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
def test_two_processes_search_to_the_same_masks_as_one(tmp_path):
    # candidates judged 3 steps after masking: the search spans several decisions, each on gathered metrics
    two, one = same_masks_on_two_processes_as_on_one(
        tmp_path, ("--schedule", "search_then_recover", "--search-steps", "3"))
    histories = [torch.load(folder / f"controller_rank{rank}.pt")["history"] for folder, rank in
                 ((two, 0), (two, 1), (one, 0))]
    assert histories[0] == histories[1], "every rank took the same decisions"
    assert [h["event"] for h in histories[0]] == [h["event"] for h in histories[2]]


def test_resume_with_a_higher_target_judges_a_search_without_steps_at_once(tmp_path):
    """pruning_search_steps 0: the new target's candidate is judged at the resumed step, before any training under
    it (one-shot, as the search promises), not one optimizer step later."""
    options = dict(pruning_schedule="search_then_recover", pruning_tolerance=1.0, save_strategy="steps", save_steps=10)
    make_trainer(tmp_path / "a", pruning_target=0.3, max_steps=20, **options).train()
    resumed = make_trainer(tmp_path / "b", pruning_target=0.6, max_steps=30, pruning_resume_with_new_arguments=True,
                           **options)
    spy = spied(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-20"))
    judged = [(e["step"], round(e["pruning/sparsity_tried"], 3)) for e in resumed.state.log_history
              if "pruning/metric" in e]
    assert judged[-1] == (20, 0.6), judged
    # every optimizer step after the resume already trains at the kept 0.6
    first = spy.masks[21]
    assert all(same(first, spy.masks[s]) for s in range(21, 31))
    assert resumed.pruning_summary().final_sparsity == pytest.approx(0.6, abs=0.05)


def test_a_search_checkpoint_that_recorded_the_gradual_options_resumes(tmp_path):
    """Checkpoints written before the gradual schedule's options were left out of a search_then_recover record hold
    them; compared with today's record they read as changed ("checkpoint 0.2, now None")."""
    options = dict(pruning_schedule="search_then_recover", pruning_tolerance=1.0, max_steps=12)
    make_trainer(tmp_path, save_strategy="steps", save_steps=8, **options).train()
    state_file = tmp_path / "checkpoint-8" / PRUNING_STATE_FILE
    state = torch.load(state_file, weights_only=True)
    state["arguments"].update(pruning_interval=6, pruning_initial_step=0.2, pruning_step_growth=1.5)
    torch.save(state, state_file)
    resumed = make_trainer(tmp_path, **options)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert resumed.state.global_step == 12


def test_search_then_recover_takes_a_min_step_above_the_unread_initial_step(tmp_path):
    """--pruning_min_step 0.2 needed --pruning_initial_step >= 0.2, an option the search does not read."""
    trainer = make_trainer(tmp_path, pruning_schedule="search_then_recover", pruning_min_step=0.2,
                           pruning_initial_step=0.1)
    assert trainer.controller.min_step == 0.2 and trainer.controller.initial_step == 0.5
    with pytest.raises(ValueError, match="need 0 < --pruning_min_step <= --pruning_initial_step <= 1"):
        make_args(tmp_path, pruning_min_step=0.2, pruning_initial_step=0.1)  # gradual reads both
