"""Wall-clock latency of several models, measured alternately in one process.

Timing a dense model and then, minutes later, its pruned copy mixes in whatever
else the machine did in between (other jobs, thermal state, frequency scaling).
:func:`compare_latency` instead runs the models round-robin: every repeat calls
each model once, in the order given, so slow phases of the machine hit all of
them alike. Reported are the median and the 90th percentile per model and the
speed-up of each model over the first one (median of the first / median of it).

>>> results = compare_latency({"dense": dense, "pruned": pruned}, example_inputs(dense, seq_len=128))
>>> print(format_latency(results))
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..modes import restore_modes, training_modes

__all__ = ["GenerateExactly", "GenerateModule", "compare_latency", "format_latency"]


class GenerateModule(nn.Module):
    """``model.generate(*args, **inputs, **generate_kwargs)`` as a module, so :func:`compare_latency` can time it."""

    def __init__(self, model, **generate_kwargs):
        super().__init__()
        self.model, self.generate_kwargs = model, generate_kwargs
        self.train(model.training)  # a new module starts in training mode; take the model's

    def forward(self, *args, **inputs):
        return self.model.generate(*args, **inputs, **self.generate_kwargs)


class GenerateExactly(GenerateModule):
    """Greedy ``generate`` of exactly ``new_tokens`` tokens, so that :func:`compare_latency` times every model on
    the same decoding work (a model that stops earlier would otherwise look faster)."""

    def __init__(self, model, new_tokens: int):
        super().__init__(model, min_new_tokens=new_tokens, max_new_tokens=new_tokens, num_beams=1, do_sample=False)


def _synchronize(inputs: Mapping) -> None:
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.is_cuda:
            torch.cuda.synchronize(value.device)
            return


def compare_latency(
    models: Mapping[str, nn.Module],
    inputs: Mapping[str, torch.Tensor],
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, dict]:
    """Time ``model(**inputs)`` for every model, alternating between them; returns per-model statistics.

    Each of the ``warmup`` rounds and then each of the ``repeats`` rounds calls every
    model once, in the order of ``models`` (round-robin), under
    ``torch.inference_mode()`` with the models in eval mode (the training flag of
    every submodule is restored afterwards). Garbage collection is paused while timing.

    Returns ``{name: {"median_s", "p90_s", "mean_s", "min_s", "repeats", "threads",
    "speedup"}}`` where ``speedup`` is the first model's median divided by this one's
    (so 1.0 for the first model, 2.0 for a model twice as fast) and ``threads`` the
    model's own ``threads`` attribute where it has one (an ONNX Runtime session's
    intra-op threads), else torch's.
    """
    if not models:
        raise ValueError("compare_latency needs at least one model")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got {repeats} and {warmup}")
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    modes = [training_modes(model) for model in models.values()]
    gc_was_enabled = gc.isenabled()
    try:
        for model in models.values():
            model.eval()
        gc.collect()
        gc.disable()
        with torch.inference_mode():
            for _ in range(warmup):
                for name in names:
                    models[name](**inputs)
            _synchronize(inputs)
            for _ in range(repeats):
                for name in names:
                    start = time.perf_counter()
                    models[name](**inputs)
                    _synchronize(inputs)
                    times[name].append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
        for saved in modes:
            restore_modes(saved)

    results = {}
    for name in names:
        values = times[name]
        results[name] = {
            "median_s": statistics.median(values),
            "p90_s": float(np.percentile(values, 90)),
            "mean_s": statistics.fmean(values),
            "min_s": min(values),
            "repeats": repeats,
            "threads": getattr(models[name], "threads", None) or torch.get_num_threads(),
        }
    baseline = results[names[0]]["median_s"]
    for name in names:
        median = results[name]["median_s"]
        results[name]["speedup"] = baseline / median if median > 0 else float("inf")
    return results


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f} ms"


def format_latency(results: Mapping[str, Mapping], title: str | None = None) -> str:
    """A plain-text table of :func:`compare_latency`'s result (speed-up is vs the first model)."""
    names = list(results)
    if not names:
        return title or ""
    first = next(iter(results.values()))
    header = f"{'model':<16} {'median':>12} {'p90':>12} {'speedup':>9}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for name in names:
        r = results[name]
        lines.append(f"{name:<16} {_ms(r['median_s']):>12} {_ms(r['p90_s']):>12} {r['speedup']:>8.2f}x")
    threads = {r["threads"] for r in results.values()}
    if len(threads) == 1:
        threads_text = f"{first['threads']} threads"
    else:
        threads_text = "threads: " + ", ".join(f"{name} {r['threads']}" for name, r in results.items())
    lines.append(f"({first['repeats']} alternating repeats, {threads_text}; speed-up vs {names[0]!r})")
    return "\n".join(lines)
