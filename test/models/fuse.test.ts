// WeightStore.fuse: linear layers that read one input become one product
// (Llama's q|k|v and gate|up). The stacked product must equal the separate
// ones exactly, parts with another packing must stay apart, and the parts'
// arrays must be freed.
import { expect, test } from "bun:test";
import * as mx from "../../src/mlx";
import { linear, WeightStore } from "../../src/models/weights";

function quantizedStore(parts: Array<[name: string, out: number, bits: number]>, k: number): WeightStore {
  const arrays = new Map<string, mx.MxArray>();
  parts.forEach(([name, out, bits], i) => {
    const packed = mx.quantize(mx.randomNormal([out, k], mx.Dtype.float32, 0, 0.05, mx.randomKey(i + 1)), 32, bits);
    arrays.set(`${name}.weight`, mx.keep(packed.weight));
    arrays.set(`${name}.scales`, mx.keep(mx.astype(packed.scales, mx.Dtype.float32)));
    arrays.set(`${name}.biases`, mx.keep(mx.astype(packed.biases as mx.MxArray, mx.Dtype.float32)));
  });
  return new WeightStore(arrays, mx.Dtype.float32, "test");
}

test("fused q|k|v gives exactly the separate products, and frees the parts", () => {
  const k = 128;
  const live = mx.liveHandleCount();
  mx.tidy(() => {
    const store = quantizedStore(
      [
        ["q", 96, 4],
        ["k", 32, 4],
        ["v", 32, 4],
      ],
      k,
    );
    const parts = ["q", "k", "v"].map((n) => store.linear(n, k));
    const x = mx.randomNormal([3, k], mx.Dtype.float32, 0, 1, mx.randomKey(9));
    const separate = parts.map((p) => linear(x, p));
    mx.evaluate(...separate);
    const expected = separate.map((a) => Array.from(a.read() as Float32Array));
    const before = mx.liveHandleCount();
    const fused = store.fuse(parts);
    expect(fused).not.toBeNull();
    // 9 part arrays (weight, scales, biases each) freed, 3 stacked ones made.
    expect(before - mx.liveHandleCount()).toBe(9 - 3);
    const [q, kk, v] = mx.split(linear(x, fused as NonNullable<typeof fused>), [96, 128], -1) as mx.MxArray[];
    for (const [i, a] of [q, kk, v].entries()) {
      expect(Array.from((a as mx.MxArray).read() as Float32Array)).toEqual(expected[i] as number[]);
    }
    expect(store.names()).toEqual([]);
    store.dispose();
  });
  expect(mx.liveHandleCount()).toBe(live);
});

test("parts with another packing are not fused", () => {
  mx.tidy(() => {
    const store = quantizedStore(
      [
        ["gate", 64, 4],
        ["up", 64, 8],
      ],
      64,
    );
    const parts = ["gate", "up"].map((n) => store.linear(n, 64));
    expect(store.fuse(parts)).toBeNull();
    expect(store.names()).toHaveLength(6);
    store.dispose();
  });
});
