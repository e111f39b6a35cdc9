"""Pruning without training: scores, the least-squares re-fit, exact compaction, the driver and its errors."""

from __future__ import annotations

import json
import logging

import datasets
import pytest
import torch
from conftest import random_biases, tiny_model

from hf_adaprune import AutoPrunedModel, UnsupportedModelError, attach_masks, compact, find_groups, select_masks_by_kind
from hf_adaprune.post_training import (capture_dense_targets, mask_gradient_scores, post_training_prune, refit_groups,
                                      solve_refit)
from hf_adaprune.post_training.calibration import calibration_batches, model_input_names


def labelled_examples(count: int, seed: int = 3, classes: int = 3) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        length = int(torch.randint(4, 14, (1,), generator=generator))
        rows.append({"input_ids": torch.randint(5, 99, (length,), generator=generator).tolist(),
                     "labels": int(torch.randint(0, classes, (1,), generator=generator)), "text": "unused"})
    return rows


def pad_collator(rows: list[dict]) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}


def batches_for(model, rows, size=8):
    return calibration_batches(rows, pad_collator, size, model_input_names(model))


def masked_at(model, rows, ratio=0.5):
    """``model`` with masks at ``ratio`` of the layer FLOPs per kind, chosen by Fisher scores on ``rows``."""
    groups = find_groups(model)
    scores = mask_gradient_scores(model, groups, batches_for(model, rows), progress=False)["fisher"]
    masks = attach_masks(model)
    masks.update(select_masks_by_kind(groups, scores, masks.masks, ratio, scope="global"))
    return masks, groups


def capture_inputs(model, path, batches):
    """The (ungated) inputs of ``model.base_model.<path>`` on the real tokens of ``batches``."""
    seen = []

    def hook(module, args):
        seen.append(args[0].detach().reshape(-1, args[0].shape[-1]))

    handle = model.base_model.get_submodule(path).register_forward_pre_hook(hook, prepend=True)
    rows = []
    with torch.no_grad():
        for batch in batches:
            seen.clear()
            model(**batch)
            rows.append(seen[0][batch["attention_mask"].reshape(-1).bool()])
    handle.remove()
    return torch.cat(rows)


def relative_error(approx, exact):
    return float((approx - exact).norm() / (exact - exact.mean(0)).norm())


