"""Selection rules: per layer, global with normalisation, floors, monotone masks, cost budgets."""

from __future__ import annotations

import re

import pytest
import torch

from hf_adaprune import select_masks, select_masks_by_kind
from hf_adaprune.engine.selection import (
    unreachable_target,
    reachable_fraction,
    selected_fraction,
    selected_fraction_by_kind,
)


class G:  # the two attributes select_masks_by_kind reads
    def __init__(self, name, kind):
        self.name, self.kind = name, kind


def ones(*sizes):
    return {f"g{i}": torch.ones(n) for i, n in enumerate(sizes)}


def test_per_layer_prunes_lowest_in_each_group():
    scores = {"g0": torch.tensor([4.0, 1.0, 3.0, 2.0]), "g1": torch.tensor([0.1, 0.4, 0.3, 0.2])}
    masks = select_masks(scores, ones(4, 4), ratio=0.5, scope="layer")
    assert masks["g0"].tolist() == [1, 0, 1, 0]
    assert masks["g1"].tolist() == [0, 1, 1, 0]


def test_per_layer_floor_keeps_minimum():
    scores = {"g0": torch.tensor([4.0, 1.0, 3.0, 2.0])}
    assert select_masks(scores, ones(4), ratio=1.0, floor=1)["g0"].tolist() == [1, 0, 0, 0]
    assert select_masks(scores, ones(4), ratio=1.0, floor=2)["g0"].tolist() == [1, 0, 1, 0]
    assert select_masks(scores, ones(4), ratio=1.0, floor=0)["g0"].tolist() == [0, 0, 0, 0]


def test_pruned_structures_stay_pruned():
    scores = {"g0": torch.tensor([0.0, 5.0, 3.0, 4.0])}
    current = {"g0": torch.tensor([1.0, 0.0, 1.0, 1.0])}  # the *best* one was pruned earlier
    new = select_masks(scores, current, ratio=0.5)
    assert new["g0"].tolist() == [0, 0, 1, 1]
    # a smaller ratio than already pruned never revives anything
    assert select_masks(scores, current, ratio=0.0)["g0"].tolist() == [1, 0, 1, 1]


def test_global_normalises_per_group():
    # g1's raw scores are 100x larger; after L2 normalisation its weakest entry is weaker than g0's.
    scores = {"g0": torch.tensor([1.0, 2.0, 3.0, 4.0]), "g1": torch.tensor([100.0, 1000.0, 1000.0, 1000.0])}
    masks = select_masks(scores, ones(4, 4), ratio=0.25, scope="global")
    assert masks["g1"].tolist() == [0, 1, 1, 1]
    assert masks["g0"].tolist() == [0, 1, 1, 1]


def test_global_is_uneven_across_groups():
    scores = {"g0": torch.tensor([1.0, 1.0, 1.0, 1.0]), "g1": torch.tensor([0.01, 0.02, 1.0, 1.0])}
    masks = select_masks(scores, ones(4, 4), ratio=0.25, scope="global")
    assert masks["g0"].tolist() == [1, 1, 1, 1]
    assert masks["g1"].tolist() == [0, 0, 1, 1]


