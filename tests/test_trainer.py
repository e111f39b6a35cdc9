"""AdaptivePruningTrainer end to end on a tiny BERT and a learnable synthetic task."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest
import torch
import transformers
from transformers import HfArgumentParser, Trainer

from hf_adaprune import AdaptivePruningTrainer, AutoPrunedModel, PruningArguments, get_masks
from hf_adaprune.layout import decode_kept
from hf_adaprune.reporting.summary import PruningSummary
from hf_adaprune.trainer.trainer import PRUNING_STATE_FILE, PruningTrainerMixin
from huggingface_hub import ModelCard

from conftest import ROOT, one_thread_env, tiny_model


def toy_dataset(n=192, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (n, 10), generator=generator)
    labels = (ids[:, 1] > 52).long() + (ids[:, 2] > 70).long()
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def make_args(output_dir, **overrides):
    defaults = dict(
        max_steps=30, per_device_train_batch_size=16, per_device_eval_batch_size=32, learning_rate=2e-3,
        pruning_metric="accuracy", pruning_warmup_steps=6, pruning_interval=6, pruning_target=0.5,
        pruning_tolerance=0.3, pruning_initial_step=0.2, pruning_seq_len=10, save_strategy="no",
        report_to="none", disable_tqdm=True, logging_steps=5, seed=0, use_cpu=True,
    )
    defaults.update(overrides)
    return PruningArguments(str(output_dir), **defaults)


def make_trainer(output_dir, model=None, **overrides):
    data = toy_dataset()
    return AdaptivePruningTrainer(
        model=model or tiny_model("bert"), args=make_args(output_dir, **overrides),
        train_dataset=data, eval_dataset=data.select(range(48)),
    )


def test_train_prunes_saves_and_reloads(tmp_path):
    trainer = make_trainer(tmp_path)
    logged = []
    trainer.add_callback(type("Spy", (transformers.TrainerCallback,), {
        "on_log": lambda self, args, state, control, logs=None, **kw: logged.append(dict(logs or {}))}))
    trainer.train()
    assert get_masks(trainer.model) is None, "compacted at the end"
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    events = [d["event"] for d in report["decisions"]]
    assert events[0] == "reference" and events[-1] == "stop"
    assert report["final_sparsity"] > 0
    assert report["comparison"]["layer_flops_removed"] == pytest.approx(report["final_sparsity"], abs=0.02)
    assert (tmp_path / "pruning_curve.png").stat().st_size > 1000
    assert (tmp_path / "pruning_layers.png").stat().st_size > 1000
    assert any("pruning/metric" in entry for entry in logged), "decisions go through Trainer.log"
    summary = trainer.pruning_summary()
    assert isinstance(summary, PruningSummary) and summary.to_dict() == report
    assert PruningSummary.from_dict(report) == summary and summary["final_sparsity"] == summary.final_sparsity
    trainer.model.config._name_or_path = str(tmp_path)  # a local path never becomes base_model
    trainer.save_model()
    card = (tmp_path / "README.md").read_text()
    assert "hf_adaprune" in card and "Kept structure per layer" in card and "FLOPs" in card
    assert "without `trust_remote_code=True` transformers refuses the folder" in card
    assert ModelCard.load(tmp_path / "README.md").data.to_dict().get("base_model") is None
    trainer.create_model_card(finetuned_from="google-bert/bert-base-uncased", dataset="glue: sst2",
                              dataset_tags="glue", license="mit", language="en", tags=["sentiment"])
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "google-bert/bert-base-uncased" and data["datasets"] == ["glue"]
    assert (data["license"], data["language"], data["pipeline_tag"]) == ("mit", "en", "text-classification")
    assert "sentiment" in data["tags"] and "hf_adaprune" in data["tags"]
    (results,) = data["model-index"]
    metrics = results["results"][0]["metrics"]
    assert [m["name"] for m in metrics] == ["accuracy (dense)", "accuracy (pruned)"]
    assert metrics[0]["value"] == pytest.approx(report["metric_before"])
    assert "learning_rate: 0.002" in card.text and "- transformers: " in card.text
    trainer.save_model()  # a later save keeps what create_model_card was given (it wrote a card without it)
    assert ModelCard.load(tmp_path / "README.md").data.to_dict() == data
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    batch = {"input_ids": torch.tensor(toy_dataset()["input_ids"][:4])}
    with torch.no_grad():
        assert (loaded(**batch).logits - trainer.model.eval()(**batch).logits).abs().max() <= 1e-6


def test_last_step_is_judged_without_proposing_another(tmp_path, caplog):
    """A step pending when training ends is judged, and no further one is masked, logged and thrown away; the console
    says where pruning stopped, as the report does."""
    import logging

    trainer = make_trainer(tmp_path, max_steps=10, pruning_warmup_steps=2, pruning_interval=5,
                           pruning_tolerance=1.0, pruning_target=0.9, compact_at_end=False)
    with caplog.at_level(logging.INFO, logger="hf_adaprune"):
        trainer.train()
    events = [h["event"] for h in trainer.controller.state.history]
    assert events == ["reference", "keep", "keep", "stop"]  # judged at 7 and at the end (10); nothing discarded
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("hf_adaprune")]
    last_keep = max(i for i, m in enumerate(messages) if m.startswith("pruning keep at step 10"))
    assert not any("trying sparsity" in m for m in messages[last_keep:])
    ratio = trainer.controller.state.ratio
    assert f"pruning stopped at sparsity {ratio:.3f}: training ended" in messages[last_keep:]
    # the model keeps its masks: the warning names what writes the pruned model
    assert any("compact_at_end=False" in m and "save_pruned" in m for m in messages)


def test_rollback_restores_previous_masks(tmp_path):
    # the real model, scheduling and masks, with a scripted metric: keep, roll back, keep
    trainer = make_trainer(tmp_path, pruning_tolerance=0.01, pruning_target=0.9, pruning_initial_step=0.2,
                           pruning_step_growth=1.0, compact_at_end=False, max_steps=24)
    metrics = iter([0.9, 0.9, 0.5, 0.9, 0.9])  # the last: the final re-check after training
    snapshots = []

    def scripted_metric():
        masks = get_masks(trainer.model)
        snapshots.append((masks.pruned_fraction("heads"), masks.state_dict()))
        return next(metrics), {}

    trainer._decision_metric = scripted_metric
    trainer.train()
    events = [h["event"] for h in trainer.controller.state.history]
    # the 0.3 step is kept at the last step (24): no further step is masked, as none could be judged
    assert events == ["reference", "keep", "rollback", "keep", "stop"]
    tried = [h["ratio"] for h in trainer.controller.state.history if h["event"] in ("keep", "rollback")]
    assert tried == pytest.approx([0.2, 0.4, 0.3])
    # snapshots: masks at each evaluation (reference, 0.2, 0.4 rolled back, 0.3)
    accepted_02, rolled_back_04, final_03 = snapshots[1][1], snapshots[2][1], snapshots[3][1]
    final = get_masks(trainer.model).state_dict()
    for name, mask in final.items():
        assert torch.equal(mask, final_03[name]), "the model is the one judged at the last step"
        assert torch.all(mask <= accepted_02[name]), "the 0.3 step starts from the masks kept at 0.2"
    assert any(not torch.equal(final[n], rolled_back_04[n]) for n in final)
    assert trainer.controller.state.ratio == pytest.approx(0.3)


def test_report_metric_after_is_the_last_kept_decisions_metric(tmp_path):
    """``metric_after`` in pruning_report.json is the metric of the last kept step (the masks the model ends with),
    not the dense reference or a rolled-back candidate's metric. Scripted metrics, all distinct: reference 0.9,
    keep 0.2 at 0.89, roll back 0.4 at 0.5, keep 0.3 at 0.87 at the last step (24), whose weights and masks the final
    check would measure again: it takes that keep's metric instead of a fifth evaluation."""
    trainer = make_trainer(tmp_path, pruning_tolerance=0.05, pruning_target=0.9, pruning_initial_step=0.2,
                           pruning_step_growth=1.0, max_steps=24)
    metrics = iter([0.9, 0.89, 0.5, 0.87, 0.86])
    trainer._decision_metric = lambda: (next(metrics), {})
    trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert [(d["event"], d.get("metric"), d.get("training_step")) for d in report["decisions"]] == [
        ("reference", 0.9, 6), ("keep", 0.89, 12), ("rollback", 0.5, 18), ("keep", 0.87, 24), ("stop", None, 24)]
    assert report["metric_before"] == 0.9 and report["metric_after"] == 0.87
    assert report["final_check"]["metric"] == 0.87 and report["final_check"]["step"] == 24
    assert next(metrics) == 0.86, "the final model was not evaluated a second time"


