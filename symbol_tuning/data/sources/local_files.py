"""A user's own classification data from local files (JSONL, JSON, CSV, TSV, plain lines, regex lines).

The parsers (readers.py) yield `(where, record)` pairs with `where` = "<file>:<line>" and the
records become `Example`s through `rows.make_examples`, so a bad row is reported (or, with
`skip_bad_rows=True`, dropped and counted) exactly like a bad row from the hub.

Layouts: one file; "parallel" (a text file and a labels file read in lock step, as TweetEval ships);
"per_label_files" (one file per label, as SUBJ and Rotten Tomatoes ship).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from symbol_tuning.data.examples import ClassificationData, Example
from symbol_tuning.data.rows import DataError, FieldMapping, make_examples
from symbol_tuning.data.sources.local_source import LocalSource
from symbol_tuning.data.sources.readers import FORMATS, BadRow, bad_row, decoded_lines, infer_format, read_records
from symbol_tuning.data.validation import check_not_empty

_TEXT_LABEL = FieldMapping(text_fields=("text",), label_field="label")
log = logging.getLogger(__name__)

__all__ = ["FORMATS", "BadRow", "infer_format", "load_local", "partition", "read_records",
           "source_rows", "subset"]


def _parallel_rows(source: LocalSource, strict: bool):
    text_path, labels_path = source.files
    texts = list(decoded_lines(text_path, encoding=source.encoding, dataset=source.name))
    labels = list(decoded_lines(labels_path, encoding=source.encoding, dataset=source.name))
    if len(texts) != len(labels):
        raise DataError(f"{source.name}: {text_path} has {len(texts)} lines but {labels_path} has "
                        f"{len(labels)} lines; parallel files must have one label line per text line")
    for (n, text, err_t), (_, label, err_l) in zip(texts, labels):
        where = f"{text_path}:{n}"
        if text is None or label is None:
            yield where, bad_row(err_t or err_l, strict)
        else:
            yield where, {"text": text, "label": label}


def _per_label_rows(source: LocalSource, strict: bool):
    for label, path in source.files.items():
        regex = source.regex.get(label) if isinstance(source.regex, Mapping) else source.regex
        fmt = source.file_format or ("regex" if regex else "lines")
        for where, record in read_records(path, file_format=fmt, regex=regex, encoding=source.encoding,
                                          has_header=source.has_header, columns=source.columns,
                                          delimiter=source.delimiter, quoting=source.quoting,
                                          fields=("text",), dataset=source.name, strict=strict):
            yield where, record if isinstance(record, BadRow) else {**record, "label": label}


def _repair(rows, source: LocalSource, fields: Sequence[str]):
    """Apply the source's declared repairs of known file defects (see LocalSource), logging counts."""
    counts = {"dropped blank rows": 0, "filled blank fields": 0, "stripped U+FFFD from rows": 0}
    for where, record in rows:
        if isinstance(record, BadRow):
            yield where, record
            continue
        record = dict(record)
        values = {f: record.get(f) for f in fields if isinstance(record.get(f), str)}
        if source.strip_replacement_chars and any("\ufffd" in v for v in values.values()):
            counts["stripped U+FFFD from rows"] += 1
            for f, v in values.items():
                record[f] = values[f] = v.replace("\ufffd", "")
        blank = [f for f, v in values.items() if not v.strip()]
        if source.drop_empty and values and len(blank) == len(fields):
            counts["dropped blank rows"] += 1
            continue
        if source.fill_empty is not None and len(fields) > 1 and 0 < len(blank) < len(fields):
            counts["filled blank fields"] += len(blank)
            record.update({f: source.fill_empty for f in blank})
        yield where, record
    for what, n in counts.items():
        if n:
            log.info("%s: %s: %d (declared defect of the source files)", source.name, what, n)


