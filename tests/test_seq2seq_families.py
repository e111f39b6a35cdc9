"""Seq2seq families (Marian, BART, mBART, M2M100, T5, mT5): groups, exact compaction, generate, Hub format.

Mask patterns always include an encoder and a decoder self-attention with no head
left in layer 0 (for T5 the block that computes the shared position bias; for
the decoder the layer whose KV cache sets the cached length), cross-attentions
keeping different heads in each layer, whole and empty groups.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from test_importance import brute_force_taylor

from hf_adaprune import AutoPrunedModel, TaylorImportance, attach_masks, compact, find_groups, get_masks, save_pruned
from hf_adaprune.families import filter_groups
from hf_adaprune.engine.masks import PruningMasks, structure_count
from hf_adaprune.families.t5 import T5SharedBias
from hf_adaprune.layout import FORMAT_VERSION
from hf_adaprune.layout import PrunedModelMixin

from conftest import one_thread_env

FAMILIES = ["marian", "bart", "mbart", "m2m_100", "t5", "mt5"]
T5_LIKE = {"t5", "mt5"}
TOL = 1e-5
VOCAB = 99


def tiny_seq2seq_config(model_type: str, **overrides):
    if model_type in T5_LIKE:
        cfg = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                   feed_forward_proj="gated-gelu" if model_type == "mt5" else "relu")
    else:
        cfg = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
                   pad_token_id=1, eos_token_id=2, bos_token_id=0, decoder_start_token_id=2, dropout=0.0,
                   attention_dropout=0.0, activation_dropout=0.0)
    cfg.update(overrides)
    return transformers.AutoConfig.for_model(model_type, **cfg)


def tiny_seq2seq(model_type: str, seed: int = 0, **overrides):
    """A tiny model with weights large enough that greedy decoding does not repeat one token."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForSeq2SeqLM.from_config(tiny_seq2seq_config(model_type, **overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and "embed_positions" not in name:
                # T5 does not scale q.k: small q/k keep float32 rounding from being amplified past 1e-5
                std = 0.1 if model_type in T5_LIKE and name.rpartition(".")[2] in ("q", "k") else 0.25
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()


def seq2seq_batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 1
    decoder_input_ids = torch.randint(5, VOCAB, (3, 7), generator=generator)
    decoder_attention_mask = torch.ones_like(decoder_input_ids)
    decoder_attention_mask[2, 5:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "decoder_input_ids": decoder_input_ids, "decoder_attention_mask": decoder_attention_mask}


def _names(model):
    """Group names by role and layer index: ('encoder_self', 0) -> name."""
    table = {}
    for group in find_groups(model):
        index = int(group.name.split(".")[2])
        table[(group.role, index)] = group.name
    return table


def _random(masks, name, generator, keep=None):
    n = masks.masks[name].numel()
    if keep is not None:
        mask = torch.zeros(n)
        mask[keep] = 1
    else:
        mask = (torch.rand(n, generator=generator) > 0.5).float()
    masks.set(name, mask)


def pattern_masks(model, pattern: str, seed: int = 0):
    """Pattern "A": layer-0 self-attentions empty, layer-1 partial, cross layers keep disjoint heads.
    Pattern "B": layer-0 partial, decoder layer-1 self and layer-0 cross empty, encoder layer 1 whole."""
    masks = attach_masks(model)
    names = _names(model)
    g = torch.Generator().manual_seed(seed)
    if pattern == "A":
        _random(masks, names["encoder_self", 0], g, keep=[])
        _random(masks, names["encoder_self", 1], g, keep=[1, 3])
        _random(masks, names["decoder_self", 0], g, keep=[])
        _random(masks, names["decoder_self", 1], g, keep=[0, 2])
        _random(masks, names["cross", 0], g, keep=[1])
        _random(masks, names["cross", 1], g, keep=[0, 2, 3])
        _random(masks, names["encoder", 1], g)
        _random(masks, names["decoder", 0], g, keep=[])
        _random(masks, names["decoder", 1], g)
    else:
        _random(masks, names["encoder_self", 0], g, keep=[0, 3])
        _random(masks, names["decoder_self", 0], g, keep=[2])
        _random(masks, names["decoder_self", 1], g, keep=[])
        _random(masks, names["cross", 0], g, keep=[])
        _random(masks, names["cross", 1], g, keep=[1, 2])
        _random(masks, names["encoder", 0], g, keep=[])
        _random(masks, names["encoder", 1], g)
        _random(masks, names["decoder", 1], g)
    return masks


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


GREEDY = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)


def greedy(model, batch, use_cache=True):
    return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          use_cache=use_cache, **GREEDY)


