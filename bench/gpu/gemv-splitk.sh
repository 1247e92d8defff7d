#!/usr/bin/env bash
# Issue 11: the split-K decode GEMV (PENSIEVE_GEMV_SPLITK, src/mlx/kernels-gemv-split.ts; off by default) on
# the GPU, in one call of at most 600 s. Runs after `bench/gpu/device.sh prepare` (PREPARE_QUICK=1 will do), from
# a checkout whose dist/ was packed (bench/gpu/pack.sh) from a tree that has the split-K code:
#   1. GPU tests: split vs unsplit kernels of every variant at Phi-3-mini's decode shapes (test/gpu/gemv-split.test.ts,
#      bundled here: pack.sh does not list it), then the fused kernels vs MLX's unfused ops at one row with
#      PENSIEVE_GEMV_SPLITK=auto, then greedy tokens of the tiny models fused on vs off with =2 (their K is below
#      auto's threshold, so auto would not split them);
#   2. single stream 128 -> 256 (the harness's generate --profile: decode tok/s, host and device ms a step):
#      the default (no split) and mlx-lm interleaved, then Pensieve alone at each setting of SETTINGS, then the
#      default again (drift); the table of all rows in $OUT/gemv-splitk.md;
#   3. Nsight Compute, one decode step, every kernel's time (step-profile.ts): the default and NCU_SETTINGS.
# A setting is SPLITK[,gGROUPS][,lLOADS][,rROWS], e.g. "auto", "4,g2", "auto,l16" (PENSIEVE_GEMV_SPLITK,
# _GROUPS, _LOADS, _ROWS). Each step has its own timeout and is skipped when the call's 570 s would not cover it;
# results land in $OUT/gemv-splitk/ as they come and come back as $OUT/gemv-splitk.tgz.
# SKIP_TESTS=1 / SKIP_NCU=1 leave steps out.
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/pv
OUT=${OUT:-$W/out}
R=$OUT/gemv-splitk
mkdir -p "$R"
export PATH="$W/bin:$PATH" PENSIEVE_CLI="$PWD/dist/src/cli.js" PENSIEVE_BACKEND=cuda
unset PENSIEVE_GEMV_SPLITK PENSIEVE_GEMV_SPLITK_GROUPS PENSIEVE_GEMV_SPLITK_LOADS PENSIEVE_GEMV_SPLITK_ROWS
MODEL=$W/phi3-mini-128k-4bit-random
SETTINGS=${SETTINGS:-auto 2 4 8 auto,g2 auto,g1}
NCU_SETTINGS=${NCU_SETTINGS:-auto}
log() { echo "[splitk $(date +%T) +${SECONDS}s] $*" | tee -a "$R/log.txt"; }
pack() { tar -czf "$OUT/gemv-splitk.tgz" -C "$R" . 2>/dev/null; }
trap pack EXIT
# Seconds left of the call's budget (570 of 600: the rest for packing and the transfer).
left() { echo $((570 - SECONDS)); }
# A setting as environment assignments: "4,g2,l16" -> PENSIEVE_GEMV_SPLITK=4 PENSIEVE_GEMV_SPLITK_GROUPS=2 ...
setting_env() {
  local parts p out=()
  IFS=, read -ra parts <<< "$1"
  out+=("PENSIEVE_GEMV_SPLITK=${parts[0]}")
  for p in "${parts[@]:1}"; do
    case $p in
    g*) out+=("PENSIEVE_GEMV_SPLITK_GROUPS=${p#g}") ;;
    l*) out+=("PENSIEVE_GEMV_SPLITK_LOADS=${p#l}") ;;
    r*) out+=("PENSIEVE_GEMV_SPLITK_ROWS=${p#r}") ;;
    esac
  done
  echo "${out[@]}"
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$R/gpu.txt"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
log "ncu: ${NCU:-none}; settings: $SETTINGS; ncu settings: $NCU_SETTINGS"

