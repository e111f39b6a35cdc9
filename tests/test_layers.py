"""Whole layers as prunable structures: masked layers pass their input through, compaction deletes them from their
ModuleList (config counts, KV-cache indices, T5's / WavLM's relative bias, the saved record follow), outputs and
generate() tokens equal the masked model's, and the layer score is the gate's dL/dg."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import GenerationConfig

from hf_adaprune import AutoPrunedModel, attach_masks, compact, find_groups, save_pruned
from hf_adaprune.engine.selection import select_masks_by_kind
from hf_adaprune.families import find_layer_groups
from hf_adaprune.layout import read_record

from conftest import text_batch, tiny_model
from test_seq2seq_families import seq2seq_batch, tiny_seq2seq
from test_speech_families import WHISPER, audio_batch, tiny_ctc_model, whisper_features
from test_wavlm import audio_batch as wavlm_audio, tiny_wavlm, tiny_wavlm_config

TOL = 1e-5
KEEP_PATTERNS = {"first removed": [1, 2], "last removed": [0, 1], "all but one": [1], "middle kept": [0, 2]}


def tiny_whisper3(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(**dict(WHISPER, encoder_layers=3, decoder_layers=3))
    model = transformers.WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=3, bos_token_id=1, eos_token_id=2,
                                               pad_token_id=0)
    return model


def tiny_ctc3(model_type: str):
    model = tiny_ctc_model(model_type)
    torch.manual_seed(0)
    config = model.config
    config.num_hidden_layers = 3
    return type(model)(config).eval()


ENCODERS = {  # name -> (build, batch)
    "bert": (lambda: tiny_model("bert"), text_batch),
    "roberta": (lambda: tiny_model("roberta"), text_batch),
    "electra": (lambda: tiny_model("electra"), text_batch),
    "distilbert": (lambda: tiny_model("distilbert"), text_batch),
    "deberta-v2": (lambda: tiny_model("deberta-v2"), text_batch),
    "mpnet": (lambda: tiny_model("mpnet"), text_batch),
    "wav2vec2": (lambda: tiny_ctc3("wav2vec2"), lambda: audio_batch()),
    "hubert": (lambda: tiny_ctc3("hubert"), lambda: audio_batch()),
    "data2vec-audio": (lambda: tiny_ctc3("data2vec-audio"), lambda: audio_batch()),
    "wavlm": (lambda: tiny_wavlm(num_hidden_layers=3), wavlm_audio),
}
SEQ2SEQ = ["marian", "bart", "mbart", "m2m_100", "t5", "mt5"]


def build_seq2seq(family):
    if family == "whisper":
        return tiny_whisper3()
    layers = dict(num_layers=3, num_decoder_layers=3) if family in ("t5", "mt5") else \
        dict(encoder_layers=3, decoder_layers=3)
    return tiny_seq2seq(family, **layers)


def outputs(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def mask_layers(model, keep: dict[str, list[int]], widths_seed: int | None = 0):
    """Keep the layers ``keep[stack]`` (others whole); with ``widths_seed`` also random head/neuron masks."""
    masks = attach_masks(model, layers=True)
    generator = torch.Generator().manual_seed(widths_seed or 0)
    if widths_seed is not None:
        for group in find_groups(model):
            mask = (torch.rand(masks.masks[group.name].shape, generator=generator) > 0.4).float()
            mask[0] = 1  # no empty attention here: those have their own tests
            masks.set(group.name, mask)
    for stack, kept in keep.items():
        mask = torch.zeros_like(masks.masks[stack])
        mask[kept] = 1
        masks.set(stack, mask)
    return masks


def stack_names(model):
    return {g.role: g.name for g in find_layer_groups(model)}


@pytest.mark.parametrize("pattern", list(KEEP_PATTERNS))
@pytest.mark.parametrize("family", list(ENCODERS))
def test_encoder_compaction_equals_masked(family, pattern):
    build, batch_of = ENCODERS[family]
    model, batch = build(), batch_of()
    (stack,) = stack_names(model).values()
    kept = KEEP_PATTERNS[pattern]
    mask_layers(model, {stack: kept})
    masked = outputs(model, batch)
    record = compact(model)
    assert len(model.base_model.get_submodule(stack)) == len(kept)
    count_attr = find_layer_groups(model)[0].count_attr
    assert getattr(model.config, count_attr) == len(kept)
    assert record["layers"][stack] == {"role": "encoder", "original": 3, "kept": kept}
    assert all(name.startswith(f"{stack}.") and int(name[len(stack) + 1:].split(".")[0]) < len(kept)
               for name in record["groups"]), "groups are named by the renumbered layers"
    assert (outputs(model, batch) - masked).abs().max() <= TOL


def greedy(model, batch, use_cache):
    with torch.no_grad():
        if "input_features" in batch:
            return model.generate(batch["input_features"], max_new_tokens=8, do_sample=False, use_cache=use_cache)
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=8,
                              do_sample=False, num_beams=1, use_cache=use_cache)


def whisper_inputs():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, WHISPER["vocab_size"], (3, 7), generator=generator)
    tokens[:, 0] = WHISPER["decoder_start_token_id"]
    return {"input_features": whisper_features(batch=3, seed=4), "decoder_input_ids": tokens}


@pytest.mark.parametrize("which", ["encoder", "decoder", "both"])
@pytest.mark.parametrize("family", SEQ2SEQ + ["whisper"])
def test_seq2seq_compaction_equals_masked_and_generates_the_same(family, which):
    model = build_seq2seq(family)
    batch = whisper_inputs() if family == "whisper" else seq2seq_batch()
    stacks = stack_names(model)
    keep = {"encoder": {stacks["encoder"]: [1, 2]}, "decoder": {stacks["decoder"]: [0, 2]},
            "both": {stacks["encoder"]: [2], stacks["decoder"]: [1]}}[which]
    if family in ("t5", "mt5") and which != "decoder":
        masks = mask_layers(model, keep)
        masked, weights = outputs(model, batch), {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match="T5's encoder layers cannot be removed while the model has a decoder"):
            compact(model)
        # refused before any weight was sliced: the model is as it was, and compacts once the layers stay
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
        assert (outputs(model, batch) - masked).abs().max() == 0
        masks.set(stacks["encoder"], torch.ones(3))
        expected = outputs(model, batch)
        compact(model)
        assert (outputs(model, batch) - expected).abs().max() <= TOL
        return
    mask_layers(model, keep)
    masked = outputs(model, batch)
    tokens = {cache: greedy(model, batch, cache) for cache in (True, False)}
    assert torch.equal(tokens[True], tokens[False])
    compact(model)
    decoder = model.base_model.get_submodule(stacks["decoder"])
    for index, layer in enumerate(decoder):
        indices = {m.layer_idx for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)}
        assert indices == {index}, "KV-cache indices follow the new numbering"
    assert (outputs(model, batch) - masked).abs().max() <= TOL
    for cache in (True, False):
        assert torch.equal(greedy(model, batch, cache), tokens[True])


@pytest.mark.parametrize("family", ["t5", "wavlm"])
def test_removed_first_layer_hands_on_the_relative_bias(family):
    if family == "t5":
        model, batch = build_seq2seq("t5"), seq2seq_batch()
        keep = {"decoder.block": [2]}
    else:
        model, batch = tiny_wavlm(num_hidden_layers=3), wavlm_audio()
        keep = {"encoder.layers": [2]}
    mask_layers(model, keep)
    masked = outputs(model, batch)
    compact(model)
    for stack in keep:
        first = model.base_model.get_submodule(stack)[0]
        attention = first.layer[0].SelfAttention if family == "t5" else first.attention
        flag = "has_relative_attention_bias" if family == "t5" else "has_relative_position_bias"
        assert getattr(attention, flag)
    assert (outputs(model, batch) - masked).abs().max() <= TOL


@pytest.mark.parametrize("family", ["bert", "t5", "whisper", "wavlm"])
def test_saved_model_reloads_with_auto_pruned_model_and_stock_transformers(family, tmp_path):
    if family == "bert":
        model, batch, keep = tiny_model("bert"), text_batch(), {"encoder.layer": [0, 2]}
    elif family == "wavlm":
        model, batch, keep = tiny_wavlm(num_hidden_layers=3), wavlm_audio(), {"encoder.layers": [1]}
    else:
        model = build_seq2seq(family)
        batch = whisper_inputs() if family == "whisper" else seq2seq_batch()
        stacks = stack_names(model)
        keep = {stacks["decoder"]: [1]} if family == "t5" else {stacks["encoder"]: [1, 2], stacks["decoder"]: [1]}
    mask_layers(model, keep)
    compact(model)
    expected = outputs(model, batch)
    save_pruned(model, tmp_path)
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    assert (outputs(loaded, batch) - expected).abs().max() <= TOL
    assert read_record(loaded.config)["layers"] == read_record(model.config)["layers"]
    auto = transformers.AutoModelForSpeechSeq2Seq if family == "whisper" else \
        transformers.AutoModelForSeq2SeqLM if family == "t5" else \
        transformers.AutoModelForCTC if family == "wavlm" else transformers.AutoModelForSequenceClassification
    stock = auto.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert "hf_adaprune" not in type(stock).__module__
    assert (outputs(stock, batch) - expected).abs().max() <= TOL


def test_t5_encoder_model_loses_its_first_block():
    torch.manual_seed(0)
    seq2seq = build_seq2seq("t5")
    model = transformers.T5EncoderModel(seq2seq.config).eval()
    model.load_state_dict(seq2seq.state_dict(), strict=False)
    batch = {k: v for k, v in seq2seq_batch().items() if not k.startswith("decoder")}
    mask_layers(model, {"encoder.block": [1, 2]})
    with torch.no_grad():
        masked = model(**batch).last_hidden_state
    compact(model)
    assert model.config.num_layers == 2 and model.encoder.block[0].layer[0].SelfAttention.has_relative_attention_bias
    with torch.no_grad():
        assert (model(**batch).last_hidden_state - masked).abs().max() <= TOL


def test_model_pruned_twice_keeps_the_original_layer_numbers(tmp_path):
    model, batch = tiny_model("bert", num_hidden_layers=4), text_batch()
    mask_layers(model, {"encoder.layer": [0, 2, 3]})
    compact(model)
    mask_layers(model, {"encoder.layer": [0, 2]})  # of the 3 left: original layers 0 and 3
    masked = outputs(model, batch)
    record = compact(model)
    assert record["layers"]["encoder.layer"] == {"role": "encoder", "original": 4, "kept": [0, 3]}
    assert (outputs(model, batch) - masked).abs().max() <= TOL
    save_pruned(model, tmp_path)
    assert (outputs(AutoPrunedModel.from_pretrained(tmp_path).eval(), batch) - masked).abs().max() <= TOL


def test_masked_layer_passes_its_input_through_exactly():
    model, batch = tiny_model("bert"), text_batch()
    dense = outputs(model, batch)
    mask_layers(model, {"encoder.layer": [0, 1, 2]}, widths_seed=None)
    assert torch.equal(outputs(model, batch), dense), "a kept layer's gate changes nothing"
    masks = attach_masks(model, layers=True)
    captured = {}
    handle = model.bert.encoder.layer[2].register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    masks.set("encoder.layer", torch.tensor([1.0, 1.0, 0.0]))
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
    handle.remove()
    assert torch.equal(hidden, captured["x"])


def test_layer_score_is_the_gate_derivative():
    """The hook's <dL/d output, output - input> equals the central-difference derivative of the loss in the gate."""
    model = tiny_model("bert").double()
    batch = dict(text_batch(), labels=torch.tensor([0, 1, 2]))
    masks = attach_masks(model, layers=True)
    model(**batch).loss.backward()
    scores = masks.take_layer_taylor("encoder.layer")
    assert torch.count_nonzero(masks.layer_taylor["encoder.layer"]) == 0, "reading resets the accumulator"
    eps = 2.0 ** -12  # exact in the float32 mask

    def loss_at(index, gate_value):
        gate = torch.ones(3)
        gate[index] = gate_value
        with torch.no_grad():
            masks.masks["encoder.layer"].copy_(gate)  # past 1: set() refuses such a mask, the derivative needs it
            return float(model(**batch).loss)

    for index in range(3):
        derivative = (loss_at(index, 1 + eps) - loss_at(index, 1 - eps)) / (2 * eps)
        assert float(scores[index]) == pytest.approx(derivative, rel=1e-3)
        assert abs(derivative) > 1e-7


