"""Pruning SentenceTransformer models: trainer, label-free distillation, steering, complete ST folders."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sentence_transformers")
from datasets import Dataset  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator  # noqa: E402
from sentence_transformers.sentence_transformer.losses import CoSENTLoss  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer  # noqa: E402
from transformers import (  # noqa: E402
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertModel,
    TrainerCallback,
)

from hf_adaprune import AutoPrunedModel, UnsupportedModelError, get_masks  # noqa: E402

from conftest import free_port  # noqa: E402
from test_distributed import TORCHRUN  # noqa: E402
from hf_adaprune.sentence_transformers import (  # noqa: E402
    AdaptivePruningSentenceTransformerTrainer,
    SentenceTransformerPruningArguments,
    TeacherAgreementEvaluator,
    embedding_distillation_loss,
    load_pruned_sentence_transformer,
    save_pruned_sentence_transformer,
    transformer_module,
)

WORDS = ("the a cat dog sat on mat ran fast slow red blue green big small man woman child plays reads sings "
         "house tree car road river walks jumps sleeps eats").split()
WORKER = os.path.join(os.path.dirname(__file__), "sentence_transformers_worker.py")


def save_tiny_encoder(folder, model_class=BertModel, config_class=BertConfig, seed=0) -> str:
    """A tiny transformers encoder with a WordPiece tokenizer over WORDS, saved to ``folder``."""
    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    torch.manual_seed(seed)
    config = config_class(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=64)
    model_class(config).save_pretrained(folder)
    # transformers 5's fast tokenizers ignore vocab_file: the vocabulary is passed as a dict
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    assert tokenizer.tokenize(WORDS[0]) == [WORDS[0]], "the tiny tokenizer must know WORDS"
    tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_sentence_transformer(folder) -> SentenceTransformer:
    """Tiny BERT + mean Pooling + Normalize, like all-MiniLM-L6-v2's three modules."""
    transformer = Transformer(folder, max_seq_length=32)
    return SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"),
                                        Normalize()], device="cpu")


def sentences(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 10))) for _ in range(n)]


def make_args(output_dir, **overrides):
    values = dict(output_dir=str(output_dir), max_steps=12, per_device_train_batch_size=8,
                  per_device_eval_batch_size=16, learning_rate=1e-3, pruning_warmup_steps=2, pruning_interval=3,
                  pruning_initial_step=0.3, pruning_tolerance=0.5, pruning_seq_len=32, use_cpu=True,
                  save_strategy="no", report_to="none", logging_steps=100, disable_tqdm=True, seed=0)
    values.update(overrides)
    return SentenceTransformerPruningArguments(**values)


def decision_loss_of_odd_rows(encoder_folder, output_dir, rows=33, **distributed) -> float:
    """The decision loss (the default distillation loss) on ``rows`` eval sentences of a tiny model whose weights
    were moved off the dense ones (so that the loss is not 0); the same on any number of processes."""
    args = make_args(output_dir, pruning_metric="loss", pruning_warmup_steps=0, pruning_criterion="magnitude",
                     **distributed)
    corpus = sentences(64)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=args,
        train_dataset=Dataset.from_dict({"sentence": corpus}), eval_dataset=Dataset.from_dict({"sentence": corpus[:rows]}))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in trainer.pruned_model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return trainer._decision_metric()[0]


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"))


def test_prune_save_and_reload_give_the_same_embeddings(encoder_folder, tmp_path):
    model = tiny_sentence_transformer(encoder_folder)
    model.prompts = {"query": "query: "}
    model.similarity_fn_name = "dot"
    corpus = sentences(64)
    # no loss, no evaluator: label-free distillation to the dense embeddings, teacher agreement steers
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path / "out"), train_dataset=Dataset.from_dict({"sentence": corpus}),
        eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}))
    assert "label" in trainer.train_dataset.column_names and trainer.evaluator.primary_metric == "teacher_mean_cosine"
    trainer.train()
    assert trainer.controller.state.ratio > 0
    inner = model[0].auto_model
    assert inner.config.adaprune, "compacted at the end: the layout is recorded"
    heads = [layer.attention.self.num_attention_heads for layer in inner.encoder.layer]
    widths = [layer.intermediate.dense.out_features for layer in inner.encoder.layer]
    assert sum(heads) < 8 or sum(widths) < 74, "something was removed"
    trainer.save_model()
    out = tmp_path / "out"

    probe = sentences(6, seed=3)
    expected = model.encode(probe, convert_to_tensor=True)
    expected_query = model.encode(probe, prompt_name="query", convert_to_tensor=True)
    stock = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    warned = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(handler)
    try:
        ours = load_pruned_sentence_transformer(out, device="cpu")
    finally:
        transformers_logger.removeHandler(handler)
    # the marked config read by the tokenizer lookup no longer warns of a model-type mismatch
    assert not [m for m in warned if "to instantiate a model of type" in m]
    for loaded in (stock, ours):
        assert [type(m).__name__ for m in loaded] == ["Transformer", "Pooling", "Normalize"]
        assert torch.allclose(loaded.encode(probe, convert_to_tensor=True), expected, atol=1e-5, rtol=0)
        assert torch.allclose(loaded.encode(probe, prompt_name="query", convert_to_tensor=True), expected_query,
                              atol=1e-5, rtol=0)
        assert loaded.prompts["query"] == "query: " and loaded.similarity_fn_name == "dot"
    assert torch.allclose(expected.norm(dim=-1), torch.ones(len(probe)), atol=1e-5), "Normalize carried over"
    # hf_adaprune's loader builds its own class, not the shipped remote code
    assert type(ours[0].auto_model).__module__.startswith("hf_adaprune")
    assert not type(stock[0].auto_model).__module__.startswith("hf_adaprune")
    # the transformer alone, with AutoPrunedModel
    features = model.tokenize(probe)
    alone = AutoPrunedModel.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(alone(**features).last_hidden_state, inner.eval()(**features).last_hidden_state,
                              atol=1e-5, rtol=0)
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    card = (out / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "SentenceTransformer(path, trust_remote_code=True)" in card
    # a reloaded folder saves again as a plain sentence-transformers folder
    ours.save(str(tmp_path / "again"))
    assert "hf_adaprune" not in (tmp_path / "again" / "modules.json").read_text()


class EvaluationRecorder(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.seen.append(dict(metrics))


def test_a_save_removes_post_training_prunes_report_of_the_model_saved_there_before(encoder_folder, tmp_path):
    """The sentence-transformers trainer's save left post_training_report.json (another model's) beside its model, as
    the other trainer's no longer did."""
    corpus = sentences(32)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path / "out", max_steps=4),
        train_dataset=Dataset.from_dict({"sentence": corpus}), eval_dataset=Dataset.from_dict({"sentence": corpus}))
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "post_training_report.json").write_text("{}")
    trainer.save_model()
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert "post_training_report.json" not in names and "training_args.bin" in names


def test_loading_a_dense_folder_as_pruned_says_to_load_it_as_it_is(encoder_folder, tmp_path):
    tiny_sentence_transformer(encoder_folder).save(str(tmp_path / "dense"))
    # it blamed a config the caller never passed before
    with pytest.raises(ValueError, match=r"holds no pruned model .*: load it with SentenceTransformer\("):
        load_pruned_sentence_transformer(tmp_path / "dense")


def test_checkpoints_carry_pruning_state_and_decisions_stay_out_of_on_evaluate(encoder_folder, tmp_path):
    model = tiny_sentence_transformer(encoder_folder)
    corpus = sentences(64)
    recorder = EvaluationRecorder()
    args = make_args(tmp_path / "out", save_strategy="steps", save_steps=6, eval_strategy="steps", eval_steps=6)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"sentence": corpus}),
        eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}), callbacks=[recorder])
    trainer.train()
    # the user's evaluations reach on_evaluate; the decisions' (pruning_eval_*) only the log
    assert len(recorder.seen) == 2 and all("eval_teacher_mean_cosine" in m for m in recorder.seen)
    assert not any(k.startswith("pruning_eval") for m in recorder.seen for k in m)
    assert any("pruning_eval_teacher_mean_cosine" in entry for entry in trainer.state.log_history)
    for step in (6, 12):
        folder = tmp_path / "out" / f"checkpoint-{step}"
        assert (folder / "modules.json").is_file(), "a checkpoint is a sentence-transformers folder"
        state = torch.load(folder / "pruning_state.pt", weights_only=True)
        assert state["masks"] is not None and state["controller"]["history"][0]["event"] == "reference"


def test_resume_mid_pruning_matches_uninterrupted_run(encoder_folder, tmp_path):
    """A sentence-transformers checkpoint resumes to the same decisions and masks as the run that wrote it."""
    corpus = Dataset.from_dict({"sentence": sentences(64)})

    def trainer_for(output_dir, **overrides):
        return AdaptivePruningSentenceTransformerTrainer(
            model=tiny_sentence_transformer(encoder_folder), train_dataset=corpus, eval_dataset=corpus.select(range(16)),
            args=make_args(output_dir, compact_at_end=False, train_sampling_strategy="sequential", **overrides))

    full = trainer_for(tmp_path / "full", save_strategy="steps", save_steps=6)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-6"
    state = torch.load(checkpoint / "pruning_state.pt", weights_only=True)
    assert state["controller"]["reference"] is not None and not state["controller"]["done"], "mid-pruning"
    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = full.controller.state_dict(), resumed.controller.state_dict()
    assert [h["event"] for h in a["history"]] == [h["event"] for h in b["history"]]
    assert [h.get("metric") for h in a["history"]] == pytest.approx([h.get("metric") for h in b["history"]], abs=1e-5)
    masks_a, masks_b = get_masks(full.pruned_model).state_dict(), get_masks(resumed.pruned_model).state_dict()
    assert all(torch.equal(masks_a[name], masks_b[name]) for name in masks_a)


class ScriptedEvaluator(SentenceEvaluator):
    """Returns the scripted values in turn: a decision's outcome depends only on the direction."""

    def __init__(self, values, greater_is_better):
        super().__init__()
        self.values = list(values)
        self.greater_is_better = greater_is_better
        self.primary_metric = "score"
        self.name = "scripted"

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        return self.prefix_name_to_metrics({"score": self.values.pop(0)}, self.name)


