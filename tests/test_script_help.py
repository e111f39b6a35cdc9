"""Every command-line help text formats: argparse %-formats help strings, so a bare % breaks --help.

The scripts' ``add_argument(..., help=...)`` strings and the dataclass fields' ``metadata={"help": ...}`` that
``HfArgumentParser`` turns into arguments are read from the source (running ``--help`` on every script would
import torch and transformers once per script).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

SOURCES = sorted(p for folder in ("benchmarks", "examples", "recipes", "hf_adaprune")
                 for p in (Path(ROOT) / folder).rglob("*.py"))
BARE_PERCENT = re.compile(r"%(?!\()")  # a % that is not %(default)s, once every %% is taken out


def help_strings(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.keyword) and node.arg == "help":
            value = node.value
        elif isinstance(node, ast.Dict):
            value = next((v for k, v in zip(node.keys, node.values)
                          if isinstance(k, ast.Constant) and k.value == "help"), None)
        else:
            continue
        try:
            text = ast.literal_eval(value) if value is not None else None
        except ValueError:  # an f-string or a name: formatted at run time, not checked here
            continue
        if isinstance(text, str):
            yield node.lineno if hasattr(node, "lineno") else 0, text


def test_help_strings_have_no_bare_percent():
    assert len(SOURCES) > 50
    bad = [(str(path.relative_to(ROOT)), line, text) for path in SOURCES for line, text in help_strings(path)
           if BARE_PERCENT.search(text.replace("%%", ""))]
    assert not bad, f"a bare % in a help text breaks --help (write %%): {bad}"
