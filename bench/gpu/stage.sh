#!/usr/bin/env bash
# Stages this worktree's GPU run into the checkout the device tool sends (it
# sends the session's checkout, not a helper's worktree), as two ignored folders:
#   TARGET/.gpuwt-a  call 1: bench/gpu/device.sh, .device/bun.xz
#   TARGET/.gpuwt-b  call 2: bench/gpu/device.sh, .device/{mlx-cuda.part.a, mlx-cuda.part.b1}
#   TARGET/.gpuwt    call 3: package.json, ffi, bench (no results), dist, .device/{mlx-cuda.part.b2, wheels, phi3}
# and lists them in TARGET/.git/info/exclude. Run bench/gpu/pack.sh first.
#   bash bench/gpu/stage.sh /work/main
# Then: call 1  bash .gpuwt-a/bench/gpu/device.sh unpack          carry .gpuwt-a/bench .gpuwt-a/.device
#       call 2  bash .gpuwt-b/bench/gpu/device.sh stage              carry .gpuwt-b/bench .gpuwt-b/.device
#       call 3  cd .gpuwt && PENSIEVE_GPU_GEMV=0 bash bench/gpu/device.sh prepare; bash bench/gpu/kernels.sh
#               carry .gpuwt/package.json .gpuwt/ffi .gpuwt/bench .gpuwt/dist .gpuwt/.device
# Each call's tree (the checkout's tracked files plus these) must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${1:?target checkout}
exclude="$(git -C "$target" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || echo "$target/.git")/info/exclude"
[ -d "$(dirname "$exclude")" ] || mkdir -p "$(dirname "$exclude")"
for p in /.gpuwt/ /.gpuwt-a/ /.gpuwt-b/; do grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"; done
rm -rf "$target/.gpuwt" "$target/.gpuwt-a" "$target/.gpuwt-b"
for d in .gpuwt-a .gpuwt-b; do mkdir -p "$target/$d/bench/gpu" "$target/$d/.device" && cp bench/gpu/device.sh "$target/$d/bench/gpu/"; done
mkdir -p "$target/.gpuwt/.device" "$target/.gpuwt/bench"
cp .device/bun.xz "$target/.gpuwt-a/.device/"
cp .device/mlx-cuda.part.a .device/mlx-cuda.part.b1 "$target/.gpuwt-b/.device/"
cp package.json "$target/.gpuwt/"
cp -r ffi dist "$target/.gpuwt/"
tar -cf - --exclude=results --exclude=.venv --exclude=.cache -C bench . | tar -xf - -C "$target/.gpuwt/bench"
cp -r .device/mlx-cuda.part.b2 .device/wheels .device/phi3 "$target/.gpuwt/.device/"
du -sb "$target/.gpuwt-a" "$target/.gpuwt-b" "$target/.gpuwt"
