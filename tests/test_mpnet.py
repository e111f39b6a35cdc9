"""MPNet (all-mpnet-base-v2's family): a relative position bias computed once by the encoder and read by every
layer, one column per head. A pruned attention takes its kept heads' columns (also with none left) while the table
stays whole; a sentence-transformers model of it prunes, saves and reloads. The broader family tests
(``ENCODER_FAMILIES``, layers, attention outputs, post-training, positions, factored embeddings) run it too."""

from __future__ import annotations

import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel, attach_masks, compact, save_pruned

from conftest import random_biases, text_batch, tiny_model

TOL = 1e-5


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_each_attention_takes_its_kept_heads_columns_of_the_shared_bias(tmp_path):
    """The encoder's bias has one column per original head: a layer that kept heads 1 and 3 must add columns 1 and
    3 (the stock forward would add the first two, or fail on the shapes)."""
    model = random_biases(tiny_model("mpnet"))
    with torch.no_grad():  # a bias large enough that the wrong columns change the logits
        model.base_model.encoder.relative_attention_bias.weight.normal_(0, 2.0)
    batch = text_batch()
    masks = attach_masks(model, layers=True)
    masks.set("encoder.layer.0.attention", torch.tensor([0.0, 1.0, 0.0, 1.0]))
    masks.set("encoder.layer.1.attention", torch.zeros(4))  # no head left
    masks.set("encoder.layer", torch.tensor([1.0, 1.0, 0.0]))
    expected = logits(model, batch)
    compact(model)
    encoder = model.base_model.encoder
    assert encoder.relative_attention_bias.weight.shape == (32, 4), "the shared table stays whole"
    assert encoder.layer[0].attention.attn.adaprune_kept_heads == [1, 3]
    assert encoder.layer[0].attention.attn.q.out_features == 16 and len(encoder.layer) == 2
    assert (logits(model, batch) - expected).abs().max() <= TOL
    save_pruned(model, tmp_path)
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path),
                   transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)):
        assert (logits(loaded.eval(), batch) - expected).abs().max() <= TOL


def test_the_kept_heads_index_is_made_once_per_device_and_kept_list(monkeypatch):
    """Each forward built its kept heads' index anew: on a GPU a blocking host-to-device copy per attention and
    generated token."""
    from hf_adaprune.layout import install_shared_bias, kept_heads_index

    model = tiny_model("mpnet")
    attach_masks(model).set("encoder.layer.0.attention", torch.tensor([0.0, 1.0, 0.0, 1.0]))
    compact(model)
    attention = model.base_model.encoder.layer[0].attention.attn
    made = []
    tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *args, **kwargs: made.append(args) or tensor(*args, **kwargs))
    for _ in range(3):
        logits(model, text_batch())
    index = kept_heads_index(attention, torch.device("cpu"))
    assert index.tolist() == [1, 3] and len([a for a in made if a and a[0] == [1, 3]]) <= 1
    assert kept_heads_index(attention, torch.device("cpu")) is index
    install_shared_bias(attention, type(attention), [3], 4)  # another kept list: another index
    assert kept_heads_index(attention, torch.device("cpu")).tolist() == [3]


def test_a_forward_under_inference_mode_leaves_the_model_trainable(tmp_path):
    """The kept heads' index made in a first forward under inference mode (an evaluator's encode, a latency timing)
    is an inference tensor: every later training forward failed ('Inference tensors cannot be saved for
    backward'), in memory and from a folder's remote code."""
    model = tiny_model("mpnet")
    attach_masks(model).set("encoder.layer.0.attention", torch.tensor([0.0, 1.0, 0.0, 1.0]))
    compact(model)
    save_pruned(model, tmp_path)
    batch = text_batch()
    for loaded in (model, transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path,
                                                                                        trust_remote_code=True)):
        with torch.inference_mode():
            loaded.eval()(**batch)
        loaded.train()(**batch, labels=torch.tensor([0, 1, 2])).loss.backward()
        assert loaded.base_model.encoder.layer[0].attention.attn.q.weight.grad is not None


def test_a_sentence_transformer_of_mpnet_prunes_and_reloads(tmp_path):
    pytest.importorskip("sentence_transformers")
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from hf_adaprune.sentence_transformers import AdaptivePruningSentenceTransformerTrainer
    from test_sentence_transformers import make_args, save_tiny_encoder, sentences, tiny_sentence_transformer

    folder = save_tiny_encoder(tmp_path / "mpnet", transformers.MPNetModel, transformers.MPNetConfig)
    model = tiny_sentence_transformer(folder)
    corpus = sentences(64)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path / "out"), train_dataset=Dataset.from_dict({"sentence": corpus}),
        eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}))
    trainer.train()
    inner = model[0].auto_model
    heads = [layer.attention.attn.num_attention_heads for layer in inner.encoder.layer]
    widths = [layer.intermediate.dense.out_features for layer in inner.encoder.layer]
    assert sum(heads) < 8 or sum(widths) < 74, "something was removed"
    trainer.save_model()
    probe = sentences(6, seed=3)
    expected = model.encode(probe, convert_to_tensor=True)
    stock = SentenceTransformer(str(tmp_path / "out"), trust_remote_code=True, device="cpu")
    assert torch.allclose(stock.encode(probe, convert_to_tensor=True), expected, atol=1e-5, rtol=0)


def test_positions_count_from_mpnets_own_padding_index():
    """MPNet's embeddings count positions from padding_idx 1 whatever pad_token_id says: with pad_token_id 0 the
    last readable position was promised one too many (an IndexError in the forward)."""
    from hf_adaprune.deploy import prune_positions
    from hf_adaprune.families import check_sequence_length, readable_positions

    model = tiny_model("mpnet", pad_token_id=0)
    assert readable_positions(model.config) == 62  # 64 rows, positions from 2
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        check_sequence_length(model, 63)
    batch = text_batch(seq=10)
    expected = logits(model, batch)
    assert prune_positions(model, 10) == 12
    assert torch.equal(logits(model, batch), expected)
