"""``PruningArguments``: ``TrainingArguments`` plus what to prune, how far and how carefully.

Every field parses with ``HfArgumentParser`` from the command line or a JSON/YAML
file, like the rest of the training arguments. Bad values fail here, before any
model is loaded.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import typing
from dataclasses import dataclass, field, fields

import torch
from accelerate.utils import parse_flag_from_env
from transformers import Seq2SeqTrainingArguments, TrainingArguments
from transformers.trainer_utils import HubStrategy

from ..engine.importance import IMPORTANCE_CRITERIA
from ..families import ROLES
from ..metrics import known_greater_is_better
from ..post_training.dense_targets import REFIT_TARGETS
from ..engine.selection import SCOPES
from .distillation import validate_distillation_arguments
from .ramp import ramp_problem
from .schedule import SCHEDULES, decision_interval, interval_option

STRUCTURES = ("heads", "ffn", "layers")
TARGET_TYPES = ("structures", "flops", "latency")

logger = logging.getLogger(__name__)


def launched_processes() -> int:
    """How many processes ``torchrun`` / ``accelerate launch`` started (``WORLD_SIZE``; 1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


@dataclass
class PruningArguments(TrainingArguments):
    prune: str = field(
        default="both",
        metadata={"help": "What to prune: 'heads', 'ffn', 'layers' (whole transformer layers) or a comma list of "
                          "them; 'both' = 'heads,ffn'."},
    )
    pruning_roles: str = field(
        default="all",
        metadata={"help": "Comma-separated roles to prune (encoder_self, decoder_self, cross for heads; encoder, "
                          "decoder for FFN) or 'all'. Encoder-only models have encoder_self and encoder."},
    )
    pruning_criterion: str = field(default="taylor", metadata={"help": "Importance: 'taylor', 'fisher' (squared Taylor), 'magnitude' or 'random'."})
    pruning_score_ema: float = field(
        default=0.0,
        metadata={"help": "taylor / fisher: 0 averages the per-step scores since the start; a value in (0, 1) keeps "
                          "an exponential moving average with this weight on the previous scores (e.g. 0.85)."},
    )
    pruning_target: float = field(
        default=0.5, metadata={"help": "Target sparsity in (0, 1): fraction of heads/neurons or of layer FLOPs."}
    )
    pruning_target_type: str = field(
        default="flops",
        metadata={"help": "'flops': the target is a fraction of the prunable layers' FLOPs; 'structures': a fraction "
                          "of heads and of neurons; 'latency': a fraction of their time measured at start on this "
                          "device (forward, or generate for encoder-decoders)."},
    )
    pruning_metric: str = field(
        default="loss",
        metadata={"help": "Metric steering the ratio: an `evaluate` metric name (accuracy, f1, sacrebleu, wer, ...) or "
                          "a key returned by compute_metrics; 'loss' uses the eval loss."},
    )
    pruning_greater_is_better: bool | None = field(
        default=None,
        metadata={"help": "Whether a higher --pruning_metric is better. Default: the known direction of the metric "
                          "(losses, wer, cer, mse, ... lower; accuracy, f1, bleu, ... higher; a --greater_is_better "
                          "against it is warned of and steers best-model selection only), else --greater_is_better "
                          "when --pruning_metric is --metric_for_best_model; other names must set it."},
    )
    pruning_tolerance: float = field(default=0.01, metadata={"help": "Largest allowed metric drop vs the dense model."})
    pruning_tolerance_type: str = field(default="absolute", metadata={"help": "'absolute' or 'relative' drop."})
    pruning_warmup_steps: int = field(
        default=100, metadata={"help": "Fine-tuning steps before the reference metric and the first pruning step."}
    )
    pruning_interval: int = field(
        default=50, metadata={"help": "Fine-tuning steps between a pruning step and its evaluation."}
    )
    pruning_initial_step: float = field(default=0.1, metadata={"help": "Sparsity added by the first pruning step."})
    pruning_min_step: float = field(
        default=0.0125, metadata={"help": "Stop once roll-backs halve the step below this."}
    )
    pruning_step_growth: float = field(
        default=1.5, metadata={"help": "Factor applied to the step after a kept step (1 keeps it constant)."}
    )
    pruning_schedule: str = field(
        default="gradual",
        metadata={"help": "'gradual': prune a step, fine-tune --pruning_interval steps, decide, repeat (the ratio grows "
                          "while training goes on). 'search_then_recover': after the warm-up, try the target at once "
                          "and bisect towards the largest ratio within tolerance, each candidate judged after "
                          "--pruning_search_steps steps; the rest of the budget fine-tunes at that shape."},
    )
    pruning_search_steps: int = field(
        default=0,
        metadata={"help": "search_then_recover: fine-tuning steps between masking a candidate ratio and judging it "
                          "(0: judged right after masking, the whole search within one step)."},
    )
    pruning_ramp_steps: int = field(
        default=0,
        metadata={"help": "Optimizer steps over which the structures a pruning step removes fade from 1 to 0 (0: at "
                          "once). At most --pruning_interval (gradual) or --pruning_search_steps "
                          "(search_then_recover): masks are 0/1 again before each decision."},
    )
    pruning_refit: bool = field(
        default=False,
        metadata={"help": "When a pruning step's masks are in place, re-fit by least squares the output projection "
                          "(weight, bias) of every head/FFN group that lost structures, on --pruning_refit_samples "
                          "training rows; a rolled-back candidate undoes it. Encoder classifiers (BERT family)."},
    )
    pruning_refit_samples: int = field(
        default=512, metadata={"help": "--pruning_refit: training rows (drawn with --seed) the re-fit is computed on."})
    pruning_refit_long_share: float = field(
        default=0.0,
        metadata={"help": "--pruning_refit: share of its rows drawn from the longest fifth of the training rows (by "
                          "token count), the rest from the others; 0: a plain random draw. For training sets of short "
                          "rows served on longer inputs (SST-2's phrases vs whole sentences)."})
    pruning_refit_target: str = field(
        default="dense_residual",
        metadata={"help": "--pruning_refit: what the re-fit matches, the model under the accepted masks being the "
                          "reference: 'dense_residual' (its residual-stream sum before the next LayerNorm, absorbing "
                          "upstream drift), 'dense_output' (its projection output), 'same_input' (its projection of "
                          "the candidate's own input)."})
    pruning_scope: str = field(
        default="global", metadata={"help": "'global' ranks all layers together; 'layer' prunes each layer equally."}
    )
    pruning_normalize_scores: bool = field(
        default=False,
        metadata={"help": "With --pruning_scope global: divide each layer's scores by their L2 norm before ranking "
                          "them together (the default until 2026-12-05; under --pruning_scope layer, where each layer "
                          "is ranked on its own, it changes nothing). Default false: rank the raw scores, "
                          "estimates of the loss change on one scale, more accurate in every schedule measured "
                          "(README, Which scores to rank)."},
    )
    min_heads_per_layer: int = field(default=1, metadata={"help": (
        "Heads kept per attention block at least (0 allowed); with grouped-query attention (Llama, Qwen2, ...) "
        "key/value groups, each a key/value head with its query heads.")})
    min_neurons_per_layer: int = field(default=1, metadata={"help": "FFN neurons kept per layer at least (0 allowed)."})
    pruning_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate each pruning decision on the first N eval examples (default: all)."}
    )
    pruning_multiple_of: int = field(
        default=1,
        metadata={"help": "Round each pruned FFN's kept width, and each attention's kept heads x head_dim, to a "
                          "multiple of this (e.g. 8 or 16, widths GEMM kernels like); 1 turns rounding off."},
    )
    pruning_latency_batch_size: int = field(
        default=1, metadata={"help": "Batch size at which --pruning_target_type latency measures the model."})
    pruning_latency_seq_len: int | None = field(
        default=None, metadata={"help": "Sequence length for the latency table (default: --pruning_seq_len)."})
    pruning_generation_tokens: int = field(
        default=16, metadata={"help": "Tokens generated per measurement of the latency table of a model that generates "
                                      "(an encoder-decoder, or a decoder-only language model after its prompt)."})
    pruning_seq_len: int = field(default=128, metadata={"help": "Sequence length at which FLOPs are counted."})
    compact_at_end: bool = field(default=True, metadata={"help": "Physically remove pruned structures after training."})
    distillation: bool = field(
        default=False,
        metadata={"help": "Distil from a frozen dense teacher while pruning (logit KL, and layer outputs with "
                          "--distillation_hidden_weight)."},
    )
    distillation_alpha: float = field(
        default=0.5, metadata={"help": "Weight of the task loss; the logit distillation loss gets 1 - alpha."})
    distillation_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the logit KL."})
    distillation_hidden_weight: float = field(
        default=0.0, metadata={"help": "Weight of the layer-output MSE (layer i of the student vs layer i of the "
                                       "teacher; 0: off)."})
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The teacher (same architecture and outputs). Default: a frozen copy of the model as it "
                          "stands when the dense reference is taken, saved to <output_dir>/_distillation_teacher."},
    )
    pruning_resume_with_new_arguments: bool = field(
        default=False,
        metadata={"help": "Resume from a checkpoint whose pruning arguments differ from these, continuing with these "
                          "(by default such a resume is refused, naming the differences)."},
    )

    def __post_init__(self):
        processes = launched_processes()
        if processes > 1 and not self.use_cpu and not has_accelerator():
            # Without this, transformers runs every process as a separate single-process job on a
            # machine without GPUs: each rank would train and prune its own replica.
            logger.info("%d processes launched on a machine without an accelerator: using the CPU (gloo)", processes)
            self.use_cpu = True
        # TrainingArguments fills greater_is_better in from metric_for_best_model's name ("...loss" or not): only a
        # value the user gave that differs from that guess may overrule a metric's known direction (wer, mse: lower is
        # better). Arguments copied (dataclasses.replace, to_dict + parse_dict) run this again with the guess filled
        # in, which must not read as given; --pruning_greater_is_better overrules any direction
        best_name = self.metric_for_best_model
        guess = None if best_name is None else not best_name.endswith("loss")
        self.greater_is_better_given = self.greater_is_better is not None and self.greater_is_better != guess
        sharded = sharded_training_problem(self)  # before transformers sets FSDP / DeepSpeed up (or fails to)
        if sharded:
            raise ValueError(sharded)
        super().__post_init__()
        validate_pruning_arguments(self)
        best = (self.metric_for_best_model or "").removeprefix("eval_")
        known = known_greater_is_better(best) if best else None
        if best and known is not None and known != self.greater_is_better:
            taken = f"--greater_is_better {str(self.greater_is_better).lower()} (given)" \
                if self.greater_is_better_given else "transformers' guess from the name"
            logger.warning("--metric_for_best_model %s: best-model selection takes a %s value as better (%s), where "
                           "a %s %s is better; set --greater_is_better %s for best-model selection (pruning "
                           "decisions use the metric's own direction, unless --pruning_greater_is_better says "
                           "otherwise)", best, "higher" if self.greater_is_better else "lower", taken,
                           "higher" if known else "lower", best, str(known).lower())
        if self.push_to_hub and self.hub_strategy != HubStrategy.END:
            # A mid-training push copies the checkpoint's dense, unmasked weights to the Hub without
            # their pruning record; the pruned model is pushed by save_model() / push_to_hub().
            logger.warning("--hub_strategy %s: checkpoints hold dense weights under masks, so hf_adaprune pushes "
                           "only the pruned model at the end (hub_strategy 'end')", self.hub_strategy.value)
            self.hub_strategy = HubStrategy.END
        if processes > 1 and self.world_size != processes:
            raise ValueError(
                f"{processes} processes were launched but the Trainer sees a world size of "
                f"{self.world_size}: every process would train and prune its own copy of the model. "
                "Check the device and --ddp_backend settings (on CPU: --use_cpu, --ddp_backend gloo).")

    def selected_roles(self) -> set[str]:
        if self.pruning_roles.strip() == "all":
            return set(ROLES)
        return {r.strip() for r in self.pruning_roles.split(",") if r.strip()}


