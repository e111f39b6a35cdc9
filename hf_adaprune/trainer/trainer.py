"""``AdaptivePruningTrainer``: fine-tune and prune in one ``Trainer.train()``.

Flow per optimizer step: the ordinary backward pass fills ``.grad``; at the
step's last micro-batch (before gradient clipping) the importance criterion
reads it. After ``pruning_warmup_steps`` the eval metric becomes the reference
and the first pruning step is applied as masks. Every ``pruning_interval`` steps
the metric decides: keep (prune further) or roll back to the previous masks and
take half the step. Masks stay masks until training ends, so the optimizer and
a DDP-wrapped model never see a shape change; then the model is compacted once.
``pruning_schedule`` chooses how the ratio is searched (:mod:`.schedule`); under every schedule
the final model is measured once more at the end (``final_check`` in the report). How a candidate's
masks come in (at once or along ``pruning_ramp_steps``, with ``pruning_refit``) and how a rolled-back one
leaves is :mod:`.candidate`'s business.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import os
import reprlib
from collections.abc import Mapping

import torch
from transformers import DefaultFlowCallback, Seq2SeqTrainer, Trainer
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, has_length

from ..families import (check_sequence_length, decoder_positions, filter_groups, get_adapter, readable_positions,
                        shortest_audio)
from .arguments import (GRADUAL_ONLY, LATENCY_OPTIONS, PruningArguments, Seq2SeqPruningArguments, changed_options,
                        prune_kinds, pruning_arguments, pruning_metric_direction)
from ..engine.controller import ROLLBACK, AdaptiveController
from .callback import PruningCallback
from .hub_push import card_as_repo_readme, without_hub_token
from .candidate import CandidateMasksMixin
from .report import PruningReportMixin
from ..post_training.dense_targets import DENSE_TARGETS_WARNING_BYTES
from .search_refit import refit_collation_problem, refit_problem, refit_target_bytes_bound
from .schedule import controller_search, decision_interval, final_check, interval_option
from .checkpoint import (PRUNING_STATE_FILE, check_resume_arguments, check_writable, checkpoint_step,
                         decision_rows_problem, decision_rows_record, new_arguments_problem, read_pruning_state,
                         resolve_resume_checkpoint, write_pruning_state)
from .distillation import DistillationMixin, ctc_frame_lengths, layers_dropped
from .decision_rng import decision_rng
from .distributed import (check_masks_agree, failing_processes, from_main_process, reduce_layer_taylor,
                          reduced_scores)
from .eval_order import DatasetOrderEvalMixin, first_rows, is_map_style
from ..reporting.flops import compare_profiles, model_profile, structure_costs
from ..reporting.latency_costs import generates_tokens, latency_costs, timing_device_note
from ..reporting.report import (BEST_BEFORE_REFERENCE, CURVE_FILE, LAYERS_FILE, POST_TRAINING_REPORT_FILE,
                                REPORT_FILE, remove_reports_of_another_model)
from ..hub import save_pruned
from ..hub.save import check_tokenizer_arguments
from ..post_training.prune import check_tokenized_rows
from ..layout import freeze_unsaved_parameters
from ..engine.importance import frozen_groups, make_importance
from ..metrics import at_floor
from ..engine.masks import attach_masks, detach_masks, get_masks
from ..engine.selection import (layer_target_problem, multiple_problem, nothing_prunable, rounding_limit,
                                 select_masks_by_kind, selected_fraction_by_kind, unreachable_target)
from ..surgery import compact, was_pruned

logger = logging.getLogger(__name__)

# Decision evaluations are logged as pruning_eval_*: not eval_* curves, and never seen by on_evaluate
# callbacks (early stopping, best-model tracking), which belong to the user's evaluations.
DECISION_PREFIX = "pruning_eval"
STATE_VERSION = 1
# what the latency table was measured at: a run resumed with other values measures its own
LATENCY_TABLE_ARGUMENTS = ("pruning_target_type", "pruning_latency_batch_size", "pruning_latency_seq_len",
                           "pruning_seq_len", "pruning_generation_tokens")


def _evaluate_names(metrics: dict) -> dict:
    """Decision metrics under the names ``evaluate()`` gives them: transformers prefixes every key that lacks the
    prefix, so a ``compute_metrics`` key that already reads ``eval_acc`` would come back ``pruning_eval_eval_acc``."""
    doubled = f"{DECISION_PREFIX}_eval_"
    return {(DECISION_PREFIX + "_" + key.removeprefix(doubled) if key.startswith(doubled) else key): value
            for key, value in metrics.items()}


def check_eval_dataset(eval_dataset) -> None:
    """Pruning decisions read the first rows of one map-style eval set: refuse what has no such rows."""
    if isinstance(eval_dataset, dict):
        raise ValueError(
            f"eval_dataset is a dict of {len(eval_dataset)} sets ({', '.join(map(str, eval_dataset))}): pruning "
            "decisions are measured on one eval set. Pass that one as eval_dataset (evaluate the others with "
            "trainer.evaluate(other_set, metric_key_prefix=...) after training)")
    check_eval_rows(eval_dataset)


def check_eval_rows(eval_dataset, name: str = "eval_dataset") -> None:
    """One eval set's first rows can be read again at every decision: refuse a streamed or an empty one."""
    if eval_dataset is not None and not is_map_style(eval_dataset):
        raise ValueError(
            f"{name} is an iterable {type(eval_dataset).__name__}: pruning decisions evaluate its first "
            "--pruning_eval_samples rows again at every step, which needs a map-style dataset "
            "(e.g. datasets.Dataset.from_list(list(iterable.take(n))))")
    if eval_dataset is not None and len(eval_dataset) == 0:
        raise ValueError(f"{name} has no rows: pruning decisions measure --pruning_metric on its first rows "
                         "(an empty split, or a filter that kept nothing?)")


def decision_number(key: str, value) -> float:
    """``value`` (an evaluation's ``key``) as the one number a pruning decision compares; a TypeError naming the key
    and the type when it is none (a list, a word, a bool)."""
    if not isinstance(value, bool) and str(getattr(value, "dtype", "")) not in ("bool", "torch.bool") \
            and getattr(value, "shape", ()) == ():
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"--pruning_metric: evaluation returned {key!r} of type {type(value).__name__} "
                    f"({reprlib.repr(value)}), but pruning decisions need one number: make compute_metrics return "
                    f"{key.removeprefix('eval_')!r} as a float")


def is_checkpoint_save(output_dir: str | None, internal_call: bool) -> bool:
    """Whether ``save_model`` is writing a ``checkpoint-<step>`` folder (dense weights), not the final model."""
    return internal_call and output_dir is not None and \
        os.path.basename(os.path.normpath(output_dir)).startswith(PREFIX_CHECKPOINT_DIR)


def check_not_masked(model) -> None:
    """A model whose attached masks already zero structures (an earlier run with ``compact_at_end=False``, or a
    ``train()`` that stopped) would start pruning from them, and the report would count them as this run's."""
    masks = get_masks(model)
    masked = 0 if masks is None else sum(int((mask < 1).sum()) for mask in masks.masks.values())
    if masked:
        raise ValueError(
            f"the model's pruning masks already remove {masked} heads, neurons or layers (left by an earlier run with "
            "compact_at_end=False, or by a train() that stopped): compact it first (hf_adaprune.compact(model), or "
            "save_pruned and load the folder), then build the trainer on it; its report then counts that pruning as "
            "where the run started")


