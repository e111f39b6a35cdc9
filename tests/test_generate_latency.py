"""benchmarks/generate_latency.py: dense and pruned generate exactly the same number of tokens."""

from __future__ import annotations


import torch
from conftest import load_script
from transformers import MarianConfig, MarianMTModel

from hf_adaprune import attach_masks, compact, save_pruned

SENTENCES = ["a dog runs on the grass", "two men play music", "a girl in a red coat", "people walk in the snow",
             "a man rides a bike down a hill", "children play football"]


def tiny_marian_config():
    """A BPE tokenizer trained on SENTENCES and a one-layer Marian config of its vocabulary."""
    train_tokenizer = load_script("examples", "train_prune_marian_multi30k").train_tokenizer
    tokenizer = train_tokenizer(SENTENCES * 4, vocab_size=120, max_length=32)
    config = MarianConfig(vocab_size=len(tokenizer), decoder_vocab_size=len(tokenizer), d_model=16, encoder_layers=1,
                          decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return tokenizer, config


def test_dense_and_pruned_generate_the_same_length(tmp_path):
    tokenizer, config = tiny_marian_config()
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    model.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    masks = attach_masks(model)
    for name, mask in masks.masks.items():  # the first half of every group's heads and neurons goes
        keep = torch.ones_like(mask)
        keep[: mask.numel() // 2] = 0
        masks.set(name, keep)
    compact(model)
    save_pruned(model, tmp_path / "pruned", tokenizer=tokenizer)
    source = tmp_path / "source.txt"
    source.write_text("\n".join(SENTENCES) + "\n")

    results = load_script("benchmarks", "generate_latency").main([
        "--dense", str(tmp_path / "dense"), "--pruned", str(tmp_path / "pruned"), "--source_file", str(source),
        "--batch_sizes", "1", "4", "--new_tokens", "7", "--repeats", "1", "1", "--output", str(tmp_path / "lat.json")])
    for batch in ("1", "4"):
        lengths = results["batches"][batch]["output_length"]
        assert lengths["dense"] == lengths["pruned"] == 8  # decoder start token + 7 new ones
        assert results["batches"][batch]["batch_size"] == int(batch)
    assert (tmp_path / "lat.json").exists()
    # several pruned folders in one round-robin, named by --labels
    results = load_script("benchmarks", "generate_latency").main([
        "--dense", str(tmp_path / "dense"), "--pruned", str(tmp_path / "pruned"), str(tmp_path / "pruned"),
        "--labels", "widths", "again", "--source_file", str(source), "--batch_sizes", "1", "--new_tokens", "5",
        "--repeats", "1"])
    assert results["batches"]["1"]["output_length"] == {"dense": 6, "widths": 6, "again": 6}
    assert list(results["batches"]["1"]["results"]) == ["dense", "widths", "again"]


def test_the_translation_recipe_times_a_model_that_stops_early_on_the_reference_length(monkeypatch):
    """A pruned model that writes end-of-sequence at once was timed on its 2 tokens against the dense model's 32
    (an 8.96x "speed-up"); now both are timed writing the dense model's length."""
    recipe = load_script("recipes", "translation")
    tokenizer, config = tiny_marian_config()
    torch.manual_seed(0)
    dense = MarianMTModel(config).eval()
    with torch.no_grad():
        dense.final_logits_bias[0, tokenizer.eos_token_id] = -1e4  # never ends by itself: writes max_length
    stopper = MarianMTModel(config).eval()
    with torch.no_grad():
        stopper.final_logits_bias[0, tokenizer.eos_token_id] = 1e4  # ends at once
    timed = []
    real = recipe.compare_latency

    def spy(modules, inputs, **kwargs):
        with torch.inference_mode():
            timed.append({name: int(m(**inputs).shape[-1]) for name, m in modules.items()})
        return real(modules, inputs, **kwargs)

    monkeypatch.setattr(recipe, "compare_latency", spy)
    data_args = recipe.DataTrainingArguments(max_source_length=32)
    result = recipe.measure_generate_latency(dense, stopper, tokenizer, SENTENCES[:1], data_args,
                                             {"max_length": 12, "num_beams": 1}, repeats=1, warmup=0)
    assert result["output_length"] == {"dense": 12, "pruned": 2}
    assert result["timed_length"] == 12 and timed == [{"dense": 12, "pruned": 12}]
