"""Distillation from the dense model while pruning.

The student (the model being pruned) learns from its task loss and from a frozen
teacher: the dense model as it stood when the reference metric was taken, or a
model the user names (``--teacher_model_name_or_path``). The loss is

    alpha * task_loss
    + (1 - alpha) * T**2 * KL(softmax(teacher / T) || softmax(student / T))
    + hidden_weight * mean over layers of MSE(student layer i, teacher layer i)

The KL term is averaged over the positions that carry a prediction: one per
example for a classification head, each labelled target token (``labels !=
-100``) for seq2seq and Whisper (the teacher is teacher-forced on the same
labels), each audio frame for CTC. A single-output head (regression) uses the
MSE between the outputs instead. Pruning never changes the hidden size, so
layer i of the student is compared with layer i of the teacher (CoFi's layer
distillation); the embedding output is left out.

The teacher runs under ``no_grad`` in eval mode on the student's device and
dtype. It is never wrapped for DDP, never in the optimizer and never in a
checkpoint: the default teacher is saved once, dense, to
``<output_dir>/distillation_teacher`` when the reference is taken, and a
resumed run loads it from there.
"""

from __future__ import annotations

import copy
import math
import os

import torch
import torch.nn.functional as F

from ..engine.masks import detach_masks
from ..hub.remote_code import transformers_class

TEACHER_FOLDER = "distillation_teacher"


def validate_distillation_arguments(args) -> None:
    if not 0.0 <= args.distillation_alpha <= 1.0:
        raise ValueError(f"--distillation_alpha (the weight of the task loss) must be in [0, 1]; "
                         f"got {args.distillation_alpha}")
    if not (math.isfinite(args.distillation_temperature) and args.distillation_temperature > 0):
        raise ValueError(f"--distillation_temperature must be > 0; got {args.distillation_temperature}")
    if not (math.isfinite(args.distillation_hidden_weight) and args.distillation_hidden_weight >= 0):
        raise ValueError(f"--distillation_hidden_weight must be >= 0; got {args.distillation_hidden_weight}")
    if args.teacher_model_name_or_path and not args.distillation:
        raise ValueError("--teacher_model_name_or_path is given but --distillation is off: set --distillation")
    if args.distillation_hidden_weight and not args.distillation:
        raise ValueError("--distillation_hidden_weight is given but --distillation is off: set --distillation")


def stock_class(model) -> type:
    """The transformers class ``model`` is (or extends, once pruned)."""
    cls = transformers_class(model)
    if cls is None:
        raise ValueError(f"{type(model).__name__} is not a transformers model class")
    return cls


def follow(teacher, like):
    """``teacher`` on ``like``'s device and dtype (moved only when they differ: called every training step)."""
    parameter, own = next(like.parameters()), next(teacher.parameters())
    if (own.device, own.dtype) != (parameter.device, parameter.dtype):
        teacher.to(device=parameter.device, dtype=parameter.dtype)
    return teacher


def freeze(teacher, like):
    """Eval mode, no gradients, on ``like``'s device and dtype."""
    follow(teacher, like).eval()
    teacher.requires_grad_(False)
    return teacher


def copy_teacher(student):
    """A frozen dense copy of ``student`` as it stands (masks, which are all ones before pruning, left out)."""
    teacher = copy.deepcopy(student)
    detach_masks(teacher)
    return freeze(teacher, student)


def load_teacher(path, student, hidden_weight: float = 0.0):
    """The teacher saved at ``path``, of the student's class; refused when its outputs cannot be compared."""
    teacher = stock_class(student).from_pretrained(path)
    check_teacher(teacher, student, hidden_weight)
    return freeze(teacher, student)


def check_teacher(teacher, student, hidden_weight: float) -> None:
    s, t = student.config, teacher.config
    if stock_class(teacher) is not stock_class(student) or t.model_type != s.model_type:
        raise ValueError(f"the teacher is a {stock_class(teacher).__name__} ({t.model_type}) but the student a "
                         f"{stock_class(student).__name__} ({s.model_type}): distillation compares their outputs "
                         "one to one, so both must be the same architecture")
    for name in ("vocab_size", "num_labels"):
        if getattr(t, name, None) != getattr(s, name, None):
            raise ValueError(f"the teacher's {name} ({getattr(t, name, None)}) differs from the student's "
                             f"({getattr(s, name, None)}): their output distributions cannot be compared")
    if hidden_weight > 0:
        for name in ("hidden_size", "d_model", "num_hidden_layers", "num_layers", "encoder_layers",
                     "decoder_layers"):
            if getattr(t, name, None) != getattr(s, name, None):
                raise ValueError(f"--distillation_hidden_weight compares layer i with layer i, but the teacher's "
                                 f"{name} ({getattr(t, name, None)}) differs from the student's "
                                 f"({getattr(s, name, None)}); set it to 0 or use a teacher of the same shape")


def prediction_mask(student, inputs: dict, logits: torch.Tensor) -> torch.Tensor | None:
    """Which positions of ``logits`` (batch, positions, classes) carry a prediction; ``None``: all of them."""
    labels = inputs.get("labels")
    if labels is not None and labels.dim() == 2 and labels.shape == logits.shape[:2]:
        return labels != -100  # target tokens (seq2seq, Whisper); -100 is padding
    attention = inputs.get("attention_mask")
    if attention is None or logits.dim() != 3:
        return None
    if attention.shape == logits.shape[:2]:
        return attention.bool()
    lengths = getattr(student, "_get_feat_extract_output_lengths", None)  # CTC: audio samples -> frames
    if lengths is not None:
        frames = lengths(attention.sum(-1)).to(logits.device)
        return torch.arange(logits.shape[1], device=logits.device)[None, :] < frames[:, None]
    return None


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def logit_loss(student_logits, teacher_logits, temperature: float, mask=None) -> torch.Tensor:
    """T^2-scaled KL(teacher || student) per position, averaged over ``mask``; MSE for one output."""
    if student_logits.shape[-1] == 1:
        return masked_mean((student_logits - teacher_logits).pow(2).squeeze(-1), mask)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)
    return masked_mean(kl, mask) * temperature ** 2


