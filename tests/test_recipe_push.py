"""--push_to_hub in the recipes: the repo is reached before any work; one commit, once the run is done, of what the
run wrote, without the dense control's model or the files the user had in the output folder."""

from __future__ import annotations

import json

import pytest

from test_recipe_dense_control import recipe, run_args, workspace  # noqa: F401 (a fixture)


def test_the_push_happens_once_at_the_end_with_results_card_and_deploy_but_not_the_control(workspace, tmp_path,
                                                                                          fake_hub):  # noqa: F811
    out = tmp_path / "out"
    recipe.main(run_args(workspace, out, "--dense_control", "true", "--quantize", "int8", "--push_to_hub", "true",
                         "--hub_model_id", "me/pruned", "--hub_token", "x"))
    assert len(fake_hub) == 1, [c["files"] for c in fake_hub]
    commit = fake_hub[0]
    assert commit["repo_id"] == "me/pruned"
    files = commit["files"]
    assert {"config.json", "model.safetensors", "modeling_adaprune.py", "README.md", "results.json",
            "test_results.json"} <= set(files), files
    assert any(f.startswith("deploy/") for f in files), files
    assert not any(f.startswith("dense_control/") for f in files), files
    assert (out / "dense_control" / "model.safetensors").exists()  # the control stays local
    assert "adaprune" in json.loads((out / "config.json").read_text())
    assert "control" in commit["card"].lower() and commit["card"] == (out / "README.md").read_text()
    # named after the repo, as the trainer's push names it (it was the local folder's name, "out")
    assert "\n# pruned\n" in commit["card"] and "# out\n" not in commit["card"]
    # --hub_token x is not in the training_args.bin that went up with the folder
    assert "training_args.bin" in files and b"hub_token" in (out / "training_args.bin").read_bytes()
    import torch

    assert torch.load(out / "training_args.bin", weights_only=False).hub_token is None


def test_files_the_user_had_in_the_output_folder_stay_local_and_the_card_is_the_repos_readme(workspace, tmp_path,
                                                                                          fake_hub, caplog):  # noqa: F811
    """The whole folder was uploaded: the user's notes, their README.md as the repo's card, an earlier run's
    deploy/ the run had warned about."""
    out = tmp_path / "out"
    (out / "deploy" / "onnx").mkdir(parents=True)
    (out / "deploy" / "onnx" / "model.onnx").write_bytes(b"an earlier run's graph")
    (out / "my_private_notes.txt").write_text("not for the Hub")
    (out / "README.md").write_text("# My own notes about this folder\n")
    recipe.main(run_args(workspace, out, "--overwrite_output_dir", "true", "--push_to_hub", "true",
                         "--hub_model_id", "me/pruned", "--hub_token", "x"))
    (commit,) = fake_hub
    assert "my_private_notes.txt" not in commit["files"] and not any(f.startswith("deploy/") for f in commit["files"])
    assert {"model.safetensors", "results.json", "README.md"} <= set(commit["files"])
    assert "README.hf_adaprune.md" not in commit["files"]
    assert commit["card"] == (out / "README.hf_adaprune.md").read_text() and "hf_adaprune" in commit["card"]
    assert (out / "README.md").read_text() == "# My own notes about this folder\n"  # left as it was
    assert "my_private_notes.txt" in caplog.text and "not pushed, as they were in" in caplog.text


def test_a_hub_repo_that_cannot_be_reached_fails_before_the_data_is_loaded(workspace, tmp_path, monkeypatch):  # noqa: F811
    import transformers.trainer
    from huggingface_hub import constants

    from recipes.arguments import RecipeError

    class Unreachable:
        def create_repo(self, repo_id, **kwargs):
            raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: Unreachable())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match=r"--push_to_hub: the Hub repo 'me/pruned' could not be created or reached "
                                          r"\(ConnectionError: \[Errno -3\] Temporary failure in name resolution\)"):
        recipe.main(run_args(workspace, out, "--push_to_hub", "true", "--hub_model_id", "me/pruned"))
    assert not out.exists() or not any(out.iterdir())


def test_a_users_readme_edited_during_the_run_stays_local_beside_the_card(tmp_path, fake_hub):
    """Both the user's README.md (changed since the run began) and the card beside it would have gone to the repo's
    README.md in one commit."""
    from types import SimpleNamespace

    from recipes.hub_push import folder_state, push_run_outputs

    (tmp_path / "README.md").write_text("# mine\n")
    before = folder_state(tmp_path)
    (tmp_path / "README.md").write_text("# mine, edited while the run trained\n")
    (tmp_path / "README.hf_adaprune.md").write_text("---\ntags: [hf_adaprune]\n---\n# the card\n")
    (tmp_path / "config.json").write_text("{}")
    trainer = SimpleNamespace(is_world_process_zero=lambda: True, _finish_current_push=lambda: None,
                              hub_model_id="me/pruned")
    args = SimpleNamespace(output_dir=str(tmp_path), hub_token=None, hub_revision=None)
    assert push_run_outputs(trainer, args, before) == ["README.md", "config.json"]
    (commit,) = fake_hub
    assert commit["card"] == "---\ntags: [hf_adaprune]\n---\n# the card\n"


def test_a_second_push_to_the_repo_deletes_the_earlier_runs_outputs_it_does_not_replace(workspace, tmp_path,
                                                                                      fake_hub):  # noqa: F811
    """Two runs to one --hub_model_id, the first with --quantize int8: the repo kept the first run's deploy/int8 (a
    model of another structure) beside the second run's model. A file of the user's own in the repo stays."""
    recipe.main(run_args(workspace, tmp_path / "first", "--quantize", "int8", "--push_to_hub", "true",
                         "--hub_model_id", "me/pruned"))
    first = fake_hub[0]
    assert any(path.startswith("deploy/int8/") for path in first["files"])
    import transformers.trainer
    from huggingface_hub import CommitOperationAdd

    (tmp_path / "notes.md").write_text("the user's own upload")
    own = ["notes.md", "adapters/lora/model.safetensors", "experiments/eval_results.json"]  # files of run names too
    transformers.trainer.hf_api().create_commit("me/pruned", [CommitOperationAdd(path, str(tmp_path / "notes.md"))
                                                              for path in own])
    recipe.main(run_args(workspace, tmp_path / "second", "--push_to_hub", "true", "--hub_model_id", "me/pruned"))
    second = fake_hub[2]
    assert second["deleted"] == sorted(path for path in first["files"] if path.startswith("deploy/"))
    assert not any(path.startswith("deploy/") for path in second["repo"])
    assert {"config.json", "model.safetensors", "README.md", *own} <= set(second["repo"])
