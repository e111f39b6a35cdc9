"""Trainer features combined with pruning: best-model loading, early stopping, metric direction, Hub pushes,
model_init, PEFT models (tiny BERT, CPU)."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import transformers
from transformers import EarlyStoppingCallback

from hf_adaprune import AdaptivePruningTrainer, get_masks
from hf_adaprune.trainer.checkpoint import PRUNING_STATE_FILE, read_pruning_state
from hf_adaprune.surgery import kept_structure

from conftest import tiny_model
from test_trainer import make_args, make_trainer, toy_dataset


def test_best_model_at_end_comes_back_with_its_own_masks(tmp_path):
    # "score" peaks at step 12: the best checkpoint is checkpoint-12, pruned less than the last step
    accuracy = transformers.EvalPrediction
    trainer = None

    def compute_metrics(p: accuracy):
        step = trainer.state.global_step
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean()), "score": -abs(step - 12)}

    data = toy_dataset()
    trainer = AdaptivePruningTrainer(
        model=tiny_model("bert"), train_dataset=data, eval_dataset=data.select(range(48)),
        compute_metrics=compute_metrics,
        args=make_args(tmp_path, eval_strategy="steps", eval_steps=6, save_strategy="steps", save_steps=6,
                       load_best_model_at_end=True, metric_for_best_model="score", pruning_tolerance=1.0,
                       pruning_target=0.9, compact_at_end=False))
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-12")
    best = read_pruning_state(trainer.state.best_model_checkpoint)
    final = get_masks(trainer.model).state_dict()
    assert any(not torch.equal(best["masks"][n], read_pruning_state(tmp_path / "checkpoint-30")["masks"][n])
               for n in final), "the last checkpoint is pruned further than the best one"
    for name, mask in final.items():  # tolerance 1.0 keeps the best checkpoint's step when it is judged
        assert torch.equal(mask, best["masks"][name])
    assert trainer.final_check["step"] == 12, "the final check measures the best checkpoint's weights"
    # the decisions made after checkpoint-12 (logged during training) are named in the history the report prints,
    # which the restored state had lost
    restored, = [h for h in trainer.controller.state.history if h["event"] == "best_checkpoint"]
    later = [h for h in restored["discarded"]]
    assert later and all(h["training_step"] > 12 for h in later)
    assert "load_best_model_at_end restored checkpoint-12; the decisions made after it are discarded" in \
        restored["reason"]
    logged = [e["step"] for e in trainer.state.log_history if "pruning/metric" in e and e["step"] > 12]
    assert sorted(h["training_step"] for h in later if "metric" in h) == logged
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert any(h["event"] == "best_checkpoint" for h in report["decisions"])
    # in step order: the judgement of the checkpoint's candidate (its weights, its step) before the restore entry
    stamped = [h["training_step"] for h in report["decisions"]]
    assert stamped == sorted(stamped), report["decisions"]


def trained_with_best_at(tmp_path, step: int, every: int):
    """A trainer run with an evaluation and checkpoint every ``every`` steps whose best-model metric peaks at
    ``step``, restored at the end (load_best_model_at_end)."""
    trainer = None

    def compute_metrics(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean()),
                "score": -abs(trainer.state.global_step - step)}

    data = toy_dataset()
    trainer = AdaptivePruningTrainer(
        model=tiny_model("bert"), train_dataset=data, eval_dataset=data.select(range(48)),
        compute_metrics=compute_metrics,
        args=make_args(tmp_path, eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every,
                       load_best_model_at_end=True, metric_for_best_model="score", pruning_tolerance=1.0))
    trainer.train()
    return trainer


def test_best_model_at_end_before_any_kept_step_says_the_kept_steps_were_discarded(tmp_path):
    """The best checkpoint holds no kept step, later checkpoints do: the card said the run "kept no pruning step
    (stopped: training ended)"; the stop reason names the restore and the ratios it discarded."""
    trainer = trained_with_best_at(tmp_path, 6, every=6)
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-6")
    restored, = [h for h in trainer.controller.state.history if h["event"] == "best_checkpoint"]
    kept = [h["ratio"] for h in restored["discarded"] if h["event"] == "keep"]
    assert kept and trainer.controller.state.ratio == 0.0
    steps = [h["training_step"] for h in restored["discarded"] if h["event"] == "keep"]
    reason = ("training ended; load_best_model_at_end restored checkpoint-6, discarding the steps kept after it "
              f"(sparsity {', '.join(f'{ratio:.3f} at step {step}' for ratio, step in zip(kept, steps))})")
    assert trainer.controller.state.stop_reason == reason
    trainer.save_model()
    assert f"ran but kept no pruning step (stopped: {reason}): nothing was removed" in \
        (tmp_path / "README.md").read_text()


def test_a_best_checkpoint_taken_mid_candidate_is_judged_and_reported_in_step_order(tmp_path):
    """The best checkpoint (step 10) holds the candidate proposed at step 6, judged at the end on its weights: the
    report listed that judgement (step 10) after the restore entry (step 30)."""
    trainer = trained_with_best_at(tmp_path, 10, every=5)
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-10")
    history = trainer.controller.state.history
    judged = [h for h in history if h["event"] == "keep"]
    assert judged[-1]["training_step"] == 10, "the checkpoint's candidate, judged on its weights"
    stamped = [h["training_step"] for h in history]
    assert stamped == sorted(stamped), history
    assert [h["event"] for h in history][-2:] == ["best_checkpoint", "stop"]


def test_decision_evaluations_stay_out_of_on_evaluate_and_eval_curves(tmp_path):
    seen, logged = [], []
    trainer = make_trainer(tmp_path, max_steps=24)
    trainer.add_callback(type("Spy", (transformers.TrainerCallback,), {
        "on_evaluate": lambda self, args, state, control, metrics=None, **kw: seen.append(metrics),
        "on_log": lambda self, args, state, control, logs=None, **kw: logged.append(dict(logs or {}))}))
    trainer.train()
    assert len([h for h in trainer.controller.state.history if "metric" in h]) >= 3
    assert seen == [], "no user evaluation was asked for"
    assert not any(k.startswith("eval_") for entry in logged for k in entry)
    assert any("pruning_eval_accuracy" in entry for entry in logged)


