// 4- and 8-bit weights repacked for the VNNI int8 kernel (ffi/cpu_qmm_packed.cpp):
// the packed product must equal the int8 kernel's on the plain layout to float
// rounding (same integer dots, same float steps; that kernel is checked against
// MLX's dequantize + matmul in cpu-int8.test.ts), for every format we load,
// with and without a partial last chunk (K not a multiple of 256); weights
// whose scales are not exact in 16 bits, or whose shape the packed tiles do
// not cover, are left unpacked.
import { afterAll, describe, expect, test } from "bun:test";
import * as mx from "../../src/mlx";
import { mulberry32 } from "../support/random";

interface Format {
  name: string;
  bits: 4 | 8;
  group: 32 | 64 | 128;
  /** How scales and biases are stored in the file: GGUF float16, mlx-community float16 or bfloat16. */
  scaleDtype: mx.Dtype;
  /** GGUF Q4_0 / Q8_0: bias = -8·scale / -128·scale (the packed copy leaves biases out). */
  symmetric: boolean;
  /** Packed bytes per 32 weights. */
  bytesPer32: number;
}

const FORMATS: Format[] = [
  { name: "GGUF Q4_0", bits: 4, group: 32, scaleDtype: mx.Dtype.float16, symmetric: true, bytesPer32: 18 },
  { name: "GGUF Q4_1", bits: 4, group: 32, scaleDtype: mx.Dtype.float16, symmetric: false, bytesPer32: 20 },
  {
    name: "MLX 4-bit g64, float16",
    bits: 4,
    group: 64,
    scaleDtype: mx.Dtype.float16,
    symmetric: false,
    bytesPer32: 18,
  },
  {
    name: "MLX 4-bit g128, bfloat16",
    bits: 4,
    group: 128,
    scaleDtype: mx.Dtype.bfloat16,
    symmetric: false,
    bytesPer32: 17,
  },
  { name: "GGUF Q8_0", bits: 8, group: 32, scaleDtype: mx.Dtype.float16, symmetric: true, bytesPer32: 34 },
  {
    name: "MLX 8-bit g64, bfloat16",
    bits: 8,
    group: 64,
    scaleDtype: mx.Dtype.bfloat16,
    symmetric: false,
    bytesPer32: 34,
  },
];

/** [M, K, N]: decode (1 row), odd row counts, a prefill block over several row tiles, partial last chunks. */
const SHAPES: Array<[m: number, k: number, n: number]> = [
  [1, 256, 36],
  [3, 512, 64],
  [1, 1024, 8],
  [70, 768, 132],
  // SmolLM2's width: 2 chunks and 2 blocks; 9 blocks; 19 blocks (a lone last block); 2 blocks only.
  [1, 576, 40],
  [5, 288, 12],
  [2, 608, 8],
  [1, 64, 4],
  // Whole 16-row tiles (4-bit), prefill-sized: the 6-row register tile and its remainders.
  [64, 512, 48],
  [13, 384, 32],
];

const HEADER_BYTES = 64;
const vnni = mx.cpuIsaSupported("vnni");

/** Random nibbles; scales (and free biases) rounded to the file's 16-bit type, as loaded weights are. */
function randomWeight(f: Format, n: number, k: number, seed: number, roundScales = true): mx.QuantizedWeight {
  const rand = mulberry32(seed);
  const words = new Uint32Array((n * k * f.bits) / 32);
  for (let i = 0; i < words.length; i++) words[i] = Math.floor(rand() * 2 ** 32) >>> 0;
  const groups = (n * k) / f.group;
  const scales = new Float32Array(groups);
  const biases = new Float32Array(groups);
  for (let i = 0; i < groups; i++) {
    scales[i] = (0.002 + rand() * 0.01) / (f.bits === 4 ? 1 : 16);
    biases[i] = (rand() - 0.5) * 0.1;
  }
  const as16 = (a: Float32Array) => {
    const x = mx.float32(a, [n, k / f.group]);
    return roundScales ? mx.astype(mx.astype(x, f.scaleDtype), mx.Dtype.float32) : x;
  };
  const s = as16(scales);
  return {
    weight: mx.uint32(words, [n, (k * f.bits) / 32]),
    scales: s,
    biases: f.symmetric ? mx.multiply(s, f.bits === 4 ? -8 : -128) : as16(biases),
    groupSize: f.group,
    bits: f.bits,
  };
}

function randomInput(m: number, k: number, seed: number): mx.MxArray {
  const rand = mulberry32(seed);
  const x = new Float32Array(m * k);
  for (let i = 0; i < x.length; i++) x[i] = (rand() - 0.5) * (rand() < 0.02 ? 20 : 2);
  return mx.float32(x, [m, k]);
}

