"""Parsers for local data files: JSONL, JSON, CSV, TSV, plain lines and regex lines.

Files are read as bytes and decoded line by line, so a non-UTF-8 byte is reported with its file and
line. Each parser yields `(where, record)` pairs with `where` = "<file>:<line>". A row that cannot even
be parsed (bad JSON line, wrong CSV column count, regex mismatch, undecodable bytes) travels as a
`BadRow`, whose field access raises its `DataError`, so `rows.make_examples` raises or skips it like
any other bad row.
"""
from __future__ import annotations

import csv
import json
import os
import re
from typing import Any, Iterator, Mapping, Sequence

from symbol_tuning.data.rows import DataError

FORMATS = ("jsonl", "json", "csv", "tsv", "lines", "regex")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
               ".txt": "lines"}


class BadRow(Mapping[str, Any]):
    """A row that could not be parsed; reading any field raises its DataError (see module docstring)."""

    def __init__(self, message: str):
        self.message = message

    def __getitem__(self, key: str) -> Any:
        raise DataError(self.message)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key]

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


def infer_format(path: str) -> str:
    """The file format from the file extension, or ValueError naming the file and the known formats."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise ValueError(f"{path}: cannot infer the file format from extension {ext!r}; pass file_format= "
                         f"one of {FORMATS}")
    return _EXTENSIONS[ext]


def _read_bytes(path: str, dataset: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{dataset}: data file {path} does not exist")
    with open(path, "rb") as f:
        return f.read()


def decoded_lines(path: str, *, encoding: str, dataset: str) -> Iterator[tuple[int, str | None, str]]:
    """(line number, decoded line without its newline or None if undecodable, error message) per line."""
    data = _read_bytes(path, dataset)
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    for i, raw in enumerate(parts):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as e:
            yield i + 1, None, (f"{dataset}: {path}:{i + 1}: not valid {encoding} ({e.reason} at byte {e.start} "
                                f"of the line)")
            continue
        if i == 0 and line.startswith("\ufeff"):
            line = line[1:]
        yield i + 1, line, ""


def bad_row(message: str, strict: bool) -> BadRow:
    if strict:
        raise DataError(message)
    return BadRow(message)


def _check_fields(fields: Sequence[str] | None, available: Sequence[str], *, where: str, dataset: str,
                  what: str) -> None:
    for field in fields or ():
        if field not in available:
            raise DataError(f"{dataset}: {where}: unknown field {field!r}; the {what} has {list(available)}")


def _jsonl(path, *, encoding, dataset, strict):
    for n, line, err in decoded_lines(path, encoding=encoding, dataset=dataset):
        where = f"{path}:{n}"
        if line is None:
            yield where, bad_row(err, strict)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield where, bad_row(f"{dataset}: {where}: malformed JSON ({e.msg} at column {e.colno})", strict)
            continue
        if not isinstance(record, dict):
            yield where, bad_row(f"{dataset}: {where}: JSON line is a {type(record).__name__}, not an object", strict)
            continue
        yield where, record


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _json(path, *, encoding, dataset, strict):
    """Records of a JSON list of objects, or of an object of objects (keyed records), with line numbers."""
    data = _read_bytes(path, dataset)
    try:
        text = data.decode(encoding).lstrip("\ufeff")
    except UnicodeDecodeError as e:  # strict: a bad byte is never replaced silently
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{dataset}: {path}:{line}: not valid {encoding} ({e.reason} at byte {e.start} of the "
                        "file)") from None
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def fail(pos: int, msg: str) -> DataError:
        return DataError(f"{dataset}: {path}:{line_at(pos)}: malformed JSON ({msg})")

    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] not in "[{":
        raise fail(i, "expected a list of objects or an object of objects")
    closer, keyed = ("]", False) if text[i] == "[" else ("}", True)
    i = _skip_ws(text, i + 1)
    if i < len(text) and text[i] == closer:
        return
    while True:
        try:
            if keyed:
                _, i = decoder.raw_decode(text, i)
                i = _skip_ws(text, i)
                if i >= len(text) or text[i] != ":":
                    raise fail(i, "expected ':' after a key")
                i = _skip_ws(text, i + 1)
            start = i
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise fail(e.pos, e.msg) from None
        where = f"{path}:{line_at(start)}"
        if isinstance(record, dict):
            yield where, record
        else:
            yield where, bad_row(f"{dataset}: {where}: JSON record is a {type(record).__name__}, not an object",
                              strict)
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
        elif i < len(text) and text[i] == closer:
            return
        else:
            raise fail(i, f"expected ',' or {closer!r}")


def _delimited(path, *, encoding, dataset, strict, delimiter, quoting, has_header, columns, fields):
    decoded: list[str] = []
    bad_lines: dict[int, str] = {}
    for n, line, err in decoded_lines(path, encoding=encoding, dataset=dataset):
        if line is None:
            bad_lines[n] = err
            line = ""
        decoded.append(line + "\n")
    reader = csv.reader(iter(decoded), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    names: list[str] | None = list(columns) if columns is not None else None
    previous_end = 0
    header_done = not has_header
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{dataset}: {path}:{reader.line_num}: malformed {delimiter!r}-separated row ({e})")
        start, previous_end = previous_end + 1, reader.line_num
        where = f"{path}:{start}"
        bad = [bad_lines[n] for n in range(start, previous_end + 1) if n in bad_lines]
        if not header_done:
            header_done = True
            if bad:
                raise DataError(bad[0])
            if names is None:
                names = [c.strip() for c in row]
            _check_fields(fields, names, where=where, dataset=dataset, what="header")
            continue
        if not row or (len(row) == 1 and not row[0].strip() and not bad):
            continue
        if names is None:
            names = [str(i) for i in range(len(row))]
            _check_fields(fields, names, where=where, dataset=dataset, what="file (columns 0..n-1)")
        if bad:
            yield where, bad_row(bad[0], strict)
        elif len(row) != len(names):
            yield where, bad_row(f"{dataset}: {where}: row has {len(row)} columns, expected {len(names)} "
                              f"({names})", strict)
        else:
            yield where, dict(zip(names, row))


def _regex(path, *, encoding, dataset, strict, regex, fields):
    pattern = re.compile(regex)
    _check_fields(fields, list(pattern.groupindex), where=f"{path}:1", dataset=dataset,
                  what=f"regex {regex!r}")
    for n, line, err in decoded_lines(path, encoding=encoding, dataset=dataset):
        where = f"{path}:{n}"
        if line is None:
            yield where, bad_row(err, strict)
            continue
        m = pattern.match(line)
        if m is None:
            yield where, bad_row(f"{dataset}: {where}: line does not match the pattern {regex!r}: {line[:80]!r}",
                              strict)
            continue
        yield where, m.groupdict()


def read_records(path: str, *, file_format: str | None = None, has_header: bool = True,
                 columns: Sequence[str] | None = None, encoding: str = "utf-8", regex: str | None = None,
                 delimiter: str | None = None, quoting: bool | None = None,
                 fields: Sequence[str] | None = None, dataset: str | None = None,
                 strict: bool = True) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, record) pairs of one file; `where` = "<file>:<line>" (first line of a multi-line record).

    Formats: jsonl, json (a list of objects, or an object of keyed objects), csv / tsv (a header row,
    or `columns` naming headerless columns; tsv defaults to no quote handling, as GLUE's files need),
    lines ({"text": line}), regex (named groups of `regex`). `fields`: names the caller needs, checked
    against a header or the regex groups up front. strict=False yields unparseable rows as `BadRow`s
    instead of raising, so that `make_examples(skip_bad_rows=True)` can count and drop them.
    """
    fmt = file_format or infer_format(path)
    name = dataset or os.path.basename(path)
    if fmt == "jsonl":
        return _jsonl(path, encoding=encoding, dataset=name, strict=strict)
    if fmt == "json":
        return _json(path, encoding=encoding, dataset=name, strict=strict)
    if fmt in ("csv", "tsv"):
        return _delimited(path, encoding=encoding, dataset=name, strict=strict,
                          delimiter=delimiter or ("," if fmt == "csv" else "\t"),
                          quoting=(fmt == "csv") if quoting is None else quoting, has_header=has_header,
                          columns=columns, fields=fields)
    if fmt == "lines":
        return (((f"{path}:{n}", {"text": line}) if line is not None
                 else (f"{path}:{n}", bad_row(err, strict)))
                for n, line, err in decoded_lines(path, encoding=encoding, dataset=name))
    if fmt == "regex":
        if not regex:
            raise ValueError(f"{name}: {path}: file_format='regex' needs regex=")
        return _regex(path, encoding=encoding, dataset=name, strict=strict, regex=regex, fields=fields)
    raise ValueError(f"{name}: {path}: unknown file_format {fmt!r}; known: {FORMATS}")

