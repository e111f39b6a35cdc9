"""Pruning sentence-embedding models: ``SentenceTransformer`` in, a complete ``SentenceTransformer`` folder out.

Needs ``sentence-transformers`` (``pip install sentence-transformers``); the rest of hf_adaprune does not.

- :class:`AdaptivePruningSentenceTransformerTrainer` (``trainer.py``): the pruning mixin over
  ``SentenceTransformerTrainer``; prunes the transformer module (``model[0].auto_model``).
- :func:`embedding_distillation_loss`, :func:`with_teacher_embeddings` (``losses.py``): the label-free objective.
- :class:`TeacherAgreementEvaluator` (``evaluation.py``): the default steering metric.
- :func:`save_pruned_sentence_transformer`, :func:`load_pruned_sentence_transformer` (``hub.py``).
"""

from .arguments import SentenceTransformerPruningArguments
from .evaluation import TeacherAgreementEvaluator
from .hub import load_pruned_sentence_transformer, save_pruned_sentence_transformer, sentence_transformer_card
from .losses import EmbeddingDistillationLoss, embedding_distillation_loss, with_teacher_embeddings
from .modules import transformer_module
from .trainer import AdaptivePruningSentenceTransformerTrainer

__all__ = [
    "AdaptivePruningSentenceTransformerTrainer",
    "EmbeddingDistillationLoss",
    "SentenceTransformerPruningArguments",
    "TeacherAgreementEvaluator",
    "embedding_distillation_loss",
    "load_pruned_sentence_transformer",
    "save_pruned_sentence_transformer",
    "sentence_transformer_card",
    "transformer_module",
    "with_teacher_embeddings",
]
