"""Whole layers through the trainer: --prune layers / comma lists, the layer share of a combined target, errors before
training for targets no stack can honour, resume mid-pruning, two processes removing the same layers."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from hf_adaprune import AdaptivePruningTrainer, AutoPrunedModel, get_masks
from hf_adaprune.engine.selection import layer_ratio

from conftest import tiny_model
from test_distributed import TORCHRUN, masks_of, run_worker
from test_layers import build_seq2seq
from test_trainer import make_args, make_trainer, toy_dataset
from hf_adaprune import AdaptivePruningSeq2SeqTrainer, Seq2SeqPruningArguments


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_prune_layers_removes_whole_layers_and_reloads(tmp_path):
    model = tiny_model("bert", num_hidden_layers=4)
    trainer = make_trainer(tmp_path, model=model, prune="layers", pruning_target=0.5, pruning_initial_step=0.5,
                           pruning_tolerance=10.0, max_steps=12)
    trainer.train()
    assert len(trainer.model.bert.encoder.layer) == 2 and trainer.model.config.num_hidden_layers == 2
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["final_sparsity"] == pytest.approx(0.5)
    assert report["comparison"]["layer_flops_removed"] == pytest.approx(0.5, abs=0.02)
    removed = [row for row in report["comparison"]["layers"] if row["flops_after"] == 0]
    assert len(removed) == 2 and all(row["heads_after"] == 0 for row in removed)
    trainer.save_model()
    ids = torch.tensor(toy_dataset()["input_ids"][:4])
    loaded = AutoPrunedModel.from_pretrained(tmp_path)
    assert (logits(loaded, ids) - logits(trainer.model, ids)).abs().max() <= 1e-6


def test_layers_with_widths_share_the_target(tmp_path):
    assert layer_ratio(0.75, ("layers",)) == 0.75 and layer_ratio(0.75, ("heads", "ffn", "layers")) == 0.5
    model = tiny_model("bert", num_hidden_layers=4)
    trainer = make_trainer(tmp_path, model=model, prune="heads,ffn,layers", pruning_target=0.75,
                           pruning_initial_step=0.75, pruning_tolerance=10.0, max_steps=12, compact_at_end=False)
    trainer.train()
    masks = get_masks(trainer.model)
    assert int(masks.masks["encoder.layer"].sum()) == 2, "layers take 1 - sqrt(1 - 0.75) = half of the layers"
    removed = [i for i in range(4) if masks.masks["encoder.layer"][i] == 0]
    for i in removed:
        assert masks.masks[f"encoder.layer.{i}.ffn"].sum() == 0, "a removed layer's neurons count as pruned"
    assert trainer.controller.state.selected == pytest.approx(0.75, abs=0.05)


def test_gradient_accumulation_gives_the_same_layer_scores(tmp_path):
    """A layer's dL/dg is summed over the micro-batches of an optimizer step, as .grad is for heads and neurons:
    batches of 16 and 8 x 2 accumulated give the same layer scores (rtol 1e-4: float sums in another order); a
    layer scored from the last micro-batch alone would differ. No dropout, learning rate 0: the same model at
    every step of both runs."""
    def scores(**overrides):
        model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        trainer = make_trainer(tmp_path / str(overrides), model=model, prune="heads,ffn,layers", max_steps=3,
                               pruning_warmup_steps=100, learning_rate=0.0, max_grad_norm=0.0, **overrides)
        trainer.train()
        assert trainer.importance.num_updates == 3
        return trainer.importance.scores(trainer.model, trainer.pruning_groups)

    plain = scores(per_device_train_batch_size=16)
    accumulated = scores(per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert "encoder.layer" in plain and sorted(plain) == sorted(accumulated)
    for name, value in plain.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("value", ["heads,blocks", "", "layer"])
def test_bad_prune_values_fail_at_parse_time(tmp_path, value):
    with pytest.raises(ValueError, match="--prune must be one of heads, ffn, layers, 'both' or a comma list"):
        make_args(tmp_path, prune=value)


def test_removing_every_layer_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"needs 0\.9000 of the layers removed, but every stack keeps at least one "
                                         r"layer \(encoder\.layer: 3 layers\), so at most 0\.6667 can go"):
        make_trainer(tmp_path, prune="layers", pruning_target=0.9, pruning_target_type="structures")


@pytest.mark.parametrize("prune, advice", [
    ("layers", "prune heads and FFN neurons as well (--prune heads,ffn,layers)"),
    ("heads,layers", "prune FFN neurons as well (--prune heads,ffn,layers)"),
    ("heads,ffn,layers", "prune heads and FFN neurons alone (--prune heads,ffn)"),  # it advised what was passed
])
def test_an_unreachable_layer_share_advises_what_was_not_asked(tmp_path, prune, advice):
    with pytest.raises(ValueError, match="every stack keeps at least one layer") as info:
        make_trainer(tmp_path, prune=prune, pruning_target=0.99, pruning_target_type="structures")
    assert advice in str(info.value)


def test_t5_encoder_layers_are_refused_before_training(tmp_path):
    data = toy_dataset().map(lambda row: {"labels": row["input_ids"][:4]})
    args = Seq2SeqPruningArguments(str(tmp_path), prune="layers", pruning_roles="encoder", max_steps=4,
                                   pruning_warmup_steps=1, pruning_interval=1, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="T5's encoder layers cannot be removed while the model has a decoder"):
        AdaptivePruningSeq2SeqTrainer(model=build_seq2seq("t5"), args=args, train_dataset=data, eval_dataset=data)
    suggested = "encoder_self,decoder_self,cross,decoder"  # what the message offers to keep every kind it can
    args = Seq2SeqPruningArguments(str(tmp_path), prune="heads,ffn,layers", pruning_roles="all", max_steps=4,
                                   pruning_warmup_steps=1, pruning_interval=1, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=f"--pruning_roles {suggested} keeps every kind but the encoder's FFN"):
        AdaptivePruningSeq2SeqTrainer(model=build_seq2seq("t5"), args=args, train_dataset=data, eval_dataset=data)
    args.pruning_roles = suggested
    trainer = AdaptivePruningSeq2SeqTrainer(model=build_seq2seq("t5"), args=args, train_dataset=data, eval_dataset=data)
    assert {g.kind for g in trainer.pruning_groups} == {"heads", "ffn", "layers"}


def test_resume_mid_pruning_with_layers_removed(tmp_path):
    overrides = dict(prune="heads,ffn,layers", pruning_target=0.75, pruning_initial_step=0.4, pruning_tolerance=10.0,
                     pruning_step_growth=1.0)
    full = make_trainer(tmp_path / "full", model=tiny_model("bert", num_hidden_layers=4), save_strategy="steps",
                        save_steps=12, max_steps=30, **overrides)
    full.train()
    state = torch.load(tmp_path / "full" / "checkpoint-12" / "pruning_state.pt", weights_only=True)
    assert state["accepted_masks"]["encoder.layer"].sum() < 4, "a layer is already removed at the checkpoint"
    resumed = make_trainer(tmp_path / "full", model=tiny_model("bert", num_hidden_layers=4), max_steps=30,
                           save_strategy="no", **overrides)
    resumed.args.output_dir = str(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-12"))
    a = json.loads((tmp_path / "full" / "pruning_report.json").read_text())
    b = json.loads((tmp_path / "resumed" / "pruning_report.json").read_text())
    assert a["groups"] == b["groups"] and a["comparison"]["layers"] == b["comparison"]["layers"]
    assert full.model.config.adaprune["layers"] == resumed.model.config.adaprune["layers"]
    assert [d.get("metric") for d in a["decisions"]] == pytest.approx([d.get("metric") for d in b["decisions"]])


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
def test_two_processes_remove_the_same_layers_as_one(tmp_path):
    two, result = run_worker(tmp_path, "two", batch=8, nproc=2, extra=("--prune", "heads,ffn,layers"))
    assert result.returncode == 0, result.stderr[-4000:]
    one, result = run_worker(tmp_path, "one", batch=16, nproc=1, extra=("--prune", "heads,ffn,layers"))
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1, single = masks_of(two, 0), masks_of(two, 1), masks_of(one, 0)
    assert rank0["encoder.layer"].sum() < 3, "a layer was removed"
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
        assert torch.equal(rank0[name], single[name]), f"2-process and 1-process runs disagree on {name}"
    # the layer gates' dL/dg is averaged over the processes as DDP averages the weights' gradients: the same
    # scores as one process with the whole batch, within float sums over 30 steps (a layer score differed by 0.04 of
    # 0.37 when it was the mean of the ranks' |dL/dg|)
    scores_two, scores_one = torch.load(two / "scores_rank0.pt"), torch.load(one / "scores_rank0.pt")
    for name in scores_one:
        torch.testing.assert_close(scores_two[name], scores_one[name], rtol=1e-3, atol=1e-4, msg=name)


def test_seq2seq_trainer_removes_decoder_layers(tmp_path):
    data = toy_dataset().map(lambda row: {"labels": row["input_ids"][:6]})
    args = Seq2SeqPruningArguments(
        str(tmp_path), prune="layers", pruning_roles="decoder", max_steps=12, per_device_train_batch_size=16,
        learning_rate=1e-3, pruning_warmup_steps=4, pruning_interval=4, pruning_target=0.5, pruning_initial_step=0.5,
        pruning_tolerance=100.0, pruning_seq_len=10, report_to="none", use_cpu=True, save_strategy="no",
        disable_tqdm=True)
    model = build_seq2seq("marian")
    trainer = AdaptivePruningSeq2SeqTrainer(model=model, args=args, train_dataset=data,
                                            eval_dataset=data.select(range(32)))
    trainer.train()
    assert len(trainer.model.model.decoder.layers) < 3 and len(trainer.model.model.encoder.layers) == 3
    assert trainer.model.config.decoder_layers == len(trainer.model.model.decoder.layers)
    trainer.save_model()
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor(data["input_ids"][:2])
    with torch.no_grad():
        a = loaded.generate(input_ids=ids, max_new_tokens=5, do_sample=False, num_beams=1)
        b = trainer.model.eval().generate(input_ids=ids, max_new_tokens=5, do_sample=False, num_beams=1)
    assert torch.equal(a, b)


def test_a_loaded_marian_trains_only_what_its_folder_keeps(tmp_path):
    """transformers 5's from_pretrained gives Marian's sinusoidal position tables back trainable, and saving leaves
    them out: trained, they moved (0.02 in 20 steps) and the folder reloaded with other outputs (0.015) than the
    model scored in memory. The trainer freezes them: the saved folder computes what was measured."""
    data = toy_dataset().map(lambda row: {"labels": row["input_ids"][:6]})
    build_seq2seq("marian").save_pretrained(tmp_path / "dense")
    model = transformers.MarianMTModel.from_pretrained(tmp_path / "dense")
    positions = model.model.encoder.embed_positions.weight
    table = positions.detach().clone()
    args = Seq2SeqPruningArguments(
        str(tmp_path / "run"), max_steps=8, per_device_train_batch_size=16, learning_rate=1e-2,
        pruning_warmup_steps=4, pruning_interval=2, pruning_target=0.3, pruning_tolerance=100.0, pruning_seq_len=10,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = AdaptivePruningSeq2SeqTrainer(model=model, args=args, train_dataset=data,
                                            eval_dataset=data.select(range(16)))
    assert not positions.requires_grad and not model.model.decoder.embed_positions.weight.requires_grad
    trainer.train()
    assert torch.equal(trainer.model.model.encoder.embed_positions.weight, table)
    trainer.save_model()
    loaded = AutoPrunedModel.from_pretrained(tmp_path / "run").eval()
    batch = {"input_ids": torch.tensor(data["input_ids"][:2]), "decoder_input_ids": torch.tensor([[0, 5, 6]] * 2)}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, trainer.model.eval()(**batch).logits, rtol=0, atol=1e-6)
    # the pruned folder, loaded by hf_adaprune or by the shipped code: trained further with a plain Trainer, the
    # tables moved and the folder it saved reloaded with other outputs (0.13)
    for load in (AutoPrunedModel.from_pretrained,
                 lambda path: transformers.AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True)):
        model = load(tmp_path / "run")
        assert not any(model.get_parameter(name).requires_grad for name in model._keys_to_ignore_on_save)


def test_a_checkpoint_that_trained_the_unsaved_tables_is_refused_with_why(tmp_path, monkeypatch):
    """A checkpoint written before the tables were frozen holds them in its optimizer state: torch's "loaded state
    dict contains a parameter group that doesn't match the size" said nothing of why."""
    import hf_adaprune.trainer.trainer as trainer_module

    data = toy_dataset().map(lambda row: {"labels": row["input_ids"][:6]})
    build_seq2seq("marian").save_pretrained(tmp_path / "dense")

    def trainer(max_steps=6):
        args = Seq2SeqPruningArguments(
            str(tmp_path / "run"), max_steps=max_steps, per_device_train_batch_size=16, pruning_warmup_steps=2,
            pruning_interval=2, pruning_target=0.3, pruning_tolerance=100.0, pruning_seq_len=10, report_to="none",
            use_cpu=True, save_strategy="steps", save_steps=3, disable_tqdm=True)
        return AdaptivePruningSeq2SeqTrainer(model=transformers.MarianMTModel.from_pretrained(tmp_path / "dense"),
                                             args=args, train_dataset=data, eval_dataset=data.select(range(16)))

    with monkeypatch.context() as patch:  # the earlier behaviour: the tables trained
        patch.setattr(trainer_module, "freeze_unsaved_parameters", lambda model: [])
        trainer(max_steps=3).train()
    with pytest.raises(ValueError, match="optimizer state holds more parameters than this run trains. This trainer "
                                         "freezes model.encoder.embed_positions.weight"):
        trainer().train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))


