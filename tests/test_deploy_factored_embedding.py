"""``factor_embeddings``: common tokens keep their rows, rare ones share a low-rank basis; saved folders rebuild it."""

from __future__ import annotations

import pytest
import torch
import transformers

from hf_adaprune import AutoPrunedModel, compact, save_pruned
from hf_adaprune.deploy import factor_embeddings, prune_vocabulary, quantize_int8
from hf_adaprune.layout import FactoredEmbedding

from conftest import tiny_model
from test_surgery import random_masks

TOL = 1e-5
COMMON, RARE = list(range(5, 40)), list(range(60, 99))


def corpus() -> list[list[int]]:
    """Rows of ids: 5-39 in every row, 40-59 in a few, 60-98 in none."""
    generator = torch.Generator().manual_seed(0)
    rows = [[2, *torch.randint(5, 40, (12,), generator=generator).tolist(), 3] for _ in range(30)]
    return rows + [[2, *range(40, 60), 3]] + [list(range(5, 40))]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


def factored_bert(full_rows=45, rank=8, model_type="bert"):
    """A compacted tiny encoder (BERT unless named) whose table is factored."""
    model = tiny_model(model_type)
    random_masks(model)
    compact(model)
    return model, factor_embeddings(model, tokenized=corpus(), full_rows=full_rows, rank=rank)


def test_common_tokens_keep_their_rows_and_outputs_and_rare_ones_their_best_rank_r_rows():
    model = tiny_model("bert", hidden_dropout_prob=0.0)
    random_masks(model)
    compact(model)
    table = model.get_input_embeddings().weight.detach().clone()
    before = logits(model, [[2, *COMMON[:10], 3], [2, *COMMON[10:20], 3]])
    summary = factor_embeddings(model, tokenized=corpus(), full_rows=45, rank=8)
    factored = model.get_input_embeddings()
    assert isinstance(factored, FactoredEmbedding)
    assert summary == {"full_rows": 45, "rank": 8, "parameters_before": 99 * 32,
                       "parameters_after": 45 * 32 + (99 - 45) * 8 + 8 * 32}
    full = factored.slot < 45
    assert full[COMMON].all() and full[list(range(40, 45))].all() and not full[RARE].any()
    assert torch.equal(factored.weight[full], table[full])  # common rows exactly
    rare = table[~full]
    u, s, vh = torch.linalg.svd(rare, full_matrices=False)
    assert (factored.weight[~full] - (u[:, :8] * s[:8]) @ vh[:8]).abs().max() <= TOL
    assert (logits(model, [[2, *COMMON[:10], 3], [2, *COMMON[10:20], 3]]) - before).abs().max() <= TOL


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert", "deberta-v2", "mpnet"])
def test_saved_folder_rebuilds_the_factored_table_with_both_loaders(tmp_path, model_type):
    model, _ = factored_bert(model_type=model_type)
    ids = [[2, *COMMON[:6], *RARE[:6], 3]]
    expected = logits(model, ids)
    save_pruned(model, tmp_path)
    for loaded in (AutoPrunedModel.from_pretrained(tmp_path),
                   transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True)):
        assert type(loaded.get_input_embeddings()).__name__ == "FactoredEmbedding"  # the remote code's own class
        assert (logits(loaded.eval(), ids) - expected).abs().max() <= TOL
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_int8_keeps_the_factored_table():
    model, _ = factored_bert()
    ids = [[2, *COMMON[:6], *RARE[:6], 3]]
    quantized = quantize_int8(model)
    assert isinstance(quantized.get_input_embeddings(), FactoredEmbedding)
    assert (logits(quantized, ids) - logits(model, ids)).abs().max() < 0.1  # int8 rounding, same predictions
    assert torch.equal(logits(quantized, ids).argmax(-1), logits(model, ids).argmax(-1))


def test_gradient_checkpointing_hook_moves_to_the_factored_table():
    """gradient_checkpointing_enable hooks the input embedding; factoring swaps it: the hook follows (before, the
    dangling handle made copy.deepcopy, so quantize_int8, fail: "cannot create weak reference to 'NoneType'")."""
    model = tiny_model("bert")
    random_masks(model)
    compact(model)
    model.gradient_checkpointing_enable()
    old_table = model.get_input_embeddings()
    factor_embeddings(model, tokenized=corpus(), full_rows=45, rank=8)
    assert model.get_input_embeddings()._forward_hooks and not old_table._forward_hooks
    quantize_int8(model)  # copies the model
    model.train()
    outputs = model.get_input_embeddings()(torch.tensor([[2, 5, 60, 3]]))
    assert outputs.requires_grad


