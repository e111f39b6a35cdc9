"""length_mixed_calibration: which rows it draws, reproducibly, and the refusals."""

import pytest
from datasets import Dataset

from hf_adaprune.post_training import length_mixed_calibration


def rows_of_lengths(count: int = 100) -> Dataset:
    # row i has i + 1 tokens, so the longest fifth of 100 rows is rows 80..99
    return Dataset.from_dict({"input_ids": [[7] * (i + 1) for i in range(count)], "row": list(range(count))})


def test_half_from_the_longest_fifth_the_rest_from_the_others():
    chosen = length_mixed_calibration(rows_of_lengths(), 20, long_share=0.5, long_fraction=0.2, seed=3)
    rows = chosen["row"]
    assert len(rows) == len(set(rows)) == 20
    assert sum(r >= 80 for r in rows) == 10
    assert sum(r < 80 for r in rows) == 10
    assert rows != sorted(rows)  # shuffled: the re-fit's first rows hold both kinds
    lengths = [len(ids) for ids in chosen["input_ids"]]
    assert lengths == [r + 1 for r in rows]  # whole rows, not just indices


def test_share_zero_is_a_plain_sample_and_share_one_only_long_rows():
    drawn = [r for seed in range(20) for r in length_mixed_calibration(rows_of_lengths(), 30, long_share=0.0,
                                                                        seed=seed)["row"]]
    assert 0.1 < sum(r >= 80 for r in drawn) / len(drawn) < 0.3  # the longest fifth as often as the rest (0.2)
    assert len(set(length_mixed_calibration(rows_of_lengths(), 90, long_share=0.0, seed=0)["row"])) == 90
    only_long = length_mixed_calibration(rows_of_lengths(), 20, long_share=1.0, seed=0)
    assert sorted(only_long["row"]) == list(range(80, 100))


def test_same_seed_same_rows_other_seed_other_rows():
    data = rows_of_lengths()
    first = length_mixed_calibration(data, 20, seed=1)["row"]
    assert length_mixed_calibration(data, 20, seed=1)["row"] == first
    assert length_mixed_calibration(data, 20, seed=2)["row"] != first


@pytest.mark.parametrize("kwargs, message", [
    ({"samples": 10, "long_share": 1.5}, "long_share .* must lie in \\[0, 1\\], got 1.5"),
    ({"samples": 10, "long_fraction": 0.0}, "long_fraction .* must lie in \\(0, 1\\], got 0.0"),
    ({"samples": 0}, "samples must be a whole number between 1 and the dataset's 100 rows, got 0"),
    ({"samples": 101}, "samples must be a whole number between 1 and the dataset's 100 rows, got 101"),
    ({"samples": 10.5}, "samples must be a whole number .* got 10.5"),
    ({"samples": 50, "long_share": 0.5}, "need 25 of the 20 long rows"),
    ({"samples": 10, "length_column": "tokens"}, "no column 'tokens' .*columns: input_ids, row"),
])
def test_bad_requests_are_refused_with_what_is_wrong(kwargs, message):
    samples = kwargs.pop("samples")
    with pytest.raises(ValueError, match=message):
        length_mixed_calibration(rows_of_lengths(), samples, **kwargs)


def test_a_list_of_examples_gives_a_list_of_the_same_rows():
    data = rows_of_lengths()
    as_list = [data[i] for i in range(len(data))]
    chosen = length_mixed_calibration(as_list, 20, seed=3)
    assert isinstance(chosen, list)
    assert [row["row"] for row in chosen] == length_mixed_calibration(data, 20, seed=3)["row"]


def test_a_numpy_count_is_taken_like_an_int():
    import numpy as np

    data = rows_of_lengths()
    assert length_mixed_calibration(data, np.int64(20), seed=1)["row"] == length_mixed_calibration(data, 20, seed=1)["row"]