def test_early_stopping_waits_for_the_users_evaluations(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=30, eval_strategy="steps", eval_steps=10, save_strategy="steps",
                           save_steps=10, load_best_model_at_end=True, metric_for_best_model="accuracy")
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=5))
    trainer.train()
    assert trainer.state.global_step == 30


@pytest.mark.parametrize("overrides, expected", [
    (dict(pruning_metric="mse"), False),
    (dict(pruning_metric="perplexity"), False),
    (dict(pruning_metric="my_score", pruning_greater_is_better=False), False),
    (dict(pruning_metric="my_score", metric_for_best_model="my_score", greater_is_better=False), False),
    (dict(pruning_metric="my_score", metric_for_best_model="my_score", greater_is_better=True), True),
])
def test_metric_direction(tmp_path, overrides, expected):
    data = toy_dataset(32)
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, **overrides),
                                     train_dataset=data, eval_dataset=data,
                                     compute_metrics=lambda p: {overrides["pruning_metric"]: 0.0})
    assert trainer.controller.greater_is_better is expected


def test_unknown_metric_direction_is_asked_for(tmp_path):
    data = toy_dataset(32)
    with pytest.raises(ValueError, match="set --pruning_greater_is_better true or false"):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, pruning_metric="my_score"),
                               train_dataset=data, eval_dataset=data, compute_metrics=lambda p: {"my_score": 0.0})


@pytest.mark.parametrize("missing", [{}, {"accuracy": None}], ids=["absent", "none"])
def test_a_metric_missing_at_one_decision_rolls_that_step_back(tmp_path, caplog, missing):
    """A NaN was rolled back, but a missing key (KeyError) or None (TypeError) ended train() mid-run with no report."""
    calls = []

    def compute_metrics(p):
        calls.append(1)
        if len(calls) == 3:  # the set-up check, the reference, then the first decision
            return missing
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), train_dataset=data, eval_dataset=data.select(range(48)),
                                     compute_metrics=compute_metrics, args=make_args(tmp_path, pruning_tolerance=1.0))
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    state = "None" if missing else "no value"
    assert (f"--pruning_metric 'accuracy': this evaluation returned {state}; taken as NaN, beyond any tolerance") \
        in caplog.text
    judged = [h for h in trainer.controller.state.history if h["event"] in ("keep", "rollback")]
    assert judged[0]["event"] == "rollback" and any(h["event"] == "keep" for h in judged[1:])
    assert (tmp_path / "pruning_report.json").exists()


def test_a_direction_transformers_guessed_from_the_name_is_warned_of(tmp_path, caplog):
    """metric_for_best_model 'error' without --greater_is_better: transformers guesses True from the name (it does not
    end in 'loss'), which then steered pruning unnoticed, every rise in error taken for an improvement."""
    data = toy_dataset(32)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer = AdaptivePruningTrainer(model=tiny_model("bert"),
                                         args=make_args(tmp_path, pruning_metric="error", metric_for_best_model="error"),
                                         train_dataset=data, eval_dataset=data, compute_metrics=lambda p: {"error": 0.0})
    assert trainer.controller.greater_is_better is True
    assert ("--pruning_metric error: a higher value is taken as better from --greater_is_better true, which "
            "transformers also guesses from --metric_for_best_model's name (higher unless it ends in 'loss'); if a "
            "lower error is better, set --pruning_greater_is_better false") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):  # given against the guess: taken as said
        AdaptivePruningTrainer(model=tiny_model("bert"), train_dataset=data, eval_dataset=data,
                               args=make_args(tmp_path, pruning_metric="error", metric_for_best_model="error",
                                              greater_is_better=False), compute_metrics=lambda p: {"error": 0.0})
    assert "transformers also guesses" not in caplog.text


def test_no_dense_checkpoint_reaches_the_hub_during_training(tmp_path, monkeypatch, caplog):
    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.append(sorted(os.listdir(folder_path)))
            return "https://hub.invalid/commit"

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer = make_trainer(tmp_path, push_to_hub=True, hub_model_id="pruned-tiny", save_strategy="steps",
                               save_steps=6)
    assert "pushes only the pruned model at the end" in caplog.text
    trainer.train()
    assert uploads == [], "checkpoints hold dense weights: nothing is pushed mid-training"
    trainer.save_model()  # with push_to_hub, a user's save pushes the pruned model
    assert len(uploads) == 1 and "modeling_adaprune.py" in uploads[0]



def test_a_hub_strategy_set_after_the_arguments_were_built_pushes_no_checkpoint(tmp_path, monkeypatch, caplog):
    """TrainingArguments.set_push_to_hub(strategy=...) skips __post_init__, where the strategy becomes 'end': every
    checkpoint's dense weights went to the Hub without their pruning record (nor pruning_state.pt)."""
    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.append(folder_path)
            return "https://hub.invalid/commit"

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    args = make_args(tmp_path, save_strategy="steps", save_steps=6)
    args.set_push_to_hub("pruned-tiny", strategy="checkpoint")
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=args, train_dataset=toy_dataset(),
                                     eval_dataset=toy_dataset().select(range(48)))
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    assert uploads == [], "checkpoints hold dense weights: nothing is pushed mid-training"
    assert caplog.text.count("checkpoints hold dense weights under masks, so hf_adaprune pushes only the pruned") == 1


