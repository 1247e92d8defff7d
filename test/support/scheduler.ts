// Scheduler settings for tests on tiny models: small chunks, so that prefill
// is chunked and interleaved with decode within a few dozen tokens.
import type { SchedulerOptions } from "../../src/engine/scheduler";

export const TEST_SCHEDULER_OPTIONS: SchedulerOptions = {
  maxConcurrent: 8,
  queueSize: 16,
  kvBudgetBytes: 1 << 30,
  contextLength: 2048,
  prefillChunk: 64,
  interleavedPrefillChunk: 16,
  prefixCacheBytes: 0,
  maxPrefillBatch: 4,
};
