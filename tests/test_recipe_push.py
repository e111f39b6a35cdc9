"""--push_to_hub in the recipes: one upload, once the run is done, without the dense control's model."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from types import SimpleNamespace

from test_recipe_dense_control import recipe, run_args, workspace  # noqa: F401 (a fixture)


def test_the_push_happens_once_at_the_end_with_results_card_and_deploy_but_not_the_control(workspace, tmp_path,
                                                                                          monkeypatch):  # noqa: F811
    import transformers.trainer
    from huggingface_hub import constants

    uploads = []

    class FakeApi:  # no network: what would be uploaded, recorded at the time of the upload
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
            folder = Path(folder_path)
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            sent = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in ignore_patterns)]
            uploads.append({"repo_id": repo_id, "files": sent, "card": (folder / "README.md").read_text()})
            return SimpleNamespace(commit_url="local", oid="0")

        def whoami(self, *args, **kwargs):
            return {"name": "me"}

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests run offline; the Hub here is the fake
    out = tmp_path / "out"
    recipe.main(run_args(workspace, out, "--dense_control", "true", "--quantize", "int8", "--push_to_hub", "true",
                         "--hub_model_id", "me/pruned", "--hub_token", "x"))
    assert len(uploads) == 1, [u["files"] for u in uploads]
    upload = uploads[0]
    assert upload["repo_id"] == "me/pruned"
    files = upload["files"]
    assert {"config.json", "model.safetensors", "modeling_adaprune.py", "README.md", "results.json",
            "test_results.json"} <= set(files), files
    assert any(f.startswith("deploy/") for f in files), files
    assert not any(f.startswith("dense_control/") for f in files), files
    assert (out / "dense_control" / "model.safetensors").exists()  # the control stays local
    assert "adaprune" in json.loads((out / "config.json").read_text())
    assert "control" in upload["card"].lower() and upload["card"] == (out / "README.md").read_text()
