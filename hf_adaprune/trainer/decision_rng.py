"""The random state pruning decisions are evaluated under: the same every time, and the training's left as it was.

A collator that draws at random when it builds a batch (``DataCollatorForLanguageModeling`` masks tokens at
random) would score each decision on other inputs: an unchanged model would score differently from one decision
to the next, and keep or roll back would follow that noise. Each decision is evaluated under random states seeded
with ``args.seed`` (torch's, on the CPU and the training device, Python's, NumPy's and a collator's own
``generator``), and every state is restored afterwards, so decisions consume none of the training's draws.

A seeded collator (``DataCollatorForLanguageModeling(seed=...)``) makes its generator at its first call. One that
has none yet is given one seeded with ``args.seed`` for the decision (as one it has is re-seeded) and left without
one afterwards (``generator`` and ``_generator_pid`` as they were), so training still makes it from the
collator's seed at its first batch, as under a plain Trainer.
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

_UNSET = object()


def _generator_state(generator):
    if isinstance(generator, torch.Generator):
        return generator.get_state()
    return generator.bit_generator.state  # a NumPy Generator (a collator with return_tensors="np")


def _set_generator_state(generator, state) -> None:
    if isinstance(generator, torch.Generator):
        generator.set_state(state)
    else:
        generator.bit_generator.state = state


def _seeded_generator(collator, seed: int):
    """A generator of the kind the collator makes, seeded with ``seed`` (None where it makes none)."""
    make = getattr(collator, "get_generator", None)
    if callable(make):
        try:
            return make(seed, getattr(collator, "return_tensors", None))
        except Exception:  # another get_generator than transformers'
            return None
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def decision_rng(seed: int, device: torch.device, collator=None):
    python_state, numpy_state = random.getstate(), np.random.get_state()
    entry = getattr(collator, "generator", _UNSET)
    entry_pid = getattr(collator, "_generator_pid", _UNSET)
    generator = entry if isinstance(entry, (torch.Generator, np.random.Generator)) else None
    generator_state = _generator_state(generator) if generator is not None else None
    lazy = entry is None and getattr(collator, "seed", None) is not None  # makes its generator at its first call
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            if generator is not None:
                if isinstance(generator, torch.Generator):
                    generator.manual_seed(seed)
                elif isinstance(generator.bit_generator, np.random.PCG64):  # default_rng's, as transformers makes
                    generator.bit_generator.state = np.random.default_rng(seed).bit_generator.state
            elif lazy:
                made = _seeded_generator(collator, seed)
                if made is not None:
                    collator.generator = made
                    if entry_pid is not _UNSET:
                        collator._generator_pid = os.getpid()
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if generator is not None:
            _set_generator_state(generator, generator_state)
        elif entry is None:  # made here, or by the collator during the decision: training makes its own
            collator.generator = None
            if entry_pid is not _UNSET:
                collator._generator_pid = entry_pid