def test_global_normalises_by_the_structures_still_alive():
    """A group's scores are divided by their L2 norm over the structures still alive: a huge score left on an
    entry pruned earlier must not shrink the group's live scores and make it lose everything next. Alive
    norms: g0 sqrt(3^2+4^2+5^2) = 7.07 -> 0.42, 0.57, 0.71; g1 sqrt(30) = 5.48 -> 0.18, 0.37, 0.55, 0.73. Ratio
    3/8 with one already pruned: two more go, g1's two weakest (by the norm over all of g0, 1000, g0 would
    lose two)."""
    scores = {"g0": torch.tensor([1000.0, 3.0, 4.0, 5.0]), "g1": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    current = {"g0": torch.tensor([0.0, 1.0, 1.0, 1.0]), "g1": torch.ones(4)}
    masks = select_masks(scores, current, ratio=0.375, scope="global", floor=1)
    assert masks["g0"].tolist() == [0, 1, 1, 1]
    assert masks["g1"].tolist() == [0, 0, 1, 1]


def test_global_respects_floor():
    scores = {"g0": torch.tensor([0.01, 0.011, 0.012, 10.0]), "g1": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    masks = select_masks(scores, ones(4, 4), ratio=0.75, scope="global", floor=2)
    # g0's three weak entries come first, but the floor stops at two pruned per group
    assert masks["g0"].tolist() == [0, 0, 1, 1]
    assert masks["g1"].tolist() == [0, 0, 1, 1]


def test_global_cost_budget():
    """Given costs, the ratio is a share of the cost: a dear structure that would overshoot the budget by more than
    half its cost is passed over for cheaper ones scored above it; counted, the same ratio prunes other ones."""
    scores = {"g0": torch.tensor([1.0, 2.0]), "g1": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    # normalised, the order is g1[0], g1[1], g0[0], g1[2], g1[3], g0[1]
    costs = {"g0": 10.0, "g1": 1.0}  # total 24; a quarter is 6
    masks = select_masks(scores, ones(2, 4), ratio=0.25, scope="global", floor=0, costs=costs)
    # g0[0] would bring the pruned cost from 2 to 12: all four g1 entries (4) come nearest to 6
    assert masks["g0"].tolist() == [1, 1] and masks["g1"].tolist() == [0, 0, 0, 0]
    counted = select_masks(scores, ones(2, 4), ratio=0.25, scope="global", floor=0)
    assert counted["g0"].tolist() == [1, 1] and counted["g1"].tolist() == [0, 0, 1, 1]  # 1.5 of 6 structures: 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="scope must be one of"):
        select_masks({"g0": torch.ones(2)}, ones(2), 0.5, scope="block")
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
        select_masks({"g0": torch.ones(2)}, ones(2), 1.5)
    with pytest.raises(KeyError, match="no scores"):
        select_masks({}, ones(2), 0.5)


def test_by_kind_prunes_each_kind_apart():
    groups = [G("h0", "heads"), G("n0", "ffn")]
    scores = {"h0": torch.tensor([3.0, 1.0, 2.0, 4.0]), "n0": torch.tensor([0.1, 0.4, 0.3, 0.2])}
    current = {"h0": torch.ones(4), "n0": torch.ones(4)}
    both = select_masks_by_kind(groups, scores, current, 0.5, floors={"heads": 1, "ffn": 1})
    assert both["h0"].tolist() == [1, 0, 0, 1] and both["n0"].tolist() == [0, 1, 1, 0]
    heads_only = select_masks_by_kind(groups, scores, current, 0.5, kinds=("heads",))
    assert set(heads_only) == {"h0"}


def test_floors_that_block_the_target_are_reported_with_the_reachable_maximum():
    groups = [G(f"h{i}", "heads") for i in range(2)] + [G("n0", "ffn")]
    sizes = {"h0": 4, "h1": 4, "n0": 10}
    floors = {"heads": 3, "ffn": 1}
    assert reachable_fraction({"h0": 4, "h1": 4}, 3) == 0.25
    assert unreachable_target(groups, sizes, 0.25, floors=floors) is None
    assert re.search(r"target 0.5 cannot be reached.*min_heads_per_layer=3.*at most 0.2500",
                     unreachable_target(groups, sizes, 0.5, floors=floors))
    # a floor above the head count: nothing can go
    assert "at most 0.0000" in unreachable_target(groups, sizes, 0.5, floors={"heads": 5})
    assert unreachable_target(groups, sizes, 0.5, kinds=("ffn",), floors=floors) is None  # heads not pruned
    # whole layers take what the floors keep: not unreachable (the stacks' limit is layer_target_problem's)
    assert unreachable_target(groups, sizes, 0.5, kinds=("heads", "ffn", "layers"), floors=floors) is None


def test_selected_fraction_is_what_the_masks_prune():
    groups = [G("h0", "heads"), G("h1", "heads"), G("n0", "ffn")]
    scores = {"h0": torch.arange(4.0), "h1": torch.arange(4.0), "n0": torch.arange(10.0)}
    current = {"h0": torch.ones(4), "h1": torch.ones(4), "n0": torch.ones(10)}
    new = select_masks_by_kind(groups, scores, current, 0.5, floors={"heads": 3, "ffn": 1})
    assert selected_fraction({n: new[n] for n in ("h0", "h1")}) == 0.25  # the floor kept 3 of 4 heads
    assert selected_fraction({"n0": new["n0"]}) == 0.5
    assert selected_fraction_by_kind(groups, new) == 0.25


def test_by_kind_refuses_unknown_kinds_and_a_multiple_a_group_cannot_hold():
    group = G("ffn", "ffn")
    scores, current = {"ffn": torch.rand(37, generator=torch.Generator().manual_seed(0))}, {"ffn": torch.ones(37)}
    with pytest.raises(ValueError, match=r"unknown kinds \['neurons'\]"):
        select_masks_by_kind([group], scores, current, 0.5, kinds=("neurons",))
    with pytest.raises(ValueError, match=r"unknown kinds \['head'\]"):
        select_masks_by_kind([group], scores, current, 0.5, floors={"head": 3})
    # a width under the multiple was emptied, whatever the floors said
    with pytest.raises(ValueError, match="fewer than the 64 a multiple of 64 needs"):
        select_masks_by_kind([group], scores, current, 0.1, kinds="ffn", floors={"ffn": 8}, multiple_of=64)
    kept = select_masks_by_kind([group], scores, current, 0.5, kinds="ffn")  # one kind as a string
    assert int(kept["ffn"].sum()) in (18, 19)


def test_the_readme_engine_snippet_prunes_heads_and_neurons(tmp_path, monkeypatch):
    from conftest import ROOT, text_batch, tiny_model

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The engine on its own"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python"))]
    model = tiny_model("bert")
    batch = {**text_batch(), "labels": torch.tensor([0, 1, 1])}
    monkeypatch.chdir(tmp_path)
    exec(code, {"model": model, "batches": [batch] * 3, "tokenizer": None})
    from hf_adaprune.layout import read_record

    groups = read_record(model.config)["groups"].values()
    for kind in ("heads", "ffn"):  # each kind loses 40% of its structures (in one ranking, neurons lost them all)
        kept = sum(len(g["kept"]) for g in groups if g["kind"] == kind)
        assert kept / sum(g["original"] for g in groups if g["kind"] == kind) == pytest.approx(0.6, abs=0.05)
    assert (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("ratio, pruned", [(1e-6, 0), (0.3, 2), (0.4, 3), (0.45, 4), (0.5, 4)])
def test_global_without_costs_prunes_the_count_nearest_the_ratio(ratio, pruned):
    # 8 heads in two groups: ratio * 8 rounds to the nearest whole head, as with costs and as scope="layer"
    scores = {"g0": torch.tensor([1.0, 2.0, 3.0, 4.0]), "g1": torch.tensor([1.5, 2.5, 3.5, 4.5])}
    for costs in (None, {"g0": 5.0, "g1": 5.0}):
        masks = select_masks(scores, ones(4, 4), ratio=ratio, scope="global", floor=0, costs=costs)
        assert sum(int((m == 0).sum()) for m in masks.values()) == pruned, costs
    assert int((select_masks({"g0": torch.arange(8.0)}, ones(8), ratio=ratio)["g0"] == 0).sum()) == pruned


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_scores_that_are_not_finite_are_refused_naming_the_group(bad, scope):
    scores = {"g0": torch.tensor([1.0, 2.0, 3.0, 4.0]), "g1": torch.tensor([1.0, bad, 3.0, 4.0])}
    with pytest.raises(ValueError, match=r"NaN or infinite for groups \['g1'\]"):
        select_masks(scores, ones(4, 4), ratio=0.5, scope=scope)
    groups = [G("g0", "heads"), G("g1", "ffn")]
    with pytest.raises(ValueError, match=r"NaN or infinite for groups \['g1'\]"):
        select_masks_by_kind(groups, scores, ones(4, 4), 0.5, scope=scope)
    select_masks_by_kind(groups, scores, ones(4, 4), 0.5, kinds="heads", scope=scope)  # g1 is not selected


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_scores_not_shaped_like_the_groups_mask_are_refused_naming_the_group(scope):
    """(n, 1) scores (a keepdim=True reduction) pruned one structure per group instead of half; a wrong length gave
    torch's IndexError naming no group."""
    good = {"g0": torch.tensor([0.1, 0.2, 0.3, 0.4]), "g1": torch.arange(6.0)}
    groups = [G("g0", "heads"), G("g1", "ffn")]
    for name, bad, shape in (("g0", good["g0"][:, None], r"\(4, 1\)"), ("g1", good["g1"][:, None], r"\(6, 1\)"),
                             ("g0", torch.rand(3), r"\(3,\)")):
        scores = {**good, name: bad}
        n = good[name].numel()
        message = rf"scores for '{name}' have shape {shape}, but the group has {n} structures .*one score per"
        with pytest.raises(ValueError, match=message):
            select_masks(scores, ones(4, 6), 0.5, scope=scope)
        with pytest.raises(ValueError, match=message):
            select_masks_by_kind(groups, scores, ones(4, 6), 0.5, scope=scope)
    assert [int(m.sum()) for m in select_masks(good, ones(4, 6), 0.5, scope=scope).values()] == [2, 3]


def test_by_kind_names_the_groups_without_scores_before_selecting():
    # e.g. update() never counted a step: the scores lack groups the masks have
    groups = [G("h0", "heads"), G("h1", "heads"), G("n0", "ffn")]
    scores = {"h0": torch.ones(4), "n0": torch.ones(4)}
    with pytest.raises(KeyError, match=r"no scores for groups \['h1'\]: did update\(\) count any step"):
        select_masks_by_kind(groups, scores, {g.name: torch.ones(4) for g in groups}, 0.5, scope="global")


def test_global_selection_ranks_raw_scores_when_not_normalised():
    scores = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([10.0, 20.0])}
    current = {name: torch.ones(2) for name in scores}
    normalised = select_masks(scores, current, 0.5, scope="global", floor=0)
    raw = select_masks(scores, current, 0.5, scope="global", floor=0, normalize=False)
    assert normalised["a"].tolist() == [0.0, 1.0] and normalised["b"].tolist() == [0.0, 1.0]  # each layer's lowest
    assert raw["a"].tolist() == [0.0, 0.0] and raw["b"].tolist() == [1.0, 1.0]  # the two lowest overall


