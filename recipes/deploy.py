"""The recipes' deployment options: deployed copies of the pruned model, written next to it.

``--prune_vocabulary``, ``--quantize int8``, ``--export_onnx`` and ``--export_ctranslate2`` write, after
training, into ``OUTPUT_DIR/deploy/`` (the pruned model in ``OUTPUT_DIR`` itself is left as saved)::

    vocabulary/    the pruned model keeping only the tokens of the training data (Hub format, tokenizer inside;
                   with ``--decoder_vocabulary`` a Marian decoder keeps only the targets' tokens; with
                   ``--prune_positions`` an encoder keeps only the position rows of ``--max_seq_length`` tokens;
                   with ``--vocabulary_full_rows K --vocabulary_rank r`` the rows of all but its K most common
                   tokens are stored at rank r)
    int8/          int8 weights (``save_int8``; reload with ``hf_adaprune.load_int8``)
    onnx/          ONNX graphs (``export_onnx``); with ``--quantize int8`` also ``*.int8.onnx`` (``quantize_onnx``)
    ctranslate2/   a CTranslate2 model (``export_ctranslate2``; Whisper and Marian)

With ``--prune_vocabulary`` the other three start from the smaller-vocabulary model. A subfolder an earlier
run left that this run does not write is named in a warning (:func:`folders_not_written`). What was written
(folders, bytes, vocabulary sizes) goes into results.json under ``deploy``, with the test metrics of every copy
where the recipe scores them (``Task.score_deployed``: text classification, translation, ASR, language modeling
(a copy whose smaller vocabulary splits the test text otherwise is not scored there); the ONNX int8 graphs
under ``onnx`` -> ``int8``; why a copy is not scored under ``not_scored``, a scoring error under ``test_error``,
:func:`score_entry`). A request the backend cannot
serve (vocabulary pruning of a model without token embeddings or of a tokenizer type it does not know, ONNX
of an audio-frame model, CTranslate2 of a family other than Whisper and Marian, a missing package), and a
``--vocabulary_min_count`` no token of the training rows reaches, fail before training. results.json is written
even when a deployed copy fails (:func:`recipes.skeleton.deploy_and_save`).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import os
from pathlib import Path

from .arguments import RecipeError

logger = logging.getLogger("hf_adaprune.recipes")

DEPLOY_DIR = "deploy"
# warn when more than this share of the validation rows hold tokens --prune_vocabulary dropped
DROPPED_TOKEN_ROWS_WARNING = 0.05
QUANTIZE_CHOICES = ("int8",)
IGNORED_LABEL = -100  # padding of label sequences, not a token


def requested(data_args) -> bool:
    return bool(data_args.prune_vocabulary or data_args.quantize or data_args.export_onnx
                or data_args.export_ctranslate2)


def folders_not_written(data_args) -> list[str]:
    """The subfolders of ``OUTPUT_DIR/deploy`` that :func:`deploy` writes only for options ``data_args`` leaves off."""
    written = {"vocabulary": data_args.prune_vocabulary, "int8": data_args.quantize == "int8",
               "onnx": data_args.export_onnx, "ctranslate2": data_args.export_ctranslate2}
    return [name for name, asked in written.items() if not asked]


def check_arguments(data_args, training_args, model_paths) -> None:
    """The options alone (before data and model): known values; the deploy folder is no model folder."""
    if data_args.quantize is not None and data_args.quantize not in QUANTIZE_CHOICES:
        raise RecipeError(f"--quantize {data_args.quantize!r}: the recipes quantize to {', '.join(QUANTIZE_CHOICES)} "
                          "(CTranslate2 int8 comes with --export_ctranslate2 --quantize int8)")
    if data_args.vocabulary_min_count < 1:
        raise RecipeError(f"--vocabulary_min_count {data_args.vocabulary_min_count}: a token is kept when it occurs "
                          "in at least this many training rows; it must be 1 or more")
    if data_args.vocabulary_min_count > 1 and not data_args.prune_vocabulary:
        raise RecipeError("--vocabulary_min_count only applies with --prune_vocabulary true")
    if data_args.vocabulary_max_size is not None and data_args.vocabulary_max_size < 1:
        raise RecipeError(f"--vocabulary_max_size {data_args.vocabulary_max_size}: the most tokens the pruned "
                          "vocabulary keeps; it must be 1 or more")
    if data_args.vocabulary_max_size is not None and not data_args.prune_vocabulary:
        raise RecipeError("--vocabulary_max_size only applies with --prune_vocabulary true")
    factoring = (data_args.vocabulary_full_rows, data_args.vocabulary_rank)
    if any(value is not None for value in factoring):
        if None in factoring:
            raise RecipeError("--vocabulary_full_rows and --vocabulary_rank go together: the tokens whose rows stay "
                              "whole, and the rank of the others'")
        if not data_args.prune_vocabulary:
            raise RecipeError("--vocabulary_full_rows / --vocabulary_rank only apply with --prune_vocabulary true")
        if data_args.decoder_vocabulary:
            raise RecipeError("--vocabulary_full_rows factors an encoder's input table; --decoder_vocabulary is for "
                              "Marian: drop one of them")
        for name, value in (("vocabulary_full_rows", data_args.vocabulary_full_rows),
                            ("vocabulary_rank", data_args.vocabulary_rank)):
            if value < 1:
                raise RecipeError(f"--{name} {value}: it must be 1 or more")
    if data_args.decoder_vocabulary and not data_args.prune_vocabulary:
        raise RecipeError("--decoder_vocabulary only applies with --prune_vocabulary true")
    if data_args.prune_positions and not data_args.prune_vocabulary:
        raise RecipeError("--prune_positions only applies with --prune_vocabulary true (the two tables go into "
                          "OUTPUT_DIR/deploy/vocabulary together)")
    if data_args.decoder_vocabulary and data_args.export_ctranslate2:
        raise RecipeError("--decoder_vocabulary gives the decoder a vocabulary of its own, which CTranslate2's Marian "
                          "converter cannot hold: drop one of --decoder_vocabulary and --export_ctranslate2")
    if not requested(data_args):
        return
    folder = os.path.realpath(os.path.join(training_args.output_dir, DEPLOY_DIR))
    for path in model_paths:
        if path and os.path.isdir(path) and os.path.commonpath([os.path.realpath(path), folder]) == folder:
            raise RecipeError(f"the deployed copies go to {folder}, which holds the model the run loads ({path}); "
                              "choose another --output_dir")


def _tokenizer(processing_class):
    return getattr(processing_class, "tokenizer", processing_class)


def _check_positions(model, max_input_length) -> None:
    from hf_adaprune.deploy.positions import check_positions_model, check_positions_request

    check_positions_model(model)  # the family first: its message is the one that helps
    if max_input_length is None:
        raise ValueError("the position table is cut to the recipe's longest input, which only the text-classification "
                         "recipe fixes (--max_seq_length)")
    check_positions_request(model, max_input_length)


def check_request(run) -> None:
    """What the built model and tokenizer allow, before training: every refusal says what is supported."""
    from hf_adaprune.deploy import (
        check_ctranslate2_request,
        check_int8_request,
        check_onnx_request,
        check_vocabulary_request,
    )
    from hf_adaprune.deploy.factored_embedding import check_factoring_model

    data_args, model = run.data_args, run.model
    checks = []
    if data_args.prune_vocabulary:
        flag = "--prune_vocabulary" + (" --decoder_vocabulary" if data_args.decoder_vocabulary else "")
        checks.append((flag, lambda: check_vocabulary_request(model, _tokenizer(run.processing_class),
                                                              decoder_vocabulary=data_args.decoder_vocabulary)))
    if data_args.prune_positions:
        checks.append(("--prune_positions", lambda: _check_positions(model, run.max_input_length)))
    if data_args.vocabulary_full_rows is not None:
        # the family, a tied table, a masked model; the sizes once the vocabulary is known (check_rows)
        checks.append(("--vocabulary_full_rows", lambda: check_factoring_model(model)))
    if data_args.quantize:
        checks.append(("--quantize int8", check_int8_request))
    if data_args.export_onnx:
        checks.append(("--export_onnx", lambda: check_onnx_request(model, int8=data_args.quantize == "int8")))
    if data_args.export_ctranslate2:
        checks.append(("--export_ctranslate2", lambda: check_ctranslate2_request(
            model, data_args.quantize, tokenizer=_tokenizer(run.processing_class))))
    for flag, check in checks:
        try:
            check()
        except (ValueError, ImportError) as err:
            raise RecipeError(f"{flag}: {err}") from err


def training_token_rows(dataset, columns=("input_ids", "labels")):
    """The token ids of each training row: its inputs (and the targets of seq2seq and Whisper data)."""
    if hasattr(dataset, "column_names"):  # a datasets.Dataset: read whole columns
        columns = [dataset[column] for column in columns if column in dataset.column_names]
        rows = zip(*columns)
    else:  # the speech recipe's in-memory examples
        rows = ([row[key] for key in columns if key in row] for row in dataset)
    for values in rows:
        ids: set[int] = set()
        for value in values:
            ids.update(value if isinstance(value, list) else [value])
        ids.discard(IGNORED_LABEL)
        yield list(ids)


def vocabulary_rows(run) -> tuple:
    """The token rows ``--prune_vocabulary`` keeps the tokens of, as :func:`deploy` hands them to
    ``prune_vocabulary``: ``(tokenized, target_tokenized)``, the second None unless ``--decoder_vocabulary``. With
    ``--sequence_distillation`` the pruned model also trained on the teacher's targets: their tokens count too."""
    train, teacher = run.datasets["train"], run.datasets.get("pruning_train")
    teacher_rows = training_token_rows(teacher, ("labels",)) if teacher is not None else ()
    if run.data_args.decoder_vocabulary:  # the sources' tokens for the encoder, the targets' for the decoder
        return (training_token_rows(train, ("input_ids",)),
                itertools.chain(training_token_rows(train, ("labels",)), teacher_rows))
    rows = training_token_rows(train, token_columns(run.model))
    if run.model.config.model_type == "whisper":  # one row a transcript, holding both of its forms
        rows = (sorted(set(ids) | set(spaced)) for ids, spaced in zip(rows, whisper_spaced_rows(run), strict=True))
    return itertools.chain(rows, teacher_rows), None


