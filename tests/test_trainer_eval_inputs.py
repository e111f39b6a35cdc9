"""What the pruning trainers make of their eval data: label columns, eval sets assigned after construction, a
dict of eval sets under sentence-transformers' loss steering, and a regression head under a class metric."""

from __future__ import annotations

import types

import datasets
import numpy as np
import pytest
import torch
import transformers
from transformers import EvalPrediction

from hf_adaprune import AdaptivePruningTrainer
from hf_adaprune.task_metrics import classification_metrics

from conftest import tiny_config, tiny_model
from test_trainer import make_args, make_trainer, toy_dataset


# -- finding: a regression head with 2-D labels -----------------------------------------------------------------
def test_a_regression_head_is_refused_by_a_class_metric_whatever_the_labels_shape():
    values = np.array([0.1, 0.5, 0.2, 0.9])
    with pytest.raises(ValueError, match=r"accuracy needs classes, but the model has one output \(regression\)"):
        classification_metrics("accuracy")(EvalPrediction(np.zeros((4, 1)), values[:, None]))
    regression = types.SimpleNamespace(problem_type="regression", num_labels=2)
    with pytest.raises(ValueError, match=r"accuracy needs classes, but the model has 2 outputs \(regression\): use "
                                         "--pruning_metric loss"):
        classification_metrics("accuracy", config=regression)(
            EvalPrediction(np.zeros((4, 2)), np.stack([values, -values], 1)))


# -- finding: label columns transformers does not get -----------------------------------------------------------
def qa_dataset(n=32):
    ids = torch.randint(5, 99, (n, 10), generator=torch.Generator().manual_seed(0))
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "start_positions": (ids[:, 0] % 10).tolist(),
                                       "end_positions": (ids[:, 1] % 10).tolist()})


def test_eval_rows_lacking_one_of_the_label_columns_are_named_before_training(tmp_path):
    data = qa_dataset()
    trainer = AdaptivePruningTrainer(
        model=tiny_model("bert", "AutoModelForQuestionAnswering"), args=make_args(tmp_path, pruning_metric="loss"),
        train_dataset=data, eval_dataset=data.select(range(8)).remove_columns("end_positions"))
    with pytest.raises(ValueError, match="the eval_dataset rows have no end_positions: pruning decisions measure "
                                         "--pruning_metric loss against them"):
        trainer.train()
    assert trainer.state.global_step == 0


class TargetArgumentModel(transformers.BertForSequenceClassification):
    """Its label argument is ``target``: transformers finds no label name in its forward."""

    def forward(self, input_ids=None, attention_mask=None, target=None, **kwargs):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=target, **kwargs)


def test_a_model_without_detected_label_names_is_told_of_label_names(tmp_path):
    torch.manual_seed(0)
    data = toy_dataset(32).rename_column("labels", "target")
    trainer = AdaptivePruningTrainer(
        model=TargetArgumentModel(tiny_config("bert", num_labels=3)), args=make_args(tmp_path, pruning_metric="loss"),
        train_dataset=data, eval_dataset=data.select(range(8)))
    assert trainer.label_names == []
    with pytest.raises(KeyError, match="evaluation returns no 'eval_loss'; available: \\[\\] \\(label_names is "
                                       "empty: transformers found no label argument in TargetArgumentModel.forward.*"
                                       "--label_names"):
        trainer.train()


# -- finding: an eval_dataset assigned after construction --------------------------------------------------------
@pytest.mark.parametrize("assigned, message", [
    (lambda data: {"a": data.select(range(8)), "b": data.select(range(8, 16))},
     r"eval_dataset is a dict of 2 sets \(a, b\): pruning decisions are measured on one eval set"),
    (lambda data: data.select([]), "eval_dataset has no rows: pruning decisions measure --pruning_metric"),
], ids=["dict of sets", "empty"])
def test_an_eval_dataset_assigned_after_construction_is_checked_when_train_starts(tmp_path, assigned, message):
    trainer = make_trainer(tmp_path, max_steps=6)
    trainer.eval_dataset = assigned(toy_dataset(16))
    with pytest.raises(ValueError, match=message):
        trainer.train()
    assert trainer.state.global_step == 0


# -- finding: sentence-transformers, a dict of eval sets steered by the loss -------------------------------------
@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    from test_sentence_transformers import save_tiny_encoder

    return save_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"))


def loss_steered_trainer(encoder_folder, output_dir, **overrides):
    """A CoSENT-trained tiny SentenceTransformer steered by the eval loss of eval sets ``a`` (16 rows) and ``b`` (8)."""
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss
    from test_sentence_transformers import make_args as st_args, sentences, tiny_sentence_transformer

    from hf_adaprune.sentence_transformers import AdaptivePruningSentenceTransformerTrainer

    def pairs(n, seed):
        return datasets.Dataset.from_dict({"sentence1": sentences(n, seed), "sentence2": sentences(n, seed + 100),
                                           "score": [((i * 7 + seed) % 5) / 4 for i in range(n)]})

    model = tiny_sentence_transformer(encoder_folder)
    return AdaptivePruningSentenceTransformerTrainer(
        model=model, args=st_args(output_dir, pruning_metric="loss", **overrides), train_dataset=pairs(32, 0),
        eval_dataset=datasets.DatasetDict(a=pairs(16, 1), b=pairs(8, 2)), loss=CoSENTLoss(model))


def test_a_dict_of_eval_sets_steered_by_the_loss_takes_a_set_metric_for_best_model(encoder_folder, tmp_path):
    trainer = loss_steered_trainer(encoder_folder, tmp_path, max_steps=3, eval_strategy="steps", eval_steps=3,
                                   metric_for_best_model="eval_a_loss")
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if "eval_a_loss" in entry]
    assert len(evaluations) == 1 and trainer.state.best_metric == evaluations[0]["eval_a_loss"]
    # evaluate() names no eval_loss for a dict of sets: refused before training, with the names it gives
    trainer = loss_steered_trainer(encoder_folder, tmp_path, max_steps=3, eval_strategy="steps", eval_steps=3,
                                   metric_for_best_model="eval_loss")
    with pytest.raises(KeyError, match=r"'eval_loss' \(the first evaluation would fail on it\); available: "
                                       r"\['a_loss', 'b_loss'\]"):
        trainer.train()


def test_a_dict_of_eval_sets_steers_by_the_row_weighted_loss_of_all_sets(encoder_folder, tmp_path):
    trainer = loss_steered_trainer(encoder_folder, tmp_path)
    evaluation = trainer.evaluate()
    decision, _ = trainer._decision_metric()
    assert decision == pytest.approx((16 * evaluation["eval_a_loss"] + 8 * evaluation["eval_b_loss"]) / 24, rel=1e-5)
