// Pensieve's CPU RMSNorm and SwiGLU primitives (ffi/cpu_norm.cpp) compute what
// MLX's basic ops compute, on contiguous and strided inputs.
import { expect, test } from "bun:test";
import * as mx from "../../src/mlx";

function maxDiff(a: mx.MxArray, b: mx.MxArray): number {
  expect(a.shape).toEqual(b.shape);
  return mx.max(mx.abs(mx.subtract(a, b))).item();
}

function rmsReference(x: mx.MxArray, w: mx.MxArray | null, eps: number): mx.MxArray {
  const y = mx.multiply(x, mx.rsqrt(mx.add(mx.mean(mx.square(x), -1, true), eps)));
  return w ? mx.multiply(y, w) : y;
}

test("rms_norm matches x · rsqrt(mean(x²) + eps) · w, with and without a weight", () => {
  const diffs = mx.tidy(() => {
    const x = mx.randomNormal([2, 7, 576], mx.Dtype.float32, 0, 3, mx.randomKey(1));
    const w = mx.randomNormal([576], mx.Dtype.float32, 1, 0.1, mx.randomKey(2));
    return [
      maxDiff(mx.rmsNorm(x, w, 1e-5), rmsReference(x, w, 1e-5)),
      maxDiff(mx.rmsNorm(x, null, 1e-6), rmsReference(x, null, 1e-6)),
    ];
  });
  for (const d of diffs) expect(d).toBeLessThan(1e-5);
});

test("rms_norm reads strided rows: a slice of the last axis and a transposed view", () => {
  const diffs = mx.tidy(() => {
    const wide = mx.randomNormal([3, 5, 256], mx.Dtype.float32, 0, 1, mx.randomKey(3));
    const [left] = mx.split(wide, [128], -1) as [mx.MxArray];
    const w = mx.randomNormal([128], mx.Dtype.float32, 1, 0.1, mx.randomKey(4));
    const t = mx.transpose(mx.randomNormal([5, 3, 64], mx.Dtype.float32, 0, 1, mx.randomKey(5)), [1, 0, 2]);
    return [
      maxDiff(mx.rmsNorm(left, w, 1e-5), rmsReference(mx.contiguous(left), w, 1e-5)),
      maxDiff(mx.rmsNorm(t, null, 1e-5), rmsReference(mx.contiguous(t), null, 1e-5)),
    ];
  });
  for (const d of diffs) expect(d).toBeLessThan(1e-5);
});

test("swiglu matches g · sigmoid(g) · u on the halves of a fused gate|up product", () => {
  const d = mx.tidy(() => {
    const gateUp = mx.randomNormal([2, 9, 2 * 384], mx.Dtype.float32, 0, 2, mx.randomKey(6));
    const [g, u] = mx.split(gateUp, [384], -1) as [mx.MxArray, mx.MxArray];
    const ref = mx.multiply(mx.multiply(g, mx.sigmoid(g)), u);
    return maxDiff(mx.swiglu(g, u, false), ref) / mx.max(mx.abs(ref)).item();
  });
  expect(d).toBeLessThan(1e-6);
});

test("bad shapes are errors, not crashes", () => {
  mx.tidy(() => {
    expect(() => mx.rmsNorm(mx.zeros([2, 8]), mx.zeros([7]), 1e-5).read()).toThrow(/weight/);
    expect(() => mx.swiglu(mx.zeros([2, 8]), mx.zeros([2, 7]), false).read()).toThrow();
  });
});
