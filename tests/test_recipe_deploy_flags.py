"""The recipes' deploy options (--prune_vocabulary, --quantize int8, --export_onnx, --export_ctranslate2) on tiny
models: what they write under OUTPUT_DIR/deploy and that it computes what the pruned model computes; requests the
backend cannot serve fail before training, naming the flag and what is supported."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoTokenizer, BertConfig, PreTrainedTokenizerFast, Wav2Vec2Processor,
                          WhisperForConditionalGeneration, WhisperProcessor)

from hf_adaprune import AutoPrunedModel
from hf_adaprune.deploy import load_int8, onnx_session

from conftest import load_recipe
from test_deploy_quantize import assert_int8_close
from test_recipe_text_classification import base_args as classification_args
from test_recipe_text_classification import workspace  # noqa: F401 - the fixture
from test_recipe_translation import base_args as translation_args
from test_recipe_translation import workspace as translation_workspace  # noqa: F401 - the fixture

classification = load_recipe("text_classification")
translation = load_recipe("translation")
RecipeError = classification.RecipeError

SHORT_RUN = ["--max_steps", "6", "--learning_rate", "5e-4", "--per_device_train_batch_size", "8",
             "--pruning_target", "0.5", "--pruning_tolerance", "1.0", "--pruning_warmup_steps", "2",
             "--pruning_interval", "2", "--pruning_initial_step", "0.25", "--save_strategy", "no",
             "--dataloader_pin_memory", "false", "--disable_tqdm", "true", "--report_to", "none",
             "--latency_repeats", "0"]


def logits(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_text_classification_vocabulary_int8_onnx(workspace, tmp_path, capsys):  # noqa: F811 - the fixture
    out = tmp_path / "out"
    # weights 5x BERT's initializer range: the encoder moves the logits, so an int8 model that lost it shows
    BertConfig.from_pretrained(workspace / "config", initializer_range=0.1).save_pretrained(tmp_path / "config")
    args = classification_args(workspace, out)
    args[args.index("--config_name") + 1] = str(tmp_path / "config")
    results = classification.main(args + SHORT_RUN + [
        "--prune_vocabulary", "true", "--prune_positions", "true", "--quantize", "int8", "--export_onnx", "true",
        "--max_seq_length", "32"])
    deploy = out / "deploy"
    record = results["deploy"]
    assert set(record["written"]) == {"vocabulary", "int8", "onnx"}
    assert json.loads((out / "results.json").read_text())["deploy"] == json.loads(json.dumps(record))
    for entry in record["written"].values():
        assert entry["bytes"] > 0 and entry["path"].startswith(str(deploy))
    vocabulary = record["written"]["vocabulary"]
    assert vocabulary["vocab_size"] < vocabulary["vocab_size_before"]  # dev/test words are gone
    # how many validation rows the smaller vocabulary reads otherwise (it had gone unsaid)
    dev = [line.split("\t")[0] for line in (workspace / "dev.tsv").read_text().splitlines()[1:]]
    kept = set(AutoTokenizer.from_pretrained(deploy / "vocabulary").get_vocab())
    full = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    rows = [full.convert_ids_to_tokens(ids) for ids in full(dev, truncation=True, max_length=32)["input_ids"]]
    assert vocabulary["validation_rows"] == len(dev)
    assert vocabulary["validation_rows_with_dropped_tokens"] == sum(any(t not in kept for t in row) for row in rows) > 0

    # the pruned model in OUTPUT_DIR is left as saved: full vocabulary
    pruned, tokenizer = AutoPrunedModel.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    assert pruned.get_input_embeddings().num_embeddings == vocabulary["vocab_size_before"]
    small = AutoPrunedModel.from_pretrained(deploy / "vocabulary").eval()
    small_tokenizer = AutoTokenizer.from_pretrained(deploy / "vocabulary")
    assert small.get_input_embeddings().num_embeddings == len(small_tokenizer) == vocabulary["vocab_size"]
    # --prune_positions: the position table keeps the rows of --max_seq_length tokens, the tokenizer truncates to it
    assert vocabulary["position_rows"] == small.config.max_position_embeddings == 32
    assert pruned.config.max_position_embeddings > 32
    assert small.bert.embeddings.position_embeddings.num_embeddings == 32 and small_tokenizer.model_max_length == 32
    texts = [line.split("\t")[0] for line in (workspace / "train.tsv").read_text().splitlines()[1:9]]
    expected = logits(pruned, tokenizer, texts)  # training text: every token kept
    assert torch.allclose(logits(small, small_tokenizer, texts), expected, atol=1e-5)

    int8 = load_int8(deploy / "int8")
    assert_int8_close(logits(int8, AutoTokenizer.from_pretrained(deploy / "int8"), texts), expected)
    batch = small_tokenizer(texts, padding=True, return_tensors="np")
    onnx_logits = onnx_session(deploy / "onnx").run(None, {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    assert np.abs(onnx_logits - expected.numpy()).max() <= 1e-4
    assert record["written"]["onnx"]["graphs"] == ["model.onnx", "model.int8.onnx"]  # --quantize int8 covers ONNX
    int8_logits = onnx_session(deploy / "onnx", "model.int8.onnx").run(
        None, {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    assert_int8_close(int8_logits, expected.numpy())

    # the vocabulary and int8 copies are scored on the test split, each reloaded and read by its own tokenizer
    rows = [line.split("\t") for line in (workspace / "test.tsv").read_text().splitlines()[1:]]
    labels = torch.tensor([int(label) for _, label in rows])
    for name, model in (("vocabulary", small), ("int8", int8)):
        batch = small_tokenizer([text for text, _ in rows], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            accuracy = (model(**batch).logits.argmax(-1) == labels).float().mean()
        assert record["written"][name]["test"] == {"accuracy": pytest.approx(accuracy.item())}
        change = record["written"][name]["test"]["accuracy"] - results["test"]["pruned_accuracy"]
        assert record["written"][name]["test_change"] == {"accuracy": pytest.approx(change)}
    # ONNX too, its float and int8 graphs apart (tests/test_recipe_deploy_scores.py checks the figures)
    assert set(record["written"]["onnx"]["test"]) == set(record["written"]["onnx"]["int8"]["test"]) == {"accuracy"}
    table = capsys.readouterr().out
    accuracy = record["written"]["vocabulary"]["test"]["accuracy"]
    assert f"deploy/vocabulary: test accuracy {accuracy:.4f} (" in table and "deploy/int8: test accuracy" in table


def vocabulary_run(workspace, out, *flags):
    """A text-classification run with --prune_vocabulary and ``flags``: (its deploy record of the vocabulary, the
    training tokenizer, how many training rows (truncated as the run reads them) hold each id)."""
    results = classification.main(classification_args(workspace, out) + SHORT_RUN + [
        "--prune_vocabulary", "true", "--max_seq_length", "32", *flags])
    tokenizer = AutoTokenizer.from_pretrained(workspace / "tokenizer")
    texts = [line.split("\t")[0] for line in (workspace / "train.tsv").read_text().splitlines()[1:]]
    rows_with: dict[int, int] = {}
    for ids in tokenizer(texts, truncation=True, max_length=32)["input_ids"]:
        for i in set(ids):
            rows_with[i] = rows_with.get(i, 0) + 1
    return results["deploy"]["written"]["vocabulary"], tokenizer, rows_with


def test_text_classification_vocabulary_min_count(workspace, tmp_path):  # noqa: F811 - the fixture
    vocabulary, tokenizer, rows_with = vocabulary_run(workspace, tmp_path / "out", "--vocabulary_min_count", "2")
    expected = {i for i, n in rows_with.items() if n >= 2} | set(tokenizer.all_special_ids)
    assert vocabulary["min_count"] == 2 and vocabulary["vocab_size"] == len(expected) < len(rows_with)
    small_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "deploy" / "vocabulary")
    assert set(small_tokenizer.get_vocab()) == set(tokenizer.convert_ids_to_tokens(sorted(expected)))


def test_text_classification_vocabulary_max_size(workspace, tmp_path):  # noqa: F811 - the fixture
    vocabulary, tokenizer, rows_with = vocabulary_run(workspace, tmp_path / "out", "--vocabulary_max_size", "40")
    always = set(tokenizer.all_special_ids)
    ranked = sorted((i for i in rows_with if i not in always), key=lambda i: (-rows_with[i], i))
    assert len(ranked) > 40 - len(always)  # the budget drops tokens of the training rows
    assert vocabulary["max_size"] == 40 and vocabulary["vocab_size"] == 40
    small = AutoTokenizer.from_pretrained(tmp_path / "out" / "deploy" / "vocabulary")
    assert set(small.get_vocab()) == set(tokenizer.convert_ids_to_tokens(sorted(always | set(ranked[:40 - len(always)]))))


@pytest.mark.parametrize("model_type, labels_count", [("bert", False), ("bart", True)])
def test_vocabulary_rows_take_labels_only_where_they_are_text(model_type, labels_count):
    """A classifier's labels are class indices: counted as token ids, class 1 kept [unused0] (and let a
    --vocabulary_min_count no word reaches pass the check); a seq2seq model's labels are its target tokens."""
    from types import SimpleNamespace

    from datasets import Dataset

    from conftest import tiny_model
    from recipes import deploy as recipe_deploy

    train = Dataset.from_dict({"input_ids": [[2, 10, 11, 3], [2, 12, 3]],
                               "labels": [[20, 21], [22, -100]] if labels_count else [1, 1]})
    run = SimpleNamespace(datasets={"train": train}, data_args=SimpleNamespace(decoder_vocabulary=False),
                          model=tiny_model(model_type, "AutoModelForSeq2SeqLM" if labels_count else
                                           "AutoModelForSequenceClassification"))
    rows = [sorted(row) for row in recipe_deploy.vocabulary_rows(run)[0]]
    assert rows == ([[2, 3, 10, 11, 20, 21], [2, 3, 12, 22]] if labels_count else [[2, 3, 10, 11], [2, 3, 12]])


