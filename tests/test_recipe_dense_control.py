"""The run skeleton's dense model for the comparison: the snapshot at the pruning reference and --dense_control.

On a tiny BERT and a small synthetic sentiment set: the control is trained for exactly the
pruning run's steps on the same batches in the same order, saved, and scored on the test
set; without it the printed table says that the dense column had fewer training steps.
The snapshot's weights do not depend on where its callback sits among the trainer's.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertTokenizerFast,
    DataCollatorWithPadding,
)

from hf_adaprune import AdaptivePruningTrainer, get_masks

from conftest import load_recipe

recipe = load_recipe("text_classification")
skeleton = load_recipe("skeleton")
GOOD, BAD = ["good", "great", "fine", "nice", "superb"], ["bad", "awful", "poor", "dull", "weak"]
FILLER = ["the", "a", "movie", "plot", "actors", "was", "very", "and", "story", "film"]
TRAIN_BATCH = 5  # no evaluation batch has this size: the collator tells training batches by it


def _sentences(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 4) + [rng.choice(GOOD if label else BAD)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("control")
    for name, n, seed in (("train", 40, 0), ("dev", 16, 1), ("test", 16, 2)):
        lines = ["sentence,label"] + [f"{s},{y}" for s, y in _sentences(n, seed)]
        (tmp / f"{name}.csv").write_text("\n".join(lines) + "\n")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(GOOD + BAD + FILLER)
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(tmp / "vocab.txt")).save_pretrained(tmp / "tokenizer")
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=128).save_pretrained(tmp / "config")
    return tmp


def run_args(ws, out, *extra) -> list[str]:
    return [
        "--config_name", str(ws / "config"), "--tokenizer_name", str(ws / "tokenizer"),
        "--train_file", str(ws / "train.csv"), "--validation_file", str(ws / "dev.csv"),
        "--test_file", str(ws / "test.csv"), "--output_dir", str(out), "--max_seq_length", "16",
        "--max_steps", "6", "--learning_rate", "5e-3", "--per_device_train_batch_size", str(TRAIN_BATCH),
        "--per_device_eval_batch_size", "16", "--pruning_metric", "accuracy", "--pruning_target", "0.5",
        "--pruning_tolerance", "1.0", "--pruning_warmup_steps", "2", "--pruning_interval", "2",
        "--pruning_initial_step", "0.25", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--latency_repeats", "1", *extra,
    ]


def test_control_has_the_pruning_runs_steps_and_batches(workspace, tmp_path, monkeypatch, capsys):
    batches = []

    class RecordingCollator(DataCollatorWithPadding):
        def __call__(self, features):
            if len(features) == TRAIN_BATCH:
                batches.append([list(f["input_ids"]) for f in features])
            return super().__call__(features)

    monkeypatch.setattr(recipe, "DataCollatorWithPadding", RecordingCollator)
    out = tmp_path / "out"
    results = recipe.main(run_args(workspace, out, "--dense_control", "true"))

    control = results["dense_control"]
    assert control["steps"] == results["train"]["global_step"] == 6
    # pruning run, then control: the same batches in the same order (each loader may fetch one batch ahead)
    assert len(batches) % 2 == 0 and len(batches) >= 12 and batches[:6] == batches[len(batches) // 2:][:6]
    assert batches[0] != batches[1] and any(token > 4 for row in batches[0] for token in row)
    test = results["test"]
    assert test["control_steps"] == 6 and test["dense_step"] == 2
    assert all(test[f"{side}_accuracy"] is not None for side in ("dense", "control", "pruned"))
    assert results["latency"]["dense_model"] == "dense control"
    assert json.loads((out / "results.json").read_text())["test"]["control_accuracy"] == test["control_accuracy"]

    # the saved control reproduces its test accuracy
    model = AutoModelForSequenceClassification.from_pretrained(control["output_dir"]).eval()
    assert get_masks(model) is None and model.config.num_attention_heads == 4
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    rows = [line.split(",") for line in (workspace / "test.csv").read_text().splitlines()[1:]]
    batch = tokenizer([r[0] for r in rows], truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    accuracy = (predictions == torch.tensor([int(r[1]) for r in rows])).float().mean().item()
    assert accuracy == pytest.approx(test["control_accuracy"])

    card = (out / "README.md").read_text()
    assert "## Compared with an equally trained dense model" in card
    assert f"| accuracy | {test['control_accuracy']:.4f} | {test['pruned_accuracy']:.4f} |" in card

    table = capsys.readouterr().out
    assert "control (6 steps)" in table and "change vs control" in table
    assert "note: the dense column" not in table


def test_without_control_the_table_says_the_dense_column_trained_less(workspace, tmp_path, capsys):
    results = recipe.main(run_args(workspace, tmp_path / "out", "--latency_repeats", "0"))
    assert results["dense_control"] is None and results["test"]["control_accuracy"] is None
    assert results["test"]["dense_accuracy"] is not None
    table = capsys.readouterr().out
    assert ("note: the dense column is the model at step 2 (the pruning reference); the pruned model trained to "
            "step 6, so it had more training") in table
    assert "--dense_control true" in table


def test_a_run_that_never_saw_the_reference_weights_says_why_the_dense_column_is_empty():
    results_module = load_recipe("results")
    results = {"test": {"samples": 4, "metrics": ["accuracy"], "dense_step": None, "dense_accuracy": None,
                        "control_accuracy": None, "pruned_accuracy": 0.75},
               "validation": {"metric": "accuracy", "samples": 4, "dense_reference": 0.5, "pruned_final": 0.5,
                              "tolerance": 0.01, "tolerance_type": "absolute"},
               "comparison": None, "latency": None, "dense_control": None, "train": {"global_step": 6},
               "pruning": {"final_sparsity": 0.5, "target_type": "flops", "target": 0.5, "stop_reason": "target"}}
    table = results_module.results_table(results, lambda name, value: "" if value is None else f"{value:.2f}")
    assert "note: no dense column: this run did not see the weights of the pruning reference" in table
    assert "step None" not in table
    # the per-kind figure says so (it read as the FLOPs removed, which whole heads can take beyond it)
    assert "sparsity 0.500 of flops (of the least pruned kind; target 0.5), stopped: target" in table


def _trained_snapshot(workspace, out, before_pruning_callback: bool, *extra):
    """A tiny pruning run with the snapshot callback given before, or added after, the trainer's own callback."""
    model_args, data_args, training_args = recipe.parse_args(run_args(workspace, out, *extra))
    run = skeleton.Run(model_args, data_args, training_args)
    recipe.TASK.validate(run)
    recipe.TASK.load_data(run)
    skeleton.set_seed(training_args.seed)
    recipe.TASK.build(run)
    snapshot = skeleton.DenseSnapshot(AutoModelForSequenceClassification.from_config(run.model.config))
    trainer = AdaptivePruningTrainer(**run.trainer_kwargs(run.model, training_args),
                                     callbacks=[snapshot] if before_pruning_callback else None)
    if not before_pruning_callback:
        trainer.add_callback(snapshot)
    skeleton.set_seed(training_args.seed)
    trainer.train()
    assert trainer.pruning_summary()["final_sparsity"] > 0  # masks changed after the snapshot was taken
    return snapshot


