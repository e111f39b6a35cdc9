"""--pruning_target_type latency: a table of measured seconds per head, neuron and layer (forward for encoders,
generate for encoder-decoders), the trainer steering by it, bad values failing at parse time."""

from __future__ import annotations

import json

import pytest

from hf_adaprune import attach_masks
from hf_adaprune.reporting.latency_costs import latency_costs

from conftest import tiny_model
from test_layers import build_seq2seq
from test_trainer import make_args, make_trainer


def test_encoder_table_has_a_positive_cost_per_structure_and_layers_cost_most():
    model = tiny_model("bert")
    masks = attach_masks(model, layers=True)
    groups = list(masks.groups.values())
    costs = latency_costs(model, groups, batch_size=2, seq_len=16, repeats=3, warmup=1)
    # a cost per structure of each group, and each layer's own time under its path
    assert set(costs) == {g.name for g in groups} | {f"encoder.layer.{i}" for i in range(3)}
    assert all(c > 0 for c in costs.values())
    per_layer = costs["encoder.layer"]
    assert per_layer == pytest.approx(sum(costs[f"encoder.layer.{i}"] for i in range(3)) / 3)
    assert all(per_layer > 4 * costs[f"encoder.layer.{i}.attention"] for i in range(3)), costs
    assert all(per_layer > 37 * costs[f"encoder.layer.{i}.ffn"] for i in range(3)), costs


def test_encoder_decoder_table_times_generate_so_decoder_layers_count_every_token():
    model = build_seq2seq("marian")
    masks = attach_masks(model, layers=True)
    groups = [masks.groups["encoder.layers"], masks.groups["decoder.layers"]]
    few = latency_costs(model, groups, seq_len=8, generation_tokens=2, repeats=3, warmup=1)
    many = latency_costs(model, groups, seq_len=8, generation_tokens=24, repeats=3, warmup=1)
    # the encoder runs once per generate, each decoder layer once per token
    assert many["decoder.layers"] / few["decoder.layers"] > 3 * many["encoder.layers"] / few["encoder.layers"]


def test_a_table_timed_away_from_the_training_device_is_warned_of(tmp_path, monkeypatch, caplog):
    """fp16_full_eval / DeepSpeed / FSDP place the model after the trainer is built, where the table is measured."""
    import torch

    import hf_adaprune.trainer.trainer as trainer_module
    from hf_adaprune.reporting.latency_costs import timing_device_note

    model = tiny_model("bert")
    assert timing_device_note(model, "cpu") is None
    note = timing_device_note(model.to("meta"), "cuda:0")
    assert note.startswith("pruning_target_type=latency times every structure on meta, where the model is while the "
                           "trainer is built, but training runs on cuda:0")
    seen = []
    monkeypatch.setattr(trainer_module, "timing_device_note",
                        lambda m, device: seen.append(torch.device(device).type) or "timed elsewhere")
    with caplog.at_level("WARNING", logger=trainer_module.logger.name):
        make_trainer(tmp_path, pruning_target_type="latency", pruning_latency_seq_len=10, max_steps=4)
    assert seen == ["cpu"] and "timed elsewhere" in caplog.text
    seen.clear()
    make_trainer(tmp_path / "flops", max_steps=4)
    assert seen == []  # a FLOP target times nothing