def test_mask_gradient_scores_equal_per_example_grad_times_weight():
    """Taylor = |sum(grad * w)| over the structure's output-projection columns, one example at a time."""
    model = tiny_model("bert")
    rows = labelled_examples(3)
    groups = find_groups(model)
    scores = mask_gradient_scores(model, groups, batches_for(model, rows, size=3), progress=False)
    expected = {g.name: [] for g in groups}
    for row in rows:
        model.zero_grad()
        model(**pad_collator([row])).loss.backward()
        for g in groups:
            out = model.base_model.get_submodule(g.output).weight
            per_column = (out.grad * out).sum(0)
            expected[g.name].append(per_column.reshape(-1, g.head_dim if g.kind == "heads" else 1).sum(1))
    for g in groups:
        per_example = torch.stack(expected[g.name])
        torch.testing.assert_close(scores["taylor"][g.name], per_example.abs().mean(0), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(scores["fisher"][g.name], per_example.square().mean(0), rtol=1e-4, atol=1e-9)


def test_solve_refit_recovers_a_removed_column_that_the_kept_ones_explain():
    generator = torch.Generator().manual_seed(0)
    kept_x = torch.randn(500, 3, generator=generator)
    x = torch.cat([kept_x, kept_x @ torch.tensor([[0.5], [-2.0], [1.0]]) + 0.3], 1)  # column 3 = mix + constant
    weight, bias = torch.randn(4, 4, generator=generator), torch.randn(4, generator=generator)
    augmented = torch.cat([x, torch.ones(500, 1)], 1).double()
    new_weight, new_bias = solve_refit(weight, bias, augmented.T @ augmented, torch.tensor([0, 1, 2]), ridge=0.0)
    torch.testing.assert_close(kept_x @ new_weight.T + new_bias, x @ weight.T + bias, rtol=1e-4, atol=1e-4)
    independent = torch.cat([torch.randn(500, 4, generator=generator), torch.ones(500, 1)], 1).double()
    same_weight, same_bias = solve_refit(weight, bias, independent.T @ independent, torch.arange(4), ridge=0.0)
    torch.testing.assert_close(same_weight, weight, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(same_bias, bias, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "deberta-v2", "modernbert", "mpnet"])
def test_refit_lowers_layer_output_error_against_plain_slicing(model_type):
    model = tiny_model(model_type)
    rows = labelled_examples(96)
    masks, groups = masked_at(model, rows)
    batches = batches_for(model, rows)
    held_out = batches_for(model, labelled_examples(48, seed=11))
    first = groups[0]  # the first group's input does not depend on any re-fit
    projection = model.base_model.get_submodule(first.output)
    weight, bias = projection.weight.detach().clone(), projection.bias.detach().clone()
    kept = masks.masks[first.name].repeat_interleave(first.head_dim if first.kind == "heads" else 1)
    inputs = {"calibration": capture_inputs(model, first.output, batches),
              "held out": capture_inputs(model, first.output, held_out)}
    errors = refit_groups(model, masks, groups, batches, progress=False)
    for split, x in inputs.items():
        dense = x @ weight.T + bias
        with torch.no_grad():
            sliced_error = relative_error((x * kept) @ weight.T + bias, dense)
            refit_error = relative_error((x * kept) @ projection.weight.T + projection.bias, dense)
        assert refit_error < 0.9 * sliced_error, split
        if split == "calibration":
            assert errors[first.name] == pytest.approx(refit_error, rel=1e-3)


@pytest.mark.parametrize("model_type, target", [("bert", "same_input"), ("bert", "dense_residual"),
                                                 ("distilbert", "dense_residual"), ("distilbert", "dense_output"),
                                                 ("deberta-v2", "dense_residual"), ("modernbert", "dense_residual"),
                                                 ("mpnet", "dense_residual")])
def test_compaction_after_refit_equals_the_masked_model(model_type, target):
    model = tiny_model(model_type)
    rows = labelled_examples(64)
    dense = None if target == "same_input" else capture_dense_targets(model, find_groups(model),
                                                                      batches_for(model, rows), target)
    masks, groups = masked_at(model, rows, ratio=0.6)
    refit_groups(model, masks, groups, batches_for(model, rows), progress=False, dense=dense)
    batch = pad_collator(labelled_examples(5, seed=9))
    with torch.no_grad():
        masked = model(**batch).logits
        compact(model)
        compacted = model(**batch).logits
    assert (masked - compacted).abs().max() <= 1e-5


def test_post_training_prune_leaves_the_dense_model_alone_and_creates_no_optimizer(monkeypatch, tmp_path):
    def no_optimizer(*args, **kwargs):
        raise AssertionError("post-training pruning created an optimizer")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", no_optimizer)
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = labelled_examples(64)
    result = post_training_prune(model, rows, 0.5, eval_dataset=labelled_examples(24, seed=5),
                                 data_collator=pad_collator, batch_size=8, seq_len=16, progress=False,
                                 output_dir=tmp_path / "pruned")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    assert not hasattr(model, "_adaprune_masks") and "adaprune" not in model.config.to_dict()
    assert result.model is not model
    assert result.comparison["layer_flops_removed"] == pytest.approx(0.5, abs=0.08)
    assert result.reference is not None and result.metric is not None
    loaded = AutoPrunedModel.from_pretrained(tmp_path / "pruned")
    batch = pad_collator(labelled_examples(4, seed=8))
    with torch.no_grad():
        assert (loaded(**batch).logits - result.model(**batch).logits).abs().max() <= 1e-5
    report = json.loads((tmp_path / "pruned" / "post_training_report.json").read_text())
    assert report["metric"] == result.metric and report["settings"] == {  # what the figures are of
        "target": 0.5, "search": False, "metric": "accuracy", "tolerance": 0.01, "tolerance_type": "absolute",
        "scores": "taylor", "refit": True, "refit_target": "dense_residual", "ridge": report["settings"]["ridge"],
        "refit_samples": None, "kinds": ["heads", "ffn"], "normalize_scores": False, "seq_len": 16,
        "calibration_rows": 64}


def test_a_save_into_the_folder_of_another_pruning_removes_that_run_s_report_and_card(tmp_path, caplog):
    # post_training_prune(output_dir=) over a trainer's folder left its card and pruning_report.json describing the
    # earlier model beside the new one (a push uploaded them); the trainer's save left post_training_report.json
    from test_trainer import make_trainer

    trainer = make_trainer(tmp_path, max_steps=12)
    trainer.train()
    trainer.save_model()
    (tmp_path / "notes.txt").write_text("mine")
    assert {"README.md", "pruning_report.json", "pruning_curve.png", "training_args.bin"} <= {
        p.name for p in tmp_path.iterdir()}
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        post_training_prune(tiny_model("bert"), labelled_examples(32), 0.5, data_collator=pad_collator, batch_size=8,
                            seq_len=16, progress=False, output_dir=tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & {"README.md", "pruning_report.json", "pruning_curve.png", "pruning_layers.png",
                        "training_args.bin"}
    assert {"post_training_report.json", "notes.txt", "config.json"} <= names
    assert "which described the model saved there before" in caplog.text
    trainer.save_model()
    assert "post_training_report.json" not in {p.name for p in tmp_path.iterdir()}
    # beside a README.md of the user's own the trainer's card is README.hf_adaprune.md: it stayed
    (tmp_path / "README.md").write_text("# my notes\n")
    trainer.save_model()
    assert (tmp_path / "README.hf_adaprune.md").is_file()
    post_training_prune(tiny_model("bert"), labelled_examples(32), 0.5, data_collator=pad_collator, batch_size=8,
                        seq_len=16, progress=False, output_dir=tmp_path)
    assert not (tmp_path / "README.hf_adaprune.md").exists() and (tmp_path / "README.md").read_text() == "# my notes\n"


def test_scores_of_an_earlier_call_give_the_same_selection_without_a_scoring_pass():
    model = tiny_model("bert")
    rows = labelled_examples(48)
    first = post_training_prune(model, rows, 0.5, data_collator=pad_collator, seq_len=16, progress=False,
                                refit_samples=16)
    again = post_training_prune(model, rows, 0.5, scores=first.scores, data_collator=pad_collator, seq_len=16,
                                progress=False, refit_samples=16)
    assert "scores" in first.timings and "scores" not in again.timings
    assert again.model.config.adaprune["groups"] == first.model.config.adaprune["groups"]
    batch = pad_collator(labelled_examples(4, seed=8))
    with torch.no_grad():
        torch.testing.assert_close(again.model(**batch).logits, first.model(**batch).logits)


def test_inplace_prunes_the_model_given():
    model = tiny_model("bert")
    result = post_training_prune(model, labelled_examples(32), 0.4, data_collator=pad_collator, seq_len=16,
                                 progress=False, inplace=True)
    assert result.model is model and result.metric is None
    assert model.config.adaprune["groups"]


def test_search_ends_on_a_ratio_within_tolerance_and_the_model_holds_it():
    model = tiny_model("bert", initializer_range=0.3)  # large weights: pruning moves the loss
    eval_rows = labelled_examples(32, seed=5)
    result = post_training_prune(model, labelled_examples(64), None, metric="loss", tolerance=0.02, scores="fisher",
                                 eval_dataset=eval_rows, data_collator=pad_collator, seq_len=16, progress=False)
    events = [h["event"] for h in result.history]
    # the last try was rolled back after a kept one: the model must have been rebuilt at the kept ratio
    assert events[0] == "reference" and "keep" in events and events[-2] == "rollback"
    kept = [h["ratio"] for h in result.history if h["event"] == "keep"]
    assert result.ratio == kept[-1] and result.within_tolerance
    assert result.metric - result.reference <= 0.02 + 1e-9
    # no training between tries: no try at or beyond a ratio that already failed
    failed = 1.0
    for h in result.history[1:-1]:
        assert h["ratio"] < failed, [(e["event"], e["ratio"]) for e in result.history]
        failed = min(failed, h["ratio"]) if h["event"] == "rollback" else failed
    from hf_adaprune.post_training import evaluate
    check = evaluate(result.model, batches_for(result.model, eval_rows, size=32), "loss", progress=False)
    assert check == pytest.approx(result.metric, abs=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"calibration_dataset": []}, "calibration_dataset is empty"),
    ({"target": 0.0}, "target must be a fraction"),
    ({"target": 1.0}, "target must be a fraction"),
    ({"target": 1.5}, "target must be a fraction"),
    ({"calibration_dataset": [{"input_ids": [5, 6, 7]}]}, "calibration examples need labels"),
    ({"scores": "hessian"}, "scores must be one of"),
    ({"target": None}, "needs an eval_dataset"),
    ({"tolerance": -0.1}, r"tolerance must be a finite number >= 0, got -0.1"),
    ({"tolerance": "0.01"}, r"tolerance must be a finite number >= 0, got '0.01'"),
    ({"tolerance": None}, r"tolerance must be a finite number >= 0, got None"),
    ({"scores": {"encoder.layer.0.ffn": torch.ones(37)}}, "the scores given have no entry"),
    ({"kinds": ("attention",)}, r"kinds must be a non-empty tuple of \('heads', 'ffn'\)"),
    ({"kinds": "heads"}, "kinds must be a non-empty tuple"),
    ({"refit_samples": 0}, "refit_samples must be a whole number >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
    ({"seq_len": 0}, "seq_len must be a whole number >= 1, got 0"),
    ({"seq_len": 128}, r"seq_len 128 .* exceeds the model's max_position_embeddings \(64\)"),
    ({"ridge": -1.0}, r"ridge must be a finite number >= 0 \(relative to the activations' scale\), got -1.0"),
    ({"ridge": float("inf")}, r"ridge must be a finite number >= 0 .*, got inf"),
    ({"calibration_dataset": torch.utils.data.DataLoader(labelled_examples(8), batch_size=4)},
     r"calibration_dataset is a DataLoader, whose rows cannot be drawn by index: pass the datasets.Dataset"),
    ({"calibration_dataset": {"input_ids": [[5, 6, 7]], "labels": [0]}},
     r"calibration_dataset is a mapping of columns \(dict\), not rows: pass datasets.Dataset.from_dict"),
    ({"calibration_dataset": [(5, 6, 7)]}, r"calibration_dataset\[0\] is a tuple; each row must be a dict of columns"),
    ({"calibration_dataset": [{"input_ids": list(range(5, 85)), "labels": 0}]},
     r"calibration_dataset holds a row of 80 tokens, but the model reads at most 64 \(max_position_embeddings "
     r"\(64\)\): tokenize with truncation=True, max_length=64"),
    ({"eval_dataset": [{"input_ids": list(range(5, 75)), "labels": 0}]}, r"eval_dataset holds a row of 70 tokens"),
    ({"eval_dataset": [dict(row, labels=-1) for row in labelled_examples(4)]},
     r"eval_dataset holds label -1 \(4 labels outside 0..2\), but the model's head has 3 classes \(-100 is "
     r"ignored\): an unlabelled split"),
    ({"calibration_dataset": labelled_examples(6) + [dict(labelled_examples(1)[0], labels=7)]},
     r"calibration_dataset holds label 7 \(1 labels outside 0..2\)"),
    ({"calibration_dataset": [{"input_ids": [5, 6, 7, 120], "labels": 0}]},
     r"calibration_dataset holds token id 120, but the model's embedding table has 99 rows"),
    ({"target": "0.5"}, "target must be a number"),
    ({"eval_dataset": [{"input_ids": [5, 6, 7]}]}, "eval_dataset examples need labels"),
    ({"eval_dataset": [{"input_ids": [5, 6, 7]}], "metric": "loss"}, "need labels .* for the loss check"),
    ({"data_collator": None}, r"calibration_dataset rows have \d+ different lengths .* pass tokenizer="),
    ({"calibration_dataset": labelled_examples(2) + [{"input_ids": [5, 6, 7]}]},
     "example 2 has no label column: its columns are \\['input_ids'\\]"),
    ({"scores": {g: torch.ones(2) for g in ("encoder.layer.0.attention", "encoder.layer.0.ffn",
                                             "encoder.layer.1.attention", "encoder.layer.1.ffn",
                                             "encoder.layer.2.attention", "encoder.layer.2.ffn")}},
     r"the scores given do not fit this model: encoder.layer.0.attention \(2 scores, 4 structures\)"),
    ({"metric": lambda prediction: {"score": 0.0}}, "metric is a name"),
    ({"normalize_scores": "no"}, "normalize_scores must be True or False, got 'no'"),
    ({"refit": "false"}, "refit must be True or False, got 'false'"),  # a config file's text was truthy: it ran
    ({"search": "false"}, "search must be True or False, got 'false'"),
    ({"inplace": "false"}, "inplace must be True or False, got 'false'"),  # and pruned the caller's model
    ({"calibration_dataset": [dict(row, input_ids=torch.tensor([row["input_ids"]])) for row in labelled_examples(8)]},
     r"calibration_dataset\[0\]'s input_ids have shape \[1, \d+\], but each row is one sequence of ids \(rows "
     r"tokenized one by one with return_tensors='pt'\?\)"),
    ({"calibration_dataset": datasets.Dataset.from_list(labelled_examples(8)).to_pandas()},
     r"calibration_dataset is a pandas DataFrame: pass datasets.Dataset.from_pandas\(calibration_dataset\)"),
    ({"metric": "wer", "eval_dataset": labelled_examples(4)}, "--pruning_metric wer scores generated text"),
    ({"calibration_dataset": [dict(row, labels=[row["labels"]]) for row in labelled_examples(6)]},
     r"calibration_dataset holds a label of shape \[1\] in its 'labels' column .* one class id per row"),
    ({"eval_dataset": [dict(row, labels=["neg", "pos", "mixed"][row["labels"]]) for row in labelled_examples(4)]},
     r"eval_dataset holds the label '\w+' in its 'labels' column, but the model's head reads class ids 0..2"),
    ({"calibration_dataset": [dict(row, labels=float(row["labels"])) for row in labelled_examples(8)]},
     r"calibration_dataset holds its class ids as floats \(float64 in its 'labels' column\), which a 3-class"),
    ({"calibration_dataset": datasets.Dataset.from_list(labelled_examples(6) + [dict(labelled_examples(1)[0],
                                                                                     labels=None)])},
     r"calibration examples need labels .* calibration example 6 has labels=None, the label column it is read by"),
    ({"eval_dataset": datasets.Dataset.from_list(labelled_examples(3) + [dict(labelled_examples(1)[0], labels=None)])
      .with_format("torch")}, r"eval_dataset examples need labels .* eval_dataset example 3 has"),
    ({"calibration_dataset": datasets.Dataset.from_list(labelled_examples(8)).with_format("pandas")},
     r"calibration_dataset is in 'pandas' format, whose rows the collator cannot read"),
    ({"calibration_dataset": datasets.Dataset.from_list(labelled_examples(8)).with_format("arrow")},
     r"calibration_dataset is in 'arrow' format"),
])
def test_bad_inputs_fail_before_any_forward_pass(kwargs, message):
    model = tiny_model("bert")
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    arguments = dict(calibration_dataset=labelled_examples(8), target=0.5, data_collator=pad_collator, seq_len=16,
                     progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        post_training_prune(model, **arguments)
    assert calls == []


@pytest.mark.parametrize("model_type, message", [("albert", "cannot prune model_type 'albert'"),
                                                 ("bart", "post-training pruning supports the encoder families")])
def test_unsupported_family_is_refused_before_any_work(model_type, message):
    if model_type == "albert":
        model = tiny_model("albert", embedding_size=16)
    else:
        import transformers
        config = transformers.BartConfig(vocab_size=99, d_model=32, encoder_layers=1, decoder_layers=1,
                                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                                         decoder_ffn_dim=37, max_position_embeddings=64)
        model = transformers.BartForSequenceClassification(config)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(UnsupportedModelError, match=message):
        post_training_prune(model, labelled_examples(8), 0.5, data_collator=pad_collator, progress=False)
    assert calls == []


def test_a_model_with_masks_is_refused():
    model = tiny_model("bert")
    attach_masks(model)
    with pytest.raises(ValueError, match="already has pruning masks"):
        post_training_prune(model, labelled_examples(8), 0.5, data_collator=pad_collator)


def test_a_bare_encoder_is_refused_before_any_work():
    import transformers

    model = transformers.AutoModel.from_config(tiny_model("bert").config)
    with pytest.raises(ValueError, match="needs a fine-tuned model with its task head .*BertModel is a bare encoder"):
        post_training_prune(model, labelled_examples(8), 0.5, data_collator=pad_collator, seq_len=16)


def test_floors_that_stop_the_selection_short_are_reported_not_hidden(caplog):
    model = tiny_model("bert")
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        result = post_training_prune(model, labelled_examples(16), 0.5, data_collator=pad_collator, seq_len=16,
                                     min_heads_per_layer=3, kinds=("heads",), refit=False, progress=False)
    assert "target 0.5 cannot be reached" in caplog.text
    assert "the selection for 0.500 reached 0.250 (each kind's fraction of its own FLOPs: heads 0.250;" in caplog.text
    assert result.ratio == 0.5 and result.selected == pytest.approx(0.25)  # 1 of 4 heads per layer
    assert result.summary()["selected"] == pytest.approx(0.25)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):  # one kind held back: the warning names each
        post_training_prune(tiny_model("bert"), labelled_examples(16), 0.5, data_collator=pad_collator, seq_len=16,
                            min_heads_per_layer=3, refit=False, progress=False)
    assert "reached 0.250 (each kind's fraction of its own FLOPs: heads 0.250, ffn 0.5" in caplog.text