@pytest.mark.parametrize("greater_is_better, first_decision", [(True, "keep"), (False, "rollback")])
def test_evaluator_direction_is_respected(encoder_folder, tmp_path, greater_is_better, first_decision):
    model = tiny_sentence_transformer(encoder_folder)
    pairs = sentences(48)
    train = Dataset.from_dict({"sentence1": pairs[:24], "sentence2": pairs[24:],
                               "score": [random.Random(i).random() for i in range(24)]})
    evaluator = ScriptedEvaluator([0.50, 0.70, 0.70, 0.70, 0.70, 0.70], greater_is_better)  # +0.2 after each step
    args = make_args(tmp_path / "out", max_steps=6, pruning_tolerance=0.1, compact_at_end=False)
    trainer = AdaptivePruningSentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                                        loss=CoSENTLoss(model), evaluator=evaluator)
    assert trainer.controller.greater_is_better is greater_is_better
    trainer.train()
    events = [h["event"] for h in trainer.controller.state.history]
    assert events[:2] == ["reference", first_decision]
    assert trainer.pruning_metric == "scripted_score"


def test_first_module_must_be_a_supported_transformer(encoder_folder, tmp_path):
    albert = Transformer(save_tiny_encoder(tmp_path / "albert", AlbertModel, AlbertConfig), max_seq_length=32)
    model = SentenceTransformer(modules=[albert, Pooling(32, "mean")], device="cpu")
    corpus = Dataset.from_dict({"sentence": sentences(8)})
    with pytest.raises(UnsupportedModelError, match="Supported model types: .*bert"):
        AdaptivePruningSentenceTransformerTrainer(model=model, args=make_args(tmp_path / "a"), train_dataset=corpus,
                                                  eval_dataset=corpus)
    bert = tiny_sentence_transformer(encoder_folder)
    not_first = SentenceTransformer(modules=[Normalize(), *list(bert)], device="cpu")
    with pytest.raises(UnsupportedModelError, match=r"first module is Normalize\. Supported model types: .*bert"):
        transformer_module(not_first)
    with pytest.raises(ValueError, match="leave the loss unset instead: the default loss distils"):
        AdaptivePruningSentenceTransformerTrainer(model=bert, args=make_args(tmp_path / "d", distillation=True),
                                                  train_dataset=corpus, eval_dataset=corpus)


def test_distillation_loss_and_teacher_agreement(encoder_folder):
    model = tiny_sentence_transformer(encoder_folder).eval()
    corpus = sentences(10)
    teacher = model.encode(corpus, convert_to_tensor=True).clone()  # clone: a normal tensor, not an inference one
    features = [model.tokenize(corpus)]
    torch.set_grad_enabled(False)  # restored at the end
    student = model(features[0])["sentence_embedding"]
    shifted = teacher.roll(1, dims=0)
    cos = torch.nn.functional.cosine_similarity(student, shifted, dim=-1)
    expected = torch.nn.functional.mse_loss(student, shifted) + (1 - cos).mean()
    loss = embedding_distillation_loss(model, "mse+cosine")
    assert float(loss(features, shifted)) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss(features, teacher)) == pytest.approx(0.0, abs=1e-5)
    assert float(embedding_distillation_loss(model, "cosine")(features, shifted)) == pytest.approx(
        float((1 - cos).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="mse, cosine or mse\\+cosine"):
        embedding_distillation_loss(model, "l1")
    agreement = TeacherAgreementEvaluator(corpus, teacher=model)
    assert agreement(model)["teacher_mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    shuffled = TeacherAgreementEvaluator(corpus, teacher_embeddings=shifted)
    assert shuffled(model)["teacher_mean_cosine"] == pytest.approx(float(
        torch.nn.functional.cosine_similarity(teacher, shifted, dim=-1).mean()), abs=1e-5)
    torch.set_grad_enabled(True)


def test_unlabeled_corpus_needs_one_text_column(encoder_folder, tmp_path):
    model = tiny_sentence_transformer(encoder_folder)
    two = Dataset.from_dict({"a": sentences(4), "b": sentences(4, seed=1)})
    with pytest.raises(ValueError, match="label-free distillation reads one text column"):
        AdaptivePruningSentenceTransformerTrainer(model=model, args=make_args(tmp_path / "o"), train_dataset=two,
                                                  eval_dataset=Dataset.from_dict({"sentence": sentences(4)}))
    with pytest.raises(ValueError, match="needs an evaluator or an eval_dataset"):
        AdaptivePruningSentenceTransformerTrainer(model=model, args=make_args(tmp_path / "o"),
                                                  train_dataset=Dataset.from_dict({"sentence": sentences(4)}))


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not on PATH")
@pytest.mark.parametrize("steer", ["agreement", "sts"])
def test_two_processes_agree_on_masks(encoder_folder, tmp_path, steer):
    # sts: only rank 0 runs a sentence-transformers evaluator, whose primary metric is named once it has run
    port = str(free_port())
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", port, WORKER, encoder_folder,
           str(tmp_path), steer]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"masks_rank{r}.pt") for r in (0, 1))
    assert any(float(m.sum()) < m.numel() for m in rank0.values()), "something was pruned"
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"


def test_two_processes_count_each_of_an_odd_number_of_decision_rows_once(encoder_folder, tmp_path):
    """33 eval rows over 2 processes: the sampler repeats one; its share of a batch's mean loss was counted."""
    port = str(free_port())
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", port, WORKER, encoder_folder,
           str(tmp_path), "loss_rows"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    one_process = decision_loss_of_odd_rows(encoder_folder, tmp_path / "one")
    for rank in (0, 1):
        two_processes = json.loads((tmp_path / f"loss_rank{rank}.json").read_text())
        assert two_processes == pytest.approx(one_process, rel=1e-5)


def test_save_model_pushes_when_asked(encoder_folder, tmp_path, monkeypatch):
    import transformers.trainer

    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.append((repo_id, sorted(os.listdir(folder_path))))
            return "https://hub.invalid/commit"

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    corpus = sentences(48)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder),
        args=make_args(tmp_path / "out", push_to_hub=True, hub_model_id="tiny-st", max_steps=6),
        train_dataset=Dataset.from_dict({"sentence": corpus}), eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}))
    trainer.train()
    trainer.save_model()
    (repo_id, files), = uploads
    assert repo_id == "user/tiny-st" and {"modules.json", "config.json", "modeling_adaprune.py"} <= set(files)


def test_an_interrupted_save_leaves_the_earlier_folder_loadable(encoder_folder, tmp_path, monkeypatch):
    from transformers import modeling_utils

    out = tmp_path / "out"
    dense = tiny_sentence_transformer(encoder_folder)
    dense.save(str(out))
    expected = dense.encode(["the cat sat"], convert_to_tensor=True)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(out, max_steps=6),
        train_dataset=Dataset.from_dict({"sentence": sentences(48)}),
        eval_dataset=Dataset.from_dict({"sentence": sentences(16, seed=1)}))
    trainer.train()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_model()
    monkeypatch.undo()
    reloaded = SentenceTransformer(str(out), device="cpu")  # the dense folder, untouched: no remote code asked
    assert torch.allclose(reloaded.encode(["the cat sat"], convert_to_tensor=True), expected, atol=1e-6)


@pytest.mark.parametrize("train, message", [
    (lambda: Dataset.from_dict({"sentence": sentences(8)}).to_iterable_dataset(),
     "from a datasets.Dataset of one text column; got a IterableDataset"),
    (lambda: Dataset.from_dict({"sentence1": sentences(8), "sentence2": sentences(8, seed=1), "label": [0.5] * 8}),
     "'label' column holds one number per row, but the default loss distils embeddings"),
    (lambda: class_labelled(8),  # class ids (as GLUE SST-2): refused when built, not at the first step
     "'label' column holds one number per row, but the default loss distils embeddings"),
])
def test_default_loss_refuses_rows_it_cannot_distil(encoder_folder, tmp_path, train, message):
    with pytest.raises(ValueError, match=message):
        AdaptivePruningSentenceTransformerTrainer(model=tiny_sentence_transformer(encoder_folder),
                                                  args=make_args(tmp_path), train_dataset=train(),
                                                  eval_dataset=Dataset.from_dict({"sentence": sentences(8)}))


def test_default_loss_computes_teacher_embeddings_for_every_dataset_of_a_dict(encoder_folder, tmp_path):
    from datasets import DatasetDict

    train = DatasetDict(a=Dataset.from_dict({"sentence": sentences(24)}),
                        b=Dataset.from_dict({"text": sentences(24, seed=2)}))
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path, max_steps=6), train_dataset=train,
        eval_dataset=Dataset.from_dict({"sentence": sentences(16, seed=1)}))
    assert all(len(rows[0]["label"]) == 32 for rows in trainer.train_dataset.values())
    trainer.train()
    assert trainer.state.global_step == 6


@pytest.mark.parametrize("setting", ["model_default_prompt", "model_truncate_dim", "args_prompt",
                                     "args_prompt_per_dataset"])
def test_default_loss_targets_are_what_the_dense_model_computes_in_training(encoder_folder, tmp_path, setting):
    # the teacher rows are the dense model's own training-forward embeddings: at lr 0, before any pruning, the
    # loss is 0 (they were encoded with the model's default prompt, which training does not apply, and cut to
    # truncate_dim, which failed on a shape mismatch; the trainer's prompts were left out)
    from datasets import DatasetDict

    model = tiny_sentence_transformer(encoder_folder)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    args = {}
    train = Dataset.from_dict({"sentence": sentences(16)})
    if setting == "model_default_prompt":
        model.prompts, model.default_prompt_name = {"query": "house tree "}, "query"
    elif setting == "model_truncate_dim":
        model.truncate_dim = 16
    elif setting == "args_prompt":
        args = {"prompts": "house tree "}
    else:
        train = DatasetDict(a=train)
        args = {"prompts": {"a": {"sentence": "house tree "}}}
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path, max_steps=1, learning_rate=0.0, logging_steps=1, **args),
        train_dataset=train, eval_dataset=Dataset.from_dict({"sentence": sentences(16, seed=1)}))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 1 and abs(losses[0]) < 1e-5


def test_a_dict_of_eval_sets_needs_an_evaluator_unless_the_loss_steers(encoder_folder, tmp_path):
    from datasets import DatasetDict

    pairs = Dataset.from_dict({"sentence1": sentences(16), "sentence2": sentences(16, seed=1),
                               "score": [(i % 5) / 4 for i in range(16)]})
    with pytest.raises(ValueError, match="without an evaluator, agreement with the dense embeddings steers, read "
                                         "from one eval Dataset of sentences; got a DatasetDict"):
        AdaptivePruningSentenceTransformerTrainer(
            model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path), train_dataset=pairs,
            eval_dataset=DatasetDict(dev=pairs), loss=CoSENTLoss(tiny_sentence_transformer(encoder_folder)))
    model = tiny_sentence_transformer(encoder_folder)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path, pruning_metric="loss", max_steps=6), train_dataset=pairs,
        eval_dataset=DatasetDict(dev=pairs), loss=CoSENTLoss(model))
    assert trainer.evaluator is None  # the eval loss steers: no agreement evaluator is built
    trainer.train()
    assert trainer.state.global_step == 6


