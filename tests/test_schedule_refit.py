"""``pruning_refit``: a candidate's cut groups get their output projections re-fitted as soon as it is masked."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import datasets
import pytest
import torch

from hf_adaprune import AdaptivePruningTrainer, attach_masks, compact, get_masks
from hf_adaprune.families import HeadGroup
from hf_adaprune.post_training.refit import column_mask
from hf_adaprune.trainer.search_refit import refit_calibration_batches, refit_candidate, undo_refit
from hf_adaprune.trainer.trainer import PRUNING_STATE_FILE

from conftest import text_batch, tiny_model
from test_distributed import TORCHRUN
from test_schedule import same_masks_on_two_processes_as_on_one, scripted
from test_trainer import make_args, make_trainer, toy_dataset

ONE_PROCESS = SimpleNamespace(num_processes=1)


def _collate(rows):
    return {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}


def batch_loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(model(**batch).loss) for batch in batches) / len(batches)


def cut_half(masks, groups, seed=0):
    """A candidate: half the structures of every group removed (random, seeded)."""
    generator = torch.Generator().manual_seed(seed)
    candidate = {}
    for group in groups:
        mask = torch.ones_like(masks.masks[group.name])
        mask[torch.randperm(mask.numel(), generator=generator)[: mask.numel() // 2]] = 0
        candidate[group.name] = mask
    return candidate


@pytest.mark.parametrize("target", ["same_input", "dense_residual"])
def test_refit_changes_only_the_kept_columns_and_bias_of_cut_groups_and_undo_restores(target):
    model = tiny_model("bert")
    masks = attach_masks(model)
    groups = list(masks.groups.values())
    accepted = masks.state_dict()
    cut = groups[:2]  # two groups lose half their structures, the others nothing
    masks.update(cut_half(masks, cut))
    batches = refit_calibration_batches(model, toy_dataset(64), _collate, 32, 16, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    candidate = masks.state_dict()
    change = refit_candidate(model, masks, groups, accepted, batches, ONE_PROCESS, ridge=1e-3, target=target)
    assert sorted(change) == sorted(g.output for g in cut)
    assert all(torch.equal(m, candidate[n]) for n, m in masks.state_dict().items()), "candidate masks back in place"
    after = model.state_dict()
    prefix = model.base_model_prefix  # group paths are inside the base model
    outputs = {f"{prefix}.{g.output}.{p}": g for g in cut for p in ("weight", "bias")}
    for name, value in after.items():
        if name not in outputs:
            assert torch.equal(value, before[name]), f"{name} is no cut group's output projection"
            continue
        if name.endswith(".bias"):
            assert not torch.equal(value, before[name]), name
            continue
        group = outputs[name]
        columns = masks.masks[group.name].repeat_interleave(group.head_dim if isinstance(group, HeadGroup) else 1)
        assert torch.equal(value[:, columns < 0.5], before[name][:, columns < 0.5]), "removed columns untouched"
        assert not torch.equal(value[:, columns > 0.5], before[name][:, columns > 0.5]), "kept columns re-fitted"
    undo_refit(model, change)
    for name, value in model.state_dict().items():
        assert torch.allclose(value, before[name], atol=1e-6), name


def test_a_refit_stopped_mid_way_leaves_the_projections_as_they_were(monkeypatch):
    """Ctrl-C after the first group was re-fitted: the trainer puts the accepted masks back, but the weights stayed
    half re-fitted (the change to undo is known only at the end): they are put back as well."""
    import hf_adaprune.post_training.refit as refit_module

    model = tiny_model("bert")
    masks = attach_masks(model)
    groups = list(masks.groups.values())
    accepted = masks.state_dict()
    masks.update(cut_half(masks, groups[:2]))
    batches = refit_calibration_batches(model, toy_dataset(64), _collate, 32, 16, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    solved = []
    original = refit_module.solve_refit

    def stop_at_the_second(*args, **kwargs):
        if solved:
            raise KeyboardInterrupt
        solved.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(refit_module, "solve_refit", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        refit_candidate(model, masks, groups, accepted, batches, ONE_PROCESS, ridge=1e-3)
    assert solved == [1], "the first group was re-fitted before the stop"
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def refitted_half(target: str = "dense_residual"):
    """A tiny BERT with half of every group cut and re-fitted once: (model, masks, groups, calibration batches)."""
    model = tiny_model("bert")
    masks = attach_masks(model)
    groups = list(masks.groups.values())
    batches = refit_calibration_batches(model, toy_dataset(64), _collate, 64, 32, seed=0)
    masks.update(cut_half(masks, groups, seed=0))
    refit_candidate(model, masks, groups, attach_masks(tiny_model("bert")).state_dict(), batches, ONE_PROCESS, 1e-3,
                    target)
    return model, masks, groups, batches


def test_refit_matches_the_accepted_model_not_the_weights_an_earlier_refit_folded_in():
    model, masks, groups, batches = refitted_half()
    accepted_logits = [model(**batch).logits.detach() for batch in batches]
    # a second candidate that removes nothing more: the re-fit has nothing to do
    change = refit_candidate(model, masks, groups, masks.state_dict(), batches, ONE_PROCESS, 1e-3)
    assert change == {}
    for batch, expected in zip(batches, accepted_logits):
        assert torch.equal(model(**batch).logits, expected)


@pytest.mark.parametrize("target", ["same_input", "dense_residual"])
def test_a_second_refit_zeroes_the_columns_the_accepted_masks_removed(target):
    """After a first re-fit, the structures it cut keep their old (gated-off) columns. A second candidate that cuts
    more is re-fitted against the accepted model with those columns zeroed first: they end exactly 0 in every
    group the second candidate cuts, and the re-fit equals one run on a copy whose columns were zeroed by hand
    (atol 1e-6: the same solve on the same numbers)."""
    model, masks, groups, batches = refitted_half(target)
    accepted = masks.state_dict()
    base = model.base_model
    removed = {g.name: column_mask(g, accepted[g.name]) < 0.5 for g in groups}
    assert all(bool(base.get_submodule(g.output).weight[:, removed[g.name]].ne(0).any()) for g in groups), \
        "the first re-fit left the removed columns as they were"
    second = {}
    for group in groups:  # one more structure of every group: each is cut again
        mask = accepted[group.name].clone()
        mask[int(torch.nonzero(mask > 0.5)[0])] = 0
        second[group.name] = mask
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        for group in groups:
            by_hand.base_model.get_submodule(group.output).weight[:, removed[group.name]] = 0
    masks.update(second)
    change = refit_candidate(model, masks, groups, accepted, batches, ONE_PROCESS, 1e-3, target)
    assert sorted(change) == sorted(g.output for g in groups)
    hand_masks = get_masks(by_hand)
    hand_masks.update(second)
    refit_candidate(by_hand, hand_masks, groups, accepted, batches, ONE_PROCESS, 1e-3, target)
    for group in groups:
        weight = base.get_submodule(group.output).weight
        assert torch.count_nonzero(weight[:, removed[group.name]]) == 0, group.name
        torch.testing.assert_close(weight, by_hand.base_model.get_submodule(group.output).weight, rtol=0, atol=1e-6)


def test_dense_residual_refit_follows_the_accepted_model_closer_than_same_input():
    torch.manual_seed(0)
    reference = tiny_model("bert")
    batches = refit_calibration_batches(reference, toy_dataset(96), _collate, 96, 32, seed=0)
    accepted = attach_masks(reference).state_dict()
    with torch.no_grad():
        expected = [reference(**batch, output_hidden_states=True).hidden_states[-1] for batch in batches]
    errors = {}
    for target in ("same_input", "dense_residual"):
        model = copy.deepcopy(reference)
        masks = get_masks(model)
        masks.update(cut_half(masks, list(masks.groups.values()), seed=1))
        refit_candidate(model, masks, list(masks.groups.values()), accepted, batches, ONE_PROCESS, 1e-3, target)
        with torch.no_grad():
            errors[target] = sum(float((model(**batch, output_hidden_states=True).hidden_states[-1] - e).norm())
                                 for batch, e in zip(batches, expected))
    assert errors["dense_residual"] < 0.9 * errors["same_input"], errors


def test_refit_target_without_refit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--pruning_refit_target same_input says what --pruning_refit matches"):
        make_args(tmp_path, pruning_refit_target="same_input")
    with pytest.raises(ValueError,
                       match="--pruning_refit_target must be one of dense_residual, dense_output, same_input"):
        make_args(tmp_path, pruning_refit=True, pruning_refit_target="dense")


def _refit_run(tmp_path, refit: bool, metrics=None, **overrides):
    options = dict(pruning_schedule="search_then_recover", pruning_search_steps=0, pruning_tolerance=1.0,
                   pruning_warmup_steps=12, max_steps=12, compact_at_end=False, pruning_refit=refit,
                   pruning_refit_samples=96, learning_rate=5e-3) | overrides
    trainer = make_trainer(tmp_path, **options)
    if metrics is not None:
        scripted(trainer, metrics)
    trainer.train()
    return trainer


@pytest.mark.parametrize("target", ["same_input", "dense_residual"])
def test_refit_lowers_the_masked_models_loss_and_compaction_stays_exact(tmp_path, target):
    # 60 steps: long enough for the tiny model to learn the toy task (loss ~0.84, 1.1 at chance), so that what
    # the re-fit restores matters to the loss
    long_enough = dict(pruning_warmup_steps=60, max_steps=60)
    plain = _refit_run(tmp_path / "plain", refit=False, **long_enough)
    refit = _refit_run(tmp_path / "refit", refit=True, pruning_refit_target=target, **long_enough)
    assert [h["event"] for h in refit.controller.state.history] == ["reference", "keep", "stop"]
    plain_masks, refit_masks = get_masks(plain.model).state_dict(), get_masks(refit.model).state_dict()
    assert all(torch.equal(plain_masks[n], refit_masks[n]) for n in plain_masks), "same scores, same candidate"
    batches = refit._refit_batches
    assert len(batches) == 3, "96 rows in batches of 32"
    plain_loss, refit_loss = batch_loss(plain.model, batches), batch_loss(refit.model, batches)
    assert refit_loss < plain_loss, (refit_loss, plain_loss)
    batch = text_batch()
    with torch.no_grad():
        expected = refit.model(**batch).logits
        small = copy.deepcopy(refit.model)
        compact(small)
        assert torch.allclose(small(**batch).logits, expected, atol=1e-5)


def test_a_rolled_back_candidate_takes_its_refit_back(tmp_path):
    # every candidate fails: the search ends on the dense masks, whose weights the re-fits must not have moved
    fails = [0.9] + [0.1] * 10 + [0.9]
    plain = _refit_run(tmp_path / "plain", refit=False, metrics=fails, pruning_min_step=0.1, pruning_tolerance=0.05)
    refit = _refit_run(tmp_path / "refit", refit=True, metrics=fails, pruning_min_step=0.1, pruning_tolerance=0.05)
    events = [h["event"] for h in refit.controller.state.history]
    assert events.count("rollback") >= 2 and "keep" not in events
    assert all(float(m.min()) == 1 for m in get_masks(refit.model).masks.values())
    weights = plain.model.state_dict()
    for name, value in refit.model.state_dict().items():
        assert torch.allclose(value, weights[name], atol=1e-6), name


def test_a_group_short_of_refit_tokens_is_named_once_a_run(tmp_path, caplog):
    """One re-fit row cannot determine a group's re-fit: warned about at the first candidate, not at each."""
    fails = [0.9] + [0.1] * 10 + [0.9]
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer = _refit_run(tmp_path, refit=True, metrics=fails, pruning_min_step=0.1, pruning_tolerance=0.05,
                             pruning_refit_samples=1)
    assert [h["event"] for h in trainer.controller.state.history].count("rollback") >= 2
    named = [record.getMessage().split(":")[0] for record in caplog.records
             if record.getMessage().startswith("re-fit of")]
    assert named and len(named) == len(set(named)), named


