"""Trainer switches a user may turn on with pruning: callbacks, evaluation options, metric names, lengths
(tiny models, CPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import transformers
from transformers import EvalPrediction, TrainerCallback

from hf_adaprune import (AdaptivePruningSeq2SeqTrainer, AdaptivePruningTrainer, PruningArguments,
                         Seq2SeqPruningArguments, get_masks)
from hf_adaprune.task_metrics import classification_metrics

from conftest import tiny_model
from test_trainer import make_args, make_trainer, toy_dataset


class Spy(TrainerCallback):
    """What a user's callback, given to the trainer as callbacks=[...], sees."""

    def __init__(self):
        self.saves, self.at_end, self.predicts = [], None, 0
        self.trainer = None

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.saves.append(os.path.isfile(os.path.join(folder, "pruning_state.pt")))

    def on_predict(self, args, state, control, metrics, **kwargs):
        self.predicts += 1

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.at_end = (get_masks(model) is None, sum(p.numel() for p in model.parameters()),
                       os.path.isfile(os.path.join(args.output_dir, "pruning_report.json")))


def test_users_callbacks_see_complete_checkpoints_and_the_compacted_model(tmp_path):
    spy = Spy()
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), callbacks=[spy], train_dataset=data,
                                     eval_dataset=data.select(range(48)),
                                     args=make_args(tmp_path, save_strategy="steps", save_steps=10))
    trainer.train()
    assert spy.saves == [True, True, True]  # checkpoint-10, -20, -30 each with its pruning state when on_save runs
    assert spy.at_end == (True, sum(p.numel() for p in trainer.model.parameters()), True)
    assert spy.predicts == 0  # decisions are not the user's predict() calls


def test_class_ids_from_preprocess_logits_for_metrics_give_the_same_decisions(tmp_path):
    plain = make_trainer(tmp_path / "plain")
    plain.train()
    data = toy_dataset()
    with_ids = AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path / "ids"), train_dataset=data,
                                      eval_dataset=data.select(range(48)),
                                      preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1))
    with_ids.train()
    metrics = [[h.get("metric") for h in t.controller.state.history] for t in (plain, with_ids)]
    assert metrics[0] == pytest.approx(metrics[1], abs=1e-6)


class Head:
    """What classification_metrics reads of a model's config."""

    def __init__(self, num_labels, problem_type=None):
        self.num_labels, self.problem_type = num_labels, problem_type


@pytest.mark.parametrize("name", ["accuracy", "f1"])
def test_multi_hot_predictions_of_a_multi_label_head_stay_multi_label(name):
    """0/1 predictions (a preprocess_logits_for_metrics that thresholds) of a multi-label head: subset accuracy and
    micro f1, as from its logits; told by the float labels BCE takes, or by the config's problem_type."""
    generator = np.random.default_rng(1)
    logits = generator.normal(size=(16, 4)).astype(np.float32)
    labels = generator.integers(0, 2, size=(16, 4))
    expected = classification_metrics(name)(EvalPrediction(logits, labels.astype(np.float32)))[name]
    hot = (logits > 0).astype(np.int64)
    assert classification_metrics(name)(EvalPrediction(hot, labels.astype(np.float32)))[name] == pytest.approx(expected)
    config = Head(4, "multi_label_classification")
    assert classification_metrics(name, config=config)(EvalPrediction(hot, labels))[name] == pytest.approx(expected)


@pytest.mark.parametrize("name", ["accuracy", "f1"])
def test_class_ids_are_scored_as_classes_not_as_multi_label_rows(name):
    generator = np.random.default_rng(0)
    logits = generator.normal(size=(6, 5, 2)).astype(np.float32)  # binary token classification, every token labelled
    labels = generator.integers(0, 2, size=(6, 5))
    from_logits = classification_metrics(name)(EvalPrediction(logits, labels))[name]
    from_ids = classification_metrics(name, config=Head(2))(EvalPrediction(logits.argmax(-1), labels))[name]
    assert from_ids == pytest.approx(from_logits)
    three = generator.normal(size=(8, 3)).astype(np.float32)
    three_labels = generator.integers(0, 3, size=8)
    assert classification_metrics(name, config=Head(3))(EvalPrediction(three.argmax(-1), three_labels))[name] == \
        pytest.approx(classification_metrics(name)(EvalPrediction(three, three_labels))[name])


