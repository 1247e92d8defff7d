// Pensieve's CPU RoPE and attention primitives (ffi/cpu_attention.cpp) against
// the same math written with plain MLX ops (cos/sin, matmul, softmax).
import { describe, expect, test } from "bun:test";
import type { MxArray } from "../../src/mlx";
import * as mx from "../../src/mlx";

function maxRelDiff(a: MxArray, b: MxArray): number {
  return mx.max(mx.abs(mx.subtract(a, b))).item() / Math.max(1e-6, mx.max(mx.abs(b)).item());
}

/** x [B, H, L, D]; positions start at offset (per batch row when an array). */
function ropeReference(
  x: MxArray,
  dims: number,
  traditional: boolean,
  invFreq: MxArray,
  offsets: number[],
  scale: number,
) {
  const [B, H, L, D] = x.shape as [number, number, number, number];
  const half = dims / 2;
  const pos = mx.add(
    mx.reshape(mx.float32(offsets), [offsets.length === 1 ? 1 : B, 1, 1, 1]),
    mx.reshape(mx.arange(0, L, 1, mx.Dtype.float32), [1, 1, L, 1]),
  );
  const theta = mx.multiply(mx.multiply(pos, scale), mx.reshape(invFreq, [1, 1, 1, half]));
  const cos = mx.cos(theta);
  const sin = mx.sin(theta);
  let x1: MxArray;
  let x2: MxArray;
  if (traditional) {
    const pairs = mx.reshape(mx.sliceAxis(x, 3, 0, dims), [B, H, L, half, 2]);
    x1 = mx.reshape(mx.sliceAxis(pairs, 4, 0, 1), [B, H, L, half]);
    x2 = mx.reshape(mx.sliceAxis(pairs, 4, 1, 2), [B, H, L, half]);
  } else {
    x1 = mx.sliceAxis(x, 3, 0, half);
    x2 = mx.sliceAxis(x, 3, half, dims);
  }
  const o1 = mx.subtract(mx.multiply(x1, cos), mx.multiply(x2, sin));
  const o2 = mx.add(mx.multiply(x1, sin), mx.multiply(x2, cos));
  const rotated = traditional ? mx.reshape(mx.stack([o1, o2], 4), [B, H, L, dims]) : mx.concatenate([o1, o2], 3);
  return dims === D ? rotated : mx.concatenate([rotated, mx.sliceAxis(x, 3, dims, D)], 3);
}

describe("CPU RoPE", () => {
  const cases = [
    { traditional: false, dims: 64, offset: 0, base: 10000 },
    { traditional: true, dims: 64, offset: 17, base: 500000 },
    { traditional: false, dims: 32, offset: 5, base: 10000 },
  ];
  for (const c of cases) {
    test(`traditional=${c.traditional} dims=${c.dims} offset=${c.offset} base=${c.base}`, () => {
      const err = mx.tidy(() => {
        // q arrives transposed, as in the models: [B, L, H, D] → [B, H, L, D].
        const x = mx.transpose(mx.randomNormal([2, 5, 3, 64], mx.Dtype.float32, 0, 1, mx.randomKey(1)), [0, 2, 1, 3]);
        const invFreq = mx.power(c.base, mx.divide(mx.arange(0, -c.dims, -2, mx.Dtype.float32), c.dims));
        const ours = mx.rope(x, { dims: c.dims, traditional: c.traditional, base: c.base, scale: 1, offset: c.offset });
        return maxRelDiff(ours, ropeReference(x, c.dims, c.traditional, invFreq, [c.offset], 1));
      });
      expect(err).toBeLessThan(1e-5);
    });
  }

  test("frequencies instead of a base, one offset per batch row, a position scale", () => {
    const err = mx.tidy(() => {
      const x = mx.randomNormal([3, 2, 4, 96], mx.Dtype.float32, 0, 1, mx.randomKey(2));
      const freqs = mx.multiply(mx.power(10000, mx.divide(mx.arange(0, 96, 2, mx.Dtype.float32), 96)), 1.3);
      const offsets = [0, 7, 100];
      const ours = mx.rope(x, { dims: 96, traditional: false, freqs, scale: 0.5, offset: mx.int32(offsets) });
      return maxRelDiff(ours, ropeReference(x, 96, false, mx.reciprocal(freqs), offsets, 0.5));
    });
    expect(err).toBeLessThan(1e-5);
  });
});

