"""DeBERTa-v2 / v3: heads (with their separate position projections), FFN neurons and whole layers removed exactly;
then the routes of ``encoder_routes``: a trained, pruned classifier whose folder loads everywhere and serves a
pipeline with its Unigram tokenizer, post-training pruning, vocabulary, int8 and ONNX. The tiny model of
``conftest.tiny_config`` is set up as DeBERTa-v3 (relative positions only, position projections shared with the
content ones); the broader family tests (``ENCODER_FAMILIES``) run it too."""

from __future__ import annotations

import pytest
import transformers

from hf_adaprune import AdaptivePruningTrainer, AutoPrunedModel, compact, save_pruned
from hf_adaprune.families import find_layer_groups

from conftest import random_biases, text_batch, tiny_model
from encoder_routes import (REFIT_SEARCH, TOL, WORDS, logits, onnx_parity, post_training_round_trip, set_masks,
                            train_prune_and_serve, vocabulary_and_int8_round_trip)
from test_trainer import make_args, toy_dataset


def deberta(**overrides):
    return random_biases(tiny_model("deberta-v2", **overrides))


def unigram_tokenizer():
    """A DeBERTa-v3 style tokenizer (tokenizers' Unigram, SentencePiece pieces) of a few words and the letters."""
    vocab = [("[PAD]", 0.0), ("[UNK]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[MASK]", 0.0)]
    vocab += [("\u2581" + w, -2.0 - i * 0.1) for i, w in enumerate(WORDS)]
    vocab += [("\u2581", -5.0)] + [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return transformers.DebertaV2Tokenizer(vocab=vocab)


@pytest.mark.parametrize("pos_att_type", [["c2p"], ["p2c"], ["p2c", "c2p"]])
def test_separate_position_projections_lose_the_rows_of_their_heads(pos_att_type, tmp_path):
    """Without share_att_key each layer has its own pos_key_proj (c2p) / pos_query_proj (p2c), one slice per head:
    left whole, the reshapes by the kept head count fail or mix heads."""
    model = deberta(share_att_key=False, pos_att_type=pos_att_type)
    batch = text_batch()
    masks = set_masks(model, empty="encoder.layer.1.attention")
    expected = logits(model, batch)
    kept = int(masks.masks["encoder.layer.0.attention"].sum())
    compact(model)
    attention = model.base_model.encoder.layer[0].attention.self
    names = [n for n in ("pos_key_proj", "pos_query_proj") if hasattr(attention, n)]
    assert len(names) == len(pos_att_type)
    for name in names:
        assert getattr(attention, name).out_features == kept * 8
    assert attention.num_attention_heads == kept and attention.all_head_size == kept * 8
    assert (logits(model, batch) - expected).abs().max() <= TOL
    save_pruned(model, tmp_path)
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path),
                   transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)):
        assert (logits(loaded.eval(), batch) - expected).abs().max() <= TOL


def test_deberta_v2_absolute_positions_prune_exactly():
    """The DeBERTa-v2 layout without relative attention (absolute positions added to the input)."""
    model = deberta(relative_attention=False, pos_att_type=None, position_biased_input=True)
    batch = text_batch()
    set_masks(model, seed=3)
    expected = logits(model, batch)
    compact(model)
    assert (logits(model, batch) - expected).abs().max() <= TOL


def test_a_convolution_after_the_first_layer_keeps_the_layers(tmp_path):
    """conv_kernel_size > 0 (deberta-v2-xlarge): the encoder convolves the first layer's output, so a removed first
    layer would move the convolution; whole layers are refused before training, heads and neurons still prune."""
    model = deberta(conv_kernel_size=3)
    (stack,) = find_layer_groups(model)
    assert "convolves the first layer's output" in stack.refuse
    data = toy_dataset()
    with pytest.raises(ValueError, match="convolves the first layer's output"):
        AdaptivePruningTrainer(model=model, args=make_args(tmp_path, prune="layers"), train_dataset=data,
                               eval_dataset=data.select(range(16)))
    batch = text_batch()
    set_masks(model, seed=1)
    expected = logits(model, batch)
    compact(model)
    assert (logits(model, batch) - expected).abs().max() <= TOL


def test_sequences_longer_than_max_position_embeddings_are_read():
    """DeBERTa-v3 has no absolute position table: max_position_embeddings limits nothing it reads."""
    from hf_adaprune.families import check_sequence_length, readable_positions

    model = deberta()
    assert readable_positions(model.config) is None
    check_sequence_length(model, 4 * model.config.max_position_embeddings)  # no error
    absolute = deberta(position_biased_input=True)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        check_sequence_length(absolute, 4 * absolute.config.max_position_embeddings)


@pytest.mark.parametrize("schedule", [dict(prune="heads,ffn,layers"), REFIT_SEARCH])
def test_trainer_prunes_and_the_folder_serves_a_pipeline(tmp_path, schedule):
    train_prune_and_serve(tmp_path, "deberta-v2", unigram_tokenizer(), **schedule)


def test_post_training_prune_with_the_refit(tmp_path):
    post_training_round_trip(tmp_path, deberta())


def test_vocabulary_and_int8_of_a_pruned_model(tmp_path):
    tokenizer = unigram_tokenizer()
    model = deberta(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    set_masks(model, seed=2)
    compact(model)
    vocabulary_and_int8_round_trip(tmp_path, model, tokenizer)


def test_onnx_export_parity(tmp_path):
    model = deberta()
    set_masks(model, seed=4, empty="encoder.layer.2.attention")
    onnx_parity(tmp_path, model)
