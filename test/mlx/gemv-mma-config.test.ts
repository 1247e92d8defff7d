// The tensor-core GEMV's launch rule (src/mlx/kernels-gemv.ts), runnable anywhere: tiles of 16 output rows a
// block from PENSIEVE_GEMV_MMA_TILES where N divides into them, and warps capped so the block's partial sums
// (warps x 16 * tiles rows x 32 floats at 32 rows of x) stay within 48 KB of shared memory. The kernels
// themselves: test/gpu/gemv-row-invariance-emulated.test.ts (bit-equal at 1, 2 and 4 tiles).
import { afterEach, expect, test } from "bun:test";
import { gemvConfig, mmaTilesFor, setGemvMmaFromRows } from "../../src/mlx/kernels-gemv";

const saved = process.env.PENSIEVE_GEMV_MMA_TILES;
afterEach(() => {
  if (saved === undefined) delete process.env.PENSIEVE_GEMV_MMA_TILES;
  else process.env.PENSIEVE_GEMV_MMA_TILES = saved;
  setGemvMmaFromRows(null);
});

test("one tile a block unless PENSIEVE_GEMV_MMA_TILES asks for 2 or 4 and N divides into them", () => {
  expect(mmaTilesFor(3072, {})).toBe(1);
  expect(mmaTilesFor(3072, { PENSIEVE_GEMV_MMA_TILES: "2" })).toBe(2);
  expect(mmaTilesFor(3072, { PENSIEVE_GEMV_MMA_TILES: "4" })).toBe(4);
  expect(mmaTilesFor(32064, { PENSIEVE_GEMV_MMA_TILES: "4" })).toBe(4);
  expect(mmaTilesFor(96, { PENSIEVE_GEMV_MMA_TILES: "4" })).toBe(1);
  for (const bad of ["0", "3", "8", "x", ""]) expect(mmaTilesFor(3072, { PENSIEVE_GEMV_MMA_TILES: bad })).toBe(1);
});

test("tensor-core launches carry their tiles, with warps x tiles at most 16", () => {
  setGemvMmaFromRows(3);
  for (const [tiles, n, k] of [
    ["1", 9216, 3072],
    ["2", 3072, 3072],
    ["4", 3072, 8192],
    ["4", 16384, 3072],
  ] as const) {
    process.env.PENSIEVE_GEMV_MMA_TILES = tiles;
    const c = gemvConfig(n, 9, k);
    expect(c.mma).toBe(true);
    expect(c.tiles).toBe(Number(tiles));
    expect(c.warps * (c.tiles ?? 1)).toBeLessThanOrEqual(16);
  }
  process.env.PENSIEVE_GEMV_MMA_TILES = "2";
  expect(gemvConfig(3072, 1, 3072).mma).toBeUndefined(); // one row keeps the scalar body
});
