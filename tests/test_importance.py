"""Importance scores against a brute-force element-by-element computation."""

from __future__ import annotations

import pytest
import torch

from hf_adaprune import MagnitudeImportance, TaylorImportance, find_groups, make_importance
from hf_adaprune.families import HeadGroup

from conftest import random_biases, text_batch, tiny_model


def loss_backward(model, seed=1):
    model.zero_grad()
    batch = text_batch(seed=seed)
    labels = torch.tensor([0, 1, 2])
    model(**batch, labels=labels).loss.backward()


def brute_force_taylor(model, group):
    """Sum grad*weight element by element over the entries a structure owns, then |.|."""
    base = model.base_model
    if isinstance(group, HeadGroup):
        d = group.head_dim
        n = base.get_submodule(group.query).out_features // d
        owned = lambda h: [(p, slice(h * d, (h + 1) * d), "rows") for p in group.row_linears] + [
            (group.output, slice(h * d, (h + 1) * d), "cols")
        ]
    else:
        n = base.get_submodule(group.inputs[0]).out_features
        owned = lambda j: [(p, slice(j, j + 1), "rows") for p in group.inputs] + [(group.output, slice(j, j + 1), "cols")]
    scores = []
    for s in range(n):
        total = 0.0
        for path, sl, axis in owned(s):
            lin = base.get_submodule(path)
            w, g = lin.weight.detach().double(), lin.weight.grad.double()
            if axis == "rows":
                total += float((w[sl] * g[sl]).sum())
                if lin.bias is not None:
                    total += float((lin.bias.detach().double()[sl] * lin.bias.grad.double()[sl]).sum())
            else:
                total += float((w[:, sl] * g[:, sl]).sum())
        scores.append(abs(total))
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_taylor_equals_brute_force(model_type):
    model = random_biases(tiny_model(model_type)).train()  # the Q/K/V and FFN-input biases count too
    groups = find_groups(model)
    loss_backward(model)
    importance = TaylorImportance()
    assert importance.update(model, groups)
    scores = importance.scores(model, groups)
    expected = {group.name: brute_force_taylor(model, group) for group in groups}
    total = sum(float(v.sum()) for v in expected.values())  # each step's scores are normalised to sum to 1
    for group in groups:
        torch.testing.assert_close(scores[group.name].double(), expected[group.name] / total, rtol=1e-4, atol=1e-9)


def test_taylor_is_mean_of_normalised_per_batch_absolute_values():
    model = random_biases(tiny_model("bert")).train()
    groups = find_groups(model)
    importance = TaylorImportance()
    per_batch = []
    for seed in (1, 2, 3):
        loss_backward(model, seed)
        importance.update(model, groups)
        raw = {g.name: brute_force_taylor(model, g) for g in groups}
        total = sum(float(v.sum()) for v in raw.values())
        per_batch.append({name: value / total for name, value in raw.items()})
    for group in groups:
        expected = torch.stack([b[group.name] for b in per_batch]).mean(0)
        torch.testing.assert_close(importance.scores(model, groups)[group.name].double(), expected, rtol=1e-4, atol=1e-9)
    assert importance.num_updates == 3


def test_taylor_skips_when_no_gradient():
    model = tiny_model("bert")
    model.zero_grad(set_to_none=True)
    importance = TaylorImportance()
    assert importance.update(model, find_groups(model)) is False
    assert importance.scores(model, find_groups(model)) == {}


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_taylor_skips_a_step_whose_gradients_overflowed(bad):
    # fp16 loss scaling overflows now and then (the optimizer skips that step); the scores must skip it too
    model = tiny_model("bert").train()
    groups = find_groups(model)
    importance = TaylorImportance()
    loss_backward(model, 1)
    assert importance.update(model, groups)
    before = importance.scores(model, groups)
    loss_backward(model, 2)
    model.bert.encoder.layer[0].attention.output.dense.weight.grad[0, 0] = bad
    assert importance.update(model, groups) is False and importance.num_updates == 1
    after = importance.scores(model, groups)
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_magnitude_scores_sum_of_absolute_weights():
    model = random_biases(tiny_model("bert"))  # the head's Q/K/V biases count too
    groups = find_groups(model)
    scores = MagnitudeImportance().scores(model, groups)
    attn = model.bert.encoder.layer[0].attention
    torch.set_grad_enabled(False)
    d = 8
    head1 = sum(
        float(lin.weight[d:2 * d].abs().sum() + lin.bias[d:2 * d].abs().sum())
        for lin in (attn.self.query, attn.self.key, attn.self.value)
    ) + float(attn.output.dense.weight[:, d:2 * d].abs().sum())
    torch.set_grad_enabled(True)
    assert scores["encoder.layer.0.attention"][1].item() == pytest.approx(head1, rel=1e-5)


