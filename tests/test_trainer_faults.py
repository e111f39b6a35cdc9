"""Bad arguments, interrupted or damaged checkpoints and unwritable folders: a clear error before training."""

from __future__ import annotations

import json
import logging
import math
import pickle
import shutil

import pytest
import torch

from hf_adaprune.trainer.checkpoint import (PRUNING_STATE_FILE, new_arguments_problem, read_pruning_state,
                                           resolve_resume_checkpoint)

from hf_adaprune import AdaptivePruningTrainer
from hf_adaprune.trainer.eval_order import first_rows

from conftest import tiny_model
from test_trainer import make_args, make_trainer, toy_dataset


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    make_trainer(out, save_strategy="steps", save_steps=12, max_steps=30).train()
    return out


def copy_run(source, target, *drop_states):
    shutil.copytree(source, target)
    for step in drop_states:
        (target / f"checkpoint-{step}" / PRUNING_STATE_FILE).unlink()
    return target


@pytest.mark.parametrize("overrides, message", [
    (dict(pruning_tolerance=float("nan")), "--pruning_tolerance must be a finite number; got nan"),
    (dict(pruning_target=float("inf")), "--pruning_target must be a finite number; got inf"),
    (dict(pruning_step_growth=float("nan")), "--pruning_step_growth must be a finite number"),
    (dict(pruning_eval_samples=0), "--pruning_eval_samples must be >= 1"),
    (dict(pruning_eval_samples=-3), "--pruning_eval_samples must be >= 1"),
    (dict(pruning_seq_len=0), "--pruning_seq_len must be >= 1"),
])
def test_bad_numbers_fail_at_parse_time(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_schedule_without_room_for_a_decision_warns_with_the_numbers(tmp_path, caplog):
    trainer = make_trainer(tmp_path, max_steps=8, pruning_warmup_steps=6, pruning_interval=6)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    assert "max_steps 8 - pruning_warmup_steps 6 leaves 2 steps, fewer than pruning_interval 6; one pruning step " \
        "at most is tried, judged at the end of training after 2 steps" in caplog.text
    kept = [d for d in trainer.pruning_summary().decisions if d["event"] == "keep"]
    assert len(kept) <= 1 and "the model will not be pruned" not in caplog.text  # it may be: the warning says so
    caplog.clear()
    no_room = make_trainer(tmp_path / "no_room", max_steps=6, pruning_warmup_steps=6, pruning_interval=6)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        no_room.train()
    assert "leaves no step after the reference; the model will not be pruned" in caplog.text
    assert no_room.pruning_summary().final_sparsity == 0


def test_logs_say_what_the_masks_remove_when_floors_stop_the_selection(tmp_path):
    import transformers

    trainer = make_trainer(tmp_path, prune="heads", min_heads_per_layer=3, pruning_target=0.6,
                           pruning_initial_step=0.2, pruning_tolerance=10.0)
    logged = []
    trainer.add_callback(type("Spy", (transformers.TrainerCallback,), {
        "on_log": lambda self, args, state, control, logs=None, **kw: logged.append(dict(logs or {}))}))
    trainer.train()
    decisions = [entry for entry in logged if "pruning/sparsity_selected" in entry]
    assert decisions[-1]["pruning/sparsity_kept"] > 0.25  # asked for
    assert decisions[-1]["pruning/sparsity_selected"] == pytest.approx(0.25)  # 1 of 4 heads per layer at most
    assert trainer.pruning_summary().final_sparsity == pytest.approx(0.25)


def test_a_nan_reference_is_named_and_the_report_stays_strict_json(tmp_path, caplog):
    import json

    data = toy_dataset()
    trainer = AdaptivePruningTrainer(
        model=tiny_model("bert"), args=make_args(tmp_path, pruning_metric="score", pruning_greater_is_better=True),
        train_dataset=data, eval_dataset=data.select(range(48)), compute_metrics=lambda p: {"score": float("nan")})
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    assert "the pruning reference score is nan at step 6" in caplog.text
    text = (tmp_path / "pruning_report.json").read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in pruning_report.json"))
    assert report["metric_before"] is None and report["final_sparsity"] == 0
    # it stops there, naming the reference (it masked and trained 5 candidates, then said "step below minimum")
    assert report["stop_reason"] == "the reference score is nan: no step can be judged against it"
    assert [d["event"] for d in report["decisions"]] == ["reference", "stop"]
    assert "no finite pair to compare" in caplog.text


def test_an_infinite_reference_prunes_nothing(tmp_path, caplog):
    """A perplexity that overflowed to inf at the reference: inf - inf is NaN, 1e6 - inf is -inf, and every candidate
    counted as within tolerance (the run pruned to its target and reported "target reached")."""
    data = toy_dataset()
    values = iter([float("inf")] * 2 + [1e6] * 50)
    trainer = AdaptivePruningTrainer(
        model=tiny_model("bert"), args=make_args(tmp_path, pruning_metric="perplexity"),
        train_dataset=data, eval_dataset=data.select(range(48)), compute_metrics=lambda p: {"perplexity": next(values)})
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    summary = trainer.pruning_summary()
    assert summary.final_sparsity == 0 and summary.stop_reason.startswith("the reference perplexity is inf")
    assert summary.final_check["within_tolerance"] is False


@pytest.mark.parametrize("metric", ["loss", "accuracy"])
def test_decisions_read_every_row_under_dataloader_drop_last(tmp_path, metric):
    """drop_last is for training batches: the 2-row metric check and the decisions keep their last batch."""
    trainer = make_trainer(tmp_path, pruning_metric=metric, dataloader_drop_last=True, pruning_eval_samples=40)
    trainer.train()  # the metric check reads 2 rows, fewer than the eval batch of 32: it failed with no metric
    assert next(d for d in trainer.pruning_summary().decisions if d["event"] == "reference")["metric"] is not None
    if metric == "accuracy":
        seen, score = [], trainer.compute_metrics
        trainer.compute_metrics = lambda p: (seen.append(len(p.label_ids)), score(p))[1]
        trainer._evaluate_rows(40)  # 32 + 8: the short last batch counts
        trainer.predict(first_rows(trainer.eval_dataset, 40))  # the user's own predict drops it, as asked
        assert seen == [40, 32]
    assert trainer.args.dataloader_drop_last is True


def test_unwritable_output_dir_fails_before_the_first_step(tmp_path):
    # (tests run as root, for whom permissions do not block writes: a file where the folder should be does)
    out = tmp_path / "out"
    trainer = make_trainer(out)
    out.rmdir()
    out.write_text("not a folder")
    with pytest.raises(PermissionError, match="is not writable"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_resume_with_other_pruning_arguments_is_refused(run_with_checkpoints, tmp_path):
    trainer = make_trainer(run_with_checkpoints, pruning_metric="loss", pruning_target=0.3)
    with pytest.raises(ValueError) as info:
        trainer.train(resume_from_checkpoint=str(run_with_checkpoints / "checkpoint-12"))
    message = str(info.value)
    assert "--pruning_metric: checkpoint 'accuracy', now 'loss'" in message
    assert "--pruning_target: checkpoint 0.5, now 0.3" in message and "--pruning_resume_with_new_arguments" in message
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("old_value", ["unset", "absent"])
def test_a_checkpoint_from_before_raw_scores_were_the_default_reads_as_normalised(run_with_checkpoints, tmp_path,
                                                                                old_value):
    """pruning_normalize_scores was None (normalised while training) or absent in checkpoints written before
    2026-12-05: resumed under today's default (raw) its ranking would change silently."""
    out = copy_run(run_with_checkpoints, tmp_path / "run")
    path = out / "checkpoint-12" / PRUNING_STATE_FILE
    state = torch.load(path, weights_only=True)
    if old_value == "unset":
        state["arguments"]["pruning_normalize_scores"] = None
    else:
        del state["arguments"]["pruning_normalize_scores"]
    torch.save(state, path)
    assert read_pruning_state(out / "checkpoint-12")["arguments"]["pruning_normalize_scores"] is True
    with pytest.raises(ValueError, match="--pruning_normalize_scores: checkpoint True, now False"):
        make_trainer(out).train(resume_from_checkpoint=str(out / "checkpoint-12"))
    trainer = make_trainer(out, pruning_normalize_scores=True)  # the checkpoint's ranking: resumes
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-12"))
    assert trainer.state.global_step == 30


def test_a_flops_checkpoint_that_recorded_the_latency_options_resumes_under_the_same_arguments(run_with_checkpoints,
                                                                                               tmp_path):
    """Checkpoints written before 2026-12-05 recorded the latency-table options under every target type; they are
    no longer recorded (nor compared) under flops, and a resume with unchanged arguments was refused as changed."""
    out = copy_run(run_with_checkpoints, tmp_path / "run")
    path = out / "checkpoint-12" / PRUNING_STATE_FILE
    state = torch.load(path, weights_only=True)
    assert state["arguments"]["pruning_target_type"] == "flops"
    state["arguments"].update(pruning_latency_batch_size=1, pruning_latency_seq_len=None, pruning_generation_tokens=16)
    torch.save(state, path)
    trainer = make_trainer(out)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-12"))
    assert trainer.state.global_step == 30


def test_resume_with_other_arguments_when_asked(run_with_checkpoints, tmp_path, caplog):
    out = copy_run(run_with_checkpoints, tmp_path / "run")
    trainer = make_trainer(out, pruning_tolerance=0.25, pruning_resume_with_new_arguments=True)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-24"))
    assert "--pruning_tolerance: checkpoint 0.3, now 0.25" in caplog.text
    assert trainer.state.global_step == 30


def test_resume_with_new_arguments_refuses_another_metric_once_the_reference_was_measured(run_with_checkpoints):
    trainer = make_trainer(run_with_checkpoints, pruning_metric="loss", pruning_resume_with_new_arguments=True)
    with pytest.raises(ValueError, match=r"reference and decisions were measured with other arguments \(--pruning_metric: "
                                         r"checkpoint 'accuracy', now 'loss'\).*cannot measure the dense model again"):
        trainer.train(resume_from_checkpoint=str(run_with_checkpoints / "checkpoint-12"))
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("change", [dict(pruning_criterion="fisher"), dict(pruning_score_ema=0.5),
                                    dict(prune="heads,ffn,layers")])
def test_resume_from_a_decision_step_with_scores_that_start_again_waits_for_them(tmp_path, change):
    # the checkpoint at step 12 was written right after a decision, the next candidate due at the next step: its
    # scores, reset (another criterion, an EMA) or missing (a kind added), failed with "no importance scores yet"
    base = dict(max_steps=18, pruning_target=0.6, pruning_tolerance=10.0, save_strategy="steps", save_steps=12)
    make_trainer(tmp_path, **base).train()
    assert read_pruning_state(tmp_path / "checkpoint-12")["controller"]["pending"] is None
    resumed = make_trainer(tmp_path, **{**base, "save_strategy": "no", "max_steps": 30,
                                        "pruning_resume_with_new_arguments": True, **change})
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-12"))
    tried = [(d["event"], d["training_step"]) for d in resumed.controller.state.history if d["event"] != "reference"]
    after = [entry for entry in tried if entry[1] is not None and entry[1] > 12]
    assert after and after[0][0] in ("keep", "rollback"), tried
    assert resumed.controller.state.selected > 0.2


def test_resume_on_other_decision_rows_or_another_eval_batch_size_for_a_loss_is_refused(tmp_path, caplog):
    # a split drawn without a seed gave other rows: decisions were compared with a reference measured on others
    # (a final check within tolerance on rows where the model had lost more); a loss depends on the batch size
    base = dict(max_steps=18, pruning_metric="loss", pruning_tolerance=10.0, save_strategy="steps", save_steps=12)
    make_trainer(tmp_path, **base).train()
    checkpoint = str(tmp_path / "checkpoint-12")
    assert read_pruning_state(checkpoint)["decision_rows"]["rows"] == 48
    data = toy_dataset()
    other = AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, **base), train_dataset=data,
                                   eval_dataset=data.select(range(48, 96)))
    with pytest.raises(ValueError, match=r"the decision rows differ from those the checkpoint's reference was measured "
                                         r"on \(48 rows, other values\)"):
        other.train(resume_from_checkpoint=checkpoint)
    with pytest.raises(ValueError, match="the eval batch size is 8, the checkpoint's reference was measured at 32"):
        make_trainer(tmp_path, **base, per_device_eval_batch_size=8).train(resume_from_checkpoint=checkpoint)
    allowed = AdaptivePruningTrainer(model=tiny_model("bert"), train_dataset=data, eval_dataset=data.select(range(48, 96)),
                                     args=make_args(tmp_path, **base, pruning_resume_with_new_arguments=True))
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        allowed.train(resume_from_checkpoint=checkpoint)
    assert "resuming all the same (--pruning_resume_with_new_arguments): the decision rows differ" in caplog.text
    make_trainer(tmp_path, **base).train(resume_from_checkpoint=checkpoint)  # the same rows: resumes
    # a column the model does not read (raw text, a decoded clip) is not part of the record
    with_text = data.select(range(48)).add_column("text", [f"row {i}" for i in range(48)])
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, **base), train_dataset=data,
                                     eval_dataset=with_text)
    assert trainer.decision_rows() == read_pruning_state(checkpoint)["decision_rows"]
    # a transform that draws random numbers (masking, noise) gives the rows decisions read under their seed: the
    # record taken after training steps and the one at a resume's start differed, and every resume was refused
    def noisy(batch):
        ids = torch.tensor(batch["input_ids"])
        return {"input_ids": torch.where(torch.rand(ids.shape) < 0.2, 1, ids), "labels": batch["labels"]}

    trainer.eval_dataset = data.select(range(48)).with_transform(noisy)
    records = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        records.append(trainer.decision_rows())
    assert records[0] == records[1]


