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
``<output_dir>/_distillation_teacher`` when the reference is taken (the leading
underscore keeps it out of Trainer's Hub pushes), and a resumed run loads it from there.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import os

import torch
import torch.nn.functional as F
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..engine.masks import detach_masks, get_masks
from ..hub.remote_code import transformers_class
from .eval_loss import EvalLossMixin

logger = logging.getLogger(__name__)

TEACHER_FOLDER = "_distillation_teacher"  # Trainer.push_to_hub leaves "_*" out of the upload
LAYERDROP_FIELDS = ("layerdrop", "encoder_layerdrop", "decoder_layerdrop")


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
    """The teacher saved at ``path``, of the student's class (a pruned folder in its pruned shapes); refused when
    its outputs cannot be compared or its head is not in the folder."""
    from ..hub.load import AutoPrunedModel, load_pruned_config
    from ..layout import read_record

    try:
        config = load_pruned_config(path)
    except (OSError, ValueError) as err:  # a mistyped folder reads as a Hub id; a folder without config.json
        raise ValueError(f"--teacher_model_name_or_path {path}: cannot load a model from it (a local folder with "
                         f"config.json, or a Hub id that is reachable or cached): {' '.join(str(err).split())}") \
            from err
    if config.model_type != student.config.model_type:  # before any weight is read into the student's class
        raise ValueError(f"the teacher at {path} is a {config.model_type} model but the student a "
                         f"{student.config.model_type}: distillation compares their outputs one to one, so both "
                         "must be the same architecture")
    if read_record(config):
        teacher, info = AutoPrunedModel.from_pretrained(path, config=config, output_loading_info=True)
    else:
        teacher, info = stock_class(student).from_pretrained(path, output_loading_info=True)
    if info.get("missing_keys"):
        raise ValueError(f"the teacher at {path} lacks {sorted(info['missing_keys'])[:3]}: it is not a "
                         f"{stock_class(student).__name__} (another head?), so its new weights would be random; "
                         "give a teacher fine-tuned for the student's task")
    check_teacher(teacher, student, hidden_weight)
    return freeze(teacher, student)


def check_teacher(teacher, student, hidden_weight: float) -> None:
    s, t = student.config, teacher.config
    if stock_class(teacher) is not stock_class(student) or t.model_type != s.model_type:
        raise ValueError(f"the teacher is a {stock_class(teacher).__name__} ({t.model_type}) but the student a "
                         f"{stock_class(student).__name__} ({s.model_type}): distillation compares their outputs "
                         "one to one, so both must be the same architecture")
    # decoder_vocab_size: a Marian decoder with a vocabulary of its own writes logits over that many tokens;
    # num_labels sizes a classifier's output only (a translation or CTC model's config carries one it never reads)
    sizes = ("vocab_size", "decoder_vocab_size") + (("num_labels",) if reads_num_labels(student) else ())
    for name in sizes:
        if getattr(t, name, None) != getattr(s, name, None):
            raise ValueError(f"the teacher's {name} ({getattr(t, name, None)}) differs from the student's "
                             f"({getattr(s, name, None)}): their output distributions cannot be compared")
    if ctc_frame_lengths(student) is not None:  # frame i of one is frame i of the other only at one frame rate
        for name in FRAME_FIELDS:  # a tuple in a config built in memory, a list once saved
            if _plain(getattr(t, name, None)) != _plain(getattr(s, name, None)):
                raise ValueError(f"the teacher's {name} ({getattr(t, name, None)}) differs from the student's "
                                 f"({getattr(s, name, None)}): their feature encoders make frames of other lengths, "
                                 "so frame i of one is not frame i of the other; use a teacher with the student's "
                                 "feature encoder")
    named = [dict(c.id2label) for c in (t, s) if getattr(c, "id2label", None)
             and any(name != f"LABEL_{i}" for i, name in dict(c.id2label).items())]
    if len(named) == 2 and named[0] != named[1]:
        raise ValueError(f"the teacher's classes {named[0]} are not the student's {named[1]}: output i would be "
                         "distilled into another class")
    if hidden_weight > 0:
        for name in ("hidden_size", "d_model", "num_hidden_layers", "num_layers", "encoder_layers",
                     "decoder_layers", "num_decoder_layers"):  # num_decoder_layers: T5's
            if getattr(t, name, None) != getattr(s, name, None):
                raise ValueError(f"--distillation_hidden_weight compares layer i with layer i, but the teacher's "
                                 f"{name} ({getattr(t, name, None)}) differs from the student's "
                                 f"({getattr(s, name, None)}); set it to 0 or use a teacher of the same shape")


FRAME_FIELDS = ("conv_kernel", "conv_stride", "add_adapter", "adapter_kernel_size", "adapter_stride",
                "num_adapter_layers")
CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForAudioClassification",
                       "ForAudioFrameClassification")  # a multiple-choice head scores each choice with one output


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def reads_num_labels(model) -> bool:
    """Whether ``model``'s head writes ``num_labels`` outputs (a classifier), so a teacher must have as many."""
    return stock_class(model).__name__.endswith(CLASSIFIER_SUFFIXES)


