"""The record of a run in its MODEL_DIR: `config.gin` (the gin config it ran with, as T5X writes it) and
`model_config.json` (the native-style model config, {"family", "config"}), written once by process 0.

`eval`, `sweep` and `export-hf` read `model_config.json` from a training directory, so a training dir is
evaluated or exported without naming its model again. Local or gs:// (storage).
"""
from __future__ import annotations

import json
import logging
from typing import Any

import jax

from symbol_tuning.models.families import config_record
from symbol_tuning.training import storage

log = logging.getLogger(__name__)
GIN_CONFIG = "config.gin"
MODEL_CONFIG = "model_config.json"


def write_run_record(model_dir: str, *, model_config: Any, gin_config: str | None) -> None:
    """On process 0: model_config.json and config.gin in `model_dir` unless already there (a resumed run keeps
    the first record). A MODEL_DIR whose record names another model is refused (ValueError naming both)."""
    if jax.process_index() != 0:
        return
    root = storage.resolve(model_dir, what="model_dir")
    record = config_record(model_config)
    existing = root / MODEL_CONFIG
    if existing.exists():
        found = storage.read_json(existing)
        if json.loads(json.dumps(record)) != found:
            raise ValueError(f"{existing}: this MODEL_DIR holds a run of another model ({found.get('family')}, "
                             f"{found.get('config')}); this run's model is {record}. Use a new MODEL_DIR.")
    else:
        storage.write_text(existing, json.dumps(record, indent=2, sort_keys=True) + "\n")
    if gin_config is not None and not (root / GIN_CONFIG).exists():
        storage.write_text(root / GIN_CONFIG, gin_config)
    log.info("run record in %s: %s, %s", root, MODEL_CONFIG, GIN_CONFIG)
