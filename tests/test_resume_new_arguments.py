"""Resuming a checkpoint under other (or differently spelled) pruning arguments: what goes on, and what is refused
before training with a message that says why."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hf_adaprune.trainer.checkpoint import PRUNING_STATE_FILE, read_pruning_state
from hf_adaprune.trainer.distillation import TEACHER_FOLDER

from conftest import tiny_model
from test_trainer import make_trainer

# a quick schedule: reference at step 6, decisions every 4 steps; checkpoint-4 is before the reference, checkpoint-12
# has kept heads and FFN neurons removed
SCHEDULE = dict(pruning_target=0.8, pruning_initial_step=0.1, pruning_interval=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    make_trainer(out, save_strategy="steps", save_steps=4, max_steps=12, **SCHEDULE).train()
    return out


def removed(state: dict, key: str, suffix: str) -> int:
    return sum(int((mask < 1).sum()) for name, mask in state[key].items() if name.endswith(suffix))


@pytest.mark.parametrize("overrides, dropped, structures", [
    (dict(prune="heads"), "encoder.layer.0.ffn, encoder.layer.1.ffn, encoder.layer.2.ffn", "heads"),
    # layer 1: the candidate masked at the checkpoint, pending its decision
    (dict(prune="ffn"), "encoder.layer.1.attention, encoder.layer.2.attention", "ffn"),
    (dict(pruning_roles="encoder_self"), "encoder.layer.0.ffn, encoder.layer.1.ffn, encoder.layer.2.ffn", "heads"),
])
def test_resume_may_stop_pruning_a_kind_only_while_nothing_of_it_was_removed(run, tmp_path, overrides, dropped,
                                                                             structures):
    """Head and FFN masks are attached whatever --prune names: a resume that no longer pruned FFN neurons the
    checkpoint removed went on with them removed, and its report said only heads were pruned."""
    state = read_pruning_state(run / "checkpoint-12")
    assert removed(state, "accepted_masks", ".ffn") > 0 and removed(state, "accepted_masks", ".attention") > 0
    trainer = make_trainer(tmp_path / "late", pruning_resume_with_new_arguments=True, max_steps=14, **SCHEDULE,
                           **overrides)
    with pytest.raises(ValueError) as info:
        trainer.train(resume_from_checkpoint=str(run / "checkpoint-12"))
    assert str(info.value) == (
        f"the checkpoint removed structures of groups this run does not prune ({dropped}): resuming without them "
        "would bring them back. Resume with the checkpoint's --prune kinds and --pruning_roles (its arguments are "
        f"in {PRUNING_STATE_FILE})")
    assert not (tmp_path / "late" / "pruning_report.json").exists()  # refused at on_train_begin, before a step
    # before the reference nothing was removed: the run goes on without those masks, its report and model agree
    assert removed(read_pruning_state(run / "checkpoint-4"), "masks", "") == 0
    early = make_trainer(tmp_path / "early", pruning_resume_with_new_arguments=True, max_steps=12, **SCHEDULE,
                         **overrides)
    early.train(resume_from_checkpoint=str(run / "checkpoint-4"))
    report = json.loads((tmp_path / "early" / "pruning_report.json").read_text())
    pruned = {group.name for group in early.pruning_groups}
    assert report["structures"] == structures and report["final_sparsity"] > 0
    assert all(group["kept"] == group["original"] for name, group in report["groups"].items() if name not in pruned)


@pytest.mark.parametrize("prune", ["heads,ffn", "ffn,heads", " ffn , heads ,both"])
def test_resume_takes_the_same_kinds_spelled_otherwise_for_the_same_arguments(run, tmp_path, prune):
    """'both' = 'heads,ffn' = 'ffn,heads': the checkpoint (written with the default 'both') resumes without
    --pruning_resume_with_new_arguments."""
    trainer = make_trainer(tmp_path, prune=prune, max_steps=13, **SCHEDULE)
    trainer.train(resume_from_checkpoint=str(run / "checkpoint-12"))
    assert trainer.state.global_step == 13


def test_a_checkpoint_that_recorded_prune_as_typed_resumes_under_another_spelling(run, tmp_path):
    """Checkpoints written before the record was normalised hold --prune and --pruning_roles as given."""
    checkpoint = tmp_path / "checkpoint-12"
    shutil.copytree(run / "checkpoint-12", checkpoint)
    state = torch.load(checkpoint / PRUNING_STATE_FILE, weights_only=True)
    state["arguments"].update(prune="ffn,heads", pruning_roles="encoder,encoder_self")
    torch.save(state, checkpoint / PRUNING_STATE_FILE)
    assert read_pruning_state(checkpoint)["arguments"]["prune"] == "heads,ffn"
    trainer = make_trainer(tmp_path / "out", prune="both", pruning_roles="encoder_self,encoder", max_steps=13,
                           **SCHEDULE)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 13
    other = make_trainer(tmp_path / "other", prune="heads", pruning_roles="encoder,encoder_self", max_steps=13,
                         **SCHEDULE)  # a real change: named
    with pytest.raises(ValueError, match=r"\(--prune: checkpoint 'heads,ffn', now 'heads'\)"):
        other.train(resume_from_checkpoint=str(checkpoint))


def test_distillation_turned_on_after_the_reference_needs_a_named_teacher(run, tmp_path):
    """The default teacher is the dense model at the reference, which a resumed run does not have: without a named
    teacher the run trained on the task loss alone (even at alpha 0), saying nothing."""
    distil = dict(distillation=True, distillation_alpha=0.0, pruning_resume_with_new_arguments=True, max_steps=14,
                  **SCHEDULE)
    trainer = make_trainer(tmp_path / "default", **distil)
    with pytest.raises(ValueError) as info:
        trainer.train(resume_from_checkpoint=str(run / "checkpoint-12"))
    assert str(info.value) == (
        "--distillation is on, but the checkpoint was written without it after its pruning reference was taken: the "
        "default teacher is the dense model as it stood at the reference, which a resumed run no longer has, so it "
        "would train without distillation. Name a teacher with --teacher_model_name_or_path (e.g. the dense model "
        "the run started from, fine-tuned for the task), resume with --distillation false, or start a new run from "
        "the dense model")
    assert trainer.state.global_step == 0
    # a named teacher is loaded when the trainer is built: the resumed run distils from it
    tiny_model("bert").save_pretrained(tmp_path / "teacher")
    named = make_trainer(tmp_path / "named", teacher_model_name_or_path=str(tmp_path / "teacher"), **distil)
    ran = []
    step = named.training_step
    named.training_step = lambda *a, **k: (step(*a, **k), ran.append(named._teacher_ran))[0]
    named.train(resume_from_checkpoint=str(run / "checkpoint-12"))
    assert named.state.global_step == 14 and ran == [True, True]
    assert not (tmp_path / "named" / TEACHER_FOLDER).exists()
    # before the reference the default teacher is still to be taken: the resumed run takes it
    early = make_trainer(tmp_path / "early", **distil)
    early.train(resume_from_checkpoint=str(run / "checkpoint-4"))
    assert (tmp_path / "early" / TEACHER_FOLDER).is_dir()


@pytest.mark.parametrize("overrides", [dict(pruning_criterion="fisher"), dict(pruning_score_ema=0.9)])
def test_resume_under_another_score_starts_the_scores_again(run, tmp_path, caplog, overrides):
    """A Taylor checkpoint resumed with --pruning_criterion fisher continued the Taylor running mean with squared
    values (up to 45% off a Fisher run's scores): the scores now start again at the resumed step, said in a warning."""
    import logging

    trainer = make_trainer(tmp_path, pruning_resume_with_new_arguments=True, max_steps=12, **SCHEDULE, **overrides)
    seen = []
    original = trainer.load_pruning_state_dict

    def load_and_look(state):
        original(state)
        seen.append(trainer.importance.num_updates)

    trainer.load_pruning_state_dict = load_and_look
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train(resume_from_checkpoint=str(run / "checkpoint-8"))
    key, value = next(iter(overrides.items()))
    saved = {"pruning_criterion": "taylor", "pruning_score_ema": 0.0}[key]
    assert (f"resuming with --{key} {value!r} (checkpoint {saved!r}): the checkpoint's scores are of another kind and "
            "are not continued; the scores start again from this step") in caplog.text
    assert seen == [0] and read_pruning_state(run / "checkpoint-8")["importance"]["num_updates"] == 8
    assert trainer.importance.num_updates == 4  # steps 9-12 only
