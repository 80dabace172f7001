"""The jitted train and eval steps: sharded loss and gradients, microbatch accumulation, the optimizer update.

A step takes the train state (train_state.TrainState) and a global batch whose rows are split over the
batch mesh axes, and returns the new state and replicated scalar metrics. `StepOptions` holds what a step
computes beyond the model and optimizer (microbatching, z-loss, label smoothing, the loss normaliser,
dropout); the trainer, the planner and the benchmarks build their steps from it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from symbol_tuning.models.base import BaseModel
from symbol_tuning.training.losses import (
    LOSS_IMPLS,
    LossNormalizer,
    chunked_cross_entropy_sums,
    normalizing_factor,
    token_accuracy_counts,
    weighted_cross_entropy_sums,
)
from symbol_tuning.training.optimizers import as_schedule
from symbol_tuning.training.partitioning import Rules, validate_rules
from symbol_tuning.training.train_state import TrainState, replicated

StepFn = Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What a train or eval step computes besides the model's loss: `num_microbatches` accumulated by
    `lax.scan` (gradients equal the single-batch ones), T5X's `z_loss` and `label_smoothing`, the
    `loss_normalizing_factor` (losses.normalizing_factor: None, a number or "num_real_target_tokens")
    and whether the train step applies `dropout`.

    Speed options (same results): `loss_impl` "reference" (float32 logits, losses.weighted_cross_entropy_sums)
    or "chunked" (logits in the compute dtype, losses.chunked_cross_entropy_sums over `loss_vocab_chunk`
    vocabulary entries at a time, with a custom gradient); `grad_norm` False leaves the (unclipped) gradient
    norm out of the metrics, a full pass over the gradients saved when nothing else needs it."""

    num_microbatches: int = 1
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    loss_normalizing_factor: LossNormalizer = None
    dropout: bool = True
    loss_impl: str = "reference"
    loss_vocab_chunk: int = 8192
    grad_norm: bool = True

    def __post_init__(self):
        if not isinstance(self.num_microbatches, int) or self.num_microbatches < 1:
            raise ValueError(f"num_microbatches={self.num_microbatches!r} must be an integer >= 1")
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl={self.loss_impl!r} not in {LOSS_IMPLS}")
        if not isinstance(self.loss_vocab_chunk, int) or self.loss_vocab_chunk < 1:
            raise ValueError(f"loss_vocab_chunk={self.loss_vocab_chunk!r} must be an integer >= 1")


