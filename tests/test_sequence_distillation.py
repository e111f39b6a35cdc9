"""Sequence-level distillation: the teacher's translations become the training labels."""

from __future__ import annotations

import pytest
import torch
import transformers
from datasets import Dataset

from hf_adaprune.sequence_distillation import generated_labels, sequence_distillation_targets

PAD, EOS, VOCAB = 0, 1, 60


def tiny_translator(seed: int = 0):
    """A tiny Marian with weights large enough that greedy decoding varies with the source."""
    torch.manual_seed(seed)
    config = transformers.MarianConfig(
        vocab_size=VOCAB, decoder_vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
        max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
        scale_embedding=True)
    model = transformers.MarianMTModel(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and "embed_positions" not in name:
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model


def sources(rows: int = 7, seed: int = 3) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    input_ids = []
    for i in range(rows):
        length = 2 + (i * 5) % 9  # mixed lengths, so batches pad
        input_ids.append(torch.randint(2, VOCAB, (length,), generator=generator).tolist() + [EOS])
    return Dataset.from_dict({"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids],
                              "labels": [[5, EOS]] * rows, "decoder_attention_mask": [[1, 1]] * rows})


def one_by_one(model, dataset: Dataset, max_length: int) -> list[list[int]]:
    """Each row generated alone (no padding), as the labels should read."""
    rows = []
    with torch.no_grad():
        for ids in dataset["input_ids"]:
            sequence = model.generate(torch.tensor([ids]), max_length=max_length)
            rows += generated_labels(sequence, PAD, PAD, EOS)
    return rows


def test_labels_are_the_teachers_translations_of_each_row_in_order():
    model = tiny_translator()
    model.train()  # the teacher is switched to eval mode for generating and put back afterwards
    dataset = sources()
    out = sequence_distillation_targets(model, dataset, batch_size=3, max_length=12, progress=False)
    assert model.training
    model.eval()
    expected = one_by_one(model, dataset, max_length=12)
    assert out["labels"] == expected
    assert len({tuple(row) for row in expected}) > 1  # the tiny model's translations do vary with the source
    assert out["input_ids"] == dataset["input_ids"] and out["attention_mask"] == dataset["attention_mask"]
    assert "decoder_attention_mask" not in out.column_names  # it described the old labels
    for row in out["labels"]:
        assert row[0] != PAD and PAD not in row  # no decoder start token, no padding
        assert row.count(EOS) <= 1 and (EOS not in row or row[-1] == EOS)


def test_labels_do_not_depend_on_the_batch_size():
    model = tiny_translator(seed=1).eval()
    dataset = sources(rows=5, seed=4)
    one = sequence_distillation_targets(model, dataset, batch_size=1, max_length=10, progress=False)
    many = sequence_distillation_targets(model, dataset, batch_size=4, max_length=10, progress=False)
    assert one["labels"] == many["labels"]


def test_a_teacher_configured_to_sample_is_searched_greedily():
    """A generation config with do_sample=True made the targets depend on the random state (another set on each
    process); the targets are the greedy search's unless the call asks for sampling."""
    model = tiny_translator(seed=1).eval()
    dataset = sources(rows=6, seed=5)
    expected = one_by_one(model, dataset, max_length=10)
    model.generation_config.do_sample, model.generation_config.top_k = True, 0
    for seed in (0, 1):
        torch.manual_seed(seed)
        assert sequence_distillation_targets(model, dataset, batch_size=3, max_length=10,
                                             progress=False)["labels"] == expected


def test_generated_labels_strip_the_start_token_and_what_follows_the_end():
    sequences = torch.tensor([[PAD, 7, 8, EOS, PAD, PAD], [PAD, 9, EOS, 4, 4, 4], [PAD, 3, 3, 3, PAD, PAD]])
    assert generated_labels(sequences, PAD, PAD, EOS) == [[7, 8, EOS], [9, EOS], [3, 3, 3]]
    # a start token other than the pad token is stripped only where it opens the row
    assert generated_labels(torch.tensor([[2, 7, 2, EOS]]), 2, PAD, EOS) == [[7, 2, EOS]]


def test_rows_padded_when_tokenized_are_read_as_their_mask_says():
    model = tiny_translator(seed=2).eval()
    dataset = sources(rows=6, seed=5)
    longest = max(len(ids) for ids in dataset["input_ids"])
    padded = Dataset.from_dict({
        "input_ids": [ids + [PAD] * (longest - len(ids)) for ids in dataset["input_ids"]],
        "attention_mask": [[1] * len(ids) + [0] * (longest - len(ids)) for ids in dataset["input_ids"]]})
    expected = sequence_distillation_targets(model, dataset, batch_size=6, max_length=10, progress=False)["labels"]
    for data in (padded, padded.with_format("torch")):
        labels = sequence_distillation_targets(model, data, batch_size=4, max_length=10, progress=False)["labels"]
        assert [[int(i) for i in row] for row in labels] == expected


def test_refuses_what_it_cannot_translate():
    model = tiny_translator()
    with pytest.raises(ValueError, match=r"lacks \(columns: text\): tokenize it first"):
        sequence_distillation_targets(model, Dataset.from_dict({"text": ["a b"]}), progress=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1; got 0"):
        sequence_distillation_targets(model, sources(), batch_size=0, progress=False)
    for option, value in (("num_return_sequences", 2), ("return_dict_in_generate", True)):
        with pytest.raises(ValueError, match=f"{option}={value!r}: sequence distillation keeps one translation"):
            sequence_distillation_targets(model, sources(), num_beams=2, progress=False, **{option: value})
    whisper = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
        max_source_positions=16, max_target_positions=16, pad_token_id=PAD, bos_token_id=EOS, eos_token_id=EOS,
        decoder_start_token_id=EOS))
    with pytest.raises(ValueError, match="WhisperForConditionalGeneration reads input_features, not token ids"):
        sequence_distillation_targets(whisper, sources(), progress=False)
    decoder_only = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(ValueError, match="needs an encoder-decoder .*GPT2LMHeadModel is not one"):
        sequence_distillation_targets(decoder_only, sources(), progress=False)


