"""Instruction-tuning (inputs, targets) data from local files, saved HF datasets or the HF hub.

Symbol data is mixed with instruction data (e.g. a Flan collection export) during tuning; this module
turns any such source into `GenerativeData` of `TextPair`s. Every row is checked: a missing or empty
inputs/targets field raises `DataError` naming the file and line (jsonl/csv/tsv), record (json) or row
(parquet, HF datasets); with `skip_bad_rows=True` bad rows are dropped and counted in one warning.
A cap keeps a seeded random subset (see `sources.hub.seeded_subset`).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from typing import Any, Iterator, Mapping

from symbol_tuning.data.examples import GenerativeData, TextPair
from symbol_tuning.data.rows import DataError, _text
from symbol_tuning.data.sources.hub import seeded_subset

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "hf_disk", "hub")
_EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def infer_format(path_or_hf_id: str) -> str:
    """The source kind: a data file by extension, a save_to_disk directory, or else a hub id."""
    if os.path.isdir(path_or_hf_id):
        if any(os.path.exists(os.path.join(path_or_hf_id, f)) for f in ("dataset_dict.json", "state.json")):
            return "hf_disk"
        raise ValueError(f"{path_or_hf_id}: a directory that was not written by save_to_disk; point at a file")
    ext = os.path.splitext(path_or_hf_id)[1].lower()
    if os.path.isfile(path_or_hf_id):
        if ext not in _EXTENSIONS:
            raise ValueError(f"{path_or_hf_id}: unknown file kind {ext!r}; pass file_format= one of {FORMATS}")
        return _EXTENSIONS[ext]
    if ext in _EXTENSIONS or path_or_hf_id.startswith((".", "/", "~")):
        raise FileNotFoundError(f"instruction data file {path_or_hf_id!r} does not exist")
    return "hub"


def _jsonl_rows(path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path} line {n}"
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield where, DataError(f"{where}: not valid JSON ({e})")
                continue
            yield where, record if isinstance(record, dict) else DataError(f"{where}: a JSON object is expected")


def _json_rows(path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if isinstance(records, dict) and isinstance(records.get("data"), list):
        records = records["data"]
    if not isinstance(records, list):
        raise DataError(f"{path}: a JSON list of records (or {{'data': [...]}}) is expected")
    for i, record in enumerate(records):
        where = f"{path} record {i}"
        yield where, record if isinstance(record, dict) else DataError(f"{where}: a JSON object is expected")


def _csv_rows(path: str, delimiter: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            for record in reader:
                yield f"{path} line {reader.line_num}", record
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 after line {reader.line_num} ({e.reason})") from None


def _parquet_rows(path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
        for record in batch.to_pylist():
            yield f"{path} row {i}", record
            i += 1


def _hf_rows(ds, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for i, record in enumerate(ds):
        yield f"{where} row {i}", record


def _open_hf(path_or_hf_id: str, file_format: str, split: str):
    import datasets

    if file_format == "hf_disk":
        loaded = datasets.load_from_disk(path_or_hf_id)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path_or_hf_id}: no split {split!r}; splits are {sorted(loaded)}")
            return loaded[split]
        return loaded
    return datasets.load_dataset(path_or_hf_id, split=split)


def _rows(path_or_hf_id: str, file_format: str, split: str) -> Iterator[tuple[str, Any]]:
    if file_format == "jsonl":
        return _jsonl_rows(path_or_hf_id)
    if file_format == "json":
        return _json_rows(path_or_hf_id)
    if file_format in ("csv", "tsv"):
        return _csv_rows(path_or_hf_id, "," if file_format == "csv" else "\t")
    if file_format == "parquet":
        return _parquet_rows(path_or_hf_id)
    return _hf_rows(_open_hf(path_or_hf_id, file_format, split), f"{path_or_hf_id}[{split}]")


def load_instruction_data(path_or_hf_id: str, *, inputs_field: str = "inputs", targets_field: str = "targets",
                          split: str = "train", file_format: str | None = None, max_examples: int | None = None,
                          skip_bad_rows: bool = False, seed: int = 0, name: str | None = None) -> GenerativeData:
    """(inputs, targets) pairs from a jsonl/json/csv/tsv/parquet file, a save_to_disk directory or a hub id.

    file_format None infers it (see `infer_format`); `split` picks the split of a saved DatasetDict or a
    hub dataset. name defaults to the file's base name (or the hub id).
    """
    file_format = file_format or infer_format(path_or_hf_id)
    if file_format not in FORMATS:
        raise ValueError(f"{path_or_hf_id}: unknown file_format {file_format!r}; expected one of {FORMATS}")
    if file_format != "hub" and not os.path.exists(path_or_hf_id):
        raise FileNotFoundError(f"instruction data file {path_or_hf_id!r} does not exist")
    name = name or (path_or_hf_id if file_format == "hub" else os.path.basename(os.path.normpath(path_or_hf_id)))
    pairs: list[TextPair] = []
    skipped: list[str] = []
    for where, record in _rows(path_or_hf_id, file_format, split):
        try:
            if isinstance(record, DataError):
                raise DataError(f"{name}: {record}")
            inputs = _text(record.get(inputs_field), dataset=name, where=where, field=inputs_field)
            targets = _text(record.get(targets_field), dataset=name, where=where, field=targets_field)
        except DataError as e:
            if not skip_bad_rows:
                raise
            skipped.append(str(e))
            continue
        pairs.append(TextPair(inputs=inputs, targets=targets))
    if skipped:
        log.warning("%s: skipped %d bad rows (skip_bad_rows=True); first: %s", name, len(skipped), skipped[0])
    if not pairs:
        raise DataError(f"{name}: {path_or_hf_id}: no usable ({inputs_field!r}, {targets_field!r}) rows")
    return GenerativeData(name=name, split=split, examples=seeded_subset(pairs, max_examples, seed),
                          task_type="instruction")
