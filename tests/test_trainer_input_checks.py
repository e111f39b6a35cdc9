"""Bad input to the pruning trainer fails before training, naming the argument; cards claim no more than was done
(tiny BERT, CPU)."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from transformers import HfArgumentParser

from hf_adaprune import AdaptivePruningTrainer, PruningArguments
from hf_adaprune.engine.selection import unreachable_target
from hf_adaprune.reporting.report import model_card
from hf_adaprune.reporting.summary import PruningSummary

from conftest import tiny_model
from test_trainer import make_args, make_trainer, toy_dataset


def _trainer_with_metric(tmp_path, compute_metrics, **overrides):
    data = toy_dataset()
    return AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, **overrides),
                                  train_dataset=data, eval_dataset=data.select(range(48)),
                                  compute_metrics=compute_metrics)


@pytest.mark.parametrize("value, type_name", [([0.5, 0.5], "list"), ("high", "str"), (True, "bool")])
def test_a_metric_that_is_not_one_number_fails_before_the_first_step(tmp_path, value, type_name):
    trainer = _trainer_with_metric(tmp_path, lambda p: {"accuracy": value})
    with pytest.raises(TypeError, match=f"'eval_accuracy' of type {type_name} .*pruning decisions need one number"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_metric_that_stops_being_one_number_later_gets_the_same_message(tmp_path):
    # a number on the two rows the check before training reads, a list on the decision rows
    trainer = _trainer_with_metric(tmp_path, lambda p: {"accuracy": 0.5 if len(p.label_ids) <= 2 else [0.5]})
    with pytest.raises(TypeError, match="'eval_accuracy' of type list .*pruning decisions need one number"):
        trainer.train()
    assert trainer.state.global_step == 6  # at the reference, after the warm-up


def test_floors_that_leave_nothing_to_prune_fail_when_the_trainer_is_built(tmp_path):
    with pytest.raises(ValueError, match="nothing to prune: .*min_heads_per_layer=10.*min_neurons_per_layer=1000"):
        make_trainer(tmp_path, min_heads_per_layer=10, min_neurons_per_layer=1000)
    with pytest.raises(ValueError, match="nothing to prune: .*min_heads_per_layer=10"):
        make_trainer(tmp_path, prune="heads", min_heads_per_layer=10)


def test_floors_that_cap_the_target_warn_for_every_kind_they_cap(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        make_trainer(tmp_path, min_heads_per_layer=10)  # heads blocked, FFN neurons still prunable: a warning
    assert "min_heads_per_layer=10" in caplog.text and "min_neurons_per_layer" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        make_trainer(tmp_path, min_heads_per_layer=10, min_neurons_per_layer=30)  # 37 neurons per layer
    assert "min_heads_per_layer=10" in caplog.text and "min_neurons_per_layer=30" in caplog.text


def test_unreachable_target_names_every_kind_the_floors_cap():
    class G:
        def __init__(self, name, kind):
            self.name, self.kind = name, kind

    groups = [G("h0", "heads"), G("n0", "ffn")]
    message = unreachable_target(groups, {"h0": 4, "n0": 10}, 0.5, floors={"heads": 3, "ffn": 8})
    assert "min_heads_per_layer=3) leaves at most 0.2500" in message
    assert "min_neurons_per_layer=8) leaves at most 0.2000" in message
    assert "lower the target to <= 0.2000 or lower min_heads_per_layer / min_neurons_per_layer" in message


@pytest.mark.parametrize("name, value, expected", [
    ("pruning_target", "0.5", "a real number"), ("pruning_tolerance", None, "a real number"),
    ("pruning_warmup_steps", "10", "an integer"), ("pruning_warmup_steps", 6.5, "an integer"),
    ("pruning_interval", 2.5, "an integer"), ("pruning_seq_len", 10.5, "an integer"),
    ("pruning_eval_samples", 2.5, r"an integer \(or unset\)"), ("min_heads_per_layer", True, "an integer"),
    ("pruning_metric", None, "a string"), ("pruning_roles", 3, "a string"), ("compact_at_end", 1, "true or false"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_argument(tmp_path, name, value, expected):
    with pytest.raises(TypeError, match=f"^--{name} must be {expected}; got {re.escape(repr(value))}$"):
        make_args(tmp_path, **{name: value})


def test_typed_values_from_python_the_command_line_and_yaml_are_accepted(tmp_path):
    args = make_args(tmp_path, pruning_eval_samples=None, pruning_latency_seq_len=None, pruning_target=1 / 3,
                     pruning_tolerance=0)  # None where the field is optional; an int where a float is asked
    assert args.pruning_eval_samples is None and args.pruning_tolerance == 0
    parser = HfArgumentParser(PruningArguments)
    (parsed,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--pruning_interval", "3", "--pruning_target", "0.4",
         "--pruning_eval_samples", "8", "--use_cpu", "--report_to", "none"])
    assert (parsed.pruning_interval, parsed.pruning_target, parsed.pruning_eval_samples) == (3, 0.4, 8)
    config = tmp_path / "args.yaml"
    config.write_text(f"output_dir: {tmp_path}\npruning_interval: 3\npruning_target: 0.4\npruning_tolerance: 0\n"
                      "pruning_eval_samples: 8\nuse_cpu: true\nreport_to: none\n")
    (from_yaml,) = parser.parse_yaml_file(str(config))
    assert (from_yaml.pruning_interval, from_yaml.pruning_target, from_yaml.pruning_tolerance) == (3, 0.4, 0)


@pytest.mark.parametrize("criterion", ["taylor", "fisher"])
def test_no_warmup_with_a_gradient_criterion_is_refused_when_parsed(tmp_path, criterion):
    """Parsed, then refused only when the trainer was built (the README's table gave no minimum)."""
    with pytest.raises(ValueError, match=f"^{criterion} importance needs gradients: set --pruning_warmup_steps >= 1"):
        make_args(tmp_path, pruning_warmup_steps=0, pruning_criterion=criterion)
    assert make_args(tmp_path, pruning_warmup_steps=0, pruning_criterion="magnitude").pruning_warmup_steps == 0


def test_numpy_numbers_become_plain_ones_that_checkpoints_read_back(tmp_path):
    """np.linspace in a sweep gives np.float64 targets: accepted as they were, they went into pruning_state.pt,
    which torch.load(weights_only=True) refuses, so no checkpoint of the run could be resumed (nor the best model
    loaded at the end), and to_json_string failed."""
    import numpy as np

    args = make_args(tmp_path, pruning_target=np.linspace(0.3, 0.7, 5)[2], pruning_interval=np.int64(6),
                     pruning_tolerance=np.float32(0.25))
    assert type(args.pruning_target) is float and type(args.pruning_interval) is int
    assert type(args.pruning_tolerance) is float and args.pruning_tolerance == 0.25
    assert '"pruning_target": 0.5' in args.to_json_string()
    assert make_args(tmp_path, pruning_normalize_scores=np.array([True, False])[0]).pruning_normalize_scores is True
    first = make_trainer(tmp_path, pruning_target=np.float64(0.5), save_strategy="steps", save_steps=12, max_steps=12)
    first.train()
    resumed = make_trainer(tmp_path, pruning_target=np.float64(0.5), max_steps=18)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-12"))
    assert resumed.state.global_step == 18


@pytest.mark.parametrize("sharding", [{"fsdp": "full_shard"}, {"fsdp": True}, {"deepspeed": {"zero_optimization": {}}}])
def test_fsdp_and_deepspeed_are_refused_pointing_to_ddp(tmp_path, sharding):
    with pytest.raises(ValueError, match="cannot prune under FSDP or DeepSpeed.*whole gradient.*DDP.*torchrun"):
        make_args(tmp_path, **sharding)


def test_fsdp_from_an_accelerate_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="ACCELERATE_USE_FSDP.*cannot prune under FSDP or DeepSpeed"):
        make_args(tmp_path)


