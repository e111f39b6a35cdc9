"""``AdaptivePruningSentenceTransformerTrainer``: prune a ``SentenceTransformer`` while it trains.

The pruning mixin over ``SentenceTransformerTrainer``: heads and FFN neurons of the transformer
module (``model[0].auto_model``) are scored, masked and compacted; the loss is any sentence-transformers
loss, or by default label-free distillation to the dense model's embeddings; decisions are steered by
any sentence-transformers evaluator in the direction it declares, or by agreement with the dense
embeddings when none is given. ``save_model`` writes a complete sentence-transformers folder.
"""

from __future__ import annotations

import copy
import os

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

from ..metrics import metric_greater_is_better
from ..trainer.trainer import PruningTrainerMixin
from .arguments import EVALUATOR_METRIC, SentenceTransformerPruningArguments
from .evaluation import TeacherAgreementEvaluator
from .hub import save_pruned_sentence_transformer, sentence_transformer_card
from .losses import EmbeddingDistillationLoss, embedding_distillation_loss, text_column, with_teacher_embeddings
from .modules import transformer_module

AGREEMENT_SENTENCES = 1000  # teacher agreement reads at most this many eval sentences


class AdaptivePruningSentenceTransformerTrainer(PruningTrainerMixin, SentenceTransformerTrainer):
    """A ``SentenceTransformerTrainer`` that prunes the transformer module's heads and FFN neurons.

    - ``loss``: any sentence-transformers loss (``CoSENTLoss``, ``MultipleNegativesRankingLoss``, ...).
      Without one, the model distils its own dense embeddings (MSE + cosine): ``train_dataset`` then
      needs one text column and no labels (the dense embeddings are computed here, before pruning),
      or a ``label`` column of precomputed teacher embeddings.
    - ``evaluator``: any sentence-transformers evaluator; its primary metric steers (``--pruning_metric
      evaluator``, the default) in its ``greater_is_better`` direction. Without one, the mean cosine to
      the dense embeddings of up to 1,000 ``eval_dataset`` sentences steers.
    """

    def __init__(self, model: SentenceTransformer | None = None, args: SentenceTransformerPruningArguments | None = None,
                 train_dataset=None, eval_dataset=None, loss=None, evaluator=None, **kwargs):
        if not isinstance(args, SentenceTransformerPruningArguments):
            raise TypeError(f"{type(self).__name__} needs SentenceTransformerPruningArguments, got {type(args).__name__}")
        transformer_module(model)  # an unsupported first module fails before the dense embeddings are computed
        if loss is None:
            loss = embedding_distillation_loss(model)
            if isinstance(train_dataset, Dataset) and "label" not in train_dataset.column_names:
                train_dataset = with_teacher_embeddings(train_dataset, model, args.per_device_eval_batch_size)
        if evaluator is None and eval_dataset is not None:
            evaluator = _agreement_evaluator(model, eval_dataset, args.per_device_eval_batch_size)
            if "label" not in eval_dataset.column_names and isinstance(loss, EmbeddingDistillationLoss):
                eval_dataset = None  # unlabeled text: the evaluator measures it, no eval loss to compute
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         loss=loss, evaluator=evaluator, **kwargs)

    # -- what is pruned and what measures it --------------------------------------------------------------
    @property
    def pruned_model(self):
        return self.model[0].auto_model

    def _has_decision_data(self) -> bool:
        return self.eval_dataset is not None or self.evaluator is not None

    def _setup_pruning(self) -> None:
        self._steer_by_evaluator = self.args.pruning_metric == EVALUATOR_METRIC
        if self._steer_by_evaluator and self.evaluator is None:
            raise ValueError("--pruning_metric evaluator needs an evaluator or an eval_dataset of sentences "
                             "(teacher agreement); or set --pruning_metric loss with a labelled eval_dataset")
        super()._setup_pruning()
        if self._steer_by_evaluator:
            self.controller.greater_is_better = bool(getattr(self.evaluator, "greater_is_better", True))
        else:
            self.controller.greater_is_better = metric_greater_is_better(self.pruning_metric)

    def _default_compute_metrics(self, name: str):
        return None  # sentence-transformers measures through evaluators, not compute_metrics

    def _decision_dataset(self):
        return None if self.eval_dataset is None else super()._decision_dataset()

    def _decision_metric(self) -> float:
        if not self._steer_by_evaluator:
            return super()._decision_metric()
        metrics = self.evaluate(eval_dataset=self._decision_dataset())
        # Some evaluators (information retrieval, sequential) name their primary metric only once they
        # have run, and every evaluator prefixes it with its name then: read it after the call.
        primary = getattr(self.evaluator, "primary_metric", None)
        if not primary or f"eval_{primary}" not in metrics:
            raise KeyError(f"{type(self.evaluator).__name__} returned no primary metric ({primary!r}); name the key "
                           f"that steers with --pruning_metric; available: "
                           f"{sorted(k[len('eval_'):] for k in metrics if k.startswith('eval_'))}")
        self.pruning_metric, self.metric_key = primary, f"eval_{primary}"
        return float(metrics[self.metric_key])

    def _check_metric_available(self) -> None:
        if self._steer_by_evaluator:
            return  # the evaluator's own primary metric, checked at the reference measurement
        if self.eval_dataset is not None and self.pruning_metric == "loss":
            return super()._check_metric_available()
        metrics = self.evaluate(eval_dataset=self._decision_dataset())
        if self.metric_key not in metrics:
            raise KeyError(f"--pruning_metric {self.pruning_metric!r}: evaluation returns no {self.metric_key!r}; "
                           f"available: {sorted(k for k in metrics if k.startswith('eval_'))}")

    # -- saving -----------------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints keep dense weights (masks in pruning_state.pt); the final save is a pruned ST folder."""
        if getattr(self, "_saving_checkpoint", False):
            return SentenceTransformerTrainer.save_model(self, output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        model = copy.deepcopy(self.model)  # keep the in-memory model trainable: compact a copy
        save_pruned_sentence_transformer(model, output_dir, card=sentence_transformer_card(self.pruning_summary()))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def create_model_card(self, *args, **kwargs) -> None:
        if not self.is_world_process_zero():
            return
        summary = self.pruning_summary()
        summary["dataset"] = kwargs.get("dataset") or summary["dataset"]
        summary["model_name"] = kwargs.get("model_name") or summary["model_name"]
        with open(os.path.join(self.args.output_dir, "README.md"), "w") as f:
            f.write(sentence_transformer_card(summary))


def _agreement_evaluator(model: SentenceTransformer, eval_dataset, batch_size: int) -> TeacherAgreementEvaluator:
    """Teacher agreement on the eval set's sentences (all its text columns, up to AGREEMENT_SENTENCES)."""
    columns = [c for c in eval_dataset.column_names if c not in ("label", "score")]
    sentences = []
    for column in columns:
        sentences += [s for s in eval_dataset[column] if isinstance(s, str)]
    if not sentences:
        text_column(eval_dataset)  # raises with what to pass
    sentences = list(dict.fromkeys(sentences))[:AGREEMENT_SENTENCES]
    return TeacherAgreementEvaluator(sentences, teacher=model, batch_size=batch_size)
