"""Render (and apply) a GKE JobSet that symbol-tunes on one or more TPU slices.

    python launch/gke_jobset.py --name=st-xl --image=REGISTRY/symbol-tuning:latest --tpu=v5p \
        --topology=4x4x4 --num_slices=2 [--queue=LOCAL_QUEUE] --dry-run -- \
        --gin_file=gin_configs/runs/symbol_tune.gin --gin.MODEL_DIR="'gs://bucket/run'"

One Job per slice (replicated `num_slices` times), one pod per TPU VM host, every pod running the same
`python -m symbol_tuning.train` command; JobSet's exclusive-topology annotation puts each Job on its own
node pool (slice), and GKE's TPU webhook gives each pod the TPU_WORKER_* (and multi-slice MEGASCALE_*)
variables from which `train` starts JAX's distributed runtime. As GKE's TPU guides set them: hostNetwork
with dnsPolicy ClusterFirstWithHostNet (TPU hosts talk over the node network), a termination grace
period long enough for the SIGTERM checkpoint, and a failurePolicy whose restarts resume from the last
checkpoint. v5e/v6e topologies up to 2x4 are one host with all their chips (topologies/tpu_v5e_8.gin:
one 8-chip host); larger ones have 4 chips per host, as v4 and v5p always do. `--queue` adds the Kueue
queue-name label. `--dry-run` prints the manifest and the kubectl command instead of applying it.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys

# GKE node label, chips per host of multi-host slices, largest single-host slice (chips), by generation.
TPU_TYPES = {
    "v4": ("tpu-v4-podslice", 4, 4),
    "v5e": ("tpu-v5-lite-podslice", 4, 8),
    "v5p": ("tpu-v5p-slice", 4, 4),
    "v6e": ("tpu-v6e-slice", 4, 8),
}
PORTS = (8471, 8080)  # TPU runtime between hosts of a slice; megascale (DCN) between slices


def slice_shape(tpu: str, topology: str) -> tuple[int, int]:
    """(hosts, chips per host) of one slice of `topology` on generation `tpu`."""
    _, per_host, single_host = TPU_TYPES[tpu]
    try:
        dims = [int(d) for d in topology.lower().split("x")]
    except ValueError:
        raise SystemExit(f"gke_jobset.py: --topology must look like 2x2x4 or 2x4, got {topology!r}") from None
    if len(dims) != (3 if tpu in ("v4", "v5p") else 2) or min(dims) < 1:
        raise SystemExit(f"gke_jobset.py: --topology={topology} is not a {tpu} topology "
                         f"({'AxBxC' if tpu in ('v4', 'v5p') else 'AxB'})")
    chips = math.prod(dims)
    if chips <= single_host:
        return 1, chips
    if chips % per_host:
        raise SystemExit(f"gke_jobset.py: --topology={topology} ({chips} chips) does not fill {per_host}-chip hosts")
    return chips // per_host, per_host


def manifest(*, name: str, image: str, tpu: str, topology: str, num_slices: int, train_args: list[str],
             namespace: str = "default", queue: str | None = None, max_restarts: int = 3,
             grace_period_s: int = 300) -> dict:
    """The JobSet manifest as a dict."""
    accelerator = TPU_TYPES[tpu][0]
    hosts, chips = slice_shape(tpu, topology)
    command = " ".join(["python", "-m", "symbol_tuning.train", *map(shlex.quote, train_args)])
    metadata = {"name": name, "namespace": namespace,
                "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}}
    if queue:
        metadata["labels"] = {"kueue.x-k8s.io/queue-name": queue}
    pod = {
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "terminationGracePeriodSeconds": grace_period_s,
        "restartPolicy": "Never",
        "nodeSelector": {"cloud.google.com/gke-tpu-accelerator": accelerator,
                         "cloud.google.com/gke-tpu-topology": topology},
        "containers": [{
            "name": "train", "image": image, "command": ["bash", "-c", command],
            "ports": [{"containerPort": p} for p in PORTS],
            "resources": {"requests": {"google.com/tpu": chips}, "limits": {"google.com/tpu": chips}},
        }],
    }
    job = {"parallelism": hosts, "completions": hosts, "backoffLimit": 0, "template": {"spec": pod}}
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": metadata,
            "spec": {"failurePolicy": {"maxRestarts": max_restarts},
                     "replicatedJobs": [{"name": "slice", "replicas": num_slices, "template": {"spec": job}}]}}


def render(**kwargs) -> str:
    """The JobSet manifest as YAML text (JSON is YAML; kubectl reads either)."""
    return json.dumps(manifest(**kwargs), indent=2) + "\n"


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
    parser.add_argument("--queue", default=None, help="Kueue LocalQueue name (adds kueue.x-k8s.io/queue-name)")
    parser.add_argument("--max_restarts", type=int, default=3, help="JobSet restarts after a failure")
    parser.add_argument("--grace_period_s", type=int, default=300,
                        help="pod termination grace period: time for the SIGTERM checkpoint")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.num_slices < 1:
        parser.error(f"--num_slices must be >= 1, got {args.num_slices}")
    if not train_args:
        parser.error("missing training flags after '--' (e.g. -- --gin_file=gin_configs/runs/symbol_tune.gin)")
    text = render(name=args.name, image=args.image, tpu=args.tpu, topology=args.topology,
                  num_slices=args.num_slices, train_args=train_args, namespace=args.namespace, queue=args.queue,
                  max_restarts=args.max_restarts, grace_period_s=args.grace_period_s)
    kubectl = ["kubectl", "apply", "-f", "-"]
    if args.dry_run:
        print(text)
        print("# then: " + " ".join(kubectl) + "  (manifest on stdin)")
        return 0
    return subprocess.run(kubectl, input=text.encode(), check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
