"""benchmarks/deploy.py: accuracy changes counted row by row against the model a variant was made from."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_script


def load_deploy():
    return load_script("benchmarks", "deploy")


def test_paired_change_matches_a_hand_count():
    new = [True, True, False, True, False, True]
    old = [True, False, True, False, False, True]  # new gains rows 1 and 3, loses row 2
    change = load_deploy().paired_change(new, old)
    d = [0, 1, -1, 1, 0, 0]
    mean = sum(d) / 6
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 5 / 6)  # sample standard deviation / sqrt(n)
    assert (change["rows"], change["gained"], change["lost"]) == (6, 2, 1)
    assert change["change_pt"] == pytest.approx(100 / 6)
    assert change["standard_error_pt"] == pytest.approx(100 * se, rel=1e-12)


def test_paired_change_refuses_rows_that_do_not_pair():
    with pytest.raises(ValueError, match="paired rows differ in number: 2 vs 3"):
        load_deploy().paired_change([True, False], [True, False, True])


class Threshold(torch.nn.Module):
    """Predicts class 1 when a row's first id is odd: a model whose right and wrong rows are known."""

    def forward(self, input_ids, attention_mask=None):
        odd = (input_ids[:, 0] % 2).float()
        return type("Output", (), {"logits": torch.stack([1 - odd, odd], dim=-1)})()


def test_correct_rows_keeps_the_dataset_order_whatever_the_batching():
    rows = [{"input_ids": [3] * length, "labels": label} for length, label in ((5, 1), (1, 0), (3, 1), (2, 1))]
    rows[3]["input_ids"] = [4, 4]  # even first id: predicted 0, labelled 1

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        return {"input_ids": torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in batch]),
                "labels": torch.tensor([r["labels"] for r in batch])}

    for batch_size in (1, 3, 8):
        assert load_deploy().correct_rows(Threshold(), rows, collate, batch_size=batch_size) == [True, False, True,
                                                                                                  False]


def test_factoring_rank_names_a_vocabulary_smaller_than_the_whole_rows_asked_for():
    """A small --vocab_samples keeps fewer tokens than --factor_full_rows: the message blamed the parameter budget."""
    import transformers

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    model = transformers.BertModel(config)
    with pytest.raises(SystemExit, match="--factor_full_rows 60: the pruned vocabulary holds 50 tokens"):
        load_deploy().factoring_rank(model, 10**6, 60, 0.4)
    assert load_deploy().factoring_rank(model, 10**6, 10, 0.4) >= 1