class PruningTrainerMixin(CandidateMasksMixin, PruningReportMixin, DistillationMixin, DatasetOrderEvalMixin):
    """Everything pruning adds to a Trainer; mixed into ``Trainer`` and ``Seq2SeqTrainer``.

    Evaluation and ``predict()`` keep the dataset's order (:class:`DatasetOrderEvalMixin`).
    """

    arguments_class = PruningArguments
    check_eval_dataset = staticmethod(check_eval_dataset)  # the sentence-transformers trainer has its own rules
    _checkpoint_push_said = False  # the warning that checkpoints are not pushed was logged
    _scored_this_run = False  # an optimizer step of the current train() has updated the scores
    _decision_rows = None  # decision_rows() at the reference (or the resumed checkpoint's): what it was measured on

    def __init__(self, *args, dataset_name: str | None = None, **kwargs):
        # before Trainer.__init__, which may fail on what other arguments lack (Seq2SeqTrainer: generation_config)
        given = self._given_arguments(args, kwargs)
        if not isinstance(given.get("args"), self.arguments_class):
            raise TypeError(f"{type(self).__name__} needs {self.arguments_class.__name__} as args, got "
                            f"{type(given.get('args')).__name__}")
        if getattr(given["args"], "predict_with_generate", False) and not isinstance(self, Seq2SeqTrainer):
            raise ValueError(f"predict_with_generate=True: {type(self).__name__} does not generate; use "
                             "AdaptivePruningSeq2SeqTrainer for a seq2seq model scored on generated text")
        self.check_eval_dataset(given.get("eval_dataset"))
        super().__init__(*args, **kwargs)
        self.dataset_name = dataset_name
        self._resume_state = None
        self._began_at = None  # the global step a train() of this trainer began pruning at (None: none has)
        self._finished = False  # a train() reached on_train_end: the model is pruned (compacted), the report written
        self._setup_pruning(self.model)
        self._ignore_keys_for_eval = None
        # right after the Trainer's flow callback, before the user's and the loggers': their on_save sees the
        # checkpoint with its pruning_state.pt, their on_train_end the compacted model and the report
        callbacks = self.callback_handler.callbacks
        flow = [i for i, callback in enumerate(callbacks) if isinstance(callback, DefaultFlowCallback)]
        callbacks.insert(flow[0] + 1 if flow else 0, PruningCallback(self))

    def _warn_unread_latency_options(self, model) -> None:
        """Latency-table options set where nothing reads them: under another target type, the generated tokens of a
        model that does not generate, the length of a Whisper encoder (its 30 s window is fixed)."""
        args = self.args
        changed = changed_options(args, LATENCY_OPTIONS)
        if args.pruning_target_type != "latency":
            unread = changed
            why = f"they set what --pruning_target_type latency measures, and the target type is " \
                  f"{args.pruning_target_type}"
        else:
            generates = generates_tokens(model)
            features = getattr(model, "main_input_name", None) == "input_features"
            unread = [name for name in changed if (name == "pruning_generation_tokens" and not generates)
                      or (name == "pruning_latency_seq_len" and features)]
            why = "" if "pruning_generation_tokens" not in unread else (
                "the table times per generated token only for models that generate (encoder-decoder models, "
                "decoder-only language models); this one is timed by its forward at --pruning_latency_seq_len")
            if "pruning_latency_seq_len" in unread:
                why += ("; " if why else "") + f"a {model.config.model_type} encoder always reads its fixed window " \
                       f"of input features"
        if unread:
            logger.warning("%s not read: %s", ", ".join(f"--{name} {getattr(args, name)}" for name in unread), why)

    def _check_decoder_lengths(self, model) -> None:
        """The lengths FLOPs and the latency table are measured at must fit the positions of what reads them (the
        encoder's input_ids limit is checked with --pruning_seq_len's own message)."""
        args, config = self.args, model.config
        text = getattr(model, "main_input_name", "input_ids") == "input_ids"
        decoder = None
        # a decoder of its own (a Whisper classifier's config says is_encoder_decoder, but it has the encoder alone)
        if getattr(config, "is_encoder_decoder", False) and hasattr(model.base_model, "decoder"):
            decoder = decoder_positions(config)
        checks = [("pruning_seq_len", args.pruning_seq_len, "decoder", decoder)]
        if args.pruning_target_type == "latency":
            checks.append(("pruning_latency_seq_len", args.pruning_latency_seq_len or args.pruning_seq_len, "encoder",
                           readable_positions(config) if text else None))
            if generates_tokens(model) and decoder is not None:  # the decoder starts from its own prompt
                checks.append(("pruning_generation_tokens", args.pruning_generation_tokens + 1, "decoder", decoder))
            elif generates_tokens(model):  # a decoder-only model generates after the prompt, in the same positions
                prompt, limit = args.pruning_latency_seq_len or args.pruning_seq_len, readable_positions(config)
                if limit and prompt + args.pruning_generation_tokens > limit:
                    raise ValueError(
                        f"the latency table generates --pruning_generation_tokens {args.pruning_generation_tokens} "
                        f"after a prompt of {prompt} tokens (--pruning_latency_seq_len, default --pruning_seq_len): "
                        f"{prompt + args.pruning_generation_tokens} positions, and the model reads at most {limit} "
                        "(its config's position limit): give a shorter --pruning_latency_seq_len or fewer tokens")
        for flag, length, side, limit in checks:
            if limit and length > limit:
                raise ValueError(f"--{flag} {getattr(args, flag)} needs {length} positions of the {side}, which "
                                 f"reads at most {limit} (its config's position limit): give a smaller --{flag}")

    def _given_arguments(self, args: tuple, kwargs: dict) -> dict:
        """What the caller passed to the Trainer class's ``__init__``, by parameter name, positional or keyword."""
        return dict(inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments)

    def hyperparameter_search(self, *args, **kwargs):
        """Refused: transformers applies a trial's values after ``model_init`` has set pruning up, and every trial
        would share one report and state folder."""
        raise NotImplementedError(
            f"{type(self).__name__}.hyperparameter_search is not supported: a trial's pruning values would reach the "
            "pruning set-up one trial late, and all trials would write one pruning report. Search the fine-tuning "
            "hyperparameters with a plain transformers.Trainer, then prune with the values found; or run one "
            "pruning trainer per setting, each with its own output_dir")

    def call_model_init(self, trial=None):
        """With ``model_init`` ``train()`` builds a fresh model: prune that one."""
        model = super().call_model_init(trial)
        if hasattr(self, "controller"):  # not during __init__, which sets pruning up itself
            if self.place_model_on_device:  # masks and the latency table are made on the device it trains on
                self._move_model_to_device(model, self.args.device)
            self._setup_pruning(model)
        return model

    # -- the model being pruned: the hook for trainers whose self.model wraps a transformers model ----------
    @property
    def pruned_model(self):
        """The transformers model whose heads and FFN neurons are scored, masked and compacted.

        ``self.model`` here; a trainer whose ``self.model`` wraps one (a ``SentenceTransformer``) returns the
        wrapped model, and passes it to :meth:`_setup_pruning`.
        """
        return self.model

    def _has_decision_data(self) -> bool:
        """Whether decisions have data to be measured on (a sentence-transformers evaluator counts too)."""
        return self.eval_dataset is not None

    def _warn_refit_memory(self, model) -> None:
        """Say when the trainer is built that a candidate's re-fit may hold more than 2 GiB of the accepted model's
        activations (every cut group's, for all re-fit rows), before a warm-up is spent."""
        args = self.args
        bound = refit_target_bytes_bound(model, self.pruning_groups, self.train_dataset,
                                         args.pruning_refit_samples, args.seed, args.pruning_refit_long_share)
        if bound > DENSE_TARGETS_WARNING_BYTES:
            logger.warning("--pruning_refit_target %s: a candidate's re-fit holds the accepted model's activations "
                           "for every group it cut on %d training rows: up to %.1f GiB of memory (on each process); "
                           "fewer --pruning_refit_samples or --pruning_refit_target same_input hold less",
                           args.pruning_refit_target, min(args.pruning_refit_samples, len(self.train_dataset)),
                           bound / 1024 ** 3)

    def _metric_direction(self) -> bool:
        """Whether a higher decision metric is better (a sentence-transformers evaluator declares its own)."""
        return pruning_metric_direction(self.args)

    # -- set-up ---------------------------------------------------------------------------------
    def _setup_pruning(self, model) -> None:
        args = self.args
        get_adapter(model)  # unsupported families and PEFT models fail here, before any training
        check_tokenizer_arguments(processing_class=self.processing_class)  # saved beside the model's files
        check_sequence_length(model, args.pruning_seq_len, "--pruning_seq_len")
        self._check_decoder_lengths(model)
        shortest = shortest_audio(model.config)
        lengths = [("pruning_seq_len", args.pruning_seq_len)]
        if args.pruning_target_type == "latency" and args.pruning_latency_seq_len is not None:
            lengths.append(("pruning_latency_seq_len", args.pruning_latency_seq_len))
        for flag, length in lengths:
            if getattr(model, "main_input_name", None) == "input_values" and shortest and length < shortest:
                raise ValueError(f"--{flag} {length} counts raw audio samples for this {model.config.model_type} "
                                 f"model, fewer than the {shortest} its feature encoder turns into one frame: give a "
                                 f"typical clip's length, e.g. --{flag} 16000 (1 s at 16 kHz)")
        self._warn_unread_latency_options(model)
        kinds = prune_kinds(args.prune)
        had_masks = get_masks(model) is not None
        check_not_masked(model)
        masks = attach_masks(model, layers="layers" in kinds)
        try:
            self._setup_with_masks(model, masks, kinds)
        except BaseException:
            if not had_masks:  # a refused set-up leaves the caller's model as it was given
                detach_masks(model)
            raise
        self._frozen_unsaved = freeze_unsaved_parameters(model)  # before the optimizer is built
        # what train() checks is still so: the controller, groups and costs were made from these
        self.setup_masks, self.setup_arguments = masks, pruning_arguments(args)
        if self._frozen_unsaved:
            logger.info("frozen: %s, which saving leaves out (training them would change what no saved folder "
                        "keeps)", ", ".join(self._frozen_unsaved))

    def _load_optimizer_and_scheduler(self, checkpoint):
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except ValueError as err:
            if not getattr(self, "_frozen_unsaved", None) or "parameter group" not in str(err):
                raise
            raise ValueError(
                f"{checkpoint}: its optimizer state holds more parameters than this run trains. This trainer freezes "
                f"{', '.join(self._frozen_unsaved)}, which saving leaves out (trained, the saved folder would compute "
                "other outputs than the model measured), and a checkpoint written by an earlier hf_adaprune that "
                "trained them cannot be resumed: start the run again from its model") from err

    def _setup_with_masks(self, model, masks, kinds) -> None:
        args = self.args
        roles = args.selected_roles()
        self.pruning_groups = filter_groups(masks.groups.values(), roles, kinds)
        if not getattr(model.config, "is_encoder_decoder", False):  # a decoder alone (BartForCausalLM) has the
            # cross-attention blocks of its family, which never run without an encoder: nothing to score or time
            idle = [g.name for g in self.pruning_groups if g.role == "cross"]
            if idle:
                logger.info("not pruned: %d cross-attention groups (%s, ...), which this model, having no encoder, "
                            "never runs", len(idle), idle[0])
                self.pruning_groups = [g for g in self.pruning_groups if g.role != "cross"]
                if not self.pruning_groups:
                    raise ValueError(f"nothing to prune: the cross-attention this model has ({idle[0]}, ...) never "
                                     "runs without an encoder; prune its other roles (--pruning_roles "
                                     "decoder_self,decoder)")
        if not self.pruning_groups:
            raise ValueError(f"nothing to prune: no {' or '.join(kinds)} groups (--prune {args.prune}) with roles "
                             f"{sorted(roles)} in this model")
        # the kinds that have groups here: selection, report and card speak of these only
        self.pruned_kinds = tuple(kind for kind in kinds if any(g.kind == kind for g in self.pruning_groups))
        if self.pruned_kinds != tuple(kinds):
            logger.warning("--prune %s: no %s groups with --pruning_roles %s in this model; pruning %s only",
                           args.prune, " or ".join(k for k in kinds if k not in self.pruned_kinds),
                           ",".join(sorted(roles)), ",".join(self.pruned_kinds))
        if not self._has_decision_data():
            raise ValueError("the pruning controller needs an eval_dataset to measure the metric on" + (
                f" (on every process: this is process {args.process_index} of {args.world_size})"
                if args.world_size > 1 else ""))
        check_tokenized_rows(model, "eval_dataset", self.eval_dataset)  # an index error in the forward names nothing
        unfit = args.pruning_refit and refit_problem(model, self.train_dataset, self.pruned_kinds)
        if args.pruning_refit and not unfit:  # the re-fit collates at the first candidate: try 2 rows now
            with decision_rng(args.seed, args.device, self.data_collator):
                unfit = refit_collation_problem(model, self.train_dataset, self.data_collator,
                                                args.remove_unused_columns, self.label_names)
        if unfit:
            raise ValueError(unfit)
        if args.pruning_refit and args.pruning_refit_target != "same_input":
            self._warn_refit_memory(model)
        self.importance = make_importance(args.pruning_criterion, **(
            {"ema": args.pruning_score_ema} if args.pruning_score_ema else {}))
        if self.importance.needs_gradients and args.pruning_warmup_steps < 1:
            raise ValueError(f"{args.pruning_criterion} importance needs gradients: set --pruning_warmup_steps >= 1")
        frozen = frozen_groups(model, self.pruning_groups) if self.importance.needs_gradients else []
        if frozen:
            raise ValueError(
                f"{len(frozen)} of the {len(self.pruning_groups)} groups to prune have parameters that do not require "
                f"gradients ({', '.join(frozen[:3])}{', ...' if len(frozen) > 3 else ''}): --pruning_criterion "
                f"{args.pruning_criterion} scores them from their gradients. Unfreeze them "
                "(model.requires_grad_(True); a PEFT model after merge_and_unload() keeps its base weights frozen), "
                "or narrow --pruning_roles")
        dropping = layers_dropped(model.config)
        if self.importance.needs_gradients and dropping:
            raise ValueError(
                f"--pruning_criterion {args.pruning_criterion} scores every structure from each step's gradients, but "
                f"the model skips layers at random while training ({', '.join(f'{k}={v}' for k, v in dropping.items())})"
                f": a step that skipped a layer has no gradients for it. Set {' and '.join(dropping)} to 0 in the "
                f"model's config (from_pretrained(..., {'=0.0, '.join(dropping)}=0.0), as the ASR recipe does), or "
                "use --pruning_criterion magnitude")
        self.pruning_metric = args.pruning_metric
        self._builtin_metric = False  # compute_metrics is classification_metrics / generation_metrics
        if self.pruning_metric != "loss" and self.compute_metrics is None:
            if args.batch_eval_metrics:
                raise ValueError(f"--batch_eval_metrics needs a compute_metrics that takes compute_result "
                                 f"(transformers calls it once per batch); the built-in --pruning_metric "
                                 f"{self.pruning_metric} computes over the whole evaluation. Turn --batch_eval_metrics "
                                 f"off, pass your own compute_metrics that returns eval_{self.pruning_metric}, or use "
                                 "--pruning_metric loss")
            if not args.eval_do_concat_batches:
                raise ValueError(f"--eval_do_concat_batches false hands the metric one array per batch; the built-in "
                                 f"--pruning_metric {self.pruning_metric} scores the whole evaluation at once. Leave "
                                 "it on, or pass a compute_metrics that takes the lists of batches")
            self.compute_metrics = self._default_compute_metrics(self.pruning_metric)
            self._builtin_metric = True
        self.metric_key = "eval_loss" if self.pruning_metric == "loss" else f"eval_{self.pruning_metric}"
        self.decision_key = f"{DECISION_PREFIX}_{self.pruning_metric}"
        unread = changed_options(args, GRADUAL_ONLY) if args.pruning_schedule == "search_then_recover" else []
        if unread:
            logger.warning("%s not read: --pruning_schedule search_then_recover tries the target first, then bisects "
                           "(a candidate trains --pruning_search_steps steps)",
                           ", ".join(f"--{name} {getattr(args, name)}" for name in unread))
        # search_then_recover reads no initial step: it tries the target first
        initial_step = (min(args.pruning_initial_step, args.pruning_target) if args.pruning_schedule == "gradual"
                        else args.pruning_target)
        self.controller = AdaptiveController(
            target=args.pruning_target,
            initial_step=initial_step,
            min_step=min(args.pruning_min_step, initial_step),
            tolerance=args.pruning_tolerance,
            tolerance_type=args.pruning_tolerance_type,
            greater_is_better=self._metric_direction(),
            growth=args.pruning_step_growth,
            search=controller_search(args),
        )
        device_note = timing_device_note(model, args.device) if args.pruning_target_type == "latency" else None
        if device_note:
            logger.warning(device_note)
        self.costs = (
            structure_costs(model, self.pruning_groups, args.pruning_seq_len)
            if args.pruning_target_type == "flops" else
            latency_costs(model, self.pruning_groups, args.pruning_latency_batch_size,
                          args.pruning_latency_seq_len or args.pruning_seq_len, args.pruning_generation_tokens)
            if args.pruning_target_type == "latency" else None
        )
        if args.pruning_target_type == "latency":  # timed on each rank: every rank takes rank 0's table
            self.costs = from_main_process(self.accelerator, self.costs)
        sizes = {n: m.numel() for n, m in masks.masks.items()}
        unfit = multiple_problem(self.pruning_groups, sizes, args.pruning_multiple_of)
        unfit = unfit or layer_target_problem(self.pruning_groups, sizes, args.pruning_target, self.pruned_kinds,
                                              self.costs)
        if unfit:
            raise ValueError(unfit)
        unfit = nothing_prunable(self.pruning_groups, sizes, self.pruned_kinds, self._floors(), self.costs)
        if unfit:
            raise ValueError(unfit)
        unfit, rounded = rounding_limit(self.pruning_groups, sizes, args.pruning_target, args.pruning_multiple_of,
                                        self.pruned_kinds, self._floors(), self.costs)
        if unfit:
            raise ValueError(unfit)
        blocked = rounded or unreachable_target(self.pruning_groups, sizes, args.pruning_target, self.pruned_kinds,
                                                self._floors(), self.costs, scope=args.pruning_scope)
        if blocked:
            logger.warning(blocked)
        self._setup_teacher(model)
        self.dense_profile = model_profile(model, seq_len=args.pruning_seq_len)
        self.start_pruned = was_pruned(model)
        self._accepted_masks = masks.state_dict()
        self._reset_candidate()
        self._last_prune_step = None
        self._accepted_metric: tuple[int, float] | None = None  # (step, metric) of the last keep, see finish_pruning
        self.pruned_comparison = None
        self.final_check = None

    def _default_compute_metrics(self, name: str):
        from ..task_metrics import TEXT_METRICS, classification_metrics, generation_metrics

        if getattr(self.args, "predict_with_generate", False):
            tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
            if tokenizer is None:
                raise ValueError(f"--pruning_metric {name} on generated text needs the tokenizer (processing_class)")
            if not callable(getattr(tokenizer, "batch_decode", None)):
                raise ValueError(f"--pruning_metric {name} decodes generated tokens, but processing_class is a "
                                 f"{type(tokenizer).__name__}, which has no tokenizer: pass the processor "
                                 "(e.g. WhisperProcessor) or the tokenizer as processing_class")
            return generation_metrics(name, tokenizer)
        if name.lower() in TEXT_METRICS and ctc_frame_lengths(self.pruned_model) is not None:
            raise ValueError(f"--pruning_metric {name} on a CTC model ({type(self.pruned_model).__name__}): the built-in "
                             "text metrics score generated tokens, and a CTC model's predictions are frame logits. Pass "
                             f"a compute_metrics that decodes them (argmax, processor.batch_decode) and returns {name}")
        return classification_metrics(name, config=self.pruned_model.config)

    # -- scores -----------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = self._distilled_step(super().training_step, model, inputs, num_items_in_batch)
        # .grad now holds the sum over this optimizer step's micro-batches (already averaged
        # across processes by DDP on the last one): score once per optimizer step, before clipping.
        if self.accelerator.sync_gradients and not self.controller.state.done:
            reduce_layer_taylor(self.accelerator, get_masks(self.pruned_model))
            self.importance.update(self.pruned_model, self.pruning_groups)
            self._scored_this_run = True
        return loss

    # -- schedule: the public steps PruningCallback calls ---------------------------------------------
    def begin_pruning(self) -> None:
        """At ``on_train_begin``: restore a resumed state, check the schedule and the metric, maybe start."""
        args, state = self.args, self.state
        self._scored_this_run = False
        masks = get_masks(self.pruned_model)
        if masks is not None:  # the model may have been placed after the masks were made (fp16_full_eval, ...)
            masks.to(next(self.pruned_model.parameters()).device)
        if self._resume_state is not None:
            self.load_pruning_state_dict(self._resume_state)
            self._resume_state = None
            c = self.controller
            if c.state.reference is not None and not c.state.done and c.state.pending is None:
                # saved at the last step of a shorter run (nothing was masked that no step could judge): the longer
                # one goes on pruning from here, judging at once what no step trains before its decision
                self._propose_if_judgeable(state.global_step)
                self._search_at_once(state.global_step)
        if self.controller.state.reference is None and 0 < state.max_steps:
            room = state.max_steps - args.pruning_warmup_steps
            if room < 0 or (room == 0 and decision_interval(args) > 0):  # 0: a search judged within the step
                logger.warning("no pruning decision fits this schedule: max_steps %d - pruning_warmup_steps %d "
                               "leaves no step after the reference; the model will not be pruned", state.max_steps,
                               args.pruning_warmup_steps)
            elif room < decision_interval(args):
                logger.warning(
                    "no full pruning decision fits this schedule: max_steps %d - pruning_warmup_steps %d leaves %d "
                    "steps, fewer than %s %d; one pruning step at most is tried, judged at the end of training after "
                    "%d steps", state.max_steps, args.pruning_warmup_steps, room, interval_option(args),
                    decision_interval(args), room)
        # Here, not before train(): an evaluate() before train() marks the bare model as prepared,
        # and accelerate would then skip wrapping it in DistributedDataParallel.
        if state.global_step == 0:
            self._check_metric_available()
        self._began_at = state.global_step

    def start_step(self, step: int) -> None:
        """At ``on_step_begin``: with no warm-up, take the reference before the first optimizer step, not at
        ``on_train_begin`` (``eval_on_start``'s evaluation comes between the two and describes the model as given);
        then mask the candidate a reference or decision at the end of the last step left due (see
        :meth:`_propose_next`)."""
        c = self.controller
        if self.args.pruning_warmup_steps == 0 and c.state.reference is None:
            self.pruning_step(step)
        if c.state.reference is not None and not c.state.done and c.state.pending is None:
            self._propose_if_judgeable(step)

    def pruning_step(self, step: int) -> None:
        """At ``on_step_end``: take the reference after the warm-up, then judge each step after its interval."""
        c, args = self.controller, self.args
        if c.state.done:
            return
        self._advance_ramp(step)  # before a decision this step may take: a finished ramp leaves 0/1 masks
        if c.state.reference is None:
            if step < args.pruning_warmup_steps:
                return
            reference, evaluation = self._decision_metric()
            self._decision_rows = self.decision_rows()
            self._take_teacher()
            c.start(reference, propose=False)
            self._log_decision("reference", step, 0.0, reference, evaluation)
            if not math.isfinite(reference):
                logger.warning("the pruning reference %s is %s at step %d: no step can be judged within tolerance "
                               "of it, so nothing is pruned; check the metric on the decision rows",
                               self.pruning_metric, reference, step)
                c.stop(f"the reference {self.pruning_metric} is {reference}: no step can be judged against it")
                return
            if c.greater_is_better and at_floor(self.pruning_metric, reference):
                logger.warning("the pruning reference %s is %s at step %d, the lowest it can measure: no step can "
                               "measure worse, so every step is kept up to the target and the decisions protect "
                               "nothing. Decide on %s, or train longer before the reference (pruning_warmup_steps)",
                               self.pruning_metric, reference, step, self._more_decision_rows())
            self._propose_next(step)
        elif c.state.pending is not None and step - self._last_prune_step >= decision_interval(args):
            self._decide(step)
        self._search_at_once(step)

    def _search_at_once(self, step: int) -> None:
        """No steps between masking and judging (search_then_recover, pruning_search_steps 0): the whole search runs
        now, on the scores gathered so far; training resumes at the chosen shape."""
        while decision_interval(self.args) == 0 and self.controller.state.pending is not None:
            self._decide(step)

    def _can_judge_after(self, step: int) -> bool:
        """Whether a step masked now can be judged: training goes on after ``step``, or candidates are judged at
        once (``pruning_search_steps`` 0). A candidate masked at the last step would only be discarded at the end,
        after the final evaluation and checkpoint had described it."""
        return step < self.state.max_steps or decision_interval(self.args) == 0

    def _propose_next(self, step: int) -> None:
        """After the reference or a decision at the end of ``step``: mask the next candidate now where candidates
        are judged at once (the search runs within this step); else when the next optimizer step begins
        (:meth:`start_step`), so that the evaluation and checkpoint the Trainer makes at this step describe the
        model as decided, not a candidate no step has trained (early stopping and best-model selection would judge
        it)."""
        if decision_interval(self.args) == 0:
            self._propose_if_judgeable(step)

    def _propose_if_judgeable(self, step: int) -> None:
        """Mask the controller's next candidate, unless nothing could judge it (see :meth:`_can_judge_after`) or
        some pruned group has no score yet: a run resumed under another criterion or score EMA, or pruning a kind
        more, starts scoring again; the candidate waits for the first optimizer step to score every group."""
        if self._can_judge_after(step) and not self._waiting_for_scores():
            self._apply_ratio(self.controller.propose(), step)

    def _waiting_for_scores(self) -> bool:
        """Some pruned group has no score and no optimizer step of this ``train()`` has scored yet (after one has,
        a group still without scores is an error, which selection raises)."""
        if self._scored_this_run:
            return False
        scored = self.importance.scores(self.pruned_model, self.pruning_groups)
        return not all(group.name in scored for group in self.pruning_groups)

    def _decide(self, step: int, propose: bool = True) -> None:
        """Judge the pending step; then, with ``propose``, unless the controller stopped or nothing could judge it,
        mask the next one."""
        c = self.controller
        tried = c.state.pending
        self._end_ramp()
        metric, evaluation = self._decision_metric()
        decision = c.decide(metric, selected=selected_fraction_by_kind(
            self.pruning_groups, get_masks(self.pruned_model).masks, self.pruned_kinds, self.costs))
        if decision == ROLLBACK:
            self._drop_candidate()
            self._accepted_metric = None
        else:
            self._accept_candidate()
            # the metric of the model as accepted, at this step: the final check reuses it if nothing changes after
            self._accepted_metric = (self.state.global_step, metric)
        self._log_decision(decision, step, tried, metric, evaluation)
        if not c.state.done:
            if propose:
                self._propose_next(step)
        else:
            logger.info("pruning stopped at sparsity %.3f: %s", c.state.ratio, c.state.stop_reason)

    def _apply_ratio(self, ratio: float, step: int) -> None:
        args = self.args
        scores = reduced_scores(self.accelerator, self.importance.scores(self.pruned_model, self.pruning_groups),
                                [g.name for g in self.pruning_groups], self.args.device)
        selected = select_masks_by_kind(
            self.pruning_groups, scores, self._accepted_masks, ratio,
            kinds=self.pruned_kinds,
            scope=args.pruning_scope,
            floors=self._floors(),
            costs=self.costs,
            multiple_of=args.pruning_multiple_of,
            normalize=args.pruning_normalize_scores,
        )
        check_masks_agree(self.accelerator, selected, self.pruning_groups, self.args.device)
        self._set_candidate(selected, step)
        self._accepted_metric = None  # the model under evaluation is no longer the accepted one
        self._last_prune_step = step
        logger.info("pruning step %d: trying sparsity %.3f", step, ratio)

    def _floors(self) -> dict[str, int]:
        return {"heads": self.args.min_heads_per_layer, "ffn": self.args.min_neurons_per_layer, "layers": 1}

    @contextlib.contextmanager
    def _reading_decision_rows(self):
        """Every decision row counts, drawn alike each time: ``dataloader_drop_last`` (meant for training batches)
        is off, as dropping the last batch would change which rows decide and leave none of the two rows the metric
        check reads, and no loader cached under persistent workers for the user's evaluations is read
        (``reading_every_row``); random draws (a collator's masking) come from the decision RNG."""
        with self.reading_every_row(), decision_rng(self.args.seed, self.args.device, self.data_collator):
            yield

    def decision_rows(self) -> dict | None:
        """What identifies the rows decisions read (:func:`~.checkpoint.decision_rows_record`): a resume compares
        it with the checkpoint's, whose reference was measured on them. None without one map-style eval set."""
        if self.eval_dataset is None or isinstance(self.eval_dataset, dict):
            return None
        batch = self.args.per_device_eval_batch_size if self.pruning_metric == "loss" else None
        rows = first_rows(self.eval_dataset, self.args.pruning_eval_samples)
        if self.args.remove_unused_columns and callable(getattr(rows, "select_columns", None)):
            self._set_signature_columns_if_needed()  # the columns the model reads, as evaluation keeps them
            read = [name for name in rows.column_names if name in self._signature_columns]
            rows = rows.select_columns(read) if read else rows  # (a decoded audio column is neither read nor hashed)
        with self._reading_decision_rows():  # a transform's random draws as decisions see them: from the seed
            record = decision_rows_record(rows, batch)
        # a collator drawing at random (masked-LM masking) draws in worker processes seeded by their count
        return {**record, "workers": self.args.dataloader_num_workers}

    def _evaluate_rows(self, rows: int | None, predictions: bool = False) -> dict:
        """Metrics (keys ``pruning_eval_*``) of the first ``rows`` eval examples, outside ``evaluate()``
        (``predictions``: with compute_metrics's even when the decisions read the loss alone)."""
        dataset = first_rows(self.eval_dataset, rows)
        with self._reading_decision_rows():
            return _evaluate_names(self._evaluate_dataset(dataset, predictions))

    def _evaluate_dataset(self, dataset, predictions: bool = False) -> dict:
        try:
            if self.pruning_metric == "loss" and not predictions:  # no predictions to gather, no generation
                # not get_eval_dataloader: with persistent workers it caches one loader for every evaluation, so
                # the decisions' rows and the user's evaluation set would be swapped for each other
                with self.loss_of_every_row(dataset):
                    metrics = self.evaluation_loop(self.get_test_dataloader(dataset), description="Pruning decision",
                                                   prediction_loss_only=True, ignore_keys=self._ignore_keys_for_eval,
                                                   metric_key_prefix=DECISION_PREFIX).metrics
                self._on_predict_of_progress_bars(self.args, self.state, self.control, metrics)
                return metrics
            # predict(), without telling the user's on_predict callbacks; progress bars still close their
            # prediction bar there
            self.callback_handler.on_predict = self._on_predict_of_progress_bars
            return self._decision_predict(dataset)
        finally:
            self.callback_handler.__dict__.pop("on_predict", None)

    def _decision_predict(self, dataset) -> dict:
        """The metrics of ``predict(dataset)`` for a decision, gathered with ``gather_for_metrics``: rows the sampler
        repeats to even out the processes count once (Seq2SeqTrainer.predict switches the trainer to plain
        ``gather``, which keeps them; the user's own evaluations keep transformers' behaviour)."""
        gather, self.gather_function = self.gather_function, self.accelerator.gather_for_metrics
        try:
            return self._predict_as_is(dataset, ignore_keys=self._ignore_keys_for_eval,
                                       metric_key_prefix=DECISION_PREFIX).metrics
        finally:
            self.gather_function = gather

    def _predict_as_is(self, dataset, **kwargs):
        """``predict()`` without touching how predictions are gathered."""
        return self.predict(dataset, **kwargs)

    def _on_predict_of_progress_bars(self, args, state, control, metrics):
        """Close the progress bars' prediction bar of a decision evaluation (on_predict alone closes it), without
        telling the user's other callbacks."""
        for callback in self.callback_handler.callbacks:
            # subclasses too; by name: transformers.utils.notebook imports IPython
            if any(k.__name__ in ("ProgressCallback", "NotebookProgressCallback") for k in type(callback).__mro__):
                callback.on_predict(args, state, control, metrics=metrics)
        return control

    def _decision_metric(self) -> tuple[float, dict]:
        """The decision rows' metric and the whole evaluation. Once the reference is taken, a metric missing or None
        at an evaluation (a compute_metrics that gives up on some predictions) is NaN, which no decision keeps, with
        a warning, rather than an error that would end the run without its report; the reference must have one."""
        metrics = self._evaluate_rows(self.args.pruning_eval_samples)
        if self.controller.state.reference is not None and metrics.get(self.decision_key) is None:
            logger.warning("--pruning_metric %r: this evaluation returned %s; taken as NaN, beyond any tolerance "
                           "(a step judged on it is rolled back)", self.pruning_metric,
                           "None" if self.decision_key in metrics else "no value")
            return math.nan, metrics
        if self.decision_key not in metrics:
            raise KeyError(
                f"--pruning_metric {self.pruning_metric!r}: evaluation returned no {self.pruning_metric!r}; "
                f"available: {sorted(k.removeprefix(DECISION_PREFIX + '_') for k in metrics)}"
            )
        return decision_number(self.metric_key, metrics[self.decision_key]), metrics

    def _check_metric_available(self) -> None:
        """Evaluate a couple of examples now so a wrong metric name fails before hours of training."""
        missing = self._decision_rows_without_labels()
        renamed = [name for name in missing if name in ("label", "label_ids")]
        batch = self._first_decision_batch() if renamed else None
        if renamed and isinstance(batch, Mapping) and batch.get("labels") is not None:
            names = [("labels" if name in renamed else name) for name in self.label_names]
            raise ValueError(
                f"--label_names {' '.join(self.label_names)}: the batches the data collator builds from the "
                f"eval_dataset rows have labels, not {' / '.join(renamed)} (transformers' collators rename a label or "
                "label_ids column to labels), and label_names names the batches' columns: evaluation would compute no "
                f"loss and hand the metric no labels. Use --label_names {' '.join(dict.fromkeys(names))}")
        if missing:
            raise ValueError(f"the eval_dataset rows have no {' / '.join(missing)}: pruning decisions measure "
                             f"--pruning_metric {self.pruning_metric} against them (the loss needs them too). Give an "
                             "eval_dataset with labels, or name its label columns with --label_names")
        with self._watching_preprocessed_logits() as seen:
            metrics = self._evaluate_first_rows()
        self._refuse_multi_label_probabilities(seen)
        if self.decision_key not in metrics:
            raise KeyError(
                f"--pruning_metric {self.pruning_metric!r}: evaluation returns no {self.metric_key!r}; "
                f"available: {self._metric_names(metrics)}{self._missing_metric_hint()}"
            )
        decision_number(self.metric_key, metrics[self.decision_key])  # a list, a word: refused now, not after warm-up
        self._refuse_a_metric_the_decision_rows_cannot_move()
        best = (self.args.metric_for_best_model or "").removeprefix("eval_")
        if best and best != "loss" and self.pruning_metric == "loss" and self.args.eval_strategy != "no":
            metrics = self._evaluate_first_rows(predictions=True)  # decisions on the loss run no compute_metrics
        if best and self.args.eval_strategy != "no" and best not in self._evaluation_names(metrics):
            raise KeyError(f"--metric_for_best_model {self.args.metric_for_best_model!r}: evaluation returns no "
                           f"'eval_{best}' (the first evaluation would fail on it); available: "
                           f"{self._metric_names(metrics)}{self._missing_metric_hint()}")

    def _refuse_a_metric_the_decision_rows_cannot_move(self) -> None:
        """The built-in class metrics on decision rows that cannot move them (binary f1 without a row of class 1,
        Matthews correlation on one class): refused before training. Under binary f1 / precision / recall the log
        names the class scored as positive."""
        from ..task_metrics import AVERAGED, positive_class, row_labels, unmovable_metric

        # classification_metrics' functions, the trainer's own or a recipe's combination of them, name their metrics
        built_in = self.pruning_metric in getattr(self.compute_metrics, "class_metrics", ())
        if not built_in or getattr(self.args, "predict_with_generate", False):
            return
        config = self.pruned_model.config
        if self.pruning_metric in AVERAGED and getattr(config, "num_labels", None) == 2:
            logger.info("--pruning_metric %s on two classes scores class 1 (%r) as the positive class",
                        self.pruning_metric, positive_class(config))
        labels = row_labels(first_rows(self.eval_dataset, self.args.pruning_eval_samples))
        problem = None if labels is None else unmovable_metric(self.pruning_metric, labels, config)
        if problem:
            raise ValueError(f"--pruning_metric {self.pruning_metric}: {problem}. Give decision rows with both "
                             "classes (more eval rows, or a larger --pruning_eval_samples), or use --pruning_metric "
                             "accuracy or loss")

    @contextlib.contextmanager
    def _watching_preprocessed_logits(self):
        """Under the built-in classification metric and a ``preprocess_logits_for_metrics``: yields a list that
        gets ``(logits, labels, predictions)`` of every call (None: nothing is watched, the same on every
        process)."""
        preprocess = self.preprocess_logits_for_metrics
        generating = getattr(self.args, "predict_with_generate", False)
        if preprocess is None or not getattr(self, "_builtin_metric", False) or generating:
            yield None
            return
        seen = []

        def watched(logits, labels):
            predictions = preprocess(logits, labels)
            seen.append((logits, labels, predictions))
            return predictions

        self.preprocess_logits_for_metrics = watched
        try:
            yield seen
        finally:
            self.preprocess_logits_for_metrics = preprocess

    def _refuse_multi_label_probabilities(self, seen: list | None) -> None:
        """The built-in metric predicts a multi-label head's label where its logit is positive: probabilities from
        ``preprocess_logits_for_metrics`` (a sigmoid's, all positive) would predict every label, and the metric
        would not move while pruning. Refused on every process when any saw them."""
        if seen is None:
            return
        from ..task_metrics import multi_label_rows, probability_scores

        config = self.pruned_model.config
        found = False
        for logits, labels, predictions in seen:
            if not isinstance(labels, torch.Tensor) or not probability_scores(logits, predictions):
                continue
            scores = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
            labels = labels.detach().cpu()
            labels = labels.float() if labels.is_floating_point() else labels  # NumPy has no bfloat16
            if multi_label_rows(config, scores.detach().float().cpu().numpy(), labels.numpy()):
                found = True
                break
        if failing_processes(self.accelerator, found, self.args.device):
            raise ValueError(
                f"--pruning_metric {self.pruning_metric} on a multi-label head: preprocess_logits_for_metrics returns "
                "values between 0 and 1 (probabilities, e.g. torch.sigmoid), and the built-in metric thresholds "
                "logits at 0 (a label is predicted where its logit is positive), so every probability would count "
                "as a predicted label and the metric would not follow pruning. Return the logits (or 0/1 "
                "predictions, e.g. (logits > 0).long()) from preprocess_logits_for_metrics, or pass a "
                "compute_metrics that thresholds the probabilities")

    def _evaluate_first_rows(self, predictions: bool = False) -> dict:
        """Metrics of 2 decision rows, or of all of them when the metric needs more (both classes, ...). Every
        process takes the same branch: one that failed where the others did not would retry alone, and they would
        wait for each other in different collectives for ever."""
        metrics, error = self._attempt_rows(2, predictions)
        if not failing_processes(self.accelerator, error is not None, self.args.device):
            return metrics
        metrics, error = self._attempt_rows(self.args.pruning_eval_samples, predictions)
        failing = failing_processes(self.accelerator, error is not None, self.args.device)
        if error is not None:
            error.add_note("(raised by the pruning trainer's metric check before training, which evaluates the "
                           "rows pruning decisions read: the first pruning_eval_samples of eval_dataset)")
            raise error
        if failing:
            raise RuntimeError(f"the pruning trainer's metric check before training failed on process(es) "
                               f"{failing} (their log has the error); this process stops too")
        return metrics

    def _attempt_rows(self, count: int, predictions: bool) -> tuple[dict | None, Exception | None]:
        try:
            return self._evaluate_rows(count, predictions), None
        except Exception as err:
            return None, err

    def _evaluation_names(self, metrics: dict) -> list[str]:
        """The names ``evaluate()`` gives the metrics a decision evaluation returned, ``eval_`` aside (what
        ``--metric_for_best_model`` names)."""
        return sorted(k.removeprefix(DECISION_PREFIX + "_") for k in metrics)

    def _metric_names(self, metrics: dict) -> list[str]:
        """The names evaluation returned, as ``--pruning_metric`` may give them."""
        return ["eval_" + name for name in self._evaluation_names(metrics)]

    def _missing_metric_hint(self) -> str:
        if self.args.prediction_loss_only:
            return (" (--prediction_loss_only true: evaluation computes the loss alone; leave it off or set "
                    "--pruning_metric loss)")
        if not self.label_names:
            return (f" (label_names is empty: transformers found no label argument in "
                    f"{type(self.pruned_model).__name__}.forward, so evaluation computes no loss and hands the metric "
                    "no labels; name the eval_dataset's label columns with --label_names)")
        return ""

    def _decision_rows_without_labels(self) -> list[str]:
        """The label columns transformers reads (``label_names``) that the first decision batch, as the collator
        builds it (a masked-LM or seq2seq collator may make the labels), lacks; else ``[]``. transformers computes
        the loss and hands labels to the metric only when every one of them is there (``labels`` may come as
        ``label`` / ``label_ids``)."""
        names = list(self.label_names)
        batch = self._first_decision_batch()
        if not names or not isinstance(batch, Mapping):
            return []
        aliases = {"labels": ("labels", "label", "label_ids")}
        return [name for name in names if all(batch.get(key) is None for key in aliases.get(name, (name,)))]

    def _first_decision_batch(self):
        """The first 2 decision rows as the collator builds them (None: the collator or dataset fails on them, and
        the evaluation that follows tells how)."""
        try:
            with self._reading_decision_rows():
                return next(iter(self.get_test_dataloader(first_rows(self.eval_dataset, 2))))
        except Exception:
            return None

    def _record_best_restored(self, best: str, discarded: list[dict], step: int) -> None:
        """A history entry for the best checkpoint's pruning state, restored with its weights, naming the decisions
        the run made after it (the log shows them; the restored history, which the report prints, had lost them)."""
        if not discarded:
            return
        made = ", ".join(f"{h['event']} {h.get('ratio', 0.0):.3f}@{h.get('training_step', '?')}" for h in discarded)
        self.controller.state.history.append({
            "event": "best_checkpoint", "ratio": self.controller.state.ratio, "training_step": int(step),
            "reason": f"load_best_model_at_end restored {os.path.basename(best)}; the decisions made after it are "
                      f"discarded: {made}",
            "discarded": [{k: v for k, v in h.items() if k in ("event", "ratio", "metric", "training_step")}
                          for h in discarded]})
        logger.info("decisions after the best checkpoint %s discarded with it: %s", best, made)

    def _stamp_decisions(self, step: int) -> None:
        """Give the controller's new history entries (a decision, and the stop it may have led to) the optimizer
        step they happened at, ``training_step`` in the report (``step`` there is the controller's step size)."""
        for entry in self.controller.state.history:
            entry.setdefault("training_step", int(step))

    def _log_decision(self, event: str, step: int, ratio: float, metric: float, evaluation: dict) -> None:
        self._stamp_decisions(step)
        masks = get_masks(self.pruned_model)
        record = {
            "pruning/sparsity_tried": ratio,
            "pruning/sparsity_kept": self.controller.state.ratio,  # the ratio asked for
            "pruning/sparsity_selected": self.controller.state.selected,  # what the kept masks remove (floors)
            "pruning/metric": metric,
            "pruning/kept_decision": {"reference": 1.0, "keep": 1.0, ROLLBACK: 0.0}[event],
            # the step this decision judged (the report's "step"); the reference: the first step to be tried
            "pruning/step_size": next((h["step"] for h in reversed(self.controller.state.history) if "step" in h),
                                      self.controller.state.step),
            **self._pruned_fractions(masks),
        }
        logger.info("pruning %s at step %d: sparsity %.3f, %s %.4f", event, step, ratio, self.pruning_metric, metric)
        # Trainer.log() clears control.should_log, which the flow callback set for this step's training-loss log
        should_log = self.control.should_log
        self.log({**evaluation, **record})
        self.control.should_log = should_log

    def _more_decision_rows(self) -> str:
        """How the decisions could read more rows, in words, for the floor warning."""
        rows = self._eval_rows(self.args.pruning_eval_samples)
        if not rows:  # an eval set without a length
            return "more rows"
        if rows["eval_rows"] < rows["eval_set_rows"]:
            return f"more rows (pruning_eval_samples; {rows['eval_rows']} of the eval set's {rows['eval_set_rows']} now)"
        return f"a larger eval set (all its {rows['eval_set_rows']} rows are read now)"

    def _files_beside_a_saved_model(self, output_dir: str) -> None:
        """What a pruned save (either trainer's) writes or removes beside the model: no report of
        ``post_training_prune`` (another model's), this run's pruning report where due, and ``training_args.bin``."""
        remove_reports_of_another_model(output_dir, [POST_TRAINING_REPORT_FILE], card=False,
                                        why="post_training_prune's report")
        self._reports_of_this_save(output_dir)
        torch.save(without_hub_token(self.args), os.path.join(output_dir, "training_args.bin"))

    def _reports_of_this_save(self, output_dir: str) -> None:
        """The pruning report beside a model this trainer saves: before the run ended, none (one there is of an
        earlier run: removed, warned); after, this run's (written into a folder other than the output_dir)."""
        if not self._finished:
            remove_reports_of_another_model(output_dir, [REPORT_FILE, CURVE_FILE, LAYERS_FILE], card=False,
                                            why="a report of an earlier run; this run's is written when it ends")
        elif os.path.abspath(output_dir) != os.path.abspath(self.args.output_dir):
            self._write_report(output_dir)

    @staticmethod
    def _pruned_fractions(masks, prefix: str = "pruning/") -> dict[str, float]:
        """The fraction of the heads, neurons (and layers, where pruned) ``masks`` remove, as logged."""
        record = {f"{prefix}heads_pruned": masks.pruned_fraction("heads"),
                  f"{prefix}ffn_pruned": masks.pruned_fraction("ffn")}
        if masks.of_kind("layers"):  # a removed layer's heads and neurons count here, not above
            record[f"{prefix}layers_pruned"] = masks.pruned_fraction("layers")
        return record

    def _steps_run(self) -> int:
        """The optimizer steps this run has made: transformers 5 ends a resume from the checkpoint taken at
        ``max_steps`` at global step ``max_steps + 1``, a step that never ran."""
        state = self.state
        return min(state.global_step, state.max_steps) if state.max_steps > 0 else state.global_step

    def finish_pruning(self) -> None:
        """At ``on_train_end``: judge the last step, compact, write the report."""
        c, args = self.controller, self.args
        now, best, discarded = self._steps_run(), None, []
        if args.load_best_model_at_end and self.state.best_model_checkpoint is not None:
            # The Trainer has loaded the best checkpoint's weights; its masks and decisions come with them.
            best = self.state.best_model_checkpoint
            if os.path.isfile(os.path.join(best, PRUNING_STATE_FILE)):
                live = list(c.state.history)
                self.load_pruning_state_dict(read_pruning_state(best))
                logger.info("pruning state of the best checkpoint %s restored with its weights", best)
                discarded = live[len(c.state.history):]  # recorded after the judgement below, in step order
            else:
                logger.warning("best checkpoint %s has no %s: its weights stay under the last masks", best,
                               PRUNING_STATE_FILE)
        # the weights judged and measured: the last step's, or the best checkpoint's (restored with its state)
        weights_step = now if best is None else checkpoint_step(best, now)
        if c.state.pending is not None and weights_step > self._last_prune_step:
            # judge the last step so the final masks are within tolerance; no further step: no training is left
            # (on the best checkpoint's weights: stamped with its step)
            self._decide(weights_step, propose=False)
        if best is not None:
            self._record_best_restored(best, discarded, now)
        if c.state.pending is not None:  # proposed, but no training is left to recover from it
            logger.info("pruning: sparsity %.3f discarded, no training steps left to judge it", c.state.pending)
            c.state.history.append({"event": "discard", "ratio": c.state.pending, "reason": "no training steps left"})
            self._drop_candidate()
        restored_before_reference = (c.state.reference is None and best is not None
                                     and now > args.pruning_warmup_steps)
        if c.state.reference is not None and not c.state.done:
            logger.info("pruning stopped at sparsity %.3f: training ended", c.state.ratio)
        kept_after_best = [h for h in discarded if h["event"] == "keep"]
        if restored_before_reference:
            reason = (f"the best checkpoint ({os.path.basename(best)}) {BEST_BEFORE_REFERENCE}; what was pruned after "
                      "it is discarded")
        elif kept_after_best:  # the card would otherwise say the run kept no step
            kept = ", ".join(f"{h['ratio']:.3f} at step {h.get('training_step', '?')}" for h in kept_after_best)
            reason = (f"training ended; load_best_model_at_end restored {os.path.basename(best)}, discarding the "
                      f"steps kept after it (sparsity {kept})")
        else:
            reason = "training ended"
        c.stop(reason)
        self._stamp_decisions(now)  # the stop, a discarded candidate
        if restored_before_reference:
            logger.warning("the best checkpoint %s %s (pruning_warmup_steps %d): the model handed back is its dense "
                           "fine-tuned weights; what was pruned after it is discarded", best, BEST_BEFORE_REFERENCE,
                           args.pruning_warmup_steps)
        elif c.state.reference is None:
            logger.warning("training ended at step %d, before the pruning reference (pruning_warmup_steps %d): "
                           "nothing was pruned; the model is the fine-tuned dense model", now,
                           args.pruning_warmup_steps)
        # to the report_to integrations: what the model handed back removes (after a best checkpoint restored, not
        # what the last decision logged)
        masks = get_masks(self.pruned_model)
        final = {"pruning/final_sparsity": c.state.selected,
                 **({} if masks is None else self._pruned_fractions(masks, "pruning/final_"))}
        if c.state.reference is None:
            self.log(final)
        else:  # measured after all training (on the best checkpoint's weights, if loaded): what compaction keeps
            step = weights_step
            # a keep at this very step measured these weights under these masks: not evaluated twice
            reuse = best is None and self._accepted_metric is not None and self._accepted_metric[0] == step \
                and self._accepted_metric[1] is not None
            metric = self._accepted_metric[1] if reuse else self._decision_metric()[0]
            self.final_check = final_check(c, metric, step, self.pruning_metric)
            # to the report_to integrations as well: what the model handed back measures
            self.log({**final, "pruning/final_metric": metric, "pruning/final_drop": self.final_check["drop"],
                      "pruning/final_within_tolerance": float(self.final_check["within_tolerance"])})
        if get_masks(self.pruned_model) is not None:
            # without compact_at_end, what save_model writes is measured: a compacted copy
            compacted = self.pruned_model if args.compact_at_end else copy.deepcopy(self.pruned_model)
            compact(compacted)
            self.pruned_comparison = compare_profiles(
                self.dense_profile, model_profile(compacted, seq_len=args.pruning_seq_len)
            )
            if not args.compact_at_end:
                logger.warning("compact_at_end=False: the model keeps its masks and its full-size weights. "
                               "trainer.save_model() and hf_adaprune.save_pruned(model, folder) write the pruned "
                               "model; model.save_pretrained / push_to_hub of the masked model write the dense "
                               "weights without the masks")
        if args.should_save:
            self._write_report()
        self._finished = True

    def _back_to_last_decision(self) -> None:
        """After ``train()`` stopped on an exception: the model back under the masks (and weights, for a re-fit) the
        last decision kept, which is what ``save_model`` writes; the checkpoints hold the run's state to resume."""
        pending = self.controller.state.pending
        if pending is None or get_masks(self.pruned_model) is None or self._accepted_masks is None:
            return
        try:
            self._drop_candidate()
        except Exception:  # the exception on its way out says more than a failed roll-back would
            logger.exception("pruning: could not put back the masks of the last decision after train() stopped")
            return
        logger.warning("pruning: train() stopped while the candidate at sparsity %.3f waited for its decision; the "
                       "model is back at the last decision's sparsity %.3f (resume from a checkpoint to go on)",
                       pending, self.controller.state.ratio)

    def _release_training_state(self) -> None:
        """What only training read goes once the run is over (a second train() is refused): the teacher, and, once
        compaction has replaced the weights, the optimizer and scheduler, whose state (2x the dense weights for Adam)
        belongs to tensors the model no longer has."""
        self.release_teacher()
        if not self.args.compact_at_end or get_masks(self.pruned_model) is not None:
            return
        optimizers = getattr(self.accelerator, "_optimizers", [])
        optimizers[:] = [o for o in optimizers if o is not self.optimizer]
        schedulers = getattr(self.accelerator, "_schedulers", [])
        schedulers[:] = [s for s in schedulers if s is not self.lr_scheduler]
        self.optimizer = self.lr_scheduler = self.callback_handler.optimizer = self.callback_handler.lr_scheduler = None

    # -- checkpoints, saving -------------------------------------------------------------
    def pruning_state_dict(self) -> dict:
        """Tensors, numbers, strings, lists and dicts only: read back with ``torch.load(weights_only=True)``."""
        return {
            "version": STATE_VERSION,
            "arguments": pruning_arguments(self.args),
            "masks": get_masks(self.pruned_model).state_dict() if get_masks(self.pruned_model) is not None else None,
            "accepted_masks": self._accepted_masks,
            "importance": self.importance.state_dict(),
            "controller": self.controller.state_dict(),
            "last_prune_step": self._last_prune_step,
            "teacher": self.teacher_state(),
            "earlier_distillation": self.earlier_distillation,  # a distillation an earlier resume ended
            # a measured table: a resumed run decides on the same costs instead of timing the model again
            "latency_costs": self.costs if self.args.pruning_target_type == "latency" else None,
            "world_size": self.args.world_size,
            "decision_rows": self._decision_rows,
            **self.candidate_state_dict(),
        }

    def load_pruning_state_dict(self, state: dict) -> None:
        # the groups this run prunes: every head and FFN mask is attached whatever --prune says, so the attached
        # masks would let a removal of a kind (or role) this run does not prune through, unreported
        masks = get_masks(self.pruned_model)
        state = without_unpruned_groups(state, {group.name for group in self.pruning_groups}, masks.state_dict())
        get_masks(self.pruned_model).load_state_dict(state["masks"])
        # a kind this run prunes more (--prune with layers added) has no accepted masks in the checkpoint: all kept
        self._accepted_masks = {**get_masks(self.pruned_model).state_dict(), **state["accepted_masks"]}
        saved_args, now = state.get("arguments") or {}, pruning_arguments(self.args)
        other_scores = [k for k in ("pruning_criterion", "pruning_score_ema") if k in saved_args
                        and saved_args[k] != now.get(k)]
        if other_scores:  # a running mean of another quantity (or weighting) is not continued
            self.importance.reset()
            logger.warning("resuming with %s: the checkpoint's scores are of another kind and are not continued; "
                           "the scores start again from this step", ", ".join(
                               f"--{k} {now.get(k)!r} (checkpoint {saved_args[k]!r})" for k in other_scores))
        else:  # the state was saved on the CPU: the scores go where the gradients they are mixed with will be
            self.importance.load_state_dict(state["importance"], device=next(self.pruned_model.parameters()).device)
        self.controller.load_state_dict(state["controller"])
        for entry in self.controller.state.history:  # a checkpoint written before decisions carried their step
            entry.setdefault("training_step", None)
        saved_world = state.get("world_size")
        if saved_world is not None and saved_world != self.args.world_size:
            logger.warning("resuming on %d process(es) from a checkpoint written by %d: each process now reads other "
                           "batches, so the rest of the run (scores, decisions) differs from an uninterrupted one",
                           self.args.world_size, saved_world)
        if self.controller.resume_towards_target():
            self._stamp_decisions(self.state.global_step)  # the "resume" entry: the step the run goes on from
            logger.info("resuming under --pruning_target %s: the checkpoint had stopped at its own target (%.3f); "
                        "pruning goes on", self.args.pruning_target, self.controller.state.ratio)
        self._last_prune_step = state["last_prune_step"]
        self._decision_rows = state.get("decision_rows")
        self.earlier_distillation = state.get("earlier_distillation")
        self.load_teacher_state(state.get("teacher"), saved_args)
        self.load_candidate_state_dict(state)
        saved = state.get("latency_costs")
        groups = {group.name for group in self.pruning_groups}
        if saved and self.args.pruning_target_type == "latency" and groups <= set(saved) and all(
                saved_args.get(k) == now.get(k) for k in LATENCY_TABLE_ARGUMENTS):
            # a table saved before layers had their own entries: its groups' (each layer then costs the average)
            self.costs = {name: saved[name] for name in self.costs if name in saved}

    def save_pruning_state(self, folder: str) -> None:
        """Write ``pruning_state.pt`` into a checkpoint folder (``on_save``; also the end of a run)."""
        if get_masks(self.pruned_model) is not None:
            write_pruning_state(folder, self.pruning_state_dict())

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        c = self.controller
        # model_init: train() builds a fresh model; a train() interrupted after the controller stopped (before
        # on_train_end compacted the model) resumes from a checkpoint as any interrupted one
        if self._finished and self.model_init is None:
            if not any(event.get("event") == "keep" for event in c.state.history):  # nothing was pruned
                restored = BEST_BEFORE_REFERENCE in (c.state.stop_reason or "")
                what = (f"this trainer's train() handed back its model unpruned ({c.state.stop_reason})" if restored
                        else f"no pruning happened in this trainer's train() (training ended at step "
                        f"{self.state.global_step}, before the pruning reference at pruning_warmup_steps "
                        f"{self.args.pruning_warmup_steps}): its model is not pruned" if c.state.reference is None
                        else f"no pruning step of this trainer's train() was kept (stopped: {c.state.stop_reason}): "
                        "its model is not pruned")
                raise RuntimeError(
                    f"{what}; a second train() would fine-tune it without pruning. Build a new trainer to prune it: an "
                    f"{type(self).__name__} with this model and more max_steps or a smaller pruning_warmup_steps")
            raise RuntimeError(
                f"this trainer has already pruned its model (stopped: {c.state.stop_reason}); a second train() would "
                f"fine-tune it without pruning. Build a new trainer: an {type(self).__name__} with this model to "
                "prune it further, or a plain Trainer to fine-tune it more")
        if self.model_init is None:  # model_init: train() sets pruning up again, on a fresh model, from self.args
            self._check_unchanged_since_setup()
        self.check_eval_dataset(self.eval_dataset)  # as when the trainer was built: it may have been assigned since
        if self.args.should_save:
            check_writable(self.args.output_dir)
        resume_from_checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if self.model_init is None and not resume_from_checkpoint and self._began_at is None:
            check_not_masked(self.pruned_model)  # masked since the trainer was built (another trainer's run)
        if self._began_at is not None and not resume_from_checkpoint and self.model_init is None:
            raise RuntimeError(
                "an earlier train() of this trainer stopped mid-pruning (interrupted, or an error): its reference, "
                "masks and scores would carry into a run that restarts at step 0. Resume it with "
                "train(resume_from_checkpoint=...) from a checkpoint it saved, or build a new trainer from a fresh "
                "model")
        self._ignore_keys_for_eval = kwargs.get("ignore_keys_for_eval", args[1] if len(args) > 1 else None)
        if resume_from_checkpoint:
            state = read_pruning_state(resume_from_checkpoint)
            check_resume_arguments(state.get("arguments") or {}, pruning_arguments(self.args),
                                   self.args.pruning_resume_with_new_arguments)
            problem = new_arguments_problem(state.get("arguments") or {}, pruning_arguments(self.args),
                                            state.get("controller") or {}, teacher=state.get("teacher"))
            if problem:
                raise ValueError(problem)
            problem = decision_rows_problem(state.get("decision_rows"),
                                            self.decision_rows() if state.get("decision_rows") else None)
            if problem and not self.args.pruning_resume_with_new_arguments:
                raise ValueError(f"{problem}. Resume with the rows and settings the pruning reference was measured "
                                 "with, or set --pruning_resume_with_new_arguments to compare decisions on these with "
                                 "that reference all the same")
            if problem:
                logger.warning("resuming all the same (--pruning_resume_with_new_arguments): %s", problem)
            workers = (state.get("decision_rows") or {}).get("workers")
            if workers is not None and workers != self.args.dataloader_num_workers:
                logger.warning("dataloader_num_workers is %d, the checkpoint's pruning reference was measured with %d: "
                               "a collator or transform that draws at random (masked-LM masking, augmentation) draws "
                               "in worker processes seeded by their count, so decisions would read other draws than "
                               "the reference did; resume with dataloader_num_workers=%d to compare them alike",
                               self.args.dataloader_num_workers, workers, workers)
            self._resume_state = state  # loaded at on_train_begin, into the model train() trains
            missing = [name for name in (OPTIMIZER_NAME, SCHEDULER_NAME)
                       if not os.path.isfile(os.path.join(resume_from_checkpoint, name))]
            if missing:
                logger.warning("%s holds no %s (saved with save_only_model=True?): training goes on with a new "
                               "optimizer and the learning-rate schedule from its start, so the scores, decisions and "
                               "model differ from an uninterrupted run's", resume_from_checkpoint, " or ".join(missing))
            if self.train_dataset is not None and not has_length(self.train_dataset) and not self.args.ignore_data_skip:
                logger.warning("resuming with a train dataset of unknown length (iterable): transformers skips the "
                               "batches the run had read, which continues exactly within its first pass only; from a "
                               "checkpoint past its end the batches that follow differ from the uninterrupted run's")
        self._forget_evaluation_prepare()
        self._finished = False  # a new run (model_init's next one): its report comes when it ends
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        except BaseException:  # an error, Ctrl-C: the model is not left running a candidate no decision judged
            self._back_to_last_decision()
            raise
        if self._finished:  # after on_train_end: every callback has seen the optimizer
            self._release_training_state()
        return output

    def _check_unchanged_since_setup(self) -> None:
        """The model still carries the masks this trainer attached, and its pruning arguments are those it was built
        with: the controller, the groups and their costs were made from both when the trainer was built."""
        masks = get_masks(self.pruned_model)
        if masks is not self.setup_masks or masks.detached:
            raise RuntimeError(
                "the model no longer carries the masks this trainer attached when it was built: it was compacted "
                "since (save_pruned, compact(), another trainer's train()) or its masks were detached. Build a new "
                f"{type(self).__name__} on the model as it is now")
        changed = {name: value for name, value in pruning_arguments(self.args).items()
                   if self.setup_arguments.get(name) != value}
        if changed:
            raise ValueError(
                "pruning arguments changed since this trainer was built (" + ", ".join(
                    f"{name} {self.setup_arguments.get(name)!r} -> {value!r}" for name, value in changed.items())
                + "): the controller, the pruned groups and their costs were set up from the earlier values. Build a "
                f"new {type(self).__name__} with the arguments as they are now")

    def _forget_evaluation_prepare(self) -> None:
        """On several processes, an ``evaluate()`` before ``train()`` prepares the bare model for evaluation, and
        accelerate then skips wrapping it in DistributedDataParallel for training (transformers 5 / accelerate 1):
        every process would train a model of its own, with the same masks but diverging weights. Forget that
        preparation, so that training wraps the model."""
        model = self.model
        if self.args.world_size > 1 and self.model_wrapped is model and getattr(model, "_is_accelerate_prepared", False):
            del model._is_accelerate_prepared
            self.accelerator._models = [m for m in self.accelerator._models if m is not model]

    def push_to_hub(self, *args, **kwargs):
        """``Trainer.push_to_hub``; beside a README.md of the user's own in ``output_dir`` the pruned model's card goes
        up as the repo's README.md and theirs stays local (:mod:`.hub_push`)."""
        with card_as_repo_readme(self.args.output_dir):
            return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """No push while training: a checkpoint holds dense weights under masks, without their pruning record (a
        ``hub_strategy`` set after the arguments were built, e.g. by ``set_push_to_hub``, comes here)."""
        if self.args.push_to_hub and self.args.hub_strategy != HubStrategy.END and not self._checkpoint_push_said:
            logger.warning("hub_strategy %s: checkpoints hold dense weights under masks, so hf_adaprune pushes only the "
                           "pruned model, at the end (trainer.push_to_hub())", self.args.hub_strategy)
            self._checkpoint_push_said = True

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints keep the dense weights (masks live in pruning_state.pt); any other save is pruned."""
        if is_checkpoint_save(output_dir, _internal_call):
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            model = self.model
            if get_masks(model) is not None:  # keep the in-memory model trainable: compact a copy
                model = copy.deepcopy(model)
                self._as_last_decided(model)
            save_pruned(model, output_dir, tokenizer=self.processing_class)
            self._files_beside_a_saved_model(output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")  # writes the card with the push's arguments
        elif not _internal_call and self.args.should_save:
            self._write_card(output_dir, **self.card_args())


def without_unpruned_groups(state: dict, groups: set[str], current: dict | None = None) -> dict:
    """``state`` (a ``pruning_state.pt``) without the masks of groups this run does not prune.

    A run resumed under ``pruning_resume_with_new_arguments`` may prune fewer kinds (or roles) than the
    checkpoint's (``--prune heads`` after ``heads,ffn``, ``heads,ffn`` after ``heads,ffn,layers``): their masks are
    dropped while nothing of those groups was removed, and refused otherwise (dropping them would silently bring
    the removed structures back, or, for masks that stay attached, keep them removed while the report names only
    the kinds this run prunes). ``current``: the masks the model has now (a group absent: all kept); what they
    remove already is not this checkpoint's doing.
    """
    current = current or {}
    ramp = state.get("ramp")
    named = [state["masks"], state["accepted_masks"]] + ([ramp["start"], ramp["target"]] if ramp else [])
    dropped = {name for masks in named for name in masks} - groups

    def removes(name: str, mask: torch.Tensor) -> bool:
        now = current.get(name)
        return bool((mask < 1).any()) if now is None else bool((mask.cpu() < now.detach().cpu()).any())

    if not dropped:
        return state
    removed = sorted({name for masks in named for name, mask in masks.items()
                      if name in dropped and removes(name, mask)})
    if removed:
        raise ValueError(f"the checkpoint removed structures of groups this run does not prune ({', '.join(removed)}): "
                         "resuming without them would bring them back. Resume with the checkpoint's --prune kinds "
                         f"and --pruning_roles (its arguments are in {PRUNING_STATE_FILE})")
    logger.info("resuming without the masks of %s (not pruned by this run; nothing of them was removed)",
                ", ".join(sorted(dropped)))

    def keep(masks: dict) -> dict:
        return {name: mask for name, mask in masks.items() if name in groups}

    ramp = ramp and {**ramp, "start": keep(ramp["start"]), "target": keep(ramp["target"])}
    return {**state, "masks": keep(state["masks"]), "accepted_masks": keep(state["accepted_masks"]), "ramp": ramp}


class AdaptivePruningTrainer(PruningTrainerMixin, Trainer):
    """A ``transformers.Trainer`` that prunes heads and FFN neurons while it fine-tunes."""


class AdaptivePruningSeq2SeqTrainer(PruningTrainerMixin, Seq2SeqTrainer):
    """The ``Seq2SeqTrainer`` counterpart: decisions can use generation metrics (BLEU, chrF, WER)."""

    arguments_class = Seq2SeqPruningArguments

    def __init__(self, *args, dataset_name: str | None = None, **kwargs):
        given = self._given_arguments(args, kwargs)
        training_args = given.get("args")
        # the metric built from its name (BLEU, chrF, WER, ...) decodes generated ids; a compute_metrics of the
        # user's may work on logits, and a wrong one fails before training (the metric check)
        if (isinstance(training_args, Seq2SeqPruningArguments) and training_args.pruning_metric != "loss"
                and given.get("compute_metrics") is None and not training_args.predict_with_generate):
            raise ValueError(
                f"--pruning_metric {training_args.pruning_metric} is computed on generated text: set "
                "--predict_with_generate (or pass a compute_metrics that computes it from logits)"
            )
        super().__init__(*args, dataset_name=dataset_name, **kwargs)

    def _predict_as_is(self, dataset, **kwargs):
        # Seq2SeqTrainer.predict with no per-call options, but leaving the gather function alone: its generation
        # settings (the arguments'), then Trainer.predict (prediction_step generates)
        self._gen_kwargs = {key: value for key, value in (("max_length", self.args.generation_max_length),
                                                          ("num_beams", self.args.generation_num_beams))
                            if value is not None}
        return Trainer.predict(self, dataset, **kwargs)


__all__ = ["AdaptivePruningSeq2SeqTrainer", "AdaptivePruningTrainer", "PRUNING_STATE_FILE", "PruningArguments",
           "PruningTrainerMixin", "Seq2SeqPruningArguments"]