def test_a_refused_set_up_leaves_the_tables_trainable(tmp_path):
    """The tables are frozen once the set-up is accepted: a refused one leaves the caller's model as it was given."""
    build_seq2seq("marian").save_pretrained(tmp_path / "dense")
    model = transformers.MarianMTModel.from_pretrained(tmp_path / "dense")
    args = Seq2SeqPruningArguments(str(tmp_path / "run"), max_steps=4, report_to="none", use_cpu=True,
                                   pruning_seq_len=16)
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        AdaptivePruningSeq2SeqTrainer(model=model, args=args, train_dataset=toy_dataset())  # no eval set
    assert model.model.encoder.embed_positions.weight.requires_grad


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_layers_and_widths_reach_the_ratio_in_both_scopes(scope):
    from hf_adaprune import attach_masks
    from hf_adaprune.engine.selection import select_masks_by_kind, selected_fraction_by_kind

    model = tiny_model("bert", num_hidden_layers=4, intermediate_size=40)
    masks = attach_masks(model, layers=True)
    groups = list(masks.groups.values())
    torch.manual_seed(0)
    scores = {name: torch.rand(mask.numel()) for name, mask in masks.masks.items()}
    new = select_masks_by_kind(groups, scores, masks.state_dict(), 0.75, kinds=("heads", "ffn", "layers"),
                               scope=scope)
    assert int(new["encoder.layer"].sum()) == 2
    assert selected_fraction_by_kind(groups, new, ("heads", "ffn", "layers")) == pytest.approx(0.75, abs=0.02)


