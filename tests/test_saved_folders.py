"""Folders saved by earlier versions (``tests/fixtures/pruned_folders``, written at commit df60907) still load.

Each folder's outputs on its stored input must match the masked model's outputs stored with it (<= 1e-5),
through ``AutoPrunedModel`` and through stock transformers with ``trust_remote_code`` where hf_adaprune is
not importable (the folder's own ``modeling_adaprune.py`` then does the work).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_adaprune import AutoPrunedModel

from conftest import one_thread_env

FOLDERS = Path(__file__).resolve().parent / "fixtures" / "pruned_folders"
AUTO_CLASS = {"bert": "AutoModelForSequenceClassification", "t5": "AutoModelForSeq2SeqLM", "wavlm": "AutoModelForCTC"}
TOL = 1e-5


def _io(name):
    io = load_file(str(FOLDERS / f"{name}.io.safetensors"))
    return {k: v for k, v in io.items() if k != "expected_logits"}, io["expected_logits"]


@pytest.mark.parametrize("name", sorted(AUTO_CLASS))
def test_old_folder_loads_with_hf_adaprune(name):
    batch, expected = _io(name)
    model = AutoPrunedModel.from_pretrained(FOLDERS / name).eval()
    with torch.no_grad():
        got = model(**batch).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= TOL


def test_old_folders_load_with_stock_transformers(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_adaprune"] = None  # make the package unimportable
        import torch, transformers
        from safetensors.torch import load_file
        for name, auto in {AUTO_CLASS!r}.items():
            io = load_file({str(FOLDERS)!r} + f"/{{name}}.io.safetensors")
            expected = io.pop("expected_logits")
            model = getattr(transformers, auto).from_pretrained({str(FOLDERS)!r} + "/" + name,
                                                                trust_remote_code=True).eval()
            assert "hf_adaprune" not in type(model).__module__
            with torch.no_grad():
                diff = (model(**io).logits - expected).abs().max().item()
            print(name, "maxdiff", diff)
            assert diff <= {TOL}, (name, diff)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=one_thread_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("maxdiff") == 3
