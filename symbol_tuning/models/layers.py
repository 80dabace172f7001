"""Layers shared by both model families, with logical axis names on every parameter.

Parameters are float32 by default (`param_dtype`) and computation runs in `dtype` (bfloat16 by
default in configs); normalisation statistics and softmax are always computed in float32.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from symbol_tuning.models import fp8

Initializer = Callable[..., jax.Array]
DType = jnp.dtype

# The name `attention` gives its output (the attention context, [B, T, N, H]) for remat policies.
ATTENTION_CONTEXT = "attention_context"

# Activations a layer keeps for the backward pass; "none" skips nn.remat. One table for both families, so the
# configs accept the same names and the memory planner's model covers each of them. "attention" keeps only
# the attention context (the backward pass then redoes the cheap projections but not the attention kernel);
# "minimal_attention" keeps the weight matmuls' outputs and the context.
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "attention": jax.checkpoint_policies.save_only_these_names(ATTENTION_CONTEXT),
    "minimal_attention": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(ATTENTION_CONTEXT)),
}


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Annotate an activation with logical axis names (a no-op outside a mesh/rules context)."""
    return nn.with_logical_constraint(x, tuple(axes))


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale and no bias (T5 LayerNorm, Llama RMSNorm)."""

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (features,), self.param_dtype)
        return rms_norm(x, scale, self.epsilon, jnp.dtype(self.dtype))


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def rms_norm(x: jax.Array, scale: jax.Array, epsilon: float, dtype: Any) -> jax.Array:
    """x / rms(x) * scale, statistics in float32.

    Rematerialised: the backward pass keeps only `x` (bf16 in training) and recomputes the float32
    intermediates, which would otherwise be saved per norm as three float32 copies of the activations
    (7x the bytes of x, for an elementwise op that is cheap to redo).
    """
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + epsilon)
    return (normed * scale.astype(jnp.float32)).astype(dtype)


def _kernel_init(kernel_init: Initializer, in_axes: int) -> Initializer:
    """`kernel_init` applied to the (fan-in, fan-out) flattening of a kernel of any rank."""
    def init(key, shape, dtype):
        flat = (math.prod(shape[:in_axes]), math.prod(shape[in_axes:]))
        return kernel_init(key, flat, dtype).reshape(shape)
    return init


def dense_dot(x: jax.Array, kernel: jax.Array, in_axes: int, dtype: Any, use_fp8: bool = False) -> jax.Array:
    """x's trailing `in_axes` dims contracted with the kernel's leading ones, in `dtype` (FP8 operands with
    `use_fp8`, see models/fp8.py)."""
    dims = ((tuple(range(x.ndim - in_axes, x.ndim)), tuple(range(in_axes))), ((), ()))
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if use_fp8:
        return fp8.fp8_dot_general(x, kernel, dims)
    return jax.lax.dot_general(x, kernel, dims)


class Kernel(nn.Module):
    """Just the "kernel" parameter of a DenseGeneral of the same name (same shape, axes, initialiser and
    hence the same initial values), for layers that fuse several projections into one matmul."""

    shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    in_axes: int = 1
    param_dtype: DType = jnp.float32
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("kernel", nn.with_logical_partitioning(_kernel_init(self.kernel_init, self.in_axes),
                                                                 self.kernel_axes), self.shape, self.param_dtype)


class DenseGeneral(nn.Module):
    """A bias-free dense layer over the trailing `in_axes` dims to `features` (int or tuple) dims.

    The kernel has shape (*input dims, *features) and logical names `kernel_axes` of the same rank.
    `fp8` runs the matmul on FP8 operands (models/fp8.py).
    """

    features: int | tuple[int, ...]
    kernel_axes: tuple[str, ...]
    in_axes: int = 1
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    fp8: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        in_shape = x.shape[x.ndim - self.in_axes:]
        kernel_shape = tuple(in_shape) + features
        if len(self.kernel_axes) != len(kernel_shape):
            raise ValueError(f"{self.name}: kernel_axes {self.kernel_axes} do not match kernel shape {kernel_shape}")
        kernel = self.param("kernel", nn.with_logical_partitioning(_kernel_init(self.kernel_init, self.in_axes),
                                                                   self.kernel_axes), kernel_shape, self.param_dtype)
        return dense_dot(x, kernel, self.in_axes, self.dtype, self.fp8)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; `attend` gives logits against the same table (tied)."""

    num_embeddings: int
    features: int
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
            (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # T5.1.1 / Flan-T5 gated-GELU
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,  # Llama SwiGLU
    "relu": jax.nn.relu,
}


