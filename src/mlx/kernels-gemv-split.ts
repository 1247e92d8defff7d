// Split-K for the decode GEMV (kernels-gemv.ts), off unless PENSIEVE_GEMV_SPLITK is set.
//
// Why: on one row of x the GEMVs are latency-bound (Nsight Compute, Phi-3-mini 4-bit on an
// H200: o and down at 9-27% occupancy, 12-17% of DRAM bandwidth; a warp walks a row's whole K
// in dependent rounds). Here SPLIT warps share a warp's ROWS output rows: the group's
// SPLIT * 32 threads take the row's 16-byte chunks in turn (chunk c to thread c % (SPLIT*32),
// so a warp's loads stay coalesced), each with all its chunks' loads issued before the first
// is used (up to LOADS 16-byte loads a thread), so a launch has SPLIT times the warps, each
// with 1/SPLIT of the dependent work. Partial sums: shuffles within a warp, then shared
// memory; the group's first warp adds its SPLIT partials (in warp order: deterministic) and
// runs the variant's epilogue unchanged (lane 0, acc[m][r], rowi[r], `warp` = the row group,
// i.e. the unsplit kernel's warp). The RMSNorm prologue is the unsplit kernel's (all of the
// block's threads read x once). Only the order of the float sums differs from the unsplit
// kernel (test/gpu/gemv-split-emulated.test.ts checks both against float64 and each other).
import type { GemvConfig } from "./kernels-gemv";
import { CHUNK_PRODUCTS } from "./kernels-gemv-chunk";

/**
 * The split kernel body; gemvSource fills PROLOGUE, ROW_SLOTS, XLOAD and EPILOGUE as for the
 * unsplit one. Template constants as the unsplit kernel's, plus SPLIT (warps a row group)
 * and LOADS (16-byte weight loads in flight a thread); WARPS is the block's warps (G row
 * groups of SPLIT warps each).
 */
export const GEMV_SPLIT_SOURCE = `
  using Ops = PvOps<T>;
  using T2 = typename Ops::T2;
  constexpr int G = WARPS / SPLIT;            // row groups per block, ROWS output rows each
  constexpr int CHUNKS = K / 32;              // 16-byte weight chunks per row
  constexpr int SPAN = SPLIT * 32;            // a group's threads: chunk c goes to thread c % SPAN
  constexpr int ITERS = (CHUNKS + SPAN - 1) / SPAN;  // chunks per thread
  constexpr int U0 = LOADS / ROWS;
  constexpr int U = U0 < 1 ? 1 : (U0 > ITERS ? ITERS : U0);  // chunks per thread in flight
  constexpr int GROUPS = K / GROUP;
  const int lane = threadIdx.x & 31;
  const int wib = threadIdx.x >> 5;           // warp in block
  const int gt = (wib % SPLIT) * 32 + lane;   // thread in its row group
  const int warp = blockIdx.x * G + wib / SPLIT;  // the row group (the unsplit kernel's warp)
/*PROLOGUE*/
  const bool active = warp * ROWS < N;        // groups past N still reach __syncthreads
  /*ROW_SLOTS*/
  float acc[M][ROWS];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.f;
  const uint4* wbase = reinterpret_cast<const uint4*>(w);
  constexpr int ROUND_UNROLL = M > 8 ? 1 : (ITERS + U - 1) / U;
#pragma unroll ROUND_UNROLL
  for (int it0 = 0; it0 < ITERS; it0 += U) {
    uint4 wv[U][ROWS];
    float sc[U][ROWS];
    float bo[U][ROWS];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = (it0 + u) * SPAN + gt;
      if (active && it0 + u < ITERS && (CHUNKS % SPAN == 0 || c < CHUNKS)) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          wv[u][r] = pv_load_stream(wbase + (size_t)rowi[r] * CHUNKS + c);
          const size_t g = (size_t)rowi[r] * GROUPS + (c * 32) / GROUP;
          const float s = Ops::to_float(scales[g]);
          sc[u][r] = s;
          bo[u][r] = Ops::to_float(biases[g]) + 8.f * s;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = (it0 + u) * SPAN + gt;
      if (active && it0 + u < ITERS && (CHUNKS % SPAN == 0 || c < CHUNKS)) {
${CHUNK_PRODUCTS}      }
    }
  }
  __shared__ float pv_part[WARPS][M * ROWS];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) pv_part[wib][m * ROWS + r] = v;
    }
  __syncthreads();
  if (active && lane == 0 && wib % SPLIT == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        float v = 0.f;
#pragma unroll
        for (int s = 0; s < SPLIT; ++s) v += pv_part[wib + s][m * ROWS + r];
        acc[m][r] = v;
      }
/*EPILOGUE*/
  }
`;

