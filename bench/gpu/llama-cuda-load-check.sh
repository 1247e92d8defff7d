#!/usr/bin/env bash
# Checks here, without a GPU, that the libggml-cuda.so pack-llama.sh carries (.device/libggml-cuda.so.xz) loads as
# ggml's CUDA backend beside node-llama-cpp's prebuilt addon, the way the device's `llama-build` phase uses it:
# ggml's release loader dlopens every backend with RTLD_NOW and skips, silently, one that fails (the H100 run of
# 2026-12-06 19:00: "GPU type: false", NoBinaryFoundError, because the library lacked NEEDED libcuda.so.1).
#   bash bench/gpu/llama-cuda-load-check.sh CUDA_LIB_DIR
# CUDA_LIB_DIR holds libcudart.so.13 and libcublas.so.13 (PyPI's nvidia-cuda-runtime / nvidia-cublas for CUDA 13:
# site-packages/nvidia/cu13/lib). No driver here: a stub libcuda.so.1 defining the library's cu* symbols stands
# in, so CUDA then fails to initialize ("CUDA driver version is insufficient"), after the backend has loaded.
# Passes when ggml prints "loaded CUDA backend".
set -euo pipefail
cd "$(dirname "$0")/../.."
cuda=${1:?a folder with libcudart.so.13 and libcublas.so.13}
bins=bench/.cache/node/node_modules/@node-llama-cpp/linux-x64-cuda/bins/linux-x64-cuda
[ -f .device/libggml-cuda.so.xz ] || { echo "no .device/libggml-cuda.so.xz: LLAMA_CUDA_LIB=... bash bench/gpu/pack-llama.sh" >&2; exit 1; }
[ -d "$bins" ] || { echo "no $bins: bash bench/gpu/pack-llama.sh installs node-llama-cpp" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$bins"/* "$tmp/"
xz -dc .device/libggml-cuda.so.xz > "$tmp/libggml-cuda.so"
readelf -d "$tmp/libggml-cuda.so" | grep -E 'NEEDED|RUNPATH|RPATH'
mkdir "$tmp/driver"
nm -D --undefined-only "$tmp/libggml-cuda.so" | awk '{ sub(/@.*/, "", $2) } $2 ~ /^cu[A-Z]/ { print "int " $2 "(void) { return 999; }" }' \
  > "$tmp/driver/stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tmp/driver/libcuda.so.1" "$tmp/driver/stub.c"
echo "stub libcuda.so.1: $(grep -c . "$tmp/driver/stub.c") driver functions"
LD_LIBRARY_PATH="$cuda:$tmp/driver" timeout 120 bun -e "const b = require('$tmp/llama-addon.node'); b.loadBackends('$tmp');
  console.log('GPU type:', b.getGpuType());" 2>&1 | tee "$tmp/out"
if grep -q "loaded CUDA backend" "$tmp/out"; then
  echo "PASS: ggml loaded the carried libggml-cuda.so as its CUDA backend"
else
  echo "FAIL: ggml did not load the carried libggml-cuda.so; dlopen says:" >&2
  LD_LIBRARY_PATH="$tmp:$cuda:$tmp/driver" python3 -c "import ctypes, os, sys; ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW)" \
    "$tmp/libggml-cuda.so" >&2 || true
  exit 1
fi