def ctc_frame_lengths(model):
    """A CTC model's audio samples -> frames function, or None for any other model (Whisper has the method too, but
    its logits are the decoder's target tokens)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return None
    return getattr(model, "_get_feat_extract_output_lengths", None)


def shifts_labels(model) -> bool:
    """Whether ``model``'s loss predicts label i + 1 at position i: a causal-LM head (BertLMHeadModel,
    BartForCausalLM, ...; transformers' own test, the loss type, misses those whose config says encoder-decoder or
    that name no loss type)."""
    cls = transformers_class(model)
    return cls is not None and cls.__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def prediction_mask(student, inputs: dict, logits: torch.Tensor) -> torch.Tensor | None:
    """Which positions of ``logits`` (batch, positions, classes) carry a prediction; ``None``: all of them."""
    if logits.dim() != 3:  # one prediction per example (a multi-label head's float labels are no positions)
        return None
    attention = inputs.get("attention_mask")
    lengths = ctc_frame_lengths(student)
    if lengths is not None:  # CTC: the transcript's length says nothing of frames, whatever its padded length
        if attention is None or attention.shape == logits.shape[:2]:
            return None  # no samples' mask: every frame is real
        frames = lengths(attention.sum(-1)).to(logits.device)
        return torch.arange(logits.shape[1], device=logits.device)[None, :] < frames[:, None]
    labels = inputs.get("labels")
    if labels is not None and labels.dim() == 2 and labels.shape == logits.shape[:2]:
        if shifts_labels(student):  # a causal LM's position i predicts label i + 1, as its loss reads them
            return torch.cat([labels[:, 1:] != -100, torch.zeros_like(labels[:, :1], dtype=torch.bool)], dim=1)
        return labels != -100  # target tokens (seq2seq, Whisper, token classification); -100 is padding
    if attention is not None and attention.shape == logits.shape[:2]:
        return attention.bool()
    return None


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` holds; what lies outside it (a NaN of a padding frame) is left out."""
    if mask is None:
        return values.mean()
    mask = mask.bool()
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


