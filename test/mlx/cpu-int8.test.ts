// Pensieve's int8-activation CPU matmul (ffi/cpu_qmm_int8.cpp), on every
// instruction-set path, for every weight format we load, against MLX's own
// dequantize + matmul:
//  - exactly (to float rounding) against the same arithmetic written in MLX
//    ops: x split per group into two int8 parts (xh, round half up of
//    x·127/max|x|; xl, the remainder in steps 256 times finer), times the
//    dequantized weight;
//  - against the unquantized product (what the rounding costs: about 1e-4).
import { afterAll, describe, expect, test } from "bun:test";
import * as mx from "../../src/mlx";
import { REPO_ROOT } from "../../src/paths";
import { mulberry32 } from "../support/random";

interface Format {
  name: string;
  bits: 4 | 8;
  group: 32 | 64 | 128;
  /** The affine bias from the scale: GGUF Q4_0 and Q8_0 are symmetric; null: free (Q4_1, MLX). */
  bias: ((scale: number) => number) | null;
}

const FORMATS: Format[] = [
  { name: "GGUF Q4_0", bits: 4, group: 32, bias: (d) => -8 * d },
  { name: "GGUF Q4_1", bits: 4, group: 32, bias: null },
  { name: "GGUF Q8_0", bits: 8, group: 32, bias: (d) => -128 * d },
  { name: "MLX 4-bit, group 64", bits: 4, group: 64, bias: null },
  { name: "MLX 4-bit, group 128", bits: 4, group: 128, bias: null },
  { name: "MLX 8-bit, group 64", bits: 8, group: 64, bias: null },
  { name: "MLX 8-bit, group 128", bits: 8, group: 128, bias: null },
];

/** Rows M, input features K, output features N: one row (decode), odd tails, a prefill-sized block (K not always a multiple of 256). */
const SHAPES: Array<[m: number, k: number, n: number]> = [
  [1, 256, 37],
  [3, 384, 64],
  [7, 128, 9],
  [70, 512, 132],
  // 9 blocks of 32: one full group of 8 blocks and a lone one (group 32 only).
  [2, 288, 20],
];

/** Random packed weights (any q), positive scales, biases by the format's rule. */
function randomWeight(f: Format, n: number, k: number, seed: number): mx.QuantizedWeight {
  const rand = mulberry32(seed);
  const words = new Uint32Array((n * k * f.bits) / 32);
  for (let i = 0; i < words.length; i++) words[i] = Math.floor(rand() * 2 ** 32) >>> 0;
  const groups = (n * k) / f.group;
  const scales = new Float32Array(groups);
  const biases = new Float32Array(groups);
  for (let i = 0; i < groups; i++) {
    const d = (0.002 + rand() * 0.01) * (f.bits === 4 ? 1 : 1 / 16);
    scales[i] = d;
    biases[i] = f.bias ? f.bias(d) : (rand() - 0.5) * 0.1;
  }
  return {
    weight: mx.uint32(words, [n, (k * f.bits) / 32]),
    scales: mx.float32(scales, [n, k / f.group]),
    biases: mx.float32(biases, [n, k / f.group]),
    groupSize: f.group,
    bits: f.bits,
  };
}

function randomInput(m: number, k: number, seed: number): mx.MxArray {
  const rand = mulberry32(seed);
  const x = new Float32Array(m * k);
  // Mostly small values with a few large ones, as activations are.
  for (let i = 0; i < x.length; i++) x[i] = (rand() - 0.5) * (rand() < 0.02 ? 20 : 2);
  return mx.float32(x, [m, k]);
}

/** The int8 kernel's arithmetic in MLX ops over MLX's dequantize: x̂ = dl·(256·xh + xl). */
function int8Reference(x: mx.MxArray, q: mx.QuantizedWeight): mx.MxArray {
  const [m, k] = x.shape as [number, number];
  const groups = k / q.groupSize;
  const xg = mx.reshape(x, [m, groups, q.groupSize]);
  const dh = mx.divide(mx.max(mx.abs(xg), -1, true), 127);
  const ih = mx.where(mx.greater(dh, 0), mx.divide(1, dh), 0);
  const xh = mx.floor(mx.add(mx.multiply(xg, ih), 0.5));
  const rest = mx.subtract(xg, mx.multiply(xh, dh));
  const dl = mx.divide(dh, 256);
  const il = mx.where(mx.greater(dl, 0), mx.divide(1, dl), 0);
  const xl = mx.clip(mx.floor(mx.add(mx.multiply(rest, il), 0.5)), -127, 127);
  const xhat = mx.multiply(mx.add(mx.multiply(xh, 256), xl), dl);
  const w = mx.dequantize(q, mx.Dtype.float32);
  return mx.matmul(mx.reshape(xhat, [m, k]), mx.transpose(w, [1, 0]));
}

