"""What the real-run scripts in ``examples/`` share: their argument parser, logging, Markdown tables and outputs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import transformers

from hf_adaprune.reporting.report import write_json, write_text

from .results import RESULTS_FILE, format_count

EXAMPLE_LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def example_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of a script's docstring (help text kept as written)."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)


def check_example_flags(parser: argparse.ArgumentParser, args, check_pruning=None) -> None:
    """Refuse, before any work, what would fail late: a ``--dense_model`` that is not a folder (else the Hub is asked
    for it, with a traceback), a negative ``--latency_repeats``, and pruning flags that ``check_pruning()`` (which
    builds the run's pruning arguments) rejects, in the library's words rather than after the dense stage."""
    dense_model = getattr(args, "dense_model", None)
    if dense_model and not Path(dense_model).is_dir():
        parser.error(f"--dense_model {dense_model} is not a folder (give the dense/ folder of an earlier run)")
    repeats = getattr(args, "latency_repeats", None)
    if repeats is not None and repeats < 0:
        parser.error(f"--latency_repeats must be >= 0 (0: skip timing); got {repeats}")
    if check_pruning is not None:
        try:
            check_pruning()
        except (ValueError, TypeError) as err:  # RecipeError is a ValueError
            parser.error(str(err))


def setup_example_logging(logger: logging.Logger, fmt: str = EXAMPLE_LOG_FORMAT,
                          transformers_level: int = logging.WARNING) -> None:
    """Log lines to stdout: WARNING and up, hf_adaprune and the script's ``logger`` at INFO, transformers at
    ``transformers_level``."""
    logging.basicConfig(format=fmt, datefmt="%H:%M:%S", level=logging.WARNING,
                        handlers=[logging.StreamHandler(sys.stdout)])
    logging.getLogger("hf_adaprune").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    transformers.utils.logging.set_verbosity(transformers_level)


def markdown_size_rows(cmp: dict, layers: str) -> list[tuple[str, str, str, str]]:
    """Markdown rows for parameters, whole-model FLOPs and the FLOPs of the prunable ``layers`` (their name in
    the label) of a dense/pruned comparison."""
    rows = [("parameters", "params", "params_removed"),
            (f"FLOPs, whole model, seq {cmp['seq_len']}", "flops", "flops_removed"),
            (f"FLOPs, {layers}, seq {cmp['seq_len']}", "layer_flops", "layer_flops_removed")]
    return [(label, format_count(cmp[f"{key}_before"]), format_count(cmp[f"{key}_after"]),
             f"-{100 * cmp[removed]:.1f}%") for label, key, removed in rows]


def markdown_table(rows) -> list[str]:
    """The lines of a Markdown table with the header | | dense | pruned | change | and (label, dense, pruned,
    change) ``rows``."""
    return ["| | dense | pruned | change |", "|---|---|---|---|"] + [f"| {' | '.join(r)} |" for r in rows]


def write_outputs(out: Path, results: dict, markdown) -> tuple[str, Path, Path]:
    """Write ``results`` to ``out/results.json``, then ``markdown(results)`` to ``out/results.md``.

    The JSON file comes first, so a run's numbers are kept even if the table fails.
    Returns the table and the two paths.
    """
    json_path, md_path = out / RESULTS_FILE, out / "results.md"
    write_json(json_path, results)
    table = markdown(results)
    write_text(md_path, table)
    return table, json_path, md_path
