"""HF Llama / Qwen2 / Mistral safetensors checkpoints <-> our DecoderConfig and param tree.

HF Linear weights are [out, in]; our kernels are [in, *out] with heads split out (query [D, N, H],
out [N, H, D]). Both use the rotate-half RoPE layout, so no row permutation is needed.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import numpy as np
from flax import traverse_util

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.safetensors_io import (
    check_tensors,
    load_tensors,
    read_hf_config,
    refuse_pickles,
    write_hf_checkpoint,
)

IGNORED = ("rotary_emb.inv_freq",)
Array = np.ndarray


def _layer_map(cfg: DecoderConfig, i: int) -> dict[tuple[str, ...], tuple[str, tuple[int, ...], Callable, Callable]]:
    """Our in-layer path -> (HF name, HF shape, hf->ours, ours->hf) for layer i."""
    d, n, kv, h, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_ff
    pre = f"model.layers.{i}."

    def proj(heads):
        return (lambda w: w.T.reshape(d, heads, h), lambda k: k.reshape(d, heads * h).T)

    out = {
        ("input_norm", "scale"): (pre + "input_layernorm.weight", (d,), _same, _same),
        ("attn", "query", "kernel"): (pre + "self_attn.q_proj.weight", (n * h, d), *proj(n)),
        ("attn", "key", "kernel"): (pre + "self_attn.k_proj.weight", (kv * h, d), *proj(kv)),
        ("attn", "value", "kernel"): (pre + "self_attn.v_proj.weight", (kv * h, d), *proj(kv)),
        ("attn", "out", "kernel"): (pre + "self_attn.o_proj.weight", (d, n * h),
                                    lambda w: w.T.reshape(n, h, d), lambda k: k.reshape(n * h, d).T),
        ("mlp", "wi_0", "kernel"): (pre + "mlp.gate_proj.weight", (f, d), _t, _t),
        ("mlp", "wi_1", "kernel"): (pre + "mlp.up_proj.weight", (f, d), _t, _t),
        ("mlp", "wo", "kernel"): (pre + "mlp.down_proj.weight", (d, f), _t, _t),
    }
    if not cfg.parallel_block:
        out[("post_attn_norm", "scale")] = (pre + "post_attention_layernorm.weight", (d,), _same, _same)
    if cfg.qkv_bias:
        for ours, hf, heads in (("query_bias", "q_proj", n), ("key_bias", "k_proj", kv), ("value_bias", "v_proj", kv)):
            out[("attn", ours)] = (pre + f"self_attn.{hf}.bias", (heads * h,),
                                   (lambda hh: lambda b: b.reshape(hh, h))(heads), lambda b: b.reshape(-1))
    return out


def _same(x: Array) -> Array:
    return x


def _t(x: Array) -> Array:
    return x.T


def _global_map(cfg: DecoderConfig):
    out = {
        ("token_embed", "embedding"): ("model.embed_tokens.weight", (cfg.vocab_size, cfg.d_model), _same, _same),
        ("final_norm", "scale"): ("model.norm.weight", (cfg.d_model,), _same, _same),
    }
    if not cfg.tie_word_embeddings:
        out[("lm_head", "kernel")] = ("lm_head.weight", (cfg.vocab_size, cfg.d_model), _t, _t)
    return out


def expected_hf_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name a checkpoint of this config must hold, with its shape."""
    shapes = {hf: shape for hf, shape, _, _ in _global_map(cfg).values()}
    for i in range(cfg.num_layers):
        shapes.update({hf: shape for hf, shape, _, _ in _layer_map(cfg, i).values()})
    return shapes


def import_llama(path: str, **overrides: Any) -> tuple[DecoderConfig, dict]:
    """Read an HF llama/qwen2/mistral checkpoint dir into (DecoderConfig, unboxed float32 numpy params).

    overrides set DecoderConfig fields (e.g. dtype, scan_layers). Every tensor is checked before use.
    """
    cfg = DecoderConfig.from_hf_config(read_hf_config(path), **overrides)
    refuse_pickles(path)
    tensors = load_tensors(path)
    ignore = IGNORED + (("lm_head.weight",) if cfg.tie_word_embeddings else ())
    check_tensors(tensors, expected_hf_shapes(cfg), source=path, ignore=ignore)
    flat: dict[tuple[str, ...], Array] = {}
    for ours, (hf, _, to_ours, _) in _global_map(cfg).items():
        flat[ours] = np.asarray(to_ours(tensors[hf]), np.float32)
    layers = [{ours: np.asarray(to_ours(tensors[hf]), np.float32)
               for ours, (hf, _, to_ours, _) in _layer_map(cfg, i).items()} for i in range(cfg.num_layers)]
    for i, layer in enumerate(layers):
        for ours, value in layer.items():
            if cfg.scan_layers:
                flat.setdefault(("layers",) + ours, [None] * cfg.num_layers)[i] = value
            else:
                flat[(f"layers_{i}",) + ours] = value
    if cfg.scan_layers:
        flat = {k: np.stack(v) if isinstance(v, list) else v for k, v in flat.items()}
    return cfg, traverse_util.unflatten_dict(flat)


def llama_tensors(cfg: DecoderConfig, params: Any) -> dict[str, Array]:
    """Our params (boxed or not, scanned or not) as HF-named float32 numpy tensors."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    out: dict[str, Array] = {}

    def take(path):
        if path not in flat:
            raise KeyError(f"params: missing {'/'.join(path)} for config {cfg.hf_model_type} "
                           f"(scan_layers={cfg.scan_layers})")
        return flat[path]

    for ours, (hf, _, _, to_hf) in _global_map(cfg).items():
        out[hf] = to_hf(take(ours))
    for i in range(cfg.num_layers):
        for ours, (hf, _, _, to_hf) in _layer_map(cfg, i).items():
            value = take(("layers",) + ours)[i] if cfg.scan_layers else take((f"layers_{i}",) + ours)
            out[hf] = np.ascontiguousarray(to_hf(value))
    check_tensors(out, expected_hf_shapes(cfg), source="params")
    return out


def export_llama(config: DecoderConfig, params: Any, out_dir: str) -> None:
    """Write config.json + safetensors loadable by transformers; the directory appears only when complete."""
    hf_config = config.to_hf_config()  # raises for PaLM-shaped configs before anything is written
    tensors = llama_tensors(config, params)
    write_hf_checkpoint(out_dir, tensors, hf_config)
