"""Save a pruned model as a folder that stock transformers loads.

The folder holds safetensors weights, ``config.json`` with the pruned record
(``adaprune``) and an ``auto_map`` pointing at ``modeling_adaprune.py`` (copied
here, self-contained), plus tokenizer / processor files when given.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import transformers
from transformers.models.auto import modeling_auto

from ..families import get_adapter
from ..surgery import compact
from .remote_code import REMOTE_CODE_FILE, pruned_class_name, remote_code_source

# auto class name -> the name mapping transformers uses to resolve it
_AUTO_MAPPINGS = {
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "AutoModelForSeq2SeqLM": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForSpeechSeq2Seq": "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "AutoModelForCTC": "MODEL_FOR_CTC_MAPPING_NAMES",
    "AutoModelForAudioClassification": "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
}


def auto_classes_for(model) -> dict[str, str]:
    """Auto class name -> transformers class name for the model's own class and its base model."""
    model_type = model.config.model_type
    own = type(model).__name__
    for cls in type(model).__mro__:  # a loaded pruned model is a subclass: use the transformers class
        if getattr(transformers, cls.__name__, None) is cls:
            own = cls.__name__
            break
    found = {}
    for auto_name, mapping_name in _AUTO_MAPPINGS.items():
        mapping = getattr(modeling_auto, mapping_name, {})
        class_name = mapping.get(model_type)
        if isinstance(class_name, (tuple, list)):
            class_name = class_name[0]
        if class_name == own or (auto_name == "AutoModel" and class_name):
            found[auto_name] = class_name
    return found


def save_pruned(model, save_directory: str | os.PathLike, tokenizer=None, processor=None, **kwargs) -> Path:
    """Compact ``model`` (if it still has masks) and save it in the Hub format.

    Files are written to a temporary folder first and then moved into place one by
    one, so an interrupted save never leaves a half-written weights file behind.
    """
    compact(model)
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    auto = auto_classes_for(model)
    model.config.auto_map = {k: f"modeling_adaprune.{pruned_class_name(v)}" for k, v in auto.items()}
    with tempfile.TemporaryDirectory(dir=save_directory, prefix=".adaprune-save-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **kwargs)
        source = remote_code_source(set(auto.values()), get_adapter(model).attention_forward)
        (Path(tmp) / REMOTE_CODE_FILE).write_text(source)
        for extra in (tokenizer, processor):
            if extra is not None:
                extra.save_pretrained(tmp)
                if getattr(extra, "feature_extractor", None) is not None:  # transformers 5 keeps it only in processor_config.json
                    extra.feature_extractor.save_pretrained(tmp)
        for item in Path(tmp).iterdir():
            target = save_directory / item.name
            if item.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.move(str(item), target)
            else:
                os.replace(item, target)
    return save_directory
