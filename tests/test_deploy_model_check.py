"""Every deploy function that takes a model refuses anything else (a saved folder's path above all) with one
TypeError that says to load it first, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_adaprune import save_pruned
from hf_adaprune.deploy import export_onnx, prune_positions, prune_vocabulary, quantize_int8, save_int8

from conftest import tiny_model

CALLS = {
    "save_int8": lambda model, tmp_path: save_int8(model, tmp_path / "int8"),
    "quantize_int8": lambda model, tmp_path: quantize_int8(model),
    "prune_positions": lambda model, tmp_path: prune_positions(model, 16),
    "prune_vocabulary": lambda model, tmp_path: prune_vocabulary(model, None, ["a film"]),
    "export_onnx": lambda model, tmp_path: export_onnx(model, tmp_path / "onnx"),
}


@pytest.mark.parametrize("function", list(CALLS))
@pytest.mark.parametrize("as_type", [str, Path])
def test_a_folder_given_for_the_model_is_refused_with_how_to_load_it(function, as_type, tmp_path):
    if function == "export_onnx":
        pytest.importorskip("onnx")
    folder = tmp_path / "pruned"
    save_pruned(tiny_model("bert"), folder)
    with pytest.raises(TypeError, match=rf"^{function} takes a transformers model \(PreTrainedModel\); got "
                                        rf"{as_type(folder).__class__.__name__}\. Load the folder first: "
                                        r"hf_adaprune\.AutoPrunedModel\.from_pretrained\(folder\)"):
        CALLS[function](as_type(folder), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # nothing written
