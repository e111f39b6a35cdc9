"""Tabular data files (.csv, .tsv, .json, .jsonl, optionally .gz / .bz2 / .xz) read with one-line errors.

Every value is read as text (``None`` where a JSON record has no such key), the same
way in every split, so a label column cannot come out as numbers in one file and
strings in another. An unreadable file, a non-UTF-8 byte, a ragged row, a broken JSON
line, an empty or header-only file raise :class:`~recipes.arguments.RecipeError` naming
the file and the line.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import zlib
from dataclasses import dataclass

from .arguments import RecipeError, data_file_extension

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
FILE_TYPES = (".csv", ".tsv", ".json", ".jsonl")
LINE_COLUMN = "__line__"  # each row's line in its file, for error messages; never a model input
DECOMPRESSION_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError)


@dataclass
class Table:
    """The rows of one data file: ``columns`` in file order, ``rows`` of text values, ``lines`` (1-based; the items'
    numbers in a .json list, ``unit`` then ``"item"``)."""

    path: str
    columns: list[str]
    rows: list[dict]
    lines: list[int]
    unit: str = "line"

    def as_columns(self) -> dict[str, list]:
        """``{column: values}`` plus :data:`LINE_COLUMN`, for ``datasets.Dataset.from_dict``."""
        out = {c: [row.get(c) for row in self.rows] for c in self.columns}
        out[LINE_COLUMN] = list(self.lines)
        return out


def file_type(path: str, what: str) -> str:
    """The extension of a data file without its compression suffix; RecipeError for other types."""
    ext = data_file_extension(path)
    if ext not in FILE_TYPES:
        raise RecipeError(f"{what} {path!r}: cannot read files of type {ext or '(no extension)'!r}; use "
                          f"{', '.join(FILE_TYPES)} (optionally compressed: {', '.join(OPENERS)})")
    return ext


def read_text(path: str, what: str) -> str:
    """The UTF-8 text of a plain or compressed file (a leading byte-order mark dropped)."""
    opener = OPENERS.get(os.path.splitext(path)[1].lower(), open)
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except DECOMPRESSION_ERRORS as err:
        raise RecipeError(f"{what} {path}: cannot read it ({type(err).__name__}: {err})") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise RecipeError(f"{what} {path}, line {line}: byte {data[err.start]:#04x} is not UTF-8 text; save the "
                          f"file as UTF-8") from err


def read_table(path: str, what: str) -> Table:
    """The rows of a data file (type from its name, see :func:`file_type`); RecipeError naming file and line."""
    ext = file_type(path, what)
    text = read_text(path, what)
    if not text.strip():
        raise RecipeError(f"{what} {path} is empty")
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise RecipeError(f"{what} {path}, line {line}: a NUL byte; the file is binary or broken")
    if ext in (".csv", ".tsv"):
        return _read_delimited(path, what, text, tab=ext == ".tsv")
    return _read_json(path, what, text, lines=ext == ".jsonl")


def _read_delimited(path: str, what: str, text: str, tab: bool) -> Table:
    # .tsv as GLUE writes it: tab-separated, no quoting; .csv with the usual double quotes
    # lines end at \n, \r or \r\n only: not at the Unicode line breaks str.splitlines() knows (\x85, \u2028)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tab else ",",
                        quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL, strict=not tab)
    header, rows, lines, start = None, [], [], 1
    try:
        for record in reader:
            start = reader.line_num + 1  # where the next record starts
            if not record or (len(record) == 1 and not record[0].strip() and header is not None):
                continue  # blank line
            if header is None:
                header = [name.strip() for name in record]
                duplicated = sorted({n for n in header if header.count(n) > 1})
                if duplicated:
                    raise RecipeError(f"{what} {path}, line {reader.line_num}: header names column(s) "
                                      f"{duplicated} twice")
                continue
            if len(record) != len(header):
                raise RecipeError(f"{what} {path}, line {reader.line_num}: {len(record)} field(s) where the header "
                                  f"has {len(header)} ({', '.join(header)}); a stray delimiter, quote or line break?")
            rows.append(dict(zip(header, record)))
            lines.append(reader.line_num)
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise RecipeError(f"{what} {path}, line {start}: a quoted field starts on this line and never ends") \
                from err
        raise RecipeError(f"{what} {path}, line {reader.line_num}: {err}") from err
    if header is None:
        raise RecipeError(f"{what} {path} is empty")
    if not rows:
        raise RecipeError(f"{what} {path} has a header ({', '.join(header)}) but no data rows")
    return Table(path, header, rows, lines)


def _read_json(path: str, what: str, text: str, lines: bool) -> Table:
    records = None
    if not lines:  # a JSON list of objects ({"data": [...]} too), else JSON lines
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if not text.lstrip().startswith("{"):
                raise RecipeError(f"{what} {path}, line {err.lineno}: not valid JSON ({err.msg})") from err
        else:
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if isinstance(data, dict) and data and all(isinstance(v, (dict, list)) for v in data.values()):
                columns = ", ".join(map(repr, data))
                raise RecipeError(f"{what} {path}: one JSON object of columns ({columns}); write one object per row: "
                                  "a list of objects, or JSON lines (pandas: "
                                  "DataFrame.to_json(path, orient='records', lines=True))")
            if isinstance(data, dict):
                data = [data]
            if not isinstance(data, list):
                raise RecipeError(f"{what} {path}: a .json file must hold a list of objects or JSON lines")
            records = [(i + 1, record, "item") for i, record in enumerate(data)]
    if records is None:
        records = []
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line), "line"))
                except json.JSONDecodeError as err:
                    raise RecipeError(f"{what} {path}, line {number}: not valid JSON ({err.msg})") from err
    columns, rows, numbers = [], [], []
    for number, record, unit in records:
        if not isinstance(record, dict):
            raise RecipeError(f"{what} {path}, {unit} {number}: a {type(record).__name__}, not an object with "
                              f"one key per column")
        for key in record:
            if key not in columns:
                columns.append(key)
        rows.append({key: _as_text(value) for key, value in record.items()})
        numbers.append(number)
    if not rows:
        raise RecipeError(f"{what} {path} has no records")
    return Table(path, columns, rows, numbers, unit=records[0][2])


def _as_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)