def greedy_scores(model, batch, use_cache=True, **cache):
    """Tokens and the scores of every step (a wrong cached position shows even where the argmax survives)."""
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=use_cache,
                         output_scores=True, return_dict_in_generate=True, **cache, **GREEDY)
    return out.sequences, torch.stack(out.scores)


# -- groups ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_roles_and_names(family):
    model = tiny_seq2seq(family)
    groups = find_groups(model)
    base = model.base_model
    roles = [g.role for g in groups]
    assert roles == ["encoder_self", "encoder"] * 2 + ["decoder_self", "cross", "decoder"] * 2
    for group in groups:
        base.get_submodule(group.name.rpartition(".")[0])  # report rows are real layer modules
        assert structure_count(base, group) == (4 if group.kind == "heads" else 37)
    assert len(filter_groups(groups, roles="cross")) == 2
    assert [g.role for g in filter_groups(groups, roles=("decoder_self", "decoder"))] == ["decoder_self", "decoder"] * 2
    assert len(filter_groups(groups, kind="heads")) == 6
    with pytest.raises(ValueError, match="unknown group roles"):
        filter_groups(groups, roles="decoder_cross")
    ffn = filter_groups(groups, roles="decoder")[0]
    expected = ("wi_0", "wi_1") if family == "mt5" else ("wi",) if family == "t5" else ("fc1",)
    assert tuple(p.rpartition(".")[2] for p in ffn.inputs) == expected


def test_t5_v1_1_gated_ffn_and_encoder_only():
    model = tiny_seq2seq("t5", feed_forward_proj="gated-gelu")
    ffn = filter_groups(find_groups(model), roles="encoder")[0]
    assert ffn.inputs == ("encoder.block.0.layer.1.DenseReluDense.wi_0", "encoder.block.0.layer.1.DenseReluDense.wi_1")
    encoder = transformers.T5EncoderModel(model.config).eval()
    assert {g.role for g in find_groups(encoder)} == {"encoder_self", "encoder"}


# -- exactness ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["A", "B"])
@pytest.mark.parametrize("family", FAMILIES)
def test_compacted_equals_masked_and_generates_the_same(family, pattern):
    model = tiny_seq2seq(family)
    batch = seq2seq_batch()
    dense = logits(model, batch)
    pattern_masks(model, pattern)
    masked = logits(model, batch)
    assert (masked - dense).abs().max() > 1e-3, "masks should change the output"
    tokens, scores = greedy_scores(model, batch)
    assert torch.equal(greedy(model, batch, use_cache=False), tokens)
    compact(model)
    assert get_masks(model) is None
    compacted = logits(model, batch)
    assert compacted.shape == masked.shape
    assert (compacted - masked).abs().max() <= TOL
    # a static cache counts its tokens in a tensor it updates in place (T5: an emptied first decoder attention
    # computes the relative bias from the count before the update)
    for cache in ({"use_cache": True}, {"use_cache": False}, {"cache_implementation": "static"}):
        got_tokens, got_scores = greedy_scores(model, batch, **cache)
        assert torch.equal(got_tokens, tokens), cache
        torch.testing.assert_close(got_scores, scores, rtol=0, atol=TOL)  # -inf where tokens are suppressed
    if pattern == "B":
        assert len(set(tokens[:, 1:].flatten().tolist())) > 1, "greedy decoding should not be degenerate"
    beams = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=3,
                           max_new_tokens=5, min_new_tokens=5)
    assert beams.shape == (3, 6)


def test_compacted_shapes_and_record_t5():
    model = tiny_seq2seq("t5")
    pattern_masks(model, "A")
    record = compact(model)
    base = model.base_model
    layer0 = base.encoder.block[0].layer[0].SelfAttention
    layer1 = base.encoder.block[1].layer[0].SelfAttention
    assert isinstance(layer0, T5SharedBias) and layer0.is_empty_attention
    assert layer0.q.weight.shape == (0, 32) and layer0.o.weight.shape == (32, 0)
    assert layer0.relative_attention_bias.weight.shape == (8, 4)  # the shared bias keeps every head
    assert layer1.adaprune_kept_heads == [1, 3] and layer1.n_heads == 2 and layer1.q.weight.shape == (16, 32)
    assert record["layout"]["shared_bias"]["encoder.block.1.layer.0.SelfAttention"] == {
        "kind": "t5", "kept_heads": [1, 3], "num_heads": 4}
    assert record["version"] == FORMAT_VERSION and "version" not in record["layout"]  # one version number
    assert record["groups"]["decoder.block.0.cross_attn"]["kept"] == [1]
    assert "encoder.block.0.self_attn" not in {g.name for g in find_groups(model)}  # no head left to prune


