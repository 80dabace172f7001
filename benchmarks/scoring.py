"""Shared-prefix option scoring vs per-option scoring, one function per model family.

Per-option scoring is what a naive rank-classification evaluator does: every (prompt, option) pair is its
own row, so the prompt is re-encoded K times. Shared-prefix scoring (`BaseModel.score_options`) encodes
each prompt once and runs its K options against it.

    python benchmarks/scoring.py --family encoder_decoder --preset t5_1_1_small --options 2 4 10
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _time(fn: Callable[[], jax.Array], repeats: int) -> float:
    """Median wall-clock seconds of fn() after one warm-up (compile) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_inputs(rng: np.random.Generator, vocab: int, batch: int, prompt_len: int, k: int, option_len: int):
    prompt = rng.integers(2, vocab, (batch, prompt_len)).astype(np.int32)
    lengths = np.full((batch,), prompt_len, np.int32)
    options = rng.integers(2, vocab, (batch, k, option_len)).astype(np.int32)
    option_lengths = np.full((batch, k), option_len, np.int32)
    return prompt, lengths, options, option_lengths


def bench_encoder_decoder(*, preset: str = "t5_1_1_small", batch: int = 2, prompt_len: int = 128,
                          option_len: int = 4, options: tuple[int, ...] = (2, 4, 10), repeats: int = 3,
                          dtype: str = "float32", seed: int = 0) -> list[dict]:
    """Time T5 shared-prefix scoring against per-option scoring; one result row per option count."""
    from symbol_tuning.models.t5 import T5Config
    from symbol_tuning.models.t5_model import EncoderDecoderModel

    cfg = T5Config.preset(preset, dtype=dtype, dropout_rate=0.0)
    model = EncoderDecoderModel(cfg)
    params = jax.jit(lambda r: model.get_initial_variables(
        r, {"encoder_input_tokens": (1, prompt_len), "decoder_input_tokens": (1, option_len)})["params"])(
        jax.random.PRNGKey(seed))
    params = nn.meta.unbox(params)
    shared = jax.jit(model.score_options)

    @jax.jit
    def per_option(params, prompt, lengths, opts, opt_lengths):
        b, k, lo = opts.shape
        enc = jnp.repeat(prompt, k, axis=0)  # every option re-encodes its prompt
        enc = jnp.where(jnp.arange(enc.shape[1])[None, :] < jnp.repeat(lengths, k)[:, None], enc, 0)
        flat = opts.reshape(b * k, lo)
        dec = jnp.concatenate([jnp.full((b * k, 1), cfg.decoder_start_token_id, jnp.int32), flat[:, :-1]], axis=1)
        logp = jax.nn.log_softmax(model.compute_logits(params, {"encoder_input_tokens": enc,
                                                                "decoder_input_tokens": dec}), axis=-1)
        token_logp = jnp.take_along_axis(logp, flat[..., None], axis=-1)[..., 0]
        valid = jnp.arange(lo)[None, :] < opt_lengths.reshape(b * k)[:, None]
        return jnp.sum(jnp.where(valid, token_logp, 0.0), axis=-1).reshape(b, k)

    rng = np.random.default_rng(seed)
    rows = []
    for k in options:
        inputs = _random_inputs(rng, cfg.vocab_size, batch, prompt_len, k, option_len)
        a, b = np.asarray(shared(params, *inputs)), np.asarray(per_option(params, *inputs))
        max_diff = float(np.abs(a - b).max())
        t_shared = _time(lambda: shared(params, *inputs), repeats)
        t_per = _time(lambda: per_option(params, *inputs), repeats)
        rows.append({"family": "encoder_decoder", "preset": preset, "options": k, "shared_s": t_shared,
                     "per_option_s": t_per, "speedup": t_per / t_shared, "max_score_diff": max_diff})
    return rows


FAMILIES: dict[str, Callable[..., list[dict]]] = {"encoder_decoder": bench_encoder_decoder}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="encoder_decoder")
    parser.add_argument("--preset", default=None, help="model preset of the family (default: the family's)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--option_len", type=int, default=4)
    parser.add_argument("--options", type=int, nargs="+", default=[2, 4, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    kwargs = dict(batch=args.batch, prompt_len=args.prompt_len, option_len=args.option_len,
                  options=tuple(args.options), repeats=args.repeats, dtype=args.dtype)
    if args.preset:
        kwargs["preset"] = args.preset
    print(f"device: {jax.devices()[0].device_kind}; batch {args.batch}, prompt {args.prompt_len} tokens, "
          f"option {args.option_len} tokens")
    print(f"{'family':16s} {'preset':14s} {'K':>3s} {'shared s':>10s} {'per-option s':>13s} {'speedup':>8s} "
          f"{'max |diff|':>10s}")
    for row in FAMILIES[args.family](**kwargs):
        print(f"{row['family']:16s} {row['preset']:14s} {row['options']:3d} {row['shared_s']:10.4f} "
              f"{row['per_option_s']:13.4f} {row['speedup']:7.2f}x {row['max_score_diff']:10.2e}")


if __name__ == "__main__":
    main()
