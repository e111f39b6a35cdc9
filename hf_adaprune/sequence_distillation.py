"""Sequence-level distillation: the dense model's own translations as the training targets.

Kim & Rush (2016) train a smaller translation model on what the large one generates
instead of the human references: the student then learns one consistent output per
source (the teacher's mode) instead of the references' spread, which a model with
fewer decoder layers fits far better. ``sequence_distillation_targets`` translates a
tokenized training set with the teacher (greedy or beam search, under ``no_grad`` in
eval mode, longest-first batches) and returns it with the teacher's tokens as ``labels``;
the pruning trainer then trains on it like on any other dataset.

Text-to-text models only (Marian, BART, T5, ...): the dataset needs ``input_ids``.
"""

from __future__ import annotations

import copy

import torch
from datasets import Dataset
from transformers.utils.logging import tqdm  # off under disable_progress_bar()
from .families.registry import check_transformers_model
from .modes import restore_modes, training_modes
from .token_ids import token_id_list

LABEL_COLUMNS = ("labels", "decoder_input_ids", "decoder_attention_mask")
# families whose forward builds the decoder input by moving each label row's last token to its front (mBART's
# shift_tokens_right): a row must end with the decoder start token (mBART's target-language code)
WRAPPED_START_TYPES = ("mbart", "plbart")


