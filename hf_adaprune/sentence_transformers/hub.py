"""Save a pruned ``SentenceTransformer`` as a complete sentence-transformers folder, and load it back.

The folder is what ``SentenceTransformer.save`` writes (``modules.json``, ``sentence_bert_config.json``,
``config_sentence_transformers.json`` with the prompts and similarity function, ``1_Pooling/``,
``2_Normalize/``, ...) with the transformer module's ``config.json`` carrying the pruned layout and an
``auto_map`` to the shipped ``modeling_adaprune.py``: stock sentence-transformers loads it with
``trust_remote_code=True``, :func:`load_pruned_sentence_transformer` without remote code. Except an encoder of
an encoder-decoder family (T5, mT5: sentence-t5, GTR), for which stock sentence-transformers builds transformers'
own encoder class, whatever the folder's ``auto_map``: :func:`load_pruned_sentence_transformer` loads those, and
the save says so.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Transformer
from transformers import AutoModel, MT5Config, T5Config

from ..hub.config_marker import MODEL_TYPE_PREFIX
from ..hub.load import AutoPrunedModel, load_pruned_config
from ..hub.save import write_through_temporary
from ..layout import read_record
from ..reporting.report import model_card
from ..reporting.summary import PruningSummary
from ..surgery import compact
from ..trainer.report import card_path
from .modules import transformer_module

logger = logging.getLogger(__name__)

# How modules.json names the Transformer module (older and newer sentence-transformers releases).
TRANSFORMER_TYPES = (
    "sentence_transformers.models.Transformer",
    "sentence_transformers.sentence_transformer.modules.Transformer",
    "sentence_transformers.base.modules.transformer.Transformer",
    "sentence_transformers.models.Transformer.Transformer",
)


def save_pruned_sentence_transformer(model: SentenceTransformer, path: str | os.PathLike,
                                     card: str | None = None, card_file: str = "README.md") -> Path:
    """Compact the transformer module (if it still has masks) and save ``model`` as a sentence-transformers folder.

    ``card``: the model card to write, as ``card_file`` (default: the README.md sentence-transformers generates for
    the model as it is now; not the card of a folder ``model`` was loaded from, which sentence-transformers would
    write back unchanged for a model it has not trained since, with that model's figures).
    """
    # The compacted model's class writes its config's auto_map and modeling_adaprune.py in save_pretrained,
    # which the Transformer module's save calls.
    transformer = transformer_module(model).auto_model
    compact(transformer)
    if card_file == "README.md" and Path(path).is_dir():  # beside a README.md of the user's own: the card's own name
        card_file = Path(card_path(str(path))).name

    def write(folder: Path) -> None:
        if card is not None:
            model.save(str(folder), create_model_card=False)
            (folder / card_file).write_text(card)
            return
        loaded_card, model._model_card_text = getattr(model, "_model_card_text", None), None
        try:  # a new card of this model (its shapes, vocabulary, ...), not the loaded folder's text
            model.save(str(folder), create_model_card=True)
        finally:
            model._model_card_text = loaded_card
        tag_generated_card(folder / "README.md")
        if card_file != "README.md":
            (folder / "README.md").replace(folder / card_file)

    saved = write_through_temporary(path, write)  # an interrupted save leaves an earlier folder loadable
    stock = stock_encoder_class(transformer.config)
    if stock is not None:
        logger.warning(
            "%s: SentenceTransformer(folder, trust_remote_code=True) cannot load it: stock sentence-transformers "
            "builds transformers' own %s for a %s config, whatever the folder's auto_map, and its shapes are not "
            "the pruned ones; load it with hf_adaprune.sentence_transformers.load_pruned_sentence_transformer(folder) "
            "(the transformer alone: AutoModel.from_pretrained(folder, trust_remote_code=True))",
            saved, stock, transformer.config.model_type)
    return saved


def tag_generated_card(path: Path) -> None:
    """Tag the card sentence-transformers generated at ``path`` ``hf_adaprune``: a later save into the folder (a
    pruning run's) replaces it, where an untagged README.md is kept as the user's own."""
    if not path.is_file():
        return
    from huggingface_hub import ModelCard

    card = ModelCard.load(path)
    tags = card.data.tags or []
    tags = [tags] if isinstance(tags, str) else list(tags)
    if "hf_adaprune" not in tags:
        card.data.tags = tags + ["hf_adaprune"]
        card.save(path)


def stock_encoder_class(config) -> str | None:
    """The transformers class stock sentence-transformers builds for ``config`` in place of the one its ``auto_map``
    names (the encoder of an encoder-decoder family: T5, mT5, ...), or ``None`` where it builds the ``auto_map``'s.

    sentence-transformers keeps a registry of such config classes, which a pruned model's config (a subclass of the
    family's config class) matches too; releases without one handled T5 and mT5 alike.
    """
    transformer_code = importlib.import_module(Transformer.__module__)
    registry = getattr(transformer_code, "_ENCODER_ONLY_MODELS", None)
    if not isinstance(registry, (list, tuple)):
        registry = [(T5Config, "transformers", "T5EncoderModel"), (MT5Config, "transformers", "MT5EncoderModel")]
    for entry in registry:
        if isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], type) and isinstance(config, entry[0]):
            return entry[2]
    return None


class _PrunedTransformer(Transformer):
    """Loads the transformers model with hf_adaprune's own pruned classes instead of the shipped remote code."""

    def _load_config(self, model_name_or_path, backend, config_kwargs):
        # config.json says model_type adaprune_<family>: AutoConfig would ask for trust_remote_code
        config_kwargs = {k: v for k, v in config_kwargs.items() if k != "trust_remote_code"}
        config = load_pruned_config(model_name_or_path, **config_kwargs)
        if not read_record(config, f"{model_name_or_path}/config.json"):
            raise ValueError(f"{model_name_or_path} holds no pruned model (its config.json has no hf_adaprune record): "
                             f"load it with SentenceTransformer({str(model_name_or_path)!r})")
        return config, False

    def _load_model(self, model_name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs):
        if backend != "torch" or transformer_task != "feature-extraction":
            raise ValueError(f"pruned sentence-transformers folders load with the torch backend for "
                             f"feature-extraction; got backend={backend!r}, transformer_task={transformer_task!r}")
        model_kwargs.pop("trust_remote_code", None)
        # The class that was saved (T5EncoderModel, not AutoModel's T5Model for a sentence-t5 / GTR encoder);
        # AutoModel's where config.json names none.
        auto_class = None if config.architectures else AutoModel
        return AutoPrunedModel.from_pretrained(model_name_or_path, auto_class=auto_class, config=config, **model_kwargs)


def _no_marker_mismatch(record: logging.LogRecord) -> bool:
    """Drops transformers' "model of type `adaprune_bert` to instantiate a model of type ``" warning: the tokenizer /
    processor lookup of sentence-transformers reads the marked config.json with the plain config class, which
    warns about the marker although the model is built by our classes from the right config."""
    message = record.getMessage()
    return not (f"model of type `{MODEL_TYPE_PREFIX}" in message and "to instantiate a model of type" in message)


def load_pruned_sentence_transformer(path: str | os.PathLike, **kwargs) -> SentenceTransformer:
    """The saved folder as a ``SentenceTransformer``, built by hf_adaprune's classes (no ``trust_remote_code``).

    ``kwargs`` go to ``SentenceTransformer`` (``device``, ``truncate_dim``, ...).
    """
    config_logger = logging.getLogger("transformers.configuration_utils")
    config_logger.addFilter(_no_marker_mismatch)
    try:
        model = SentenceTransformer._load_with_module_classes(
            str(path), {name: _PrunedTransformer for name in TRANSFORMER_TYPES}, **kwargs)
    finally:
        config_logger.removeFilter(_no_marker_mismatch)
    first = model[0]
    if type(first) is not _PrunedTransformer:
        raise ValueError(f"{path}: the first module is {type(first).__name__}, not a pruned transformer module")
    # Only the loading differs: as a plain Transformer it saves (modules.json) like any other.
    first.__class__ = Transformer
    return model


def sentence_transformer_card(summary: PruningSummary, *, trained: bool = True, language=None, license=None,
                              tags=None, stock_class: str | None = None) -> str:
    """hf_adaprune's model card of the run, with sentence-transformers front matter and usage. ``trained=False``: saved
    before any training (see :func:`~hf_adaprune.reporting.report.model_card`); ``language``, ``license`` and
    ``tags`` go into the metadata, as ``Trainer.create_model_card`` takes them. ``stock_class``: the transformers
    class stock sentence-transformers builds in place of the saved one (:func:`stock_encoder_class`), which
    cannot load the folder: the usage is then :func:`load_pruned_sentence_transformer`'s alone."""
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    card = str(model_card(summary, tags=["sentence-transformers", "sentence-similarity", *tags], language=language,
                          license=license, trained=trained))
    card = card.replace("library_name: transformers\n",
                        "library_name: sentence-transformers\npipeline_tag: sentence-similarity\n", 1)
    loading = card.index("## Loading")
    encode = ['embeddings = model.encode(["This is an example sentence", "Each sentence is converted"])',
              "similarities = model.similarity(embeddings, embeddings)"]
    if stock_class is None:
        usage = ["```python", "from sentence_transformers import SentenceTransformer", "",
                 "model = SentenceTransformer(path, trust_remote_code=True)  # modeling_adaprune.py rebuilds the "
                 "pruned shapes", *encode, "```", "", "With `hf_adaprune` installed, no remote code is needed:", "",
                 "```python", "from hf_adaprune.sentence_transformers import load_pruned_sentence_transformer",
                 "model = load_pruned_sentence_transformer(path)", "```"]
    else:
        usage = ["With `hf_adaprune` installed:", "", "```python",
                 "from hf_adaprune.sentence_transformers import load_pruned_sentence_transformer", "",
                 "model = load_pruned_sentence_transformer(path)", *encode, "```", "",
                 f"Stock `SentenceTransformer` cannot load this folder, even with `trust_remote_code=True`: for this "
                 f"model's config it builds transformers' own `{stock_class}`, whatever `auto_map` names, and that "
                 "class has the dense shapes, not the pruned ones."]
    return card[:loading] + "\n".join([
        "## Usage (sentence-transformers)", "", *usage, "",
        "The transformer alone: `transformers.AutoModel.from_pretrained(path, trust_remote_code=True)`.", "",
    ])