def test_ignore_keys_for_eval_reach_the_decisions(tmp_path):
    data = toy_dataset()
    model = tiny_model("bert", output_hidden_states=True)

    def compute_metrics(p):  # fails on a tuple of logits and hidden states
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    trainer = AdaptivePruningTrainer(model=model, args=make_args(tmp_path), train_dataset=data,
                                     eval_dataset=data.select(range(48)), compute_metrics=compute_metrics)
    trainer.train(ignore_keys_for_eval=["hidden_states"])
    assert trainer.controller.state.reference is not None and trainer.controller.state.ratio > 0


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_decision_prediction_bars_are_closed(tmp_path, monkeypatch, metric):
    """Each decision evaluation closes its bar; decisions on the loss (evaluation_loop, not predict()) as well, or
    every later decision would count on in the metric check's bar."""
    from transformers.trainer_callback import ProgressCallback

    opened = []
    real = ProgressCallback.on_prediction_step
    monkeypatch.setattr(ProgressCallback, "on_prediction_step", lambda self, args, state, control, eval_dataloader=None,
                        **kw: opened.append(self.prediction_bar is None) or real(self, args, state, control,
                                                                                 eval_dataloader=eval_dataloader, **kw))
    trainer = make_trainer(tmp_path, disable_tqdm=False, pruning_metric=metric)
    trainer.train()
    (progress,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback)]
    assert progress.prediction_bar is None
    decisions = len(trainer.controller.state.history) - trainer.controller.state.done
    assert opened.count(True) >= decisions + 1  # a new bar for the metric check and for every decision


def test_a_progress_callback_of_its_own_gets_its_prediction_bars_closed(tmp_path):
    """A ProgressCallback subclass in place of the stock one kept the metric check's bar open for the whole run,
    every decision counting on in it."""
    from transformers.trainer_callback import ProgressCallback

    class MyProgress(ProgressCallback):
        pass

    trainer = make_trainer(tmp_path, disable_tqdm=False)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(MyProgress)
    trainer.train()
    (progress,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, MyProgress)]
    assert progress.prediction_bar is None


def test_eval_on_start_sees_the_model_as_given_without_a_warm_up(tmp_path):
    """With pruning_warmup_steps 0 the reference and first candidate come before the first optimizer step, after
    eval_on_start's evaluation: that one describes the unpruned model."""
    from transformers import TrainerCallback

    from hf_adaprune import get_masks

    seen = []

    class Spy(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen.append((state.global_step, get_masks(trainer.model).pruned_fraction("heads")))

    trainer = make_trainer(tmp_path, pruning_criterion="magnitude", pruning_warmup_steps=0, eval_on_start=True,
                           eval_strategy="steps", eval_steps=10, max_steps=20)
    trainer.add_callback(Spy())
    trainer.train()
    assert seen[0] == (0, 0.0)
    history = trainer.controller.state.history
    assert history[0]["event"] == "reference" and history[1]["event"] in ("keep", "rollback")


def test_metric_for_best_model_is_not_checked_against_decisions_on_the_loss(tmp_path):
    data = toy_dataset()

    def compute_metrics(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), train_dataset=data, eval_dataset=data.select(range(48)),
                                     compute_metrics=compute_metrics,
                                     args=make_args(tmp_path, pruning_metric="loss", metric_for_best_model="accuracy",
                                                    eval_strategy="steps", eval_steps=10, max_steps=10))
    trainer.train()
    assert trainer.state.best_metric is not None


def test_eval_do_concat_batches_off_is_refused_with_the_built_in_metric(tmp_path):
    with pytest.raises(ValueError, match="--eval_do_concat_batches false hands the metric one array per batch"):
        make_trainer(tmp_path, eval_do_concat_batches=False)