def recipe_workspace(encoder_folder, tmp_path):
    """A saved tiny sentence-transformer and an STS-B-shaped folder of random pairs."""
    model_dir = tmp_path / "st"
    tiny_sentence_transformer(encoder_folder).save(str(model_dir))
    return model_dir, write_stsb(tmp_path / "stsb")


def write_stsb(stsb):
    """An STS-B-shaped folder of random pairs (40 train, 12 dev, 12 test), as the sentence-embeddings recipe reads."""
    stsb.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 40), ("dev", 12), ("test", 12)):
        pairs = sentences(2 * n, seed=len(split))
        rows = [f"genre\tfile\t2012\t{i}\t{5 * rng.random():.2f}\t{pairs[i]}\t{pairs[n + i]}" for i in range(n)]
        (stsb / f"sts-{split}.csv").write_text("\n".join(rows) + "\n")
    return stsb


def test_recipe_on_a_tiny_model(encoder_folder, tmp_path, caplog):
    from conftest import load_recipe

    recipe = load_recipe("sentence_embeddings")
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    results = recipe.main(flags := [
        "--model_name_or_path", str(model_dir), "--stsb_dir", str(stsb), "--output_dir", str(tmp_path / "out"),
        "--objective", "cosent", "--max_steps", "8", "--per_device_train_batch_size", "8", "--pruning_warmup_steps",
        "2", "--pruning_interval", "2", "--pruning_initial_step", "0.3", "--pruning_tolerance", "1.0",
        "--pruning_seq_len", "32", "--max_seq_length", "32", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--layer_drop_baseline", "true", "--keep_layers", "0", "--throughput_batch", "8",
        "--throughput_repeats", "2", "--disable_tqdm", "true", "--eval_strategy", "steps", "--eval_steps", "4"])
    assert set(results) >= {"dense", "pruned", "layer_drop", "throughput", "pruning"}
    assert results["pruned"]["layer_flops"] < results["dense"]["layer_flops"]
    assert results["layer_drop"]["layer_flops"] == pytest.approx(results["dense"]["layer_flops"] / 2, rel=0.01)
    assert -1 <= results["pruned"]["sts_test"] <= 1
    reloaded = SentenceTransformer(str(tmp_path / "out"), trust_remote_code=True, device="cpu")
    assert reloaded.encode(["the cat sat"]).shape == (1, 32)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["throughput"]["batch_8"]["pruned"]["speedup"] > 0
    # run again over it: the evaluator's CSV (appended to by sentence-transformers at each evaluation, here those of
    # --eval_strategy: decisions write none) holds this run's rows only
    csv_files = sorted((tmp_path / "out" / "eval").glob("*.csv"))
    rows = {f.name: len(f.read_text().splitlines()) for f in csv_files}
    assert rows == {"similarity_evaluation_sts-dev-steer_results.csv": 3}  # header, steps 4 and 8
    (tmp_path / "out" / "eval" / "my_results.csv").write_text("the user's own\n")
    with caplog.at_level(logging.WARNING):
        recipe.main([*flags, "--overwrite_output_dir", "true", "--layer_drop_baseline", "false"])
    assert {f.name: len(f.read_text().splitlines()) for f in (tmp_path / "out" / "eval").glob("*.csv")} == \
        {**rows, "my_results.csv": 1}  # the user's file in eval/ stays
    assert "holds layer_drop/ from an earlier run" in caplog.text



@pytest.mark.parametrize("metric, message", [
    ("dev_spearman_cosin", r"available: \['dev_pearson_cosine', 'dev_spearman_cosine'\]\"?$")])
def test_a_metric_evaluation_lacks_is_named_with_the_keys_to_use(encoder_folder, tmp_path, metric, message):
    # the evaluator's keys as --pruning_metric takes them; no advice about prediction_loss_only (s-t's default).
    # (--pruning_metric loss without an eval_dataset is refused when the trainer is built: see below)
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    model = tiny_sentence_transformer(encoder_folder)
    rows = sentences(24, seed=3)
    evaluator = EmbeddingSimilarityEvaluator(rows[:12], rows[12:], [i / 12 for i in range(12)], name="dev")
    pairs = Dataset.from_dict({"sentence1": sentences(16), "sentence2": sentences(16, seed=1),
                               "score": [i / 16 for i in range(16)]})
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path, pruning_metric=metric, pruning_greater_is_better=True),
        train_dataset=pairs, loss=CoSENTLoss(model), evaluator=evaluator)
    with pytest.raises(KeyError, match=message) as raised:
        trainer.train()
    assert "prediction_loss_only" not in str(raised.value) and trainer.state.global_step == 0


def test_a_save_mid_ramp_holds_the_last_decided_structure(encoder_folder, tmp_path):
    """The candidate fading out is not judged yet: the saved folder holds what the last decision kept."""
    probe, seen = sentences(6, seed=3), {}

    class SaveMidRamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ramp = trainer._ramp
            if ramp is None or seen or state.global_step <= ramp.start_step:
                return
            masks = get_masks(trainer.pruned_model)
            assert any(((m > 0) & (m < 1)).any() for m in masks.masks.values()), "mid-ramp: fractional masks"
            current = masks.state_dict()
            masks.load_state_dict(trainer._accepted_masks)
            seen["decided"] = trainer.model.encode(probe, convert_to_tensor=True)
            masks.load_state_dict(current)
            trainer.save_model(str(tmp_path / "mid"))

    model = tiny_sentence_transformer(encoder_folder)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path / "out", max_steps=6, pruning_ramp_steps=3, pruning_interval=4,
                                    pruning_tolerance=1.0), callbacks=[SaveMidRamp()],
        train_dataset=Dataset.from_dict({"sentence": sentences(48)}),
        eval_dataset=Dataset.from_dict({"sentence": sentences(16, seed=1)}))
    trainer.train()
    saved = SentenceTransformer(str(tmp_path / "mid"), trust_remote_code=True, device="cpu")
    assert (saved.encode(probe, convert_to_tensor=True) - seen["decided"]).abs().max() <= 1e-5


def test_recipe_resumes_from_its_checkpoint(encoder_folder, tmp_path):
    from conftest import load_recipe

    recipe = load_recipe("sentence_embeddings")
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    flags = ["--model_name_or_path", str(model_dir), "--stsb_dir", str(stsb), "--output_dir", str(tmp_path / "out"),
             "--objective", "cosent", "--max_steps", "8", "--per_device_train_batch_size", "8",
             "--pruning_warmup_steps", "2", "--pruning_interval", "2", "--pruning_initial_step", "0.3",
             "--pruning_tolerance", "1.0", "--pruning_seq_len", "32", "--max_seq_length", "32", "--use_cpu", "true",
             "--report_to", "none", "--save_strategy", "steps", "--save_steps", "4", "--throughput_batch", "4",
             "--throughput_repeats", "1", "--disable_tqdm", "true"]
    full = recipe.main(flags)
    shutil.rmtree(tmp_path / "out" / "checkpoint-8")  # as if the run had stopped after checkpoint-4
    (tmp_path / "out" / "model.safetensors").unlink()
    # the steering metric measured another way (agreement with the dense model, other dev pairs): refused at once
    for other, message in ((["--steer", "teacher"], "--steer: checkpoint 'sts', now 'teacher'"),
                           (["--max_dev_pairs", "7"], "--max_dev_pairs: checkpoint 500, now 7")):
        with pytest.raises(recipe.RecipeError, match=re.escape(message)):
            recipe.main([*flags, *other, "--resume_from_checkpoint", "true"])
        assert not (tmp_path / "out" / "model.safetensors").exists()
    resumed = recipe.main([*flags, "--resume_from_checkpoint", "true"])  # it was refused, or ignored with overwrite
    assert resumed["pruning"] == full["pruning"]
    assert resumed["pruned"]["sts_test"] == pytest.approx(full["pruned"]["sts_test"], abs=1e-6)


def test_recipe_pushes_once_at_the_end_with_results_json(encoder_folder, tmp_path, fake_hub):
    """The recipe pushed inside save_model(), before results.json existed: it never reached the Hub."""
    from conftest import load_recipe

    recipe = load_recipe("sentence_embeddings")
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    recipe.main(["--model_name_or_path", str(model_dir), "--stsb_dir", str(stsb), "--output_dir", str(tmp_path / "out"),
                 "--objective", "cosent", "--max_steps", "4", "--per_device_train_batch_size", "8",
                 "--pruning_warmup_steps", "2", "--pruning_interval", "2", "--pruning_seq_len", "32",
                 "--max_seq_length", "32", "--use_cpu", "true", "--report_to", "none", "--throughput_batch", "4",
                 "--throughput_repeats", "1", "--disable_tqdm", "true", "--push_to_hub", "true",
                 "--hub_model_id", "me/embeddings", "--hub_token", "x"])
    (commit,) = fake_hub
    assert commit["repo_id"] == "me/embeddings"
    assert {"results.json", "modules.json", "README.md", "model.safetensors"} <= set(commit["files"]), commit["files"]
    assert "\n# embeddings\n" in commit["card"] and "# out\n" not in commit["card"]  # named after the repo


def test_recipe_layer_drop_baseline_of_a_distilbert(tmp_path):
    from conftest import load_recipe

    recipe = load_recipe("sentence_embeddings")
    folder = save_tiny_encoder(tmp_path / "distilbert", DistilBertModel, lambda **kw: DistilBertConfig(
        vocab_size=kw["vocab_size"], dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64))
    model_dir, stsb = recipe_workspace(folder, tmp_path)
    results = recipe.main([
        "--model_name_or_path", str(model_dir), "--stsb_dir", str(stsb), "--output_dir", str(tmp_path / "out"),
        "--max_steps", "4", "--per_device_train_batch_size", "8", "--pruning_warmup_steps", "2",
        "--pruning_interval", "2", "--pruning_tolerance", "1.0", "--pruning_seq_len", "32", "--max_seq_length", "32",
        "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
        "--layer_drop_baseline", "true", "--keep_layers", "1", "--throughput_batch", "4", "--throughput_repeats", "1"])
    assert results["layer_drop"]["kept_layers"] == [1]
    assert results["layer_drop"]["layer_flops"] == pytest.approx(results["dense"]["layer_flops"] / 2, rel=0.01)