/** Most warps a split block takes (registers: ~70 a thread at 512 threads leaves two blocks an SM). */
const MAX_SPLIT_WARPS = 16;

/**
 * The split a decode launch (one row of x) gets from the environment, or undefined (the
 * default: no split). PENSIEVE_GEMV_SPLITK: a number of warps per row group (2-8), or
 * "auto" (K/1024 of them, at most 8: one 16-byte chunk a thread at K = 3072 and 8192; no
 * split below K = 2048). PENSIEVE_GEMV_SPLITK_GROUPS: row groups per block (default as many
 * as fit 16 warps, at most 4: the unsplit kernel's 4 warps' rows per block).
 * PENSIEVE_GEMV_SPLITK_LOADS: 16-byte weight loads in flight a thread (default 8, as unsplit).
 * PENSIEVE_GEMV_SPLITK_ROWS: output rows per group (default: the unsplit config's).
 */
export function splitConfig(
  base: GemvConfig,
  k: number,
  env: Record<string, string | undefined> = process.env,
): GemvConfig {
  const setting = env.PENSIEVE_GEMV_SPLITK;
  if (!setting || setting === "0" || setting === "1") return base;
  const split = setting === "auto" ? Math.min(8, Math.floor(k / 1024)) : Number(setting);
  if (!Number.isInteger(split) || split > 32)
    throw new Error(`PENSIEVE_GEMV_SPLITK=${setting}: a number of warps (2-32) or "auto"`);
  if (split < 2) return base;
  const groups = Number(
    env.PENSIEVE_GEMV_SPLITK_GROUPS ?? Math.max(1, Math.min(4, Math.floor(MAX_SPLIT_WARPS / split))),
  );
  const loads = Number(env.PENSIEVE_GEMV_SPLITK_LOADS ?? 8);
  const rows = Number(env.PENSIEVE_GEMV_SPLITK_ROWS ?? base.rows);
  if (!Number.isInteger(groups) || groups < 1 || groups * split > 32)
    throw new Error(`PENSIEVE_GEMV_SPLITK_GROUPS=${groups}: 1 to ${Math.floor(32 / split)} at a split of ${split}`);
  if (!Number.isInteger(loads) || loads < 1 || loads > 32) throw new Error(`PENSIEVE_GEMV_SPLITK_LOADS=${loads}: 1-32`);
  if (![1, 2, 4, 8].includes(rows)) throw new Error(`PENSIEVE_GEMV_SPLITK_ROWS=${rows}: 1, 2, 4 or 8`);
  return { ...base, rows, warps: groups * split, split, loads };
}

/**
 * A one-row launch shape for one weight shape from PENSIEVE_GEMV_ONE_ROW, or null: entries
 * "NxK:rows:warps[:split[:loads]]" separated by commas, e.g. "3072x8192:2:16:8,3072x3072:2:8".
 * For A/B runs on the GPU: the launch shapes were chosen by a benchmark of overlapping launches,
 * and a decode step's chain of dependent launches wants the shortest latency instead
 * (bench/results/gpu-h100-2026-12-07g). Paired kernels (RoPE, SwiGLU) take an even rows.
 */
export function oneRowOverride(
  n: number,
  k: number,
  env: Record<string, string | undefined> = process.env,
): GemvConfig | null {
  const setting = env.PENSIEVE_GEMV_ONE_ROW;
  if (!setting) return null;
  for (const entry of setting.split(",")) {
    const [shape, ...rest] = entry.trim().split(":");
    const [en, ek] = (shape ?? "").split("x").map(Number);
    const [rows, warps, split = 1, loads = 8] = rest.map(Number);
    if (!rows || !warps || ![1, 2, 4, 8].includes(rows) || warps % split !== 0 || warps > 32 || loads < 1)
      throw new Error(`PENSIEVE_GEMV_ONE_ROW: "${entry}" is not NxK:rows:warps[:split[:loads]]`);
    if (en !== n || ek !== k) continue;
    return split > 1 ? { rows, warps, split, loads } : { rows, warps };
  }
  return null;
}
