"""The pruning state saved next to each Trainer checkpoint, and finding the checkpoint to resume from.

``pruning_state.pt`` holds only tensors, numbers, strings, lists and dicts, so it is read
with ``torch.load(weights_only=True)``: a checkpoint from elsewhere cannot run code.
A checkpoint folder without it (a run stopped between the Trainer's save and this file)
is incomplete and is not resumed from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

import numpy as np
import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .arguments import COMMA_LIST_FIELDS, GENERATION_FIELDS, GRADUAL_ONLY, LATENCY_OPTIONS, normalised_comma_list

logger = logging.getLogger(__name__)

PRUNING_STATE_FILE = "pruning_state.pt"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def write_pruning_state(folder: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``folder/pruning_state.pt`` through a temporary file (a crash leaves no half file)."""
    tmp = os.path.join(folder, f".{PRUNING_STATE_FILE}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(folder, PRUNING_STATE_FILE))


def read_pruning_state(folder: str | os.PathLike) -> dict:
    """The state written by :func:`write_pruning_state`; errors name the file and what to do."""
    path = os.path.join(folder, PRUNING_STATE_FILE)
    if not os.path.isfile(path):
        if checkpoints(folder):  # a run's output folder, given for one of its checkpoints
            raise FileNotFoundError(f"{folder} has no {PRUNING_STATE_FILE}: it is a run's output folder, not a "
                                    f"checkpoint{_existing_note(folder)}; pass one of them, or "
                                    f"resume_from_checkpoint=True with output_dir {folder} for the newest")
        raise FileNotFoundError(f"{folder} has no {PRUNING_STATE_FILE}: not a complete pruning checkpoint"
                                + _existing_note(os.path.dirname(os.path.abspath(folder))))
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # truncated zip, random bytes, empty file, pickled objects
        raise ValueError(f"cannot read the pruning state {path} ({type(err).__name__}: {str(err)[:200]}): the file is "
                         "damaged or was not written by hf_adaprune; resume from another checkpoint") from err
    if not isinstance(state, dict) or "controller" not in state:
        raise ValueError(f"{path} holds no pruning state (keys: {sorted(state) if isinstance(state, dict) else '-'})")
    arguments = state.get("arguments")
    if (isinstance(arguments, dict) and "pruning_scope" in arguments
            and arguments.get("pruning_normalize_scores") is None):
        # a full record written before 2026-12-05 (the option unset, or before it existed): its selections ranked
        # normalised scores, so a resume under today's default (raw) is a change of arguments, named as such
        state["arguments"] = {**arguments, "pruning_normalize_scores": True}
    arguments = state.get("arguments")
    if isinstance(arguments, dict) and arguments.get("pruning_target_type", "latency") != "latency":
        # written before 2026-12-05: the latency-table options were recorded under any target type, and compared
        state["arguments"] = {k: v for k, v in arguments.items() if k not in LATENCY_OPTIONS}
    arguments = state.get("arguments")
    if isinstance(arguments, dict) and arguments.get("pruning_schedule") == "search_then_recover":
        # written before 2026-12-06: the gradual schedule's options were recorded (and compared) under this one too
        state["arguments"] = {k: v for k, v in arguments.items() if k not in GRADUAL_ONLY}
    arguments = state.get("arguments")
    if isinstance(arguments, dict):
        # written before 2026-12-06: --prune / --pruning_roles as typed ('both'), compared with today's normalised record
        state["arguments"] = {k: normalised_comma_list(k, v) if k in COMMA_LIST_FIELDS else v
                              for k, v in arguments.items()}
    return state


def checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, str, bool]]:
    """``(step, folder, complete)`` of every ``checkpoint-N`` folder in ``output_dir``, newest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT.match(name)
        folder = os.path.join(output_dir, name)
        if match and os.path.isdir(folder):
            found.append((int(match.group(1)), folder, os.path.isfile(os.path.join(folder, PRUNING_STATE_FILE))))
    return sorted(found, reverse=True)


def _existing_note(output_dir) -> str:
    found = checkpoints(output_dir)
    complete = [os.path.basename(f) for _, f, ok in found if ok]
    incomplete = [os.path.basename(f) for _, f, ok in found if not ok]
    if not found:
        return f"; {output_dir} holds no checkpoint-N folders"
    return (f"; complete pruning checkpoints in {output_dir}: {', '.join(complete) or 'none'}"
            + (f"; without {PRUNING_STATE_FILE}: {', '.join(incomplete)}" if incomplete else ""))


def checkpoint_step(folder: str | os.PathLike, default: int) -> int:
    """The global step a ``checkpoint-N`` folder was saved at (``default`` for a folder named otherwise)."""
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(folder)))
    return int(match.group(1)) if match else default


def resolve_resume_checkpoint(value, output_dir: str) -> str | None:
    """The folder to resume from: a path as given, or for ``True`` / ``"true"`` the newest complete checkpoint.

    A newest checkpoint without ``pruning_state.pt`` is passed over for the newest complete one
    (with a warning); with none complete the error names the checkpoints that exist.
    """
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.lower() in ("true", "false") and not os.path.exists(value):
        value = value.lower() == "true"  # --resume_from_checkpoint true on the command line
        if not value:
            return None
    if value is True:
        found = checkpoints(output_dir)
        complete = [(step, folder) for step, folder, ok in found if ok]
        if not complete:
            raise ValueError("resume_from_checkpoint=True: no complete pruning checkpoint to resume from"
                             + _existing_note(output_dir))
        step, folder = complete[0]
        if found[0][0] != step:
            logger.warning("%s has no %s (interrupted save?): resuming from %s, the newest complete checkpoint",
                           found[0][1], PRUNING_STATE_FILE, folder)
        return folder
    return str(value)


def check_resume_arguments(saved: dict, current: dict, allow_new: bool, what: str = "pruning arguments") -> None:
    """Refuse to resume under ``what`` (pruning arguments, or a recipe's options) other than the checkpoint's,
    naming them (unless ``allow_new``: then a warning)."""
    changed = {k: (saved[k], current.get(k)) for k in saved if current.get(k) != saved[k]}
    if not changed:
        return
    listed = "; ".join(f"--{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in sorted(changed.items()))
    if not allow_new:
        raise ValueError(f"the checkpoint was written with other {what} ({listed}). Resume with the "
                         "checkpoint's values, or set --pruning_resume_with_new_arguments to continue with these.")
    logger.warning("resuming with %s that differ from the checkpoint's: %s", what, listed)


def decision_rows_record(rows, eval_batch_size: int | None) -> dict:
    """What identifies the rows decisions are measured on: their count and a SHA-256 of their values (column
    names, numbers, strings, arrays), and, where the metric is a loss averaged over batches, the eval batch size."""
    digest = hashlib.sha256()
    for index in range(len(rows)):
        _feed(digest, rows[index])
    return {"rows": len(rows), "sha256": digest.hexdigest(), "eval_batch_size": eval_batch_size}


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.double() if value.is_floating_point() else value).numpy()  # bf16 has no numpy dtype
    if isinstance(value, (bool, int, float, np.number, np.bool_)):  # as the 0-d tensor a torch-formatted row holds
        value = np.asarray(value)
    if isinstance(value, np.ndarray) and value.dtype == object:  # ragged rows: their items, not their addresses
        value = list(value)
    if isinstance(value, np.ndarray):
        # one dtype per kind, so that a row read back as lists (float64) and as tensors (float32) is the same row
        kind = {"f": np.float64, "i": np.int64, "u": np.int64}.get(value.dtype.kind)
        value = value.astype(kind) if kind is not None else value
        digest.update(f"array{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        try:  # numbers (token ids, audio features read back as nested lists): as one array, not value by value
            array = np.asarray(value)
        except (ValueError, TypeError, RuntimeError):  # ragged; tensors numpy cannot take (bf16, requiring grad)
            array = None
        if array is not None and array.dtype != object and array.size:
            _feed(digest, array)
            return
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    elif value is None or isinstance(value, (str, bytes)):
        digest.update(repr(value).encode())
    else:  # a decoded image or audio object: its repr holds its address, which differs between runs
        digest.update(type(value).__qualname__.encode())


def decision_rows_problem(saved: dict | None, current: dict | None) -> str | None:
    """Why a checkpoint whose reference was measured on the rows ``saved`` describes cannot go on with ``current``
    ones (other rows, or another eval batch size where a loss steers), or None."""
    if not saved or not current:
        return None
    if saved["rows"] != current["rows"] or saved["sha256"] != current["sha256"]:
        what = (f"{current['rows']} rows now, {saved['rows']} then" if saved["rows"] != current["rows"] else
                f"{current['rows']} rows, other values")
        return (f"the decision rows differ from those the checkpoint's reference was measured on ({what}): the first "
                "pruning_eval_samples rows of eval_dataset must be the same (a split drawn without a fixed seed, "
                "another file or order)")
    if saved.get("eval_batch_size") != current.get("eval_batch_size"):
        return (f"the eval batch size is {current.get('eval_batch_size')}, the checkpoint's reference was measured "
                f"at {saved.get('eval_batch_size')}: a loss averaged over batches is another number at another batch "
                "size; resume with the same per_device_eval_batch_size")
    return None


# what the checkpoint's reference and decisions were measured with (and the unit its ratios are in): a resumed run
# holds no dense model to measure again, so these cannot change once the reference was taken
MEASURE_ARGUMENTS = ("pruning_metric", "pruning_greater_is_better", "pruning_eval_samples",
                     "pruning_target_type") + GENERATION_FIELDS


def new_arguments_problem(saved: dict, current: dict, controller: dict, teacher: str | None = None) -> str | None:
    """What a run resumed under ``pruning_resume_with_new_arguments`` cannot continue with, or None.

    ``controller``: the checkpoint's controller state. Its reference (and every decision) was measured with the
    checkpoint's metric arguments; its kept ratio and candidate are pruned already, so a lower target cannot undo
    them. A higher target than the one it stopped at is followed (see ``AdaptiveController.resume_towards_target``).
    ``teacher``: where the checkpoint's distillation teacher is (its ``teacher`` entry; None: it had none). The
    default teacher is the dense model at the reference: a run that turns ``--distillation`` on after it has none
    to take, and needs ``--teacher_model_name_or_path``.
    """
    if controller.get("reference") is not None:
        changed = [k for k in MEASURE_ARGUMENTS if k in saved and saved[k] != current.get(k)]
        if changed:
            listed = "; ".join(f"--{k}: checkpoint {saved[k]!r}, now {current.get(k)!r}" for k in changed)
            return (f"the checkpoint's pruning reference and decisions were measured with other arguments ({listed}), "
                    "and a resumed run cannot measure the dense model again: resume with the checkpoint's values, "
                    "or start a new run from the dense model")
        if (current.get("distillation") and not current.get("teacher_model_name_or_path")
                and not (teacher or saved.get("distillation"))):
            return ("--distillation is on, but the checkpoint was written without it after its pruning reference was "
                    "taken: the default teacher is the dense model as it stood at the reference, which a resumed run "
                    "no longer has, so it would train without distillation. Name a teacher with "
                    "--teacher_model_name_or_path (e.g. the dense model the run started from, fine-tuned for the "
                    "task), resume with --distillation false, or start a new run from the dense model")
    target = current.get("pruning_target")
    kept, pending = controller.get("ratio") or 0.0, controller.get("pending")
    unit = {"latency": "of the measured time", "structures": "of the heads and neurons"}.get(
        current.get("pruning_target_type"), "of the FLOPs")
    if target is not None and kept > target + 1e-9:
        return (f"the checkpoint already kept a ratio of {kept:.3f} {unit}, beyond --pruning_target {target}: "
                "resume from an earlier checkpoint, or with a target of at least that")
    if target is not None and pending is not None and pending > target + 1e-9:
        return (f"the checkpoint is trying a ratio of {pending:.3f} {unit}, beyond --pruning_target {target}: resume "
                "from an earlier checkpoint (one not yet trying a ratio beyond it), or with a target of at least that")
    return None


def check_writable(folder: str | os.PathLike) -> None:
    """Fail now, not after training, when the report, checkpoints and model could not be written."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".hf_adaprune_write_check")
        with open(probe, "w") as f:
            f.write("")
        os.remove(probe)
    except OSError as err:
        raise PermissionError(f"--output_dir {folder} is not writable ({type(err).__name__}: {err}); the report, "
                              "checkpoints and model would be lost after training. Choose a folder you can "
                              "write to.") from err