def test_metric_for_best_model_the_evaluation_lacks_fails_before_training(tmp_path):
    trainer = make_trainer(tmp_path, metric_for_best_model="f1", eval_strategy="steps", eval_steps=20)
    with pytest.raises(KeyError, match=r"--metric_for_best_model 'f1': evaluation returns no 'eval_f1'"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_pruning_metric_with_the_eval_prefix_is_the_metric(tmp_path):
    args = make_args(tmp_path, pruning_metric="eval_accuracy")
    assert args.pruning_metric == "accuracy"
    trainer = make_trainer(tmp_path, pruning_metric="eval_accuracy", max_steps=8)
    trainer.train()
    assert trainer.pruning_summary().metric_name == "accuracy"


def test_generation_arguments_need_the_seq2seq_trainer(tmp_path):
    from test_seq2seq_families import tiny_seq2seq

    data = toy_dataset(8)
    args = Seq2SeqPruningArguments(str(tmp_path), predict_with_generate=True, pruning_metric="chrf",
                                   report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="predict_with_generate=True: AdaptivePruningTrainer does not generate; use "
                                         "AdaptivePruningSeq2SeqTrainer"):
        AdaptivePruningTrainer(model=tiny_seq2seq("marian"), args=args, train_dataset=data, eval_dataset=data)


def test_lengths_beyond_the_decoders_positions_are_refused_when_built(tmp_path):
    from test_seq2seq_families import tiny_seq2seq
    from test_speech_families import WHISPER, tiny_whisper

    data = toy_dataset(8)
    args = Seq2SeqPruningArguments(str(tmp_path), pruning_seq_len=WHISPER["max_target_positions"] + 1,
                                   report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"--pruning_seq_len 33 needs 33 positions of the decoder, which reads at "
                                         r"most 32"):
        AdaptivePruningSeq2SeqTrainer(model=tiny_whisper(), args=args, train_dataset=data, eval_dataset=data)
    classifier = tiny_whisper("WhisperForAudioClassification")  # an encoder alone: no decoder positions to fit
    AdaptivePruningTrainer(model=classifier, args=PruningArguments(str(tmp_path), pruning_seq_len=64, report_to="none",
                                                                   use_cpu=True), train_dataset=data, eval_dataset=data)
    args = Seq2SeqPruningArguments(str(tmp_path), pruning_seq_len=16, pruning_target_type="latency",
                                   pruning_latency_seq_len=65, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"--pruning_latency_seq_len 65 needs 65 positions of the encoder, which "
                                         r"reads at most 64"):
        AdaptivePruningSeq2SeqTrainer(model=tiny_seq2seq("marian"), args=args, train_dataset=data, eval_dataset=data)


def test_decisions_on_the_loss_do_not_scale_with_the_number_of_processes(tmp_path, monkeypatch):
    """transformers multiplies the loss of a model that takes loss kwargs by the number of processes when it passes
    the item count, and these models ignore the count: the steering loss was N times the loss under N processes."""
    import accelerate

    trainer = make_trainer(tmp_path, pruning_metric="loss", pruning_eval_samples=32)  # one batch of 32
    alone = trainer._decision_metric()[0]
    monkeypatch.setattr(accelerate.Accelerator, "num_processes", property(lambda self: 2))
    assert trainer._decision_metric()[0] == pytest.approx(alone, rel=1e-6)


def test_masked_lm_decisions_see_the_same_masks_every_time(tmp_path):
    """A masked-LM collator masks at random: each decision is scored on the same masked rows, and decisions leave
    the training's random state as it was. Its rows carry no labels (the collator makes them): not refused."""
    import datasets

    tokenizer = masked_lm_tokenizer(tmp_path)
    rows = datasets.Dataset.from_dict({"input_ids": toy_dataset(64)["input_ids"]})  # no labels
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
    trainer = AdaptivePruningTrainer(model=tiny_model("bert", "AutoModelForMaskedLM"), data_collator=collator,
                                     args=make_args(tmp_path, pruning_metric="loss", max_steps=6,
                                                    pruning_warmup_steps=2, pruning_interval=2),
                                     train_dataset=rows, eval_dataset=rows.select(range(32)))
    state = torch.get_rng_state()
    first, second = trainer._decision_metric()[0], trainer._decision_metric()[0]
    assert first == second
    assert torch.equal(torch.get_rng_state(), state)
    trainer.train()
    assert trainer.controller.state.reference is not None


def masked_lm_tokenizer(tmp_path):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    # transformers 5's fast tokenizers ignore vocab_file: the vocabulary is passed as a dict
    return transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})


def test_a_multiple_choice_head_is_counted_and_pruned(tmp_path):
    import datasets

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (48, 3, 10), generator=generator)
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, :, 1].argmax(-1)).tolist()})
    trainer = AdaptivePruningTrainer(model=tiny_model("bert", "AutoModelForMultipleChoice"), train_dataset=data,
                                     eval_dataset=data.select(range(16)), args=make_args(tmp_path, max_steps=12))
    assert all(cost > 0 for cost in trainer.costs.values())
    trainer.train()
    assert get_masks(trainer.model) is None and trainer.pruned_comparison.flops_removed > 0


@pytest.mark.parametrize("value, normalize", [(None, False), (True, True), (False, False)])
def test_the_trainer_ranks_raw_scores_unless_told_to_normalise_them(tmp_path, monkeypatch, value, normalize):
    import hf_adaprune.trainer.trainer as trainer_module

    seen = []
    original = trainer_module.select_masks_by_kind

    def spy(*args, **kwargs):
        seen.append(kwargs["normalize"])
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "select_masks_by_kind", spy)
    settings = {} if value is None else {"pruning_normalize_scores": value}  # None: the default
    trainer = make_trainer(tmp_path, **settings, max_steps=12)
    trainer.train()
    assert seen and set(seen) == {normalize}
