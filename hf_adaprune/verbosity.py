"""hf_adaprune's log lines follow transformers' verbosity, as transformers' own do.

Every module logs under ``hf_adaprune.*``. The library's root logger ``hf_adaprune`` takes, unless it is given a
level of its own (``logging.getLogger("hf_adaprune").setLevel(...)``), transformers' verbosity at the time of each
record: ``transformers.logging.set_verbosity_error()`` silences it, ``set_verbosity_info()`` shows its info lines
(decisions, re-fits, measured latencies), and a Trainer's ``log_level`` / ``log_level_replica`` (which set that
verbosity on each process) apply to it. A program that configured logging (a handler on the root logger, e.g.
``logging.basicConfig``) gets the records there; otherwise they go to stderr as ``[hf_adaprune] message``, the way
transformers writes ``[transformers] message``.
"""

from __future__ import annotations

import logging
import sys

from transformers.utils import logging as transformers_logging

LIBRARY_LOGGER = "hf_adaprune"
FORMAT = "[hf_adaprune] %(message)s"


class _LibraryLogger(logging.Logger):
    """A logger whose level, unless set, is transformers' verbosity (read at each check: a change of verbosity calls
    ``setLevel`` on transformers' logger, which clears every logger's cache of enabled levels)."""

    @property
    def level(self) -> int:
        own = self.__dict__.get("_own_level", logging.NOTSET)
        return own if own != logging.NOTSET else transformers_logging.get_verbosity()

    @level.setter
    def level(self, value: int) -> None:
        self.__dict__["_own_level"] = value


class _StderrUnlessConfigured(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` while the root logger has no handler (the program configured no logging,
    where Python would print warnings bare and drop info lines); otherwise the root's handlers have the record."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        self.stream = sys.stderr
        super().emit(record)


def install_library_logger() -> logging.Logger:
    """Make ``hf_adaprune``'s logger follow transformers' verbosity (once; a level already set on it is kept)."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    if isinstance(logger, _LibraryLogger):
        return logger
    own = logger.__dict__.pop("level", logging.NOTSET)
    logger.__class__ = _LibraryLogger
    logger.level = own
    logger.addHandler(_StderrUnlessConfigured())
    logger.manager._clear_cache()
    return logger
