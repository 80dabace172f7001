"""Decoder-only transformers in Flax: Llama-style (GQA, RoPE, SwiGLU) and PaLM-style (parallel block,
multi-query, tied embeddings) shapes, with an explicit functional KV cache for scoring and decoding.

Parameter tree (scan_layers=True): token_embed/embedding, layers/{input_norm, attn/{query, key, value,
out, query_bias, key_bias, value_bias}, post_attn_norm, mlp/{wi_0, wi_1, wo}} with a leading "layers"
axis, final_norm/scale, lm_head/kernel (untied only). scan_layers=False names the blocks layers_0, ...
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from symbol_tuning.models.layers import (
    ATTENTION_IMPLS,
    REMAT_POLICIES,
    DenseGeneral,
    Embed,
    GatedMLP,
    Kernel,
    RMSNorm,
    attention,
    constrain,
    dense_dot,
    layer_stack,
)

HF_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_new", "gelu_new": "gelu_new"}
HF_MODEL_TYPES = ("llama", "qwen2", "mistral")
LAYER_TYPES = ("full_attention", "sliding_attention")
FULL_WINDOW = 2 ** 31 - 1  # the per-layer window of a full-attention layer when some layer slides


@dataclass(frozen=True)
class DecoderConfig:
    """Shape and numerics of a decoder-only model (defaults: a Llama-style block).

    Speed options (none changes the parameters or the function computed): `scan_layers` (one nn.scan
    over the blocks, or a Python loop: no stacked activation buffers); `fused_projections` (Q/K/V as one
    matmul against the concatenated kernels, and the MLP's gate/up as one); `segment_causal` (packed rows
    give attention a same-segment mask plus is_causal, so cuDNN skips the blocks above the diagonal,
    instead of one mask with causality folded in); `fp8` (E4M3/E5M2 matmuls, models/fp8.py: this one does
    change the numerics).

    Sliding-window attention (Mistral, Qwen2): `sliding_window` W lets a query see the W most recent
    positions, itself included (transformers' convention: key position > query position - W), on every
    layer whose `layer_types` entry is "sliding_attention" (layer_types None: every layer slides); the
    others attend to the whole causal prefix. sliding_window None: full attention everywhere (a Qwen2
    config then still keeps its layer_types, i.e. its max_window_layers, for export).
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    activation: str = "silu"
    norm_epsilon: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted (key, value) pairs; hashable
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    parallel_block: bool = False
    qkv_bias: bool = False
    emb_scale: bool = False
    dropout_rate: float = 0.0
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str | None = None
    bidirectional_prefix: bool = False
    fused_projections: bool = False
    segment_causal: bool = False
    fp8: bool = False
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0
    hf_model_type: str = "llama"
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None

    def __post_init__(self):
        if isinstance(self.layer_types, list):  # from JSON / gin
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"DecoderConfig: sliding_window must be a positive int or None, got {window!r}")
        if self.layer_types is not None:
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad or len(self.layer_types) != self.num_layers:
                raise ValueError(f"DecoderConfig: layer_types must list one of {LAYER_TYPES} per layer "
                                 f"({self.num_layers}), got {list(self.layer_types)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"DecoderConfig: num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"DecoderConfig: attention_impl {self.attention_impl!r} not in {ATTENTION_IMPLS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"DecoderConfig: remat_policy {self.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
        if self.rope_scaling is not None:
            kind = dict(self.rope_scaling).get("rope_type", dict(self.rope_scaling).get("type"))
            if kind not in ("llama3", "default"):
                raise ValueError(f"DecoderConfig: rope_scaling type {kind!r} is not supported "
                                 "(supported: 'llama3', 'default')")

    def replace(self, **changes: Any) -> "DecoderConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (rope_scaling as a dict)."""
        out = dataclasses.asdict(self)
        out["rope_scaling"] = None if self.rope_scaling is None else dict(self.rope_scaling)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DecoderConfig":
        """Inverse of to_dict; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"DecoderConfig: unknown fields {unknown}")
        values = dict(values)
        if values.get("rope_scaling") is not None:
            values["rope_scaling"] = tuple(sorted(dict(values["rope_scaling"]).items()))
        return cls(**values)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> "DecoderConfig":
        """From an HF config.json dict of model_type llama, qwen2 or mistral.

        The attention window follows transformers: Mistral's `sliding_window` on every layer; Qwen2's
        only with `use_sliding_window`, on the layers `layer_types` marks "sliding_attention" (when
        absent: layers with index >= `max_window_layers`, the first ones attend fully).
        """
        model_type = hf.get("model_type")
        if model_type not in HF_MODEL_TYPES:
            raise ValueError(f"config.json: model_type {model_type!r} is not a decoder-only type we read "
                             f"({', '.join(HF_MODEL_TYPES)})")
        for flag in ("mlp_bias",) + (("attention_bias",) if model_type != "qwen2" else ()):
            if hf.get(flag):
                raise ValueError(f"config.json: {flag}=true is not supported")
        act = hf.get("hidden_act", "silu")
        if act not in HF_ACTIVATIONS:
            raise ValueError(f"config.json: hidden_act {act!r} not supported ({sorted(HF_ACTIVATIONS)})")
        rope = dict(hf.get("rope_parameters") or {})
        theta = rope.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0
        scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling is not None:
            scaling = {k: v for k, v in dict(scaling).items() if k != "rope_theta"}
        heads = hf["num_attention_heads"]
        window, layer_types = _hf_window(hf, model_type)
        eos = hf.get("eos_token_id")
        values = dict(
            vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, d_ff=hf["intermediate_size"],
            activation=HF_ACTIVATIONS[act], norm_epsilon=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
            rope_scaling=None if scaling is None else tuple(sorted(scaling.items())),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=model_type == "qwen2",
            bos_id=hf.get("bos_token_id") if hf.get("bos_token_id") is not None else 1,
            eos_id=(eos[0] if isinstance(eos, list) else eos) if eos is not None else 2,
            pad_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0,
            hf_model_type=model_type, sliding_window=window, layer_types=layer_types)
        values.update(overrides)
        return cls(**values)

    def to_hf_config(self) -> dict[str, Any]:
        """An HF config.json dict (LlamaForCausalLM, or Qwen2/Mistral per hf_model_type)."""
        if self.parallel_block or self.emb_scale:
            raise ValueError("DecoderConfig: PaLM-style configs (parallel_block / emb_scale) have no "
                             "HF transformers equivalent; they cannot be exported")
        model_type = self.hf_model_type
        if self.qkv_bias and model_type != "qwen2":
            raise ValueError(f"DecoderConfig: qkv_bias requires hf_model_type 'qwen2', not {model_type!r}")
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
        act = {"silu": "silu", "gelu_new": "gelu_pytorch_tanh"}.get(self.activation)
        if act is None:
            raise ValueError(f"DecoderConfig: activation {self.activation!r} has no HF name")
        scaling = None if self.rope_scaling is None else dict(self.rope_scaling)
        out = {
            "model_type": model_type, "architectures": [arch[model_type]], "vocab_size": self.vocab_size,
            "hidden_size": self.d_model, "intermediate_size": self.d_ff, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "hidden_act": act, "rms_norm_eps": self.norm_epsilon,
            "max_position_embeddings": self.max_position_embeddings, "rope_theta": self.rope_theta,
            "rope_scaling": scaling, "rope_parameters": {"rope_theta": self.rope_theta,
                                                          **(scaling or {"rope_type": "default"})},
            "tie_word_embeddings": self.tie_word_embeddings, "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id, "pad_token_id": self.pad_id, "torch_dtype": "float32",
        }
        if model_type == "llama":
            if self.sliding_window is not None:
                raise ValueError(f"DecoderConfig: sliding_window={self.sliding_window} has no LlamaForCausalLM "
                                 "equivalent; export it with hf_model_type 'mistral' or 'qwen2'")
            out.update(attention_bias=False, mlp_bias=False)
        if model_type == "mistral":
            if self.sliding_window is not None and "full_attention" in (self.layer_types or ()):
                raise ValueError("DecoderConfig: MistralForCausalLM slides on every layer; layer_types with "
                                 "full_attention layers need hf_model_type 'qwen2'")
            out.update(sliding_window=self.sliding_window)
        if model_type == "qwen2":
            types = [self.layer_type(i) for i in range(self.num_layers)]
            kinds = self.layer_types or types
            leading_full = next((i for i, t in enumerate(kinds) if t == "sliding_attention"), self.num_layers)
            out.update(use_sliding_window=self.sliding_window is not None, sliding_window=self.sliding_window,
                       max_window_layers=leading_full, layer_types=types)
        return out

    def layer_type(self, layer: int) -> str:
        """"sliding_attention" if `layer` applies the window, else "full_attention"."""
        if self.sliding_window is None:
            return "full_attention"
        return "sliding_attention" if self.layer_types is None else self.layer_types[layer]

    def layer_windows(self, key_length: int) -> jax.Array | None:
        """Per-layer windows [num_layers] int32 (FULL_WINDOW on full-attention layers) when one can hide a
        key among `key_length` slots, else None (positions within a row differ by less than key_length,
        so a window of at least key_length changes nothing and no mask need be built)."""
        if self.sliding_window is None or self.sliding_window >= key_length:
            return None
        types = [self.layer_type(i) for i in range(self.num_layers)]
        if "sliding_attention" not in types:
            return None
        return jnp.asarray([self.sliding_window if t == "sliding_attention" else FULL_WINDOW for t in types],
                           jnp.int32)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DecoderConfig":
        """Named shapes; PaLM shapes follow Chowdhery et al. 2022 (vocab 256k, head_dim 256; the 540B
        head count of 48 is as published, remaining details such as rope theta are our assumption)."""
        palm = dict(parallel_block=True, num_kv_heads=1, tie_word_embeddings=True, vocab_size=256000,
                    head_dim=256, activation="silu", hf_model_type="llama")
        presets = {
            "tiny": dict(vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                         d_ff=172, max_position_embeddings=1024),
            "decoder_1b": dict(vocab_size=32000, d_model=2048, num_layers=22, num_heads=32, num_kv_heads=4,
                               head_dim=64, d_ff=5632, norm_epsilon=1e-5),
            "llama3_8b": dict(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                              head_dim=128, d_ff=14336, norm_epsilon=1e-5, rope_theta=500000.0,
                              max_position_embeddings=8192, bos_id=128000, eos_id=128001),
            "llama3_70b": dict(vocab_size=128256, d_model=8192, num_layers=80, num_heads=64, num_kv_heads=8,
                               head_dim=128, d_ff=28672, norm_epsilon=1e-5, rope_theta=500000.0,
                               max_position_embeddings=8192, bos_id=128000, eos_id=128001),
            "palm_8b": dict(palm, d_model=4096, num_layers=32, num_heads=16, d_ff=16384),
            "palm_62b": dict(palm, d_model=8192, num_layers=64, num_heads=32, d_ff=32768),
            "palm_540b": dict(palm, d_model=18432, num_layers=118, num_heads=48, d_ff=73728),
        }
        if name not in presets:
            raise ValueError(f"unknown decoder preset {name!r}; known: {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


def _hf_window(hf: Mapping[str, Any], model_type: str) -> tuple[int | None, tuple[str, ...] | None]:
    """(sliding_window, layer_types) of an HF config.json as transformers applies them."""
    if model_type == "mistral":
        return hf.get("sliding_window"), None  # transformers' Mistral slides on every layer
    if model_type != "qwen2":
        return None, None
    on = bool(hf.get("use_sliding_window")) and hf.get("sliding_window") is not None
    # Qwen2's layer_types rule when the window is on; when off, transformers writes them all full, and
    # max_window_layers alone says which layers would slide (kept so that export writes it back)
    types = hf.get("layer_types") if on else None
    if types is None:
        first = hf.get("max_window_layers", 28)  # transformers' Qwen2Config default
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(hf["num_hidden_layers"])]
    return (hf["sliding_window"] if on else None), tuple(types)


def rope_frequencies(config: DecoderConfig) -> jax.Array:
    """Inverse frequencies [head_dim // 2], with Llama-3 frequency-dependent scaling when configured."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    scaling = dict(config.rope_scaling or {})
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = jnp.where(medium, smoothed, scaled)
    return inv


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary embedding in HF's rotate-half layout; x [B, T, N, H], positions [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache written at `cache_index`."""

    config: DecoderConfig
    causal_with_mask: bool = False  # is_causal also when a mask is given (segment_causal packing)

    @nn.compact
    def __call__(self, x, positions, mask, cache=None, cache_index=None, key_positions=None, window=None):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        dense = lambda feats, axes, name, in_axes=1: DenseGeneral(  # noqa: E731
            feats, kernel_axes=axes, in_axes=in_axes, dtype=dtype, param_dtype=pdtype, fp8=cfg.fp8, name=name)
        if cfg.fused_projections:
            kernel = lambda heads, axis, name: Kernel((x.shape[-1], heads, cfg.head_dim),  # noqa: E731
                                                      ("embed", axis, "kv"), param_dtype=pdtype, name=name)()
            qkv = jnp.concatenate([kernel(cfg.num_heads, "heads", "query"), kernel(cfg.num_kv_heads, "kv_heads", "key"),
                                   kernel(cfg.num_kv_heads, "kv_heads", "value")], axis=1)
            qkv = dense_dot(x, qkv, 1, dtype, cfg.fp8)
            q, k, v = jnp.split(qkv, (cfg.num_heads, cfg.num_heads + cfg.num_kv_heads), axis=2)
        else:
            q = dense((cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"), "query")(x)
            k = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "kv"), "key")(x)
            v = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "kv"), "value")(x)
        if cfg.qkv_bias:
            bias = lambda n, heads, axis: self.param(  # noqa: E731
                n, nn.with_logical_partitioning(nn.initializers.zeros, (axis, "kv")), (heads, cfg.head_dim), pdtype)
            q = q + bias("query_bias", cfg.num_heads, "heads").astype(dtype)
            k = k + bias("key_bias", cfg.num_kv_heads, "kv_heads").astype(dtype)
            v = v + bias("value_bias", cfg.num_kv_heads, "kv_heads").astype(dtype)
        inv_freq = rope_frequencies(cfg)
        q = constrain(apply_rope(q, positions, inv_freq), ("batch", "length", "heads", "kv"))
        k = constrain(apply_rope(k, positions, inv_freq), ("batch", "length", "kv_heads", "kv"))
        v = constrain(v, ("batch", "length", "kv_heads", "kv"))
        new_cache = None
        if cache is not None:
            k_cache, v_cache = cache
            k = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), cache_index, axis=1)
            new_cache = (k, v)
        if mask is None and cache is not None:
            raise ValueError("Attention: a KV cache needs an explicit mask covering the whole cache")
        causal = mask is None or self.causal_with_mask
        if window is not None:  # this layer's sliding window: keys within `window` positions of the query
            near = (positions[:, :, None] - key_positions[:, None, :] < window)[:, None]
            mask = near if mask is None else mask & near
        out = attention(q, k.astype(dtype), v.astype(dtype), mask=mask, causal=causal,
                        scale=cfg.head_dim ** -0.5, implementation=cfg.attention_impl)
        out = constrain(out, ("batch", "length", "heads", "kv"))
        return dense(cfg.d_model, ("heads", "kv", "embed"), "out", in_axes=2)(out), new_cache