@pytest.mark.parametrize("long_share", [0.0, 1.0])
def test_the_refit_memory_is_named_when_the_trainer_is_built(tmp_path, caplog, monkeypatch, long_share):
    """The trainer's re-fit holds every cut group's dense targets (4.5 GiB for BERT-base at the default 512 rows of
    128 tokens) and said nothing; post_training_prune warns of the same. The figure is that of the rows the re-fit
    draws (with a long share: the long ones, 4x the figure of a random draw before)."""
    import hf_adaprune.trainer.trainer as trainer_module
    from hf_adaprune.post_training.dense_targets import dense_target_bytes
    from hf_adaprune.trainer.search_refit import refit_target_bytes_bound

    rows = toy_dataset().map(lambda row, i: {"input_ids": row["input_ids"][:3 + i % 8]}, with_indices=True)
    monkeypatch.setattr(trainer_module, "DENSE_TARGETS_WARNING_BYTES", 1000)
    options = dict(pruning_schedule="search_then_recover", pruning_refit=True, pruning_refit_samples=32,
                   pruning_refit_long_share=long_share)

    def pad(batch):
        width = max(len(row["input_ids"]) for row in batch)
        return {"input_ids": torch.tensor([row["input_ids"] + [0] * (width - len(row["input_ids"])) for row in batch]),
                "attention_mask": torch.tensor([[1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"]))
                                                for row in batch]),
                "labels": torch.tensor([row["labels"] for row in batch])}

    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, **options),
                                         train_dataset=rows, eval_dataset=toy_dataset(48), data_collator=pad)
    bound = refit_target_bytes_bound(trainer.model, trainer.pruning_groups, rows, 32, 0, long_share)
    assert (f"--pruning_refit_target dense_residual: a candidate's re-fit holds the accepted model's activations for "
            f"every group it cut on 32 training rows: up to {bound / 1024 ** 3:.1f} GiB") in caplog.text
    # every group cut: the figure is what the capture of all groups takes on the re-fit's own rows
    batches = refit_calibration_batches(trainer.model, rows, trainer.data_collator, 32, 32, 0, long_share)
    assert bound == dense_target_bytes(trainer.model, [g for g in trainer.pruning_groups if g.kind != "layers"],
                                       batches)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        make_trainer(tmp_path, pruning_schedule="search_then_recover", pruning_refit=True,
                     pruning_refit_target="same_input")
    assert "re-fit holds" not in caplog.text


