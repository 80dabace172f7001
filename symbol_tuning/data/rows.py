"""Turning raw source rows into validated `Example`s, the same way for every source.

Every loader (HF datasets, TFDS, local files) yields `(where, record)` pairs, where `where` names the
file and line (or dataset and row) so that a bad row is reported precisely. A row with a missing or
unknown label, an empty or non-UTF-8 text, or a missing field raises `DataError`; with
`skip_bad_rows=True` such rows are dropped and counted in one logged warning instead.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Mapping, Sequence

from symbol_tuning.data.examples import Example

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A source row that cannot become an example; the message names dataset and location."""


@dataclasses.dataclass(frozen=True)
class FieldMapping:
    """Which record fields hold the input texts and the label, and how to render them.

    text_fields: record keys in render order. titles: one per text field; a multi-field input is
    rendered as "Title: text" lines (a None title renders the bare text). label_field: record key of the
    label. label_map: raw label value (as str) -> label index; when None, raw labels must be ints in
    range or strings equal to one of `label_names`.
    """

    text_fields: tuple[str, ...]
    label_field: str
    titles: tuple[str | None, ...] | None = None
    label_map: Mapping[str, int] | None = None

    def __post_init__(self):
        if not self.text_fields:
            raise ValueError("FieldMapping needs at least one text field")
        if self.titles is not None and len(self.titles) != len(self.text_fields):
            raise ValueError(f"FieldMapping: {len(self.titles)} titles for {len(self.text_fields)} text fields")


def render_fields(texts: Sequence[str], titles: Sequence[str | None] | None) -> str:
    """One input string from several fields: bare text for one field, 'Title: text' lines otherwise."""
    if titles is None:
        titles = [None] * len(texts) if len(texts) == 1 else [f"Text {i + 1}" for i in range(len(texts))]
    parts = [t if title is None else f"{title}: {t}" for t, title in zip(texts, titles)]
    return "\n".join(parts)


def _text(value: Any, *, dataset: str, where: str, field: str) -> str:
    if value is None:
        raise DataError(f"{dataset}: {where}: field {field!r} is missing")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{dataset}: {where}: field {field!r} is not valid UTF-8 ({e.reason} at byte {e.start})")
    if not isinstance(value, str):
        value = str(value)
    value = value.strip()
    if not value:
        raise DataError(f"{dataset}: {where}: field {field!r} is empty")
    return value


def label_index(raw: Any, *, label_names: Sequence[str], label_map: Mapping[str, int] | None,
                dataset: str, where: str, field: str) -> int:
    """The label index of a raw label value, or DataError naming the value and the label set."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(f"{dataset}: {where}: label field {field!r} is missing")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{dataset}: {where}: label field {field!r} is not valid UTF-8 ({e.reason} at byte "
                            f"{e.start})") from None
    if label_map is not None:
        key = str(raw).strip()
        if key not in label_map:
            raise DataError(f"{dataset}: {where}: label {key!r} in field {field!r} is not in the label set "
                            f"{sorted(label_map)}")
        return label_map[key]
    if isinstance(raw, bool):
        raw = int(raw)
    if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().lstrip("-").isdigit()):
        idx = int(raw)
        if 0 <= idx < len(label_names):
            return idx
        raise DataError(f"{dataset}: {where}: label {idx} in field {field!r} is outside the label set "
                        f"0..{len(label_names) - 1} {tuple(label_names)}")
    key = str(raw).strip()
    if key in label_names:
        return list(label_names).index(key)
    raise DataError(f"{dataset}: {where}: label {key!r} in field {field!r} is not in the label set "
                    f"{tuple(label_names)}")


def make_examples(rows: Iterable[tuple[str, Mapping[str, Any]]], *, dataset: str, mapping: FieldMapping,
                  label_names: Sequence[str], skip_bad_rows: bool = False,
                  counts: dict[str, int] | None = None) -> tuple[Example, ...]:
    """Validated examples from (where, record) rows; raises DataError on the first bad row unless skipping
    (then `counts["skipped_bad_rows"]`, when given, receives how many were skipped)."""
    out: list[Example] = []
    skipped: list[str] = []
    for where, record in rows:
        try:
            texts = [_text(record.get(f), dataset=dataset, where=where, field=f) for f in mapping.text_fields]
            label = label_index(record.get(mapping.label_field), label_names=label_names,
                                label_map=mapping.label_map, dataset=dataset, where=where,
                                field=mapping.label_field)
        except DataError as e:
            if not skip_bad_rows:
                raise
            skipped.append(str(e))
            continue
        out.append(Example(text=render_fields(texts, mapping.titles), label=label))
    if skipped:
        log.warning("%s: skipped %d bad rows (skip_bad_rows=True); first: %s", dataset, len(skipped), skipped[0])
    if counts is not None:
        counts["skipped_bad_rows"] = counts.get("skipped_bad_rows", 0) + len(skipped)
    return tuple(out)
