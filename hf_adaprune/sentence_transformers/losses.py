"""Label-free objective: distil the dense model's sentence embeddings into the model being pruned.

The teacher embeddings are computed once, before pruning, by the dense model itself
(:func:`with_teacher_embeddings`), and stored in the ``label`` column the way sentence-transformers'
distillation losses expect; the loss compares them with the student's by MSE and/or cosine distance.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import EmbedDistillLoss

from .evaluation import encode

DISTANCES = ("mse", "cosine")


class EmbeddingDistillationLoss(torch.nn.Module):
    """Weighted sum of sentence-transformers' ``EmbedDistillLoss`` for each distance with a weight > 0.

    MSE matches the embeddings themselves (scale included); cosine matches their directions, which is
    all that a cosine-similarity search reads. On normalised 384-d embeddings MSE is ~1/200 of the
    cosine distance, so weigh it up if it is to count.
    """

    def __init__(self, model: SentenceTransformer, mse_weight: float = 1.0, cosine_weight: float = 1.0):
        super().__init__()
        weights = {"mse": mse_weight, "cosine": cosine_weight}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"distillation weights must be >= 0 with at least one > 0; got {weights}")
        self.model = model
        self.weights = {name: w for name, w in weights.items() if w > 0}
        self.losses = torch.nn.ModuleDict({name: EmbedDistillLoss(model, distance_metric=name) for name in self.weights})

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for name, weight in self.weights.items():
            loss = self.losses[name]
            loss.model = self.model  # the trainer may have swapped in a wrapped model
            total = total + weight * loss(sentence_features, labels)
        return total


def distillation_distances(distance: str) -> set[str]:
    """The distances ``"mse"``, ``"cosine"`` or ``"mse+cosine"`` names; anything else is refused."""
    names = {part.strip() for part in distance.split("+")}
    if not names or not names <= set(DISTANCES):
        raise ValueError(f"distillation distance must be mse, cosine or mse+cosine; got {distance!r}")
    return names


def embedding_distillation_loss(model: SentenceTransformer, distance: str = "mse+cosine") -> EmbeddingDistillationLoss:
    """``"mse"``, ``"cosine"`` or ``"mse+cosine"`` (equal weights) as a loss module."""
    names = distillation_distances(distance)
    return EmbeddingDistillationLoss(model, mse_weight=float("mse" in names), cosine_weight=float("cosine" in names))


def text_column(dataset: Dataset) -> str:
    """The one text column of an unlabeled dataset; anything else is an error that says what to pass."""
    columns = [c for c in dataset.column_names if c != "label"]
    if len(columns) != 1:
        raise ValueError(
            f"label-free distillation reads one text column; this dataset has {dataset.column_names}. "
            "Keep one column of sentences (dataset.select_columns([...])) or pass a sentence-transformers loss."
        )
    return columns[0]


def with_teacher_embeddings(dataset: Dataset, teacher: SentenceTransformer, batch_size: int = 64,
                            prompt: str = "") -> Dataset:
    """``dataset`` (one text column) with a ``label`` column holding ``teacher``'s embedding of each row, as the
    training forward computes it: full width (not cut to ``truncate_dim``), after ``prompt`` (the one the
    training arguments' ``prompts`` give this column; not the model's ``default_prompt_name``, which training
    does not apply)."""
    column = text_column(dataset)
    embeddings = encode(teacher, list(dataset[column]), batch_size, as_trained=True, prompt=prompt)
    return dataset.select_columns([column]).add_column("label", embeddings.numpy().tolist())