def test_a_candidate_rolled_back_after_a_resume_takes_its_refit_back(tmp_path):
    """The re-fit's change is saved with a pending candidate: resumed between masking and decision, a roll-back
    still subtracts it, so the weights equal the uninterrupted run's (atol 1e-6: the same steps from the same
    checkpoint). Candidates judged 4 steps after masking (masked at 6, checkpoint at 8, judged at 10); a metric of
    the masks alone, the same in both runs, fails every candidate."""
    options = dict(pruning_schedule="search_then_recover", pruning_search_steps=4, pruning_tolerance=0.05,
                   pruning_min_step=0.1, pruning_warmup_steps=6, max_steps=14, compact_at_end=False,
                   pruning_refit=True, pruning_refit_samples=64, learning_rate=5e-3)

    def only_dense_passes(trainer):
        trainer._decision_metric = lambda: (float(get_masks(trainer.model).pruned_fraction("heads") == 0), {})
        return trainer

    full = only_dense_passes(make_trainer(tmp_path / "full", save_strategy="steps", save_steps=8, **options))
    full.train()
    assert [h["event"] for h in full.controller.state.history][:3] == ["reference", "rollback", "rollback"]
    state = torch.load(tmp_path / "full" / "checkpoint-8" / PRUNING_STATE_FILE, weights_only=True)
    assert state["controller"]["pending"] is not None and state["refit_change"], "checkpoint holds a re-fit candidate"
    resumed = only_dense_passes(make_trainer(tmp_path / "full", save_strategy="no", **options))
    resumed.args.output_dir = str(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-8"))
    assert [h["event"] for h in resumed.controller.state.history] == [h["event"] for h in full.controller.state.history]
    weights = full.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.allclose(value, weights[name], rtol=0, atol=1e-6), name


def test_the_calibration_rows_depend_on_the_seed_only():
    data = toy_dataset(64)
    model = tiny_model("bert")
    a = refit_calibration_batches(model, data, _collate, 16, 16, seed=3)
    b = refit_calibration_batches(model, data, _collate, 16, 16, seed=3)
    c = refit_calibration_batches(model, data, _collate, 16, 16, seed=4)
    assert torch.equal(a[0]["input_ids"], b[0]["input_ids"]) and not torch.equal(a[0]["input_ids"], c[0]["input_ids"])


@pytest.mark.parametrize("overrides, message", [
    (dict(prune="layers"), "--prune names neither"),
    (dict(pruning_refit_samples=0), "--pruning_refit_samples must be >= 1"),
])
def test_refit_that_cannot_run_is_refused_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, pruning_refit=True, **overrides)