function sdpaReference(q: MxArray, k: MxArray, v: MxArray, scale: number, keep: MxArray | null): MxArray {
  const group = q.dim(1) / k.dim(1);
  const expand = (t: MxArray) =>
    group === 1 ? t : mx.take(t, mx.int32(Array.from({ length: q.dim(1) }, (_, h) => Math.floor(h / group))), 1);
  let scores = mx.multiply(mx.matmul(q, mx.transpose(expand(k), [0, 1, 3, 2])), scale);
  if (keep) scores = mx.where(keep, scores, Number.NEGATIVE_INFINITY);
  return mx.matmul(mx.softmax(scores, -1), expand(v));
}

describe("CPU attention", () => {
  const rand = (shape: number[], seed: number) => mx.randomNormal(shape, mx.Dtype.float32, 0, 1, mx.randomKey(seed));

  test("decode, grouped-query heads, no mask", () => {
    const err = mx.tidy(() => {
      const q = rand([2, 8, 1, 64], 1);
      const k = rand([2, 2, 37, 64], 2);
      const v = rand([2, 2, 37, 64], 3);
      return maxRelDiff(mx.sdpa(q, k, v, 0.125, null), sdpaReference(q, k, v, 0.125, null));
    });
    expect(err).toBeLessThan(1e-5);
  });

  test("prefill with a causal mask aligned bottom-right (cached keys before the queries)", () => {
    const err = mx.tidy(() => {
      const q = rand([1, 4, 6, 32], 4);
      const k = rand([1, 4, 10, 32], 5);
      const v = rand([1, 4, 10, 32], 6);
      const cols = mx.reshape(mx.arange(0, 10), [1, 1, 1, 10]);
      const rows = mx.reshape(mx.arange(4, 10), [1, 1, 6, 1]);
      return maxRelDiff(mx.sdpa(q, k, v, 0.2, "causal"), sdpaReference(q, k, v, 0.2, mx.lessEqual(cols, rows)));
    });
    expect(err).toBeLessThan(1e-5);
  });

  test("a left-padded batch with a boolean keep-mask, strided keys from a cache buffer", () => {
    const err = mx.tidy(() => {
      // q strided (a transposed view): [B 2, Hq 6, L 3, D 16]; 3 key heads (grouped-query).
      const q = mx.transpose(rand([2, 3, 6, 16], 7), [0, 2, 1, 3]);
      const buffer = rand([2, 3, 32, 16], 8);
      const k = mx.sliceAxis(buffer, 2, 0, 12);
      const v = mx.sliceAxis(rand([2, 3, 32, 16], 9), 2, 0, 12);
      const cols = mx.reshape(mx.arange(0, 12), [1, 1, 1, 12]);
      const pads = mx.reshape(mx.int32([0, 5]), [2, 1, 1, 1]);
      const keep = mx.logicalAnd(
        mx.greaterEqual(cols, pads),
        mx.lessEqual(cols, mx.reshape(mx.arange(9, 12), [1, 1, 3, 1])),
      );
      return maxRelDiff(mx.sdpa(q, k, v, 0.25, keep), sdpaReference(q, k, v, 0.25, keep));
    });
    expect(err).toBeLessThan(1e-5);
  });
});

