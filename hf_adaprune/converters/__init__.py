"""Converters from other inference formats into transformers folders.

* :func:`convert_ctranslate2_whisper` - CTranslate2 (faster-whisper) Whisper
  folder -> transformers Whisper folder (``python -m
  hf_adaprune.converters.ctranslate2_whisper SRC DST``).

Imports are lazy so that ``import hf_adaprune.converters`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CTranslate2FormatError": "ctranslate2_whisper",
    "CTranslate2Model": "ctranslate2_whisper",
    "convert_ctranslate2_whisper": "ctranslate2_whisper",
    "default_whisper_tiny_en_dir": "ctranslate2_whisper",
    "read_ctranslate2_model": "ctranslate2_whisper",
    "write_ctranslate2_model": "ctranslate2_whisper",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
