"""Instruction-tuning data from a user path: "instructions:flan".

Flan data are not bundled; point `SYMBOL_TUNING_FLAN_PATH` (JSONL/JSON/CSV/TSV/parquet, a saved HF
dataset or a hub id) at them, or call `register_instruction_task(name, path, ...)` for any other
set. Nothing is read until the task is first used.
"""
from __future__ import annotations

import functools
import os

from symbol_tuning.data.examples import GenerativeData
from symbol_tuning.data.task_builders import instruction_task
from symbol_tuning.data.task_registry import PromptTask, TaskRegistry

FLAN_TASK = "instructions:flan"
FLAN_ENV = "SYMBOL_TUNING_FLAN_PATH"


def _load(path: str | None, **fields) -> GenerativeData:
    from symbol_tuning.data.instruction_data import load_instruction_data
    path = path or os.environ.get(FLAN_ENV)
    if not path:
        raise FileNotFoundError(f"task {FLAN_TASK!r} needs instruction data: set {FLAN_ENV} to a file, a saved "
                                "HF dataset or a hub id (or register_instruction_task with a path)")
    return load_instruction_data(path, **fields)


def register_instruction_task(name: str, path: str, *, overwrite: bool = False, **fields) -> PromptTask:
    """Register an instruction task reading `path` lazily (fields as load_instruction_data takes)."""
    return TaskRegistry.add(instruction_task(name, functools.partial(_load, path, **fields)), overwrite=overwrite)


def register() -> None:
    if FLAN_TASK not in TaskRegistry.names():
        TaskRegistry.add(instruction_task(FLAN_TASK, functools.partial(_load, None)))


register()
