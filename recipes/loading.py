"""Configs, models, tokenizers and processors of the recipes, from a Hub id, a dense folder or a pruned folder.

A folder a recipe (or ``save_pruned``) wrote says ``"model_type": "adaprune_<family>"`` in its
``config.json``, which stock ``AutoConfig`` / ``AutoTokenizer`` / ``AutoModelFor...`` only load with
``trust_remote_code=True`` (after a prompt). hf_adaprune loads such a folder without remote code
(:func:`~hf_adaprune.hub.load.load_pruned_config`, :class:`~hf_adaprune.AutoPrunedModel`): these
functions use it for pruned folders and transformers' auto classes for everything else, so that a run's
output can be pruned again.
"""

from __future__ import annotations

import logging

from transformers import AutoConfig, PretrainedConfig

from hf_adaprune import AutoPrunedModel
from hf_adaprune.families import decoder_positions, decoder_positions_note
from hf_adaprune.families.llama import LLAMA_TYPES
from hf_adaprune.hub.config_marker import MODEL_TYPE_PREFIX
from hf_adaprune.hub.load import load_pruned_config
from hf_adaprune.layout import freeze_unsaved_parameters, read_record

from .arguments import RecipeError

logger = logging.getLogger("hf_adaprune.recipes")


def is_pruned_source(path: str | None, cache_dir: str | None = None) -> bool:
    """Whether the ``config.json`` of ``path`` (a folder or Hub id) is a pruned model's (``adaprune_`` model type or
    an ``adaprune`` record). Reading it raises what ``AutoConfig`` would (OSError for a missing folder)."""
    if not path:
        return False
    config_dict, _ = PretrainedConfig.get_config_dict(path, cache_dir=cache_dir)
    return str(config_dict.get("model_type", "")).startswith(MODEL_TYPE_PREFIX) or bool(config_dict.get("adaprune"))


def load_config(path: str, cache_dir: str | None = None, **kwargs):
    """``AutoConfig.from_pretrained(path, ...)``; a pruned folder's config through hf_adaprune (no remote code)."""
    if is_pruned_source(path, cache_dir):
        return load_pruned_config(path, cache_dir=cache_dir, **kwargs)
    return AutoConfig.from_pretrained(path, cache_dir=cache_dir, **kwargs)


def class_names(config) -> list[str] | None:
    """A classifier config's class names in id order, or None where they are transformers' defaults (LABEL_i)."""
    names = [config.id2label[i] for i in range(config.num_labels)]
    return None if names == [f"LABEL_{i}" for i in range(config.num_labels)] else names


def pretrained_or_new(auto_class, model_args, config, tokenizer, tokenizer_path: str, align=None, **kwargs):
    """The model of a recipe: ``--model_name_or_path`` loaded (:func:`load_model`, ``kwargs`` to it; its embedding
    table must hold the tokenizer's ids), or a new one from ``--config_name``, its config first set to match the
    tokenizer by ``align(config, tokenizer)`` (default :func:`align_vocabulary`; what changed is warned of)."""
    if model_args.model_name_or_path:
        model = load_model(auto_class, model_args.model_name_or_path, config, cache_dir=model_args.cache_dir, **kwargs)
        check_embeddings_hold_tokenizer(model, tokenizer, tokenizer_path)
        return model
    changes = (align or align_vocabulary)(config, tokenizer)
    if changes:
        logger.warning("model from --config_name: config set to match the tokenizer: %s", "; ".join(changes))
    return auto_class.from_config(config)


def load_model(auto_class, path: str, config, **kwargs):
    """``auto_class.from_pretrained(path, config=config, ...)``; a config with a pruned record (``config`` of a
    pruned folder, from :func:`load_config`) builds the pruned layers with ``AutoPrunedModel`` (no remote code)."""
    if read_record(config):
        model = AutoPrunedModel.from_pretrained(path, auto_class=auto_class, config=config, **kwargs)
    elif is_pruned_source(path, kwargs.get("cache_dir")):
        raise ValueError(f"{path} holds a pruned model, whose own config.json says which heads and neurons it kept: "
                         f"load it without another config (leave --config_name out)")
    else:
        model = auto_class.from_pretrained(path, config=config, **kwargs)
    freeze_unsaved_parameters(model)  # the dense control trains it too: what it is scored as is what it saves
    return model


def pretrained_kwargs(path: str, cache_dir: str | None = None) -> dict:
    """``cache_dir`` and, for a pruned folder, its ``config`` loaded without remote code: the keyword arguments of
    ``AutoTokenizer`` / ``AutoProcessor`` / ``AutoFeatureExtractor.from_pretrained(path, ...)``, which would
    otherwise load the config with ``AutoConfig`` and ask for ``trust_remote_code``. A tokenizer folder without
    ``config.json`` is not a pruned model's."""
    try:
        pruned = is_pruned_source(path, cache_dir)
    except OSError:  # no config.json: a tokenizer or processor folder of its own
        pruned = False
    if pruned:
        return {"cache_dir": cache_dir, "config": load_pruned_config(path, cache_dir=cache_dir)}
    return {"cache_dir": cache_dir}