def test_the_decision_rows_record_reads_values_whatever_the_format():
    import datasets
    import numpy as np

    from hf_adaprune.trainer.checkpoint import decision_rows_record

    features = [np.random.default_rng(i).random((4, 6), dtype=np.float32) for i in range(3)]
    rows = datasets.Dataset.from_dict({"input_features": features, "labels": [[1, 2], [3], [4, 5, 6]],
                                       "label": [0, 1, 1], "score": [0.5, 1.0, 0.25]})
    record = decision_rows_record(rows, None)
    for formatted in (rows.with_format("torch"), rows.with_format("numpy"), [rows[i] for i in range(3)]):
        assert decision_rows_record(formatted, None) == record
    # a bf16 tensor (numpy has no such dtype: the reference step failed) and an object whose repr holds its address
    # (a decoded image or clip: every resume was refused)
    objects = [{"x": torch.ones(2, dtype=torch.bfloat16), "clip": object()} for _ in range(2)]
    assert decision_rows_record(objects, None) == decision_rows_record([dict(row, clip=object()) for row in objects],
                                                                       None)
    # lists of tensors numpy cannot take (bf16, requiring grad): the reference step failed
    nested = [{"extra": [torch.ones(2, dtype=torch.bfloat16), torch.zeros(3, requires_grad=True)]}]
    assert decision_rows_record(nested, None) == decision_rows_record(
        [{"extra": [torch.ones(2, dtype=torch.bfloat16), torch.zeros(3)]}], None)
    features[1][2, 3] += 1e-3
    other = datasets.Dataset.from_dict({"input_features": features, "labels": [[1, 2], [3], [4, 5, 6]],
                                        "label": [0, 1, 1], "score": [0.5, 1.0, 0.25]})
    assert decision_rows_record(other, None)["sha256"] != record["sha256"]