@pytest.mark.parametrize("flags, message", [
    (["--output_dir", "{model}"], "is the folder the model is loaded from"),
    (["--output_dir", "{user}"], r"already holds 1 entries \(notes.txt\); choose another folder or pass "
                                 "--overwrite_output_dir true"),
    (["--max_train_samples", "0"], "--max_train_samples must be >= 1"),
    (["--max_dev_pairs", "-1"], "--max_dev_pairs must be >= 3"),
    (["--max_dev_pairs", "2"], "--max_dev_pairs must be >= 3"),
    (["--throughput_batch", "0"], "--throughput_batch must be >= 1"),
    (["--distillation_distance", "l1"], "--distillation_distance must be mse, cosine or mse\\+cosine"),
    (["--pruning_metric", "loss"], "--pruning_metric loss needs a labelled eval_dataset"),
    (["--pruning_target", "1.5"], r"--pruning_target must be in \(0, 1\)"),
    (["--post_training", "true"], "--post_training: pruning without training serves encoder classifiers of the BERT "
                                  "family and DistilBERT"),
    (["--layer_drop_baseline", "true", "--max_steps", "-1", "--num_train_epochs", "1"],
     "--layer_drop_baseline trains the baseline for the same --max_steps"),
    (["--layer_drop_baseline", "true", "--keep_layers", "0,5"], "--keep_layers 0,5: distinct indices of the model's "
                                                                "2 layers"),
    (["--layer_drop_baseline", "true", "--keep_layers", "first"], "--keep_layers must be layer indices"),
    (["--pruning_seq_len", "128"], r"--pruning_seq_len 128 exceeds the model's max_position_embeddings \(64\)"),
    (["--model_name_or_path", "{missing}"], "cannot load the model"),
    (["--model_name_or_path", "{pruned_plain}"], "holds a pruned transformers model, not a sentence-transformers "
                                                 r"folder \(no modules.json\)"),
    (["--pruning_metric", "accuracy"], "--pruning_metric 'accuracy': evaluation returns no 'eval_accuracy'"),
    (["--objective", "distillation", "--sentence_files", "{missing}"], "--sentence_files .* not found"),
    (["--objective", "distillation", "--sentence_files", "{tsv}"], "read by its 'sentence' column"),
    (["--sentence_files", "{missing}"], "--sentence_files are the unlabeled sentences of --objective distillation; "
                                        "--objective cosent trains on the scored pairs of "),
    (["--pruning_eval_samples", "3"], "--pruning_eval_samples: this recipe's decisions read the first --max_dev_pairs"),
    (["--stsb_dir", "{bad_stsb}"], r"sts-dev.csv, line 2: not an STS Benchmark row"),
    (["--stsb_dir", "{latin1_stsb}"], r"--stsb_dir file \S+sts-dev.csv, line 2: byte 0xe9 is not UTF-8 text"),
    (["--objective", "distillation", "--sentence_files", "{latin1}"],
     r"--sentence_files \S+latin1.txt, line 2: byte 0xe9 is not UTF-8 text; save the file as UTF-8"),
    (["--objective", "distillation", "--sentence_files", "{broken_gz}"],
     r"--sentence_files \S+broken.txt.gz: cannot read it \(EOFError: "),
])
def test_recipe_refuses_bad_input_before_training(encoder_folder, tmp_path, flags, message):
    from conftest import load_recipe
    from recipes.arguments import RecipeError

    recipe = load_recipe("sentence_embeddings")
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    (tmp_path / "plain.tsv").write_text("text\nhello there\n")
    bad_stsb = tmp_path / "bad_stsb"
    shutil.copytree(stsb, bad_stsb)
    lines = (bad_stsb / "sts-dev.csv").read_text().splitlines()
    (bad_stsb / "sts-dev.csv").write_text("\n".join([lines[0], "genre\tfile\t2012\t1\t3.0"] + lines[2:]) + "\n")
    latin1_stsb = tmp_path / "latin1_stsb"
    shutil.copytree(stsb, latin1_stsb)
    (latin1_stsb / "sts-dev.csv").write_bytes((lines[0] + "\n" + lines[1]).encode() + "\tcaf\xe9\n".encode("latin-1"))
    (tmp_path / "latin1.txt").write_bytes("a cat sat\nthe caf\xe9\n".encode("latin-1"))
    (tmp_path / "broken.txt.gz").write_bytes(gzip.compress(b"a cat sat\n" * 50)[:30])  # cut short
    if "{pruned_plain}" in flags:  # a pruned transformers folder (the text-classification recipe's), no modules.json
        from hf_adaprune import attach_masks, compact, save_pruned

        plain = BertModel.from_pretrained(encoder_folder)
        attach_masks(plain).set("encoder.layer.0.attention", torch.tensor([1.0, 0.0, 1.0, 1.0]))
        compact(plain)
        save_pruned(plain, tmp_path / "pruned_plain")
    places = {"model": model_dir, "user": user, "missing": tmp_path / "missing", "tsv": tmp_path / "plain.tsv",
              "pruned_plain": tmp_path / "pruned_plain",
              "bad_stsb": bad_stsb, "latin1_stsb": latin1_stsb, "latin1": tmp_path / "latin1.txt",
              "broken_gz": tmp_path / "broken.txt.gz"}
    flags = [flag.format(**places) for flag in flags]
    base = ["--model_name_or_path", str(model_dir), "--stsb_dir", str(stsb), "--output_dir", str(tmp_path / "out"),
            "--max_steps", "4", "--per_device_train_batch_size", "8", "--pruning_warmup_steps", "2",
            "--pruning_interval", "2", "--pruning_seq_len", "32", "--max_seq_length", "32", "--use_cpu", "true",
            "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]
    model_files = {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    with pytest.raises(RecipeError, match=message):
        recipe.main(base + flags)
    assert not list(tmp_path.glob("out/**/*.safetensors"))  # no model trained or written
    assert (user / "notes.txt").read_text() == "mine"
    assert {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()} == model_files


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_onnx_export_of_a_sentence_transformer_says_what_to_export(encoder_folder, tmp_path):
    pytest.importorskip("onnx")
    from hf_adaprune.deploy import export_onnx

    with pytest.raises(TypeError, match=r"For a SentenceTransformer, pass its transformer: "
                                        r"export_onnx\(st\[0\].auto_model"):
        export_onnx(tiny_sentence_transformer(encoder_folder), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_refit_is_refused_when_the_arguments_are_parsed(tmp_path):
    with pytest.raises(ValueError, match="--pruning_refit is not available for sentence-transformers"):
        make_args(tmp_path, pruning_refit=True)


@pytest.mark.parametrize("overrides, with_eval, message", [
    ({}, False, "--pruning_metric evaluator needs an evaluator or an eval_dataset of sentences"),
    ({"pruning_warmup_steps": 0}, True, "taylor importance needs gradients: set --pruning_warmup_steps >= 1"),
    ({"pruning_seq_len": 128}, True, r"--pruning_seq_len 128 exceeds the model's max_position_embeddings \(64\)"),
    ({"pruning_roles": "decoder"}, True,
     r"nothing to prune: no heads or ffn groups \(--prune both\) with roles \['decoder'\]"),
])
def test_setup_errors_come_before_any_dense_embedding(encoder_folder, tmp_path, monkeypatch, overrides, with_eval,
                                                      message):
    # label-free: the dense embeddings of the whole train set (and of the agreement sentences) take long on a big
    # corpus; a bad set-up is refused before any of them is computed
    import hf_adaprune.sentence_transformers.evaluation as evaluation_module
    import hf_adaprune.sentence_transformers.trainer as trainer_module

    def encoded(*args, **kwargs):
        raise AssertionError("dense embeddings computed before the set-up checks")

    monkeypatch.setattr(trainer_module, "with_teacher_embeddings", encoded)
    monkeypatch.setattr(evaluation_module, "encode", encoded)
    steering = dict(eval_dataset=Dataset.from_dict({"sentence": sentences(8, seed=1)})) if with_eval else {}
    with pytest.raises(ValueError, match=message):
        AdaptivePruningSentenceTransformerTrainer(
            model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path, **overrides),
            train_dataset=Dataset.from_dict({"sentence": sentences(32)}), **steering)


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


class NoPrimaryEvaluator(SentenceEvaluator):
    """Returns a score but never names its primary metric."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.calls += 1
        return {"my_score": 0.5}


def test_an_evaluator_without_primary_metric_fails_at_step_0(encoder_folder, tmp_path):
    # not at the reference after the whole warm-up: the evaluator runs once before the first step
    model = tiny_sentence_transformer(encoder_folder)
    pairs = Dataset.from_dict({"sentence1": sentences(16), "sentence2": sentences(16, seed=1),
                               "score": [i / 16 for i in range(16)]})
    counter, evaluator = StepCounter(), NoPrimaryEvaluator()
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path, pruning_warmup_steps=5), train_dataset=pairs, loss=CoSENTLoss(model),
        evaluator=evaluator, callbacks=[counter])
    with pytest.raises(KeyError, match=r"NoPrimaryEvaluator returned no primary metric \(None\); name the key that "
                                       r"steers with --pruning_metric; available: \['my_score'\]"):
        trainer.train()
    assert counter.steps == 0 and trainer.state.global_step == 0 and evaluator.calls == 1


def test_pruning_eval_samples_cuts_the_agreement_sentences(encoder_folder, tmp_path, monkeypatch):
    # the default steering reads the first --pruning_eval_samples distinct eval sentences, teacher embeddings too
    corpus = list(dict.fromkeys(sentences(80, seed=5)))[:30]
    seen = []
    call = TeacherAgreementEvaluator.__call__

    def spy(self, model, *args, **kwargs):
        seen.append(len(self.sentences))
        return call(self, model, *args, **kwargs)

    monkeypatch.setattr(TeacherAgreementEvaluator, "__call__", spy)
    train, evals = Dataset.from_dict({"sentence": sentences(48)}), Dataset.from_dict({"sentence": corpus})
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path, max_steps=6, pruning_eval_samples=10),
        train_dataset=train, eval_dataset=evals)
    assert trainer.evaluator.sentences == corpus[:10] and tuple(trainer.evaluator.teacher_embeddings.shape) == (10, 32)
    trainer.train()
    assert len(seen) >= 2 and set(seen) == {10}
    whole = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path, max_steps=6), train_dataset=train,
        eval_dataset=evals)
    assert whole.evaluator.sentences == corpus, "unset: every distinct sentence (up to 1,000)"
    with pytest.raises(RuntimeError, match=r"call set_teacher\(dense_model\) before evaluating"):
        TeacherAgreementEvaluator(corpus)(whole.model)


def test_recipe_prunes_a_folder_it_saved_further(encoder_folder, tmp_path, monkeypatch):
    """A folder an earlier run saved loads without remote code or a prompt, and is pruned again from there."""
    import builtins

    from conftest import load_recipe

    def no_prompt(*args, **kwargs):
        raise AssertionError("asked for trust_remote_code")

    monkeypatch.setattr(builtins, "input", no_prompt)
    recipe = load_recipe("sentence_embeddings")
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    flags = ["--stsb_dir", str(stsb), "--objective", "cosent", "--max_steps", "6", "--per_device_train_batch_size",
             "8", "--pruning_warmup_steps", "2", "--pruning_interval", "2", "--pruning_initial_step", "0.3",
             "--pruning_target", "0.3", "--pruning_tolerance", "1.0", "--pruning_seq_len", "32", "--max_seq_length",
             "32", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no", "--throughput_batch", "4",
             "--throughput_repeats", "1", "--disable_tqdm", "true"]
    first = recipe.main(["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "first"), *flags])
    second = recipe.main(["--model_name_or_path", str(tmp_path / "first"), "--output_dir", str(tmp_path / "second"),
                          *flags])
    assert second["dense"]["layer_flops"] == pytest.approx(first["pruned"]["layer_flops"])  # starts where it ended
    assert json.loads((tmp_path / "second" / "pruning_report.json").read_text())["start_pruned"] is True


def class_labelled(n, seed=0):
    """Rows as GLUE SST-2 has them: a sentence, a class id (``ClassLabel``), an index."""
    from datasets import ClassLabel, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]),
                         "idx": Value("int32")})
    return Dataset.from_dict({"sentence": sentences(n, seed=seed), "label": [i % 2 for i in range(n)],
                              "idx": list(range(n))}, features=features)


def test_an_eval_set_with_class_ids_is_read_for_its_sentences_by_the_default_loss(encoder_folder, tmp_path):
    """Teacher agreement on its sentences steers; its class ids are no embeddings, so no eval loss is attempted."""
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path, pruning_target=0.5),
        train_dataset=Dataset.from_dict({"sentence": sentences(48)}), eval_dataset=class_labelled(16, seed=3))
    assert trainer.eval_dataset is None
    trainer.train()
    events = [h["event"] for h in trainer.controller.state.history]
    assert events[0] == "reference" and len(events) > 1  # decisions were taken on the sentences' agreement


def test_teacher_embeddings_of_another_width_are_refused_when_the_trainer_is_built(encoder_folder, tmp_path):
    corpus = sentences(8)
    evaluator = TeacherAgreementEvaluator(corpus, teacher_embeddings=torch.randn(8, 16))
    with pytest.raises(ValueError, match="teacher_embeddings are 16 wide, the model's embeddings 32"):
        AdaptivePruningSentenceTransformerTrainer(model=tiny_sentence_transformer(encoder_folder),
                                                  args=make_args(tmp_path), evaluator=evaluator,
                                                  train_dataset=Dataset.from_dict({"sentence": corpus}))


@pytest.mark.parametrize("steer", ["evaluator", "loss"])
def test_the_default_loss_gives_an_eval_set_of_sentences_its_dense_embeddings(encoder_folder, tmp_path, steer):
    """An evaluator (or the eval loss) steers: the eval loss needs the eval sentences' dense embeddings."""
    model = tiny_sentence_transformer(encoder_folder)
    held_out = class_labelled(16, seed=3)
    expected = model.encode(held_out["sentence"], convert_to_tensor=True).clone()
    evaluator = TeacherAgreementEvaluator(sentences(8, seed=5), teacher=model) if steer == "evaluator" else None
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path, pruning_target=0.5, pruning_metric=steer),
        train_dataset=Dataset.from_dict({"sentence": sentences(48)}), eval_dataset=held_out, evaluator=evaluator)
    assert trainer.eval_dataset.column_names == ["sentence", "label"]
    assert torch.allclose(torch.tensor(trainer.eval_dataset["label"]), expected, atol=1e-5)
    trainer.train()
    assert any("pruning_eval_loss" in entry or "pruning_eval_teacher_mean_cosine" in entry
               for entry in trainer.state.log_history)


