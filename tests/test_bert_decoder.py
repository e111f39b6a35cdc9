"""BERT-family models built as causal decoders (BertLMHeadModel, RobertaForCausalLM): their self-attentions keep a
KV cache, so a compacted one with every head removed still counts the cached tokens, and the groups say "decoder"."""

from __future__ import annotations

import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel, attach_masks, compact, find_groups, save_pruned
from hf_adaprune.families.registry import filter_groups, find_layer_groups

TOL = 1e-5
PROMPT, NEXT = torch.tensor([[5, 9, 17, 23, 41, 7, 33]]), torch.tensor([[12]])


def tiny_causal_lm(model_type):
    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, is_decoder=True, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@torch.no_grad()
def cached_step(model):
    """The prompt with a cache, then one token reading it: (its logits, the cache length after the prompt)."""
    cache = model(input_ids=PROMPT, use_cache=True).past_key_values
    length = cache.get_seq_length()
    return model(input_ids=NEXT, past_key_values=cache, use_cache=True).logits[0, -1], length


@torch.no_grad()
def full_forward(model):
    return model(input_ids=torch.cat([PROMPT, NEXT], 1)).logits[0, -1]


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_groups_of_a_causal_decoder_have_decoder_roles(model_type):
    model = tiny_causal_lm(model_type)
    groups = find_groups(model)
    assert {g.role for g in groups if g.kind == "heads"} == {"decoder_self"}
    assert {g.role for g in groups if g.kind == "ffn"} == {"decoder"}
    assert [s.role for s in find_layer_groups(model)] == ["decoder"]
    assert len(filter_groups(groups, roles="decoder_self")) == 3
    encoder = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(
        model_type, vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37))
    assert {g.role for g in find_groups(encoder)} == {"encoder_self", "encoder"}


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_an_emptied_decoder_attention_keeps_the_cache_length(model_type, tmp_path):
    model = tiny_causal_lm(model_type)
    masks = attach_masks(model, layers=True)
    masks.set("encoder.layer.0.attention", torch.zeros(4))  # every head of the first layer
    masks.set("encoder.layer.1.attention", torch.tensor([1.0, 0.0, 1.0, 0.0]))
    masks.set("encoder.layer", torch.tensor([1.0, 1.0, 0.0]))  # and the last layer
    masked, masked_length = cached_step(model)
    compact(model)
    compacted, length = cached_step(model)
    assert length == masked_length == PROMPT.shape[1]
    assert torch.allclose(compacted, masked, atol=TOL)
    assert torch.allclose(compacted, full_forward(model), atol=TOL)
    save_pruned(model, tmp_path)
    reloaded, reloaded_length = cached_step(AutoPrunedModel.from_pretrained(tmp_path).eval())
    assert reloaded_length == PROMPT.shape[1] and torch.allclose(reloaded, masked, atol=TOL)
    tokens = model.generate(PROMPT, max_new_tokens=5, do_sample=False, pad_token_id=1)
    no_cache = model.generate(PROMPT, max_new_tokens=5, do_sample=False, pad_token_id=1, use_cache=False)
    assert torch.equal(tokens, no_cache)
