"""Save a pruned model as a folder that stock transformers loads.

The folder holds safetensors weights, ``config.json`` with the pruned record
(``adaprune``) and an ``auto_map`` pointing at ``modeling_adaprune.py`` (copied
here, self-contained), plus tokenizer / processor files when given.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..families.registry import check_transformers_model
from ..surgery import compact

logger = logging.getLogger(__name__)

# weight files transformers loads from a folder: a single file, shards and their index, in either format, with or
# without a variant (model.fp16.safetensors, model.fp16-00001-of-00002.safetensors, model.safetensors.index.fp16.json);
# and save_int8's (load_int8 would read an earlier model's int8 weights under the new config). Names only: a user's
# model_ema.safetensors or pytorch_model_teacher.bin, which no loader reads, stay.
WEIGHT_FILE = re.compile(r"(model|pytorch_model)(\.[^.\-/]+)?(-\d+-of-\d+)?\.(safetensors|bin)"
                         r"|(model\.safetensors|pytorch_model\.bin)\.index(\.[^./]+)?\.json"
                         r"|model_int8\.safetensors|int8\.json")  # save_int8's weights and record


def _weight_files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if path.is_file() and WEIGHT_FILE.fullmatch(path.name)}


def weight_variant(name: str) -> str | None:
    """The transformers variant a weight file holds ('' for the default, 'fp16' for model.fp16.safetensors or
    model.safetensors.index.fp16.json); None for save_int8's files."""
    match = WEIGHT_FILE.fullmatch(name)
    if match is None or not (match.group(1) or match.group(5)):
        return None
    return (match.group(2) or match.group(6) or ".")[1:]