@pytest.mark.parametrize("pattern, attention, cross", [("A", "self_attn", False), ("B", "encoder_attn", True)])
def test_empty_decoder_attention_fills_its_cache_entries_bart(pattern, attention, cross):
    from hf_adaprune.layout import EmptyAttention

    model = tiny_seq2seq("bart")
    batch = seq2seq_batch()
    pattern_masks(model, pattern)
    record = compact(model)
    layer = 1 if pattern == "B" and not cross else 0
    empty = getattr(model.base_model.decoder.layers[layer], attention)
    assert isinstance(empty, EmptyAttention) and empty.cache_layer == layer and empty.cross_attention == cross
    spec = record["layout"]["modules"][f"decoder.layers.{layer}.{attention}"]
    assert spec["cache_layer"] == layer and spec["cross_attention"] == cross
    assert getattr(model.base_model.encoder.layers[0].self_attn, "cache_layer", None) is None
    with torch.no_grad():
        cache = model(**batch, use_cache=True).cache
    entries = (cache.cross_attention_cache if cross else cache.self_attention_cache).layers[layer]
    length = batch["input_ids" if cross else "decoder_input_ids"].shape[1]
    assert entries.keys.shape == (3, 1, length, 1)  # one placeholder entry per token


def test_second_compaction_composes_kept_heads_t5():
    model = tiny_seq2seq("mt5")
    batch = seq2seq_batch()
    masks = attach_masks(model)
    masks.set("encoder.block.1.self_attn", torch.tensor([1.0, 0.0, 1.0, 1.0]))
    masks.set("decoder.block.0.self_attn", torch.tensor([0.0, 1.0, 1.0, 0.0]))
    compact(model)
    masks = attach_masks(model)
    masks.set("encoder.block.1.self_attn", torch.tensor([0.0, 1.0, 1.0]))
    masks.set("decoder.block.0.self_attn", torch.tensor([0.0, 0.0]))
    masked = logits(model, batch)
    record = compact(model)
    assert record["groups"]["encoder.block.1.self_attn"]["kept"] == [2, 3]
    assert model.base_model.encoder.block[1].layer[0].SelfAttention.adaprune_kept_heads == [2, 3]
    assert record["layout"]["shared_bias"]["decoder.block.0.layer.0.SelfAttention"]["kept_heads"] == []
    assert (logits(model, batch) - masked).abs().max() <= TOL


def test_roles_are_selectable_on_their_own():
    model = tiny_seq2seq("marian")
    batch = seq2seq_batch()
    cross = filter_groups(find_groups(model), roles="cross")
    masks = PruningMasks(model, cross)  # gates on the cross-attentions only
    model.__dict__["_adaprune_masks"] = masks
    assert set(masks.masks) == {"decoder.layers.0.encoder_attn", "decoder.layers.1.encoder_attn"}
    masks.set("decoder.layers.0.encoder_attn", torch.tensor([1.0, 0.0, 0.0, 1.0]))
    masked = logits(model, batch)
    compact(model)
    assert (logits(model, batch) - masked).abs().max() <= TOL
    base = model.base_model
    assert base.decoder.layers[0].encoder_attn.q_proj.out_features == 16
    assert base.decoder.layers[0].self_attn.q_proj.out_features == 32
    assert base.encoder.layers[0].fc1.out_features == 37


# -- importance --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bart", "mt5"])
def test_taylor_equals_brute_force(family):
    model = tiny_seq2seq(family).train()
    groups = find_groups(model)
    batch = seq2seq_batch()
    labels = batch["decoder_input_ids"].clone()
    model.zero_grad()
    model(**batch, labels=labels).loss.backward()
    importance = TaylorImportance()
    assert importance.update(model, groups)
    scores = importance.scores(model, groups)
    expected = {group.name: brute_force_taylor(model, group) for group in groups}
    total = sum(float(v.sum()) for v in expected.values())  # each step's scores are normalised to sum to 1
    for group in groups:
        torch.testing.assert_close(scores[group.name].double(), expected[group.name] / total, rtol=1e-4, atol=1e-9,
                                   msg=group.name)


# -- Hub format --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["marian", "t5"])
def test_round_trip_with_hf_adaprune(family, tmp_path):
    model = tiny_seq2seq(family)
    batch = seq2seq_batch()
    pattern_masks(model, "A")
    masked = logits(model, batch)
    tokens = greedy(model, batch)
    save_pruned(model, tmp_path)
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == type(model).__name__ and isinstance(loaded, PrunedModelMixin)
    got = logits(loaded, batch)
    assert (got - masked).abs().max() <= TOL
    assert (got - logits(model, batch)).abs().max() <= 1e-6
    assert torch.equal(greedy(loaded, batch), tokens)