def translation_deploy_run(ws, out, *deploy_flags) -> dict:
    """The translation recipe's short run on the tiny workspace, greedy, scored on its test files (at most 10
    tokens), with ``deploy_flags``."""
    return translation.main(translation_args(ws, out) + SHORT_RUN + [
        "--max_source_length", "32", "--max_target_length", "32", "--num_beams", "1", "--pruning_seq_len", "32",
        "--pruning_tolerance", "100", *deploy_flags,
        "--test_source_file", str(ws / "test_2016_flickr.en"), "--test_target_file", str(ws / "test_2016_flickr.de"),
        "--generation_max_length", "10"])


def test_translation_vocabulary_and_ctranslate2(translation_workspace, tmp_path):  # noqa: F811 - the fixture
    ctranslate2 = pytest.importorskip("ctranslate2", reason="--export_ctranslate2 needs ctranslate2")
    out = tmp_path / "out"
    ws = translation_workspace
    results = translation_deploy_run(ws, out, "--prune_vocabulary", "true", "--export_ctranslate2", "true")
    written = results["deploy"]["written"]
    # the vocabulary copy is scored on the test split: its own tokenizer reads the sources, at most 10 tokens each
    from hf_adaprune.metrics import headline_value, load_metric
    from hf_adaprune.sequence_distillation import sequence_distillation_targets

    small, small_tokenizer = (AutoPrunedModel.from_pretrained(out / "deploy" / "vocabulary").eval(),
                              AutoTokenizer.from_pretrained(out / "deploy" / "vocabulary"))
    sources = (ws / "test_2016_flickr.en").read_text().splitlines()
    references = (ws / "test_2016_flickr.de").read_text().splitlines()
    rows = Dataset.from_dict(dict(small_tokenizer(sources, max_length=32, truncation=True)))
    ids = list(sequence_distillation_targets(small, rows, batch_size=8, max_length=10, num_beams=1)["labels"])
    assert max(map(len, ids)) <= 10
    hypotheses = [text.strip() for text in small_tokenizer.batch_decode(ids, skip_special_tokens=True)]
    for name, value in written["vocabulary"]["test"].items():
        expected = headline_value(name, load_metric(name).compute(predictions=hypotheses,
                                                                  references=[[r] for r in references]))
        assert value == pytest.approx(expected) and written["vocabulary"]["test_change"][name] == pytest.approx(
            value - results["test"][f"pruned_{name}"])
    assert set(written["vocabulary"]["test"]) == set(results["test"]["metrics"]) == set(written["ctranslate2"]["test"])
    assert set(written) == {"vocabulary", "ctranslate2"}
    assert written["ctranslate2"]["quantization"] is None and set(written["ctranslate2"]["num_heads"]) == \
        {"encoder", "decoder"}
    folder = out / "deploy" / "ctranslate2"
    assert (folder / "model.bin").is_file()
    # the CTranslate2 model uses the smaller vocabulary: its tokens are those of the vocabulary folder's tokenizer
    tokenizer = AutoTokenizer.from_pretrained(out / "deploy" / "vocabulary")
    vocabulary = json.loads((folder / "shared_vocabulary.json").read_text())
    assert written["vocabulary"]["vocab_size"] < written["vocabulary"]["vocab_size_before"]
    # a Marian trained from scratch has a start (<pad>) embedding that is not zero: <pad> stays in the vocabulary
    assert written["ctranslate2"]["pad_kept"]
    assert set(vocabulary) == set(tokenizer.get_vocab())
    # and translates greedily as the smaller-vocabulary model does
    from test_deploy_ctranslate2 import greedy_marian

    model = AutoPrunedModel.from_pretrained(out / "deploy" / "vocabulary").eval()
    sources = (translation_workspace / "val.en").read_text().splitlines()[:3]
    expected, got = greedy_marian(model, tokenizer, ctranslate2.Translator(str(folder)), sources, max_new_tokens=8)
    assert got == expected