def test_resume_from_a_checkpoint_saved_without_the_optimizer_warns(tmp_path, caplog):
    # save_only_model=True: the learning rate restarted at its peak and later decisions differed, without a word
    base = dict(max_steps=18, save_strategy="steps", save_steps=12, save_only_model=True)
    make_trainer(tmp_path, **base).train()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        make_trainer(tmp_path, **base).train(resume_from_checkpoint=str(tmp_path / "checkpoint-12"))
    assert "holds no optimizer.pt or scheduler.pt (saved with save_only_model=True?)" in caplog.text


def test_resume_on_another_number_of_processes_warns(run_with_checkpoints, tmp_path, caplog):
    out = copy_run(run_with_checkpoints, tmp_path / "run")
    path = out / "checkpoint-24" / PRUNING_STATE_FILE
    state = torch.load(path, weights_only=True)
    assert state["world_size"] == 1
    torch.save(dict(state, world_size=2), path)
    trainer = make_trainer(out)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-24"))
    assert "resuming on 1 process(es) from a checkpoint written by 2: each process now reads other" in caplog.text


def test_new_arguments_problem_names_what_a_resumed_state_cannot_follow():
    saved = {"pruning_metric": "accuracy", "pruning_target": 0.8, "pruning_target_type": "flops"}
    state = {"reference": 0.9, "ratio": 0.5, "pending": 0.7}
    assert new_arguments_problem(saved, dict(saved, pruning_target=0.9), state) is None  # higher: followed
    assert new_arguments_problem(saved, dict(saved, pruning_tolerance=0.5), state) is None
    assert "already kept a ratio of 0.500 of the FLOPs, beyond --pruning_target 0.4" in new_arguments_problem(
        saved, dict(saved, pruning_target=0.4), state)
    assert "is trying a ratio of 0.700 of the FLOPs, beyond --pruning_target 0.6" in new_arguments_problem(
        saved, dict(saved, pruning_target=0.6), state)
    counted = dict(saved, pruning_target_type="structures")  # a fraction of heads and neurons, not of FLOPs
    assert "already kept a ratio of 0.500 of the heads and neurons, beyond --pruning_target 0.4" in \
        new_arguments_problem(counted, dict(counted, pruning_target=0.4), state)
    assert "--pruning_metric: checkpoint 'accuracy', now 'f1'" in new_arguments_problem(
        saved, dict(saved, pruning_metric="f1"), state)
    # before the reference nothing was measured: another metric is simply used from the start
    assert new_arguments_problem(saved, dict(saved, pruning_metric="f1"), {"reference": None, "ratio": 0.0}) is None