def test_resume_mid_pruning_matches_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full", save_strategy="steps", save_steps=12, max_steps=30)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-12"
    assert (checkpoint / PRUNING_STATE_FILE).exists()
    state = torch.load(checkpoint / PRUNING_STATE_FILE, weights_only=True)
    assert state["controller"]["reference"] is not None, "checkpoint is mid-pruning"

    resumed = make_trainer(tmp_path / "full", max_steps=30, save_strategy="no")
    resumed.args.output_dir = str(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a = json.loads((tmp_path / "full" / "pruning_report.json").read_text())
    b = json.loads((tmp_path / "resumed" / "pruning_report.json").read_text())
    assert a["groups"] == b["groups"]
    assert [d["event"] for d in a["decisions"]] == [d["event"] for d in b["decisions"]]
    assert [d.get("metric") for d in a["decisions"]] == pytest.approx([d.get("metric") for d in b["decisions"]])
    assert [d["training_step"] for d in a["decisions"]] == [d["training_step"] for d in b["decisions"]]


def test_resume_from_the_last_checkpoint_ends_as_the_uninterrupted_run(tmp_path):
    """A run stopped after its last checkpoint but before compaction: transformers 5 ends such a resume at
    global_step max_steps + 1, a step that never ran; the report keeps the run's own last step."""
    search = dict(max_steps=30, pruning_initial_step=0.05, pruning_tolerance=1.0)  # still pruning at step 30
    full = make_trainer(tmp_path / "full", save_strategy="steps", save_steps=15, **search)
    full.train()
    resumed = make_trainer(tmp_path / "full", save_strategy="no", **search)
    resumed.args.output_dir = str(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-30"))
    a = json.loads((tmp_path / "full" / "pruning_report.json").read_text())
    b = json.loads((tmp_path / "resumed" / "pruning_report.json").read_text())
    assert [(d["event"], d["training_step"]) for d in a["decisions"]] == \
        [(d["event"], d["training_step"]) for d in b["decisions"]]
    assert a["decisions"][-2:] == b["decisions"][-2:]
    assert a["decisions"][-1]["training_step"] == 30 and b["final_check"]["step"] == a["final_check"]["step"] == 30
    assert a["groups"] == b["groups"]


def test_push_to_hub_uploads_pruned_model(tmp_path, monkeypatch):
    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            files = {name: open(os.path.join(folder_path, name), "rb").read() if os.path.isfile(
                os.path.join(folder_path, name)) else None for name in os.listdir(folder_path)}
            uploads.append((repo_id, files, kwargs))
            return "https://hub.invalid/commit"

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    trainer = make_trainer(tmp_path / "pushme", hub_model_id="pruned-tiny")
    trainer.train()
    cards_written = []
    save_card = ModelCard.save
    monkeypatch.setattr(ModelCard, "save", lambda card, path: (cards_written.append(path), save_card(card, path)))
    trainer.push_to_hub(dataset="toy")
    assert len(cards_written) == 1, "the card is written once per push"
    (repo_id, files, kwargs), = uploads
    assert repo_id == "user/pruned-tiny"
    assert {"model.safetensors", "config.json", "modeling_adaprune.py", "README.md"} <= set(files)
    config = json.loads(files["config.json"])
    assert config["adaprune"]["groups"] and "AutoModelForSequenceClassification" in config["auto_map"]
    assert "datasets:\n- toy" in files["README.md"].decode()
    kept_heads = sum(len(decode_kept(g)) for g in config["adaprune"]["groups"].values() if g["kind"] == "heads")
    assert kept_heads < 12


def test_checkpoints_get_their_pruning_state_from_a_callback():
    # pruning_state.pt is written by PruningCallback.on_save, not by overriding Trainer internals
    assert not any(name.startswith("_save") for name in vars(PruningTrainerMixin))


def test_parses_from_command_line_and_yaml(tmp_path):
    parser = HfArgumentParser(PruningArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--prune", "heads", "--pruning_target", "0.3", "--pruning_scope", "layer"]
    )
    assert (args.prune, args.pruning_target, args.pruning_scope) == ("heads", 0.3, "layer")
    config = tmp_path / "args.yaml"
    config.write_text(f"output_dir: {tmp_path}\npruning_metric: f1\npruning_tolerance: 0.02\nmin_heads_per_layer: 0\n")
    (args,) = parser.parse_yaml_file(str(config))
    assert (args.pruning_metric, args.pruning_tolerance, args.min_heads_per_layer) == ("f1", 0.02, 0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(pruning_tolerance=-1.0), "--pruning_tolerance must be >= 0"),
        (dict(pruning_target=0.0), r"--pruning_target must be in \(0, 1\)"),
        (dict(pruning_target=1.2), r"--pruning_target must be in \(0, 1\)"),
        (dict(prune="blocks"), "--prune must be one of heads, ffn, layers, .both. or a comma list"),
        (dict(pruning_criterion="hessian"), "--pruning_criterion must be one of"),
        (dict(pruning_roles="encoder,ears"), "unknown roles"),
        (dict(pruning_roles=""), "--pruning_roles names no role"),
        (dict(pruning_roles=" , "), "--pruning_roles names no role"),
    ],
)
def test_bad_arguments_fail_at_parse_time(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **overrides)


