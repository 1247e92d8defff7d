// What the scheduler does after MLX runs out of memory (plain data, no MLX).
// MLX reports a failed allocation as an error, and the engine keeps serving:
// - The sequences the failed work involved go back to the front of the queue
//   and recompute (a started one resumes without a second "started"), so their
//   clients see a pause, not an error. Each may do so a bounded number of
//   times: twice while other sequences ran beside it (they may leave room),
//   once when it ran alone. After that it fails with the error (a 5xx naming it).
// - Admission then plans with a smaller KV budget, a fraction of what the pool
//   held when the failure came (sequences and cached prefixes), and cached
//   prefixes are evicted down to it at once (all of them after a lone
//   sequence's failure, which leaves the budget as it is), so fewer run together,
//   until the engine next has nothing to do: memory that another process held,
//   or that the plan did not foresee, may be back by then.
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

/** The budget after a failure: this fraction of what was reserved then. */
export const PRESSURE_FRACTION = 0.75;

/** Whether a sequence recomputes after its `failures`-th out-of-memory failure (`crowded`: others ran beside it). */
export function retriesAfterOutOfMemory(failures: number, crowded: boolean): boolean {
  return failures <= (crowded ? 2 : 1);
}

export class MemoryPressure {
  readonly plannedBytes: number;
  #cap: number | null = null;
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
    if (crowded) this.#cap = Math.floor(PRESSURE_FRACTION * Math.min(this.budgetBytes, Math.max(0, heldBytes)));
  }

  /** Nothing runs: the plan's budget again. */
  relax(): void {
    this.#cap = null;
  }

  stats(): OutOfMemoryStats {
    return { failures: this.failures, requeued: this.requeued, loweredBudgetBytes: this.#cap };
  }
}