def test_a_model_saved_before_train_has_a_card_that_claims_no_training(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.save_model()
    card = (tmp_path / "README.md").read_text()
    assert "has not been trained or pruned by this trainer yet" in card
    for claim in ("Fine-tuned", "Pruned from", "did not start", "stopped: None", "| | dense | pruned |",
                  "training_steps", "reached sparsity"):
        assert claim not in card


def test_a_second_train_after_a_run_that_pruned_nothing_says_so(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, pruning_warmup_steps=6)
    trainer.train()
    with pytest.raises(RuntimeError, match=r"no pruning happened in this trainer's train\(\) \(training ended at step "
                                           r"4, before the pruning reference at pruning_warmup_steps 6\).*more "
                                           "max_steps or a smaller pruning_warmup_steps") as raised:
        trainer.train()
    assert "already pruned" not in str(raised.value)


def test_a_second_train_after_a_reference_at_the_last_step_says_nothing_was_pruned(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, pruning_warmup_steps=6)  # the reference is the last step
    trainer.train()
    assert [h["event"] for h in trainer.controller.state.history] == ["reference", "stop"]
    with pytest.raises(RuntimeError, match=r"no pruning step of this trainer's train\(\) was kept \(stopped: "
                                           r"training ended\): its model is not pruned") as raised:
        trainer.train()
    assert "already pruned" not in str(raised.value)


def _summary(base_model, **overrides):
    values = dict(base_model=base_model, dataset=None, model_name="m", criterion="taylor", metric_name="accuracy",
                  metric_key="eval_accuracy", greater_is_better=True, metric_before=0.8, metric_after=0.79,
                  tolerance=0.05, tolerance_type="absolute", target=0.5, target_type="flops", final_sparsity=0.5,
                  stop_reason="target reached",
                  groups={"encoder.layer.0.attention": {"kind": "heads", "original": 4, "kept": 2}})
    return PruningSummary(**{**values, **overrides})


def test_the_card_of_a_model_trained_from_scratch_names_no_base_model():
    card = model_card(_summary(None)).text
    assert "Trained from scratch and pruned by adaptive structured pruning" in card and "base model" not in card
    unpruned = model_card(_summary(None, metric_before=None, stop_reason="training ended", final_sparsity=0.0,
                                   groups={})).text
    assert "Trained from scratch. Adaptive structured pruning was configured but did not start" in unpruned
    assert "base model" not in unpruned and "| | dense | pruned |" not in unpruned  # no rows: no table
    assert "Pruned from `org/bert` by adaptive structured pruning" in model_card(_summary("org/bert")).text
    assert "Pruned from its base model" in model_card(_summary("/data/models/bert")).text  # a local path


def test_a_data_file_named_as_the_dataset_is_no_hub_dataset_id():
    """dataset='data/train.csv' (not found from here) read as a Hub repo id, so the card's metadata named a Hub
    dataset that does not exist."""
    from hf_adaprune.reporting.report import hub_id_or_none

    assert hub_id_or_none("data/train.csv") is None and hub_id_or_none("corpus/sst2.jsonl.gz") is None
    assert hub_id_or_none("stanfordnlp/sst2") == "stanfordnlp/sst2"
    card = model_card(_summary("org/bert", dataset="data/train.csv"))
    assert "data/train.csv" not in (card.data.to_dict().get("datasets") or [])


def test_the_card_never_says_stopped_none():
    card = model_card(_summary("org/bert", stop_reason=None)).text
    assert "stopped: None" not in card and "(of the least pruned kind)." in card


@pytest.mark.parametrize("name", ["pruning_greater_is_better", "distillation", "compact_at_end", "pruning_refit",
                                  "pruning_resume_with_new_arguments"])
def test_a_boolean_given_as_text_is_refused_not_read_as_true(tmp_path, name):
    with pytest.raises(TypeError, match=f"^--{name} must be true or false.*got 'false' \\(a string: write true or false "
                                        "unquoted in YAML"):
        make_args(tmp_path, **{name: "false"})
    config = tmp_path / "args.yaml"
    config.write_text(f'output_dir: {tmp_path}\n{name}: "false"\nuse_cpu: true\nreport_to: none\n')
    with pytest.raises(TypeError, match=f"^--{name} must be true or false"):
        HfArgumentParser(PruningArguments).parse_yaml_file(str(config))


def test_comma_list_fields_take_a_list_of_names(tmp_path):
    args = make_args(tmp_path, prune=["heads", "ffn"], pruning_roles=("encoder_self", "encoder"))
    assert (args.prune, args.pruning_roles) == ("heads,ffn", "encoder_self,encoder")


def test_a_negative_interval_is_named_not_blamed_on_the_ramp(tmp_path):
    with pytest.raises(ValueError, match=r"^--pruning_warmup_steps must be >= 0 and --pruning_interval >= 1$"):
        make_args(tmp_path, pruning_interval=-3)


def test_a_best_model_metric_evaluation_lacks_is_refused_before_training_when_decisions_read_the_loss(tmp_path):
    import numpy as np

    def accuracy_only(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = _trainer_with_metric(tmp_path, accuracy_only, pruning_metric="loss", metric_for_best_model="f1",
                                   eval_strategy="steps", eval_steps=6, save_strategy="steps", save_steps=6,
                                   load_best_model_at_end=True)
    with pytest.raises(KeyError, match=r"--metric_for_best_model 'f1': evaluation returns no 'eval_f1'.*'eval_accuracy'"):
        trainer.train()
    assert trainer.state.global_step == 0
    accepted = _trainer_with_metric(tmp_path / "ok", accuracy_only, pruning_metric="loss",
                                    metric_for_best_model="accuracy", eval_strategy="steps", eval_steps=6,
                                    save_strategy="steps", save_steps=6, load_best_model_at_end=True, max_steps=12)
    accepted.train()
    assert accepted.state.best_metric is not None


def two_class_model():
    import transformers
    from conftest import tiny_config

    torch.manual_seed(0)
    config = tiny_config("bert", id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("metric, labels, message", [
    ("f1", [0] * 48, r"--pruning_metric f1: f1 on two classes scores class 1 \('pos'\), and none of the 48 rows that "
                     r"pruning decisions read has it"),
    ("recall", [0] * 48, r"recall on two classes scores class 1 \('pos'\)"),
    ("matthews_correlation", [1] * 48, r"matthews_correlation is 0 on rows of one class, and the 48 rows that "
                                       r"pruning decisions read are all class 1"),
])
def test_a_built_in_metric_the_decision_rows_cannot_move_is_refused_before_training(tmp_path, metric, labels,
                                                                                    message):
    """Binary f1 on decision rows without a row of class 1 stays 0 whatever is pruned (every step was kept and the
    run reported 'within tolerance'); Matthews correlation alike on one class."""
    import datasets

    model = two_class_model()
    data = toy_dataset()
    rows = datasets.Dataset.from_dict({"input_ids": data["input_ids"][:48], "labels": labels})
    trainer = AdaptivePruningTrainer(model=model, args=make_args(tmp_path, pruning_metric=metric),
                                     train_dataset=data.map(lambda r: {"labels": r["labels"] % 2}),
                                     eval_dataset=rows)
    with pytest.raises(ValueError, match=message):
        trainer.train()
    assert trainer.state.global_step == 0


def test_binary_f1_on_rows_with_both_classes_names_the_positive_class(tmp_path, caplog):
    import datasets

    model = two_class_model()
    data = toy_dataset().map(lambda r: {"labels": r["labels"] % 2})
    trainer = AdaptivePruningTrainer(model=model, args=make_args(tmp_path, pruning_metric="f1", max_steps=8),
                                     train_dataset=data, eval_dataset=data.select(range(48)))
    with caplog.at_level(logging.INFO, logger="hf_adaprune"):
        trainer.train()
    assert "--pruning_metric f1 on two classes scores class 1 ('pos') as the positive class" in caplog.text


def test_a_model_given_as_processing_class_is_refused(tmp_path):
    """It trained without a word, and save_model would write that model's config and weights beside the pruned
    model's (a model's save_pretrained)."""
    with pytest.raises(TypeError, match="processing_class= got a BertForSequenceClassification: pass the model's "
                                        "tokenizer or processor"):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path), train_dataset=toy_dataset(),
                               eval_dataset=toy_dataset(), processing_class=tiny_model("bert"))


@pytest.mark.parametrize("column, value, message", [
    ("input_ids", [500] * 10, r"eval_dataset holds token id 500, but the model's embedding table has 99 rows"),
    ("labels", 9, r"eval_dataset holds label 9 \(48 labels outside 0..2\), but the model's head has 3 classes"),
])
def test_evaluation_rows_the_model_cannot_read_are_named_when_the_trainer_is_built(tmp_path, column, value,
                                                                                     message):
    """A bare "IndexError: index out of range in self" / "Target 9 is out of bounds" came from the first evaluation."""
    rows = toy_dataset(48).map(lambda row: {column: value})
    with pytest.raises(ValueError, match=message):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path), train_dataset=toy_dataset(),
                               eval_dataset=rows)


def test_multi_label_evaluation_rows_are_not_taken_for_class_ids(tmp_path):
    """Float multi-hot labels (transformers infers multi-label from them) were refused as 'one class id per row'."""
    rows = toy_dataset(48).map(lambda row: {"labels": [1.0, 0.0, float(row["labels"] == 2)]})
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, pruning_metric="loss"),
                                     train_dataset=toy_dataset().map(lambda row: {"labels": [0.0, 1.0, 0.0]}),
                                     eval_dataset=rows)
    assert trainer.eval_dataset is rows


def test_evaluation_rows_longer_than_the_positions_are_left_to_the_collator(tmp_path):
    """A collator may truncate: rows of 100 ids for 64 positions were refused when the trainer was built."""
    rows = toy_dataset(48).map(lambda row: {"input_ids": (row["input_ids"] * 10)[:100]})
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path), train_dataset=toy_dataset(),
                                     eval_dataset=rows)
    assert trainer.eval_dataset is rows
