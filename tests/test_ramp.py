"""``pruning_ramp_steps``: removed structures fade from 1 to 0 over a few optimizer steps, 0/1 again at every decision."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hf_adaprune import compact, get_masks
from hf_adaprune.trainer.ramp import MaskRamp
from hf_adaprune.trainer.trainer import PRUNING_STATE_FILE

from conftest import text_batch
from test_schedule import scripted, spied
from test_trainer import make_args, make_trainer


def binary(masks: dict) -> bool:
    return all(bool(((m == 0) | (m == 1)).all()) for m in masks.values())


def recording_binary(trainer) -> list[bool]:
    """Wrap the decision metric: whether the masks were all 0/1 at each evaluation."""
    seen, measure = [], trainer._decision_metric

    def metric():
        seen.append(binary(get_masks(trainer.model).masks))
        return measure()

    trainer._decision_metric = metric
    return seen


def test_ramp_values_follow_the_step_counts():
    ramp = MaskRamp(10, 3, {"a": torch.tensor([1.0, 1.0, 0.0])}, {"a": torch.tensor([1.0, 0.0, 0.0])})
    values = [float(ramp.masks_at(step)["a"][1]) for step in range(10, 15)]
    assert values == pytest.approx([0.75, 0.5, 0.25, 0.0, 0.0])
    assert [ramp.finished(step) for step in (12, 13)] == [False, True]
    assert all(float(ramp.masks_at(step)["a"][0]) == 1.0 and float(ramp.masks_at(step)["a"][2]) == 0.0
               for step in range(10, 15)), "kept and already removed structures do not move"


@pytest.mark.parametrize("schedule", [dict(pruning_schedule="gradual", pruning_interval=6),
                                      dict(pruning_schedule="search_then_recover", pruning_search_steps=5)])
def test_masks_fade_over_the_ramp_and_are_0_1_at_each_decision(tmp_path, schedule):
    trainer = make_trainer(tmp_path, pruning_ramp_steps=3, pruning_tolerance=1.0, pruning_warmup_steps=6,
                           max_steps=20, compact_at_end=False, **schedule)
    spy = spied(trainer)
    at_decisions = recording_binary(trainer)
    trainer.train()
    dense = spy.masks[5]
    assert binary(dense) and all(float(m.min()) == 1 for m in dense.values())
    # selected at the end of step 6; during steps 7, 8, 9 the removed structures are at 3/4, 1/2, 1/4; 0 from step 9's end
    removed = {name: mask < 0.5 for name, mask in spy.masks[9].items()}
    assert any(r.any() for r in removed.values()), "something was pruned"
    for step, value in zip((6, 7, 8), (0.75, 0.5, 0.25)):
        for name, mask in spy.masks[step].items():
            assert torch.allclose(mask[removed[name]], torch.full_like(mask[removed[name]], value)), (step, name)
            assert torch.equal(mask[~removed[name]], torch.ones_like(mask[~removed[name]])), (step, name)
    assert binary(spy.masks[9])
    assert len(at_decisions) >= 3 and all(at_decisions), "the reference, every decision and the final check"
    assert binary(get_masks(trainer.model).masks)


def test_rollback_restores_the_accepted_masks_after_a_ramp(tmp_path):
    trainer = make_trainer(tmp_path, pruning_ramp_steps=4, pruning_interval=6, pruning_tolerance=0.05,
                           pruning_warmup_steps=6, pruning_initial_step=0.2, max_steps=18, compact_at_end=False)
    spy = spied(trainer)
    scripted(trainer, [0.9, 0.89, 0.5, 0.88, 0.88])  # reference, keep 0.2 at 12, roll back 0.5 at 18, final check
    trainer.train()
    events = [(h["event"], round(h.get("ratio", 0), 3)) for h in trainer.controller.state.history]
    assert events[1:3] == [("keep", 0.2), ("rollback", 0.5)], events
    accepted = spy.masks[12 - 1]  # before step 12's pruning step the masks were the kept 0.2 ones...
    assert not binary(spy.masks[12]) and not binary(spy.masks[14]), "...then the 0.5 candidate faded in"
    final = get_masks(trainer.model).state_dict()
    assert all(torch.equal(final[name], accepted[name]) for name in final), "rolled back to the accepted masks"


def test_resume_mid_ramp_matches_the_uninterrupted_run(tmp_path):
    # warm-up 6: masks selected at step 6 fade until step 10; the checkpoint at step 8 is mid-ramp
    options = dict(pruning_ramp_steps=4, pruning_interval=6, pruning_tolerance=1.0, max_steps=20,
                   compact_at_end=False)
    full = make_trainer(tmp_path / "full", save_strategy="steps", save_steps=8, **options)
    spy = spied(full)
    full.train()
    state = torch.load(tmp_path / "full" / "checkpoint-8" / PRUNING_STATE_FILE, weights_only=True)
    assert state["ramp"] is not None and not binary(state["masks"]), "the checkpoint is mid-ramp"
    resumed = make_trainer(tmp_path / "full", save_strategy="no", **options)
    resumed.args.output_dir = str(tmp_path / "resumed")
    resumed_spy = spied(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-8"))
    for step in range(9, 21):
        for name, mask in spy.masks[step].items():
            assert torch.equal(resumed_spy.masks[step][name], mask), (step, name)
    a = json.loads((tmp_path / "full" / "pruning_report.json").read_text())
    b = json.loads((tmp_path / "resumed" / "pruning_report.json").read_text())
    assert [(d["event"], d.get("ratio")) for d in a["decisions"]] == [(d["event"], d.get("ratio"))
                                                                      for d in b["decisions"]]
    weights_a, weights_b = full.model.state_dict(), resumed.model.state_dict()
    for name in weights_a:
        assert torch.allclose(weights_a[name], weights_b[name], atol=1e-5), name


def test_training_that_ends_mid_ramp_decides_on_0_1_masks_and_compacts_exactly(tmp_path):
    trainer = make_trainer(tmp_path, pruning_ramp_steps=5, pruning_interval=6, pruning_tolerance=1.0,
                           pruning_warmup_steps=6, max_steps=8, compact_at_end=False)
    at_decisions = recording_binary(trainer)
    trainer.train()
    assert [h["event"] for h in trainer.controller.state.history][:2] == ["reference", "keep"]
    assert all(at_decisions) and binary(get_masks(trainer.model).masks)
    masked = trainer.model.eval()
    batch = text_batch()
    with torch.no_grad():
        expected = masked(**batch).logits
        small = copy.deepcopy(masked)
        compact(small)
        assert torch.allclose(small(**batch).logits, expected, atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in masked.parameters())


def test_distillation_with_a_ramp_trains_and_prunes(tmp_path):
    trainer = make_trainer(tmp_path, pruning_ramp_steps=3, pruning_tolerance=1.0, max_steps=14, distillation=True,
                           distillation_hidden_weight=0.5)
    trainer.train()
    assert trainer.controller.state.selected > 0 and get_masks(trainer.model) is None, "pruned and compacted"


@pytest.mark.parametrize("overrides, message", [
    (dict(pruning_ramp_steps=-1), "--pruning_ramp_steps must be >= 0"),
    (dict(pruning_ramp_steps=7, pruning_interval=6), "--pruning_ramp_steps 7 exceeds --pruning_interval 6"),
    (dict(pruning_ramp_steps=2, pruning_schedule="search_then_recover"),
     "--pruning_ramp_steps 2 exceeds --pruning_search_steps 0"),
])
def test_a_ramp_longer_than_the_steps_before_the_decision_is_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)
