"""The paper's 22 tuning datasets, one symbol-remapped task each: "symbol_tuning:<dataset>".

Data load on first use from `SOURCE` on the hub, or from local files after
`tasks.local.use_local_files(data_root)`. Datasets whose source has a validation split (the spec's "eval")
give the task a validation split too.
"""
from __future__ import annotations

import functools

from symbol_tuning.data import specs
from symbol_tuning.data.task_builders import symbol_task
from symbol_tuning.data.task_registry import TaskRegistry

from .local import load as load_local_or_hub

SOURCE = "hf"


def _load(name: str, split: str = "train"):
    return load_local_or_hub(name, split, source=SOURCE, max_examples=specs.TUNING_MAX_EXAMPLES)


def task_names() -> list[str]:
    return [f"symbol_tuning:{name}" for name in specs.TUNING_DATASETS]


def register() -> None:
    """Register one lazy symbol-tuning task per paper tuning dataset (idempotent)."""
    for name in specs.TUNING_DATASETS:
        if f"symbol_tuning:{name}" not in TaskRegistry.names():
            has_validation = "eval" in specs.TUNING_DATASETS[name].splits
            validation = functools.partial(_load, name, "eval") if has_validation else None
            TaskRegistry.add(symbol_task(f"symbol_tuning:{name}", functools.partial(_load, name),
                                         validation_loader=validation, origin=f"the paper's dataset {name!r}"))


register()