def test_stock_transformers_loads_without_hf_adaprune(tmp_path):
    batch = seq2seq_batch()
    expected = {}
    for family, pattern in (("t5", "A"), ("mt5", "B"), ("bart", "A")):
        model = tiny_seq2seq(family)
        pattern_masks(model, pattern)
        save_pruned(model, tmp_path / family)
        expected[family] = {"logits": logits(model, batch), "tokens": greedy(model, batch)}
    torch.save({"batch": batch, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_adaprune"] = None  # make the package unimportable
        import torch
        from transformers import AutoModelForSeq2SeqLM
        io = torch.load({str(tmp_path / 'io.pt')!r})
        batch = io["batch"]
        for family, want in io["expected"].items():
            model = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path)!r} + "/" + family, trust_remote_code=True)
            model.eval()
            assert "hf_adaprune" not in type(model).__module__
            with torch.no_grad():
                diff = (model(**batch).logits - want["logits"]).abs().max().item()
            tokens = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    max_new_tokens=6, min_new_tokens=6, do_sample=False)
            print(family, "maxdiff", diff, torch.equal(tokens, want["tokens"]))
            assert diff <= {TOL}, (family, diff)  # float32 sums: 2e-6 between one and two threads
            assert torch.equal(tokens, want["tokens"]), family
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, cwd=tmp_path, env=one_thread_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("maxdiff") == 3


def test_flop_profile_rows_are_blocks():
    from hf_adaprune import compare_profiles, model_profile

    model = tiny_seq2seq("t5")
    before = model_profile(model, seq_len=8)
    pattern_masks(model, "A")
    compact(model)
    after = model_profile(model, seq_len=8)
    assert [r["layer"] for r in before["layers"]] == [
        "decoder.block.0", "decoder.block.1", "encoder.block.0", "encoder.block.1"]
    report = compare_profiles(before, after)
    assert report["flops_removed"] > 0 and report["params_removed"] > 0


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_sequence_classifiers_of_seq2seq_families_are_profiled_and_pruned_in_training(model_type, tmp_path):
    """Their heads pool the <eos> of every row: the FLOP probe's dummy ids carry one (they had none and failed)."""
    import datasets

    from hf_adaprune import AdaptivePruningTrainer, PruningArguments, model_profile

    torch.manual_seed(0)
    config = tiny_seq2seq_config(model_type, num_labels=2)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    assert model_profile(model, seq_len=8)["flops"] > 0
    eos = config.eos_token_id
    rows = [{"input_ids": [5 + i % 7, 9, 11 + i % 3, eos], "attention_mask": [1] * 4, "labels": i % 2}
            for i in range(16)]
    data = datasets.Dataset.from_list(rows)
    args = PruningArguments(str(tmp_path), prune="heads,ffn", max_steps=6, per_device_train_batch_size=8,
                            pruning_warmup_steps=2, pruning_interval=2, pruning_initial_step=0.5,
                            pruning_tolerance=100.0, pruning_seq_len=8, pruning_metric="accuracy",
                            report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = AdaptivePruningTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["final_sparsity"] > 0 and report["comparison"]["layer_flops_removed"] > 0


@pytest.mark.parametrize("model_type", ["marian", "bart", "mbart", "m2m_100"])
@pytest.mark.parametrize("emptied", ["encoder.layers.1.self_attn", "decoder.layers.0.encoder_attn"])
def test_a_compacted_model_with_an_emptied_attention_can_be_listed_and_pruned_again(model_type, emptied):
    from hf_adaprune import model_profile
    from hf_adaprune.surgery import kept_structure

    model = tiny_seq2seq(model_type)
    attach_masks(model).set(emptied, torch.zeros(4))
    compact(model)
    assert emptied not in {g.name for g in find_groups(model)}  # nothing left to prune there
    assert kept_structure(model)[emptied] == {"kind": "heads", "original": 4, "kept": 0}
    model_profile(model, seq_len=8)
    masks = attach_masks(model)  # a second round of pruning on the compacted model
    other = "decoder.layers.1.self_attn"
    masks.set(other, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 2]]), "decoder_input_ids": torch.tensor([[0, 8, 9]])}
    with torch.no_grad():
        masked = model(**inputs).logits
        compact(model)
        assert torch.allclose(model(**inputs).logits, masked, atol=1e-5)
