"""The training loop: auto-resume, sharded steps, metrics, async checkpoints, preemption and NaN stops.

One host loop, the same on every host: draw this host's batch, assemble the global batch, run the jitted
step. Metrics stay on device until a log boundary, a checkpoint or the end, where they are fetched
together; the first non-finite loss stops the run naming its step, before any later state is saved.
A checkpoint at step k holds the state after k updates and every host's input position right after
its k-th batch, so a restarted run reads exactly the batches the uninterrupted run would have read.
SIGTERM (preemption) or Ctrl-C sets a stop request (_PreemptionFlag: JAX's preemption sync point on several
hosts); the loop saves at the current step, waits for the save and returns.
The run owns its model dir (training.run_lock) and resumes from the newest step that verifies, moving a
damaged newer one aside (training.checkpoint_integrity).
No TensorFlow or SeqIO here.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from symbol_tuning.models.base import BaseModel
from symbol_tuning.training import console as console_lib
from symbol_tuning.training import flops
from symbol_tuning.training import metrics as metrics_lib
from symbol_tuning.training.checkpoints import Checkpointer
from symbol_tuning.training.partitioning import Rules, batch_sharding, make_global_batch
from symbol_tuning.training.run_lock import ModelDirLockedError, RunLock
from symbol_tuning.training.train_state import TrainState, abstract_train_state, create_train_state
from symbol_tuning.training.train_step import StepFn, StepOptions, make_train_step

log = logging.getLogger(__name__)

EvalFn = Callable[[Any, int], "Mapping[str, float] | None"]


@dataclass(frozen=True)
class LoopOptions:
    """How the loop runs: `steps` total updates, a checkpoint every `checkpoint_every` steps keeping the last
    `keep_checkpoints`, metrics every `log_every` steps, `eval_fn` every `eval_every` steps, `seed` for the
    initial parameters and dropout, asynchronous saves, and the FLOPs per token MFU is computed from
    (estimated from the model config when None)."""

    steps: int
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int | None = None
    seed: int = 0
    async_checkpoints: bool = True
    flops_per_token: float | None = None

    def __post_init__(self):
        for name in ("steps", "checkpoint_every", "log_every", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train: {name}={value!r} must be a positive integer")
        if self.eval_every is not None and (not isinstance(self.eval_every, int) or self.eval_every < 1):
            raise ValueError(f"train: eval_every={self.eval_every!r} must be a positive integer")


class ResumableStream(Protocol):
    """An iterator of this host's numpy batches whose position can be saved and restored."""

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]: ...

    def __next__(self) -> Mapping[str, np.ndarray]: ...

    def state(self) -> dict: ...

    def restore(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    """How a run ended: final state and step, whether SIGTERM stopped it, where it resumed from."""

    state: TrainState
    step: int
    preempted: bool = False
    resumed_from: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_steps: list[int] = field(default_factory=list)


class _PreemptionFlag:
    """Stop requests while installed (main thread only; old handlers restored on exit).

    SIGTERM (preemption) and SIGINT (Ctrl-C) both ask the loop to save at the current step and return; a
    second Ctrl-C exits at once with code 130. On one process the flag is set by our handlers. On several,
    SIGTERM belongs to JAX's preemption service (started by jax.distributed.initialize): a notice on any
    host makes every host agree on one safe step, found through Orbax's `reached_preemption` (JAX's
    `multihost_utils.reached_preemption_sync_point`) without a per-step collective; Ctrl-C is passed on to
    that service as a SIGTERM to this process.
    """

    def __init__(self, checkpointer: Checkpointer | None = None) -> None:
        self.raised = False
        self._checkpointer = checkpointer
        self._multi = jax.process_count() > 1
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_PreemptionFlag":
        if threading.current_thread() is threading.main_thread():
            if not self._multi:
                self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle_interrupt)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("%s received: will checkpoint at the current step and stop", signal.Signals(signum).name)
        self.raised = True

    def _handle_interrupt(self, signum: int, frame: Any) -> None:
        if self.raised:
            print("second Ctrl-C: exiting now without saving", file=sys.stderr, flush=True)
            os._exit(130)
        if self._multi and _jax_preemption_service():
            log.warning("Ctrl-C: passing it to JAX's preemption service; all hosts save and stop "
                        "(Ctrl-C again to exit at once)")
            self.raised = True
            signal.raise_signal(signal.SIGTERM)  # reaches the service's C-level handler, not Python's
            return
        if self._multi:
            log.warning("Ctrl-C: JAX's preemption service is not running, so the hosts cannot stop together; "
                        "Ctrl-C again to exit at once")
            self.raised = True
            return
        log.warning("Ctrl-C: will checkpoint at the current step and stop (Ctrl-C again to exit at once)")
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def should_stop(self, step: int) -> bool:
        """Whether to save `step` and stop; on several hosts, True on every host at the same step. Call it
        at every step, with increasing steps, on every host."""
        if not self._multi:
            return self.raised
        return self._checkpointer is not None and self._checkpointer.reached_preemption(step)


