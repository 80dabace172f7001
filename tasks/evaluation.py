"""The paper's 11 evaluation datasets in the 4 settings, plus flipped labels for binary ones:
"eval:<dataset>:<setting>" and "eval:<dataset>:flipped" (labels-only prompts, labels flipped).

Queries come from the "eval" split (at most 100: the validation split where the dataset has one, as the
paper does, see data.specs), exemplars from the "train" split; both load on
first use from `SOURCE` on the hub, or from local files after `tasks.local.use_local_files(data_root)`.
"""
from __future__ import annotations

import functools

from symbol_tuning.data import specs
from symbol_tuning.data.prompts import SETTINGS
from symbol_tuning.data.task_builders import eval_task
from symbol_tuning.data.task_registry import TaskRegistry, register_eval_data

from .local import load as load_local_or_hub

SOURCE = "hf"
FLIPPED_SETTING = "labels_only"


def _load(name: str, split: str):
    cap = specs.EVAL_MAX_EXAMPLES if split == "eval" else None
    data = load_local_or_hub(name, split, source=SOURCE, max_examples=cap)
    if split == "eval":
        register_eval_data(data)
    return data


def task_names() -> list[str]:
    names = []
    for name, spec in specs.EVAL_DATASETS.items():
        names += [f"eval:{name}:{s}" for s in SETTINGS]
        if len(spec.label_names) == 2:
            names.append(f"eval:{name}:flipped")
    return names


def register() -> None:
    """Register the lazy evaluation tasks (idempotent)."""
    known = set(TaskRegistry.names())
    for name, spec in specs.EVAL_DATASETS.items():
        query, exemplars = functools.partial(_load, name, "eval"), functools.partial(_load, name, "train")
        for setting in SETTINGS:
            if f"eval:{name}:{setting}" not in known:
                TaskRegistry.add(eval_task(f"eval:{name}:{setting}", query, exemplars, setting=setting))
        if len(spec.label_names) == 2 and f"eval:{name}:flipped" not in known:
            TaskRegistry.add(eval_task(f"eval:{name}:flipped", query, exemplars, setting=FLIPPED_SETTING,
                                       flipped=True))


register()
