"""Typed records of a pruning run: what the model card, the JSON report, the plots and the recipes read.

Each record is a dataclass with ``to_dict()`` giving the JSON keys ``pruning_report.json``
has always had, and ``from_dict()`` reading them back. Records also read like the dicts
they replaced (``summary["metric_before"]`` is ``summary.to_dict()["metric_before"]``),
so code written against the dicts keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class _ReadsLikeADict(Mapping):
    """``record[key]`` / ``record.get(key)`` / ``dict(record)`` read :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def _field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def __getitem__(self, key: str) -> Any:
        if key not in self._field_names():
            raise KeyError(key)
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())


@dataclass
class LayerComparison(_ReadsLikeADict):
    """One layer before and after pruning (heads / FFN width are None where the layer has none)."""

    layer: str
    heads_before: int | None
    heads_after: int | None
    ffn_before: int | None
    ffn_after: int | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int


@dataclass
class ProfileComparison(_ReadsLikeADict):
    """Whole-model and per-layer parameter and FLOP counts before and after, with the fractions removed."""

    seq_len: int
    params_before: int
    params_after: int
    params_removed: float
    flops_before: int
    flops_after: int
    flops_removed: float
    layer_flops_before: int
    layer_flops_after: int
    layer_flops_removed: float
    layers: list[LayerComparison] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileComparison:
        values = {k: data[k] for k in cls._field_names() if k != "layers"}
        return cls(**values, layers=[LayerComparison(**row) for row in data.get("layers", [])])


@dataclass
class PruningSummary(_ReadsLikeADict):
    """What a pruning run did: its settings, the metric before/after, every decision, the kept structure."""

    base_model: str | None
    dataset: str | list[str] | None
    model_name: str
    criterion: str
    metric_name: str
    metric_key: str
    greater_is_better: bool
    metric_before: float | None
    metric_after: float | None
    tolerance: float
    tolerance_type: str
    target: float
    target_type: str
    final_sparsity: float
    stop_reason: str | None
    decisions: list[dict] = field(default_factory=list)
    groups: dict[str, dict] = field(default_factory=dict)
    comparison: ProfileComparison | None = None
    schedule: str = "gradual"
    final_check: dict | None = None  # the final model's metric vs the tolerance, measured after training
    structures: str = "heads,ffn"  # what --prune named (heads, ffn, layers)
    removed_layers: list[str] = field(default_factory=list)  # named by their index in the dense model
    start_pruned: bool = False  # the run started from a model pruned before: "before" figures are of that model
    # the run distilled from a teacher while pruning: alpha, temperature, hidden_weight, teacher, and until_step
    # where a resume without distillation ended it (None: no teacher ran)
    distillation: dict | None = None
    # the rows the decisions' metric was measured on (the first --pruning_eval_samples), and the eval set's rows
    eval_rows: int | None = None
    eval_set_rows: int | None = None
    eval_unit: str = "rows"  # what they count: rows, or the distinct sentences a sentence-embedding agreement reads
    # grouped-query attention (Llama, Qwen2, ...): the query heads of each key/value group, the structure a heads row
    # counts (1: a head)
    queries_per_key: int = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningSummary:
        # reports written before schedule / final_check existed read with their defaults
        values = {k: data[k] for k in cls._field_names() if k != "comparison" and k in data}
        comparison = data.get("comparison")
        return cls(**values, comparison=None if comparison is None else ProfileComparison.from_dict(comparison))