@dataclass
class Seq2SeqPruningArguments(Seq2SeqTrainingArguments, PruningArguments):
    """:class:`PruningArguments` with the generation options of ``Seq2SeqTrainingArguments``."""

    def __post_init__(self):
        super().__post_init__()


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"--{name} must be one of {', '.join(choices)}; got {value!r}")


# Arguments that change what a resumed run would decide; compared against the checkpoint's on resume.
_NOT_COMPARED_ON_RESUME = {"compact_at_end", "pruning_resume_with_new_arguments"}
# what the latency table is measured at: read (and so compared on resume) under --pruning_target_type latency only
LATENCY_OPTIONS = ("pruning_latency_batch_size", "pruning_latency_seq_len", "pruning_generation_tokens")


def changed_options(args, names) -> list[str]:
    """Those of the options ``names`` that ``args`` sets away from their defaults, in the order given."""
    defaults = {f.name: f.default for f in fields(PruningArguments) if f.name in names}
    return [name for name in names if getattr(args, name) != defaults[name]]


def pruning_fields() -> list:
    """The dataclass fields :class:`PruningArguments` adds to ``TrainingArguments``."""
    stock = {f.name for f in fields(TrainingArguments)}
    return [f for f in fields(PruningArguments) if f.name not in stock]


# Seq2Seq options that change a generated metric (BLEU, WER, ...) the decisions compare with the reference
GENERATION_FIELDS = ("predict_with_generate", "generation_max_length", "generation_num_beams", "generation_config")