def test_resume_with_a_higher_target_goes_on_pruning(tmp_path):
    first = make_trainer(tmp_path / "run", pruning_target=0.3, pruning_initial_step=0.3, pruning_tolerance=1.0,
                         max_steps=18, save_strategy="steps", save_steps=18)
    first.train()
    assert first.pruning_summary().stop_reason == "target reached"
    resumed = make_trainer(tmp_path / "run", pruning_target=0.6, pruning_initial_step=0.3, pruning_tolerance=1.0,
                           max_steps=36, pruning_resume_with_new_arguments=True)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-18"))
    summary = resumed.pruning_summary()
    events = [(d["event"], round(d["ratio"], 3)) for d in summary.to_dict()["decisions"]]
    assert ("resume", 0.3) in events and ("keep", 0.6) in events, events
    assert summary.final_sparsity > 0.5 and summary.stop_reason == "target reached"


@pytest.mark.parametrize("flag", [True, "true", "True"])
def test_resume_true_falls_back_to_the_newest_complete_checkpoint(run_with_checkpoints, tmp_path, caplog, flag):
    assert sorted(p.name for p in run_with_checkpoints.glob("checkpoint-*")) == [
        "checkpoint-12", "checkpoint-24", "checkpoint-30"]
    out = copy_run(run_with_checkpoints, tmp_path / "run", 24, 30)
    trainer = make_trainer(out)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train(resume_from_checkpoint=flag)
    assert "resuming from" in caplog.text and "checkpoint-12" in caplog.text
    assert trainer.state.global_step == 30


