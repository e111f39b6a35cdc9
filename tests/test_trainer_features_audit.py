"""Trainer features met together with pruning: a collator that reads columns the model does not take under
``--pruning_refit``, a multi-label head's probabilities, a seeded masked-LM collator, ``label_names`` (tiny models,
CPU)."""

from __future__ import annotations

import os

import datasets
import numpy as np
import pytest
import torch
import transformers

from hf_adaprune import AdaptivePruningTrainer
from hf_adaprune.trainer.decision_rng import decision_rng

from conftest import tiny_model
from test_trainer import make_args, toy_dataset
from test_trainer_switches import masked_lm_tokenizer


class ClassColumnCollator:
    """A user's collator that turns the ``cls`` column (the class, a column the model's forward does not take)
    into ``labels``: the usual reason for ``remove_unused_columns=False``."""

    def __init__(self):
        self.columns = []

    def __call__(self, rows):
        self.columns.append(sorted(rows[0]))
        return {"input_ids": torch.tensor([row["input_ids"] for row in rows]),
                "labels": torch.tensor([row["cls"] for row in rows])}


def class_column_trainer(tmp_path, **overrides):
    data = toy_dataset().rename_column("labels", "cls")
    collator = ClassColumnCollator()
    args = make_args(tmp_path, pruning_refit=True, pruning_refit_samples=64, pruning_metric="loss", max_steps=12,
                     **overrides)
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=args, data_collator=collator, train_dataset=data,
                                     eval_dataset=data.select(range(48)))
    return trainer, collator


def test_refit_hands_the_collator_every_column_without_remove_unused_columns(tmp_path):
    """remove_unused_columns=False: the re-fit's rows reach the collator with every column, as training's do (it
    used to drop ``cls`` and fail with a KeyError at the first candidate, after the warm-up)."""
    trainer, collator = class_column_trainer(tmp_path, remove_unused_columns=False)
    trainer.train()
    events = [entry["event"] for entry in trainer.controller.state.history]
    assert events[0] == "reference" and len(events) > 1
    assert trainer._refit_batches, "the re-fit ran"
    assert all("labels" in batch for batch in trainer._refit_batches)
    assert all("cls" in columns for columns in collator.columns)


def test_a_collator_that_fails_on_the_refit_rows_is_refused_before_training(tmp_path):
    """remove_unused_columns=True drops ``cls`` before the collator (in training too): the re-fit's collation of 2
    rows at set-up fails, and the trainer says so when it is built, not at the first pruning step."""
    with pytest.raises(ValueError, match=r"--pruning_refit collates train_dataset rows with the data_collator, "
                                         r"handing it the columns the model's forward takes and the label columns "
                                         r"\(--remove_unused_columns true\), as training does; it failed on the first "
                                         r"rows: KeyError: 'cls'\. Fix the collator or the dataset, or train without "
                                         r"--pruning_refit"):
        class_column_trainer(tmp_path)


def multi_label_data() -> datasets.Dataset:
    data = toy_dataset()
    multi_hot = [[float(y == 0), float(y >= 1), float(y == 2)] for y in data["labels"]]
    return data.remove_columns("labels").add_column("labels", multi_hot)


def multi_label_trainer(tmp_path, preprocess):
    data = multi_label_data()
    return AdaptivePruningTrainer(model=tiny_model("bert", problem_type="multi_label_classification"),
                                  args=make_args(tmp_path, pruning_metric="f1", max_steps=12), train_dataset=data,
                                  eval_dataset=data.select(range(48)), preprocess_logits_for_metrics=preprocess)


PASSING_PREPROCESS = {
    "logits": lambda logits, labels: logits[0] if isinstance(logits, tuple) else logits,  # picks the logits out
    "float 0/1": lambda logits, labels: (logits > 0).float(),
    "int 0/1": lambda logits, labels: (logits > 0).long(),
}


