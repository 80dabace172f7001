"""A run's input as a fixed number of data shards, so the data does not depend on the host count.

The global batch of every step is the concatenation, in shard order, of `batch_size / num_shards` rows
from each of `num_shards` deterministic streams (shard s reads positions s, s + num_shards, ...). A host
reads a contiguous block of `num_shards / process_count` shards, so its rows are exactly its part of that
global batch. A checkpoint keeps every shard's position; a run resumed on another host count whose count
divides `num_shards` re-derives each host's block from them and reads the same global batches (the same
rows in the same order) as the run that never stopped. A host count that does not divide `num_shards`
is refused with the warm-start command (INITIAL_CHECKPOINT_PATH: params only, any host count).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

KIND = "data_shards"


def host_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
    """The shards host `process_index` reads; ValueError when `process_count` does not divide `num_shards`."""
    if num_shards < 1 or num_shards % process_count:
        raise ValueError(f"data_shards={num_shards} is not a positive multiple of the {process_count} hosts")
    per = num_shards // process_count
    return list(range(process_index * per, (process_index + 1) * per))


class ShardedStream:
    """This host's batches: the rows of its shards' streams, concatenated in shard order; resumable."""

    def __init__(self, make_stream: Callable[[int], Any], *, num_shards: int, process_index: int,
                 process_count: int):
        self.num_shards = int(num_shards)
        self.shards = host_shards(self.num_shards, process_index, process_count)
        self.streams = [make_stream(s) for s in self.shards]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(s) for s in self.streams]
        return {k: np.concatenate([np.asarray(p[k]) for p in parts], axis=0) for k in parts[0]}

    def state(self) -> dict:
        return {"kind": KIND, "num_shards": self.num_shards,
                "shards": {str(s): stream.state() for s, stream in zip(self.shards, self.streams)}}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != KIND or int(state.get("num_shards", -1)) != self.num_shards:
            raise ValueError(f"input position {dict(state)!r} was not written for {self.num_shards} data shards")
        for s, stream in zip(self.shards, self.streams):
            if str(s) not in state["shards"]:
                raise ValueError(f"input position lacks data shard {s} (has {sorted(state['shards'])})")
            stream.restore(state["shards"][str(s)])


def regroup(host_states: Sequence[Mapping[str, Any]], process_index: int, process_count: int,
            *, source: str) -> dict:
    """This host's input position on `process_count` hosts, from the positions `len(host_states)` hosts
    saved; ValueError naming `source` and the warm-start command when it cannot be re-derived."""
    warm = (f"warm-start a new run from these params instead (any mesh and host count; optimizer state and "
            f"data position start afresh): --gin.MODEL_DIR=\"'<new dir>'\" "
            f"--gin.INITIAL_CHECKPOINT_PATH=\"'{source}'\"")
    if not host_states or any(h.get("kind") != KIND for h in host_states):
        raise ValueError(f"{source}: saved by {len(host_states)} hosts with per-host input positions, restoring "
                         f"on {process_count}; the input position cannot be re-derived. {warm}")
    num_shards = int(host_states[0]["num_shards"])
    merged: dict[str, Any] = {}
    for h in host_states:
        merged.update(h["shards"])
    if num_shards % process_count:
        raise ValueError(f"{source}: its input is {num_shards} data shards, which {process_count} hosts cannot "
                         f"split evenly (host counts that resume exactly: divisors of {num_shards}). {warm}")
    mine = host_shards(num_shards, process_index, process_count)
    return {"kind": KIND, "num_shards": num_shards, "shards": {str(s): merged[str(s)] for s in mine}}
