"""Decoder-only models of the Llama layout (Llama, Mistral, Qwen2, Qwen3, Gemma 1-3, SmolLM3, OLMo, Granite):
grouped-query attention pruned by whole key/value heads (each with the query heads that read it), gated FFN neurons
and whole layers removed exactly (the config's per-layer lists follow), for the language-model and the classification
heads; generate's tokens unchanged with and without the KV cache; the folder loads with both loaders; trained and
pruned by the trainer, served by pipelines; the text-classification recipe on a tokenizer without a pad token; int8,
ONNX and the routes that refuse these models."""

from __future__ import annotations

import re

import pytest
import torch
import transformers

from hf_adaprune import (AdaptivePruningTrainer, AutoPrunedModel, attach_masks, compact, find_groups,
                         post_training_prune, save_pruned)
from hf_adaprune.engine.importance import structure_sums
from hf_adaprune.engine.masks import structure_count

from conftest import load_recipe, random_biases, text_batch
from encoder_routes import TOL, WORDS, logits, onnx_parity, vocabulary_and_int8_round_trip
from test_modernbert import bpe_tokenizer
from test_trainer import make_args, toy_dataset

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "smollm3", "olmo", "granite"]
HEADS = ["AutoModelForCausalLM", "AutoModelForSequenceClassification"]
HEAD_DIM = 8  # 32 / 4 query heads; 2 key/value heads, each read by 2 query heads


def tiny_decoder(model_type: str, head: str = "AutoModelForSequenceClassification", seed: int = 0, **overrides):
    config = dict(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=37, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type in ("qwen2", "qwen3"):  # biased q/k/v (Qwen2); the last two layers slide over 4 tokens
        config.update(use_sliding_window=True, sliding_window=4, max_window_layers=2)
    if model_type in ("mistral", "gemma2", "gemma3_text"):
        config.update(sliding_window=4)
    if model_type in ("qwen3", "gemma", "gemma2", "gemma3_text", "smollm3"):  # head_dim of their own (128, 256)
        config.update(head_dim=HEAD_DIM)
    if model_type == "smollm3":  # every other layer without rotary positions: no_rope_layers [1, 0, 1, 0]
        config.update(no_rope_layer_interval=2)
    config.update(overrides)
    config = transformers.AutoConfig.for_model(model_type, **config)
    if head == "AutoModelForSequenceClassification":
        config.num_labels = 3
    torch.manual_seed(seed)
    return random_biases(getattr(transformers, head).from_config(config).eval())


def set_decoder_masks(model, kept_layers=(1, 2)):
    """Random key/value-group and neuron masks (each group keeps one), layer 1's attention emptied, and every layer
    but ``kept_layers`` removed (the first and the last by default)."""
    masks = attach_masks(model, layers=True)
    generator = torch.Generator().manual_seed(0)
    for name, mask in masks.masks.items():
        values = (torch.rand(mask.shape, generator=generator) > 0.5).float()
        values[0] = 1
        if name == "layers":
            values = torch.tensor([float(i in kept_layers) for i in range(len(values))])
        masks.set(name, torch.zeros_like(values) if name == "layers.1.self_attn" else values)
    return masks


@pytest.mark.parametrize("model_type, head", [(t, h) for t in FAMILIES for h in HEADS
                                               if not (t == "granite" and h.endswith("Classification"))])
def test_key_value_groups_neurons_and_layers_are_removed_exactly(model_type, head, tmp_path):  # no Granite classifier
    model = tiny_decoder(model_type, head)
    per_layer = {name: getattr(model.config, name, None) for name in ("layer_types", "no_rope_layers")}
    batch = text_batch()
    dense = logits(model, batch)
    masks = set_decoder_masks(model)
    expected = logits(model, batch)
    assert (expected - dense).abs().max() > 1e-3, "the masks change the model"
    groups = int(masks.masks["layers.2.self_attn"].sum())
    neurons = int(masks.masks["layers.2.mlp"].sum())
    prompt = batch["input_ids"][:1, :5]
    tokens = model.generate(prompt, max_new_tokens=8, do_sample=False) if head.endswith("CausalLM") else None
    compact(model)
    assert len(model.model.layers) == model.config.num_hidden_layers == 2
    for name, entries in per_layer.items():  # each kept layer's entry (qwen2: full, full, sliding, sliding)
        assert getattr(model.config, name, None) == (None if entries is None else entries[1:3])
    if model_type in ("qwen2", "gemma2", "smollm3"):  # the lists tell the kept layers apart
        assert len(set(model.config.layer_types if model_type != "smollm3" else model.config.no_rope_layers)) == 2
    attention, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp  # the old layer 2
    assert (attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features,
            attention.o_proj.in_features) == (2 * groups * HEAD_DIM, groups * HEAD_DIM, groups * HEAD_DIM,
                                              2 * groups * HEAD_DIM)
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == neurons
    assert getattr(model.model.layers[0].self_attn, "is_empty_attention", False)  # the old layer 1
    assert (logits(model, batch) - expected).abs().max() <= TOL
    if tokens is not None:
        for use_cache in (True, False):
            assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=use_cache), tokens)
    save_pruned(model, tmp_path)
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path),
                   getattr(transformers, head).from_pretrained(tmp_path, trust_remote_code=True)):
        assert (logits(loaded.eval(), batch) - expected).abs().max() <= TOL
        if tokens is not None:
            assert torch.equal(loaded.generate(prompt, max_new_tokens=8, do_sample=False), tokens)


