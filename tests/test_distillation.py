"""Distillation from the dense model while pruning: the loss, the teacher's isolation, resume, bad input."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
import transformers

from hf_adaprune import AdaptivePruningSeq2SeqTrainer, PruningArguments
from hf_adaprune.trainer.arguments import Seq2SeqPruningArguments
from hf_adaprune.trainer.distillation import TEACHER_FOLDER, copy_teacher, prediction_mask
from hf_adaprune.trainer.trainer import PRUNING_STATE_FILE

from conftest import tiny_model
from test_seq2seq_families import tiny_seq2seq
from test_speech_families import WHISPER, audio_batch, tiny_ctc_model, tiny_whisper, whisper_features
from test_trainer import make_args, make_trainer, toy_dataset

TOL = 1e-5


def perturbed(model, seed=3, scale=0.05):
    """A copy of ``model`` with different weights: a teacher whose outputs differ from the student's."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return other


def kl(student_logits, teacher_logits, temperature):
    """KL(teacher || student) of the softened distributions, summed over classes, one value per position."""
    p = torch.softmax(teacher_logits / temperature, -1)
    return (p * (torch.log(p) - torch.log_softmax(student_logits / temperature, -1))).sum(-1)


def layer_mse(student_states, teacher_states, mask=None):
    losses = []
    for s, t in zip(student_states[1:], teacher_states[1:]):
        per_position = ((s - t) ** 2).mean(-1)
        losses.append(per_position.mean() if mask is None else (per_position * mask).sum() / mask.sum())
    return torch.stack(losses).mean()


def test_classification_loss_equals_hand_computation(tmp_path):
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    trainer = make_trainer(tmp_path, model=model, distillation=True, distillation_alpha=0.3,
                           distillation_temperature=2.5, distillation_hidden_weight=0.7)
    teacher = copy_teacher(perturbed(model))
    trainer.distillation_teacher = teacher
    ids = torch.randint(5, 99, (4, 10), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    inputs = {"input_ids": ids, "attention_mask": attention, "labels": torch.tensor([0, 1, 2, 1])}
    model.train()
    got = trainer.compute_loss(model, inputs)
    with torch.no_grad():
        s = model(**inputs, output_hidden_states=True)
        t = teacher(**inputs, output_hidden_states=True)
    task = F.cross_entropy(s.logits, inputs["labels"])
    expected = (0.3 * task + 0.7 * 2.5 ** 2 * kl(s.logits, t.logits, 2.5).mean()
                + 0.7 * layer_mse(s.hidden_states, t.hidden_states, attention))
    assert abs(got.item() - expected.item()) <= TOL
    assert got.requires_grad
    got.backward()
    assert all(p.grad is None for p in teacher.parameters()), "the teacher gets no gradient"
    model.eval()  # evaluation: the task loss alone
    assert abs(trainer.compute_loss(model, inputs).item() - task.item()) <= TOL


@pytest.mark.parametrize("accumulation", [1, 2])
def test_gradient_accumulation_keeps_alphas_balance(tmp_path, accumulation):
    # Trainer passes the step's item count, which these models' losses ignore, and then leaves the loss undivided:
    # the distillation terms were divided by the accumulation steps and the task loss was not; then the whole loss
    # was, where Trainer had left the task loss undivided (the gradients shrank by the steps when the teacher came)
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    trainer = make_trainer(tmp_path, model=model, distillation=True, distillation_alpha=0.3,
                           gradient_accumulation_steps=accumulation)
    trainer.distillation_teacher = teacher = copy_teacher(perturbed(model))
    trainer.current_gradient_accumulation_steps = accumulation
    ids = torch.randint(5, 99, (4, 10), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "labels": torch.tensor([0, 1, 2, 1])}
    got = trainer.compute_loss(model, inputs, num_items_in_batch=torch.tensor(4 * accumulation))
    with torch.no_grad():
        s, t = model(input_ids=ids), teacher(input_ids=ids)
    combined = 0.3 * F.cross_entropy(s.logits, inputs["labels"]) + 0.7 * 2.0 ** 2 * kl(s.logits, t.logits, 2.0).mean()
    assert abs(got.item() - combined.item()) <= TOL


def causal_lm():
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, is_decoder=True, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.BertLMHeadModel(config).train()


@pytest.mark.parametrize("kind", ["classifier", "causal_lm", "label_smoothing"])
@pytest.mark.parametrize("accumulation, processes", [(2, 1), (1, 2), (2, 2)])
def test_with_alpha_one_the_distilled_loss_is_the_loss_trainer_gave_before_the_teacher(tmp_path, monkeypatch, kind,
                                                                                       accumulation, processes):
    """The gradients keep their scale when distillation starts. A classifier's loss ignores the item count Trainer
    passes (Trainer then divides by nothing): it was divided by the accumulation steps. A causal LM's loss reads it
    (the step's tokens over every process, which Trainer's process factor cancels): it was multiplied by that factor.
    Trainer's label smoother reads it too."""
    model = causal_lm() if kind == "causal_lm" else \
        tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    trainer = make_trainer(tmp_path, model=model, distillation=True, distillation_alpha=1.0,
                           gradient_accumulation_steps=accumulation,
                           label_smoothing_factor=0.1 if kind == "label_smoothing" else 0.0)
    trainer.current_gradient_accumulation_steps = accumulation
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: processes))
    ids = torch.randint(5, 99, (4, 10), generator=torch.Generator().manual_seed(0))
    if kind != "causal_lm":
        labels, count = torch.tensor([0, 1, 2, 1]), 4
    else:
        labels = ids.clone()
        labels[:, :3] = -100  # a prompt
        count = int((labels[:, 1:] != -100).sum())  # what Trainer counts for a loss that shifts the labels
    inputs = {"input_ids": ids, "labels": labels}
    items = torch.tensor(count * accumulation * processes)  # every micro-batch of the step, on every process
    before = trainer.compute_loss(model, dict(inputs), num_items_in_batch=items)  # no teacher yet
    trainer.distillation_teacher = copy_teacher(perturbed(model))
    got = trainer.compute_loss(model, dict(inputs), num_items_in_batch=items)
    assert abs(got.item() - before.item()) <= TOL


