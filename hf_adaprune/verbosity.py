"""hf_adaprune's log lines follow transformers' verbosity, as transformers' own do.

Every module logs under ``hf_adaprune.*``. Between the library's logger ``hf_adaprune`` and the root logger stands
a logger whose level is transformers' verbosity at the time of each record, so unless ``hf_adaprune`` is given a
level of its own (``logging.getLogger("hf_adaprune").setLevel(...)``; NOTSET gives it back):
``transformers.logging.set_verbosity_error()`` silences the library, ``set_verbosity_info()`` shows its info lines
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


class _TransformersVerbosity(logging.Logger):
    """The parent of the library's logger: its level is transformers' verbosity, read at each check (a change of
    verbosity calls ``setLevel`` on transformers' logger, which clears every logger's cache of enabled levels).
    Not registered with the logging manager: nothing sets or reads it by name."""

    @property
    def level(self) -> int:
        return transformers_logging.get_verbosity()

    @level.setter
    def level(self, value: int) -> None:  # Logger.__init__ sets it; the level is transformers'
        pass


class _StderrUnlessConfigured(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` while no other handler takes the record on its way up (the program
    configured no logging, where Python would print warnings bare and drop info lines); otherwise those handlers
    (the root's after ``basicConfig``, one on ``hf_adaprune`` itself) have it."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if self._others_take(record):
            return
        self.stream = sys.stderr
        super().emit(record)

    def _others_take(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


def install_library_logger() -> logging.Logger:
    """Put the verbosity-following logger between ``hf_adaprune`` and the root (once)."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    if isinstance(logger.parent, _TransformersVerbosity):
        return logger
    follower = _TransformersVerbosity(f"{LIBRARY_LOGGER} (transformers' verbosity)")
    follower.parent = logger.parent  # the root logger
    follower.addHandler(_StderrUnlessConfigured())
    logger.parent = follower
    logger.manager._clear_cache()
    return logger
