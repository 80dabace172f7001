"""Token-level losses and accuracy with T5X conventions (float32 log-softmax, z-loss, normalising factor).

The loss of a batch is sum_tokens(weight * per-token loss) / normaliser. Dividing a sum (not taking a
mean) lets microbatched training add the sums of its microbatches and divide once by the total
normaliser, which gives exactly the single-batch result.
"""
from __future__ import annotations

import math
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


def _checked_smoothing(logits: jax.Array, targets: jax.Array, weights: jax.Array | None,
                       label_smoothing: float) -> tuple[jax.Array, float, float, float]:
    """Shapes checked (ValueError naming the mismatch) and the label-smoothing terms both loss paths use:
    (weights, target mass, mass of every other entry, entropy of the smoothed distribution)."""
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
    constant = (-(confidence * math.log(confidence) + (vocab - 1) * low * math.log(low + 1e-20))
                if label_smoothing else 0.0)
    return weights, confidence, low, constant


def weighted_cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array | None, *,
                                z_loss: float = 0.0,
                                label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Un-normalised (loss_sum, z_loss_sum, weight_sum) over all tokens: the pieces microbatching adds.

    Label smoothing spreads `label_smoothing` of the target mass evenly over the other vocab entries
    and subtracts the entropy of that smoothed distribution, so a perfect prediction has loss 0 (T5X).
    """
    weights, confidence, low, normalizing_constant = _checked_smoothing(logits, targets, weights, label_smoothing)
    vocab = logits.shape[-1]
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


LOSS_IMPLS = ("reference", "chunked")


def vocab_chunk_size(vocab: int, requested: int) -> int:
    """The largest divisor of `vocab` that is <= `requested` (chunks must tile the vocabulary)."""
    requested = max(1, min(int(requested), vocab))
    return next(c for c in range(requested, 0, -1) if vocab % c == 0)


def _chunks(logits: jax.Array, chunk: int):
    """(number of chunks, f(i) -> float32 logits[..., i*chunk:(i+1)*chunk])."""
    count = logits.shape[-1] // chunk

    def get(i):
        return jax.lax.dynamic_slice_in_dim(logits, i * chunk, chunk, axis=-1).astype(jnp.float32)
    return count, get


def _chunked_stats(logits: jax.Array, targets: jax.Array, chunk: int):
    """One pass over the vocabulary in chunks: (log Z, target logit, sum of logits, argmax), float32."""
    count, get = _chunks(logits, chunk)
    lead = logits.shape[:-1]
    init = (jnp.full(lead, -jnp.inf, jnp.float32), jnp.zeros(lead, jnp.float32), jnp.zeros(lead, jnp.float32),
            jnp.zeros(lead, jnp.float32), jnp.zeros(lead, jnp.int32))

    def body(i, carry):
        run_max, run_sum, target_logit, logit_sum, best = carry
        x = get(i)
        chunk_max = jnp.max(x, axis=-1)
        new_max = jnp.maximum(run_max, chunk_max)
        run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.sum(jnp.exp(x - new_max[..., None]), axis=-1)
        local = targets - i * chunk
        inside = (local >= 0) & (local < chunk)
        picked = jnp.take_along_axis(x, jnp.clip(local, 0, chunk - 1)[..., None], axis=-1)[..., 0]
        target_logit = jnp.where(inside, picked, target_logit)
        # first index of the maximum, as jnp.argmax: a later chunk wins only when strictly larger
        best = jnp.where(chunk_max > run_max, i * chunk + jnp.argmax(x, axis=-1).astype(jnp.int32), best)
        return new_max, run_sum, target_logit, logit_sum + jnp.sum(x, axis=-1), best

    run_max, run_sum, target_logit, logit_sum, best = jax.lax.fori_loop(0, count, body, init)
    return run_max + jnp.log(run_sum), target_logit, logit_sum, best


def chunked_cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array | None, *,
                               z_loss: float = 0.0, label_smoothing: float = 0.0, vocab_chunk: int = 8192,
                               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """weighted_cross_entropy_sums and the weighted correct-token count, with a custom gradient.

    The logits (typically bf16: the model's compute dtype) are read in vocabulary chunks of
    `vocab_chunk` (rounded down to a divisor of V) and upcast one chunk at a time, so no float32
    [B, L, V] array is kept for the backward pass; the argmax for accuracy comes from the same pass.
    The gradient, p_v (1 + 2 z log Z) - (confidence - low) [v = target] - low per token times its
    weight, is written chunk by chunk in the logits' dtype. Returns (loss_sum, z_loss_sum,
    weight_sum, correct_sum); equal to the reference path within float32 rounding.
    """
    weights, confidence, low, constant = _checked_smoothing(logits, targets, weights, label_smoothing)
    vocab = logits.shape[-1]
    chunk = vocab_chunk_size(vocab, vocab_chunk)
    targets = targets.astype(jnp.int32)
    weights = weights.astype(jnp.float32)

    def token_terms(logits):
        log_z, target_logit, logit_sum, best = _chunked_stats(logits, targets, chunk)
        loss = -(confidence - low) * (target_logit - log_z)
        if low:
            loss = loss - low * (logit_sum - vocab * log_z)
        z_term = z_loss * jnp.square(log_z)
        return loss + z_term - constant, z_term, log_z, best

    @jax.custom_vjp
    def sums(logits, weights):
        loss, z_term, _, best = token_terms(logits)
        return jnp.sum(loss * weights), jnp.sum(z_term * weights), jax.lax.stop_gradient(best)

    def fwd(logits, weights):
        loss, z_term, log_z, best = token_terms(logits)
        return (jnp.sum(loss * weights), jnp.sum(z_term * weights), best), (logits, weights, log_z, loss, z_term)

    def bwd(res, cotangents):
        logits, weights, log_z, loss, z_term = res
        g_loss, g_z = cotangents[0], cotangents[1]
        count, get = _chunks(logits, chunk)
        # d(loss_sum)/dx_v = w (p_v (1 + 2 z logZ) - (c - l)[v = t] - l); d(z_sum)/dx_v = w 2 z logZ p_v
        scale = weights * g_loss
        p_coef = scale * (1.0 + 2.0 * z_loss * log_z) + weights * g_z * 2.0 * z_loss * log_z

        def body(i, grad):
            x = get(i)
            p = jnp.exp(x - log_z[..., None])
            onehot = (targets - i * chunk)[..., None] == jnp.arange(chunk)
            g = p * p_coef[..., None] - scale[..., None] * ((confidence - low) * onehot + low)
            return jax.lax.dynamic_update_slice_in_dim(grad, g.astype(grad.dtype), i * chunk, axis=-1)

        grad = jax.lax.fori_loop(0, count, body, jnp.zeros_like(logits))
        return grad, loss * g_loss + z_term * g_z

    sums.defvjp(fwd, bwd)
    loss_sum, z_sum, best = sums(logits, weights)
    correct = jnp.sum((best == targets).astype(jnp.float32) * weights)
    return loss_sum, z_sum, jnp.sum(weights), correct