def test_a_causal_lm_distils_the_positions_its_loss_predicts():
    """Position i of a causal LM predicts label i + 1: the KL covered the labelled positions themselves, one late."""
    from hf_adaprune.trainer.distillation import shifts_labels

    model = causal_lm()
    labels = torch.tensor([[-100, -100, -100, 13, 14, 15, -100, -100]])
    logits = torch.zeros(1, 8, 99)
    assert shifts_labels(model) and not shifts_labels(tiny_seq2seq("bart"))
    mask = prediction_mask(model, {"input_ids": labels.clamp(min=0), "labels": labels}, logits)
    assert mask[0].nonzero().flatten().tolist() == [2, 3, 4]


def test_ctc_layer_outputs_are_matched_over_real_frames():
    """The layer-output term averaged over padding frames too (their mask is of samples, not frames)."""
    from hf_adaprune.trainer.distillation import hidden_loss

    student = tiny_ctc_model("wav2vec2", stable=True)
    student.config.layerdrop = 0.0
    teacher = copy_teacher(perturbed(student))
    batch = audio_batch()
    with torch.no_grad():
        s, t = student(**batch, output_hidden_states=True), teacher(**batch, output_hidden_states=True)
    frames = prediction_mask(student, batch, s.logits)
    assert not frames.all(), "some rows are padded"
    expected = torch.stack([(((a - b) ** 2).mean(-1) * frames).sum() / frames.sum()
                            for a, b in zip(s.hidden_states[1:], t.hidden_states[1:])]).mean()
    assert hidden_loss(student, s, t, batch).item() == pytest.approx(expected.item(), abs=1e-6)



def test_layer_outputs_before_a_wav2vec2_adapter_are_matched_over_their_own_frames():
    """With add_adapter the CTC logits have the adapter's (fewer) frames, the layer outputs the encoder's: those were
    masked to the adapter's frame counts, leaving real frames out."""
    from hf_adaprune.trainer.distillation import hidden_loss

    student = tiny_ctc_model("wav2vec2", stable=True)
    student.config.layerdrop = 0.0
    student.config.update(dict(add_adapter=True, num_adapter_layers=1, adapter_stride=2, adapter_kernel_size=3,
                               output_hidden_size=student.config.hidden_size))
    torch.manual_seed(0)
    student = type(student)(student.config).eval()
    teacher = copy_teacher(perturbed(student))
    batch = audio_batch()
    with torch.no_grad():
        s, t = student(**batch, output_hidden_states=True), teacher(**batch, output_hidden_states=True)
    frames = student._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1), add_adapter=False)
    real = torch.arange(s.hidden_states[1].shape[1])[None, :] < frames[:, None]
    assert s.hidden_states[1].shape[1] > s.logits.shape[1], "the adapter shortens the logits' frames"
    expected = torch.stack([(((a - b) ** 2).mean(-1) * real).sum() / real.sum()
                            for a, b in zip(s.hidden_states[1:], t.hidden_states[1:])]).mean()
    assert hidden_loss(student, s, t, batch).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("family", ["bert", "bert_decoder", "marian"])
