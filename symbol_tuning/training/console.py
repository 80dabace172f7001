"""What a training run shows: one console line per log window, the metric names it logs, and quiet libraries.

Each window's line (process 0 only) gives the step, the window's mean loss, accuracy and learning rate,
tokens/s, TFLOP/s per device, MFU where the chip's peak is known, the mean step time and the ETA. The
first step of a process includes XLA compilation: its time is reported once ("compiled in ...") and left
out of every throughput figure. Metrics are named as T5X / MaxText users know them: `train/<metric>`
(window means), `timing/<...>` and `perf/<...>`.

`quiet_libraries` turns Orbax's and absl's INFO chatter (dozens of lines per checkpoint) off; the commands'
`--verbose` flag keeps it.
"""
from __future__ import annotations

import datetime
import logging
import math
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence, TextIO

import jax

_NOISY_LOGGERS = ("absl", "orbax", "jax._src.distributed", "etils")


def quiet_libraries(verbose: bool = False) -> None:
    """Orbax/absl INFO logs off (WARNING and above stay) unless `verbose`, where absl logs at INFO."""
    level = logging.INFO if verbose else logging.WARNING
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    except ImportError:  # absl comes with JAX's dependencies; nothing to quieten without it
        pass


@dataclass(frozen=True)
class Throughput:
    """What turns a window's step time into throughput: tokens per step (all rows' positions, padding
    included), training FLOPs per token, devices in the mesh, and the chip's peak FLOP/s (None: unknown)."""

    tokens_per_step: int
    flops_per_token: float
    num_devices: int
    peak_flops_per_device: float | None


def window_metrics(step_metrics: Sequence[Mapping[str, float]], *, timed_steps: int, seconds: float,
                   step: int, total_steps: int, throughput: Throughput) -> dict[str, float]:
    """The logged scalars of one window: `train/<k>` = mean of k over the window's steps, and, when any
    step of it was timed (`timed_steps` > 0 steps in `seconds`, compilation excluded), `timing/...` and
    `perf/...`."""
    out: dict[str, float] = {}
    keys = sorted({k for m in step_metrics for k in m})
    for key in keys:
        values = [float(m[key]) for m in step_metrics if key in m]
        out[f"train/{key}"] = sum(values) / len(values)
    if timed_steps > 0 and seconds > 0:
        step_time = seconds / timed_steps
        tokens_per_second = throughput.tokens_per_step / step_time
        flops_per_device = tokens_per_second * throughput.flops_per_token / max(throughput.num_devices, 1)
        out["timing/step_time_s"] = step_time
        out["timing/steps_per_second"] = 1.0 / step_time
        out["timing/tokens_per_second"] = tokens_per_second
        if "train/num_target_tokens" in out:
            out["timing/target_tokens_per_second"] = out["train/num_target_tokens"] / step_time
        out["timing/eta_s"] = max(total_steps - step, 0) * step_time
        out["perf/tflops_per_device"] = flops_per_device / 1e12
        if throughput.peak_flops_per_device:
            out["perf/mfu"] = flops_per_device / throughput.peak_flops_per_device
    return out


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


def format_line(step: int, total_steps: int, values: Mapping[str, float]) -> str:
    """The console line of one window, e.g.
    `step 20/100 | loss 4.213 | acc 0.231 | lr 3.0e-03 | 1.2e+04 tok/s | 0.9 TFLOP/s/dev | MFU 41.2% |
    0.21 s/step | ETA 0:00:17`."""
    parts = [f"step {step}/{total_steps}"]

    def add(key: str, fmt: str) -> None:
        value = values.get(key)
        if value is not None and math.isfinite(value):
            parts.append(fmt.format(value))

    add("train/loss", "loss {:.4f}")
    add("train/accuracy", "acc {:.3f}")
    add("train/learning_rate", "lr {:.1e}")
    add("timing/tokens_per_second", "{:.3g} tok/s")
    add("perf/tflops_per_device", "{:.3g} TFLOP/s/dev")
    add("perf/mfu", "MFU {:.1%}")
    add("timing/step_time_s", "{:.3g} s/step")
    if "timing/eta_s" in values:
        parts.append(f"ETA {_eta(values['timing/eta_s'])}")
    elif "timing/step_time_s" not in values:
        parts.append("(compile step only: no throughput)")
    return " | ".join(parts)


class Console:
    """Prints the run's lines on process 0 (or where `enabled`)."""

    def __init__(self, *, total_steps: int, enabled: bool | None = None, stream: TextIO | None = None):
        self.total_steps = total_steps
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.stream = stream

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream or sys.stdout, flush=True)

    def start(self, start_step: int) -> None:
        where = f"resuming at step {start_step}" if start_step else "from step 0"
        self._print(f"training to step {self.total_steps}, {where}")

    def compiled(self, step: int, seconds: float) -> None:
        self._print(f"step {step}: compiled and ran in {seconds:.1f} s (left out of throughput and ETA)")

    def window(self, step: int, values: Mapping[str, float]) -> None:
        self._print(format_line(step, self.total_steps, values))
