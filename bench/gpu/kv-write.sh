#!/usr/bin/env bash
# Issue 11: the decode attention kernel that stores the new key/value in the cache itself and merges its
# splits in the same launch (src/mlx/kernels-attention.ts, src/models/gpu-fused.ts; PENSIEVE_GPU_FUSED_KV_WRITE=1,
# off by default until this check has passed). Runs on the GPU machine after `bench/gpu/device.sh prepare`
# (PREPARE_QUICK=1 will do), in one short call:
#   1. greedy text of the full-size Phi-3 (GEN new tokens after a 3-token prompt; 300: 303 keys, 5 merged
#      splits) with the kernel writing the cache and on the default fused path (slice updates, a second merge
#      kernel past 512 keys), compared;
#   2. single stream 128 -> 256 (the harness's generate --profile): Pensieve with the kernel writing the cache +
#      mlx-lm interleaved, then the default fused path alone;
#   2b. the layer megakernel (PENSIEVE_GPU_MEGA=1): its greedy text against the others', a single-stream row;
#   3. the unfused path's text (MLX's ops), compared with the others.
# Everything lands in $OUT/kv-write as it goes, so a call that runs out of time keeps what is done.
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/pv
OUT=${OUT:-$W/out}
R=$OUT/kv-write
mkdir -p "$R"
export PATH="$W/bin:$PATH" PENSIEVE_CLI="$PWD/dist/src/cli.js" PENSIEVE_BACKEND=cuda
MODEL=$W/phi3-mini-128k-4bit-random
log() { echo "[kv-write $(date +%T)] $*" | tee -a "$R/log.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$R/gpu.txt"

# 1. Greedy text: each run prints the text, then a stats line (dropped before comparing).
gen() {
  env "$@" bun dist/src/cli.js generate --model "$MODEL" --raw --prompt "Hello there" \
    --max-tokens "${GEN:-300}" --device gpu 2>&1
}
same() { cmp -s <(sed '$d' "$R/text-$1.txt") <(sed '$d' "$R/text-$2.txt") && echo equal || echo DIFFERENT; }
NEW=(PENSIEVE_GPU_FUSED=1 PENSIEVE_GPU_FUSED_KV_WRITE=1)
gen "${NEW[@]}" > "$R/text-new.txt"
log "kernel writes the cache, splits merged: $(tail -1 "$R/text-new.txt")"
gen PENSIEVE_GPU_FUSED=1 > "$R/text-default.txt"
log "default fused path: $(tail -1 "$R/text-default.txt")"
log "greedy text, new vs default fused path: $(same new default)"

# 2. Single stream, 128 -> 256, in process.
BENCH=(bun dist/bench/run.js generate --model "$MODEL" --device gpu --python python3
  --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --profile --repeat "${REPEAT:-2}")
env "${NEW[@]}" timeout 200 "${BENCH[@]}" --engines pensieve,mlx-lm --out-dir "$R/single-new" 2>&1 |
  grep '^| \(pensieve\|mlx-lm\|engine\)' | tee -a "$R/log.txt"
timeout 120 "${BENCH[@]}" --engines pensieve --out-dir "$R/single-default" 2>&1 | grep '^| pensieve' | tee -a "$R/log.txt"
bun dist/bench/gpu/stamp-gpu.js "$R/gpu.txt" "$R" > /dev/null 2>&1 || true
# 2b. The layer megakernel (PENSIEVE_GPU_MEGA=1, src/mlx/kernels-layer.ts: one launch a layer; it writes the cache
# and merges its splits as "new" does): greedy text against new and default, then a single-stream Pensieve row.
# After the rows above, each under its own timeout (a grid that is not co-resident traps after seconds;
# PENSIEVE_GPU_MEGA_SMS = the GPU's SMs, default 132).
timeout 150 env PENSIEVE_GPU_FUSED=1 PENSIEVE_GPU_MEGA=1 bun dist/src/cli.js generate --model "$MODEL" --raw \
  --prompt "Hello there" --max-tokens "${GEN:-300}" --device gpu > "$R/text-mega.txt" 2>&1
log "mega (rc $?): $(tail -1 "$R/text-mega.txt"); mega vs new: $(same mega new); mega vs default: $(same mega default)"
env PENSIEVE_GPU_MEGA=1 timeout 150 "${BENCH[@]}" --engines pensieve --out-dir "$R/single-mega" 2>&1 |
  grep '^| pensieve' | sed 's/^| pensieve/| pensieve MEGA/' | tee -a "$R/log.txt"

# 3. Last (a short lease may not reach it): the unfused path's text.
gen PENSIEVE_GPU_FUSED=0 > "$R/text-unfused.txt"
log "unfused: $(tail -1 "$R/text-unfused.txt"); new vs unfused: $(same new unfused); default vs unfused: $(same default unfused)"
log done