def whisper_spaced_rows(run):
    """For each training row, the tokens of its transcript written after a space (' seven', 'Ġseven'), as Whisper
    writes a transcript's words when pretrained: the labels ('seven') teach it their own form only once fine-tuned
    long enough, and a smaller vocabulary without the spaced form rewrote the transcripts of a briefly trained
    model. Counted in the transcript's own row, so ``--vocabulary_min_count`` still counts transcripts."""
    tokenizer = _tokenizer(run.processing_class)
    for row in run.datasets["train"]:
        text = tokenizer.decode([i for i in row["labels"] if i != IGNORED_LABEL], skip_special_tokens=True).strip()
        yield tokenizer(" " + text, add_special_tokens=False).input_ids if text else []


def token_columns(model) -> tuple[str, ...]:
    """The columns of a row that hold token ids: a classifier's labels are class indices, not tokens; only a seq2seq
    model's (and Whisper's) labels are text."""
    return ("input_ids", "labels") if getattr(model.config, "is_encoder_decoder", False) else ("input_ids",)


def check_rows(run) -> None:
    """``--vocabulary_min_count`` that no token of the training rows reaches (the vocabulary would keep the special
    tokens alone), a ``--vocabulary_max_size`` below the tokens kept whatever their count, or a
    ``--vocabulary_full_rows`` not below the tokens the vocabulary will keep: RecipeError before
    training, once the rows are known (a teacher's translations included). The rows are counted as
    ``prune_vocabulary`` counts them, with the same tokens kept anyway."""
    from hf_adaprune.deploy.factored_embedding import check_factoring_sizes
    from hf_adaprune.deploy.vocabulary import (highest_min_count, kept_anyway, kept_vocabulary, smallest_size,
                                               token_row_counts)

    data_args = run.data_args
    if not data_args.prune_vocabulary:
        return
    tokenizer = _tokenizer(run.processing_class)
    if data_args.vocabulary_max_size is not None:
        smallest = smallest_size(run.model, tokenizer)
        if data_args.vocabulary_max_size < smallest:
            raise RecipeError(f"--vocabulary_max_size {data_args.vocabulary_max_size}: the pruned vocabulary keeps "
                              f"{smallest} tokens whatever their count (special and added tokens, ids the config "
                              f"names, the pieces the tokenizer needs); give {smallest} or more")
    if data_args.vocabulary_min_count <= 1 and data_args.vocabulary_full_rows is None:
        return
    tokenized, target_tokenized = vocabulary_rows(run)
    counts = token_row_counts(tokenizer, tokenized=tokenized) + token_row_counts(tokenizer,
                                                                                tokenized=target_tokenized or ())
    most = highest_min_count(counts, kept_anyway(run.model, tokenizer))
    if most < data_args.vocabulary_min_count:
        raise RecipeError(f"--vocabulary_min_count {data_args.vocabulary_min_count}: no token occurs in that many "
                          f"training rows (the most common in {most}), so the pruned vocabulary would keep the "
                          f"special tokens alone; give {max(most, 1)} or less")
    if data_args.vocabulary_full_rows is not None:
        kept = len(kept_vocabulary(run.model, tokenizer, counts, data_args.vocabulary_min_count,
                                   data_args.vocabulary_max_size))
        if data_args.vocabulary_full_rows >= kept:
            raise RecipeError(f"--vocabulary_full_rows {data_args.vocabulary_full_rows}: the pruned vocabulary keeps "
                              f"{kept} tokens, so every row would stay whole; give fewer than {kept}")
        table = run.model.get_input_embeddings()
        kept_whole = {i for i in kept_anyway(run.model, tokenizer) if 0 <= i < table.num_embeddings}
        try:
            check_factoring_sizes(kept, table.embedding_dim, data_args.vocabulary_full_rows,
                                  data_args.vocabulary_rank, kept_whole=len(kept_whole))
        except ValueError as err:
            raise RecipeError(f"--vocabulary_full_rows {data_args.vocabulary_full_rows} --vocabulary_rank "
                              f"{data_args.vocabulary_rank}: the pruned vocabulary keeps {kept} tokens; {err}") from err


