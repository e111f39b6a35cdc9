"""``AdaptivePruningSentenceTransformerTrainer``: prune a ``SentenceTransformer`` while it trains.

The pruning mixin over ``SentenceTransformerTrainer``: heads and FFN neurons of the transformer
module (``model[0].auto_model``) are scored, masked and compacted; the loss is any sentence-transformers
loss, or by default label-free distillation to the dense model's embeddings; decisions are steered by
any sentence-transformers evaluator in the direction it declares, or by agreement with the dense
embeddings when none is given. ``save_model`` writes a complete sentence-transformers folder.
"""

from __future__ import annotations

import contextlib
import copy
import os

from accelerate.utils import broadcast_object_list
from datasets import Dataset, DatasetDict, List, Sequence
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from torch.utils.data import DataLoader

from ..hub.load import reading_checkpoint
from ..layout import read_record
from ..trainer.eval_order import first_rows
from ..trainer.report import card_path
from ..trainer.trainer import DECISION_PREFIX, PruningTrainerMixin, check_eval_rows, is_checkpoint_save
from .arguments import EVALUATOR_METRIC, SentenceTransformerPruningArguments
from .evaluation import TeacherAgreementEvaluator
from .hub import (load_pruned_sentence_transformer, save_pruned_sentence_transformer, sentence_transformer_card,
                  stock_encoder_class)
from .losses import EmbeddingDistillationLoss, embedding_distillation_loss, text_column, with_teacher_embeddings
from .modules import transformer_module

AGREEMENT_SENTENCES = 1000  # teacher agreement reads at most this many eval sentences


