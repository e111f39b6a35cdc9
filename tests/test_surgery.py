"""Compaction removes exactly what the masks hide: outputs equal within 1e-5 (float32)."""

from __future__ import annotations

import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel, attach_masks, compact, find_groups, get_masks, save_pruned
from hf_adaprune.engine.masks import structure_count
from hf_adaprune.layout import read_record

from conftest import random_biases, text_batch, tiny_model

TOL = 1e-5


def random_masks(model, seed=0):
    """Random masks, with one group of each kind fully pruned and one left whole."""
    masks = attach_masks(model)
    generator = torch.Generator().manual_seed(seed)
    names = list(masks.masks)
    heads = masks.of_kind("heads")
    ffns = masks.of_kind("ffn")
    for name in names:
        masks.set(name, (torch.rand(masks.masks[name].shape, generator=generator) > 0.5).float())
    masks.set(heads[0], torch.zeros_like(masks.masks[heads[0]]))
    masks.set(heads[-1], torch.ones_like(masks.masks[heads[-1]]))
    masks.set(ffns[1], torch.zeros_like(masks.masks[ffns[1]]))
    masks.set(ffns[0], torch.ones_like(masks.masks[ffns[0]]))
    return masks


def outputs(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize(
    "head",
    ["AutoModelForSequenceClassification", "AutoModelForTokenClassification", "AutoModel"],
)
def test_compacted_equals_masked(family, head):
    model = random_biases(tiny_model(family, head))  # biases that differ row by row must go with their rows
    batch = text_batch()
    dense = outputs(model, batch)
    random_masks(model)
    masked = outputs(model, batch)
    assert (masked - dense).abs().max() > 1e-4, "masks should change the output"
    compact(model)
    compacted = outputs(model, batch)
    assert compacted.shape == masked.shape
    assert (compacted - masked).abs().max() <= TOL


def test_question_answering_head(family):
    model = random_biases(tiny_model(family, "AutoModelForQuestionAnswering"))
    batch = text_batch()
    random_masks(model, seed=3)
    with torch.no_grad():
        before = model(**batch)
    compact(model)
    with torch.no_grad():
        after = model(**batch)
    assert (before.start_logits - after.start_logits).abs().max() <= TOL
    assert (before.end_logits - after.end_logits).abs().max() <= TOL


def test_shapes_and_record_after_compaction():
    model = random_biases(tiny_model("bert"))
    query_bias = model.bert.encoder.layer[1].attention.self.query.bias.detach().clone()
    ffn_bias = model.bert.encoder.layer[2].intermediate.dense.bias.detach().clone()
    masks = attach_masks(model)
    masks.set("encoder.layer.1.attention", torch.tensor([1.0, 0.0, 1.0, 0.0]))
    ffn = torch.zeros(37)
    ffn[[3, 5, 30]] = 1
    masks.set("encoder.layer.2.ffn", ffn)
    masks.set("encoder.layer.0.attention", torch.zeros(4))
    record = compact(model)
    layer1 = model.bert.encoder.layer[1].attention.self
    assert layer1.query.weight.shape == (2 * 8, 32)
    assert layer1.num_attention_heads == 2
    assert model.bert.encoder.layer[1].attention.output.dense.weight.shape == (32, 16)
    assert model.bert.encoder.layer[2].intermediate.dense.weight.shape == (3, 32)
    assert model.bert.encoder.layer[2].output.dense.weight.shape == (32, 3)
    # the kept rows' biases: heads 0 and 2 (8 rows each), neurons 3, 5 and 30
    assert torch.equal(layer1.query.bias, torch.cat([query_bias[0:8], query_bias[16:24]]))
    assert torch.equal(model.bert.encoder.layer[2].intermediate.dense.bias, ffn_bias[[3, 5, 30]])
    assert getattr(model.bert.encoder.layer[0].attention.self, "is_empty_attention", False)
    assert record["groups"]["encoder.layer.1.attention"]["kept"] == [0, 2]
    assert record["groups"]["encoder.layer.2.ffn"]["kept"] == [3, 5, 30]
    assert record["groups"]["encoder.layer.0.attention"]["kept"] == []
    assert get_masks(model) is None
    # fully pruned attention no longer counts as a prunable group
    assert "encoder.layer.0.attention" not in {g.name for g in find_groups(model)}


def test_second_compaction_composes_original_indices():
    model = random_biases(tiny_model("bert"))
    batch = text_batch()
    masks = attach_masks(model)
    masks.set("encoder.layer.1.attention", torch.tensor([1.0, 0.0, 1.0, 1.0]))
    compact(model)
    masks = attach_masks(model)
    assert masks.masks["encoder.layer.1.attention"].numel() == 3
    masks.set("encoder.layer.1.attention", torch.tensor([0.0, 1.0, 1.0]))
    masked = outputs(model, batch)
    record = compact(model)
    assert record["groups"]["encoder.layer.1.attention"]["kept"] == [2, 3]
    assert record["groups"]["encoder.layer.1.attention"]["original"] == 4
    assert (outputs(model, batch) - masked).abs().max() <= TOL


def test_masks_leave_weights_untouched():
    model = tiny_model("roberta")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random_masks(model)
    text_out = outputs(model, text_batch())
    assert torch.isfinite(text_out).all()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_structure_counts_follow_shapes():
    model = tiny_model("distilbert")
    groups = find_groups(model)
    base = model.base_model
    assert [structure_count(base, g) for g in groups[:2]] == [4, 37]
    assert len(groups) == 6


def test_mask_gates_compile_without_graph_breaks_or_recompiles():
    """torch.compile: the gates add no graph break, and new mask values reuse the compiled graph."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    model = tiny_model("bert", num_hidden_layers=1)
    masks = attach_masks(model)
    batch = text_batch()
    dynamo.reset()
    assert dynamo.explain(model)(**batch).graph_break_count == 0
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    graphs = []
    for step in range(3):
        ffn = torch.ones(37)
        ffn[: 5 * step] = 0
        masks.set("encoder.layer.0.ffn", ffn)
        with torch.no_grad():
            got = compiled(**batch).logits
        assert (got - outputs(model, batch)).abs().max() <= TOL
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[-1] == graphs[0]
    dynamo.reset()


def test_compact_refuses_an_unsupported_family_before_changing_it(tmp_path):
    from hf_adaprune import UnsupportedModelError

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99))
    with pytest.raises(UnsupportedModelError, match="cannot prune model_type 'gpt2'"):
        compact(model)
    assert type(model) is transformers.GPT2LMHeadModel and getattr(model.config, "adaprune", None) is None
    model.save_pretrained(tmp_path)  # still a plain model, saved as one
    assert transformers.AutoConfig.from_pretrained(tmp_path).model_type == "gpt2"


def test_masks_on_the_groups_filter_groups_picks_are_what_compact_removes():
    from hf_adaprune.families import filter_groups

    model = tiny_model("bert")
    batch = text_batch()
    heads = filter_groups(find_groups(model), kind="heads")
    masks = attach_masks(model, groups=heads)
    assert set(masks.masks) == {g.name for g in heads}
    masks.set(heads[0].name, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    expected = outputs(model, batch)
    with pytest.raises(ValueError, match="already has masks on other groups"):
        attach_masks(model, groups=find_groups(model))
    compact(model)
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 3 * 8  # the masked head is gone
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 37  # FFNs had no masks: whole
    assert (outputs(model, batch) - expected).abs().max() <= 1e-5


def test_masks_refuse_values_outside_0_1_and_an_update_is_all_or_nothing(caplog):
    import logging

    model = tiny_model("bert")
    masks = attach_masks(model)
    name = "encoder.layer.0.attention"
    for bad in ([2.0, 1.0, 1.0, 1.0], [float("nan"), 1.0, 1.0, 1.0], [-0.5, 1.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match="must hold values in \\[0, 1\\]"):
            masks.set(name, torch.tensor(bad))
    with pytest.raises(KeyError, match="no mask for group 'encoder.layer.9.ffn'"):
        masks.update({name: torch.tensor([1.0, 0.0, 1.0, 1.0]), "encoder.layer.9.ffn": torch.ones(37)})
    assert masks.masks[name].tolist() == [1.0, 1.0, 1.0, 1.0]  # the good mask was not applied either
    masks.set(name, torch.tensor([1.0, 0.6, 0.4, 1.0]))
    assert masks.summary()[name] == masks.kept_count(name) == len(masks.kept_indices(name)) == 3
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        compact(model)
    assert "compacting masks with values between 0 and 1 (encoder.layer.0.attention)" in caplog.text


def test_attention_pruned_again_down_to_no_head_saves_a_folder_both_loaders_read(tmp_path):
    model = tiny_model("bert")
    batch = text_batch()
    attach_masks(model).set("encoder.layer.0.attention", torch.tensor([1.0, 0.0, 1.0, 0.0]))
    compact(model)
    save_pruned(model, tmp_path / "once")
    model = AutoPrunedModel.from_pretrained(tmp_path / "once").eval()
    attach_masks(model).set("encoder.layer.0.attention", torch.zeros(2))
    masked = outputs(model, batch)
    compact(model)
    assert (outputs(model, batch) - masked).abs().max() <= TOL
    # the slices of the first compaction went with the q/k/v they described
    modules = read_record(model.config)["layout"]["modules"]
    assert [k for k in modules if k.startswith("encoder.layer.0.attention.self.")] == []
    save_pruned(model, tmp_path / "twice")
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path / "twice"),
                   transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "twice",
                                                                                   trust_remote_code=True)):
        assert (outputs(loaded.eval(), batch) - masked).abs().max() <= TOL


@pytest.mark.parametrize("model_type", ["bert", "bart"])
def test_a_model_built_from_a_pruned_models_config_is_refused_until_the_record_is_dropped(tmp_path, model_type):
    """The config of a pruned model carries its record; a dense model built from it crashed in compact with an
    IndexError, and save_pruned wrote dense weights beside the pruned layout: a folder neither loader read."""
    pruned = tiny_model(model_type)
    stock = type(pruned)  # compact gives the model its pruned subclass, which builds in the recorded shapes
    masks = attach_masks(pruned)
    head_group = next(name for name, group in masks.groups.items() if group.kind == "heads")
    masks.set(head_group, (torch.arange(masks.masks[head_group].numel()) < 2).float())
    compact(pruned)
    fresh = stock(type(pruned.config).from_dict(pruned.config.to_dict()))  # dense shapes, pruned record
    message = r"model.config.adaprune records a pruned model whose shapes this model does not have \(.* is \d+x\d+, " \
              r"the record says \d+x\d+.*\): was the model built from a pruned model's config\?"
    with pytest.raises(ValueError, match=message):
        save_pruned(fresh, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    attach_masks(fresh)
    with pytest.raises(ValueError, match=message):
        compact(fresh)
    del fresh.config.adaprune  # as the message says: a dense model of its own
    save_pruned(fresh, tmp_path / "dense")
    reloaded = AutoPrunedModel.from_pretrained(tmp_path / "dense").state_dict()
    assert all(torch.equal(reloaded[name], weight) for name, weight in fresh.state_dict().items())


def test_an_encoder_decoders_folder_loaded_with_a_one_stack_head_saves_again(tmp_path):
    """The record of a pruned BART lists both stacks; loaded as BartForCausalLM (the decoder alone) the encoder's
    entries are absent by design and are not a stale record."""
    from test_layers import build_seq2seq

    torch.manual_seed(0)
    model = build_seq2seq("bart")
    masks = attach_masks(model)
    for name, mask in masks.masks.items():
        masks.set(name, (torch.arange(mask.numel()) % 2).float())
    save_pruned(model, tmp_path / "pruned")
    decoder = AutoPrunedModel.from_pretrained(tmp_path / "pruned", auto_class=transformers.AutoModelForCausalLM)
    save_pruned(decoder, tmp_path / "again")
    again = AutoPrunedModel.from_pretrained(tmp_path / "again", auto_class=transformers.AutoModelForCausalLM)
    state = again.state_dict()
    assert all(torch.equal(state[name], weight) for name, weight in decoder.state_dict().items())


def test_a_mask_of_exactly_one_half_counts_as_kept_in_the_report_and_in_compaction():
    """kept_structure / removed_layers counted 0.5 as kept, compaction removed it: one threshold (>= 0.5 kept)."""
    from hf_adaprune.surgery import kept_structure, removed_layers

    model = tiny_model("bert", num_hidden_layers=3)
    masks = attach_masks(model, layers=True)
    masks.set("encoder.layer", torch.tensor([1.0, 0.5, 1.0]))
    ffn = next(name for name in masks.masks if name.endswith("layer.0.ffn"))
    half = torch.ones_like(masks.masks[ffn])
    half[:5] = 0.5
    half[5:8] = 0.0
    masks.set(ffn, half)
    reported, gone = kept_structure(model), removed_layers(model)
    assert gone == [] and reported[ffn]["kept"] == half.numel() - 3
    compact(model)
    assert len(model.bert.encoder.layer) == 3
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == half.numel() - 3
    assert kept_structure(model) == reported and removed_layers(model) == gone
