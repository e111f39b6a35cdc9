"""The training loss of a model that takes ``**kwargs`` but ignores ``num_items_in_batch`` (a BERT classifier):
transformers' Trainer would leave it undivided by the accumulation steps (and multiply it by the number of
processes), taking it for normalised by the step's item count; the pruning trainer probes the model's loss once and
treats such a model as one declaring ``accepts_loss_kwargs = False``. The 2-process side is checked with gradient
clipping on by the distributed tests (``tests/distributed_worker.py``)."""

from __future__ import annotations

import torch

from hf_adaprune import AdaptivePruningTrainer

from conftest import tiny_model
from test_trainer import make_args, toy_dataset


def trained(tmp_path, name, **overrides):
    torch.manual_seed(0)
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args = make_args(tmp_path / name, max_steps=6, pruning_warmup_steps=100, logging_steps=1,
                     train_sampling_strategy="sequential", max_grad_norm=0.05, **overrides)
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(32)))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, losses, {name: p.detach().clone() for name, p in model.named_parameters()}


def test_accumulated_steps_train_as_the_same_batch_without_accumulation(tmp_path):
    """2 micro-batches of 8 = 1 batch of 16: the same logged losses and, with clipping that bites, the same
    weights (before, the accumulated loss was twice the mean and clipped at half the norm)."""
    whole, whole_losses, whole_weights = trained(tmp_path, "whole", per_device_train_batch_size=16)
    split, split_losses, split_weights = trained(tmp_path, "split", per_device_train_batch_size=8,
                                                 gradient_accumulation_steps=2)
    assert whole.model_accepts_loss_kwargs is False and split.model_accepts_loss_kwargs is False
    for a, b in zip(whole_losses, split_losses, strict=True):
        assert abs(a - b) <= 2e-3, (whole_losses, split_losses)
    assert max((whole_weights[name] - split_weights[name]).abs().max() for name in whole_weights) <= 1e-4


def test_label_smoothing_keeps_the_item_count(tmp_path):
    """Trainer's label smoother normalises by the count: such a run keeps Trainer's handling."""
    trainer, _, _ = trained(tmp_path, "smoothed", label_smoothing_factor=0.1)
    assert trainer.model_accepts_loss_kwargs is True


def test_a_model_that_returns_tuples_trains_and_is_probed(tmp_path):
    """config.return_dict=False: Trainer reads a tuple's first item as the loss; the probe read ``.loss`` and
    failed at the first training step."""
    torch.manual_seed(0)
    model = tiny_model("bert", return_dict=False)
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model=model, args=make_args(tmp_path / "tuples", max_steps=2,
                                                                 pruning_warmup_steps=100),
                                     train_dataset=data, eval_dataset=data.select(range(32)))
    trainer.train()
    assert trainer.model_accepts_loss_kwargs is False  # its tuple's loss is a mean, as BERT's always is


def test_a_batch_whose_labels_are_all_ignored_is_probed_again_on_the_next():
    """Every label -100: a NaN loss, read as 'reads the count' (NaN != NaN) and kept for the whole run."""
    from transformers import Trainer

    from hf_adaprune.trainer.eval_loss import EvalLossMixin

    class Probing(EvalLossMixin, Trainer):
        pass

    torch.manual_seed(0)
    model = tiny_model("bert", "AutoModelForTokenClassification").train()
    trainer = Probing(model=model, args=make_args("unused", max_steps=1))
    ids = torch.randint(5, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    ignored = {"input_ids": ids, "labels": torch.full((2, 6), -100)}
    assert trainer._item_count_probe(model, ignored) == (False, False)
    assert trainer._reads_item_count is None  # not kept
    labelled = {"input_ids": ids, "labels": torch.randint(0, 2, (2, 6))}
    assert trainer._item_count_probe(model, labelled) == (False, True)  # measured: BERT's loss ignores the count
    assert model.training  # the probe ran in eval mode and put the mode back