def test_translation_sequence_distillation_and_decoder_vocabulary(translation_workspace, tmp_path, monkeypatch):  # noqa: F811
    import recipes.skeleton as skeleton

    trained_on = {}  # labels each trainer's training set holds when train() starts
    for name in ("AdaptivePruningSeq2SeqTrainer", "DenseSeq2SeqTrainer"):
        cls = getattr(skeleton, name)
        monkeypatch.setattr(cls, "train", _recording_train(cls.train, name, trained_on))
    out = tmp_path / "out"
    results = translation.main(translation_args(translation_workspace, out) + SHORT_RUN + [
        "--max_source_length", "32", "--max_target_length", "32", "--num_beams", "1", "--pruning_seq_len", "32",
        "--generation_max_length", "12", "--pruning_tolerance", "100", "--dense_control", "true",
        "--sequence_distillation", "true", "--prune_vocabulary", "true", "--decoder_vocabulary", "true"])
    teacher = results["task"]["sequence_distillation"]
    assert teacher["rows"] == 50 and teacher["rows_unlike_the_reference"] > 0 and teacher["max_length"] == 12
    # the pruning run trained on the model's own translations, the dense control on the references
    references = AutoTokenizer.from_pretrained(translation_workspace / "tokenizer")(
        text_target=_train_targets(translation_workspace), max_length=32, truncation=True)["input_ids"]
    assert sorted(map(tuple, trained_on["DenseSeq2SeqTrainer"])) == sorted(map(tuple, references))
    pruned_labels = trained_on["AdaptivePruningSeq2SeqTrainer"]
    assert len(pruned_labels) == 50 and sorted(map(tuple, pruned_labels)) != sorted(map(tuple, references))
    assert max(len(row) for row in pruned_labels) <= 12
    written = results["deploy"]["written"]["vocabulary"]
    assert written["decoder_vocab_size"] < written["vocab_size"] < written["vocab_size_before"]
    folder = out / "deploy" / "vocabulary"
    config = json.loads((folder / "config.json").read_text())
    assert (config["decoder_vocab_size"], config["share_encoder_decoder_embeddings"]) == (
        written["decoder_vocab_size"], False)
    model = AutoPrunedModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # the decoder can write every token the pruned model trained on: the teacher's as well as the references'
    old_tokenizer = AutoTokenizer.from_pretrained(translation_workspace / "tokenizer")
    trained = {t for row in pruned_labels + references for t in old_tokenizer.convert_ids_to_tokens(row)}
    assert trained <= set(tokenizer.convert_ids_to_tokens(list(range(written["decoder_vocab_size"]))))
    targets = _train_targets(translation_workspace)[:4]
    assert max(i for row in tokenizer(text_target=targets)["input_ids"] for i in row) < written["decoder_vocab_size"]
    batch = tokenizer(_train_targets(translation_workspace, "en")[:4], text_target=targets, padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape[-1] == written["decoder_vocab_size"]


def test_translation_refuses_position_pruning(translation_workspace, tmp_path):  # noqa: F811 - the fixture
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match=re.escape("--prune_positions: position pruning is for encoders with a "
                                                    "learned position table (bert, electra, distilbert, roberta")):
        translation.main(translation_args(translation_workspace, out) + SHORT_RUN + [
            "--prune_vocabulary", "true", "--prune_positions", "true"])
    assert not (out / "model.safetensors").exists()


