#!/usr/bin/env bash
# Issue 13: the fused verify path (PENSIEVE_GPU_FUSED_VERIFY=1; src/mlx/kernels-attention-verify.ts, the GEMVs at
# up to 16 rows, src/models/gpu-fused.ts). Runs on the GPU machine after `bench/gpu/device.sh prepare`
# (PREPARE_QUICK=1 will do; same call or a warm machine), from the checkout that carries dist/, in one call:
#   1. the GPU tests of the verify path (test/gpu/fused.test.ts, names with "verify": logits of a verify pass
#      of 2, 9, 16 tokens with the flag on vs off, then a one-token step after it; greedy prompt-lookup
#      speculation with the flag on == plain greedy decoding, tiny Llama and tiny Phi-3);
#   2. the cost of a verify pass of k = 2, 4, 8, 15, 16 drafts against a one-token step (bench spec-verify-cost),
#      full-size Phi-3 (random weights), after 512 prompt tokens: flag off, on, off, on (interleaved runs);
#   3. the same after 4096 prompt tokens, off then on.
# k = 15 is the longest fused pass (16 tokens, FUSED_VERIFY_MAX_ROWS); k = 16 (17 tokens) is past it, unfused
# both ways (a control). Everything lands in $OUT/verify as it goes (a call cut short keeps what is done).
# SKIP_TESTS=1 leaves step 1 out; N (default 30) sets the samples per shape; KS the draft lengths; SWEEP=1 adds a sweep of the
# GEMV's configuration at 9-16 rows (PENSIEVE_GEMV_VERIFY_ROWS x PENSIEVE_GEMV_VERIFY_WARPS).
# Expected time: tests ~2-3 min (kernel compiles at each new L, then cached in /tmp/mlx/<version>/ptx),
# each bench run ~40-70 s (load, 512-token prefill, warm-up, 30 x 5 passes): ~8 min in all.
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/pv
OUT=${OUT:-$W/out}
R=$OUT/verify
mkdir -p "$R"
export PATH="$W/bin:$PATH" PENSIEVE_CLI="$PWD/dist/src/cli.js" PENSIEVE_BACKEND=cuda
MODEL=$W/phi3-mini-128k-4bit-random
log() { echo "[verify $(date +%T)] $*" | tee -a "$R/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$R/gpu.txt"

# 1. Tests. test/support expects Phi-3's tokenizer and config in ../shared/fixtures.
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  timeout 240 bun test --timeout 180000 ./dist/test-gpu/fused.test.js -t verify 2>&1 | tail -30 | tee "$R/gpu-tests.txt"
  log "tests: $(grep -E '^ *[0-9]+ (pass|fail)' "$R/gpu-tests.txt" | tr '\n' ' ')"
fi

# 2-3. Verify cost against a one-token step, flag off / on.
cost() { # prompt flag [qmm]
  PENSIEVE_GPU_QMM=${3:-0} PENSIEVE_GPU_FUSED_VERIFY=$2 timeout 150 bun dist/bench/run.js spec-verify-cost --model "$MODEL" \
    --device gpu --prompt "$1" --ks "${KS:-2,4,8,15,16}" --n "${N:-30}" --out-dir "$R/cost-p$1-verify$2-qmm${3:-0}" 2>&1 |
    grep -E '^\||step:' | sed "s/^/p$1 verify=$2 qmm=${3:-0} /" | tee -a "$R/log.txt"
}
# QMM_ONLY=1: only the batched W4A16 kernel (PENSIEVE_GPU_QMM=1) for the verify pass's 3-17 rows, against verify=0
# (the H200 run of 2026-12-06f: unfused 2.30x a step at k = 8, the fused GEMV pass 2.86x: ALU-bound past 8 rows).
if [ "${QMM_ONLY:-0}" = 1 ]; then
  for q in 0 1 0 1; do cost 512 0 $q; done
elif [ "${QUICK:-0}" = 1 ]; then
  # QUICK=1 (a short lease): off then on at 512, on at 4,000 (below Phi-3's RoPE boundary of 4,096).
  for f in 0 1; do cost 512 $f; done
  cost 4000 1
else
  for f in 0 1 0 1; do cost 512 $f; done
  for f in 0 1; do cost 4096 $f; done
  cost 512 0 1
fi
# SWEEP=1 (~3 min more): the GEMV's rows per warp x warps per block at 9-16 rows of x, flag on, k = 8 and 15.
if [ "${SWEEP:-0}" = 1 ]; then
  for rw in 2:8 4:4 4:8 1:4; do
    IFS=: read -r rows warps <<< "$rw"
    PENSIEVE_GPU_FUSED_VERIFY=1 PENSIEVE_GEMV_VERIFY_ROWS=$rows PENSIEVE_GEMV_VERIFY_WARPS=$warps timeout 150 \
      bun dist/bench/run.js spec-verify-cost --model "$MODEL" --device gpu --prompt 512 --ks 8,15 --n 20 \
      --out-dir "$R/sweep-rows$rows-warps$warps" 2>&1 | grep -E '^\| [0-9]|step:' | sed "s/^/rows=$rows warps=$warps /" |
      tee -a "$R/log.txt"
  done
fi
for d in "$R"/cost-* "$R"/sweep-*; do echo "== $(basename "$d")"; cat "$d"/*.md 2>/dev/null; done > "$OUT/verify-cost.md"
bun dist/bench/gpu/stamp-gpu.js "$R/gpu.txt" "$R" > /dev/null 2>&1 || true
log done
