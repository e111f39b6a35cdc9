"""The sentence-embeddings recipe and hf_adaprune.sentence_transformers, after the audit of the sentence-embedding
route: the layer-drop baseline of a folder an earlier run pruned (its layout record follows the kept layers), the
baseline's card holding its own figures, the other recipes' deploy flags refused with where to go instead, a loaded
folder's card not written back over a changed model, and a plain transformers checkpoint named in a warning."""

from __future__ import annotations

import logging
import re

import pytest

pytest.importorskip("sentence_transformers")
import torch  # noqa: E402
from conftest import load_recipe  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from test_sentence_transformers import (  # noqa: E402, F401 (the fixture)
    encoder_folder,
    recipe_workspace,
    sentences,
    tiny_sentence_transformer,
)

from hf_adaprune import attach_masks  # noqa: E402
from hf_adaprune.layout import read_record  # noqa: E402
from hf_adaprune.sentence_transformers import (  # noqa: E402
    load_pruned_sentence_transformer,
    save_pruned_sentence_transformer,
)

recipe = load_recipe("sentence_embeddings")

FLAGS = ["--max_steps", "4", "--per_device_train_batch_size", "8", "--pruning_warmup_steps", "1",
         "--pruning_interval", "1", "--pruning_initial_step", "0.3", "--pruning_tolerance", "1.0",
         "--pruning_seq_len", "32", "--max_seq_length", "32", "--use_cpu", "true", "--report_to", "none",
         "--save_strategy", "no", "--disable_tqdm", "true", "--throughput_batch", "4", "--throughput_repeats", "1"]


def pruned_folder(encoder_folder, folder) -> str:  # noqa: F811
    """A tiny sentence-transformer with heads and neurons of both layers removed, saved as the recipe saves it."""
    model = tiny_sentence_transformer(encoder_folder)
    masks = attach_masks(model[0].auto_model)
    masks.set("encoder.layer.0.attention", torch.tensor([1.0, 0.0, 1.0, 1.0]))
    masks.set("encoder.layer.1.attention", torch.tensor([0.0, 1.0, 1.0, 0.0]))
    ffn = torch.ones(37)
    ffn[::3] = 0
    masks.set("encoder.layer.1.ffn", ffn)
    save_pruned_sentence_transformer(model, folder, card="# An earlier run's card\n")
    return str(folder)


# -- 1. the layer-drop baseline of a pruned start -------------------------------------------------------------------
def test_layer_dropped_renumbers_the_layout_record_of_a_pruned_model(encoder_folder, tmp_path):  # noqa: F811
    start = load_pruned_sentence_transformer(pruned_folder(encoder_folder, tmp_path / "pruned"), device="cpu")
    student = recipe.layer_dropped(start, [1])
    inner = student[0].auto_model
    record = read_record(inner.config)
    assert inner.config.num_hidden_layers == len(inner.encoder.layer) == 1
    assert record["layers"] == {"encoder.layer": {"role": "encoder", "original": 2, "kept": [1]}}
    assert not [name for name in record["groups"] if name.startswith("encoder.layer.1")]
    assert record["groups"]["encoder.layer.0.attention"]["kept"] == [1, 2]  # original layer 1's heads
    assert len(record["groups"]["encoder.layer.0.ffn"]["kept"]) == 24
    assert len(read_record(start[0].auto_model.config)["layers"]) == 0  # the start keeps its own record
    recipe.profile(student, 32)  # reads the record: failed on encoder.layer.1
    student.save(str(tmp_path / "dropped"))
    text = sentences(4, seed=3)
    expected = student.encode(text, convert_to_tensor=True)
    for loaded in (load_pruned_sentence_transformer(tmp_path / "dropped", device="cpu"),
                   SentenceTransformer(str(tmp_path / "dropped"), trust_remote_code=True, device="cpu")):
        assert len(loaded[0].auto_model.encoder.layer) == 1
        torch.testing.assert_close(loaded.encode(text, convert_to_tensor=True), expected, atol=1e-5, rtol=0)


def test_layer_dropped_keeps_a_dense_model_without_a_record_and_its_evaluations_out(encoder_folder):  # noqa: F811
    from datasets import Dataset

    dense = tiny_sentence_transformer(encoder_folder)
    text = sentences(8, seed=4)
    pairs = Dataset.from_dict({"sentence1": text[:4], "sentence2": text[4:], "score": [0.1, 0.4, 0.6, 0.9]})
    recipe.spearman(dense, recipe.sts_evaluator(pairs, "sts-test"))  # the evaluator writes into dense's card data
    assert dense.model_card_data.eval_results_dict
    student = recipe.layer_dropped(dense, [1])
    assert student[0].auto_model.config.num_hidden_layers == len(student[0].auto_model.encoder.layer) == 1
    assert read_record(student[0].auto_model.config) is None  # saved as a plain sentence-transformers folder
    assert student.model_card_data.eval_results_dict == {}  # its card gets its own figures, when it is scored
    assert student.model_card_data.model is student