afterAll(() => {
  mx.setCpuIsa("auto");
  mx.setCpuThreads(0);
});

describe("packed weights, VNNI", () => {
  for (const f of FORMATS) {
    for (const [m, k, n] of SHAPES.filter(([, k]) => k % f.group === 0)) {
      test.skipIf(!vnni)(`${f.name}: M=${m} K=${k} N=${n} equals the int8 kernel`, () => {
        mx.setCpuIsa("vnni");
        mx.tidy(() => {
          const q = randomWeight(f, n, k, m * 1000 + k + n);
          const packed = mx.cpuPack(q);
          expect(packed).not.toBeNull();
          // 4-bit: 16 rows side by side, the last tile padded; 8-bit: 4-row chunks of 256 inputs.
          const rows = f.bits === 4 ? Math.ceil(n / 16) * 16 : n;
          if (f.bits === 4 || k % 256 === 0) expect(packed?.size).toBe(HEADER_BYTES + (rows * k * f.bytesPer32) / 32);
          const x = randomInput(m, k, k * 7 + m);
          const ours = mx.quantizedMatmulCpuPacked(x, packed as mx.MxArray);
          expect(ours.shape).toEqual([m, n]);
          // Equal up to float rounding: the same sums in the same order, but the
          // compiler may contract a multiply-add into an FMA differently in the two
          // kernels (seen as 1 ulp on 8-bit tails).
          const plain = mx.quantizedMatmulCpuInt8(x, q);
          const ulps = mx.max(mx.abs(mx.subtract(plain, ours))).item() / mx.max(mx.abs(plain)).item();
          expect(ulps).toBeLessThan(1e-6);
          // And near MLX's own product of the unquantized x (the int8 rounding only).
          const ref = mx.matmul(x, mx.transpose(mx.dequantize(q, mx.Dtype.float32), [1, 0]));
          const rel = mx.max(mx.abs(mx.subtract(ref, ours))).item() / mx.max(mx.abs(ref)).item();
          expect(rel).toBeLessThan(5e-4);
          packed?.dispose();
        });
      });
    }
  }
});

test.skipIf(!vnni)("the model path (quantizedMatmulCpu) takes the packed copy, on 1 and 2 threads alike", () => {
  mx.setCpuIsa("auto");
  mx.tidy(() => {
    const q = mx.keep(randomWeight(FORMATS[0] as Format, 512, 1024, 11).weight);
    const w = { ...randomWeight(FORMATS[0] as Format, 512, 1024, 11), weight: q };
    expect(mx.cpuPackedWeight(w)).not.toBeNull();
    const x = randomInput(9, 1024, 12);
    const outs = [1, 2].map((threads) => {
      mx.setCpuThreads(threads);
      return mx.quantizedMatmulCpu(x, w).read();
    });
    expect(outs[0]).toEqual(outs[1]);
    // The 16-row tile sums each group in int32 before its float steps: the int8 kernel's result to float rounding.
    const plain = mx.quantizedMatmulCpuInt8(x, w);
    const ours = mx.float32(outs[0] as Float32Array, [9, 512]);
    expect(mx.max(mx.abs(mx.subtract(plain, ours))).item() / mx.max(mx.abs(plain)).item()).toBeLessThan(1e-6);
    q.dispose();
  });
  mx.setCpuThreads(0);
});

test.skipIf(!vnni)("weights the packed tiles cannot hold exactly stay unpacked", () => {
  mx.tidy(() => {
    const f = FORMATS[1] as Format;
    // float32 scales that float16 and bfloat16 would round.
    expect(mx.cpuPack(randomWeight(f, 8, 256, 1, false))).toBeNull();
    // 8-bit with N not a multiple of 4 (4-bit tiles pad the last 16 rows instead).
    expect(mx.cpuPack(randomWeight(FORMATS[4] as Format, 6, 256, 3))).toBeNull();
    const padded = mx.cpuPack(randomWeight(f, 6, 256, 3));
    expect(padded).not.toBeNull();
    padded?.dispose();
  });
});

test.skipIf(!vnni)("a packed product checks its input width", () => {
  mx.tidy(() => {
    const packed = mx.cpuPack(randomWeight(FORMATS[0] as Format, 8, 256, 5)) as mx.MxArray;
    expect(() => mx.quantizedMatmulCpuPacked(mx.zeros([1, 255]), packed).read()).toThrow(/255 features/);
    expect(() => mx.quantizedMatmulCpuPacked(mx.zeros([1, 256]), mx.zeros([100], mx.Dtype.uint8)).read()).toThrow(
      /not a packed weight/,
    );
    packed.dispose();
  });
});