@functools.partial(jax.checkpoint, static_argnums=(2,))
def gated_activation(gate: jax.Array, up: jax.Array, activation: str) -> jax.Array:
    """act(gate) * up, rematerialised so the backward pass keeps gate and up rather than the activation's
    intermediates (three more [tokens, d_ff] tensors for SiLU / tanh-GELU)."""
    return ACTIVATIONS[activation](gate) * up


class GatedMLP(nn.Module):
    """act(x W_0) * (x W_1) then W_o: T5.1.1 gated-GELU and Llama SwiGLU.

    `fused` computes x W_0 and x W_1 as one matmul against the two kernels stacked to [D, 2, F] (the
    parameters stay wi_0 / wi_1, so checkpoints and HF import / export do not change).
    """

    hidden: int
    activation: str = "gelu_new"
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    fused: bool = False
    fp8: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; known: {sorted(ACTIVATIONS)}")
        dense = lambda feats, axes, name: DenseGeneral(  # noqa: E731
            feats, kernel_axes=axes, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=self.kernel_init, fp8=self.fp8, name=name)
        if self.fused:
            kernel = lambda name: Kernel((x.shape[-1], self.hidden), ("embed", "mlp"),  # noqa: E731
                                         param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=name)()
            both = dense_dot(x, jnp.stack([kernel("wi_0"), kernel("wi_1")], axis=1), 1, self.dtype, self.fp8)
            gate, up = both[..., 0, :], both[..., 1, :]
        else:
            gate = dense(self.hidden, ("embed", "mlp"), "wi_0")(x)
            up = dense(self.hidden, ("embed", "mlp"), "wi_1")(x)
        h = constrain(gated_activation(gate, up, self.activation), ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
        return dense(x.shape[-1], ("mlp", "embed"), "wo")(h)


ATTENTION_IMPLS = (None, "auto", "xla", "cudnn")


def resolve_attention_impl(implementation: str | None, *, dtype: Any, head_dim: int, has_mask: bool,
                           query_len: int = 0, key_len: int = 0, backend: str | None = None) -> str:
    """The kernel `attention` uses: "xla" or "cudnn"; None / "auto" picks.

    Auto picks cuDNN's fused (flash) kernel on a GPU for bf16/fp16 compute with head_dim a multiple of 8
    up to 128: always for unmasked (plain or causal) attention; with a mask or bias (packing, padding,
    T5's relative-position bias, whose gradient cuDNN returns) for self-attention over an even length of
    at least 16 tokens, where XLA would keep [B, N, T, T] probabilities per layer. Everything else
    (cross-attention, KV-cache steps, odd lengths, float32, CPU/TPU) takes the XLA path.
    """
    if implementation not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl {implementation!r} not in {ATTENTION_IMPLS}")
    if implementation in ("xla", "cudnn"):
        return implementation
    backend = backend or jax.default_backend()
    fused_ok = (backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
                and head_dim % 8 == 0 and head_dim <= 128)
    if has_mask:
        fused_ok = fused_ok and query_len == key_len and query_len >= 16 and query_len % 2 == 0
    return "cudnn" if fused_ok else "xla"


def attention(query: jax.Array, key: jax.Array, value: jax.Array, *, bias: jax.Array | None = None,
              mask: jax.Array | None = None, causal: bool = False, scale: float | None = None,
              implementation: str | None = None, query_lengths: jax.Array | None = None,
              key_lengths: jax.Array | None = None) -> jax.Array:
    """Scaled dot-product attention in [batch, length, heads, head_dim] layout via
    `jax.nn.dot_product_attention`.

    key/value may have fewer heads than query (grouped-query / multi-query attention). `bias` is added
    to the logits ([B or 1, N, T, S]); `mask` is boolean ([B or 1, 1 or N, T, S], True = attend);
    `causal` adds a lower-triangular mask without materialising one (with a mask too, cuDNN then skips
    the blocks above the diagonal). `query_lengths` / `key_lengths` [B] int32 mark right padding
    without a mask (cuDNN's padding mask type; no [B, 1, T, S] mask is folded into the bias). The kernel
    is picked by `resolve_attention_impl`. Softmax is computed in float32. The output is named
    ATTENTION_CONTEXT for the remat policies.
    """
    impl = resolve_attention_impl(implementation, dtype=query.dtype, head_dim=query.shape[-1],
                                  has_mask=mask is not None or bias is not None, query_len=query.shape[1],
                                  key_len=key.shape[1])
    lengths = lambda x: None if x is None else x.astype(jnp.int32)  # noqa: E731
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, is_causal=causal, scale=scale,
                                       implementation=impl, query_seq_lengths=lengths(query_lengths),
                                       key_value_seq_lengths=lengths(key_lengths))
    return checkpoint_name(out, ATTENTION_CONTEXT)


