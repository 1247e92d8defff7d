#!/usr/bin/env bash
# Packs what the GPU machine needs into .device/ and dist/ (both ignored), to
# be carried by the device tool in parts under its 64 MiB limit:
#   call 1 carries .device/bun.xz
#   call 2 carries .device/mlx-cuda.part.a and .device/mlx-cuda.part.b1
#   call 3 carries .device/mlx-cuda.part.b2, .device/wheels, .device/phi3 and dist
# (the checkout's tracked files, ~17 MB, travel with each call).
# Nothing can be downloaded there; see bench/gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .device/wheels .device/phi3
lock=scripts/mlx.lock.json
ver=$(bun -e "console.log(require('./$lock').mlx.version)")
# Bun itself (the npm package's binary), compressed.
[ -f .device/bun.xz ] || xz -T2 -9 -c node_modules/bun/bin/bun.exe > .device/bun.xz
# The mlx-cuda-13 wheel's contents (libmlx, headers), compressed and split.
if [ ! -f .device/mlx-cuda.part.b2 ]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_35_x86_64 --python-version 3.12 \
    "mlx-cuda-13==$ver" "mlx==$ver" "mlx-lm==0.32.2" -d "$tmp"
  (cd "$tmp" && mkdir w && cd w && unzip -q ../mlx_cuda_13-*.whl && tar -cf - mlx mlx_cuda_13.libs | xz -T2 -6 > ../mlx-cuda.tar.xz)
  head -c 20000000 "$tmp/mlx-cuda.tar.xz" > .device/mlx-cuda.part.a
  # (No pipe into head -c: tail would die of SIGPIPE, which pipefail makes fatal.)
  tail -c +20000001 "$tmp/mlx-cuda.tar.xz" > "$tmp/rest"
  head -c 26000000 "$tmp/rest" > .device/mlx-cuda.part.b1
  tail -c +26000001 "$tmp/rest" > .device/mlx-cuda.part.b2
  cp "$tmp"/mlx-"$ver"-cp312-*.whl "$tmp"/mlx_lm-*.whl .device/wheels/
  rm -rf "$tmp"
fi
# The flagship's tokenizer and config (../shared does not travel).
cp ../shared/fixtures/phi3-mini-128k/{config.json,tokenizer.json,tokenizer_config.json,generation_config.json} .device/phi3/
chmod u+w .device/phi3/*
# Pensieve and the bench harness as Bun bundles (no node_modules there).
rm -rf dist
bun build --target=bun --splitting --external playwright-core --outdir dist \
  src/cli.ts bench/run.ts bench/engines/pensieve-generate.ts bench/engines/lone-ttft.ts scripts/make-random-model.ts scripts/setup.ts \
  bench/gpu/gemv.ts bench/gpu/step-profile.ts bench/gpu/ncu-summary.ts bench/gpu/stamp-gpu.ts bench/gpu/long-memory.ts \
  bench/gpu/qmm.ts bench/gpu/rows-profile.ts bench/gpu/fused-kernels.ts bench/gpu/step-split.ts bench/gpu/verify-drift.ts > /dev/null
# The prompt worker: the bundled server resolves "./prompt-worker.ts" beside its chunks (dist/).
bun build --target=bun --outfile dist/prompt-worker.ts src/server/prompt-worker.ts > /dev/null
# The GPU tests, bundled (bench/gpu/kernels.sh runs them there with `bun test`).
bun build --target=bun --outdir dist/test-gpu test/gpu/gemv.test.ts test/gpu/kernels-abi.test.ts test/gpu/long-context.test.ts \
  test/gpu/out-of-memory.test.ts test/gpu/fused.test.ts test/gpu/qmm.test.ts test/gpu/gemv-split.test.ts \
  test/gpu/verify-logits.test.ts > /dev/null
# Tests that start a server need the prompt worker beside their bundle too.
cp dist/prompt-worker.ts dist/test-gpu/
# The out-of-memory test's card filler (raw cudaMalloc, no MLX), spawned from beside the test under its source name.
bun build --target=bun --outfile dist/test-gpu/hold-gpu-memory.ts test/gpu/hold-gpu-memory.ts > /dev/null
du -sh .device/* dist