describe.skipIf(!vnni)("packed copies replace the plain arrays (4-bit)", () => {
  for (const f of [FORMATS[0], FORMATS[3]] as Format[]) {
    test(`${f.name}: freed, products unchanged, the plain arrays come back equal on demand`, () => {
      mx.setCpuIsa("auto");
      mx.tidy(() => {
        const q = randomWeight(f, 96, 512, 21);
        mx.keep([q.weight, q.scales, q.biases as mx.MxArray]);
        mx.evaluate(q.weight, q.scales, q.biases as mx.MxArray);
        const original = [q.weight.read(), q.scales.read(), (q.biases as mx.MxArray).read()];
        const x = randomInput(7, 512, 22);
        const packedBefore = mx.quantizedMatmulCpu(x, q).read();
        const exactBefore = mx.quantizedMatmulCpuExact(x, q).read();
        const plainBytes = q.weight.nbytes + q.scales.nbytes + (q.biases as mx.MxArray).nbytes;
        const active = mx.memory.active();
        expect(mx.cpuPackDroppingPlain(q)).toBe(plainBytes);
        // (The allocator rounds sizes up: at least the arrays' bytes go.)
        expect(active - mx.memory.active()).toBeGreaterThanOrEqual(plainBytes);
        expect(q.weight.shape).toEqual([96, 64]);
        expect(mx.quantizedMatmulCpu(x, q).read()).toEqual(packedBefore);
        // The exact kernel reads the plain arrays: rebuilt from the packed copy, bit for bit.
        expect(mx.quantizedMatmulCpuExact(x, q).read()).toEqual(exactBefore);
        expect([q.weight.read(), q.scales.read(), (q.biases as mx.MxArray).read()]).toEqual(original);
        for (const a of [q.weight, q.scales, q.biases as mx.MxArray]) a.dispose();
      });
    });
  }

  test("8-bit weights keep their plain arrays beside the packed copy", () => {
    mx.tidy(() => {
      const q = randomWeight(FORMATS[4] as Format, 8, 256, 23);
      mx.keep([q.weight, q.scales, q.biases as mx.MxArray]);
      expect(mx.cpuPackDroppingPlain(q)).toBe(0);
      expect(mx.cpuPackedWeight(q)).not.toBeNull();
      expect(q.weight.read().length).toBe(8 * 64);
      for (const a of [q.weight, q.scales, q.biases as mx.MxArray]) a.dispose();
    });
  });
});

test.skipIf(!vnni)(
  "the 16-row tile quantizes activations as the int8 kernel does (identity weight: y = x̂ exactly)",
  () => {
    // quantize_rows (ffi/cpu_qmm_int8.cpp) in float32 steps: x̂ = dl·(256·xh + xl).
    const f = Math.fround;
    const xhat = (g: Float32Array) => {
      let amax = 0;
      for (const v of g) amax = Math.max(amax, Math.abs(v));
      const dh = f(amax / 127);
      const ih = dh !== 0 ? f(1 / dh) : 0;
      const d = f(dh / 256);
      const il = d !== 0 ? f(1 / d) : 0;
      return Array.from(g, (x) => {
        const v = Math.floor(f(f(x * ih) + 0.5));
        const rest = f(x - f(v * dh));
        const lo = Math.min(127, Math.max(-127, Math.floor(f(f(rest * il) + 0.5))));
        return f((256 * v + lo) * d);
      });
    };
    mx.setCpuIsa("auto");
    mx.tidy(() => {
      const k = 64;
      // Q4_0 with scale 1: w = q - 8, so q = 9 on the diagonal and 8 elsewhere is the identity.
      const words = new Uint32Array((k * k) / 8);
      for (let n = 0; n < k; n++)
        for (let i = 0; i < k; i++) {
          const idx = n * k + i;
          words[idx >> 3] = ((words[idx >> 3] as number) | ((n === i ? 9 : 8) << ((idx & 7) * 4))) >>> 0;
        }
      const scales = mx.full([k, k / 32], 1);
      const q = {
        weight: mx.uint32(words, [k, k / 8]),
        scales,
        biases: mx.multiply(scales, -8),
        groupSize: 32,
        bits: 4,
      };
      const packed = mx.cpuPack(q) as mx.MxArray;
      const x = randomInput(3, k, 31).read() as Float32Array;
      const y = mx.quantizedMatmulCpuPacked(mx.float32(x, [3, k]), packed).read() as Float32Array;
      const expected: number[] = [];
      for (let m = 0; m < 3; m++)
        for (let g = 0; g < k / 32; g++) expected.push(...xhat(x.subarray(m * k + g * 32, m * k + g * 32 + 32)));
      expect(Array.from(y)).toEqual(expected);
      packed.dispose();
    });
  },
);