def test_pipeline_runs_a_model_with_layers_removed(tmp_path):
    from test_hub import tiny_tokenizer

    model = tiny_model("bert")
    mask_layers(model, {"encoder.layer": [2]})
    compact(model)
    tokenizer = tiny_tokenizer(tmp_path)
    save_pruned(model, tmp_path / "model", tokenizer=tokenizer)
    classify = transformers.pipeline("text-classification", model=str(tmp_path / "model"), trust_remote_code=True,
                                     top_k=None)
    rows = classify("w1 w2 w3")
    rows = rows[0] if isinstance(rows[0], list) else rows
    scores = {row["label"]: row["score"] for row in rows}
    with torch.no_grad():
        expected = model(**tokenizer("w1 w2 w3", return_tensors="pt")).logits.softmax(-1)[0]
    assert [scores[f"LABEL_{i}"] for i in range(3)] == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.parametrize("family", ["whisper", "bart"])
def test_empty_decoder_attention_after_a_removed_layer_keeps_its_cache_slot(family, tmp_path):
    model = build_seq2seq(family)
    batch = whisper_inputs() if family == "whisper" else seq2seq_batch()
    masks = mask_layers(model, {"decoder.layers": [0, 2]})
    masks.set("decoder.layers.2.self_attn", torch.zeros(4))  # no head left: an EmptyAttention with a cache slot
    masks.set("decoder.layers.2.encoder_attn", torch.zeros(4))
    masked = outputs(model, batch)
    tokens = greedy(model, batch, True)
    record = compact(model)
    empty = model.base_model.decoder.layers[1].self_attn
    assert getattr(empty, "is_empty_attention", False) and empty.cache_layer == 1
    assert record["layout"]["modules"]["decoder.layers.1.self_attn"]["cache_layer"] == 1
    assert (outputs(model, batch) - masked).abs().max() <= TOL
    for cache in (True, False):
        assert torch.equal(greedy(model, batch, cache), tokens)
    save_pruned(model, tmp_path)
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    assert torch.equal(greedy(loaded, batch, True), tokens)