def test_a_regression_head_with_a_class_metric_is_refused_before_any_work():
    import transformers

    config = tiny_model("bert").config
    config.num_labels = 1
    model = transformers.BertForSequenceClassification(config).eval()
    rows = [dict(r, labels=float(r["labels"])) for r in labelled_examples(8)]
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(ValueError, match="metric 'accuracy' needs classes, but the model has one output"):
        post_training_prune(model, rows, 0.5, eval_dataset=rows, data_collator=pad_collator, seq_len=16)
    assert calls == []


def test_a_search_without_target_warns_of_no_target(caplog):
    model = tiny_model("bert")
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        post_training_prune(model, labelled_examples(16), None, eval_dataset=labelled_examples(8, seed=5),
                            metric="loss", tolerance=100.0, data_collator=pad_collator, seq_len=16, refit=False,
                            progress=False)
    assert "cannot be reached" not in caplog.text  # the search's ceiling is not the user's target


def test_history_records_what_was_selected_and_returned(caplog):
    model = tiny_model("bert", initializer_range=0.3)  # large weights: pruning moves the loss
    eval_rows = labelled_examples(32, seed=5)
    common = dict(eval_dataset=eval_rows, data_collator=pad_collator, seq_len=16, progress=False, metric="loss")
    # floors stop the selection short of the target: the history says what was reached, and does not say "reached"
    floored = post_training_prune(model, labelled_examples(16), 0.5, min_heads_per_layer=3, kinds=("heads",),
                                  refit=False, tolerance=100.0, **common)
    tried = [h for h in floored.history if h["event"] == "keep"]
    assert tried[-1]["ratio"] == 0.5 and tried[-1]["selected"] == pytest.approx(0.25)
    assert "target reached" not in [h.get("reason") for h in floored.history]
    # a fixed target beyond tolerance is returned pruned: the history says it was kept beyond the tolerance
    beyond = post_training_prune(model, labelled_examples(16), 0.9, refit=False, tolerance=0.0, **common)
    assert beyond.within_tolerance is False and beyond.comparison["layer_flops_removed"] > 0.5
    assert beyond.history[-2]["event"] == "kept beyond tolerance" and beyond.history[-2]["ratio"] == 0.9
    assert beyond.history[-1] == {"event": "stop", "ratio": 0.9, "reason": "fixed target"}
    # a search that keeps nothing returns the dense model, which is within tolerance (a drop of 0)
    from hf_adaprune.engine.controller import AdaptiveController
    from hf_adaprune.post_training.prune import _run_controller

    tried = []
    controller = AdaptiveController(target=0.9, initial_step=0.1, min_step=0.0125, tolerance=0.0,
                                    greater_is_better=True)
    ratio, value, within, errors = _run_controller(controller, 0.8, tried.append, lambda: 0.7, searching=True,
                                                   reached=lambda: tried[-1])
    assert (ratio, value, within, errors) == (0.0, 0.8, True, {}) and tried[-1] == 0.0  # left dense
    assert all(h["event"] != "keep" for h in controller.state.history)


