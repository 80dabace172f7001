"""T5.1.1 / Flan-T5 encoder-decoder in Flax: config, presets and modules.

Parameter tree (scan_layers=True): token_embed/embedding, encoder/{relpos/rel_embedding,
layers/{pre_attention_norm, attention/{query, key, value, out}, pre_mlp_norm, mlp/{wi_0, wi_1, wo}},
final_norm}, decoder/{relpos/rel_embedding, layers/{pre_self_attention_norm, self_attention,
pre_cross_attention_norm, cross_attention, pre_mlp_norm, mlp}, final_norm}, lm_head/kernel (untied only).
Layer parameters carry a leading "layers" axis; scan_layers=False names the blocks layers_0, layers_1, ...
The relative position bias table lives outside the layer stack and its bias is shared by every layer.
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

HF_GATED_ACTIVATIONS = {"gated-gelu": "gelu_new", "gated-gelu_new": "gelu_new", "gated-silu": "silu"}


@dataclass(frozen=True)
class T5Config:
    """Shape and numerics of a T5.1.1-style encoder-decoder (HF T5Config field names).

    Speed options (none changes the parameters): `scan_layers`; `fused_projections` (self-attention
    Q/K/V as one matmul, cross-attention K/V as one, the MLP's gate/up as one); `padding_as_lengths`
    (unpacked, right-padded batches give attention the inputs' lengths instead of [B, 1, T, S] masks:
    no mask is folded into the relative-position bias, the decoder's self-attention is is_causal and
    cross-attention can take cuDNN's kernel); `fp8` (FP8 matmuls, models/fp8.py; changes the numerics).
    """

    vocab_size: int
    d_model: int
    num_heads: int
    d_kv: int
    d_ff: int
    num_encoder_layers: int
    num_decoder_layers: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    tie_word_embeddings: bool = False
    dense_act: str = "gelu_new"
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str | None = None
    fused_projections: bool = False
    padding_as_lengths: bool = False
    fp8: bool = False
    decoder_start_token_id: int = 0
    pad_id: int = 0
    eos_id: int = 1

    def __post_init__(self):
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"T5Config: attention_impl {self.attention_impl!r} not in {ATTENTION_IMPLS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"T5Config: remat_policy {self.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
        if self.dense_act not in ("gelu_new", "gelu", "silu", "relu"):
            raise ValueError(f"T5Config: dense_act {self.dense_act!r} is not a known activation")
        for name in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers",
                     "num_decoder_layers", "relative_attention_num_buckets"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"T5Config: {name} must be >= 1, got {getattr(self, name)}")

    @property
    def emb_dim(self) -> int:
        """T5X name of d_model."""
        return self.d_model

    @property
    def head_dim(self) -> int:
        """T5X name of d_kv."""
        return self.d_kv

    @property
    def mlp_dim(self) -> int:
        """T5X name of d_ff."""
        return self.d_ff

    def replace(self, **changes: Any) -> "T5Config":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "T5Config":
        """Inverse of to_dict; unknown keys are an error naming them."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"T5Config: unknown fields {unknown}")
        return cls(**values)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides: Any) -> "T5Config":
        """From an HF T5 config.json dict (gated feed-forward only: T5.1.1, Flan-T5, mT5)."""
        model_type = hf.get("model_type")
        if model_type not in ("t5", "mt5"):
            raise ValueError(f"config.json: model_type {model_type!r} is not a T5 model ('t5' or 'mt5')")
        proj = hf.get("feed_forward_proj", "relu")
        if proj not in HF_GATED_ACTIVATIONS:
            raise ValueError(f"config.json: feed_forward_proj {proj!r} is not supported; only gated MLPs "
                             f"({sorted(HF_GATED_ACTIVATIONS)}) as in T5.1.1 / Flan-T5")
        missing = [k for k in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers") if k not in hf]
        if missing:
            raise ValueError(f"config.json: missing fields {missing}")
        values = dict(
            vocab_size=hf["vocab_size"], d_model=hf["d_model"], num_heads=hf["num_heads"], d_kv=hf["d_kv"],
            d_ff=hf["d_ff"], num_encoder_layers=hf["num_layers"],
            num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            dropout_rate=float(hf.get("dropout_rate", 0.1)),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
            tie_word_embeddings=_hf_rescales(hf), dense_act=HF_GATED_ACTIVATIONS[proj],
            decoder_start_token_id=hf.get("decoder_start_token_id") or 0, pad_id=hf.get("pad_token_id") or 0,
            eos_id=hf.get("eos_token_id") if hf.get("eos_token_id") is not None else 1)
        values.update(overrides)
        return cls(**values)

    def to_hf_config(self) -> dict[str, Any]:
        """A T5ForConditionalGeneration config.json dict that transformers loads."""
        act = {v: k for k, v in HF_GATED_ACTIVATIONS.items() if k != "gated-gelu_new"}
        if self.dense_act not in act:
            raise ValueError(f"T5Config: dense_act {self.dense_act!r} has no HF gated feed_forward_proj")
        return {
            "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
            "vocab_size": self.vocab_size, "d_model": self.d_model, "num_heads": self.num_heads, "d_kv": self.d_kv,
            "d_ff": self.d_ff, "num_layers": self.num_encoder_layers, "num_decoder_layers": self.num_decoder_layers,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "dropout_rate": self.dropout_rate, "layer_norm_epsilon": self.layer_norm_epsilon,
            "feed_forward_proj": act[self.dense_act], "is_gated_act": True, "dense_act_fn": self.dense_act,
            "tie_word_embeddings": self.tie_word_embeddings, "scale_decoder_outputs": self.tie_word_embeddings,
            "initializer_factor": 1.0, "use_cache": True,
            "pad_token_id": self.pad_id, "eos_token_id": self.eos_id,
            "decoder_start_token_id": self.decoder_start_token_id, "torch_dtype": "float32",
        }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "T5Config":
        """Named shapes: "tiny" (about 4M params, mostly embeddings) and the T5.1.1 / Flan-T5 sizes."""
        sizes = {
            "small": dict(d_model=512, num_heads=6, d_kv=64, d_ff=1024, num_encoder_layers=8, num_decoder_layers=8),
            "base": dict(d_model=768, num_heads=12, d_kv=64, d_ff=2048, num_encoder_layers=12,
                         num_decoder_layers=12),
            "large": dict(d_model=1024, num_heads=16, d_kv=64, d_ff=2816, num_encoder_layers=24,
                          num_decoder_layers=24),
            "xl": dict(d_model=2048, num_heads=32, d_kv=64, d_ff=5120, num_encoder_layers=24, num_decoder_layers=24),
            "xxl": dict(d_model=4096, num_heads=64, d_kv=64, d_ff=10240, num_encoder_layers=24,
                        num_decoder_layers=24),
        }
        presets = {"tiny": dict(vocab_size=32128, d_model=64, num_heads=4, d_kv=16, d_ff=128,
                                num_encoder_layers=2, num_decoder_layers=2)}
        for size, shape in sizes.items():
            for family in ("t5_1_1", "flan_t5"):
                presets[f"{family}_{size}"] = dict(shape, vocab_size=32128, dropout_rate=0.1)
        if name not in presets:
            raise ValueError(f"unknown T5 preset {name!r}; known: {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


def _hf_rescales(hf: Mapping[str, Any]) -> bool:
    """Whether an HF T5 config scales decoder outputs by d_model**-0.5 (original T5's tied head).

    transformers 5 always writes tie_word_embeddings=true for T5 and records the rescale separately as
    scale_decoder_outputs; older configs use tie_word_embeddings=false for T5.1.1 / Flan-T5.
    """
    if hf.get("scale_decoder_outputs") is not None:
        return bool(hf["scale_decoder_outputs"])
    return bool(hf.get("tie_word_embeddings", True))


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """T5's bucket of each (key - query) offset: exact for small offsets, log-spaced up to max_distance."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    safe = jnp.maximum(distance, 1).astype(jnp.float32)
    large = max_exact + (jnp.log(safe / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """Per-head bias [1, N, T, S] for query positions [T] and key positions [S] from a learned bucket table."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        cfg = self.config
        table = self.param("rel_embedding", nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), ("relpos_buckets", "heads")),
            (cfg.relative_attention_num_buckets, cfg.num_heads), jnp.dtype(cfg.param_dtype))
        rel = key_positions[None, :].astype(jnp.int32) - query_positions[:, None].astype(jnp.int32)
        buckets = relative_position_bucket(rel, bidirectional=self.bidirectional,
                                           num_buckets=cfg.relative_attention_num_buckets,
                                           max_distance=cfg.relative_attention_max_distance)
        bias = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [T, S, N]
        return jnp.transpose(bias, (2, 0, 1))[None]


class MultiHeadAttention(nn.Module):
    """Unscaled T5 attention (1/sqrt(d_kv) lives in the query init); keys/values may be given precomputed.

    `causal` applies is_causal (with or without a mask); `key_lengths` [B] marks right-padded keys.
    """

    config: T5Config
    causal: bool = False

    @nn.compact
    def __call__(self, x, memory, bias, mask, kv=None, cache=None, cache_index=None, key_lengths=None):
        """Returns (output, (k, v) after any cache write). `memory` is x for self-attention."""
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        dense = lambda axes, name, init, feats=(cfg.num_heads, cfg.d_kv), in_axes=1: DenseGeneral(  # noqa: E731
            feats, kernel_axes=axes, in_axes=in_axes, dtype=dtype, param_dtype=pdtype, kernel_init=init, fp8=cfg.fp8,
            name=name)
        fan_in = lambda scale: nn.initializers.variance_scaling(scale, "fan_in", "normal")  # noqa: E731
        kernel = lambda name, scale: Kernel((cfg.d_model, cfg.num_heads, cfg.d_kv), ("embed", "heads", "kv"),  # noqa: E731
                                            param_dtype=pdtype, kernel_init=fan_in(scale), name=name)()
        if cfg.fused_projections and kv is None and memory is x:
            qkv = dense_dot(x, jnp.stack([kernel("query", 1.0 / cfg.d_kv), kernel("key", 1.0),
                                          kernel("value", 1.0)], axis=1), 1, dtype, cfg.fp8)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q = dense(("embed", "heads", "kv"), "query", fan_in(1.0 / cfg.d_kv))(x)
            if kv is not None:
                k, v = kv
            elif cfg.fused_projections:
                kv_ = dense_dot(memory, jnp.stack([kernel("key", 1.0), kernel("value", 1.0)], axis=1), 1, dtype,
                                cfg.fp8)
                k, v = kv_[:, :, 0], kv_[:, :, 1]
            else:
                k = dense(("embed", "heads", "kv"), "key", fan_in(1.0))(memory)
                v = dense(("embed", "heads", "kv"), "value", fan_in(1.0))(memory)
        q = constrain(q, ("batch", "length", "heads", "kv"))
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, axis=1)
        k = constrain(k, ("batch", "length", "heads", "kv"))
        v = constrain(v, ("batch", "length", "heads", "kv"))
        out = attention(q, k.astype(dtype), v.astype(dtype), bias=None if bias is None else bias.astype(dtype),
                        mask=mask, causal=self.causal, scale=1.0, implementation=cfg.attention_impl,
                        key_lengths=key_lengths)
        out = constrain(out, ("batch", "length", "heads", "kv"))
        out = dense(("heads", "kv", "embed"), "out", fan_in(1.0), feats=cfg.d_model, in_axes=2)(out)
        return out, (k, v)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and gated MLP with dropout on both residual branches."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, bias, mask, lengths=None):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        drop = lambda h: _dropout(cfg, h, self.deterministic)  # noqa: E731
        h = RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype, name="pre_attention_norm")(x)
        h, _ = MultiHeadAttention(cfg, name="attention")(h, h, bias, mask, key_lengths=lengths)
        x = x + drop(h)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype, name="pre_mlp_norm")(x)
        h = GatedMLP(cfg.d_ff, activation=cfg.dense_act, dropout_rate=cfg.dropout_rate, dtype=dtype,
                     param_dtype=pdtype, fused=cfg.fused_projections, fp8=cfg.fp8, name="mlp")(
            h, deterministic=self.deterministic)
        x = constrain(x + drop(h), ("batch", "length", "embed"))
        return x, None


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention (optionally cached), cross-attention and gated MLP.

    Returns (x, (self-attention cache, cross-attention keys/values)) when decoding with a cache, so that
    the cross keys/values computed at the first step can be reused by later steps (None once given);
    (x, None) without a cache.
    """

    config: T5Config
    deterministic: bool = True
    self_causal: bool = False  # is_causal in self-attention (padding_as_lengths: no decoder mask)

    @nn.compact
    def __call__(self, x, bias, mask, encoded, cross_mask, cache=None, cache_index=None, cross_kv=None,
                 encoder_lengths=None):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        drop = lambda h: _dropout(cfg, h, self.deterministic)  # noqa: E731
        norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype, name=name)  # noqa: E731
        h = norm("pre_self_attention_norm")(x)
        h, new_cache = MultiHeadAttention(cfg, self.self_causal, name="self_attention")(h, h, bias, mask, cache=cache,
                                                                      cache_index=cache_index)
        x = x + drop(h)
        h = norm("pre_cross_attention_norm")(x)
        h, new_cross = MultiHeadAttention(cfg, name="cross_attention")(h, encoded, None, cross_mask, kv=cross_kv,
                                                                       key_lengths=encoder_lengths)
        x = x + drop(h)
        h = norm("pre_mlp_norm")(x)
        h = GatedMLP(cfg.d_ff, activation=cfg.dense_act, dropout_rate=cfg.dropout_rate, dtype=dtype,
                     param_dtype=pdtype, fused=cfg.fused_projections, fp8=cfg.fp8, name="mlp")(
            h, deterministic=self.deterministic)
        x = constrain(x + drop(h), ("batch", "length", "embed"))
        return x, ((new_cache, new_cross if cross_kv is None else None) if cache is not None else None)


def _dropout(cfg: T5Config, x: jax.Array, deterministic: bool) -> jax.Array:
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class Encoder(nn.Module):
    """Embedded tokens [B, Li, D] -> encoded [B, Li, D] (final-normed)."""

    config: T5Config

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True, lengths=None):
        cfg = self.config
        length = x.shape[1]
        positions = jnp.arange(length)
        bias = RelativePositionBias(cfg, bidirectional=True, name="relpos")(positions, positions)
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = constrain(x, ("batch", "length", "embed"))
        x, _ = layer_stack(cfg, EncoderLayer, cfg.num_encoder_layers, deterministic,
                           (nn.broadcast, nn.broadcast, nn.broadcast), (x, bias, mask, lengths))
        x = RMSNorm(cfg.layer_norm_epsilon, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                    name="final_norm")(x)
        return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Embedded decoder inputs [B, T, D] -> final-normed hidden states, with an optional KV cache.

    Query i sits at position query_offset + i; keys (the cache when given, else the inputs) at 0..S-1.
    """

    config: T5Config

    @nn.compact
    def __call__(self, y, encoded, mask, cross_mask, cache=None, cache_index=None, cross_kv=None,
                 deterministic: bool = True, encoder_lengths=None, causal: bool = False):
        cfg = self.config
        t = y.shape[1]
        s = t if cache is None else cache[0].shape[2]
        offset = 0 if cache_index is None else cache_index
        bias = RelativePositionBias(cfg, bidirectional=False, name="relpos")(offset + jnp.arange(t), jnp.arange(s))
        y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
        y = constrain(y, ("batch", "length", "embed"))
        args = (y, bias, mask, encoded, cross_mask, cache, cache_index, cross_kv, encoder_lengths)
        in_axes = (nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast, 0, nn.broadcast)
        y, state = layer_stack(cfg, DecoderLayer, cfg.num_decoder_layers, deterministic, in_axes, args,
                               self_causal=causal)
        y = RMSNorm(cfg.layer_norm_epsilon, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                    name="final_norm")(y)
        return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic), state