class Block(nn.Module):
    """One pre-norm block: sequential (Llama) or parallel (PaLM) attention and MLP."""

    config: DecoderConfig
    deterministic: bool = True
    causal_with_mask: bool = False

    @nn.compact
    def __call__(self, x, positions, mask, cache=None, cache_index=None, key_positions=None, window=None):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        norm = lambda name: RMSNorm(cfg.norm_epsilon, dtype=dtype,  # noqa: E731
                                    param_dtype=jnp.dtype(cfg.param_dtype), name=name)
        mlp = GatedMLP(cfg.d_ff, activation=cfg.activation, dropout_rate=cfg.dropout_rate, dtype=dtype,
                       param_dtype=jnp.dtype(cfg.param_dtype), fused=cfg.fused_projections, fp8=cfg.fp8, name="mlp")
        drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        h = norm("input_norm")(x)
        attn, new_cache = Attention(cfg, self.causal_with_mask, name="attn")(h, positions, mask, cache, cache_index,
                                                                             key_positions, window)
        if cfg.parallel_block:
            x = x + drop(attn, deterministic=self.deterministic) + drop(
                mlp(h, deterministic=self.deterministic), deterministic=self.deterministic)
        else:
            x = x + drop(attn, deterministic=self.deterministic)
            h = norm("post_attn_norm")(x)
            x = x + drop(mlp(h, deterministic=self.deterministic), deterministic=self.deterministic)
        return constrain(x, ("batch", "length", "embed")), new_cache