class SizedStream(torch.utils.data.IterableDataset):
    """A streaming reader that reports its size: it has a length, but no row can be indexed."""

    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)


@pytest.mark.parametrize("stream", ["datasets", "torch_sized"])
def test_refit_needs_a_map_style_train_dataset(tmp_path, stream):
    data = toy_dataset(32)
    trainer_data = data.to_iterable_dataset() if stream == "datasets" else SizedStream(list(data))
    with pytest.raises(ValueError, match=r"needs a map-style dataset \(indexable, with a length\)"):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, pruning_refit=True),
                               train_dataset=trainer_data, eval_dataset=toy_dataset(16))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
def test_two_processes_ramp_and_refit_to_the_same_masks_and_weights(tmp_path):
    # gradual with a 3-step ramp and the re-fit: every candidate fades, then is re-fitted on each rank
    two, _ = same_masks_on_two_processes_as_on_one(tmp_path, ("--ramp-steps", "3", "--refit"))
    weights0, weights1 = (torch.load(two / f"weights_rank{rank}.pt") for rank in (0, 1))
    for name in weights0:
        assert torch.equal(weights0[name], weights1[name]), name


def test_refit_needs_tokenized_training_rows(tmp_path):
    text_rows = datasets.Dataset.from_dict({"sentence": ["a b", "c d"], "labels": [0, 1]})
    with pytest.raises(ValueError, match=r"need input_ids \(a tokenized dataset\); the first row has \['labels', 'sentence'\]"):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, pruning_refit=True),
                               train_dataset=text_rows, eval_dataset=toy_dataset(16))


