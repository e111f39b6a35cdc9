"""The random state pruning decisions are evaluated under: the same every time, and the training's left as it was.

A collator that draws at random when it builds a batch (``DataCollatorForLanguageModeling`` masks tokens at
random) would score each decision on other inputs: an unchanged model would score differently from one decision
to the next, and keep or roll back would follow that noise. Each decision is evaluated under random states seeded
with ``args.seed`` (torch's, on the CPU and the training device, Python's, NumPy's and a collator's own
``generator``), and every state is restored afterwards, so decisions consume none of the training's draws.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


@contextlib.contextmanager
def decision_rng(seed: int, device: torch.device, collator=None):
    python_state, numpy_state = random.getstate(), np.random.get_state()
    generator = getattr(collator, "generator", None)
    generator = generator if isinstance(generator, torch.Generator) else None
    generator_state = generator.get_state() if generator is not None else None
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            if generator is not None:
                generator.manual_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if generator is not None:
            generator.set_state(generator_state)
