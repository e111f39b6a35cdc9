"""WavLM: per-head slices of the shared gated relative position bias, exact compaction, Hub format.

Layer 0 computes the relative position bias (``rel_attn_embed``, one column per
head) and hands it to layer 1; every layer gates it per head
(``gru_rel_pos_const``). Mask patterns prune all of layer 0's heads (it must
still hand on the full bias) and keep heads of layer 1 that layer 0 lost.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel, TaylorImportance, attach_masks, compact, find_groups, save_pruned
from hf_adaprune.engine.masks import structure_count
from hf_adaprune.families.wavlm import WavLMSharedBias

from conftest import one_thread_env

TOL = 1e-5
HEADS = {"cls": transformers.WavLMForSequenceClassification, "ctc": transformers.WavLMForCTC}


def tiny_wavlm_config(**overrides):
    cfg = dict(vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
               conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), conv_bias=True,
               num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, num_buckets=16, max_bucket_distance=32,
               feat_extract_norm="layer", hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
               feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
               classifier_proj_size=8, num_labels=3)
    cfg.update(overrides)
    return transformers.WavLMConfig(**cfg)


def tiny_wavlm(head: str = "ctc", seed: int = 0, **overrides):
    """Random weights well away from the default init, so that every head and the bias matter."""
    torch.manual_seed(seed)
    model = HEADS[head](tiny_wavlm_config(**overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "conv" in name:
                continue
            if name.endswith("gru_rel_pos_const"):
                param.copy_(1.0 + torch.randn(param.shape, generator=generator) * 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def audio_batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    input_values = torch.randn(3, 800, generator=generator)
    attention_mask = torch.ones(3, 800, dtype=torch.long)
    attention_mask[1, 500:] = 0  # padding
    attention_mask[2, 300:] = 0
    input_values[attention_mask == 0] = 0
    return {"input_values": input_values, "attention_mask": attention_mask}


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def set_masks(model, pattern: str, seed: int = 0):
    masks = attach_masks(model)
    generator = torch.Generator().manual_seed(seed)
    if pattern == "A":  # layer 0 (the bias source) loses every head, layer 1 keeps two it lost
        masks.set("encoder.layers.0.attention", torch.zeros(4))
        masks.set("encoder.layers.1.attention", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        masks.set("encoder.layers.1.ffn", torch.zeros(37))
    else:  # layer 0 partial, layer 1 whole
        masks.set("encoder.layers.0.attention", torch.tensor([1.0, 0.0, 1.0, 0.0]))
    masks.set("encoder.layers.0.ffn", (torch.rand(37, generator=generator) > 0.5).float())
    return masks


def test_groups():
    model = tiny_wavlm()
    groups = find_groups(model)
    assert [g.name for g in groups] == ["encoder.layers.0.attention", "encoder.layers.0.ffn",
                                        "encoder.layers.1.attention", "encoder.layers.1.ffn"]
    assert [structure_count(model.base_model, g) for g in groups] == [4, 37, 4, 37]
    assert groups[0].per_head_params == (("encoder.layers.0.attention.gru_rel_pos_const", 1),)


@pytest.mark.parametrize("stable", [False, True])
def test_attention_forward_for_gates_equals_stock(stable):
    model = tiny_wavlm(do_stable_layer_norm=stable)
    batch = audio_batch()
    dense = logits(model, batch)
    attach_masks(model)  # WavLM attention gets a forward that calls out_proj (where the gates sit)
    assert isinstance(model.wavlm.encoder.layers[0].attention, WavLMSharedBias)
    assert (logits(model, batch) - dense).abs().max() <= TOL


@pytest.mark.parametrize(
    "head, pattern, stable", [("ctc", "A", False), ("cls", "B", False), ("ctc", "B", True), ("cls", "A", True)]
)
def test_compacted_equals_masked(head, pattern, stable):
    model = tiny_wavlm(head, do_stable_layer_norm=stable)
    batch = audio_batch()
    dense = logits(model, batch)
    set_masks(model, pattern)
    masked = logits(model, batch)
    assert (masked - dense).abs().max() > 1e-3, "masks should change the output"
    compact(model)
    compacted = logits(model, batch)
    assert (compacted - masked).abs().max() <= TOL


def test_compacted_shapes_and_record():
    model = tiny_wavlm()
    set_masks(model, "A")
    record = compact(model)
    layer0 = model.wavlm.encoder.layers[0].attention
    layer1 = model.wavlm.encoder.layers[1].attention
    assert layer0.is_empty_attention and layer0.q_proj.out_features == 0
    assert layer0.rel_attn_embed.weight.shape == (16, 4)  # shared with layer 1: all heads stay
    assert layer1.adaprune_kept_heads == [1, 3] and layer1.num_heads == 2
    assert layer1.gru_rel_pos_const.shape == (1, 2, 1, 1)
    assert record["layout"]["parameters"]["encoder.layers.1.attention.gru_rel_pos_const"] == [1, 2, 1, 1]
    assert record["layout"]["shared_bias"]["encoder.layers.0.attention"]["kept_heads"] == []
    assert [g.name for g in find_groups(model)] == [  # no head left to prune in layer 0
        "encoder.layers.0.ffn", "encoder.layers.1.attention", "encoder.layers.1.ffn"]


def test_taylor_covers_the_per_head_gate_constant():
    model = tiny_wavlm("cls").train()
    groups = find_groups(model)
    model.zero_grad()
    model(**audio_batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
    importance = TaylorImportance()
    assert importance.update(model, groups)
    base = model.base_model

    def head_scores(group):
        d = group.head_dim
        attn = base.get_submodule(group.core)
        scores = []
        for h in range(4):
            rows = slice(h * d, (h + 1) * d)
            total = 0.0
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
                total += float((lin.weight[rows] * lin.weight.grad[rows]).double().sum())
                total += float((lin.bias[rows] * lin.bias.grad[rows]).double().sum())
            total += float((attn.out_proj.weight[:, rows] * attn.out_proj.weight.grad[:, rows]).double().sum())
            const = attn.gru_rel_pos_const
            total += float(const[0, h, 0, 0] * const.grad[0, h, 0, 0])
            scores.append(abs(total))
        return torch.tensor(scores, dtype=torch.float64)

    def neuron_scores(group):
        inner, outer = base.get_submodule(group.inputs[0]), base.get_submodule(group.output)
        total = (inner.weight * inner.weight.grad).double().sum(1) + (inner.bias * inner.bias.grad).double()
        total += (outer.weight * outer.weight.grad).double().sum(0)
        return total.abs()

    with torch.no_grad():
        expected = {g.name: head_scores(g) if g.kind == "heads" else neuron_scores(g) for g in groups}
    total = sum(float(v.sum()) for v in expected.values())
    for group in groups:
        torch.testing.assert_close(importance.scores(model, groups)[group.name].double(), expected[group.name] / total,
                                   rtol=1e-4, atol=1e-9)
    assert model.wavlm.encoder.layers[1].attention.gru_rel_pos_const.grad.abs().sum() > 0


@pytest.mark.parametrize("head", ["ctc", "cls"])
def test_round_trip_with_hf_adaprune(head, tmp_path):
    model = tiny_wavlm(head)
    batch = audio_batch()
    set_masks(model, "A")
    masked = logits(model, batch)
    save_pruned(model, tmp_path)
    loaded = AutoPrunedModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.wavlm.encoder.layers[1].attention, WavLMSharedBias)
    assert (logits(loaded, batch) - masked).abs().max() <= TOL
    assert (logits(loaded, batch) - logits(model, batch)).abs().max() <= 1e-6


def test_stock_transformers_loads_without_hf_adaprune(tmp_path):
    batch = audio_batch()
    expected = {}
    for head, pattern in (("ctc", "A"), ("cls", "B")):
        model = tiny_wavlm(head)
        set_masks(model, pattern)
        save_pruned(model, tmp_path / head)
        expected[head] = logits(model, batch)
    torch.save({"batch": batch, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_adaprune"] = None  # make the package unimportable
        import torch
        from transformers import AutoModelForAudioClassification, AutoModelForCTC
        io = torch.load({str(tmp_path / 'io.pt')!r})
        for head, auto in (("ctc", AutoModelForCTC), ("cls", AutoModelForAudioClassification)):
            model = auto.from_pretrained({str(tmp_path)!r} + "/" + head, trust_remote_code=True).eval()
            assert "hf_adaprune" not in type(model).__module__
            with torch.no_grad():
                diff = (model(**io["batch"]).logits - io["expected"][head]).abs().max().item()
            print(head, "maxdiff", diff)
            assert diff <= 1e-6, (head, diff)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, cwd=tmp_path, env=one_thread_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("maxdiff") == 2