def _batch_inputs(rows: dict, pad_token_id: int, device) -> dict:
    """``input_ids`` / ``attention_mask`` of ``rows`` padded on the right, as tensors on ``device``; a row's own
    ``attention_mask`` (a dataset padded when tokenized) says which of its ids are read."""
    sources = [torch.as_tensor(ids).flatten() for ids in rows["input_ids"]]
    if "attention_mask" in rows:
        sources = [ids[torch.as_tensor(mask).flatten().bool()] for ids, mask in zip(sources, rows["attention_mask"])]
    longest = max(len(ids) for ids in sources)
    input_ids = torch.full((len(sources), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(sources):
        input_ids[i, :len(ids)] = ids
        attention_mask[i, :len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def _generation_setting(name: str, teacher, generate_kwargs: dict):
    """The ``name`` id ``generate`` uses: ``generate_kwargs``, then their ``generation_config``, then the teacher's
    generation config, then its config (the first that is not None)."""
    sources = (generate_kwargs, generate_kwargs.get("generation_config"), teacher.generation_config, teacher.config)
    for source in sources:
        if source is None:
            continue
        value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
        if value is not None:
            return value
    return None


def generated_labels(sequences: torch.Tensor, decoder_start_token_id: int | None, pad_token_id: int,
                     eos_token_id: int | list[int] | None, wrapped_start: bool = False) -> list[list[int]]:
    """The label rows of ``generate``'s output: the decoder start token and the padding after the end removed.

    ``eos_token_id`` may be several ids (as ``generate`` takes it): a row ends at the first of any of them.
    ``wrapped_start`` (mBART): the start token goes to the end of the row instead, where the model's shift takes
    it from (mBART's labels end with ``</s> de_DE``; mBART-50's start token is ``</s>`` itself)."""
    ends = set(token_id_list(eos_token_id))
    rows = []
    for sequence in sequences.tolist():
        if decoder_start_token_id is not None and sequence and sequence[0] == decoder_start_token_id:
            sequence = sequence[1:]
        end = next((i for i, token in enumerate(sequence) if token in ends), None)
        if end is not None:
            sequence = sequence[:end + 1]
        else:  # stopped by the length limit: no end token, only trailing padding to drop
            while sequence and sequence[-1] == pad_token_id:
                sequence.pop()
        if wrapped_start and decoder_start_token_id is not None and sequence[-1:] != [decoder_start_token_id]:
            sequence.append(decoder_start_token_id)
        rows.append(sequence)
    return rows


@torch.no_grad()
def sequence_distillation_targets(teacher, dataset: Dataset, *, batch_size: int = 64, progress: bool = True,
                                  **generate_kwargs) -> Dataset:
    """``dataset`` with ``labels`` replaced by ``teacher.generate``'s tokens for each row's ``input_ids``.

    ``generate_kwargs`` go to ``generate`` (``max_length``, ``num_beams``, ...; the
    teacher's generation config otherwise; one sequence per row). The search is greedy or beam
    search, never sampling, whatever the teacher's generation config says (``do_sample=False`` unless
    ``generate_kwargs`` sets it), so the targets do not depend on the random state. Each row is read as its
    ``attention_mask`` says, where it has one. Rows keep their order; the teacher is put
    back into the mode it was in.
    """
    check_transformers_model(teacher, "sequence_distillation_targets")
    if not getattr(teacher.config, "is_encoder_decoder", False):
        raise ValueError(f"sequence distillation needs an encoder-decoder (text-to-text) teacher; "
                         f"{type(teacher).__name__} is not one")
    if teacher.main_input_name != "input_ids":
        raise ValueError(f"sequence distillation translates text: {type(teacher).__name__} reads "
                         f"{teacher.main_input_name}, not token ids (text-to-text teachers only)")
    several = ["num_return_sequences"] if generate_kwargs.get("num_return_sequences") not in (None, 1) else []
    several += [name for name in ("return_dict_in_generate", "output_scores") if generate_kwargs.get(name)]
    if several:
        raise ValueError(f"{several[0]}={generate_kwargs[several[0]]!r}: sequence distillation keeps one "
                         "translation per row (the best beam); leave it out")
    if "input_ids" not in dataset.column_names:
        raise ValueError(f"sequence distillation translates the rows' input_ids, which the dataset lacks "
                         f"(columns: {', '.join(dataset.column_names)}): tokenize it first")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    # the ids generate uses: a generate_kwargs value (or their generation_config's) before the teacher's own
    pad_token_id = _generation_setting("pad_token_id", teacher, generate_kwargs)
    if pad_token_id is None:
        raise ValueError("the teacher has no pad_token_id (config or generation config): set one, or pass "
                         "pad_token_id=... with the generate arguments")
    pad_token_id = token_id_list(pad_token_id)[0]
    start = _generation_setting("decoder_start_token_id", teacher, generate_kwargs)
    starts = token_id_list(start)
    if len(set(starts)) > 1:
        raise ValueError(f"decoder_start_token_id={start!r}: sequence distillation needs one decoder start token "
                         "for all rows (rows are batched longest first, not in order); pass a single id")
    start = starts[0] if starts else None
    eos = token_id_list(_generation_setting("eos_token_id", teacher, generate_kwargs))

    if "do_sample" not in generate_kwargs and generate_kwargs.get("generation_config") is not None:
        # set in the config: generate deprecates a generation_config passed together with generation arguments
        generation_config = copy.deepcopy(generate_kwargs["generation_config"])
        generation_config.do_sample = False
        generate_kwargs = {**generate_kwargs, "generation_config": generation_config}
    else:
        generate_kwargs = {"do_sample": False, **generate_kwargs}
    device = next(teacher.parameters()).device
    columns = {name: dataset[name] for name in ("input_ids", "attention_mask") if name in dataset.column_names}
    empty = [i for i, ids in enumerate(columns["input_ids"]) if len(ids) == 0 or (
        "attention_mask" in columns and not any(columns["attention_mask"][i]))]
    if empty:  # generate would crash on a batch of them, or translate a fully masked row into batch-dependent noise
        raise ValueError(f"{len(empty)} row(s) have no token to translate (row {empty[0]} first): drop empty source "
                         "lines, or tokenize with the special tokens (add_special_tokens=True gives them </s>)")
    order = sorted(range(len(dataset)), key=lambda i: -len(columns["input_ids"][i]))  # an out-of-memory shows at once
    labels: list[list[int] | None] = [None] * len(dataset)
    modes = training_modes(teacher)
    teacher.eval()
    try:
        for begin in tqdm(range(0, len(order), batch_size), desc="sequence distillation: teacher targets",
                          disable=not progress):
            indices = order[begin:begin + batch_size]
            rows = {name: [values[i] for i in indices] for name, values in columns.items()}
            sequences = teacher.generate(**_batch_inputs(rows, pad_token_id, device), **generate_kwargs)
            for index, row in zip(indices, generated_labels(sequences, start, pad_token_id, eos,
                                                            teacher.config.model_type in WRAPPED_START_TYPES)):
                labels[index] = row
    finally:
        restore_modes(modes)
    kept = [name for name in dataset.column_names if name not in LABEL_COLUMNS]
    return dataset.select_columns(kept).add_column("labels", labels)
