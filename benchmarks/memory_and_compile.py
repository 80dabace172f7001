"""FSDP memory split and ahead-of-time compile time on N simulated CPU devices (no accelerator needed).

    python benchmarks/memory_and_compile.py [--devices 8] [--skip_fsdp] [--skip_compile]
        [--compile_preset palm_62b] [--depths 64] [--unscanned_depths 2,8,16] [--tiny]

(a) FSDP: a small decoder's train state is created on an ("fsdp": N) mesh and each device's parameter
    and optimizer bytes (`train_state.param_bytes_per_device`) are compared with 1/N of the total.
(b) Compile: the train step of a PaLM-62B-shaped decoder (scan over layers) is lowered and compiled on
    abstract inputs (ShapeDtypeStructs carrying their shardings; nothing is allocated), at several depths
    with scan on and off, so that compile time against depth shows what scan buys.
XLA_FLAGS is set for N host devices before JAX starts (only when the flag is not already present).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _set_host_devices(argv: list[str]) -> None:
    """Simulate --devices CPU devices; must run before `import jax`."""
    n = 8
    if "--devices" in argv:
        n = int(argv[argv.index("--devices") + 1])
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


_set_host_devices(sys.argv)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from symbol_tuning.models.decoder import DecoderConfig  # noqa: E402
from symbol_tuning.models.decoder_model import DecoderOnlyModel  # noqa: E402
from symbol_tuning.training import optimizers, partitioning, train_state  # noqa: E402
from symbol_tuning.training.train_step import StepOptions, make_train_step  # noqa: E402


def _fsdp_mesh(n: int) -> jax.sharding.Mesh:
    if jax.device_count() < n:
        raise SystemExit(f"--devices={n}: JAX sees only {jax.device_count()} devices "
                         f"(XLA_FLAGS={os.environ.get('XLA_FLAGS')!r} was set before this script ran)")
    return partitioning.create_mesh(partitioning.MeshConfig(ici_data=1, ici_fsdp=-1), devices=jax.devices()[:n])


def fsdp_memory(*, devices: int = 8, optimizer: str = "adamw", tiny: bool = False) -> dict:
    """Per-device parameter + optimizer bytes of a real (allocated) train state vs 1/N of the total."""
    mesh = _fsdp_mesh(devices)
    size = dict(d_model=64, num_layers=2, d_ff=256, vocab_size=512) if tiny else \
        dict(d_model=512, num_layers=4, d_ff=2048, vocab_size=8192)
    config = DecoderConfig(num_heads=8, num_kv_heads=8, head_dim=size["d_model"] // 8, dtype="float32", **size)
    model = DecoderOnlyModel(config)
    opt = optimizers.make_optimizer(name=optimizer, learning_rate=1e-3)
    state, _ = train_state.create_train_state(model=model, optimizer=opt, rng=jax.random.PRNGKey(0),
                                              input_shapes={"decoder_input_tokens": (devices, 16)}, mesh=mesh,
                                              rules=partitioning.DEFAULT_RULES)
    per_device = train_state.param_bytes_per_device(state)
    total = {part: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(getattr(state, part)))
             for part in ("params", "opt_state")}
    total["total"] = total["params"] + total["opt_state"]
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    row = {"optimizer": optimizer, "devices": devices, "params": num_params}
    for part in ("params", "opt_state", "total"):
        worst = max(per_device[part].values())
        row[f"{part}_bytes_total"] = total[part]
        row[f"{part}_bytes_max_device"] = worst
        row[f"{part}_ratio"] = worst / (total[part] / devices)
    return row


def compile_time(*, preset: str = "palm_62b", num_layers: int, scan: bool, devices: int = 8, batch: int = 8,
                 seq: int = 2560, optimizer: str = "adafactor", remat: str = "full", **overrides) -> dict:
    """Seconds to lower and to compile the train step of `preset` at `num_layers`, on abstract inputs."""
    mesh = _fsdp_mesh(devices)
    rules = partitioning.DEFAULT_RULES
    config = DecoderConfig.preset(preset, num_layers=num_layers, scan_layers=scan, remat_policy=remat,
                                  dtype="bfloat16", max_position_embeddings=seq, **overrides)
    model = DecoderOnlyModel(config)
    opt = optimizers.make_optimizer(name=optimizer, learning_rate=1e-3)
    shapes = {"decoder_input_tokens": (batch, seq)}
    start = time.perf_counter()
    abstract = train_state.abstract_train_state(model=model, optimizer=opt, input_shapes=shapes, mesh=mesh,
                                                rules=rules)
    shardings = train_state.state_shardings(abstract)
    batch_sh = partitioning.batch_sharding(mesh)
    step = make_train_step(model=model, optimizer=opt, state_shardings=shardings, batch_shardings=batch_sh,
                           mesh=mesh, rules=rules, options=StepOptions(dropout=False))
    features = {n: jax.ShapeDtypeStruct((batch, seq), jnp.float32 if n == "decoder_loss_weights" else jnp.int32,
                                        sharding=batch_sh)
                for n in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")}
    abstract_s = time.perf_counter() - start
    with jax.set_mesh(mesh), partitioning.with_rules(rules):
        start = time.perf_counter()
        lowered = step.jitted.lower(abstract, features)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.params))
    arg_bytes = None if mem is None else int(mem.argument_size_in_bytes)
    temp_bytes = None if mem is None else int(mem.temp_size_in_bytes)
    return {"preset": preset, "layers": num_layers, "scan": scan, "params": params, "abstract_s": abstract_s,
            "lower_s": lower_s, "compile_s": compile_s, "argument_gib_per_device": None if arg_bytes is None
            else arg_bytes / 2**30, "temp_gib_per_device": None if temp_bytes is None else temp_bytes / 2**30}


def _fmt_fsdp(rows: list[dict]) -> str:
    lines = [f"{'optimizer':10s} {'N':>3s} {'params':>10s} {'total MiB':>10s} {'max/device MiB':>15s} "
             f"{'1/N MiB':>8s} {'ratio':>6s} {'param ratio':>11s} {'opt ratio':>9s}"]
    for r in rows:
        mib = lambda x: x / 2**20  # noqa: E731
        lines.append(f"{r['optimizer']:10s} {r['devices']:3d} {r['params']:10,d} {mib(r['total_bytes_total']):10.2f} "
                     f"{mib(r['total_bytes_max_device']):15.3f} {mib(r['total_bytes_total']) / r['devices']:8.3f} "
                     f"{r['total_ratio']:6.3f} {r['params_ratio']:11.3f} {r['opt_state_ratio']:9.3f}")
    return "\n".join(lines)


def _fmt_compile(rows: list[dict]) -> str:
    lines = [f"{'preset':10s} {'layers':>6s} {'scan':>5s} {'params':>8s} {'abstract s':>10s} {'lower s':>8s} "
             f"{'compile s':>9s} {'args GiB/dev':>12s} {'temp GiB/dev':>12s}"]
    for r in rows:
        arg = "-" if r["argument_gib_per_device"] is None else f"{r['argument_gib_per_device']:.2f}"
        tmp = "-" if r["temp_gib_per_device"] is None else f"{r['temp_gib_per_device']:.2f}"
        lines.append(f"{r['preset']:10s} {r['layers']:6d} {str(r['scan']):>5s} {r['params'] / 1e9:7.2f}B "
                     f"{r['abstract_s']:10.2f} {r['lower_s']:8.2f} {r['compile_s']:9.2f} {arg:>12s} {tmp:>12s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--tiny", action="store_true", help="a tiny FSDP model and a 1-layer tiny compile (tests)")
    p.add_argument("--skip_fsdp", action="store_true")
    p.add_argument("--skip_compile", action="store_true")
    p.add_argument("--compile_preset", default="palm_62b")
    p.add_argument("--depths", default="64", help="scanned depths to compile, comma separated")
    p.add_argument("--unscanned_depths", default="2,8,16", help="depths to compile with scan off ('' = none)")
    p.add_argument("--batch", type=int, default=8, help="global rows (one per device at the default)")
    p.add_argument("--seq", type=int, default=2560, help="row length (paper: inputs 2048 + targets 512)")
    args = p.parse_args(argv)
    print(f"{jax.device_count()} {jax.devices()[0].platform} devices, jax {jax.__version__}", flush=True)
    if not args.skip_fsdp:
        rows = [fsdp_memory(devices=args.devices, optimizer=o, tiny=args.tiny) for o in ("adamw", "adafactor")]
        print("(a) FSDP per-device parameter + optimizer bytes vs 1/N of the total")
        print(_fmt_fsdp(rows), flush=True)
    if not args.skip_compile:
        preset, batch, seq = args.compile_preset, args.batch, args.seq
        depths = [int(d) for d in args.depths.split(",") if d]
        unscanned = [int(d) for d in args.unscanned_depths.split(",") if d]
        if args.tiny:
            preset, depths, unscanned, seq = "tiny", [1], [1] if unscanned else [], 32
        rows = []
        print(f"(b) AOT lower + compile of the {preset} train step on {args.devices} devices (FSDP, abstract "
              f"inputs, batch {batch} x {seq}, remat full, Adafactor)", flush=True)
        for scan, layer_list in ((True, sorted(set(depths + unscanned))), (False, unscanned)):
            for n in layer_list:
                rows.append(compile_time(preset=preset, num_layers=n, scan=scan, devices=args.devices, batch=batch,
                                         seq=seq))
                print(f"  compiled {preset} layers={n} scan={scan}: {rows[-1]['compile_s']:.1f} s", flush=True)
                jax.clear_caches()
        print(_fmt_compile(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