@pytest.mark.parametrize("kinds", [("heads", "ffn", "layers"), ("ffn", "layers"), ("heads", "layers")])
def test_layers_with_one_width_kind_remove_the_target_share_of_the_layer_flops(kinds):
    """With FLOP costs the target is a share of the layers' FLOPs, a removed layer's attention included: with one
    width kind the widths go further (``ffn,layers`` at 0.5 removed 0.43 of the FLOPs while reporting 0.5)."""
    from hf_adaprune import attach_masks, compact, compare_profiles, model_profile
    from hf_adaprune.engine.selection import select_masks_by_kind, selected_fraction_by_kind
    from hf_adaprune.families import filter_groups
    from hf_adaprune.reporting.flops import structure_costs

    model = tiny_model("bert", num_hidden_layers=6, intermediate_size=128)
    masks = attach_masks(model, layers=True)
    groups = filter_groups(masks.groups.values(), None, kinds)
    costs = structure_costs(model, groups, 32)
    dense = model_profile(model, seq_len=32)
    torch.manual_seed(0)
    scores = {g.name: torch.rand(masks.masks[g.name].numel()) for g in groups}
    masks.update(select_masks_by_kind(groups, scores, masks.state_dict(), 0.5, kinds=kinds, scope="global",
                                      costs=costs))
    reported = selected_fraction_by_kind(groups, masks.masks, kinds, costs)
    compact(model)
    removed = compare_profiles(dense, model_profile(model, seq_len=32))["layer_flops_removed"]
    assert model.config.num_hidden_layers == 4, "layers take 1 - sqrt(0.5) of the cost: 2 of 6"
    assert removed == pytest.approx(reported, abs=0.01), "the controller is told what the model loses"
    assert removed == pytest.approx(0.5, abs=0.03), "to the nearest head (a head is 3% of these FLOPs)"


