#!/usr/bin/env bash
# Dry run of the llama.cpp CUDA phases (device.sh llama-build, llama) on a machine without a GPU, in a
# stand-in for /tmp/pv: the same tarball (bench/gpu/pack-llama.sh), checksum, unpack, conversion to GGUF,
# smoke test and the side-by-side table, with llama.cpp's CPU build instead of the CUDA one (no build),
# the tests' tiny Phi-3 instead of the full-size model, Pensieve on the CPU and no mlx-lm.
#   bash bench/gpu/pack-llama.sh && bash bench/gpu/llama-dry-run.sh [/tmp/pv-llama-dry]
set -euo pipefail
cd "$(dirname "$0")/../.."
sim=${1:-/tmp/pv-llama-dry}
rm -rf "$sim" && mkdir -p "$sim"
tiny=$(bun -e 'import { tinyModel } from "./test/support/models"; console.log(tinyModel("tiny-phi3"))' | tail -1)
cp -r "$tiny" "$sim/phi3-mini-128k-4bit-random"
export PV_WORK=$sim OUT=$sim/out LLAMA_DRY_RUN=1 PENSIEVE_BACKEND=cpu
LLAMA_CPU_PACKAGE=bench/.cache/node/node_modules/@node-llama-cpp/linux-x64 bash bench/gpu/device.sh llama-build
LLAMA_DEVICE=cpu ENGINES=pensieve,llama.cpp LLAMA_RUNS="64:16:1:120 300:8:1:120" PENSIEVE_ENGINE=bench/engines/pensieve-generate.ts \
  bash bench/gpu/device.sh llama
ls -R "$OUT" | head -30