def _stack_with_heads(name, layers, layer_cost, head_costs, heads=4):
    """A layer stack ``name`` of ``layers`` layers and one attention of ``heads`` heads in each, with the costs of a
    cost table: ``layer_cost`` per layer, ``head_costs[i]`` per head of layer i."""
    stack = G(name, "layers")
    attentions = [G(f"{name}.{i}.attention", "heads") for i in range(layers)]
    sizes = {name: layers, **{g.name: heads for g in attentions}}
    costs = {name: layer_cost, **{g.name: head_costs[i] for i, g in enumerate(attentions)}}
    return [stack, *attentions], sizes, costs


def _limit(message):
    return float(re.search(r"so about (\d\.\d+) can go", message).group(1))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_the_layers_and_widths_limit_counts_whole_layers(scope):
    """heads,layers on 3 layers of cost 10, 4 heads of cost 2 in each (the floor keeps one: 6 of a layer's 10 can
    go). The selection removes whole layers: 1 at 0.74 (its share 1 - sqrt(0.26) = 0.49 of 3 layers rounds to 1),
    so at most (10 + 2 * 6) / 30 = 0.7333 goes; 2 at 0.85, and then (20 + 6) / 30 = 0.8667. Counted as a share
    (the layers 0.49 of the cost and the heads 0.6 of the rest), the warning said 0.796 and 0.845: silent at 0.74,
    which the selection cannot reach, and warning at 0.85, which it reaches."""
    from hf_adaprune.engine.selection import prunable_cost_fraction

    groups, sizes, costs = _stack_with_heads("enc", 3, 10.0, [2.0, 2.0, 2.0])
    kinds, floors = ("heads", "layers"), {"heads": 1, "layers": 1}
    given = {} if scope == "global" else {"scope": scope}  # global: the trainer's default, and unreachable_target's
    message = unreachable_target(groups, sizes, 0.74, kinds, floors, costs, **given)
    assert message.startswith("pruning target 0.74 cannot be reached with --prune heads,layers: the layers take "
                              "0.3333 of the layer cost (1 of 3 layers, removed whole), and the heads left in the "
                              "others, at their floors, about 0.4000 more, so about 0.7333 can go")
    assert message.endswith("lower the target to <= 0.7333.")
    assert unreachable_target(groups, sizes, 0.85, kinds, floors, costs, **given) is None
    torch.manual_seed(0)
    for target, reached in ((0.74, 0.7333), (0.85, 0.85)):  # what the selection itself reaches from random scores
        scores = {g.name: torch.rand(sizes[g.name]) for g in groups}
        new = select_masks_by_kind(groups, scores, {n: torch.ones(k) for n, k in sizes.items()}, target, kinds,
                                   scope=scope, floors=floors, costs=costs)
        assert int(new["enc"].sum()) == (2 if target < 0.8 else 1)
        assert prunable_cost_fraction(groups, new, costs) == pytest.approx(reached, abs=0.034)  # half a head


