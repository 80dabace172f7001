"""HF T5 / Flan-T5 safetensors checkpoints <-> our T5Config and param tree.

HF Linear weights are [out, in]; our kernels are [in, *out] with heads split out (query [D, N, H],
out [N, H, D]). HF keeps the relative position bias table in block 0 of each stack; we keep it beside
the stack. Copies of the shared embedding that HF may write (encoder/decoder embed_tokens, and lm_head
when tied) are accepted only when they equal shared.weight.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from symbol_tuning.models.safetensors_io import (
    CheckpointMismatchError,
    check_tensors,
    load_tensors,
    read_hf_config,
    refuse_pickles,
    write_hf_checkpoint,
)
from symbol_tuning.models.t5 import T5Config

Array = np.ndarray
Entry = tuple[str, tuple[int, ...], Callable[[Array], Array], Callable[[Array], Array]]


def _same(x: Array) -> Array:
    return x


def _t(x: Array) -> Array:
    return np.ascontiguousarray(x.T)


def _attention_map(cfg: T5Config, prefix: str) -> dict[tuple[str, ...], Entry]:
    d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
    qkv = (lambda w: w.T.reshape(d, n, h), lambda k: _t(k.reshape(d, n * h)))
    out = (lambda w: w.T.reshape(n, h, d), lambda k: _t(k.reshape(n * h, d)))
    return {(name, "kernel"): (f"{prefix}.{hf}.weight", (n * h, d) if hf != "o" else (d, n * h), *fns)
            for name, hf, fns in (("query", "q", qkv), ("key", "k", qkv), ("value", "v", qkv), ("out", "o", out))}


def _mlp_map(cfg: T5Config, prefix: str) -> dict[tuple[str, ...], Entry]:
    d, f = cfg.d_model, cfg.d_ff
    return {("mlp", "wi_0", "kernel"): (f"{prefix}.DenseReluDense.wi_0.weight", (f, d), _t, _t),
            ("mlp", "wi_1", "kernel"): (f"{prefix}.DenseReluDense.wi_1.weight", (f, d), _t, _t),
            ("mlp", "wo", "kernel"): (f"{prefix}.DenseReluDense.wo.weight", (d, f), _t, _t)}


def _norm(name: str, hf: str, d: int) -> dict[tuple[str, ...], Entry]:
    return {(name, "scale"): (hf, (d,), _same, _same)}


def _layer_map(cfg: T5Config, stack: str, i: int) -> dict[tuple[str, ...], Entry]:
    """Our in-layer path -> (HF name, HF shape, hf->ours, ours->hf) for layer i of 'encoder' or 'decoder'."""
    pre, d = f"{stack}.block.{i}.layer", cfg.d_model
    out: dict[tuple[str, ...], Entry] = {}
    if stack == "encoder":
        out.update(_norm("pre_attention_norm", f"{pre}.0.layer_norm.weight", d))
        out.update({("attention",) + k: v for k, v in _attention_map(cfg, f"{pre}.0.SelfAttention").items()})
        out.update(_norm("pre_mlp_norm", f"{pre}.1.layer_norm.weight", d))
        out.update(_mlp_map(cfg, f"{pre}.1"))
    else:
        out.update(_norm("pre_self_attention_norm", f"{pre}.0.layer_norm.weight", d))
        out.update({("self_attention",) + k: v for k, v in _attention_map(cfg, f"{pre}.0.SelfAttention").items()})
        out.update(_norm("pre_cross_attention_norm", f"{pre}.1.layer_norm.weight", d))
        out.update({("cross_attention",) + k: v
                    for k, v in _attention_map(cfg, f"{pre}.1.EncDecAttention").items()})
        out.update(_norm("pre_mlp_norm", f"{pre}.2.layer_norm.weight", d))
        out.update(_mlp_map(cfg, f"{pre}.2"))
    return out


def _global_map(cfg: T5Config) -> dict[tuple[str, ...], Entry]:
    d, v, b, n = cfg.d_model, cfg.vocab_size, cfg.relative_attention_num_buckets, cfg.num_heads
    out: dict[tuple[str, ...], Entry] = {("token_embed", "embedding"): ("shared.weight", (v, d), _same, _same)}
    for stack in ("encoder", "decoder"):
        out[(stack, "relpos", "rel_embedding")] = (
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (b, n), _same, _same)
        out.update({(stack,) + k: e for k, e in _norm("final_norm", f"{stack}.final_layer_norm.weight", d).items()})
    if not cfg.tie_word_embeddings:
        out[("lm_head", "kernel")] = ("lm_head.weight", (v, d), _t, _t)
    return out


def _all_layers(cfg: T5Config):
    for stack, count in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        for i in range(count):
            yield stack, i, _layer_map(cfg, stack, i)


def expected_hf_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name a T5ForConditionalGeneration checkpoint of this config must hold, with its shape."""
    shapes = {hf: shape for hf, shape, _, _ in _global_map(cfg).values()}
    for _, _, table in _all_layers(cfg):
        shapes.update({hf: shape for hf, shape, _, _ in table.values()})
    return shapes