def layer_outputs(outputs) -> list[tuple[torch.Tensor, str]]:
    """Each layer's output (embedding output left out), with the side it belongs to."""
    found = []
    for key, side in (("hidden_states", "encoder"), ("encoder_hidden_states", "encoder"),
                      ("decoder_hidden_states", "decoder")):
        states = outputs.get(key) if hasattr(outputs, "get") else None
        if states is not None and not isinstance(states, torch.Tensor):
            found += [(state, side) for state in states[1:]]
    return found


def hidden_loss(student_outputs, teacher_outputs, inputs: dict) -> torch.Tensor:
    """Mean over layers of the per-position MSE, over real (not padding) positions where that is known."""
    student, teacher = layer_outputs(student_outputs), layer_outputs(teacher_outputs)
    if not student or len(student) != len(teacher):
        raise ValueError(f"--distillation_hidden_weight needs every layer's output from both models; got "
                         f"{len(student)} student and {len(teacher)} teacher layers")
    losses = []
    for (s, side), (t, _) in zip(student, teacher):
        key = "attention_mask" if side == "encoder" else "decoder_attention_mask"
        mask = inputs.get(key)
        if side == "decoder" and mask is None and inputs.get("labels") is not None:
            mask = inputs["labels"] != -100
        if mask is not None and mask.shape != s.shape[:2]:
            mask = None  # audio encoders: frames, not samples
        losses.append(masked_mean((s.float() - t.float()).pow(2).mean(-1), mask))
    return torch.stack(losses).mean()


def distillation_loss(student, task_loss, student_outputs, teacher_outputs, inputs: dict, *, alpha: float,
                      temperature: float, hidden_weight: float = 0.0) -> torch.Tensor:
    """``alpha * task_loss + (1 - alpha) * KD + hidden_weight * hidden``, all means over the batch's positions."""
    logits = student_outputs["logits"]
    kd = logit_loss(logits, teacher_outputs["logits"], temperature, prediction_mask(student, inputs, logits))
    loss = alpha * task_loss + (1.0 - alpha) * kd
    if hidden_weight > 0:
        loss = loss + hidden_weight * hidden_loss(student_outputs, teacher_outputs, inputs)
    return loss


class DistillationMixin:
    """The Trainer side of distillation, mixed into the pruning trainers (``self.pruned_model`` is the student)."""

    distillation_teacher = None
    _teacher_path = None

    def _setup_teacher(self, student) -> None:
        """A named teacher loads (and a bad one fails) here, before training; the default one comes later."""
        args = self.args
        self.distillation_teacher, self._teacher_path = None, args.teacher_model_name_or_path
        if args.distillation and args.teacher_model_name_or_path:
            self.distillation_teacher = load_teacher(args.teacher_model_name_or_path, student,
                                                     args.distillation_hidden_weight)

    def _take_teacher(self) -> None:
        """At the reference: the model as it stands becomes the teacher, saved once for a resumed run."""
        if not self.args.distillation or self.distillation_teacher is not None:
            return
        self.distillation_teacher = copy_teacher(self.pruned_model)
        self._teacher_path = os.path.join(self.args.output_dir, TEACHER_FOLDER)
        if self.args.should_save:
            self.distillation_teacher.save_pretrained(self._teacher_path)

    def teacher_state(self) -> str | None:
        """What ``pruning_state.pt`` records of the teacher: where its weights are (never the weights)."""
        return self._teacher_path if self.distillation_teacher is not None else None

    def load_teacher_state(self, path: str | None) -> None:
        if not (self.args.distillation and path) or self.distillation_teacher is not None:
            return
        if not os.path.isdir(path):
            raise FileNotFoundError(f"this checkpoint distils from the teacher saved at {path}, which is gone; "
                                    "restore it or pass --teacher_model_name_or_path")
        self._teacher_path = path
        self.distillation_teacher = load_teacher(path, self.pruned_model, self.args.distillation_hidden_weight)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The task loss, plus distillation from the dense teacher once it exists (training only)."""
        teacher, args = self.distillation_teacher, self.args
        if teacher is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if args.distillation_hidden_weight > 0:
            inputs = {**inputs, "output_hidden_states": True}
        # a copy: with label smoothing, Trainer.compute_loss pops "labels", which mark the positions to distil.
        # No item count: the task loss is then this micro-batch's mean, like the distillation terms, whether or
        # not the model's loss reads num_items_in_batch (most of those pruned here ignore it).
        task_loss, outputs = super().compute_loss(model, dict(inputs), return_outputs=True, num_items_in_batch=None)
        follow(teacher, self.pruned_model)  # the student may have moved (Trainer places it at train())
        with torch.no_grad():
            teacher_outputs = teacher(**inputs)
        loss = distillation_loss(self.pruned_model, task_loss, outputs, teacher_outputs, inputs,
                                 alpha=args.distillation_alpha, temperature=args.distillation_temperature,
                                 hidden_weight=args.distillation_hidden_weight)
        # a mean over the micro-batch: Trainer divides it by the accumulation steps unless it takes the loss for
        # one already normalised by the step's item count; then it is divided here (alpha keeps its balance)
        scaled = self.loss_is_scaled_for_ga if getattr(self, "loss_is_scaled_for_ga", None) is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
        if scaled:
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss
