#!/usr/bin/env bash
# Runs on the GPU machine after `bench/gpu/device.sh prepare`: single-stream decode (128 -> 256, in process), Pensieve
# and mlx-lm interleaved, under MLX CUDA-graph settings. MLX's CUDA backend records each primitive as a graph node on
# the calling thread and commits a graph every MLX_MAX_OPS_PER_BUFFER nodes (100 on an H100), keyed by strings built
# per node; MLX_USE_CUDA_GRAPHS=0 launches kernels directly. A decode step of ~500 primitives is bound by this host
# work, so the settings are measured for both engines alike. GRAPH_SETTINGS: space-separated env assignments, "-" for
# defaults.
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/pv
R=$W/out/graphs
OUT=${OUT:-$W/out}
mkdir -p "$R"
export PATH="$W/bin:$PATH" PENSIEVE_CLI="$PWD/dist/src/cli.js" PENSIEVE_BACKEND=cuda
MODEL=$W/phi3-mini-128k-4bit-random
BENCH=(bun dist/bench/run.js generate --model "$MODEL" --device gpu --python python3
  --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat "${REPEAT:-2}" --profile)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$R/gpu.txt"
for setting in ${GRAPH_SETTINGS:-- MLX_USE_CUDA_GRAPHS=0 MLX_MAX_OPS_PER_BUFFER=1000}; do
  name=$(echo "$setting" | tr -dc 'A-Za-z0-9=_' | tr '=' '-')
  [ "$setting" = - ] && name=defaults && setting=
  echo "== $name"
  env $setting timeout "${RUN_TIMEOUT:-150}" "${BENCH[@]}" --engines "${ENGINES:-pensieve,mlx-lm}" --out-dir "$R/$name" 2>&1 |
    grep '^| \(pensieve\|mlx-lm\)'
done | tee "$R/summary.txt"
bun dist/bench/gpu/stamp-gpu.js "$R/gpu.txt" "$R" > /dev/null 2>&1 || true
tar -czf "$OUT/graphs-results.tgz" -C "$R" . 2>/dev/null
cp "$R/summary.txt" "$OUT/graphs-summary.txt"