@pytest.mark.parametrize("given, expected", [(None, False), (True, False), (False, False)])
def test_direction_of_a_lower_is_better_metric_named_for_best_model(tmp_path, caplog, given, expected):
    """transformers fills greater_is_better in from metric_for_best_model's name (True for 'wer'): that value, given
    or guessed, cannot overrule the metric's own direction (copied arguments carry the guess as if given);
    --pruning_greater_is_better does."""
    import logging

    from hf_adaprune.trainer.arguments import pruning_metric_direction

    extra = {} if given is None else {"greater_is_better": given}
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        args = make_args(tmp_path, pruning_metric="wer", metric_for_best_model="wer", eval_strategy="steps",
                         **extra)
    assert pruning_metric_direction(args) is expected
    assert ("set --greater_is_better false for best-model selection" in caplog.text) is (given is not False)
    overruled = make_args(tmp_path, pruning_metric="wer", metric_for_best_model="wer", eval_strategy="steps",
                          pruning_greater_is_better=True, **extra)
    assert pruning_metric_direction(overruled) is True


@pytest.mark.parametrize("metric", ["bleu", "accuracy"])
def test_a_given_greater_is_better_against_a_known_direction_is_warned_of_and_not_followed(tmp_path, caplog, metric):
    """--greater_is_better false for BLEU (a slip): the pruning decisions followed it, kept every step while BLEU
    fell 50 points and reported the drop as within tolerance. They use BLEU's own direction; a warning says that
    best-model selection follows the flag."""
    import logging

    from hf_adaprune.trainer.arguments import pruning_metric_direction

    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        args = make_args(tmp_path, pruning_metric=metric, metric_for_best_model=metric, eval_strategy="steps",
                         greater_is_better=False)
    assert pruning_metric_direction(args) is True
    assert (f"best-model selection takes a lower value as better (--greater_is_better false (given)), where a "
            f"higher {metric} is better; set --greater_is_better true") in caplog.text
    mine = make_args(tmp_path, pruning_metric=metric, metric_for_best_model=metric, eval_strategy="steps",
                     greater_is_better=False, pruning_greater_is_better=False)
    assert pruning_metric_direction(mine) is False