def pruning_arguments(args) -> dict:
    """The pruning fields of ``args`` (those :class:`PruningArguments` adds), as plain values; for Seq2Seq
    arguments steered by a metric other than the loss, also the generation options that metric is measured with
    (a resume under others compared a reference and decisions measured one way with values measured another)."""
    own = {f.name for f in pruning_fields()} - _NOT_COMPARED_ON_RESUME
    if args.pruning_target_type != "latency":  # they measure nothing then: a resume may change them
        own -= set(LATENCY_OPTIONS)
    if args.pruning_schedule == "search_then_recover":  # read by nothing then: a resume may change them
        own -= set(GRADUAL_ONLY)
    values = {name: getattr(args, name) for name in sorted(own)}
    # spelled one way: 'both', 'heads,ffn' and 'ffn,heads' prune the same, and a resume compares these
    values.update({name: normalised_comma_list(name, values[name]) for name in COMMA_LIST_FIELDS if name in values})
    if isinstance(args, Seq2SeqTrainingArguments) and args.pruning_metric != "loss":
        for name in GENERATION_FIELDS:
            value = getattr(args, name, None)
            values[name] = value.to_json_string() if hasattr(value, "to_json_string") else \
                None if value is None else value if isinstance(value, (bool, int, float)) else str(value)
    return values