def rows_with_dropped_tokens(run, old_tokenizer, new_tokenizer) -> dict:
    """How many validation rows hold a token the smaller vocabulary dropped (their text now tokenizes otherwise, to
    smaller pieces or the unknown token, so the vocabulary copy may score them otherwise than the pruned model)."""
    kept = set(new_tokenizer.get_vocab())
    rows = list(training_token_rows(run.datasets["validation"], token_columns(run.model)))
    changed = sum(any(token not in kept for token in old_tokenizer.convert_ids_to_tokens(ids)) for ids in rows)
    return {"validation_rows": len(rows), "validation_rows_with_dropped_tokens": changed}


def more_tokens_hint(data_args) -> str:
    """What keeps more tokens in the smaller vocabulary: more training rows, and the limits this run set."""
    hints = ["more training rows"]
    if data_args.vocabulary_min_count > 1:
        hints.append(f"--vocabulary_min_count 1 (now {data_args.vocabulary_min_count})")
    if data_args.vocabulary_max_size is not None:
        hints.append(f"a larger --vocabulary_max_size (now {data_args.vocabulary_max_size})")
    return ", ".join(hints[:-1]) + " or " + hints[-1] if len(hints) > 1 else hints[0]


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def deploy(run, model, score=None, pruned_test: dict | None = None, record: dict | None = None) -> dict:
    """Write the requested deployed copies of ``model`` (the pruned model) under ``OUTPUT_DIR/deploy``.

    ``score(run, model, tokenizer)`` (the recipe's ``score_deployed``; None: not scored) gives the test metrics of
    each copy, reloaded from its folder as a user loads it (ONNX: :func:`onnx_runner` with the tokenizer saved
    beside the graphs; CTranslate2: :func:`ctranslate2_runner`); ``pruned_test`` (results.json's
    "test" entry) gives the pruned model's, which each copy's change is counted against. ``record`` (returned) is
    filled copy by copy: should one fail, it holds those written before."""
    import torch
    from transformers import AutoTokenizer

    from hf_adaprune import AutoPrunedModel, save_pruned
    from hf_adaprune.deploy import (export_ctranslate2, export_onnx, factor_embeddings, load_int8, prune_positions,
                                    prune_vocabulary, quantize_onnx, save_int8)
    from hf_adaprune.deploy.onnx import INT8_SUFFIX
    from hf_adaprune.plain_forward import drop_autocast_forward

    data_args = run.data_args
    root = Path(run.training_args.output_dir) / DEPLOY_DIR
    # the working copy keeps the model's dtype (the vocabulary copy is saved in it); int8 and ONNX take a float32 one
    model = drop_autocast_forward(copy.deepcopy(model)).cpu().eval()
    processing_class = run.processing_class
    tokenizer = _tokenizer(processing_class)
    processor = processing_class if processing_class is not tokenizer else None
    record = {} if record is None else record
    record.update({"folder": str(root), "written": {}})

    @functools.cache  # one float32 copy for int8 and ONNX, made after the vocabulary steps changed the model
    def float32() -> torch.nn.Module:
        return model if all(p.dtype == torch.float32 for p in model.parameters()) else copy.deepcopy(model).float()
    source = Path(run.training_args.output_dir)  # the folder CTranslate2 converts (tokenizer files inside)

    against = "pruned"  # what each copy's test_change is counted against, as the printed lines say
    if score is not None and half_precision_scoring(run.training_args):
        pruned_test = plain_reference(record, lambda: score(run, model, tokenizer))
        against = "pruned without autocast"
    # int8 and ONNX copies are made from a float32 copy: a model stored in half precision is scored in float32 too,
    # so that their change is theirs, not the cast's (the vocabulary copy keeps the stored dtype)
    float32_test, float32_against = pruned_test, against
    cast = data_args.quantize == "int8" or data_args.export_onnx  # copies made from the float32 cast
    if score is not None and cast and any(p.is_floating_point() and p.dtype != torch.float32
                                          for p in model.parameters()):
        float32_test = plain_reference(record, lambda: score(run, copy.deepcopy(model).float(), tokenizer),
                                       key="reference_float32")
        float32_against = "pruned in float32"

    def written(name: str, folder: Path, **extra) -> None:
        record["written"][name] = {"path": str(folder), "bytes": _folder_bytes(folder), **extra}
        logger.info("deploy: %s -> %s", name, folder)

    def scored(name: str, load, entry: dict | None = None, load_tokenizer=lambda: tokenizer,
               in_float32: bool = False) -> None:
        if score is not None:
            entry = record["written"][name] if entry is None else entry
            score_entry(entry, lambda: score(run, load(), load_tokenizer()),
                        float32_test if in_float32 else pruned_test, name)
            entry["test_change_against"] = float32_against if in_float32 else against

    if data_args.prune_vocabulary:
        before = model.get_input_embeddings().num_embeddings
        tokenized, target_tokenized = vocabulary_rows(run)
        old_tokenizer = tokenizer
        tokenizer = prune_vocabulary(model, tokenizer, tokenized=tokenized, target_tokenized=target_tokenized,
                                     min_count=data_args.vocabulary_min_count,
                                     max_size=data_args.vocabulary_max_size,
                                     decoder_vocabulary=data_args.decoder_vocabulary)
        positions = prune_positions(model, run.max_input_length, tokenizer) if data_args.prune_positions else None
        factored = None
        if data_args.vocabulary_full_rows is not None:  # the same rows, counted in the smaller vocabulary's ids
            new_ids = tokenizer.get_vocab()
            rows = ([new_ids[token] for token in old_tokenizer.convert_ids_to_tokens(ids) if token in new_ids]
                    for ids in vocabulary_rows(run)[0])
            factored = factor_embeddings(model, tokenizer, tokenized=rows, full_rows=data_args.vocabulary_full_rows,
                                         rank=data_args.vocabulary_rank)
        source = root / "vocabulary"
        if processor is not None:  # Whisper: the feature extractor with the smaller vocabulary's tokenizer
            processor = type(processor)(feature_extractor=processor.feature_extractor, tokenizer=tokenizer)
        save_pruned(model, source, tokenizer=None if processor else tokenizer, processor=processor)
        coverage = rows_with_dropped_tokens(run, old_tokenizer, tokenizer)
        if coverage["validation_rows_with_dropped_tokens"] > DROPPED_TOKEN_ROWS_WARNING * coverage["validation_rows"]:
            logger.warning("deploy: %d of the %d validation rows hold tokens the smaller vocabulary dropped (it keeps "
                           "the tokens of the training rows): the vocabulary copy reads them otherwise than the pruned "
                           "model, whose figures in results.json do not cover it. Check it on such text; %s keep more "
                           "tokens", coverage["validation_rows_with_dropped_tokens"], coverage["validation_rows"],
                           more_tokens_hint(data_args))
        written("vocabulary", source, vocab_size_before=before, vocab_size=len(tokenizer), **coverage,
                decoder_vocab_size=model.config.decoder_vocab_size if data_args.decoder_vocabulary else None,
                min_count=data_args.vocabulary_min_count, max_size=data_args.vocabulary_max_size,
                position_rows=positions, factored_embedding=factored)
        scored("vocabulary", lambda: AutoPrunedModel.from_pretrained(source).eval())
    if data_args.quantize == "int8":
        save_int8(float32(), root / "int8", tokenizer=None if processor else tokenizer, processor=processor)
        written("int8", root / "int8")
        scored("int8", lambda: load_int8(root / "int8").eval(), in_float32=True)
    if data_args.export_onnx:
        graphs = export_onnx(float32(), root / "onnx", tokenizer=None if processor else tokenizer,
                             processor=processor)
        if data_args.quantize == "int8":  # onnxruntime's dynamic int8 beside the float graphs
            graphs += quantize_onnx(root / "onnx", [graph.name for graph in graphs])
        written("onnx", root / "onnx", graphs=[graph.name for graph in graphs])
        onnx_tokenizer = functools.partial(AutoTokenizer.from_pretrained, root / "onnx")  # the one saved beside
        scored("onnx", lambda: onnx_runner(root / "onnx", model.config), load_tokenizer=onnx_tokenizer,
               in_float32=True)
        if data_args.quantize == "int8":  # the int8 graphs, scored apart from the float ones in the same folder
            int8_graphs = [graph.name for graph in graphs if graph.name.endswith(INT8_SUFFIX)]
            entry = record["written"]["onnx"]["int8"] = {"graphs": int8_graphs}
            scored("onnx int8", lambda: onnx_runner(root / "onnx", model.config, int8=True), entry=entry,
                   load_tokenizer=onnx_tokenizer, in_float32=True)
    if data_args.export_ctranslate2:
        result = export_ctranslate2(source, root / "ctranslate2", quantization=data_args.quantize, force=True)
        written("ctranslate2", root / "ctranslate2", num_heads=result.num_heads, zero_heads=result.zero_heads,
                quantization=result.quantization, pad_kept=result.pad_kept)
        # decoded by the tokenizer of the folder it was converted from (CTranslate2 speaks in token strings)
        scored("ctranslate2", lambda: ctranslate2_runner(root / "ctranslate2", result.family))
    return record


def half_precision_scoring(training_args) -> bool:
    """Whether the run's own test figures were computed under --bf16 / --fp16 autocast, which no deployed copy runs."""
    return bool(training_args.bf16 or training_args.fp16)


REFERENCES = {
    "reference": "the pruned model without the run's --bf16 / --fp16 autocast, as its deployed copies are scored; "
                 "test_change is against it",
    "reference_float32": "the pruned model cast to float32, as the int8 and ONNX copies are made from it (the model "
                         "is stored in half precision); their test_change is against it",
}


def plain_reference(record: dict, scores, key: str = "reference") -> dict:
    """The pruned model's test metrics as its copies are scored (no autocast, or cast to float32 as the int8 and ONNX
    copies are; ``scores()``), under the record's ``key``, returned as results.json's "test" entry reads them
    (``pruned_NAME``): each copy's change is then the copy's alone, not the run's half precision as well."""
    values = scores()
    record[key] = {"test": values, "scored": REFERENCES[key]}
    logger.info("deploy: %s, test %s", REFERENCES[key].split(",")[0], values)
    return {f"pruned_{name}": value for name, value in values.items()}


def onnx_runner(folder: Path, config, int8: bool = False):
    """The graphs of ``folder`` run by onnxruntime as a user runs them: an encoder's ``OnnxEncoder`` (called like the
    model), a seq2seq model's ``OnnxSeq2Seq`` (greedy ``generate``); ``int8``: the ``*.int8.onnx`` graphs."""
    from hf_adaprune.deploy import OnnxEncoder, OnnxSeq2Seq
    from hf_adaprune.deploy.onnx import ENCODER_FILE, SEQ2SEQ_FILES, int8_graph

    def graph(name: str) -> str:
        return int8_graph(name) if int8 else name

    if getattr(config, "is_encoder_decoder", False):
        return OnnxSeq2Seq(folder, *(graph(name) for name in SEQ2SEQ_FILES))
    return OnnxEncoder(folder, graph(ENCODER_FILE))


