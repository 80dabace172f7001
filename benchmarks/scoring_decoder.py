"""Rank-classification scoring for the decoder-only family: shared-prefix `score_options` (prompt run once
into a KV cache, all K options in one row) against per-option scoring (one full prompt+option row per option).

    python benchmarks/scoring_decoder.py [--preset tiny] [--batch 8] [--prompt_len 512] [--option_len 4]
        [--options 2,4,10] [--repeats 3] [--dtype float32]

Random parameters (timings do not depend on values). Compilation happens before timing; each number is
the best of --repeats wall-clock runs. On a GPU use e.g. --preset decoder_1b --dtype bfloat16.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import DecoderOnlyModel


def _best(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def bench_decoder(*, preset: str = "tiny", batch: int = 8, prompt_len: int = 512, option_len: int = 4,
                  num_options: tuple[int, ...] = (2, 4, 10), repeats: int = 3, dtype: str = "float32",
                  seed: int = 0) -> list[dict[str, float]]:
    """Seconds per batch for shared-prefix vs per-option scoring, and their ratio, per option count."""
    config = DecoderConfig.preset(preset, dtype=dtype)
    model = DecoderOnlyModel(config)
    params = jax.tree_util.tree_map(
        jnp.asarray, model.get_initial_variables(jax.random.PRNGKey(seed), {"decoder_input_tokens": (1, 8)})["params"])
    rng = np.random.default_rng(seed)
    results = []
    for k in num_options:
        prompts = rng.integers(3, config.vocab_size, (batch, prompt_len), dtype=np.int32)
        plens = np.full((batch,), prompt_len, np.int32)
        options = rng.integers(3, config.vocab_size, (batch, k, option_len), dtype=np.int32)
        olens = np.full((batch, k), option_len, np.int32)
        # per-option baseline: B*K rows of prompt + option through the plain forward
        rows = np.concatenate([np.repeat(prompts, k, axis=0), options.reshape(batch * k, option_len)], axis=1)
        per_option = jax.jit(lambda p, r: jnp.sum(jax.nn.log_softmax(
            model.compute_logits(p, {"decoder_input_tokens": r})[:, prompt_len - 1:-1], -1)))
        shared = _best(lambda: model.score_options(params, prompts, plens, options, olens), repeats)
        separate = _best(lambda: per_option(params, rows), repeats)
        results.append({"options": k, "shared_s": shared, "per_option_s": separate, "speedup": separate / shared})
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=512)
    p.add_argument("--option_len", type=int, default=4)
    p.add_argument("--options", default="2,4,10")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    results = bench_decoder(preset=args.preset, batch=args.batch, prompt_len=args.prompt_len,
                            option_len=args.option_len, num_options=tuple(int(x) for x in args.options.split(",")),
                            repeats=args.repeats, dtype=args.dtype)
    print(f"{jax.devices()[0].device_kind}: preset {args.preset}, batch {args.batch}, prompt {args.prompt_len}, "
          f"option {args.option_len} tokens, {args.dtype}")
    print(f"{'options':>7} {'shared-prefix s':>16} {'per-option s':>13} {'per-option / shared':>20}")
    for r in results:
        print(f"{r['options']:>7} {r['shared_s']:>16.4f} {r['per_option_s']:>13.4f} {r['speedup']:>20.2f}")


if __name__ == "__main__":
    main()
