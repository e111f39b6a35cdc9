"""``post_training_prune``: a fine-tuned model made smaller in minutes, with no training step.

calibration scores -> global selection under the FLOP budget -> layer-wise least-squares
re-fit -> metric check (or the adaptive controller searching the ratio, each try costing a
selection, a re-fit and an evaluation, no training) -> compaction -> Hub-format folder.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.utils.logging import tqdm  # off under disable_progress_bar()
from transformers import (DataCollatorForMultipleChoice, DataCollatorForTokenClassification,
                          DataCollatorWithPadding, EvalPrediction, default_data_collator)

from ..engine.controller import KEEP, SELECTION_SLACK, AdaptiveController
from ..engine.masks import attach_masks, detach_masks, get_masks, structure_count
from ..engine.selection import select_masks_by_kind, selected_fraction_by_kind, unreachable_target
from ..families import (UnsupportedModelError, check_sequence_length, find_groups, get_adapter, positions_note,
                        readable_positions)
from ..families.registry import check_transformers_model
from ..hub import save_pruned
from ..hub.save import check_save_request, check_tokenizer_arguments, check_tokenizer_fits
from ..metrics import metric_greater_is_better
from ..modes import restore_modes, training_modes
from ..reporting.flops import compare_profiles, model_profile, structure_costs
from ..reporting.report import (POST_TRAINING_REPORT_FILE, TRAINING_REPORT_FILES, remove_reports_of_another_model,
                                write_json)
from ..reporting.summary import ProfileComparison
from ..surgery import compact
from ..task_metrics import classification_metrics
from ..trainer.eval_order import is_map_style
from .calibration import (LABEL_KEYS, SCORE_KINDS, calibration_batches, dataset_rows, device_batch, label_key,
                          mask_gradient_scores, model_input_names)
from .dense_targets import DENSE_TARGETS_WARNING_BYTES, REFIT_TARGETS, capture_dense_targets, dense_target_bytes
from .refit import DEFAULT_RIDGE, refit_groups, refit_token_floor

logger = logging.getLogger(__name__)


# model types whose calibration batches and token masks this module knows (encoder-only families)
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "distilbert", "deberta-v2",
                         "modernbert", "mpnet")
DEFAULT_SCORES = "taylor"  # kept more accuracy than Fisher in benchmarks/post_training.py (README)
DEFAULT_REFIT_TARGET = "dense_residual"  # see dense_targets; chosen in benchmarks/post_training.py (README)
# raw per-example scores ranked globally kept more accuracy than per-layer L2-normalised ones on training phrases no
# model saw, at 50% and 65%, for two dense models (README, "Which scores to rank")
DEFAULT_NORMALIZE_SCORES = False
SEARCH_CEILING = 0.9  # target=None: the controller searches up to this fraction
# search=True: the controller's first step, smallest step and growth after a kept step (the trainer's defaults)
SEARCH_INITIAL_STEP, SEARCH_MIN_STEP, SEARCH_STEP_GROWTH = 0.1, 0.0125, 1.5
KINDS = ("heads", "ffn")  # what post-training pruning removes (whole layers only while training)


@dataclass
class PostTrainingResult:
    """What :func:`post_training_prune` did: the compacted model and how it got there."""

    model: nn.Module
    ratio: float  # the fraction of each kind's layer FLOPs asked of the selection (the target, or the kept try)
    reference: float | None  # the dense model's metric on eval_dataset
    metric: float | None  # the pruned model's
    within_tolerance: bool | None
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # per group, as used by the selection
    history: list[dict] = field(default_factory=list)  # the controller's decisions
    refit_errors: dict[str, float] = field(default_factory=dict)  # relative output error per re-fitted group
    # groups left un-fitted, too few calibration tokens for their kept columns: {group: {tokens, kept_columns, needed}}
    refit_skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    comparison: ProfileComparison | None = None  # compare_profiles(dense, pruned)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    output_dir: Path | None = None
    selected: float | None = None  # the fraction the masks reached (floors and whole structures can stop short)
    # what was asked: target, metric name and tolerance, scores, re-fit settings, kinds, seq_len (the report's key)
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        skip = ("model", "scores", "comparison", "output_dir")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip} | {
            "comparison": None if self.comparison is None else self.comparison.to_dict(),
            "output_dir": str(self.output_dir or "")}


def post_training_prune(
    model: nn.Module,
    calibration_dataset,
    target: float | None,
    metric: str = "accuracy",
    tolerance: float = 0.01,
    eval_dataset=None,
    *,
    tolerance_type: str = "absolute",
    scores: str | dict[str, torch.Tensor] = DEFAULT_SCORES,
    refit: bool = True,
    refit_target: str = DEFAULT_REFIT_TARGET,
    ridge: float = DEFAULT_RIDGE,
    refit_samples: int | None = None,
    search: bool = False,
    kinds: tuple[str, ...] = ("heads", "ffn"),
    min_heads_per_layer: int = 1,
    min_neurons_per_layer: int = 1,
    normalize_scores: bool = DEFAULT_NORMALIZE_SCORES,
    seq_len: int = 128,
    batch_size: int = 32,
    tokenizer=None,
    data_collator=None,
    output_dir: str | Path | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> PostTrainingResult:
    """Prune ``target`` of the layer FLOPs of a fine-tuned ``model`` without training it.

    ``calibration_dataset``: tokenized, labelled examples (a few thousand; their gradients rank the
    structures, their activations drive the re-fit). ``target``: fraction of each kind's (heads, FFN
    neurons) layer FLOPs at ``seq_len`` tokens to remove, in (0, 1); ``None`` (or ``search=True``) lets
    :class:`AdaptiveController` search the largest ratio (up to ``target``, or 0.9) whose ``metric`` on
    ``eval_dataset`` stays within ``tolerance`` of the dense model's. ``scores``: ``"taylor"`` (default,
    ``mean |dL/dm|`` per example) or ``"fisher"`` (``mean (dL/dm)^2``), or the per-group scores of an
    earlier call (``result.scores``) to prune the same model to another target without a scoring pass. ``refit``: re-fit each pruned
    group's output projection by ridge least squares (``ridge`` relative to the activations' scale), on the
    first ``refit_samples`` calibration examples (None: all; the re-fit's cost grows with them), towards
    ``refit_target``: ``"dense_residual"`` (default: the dense model's residual-stream sum, so drift from
    earlier layers is corrected too), ``"dense_output"`` (the dense model's projection output) or
    ``"same_input"`` (the dense projection of the pruned model's own input); see :mod:`dense_targets`.
    ``normalize_scores``: divide each layer's scores by their L2 norm before the global ranking (the
    trainer's ``pruning_normalize_scores=True``); False (default, as the trainer's) ranks the raw per-example scores, which estimate the loss change on one
    scale. A group is re-fit only on at least 2 x (its kept input columns + 1) real tokens
    (:func:`~hf_adaprune.post_training.refit.refit_token_floor`); below that it keeps its weights, with a
    warning, and ``result.refit_skipped`` names it.

    The model given is not modified unless ``inplace=True`` (a deep copy is pruned); its parameters
    are never updated by an optimizer. Returns a :class:`PostTrainingResult` whose ``model`` is
    compacted; with ``output_dir`` it is saved there by :func:`save_pruned` (with ``tokenizer``) along
    with ``post_training_report.json``.
    """
    for name, value in (("refit", refit), ("search", search), ("normalize_scores", normalize_scores),
                        ("inplace", inplace), ("progress", progress)):  # "false" from a config file is truthy
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    searching = target is None or search
    calibration_dataset, eval_dataset = _rows_read_once(calibration_dataset), _rows_read_once(eval_dataset)
    _validate(model, calibration_dataset, target, metric, tolerance, tolerance_type, eval_dataset, scores, searching,
              refit_target)
    _validate_sizes(model, kinds=kinds, seq_len=seq_len, batch_size=batch_size, refit_samples=refit_samples,
                    ridge=ridge, floors=(min_heads_per_layer, min_neurons_per_layer))
    check_tokenizer_arguments(tokenizer=tokenizer)  # a model there failed in the collator ('no attribute pad')
    if data_collator is None and tokenizer is None:
        _validate_equal_lengths(calibration_dataset=calibration_dataset, eval_dataset=eval_dataset)
    if output_dir is not None:  # before the work, and before an inplace model is changed
        check_save_request(output_dir, tokenizer=tokenizer)
        check_tokenizer_fits(model, tokenizer)
    started = time.time()
    timings = {}
    model = model if inplace else copy.deepcopy(model)
    collator = data_collator or padding_collator(model, tokenizer)
    accepted = model_input_names(model)
    groups = find_groups(model)
    batches = calibration_batches(calibration_dataset, collator, batch_size, accepted)
    refit_batches = batches if refit_samples is None else calibration_batches(
        _first(calibration_dataset, refit_samples), collator, batch_size, accepted)
    eval_batches = None if eval_dataset is None else calibration_batches(eval_dataset, collator, batch_size, accepted)
    if refit:
        _warn_few_refit_tokens(model, [g for g in groups if g.kind in kinds], refit_batches, refit_samples)
    dense_profile = model_profile(model, seq_len=seq_len)
    costs = structure_costs(model, groups, seq_len)
    floors = {"heads": min_heads_per_layer, "ffn": min_neurons_per_layer}
    blocked = None if target is None else unreachable_target(  # a search (no target) stops where the floors let it
        groups, {g.name: structure_count(model.base_model, g) for g in groups}, target, kinds, floors, costs)
    if blocked:
        logger.warning(blocked)

    if isinstance(scores, str):
        all_scores = _timed(timings, "scores", mask_gradient_scores, model, groups, batches, progress)[scores]
    else:
        all_scores = scores

    controller = AdaptiveController(
        target=SEARCH_CEILING if target is None else target,
        initial_step=SEARCH_INITIAL_STEP if searching else target,
        min_step=min(SEARCH_MIN_STEP, target or SEARCH_MIN_STEP),
        tolerance=tolerance, tolerance_type=tolerance_type,
        greater_is_better=metric_greater_is_better(metric), growth=SEARCH_STEP_GROWTH,
        retry_failed=False,  # every try starts from the dense weights, no training between: a failure stands
    )
    dense = None  # the dense model's activations, captured once for every ratio tried
    if refit and refit_target != "same_input":
        _log_dense_target_size(model, groups, refit_batches, refit_target)
        dense = _timed(timings, "refit", capture_dense_targets, model, groups, refit_batches, refit_target)
    masks = attach_masks(model)
    dense_projections = _projection_state(model, groups)
    skipped = {}  # the groups the latest re-fit left un-fitted: the last try is the model returned
    warned = set()  # the groups named in a warning already: once per run, not once per ratio tried

    def prune_to(ratio: float) -> dict[str, float]:
        """Masks for ``ratio`` chosen from the dense model, then the re-fit; no training."""
        _load_projection_state(model, dense_projections)
        skipped.clear()
        masks.update({name: torch.ones_like(mask) for name, mask in masks.masks.items()})
        masks.update(select_masks_by_kind(
            groups, all_scores, masks.masks, ratio, kinds=kinds, scope="global",
            floors=floors, costs=costs, normalize=normalize_scores))
        if not refit:
            return {}
        return _timed(timings, "refit", refit_groups, model, masks, groups, refit_batches, ridge, progress, dense,
                      skipped, warned)

    def check() -> float:
        return _timed(timings, "check", evaluate, model, eval_batches, metric, progress)

    def reached() -> float:
        return selected_fraction_by_kind(groups, masks.masks, kinds, costs)

    try:
        if eval_batches is None:  # nothing to check against: prune to the target, once
            reference, ratio, value, within, errors = None, target, None, None, prune_to(target)
        else:
            reference = check()
            ratio, value, within, errors = _run_controller(controller, reference, prune_to, check, searching,
                                                           reached)
    except BaseException:  # the caller's model (inplace=True) comes back as it was given: dense, without masks
        _load_projection_state(model, dense_projections)
        detach_masks(model)
        raise
    if searching and not ratio:
        logger.warning("post-training pruning: no ratio kept %s within tolerance %s; the model is left dense",
                       metric, tolerance)
    elif within is False:
        logger.warning("post-training pruning at %.3f: %s %.4f is beyond the tolerance %s of the dense %.4f; "
                       "pass target=None to search for the largest ratio within it", ratio, metric, value,
                       tolerance, reference)

    selected = reached()
    if ratio and selected < ratio - SELECTION_SLACK:
        each = ", ".join(f"{kind} {selected_fraction_by_kind(groups, masks.masks, (kind,), costs):.3f}"
                         for kind in kinds)
        logger.warning("post-training pruning: the selection for %.3f reached %.3f (each kind's fraction of its own "
                       "FLOPs: %s; per-layer floors or whole structures leave no more to remove)", ratio, selected,
                       each)
    compact(model)
    result = PostTrainingResult(selected=selected,
        model=model, ratio=ratio, reference=reference, metric=value, within_tolerance=within, scores=all_scores,
        history=controller.state.history, refit_errors=errors, refit_skipped=dict(skipped),
        comparison=compare_profiles(dense_profile, model_profile(model, seq_len=seq_len)), timings=timings,
        settings={"target": target, "search": searching, "metric": metric if eval_dataset is not None else None,
                  "tolerance": tolerance, "tolerance_type": tolerance_type,
                  "scores": scores if isinstance(scores, str) else "given", "refit": refit,
                  "refit_target": refit_target if refit else None, "ridge": ridge if refit else None,
                  "refit_samples": refit_samples if refit else None, "kinds": list(kinds), "normalize_scores": normalize_scores,
                  "seq_len": seq_len,
                  "calibration_rows": len(calibration_dataset)})
    timings["total"] = time.time() - started
    if output_dir is not None:
        result.output_dir = save_pruned(model, output_dir, tokenizer=tokenizer)
        remove_reports_of_another_model(result.output_dir, TRAINING_REPORT_FILES, card=True,
                                        why="a pruning trainer's report and card")
        write_json(result.output_dir / POST_TRAINING_REPORT_FILE, result.summary())
    return result


def _warn_few_refit_tokens(model, groups, batches: list[dict], refit_samples: int | None) -> None:
    """Warn once, up front, when the re-fit's real tokens are too few for the widest pruned projection."""
    main = getattr(model, "main_input_name", "input_ids")
    rows = sum(batch[main].shape[0] for batch in batches)
    tokens = sum(int(batch["attention_mask"].sum()) if batch.get("attention_mask") is not None
                 else batch[main].numel() for batch in batches)
    widest = max(model.base_model.get_submodule(group.output).in_features for group in groups)
    if tokens < refit_token_floor(widest):
        logger.warning("post-training pruning: the re-fit sees %d real tokens (%d calibration rows%s); a group is "
                       "re-fit only on at least 2 x (its kept input columns + 1) tokens, %d for the widest "
                       "projection (%d columns), so groups keeping %d columns or more keep their weights; a few "
                       "thousand calibration rows avoid this", tokens, rows,
                       "" if refit_samples is None else f", refit_samples={refit_samples}",
                       refit_token_floor(widest), widest, tokens // 2)


def _first_unlabeled(dataset) -> int | None:
    """The index of the first example without a label (none of LABEL_KEYS, or None in the first it has, the one
    calibration_batches keeps): every row, or every value of a datasets.Dataset's label column (its columns every row
    shares); None when they all have labels."""
    if has_row_columns(dataset):
        key = label_key(dataset.column_names)
        if key is None:
            return 0 if len(dataset) else None
        column = dataset.with_format(None)[key] if hasattr(dataset, "with_format") else dataset[key]
        return next((i for i, label in enumerate(column) if label is None), None)
    return next((i for i, row in enumerate(dataset_rows(dataset)) if row.get(label_key(row)) is None), None)


# heads whose loss reads class ids below config.num_labels
CLASS_ID_HEADS = ("ForSequenceClassification", "ForTokenClassification")


def padding_collator(model, tokenizer):
    """The collator ``tokenizer`` pads batches with, for the model's head: per-token labels padded with -100 (token
    classification), choices padded within each row (multiple choice), else the inputs. No tokenizer: the rows are
    stacked as they are."""
    if tokenizer is None:
        return default_data_collator
    if _head_is(model, "ForTokenClassification"):
        return DataCollatorForTokenClassification(tokenizer)
    if _head_is(model, "ForMultipleChoice"):
        return DataCollatorForMultipleChoice(tokenizer)
    return DataCollatorWithPadding(tokenizer)


def _head_is(model, suffix: str) -> bool:
    return any(cls.__name__.endswith(suffix) for cls in type(model).__mro__)


def _sequences(ids) -> list[np.ndarray]:
    """The token sequences of one row's ids: the row itself, or each of its choices (multiple choice, padded or
    not). Rows of a dataset in torch or numpy format are arrays: one sequence per row of their last axis."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        return [row for row in ids.reshape(-1, ids.shape[-1]) if row.size] if ids.ndim > 1 else [ids]
    if len(ids) and isinstance(ids[0], (list, tuple, np.ndarray, torch.Tensor)):
        return [np.asarray(choice).reshape(-1) for choice in ids if len(choice)]
    return [np.asarray(ids).reshape(-1)]


def _check_label_range(model, name: str, dataset) -> None:
    """Class ids outside the head's ``num_labels`` (-100 aside, which the loss ignores) are refused by name: the loss
    would fail on them midway, after the scoring pass (a GLUE test split's labels are all -1)."""
    classes = _class_id_count(model)
    if not classes:
        return
    rows = None if has_row_columns(dataset) else dataset_rows(dataset)
    key = label_key(dataset.column_names if rows is None else rows[0])
    if key is None:
        return
    column = dataset[key] if rows is None else [row.get(key) for row in rows]
    values = [np.asarray(label) for label in column if label is not None]
    text = next((value for value in values if value.dtype.kind in "USO"), None)
    if text is not None:
        raise ValueError(f"{name} holds the label {str(text.reshape(-1)[0])!r} in its {key!r} column, but the model's "
                         f"head reads class ids 0..{classes - 1}: map the names to ids first (e.g. with "
                         "model.config.label2id, or datasets' class_encode_column)")
    if single_label_head(model):
        shaped = next((value for value in values if value.ndim), None)
        if shaped is not None:
            raise ValueError(f"{name} holds a label of shape {list(shaped.shape)} in its {key!r} column "
                             f"({shaped.tolist()}), but a sequence classifier takes one class id per row: store the "
                             f"id itself (e.g. ds.map(lambda r: {{{key!r}: r[{key!r}][0]}}))")
    labels = np.concatenate([value.reshape(-1) for value in values] or [[]])
    if labels.dtype.kind not in "iu" and not all(float(v).is_integer() for v in labels):
        return  # not class ids (soft labels, scores): the loss says what it takes
    if labels.dtype.kind == "f" and single_label_head(model):  # whole numbers stored as floats (a pandas column)
        raise ValueError(f"{name} holds its class ids as floats ({labels.dtype} in its {key!r} column), which a "
                         f"{classes}-class sequence classifier reads as one score per class (multi-label): store "
                         f"them as integers (e.g. ds.cast_column({key!r}, datasets.Value('int64')))")
    labels = labels.astype(np.int64)
    bad = labels[(labels != -100) & ((labels < 0) | (labels >= classes))]
    if bad.size:
        raise _labels_outside(name, int(bad[0]), bad.size, classes)


def _class_id_count(model) -> int:
    """How many classes the head reads class ids of (a single-label sequence or token classifier); 0 for others: a
    masked LM's labels are token ids, a multiple-choice head's the choice, a multi-label head's rows of scores."""
    config = model.config
    classes = getattr(config, "num_labels", 0)
    if classes < 2 or getattr(config, "problem_type", None) not in (None, "single_label_classification"):
        return 0
    return classes if any(cls.__name__.endswith(CLASS_ID_HEADS) for cls in type(model).__mro__) else 0


def _labels_outside(name: str, first: int, count: int, classes: int) -> ValueError:
    return ValueError(f"{name} holds label {first} ({count} labels outside 0..{classes - 1}), but the model's head "
                      f"has {classes} classes (-100 is ignored): an unlabelled split (GLUE's test labels are -1) or "
                      "another label mapping? Pass rows labelled for this head")


def _ids_beyond_table(name: str, largest: int, size: int) -> ValueError:
    return ValueError(f"{name} holds token id {largest}, but the model's embedding table has {size} rows: the rows "
                      "were tokenized with another model's tokenizer; tokenize them with this model's")


def single_label_head(model) -> bool:
    """A sequence classifier of one class id per row (token classifiers take one per token)."""
    return _head_is(model, "ForSequenceClassification")


def _check_ids_fit(model, name: str, rows) -> None:
    """Token ids the model's embedding table has no row for (rows tokenized by another model's tokenizer) are
    refused by name: the embedding lookup would fail with an index error. So are rows longer than the position
    table reads: the forward would fail on a shape. A row may hold several sequences (multiple choice)."""
    size = model.get_input_embeddings().num_embeddings if model.get_input_embeddings() is not None else None
    rows = list(rows)
    if not _head_is(model, "ForMultipleChoice"):
        nested = next((i for i, ids in enumerate(rows) if _is_nested(ids)), None)
        if nested is not None:
            shape = list(np.shape(rows[nested]))
            raise ValueError(f"{name}[{nested}]'s input_ids have shape {shape}, but each row is one sequence of ids "
                             "(rows tokenized one by one with return_tensors='pt'?): tokenize without return_tensors, "
                             "or take row['input_ids'][0] (and the same of the other columns)")
    sequences = [sequence for ids in rows if len(ids) for sequence in _sequences(ids)]
    largest = max((int(ids.max()) for ids in sequences), default=-1)
    if size is not None and largest >= size:
        raise _ids_beyond_table(name, largest, size)
    longest = max((ids.shape[-1] for ids in sequences), default=0)
    positions = readable_positions(model.config)
    if positions and longest > positions:
        raise ValueError(f"{name} holds a row of {longest} tokens, but the model reads at most {positions} "
                         f"({positions_note(model.config)}): tokenize with truncation=True, max_length={positions}")


def _is_nested(ids) -> bool:
    """A row's ids hold several sequences (an array of 2+ axes, or a list of lists)."""
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        return ids.ndim > 1
    return bool(len(ids)) and isinstance(ids[0], (list, tuple, np.ndarray, torch.Tensor))


def _check_indexable(name: str, dataset) -> None:
    """Rows are drawn by index (``dataset[i]``, a mapping of columns) from something with a length: a DataLoader,
    a streaming dataset, a dict of columns or one BatchEncoding are refused with what to pass instead."""
    if dataset is None:
        return
    if hasattr(dataset, "iloc") and hasattr(dataset, "columns"):  # dataset[0] would be a column
        raise ValueError(f"{name} is a pandas {type(dataset).__name__}: pass datasets.Dataset.from_pandas({name}) or "
                         f"{name}.to_dict('records')")
    if isinstance(dataset, (list, tuple)):
        index = next((i for i, row in enumerate(dataset) if not isinstance(row, Mapping)), None)
        if index is not None:
            raise ValueError(f"{name}[{index}] is a {type(dataset[index]).__name__}; each row must be a dict of "
                             "columns (input_ids, attention_mask, labels, ...)")
        return
    if isinstance(dataset, Mapping) and dataset and all(hasattr(split, "column_names") for split in dataset.values()):
        raise ValueError(f"{name} is a {type(dataset).__name__} of the splits {sorted(dataset)}: pass one split, "
                         f"e.g. {name}[{sorted(dataset)[0]!r}]")
    if isinstance(dataset, Mapping):  # a dict of columns or a BatchEncoding: a mapping, not rows
        raise ValueError(f"{name} is a mapping of columns ({type(dataset).__name__}), not rows: pass "
                         f"datasets.Dataset.from_dict(dict({name})) or a list of row dicts")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__") or not is_map_style(dataset):
        raise ValueError(f"{name} is a {type(dataset).__name__}, whose rows cannot be drawn by index: pass the "
                         "datasets.Dataset (or list of row dicts) itself, not a DataLoader or a streaming dataset "
                         "(list(...) of a small stream will do)")
    # rows of a pandas / arrow / ... format are no dicts (a transform's, and a torch Dataset's, came here as the list
    # of their rows: _rows_read_once, checked above)
    kind = (getattr(dataset, "format", None) or {}).get("type") if hasattr(dataset, "column_names") else None
    if kind not in (None, "python", "numpy", "torch", "np", "pt"):
        raise ValueError(f"{name} is in {kind!r} format, whose rows the collator cannot read: pass "
                         f"{name}.with_format(None) (or with_format('torch') / ('numpy'))")


def _rows_read_once(dataset):
    """A dataset that makes its rows as they are read (a torch Dataset, a datasets.Dataset with a transform) as the
    list of its rows, read once: the checks and the batches then read that list. Anything else as it is (what is
    no map-style dataset of rows is refused by :func:`_check_indexable`)."""
    if dataset is None or isinstance(dataset, (list, tuple, Mapping)) or has_row_columns(dataset) \
            or hasattr(dataset, "iloc") or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        return dataset
    return dataset_rows(dataset) if is_map_style(dataset) else dataset


def _unlabeled_row(name: str, index: int, row) -> str:
    """Why ``row`` of ``name`` counts as unlabelled: no label column, or None in the one it is read by."""
    key = label_key(row)
    if key is None:
        return f"{name} example {index} has no label column: its columns are {sorted(row)}"
    return (f"{name} example {index} has {key}=None, the label column it is read by (the first of {LABEL_KEYS} "
            "it has; the others are not read)")


def has_row_columns(dataset) -> bool:
    """A datasets.Dataset whose columns are its rows' (read a column at once); one with a transform
    (``with_transform`` / ``set_transform``: ``format["type"] == "custom"``) makes its rows' columns as each row is
    read, so its rows are read one by one, as a torch Dataset's."""
    return hasattr(dataset, "column_names") and (getattr(dataset, "format", None) or {}).get("type") != "custom"


def check_tokenized_rows(model, name: str, dataset) -> None:
    """For a trainer's evaluation rows: when ``dataset`` is a ``datasets.Dataset`` of ``input_ids``, refuse ids the
    model's table lacks and integer class ids outside the head's labels, by name, instead of an index error in the
    forward or the loss. Read with Arrow (a million rows in well under a second). Row lengths are left to the
    trainer's collator, which may truncate."""
    if not has_row_columns(dataset) or "input_ids" not in dataset.column_names:
        return
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]  # the rows a select / filter kept
    table_size = getattr(model.get_input_embeddings(), "num_embeddings", None)
    ids = _flat(table["input_ids"])
    largest = pc.max(ids).as_py() if len(ids) else None
    if getattr(model, "main_input_name", "input_ids") == "input_ids" and table_size and largest is not None \
            and largest >= table_size:
        raise _ids_beyond_table(name, largest, table_size)
    key, classes = label_key(dataset.column_names), _class_id_count(model)
    if key is None or not classes:
        return
    labels = _flat(table[key])
    if not pa.types.is_integer(labels.type):  # float rows: multi-label (the loss infers it), or scores
        return
    outside = pc.filter(labels, pc.and_(pc.not_equal(labels, -100),
                                        pc.or_(pc.less(labels, 0), pc.greater_equal(labels, classes))))
    if len(outside):
        raise _labels_outside(name, outside[0].as_py(), len(outside), classes)


def _flat(column):
    """The values of an Arrow column of values, lists or lists of lists (multiple choice), as one flat array."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = column.flatten()
    return column.filter(column.is_valid())


def _check_tokenized(model, name: str, dataset) -> None:
    """Raw text (rows without the model's main input, ``input_ids``) is refused with how to tokenize it: left to
    the collator, it would fail there with a message naming neither the argument nor the fix."""
    main = getattr(model, "main_input_name", "input_ids")
    if has_row_columns(dataset):  # a datasets.Dataset: every row has its columns
        if main in dataset.column_names:
            _check_ids_fit(model, name, dataset[main] if main == "input_ids" else ())
            return
        index, row = 0, dataset[0]
    else:
        rows = dataset_rows(dataset)
        index = next((i for i, row in enumerate(rows) if main not in row), None)
        if index is None:
            _check_ids_fit(model, name, [row["input_ids"] for row in rows] if main == "input_ids" else ())
            return
        row = rows[index]
    text = next((key for key, value in row.items() if isinstance(value, str)), "text")
    if hasattr(dataset, "map"):
        how = f'{name}.map(lambda b: tokenizer(b["{text}"], truncation=True), batched=True)'
    else:
        how = f'[dict(row, **tokenizer(row["{text}"], truncation=True)) for row in {name}]'
    raise ValueError(f"{name} has no {main!r}: row {index} has the columns {sorted(row)}. It needs tokenized rows; "
                     f"tokenize it first, e.g. {name} = {how}")


def _first(dataset, count: int):
    """The first ``count`` rows of ``dataset``: a datasets.Dataset's ``select``, else a slice of the list of rows
    (a torch Dataset's rows were read into one by _rows_read_once)."""
    if count >= len(dataset):
        return dataset
    return dataset.select(range(count)) if has_row_columns(dataset) else dataset[:count]


def _timed(timings: dict[str, float], key: str, function, *args):
    clock = time.time()
    try:
        return function(*args)
    finally:
        timings[key] = timings.get(key, 0.0) + time.time() - clock


def _run_controller(controller: AdaptiveController, reference: float, prune_to, check, searching: bool,
                    reached=None):
    """``(ratio, metric, within tolerance, re-fit errors)`` of the model as it is left.

    A fixed target is tried once and kept whatever its metric (flagged; the history says it was kept beyond
    the tolerance). A search ends on the last ratio the controller kept (rebuilt if a rejected try came
    after it), or on the dense model, which is within tolerance by definition. ``reached()``: the fraction
    the masks reach for the ratio just tried, which the history records as ``selected``.
    """
    if not math.isfinite(reference):
        raise ValueError(f"the dense model's metric on eval_dataset is {reference}: no pruned model can be judged "
                         "within tolerance of it; check the metric and the evaluation rows")
    ratio = controller.start(reference)
    kept, last = None, None
    while not controller.state.done:
        errors = prune_to(ratio)
        value = check()
        selected = reached() if reached else ratio
        decision = controller.decide(value, selected=selected)
        last = (ratio, value, decision == KEEP, errors)
        if decision == KEEP:
            kept = last
        if not searching:
            if decision != KEEP:  # returned all the same: the history says so, and the stop gives its ratio
                state = controller.state
                state.ratio, state.selected = ratio, selected
                state.history.append({"event": "kept beyond tolerance", "ratio": ratio, "selected": selected,
                                      "metric": float(value), "reason": "fixed target"})
            if not controller.state.done:
                controller.stop("fixed target")
            return last
        if not controller.state.done:
            ratio = controller.propose()
    if kept is None:
        prune_to(0.0)
        return 0.0, reference, True, {}
    if kept is not last:
        kept = kept[:3] + (prune_to(kept[0]),)
    return kept


def _projection_state(model: nn.Module, groups) -> dict[str, torch.Tensor]:
    base = model.base_model
    state = {}
    for group in groups:
        projection = base.get_submodule(group.output)
        for name, param in projection.named_parameters():
            state[f"{group.output}.{name}"] = param.detach().clone()
    return state


@torch.no_grad()
def _load_projection_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    base = model.base_model
    for path, value in state.items():
        base.get_parameter(path).copy_(value)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[dict], metric: str, progress: bool = True) -> float:
    """``metric`` of ``model`` on pre-collated labelled batches: ``"loss"`` or a classification metric name."""
    modes = training_modes(model)
    model.eval()
    try:
        losses, weights, logits, labels = _predict(model, batches, metric, progress)
    finally:  # also when a batch fails: the model comes back in the mode it was given
        restore_modes(modes)
    if metric == "loss":
        return sum(losses) / sum(weights)
    result = _metric_function(metric)(EvalPrediction(predictions=np.concatenate(logits), label_ids=np.concatenate(labels)))
    return float(result[metric])


def _predict(model: nn.Module, batches: list[dict], metric: str, progress: bool):
    device = next(model.parameters()).device
    losses, weights, logits, labels = [], [], [], []
    for batch in tqdm(batches, desc=f"check: {metric}", disable=not progress):
        batch = device_batch(batch, device)
        outputs = model(**batch, return_dict=True)  # also under config.return_dict=False
        label = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        if label is None:
            raise ValueError(f"the {metric} check needs labels (one of {LABEL_KEYS}) in every row; a batch has "
                             f"{sorted(batch)}")
        losses.append(float(outputs.loss) * label.shape[0])
        weights.append(label.shape[0])
        batch_logits, batch_labels = outputs.logits.float().cpu().numpy(), label.cpu().numpy()
        if batch_logits.ndim == 3:  # a label per token: batches differ in length, so tokens are the rows
            batch_logits, batch_labels = batch_logits.reshape(-1, batch_logits.shape[-1]), batch_labels.reshape(-1)
        logits.append(batch_logits)
        labels.append(batch_labels)
    return losses, weights, logits, labels


@functools.lru_cache(maxsize=None)
def _metric_function(name: str):
    return classification_metrics(name)


def _validate_sizes(model, *, kinds, seq_len, batch_size, refit_samples, ridge, floors) -> None:
    """The sizes and settings: whole numbers where counts are meant, known kinds, a length the model can read."""
    if isinstance(kinds, str) or not kinds or not set(kinds) <= set(KINDS):
        raise ValueError(f"kinds must be a non-empty tuple of {KINDS} (whole layers only while training), got "
                         f"{kinds!r}")
    for name, value, least in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1),
                               ("refit_samples", 1 if refit_samples is None else refit_samples, 1),
                               ("min_heads_per_layer", floors[0], 0), ("min_neurons_per_layer", floors[1], 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not 0 <= ridge < math.inf:
        raise ValueError(f"ridge must be a finite number >= 0 (relative to the activations' scale), got {ridge!r}")
    check_sequence_length(model, seq_len, meaning="the length FLOPs are counted at")


def _validate_equal_lengths(**datasets) -> None:
    """Without a tokenizer or collator nothing pads: rows of unequal length would fail inside the collation."""
    for name, dataset in datasets.items():
        if dataset is None:
            continue
        rows = dataset["input_ids"] if has_row_columns(dataset) \
            else (row.get("input_ids", ()) for row in dataset_rows(dataset))
        lengths = {len(ids) for ids in rows}
        if len(lengths) > 1:
            raise ValueError(f"{name} rows have {len(lengths)} different lengths ({min(lengths)} to {max(lengths)} "
                             f"tokens) and nothing pads them: pass tokenizer= (its pad token pads each batch) or "
                             f"data_collator=")


def _validate(model, calibration_dataset, target, metric, tolerance, tolerance_type, eval_dataset, scores,
              searching, refit_target) -> None:
    """Every bad input fails here, before any forward pass."""
    check_transformers_model(model, "post_training_prune")
    model_type = getattr(model.config, "model_type", None)
    get_adapter(model)  # an unknown family raises with the list of supported ones
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"post-training pruning supports the encoder families {', '.join(SUPPORTED_MODEL_TYPES)}; got "
            f"{model_type!r}. Prune it while fine-tuning with AdaptivePruningTrainer instead.")
    if get_masks(model) is not None:
        raise ValueError("the model already has pruning masks attached: compact(model) first, or pass the dense model")
    if _head_is(model, "ForQuestionAnswering"):
        raise UnsupportedModelError(
            f"post-training pruning takes heads whose loss reads labels= (sequence or token classification, multiple "
            f"choice, masked LM); {type(model).__name__} learns from start/end positions, which it does not take. "
            "Prune it while fine-tuning with AdaptivePruningTrainer instead")
    if model is getattr(model, "base_model", model):
        raise ValueError(f"post-training pruning needs a fine-tuned model with its task head (the scores are "
                         f"gradients of its loss); {type(model).__name__} is a bare encoder")
    if target is not None and (isinstance(target, bool) or not isinstance(target, numbers.Real)):
        raise ValueError(f"target must be a number, the fraction of the layer FLOPs to remove, got {target!r}")
    if target is not None and not 0.0 < target < 1.0:
        raise ValueError(f"target must be a fraction of the layer FLOPs in (0, 1), or None to search; got {target}")
    _check_indexable("calibration_dataset", calibration_dataset)
    if calibration_dataset is None or len(calibration_dataset) == 0:
        raise ValueError("calibration_dataset is empty: give tokenized, labelled examples (a few thousand)")
    _check_tokenized(model, "calibration_dataset", calibration_dataset)
    unlabeled = _first_unlabeled(calibration_dataset)
    if unlabeled is not None:
        raise ValueError(f"calibration examples need labels (one of {LABEL_KEYS}): the scores are gradients of "
                         f"the loss; {_unlabeled_row('calibration', unlabeled, calibration_dataset[unlabeled])}")
    _check_label_range(model, "calibration_dataset", calibration_dataset)
    if isinstance(scores, dict):
        groups = find_groups(model)
        missing = {g.name for g in groups} - set(scores)
        if missing:
            raise ValueError(f"the scores given have no entry for groups {sorted(missing)[:3]}: pass the scores of "
                             f"an earlier call on the same dense model, or 'fisher' / 'taylor'")
        sizes = {g.name: structure_count(model.base_model, g) for g in groups}
        wrong = [f"{name} ({len(scores[name])} scores, {size} structures)" for name, size in sizes.items()
                 if len(scores[name]) != size]
        if wrong:
            raise ValueError(f"the scores given do not fit this model: {', '.join(wrong[:3])}; they are the scores of "
                             f"another (or an already pruned) model: pass the scores of an earlier call on this "
                             f"dense model, or 'fisher' / 'taylor'")
    elif scores not in SCORE_KINDS:
        raise ValueError(f"scores must be one of {SCORE_KINDS} or a dict of per-group scores, got {scores!r}")
    if refit_target not in REFIT_TARGETS:
        raise ValueError(f"refit_target must be one of {REFIT_TARGETS}, got {refit_target!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if tolerance_type not in ("absolute", "relative"):
        raise ValueError(f"tolerance_type must be 'absolute' or 'relative', got {tolerance_type!r}")
    _check_indexable("eval_dataset", eval_dataset)
    if searching and (eval_dataset is None or len(eval_dataset) == 0):
        raise ValueError("searching the ratio (target=None or search=True) needs an eval_dataset for the metric")
    if eval_dataset is not None and len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty: pass None to skip the metric check")
    if eval_dataset is not None:
        _check_tokenized(model, "eval_dataset", eval_dataset)
    unlabeled = None if eval_dataset is None else _first_unlabeled(eval_dataset)
    if unlabeled is not None:
        raise ValueError(f"eval_dataset examples need labels (one of {LABEL_KEYS}) for the {metric} check; "
                         f"{_unlabeled_row('eval_dataset', unlabeled, eval_dataset[unlabeled])}")
    if eval_dataset is not None:
        _check_label_range(model, "eval_dataset", eval_dataset)
    if not isinstance(metric, str):
        raise ValueError(f"metric is a name ('loss', 'accuracy', 'f1', ...), got {type(metric).__name__}; a metric "
                         "function of your own runs on the returned model (result.model)")
    if metric != "loss":
        _metric_function(metric)  # an unknown metric name fails here
        if eval_dataset is not None and getattr(model.config, "num_labels", None) == 1:
            raise ValueError(f"metric {metric!r} needs classes, but the model has one output (regression): pass "
                             f"metric='loss'")


def _log_dense_target_size(model, groups, batches, refit_target: str) -> None:
    """Say up front how much memory the dense model's activations take for the whole call (a warning above
    :data:`DENSE_TARGETS_WARNING_BYTES`): they grow with the re-fit tokens, the hidden size and the layers."""
    size = dense_target_bytes(model, groups, batches)
    log = logger.warning if size > DENSE_TARGETS_WARNING_BYTES else logger.info
    log("re-fit target %r: the dense model's activations take %.1f MiB of memory for this call (4 bytes per real "
        "token and hidden unit, %d groups); fewer refit_samples, or refit_target='same_input', hold less",
        refit_target, size / 1024 ** 2, len(groups))
