"""post_training_prune's rows in the forms it accepts: which label column is read, torch datasets (every row checked,
refit_samples), boolean class ids, datasets with a transform; length_mixed_calibration on rows padded to one length."""

from __future__ import annotations

import datasets
import pytest
import torch
import transformers
from conftest import tiny_model
from test_post_training import labelled_examples, pad_collator

from hf_adaprune.post_training import length_mixed_calibration, post_training_prune

COMMON = dict(seq_len=16, progress=False)
WIDTH = 16  # labelled_examples' rows hold 4 to 13 tokens
NAMES = ["neg", "pos", "mixed"]


def word_tokenizer():
    """A WordPiece tokenizer over the tiny models' 99 ids (its pad token is id 0), built without the Hub."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, 99)]
    return transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})


def padded(rows: list[dict], width: int = WIDTH) -> list[dict]:
    """The rows' ids padded to ``width`` with their attention mask, as tokenizer(..., padding="max_length") gives."""
    return [{"input_ids": row["input_ids"] + [0] * (width - len(row["input_ids"])),
             "attention_mask": [1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"])),
             "labels": row["labels"]} for row in rows]


def hand_accuracy(model, rows: list[dict], key: str) -> float:
    with torch.no_grad():
        predicted = model(**{k: v for k, v in pad_collator(rows).items() if k != "labels"}).logits.argmax(-1)
    return float((predicted == torch.tensor([row[key] for row in rows])).float().mean())


def assert_same_pruning(result, expected):
    assert result.scores.keys() == expected.scores.keys()
    for name, scores in expected.scores.items():
        torch.testing.assert_close(result.scores[name], scores)
    assert result.refit_errors == pytest.approx(expected.refit_errors)
    assert result.reference == expected.reference


class ColumnsDataset(torch.utils.data.Dataset):
    """The Transformers tutorials' torch Dataset: columns of equal-length rows, a row of tensors by index (a slice
    gives a dict of columns, not rows)."""

    def __init__(self, rows: list[dict]):
        self.columns = {key: [row[key] for row in rows] for key in rows[0]}

    def __getitem__(self, index):
        return {key: torch.tensor(values[index]) for key, values in self.columns.items()}

    def __len__(self):
        return len(self.columns["input_ids"])


class RowsDataset(torch.utils.data.Dataset):
    """A map-style torch Dataset of row dicts as they are."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __getitem__(self, index):
        return self.rows[index]

    def __len__(self):
        return len(self.rows)


def test_of_two_label_columns_the_first_is_scored_and_checked_whatever_the_collator():
    """``labels`` holds the model's class ids, ``label`` the data's own (kept after a remap): the check read
    ``labels``, but DataCollatorWithPadding put ``label`` over it, so the reference was the accuracy against ``label``
    and the scores gradients against the wrong classes."""
    model = tiny_model("bert")
    rows = labelled_examples(48)
    both = [dict(row, label=(row["labels"] + 1) % 3) for row in rows]
    assert hand_accuracy(model, both, "labels") != hand_accuracy(model, both, "label")
    common = dict(eval_dataset=both, tokenizer=word_tokenizer(), **COMMON)
    result = post_training_prune(model, both, 0.3, **common)
    assert result.reference == pytest.approx(hand_accuracy(model, both, "labels"))
    assert_same_pruning(result, post_training_prune(model, rows, 0.3, **dict(common, eval_dataset=rows)))


@pytest.mark.parametrize("collation", ["tokenizer", "stacked"])
def test_text_names_beside_the_class_ids_are_left_out_of_the_batches(collation):
    """``label`` keeps the data's text names beside the class ids in ``labels``: the names reached the collator,
    which failed on them deep inside ("excessive nesting" / "too many dimensions 'str'")."""
    model = tiny_model("bert")
    rows = labelled_examples(32) if collation == "tokenizer" else padded(labelled_examples(32))
    named = datasets.Dataset.from_list([dict(row, label=NAMES[row["labels"]]) for row in rows])
    common = dict(tokenizer=word_tokenizer()) if collation == "tokenizer" else {}
    result = post_training_prune(model, named, 0.3, eval_dataset=named, **common, **COMMON)
    expected = post_training_prune(model, rows, 0.3, eval_dataset=rows, **common, **COMMON)
    assert_same_pruning(result, expected)


@pytest.mark.parametrize("form", ["tutorial torch Dataset", "Subset of a datasets.Dataset"])
def test_refit_samples_of_a_torch_dataset_are_its_first_rows(form):
    """``dataset[:count]`` of these is a dict of columns, not rows: the re-fit failed with ``KeyError: 0``."""
    rows = padded(labelled_examples(40))
    if form == "tutorial torch Dataset":
        data = ColumnsDataset(rows)
    else:
        data = torch.utils.data.Subset(datasets.Dataset.from_list(rows), range(len(rows)))
    model = tiny_model("bert")
    result = post_training_prune(model, data, 0.5, refit_samples=12, **COMMON)
    expected = post_training_prune(model, rows, 0.5, refit_samples=12, **COMMON)
    assert result.refit_errors and result.refit_errors == pytest.approx(expected.refit_errors)
    batch = pad_collator(rows[:4])
    with torch.no_grad():
        torch.testing.assert_close(result.model(**batch).logits, expected.model(**batch).logits)


@pytest.mark.parametrize("bad_row, message", [
    ({"input_ids": list(range(5, 75)), "labels": 1}, r"holds a row of 70 tokens, but the model reads at most 64"),
    ({"input_ids": [5, 6, 7], "text": "unlabelled"}, r"example 5 has no label column: its columns are \['input_ids', "
                                                     r"'text'\]"),
])
def test_every_row_of_a_torch_dataset_is_checked_before_any_forward_pass(bad_row, message):
    """Only row 0 of a torch Dataset was read: a later over-long or unlabelled row failed inside the forward or
    the collator."""
    rows = labelled_examples(8)
    rows[5] = bad_row
    model = tiny_model("bert")
    model.register_forward_pre_hook(lambda *args: pytest.fail("a forward pass ran"))
    with pytest.raises(ValueError, match=message):
        post_training_prune(model, RowsDataset(rows), 0.5, data_collator=pad_collator, **COMMON)


def test_a_torch_dataset_is_read_once():
    """A torch Dataset may tokenize in __getitem__: its rows are read once, then the checks and batches read them."""
    reads = []

    class Counting(RowsDataset):
        def __getitem__(self, index):
            reads.append(index)
            return super().__getitem__(index)

    rows = labelled_examples(12)
    post_training_prune(tiny_model("bert"), Counting(rows), 0.5, data_collator=pad_collator, refit_samples=4,
                        eval_dataset=Counting(rows[:6]), **COMMON)
    assert sorted(reads) == sorted(list(range(12)) + list(range(6)))


@pytest.mark.parametrize("form", ["list", "datasets.Dataset"])
def test_boolean_class_ids_are_pruned_as_0_and_1(form):
    """Python bools and datasets' Value('bool') passed the checks, then the loss refused a Bool target."""
    rows = [dict(row, labels=row["labels"] % 2) for row in padded(labelled_examples(32))]
    flags = [dict(row, labels=bool(row["labels"])) for row in rows]
    if form == "datasets.Dataset":
        flags = datasets.Dataset.from_list(flags)
        assert flags.features["labels"].dtype == "bool"
    model = tiny_model("bert")
    result = post_training_prune(model, flags, 0.3, eval_dataset=flags, **COMMON)
    assert_same_pruning(result, post_training_prune(model, rows, 0.3, eval_dataset=rows, **COMMON))


@pytest.mark.parametrize("form", ["list", "datasets.Dataset"])
def test_length_mixed_calibration_measures_padded_rows_by_their_attention_mask(form):
    """Rows padded to one length all measured 100 tokens, so the "long" rows were the first fifth by index."""
    rows = [{"input_ids": [7] * (i + 1) + [0] * (99 - i), "attention_mask": [1] * (i + 1) + [0] * (99 - i), "row": i}
            for i in range(100)]
    data = rows if form == "list" else datasets.Dataset.from_list(rows)
    chosen = length_mixed_calibration(data, 20, long_share=1.0, long_fraction=0.2)
    assert sorted(row["row"] for row in chosen) == list(range(80, 100))


def test_a_dataset_tokenized_by_a_transform_is_pruned_as_its_rows():
    """with_transform / set_transform rows are dicts with input_ids; the dataset was refused as 'custom' format, with
    advice (with_format(None)) that dropped its tokenization."""
    rows = labelled_examples(32)
    raw = datasets.Dataset.from_dict({"words": [" ".join(map(str, row["input_ids"])) for row in rows],
                                      "label": [row["labels"] for row in rows]})

    def tokenize(batch):
        return {"input_ids": [[int(word) for word in words.split()] for words in batch["words"]],
                "labels": batch["label"]}

    tokenized = raw.with_transform(tokenize)
    common = dict(data_collator=pad_collator, refit_samples=16, metric="accuracy", **COMMON)
    model = tiny_model("bert")
    result = post_training_prune(model, tokenized, 0.3, eval_dataset=tokenized, **common)
    assert_same_pruning(result, post_training_prune(model, rows, 0.3, eval_dataset=rows, **common))


def test_a_head_whose_loss_needs_another_label_column_is_named():
    """BertForPreTraining returns a loss only with next_sentence_label beside labels: the message names the column
    the rows lack (it said 'the examples need labels', and they had them)."""
    torch.manual_seed(0)
    from conftest import tiny_config

    model = transformers.BertForPreTraining(tiny_config("bert")).eval()
    rows = [{"input_ids": list(range(5, 11)), "attention_mask": [1] * 6, "labels": list(range(5, 11))}] * 8
    with pytest.raises(ValueError, match="BertForPreTraining computes its loss from labels, next_sentence_label, "
                                         "and the batch lacks next_sentence_label"):
        post_training_prune(model, rows, 0.3, **COMMON)