def pad_with_end_of_text(tokenizer, model_type: str, source: str) -> None:
    """A decoder-only model's tokenizer without a pad token (Llama's) pads with its end-of-text token, as is usual
    for these models, warned of naming ``source`` (where the tokenizer came from); other tokenizers stay as they are.
    A decoder-only classifier or embedder reads each row's last token that is not padding."""
    if model_type not in LLAMA_TYPES or tokenizer is None or tokenizer.pad_token_id is not None \
            or tokenizer.eos_token is None:
        return
    tokenizer.pad_token = tokenizer.eos_token
    logger.warning("%s: its tokenizer has no pad token: batches are padded with its end-of-text token %r (saved with "
                   "the model)", source, tokenizer.eos_token)


def load_tokenizer(path: str, cache_dir: str | None = None):
    """``AutoTokenizer.from_pretrained(path)``, refusing as one ``error:`` line a folder without tokenizer files:
    transformers builds an empty tokenizer there (BERT: its five special tokens, so every word is [UNK] and a run
    would train on nothing) or fails inside the tokenizer class (Marian: a TypeError on the missing vocabulary)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **pretrained_kwargs(path, cache_dir))
    except (TypeError, AssertionError) as err:
        raise RecipeError(f"no tokenizer could be loaded from {path} ({type(err).__name__}: {err}): save the "
                          "tokenizer with the model (tokenizer.save_pretrained(folder)), or give --tokenizer_name"
                          ) from err
    check_tokenizer_has_vocabulary(tokenizer, path)
    return tokenizer


TOKENIZER_ADVICE = "Save the tokenizer with the model (tokenizer.save_pretrained(folder)), or give --tokenizer_name"


def check_tokenizer_has_vocabulary(tokenizer, path: str, advice: str = TOKENIZER_ADVICE) -> None:
    """RecipeError for a tokenizer that holds its special tokens only, and perhaps a bare word-boundary marker (no
    vocabulary files in ``path``: transformers builds BERT's five special tokens, T5's specials and ``▁``)."""
    specials = set(tokenizer.all_special_ids)
    if not any(i not in specials and token.strip("\u2581\u0120 ") for token, i in tokenizer.get_vocab().items()):
        raise RecipeError(f"the tokenizer loaded from {path} holds only its {len(tokenizer)} special tokens (no "
                          "vocabulary file there, e.g. tokenizer.json or vocab.txt): every word would read as unknown. "
                          f"{advice}")


def align_vocabulary(config, tokenizer) -> list[str]:
    """For a model built from a config: its vocabulary size and pad / eos token ids as ``tokenizer`` has them (a
    smaller table would index outside itself, a larger one trains rows no input uses). Returns what changed."""
    changes = []
    size = len(tokenizer)
    if getattr(config, "vocab_size", size) != size:
        changes.append(f"vocab_size {config.vocab_size} -> {size}")
        config.vocab_size = size
        if getattr(config, "decoder_vocab_size", None) is not None:
            config.decoder_vocab_size = size
    for name in ("pad_token_id", "eos_token_id"):
        new = getattr(tokenizer, name)
        if new is not None and getattr(config, name, None) != new:
            changes.append(f"{name} {getattr(config, name, None)} -> {new}")
            setattr(config, name, new)
    return changes


def check_embeddings_hold_tokenizer(model, tokenizer, tokenizer_path: str) -> None:
    """A pretrained model embeds every id of ``tokenizer`` (loaded from ``tokenizer_path``): RecipeError when its
    embedding table has fewer rows, before training indexes outside it."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise RecipeError(f"the tokenizer {tokenizer_path} has {len(tokenizer)} tokens but the model's embedding table "
                          f"only {rows} rows (ids from {rows} on would index outside it): give the tokenizer the "
                          f"model was trained with (--tokenizer_name)")


# generation-config fields a recipe sets on the model from its tokenizer and flags (decoder start, language codes,
# Whisper's language and task): a --generation_config that leaves them unset gets the model's
RECIPE_GENERATION_FIELDS = ("decoder_start_token_id", "pad_token_id", "bos_token_id", "eos_token_id",
                            "forced_bos_token_id", "forced_eos_token_id", "language", "task")


# generation fields that apply to beam search alone, at their defaults when the recipe generates greedily
BEAM_ONLY_FIELDS = {"early_stopping": None, "length_penalty": None, "num_beam_groups": None, "diversity_penalty": None,
                    "num_return_sequences": None}