# 1. Tests (~2-3 minutes, most of it NVRTC compiling each setting's kernels once; the PTX cache then serves step 2).
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  mkdir -p ../shared/fixtures && rm -rf ../shared/fixtures/phi3-mini-128k && cp -r .device/phi3 ../shared/fixtures/phi3-mini-128k
  # Bundled by pack.sh if it lists it; else here, from this tree's test/ or (a .gpuwt staging folder) the checkout's.
  if [ ! -f dist/test-gpu/gemv-split.test.js ]; then
    src=test/gpu/gemv-split.test.ts; [ -f "$src" ] || src=../test/gpu/gemv-split.test.ts
    bun build --target=bun --outdir dist/test-gpu "$src" > "$R/build.txt" 2>&1 || log "bundling $src failed (build.txt)"
  fi
  timeout 150 bun test --timeout 120000 ./dist/test-gpu/gemv-split.test.js 2>&1 | tail -30 > "$R/test-split-vs-unsplit.txt"
  log "split vs unsplit (rc ${PIPESTATUS[0]}): $(grep -E '^ *[0-9]+ (pass|fail)' "$R/test-split-vs-unsplit.txt" | tr '\n' ' ')"
  PENSIEVE_GEMV_SPLITK=auto timeout 100 bun test --timeout 90000 ./dist/test-gpu/fused.test.js -t "M=1|three outputs" 2>&1 |
    tail -30 > "$R/test-fused-auto.txt"
  log "fused kernels vs MLX at one row, auto: $(grep -E '^ *[0-9]+ (pass|fail)' "$R/test-fused-auto.txt" | tr '\n' ' ')"
  if [ "$(left)" -gt 420 ]; then
    PENSIEVE_GEMV_SPLITK=2 timeout 80 bun test --timeout 70000 ./dist/test-gpu/fused.test.js \
      -t "greedy tokens with the fused path equal" 2>&1 | tail -20 > "$R/test-tiny-greedy-split2.txt"
    log "tiny models' greedy tokens, fused + split 2 vs unfused: $(grep -E '^ *[0-9]+ (pass|fail)' "$R/test-tiny-greedy-split2.txt" | tr '\n' ' ')"
  fi
  cat "$R"/test-*.txt > "$OUT/gemv-splitk-tests.txt"
fi

# 2. Single stream, in process, 128 -> 256, one run a row (the harness's warm-up takes the compiles out).
BENCH=(bun dist/bench/run.js generate --model "$MODEL" --device gpu --python python3
  --pensieve-engine dist/bench/engines/pensieve-generate.js --prompt 128 --gen 256 --profile --repeat 1)
row() { grep '^| \(pensieve\|mlx-lm\)' "$1"/*.md 2>/dev/null | head -2; }
if [ "$(left)" -gt 90 ]; then
  timeout 120 "${BENCH[@]}" --engines pensieve,mlx-lm --out-dir "$R/single-default" > "$R/single-default.txt" 2>&1
  log "default + mlx-lm:"; row "$R/single-default" | tee -a "$R/log.txt"
fi
for s in $SETTINGS; do
  if [ "$(left)" -lt 60 ]; then log "no time left for $s"; break; fi
  # shellcheck disable=SC2046
  env $(setting_env "$s") timeout 60 "${BENCH[@]}" --engines pensieve --out-dir "$R/single-$s" > "$R/single-$s.txt" 2>&1
  log "split $s:"; row "$R/single-$s" | sed "s/^| pensieve/| pensieve split $s/" | tee -a "$R/log.txt"
done
if [ "$(left)" -gt 140 ]; then
  timeout 60 "${BENCH[@]}" --engines pensieve --out-dir "$R/single-default-again" > "$R/single-default-again.txt" 2>&1
  log "default again:"; row "$R/single-default-again" | sed 's/^| pensieve/| pensieve (again)/' | tee -a "$R/log.txt"
fi
{
  echo "Single stream 128 -> 256, full-size Phi-3-mini 4-bit (random weights), one run a row; $(tail -1 "$R/gpu.txt")"
  echo "| engine | prefill tok/s | decode tok/s | first token ms | peak MLX MiB | peak RSS MiB | decode vs first row | host ms/step | device ms/step |"
  grep '^| \(pensieve\|mlx-lm\)' "$R/log.txt"
} > "$OUT/gemv-splitk.md"
bun dist/bench/gpu/stamp-gpu.js "$R/gpu.txt" "$R" > /dev/null 2>&1 || true

# 3. One decode step's kernels (clocks as found, caches not flushed): the default, then each NCU setting.
if [ -n "${NCU:-}" ] && [ "${SKIP_NCU:-0}" != 1 ]; then
  for s in default $NCU_SETTINGS; do
    if [ "$(left)" -lt 75 ]; then log "no time left for ncu $s"; break; fi
    envs=(); [ "$s" != default ] && read -ra envs <<< "$(setting_env "$s")"
    env "${envs[@]}" timeout 90 "$NCU" --clock-control none --cache-control none --print-units base --csv \
      --profile-from-start off --metrics gpu__time_duration.sum,dram__bytes_read.sum \
      "$(command -v bun)" dist/bench/gpu/step-profile.js "$MODEL" 128 > "$R/ncu-$s.csv" 2> "$R/ncu-$s.err"
    log "ncu $s rc $?"
    { echo "== $s"; bun dist/bench/gpu/ncu-summary.js "$R/ncu-$s.csv" --top 12; } 2>&1 | tee -a "$R/ncu-summary.md"
  done
  cp "$R/ncu-summary.md" "$OUT/gemv-splitk-ncu.md" 2>/dev/null || true
fi
log done
