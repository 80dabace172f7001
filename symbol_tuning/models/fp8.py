"""FP8 matmuls for training (H100 / H200), with per-tensor scaling computed from the current values.

`fp8_dot_general` is `lax.dot_general` on operands quantised to float8_e4m3fn and dequantised again
(flax's `fp8_ops.quantize` / `dequantize`): XLA's GPU GEMM rewriter turns a dot of dequantised FP8
operands into one cuBLASLt FP8 matmul with the scales folded in. The gradient flowing back into the
matmul is quantised to float8_e5m2 (more range, less precision), so both backward matmuls run in FP8
too. Scales are "current" (amax of this step's tensor / the format's max), not flax's delayed
amax-history scaling: no extra training state, at the cost of one reduction over each operand.
Elsewhere (CPU, TPU) the same arithmetic runs, rounded to FP8 values but computed in the compute dtype.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax.linen import fp8_ops

FORWARD_DTYPE = jnp.float8_e4m3fn
GRADIENT_DTYPE = jnp.float8_e5m2


def amax_scale(x: jax.Array, fp8_dtype: Any) -> jax.Array:
    """The per-tensor float32 scale that maps max|x| onto the FP8 format's largest finite value
    (1 for an all-zero tensor)."""
    amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
    fmax = fp8_ops.get_fp8_max(fp8_dtype, jnp.float32)
    return jnp.where(amax > 0, amax / fmax, jnp.float32(1.0))


def quantize_dequantize(x: jax.Array, fp8_dtype: Any) -> jax.Array:
    """x rounded to the nearest value the scaled FP8 format holds, back in x's dtype."""
    scale = amax_scale(x, fp8_dtype)
    q = fp8_ops.quantize(x.astype(jnp.float32), fp8_dtype, scale, jnp.float32)
    return fp8_ops.dequantize(q, x.dtype, scale)


@jax.custom_vjp
def _forward_qdq(x: jax.Array) -> jax.Array:
    """E4M3 quantise-dequantise with a straight-through gradient."""
    return quantize_dequantize(x, FORWARD_DTYPE)


_forward_qdq.defvjp(lambda x: (quantize_dequantize(x, FORWARD_DTYPE), None), lambda _, g: (g,))


@jax.custom_vjp
def _gradient_qdq(y: jax.Array) -> jax.Array:
    """The identity whose gradient is E5M2 quantise-dequantised."""
    return y


_gradient_qdq.defvjp(lambda y: (y, None), lambda _, g: (quantize_dequantize(g, GRADIENT_DTYPE),))


@functools.partial(jax.named_call, name="fp8_dot_general")
def fp8_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> jax.Array:
    """`lax.dot_general(lhs, rhs, dimension_numbers)` with E4M3 operands and an E5M2 output gradient;
    the result is in lhs's dtype."""
    out = jax.lax.dot_general(_forward_qdq(lhs), _forward_qdq(rhs), dimension_numbers,
                              preferred_element_type=lhs.dtype)
    return _gradient_qdq(out)
