"""Where the paper's tuning and evaluation tasks read their data: the hub by default, or raw local copies.

`use_local_files(data_root)` (or the environment variable SYMBOL_TUNING_DATA_ROOT) before a task's first use
makes "symbol_tuning:<dataset>" and "eval:<dataset>:<setting>" read the dataset's files under `data_root`
(the layouts of `symbol_tuning.data.sources.layouts`, e.g. ../shared/data) instead of downloading, in our
tasks and in their SeqIO copies alike. `load` is what those tasks call.
"""
from __future__ import annotations

import os

from symbol_tuning.data.examples import ClassificationData

DATA_ROOT_ENV = "SYMBOL_TUNING_DATA_ROOT"
_ROOT: dict[str, str | None] = {"path": None}


def use_local_files(data_root: str | None) -> None:
    """Read the paper's datasets from `data_root` from now on (None: back to the hub / the environment)."""
    if data_root is not None and not os.path.isdir(data_root):
        raise FileNotFoundError(f"use_local_files: data_root {data_root} is not a directory")
    _ROOT["path"] = data_root


def data_root() -> str | None:
    """The local data root in use, or None (hub)."""
    return _ROOT["path"] or os.environ.get(DATA_ROOT_ENV) or None


def load(name: str, split: str, *, source: str, max_examples: int | None) -> ClassificationData:
    """Split "train" / "eval" of dataset `name` from the local root when one is set, else from `source`."""
    root = data_root()
    if root is None:
        from symbol_tuning.data.sources.hub import load_classification
        return load_classification(name, split, source=source, max_examples=max_examples)
    from symbol_tuning.data.sources.layouts import local_source
    from symbol_tuning.data.sources.local_files import load_local
    return load_local(source=local_source(name, root, split), split=split, max_examples=max_examples)
