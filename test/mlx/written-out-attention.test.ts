// Attention written out as plain matmuls (mx.writtenOutSdpa, used on the GPU for a
// few queries over a long cache) against MLX's own scaled_dot_product_attention.
import { expect, test } from "bun:test";
import * as mx from "../../src/mlx";

const cases = [
  { name: "causal, as many KV heads as heads", B: 1, H: 4, Hkv: 4, L: 6, S: 70, mask: "causal" as const },
  { name: "causal, grouped-query heads", B: 2, H: 8, Hkv: 2, L: 5, S: 33, mask: "causal" as const },
  { name: "a padded batch's keep-mask", B: 2, H: 4, Hkv: 2, L: 4, S: 20, mask: "array" as const },
  // A verify pass of 1 or 2 drafts (2-3 queries; from 2 queries the GPU takes this path).
  { name: "causal, 2 queries", B: 1, H: 4, Hkv: 2, L: 2, S: 41, mask: "causal" as const },
  { name: "causal, 3 queries", B: 1, H: 8, Hkv: 8, L: 3, S: 300, mask: "causal" as const },
];

for (const c of cases) {
  test(c.name, () => {
    const diff = mx.tidy(() => {
      const key = (i: number) => mx.randomKey(100 + i);
      const q = mx.randomNormal([c.B, c.H, c.L, 32], mx.Dtype.float32, 0, 1, key(1));
      const k = mx.randomNormal([c.B, c.Hkv, c.S, 32], mx.Dtype.float32, 0, 1, key(2));
      const v = mx.randomNormal([c.B, c.Hkv, c.S, 32], mx.Dtype.float32, 0, 1, key(3));
      let mask: "causal" | mx.MxArray = "causal";
      if (c.mask === "array") {
        // Row 1 is left-padded by 3 columns; queries are the last L positions.
        const cols = mx.reshape(mx.arange(0, c.S), [1, 1, 1, c.S]);
        const rows = mx.reshape(mx.arange(c.S - c.L, c.S), [1, 1, c.L, 1]);
        const pads = mx.reshape(mx.int32([0, 3]), [c.B, 1, 1, 1]);
        mask = mx.logicalAnd(mx.lessEqual(cols, rows), mx.greaterEqual(cols, pads));
      }
      const scale = 1 / Math.sqrt(32);
      const ours = mx.writtenOutSdpa(q, k, v, scale, mask);
      const theirs = mx.sdpa(q, k, v, scale, mask);
      expect(ours.shape).toEqual(theirs.shape);
      return mx.max(mx.abs(mx.subtract(ours, theirs))).item();
    });
    expect(diff).toBeLessThan(1e-5);
  });
}
