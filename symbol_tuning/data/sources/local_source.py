"""`LocalSource`: where a local classification dataset lives on disk and how to read it. Shared by the
file loader (local_files) and the raw releases' layouts (layouts), which build these descriptions.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from symbol_tuning.data.rows import FieldMapping


@dataclasses.dataclass(frozen=True)
class LocalSource:
    """Where a local classification dataset lives on disk and how to read it.

    files: one path; a {label: path} dict (per_label_files: the label comes from the file, given as a
    label name or index); or a (text_path, labels_path) tuple (parallel). regex may be a {label: regex}
    dict for per_label_files. dedupe drops later rows whose text repeats an earlier one (first wins).
    Known defects of a real file, each handled only where a layout asks and counted in a log line:
    drop_empty drops rows whose text fields are all blank; fill_empty puts a filler into blank
    optional fields of multi-field rows; strip_replacement_chars removes U+FFFD characters that the
    file itself already holds (bytes lost upstream).
    part: None, or "train" / "eval" to take a deterministic stratified partition of the rows:
    `train_fraction` of each label's rows (rounded up, order fixed by a seed-0 permutation) are
    "train", the rest "eval"; used where a dataset ships one pool of labelled rows (SUBJ, RAFT).
    holdout: sources whose texts are removed from this one (a train split minus any text of the
    held-out files, since real releases repeat some texts across their official splits).
    unlabeled: raw label values meaning "no gold label" (a spec's GLUE -1); such rows are dropped.
    """

    files: str | Mapping[str, str] | tuple[str, str]
    label_names: tuple[str, ...]
    name: str
    file_format: str | None = None
    mapping: FieldMapping | None = None
    columns: tuple[str, ...] | None = None
    has_header: bool = True
    regex: str | Mapping[str, str] | None = None
    encoding: str = "utf-8"
    delimiter: str | None = None
    quoting: bool | None = None
    dedupe: bool = False
    drop_empty: bool = False
    fill_empty: str | None = None
    strip_replacement_chars: bool = False
    part: str | None = None
    train_fraction: float = 0.8
    holdout: tuple["LocalSource", ...] = ()
    unlabeled: tuple[str, ...] = ()
    instruction: str | None = None

    @property
    def layout(self) -> str:
        """"single", "parallel" or "per_label_files", from the type of `files`."""
        if isinstance(self.files, Mapping):
            return "per_label_files"
        if isinstance(self.files, tuple):
            return "parallel"
        return "single"