def test_state_dict_round_trip():
    model = tiny_model("bert").train()
    groups = find_groups(model)
    a = TaylorImportance()
    loss_backward(model)
    a.update(model, groups)
    b = TaylorImportance()
    b.load_state_dict(a.state_dict())
    assert b.num_updates == 1
    assert set(a.scores(model, groups)) == {g.name for g in groups}
    for name, value in a.scores(model, groups).items():
        assert torch.equal(b.scores(model, groups)[name], value)


def test_unknown_criterion():
    with pytest.raises(ValueError, match="unknown importance criterion 'hessian'"):
        make_importance("hessian")


def test_a_criterion_is_one_class():
    """A subclass with a name is a --pruning_criterion value, scored through the same interface as the others."""
    from hf_adaprune.engine.importance import IMPORTANCE_CRITERIA, Importance

    class FirstWeightImportance(Importance):
        name = "test-first-weight"

        def scores(self, model, groups):
            return {g.name: MagnitudeImportance().scores(model, [g])[g.name] * 0 + 1 for g in groups}

    try:
        model = tiny_model("bert")
        groups = find_groups(model)
        criterion = make_importance("test-first-weight")
        assert isinstance(criterion, FirstWeightImportance) and not criterion.needs_gradients
        assert criterion.update(model, groups) and criterion.num_updates == 1
        assert {name: v.tolist() for name, v in criterion.scores(model, groups).items()} == {
            g.name: [1.0] * (4 if g.kind == "heads" else 37) for g in groups}
        assert TaylorImportance.needs_gradients and not MagnitudeImportance.needs_gradients
        for name in ("taylor", "magnitude", "random"):  # one interface: every criterion scores given groups
            other = make_importance(name)
            if other.needs_gradients:  # no step seen yet: nothing to rank by; then the step's gradients
                assert other.scores(model, groups[:2]) == {}
                loss_backward(model)
                assert other.update(model, groups[:2])
            scores = other.scores(model, groups[:2])
            assert {n: tuple(v.shape) for n, v in scores.items()} == {g.name: (4,) if g.kind == "heads" else (37,)
                                                                       for g in groups[:2]}, name
    finally:
        IMPORTANCE_CRITERIA.pop("test-first-weight", None)


def test_layer_groups_without_their_gates_say_what_to_attach():
    from hf_adaprune import attach_masks
    from hf_adaprune.families import find_layer_groups

    model = tiny_model("bert").train()
    loss_backward(model)
    with pytest.raises(ValueError, match=r"attach_masks\(model, layers=True\)"):
        TaylorImportance().update(model, find_layer_groups(model))  # no masks at all
    attach_masks(model)
    with pytest.raises(ValueError, match=r"attach_masks\(model, layers=True\)"):
        TaylorImportance().update(model, find_layer_groups(model))  # masks without layer gates


