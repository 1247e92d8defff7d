#!/usr/bin/env bash
# One-step set-up for a fresh checkout: JavaScript dependencies (Bun itself comes
# from npm), then MLX, the shim and the default model (scripts/setup.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x node_modules/.bin/bun ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "[setup] installing JavaScript dependencies (npm ci) ..."
  npm ci --no-audit --no-fund --loglevel=error
fi
export PATH="$PWD/node_modules/.bin:$PATH"
exec bun scripts/setup.ts "$@"
