#!/usr/bin/env bash
# Issue 11, item 3: the batched 4-bit matmul (src/mlx/kernels-qmm.ts). Runs on the
# GPU machine after `bench/gpu/device.sh prepare` (same call or a warm machine),
# from the checkout that carries dist/ (pack.sh bundles what this needs):
#   bash bench/gpu/batched.sh [all|tests|micro|load]      (all = the three: more than one 600 s call)
#   1. tests: the GPU tests (dist/test-gpu/qmm.test.js: the kernel against MLX's
#      quantized_matmul for 2..64 rows, greedy tokens of a batch on tiny Llama/Phi-3
#      with the kernel on and off);
#   2. micro: bench/gpu/qmm.ts, rows 2,4,8,16,32,64 on Phi-3-mini's shapes: the kernel
#      vs MLX quantized_matmul vs the float16 dense matmul, us and GB/s, and a sweep;
#   3. load: LEVELS (default 8,32) concurrent streams over HTTP, one server at a time (LOAD_SERVERS,
#      default "qmm dense mlx-lm"; also "qmm-atomics": split-K by float atomics, not clusters),
#      device memory sampled (nvidia-smi, every 200 ms) and Pensieve's MLX peak (/metrics):
#      Pensieve with PENSIEVE_GPU_QMM=1 (the kernel, no dense copies), Pensieve by default
#      (dense float16 copies), mlx_lm.server.
# Results land in $W/out/batched and come back as $OUT/batched-results.tgz, with the short
# tables beside it; every JSON gets the GPU's name (stamp-gpu.ts).
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/pv
R=$W/out/batched
OUT=${OUT:-$W/out}
mkdir -p "$R"
export PATH="$W/bin:$PATH"
export PENSIEVE_CLI="$PWD/dist/src/cli.js" PENSIEVE_BACKEND=cuda
MODEL=$W/phi3-mini-128k-4bit-random
BAN="32000,32001,32007,$(seq -s, 32011 32063)"
PHASE=${1:-all}
log() { echo "[batched $(date +%T)] $*"; }
pack() {
  bun dist/bench/gpu/stamp-gpu.js "$R/gpu.txt" "$R" > /dev/null 2>&1 || true
  tar -czf "$OUT/batched-results.tgz" -C "$R" . 2>/dev/null
}
trap pack EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"

if [ "$PHASE" = all ] || [ "$PHASE" = tests ]; then
  # test/support expects Phi-3's tokenizer and config in ../shared/fixtures.
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  # Streamed (not through tail): a call that ends early still shows how far the tests got.
  timeout "${TEST_TIMEOUT:-400}" bun test --timeout 180000 ./dist/test-gpu/qmm.test.js 2>&1 | tee "$R/gpu-tests.txt"
  log "tests done"
fi

if [ "$PHASE" = all ] || [ "$PHASE" = micro ]; then
  timeout 200 bun dist/bench/gpu/qmm.js --out "$R" --rows "${QMM_ROWS:-2,4,8,16,32,64}" 2>&1 | tee "$R/qmm.txt"
  if [ "${PIPESTATUS[0]}" != 0 ]; then
    # The cluster split-K (sm_90 thread block clusters) is the newest part: without it, float atomics and a cast.
    log "micro-benchmark failed; again with PENSIEVE_GPU_QMM_CLUSTER=0"
    PENSIEVE_GPU_QMM_CLUSTER=0 timeout 200 bun dist/bench/gpu/qmm.js --out "$R" --rows "${QMM_ROWS:-2,4,8,16,32,64}" \
      2>&1 | tee "$R/qmm-no-cluster.txt"
  fi
  # bfloat16 (the random Phi-3's dtype), shorter.
  timeout 100 bun dist/bench/gpu/qmm.js --out "$R" --dtype bfloat16 --rows 8,32 --no-sweep 2>&1 | tee "$R/qmm-bf16.txt"
  cp "$R"/qmm-*.md "$OUT/" 2>/dev/null || true
  log "micro-benchmark done"
fi

# One load run of one server, device memory sampled; $1 label, $2 server, then env assignments.
load_one() {
  local label=$1 server=$2
  shift 2
  local dir="$R/load-$label"
  mkdir -p "$dir"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$dir/memory-used-mib.txt" 2>/dev/null &
  local smi=$!
  # Pensieve's own MLX peak, from /metrics while it runs (the first server takes port 18701).
  ( while sleep 1; do
      v=$(bun -e 'const r = await fetch("http://127.0.0.1:18701/metrics").then((r) => r.text()).catch(() => "");
        const m = /^pensieve_mlx_peak_memory_bytes (\S+)/m.exec(r); if (m) console.log(m[1]);' 2>/dev/null)
      [ -n "$v" ] && echo "$v" > "$dir/mlx-peak-bytes.txt"
    done ) &
  local poll=$!
  env "$@" timeout "${LOAD_TIMEOUT:-170}" bun dist/bench/run.js load --model "$MODEL" --device gpu --levels "${LEVELS:-8,32}" \
    --servers "$server" --python python3 --requests-per-client "${REQUESTS:-2}" --out-tokens 128 \
    --prompt-tokens 128,256,512 --ban-tokens "$BAN" --out-dir "$dir" 2>&1 | grep -v '^\[load\] *$' | tail -12
  kill "$smi" "$poll" 2>/dev/null
  wait "$smi" "$poll" 2>/dev/null
  local peak
  peak=$(sort -n "$dir/memory-used-mib.txt" 2>/dev/null | tail -1)
  echo "$label: device memory used, peak ${peak:-?} MiB; MLX peak $(cat "$dir/mlx-peak-bytes.txt" 2>/dev/null || echo "-") bytes" |
    tee -a "$R/load-memory.txt"
}

if [ "$PHASE" = all ] || [ "$PHASE" = load ]; then
  for s in ${LOAD_SERVERS:-qmm dense mlx-lm}; do
    case $s in
    qmm) load_one qmm pensieve PENSIEVE_GPU_QMM=1 ;;
    qmm-atomics) load_one qmm-atomics pensieve PENSIEVE_GPU_QMM=1 PENSIEVE_GPU_QMM_CLUSTER=0 ;;
    dense) load_one dense pensieve PENSIEVE_GPU_QMM=0 ;;
    mlx-lm) load_one mlx-lm mlx-lm PENSIEVE_GPU_QMM=0 ;;
    esac
  done
  for d in qmm qmm-atomics dense mlx-lm; do
    echo "== $d"
    grep -h '^| ' "$R/load-$d"/load-*.md 2>/dev/null | head -8
  done | tee "$R/load-summary.md"
  cat "$R/load-memory.txt" >> "$R/load-summary.md" 2>/dev/null
  cp "$R/load-summary.md" "$OUT/" 2>/dev/null || true
  log "load done"
fi
log "done"