def test_a_given_greater_is_better_decides_a_metric_of_unknown_direction(tmp_path):
    from hf_adaprune.trainer.arguments import pruning_metric_direction

    for given in (True, False):
        args = make_args(tmp_path, pruning_metric="my_score", metric_for_best_model="my_score",
                         eval_strategy="steps", greater_is_better=given)
        assert pruning_metric_direction(args) is given


@pytest.mark.parametrize("metric, expected", [("wer", False), ("mse", False), ("accuracy", True), ("loss", False)])
def test_copied_arguments_keep_the_metric_direction(tmp_path, metric, expected):
    """dataclasses.replace and a to_dict / parse_dict round trip run __post_init__ again, with transformers' guess
    in greater_is_better: the direction must not flip."""
    import dataclasses
    import json

    from transformers import HfArgumentParser

    from hf_adaprune.trainer.arguments import pruning_metric_direction

    args = make_args(tmp_path, pruning_metric=metric, metric_for_best_model=metric, eval_strategy="steps")
    replaced = dataclasses.replace(args)
    parsed, = HfArgumentParser(PruningArguments).parse_dict(json.loads(args.to_json_string()), allow_extra_keys=True)
    assert [pruning_metric_direction(a) for a in (args, replaced, parsed)] == [expected] * 3