# -- Trainer features and eval sets the pruning trainer must honour or refuse ------------------------------------


def test_best_model_metric_is_checked_against_what_the_evaluator_returns(encoder_folder, tmp_path):
    """load_best_model_at_end / early stopping read metric_for_best_model at every evaluation: a key the steering
    evaluator does not return (here transformers' default, the loss, where agreement steers) fails before training."""
    corpus = sentences(64)
    best_args = dict(eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
                     load_best_model_at_end=True)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path / "loss", **best_args),
        train_dataset=Dataset.from_dict({"sentence": corpus}), eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}))
    with pytest.raises(KeyError, match=r"--metric_for_best_model 'loss': evaluation returns no 'eval_loss' \(no eval "
                                       r"loss is computed: the eval sentences steer through the dense-agreement "
                                       r"evaluator\); available: \['teacher_mean_cosine', 'teacher_min_cosine'\]"):
        trainer.train()
    assert trainer.state.global_step == 0
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder),
        args=make_args(tmp_path / "cosine", metric_for_best_model="teacher_mean_cosine", **best_args),
        train_dataset=Dataset.from_dict({"sentence": corpus}), eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}))
    trainer.train()
    assert trainer.state.global_step == 12 and trainer.state.best_metric is not None


def test_best_model_loss_without_an_eval_dataset_beside_an_evaluator_says_no_eval_dataset_is_given(encoder_folder,
                                                                                                    tmp_path):
    """load_best_model_at_end without metric_for_best_model (transformers fills in 'loss'), an evaluator of one's own
    and no eval_dataset: refused, and the reason is the missing eval_dataset; it blamed eval sentences steering
    through the dense-agreement evaluator, neither of which exists here."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    model = tiny_sentence_transformer(encoder_folder)
    rows = sentences(24, seed=3)
    evaluator = EmbeddingSimilarityEvaluator(rows[:12], rows[12:], [i / 12 for i in range(12)], name="dev")
    pairs = Dataset.from_dict({"sentence1": sentences(16), "sentence2": sentences(16, seed=1),
                               "score": [i / 16 for i in range(16)]})
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
                     load_best_model_at_end=True)
    assert args.metric_for_best_model == "loss"
    trainer = AdaptivePruningSentenceTransformerTrainer(model=model, args=args, train_dataset=pairs,
                                                        loss=CoSENTLoss(model), evaluator=evaluator)
    with pytest.raises(KeyError, match=r"--metric_for_best_model 'loss': evaluation returns no 'eval_loss' \(no "
                                       r"eval_dataset is given: pass one the loss reads, or set "
                                       r"--metric_for_best_model to one of the evaluator's keys\); available: "
                                       r"\['dev_pearson_cosine', 'dev_spearman_cosine'\]") as raised:
        trainer.train()
    assert "agreement" not in str(raised.value) and trainer.state.global_step == 0


def test_decision_evaluations_stay_out_of_the_evaluators_results_file(encoder_folder, tmp_path):
    """sentence-transformers' evaluation loop has the evaluator append a row to output_dir/eval/<name>_results.csv
    (saved and pushed with the model) at every evaluation: the decisions' (step-0 check, reference, candidates, final
    check) were written there too, among the user's, with no evaluation asked for at all. The user's stay."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    rows = sentences(24, seed=3)
    pairs = Dataset.from_dict({"sentence1": sentences(64), "sentence2": sentences(64, seed=1),
                               "score": [random.Random(i).random() for i in range(64)]})

    def train(output_dir, **overrides):
        model = tiny_sentence_transformer(encoder_folder)
        evaluator = EmbeddingSimilarityEvaluator(rows[:12], rows[12:], [i / 12 for i in range(12)], name="dev")
        trainer = AdaptivePruningSentenceTransformerTrainer(
            model=model, args=make_args(output_dir, pruning_tolerance=0.001, **overrides), train_dataset=pairs,
            loss=CoSENTLoss(model), evaluator=evaluator)
        trainer.train()
        assert len(trainer.controller.state.history) >= 3, "decisions ran"
        assert any("pruning_eval_dev_spearman_cosine" in entry for entry in trainer.state.log_history)
        return trainer

    train(tmp_path / "quiet", eval_strategy="no")
    assert not list((tmp_path / "quiet").glob("eval/*.csv")), "no evaluation was asked for"
    trainer = train(tmp_path / "evaluated", eval_strategy="steps", eval_steps=6)
    results = tmp_path / "evaluated" / "eval" / "similarity_evaluation_dev_results.csv"
    steps = [line.split(",")[1] for line in results.read_text().splitlines()[1:]]
    assert steps == ["6", "12"], "the user's evaluations, each once"
    evaluated = [entry["eval_dev_spearman_cosine"] for entry in trainer.state.log_history
                 if "eval_dev_spearman_cosine" in entry]
    written = [float(line.split(",")[3]) for line in results.read_text().splitlines()[1:]]
    assert written == pytest.approx(evaluated)
    trainer.evaluate()  # evaluate() after training writes its row as before
    assert [line.split(",")[1] for line in results.read_text().splitlines()[1:]] == ["6", "12", "12"]


def test_decisions_on_the_loss_read_every_row_under_drop_last(encoder_folder, tmp_path, monkeypatch):
    """dataloader_drop_last is meant for training batches: 20 eval rows in batches of 16 are 20 rows, not 16 (and
    the metric check's 2 rows are not dropped to none)."""
    model = tiny_sentence_transformer(encoder_folder)
    pairs = Dataset.from_dict({"sentence1": sentences(20), "sentence2": sentences(20, seed=1),
                               "score": [(i % 5) / 4 for i in range(20)]})
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path, pruning_metric="loss", dataloader_drop_last=True), train_dataset=pairs,
        eval_dataset=pairs, loss=CoSENTLoss(model))
    rows = rows_each_evaluation_reads(trainer, monkeypatch)
    trainer.train()
    assert rows[0] == 2 and set(rows[1:]) == {20} and len(rows) >= 3
    assert trainer.args.dataloader_drop_last  # the user's setting is put back


def rows_each_evaluation_reads(trainer, monkeypatch) -> list[int]:
    """The rows each of ``trainer``'s evaluation loops reads from here on, in order."""
    rows = []
    loop = trainer.evaluation_loop
    monkeypatch.setattr(trainer, "evaluation_loop", lambda loader, *a, **k: rows.append(
        sum(len(batch["label"]) for batch in loader)) or loop(loader, *a, **k))
    return rows


def test_decisions_read_every_row_after_the_users_evaluation_under_persistent_workers(encoder_folder, tmp_path,
                                                                                       monkeypatch):
    """Under persistent workers get_eval_dataloader hands back the loader cached by the user's own evaluate(),
    with its drop_last: the decisions read 16 of their 20 rows."""
    model = tiny_sentence_transformer(encoder_folder)
    pairs = Dataset.from_dict({"sentence1": sentences(20), "sentence2": sentences(20, seed=1),
                               "score": [(i % 5) / 4 for i in range(20)]})
    args = make_args(tmp_path, pruning_metric="loss", dataloader_drop_last=True, dataloader_num_workers=1,
                     dataloader_persistent_workers=True)
    trainer = AdaptivePruningSentenceTransformerTrainer(model=model, args=args, train_dataset=pairs,
                                                        eval_dataset=pairs, loss=CoSENTLoss(model))
    trainer.evaluate()  # caches its loader (16 rows under drop_last)
    rows = rows_each_evaluation_reads(trainer, monkeypatch)
    trainer.train()
    assert rows[0] == 2 and set(rows[1:]) == {20} and len(rows) >= 3
    assert trainer.args.dataloader_persistent_workers and trainer.args.dataloader_drop_last