def test_kept_structure_with_a_layer_masked_out_is_what_compaction_keeps():
    from hf_adaprune import kept_structure

    model = tiny_model("bert")
    mask_layers(model, {"encoder.layer": [0, 2]})
    masked = kept_structure(model)
    assert not any(name.startswith("encoder.layer.1.") for name in masked)  # the masked layer's groups are gone
    compact(model)
    assert masked == kept_structure(model)


def weighted_sum_classifier(name: str):
    """A 3-layer audio classifier whose head weighs every encoder hidden state (``use_weighted_layer_sum``), the
    weights far from uniform as after training, and its inputs."""
    family, head = name.split(" ")
    torch.manual_seed(0)
    if family == "whisper":
        config = transformers.WhisperConfig(**dict(WHISPER, encoder_layers=3, use_weighted_layer_sum=True))
        model, batch = transformers.WhisperForAudioClassification(config), {"input_features": whisper_features()}
    elif family == "wavlm":
        config = tiny_wavlm_config(num_hidden_layers=3, use_weighted_layer_sum=True)
        model, batch = getattr(transformers, f"WavLM{head}")(config), wavlm_audio()
    else:
        model_type = family.partition("-")[0]
        config = tiny_ctc_model(model_type, stable=family.endswith("-stable")).config
        config.update(dict(num_hidden_layers=3, use_weighted_layer_sum=True))
        prefix = {"wav2vec2": "Wav2Vec2", "hubert": "Hubert"}[model_type]
        model, batch = getattr(transformers, prefix + head)(config), audio_batch()
    with torch.no_grad():
        model.layer_weights.normal_(generator=torch.Generator().manual_seed(1))
    return model.eval(), batch


