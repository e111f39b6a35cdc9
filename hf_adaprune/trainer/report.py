"""What a pruning run writes about itself: the summary, ``pruning_report.json`` with its plots, the model card."""

from __future__ import annotations

import logging
import os

from transformers.modelcard import TrainingSummary

from ..reporting.report import (CARD_BESIDE_USER_README, CURVE_FILE, LAYERS_FILE, REPORT_FILE, card_tags,
                                is_adaprune_card, is_user_readme, model_card, plot_layer_structure, plot_pruning_curve,
                                write_json)
from ..reporting.report import removed_layers as removed_layers_of
from ..reporting.summary import PruningSummary
from ..surgery import kept_structure, removed_layers
from .arguments import prune_kinds, pruning_arguments

logger = logging.getLogger(__name__)



def card_path(output_dir: str) -> str:
    """Where the model card goes in ``output_dir``: README.md, or, beside a README.md of the user's own (left as it
    is, named in a warning), CARD_BESIDE_USER_README. When it is README.md, a card an earlier save wrote beside a
    README.md that is no longer the user's is removed (it would be uploaded beside the card)."""
    path = os.path.join(output_dir, "README.md")
    if is_user_readme(path):
        logger.warning("%s is not a model card hf_adaprune wrote: it is left as it is, and the pruned model's card is "
                       "written to %s", path, CARD_BESIDE_USER_README)
        return os.path.join(output_dir, CARD_BESIDE_USER_README)
    tags = card_tags(path)
    if tags is not None and "hf_adaprune" not in tags:  # then transformers' or sentence-transformers' (is_user_readme)
        writer = ("transformers' create_model_card wrote (generated_from_trainer)" if "generated_from_trainer" in tags
                  else "sentence-transformers' save wrote")
        logger.warning("%s is a card %s, of the model before pruning: the pruned model's card replaces it",
                       path, writer)
    stale = os.path.join(output_dir, CARD_BESIDE_USER_README)
    if is_adaprune_card(stale):
        os.remove(stale)
    return path


class PruningReportMixin:
    """Trainer methods for the report and the card; expects the controller, the arguments and ``pruned_model``."""

    def pruning_summary(self) -> PruningSummary:
        history = self.controller.state.history
        metrics = [h for h in history if "metric" in h and h["event"] in ("reference", "keep")]
        with self._last_decided_masks():  # a candidate not judged yet is not what a save writes
            groups, removed = kept_structure(self.pruned_model), removed_layers(self.pruned_model)
        # the values the run was set up with: arguments shared with a later trainer may have been changed since
        args = getattr(self, "setup_arguments", None) or pruning_arguments(self.args)
        return PruningSummary(
            base_model=getattr(self.pruned_model.config, "_name_or_path", None) or None,
            dataset=self.dataset_name,
            model_name=os.path.basename(os.path.abspath(self.args.output_dir)),
            criterion=args["pruning_criterion"],
            metric_name=self.pruning_metric,
            metric_key=self.metric_key,
            greater_is_better=self.controller.greater_is_better,
            metric_before=self.controller.state.reference,
            metric_after=metrics[-1]["metric"] if metrics else None,
            tolerance=args["pruning_tolerance"],
            tolerance_type=args["pruning_tolerance_type"],
            target=args["pruning_target"],
            target_type=args["pruning_target_type"],
            schedule=args["pruning_schedule"],
            structures=",".join(getattr(self, "pruned_kinds", None) or prune_kinds(args["prune"])),
            final_check=self.final_check,
            final_sparsity=self.controller.state.selected,
            stop_reason=self.controller.state.stop_reason,
            decisions=history,
            groups=groups,
            comparison=self.pruned_comparison,
            removed_layers=removed,
            start_pruned=getattr(self, "start_pruned", False),
            distillation=self.distillation_record(),
            queries_per_key=max((getattr(g, "queries_per_key", 1) for g in self.pruning_groups), default=1),
            **self._eval_rows(args["pruning_eval_samples"]),
        )

    def _eval_rows(self, samples: int | None) -> dict:
        """``eval_rows`` (the rows decisions read) and ``eval_set_rows`` (the eval set's), where both are known."""
        data = getattr(self, "eval_dataset", None)
        parts = list(data.values()) if isinstance(data, dict) else [data]
        try:
            sizes = [len(part) for part in parts]
        except TypeError:  # no eval set, or a streaming one
            return {}
        return {"eval_rows": sum(size if samples is None else min(size, samples) for size in sizes),
                "eval_set_rows": sum(sizes)}

    def _write_report(self, out: str | None = None) -> None:
        """``pruning_report.json`` and the two plots, into ``out`` (default: the output_dir)."""
        out = out or self.args.output_dir
        os.makedirs(out, exist_ok=True)
        summary = self.pruning_summary()
        write_json(os.path.join(out, REPORT_FILE), summary.to_dict())
        plot_pruning_curve(summary.decisions, self.pruning_metric, os.path.join(out, CURVE_FILE))
        plot_layer_structure(summary.groups, os.path.join(out, LAYERS_FILE), removed=removed_layers_of(summary))

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs) -> None:
        """The pruned model's card, with what ``Trainer.create_model_card`` accepts passed through. The values given
        are kept (each until given again): the card a later ``save_model()`` or push writes keeps them."""
        self.set_card_args(language=language, license=license, tags=tags, model_name=model_name,
                           finetuned_from=finetuned_from, tasks=tasks, dataset_tags=dataset_tags, dataset=dataset,
                           dataset_args=dataset_args)
        if self.is_world_process_zero():
            self._write_card(self.args.output_dir, **self._card_args)

    def set_card_args(self, **card_args) -> None:
        """Keep ``create_model_card``'s values (those not None) for the cards later saves and pushes write, without
        writing one now (the recipes name the card after the Hub repo they push to)."""
        self._card_args = {**self.card_args(), **{k: v for k, v in card_args.items() if v is not None}}

    def card_args(self) -> dict:
        """What ``create_model_card`` was given so far (the card's license, language, tags, base model, dataset)."""
        return dict(getattr(self, "_card_args", {}))

    def _write_card(self, output_dir: str, **card_args) -> None:
        # The stock summary infers the task, the Hub dataset ids and the hyperparameters as the stock card does.
        info = TrainingSummary.from_trainer(self, **card_args)
        summary = self.pruning_summary()
        summary.model_name = card_args.get("model_name") or summary.model_name
        summary.base_model = card_args.get("finetuned_from") or summary.base_model
        summary.dataset = card_args.get("dataset") or summary.dataset
        card = model_card(summary, language=info.language, license=info.license,
                          tags=[t for t in (info.tags or []) if t != "generated_from_trainer"], tasks=info.tasks,
                          datasets=info.dataset_tags, hyperparameters=info.hyperparameters,
                          trained=self.state.global_step > 0)  # else saved before train(): nothing of a run
        card.save(card_path(output_dir))
