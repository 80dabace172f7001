"""What the trainer, evaluator and planner may ask of a model, whatever its family.

Batches use T5X feature names (numpy or jax arrays, int32 tokens, right padding with 0):

encoder-decoder: encoder_input_tokens [B, Li], decoder_input_tokens [B, Lt],
  decoder_target_tokens [B, Lt], decoder_loss_weights [B, Lt]; packed batches add
  encoder_segment_ids, encoder_positions, decoder_segment_ids, decoder_positions.
decoder-only (prefix LM): decoder_input_tokens [B, L], decoder_target_tokens [B, L],
  decoder_loss_weights [B, L] (1 on target tokens only), decoder_causal_attention [B, L]
  (1 on the input prefix); packed batches add decoder_segment_ids, decoder_positions.

Parameters are created boxed with logical axis names (`flax.linen.with_logical_partitioning`);
`get_initial_variables` returns them boxed so the partitioner can read the names, and every
other method takes unboxed params (`flax.linen.meta.unbox`).

Logical axis names used by layers (the partitioner's rules map them to mesh axes):
  params: vocab, embed, mlp, heads, kv_heads, kv, relpos_buckets, layers (scan axis)
  activations: batch, length, embed, mlp, heads, kv_heads, kv, vocab
"""
from __future__ import annotations

import abc
from typing import Any, Mapping

import jax

Params = Any  # a PyTree of arrays
Batch = Mapping[str, Any]


class BaseModel(abc.ABC):
    """A model family wrapper (T5X BaseTransformerModel in spirit)."""

    family: str  # "encoder_decoder" or "decoder_only"
    config: Any  # the family's config dataclass

    @abc.abstractmethod
    def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple[int, ...]]) -> Mapping[str, Any]:
        """Boxed variables {"params": ...} for batches of the given feature shapes."""

    @abc.abstractmethod
    def compute_logits(self, params: Params, batch: Batch, *, dropout_rng: jax.Array | None = None,
                       float32_logits: bool = True) -> jax.Array:
        """Logits [B, Lt, vocab] for the target positions, in float32 (or the compute dtype with
        float32_logits=False, for a loss that upcasts one vocabulary chunk at a time); dropout only with a rng."""

    @abc.abstractmethod
    def score_options(self, params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                      option_tokens: jax.Array, option_lengths: jax.Array) -> jax.Array:
        """Sum of log-probabilities [B, K] of each option given its prompt.

        prompt_tokens [B, Lp] with prompt_lengths [B]; option_tokens [B, K, Lo] with option_lengths [B, K]
        (options include their EOS if it should be scored). The encoder, or the decoder's prompt prefix,
        runs once per example and is shared by its K options.
        """

    @abc.abstractmethod
    def decode(self, params: Params, prompt_tokens: jax.Array, prompt_lengths: jax.Array, *,
               max_new_tokens: int, eos_id: int, temperature: float = 0.0,
               rng: jax.Array | None = None) -> jax.Array:
        """Generated tokens [B, max_new_tokens] with a KV cache: greedy at temperature 0, else sampled;
        positions after EOS hold 0."""