def test_the_layers_and_widths_limit_is_the_most_any_choice_of_layers_reaches():
    """Which layer goes is the scores' choice; with widths that cost differently from layer to layer (a latency
    table) the limit is the most a selection can reach: the layer with the least to give removed. Random scores
    reach it and never more; the warning fires above it and not at it."""
    from hf_adaprune.engine.selection import prunable_cost_fraction

    groups, sizes, costs = _stack_with_heads("enc", 3, 10.0, [1.0, 2.5, 1.5])
    kinds, floors = ("heads", "layers"), {"heads": 1, "layers": 1}
    limit = _limit(unreachable_target(groups, sizes, 0.74, kinds, floors, costs))
    assert limit == pytest.approx((10 + 3 * 2.5 + 3 * 1.5) / 30, abs=1e-4)  # layer 0 (3 of its heads: 3) removed
    reached = []
    for seed in range(30):
        torch.manual_seed(seed)
        scores = {g.name: torch.rand(sizes[g.name]) for g in groups}
        new = select_masks_by_kind(groups, scores, {n: torch.ones(k) for n, k in sizes.items()}, 0.74, kinds,
                                   floors=floors, costs=costs)
        reached.append(prunable_cost_fraction(groups, new, costs))
    assert max(reached) == pytest.approx(limit, abs=1e-4) and min(reached) < limit - 0.01
    assert unreachable_target(groups, sizes, round(limit, 4) - 1e-4, kinds, floors, costs) is None


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_the_layers_and_widths_limit_follows_the_scope_over_stacks(scope):
    """Two stacks of 3 layers, 4 heads of cost 0.5 in each layer of cost 10. At 0.36 layers take 1 - sqrt(0.64) =
    0.2 of their cost: under scope="layer" each stack rounds 0.6 layers to one (two go: 20 + 4 * 1.5 = 26 of 60,
    0.4333, within reach), the global budget of 1.2 layers takes one (10 + 5 * 1.5 = 17.5 of 60, 0.2917, out of
    reach). The warning counts what the selection in that scope removes."""
    from hf_adaprune.engine.selection import prunable_cost_fraction

    enc, enc_sizes, enc_costs = _stack_with_heads("enc", 3, 10.0, [0.5] * 3)
    dec, dec_sizes, dec_costs = _stack_with_heads("dec", 3, 10.0, [0.5] * 3)
    groups, sizes, costs = enc + dec, {**enc_sizes, **dec_sizes}, {**enc_costs, **dec_costs}
    kinds, floors = ("heads", "layers"), {"heads": 1, "layers": 1}
    message = unreachable_target(groups, sizes, 0.36, kinds, floors, costs, scope=scope)
    torch.manual_seed(0)
    scores = {g.name: torch.rand(sizes[g.name]) for g in groups}
    new = select_masks_by_kind(groups, scores, {n: torch.ones(k) for n, k in sizes.items()}, 0.36, kinds,
                               scope=scope, floors=floors, costs=costs)
    removed, reached = 6 - int(new["enc"].sum() + new["dec"].sum()), prunable_cost_fraction(groups, new, costs)
    if scope == "layer":
        assert message is None and removed == 2 and reached == pytest.approx(0.36, abs=0.0126)  # half a head
    else:
        assert "(1 of 6 layers, removed whole)" in message and _limit(message) == pytest.approx(17.5 / 60, abs=1e-4)
        assert removed == 1 and reached == pytest.approx(17.5 / 60)