def make_attention_mask(query_ok: jax.Array, key_ok: jax.Array, *, causal: bool = False,
                        query_segment_ids: jax.Array | None = None, key_segment_ids: jax.Array | None = None,
                        causal_prefix: jax.Array | None = None) -> jax.Array:
    """Boolean mask [B, 1, T, S] from validity flags [B, T] / [B, S], packing segment ids and causality.

    With `causal_prefix` [B, S] (1 on a prefix-LM's input tokens), keys in the prefix are visible to
    every query of the same segment (bidirectional prefix), the rest causally.
    """
    mask = query_ok[:, :, None].astype(bool) & key_ok[:, None, :].astype(bool)
    if query_segment_ids is not None and key_segment_ids is not None:
        mask &= query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    if causal:
        t, s = query_ok.shape[1], key_ok.shape[1]
        causal_mask = jnp.arange(t)[:, None] >= jnp.arange(s)[None, :]
        if causal_prefix is not None:
            causal_mask = causal_mask[None] | causal_prefix[:, None, :].astype(bool)
        else:
            causal_mask = causal_mask[None]
        mask &= causal_mask
    return mask[:, None]


def layer_stack(config: Any, layer_cls: type[nn.Module], num_layers: int, deterministic: bool,
                in_axes: tuple[Any, ...], args: tuple[Any, ...], **attributes: Any) -> tuple[jax.Array, Any]:
    """Run `num_layers` blocks `layer_cls(config, deterministic, **attributes)` over the carry args[0]; returns
    (carry, outputs).

    in_axes gives, for each of args[1:], nn.broadcast (the same for every layer) or 0 (a per-layer slice of a
    pytree stacked on a leading layers axis, such as a KV cache). Each block returns (carry, output or None);
    outputs come back stacked on a leading layers axis. With config.scan_layers this is one nn.scan whose
    parameters carry a leading axis named "layers" under the module "layers"; otherwise a Python loop over
    blocks layers_0, layers_1, ... with the same numbers. config.remat_policy picks the nn.remat policy; under
    scan, prevent_cse=False is safe (the loop already keeps XLA from merging the recomputation away) and faster.
    """
    policy = REMAT_POLICIES[config.remat_policy]
    if config.scan_layers:
        cls = layer_cls if policy is None else nn.remat(layer_cls, policy=policy, prevent_cse=False)
        stack = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=in_axes, length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        return stack(config, deterministic, name="layers", **attributes)(*args)
    cls = layer_cls if policy is None else nn.remat(layer_cls, policy=policy)
    x, outs = args[0], []
    for i in range(num_layers):
        per_layer = [jax.tree.map(lambda a: a[i], arg) if axis == 0 else arg for arg, axis in zip(args[1:], in_axes)]
        x, out = cls(config, deterministic, name=f"layers_{i}", **attributes)(x, *per_layer)
        outs.append(out)
    stacked = None if outs[0] is None else jax.tree.map(lambda *a: jnp.stack(a), *outs)
    return x, stacked


def convert_layer_layout(params: Any, *, scan_layers: bool) -> Any:
    """Params of one layer layout in the other: a "layers" subtree stacked on a leading axis (scan_layers
    True) <-> blocks "layers_0", "layers_1", ... (False), wherever they occur (T5: under encoder and
    decoder). Other entries are kept; a tree already in the asked layout comes back unchanged."""
    if not isinstance(params, Mapping):
        return params
    out = {k: convert_layer_layout(v, scan_layers=scan_layers) for k, v in params.items()
           if k != "layers" and not _is_block_name(k)}
    blocks = sorted((k for k in params if _is_block_name(k)), key=lambda k: int(k.split("_")[1]))
    if scan_layers:
        if "layers" in params:
            out["layers"] = params["layers"]
        if blocks:
            if [int(k.split("_")[1]) for k in blocks] != list(range(len(blocks))):
                raise ValueError(f"params: layer blocks {blocks} are not numbered 0..{len(blocks) - 1}")
            out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for k in blocks])
    else:
        for k in blocks:
            out[k] = params[k]
        if "layers" in params:
            stacked = params["layers"]
            count = jax.tree.leaves(stacked)[0].shape[0]
            for i in range(count):
                out[f"layers_{i}"] = jax.tree.map(lambda x: x[i], stacked)
    return out


def _is_block_name(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("layers_") and key[len("layers_"):].isdigit()
