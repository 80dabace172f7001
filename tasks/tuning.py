"""The paper's 22 tuning datasets, one symbol-remapped task each: "symbol_tuning:<dataset>".

Data load on first use with `data.sources.hub.load_classification(name, "train", source=SOURCE)`;
set `SOURCE` (or register your own task with a local path) before the first use.
"""
from __future__ import annotations

import functools

from symbol_tuning.data import specs
from symbol_tuning.data.task_builders import symbol_task
from symbol_tuning.data.task_registry import TaskRegistry

SOURCE = "hf"


def _load(name: str):
    from symbol_tuning.data.sources.hub import load_classification
    return load_classification(name, "train", source=SOURCE, max_examples=specs.TUNING_MAX_EXAMPLES)


def task_names() -> list[str]:
    return [f"symbol_tuning:{name}" for name in specs.TUNING_DATASETS]


def register() -> None:
    """Register one lazy symbol-tuning task per paper tuning dataset (idempotent)."""
    for name in specs.TUNING_DATASETS:
        if f"symbol_tuning:{name}" not in TaskRegistry.names():
            TaskRegistry.add(symbol_task(f"symbol_tuning:{name}", functools.partial(_load, name)))


register()