def test_probabilities_of_a_multi_label_head_for_the_built_in_metric_are_refused_before_training(tmp_path):
    """The built-in metric predicts a label where its logit is positive: sigmoid probabilities would predict every
    label, and f1 would stay at its all-labels value whatever pruning did. Logits and 0/1 predictions pass, and so
    do probabilities for the user's own compute_metrics."""
    for name, preprocess in PASSING_PREPROCESS.items():
        trainer = multi_label_trainer(tmp_path / name.replace(" ", "_"), preprocess)
        trainer._check_metric_available()
        assert 0.0 <= trainer._decision_metric()[0] <= 1.0
    data = multi_label_data()

    def compute_metrics(prediction):
        return {"f1": float(((prediction.predictions > 0.5) == (prediction.label_ids > 0.5)).mean())}

    AdaptivePruningTrainer(model=tiny_model("bert", problem_type="multi_label_classification"),
                           args=make_args(tmp_path / "own", pruning_metric="f1", max_steps=12), train_dataset=data,
                           eval_dataset=data.select(range(48)), compute_metrics=compute_metrics,
                           preprocess_logits_for_metrics=lambda logits, labels: torch.sigmoid(logits)
                           )._check_metric_available()
    trainer = multi_label_trainer(tmp_path / "sigmoid", lambda logits, labels: torch.sigmoid(logits))
    with pytest.raises(ValueError, match=r"--pruning_metric f1 on a multi-label head: preprocess_logits_for_metrics "
                                         r"returns values between 0 and 1 \(probabilities, e\.g\. torch\.sigmoid\), "
                                         r"and the built-in metric thresholds logits at 0.*Return the logits \(or 0/1 "
                                         r"predictions, e\.g\. \(logits > 0\)\.long\(\)\) from "
                                         r"preprocess_logits_for_metrics, or pass a compute_metrics that thresholds "
                                         r"the probabilities"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_seeded_masked_lm_collator_trains_on_the_masks_a_plain_trainer_draws(tmp_path):
    """DataCollatorForLanguageModeling(seed=...) makes its generator at its first call: the checks before training
    and the decisions leave it unmade, so training masks as under a plain Trainer, and every decision (before the
    collator made its generator and after) sees the same masks."""
    rows = datasets.Dataset.from_dict({"input_ids": toy_dataset(64)["input_ids"]})
    losses = {}
    for kind in ("plain", "pruning"):
        collator = transformers.DataCollatorForLanguageModeling(masked_lm_tokenizer(tmp_path), mlm_probability=0.3,
                                                                seed=7)
        model = tiny_model("bert", "AutoModelForMaskedLM", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        args = make_args(tmp_path / kind, pruning_metric="loss", max_steps=3, pruning_warmup_steps=100,
                         logging_steps=1)
        if kind == "plain":
            plain_args = transformers.TrainingArguments(
                str(tmp_path / kind), max_steps=3, per_device_train_batch_size=16, learning_rate=2e-3,
                report_to="none", logging_steps=1, seed=0, use_cpu=True, save_strategy="no", disable_tqdm=True)
            trainer = transformers.Trainer(model=model, args=plain_args, data_collator=collator, train_dataset=rows)
        else:
            trainer = AdaptivePruningTrainer(model=model, args=args, data_collator=collator, train_dataset=rows,
                                             eval_dataset=rows.select(range(32)))
            trainer._decision_metric()
            assert collator.generator is None and collator._generator_pid is None
        trainer.train()
        losses[kind] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses["plain"]) == 3 and losses["pruning"] == losses["plain"]
    assert isinstance(collator.generator, torch.Generator)  # made by training
    state = collator.generator.get_state()
    with_generator = trainer._decision_metric()[0]
    assert torch.equal(collator.generator.get_state(), state)
    collator.generator = collator._generator_pid = None  # as before the collator's first call
    assert trainer._decision_metric()[0] == with_generator
    assert collator.generator is None and collator._generator_pid is None


def test_label_names_label_is_refused_for_the_column_the_collator_renames(tmp_path):
    """The default collator renames ``label`` to ``labels``: label_names=["label"] names no column of the batches
    (a plain Trainer would compute no eval loss); the refusal says so, not that the rows have no label."""
    data = toy_dataset().rename_column("labels", "label")
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, label_names=["label"],
                                                                             pruning_metric="loss"),
                                     train_dataset=data, eval_dataset=data.select(range(48)))
    with pytest.raises(ValueError, match=r"--label_names label: the batches the data collator builds from the "
                                         r"eval_dataset rows have labels, not label \(transformers' collators rename "
                                         r"a label or label_ids column to labels\).*Use --label_names labels$"):
        trainer.train()


class NumpyCollator:
    """What decision_rng reads of a collator that draws with its own NumPy generator (return_tensors="np")."""

    return_tensors = "np"

    def __init__(self, seed, generator=None):
        self.seed, self.generator, self._generator_pid = seed, generator, None

    def get_generator(self, seed, return_tensors=None):
        return np.random.default_rng(seed)

    def __call__(self):
        if self.generator is None:
            self.generator, self._generator_pid = self.get_generator(self.seed), os.getpid()
        return self.generator.random(4)


def test_decisions_draw_the_same_from_a_numpy_generator_and_leave_training_its_draws():
    made = NumpyCollator(7, np.random.default_rng(123))
    made()  # training has drawn
    state = made.generator.bit_generator.state
    unmade = NumpyCollator(7)
    draws = []
    for collator in (made, made, unmade):
        with decision_rng(0, torch.device("cpu"), collator):
            draws.append(collator())
    assert all(np.array_equal(draw, draws[0]) for draw in draws)
    assert made.generator.bit_generator.state == state
    assert unmade.generator is None and unmade._generator_pid is None