def check_generation_lengths(model, training_args) -> None:
    """RecipeError for --generation_num_beams / --generation_max_length below 1, or a --generation_max_length beyond
    what the decoder's position table reads (Whisper's ``max_target_positions``, Marian's and BART's
    ``max_position_embeddings``)."""
    for name in ("generation_num_beams", "generation_max_length"):
        value = getattr(training_args, name, None)
        if value is not None and value < 1:
            raise RecipeError(f"--{name} must be >= 1; got {value}")
    length, limit = getattr(training_args, "generation_max_length", None), decoder_positions(model.config)
    if length is not None and limit and length > limit:
        raise RecipeError(f"--generation_max_length {length}: the decoder reads at most {limit} positions "
                          f"({decoder_positions_note(model.config)}); pass --generation_max_length {limit} or less")


def check_generation_config_lengths(given: str, loaded, training_args) -> None:
    """A --generation_config's lengths against --generation_max_length, which every evaluation, the deploy copies
    and results.json use (the recipes always set it: translation from --max_target_length): its max_new_tokens, which
    generate() prefers, is refused (evaluations were cut to it while the record said otherwise); its max_length gives
    way to --generation_max_length, with a warning when they differ."""
    length = getattr(training_args, "generation_max_length", None)
    if getattr(loaded, "max_new_tokens", None) is not None:
        raise RecipeError(f"--generation_config {given} sets max_new_tokens {loaded.max_new_tokens}, which generate() "
                          f"prefers over --generation_max_length ({length}), the length every evaluation, the deploy "
                          "copies and results.json use: remove it from the file and pass --generation_max_length")
    if getattr(loaded, "max_length", None) is not None and length is not None and loaded.max_length != length:
        logger.warning("--generation_config %s: its max_length %d gives way to --generation_max_length %d (what every "
                       "evaluation and the saved generation config use; pass --generation_max_length %d to keep the "
                       "file's)", given, loaded.max_length, length, loaded.max_length)


def apply_generation_config(model, training_args) -> None:
    """``--generation_config``, loaded and applied to ``model`` before anything generates (sequence distillation,
    the metric check), with the fields of RECIPE_GENERATION_FIELDS it leaves unset taken from the model's.

    Seq2SeqTrainer replaces the model's generation config with the one given when it is built: ids the recipe had set
    (a decoder start token, a target-language code) were lost, and what ran before the trainer (the teacher's
    translations) generated with the model's settings instead. The merged config becomes ``--generation_config``, so
    the trainer applies the same one. Beams below 1 and a length beyond the decoder's positions (Whisper's
    ``max_target_positions``) are refused here, before training: the first evaluation failed on them."""
    check_generation_lengths(model, training_args)
    given = getattr(training_args, "generation_config", None)
    if given is not None:
        from transformers import Seq2SeqTrainer

        try:
            loaded = Seq2SeqTrainer.load_generation_config(given)
        except (OSError, ValueError) as err:
            raise RecipeError(f"--generation_config {given}: cannot load it ({type(err).__name__}: {err})") from err
        check_generation_config_lengths(given, loaded, training_args)
        for name in RECIPE_GENERATION_FIELDS:
            if getattr(loaded, name, None) is None and getattr(model.generation_config, name, None) is not None:
                setattr(loaded, name, getattr(model.generation_config, name))
        model.generation_config = loaded
        training_args.generation_config = loaded
    # what is scored is generated with --generation_max_length / --generation_num_beams (Seq2SeqTrainer passes them
    # to generate): the saved generation config says so too, so that a pipeline on the output folder generates as
    # the recipe scored (Whisper tiny.en kept its max_length of 448)
    generation = model.generation_config
    if getattr(training_args, "generation_max_length", None) is not None:
        generation.max_length = training_args.generation_max_length
        if getattr(generation, "max_new_tokens", None) is not None:  # the model's own: generate() would prefer it
            logger.warning("the model's generation config sets max_new_tokens %d, which generate() prefers over "
                           "--generation_max_length %d: cleared, so that evaluations, the deploy copies and the saved "
                           "generation config use --generation_max_length", generation.max_new_tokens,
                           training_args.generation_max_length)
            generation.max_new_tokens = None
    if getattr(training_args, "generation_num_beams", None) is not None:
        generation.num_beams = training_args.generation_num_beams
        if generation.num_beams == 1:  # beam settings (bart-base ships num_beams 4, early_stopping) would not save
            for name, default in BEAM_ONLY_FIELDS.items():
                if hasattr(generation, name):
                    setattr(generation, name, default)
    try:
        generation.validate(strict=True)
    except ValueError as err:  # else save_pretrained refuses it once training is over
        raise RecipeError(f"the generation config the run would save is invalid: {err}") from err