def test_trainer_prunes_to_a_fraction_of_measured_time(tmp_path, monkeypatch):
    """The selection follows the measured table, not the structure counts: with each layer's heads and neurons
    timed 10x the layer before's (their FLOPs are equal), the heads and neurons that go take half of each kind's
    time, and the report counts the sparsity in that table's seconds."""
    import hf_adaprune.trainer.trainer as trainer_module

    measured = []

    def steep(model, groups, *args, **kwargs):  # the table measured, each layer's entries scaled by 10^layer
        table = latency_costs(model, groups, *args, **kwargs)
        measured.append(table)
        return {name: seconds * 10 ** int(name.split(".")[2]) for name, seconds in table.items()}

    monkeypatch.setattr(trainer_module, "latency_costs", steep)
    trainer = make_trainer(tmp_path, pruning_target_type="latency", pruning_latency_seq_len=10,
                           pruning_target=0.5, pruning_initial_step=0.5, pruning_tolerance=10.0, max_steps=12)
    assert len(measured) == 1 and all(c > 0 for c in measured[0].values())
    costs = dict(trainer.costs)
    assert costs == {name: seconds * 10 ** int(name.split(".")[2]) for name, seconds in measured[0].items()}
    trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    layers = trainer.model.bert.encoder.layer
    pruned = {"attention": [4 - layer.attention.self.num_attention_heads for layer in layers],
              "ffn": [37 - layer.intermediate.dense.out_features for layer in layers]}
    fractions = {}
    for kind, size in (("attention", 4), ("ffn", 37)):
        unit = [costs[f"encoder.layer.{i}.{kind}"] for i in range(3)]
        fractions[kind] = sum(u * n for u, n in zip(unit, pruned[kind])) / (size * sum(unit))
        # a cost budget is met to within half its dearest structure (one of layer 2's)
        assert fractions[kind] == pytest.approx(0.5, abs=0.5 * max(unit) / (size * sum(unit))), (kind, pruned)
    assert report["target_type"] == "latency" and report["final_sparsity"] == pytest.approx(min(fractions.values()))


@pytest.mark.parametrize("field", ["pruning_latency_batch_size", "pruning_generation_tokens",
                                   "pruning_latency_seq_len"])
def test_bad_latency_options_fail_at_parse_time(tmp_path, field):
    with pytest.raises(ValueError, match=f"--{field} must be >= 1"):
        make_args(tmp_path, **{field: 0})


def test_a_resumed_run_decides_on_the_table_measured_at_its_start(tmp_path, monkeypatch):
    """Timing is noisy: a resumed run that measured its own table would select other structures than the run it
    continues. The table travels in pruning_state.pt."""
    import random

    import hf_adaprune.trainer.trainer as trainer_module

    noise = random.Random()  # its own generator: the Trainer seeds the global one

    def noisy_costs(model, groups, *args, **kwargs):  # every measurement a different table
        return {g.name: noise.uniform(1e-6, 1e-5) for g in groups}

    monkeypatch.setattr(trainer_module, "latency_costs", noisy_costs)
    settings = dict(pruning_target_type="latency", pruning_target=0.5, pruning_tolerance=10.0, max_steps=18,
                    save_strategy="steps", save_steps=9)
    whole = make_trainer(tmp_path / "whole", **settings)
    table = dict(whole.costs)
    whole.train()
    resumed = make_trainer(tmp_path / "resumed", **settings)
    assert resumed.costs != table
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-9"))
    assert resumed.costs == table
    history = [{k: h[k] for k in ("event", "ratio", "selected") if k in h} for h in whole.controller.state.history]
    assert [{k: h[k] for k in ("event", "ratio", "selected") if k in h}
            for h in resumed.controller.state.history] == history


def test_a_table_saved_before_layers_had_their_own_entries_is_reused_on_resume(tmp_path, monkeypatch):
    """With whole layers the table holds each layer's own time too; a checkpoint's table without those entries (an
    older one) is still the one decided on: its groups' times, each layer at the stack's average."""
    import random

    import torch

    import hf_adaprune.trainer.trainer as trainer_module
    from hf_adaprune.trainer.checkpoint import PRUNING_STATE_FILE

    noise = random.Random()

    def noisy_costs(model, groups, *args, **kwargs):  # group names and every layer's path, as latency_costs gives
        table = {g.name: noise.uniform(1e-6, 1e-5) for g in groups}
        table.update({f"{g.name}.{i}": noise.uniform(1e-5, 1e-4) for g in groups if g.kind == "layers"
                      for i in range(3)})
        return table

    monkeypatch.setattr(trainer_module, "latency_costs", noisy_costs)
    settings = dict(prune="heads,ffn,layers", pruning_target_type="latency", pruning_target=0.5,
                    pruning_tolerance=10.0, max_steps=18, save_strategy="steps", save_steps=9)
    make_trainer(tmp_path / "whole", **settings).train()
    path = tmp_path / "whole" / "checkpoint-9" / PRUNING_STATE_FILE
    state = torch.load(path, weights_only=True)
    state["latency_costs"] = {k: v for k, v in state["latency_costs"].items() if k in state["masks"]}
    torch.save(state, path)
    resumed = make_trainer(tmp_path / "resumed", **settings)
    resumed.train(resume_from_checkpoint=str(path.parent))
    assert resumed.costs == state["latency_costs"]


