"""The deterministic, host-sharded, resumable batch stream over our tasks and mixtures (no TensorFlow).

The global example stream of a task or mixture is a pure function of (name, seed, position): the
task at each position is drawn from the mixture rates by a seeded RNG in fixed blocks of
`BLOCK` positions, and each task keeps its own running index (how often it was drawn before). Host
`shard_index` of `num_shards` reads positions shard_index, shard_index + num_shards, ...; it packs
them greedily into rows in that order (see feature_converters), so a batch is a contiguous run of
the host's positions and `state()` is the next position plus the per-task counts at its block
start: restoring it resumes exactly, in O(1).

Tokenisation follows the family's token layout (token_layout: EOS after encoder inputs, BOS before a
decoder's inputs when the vocabulary has one, EOS after every target).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

import numpy as np

from symbol_tuning.data import feature_converters as fc
from symbol_tuning.data.prompts import stable_hash
from symbol_tuning.data.task_registry import Mixture, PromptBudget, PromptTask, get_task_or_mixture
from symbol_tuning.data.token_layout import FAMILIES, token_layout, token_length_fn

BLOCK = 4096


def checked_feature_lengths(feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """A T5X-style {"inputs": n, "targets": m} dict; ValueError unless it gives exactly those, positive."""
    lengths = dict(feature_lengths)
    if set(lengths) != {"inputs", "targets"} or min(lengths.values()) <= 0:
        raise ValueError(f"feature_lengths must give positive 'inputs' and 'targets' lengths, got {lengths}")
    return lengths


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """A training run's input: the global `batch_size` (rows per step, split evenly over hosts), the
    feature lengths, the vocabulary spec (vocabularies.get_vocabulary) and whether rows are packed.
    The train command and the memory planner both read their defaults from here."""

    batch_size: int = 8
    inputs_length: int = 256
    targets_length: int = 32
    vocabulary: str = "bytes"
    pack: bool = True

    @classmethod
    def create(cls, *, feature_lengths: Mapping[str, int] | None = None, **fields: Any) -> "InputOptions":
        """From a T5X-style feature_lengths dict ({"inputs": n, "targets": m}; None keeps the defaults)."""
        if feature_lengths is not None:
            lengths = checked_feature_lengths(feature_lengths)
            fields.update(inputs_length=int(lengths["inputs"]), targets_length=int(lengths["targets"]))
        return cls(**fields)

    @property
    def feature_lengths(self) -> dict[str, int]:
        return {"inputs": self.inputs_length, "targets": self.targets_length}


_STATE_VERSION = 1


class MixtureSampler:
    """Task choice and per-task index at each global position of a task's or mixture's stream."""

    def __init__(self, name: str, *, seed: int = 0):
        item = get_task_or_mixture(name)
        pairs = item.leaf_rates() if isinstance(item, Mixture) else [(item, 1.0)]
        self.name = name
        self.seed = int(seed)
        self.tasks: list[PromptTask] = [t for t, _ in pairs]
        probs = np.asarray([p for _, p in pairs], dtype=np.float64)
        self.probs = probs / probs.sum()
        self._cdf = np.cumsum(self.probs)
        self._cdf[-1] = 1.0
        self._block = -1
        self._start_counts = np.zeros(len(self.tasks), dtype=np.int64)
        self._choices = np.zeros(0, dtype=np.int64)
        self._indices = np.zeros(0, dtype=np.int64)

    def _draw(self, block: int) -> np.ndarray:
        if len(self.tasks) == 1:
            return np.zeros(BLOCK, dtype=np.int64)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [self.seed & 0xFFFFFFFF, stable_hash(self.name) & 0xFFFFFFFF, block, 0x5EED])))
        return np.searchsorted(self._cdf, rng.random(BLOCK), side="right").astype(np.int64)

    def _load(self, block: int, start_counts: np.ndarray) -> None:
        choices = self._draw(block)
        indices = np.empty(BLOCK, dtype=np.int64)
        for k in range(len(self.tasks)):
            mask = choices == k
            indices[mask] = start_counts[k] + np.arange(int(mask.sum()))
        self._block, self._start_counts, self._choices, self._indices = block, start_counts, choices, indices

    def locate(self, position: int) -> tuple[PromptTask, int]:
        """(task, task index) at a global position; positions may only move forward from the last `seek`."""
        block = position // BLOCK
        if block < self._block:
            raise ValueError(f"mixture {self.name!r}: position {position} is behind the current block; "
                             "use seek() first")
        while self._block < block:
            counts = self._start_counts + np.bincount(self._choices, minlength=len(self.tasks))
            self._load(self._block + 1, counts)
        off = position % BLOCK
        return self.tasks[int(self._choices[off])], int(self._indices[off])

    def counts_at(self, position: int) -> list[int]:
        """Per-task counts of the positions before `position` (its block must be loaded)."""
        self.locate(position)
        before = self._choices[: position % BLOCK]
        return (self._start_counts + np.bincount(before, minlength=len(self.tasks))).tolist()

    def seek(self, position: int, counts_at_position: list[int] | None = None) -> None:
        """Jump to `position`, given the per-task counts before it (None replays from the start)."""
        block = position // BLOCK
        if counts_at_position is None:
            self._block, self._choices = -1, np.zeros(0, dtype=np.int64)
            self._start_counts = np.zeros(len(self.tasks), dtype=np.int64)
            self.locate(position)
            return
        if len(counts_at_position) != len(self.tasks):
            raise ValueError(f"stream state for {self.name!r} has {len(counts_at_position)} task counts, the "
                             f"mixture has {len(self.tasks)} tasks")
        choices = self._draw(block)
        before = np.bincount(choices[: position % BLOCK], minlength=len(self.tasks))
        start = np.asarray(counts_at_position, dtype=np.int64) - before
        if (start < 0).any():
            raise ValueError(f"stream state for {self.name!r} is inconsistent with its seed at position {position}")
        self._load(block, start)


class BatchStream:
    """Numpy batches of a task or mixture for one host: deterministic, sharded and resumable.

    `batch_size` is per host. Decoder-only rows hold inputs + targets, so they are
    feature_lengths["inputs"] + feature_lengths["targets"] long. `num_epochs` (single finite tasks only) ends
    the stream after that many passes; the last batch is padded with empty rows.
    """

    def __init__(self, name: str, *, vocabulary, feature_lengths: Mapping[str, int] | None = None,
                 batch_size: int, model_family: str = "encoder_decoder", pack: bool = True, seed: int = 0,
                 shard_index: int = 0, num_shards: int = 1, num_epochs: int | None = None,
                 truncate_targets: bool = False):
        if model_family not in FAMILIES:
            raise ValueError(f"model_family must be one of {FAMILIES}, got {model_family!r}")
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} is outside 0..{num_shards - 1} (num_shards={num_shards})")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        lengths = checked_feature_lengths(feature_lengths or {"inputs": 2048, "targets": 512})
        self.name, self.vocabulary, self.feature_lengths = name, vocabulary, lengths
        self.batch_size, self.model_family, self.pack, self.seed = int(batch_size), model_family, pack, int(seed)
        self.shard_index, self.num_shards, self.truncate_targets = int(shard_index), int(num_shards), truncate_targets
        self.sampler = MixtureSampler(name, seed=seed)
        self._limit = None
        if num_epochs is not None:
            if len(self.sampler.tasks) != 1 or self.sampler.tasks[0].size() is None:
                raise ValueError(f"num_epochs needs a single task of known size; {name!r} is not one")
            self._limit = num_epochs * self.sampler.tasks[0].size()
        self._position = self.shard_index
        self._peek: tuple[int, Any] | None = None
        self.sampler.seek(self._position)
        layout = token_layout(model_family, vocabulary)
        self._input_prefix = np.asarray(layout.input_prefix, dtype=np.int32)
        self._input_suffix = np.asarray(layout.input_suffix, dtype=np.int32)
        self._target_suffix = np.asarray(layout.target_suffix, dtype=np.int32)
        if model_family == "encoder_decoder":
            self._caps = (lengths["inputs"], lengths["targets"])
        else:
            self._caps = (lengths["inputs"] + lengths["targets"],)
        self.budget = PromptBudget(max_input_length=lengths["inputs"] - layout.reserved,
                                   length_fn=token_length_fn(vocabulary))

    # -- examples -------------------------------------------------------------------------------
    def example_at(self, position: int) -> dict:
        """The raw example dict at a global position (must be at or after the current block)."""
        task, index = self.sampler.locate(position)
        return task.example(index, self.seed, self.budget)

    def tokenize(self, example: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) token arrays with the family's special tokens (token_layout)."""
        enc = self.vocabulary.encode_np
        inputs = np.concatenate([self._input_prefix, enc(example["inputs"]), self._input_suffix])
        targets = np.concatenate([enc(example["targets"]), self._target_suffix])
        return inputs.astype(np.int32, copy=False), targets.astype(np.int32, copy=False)

    def _lengths(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[int, ...]:
        if self.model_family == "encoder_decoder":
            return inputs.size, targets.size
        return (inputs.size + targets.size,)

    def _item(self, position: int):
        if self._peek is not None and self._peek[0] == position:
            return self._peek[1]
        ex = self.example_at(position)
        origin = f"task {ex['task']!r} dataset {ex.get('dataset', '?')!r} index {ex.get('index', '?')}"
        inputs, targets = self.tokenize(ex)
        lens = self._lengths(inputs, targets)
        if any(length > cap for length, cap in zip(lens, self._caps)) and not self.truncate_targets:
            raise fc.ExampleTooLongError(
                f"{origin}: {lens} tokens do not fit feature lengths {self.feature_lengths} "
                f"({self.model_family}); the prompt budget should have prevented this")
        if self.truncate_targets:
            lens = tuple(min(length, cap) for length, cap in zip(lens, self._caps))
        item = ((inputs, targets), lens, origin)
        self._peek = (position, item)
        return item

    # -- batches --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        pos = self._position
        examples, origins = [], []
        fill = [0] * len(self._caps)
        rows = 1
        while self._limit is None or pos < self._limit:
            pair, lens, origin = self._item(pos)
            if not self.pack:
                if len(examples) == self.batch_size:
                    break
            elif any(f + n > c for f, n, c in zip(fill, lens, self._caps)):
                if rows == self.batch_size:
                    break
                rows, fill = rows + 1, [0] * len(self._caps)
            fill = [f + n for f, n in zip(fill, lens)]
            examples.append(pair)
            origins.append(origin)
            pos += self.num_shards
        if not examples:
            raise StopIteration
        self._position = pos
        return self.convert(examples, origins)

    def convert(self, examples, origins=None) -> dict[str, np.ndarray]:
        """Model features for tokenized examples, as this stream's batches are built."""
        if self.model_family == "encoder_decoder":
            return fc.pack_encoder_decoder(examples, input_length=self._caps[0], target_length=self._caps[1],
                                           batch_size=self.batch_size, pack=self.pack,
                                           truncate_targets=self.truncate_targets, origins=origins)
        return fc.pack_prefix_lm(examples, length=self._caps[0], batch_size=self.batch_size, pack=self.pack,
                                 truncate_targets=self.truncate_targets, origins=origins)

    # -- resume ---------------------------------------------------------------------------------
    def state(self) -> dict:
        """JSON-serialisable position of this host's stream."""
        return {"version": _STATE_VERSION, "name": self.name, "seed": self.seed, "shard_index": self.shard_index,
                "num_shards": self.num_shards, "position": int(self._position),
                "task_counts": self.sampler.counts_at(self._position),
                "tasks": [t.name for t in self.sampler.tasks]}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the stream that wrote `state` stood."""
        for key in ("name", "seed", "shard_index", "num_shards"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"stream state field {key!r} is {state.get(key)!r} but this stream has "
                                 f"{getattr(self, key)!r}")
        if state.get("tasks") != [t.name for t in self.sampler.tasks]:
            raise ValueError(f"stream state field 'tasks' lists {state.get('tasks')!r}, this stream's mixture "
                             f"{self.name!r} has {[t.name for t in self.sampler.tasks]!r}")
        self.sampler.seek(int(state["position"]), list(state["task_counts"]))
        self._position = int(state["position"])
        self._peek = None