@pytest.mark.parametrize("readme", ["notes", "stock_card"])
def test_the_pushed_card_is_the_pruned_models_beside_a_readme_in_the_output_dir(tmp_path, monkeypatch, caplog,
                                                                                readme):
    """A user's README.md went up as the repo's card (the pruned card, with the push's license and tags, beside it as
    README.hf_adaprune.md); a card transformers' create_model_card left there (a dense fine-tuning's) was taken for
    the user's too. The user's README.md stays local; the stock card is replaced by the pruned model's."""
    from huggingface_hub import ModelCard

    from hf_adaprune.trainer.hub_push import folder_files

    commits = []

    class FakeApi:  # a commit: {repo path: local file}
        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": f"user/{repo_id}"})()

        def create_commit(self, repo_id, operations, **kwargs):
            commits.append({op.path_in_repo: op.path_or_fileobj for op in operations})

        def upload_folder(self, repo_id, folder_path, ignore_patterns=None, **kwargs):
            commits.append({path: os.path.join(folder_path, path) for path in folder_files(folder_path, ignore_patterns)})

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    out = tmp_path / "out"
    out.mkdir()
    text = "# my notes\nprivate\n" if readme == "notes" else \
        "---\nlicense: apache-2.0\ntags:\n- generated_from_trainer\n---\n\n# dense fine-tuning\n"
    (out / "README.md").write_text(text)
    if readme == "stock_card":  # and the card an earlier version wrote beside it, taking it for the user's
        (out / "README.hf_adaprune.md").write_text("---\ntags:\n- hf_adaprune\n---\n\nan earlier card\n")
    trainer = make_trainer(out, hub_model_id="pruned-tiny", max_steps=12)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
        trainer.push_to_hub(license="mit", tags=["sentiment"])
    (commit,) = commits
    card = ModelCard.load(commit["README.md"])
    assert card.data.license == "mit" and {"hf_adaprune", "sentiment"} <= set(card.data.tags)
    assert "README.hf_adaprune.md" not in commit and {"config.json", "modeling_adaprune.py"} <= set(commit)
    if readme == "notes":
        assert (out / "README.md").read_text() == text, "the user's README.md stays as it was, and local"
    else:  # replaced, with a word; the earlier card is gone, not uploaded beside the new one
        assert "hf_adaprune" in ModelCard.load(out / "README.md").data.tags
        assert "is a card transformers' create_model_card wrote (generated_from_trainer)" in caplog.text
        assert not (out / "README.hf_adaprune.md").exists()


def test_the_saved_training_args_hold_no_hub_token(tmp_path, monkeypatch):
    """training_args.bin held --hub_token, and a push uploads the folder with it: a write token in the repo."""
    from hf_adaprune.trainer.hub_push import folder_files

    commits = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, ignore_patterns=None, **kwargs):
            commits.append({path: os.path.join(folder_path, path) for path in folder_files(folder_path, ignore_patterns)})

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    trainer = make_trainer(tmp_path, hub_model_id="pruned-tiny", hub_token="hf_SECRET123", max_steps=12)
    trainer.train()
    trainer.push_to_hub()
    (commit,) = commits
    assert b"hf_SECRET123" not in Path(commit["training_args.bin"]).read_bytes()
    assert torch.load(commit["training_args.bin"], weights_only=False).hub_token is None
    assert trainer.args.hub_token == "hf_SECRET123", "the run's own arguments keep it"


def test_model_init_model_is_the_one_pruned(tmp_path):
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model_init=lambda: tiny_model("bert"), args=make_args(tmp_path),
                                     train_dataset=data, eval_dataset=data.select(range(48)))
    first = trainer.model
    trainer.train()
    assert trainer.model is not first
    assert trainer.controller.state.ratio > 0
    assert get_masks(trainer.model) is None and trainer.pruned_comparison.flops_removed > 0


def test_peft_model_is_refused_with_the_merge_route(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model("bert"), peft.LoraConfig(target_modules=["query", "value"], r=2))
    data = toy_dataset(32)
    with pytest.raises(TypeError, match=r"merge_and_unload\(\)"):
        AdaptivePruningTrainer(model=model, args=make_args(tmp_path), train_dataset=data, eval_dataset=data)



def test_peft_model_is_refused_by_every_entry_point_before_it_is_touched(tmp_path):
    """Not only the trainer: post_training_prune, attach_masks, model_profile and save_pruned failed deep inside
    (no attribute 'encoder') or wrote a folder without config.json, after adding an auto_map to the base config."""
    peft = pytest.importorskip("peft")
    from hf_adaprune import attach_masks, post_training_prune, save_pruned
    from hf_adaprune.reporting.flops import model_profile

    model = peft.get_peft_model(tiny_model("bert"), peft.LoraConfig(target_modules=["query", "value"], r=2))
    before = model.base_model.model.config.to_dict()
    for call in (lambda: post_training_prune(model, toy_dataset(8), 0.5, seq_len=8),
                 lambda: attach_masks(model),
                 lambda: model_profile(model, seq_len=8),
                 lambda: save_pruned(model, tmp_path / "folder")):
        with pytest.raises(TypeError, match=r"is a PEFT model.*merge_and_unload\(\)"):
            call()
    assert not (tmp_path / "folder").exists()
    assert model.base_model.model.config.to_dict() == before
    # adapters injected into the model itself (peft.inject_adapter_in_model, peft_model.get_base_model()): it has no
    # merge_and_unload, which the message told it to call
    injected = peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["query", "value"], r=2), tiny_model("bert"))
    assert not hasattr(injected, "merge_and_unload")
    with pytest.raises(TypeError, match=r"carries PEFT adapters \(its peft_config\) outside a PeftModel.*Merge them "
                                        r"on the PeftModel they came from"):
        attach_masks(injected)


def test_eval_sets_decisions_cannot_read_are_refused_when_the_trainer_is_built(tmp_path):
    data = toy_dataset(32)

    def build(eval_dataset):
        return AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path), train_dataset=data,
                                      eval_dataset=eval_dataset)

    with pytest.raises(ValueError, match=r"eval_dataset is a dict of 2 sets \(a, b\): pruning decisions are measured "
                                         "on one eval set"):
        build({"a": data, "b": data})
    with pytest.raises(ValueError, match="eval_dataset is an iterable IterableDataset: pruning decisions"):
        build(data.to_iterable_dataset())
    from test_schedule_refit import SizedStream

    with pytest.raises(ValueError, match="eval_dataset is an iterable SizedStream: pruning decisions"):
        build(SizedStream(list(data)))  # a length, but no row can be indexed
    with pytest.raises(ValueError, match="eval_dataset has no rows"):
        build(data.filter(lambda row: False))