def test_a_structure_is_a_key_value_head_with_the_query_heads_that_read_it():
    """Scores sum the rows of both query heads that repeat a key/value head, that head's key and value rows and the
    output's columns of both query heads; slicing removes the same rows (read per query head, a group's second query
    head went with the wrong key/value head)."""
    model = tiny_decoder("qwen2")
    base = model.base_model
    attention = find_groups(model)[0]
    assert (attention.queries_per_key, structure_count(base, attention)) == (2, 2)
    magnitude = structure_sums(base, attention, lambda p: p.detach().abs())
    layer = base.layers[0].self_attn
    for group in range(2):
        queries = slice(group * 2 * HEAD_DIM, (group + 1) * 2 * HEAD_DIM)
        keys = slice(group * HEAD_DIM, (group + 1) * HEAD_DIM)
        expected = sum(float(t.detach().abs().sum()) for t in (
            layer.q_proj.weight[queries], layer.q_proj.bias[queries], layer.k_proj.weight[keys],
            layer.k_proj.bias[keys], layer.v_proj.weight[keys], layer.v_proj.bias[keys],
            layer.o_proj.weight[:, queries]))
        assert magnitude[group] == pytest.approx(expected, rel=1e-5)


def test_heads_of_a_model_without_grouped_queries_are_single_heads():
    model = tiny_decoder("llama", num_key_value_heads=4)
    attention = find_groups(model)[0]
    assert (attention.queries_per_key, structure_count(model.base_model, attention)) == (1, 4)
    batch = text_batch()
    masks = attach_masks(model)
    masks.set("layers.0.self_attn", torch.tensor([1.0, 0.0, 1.0, 0.0]))
    expected = logits(model, batch)
    compact(model)
    assert model.model.layers[0].self_attn.q_proj.out_features == 2 * HEAD_DIM
    assert (logits(model, batch) - expected).abs().max() <= TOL