class AdaptivePruningSentenceTransformerTrainer(PruningTrainerMixin, SentenceTransformerTrainer):
    """A ``SentenceTransformerTrainer`` that prunes the transformer module's heads and FFN neurons.

    - ``loss``: any sentence-transformers loss (``CoSENTLoss``, ``MultipleNegativesRankingLoss``, ...).
      Without one, the model distils its own dense embeddings (MSE + cosine): ``train_dataset`` then
      needs one text column and no labels (the dense embeddings are computed here, before pruning),
      or a ``label`` column of precomputed teacher embeddings.
    - ``evaluator``: any sentence-transformers evaluator; its primary metric steers (``--pruning_metric
      evaluator``, the default) in its ``greater_is_better`` direction; it reads its own data
      (``--pruning_eval_samples`` cuts only the eval loss rows). Without one, the mean cosine to the dense
      embeddings of the first ``--pruning_eval_samples`` (up to 1,000) distinct ``eval_dataset`` sentences steers.

    Set-up errors (arguments, model, steering) are raised before any dense embedding is computed.
    """

    arguments_class = SentenceTransformerPruningArguments
    check_eval_dataset = staticmethod(lambda eval_dataset: None)  # evaluators steer; dict eval sets are theirs

    def __init__(self, model: SentenceTransformer | None = None, args: SentenceTransformerPruningArguments | None = None,
                 train_dataset=None, eval_dataset=None, loss=None, evaluator=None, **kwargs):
        if not isinstance(args, SentenceTransformerPruningArguments):
            raise TypeError(f"{type(self).__name__} needs SentenceTransformerPruningArguments, got {type(args).__name__}")
        if model is None and kwargs.get("model_init") is not None:
            raise ValueError(f"{type(self).__name__} needs model= beside model_init: the checks before training, the "
                             "default loss's dense embeddings and the agreement evaluator's teacher are computed from "
                             "it. Pass the model model_init builds (model=model_init())")
        transformer_module(model)  # an unsupported first module fails before the dense embeddings are computed
        if args.distillation:
            raise ValueError("--distillation distils a task head's logits; for a SentenceTransformer leave the loss "
                             "unset instead: the default loss distils the dense model's embeddings")
        _check_teacher_width(evaluator, model)
        if args.pruning_metric == "loss":
            if eval_dataset is None:
                raise ValueError("--pruning_metric loss steers by the eval loss, measured on an eval_dataset, and none "
                                 "is given: pass an eval_dataset of rows the loss reads, or steer by the evaluator "
                                 "(--pruning_metric evaluator, the default)")
            _check_loss_rows(eval_dataset)
        if args.pruning_metric == EVALUATOR_METRIC and evaluator is None and eval_dataset is None:
            raise ValueError("--pruning_metric evaluator needs an evaluator or an eval_dataset of sentences "
                             "(teacher agreement); or set --pruning_metric loss with a labelled eval_dataset")
        # The dense embeddings (train rows, agreement sentences) are computed once every check has passed,
        # the base trainer's pruning set-up (in super().__init__) included: here only what needs no encoding.
        distil = loss is None and train_dataset is not None
        if loss is None:
            loss = embedding_distillation_loss(model)
            if train_dataset is not None:
                _distillation_rows(train_dataset, model, args.per_device_eval_batch_size, args.prompts, encode=False)
        agreement, own_evaluator = None, evaluator is not None
        if evaluator is None and eval_dataset is not None and args.pruning_metric != "loss":
            if not isinstance(eval_dataset, Dataset):
                raise ValueError(f"without an evaluator, agreement with the dense embeddings steers, read from one "
                                 f"eval Dataset of sentences; got a {type(eval_dataset).__name__}: pass an evaluator "
                                 "(e.g. a SequentialEvaluator over your eval sets), or --pruning_metric loss")
            evaluator = agreement = _agreement_evaluator(eval_dataset, args.per_device_eval_batch_size,
                                                         args.pruning_eval_samples)
        eval_rows = None  # an eval set of sentences (class ids or scores aside) under the default loss:
        if isinstance(loss, EmbeddingDistillationLoss) and _lacks_dense_embeddings(eval_dataset):
            if agreement is not None:
                eval_dataset = None  # agreement on its sentences steers: no eval loss to compute
            else:  # an evaluator or the eval loss steers: its rows (each set's, of a dict) get dense embeddings too
                eval_rows = _eval_sentences(eval_dataset)
                _distillation_rows(eval_rows, model, args.per_device_eval_batch_size, encode=False)  # one text column
        if own_evaluator and eval_dataset is not None:  # decisions compute the eval loss on its first rows too
            _check_loss_rows(eval_dataset)
        # Agreement reads the eval sentences itself: decisions compute no eval loss beside it (a loss of one's
        # own may not read single sentences: MultipleNegativesRankingLoss, CoSENTLoss, ...)
        self._agreement_steers = agreement is not None
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         loss=loss, evaluator=evaluator, **kwargs)
        for each in _agreement_evaluators(self.evaluator):  # the trainer's own and one passed without a teacher
            if each.teacher_embeddings is None:
                each.set_teacher(model)
        if eval_rows is not None:
            rows = _distillation_rows(eval_rows, model, args.per_device_eval_batch_size, args.prompts, "eval")
            self.eval_dataset = self.preprocess_dataset(rows, dataset_name="eval")
        if distil:
            rows = _distillation_rows(train_dataset, model, args.per_device_eval_batch_size, args.prompts)
            if isinstance(rows, dict) and not isinstance(rows, DatasetDict):
                rows = DatasetDict(rows)  # as sentence-transformers turns a plain dict of datasets
            self.train_dataset = self.preprocess_dataset(rows, dataset_name="train")
        self._built_eval_dataset = self.eval_dataset

    def train(self, *args, **kwargs):
        if self.eval_dataset is not self._built_eval_dataset:
            raise ValueError(f"trainer.eval_dataset was replaced after the trainer was built: the sentences decisions "
                             f"read and the dense model's embeddings of its rows were taken from the one given then. "
                             f"Build a new {type(self).__name__} with this eval_dataset")
        return super().train(*args, **kwargs)

    # -- what is pruned and what measures it --------------------------------------------------------------
    @property
    def pruned_model(self):
        return transformer_module(self.model).auto_model

    distillation_off_note = ("this trainer takes no --distillation: without a loss of your own it distils the dense "
                             "model's embeddings")

    def _load_from_checkpoint(self, checkpoint_path: str, *args, **kwargs) -> None:
        """A checkpoint of a model pruned before this run (``load_pruned_sentence_transformer``) is read with
        hf_adaprune's classes: sentence-transformers' own reload builds the stock transformer without remote code
        and failed (resume, ``load_best_model_at_end``)."""
        if not read_record(self.pruned_model.config):
            return super()._load_from_checkpoint(checkpoint_path, *args, **kwargs)
        model = getattr(self.model, "_orig_mod", self.model)
        with reading_checkpoint():  # its masks come from its pruning_state.pt, which this trainer reads
            loaded = load_pruned_sentence_transformer(checkpoint_path, device="cpu")
        model.load_state_dict(loaded.state_dict())

    def _load_best_model(self) -> None:
        """As sentence-transformers loads the best checkpoint, but a failure stops the run: it only logged one, and
        the best checkpoint's masks were then put on the last step's weights and reported as restored."""
        checkpoint = self.state.best_model_checkpoint
        with contextlib.suppress(Exception):  # the card's "best step", as sentence-transformers sets it
            self.model.model_card_data.set_best_model_step(int(checkpoint.rsplit("-", 1)[-1]))
        self._load_from_checkpoint(checkpoint)

    def decision_rows(self) -> None:
        """Not compared on resume: the eval rows carry the dense model's embeddings, which a resumed run computes
        again (equal up to float rounding, not to the bit), and an evaluator reads data of its own."""
        return None

    def _has_decision_data(self) -> bool:
        return self.eval_dataset is not None or self.evaluator is not None

    def _setup_pruning(self, model) -> None:
        """``model`` is the ``SentenceTransformer`` (also the one ``model_init`` builds): prune its transformer."""
        self._steer_by_evaluator = self.args.pruning_metric == EVALUATOR_METRIC  # with one: checked in __init__
        super()._setup_pruning(transformer_module(model).auto_model)

    def _metric_direction(self) -> bool:
        if self._steer_by_evaluator and self.args.pruning_greater_is_better is None:
            return bool(getattr(self.evaluator, "greater_is_better", True))
        return super()._metric_direction()

    def _default_compute_metrics(self, name: str):
        return None  # sentence-transformers measures through evaluators, not compute_metrics

    def _evaluate_rows(self, rows: int | None, predictions: bool = False, eval_loss: bool | None = None) -> dict:
        """Eval loss on the first ``rows`` examples (if any) and the evaluator's metrics, keys ``pruning_eval_*``
        (with or without ``predictions``: the evaluator's metrics come with every evaluation). ``eval_loss``: whether
        the eval loss is computed (default: unless agreement with the dense embeddings steers; ``True``: as
        ``evaluate()`` computes it).

        ``evaluation_loop``, not ``evaluate()``: the evaluator runs inside it, and on_evaluate callbacks
        never see a decision evaluation; nor does the evaluator's results file (``output_dir/eval/*_results.csv``),
        which holds the user's evaluations alone.
        """
        if eval_loss is None:
            eval_loss = not self._agreement_steers
        dataset = None if self.eval_dataset is None or not eval_loss else self.preprocess_dataset(
            first_rows(self.eval_dataset, rows), dataset_name="eval")
        # the loader too reads dataloader_drop_last, and the batch size: one row per batch where the rows do not
        # split evenly over the processes, so that the repeats padding the last batches count in no batch's mean
        with self._reading_decision_rows(), self.loss_of_every_row(dataset), self._evaluator_writing_no_files():
            # no dataset: the evaluator alone, as sentence-transformers evaluates without an eval set
            loader = DataLoader([]) if dataset is None else self.get_eval_dataloader(dataset)
            metrics = self.evaluation_loop(loader, description="Pruning decision", prediction_loss_only=True,
                                           metric_key_prefix=DECISION_PREFIX).metrics
        self._on_predict_of_progress_bars(self.args, self.state, self.control, metrics)
        return metrics

    @contextlib.contextmanager
    def _evaluator_writing_no_files(self):
        """sentence-transformers' evaluation loop gives the evaluator ``output_dir/eval`` to append its results to
        (a CSV saved with the model and pushed with it): a decision evaluation gives it no folder, so that the file
        holds the user's evaluations (``evaluate()``, ``--eval_strategy``) alone, as on_evaluate does."""
        evaluator = self.evaluator
        if evaluator is None:
            yield
            return
        self.evaluator = _WithoutOutputPath(evaluator)
        try:
            yield
        finally:
            self.evaluator = evaluator

    def _decision_metric(self) -> tuple[float, dict]:
        if not self._steer_by_evaluator:
            return super()._decision_metric()
        metrics = self._evaluate_rows(self.args.pruning_eval_samples)
        return self._primary_metric(metrics), metrics

    def _primary_metric(self, metrics: dict) -> float:
        """The steering evaluator's primary metric among ``metrics`` (which also names the keys decisions read)."""
        # Some evaluators (information retrieval, sequential) name their primary metric only once they
        # have run, and every evaluator prefixes it with its name then: read it after the call.
        primary = getattr(self.evaluator, "primary_metric", None)
        if self.args.world_size > 1:  # sentence-transformers runs evaluators on rank 0 and broadcasts the metrics
            primary = broadcast_object_list([primary])[0]
        if not primary or f"{DECISION_PREFIX}_{primary}" not in metrics:
            raise KeyError(f"{type(self.evaluator).__name__} returned no primary metric ({primary!r}); name the key "
                           f"that steers with --pruning_metric; available: "
                           f"{sorted(k.removeprefix(DECISION_PREFIX + '_') for k in metrics)}")
        self.pruning_metric, self.metric_key = primary, f"eval_{primary}"
        self.decision_key = f"{DECISION_PREFIX}_{primary}"
        return float(metrics[self.decision_key])

    def _decision_rows_without_labels(self) -> list[str]:
        return []  # sentence-transformers losses need no label column (e.g. anchor / positive pairs)

    def _check_metric_available(self) -> None:
        if not self._steer_by_evaluator:
            super()._check_metric_available()
            return
        unnamed = getattr(self.evaluator, "primary_metric", None) is None
        if self.args.world_size > 1:  # rank 0's evaluator may have run (and named it): every rank does as rank 0
            unnamed = broadcast_object_list([unnamed])[0]
        best = (self.args.metric_for_best_model or "").removeprefix("eval_")
        best = best if self.args.eval_strategy != "no" else ""  # read by load_best_model_at_end, early stopping
        # decisions compute the eval loss on the first eval rows beside the evaluator (not where agreement steers);
        # evaluations (--eval_strategy) compute it on the eval set in any case
        decision_rows = self.eval_dataset is not None and not self._agreement_steers
        evaluation_rows = self.eval_dataset is not None and self.args.eval_strategy != "no"
        early = self.args.pruning_warmup_steps > 0  # with no warm-up the reference, at step 0, is the check
        if best or (evaluation_rows and self._agreement_steers) or ((unnamed or decision_rows) and early):
            # named once it has run (information retrieval, sequential), or never: run it now, so an evaluator
            # without one (or eval rows the loss cannot read) fails at step 0, not at the reference after the
            # warm-up or at the first evaluation. With the eval loss where evaluations compute it, as evaluate()
            try:
                metrics = self._evaluate_rows(self.args.pruning_eval_samples,
                                              eval_loss=True if evaluation_rows else None)
            except Exception as err:
                what = "as evaluations (--eval_strategy) read them" if evaluation_rows else \
                    "the rows pruning decisions read"
                err.add_note(f"(raised by the pruning trainer's metric check before training, which evaluates {what}: "
                             "the evaluator's, and the first --pruning_eval_samples rows of eval_dataset through the "
                             "loss)")
                raise
            self._primary_metric(metrics)
            names = self._metric_names(metrics)
            if best and best not in names:
                if best == "loss" and self._agreement_steers:
                    why = "no eval loss is computed: the eval sentences steer through the dense-agreement evaluator"
                elif best == "loss" and self.eval_dataset is None:
                    why = ("no eval_dataset is given: pass one the loss reads, or set --metric_for_best_model to "
                           "one of the evaluator's keys")
                else:
                    why = "the first evaluation would fail on it"
                raise KeyError(f"--metric_for_best_model {self.args.metric_for_best_model!r}: evaluation returns no "
                               f"'eval_{best}' ({why}); available: {names}")

    def _evaluation_names(self, metrics: dict) -> list[str]:
        """For a dict of eval sets, each set's ``<set>_<metric>``: ``evaluate()`` evaluates the sets one by one."""
        names = super()._evaluation_names(metrics)
        if isinstance(self.eval_dataset, dict):  # evaluate() names each set's metrics eval_<set>_<metric>
            names = [f"{part}_{name}" for part in self.eval_dataset for name in names]
        return names

    def _metric_names(self, metrics: dict) -> list[str]:
        return self._evaluation_names(metrics)  # an evaluator's keys, as named

    def _missing_metric_hint(self) -> str:  # prediction_loss_only is sentence-transformers' default: no hint there
        return ""  # (--pruning_metric loss without an eval_dataset is refused when the trainer is built)

    def _eval_rows(self, samples: int | None) -> dict:
        """The rows the steering metric read: the agreement's distinct sentences of the eval set, the eval loss's
        first rows; none for an evaluator of one's own, which reads its own data."""
        if self._agreement_steers:
            agreement = _agreement_evaluators(self.evaluator)[0]
            return {"eval_rows": len(agreement.sentences), "eval_unit": "sentences",
                    "eval_set_rows": getattr(agreement, "eval_set_sentences", len(agreement.sentences))}
        return {} if self._steer_by_evaluator else super()._eval_rows(samples)

    def _more_decision_rows(self) -> str:
        return "more data (the evaluator's)" if self._steer_by_evaluator else super()._more_decision_rows()

    # -- saving -----------------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints keep dense weights (masks in pruning_state.pt); any other save is a pruned ST folder."""
        if is_checkpoint_save(output_dir, _internal_call):
            return SentenceTransformerTrainer.save_model(self, output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            model = copy.deepcopy(self.model)  # keep the in-memory model trainable: compact a copy
            self._as_last_decided(transformer_module(model).auto_model)
            card = self._card(**self.card_args())
            save_pruned_sentence_transformer(model, output_dir, card=card,
                                             card_file=os.path.basename(card_path(output_dir)))
            self._files_beside_a_saved_model(output_dir)
        if self.args.push_to_hub and not _internal_call:  # as Trainer.save_model does
            self.push_to_hub(commit_message="Model save")

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          dataset=None, **kwargs) -> None:
        """The pruned model's card, with the card arguments ``Trainer.create_model_card`` takes (a README.md of the
        user's own stays, the card goes beside it). The values given are kept (each until given again): the card a
        later ``save_model()`` writes keeps them."""
        self.set_card_args(language=language, license=license, tags=tags, model_name=model_name,
                           finetuned_from=finetuned_from, dataset=dataset)
        if not self.is_world_process_zero():
            return
        with open(card_path(self.args.output_dir), "w") as f:
            f.write(self._card(**self._card_args))

    def _card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None, dataset=None,
              **unused) -> str:
        summary = self.pruning_summary()
        summary.dataset = dataset or summary.dataset
        summary.model_name = model_name or summary.model_name
        summary.base_model = finetuned_from or summary.base_model
        return sentence_transformer_card(summary, trained=self.state.global_step > 0, language=language,
                                         license=license, tags=tags,
                                         stock_class=stock_encoder_class(self.pruned_model.config))