def test_a_stack_of_uneven_layers_keeps_its_cheapest_layer_in_the_layer_limit():
    """A model pruned before has layers of other costs (2, 10, 18: average 10). With every layer but one removable,
    the most that can go keeps the cheapest layer, 28 / 30; the stack's average layer said 2 / 3 and refused 0.9,
    which a selection reaches. A stack that keeps its last layer (Whisper's decoder) keeps that one instead."""
    from hf_adaprune.engine.selection import layer_target_problem

    stack, sizes = G("enc", "layers"), {"enc": 3}
    costs = {"enc": 10.0, "enc.0": 2.0, "enc.1": 10.0, "enc.2": 18.0}
    assert layer_target_problem([stack], sizes, 0.9, ("layers",), costs) is None
    new = select_masks_by_kind([stack], {"enc": torch.tensor([3.0, 1.0, 2.0])}, {"enc": torch.ones(3)}, 0.9,
                               ("layers",), costs=costs)
    assert new["enc"].tolist() == [1, 0, 0] and selected_fraction(new, costs) == pytest.approx(28 / 30)
    assert "so at most 0.9333 can go" in layer_target_problem([stack], sizes, 0.95, ("layers",), costs)
    stack.keep_last = "the decoder's last layer stays"
    assert "so at most 0.4000 can go" in layer_target_problem([stack], sizes, 0.5, ("layers",), costs)
    assert reachable_fraction(sizes, 1, costs, keep_last={"enc"}) == pytest.approx(12 / 30)


