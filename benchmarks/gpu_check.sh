#!/usr/bin/env bash
# One-call GPU check: the PyTorch peer and our JAX trainer on the same shapes (ours before and after the
# peer, default and --fast options), a profile of the top ops, an XLA-flag A/B, then the other variants,
# scoring and the data-vs-trainer ratio as the budget allows; everything under $OUT, one comparison table
# printed last. See benchmarks/README.md.
#
#   bash benchmarks/gpu_check.sh --prepare    # here, before the device call: fills .devcarry/
#   bash benchmarks/gpu_check.sh              # on the GPU machine (carry .devcarry), within ~8 minutes
#   GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh   # tiny shapes on this CPU: the whole script end to end
#
# Environment: OUT (results folder; default runs/gpu_check), PYTHON (default python3),
# GPU_CHECK_BUDGET_S (wall budget, default 500), GPU_CHECK_PEER_LARGE=1 (also the peer's t5-large),
# PEER (peer script for --prepare; default ../shared/bench/peer_hf_torch.py beside the checkout),
# GPU_CHECK_XLA_B (the XLA flags of the A/B's B side).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--prepare" ]]; then
  # The peer script and the pure-Python packages the embedded symbol pools need (wordfreq's English
  # lists and its dependencies) that the GPU image lacks; .devcarry/ is git-ignored and carried.
  set -e
  rm -rf .devcarry && mkdir -p .devcarry/site/wordfreq/data
  cp "${PEER:-$REPO/../shared/bench/peer_hf_torch.py}" .devcarry/peer_hf_torch.py
  site=$("$PY" -c "import pathlib, wordfreq; print(pathlib.Path(wordfreq.__file__).parent.parent)")
  for pkg in ftfy langcodes locate wcwidth; do cp -r "$site/$pkg" .devcarry/site/; done
  cp "$site"/wordfreq/*.py .devcarry/site/wordfreq/
  cp "$site"/wordfreq/data/*_en.msgpack.gz .devcarry/site/wordfreq/data/
  find .devcarry -name __pycache__ -type d -prune -exec rm -rf {} +
  du -sh .devcarry
  exit 0
fi

TINY=${GPU_CHECK_TINY:-0}
OUT=${OUT:-$REPO/runs/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-500}
XLA_B=${GPU_CHECK_XLA_B:---xla_gpu_enable_triton_gemm=false --xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_command_buffer=}
TRACE=${TMPDIR:-/tmp}/gpu_check_trace
mkdir -p "$OUT"
export PYTHONPATH="$REPO:$REPO/.devcarry/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export TF_CPP_MIN_LOG_LEVEL=2
if [[ "$TINY" == 1 ]]; then
  export JAX_PLATFORMS=cpu
  SIZE=(--tiny)
  PEER_ARGS=(--tiny)
  SCORE=(--tiny)
  DATA=(--batches 5 --vocabs bytes)
else
  SIZE=()
  PEER_ARGS=(--compile)
  SCORE=(--batch 8 --prompt_len 512 --dtype bfloat16 --repeats 5)
  DATA=(--batches 40 --vocabs "bytes,spm" --processes 4)
fi
rm -f "$OUT"/peer.jsonl "$OUT"/ours.jsonl "$OUT"/comparison.txt
declare -a SUMMARY=()

# At most 8 files come back from a device call: log.txt (every step), peer.jsonl, ours.jsonl, comparison.txt.
LOG=$OUT/log.txt
: >"$LOG"

# step NAME MAX_SECONDS CMD...: run CMD under a timeout cut to the budget left; its output goes to $LOG.
step() {
  local name=$1 max=$2; shift 2
  local left=$((BUDGET - SECONDS - 15))
  local limit=$((max < left ? max : left))
  if ((limit < 20)); then SUMMARY+=("$name: skipped (budget)"); echo "== $name: skipped, ${left}s left"; return; fi
  echo "== $name (limit ${limit}s, ${SECONDS}s elapsed)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("$name: rc=$rc in $((SECONDS - t0))s")
}

VERSIONS="import sys, jax, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, jax.devices())"
{ nvidia-smi -L 2>&1 || echo "no nvidia-smi"; "$PY" -c "$VERSIONS"; } | tee -a "$LOG"

step imports 60 "$PY" - <<'EOF'
import importlib, sys
mods = ["symbol_tuning.training.train_state", "symbol_tuning.training.partitioning", "symbol_tuning.training.optimizers", "symbol_tuning.training.losses",
        "symbol_tuning.training.metrics", "symbol_tuning.training.checkpoints", "symbol_tuning.training.trainer", "symbol_tuning.models.decoder_model",
        "symbol_tuning.models.t5_model", "symbol_tuning.data.pipeline", "symbol_tuning.data.vocabularies"]
failed = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:  # report every module, not just the first
        failed.append(f"{m}: {type(e).__name__}: {e}")
heavy = sorted(k for k in ("tensorflow", "seqio", "gin", "tensorflow_datasets") if k in sys.modules)
print("import failures:", failed or "none")
print("TF / SeqIO / gin pulled in:", heavy or "none")
sys.exit(1 if failed or heavy else 0)
EOF

TT=(benchmarks/train_throughput.py "${SIZE[@]}" --json_out "$OUT/ours.jsonl")
PEER_PY=.devcarry/peer_hf_torch.py
# Ours runs before and after the peer (default options first, --fast after), 30 timed steps in 3 windows
# each; --fast (same function: fused matmuls, chunked loss, no grad norm, segment / length masks) also
# traces 3 steps and prints the top ops per step.
if [[ "$TINY" == 1 ]]; then
  TS=(--steps 6 --windows 3 --warmup 1)
  step ours_decoder 90 "$PY" "${TT[@]}" "${TS[@]}" --only decoder
  step peer 90 bash -c "$PY $PEER_PY ${PEER_ARGS[*]} | tee -a '$OUT/peer.jsonl'"
  step ours_decoder_fast 90 "$PY" "${TT[@]}" "${TS[@]}" --only decoder --fast --profile "$TRACE/dec"
  step ours_t5_fast 90 "$PY" "${TT[@]}" "${TS[@]}" --only t5-base --fast
else
  TS=(--steps 30 --windows 3 --warmup 3)
  step ours_decoder 100 "$PY" "${TT[@]}" "${TS[@]}" --only decoder
  step peer_decoder 120 bash -c "$PY $PEER_PY ${PEER_ARGS[*]} --only decoder | tee -a '$OUT/peer.jsonl'"
  step ours_decoder_fast 100 "$PY" "${TT[@]}" "${TS[@]}" --only decoder --fast --label fast --profile "$TRACE/dec"
  step ours_t5_base_fast 80 "$PY" "${TT[@]}" "${TS[@]}" --only t5-base --fast --label fast --profile "$TRACE/t5"
  # the peer's torch.compile of T5 took over 100 s in earlier calls: it gets 200
  step peer_t5_base 200 bash -c "$PY $PEER_PY ${PEER_ARGS[*]} --only t5-base | tee -a '$OUT/peer.jsonl'"
  step ours_t5_base 80 "$PY" "${TT[@]}" "${TS[@]}" --only t5-base
  # are the --fast attention paths (segment mask + is_causal, T5 lengths) right on cuDNN? all five cases
  step attention_parity 120 "$PY" benchmarks/attention_parity.py --seq 128
  # XLA-flag A/B: the --fast decoder above is A; B adds GPU_CHECK_XLA_B to XLA_FLAGS
  step ours_decoder_fast_xla_b 100 env XLA_FLAGS="${XLA_FLAGS:-} $XLA_B" "$PY" "${TT[@]}" "${TS[@]}" \
    --only decoder --fast --label xla_b
  step ours_decoder_fast_unscanned 120 "$PY" "${TT[@]}" "${TS[@]}" --only decoder --fast --scan_layers 0
  step ours_decoder_fast_fp8 100 "$PY" "${TT[@]}" "${TS[@]}" --only decoder --fast --fp8
  step ours_decoder_packed 80 "$PY" "${TT[@]}" "${TS[@]}" --only decoder --packed 4
  step ours_decoder_packed_segment_causal 80 "$PY" "${TT[@]}" "${TS[@]}" --only decoder --packed 4 --segment_causal
  step ours_decoder_fast_bf16_mu 80 "$PY" "${TT[@]}" "${TS[@]}" --only decoder --fast --mu_dtype bfloat16
  step ours_decoder_remat_minimal_attention 100 "$PY" "${TT[@]}" "${TS[@]}" --only decoder --fast \
    --remat minimal_attention
  # batch 32 needs remat on 80 GB: without it the step wants 86 GB (cuDNN attention) or 149 GB (XLA's).
  step ours_t5_large 90 "$PY" "${TT[@]}" "${TS[@]}" --only t5-large --remat full --fast
  if [[ "${GPU_CHECK_PEER_LARGE:-0}" == 1 ]]; then
    step peer_t5_large 120 bash -c "$PY $PEER_PY ${PEER_ARGS[*]} --only t5-large | tee -a '$OUT/peer.jsonl'"
  fi
fi

TRAINER_CONFIG="decoder-1.1B seq2048 bs8"
[[ "$TINY" == 1 ]] && TRAINER_CONFIG="llama-tiny"
if grep -q "\"$TRAINER_CONFIG\".*tokens_per_s" "$OUT/ours.jsonl" 2>/dev/null; then
  step data_vs_trainer 45 "$PY" benchmarks/data_vs_trainer.py "${DATA[@]}" --trainer_json "$OUT/ours.jsonl" \
    --trainer_config "$TRAINER_CONFIG"
else
  SUMMARY+=("data_vs_trainer: skipped (no trainer rate for $TRAINER_CONFIG)")
fi
if [[ "$TINY" == 1 ]]; then
  step attention_parity 90 "$PY" benchmarks/attention_parity.py --seq 32 --cases packed_causal,t5_lengths
  step scoring 90 "$PY" benchmarks/scoring.py "${SCORE[@]}"
else
  step scoring_decoder 60 "$PY" benchmarks/scoring.py --family decoder_only --preset decoder_1b "${SCORE[@]}"
  step scoring_t5 60 "$PY" benchmarks/scoring.py --family encoder_decoder --preset flan_t5_base "${SCORE[@]}"
fi

echo
{
  echo "== steps"; printf '%s\n' "${SUMMARY[@]}"
  echo "== ours vs peer (same machine, same call; peer: ${PEER_ARGS[*]})"
  "$PY" benchmarks/train_throughput.py --compare "$OUT/peer.jsonl" "$OUT/ours.jsonl" 2>&1
  echo "== top ops per step (jax.profiler, --fast rows; full tables in log.txt)"
  "$PY" benchmarks/train_throughput.py --top_ops "$OUT/ours.jsonl" 2>&1
} | tee "$OUT/comparison.txt"