class _WithoutOutputPath:
    """``evaluator`` called without an output folder (it writes no results file); its attributes read through."""

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1):
        return self.evaluator(model, output_path=None, epoch=epoch, steps=steps)

    def __getattr__(self, name):
        if name == "evaluator":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.evaluator, name)


def training_prompt(prompts, column: str, dataset_name: str | None = None) -> str:
    """The prompt sentence-transformers' collator puts before ``column`` of ``dataset_name`` for the training
    arguments' ``prompts`` (a string; per column; per dataset, then per column), or ``""``."""
    if isinstance(prompts, dict) and prompts:
        if dataset_name is not None and dataset_name in prompts:
            prompts = prompts[dataset_name]
        elif isinstance(next(iter(prompts.values())), dict):
            return ""
    if isinstance(prompts, str):
        return prompts
    return prompts.get(column) or "" if isinstance(prompts, dict) else ""


def _distillation_rows(train_dataset, model: SentenceTransformer, batch_size: int, prompts=None,
                       dataset_name: str | None = None, encode: bool = True):
    """The training rows of the default loss: each Dataset (of a dict of them too) gets its ``label`` column of
    dense embeddings, computed here, before pruning, from the text as training feeds it (``prompts``); one it
    already has must hold vectors, not scores. ``encode=False``: only the checks (None)."""
    if isinstance(train_dataset, dict):  # DatasetDict, or a plain dict of datasets (multi-dataset training)
        rows = {name: _distillation_rows(part, model, batch_size, prompts, name, encode)
                for name, part in train_dataset.items()}
        return type(train_dataset)(rows) if encode else None
    if not isinstance(train_dataset, Dataset):
        raise ValueError(f"without a loss the trainer distils the dense model's embeddings, computed before training "
                         f"from a datasets.Dataset of one text column; got a {type(train_dataset).__name__}: compute "
                         "them yourself (with_teacher_embeddings) into a 'label' column, or pass a loss")
    if "label" not in train_dataset.column_names:
        column = text_column(train_dataset)
        if not encode:
            return None
        prompt = training_prompt(prompts, column, dataset_name)
        return with_teacher_embeddings(train_dataset, model, batch_size, prompt)
    if not _labels_are_vectors(train_dataset):
        raise ValueError("the train set's 'label' column holds one number per row, but the default loss distils "
                         "embeddings (a 'label' of one vector per row): pass the loss your labels are for "
                         "(e.g. CoSENTLoss for similarity scores)")
    return train_dataset if encode else None


