"""Learning-rate schedules and optimizers (Adafactor with T5X defaults, AdamW), built on optax.

The paper symbol-tunes with Adafactor at a constant learning rate (3e-3 for 8B/62B, 1e-3 for 540B);
rsqrt and cosine schedules are here for pre-training-style runs and ablations.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt", "cosine")
OPTIMIZERS = ("adafactor", "adamw")


def _warmup_factor(step: Any, warmup_steps: int) -> Any:
    """Linear ramp 0 -> 1 over `warmup_steps` (1 from the start when there is no warm-up)."""
    if warmup_steps <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)


def make_schedule(*, kind: str, base_learning_rate: float, warmup_steps: int = 0, decay_steps: int | None = None,
                  min_learning_rate: float = 0.0) -> optax.Schedule:
    """A schedule step -> learning rate.

    constant: base, after a linear warm-up from 0 over `warmup_steps`.
    rsqrt:    base / sqrt(max(step, warmup_steps, 1)) -- T5's inverse square root, flat during warm-up.
    cosine:   linear warm-up to base, then a half cosine from base to `min_learning_rate` ending at step
              `decay_steps` (counted from 0, warm-up included), then `min_learning_rate`.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; valid: {list(SCHEDULES)}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
    if base_learning_rate < 0:
        raise ValueError(f"base_learning_rate={base_learning_rate} must be >= 0")

    if kind == "constant":
        def schedule(step):
            return base_learning_rate * _warmup_factor(step, warmup_steps)
        return schedule

    if kind == "rsqrt":
        def schedule(step):
            step = jnp.asarray(step, jnp.float32)
            return base_learning_rate * jnp.reciprocal(jnp.sqrt(jnp.maximum(step, max(warmup_steps, 1))))
        return schedule

    if decay_steps is None or decay_steps <= warmup_steps:
        raise ValueError(f"cosine schedule: decay_steps={decay_steps} must be given and > warmup_steps={warmup_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
        cosine = min_learning_rate + 0.5 * (base_learning_rate - min_learning_rate) * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup_steps, base_learning_rate * _warmup_factor(step, warmup_steps), cosine)
    return schedule


def make_optimizer(*, name: str, learning_rate: float | optax.Schedule, weight_decay: float = 0.0,
                   max_grad_norm: float | None = None, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   decay_rate: float = 0.8, clipping_threshold: float | None = 1.0,
                   multiply_by_parameter_scale: bool = True, factored: bool = True,
                   min_dim_size_to_factor: int = 128, momentum: float | None = None,
                   weight_decay_mask: Any = None, mu_dtype: str | None = None) -> optax.GradientTransformation:
    """An optax optimizer by name, optionally after clipping gradients to global norm `max_grad_norm`.

    adafactor: T5X defaults -- factored second moments for dims >= `min_dim_size_to_factor`, decay_rate
      0.8, update clipping 1.0, no momentum, updates scaled by the parameter RMS, epsilon 1e-30;
      `weight_decay` becomes Adafactor's decoupled weight_decay_rate (off at 0). Kernels with small
      trailing dims ([layers, embed, heads, head_dim] with head_dim 64) are factored in a merged view
      (see `factoring_view`), as T5X factors heads x head_dim jointly.
    adamw: optax.adamw with b1, b2, eps and decoupled `weight_decay` (optionally masked).
    mu_dtype ("bfloat16", say) stores AdamW's first moment, or Adafactor's momentum, in that dtype
    (None: the parameters' dtype); the second moment stays float32 as its range needs.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}")
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm={max_grad_norm} must be positive or None")
    if mu_dtype is not None and mu_dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"mu_dtype={mu_dtype!r}: expected None, 'bfloat16', 'float16' or 'float32'")
    mu = None if mu_dtype is None else jnp.dtype(mu_dtype)
    if name == "adafactor":
        opt = optax.adafactor(learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
                              decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
                              clipping_threshold=clipping_threshold, momentum=momentum, eps=1e-30,
                              factored=factored, weight_decay_rate=weight_decay or None,
                              weight_decay_mask=weight_decay_mask, dtype_momentum=mu or jnp.float32)
        if factored:
            opt = in_factoring_view(opt, min_dim_size_to_factor=min_dim_size_to_factor)
    else:
        opt = optax.adamw(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                          mask=weight_decay_mask, mu_dtype=mu)
    if max_grad_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(max_grad_norm), opt)
    return opt


def factoring_view(shape: tuple[int, ...], min_dim_size_to_factor: int = 128) -> tuple[int, ...] | None:
    """The shape Adafactor should factor a parameter of `shape` in, or None to use it as is.

    optax factors a tensor's two largest dims only when both reach `min_dim_size_to_factor`, so a
    T5 attention kernel [layers, embed, heads, head_dim] = [24, 4096, 64, 64] keeps a full second
    moment. Adjacent dims that are each below the threshold are merged (the innermost pair first,
    never a leading scan "layers" dim of a rank >= 4 kernel) until the tensor can be factored:
    [24, 4096, 64, 64] -> [24, 4096, 4096], [64, 64, 4096] -> [4096, 4096].
    """
    def factorable(dims: list[int]) -> bool:
        return len(dims) >= 2 and sorted(dims)[-2] >= min_dim_size_to_factor

    dims = list(shape)
    if len(dims) < 3 or factorable(dims):
        return None
    first = 1 if len(dims) >= 4 else 0
    while not factorable(dims):
        pairs = [i for i in range(first, len(dims) - 1)
                 if dims[i] < min_dim_size_to_factor and dims[i + 1] < min_dim_size_to_factor]
        if not pairs:
            return None
        i = pairs[-1]
        dims[i:i + 2] = [dims[i] * dims[i + 1]]
    return tuple(dims)


def in_factoring_view(inner: optax.GradientTransformation, *,
                      min_dim_size_to_factor: int = 128) -> optax.GradientTransformation:
    """Run `inner` (Adafactor) on every parameter reshaped to its `factoring_view`; updates come back
    in the parameter's shape. Everything in Adafactor but the factoring (update clipping, parameter
    scale, weight decay) is per-tensor or elementwise, so the view changes only which moments are kept."""
    def view(x: Any) -> Any:
        shape = factoring_view(tuple(x.shape), min_dim_size_to_factor)
        return x if shape is None else x.reshape(shape)

    def init(params: Any) -> Any:
        return inner.init(jax.tree_util.tree_map(view, params))

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        viewed_params = None if params is None else jax.tree_util.tree_map(view, params)
        new, state = inner.update(jax.tree_util.tree_map(view, updates), state, viewed_params)
        return jax.tree_util.tree_map(lambda n, u: n.reshape(u.shape), new, updates), state

    return optax.GradientTransformation(init, update)


def as_schedule(learning_rate: float | optax.Schedule) -> Callable[[Any], Any]:
    """A schedule from a float or a schedule (for logging the learning rate of a step)."""
    if callable(learning_rate):
        return learning_rate
    value = float(learning_rate)
    return lambda step: jnp.float32(value)
