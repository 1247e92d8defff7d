// The shim's custom-kernel calls (ffi/gpu_kernels.cpp, src/mlx/kernels.ts):
// on a build without a GPU backend they report "not available" cleanly; on
// CUDA a small kernel with template arguments of each kind, two outputs and a
// fill value runs inside MLX's graph.
import { describe, expect, test } from "bun:test";
import * as mx from "../../src/mlx";
import { CustomKernel, kernelLanguage, kernelsUnavailableReason } from "../../src/mlx/kernels";

const language = kernelLanguage();

describe.skipIf(language !== "none")("custom kernels without a GPU backend", () => {
  test("report not available, with a reason, and create nothing", () => {
    expect(kernelsUnavailableReason()).toContain("no CUDA or Metal backend");
    const live = mx.liveHandleCount();
    expect(() => new CustomKernel({ name: "k", inputs: ["a"], outputs: ["b"], source: "b[0] = a[0];" })).toThrow(
      /not available/,
    );
    expect(mx.liveHandleCount()).toBe(live);
  });
});

describe.skipIf(language !== "cuda" || !mx.gpuAvailable())("custom kernels on CUDA", () => {
  test("template arguments, two outputs and a fill value", () => {
    mx.setDevice("gpu");
    const kernel = new CustomKernel({
      name: "pv_test_axpy",
      inputs: ["a", "b"],
      outputs: ["y", "flag"],
      source: `
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < SIZE) y[i] = static_cast<T>(SCALE * static_cast<float>(a[i]) + static_cast<float>(b[i]));
        if (i == 0 && NEGATE) flag[0] = -1.f;`,
    });
    try {
      mx.tidy(() => {
        const n = 1000;
        const a = mx.arange(0, n, 1, mx.Dtype.float32);
        const b = mx.full([n], 2, mx.Dtype.float32);
        const [y, flag] = kernel.call({
          inputs: [a, b],
          outputs: [
            { shape: [n], dtype: mx.Dtype.float32 },
            { shape: [2], dtype: mx.Dtype.float32 },
          ],
          grid: [n, 1, 1],
          threadgroup: [256, 1, 1],
          template: { T: { dtype: mx.Dtype.float32 }, SIZE: n, SCALE: 3, NEGATE: true },
          initValue: 5,
        }) as [mx.MxArray, mx.MxArray];
        const got = Array.from(y.read() as Float32Array);
        expect(got.slice(0, 3)).toEqual([2, 5, 8]);
        expect(got[n - 1]).toBe(3 * (n - 1) + 2);
        expect(Array.from(flag.read() as Float32Array)).toEqual([-1, 5]);
      });
    } finally {
      kernel.dispose();
    }
  });

  test("a plan repeats a launch with new inputs, and dies with its kernel", () => {
    mx.setDevice("gpu");
    const kernel = new CustomKernel({
      name: "pv_test_double",
      inputs: ["a"],
      outputs: ["y"],
      source: "const int i = threadIdx.x; if (i < 8) y[i] = 2.f * a[i];",
    });
    const plan = kernel.plan({
      outputs: [{ shape: [8], dtype: mx.Dtype.float32 }],
      grid: [8, 1, 1],
      threadgroup: [8, 1, 1],
    });
    mx.tidy(() => {
      for (const v of [1, 5]) {
        const [y] = plan.run([mx.full([8], v, mx.Dtype.float32)]);
        expect(Array.from((y as mx.MxArray).read() as Float32Array)).toEqual(new Array(8).fill(2 * v));
      }
    });
    kernel.dispose();
    expect(() => plan.run([mx.full([8], 1, mx.Dtype.float32)])).toThrow(/disposed/);
    plan.dispose(); // freed with the kernel already: nothing to do
  });
});
