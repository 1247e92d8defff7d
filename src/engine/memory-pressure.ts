// What the scheduler does after MLX runs out of memory (plain data, no MLX).
// MLX reports a failed allocation as an error, and the engine keeps serving:
// - The sequences the failed work involved go back to the front of the queue
//   and recompute (a started one resumes without a second "started"), so their
//   clients see a pause, not an error. Each may do so a bounded number of
//   times: twice while other sequences ran beside it (they may leave room),
//   and once alone, counted apart. After that it fails with the error (a 5xx
//   naming it). Sequences admitted but not yet prefilled hold nothing: they
//   go back to the queue too, so that admission decides again with the
//   lowered budget.
// - Admission then plans with a smaller KV budget, a fraction of what the pool
//   held when the failure came (sequences and cached prefixes), and cached
//   prefixes are evicted down to it at once (all of them after a lone
//   sequence's failure, which leaves the budget as it is), so fewer run together,
//   until the engine next has nothing to do: memory that another process held,
//   or that the plan did not foresee, may be back by then. Until then prompts
//   are also prefilled in the small chunks used beside decoding rows (a
//   chunk's working memory grows with its length).
// On the CPU, test/engine/out-of-memory-concurrent.test.ts caps the engine so
// that eight long requests at once fail 7-9 times: all eight complete.
// Seen on an H100 (bench/results/gpu-h100-2026-12-07/): 8 concurrent Claude Code
// sessions ran out of memory while a prefilled row joined the batch, inside
// the plan's KV budget; before this, the join's failure also corrupted the batch.

import type { OutOfMemoryStats } from "./protocol";

/** An allocation failure as MLX reports it (cudaMallocAsync, Metal, the CPU allocator). */
const OUT_OF_MEMORY = /out of memory|failed to allocate|unable to allocate/i;

export function isOutOfMemory(message: string): boolean {
  return OUT_OF_MEMORY.test(message);
}

/**
 * A device error that stays for the life of the process (CUDA's sticky errors: an
 * illegal address, a failed launch, a device-side assert): every later call fails
 * too, so the engine process exits and the supervisor starts a fresh one. Seen on
 * an H100 after an out-of-memory failure on a full card (bench/results/gpu-h100-2026-12-07b/).
 */
const DEVICE_LOST =
  /illegal memory access|illegal address|unspecified launch failure|device-side assert|illegal instruction|misaligned address|hardware stack error|uncorrectable ECC|device (?:is )?lost/i;

export function isDeviceLost(message: string): boolean {
  return DEVICE_LOST.test(message);
}

/** The budget after a failure: this fraction of what was reserved then. */
export const PRESSURE_FRACTION = 0.75;

/** A sequence's out-of-memory failures so far: beside others (crowded), and alone. */
export interface OutOfMemoryCounts {
  crowded: number;
  alone: number;
}

/**
 * Whether a sequence recomputes after a failure just counted in `counts`
 * (`crowded`: other sequences held memory beside it): twice beside others,
 * and once alone, counted apart (a sequence that failed in a crowd gets its
 * retry alone too, after everything else has given memory back).
 */
export function retriesAfterOutOfMemory(counts: OutOfMemoryCounts, crowded: boolean): boolean {
  return crowded ? counts.crowded <= 2 : counts.alone <= 1;
}

export class MemoryPressure {
  readonly plannedBytes: number;
  #cap: number | null = null;
  #sinceIdle = 0;
  failures = 0;
  requeued = 0;

  constructor(plannedBytes: number) {
    this.plannedBytes = plannedBytes;
  }

  /** The KV budget admission and preemption plan with. */
  get budgetBytes(): number {
    return this.#cap === null ? this.plannedBytes : Math.min(this.plannedBytes, this.#cap);
  }

  /**
   * A failure while the pool held `heldBytes`: beside others (`crowded`) the
   * budget shrinks; alone it stays (a lone sequence is admitted whatever the
   * budget, so shrinking would only hold the queue back after it).
   */
  failed(heldBytes: number, crowded: boolean): void {
    this.failures++;
    this.#sinceIdle++;
    if (crowded) this.#cap = Math.floor(PRESSURE_FRACTION * Math.min(this.budgetBytes, Math.max(0, heldBytes)));
  }

  /** Memory ran out since the engine was last idle: prefill goes in small chunks (their working memory is less). */
  get short(): boolean {
    return this.#sinceIdle > 0;
  }

  /** Nothing runs: the plan's budget again. */
  relax(): void {
    this.#cap = null;
    this.#sinceIdle = 0;
  }

  stats(): OutOfMemoryStats {
    return { failures: this.failures, requeued: this.requeued, loweredBudgetBytes: this.#cap };
  }
}