class DecoderLM(nn.Module):
    """Token ids -> float32 logits, optionally reading/writing a stacked per-layer KV cache.

    mask: boolean [B, 1, T, S], or None for plain causal self-attention over the T tokens (no mask is
    materialised, so the fused cuDNN kernel can run on GPU).
    cache: (k, v) each [num_layers, B, S, num_kv_heads, head_dim]; new keys are written at cache_index
    and `mask` [B, 1, T, S] must cover the whole cache. With logit_positions [B] only that position's
    logits are computed ([B, 1, V]). causal=True applies is_causal on top of `mask` (segment_causal).
    With a sliding window (config.sliding_window) longer inputs also hide keys more than the window behind
    the query, by position: key_positions [B, S] gives each cache slot's position (required with a cache
    that the window can cover; without a cache the keys are the tokens, at `positions`).
    Logits are float32 unless float32_logits=False (then in the compute dtype, for a loss that upcasts
    them chunk by chunk). Returns (logits, new cache or None).
    """

    config: DecoderConfig

    @nn.compact
    def __call__(self, tokens, positions, mask, cache=None, cache_index=None, deterministic: bool = True,
                 logit_positions=None, causal=None, float32_logits: bool = True, key_positions=None):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        embed = Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=pdtype, name="token_embed",
                      embedding_init=nn.initializers.normal(stddev=0.02))
        x = embed(tokens)
        if cfg.emb_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = constrain(x, ("batch", "length", "embed"))
        windows = cfg.layer_windows(tokens.shape[1] if cache is None else cache[0].shape[2])
        if windows is not None and cache is None:
            key_positions = positions
        if windows is not None and key_positions is None:
            raise ValueError(f"DecoderLM: sliding_window={cfg.sliding_window} with a KV cache of "
                             f"{cache[0].shape[2]} slots needs key_positions (each slot's position)")
        in_axes = (nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast, 0)
        x, new_cache = layer_stack(cfg, Block, cfg.num_layers, deterministic, in_axes,
                                   (x, positions, mask, cache, cache_index, key_positions, windows),
                                   causal_with_mask=bool(causal))
        if logit_positions is not None:
            x = jnp.take_along_axis(x, logit_positions[:, None, None].astype(jnp.int32), axis=1)
        x = RMSNorm(cfg.norm_epsilon, dtype=dtype, param_dtype=pdtype, name="final_norm")(x)
        if cfg.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = DenseGeneral(cfg.vocab_size, kernel_axes=("embed", "vocab"), dtype=dtype, param_dtype=pdtype,
                                  name="lm_head")(x)
        logits = constrain(logits.astype(jnp.float32) if float32_logits else logits, ("batch", "length", "vocab"))
        return logits, new_cache
