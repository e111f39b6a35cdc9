"""``--push_to_hub`` in the recipes: the Hub repo is reached before any work, and one commit at the end of the run
uploads what the run wrote into ``OUTPUT_DIR``.

Files that were in the folder before the run (a user's notes, their own ``README.md``, an earlier run's
``deploy/``) stay local: the recipe's model card, written beside a ``README.md`` of the user's own as
``README.hf_adaprune.md``, is the repo's ``README.md``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path

import transformers

from hf_adaprune.trainer.hub_push import card_as_readme_operations
from hf_adaprune.trainer.report import CARD_BESIDE_USER_README

from .arguments import EARLIER_RUN_FILES

logger = logging.getLogger(__name__)

NEVER_PUSHED = ("_*", "checkpoint-*")  # the distillation teacher's copy, the Trainer's checkpoints
# what a recipe run writes into the repo: an earlier push's files of these names that this run did not write (its
# deploy/int8 beside another structure, a weight shard of more files) are deleted in the same commit. Top-level
# files only (a user's adapters/ or onnx/ folder in the repo is theirs), and deploy/, which the recipes write whole
RUN_OUTPUTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
               "modeling_adaprune.py", *EARLIER_RUN_FILES)
RUN_FOLDERS = ("deploy/",)


def folder_state(folder: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Each file under ``folder`` (relative path, ``/``-separated) with its modification time and size."""
    root = Path(folder)
    if not root.is_dir():
        return {}
    return {path.relative_to(root).as_posix(): (stat.st_mtime_ns, stat.st_size)
            for path in root.rglob("*") if path.is_file() for stat in (path.stat(),)}


def reach_hub_repo(training_args) -> None:
    """Create (or find) the Hub repo ``--push_to_hub`` will upload to, once the arguments and the output folder
    passed their checks and before the data and the model are loaded: no network or no write access fails here,
    not after training. The main process records its id in ``--hub_model_id``."""
    from .arguments import RecipeError

    if not training_args.push_to_hub or training_args.process_index != 0:
        return
    name = training_args.hub_model_id or Path(training_args.output_dir).absolute().name
    try:
        repo = transformers.trainer.hf_api().create_repo(name, token=training_args.hub_token,
                                                         private=training_args.hub_private_repo, exist_ok=True)
    except Exception as err:  # no network, no token, no write access: whatever the Hub client raises
        raise RecipeError(f"--push_to_hub: the Hub repo {name!r} could not be created or reached ({type(err).__name__}"
                          f": {err}); check the network and --hub_token (or `hf auth login`), or leave --push_to_hub "
                          "off and push the saved folder later") from err
    training_args.hub_model_id = repo.repo_id


def stale_repo_files(repo_id: str, training_args, pushed: set[str]) -> list:
    """Delete operations for the repo's files an earlier run wrote (``RUN_OUTPUTS``) that this push does not
    replace; the repo's other files (a user's own uploads) stay. A repo that cannot be listed: none."""
    from huggingface_hub import CommitOperationDelete

    try:
        present = transformers.trainer.hf_api().list_repo_files(repo_id, token=training_args.hub_token,
                                                                revision=training_args.hub_revision)
    except Exception as err:  # a repo just created, an older client: nothing to delete
        logger.info("the files of %s could not be listed (%s: %s); no earlier run's outputs are deleted", repo_id,
                    type(err).__name__, err)
        return []
    stale = sorted(path for path in present if path not in pushed and (
        path.startswith(RUN_FOLDERS) or "/" not in path and any(fnmatch.fnmatch(path, name) for name in RUN_OUTPUTS)))
    if stale:
        logger.warning("deleted from %s: files of the names a recipe run writes that this run did not write (an "
                       "earlier run's): %s", repo_id,
                       ", ".join(stale[:10]) + (f" and {len(stale) - 10} more" if len(stale) > 10 else ""))
    return [CommitOperationDelete(path_in_repo=path) for path in stale]


def push_run_outputs(trainer, training_args, before: dict, left_local: tuple[str, ...] = ()) -> list[str]:
    """Upload, in one commit to the trainer's repo, the files of ``OUTPUT_DIR`` the run wrote (those not in
    ``before``, or changed since), except the checkpoints, ``_*`` folders and ``left_local`` patterns (baselines
    that stay local). The card written beside a user's ``README.md`` is the repo's ``README.md`` (the user's stays
    local, even if edited meanwhile). Returns the repo paths uploaded (main process; the others upload nothing)."""
    if not trainer.is_world_process_zero():
        return []
    trainer._finish_current_push()  # a push transformers may have started
    folder = Path(training_args.output_dir)
    written, kept_local = [], []
    for path, state in sorted(folder_state(folder).items()):
        if any(fnmatch.fnmatch(path, pattern) for pattern in NEVER_PUSHED + left_local):
            continue
        (written if before.get(path) != state else kept_local).append(path)
    if CARD_BESIDE_USER_README in written and "README.md" in written:  # the user's, edited during the run
        kept_local.append("README.md")
    operations = card_as_readme_operations(folder, written)
    operations += stale_repo_files(trainer.hub_model_id, training_args, {op.path_in_repo for op in operations})
    transformers.trainer.hf_api().create_commit(
        repo_id=trainer.hub_model_id, operations=operations, token=training_args.hub_token,
        commit_message="End of training: pruned model, card, results", revision=training_args.hub_revision)
    logger.info("pushed %d files of %s to the Hub repo %s", len(operations), folder, trainer.hub_model_id)
    if kept_local:
        logger.warning("not pushed, as they were in %s before this run: %s", folder, ", ".join(kept_local[:10])
                       + (f" and {len(kept_local) - 10} more" if len(kept_local) > 10 else ""))
    return sorted(operation.path_in_repo for operation in operations)