def test_a_token_classifier_is_checked_with_a_label_metric_over_batches_of_other_lengths():
    import numpy as np
    import transformers

    from hf_adaprune.post_training import evaluate

    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(tiny_model("bert").config).eval()
    rows = [dict(row, labels=[i % 3 for i in range(len(row["input_ids"]))]) for row in labelled_examples(16)]

    def collate(batch):
        width = max(len(r["input_ids"]) for r in batch)
        padded = pad_collator([dict(r, labels=0) for r in batch])
        padded["labels"] = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
        return padded

    batches = calibration_batches(rows, collate, 8, model_input_names(model))
    assert len({b["input_ids"].shape[1] for b in batches}) == 2  # the two batches differ in length
    with torch.no_grad():  # by hand: argmax per token against every label that is not padding
        hits = [(model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1) == b["labels"])[
            b["labels"] != -100] for b in batches]
    expected = float(torch.cat(hits).float().mean())
    assert evaluate(model, batches, "accuracy", progress=False) == pytest.approx(expected, abs=1e-6)
    result = post_training_prune(model, rows, 0.5, metric="accuracy", eval_dataset=rows, data_collator=collate,
                                 seq_len=16, progress=False)
    assert np.isfinite(result.metric)


def test_a_failure_midway_leaves_an_inplace_model_as_it_was_given(monkeypatch):
    import hf_adaprune.post_training.prune as prune_module

    model = tiny_model("bert")
    batch = pad_collator(labelled_examples(4))
    with torch.no_grad():
        before = model(**batch).logits
    checks, real_evaluate = [], prune_module.evaluate

    def failing_second_check(*args, **kwargs):  # the dense reference passes; the check of the pruned model fails
        checks.append(1)
        if len(checks) == 2:
            raise RuntimeError("the metric failed on the pruned model")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(prune_module, "evaluate", failing_second_check)
    with pytest.raises(RuntimeError, match="the metric failed on the pruned model"):
        post_training_prune(model, labelled_examples(16), 0.5, eval_dataset=labelled_examples(8, seed=5),
                            data_collator=pad_collator, seq_len=16, progress=False, inplace=True)
    assert len(checks) == 2
    monkeypatch.setattr(prune_module, "evaluate", real_evaluate)
    from hf_adaprune import get_masks

    assert get_masks(model) is None
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)
    result = post_training_prune(model, labelled_examples(16), 0.5, data_collator=pad_collator, seq_len=16,
                                 progress=False, inplace=True)  # a retry is not refused for masks left behind
    assert result.model is model