@pytest.mark.parametrize("change, message", [
    (dict(full_rows=0), r"full_rows=0: give a whole number from 1 to 97"),
    (dict(full_rows=95), r"rank=8: only 4 rows are factored \(99 tokens, 95 whole\); give a rank below 4"),
    (dict(rank=32), r"rank=32: give a whole number from 1 to 31"),
    (dict(rank=2.5), r"rank=2.5"),
])
def test_bad_settings_are_refused_before_any_change(change, message):
    model = tiny_model("bert")
    table = model.get_input_embeddings()
    with pytest.raises(ValueError, match=message):
        factor_embeddings(model, tokenized=corpus(), **{"full_rows": 45, "rank": 8, **change})
    assert model.get_input_embeddings() is table


def test_rows_with_ids_outside_the_table_are_refused():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match=r"tokenized holds ids outside the model's table of 99 rows \(\[120\]\)"):
        factor_embeddings(model, tokenized=[*corpus(), [2, 120, 3]], full_rows=45, rank=8)


def test_refuses_masked_lms_masked_models_and_a_second_factoring():
    head = "the model has a vocabulary output head"
    lm = tiny_model("bert", head="AutoModelForMaskedLM")
    with pytest.raises(ValueError, match=head):
        factor_embeddings(lm, tokenized=corpus(), full_rows=45, rank=8)
    # DeBERTa-v2's non-legacy MLM head reads the table by reference (its output embeddings are another linear):
    # factored, its logits over the whole vocabulary changed; so did those of a subclass under another name
    deberta = tiny_model("deberta-v2", head="AutoModelForMaskedLM", legacy=False)
    with pytest.raises(ValueError, match=head):
        factor_embeddings(deberta, tokenized=corpus(), full_rows=45, rank=8)
    renamed = type("Filler", (type(deberta),), {})(deberta.config)
    with pytest.raises(ValueError, match=head):
        factor_embeddings(renamed, tokenized=corpus(), full_rows=45, rank=8)
    untied = tiny_model("bert", head="AutoModelForMaskedLM", tie_word_embeddings=False)
    with pytest.raises(ValueError, match=head):
        factor_embeddings(untied, tokenized=corpus(), full_rows=45, rank=8)
    # ELECTRA's discriminator (ForPreTraining) classifies tokens: no vocabulary head, factored
    discriminator = transformers.ElectraForPreTraining(tiny_model("electra").config).eval()
    random_masks(discriminator)
    compact(discriminator)
    factor_embeddings(discriminator, tokenized=corpus(), full_rows=45, rank=8)
    masked = tiny_model("bert")
    random_masks(masked)
    with pytest.raises(ValueError, match="compact it first"):
        factor_embeddings(masked, tokenized=corpus(), full_rows=45, rank=8)
    model, _ = factored_bert()
    with pytest.raises(ValueError, match="not a plain table: factor a model once"):
        factor_embeddings(model, tokenized=corpus(), full_rows=45, rank=8)
    with pytest.raises(ValueError, match="no texts or rows to count"):
        factor_embeddings(tiny_model("bert"), full_rows=45, rank=8)


def test_vocabulary_pruning_after_factoring_is_refused():
    from test_deploy_vocabulary import minilm_tokenizer, sst2_sentences, tiny_bert

    tokenizer = minilm_tokenizer()
    model = tiny_bert(len(tokenizer))
    texts = sst2_sentences(n=50)
    factor_embeddings(model, tokenizer, texts, full_rows=500, rank=8)
    with pytest.raises(ValueError, match="not a plain table: prune the vocabulary first, then factor_embeddings"):
        prune_vocabulary(model, tokenizer, texts)


def test_onnx_export_and_int8_graph_of_a_factored_model(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install onnx onnxruntime")
    pytest.importorskip("onnxruntime", reason="the parity check needs onnxruntime: pip install onnxruntime")
    from hf_adaprune.deploy import OnnxEncoder, export_onnx, quantize_onnx

    model, _ = factored_bert()
    ids = torch.tensor([[2, *COMMON[:6], *RARE[:6], 3], [2, *RARE[6:18], 3]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    expected = logits(model, ids.tolist()).numpy()
    export_onnx(model, tmp_path)
    got = OnnxEncoder(tmp_path, file="model.onnx")(**batch).logits.numpy()
    assert abs(got - expected).max() <= 1e-4
    (int8,) = quantize_onnx(tmp_path, ["model.onnx"])
    rounded = OnnxEncoder(tmp_path, file=int8.name)(**batch).logits.numpy()
    assert abs(rounded - expected).max() < 0.1
