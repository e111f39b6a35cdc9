"""Score accumulation over steps: running mean, exponential moving average (``pruning_score_ema``), Fisher."""

from __future__ import annotations

import pytest
import torch

from hf_adaprune import TaylorImportance, find_groups, make_importance

from conftest import random_biases, tiny_model
from test_importance import brute_force_taylor, loss_backward
from test_trainer import make_args, make_trainer


def per_step_scores(model, groups, seeds, square=False):
    """Each step's brute-force |sum(grad * weight)| (or its square), normalised over all structures."""
    steps = []
    for seed in seeds:
        loss_backward(model, seed=seed)
        raw = {g.name: brute_force_taylor(model, g) ** (2 if square else 1) for g in groups}
        total = sum(float(v.sum()) for v in raw.values())
        steps.append({name: value / total for name, value in raw.items()})
    return steps


def accumulate(importance, model, groups, seeds):
    for seed in seeds:
        loss_backward(model, seed=seed)
        assert importance.update(model, groups)
    return importance.scores(model, groups)


@pytest.mark.parametrize("name, square", [("taylor", False), ("fisher", True)])
def test_moving_average_weighs_recent_steps_by_the_factor(name, square):
    # no dropout: the same gradients twice; random biases: the biases a structure owns count too
    model = random_biases(tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
    groups = find_groups(model)
    seeds = [1, 2, 3]
    steps = per_step_scores(model, groups, seeds, square)
    ema = accumulate(make_importance(name, ema=0.6), model, groups, seeds)
    mean = accumulate(make_importance(name), model, groups, seeds)
    for g in groups:
        s1, s2, s3 = (step[g.name] for step in steps)
        expected_ema = 0.6 * (0.6 * s1 + 0.4 * s2) + 0.4 * s3  # starts at the first step's scores
        torch.testing.assert_close(ema[g.name].double(), expected_ema, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(mean[g.name].double(), (s1 + s2 + s3) / 3, rtol=1e-4, atol=1e-9)
    assert any(not torch.allclose(ema[g.name], mean[g.name]) for g in groups), "the two averages differ"


def test_fisher_ranks_by_the_squared_taylor_value():
    # no dropout: the same gradients twice; random biases: the biases a structure owns count too
    model = random_biases(tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
    groups = find_groups(model)
    loss_backward(model)
    taylor, fisher = TaylorImportance(), make_importance("fisher")
    taylor.update(model, groups), fisher.update(model, groups)
    t, f = taylor.scores(model, groups), fisher.scores(model, groups)
    total = sum(float((v ** 2).sum()) for v in t.values())
    for g in groups:
        torch.testing.assert_close(f[g.name], t[g.name] ** 2 / total, rtol=1e-4, atol=1e-12)


def test_trainer_passes_the_moving_average_factor(tmp_path):
    trainer = make_trainer(tmp_path, pruning_criterion="fisher", pruning_score_ema=0.85, max_steps=1)
    assert trainer.importance.name == "fisher" and trainer.importance.ema == 0.85
    assert make_trainer(tmp_path, max_steps=1).importance.ema == 0.0


@pytest.mark.parametrize("overrides, message", [
    (dict(pruning_score_ema=1.0), r"--pruning_score_ema must be in \[0, 1\)"),
    (dict(pruning_score_ema=-0.1), r"--pruning_score_ema must be in \[0, 1\)"),
    (dict(pruning_score_ema=0.9, pruning_criterion="magnitude"), "computes them from the weights at once"),
])
def test_bad_moving_average_fails_when_parsed(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)
