"""The adaptive controller driven by scripted metric sequences."""

from __future__ import annotations

import pytest

from hf_adaprune import AdaptiveController


def run(controller, reference, metrics):
    """Feed metrics until the controller stops or they run out; returns (ratios tried, decisions)."""
    tried, decisions = [controller.start(reference)], []
    for metric in metrics:
        decisions.append(controller.decide(metric))
        if controller.state.done:
            break
        tried.append(controller.propose())
    return tried, decisions


def test_keeps_until_target():
    c = AdaptiveController(target=0.5, initial_step=0.2, min_step=0.05, tolerance=0.01)
    tried, decisions = run(c, 0.90, [0.90, 0.895, 0.891])
    assert tried == pytest.approx([0.2, 0.4, 0.5])
    assert decisions == ["keep"] * 3
    assert c.state.done and c.state.stop_reason == "target reached"
    assert c.state.ratio == pytest.approx(0.5)


def test_rollback_halves_step_and_retries_from_last_kept():
    c = AdaptiveController(target=0.9, initial_step=0.4, min_step=0.05, tolerance=0.01)
    tried, decisions = run(c, 0.90, [0.90, 0.80, 0.895])
    assert tried == pytest.approx([0.4, 0.8, 0.6, 0.8])
    assert decisions == ["keep", "rollback", "keep"]
    assert c.state.ratio == pytest.approx(0.6)
    assert c.state.step == pytest.approx(0.2)


def test_rollback_of_a_step_cut_short_by_the_target_tries_a_smaller_ratio():
    # kept 0.45 with a step of 0.45: the next step is cut to 0.05 by the target; rolled back, the next
    # try lies halfway (0.475), not at the target again as half of the nominal step (0.225) would have it
    c = AdaptiveController(target=0.5, initial_step=0.45, min_step=0.01, tolerance=0.01, growth=1.0)
    tried, decisions = run(c, 0.90, [0.90, 0.80])
    assert tried == pytest.approx([0.45, 0.5, 0.475])
    assert decisions == ["keep", "rollback"]
    assert c.state.step == pytest.approx(0.025)


def test_stops_when_step_below_minimum():
    c = AdaptiveController(target=0.9, initial_step=0.2, min_step=0.05, tolerance=0.0)
    tried, decisions = run(c, 1.0, [0.5, 0.5, 0.5, 0.5])
    assert decisions == ["rollback", "rollback", "rollback"]
    assert tried == pytest.approx([0.2, 0.1, 0.05])
    assert c.state.done and c.state.stop_reason == "step below minimum"
    assert c.state.ratio == 0.0


def test_step_grows_after_keeps():
    c = AdaptiveController(target=0.9, initial_step=0.1, min_step=0.01, tolerance=0.1, growth=2.0)
    tried, _ = run(c, 1.0, [1.0, 1.0, 1.0])
    assert tried == pytest.approx([0.1, 0.3, 0.7, 0.9])


def test_lower_is_better_metric():
    c = AdaptiveController(target=0.8, initial_step=0.4, min_step=0.1, tolerance=0.02, greater_is_better=False)
    c.start(0.10)  # a WER of 10%
    assert c.decide(0.11) == "keep"  # 1 point worse: within 2 points
    c.propose()
    assert c.decide(0.13) == "rollback"  # 3 points worse
    c.propose()
    assert c.decide(0.05) == "keep"  # better is always fine


@pytest.mark.parametrize("greater_is_better, reference, metric", [
    (False, float("inf"), 1e6),  # a perplexity that overflowed at the reference: x - inf is -inf, "no drop"
    (True, float("-inf"), 0.5),
    (True, 0.9, float("inf")),   # an infinite candidate against a finite reference
    (True, 0.9, float("nan")),
    (False, float("nan"), 0.1),
])
@pytest.mark.parametrize("tolerance_type", ["absolute", "relative"])
def test_a_metric_or_reference_that_is_not_finite_is_never_within_tolerance(greater_is_better, reference, metric,
                                                                             tolerance_type):
    c = AdaptiveController(target=0.8, initial_step=0.2, min_step=0.1, tolerance=0.05, tolerance_type=tolerance_type,
                           greater_is_better=greater_is_better)
    c.start(reference)
    assert not c.within_tolerance(metric)
    assert c.decide(metric) == "rollback"


def test_relative_tolerance():
    c = AdaptiveController(target=0.8, initial_step=0.2, min_step=0.1, tolerance=0.05, tolerance_type="relative")
    c.start(40.0)  # BLEU 40: 5% relative = 2 points
    assert c.decide(38.1) == "keep"
    c.propose()
    assert c.decide(37.9) == "rollback"


