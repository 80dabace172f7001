"""Training FLOPs and the chips' peak FLOP/s: the one place the trainer, the metrics and the benchmarks
take them from.

FLOPs are matmul FLOPs of one training step (forward + backward = 3 x forward), PaLM appendix B:
6 x parameters x the tokens each parameter acts on, plus attention scores and values (12 x layers x
heads x head_dim x queries x keys, counted as full attention). Embedding lookups are not matmuls; the
LM head (V x d per target token) is. For T5 the decoder's cross-attention key / value projections act
on the encoder's Li outputs, not on the Lt targets. MFU is reported two ways: with causal attention
counted as full (the peer's and PaLM's convention) and with it halved (MaxText / Megatron today:
a causal kernel skips the masked half).
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import flax.linen as nn
import jax

# Dense (non-sparse) bf16 tensor peak per chip, by exact device kind; checked in order, first match wins.
# NVIDIA datasheets give the sparse figure; dense is half of it.
PEAK_BF16_FLOPS: tuple[tuple[str, str, float], ...] = (
    ("H100 NVL", r"\bH100\b.*\bNVL\b", 835.5e12),
    ("H100 PCIe", r"\bH100\b.*\bPCIE\b", 756.0e12),
    ("H100 SXM", r"\bH100\b", 989.4e12),  # "NVIDIA H100 80GB HBM3" is the SXM card
    ("H200 NVL", r"\bH200\b.*\bNVL\b", 835.5e12),
    ("H200 SXM", r"\bH200\b", 989.4e12),
    ("A100", r"\bA100\b", 312.0e12),  # SXM and PCIe have the same tensor peak
    ("TPU v4", r"^TPU V4\b", 275.0e12),
    ("TPU v5e", r"^TPU V5 ?(LITE|E)\b", 197.0e12),
    ("TPU v5p", r"^TPU V5(P)?$|^TPU V5P\b", 459.0e12),
    ("TPU v6e", r"^TPU V6 ?(LITE|E)\b|^TPU V6E?$", 918.0e12),
)


def peak_by_name(name: str) -> float:
    """The peak of a PEAK_BF16_FLOPS row by its name ("H100 SXM", "TPU v5e", ...); KeyError otherwise."""
    for row, _, peak in PEAK_BF16_FLOPS:
        if row == name:
            return peak
    raise KeyError(f"no peak FLOP/s row named {name!r}; known: {[r for r, _, _ in PEAK_BF16_FLOPS]}")


def chip_name(device_kind: str) -> str | None:
    """The PEAK_BF16_FLOPS row name of a `jax.Device.device_kind`, or None when unknown (CPU)."""
    kind = device_kind.upper().strip()
    for name, pattern, _ in PEAK_BF16_FLOPS:
        if re.search(pattern, kind):
            return name
    return None


def peak_flops_per_device(device_kind: str | None = None) -> float | None:
    """The chip's dense bf16 peak FLOP/s (default: this host's first device), None where unknown, so
    MFU is not reported there."""
    kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
    name = chip_name(kind)
    return None if name is None else peak_by_name(name)


def _keys(path: Any) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def count_params(params: Any, *, under: str | None = None) -> dict[str, int]:
    """Parameter counts of a (boxed or unboxed, concrete or abstract) tree: "total", "embedding" (the
    token table and an untied LM head, which the formulas count as V d per target token instead),
    "non_embedding", and "cross_kv" (T5 cross-attention key / value kernels). `under` keeps only the
    subtree of that top-level key ("encoder" / "decoder")."""
    counts = dict(total=0, embedding=0, non_embedding=0, cross_kv=0)
    for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(params)):
        keys = _keys(path)
        keys = keys[1:] if keys[:1] == ["params"] else keys
        if under is not None and (not keys or keys[0] != under):
            continue
        n = math.prod(leaf.shape)
        counts["total"] += n
        if any(k in ("token_embed", "lm_head") for k in keys):
            counts["embedding"] += n
        else:
            counts["non_embedding"] += n
        if "cross_attention" in keys and any(k in ("key", "value") for k in keys):
            counts["cross_kv"] += n
    return counts


def decoder_flops_per_step(*, non_embedding_params: int, vocab_size: int, d_model: int, num_layers: int,
                           batch: int, seq: int, causal_halved: bool = False) -> float:
    """(6 N + 6 V d) B T + 12 L d T B T (attention over all T keys; halved with `causal_halved`)."""
    attention = 12.0 * num_layers * d_model * seq * batch * seq * (0.5 if causal_halved else 1.0)
    return (6.0 * non_embedding_params + 6.0 * vocab_size * d_model) * batch * seq + attention


def t5_flops_per_step(*, encoder_params: int, decoder_params: int, cross_kv_params: int, vocab_size: int,
                      d_model: int, num_encoder_layers: int, num_decoder_layers: int, num_heads: int, d_kv: int,
                      batch: int, inputs: int, targets: int, causal_halved: bool = False) -> float:
    """6 B (N_enc Li + (N_dec - N_crosskv) Lt + N_crosskv Li + V d Lt)
    + 12 H d_kv B (L_enc Li^2 + L_dec (Lt^2 + Lt Li)); non-embedding parameter counts; with
    `causal_halved` the decoder self-attention's Lt^2 term is halved (encoder and cross-attention are full)."""
    weights = 6.0 * batch * (encoder_params * inputs + (decoder_params - cross_kv_params) * targets
                             + cross_kv_params * inputs + vocab_size * d_model * targets)
    self_dec = targets * targets * (0.5 if causal_halved else 1.0)
    attention = 12.0 * num_heads * d_kv * batch * (num_encoder_layers * inputs * inputs
                                                   + num_decoder_layers * (self_dec + targets * inputs))
    return weights + attention


