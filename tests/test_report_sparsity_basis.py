"""What the reached sparsity is a fraction of, on the model card and under the recipes' table: with whole layers and
widths under a flops or latency target it is the fraction of the prunable cost, removed layers counted whole, not
any one kind's (the card and the table called it "of the least pruned kind")."""

from __future__ import annotations

import pytest
import torch
from conftest import load_recipe

from hf_adaprune.engine.selection import prunable_cost_fraction, selected_fraction, selected_fraction_by_kind
from hf_adaprune.reporting.report import model_card
from hf_adaprune.reporting.summary import PruningSummary

BASES = [
    ("heads,ffn", "flops", "of the least pruned kind"),
    ("ffn", "latency", "of the least pruned kind"),
    ("heads,ffn", "structures", "of the least pruned kind"),
    ("heads,ffn,layers", "flops", "of the prunable FLOPs, removed layers counted whole"),
    ("heads,ffn,layers", "latency", "of the prunable time in the latency table, removed layers counted whole"),
    ("ffn,layers", "latency", "of the prunable time in the latency table, removed layers counted whole"),
    ("heads,layers", "flops", "of the prunable FLOPs, removed layers counted whole"),
    ("heads,ffn,layers", "structures",
     "of the least pruned of heads and FFN neurons, those of removed layers counted as pruned"),
    ("heads,layers", "structures", "of the heads, those of removed layers counted as pruned"),
    ("layers", "flops", "of the layers' FLOPs"),
    ("layers", "latency", "of the layers' time in the latency table"),
    ("layers", "structures", "of the layers"),
]


def _summary(structures, target_type, **extra):
    values = dict(base_model="org/bert", dataset=None, model_name="m", criterion="taylor", metric_name="accuracy",
                  metric_key="eval_accuracy", greater_is_better=True, metric_before=0.8, metric_after=0.79,
                  tolerance=0.05, tolerance_type="absolute", target=0.5, target_type=target_type,
                  final_sparsity=0.501, stop_reason="target reached", structures=structures,
                  groups={"encoder.layer.0.attention": {"kind": "heads", "original": 4, "kept": 2}})
    return PruningSummary(**{**values, **extra})


@pytest.mark.parametrize("structures, target_type, basis", BASES)
def test_the_card_says_what_the_reached_sparsity_is_a_fraction_of(structures, target_type, basis):
    card = model_card(_summary(structures, target_type)).text
    assert (f"Target: 0.5 of the {target_type}; reached sparsity 0.501 ({basis}) (stopped: target reached)."
            in card)
    if "layers" in structures:
        assert "least pruned kind" not in card


@pytest.mark.parametrize("structures, target_type, basis", BASES)
def test_the_recipe_table_says_what_the_reached_sparsity_is_a_fraction_of(structures, target_type, basis):
    results_module = load_recipe("results")
    summary = _summary(structures, target_type)
    record = results_module.pruning_record(summary)
    assert record["structures"] == structures  # results.json keeps what was pruned
    results = {"test": None, "validation": {"metric": "accuracy", "samples": 4, "dense_reference": 0.5,
                                            "pruned_final": 0.5, "tolerance": 0.01, "tolerance_type": "absolute"},
               "comparison": None, "latency": None, "dense_control": None, "train": {"global_step": 6},
               "pruning": record}
    table = results_module.results_table(results, lambda name, value: "" if value is None else f"{value:.2f}")
    assert f"sparsity 0.501 of {target_type} ({basis}; target 0.5), stopped: target reached" in table
    if "layers" in structures:
        assert "least pruned kind" not in table


def test_the_recipe_table_of_a_post_training_run_names_the_layer_flops():
    """--post_training records the layer FLOPs the compacted model lost as its sparsity, no kind's fraction."""
    results_module = load_recipe("results")
    results = {"mode": "post_training", "test": None, "comparison": None, "latency": None, "dense_control": None,
               "validation": {"metric": "accuracy", "samples": 4, "dense_reference": 0.5, "pruned_final": 0.5,
                              "tolerance": 0.01, "tolerance_type": "absolute"}, "train": None,
               "pruning": {"criterion": "taylor", "target": 0.5, "target_type": "flops", "final_sparsity": 0.48,
                           "stop_reason": "post-training, no optimizer step (target)", "start_pruned": False}}
    table = results_module.results_table(results, lambda name, value: "" if value is None else f"{value:.2f}")
    assert "sparsity 0.480 of flops (the layer FLOPs removed; target 0.5)" in table


class G:
    def __init__(self, name, kind):
        self.name, self.kind = name, kind


def test_the_words_match_the_figure_the_selection_reports():
    """heads,ffn,layers on 3 layers, one removed, 2 of 4 heads and 2 of 4 neurons left in the others: under a cost
    target the figure is the fraction of the prunable cost with the removed layer whole (no kind's: the heads lose
    0.67 of theirs, the neurons 0.58, the layers 0.33); under structures, the least pruned width kind's count, the
    heads and neurons of the removed layer among the pruned."""
    stack = G("enc", "layers")
    heads = [G(f"enc.{i}.attention", "heads") for i in range(3)]
    ffns = [G(f"enc.{i}.ffn", "ffn") for i in range(3)]
    groups = [stack, *heads, *ffns]
    masks = {"enc": torch.tensor([1.0, 1.0, 0.0]),
             **{g.name: torch.tensor([1.0, 1.0, 0.0, 0.0]) if i < 2 else torch.zeros(4) for i, g in enumerate(heads)},
             **{g.name: torch.tensor([1.0, 0.0, 0.0, 1.0]) if i < 2 else torch.zeros(4) for i, g in enumerate(ffns)}}
    masks["enc.1.ffn"] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    costs = {"enc": 20.0, **{g.name: 2.0 for g in heads}, **{g.name: 1.0 for g in ffns}}
    kinds = ("heads", "ffn", "layers")
    figure = selected_fraction_by_kind(groups, masks, kinds, costs)
    # prunable cost 60; removed: the layer (20), 2 + 2 heads (8) and 2 + 1 neurons (3)
    assert figure == pytest.approx(31 / 60) == prunable_cost_fraction(groups, masks, costs)
    per_kind = [selected_fraction({g.name: masks[g.name] for g in kind}, costs) for kind in (heads, ffns, [stack])]
    assert min(per_kind) == pytest.approx(1 / 3) and figure not in per_kind  # no kind's, least pruned or other
    # structures (no costs): the least pruned width kind, counting the removed layer's heads and neurons
    assert selected_fraction_by_kind(groups, masks, kinds) == pytest.approx(7 / 12)  # neurons: 2 + 1 + 4 of 12
