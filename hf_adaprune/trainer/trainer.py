"""``AdaptivePruningTrainer``: fine-tune and prune in one ``Trainer.train()``.

Flow per optimizer step: the ordinary backward pass fills ``.grad``; at the
step's last micro-batch (before gradient clipping) the importance criterion
reads it. After ``pruning_warmup_steps`` the eval metric becomes the reference
and the first pruning step is applied as masks. Every ``pruning_interval`` steps
the metric decides: keep (prune further) or roll back to the previous masks and
take half the step. Masks stay masks until training ends, so the optimizer and
a DDP-wrapped model never see a shape change; then the model is compacted once.
"""

from __future__ import annotations

import copy
import logging
import os

import torch
from torch.utils.data import Subset
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..families import filter_groups, get_adapter
from .arguments import PruningArguments, Seq2SeqPruningArguments
from ..engine.controller import ROLLBACK, AdaptiveController
from .eval_order import DatasetOrderEvalMixin
from ..reporting.flops import compare_profiles, model_profile, structure_costs
from ..hub import save_pruned
from ..engine.importance import make_importance
from ..engine.masks import attach_masks, get_masks
from ..metrics import metric_greater_is_better
from ..reporting.report import CURVE_FILE, LAYERS_FILE, REPORT_FILE, model_card, plot_layer_structure, plot_pruning_curve, write_json
from ..engine.selection import select_masks_by_kind, selected_fraction_by_kind, unreachable_target
from ..surgery import compact, kept_structure
from ..task_metrics import classification_metrics, generation_metrics

logger = logging.getLogger(__name__)

PRUNING_STATE_FILE = "pruning_state.pt"
_KIND_OF_OPTION = {"heads": ("heads",), "ffn": ("ffn",), "both": ("heads", "ffn")}