def test_relative_tolerance_of_a_negative_reference_is_its_magnitude():
    """The allowed drop of a relative tolerance is ``tolerance * |reference|``: a metric below zero (a negative
    loss-like score where greater is better) must not turn it into a negative allowance, which would roll back
    even an unchanged metric. Reference -2.0, 10%: 0.2 may be lost."""
    c = AdaptiveController(target=0.8, initial_step=0.2, min_step=0.1, tolerance=0.1, tolerance_type="relative")
    c.start(-2.0)
    assert c.allowed_drop() == pytest.approx(0.2, abs=1e-12)
    assert c.decide(-2.1) == "keep"  # 0.1 lost: within 0.2
    c.propose()
    assert c.decide(-2.3) == "rollback"  # 0.3 lost


def test_state_round_trip_continues_identically():
    a = AdaptiveController(target=0.9, initial_step=0.3, min_step=0.05, tolerance=0.01)
    a.start(0.9)
    a.decide(0.7)
    a.propose()
    b = AdaptiveController(target=0.9, initial_step=0.3, min_step=0.05, tolerance=0.01)
    b.load_state_dict(a.state_dict())
    assert b.decide(0.9) == a.decide(0.9)
    assert b.propose() == a.propose()
    assert b.state_dict() == a.state_dict()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target=1.0), r"target must be in \(0, 1\)"),
        (dict(target=0.5, tolerance=-0.1), "tolerance must be >= 0"),
        (dict(target=0.5, tolerance_type="percent"), "tolerance_type must be"),
        (dict(target=0.5, initial_step=0.1, min_step=0.2), "min_step <= initial_step"),
        (dict(target=0.5, tolerance=float("nan")), "tolerance must be >= 0"),
        (dict(target=0.5, growth=float("nan")), "growth must be >= 1"),
        (dict(target=float("nan")), r"target must be in \(0, 1\)"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveController(**kwargs)


def test_decide_without_pending_step():
    c = AdaptiveController(target=0.5)
    with pytest.raises(RuntimeError, match="no pending pruning step"):
        c.decide(1.0)


def test_start_without_proposing_leaves_nothing_pending():
    """The trainer takes a reference at the last step without masking a candidate nothing could judge."""
    c = AdaptiveController(target=0.5, initial_step=0.2)
    assert c.start(0.9, propose=False) is None
    assert c.state.reference == 0.9 and c.state.pending is None and c.state.history[0]["event"] == "reference"
    with pytest.raises(RuntimeError, match="no pending pruning step"):
        c.decide(0.9)
    assert c.propose() == 0.2 and c.state.pending == 0.2


def test_records_the_sparsity_actually_selected():
    """Selection can fall short of the tried ratio (floors, whole structures): the kept sparsity is what it reached."""
    c = AdaptiveController(target=0.5, initial_step=0.5, min_step=0.1, tolerance=0.05)
    assert c.start(0.9) == 0.5
    assert c.decide(0.9, selected=0.25) == "keep"
    assert c.state.selected == 0.25 and c.state.done
    assert c.state.stop_reason.startswith("target tried, but the selection stops at 0.250")  # not "reached"
    assert c.state.history[1]["ratio"] == 0.5 and c.state.history[1]["selected"] == 0.25
    rounded = AdaptiveController(target=0.5, initial_step=0.5, min_step=0.1, tolerance=0.05)
    rounded.start(0.9)
    rounded.decide(0.9, selected=0.49)  # short by whole structures only: reached
    assert rounded.state.stop_reason == "target reached"


def test_propose_before_start_says_what_is_missing():
    with pytest.raises(RuntimeError, match=r"propose\(\) before start\(reference\)"):
        AdaptiveController(target=0.5).propose()


def test_without_retries_a_grown_step_stops_halfway_to_the_smallest_failure():
    # tries without training between them (post-training pruning): a failed ratio stays failed, so no later try
    # reaches it; with retries (training between tries, the default) the grown step goes back up to it
    def tries(retry_failed):
        c = AdaptiveController(target=0.9, initial_step=0.1, min_step=0.0125, tolerance=0.01, growth=1.5,
                               retry_failed=retry_failed)
        metric = {True: 0.9, False: 0.5}  # within tolerance up to 0.22 removed
        tried = [c.start(0.9)]
        while not c.state.done:
            c.decide(metric[tried[-1] <= 0.22 + 1e-9])
            if not c.state.done:
                tried.append(c.propose())
        return tried, c

    tried, c = tries(retry_failed=False)
    smallest_failure = 1.0
    for ratio, decided in zip(tried, c.state.history[1:]):
        assert ratio < smallest_failure, (ratio, tried)
        if decided["event"] == "rollback":
            smallest_failure = min(smallest_failure, ratio)
    assert tried == pytest.approx([0.1, 0.25, 0.175, 0.2125, 0.23125])
    assert c.state.ratio == pytest.approx(0.2125) and c.state.stop_reason == "step below minimum"
    retried, _ = tries(retry_failed=True)
    assert max(retried[retried.index(0.25) + 1:]) >= 0.25, retried  # the grown step went back beyond the failure
