// Prefix cache: the KV of earlier prompts and finished conversations, kept in
// the KV pool (src/engine/kv-pool.ts) and reused for the longest shared prefix
// of a new prompt. Multi-turn chats and clients that resend one long system
// prompt (Claude Code: ~20K tokens of system prompt and tools every turn) then
// prefill only what is new, and sessions that share a prefix share its blocks
// (a radix tree over token blocks, src/engine/radix-cache.ts).
//
// It has no budget of its own: the scheduler evicts least recently used
// leaves whenever running sequences need the memory. An optional cap
// (prefixCacheBytes) bounds it further.
import * as mx from "../mlx";
import { disposeState, type KVState, stateBytes } from "./kv-cache";
import type { PrefixCacheStats } from "./protocol";
import { type PayloadOps, RadixCache, type RadixEntry } from "./radix-cache";

export type { KVState };
export { disposeState };

export interface PrefixHit {
  /** Consecutive cached states covering the prefix: the first `tokens` of each are used. Owned by the cache. */
  segments: { state: KVState; tokens: number }[];
  /** Tokens of the prompt covered by the cached KV. */
  length: number;
}

export interface PrefixCacheOptions {
  enabled: boolean;
  /** Upper bound on cached bytes; null: only the KV pool's budget. */
  capBytes: number | null;
  /** Node boundaries fall on multiples of this many tokens. */
  blockTokens?: number;
  /** Shortest prefix worth reusing. */
  minTokens?: number;
}

const kvOps: PayloadOps<KVState> = {
  bytes: stateBytes,
  split(state, at, length) {
    const copy = (start: number, end: number): KVState =>
      mx.tidy(() => ({
        parts: state.parts.map((layer) => layer.map((a) => mx.keep(mx.contiguous(mx.sliceAxis(a, 2, start, end))))),
        length: end - start,
      }));
    const head = copy(0, at);
    const tail = copy(at, length);
    mx.evaluate(...head.parts.flat(), ...tail.parts.flat());
    disposeState(state);
    return [head, tail];
  },
  dispose: disposeState,
};

export class PrefixCache {
  readonly enabled: boolean;
  readonly capBytes: number | null;
  readonly minTokens: number;
  readonly #radix: RadixCache<KVState>;
  #hits = 0;
  #misses = 0;
  #reused = 0;

  constructor(options: PrefixCacheOptions) {
    this.capBytes = options.capBytes;
    this.enabled = options.enabled && (options.capBytes === null || options.capBytes > 0);
    this.minTokens = options.minTokens ?? 16;
    this.#radix = new RadixCache(kvOps, options.blockTokens ?? 16);
  }

  get blockTokens(): number {
    return this.#radix.blockTokens;
  }

  /**
   * The longest cached prefix of `prompt` in the same RoPE regime. At least
   * one prompt token is always left to compute (its logits start decoding).
   */
  lookup(prompt: readonly number[], regime: number): PrefixHit | null {
    const m = this.enabled ? this.#radix.match(prompt, regime, prompt.length - 1) : { length: 0, segments: [] };
    if (m.length < this.minTokens) {
      this.#misses++;
      return null;
    }
    this.#hits++;
    this.#reused += m.length;
    return { segments: m.segments.map((s) => ({ state: s.payload, tokens: s.tokens })), length: m.length };
  }

  /** The cached prefix length lookup() would give, without counting it or touching the LRU order. */
  peek(prompt: readonly number[], regime: number): number {
    if (!this.enabled) return 0;
    const n = this.#radix.match(prompt, regime, prompt.length - 1, false).length;
    return n >= this.minTokens ? n : 0;
  }

  /**
   * Stores the KV of `tokens[0, length)`: `produce(start, end)` copies a range
   * not yet cached out of the sequence's cache. Returns tokens newly stored.
   */
  store(
    tokens: readonly number[],
    regime: number,
    length: number,
    produce: (start: number, end: number) => KVState,
  ): number {
    if (!this.enabled || length < this.minTokens) return 0;
    const added = this.#radix.insert(tokens, regime, length, produce);
    if (this.capBytes !== null) this.#radix.evictTo(this.capBytes);
    return added;
  }

  /** Evicts least recently used leaves until at most `bytes` remain. Returns the bytes freed. */
  evictTo(bytes: number): number {
    return this.#radix.evictTo(Math.max(0, bytes));
  }

  get bytes(): number {
    return this.#radix.bytes;
  }

  /** Every node with its full prefix, most used first (persistence). */
  entries(): RadixEntry<KVState>[] {
    return this.#radix.entries();
  }

  stats(): PrefixCacheStats {
    const r = this.#radix.stats();
    return {
      entries: r.nodes,
      bytes: r.bytes,
      tokens: r.tokens,
      budgetBytes: this.capBytes ?? -1,
      hits: this.#hits,
      misses: this.#misses,
      reusedTokens: this.#reused,
      evictions: r.evictions,
    };
  }

  clear(): void {
    this.#radix.clear();
  }
}