def test_layers_the_masks_remove_are_left_out_of_the_layer_output_term(family):
    """A removed slot's output is the layer before's: matching it to the teacher's layer pulled the kept layer
    before towards the teacher's next layer, against its own term."""
    from hf_adaprune import attach_masks, get_masks
    from hf_adaprune.trainer.distillation import hidden_loss

    student = (tiny_model("bert", num_hidden_layers=3) if family == "bert" else
               tiny_model("bert", head="AutoModelForCausalLM", num_hidden_layers=3, is_decoder=True)
               if family == "bert_decoder" else tiny_seq2seq("marian")).eval()
    teacher = copy_teacher(perturbed(student))
    masks = attach_masks(student, layers=True)
    stacks = {masks.groups[name].role: name for name in masks.of_kind("layers")}
    gated = {"encoder": 1, "decoder": 1 if family == "bert_decoder" else 0}  # a decoder alone: its outputs are
    # hidden_states, its stack's role "decoder"
    for side, name in stacks.items():
        mask = torch.ones_like(masks.masks[name])
        mask[gated[side]] = 0
        masks.set(name, mask)
    ids = torch.randint(5, 60, (2, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family == "marian":
        batch["labels"] = torch.randint(5, 60, (2, 5))
    with torch.no_grad():
        s, t = student(**batch, output_hidden_states=True), teacher(**batch, output_hidden_states=True)
    pairs = ([(s.hidden_states, t.hidden_states, next(iter(stacks)))] if family.startswith("bert") else
             [(s.encoder_hidden_states, t.encoder_hidden_states, "encoder"),
              (s.decoder_hidden_states, t.decoder_hidden_states, "decoder")])
    kept = [((a - b) ** 2).mean() for states, teacher_states, side in pairs
            for index, (a, b) in enumerate(zip(states[1:], teacher_states[1:])) if index != gated[side]]
    assert len(kept) == (2 if family.startswith("bert") else 2 * len(get_masks(student).masks[stacks["encoder"]]) - 2)
    assert hidden_loss(student, s, t, batch).item() == pytest.approx(torch.stack(kept).mean().item(), rel=1e-5)


@pytest.mark.parametrize("custom", [False, True])
def test_the_distilled_loss_keeps_the_factor_trainer_gives_the_loss_under_several_processes(tmp_path, monkeypatch,
                                                                                            custom):
    """Under N processes Trainer.compute_loss multiplies a loss it takes for normalised by every process's item count
    by N. Before the teacher exists the task loss had it; the distilled loss did not, so the gradients shrank N-fold
    the step distillation started (a custom compute_loss_func's task loss kept it, and outweighed the KD terms).
    A model's own loss that ignores the count (BERT's) is a mean on any number of processes, before and after the
    teacher (the trainer probes it: factor 1); a compute_loss_func keeps Trainer's factor throughout (2)."""
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    task_loss = (lambda outputs, labels, num_items_in_batch=None: F.cross_entropy(outputs.logits, labels)) if custom \
        else None
    trainer = make_trainer(tmp_path, model=model, distillation=True, distillation_alpha=0.3)
    trainer.compute_loss_func = task_loss
    trainer.current_gradient_accumulation_steps = 1
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 2))
    ids = torch.randint(5, 99, (4, 10), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "labels": torch.tensor([0, 1, 2, 1])}
    items = torch.tensor(4)
    before = trainer.compute_loss(model, dict(inputs), num_items_in_batch=items)  # no teacher yet: the task loss
    with torch.no_grad():
        s = model(input_ids=ids)
    factor = 2 if custom else 1
    assert abs(before.item() - factor * F.cross_entropy(s.logits, inputs["labels"]).item()) <= TOL
    trainer.distillation_teacher = teacher = copy_teacher(perturbed(model))
    got = trainer.compute_loss(model, dict(inputs), num_items_in_batch=items)
    with torch.no_grad():
        t = teacher(input_ids=ids)
    combined = 0.3 * F.cross_entropy(s.logits, inputs["labels"]) + 0.7 * 2.0 ** 2 * kl(s.logits, t.logits, 2.0).mean()
    assert abs(got.item() - factor * combined.item()) <= TOL


def seq2seq_case(family):
    generator = torch.Generator().manual_seed(1)
    if family == "whisper":
        model, vocab = tiny_whisper(), WHISPER["vocab_size"]
        inputs = {"input_features": whisper_features(3)}
    else:
        model, vocab = tiny_seq2seq(family), 99
        inputs = {"input_ids": torch.randint(3, 99, (3, 9), generator=generator),
                  "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    labels = torch.randint(4, vocab, (3, 7), generator=generator)
    labels[0, 5:] = -100
    labels[2, 3:] = -100
    return model, {**inputs, "labels": labels}


def seq2seq_distilling(tmp_path, model, **options):
    """A Seq2Seq pruning trainer distilling ``model`` from a perturbed copy (returned too), with ``options``."""
    data = toy_dataset()
    args = Seq2SeqPruningArguments(
        str(tmp_path), max_steps=4, pruning_metric="loss", pruning_warmup_steps=2, pruning_interval=2,
        pruning_target=0.5, pruning_seq_len=16, report_to="none", use_cpu=True, save_strategy="no",
        distillation=True, **options)
    trainer = AdaptivePruningSeq2SeqTrainer(model=model, args=args, train_dataset=data,
                                            eval_dataset=data.select(range(8)))
    trainer.distillation_teacher = teacher = copy_teacher(perturbed(model))
    return trainer, teacher


@pytest.mark.parametrize("family", ["marian", "whisper"])
def test_seq2seq_loss_counts_labelled_tokens_only(tmp_path, family):
    """Token-level KL on the decoder logits, teacher-forced on the same labels; layer outputs of both stacks."""
    model, inputs = seq2seq_case(family)
    trainer, teacher = seq2seq_distilling(tmp_path, model, distillation_alpha=0.25, distillation_temperature=1.5,
                                          distillation_hidden_weight=0.4)
    model.train()
    got = trainer.compute_loss(model, inputs)
    with torch.no_grad():
        s = model(**inputs, output_hidden_states=True)
        t = teacher(**inputs, output_hidden_states=True)
    mask = (inputs["labels"] != -100).float()
    hidden = torch.stack([layer_mse(s.encoder_hidden_states, t.encoder_hidden_states, inputs.get("attention_mask")),
                          layer_mse(s.decoder_hidden_states, t.decoder_hidden_states, mask)])
    layers = torch.tensor([len(s.encoder_hidden_states) - 1, len(s.decoder_hidden_states) - 1], dtype=torch.float)
    expected = (0.25 * s.loss + 0.75 * 1.5 ** 2 * (kl(s.logits, t.logits, 1.5) * mask).sum() / mask.sum()
                + 0.4 * (hidden * layers).sum() / layers.sum())  # the mean over every layer of both stacks
    assert abs(got.item() - expected.item()) <= TOL


def test_label_smoothing_leaves_the_distilled_positions_alone(tmp_path):
    """Trainer.compute_loss pops ``labels`` when label smoothing is on; the KL still covers labelled tokens only."""
    model, inputs = seq2seq_case("marian")
    inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=inputs["labels"])
    trainer, teacher = seq2seq_distilling(tmp_path, model, distillation_alpha=0.0, distillation_temperature=2.0,
                                          label_smoothing_factor=0.1)
    model.train()
    batch = dict(inputs)
    got = trainer.compute_loss(model, batch)
    assert "labels" in batch  # the caller's batch is not changed
    with torch.no_grad():
        s, t = model(**inputs).logits, teacher(**inputs).logits
    mask = (inputs["labels"] != -100).float()
    expected = 2.0 ** 2 * (kl(s, t, 2.0) * mask).sum() / mask.sum()  # alpha 0: the KL term alone
    assert abs(got.item() - expected.item()) <= TOL
    assert abs(got.item() - 2.0 ** 2 * kl(s, t, 2.0).mean().item()) > 1e-3  # the mean over all positions differs