@pytest.mark.parametrize("steer", ["loss", "evaluator"])
def test_a_dict_of_eval_sets_of_sentences_under_the_default_loss(encoder_folder, tmp_path, monkeypatch, steer):
    """Each eval set of a dict gets its dense embeddings (the default loss needs them), and --pruning_eval_samples
    cuts each set's rows, not the number of sets."""
    from datasets import DatasetDict

    model = tiny_sentence_transformer(encoder_folder)
    evals = DatasetDict(a=Dataset.from_dict({"sentence": sentences(32, seed=2)}),
                        b=Dataset.from_dict({"sentence": sentences(32, seed=3)}))
    evaluator = TeacherAgreementEvaluator(sentences(8, seed=5), teacher=model) if steer == "evaluator" else None
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path, pruning_metric=steer, pruning_eval_samples=4),
        train_dataset=Dataset.from_dict({"sentence": sentences(48)}), eval_dataset=evals, evaluator=evaluator)
    assert {name: part.column_names for name, part in trainer.eval_dataset.items()} == \
        {"a": ["sentence", "label"], "b": ["sentence", "label"]}
    cut = []
    original = trainer.preprocess_dataset
    monkeypatch.setattr(trainer, "preprocess_dataset", lambda data, **k: cut.append(
        {n: len(part) for n, part in data.items()} if k.get("dataset_name") == "eval" else None) or original(data, **k))
    trainer.train()
    assert cut and all(sizes == {"a": 4, "b": 4} for sizes in cut[1:]), cut
    assert any("pruning_eval_loss" in entry or "pruning_eval_teacher_mean_cosine" in entry
               for entry in trainer.state.log_history)


def test_bad_eval_sets_and_missing_models_are_refused_when_the_trainer_is_built(encoder_folder, tmp_path):
    from datasets import IterableDataset

    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

    model = tiny_sentence_transformer(encoder_folder)
    train = Dataset.from_dict({"sentence": sentences(16)})
    loss_args = make_args(tmp_path, pruning_metric="loss")
    streamed = IterableDataset.from_generator(lambda: iter([{"sentence": s} for s in sentences(8)]))
    with pytest.raises(ValueError, match=r"eval_dataset is an iterable IterableDataset: pruning decisions evaluate "
                                         r"its first --pruning_eval_samples rows again at every step"):
        AdaptivePruningSentenceTransformerTrainer(model=model, args=loss_args, train_dataset=train,
                                                  eval_dataset=streamed)
    with pytest.raises(ValueError, match="eval_dataset has no rows: pruning decisions measure --pruning_metric on "
                                         "its first rows"):
        AdaptivePruningSentenceTransformerTrainer(model=model, args=loss_args, train_dataset=train,
                                                  eval_dataset=Dataset.from_dict({"sentence": []}))
    with pytest.raises(ValueError, match=r"needs model= beside model_init: the checks before training"):
        AdaptivePruningSentenceTransformerTrainer(model_init=lambda: tiny_sentence_transformer(encoder_folder),
                                                  args=make_args(tmp_path), train_dataset=train)
    mixed = {"a": Dataset.from_dict({"sentence": sentences(8)}), "b": streamed}
    with pytest.raises(ValueError, match="the default loss distils the dense embeddings of every eval set, computed "
                                         "before training from a datasets.Dataset; got a IterableDataset among them"):
        AdaptivePruningSentenceTransformerTrainer(model=model, args=make_args(tmp_path), train_dataset=train,
                                                  eval_dataset=mixed, evaluator=TeacherAgreementEvaluator(
                                                      sentences(4), teacher=model))
    narrow = TeacherAgreementEvaluator(sentences(4), teacher_embeddings=torch.zeros(4, 16))
    for evaluator in ([narrow], SequentialEvaluator([narrow])):
        with pytest.raises(ValueError, match="the TeacherAgreementEvaluator's teacher_embeddings are 16 wide, the "
                                             "model's embeddings 32"):
            AdaptivePruningSentenceTransformerTrainer(model=model, args=make_args(tmp_path), train_dataset=train,
                                                      evaluator=evaluator)


RECIPE_FLAGS = ["--max_steps", "8", "--per_device_train_batch_size", "8", "--pruning_warmup_steps", "2",
                "--pruning_interval", "2", "--pruning_initial_step", "0.3", "--pruning_tolerance", "1.0",
                "--pruning_seq_len", "32", "--max_seq_length", "32", "--use_cpu", "true", "--report_to", "none",
                "--save_strategy", "no", "--throughput_batch", "4", "--throughput_repeats", "1", "--disable_tqdm", "true"]


def test_recipe_measures_the_model_as_saved_when_it_is_not_compacted(encoder_folder, tmp_path):
    """--compact_at_end false keeps the masks in memory; results.json's pruned column is the saved folder's size."""
    from conftest import load_recipe

    from recipes.sentence_embeddings import profile

    recipe = load_recipe("sentence_embeddings")
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    results = recipe.main(["--model_name_or_path", str(model_dir), "--stsb_dir", str(stsb), "--output_dir",
                           str(tmp_path / "out"), "--objective", "cosent", *RECIPE_FLAGS, "--compact_at_end", "false"])
    assert results["pruning"]["final_sparsity"] > 0
    saved = profile(SentenceTransformer(str(tmp_path / "out"), trust_remote_code=True, device="cpu"), 32)
    assert results["pruned"]["params"] == saved["params"] < results["dense"]["params"]
    assert results["pruned"]["layer_flops"] == saved["layer_flops"] < results["dense"]["layer_flops"]


def test_recipe_baseline_and_targets_train_as_the_pruning_run(encoder_folder, tmp_path, monkeypatch):
    """The layer-drop baseline trains with the pruning run's accumulation, schedule, optimizer and prompts, on as
    many sentences as those steps read; the distillation targets are the dense embeddings of the prompted text."""
    from conftest import load_recipe

    recipe = load_recipe("sentence_embeddings")
    model_dir, stsb = recipe_workspace(encoder_folder, tmp_path)
    (tmp_path / "sentences.txt").write_text("\n".join(sentences(200, seed=9)) + "\n")
    seen = {}
    real_trainer = recipe.SentenceTransformerTrainer

    class Baseline(real_trainer):
        def __init__(self, *args, **kwargs):
            seen["args"], seen["rows"] = kwargs["args"], len(kwargs["train_dataset"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(recipe, "SentenceTransformerTrainer", Baseline)
    prompted = []
    real_targets = recipe.with_teacher_embeddings
    monkeypatch.setattr(recipe, "with_teacher_embeddings",
                        lambda rows, model, batch, prompt="": prompted.append(prompt) or real_targets(rows, model,
                                                                                                     batch, prompt))
    recipe.main(["--model_name_or_path", str(model_dir), "--stsb_dir", str(stsb), "--output_dir",
                 str(tmp_path / "out"), "--objective", "distillation", "--sentence_files", str(tmp_path / "sentences.txt"),
                 *RECIPE_FLAGS, "--gradient_accumulation_steps", "2", "--lr_scheduler_type", "constant",
                 "--max_grad_norm", "0.5", "--prompts", "query: ", "--layer_drop_baseline", "true",
                 "--keep_layers", "0"])
    args = seen["args"]
    assert args.gradient_accumulation_steps == 2 and args.lr_scheduler_type == "constant"
    assert args.max_grad_norm == 0.5 and args.prompts == "query: "
    assert seen["rows"] == 8 * 8 * 2  # max_steps x batch x accumulation
    assert prompted == ["query: ", "query: "]  # the pruning run's targets and the baseline's


def test_best_model_metric_of_a_dict_of_eval_sets_names_one_set(encoder_folder, tmp_path):
    """With a dict of eval sets evaluate() names each set's metrics eval_<set>_<metric>: such a name is taken, the
    unprefixed one (which no evaluation returns) refused before training with the names to use."""
    from datasets import DatasetDict

    evals = DatasetDict(a=Dataset.from_dict({"sentence": sentences(32, seed=2)}),
                        b=Dataset.from_dict({"sentence": sentences(32, seed=3)}))

    def trainer_for(best, folder):
        model = tiny_sentence_transformer(encoder_folder)
        return AdaptivePruningSentenceTransformerTrainer(
            model=model, args=make_args(tmp_path / folder, pruning_eval_samples=4, eval_strategy="steps",
                                        eval_steps=3, save_strategy="steps", save_steps=3,
                                        load_best_model_at_end=True, metric_for_best_model=best),
            train_dataset=Dataset.from_dict({"sentence": sentences(48)}), eval_dataset=evals,
            evaluator=TeacherAgreementEvaluator(sentences(8, seed=5), teacher=model))

    trainer = trainer_for("eval_a_loss", "named")
    trainer.train()
    assert trainer.state.best_metric is not None
    with pytest.raises(KeyError, match=r"--metric_for_best_model 'loss': evaluation returns no 'eval_loss' \(the first "
                                       r"evaluation would fail on it\); available: \['a_loss', "):
        trainer_for("loss", "unnamed").train()


def test_cards_keep_a_users_readme_take_the_card_arguments_and_say_when_nothing_was_trained(encoder_folder,
                                                                                            tmp_path, caplog):
    """save_model() wrote the card over the user's README.md, create_model_card dropped license / language / tags /
    finetuned_from, and a save before train() said "Fine-tuned": as the base trainer does, now."""
    from huggingface_hub import ModelCard

    from hf_adaprune.trainer.report import CARD_BESIDE_USER_README

    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("# My notes\n\nDo not lose these.\n")
    corpus = sentences(48)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(out, max_steps=6),
        train_dataset=Dataset.from_dict({"sentence": corpus}), eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}))
    trainer.save_model()  # before train(): nothing of a run to report
    assert (out / "README.md").read_text() == "# My notes\n\nDo not lose these.\n"
    assert "saved before training" in (out / CARD_BESIDE_USER_README).read_text()
    assert "is not a model card hf_adaprune wrote" in caplog.text
    trainer.train()
    trainer.create_model_card(license="mit", language="en", tags=["my-tag"],
                              finetuned_from="sentence-transformers/all-MiniLM-L6-v2")
    assert (out / "README.md").read_text() == "# My notes\n\nDo not lose these.\n"
    card = ModelCard.load(out / CARD_BESIDE_USER_README)
    data = card.data.to_dict()
    assert (data["license"], data["language"], data["base_model"]) == ("mit", "en",
                                                                       "sentence-transformers/all-MiniLM-L6-v2")
    assert {"my-tag", "hf_adaprune", "sentence-transformers"} <= set(data["tags"])
    assert "saved before training" not in card.text
    trainer.save_model()  # a later save keeps what create_model_card was given (it wrote a card without it)
    assert ModelCard.load(out / CARD_BESIDE_USER_README).data.to_dict() == data