def test_recipe_layer_drop_baseline_from_a_pruned_folder_with_its_own_card_figures(encoder_folder, tmp_path):  # noqa: F811
    _, stsb = recipe_workspace(encoder_folder, tmp_path)
    start = pruned_folder(encoder_folder, tmp_path / "pruned")
    out = tmp_path / "out"
    results = recipe.main(["--model_name_or_path", start, "--stsb_dir", str(stsb), "--output_dir", str(out),
                           *FLAGS, "--layer_drop_baseline", "true", "--keep_layers", "1", "--learning_rate", "0.05"])
    drop = results["layer_drop"]
    assert drop["kept_layers"] == [1]
    assert drop["layer_flops"] < results["dense"]["layer_flops"]
    text = sentences(4, seed=3)
    scored = []
    for loaded in (load_pruned_sentence_transformer(out / "layer_drop", device="cpu"),
                   SentenceTransformer(str(out / "layer_drop"), trust_remote_code=True, device="cpu")):
        assert len(loaded[0].auto_model.encoder.layer) == 1
        scored.append(loaded.encode(text, convert_to_tensor=True))
    torch.testing.assert_close(*scored, atol=1e-5, rtol=0)
    # 2. the baseline's card (model-index) holds the baseline's figures, not the dense model's
    card = (out / "layer_drop" / "README.md").read_text()
    figures = {name: float(value) for name, value in re.findall(
        r"type: (sts-(?:test|dev))\n(?:.*\n)*?\s+- type: spearman_cosine\n\s+value: ([-0-9.e]+)", card)}
    assert figures == pytest.approx({"sts-test": drop["sts_test"], "sts-dev": drop["sts_dev"]}, abs=1e-12)
    assert figures["sts-test"] != pytest.approx(results["dense"]["sts_test"], abs=1e-9)


# -- 3. the other recipes' deploy flags -----------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [["--prune_vocabulary", "true"], ["--quantize", "int8"], ["--export_onnx", "true"],
                                   ["--export-onnx=true"], ["--vocabulary_min_count", "2"]])
def test_deploy_flags_are_refused_with_the_library_route_before_any_work(tmp_path, capsys, flags):
    from recipes.skeleton import run_cli

    flag = flags[0].partition("=")[0].replace("-", "_").replace("__", "--", 1)
    with pytest.raises(SystemExit) as stop:  # a missing model: the flags are refused before it is looked for
        run_cli(recipe.main, ["--model_name_or_path", str(tmp_path / "missing"), "--output_dir",
                              str(tmp_path / "out"), "--stsb_dir", str(tmp_path), *flags])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {flag}: the sentence-embeddings recipe has no deploy step "
                           "(no --prune_vocabulary, --quantize or --export_onnx)")
    for route in ("load_pruned_sentence_transformer(OUTPUT_DIR)", "prune_vocabulary(st[0].auto_model",
                  "save_int8(st[0].auto_model", "export_onnx(st[0].auto_model", 'README, "Deploy"'):
        assert route in line
    assert not (tmp_path / "out").exists()


def test_other_unknown_flags_keep_the_parsers_message(tmp_path):
    with pytest.raises(recipe.RecipeError, match=re.escape("Some specified arguments are not used by the "
                                                           "HfArgumentParser: ['--no_such_flag', '1']")):
        recipe.main(["--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "out"),
                     "--no_such_flag", "1"])


# -- 4. a loaded folder's card is not written back --------------------------------------------------------------
def test_a_save_without_a_card_writes_a_new_card_not_the_loaded_folders(encoder_folder, tmp_path):  # noqa: F811
    from hf_adaprune.deploy import prune_vocabulary

    model = load_pruned_sentence_transformer(pruned_folder(encoder_folder, tmp_path / "pruned"), device="cpu")
    model[0].processor = prune_vocabulary(model[0].auto_model, model.tokenizer, sentences(20))
    save_pruned_sentence_transformer(model, tmp_path / "deployed")
    card = (tmp_path / "deployed" / "README.md").read_text()
    assert "An earlier run's card" not in card
    assert "sentence-transformers" in card and "SentenceTransformer" in card  # the card sentence-transformers makes
    assert model._model_card_text == "# An earlier run's card\n"  # the model as it was given


# -- 5. a plain transformers checkpoint --------------------------------------------------------------------------
def test_a_plain_transformers_checkpoint_is_named_in_a_warning(encoder_folder, tmp_path, caplog):  # noqa: F811
    _, stsb = recipe_workspace(encoder_folder, tmp_path)
    with caplog.at_level(logging.WARNING, logger=recipe.logger.name):
        recipe.main(["--model_name_or_path", encoder_folder, "--stsb_dir", str(stsb), "--output_dir",
                     str(tmp_path / "out"), *FLAGS, "--max_steps", "2", "--pruning_warmup_steps", "1"])
    warnings = [r.getMessage() for r in caplog.records if r.name == recipe.logger.name and r.levelno == logging.WARNING]
    assert any(f"--model_name_or_path {encoder_folder}: no sentence-transformers modules found (no modules.json): "
               "sentence-transformers added a new mean pooling without normalization" in m for m in warnings), warnings


def test_a_sentence_transformers_folder_gets_no_such_warning(encoder_folder, tmp_path, caplog):  # noqa: F811
    model_dir, _ = recipe_workspace(encoder_folder, tmp_path)
    with caplog.at_level(logging.WARNING, logger=recipe.logger.name):
        recipe.warn_if_new_modules(SentenceTransformer(str(model_dir), device="cpu"), str(model_dir))
    assert "no sentence-transformers modules found" not in caplog.text