def lm_dataset(n=192, seed=0):
    """Rows whose odd tokens repeat the even ones: something a tiny language model learns in a few steps."""
    import datasets

    ids = torch.randint(5, 99, (n, 12), generator=torch.Generator().manual_seed(seed))
    ids[:, 1::2] = ids[:, ::2]
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def test_a_trained_pruned_language_model_generates_the_same_from_its_folder(tmp_path):
    model = tiny_decoder("llama", "AutoModelForCausalLM", num_hidden_layers=3)
    data = lm_dataset()
    args = make_args(tmp_path, prune="heads,ffn,layers", pruning_metric="loss", pruning_tolerance=1.0, max_steps=40)
    trainer = AdaptivePruningTrainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(48)))
    trainer.train()
    pruned = trainer.model.eval()
    assert sum(structure_count(pruned.base_model, g) for g in find_groups(pruned)) < 3 * (2 + 37), "nothing removed"
    prompt = torch.tensor([[7, 7, 30, 30, 55]])
    expected = pruned.generate(prompt, max_new_tokens=6, do_sample=False)
    trainer.save_model()
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert torch.equal(stock.generate(prompt, max_new_tokens=6, do_sample=False), expected)


def test_the_card_says_a_heads_row_counts_key_value_groups(tmp_path):
    """A Qwen2 layer of 4 query heads read "heads 1 / 2" on the card, as if the layer had 2 heads."""
    data = lm_dataset()
    trainer = AdaptivePruningTrainer(model=tiny_decoder("qwen2", "AutoModelForCausalLM", num_hidden_layers=2),
                                     args=make_args(tmp_path, pruning_metric="loss", pruning_tolerance=1.0),
                                     train_dataset=data, eval_dataset=data.select(range(48)))
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "README.md").read_text()
    assert ("The attention is grouped-query: a *heads* row counts key/value groups, each one key/value head with the "
            "2 query heads that read it.") in card
    assert "| layers.0.self_attn | heads |" in card
    assert trainer.pruning_summary().queries_per_key == 2


def test_a_trained_pruned_classifier_serves_a_pipeline(tmp_path):
    tokenizer = bpe_tokenizer()
    model = tiny_decoder("qwen2", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_hidden_layers=3)
    data = toy_dataset().map(lambda row: {"input_ids": [i % len(tokenizer) for i in row["input_ids"]]})
    trainer = AdaptivePruningTrainer(model=model, args=make_args(tmp_path, prune="heads,ffn,layers"),
                                     train_dataset=data, eval_dataset=data.select(range(48)),
                                     processing_class=tokenizer)
    trainer.train()
    pruned = trainer.model.eval()
    assert pruned.config.num_hidden_layers < 3 or sum(
        structure_count(pruned.base_model, g) for g in find_groups(pruned)) < 3 * (2 + 37), "nothing removed"
    trainer.save_model()
    texts = ["a gripping film", "the plot is dull and boring", "great actor, awful story"]
    expected = logits(pruned, tokenizer(texts, padding=True, return_tensors="pt")).softmax(-1)
    classify = transformers.pipeline("text-classification", model=str(tmp_path), trust_remote_code=True, top_k=None)
    for text, scores, row in zip(texts, classify(texts), expected):
        by_label = {s["label"]: s["score"] for s in scores}
        assert [by_label[pruned.config.id2label[i]] for i in range(3)] == pytest.approx(row.tolist(), abs=1e-5), text