// The tiled multi-query path (ffi/cpu_attention_tiled.inc): all query rows of
// a KV head against blocks of keys, key ranges split across threads when rows
// are few. Shapes of a speculative verify pass (L = k + 1 new rows after a
// cached prefix), a prefill and a left-padded batch; same reference, 1e-5.
describe("CPU attention, multi-query (verify) shapes", () => {
  const rand = (shape: number[], seed: number) => mx.randomNormal(shape, mx.Dtype.float32, 0, 1, mx.randomKey(seed));
  /** q as the models pass it ([B, L, H, D] transposed), k and v as views of a longer cache buffer. */
  function verifyInputs(B: number, Hq: number, Hkv: number, D: number, L: number, S: number, seed: number) {
    const q = mx.transpose(rand([B, L, Hq, D], seed), [0, 2, 1, 3]);
    const k = mx.sliceAxis(rand([B, Hkv, S + 37, D], seed + 1), 2, 0, S);
    const v = mx.sliceAxis(rand([B, Hkv, S + 37, D], seed + 2), 2, 0, S);
    return { q, k, v };
  }
  const causalKeep = (L: number, S: number) =>
    mx.lessEqual(mx.reshape(mx.arange(0, S), [1, 1, 1, S]), mx.reshape(mx.arange(S - L, S), [1, 1, L, 1]));

  // SmolLM2's heads (9 query, 3 KV, D 64) and the 3.9B Llama's (32 and 32, D 96); S past 512 splits the keys.
  const cases = [
    { Hq: 9, Hkv: 3, D: 64, L: 1, S: 700 },
    { Hq: 9, Hkv: 3, D: 64, L: 2, S: 65 },
    { Hq: 9, Hkv: 3, D: 64, L: 5, S: 513 },
    { Hq: 9, Hkv: 3, D: 64, L: 9, S: 1030 },
    { Hq: 9, Hkv: 3, D: 64, L: 17, S: 300 },
    { Hq: 32, Hkv: 32, D: 96, L: 9, S: 600 },
    { Hq: 8, Hkv: 2, D: 40, L: 3, S: 77 }, // D not a multiple of 8: the per-row path
  ];
  for (const c of cases) {
    test(`Hq ${c.Hq} Hkv ${c.Hkv} D ${c.D}: ${c.L} new rows over ${c.S} keys, causal`, () => {
      const err = mx.tidy(() => {
        const { q, k, v } = verifyInputs(1, c.Hq, c.Hkv, c.D, c.L, c.S, 20 + c.L);
        const scale = 1 / Math.sqrt(c.D);
        return maxRelDiff(mx.sdpa(q, k, v, scale, "causal"), sdpaReference(q, k, v, scale, causalKeep(c.L, c.S)));
      });
      expect(err).toBeLessThan(1e-5);
    });
  }

  test("a verify pass's rows equal one-row decode steps at the same positions (within 1e-5)", () => {
    const err = mx.tidy(() => {
      const L = 9;
      const S = 600;
      const { q, k, v } = verifyInputs(1, 9, 3, 64, L, S, 40);
      const all = mx.sdpa(q, k, v, 0.125, "causal");
      let worst = 0;
      for (const i of [0, 4, 8]) {
        const one = mx.sdpa(
          mx.sliceAxis(q, 2, i, i + 1),
          mx.sliceAxis(k, 2, 0, S - L + i + 1),
          mx.sliceAxis(v, 2, 0, S - L + i + 1),
          0.125,
          null,
        );
        worst = Math.max(worst, maxRelDiff(mx.sliceAxis(all, 2, i, i + 1), one));
      }
      return worst;
    });
    expect(err).toBeLessThan(1e-5);
  });

  test("a prefill of 200 rows (several row chunks per KV head)", () => {
    const err = mx.tidy(() => {
      const { q, k, v } = verifyInputs(1, 9, 3, 64, 200, 230, 50);
      return maxRelDiff(mx.sdpa(q, k, v, 0.125, "causal"), sdpaReference(q, k, v, 0.125, causalKeep(200, 230)));
    });
    expect(err).toBeLessThan(1e-5);
  });

  test("a left-padded batch of 2 verifying 4 rows each over split keys, keep-mask", () => {
    const err = mx.tidy(() => {
      const L = 4;
      const S = 800;
      const { q, k, v } = verifyInputs(2, 6, 2, 64, L, S, 60);
      const cols = mx.reshape(mx.arange(0, S), [1, 1, 1, S]);
      const pads = mx.reshape(mx.int32([0, 133]), [2, 1, 1, 1]);
      const keep = mx.logicalAnd(mx.greaterEqual(cols, pads), causalKeep(L, S));
      return maxRelDiff(mx.sdpa(q, k, v, 0.125, keep), sdpaReference(q, k, v, 0.125, keep));
    });
    expect(err).toBeLessThan(1e-5);
  });

  test("a row with every key masked gives zeros, the others their softmax", () => {
    const out = mx.tidy(() => {
      const { q, k, v } = verifyInputs(1, 4, 2, 64, 3, 700, 70);
      // Row 1 sees nothing; rows 0 and 2 see keys 0..600.
      const rowsSee = mx.notEqual(mx.reshape(mx.int32([1, 0, 1]), [1, 1, 3, 1]), 0);
      const keep = mx.logicalAnd(rowsSee, mx.less(mx.reshape(mx.arange(0, 700), [1, 1, 1, 700]), 601));
      const ours = mx.sdpa(q, k, v, 0.125, keep);
      const masked = mx.max(mx.abs(mx.sliceAxis(ours, 2, 1, 2))).item();
      const pick = (t: MxArray) => mx.take(t, mx.int32([0, 2]), 2);
      const rest = maxRelDiff(
        pick(ours),
        sdpaReference(pick(q), mx.sliceAxis(k, 2, 0, 601), mx.sliceAxis(v, 2, 0, 601), 0.125, null),
      );
      return [masked, rest];
    });
    expect(out[0]).toBe(0);
    expect(out[1]).toBeLessThan(1e-5);
  });
});