def train_flops_per_step(config: Any, params: Any, input_shapes: Mapping[str, tuple[int, ...]], *,
                         causal_halved: bool = False) -> float:
    """Training FLOPs of one step for a model config (T5Config-like: num_encoder_layers; decoder-only:
    num_layers), its parameter tree and the batch's token feature shapes ([B, L] per feature)."""
    dec_shape = tuple(input_shapes["decoder_input_tokens"])
    if hasattr(config, "num_encoder_layers"):
        enc = count_params(params, under="encoder")
        dec = count_params(params, under="decoder")
        return t5_flops_per_step(
            encoder_params=enc["non_embedding"], decoder_params=dec["non_embedding"], cross_kv_params=dec["cross_kv"],
            vocab_size=config.vocab_size, d_model=config.d_model, num_encoder_layers=config.num_encoder_layers,
            num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads, d_kv=config.d_kv,
            batch=dec_shape[0], inputs=tuple(input_shapes["encoder_input_tokens"])[1], targets=dec_shape[1],
            causal_halved=causal_halved)
    counts = count_params(params)
    return decoder_flops_per_step(non_embedding_params=counts["non_embedding"], vocab_size=config.vocab_size,
                                  d_model=config.d_model, num_layers=config.num_layers, batch=dec_shape[0],
                                  seq=dec_shape[1], causal_halved=causal_halved)


def train_flops_per_token(config: Any, params: Any, input_shapes: Mapping[str, tuple[int, ...]], *,
                          causal_halved: bool = False) -> float:
    """train_flops_per_step over the step's input tokens (encoder + decoder inputs), the unit the
    trainer's tokens/s counts in."""
    tokens = sum(math.prod(s) for n, s in input_shapes.items()
                 if n in ("encoder_input_tokens", "decoder_input_tokens"))
    return train_flops_per_step(config, params, input_shapes, causal_halved=causal_halved) / tokens


def mfu(flops_per_step: float, step_seconds: float, *, num_devices: int = 1,
        device_kind: str | None = None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the devices' summed peak; None where no peak is known."""
    peak = peak_flops_per_device(device_kind)
    if peak is None or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / (peak * num_devices)


def estimate_flops_per_token(config: Any, params: Any, input_shapes: Mapping[str, tuple[int, ...]]) -> float:
    """train_flops_per_token where the config has the shape fields it needs; 6 x parameters otherwise
    (a model the formulas do not know)."""
    needed = ("vocab_size", "d_model") + (("num_encoder_layers",) if hasattr(config, "num_encoder_layers")
                                          else ("num_layers",))
    if config is None or not all(getattr(config, k, None) for k in needed) or \
            "decoder_input_tokens" not in input_shapes:
        return 6.0 * count_params(params)["total"]
    return train_flops_per_token(config, params, input_shapes)
