"""Data validated before training starts, not when the stream draws a row.

- An empty data file (or one whose rows were all skipped) is an error naming the file (`check_not_empty`,
  called by the local readers).
- Tuning data noted when a local mixture is registered (`note_tuning_data`) is checked at run start
  (`validate_run`), in one pass over the rows and with the run's real prompt budget (feature lengths and
  vocabulary): a class with no rows, and a row whose prompt cannot fit even with min_per_class (2) exemplars
  per class (the fewest a symbol-tuning prompt may keep), are errors naming the dataset, its files, the row
  and its length. With skip_bad_rows the rows that cannot fit are dropped and counted instead; the task is
  re-registered without them, the counts are logged, and the train command saves them in
  MODEL_DIR/data_validation.json.
- The first CHECK_PROMPTS prompts of each such task are then built with the run's budget and seed: prompts
  that length fitting dropped (redrawn by the task, task_builders.PromptDrops) are counted into the report
  (`dropped_prompts` of `checked_prompts`) with one warning per dataset.

"Cannot fit" uses a lower bound of the shortest prompt a row can be the query of: its own length plus
the min_per_class shortest other rows of every class, less one token per join (tokenizers are not exactly additive).
A row over that bound can never fit whatever exemplars are drawn; a row just under it is still checked
by the prompt builder when drawn. Hub-backed tasks (the paper's datasets, loaded lazily) are not
scanned here.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable, Mapping, Sequence

from symbol_tuning.data.examples import ClassificationData
from symbol_tuning.data.rows import DataError
from symbol_tuning.data.task_registry import PromptBudget, TaskRegistry

log = logging.getLogger(__name__)
REPORT_NAME = "data_validation.json"
CHECK_PROMPTS = 256  # prompts built per tuning dataset at run start to count length-fitting drops


def file_list(files: Any) -> list[str]:
    """A LocalSource's `files` (one path, a list, or label -> path) as a list of paths."""
    if isinstance(files, str):
        return [files]
    return [str(f) for f in (files.values() if isinstance(files, Mapping) else files)]


def check_not_empty(num_examples: int, *, dataset: str, files: Any, skipped: int | None = None) -> None:
    """DataError naming the files when a dataset read from them has no usable row."""
    if num_examples:
        return
    if skipped:
        why = f"all {skipped} rows were dropped"
    else:
        why = "the file is empty, or every row was filtered out or skipped as bad"
    raise DataError(f"{dataset}: {', '.join(file_list(files))}: no usable rows ({why})")


@dataclasses.dataclass
class DatasetReport:
    """What the run-start pass found in one tuning dataset."""

    task: str
    dataset: str
    files: list[str]
    rows: int
    skipped_bad_rows: int = 0
    dropped_too_long: int = 0
    first_dropped: str = ""
    checked_prompts: int = 0
    dropped_prompts: int = 0


@dataclasses.dataclass(frozen=True)
class _Noted:
    data: ClassificationData
    files: tuple[str, ...]
    skip_bad_rows: bool
    rebuild: Callable[[ClassificationData], Any]
    skipped_bad_rows: int = 0


_NOTED: dict[str, _Noted] = {}
_LOCK = threading.Lock()


def note_tuning_data(task: str, data: ClassificationData, *, files: Sequence[str], skip_bad_rows: bool,
                     rebuild: Callable[[ClassificationData], Any], skipped_bad_rows: int = 0) -> None:
    """Remember a registered tuning task's in-memory data for the run-start pass; `rebuild(cleaned)`
    re-registers the task with the rows that fit (called only when rows are dropped); `skipped_bad_rows`
    (unparseable rows the reader dropped) goes into the report."""
    with _LOCK:
        _NOTED[task] = _Noted(data, tuple(files), skip_bad_rows, rebuild, skipped_bad_rows)