class T5Transformer(nn.Module):
    """Shared embedding, encoder, decoder and LM head; `encode` and `decode` are usable on their own.

    Masks are boolean [B, 1, T, S] (see layers.make_attention_mask); logits are float32.
    """

    config: T5Config

    def setup(self):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.token_embed = Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=pdtype)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = DenseGeneral(cfg.vocab_size, kernel_axes=("embed", "vocab"), dtype=dtype,
                                        param_dtype=pdtype)

    def encode(self, encoder_tokens, encoder_mask, deterministic: bool = True, encoder_lengths=None):
        """Encoded inputs [B, Li, D]; `encoder_lengths` [B] (with encoder_mask None) marks right padding."""
        return self.encoder(self.token_embed(encoder_tokens), encoder_mask, deterministic, encoder_lengths)

    def decode(self, decoder_tokens, encoded, mask, cross_mask, cache=None, cache_index=None, cross_kv=None,
               deterministic: bool = True, encoder_lengths=None, causal: bool = False,
               float32_logits: bool = True):
        """(logits [B, T, V], (new cache, cross keys/values) or None); float32 unless float32_logits=False.
        causal=True applies is_causal in self-attention (mask None for plain causal); `encoder_lengths`
        [B] marks the encoder's right padding for cross-attention (cross_mask None)."""
        cfg = self.config
        y, state = self.decoder(self.token_embed(decoder_tokens), encoded, mask, cross_mask, cache, cache_index,
                                cross_kv, deterministic, encoder_lengths, causal)
        if cfg.tie_word_embeddings:
            logits = self.token_embed.attend(y * jnp.asarray(cfg.d_model ** -0.5, y.dtype))
        else:
            logits = self.lm_head(y)
        logits = logits.astype(jnp.float32) if float32_logits else logits
        return constrain(logits, ("batch", "length", "vocab")), state

    def __call__(self, encoder_tokens, decoder_tokens, encoder_mask, decoder_mask, cross_mask,
                 deterministic: bool = True, encoder_lengths=None, float32_logits: bool = True):
        """With encoder_lengths (padding_as_lengths) the three masks are None and the decoder is is_causal."""
        encoded = self.encode(encoder_tokens, encoder_mask, deterministic, encoder_lengths)
        logits, _ = self.decode(decoder_tokens, encoded, decoder_mask, cross_mask, deterministic=deterministic,
                                encoder_lengths=encoder_lengths, causal=encoder_lengths is not None,
                                float32_logits=float32_logits)
        return logits