def varied_length_dataset(n=96):
    lengths = [3 + (7 * i) % 11 for i in range(n)]
    ids = [[5 + (i + j) % 90 for j in range(length)] for i, length in enumerate(lengths)]
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": [i % 3 for i in range(n)]})


def pad_batch(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, f in enumerate(features):
        ids[row, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[row, :len(f["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in features])}


def test_predict_keeps_dataset_order_with_length_grouped_training(tmp_path):
    # transformers 5 samples evaluation length-grouped too; the pruning trainers read the dataset in order
    data = varied_length_dataset()
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    trainer = AdaptivePruningTrainer(
        model=model, args=make_args(tmp_path, train_sampling_strategy="group_by_length", per_device_eval_batch_size=8),
        train_dataset=data, eval_dataset=data, data_collator=pad_batch)
    output = trainer.predict(data)
    assert output.label_ids.tolist() == data["labels"]
    model.eval()
    with torch.no_grad():
        for i in (0, 1, 50):
            alone = model(**{k: v for k, v in pad_batch([data[i]]).items() if k != "labels"}).logits[0]
            torch.testing.assert_close(torch.as_tensor(output.predictions[i]), alone, atol=1e-5, rtol=1e-4)


def test_processes_that_would_train_separately_fail_at_parse_time(tmp_path, monkeypatch):
    # A launcher started 2 processes, but this one is not part of a process group (world size 1):
    # it would prune its own replica, so the arguments refuse it.
    monkeypatch.setattr("hf_adaprune.trainer.arguments.launched_processes", lambda: 2)
    with pytest.raises(ValueError, match="2 processes were launched but the Trainer sees a world size of 1"):
        make_args(tmp_path)


def test_a_refused_trainer_leaves_the_model_without_masks(tmp_path):
    """The set-up attaches the masks before it checks the settings; a refusal took them off again only in
    post_training_prune, so a later post_training_prune(model) or save_pruned(model) met masks the user never put on."""
    data = toy_dataset(32)
    for model, arguments, message in [
            (tiny_model("bert"), {}, "needs an eval_dataset"),
            (tiny_model("bert"), {"pruning_roles": "decoder"}, "nothing to prune"),
            (tiny_model("bert").requires_grad_(False), {}, "do not require gradients")]:
        eval_data = None if message == "needs an eval_dataset" else data
        with pytest.raises(ValueError, match=message):
            AdaptivePruningTrainer(model=model, args=make_args(tmp_path, **arguments), train_dataset=data,
                                   eval_dataset=eval_data)
        assert get_masks(model) is None
        assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_trainer_fails_fast(tmp_path):
    data = toy_dataset(32)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, pruning_seq_len=100),
                               train_dataset=data, eval_dataset=data)
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path), train_dataset=data)
    with pytest.raises(ValueError, match="Cannot load metric 'no_such_metric'"):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=make_args(tmp_path, pruning_metric="no_such_metric"),
                               train_dataset=data, eval_dataset=data)
    with pytest.raises(TypeError, match="needs PruningArguments"):
        AdaptivePruningTrainer(model=tiny_model("bert"), args=transformers.TrainingArguments(str(tmp_path)),
                               train_dataset=data, eval_dataset=data)
    albert = transformers.AlbertForSequenceClassification(transformers.AlbertConfig(
        vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37, embedding_size=16))
    with pytest.raises(ValueError, match="cannot prune model_type 'albert'"):
        AdaptivePruningTrainer(model=albert, args=make_args(tmp_path), train_dataset=data, eval_dataset=data)


def test_audio_model_with_a_seq_len_shorter_than_one_frame_is_refused(tmp_path):
    from test_speech_families import tiny_ctc_model

    data = datasets.Dataset.from_dict({"input_values": [[0.1] * 200] * 4, "labels": [[1, 2]] * 4})
    with pytest.raises(ValueError, match=r"--pruning_seq_len 10 counts raw audio samples for this wav2vec2 model, "
                                         r"fewer than the 13 its feature encoder turns into one frame"):
        AdaptivePruningTrainer(model=tiny_ctc_model("wav2vec2"), args=make_args(tmp_path, pruning_metric="loss"),
                               train_dataset=data, eval_dataset=data)