def test_translation_refuses_a_deploy_request_before_the_teacher_translates(translation_workspace, tmp_path,  # noqa: F811
                                                                             monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError

    def not_now(*args, **kwargs):
        raise AssertionError("the teacher translated before the requests were checked")

    monkeypatch.setattr(translation, "teacher_translations", not_now)
    with pytest.raises(RecipeError, match=re.escape("--export_onnx: ONNX export needs onnxruntime")):
        translation.main(translation_args(translation_workspace, tmp_path / "out") + SHORT_RUN + [
            "--sequence_distillation", "true", "--export_onnx", "true", "--quantize", "int8"])


def _recording_train(train, name, trained_on):
    def recording(self, *args, **kwargs):
        trained_on[name] = list(self.train_dataset["labels"])
        return train(self, *args, **kwargs)
    return recording


def _train_targets(workspace, lang="de"):
    import gzip

    return gzip.decompress((workspace / f"train.{lang}.gz").read_bytes()).decode().splitlines()


# -- requests the backend cannot serve: refused before training --------------------------------------------------


def wordlevel_tokenizer(workspace, folder):  # noqa: F811 - the fixture's value
    words = sorted({w for line in (workspace / "train.tsv").read_text().splitlines()[1:]
                    for w in line.split("\t")[0].lower().split()})
    level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]"] + words)}, unk_token="[UNK]"))
    level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=level, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("extra, message", [
    (["--export_ctranslate2", "true"], "--export_ctranslate2: CTranslate2 export converts "
                                       "WhisperForConditionalGeneration, MarianMTModel models; got BertFor"),
    (["--quantize", "int4"], "--quantize 'int4': the recipes quantize to int8"),
    (["--prune_vocabulary", "true", "--vocabulary_min_count", "0"],
     "--vocabulary_min_count 0: a token is kept when it occurs in at least this many training rows; it must be 1"),
    (["--vocabulary_min_count", "2"], "--vocabulary_min_count only applies with --prune_vocabulary true"),
    (["--decoder_vocabulary", "true"], "--decoder_vocabulary only applies with --prune_vocabulary true"),
    (["--prune_vocabulary", "true", "--vocabulary_max_size", "0"],
     "--vocabulary_max_size 0: the most tokens the pruned vocabulary keeps; it must be 1 or more"),
    (["--vocabulary_max_size", "100"], "--vocabulary_max_size only applies with --prune_vocabulary true"),
    (["--prune_vocabulary", "true", "--vocabulary_max_size", "3"],
     "--vocabulary_max_size 3: the pruned vocabulary keeps 5 tokens whatever their count"),
    (["--prune_vocabulary", "true", "--decoder_vocabulary", "true", "--export_ctranslate2", "true"],
     "--decoder_vocabulary gives the decoder a vocabulary of its own, which CTranslate2's Marian converter cannot"),
    (["--prune_vocabulary", "true", "--decoder_vocabulary", "true"],
     "--prune_vocabulary --decoder_vocabulary: decoder_vocabulary=True gives the decoder a table of its own, which "
     "Marian models can hold (config.decoder_vocab_size); BertForSequenceClassification has one vocabulary"),
    (["--prune_positions", "true"], "--prune_positions only applies with --prune_vocabulary true"),
    (["--prune_vocabulary", "true", "--vocabulary_full_rows", "30"],
     "--vocabulary_full_rows and --vocabulary_rank go together"),
    (["--vocabulary_full_rows", "30", "--vocabulary_rank", "4"],
     "--vocabulary_full_rows / --vocabulary_rank only apply with --prune_vocabulary true"),
    (["--prune_vocabulary", "true", "--vocabulary_full_rows", "30", "--vocabulary_rank", "64"],
     "--vocabulary_full_rows 30 --vocabulary_rank 64: the pruned vocabulary keeps "),
    (["--prune_vocabulary", "true", "--vocabulary_max_size", "40", "--vocabulary_full_rows", "36",
      "--vocabulary_rank", "8"], "--vocabulary_full_rows 36 --vocabulary_rank 8: the pruned vocabulary keeps 40 "
                                 "tokens; rank=8: only 4 rows are factored (40 tokens, 36 whole); give a rank below 4"),
    (["--prune_vocabulary", "true", "--vocabulary_full_rows", "2", "--vocabulary_rank", "1"],
     "; full_rows=2 is below the 5 special tokens kept whole"),
    (["--prune_vocabulary", "true", "--vocabulary_max_size", "40", "--vocabulary_full_rows", "60",
      "--vocabulary_rank", "4"], "--vocabulary_full_rows 60: the pruned vocabulary keeps 40 tokens, so every row "),
    (["--prune_vocabulary", "true", "--vocabulary_full_rows", "100000", "--vocabulary_rank", "4"],
     "--vocabulary_full_rows 100000: the pruned vocabulary keeps "),
    (["--prune_vocabulary", "true", "--tokenizer_name", "WORDLEVEL"],
     "--prune_vocabulary: vocabulary pruning does not support a tokenizers WordLevel model; supported: "),
    (["--prune_vocabulary", "true", "--vocabulary_min_count", "1000"],
     "--vocabulary_min_count 1000: no token occurs in that many training rows (the most common in "),
])
def test_bad_requests_fail_before_training(workspace, tmp_path, extra, message):  # noqa: F811 - the fixture
    if "WORDLEVEL" in extra:
        extra = [str(wordlevel_tokenizer(workspace, tmp_path / "wordlevel")) if x == "WORDLEVEL" else x for x in extra]
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match=re.escape(message)):
        classification.main(classification_args(workspace, out) + SHORT_RUN + extra)
    assert not (out / "model.safetensors").exists() and not (out / "deploy").exists()


