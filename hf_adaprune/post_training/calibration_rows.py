"""Which training rows to calibrate on: a random sample, with a share of long rows added.

The re-fit (:mod:`.refit`) solves each pruned projection's least squares on the calibration
tokens, so it fits the inputs it is shown. SST-2's training rows are mostly short phrases
(median 7 words; its test sentences: 19), and a model calibrated on a random sample of them
kept less accuracy on whole sentences than on phrases; calibrated on long rows only, it lost
8 points on phrases. :func:`length_mixed_calibration` takes half of the rows at random and
half from the longest fifth, which kept more accuracy on both in ``benchmarks/calibration_lengths.py``
(figures in the README, "Pruning without training").
"""

from __future__ import annotations

import numbers
import random

import numpy as np

LONG_FRACTION = 0.2  # the rows that count as long: the longest fifth


def length_mixed_calibration(dataset, samples: int, *, long_share: float = 0.5, long_fraction: float = LONG_FRACTION,
                             seed: int = 0, length_column: str = "input_ids"):
    """``samples`` rows of ``dataset`` (a tokenized ``datasets.Dataset``, or a list of tokenized examples),
    shuffled: ``long_share`` of them drawn from the longest ``long_fraction`` of its rows (by the length of
    ``length_column``; ``input_ids`` by the sum of ``attention_mask`` where the rows have one), the others from the
    remaining rows; no row twice. ``long_share=0`` gives a plain random sample.

    Pass the result as ``post_training_prune``'s calibration dataset; it is shuffled, so the re-fit's first
    ``refit_samples`` rows hold both kinds.
    """
    if not 0.0 <= long_share <= 1.0:
        raise ValueError(f"long_share is the fraction of calibration rows drawn from the long ones; it must lie in "
                         f"[0, 1], got {long_share}")
    if not 0.0 < long_fraction <= 1.0:
        raise ValueError(f"long_fraction is the share of the dataset's rows that count as long; it must lie in "
                         f"(0, 1], got {long_fraction}")
    rows_of_dicts = isinstance(dataset, (list, tuple))  # post_training_prune takes lists of examples too
    columns = sorted(dataset[0]) if rows_of_dicts and dataset else getattr(dataset, "column_names", [])
    if length_column not in columns:
        raise ValueError(f"the dataset has no column {length_column!r} to measure lengths by (columns: "
                         f"{', '.join(columns)}); tokenize it first or pass length_column")
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or not 1 <= samples <= len(dataset):
        raise ValueError(f"samples must be a whole number between 1 and the dataset's {len(dataset)} rows, "
                         f"got {samples!r}")
    lengths = row_lengths(dataset, length_column)
    chosen = length_mixed_rows(lengths, int(samples), long_share=long_share, long_fraction=long_fraction, seed=seed)
    return [dataset[i] for i in chosen] if rows_of_dicts else dataset.select(chosen)


def length_mixed_rows(lengths: list[int], samples: int, *, long_share: float, long_fraction: float = LONG_FRACTION,
                      seed: int = 0) -> list[int]:
    """The row indices :func:`length_mixed_calibration` draws, from the rows' ``lengths`` (shuffled, no row twice)."""
    rng = random.Random(seed)
    if long_share == 0:  # a plain random sample: long rows as likely as any other
        chosen = rng.sample(range(len(lengths)), samples)
    else:
        by_length = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        long_rows = by_length[:long_row_count(len(lengths), long_fraction)]
        other_rows = by_length[len(long_rows):]
        wanted_long = round(long_share * samples)
        if wanted_long > len(long_rows) or samples - wanted_long > len(other_rows):
            raise ValueError(f"{samples} rows with long_share {long_share} need {wanted_long} of the {len(long_rows)} "
                             f"long rows and {samples - wanted_long} of the {len(other_rows)} others; ask for fewer "
                             "samples or change long_share / long_fraction")
        chosen = rng.sample(long_rows, wanted_long) + rng.sample(other_rows, samples - wanted_long)
    rng.shuffle(chosen)
    return chosen


def long_row_count(rows: int, long_fraction: float = LONG_FRACTION) -> int:
    """How many of ``rows`` rows count as long: the longest ``long_fraction`` of them, at least one."""
    return max(1, round(long_fraction * rows))


def row_lengths(dataset, column: str = "input_ids") -> list[int]:
    """The length of ``column`` in every row of ``dataset``: read as a column where the dataset has columns (a
    ``datasets.Dataset``), row by row otherwise (a list of examples, another map-style dataset). ``input_ids`` are
    measured by their real tokens, the sum of the row's ``attention_mask`` where it has one (rows padded to one
    length)."""
    mask = "attention_mask" if column == "input_ids" else None
    if column in (getattr(dataset, "column_names", None) or ()):
        if mask in dataset.column_names:
            return [real_tokens(value) for value in dataset[mask]]
        return [len(value) for value in dataset[column]]
    rows = (dataset[i] for i in range(len(dataset)))
    return [real_tokens(row[mask]) if mask in row else len(row[column]) for row in rows]


def real_tokens(attention_mask) -> int:
    """The tokens an attention mask lets the model read (a list, array or tensor of ones and zeros)."""
    return int(np.asarray(attention_mask).sum())