def source_rows(source: LocalSource, *, strict: bool = True) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, record) pairs of every file of a LocalSource, in file order, after declared repairs."""
    mapping = source.mapping or _TEXT_LABEL
    rows = _raw_rows(source, strict)
    if source.unlabeled:
        rows = ((w, r) for w, r in rows
                if isinstance(r, BadRow) or str(r.get(mapping.label_field)).strip() not in source.unlabeled)
    if source.drop_empty or source.fill_empty is not None or source.strip_replacement_chars:
        rows = _repair(rows, source, mapping.text_fields)
    return rows


def _raw_rows(source: LocalSource, strict: bool) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if source.layout == "parallel":
        return _parallel_rows(source, strict)
    if source.layout == "per_label_files":
        return _per_label_rows(source, strict)
    mapping = source.mapping or _TEXT_LABEL
    regex = source.regex if isinstance(source.regex, str) else None
    return read_records(source.files, file_format=source.file_format, has_header=source.has_header,
                        columns=source.columns, encoding=source.encoding, regex=regex,
                        delimiter=source.delimiter, quoting=source.quoting,
                        fields=(*mapping.text_fields, mapping.label_field), dataset=source.name,
                        strict=strict)


def partition(examples: Sequence[Example], *, part: str, train_fraction: float,
              num_labels: int) -> tuple[Example, ...]:
    """One side of the deterministic stratified train/eval partition described in `LocalSource`."""
    if part not in ("train", "eval"):
        raise ValueError(f"partition part must be 'train' or 'eval', got {part!r}")
    keep = np.zeros(len(examples), dtype=bool)
    labels = np.array([ex.label for ex in examples], dtype=np.int64)
    for label in range(num_labels):
        idx = np.flatnonzero(labels == label)
        order = idx[np.random.default_rng(0).permutation(len(idx))]
        n_train = int(np.ceil(train_fraction * len(idx)))
        chosen = order[:n_train] if part == "train" else order[n_train:]
        keep[chosen] = True
    return tuple(ex for ex, k in zip(examples, keep) if k)


def subset(examples: Sequence[Example], max_examples: int | None, seed: int) -> tuple[Example, ...]:
    """At most max_examples examples: a seeded random subset, kept in file order (deterministic)."""
    if max_examples is None or len(examples) <= max_examples:
        return tuple(examples)
    chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=max_examples, replace=False))
    return tuple(examples[i] for i in chosen)


def _file_for_split(path: str, split: str, spec: Any) -> str:
    """A data file for `split` in a directory: <split>.<ext> or <hf split>.<ext>, ext in jsonl/json/csv/tsv."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{spec.name}: local path {path} does not exist")
    splits = getattr(spec, "splits", None) or {}
    stems = [s for s in (splits.get(split), split) if s]
    for stem in stems:
        for ext in (".jsonl", ".json", ".csv", ".tsv"):
            candidate = os.path.join(path, stem + ext)
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(f"{spec.name}: no data file for split {split!r} in {path} (looked for "
                            f"{[s + e for s in stems for e in ('.jsonl', '.json', '.csv', '.tsv')]})")


def _spec_source(spec: Any, split: str, path: str) -> LocalSource:
    """A split file under `path` read with the spec's columns, else the raw release's known layout."""
    try:
        file = _file_for_split(path, split, spec)
    except FileNotFoundError:
        if not os.path.isdir(path):
            raise
        from symbol_tuning.data.sources import layouts  # lazy: layouts of raw releases (shared/data style)

        try:
            return layouts.local_source(spec.name, path, split)
        except KeyError:
            raise FileNotFoundError(f"{spec.name}: no data file for split {split!r} in {path} and no known "
                                    f"raw layout for {spec.name!r}") from None
    return LocalSource(files=file, label_names=tuple(spec.label_names), name=spec.name, mapping=spec.mapping,
                       instruction=spec.instruction, unlabeled=tuple(getattr(spec, "unlabeled", ())))


def load_local(*, spec: Any = None, split: str, path: str | None = None, source: LocalSource | None = None,
               skip_bad_rows: bool = False, max_examples: int | None = None,
               seed: int = 0, counts: dict[str, int] | None = None) -> ClassificationData:
    """One split of a local dataset as ClassificationData.

    With `source`, read that LocalSource. With a DatasetSpec and `path` (a file, or a directory holding
    <split>.jsonl/.json/.csv/.tsv), read it with the spec's HF column names and labels, so a JSONL
    export of the HF dataset loads as is; a directory without such files is read as a raw release
    laid out like shared/data (see sources.layouts). Over max_examples: a seeded subset in file order.
    `counts`, when given, receives "skipped_bad_rows" (rows dropped by skip_bad_rows).
    """
    if source is None:
        if spec is None or path is None:
            raise ValueError("load_local needs source=LocalSource(...), or spec= together with path=")
        source = _spec_source(spec, split, path)
    mapping = source.mapping or _TEXT_LABEL
    rows = source_rows(source, strict=not skip_bad_rows)
    counts = {} if counts is None else counts
    examples = make_examples(rows, dataset=source.name, mapping=mapping, label_names=source.label_names,
                             skip_bad_rows=skip_bad_rows, counts=counts)
    check_not_empty(len(examples), dataset=source.name, files=source.files, skipped=counts.get("skipped_bad_rows"))
    if source.dedupe:
        first = {}
        examples = tuple(first.setdefault(ex.text, ex) for ex in examples if ex.text not in first)
    if source.part is not None:
        examples = partition(examples, part=source.part, train_fraction=source.train_fraction,
                             num_labels=len(source.label_names))
    if source.holdout:
        held = {ex.text for other in source.holdout
                for ex in load_local(source=other, split="holdout", skip_bad_rows=skip_bad_rows).examples}
        kept = tuple(ex for ex in examples if ex.text not in held)
        if len(kept) < len(examples):
            log.info("%s[%s]: removed %d rows whose text is in the held-out files %s", source.name, split,
                     len(examples) - len(kept), [other.files for other in source.holdout])
        examples = kept
    instruction = source.instruction if source.instruction is not None else getattr(spec, "instruction", None)
    return ClassificationData(name=source.name, split=split, examples=subset(examples, max_examples, seed),
                              label_names=tuple(source.label_names), instruction=instruction)