def test_a_deployed_copy_that_fails_leaves_results_json_with_the_error(workspace, tmp_path, monkeypatch):  # noqa: F811
    import hf_adaprune.deploy

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(hf_adaprune.deploy, "save_int8", disk_full)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left on device"):
        classification.main(classification_args(workspace, out) + SHORT_RUN + ["--quantize", "int8",
                                                                               "--prune_vocabulary", "true"])
    results = json.loads((out / "results.json").read_text())  # the run's figures are kept
    assert results["deploy"]["error"] == "OSError: No space left on device"
    # and the copy written before the one that failed, with its test figures
    assert set(results["deploy"]["written"]) == {"vocabulary"}
    assert results["deploy"]["written"]["vocabulary"]["test"]["accuracy"] is not None
    assert results["test"]["pruned_accuracy"] is not None and results["train"]["global_step"] == 6


def test_translation_checks_the_minimum_count_with_the_teachers_rows(translation_workspace, tmp_path,  # noqa: F811
                                                                      monkeypatch):
    import recipes.deploy as deploy

    def translated(model, dataset, run):  # the teacher's rows: the references reversed, quickly
        return dataset.map(lambda row: {"labels": row["labels"][::-1]})

    def checked(run):
        assert "pruning_train" in run.datasets, "the minimum count was checked before the teacher translated"
        raise RecipeError("checked")

    monkeypatch.setattr(translation, "teacher_translations", translated)
    monkeypatch.setattr(deploy, "check_rows", checked)
    with pytest.raises(RecipeError, match="^checked$"):
        translation.main(translation_args(translation_workspace, tmp_path / "out") + SHORT_RUN + [
            "--sequence_distillation", "true", "--prune_vocabulary", "true", "--vocabulary_min_count", "2"])
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_onnx_int8_without_onnxruntime_fails_before_training(workspace, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match=re.escape("--export_onnx: ONNX export needs onnxruntime")):
        classification.main(classification_args(workspace, out) + SHORT_RUN
                            + ["--export_onnx", "true", "--quantize", "int8"])
    assert not (out / "model.safetensors").exists() and not (out / "deploy").exists()


# -- speech ---------------------------------------------------------------------------------------------------------

from test_recipe_asr import FSDD, PRUNING, asr, data_flags, manifests  # noqa: E402,F401


