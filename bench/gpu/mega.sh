#!/usr/bin/env bash
# Issue 11: the decode-layer megakernel (PENSIEVE_GPU_MEGA=1, src/mlx/kernels-layer.ts, src/models/gpu-mega.ts), a
# short check on the GPU machine after `bench/gpu/device.sh prepare` (PREPARE_QUICK=1 will do), from the checkout
# that carries dist/ (pack.sh bundles test/gpu/fused.test.ts). Each step under its own timeout, output kept as it goes
# in $OUT/mega, so a short lease keeps what is done:
#   1. the GPU tests named "megakernel" (fused.test.ts): the megakernel against the five fused kernels bit for bit,
#      greedy tokens of tiny Llama / Phi-3 with it on and off (TEST_TIMEOUT, default 170 s; SKIP_TESTS=1 skips);
#   2. greedy text of the full-size Phi-3 (GEN tokens, default 100) on the fused path with the kernel writing the cache
#      (the megakernel's numerics) and with the megakernel, compared;
#   3. single stream 128 -> 256 (the harness's generate --profile, REPEAT default 1): the same two, Pensieve only.
# PENSIEVE_GPU_MEGA_SMS (default 132) must not exceed the GPU's SMs; PENSIEVE_GPU_MEGA_BLOCKS_PER_SM=2 is the knob.
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/pv
OUT=${OUT:-$W/out}
R=$OUT/mega
mkdir -p "$R"
export PATH="$W/bin:$PATH" PENSIEVE_CLI="$PWD/dist/src/cli.js" PENSIEVE_BACKEND=cuda PENSIEVE_GPU_GEMV=0
MODEL=$W/phi3-mini-128k-4bit-random
log() { echo "[mega $(date +%T)] $*" | tee -a "$R/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,multiprocessor_count --format=csv 2>/dev/null | tee "$R/gpu.txt" ||
  nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$R/gpu.txt"

# 1. Tests. test/support expects Phi-3's tokenizer and config in ../shared/fixtures.
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  timeout "${TEST_TIMEOUT:-170}" bun test --timeout 160000 ./dist/test-gpu/fused.test.js -t megakernel > "$R/tests.txt" 2>&1
  log "tests (rc $?): $(grep -cE '^\(pass\)' "$R/tests.txt") pass, $(grep -cE '^\(fail\)' "$R/tests.txt") fail"
  grep -E '^\((pass|fail)\)|error' "$R/tests.txt" | head -30 | tee -a "$R/log.txt"
fi

# 2. Greedy text: the last line of each is the cli's stats line (dropped before comparing).
for m in 0 1; do
  timeout 120 env PENSIEVE_GPU_FUSED=1 PENSIEVE_GPU_FUSED_KV_WRITE=1 PENSIEVE_GPU_MEGA=$m bun dist/src/cli.js generate \
    --model "$MODEL" --raw --prompt "Hello there" --max-tokens "${GEN:-100}" --device gpu > "$R/text-mega$m.txt" 2>&1
  log "mega=$m (rc $?): $(tail -1 "$R/text-mega$m.txt")"
done
cmp -s <(sed '$d' "$R/text-mega0.txt") <(sed '$d' "$R/text-mega1.txt") && log "greedy text: equal" || log "greedy text: DIFFERENT"

# 3. Single stream, 128 -> 256, in process: fused (kernel-written KV) then the megakernel.
BENCH=(bun dist/bench/run.js generate --model "$MODEL" --device gpu --python python3
  --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --profile --repeat "${REPEAT:-1}")
for m in 0 1; do
  env PENSIEVE_GPU_FUSED_KV_WRITE=1 PENSIEVE_GPU_MEGA=$m timeout 120 "${BENCH[@]}" --engines pensieve \
    --out-dir "$R/single-mega$m" 2>&1 | grep '^| \(pensieve\|engine\)' | sed "s/^| pensieve/| pensieve mega=$m/" |
    tee -a "$R/log.txt"
done
log done
