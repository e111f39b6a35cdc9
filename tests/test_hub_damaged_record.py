"""A pruned folder whose config.json record was edited, truncated or written by hand is refused naming config.json
and the entry, by hf_adaprune's loader and the folder's own remote code alike, instead of loading a model with
random or dropped layers, wrong heads' position bias, or failing with a bare KeyError / IndexError."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel, attach_masks, compact, save_pruned

from conftest import tiny_model

LOADERS = {
    "AutoPrunedModel": lambda folder: AutoPrunedModel.from_pretrained(folder),
    "trust_remote_code": lambda folder: transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, trust_remote_code=True),
}


def pruned_folder(tmp_path, layers=False, model=None):
    model = model or tiny_model("bert", num_labels=3)
    masks = attach_masks(model, layers=layers)
    masks.set("encoder.layer.1.attention", torch.tensor([0.0, 1.0, 0.0, 1.0]))
    ffn = torch.ones(37)
    ffn[:10] = 0
    masks.set("encoder.layer.0.ffn", ffn)
    if layers:
        masks.set("encoder.layer", torch.tensor([1.0, 0.0, 1.0]))
    save_pruned(model, tmp_path / "pruned")
    return tmp_path / "pruned"


def edit_record(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("layers", [3, 1])
def test_a_layer_count_that_disagrees_with_the_removed_layers_is_refused(tmp_path, loader, layers):
    """3: a layer at random (transformers' MISSING report only); 1: a trained layer dropped without a word."""
    folder = pruned_folder(tmp_path, layers=True)
    edit_record(folder, lambda config: config.update(num_hidden_layers=layers))
    with pytest.raises(ValueError, match=rf"config.json: encoder.layer is built with {layers} layers but "
                                         r"adaprune.layers keeps 2 of its 3: the config's layer count disagrees"):
        LOADERS[loader](folder)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("edit, message", [
    (lambda r: r["groups"]["encoder.layer.1.attention"].pop("original"), r"is damaged \(missing key 'original'\)"),
    (lambda r: r["groups"]["encoder.layer.1.attention"].update(kept_mask="zz"), r"is damaged \(ValueError: invalid"),
    (lambda r: r["groups"]["encoder.layer.1.attention"].update(kept_mask="1a"),
     r"is damaged \(ValueError: kept_mask 1a keeps structures beyond the 4 there were\)"),
    (lambda r: r["layout"]["modules"]["encoder.layer.0.intermediate.dense"].pop("in_features"),
     r"adaprune.layout.modules\['encoder.layer.0.intermediate.dense'\] does not fit the model its config builds "
     r"\(missing key 'in_features'\)"),
    (lambda r: r["layout"]["modules"]["encoder.layer.0.intermediate.dense"].update(out_features=-3),
     r"adaprune.layout.modules\['encoder.layer.0.intermediate.dense'\] does not fit"),
    (lambda r: r["layout"]["modules"].update({"encoder.layer.7.intermediate.dense": {
        "type": "Linear", "in_features": 32, "out_features": 3, "bias": True}}),
     r"adaprune.layout.modules\['encoder.layer.7.intermediate.dense'\] does not fit"),
])
def test_a_damaged_record_entry_is_named(tmp_path, loader, edit, message):
    folder = pruned_folder(tmp_path)
    edit_record(folder, lambda config: edit(config["adaprune"]))
    with pytest.raises(ValueError, match=r"config.json.*" + message):
        LOADERS[loader](folder)


def test_old_format_kept_indices_outside_the_original_count_are_refused(tmp_path):
    folder = pruned_folder(tmp_path)

    def old_format(record):
        group = record["groups"]["encoder.layer.1.attention"]
        del group["kept_mask"]
        group["kept"] = [-1, 7]

    edit_record(folder, lambda config: old_format(config["adaprune"]))
    with pytest.raises(ValueError, match=r"is damaged \(ValueError: \[-1, 7\] are not increasing indices below 4\)"):
        AutoPrunedModel.from_pretrained(folder)


@pytest.mark.parametrize("kept_heads, message", [
    ([2], r"keeps 1 heads where the attention has 2"),
    ([1, 9], r"is damaged \(ValueError: \[1, 9\] are not increasing indices below 4\)"),
    ([3, 1], r"is damaged \(ValueError: \[3, 1\] are not increasing indices below 4\)"),
])
def test_a_t5_position_bias_head_list_that_cannot_hold_is_refused(tmp_path, kept_heads, message):
    """[2]: one bias slice broadcast over the 2 heads, the model ran with logits off by 0.15; [1, 9]: every forward
    failed with an index error."""
    model = tiny_model("t5", "AutoModelForSeq2SeqLM")
    attach_masks(model).set("encoder.block.1.self_attn", torch.tensor([0.0, 1.0, 0.0, 1.0]))
    save_pruned(model, tmp_path / "t5")
    path = "encoder.block.1.layer.0.SelfAttention"
    edit_record(tmp_path / "t5", lambda config: config["adaprune"]["layout"]["shared_bias"][path].update(
        kept_heads=kept_heads))
    with pytest.raises(ValueError, match=message):
        AutoPrunedModel.from_pretrained(tmp_path / "t5")


def test_compacting_a_model_whose_record_keeps_another_count_is_refused(tmp_path):
    """The record's kept heads read through positions it does not have: a wrong record saved, or an IndexError."""
    folder = pruned_folder(tmp_path)
    edit_record(folder, lambda config: config["adaprune"]["groups"]["encoder.layer.1.attention"].update(kept_mask="2"))
    model = AutoPrunedModel.from_pretrained(folder)
    attach_masks(model).set("encoder.layer.1.attention", torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"encoder.layer.1.attention has 2 heads, the record keeps 1"):
        compact(model)


@pytest.mark.parametrize("architecture", ["AutoTokenizer", "pipeline", "GPT2LMHeadModel"])
def test_an_architecture_that_is_no_model_class_of_the_family_is_refused(tmp_path, architecture):
    """AutoTokenizer was called ("cannot unpack non-iterable BertTokenizer"), pipeline failed in issubclass, GPT-2
    was built from a BERT config ("no attribute embd_pdrop")."""
    folder = pruned_folder(tmp_path)
    edit_record(folder, lambda config: config.update(architectures=[architecture]))
    with pytest.raises(ValueError, match=rf"config.json: architectures=\['{architecture}'\] names no bert model class"):
        AutoPrunedModel.from_pretrained(folder)


def test_a_family_class_on_a_sibling_config_of_the_family_loads(tmp_path):
    """A T5EncoderModel built on an MT5Config names a class whose config class is T5Config: not a damaged record."""
    config = transformers.MT5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(config).eval()
    attach_masks(model).set("encoder.block.1.self_attn", torch.tensor([0.0, 1.0, 0.0, 1.0]))
    save_pruned(model, tmp_path / "mt5")
    ids = torch.tensor([[5, 9, 11, 2]])
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
        assert torch.equal(AutoPrunedModel.from_pretrained(tmp_path / "mt5")(input_ids=ids).last_hidden_state, expected)