class _PruningCallback(TrainerCallback):
    """Drives the pruning schedule from the training loop."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # Here, not before train(): an evaluate() before train() marks the bare model as prepared,
        # and accelerate would then skip wrapping it in DistributedDataParallel.
        if state.global_step == 0 and self.trainer.pruning_metric != "loss":
            self.trainer._check_metric_available()
        if args.pruning_warmup_steps == 0 and self.trainer.controller.state.reference is None:
            self.trainer._pruning_tick(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._pruning_tick(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._finish_pruning()


class PruningTrainerMixin(DatasetOrderEvalMixin):
    """Everything pruning adds to a Trainer; mixed into ``Trainer`` and ``Seq2SeqTrainer``.

    Evaluation and ``predict()`` keep the dataset's order (:class:`DatasetOrderEvalMixin`).
    """

    def __init__(self, *args, dataset_name: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PruningArguments):
            raise TypeError(f"{type(self).__name__} needs PruningArguments, got {type(self.args).__name__}")
        self.dataset_name = dataset_name
        self._setup_pruning()

    # -- set-up ---------------------------------------------------------------------------------
    def _setup_pruning(self) -> None:
        args, model = self.args, self.model
        get_adapter(model)  # unsupported families fail here, before any training
        max_positions = getattr(model.config, "max_position_embeddings", None)
        if getattr(model, "main_input_name", "input_ids") == "input_ids" and max_positions \
                and args.pruning_seq_len > max_positions:
            raise ValueError(f"--pruning_seq_len {args.pruning_seq_len} exceeds the model's "
                             f"max_position_embeddings ({max_positions})")
        masks = attach_masks(model)
        kinds = _KIND_OF_OPTION[args.prune]
        roles = args.selected_roles()
        self.pruning_groups = filter_groups(masks.groups.values(), roles, kinds)
        if not self.pruning_groups:
            raise ValueError(f"nothing to prune: no {args.prune} groups with roles {sorted(roles)} in this model")
        if self.eval_dataset is None:
            raise ValueError("the pruning controller needs an eval_dataset to measure the metric on")
        self.importance = make_importance(args.pruning_criterion)
        if self.importance.needs_gradients and args.pruning_warmup_steps < 1:
            raise ValueError(f"{args.pruning_criterion} importance needs gradients: set --pruning_warmup_steps >= 1")
        self.pruning_metric = args.pruning_metric
        if self.pruning_metric != "loss" and self.compute_metrics is None:
            self.compute_metrics = self._default_compute_metrics(self.pruning_metric)
        self.metric_key = "eval_loss" if self.pruning_metric == "loss" else f"eval_{self.pruning_metric}"
        self.controller = AdaptiveController(
            target=args.pruning_target,
            initial_step=min(args.pruning_initial_step, args.pruning_target),
            min_step=min(args.pruning_min_step, args.pruning_initial_step, args.pruning_target),
            tolerance=args.pruning_tolerance,
            tolerance_type=args.pruning_tolerance_type,
            greater_is_better=metric_greater_is_better(self.pruning_metric),
            growth=args.pruning_step_growth,
        )
        self.costs = (
            structure_costs(model, self.pruning_groups, args.pruning_seq_len)
            if args.pruning_target_type == "flops" else None
        )
        blocked = unreachable_target(self.pruning_groups, {n: m.numel() for n, m in masks.masks.items()},
                                     args.pruning_target, kinds, self._floors(), self.costs)
        if blocked:
            logger.warning(blocked)
        self.dense_profile = model_profile(model, seq_len=args.pruning_seq_len)
        self._accepted_masks = masks.state_dict()
        self._last_prune_step = None
        self.pruned_comparison = None
        self.add_callback(_PruningCallback(self))

    def _default_compute_metrics(self, name: str):
        if getattr(self.args, "predict_with_generate", False):
            tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
            if tokenizer is None:
                raise ValueError(f"--pruning_metric {name} on generated text needs the tokenizer (processing_class)")
            return generation_metrics(name, tokenizer)
        return classification_metrics(name)

    def _decision_dataset(self):
        dataset, n = self.eval_dataset, self.args.pruning_eval_samples
        if n is None or n >= len(dataset):
            return dataset
        return dataset.select(range(n)) if hasattr(dataset, "select") else Subset(dataset, range(n))

    # -- scores -----------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # .grad now holds the sum over this optimizer step's micro-batches (already averaged
        # across processes by DDP on the last one): score once per optimizer step, before clipping.
        if self.accelerator.sync_gradients and not self.controller.state.done:
            self.importance.update(self.model, self.pruning_groups)
        return loss

    def _reduced_scores(self) -> dict[str, torch.Tensor]:
        """Scores averaged over all processes, so that every rank selects the same structures."""
        scores = self.importance.scores(self.model, self.pruning_groups)
        missing = [g.name for g in self.pruning_groups if g.name not in scores]
        if missing:
            raise RuntimeError(f"no importance scores yet for {missing[:3]}...: did any gradient reach them?")
        names = [g.name for g in self.pruning_groups]
        flat = torch.cat([scores[n].float().to(self.args.device) for n in names])
        if self.accelerator.num_processes > 1:
            flat = self.accelerator.reduce(flat, reduction="mean")
        out, offset = {}, 0
        for n in names:
            size = scores[n].numel()
            out[n] = flat[offset:offset + size].cpu()
            offset += size
        return out

    def _check_masks_agree(self) -> None:
        """All ranks must hold the same masks; a mismatch would silently corrupt the model."""
        if self.accelerator.num_processes == 1:
            return
        masks = get_masks(self.model)
        flat = torch.cat([masks.masks[g.name].float().flatten() for g in self.pruning_groups]).to(self.args.device)
        weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
        checksum = torch.stack([(flat.double() * weights).sum(), flat.double().sum()]).unsqueeze(0)
        gathered = self.accelerator.gather(checksum)
        if not torch.allclose(gathered, gathered[:1].expand_as(gathered)):
            raise RuntimeError(
                f"pruning masks differ across processes (checksums {gathered.tolist()}); refusing to train on"
            )

    # -- schedule ---------------------------------------------------------------------------------
    def _pruning_tick(self, step: int) -> None:
        c, args = self.controller, self.args
        if c.state.done:
            return
        if c.state.reference is None:
            if step >= args.pruning_warmup_steps:
                reference = self._decision_metric()
                ratio = c.start(reference)
                self._log_decision("reference", step, 0.0, reference)
                self._apply_ratio(ratio, step)
            return
        if c.state.pending is not None and step - self._last_prune_step >= args.pruning_interval:
            self._decide(step)

    def _decide(self, step: int) -> None:
        c = self.controller
        tried = c.state.pending
        metric = self._decision_metric()
        decision = c.decide(metric, selected=selected_fraction_by_kind(
            self.pruning_groups, get_masks(self.model).masks, _KIND_OF_OPTION[self.args.prune], self.costs))
        masks = get_masks(self.model)
        if decision == ROLLBACK:
            masks.load_state_dict(self._accepted_masks)
        else:
            self._accepted_masks = masks.state_dict()
        self._log_decision(decision, step, tried, metric)
        if not c.state.done:
            self._apply_ratio(c.propose(), step)
        else:
            logger.info("pruning stopped at sparsity %.3f: %s", c.state.ratio, c.state.stop_reason)

    def _apply_ratio(self, ratio: float, step: int) -> None:
        args = self.args
        masks = get_masks(self.model)
        scores = self._reduced_scores()
        masks.update(select_masks_by_kind(
            self.pruning_groups, scores, self._accepted_masks, ratio,
            kinds=_KIND_OF_OPTION[args.prune],
            scope=args.pruning_scope,
            floors=self._floors(),
            costs=self.costs,
        ))
        self._check_masks_agree()
        self._last_prune_step = step
        logger.info("pruning step %d: trying sparsity %.3f", step, ratio)

    def _floors(self) -> dict[str, int]:
        return {"heads": self.args.min_heads_per_layer, "ffn": self.args.min_neurons_per_layer}

    def _decision_metric(self) -> float:
        metrics = self.evaluate(eval_dataset=self._decision_dataset())
        if self.metric_key not in metrics:
            raise KeyError(
                f"--pruning_metric {self.pruning_metric!r}: evaluation returned no {self.metric_key!r}; "
                f"available: {sorted(k for k in metrics if k.startswith('eval_'))}"
            )
        return float(metrics[self.metric_key])

    def _log_decision(self, event: str, step: int, ratio: float, metric: float) -> None:
        masks = get_masks(self.model)
        record = {
            "pruning/sparsity_tried": ratio,
            "pruning/sparsity_kept": self.controller.state.ratio,
            "pruning/metric": metric,
            "pruning/kept_decision": {"reference": 1.0, "keep": 1.0, ROLLBACK: 0.0}[event],
            "pruning/step_size": self.controller.state.step,
            "pruning/heads_pruned": masks.pruned_fraction("heads"),
            "pruning/ffn_pruned": masks.pruned_fraction("ffn"),
        }
        logger.info("pruning %s at step %d: sparsity %.3f, %s %.4f", event, step, ratio, self.pruning_metric, metric)
        self.log(record)

    def _finish_pruning(self) -> None:
        c = self.controller
        if c.state.pending is not None and self.state.global_step > self._last_prune_step:
            self._decide(self.state.global_step)  # judge the last step so the final masks are within tolerance
        if c.state.pending is not None:  # proposed, but no training is left to recover from it
            c.state.history.append({"event": "discard", "ratio": c.state.pending, "reason": "no training steps left"})
            get_masks(self.model).load_state_dict(self._accepted_masks)
        c.stop("training ended")
        if self.args.compact_at_end and get_masks(self.model) is not None:
            compact(self.model)
            self.pruned_comparison = compare_profiles(
                self.dense_profile, model_profile(self.model, seq_len=self.args.pruning_seq_len)
            )
        if self.args.should_save:
            self._write_report()

    # -- reports, checkpoints, saving -------------------------------------------------------------
    def pruning_summary(self) -> dict:
        history = self.controller.state.history
        metrics = [h for h in history if "metric" in h and h["event"] in ("reference", "keep")]
        return {
            "base_model": getattr(self.model.config, "_name_or_path", None) or None,
            "dataset": self.dataset_name,
            "model_name": os.path.basename(os.path.abspath(self.args.output_dir)),
            "criterion": self.args.pruning_criterion,
            "metric_name": self.pruning_metric,
            "metric_key": self.metric_key,
            "greater_is_better": self.controller.greater_is_better,
            "metric_before": self.controller.state.reference,
            "metric_after": metrics[-1]["metric"] if metrics else None,
            "tolerance": self.args.pruning_tolerance,
            "tolerance_type": self.args.pruning_tolerance_type,
            "target": self.args.pruning_target,
            "target_type": self.args.pruning_target_type,
            "final_sparsity": self.controller.state.ratio,
            "stop_reason": self.controller.state.stop_reason,
            "decisions": history,
            "groups": kept_structure(self.model),
            "comparison": self.pruned_comparison,
        }

    def _write_report(self) -> None:
        out = self.args.output_dir
        os.makedirs(out, exist_ok=True)
        summary = self.pruning_summary()
        write_json(os.path.join(out, REPORT_FILE), summary)
        plot_pruning_curve(summary["decisions"], self.pruning_metric, os.path.join(out, CURVE_FILE))
        plot_layer_structure(summary["groups"], os.path.join(out, LAYERS_FILE))

    def pruning_state_dict(self) -> dict:
        return {
            "masks": get_masks(self.model).state_dict() if get_masks(self.model) is not None else None,
            "accepted_masks": self._accepted_masks,
            "importance": self.importance.state_dict(),
            "controller": self.controller.state_dict(),
            "last_prune_step": self._last_prune_step,
        }

    def load_pruning_state_dict(self, state: dict) -> None:
        get_masks(self.model).load_state_dict(state["masks"])
        self._accepted_masks = state["accepted_masks"]
        self.importance.load_state_dict(state["importance"])
        self.controller.load_state_dict(state["controller"])
        self._last_prune_step = state["last_prune_step"]

    def _save_checkpoint(self, model, trial):
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False
        if self.args.should_save and get_masks(self.model) is not None:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            tmp = os.path.join(folder, f".{PRUNING_STATE_FILE}.tmp")
            torch.save(self.pruning_state_dict(), tmp)
            os.replace(tmp, os.path.join(folder, PRUNING_STATE_FILE))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in {self.args.output_dir} to resume from")
        if resume_from_checkpoint:
            path = os.path.join(resume_from_checkpoint, PRUNING_STATE_FILE)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{resume_from_checkpoint} has no {PRUNING_STATE_FILE}: not a pruning checkpoint")
            self.load_pruning_state_dict(torch.load(path, weights_only=False))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _check_metric_available(self) -> None:
        """Evaluate a couple of examples now so a wrong metric name fails before hours of training."""
        n = min(2, len(self.eval_dataset))
        dataset = self.eval_dataset
        sample = dataset.select(range(n)) if hasattr(dataset, "select") else Subset(dataset, range(n))
        metrics = self.evaluate(eval_dataset=sample, metric_key_prefix="eval")
        if self.metric_key not in metrics:
            raise KeyError(
                f"--pruning_metric {self.pruning_metric!r}: evaluation returns no {self.metric_key!r}; "
                f"available: {sorted(k for k in metrics if k.startswith('eval_'))}"
            )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints keep the dense weights (masks live in pruning_state.pt); the final save is pruned."""
        if getattr(self, "_saving_checkpoint", False):
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        model = self.model
        if get_masks(model) is not None:  # keep the in-memory model trainable: compact a copy
            model = copy.deepcopy(model)
        save_pruned(model, output_dir, tokenizer=self.processing_class)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        with open(os.path.join(output_dir, "README.md"), "w") as f:
            f.write(model_card(self.pruning_summary()))

    def create_model_card(self, *args, **kwargs) -> None:
        if not self.is_world_process_zero():
            return
        summary = self.pruning_summary()
        summary["base_model"] = kwargs.get("finetuned_from") or summary["base_model"]
        summary["dataset"] = kwargs.get("dataset") or summary["dataset"]
        summary["model_name"] = kwargs.get("model_name") or summary["model_name"]
        with open(os.path.join(self.args.output_dir, "README.md"), "w") as f:
            f.write(model_card(summary))


class AdaptivePruningTrainer(PruningTrainerMixin, Trainer):
    """A ``transformers.Trainer`` that prunes heads and FFN neurons while it fine-tunes."""


class AdaptivePruningSeq2SeqTrainer(PruningTrainerMixin, Seq2SeqTrainer):
    """The ``Seq2SeqTrainer`` counterpart: decisions can use generation metrics (BLEU, chrF, WER)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.pruning_metric != "loss" and not self.args.predict_with_generate:
            raise ValueError(
                f"--pruning_metric {self.pruning_metric} is computed on generated text: set --predict_with_generate"
            )


__all__ = ["AdaptivePruningSeq2SeqTrainer", "AdaptivePruningTrainer", "PruningArguments", "Seq2SeqPruningArguments"]
