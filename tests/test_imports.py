"""``import hf_adaprune`` loads torch and transformers, not the metric, data or plotting libraries."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import one_thread_env

# soundfile is left out: transformers itself imports it (processing_utils) once peft is installed.
HEAVY = ("sklearn", "evaluate", "datasets", "matplotlib", "sacrebleu", "jiwer", "onnx", "onnxruntime")


def test_import_leaves_heavy_libraries_unloaded():
    code = ("import sys, json, hf_adaprune; hf_adaprune.PruningArguments; hf_adaprune.AutoPrunedModel; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=one_thread_env(),
                         timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_trainers_load_on_first_use():
    code = "import hf_adaprune; print(hf_adaprune.AdaptivePruningTrainer.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=one_thread_env(),
                         timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "AdaptivePruningTrainer"


def test_every_public_name_is_listed_and_importable():
    """``dir()`` offers the lazily loaded names too (tab completion), and every name of ``__all__`` imports."""
    import hf_adaprune

    assert set(hf_adaprune.__all__) <= set(dir(hf_adaprune))
    assert {"AdaptivePruningTrainer", "post_training_prune", "export_onnx", "filter_groups"} <= set(dir(hf_adaprune))
    # each name, the lazily loaded ones through the module each is loaded from, is the object of that name
    public = {name: getattr(hf_adaprune, name) for name in hf_adaprune.__all__}
    assert {name: getattr(value, "__name__", name) for name, value in public.items()} == {n: n for n in public}
    star: dict = {}
    exec("from hf_adaprune import *", star)
    star.pop("__builtins__")
    assert star.keys() == public.keys() and all(star[name] is public[name] for name in public)
