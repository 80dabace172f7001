"""Multi-process start-up and host-failure detection, shared by `train`, `eval` and `sweep`.

`start(args)` decides from flags and the environment whether this run spans several processes and, if so,
starts JAX's distributed runtime before anything touches a device:
- flags: `--coordinator_address`, `--process_count` / `--process_index` (T5X's names) or
  `--num_processes` / `--process_id`; `--multiprocess_gpu` (T5X) asks for auto-detection;
- JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (what our launchers export);
- Slurm with more than one task (JAX reads the coordinator and ranks from SLURM_*; we pass the local
  device ids of every GPU the task owns, which JAX would otherwise take as [SLURM_LOCALID]);
- a TPU VM of a multi-host slice (TPU_WORKER_HOSTNAMES with several hosts, or MEGASCALE_* multi-slice).

Once started, a `HostWatchdog` thread keeps a heartbeat in the coordination service's key-value store and
watches the other hosts': a host that stops beating (killed, crashed, unreachable) or that publishes an
error (`report_failure`) ends every other host within `host_timeout_s` with exit code 1 and a message naming
the host and the cause, instead of a collective that hangs or aborts with a Gloo/NCCL error.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
from typing import Any, Mapping

import jax

log = logging.getLogger(__name__)

DEFAULT_HOST_TIMEOUT_S = 30.0
_HEARTBEAT_DIR = "symbol_tuning/heartbeat/"
_ERROR_DIR = "symbol_tuning/error/"
_DONE_DIR = "symbol_tuning/done/"
_WATCHDOG: "HostWatchdog | None" = None


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """What `jax.distributed.initialize` is given (None: JAX detects it) and where it came from."""

    source: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def slurm_local_device_ids(environ: Mapping[str, str]) -> tuple[int, ...] | None:
    """Ids of the GPUs this Slurm task owns: all of CUDA_VISIBLE_DEVICES (Slurm sets it per task), else
    this task's share of SLURM_GPUS_ON_NODE; None when neither says (JAX then picks)."""
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible:
        return tuple(range(len(visible)))
    gpus = _env_int(environ, "SLURM_GPUS_ON_NODE")
    if not gpus:
        return None
    per_node = _env_int(environ, "SLURM_NTASKS_PER_NODE") or 1
    local = _env_int(environ, "SLURM_LOCALID") or 0
    share = gpus // per_node
    return tuple(range(local * share, (local + 1) * share))


def detect(environ: Mapping[str, str] | None = None, *, coordinator_address: str | None = None,
           num_processes: int | None = None, process_id: int | None = None,
           force: bool = False) -> ProcessSpec | None:
    """The multi-process set-up that flags and `environ` describe, or None for a single-process run.

    Raises ValueError naming what is missing or inconsistent (e.g. a process count without an index)."""
    environ = os.environ if environ is None else environ
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    coordinator_address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int(environ, "JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int(environ, "JAX_PROCESS_ID")
    given = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    if any(v is not None for v in given.values()):
        if num_processes == 1 and coordinator_address is None:
            return None
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"multi-process start: {missing} not given (flags --coordinator_address, "
                             f"--process_count, --process_index or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                             f"JAX_PROCESS_ID); got {given}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"multi-process start: process_id={process_id} not in [0, {num_processes})")
        # Inside a Slurm task JAX would still take local_device_ids = [SLURM_LOCALID] (one GPU per task).
        local = slurm_local_device_ids(environ) if "SLURM_PROCID" in environ else None
        return ProcessSpec("flags" if explicit else "JAX_* environment", coordinator_address, num_processes,
                           process_id, local)
    slurm_tasks = _env_int(environ, "SLURM_NTASKS") or _env_int(environ, "SLURM_NPROCS") or 1
    if slurm_tasks > 1:
        return ProcessSpec("slurm", local_device_ids=slurm_local_device_ids(environ))
    tpu_hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(tpu_hosts) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in environ:
        return ProcessSpec("tpu")
    return ProcessSpec("auto-detected (--multiprocess_gpu)") if force else None


