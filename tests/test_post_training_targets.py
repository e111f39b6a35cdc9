"""The re-fit towards the dense model's activations: where the residual sum is read, what the re-fit fits, exactness."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model
from test_post_training import batches_for, capture_inputs, labelled_examples, masked_at, pad_collator, relative_error

from hf_adaprune import attach_masks, find_groups
from hf_adaprune.post_training import capture_dense_targets, post_training_prune, refit_groups
from hf_adaprune.post_training.dense_targets import residual_norms

NORMS = {  # what residual_norms must find by running the model
    "bert": {"encoder.layer.0.attention": "encoder.layer.0.attention.output.LayerNorm",
             "encoder.layer.2.ffn": "encoder.layer.2.output.LayerNorm"},
    "distilbert": {"transformer.layer.0.attention": "transformer.layer.0.sa_layer_norm",
                   "transformer.layer.2.ffn": "transformer.layer.2.output_layer_norm"},
    "deberta-v2": {"encoder.layer.0.attention": "encoder.layer.0.attention.output.LayerNorm",
                   "encoder.layer.2.ffn": "encoder.layer.2.output.LayerNorm"},
    # pre-LN: the next sub-layer's LayerNorm reads the residual sum, the last FFN's is the final one
    "modernbert": {"layers.0.attn": "layers.0.mlp_norm", "layers.2.ffn": "final_norm"},
    "mpnet": {"encoder.layer.0.attention": "encoder.layer.0.attention.LayerNorm",
              "encoder.layer.2.ffn": "encoder.layer.2.output.LayerNorm"},
}


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "deberta-v2", "modernbert", "mpnet"])
def test_residual_norms_are_the_layernorms_after_each_projection(model_type):
    model = tiny_model(model_type)
    groups = find_groups(model)
    norms = residual_norms(model, groups, pad_collator(labelled_examples(2)))
    assert set(norms) == {g.name for g in groups}
    for name, norm in NORMS[model_type].items():
        assert norms[name] == norm


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "deberta-v2", "modernbert", "mpnet"])
def test_dense_residual_refit_brings_the_last_layer_closer_to_the_dense_model(model_type):
    """Layer output error against the dense model (the last block's LayerNorm input): the re-fit towards the
    dense residual sum beats plain slicing, and the same-input re-fit, on calibration and held-out rows."""
    dense = tiny_model(model_type)
    rows, held_out = labelled_examples(96), labelled_examples(48, seed=11)
    batches = batches_for(dense, rows)
    splits = {"calibration": batches, "held out": batches_for(dense, held_out)}
    last = NORMS[model_type][{"distilbert": "transformer.layer.2.ffn", "modernbert": "layers.2.ffn"}.get(
        model_type, "encoder.layer.2.ffn")]
    reference = {split: capture_inputs(dense, last, b) for split, b in splits.items()}
    errors = {}
    for variant in ("sliced", "same_input", "dense_residual"):
        model = copy.deepcopy(dense)
        targets = capture_dense_targets(model, find_groups(model), batches) \
            if variant == "dense_residual" else None
        masks, groups = masked_at(model, rows)
        if variant != "sliced":
            refit_groups(model, masks, groups, batches, progress=False, dense=targets)
        errors[variant] = {split: relative_error(capture_inputs(model, last, b), reference[split])
                           for split, b in splits.items()}
    for split in splits:
        assert errors["dense_residual"][split] < 0.9 * errors["sliced"][split], (split, errors)
        assert errors["dense_residual"][split] < errors["same_input"][split], (split, errors)


@pytest.mark.parametrize("kind", ["dense_residual", "dense_output"])
def test_reported_error_is_that_of_the_fitted_target(kind):
    """The error refit_groups returns for the first group equals the one computed from captured tensors."""
    dense = tiny_model("bert")
    rows = labelled_examples(64)
    batches = batches_for(dense, rows)
    model = copy.deepcopy(dense)
    groups = find_groups(model)
    targets = capture_dense_targets(model, groups, batches, kind)
    masks, groups = masked_at(model, rows)
    first = groups[0]
    norm = targets.norms[first.name]
    # the pruned model's residual sum and projection output before the re-fit give its residual
    projection = model.base_model.get_submodule(first.output)
    outputs = []
    handle = projection.register_forward_hook(
        lambda module, args, output: outputs.append(output.detach().reshape(-1, output.shape[-1])))
    pruned_sum = capture_inputs(model, norm, batches)
    handle.remove()
    valid = torch.cat([b["attention_mask"].reshape(-1).bool() for b in batches])
    pruned_output = torch.cat(outputs)[valid]
    dense_values = torch.cat(targets.values[first.name])
    target = dense_values - pruned_sum + pruned_output if kind == "dense_residual" else dense_values
    reported = refit_groups(model, masks, groups, batches, progress=False, dense=targets)[first.name]
    outputs.clear()
    handle = projection.register_forward_hook(
        lambda module, args, output: outputs.append(output.detach().reshape(-1, output.shape[-1])))
    capture_inputs(model, norm, batches)
    handle.remove()
    refitted = torch.cat(outputs)[valid]
    assert reported == pytest.approx(relative_error(refitted, target), rel=1e-3)


def test_refit_target_is_recorded_and_checked():
    """Each target is fitted and recorded: the same masks, re-fitted to each, give other output projections. The
    dense residual sum moves them most (its target carries the earlier layers' error too); the dense output and the
    same-input targets differ only where the pruned model's inputs drifted from the dense model's, past layer 0."""
    model = tiny_model("bert")
    rows = labelled_examples(32)
    with pytest.raises(ValueError, match="refit_target must be one of"):
        post_training_prune(model, rows, 0.5, refit_target="teacher", data_collator=pad_collator, progress=False)
    with pytest.raises(ValueError, match="'dense_residual' or 'dense_output'"):
        capture_dense_targets(model, [], [], "same_input")
    fitted = {}
    for kind in ("dense_residual", "dense_output", "same_input"):
        result = post_training_prune(model, rows, 0.5, refit_target=kind, data_collator=pad_collator, seq_len=16,
                                     progress=False, refit_samples=16)
        assert result.refit_errors and all(0 <= e < 1.5 for e in result.refit_errors.values()), kind
        assert result.settings["refit_target"] == kind
        fitted[kind] = {name: value for name, value in result.model.state_dict().items()
                        if name.endswith("output.dense.weight")}  # the attention and FFN output projections
    shapes = [{name: value.shape for name, value in weights.items()} for weights in fitted.values()]
    assert shapes[0] == shapes[1] == shapes[2], "the same structures kept"

    def largest_change(a, b):
        return max(float((fitted[a][name] - fitted[b][name]).abs().max()) for name in fitted[a])

    # the projections' weights are about 0.1 in size
    assert largest_change("dense_residual", "dense_output") > 0.02
    assert largest_change("dense_residual", "same_input") > 0.02
    assert largest_change("dense_output", "same_input") > 1e-4


@pytest.mark.parametrize("model_type, target, layers", [("bert", "dense_residual", False), ("distilbert", None, False),
                                                        ("bert", "dense_output", True)])
def test_replaying_finished_layers_changes_no_weight_and_runs_fewer_layers(monkeypatch, model_type, target, layers):
    """The re-fit replays the layers below the group it measures from their kept outputs: the same weights, bit for
    bit, as running every pass from the embeddings up (a removed layer's gate included), with at most three calls of
    each layer per batch (two groups measured in it, one pass making its output) instead of one per group above
    it."""
    from contextlib import nullcontext

    from hf_adaprune.post_training.layer_replay import FinishedLayers, layer_position

    dense = tiny_model(model_type, num_hidden_layers=4)
    rows = labelled_examples(64)
    batches = batches_for(dense, rows)

    def refit(replay: bool):
        model = copy.deepcopy(dense)
        targets = capture_dense_targets(model, find_groups(model), batches, kind=target) if target else None
        masks, groups = masked_at(model, rows)
        stack, _ = layer_position(model.base_model, groups[0].output)
        if layers:  # the second layer removed by its gate: its kept output is its input
            attach_masks(model, layers=True).set("encoder.layer", torch.tensor([1., 0, 1, 1]))
        calls = []
        handles = [layer.register_forward_pre_hook(lambda m, a: calls.append(1)) for layer in stack]
        with monkeypatch.context() as patch:
            if not replay:
                patch.setattr(FinishedLayers, "replaying", lambda self, group, batch: nullcontext())
            refit_groups(model, masks, groups, batches, progress=False, dense=targets)
        for handle in handles:
            handle.remove()
        return model, len(calls)

    replayed, replayed_calls = refit(True)
    plain, plain_calls = refit(False)
    for (name, a), b in zip(replayed.named_parameters(), plain.parameters()):
        assert torch.equal(a, b), name
    assert replayed_calls <= 3 * 4 * len(batches) < plain_calls


def test_the_memory_of_the_dense_targets_is_said_before_they_are_captured(monkeypatch, caplog):
    """The dense model's activations are held for the whole call and grow with the tokens, the width and the layers
    (gigabytes for a BERT-base on long rows): their size is logged up front, exactly what the capture then holds,
    and named in a warning above the threshold."""
    import logging

    import hf_adaprune.post_training.prune as prune_module
    from hf_adaprune.post_training.dense_targets import dense_target_bytes

    model = tiny_model("bert")
    rows = labelled_examples(40)
    batches = batches_for(model, rows)
    groups = find_groups(model)
    held = capture_dense_targets(model, groups, batches)
    expected = sum(value.numel() * value.element_size() for values in held.values.values() for value in values)
    assert dense_target_bytes(model, groups, batches) == expected
    monkeypatch.setattr(prune_module, "DENSE_TARGETS_WARNING_BYTES", expected - 1)
    with caplog.at_level(logging.INFO, logger="hf_adaprune"):
        post_training_prune(model, rows, 0.5, data_collator=pad_collator, seq_len=16, progress=False)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "re-fit target" in r.getMessage()]
    assert len(warned) == 1 and f"take {expected / 1024 ** 2:.1f} MiB" in warned[0].getMessage()