function relativeError(ref: mx.MxArray, ours: mx.MxArray): number {
  return mx.max(mx.abs(mx.subtract(ref, ours))).item() / mx.max(mx.abs(ref)).item();
}

const ISAS: Array<Exclude<mx.CpuIsa, "auto">> = ["scalar", "avx2", "vnni"];

afterAll(() => mx.setCpuIsa("auto"));

for (const isa of ISAS) {
  describe(`int8 kernel, ${isa} path`, () => {
    const supported = mx.cpuIsaSupported(isa);
    for (const f of FORMATS) {
      for (const [m, k, n] of SHAPES.filter(([, k]) => k % f.group === 0)) {
        test.skipIf(!supported)(`${f.name}: M=${m} K=${k} N=${n}`, () => {
          mx.setCpuIsa(isa);
          expect(mx.cpuIsa()).toBe(isa);
          const [exact, vsFloat] = mx.tidy(() => {
            const q = randomWeight(f, n, k, m * 1000 + k + n);
            const x = randomInput(m, k, k * 7 + m);
            const ours = mx.quantizedMatmulCpuInt8(x, q);
            expect(ours.shape).toEqual([m, n]);
            return [
              relativeError(int8Reference(x, q), ours),
              relativeError(mx.matmul(x, mx.transpose(mx.dequantize(q, mx.Dtype.float32), [1, 0])), ours),
            ];
          });
          expect(exact).toBeLessThan(2e-5);
          // Each x moves by up to max|x|/65024 of its group (the model-level
          // cost is measured as perplexity in test/models).
          expect(vsFloat).toBeLessThan(5e-4);
        });
      }
    }
  });
}

test("every path gives the same products (the integer dots are equal)", () => {
  const f = FORMATS[1] as Format;
  const results: Float32Array[] = [];
  for (const isa of ISAS) {
    if (!mx.cpuIsaSupported(isa)) continue;
    mx.setCpuIsa(isa);
    results.push(
      mx.tidy(
        () => mx.quantizedMatmulCpuInt8(randomInput(5, 256, 1), randomWeight(f, 24, 256, 2)).read() as Float32Array,
      ),
    );
  }
  mx.setCpuIsa("auto");
  const first = results[0] as Float32Array;
  for (const r of results) for (let i = 0; i < r.length; i++) expect(r[i]).toBeCloseTo(first[i] as number, 4);
});

test("a zero row (max|x| = 0) gives the bias terms only, not NaN", () => {
  const f = FORMATS[0] as Format;
  const [ours, ref] = mx.tidy(() => {
    const x = mx.zeros([2, 64]);
    const q = randomWeight(f, 8, 64, 3);
    return [mx.quantizedMatmulCpuInt8(x, q).read(), int8Reference(x, q).read()] as Float32Array[];
  });
  for (let i = 0; i < (ours as Float32Array).length; i++) expect(ours?.[i]).toBe(0);
  expect(ref?.length).toBe(16);
});

test("a strided x (a transposed view) gives the same product", () => {
  const relative = mx.tidy(() => {
    const q = randomWeight(FORMATS[3] as Format, 16, 128, 5);
    const x = mx.transpose(randomInput(128, 5, 6), [1, 0]);
    return relativeError(int8Reference(mx.contiguous(x), q), mx.quantizedMatmulCpuInt8(x, q));
  });
  expect(relative).toBeLessThan(2e-5);
});

test("bad inputs are errors, not crashes", () => {
  mx.tidy(() => {
    const q = randomWeight(FORMATS[3] as Format, 16, 128, 7);
    expect(() => mx.quantizedMatmulCpuInt8(mx.zeros([1, 127]), q)).toThrow(
      /x has 127 features, the weight expects 128/,
    );
    expect(() => mx.quantizedMatmulCpuInt8(mx.zeros([1, 128]), { ...q, groupSize: 16 })).toThrow(/32, 64 or 128/);
    expect(() => mx.quantizedMatmulCpuInt8(mx.zeros([1, 128]), { ...q, bits: 3 })).toThrow(/bits must be 4 or 8/);
  });
  if (!mx.cpuIsaSupported("vnni")) expect(() => mx.setCpuIsa("vnni")).toThrow(/lacks/);
});

test("PENSIEVE_CPU_ISA forces a path from the start; PENSIEVE_THREADS sets the pool", () => {
  const script = 'import * as mx from "./src/mlx"; console.log(mx.cpuIsa(), mx.cpuThreads());';
  for (const isa of ISAS.filter((i) => mx.cpuIsaSupported(i))) {
    const r = Bun.spawnSync([process.execPath, "-e", script], {
      cwd: REPO_ROOT,
      env: { ...process.env, PENSIEVE_CPU_ISA: isa, PENSIEVE_THREADS: "1" },
    });
    expect(r.stdout.toString().trim()).toBe(`${isa} 1`);
  }
});
