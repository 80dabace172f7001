"""Training metrics: TensorBoard event files and a JSONL log (the training console is training/console.py),
the peak FLOP/s table MFU uses, and the progress bar evaluation shows.

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

# Dense bf16 peak FLOP/s per chip, by `jax.devices()[0].device_kind` substring.
PEAK_FLOPS = {
    "H200": 989.4e12,
    "H100": 989.4e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6": 918e12,
}


def peak_flops_per_device(device_kind: str | None = None) -> float | None:
    """The chip's dense bf16 peak, or None where unknown (CPU), so MFU is not reported there."""
    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    for key, value in PEAK_FLOPS.items():
        if key.lower() in kind.lower():
            return value
    return None


def train_flops_per_token(*, num_params: int, num_embedding_params: int, num_layers: int, d_model: int,
                          sequence_length: int, vocab_size: int) -> float:
    """Matmul FLOPs per trained token (PaLM appendix B): 6 N for the non-embedding weights, 6 V d for the
    output layer and 12 L d T for attention scores and values."""
    non_embedding = num_params - num_embedding_params
    return 6.0 * non_embedding + 6.0 * vocab_size * d_model + 12.0 * num_layers * d_model * sequence_length


class MetricsWriter:
    """Writes scalars to `<model_dir>/train` TensorBoard events and `<model_dir>/metrics.jsonl`."""

    def __init__(self, model_dir: str, *, subdir: str = "train", enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(model_dir, exist_ok=True)
            self._tb = SummaryWriter(logdir=os.path.join(model_dir, subdir))
            self._jsonl = open(os.path.join(model_dir, f"metrics_{subdir}.jsonl"), "a", encoding="utf-8")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        for key, value in clean.items():
            self._tb.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
        self._jsonl.flush()

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
