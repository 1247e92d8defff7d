#!/usr/bin/env bash
# Issue 11, the fused decode path (PENSIEVE_GPU_FUSED=1, src/models/gpu-fused.ts). Runs on the GPU
# machine after `bench/gpu/device.sh prepare` (same call or a warm machine), from the checkout that
# carries dist/ (bench/gpu/pack.sh bundles the tests and scripts):
#   1. the GPU tests: fused kernels against MLX's unfused ops, greedy tokens fused vs unfused
#      (tiny Llama, tiny Phi-3), and the custom-kernel ABI test;
#   2. single-stream decode, 128 -> 256 (the harness's `generate`, --profile: host vs device ms per
#      step), in rounds: Pensieve fused + mlx-lm interleaved, then Pensieve unfused (round 1 also
#      fused with MLX's sdpa, PENSIEVE_GPU_FUSED_ATTENTION=0);
#   3. Nsight Compute: every kernel of one decode step, fused on and off (step-profile.ts).
# Everything lands in $W/out/fused and comes back as $OUT/fused-results.tgz, the short tables beside it.
# SKIP_TESTS=1 / SKIP_NCU=1 leave steps out; ROUNDS (default 2) sets the rounds of step 2; SWEEP=1 adds a
# sweep of the attention kernel's knobs (PENSIEVE_FUSED_KEYS_PER_SPLIT x PENSIEVE_FUSED_ATTENTION_KB, ~4 min).
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/pv
R=$W/out/fused
OUT=${OUT:-$W/out}
mkdir -p "$R"
export PATH="$W/bin:$PATH"
export PENSIEVE_CLI="$PWD/dist/src/cli.js" PENSIEVE_BACKEND=cuda PENSIEVE_GPU_GEMV=0
MODEL=$W/phi3-mini-128k-4bit-random
log() { echo "[fused $(date +%T)] $*"; }
pack() { tar -czf "$OUT/fused-results.tgz" -C "$R" . 2>/dev/null; }
trap pack EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
log "ncu: ${NCU:-none}"

# 1. Tests. test/support expects Phi-3's tokenizer and config in ../shared/fixtures.
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  for t in dist/test-gpu/fused.test.js dist/test-gpu/kernels-abi.test.js; do
    timeout 300 bun test --timeout 180000 "./$t" 2>&1 | tail -40
  done | tee "$R/gpu-tests.txt"
  cp "$R/gpu-tests.txt" "$OUT/fused-tests.txt"
  log "tests done"
fi

# 2. Single stream, in process, 128 -> 256. Each round: fused + mlx-lm (interleaved by the harness), then unfused.
BASE=(bun dist/bench/run.js generate --model "$MODEL" --device gpu --python python3
  --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --profile)
BENCH=("${BASE[@]}" --repeat 2)
for r in $(seq 1 "${ROUNDS:-2}"); do
  PENSIEVE_GPU_FUSED=1 timeout 200 "${BENCH[@]}" --engines pensieve,mlx-lm --out-dir "$R/single-r$r-fused-on" 2>&1 | tail -8
  PENSIEVE_GPU_FUSED=0 timeout 120 "${BENCH[@]}" --engines pensieve --out-dir "$R/single-r$r-fused-off" 2>&1 | tail -6
  # Round 1 also: fused GEMVs with MLX's sdpa instead of the attention kernel (what the kernel adds).
  [ "$r" = 1 ] && PENSIEVE_GPU_FUSED=1 PENSIEVE_GPU_FUSED_ATTENTION=0 timeout 120 "${BENCH[@]}" --engines pensieve \
    --out-dir "$R/single-r$r-fused-sdpa" 2>&1 | tail -6
done
for d in "$R"/single-r*; do echo "== $(basename "$d")"; cat "$d"/*.md 2>/dev/null; done > "$OUT/fused-single.md"
# SWEEP=1: the fused path's knobs, Pensieve alone (keys per attention split, keys per warp per round).
if [ "${SWEEP:-0}" = 1 ]; then
  for kps in 64 128 512; do
    for kb in 4 8; do
      PENSIEVE_GPU_FUSED=1 PENSIEVE_FUSED_KEYS_PER_SPLIT=$kps PENSIEVE_FUSED_ATTENTION_KB=$kb timeout 120 "${BASE[@]}" \
        --repeat 1 --engines pensieve --out-dir "$R/sweep-kps$kps-kb$kb" 2>&1 | tail -3
    done
  done
  for d in "$R"/sweep-*; do echo "== $(basename "$d")"; cat "$d"/*.md 2>/dev/null; done > "$OUT/fused-sweep.md"
fi
bun dist/bench/gpu/stamp-gpu.js "$R/gpu.txt" "$R" > /dev/null || true
log "single stream done"

# 3. Every kernel of one decode step, fused on and off (clocks as found, caches not flushed).
if [ -n "${NCU:-}" ] && [ "${SKIP_NCU:-0}" != 1 ]; then
  for g in 1 0; do
    PENSIEVE_GPU_FUSED=$g timeout 150 "$NCU" --clock-control none --cache-control none --print-units base --csv \
      --profile-from-start off --metrics gpu__time_duration.sum \
      bun dist/bench/gpu/step-profile.js "$MODEL" 128 > "$R/ncu-step-fused$g.csv" 2> "$R/ncu-step-fused$g.err"
    log "ncu step (fused $g) rc $?"
  done
  for f in "$R"/ncu-step-*.csv; do
    echo "== $(basename "$f")"
    bun dist/bench/gpu/ncu-summary.js "$f" --top 16
  done 2>&1 | tee "$R/ncu-summary.md"
  cp "$R/ncu-summary.md" "$OUT/fused-ncu-summary.md" 2>/dev/null || true
fi
cp "$R/gpu.txt" "$OUT/fused-gpu.txt"
log "done"
