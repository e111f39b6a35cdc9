"""The check every deploy function that takes a model makes first: that it was given a transformers model."""

from __future__ import annotations

import os


def check_transformers_model(model, function: str) -> None:
    """Refuse, before any work, anything but a transformers model given to ``function``, saying what to pass
    instead: a folder is loaded first, a SentenceTransformer gives its transformer; a wrapper (``torch.compile``,
    DDP) is refused naming the model it wraps."""
    from ..families.registry import check_not_wrapped

    check_not_wrapped(model)
    if hasattr(model, "main_input_name"):
        return
    hint = ""
    if isinstance(model, (str, os.PathLike)):
        hint = (" Load the folder first: hf_adaprune.AutoPrunedModel.from_pretrained(folder) for a pruned one, a "
                "transformers AutoModelFor... class for a dense one.")
    elif type(model).__name__ == "SentenceTransformer":
        hint = (f" For a SentenceTransformer, pass its transformer: {function}(st[0].auto_model, ...) with "
                "st.tokenizer; its pooling and normalisation then run outside it.")
    raise TypeError(f"{function} takes a transformers model (PreTrainedModel); got {type(model).__name__}.{hint}")
