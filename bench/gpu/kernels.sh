#!/usr/bin/env bash
# Runs on the GPU machine after `bench/gpu/device.sh prepare` (same call or a warm
# machine), from the checkout that carries dist/ (see README.md, "Custom kernels"):
#   1. the GPU tests (bundled: dist/test-gpu/*.test.js),
#   2. the GEMV micro-benchmark against MLX's quantized_matmul (bench/gpu/gemv.ts),
#   3. single-stream decode, 128 -> 256: Pensieve (GEMV on) and mlx-lm, then Pensieve with the GEMV off,
#   4. Nsight Compute: the micro-benchmark's kernels and one decode step, GEMV on and off.
# Everything lands in $W/out and comes back as $OUT/kernels-results.tgz (the device
# tool returns at most 8 files), with the short tables beside it.
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/pv
R=$W/out/kernels
OUT=${OUT:-$W/out}
mkdir -p "$R"
export PATH="$W/bin:$PATH"
# The GEMV alone, against MLX: the fused path (default) is measured by fused.sh.
export PENSIEVE_CLI="$PWD/dist/src/cli.js" PENSIEVE_BACKEND=cuda PENSIEVE_GPU_FUSED=0
MODEL=$W/phi3-mini-128k-4bit-random
log() { echo "[kernels $(date +%T)] $*"; }
# STEPS picks parts (default all), so the parts can be split over calls under the 600 s limit.
STEPS=" ${STEPS:-tests gemv single ncu} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
pack() { tar -czf "$OUT/kernels-results.tgz" -C "$R" . 2>/dev/null; }
trap pack EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
log "ncu: ${NCU:-none}"

# 1. Tests. test/support expects Phi-3's tokenizer and config in ../shared/fixtures.
if want tests; then
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  for t in dist/test-gpu/*.test.js; do
    timeout "${TEST_TIMEOUT:-400}" bun test --timeout 180000 "./$t" 2>&1 | tail -60
  done | tee -a "$R/gpu-tests.txt"
  log "tests done"
fi

# 2. Micro-benchmark.
want gemv && timeout 240 bun dist/bench/gpu/gemv.js --out "$R" --rows "${GEMV_ROWS:-1,2,4}" 2>&1 | tee "$R/gemv.txt"
cp "$R"/gemv-*.md "$OUT/" 2>/dev/null || true

# 3. Single stream, in process (the harness's own 128 -> 256 run, 3 repeats, engines interleaved).
BENCH=(bun dist/bench/run.js generate --model "$MODEL" --device gpu --python python3
  --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 3 --profile)
if want single; then
  PENSIEVE_GPU_GEMV=1 timeout 200 "${BENCH[@]}" --engines pensieve,mlx-lm --out-dir "$R/single-gemv-on" 2>&1 | tail -8
  PENSIEVE_GPU_GEMV=0 timeout 120 "${BENCH[@]}" --engines pensieve --out-dir "$R/single-gemv-off" 2>&1 | tail -6
fi
cat "$R"/single-gemv-on/*.md "$R"/single-gemv-off/*.md > "$OUT/single.md" 2>/dev/null || true
bun dist/bench/gpu/stamp-gpu.js "$R/gpu.txt" "$R" > /dev/null || true
# 4. Device time per kernel (caches flushed before each kernel, clocks as found).
if [ -n "${NCU:-}" ] && want ncu; then
  timeout 120 "$NCU" --clock-control none --cache-control all --print-units base --csv \
    --kernel-name regex:'gemv|qmv|qmm|quant|affine' \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    bun dist/bench/gpu/gemv.js --ncu --rows 1 > "$R/ncu-gemv.csv" 2> "$R/ncu-gemv.err"
  log "ncu gemv rc $?"
  for g in 1 0; do
    PENSIEVE_GPU_GEMV=$g timeout 150 "$NCU" --clock-control none --cache-control none --print-units base --csv \
      --profile-from-start off --metrics gpu__time_duration.sum \
      bun dist/bench/gpu/step-profile.js "$MODEL" 128 > "$R/ncu-step-gemv$g.csv" 2> "$R/ncu-step-gemv$g.err"
    log "ncu step (gemv $g) rc $?"
  done
  for f in "$R"/ncu-*.csv; do
    echo "== $(basename "$f")"
    bun dist/bench/gpu/ncu-summary.js "$f" --top 12
  done 2>&1 | tee "$R/ncu-summary.md"
  cp "$R/ncu-summary.md" "$OUT/" 2>/dev/null || true
fi

log "done"
