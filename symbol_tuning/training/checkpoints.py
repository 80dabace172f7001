"""Orbax checkpoints of the train state plus the input pipeline's position.

Saves are asynchronous (training continues while arrays are written), every `save_interval_steps`,
keeping the last `max_to_keep`. Orbax writes each step into a temporary directory and renames it
when complete, so a partial checkpoint is never visible as a finished step. The input position of
every host is saved with the state so that a resumed run reads exactly the batches the
uninterrupted run would have read; with the input split into data shards (training.data_shards) a run
resumes on any host count dividing their number, otherwise the message names the warm-start command.
Directories may be local or gs:// (storage). Restoring takes an abstract state whose leaves carry the
target shardings, so a checkpoint written on one mesh restores onto another. Each finished step gets a
checksum manifest, and `restore_newest` falls back past damaged steps (training.checkpoint_integrity); a
step that is already finished on disk is never saved over.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils

from symbol_tuning.models.safetensors_io import CheckpointMismatchError
from symbol_tuning.training import checkpoint_integrity, data_shards, storage

log = logging.getLogger(__name__)
STATE_ITEM, DATA_ITEM = "state", "data"
COMMIT_MARKER = "commit_success.txt"


class Checkpointer:
    """A thin wrapper around `ocp.CheckpointManager` holding {"state": train state, "data": positions}."""

    def __init__(self, directory: str, *, save_interval_steps: int = 1000, max_to_keep: int | None = 3,
                 async_save: bool = True, is_primary: bool | None = None):
        self.directory = os.fspath(storage.resolve(directory, what="model_dir"))
        self.is_primary = jax.process_index() == 0 if is_primary is None else is_primary
        options = ocp.CheckpointManagerOptions(save_interval_steps=save_interval_steps, max_to_keep=max_to_keep,
                                               enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))
        self._sealer = checkpoint_integrity.Sealer(self.directory, lambda: finished_steps(self.directory))

    def reached_preemption(self, step: int) -> bool:
        """Whether every host has reached the step JAX's preemption service chose for saving (False on one
        process, where there is no service)."""
        return bool(self._manager.reached_preemption(step))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None = None, *, force: bool = False) -> bool:
        """Start saving `state` at `step` (returns False when the interval says not now); a finished step is
        never overwritten (RuntimeError: another writer made it)."""
        self._manager.wait_until_finished()  # Orbax waits for the previous save here anyway
        if self.is_primary:
            self._sealer.start()  # the previous step's manifest is written while training goes on
        if step in finished_steps(self.directory):
            raise RuntimeError(f"{self.directory}: step {step} is already a finished checkpoint; refusing to "
                               "overwrite it (is another trainer writing this model dir?)")
        hosts = _gather_host_states(data_state or {})
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"hosts": hosts})), force=force)

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """The state at `step` (latest when None) laid out like `abstract_state`, and this host's data state."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint to restore")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        hosts = [json.loads(h) for h in (restored.data or {}).get("hosts", [])]
        index, count = jax.process_index(), jax.process_count()
        if not hosts:
            return restored.state, {}
        if len(hosts) == count:
            return restored.state, hosts[index]
        return restored.state, data_shards.regroup(hosts, index, count, source=self.directory)

    def restore_newest(self, abstract_state: Any) -> tuple[int | None, Any, dict]:
        """(step, state, data state) of the newest step that verifies (checkpoint_integrity), moving damaged
        newer steps aside; (None, None, {}) when there is no step. Raises DamagedCheckpointError when steps
        existed and every one was damaged (all moved aside: a rerun starts from scratch)."""
        steps = self.all_steps()
        step, restored, damaged = checkpoint_integrity.restore_newest_good(
            self.directory, steps, lambda s: self.restore(s, abstract_state), is_primary=self.is_primary,
            barrier=_barrier)
        if damaged:
            self._manager.reload()
        if step is None:
            if damaged:
                raise damaged[-1]
            return None, None, {}
        return step, restored[0], restored[1]

    def wait_until_finished(self) -> None:
        """Wait for in-flight saves, then write the checksum manifest of every finished step (process 0)."""
        self._manager.wait_until_finished()
        if self.is_primary:
            self._sealer.finish()
        _barrier("checkpoint_sealed")

    def close(self) -> None:
        self.wait_until_finished()
        self._manager.close()


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _gather_host_states(data_state: dict) -> list[str]:
    """Every host's JSON-encoded data state, in process order (one entry on a single host)."""
    encoded = json.dumps(data_state, sort_keys=True)
    if jax.process_count() == 1:
        return [encoded]
    raw = np.frombuffer(encoded.encode("utf-8"), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.array([raw.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:raw.size] = raw
    gathered = multihost_utils.process_allgather(padded)
    return [bytes(row[:int(n)]).decode("utf-8") for row, n in zip(gathered, np.ravel(lengths))]


def finished_steps(directory: str) -> list[int]:
    """Finished steps of a training directory: numeric subdirectories holding a state item. Locally Orbax
    writes a step under a temporary name and renames it when complete; on GCS (no rename) it writes the
    step in place and marks it complete with a commit_success.txt file last."""
    root = storage.resolve(directory, what="checkpoint")
    if not root.is_dir():
        raise FileNotFoundError(f"{directory}: checkpoint directory does not exist")
    remote = storage.is_remote(os.fspath(root))
    return sorted(int(d.name) for d in root.iterdir()
                  if d.name.isdigit() and (d / STATE_ITEM).is_dir()
                  and (not remote or (d / COMMIT_MARKER).exists()))


def _state_dir(directory: str, step: int) -> str:
    return os.fspath(storage.resolve(directory, what="checkpoint") / str(step) / STATE_ITEM)


def saved_params_metadata(directory: str, step: int) -> dict[str, Any]:
    """'/'-joined parameter path -> array metadata (.shape, .dtype) of the params saved at `step`, read
    without loading any array."""
    state_dir = _state_dir(directory, step)
    tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata
    tree = getattr(tree, "tree", tree)
    if "params" not in tree:
        raise CheckpointMismatchError(f"{state_dir}: the saved state has no 'params' item (has {sorted(tree)})")
    return traverse_util.flatten_dict(dict(tree["params"]), sep="/")


def restore_params(directory: str, step: int, abstract_params: dict[str, jax.ShapeDtypeStruct]) -> Any:
    """Only the params of the state saved at `step`, as the nested tree of `abstract_params` ('/'-joined
    path -> ShapeDtypeStruct carrying the target sharding)."""
    restore_args = {k: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype)
                    for k, a in abstract_params.items()}
    item = {"params": traverse_util.unflatten_dict(abstract_params, sep="/")}
    args = {"params": traverse_util.unflatten_dict(restore_args, sep="/")}
    restored = ocp.PyTreeCheckpointer().restore(
        _state_dir(directory, step), args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
    return restored["params"]