def test_whisper_ctranslate2_and_onnx(tmp_path, manifests, tiny_whisper_dir):
    """A Whisper with its window cut to 1 s: the CTranslate2 copy transcribes what the pruned model does."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="--export_ctranslate2 needs ctranslate2")
    out = tmp_path / "whisper"
    results = asr.main(["--model_name_or_path", str(tiny_whisper_dir), *data_flags(manifests, test=False), *PRUNING,
                        "--output_dir", str(out), "--whisper_window_seconds", "1", "--generation_max_length", "6",
                        "--pruning_seq_len", "8", "--export_ctranslate2", "true", "--export_onnx", "true"])
    assert set(results["deploy"]["written"]) == {"ctranslate2", "onnx"}
    folder = out / "deploy" / "ctranslate2"
    assert (folder / "preprocessor_config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert (out / "deploy" / "onnx" / "encoder_model.onnx").is_file()
    model = AutoPrunedModel.from_pretrained(out).eval()
    processor = WhisperProcessor.from_pretrained(out)
    audio = [asr.decode_audio(str(FSDD / name), 16000, name) for name in ("3_theo_11.wav", "7_george_12.wav")]
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        expected = model.generate(features, max_new_tokens=4, num_beams=1, do_sample=False)
    no_timestamps = model.generation_config.no_timestamps_token_id
    prompt = processor.tokenizer.convert_ids_to_tokens([model.generation_config.decoder_start_token_id, no_timestamps])
    whisper = ctranslate2.models.Whisper(str(folder))
    got = whisper.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy())),
                           [prompt] * 2, beam_size=1, max_length=12, suppress_blank=False)  # as generate here
    eos = model.generation_config.eos_token_id
    for row, result in zip(expected.tolist(), got):
        row = row[: row.index(eos)] if eos in row else row
        row = row[1:] if row[:1] == [no_timestamps] else row  # generate returns the forced token too
        assert len(row) >= 2 and result.sequences_ids[0][: len(row)] == row


@pytest.mark.parametrize("extra, message", [
    (["--prune_vocabulary", "true"], "--prune_vocabulary: Wav2Vec2ForCTC has no input token embeddings to prune"),
    (["--export_onnx", "true"], "--export_onnx: ONNX export handles text models (input_ids) and Whisper "
                                "(input_features); Wav2Vec2ForCTC takes input_values"),
    (["--export_ctranslate2", "true"], "--export_ctranslate2: CTranslate2 export converts "
                                       "WhisperForConditionalGeneration, MarianMTModel models; got Wav2Vec2ForCTC"),
])
def test_ctc_bad_requests_fail_before_training(tmp_path, manifests, tiny_ctc_dir, extra, message):  # noqa: F811
    out = tmp_path / "ctc"
    with pytest.raises(asr.RecipeError, match=re.escape(message)):
        asr.main(["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests, test=False), *PRUNING,
                  "--output_dir", str(out), *extra])
    assert not (out / "model.safetensors").exists()


def test_whisper_vocabulary_rows_hold_both_forms_of_a_transcript_in_its_one_row(tiny_whisper_dir):
    """The spaced form (' kitchen') is kept beside the labels' form, in the transcript's own row: as a row of its
    own it counted every transcript twice (--vocabulary_min_count 2 kept words of one transcript)."""
    from types import SimpleNamespace

    from hf_adaprune.deploy.vocabulary import token_row_counts
    from recipes import deploy as recipe_deploy

    tokenizer = AutoTokenizer.from_pretrained(tiny_whisper_dir)
    texts = ["turn on the kitchen light", "open the door"]
    run = SimpleNamespace(datasets={"train": [{"labels": tokenizer(text).input_ids} for text in texts]},
                          data_args=SimpleNamespace(decoder_vocabulary=False), processing_class=tokenizer,
                          model=SimpleNamespace(config=SimpleNamespace(model_type="whisper", is_encoder_decoder=True)))
    counts = token_row_counts(tokenizer, tokenized=recipe_deploy.vocabulary_rows(run)[0])
    assert max(counts.values()) == len(texts)  # the prompt's special tokens, in every row once
    for word, rows in ((" kitchen", 1), ("turn", 1), (" turn", 1), (" door", 1), (" the", 2)):
        assert {counts[i] for i in tokenizer(word, add_special_tokens=False).input_ids} == {rows}, word


def test_whisper_vocabulary_and_ctranslate2(tmp_path, manifests, tiny_whisper_dir):
    """The vocabulary folder holds the processor with the smaller tokenizer; CTranslate2 converts that folder."""
    out = tmp_path / "whisper"
    flags = ["--prune_vocabulary", "true"]
    ctranslate2 = None
    if importlib.util.find_spec("ctranslate2") is not None:
        import ctranslate2
        flags += ["--export_ctranslate2", "true"]
    results = asr.main(["--model_name_or_path", str(tiny_whisper_dir), *data_flags(manifests, test=False), *PRUNING,
                        "--output_dir", str(out), "--whisper_window_seconds", "1", "--generation_max_length", "6",
                        "--pruning_seq_len", "8", *flags])
    written = results["deploy"]["written"]["vocabulary"]
    folder = out / "deploy" / "vocabulary"
    assert (folder / "preprocessor_config.json").is_file()
    small = AutoPrunedModel.from_pretrained(folder).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    assert small.config.vocab_size == len(processor.tokenizer) == written["vocab_size"] <= written["vocab_size_before"]
    big_tokenizer = WhisperProcessor.from_pretrained(out).tokenizer
    for row in asr.read_manifest(str(manifests["train"]), "--train_manifest", "path", "text")[:8]:
        assert processor.tokenizer.tokenize(row["text"]) == big_tokenizer.tokenize(row["text"])
        # as a pretrained Whisper writes it, after a space: a briefly trained model still does
        spaced = " " + row["text"]
        assert processor.tokenizer.tokenize(spaced) == big_tokenizer.tokenize(spaced)
    audio = [asr.decode_audio(str(FSDD / name), 16000, name) for name in ("3_theo_11.wav", "7_george_12.wav")]
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        expected = small.generate(features, max_new_tokens=4, num_beams=1, do_sample=False)
    if ctranslate2 is None:
        return
    no_timestamps = small.generation_config.no_timestamps_token_id
    prompt = processor.tokenizer.convert_ids_to_tokens([small.generation_config.decoder_start_token_id, no_timestamps])
    got = ctranslate2.models.Whisper(str(out / "deploy" / "ctranslate2")).generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy())), [prompt] * 2, beam_size=1,
        max_length=12, suppress_blank=False)
    eos = small.generation_config.eos_token_id
    for row, result in zip(expected.tolist(), got):
        row = row[: row.index(eos)] if eos in row else row
        row = row[1:] if row[:1] == [no_timestamps] else row
        assert len(row) >= 2 and result.sequences_ids[0][: len(row)] == row


def test_translation_generation_config_keeps_the_recipes_ids_and_serves_every_generation(  # noqa: F811
        translation_workspace, tmp_path, monkeypatch):
    """A --generation_config without a decoder start token: Seq2SeqTrainer replaced the model's config with it and
    the metric check failed; one with beams: the teacher translated greedily and results.json said None."""
    from transformers import GenerationConfig

    import recipes.skeleton as skeleton

    GenerationConfig(num_beams=2, max_length=12, eos_token_id=1).save_pretrained(tmp_path / "generation")
    seen = {}
    for name in ("AdaptivePruningSeq2SeqTrainer",):
        cls = getattr(skeleton, name)
        original = cls.train

        def train(self, *args, **kwargs):
            seen["trainer"] = self.model.generation_config
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "train", train)
    out = tmp_path / "out"
    results = translation.main(translation_args(translation_workspace, out) + SHORT_RUN + [
        "--max_source_length", "32", "--max_target_length", "32", "--pruning_seq_len", "32",
        "--generation_max_length", "12", "--pruning_tolerance", "100", "--sequence_distillation", "true",
        "--generation_config", str(tmp_path / "generation")])
    assert results["task"]["sequence_distillation"]["num_beams"] == 2  # the teacher's beams: 1 before
    assert results["task"]["generation"]["num_beams"] == 2  # None before
    used = seen["trainer"]
    assert (used.num_beams, used.decoder_start_token_id, used.pad_token_id) == (2, 0, 0)
    assert json.loads((out / "generation_config.json").read_text())["num_beams"] == 2


def test_text_classification_vocabulary_with_rare_rows_at_low_rank(workspace, tmp_path):  # noqa: F811 - the fixture
    out = tmp_path / "out"
    vocabulary, tokenizer, rows_with = vocabulary_run(workspace, out, "--vocabulary_full_rows", "30",
                                                      "--vocabulary_rank", "4")
    factored = vocabulary["factored_embedding"]
    assert factored["full_rows"] == 30 and factored["rank"] == 4
    assert factored["parameters_after"] < factored["parameters_before"]
    folder = out / "deploy" / "vocabulary"
    model = AutoPrunedModel.from_pretrained(folder).eval()
    table = model.get_input_embeddings()
    assert type(table).__name__ == "FactoredEmbedding" and table.num_embeddings == vocabulary["vocab_size"]
    # the 30 whole rows are the special tokens and the most common tokens of the training rows
    small = AutoTokenizer.from_pretrained(folder)
    always = set(tokenizer.all_special_ids)
    ranked = sorted((i for i in rows_with if i not in always), key=lambda i: (-rows_with[i], i))
    whole = {small.convert_tokens_to_ids(t) for t in tokenizer.convert_ids_to_tokens(
        sorted(always | set(ranked[:30 - len(always)])))}
    assert {i for i in range(table.num_embeddings) if int(table.slot[i]) < 30} == whole


def test_the_dropped_token_warning_suggests_only_limits_the_run_set():
    """It told every run to pass --vocabulary_min_count 1, the default most runs had used."""
    from types import SimpleNamespace

    from recipes.deploy import more_tokens_hint

    assert more_tokens_hint(SimpleNamespace(vocabulary_min_count=1, vocabulary_max_size=None)) == "more training rows"
    assert more_tokens_hint(SimpleNamespace(vocabulary_min_count=3, vocabulary_max_size=500)) == (
        "more training rows, --vocabulary_min_count 1 (now 3) or a larger --vocabulary_max_size (now 500)")


def transcripts_one_clip_at_a_time(model, processor, audio: list, max_length: int | None = None) -> list[str]:
    """Greedy transcripts, each clip alone in its batch (no padding to blank out)."""
    texts = []
    with torch.no_grad():
        for clip in audio:
            if getattr(model.config, "is_encoder_decoder", False):
                features = processor.feature_extractor([clip], sampling_rate=16000, return_tensors="pt")
                ids = model.generate(features.input_features, max_length=max_length, num_beams=1)
                texts += processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
            else:
                values = processor.feature_extractor([clip], sampling_rate=16000, return_tensors="pt").input_values
                texts += processor.tokenizer.batch_decode(model(values).logits.argmax(-1))
    return texts


def clips_of_the_test_manifest(manifests) -> list:
    return [asr.decode_audio(row["source"], 16000, row["name"])
            for row in asr.read_manifest(str(manifests["test"]), "--test_manifest", "path", "text")]


def expected_error_rates(results, manifests, texts: list[str]) -> dict:
    from recipes.speech.data import make_normalizer, parse_normalization
    from recipes.speech.metrics import error_rates

    normalize = make_normalizer(parse_normalization(results["task"]["text_normalization"]))
    references = [row["text"] for row in asr.read_manifest(str(manifests["test"]), "--test_manifest", "path", "text")]
    return error_rates([normalize(t.strip()) for t in texts], [normalize(r) for r in references])


def whisper_deploy_run(model_dir, manifests, out, *deploy_flags) -> dict:  # noqa: F811 - manifests, a fixture
    """The speech recipe's short run of a tiny Whisper (1 s window, at most 6 tokens), with ``deploy_flags``."""
    return asr.main(["--model_name_or_path", str(model_dir), *data_flags(manifests), *PRUNING,
                     "--output_dir", str(out), "--whisper_window_seconds", "1", "--generation_max_length", "6",
                     "--pruning_seq_len", "8", "--test_before_pruning", "false", *deploy_flags])


