"""Evaluation and ``predict()`` in dataset order, also with ``train_sampling_strategy="group_by_length"``.

transformers 5 uses its length-grouped sampler, which shuffles, for evaluation as well as
for training. Metrics computed from the label ids gathered with the predictions do not
notice; anything matched to the dataset by position does: raw reference texts scored
against ``predict()`` output, saved predictions. Mix this in before the ``Trainer``
class to keep training length-grouped and evaluation in order.
"""

from __future__ import annotations

from torch.utils.data import IterableDataset, SequentialSampler
from transformers.trainer_utils import has_length


class DatasetOrderEvalMixin:
    """``evaluate()`` / ``predict()`` read the dataset front to back (sharded across processes in order)."""

    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


def first_rows(dataset, n: int | None):
    """The first ``n`` rows of ``dataset`` (all of it if ``n`` is None or not smaller than its length).

    The one way the eval set is sliced: for each pruning decision and for the metric check before training. A dict
    of eval sets (sentence-transformers' multi-dataset evaluation) gives the first ``n`` rows of each.
    """
    if isinstance(dataset, dict):
        return type(dataset)({name: first_rows(part, n) for name, part in dataset.items()})
    if n is None or n >= len(dataset):
        return dataset
    if hasattr(dataset, "select"):
        return dataset.select(range(n))
    from torch.utils.data import Subset

    return Subset(dataset, range(n))


def is_map_style(dataset) -> bool:
    """Indexable with a length: not a streaming dataset (torch's IterableDataset, datasets' too), which cannot be
    indexed even when it reports a length."""
    import datasets

    return hasattr(dataset, "__len__") and not isinstance(dataset, (IterableDataset, datasets.IterableDataset))