def sharded_training_problem(args) -> str | None:
    """Why FSDP or DeepSpeed (from the arguments, or from ``accelerate launch``'s config) cannot prune, or None."""
    if args.fsdp or parse_flag_from_env("ACCELERATE_USE_FSDP"):
        used = f"--fsdp {args.fsdp}" if args.fsdp else "FSDP (ACCELERATE_USE_FSDP, from the accelerate config)"
    elif args.deepspeed or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        used = "--deepspeed" if args.deepspeed else "DeepSpeed (ACCELERATE_USE_DEEPSPEED, from the accelerate config)"
    else:
        return None
    return (f"{used}: hf_adaprune cannot prune under FSDP or DeepSpeed. Its importance scores read each parameter's "
            "whole gradient and compaction replaces parameters, which sharded or DeepSpeed-managed parameters do not "
            "allow. Train with data parallelism (DDP) instead: `torchrun --nproc_per_node N ...`, or `accelerate "
            "launch` with a multi-GPU config, without --fsdp / --deepspeed")


# text fields that hold a comma list: a list of strings (a YAML list, a Python list) is joined into one
COMMA_LIST_FIELDS = ("prune", "pruning_roles")
# the gradual schedule's own steps, which search_then_recover does not read (warned of when the trainer is built)
GRADUAL_ONLY = ("pruning_interval", "pruning_initial_step", "pruning_step_growth")
_TYPE_NAMES = {int: "an integer", float: "a real number", bool: "true or false", str: "a string"}