def tensor_shapes(folder: Path, names) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape over the weight files ``names`` in ``folder`` (indexes skipped); None where one is not
    safetensors or cannot be read (its shapes are unknown)."""
    from safetensors import safe_open

    shapes = {}
    for name in names:
        if name.endswith(".json"):
            continue
        if not name.endswith(".safetensors"):
            return None
        try:
            with safe_open(str(folder / name), "pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except Exception:  # noqa: BLE001 - a file that cannot be read has unknown shapes
            return None
    return shapes


def _dangling_index(folder: Path, name: str) -> bool:
    """An index whose shards are not all in ``folder`` (transformers' own clean-up removes another variant's
    shards when it writes shards of its own), or that cannot be read."""
    try:
        shards = set(json.loads((folder / name).read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True
    return not all((folder / shard).is_file() for shard in shards)


def remove_stale_weight_files(folder: Path, unwritten: set[str], written_folder: Path, written: set[str]) -> None:
    """Remove the weight files of an earlier save in ``folder`` that this save did not rewrite (``unwritten``),
    which transformers would load instead of, or beside, the new ones: a single file where shards were written
    now, an index where one file was, save_int8's files. Files of another transformers variant (the fp32 weights
    beside a model.fp16.safetensors being written, now in ``written_folder``) stay where their tensors have the
    shapes of those written, as a stock save keeps them; of another structure they are removed, named in a warning,
    and so is an index whose shards are gone."""
    written = {name for name in written if WEIGHT_FILE.fullmatch(name)}
    variants = {weight_variant(name) for name in written}
    others: dict[str, list[str]] = {}
    replaced = []
    for name in sorted(unwritten):
        variant = weight_variant(name)
        if written and None not in variants and variant is not None and variant not in variants:
            others.setdefault(variant, []).append(name)
        else:
            (folder / name).unlink()
            replaced.append(name)
    if replaced:  # the user's own earlier weights, perhaps (a dense model's pytorch_model.bin): never silently
        logger.warning("removed %s from %s: weights an earlier save left there, which loaders would read instead of "
                       "(or beside) the model saved now", ", ".join(replaced), folder)
    removed, new_shapes = [], None
    for names in others.values():
        dangling = [name for name in names if name.endswith(".json") and _dangling_index(folder, name)]
        names = [name for name in names if name not in dangling]
        if names and all(name.endswith(".json") for name in names):  # an index without weights of its own
            dangling, names = dangling + names, []
        if names:
            new_shapes = tensor_shapes(written_folder, written) if new_shapes is None else new_shapes
            shapes = tensor_shapes(folder, names)
            if shapes is not None and new_shapes is not None and shapes != new_shapes:
                dangling += names
        for name in dangling:
            (folder / name).unlink()
        removed += dangling
    if removed:
        logger.warning("removed %s from %s: another variant's weights that no longer load beside the model saved "
                       "now (tensors of an earlier structure, or an index whose shards are gone)",
                       ", ".join(sorted(removed)), folder)


def weight_file_states(folder: str | os.PathLike) -> dict[str, tuple[int, int, int]]:
    """Name -> (inode, size, modification time) of ``folder``'s weight files ({} if the folder does not exist): a
    file a save rewrote has another state afterwards."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    states = {}
    for name in _weight_files(folder):
        stat = (folder / name).stat()
        states[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return states


def save_pruned(model, save_directory: str | os.PathLike, tokenizer=None, processor=None, **kwargs) -> Path:
    """Compact ``model`` (if it still has masks) and save it in the Hub format.

    Files are written to a temporary folder first and then moved into place one by
    one, so an interrupted save never leaves a half-written weights file behind. Weight
    files of an earlier save in the folder that this save does not write (a single file
    where shards are written now, or the other way round) are removed: transformers would
    load them instead.
    """
    if kwargs.pop("safe_serialization", True) is False:  # refused before compact, which changes the model
        raise ValueError("save_pruned writes safetensors only (transformers 5 saves no other format): leave "
                         "safe_serialization out")
    check_transformers_model(model, "save_pruned")
    check_save_request(save_directory, tokenizer=tokenizer, processor=processor)
    if any(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in model.modules()):
        raise ValueError("the model is int8 (quantize_int8 / save_int8 / load_int8 output), which transformers' "
                         "save_pretrained cannot write: save_int8(float_model, folder) writes the int8 folder, "
                         "load_int8(folder) reads it")
    check_tokenizer_fits(model, tokenizer, processor)
    compact(model)  # also gives the model a class whose save_pretrained writes the remote code and auto_map
    if not kwargs.get("is_main_process", True):  # as transformers: only the main process writes (nor removes) files
        return Path(save_directory)
    if kwargs.get("push_to_hub"):  # transformers names the repo after the folder it saves to: not the temporary one
        kwargs.setdefault("repo_id", Path(save_directory).name)

    extras = [extra for extra in (tokenizer, processor) if extra is not None]
    # the folder's own card: transformers' push writes the Hub's card (or a stub) over README.md before uploading;
    # the user's is uploaded instead and stays in the folder
    card = Path(save_directory) / "README.md"
    card = card.read_text() if kwargs.get("push_to_hub") and card.is_file() else None

    def write(folder: Path) -> None:
        # a push uploads at the end of save_pretrained, before the files below: they are written for it then
        model._adaprune_upload_extras = extras if kwargs.get("push_to_hub") else ()
        model._adaprune_upload_card = card
        try:
            model.save_pretrained(folder, **kwargs)
        finally:
            del model._adaprune_upload_extras, model._adaprune_upload_card
        for extra in extras:
            save_beside_model(extra, folder)

    return write_through_temporary(save_directory, write)


def check_save_request(save_directory, **extras) -> None:
    """Refuse, before any work or change to the model, a folder that cannot be made (it, or a folder above it, is
    a file) and a ``tokenizer=`` / ``processor=`` that is no tokenizer or processor (a model's save_pretrained
    would write its config and weights over the folder's)."""
    path = Path(save_directory)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"cannot save into {save_directory}: {folder} is a file, not a folder")
            break
    check_tokenizer_arguments(**extras)


def check_tokenizer_arguments(**extras) -> None:
    """Refuse a ``tokenizer=`` / ``processor=`` (any keyword) that is no tokenizer or processor: a model (whose
    save_pretrained would write its config and weights over the folder's), or anything without save_pretrained."""
    for name, extra in extras.items():
        if extra is not None and (isinstance(extra, torch.nn.Module) or not callable(getattr(extra, "save_pretrained",
                                                                                               None))):
            raise TypeError(f"{name}= got a {type(extra).__name__}: pass the model's tokenizer or processor (its "
                            "files are saved beside the model's)")


