"""What every benchmark run records beside its figures, and how it writes them (``X.json`` and ``X.md``)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def machine(load_start: tuple[float, float, float]) -> dict:
    """CPU count, platform, torch and the 1-minute load average at the start (``load_start``) and now."""
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "load_average_1min_start_end": [load_start[0], os.getloadavg()[0]]}


def run_fields(opts, started: float, load_start: tuple[float, float, float]) -> dict:
    """``settings`` (the options), ``minutes`` since ``started``, ``machine`` and the UTC ``date``: the keys
    :func:`run_footer` reads."""
    return {"settings": vars(opts), "minutes": (time.time() - started) / 60, "machine": machine(load_start),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_footer(out: dict) -> str:
    """"Run time X min; load average at start/end A/B." from ``out["minutes"]`` and ``out["machine"]``."""
    start, end = out["machine"]["load_average_1min_start_end"]
    return f"Run time {out['minutes']:.1f} min; load average at start/end {start:.2f}/{end:.2f}."


def make_parent_folder(path: str | os.PathLike) -> None:
    """Make the folder ``path`` is to be written in (a bare file name goes in the current folder: nothing to make).
    Scripts call it before their work, so that an output path that cannot be written fails at once."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)


def write_outputs(output: str | None, results: dict, table: str) -> None:
    """Print ``table``; with ``output``, write ``results`` there as JSON and ``table`` beside it as ``.md``."""
    print(table)
    if output:
        make_parent_folder(output)
        Path(output).write_text(json.dumps(results, indent=2) + "\n")
        Path(output).with_suffix(".md").write_text(table + "\n")