def _check_types(args) -> None:
    """Integers, real numbers, booleans and strings for the fields of those types (None where the field is optional):
    a value given in Python, or from a YAML file, comes as it was written, not converted as argparse does ("false"
    would read as true). A list of strings for a comma-list field is joined."""
    hints = typing.get_type_hints(PruningArguments)  # field.type is a string, or a type once HfArgumentParser ran
    for f in pruning_fields():
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        kind, optional = kinds[0], type(None) in kinds
        value = getattr(args, f.name)
        if kind not in _TYPE_NAMES or (optional and value is None):
            continue
        if (f.name in COMMA_LIST_FIELDS and isinstance(value, (list, tuple)) and value
                and all(isinstance(item, str) for item in value)):
            setattr(args, f.name, ",".join(value))
            continue
        if kind is str and isinstance(value, os.PathLike):  # a teacher's folder as a pathlib.Path
            setattr(args, f.name, os.fspath(value))
            continue
        if kind is bool and getattr(value, "dtype", None) == bool and getattr(value, "ndim", 1) == 0:  # numpy's
            value = bool(value)
            setattr(args, f.name, value)
        expected = {int: numbers.Integral, float: numbers.Real, bool: bool, str: str}[kind]
        if (kind is not bool and isinstance(value, bool)) or not isinstance(value, expected):
            raise TypeError(f"--{f.name} must be {_TYPE_NAMES[kind]}{' (or unset)' if optional else ''}; got {value!r}"
                            + (" (a string: write true or false unquoted in YAML, True or False in Python)"
                               if kind is bool and isinstance(value, str) else ""))
        if kind in (int, float) and type(value) is not kind:  # numpy's numbers (np.linspace in a sweep): plain ones,
            setattr(args, f.name, kind(value))  # which checkpoints (torch.load, weights_only) and JSON can read back