def _jax_preemption_service() -> bool:
    """Whether jax.distributed.initialize started the preemption service (which owns SIGTERM)."""
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.preemption_sync_manager is not None


def _check_batch(batch: Mapping[str, np.ndarray], local_shapes: Mapping[str, tuple[int, ...]], step: int) -> None:
    """ValueError naming the feature whose shape differs from what the state was built for."""
    missing = sorted(set(local_shapes) - set(batch))
    if missing:
        raise ValueError(f"train stream, step {step}: batch lacks features {missing} (has {sorted(batch)})")
    for name, shape in local_shapes.items():
        got = tuple(np.shape(batch[name]))
        if got != tuple(shape):
            raise ValueError(f"train stream, step {step}: feature {name!r} has shape {got}, expected "
                             f"{tuple(shape)} (per host)")


def _first_bad(pending: list[tuple[int, Mapping[str, jax.Array]]]) -> tuple[list[tuple[int, dict]], str | None]:
    """Fetch pending step metrics; the message for the first step whose loss or grad norm is not finite."""
    fetched = [(step, {k: float(v) for k, v in jax.device_get(dict(m)).items()}) for step, m in pending]
    for step, values in fetched:
        bad = {k: values[k] for k in ("loss", "grad_norm") if k in values and not math.isfinite(values[k])}
        if bad:
            shown = ", ".join(f"{k}={v:.6g}" for k, v in sorted(values.items()))
            return fetched, (f"non-finite {sorted(bad)} at step {step} ({shown}); the state of this step is not "
                             "saved, the last good checkpoint is kept")
    return fetched, None