def test_resume_true_picks_the_newest_of_several_complete_checkpoints(tmp_path, caplog):
    """With more than one complete checkpoint, ``True`` resumes from the newest complete one (not the oldest), and
    an incomplete newer one is passed over with a warning naming what is resumed from. Folders only: the choice
    reads nothing but ``pruning_state.pt``'s presence; step numbers out of directory order on purpose."""
    for step, complete in ((5, True), (40, True), (120, False), (9, True)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / PRUNING_STATE_FILE).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        assert resolve_resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-40")
    assert "checkpoint-120 has no pruning_state.pt" in caplog.text and "resuming from" in caplog.text
    (tmp_path / "checkpoint-120" / PRUNING_STATE_FILE).write_bytes(b"")
    assert resolve_resume_checkpoint("true", str(tmp_path)) == str(tmp_path / "checkpoint-120")


def test_resume_true_without_a_complete_checkpoint_names_those_that_exist(run_with_checkpoints, tmp_path):
    out = copy_run(run_with_checkpoints, tmp_path / "run", 12, 24, 30)
    with pytest.raises(ValueError, match=r"complete pruning checkpoints in \S+: none; without pruning_state.pt: "
                                         r"checkpoint-30, checkpoint-24, checkpoint-12"):
        make_trainer(out).train(resume_from_checkpoint=True)


def test_a_run_folder_given_as_the_checkpoint_names_its_own_checkpoints(tmp_path):
    """The output folder passed for a checkpoint: the message lists its checkpoints (not its parent's)."""
    for step in (12, 24):
        (tmp_path / "run" / f"checkpoint-{step}").mkdir(parents=True)
        (tmp_path / "run" / f"checkpoint-{step}" / PRUNING_STATE_FILE).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"it is a run's output folder, not a checkpoint; complete pruning "
                                                r"checkpoints in \S+run: checkpoint-24, checkpoint-12; pass one of "
                                                r"them, or resume_from_checkpoint=True"):
        read_pruning_state(tmp_path / "run")


