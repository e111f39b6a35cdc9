"""benchmarks/latency_target.py: the cost table's noise is summed over the pruning groups, as selection reads it."""

from __future__ import annotations

import torch
import transformers
from conftest import load_script


def test_table_noise_totals_each_structure_once():
    """latency_costs also charges every layer of a stack its own cost under the layer's path: table_noise looked
    those keys up among the groups and failed (KeyError) after both training runs, writing nothing."""
    script = load_script("benchmarks", "latency_target")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=160, num_labels=2)
    model = transformers.BertForSequenceClassification(config).eval()
    groups = script.pruning_groups(model)
    noise = script.table_noise(model, groups, 2)
    assert len(noise["totals_ms"]) == 2 and all(total > 0 for total in noise["totals_ms"])
    assert set(noise["structure_cost_ms"]) == {"HeadGroup", "NeuronGroup", "LayerGroup"}
    assert noise["total_spread"] >= 0 and noise["group_spread_max"] >= noise["group_spread_median"] >= 0
    assert noise["structure_cost_ms"]["LayerGroup"] > noise["structure_cost_ms"]["HeadGroup"] > 0