def test_layers_and_widths_are_normalised_each_among_their_own():
    """A layer's |dL/dg| is on another scale than one head's |sum(grad * weight)|: each step the layer scores are
    divided by their own sum and the head and neuron scores by theirs (the module docstring), so after one step
    each set sums to 1 and each score is its raw value over its own set's total (rtol 1e-4: float32 sums against
    float64 brute force; a single total would leave each set summing to less than 1)."""
    from hf_adaprune import attach_masks

    model = random_biases(tiny_model("bert")).train()
    masks = attach_masks(model, layers=True)
    groups = list(masks.groups.values())
    layers = [g for g in groups if g.kind == "layers"]
    widths = [g for g in groups if g.kind != "layers"]
    assert [g.name for g in layers] == ["encoder.layer"] and {g.kind for g in widths} == {"heads", "ffn"}
    loss_backward(model)
    raw_layers = masks.layer_taylor["encoder.layer"].double().abs()
    raw_widths = {g.name: brute_force_taylor(model, g) for g in widths}
    importance = TaylorImportance()
    assert importance.update(model, groups)
    scores = importance.scores(model, groups)
    torch.testing.assert_close(scores["encoder.layer"].double(), raw_layers / raw_layers.sum(), rtol=1e-4, atol=1e-9)
    width_total = sum(float(v.sum()) for v in raw_widths.values())
    for group in widths:
        torch.testing.assert_close(scores[group.name].double(), raw_widths[group.name] / width_total,
                                   rtol=1e-4, atol=1e-9)
    assert float(scores["encoder.layer"].sum()) == pytest.approx(1.0, abs=1e-5)
    assert sum(float(scores[g.name].sum()) for g in widths) == pytest.approx(1.0, abs=1e-5)


def test_frozen_groups_are_refused_by_update_naming_them():
    # one frozen layer used to make every step count for no group at all, silently
    model = tiny_model("bert").train()
    model.bert.encoder.layer[0].requires_grad_(False)
    groups = find_groups(model)
    loss_backward(model)
    with pytest.raises(ValueError, match=r"2 of the 6 groups given to TaylorImportance\.update have parameters that "
                                         r"do not require gradients \(encoder\.layer\.0\.attention, "
                                         r"encoder\.layer\.0\.ffn\).*requires_grad_\(True\)"):
        TaylorImportance().update(model, groups)
    unfrozen = [g for g in groups if not g.name.startswith("encoder.layer.0.")]
    importance = TaylorImportance()
    assert importance.update(model, unfrozen) and sorted(importance.scores(model, unfrozen)) == sorted(
        g.name for g in unfrozen)


def test_half_precision_products_are_formed_in_float32():
    # fp16 grad * weight flushes small products to zero before the per-structure sums see them
    from hf_adaprune.engine.importance import _grad_times_weight, structure_sums

    model = tiny_model("bert").half().train()
    batch = text_batch()
    (model(**batch, labels=torch.tensor([0, 1, 2])).loss * 1e-3).backward()  # small gradients, as late in training
    base = model.base_model
    for group in find_groups(model):
        reference = structure_sums(base, group, lambda p: p.grad.double() * p.double())  # exact products
        sums = structure_sums(base, group, _grad_times_weight)
        torch.testing.assert_close(sums, reference, rtol=1e-6, atol=0)


def train_steps(model, importance, groups, n):
    """``n`` backward passes over five fixed batches (weights unchanged), each scored."""
    for step in range(n):
        batch = text_batch(batch=6, seq=11, seed=100 + step % 5)
        model(**batch, labels=torch.tensor([0, 1, 2, 0, 1, 2])).loss.backward()
        assert importance.update(model, groups)
        model.zero_grad()