def test_snapshot_does_not_depend_on_callback_order(workspace, tmp_path):
    first = _trained_snapshot(workspace, tmp_path / "a", before_pruning_callback=True)
    second = _trained_snapshot(workspace, tmp_path / "b", before_pruning_callback=False)
    assert first.step == second.step == 2
    assert get_masks(first.model) is None and get_masks(second.model) is None
    state_a, state_b = first.model.state_dict(), second.model.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)


def test_snapshot_is_taken_before_a_refit_search_changes_the_weights(workspace, tmp_path):
    """search_then_recover with 0 search steps masks, judges and re-fits the candidate at the end of the reference
    step, before the recipe's callbacks run: the dense column is still the model the reference was measured on."""
    plain = _trained_snapshot(workspace, tmp_path / "a", True)
    refit = _trained_snapshot(workspace, tmp_path / "b", True, "--pruning_schedule", "search_then_recover",
                              "--pruning_refit", "true")
    assert plain.step == refit.step == 2
    state_a, state_b = plain.model.state_dict(), refit.model.state_dict()
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], rtol=0, atol=0)



def test_with_push_to_hub_the_hub_gets_the_pruned_model_not_the_control(workspace, tmp_path, fake_hub):
    out = tmp_path / "out"
    recipe.main(run_args(workspace, out, "--dense_control", "true", "--push_to_hub", "true",
                         "--hub_model_id", "me/pruned", "--hub_token", "x"))
    (commit,) = fake_hub  # one commit, the control's model not in it, the pruned config is
    assert commit["repo_id"] == "me/pruned" and "config.json" in commit["files"]
    assert not any(name.startswith("dense_control/") for name in commit["files"])
    assert "adaprune" in json.loads((out / "config.json").read_text())


