"""Training-step throughput and MFU of our JAX trainer on the PyTorch peer's shapes.

    python benchmarks/train_throughput.py [--only decoder|t5-base|t5-large] [--steps 30] [--windows 3]
        [--warmup 3] [--tiny] [--remat POLICY] [--attention_impl cudnn|xla] [--optimizer adamw|adafactor]
        [--param_dtype float32|bfloat16] [--packed N] [--fast] [--scan_layers 0|1] [--fused]
        [--loss reference|chunked] [--segment_causal] [--padding_as_lengths] [--fp8] [--mu_dtype bfloat16]
        [--no_grad_norm] [--profile DIR] [--label NAME] [--json_out FILE]

Shapes are those of the peer script (`../shared/bench/peer_hf_torch.py` from the checkout, same config
names, so the two outputs join): decoder-1.1B (preset decoder_1b) at sequence 2048, batch 8; Flan-T5-base
and -large shapes at inputs 1024 / targets 64, batch 32; bf16 compute. Synthetic random token batches,
warm-up steps excluded; the timed steps run in `--windows` windows, each closed by one device sync, and
the row reports the median window's step time (and every window's). FLOPs and MFU come from
symbol_tuning/training/flops.py: "mfu" counts causal attention as full (the peer's convention),
"mfu_causal" halves it. One JSON line per configuration (the peer's keys plus ours), then a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

import jax
import numpy as np

from symbol_tuning.models.decoder import DecoderConfig
from symbol_tuning.models.decoder_model import DecoderOnlyModel
from symbol_tuning.models.layers import REMAT_POLICIES
from symbol_tuning.models.t5 import T5Config
from symbol_tuning.models.t5_model import EncoderDecoderModel
from symbol_tuning.training import flops, optimizers, partitioning, train_state
from symbol_tuning.training.train_step import StepOptions, make_train_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import profile_summary  # noqa: E402  (a sibling script)

IMPL = "symbol_tuning-jax"


def decoder_shape(tiny: bool) -> dict[str, Any]:
    """The peer's decoder benchmark: name, config fields, sequence length and batch."""
    if tiny:
        cfg = dict(vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=128)
        return dict(name="llama-tiny", fields=cfg, seq=64, batch=2)
    fields = DecoderConfig.preset("decoder_1b").to_dict()
    return dict(name="decoder-1.1B seq2048 bs8", fields=fields, seq=2048, batch=8)


def t5_shape(size: str, tiny: bool) -> dict[str, Any]:
    """The peer's T5 benchmarks (Flan-T5 base / large shapes, inputs 1024, targets 64, batch 32)."""
    if tiny:
        cfg = dict(vocab_size=256, d_model=64, num_heads=4, d_kv=16, d_ff=128, num_encoder_layers=2,
                   num_decoder_layers=2)
        return dict(name="t5-tiny", fields=cfg, inputs=64, targets=16, batch=2)
    fields = T5Config.preset(f"flan_t5_{size}").to_dict()
    return dict(name=f"t5-{size}(flan) in1024 out64 bs32", fields=fields, inputs=1024, targets=64, batch=32)