def test_whisper_vocabulary_and_int8_copies_are_scored_on_the_test_clips(tmp_path, manifests, tiny_whisper_dir):
    """Each copy reloaded from its folder transcribes the test clips with its own tokenizer; results.json holds its
    WER / CER and their change against the pruned model's."""
    out = tmp_path / "whisper"
    results = whisper_deploy_run(tiny_whisper_dir, manifests, out, "--prune_vocabulary", "true", "--quantize", "int8")
    written = results["deploy"]["written"]
    audio = clips_of_the_test_manifest(manifests)
    for name, model in (("vocabulary", AutoPrunedModel.from_pretrained(out / "deploy" / "vocabulary").eval()),
                        ("int8", load_int8(out / "deploy" / "int8").eval())):
        processor = WhisperProcessor.from_pretrained(out / "deploy" / name)
        expected = expected_error_rates(results, manifests, transcripts_one_clip_at_a_time(model, processor, audio, 6))
        assert written[name]["test"] == pytest.approx(expected)
        assert written[name]["test_change"] == pytest.approx(
            {metric: value - results["test"][f"pruned_{metric}"] for metric, value in expected.items()})


def test_ctc_int8_copy_is_scored_on_the_test_clips(tmp_path, manifests, tiny_ctc_dir):  # noqa: F811 - the fixtures
    """The int8 copy's greedy transcripts in batches equal those of each clip alone: padding frames read as blank."""
    out = tmp_path / "ctc"
    results = asr.main(["--model_name_or_path", str(tiny_ctc_dir), *data_flags(manifests), *PRUNING,
                        "--output_dir", str(out), "--test_before_pruning", "false", "--quantize", "int8",
                        "--per_device_eval_batch_size", "4"])
    audio = clips_of_the_test_manifest(manifests)
    processor = Wav2Vec2Processor.from_pretrained(out / "deploy" / "int8")
    texts = transcripts_one_clip_at_a_time(load_int8(out / "deploy" / "int8").eval(), processor, audio)
    expected = expected_error_rates(results, manifests, texts)
    entry = results["deploy"]["written"]["int8"]
    assert entry["test"] == pytest.approx(expected)
    assert entry["test_change"] == pytest.approx(
        {metric: value - results["test"][f"pruned_{metric}"] for metric, value in expected.items()})


