// Prefix cache: KV state of earlier prompts (and finished conversations),
// reused for the longest shared token prefix of a new prompt. Multi-turn chats
// and clients that resend one long system prompt (Claude Code: ~20K tokens of
// system prompt and tools every turn) then prefill only what is new.
// An LRU under a byte budget.
import type { MxArray } from "../mlx";
import type { PrefixCacheStats } from "./protocol";

export interface KVState {
  keys: MxArray[];
  values: MxArray[];
  length: number;
}

interface Entry {
  tokens: number[];
  state: KVState;
  /** RoPE regime the KV was computed in (Phi-3: short or long factors). */
  regime: number;
  bytes: number;
  lastUsed: number;
}

export interface PrefixHit {
  state: KVState;
  /** Tokens of the prompt covered by the cached KV. */
  length: number;
}

function commonPrefix(a: readonly number[], b: readonly number[], limit: number): number {
  const n = Math.min(a.length, b.length, limit);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function stateBytes(state: KVState): number {
  let n = 0;
  for (const a of [...state.keys, ...state.values]) n += a.nbytes;
  return n;
}

export class PrefixCache {
  readonly budgetBytes: number;
  /** Shortest prefix worth keeping or reusing. */
  readonly minTokens: number;
  #entries: Entry[] = [];
  #clock = 0;
  #hits = 0;
  #misses = 0;
  #reused = 0;

  constructor(budgetBytes: number, minTokens = 16) {
    this.budgetBytes = Math.max(0, budgetBytes);
    this.minTokens = minTokens;
  }

  /**
   * The longest cached prefix of `prompt` in the same RoPE regime. At least
   * one prompt token is always left to compute (its logits start decoding).
   */
  lookup(prompt: readonly number[], regime: number): PrefixHit | null {
    let best: Entry | null = null;
    let bestLength = 0;
    for (const e of this.#entries) {
      if (e.regime !== regime) continue;
      const n = commonPrefix(e.tokens, prompt, prompt.length - 1);
      if (n > bestLength) {
        best = e;
        bestLength = n;
      }
    }
    if (!best || bestLength < this.minTokens) {
      this.#misses++;
      return null;
    }
    best.lastUsed = ++this.#clock;
    this.#hits++;
    this.#reused += bestLength;
    return { state: best.state, length: bestLength };
  }

  /** The cached prefix length lookup() would give, without counting it as a hit or miss. */
  peek(prompt: readonly number[], regime: number): number {
    let best = 0;
    for (const e of this.#entries) {
      if (e.regime === regime) best = Math.max(best, commonPrefix(e.tokens, prompt, prompt.length - 1));
    }
    return best >= this.minTokens ? best : 0;
  }

  /**
   * Stores KV for `tokens` (state.length of them). Takes ownership of the
   * arrays. An entry that is a prefix of the new one is replaced; nothing is
   * stored when an existing entry already covers it.
   */
  store(tokens: readonly number[], state: KVState, regime: number): void {
    const covered = tokens.slice(0, state.length);
    const bytes = stateBytes(state);
    const covering = this.#entries.find(
      (e) =>
        e.regime === regime &&
        e.tokens.length >= covered.length &&
        commonPrefix(e.tokens, covered, covered.length) === covered.length,
    );
    if (covered.length < this.minTokens || bytes > this.budgetBytes || covering) {
      if (covering) covering.lastUsed = ++this.#clock;
      disposeState(state);
      return;
    }
    this.#entries = this.#entries.filter((e) => {
      const subsumed =
        e.regime === regime &&
        e.tokens.length <= covered.length &&
        commonPrefix(e.tokens, covered, e.tokens.length) === e.tokens.length;
      if (subsumed) disposeState(e.state);
      return !subsumed;
    });
    this.#entries.push({ tokens: covered, state, regime, bytes, lastUsed: ++this.#clock });
    this.#evict();
  }

  #evict(): void {
    let total = this.bytes;
    while (total > this.budgetBytes && this.#entries.length > 0) {
      let oldest = 0;
      for (let i = 1; i < this.#entries.length; i++) {
        if ((this.#entries[i] as Entry).lastUsed < (this.#entries[oldest] as Entry).lastUsed) oldest = i;
      }
      const [gone] = this.#entries.splice(oldest, 1);
      if (gone) {
        total -= gone.bytes;
        disposeState(gone.state);
      }
    }
  }

  get bytes(): number {
    return this.#entries.reduce((n, e) => n + e.bytes, 0);
  }

  stats(): PrefixCacheStats {
    return {
      entries: this.#entries.length,
      bytes: this.bytes,
      budgetBytes: this.budgetBytes,
      hits: this.#hits,
      misses: this.#misses,
      reusedTokens: this.#reused,
    };
  }

  clear(): void {
    for (const e of this.#entries) disposeState(e.state);
    this.#entries = [];
  }
}

export function disposeState(state: KVState): void {
  for (const a of [...state.keys, ...state.values]) a.dispose();
}