def test_a_target_one_width_kind_cannot_reach_beside_the_layers_is_named_before_training():
    """heads,layers: the layers take 1 - sqrt(1 - target) of the cost, rounded to whole layers (2 of 6 at 0.6), the
    heads at their floors what they can of the rest; above that the selection keeps one head in every layer and stops short, so the trainer warns first."""
    from hf_adaprune import attach_masks
    from hf_adaprune.engine.selection import unreachable_target
    from hf_adaprune.families import filter_groups
    from hf_adaprune.reporting.flops import structure_costs

    model = tiny_model("bert", num_hidden_layers=6, intermediate_size=128)
    masks = attach_masks(model, layers=True)
    sizes = {name: mask.numel() for name, mask in masks.masks.items()}
    kinds = ("heads", "layers")
    groups = filter_groups(masks.groups.values(), None, kinds)
    costs = structure_costs(model, groups, 32)
    floors = {"heads": 1, "layers": 1}
    assert unreachable_target(groups, sizes, 0.5, kinds, floors, costs) is None
    message = unreachable_target(groups, sizes, 0.6, kinds, floors, costs)
    assert message.startswith("pruning target 0.6 cannot be reached with --prune heads,layers: the layers take "
                              "0.3333 of the layer cost (2 of 6 layers, removed whole)")
    assert "prune more kinds (--prune heads,ffn,layers) or lower the target to <= 0.5476." in message
    all_kinds = ("heads", "ffn", "layers")
    groups = filter_groups(masks.groups.values(), None, all_kinds)
    assert unreachable_target(groups, sizes, 0.6, all_kinds, floors, structure_costs(model, groups, 32)) is None
    # every kind pruned (a latency table: each layer's norms, residual adds and call time no head or neuron holds):
    # the advice was to prune the kinds already pruned
    small = tiny_model("bert", num_hidden_layers=4)
    masks = attach_masks(small, layers=True)
    sizes = {name: mask.numel() for name, mask in masks.masks.items()}
    groups = filter_groups(masks.groups.values(), None, all_kinds)
    costs = {"encoder.layer": 250.0, **{f"encoder.layer.{i}": 250.0 for i in range(4)},
             **{g.name: 20.0 if g.kind == "heads" else 0.5 for g in groups if g.kind != "layers"}}
    for scope, advice in (("layer", "rank the structures of all layers together (--pruning_scope global) or lower "
                                    "the target to <= "), ("global", "sparsity reached; lower the target to <= ")):
        message = unreachable_target(groups, sizes, 0.6, all_kinds, {**floors, "ffn": 1}, costs, scope=scope)
        assert "prune more kinds" not in message and advice in message, message
        assert "what no head or neuron holds" in message