def test_a_failing_check_gives_the_model_back_in_training_mode():
    from hf_adaprune.post_training.prune import evaluate

    model = tiny_model("bert").train()
    bad = [pad_collator([dict(row, labels=7) for row in labelled_examples(4)])]
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        evaluate(model, bad, "accuracy", progress=False)
    assert model.training


@pytest.mark.parametrize("padded", [True, False])
def test_label_and_id_checks_leave_heads_of_other_label_kinds_alone(padded):
    """A masked LM's labels are token ids and a multiple-choice head's the choice (0..3 here, num_labels 2): neither
    is a class id of num_labels; choices may come unpadded (lists of other lengths)."""
    import transformers

    from conftest import tiny_config

    from hf_adaprune.post_training.prune import _check_ids_fit, _check_label_range

    masked_lm = transformers.AutoModelForMaskedLM.from_config(tiny_config("bert"))
    rows = [{"input_ids": [5, 6, 7, 8], "labels": [-100, 60, -100, 42]}]
    _check_label_range(masked_lm, "calibration_dataset", rows)
    choice = transformers.AutoModelForMultipleChoice.from_config(tiny_config("bert"))
    ids = [[5, 6, 7, 8], [9, 10, 11, 12]] if padded else [[5, 6, 7], [9, 10, 11, 12, 13]]
    _check_label_range(choice, "calibration_dataset", [{"input_ids": ids, "labels": 3}])
    _check_ids_fit(choice, "calibration_dataset", [ids])
    with pytest.raises(ValueError, match="calibration_dataset holds token id 120"):
        _check_ids_fit(choice, "calibration_dataset", [ids[:1] + [[7, 120]]])