def test_a_row_without_tokens_is_refused_before_any_translation():
    model = tiny_translator().train()
    rows = sources()
    empty = Dataset.from_dict({"input_ids": rows["input_ids"][:2] + [[]] + rows["input_ids"][2:]})
    with pytest.raises(ValueError, match=r"1 row\(s\) have no token to translate \(row 2 first\): drop empty source"):
        sequence_distillation_targets(model, empty, progress=False)
    masked = Dataset.from_dict({"input_ids": [[5, 6, EOS], [7, 8, EOS]], "attention_mask": [[1, 1, 1], [0, 0, 0]]})
    with pytest.raises(ValueError, match=r"\(row 1 first\)"):
        sequence_distillation_targets(model, masked, progress=False)
    assert model.training  # the refused calls left the teacher in the mode it was given (it was left in eval)



def test_token_ids_passed_to_generate_are_the_ones_stripped_and_cut():
    """decoder_start_token_id / eos_token_id / pad_token_id given with the generate arguments (or in their
    generation_config) were passed to generate but the labels were cleaned with the teacher's own ids: the start
    token stayed in the labels, an end token did not end the row, a pad id given only there was refused."""
    model = tiny_translator().eval()
    dataset = sources(rows=4, seed=5)
    start = 7
    with torch.no_grad():
        raw = [model.generate(torch.tensor([ids]), max_length=8, decoder_start_token_id=start)[0].tolist()
               for ids in dataset["input_ids"]]
    assert all(row[0] == start for row in raw)
    expected = [row[1:] for row in raw]
    expected = [row[:row.index(EOS) + 1] if EOS in row else [t for t in row if t != PAD] for row in expected]
    kwargs = sequence_distillation_targets(model, dataset, max_length=8, progress=False, decoder_start_token_id=start)
    assert kwargs["labels"] == expected
    config = transformers.GenerationConfig(**{**model.generation_config.to_dict(), "decoder_start_token_id": start,
                                              "max_length": 8})
    in_config = sequence_distillation_targets(model, dataset, progress=False, generation_config=config)
    assert in_config["labels"] == expected
    # an end token given only to generate (here a list, as generate takes it) ends each row at the first of them
    greedy = sequence_distillation_targets(model, dataset, max_length=8, progress=False)["labels"]
    token = next(t for row in greedy for t in row[:-1] if t not in (EOS, PAD))
    cut = sequence_distillation_targets(model, dataset, max_length=8, progress=False, eos_token_id=[token, EOS])
    for full, row in zip(greedy, cut["labels"]):
        ends = [full.index(t) for t in (token, EOS) if t in full]
        assert row == (full[:min(ends) + 1] if ends else full)
    assert any(len(row) < len(full) for full, row in zip(greedy, cut["labels"]))
    # a pad id given only with the generate arguments is used instead of refusing the teacher
    model.config.pad_token_id = model.generation_config.pad_token_id = None
    padded = sequence_distillation_targets(model, dataset, max_length=8, progress=False, pad_token_id=PAD)
    assert padded["labels"] == greedy