def _default_batch_shardings(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def _row_shards(batch_shardings: Any, mesh: Mesh) -> int:
    """How many ways the leading (row) dim of the batch is split (1 when it cannot be read off)."""
    leaves = jax.tree_util.tree_leaves(batch_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    if not leaves or not isinstance(leaves[0], NamedSharding) or not tuple(leaves[0].spec):
        return 1
    first = leaves[0].spec[0]
    axes = () if first is None else (first,) if isinstance(first, str) else tuple(first)
    return math.prod(mesh.shape[a] for a in axes)


def _loss_pieces(model: BaseModel, params: Any, batch: Mapping[str, jax.Array], dropout_rng: jax.Array | None, *,
                 z_loss: float, label_smoothing: float, loss_impl: str = "reference",
                 loss_vocab_chunk: int = 8192) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Summed (un-normalised) loss of a batch and its (z_loss sum, weight sum, correct-token count)."""
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    if loss_impl == "chunked":
        logits = model.compute_logits(params, batch, dropout_rng=dropout_rng, float32_logits=False)
        loss_sum, z_sum, weight_sum, correct = chunked_cross_entropy_sums(
            logits, targets, weights, z_loss=z_loss, label_smoothing=label_smoothing, vocab_chunk=loss_vocab_chunk)
        return loss_sum, (z_sum, weight_sum, correct)
    logits = model.compute_logits(params, batch, dropout_rng=dropout_rng)
    loss_sum, z_sum, weight_sum = weighted_cross_entropy_sums(logits, targets, weights, z_loss=z_loss,
                                                              label_smoothing=label_smoothing)
    correct, _ = token_accuracy_counts(logits, targets, weights)
    return loss_sum, (z_sum, weight_sum, correct)


def _microbatches(batch: Mapping[str, jax.Array], num_microbatches: int, row_shards: int) -> dict[str, jax.Array]:
    """Split [B, ...] features into [n, B / n, ...]; microbatch i takes rows i, i + n, ... so that each
    microbatch stays spread over every device of the batch axes (no resharding)."""
    out = {}
    for name, x in batch.items():
        if x.shape[0] % (num_microbatches * row_shards):
            raise ValueError(f"batch feature {name!r}: batch size {x.shape[0]} is not divisible by "
                             f"num_microbatches={num_microbatches} x {row_shards} devices along the batch axes")
        rows = x.shape[0] // num_microbatches
        out[name] = jnp.swapaxes(x.reshape((rows, num_microbatches) + x.shape[1:]), 0, 1)
    return out


def _metrics(loss_sum, z_sum, weight_sum, correct, factor, grad_norm, learning_rate) -> dict[str, jax.Array]:
    loss = loss_sum / factor
    z = z_sum / factor
    metrics = {"loss": loss, "z_loss": z, "cross_entropy": loss - z,
               "accuracy": correct / jnp.maximum(weight_sum, 1e-8), "num_target_tokens": weight_sum,
               **({} if grad_norm is None else {"grad_norm": grad_norm})}
    if learning_rate is not None:
        metrics["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    return metrics


def make_train_step(*, model: BaseModel, optimizer: optax.GradientTransformation, state_shardings: TrainState,
                    batch_shardings: Any, mesh: Mesh, rules: Rules, options: StepOptions = StepOptions(),
                    learning_rate_fn: float | optax.Schedule | None = None) -> StepFn:
    """A jitted `(state, batch) -> (new_state, metrics)` with fixed in/out shardings; `state` is donated.

    The loss is the sum of weighted token losses over the whole batch divided by the normaliser of the
    whole batch (`losses.normalizing_factor`); with `options.num_microbatches` > 1 the gradients of the
    microbatches are accumulated by `lax.scan` and equal the single-batch gradients. Dropout keys are
    `fold_in(fold_in(state.rng, step), microbatch)`. `batch_shardings` is a NamedSharding for every
    feature (or a dict per feature; None = rows over ("data", "fsdp")). `learning_rate_fn` (the
    optimizer's schedule or float) is only logged, as `metrics["learning_rate"]` of the step being taken
    (absent when None). Metrics: loss, z_loss, cross_entropy, accuracy, num_target_tokens, grad_norm
    (before clipping; absent with options.grad_norm False), learning_rate.
    """
    validate_rules(rules, mesh)
    lr_fn = None if learning_rate_fn is None else as_schedule(learning_rate_fn)
    batch_shardings = _default_batch_shardings(mesh) if batch_shardings is None else batch_shardings
    pieces = functools.partial(_loss_pieces, model, z_loss=options.z_loss, label_smoothing=options.label_smoothing,
                               loss_impl=options.loss_impl, loss_vocab_chunk=options.loss_vocab_chunk)
    num_microbatches = options.num_microbatches

    def step_fn(state: TrainState, batch: Mapping[str, jax.Array]):
        factor = normalizing_factor(batch["decoder_loss_weights"], options.loss_normalizing_factor)
        step_rng = jax.random.fold_in(state.rng, state.step)

        def objective(params, mb, rng):
            loss_sum, aux = pieces(params, mb, rng)
            return loss_sum / factor, (loss_sum, aux)

        def grad_of(mb, index):
            rng = jax.random.fold_in(step_rng, index) if options.dropout else None
            (_, (loss_sum, aux)), grads = jax.value_and_grad(objective, has_aux=True)(state.params, mb, rng)
            grads = jax.lax.with_sharding_constraint(grads, state_shardings.params)
            return grads, loss_sum, aux

        if num_microbatches == 1:
            grads, loss_sum, (z_sum, weight_sum, correct) = grad_of(batch, 0)
        else:
            mbs = _microbatches(batch, num_microbatches, _row_shards(batch_shardings, mesh))

            def body(carry, xs):
                mb, index = xs
                mb = jax.lax.with_sharding_constraint(mb, batch_shardings)
                out = grad_of(mb, index)
                return jax.tree_util.tree_map(jnp.add, carry, out), None

            zeros = (jax.tree_util.tree_map(jnp.zeros_like, state.params), jnp.float32(0),
                     (jnp.float32(0), jnp.float32(0), jnp.float32(0)))
            (grads, loss_sum, (z_sum, weight_sum, correct)), _ = jax.lax.scan(
                body, zeros, (mbs, jnp.arange(num_microbatches)))
        grad_norm = optax.tree.norm(grads) if options.grad_norm else None
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = _metrics(loss_sum, z_sum, weight_sum, correct, factor, grad_norm,
                           None if lr_fn is None else lr_fn(state.step))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                     out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(state, batch)

    train_step.jitted = jitted  # for ahead-of-time lowering (`.lower(...)`) by the planner
    return train_step


def make_eval_step(*, model: BaseModel, state_shardings: TrainState, batch_shardings: Any, mesh: Mesh,
                   rules: Rules, options: StepOptions = StepOptions(),
                   ) -> Callable[[TrainState, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """A jitted `(state, batch) -> metrics` (loss, z_loss, cross_entropy, accuracy, num_target_tokens)
    without dropout or update (`options.num_microbatches` and `options.dropout` do not apply)."""
    validate_rules(rules, mesh)
    batch_shardings = _default_batch_shardings(mesh) if batch_shardings is None else batch_shardings
    pieces = functools.partial(_loss_pieces, model, z_loss=options.z_loss, label_smoothing=options.label_smoothing,
                               loss_impl=options.loss_impl, loss_vocab_chunk=options.loss_vocab_chunk)

    def eval_fn(state: TrainState, batch: Mapping[str, jax.Array]):
        factor = normalizing_factor(batch["decoder_loss_weights"], options.loss_normalizing_factor)
        loss_sum, (z_sum, weight_sum, correct) = pieces(state.params, batch, None)
        return _metrics(loss_sum, z_sum, weight_sum, correct, factor, None, None)

    jitted = jax.jit(eval_fn, in_shardings=(state_shardings, batch_shardings), out_shardings=replicated(mesh))

    def eval_step(state: TrainState, batch: Mapping[str, jax.Array]):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted(state, batch)

    return eval_step
