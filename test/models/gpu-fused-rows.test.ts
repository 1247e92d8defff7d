// Which forwards take the fused CUDA decode path, by rows: 1..4 by default (decode
// steps of 2-4 rows took 4.4-6.3 ms fused against ~8.5-8.9 through MLX's ops on an
// H100). Each row count compiles its own kernels (NVRTC, seconds on the engine thread
// at first use), so an engine holds batches of 2+ rows on MLX's ops until it has built
// that count's kernels while idle: concurrent sessions growing a batch 2, 3, 4 must not
// wait for them (bench/results/gpu-h200-2026-12-06f/replay: 8 concurrent Claude Code
// sessions took 18-20 s). The GPU side is in test/gpu/fused.test.ts; this is the rule,
// runnable anywhere.
import { afterEach, expect, test } from "bun:test";
import {
  FUSED_DEFAULT_ROWS,
  FUSED_MAX_ROWS,
  fusedRowLimit,
  fusedRowLimitFrom,
  fusedRowsBuilt,
  fusedRowsFor,
  fusedRowsNow,
  holdFusedRowsUntilBuilt,
  fusedRowCap,
  setFusedRowLimit,
} from "../../src/models/gpu-fused";
import { setGemvMmaFromRows } from "../../src/mlx/kernels-gemv";

afterEach(() => {
  setGemvMmaFromRows(null);
  setFusedRowLimit(null);
  fusedRowsBuilt(FUSED_MAX_ROWS);
});

test("the fused path takes up to four rows by default", () => {
  expect(FUSED_DEFAULT_ROWS).toBe(4);
  expect(fusedRowLimitFrom(undefined)).toBe(4);
  if (process.env.PENSIEVE_GPU_FUSED_MAX_ROWS === undefined) {
    expect(fusedRowLimit()).toBe(4);
    expect(fusedRowsNow()).toBe(4);
  }
});

test("PENSIEVE_GPU_FUSED_MAX_ROWS takes 1..4 with the scalar GEMV; anything else keeps the default", () => {
  setGemvMmaFromRows(Number.POSITIVE_INFINITY);
  expect(FUSED_MAX_ROWS).toBe(4);
  for (const n of [1, 2, 3, 4]) expect(fusedRowLimitFrom(String(n))).toBe(n);
  for (const bad of ["", "0", "5", "2.5", "-1", "many"]) expect(fusedRowLimitFrom(bad)).toBe(FUSED_DEFAULT_ROWS);
  setFusedRowLimit(3);
  expect(fusedRowLimit()).toBe(3);
  setFusedRowLimit(9);
  expect(fusedRowLimit()).toBe(FUSED_DEFAULT_ROWS);
});

test("an engine holds batches on MLX's ops until it has built each row count's kernels, in order", () => {
  setFusedRowLimit(4);
  expect(holdFusedRowsUntilBuilt()).toEqual([2, 3, 4]);
  expect(fusedRowsNow()).toBe(1);
  fusedRowsBuilt(2);
  expect(fusedRowsNow()).toBe(2);
  fusedRowsBuilt(4);
  expect(fusedRowsNow()).toBe(4);
  // A lower limit builds fewer and caps what is built.
  setFusedRowLimit(2);
  expect(holdFusedRowsUntilBuilt()).toEqual([2]);
  fusedRowsBuilt(4);
  expect(fusedRowsNow()).toBe(2);
  setFusedRowLimit(1);
  expect(holdFusedRowsUntilBuilt()).toEqual([]);
  expect(fusedRowsNow()).toBe(1);
});

test("with tensor cores from 5 rows or fewer (PENSIEVE_GEMV_MMA) the limit goes to 32, built once per shared kernel size", () => {
  setGemvMmaFromRows(3);
  expect(fusedRowCap()).toBe(32);
  expect(fusedRowLimitFrom("32")).toBe(32);
  expect(fusedRowLimitFrom("33")).toBe(FUSED_DEFAULT_ROWS);
  setFusedRowLimit(32);
  expect(holdFusedRowsUntilBuilt()).toEqual([2, 3, 4, 8, 16, 32]);
  expect(fusedRowsNow()).toBe(1);
  fusedRowsBuilt(8); // the 8-row build covers 5..8
  expect(fusedRowsNow()).toBe(8);
  setFusedRowLimit(12);
  expect(holdFusedRowsUntilBuilt()).toEqual([2, 3, 4, 8, 12]);
  // From one row (PENSIEVE_GEMV_MMA=1) or five the same; from 6 or never, the scalar cap holds.
  setGemvMmaFromRows(1);
  expect(fusedRowCap()).toBe(32);
  setGemvMmaFromRows(5);
  expect(fusedRowCap()).toBe(32);
  setGemvMmaFromRows(6);
  expect(fusedRowCap()).toBe(4);
  setGemvMmaFromRows(Number.POSITIVE_INFINITY);
  expect(fusedRowCap()).toBe(4);
});

test("rows of several tokens (short prefills, verify passes) sum with the scalar GEMV: at most its 16 rows unless every step takes tensor cores", () => {
  // PENSIEVE_GPU_FUSED_MAX_ROWS=32 once let a 17-token pass reach the scalar kernels (built for 1..16 rows).
  expect(fusedRowsFor(1, 32, 3)).toBe(32);
  expect(fusedRowsFor(17, 32, 3)).toBe(16);
  expect(fusedRowsFor(2, 32, 3)).toBe(16);
  expect(fusedRowsFor(2, 4, 3)).toBe(4);
  expect(fusedRowsFor(17, 32, 1)).toBe(32);
});
