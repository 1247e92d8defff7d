// Which forwards take the fused CUDA decode path, by rows: one by default (a lone
// stream's decode step). Each row count compiles its own kernels (NVRTC, seconds on
// the engine thread at first use), so concurrent sessions growing a batch 2, 3, 4
// must not wait for them (bench/results/gpu-h200-2026-12-06f/replay: 8 concurrent
// Claude Code sessions took 18-20 s with a limit of 4 rows). The GPU side is in
// test/gpu/fused.test.ts; this is the rule, runnable anywhere.
import { afterEach, expect, test } from "bun:test";
import {
  FUSED_DEFAULT_ROWS,
  FUSED_MAX_ROWS,
  fusedRowLimit,
  fusedRowLimitFrom,
  setFusedRowLimit,
} from "../../src/models/gpu-fused";

afterEach(() => setFusedRowLimit(null));

test("the fused path takes one row by default", () => {
  expect(FUSED_DEFAULT_ROWS).toBe(1);
  expect(fusedRowLimitFrom(undefined)).toBe(1);
  if (process.env.PENSIEVE_GPU_FUSED_MAX_ROWS === undefined) expect(fusedRowLimit()).toBe(1);
});

test("PENSIEVE_GPU_FUSED_MAX_ROWS takes 1..4; anything else keeps the default", () => {
  expect(FUSED_MAX_ROWS).toBe(4);
  for (const n of [1, 2, 3, 4]) expect(fusedRowLimitFrom(String(n))).toBe(n);
  for (const bad of ["", "0", "5", "2.5", "-1", "many"]) expect(fusedRowLimitFrom(bad)).toBe(FUSED_DEFAULT_ROWS);
  setFusedRowLimit(3);
  expect(fusedRowLimit()).toBe(3);
  setFusedRowLimit(9);
  expect(fusedRowLimit()).toBe(FUSED_DEFAULT_ROWS);
});