@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "pickled object"])
def test_damaged_pruning_state_names_the_file(run_with_checkpoints, tmp_path, damage):
    out = copy_run(run_with_checkpoints, tmp_path / "run")
    path = out / "checkpoint-12" / PRUNING_STATE_FILE
    good = path.read_bytes()
    payload = {"empty": b"", "truncated": good[: len(good) // 2], "random": bytes(range(256)) * 8}.get(damage)
    if payload is None:  # a pickle that would run code under weights_only=False
        torch.save({"controller": {}, "evil": pickle.loads(pickle.dumps(ValueError("x")))}, path)
    else:
        path.write_bytes(payload)
    trainer = make_trainer(out)
    with pytest.raises(ValueError, match=f"cannot read the pruning state {path}"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-12"))
    assert trainer.state.global_step == 0


def test_pruning_state_loads_weights_only(run_with_checkpoints):
    state = torch.load(run_with_checkpoints / "checkpoint-24" / PRUNING_STATE_FILE, weights_only=True)
    assert state["arguments"]["pruning_metric"] == "accuracy" and state["controller"]["history"]
    assert read_pruning_state(run_with_checkpoints / "checkpoint-24")["last_prune_step"] == state["last_prune_step"]


def test_frozen_groups_are_refused_when_the_trainer_is_built(tmp_path):
    # a PEFT model after merge_and_unload() keeps its base weights frozen: no gradient would ever score them
    model = tiny_model("bert")
    model.bert.encoder.layer[0].requires_grad_(False)
    with pytest.raises(ValueError, match=r"2 of the 6 groups to prune have parameters that do not require gradients "
                                         r"\(encoder\.layer\.0\.attention, encoder\.layer\.0\.ffn\).*requires_grad_"):
        make_trainer(tmp_path, model=model)
    frozen_embeddings = tiny_model("bert")
    frozen_embeddings.bert.embeddings.requires_grad_(False)  # not part of any pruned group: fine
    make_trainer(tmp_path, model=frozen_embeddings, max_steps=8).train()


def test_a_compiled_model_scores_and_removes_whole_layers(tmp_path):
    """Under torch_compile the layer gates still run: every step has a loss, the layers get scores, and the layer the
    decision removed is gone from the compacted model, whose outputs the final check measured (aot_eager: the
    graph capture of torch.compile without inductor's code generation, which the suite has no time for; inductor
    behaves the same on CPU)."""
    trainer = make_trainer(tmp_path, prune="layers", torch_compile=True, torch_compile_backend="aot_eager",
                           pruning_target=0.3, pruning_initial_step=0.3, pruning_tolerance=1.0, max_steps=12)
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)
    layer_scores = trainer.importance.scores(trainer.pruned_model, trainer.pruning_groups)["encoder.layer"]
    assert bool((layer_scores > 0).all())
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["final_sparsity"] == pytest.approx(1 / 3, abs=0.01)
    assert len(trainer.model.bert.encoder.layer) == 2  # one of the 3 layers removed
    assert report["final_check"]["metric"] == pytest.approx(trainer.evaluate()["eval_accuracy"], abs=1e-6)


def test_decisions_and_user_evaluations_keep_their_rows_with_persistent_workers(tmp_path):
    # transformers caches one eval dataloader under persistent workers; decisions must not take or replace it
    trainer = make_trainer(tmp_path, pruning_metric="loss", pruning_eval_samples=8, dataloader_num_workers=1,
                           dataloader_persistent_workers=True, eval_strategy="steps", eval_steps=10,
                           eval_on_start=True, max_steps=20)
    rows = []
    loop = trainer.evaluation_loop

    def counting_loop(*args, **kwargs):
        output = loop(*args, **kwargs)
        rows.append((kwargs.get("metric_key_prefix", "eval"), output.num_samples))
        return output

    trainer.evaluation_loop = counting_loop
    trainer.train()
    trainer.evaluate()
    assert rows[0] == ("pruning_eval", 2)  # the metric check before the first step
    assert ("eval", 48) in rows and ("pruning_eval", 8) in rows
    assert all(n == (48 if prefix == "eval" else 8) for prefix, n in rows[1:]), rows


def test_multi_label_head_trains_with_a_named_metric(tmp_path):
    data = toy_dataset()
    multi_hot = [[float(y == 0), float(y >= 1), float(y == 2)] for y in data["labels"]]
    data = data.remove_columns("labels").add_column("labels", multi_hot)
    model = tiny_model("bert", problem_type="multi_label_classification")
    trainer = AdaptivePruningTrainer(model=model, args=make_args(tmp_path, pruning_metric="f1", max_steps=12),
                                     train_dataset=data, eval_dataset=data.select(range(48)))
    trainer.train()
    assert 0.0 <= trainer.final_check["metric"] <= 1.0


def test_resume_may_drop_a_structure_kind_only_while_nothing_of_it_was_removed(tmp_path):
    out = tmp_path / "run"
    make_trainer(out, prune="heads,ffn,layers", save_strategy="steps", save_steps=12, max_steps=12).train()
    checkpoint = out / "checkpoint-12"
    state = read_pruning_state(checkpoint)
    for key in ("masks", "accepted_masks"):
        state[key]["encoder.layer"] = torch.tensor([1.0, 0.0, 1.0])  # the second layer removed
    torch.save(state, checkpoint / PRUNING_STATE_FILE)
    trainer = make_trainer(out, prune="heads,ffn", pruning_resume_with_new_arguments=True, max_steps=18,
                           save_strategy="steps", save_steps=12)
    with pytest.raises(ValueError, match=r"removed structures of groups this run does not prune "
                                         r"\(encoder\.layer\): resuming without them would bring them back"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    for key in ("masks", "accepted_masks"):
        state[key]["encoder.layer"] = torch.ones(3)  # no layer removed: its masks are simply dropped
    torch.save(state, checkpoint / PRUNING_STATE_FILE)
    trainer = make_trainer(out, prune="heads,ffn", pruning_resume_with_new_arguments=True, max_steps=18)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 18


def test_no_eval_dataset_is_refused_when_the_trainer_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"the pruning controller needs an eval_dataset to measure the metric on$"):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path), train_dataset=toy_dataset())


def test_auto_find_batch_size_is_refused_at_parse_time(tmp_path):
    # its restart from step 0 after an out-of-memory error would keep the aborted start's scores, masks and reference
    with pytest.raises(ValueError, match="--auto_find_batch_size cannot be combined with pruning.*"
                                         "--per_device_train_batch_size"):
        make_args(tmp_path, auto_find_batch_size=True)