def _labels_are_vectors(dataset: Dataset) -> bool:
    """Whether ``dataset`` has a ``label`` column of one vector per row (teacher embeddings), not ids or scores."""
    return "label" in dataset.column_names and isinstance(dataset.features["label"], (List, Sequence))


def _lacks_dense_embeddings(eval_dataset) -> bool:
    """Whether an eval set (or a set of a dict of them) has rows without a ``label`` of teacher embeddings."""
    if isinstance(eval_dataset, dict):
        return any(_lacks_dense_embeddings(part) for part in eval_dataset.values())
    return isinstance(eval_dataset, Dataset) and not _labels_are_vectors(eval_dataset)


def _eval_sentences(eval_dataset):
    """The eval rows the default loss reads: each set's text columns (class ids or scores aside); a set whose
    ``label`` holds teacher embeddings as it is."""
    if isinstance(eval_dataset, dict):
        return type(eval_dataset)({name: _eval_sentences(part) for name, part in eval_dataset.items()})
    if not isinstance(eval_dataset, Dataset):
        raise ValueError(f"the default loss distils the dense embeddings of every eval set, computed before training "
                         f"from a datasets.Dataset; got a {type(eval_dataset).__name__} among them: pass Datasets, "
                         "or a loss")
    if _labels_are_vectors(eval_dataset):
        return eval_dataset
    return eval_dataset.select_columns(_string_columns(eval_dataset))