def synthetic_batch(family: str, vocab: int, batch: int, lengths: dict[str, int], seed: int = 0,
                    packed_segments: int = 0) -> dict:
    """Random token batch (ids >= 2, so no padding) with every target token weighted.

    packed_segments > 0 (decoder only) packs that many equal examples per row, with segment ids and
    restarting positions, as the packed training pipeline does (attention then needs a mask)."""
    rng = np.random.default_rng(seed)
    tokens = lambda n: rng.integers(2, vocab, (batch, n), dtype=np.int32)  # noqa: E731
    if family == "decoder_only":
        ids = tokens(lengths["seq"])
        out = {"decoder_input_tokens": ids, "decoder_target_tokens": np.roll(ids, -1, axis=1),
               "decoder_loss_weights": np.ones_like(ids, np.float32)}
        if packed_segments:
            seg_len = -(-lengths["seq"] // packed_segments)
            index = np.arange(lengths["seq"])
            out["decoder_segment_ids"] = np.broadcast_to(index // seg_len + 1, ids.shape).astype(np.int32)
            out["decoder_positions"] = np.broadcast_to(index % seg_len, ids.shape).astype(np.int32)
        return out
    targets = tokens(lengths["targets"])
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": tokens(lengths["inputs"]), "decoder_input_tokens": dec_in,
            "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(targets, np.float32)}


def peak_memory_gb() -> float | None:
    """The device allocator's peak bytes in use (GPU / TPU), in GiB; None where not reported (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return round(stats["peak_bytes_in_use"] / 2**30, 1)


def _is_oom(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def time_windows(step: Callable, state: Any, batch: Any, *, steps: int, windows: int) -> tuple[Any, list[float]]:
    """Run `steps` steps split into `windows` windows (one device sync closing each); (state, seconds per
    step of each window)."""
    per_window = [steps // windows + (1 if i < steps % windows else 0) for i in range(windows)]
    times = []
    for count in per_window:
        start = time.perf_counter()
        for _ in range(count):
            state, out = step(state, batch)
        jax.block_until_ready((state, out))
        times.append((time.perf_counter() - start) / count)
    return state, times


def bench(*, name: str, model: Any, batch: dict[str, np.ndarray], tokens_per_step: int, optimizer: str = "adamw",
          learning_rate: float = 1e-4, steps: int = 30, windows: int = 3, warmup: int = 3, num_devices: int = 1,
          step_options: StepOptions = StepOptions(), mu_dtype: str | None = None, profile_dir: str | None = None,
          extra: dict | None = None) -> dict[str, Any]:
    """Time `steps` train steps in `windows` windows after `warmup` untimed ones; the result row in the
    peer's format. With `profile_dir`, 3 more steps are traced there and the top ops per step printed."""
    devices = jax.devices()[:num_devices]
    mesh = partitioning.create_mesh(partitioning.MeshConfig(ici_data=1, ici_fsdp=-1), devices=devices)
    rules = partitioning.DEFAULT_RULES
    opt = optimizers.make_optimizer(name=optimizer, learning_rate=learning_rate, mu_dtype=mu_dtype)
    shapes = {k: v.shape for k, v in batch.items() if k.endswith("input_tokens")}
    row: dict[str, Any] = dict(peer=f"{IMPL}-{optimizer}", config=name, jax=jax.__version__,
                               device=devices[0].device_kind, num_devices=len(devices), **(extra or {}))
    try:
        abstract = train_state.abstract_train_state(model=model, optimizer=opt, input_shapes=shapes, mesh=mesh,
                                                    rules=rules)
        step_flops = flops.train_flops_per_step(model.config, abstract.params, shapes)
        step_flops_causal = flops.train_flops_per_step(model.config, abstract.params, shapes, causal_halved=True)
        state, shardings = train_state.create_train_state(model=model, optimizer=opt, rng=jax.random.PRNGKey(0),
                                                          input_shapes=shapes, mesh=mesh, rules=rules)
        batch_sh = partitioning.batch_sharding(mesh)
        options = dataclasses.replace(step_options, dropout=model.config.dropout_rate > 0)
        step = make_train_step(model=model, optimizer=opt, state_shardings=shardings, batch_shardings=batch_sh,
                               mesh=mesh, rules=rules, options=options)
        device_batch = partitioning.make_global_batch(batch, mesh)
        start = time.perf_counter()
        state, out = step(state, device_batch)
        jax.block_until_ready(out)
        row["compile_s"] = round(time.perf_counter() - start, 2)
        for _ in range(max(warmup - 1, 0)):
            state, out = step(state, device_batch)
        jax.block_until_ready((state, out))
        state, window_s = time_windows(step, state, device_batch, steps=steps, windows=windows)
        dt = float(np.median(window_s))
        if profile_dir:
            with jax.profiler.trace(profile_dir):
                state, _ = time_windows(step, state, device_batch, steps=3, windows=1)
            summary = profile_summary.summarize(profile_dir, steps=3, top=15)
            print(f"== top ops per step, {name}", flush=True)
            print(profile_summary.format_summary(summary, total_ms=dt * 1e3), flush=True)
            row["profile_top"] = [dict(op=r["op"][:80], ms=round(r["ms_per_step"], 3)) for r in summary[:8]]
    except Exception as err:  # noqa: BLE001 -- a failed config is a result row (OOM for t5-large bs32)
        first_line = (str(err).splitlines() or [""])[0][:300]
        if _is_oom(err):
            row.update(error="out of memory", detail=first_line, max_mem_gb=peak_memory_gb())
        else:
            traceback.print_exc()
            row.update(error=f"failed: {type(err).__name__}", detail=first_line)
        return row
    kind, count = devices[0].device_kind, len(devices)
    mfu = flops.mfu(step_flops, dt, num_devices=count, device_kind=kind)
    mfu_causal = flops.mfu(step_flops_causal, dt, num_devices=count, device_kind=kind)
    row.update(step_s=round(dt, 4), window_step_s=[round(t, 4) for t in window_s], steps=steps, windows=windows,
               tokens_per_s=round(tokens_per_step / dt), tflops=round(step_flops / dt / 1e12, 1),
               mfu=None if mfu is None else round(mfu, 3),
               mfu_causal=None if mfu_causal is None else round(mfu_causal, 3),
               chip=flops.chip_name(kind), max_mem_gb=peak_memory_gb(), flops_per_step=step_flops,
               flops_per_step_causal=step_flops_causal, params=flops.count_params(abstract.params)["total"])
    del state
    return row


def run_decoder(args: argparse.Namespace) -> dict[str, Any]:
    shape = decoder_shape(args.tiny)
    fields = dict(shape["fields"], dtype="bfloat16", param_dtype=args.param_dtype, remat_policy=args.remat,
                  attention_impl=args.attention_impl, max_position_embeddings=max(shape["seq"], 2048),
                  dropout_rate=0.0, **_model_options(args), segment_causal=args.segment_causal)
    config = DecoderConfig(**fields)
    batch = synthetic_batch("decoder_only", config.vocab_size, shape["batch"], {"seq": shape["seq"]},
                            packed_segments=args.packed)
    return bench(name=shape["name"], model=DecoderOnlyModel(config), batch=batch,
                 tokens_per_step=shape["batch"] * shape["seq"], **_bench_options(args))


def run_t5(args: argparse.Namespace, size: str) -> dict[str, Any]:
    shape = t5_shape(size, args.tiny)
    fields = dict(shape["fields"], dtype="bfloat16", param_dtype=args.param_dtype, remat_policy=args.remat,
                  attention_impl=args.attention_impl, dropout_rate=args.t5_dropout, **_model_options(args),
                  padding_as_lengths=args.padding_as_lengths)
    config = T5Config(**fields)
    lengths = {"inputs": shape["inputs"], "targets": shape["targets"]}
    batch = synthetic_batch("encoder_decoder", config.vocab_size, shape["batch"], lengths)
    return bench(name=shape["name"], model=EncoderDecoderModel(config), batch=batch,
                 tokens_per_step=shape["batch"] * (shape["inputs"] + shape["targets"]), **_bench_options(args))


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(scan_layers=bool(args.scan_layers), fused_projections=args.fused, fp8=args.fp8)


def _bench_options(args: argparse.Namespace) -> dict[str, Any]:
    step = StepOptions(loss_impl=args.loss, loss_vocab_chunk=args.loss_vocab_chunk, grad_norm=not args.no_grad_norm)
    return dict(optimizer=args.optimizer, steps=args.steps, windows=args.windows, warmup=args.warmup,
                num_devices=args.num_devices, step_options=step, mu_dtype=args.mu_dtype, profile_dir=args.profile,
                extra=_extra(args))


# Row keys of the options, with their defaults; a row differing from a default is a variant.
VARIANT_DEFAULTS = dict(attention_impl="default", remat="none", param_dtype="float32", packed=0, scan_layers=1,
                        fused=False, loss="reference", segment_causal=False, padding_as_lengths=False, fp8=False,
                        mu_dtype=None, grad_norm=True, xla_flags="")


SAME_FUNCTION = ("attention_impl", "remat", "scan_layers", "fused", "loss", "segment_causal", "padding_as_lengths",
                 "grad_norm", "xla_flags")


def _extra(args: argparse.Namespace) -> dict[str, Any]:
    return dict(remat=args.remat, attention_impl=args.attention_impl or "default", param_dtype=args.param_dtype,
                packed=args.packed, scan_layers=int(args.scan_layers), fused=args.fused, loss=args.loss,
                segment_causal=args.segment_causal, padding_as_lengths=args.padding_as_lengths, fp8=args.fp8,
                mu_dtype=args.mu_dtype, grad_norm=not args.no_grad_norm, xla_flags=os.environ.get("XLA_FLAGS", ""),
                label=args.label)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of result rows (ours or the peer's)."""
    head = (f"{'config':34s} {'impl':28s} {'step s':>8s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s} "
            f"{'MFU(c)':>6s} {'mem GB':>7s}")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['config']:34s} {r['peer']:28s} {r['error']}")
            continue
        pct = lambda key: "-" if r.get(key) is None else f"{100 * r[key]:.1f}%"  # noqa: E731
        mem = "-" if r.get("max_mem_gb") is None else f"{r['max_mem_gb']:.1f}"
        lines.append(f"{r['config']:34s} {r['peer']:28s} {r['step_s']:8.4f} {r['tokens_per_s']:10d} "
                     f"{r['tflops']:8.1f} {pct('mfu'):>6s} {pct('mfu_causal'):>6s} {mem:>7s}")
    return "\n".join(lines)


# Targets on one H100 80GB (bf16), against the peer with torch.compile measured there 2026-11-26.
TARGETS = {
    "decoder-1.1B seq2048 bs8": dict(min_mfu=0.55, min_speedup=1.3),
    "t5-base(flan) in1024 out64 bs32": dict(min_speedup=2.0),
    "t5-large(flan) in1024 out64 bs32": dict(must_run=True),
}


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Result rows of a JSON-lines file; other lines (logs) are skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return [r for r in rows if "config" in r]


def compare_table(peer_rows: list[dict[str, Any]], our_rows: list[dict[str, Any]]) -> str:
    """Ours vs the peer per config (joined by name; the last row of each wins), with the targets."""
    peer = {r["config"]: r for r in peer_rows if "tokens_per_s" in r}
    lines = [f"{'config':44s} {'ours tok/s':>11s} {'ours MFU':>8s} {'MFU(c)':>7s} {'peer tok/s':>11s} "
             f"{'peer MFU':>8s} {'speed-up':>8s} {'mem GB':>7s}  target"]
    for r in our_rows:
        p, goal = peer.get(r["config"]), TARGETS.get(r["config"], {})
        variant = [f"{k}={r[k]}" for k, default in VARIANT_DEFAULTS.items() if r.get(k, default) != default]
        name = r["config"] + (f" [{', '.join(variant)}]" if variant else "")
        # targets hold for the default settings and for options that change only how the same function is
        # computed (SAME_FUNCTION); other variants (packing, bf16 weights or moments, FP8) have none
        goal = {} if any(v.split("=")[0] not in SAME_FUNCTION for v in variant) else goal
        if "tokens_per_s" not in r:
            lines.append(f"{name:44s} {r.get('error', 'no result'):>11s}" + ("  MISS: must train" if goal else ""))
            continue
        pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        speedup = None if p is None else r["tokens_per_s"] / p["tokens_per_s"]
        checks = []
        if "min_mfu" in goal:
            ok = r.get("mfu") is not None and r["mfu"] >= goal["min_mfu"]
            checks.append(f"MFU>={100 * goal['min_mfu']:.0f}% {'ok' if ok else 'MISS'}")
        if "min_speedup" in goal:
            ok = speedup is not None and speedup >= goal["min_speedup"]
            checks.append(f">={goal['min_speedup']}x peer {'ok' if ok else 'MISS'}")
        if goal.get("must_run"):
            checks.append("trains ok")
        lines.append(f"{name:44s} {r['tokens_per_s']:11d} {pct(r.get('mfu')):>8s} {pct(r.get('mfu_causal')):>7s} "
                     f"{'-' if p is None else p['tokens_per_s']:>11} {pct(None if p is None else p.get('mfu')):>8s} "
                     f"{'-' if speedup is None else f'{speedup:.2f}x':>8s} "
                     f"{'-' if r.get('max_mem_gb') is None else r['max_mem_gb']:>7}  {', '.join(checks)}")
    return "\n".join(lines)


def top_ops_text(rows: list[dict[str, Any]]) -> str:
    """The profile summaries (top ops, ms per step) of the rows that carry one."""
    lines = []
    for r in rows:
        if r.get("profile_top"):
            lines.append(f"{r['config']} [{r.get('label') or 'profiled'}] {r.get('step_s')} s/step:")
            lines += [f"  {op['ms']:9.3f} ms  {op['op']}" for op in r["profile_top"]]
    return "\n".join(lines) or "no profiled rows"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("decoder", "t5-base", "t5-large"), default=None)
    p.add_argument("--steps", type=int, default=30, help="timed steps, over all windows")
    p.add_argument("--windows", type=int, default=3, help="timing windows (the median window is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps, the compiling one included")
    p.add_argument("--tiny", action="store_true", help="the peer's tiny shapes (CPU, tests)")
    p.add_argument("--remat", choices=sorted(REMAT_POLICIES), default="none")
    p.add_argument("--attention_impl", choices=("cudnn", "xla"), default=None,
                   help="force a jax.nn.dot_product_attention kernel (default: layers.resolve_attention_impl "
                        "picks cuDNN for unmasked bf16 attention on GPU, XLA otherwise)")
    p.add_argument("--optimizer", choices=optimizers.OPTIMIZERS, default="adamw")
    p.add_argument("--param_dtype", choices=("float32", "bfloat16"), default="float32",
                   help="master weights (the peer keeps bf16 weights and AdamW state)")
    p.add_argument("--t5_dropout", type=float, default=0.1, help="T5 dropout (the peer trains HF T5 at 0.1)")
    p.add_argument("--packed", type=int, default=0, metavar="N",
                   help="decoder: pack N examples per row (segment ids + restarting positions)")
    p.add_argument("--num_devices", type=int, default=1, help="local devices (batch split over them, FSDP)")
    p.add_argument("--scan_layers", type=int, choices=(0, 1), default=1, help="0: unscanned layers (a Python loop)")
    p.add_argument("--fused", action="store_true", help="fused Q/K/V (T5: K/V) and gate/up matmuls")
    p.add_argument("--loss", choices=("reference", "chunked"), default="reference",
                   help="chunked: vocabulary-chunked cross-entropy with a custom gradient on bf16 logits")
    p.add_argument("--loss_vocab_chunk", type=int, default=8192)
    p.add_argument("--segment_causal", action="store_true", help="decoder packed rows: segment mask + is_causal")
    p.add_argument("--padding_as_lengths", action="store_true", help="T5: padding as lengths, no masks")
    p.add_argument("--fp8", action="store_true", help="FP8 matmuls (models/fp8.py)")
    p.add_argument("--mu_dtype", choices=("bfloat16",), default=None, help="optimizer first moment dtype")
    p.add_argument("--no_grad_norm", action="store_true", help="leave the gradient norm out of the step")
    p.add_argument("--fast", action="store_true",
                   help="every same-numerics option at once: --fused --loss chunked --no_grad_norm, and "
                        "--segment_causal / --padding_as_lengths (the scan choice stays --scan_layers)")
    p.add_argument("--profile", default=None, metavar="DIR", help="trace 3 more steps there; print the top ops")
    p.add_argument("--label", default="", help="free text copied into the JSON row")
    p.add_argument("--json_out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--top_ops", default=None, metavar="OURS_JSONL",
                   help="only print the profile summaries (profile_top) of an earlier output's rows")
    p.add_argument("--compare", nargs=2, metavar=("PEER_JSONL", "OURS_JSONL"), default=None,
                   help="only print the ours-vs-peer table of two earlier outputs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fast:
        args.fused, args.loss, args.no_grad_norm = True, "chunked", True
        args.segment_causal, args.padding_as_lengths = True, True
    if args.top_ops:
        print(top_ops_text(read_jsonl(args.top_ops)))
        return 0
    if args.compare:
        for path in args.compare:
            if not os.path.exists(path):
                raise SystemExit(f"--compare: {path} does not exist")
        print(compare_table(read_jsonl(args.compare[0]), read_jsonl(args.compare[1])))
        return 0
    if args.steps < 1 or args.windows < 1 or args.windows > args.steps:
        raise SystemExit(f"--steps={args.steps} --windows={args.windows}: need 1 <= windows <= steps")
    if args.num_devices < 1 or args.num_devices > jax.device_count():
        raise SystemExit(f"--num_devices={args.num_devices}: this host has {jax.device_count()} devices")
    runs = {"decoder": run_decoder, "t5-base": lambda a: run_t5(a, "base"), "t5-large": lambda a: run_t5(a, "large")}
    if args.tiny:
        runs.pop("t5-large")
    rows = []
    for key, fn in runs.items():
        if args.only not in (None, key):
            continue
        row = fn(args)
        rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        jax.clear_caches()
    print(format_table(rows))
    return 1 if any("error" in r and r["error"] != "out of memory" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
