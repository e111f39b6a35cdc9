"""ModernBERT: heads of the fused Wqkv (a q, a k and a v block) and neurons of the gated Wi (an input and a gate
block) removed from every block, exactly; scores that sum a structure's rows in each block; whole layers refused
before training; a trained, pruned classifier whose folder loads everywhere and serves a pipeline with a byte-level
BPE tokenizer; post-training pruning (pre-LN: the re-fit matches the next LayerNorm's input); int8, ONNX and
vocabulary. The broader family tests (``ENCODER_FAMILIES``) run it too."""

from __future__ import annotations

import pytest
import torch
import transformers

from hf_adaprune import AdaptivePruningTrainer, AutoPrunedModel, compact, find_groups, save_pruned
from hf_adaprune.engine.importance import structure_sums
from hf_adaprune.engine.masks import structure_count

from conftest import random_biases, text_batch, tiny_model
from encoder_routes import (REFIT_SEARCH, TOL, WORDS, logits, onnx_parity, post_training_round_trip, set_masks,
                            train_prune_and_serve, vocabulary_and_int8_round_trip)
from test_post_training import labelled_examples, pad_collator
from test_trainer import make_args, toy_dataset
HEAD_DIM = 8  # the tiny model's 32 / 4


def modernbert(**overrides):
    return random_biases(tiny_model("modernbert", **overrides))


def bpe_tokenizer():
    """A byte-level BPE tokenizer (as ModernBERT's), trained on a few words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator([" ".join(WORDS)] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_fused_projections_lose_every_block_of_a_structure(implementation, tmp_path):
    model = modernbert()
    model.set_attn_implementation(implementation)
    batch = text_batch()
    masks = set_masks(model, empty="layers.1.attn")
    expected = logits(model, batch)
    heads, neurons = int(masks.masks["layers.0.attn"].sum()), int(masks.masks["layers.0.ffn"].sum())
    compact(model)
    layer = model.model.layers[0]
    assert layer.attn.Wqkv.out_features == 3 * heads * HEAD_DIM and layer.attn.Wo.in_features == heads * HEAD_DIM
    assert layer.mlp.Wi.out_features == 2 * neurons and layer.mlp.Wo.in_features == neurons
    assert (logits(model, batch) - expected).abs().max() <= TOL
    save_pruned(model, tmp_path)
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path),
                   transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)):
        loaded.set_attn_implementation(implementation)
        assert (logits(loaded.eval(), batch) - expected).abs().max() <= TOL


def test_scores_sum_a_structures_rows_in_every_block():
    """Read as one block of 3 x 4 heads (or 2 x 37 neurons), a fused linear's rows went to the wrong structures."""
    model = modernbert()
    base = model.base_model
    attention, ffn = find_groups(model)[:2]
    assert (structure_count(base, attention), structure_count(base, ffn)) == (4, 37)
    magnitude = structure_sums(base, attention, lambda p: p.detach().abs())
    qkv, wo = base.layers[0].attn.Wqkv, base.layers[0].attn.Wo
    for head in range(4):
        rows = [block * 32 + head * HEAD_DIM + i for block in range(3) for i in range(HEAD_DIM)]
        cols = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
        expected = qkv.weight[rows].abs().sum() + qkv.bias[rows].abs().sum() + wo.weight[:, cols].abs().sum()
        assert magnitude[head] == pytest.approx(float(expected.detach()), rel=1e-5)
    magnitude = structure_sums(base, ffn, lambda p: p.detach().abs())
    wi, wo = base.layers[0].mlp.Wi, base.layers[0].mlp.Wo
    for neuron in (0, 20, 36):
        rows = [neuron, 37 + neuron]
        expected = wi.weight[rows].abs().sum() + wi.bias[rows].abs().sum() + wo.weight[:, neuron].abs().sum()
        assert magnitude[neuron] == pytest.approx(float(expected.detach()), rel=1e-5)


def test_whole_layers_are_refused_before_training(tmp_path):
    data = toy_dataset()
    with pytest.raises(ValueError, match="ModernBERT's layers cannot be removed: transformers builds its first layer "
                                         "without an attention LayerNorm"):
        AdaptivePruningTrainer(model=modernbert(), args=make_args(tmp_path, prune="heads,ffn,layers"),
                               train_dataset=data, eval_dataset=data.select(range(16)))


@pytest.mark.parametrize("schedule", [dict(), REFIT_SEARCH])
def test_trainer_prunes_and_the_folder_serves_a_pipeline(tmp_path, schedule):
    train_prune_and_serve(tmp_path, "modernbert", bpe_tokenizer(), **schedule)


def test_post_training_prune_with_the_refit(tmp_path):
    post_training_round_trip(tmp_path, modernbert())


def test_projections_without_a_bias_are_refitted_without_the_constant_term(tmp_path):
    """The released checkpoints have no attention or MLP biases: the re-fit stopped with "has no bias to take the
    re-fit's constant term" (post_training_prune by default, the trainer at its first candidate)."""
    from hf_adaprune import post_training_prune
    from hf_adaprune.post_training.refit import solve_refit

    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(500, 4, generator=generator).double(), torch.randn(3, 4, generator=generator).double()
    kept = torch.tensor([0, 2])
    new_weight, new_bias = solve_refit(weight, None, x.T @ x, kept, ridge=0.0, cross=x.T @ (x @ weight.T))
    expected = torch.linalg.lstsq(x[:, kept], x @ weight.T).solution.T
    torch.testing.assert_close(new_weight, expected)
    assert torch.equal(new_bias, torch.zeros(3).double())
    # nothing kept: zero-width, on the CPU as every fit (a model on a GPU left the weight there, beside CPU stats)
    on_device = torch.empty(3, 4, device="meta")
    empty_weight, empty_bias = solve_refit(on_device, None, x.T @ x, torch.tensor([], dtype=torch.long),
                                           cross=torch.zeros(4, 3).double())
    assert empty_weight.shape == (3, 0) and empty_weight.device.type == empty_bias.device.type == "cpu"

    model = tiny_model("modernbert", attention_bias=False, mlp_bias=False)
    result = post_training_prune(model, labelled_examples(64), 0.5, eval_dataset=labelled_examples(24, seed=5),
                                 data_collator=pad_collator, batch_size=8, seq_len=16, progress=False,
                                 output_dir=tmp_path / "post")
    assert result.refit_errors and all(0 <= error < 1 for error in result.refit_errors.values())
    assert result.model.model.layers[0].attn.Wo.bias is None
    data = toy_dataset()
    trainer = AdaptivePruningTrainer(
        model=tiny_model("modernbert", attention_bias=False, mlp_bias=False),
        args=make_args(tmp_path / "trained", **REFIT_SEARCH),
        train_dataset=data, eval_dataset=data.select(range(48)))
    trainer.train()
    assert trainer.controller.state.ratio > 0


def test_vocabulary_and_int8_of_a_pruned_model(tmp_path):
    tokenizer = bpe_tokenizer()
    model = modernbert(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    set_masks(model, seed=2)
    compact(model)
    vocabulary_and_int8_round_trip(tmp_path, model, tokenizer)


def test_onnx_export_parity(tmp_path):
    model = modernbert()
    set_masks(model, seed=4, empty="layers.2.attn")
    onnx_parity(tmp_path, model)
