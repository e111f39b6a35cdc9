"""Teacher agreement: how close a pruned model's embeddings stay to the dense model's, on any sentences.

The steering metric when no sentence-transformers evaluator is given: it needs no labels, only text,
and the dense embeddings are computed once, before any pruning.
"""

from __future__ import annotations

import contextlib

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from ..modes import restore_modes, training_modes


class TeacherAgreementEvaluator(SentenceEvaluator):
    """Mean cosine similarity between the model's embeddings and fixed teacher embeddings of ``sentences``.

    ``teacher_embeddings``: one row per sentence; or pass ``teacher`` (a model, typically the dense
    model before pruning) to compute them now; or neither, and :meth:`set_teacher` before the first call
    (the pruning trainer does so once its checks pass). Returns ``{name}_mean_cosine`` (primary, higher
    is better) and ``{name}_min_cosine``.
    """

    def __init__(self, sentences: list[str], teacher_embeddings: torch.Tensor | None = None,
                 teacher: SentenceTransformer | None = None, name: str = "teacher", batch_size: int = 64):
        super().__init__()
        if teacher_embeddings is not None and teacher is not None:
            raise ValueError("pass one of teacher_embeddings and teacher, not both")
        self.sentences = list(sentences)
        if not self.sentences:
            raise ValueError("TeacherAgreementEvaluator needs at least one sentence")
        self.name = name
        self.batch_size = batch_size
        self.teacher_embeddings = None
        if teacher is not None:
            self.set_teacher(teacher)
        elif teacher_embeddings is not None:
            if len(teacher_embeddings) != len(self.sentences):
                raise ValueError(f"{len(teacher_embeddings)} teacher embeddings for {len(self.sentences)} sentences")
            self.teacher_embeddings = torch.as_tensor(teacher_embeddings).float().cpu()
        self.greater_is_better = True
        self.primary_metric = f"{name}_mean_cosine" if name else "mean_cosine"

    def set_teacher(self, teacher: SentenceTransformer) -> None:
        """Compute the teacher embeddings of the sentences with ``teacher`` (typically the dense model)."""
        self.teacher_embeddings = encode(teacher, self.sentences, self.batch_size)

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        if self.teacher_embeddings is None:
            raise RuntimeError("TeacherAgreementEvaluator has no teacher embeddings: pass teacher_embeddings or "
                               "teacher, or call set_teacher(dense_model) before evaluating")
        embeddings = encode(model, self.sentences, self.batch_size)
        cosine = torch.nn.functional.cosine_similarity(embeddings, self.teacher_embeddings, dim=-1)
        metrics = {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict:
        return {"sentences": len(self.sentences)}


def encode(model: SentenceTransformer, sentences: list[str], batch_size: int = 64, as_trained: bool = False,
           prompt: str = "") -> torch.Tensor:
    """Embeddings of ``sentences`` as a float32 CPU tensor, in eval mode (no dropout), training mode restored.

    ``as_trained``: as the training forward computes them: with ``prompt`` (what the trainer's ``prompts`` put
    before these sentences; the model's ``default_prompt_name`` is not applied) and not cut to ``truncate_dim``.
    """
    modes = training_modes(model)
    options = {"prompt": prompt} if as_trained else {}
    try:
        with model.truncate_sentence_embeddings(None) if as_trained else contextlib.nullcontext():
            embeddings = model.encode(sentences, batch_size=batch_size, convert_to_tensor=True,
                                      show_progress_bar=False, **options)
    finally:
        restore_modes(modes)
    return embeddings.float().cpu().clone()  # a clone is a normal tensor, usable in autograd (encode's is not)
