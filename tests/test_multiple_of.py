"""--pruning_multiple_of: kept FFN widths (and attention widths, heads x head_dim) become multiples, chosen by score;
a multiple no group can honour fails before training."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from hf_adaprune import AutoPrunedModel, get_masks
from hf_adaprune.engine.selection import round_kept, select_masks_by_kind, structure_multiple

from conftest import text_batch
from test_trainer import make_args, make_trainer


class G:  # what selection reads of a group
    def __init__(self, name, kind, head_dim=None):
        self.name, self.kind, self.head_dim = name, kind, head_dim


def test_kept_width_goes_to_the_nearest_multiple_keeping_the_best_scores():
    score = torch.arange(37, dtype=torch.float32)  # structure i scores i
    current = torch.ones(37)
    for kept, expected in ((19, 16), (21, 24), (3, 8), (36, 32)):
        selected = torch.zeros(37)
        selected[:kept] = 1  # whatever selection picked: rounding re-chooses by score
        new = round_kept(score, current, selected, 8, floor=1)
        assert int(new.sum()) == expected
        assert new[37 - expected:].sum() == expected, "the best-scored structures fill the width"


def test_rounding_never_revives_pruned_structures_nor_exceeds_what_is_alive():
    score = torch.arange(16, dtype=torch.float32)
    current = torch.ones(16)
    current[10:] = 0  # the six best were pruned earlier: 10 alive
    selected = current.clone()
    selected[9] = 0  # selection keeps 9, nearest multiple of 8 is 8
    new = round_kept(score, current, selected, 8, floor=1)
    assert int(new.sum()) == 8 and new[10:].sum() == 0 and torch.all(new <= current)


def test_floor_zero_lets_a_group_round_to_nothing_and_untouched_groups_stay_whole():
    score = torch.rand(37)
    selected = torch.zeros(37)
    selected[:2] = 1
    assert int(round_kept(score, torch.ones(37), selected, 8, floor=0).sum()) == 0
    assert int(round_kept(score, torch.ones(37), selected, 8, floor=1).sum()) == 8
    assert torch.equal(round_kept(score, torch.ones(37), torch.ones(37), 8, floor=1), torch.ones(37))


def test_heads_round_so_that_heads_times_head_dim_is_a_multiple():
    assert structure_multiple(G("a", "heads", head_dim=64), 16) == 1  # every head count is a multiple of 16 wide
    assert structure_multiple(G("a", "heads", head_dim=8), 16) == 2
    assert structure_multiple(G("f", "ffn"), 16) == 16
    groups = [G("a", "heads", head_dim=8), G("f", "ffn")]
    torch.manual_seed(0)
    scores = {"a": torch.rand(8), "f": torch.rand(64)}
    current = {"a": torch.ones(8), "f": torch.ones(64)}
    for ratio in (0.2, 0.3, 0.45, 0.6):
        for scope in ("layer", "global"):
            new = select_masks_by_kind(groups, scores, current, ratio, scope=scope, multiple_of=16)
            assert int(new["a"].sum()) % 2 == 0 and int(new["f"].sum()) % 16 == 0, (ratio, scope)


def test_a_multiple_larger_than_a_width_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"--pruning_multiple_of 64 cannot be honoured by encoder\.layer\.0\.ffn: it "
                                         r"has 37 neurons"):
        make_trainer(tmp_path, prune="ffn", pruning_multiple_of=64)
    with pytest.raises(ValueError, match="--pruning_multiple_of must be >= 1"):
        make_args(tmp_path, pruning_multiple_of=0)


@pytest.mark.parametrize("prune, multiple, clause", [
    ("ffn", 37, "a group of 37 neurons keeps a multiple of 37 neurons holding its floor, so at least 37, and at most "
                "0.0000 of the ffn can go"),
    ("heads", 32, "a group of 4 heads keeps a multiple of 4 heads holding its floor, so at least 4, and at most 0.0000 "
                  "of the heads can go"),  # 4 heads of 8 dimensions: a multiple of 32 is all of them
])
def test_a_multiple_that_leaves_nothing_prunable_fails_before_training(tmp_path, prune, multiple, clause):
    """A multiple equal to a width (rounding keeps all or nothing, the floor rules out nothing) trained a whole run
    to prune nothing; the floors' equivalent was refused."""
    with pytest.raises(ValueError, match=re.escape(f"--pruning_multiple_of {multiple} leaves nothing to prune: "
                                                   f"{clause}. Use a smaller --pruning_multiple_of")):
        make_trainer(tmp_path, prune=prune, pruning_multiple_of=multiple)