def test_seq2seq_trainer_names_the_arguments_class_it_needs(tmp_path):
    from hf_adaprune import AdaptivePruningSeq2SeqTrainer

    data = toy_dataset(32)
    with pytest.raises(TypeError, match="AdaptivePruningSeq2SeqTrainer needs Seq2SeqPruningArguments as args, got "
                                        "PruningArguments"):
        AdaptivePruningSeq2SeqTrainer(model=tiny_model("bert"), args=make_args(tmp_path), train_dataset=data,
                                      eval_dataset=data)
    with pytest.raises(TypeError, match="AdaptivePruningTrainer needs PruningArguments as args, got "
                                        "TrainingArguments"):
        AdaptivePruningTrainer(tiny_model("bert"), transformers.TrainingArguments(str(tmp_path), report_to="none"),
                               None, data, data)


def test_a_second_train_is_refused_instead_of_fine_tuning_without_pruning(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=12)
    trainer.train()
    assert trainer.controller.state.done
    steps = trainer.state.global_step
    with pytest.raises(RuntimeError, match="this trainer has already pruned its model .*Build a new trainer"):
        trainer.train()
    assert trainer.state.global_step == steps


def test_a_trainer_whose_model_another_trainer_compacted_refuses_before_training(tmp_path):
    # two trainers on one model object (a notebook cell run twice): the first compacts the model at its end; the
    # second trained its whole warm-up and then failed with an AttributeError at the reference
    model = tiny_model("bert")
    first = make_trainer(tmp_path / "a", model=model, max_steps=12)
    second = make_trainer(tmp_path / "b", model=model, max_steps=12, pruning_target=0.3)
    first.train()
    with pytest.raises(RuntimeError, match="no longer carries the masks this trainer attached.*compacted since.*"
                                           "Build a new AdaptivePruningTrainer"):
        second.train()
    assert second.state.global_step == 0


def test_pruning_arguments_changed_after_the_trainer_was_built_are_refused(tmp_path):
    # the controller keeps the values it was built with: the run pruned to 0.5 while its card said "Target: 0.8"
    trainer = make_trainer(tmp_path, max_steps=12)
    trainer.args.pruning_target = 0.8
    with pytest.raises(ValueError, match=r"pruning arguments changed since this trainer was built \(pruning_target "
                                         r"0.5 -> 0.8\)"):
        trainer.train()


def test_the_report_keeps_the_arguments_of_its_run_when_shared_arguments_change_later(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=12)
    trainer.train()
    trainer.args.pruning_target, trainer.args.pruning_tolerance = 0.6, 0.01  # reused for the next trainer
    summary = trainer.pruning_summary()
    assert (summary.target, summary.tolerance) == (0.5, 0.3)


def test_a_model_an_earlier_run_left_masked_is_refused(tmp_path):
    # with compact_at_end=False the second trainer started from the first one's masks and reported them as its own
    first = make_trainer(tmp_path / "a", max_steps=12, compact_at_end=False)
    first.train()
    assert first.controller.state.selected > 0
    with pytest.raises(ValueError, match="the model's pruning masks already remove [0-9]+ heads, neurons or layers "
                                         r".*compact it first \(hf_adaprune.compact\(model\)"):
        make_trainer(tmp_path / "b", model=first.model, pruning_target=0.3)


def test_refusals_of_a_second_train_name_the_seq2seq_trainer(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=12)
    trainer.train()
    trainer.__class__ = type("AdaptivePruningSeq2SeqTrainer", (type(trainer),), {})
    with pytest.raises(RuntimeError, match="an AdaptivePruningSeq2SeqTrainer with this model"):
        trainer.train()


def test_training_that_ends_before_the_reference_says_nothing_was_pruned(tmp_path, caplog):
    trainer = make_trainer(tmp_path, max_steps=4, pruning_warmup_steps=6)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    assert "training ended at step 4, before the pruning reference (pruning_warmup_steps 6): nothing was pruned" \
        in caplog.text
    trainer.save_model()
    card = (tmp_path / "README.md").read_text()
    assert "did not start" in card and "this is the dense model" in card
    assert "Pruned from" not in card


def test_a_best_checkpoint_before_the_reference_is_named_as_what_comes_back(tmp_path, caplog):
    def compute_metrics(p):  # the user's score peaks at step 4, before the reference (warm-up 6)
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean()),
                "score": -abs(trainer.state.global_step - 4)}

    data = toy_dataset()
    trainer = AdaptivePruningTrainer(
        model=tiny_model("bert"), train_dataset=data, eval_dataset=data.select(range(32)),
        compute_metrics=compute_metrics,
        args=make_args(tmp_path, max_steps=20, eval_strategy="steps", eval_steps=4, save_strategy="steps",
                       save_steps=4, load_best_model_at_end=True, metric_for_best_model="score",
                       pruning_warmup_steps=6, pruning_tolerance=1.0))
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    assert "the best checkpoint" in caplog.text and "predates the pruning reference (pruning_warmup_steps 6)" \
        in caplog.text
    assert "training ended at step" not in caplog.text  # training did pass the warm-up
    trainer.save_model()  # the card says the same (it said pruning "did not start", the warm-up not over)
    card = (tmp_path / "README.md").read_text()
    assert "load_best_model_at_end restored a checkpoint from before it" in card and "did not start" not in card
    assert "(checkpoint-4) predates the pruning reference" in trainer.pruning_summary().stop_reason


def test_a_train_after_an_interrupted_one_is_refused_unless_it_resumes(tmp_path):
    class Interrupt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 10:
                raise KeyboardInterrupt("Ctrl-C")

    trainer = make_trainer(tmp_path, max_steps=16, save_strategy="steps", save_steps=8)
    trainer.add_callback(interrupt := Interrupt())
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    trainer.remove_callback(interrupt)
    with pytest.raises(RuntimeError, match="an earlier train\\(\\) of this trainer stopped mid-pruning"):
        trainer.train()  # it restarted at step 0 with the first run's reference, candidate and step counter
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert trainer.state.global_step == 16 and trainer.controller.state.done