@pytest.mark.parametrize("prune", ["layers,heads,ffn", "layers"])
def test_repruning_a_model_with_uneven_layers_counts_each_layers_own_cost(tmp_path, prune):
    """A pruned folder pruned again with whole layers: its layers have other widths, and a removed layer counts its
    own FLOPs (not the stack's average) in the sparsity steered on and reported."""
    from hf_adaprune import attach_masks, model_profile, save_pruned

    model = tiny_model("bert", num_hidden_layers=4)
    masks = attach_masks(model)
    masks.set("encoder.layer.0.attention", torch.tensor([1., 0, 0, 0]))  # layer 0 narrow: 1 head, 4 neurons
    masks.set("encoder.layer.0.ffn", torch.cat([torch.ones(4), torch.zeros(33)]))
    save_pruned(model, tmp_path / "first")
    start = AutoPrunedModel.from_pretrained(tmp_path / "first")
    layers = [row["flops"] for row in model_profile(start, seq_len=10)["layers"]]
    assert layers[0] < layers[1] / 4
    trainer = make_trainer(tmp_path / "second", model=start, prune=prune, pruning_target=0.3,
                           pruning_initial_step=0.3, pruning_tolerance=10.0, max_steps=12)
    assert trainer.costs["encoder.layer.0"] == layers[0] and trainer.costs["encoder.layer.1"] == layers[1]
    trainer.train()
    report = json.loads((tmp_path / "second" / "pruning_report.json").read_text())
    assert report["final_sparsity"] == pytest.approx(report["comparison"]["layer_flops_removed"], abs=0.01)