WEIGHTED_SUM = ["wav2vec2 ForSequenceClassification", "wav2vec2-stable ForXVector", "hubert ForSequenceClassification",
                "wavlm ForAudioFrameClassification", "whisper ForAudioClassification"]


# Whisper's last layer stays: see test_a_whisper_classifier_with_a_weighted_layer_sum_keeps_its_last_layer
@pytest.mark.parametrize("name, pattern", [(name, pattern) for name in WEIGHTED_SUM for pattern in KEEP_PATTERNS
                                           if not name.startswith("whisper") or KEEP_PATTERNS[pattern][-1] == 2])
def test_a_weighted_layer_sum_head_keeps_its_outputs_when_layers_go(name, pattern, tmp_path):
    # a removed layer's hidden state copies the one before it: its weight joins that one's
    model, batch = weighted_sum_classifier(name)
    stock_class, kept = type(model), KEEP_PATTERNS[pattern]
    mask_layers(model, {"encoder.layers": kept}, widths_seed=None)
    masked = outputs(model, batch)
    compact(model)
    assert model.layer_weights.shape == (len(kept) + 1,)
    tolerance = TOL * max(1.0, float(masked.abs().max()))  # relative: an x-vector's logits reach 1e5
    assert (outputs(model, batch) - masked).abs().max() <= tolerance
    save_pruned(model, tmp_path)
    assert (outputs(AutoPrunedModel.from_pretrained(tmp_path).eval(), batch) - masked).abs().max() <= tolerance
    stock = stock_class.from_pretrained(tmp_path, trust_remote_code=True)
    assert (outputs(stock.eval(), batch) - masked).abs().max() <= tolerance