describe("the cache's attention with its write folded in (mx.cpuCacheSdpa)", () => {
  const rand = (shape: number[], seed: number) => mx.randomNormal(shape, mx.Dtype.float32, 0, 1, mx.randomKey(seed));

  test("equals the slice updates then sdpa over the written columns, bit for bit, and returns the written buffers", () => {
    mx.tidy(() => {
      const [B, Hkv, cap, D, offset] = [2, 2, 16, 32, 5];
      for (const [L, mask] of [
        [1, null],
        [3, "causal"],
      ] as const) {
        const q = rand([B, 4, L, D], 1);
        const k = rand([B, Hkv, L, D], 2);
        const v = rand([B, Hkv, L, D], 3);
        const past = [rand([B, Hkv, cap, D], 4), rand([B, Hkv, cap, D], 5)];
        mx.evaluate(q, k, v, ...past);
        const stop = [B, Hkv, offset + L, D];
        const expectedK = mx.sliceUpdate(past[0] as MxArray, k, [0, 0, offset, 0], stop);
        const expectedV = mx.sliceUpdate(past[1] as MxArray, v, [0, 0, offset, 0], stop);
        const expected = mx.sdpa(
          q,
          mx.sliceAxis(expectedK, 2, 0, offset + L),
          mx.sliceAxis(expectedV, 2, 0, offset + L),
          0.125,
          mask,
        );
        mx.evaluate(expected, expectedK, expectedV);
        const kc = mx.contiguous(past[0] as MxArray);
        const vc = mx.contiguous(past[1] as MxArray);
        const [out, kw, vw] = mx.cpuCacheSdpa(q, k, v, kc, vc, offset, 0.125, mask);
        expect([...(out.read() as Float32Array)]).toEqual([...(expected.read() as Float32Array)]);
        expect([...(kw.read() as Float32Array)]).toEqual([...(expectedK.read() as Float32Array)]);
        expect([...(vw.read() as Float32Array)]).toEqual([...(expectedV.read() as Float32Array)]);
      }
    });
  });

  test("columns past the buffers and mismatched heads are clear errors", () => {
    mx.tidy(() => {
      const q = rand([1, 2, 1, 8], 1);
      const k = rand([1, 1, 1, 8], 2);
      const buf = () => mx.zeros([1, 1, 4, 8]);
      expect(() => mx.cpuCacheSdpa(q, k, k, buf(), buf(), 4, 1, null)).toThrow(/do not fit/);
      expect(() => mx.cpuCacheSdpa(q, k, k, mx.zeros([1, 2, 4, 8]), buf(), 0, 1, null)).toThrow(/shapes do not match/);
    });
  });
});
