// The decode batch: the rows that decode together and their one KV cache
// (rows left-padded to a shared write position, src/engine/kv-cache.ts). A
// finished row stays in it, idle, until compaction (scheduler-policy.ts
// decides when): each removal copies the whole cache.

import { type DecodingRow, releaseRowStep } from "./batch-step";
import type { KVCache } from "./kv-cache";
import type { BatchFootprint } from "./kv-pool";
import { batchFootprint, compaction, type SequenceState } from "./scheduler-policy";

export interface BatchRow extends SequenceState, DecodingRow {
  /** In the decode batch (finished rows too, until compaction). */
  inBatch: boolean;
}

export class DecodeBatch<S extends BatchRow> {
  /** In the cache's row order. */
  rows: S[] = [];
  cache: KVCache | null = null;

  /** The batch as the KV pool sees it (`allowance`: SchedulerOptions.growthAllowance). */
  footprint(allowance?: number): BatchFootprint | null {
    return batchFootprint(this.rows, this.cache ? this.cache.offset : null, allowance);
  }

  /** Removes rows now (one copy of the KV cache); a finished row's last step goes with it. */
  remove(gone: Set<S>): void {
    const cache = this.cache;
    if (!cache) return;
    const keep: number[] = [];
    this.rows.forEach((s, i) => {
      if (!gone.has(s)) {
        keep.push(i);
        return;
      }
      s.inBatch = false;
      if (s.finished !== null) {
        releaseRowStep(s.step);
        s.step = null;
      }
    });
    this.rows = this.rows.filter((s) => !gone.has(s));
    if (this.rows.length === 0) {
      cache.dispose();
      this.cache = null;
    } else {
      cache.keepRows(keep);
    }
  }

  /** Takes finished rows out when the policy says so (or `force`: the cache is being copied anyway). */
  compact(force = false): void {
    const dead = compaction(this.rows, force);
    if (dead.length > 0) this.remove(new Set(dead));
  }

  /** Prefilled rows join, `cache` holding exactly them; idle rows leave in the same copy. */
  join(joining: readonly S[], cache: KVCache): void {
    this.compact(true);
    this.rows.push(...joining);
    if (this.cache) this.cache.appendRows(cache);
    else this.cache = cache;
  }

  /** Forgets every row and the cache (a failed decode step left it in an unknown state). */
  drop(): void {
    for (const r of this.rows) {
      r.inBatch = false;
      releaseRowStep(r.step);
      r.step = null;
    }
    this.rows = [];
    this.free();
  }

  /** Frees the cache (nothing runs, or shutdown). */
  free(): void {
    this.cache?.dispose();
    this.cache = null;
  }
}