def test_selecting_t5_encoder_layers_beside_a_decoder_is_refused_before_any_mask_changes():
    # compaction refuses them later; the bare engine says so when it would select them, as the trainer does up front
    model = build_seq2seq("t5")
    groups = find_layer_groups(model)
    stacks = stack_names(model)
    scores = {g.name: torch.tensor([3.0, 2.0, 1.0]) for g in groups}
    current = {g.name: torch.ones(3) for g in groups}
    with pytest.raises(ValueError, match="T5's encoder layers cannot be removed while the model has a decoder"):
        select_masks_by_kind(groups, scores, current, 1 / 3, kinds="layers")
    decoder = [g for g in groups if g.name == stacks["decoder"]]
    selected = select_masks_by_kind(decoder, scores, current, 1 / 3, kinds="layers")
    assert selected[stacks["decoder"]].tolist() == [1.0, 1.0, 0.0], "the decoder alone: its lowest-scored layer goes"


def test_a_whisper_classifier_with_a_weighted_layer_sum_keeps_its_last_layer():
    # the last hidden state it weighs is layer-normed: nothing in a smaller model stands for the one before it
    model, batch = weighted_sum_classifier("whisper ForAudioClassification")
    (stack,) = find_layer_groups(model)
    scores = {stack.name: torch.tensor([3.0, 2.0, 1.0])}  # the last layer scores lowest
    selected = select_masks_by_kind([stack], scores, {stack.name: torch.ones(3)}, 1 / 3, kinds="layers")
    assert selected[stack.name].tolist() == [1.0, 0.0, 1.0], "as many layers go, the last one stays"
    mask_layers(model, {stack.name: [0, 1]}, widths_seed=None)
    with pytest.raises(ValueError, match="the last encoder layer of a Whisper classifier with use_weighted_layer_sum "
                                         "cannot be removed"):
        compact(model)
    assert len(model.encoder.layers) == 3 and model.layer_weights.shape == (4,), "refused before any change"


def test_the_trainer_removes_layers_of_a_weighted_layer_sum_classifier_and_saves_it(tmp_path):
    from datasets import Dataset

    from hf_adaprune import AdaptivePruningTrainer, PruningArguments

    model, _ = weighted_sum_classifier("wav2vec2 ForSequenceClassification")
    model.config.layerdrop = 0.0
    generator = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_values": torch.randn(16, 200, generator=generator).tolist(), "labels": [0, 1] * 8})
    args = PruningArguments(str(tmp_path), prune="layers", max_steps=8, per_device_train_batch_size=4,
                            per_device_eval_batch_size=8, pruning_metric="loss", pruning_warmup_steps=1,
                            pruning_interval=2, pruning_initial_step=0.6, pruning_target=0.6, pruning_tolerance=100.0,
                            pruning_seq_len=200, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = AdaptivePruningTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    compacted = trainer.model.eval()
    assert len(compacted.wav2vec2.encoder.layers) < 3
    assert compacted.layer_weights.shape == (len(compacted.wav2vec2.encoder.layers) + 1,)
    batch = audio_batch()
    trainer.save_model()
    assert (outputs(AutoPrunedModel.from_pretrained(tmp_path).eval(), batch) - outputs(compacted, batch)).abs().max() \
        <= TOL


def test_a_model_run_before_its_masks_were_attached_records_gated_hidden_states():
    """transformers registers its hidden-state recording hooks at a model's first forward: the layer gates attached
    after it must still run first, or a weighted-sum head weighs the outputs of layers the masks removed."""
    model, batch = weighted_sum_classifier("wav2vec2 ForSequenceClassification")
    outputs(model, batch)  # a forward before pruning (evaluating the fine-tuned model)
    mask_layers(model, {"encoder.layers": [0, 2]}, widths_seed=None)
    masked = outputs(model, batch)
    compact(model)
    assert (outputs(model, batch) - masked).abs().max() <= TOL


def test_gates_follow_the_input_device_and_masks_move_with_the_model():
    """The Trainer places a model after the masks were made when fp16_full_eval / bf16_full_eval (or DeepSpeed,
    FSDP) postpone placement: the gates multiplied a CUDA input by a CPU mask. The meta device stands in for the
    accelerator here."""
    from hf_adaprune.engine.masks import _Gate, _LayerGate

    model = tiny_model("bert")
    masks = attach_masks(model, layers=True)
    heads = "encoder.layer.0.attention"
    masks.set(heads, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    x = torch.ones(2, 3, 32, device="meta")
    assert _Gate(masks, heads, repeat=8)(None, (x,))[0].device.type == "meta"
    gated = _LayerGate(masks, "encoder.layer", 0)(None, (x,), {}, (x + 1,))
    assert gated[0].device.type == "meta"
    masks.to("meta")  # what the trainer does when training begins, so no copy is made per forward
    assert {m.device.type for m in masks.masks.values()} == {"meta"}
    assert {m.device.type for m in masks.layer_taylor.values()} == {"meta"}