def ctranslate2_runner(folder: Path, family: str):
    """The CTranslate2 model of ``folder`` (CPU): a ``Translator`` (Marian), ``models.Whisper`` (Whisper)."""
    import ctranslate2

    return ctranslate2.models.Whisper(str(folder)) if family == "whisper" else ctranslate2.Translator(str(folder))


def runtime_of(model) -> str:
    """Which runtime a deployed copy the recipes score runs in: ``"onnx"`` (an ``OnnxSeq2Seq`` / ``OnnxEncoder``),
    ``"ctranslate2"`` (a ``Translator`` / ``models.Whisper``) or ``"transformers"``."""
    from hf_adaprune.deploy import OnnxEncoder, OnnxSeq2Seq

    if isinstance(model, (OnnxSeq2Seq, OnnxEncoder)):
        return "onnx"
    if type(model).__module__.startswith("ctranslate2"):
        return "ctranslate2"
    return "transformers"


class NotScored(Exception):
    """A recipe's ``score_deployed`` cannot score this copy as the test set was scored (e.g. beam search asked of
    a greedy-only runner): the reason goes into the copy's entry (``not_scored``) instead of a test figure."""


def score_entry(entry: dict, scores, pruned_test: dict | None, name: str) -> None:
    """``scores()`` (a copy's test metrics) into ``entry`` as :func:`test_scores` gives them; a copy the recipe cannot
    score records why (``not_scored``), and one whose scoring fails records the error (``test_error``) and the run
    goes on: the copy is written, only its figure is missing."""
    try:
        entry.update(test_scores(scores(), pruned_test))
        logger.info("deploy: %s, test %s", name, entry["test"])
    except NotScored as reason:
        entry["not_scored"] = str(reason)
        logger.info("deploy: %s not scored: %s", name, reason)
    except Exception as err:  # noqa: BLE001 - a copy's figure is not worth the run's results
        entry["test_error"] = f"{type(err).__name__}: {err}"
        logger.warning("deploy: scoring %s on the test split failed (%s); its test figures are missing",
                       name, entry["test_error"])