def test_metric_key_missing_from_compute_metrics_fails_before_training(tmp_path):
    data = toy_dataset(32)
    trainer = AdaptivePruningTrainer(
        model=tiny_model("bert"), args=make_args(tmp_path, pruning_metric="f1"), train_dataset=data,
        eval_dataset=data, compute_metrics=lambda p: {"accuracy": 1.0},
    )
    with pytest.raises(KeyError, match="evaluation returns no 'eval_f1'"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_scoring_overhead_reads_gradients_once_per_optimizer_step(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=8, gradient_accumulation_steps=2, pruning_warmup_steps=100)
    trainer.train()
    assert trainer.importance.num_updates == 8


def test_gradient_accumulation_gives_same_scores(tmp_path):
    def scores(**overrides):
        model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same noise
        trainer = make_trainer(tmp_path / str(overrides), model=model, max_steps=3, pruning_warmup_steps=100,
                               learning_rate=0.0, max_grad_norm=0.0, **overrides)
        trainer.train()
        return trainer.importance.scores(trainer.model, trainer.pruning_groups)

    plain = scores(per_device_train_batch_size=16)
    accumulated = scores(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    for name, value in plain.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-7)


PLAIN_RUN_BEFORE_AND_AFTER_IMPORT = """
import json, sys, tempfile, datasets, torch, transformers
sys.path.insert(0, "tests")
from conftest import tiny_model
torch.set_num_threads(1)
def plain_run():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (64, 10), generator=generator)
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 1] > 52).long().tolist()})
    args = transformers.TrainingArguments(tempfile.mkdtemp(), max_steps=3, per_device_train_batch_size=16, seed=0,
                                          report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no")
    return transformers.Trainer(model=tiny_model("bert"), args=args, train_dataset=data).train().training_loss
assert "hf_adaprune" not in sys.modules
before = plain_run()
import hf_adaprune  # noqa: E402,F401
print(json.dumps([before, plain_run()]))
"""


def test_plain_trainer_unaffected():
    """Importing hf_adaprune changes nothing in the stock Trainer: a plain run gives the same loss before and after
    the import, in one fresh process (this test module has imported it already)."""
    result = subprocess.run([sys.executable, "-c", PLAIN_RUN_BEFORE_AND_AFTER_IMPORT], cwd=ROOT, env=one_thread_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = json.loads(result.stdout.strip().splitlines()[-1])
    assert before > 0 and after == before


def test_bf16_autocast_scores_accumulate_in_float32(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, pruning_warmup_steps=100, bf16=True)
    trainer.train()
    scores = trainer.importance.scores(trainer.model, trainer.pruning_groups)
    assert scores and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in scores.values())
    assert trainer.importance.num_updates == 4


def test_evaluations_and_checkpoints_at_a_decision_step_see_the_decided_model(tmp_path):
    """The Trainer's evaluation and checkpoint at a decision's step describe the model as decided (the candidate kept
    or rolled back), not the next candidate, which no step has trained yet: it is masked when the next optimizer
    step begins. So early stopping and best-model selection judge trained shapes, and a resumed run goes on alike
    (test_resume_mid_pruning_matches_uninterrupted_run resumes from such a checkpoint)."""
    trainer = make_trainer(tmp_path, eval_strategy="steps", eval_steps=6, save_strategy="steps", save_steps=6,
                           pruning_tolerance=1.0, pruning_target=0.9, max_steps=24)
    seen, decided = {}, []
    trainer.add_callback(type("Spy", (transformers.TrainerCallback,), {
        "on_evaluate": lambda self, args, state, control, **kw: seen.__setitem__(
            state.global_step, (trainer.controller.state.pending, get_masks(trainer.model).state_dict())),
        "on_log": lambda self, args, state, control, logs=None, **kw: decided.append(state.global_step)
        if "pruning/metric" in (logs or {}) else None}))
    trainer.train()
    assert decided == [6, 12, 18, 24]  # the reference, then a decision every 6 steps
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert [(d["event"], d["training_step"]) for d in report["decisions"]] == [
        ("reference", 6), ("keep", 12), ("keep", 18), ("keep", 24), ("stop", 24)]
    for step in decided:
        pending, masks = seen[step]
        assert pending is None, f"step {step}: the evaluation saw a candidate masked after the decision"
        saved = torch.load(tmp_path / f"checkpoint-{step}" / PRUNING_STATE_FILE, weights_only=True)
        assert saved["controller"]["pending"] is None
    # the masks evaluated at 12 are those kept at 12: the candidate tried from 12 on prunes more by 18
    assert sum(m.sum() for m in seen[12][1].values()) > sum(m.sum() for m in seen[18][1].values())