def test_a_run_interrupted_after_the_target_was_reached_resumes_on_the_same_trainer(tmp_path):
    class Interrupt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 12:
                raise KeyboardInterrupt("Ctrl-C")

    # target 0.2 in one step: kept at step 12, the controller has stopped before the interruption at step 12
    trainer = make_trainer(tmp_path, max_steps=16, save_strategy="steps", save_steps=8, pruning_target=0.2,
                           pruning_tolerance=1.0)
    trainer.add_callback(interrupt := Interrupt())
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    trainer.remove_callback(interrupt)
    assert trainer.controller.state.done, "the target was reached before the interruption"
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))  # it said "already pruned its model"
    assert trainer.state.global_step == 16 and get_masks(trainer.model) is None, "finished: compacted"
    with pytest.raises(RuntimeError, match="this trainer has already pruned its model"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-16"))


def test_a_decision_on_the_last_step_masks_no_candidate_that_nothing_could_judge(tmp_path):
    """Warm-up 6 and interval 6 put a decision on step 12, the last: it masked the next candidate, which the last
    evaluation and checkpoint then described, and which the end of training discarded."""
    seen = []

    class Spy(transformers.TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen.append((state.global_step, get_masks(trainer.model).pruned_fraction("ffn")))

    trainer = make_trainer(tmp_path, max_steps=12, pruning_target=0.9, pruning_tolerance=1.0, eval_strategy="steps",
                           eval_steps=6, save_strategy="steps", save_steps=12, compact_at_end=False)
    trainer.add_callback(Spy())
    trainer.train()
    events = [h["event"] for h in trainer.controller.state.history]
    assert events == ["reference", "keep", "stop"]
    kept = get_masks(trainer.model).pruned_fraction("ffn")
    assert seen[-1] == (12, kept), "the last evaluation is of the model handed back"
    state = torch.load(tmp_path / "checkpoint-12" / PRUNING_STATE_FILE, weights_only=True)
    assert state["controller"]["pending"] is None
    assert all(torch.equal(state["masks"][name], mask) for name, mask in get_masks(trainer.model).state_dict().items())


def test_a_run_resumed_from_its_last_checkpoint_with_more_steps_goes_on_pruning(tmp_path):
    """The last step's decision masks nothing new (nothing could judge it); a run resumed from that checkpoint with
    a larger max_steps proposes the next step at once instead of training on at the shape it had."""
    short = make_trainer(tmp_path, max_steps=12, save_strategy="steps", save_steps=6)
    short.train()
    state = torch.load(tmp_path / "checkpoint-12" / PRUNING_STATE_FILE, weights_only=True)["controller"]
    assert state["pending"] is None and not state["done"] and state["ratio"] > 0
    longer = make_trainer(tmp_path, max_steps=30, save_strategy="no")
    longer.args.output_dir = str(tmp_path / "longer")
    longer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-12"))
    events = [h["event"] for h in longer.controller.state.history]
    assert events.count("keep") + events.count("rollback") > 1, "a decision after the resume"
    assert longer.controller.state.ratio > state["ratio"]


def test_the_card_reports_the_saved_models_metric_not_the_last_decisions():
    from hf_adaprune.reporting.report import model_card
    from hf_adaprune.reporting.summary import PruningSummary

    summary = PruningSummary(None, None, "m", "taylor", "accuracy", "eval_accuracy", True, 0.80, 0.59375, 0.05,
                             "absolute", 0.5, "flops", 0.5, "target reached",
                             final_check={"step": 24, "metric": 0.75, "reference": 0.80, "drop": 0.05,
                                          "allowed_drop": 0.05, "within_tolerance": True})
    card = model_card(summary, tasks="text-classification")
    assert "| accuracy (eval) | 0.8000 | 0.7500 |" in card.text
    metrics = card.data.to_dict()["model-index"][0]["results"][0]["metrics"]
    assert [(m["name"], m["value"]) for m in metrics] == [("accuracy (dense)", 0.80), ("accuracy (pruned)", 0.75)]
    summary.start_pruned = True  # a second pruning: the reference is the model it started from, as the text says
    card = model_card(summary, tasks="text-classification")
    assert "| | start | pruned |" in card.text
    metrics = card.data.to_dict()["model-index"][0]["results"][0]["metrics"]
    assert [m["name"] for m in metrics] == ["accuracy (start)", "accuracy (pruned)"]


def test_prediction_loss_only_with_a_named_metric_says_why_before_training(tmp_path):
    trainer = make_trainer(tmp_path, prediction_loss_only=True)
    with pytest.raises(KeyError, match="--prediction_loss_only true: evaluation computes the loss alone"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_prediction_loss_only_with_a_named_best_model_metric_says_why_before_training(tmp_path):
    """Decisions on the loss are fine with prediction_loss_only, but --metric_for_best_model accuracy is not: the
    refusal says why, as the pruning metric's does."""
    trainer = make_trainer(tmp_path, prediction_loss_only=True, pruning_metric="loss", eval_strategy="steps",
                           eval_steps=6, metric_for_best_model="accuracy")
    with pytest.raises(KeyError, match="metric_for_best_model 'accuracy'.*--prediction_loss_only true"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_seq2seq_metric_from_logits_needs_no_generation_but_a_named_one_does(tmp_path):
    import numpy as np

    from hf_adaprune import AdaptivePruningSeq2SeqTrainer, Seq2SeqPruningArguments
    from test_layers_training import build_seq2seq

    data = toy_dataset().map(lambda row: {"labels": row["input_ids"][:6]})

    def token_accuracy(p):  # teacher-forced next-token accuracy, from the logits
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        keep = p.label_ids != -100
        return {"token_accuracy": float((np.asarray(logits).argmax(-1)[keep] == p.label_ids[keep]).mean())}

    def build(metric="token_accuracy", **kwargs):
        args = Seq2SeqPruningArguments(
            str(tmp_path), pruning_metric=metric, pruning_greater_is_better=True, max_steps=8,
            per_device_train_batch_size=16, pruning_warmup_steps=4, pruning_interval=4, pruning_target=0.5,
            pruning_tolerance=100.0, pruning_seq_len=10, report_to="none", use_cpu=True, save_strategy="no",
            disable_tqdm=True)
        return AdaptivePruningSeq2SeqTrainer(model=build_seq2seq("marian"), args=args, train_dataset=data,
                                             eval_dataset=data.select(range(16)), **kwargs)

    with pytest.raises(ValueError, match="computed on generated text: set --predict_with_generate"):
        build("sacrebleu")  # built from its name: decodes generated ids
    trainer = build(compute_metrics=token_accuracy)
    trainer.train()
    assert trainer.controller.state.reference is not None and trainer.final_check is not None


def _comparison(params_after, layers=()):
    from hf_adaprune.reporting.summary import LayerComparison, ProfileComparison

    rows = [LayerComparison(name, 4, 4 if kept else None, 64, 64 if kept else None, 100, 100 if kept else 0, 10,
                            10 if kept else 0) for name, kept in layers]
    return ProfileComparison(16, 1000, params_after, 1 - params_after / 1000, 500, params_after // 2,
                             1 - params_after / 1000, 400, params_after // 2, 0.0, rows)


def test_the_card_says_what_kinds_were_pruned_and_which_layers_went():
    from hf_adaprune.reporting.report import model_card
    from hf_adaprune.reporting.summary import PruningSummary

    summary = PruningSummary(None, None, "m", "taylor", "accuracy", "eval_accuracy", True, 0.80, 0.79, 0.05,
                             "absolute", 0.5, "flops", 0.5, "target reached", structures="heads,ffn,layers",
                             comparison=_comparison(600, [("encoder.layer.0", True), ("encoder.layer.1", False)]),
                             groups={"encoder.layer.0.attention": {"kind": "heads", "original": 4, "kept": 2}})
    card = model_card(summary).text
    assert "by adaptive structured pruning (attention heads, FFN neurons and whole layers, taylor importance)" in card
    assert "| encoder.layer.1 | layer | removed whole |" in card and "| encoder.layer.0 | layer |" not in card
    only_heads = PruningSummary(**{**summary.to_dict(), "structures": "heads", "comparison": _comparison(800)})
    assert "(attention heads, taylor importance)" in model_card(only_heads).text
    # with layers the sparsity is the fraction of the prunable FLOPs, removed layers counted whole; the layer FLOPs
    # removed (as compacted) stand beside it
    removed = summary.comparison.layer_flops_removed
    assert (f"reached sparsity 0.500 (of the prunable FLOPs, removed layers counted whole), {100 * removed:.1f}% of "
            "the layer FLOPs removed (stopped: target reached)") in card


def test_the_card_of_a_model_saved_uncompacted_lists_the_layers_it_lacks(tmp_path):
    """compact_at_end=False: save_model compacts a copy; the card says which layers that copy lost."""
    from hf_adaprune import AutoPrunedModel

    trainer = make_trainer(tmp_path, model=tiny_model("bert", num_hidden_layers=4), prune="layers",
                           pruning_initial_step=0.5, pruning_tolerance=10.0, max_steps=12, compact_at_end=False)
    trainer.train()
    trainer.save_model()
    saved = AutoPrunedModel.from_pretrained(tmp_path)
    kept = read_record_layers(saved)
    removed = [f"encoder.layer.{i}" for i in range(4) if i not in kept]
    assert saved.config.num_hidden_layers == len(kept) < 4
    card = (tmp_path / "README.md").read_text()
    # tiny_model is built from a config: trained from scratch, no base model to be pruned from
    assert "nothing was removed" not in card and "Trained from scratch and pruned by adaptive structured" in card
    for layer in removed:
        assert f"| {layer} | layer | removed whole |" in card and f"| {layer}.attention |" not in card
    assert trainer.pruning_summary().removed_layers == removed
    # the report measures the saved folder (it had no comparison): the model in memory keeps its masks
    from hf_adaprune import get_masks
    from hf_adaprune.reporting.flops import count_params

    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["comparison"]["params_after"] == count_params(saved) and get_masks(trainer.model) is not None
    # the logged decisions count the removed layers (heads_pruned / ffn_pruned stay 0: their masks are untouched)
    last = [e for e in trainer.state.log_history if "pruning/metric" in e][-1]
    assert last["pruning/layers_pruned"] == len(removed) / 4 and last["pruning/heads_pruned"] == 0.0


def read_record_layers(model) -> list[int]:
    from hf_adaprune.layout import read_record

    return list(read_record(model.config)["layers"]["encoder.layer"]["kept"])


def test_the_card_of_a_second_pruning_counts_against_its_start_and_names_every_removed_layer(tmp_path):
    from hf_adaprune import AutoPrunedModel

    first = make_trainer(tmp_path / "first", model=tiny_model("bert", num_hidden_layers=4), prune="layers",
                         pruning_initial_step=0.25, pruning_target=0.25, pruning_tolerance=10.0, max_steps=12)
    first.train()
    first.save_model()
    start = AutoPrunedModel.from_pretrained(tmp_path / "first")
    gone_before = [f"encoder.layer.{i}" for i in range(4) if i not in read_record_layers(start)]
    assert len(gone_before) == 1
    # the second run ends before its reference: nothing more is removed
    second = make_trainer(tmp_path / "second", model=start, max_steps=4, pruning_warmup_steps=6)
    second.train()
    second.save_model()
    card = (tmp_path / "second" / "README.md").read_text()
    assert "this is the dense model" not in card and "this is the model it started from, pruned before" in card
    assert "| | start | pruned |" in card and f"| {gone_before[0]} | layer | removed whole |" in card


def test_the_card_of_a_run_that_kept_no_step_says_nothing_was_removed():
    from hf_adaprune.reporting.report import model_card
    from hf_adaprune.reporting.summary import PruningSummary

    summary = PruningSummary(None, None, "m", "taylor", "accuracy", "eval_accuracy", True, 0.80, 0.70, 0.0,
                             "absolute", 0.5, "flops", 0.0, "step below minimum", comparison=_comparison(1000))
    card = model_card(summary).text
    assert "ran but kept no pruning step (stopped: step below minimum): nothing was removed" in card
    assert "Pruned from" not in card


def test_the_pruning_curve_plots_the_sparsity_reached(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    from hf_adaprune.reporting.report import plot_pruning_curve

    plotted = []
    plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, *args, **kwargs: (plotted.append(list(x)), plot(self, x, y, *args, **kwargs)))
    history = [{"event": "reference", "ratio": 0.0, "metric": 0.8},
               {"event": "keep", "ratio": 0.95, "selected": 0.75, "metric": 0.79}]
    plot_pruning_curve(history, "accuracy", tmp_path / "curve.png")
    assert plotted[0] == [0.0, 0.75]


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_scores_and_still_prunes(tmp_path, reentrant):
    def scores(folder, **overrides):
        model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        trainer = make_trainer(tmp_path / folder, model=model, max_steps=3, pruning_warmup_steps=100,
                               learning_rate=0.0, prune="heads,ffn,layers", **overrides)
        trainer.train()
        return trainer.importance.scores(trainer.model, trainer.pruning_groups)

    plain = scores("plain")
    checkpointed = scores("checkpointed", gradient_checkpointing=True,
                          gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert plain.keys() == checkpointed.keys()
    for name, values in plain.items():  # recomputed activations: equal up to float rounding
        torch.testing.assert_close(checkpointed[name], values, rtol=1e-4, atol=1e-7)
    trainer = make_trainer(tmp_path / "run", gradient_checkpointing=True, max_steps=24, pruning_tolerance=1.0,
                           prune="heads,ffn")
    trainer.train()
    assert trainer.controller.state.ratio > 0


def test_model_init_model_is_on_the_training_device_before_its_masks_are_made(tmp_path, monkeypatch):
    """The masks and the latency table are made where the model trains (a GPU): the model moves first."""
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model_init=lambda: tiny_model("bert"), args=make_args(tmp_path, max_steps=1),
                                     train_dataset=data, eval_dataset=data.select(range(48)))
    calls = []
    moved, setup = trainer._move_model_to_device, trainer._setup_pruning
    monkeypatch.setattr(trainer, "_move_model_to_device", lambda model, device: (calls.append(("move", model)),
                                                                                 moved(model, device)))
    monkeypatch.setattr(trainer, "_setup_pruning", lambda model: (calls.append(("setup", model)), setup(model)))
    trainer.train()
    built = trainer.model
    assert [kind for kind, model in calls if model is built][:2] == ["move", "setup"]


def test_a_model_that_drops_layers_at_random_is_refused_for_gradient_scores(tmp_path):
    from test_speech_families import tiny_ctc_model

    data = datasets_for_audio()
    model = tiny_ctc_model("wav2vec2")
    assert model.config.layerdrop == 0.1  # transformers' default for Wav2Vec2Config
    with pytest.raises(ValueError, match=r"--pruning_criterion taylor scores every structure from each step's "
                                         r"gradients, but the model skips layers at random while training "
                                         r"\(layerdrop=0.1\).*from_pretrained\(\.\.\., layerdrop=0.0\)"):
        AdaptivePruningTrainer(model=model, args=make_args(tmp_path, pruning_metric="loss", pruning_seq_len=200),
                               train_dataset=data, eval_dataset=data)
    model.config.layerdrop = 0.0
    AdaptivePruningTrainer(model=model, args=make_args(tmp_path, pruning_metric="loss", pruning_seq_len=200),
                           train_dataset=data, eval_dataset=data)
    model.config.layerdrop = 0.1  # magnitude scores need no gradients
    AdaptivePruningTrainer(model=model, args=make_args(tmp_path, pruning_metric="loss", pruning_seq_len=200,
                                                       pruning_criterion="magnitude"),
                           train_dataset=data, eval_dataset=data)


def datasets_for_audio():
    import datasets

    return datasets.Dataset.from_dict({"input_values": [[0.1] * 200] * 4, "labels": [[1, 2]] * 4})


def test_a_readme_of_the_users_own_in_output_dir_is_kept(tmp_path, caplog):
    from huggingface_hub import ModelCard

    (tmp_path / "README.md").write_text("# My notes\n\nDo not lose these.\n")
    trainer = make_trainer(tmp_path, max_steps=12)
    trainer.train()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.save_model()
    assert (tmp_path / "README.md").read_text() == "# My notes\n\nDo not lose these.\n"
    assert "is not a model card hf_adaprune wrote: it is left as it is" in caplog.text
    card = ModelCard.load(tmp_path / "README.hf_adaprune.md")
    assert "hf_adaprune" in card.data.to_dict()["tags"]
    (tmp_path / "README.md").unlink()  # a card of its own is replaced by the new one, as before
    trainer.save_model()
    trainer.save_model()
    assert "hf_adaprune" in ModelCard.load(tmp_path / "README.md").data.to_dict()["tags"]


def _loss_log_steps(trainer):
    return [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def test_training_loss_is_logged_at_steps_where_a_decision_is_logged(tmp_path):
    # decisions at 6, 12, 18, ...: every one on a logging step, which must still log the training loss
    data = toy_dataset()
    args = make_args(tmp_path, logging_steps=6, pruning_metric="loss", pruning_tolerance=0.003)
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=args, train_dataset=data,
                                     eval_dataset=data.select(range(48)))
    trainer.train()
    decisions = [entry["step"] for entry in trainer.state.log_history if "pruning/metric" in entry]
    assert decisions and set(decisions) <= {6, 12, 18, 24, 30}
    assert [step for step, _ in _loss_log_steps(trainer)] == [6, 12, 18, 24, 30]


def test_setting_up_pruning_leaves_the_training_random_state_alone(tmp_path):
    # no decision within max_steps: the run must draw (data order, dropout) exactly what a plain Trainer draws
    data = toy_dataset()
    args = make_args(tmp_path, max_steps=8, logging_steps=1, pruning_warmup_steps=100)
    pruning = AdaptivePruningTrainer(model=tiny_model("bert"), args=args, train_dataset=data,
                                     eval_dataset=data.select(range(48)))
    pruning.train()
    plain = transformers.Trainer(model=tiny_model("bert"), args=args, train_dataset=data)
    plain.train()
    assert len(_loss_log_steps(plain)) == 8
    assert _loss_log_steps(pruning) == _loss_log_steps(plain)


def test_metric_keys_that_already_read_eval_keep_evaluates_names(tmp_path):
    def compute_metrics(p):
        return {"eval_acc": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    data = toy_dataset()
    trainer = AdaptivePruningTrainer(
        model=tiny_model("bert"), train_dataset=data, eval_dataset=data.select(range(48)),
        compute_metrics=compute_metrics,
        args=make_args(tmp_path, pruning_metric="acc", eval_strategy="steps", eval_steps=12,
                       metric_for_best_model="acc", pruning_tolerance=1.0))
    trainer.train()
    assert "eval_acc" in trainer.evaluate()
    decisions = [entry for entry in trainer.state.log_history if "pruning/metric" in entry]
    assert decisions and all(entry["pruning/metric"] == entry["pruning_eval_acc"] for entry in decisions)
    assert not any("pruning_eval_eval_acc" in entry for entry in trainer.state.log_history)


def _labels_sorted(data):
    return data.select(sorted(range(len(data)), key=lambda i: data[i]["labels"]))


def _needs_two_classes(p):
    if len(set(p.label_ids.tolist())) < 2:
        raise ValueError("y_true contains only one label")
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def test_a_metric_that_needs_more_than_two_rows_does_not_stop_training(tmp_path):
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), train_dataset=data,
                                     eval_dataset=_labels_sorted(data.select(range(48))),
                                     compute_metrics=_needs_two_classes, args=make_args(tmp_path, max_steps=12))
    trainer.train()
    assert any("pruning/metric" in entry for entry in trainer.state.log_history)


def test_a_metric_failing_on_the_decision_rows_says_where_it_was_called(tmp_path):
    data = toy_dataset()
    one_class = data.filter(lambda row: row["labels"] == 0).select(range(20))
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), train_dataset=data, eval_dataset=one_class,
                                     compute_metrics=_needs_two_classes, args=make_args(tmp_path, max_steps=12))
    with pytest.raises(ValueError, match="y_true contains only one label") as caught:
        trainer.train()
    assert "metric check before training" in "".join(getattr(caught.value, "__notes__", []))
    assert trainer.state.global_step == 0


def test_a_save_after_an_interrupted_train_holds_the_last_decided_structure_not_the_unjudged_candidate(tmp_path,
                                                                                                      caplog):
    """save_model() after Ctrl-C compacted the candidate being trained (never judged) while the card described the
    last kept decision; and the model in memory went on running that candidate. The interrupted train() puts the
    model back under the last decision's masks (with a warning); a save holds that structure and says why."""
    from hf_adaprune import AutoPrunedModel

    seen = {}

    class Interrupt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 15:
                seen["candidate"] = {name: mask.clone() for name, mask in get_masks(trainer.model).masks.items()}
                raise KeyboardInterrupt("Ctrl-C")

    trainer = make_trainer(tmp_path / "run")
    trainer.add_callback(Interrupt())
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"), pytest.raises(KeyboardInterrupt):
        trainer.train()
    state = trainer.controller.state
    assert state.pending is not None and state.pending > state.ratio, "a candidate was being trained"
    assert any(not torch.equal(seen["candidate"][name], mask) for name, mask in trainer._accepted_masks.items())
    assert f"train() stopped while the candidate at sparsity {state.pending:.3f} waited for its decision; the model " \
           f"is back at the last decision's sparsity {state.ratio:.3f}" in caplog.text
    for name, mask in get_masks(trainer.model).state_dict().items():  # the model in memory: the last decision's
        assert torch.equal(mask, trainer._accepted_masks[name])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.save_model(str(tmp_path / "saved"))
    assert f"the candidate at sparsity {state.pending:.3f} has not been judged yet; the model is saved as the last " \
           f"decision left it (sparsity {state.ratio:.3f})" in caplog.text
    saved = AutoPrunedModel.from_pretrained(tmp_path / "saved").eval()
    ids = torch.tensor(toy_dataset(8, seed=3)["input_ids"])
    with torch.no_grad():
        assert (saved(input_ids=ids).logits - trainer.model.eval()(input_ids=ids).logits).abs().max() <= 1e-5
    # the card describes the saved structure, not the candidate's
    card = (tmp_path / "saved" / "README.md").read_text()
    saved_groups = kept_structure(saved)
    candidate = copy.deepcopy(trainer.model)
    get_masks(candidate).load_state_dict(seen["candidate"])
    assert saved_groups == kept_structure(trainer.model) != kept_structure(candidate)
    for name, group in saved_groups.items():
        assert f"| {name} | {group['kind']} | {group['kept']} / {group['original']} |" in card
    assert trainer.pruning_summary().groups == saved_groups


def test_gradient_checkpointing_on_a_bart_classifier_ends_with_its_report(tmp_path):
    """The end of a run profiles the pruned model with a FLOP counter, which asserted on BART's embeddings under
    gradient checkpointing after every step had run: no report, no compaction."""
    from test_seq2seq_families import tiny_seq2seq_config

    data = toy_dataset().map(lambda row: {"input_ids": row["input_ids"][:-1] + [2]})  # one <eos> a row, last
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(tiny_seq2seq_config("bart", num_labels=3))
    trainer = AdaptivePruningTrainer(model=model, args=make_args(tmp_path, gradient_checkpointing=True, max_steps=24,
                                                                 pruning_tolerance=1.0),
                                     train_dataset=data, eval_dataset=data.select(range(48)))
    trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert trainer.controller.state.ratio > 0 and report["comparison"]["layer_flops_removed"] > 0
