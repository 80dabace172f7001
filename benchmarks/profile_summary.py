"""The top ops per step of a `jax.profiler` trace, read with `jax.profiler.ProfileData` (no TensorBoard).

    python benchmarks/profile_summary.py TRACE_DIR [--steps N] [--top 15]

On a GPU the device planes' "XLA Ops" lines hold one event per kernel (fusions, cuBLAS / cuDNN calls);
on a CPU the host's XLA client threads hold the executed thunks. Time per op name is summed over the
trace and divided by the number of traced steps; the table lists the largest with their share.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
from typing import Any

import jax

SKIPPED = ("ThreadpoolListener", "end: ", "ThunkExecutor::Execute")  # CPU wrappers around the ops


def latest_xplane(trace_dir: str) -> str:
    """The newest *.xplane.pb under a trace directory; SystemExit naming the directory if none."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        raise SystemExit(f"{trace_dir}: no *.xplane.pb (was jax.profiler.trace run with this directory?)")
    return files[-1]


def op_times(xplane_file: str) -> dict[str, float]:
    """Summed nanoseconds per op name: device "XLA Ops" lines, or, with no device plane, the host's XLA lines."""
    data = jax.profiler.ProfileData.from_file(xplane_file)
    device, host = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if plane.name.startswith("/device:") and line.name == "XLA Ops":
                target = device
            elif plane.name.startswith("/host:") and "XLA" in line.name:
                target = host
            else:
                continue
            for event in line.events:
                if not event.name.startswith(SKIPPED):
                    target[event.name] += float(event.duration_ns)
    return dict(device or host)


def summarize(trace_dir: str, *, steps: int, top: int = 15) -> list[dict[str, Any]]:
    """[{op, ms_per_step, share}] for the `top` ops by time, largest first (share of all op time)."""
    times = op_times(latest_xplane(trace_dir))
    total = sum(times.values()) or 1.0
    rows = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    return [dict(op=name, ms_per_step=ns / 1e6 / max(steps, 1), share=ns / total) for name, ns in rows]


def format_summary(rows: list[dict[str, Any]], *, total_ms: float | None = None) -> str:
    """A fixed-width table of summarize()'s rows."""
    lines = [f"{'ms/step':>9s} {'share':>6s}  op" + (f"   (all ops: {total_ms:.2f} ms/step)" if total_ms else "")]
    lines += [f"{r['ms_per_step']:9.3f} {100 * r['share']:5.1f}%  {r['op'][:100]}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace_dir")
    p.add_argument("--steps", type=int, default=1, help="steps inside the trace (times are per step)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    print(format_summary(summarize(args.trace_dir, steps=args.steps, top=args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
