"""Token-level losses and accuracy with T5X conventions (float32 log-softmax, z-loss, normalising factor).

The loss of a batch is sum_tokens(weight * per-token loss) / normaliser. Dividing a sum (not taking a
mean) lets microbatched training add the sums of its microbatches and divide once by the total
normaliser, which gives exactly the single-batch result.
"""
from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp

LossNormalizer = Union[None, float, str]
NORMALIZER_NAMES = ("num_real_target_tokens", "num_target_positions")


def cross_entropy_with_logits(logits: jax.Array, targets_onehot: jax.Array,
                              z_loss: float) -> tuple[jax.Array, jax.Array]:
    """Per-token (loss, z_loss_term): -sum(targets * log_softmax) + z_loss * log(Z)^2, in float32.

    The z-loss term (PaLM, T5X) pulls the log-partition log(Z) towards 0 for numerical stability; it is
    included in the returned loss and also returned alone for logging.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_softmax = logits - log_z[..., None]
    loss = -jnp.sum(targets_onehot.astype(jnp.float32) * log_softmax, axis=-1)
    z_term = z_loss * jnp.square(log_z)
    return loss + z_term, z_term


def normalizing_factor(weights: jax.Array, loss_normalizing_factor: LossNormalizer) -> jax.Array:
    """The divisor of the summed loss: 1 (None), a constant, the weight sum, or the number of positions."""
    if loss_normalizing_factor is None:
        return jnp.float32(1.0)
    if isinstance(loss_normalizing_factor, str):
        if loss_normalizing_factor == "num_real_target_tokens":
            return jnp.sum(weights.astype(jnp.float32))
        if loss_normalizing_factor == "num_target_positions":
            return jnp.float32(weights.size)
        raise ValueError(f"loss_normalizing_factor={loss_normalizing_factor!r}: expected None, a number or "
                         f"one of {NORMALIZER_NAMES}")
    if isinstance(loss_normalizing_factor, bool) or not isinstance(loss_normalizing_factor, (int, float)):
        raise ValueError(f"loss_normalizing_factor={loss_normalizing_factor!r}: expected None, a number or "
                         f"one of {NORMALIZER_NAMES}")
    if loss_normalizing_factor <= 0:
        raise ValueError(f"loss_normalizing_factor={loss_normalizing_factor!r} must be positive")
    return jnp.float32(loss_normalizing_factor)


def weighted_cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array | None, *,
                                z_loss: float = 0.0,
                                label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Un-normalised (loss_sum, z_loss_sum, weight_sum) over all tokens: the pieces microbatching adds.

    Label smoothing spreads `label_smoothing` of the target mass evenly over the other vocab entries
    and subtracts the entropy of that smoothed distribution, so a perfect prediction has loss 0 (T5X).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits shape {logits.shape} does not match targets shape {targets.shape}")
    if weights is None:
        weights = jnp.ones(targets.shape, jnp.float32)
    if weights.shape != targets.shape:
        raise ValueError(f"weights shape {weights.shape} does not match targets shape {targets.shape}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
    normalizing_constant = -(confidence * jnp.log(confidence)
                             + (vocab - 1) * low * jnp.log(low + 1e-20)) if label_smoothing else 0.0
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    # -sum_v(soft_v * log_softmax_v) for soft = low everywhere plus (confidence - low) at the target,
    # without materialising a [B, L, vocab] one-hot.
    loss = -(confidence - low) * (target_logit - log_z)
    if low:
        loss = loss - low * (jnp.sum(logits, axis=-1) - vocab * log_z)
    z_term = z_loss * jnp.square(log_z)
    loss = loss + z_term - normalizing_constant
    weights = weights.astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(z_term * weights), jnp.sum(weights)


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array | None, *,
                           z_loss: float = 0.0, label_smoothing: float = 0.0,
                           loss_normalizing_factor: LossNormalizer = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(loss, z_loss, weight_sum): weighted token losses (z-loss included) summed and divided by the
    normalising factor; z_loss is the z-loss part alone, normalised the same way."""
    loss_sum, z_sum, weight_sum = weighted_cross_entropy_sums(logits, targets, weights, z_loss=z_loss,
                                                              label_smoothing=label_smoothing)
    factor = normalizing_factor(jnp.ones(targets.shape) if weights is None else weights, loss_normalizing_factor)
    return loss_sum / factor, z_sum / factor, weight_sum


def token_accuracy_counts(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(weighted number of correct argmax tokens, weight sum)."""
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    return jnp.sum(correct * weights), jnp.sum(weights)


def token_accuracy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Fraction of weighted target tokens whose argmax prediction is right (0 when no weight)."""
    correct, total = token_accuracy_counts(logits, targets, weights)
    return correct / jnp.maximum(total, 1e-8)