def test_throughput_counts_the_sentences_it_timed(encoder_folder):
    """A batch larger than the sentences there are was counted as the batch asked (sentences/s overstated)."""
    from conftest import load_recipe

    recipe = load_recipe("sentence_embeddings")
    model = tiny_sentence_transformer(encoder_folder)
    result = recipe.throughput({"dense": model}, sentences(3), batch=64, repeats=2)["dense"]
    assert result["batch"] == 3
    assert result["sentences_per_s"] == pytest.approx(3 / (result["median_ms"] / 1000))


# -- T5 encoders, agreement beside a loss of one's own, streamed eval sets, the eval loss without eval rows ----------


def save_tiny_t5_encoder(folder) -> str:
    """A tiny T5 encoder (sentence-t5 / GTR layout: sentence-transformers loads t5 as T5EncoderModel) with the
    WordPiece tokenizer over WORDS, saved to ``folder``."""
    from transformers import T5Config, T5EncoderModel

    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0)
    T5EncoderModel(config).save_pretrained(folder)
    BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(folder)
    return str(folder)


def test_a_pruned_t5_encoder_reloads_with_load_pruned_sentence_transformer(tmp_path, caplog):
    """The saved T5EncoderModel was rebuilt as a T5Model (AutoModel's t5 class), whose forward wants decoder inputs;
    stock sentence-transformers builds transformers' own T5EncoderModel for any T5 config, the saved remote one
    included, so it cannot read the pruned shapes: the save says so, and the card shows the loader that works."""
    model = tiny_sentence_transformer(save_tiny_t5_encoder(tmp_path / "t5"))
    assert type(model[0].auto_model).__name__ == "T5EncoderModel"
    corpus = sentences(64)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path / "out", pruning_target=0.5),
        train_dataset=Dataset.from_dict({"sentence": corpus}), eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}))
    trainer.train()
    assert trainer.controller.state.ratio > 0
    with caplog.at_level(logging.WARNING):
        trainer.save_model()
    probe = sentences(6, seed=3)
    expected = model.eval().encode(probe, convert_to_tensor=True)
    loaded = load_pruned_sentence_transformer(tmp_path / "out", device="cpu")
    assert type(loaded[0].auto_model).__name__ == "T5EncoderModel"
    assert (loaded.encode(probe, convert_to_tensor=True) - expected).abs().max() <= 1e-5
    assert re.search(r"SentenceTransformer\(folder, trust_remote_code=True\) cannot load it: .*T5EncoderModel.*"
                     r"load it with hf_adaprune.sentence_transformers.load_pruned_sentence_transformer\(folder\)",
                     caplog.text)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "model = load_pruned_sentence_transformer(path)" in card
    assert "SentenceTransformer(path, trust_remote_code=True)" not in card
    # a BERT folder says nothing of the kind (covered above: the stock loader reads it)
    caplog.clear()
    bert = tiny_sentence_transformer(save_tiny_encoder(tmp_path / "bert"))
    with caplog.at_level(logging.WARNING):
        save_pruned_sentence_transformer(bert, tmp_path / "bert_out")
    assert "load_pruned_sentence_transformer" not in caplog.text


def test_agreement_steering_beside_a_loss_of_ones_own_computes_no_eval_loss(encoder_folder, tmp_path):
    """Agreement with the dense embeddings of the eval sentences steers; the decisions computed an eval loss on those
    single sentences too, which MultipleNegativesRankingLoss cannot read: train() failed after the warm-up."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = tiny_sentence_transformer(encoder_folder)
    corpus = sentences(96)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path / "out", pruning_warmup_steps=5),
        train_dataset=Dataset.from_dict({"anchor": corpus[:48], "positive": corpus[48:]}),
        eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}), loss=MultipleNegativesRankingLoss(model))
    assert trainer.evaluator.primary_metric == "teacher_mean_cosine"
    trainer.train()
    decisions = [entry for entry in trainer.state.log_history if "pruning_eval_teacher_mean_cosine" in entry]
    assert decisions and not any("pruning_eval_loss" in entry for entry in decisions)
    assert trainer.state.global_step == 12
    # evaluations (--eval_strategy) compute the eval loss on the eval set as sentence-transformers does: the loss
    # cannot read these rows, which is said at step 0, not at the first evaluation
    counter = StepCounter()
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path / "evaluated", pruning_warmup_steps=5, eval_strategy="steps",
                                    eval_steps=6), callbacks=[counter],
        train_dataset=Dataset.from_dict({"anchor": corpus[:48], "positive": corpus[48:]}),
        eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}), loss=MultipleNegativesRankingLoss(model))
    with pytest.raises(ValueError, match="Expected at least 2 embeddings") as raised:
        trainer.train()
    assert "as evaluations (--eval_strategy) read them" in "\n".join(getattr(raised.value, "__notes__", []))
    assert counter.steps == 0


def test_an_evaluator_named_up_front_still_gets_the_eval_rows_checked_at_step_0(encoder_folder, tmp_path):
    """An evaluator of one's own steers and the decisions compute the eval loss on the eval rows too: rows the loss
    cannot read fail at step 0, not at the reference after the warm-up (TeacherAgreementEvaluator names its primary
    metric up front, so nothing was evaluated before then)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = tiny_sentence_transformer(encoder_folder)
    corpus = sentences(96)
    counter = StepCounter()
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path / "out", pruning_warmup_steps=5), callbacks=[counter],
        train_dataset=Dataset.from_dict({"anchor": corpus[:48], "positive": corpus[48:]}),
        eval_dataset=Dataset.from_dict({"sentence": corpus[:16]}), loss=MultipleNegativesRankingLoss(model),
        evaluator=TeacherAgreementEvaluator(corpus[:8], teacher=model))
    with pytest.raises(ValueError, match="Expected at least 2 embeddings") as raised:
        trainer.train()
    assert "evaluates the rows pruning decisions read" in "\n".join(getattr(raised.value, "__notes__", []))
    assert counter.steps == 0 and trainer.state.global_step == 0