def train(*, model: BaseModel, model_dir: str, train_stream: ResumableStream, optimizer: optax.GradientTransformation,
          mesh: Mesh, rules: Rules, input_shapes: Mapping[str, tuple[int, ...]], options: LoopOptions,
          step_options: StepOptions = StepOptions(), learning_rate_fn: float | optax.Schedule | None = None,
          init_params: Any = None, eval_fn: EvalFn | None = None, step_fn: StepFn | None = None) -> TrainResult:
    """Train to `options.steps` total updates in `model_dir`, resuming from its latest complete checkpoint.

    `input_shapes` are global batch shapes ({feature: (global_batch, length)}) that build the state and
    that every batch is checked against; each host's stream yields its 1/process_count share of the rows,
    and all of a batch's features go to the step, built from `step_options` (`learning_rate_fn` is only
    logged). `eval_fn(params, step)` runs every `options.eval_every` steps and may return scalars, which
    are logged under "eval/". `step_fn` replaces the jitted train step (same contract as
    train_step.make_train_step's). Raises FloatingPointError naming the step on a NaN/inf loss.
    """
    if eval_fn is not None and options.eval_every is None:
        raise ValueError("train: eval_every=None must be a positive integer when eval_fn is given")
    hosts = jax.process_count()
    local_shapes = {}
    for name, shape in input_shapes.items():
        if shape[0] % hosts:
            raise ValueError(f"input_shapes[{name!r}]: global batch {shape[0]} is not divisible by {hosts} hosts")
        local_shapes[name] = (shape[0] // hosts,) + tuple(shape[1:])

    lock = _take_lock(model_dir)
    try:
        checkpointer = Checkpointer(model_dir, save_interval_steps=options.checkpoint_every,
                                    max_to_keep=options.keep_checkpoints, async_save=options.async_checkpoints)
    except BaseException:
        lock.release()
        raise
    writer = metrics_lib.MetricsWriter(model_dir)
    try:
        latest = None
        if checkpointer.all_steps():
            abstract = abstract_train_state(model=model, optimizer=optimizer, input_shapes=input_shapes, mesh=mesh,
                                            rules=rules)
            latest, state, data_state = checkpointer.restore_newest(abstract)
        if latest is not None:
            train_stream.restore(data_state)
            shardings = jax.tree_util.tree_map(lambda x: x.sharding, abstract)
            log.info("resumed %s at step %d", model_dir, latest)
        else:
            state, shardings = create_train_state(model=model, optimizer=optimizer,
                                                  rng=jax.random.PRNGKey(options.seed),
                                                  input_shapes=input_shapes, mesh=mesh, rules=rules,
                                                  init_params=init_params)
        start = int(jax.device_get(state.step))
        if step_fn is None:
            step_fn = make_train_step(model=model, optimizer=optimizer, state_shardings=shardings,
                                      batch_shardings=batch_sharding(mesh), mesh=mesh, rules=rules,
                                      options=step_options, learning_rate_fn=learning_rate_fn)
        flops_per_token = options.flops_per_token
        if flops_per_token is None:
            flops_per_token = flops.estimate_flops_per_token(getattr(model, "config", None), state.params,
                                                             input_shapes)
        loop = _Loop(checkpointer=checkpointer, writer=writer, stream=train_stream, step_fn=step_fn, mesh=mesh,
                     local_shapes=local_shapes, input_shapes=input_shapes, log_every=options.log_every,
                     checkpoint_every=options.checkpoint_every, eval_fn=eval_fn, eval_every=options.eval_every,
                     flops_per_token=flops_per_token, last_saved=latest)
        with _PreemptionFlag(checkpointer) as flag:
            state, preempted = loop.run(state, start, options.steps, flag)
        checkpointer.wait_until_finished()
        return TrainResult(state=state, step=int(jax.device_get(state.step)), preempted=preempted,
                           resumed_from=latest, last_metrics=loop.last_metrics,
                           checkpoint_steps=checkpointer.all_steps())
    finally:
        try:
            checkpointer.close()
            writer.close()
        finally:
            lock.release()


def _take_lock(model_dir: str) -> RunLock:
    """Process 0 takes the model dir's run lock; every process raises if it could not (same verdict)."""
    lock = RunLock(model_dir, is_primary=jax.process_index() == 0)
    error = None
    try:
        lock.acquire()
    except ModelDirLockedError as e:
        error = e
    if jax.process_count() > 1:
        failed = multihost_utils.process_allgather(np.array([error is not None], np.int32))
        if np.any(failed) and error is None:
            lock.release()
            raise ModelDirLockedError(f"{model_dir}: process 0 could not take the run lock (see its log)")
    if error is not None:
        raise error
    return lock


class _Loop:
    """The step loop's bookkeeping: pending device metrics, the log window, timing, saves and the console."""

    def __init__(self, *, checkpointer: Checkpointer, writer: metrics_lib.MetricsWriter, stream: ResumableStream,
                 step_fn: Callable, mesh: Mesh, local_shapes: Mapping[str, tuple[int, ...]],
                 input_shapes: Mapping[str, tuple[int, ...]], log_every: int, checkpoint_every: int,
                 eval_fn: EvalFn | None, eval_every: int | None, flops_per_token: float, last_saved: int | None):
        self.checkpointer, self.writer, self.stream, self.step_fn = checkpointer, writer, stream, step_fn
        self.mesh, self.local_shapes = mesh, local_shapes
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.eval_fn, self.eval_every = eval_fn, eval_every
        self.flops_per_token = flops_per_token
        self.throughput = console_lib.Throughput(
            tokens_per_step=sum(int(np.prod(s)) for n, s in input_shapes.items()
                                if n in ("encoder_input_tokens", "decoder_input_tokens")),
            flops_per_token=flops_per_token, num_devices=int(mesh.devices.size),
            peak_flops_per_device=flops.peak_flops_per_device())
        self.pending: list[tuple[int, Mapping[str, jax.Array]]] = []
        self.last_metrics: dict[str, float] = {}
        self.last_saved = last_saved
        self._window: list[dict[str, float]] = []  # fetched step metrics since the last log line
        self._window_start = time.perf_counter()
        self._window_steps = 0  # timed steps in the window (the compile step is not one)

    def _drain(self) -> None:
        """Fetch pending metrics; raise FloatingPointError on the first non-finite step (after waiting for
        in-flight saves so the last good checkpoint is complete)."""
        if not self.pending:
            return
        fetched, bad = _first_bad(self.pending)
        self.pending = []
        if bad is not None:
            self.checkpointer.wait_until_finished()
            raise FloatingPointError(bad)
        self._window.extend(values for _, values in fetched)

    def _log(self, step: int, total_steps: int, console: console_lib.Console) -> None:
        """Write and print the window's means (its steps' metrics fetched, so its time is device time)."""
        self._drain()
        elapsed = time.perf_counter() - self._window_start
        values = console_lib.window_metrics(self._window, timed_steps=self._window_steps, seconds=elapsed,
                                            step=step, total_steps=total_steps, throughput=self.throughput)
        self.last_metrics = values
        self.writer.write(step, values)
        console.window(step, values)
        self._window, self._window_start, self._window_steps = [], time.perf_counter(), 0

    def _first_step_done(self, step: int, step_metrics: Mapping[str, jax.Array], started: float,
                         console: console_lib.Console) -> None:
        """Report compile + first step once and restart the window clock after it."""
        jax.block_until_ready(step_metrics)
        seconds = time.perf_counter() - started
        console.compiled(step, seconds)
        self.writer.write(step, {"timing/compile_time_s": seconds})
        self._window_start = time.perf_counter()

    def _save(self, step: int, state: TrainState, data_state: dict) -> None:
        self._drain()  # never save a state whose steps include a non-finite loss
        if self.last_saved != step:
            self.checkpointer.save(step, state, data_state, force=True)
            self.last_saved = step

    def run(self, state: TrainState, start: int, steps: int, flag: _PreemptionFlag) -> tuple[TrainState, bool]:
        """Steps start+1 .. steps; returns (state, preempted)."""
        console = console_lib.Console(total_steps=steps)
        console.start(start)
        data_state = self.stream.state()
        batches = iter(self.stream)
        started = time.perf_counter()
        for step in range(start + 1, steps + 1):
            if flag.should_stop(step - 1):
                self._save(step - 1, state, data_state)
                self.checkpointer.wait_until_finished()
                return state, True
            try:
                local = next(batches)
            except StopIteration:
                raise ValueError(f"train stream ended at step {step} of {steps}") from None
            data_state = self.stream.state()
            _check_batch(local, self.local_shapes, step)
            batch = make_global_batch(local, self.mesh)
            state, step_metrics = self.step_fn(state, batch)
            self.pending.append((step, step_metrics))
            if step == start + 1:
                self._first_step_done(step, step_metrics, started, console)
            else:
                self._window_steps += 1
            if step % self.log_every == 0 or step == steps:
                self._log(step, steps, console)
            if step % self.checkpoint_every == 0 or step == steps:
                self._save(step, state, data_state)
            if self.eval_fn is not None and step % self.eval_every == 0:
                self._drain()
                eval_started = time.perf_counter()
                result = self.eval_fn(state.params, step)
                self._window_start += time.perf_counter() - eval_started  # eval time is not step time
                if result:
                    self.writer.write(step, {f"eval/{k}": v for k, v in result.items()})
        self._drain()
        if flag.should_stop(steps):
            self.checkpointer.wait_until_finished()
            return state, True
        return state, False