def validate_pruning_arguments(args) -> None:
    _check_types(args)
    for name in ("pruning_target", "pruning_tolerance", "pruning_initial_step", "pruning_min_step",
                 "pruning_step_growth"):
        if not math.isfinite(getattr(args, name)):
            raise ValueError(f"--{name} must be a finite number; got {getattr(args, name)}")
    prune_kinds(args.prune)  # an unknown --prune value fails here, when the arguments are parsed
    if getattr(args, "auto_find_batch_size", False):
        raise ValueError("--auto_find_batch_size cannot be combined with pruning: after an out-of-memory error it "
                         "restarts training from step 0, but the scores, masks and reference of the aborted start "
                         "would stay (their steps no longer match). Set --per_device_train_batch_size to a size that "
                         "fits (with --gradient_accumulation_steps for the effective batch) instead")
    if args.pruning_metric.startswith("eval_"):  # as metric_for_best_model takes it: the name without the prefix
        args.pruning_metric = args.pruning_metric.removeprefix("eval_")
    _choice("pruning_criterion", args.pruning_criterion, tuple(IMPORTANCE_CRITERIA))
    _choice("pruning_target_type", args.pruning_target_type, TARGET_TYPES)
    _choice("pruning_tolerance_type", args.pruning_tolerance_type, ("absolute", "relative"))
    _choice("pruning_scope", args.pruning_scope, SCOPES)
    _choice("pruning_schedule", args.pruning_schedule, SCHEDULES)
    if not 0.0 <= args.pruning_score_ema < 1.0:
        raise ValueError(f"--pruning_score_ema must be in [0, 1) (0: running mean); got {args.pruning_score_ema}")
    if args.pruning_score_ema and not getattr(IMPORTANCE_CRITERIA[args.pruning_criterion], "needs_gradients", False):
        raise ValueError(f"--pruning_score_ema averages scores gathered over steps; --pruning_criterion "
                         f"{args.pruning_criterion} computes them from the weights at once: leave it at 0")
    if args.pruning_search_steps < 0:
        raise ValueError(f"--pruning_search_steps must be >= 0; got {args.pruning_search_steps}")
    if args.pruning_warmup_steps < 0 or args.pruning_interval < 1:
        raise ValueError("--pruning_warmup_steps must be >= 0 and --pruning_interval >= 1")
    if args.pruning_warmup_steps < 1 and getattr(IMPORTANCE_CRITERIA[args.pruning_criterion], "needs_gradients", False):
        raise ValueError(f"{args.pruning_criterion} importance needs gradients: set --pruning_warmup_steps >= 1 "
                         "(0 serves the magnitude and random criteria)")
    if args.pruning_search_steps and args.pruning_schedule != "search_then_recover":
        raise ValueError(f"--pruning_search_steps {args.pruning_search_steps} sets how long search_then_recover trains a "
                         f"candidate before judging it; --pruning_schedule {args.pruning_schedule} does not read it "
                         "(its candidates train --pruning_interval steps): leave it at 0, or choose search_then_recover")
    ramp = ramp_problem(args, decision_interval(args), interval_option(args))
    if ramp:
        raise ValueError(ramp)
    _choice("pruning_refit_target", args.pruning_refit_target, REFIT_TARGETS)
    if args.pruning_refit_target != "dense_residual" and not args.pruning_refit:
        raise ValueError(f"--pruning_refit_target {args.pruning_refit_target} says what --pruning_refit matches; "
                         "it does nothing without --pruning_refit")
    if not 0.0 <= args.pruning_refit_long_share <= 1.0:
        raise ValueError(f"--pruning_refit_long_share is a share of the re-fit rows, in [0, 1]; got "
                         f"{args.pruning_refit_long_share}")
    if args.pruning_refit_long_share and not args.pruning_refit:
        raise ValueError("--pruning_refit_long_share chooses the rows of --pruning_refit, which is off: set "
                         "--pruning_refit true or leave the share at 0")
    if args.pruning_refit_samples < 1:
        raise ValueError(f"--pruning_refit_samples must be >= 1; got {args.pruning_refit_samples}")
    if not 0.0 < args.pruning_target < 1.0:
        raise ValueError(f"--pruning_target must be in (0, 1); got {args.pruning_target}")
    if args.pruning_tolerance < 0:
        raise ValueError(f"--pruning_tolerance must be >= 0; got {args.pruning_tolerance}")
    # search_then_recover reads no initial step (it tries the target first): its min step is not held below it
    initial = args.pruning_initial_step if args.pruning_schedule == "gradual" else 1.0
    if not 0.0 < args.pruning_min_step <= initial or not 0.0 < args.pruning_initial_step <= 1.0:
        raise ValueError(
            "need 0 < --pruning_min_step <= --pruning_initial_step <= 1; "
            f"got {args.pruning_min_step} and {args.pruning_initial_step}"
        )
    if args.pruning_step_growth < 1.0:
        raise ValueError(f"--pruning_step_growth must be >= 1; got {args.pruning_step_growth}")
    if args.pruning_eval_samples is not None and args.pruning_eval_samples < 1:
        raise ValueError(f"--pruning_eval_samples must be >= 1 (or unset for the whole eval set); "
                         f"got {args.pruning_eval_samples}")
    if args.pruning_seq_len < 1:
        raise ValueError(f"--pruning_seq_len must be >= 1 (the sequence length FLOPs are counted at); "
                         f"got {args.pruning_seq_len}")
    for name in ("pruning_latency_batch_size", "pruning_generation_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.pruning_latency_seq_len is not None and args.pruning_latency_seq_len < 1:
        raise ValueError(f"--pruning_latency_seq_len must be >= 1; got {args.pruning_latency_seq_len}")
    if args.pruning_multiple_of < 1:
        raise ValueError(f"--pruning_multiple_of must be >= 1 (1 turns rounding off); got {args.pruning_multiple_of}")
    if args.min_heads_per_layer < 0 or args.min_neurons_per_layer < 0:
        raise ValueError("--min_heads_per_layer and --min_neurons_per_layer must be >= 0")
    validate_distillation_arguments(args)
    if not args.selected_roles():
        raise ValueError(f"--pruning_roles names no role ({args.pruning_roles!r}); give a comma list of "
                         f"{', '.join(ROLES)} or 'all'")
    unknown = args.selected_roles() - set(ROLES)
    if unknown:
        raise ValueError(f"--pruning_roles has unknown roles {sorted(unknown)}; known: {', '.join(ROLES)} or 'all'")


def prune_kinds(value: str) -> tuple[str, ...]:
    """The structure kinds ``--prune`` names, in the order heads, ffn, layers ('both' = heads and ffn)."""
    named = {part.strip() for part in value.replace("both", "heads,ffn").split(",") if part.strip()}
    unknown = named - set(STRUCTURES)
    if unknown or not named:
        raise ValueError(f"--prune must be one of {', '.join(STRUCTURES)}, 'both' or a comma list of them; "
                         f"got {value!r}")
    return tuple(kind for kind in STRUCTURES if kind in named)


def normalised_comma_list(name: str, value):
    """``--prune`` or ``--pruning_roles`` spelled one way: the kinds as :func:`prune_kinds` orders them
    ('both' -> 'heads,ffn'), the roles sorted ('all' for every role); a value that names none is returned as it
    is (a record written by another version, compared as it stands)."""
    if not isinstance(value, str):
        return value
    if name == "prune":
        try:
            return ",".join(prune_kinds(value))
        except ValueError:
            return value
    if name == "pruning_roles":
        roles = set(ROLES) if value.strip() == "all" else {r.strip() for r in value.split(",") if r.strip()}
        if not roles or roles - set(ROLES):
            return value
        return "all" if roles == set(ROLES) else ",".join(sorted(roles))
    return value


def pruning_metric_direction(args) -> bool:
    """--pruning_greater_is_better, else the metric's known way (a --greater_is_better against it is warned of when
    the arguments are made: a BLEU taken as lower-is-better kept every step as the model broke), else the
    --greater_is_better of metric_for_best_model when it is the same metric."""
    if args.pruning_greater_is_better is not None:
        return bool(args.pruning_greater_is_better)
    same_metric = (args.metric_for_best_model or "").removeprefix("eval_") == args.pruning_metric \
        and args.greater_is_better is not None
    direction = known_greater_is_better(args.pruning_metric)
    if direction is None and same_metric:
        if not getattr(args, "greater_is_better_given", True):  # what transformers guesses from the name
            logger.warning("--pruning_metric %s: a %s value is taken as better from --greater_is_better %s, which "
                           "transformers also guesses from --metric_for_best_model's name (higher unless it ends in "
                           "'loss'); if a %s %s is better, set --pruning_greater_is_better %s", args.pruning_metric,
                           "higher" if args.greater_is_better else "lower", str(args.greater_is_better).lower(),
                           "lower" if args.greater_is_better else "higher", args.pruning_metric,
                           str(not args.greater_is_better).lower())
        return bool(args.greater_is_better)
    if direction is None:
        raise ValueError(f"cannot tell whether a higher --pruning_metric {args.pruning_metric!r} is better: "
                         "set --pruning_greater_is_better true or false")
    return direction
