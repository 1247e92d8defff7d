#!/usr/bin/env bash
# Runs on the lent GPU machine, from the repository root, one phase per call
# (the machine stays warm between calls; /tmp and ignored folders persist):
#
#   bash bench/gpu/device.sh unpack    # call 1 (carries .device/bun.xz)
#   bash bench/gpu/device.sh stage     # calls 2 and 3: carry .device/mlx-cuda.part.a, then .device/mlx-cuda.part.b1 (both at once
#                                      #   and the tree passed the 64 MiB carry on 2026-12-07)
#   bash bench/gpu/device.sh prepare   # call 4 (carries .device/mlx-cuda.part.b2, .device/wheels, .device/phi3, dist)
# (The checkout's tracked files travel on every call too, ~21 MB: each call stays under 64 MiB.)
#   bash bench/gpu/device.sh single    # single-stream decode and time to first token (512, 4096)
#   bash bench/gpu/device.sh load      # 1, 8, 32, 64 concurrent streams over HTTP
#   AB='{"prefillWidthMultiple":1}' bash bench/gpu/device.sh ab   # Pensieve: defaults vs engine overrides
#   bash bench/gpu/device.sh lone      # lone requests' time to first token: scheduler vs plain generation
#   bash bench/gpu/device.sh cc        # issue 10: 8 concurrent sessions, fused decode for 1-4 rows (default) vs 1 row (A/B/A)
#   bash bench/gpu/device.sh kv        # issue 10: Claude Code replay (carry .device/claude-code-request.json), long prompts
#   bash bench/gpu/device.sh spec      # issue 13: a verify pass of k = 2, 4, 8, 16 tokens vs a one-token step
#   bash bench/gpu/device.sh kcache    # kernel cache (PENSIEVE_KERNEL_CACHE=1): GPU test, then generate off / cold / warm
#   bash bench/gpu/device.sh kcache-mlx  # PENSIEVE_KERNEL_CACHE=mlx (MLX's PTX cache pre-filled): GPU test, off/cold/warm, rate
#   bash bench/gpu/device.sh rows       # host vs wall ms: decode steps of 1-32 rows, verify passes, MLX's product at M rows
#   bash bench/gpu/device.sh fixes      # cc (8 sessions, memory line), oom, prefill 4096 from two fresh starts, rows (~7 min)
#   bash bench/gpu/device.sh next       # oom (headroom via the driver), cc, rows, one stream vs mlx-lm at 4,000 (~8 min)
#   SERVE_PROMPTS="" LONG_PROMPTS=120000 bash bench/gpu/device.sh long  # 120,000 tokens in process, Pensieve and mlx-lm
#   bash bench/gpu/device.sh next2      # 120K over HTTP and in process, fused verify tests and cost, lookup on/off (~7 min)
#   bash bench/gpu/device.sh verify-merge  # the verify attention's parallel merge: GPU tests, cost at 512/4,000/16,000 (~4 min)
#   bash bench/gpu/device.sh multi-row     # batched steps without dense copies: W4A16 kernel, fused 2-4 rows, 32 streams (~7 min)
#   bash bench/gpu/device.sh step-split    # host (MLX per node) against GPU time of a one-row step, then kprof (~7 min)
#   bash bench/gpu/device.sh next8         # the tenth session's: the layer megakernel by tickets, its GPU tests (~5 min)
#   bash bench/gpu/device.sh next8b        # then its alternating step-split rounds against the fused path (~7 min)
#   bash bench/gpu/device.sh next9         # then one stream against mlx-lm, greedy text mega vs fused, verify drift (~5 min)
#   bash bench/gpu/device.sh next9a        # next9 without the megakernel's runs (~2 min)
#   bash bench/gpu/device.sh mma-load      # then 32 streams: MLX's ops past 4 rows against fused decode to 32 rows (~4 min)
#   bash bench/gpu/device.sh next7         # the ninth session's: kernel text by #include, the KV write, one stream against mlx-lm (~7 min)
#   bash bench/gpu/device.sh next5         # the eighth session's leftovers: verify logits by position (tests, SmolLM2 spec), o/down at 2 rows (~9 min)
#   bash bench/gpu/device.sh next4         # the eighth session's: latency-optimal one-row shapes for down and o, ncu step + pipelined + tests (~8 min)
#   bash bench/gpu/device.sh next3         # the seventh session's leftovers: RoPE table, graph size, launch shapes, latency sweep (~13 min)
#   bash bench/gpu/device.sh latency       # each fused kernel's launch shapes alone under ncu, the step's kernels, one stream (~6 min)
#   bash bench/gpu/device.sh kprof         # the fused layer kernels at one row of x beside the plain GEMV, ncu of a step (~4 min)
#   bash bench/gpu/device.sh kprof-mega    # ncu of a step, fused against the layer megakernel: registers, occupancy (~3 min)
#   bash bench/gpu/device.sh verify-mma    # issue 13: fused verify passes on tensor cores (steps scalar): cost, drift, ncu (~3.5 min)
#   bash bench/gpu/device.sh verify-mma2   # then the 9-row products' stall reasons under ncu, the verify-logits GPU tests (~4 min)
#   bash bench/gpu/device.sh mma-ab        # tensor-core body knobs (tiles a block, prenormed x, preload) against the default (~8 min)
#   bash bench/gpu/device.sh mma-tests     # the fused path's GPU tests with the GEMV's tensor-core body, verify to 16 tokens (~4 min)
#   bash bench/gpu/device.sh mma-load      # 32 streams: default against fused 32 rows with tensor cores (~4 min)
#   bash bench/gpu/device.sh mma           # the tensor-core body against the scalar one: products, verify, steps, one stream (~6 min)
#   bash bench/gpu/device.sh rows-default  # fused 2-4-row batches by default: GPU tests, 2/4 streams from a cold PTX cache, 8 sessions (~8 min)
#   bash bench/gpu/device.sh smol-stage    # three calls (carry .device/smol.part.N; the last with .device/smol.sha256)
#   bash bench/gpu/device.sh spec-smol     # issue 13: prompt lookup on real SmolLM2 text on the GPU, off vs the GPU default (~3 min)
#   bash bench/gpu/device.sh reserve-ab    # 120,000 tokens over HTTP, the scheduler's prefill reserve on / off (~3 min)
#   bash bench/gpu/device.sh oom       # issue 14: a real out-of-memory error (test/gpu/out-of-memory.test.ts), $OUT/oom.txt
#   bash bench/gpu/device.sh llama-build  # issue 11: llama.cpp CUDA (carry .device/llama.tar.xz{,.sha256}, and
#                                         #   .device/libggml-cuda.so.xz{,.sha256} when built here; after prepare)
#   bash bench/gpu/device.sh llama-gguf   # llama-build's CPU part alone (unpack, GGUF), to run beside a GPU phase
#   bash bench/gpu/device.sh llama     # issue 11: Pensieve, mlx-lm and llama.cpp CUDA side by side (128 → 256; 4096, 20000)
#
# Pack the carried files first with bench/gpu/pack.sh. Results go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${PV_WORK:-/tmp/pv} # PV_WORK: a stand-in folder for dry runs off the GPU machine (bench/gpu/llama-dry-run.sh)
OUT=${OUT:-$W/out}
mkdir -p "$W/bin" "$OUT"
export PATH="$W/bin:$PATH"
export PENSIEVE_CLI="$PWD/dist/src/cli.js"
export PENSIEVE_BACKEND=${PENSIEVE_BACKEND:-cuda}
PY=python3
MODEL=$W/phi3-mini-128k-4bit-random
# Random weights must not stop early (end-of-turn ids) nor pick the embedding's
# padding rows 32011-32063, which have no token (mlx_lm.server crashes on them).
BAN="32000,32001,32007,$(seq -s, 32011 32063)"
log() { echo "[device $(date +%T)] $*"; }
# Parts of the mlx-cuda-13 wheel carried by this call are kept for the later ones.
for part in .device/mlx-cuda.part.*; do if [ -f "$part" ]; then cp "$part" "$W/"; fi; done
mlx_parts() { cat "$W"/mlx-cuda.part.a "$W"/mlx-cuda.part.b1 "$W"/mlx-cuda.part.b2; }
# transformers 5 (which mlx_lm.server's tokenizer loading runs) wants
# original_max_position_embeddings inside rope_scaling too; Pensieve reads either.
rope_compat() {
  $PY -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['rope_scaling']['original_max_position_embeddings']=c['original_max_position_embeddings']; json.dump(c,open(p,'w'),indent=2)" "$1/config.json"
}

# ---- llama.cpp CUDA (issue 11, item 5): bench/gpu/pack-llama.sh packs what these phases unpack ----
L=$W/llama
GGUF=$W/phi3-mini-128k-q4_0-random.gguf
LLAMA_BINS=$L/nlc/node_modules/@node-llama-cpp/linux-x64-cuda/bins/linux-x64-cuda
# The folder holding libcublas.so.13 (the toolkit's, else Python's nvidia-* packages).
cuda_lib_dir() {
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $($PY -c "import nvidia, os; [print(os.path.join(p, s, 'lib')) for p in nvidia.__path__ for s in ('cu13', 'cublas')]" 2>/dev/null); do
    if [ -e "$d/libcublas.so.13" ]; then echo "$d"; return; fi
  done
}
# LD_LIBRARY_PATH for llama.cpp's process: the CUDA libraries, and the bins folder when libggml-cuda.so was linked
# with a versioned soname (NEEDED libggml-base.so.0): it then finds the prebuilt libggml-base.so through a link
# (the same file, so the loader keeps one copy; tried with a CPU backend here). pack-llama.sh's patchelf renames that
# NEEDED entry (the old name stays among the file's strings, so its dynamic section is read, not the file).
llama_library_path() {
  PENSIEVE_LLAMA_LIBRARY_PATH=$(cuda_lib_dir)
  local dynamic=
  [ -f "$LLAMA_BINS/libggml-cuda.so" ] && dynamic=$(readelf -d "$LLAMA_BINS/libggml-cuda.so" 2>/dev/null || true)
  if grep -q 'NEEDED.*libggml-base\.so\.0' <<< "$dynamic"; then
    ln -sf libggml-base.so "$LLAMA_BINS/libggml-base.so.0"
    PENSIEVE_LLAMA_LIBRARY_PATH="$LLAMA_BINS:$PENSIEVE_LLAMA_LIBRARY_PATH"
  fi
  export PENSIEVE_LLAMA_LIBRARY_PATH
}
llama_env() {
  [ -d "$L/nlc/node_modules/node-llama-cpp" ] || { echo "run the llama-build phase first" >&2; exit 1; }
  # The harness bundles find the checkout from dist/llama/ (a later carry of dist may have replaced it).
  mkdir -p dist/llama && cp -r "$L/dist-llama/." dist/llama/
  export PENSIEVE_NODE_LLAMA_CPP=$L/nlc
  llama_library_path
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$OUT/gpu.txt" 2>&1 || true
}
# The carried tarball, unpacked into $L unless the same one already is.
llama_unpack() {
  if [ -f .device/llama.tar.xz ] && [ "$(cat "$L/.sha256" 2>/dev/null)" != "$(cat .device/llama.tar.xz.sha256)" ]; then
    echo "$(cat .device/llama.tar.xz.sha256)  .device/llama.tar.xz" | sha256sum -c -
    rm -rf "$L" && mkdir -p "$L" && xz -dc .device/llama.tar.xz | tar -C "$L" -xf -
    cp .device/llama.tar.xz.sha256 "$L/.sha256"
  fi
}
# LLAMA_DRY_RUN=1 (bench/gpu/llama-dry-run.sh, no GPU): llama.cpp's CPU build instead of building CUDA.
llama_backend() { if [ "${LLAMA_DRY_RUN:-}" = 1 ]; then echo cpu; else echo cuda; fi; }