def test_hyperparameter_search_is_refused_before_any_trial(tmp_path):
    trainer = AdaptivePruningTrainer(model_init=lambda: tiny_model("bert"), args=make_args(tmp_path),
                                     train_dataset=toy_dataset(), eval_dataset=toy_dataset().select(range(16)))
    with pytest.raises(NotImplementedError, match="hyperparameter_search is not supported: a trial's pruning values "
                                                  "would reach the pruning set-up one trial late"):
        trainer.hyperparameter_search(direction="maximize", n_trials=2)
    assert trainer.state.global_step == 0


def test_batch_eval_metrics_with_a_built_in_metric_is_refused_when_the_trainer_is_built(tmp_path):
    with pytest.raises(ValueError, match="--batch_eval_metrics needs a compute_metrics that takes compute_result"):
        make_trainer(tmp_path, batch_eval_metrics=True)
    make_trainer(tmp_path, batch_eval_metrics=True, pruning_metric="loss")  # the loss needs no compute_metrics


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("metric", ["loss", "accuracy"])
def test_eval_rows_without_labels_fail_before_the_first_step(tmp_path, metric, drop_last):
    """Also under dataloader_drop_last: the 2 rows checked for labels are not dropped as an incomplete batch."""
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"),
                                     args=make_args(tmp_path, pruning_metric=metric, dataloader_drop_last=drop_last,
                                                    per_device_eval_batch_size=8),
                                     train_dataset=data, eval_dataset=data.select(range(16)).remove_columns("labels"))
    with pytest.raises(ValueError, match=f"the eval_dataset rows have no labels: pruning decisions measure "
                                         f"--pruning_metric {metric} against them"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_feature_extractor_as_processing_class_of_a_generation_metric_is_refused(tmp_path):
    from transformers import WhisperFeatureExtractor

    from hf_adaprune import AdaptivePruningSeq2SeqTrainer
    from hf_adaprune.trainer.arguments import Seq2SeqPruningArguments
    from test_seq2seq_families import tiny_seq2seq

    args = Seq2SeqPruningArguments(str(tmp_path), max_steps=4, pruning_metric="wer", predict_with_generate=True,
                                   pruning_seq_len=16, report_to="none", use_cpu=True, save_strategy="no")
    with pytest.raises(ValueError, match="processing_class is a WhisperFeatureExtractor, which has no tokenizer: "
                                         "pass the processor"):
        AdaptivePruningSeq2SeqTrainer(model=tiny_seq2seq("marian"), args=args, train_dataset=toy_dataset(),
                                      eval_dataset=toy_dataset().select(range(8)),
                                      processing_class=WhisperFeatureExtractor(feature_size=8))


def test_resume_compares_the_generation_options_a_generated_metric_is_measured_with(tmp_path):
    """BLEU / WER decisions after a resume under other beams or lengths compared values measured two ways: the
    generation options count as pruning arguments for Seq2Seq runs steered by such a metric (not by the loss)."""
    from transformers import GenerationConfig

    from hf_adaprune import Seq2SeqPruningArguments
    from hf_adaprune.trainer.arguments import pruning_arguments
    from hf_adaprune.trainer.checkpoint import check_resume_arguments

    def arguments(**overrides):
        return pruning_arguments(Seq2SeqPruningArguments(str(tmp_path), pruning_metric="sacrebleu",
                                                         predict_with_generate=True, report_to="none",
                                                         **overrides))

    saved = arguments(generation_num_beams=1, generation_max_length=32)
    with pytest.raises(ValueError) as info:
        check_resume_arguments(saved, arguments(generation_num_beams=3, generation_max_length=6), allow_new=False)
    assert "--generation_max_length: checkpoint 32, now 6" in str(info.value)
    assert "--generation_num_beams: checkpoint 1, now 3" in str(info.value)
    check_resume_arguments(saved, arguments(generation_num_beams=1, generation_max_length=32), allow_new=False)
    with_config = arguments(generation_config=GenerationConfig(num_beams=4))
    assert "num_beams" in with_config["generation_config"]  # a GenerationConfig object is stored as its JSON
    torch.save(with_config, tmp_path / "state.pt")  # what pruning_state.pt holds loads with weights_only=True
    assert torch.load(tmp_path / "state.pt", weights_only=True) == with_config
    loss_steered = pruning_arguments(Seq2SeqPruningArguments(str(tmp_path), report_to="none", generation_num_beams=3))
    assert "generation_num_beams" not in loss_steered  # the eval loss does not depend on them


def test_resuming_with_an_iterable_train_dataset_says_it_is_exact_within_the_first_pass_only(run_with_checkpoints,
                                                                                            tmp_path, caplog):
    """transformers skips the batches already read, but without a length it cannot tell where a later pass begins:
    from a checkpoint past the first pass the run went on with other batches, without a word."""
    out = copy_run(run_with_checkpoints, tmp_path / "run")
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"),
                                     args=make_args(out, save_strategy="steps", save_steps=12, max_steps=30),
                                     train_dataset=data.to_iterable_dataset(), eval_dataset=data.select(range(48)))
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-24"))
    assert "resuming with a train dataset of unknown length (iterable)" in caplog.text
    assert trainer.state.global_step == 30


