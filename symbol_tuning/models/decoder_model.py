"""The decoder-only BaseModel wrapper: prefix-LM logits, shared-prefix option scoring and KV-cache decoding.

Prompts are right-padded ([B, Lp] with per-row lengths). Scoring and decoding run the prompt once into a
KV cache of fixed size; later tokens are written after slot Lp and get positions that continue each row's
own prompt (prompt_length + offset), while the mask hides the padded prompt slots. RoPE depends only on
relative positions, so the gap in cache slots changes nothing.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from symbol_tuning.models.base import BaseModel, Batch, Params
from symbol_tuning.models.decoder import DecoderConfig, DecoderLM
from symbol_tuning.models.layers import make_attention_mask

FEATURES = ("decoder_input_tokens", "decoder_positions", "decoder_segment_ids", "decoder_causal_attention")


class DecoderOnlyModel(BaseModel):
    """Llama/PaLM-shaped decoder-only family (`family = "decoder_only"`)."""

    family = "decoder_only"

    def __init__(self, config: DecoderConfig):
        self.config = config
        self.module = DecoderLM(config)
        # jitted once per wrapper so eager callers (evaluator, tests) reuse compilations; inside an outer
        # jit (the trainer) these simply inline.
        self._logits_jit = jax.jit(self._compute_logits, static_argnums=(3,))
        self._score_jit = jax.jit(self._score_options)
        self._decode_jit = jax.jit(self._decode, static_argnames=("max_new_tokens", "eos_id", "temperature"))

    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple[int, ...]]) -> Mapping[str, Any]:
        """Boxed {"params": ...} (logical axis names kept for the partitioner)."""
        if "decoder_input_tokens" not in input_shapes:
            raise KeyError("input_shapes: 'decoder_input_tokens' is required for a decoder-only model")
        shape = tuple(input_shapes["decoder_input_tokens"])
        tokens = jnp.zeros(shape, jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(shape[1]), shape)
        mask = make_attention_mask(jnp.ones(shape), jnp.ones(shape), causal=True)
        init = jax.jit(lambda key: self.module.init({"params": key}, tokens, positions, mask)["params"])
        return {"params": init(rng)}

    def compute_logits(self, params: Params, batch: Batch, *, dropout_rng: jax.Array | None = None,
                       float32_logits: bool = True) -> jax.Array:
        """Float32 logits [B, L, V] for a (possibly packed) prefix-LM batch (in the compute dtype with
        float32_logits=False); dropout only with a rng."""
        if self.config.bidirectional_prefix and "decoder_causal_attention" not in batch:
            raise KeyError("batch: 'decoder_causal_attention' is required when bidirectional_prefix=True")
        features = {k: batch[k] for k in FEATURES if k in batch}
        return self._logits_jit(nn.meta.unbox(params), features, dropout_rng, float32_logits)

    def _compute_logits(self, params: Params, batch: Batch, dropout_rng: jax.Array | None,
                        float32_logits: bool = True) -> jax.Array:
        tokens = jnp.asarray(batch["decoder_input_tokens"])
        positions = batch.get("decoder_positions")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        segments = batch.get("decoder_segment_ids")
        prefix = None
        if self.config.bidirectional_prefix:
            prefix = jnp.asarray(batch["decoder_causal_attention"])
        mask = None  # plain causal: no [B, 1, T, T] mask is built, so the fused kernel can run
        # segment_causal: a packed row's mask holds only the segments and is_causal adds causality, so a
        # fused kernel skips the blocks above the diagonal (the same function as one combined mask)
        causal = self.config.segment_causal and segments is not None and prefix is None
        if segments is not None or prefix is not None:
            ones = jnp.ones(tokens.shape, bool)
            mask = make_attention_mask(ones, ones, causal=not causal, query_segment_ids=segments,
                                       key_segment_ids=segments, causal_prefix=prefix)
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        logits, _ = self.module.apply({"params": params}, tokens, jnp.asarray(positions), mask,
                                      deterministic=dropout_rng is None, rngs=rngs, causal=causal,
                                      float32_logits=float32_logits)
        return logits

    def _empty_cache(self, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
        return jnp.zeros(shape, jnp.dtype(cfg.dtype)), jnp.zeros(shape, jnp.dtype(cfg.dtype))

    def _prefill(self, params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array, cache_len: int):
        """Run the right-padded prompts once; return (last-token logits [B, V], filled cache)."""
        b, lp = prompt_tokens.shape
        positions = jnp.broadcast_to(jnp.arange(lp), (b, lp))
        causal = jnp.arange(lp)[:, None] >= jnp.arange(cache_len)[None, :]
        mask = jnp.broadcast_to(causal[None, None], (b, 1, lp, cache_len))
        logits, cache = self.module.apply({"params": params}, prompt_tokens, positions, mask,
                                          cache=self._empty_cache(b, cache_len), cache_index=0,
                                          logit_positions=prompt_lengths - 1,
                                          key_positions=jnp.broadcast_to(jnp.arange(cache_len), (b, cache_len)))
        return logits[:, 0], cache

    def score_options(self, params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                      option_tokens: jax.Array, option_lengths: jax.Array) -> jax.Array:
        """Sum of log p(option | prompt) [B, K]; prompt_lengths must be >= 1 (e.g. a BOS token).

        The prompt fills the cache once; all K options of a row then run together as one row of K * Lo
        tokens, each option attending to the valid prompt slots and causally to its own tokens only, so the
        prompt cache is shared by the K options without being copied.
        """
        return self._score_jit(nn.meta.unbox(params), prompt_tokens, prompt_lengths, option_tokens, option_lengths)

    def _score_options(self, params, prompt_tokens, prompt_lengths, option_tokens, option_lengths):
        prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
        option_tokens = jnp.asarray(option_tokens, jnp.int32)
        option_lengths = jnp.asarray(option_lengths, jnp.int32)
        b, lp = prompt_tokens.shape
        _, k, lo = option_tokens.shape
        total = lp + k * lo
        last_logits, cache = self._prefill(params, prompt_tokens, prompt_lengths, total)

        offset = jnp.tile(jnp.arange(lo), k)  # [K*Lo] position within its option
        option_id = jnp.repeat(jnp.arange(k), lo)
        positions = prompt_lengths[:, None] + offset[None, :]
        prompt_keys = jnp.arange(lp)[None, :] < prompt_lengths[:, None]  # [B, Lp]
        own = (option_id[:, None] == option_id[None, :]) & (offset[:, None] >= offset[None, :])
        mask = jnp.concatenate([jnp.broadcast_to(prompt_keys[:, None, :], (b, k * lo, lp)),
                                jnp.broadcast_to(own[None], (b, k * lo, k * lo))], axis=-1)[:, None]
        key_positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(lp), (b, lp)), positions], axis=1)
        logits, _ = self.module.apply({"params": params}, option_tokens.reshape(b, k * lo), positions, mask,
                                      cache=cache, cache_index=lp, key_positions=key_positions)
        logp = jax.nn.log_softmax(logits.reshape(b, k, lo, -1), axis=-1)
        first = jnp.take_along_axis(jax.nn.log_softmax(last_logits, axis=-1), option_tokens[:, :, 0], axis=-1)
        later = jnp.take_along_axis(logp[:, :, :-1], option_tokens[:, :, 1:, None], axis=-1)[..., 0]
        later_ok = jnp.arange(1, lo)[None, None, :] < option_lengths[:, :, None]
        first = jnp.where(option_lengths > 0, first, 0.0)
        return first + jnp.sum(jnp.where(later_ok, later, 0.0), axis=-1)

    def decode(self, params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array, *,
               max_new_tokens: int, eos_id: int, temperature: float = 0.0,
               rng: jax.Array | None = None) -> jax.Array:
        """Greedy (temperature 0) or sampled continuation [B, max_new_tokens]; 0 after each row's EOS."""
        if temperature > 0 and rng is None:
            raise ValueError("decode: temperature > 0 needs an rng")
        if max_new_tokens < 1:
            raise ValueError(f"decode: max_new_tokens must be >= 1, got {max_new_tokens}")
        return self._decode_jit(nn.meta.unbox(params), prompt_tokens, prompt_lengths, rng,
                                max_new_tokens=int(max_new_tokens), eos_id=int(eos_id), temperature=float(temperature))

    def _decode(self, params, prompt_tokens, prompt_lengths, rng, *, max_new_tokens, eos_id, temperature):
        prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
        b, lp = prompt_tokens.shape
        total = lp + max_new_tokens
        rng = jax.random.PRNGKey(0) if rng is None else rng

        def pick(logits, step):
            if temperature > 0:
                return jax.random.categorical(jax.random.fold_in(rng, step), logits / temperature).astype(jnp.int32)
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)

        last_logits, cache = self._prefill(params, prompt_tokens, prompt_lengths, total)
        first = pick(last_logits, 0)
        out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)
        slots = jnp.arange(total)
        prompt_keys = slots[None, :] < prompt_lengths[:, None]
        # slot lp + j holds generated token j, at position prompt_length + j
        key_positions = jnp.where(slots[None, :] < lp, slots[None, :], prompt_lengths[:, None] + slots[None, :] - lp)

        def step(i, state):
            out, cache, token, done = state
            mask = (prompt_keys | ((slots >= lp) & (slots <= lp + i))[None, :])[:, None, None, :]
            logits, cache = self.module.apply({"params": params}, token[:, None], (prompt_lengths + i)[:, None],
                                              mask, cache=cache, cache_index=lp + i, key_positions=key_positions)
            nxt = pick(logits[:, 0], i + 1)
            nxt = jnp.where(done, 0, nxt)
            out = out.at[:, i + 1].set(nxt)
            return out, cache, nxt, done | (nxt == eos_id)

        state = (out, cache, first, first == eos_id)
        out, *_ = jax.lax.fori_loop(0, max_new_tokens - 1, step, state)
        return out


def model_from_config(config: DecoderConfig) -> DecoderOnlyModel:
    """The wrapper for a DecoderConfig."""
    return DecoderOnlyModel(config)