def test_with_test_before_pruning_false_the_table_says_why_the_dense_column_is_empty(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    results = recipe.main(run_args(workspace, out, "--latency_repeats", "0", "--test_before_pruning", "false"))
    test = results["test"]
    assert test["dense_accuracy"] is None and test["dense_step"] is None and test["test_before_pruning"] is False
    assert json.loads((out / "results.json").read_text())["test"]["test_before_pruning"] is False
    table = capsys.readouterr().out
    assert ("note: no dense column: --test_before_pruning false left the dense model at the pruning reference "
            "unscored") in table
    assert "resumed past that step" not in table


def test_the_validation_row_says_when_the_final_model_is_beyond_the_tolerance():
    """The final check's verdict reached results.json's pruning report only; the table read as if within."""
    results_module = load_recipe("results")
    summary = {"metric_name": "accuracy", "metric_key": "eval_accuracy", "metric_before": 0.8, "metric_after": 0.79,
               "tolerance": 0.01, "tolerance_type": "absolute",
               "final_check": {"metric": 0.75, "within_tolerance": False}}
    validation = results_module.validation_results(summary, 4, {"eval_accuracy": 0.74})
    assert validation["within_tolerance"] is False
    # the final check's row-exact measurement (evaluate's loss on several processes counts padding repeats)
    assert validation["pruned_final"] == 0.75 and validation["pruned"] == {"eval_accuracy": 0.74}
    results = {"test": None, "validation": validation, "comparison": None, "latency": None, "dense_control": None,
               "train": {"global_step": 6},
               "pruning": {"final_sparsity": 0.5, "target_type": "flops", "target": 0.5, "stop_reason": "target"}}
    fmt = lambda name, value: "" if value is None else f"{value:.2f}"  # noqa: E731
    assert "tolerance 0.01 absolute, BEYOND it" in results_module.results_table(results, fmt)
    # an absolute tolerance reads in the metric's format: WERs are printed as percentages, so is their tolerance
    percent = lambda name, value: "" if value is None else f"{100 * value:.2f}%"  # noqa: E731
    assert "tolerance 1.00% absolute" in results_module.results_table(results, percent)
    del summary["final_check"]  # reports without a final check: nothing claimed either way
    results["validation"] = results_module.validation_results(summary, 4, {"eval_accuracy": 0.75})
    assert results["validation"]["within_tolerance"] is None
    assert "BEYOND" not in results_module.results_table(results, fmt)


def test_the_control_comparison_goes_into_the_card_not_into_a_readme_of_the_users(workspace, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    own = "# my own notes\n\nDo not touch.\n"
    (out / "README.md").write_text(own)
    recipe.main(run_args(workspace, out, "--dense_control", "true", "--overwrite_output_dir", "true"))
    assert (out / "README.md").read_text() == own
    assert "## Compared with an equally trained dense model" in (out / "README.hf_adaprune.md").read_text()