def test_a_save_before_the_run_ends_removes_an_earlier_runs_report(tmp_path, caplog):
    """A second run in the same output_dir, saved before it ended (an interrupted run, a save before train()), kept
    the first run's pruning_report.json and plots beside its own model, and a push uploaded them."""
    first = make_trainer(tmp_path)
    first.train()
    assert json.loads((tmp_path / "pruning_report.json").read_text())["final_sparsity"] > 0
    second = make_trainer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        second.save_model()
    for name in ("pruning_report.json", "pruning_curve.png", "pruning_layers.png"):
        assert not (tmp_path / name).exists(), name
    assert "a report of an earlier run; this run's is written when it ends" in caplog.text
    assert (tmp_path / "model.safetensors").is_file()


def test_a_finished_run_saved_into_another_folder_writes_its_report_there(tmp_path):
    trainer = make_trainer(tmp_path / "run")
    trainer.train()
    trainer.save_model(str(tmp_path / "elsewhere"))
    report = json.loads((tmp_path / "elsewhere" / "pruning_report.json").read_text())
    assert report == json.loads((tmp_path / "run" / "pruning_report.json").read_text())
    assert (tmp_path / "elsewhere" / "pruning_curve.png").is_file()


@pytest.mark.parametrize("samples, label", [(8, "accuracy (first 8 of 48 eval rows)"), (None, "accuracy (eval)")])
def test_the_card_says_which_rows_its_metric_was_measured_on(tmp_path, samples, label):
    """With --pruning_eval_samples the card's table and model-index gave the first rows' metric as the eval set's."""
    from huggingface_hub import ModelCard

    trainer = make_trainer(tmp_path, pruning_eval_samples=samples)
    trainer.train()
    trainer.save_model()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert (report["eval_rows"], report["eval_set_rows"]) == (samples or 48, 48)
    card = (tmp_path / "README.md").read_text()
    assert f"| {label} |" in card
    trainer.create_model_card(finetuned_from="google-bert/bert-base-uncased", dataset="glue")
    results = ModelCard.load(tmp_path / "README.md").data.eval_results
    names = {result.metric_name for result in results}
    rows = "" if samples is None else ", first 8 of 48 eval rows"
    assert names == {f"accuracy (dense{rows})", f"accuracy (pruned{rows})"}


def test_resume_with_another_number_of_dataloader_workers_warns(run_with_checkpoints, tmp_path, caplog):
    """A collator drawing at random (masked-LM masking) draws in worker processes seeded by their count: decisions
    after a resume under another dataloader_num_workers read other draws than the reference did, unannounced."""
    out = copy_run(run_with_checkpoints, tmp_path / "run")
    state = torch.load(out / "checkpoint-24" / PRUNING_STATE_FILE, weights_only=True)
    assert state["decision_rows"]["workers"] == 0
    trainer = make_trainer(out, dataloader_num_workers=1)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-24"))
    assert ("dataloader_num_workers is 1, the checkpoint's pruning reference was measured with 0: a collator or "
            "transform that draws at random") in caplog.text


def test_a_reference_at_the_metrics_floor_is_named(tmp_path, caplog):
    """5 decision rows on which the model scores accuracy 0: no candidate can measure worse, so every step was kept
    up to the target, silently."""
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, pruning_tolerance=0.05),
                                     train_dataset=data, eval_dataset=data.select(range(5)))
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    assert trainer.controller.state.reference == 0.0, "the case: a reference of 0 on these rows"
    assert ("the pruning reference accuracy is 0.0 at step 6, the lowest it can measure: no step can measure worse, "
            "so every step is kept up to the target and the decisions protect nothing. "
            "Decide on a larger eval set (all its 5 rows are read now)") in caplog.text


def test_a_second_model_init_run_saved_before_it_ends_removes_the_first_runs_report(tmp_path):
    """With model_init a second train() is a new run: interrupted and saved, the first run's report stayed beside
    its model (and was written into another folder as if the interrupted run had ended)."""
    import transformers

    data = toy_dataset()
    trainer = AdaptivePruningTrainer(model_init=lambda: tiny_model("bert"), args=make_args(tmp_path / "run"),
                                     train_dataset=data, eval_dataset=data.select(range(48)))
    trainer.train()
    assert (tmp_path / "run" / "pruning_report.json").is_file()

    class Interrupt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 8:
                raise KeyboardInterrupt

    trainer.add_callback(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    trainer.save_model()
    trainer.save_model(str(tmp_path / "elsewhere"))
    assert not (tmp_path / "run" / "pruning_report.json").exists()
    assert not (tmp_path / "elsewhere" / "pruning_report.json").exists()