def _check_loss_rows(eval_dataset) -> None:
    """Decisions compute the eval loss: each eval set (of a dict too) must be indexable and hold rows."""
    parts = [(f"eval_dataset[{name!r}]", part) for name, part in eval_dataset.items()] \
        if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
    for name, part in parts:
        check_eval_rows(part, name)


def _string_columns(dataset: Dataset) -> list[str]:
    """The columns of text (not ids, class ids or scores)."""
    return [name for name, feature in dataset.features.items()
            if getattr(feature, "dtype", None) in ("string", "large_string")]


def _agreement_evaluators(evaluator) -> list[TeacherAgreementEvaluator]:
    """The ``TeacherAgreementEvaluator``s of ``evaluator``: itself, or those inside a list or a
    ``SequentialEvaluator``."""
    inner = evaluator if isinstance(evaluator, (list, tuple)) else getattr(evaluator, "evaluators", None)
    if isinstance(inner, (list, tuple)):
        return [found for part in inner for found in _agreement_evaluators(part)]
    return [evaluator] if isinstance(evaluator, TeacherAgreementEvaluator) else []


def _check_teacher_width(evaluator, model: SentenceTransformer) -> None:
    """Given teacher embeddings must be as wide as the model's (compared in every decision after the warm-up); also
    those of an agreement evaluator inside a list or a ``SequentialEvaluator``."""
    width = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()  # renamed in 5.x
    for each in _agreement_evaluators(evaluator):
        given = each.teacher_embeddings
        if given is not None and width is not None and given.shape[-1] != width:
            raise ValueError(f"the TeacherAgreementEvaluator's teacher_embeddings are {given.shape[-1]} wide, the "
                             f"model's embeddings {width}: compute them with the model to prune (or a teacher of its "
                             "width)")


def _agreement_evaluator(eval_dataset, batch_size: int, samples: int | None) -> TeacherAgreementEvaluator:
    """Teacher agreement on the eval set's first distinct sentences (all its text columns, in turn; at most
    ``samples`` (--pruning_eval_samples) and AGREEMENT_SENTENCES). The trainer computes the teacher embeddings
    (``set_teacher``) once its checks have passed."""
    columns = [c for c in eval_dataset.column_names if c not in ("label", "score")]
    sentences = []
    for column in columns:
        sentences += [s for s in eval_dataset[column] if isinstance(s, str)]
    if not sentences:
        text_column(eval_dataset)  # raises with what to pass
    distinct = list(dict.fromkeys(sentences))
    evaluator = TeacherAgreementEvaluator(distinct[:min(AGREEMENT_SENTENCES, samples or AGREEMENT_SENTENCES)],
                                          batch_size=batch_size)
    evaluator.eval_set_sentences = len(distinct)  # what the card says the agreement was measured on a part of
    return evaluator