def test_the_layers_and_widths_limit_counts_each_removed_layer_at_its_own_cost():
    """Layers of costs 4, 10 and 16 (a stack's average, 10, in the table beside them) with 4 heads each of cost 0.5,
    2 and 3. Under scope="layer" 0.93 removes 2 of the 3 layers; the most is with layers 2 and 1 gone (they give
    16 - 9 and 10 - 6 more than their heads could) and layer 0's heads at the floor: 27.5 / 30. Counted at the
    average, the warning said 0.9667 (layers 0 and 1, whose heads have least to give) and stayed silent."""
    from hf_adaprune.engine.selection import prunable_cost_fraction

    groups, sizes, costs = _stack_with_heads("enc", 3, 10.0, [0.5, 2.0, 3.0])
    costs.update({"enc.0": 4.0, "enc.1": 10.0, "enc.2": 16.0})
    kinds, floors = ("heads", "layers"), {"heads": 1, "layers": 1}
    message = unreachable_target(groups, sizes, 0.93, kinds, floors, costs, scope="layer")
    assert "the layers take 0.8667 of the layer cost (2 of 3 layers, removed whole)" in message
    assert _limit(message) == pytest.approx(27.5 / 30, abs=1e-4)
    reached = []
    for seed in range(40):  # random scores reach the limit and never more
        torch.manual_seed(seed)
        scores = {g.name: torch.rand(sizes[g.name]) for g in groups}
        new = select_masks_by_kind(groups, scores, {n: torch.ones(k) for n, k in sizes.items()}, 0.93, kinds,
                                   scope="layer", floors=floors, costs=costs)
        reached.append(prunable_cost_fraction(groups, new, costs))
    assert max(reached) == pytest.approx(27.5 / 30)
