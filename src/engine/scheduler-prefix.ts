// The scheduler's prefix-cache work on the device: copying a sequence's KV
// into the cache, bringing a prompt's prefix in from disk, and keeping the
// cache inside what the KV pool leaves it (src/engine/kv-pool.ts). The
// reservation of running and prefilling sequences comes from the scheduler
// (`reserved`), so the cache always gives way to them.

import * as mx from "../mlx";
import type { KVCache } from "./kv-cache";
import { disposeState, type KVState, type PrefixCache } from "./prefix-cache";
import type { PrefixStore } from "./prefix-store";
import type { SequenceState } from "./scheduler-policy";

export class PrefixKeeper {
  readonly cache: PrefixCache;
  #disk: PrefixStore | null = null;
  readonly #budgetBytes: number;
  readonly #bytesPerToken: number;
  /**
   * KV bytes running and prefilling sequences hold at their largest (the
   * pool's projection), `joining` counted with them.
   */
  readonly #reserved: (joining?: readonly SequenceState[]) => number;

  constructor(
    cache: PrefixCache,
    budgetBytes: number,
    bytesPerToken: number,
    reserved: (joining?: readonly SequenceState[]) => number,
  ) {
    this.cache = cache;
    this.#budgetBytes = budgetBytes;
    this.#bytesPerToken = bytesPerToken;
    this.#reserved = reserved;
  }

  get disk(): PrefixStore | null {
    return this.#disk;
  }

  /** Keeps cached prefixes on disk too (src/engine/prefix-store.ts). */
  attach(store: PrefixStore | null): void {
    this.#disk = store;
  }

  /**
   * Writes one piece (about PIECE_BYTES of KV) of a cached prefix node that
   * the disk lacks: a short step, so that the engine can take new work
   * between pieces. Returns whether more remain.
   */
  persistStep(): boolean {
    if (!this.#disk || !this.cache.enabled) return false;
    const pending = this.#disk.plan(
      this.cache.entries(),
      (st) => st.parts.reduce((n, layer) => n + layer.reduce((m, a) => m + a.nbytes, 0), 0),
      this.cache.blockTokens,
    );
    const next = pending[0];
    if (next) this.#disk.write(next);
    return pending.length > 1;
  }

  /** Shrinks the prefix cache to what the pool leaves it. */
  trim(): void {
    this.cache.evictTo(this.#budgetBytes - this.#reserved());
  }

  /**
   * Stores a row's KV [0, length) in the prefix cache, copying only what is
   * not cached yet; `joining`: a prefill group about to join the batch.
   */
  store(
    tokens: readonly number[],
    regime: number,
    batch: KVCache,
    row: number,
    length: number,
    joining: readonly SequenceState[] = [],
  ): void {
    // Room first: the copy is new memory. What the running sequences, and a prefill group about to join them,
    // leave bounds it: a prompt near the context fills the pool alone, and copying all of it ran an H100 out of
    // memory at 120K tokens (the group was counted nowhere between its last chunk and joining the batch).
    const room = this.#budgetBytes - this.#reserved(joining);
    const kept = Math.min(length, Math.floor(Math.max(0, room) / this.#bytesPerToken));
    if (kept < length && this.#adopt(tokens, regime, batch, length, joining)) return;
    if (kept < this.cache.minTokens) return;
    this.cache.evictTo(room - kept * this.#bytesPerToken);
    this.cache.store(tokens, regime, kept, (start, end) => batch.rowState(row, start, end));
    this.trim();
  }

  /**
   * Where a copy cannot hold the whole prefix (a prompt near the context fills
   * the pool alone), a lone row's KV is kept as views of its own buffers,
   * which its reservation counts until it leaves: at the end of prefill the
   * store waits for that (a partial copy would raise the peak by the copy, 12
   * GiB at 120K tokens on an H100); when the row finishes, its buffers become
   * the cache entry. Admission evicts it like any other entry.
   */
  #adopt(
    tokens: readonly number[],
    regime: number,
    batch: KVCache,
    length: number,
    joining: readonly SequenceState[],
  ): boolean {
    if (batch.batchSize !== 1 || batch.leftPadding[0] !== 0) return false;
    if (joining.length > 0) return true;
    this.cache.store(tokens, regime, length, (start, end) => {
      const views = batch.rowViews(start, end);
      if (!views) throw new Error("prefix adopt: the row is no longer lone");
      return views;
    });
    return true;
  }

  /**
   * Brings a prompt's prefix from disk into the prefix cache when the disk
   * holds more of it than memory does: one radix node per file (a piece), so
   * the nodes keep the files' boundaries (and their names) when written back.
   */
  loadFromDisk(tokens: readonly number[], regime: number): void {
    const disk = this.#disk;
    if (!disk) return;
    const limit = tokens.length - 1;
    const inMemory = this.cache.peek(tokens, regime);
    const found = disk.match(tokens, regime, limit, this.cache.blockTokens);
    if (found.length <= inMemory || found.length < this.cache.minTokens) return;
    const fileBytes = found.chain.reduce((n, c) => n + c.bytes, 0);
    if (!disk.choice.worthLoading(fileBytes, found.length - inMemory)) return;
    this.cache.evictTo(this.#budgetBytes - this.#reserved() - fileBytes);
    const states = disk.load(found.chain);
    if (!states) return;
    const used = new Set<KVState>();
    let end = 0;
    for (const state of states) {
      const start = end;
      end = Math.min(end + state.length, found.length);
      this.cache.store(tokens, regime, end, (a, b) => {
        if (a === start && b - a === state.length) {
          used.add(state);
          return state;
        }
        return mx.tidy(() => ({
          parts: state.parts.map((layer) =>
            layer.map((x) => mx.keep(mx.contiguous(mx.sliceAxis(x, 2, a - start, b - start)))),
          ),
          length: b - a,
        }));
      });
    }
    for (const state of states) if (!used.has(state)) disposeState(state);
    this.trim();
  }
}
