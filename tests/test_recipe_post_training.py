"""recipes/text_classification.py --post_training: a fine-tuned tiny BERT pruned without training, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT, load_recipe
from test_recipe_text_classification import workspace  # noqa: F401 (the fixture)
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from hf_adaprune import AutoPrunedModel
from recipes.arguments import RecipeError, read_config_file

recipe = load_recipe("text_classification")


@pytest.fixture(scope="module")
def fine_tuned(workspace):  # noqa: F811
    """A tiny BERT "fine-tuned" classifier (random weights, saved as one) with the workspace's tokenizer."""
    folder = workspace / "fine_tuned"
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(workspace / "config", num_labels=2, id2label={0: "negative", 1: "positive"},
                                        label2id={"negative": 0, "positive": 1}, initializer_range=0.2)
    config.architectures = ["BertForSequenceClassification"]
    BertForSequenceClassification(config).save_pretrained(folder)
    BertTokenizerFast.from_pretrained(workspace / "tokenizer").save_pretrained(folder)
    return folder


def post_args(ws, model, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(model), "--train_file", str(ws / "train.tsv"),
            "--validation_file", str(ws / "dev.tsv"), "--test_file", str(ws / "test.tsv"),
            "--label_mapping", "0:negative,1:positive", "--output_dir", str(out), "--post_training", "true",
            "--pruning_metric", "accuracy", "--pruning_target", "0.5", "--pruning_tolerance", "1.0",
            "--per_device_train_batch_size", "8", "--max_seq_length", "32", "--pruning_seq_len", "32",
            "--post_training_calibration_samples", "40", "--post_training_refit_samples", "24",
            "--latency_repeats", "0", "--disable_tqdm", "true", *extra]