def check_tokenizer_fits(model, tokenizer=None, processor=None) -> None:
    """Refuse a tokenizer (or a processor's) with more tokens than ``model``'s input embedding has rows: the one a
    vocabulary was pruned from (``prune_vocabulary`` returns the tokenizer of the smaller table), whose ids the
    saved folder would read into rows it lacks or into other tokens' rows."""
    text_tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
    if text_tokenizer is None or not hasattr(text_tokenizer, "__len__"):
        return
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # a speech encoder (CTC): no token table
        return
    rows = getattr(embeddings, "num_embeddings", None)
    if isinstance(rows, int) and len(text_tokenizer) > rows:
        raise ValueError(f"the tokenizer has {len(text_tokenizer)} tokens but the model's input embedding only {rows} "
                         "rows: it is not this model's tokenizer (after prune_vocabulary, pass the tokenizer it "
                         "returned; a trainer saves its processing_class: trainer.processing_class = that tokenizer)")


def save_beside_model(extra, folder) -> None:
    """Save a tokenizer or processor into the model's folder."""
    extra.save_pretrained(folder)
    if getattr(extra, "feature_extractor", None) is not None:  # transformers 5 keeps it only in processor_config.json
        extra.feature_extractor.save_pretrained(folder)


def temporary_folder(save_directory: Path, kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder inside ``save_directory`` for a save of ``kind`` (``save``, ``onnx``, ``ct2``), named
    after this machine and process so that a later save can tell one whose process was killed
    (:func:`remove_abandoned_saves`) from one still being written."""
    remove_abandoned_saves(save_directory)
    # "@" closes the host name (no host name holds one): host gpu never reads host gpu-12's folders as its own
    return tempfile.TemporaryDirectory(dir=save_directory, prefix=f".adaprune-{kind}-{os.getpid()}@"
                                                                  f"{socket.gethostname()}@")


def remove_abandoned_saves(save_directory: Path) -> None:
    """Remove the temporary folders saves on this machine left when their process was killed mid-way: a whole
    model's copy that no loader reads, but that a push of the folder would upload."""
    if os.name != "posix":  # the check below sends no signal on POSIX only
        return
    own = re.compile(rf"\.adaprune-[a-z0-9]+-(\d+)@{re.escape(socket.gethostname())}@")
    removed = []
    for item in save_directory.iterdir():
        match = own.match(item.name)
        if match and item.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(item, ignore_errors=True)
            removed.append(item.name)
    if removed:
        logger.warning("removed %s from %s: what a save stopped mid-way (its process is gone) left there",
                       ", ".join(sorted(removed)), save_directory)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_through_temporary(save_directory: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(folder)`` into a temporary folder inside ``save_directory``, then move what it wrote into place.

    A ``write`` that fails leaves ``save_directory`` as it was; weight files of an earlier save that this one
    does not write are removed (transformers would load them instead), as remove_stale_weight_files says; other
    files there stay.
    """
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    with temporary_folder(save_directory, "save") as tmp:
        write(Path(tmp))
        written = {item.name for item in Path(tmp).iterdir()}
        remove_stale_weight_files(save_directory, _weight_files(save_directory) - written, Path(tmp), written)
        move_into(Path(tmp), save_directory)
    return save_directory


def move_into(written: Path, save_directory: Path) -> None:
    """Move everything in ``written`` into ``save_directory``, replacing files of the same names; a folder merges
    into the folder of its name (a sentence-transformers module's ``1_Pooling``: other files in it stay, as a stock
    save keeps them), and replaces a file or link of its name."""
    for item in written.iterdir():
        target = save_directory / item.name
        if item.is_dir() and target.is_dir() and not target.is_symlink():
            move_into(item, target)
        elif item.is_dir():
            if target.is_symlink() or target.is_file():
                target.unlink()
            shutil.move(str(item), target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