def test_numpy_numbers_are_taken_as_the_numbers_they_are():
    import numpy as np

    result = post_training_prune(tiny_model("bert"), labelled_examples(16), np.float32(0.5), data_collator=pad_collator,
                                 seq_len=np.int64(16), ridge=np.float32(0.01), batch_size=np.int32(8), progress=False)
    assert result.settings["ridge"] == pytest.approx(0.01) and result.comparison.layer_flops_removed > 0.4


def test_a_model_configured_to_return_tuples_is_pruned_to_a_numpy_target():
    import numpy as np

    model = tiny_model("bert", return_dict=False)
    result = post_training_prune(model, labelled_examples(16), np.float32(0.5), metric="accuracy",
                                 eval_dataset=labelled_examples(8, seed=5), data_collator=pad_collator, seq_len=16,
                                 progress=False)
    assert result.comparison["layer_flops_removed"] > 0.3


def test_too_few_calibration_tokens_leave_the_groups_unfitted_with_a_warning(caplog):
    """One row (under 14 tokens) cannot determine a re-fit of up to 37 kept columns and a bias: the underdetermined
    ridge system fits those tokens (a near-zero error reported) and moves the logits away from the dense model's
    on others (27.8 against 17.3 without the re-fit, before the fix). Skipped instead."""
    model = tiny_model("bert", initializer_range=0.3)  # large weights: a bad re-fit moves the logits
    rows = labelled_examples(1)
    tokens = sum(len(row["input_ids"]) for row in rows)
    check = pad_collator(labelled_examples(64, seed=9))
    common = dict(data_collator=pad_collator, seq_len=16, progress=False)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        refitted = post_training_prune(model, rows, 0.3, **common)
    plain = post_training_prune(model, rows, 0.3, refit=False, **common)
    with torch.no_grad():
        dense = model(**check).logits
        refit_distance = float((refitted.model(**check).logits - dense).norm())
        plain_distance = float((plain.model(**check).logits - dense).norm())
    assert refit_distance <= plain_distance + 1e-5
    assert f"re-fit sees {tokens} real tokens" in caplog.text  # the warning up front
    skipped = refitted.refit_skipped
    assert skipped and refitted.refit_errors == {}  # no error reported for a fit not made
    assert set(skipped) <= {group.name for group in find_groups(model)}
    for name, record in skipped.items():
        assert record["tokens"] == tokens and record["needed"] == 2 * (record["kept_columns"] + 1) > tokens
        assert f"re-fit of {name}: {tokens} calibration tokens for {record['kept_columns']} kept" in caplog.text
    assert refitted.summary()["refit_skipped"] == skipped  # in post_training_report.json too


