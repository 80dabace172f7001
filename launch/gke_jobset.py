"""Render (and apply) a GKE JobSet that symbol-tunes on one or more TPU slices.

    python launch/gke_jobset.py --name=st-xl --image=REGISTRY/symbol-tuning:latest --tpu=v5p \
        --topology=4x4x4 --num_slices=2 --dry-run -- --gin_file=gin_configs/runs/symbol_tune.gin \
        --gin.MODEL_DIR="'gs://bucket/run'"

One Job per slice (replicated `num_slices` times), one pod per TPU VM host, every pod running the same
`python -m symbol_tuning.train` command; JobSet's exclusive-topology annotation puts each Job on its own
node pool (slice) and JAX's TPU runtime finds its peers by itself. `--dry-run` prints the manifest and
the kubectl command instead of applying it.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys

# accelerator label and chips per host by TPU generation (GKE node labels)
TPU_TYPES = {
    "v4": ("tpu-v4-podslice", 4),
    "v5e": ("tpu-v5-lite-podslice", 4),
    "v5p": ("tpu-v5p-slice", 4),
    "v6e": ("tpu-v6e-slice", 4),
}


def hosts_per_slice(topology: str, chips_per_host: int) -> int:
    try:
        dims = [int(d) for d in topology.lower().split("x")]
    except ValueError:
        raise SystemExit(f"gke_jobset.py: --topology must look like 2x2x4, got {topology!r}")
    chips = math.prod(dims)
    return max(1, chips // chips_per_host)


def render(*, name: str, image: str, tpu: str, topology: str, num_slices: int, train_args: list[str],
           namespace: str = "default") -> str:
    """The JobSet manifest as YAML text."""
    accelerator, chips_per_host = TPU_TYPES[tpu]
    hosts = hosts_per_slice(topology, chips_per_host)
    command = " ".join(["python", "-m", "symbol_tuning.train", *map(shlex.quote, train_args)])
    return f"""apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: {name}
  namespace: {namespace}
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: 3
  replicatedJobs:
  - name: slice
    replicas: {num_slices}
    template:
      spec:
        parallelism: {hosts}
        completions: {hosts}
        backoffLimit: 0
        template:
          spec:
            restartPolicy: Never
            nodeSelector:
              cloud.google.com/gke-tpu-accelerator: {accelerator}
              cloud.google.com/gke-tpu-topology: {topology}
            containers:
            - name: train
              image: {image}
              command: ["bash", "-c", {json.dumps(command)}]
              resources:
                limits:
                  google.com/tpu: {chips_per_host}
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="gke_jobset.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--image", required=True, help="container image with symbol_tuning installed")
    parser.add_argument("--tpu", required=True, choices=sorted(TPU_TYPES))
    parser.add_argument("--topology", required=True, help="slice topology, e.g. 2x2x4 (v4/v5p) or 4x4 (v5e)")
    parser.add_argument("--num_slices", type=int, default=1)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.num_slices < 1:
        parser.error(f"--num_slices must be >= 1, got {args.num_slices}")
    if not train_args:
        parser.error("missing training flags after '--' (e.g. -- --gin_file=gin_configs/runs/symbol_tune.gin)")
    manifest = render(name=args.name, image=args.image, tpu=args.tpu, topology=args.topology,
                      num_slices=args.num_slices, train_args=train_args, namespace=args.namespace)
    kubectl = ["kubectl", "apply", "-f", "-"]
    if args.dry_run:
        print(manifest)
        print("# then: " + " ".join(kubectl) + "  (manifest on stdin)")
        return 0
    return subprocess.run(kubectl, input=manifest.encode(), check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