def test_kinds_the_roles_leave_without_groups_are_named_neither_in_report_nor_card(tmp_path, caplog):
    """--prune heads,ffn,layers with --pruning_roles decoder_self,cross: only heads can go; the report, the card and
    a warning say so."""
    data = toy_dataset(64).map(lambda row: {"labels": row["input_ids"][:6]})
    args = Seq2SeqPruningArguments(
        str(tmp_path), prune="heads,ffn,layers", pruning_roles="decoder_self,cross", max_steps=8,
        per_device_train_batch_size=16, learning_rate=1e-3, pruning_warmup_steps=4, pruning_interval=4,
        pruning_target=0.6, pruning_initial_step=0.3, pruning_tolerance=100.0, pruning_metric="loss",
        pruning_seq_len=10, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = AdaptivePruningSeq2SeqTrainer(model=build_seq2seq("marian"), args=args, train_dataset=data,
                                            eval_dataset=data.select(range(16)))
    with caplog.at_level("WARNING", logger="hf_adaprune"):
        trainer.train()
    assert "--prune heads,ffn,layers: no ffn or layers groups with --pruning_roles cross,decoder_self in this " \
           "model; pruning heads only" in caplog.text
    trainer.save_model()
    assert json.loads((tmp_path / "pruning_report.json").read_text())["structures"] == "heads"
    card = (tmp_path / "README.md").read_text()
    assert "FFN neurons" not in card and "removed layers counted whole" not in card


def test_a_candidate_judged_on_the_best_checkpoint_carries_its_step(tmp_path):
    """load_best_model_at_end restores checkpoint-18 with a candidate pending since step 16: judged at the end on
    those weights, its decision is stamped 18 (the step of the weights measured), as the final check is."""
    trainer = None

    def compute_metrics(prediction):  # the best checkpoint is the one at step 18
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean()),
                "score": -abs(trainer.state.global_step - 18)}

    data = toy_dataset()
    trainer = AdaptivePruningTrainer(
        model=tiny_model("bert", num_hidden_layers=4), train_dataset=data, eval_dataset=data.select(range(48)),
        compute_metrics=compute_metrics,
        args=make_args(tmp_path, eval_strategy="steps", eval_steps=6, save_strategy="steps", save_steps=6,
                       load_best_model_at_end=True, metric_for_best_model="score", pruning_tolerance=1.0,
                       prune="heads,ffn,layers", pruning_target=0.9, pruning_initial_step=0.2, max_steps=36,
                       pruning_warmup_steps=4, pruning_interval=4, pruning_step_growth=1.0))
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-18")
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["final_check"]["step"] == 18
    judged = report["decisions"][-3]  # then the restore entry and the stop, at the step training ended
    assert (judged["event"], judged["ratio"], judged["training_step"]) == ("keep", 0.8, 18), report["decisions"]
    assert [d["event"] for d in report["decisions"][-2:]] == ["best_checkpoint", "stop"]