def test_an_audio_latency_length_shorter_than_one_frame_is_refused_with_the_flag(tmp_path):
    """--pruning_seq_len had this check; --pruning_latency_seq_len failed inside wav2vec2's feature encoder."""
    import datasets
    import torch

    from hf_adaprune import AdaptivePruningTrainer
    from test_layers import tiny_ctc3

    data = datasets.Dataset.from_list([{"input_values": torch.randn(1600).tolist(), "labels": [5, 6, 7]}] * 4)
    args = make_args(tmp_path, pruning_metric="loss", pruning_seq_len=1600, pruning_target_type="latency",
                     pruning_latency_seq_len=5)
    with pytest.raises(ValueError, match=r"--pruning_latency_seq_len 5 counts raw audio samples for this wav2vec2 "
                                         r"model, fewer than the \d+ its feature encoder turns into one frame"):
        AdaptivePruningTrainer(model=tiny_ctc3("wav2vec2"), args=args, train_dataset=data, eval_dataset=data)


def test_latency_options_another_target_type_does_not_read_are_warned_of_and_not_compared_on_resume(tmp_path,
                                                                                                   caplog):
    """Under flops they measure nothing: said at set-up, and a resume that changes them is no longer refused as
    'other pruning arguments'. Under latency they stay compared (the table was measured with them)."""
    from hf_adaprune.trainer.arguments import pruning_arguments

    flops = make_args(tmp_path, pruning_latency_batch_size=4, pruning_generation_tokens=4)
    assert not {"pruning_latency_batch_size", "pruning_latency_seq_len", "pruning_generation_tokens"} & set(
        pruning_arguments(flops))
    latency = make_args(tmp_path, pruning_target_type="latency", pruning_latency_batch_size=4)
    assert pruning_arguments(latency)["pruning_latency_batch_size"] == 4
    with caplog.at_level("WARNING", logger="hf_adaprune.trainer.trainer"):
        make_trainer(tmp_path, pruning_latency_batch_size=4, pruning_generation_tokens=4)
    assert "--pruning_latency_batch_size 4, --pruning_generation_tokens 4 not read: they set what " \
           "--pruning_target_type latency measures, and the target type is flops" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_adaprune.trainer.trainer"):
        make_trainer(tmp_path, pruning_target_type="latency", pruning_generation_tokens=4)  # an encoder
    assert "--pruning_generation_tokens 4 not read: the table times per generated token only for models that " \
           "generate (encoder-decoder models, decoder-only language models)" in caplog.text
    # an encoder-decoder without generate (a BART classifier) is timed by forward as well: said, and a count beyond its
    # decoder's positions is not refused
    import transformers

    from test_seq2seq_families import tiny_seq2seq_config

    classifier = transformers.BartForSequenceClassification(tiny_seq2seq_config("bart", num_labels=3))
    assert not hasattr(classifier, "generate")
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_adaprune.trainer.trainer"):
        make_trainer(tmp_path, model=classifier, pruning_target_type="latency", pruning_generation_tokens=1000)
    assert "--pruning_generation_tokens 1000 not read: the table times per generated token only for models " \
           "that generate" in caplog.text


