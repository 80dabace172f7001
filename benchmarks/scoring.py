"""Rank-classification scoring: shared-prefix `score_options` vs per-option scoring, both model families.

Per-option scoring is what a naive evaluator does: every (prompt, option) pair is its own row, so the
prompt is run K times. Shared-prefix scoring (`BaseModel.score_options`) runs each prompt once (the T5
encoder, or the decoder's prompt into a KV cache) and scores its K options against it.

    python benchmarks/scoring.py [--family encoder_decoder|decoder_only|both] [--preset NAME]
        [--batch 8] [--prompt_len 512] [--option_len 4] [--options 2 4 10] [--repeats 3] [--dtype float32]
        [--tiny]

Random parameters (timings do not depend on values). Each number is the median of --repeats wall-clock
runs after a compiling call. Both scorers' outputs are compared (max |diff|) so a fast wrong scorer shows.
On a GPU: --preset flan_t5_base / decoder_1b --dtype bfloat16.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_PRESETS = {"encoder_decoder": "t5_1_1_small", "decoder_only": "tiny"}


def _median_time(fn: Callable[[], jax.Array], repeats: int) -> float:
    """Median wall-clock seconds of fn() after one warm-up (compiling) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(rng: np.random.Generator, vocab: int, batch: int, prompt_len: int, k: int, option_len: int):
    """Full-length prompts and options (ids >= 3: no pad, EOS or BOS)."""
    prompt = rng.integers(3, vocab, (batch, prompt_len), dtype=np.int32)
    options = rng.integers(3, vocab, (batch, k, option_len), dtype=np.int32)
    return (prompt, np.full((batch,), prompt_len, np.int32), options, np.full((batch, k), option_len, np.int32))


