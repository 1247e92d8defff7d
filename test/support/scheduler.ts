// Scheduler settings for tests on tiny models: small chunks, so that prefill
// is chunked and interleaved with decode within a few dozen tokens.
// PENSIEVE_TEST_KV_BITS=8 (or 4) runs the scheduler tests over a quantized KV cache.
import { isKvBits, type KvBits } from "../../src/engine/attention-plan";
import type { SchedulerOptions } from "../../src/engine/scheduler";

function testKvBits(): KvBits {
  const text = process.env.PENSIEVE_TEST_KV_BITS;
  const n = text ? Number(text) : 0;
  if (!isKvBits(n)) throw new Error(`PENSIEVE_TEST_KV_BITS must be 0, 4 or 8 (got ${text})`);
  return n;
}

/** KV storage the scheduler tests use (float unless PENSIEVE_TEST_KV_BITS says otherwise). */
export const TEST_KV_BITS = testKvBits();

export const TEST_SCHEDULER_OPTIONS: SchedulerOptions = {
  maxConcurrent: 8,
  queueSize: 16,
  kvBudgetBytes: 1 << 30,
  contextLength: 2048,
  prefillChunk: 64,
  interleavedPrefillChunk: 16,
  prefixCacheBytes: 0,
  maxPrefillBatch: 4,
  kvBits: TEST_KV_BITS,
};
