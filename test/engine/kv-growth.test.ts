// KVCache.growFor: buffers grown ahead of a forward, one layer at a time, so
// that at most one layer's old buffers are alive beside the new ones (grown
// inside a decode step's graph, many layers' were, every KV_STEP columns:
// bench/kv-growth-peak.ts measures it at Phi-3's dimensions).
import { expect, test } from "bun:test";
import { cacheFor, prefill } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";

test("growFor grows every layer with at most one old layer beside the new buffers, and the forward then grows nothing", () => {
  const { model } = loadModel(tinyModel("tiny-llama"));
  const cache = cacheFor(model, 1);
  try {
    // 1,024 columns: the capacity is full, so the next token grows every layer (to 1,280).
    mx.tidy(() => {
      prefill(model, cache, promptIds(1023, 5), { chunk: 256 });
      mx.evaluate(...cache.arrays());
    });
    mx.evaluate(mx.tidy(() => model.forward(mx.int32([7], [1, 1]), cache, { logits: "last" })));
    expect(cache.offset).toBe(1024);
    const capacity = () => (cache.arrays()[0] as mx.MxArray).dim(2);
    expect(capacity()).toBe(1024);
    mx.memory.clearCache();
    const oldBytes = cache.nbytes;
    const before = mx.memory.active();
    mx.memory.resetPeak();
    cache.growFor(1);
    const newBytes = cache.nbytes;
    const peak = mx.memory.peak() - before;
    expect(capacity()).toBe(1280);
    // The new buffers, and at most one layer's old buffers beside them (in a forward's graph: all of them).
    const oneOldLayer = oldBytes / model.config.numLayers;
    console.log(
      `grown ${oldBytes} -> ${newBytes} bytes; peak above the start ${peak} (bound ${newBytes - oldBytes + oneOldLayer})`,
    );
    expect(peak).toBeLessThanOrEqual(newBytes - oldBytes + oneOldLayer + 64 * 1024);
    // The next forward writes in place: no buffer of another capacity.
    const logits = mx.tidy(() => model.forward(mx.int32([9], [1, 1]), cache, { logits: "last" }));
    mx.evaluate(logits);
    logits.dispose();
    expect(capacity()).toBe(1280);
    expect(cache.offset).toBe(1025);
  } finally {
    cache.dispose();
    model.dispose();
  }
}, 120_000);