def _option_logp(logits: jax.Array, targets: jax.Array, lengths: jax.Array) -> jax.Array:
    """Sum of the log-probabilities of `targets` [R, Lo] under `logits` [R, Lo, V], first `lengths` only."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    token = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    valid = jnp.arange(targets.shape[1])[None, :] < lengths[:, None]
    return jnp.sum(jnp.where(valid, token, 0.0), axis=-1)


def _encoder_decoder(preset: str, dtype: str, prompt_len: int, option_len: int, seed: int):
    """(model, params, per-option scorer) for a T5 preset."""
    from symbol_tuning.models.t5 import T5Config
    from symbol_tuning.models.t5_model import EncoderDecoderModel

    cfg = T5Config.preset(preset, dtype=dtype, dropout_rate=0.0)
    model = EncoderDecoderModel(cfg)
    params = jax.jit(lambda r: model.get_initial_variables(
        r, {"encoder_input_tokens": (1, prompt_len), "decoder_input_tokens": (1, option_len)})["params"])(
        jax.random.PRNGKey(seed))

    @jax.jit
    def per_option(params, prompt, lengths, opts, opt_lengths):
        b, k, lo = opts.shape
        enc = jnp.repeat(prompt, k, axis=0)  # every option re-encodes its prompt
        enc = jnp.where(jnp.arange(enc.shape[1])[None, :] < jnp.repeat(lengths, k)[:, None], enc, 0)
        flat = opts.reshape(b * k, lo)
        dec = jnp.concatenate([jnp.full((b * k, 1), cfg.decoder_start_token_id, jnp.int32), flat[:, :-1]], axis=1)
        logits = model.compute_logits(params, {"encoder_input_tokens": enc, "decoder_input_tokens": dec})
        return _option_logp(logits, flat, opt_lengths.reshape(b * k)).reshape(b, k)

    return model, nn.meta.unbox(params), per_option, cfg.vocab_size


def _decoder_only(preset: str, dtype: str, prompt_len: int, option_len: int, seed: int):
    """(model, params, per-option scorer) for a decoder preset: one prompt + option row per option."""
    from symbol_tuning.models.decoder import DecoderConfig
    from symbol_tuning.models.decoder_model import DecoderOnlyModel

    cfg = DecoderConfig.preset(preset, dtype=dtype, max_position_embeddings=max(prompt_len + option_len, 2048))
    model = DecoderOnlyModel(cfg)
    params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(seed),
                                                       {"decoder_input_tokens": (1, 8)})["params"])

    @jax.jit
    def per_option(params, prompt, lengths, opts, opt_lengths):
        b, k, lo = opts.shape
        lp = prompt.shape[1]
        rows = jnp.concatenate([jnp.repeat(prompt, k, axis=0), opts.reshape(b * k, lo)], axis=1)
        logits = model.compute_logits(params, {"decoder_input_tokens": rows})[:, lp - 1:-1]
        return _option_logp(logits, opts.reshape(b * k, lo), opt_lengths.reshape(b * k)).reshape(b, k)

    return model, params, per_option, cfg.vocab_size


BUILDERS = {"encoder_decoder": _encoder_decoder, "decoder_only": _decoder_only}


def bench_family(*, family: str, preset: str | None = None, batch: int = 8, prompt_len: int = 512,
                 option_len: int = 4, options: tuple[int, ...] = (2, 4, 10), repeats: int = 3,
                 dtype: str = "float32", seed: int = 0) -> list[dict]:
    """Seconds per batch of shared-prefix and per-option scoring, their ratio and max score difference,
    one row per option count."""
    if family not in BUILDERS:
        raise ValueError(f"--family {family!r}: expected one of {sorted(BUILDERS)}")
    preset = preset or DEFAULT_PRESETS[family]
    model, params, per_option, vocab = BUILDERS[family](preset, dtype, prompt_len, option_len, seed)
    shared = jax.jit(model.score_options)
    rng = np.random.default_rng(seed)
    rows = []
    for k in options:
        inputs = _inputs(rng, vocab, batch, prompt_len, k, option_len)
        diff = float(np.abs(np.asarray(shared(params, *inputs)) - np.asarray(per_option(params, *inputs))).max())
        t_shared = _median_time(lambda: shared(params, *inputs), repeats)
        t_per = _median_time(lambda: per_option(params, *inputs), repeats)
        rows.append({"family": family, "preset": preset, "options": k, "shared_s": t_shared, "per_option_s": t_per,
                     "speedup": t_per / t_shared, "max_score_diff": diff})
    return rows


def format_table(rows: list[dict]) -> str:
    """Fixed-width table of bench_family rows."""
    lines = [f"{'family':16s} {'preset':14s} {'K':>3s} {'shared s':>10s} {'per-option s':>13s} {'speedup':>8s} "
             f"{'max |diff|':>10s}"]
    for r in rows:
        lines.append(f"{r['family']:16s} {r['preset']:14s} {r['options']:3d} {r['shared_s']:10.4f} "
                     f"{r['per_option_s']:13.4f} {r['speedup']:7.2f}x {r['max_score_diff']:10.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(BUILDERS) + ["both"], default="both")
    p.add_argument("--preset", default=None, help="model preset (default per family: "
                   + ", ".join(f"{k}={v}" for k, v in DEFAULT_PRESETS.items()) + "); only with one --family")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=512)
    p.add_argument("--option_len", type=int, default=4)
    p.add_argument("--options", type=int, nargs="+", default=[2, 4, 10])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tiny", action="store_true", help="tiny models and short prompts (tests)")
    args = p.parse_args(argv)
    families = sorted(BUILDERS) if args.family == "both" else [args.family]
    if args.preset and len(families) > 1:
        raise SystemExit("--preset needs a single --family (presets are per family)")
    kwargs = dict(batch=args.batch, prompt_len=args.prompt_len, option_len=args.option_len,
                  options=tuple(args.options), repeats=args.repeats, dtype=args.dtype)
    if args.tiny:
        kwargs.update(batch=2, prompt_len=64, repeats=1)
    rows = []
    for family in families:
        preset = args.preset or ("tiny" if args.tiny else None)
        rows += bench_family(family=family, preset=preset, **kwargs)
    print(f"device: {jax.devices()[0].device_kind}; batch {kwargs['batch']}, prompt {kwargs['prompt_len']} tokens, "
          f"option {kwargs['option_len']} tokens, {kwargs['dtype']}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