def test_a_multiple_that_caps_a_kind_below_the_target_is_warned_of(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        make_trainer(tmp_path / "ffn", prune="ffn", pruning_multiple_of=32, pruning_target=0.5)
    assert ("--pruning_multiple_of 32: a group of 37 neurons keeps a multiple of 32 neurons holding its floor, so at "
            "least 32, and at most 0.1351 of the ffn can go. Pruning target 0.5 cannot be reached by ffn") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):  # whole layers can still go: the heads cannot shrink
        make_trainer(tmp_path / "layers", prune="heads,ffn,layers", pruning_multiple_of=32, pruning_target=0.5)
    assert "The heads of the layers kept will not be pruned." in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        make_trainer(tmp_path / "fits", prune="heads,ffn", pruning_multiple_of=8, pruning_target=0.5)
    assert "--pruning_multiple_of" not in caplog.text


def test_trained_model_has_rounded_widths_and_matches_its_masks(tmp_path):
    # tiny BERT: FFN 37 wide, 4 heads of 8 dimensions; a multiple of 16 -> FFN widths 16 or 32, heads 2 or 4
    trainer = make_trainer(tmp_path, pruning_multiple_of=16, pruning_target=0.5, pruning_initial_step=0.5,
                           pruning_tolerance=10.0, max_steps=12, compact_at_end=False)
    trainer.train()
    model = trainer.model.eval()
    masks = get_masks(model)
    kept = masks.summary()
    assert any(v < 37 for n, v in kept.items() if n.endswith("ffn")), kept
    for name, count in kept.items():
        if name.endswith("ffn"):
            assert count == 37 or count % 16 == 0, kept
        else:
            assert count % 2 == 0, kept
    batch = text_batch()
    with torch.no_grad():
        masked = model(**batch).logits
    trainer.save_model()
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    ffn_widths = {m.out_features for n, m in loaded.named_modules() if n.endswith("intermediate.dense")}
    assert all(w == 37 or w % 16 == 0 for w in ffn_widths), ffn_widths
    with torch.no_grad():
        assert (loaded(**batch).logits - masked).abs().max() <= 1e-5


def test_an_ffn_emptied_earlier_holds_the_multiple_and_stays_empty():
    # 0 neurons is a multiple of any width: such a group must not block rounding the others
    groups = [G("f0", "ffn"), G("f1", "ffn")]
    scores = {"f0": torch.zeros(0), "f1": torch.rand(64, generator=torch.Generator().manual_seed(0))}
    current = {"f0": torch.ones(0), "f1": torch.ones(64)}
    for scope in ("layer", "global"):
        new = select_masks_by_kind(groups, scores, current, 0.3, kinds="ffn", scope=scope, multiple_of=8)
        assert new["f0"].numel() == 0 and int(new["f1"].sum()) % 8 == 0 and int(new["f1"].sum()) < 64, scope


def test_a_model_with_an_ffn_emptied_by_an_earlier_compaction_trains_with_a_multiple(tmp_path):
    from hf_adaprune import attach_masks, compact

    from conftest import tiny_model

    model = tiny_model("bert")
    attach_masks(model).set("encoder.layer.0.ffn", torch.zeros(37))
    compact(model)
    trainer = make_trainer(tmp_path, model=model, prune="ffn", pruning_multiple_of=8, pruning_target=0.3,
                           pruning_initial_step=0.3, pruning_tolerance=10.0, max_steps=12, compact_at_end=False)
    trainer.train()
    kept = get_masks(trainer.model).summary()
    ffn = {name: count for name, count in kept.items() if name.endswith("ffn")}
    assert ffn["encoder.layer.0.ffn"] == 0 and all(count % 8 == 0 for count in ffn.values()), kept
    assert any(0 < count < 37 for count in ffn.values()), kept


def test_fewer_alive_than_the_multiple_keeps_the_selection_rather_than_emptying_the_group():
    # masks pruned without rounding (6 of 37 alive), resumed with --pruning_multiple_of 8: no multiple of 8 fits
    # in 6, and rounding down would remove the group's last neurons below its floor
    score = torch.arange(37, dtype=torch.float32)
    current = torch.zeros(37)
    current[:6] = 1
    selected = current.clone()
    selected[0] = 0  # selection keeps 5
    new = round_kept(score, current, selected, 8, floor=1)
    assert torch.equal(new, selected)