def logit_loss(student_logits, teacher_logits, temperature: float, mask=None,
               problem_type: str | None = None) -> torch.Tensor:
    """T^2-scaled KL(teacher || student) per position, averaged over ``mask``: of the softmax over the classes,
    or of each class's sigmoid for a multi-label head (``problem_type``); MSE for a regression head."""
    if problem_type == "multi_label_classification":  # a yes/no per class (one class too): each Bernoulli's KL
        s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
        p = torch.sigmoid(t)
        kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
        return masked_mean(kl.sum(-1), mask) * temperature ** 2
    if problem_type == "regression" or student_logits.shape[-1] == 1:
        return masked_mean((student_logits.float() - teacher_logits.float()).pow(2).mean(-1), mask)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # a class the teacher gives probability 0 (a -inf logit: the ASR recipe's blank padding frames) adds 0, not
    # 0 * -inf = NaN
    kl = torch.where(torch.isneginf(log_teacher), 0.0, log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    return masked_mean(kl, mask) * temperature ** 2


def output_logits(outputs) -> list[tuple[str, torch.Tensor]]:
    """The outputs distilled, by key: ``logits``, or a question-answering head's ``start_logits`` and ``end_logits``
    (each a distribution over the positions, their KL averaged)."""
    keys = ["logits"] if "logits" in outputs else [k for k in ("start_logits", "end_logits") if k in outputs]
    if not keys:
        raise ValueError(f"--distillation reads the model's logits, but its outputs are {list(outputs.keys())}")
    return [(key, outputs[key]) for key in keys]


def layer_outputs(outputs) -> list[tuple[torch.Tensor, str]]:
    """Each layer's output (embedding output left out), with the side it belongs to."""
    found = []
    for key, side in (("hidden_states", "encoder"), ("encoder_hidden_states", "encoder"),
                      ("decoder_hidden_states", "decoder")):
        states = outputs.get(key) if hasattr(outputs, "get") else None
        if states is not None and not isinstance(states, torch.Tensor):
            found += [(state, side) for state in states[1:]]
    return found


def removed_layer_slots(student) -> dict[str, set[int]]:
    """Per side (``encoder`` / ``decoder``), the indices of the layers ``student``'s masks gate off entirely (a
    side with one layer stack): their output is their input, the output of the layer before."""
    masks = get_masks(student)
    if masks is None:
        return {}
    stacks = [masks.groups[name] for name in masks.of_kind("layers")]
    removed = {}
    for side in ("encoder", "decoder"):
        # one stack alone (a BERT or BART decoder on its own: its role "decoder", its outputs hidden_states) is
        # every layer output's
        of_side = stacks if len(stacks) == 1 else [stack for stack in stacks if stack.role == side]
        if len(of_side) == 1:
            removed[side] = set(torch.nonzero(masks.masks[of_side[0].name] == 0).flatten().tolist())
    return removed


def hidden_loss(student, student_outputs, teacher_outputs, inputs: dict) -> torch.Tensor:
    """Mean over layers of the per-position MSE, over real (not padding) positions where that is known (an audio
    encoder's frames from the samples' attention mask, as ``student`` turns samples into frames). A layer the
    student's masks remove is left out: its output is the layer before's, which would be pulled towards the
    teacher's next layer against its own term."""
    student_layers, teacher_layers = layer_outputs(student_outputs), layer_outputs(teacher_outputs)
    if not student_layers or len(student_layers) != len(teacher_layers):
        raise ValueError(f"--distillation_hidden_weight needs every layer's output from both models; got "
                         f"{len(student_layers)} student and {len(teacher_layers)} teacher layers")
    removed, position = removed_layer_slots(student), {}
    losses = []
    for (s, side), (t, _) in zip(student_layers, teacher_layers):
        index = position[side] = position.get(side, -1) + 1
        if index in removed.get(side, ()):
            continue
        key = "attention_mask" if side == "encoder" else "decoder_attention_mask"
        mask = inputs.get(key)
        if side == "decoder" and mask is None and inputs.get("labels") is not None:
            mask = inputs["labels"] != -100
        if mask is not None and mask.shape != s.shape[:2]:  # audio encoders: frames, not samples
            lengths = ctc_frame_lengths(student)
            if lengths is not None and "add_adapter" in inspect.signature(lengths).parameters:
                lengths = functools.partial(lengths, add_adapter=False)  # the layers come before an adapter
            frames = lengths(mask.sum(-1)).to(s.device) if lengths is not None else None
            mask = None if frames is None else torch.arange(s.shape[1], device=s.device)[None, :] < frames[:, None]
        losses.append(masked_mean((s.float() - t.float()).pow(2).mean(-1), mask))
    return torch.stack(losses).mean()


def distillation_loss(student, task_loss, student_outputs, teacher_outputs, inputs: dict, *, alpha: float,
                      temperature: float, hidden_weight: float = 0.0, kd_scale: float = 1.0) -> torch.Tensor:
    """``alpha * task_loss + kd_scale * ((1 - alpha) * KD + hidden_weight * hidden)``; the distillation terms are
    means over the batch's positions, ``kd_scale`` puts them on the task loss's scale."""
    kd = torch.stack([logit_loss(logits, teacher_outputs[key], temperature, prediction_mask(student, inputs, logits),
                                 getattr(student.config, "problem_type", None))
                      for key, logits in output_logits(student_outputs)]).mean()
    extra = (1.0 - alpha) * kd
    if hidden_weight > 0:
        extra = extra + hidden_weight * hidden_loss(student, student_outputs, teacher_outputs, inputs)
    return alpha * task_loss + kd_scale * extra


# what only --distillation reads
# set without --distillation: warned of as not read (a hidden weight or a teacher without it is refused when parsed)
DISTILLATION_OPTIONS = ("distillation_alpha", "distillation_temperature")


def layers_dropped(config) -> dict[str, float]:
    """The config's non-zero layer-drop probabilities (``{"layerdrop": 0.1}``): layers skipped at random in
    training, which leave a step without their gradients or outputs."""
    return {field: getattr(config, field) for field in LAYERDROP_FIELDS if getattr(config, field, 0)}


def distillation_settings(alpha, temperature, hidden_weight, teacher) -> dict:
    """What a report records of a distillation: its weights, temperature and teacher."""
    return {"alpha": alpha, "temperature": temperature, "hidden_weight": hidden_weight,
            "teacher": teacher or "the model at the pruning reference"}


class DistillationMixin(EvalLossMixin):
    """The Trainer side of distillation, mixed into the pruning trainers (``self.pruned_model`` is the student)."""

    distillation_teacher = None
    earlier_distillation = None  # a resumed checkpoint's distillation this run (without --distillation) ended
    distillation_off_note = "set --distillation true to distil"  # why options only --distillation reads are idle
    _teacher_path = None
    _teacher_ran = False  # compute_loss ran the teacher in this training step
    _teacher_released = False  # the run ended and let its teacher go (release_teacher): the report still names it

    def _setup_teacher(self, student) -> None:
        """A named teacher loads (and a bad one fails) here, before training; the default one comes later."""
        from .arguments import changed_options  # (arguments imports this module)

        args = self.args
        self.distillation_teacher, self._teacher_path = None, args.teacher_model_name_or_path
        self._reset_item_count_probe()
        dropping = layers_dropped(student.config)
        if args.distillation and args.distillation_hidden_weight > 0 and dropping:
            raise ValueError(f"--distillation_hidden_weight compares layer i with layer i, but the model skips "
                             f"layers at random while training ({', '.join(f'{k}={v}' for k, v in dropping.items())})"
                             f", and then returns fewer layer outputs: set {' and '.join(dropping)} to 0 in the "
                             "model's config, or --distillation_hidden_weight 0")
        if args.distillation and args.teacher_model_name_or_path:
            self.distillation_teacher = load_teacher(args.teacher_model_name_or_path, student,
                                                     args.distillation_hidden_weight)
        unread = [] if args.distillation else changed_options(args, DISTILLATION_OPTIONS)
        if unread:
            logger.warning("%s not read: --distillation is off (%s)",
                           ", ".join(f"--{name} {getattr(args, name)}" for name in unread), self.distillation_off_note)

    def _take_teacher(self) -> None:
        """At the reference: the model as it stands becomes the teacher, saved once for a resumed run."""
        if not self.args.distillation or self.distillation_teacher is not None:
            return
        self.distillation_teacher = copy_teacher(self.pruned_model)
        # absolute: a run resumed from another working directory finds it (a relative --output_dir would not)
        self._teacher_path = os.path.abspath(os.path.join(self.args.output_dir, TEACHER_FOLDER))
        if self.args.should_save:
            self.distillation_teacher.save_pretrained(self._teacher_path)

    def _distilled_step(self, train_step, *args):
        """Run one ``training_step``; with a teacher, refuse a ``compute_loss`` that never reached this one (a
        subclass's override that does not call ``super().compute_loss``), which would train without distillation."""
        self._teacher_ran = False
        loss = train_step(*args)
        if self.distillation_teacher is not None and not self._teacher_ran:
            raise RuntimeError(
                f"--distillation is on, but {type(self).__name__}.compute_loss did not call "
                "super().compute_loss(...), where the teacher runs: training would go on without distillation. Call "
                "it from your compute_loss (it returns the task loss plus the distillation terms), pass your loss as "
                "compute_loss_func=..., or set --distillation false")
        return loss

    def release_teacher(self) -> None:
        """At the end of the run: the teacher (a whole model, on the student's device) is no longer read; its memory
        goes, and the report and card still say what distilled."""
        if self.distillation_teacher is not None:
            self.distillation_teacher, self._teacher_released = None, True

    def _has_teacher(self) -> bool:
        return self.distillation_teacher is not None or self._teacher_released

    def distillation_record(self) -> dict | None:
        """What the report says was distilled: the settings of a teacher that ran (None: none did, e.g. training
        ended before the reference), or a resumed checkpoint's, with the step this run stopped it at."""
        args = self.args
        if args.distillation and self._has_teacher():
            return distillation_settings(args.distillation_alpha, args.distillation_temperature,
                                         args.distillation_hidden_weight, args.teacher_model_name_or_path)
        return self.earlier_distillation

    def teacher_state(self) -> str | None:
        """What ``pruning_state.pt`` records of the teacher: where its weights are (never the weights)."""
        return self._teacher_path if self._has_teacher() else None

    def load_teacher_state(self, path: str | None, saved_args: dict | None = None) -> None:
        """The checkpoint's teacher (``path``: where its weights are; None: it had none), loaded when this run
        distils; one that this run, resumed without ``--distillation``, no longer uses is recorded
        (``earlier_distillation``) with the checkpoint's settings (``saved_args``) and the step it stopped at."""
        if path and not self.args.distillation and self.distillation_teacher is None:
            saved_args = saved_args or {}
            self.earlier_distillation = {
                **distillation_settings(saved_args.get("distillation_alpha"),
                                        saved_args.get("distillation_temperature"),
                                        saved_args.get("distillation_hidden_weight"),
                                        saved_args.get("teacher_model_name_or_path")),
                "until_step": int(self.state.global_step)}
        if not (self.args.distillation and path) or self.distillation_teacher is not None:
            return
        if not os.path.isdir(path):  # the run's folder moved or was copied: its teacher travelled with it
            here = os.path.abspath(os.path.join(self.args.output_dir, TEACHER_FOLDER))
            if not os.path.isdir(here):
                raise FileNotFoundError(f"this checkpoint distils from the teacher saved at {path}, which is gone, "
                                        f"and --output_dir holds none ({here}): put that folder back at either path")
            logger.warning("the teacher this checkpoint names (%s) is gone; distilling from the one in --output_dir "
                           "(%s), as a moved or copied run's folder holds it", path, here)
            path = here
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
        # The model gets no item count: its task loss is then this micro-batch's mean, like the distillation
        # terms, whether or not it reads num_items_in_batch (most models pruned here ignore it). A user's
        # compute_loss_func gets it, as Trainer gives it, and normalises by it.
        custom = self.compute_loss_func is not None
        task_loss, outputs = super().compute_loss(model, dict(inputs), return_outputs=True,
                                                  num_items_in_batch=num_items_in_batch if custom else None)
        follow(teacher, self.pruned_model)  # the student may have moved (Trainer places it at train())
        # under --bf16 / --fp16 the student's forward runs in accelerate's autocast, which only a model it prepared
        # carries (the default teacher, a copy of the prepared student): a loaded teacher gets it here
        with torch.no_grad(), self.accelerator.autocast():
            teacher_outputs = teacher(**inputs)
        self._teacher_ran = True
        terms = dict(alpha=args.distillation_alpha, temperature=args.distillation_temperature,
                     hidden_weight=args.distillation_hidden_weight)
        if custom:
            # normalised by the step's item count: the per-batch distillation terms are divided by the accumulation
            # steps beside it (Trainer does not divide), and the whole gets the process factor Trainer gave it
            steps = self.current_gradient_accumulation_steps if self._trainer_keeps_scale(num_items_in_batch) else 1
            processes = self._process_loss_factor(num_items_in_batch)
            loss = distillation_loss(self.pruned_model, task_loss / processes, outputs, teacher_outputs, inputs,
                                     kd_scale=1.0 / steps, **terms) * processes
        else:  # all per-batch means: the scale Trainer gave the model's loss before the teacher existed
            loss = distillation_loss(self.pruned_model, task_loss, outputs, teacher_outputs, inputs, **terms)
            loss = loss * self._task_loss_scale(model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _trainer_keeps_scale(self, num_items_in_batch) -> bool:
        """Whether ``training_step`` leaves the loss undivided by the accumulation steps (taking it for normalised
        by the step's item count), as it decides for every loss of this run."""
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def _task_loss_scale(self, model, inputs, num_items_in_batch) -> float:
        """What turns a micro-batch mean into the scale the model's loss had under Trainer before the teacher
        existed, so that the gradients keep their scale (and alpha=1 trains as no distillation). Where Trainer
        divides by the accumulation steps itself: 1. Where it does not: a loss that reads the item count it is given
        (a causal LM's: the step's tokens over every process) was about a micro-batch mean over the steps, Trainer's
        process factor cancelling the count of the other processes; one that ignores it (most heads pruned here)
        stayed a micro-batch mean, times that factor."""
        if not self._trainer_keeps_scale(num_items_in_batch):
            return 1.0
        if self._loss_reads_item_count(model, inputs):
            return 1.0 / self.current_gradient_accumulation_steps
        return float(self._process_loss_factor(num_items_in_batch))

    def _process_loss_factor(self, num_items_in_batch) -> int:
        """What ``Trainer.compute_loss`` multiplies a loss by under several processes (1 where it does not)."""
        args = self.args
        if not (getattr(args, "average_tokens_across_devices", False) and num_items_in_batch is not None
                and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None)):
            return 1
        if args.n_gpu > 1:
            return args.n_gpu
        return self.accelerator.num_processes // (self.get_tp_size() if hasattr(self, "get_tp_size") else 1)