@pytest.mark.parametrize("target_type", ["flops", "latency"])
def test_a_decoder_alone_leaves_its_idle_cross_attention_out(tmp_path, target_type):
    """BartForCausalLM has its family's cross-attention blocks, which never run without an encoder: they cost 0, got
    no gradient, and the first pruning step failed with 'no importance scores yet'."""
    import json

    import transformers

    from hf_adaprune import AdaptivePruningTrainer
    from test_seq2seq_families import tiny_seq2seq_config
    from test_trainer import toy_dataset

    model = transformers.BartForCausalLM(tiny_seq2seq_config("bart"))
    data = toy_dataset(64).map(lambda row: {"labels": row["input_ids"]})
    trainer = AdaptivePruningTrainer(model=model, train_dataset=data, eval_dataset=data.select(range(16)),
                                     args=make_args(tmp_path, pruning_metric="loss", pruning_target_type=target_type,
                                                    max_steps=8, pruning_warmup_steps=2, pruning_interval=2))
    assert trainer.pruning_groups and not any(g.role == "cross" for g in trainer.pruning_groups)
    trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["final_sparsity"] > 0
    assert all(g["kept"] == g["original"] for name, g in report["groups"].items() if "encoder_attn" in name)
    with pytest.raises(ValueError, match=r"nothing to prune: the cross-attention this model has \(decoder\.layers\.0"
                                         r"\.encoder_attn, \.\.\.\) never runs without an encoder"):
        AdaptivePruningTrainer(model=transformers.BartForCausalLM(tiny_seq2seq_config("bart")), train_dataset=data,
                               args=make_args(tmp_path / "cross", pruning_metric="loss", pruning_roles="cross"),
                               eval_dataset=data.select(range(16)))


def test_the_table_times_the_model_without_autograd():
    """Timing under autograd would add graph building to every structure's time (and keep activations)."""
    import torch

    model = tiny_model("bert")
    masks = attach_masks(model)
    grad_enabled = []
    model.register_forward_hook(lambda *args: grad_enabled.append(torch.is_grad_enabled()))
    latency_costs(model, list(masks.groups.values()), seq_len=8, repeats=1, warmup=0)
    assert grad_enabled and not any(grad_enabled)


def test_generation_tokens_beyond_what_whisper_can_generate_name_the_option(tmp_path):
    """A multilingual Whisper's generate starts from 4 tokens (start, language, task, no timestamps): tokens in the
    decoder's last positions passed the check and failed in generate() with a message naming max_new_tokens."""
    import datasets
    import torch
    import transformers
    from transformers import GenerationConfig

    from hf_adaprune import AdaptivePruningSeq2SeqTrainer, Seq2SeqPruningArguments
    from test_speech_families import WHISPER

    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**WHISPER)).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=3, bos_token_id=1, eos_token_id=2, pad_token_id=0, is_multilingual=True,
        lang_to_id={"<|en|>": 4}, task_to_id={"transcribe": 5, "translate": 6}, no_timestamps_token_id=7,
        language="en", task="transcribe", max_length=WHISPER["max_target_positions"])
    data = datasets.Dataset.from_dict({"input_features": torch.randn(4, 8, 32).tolist(), "labels": [[5, 6, 7, 2]] * 4})
    tokens = WHISPER["max_target_positions"] - 2  # fits one start token, not four
    args = Seq2SeqPruningArguments(str(tmp_path), max_steps=4, pruning_warmup_steps=2, pruning_interval=2,
                                   pruning_seq_len=10, report_to="none", use_cpu=True, save_strategy="no",
                                   pruning_target_type="latency", pruning_generation_tokens=tokens)
    with pytest.raises(ValueError, match=rf"--pruning_generation_tokens {tokens}: generating that many tokens to time "
                                         r"the decoder failed \(.*\); give a smaller --pruning_generation_tokens"):
        AdaptivePruningSeq2SeqTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