def _embedding_copies(cfg: T5Config) -> tuple[str, ...]:
    copies = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    return copies + (("lm_head.weight",) if cfg.tie_word_embeddings else ())


def import_t5(path: str, *, dtype: str = "float32", **overrides: Any) -> tuple[T5Config, dict]:
    """Read an HF T5 / Flan-T5 checkpoint directory into (T5Config, unboxed numpy params of `dtype`).

    overrides set T5Config fields (e.g. dtype="float32" for compute, scan_layers=False). Every tensor is
    checked by name and shape before any is used.
    """
    cfg = T5Config.from_hf_config(read_hf_config(path), **overrides)
    refuse_pickles(path)
    tensors = load_tensors(path)
    if not cfg.tie_word_embeddings and "lm_head.weight" not in tensors and "shared.weight" in tensors:
        tensors["lm_head.weight"] = tensors["shared.weight"]  # an untied head saved while still equal to the table
    copies = _embedding_copies(cfg)
    check_tensors(tensors, expected_hf_shapes(cfg), source=path, ignore=copies)
    for name in copies:
        if name in tensors and not np.array_equal(tensors[name], tensors["shared.weight"]):
            raise CheckpointMismatchError(f"{path}: tensor {name!r} differs from 'shared.weight' (shape "
                                          f"{tensors[name].shape} vs {tensors['shared.weight'].shape}); only "
                                          "tied copies of the shared embedding are accepted (a separate lm_head "
                                          "needs scale_decoder_outputs / tie_word_embeddings false)")
    np_dtype = jnp.dtype(dtype)  # numpy dtype; bfloat16 via ml_dtypes
    flat: dict[tuple[str, ...], Any] = {ours: to_ours(tensors[hf]) for ours, (hf, _, to_ours, _)
                                        in _global_map(cfg).items()}
    for stack, i, table in _all_layers(cfg):
        count = cfg.num_encoder_layers if stack == "encoder" else cfg.num_decoder_layers
        for ours, (hf, _, to_ours, _) in table.items():
            if cfg.scan_layers:
                flat.setdefault((stack, "layers") + ours, [None] * count)[i] = to_ours(tensors[hf])
            else:
                flat[(stack, f"layers_{i}") + ours] = to_ours(tensors[hf])
    flat = {k: np.asarray(np.stack(v) if isinstance(v, list) else v, np_dtype) for k, v in flat.items()}
    return cfg, traverse_util.unflatten_dict(flat)


def t5_tensors(cfg: T5Config, params: Any) -> dict[str, Array]:
    """Our params (boxed or not, scanned or not) as HF-named float32 numpy tensors."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    if flat and next(iter(flat))[0] == "params":
        flat = {k[1:]: v for k, v in flat.items()}
    flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}

    def take(path):
        if path not in flat:
            raise KeyError(f"params: missing {'/'.join(path)} for this T5Config (scan_layers={cfg.scan_layers}, "
                           f"tie_word_embeddings={cfg.tie_word_embeddings})")
        return flat[path]

    out = {hf: np.ascontiguousarray(to_hf(take(ours))) for ours, (hf, _, _, to_hf) in _global_map(cfg).items()}
    for stack, i, table in _all_layers(cfg):
        for ours, (hf, _, _, to_hf) in table.items():
            value = take((stack, "layers") + ours)[i] if cfg.scan_layers else take((stack, f"layers_{i}") + ours)
            out[hf] = np.ascontiguousarray(to_hf(value))
    check_tensors(out, expected_hf_shapes(cfg), source="params")
    return out


def export_t5(config: T5Config, params: Any, out_dir: str) -> None:
    """Write config.json + safetensors that transformers loads as T5ForConditionalGeneration.

    Everything is written to a temporary sibling directory that is renamed into place only when complete.
    """
    hf_config = config.to_hf_config()
    tensors = t5_tensors(config, params)
    write_hf_checkpoint(out_dir, tensors, hf_config)
