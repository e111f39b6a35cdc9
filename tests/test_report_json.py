"""write_json: strict JSON for what runs put in their results (records, tensors, numpy values)."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from hf_adaprune.reporting.report import write_json


def test_write_json_keeps_arrays_ints_and_bools_of_torch_and_numpy(tmp_path):
    """A numpy array or a tensor of several elements crashed write_json, and np.int64(3) was written as 3.0."""
    path = tmp_path / "results.json"
    write_json(path, {
        "step": np.int64(3), "rows": torch.tensor(7), "kept": np.bool_(True), "mask": torch.tensor([True, False]),
        "f1_per_class": np.array([0.5, 0.75]), "confusion": np.array([[3, 1], [0, 2]], dtype=np.int32),
        "heads": torch.tensor([[1.0, 0.0], [0.5, float("nan")]]), "loss": torch.tensor(0.5),
        "score": np.float32(0.25), "bad": np.float64("inf")})
    text = path.read_text()
    data = json.loads(text)
    assert data == {"step": 3, "rows": 7, "kept": True, "mask": [True, False], "f1_per_class": [0.5, 0.75],
                    "confusion": [[3, 1], [0, 2]], "heads": [[1.0, 0.0], [0.5, None]], "loss": 0.5, "score": 0.25,
                    "bad": None}
    assert isinstance(data["step"], int) and isinstance(data["rows"], int) and isinstance(data["kept"], bool)
    assert '"step": 3,' in text and "NaN" not in text and "Infinity" not in text
    assert all(isinstance(v, int) for row in data["confusion"] for v in row)
    assert math.isclose(data["score"], 0.25)
