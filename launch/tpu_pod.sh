#!/usr/bin/env bash
# Symbol-tune on a Cloud TPU VM slice (or several slices): create, set up every worker, run the same
# command on all workers, stream logs, stop, delete.
#
#   launch/tpu_pod.sh create --name=st-v5p --zone=us-east5-a --accelerator=v5p-64 [--num_slices=2] [--spot]
#   launch/tpu_pod.sh setup  --name=st-v5p --zone=us-east5-a --repo=GIT_URL [--branch=main]
#   launch/tpu_pod.sh run    --name=st-v5p --zone=us-east5-a -- --gin_file=gin_configs/runs/symbol_tune.gin \
#                            --gin_file=gin_configs/models/flan_t5_xl.gin --gin.MODEL_DIR="'gs://bucket/run'"
#   launch/tpu_pod.sh logs | stop | delete --name=... --zone=...
#
# Every command accepts --dry-run, which prints the exact gcloud commands instead of running them.
# `create` asks for a queued resource (Google's current way to get TPU capacity, spot or not) with the
# runtime version of the accelerator's generation (--version overrides): v4 tpu-ubuntu2204-base,
# v5e (v5litepod-*) v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e. `setup` installs
# Python 3.11 (the images ship 3.10; the package needs >= 3.11) and a venv before pip install.
# `symbol-tuning train` starts JAX's distributed runtime by itself on a multi-host TPU VM, so every
# worker runs the identical command (a pod run started on only some workers hangs: --worker=all).
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || { usage; exit 2; }
action=$1; shift
name="" zone="" project="" accelerator="" version="" num_slices=1 spot=0 dry_run=0
repo="" branch="main" workdir="symbol_tuning"
train_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --num_slices=*) num_slices=${1#*=} ;;
    --repo=*) repo=${1#*=} ;;
    --branch=*) branch=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --spot) spot=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; train_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
  shift
done

[[ -n $name ]] || die "missing required flag --name"
[[ -n $zone ]] || die "missing required flag --zone"
[[ $num_slices =~ ^[1-9][0-9]*$ ]] || die "--num_slices must be a positive integer, got '$num_slices'"

common=(--zone="$zone")
[[ -n $project ]] && common+=(--project="$project")

run() {
  if [[ $dry_run == 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

# The TPU VM runtime version each generation needs (Cloud TPU docs, "TPU software versions").
runtime_version() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "unknown accelerator type '$1' (v4-N, v5litepod-N, v5p-N, v6e-N), or pass --version" ;;
  esac
}

# The worker list: one TPU VM for a single slice, one node per slice for a multi-slice queued resource.
nodes() {
  if [[ $num_slices == 1 ]]; then echo "$name"; else for i in $(seq 0 $((num_slices - 1))); do echo "$name-$i"; done; fi
}

# Multi-slice runs need the DCN coordinator (worker 0 of slice 0) and each slice's id in the environment.
coordinator_ip() {
  if [[ $dry_run == 1 ]]; then
    run gcloud compute tpus tpu-vm describe "$name-0" "${common[@]}" --format='value(networkEndpoints[0].ipAddress)' >&2
    echo "COORDINATOR_IP"
  else
    gcloud compute tpus tpu-vm describe "$name-0" "${common[@]}" --format='value(networkEndpoints[0].ipAddress)'
  fi
}

on_all_workers() {
  local cmd=$1 node slice=0 env_prefix="" ip=""
  [[ $num_slices -gt 1 ]] && ip=$(coordinator_ip)
  while read -r node; do
    if [[ $num_slices -gt 1 ]]; then
      env_prefix="export MEGASCALE_COORDINATOR_ADDRESS=$ip:8080 MEGASCALE_NUM_SLICES=$num_slices MEGASCALE_SLICE_ID=$slice MEGASCALE_PORT=8080; "
    fi
    run gcloud compute tpus tpu-vm ssh "$node" "${common[@]}" --worker=all --command="$env_prefix$cmd"
    slice=$((slice + 1))
  done < <(nodes)
}

case "$action" in
  create)
    [[ -n $accelerator ]] || die "missing required flag --accelerator (e.g. v5p-64, v4-32, v5litepod-16, v6e-8)"
    [[ -n $version ]] || version=$(runtime_version "$accelerator")
    extra=(); [[ $spot == 1 ]] && extra+=(--spot)
    if [[ $num_slices == 1 ]]; then
      extra+=(--node-id="$name")
    else
      extra+=(--node-count="$num_slices" --node-prefix="$name")
    fi
    run gcloud compute tpus queued-resources create "$name" "${common[@]}" --accelerator-type="$accelerator" \
      --runtime-version="$version" "${extra[@]}"
    ;;
  setup)
    [[ -n $repo ]] || die "missing required flag --repo (the git URL of your symbol_tuning checkout)"
    on_all_workers "set -e; if ! command -v python3.11 >/dev/null; then sudo add-apt-repository -y ppa:deadsnakes/ppa \
&& sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; fi; \
if [ ! -d $workdir ]; then git clone --branch $branch $repo $workdir; fi; \
cd $workdir && git fetch -q && git checkout -q $branch && git pull -q && python3.11 -m venv .venv && \
. .venv/bin/activate && pip install -q -U pip && pip install -q -c constraints.txt -e '.[gcs]' 'jax[tpu]'"
    ;;
  run)
    [[ ${#train_args[@]} -gt 0 ]] || die "missing training flags after '--' (e.g. -- --gin_file=gin_configs/runs/symbol_tune.gin)"
    quoted=$(printf '%q ' "${train_args[@]}")
    on_all_workers "cd $workdir && . .venv/bin/activate && nohup python -m symbol_tuning.train $quoted \
> \$HOME/symbol_tuning_train.log 2>&1 &"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$(nodes | head -n 1)" "${common[@]}" --worker=0 \
      --command="tail -n 200 -f \$HOME/symbol_tuning_train.log"
    ;;
  stop)
    on_all_workers "pkill -TERM -f symbol_tuning.train || true"
    ;;
  delete)
    run gcloud compute tpus queued-resources delete "$name" "${common[@]}" --force --quiet
    ;;
  *) die "unknown command '$action' (create, setup, run, logs, stop, delete)" ;;
esac