def initialize(spec: ProcessSpec, *, host_timeout_s: float = DEFAULT_HOST_TIMEOUT_S,
               initialization_timeout_s: int = 300) -> None:
    """Start JAX's distributed runtime as `spec` says, then the host watchdog."""
    kwargs: dict[str, Any] = {k: v for k, v in dict(
        coordinator_address=spec.coordinator_address, num_processes=spec.num_processes,
        process_id=spec.process_id).items() if v is not None}
    if spec.local_device_ids is not None:
        kwargs["local_device_ids"] = list(spec.local_device_ids)
    if not jax.distributed.is_initialized():
        # JAX's own heartbeat stays longer than ours, so our message (naming the host) comes first.
        jax.distributed.initialize(initialization_timeout=initialization_timeout_s,
                                   heartbeat_timeout_seconds=int(max(100, 3 * host_timeout_s)), **kwargs)
    log.info("multi-process run (%s): process %d of %d, %d local devices", spec.source, jax.process_index(),
             jax.process_count(), jax.local_device_count())
    start_watchdog(host_timeout_s)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags (T5X's names and ours); every one may instead come from the environment."""
    group = parser.add_argument_group("multi-process start (default: from JAX_*, Slurm or TPU VM environment)")
    group.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    group.add_argument("--process_count", "--num_processes", dest="process_count", type=int, default=None,
                       help="processes in the run")
    group.add_argument("--process_index", "--process_id", dest="process_index", type=int, default=None,
                       help="this process's index")
    group.add_argument("--multiprocess_gpu", action="store_true",
                       help="start the distributed runtime even where the environment does not say so")
    group.add_argument("--host_timeout_s", type=float, default=DEFAULT_HOST_TIMEOUT_S,
                       help="a host silent this long ends the run on every host (exit 1, host named)")


def start(args: argparse.Namespace) -> bool:
    """Start the distributed runtime when flags or environment say multi-process; returns whether it did."""
    spec = detect(coordinator_address=getattr(args, "coordinator_address", None),
                  num_processes=getattr(args, "process_count", None),
                  process_id=getattr(args, "process_index", None),
                  force=bool(getattr(args, "multiprocess_gpu", False)))
    if spec is None:
        return False
    timeout = getattr(args, "host_timeout_s", DEFAULT_HOST_TIMEOUT_S)
    if not timeout > 0:
        raise ValueError(f"--host_timeout_s={timeout} must be a positive number of seconds")
    initialize(spec, host_timeout_s=timeout)
    return True


def _client() -> Any:
    from jax._src import distributed as jax_distributed  # the coordination service client JAX started

    return jax_distributed.global_state.client


def _die(message: str, *, linger_s: float = 0.0) -> None:
    """Print `message` and exit 1 at once (no atexit: JAX's shutdown barrier would wait for the lost host).
    Process 0 first lingers `linger_s`: it holds the coordination service, whose end would make JAX abort
    the other hosts before their watchdogs have read the cause."""
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    if linger_s and jax.process_index() == 0:
        time.sleep(linger_s)
    os._exit(1)


class HostWatchdog:
    """Heartbeat of this host plus watch of the others' heartbeats and published errors (a daemon thread)."""

    def __init__(self, client: Any, *, process_id: int, process_count: int, timeout_s: float,
                 interval_s: float | None = None):
        self.client, self.process_id, self.process_count = client, process_id, process_count
        self.timeout_s = float(timeout_s)
        self.interval_s = interval_s if interval_s is not None else min(1.0, self.timeout_s / 10)
        self._beats = 0
        self._seen: dict[int, tuple[str, float]] = {}
        self._client_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-watchdog", daemon=True)

    def start(self) -> "HostWatchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _entries(self, prefix: str) -> dict[int, str]:
        out = {}
        for key, value in self.client.key_value_dir_get(prefix):
            tail = key.rstrip("/").rsplit("/", 1)[-1]
            if tail.isdigit():
                out[int(tail)] = value
        return out

    def check_once(self) -> str | None:
        """One beat and one look; the message to die with, or None while all is well."""
        now = time.monotonic()
        try:
            self._beats += 1
            self.client.key_value_set(f"{_HEARTBEAT_DIR}{self.process_id}", str(self._beats), allow_overwrite=True)
            errors = self._entries(_ERROR_DIR)
            beats = self._entries(_HEARTBEAT_DIR)
            done = self._entries(_DONE_DIR)
        except Exception as e:  # noqa: BLE001 -- any client failure means the coordination service is unreachable
            if now - self._client_ok > self.timeout_s:
                return (f"host {self.process_id}: lost the coordination service on process 0 for "
                        f"{now - self._client_ok:.0f} s (process 0 killed, crashed or unreachable): "
                        f"{type(e).__name__}: {e}")
            return None
        self._client_ok = now
        for host, cause in sorted(errors.items()):
            if host != self.process_id:
                return f"host {self.process_id}: stopping because host {host} failed: {cause}"
        for host in range(self.process_count):
            if host == self.process_id or host in done:
                continue
            value = beats.get(host)
            last = self._seen.get(host)
            if last is None or last[0] != value:
                self._seen[host] = (value, now)
            elif now - last[1] > self.timeout_s:
                return (f"host {self.process_id}: host {host} lost: no heartbeat for {now - last[1]:.0f} s "
                        f"(killed, crashed or unreachable)")
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            message = self.check_once()
            if message is not None:
                _die(f"symbol-tuning: {message}; exiting with code 1", linger_s=3 * self.interval_s + 1.0)


def start_watchdog(timeout_s: float) -> HostWatchdog | None:
    """Start (once) the watchdog of this multi-process run; None on a single process."""
    global _WATCHDOG
    if _WATCHDOG is None and jax.process_count() > 1 and _client() is not None:
        _WATCHDOG = HostWatchdog(_client(), process_id=jax.process_index(), process_count=jax.process_count(),
                                 timeout_s=timeout_s).start()
    return _WATCHDOG


def mark_done() -> None:
    """Tell the other hosts that this one finished normally, so its exit is not taken for a lost host."""
    if _WATCHDOG is not None:
        try:
            _WATCHDOG.client.key_value_set(f"{_DONE_DIR}{_WATCHDOG.process_id}", "1", allow_overwrite=True)
        except Exception:  # noqa: BLE001 -- the others will see this host's exit as a loss, which it then is
            log.warning("could not mark host %d done in the coordination service", _WATCHDOG.process_id)


def report_failure(error: BaseException, *, command: str) -> None:
    """End this host after a run error, telling the other hosts the cause (they exit 1 naming this host).

    A JAX runtime error (a collective whose peer vanished) first gives the watchdog time to name the lost
    host, since that, not the collective's error, is the cause. Never returns in a multi-process run."""
    watchdog = _WATCHDOG
    if watchdog is None:
        return
    if isinstance(error, jax.errors.JaxRuntimeError):
        time.sleep(watchdog.timeout_s + 3 * watchdog.interval_s)
    cause = f"{command}: {type(error).__name__}: {error}"
    print(f"symbol-tuning: host {watchdog.process_id} failed: {cause}", file=sys.stderr, flush=True)
    try:
        watchdog.client.key_value_set(f"{_ERROR_DIR}{watchdog.process_id}", cause, allow_overwrite=True)
    except Exception:  # noqa: BLE001 -- the service is gone; this host's own message still says why
        pass
    _die(f"symbol-tuning: host {watchdog.process_id}: exiting with code 1", linger_s=3 * watchdog.interval_s + 1.0)


def evaluation_mesh() -> tuple[Any, Any]:
    """(mesh, rules) for evaluating on every device of a multi-process run: params placed with the default
    logical rules on a data mesh over all devices, each host feeding its share of every batch; (None, None)
    on one process (params on the first device, as before)."""
    if jax.process_count() == 1:
        return None, None
    from symbol_tuning.training import partitioning

    return partitioning.create_mesh(partitioning.MeshConfig()), partitioning.DEFAULT_RULES
