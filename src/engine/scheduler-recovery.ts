// After MLX runs out of memory in the scheduler's work (a prefill chunk, a
// join, a decode step): the sequences involved recompute or fail, and
// admission plans with less (the policy is memory-pressure.ts). Kept apart
// from scheduler.ts, which calls it from its failure guard with the
// operations it needs.

import * as mx from "../mlx";
import { releaseRowStep } from "./batch-step";
import { type MemoryPressure, retriesAfterOutOfMemory } from "./memory-pressure";
import type { PrefixCache } from "./prefix-cache";
import type { FinishReason } from "./protocol";
import type { Sequence } from "./scheduler-sequence";

export interface RecoveryHooks {
  readonly prefixCache: PrefixCache;
  readonly pressure: MemoryPressure;
  /** KV bytes the batch and the prefilling sequences will hold at their largest. */
  reserved(): number;
  /** KV bytes the batch's and the prefilling group's caches hold now. */
  kvBytes(): number;
  /** Emits a sequence's token of an earlier, finished step (it may finish the sequence). */
  read(s: Sequence): void;
  finish(s: Sequence, reason: FinishReason, message: string): void;
  /** Takes the failed sequences out of the prefill line, and drops the batch when its cache is in doubt. */
  discard(failed: ReadonlySet<Sequence>): void;
  /** Sequences still holding memory (decoding or prefilling) once the failed ones are out. */
  othersRunning(): boolean;
  /** Puts sequences at the front of the queue, in this order. */
  requeue(sequences: readonly Sequence[]): void;
  /** Takes the admitted sequences whose prefill has not begun out of the prefill line, in order. */
  unadmit(): Sequence[];
}

export function recoverFromOutOfMemory(hooks: RecoveryHooks, failed: ReadonlySet<Sequence>, message: string): void {
  // What the pool held in memory when it ran out: the caches of running and prefilling sequences, and cached
  // prefixes (not their reservations, which count tokens they may never reach: the budget then took several
  // failures of the same sequence to come down to what fits).
  const held = hooks.kvBytes() + hooks.prefixCache.stats().bytes;
  // Tokens a finished earlier step sampled still go out (the failed one's never came).
  for (const s of failed) {
    try {
      hooks.read(s);
    } catch {
      s.unread = false;
    }
  }
  hooks.discard(failed);
  // Waiting sequences hold nothing: only running ones make it crowded.
  const crowded = failed.size > 1 || hooks.othersRunning();
  hooks.pressure.failed(held, crowded);
  // Cached prefixes give way at once (admission would only evict them for a sequence it admits); all of them
  // when the sequence ran alone.
  hooks.prefixCache.evictTo(crowded ? Math.max(0, hooks.pressure.budgetBytes - hooks.reserved()) : 0);
  // Arrays the failed work left to the finalizer (made outside a scope that disposes them) hold memory until a
  // collection: on the CPU test below, without this, a lone retry found a fifth of the headroom still taken.
  Bun.gc(true);
  // The failed work's buffers sit in MLX's cache, sized for it: the running rows' next allocations (KV
  // growth) then found no room on a full card and failed too (H200, bench/results/gpu-h200-2026-12-06f/oom).
  mx.memory.clearCache();
  const retrying: Sequence[] = [];
  let errors = 0;
  for (const s of failed) {
    if (s.finished) continue;
    if (crowded) s.outOfMemoryFailures.crowded++;
    else s.outOfMemoryFailures.alone++;
    if (s.cancelled || !retriesAfterOutOfMemory(s.outOfMemoryFailures, crowded)) {
      hooks.finish(s, "error", message);
      errors++;
      continue;
    }
    releaseRowStep(s.step);
    s.step = null;
    s.unread = false;
    s.inBatch = false;
    // The failed step's token is in the penalties' lazy state (never kept): rebuilt from the kept tokens.
    s.sampler.resync(s.request.prompt, s.tokens.slice(s.request.prompt.length));
    // A draft model's cache may have been mid-write too: the next proposal builds a new one from the tokens.
    s.draft?.dispose();
    s.draft = null;
    // A started sequence resumes as a recompute (no second "started"); one still in its first prefill starts over.
    s.resumes = s.started;
    retrying.push(s);
  }
  // Admitted but not begun, they hold nothing: admission decides again, with the lowered budget.
  const unadmitted = hooks.unadmit();
  hooks.requeue([...retrying, ...unadmitted]);
  hooks.pressure.requeued += retrying.length;
  const gib = (hooks.pressure.budgetBytes / 2 ** 30).toFixed(2);
  console.error(
    `[engine] out of memory: ${retrying.length} sequence(s) recompute, ${errors} failed; ` +
      `KV budget ${gib} GiB until idle (${message})`,
  );
}