def test_vocabulary_int8_and_onnx_of_a_pruned_classifier(tmp_path):
    tokenizer = bpe_tokenizer()
    model = tiny_decoder("qwen2", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    set_decoder_masks(model)
    compact(model)
    vocabulary_and_int8_round_trip(tmp_path / "vocabulary", model, tokenizer)
    onnx_parity(tmp_path / "onnx", tiny_decoder("qwen2", pad_token_id=1))


def test_routes_that_do_not_serve_decoder_models_refuse_them(tmp_path):
    from hf_adaprune.deploy import export_onnx

    with pytest.raises(ValueError, match=r"ONNX export does not handle decoder-only language models "
                                         r"\(LlamaForCausalLM\)"):
        export_onnx(tiny_decoder("llama", "AutoModelForCausalLM"), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    with pytest.raises(ValueError, match=r"LlamaForSequenceClassification reads each row's last token before the "
                                         r"padding, and its config has no pad_token_id"):
        export_onnx(tiny_decoder("llama", pad_token_id=None), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    with pytest.raises(ValueError, match="post-training pruning supports the encoder families .*; got 'qwen2'"):
        post_training_prune(tiny_decoder("qwen2"), [text_batch()], target=0.3)


def test_the_text_classification_recipe_pads_a_decoder_with_its_end_of_text_token(tmp_path, caplog):
    """A Llama tokenizer has no pad token and a Llama config no pad id: the recipe refused the tokenizer, and a
    classifier without a pad id refuses every batch of two rows."""
    recipe = load_recipe("text_classification")
    rows = [f"{' '.join(WORDS[i % 7:i % 7 + 4])},{i % 2}" for i in range(40)]
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.csv").write_text("sentence,label\n" + "\n".join(rows) + "\n")
    tokenizer = bpe_tokenizer()
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    tokenizer.save_pretrained(tmp_path / "base")
    tiny_decoder("llama", "AutoModelForCausalLM", vocab_size=len(tokenizer), pad_token_id=None,
                 num_hidden_layers=2).save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    results = recipe.main([
        "--model_name_or_path", str(tmp_path / "base"), "--train_file", str(tmp_path / "train.csv"),
        "--validation_file", str(tmp_path / "dev.csv"), "--test_file", str(tmp_path / "test.csv"),
        "--output_dir", str(out), "--max_steps", "8", "--per_device_train_batch_size", "8",
        "--pruning_warmup_steps", "2", "--pruning_interval", "2", "--pruning_tolerance", "1.0",
        "--pruning_metric", "accuracy", "--max_seq_length", "16", "--pruning_seq_len", "16", "--save_strategy", "no",
        "--report_to", "none",
        "--latency_repeats", "2"])
    assert "has no pad token: batches are padded with its end-of-text token '[SEP]'" in caplog.text
    assert results["pruning"]["final_sparsity"] > 0
    model = AutoPrunedModel.from_pretrained(out).eval()
    assert model.config.pad_token_id == transformers.AutoTokenizer.from_pretrained(out).pad_token_id == \
        tokenizer.convert_tokens_to_ids("[SEP]")


def test_the_recipe_gives_a_decoder_classifier_the_pad_id_its_batches_use(caplog):
    """A config naming pad id 0 kept it while the batches were padded with the end-of-text token: the classifier,
    looking for 0, read a padded row's last position."""
    recipe = load_recipe("text_classification")
    tokenizer = bpe_tokenizer()
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    config = tiny_decoder("llama", pad_token_id=0).config
    recipe.pad_a_decoder(config, tokenizer, "tok")
    sep = tokenizer.convert_tokens_to_ids("[SEP]")
    assert config.pad_token_id == tokenizer.pad_token_id == sep != 0
    assert f"the model's config names pad id 0, its tokenizer pads with {sep}" in caplog.text
    bert = tiny_decoder("llama").config
    bert.model_type = "bert"  # an encoder classifier reads its first token: its config is left alone
    tokenizer.pad_token = None
    recipe.pad_a_decoder(bert, tokenizer, "tok")
    assert tokenizer.pad_token_id is None and bert.pad_token_id == 0


def test_the_latency_table_of_a_language_model_times_generate_after_its_prompt(tmp_path):
    """A causal LM was timed by one forward over the prompt, where its users wait on every generated token (which
    favours fewer layers over narrower ones: benchmarks/decoder_speed.py)."""
    model = tiny_decoder("llama", "AutoModelForCausalLM", num_hidden_layers=2)
    calls = []
    generate = model.generate
    model.generate = lambda **kwargs: calls.append(kwargs) or generate(**kwargs)
    data = lm_dataset(32)
    args = make_args(tmp_path, pruning_metric="loss", pruning_target_type="latency", pruning_latency_seq_len=5,
                     pruning_generation_tokens=3)
    AdaptivePruningTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    assert calls and all(call["input_ids"].shape == (1, 5) and call["min_new_tokens"] == call["max_new_tokens"] == 3
                         for call in calls)
    with pytest.raises(ValueError, match=r"the latency table generates --pruning_generation_tokens 10 after a prompt "
                                         r"of 60 tokens \(--pruning_latency_seq_len, default --pruning_seq_len\): 70 "
                                         r"positions, and the model reads at most 64"):
        AdaptivePruningTrainer(model=model, train_dataset=data, eval_dataset=data, args=make_args(
            tmp_path, pruning_metric="loss", pruning_target_type="latency", pruning_latency_seq_len=60,
            pruning_generation_tokens=10))


def test_messages_about_heads_name_key_value_groups(tmp_path):
    """With grouped-query attention a structure is a key/value group: a floor of 2 "heads" on a layer of 4 query heads
    in 2 groups keeps both groups, and the refusal said "2 of the heads" as if they were query heads."""
    model = tiny_decoder("llama", "AutoModelForCausalLM", num_hidden_layers=2)
    data = lm_dataset(32)
    for settings, message in (
            (dict(min_heads_per_layer=2), "nothing to prune: keeping at least 2 of the heads (key/value groups here: "
                                          "a key/value head with the 2 query heads that read it) in each layer"),
            (dict(pruning_multiple_of=32), "it has 2 key/value groups (a key/value head of 8 dimensions with the 2 "
                                           "query heads that read it), fewer than the 4 a multiple of 32 needs")):
        with pytest.raises(ValueError, match=re.escape(message)):
            AdaptivePruningTrainer(model=model, train_dataset=data, eval_dataset=data, args=make_args(
                tmp_path, prune="heads", pruning_metric="loss", **settings))


def test_the_sentence_embeddings_recipe_pads_a_decoder_embedder_with_its_end_of_text_token(tmp_path, caplog):
    """A Llama sentence-transformer (last-token pooling) whose tokenizer has no pad token stopped at the dense
    evaluation with transformers' "Asking to pad but the tokenizer does not have a padding token"."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from hf_adaprune.sentence_transformers import load_pruned_sentence_transformer
    from test_sentence_transformers import write_stsb

    tokenizer = bpe_tokenizer()
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    base = tiny_decoder("llama", "AutoModel", vocab_size=len(tokenizer), pad_token_id=None, num_hidden_layers=2)
    base.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    module = Transformer(str(tmp_path / "hf"), max_seq_length=32)
    SentenceTransformer(modules=[module, Pooling(module.get_embedding_dimension(), "lasttoken"), Normalize()],
                        device="cpu").save(str(tmp_path / "st"))
    stsb = write_stsb(tmp_path / "stsb")
    results = load_recipe("sentence_embeddings").main([
        "--model_name_or_path", str(tmp_path / "st"), "--stsb_dir", str(stsb), "--output_dir", str(tmp_path / "out"),
        "--objective", "cosent", "--max_steps", "6", "--per_device_train_batch_size", "8", "--pruning_warmup_steps",
        "2", "--pruning_interval", "2", "--pruning_tolerance", "1.0", "--pruning_seq_len", "32", "--max_seq_length",
        "32", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
        "--throughput_batch", "4", "--throughput_repeats", "1"])
    assert "its tokenizer has no pad token: batches are padded with its end-of-text token '[SEP]'" in caplog.text
    assert results["pruned"]["layer_flops"] < results["dense"]["layer_flops"]
    reloaded = load_pruned_sentence_transformer(tmp_path / "out", device="cpu")
    assert reloaded.tokenizer.pad_token == "[SEP]"
    assert reloaded.encode(["a gripping film", "the plot is dull and boring"]).shape == (2, 32)