def _class_check(data: ClassificationData, files: Sequence[str]) -> None:
    counts = [0] * data.num_classes
    for ex in data.examples:
        counts[ex.label] += 1
    empty = [f"{data.label_names[c]!r} (label {c})" for c, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(f"{data.name}: {list(files)}: classes {empty} have no rows; a symbol-tuning prompt shows "
                        f"every class, so none of its prompts can be built")


def rows_that_cannot_fit(data: ClassificationData, *, max_input_length: int, length_fn: Callable[[str], int],
                         min_per_class: int = 2) -> list[tuple[int, int]]:
    """(row index, lower bound of its shortest prompt) of every row whose prompt can never fit with
    `min_per_class` exemplars per class (or all a class has, when fewer)."""
    lengths = [length_fn(ex.text) for ex in data.examples]
    keep = min_per_class + 1  # the shortest (length, index) per class: min_per_class remain after removing the row
    best: list[list[tuple[int, int]]] = [[] for _ in range(data.num_classes)]
    for i, (ex, n) in enumerate(zip(data.examples, lengths)):
        best[ex.label] = sorted(best[ex.label] + [(n, i)])[:keep]
    out = []
    for i, (ex, n) in enumerate(zip(data.examples, lengths)):
        bound, shown = n, 0
        for shortest in best:
            others = [length for length, j in shortest if j != i][:min_per_class]
            bound, shown = bound + sum(others), shown + len(others)
        bound -= shown + 1  # one token per join
        if bound > max_input_length:
            out.append((i, bound))
    return out


def validate_tuning_data(task: str, data: ClassificationData, *, files: Sequence[str], max_input_length: int,
                         length_fn: Callable[[str], int], skip_bad_rows: bool, min_per_class: int = 2
                         ) -> tuple[ClassificationData, DatasetReport]:
    """One pass over `data`: classes with no rows raise; rows that cannot fit with `min_per_class` exemplars
    per class raise (or are dropped and counted with skip_bad_rows). Returns the data to train on and the
    report."""
    report = DatasetReport(task=task, dataset=data.name, files=list(files), rows=len(data.examples))
    _class_check(data, files)
    bad = rows_that_cannot_fit(data, max_input_length=max_input_length, length_fn=length_fn,
                               min_per_class=min_per_class)
    if not bad:
        return data, report
    i, bound = bad[0]
    where = (f"{data.name}: {list(files)}: row {i} ({data.examples[i].text[:40]!r}...) needs at least {bound} tokens "
             f"with {min_per_class} exemplars per class, over max_input_length={max_input_length}")
    if not skip_bad_rows:
        raise DataError(f"{where}; {len(bad)} such rows (pass skip_bad_rows=True to drop them)")
    dropped = {j for j, _ in bad}
    kept = tuple(ex for j, ex in enumerate(data.examples) if j not in dropped)
    report.dropped_too_long, report.first_dropped = len(dropped), where
    cleaned = dataclasses.replace(data, examples=kept)
    check_not_empty(len(kept), dataset=data.name, files=list(files), skipped=len(dropped))
    _class_check(cleaned, files)
    log.warning("%s: dropped %d rows whose prompt cannot fit (skip_bad_rows=True); first: %s", data.name,
                len(dropped), where)
    return cleaned, report


def count_prompt_drops(task_name: str, *, seed: int, budget: PromptBudget, num_prompts: int) -> tuple[int, int]:
    """(dropped, built) over the first `num_prompts` prompts of a symbol task (the ones its stream draws
    first), with the run's budget; the task's drop counter is reset afterwards so the stream counts afresh.
    A prompt whose redraws all drop raises PromptTooLongError here, before any step."""
    task = TaskRegistry.get(task_name)
    drops = task.metadata.get("prompt_drops")
    if drops is None:
        return 0, 0
    drops.reset()
    try:
        for index in range(num_prompts):
            task.example(index, seed, budget)
        return drops.snapshot()
    finally:
        drops.reset()


def validate_run(tasks: Sequence[str], *, max_input_length: int, length_fn: Callable[[str], int], seed: int = 0,
                 check_prompts: int = CHECK_PROMPTS) -> tuple[list[DatasetReport], bool]:
    """Run-start pass over the noted tuning data of `tasks` (a mixture's leaf task names); returns the
    reports and whether any task was re-registered (the caller then rebuilds its stream). The first
    `check_prompts` prompts of each (at the stream's `seed`) are built and their drops counted into the
    report, with one warning per dataset that had any."""
    reports, changed = [], False
    budget = PromptBudget(max_input_length=max_input_length, length_fn=length_fn)
    for task in tasks:
        with _LOCK:
            noted = _NOTED.get(task)
        if noted is None:
            continue
        min_per_class = TaskRegistry.get(task).metadata.get("min_per_class", 2)
        cleaned, report = validate_tuning_data(task, noted.data, files=noted.files, max_input_length=max_input_length,
                                               length_fn=length_fn, skip_bad_rows=noted.skip_bad_rows,
                                               min_per_class=min_per_class)
        report.skipped_bad_rows = noted.skipped_bad_rows
        reports.append(report)
        if cleaned is not noted.data:
            noted.rebuild(cleaned)
            with _LOCK:
                _NOTED[task] = dataclasses.replace(noted, data=cleaned)
            changed = True
        report.checked_prompts = min(check_prompts, len(cleaned.examples))
        report.dropped_prompts, _ = count_prompt_drops(task, seed=seed, budget=budget,
                                                       num_prompts=report.checked_prompts)
        if report.dropped_prompts:
            log.warning("%s: %d of the first %d symbol-tuning prompts (seed %d) were dropped and redrawn: they cannot "
                        "keep %d exemplars per class within max_input_length=%d", cleaned.name, report.dropped_prompts,
                        report.checked_prompts, seed, min_per_class, max_input_length)
    return reports, changed