def _ragged_rows(n: int) -> datasets.Dataset:
    """``n`` rows of 2 to n + 1 tokens, each length once, in a shuffled order."""
    lengths = [2 + (i * 37) % n for i in range(n)]  # 37 is prime to the sizes used: a permutation
    assert len(set(lengths)) == n
    return datasets.Dataset.from_dict({"input_ids": [[7] * length for length in lengths],
                                       "labels": [i % 3 for i in range(n)]})


def _pad(rows):
    width = max(len(row["input_ids"]) for row in rows)
    ids = torch.tensor([row["input_ids"] + [0] * (width - len(row["input_ids"])) for row in rows])
    mask = torch.tensor([[1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"])) for row in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([row["labels"] for row in rows])}


def _lengths_drawn(batches) -> list[int]:
    return sorted(int(n) for batch in batches for n in batch["attention_mask"].sum(-1))


def test_refit_long_share_draws_that_share_from_the_longest_fifth():
    data, model = _ragged_rows(200), tiny_model("bert")
    threshold = sorted((len(ids) for ids in data["input_ids"]), reverse=True)[39]  # the 40 longest
    plain = _lengths_drawn(refit_calibration_batches(model, data, _pad, 40, 16, seed=1))
    mixed = _lengths_drawn(refit_calibration_batches(model, data, _pad, 40, 16, seed=1, long_share=0.5))
    assert len(plain) == len(mixed) == 40
    assert sum(n >= threshold for n in mixed) == 20, mixed
    assert sum(n >= threshold for n in plain) < 20, plain  # a random draw takes about a fifth (8) of them
    again = _lengths_drawn(refit_calibration_batches(model, data, _pad, 40, 16, seed=1, long_share=0.5))
    assert again == mixed, "the same rows on every process: the seed decides"


def test_refit_long_share_beyond_the_long_rows_takes_them_all_and_warns(caplog):
    data, model = _ragged_rows(50), tiny_model("bert")  # 10 long rows; 40 samples at share 0.5 would want 20
    with caplog.at_level("WARNING"):
        drawn = _lengths_drawn(refit_calibration_batches(model, data, _pad, 40, 16, seed=0, long_share=0.5))
    threshold = sorted((len(ids) for ids in data["input_ids"]), reverse=True)[9]
    assert len(drawn) == 40 and sum(n >= threshold for n in drawn) == 10
    assert "the longest fifth of the training set holds 10 rows, so 10 of the 40 re-fit rows come from it, not 20" \
        in caplog.text
    # more rows asked than the dataset has: all of them, whatever the share
    assert len(_lengths_drawn(refit_calibration_batches(model, data, _pad, 500, 16, seed=0, long_share=0.1))) == 50


@pytest.mark.parametrize("overrides, message", [
    (dict(pruning_refit=True, pruning_refit_long_share=1.5), "--pruning_refit_long_share is a share of the re-fit "
                                                             r"rows, in \[0, 1\]; got 1.5"),
    (dict(pruning_refit=True, pruning_refit_long_share=float("nan")), "--pruning_refit_long_share is a share"),
    (dict(pruning_refit_long_share=0.5), "--pruning_refit_long_share chooses the rows of --pruning_refit, which is off"),
])
def test_refit_long_share_out_of_range_or_without_refit_is_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_a_training_run_refits_on_the_long_share(tmp_path):
    trainer = _refit_run(tmp_path, refit=True, pruning_refit_long_share=1.0, pruning_refit_samples=32)
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert [h["event"] for h in trainer.controller.state.history][:2] == ["reference", "keep"]
    assert sum(int(batch["input_ids"].shape[0]) for batch in trainer._refit_batches) == 32
    assert len(set(lengths)) == 1  # the toy rows are all 10 tokens long: every row counts, the draw still works
