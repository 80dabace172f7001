"""The encoder-decoder BaseModel wrapper: logits, shared-prefix option scoring and KV-cache decoding.

Scoring runs the encoder once per example; the K options of an example then go through the decoder as
one row of K * Lo tokens whose self-attention is block-diagonal (each option sees only its own earlier
tokens) and whose cross-attention reads that example's single encoder output, so the encoder output is
neither recomputed nor copied K times. T5's relative position bias depends only on (key - query), which
within one option block equals the offset inside the option, so the packed row scores exactly as K
separate rows would.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from symbol_tuning.models.base import BaseModel, Batch, Params
from symbol_tuning.models.layers import make_attention_mask
from symbol_tuning.models.t5 import T5Config, T5Transformer


class EncoderDecoderModel(BaseModel):
    """T5.1.1 / Flan-T5 family (`family = "encoder_decoder"`)."""

    family = "encoder_decoder"

    def __init__(self, config: T5Config):
        self.config = config
        self.module = T5Transformer(config)

    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple[int, ...]]) -> Mapping[str, Any]:
        """Boxed {"params": ...} (logical axis names kept for the partitioner)."""
        for name in ("encoder_input_tokens", "decoder_input_tokens"):
            if name not in input_shapes:
                raise KeyError(f"input_shapes: {name!r} is required for an encoder-decoder model")
        enc = jnp.ones(tuple(input_shapes["encoder_input_tokens"]), jnp.int32)
        dec = jnp.ones(tuple(input_shapes["decoder_input_tokens"]), jnp.int32)
        masks = self._masks({"encoder_input_tokens": enc, "decoder_input_tokens": dec})
        return {"params": self.module.init({"params": rng}, enc, dec, *masks)["params"]}

    def _masks(self, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encoder self, decoder causal self and cross-attention masks, honouring packing segment ids."""
        enc = jnp.asarray(batch["encoder_input_tokens"])
        dec = jnp.asarray(batch["decoder_input_tokens"])
        enc_seg, dec_seg = batch.get("encoder_segment_ids"), batch.get("decoder_segment_ids")
        if (enc_seg is None) != (dec_seg is None):
            raise KeyError("batch: encoder_segment_ids and decoder_segment_ids must be given together (packing)")
        if enc_seg is not None:
            enc_seg, dec_seg = jnp.asarray(enc_seg), jnp.asarray(dec_seg)
            enc_ok, dec_ok = enc_seg > 0, dec_seg > 0
        else:
            enc_ok, dec_ok = enc != self.config.pad_id, jnp.ones(dec.shape, bool)
        enc_mask = make_attention_mask(enc_ok, enc_ok, query_segment_ids=enc_seg, key_segment_ids=enc_seg)
        dec_mask = make_attention_mask(dec_ok, dec_ok, causal=True, query_segment_ids=dec_seg,
                                       key_segment_ids=dec_seg)
        cross_mask = make_attention_mask(dec_ok, enc_ok, query_segment_ids=dec_seg, key_segment_ids=enc_seg)
        return enc_mask, dec_mask, cross_mask

    def compute_logits(self, params: Params, batch: Batch, *, dropout_rng: jax.Array | None = None,
                       float32_logits: bool = True) -> jax.Array:
        """Float32 logits [B, Lt, V] for a (possibly packed) batch (compute dtype with float32_logits=False);
        positions are accepted and unused (relative attention needs only offsets, which packing preserves).

        With config.padding_as_lengths an unpacked batch's padding goes to attention as the inputs'
        lengths (the count of non-pad tokens): exact for right-padded rows, which the feature converters
        produce; a pad id inside a row would be attended to.
        """
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        enc = jnp.asarray(batch["encoder_input_tokens"])
        if self.config.padding_as_lengths and batch.get("encoder_segment_ids") is None:
            lengths = jnp.sum(enc != self.config.pad_id, axis=1).astype(jnp.int32)
            masks, extra = (None, None, None), dict(encoder_lengths=lengths)
        else:
            masks, extra = self._masks(batch), {}
        return self.module.apply({"params": nn.meta.unbox(params)}, enc, jnp.asarray(batch["decoder_input_tokens"]),
                                 *masks, deterministic=dropout_rng is None, rngs=rngs, float32_logits=float32_logits,
                                 **extra)

    def _encode(self, params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array):
        """(encoded [B, Lp, D], key validity [B, Lp]) for right-padded prompts."""
        ok = jnp.arange(prompt_tokens.shape[1])[None, :] < prompt_lengths[:, None]
        encoded = self.module.apply({"params": params}, prompt_tokens, make_attention_mask(ok, ok),
                                    method=T5Transformer.encode)
        return encoded, ok

    def score_options(self, params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                      option_tokens: jax.Array, option_lengths: jax.Array) -> jax.Array:
        """Sum of log p(option | prompt) [B, K] over each option's first option_lengths tokens."""
        params = nn.meta.unbox(params)
        prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
        option_tokens = jnp.asarray(option_tokens, jnp.int32)
        option_lengths = jnp.asarray(option_lengths, jnp.int32)
        if option_tokens.ndim != 3 or option_tokens.shape[0] != prompt_tokens.shape[0]:
            raise ValueError(f"score_options: option_tokens must be [B, K, Lo] with B={prompt_tokens.shape[0]}, "
                             f"got shape {option_tokens.shape}")
        b, k, lo = option_tokens.shape
        encoded, enc_ok = self._encode(params, prompt_tokens, prompt_lengths)
        start = jnp.full((b, k, 1), self.config.decoder_start_token_id, jnp.int32)
        inputs = jnp.concatenate([start, option_tokens[:, :, :-1]], axis=-1).reshape(b, k * lo)
        option_id = jnp.repeat(jnp.arange(k), lo)
        offset = jnp.tile(jnp.arange(lo), k)
        own = (option_id[:, None] == option_id[None, :]) & (offset[:, None] >= offset[None, :])
        self_mask = own[None, None]
        cross_mask = jnp.broadcast_to(enc_ok[:, None, None, :], (b, 1, k * lo, enc_ok.shape[1]))
        logits, _ = self.module.apply({"params": params}, inputs, encoded, self_mask, cross_mask,
                                      method=T5Transformer.decode)
        logp = jax.nn.log_softmax(logits.reshape(b, k, lo, -1), axis=-1)
        token_logp = jnp.take_along_axis(logp, option_tokens[..., None], axis=-1)[..., 0]
        valid = jnp.arange(lo)[None, None, :] < option_lengths[:, :, None]
        return jnp.sum(jnp.where(valid, token_logp, 0.0), axis=-1)

    def decode(self, params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array, *,
               max_new_tokens: int, eos_id: int, temperature: float = 0.0,
               rng: jax.Array | None = None) -> jax.Array:
        """Greedy (temperature 0) or sampled outputs [B, max_new_tokens], 0 after each row's EOS."""
        if max_new_tokens < 1:
            raise ValueError(f"decode: max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature > 0 and rng is None:
            raise ValueError("decode: temperature > 0 needs an rng")
        cfg = self.config
        params = nn.meta.unbox(params)
        prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
        b = prompt_tokens.shape[0]
        encoded, enc_ok = self._encode(params, prompt_tokens, prompt_lengths)
        cross_mask = enc_ok[:, None, None, :]
        shape = (cfg.num_decoder_layers, b, max_new_tokens, cfg.num_heads, cfg.d_kv)
        cache = (jnp.zeros(shape, jnp.dtype(cfg.dtype)), jnp.zeros(shape, jnp.dtype(cfg.dtype)))
        slots = jnp.arange(max_new_tokens)

        def pick(logits, step):
            if temperature > 0:
                key = jax.random.fold_in(rng, step)
                return jax.random.categorical(key, logits / temperature).astype(jnp.int32)
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)

        def run(token, step, cache, cross_kv):
            mask = (slots <= step)[None, None, None, :]
            logits, state = self.module.apply({"params": params}, token[:, None], encoded, mask, cross_mask,
                                              cache=cache, cache_index=step, cross_kv=cross_kv,
                                              method=T5Transformer.decode)
            return pick(logits[:, 0], step), state

        first, (cache, cross_kv) = run(jnp.full((b,), cfg.decoder_start_token_id, jnp.int32), 0, cache, None)
        out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)

        def step(i, state):
            out, cache, token, done = state
            nxt, (cache, _) = run(token, i, cache, cross_kv)
            nxt = jnp.where(done, 0, nxt)
            return out.at[:, i].set(nxt), cache, nxt, done | (nxt == eos_id)

        out, *_ = jax.lax.fori_loop(1, max_new_tokens, step, (out, cache, first, first == eos_id))
        return out


def model_from_config(config: T5Config) -> EncoderDecoderModel:
    """The wrapper for a T5Config."""
    return EncoderDecoderModel(config)
