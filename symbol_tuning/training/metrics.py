"""Training metrics: TensorBoard event files and a JSONL log (the training console is training/console.py;
FLOPs, peaks and MFU are training/flops.py), and the progress bar evaluation shows.

Only the primary host writes files; every host may compute. CLU's metric writers were considered: their
TensorBoard writer needs TensorFlow, which training/ must not import, so tensorboardX writes the same event
files (`tensorboard --logdir MODEL_DIR` reads them).
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax

from symbol_tuning.training import storage


class MetricsWriter:
    """Writes scalars to `<model_dir>/train` TensorBoard events and `<model_dir>/metrics.jsonl`."""

    def __init__(self, model_dir: str, *, subdir: str = "train", enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            root = storage.resolve(model_dir, what="model_dir")
            root.mkdir(parents=True, exist_ok=True)
            # tensorboardX writes gs:// event files itself (google-cloud-storage).
            self._tb = SummaryWriter(logdir=os.fspath(root / subdir))
            self._jsonl = storage.AppendFile(root / f"metrics_{subdir}.jsonl")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        for key, value in clean.items():
            self._tb.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


class Progress:
    """A console progress bar with ETA and the latest loss (tqdm), on the primary host only."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "train", enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._bar = None
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int = 1, **postfix: float) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