def test_whisper_copy_is_decoded_by_its_own_tokenizer_and_generates_as_the_test_set_did(tiny_whisper_dir):
    """score_deployed reads the copy's ids with the tokenizer it is given (a smaller vocabulary numbers tokens
    otherwise) and the references with the run's; it generates with --generation_max_length / --generation_num_beams."""
    from types import SimpleNamespace

    from hf_adaprune.deploy import prune_vocabulary
    from recipes.speech.data import AudioExamples

    processor = WhisperProcessor.from_pretrained(tiny_whisper_dir)
    big = processor.tokenizer
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    small = prune_vocabulary(model, big, ["zero two", "five"])
    assert small.convert_tokens_to_ids(small.tokenize(" zero")) != big.convert_tokens_to_ids(big.tokenize(" zero"))
    said = ["zero two", "five", "zero"]

    class Copy:
        calls, dtype = [], torch.bfloat16  # a copy of a bf16 model reads bf16 features

        def generate(self, input_features, **kwargs):
            assert input_features.dtype == self.dtype
            self.calls.append(kwargs)
            start = len(self.calls) * 2 - 2
            rows = [[small.convert_tokens_to_ids("<|startoftranscript|>")]
                    + small.encode(" " + text, add_special_tokens=False) for text in said[start:start + len(input_features)]]
            width = max(map(len, rows))
            return torch.tensor([row + [small.eos_token_id] * (width - len(row)) for row in rows])

    references = ["zero two", "five", "zero five"]  # the copy says "zero" for the last: one word of five missing
    rows = [{"audio": np.zeros(1600, np.float32), "labels": big.encode(" " + text)} for text in references]
    run = SimpleNamespace(
        training_args=SimpleNamespace(generation_max_length=7, generation_num_beams=2, per_device_eval_batch_size=2),
        processing_class=processor, datasets={"test": AudioExamples(rows)}, seq2seq=True,
        data_args=SimpleNamespace(text_normalization="lowercase,punctuation"))
    copy = Copy()
    scores = asr.score_deployed(run, copy, small)
    assert copy.calls == [{"max_length": 7, "num_beams": 2}] * 2
    assert scores["wer"] == pytest.approx(1 / 5)


def test_a_run_in_bf16_times_and_deploys_the_float32_models(workspace, tmp_path, monkeypatch):  # noqa: F811
    """--bf16 leaves accelerate's autocast wrapper on the trained model: the latency compares both models as saved
    (float32, no autocast) and the int8 / ONNX copies are made from that forward too."""
    from hf_adaprune.plain_forward import has_autocast_forward

    timed, compare_latency = [], classification.compare_latency

    def recording(models, inputs, **kwargs):
        timed.extend(has_autocast_forward(model) for model in models.values())
        return compare_latency(models, inputs, **kwargs)

    monkeypatch.setattr(classification, "compare_latency", recording)
    out = tmp_path / "out"
    flags = ["--bf16", "true", "--use_cpu", "true", "--latency_repeats", "2", "--quantize", "int8"]
    if importlib.util.find_spec("onnx") is not None:
        flags += ["--export_onnx", "true"]
    results = classification.main(classification_args(workspace, out) + SHORT_RUN + flags)
    assert timed == [False, False]
    written = results["deploy"]["written"]
    assert "error" not in results["deploy"] and written["int8"]["test"]["accuracy"] is not None
    assert "onnx" in written or "--export_onnx" not in flags


def test_the_vocabulary_copy_of_a_bf16_model_stays_bf16(workspace, tmp_path):  # noqa: F811 - the fixture
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "bf16"
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(workspace / "config")
    AutoModelForSequenceClassification.from_config(config).to(torch.bfloat16).save_pretrained(folder)
    args = classification_args(workspace, tmp_path / "out")
    args[args.index("--config_name"):args.index("--config_name") + 2] = ["--model_name_or_path", str(folder)]
    results = classification.main(args + SHORT_RUN + ["--prune_vocabulary", "true", "--quantize", "int8"])
    written = results["deploy"]["written"]
    assert json.loads((tmp_path / "out" / "deploy" / "vocabulary" / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoPrunedModel.from_pretrained(tmp_path / "out" / "deploy" / "vocabulary").dtype == torch.bfloat16
    assert written["vocabulary"]["test"]["accuracy"] is not None and written["int8"]["test"]["accuracy"] is not None