@pytest.mark.parametrize("ema, masked", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.5)])
def test_a_masked_structure_keeps_its_score_until_its_mask_comes_back(ema, masked):
    """A masked head gets no gradient: its score is held while the candidate is tried (it was averaged towards 0,
    so a rolled-back candidate's heads came back ranked to be pruned first)."""
    from hf_adaprune import attach_masks

    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    masks = attach_masks(model)
    groups = list(masks.groups.values())
    importance = TaylorImportance(ema=ema)

    def steps(n):
        train_steps(model, importance, groups, n)

    steps(10)
    name = "encoder.layer.0.attention"
    before = importance.scores(model, groups)[name].clone()
    accepted = masks.state_dict()
    masks.set(name, torch.tensor([masked, 1.0, masked, 1.0]))  # a candidate masks heads 0 and 2 (0.5: a ramp)
    steps(10)
    after = importance.scores(model, groups)[name]
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]], rtol=0, atol=0)
    assert not torch.equal(after[[1, 3]], before[[1, 3]]), "the heads still in use go on learning"
    masks.load_state_dict(accepted)
    steps(1)
    assert not torch.equal(importance.scores(model, groups)[name][[0, 2]], before[[0, 2]]), "unmasked: learns again"


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_held_and_new_scores_stay_on_one_scale_through_a_candidate(ema):
    """Each step's values were divided by their sum over every structure, the masked ones adding 0: while a candidate
    masked 3 of 4 heads and neurons, the others' shares grew about 1 / (share kept), and after its roll-back the
    structures it had masked came back ranked far below (a head never masked had its score doubled). Now the scores
    still sum to 1 per scale, and a roll-back leaves the ranks near those of a run without the candidate."""
    from hf_adaprune import attach_masks

    def run(candidate: bool):
        model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
        masks = attach_masks(model)
        groups = list(masks.groups.values())
        importance = TaylorImportance(ema=ema)
        accepted = masks.state_dict()
        for step in range(20):
            if candidate and step == 10:
                masks.update({name: (torch.arange(mask.numel()) % 4 == 0).float() for name, mask in accepted.items()})
            if candidate and step == 15:
                masks.load_state_dict(accepted)
            batch = text_batch(batch=6, seq=11, seed=100 + step % 5)  # the same batches, weights unchanged
            model(**batch, labels=torch.tensor([0, 1, 2, 0, 1, 2])).loss.backward()
            assert importance.update(model, groups)
            model.zero_grad()
            total = sum(float(score.sum()) for score in importance.scores(model, groups).values())
            assert total == pytest.approx(1.0, abs=1e-5), step
        return importance.scores(model, groups)

    plain, rolled_back = run(False), run(True)
    for name, score in plain.items():
        torch.testing.assert_close(rolled_back[name], score, rtol=0.25, atol=1e-4)


def test_the_heads_and_neurons_of_a_layer_gated_off_keep_their_scores():
    """A candidate that removes a whole layer leaves its heads' and neurons' own masks at 1: their scores, fed no
    gradient, were averaged towards 0 (to under half after a roll-back) and came back ranked to be pruned first."""
    from hf_adaprune import attach_masks

    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    masks = attach_masks(model, layers=True)
    groups = list(masks.groups.values())
    importance = TaylorImportance(ema=0.9)

    def steps(n):
        train_steps(model, importance, groups, n)

    steps(10)
    inside = ["encoder.layer.0.attention", "encoder.layer.0.ffn"]
    before = {name: importance.scores(model, groups)[name].clone() for name in inside}
    masks.set("encoder.layer", torch.tensor([0.0, 1.0, 1.0]))
    steps(10)
    for name in inside:
        torch.testing.assert_close(importance.scores(model, groups)[name], before[name], rtol=0, atol=0)
    widths = [name for name in importance.scores(model, groups) if not name.endswith("encoder.layer")]
    assert sum(float(importance.scores(model, groups)[n].sum()) for n in widths) == pytest.approx(1.0, abs=1e-5)


def test_saved_scores_load_onto_the_device_of_the_gradients():
    """A checkpoint holds the scores on the CPU; a run resumed on an accelerator mixes them with its gradients, so
    the trainer loads them onto the model's device (``meta`` stands in for one here)."""
    saved = TaylorImportance()
    saved.set_scores({"encoder.layer.0.attention": torch.rand(4)}, num_updates=3)
    state = saved.state_dict()
    elsewhere = TaylorImportance()
    elsewhere.load_state_dict(state, device="meta")
    assert elsewhere._scores["encoder.layer.0.attention"].device.type == "meta" and elsewhere.num_updates == 3
    here = TaylorImportance()
    here.load_state_dict(state)
    score = here._scores["encoder.layer.0.attention"]
    assert torch.equal(score, state["scores"]["encoder.layer.0.attention"])
    score += 1  # a copy: updating the loaded scores leaves the saved state as it was
    assert not torch.equal(score, state["scores"]["encoder.layer.0.attention"])