@pytest.mark.parametrize("evaluator_kind", ["agreement", "similarity"])
def test_a_streamed_eval_set_the_decisions_read_is_refused_when_the_trainer_is_built(encoder_folder, tmp_path,
                                                                                      evaluator_kind):
    """An evaluator steers and the decisions compute the eval loss on the first --pruning_eval_samples eval rows:
    a streamed eval set (or a streamed part of a dict) gave a bare TypeError (no len()) during training."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    model = tiny_sentence_transformer(encoder_folder)
    corpus = sentences(96)
    pairs = Dataset.from_dict({"sentence1": corpus[:32], "sentence2": corpus[32:64],
                               "score": [(i % 5) / 4 for i in range(32)]})
    evaluator = TeacherAgreementEvaluator(corpus[:16], teacher=model) if evaluator_kind == "agreement" else \
        EmbeddingSimilarityEvaluator(corpus[:8], corpus[8:16], [i / 8 for i in range(8)], name="dev")
    args = make_args(tmp_path / "out", pruning_eval_samples=4, pruning_warmup_steps=5)
    for eval_dataset, name in ((pairs.to_iterable_dataset(), "eval_dataset"),
                               ({"a": pairs, "b": pairs.to_iterable_dataset()}, r"eval_dataset\['b'\]")):
        with pytest.raises(ValueError, match=rf"{name} is an iterable IterableDataset: pruning decisions evaluate its "
                                             r"first --pruning_eval_samples rows again at every step, which needs a "
                                             r"map-style dataset"):
            AdaptivePruningSentenceTransformerTrainer(model=model, args=args, train_dataset=pairs,
                                                      eval_dataset=eval_dataset, loss=CoSENTLoss(model),
                                                      evaluator=evaluator)


@pytest.mark.parametrize("own_loss", [False, True])
def test_the_eval_loss_steering_without_an_eval_dataset_is_refused_before_any_dense_embedding(
        encoder_folder, tmp_path, monkeypatch, own_loss):
    """--pruning_metric loss with an evaluator but no eval_dataset: built (the default loss computing the dense
    embeddings of every train row first), then refused only by train()."""
    import hf_adaprune.sentence_transformers.trainer as trainer_module

    def encoded(*args, **kwargs):
        raise AssertionError("dense embeddings computed before the set-up checks")

    monkeypatch.setattr(trainer_module, "with_teacher_embeddings", encoded)
    model = tiny_sentence_transformer(encoder_folder)
    if own_loss:
        train = Dataset.from_dict({"sentence1": sentences(16), "sentence2": sentences(16, seed=1),
                                   "score": [i / 16 for i in range(16)]})
        extra = dict(loss=CoSENTLoss(model))
    else:
        train, extra = Dataset.from_dict({"sentence": sentences(32)}), {}
    with pytest.raises(ValueError, match=r"--pruning_metric loss steers by the eval loss, measured on an eval_dataset, "
                                         r"and none is given"):
        AdaptivePruningSentenceTransformerTrainer(
            model=model, args=make_args(tmp_path, pruning_metric="loss"), train_dataset=train,
            evaluator=TeacherAgreementEvaluator(sentences(8), teacher=model), **extra)


def test_a_sentence_transformer_with_a_factored_vocabulary_reloads_with_both_loaders(encoder_folder, tmp_path):
    from hf_adaprune.deploy import factor_embeddings, prune_vocabulary

    model = tiny_sentence_transformer(encoder_folder)
    texts = sentences(60)
    model[0].processor = prune_vocabulary(model[0].auto_model, model.tokenizer, texts)
    factor_embeddings(model[0].auto_model, model.tokenizer, texts, full_rows=12, rank=4)
    expected = model.encode(texts[:5], convert_to_tensor=True)
    save_pruned_sentence_transformer(model, tmp_path / "st")
    for loaded in (load_pruned_sentence_transformer(tmp_path / "st", device="cpu"),
                   SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True, device="cpu")):
        assert type(loaded[0].auto_model.get_input_embeddings()).__name__ == "FactoredEmbedding"
        assert (loaded.encode(texts[:5], convert_to_tensor=True) - expected).abs().max() <= 1e-5


def test_an_agreement_evaluator_given_without_a_teacher_gets_the_dense_model(encoder_folder, tmp_path):
    # its docstring said the trainer sets the teacher; only the trainer's own got it, and a given one failed with
    # "has no teacher embeddings" at the reference, after the whole warm-up
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

    corpus = sentences(48)
    given = TeacherAgreementEvaluator(sentences(12, seed=5), name="given")
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path, max_steps=8),
        train_dataset=Dataset.from_dict({"sentence": corpus}), evaluator=SequentialEvaluator([given]))
    assert given.teacher_embeddings is not None
    assert given(trainer.model)["given_mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    trainer.train()
    assert trainer.controller.state.reference is not None


def test_train_refuses_a_model_another_trainer_masked_and_a_replaced_eval_dataset(encoder_folder, tmp_path):
    model = tiny_sentence_transformer(encoder_folder)
    corpus, dev = Dataset.from_dict({"sentence": sentences(48)}), Dataset.from_dict({"sentence": sentences(16, 5)})
    first = AdaptivePruningSentenceTransformerTrainer(model=model, args=make_args(tmp_path / "a", compact_at_end=False),
                                                      train_dataset=corpus, eval_dataset=dev)
    second = AdaptivePruningSentenceTransformerTrainer(model=model, args=make_args(tmp_path / "b"),
                                                       train_dataset=corpus, eval_dataset=dev)
    third = AdaptivePruningSentenceTransformerTrainer(model=tiny_sentence_transformer(encoder_folder),
                                                      args=make_args(tmp_path / "c"), train_dataset=corpus,
                                                      eval_dataset=dev)
    first.train()
    assert first.controller.state.selected > 0
    # its reference was measured on the first run's pruned model and reported as the dense one
    with pytest.raises(ValueError, match="the model's pruning masks already remove [0-9]+ heads"):
        second.train()
    third.eval_dataset = Dataset.from_dict({"sentence": sentences(16, 9)})  # decisions kept reading the first
    with pytest.raises(ValueError, match="trainer.eval_dataset was replaced after the trainer was built"):
        third.train()


def test_a_card_save_pruned_sentence_transformer_generated_is_replaced_by_a_later_run_s(encoder_folder, tmp_path):
    # untagged, it was kept as the user's README.md and the pruned model's card went to README.hf_adaprune.md
    save_pruned_sentence_transformer(tiny_sentence_transformer(encoder_folder), tmp_path)
    trainer = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path, max_steps=8),
        train_dataset=Dataset.from_dict({"sentence": sentences(48)}),
        eval_dataset=Dataset.from_dict({"sentence": sentences(16, 5)}))
    trainer.train()
    trainer.save_model()
    assert not (tmp_path / "README.hf_adaprune.md").exists()
    assert "Pruned from its base model" in (tmp_path / "README.md").read_text()


def test_distillation_options_are_named_as_unused_by_this_trainer(encoder_folder, tmp_path, caplog):
    # the warning advised --distillation true, which this trainer refuses
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        AdaptivePruningSentenceTransformerTrainer(
            model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path, distillation_alpha=0.3),
            train_dataset=Dataset.from_dict({"sentence": sentences(48)}),
            eval_dataset=Dataset.from_dict({"sentence": sentences(16, 5)}))
    assert "--distillation_alpha 0.3 not read: --distillation is off (this trainer takes no --distillation" in caplog.text


def test_a_model_pruned_before_resumes_and_restores_its_best_checkpoint(encoder_folder, tmp_path):
    # its checkpoints need hf_adaprune's classes: sentence-transformers' reload failed the resume, and under
    # load_best_model_at_end only logged the failure while the best checkpoint's masks went on the last weights
    from hf_adaprune.hub.load import reading_checkpoint

    corpus = Dataset.from_dict({"sentence": sentences(64)})
    first = AdaptivePruningSentenceTransformerTrainer(model=tiny_sentence_transformer(encoder_folder),
                                                      args=make_args(tmp_path / "first"), train_dataset=corpus,
                                                      eval_dataset=corpus.select(range(16)))
    first.train()
    save_pruned_sentence_transformer(first.model, tmp_path / "pruned")

    def trainer_for(out, **overrides):
        return AdaptivePruningSentenceTransformerTrainer(
            model=load_pruned_sentence_transformer(tmp_path / "pruned", device="cpu"), train_dataset=corpus,
            eval_dataset=corpus.select(range(16)),
            args=make_args(out, compact_at_end=False, train_sampling_strategy="sequential", **overrides))

    full = trainer_for(tmp_path / "full", save_strategy="steps", save_steps=6)
    full.train()
    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))
    masks = (get_masks(full.pruned_model).state_dict(), get_masks(resumed.pruned_model).state_dict())
    assert masks[0].keys() == masks[1].keys() and all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])

    best = trainer_for(tmp_path / "best", eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
                       load_best_model_at_end=True, metric_for_best_model="teacher_mean_cosine")
    best.train()
    assert not best.state.best_model_checkpoint.endswith(f"-{best.state.global_step}")  # not the last weights
    with reading_checkpoint():
        restored = load_pruned_sentence_transformer(best.state.best_model_checkpoint, device="cpu").state_dict()
    assert all(torch.equal(value, restored[key]) for key, value in best.model.state_dict().items())


def test_save_pruned_sentence_transformer_keeps_the_user_s_readme_and_files_in_module_folders(encoder_folder,
                                                                                              tmp_path, caplog):
    """Into a folder with a README.md of the user's own and notes inside a module folder: the generated card went
    over their README.md and the module folder was replaced whole. As the trainers' saves do, the card is written
    beside their README (README.hf_adaprune.md), and a module folder takes the new files beside theirs."""
    model = tiny_sentence_transformer(encoder_folder)
    save_pruned_sentence_transformer(model, tmp_path)
    module_folders = [p for p in tmp_path.iterdir() if p.is_dir() and p.name[:1].isdigit()]
    assert module_folders, "a module folder (1_Pooling)"
    (tmp_path / "README.md").write_text("# my notes\n")
    (module_folders[0] / "my_notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        save_pruned_sentence_transformer(tiny_sentence_transformer(encoder_folder), tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my notes\n"
    assert "sentence-transformers" in (tmp_path / "README.hf_adaprune.md").read_text()
    assert (module_folders[0] / "my_notes.txt").read_text() == "mine"
    assert load_pruned_sentence_transformer(str(tmp_path)).encode(["a test"]).shape[0] == 1


def test_the_card_sentence_transformers_wrote_for_the_dense_model_is_replaced(encoder_folder, tmp_path, caplog):
    """A folder the dense model was saved to with model.save(): its generated card (library_name
    sentence-transformers) describes the dense model; the pruned model's card replaces it, named in a warning."""
    model = tiny_sentence_transformer(encoder_folder)
    model.save(str(tmp_path))
    assert "sentence-transformers" in (tmp_path / "README.md").read_text()
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        save_pruned_sentence_transformer(tiny_sentence_transformer(encoder_folder), tmp_path)
    assert not (tmp_path / "README.hf_adaprune.md").exists()
    assert "hf_adaprune" in (tmp_path / "README.md").read_text()
    assert "is a card sentence-transformers' save wrote, of the model before pruning" in caplog.text


def test_the_card_names_the_rows_the_agreement_read_and_none_for_an_evaluator_of_ones_own(encoder_folder, tmp_path):
    """The card labelled an evaluator's metric (read on its own data) with the eval loss rows' cut, and the
    agreement's metric, read on 8 of 48 sentences, as the eval set's."""

    class Constant(SentenceEvaluator):
        def __init__(self):
            super().__init__()
            self.greater_is_better, self.primary_metric, self.name = True, "score", "mine"

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            return self.prefix_name_to_metrics({"score": 0.7}, self.name)

    corpus = sentences(96)
    agreement = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path / "a", pruning_eval_samples=8),
        train_dataset=Dataset.from_dict({"sentence": corpus}),
        eval_dataset=Dataset.from_dict({"sentence": list(dict.fromkeys(corpus))[:48]}))
    agreement.train()
    report = json.loads((tmp_path / "a" / "pruning_report.json").read_text())
    assert (report["eval_rows"], report["eval_set_rows"], report["eval_unit"]) == (8, 48, "sentences")
    agreement.save_model()
    assert "| teacher_mean_cosine (first 8 of 48 eval sentences) |" in (tmp_path / "a" / "README.md").read_text()
    model = tiny_sentence_transformer(encoder_folder)
    scores = [random.Random(i).random() for i in range(48)]  # CoSENT learns nothing from equal scores
    pairs = Dataset.from_dict({"sentence1": corpus[:48], "sentence2": corpus[48:], "score": scores})
    own = AdaptivePruningSentenceTransformerTrainer(
        model=model, args=make_args(tmp_path / "b", pruning_eval_samples=8, max_steps=6), train_dataset=pairs,
        eval_dataset=pairs, loss=CoSENTLoss(model), evaluator=Constant())
    own.train()
    own.save_model()
    report = json.loads((tmp_path / "b" / "pruning_report.json").read_text())
    assert report["eval_rows"] is None and "| mine_score (eval) |" in (tmp_path / "b" / "README.md").read_text()
    own.save_model(str(tmp_path / "elsewhere"))  # a finished run's report goes with its model
    assert json.loads((tmp_path / "elsewhere" / "pruning_report.json").read_text()) == report
    again = AdaptivePruningSentenceTransformerTrainer(
        model=tiny_sentence_transformer(encoder_folder), args=make_args(tmp_path / "b", pruning_eval_samples=8),
        train_dataset=pairs, eval_dataset=pairs, loss=CoSENTLoss(model), evaluator=Constant())
    again.save_model()  # before its run ended: the earlier run's report goes
    assert not (tmp_path / "b" / "pruning_report.json").exists()


def test_a_reference_at_the_floor_of_an_evaluators_metric_points_at_its_data(encoder_folder, tmp_path, caplog):
    """The floor warning advised pruning_eval_samples, which an evaluator of one's own does not read."""

    class Zero(SentenceEvaluator):
        def __init__(self):
            super().__init__()
            self.greater_is_better, self.primary_metric, self.name = True, "accuracy", ""

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            return {"accuracy": 0.0}

    model = tiny_sentence_transformer(encoder_folder)
    pairs = sentences(48)
    train = Dataset.from_dict({"sentence1": pairs[:24], "sentence2": pairs[24:],
                               "score": [random.Random(i).random() for i in range(24)]})
    trainer = AdaptivePruningSentenceTransformerTrainer(model=model, args=make_args(tmp_path, max_steps=6),
                                                        train_dataset=train, loss=CoSENTLoss(model), evaluator=Zero())
    with caplog.at_level(logging.WARNING, logger="hf_adaprune"):
        trainer.train()
    assert "the lowest it can measure" in caplog.text
    assert "Decide on more data (the evaluator's), or train longer before the reference" in caplog.text