def test_scores(values: dict, pruned_test: dict | None) -> dict:
    """A deployed copy's "test" (its test metrics) and "test_change" (each against the pruned model's, where the run
    scored it)."""
    pruned = {name: (pruned_test or {}).get(f"pruned_{name}") for name in values}
    return {"test": values, "test_change": {name: None if value is None or pruned[name] is None else value - pruned[name]
                                            for name, value in values.items()}}


def score_lines(record: dict, format_value) -> list[str]:
    """Lines for the end-of-run table: each scored deployed copy's test metrics and change against the pruned model."""
    lines = []
    for name, entry in (record or {}).get("written", {}).items():
        for label, scored in ((name, entry), (f"{name} int8", entry.get("int8"))):  # onnx: its int8 graphs apart
            line = score_line(scored or {}, format_value)
            if line:
                lines.append(f"deploy/{label}: {line}")
    return lines


def score_line(entry: dict, format_value) -> str | None:
    """One copy's test metrics and change against the pruned model, why it was not scored, or None (not asked)."""
    if "not_scored" in entry:
        return f"not scored ({entry['not_scored']})"
    if "test_error" in entry:
        return f"scoring failed ({entry['test_error']})"
    if "test" not in entry:
        return None
    parts = []
    for metric, value in entry["test"].items():
        change = entry["test_change"].get(metric)
        against = entry.get("test_change_against", "pruned")  # the reference, where one was scored
        parts.append(f"test {metric} {format_value(metric, value)}" + (
            "" if change is None else f" ({'+' if change >= 0 else ''}{format_value(metric, change)} vs {against})"))
    return ", ".join(parts)