def test_ctc_distils_over_real_frames():
    model = tiny_ctc_model("wav2vec2")
    batch = audio_batch()
    with torch.no_grad():
        logits = model(**batch).logits
    mask = prediction_mask(model, batch, logits)
    frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
    assert mask.shape == logits.shape[:2]
    assert mask.sum(-1).tolist() == frames.tolist() and mask[1].sum() < mask[0].sum()


def teacher_during_training(trainer) -> dict:
    """``{"teacher": ...}``: the trainer's teacher at its last training step (the run lets it go at the end)."""
    seen = {"teacher": None}
    trainer.add_callback(type("SeeTeacher", (transformers.TrainerCallback,), {
        "on_step_end": lambda self, *a, **kw: seen.update(teacher=trainer.distillation_teacher)}))
    return seen


def test_training_keeps_the_teacher_out_of_optimizer_and_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path, distillation=True, distillation_hidden_weight=0.5, save_strategy="steps",
                           save_steps=12, compact_at_end=False)
    seen = teacher_during_training(trainer)
    trainer.train()
    teacher = seen["teacher"]
    assert teacher is not None and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert not any(t is teacher for t in trainer.model.modules())
    # the teacher is the dense model at the reference: saved once, never in a checkpoint
    saved = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / TEACHER_FOLDER)
    for (name, a), b in zip(teacher.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(a, b), name
    state = torch.load(tmp_path / "checkpoint-12" / PRUNING_STATE_FILE, weights_only=True)
    assert state["teacher"] == str(tmp_path / TEACHER_FOLDER)
    assert not any("teacher" in p.name for p in (tmp_path / "checkpoint-12").iterdir())
    # the student moved away from the teacher while pruning
    student = trainer.model.state_dict()
    assert any(not torch.equal(student[k], v) for k, v in teacher.state_dict().items())
    # the report and the card say the run distilled, and with what (they said nothing)
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["distillation"] == {"alpha": 0.5, "temperature": 2.0, "hidden_weight": 0.5,
                                      "teacher": "the model at the pruning reference"}
    trainer.create_model_card()
    assert ("It was distilled from the model at the pruning reference while pruned (task loss weighted 0.5, logit "
            "KL 0.5 at temperature 2.0, layer outputs weighted 0.5).") in (tmp_path / "README.md").read_text()
    assert json.loads(json.dumps(make_trainer(tmp_path / "plain").pruning_summary().to_dict()))["distillation"] is None


def test_the_report_records_the_distillation_that_ran(tmp_path):
    """The record was the arguments: a run that ended before the reference (no teacher ever ran) said it was
    distilled, and one resumed without --distillation from a checkpoint that distilled said it was not."""
    early = make_trainer(tmp_path / "early", distillation=True, max_steps=4)  # warm-up 6: no reference
    early.train()
    assert early.distillation_teacher is None and early.pruning_summary().distillation is None
    first = make_trainer(tmp_path / "first", distillation=True, distillation_alpha=0.25, save_strategy="steps",
                         save_steps=12, max_steps=18)
    first.train()
    resumed = make_trainer(tmp_path / "first", pruning_resume_with_new_arguments=True, max_steps=18,
                           save_strategy="steps", save_steps=18)
    resumed.args.output_dir = str(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-12"))
    assert resumed.distillation_teacher is None
    record = json.loads((tmp_path / "resumed" / "pruning_report.json").read_text())["distillation"]
    assert record == {"alpha": 0.25, "temperature": 2.0, "hidden_weight": 0.0,
                      "teacher": "the model at the pruning reference", "until_step": 12}
    again = make_trainer(tmp_path / "again", max_steps=20)  # resumed once more: the record travels in the state
    again.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-18"))
    assert json.loads((tmp_path / "again" / "pruning_report.json").read_text())["distillation"] == record
    resumed.create_model_card()
    assert ("It was distilled from the model at the pruning reference while pruned, until step 12, where the run "
            "resumed without distillation (task loss weighted 0.25") in (tmp_path / "resumed" / "README.md").read_text()


def test_the_recorded_teacher_path_is_absolute_under_a_relative_output_dir(tmp_path, monkeypatch):
    """A run resumed from another working directory finds the teacher its checkpoint names."""
    monkeypatch.chdir(tmp_path)
    trainer = make_trainer("run", distillation=True, save_strategy="steps", save_steps=12, compact_at_end=False)
    trainer.train()
    state = torch.load(tmp_path / "run" / "checkpoint-12" / PRUNING_STATE_FILE, weights_only=True)
    assert state["teacher"] == str(tmp_path / "run" / TEACHER_FOLDER)


def test_resume_with_distillation_continues_exactly(tmp_path):
    full = make_trainer(tmp_path / "full", distillation=True, save_strategy="steps", save_steps=12)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-12"
    state = torch.load(checkpoint / PRUNING_STATE_FILE, weights_only=True)
    assert state["controller"]["reference"] is not None and state["teacher"], "mid-pruning, with a teacher"
    resumed = make_trainer(tmp_path / "full", distillation=True, save_strategy="no")
    resumed.args.output_dir = str(tmp_path / "resumed")
    seen = teacher_during_training(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert seen["teacher"] is not None
    a = json.loads((tmp_path / "full" / "pruning_report.json").read_text())
    b = json.loads((tmp_path / "resumed" / "pruning_report.json").read_text())
    assert a["groups"] == b["groups"]
    assert [d.get("metric") for d in a["decisions"]] == pytest.approx([d.get("metric") for d in b["decisions"]])


def test_a_moved_distillation_run_resumes_from_the_teacher_in_its_folder(tmp_path, caplog):
    """pruning_state.pt names the teacher by its absolute path: a run folder moved (or copied to another machine)
    finds it in --output_dir, and goes on as the uninterrupted run."""
    import shutil

    full = make_trainer(tmp_path / "full", distillation=True, save_strategy="steps", save_steps=12)
    full.train()
    shutil.copytree(tmp_path / "full", tmp_path / "moved")
    shutil.rmtree(tmp_path / "full" / TEACHER_FOLDER)
    resumed = make_trainer(tmp_path / "moved", distillation=True, save_strategy="no")
    with caplog.at_level("WARNING", logger="hf_adaprune.trainer.distillation"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "moved" / "checkpoint-12"))
    assert f"distilling from the one in --output_dir ({tmp_path / 'moved' / TEACHER_FOLDER})" in caplog.text
    a = json.loads((tmp_path / "full" / "pruning_report.json").read_text())
    b = json.loads((tmp_path / "moved" / "pruning_report.json").read_text())
    assert a["groups"] == b["groups"]
    assert [d.get("metric") for d in a["decisions"]] == pytest.approx([d.get("metric") for d in b["decisions"]])
    # neither here nor there: what to put back, where
    shutil.rmtree(tmp_path / "moved" / TEACHER_FOLDER)
    with pytest.raises(FileNotFoundError, match="which is gone, and --output_dir holds none"):
        make_trainer(tmp_path / "moved", distillation=True).train(
            resume_from_checkpoint=str(tmp_path / "moved" / "checkpoint-12"))


def test_distillation_changes_training(tmp_path):
    plain = make_trainer(tmp_path / "plain", compact_at_end=False)
    plain.train()
    distilled = make_trainer(tmp_path / "distilled", distillation=True, distillation_alpha=0.0,
                             compact_at_end=False)
    distilled.train()
    a, b = plain.model.state_dict(), distilled.model.state_dict()
    assert any(not torch.allclose(a[k], b[k]) for k in a), "the distillation loss reached the optimizer"


@pytest.mark.parametrize("overrides, message", [
    (dict(distillation=True, distillation_alpha=1.5), "distillation_alpha .* must be in \\[0, 1\\]"),
    (dict(distillation=True, distillation_temperature=0.0), "distillation_temperature must be > 0"),
    (dict(distillation=True, distillation_hidden_weight=-1.0), "distillation_hidden_weight must be >= 0"),
    (dict(teacher_model_name_or_path="some/teacher"), "--distillation is off"),
    (dict(distillation_hidden_weight=1.0), "--distillation_hidden_weight is given but --distillation is off"),
])
def test_bad_distillation_arguments_fail_at_parse_time(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


def test_teacher_with_other_outputs_is_refused_before_training(tmp_path):
    five = tiny_model("bert")
    five.config.num_labels = 5
    transformers.BertForSequenceClassification(five.config).save_pretrained(tmp_path / "teacher")
    with pytest.raises(ValueError, match="teacher's num_labels \\(5\\) differs from the student's \\(3\\)"):
        make_trainer(tmp_path / "out", distillation=True, teacher_model_name_or_path=str(tmp_path / "teacher"))
    tiny_model("bert", num_hidden_layers=2).save_pretrained(tmp_path / "shallow")
    with pytest.raises(ValueError, match="compares layer i with layer i.*num_hidden_layers"):
        make_trainer(tmp_path / "out", distillation=True, distillation_hidden_weight=1.0,
                     teacher_model_name_or_path=str(tmp_path / "shallow"))
    tiny_model("roberta").save_pretrained(tmp_path / "roberta")
    with pytest.raises(ValueError, match="same architecture"):
        make_trainer(tmp_path / "out", distillation=True, teacher_model_name_or_path=str(tmp_path / "roberta"))
    # a base model (another head): its classifier would be random
    transformers.BertForMaskedLM(tiny_model("bert").config).save_pretrained(tmp_path / "masked_lm")
    with pytest.raises(ValueError, match="lacks .*classifier.*another head"):
        make_trainer(tmp_path / "out", distillation=True, teacher_model_name_or_path=str(tmp_path / "masked_lm"))
    swapped = tiny_model("bert", id2label={0: "c", 1: "b", 2: "a"})
    swapped.save_pretrained(tmp_path / "swapped")
    student = tiny_model("bert", id2label={0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match="teacher's classes .* are not the student's"):
        make_trainer(tmp_path / "out", model=student, distillation=True,
                     teacher_model_name_or_path=str(tmp_path / "swapped"))


def test_a_pruned_folder_is_a_teacher_in_its_pruned_shapes(tmp_path):
    from hf_adaprune import AutoPrunedModel, save_pruned
    from test_surgery import random_masks

    pruned = tiny_model("bert")
    random_masks(pruned)
    save_pruned(pruned, tmp_path / "pruned")
    student = AutoPrunedModel.from_pretrained(tmp_path / "pruned")  # pruned again, distilling from itself
    trainer = make_trainer(tmp_path / "out", model=student, distillation=True,
                           teacher_model_name_or_path=str(tmp_path / "pruned"))
    shapes = {name: p.shape for name, p in student.state_dict().items()}
    assert {name: p.shape for name, p in trainer.distillation_teacher.state_dict().items()} == shapes


def test_layer_outputs_are_not_matched_on_a_model_that_drops_layers():
    from hf_adaprune.trainer.distillation import DistillationMixin

    model = tiny_ctc_model("wav2vec2")
    model.config.layerdrop = 0.1
    holder = type("Holder", (DistillationMixin,), {})()
    holder.args = PruningArguments("unused", distillation=True, distillation_hidden_weight=1.0, report_to="none")
    with pytest.raises(ValueError, match="skips layers at random while training \\(layerdrop=0.1\\)"):
        holder._setup_teacher(model)


def test_multi_label_heads_distil_each_labels_sigmoid(tmp_path):
    model = tiny_model("bert", problem_type="multi_label_classification",
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()  # 3 labels
    trainer = make_trainer(tmp_path, model=model, distillation=True, distillation_alpha=0.3)
    trainer.distillation_teacher = teacher = copy_teacher(perturbed(model, scale=0.3))
    ids = torch.randint(5, 99, (4, 10), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    got = trainer.compute_loss(model, {"input_ids": ids[:3], "labels": labels[:3]})  # 3 rows, 3 labels: a KL
    got = trainer.compute_loss(model, {"input_ids": ids, "labels": labels})  # 4 rows, 3 labels: it failed
    with torch.no_grad():
        s, t = model(input_ids=ids).logits / 2.0, teacher(input_ids=ids).logits / 2.0
    p, q = torch.sigmoid(t), torch.sigmoid(s)
    bernoulli_kl = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum(-1).mean()
    task = F.binary_cross_entropy_with_logits(s * 2.0, labels)
    assert abs(got.item() - (0.3 * task + 0.7 * 4.0 * bernoulli_kl).item()) <= TOL


def test_ctc_frames_are_read_from_the_audio_even_when_the_labels_have_as_many_positions():
    model = tiny_ctc_model("wav2vec2")
    batch = audio_batch()
    with torch.no_grad():
        logits = model(**batch).logits
    labels = torch.full(logits.shape[:2], -100)
    labels[:, :3] = 5  # a transcript padded to the frame count: the label mask would keep 3 frames a row
    mask = prediction_mask(model, {**batch, "labels": labels}, logits)
    frames = model._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
    assert mask.sum(-1).tolist() == frames.tolist()


@pytest.mark.parametrize("named", [False, True])
def test_under_bf16_the_teacher_computes_as_the_student_does(tmp_path, named):
    """A loaded teacher (--teacher_model_name_or_path, and every resumed run's) ran in float32 under --bf16: only a
    model accelerate prepared carries its autocast, as the default teacher, a copy of the student, does."""
    if named:
        perturbed(tiny_model("bert")).save_pretrained(tmp_path / "teacher")
    trainer = make_trainer(tmp_path / "out", bf16=True, distillation=True, max_steps=6, pruning_warmup_steps=2,
                           pruning_interval=2, **({"teacher_model_name_or_path": str(tmp_path / "teacher")}
                                                  if named else {}))
    seen = []

    def watch(teacher):
        teacher.bert.encoder.layer[0].intermediate.dense.register_forward_hook(
            lambda module, args, output: seen.append(output.dtype))

    if named:
        watch(trainer.distillation_teacher)
    else:  # made at the reference
        take = trainer._take_teacher
        trainer._take_teacher = lambda: (take(), watch(trainer.distillation_teacher))
    trainer.train()
    assert seen and set(seen) == {torch.bfloat16}


def test_named_teacher_is_used_from_the_start(tmp_path):
    teacher = perturbed(tiny_model("bert"))
    teacher.save_pretrained(tmp_path / "teacher")
    trainer = make_trainer(tmp_path / "out", distillation=True, teacher_model_name_or_path=str(tmp_path / "teacher"))
    loaded = trainer.distillation_teacher
    assert loaded is not None and not loaded.training
    assert torch.equal(loaded.state_dict()["classifier.weight"], teacher.state_dict()["classifier.weight"])
    assert isinstance(trainer.args, PruningArguments)


def test_whisper_distils_its_labelled_tokens_when_the_batch_has_a_frame_mask():
    """Whisper has _get_feat_extract_output_lengths too: with the feature extractor's attention_mask in the batch,
    the KL was averaged over as many decoder positions as the audio has frames, -100 padding included."""
    model = tiny_whisper()
    labels = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, -100, -100]])
    features = whisper_features(batch=2)
    attention = torch.ones(2, features.shape[-1], dtype=torch.long)
    attention[1, 20:] = 0
    inputs = {"input_features": features, "labels": labels, "attention_mask": attention}
    with torch.no_grad():
        logits = model(input_features=features, labels=labels).logits
    assert torch.equal(prediction_mask(model, inputs, logits), labels != -100)


def test_ctc_distillation_with_blank_padding_frames_is_finite():
    """The ASR recipe gives a CTC model's padding frames -inf logits in eval mode; the teacher (a copy, always in eval
    mode) has them too: 0 * -inf made the KL NaN although those frames are masked out."""
    from recipes.speech.metrics import blank_padding_frames

    from hf_adaprune.trainer.distillation import distillation_loss

    student = tiny_ctc_model("wav2vec2")
    blank_padding_frames(student)
    teacher = copy_teacher(student)
    student.train()
    inputs = {**audio_batch(), "labels": torch.tensor([[3, 4, 5], [6, 7, -100], [8, -100, -100]])}
    out = student(**inputs)
    with torch.no_grad():
        teacher_out = teacher(**inputs)
    assert torch.isneginf(teacher_out.logits).any(), "the padding frames are blanked"
    loss = distillation_loss(student, out.loss, out, teacher_out, inputs, alpha=0.5, temperature=2.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    frames = prediction_mask(student, inputs, out.logits)  # the KL over the real frames, by hand
    real = torch.where(torch.isneginf(teacher_out.logits), -1e4, teacher_out.logits)
    expected = 0.5 * out.loss + 0.5 * 2.0 ** 2 * kl(out.logits, real, 2.0)[frames].mean()
    assert abs(loss.item() - expected.item()) <= 1e-4


def test_a_ctc_model_with_a_text_metric_by_name_is_told_to_pass_compute_metrics(tmp_path):
    from datasets import Dataset

    from hf_adaprune import AdaptivePruningTrainer

    data = Dataset.from_list([{"input_values": [0.0] * 400, "labels": [1, 2]}] * 4)
    args = PruningArguments(str(tmp_path), pruning_metric="wer", pruning_seq_len=400, report_to="none", use_cpu=True,
                            pruning_criterion="magnitude")  # the tiny model's layerdrop refuses Taylor scores
    with pytest.raises(ValueError, match=r"--pruning_metric wer on a CTC model \(Wav2Vec2ForCTC\): .* Pass a "
                                         r"compute_metrics that decodes them \(argmax, processor.batch_decode\)"):
        AdaptivePruningTrainer(model=tiny_ctc_model("wav2vec2"), args=args, train_dataset=data, eval_dataset=data)


def test_whisper_with_a_text_metric_by_name_is_sent_to_generation_not_told_it_is_ctc(tmp_path):
    """Whisper has _get_feat_extract_output_lengths as CTC models do; its logits are target tokens, so a text metric
    needs the Seq2Seq trainer with predict_with_generate, not a CTC compute_metrics."""
    from datasets import Dataset

    from hf_adaprune import AdaptivePruningTrainer

    features = whisper_features(batch=1)[0].tolist()
    data = Dataset.from_list([{"input_features": features, "labels": [5, 6, 2]}] * 4)
    args = PruningArguments(str(tmp_path), pruning_metric="wer", report_to="none", use_cpu=True, pruning_seq_len=16,
                            pruning_criterion="magnitude")
    with pytest.raises(ValueError, match="wer needs a seq2seq model trained with AdaptivePruningSeq2SeqTrainer") as err:
        AdaptivePruningTrainer(model=tiny_whisper(), args=args, train_dataset=data, eval_dataset=data)
    assert "CTC" not in str(err.value)


def test_a_compute_loss_override_that_skips_the_teacher_stops_at_the_first_distilled_step(tmp_path):
    """A subclass's own compute_loss (class-weighted cross-entropy, no super()) turned distillation off silently:
    the teacher was copied and saved but never ran. Now the first step that should distil stops with the fix."""
    from hf_adaprune import AdaptivePruningTrainer

    class WeightedLoss(AdaptivePruningTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = F.cross_entropy(outputs.logits, labels, weight=torch.tensor([1.0, 2.0, 1.0]))
            return (loss, outputs) if return_outputs else loss

    data = toy_dataset()
    trainer = WeightedLoss(model=tiny_model("bert"), args=make_args(tmp_path, distillation=True),
                           train_dataset=data, eval_dataset=data.select(range(48)))
    with pytest.raises(RuntimeError, match=r"--distillation is on, but WeightedLoss.compute_loss did not call "
                                           r"super\(\).compute_loss\(...\), where the teacher runs"):
        trainer.train()
    assert trainer.state.global_step == make_args(tmp_path).pruning_warmup_steps  # the step after the reference

    class CallsSuper(AdaptivePruningTrainer):  # an override that does call it distils as before
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    fine = CallsSuper(model=tiny_model("bert"), args=make_args(tmp_path / "fine", distillation=True, max_steps=12),
                      train_dataset=data, eval_dataset=data.select(range(48)))
    fine.train()
    assert fine.state.global_step == 12


def test_question_answering_distils_its_start_and_end_positions(tmp_path):
    """A ...ForQuestionAnswering head has start_logits and end_logits, no logits: the first distilled step failed
    with KeyError: 'logits'. Each is a distribution over the positions; their KLs are averaged."""
    torch.manual_seed(0)
    config = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).config
    config.num_labels = 2  # start and end
    model = transformers.BertForQuestionAnswering(config)
    trainer = make_trainer(tmp_path, model=model, distillation=True, distillation_alpha=0.3,
                           distillation_temperature=2.0)
    trainer.distillation_teacher = teacher = copy_teacher(perturbed(model, scale=0.3))
    ids = torch.randint(5, 99, (4, 10), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "start_positions": torch.tensor([1, 2, 3, 4]),
              "end_positions": torch.tensor([2, 5, 3, 8])}
    model.train()
    got = trainer.compute_loss(model, inputs)
    with torch.no_grad():
        s, t = model(**inputs), teacher(input_ids=ids)
    distilled = (kl(s.start_logits, t.start_logits, 2.0).mean() + kl(s.end_logits, t.end_logits, 2.0).mean()) / 2
    assert abs(got.item() - (0.3 * s.loss + 0.7 * 4.0 * distilled).item()) <= TOL


def test_a_multi_label_head_with_one_label_distils_its_sigmoid(tmp_path):
    """One output of a multi-label head was taken for a regression output: logit MSE, the temperature ignored."""
    model = tiny_model("bert", problem_type="multi_label_classification", num_labels=1,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    model.classifier = torch.nn.Linear(model.config.hidden_size, 1)  # tiny_model builds 3 outputs
    model.config.num_labels = 1
    trainer = make_trainer(tmp_path, model=model, distillation=True, distillation_alpha=0.0)
    trainer.distillation_teacher = teacher = copy_teacher(perturbed(model, scale=0.3))
    ids = torch.randint(5, 99, (4, 10), generator=torch.Generator().manual_seed(0))
    got = trainer.compute_loss(model, {"input_ids": ids, "labels": torch.tensor([[1.0], [0.0], [1.0], [0.0]])})
    with torch.no_grad():
        s, t = model(input_ids=ids).logits / 2.0, teacher(input_ids=ids).logits / 2.0
    p, q = torch.sigmoid(t), torch.sigmoid(s)
    bernoulli_kl = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum(-1).mean()
    assert abs(got.item() - 4.0 * bernoulli_kl.item()) <= TOL


def test_ctc_without_an_attention_mask_distils_every_frame():
    """No samples' mask: labels padded to the frame count were read as the frames to distil (3 a row here)."""
    model = tiny_ctc_model("wav2vec2")
    batch = {"input_values": audio_batch()["input_values"]}
    with torch.no_grad():
        logits = model(**batch).logits
    labels = torch.full(logits.shape[:2], -100)
    labels[:, :3] = 5
    assert prediction_mask(model, {**batch, "labels": labels}, logits) is None


def test_teacher_checks_compare_what_sizes_the_outputs(tmp_path):
    """A CTC teacher with another feature encoder passed (then failed at the first step on 48 vs 24 frames); a
    translation or CTC teacher whose config's unused num_labels differs was refused."""
    from test_speech_families import tiny_ctc_model as ctc

    student = ctc("wav2vec2")
    other_rate = ctc("wav2vec2")
    other_rate.config.conv_stride = (2, 2)
    other_rate.save_pretrained(tmp_path / "other_rate")
    from hf_adaprune.trainer.distillation import load_teacher

    with pytest.raises(ValueError, match=r"the teacher's conv_stride \(\[2, 2\]\) differs from the student's "
                                         r"\(\(4, 2\)\): their feature encoders make frames of other lengths"):
        load_teacher(str(tmp_path / "other_rate"), student)

    labels = ctc("wav2vec2")
    labels.config.num_labels = 7  # read by no CTC head
    labels.save_pretrained(tmp_path / "labels")
    assert load_teacher(str(tmp_path / "labels"), student).config.num_labels == 7
    marian = tiny_seq2seq("marian")
    marian.config.num_labels = 5
    marian.save_pretrained(tmp_path / "marian")
    assert load_teacher(str(tmp_path / "marian"), tiny_seq2seq("marian")) is not None
    choice = tiny_model("bert", head="AutoModelForMultipleChoice")  # one output a choice, whatever num_labels says
    choice.config.num_labels = 4
    choice.save_pretrained(tmp_path / "choice")
    assert load_teacher(str(tmp_path / "choice"), tiny_model("bert", head="AutoModelForMultipleChoice")) is not None


def test_a_teacher_path_that_does_not_load_names_the_option(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"--teacher_model_name_or_path {tmp_path / 'teachr'}: cannot load "
                                                   "a model from it (a local folder with config.json, or a Hub id "
                                                   "that is reachable or cached)")):
        make_trainer(tmp_path / "out", distillation=True, teacher_model_name_or_path=str(tmp_path / "teachr"))


def test_distillation_options_without_distillation_are_named_as_not_read(tmp_path, caplog):
    # --distillation_alpha 0.3 alone trained without distilling, without a word
    import logging

    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        make_trainer(tmp_path, distillation_alpha=0.3, distillation_temperature=4.0)
    assert ("--distillation_alpha 0.3, --distillation_temperature 4.0 not read: --distillation is off (set "
            "--distillation true to distil)") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        make_trainer(tmp_path)
    assert "not read: --distillation is off" not in caplog.text


def test_a_finished_run_lets_go_of_the_teacher_and_the_optimizer_of_the_dense_weights(tmp_path):
    """After train() the teacher (a whole model) and, once compaction replaced the weights, the optimizer and
    scheduler (Adam: 2x the dense weights) are no longer held; the report and card still say what distilled, and
    the trainer still evaluates and saves."""
    import gc
    import weakref

    trainer = make_trainer(tmp_path, model=tiny_model("bert"), distillation=True, distillation_alpha=0.3,
                           pruning_target=0.5, pruning_tolerance=10.0)
    held = {}
    trainer.add_callback(type("Keep", (transformers.TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, optimizer=None, lr_scheduler=None, **kw: held.update(
            optimizer=weakref.ref(optimizer), scheduler=weakref.ref(lr_scheduler),
            teacher=weakref.ref(trainer.distillation_teacher) if trainer.distillation_teacher is not None
            else None)}))
    trainer.train()
    gc.collect()
    assert held["teacher"] is not None and held["teacher"]() is None, "the teacher is freed"
    assert held["optimizer"]() is None and held["scheduler"]() is None, "the optimizer and scheduler are freed"
    assert trainer.optimizer is None and trainer.lr_scheduler is None
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["distillation"]["alpha"] == 0.3
    assert "eval_loss" in trainer.evaluate()
    trainer.save_model()
    assert "distil" in (tmp_path / "README.md").read_text().lower()