def test_post_training_run_writes_the_pruned_folder_and_an_honest_report(workspace, fine_tuned, tmp_path,
                                                                         monkeypatch):  # noqa: F811
    def no_optimizer(*args, **kwargs):
        raise AssertionError("--post_training created an optimizer")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", no_optimizer)
    out = tmp_path / "out"
    results = recipe.main(post_args(workspace, fine_tuned, out))
    assert results["mode"] == "post_training" and results["train"] is None
    assert "no optimizer step" in results["pruning"]["stop_reason"]
    assert results["comparison"]["layer_flops_removed"] == pytest.approx(0.5, abs=0.1)
    assert results["post_training"]["refit_target"] == "dense_residual"
    assert results["samples"]["train"] == 40 == results["post_training"]["calibration_samples"]  # of 60 rows
    test = results["test"]
    assert test["samples"] == 24 and test["dense_accuracy"] is not None and test["pruned_accuracy"] is not None
    assert results["validation"]["dense_reference"] is not None
    saved = json.loads((out / "results.json").read_text())
    assert saved["mode"] == "post_training"
    assert (out / "post_training_report.json").exists()
    card = (out / "README.md").read_text()
    assert "without training" in card and "no optimizer step" in card
    assert "base_model:" not in card  # a local folder is not a Hub id: the metadata would point nowhere
    import yaml

    assert yaml.safe_load(card.split("---")[1])["pipeline_tag"] == "text-classification"  # the Hub's widget
    # the folder loads as the Hub-format pruned model and scores what the run reported on the test rows
    model = AutoPrunedModel.from_pretrained(out)
    tokenizer = BertTokenizerFast.from_pretrained(out)
    rows = [line.split("\t") for line in (workspace / "test.tsv").read_text().splitlines()[1:]]
    encoded = tokenizer([r[0] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**encoded).logits.argmax(-1)
    accuracy = float((predicted == torch.tensor([int(r[1]) for r in rows])).float().mean())
    assert accuracy == pytest.approx(test["pruned_accuracy"], abs=1e-6)
    assert model.config.adaprune["groups"]


def test_post_training_of_a_pruned_folder_calls_its_start_the_start(workspace, fine_tuned, tmp_path):  # noqa: F811
    """Pruned again without training, the model as loaded is no dense model: the table, the card and results.json
    said "dense" (and the card's share of FLOPs was of the pruned start)."""
    recipe.main(post_args(workspace, fine_tuned, tmp_path / "first"))
    first_card = (tmp_path / "first" / "README.md").read_text()
    assert "| | dense | pruned |" in first_card and "(pruned before)" not in first_card
    results = recipe.main(post_args(workspace, tmp_path / "first", tmp_path / "second"))
    assert results["pruning"]["start_pruned"] is True
    card = (tmp_path / "second" / "README.md").read_text()
    assert "| | start | pruned |" in card and "of the layer FLOPs of the model as loaded (pruned before) removed" in card
    assert json.loads((tmp_path / "second" / "results.json").read_text())["pruning"]["start_pruned"] is True


def test_vocabulary_keeps_the_tokens_of_the_whole_training_split_not_the_calibration_rows(
        workspace, fine_tuned, tmp_path):  # noqa: F811
    extra = ["--post_training_calibration_samples", "4", "--post_training_refit_samples", "4",
             "--prune_vocabulary", "true"]
    results = recipe.main(post_args(workspace, fine_tuned, tmp_path / "out", *extra))
    assert results["post_training"]["calibration_samples"] == 4
    deployed = BertTokenizerFast.from_pretrained(tmp_path / "out" / "deploy" / "vocabulary")
    original = BertTokenizerFast.from_pretrained(fine_tuned)
    texts = [line.split("\t")[0] for line in (workspace / "train.tsv").read_text().splitlines()[1:]]
    assert len(texts) > 4 and all(deployed.tokenize(text) == original.tokenize(text) for text in texts)


def test_long_share_mixes_the_longest_training_rows_into_the_calibration(workspace, fine_tuned, tmp_path,
                                                                          monkeypatch):  # noqa: F811
    import recipes.post_training as post_training

    drawn = {}
    original = post_training.length_mixed_calibration

    def recorded(dataset, samples, **kwargs):
        drawn["pool"], drawn["chosen"] = dataset, original(dataset, samples, **kwargs)
        return drawn["chosen"]

    monkeypatch.setattr(post_training, "length_mixed_calibration", recorded)
    results = recipe.main(post_args(workspace, fine_tuned, tmp_path / "out", "--post_training_calibration_samples",
                                    "20", "--post_training_long_share", "0.5"))
    assert results["post_training"]["calibration_samples"] == 20 and results["post_training"]["long_share"] == 0.5
    pool_lengths = sorted((len(ids) for ids in drawn["pool"]["input_ids"]), reverse=True)
    assert len(pool_lengths) == 60  # 5 x 20 rows asked, the workspace's 60 training rows at most
    long_length = pool_lengths[len(pool_lengths) // 5 - 1]  # the shortest length among the longest fifth
    chosen = [len(ids) for ids in drawn["chosen"]["input_ids"]]
    assert len(chosen) == 20 and sum(n >= long_length for n in chosen) >= 10


@pytest.mark.parametrize("samples, share, message", [
    ("40", "0.5", "20 long rows and 20 others of 40 drawn do not fit the longest fifth of the training split's 60 "
                  "rows (12); the longest 20 rows count as long instead"),
    ("60", "0.1", "6 long rows and 54 others of 60 drawn do not fit the longest fifth of the training split's 60 rows "
                  "(12); the longest 6 rows count as long instead")])
def test_long_share_on_a_small_training_split_fits_the_long_rows_with_a_warning(workspace, fine_tuned, tmp_path,
                                                                               caplog, samples, share,
                                                                               message):  # noqa: F811
    """The 60 training rows' longest fifth (12) holds too few long rows (0.5 of 40), or leaves too few others (every
    row drawn at 0.1): as many rows count as long as both need (a warning says so), not a failure after loading."""
    with caplog.at_level("WARNING"):
        results = recipe.main(post_args(workspace, fine_tuned, tmp_path / "out", "--post_training_long_share", share,
                                        "--post_training_calibration_samples", samples))
    assert results["post_training"]["calibration_samples"] == int(samples)
    assert message in caplog.text


def test_a_model_beyond_the_tolerance_is_flagged_in_the_table_and_the_card(workspace, fine_tuned, tmp_path,
                                                                             capsys, monkeypatch):  # noqa: F811
    """At a fixed target the pruned model is kept whatever its metric; only results.json said it missed."""
    import dataclasses

    import recipes.post_training as post_training

    real = post_training.post_training_prune

    def missing_the_tolerance(*args, **kwargs):  # this tiny classifier's accuracy does not move when pruned
        result = real(*args, **kwargs)
        return dataclasses.replace(result, metric=result.reference - 0.25, within_tolerance=False)

    monkeypatch.setattr(post_training, "post_training_prune", missing_the_tolerance)
    out = tmp_path / "out"
    results = recipe.main(post_args(workspace, fine_tuned, out, "--pruning_tolerance", "0.1"))
    assert results["validation"]["within_tolerance"] is False
    assert "tolerance 0.1000 absolute, BEYOND it" in capsys.readouterr().out
    assert "**beyond the tolerance** asked (0.1 absolute)" in (out / "README.md").read_text()
    monkeypatch.undo()
    within = recipe.main(post_args(workspace, fine_tuned, tmp_path / "within"))  # tolerance 1.0: no flag
    assert within["validation"]["within_tolerance"] is True and "BEYOND" not in capsys.readouterr().out
    assert "beyond the tolerance" not in (tmp_path / "within" / "README.md").read_text()


@pytest.fixture(scope="module")
def swapped_classifier(workspace):  # noqa: F811
    """A classifier whose class 0 is "positive", which predicts class 0 for every input."""
    folder = workspace / "swapped_classifier"
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(workspace / "config", num_labels=2, id2label={0: "positive", 1: "negative"},
                                        label2id={"positive": 0, "negative": 1})
    config.architectures = ["BertForSequenceClassification"]
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(0.01)  # small, not 0: gradients still reach the encoder
        model.classifier.bias.copy_(torch.tensor([10.0, -10.0]))
    model.save_pretrained(folder)
    BertTokenizerFast.from_pretrained(workspace / "tokenizer").save_pretrained(folder)
    return folder


def positive_share(path) -> float:
    labels = [line.split("\t")[1] for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return labels.count("1") / len(labels)


@pytest.mark.parametrize("mode", ["post_training", "training"])
def test_a_classifier_keeps_what_its_classes_mean_when_the_data_orders_them_otherwise(
        workspace, swapped_classifier, tmp_path, mode):  # noqa: F811
    """The data says 0:negative,1:positive, the model's class 0 is "positive": the data's labels are numbered as the
    model's (the training path renamed the model's classes before: its "positive" head row became "negative")."""
    out = tmp_path / "out"
    if mode == "post_training":
        results = recipe.main(post_args(workspace, swapped_classifier, out))
    else:
        results = recipe.main([
            "--model_name_or_path", str(swapped_classifier), "--train_file", str(workspace / "train.tsv"),
            "--validation_file", str(workspace / "dev.tsv"), "--test_file", str(workspace / "test.tsv"),
            "--label_mapping", "0:negative,1:positive", "--output_dir", str(out), "--pruning_metric", "accuracy",
            "--learning_rate", "0", "--max_steps", "4", "--pruning_warmup_steps", "2", "--pruning_interval", "1",
            "--pruning_tolerance", "1.0", "--per_device_train_batch_size", "8", "--max_seq_length", "32",
            "--pruning_seq_len", "32", "--save_strategy", "no", "--latency_repeats", "0", "--disable_tqdm", "true"])
    # it predicts its class 0, "positive", everywhere: right on the positive rows only
    assert results["test"]["dense_accuracy"] == pytest.approx(positive_share(workspace / "test.tsv"))
    assert positive_share(workspace / "test.tsv") != 0.5
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "positive", "1": "negative"}


@pytest.mark.parametrize("extra, message", [
    (["--dense_control", "true"], "--dense_control applies to pruning while training"),
    (["--distillation", "true"], "--distillation applies to pruning while training"),
    (["--prune", "layers"], "whole layers only while training"),
    (["--prune", "heads, layers"], "whole layers only while training"),
    (["--pruning_criterion", "magnitude"], "--post_training scores with fisher or taylor"),
    (["--post_training_refit_target", "teacher"], "--post_training_refit_target must be one of"),
    (["--pruning_target_type", "latency"], "leave --pruning_target_type at 'flops'"),
    (["--pruning_multiple_of", "8"], "leave --pruning_multiple_of at 1"),
    (["--pruning_scope", "layer"], "--pruning_scope 'layer': --post_training ranks the structures of all layers "
                                   "together; leave --pruning_scope at 'global'"),
    (["--post_training_search", "true", "--pruning_initial_step", "0.2"],
     "--pruning_initial_step 0.2: --post_training searches with a first step of 0.1"),
    (["--pruning_step_growth", "2"], "leave --pruning_step_growth at 1.5"),
    (["--resume_from_checkpoint", "true"], "no checkpoints to resume from"),
    # read by nothing: the run went on with the --post_training_* defaults, rc 0
    (["--pruning_refit", "true", "--pruning_refit_target", "same_input"],
     "--pruning_refit True applies to the re-fit while training; --post_training's re-fit takes "
     "--post_training_refit"),
    (["--pruning_warmup_steps", "3"], "--pruning_warmup_steps 3 applies to pruning while training; --post_training "
                                      "does not read it"),
    (["--compact_at_end", "false"], "--compact_at_end False applies to pruning while training"),
    (["--pruning_target", "1.0"], "--pruning_target must be in"),
    (["--post_training_long_share", "1.5"], "--post_training_long_share .* must lie in \\[0, 1\\], got 1.5"),
    (["--label_mapping", "0:bad,1:good"], "the data's labels \\['bad', 'good'\\] are not the model's"),
    # a model of fewer layers than the one saved: transformers dropped the others' weights, and a broken model was
    # pruned and saved (rc 0)
    (["--config_name", "CONFIG"], "--config_name .*: --post_training prunes the fine-tuned model of "
                                  "--model_name_or_path as saved"),
])
def test_bad_combinations_fail_before_any_work(workspace, fine_tuned, tmp_path, extra, message):  # noqa: F811
    extra = [str(workspace / "config") if value == "CONFIG" else value for value in extra]
    with pytest.raises(RecipeError, match=message):
        recipe.main(post_args(workspace, fine_tuned, tmp_path / "out", *extra))
    assert not (tmp_path / "out" / "results.json").exists()


def test_push_to_hub_is_refused_before_any_work(workspace, fine_tuned, tmp_path, monkeypatch):  # noqa: F811
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online: the push itself is what cannot be done
    with pytest.raises(RecipeError, match="--push_to_hub: --post_training writes its folder without a Trainer and "
                                          "pushes nothing"):
        recipe.main(post_args(workspace, fine_tuned, tmp_path / "out", "--push_to_hub", "true"))
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_not_a_fine_tuned_encoder_classifier_is_refused(workspace, tmp_path):  # noqa: F811
    with pytest.raises(RecipeError, match="needs a fine-tuned sequence classifier"):  # a bare encoder config
        recipe.main(post_args(workspace, workspace / "config", tmp_path / "a") + ["--tokenizer_name",
                                                                                   str(workspace / "tokenizer")])
    from transformers import BartConfig, BartForSequenceClassification
    bart = tmp_path / "bart"
    BartForSequenceClassification(BartConfig(vocab_size=99, d_model=16, encoder_layers=1, decoder_layers=1,
                                             encoder_attention_heads=2, decoder_attention_heads=2,
                                             encoder_ffn_dim=16, decoder_ffn_dim=16)).save_pretrained(bart)
    with pytest.raises(RecipeError, match="supports the encoder families"):
        recipe.main(post_args(workspace, bart, tmp_path / "b") + ["--tokenizer_name", str(workspace / "tokenizer")])
    with pytest.raises(RecipeError, match="give --model_name_or_path"):
        args = post_args(workspace, "x", tmp_path / "c")
        args[args.index("--model_name_or_path"):args.index("--model_name_or_path") + 2] = [
            "--config_name", str(workspace / "config"), "--tokenizer_name", str(workspace / "tokenizer")]
        recipe.main(args)


def test_the_shipped_post_training_config_parses_and_asks_for_post_training():
    path = ROOT / "recipes" / "configs" / "sst2_minilm_post_training.yaml"
    values = read_config_file(str(path))
    assert values["post_training"] is True
    _, data_args, training_args = recipe.parse_args([str(path)])
    assert data_args.post_training and 0 < training_args.pruning_target < 1
    assert training_args.pruning_criterion in ("taylor", "fisher")


def test_the_card_and_results_say_which_groups_were_re_fitted(workspace, fine_tuned, tmp_path):  # noqa: F811
    few = ["--post_training_calibration_samples", "2", "--post_training_refit_samples", "2"]  # too few FFN tokens
    results = recipe.main(post_args(workspace, fine_tuned, tmp_path / "both", *few))
    post = results["post_training"]
    assert post["structures"] == ["heads", "ffn"] and post["refit"] is True
    assert post["refitted"] and post["refit_skipped"]  # the attention groups re-fitted, the FFN groups not
    assert all(name.endswith(".attention") for name in post["refitted"])
    assert all(name.endswith(".ffn") for name in post["refit_skipped"])
    assert json.loads((tmp_path / "both" / "results.json").read_text())["post_training"]["refit_skipped"] == \
        post["refit_skipped"]
    card = (tmp_path / "both" / "README.md").read_text()
    assert "attention heads and FFN neurons scored on 2 training rows" in card
    assert (f"each pruned layer's output projection re-fitted by least squares except those of "
            f"{', '.join(post['refit_skipped'])} (too few calibration tokens)") in card

    results = recipe.main(post_args(workspace, fine_tuned, tmp_path / "ffn", *few, "--prune", "ffn"))
    post = results["post_training"]
    assert post["structures"] == ["ffn"] and not post["refitted"] and post["refit_skipped"]
    card = (tmp_path / "ffn" / "README.md").read_text()
    assert "attention heads" not in card and "FFN neurons scored on 2 training rows" in card
    assert "re-fitted by least squares" not in card
    assert f"no output projection re-fitted (too few calibration tokens for {', '.join(post['refit_skipped'])})" \
        in card


def test_prune_takes_a_comma_list_with_spaces_as_training_does(workspace, fine_tuned, tmp_path):  # noqa: F811
    """"ffn, heads" (a YAML or shell spelling PruningArguments accepts) was refused as naming whole layers."""
    results = recipe.main(post_args(workspace, fine_tuned, tmp_path / "out", "--prune", "ffn, heads"))
    assert results["post_training"]["structures"] == ["heads", "ffn"]


def test_without_the_refit_no_refit_setting_is_reported(workspace, fine_tuned, tmp_path):  # noqa: F811
    """results.json named the re-fit's target and ridge, post_training_report.json its rows, though none ran."""
    out = tmp_path / "out"
    results = recipe.main(post_args(workspace, fine_tuned, out, "--post_training_refit", "false"))
    post = results["post_training"]
    assert post["refit"] is False and (post["refit_target"], post["refit_samples"], post["ridge"]) == (None,) * 3
    settings = json.loads((out / "post_training_report.json").read_text())["settings"]
    assert (settings["refit_target"], settings["refit_samples"], settings["ridge"]) == (None,) * 3


def test_an_output_folder_with_checkpoints_is_refused_without_advice_to_resume(workspace, fine_tuned,  # noqa: F811
                                                                                 tmp_path):
    """--post_training has no checkpoints: the advice to pass --resume_from_checkpoint true led to another error."""
    (tmp_path / "out" / "checkpoint-10").mkdir(parents=True)
    with pytest.raises(RecipeError, match=r"already holds 1 entries \(checkpoint-10\); choose another folder or "
                                          r"pass --overwrite_output_dir true"):
        recipe.main(post_args(workspace, fine_tuned, tmp_path / "out"))


def test_results_record_the_refit_rows_used_not_those_asked_for(workspace, fine_tuned, tmp_path):  # noqa: F811
    results = recipe.main(post_args(workspace, fine_tuned, tmp_path / "out", "--post_training_calibration_samples",
                                    "6", "--post_training_refit_samples", "24"))
    post = results["post_training"]
    assert post["calibration_samples"] == 6 and post["refit_samples"] == 6  # 24 asked, 6 calibration rows exist
    assert json.loads((tmp_path / "out" / "results.json").read_text())["post_training"]["refit_samples"] == 6


@pytest.mark.parametrize("extra, normalised", [((), False), (("--pruning_normalize_scores", "true"), True)])
def test_post_training_ranks_raw_scores_unless_asked_to_normalise(workspace, fine_tuned, tmp_path, extra,
                                                                  normalised):  # noqa: F811
    out = tmp_path / "out"
    recipe.main(post_args(workspace, fine_tuned, out, *extra))
    report = json.loads((out / "post_training_report.json").read_text())
    assert report["settings"]["normalize_scores"] is normalised


def test_the_card_goes_beside_a_readme_of_the_users(workspace, fine_tuned, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    own = "# my own notes\n\nDo not touch.\n"
    (out / "README.md").write_text(own)
    recipe.main(post_args(workspace, fine_tuned, out, "--overwrite_output_dir", "true"))
    assert (out / "README.md").read_text() == own
    assert "pruned **without training**" in (out / "README.hf_adaprune.md").read_text()
