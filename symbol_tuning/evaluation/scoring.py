"""Scoring and generation for the evaluator: prompts tokenized with the family's token layout, padded into
power-of-two length buckets (so jit compiles few shapes) and run through the model's shared-prefix
`score_options` or KV-cache `decode`.

With a mesh, every host feeds its slice of each batch through partitioning.make_global_batch and the
results are gathered back onto every host; params may be sharded jax arrays.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from symbol_tuning.data.token_layout import token_layout
from symbol_tuning.models.base import BaseModel
from symbol_tuning.training.metrics import Progress

MIN_PROMPT_BUCKET = 64
MIN_OPTION_BUCKET = 8


def bucket(n: int, minimum: int) -> int:
    """The smallest power of two >= max(n, minimum)."""
    size = minimum
    while size < n:
        size *= 2
    return size


def tokenize_prompts(model: BaseModel, vocabulary, texts: Sequence[str], *, max_input_length: int) -> list[list[int]]:
    """Prompt token ids in the family's token layout; a prompt over max_input_length raises ValueError."""
    layout = token_layout(model.family, vocabulary)
    ids = [layout.inputs(row) for row in vocabulary.encode_batch(list(texts))]
    for i, row in enumerate(ids):
        if len(row) > max_input_length:
            raise ValueError(f"prompt {i}: {len(row)} tokens exceed max_input_length={max_input_length}")
    return ids


def tokenize_options(model: BaseModel, vocabulary, options: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """Option token ids per prompt in the family's token layout (encoder-decoder options end with EOS)."""
    layout = token_layout(model.family, vocabulary)
    return [[layout.option(row) for row in vocabulary.encode_batch(list(opts))] for opts in options]


def _pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


_JIT_CACHE: dict[tuple, Callable] = {}


def _jitted(model: BaseModel, what: str) -> Callable:
    """One jitted function per (model class, config): checkpoints of one shape reuse the compilations."""
    try:
        key = (type(model), model.config, what)
        hash(key)
    except TypeError:
        key = (id(model), what)
    if key not in _JIT_CACHE:
        if len(_JIT_CACHE) >= 16:
            _JIT_CACHE.clear()
        _JIT_CACHE[key] = (jax.jit(model.score_options) if what == "score"
                           else jax.jit(model.decode, static_argnames=("max_new_tokens", "eos_id")))
    return _JIT_CACHE[key]


def _run_global(arrays: Mapping[str, np.ndarray], mesh) -> Mapping[str, Any]:
    """Feed a global batch (the same on every host) through make_global_batch when a mesh is given."""
    if mesh is None:
        return arrays
    from symbol_tuning.training.partitioning import make_global_batch

    count, index = jax.process_count(), jax.process_index()
    rows = next(iter(arrays.values())).shape[0]
    if rows % count:
        raise ValueError(f"eval batch of {rows} rows does not split over {count} hosts")
    per = rows // count
    return make_global_batch({k: v[index * per:(index + 1) * per] for k, v in arrays.items()}, mesh)


def _to_host(x: Any) -> np.ndarray:
    if jax.process_count() > 1 and not getattr(x, "is_fully_addressable", True):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def _length_groups(prompt_ids: Sequence[Sequence[int]], min_prompt_bucket: int) -> dict[int, list[int]]:
    """Prompt indices by power-of-two padded length, so a whole suite compiles a few shapes only."""
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(prompt_ids):
        groups.setdefault(bucket(len(row), min_prompt_bucket), []).append(i)
    return groups


def _prompt_batches(prompt_ids: Sequence[Sequence[int]], groups: Mapping[int, list[int]], batch_size: int):
    """(real prompt indices, all row indices, padded prompts [B, Lp], lengths [B]) per batch; a short last
    batch of a group repeats its first prompt so every call has `batch_size` rows."""
    for lp, members in sorted(groups.items()):
        for start, stop in _batches(len(members), batch_size):
            real = members[start:stop]
            rows = real + [real[0]] * (batch_size - len(real))
            yield (real, rows, _pad([prompt_ids[i] for i in rows], lp),
                   np.asarray([len(prompt_ids[i]) for i in rows], np.int32))


def score_prompts(model: BaseModel, params: Any, prompt_ids: Sequence[Sequence[int]],
                  option_ids: Sequence[Sequence[Sequence[int]]], *, batch_size: int = 8, mesh=None,
                  min_prompt_bucket: int = MIN_PROMPT_BUCKET) -> list[np.ndarray]:
    """Summed option log-likelihoods (one [K_i] array per prompt) for prompts with any number of options.

    Options are padded to the largest K (empty options, dropped from the result) and one option length;
    prompts are grouped by power-of-two length bucket, so a whole suite compiles a few shapes only.
    """
    if not prompt_ids:
        return []
    k = max(len(opts) for opts in option_ids)
    lo = bucket(max(len(o) for opts in option_ids for o in opts), MIN_OPTION_BUCKET)
    fn = _jitted(model, "score")
    groups = _length_groups(prompt_ids, min_prompt_bucket)
    out: list[np.ndarray | None] = [None] * len(prompt_ids)
    progress = Progress(sum(-(-len(m) // batch_size) for m in groups.values()), desc="eval")
    for real, rows, prompts, lengths in _prompt_batches(prompt_ids, groups, batch_size):
        options = np.stack([_pad(list(option_ids[i]) + [[]] * (k - len(option_ids[i])), lo) for i in rows])
        option_lengths = np.asarray([[len(o) for o in option_ids[i]] + [0] * (k - len(option_ids[i]))
                                     for i in rows], np.int32)
        batch = _run_global({"p": prompts, "pl": lengths, "o": options, "ol": option_lengths}, mesh)
        scores = _to_host(fn(params, batch["p"], batch["pl"], batch["o"], batch["ol"]))
        for j, i in enumerate(real):
            out[i] = scores[j, :len(option_ids[i])].astype(np.float32)
        progress.update(1)
    progress.close()
    return out  # type: ignore[return-value]


def decode_prompts(model: BaseModel, params: Any, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                   eos_id: int, batch_size: int = 8, mesh=None,
                   min_prompt_bucket: int = MIN_PROMPT_BUCKET) -> list[np.ndarray]:
    """Greedy KV-cache continuations ([max_new_tokens] tokens per prompt), prompts bucketed by length."""
    fn = _jitted(model, "decode")
    out: list[np.ndarray | None] = [None] * len(prompt_ids)
    groups = _length_groups(prompt_ids, min_prompt_bucket)
    for real, _, prompts, lengths in _prompt_batches(prompt_ids, groups, batch_size):
        batch = _run_global({"p": prompts, "pl": lengths}, mesh)
        tokens = _to_host(fn(params, batch["p"], batch["pl"], max_new_tokens=max_new_tokens, eos_id=eos_id))
        for j, i in enumerate(real):
            out[i] = tokens[j]
    return out  # type: ignore[return-value]