case "${1:?phase}" in
unpack)
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
  { echo "kernel: $(uname -r)"; $PY -V; $PY -c "import torch; print('torch', torch.__version__)" || true;
    which g++ nvcc || true; g++ --version | head -1; nvcc --version | tail -2 || true;
    ls -d /usr/local/cuda* 2>/dev/null || true;
    $PY -c "import nvidia, os; d=list(nvidia.__path__)[0]; print(d); print(sorted(os.listdir(d)))"; } | tee "$OUT/machine.txt"
  xz -dc .device/bun.xz > "$W/bin/bun" && chmod +x "$W/bin/bun"
  log "bun $(bun --version)"
  ;;
stage)
  ls -la "$W"/mlx-cuda.part.*
  ;;
prepare)
  if [ ! -d "$W/wheel/mlx" ]; then
    mlx_parts | xz -dc | (mkdir -p "$W/wheel" && tar -xf - -C "$W/wheel")
    log "mlx-cuda-13 unpacked"
  fi
  # mlx-lm for the baseline: the mlx front end and mlx-lm wheels, with the CUDA backend files beside them.
  site=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  $PY -m pip install -q --no-deps --no-index .device/wheels/*.whl
  cp -r "$W/wheel/mlx/." "$site/mlx/" && cp -r "$W/wheel/mlx_cuda_13.libs" "$site/"
  $PY -c "import mlx.core as mx, mlx_lm; a = mx.ones((256, 256)); print('mlx', mx.__version__, mx.default_device(), float((a @ a).sum()), 'mlx-lm', mlx_lm.__version__)" | tee -a "$OUT/machine.txt"
  # Pensieve: the same wheel, unpacked by set-up (no network), NVIDIA libraries linked, shim built.
  bun dist/scripts/setup.js --backend cuda --no-model --wheel-dir "$W/wheel"
  # PREPARE_QUICK=1 (a short lease): no doctor, no tiny model, no first generation (the next phase pays the compiles).
  if [ "${PREPARE_QUICK:-0}" != 1 ]; then
    bun dist/src/cli.js doctor | tee -a "$OUT/machine.txt" || true
    # A tiny model first: a quick end-to-end check on the GPU.
    bun dist/scripts/make-random-model.js --config .device/phi3/config.json --tokenizer-from .device/phi3 --out "$W/tiny" \
      --device gpu --override '{"num_hidden_layers":2,"hidden_size":192,"num_attention_heads":2,"num_key_value_heads":2,"intermediate_size":256}'
    bun dist/src/cli.js generate --model "$W/tiny" --raw --prompt "Hello there" --max-tokens 16 --device gpu
  fi
  # The full-size Phi-3-mini-128k in the mlx-community 4-bit format, random weights, made here by our own code.
  [ -f "$MODEL/model.safetensors" ] || bun dist/scripts/make-random-model.js --config .device/phi3/config.json \
    --tokenizer-from .device/phi3 --out "$MODEL" --device gpu --seed 1
  rope_compat "$MODEL"
  ls -la "$MODEL" | tee -a "$OUT/machine.txt"
  [ "${PREPARE_QUICK:-0}" = 1 ] || bun dist/src/cli.js generate --model "$MODEL" --raw --prompt "Hello there" --max-tokens 64 --device gpu
  ;;
kcache)
  # The kernel cache: logits bit-equal to MLX's own compile and a second start compiling nothing
  # (test/gpu/kernel-cache.test.ts), then the full-size model's wall time for one short generation:
  # flag off (MLX's NVRTC), flag on with an empty cache (cold: compiles + writes), flag on again (warm: reads).
  bun test --timeout 600000 test/gpu/kernel-cache.test.ts 2>&1 | tee "$OUT/kernel-cache-test.txt" || true
  export PENSIEVE_HOME=$W/kc-home PENSIEVE_KERNEL_CACHE_LOG=1
  rm -rf "$PENSIEVE_HOME/kernel-cache"
  TIMEFORMAT="%R"
  for run in off cold warm off warm; do
    flag=1; [ "$run" = off ] && flag=0
    t=$( { time PENSIEVE_KERNEL_CACHE=$flag bun dist/src/cli.js generate --model "$MODEL" --raw --prompt "Hello there" \
      --max-tokens 32 --device gpu > "$OUT/kc-$run.log" 2>&1 || true; } 2>&1 )
    echo "$run: ${t} s, compiled $(grep -c 'kernel-cache\] compiled' "$OUT/kc-$run.log" || true), not cached: $(grep -c 'not cached' "$OUT/kc-$run.log" || true)" | tee -a "$OUT/kernel-cache.txt"
  done
  ls -la "$PENSIEVE_HOME/kernel-cache" | tee -a "$OUT/kernel-cache.txt"
  # Decode rate with the cached CUBINs (MLX hashes a precompiled kernel's CUBIN, ~200 KB, at every launch) vs off, A/B/A.
  for flag in 0 1 0; do
    PENSIEVE_KERNEL_CACHE=$flag bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve \
      --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 3 --out-dir "$OUT/kc-rate-$flag" || true
  done
  ;;
kcache-mlx)
  # PENSIEVE_KERNEL_CACHE=mlx: logits bit-equal, second start compiles nothing, MLX reads our entries
  # (test/gpu/kernel-cache-mlx.test.ts); then off / cold / warm wall times and the decode rate 0/mlx/0.
  bun test --timeout 600000 test/gpu/kernel-cache-mlx.test.ts 2>&1 | tee "$OUT/kernel-cache-mlx-test.txt" || true
  export PENSIEVE_HOME=$W/kcm-home PENSIEVE_KERNEL_CACHE_LOG=1
  rm -rf "$PENSIEVE_HOME/kernel-cache"
  TIMEFORMAT="%R"
  for run in off cold warm off warm; do
    flag=mlx; [ "$run" = off ] && flag=0
    t=$( { time PENSIEVE_KERNEL_CACHE=$flag bun dist/src/cli.js generate --model "$MODEL" --raw --prompt "Hello there" \
      --max-tokens 32 --device gpu > "$OUT/kcm-$run.log" 2>&1 || true; } 2>&1 )
    echo "$run: ${t} s, compiled $(grep -c 'kernel-cache\] compiled' "$OUT/kcm-$run.log" || true), not cached: $(grep -c 'not cached' "$OUT/kcm-$run.log" || true)" | tee -a "$OUT/kernel-cache-mlx.txt"
  done
  find "$PENSIEVE_HOME/kernel-cache" /tmp/mlx -name '*.ptx' 2>/dev/null | grep -c custom_kernel_ | tee -a "$OUT/kernel-cache-mlx.txt" || true
  i=0
  for flag in 0 mlx 0; do
    i=$((i + 1))
    PENSIEVE_KERNEL_CACHE=$flag bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve \
      --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 3 --out-dir "$OUT/kcm-rate-$i-$flag" || true
  done
  ;;
fixes)
  # The 2026-12-07 fixes, in one call after prepare (carry dist and .device/claude-code-request.json), each part with
  # its own limit (~7 minutes in all): 8 concurrent Claude Code sessions with the memory line, the out-of-memory
  # test, a 4,096-token prefill from two fresh processes (the first writes the kernel cache), and rows-profile.
  CC_RUNS=a CC_TEST=0 timeout 170 bash "$0" cc 2>&1 | grep -v '^\[bench\]' | tail -40 || true
  OOM_TIMEOUT=120 bash "$0" oom 2>&1 | grep -E '^\[(oom|device)|pass|fail' | tail -40 || true
  for i in 1 2; do
    timeout 80 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve \
      --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 4096 --gen 16 --repeat 1 \
      --out-dir "$OUT/prefill-start-$i" 2>&1 | grep -E '^\| pensieve' || true
  done
  ROWS_TIMEOUT=110 bash "$0" rows || true
  # The fused verify path's pass of 9 tokens against its step (issue 13), cache cut back and growing.
  PENSIEVE_GPU_FUSED_VERIFY=1 timeout 70 bun dist/bench/gpu/rows-profile.js "$MODEL" --rows 1 --verify 9 --chunk 0 \
    2>&1 | tee "$OUT/rows-profile-fused-verify.md" || true
  ;;
next)
  # What 2026-12-07c left to check, in one call after prepare (carry .device/claude-code-request.json; ~8 minutes):
  # the out-of-memory test with the headroom check asking the driver (the prompt's 500 should then read "out of
  # memory: a prefill chunk ... needs"), 8 Claude Code sessions with the check beside them, rows-profile (a 3-token
  # verify through the dense copies), and one stream against mlx-lm at 4,000 tokens (below Phi-3's RoPE boundary).
  OOM_TIMEOUT=120 bash "$0" oom 2>&1 | grep -E '^\[(oom|device|engine)|pass|fail' | tail -40 || true
  CC_RUNS=a CC_TEST=0 timeout 170 bash "$0" cc 2>&1 | grep -v '^\[bench\]' | tail -30 || true
  ROWS_TIMEOUT=100 bash "$0" rows 2>&1 | tail -25 || true
  timeout 150 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
    --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 4000 --gen 128 --repeat 3 \
    --out-dir "$OUT/single-4000" 2>&1 | grep -E '^\| (pensieve|mlx-lm)' || true
  ;;
next2)
  # 2026-12-07d, one call after prepare (carry dist and .device/phi3; ~9 minutes): issue 10's 120,000-token prompt
  # over HTTP and in process beside mlx-lm (one-sequence prefill reserves its KV once since 592c370); the fused
  # verify path's GPU tests and its cost at k = 1-4 and 8 (bench/gpu/verify.sh QUICK=1); then one stream over HTTP
  # with the GPU's prompt lookup on (the default since d39cc6b) against speculative false (random weights: this
  # measures the cost of lookups that miss, not a gain).
  SERVE_PROMPTS=120000 LONG_PROMPTS=120000 bash "$0" long 2>&1 | grep -v '^\[bench\]' | tail -40 || true
  QUICK=1 KS=1,2,3,4,8 N=20 timeout 330 bash bench/gpu/verify.sh 2>&1 | tail -40 || true
  AB='{"speculative":false}' LEVELS=1 REQUESTS=4 timeout 150 bash "$0" ab || true
  ;;
verify-merge)
  # Issue 13, after 2026-12-07d: a verify pass after 4,000 tokens cost 1.34-2.01x a step for k = 1-3 (1.09-1.53x after
  # 512). Its attention's splits (64 keys each: 63 at 4,000) merge serially per output element. One call after
  # prepare (carry dist; ~4 minutes): the GPU tests of the parallel merge, then the cost at 512 and 4,000 tokens for
  # the serial merge, the parallel one, and fewer, longer splits (256 keys). If the parallel merge pays, make it the
  # default and raise GPU_LOOKUP_MAX_CONTEXT (src/engine/speculation.ts) as far as the cost allows.
  PENSIEVE_FUSED_VERIFY_MERGE=parallel timeout 200 bun test --timeout 180000 ./dist/test-gpu/fused.test.js -t "verify pass of" \
    2>&1 | tail -12 | tee "$OUT/verify-merge-tests.txt" || true
  for v in serial parallel serial:256 parallel:256; do
    IFS=: read -r merge per <<< "$v"
    for p in 512 4000 16000; do
      PENSIEVE_FUSED_VERIFY_MERGE=$merge PENSIEVE_FUSED_VERIFY_KEYS_PER_SPLIT=${per:-64} timeout 100 bun dist/bench/run.js \
        spec-verify-cost --model "$MODEL" --device gpu --prompt $p --ks 1,2,3,8 --n 15 --out-dir "$OUT/merge-$merge-${per:-64}-p$p" \
        2>&1 | grep -E '^\| [0-9]|step:' | sed "s/^/$v p$p /" || true
    done
  done
  ;;
multi-row)
  # Issue 11, 2026-12-08: where a batched decode step of 2-32 rows goes without the dense fp16 copies (3.5x the 4-bit
  # bytes: ~5 ms of a 2-row step's ~7 ms of device time). The batched W4A16 kernel (PENSIEVE_GPU_QMM=1) against MLX's
  # quantized_matmul and the dense copies per product, then whole steps (rows-profile): dense copies (default), the
  # W4A16 kernel without copies, and the fused decode kernels for 2-4 rows (PENSIEVE_GPU_FUSED_MAX_ROWS=4); then 32
  # streams over HTTP, W4A16 kernel against the default (its kernels already in MLX's PTX cache from rows-profile).
  # After prepare; carry dist. ~7 minutes.
  # (Its per-product lines go to stderr as they come: on 2026-12-07e the 120 s limit ended it before its table.)
  timeout 200 bun dist/bench/gpu/qmm.js --rows 8,32 --no-sweep 2>&1 | grep -E '^\||GB/s|^#|^\[qmm\]' | tail -45 |
    tee "$OUT/qmm.txt" || true
  for v in dense:1:1,2,4,8,16,32 qmm:1:2,4,8,16,32 fused4:4:1,2,3,4; do
    IFS=: read -r path rows list <<< "$v"
    qmm=0; dense=true; [ "$path" = qmm ] && qmm=1 && dense=false
    echo "== rows-profile $path"
    PENSIEVE_GPU_QMM=$qmm PENSIEVE_GPU_FUSED_MAX_ROWS=$rows timeout 120 bun dist/bench/gpu/rows-profile.js "$MODEL" \
      --rows "$list" --verify "" --chunk 0 --dense $dense 2>&1 | sed -n '/Decode steps/,/^## One row/p' |
      tee "$OUT/rows-$path.md" || true
  done
  for q in 1 0; do
    echo "== load 32 streams, PENSIEVE_GPU_QMM=$q"
    PENSIEVE_GPU_QMM=$q timeout 100 bun dist/bench/run.js load --model "$MODEL" --device gpu --levels 32 --servers pensieve \
      --python $PY --requests-per-client 2 --out-tokens 128 --prompt-tokens 128,256,512 --ban-tokens $BAN \
      --out-dir "$OUT/load-qmm$q" 2>&1 | grep -E '^\| (pensieve|mlx)' || true
  done
  ;;
step-split)
  # Issue 11, 2026-12-07 (seventh session): is a one-row decode step bound by MLX's host work per graph node or by
  # the GPU? bench/gpu/step-split.ts splits a step into TypeScript graph building, MLX's host work (the asyncEval
  # call) and the wait for the GPU, unpipelined and pipelined, under MLX's graph batching variables and the fused
  # path's in-kernel KV write; with --nodes MLX's host cost per node (small/large kernel source, mx.add). Then the
  # fused kernels at one row beside the plain GEMV and an ncu list of a step's kernels at real clocks (kprof), and
  # one stream against mlx-lm with --profile. After prepare; ~7 minutes.
  for v in "X=1" "MLX_MAX_OPS_PER_BUFFER=25" "MLX_MAX_OPS_PER_BUFFER=1000 MLX_MAX_MB_PER_BUFFER=1000000" \
    "MLX_USE_CUDA_GRAPHS=0" "PENSIEVE_GPU_FUSED_KV_WRITE=1" "PENSIEVE_GEMV_MMA=1"; do
    nodes=; [ "$v" = X=1 ] && nodes=--nodes
    echo "== $v"
    env $v timeout 100 bun dist/bench/gpu/step-split.js "$MODEL" --steps 48 $nodes 2>&1 | grep -E '^\||^GPU|rror' |
      tee -a "$OUT/step-split.md" || true
  done
  bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
    --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 2 --profile \
    --out-dir "$OUT/single" 2>&1 | grep -E '^\| (pensieve|mlx)|host' || true
  KPROF_CTX="${KPROF_CTX:-128}" timeout 330 bash "$0" kprof || true
  ;;
latency|latency-sweep)
  # Issue 11, 2026-12-07 (seventh session): a one-row decode step is bound by its kernels' latency, not MLX's host
  # work (gpu-h100-2026-12-07g): the sum of its 231 kernels under Nsight Compute (3.14 ms) is the step. Each fused
  # kernel's launch shapes one at a time under ncu (fused-kernels.ts --latency: what a chain of dependent launches
  # sees), the step's kernels again (RoPE's inputs read before the weight loop now), one stream against mlx-lm, and
  # MLX's ops per CUDA graph. After prepare; ~6 minutes.
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  timeout "${LATENCY_TIMEOUT:-240}" "$NCU" --clock-control none --cache-control none --print-units base --csv \
    --profile-from-start off -k regex:pv_ \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum bun dist/bench/gpu/fused-kernels.js --latency \
    > "$OUT/ncu-latency.csv" 2> "$OUT/ncu-latency.err" || true
  bun dist/bench/gpu/ncu-summary.js "$OUT/ncu-latency.csv" --top 200 > "$OUT/ncu-latency.md" 2>&1 || true
  grep -E '^\| custom' "$OUT/ncu-latency.md" | sed -E 's/custom_kernel_pv_//' | cut -c1-140 | head -90
  [ "$1" = latency-sweep ] && exit 0
  KPROF_CTX=128 timeout 100 bash "$0" kprof-step || true
  for v in X=1 MLX_MAX_OPS_PER_BUFFER=25 PENSIEVE_GEMV_SPLITK=auto PENSIEVE_GEMV_SPLITK=4 \
    "PENSIEVE_GEMV_SPLITK=4 PENSIEVE_GEMV_SPLITK_ROWS=1" "PENSIEVE_GEMV_SPLITK=8 PENSIEVE_GEMV_SPLITK_ROWS=2" \
    PENSIEVE_FUSED_KEYS_PER_SPLIT=64 PENSIEVE_FUSED_KEYS_PER_SPLIT=32 X=1; do
    env $v timeout 80 bun dist/bench/gpu/step-split.js "$MODEL" --steps 64 2>&1 | grep -E '^\| (pipe|median)|rror' |
      sed "s/^/$v /" | tee -a "$OUT/step-split.md" || true
  done
  bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
    --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 3 \
    --out-dir "$OUT/single" 2>&1 | grep -E '^\| (pensieve|mlx)' || true
  ;;
next3)
  # Issue 11, for the session after 2026-12-07 (seventh): what that session could not run, most telling first. The
  # RoPE table and MLX_MAX_OPS_PER_BUFFER=25 (final: GPU tests, one stream against mlx-lm); pipelined steps at MLX's
  # graph size 25 against 100, one-row launch shapes chosen for latency (PENSIEVE_GEMV_ONE_ROW) and more keys in
  # flight in the attention (PENSIEVE_FUSED_ATTENTION_KB), the attention writing k/v itself (64 graph nodes fewer a
  # step: the host is most of a token at graph size 25); every fused kernel's launch shapes alone under ncu (the
  # latency sweep; the last one stopped at an odd-rows RoPE shape); 32 streams over HTTP at graph size 25 and 100.
  # After prepare; ~13 minutes.
  FINAL_REPEAT=2 timeout 200 bash "$0" final || true
  for v in MLX_MAX_OPS_PER_BUFFER=25 MLX_MAX_OPS_PER_BUFFER=100 \
    PENSIEVE_GEMV_ONE_ROW=3072x8192:2:16:8,3072x3072:2:8:4 PENSIEVE_GEMV_ONE_ROW=3072x8192:4:16:4,3072x3072:4:16:4 \
    PENSIEVE_GEMV_ONE_ROW=3072x8192:1:16:8,3072x3072:1:8:4 PENSIEVE_FUSED_ATTENTION_KB=8 PENSIEVE_FUSED_ATTENTION_KB=16 \
    PENSIEVE_GPU_FUSED_KV_WRITE=1 "PENSIEVE_GPU_FUSED_KV_WRITE=1 PENSIEVE_FUSED_MERGED_KEYS_PER_SPLIT=512" \
    MLX_MAX_OPS_PER_BUFFER=25; do
    env $v timeout 60 bun dist/bench/gpu/step-split.js "$MODEL" --steps 64 2>&1 | grep -E '^\| (pipe|median)|rror' |
      sed "s/^/$v /" | tee -a "$OUT/step-split.md" || true
  done
  LATENCY_TIMEOUT=240 timeout 300 bash "$0" latency-sweep || true
  for v in MLX_MAX_OPS_PER_BUFFER=25 MLX_MAX_OPS_PER_BUFFER=100; do
    env $v timeout 140 bun dist/bench/run.js load --model "$MODEL" --device gpu --levels 32 --servers pensieve \
      --python $PY --requests-per-client 2 --out-tokens 128 --prompt-tokens 128,256,512 --ban-tokens $BAN \
      --out-dir "$OUT/load32-${v#*=}" 2>&1 | grep -E '^\| pensieve' | sed "s/^/$v /" || true
  done
  ;;
next8)
  # Issue 11, 2026-12-07 (tenth session), call 1 of 3: the layer megakernel ordered by tickets (no grid barrier),
  # blocks of 4 warps (PENSIEVE_GPU_MEGA=1, off by default): its GPU tests (bit for bit against the five fused
  # kernels with the attention at 4 warps; greedy tokens of tiny Llama / Phi-3), then the bit-for-bit ones again
  # with the L2 prefetch of a waiting block's weights (PENSIEVE_GPU_MEGA_PREFETCH=1). After prepare; ~5 minutes.
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  timeout 240 bun test --timeout 200000 ./dist/test-gpu/fused.test.js -t megakernel 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -30 | tee "$OUT/mega-tests.txt" || true
  PENSIEVE_GPU_MEGA_PREFETCH=1 timeout 150 bun test --timeout 140000 ./dist/test-gpu/fused.test.js -t "megakernel equals" 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -30 | tee "$OUT/mega-prefetch-tests.txt" || true
  ;;
next8b)
  # Call 2 of 3: alternating step-split rounds (pipelined tok/s): default fused / megakernel / megakernel with the
  # prefetch / megakernel at 8 blocks an SM (64 registers) / megakernel in blocks of 16 warps; a step as one CUDA
  # graph (device time) for the first three. ~7 minutes.
  for r in 1 2 3; do
    for v in X=0 PENSIEVE_GPU_MEGA=1 "PENSIEVE_GPU_MEGA=1 PENSIEVE_GPU_MEGA_PREFETCH=1" \
      "PENSIEVE_GPU_MEGA=1 PENSIEVE_GPU_MEGA_BLOCKS_PER_SM=8" "PENSIEVE_GPU_MEGA=1 PENSIEVE_GPU_MEGA_WARPS=16"; do
      env $v timeout 45 bun dist/bench/gpu/step-split.js "$MODEL" --steps 64 2>&1 | grep -E '^\| (pipe|median)|rror' |
        sed "s/^/r$r $v /" | tee -a "$OUT/ab.md" || true
    done
  done
  for v in X=0 PENSIEVE_GPU_MEGA=1 "PENSIEVE_GPU_MEGA=1 PENSIEVE_GPU_MEGA_PREFETCH=1"; do
    env MLX_MAX_OPS_PER_BUFFER=1000 MLX_MAX_MB_PER_BUFFER=1000000 $v timeout 45 bun dist/bench/gpu/step-split.js "$MODEL" \
      --steps 48 2>&1 | grep -E '^\| median|rror' | sed "s/^/one-graph $v /" | tee -a "$OUT/ab.md" || true
  done
  ;;
next9a)
  # 2026-12-07 (eleventh session): next9 without the megakernel's runs (next8b measured it 2x slower): one stream
  # against mlx-lm, the verify pass's GPU test, Phi-3 drift. ~4 minutes.
  timeout 130 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
    --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 2 \
    --out-dir "$OUT/single" 2>&1 | grep -E '^\| (pensieve|mlx)' || true
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  timeout 100 bun test --timeout 90000 ./dist/test-gpu/verify-logits.test.js 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -20 | tee -a "$OUT/tests.txt" || true
  timeout 50 bun dist/bench/gpu/verify-drift.js "$MODEL" --tokens 128 2>&1 | tee -a "$OUT/verify-drift.md" || true
  ;;
next9)
  # Call 3 of 3: one stream 128 -> 256 against mlx-lm (default path), then the megakernel alone (MEGA_ENV, default
  # PENSIEVE_GPU_MEGA=1); greedy text of the full-size Phi-3, megakernel against the fused path with its attention at
  # the megakernel's 4 warps (same numerics: equal expected); the verify pass's GPU test and Phi-3 drift. ~5 minutes.
  timeout 130 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
    --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 2 \
    --out-dir "$OUT/single" 2>&1 | grep -E '^\| (pensieve|mlx)' || true
  env ${MEGA_ENV:-PENSIEVE_GPU_MEGA=1} timeout 100 bun dist/bench/run.js generate --model "$MODEL" --device gpu \
    --engines pensieve --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 2 \
    --out-dir "$OUT/single-mega" 2>&1 | grep -E '^\| pensieve' | sed 's/^| pensieve/| pensieve mega/' || true
  for m in 0 1; do
    env PENSIEVE_GPU_FUSED_ATTENTION_WARPS=4 PENSIEVE_GPU_MEGA=$m timeout 90 bun dist/src/cli.js generate \
      --model "$MODEL" --raw --prompt "Hello there" --max-tokens 100 --device gpu > "$OUT/text-mega$m.txt" 2>&1
    echo "mega=$m (rc $?): $(tail -1 "$OUT/text-mega$m.txt")" | tee -a "$OUT/text.md"
  done
  cmp -s <(sed '$d' "$OUT/text-mega0.txt") <(sed '$d' "$OUT/text-mega1.txt") && r=equal || r=DIFFERENT
  echo "greedy text, megakernel against the fused path (attention at 4 warps): $r" | tee -a "$OUT/text.md"
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  timeout 100 bun test --timeout 90000 ./dist/test-gpu/verify-logits.test.js 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -20 | tee -a "$OUT/tests.txt" || true
  timeout 50 bun dist/bench/gpu/verify-drift.js "$MODEL" --tokens 128 2>&1 | tee -a "$OUT/verify-drift.md" || true
  ;;
next7)
  # Issue 11, 2026-12-07 (ninth session), one call for a short lease: the per-position head's GPU test, alternating
  # step-split rounds (default graph size: pipelined tok/s; one CUDA graph a step: device time) of the kernel text
  # by #include (PENSIEVE_KERNEL_HEADER_FILES=0 inlines it) and the KV by slice updates (PENSIEVE_GPU_FUSED_KV_WRITE=0),
  # one stream against mlx-lm, Phi-3's verify drift. After prepare; ~7 minutes. (Its run in gpu-h100-2026-12-07i, at
  # 218a334, also measured an L2 prefetch of the next weights, since removed: slower.)
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  timeout 100 bun test --timeout 90000 ./dist/test-gpu/verify-logits.test.js 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -20 | tee -a "$OUT/tests.txt" || true
  for r in 1 2; do
    for v in X=0 PENSIEVE_KERNEL_HEADER_FILES=0 PENSIEVE_GPU_FUSED_KV_WRITE=0; do
      env $v timeout 40 bun dist/bench/gpu/step-split.js "$MODEL" --steps 64 2>&1 | grep -E '^\| (pipe|median)|rror' |
        sed "s/^/r$r $v /" | tee -a "$OUT/ab.md" || true
      env MLX_MAX_OPS_PER_BUFFER=1000 MLX_MAX_MB_PER_BUFFER=1000000 $v timeout 40 bun dist/bench/gpu/step-split.js "$MODEL" \
        --steps 48 2>&1 | grep -E '^\| median|rror' | sed "s/^/r$r one-graph $v /" | tee -a "$OUT/ab.md" || true
    done
  done
  timeout 130 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
    --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 2 \
    --out-dir "$OUT/single" 2>&1 | grep -E '^\| (pensieve|mlx)' || true
  timeout 50 bun dist/bench/gpu/verify-drift.js "$MODEL" --tokens 128 2>&1 | tee -a "$OUT/verify-drift.md" || true
  ;;
next5)
  # Issues 11 and 13, for the session after 2026-12-07 (eighth): what that session changed after its last lease. The
  # verify pass's logits position by position on a GPU (decoder.ts, linearByPosition: greedy speculation equal to plain
  # decoding with a head the fused kernels don't take) in its GPU test, then on the real SmolLM2 (run smol-stage
  # first; spec-smol's `identical` column, control-story was NO); o and down at 2 rows a warp for one row of x
  # (oneRowConfig) in the fused tests, a whole step under ncu and one stream against mlx-lm. After prepare; ~9 min.
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  timeout 120 bun test --timeout 100000 ./dist/test-gpu/verify-logits.test.js 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -20 | tee "$OUT/verify-logits-tests.txt" || true
  timeout 150 bun test --timeout 60000 ./dist/test-gpu/fused.test.js -t "M=1|one row|step|greedy" 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -40 | tee "$OUT/fused-tests.txt" || true
  if [ -f "$W/smollm2.gguf" ]; then
    # How far a verify pass's scores drift from the steps' on the GPU (what GPU_TIE_MARGIN must exceed), then the bench.
    for p in control-story py-rename; do
      timeout 60 bun dist/bench/gpu/verify-drift.js "$W/smollm2.gguf" --tokens 256 --prompt $p 2>&1 | tee -a "$OUT/verify-drift.md" || true
    done
    timeout 200 bash "$0" spec-smol || true
  fi
  timeout 60 bun dist/bench/gpu/verify-drift.js "$MODEL" --tokens 128 2>&1 | tee -a "$OUT/verify-drift.md" || true
  # (The ninth session ran `final` as a call of its own: ~7 minutes here.)
  ;;
next4)
  # Issue 11, 2026-12-07 (eighth session): the one-row launch shapes of the latency sweep (lease 1's ncu-latency.md:
  # down 3072x8192 split 4 ways, 4 rows, 8 warps, 16 loads: 9.98 us against 15.65 at the default 4x4; o 3072x3072 at
  # 2 rows: 5.98 against 7.97) in a whole step under Nsight Compute (device time, deterministic) and pipelined
  # (host-bound: alternating rounds), then their GPU tests. After prepare; ~8 minutes.
  LAT=${LAT_ONE_ROW:-3072x8192:4:8:4:16,3072x3072:2:4}
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
  for v in X=0 PENSIEVE_GEMV_ONE_ROW=$LAT; do
    env $v timeout 150 "$NCU" --clock-control none --cache-control none --print-units base --csv --profile-from-start off \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      bun dist/bench/gpu/step-profile.js "$MODEL" 128 > "$OUT/ncu-step-${v%%=*}.csv" 2> "$OUT/ncu-step-${v%%=*}.err" || true
    { echo "== $v: step at 128 tokens"; bun dist/bench/gpu/ncu-summary.js "$OUT/ncu-step-${v%%=*}.csv" --top 12; } 2>&1 |
      tee -a "$OUT/ncu-summary.md"
  done
  for r in 1 2 3 4 5; do
    for v in X=0 PENSIEVE_GEMV_ONE_ROW=$LAT; do
      env $v timeout 40 bun dist/bench/gpu/step-split.js "$MODEL" --steps 64 2>&1 | grep -E '^\| pipe|rror' |
        sed "s/^/r$r $v /" | tee -a "$OUT/ab.md" || true
    done
  done
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  PENSIEVE_GEMV_ONE_ROW=$LAT timeout 150 bun test --timeout 60000 ./dist/test-gpu/fused.test.js -t "M=1|one row|step" 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -40 | tee "$OUT/one-row-tests.txt" || true
  ;;
final)
  # Issue 11, 2026-12-07 (seventh session), last lease: the fused path's RoPE from a table made once a step
  # (ropeTable) and MLX_MAX_OPS_PER_BUFFER=25 by default (src/mlx/mlx-env.ts): the GPU tests of the RoPE kernels
  # (against MLX's rms_norm, quantized_matmul and rope), then one stream against mlx-lm. After prepare; ~3 minutes.
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  timeout 45 bun test --timeout 40000 ./dist/test-gpu/fused.test.js -t "RoPE" 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -20 | tee "$OUT/rope-tests.txt" || true
  timeout 120 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
    --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat ${FINAL_REPEAT:-1} \
    --out-dir "$OUT/single" 2>&1 | grep -E '^\| (pensieve|mlx)' || true
  ;;
verify-mma)
  # Issue 13, 2026-12-08: gpu-h100-2026-12-07j's "8 drafts 7.95 ms, 1.96x" ran without PENSIEVE_GPU_FUSED_VERIFY=1,
  # so passes past 4 tokens took MLX's ops (its 5-token pass jumped to 7.07 ms from 4.14 at 3). Here every pass is
  # fused, with tensor cores for verify passes only (PENSIEVE_GPU_VERIFY_MMA=1: one-token steps keep the scalar
  # body, exactness rests on the tie margin): the cost after 512 and 4,096 tokens (8 drafts: 1.72x a step after
  # 512 on 2026-12-08); the drift of such a pass against its steps (Phi-3, and SmolLM2 when staged); Nsight
  # Compute of a 9-token pass against a step. ~3.5 minutes (VERIFY_PROMPTS=512 NCU_PASSES=9: ~2). Then mma-ab
  # (the tensor-core body's knobs) and verify-mma2 (the products' stall reasons, the GPU tests).
  export PENSIEVE_GPU_FUSED_VERIFY=1 PENSIEVE_GPU_VERIFY_MMA=1
  for p in ${VERIFY_PROMPTS:-512 4096}; do
    echo "== prompt $p" | tee -a "$OUT/verify-mma.md"
    timeout 70 bun dist/bench/run.js spec-verify-cost --device gpu --model "$MODEL" --prompt $p \
      --ks 1,2,3,4,6,8,15 --n 15 --out-dir "$OUT/verify-cost" 2>&1 | grep -E '^\| [0-9]|One-token|rror' | tee -a "$OUT/verify-mma.md" || true
  done
  echo "== drift, Phi-3, passes of 9" | tee -a "$OUT/verify-drift.md"
  timeout 45 bun dist/bench/gpu/verify-drift.js "$MODEL" --L 9 --tokens 128 2>&1 | tee -a "$OUT/verify-drift.md" || true
  if [ -f "$W/smollm2.gguf" ]; then
    for p in py-rename control-story; do
      echo "== drift, SmolLM2 $p, passes of 9" | tee -a "$OUT/verify-drift.md"
      timeout 60 bun dist/bench/gpu/verify-drift.js "$W/smollm2.gguf" --L 9 --tokens 256 --prompt $p 2>&1 | tee -a "$OUT/verify-drift.md" || true
    done
  fi
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
  for L in ${NCU_PASSES-1 9}; do
    [ -n "$NCU" ] || break
    PENSIEVE_STEP_TOKENS=$L timeout 60 "$NCU" --clock-control none --cache-control none --print-units base --csv \
      --profile-from-start off --metrics gpu__time_duration.sum,dram__bytes_read.sum \
      bun dist/bench/gpu/step-profile.js "$MODEL" 512 > "$OUT/ncu-pass-$L.csv" 2> "$OUT/ncu-pass-$L.err" || true
    { echo "== $L tokens"; bun dist/bench/gpu/ncu-summary.js "$OUT/ncu-pass-$L.csv" --top 14; grep step-profile "$OUT/ncu-pass-$L.err"; } 2>&1 | tee -a "$OUT/ncu-pass.md"
  done
  ;;
verify-mma2)
  # After verify-mma: why a 9-row tensor-core product is slower than a one-row scalar one (the first layer's
  # products under Nsight Compute's sections, then the stall reasons), and the verify-logits GPU tests under
  # PENSIEVE_GPU_VERIFY_MMA=1. ~4 minutes.
  export PENSIEVE_GPU_FUSED_VERIFY=1 PENSIEVE_GPU_VERIFY_MMA=1
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
  if [ -n "$NCU" ]; then
    PENSIEVE_STEP_TOKENS=9 timeout 120 "$NCU" --clock-control none --cache-control none --print-units base --csv \
      --profile-from-start off -k regex:pv_gemv --launch-count 5 --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section MemoryWorkloadAnalysis bun dist/bench/gpu/step-profile.js "$MODEL" 512 \
      > "$OUT/ncu-mma9-sections.csv" 2> "$OUT/ncu-mma9-sections.err" || true
    bun dist/bench/gpu/ncu-summary.js "$OUT/ncu-mma9-sections.csv" --metrics > "$OUT/ncu-mma9-sections.md" 2>&1 || true
    stalls=$(for r in long_scoreboard short_scoreboard lg_throttle mio_throttle math_pipe_throttle wait barrier not_selected selected no_instruction dispatch_stall imc_miss branch_resolving; do
      printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' $r; done)
    PENSIEVE_STEP_TOKENS=9 timeout 120 "$NCU" --clock-control none --cache-control none --print-units base --csv \
      --profile-from-start off -k regex:pv_gemv --launch-count 5 --metrics "${stalls}smsp__inst_executed.sum,gpu__time_duration.sum" \
      bun dist/bench/gpu/step-profile.js "$MODEL" 512 > "$OUT/ncu-mma9-stalls.csv" 2> "$OUT/ncu-mma9-stalls.err" || true
    bun dist/bench/gpu/ncu-summary.js "$OUT/ncu-mma9-stalls.csv" --metrics > "$OUT/ncu-mma9-stalls.md" 2>&1 || true
    tail -3 "$OUT/ncu-mma9-stalls.err" "$OUT/ncu-mma9-sections.err"
  fi
  timeout 150 bun test --timeout 140000 ./dist/test-gpu/verify-logits.test.js 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -20 | tee "$OUT/verify-mma-tests.txt" || true
  ;;
mma-ab)
  # Issues 11 and 13, 2026-12-08: the tensor-core body's knobs, none yet measured on a GPU, alternating against
  # the default: PENSIEVE_GEMV_MMA_TILES=2 (two tiles of 16 rows a block: x unpacked once for both),
  # PENSIEVE_GEMV_MMA_PRENORM=1 (x normed by MLX's rms_norm before the norm variants, no per-block prologue), both,
  # and PENSIEVE_GEMV_MMA_PRELOAD=1 (first weights before the prologue). The verify pass after 512 tokens (steps
  # scalar) and, in round 1, steps of 8 and 32 rows fused on tensor cores; then the fused GPU tests at 3 rows
  # and ragged batches with TILES=2 and PRENORM=1. ~8 minutes (AB_ROUNDS=1: ~5).
  export PENSIEVE_GPU_FUSED_VERIFY=1 PENSIEVE_GPU_VERIFY_MMA=1
  for r in ${AB_ROUNDS-1 2}; do
    for v in X=0 PENSIEVE_GEMV_MMA_TILES=2 PENSIEVE_GEMV_MMA_PRENORM=1 "PENSIEVE_GEMV_MMA_TILES=2 PENSIEVE_GEMV_MMA_PRENORM=1" PENSIEVE_GEMV_MMA_PRELOAD=1; do
      echo "== round $r, $v" | tee -a "$OUT/mma-ab.md"
      env $v timeout 60 bun dist/bench/run.js spec-verify-cost --device gpu --model "$MODEL" --prompt 512 --ks 2,4,8,15 --n 15 \
        2>&1 | grep -E '^\| [0-9]|One-token|rror' | tee -a "$OUT/mma-ab.md" || true
      if [ "$r" = 1 ]; then
        echo "== $v" >> "$OUT/mma-ab-rows.md"
        env $v PENSIEVE_GPU_FUSED_MAX_ROWS=32 timeout 90 bun dist/bench/gpu/rows-profile.js "$MODEL" --rows 1,8,32 --verify 9 --chunk 0 \
          2>&1 | tee -a "$OUT/mma-ab-rows.md" | grep -E '^\| (1|8|32|9) ' || true
      fi
    done
  done
  PENSIEVE_GEMV_MMA=2 PENSIEVE_GEMV_MMA_TILES=2 PENSIEVE_GEMV_MMA_PRENORM=1 timeout 150 bun test --timeout 140000 \
    ./dist/test-gpu/fused.test.js -t "M=3:|ragged batch" 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -30 | tee "$OUT/mma-ab-tests.txt" || true
  ;;
kprof-mega)
  # Issue 11, after 2026-12-07 (eleventh session): why the layer megakernel's device time is ~3x the five fused
  # kernels' (gpu-h100-2026-12-07j: polls, prefetch, blocks an SM and warps a block ruled out). Likely: one kernel
  # takes the registers of its largest phase, so its GEMV phases run with fewer warps (and loads) in flight than
  # the GEMV kernels alone. Nsight Compute on one step at 128 tokens, fused then megakernel: each kernel's time,
  # DRAM bytes, registers a thread, achieved occupancy and the occupancy its registers allow. ~3 minutes.
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
  for v in X=0 PENSIEVE_GPU_MEGA=1; do
    env $v timeout 120 "$NCU" --clock-control none --cache-control none --print-units base --csv --profile-from-start off \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active,launch__occupancy_limit_registers,launch__grid_size,launch__block_size \
      bun dist/bench/gpu/step-profile.js "$MODEL" 128 > "$OUT/ncu-mega-${v%%=*}.csv" 2> "$OUT/ncu-mega-${v%%=*}.err" || true
    { echo "== $v"; bun dist/bench/gpu/ncu-summary.js "$OUT/ncu-mega-${v%%=*}.csv" --top 12; } 2>&1 | tee -a "$OUT/ncu-mega.md"
  done
  ;;
kprof|kprof-step)
  # Issue 11, 2026-12-07: why the fused layer kernels run slower in a step than the plain GEMV of the same weight
  # (Nsight Compute: q|k|v with RoPE 27 us, plain q|k|v 9.3 us in gemv.ts). The fused kernels beside the plain
  # GEMV with a sweep of launch shapes (fused-kernels.ts), then every kernel of one fused decode step at 128 and
  # 2,048 tokens of context (clocks as found, caches not flushed), with the DRAM bytes each read. ~4 minutes.
  if [ "$1" = kprof ]; then timeout 240 bun dist/bench/gpu/fused-kernels.js --out "$OUT/fused-kernels" 2>&1 | grep -vE "^\|" | tail -80 || true; fi
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
  NSYS=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1 || true)
  log "ncu: ${NCU:-none}; nsys: ${NSYS:-none}"
  for ctx in ${KPROF_CTX:-128 2048}; do
    [ -n "$NCU" ] || break
    timeout 150 "$NCU" --clock-control none --cache-control none --print-units base --csv --profile-from-start off \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      bun dist/bench/gpu/step-profile.js "$MODEL" $ctx > "$OUT/ncu-step-$ctx.csv" 2> "$OUT/ncu-step-$ctx.err" || true
    { echo "== step at $ctx tokens"; bun dist/bench/gpu/ncu-summary.js "$OUT/ncu-step-$ctx.csv" --top 16; } 2>&1 |
      tee -a "$OUT/ncu-summary.md"
    grep -vE '^==|^"' "$OUT/ncu-step-$ctx.err" | tail -5 || true
  done
  ;;
mma-tests)
  # Issues 11 and 13, 2026-12-07: the GPU tests of the fused decode path with the GEMV's tensor-core body from 3 rows
  # of x (the default; MMA_FROM=N for another: MMA_FROM=1 puts verify passes and one-token steps on it too) and fused
  # verify passes up to 16 tokens: kernels against MLX's ops, ragged batches of 2-4 and 5-8 rows, verify passes of
  # 2-16 tokens (logits on vs off), greedy speculation equal to plain decoding: what would let batches of 5-8 rows
  # (and, with MMA_FROM=1, tensor-core verify passes) be on by default (bench/results/gpu-h100-2026-12-07f).
  # Not the megakernel's (PENSIEVE_GPU_MEGA, off): it checks bit equality with the scalar GEMV's sums.
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  PENSIEVE_GEMV_MMA=${MMA_FROM:-3} PENSIEVE_GPU_FUSED_VERIFY=1 timeout 280 bun test --timeout 180000 ./dist/test-gpu/fused.test.js \
    -t "${MMA_TEST_FILTER:-^(?!.*megakernel)}" 2>&1 | grep -E '^\((pass|fail)\)| pass$| fail$|error:|Expected|Received' | head -80 |
    tee "$OUT/mma-tests-fused.txt" || true
  ;;
mma)
  # Issues 11 and 13, 2026-12-07: the GEMV family's tensor-core body (kernels-gemv-mma.ts, PENSIEVE_GEMV_MMA=N: from N
  # rows of x) against the scalar body: the products at 1, 9 and 32 rows of x, verify passes of 1-15 drafts after 512
  # tokens, decode steps of 1-32 rows (fused up to 32 rows with it), one stream 128 -> 256. After prepare; ~6 minutes.
  timeout 150 bun dist/bench/gpu/fused-kernels.js --no-one --quick --rows "${MMA_ROWS:-1,9,32}" --out "$OUT/mma-kernels" \
    2>&1 | grep -E 'us|skipped|rror' | tail -80 || true
  for mma in 0 1; do
    PENSIEVE_GEMV_MMA=$mma PENSIEVE_GPU_FUSED_VERIFY=1 timeout 70 bun dist/bench/run.js spec-verify-cost --model "$MODEL" \
      --device gpu --prompt 512 --ks 1,2,4,8,15 --n 15 --out-dir "$OUT/verify-mma$mma" 2>&1 | grep -E '^\| [0-9]|step:' |
      sed "s/^/mma$mma /" || true
    engines=pensieve; [ $mma = 1 ] && engines=pensieve,mlx-lm  # mlx-lm once, for the same-lease ratio
    PENSIEVE_GEMV_MMA=$mma timeout 90 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines $engines \
      --python $PY --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 1 \
      --out-dir "$OUT/single-mma$mma" 2>&1 | grep -E '^\| (pensieve|mlx)' | sed "s/^/mma$mma /" || true
  done
  for mma in 0 1; do
    rows=4; [ $mma = 1 ] && rows=32
    PENSIEVE_GEMV_MMA=$mma PENSIEVE_GPU_FUSED_MAX_ROWS=$rows PENSIEVE_GPU_FUSED_VERIFY=1 timeout 80 bun dist/bench/gpu/rows-profile.js \
      "$MODEL" --rows 1,2,4,8,32 --verify 9,16 --chunk 0 2>&1 | grep -E '^\||^##' | sed "s/^/mma$mma /" || true
  done
  ;;
mma-load)
  # 32 concurrent streams over HTTP: the default (fused decode to 4 rows, MLX's ops with dense fp16 copies past them)
  # against fused decode up to 32 rows (PENSIEVE_GPU_FUSED_MAX_ROWS=32: the GEMV's tensor cores from 3 rows, its
  # default), each server given 60 s idle to build its kernels. ~4 minutes.
  for v in X=0 PENSIEVE_GPU_FUSED_MAX_ROWS=32; do
    env $v timeout 140 bun dist/bench/run.js load --model "$MODEL" --device gpu \
      --levels 32 --servers pensieve --python $PY --requests-per-client 2 --out-tokens 128 --prompt-tokens 128,256,512 \
      --ban-tokens $BAN --settle-ms "${SETTLE_MS:-60000}" --out-dir "$OUT/load32-${v#*=}" 2>&1 | grep -E '^\| pensieve' |
      sed "s/^/$v /" || true
  done
  ;;
rows-default)
  # Issue 11, after 2026-12-07e: batches of 2-4 rows take the fused kernels by default, each row count held on
  # MLX's ops until the engine has built its kernels while idle. One call after prepare (carry dist; ~8 minutes):
  # the GPU tests of multi-row steps (a 3-row step, ragged batches through the scheduler), then 2 and 4 streams over
  # HTTP, each server from an empty PTX cache (as a first start), defaults against PENSIEVE_GPU_FUSED_MAX_ROWS=1,
  # with 60 s of idle time after start (SETTLE_MS), then 8 Claude Code sessions at defaults.
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  timeout 200 bun test --timeout 180000 ./dist/test-gpu/fused.test.js -t "rows" 2>&1 |
    grep -E '^\((pass|fail)\)| pass$| fail$' | tee "$OUT/rows-tests.txt" || true
  for r in 4 1 4; do
    echo "== rows $r, empty PTX cache"
    PENSIEVE_GPU_FUSED_MAX_ROWS=$r MLX_PTX_CACHE_DIR="$W/ptx-cold-$r-$RANDOM" timeout 150 bun dist/bench/run.js load \
      --model "$MODEL" --device gpu --levels 2,4 --servers pensieve --python $PY --requests-per-client 3 --out-tokens 128 \
      --prompt-tokens 128,256,512 --ban-tokens $BAN --settle-ms "${SETTLE_MS:-60000}" --out-dir "$OUT/rows-$r" 2>&1 |
      grep -E '^\| pensieve' || true
    grep -hE 'kernels built|stay on MLX' "$OUT/rows-$r"/pensieve.log 2>/dev/null | tail -6 || true
  done
  CC_RUNS=a CC_TEST=0 timeout 160 bash "$0" cc 2>&1 | tail -20 || true
  ;;
smol-stage)
  # The real SmolLM2-135M (Q4_1 GGUF, 99 MB) in three parts of 33 MB, one per call (each call's carry, with the
  # tree, stays under 64 MiB): carry .device/smol.part.0, then .part.1, then .part.2 with .device/smol.sha256.
  cp .device/smol.part.* "$W/" 2>/dev/null || true
  ls -la "$W"/smol.part.*
  if [ -f "$W/smol.part.0" ] && [ -f "$W/smol.part.1" ] && [ -f "$W/smol.part.2" ] && [ -f .device/smol.sha256 ]; then
    cat "$W"/smol.part.0 "$W"/smol.part.1 "$W"/smol.part.2 > "$W/smollm2.gguf"
    want=$(cut -d' ' -f1 .device/smol.sha256)
    got=$(sha256sum "$W/smollm2.gguf" | cut -d' ' -f1)
    [ "$want" = "$got" ] && log "smollm2.gguf sha256 ok" || { log "smollm2.gguf sha256 MISMATCH"; rm -f "$W/smollm2.gguf"; }
  fi
  ;;
spec-smol)
  # Issue 13: prompt lookup's gain on real text on a GPU. The real SmolLM2-135M (after smol-stage) on the
  # code-editing prompts, one stream in process, speculation off against the engine's GPU default (drafts by cost
  # through the fused verify path), greedy output compared. ~3 minutes after prepare; carry dist.
  timeout 400 bun dist/bench/run.js spec --model "$W/smollm2.gguf" --device gpu --gen 256 --repeat 2 2>&1 |
    grep -vE '^\[|^ *$' | tail -30 | tee "$OUT/spec-smol.txt" || true
  ;;
reserve-ab)
  # Issue 10, after 2026-12-07d: does the scheduler's one allocation for a prompt's KV slow a long prefill, as it made
  # pensieve generate's 3.2x slower? 120,000 tokens over HTTP, default (reserve) then PENSIEVE_PREFILL_RESERVE=0, then
  # the default again (the first run on a fresh machine pays the kernel cache: compare the last two). ~3 minutes.
  for r in 1 1 0; do
    log "prefill reserve $r"
    PENSIEVE_PREFILL_RESERVE=$r timeout 120 bun dist/bench/gpu/long-memory.js "$MODEL" 120000 2>&1 |
      grep -E 'done in|MLX peak|status' | grep -v '"/metrics"\|"/health"' | tail -4 | tee -a "$OUT/reserve-ab.txt" || true
  done
  ;;
rows)
  # Issues 11 and 13: host against wall time of decode steps of 1-32 rows, a verify pass of 3-17 tokens, and
  # MLX's product alone at M rows (bench/gpu/rows-profile.ts; ~1 minute). After prepare; carry dist.
  timeout "${ROWS_TIMEOUT:-150}" bun dist/bench/gpu/rows-profile.js "$MODEL" 2>&1 | tee "$OUT/rows-profile.md" || true
  ;;
read-ab)
  # 2026-12-08 (thirteenth session, no GPU lent): pv_read used to evaluate contiguous(token), a node queued behind the
  # step already queued, so reading step n's token waited for step n+1 and the host built step n+2 with the GPU idle
  # (on the CPU: 20.8 -> 17.4 ms a token once fixed). PENSIEVE_READ_VIA_COPY=1 restores the old order. Pipelined
  # step split and one stream against mlx-lm, old/new alternating; then 32 streams over HTTP (new). ~6 minutes.
  for round in 1 2; do
    for v in "PENSIEVE_READ_VIA_COPY=1" "PENSIEVE_READ_VIA_COPY=0"; do
      echo "== round $round, $v" | tee -a "$OUT/read-ab.md"
      env $v timeout 60 bun dist/bench/gpu/step-split.js "$MODEL" --steps 48 2>&1 | grep -E '^\| pipelined|rror' |
        tee -a "$OUT/read-ab.md" || true
    done
  done
  for v in "PENSIEVE_READ_VIA_COPY=1" "PENSIEVE_READ_VIA_COPY=0"; do
    env $v timeout 120 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm \
      --python $PY --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --repeat 2 \
      --out-dir "$OUT/single-${v#*=}" 2>&1 | grep -E '^\| (pensieve|mlx)' | tee -a "$OUT/read-ab.md" || true
  done
  LEVELS=32 REQUESTS=2 timeout 150 bash "$0" load || true
  ;;
single)
  # 4,096 sits on Phi-3's RoPE boundary (original_max_position_embeddings): its first decode step recomputes the
  # cache with the long factors (~270 ms on an H100, counted in decode). Kept for the prefill history; decode at
  # that length wants 4,000 or 8,192 (bench/results/gpu-h100-2026-12-07c/README.md).
  for p in 128 512 4096; do
    gen=256; [ "$p" -gt 128 ] && gen=16
    bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
      --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt $p --gen $gen --repeat 3 --profile --out-dir "$OUT"
  done
  ;;
load)
  bun dist/bench/run.js load --model "$MODEL" --device gpu --levels "${LEVELS:-1,8,32,64}" --servers pensieve,mlx-lm \
    --python $PY --requests-per-client "${REQUESTS:-2}" --out-tokens 128 --prompt-tokens 128,256,512 \
    --ban-tokens $BAN --out-dir "$OUT"
  ;;
kvcheck)
  # A short check in two calls (unpack first): set-up without mlx-lm, the full model, then turn 1, the same
  # again and a restart (the prefix cache from disk). Carry .device/mlx-cuda.part.b2, dist and the request (after unpack and stage).
  if [ ! -d "$W/wheel/mlx" ]; then
    mlx_parts | xz -dc | (mkdir -p "$W/wheel" && tar -xf - -C "$W/wheel")
  fi
  bun dist/scripts/setup.js --backend cuda --no-model --wheel-dir "$W/wheel" | tail -2
  [ -f "$MODEL/model.safetensors" ] || bun dist/scripts/make-random-model.js --config .device/phi3/config.json \
    --tokenizer-from .device/phi3 --out "$MODEL" --device gpu --seed 1
  bun dist/bench/run.js claude-code --model "$MODEL" --device gpu --servers pensieve --quick \
    --request .device/claude-code-request.json --out-dir "$OUT" --home "$W/home"
  ;;
kv)
  # Issue 10: Claude Code's real first request (carried in .device/, never committed) replayed at default
  # settings, then a long prompt over HTTP; and the long prompt in process against mlx-lm (peak memory, first token).
  [ -f dist/test-gpu/long-context.test.js ] && PENSIEVE_GPU_PHI3="$MODEL" timeout 580 bun test --timeout 600000 \
    ./dist/test-gpu/long-context.test.js 2>&1 | tail -20 | tee "$OUT/long-context-test.txt"
  bun dist/bench/run.js claude-code --model "$MODEL" --device gpu --servers "${SERVERS:-pensieve,mlx-lm}" --python $PY \
    --request .device/claude-code-request.json --out-dir "$OUT" --home "$W/home" --long "${LONG:-120000}"
  for p in ${LONG_PROMPTS:-120000}; do
    bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
      --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt $p --gen 4 --repeat 1 --out-dir "$OUT"
  done
  ;;
kv-a)
  # Issue 10, second pass (split for the 600 s call limit): the advertised context over HTTP, the full replay at
  # default settings beside mlx_lm.server, then the cached turns again with cuDNN for every query count (A/B).
  timeout 330 bun dist/bench/run.js claude-code --model "$MODEL" --device gpu --servers "${SERVERS:-pensieve,mlx-lm}" \
    --python $PY --request .device/claude-code-request.json --out-dir "$OUT/replay" --home "$W/home-a" \
    --long "${LONG:-131000}" || true
  PENSIEVE_GPU_WRITTEN_OUT_QUERIES=0 timeout 150 bun dist/bench/run.js claude-code --model "$MODEL" --device gpu \
    --servers pensieve --quick --request .device/claude-code-request.json --out-dir "$OUT/fused-only" --home "$W/home-b"
  ;;
cc)
  # Issue 10's 8 concurrent second sessions: the replay at default settings (since 2026-12-07e the fused decode
  # kernels for batches of 1-4 rows, built while idle) against PENSIEVE_GPU_FUSED_MAX_ROWS=1 (a lone row only, the
  # earlier default), A/B/A; then the GPU test of a 3-row step. Pensieve only, no long prompt. After prepare; carry
  # dist (pack.sh) and .device/claude-code-request.json.
  for run in ${CC_RUNS:-a b a2}; do
    rows=$([ "$run" = b ] && echo 1 || echo 4)
    PENSIEVE_GPU_FUSED_MAX_ROWS=$rows timeout 140 bun dist/bench/run.js claude-code --model "$MODEL" --device gpu \
      --servers pensieve --request .device/claude-code-request.json --out-dir "$OUT/cc-$run-rows$rows" \
      --home "$W/home-cc-$run" || true
  done
  [ "${CC_TEST:-1}" = 0 ] || timeout 130 bun test --timeout 120000 ./dist/test-gpu/fused.test.js -t "a step of 3 rows" 2>&1 |
    tail -15 | tee "$OUT/cc-gpu-test.txt"
  ;;
kv-b)
  # Issue 10: 8-bit KV (replay, quick) and a 120K-token prompt in process against mlx-lm (peak memory, first token).
  PENSIEVE_KV_BITS=8 timeout 150 bun dist/bench/run.js claude-code --model "$MODEL" --device gpu --servers pensieve \
    --quick --request .device/claude-code-request.json --out-dir "$OUT/kv8" --home "$W/home-c" || true
  for p in ${LONG_PROMPTS:-120000}; do
    timeout 300 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines pensieve,mlx-lm --python $PY \
      --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt $p --gen 4 --repeat 1 --out-dir "$OUT/long" || true
  done
  ;;
long)
  # Issue 10: memory over time while serve prefills the advertised context (less 32), then in process at LONG_PROMPTS.
  # SERVE_PROMPTS="" skips this part (unset: auto, the advertised context less 32).
  for n in ${SERVE_PROMPTS-auto}; do
    [ "$n" = auto ] && n=
    timeout 200 bun dist/bench/gpu/long-memory.js "$MODEL" $n 2>&1 | grep -v '"/metrics"\|"/health"' | tail -80 | tee -a "$OUT/long-memory.txt" || true
  done
  for p in ${LONG_PROMPTS:-}; do
    timeout 250 bun dist/bench/run.js generate --model "$MODEL" --device gpu --engines "${ENGINES:-pensieve,mlx-lm}" \
      --python $PY --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt $p --gen 4 --repeat 1 \
      --out-dir "$OUT/long" 2>&1 | tail -20 || true
  done
  ;;
ab)
  # Pensieve alone, default engine settings against PENSIEVE_ENGINE_OVERRIDES=$AB, same machine.
  for o in '{}' "${AB:?AB=json}"; do
    PENSIEVE_ENGINE_OVERRIDES="$o" bun dist/bench/run.js load --model "$MODEL" --device gpu --levels "${LEVELS:-1,8,16,32}" \
      --servers pensieve --requests-per-client "${REQUESTS:-2}" --out-tokens 128 --prompt-tokens 128,256,512 \
      --ban-tokens $BAN --out-dir "$OUT/ab-$(echo "$o" | tr -dc 'a-zA-Z0-9')" 2>&1 | grep '^| pensieve'
  done
  ;;
spec)
  for p in 512 4096; do
    bun dist/bench/run.js spec-verify-cost --model "$MODEL" --device gpu --prompt $p --ks 2,4,8,16 --n 30 --out-dir "$OUT"
  done
  bun dist/bench/run.js spec-verify-cost --model "$MODEL" --device gpu --prompt 512 --ks 2,4,8,16 --n 30 --dense false --out-dir "$OUT"
  ;;
lone)
  export MLX_CUDA_SDPA_CACHE_SIZE=256 # as the server sets it for its engine process
  for cfg in '{"prefillWidthMultiple":1}' '{}' '{"prefillWidthMultiple":1,"denseWeights":false}'; do
    bun dist/bench/engines/lone-ttft.js "$MODEL" gpu --engine-config "$cfg"
  done 2>&1 | grep -v '^\[' | tee "$OUT/lone-ttft.txt"
  ;;
oom)
  # Issue 14: a real out-of-memory error on the GPU (test/gpu/out-of-memory.test.ts, after prepare; carry dist when
  # it was packed after prepare's carry). Server up with the full-size Phi-3, a stream running, a child process
  # (hold-gpu-memory.ts: raw cudaMalloc, no MLX) takes all but 2 GiB of the card, a 30,000-token prompt must get a
  # 5xx naming the out-of-memory error, the stream must finish, and after the memory is given back the same prompt
  # a 200. Each phase prints a timestamped line as it happens, tee'd into $OUT/oom.txt, so a timeout still shows
  # where it stopped. About 100-150 s on an H100; OOM_TIMEOUT caps it (default 210 s).
  [ -f "$MODEL/config.json" ] || { echo "no $MODEL: run the prepare phase first" >&2; exit 1; }
  [ -f dist/test-gpu/hold-gpu-memory.ts ] || { echo "no dist/test-gpu/hold-gpu-memory.ts: run pack.sh here and carry dist" >&2; exit 1; }
  { log "oom test: limit ${OOM_TIMEOUT:-210} s; card before: $(nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true)"; } 2>&1 | tee "$OUT/oom.txt"
  set +e
  PENSIEVE_GPU_PHI3="$MODEL" PENSIEVE_TEST_LOGS=${PENSIEVE_TEST_LOGS:-1} timeout -k 10 "${OOM_TIMEOUT:-210}" \
    bun test --timeout 400000 ./dist/test-gpu/out-of-memory.test.js 2>&1 | tee -a "$OUT/oom.txt"
  rc=${PIPESTATUS[0]}
  set -e
  # A skip exits 0: say so (the holder's probe line above tells why: no libcudart, no device, no model).
  if [ "$rc" = 0 ] && grep -q '^(skip) a real out-of-memory' "$OUT/oom.txt"; then rc=3; fi
  { log "oom test exit $rc$([ "$rc" = 124 ] && echo ' (timed out)')$([ "$rc" = 3 ] && echo ' (SKIPPED)')"
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv || true
    echo "processes still on the GPU (none expected):"
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader || true; } 2>&1 | tee -a "$OUT/oom.txt"
  exit "$rc"
  ;;
llama-gguf)
  # Only llama-build's first part, CPU only: unpack the carried tarball and write the Q4_0 GGUF (~60 s). Run in the
  # background beside a GPU phase, then llama-build skips both, e.g. (one call, carry llama.tar.xz{,.sha256},
  # libggml-cuda.so.xz{,.sha256} and dist):
  #   bash bench/gpu/device.sh llama-gguf > /tmp/llama-gguf.log 2>&1 & g=$!; bash bench/gpu/device.sh oom; wait $g; bash bench/gpu/device.sh llama-build
  llama_unpack
  llama_env
  [ -f "$MODEL/model.safetensors" ] || { echo "no $MODEL: run the prepare phase first" >&2; exit 1; }
  if [ ! -f "$GGUF" ]; then
    log "writing $GGUF"
    bun dist/llama/scripts/mlx-to-gguf.js --model "$MODEL" --out "$GGUF.part" > "$OUT/llama-gguf.txt" 2>&1 && mv "$GGUF.part" "$GGUF"
  fi
  cat "$OUT/llama-gguf.txt" 2>/dev/null || true
  ls -la "$GGUF"
  ;;
llama-build)
  # Unpack node-llama-cpp (JS, its CUDA package less libggml-cuda.so), build libggml-cuda.so for the H100
  # (sm_90) from the same llama.cpp release with this machine's nvcc (the prebuilt one's sm_90 code is PTX
  # from CUDA 13.1, which driver 580 cannot JIT), write the MLX random Phi-3 as a Q4_0 GGUF (beside the
  # build), smoke-test it. Resumable: run again (no carry needed) if it ran out of time; the build goes on.
  # Unversioned sonames as node-llama-cpp builds them: the new library then binds to the prebuilt libggml-base.so
  # already loaded (tried here with a self-built CPU backend beside the prebuilt addon: one ggml-base, same tokens).
  llama_unpack
  log "llama.cpp $(cut -c1-50 "$L/llama.cpp-commit.txt"), node-llama-cpp $(grep -o '"version": "[^"]*"' "$L/nlc/node_modules/node-llama-cpp/package.json")"
  llama_env
  # A libggml-cuda.so built off the machine for sm_90 (pack-llama.sh with LLAMA_CUDA_LIB), carried: no build here.
  # (Carried in this call, or kept by an earlier `llama-stage` call when both do not fit in one.)
  lib=.device/libggml-cuda.so.xz
  [ -f "$lib" ] || lib=$W/libggml-cuda.so.xz
  # (Installed again when a different one is carried: .done holds the installed one's checksum.)
  if [ -f "$lib" ] && [ "$(cat "$L/build/.done" 2>/dev/null)" != "$(cat "$lib.sha256")" ]; then
    (cd "$(dirname "$lib")" && echo "$(cat libggml-cuda.so.xz.sha256)  libggml-cuda.so.xz" | sha256sum -c -)
    xz -dc "$lib" > "$LLAMA_BINS/libggml-cuda.so"
    mkdir -p "$L/build" && cp "$lib.sha256" "$L/build/.done"
    log "libggml-cuda.so carried (built for sm_90 off the machine): $(du -h "$LLAMA_BINS/libggml-cuda.so" | cut -f1)"
  fi
  # The same random weights as Pensieve's and mlx-lm's model, as Q4_0 (scripts/mlx-to-gguf.ts), while CUDA builds.
  [ -f "$MODEL/model.safetensors" ] || { echo "no $MODEL: run the prepare phase first" >&2; exit 1; }
  convert=
  if [ ! -f "$GGUF" ]; then
    (bun dist/llama/scripts/mlx-to-gguf.js --model "$MODEL" --out "$GGUF.part" && mv "$GGUF.part" "$GGUF") > "$OUT/llama-gguf.txt" 2>&1 &
    convert=$!
  fi
  if [ "$(llama_backend)" = cuda ]; then
    if [ ! -f "$L/build/.done" ]; then
      export PATH="$L/cmake/bin:$PATH"
      nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
      log "cmake $(cmake --version | head -1), ninja $(ninja --version), $("$nvcc" --version | tail -1), $(nproc) cores, CUDA libraries in ${PENSIEVE_LLAMA_LIBRARY_PATH:-?}"
      # cuBLAS from Python's nvidia-* packages where the toolkit lacks it (unversioned names for the linker).
      extra=()
      if [ ! -e "$(dirname "$(dirname "$nvcc")")/include/cublas_v2.h" ]; then
        d=$(cuda_lib_dir)
        [ -n "$d" ] || { echo "no libcublas.so.13 anywhere: cannot build llama.cpp's CUDA backend" >&2; exit 1; }
        mkdir -p "$L/cuda-extra"
        for f in cublas cublasLt cudart; do ln -sf "$d/lib$f.so.13" "$L/cuda-extra/lib$f.so"; done
        extra=(-DCMAKE_LIBRARY_PATH="$L/cuda-extra" -DCMAKE_CUDA_FLAGS="-I$(dirname "$d")/include")
        log "cuBLAS is not in the toolkit: using $d"
      fi
      cmake -S "$L" -B "$L/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc" "${extra[@]}" \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_GRAPHS=ON -DGGML_CUDA_NCCL=OFF \
        -DGGML_CPU=OFF -DGGML_BACKEND_DL=ON -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_CCACHE=OFF \
        -DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON > "$OUT/llama-cmake.txt" 2>&1 || { tail -40 "$OUT/llama-cmake.txt"; exit 1; }
      start=$(date +%s)
      timeout "${LLAMA_BUILD_TIMEOUT:-480}" cmake --build "$L/build" --target ggml-cuda -j "$(nproc)" > "$OUT/llama-build.txt" 2>&1 ||
        { tail -40 "$OUT/llama-build.txt"; echo "build stopped after $(($(date +%s) - start)) s: run llama-build again to go on" >&2; wait; exit 1; }
      log "libggml-cuda.so built in $(($(date +%s) - start)) s"
      cp "$(find "$L/build" -name libggml-cuda.so | head -1)" "$LLAMA_BINS/libggml-cuda.so" && touch "$L/build/.done"
    fi
    llama_library_path
    LD_LIBRARY_PATH="${PENSIEVE_LLAMA_LIBRARY_PATH}:${LD_LIBRARY_PATH:-}" ldd "$LLAMA_BINS/libggml-cuda.so" | tee "$OUT/llama-ldd.txt"
    if grep -q "not found" "$OUT/llama-ldd.txt"; then echo "libggml-cuda.so: a library is missing (above)" >&2; fi
    # ggml's release loader skips a backend silently when dlopen(RTLD_NOW) or its init fails: do what it does here,
    # with dlerror(), then ggml_backend_init() and the device count it registers.
    LD_LIBRARY_PATH="$LLAMA_BINS:${PENSIEVE_LLAMA_LIBRARY_PATH}:${LD_LIBRARY_PATH:-}" timeout 60 $PY -c '
import ctypes, os, sys
bins = sys.argv[1]
try:
    lib = ctypes.CDLL(os.path.join(bins, "libggml-cuda.so"), mode=os.RTLD_NOW | os.RTLD_LOCAL)
except OSError as e:
    sys.exit("libggml-cuda.so: dlopen FAILED (ggml skips it): %s" % e)
base = ctypes.CDLL(os.path.join(bins, "libggml-base.so"))
lib.ggml_backend_init.restype = ctypes.c_void_p
base.ggml_backend_reg_name.restype = ctypes.c_char_p
base.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
reg = lib.ggml_backend_init()
if not reg:
    sys.exit("libggml-cuda.so: dlopen ok, ggml_backend_init returned NULL")
print("libggml-cuda.so: dlopen ok; backend %s with %d device(s)" % (base.ggml_backend_reg_name(reg).decode(), base.ggml_backend_reg_dev_count(reg)))
' "$LLAMA_BINS" 2>&1 | tee "$OUT/llama-dlopen.txt" || true
  else
    cp -r "${LLAMA_CPU_PACKAGE:?the @node-llama-cpp/linux-x64 folder}" "$L/nlc/node_modules/@node-llama-cpp/"
  fi
  if [ -n "$convert" ]; then wait "$convert" || { cat "$OUT/llama-gguf.txt"; exit 1; }; fi
  cat "$OUT/llama-gguf.txt" 2>/dev/null || true
  ls -la "$GGUF"
  # Smoke test: load on the GPU, 64 prompt tokens, 16 greedy ones.
  $PY -c "import json; print(json.dumps([1] + list(range(450, 513))))" > "$W/llama-smoke-prompt.json"
  export LD_LIBRARY_PATH="${PENSIEVE_LLAMA_LIBRARY_PATH}:${LD_LIBRARY_PATH:-}"
  if ! timeout 300 bun bench/engines/llamacpp-generate.mjs "$GGUF" "$W/llama-smoke-prompt.json" 16 1 "$(llama_backend)" \
    > "$OUT/llama-smoke.txt" 2>&1; then
    tail -30 "$OUT/llama-smoke.txt"
    # The addon alone (what node-llama-cpp's binary test does): ggml prints why a backend did not load.
    # (GGML_BACKEND_PATH: ggml loads that file once more, not silently, and prints why it failed.)
    GGML_BACKEND_PATH="$LLAMA_BINS/libggml-cuda.so" bun -e "const b = require('$LLAMA_BINS/llama-addon.node'); b.loadBackends('$LLAMA_BINS');
      console.log('GPU type:', b.getGpuType()); await b.init(); console.log(b.getGpuDeviceInfo?.());" 2>&1 |
      tail -20 | tee "$OUT/llama-addon-check.txt"
    exit 1
  fi
  tail -5 "$OUT/llama-smoke.txt"
  ;;
llama-stage)
  # Keeps a carried .device/libggml-cuda.so.xz{,.sha256} for llama-build (when it and llama.tar.xz exceed one carry).
  cp .device/libggml-cuda.so.xz .device/libggml-cuda.so.xz.sha256 "$W/" && ls -la "$W"/libggml-cuda.so.xz
  ;;
llama)
  # One table per prompt length: Pensieve, mlx-lm (the MLX random Phi-3) and llama.cpp CUDA (the same weights
  # as Q4_0), interleaved, greedy, end-of-sequence ignored, same prompt token ids; then the GPU's name in each JSON.
  llama_env
  llama_gpu=--llama-gpu
  [ "$(llama_backend)" = cpu ] && llama_gpu="--llama-threads 2"
  # LLAMA_RUNS: prompt:generated:repeats:seconds allowed, one table each (the defaults fit one 600 s call).
  for spec in ${LLAMA_RUNS:-128:256:3:180 4096:16:3:150 20000:16:2:220}; do
    IFS=: read -r p gen rep limit <<< "$spec"
    timeout "$limit" bun dist/llama/bench/run.js generate --model "$MODEL" --device "${LLAMA_DEVICE:-gpu}" \
      --engines "${ENGINES:-pensieve,mlx-lm,llama.cpp}" --python $PY --pensieve-engine "${PENSIEVE_ENGINE:-dist/bench/engines/pensieve-generate.js}" \
      --llama-gguf "$GGUF" $llama_gpu --prompt "$p" --gen "$gen" --repeat "$rep" --out-dir "$OUT/llama" 2>&1 | grep -v '^\[bench\]' || true
  done
  bun dist/llama/bench/gpu/stamp-gpu.js "$OUT/gpu.txt" "$OUT/llama" > /dev/null 2>&1 || echo "could not stamp the GPU name" >&2
  ;;
*)
  echo "unknown phase $1" >&2
  exit 2
  ;;
esac