def test_a_search_names_each_unfitted_group_once_not_once_per_ratio(caplog):
    """A search re-fits once per ratio tried; a group short of tokens was warned about at every try."""
    model = tiny_model("bert", initializer_range=0.3)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        result = post_training_prune(model, labelled_examples(1), None, metric="loss", tolerance=0.02,
                                     eval_dataset=labelled_examples(32, seed=5), data_collator=pad_collator,
                                     seq_len=16, progress=False)
    tries = [h for h in result.history if h["event"] in ("keep", "rollback")]
    assert len(tries) >= 2
    named = [record.getMessage().split(":")[0] for record in caplog.records
             if record.getMessage().startswith("re-fit of")]
    assert named and len(named) == len(set(named)), named


def test_enough_calibration_tokens_refit_every_pruned_group_without_a_warning(caplog):
    model = tiny_model("bert")
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        result = post_training_prune(model, labelled_examples(32), 0.5, data_collator=pad_collator, seq_len=16,
                                     progress=False)
    assert result.refit_skipped == {} and result.refit_errors
    assert "calibration tokens" not in caplog.text and "real tokens" not in caplog.text


@pytest.mark.parametrize("argument", ["calibration_dataset", "eval_dataset"])
@pytest.mark.parametrize("form", ["dataset", "list"])
def test_raw_text_rows_are_refused_with_how_to_tokenize_them(argument, form):
    import datasets

    raw = {"sentence": ["a fine film", "dull"] * 4, "label": [1, 0] * 4}
    raw = datasets.Dataset.from_dict(raw) if form == "dataset" else [
        {"sentence": s, "label": l} for s, l in zip(raw["sentence"], raw["label"])]
    model = tiny_model("bert")
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    arguments = dict(calibration_dataset=labelled_examples(8), target=0.5, data_collator=pad_collator, seq_len=16,
                     progress=False) | {argument: raw}
    with pytest.raises(ValueError) as error:
        post_training_prune(model, **arguments)
    message = str(error.value)
    assert message.startswith(f"{argument} has no 'input_ids'") and "['label', 'sentence']" in message
    if form == "dataset":
        how = f'{argument} = {argument}.map(lambda b: tokenizer(b["sentence"], truncation=True), batched=True)'
    else:
        how = f'{argument} = [dict(row, **tokenizer(row["sentence"], truncation=True)) for row in {argument}]'
    assert "tokenize it first" in message and how in message
    assert calls == []


@pytest.mark.parametrize("key", ["label", "label_ids"])
def test_rows_labelled_under_another_key_are_scored_and_checked_as_labels(key):
    """A collator that keeps ``label`` / ``label_ids`` as given: the forward pass only takes ``labels=``."""
    rows = [{("input_ids" if k == "input_ids" else key if k == "labels" else k): v for k, v in r.items()}
            for r in labelled_examples(32)]

    def keeps_key(batch):
        out = pad_collator([{"input_ids": r["input_ids"], "labels": r[key]} for r in batch])
        out[key] = out.pop("labels")
        return out

    batches = calibration_batches(rows, keeps_key, 8, model_input_names(tiny_model("bert")))
    assert all("labels" in batch and key not in batch for batch in batches)
    result = post_training_prune(tiny_model("bert"), rows, 0.3, data_collator=keeps_key, seq_len=16,
                                 metric="accuracy", eval_dataset=rows, progress=False)
    assert 0 < result.model.num_parameters() < tiny_model("bert").num_parameters()


def test_the_few_tokens_warning_counts_only_the_kinds_pruned(caplog):
    """With kinds=("heads",) the FFN output projections are neither pruned nor re-fit: their width sets no floor."""
    from hf_adaprune.post_training.refit import refit_token_floor

    model = tiny_model("bert")
    widths = {g.kind: model.base_model.get_submodule(g.output).in_features for g in find_groups(model)}
    rows = labelled_examples(40)
    while sum(len(r["input_ids"]) for r in rows) >= refit_token_floor(widths["ffn"]):
        rows.pop()
    tokens = sum(len(r["input_ids"]) for r in rows)
    assert refit_token_floor(widths["heads"]) <= tokens < refit_token_floor(widths["ffn"])
    common = dict(data_collator=pad_collator, seq_len=16, progress=False)
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        result = post_training_prune(model, rows, 0.3, kinds=("heads",), **common)
    assert "re-fit sees" not in caplog.text and result.refit_skipped == {}
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        post_training_prune(model, rows, 0.3, **common)  # the FFN groups are re-fit too: they need more
    assert f"re-fit sees {tokens} real tokens" in caplog.text


