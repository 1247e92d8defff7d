// Pensieve's exact (float) CPU quantized matmul (ffi/cpu_qmm.cpp) computes what MLX's
// quantized_matmul computes, for every shape and packing the models use.
import { expect, test } from "bun:test";
import * as mx from "../../src/mlx";

const CASES: Array<[m: number, k: number, n: number, group: number, bits: number]> = [
  [1, 576, 1536, 32, 4],
  [3, 576, 192, 64, 4],
  [16, 1536, 576, 32, 4],
  [5, 576, 1000, 32, 8],
  [130, 256, 64, 128, 4],
  [1, 64, 8, 32, 8],
  [7, 192, 768, 64, 4],
];

for (const [m, k, n, group, bits] of CASES) {
  test(`M=${m} K=${k} N=${n} group ${group}, ${bits}-bit: matches mx.quantized_matmul`, () => {
    const relative = mx.tidy(() => {
      const w = mx.randomNormal([n, k], mx.Dtype.float32, 0, 0.05, mx.randomKey(k * 31 + n));
      const packed = mx.quantize(w, group, bits);
      const q = {
        ...packed,
        scales: mx.astype(packed.scales, mx.Dtype.float32),
        biases: mx.astype(packed.biases as mx.MxArray, mx.Dtype.float32),
      };
      expect(mx.cpuKernelSupports(q)).toBe(true);
      // A leading batch axis too: [2, m, k] flattens to 2m rows.
      const x = mx.randomNormal([2, m, k], mx.Dtype.float32, 0, 1, mx.randomKey(m + 7));
      const ref = mx.quantizedMatmul(x, q);
      const ours = mx.quantizedMatmulCpuExact(x, q);
      expect(ours.shape).toEqual(ref.shape);
      return mx.max(mx.abs(mx.subtract(ref, ours))).item() / mx.max(mx.abs(ref)).item();
    });
    expect(relative).toBeLessThan(1e-5);
  });
}

test("a strided x (a transposed view) gives the same product", () => {
  const relative = mx.tidy(() => {
    const packed = mx.quantize(mx.randomNormal([96, 128], mx.Dtype.float32, 0, 0.05, mx.randomKey(3)), 32, 4);
    const q = {
      ...packed,
      scales: mx.astype(packed.scales, mx.Dtype.float32),
      biases: mx.astype(packed.biases as mx.MxArray, mx.Dtype.float32),
    };
    const x = mx.transpose(mx.randomNormal([128, 5], mx.Dtype.float32, 0, 1, mx.randomKey(4)), [1, 0]);
    const ref = mx.quantizedMatmul(mx.contiguous(x), q);
    return mx.max(mx.abs(mx.subtract(ref, mx.quantizedMatmulCpuExact(x, q)))).item() / mx.max(mx.abs(ref)).item();
  });
  expect(relative).toBeLessThan(1e-5);
});

test("bad inputs are errors, not crashes", () => {
  mx.tidy(() => {
    const packed = mx.quantize(mx.randomNormal([16, 64]), 32, 4);
    const q = {
      ...packed,
      scales: mx.astype(packed.scales, mx.Dtype.float32),
      biases: mx.astype(packed.biases as mx.MxArray, mx.Dtype.float32),
    };
    expect(() => mx.quantizedMatmulCpuExact(mx.zeros([1, 63]), q)).toThrow(/x has 63 features, the weight expects 64/);
    expect(() => mx.quantizedMatmulCpuExact(mx.zeros([1, 64]), { ...q, bits: 3 })).toThrow(/bits must be 4 or 8/);
    expect(() =>
      mx.quantizedMatmulCpuExact(mx.zeros([1, 64]), { ...q, scales: mx.astype(packed.scales, mx.Dtype.float16) }),
    ).toThrow(/float32/);
  });
});
