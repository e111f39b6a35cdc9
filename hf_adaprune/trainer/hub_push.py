"""The trainers' Hub pushes: the pruned model only, at the end, with its card as the repo's ``README.md``.

A checkpoint holds dense weights under masks, without their pruning record: no checkpoint is pushed while training
(:meth:`PruningTrainerMixin._push_from_checkpoint`), whatever ``hub_strategy`` says, also one set after the
arguments were built (``TrainingArguments.set_push_to_hub``). Beside a ``README.md`` of the user's own the card is
written as ``CARD_BESIDE_USER_README``; a push uploads it as the repo's ``README.md`` and leaves theirs local
(:func:`card_as_repo_readme`), as the recipes' push does.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

from .report import CARD_BESIDE_USER_README, is_user_readme


def without_hub_token(args):
    """``args`` as ``training_args.bin`` of a saved folder holds them: without ``hub_token``, since the folder goes
    up to the Hub on a push (a write token in a public repo's file)."""
    if getattr(args, "hub_token", None) is None:
        return args
    safe = copy.copy(args)
    safe.hub_token = None
    return safe


def folder_files(folder: str | os.PathLike, ignore_patterns) -> list[str]:
    """The files of ``folder`` (relative, ``/``-separated) that ``upload_folder`` would upload with
    ``ignore_patterns`` (and the Hub client's own: ``.git``, its cache)."""
    from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
    from huggingface_hub.utils import filter_repo_objects

    ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
    root = Path(folder)
    paths = sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS))


def card_as_readme_operations(folder: str | os.PathLike, paths: list[str]) -> list:
    """The commit's additions of ``paths`` (relative to ``folder``): a card written beside a user's README.md
    (``CARD_BESIDE_USER_README``) goes up as the repo's README.md, and theirs is left out."""
    from huggingface_hub import CommitOperationAdd

    beside = CARD_BESIDE_USER_README in paths
    return [CommitOperationAdd(path_in_repo="README.md" if path == CARD_BESIDE_USER_README else path,
                               path_or_fileobj=os.path.join(folder, path))
            for path in paths if not (beside and path == "README.md")]


@contextlib.contextmanager
def card_as_repo_readme(output_dir: str):
    """While ``Trainer.push_to_hub`` runs: where ``output_dir`` holds a README.md of the user's own, its upload of the
    folder becomes one commit in which the card written beside it is the repo's README.md and theirs stays local."""
    import transformers.trainer as stock

    if not is_user_readme(os.path.join(output_dir, "README.md")):
        yield
        return
    make_api = stock.hf_api

    class CardAsReadme:
        def __init__(self, api):
            self._api = api

        def __getattr__(self, name):
            return getattr(self._api, name)

        def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, commit_message=None, token=None,
                          revision=None, run_as_future=False, **kwargs):
            operations = card_as_readme_operations(folder_path, folder_files(folder_path, ignore_patterns))
            return self._api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message,
                                           token=token, revision=revision, run_as_future=run_as_future)

    stock.hf_api = lambda: CardAsReadme(make_api())
    try:
        yield
    finally:
        stock.hf_api = make_api
