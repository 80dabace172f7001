"""Does the fused cuDNN attention compute what the XLA path computes? Loss, logits and parameter
gradients of small bf16 models, each kernel against a float32 XLA reference (relative L2 error).

    python benchmarks/attention_parity.py [--seq 256] [--batch 2] [--cases decoder,packed,t5,...] [--impl auto|cudnn]

Cases: decoder unpacked (cuDNN via is_causal on GPU), decoder packed (the mask becomes a cuDNN bias),
packed_causal (segment_causal: the segment mask as bias plus is_causal), T5 with padded inputs
(relative-position bias plus padding mask, whose gradient must reach the learned bias table), t5_lengths
(padding_as_lengths: the bias without a mask, key lengths, an is_causal decoder and unmasked
cross-attention, which auto then sends to cuDNN too). `--impl auto` checks what the models pick on this
device; `--impl cudnn` forces cuDNN. bf16 rounding puts errors near 1e-2; a kernel that drops a mask or a
bias gradient shows errors near 1. Where cuDNN is unavailable (CPU) its rows say so.
"""
from __future__ import annotations

import argparse
import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import DecoderOnlyModel
from symbol_tuning.models.t5 import T5Config
from symbol_tuning.models.t5_model import EncoderDecoderModel


def rel_err(got, ref) -> float:
    """Largest relative L2 error over the leaves of two trees."""
    errs = jax.tree_util.tree_map(
        lambda a, b: float(jnp.linalg.norm((a.astype(jnp.float32) - b.astype(jnp.float32)).ravel())
                           / (jnp.linalg.norm(b.astype(jnp.float32).ravel()) + 1e-30)), got, ref)
    return max(jax.tree_util.tree_leaves(errs))


def loss_and_grads(model, params, batch):
    """Mean token cross-entropy, logits and gradients w.r.t. every parameter."""
    def loss_fn(p):
        logits = model.compute_logits(p, batch)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], axis=-1)[..., 0]
        return nll.mean(), logits
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, logits, grads


def case(name, make_model, batch, impl):
    """One row: `impl` in bf16 against the float32 XLA reference."""
    ref_model = make_model(dtype="float32", attention_impl="xla")
    shapes = {k: v.shape for k, v in batch.items() if k.endswith("input_tokens")}
    params = nn.meta.unbox(ref_model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"])
    run = lambda model: jax.jit(lambda p: loss_and_grads(model, p, batch))(params)  # noqa: E731
    ref = run(ref_model)
    row = dict(case=name, impl=impl)
    try:
        got = run(make_model(dtype="bfloat16", attention_impl=impl))
        base = run(make_model(dtype="bfloat16", attention_impl="xla"))
    except Exception as err:  # noqa: BLE001 -- a kernel that cannot run is a row, not a crash
        row.update(error=f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}")
        return row
    for label, out in (("bf16_" + impl, got), ("bf16_xla", base)):
        row[f"{label}_logits_err"] = round(rel_err(out[1], ref[1]), 5)
        row[f"{label}_grads_err"] = round(rel_err(out[2], ref[2]), 5)
        row[f"{label}_loss_diff"] = round(abs(float(out[0]) - float(ref[0])), 5)
    # The kernel is right if it is about as close to float32 as bf16 XLA is.
    row["ok"] = (row[f"bf16_{impl}_grads_err"] <= 2 * row["bf16_xla_grads_err"] + 1e-3
                 and row[f"bf16_{impl}_logits_err"] <= 2 * row["bf16_xla_logits_err"] + 1e-3)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--cases", type=lambda v: [c for c in v.split(",") if c],
                   default=["decoder", "packed", "packed_causal", "t5", "t5_lengths"],
                   help="comma-separated subset of decoder,packed,packed_causal,t5,t5_lengths")
    p.add_argument("--impl", choices=("auto", "cudnn"), default="auto",
                   help="kernel checked against XLA (auto: what the models pick on this device)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    b, t = args.batch, args.seq
    dec_cfg = dict(vocab_size=512, d_model=256, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64, d_ff=512,
                   max_position_embeddings=max(t, 2048))
    make_dec = lambda **kw: DecoderOnlyModel(DecoderConfig(**dec_cfg, **kw))  # noqa: E731
    ids = rng.integers(2, 512, (b, t), dtype=np.int32)
    dec_batch = {"decoder_input_tokens": ids, "decoder_target_tokens": np.roll(ids, -1, 1)}
    index = np.arange(t)
    packed = dict(dec_batch, decoder_segment_ids=np.broadcast_to(index // (t // 4) + 1, (b, t)).astype(np.int32),
                  decoder_positions=np.broadcast_to(index % (t // 4), (b, t)).astype(np.int32))
    t5_cfg = dict(vocab_size=512, d_model=256, num_heads=4, d_kv=64, d_ff=512, num_encoder_layers=2,
                  num_decoder_layers=2, dropout_rate=0.0)
    make_t5 = lambda **kw: EncoderDecoderModel(T5Config(**t5_cfg, **kw))  # noqa: E731
    enc = rng.integers(2, 512, (b, t), dtype=np.int32)
    enc[:, -t // 8:] = 0  # padding at the end of every input: the mask matters
    tgt = rng.integers(2, 512, (b, 64), dtype=np.int32)
    t5_batch = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
                "decoder_input_tokens": np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], 1)}
    print("device:", jax.devices()[0].device_kind, flush=True)
    rows = []
    cases = {"decoder": ("decoder unpacked", make_dec, dec_batch), "packed": ("decoder packed x4", make_dec, packed),
             "packed_causal": ("decoder packed x4, segment_causal",
                               lambda **kw: make_dec(segment_causal=True, **kw), packed),
             "t5": ("t5 padded inputs", make_t5, t5_batch),
             "t5_lengths": ("t5 padded inputs, padding_as_lengths",
                            lambda **kw: make_t5(padding_as_lengths=True, **kw), t5_batch)}
    unknown = sorted(set(args.cases) - set(cases))
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; known: {sorted(cases)}")
    for key in args.cases:
        rows.append(case(*cases[key], args.impl))
        print(json.dumps(rows[-1]), flush=True)
    bad = [r["case"] for r in rows if r.get("ok") is False]
    print("attention parity:", "MISMATCH in " + ", ".join(bad) if bad else "no mismatch")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