def test_a_chunked_feed_forward_scores_and_refits_as_the_unchunked_model():
    """config.chunk_size_feed_forward > 0 calls the FFN's output projection once per chunk of positions (the same
    outputs); the probes and re-fit hooks see one call per batch, so both models are pruned alike."""
    rows = labelled_examples(40)
    results = [post_training_prune(random_biases(tiny_model("bert", chunk_size_feed_forward=chunk)), rows, 0.5,
                                   data_collator=pad_collator, seq_len=16, progress=False) for chunk in (0, 2)]
    plain, chunked = results
    for name, scores in plain.scores.items():
        torch.testing.assert_close(chunked.scores[name], scores, rtol=1e-5, atol=1e-8)
    assert chunked.refit_errors.keys() == plain.refit_errors.keys() and plain.refit_errors
    batch = pad_collator(rows[:5])
    with torch.no_grad():
        torch.testing.assert_close(chunked.model(**batch).logits, plain.model(**batch).logits, rtol=1e-4, atol=1e-5)
    assert chunked.model.config.chunk_size_feed_forward == 2


def test_rows_in_torch_format_are_pruned_as_lists():
    from datasets import Dataset

    rows = labelled_examples(24)
    width = max(len(row["input_ids"]) for row in rows)
    columns = {"input_ids": [row["input_ids"] + [0] * (width - len(row["input_ids"])) for row in rows],
               "attention_mask": [[1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"])) for row in rows],
               "labels": [row["labels"] for row in rows]}
    as_lists = Dataset.from_dict(columns)
    as_tensors = Dataset.from_dict(columns).with_format("torch")
    pruned = [post_training_prune(tiny_model("bert"), data, 0.5, seq_len=16, progress=False).model
              for data in (as_lists, as_tensors)]
    batch = pad_collator(rows[:4])
    with torch.no_grad():
        torch.testing.assert_close(pruned[1](**batch).logits, pruned[0](**batch).logits)


def test_question_answering_and_a_dataset_dict_are_refused_with_what_to_do():
    import transformers
    from datasets import Dataset, DatasetDict

    qa = transformers.AutoModelForQuestionAnswering.from_config(tiny_model("bert").config)
    rows = [{"input_ids": row["input_ids"], "start_positions": 1, "end_positions": 2} for row in labelled_examples(4)]
    with pytest.raises(UnsupportedModelError, match="BertForQuestionAnswering learns from start/end positions"):
        post_training_prune(qa, rows, 0.5, data_collator=pad_collator, progress=False)
    splits = DatasetDict(train=Dataset.from_list(labelled_examples(4)))
    with pytest.raises(ValueError, match=r"calibration_dataset is a DatasetDict of the splits \['train'\]: pass one "
                                         r"split, e.g. calibration_dataset\['train'\]"):
        post_training_prune(tiny_model("bert"), splits, 0.5, data_collator=pad_collator, progress=False)


def test_raw_scores_select_as_the_engine_does_without_normalising():
    from hf_adaprune.reporting.flops import structure_costs

    rows = labelled_examples(24)
    dense = tiny_model("bert")
    result = post_training_prune(dense, rows, 0.5, refit=False, normalize_scores=False, data_collator=pad_collator,
                                 seq_len=16, progress=False)
    assert result.settings["normalize_scores"] is False
    groups = find_groups(dense)
    ones = {g.name: torch.ones(len(result.scores[g.name])) for g in groups}
    expected = select_masks_by_kind(groups, result.scores, ones, 0.5, scope="global",
                                    costs=structure_costs(dense, groups, 16), normalize=False)
    normalised = select_masks_by_kind(groups, result.scores, ones, 0.5, scope="global",
                                      costs=structure_costs(dense, groups, 16))
    assert any(not torch.equal(expected[n], normalised[n]) for n in expected), "the two rankings differ here"
    record = json.loads(result.model.config.to_json_string())["adaprune"]["groups"]
    assert {name: int(entry["kept_mask"], 16) for name, entry in record.items()} == {
        name: sum(1 << i for i, kept in enumerate(mask.tolist()) if kept) for name, mask in expected.items()}


def test_a_tokenizer_pads_token_classification_rows_with_their_per_token_labels():
    """tokenizer= padded every head's batches with DataCollatorWithPadding, which cannot pad per-token labels: a
    token classifier failed inside transformers' collation ("excessive nesting"), naming neither argument."""
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, 99)]
    tokenizer = transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    model = transformers.BertForTokenClassification(tiny_model("bert").config).eval()
    rows = [{"input_ids": row["input_ids"], "labels": [i % 3 for i in range(len(row["input_ids"]))]}
            for row in labelled_examples(16)]
    result = post_training_prune(model, rows, 0.5, metric="accuracy", eval_dataset=rows, tokenizer=tokenizer,
                                 seq_len=16, progress=False)
    assert result.comparison.layer_flops_removed > 0.3


def test_a_model_given_as_the_tokenizer_is_refused_before_any_work():
    """It failed in the padding collator: "'BertForSequenceClassification' object has no attribute 'pad'"."""
    with pytest.raises(TypeError, match="tokenizer= got a BertForSequenceClassification: pass the model's tokenizer"):
        post_training_prune(tiny_model("bert"), labelled_examples(8), 0.5, tokenizer=tiny_model("bert"), seq_len=16,
                            progress=False)
