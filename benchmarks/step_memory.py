"""Compiled memory of the train step under each speed option: XLA's memory analysis of the step lowered
and compiled ahead of time (`jax.jit(...).lower(...).compile().memory_analysis()`), nothing allocated.

    python benchmarks/step_memory.py [--family decoder_only|encoder_decoder|both] [--size tiny|small]
        [--options baseline,fused,...] [--json_out FILE]

bf16 compute, float32 master weights, AdamW, one device of whatever backend runs it (the CPU here: XLA's
CPU memory analysis, whose buffer assignment differs from the GPU's, so the ratios are evidence of what
an option keeps alive, not GPU figures). Each row is one option against the same shape; the packed
decoder rows (4 examples per row) and the padded T5 rows are the workloads the attention options are for.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import DecoderOnlyModel
from symbol_tuning.models.t5 import T5Config
from symbol_tuning.models.t5_model import EncoderDecoderModel
from symbol_tuning.training import optimizers, partitioning, train_state
from symbol_tuning.training.train_step import StepOptions, make_train_step

SIZES = {
    "tiny": dict(decoder=dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                              d_ff=160), seq=64, batch=2,
                 t5=dict(vocab_size=512, d_model=64, num_heads=4, d_kv=16, d_ff=128, num_encoder_layers=2,
                         num_decoder_layers=2), inputs=64, targets=16, t5_batch=2),
    "small": dict(decoder=dict(vocab_size=8192, d_model=256, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32,
                               d_ff=704), seq=512, batch=4,
                  t5=dict(vocab_size=8192, d_model=256, num_heads=8, d_kv=32, d_ff=640, num_encoder_layers=4,
                          num_decoder_layers=4), inputs=512, targets=64, t5_batch=8),
    # the LM head and loss dominate (the 1.1B decoder's 32k vocabulary over 16k tokens, scaled down)
    "vocab_heavy": dict(decoder=dict(vocab_size=32000, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                                     head_dim=32, d_ff=352), seq=512, batch=4,
                        t5=dict(vocab_size=32128, d_model=128, num_heads=4, d_kv=32, d_ff=320, num_encoder_layers=2,
                                num_decoder_layers=2), inputs=512, targets=256, t5_batch=4),
}

# option name -> (model config changes, StepOptions changes, optimizer mu_dtype, packed / padded batch)
OPTIONS: dict[str, tuple[dict, dict, str | None]] = {
    "baseline": ({}, {}, None),
    "unscanned": ({"scan_layers": False}, {}, None),
    "fused": ({"fused_projections": True}, {}, None),
    "chunked_loss": ({}, {"loss_impl": "chunked", "loss_vocab_chunk": 2048}, None),
    "no_grad_norm": ({}, {"grad_norm": False}, None),
    "bf16_mu": ({}, {}, "bfloat16"),
    "remat_full": ({"remat_policy": "full"}, {}, None),
    "remat_attention": ({"remat_policy": "attention"}, {}, None),
    "remat_minimal": ({"remat_policy": "minimal"}, {}, None),
    "remat_minimal_attention": ({"remat_policy": "minimal_attention"}, {}, None),
    "fp8": ({"fp8": True}, {}, None),
    "segment_causal": ({"segment_causal": True}, {}, None),  # decoder only
    "padding_as_lengths": ({"padding_as_lengths": True}, {}, None),  # T5 only
    "fast": ({"fused_projections": True, "segment_causal": True, "padding_as_lengths": True},
             {"loss_impl": "chunked", "loss_vocab_chunk": 2048, "grad_norm": False}, None),
}
FAMILY_ONLY = {"segment_causal": "decoder_only", "padding_as_lengths": "encoder_decoder"}


def _model(family: str, size: str, changes: dict) -> Any:
    shape = SIZES[size]
    if family == "decoder_only":
        fields = {k: v for k, v in changes.items() if k != "padding_as_lengths"}
        return DecoderOnlyModel(DecoderConfig(**shape["decoder"], dtype="bfloat16", **fields))
    fields = {k: v for k, v in changes.items() if k != "segment_causal"}
    return EncoderDecoderModel(T5Config(**shape["t5"], dtype="bfloat16", dropout_rate=0.0, **fields))


def _batch_shapes(family: str, size: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    shape = SIZES[size]
    if family == "decoder_only":
        b, t = shape["batch"], shape["seq"]
        names = ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids", "decoder_positions")
        out = {n: ((b, t), jnp.int32) for n in names}
    else:
        b, li, lt = shape["t5_batch"], shape["inputs"], shape["targets"]
        out = {"encoder_input_tokens": ((b, li), jnp.int32), "decoder_input_tokens": ((b, lt), jnp.int32),
               "decoder_target_tokens": ((b, lt), jnp.int32)}
    out["decoder_loss_weights"] = (out["decoder_target_tokens"][0], jnp.float32)
    return out


def compiled_step_memory(family: str, size: str, option: str) -> dict[str, Any]:
    """One row: the option's per-device argument / output / temp bytes of the compiled train step."""
    model_changes, step_changes, mu_dtype = OPTIONS[option]
    model = _model(family, size, model_changes)
    mesh = partitioning.create_mesh(partitioning.MeshConfig(ici_data=1), devices=jax.devices()[:1])
    rules = partitioning.DEFAULT_RULES
    opt = optimizers.make_optimizer(name="adamw", learning_rate=1e-4, mu_dtype=mu_dtype)
    shapes = _batch_shapes(family, size)
    input_shapes = {n: s for n, (s, _) in shapes.items() if n.endswith("input_tokens")}
    abstract = train_state.abstract_train_state(model=model, optimizer=opt, input_shapes=input_shapes, mesh=mesh,
                                                rules=rules)
    batch_sh = partitioning.batch_sharding(mesh)
    step = make_train_step(model=model, optimizer=opt, state_shardings=train_state.state_shardings(abstract),
                           batch_shardings=batch_sh, mesh=mesh, rules=rules,
                           options=dataclasses.replace(StepOptions(dropout=False), **step_changes))
    batch = {n: jax.ShapeDtypeStruct(s, d, sharding=batch_sh) for n, (s, d) in shapes.items()}
    with jax.set_mesh(mesh), partitioning.with_rules(rules):
        stats = step.jitted.lower(abstract, batch).compile().memory_analysis()
    row = dict(family=family, size=size, option=option)
    row.update({k: int(getattr(stats, f"{k}_in_bytes")) for k in ("argument_size", "output_size", "temp_size",
                                                                  "alias_size")})
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """Bytes in MiB and temp memory relative to the same family's baseline."""
    base = {(r["family"], r["size"]): r["temp_size"] for r in rows if r["option"] == "baseline"}
    lines = [f"{'family':16s} {'size':6s} {'option':24s} {'args MiB':>9s} {'out MiB':>8s} {'temp MiB':>9s} "
             f"{'temp vs baseline':>16s}"]
    mib = lambda n: n / 2**20  # noqa: E731
    for r in rows:
        ref = base.get((r["family"], r["size"]))
        ratio = "-" if not ref else f"{r['temp_size'] / ref:.3f}"
        lines.append(f"{r['family']:16s} {r['size']:6s} {r['option']:24s} {mib(r['argument_size']):9.2f} "
                     f"{mib(r['output_size']):8.2f} {mib(r['temp_size']):9.2f} {ratio:>16s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("decoder_only", "encoder_decoder", "both"), default="both")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, from {list(OPTIONS)}")
    p.add_argument("--json_out", default=None)
    args = p.parse_args(argv)
    options = [o for o in args.options.split(",") if o]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SystemExit(f"--options: unknown {unknown} (known: {list(OPTIONS)})")
    families = ("decoder_only", "encoder_decoder") if args.family == "both" else (args.family,)
    rows = []
    for family in families:
        for option in options:
            if FAMILY_ONLY.get(option, family) != family:
                continue
            row = compiled_step_memory(family, args.size, option)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json_out:
                with open(args.json_out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            jax.clear_caches()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
