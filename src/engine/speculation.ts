// Prompt-lookup speculation (n-gram drafts), as plain data: no MLX here, so the
// proposer and the acceptance rules are tested on their own
// (test/engine/speculation.test.ts). The scheduler runs the verify pass
// (scheduler.ts, #speculate).
//
// A draft is the continuation of the most recent earlier occurrence of the
// sequence's last n tokens (prompt and output so far). The target model then
// scores [last token, draft...] in one forward pass; the longest prefix of the
// draft that the sampler accepts is kept, plus one token of the model's own.
//
// Adaptation: the draft length k doubles after a fully accepted draft and
// shrinks to the accepted length + 1 after a rejection (LookupTuning); the shortest n-gram accepted as a match rises
// after a draft with nothing accepted (short matches are often chance) and
// falls after a well accepted one; after a miss (no match, or nothing
// accepted) lookups pause for 1, 2, 4, 8 steps so that novel text decodes on
// the pipelined path at full speed.
import type { SpeculationStats } from "./protocol";

export type { SpeculationStats };

export interface LookupTuning {
  /** Longest n-gram searched (longer matches are tried first). */
  maxNgram: number;
  /** Bounds of the shortest n-gram accepted as a match (it adapts between them). */
  minNgramFloor: number;
  minNgramCeiling: number;
  /** Bounds of the draft length k (it adapts between them). */
  minDraft: number;
  maxDraft: number;
  /** The draft length at the start. */
  initialDraft: number;
  /** Longest pause (steps) after consecutive misses. */
  maxPause: number;
  /**
   * After a fully accepted draft k grows by 2 ("add") or doubles ("double");
   * after a rejection it shrinks by 1 ("step") or to the accepted length + 1
   * when that is shorter ("accepted": fewer wasted rows in the next pass).
   */
  growth: "add" | "double";
  shrink: "step" | "accepted";
}

export const DEFAULT_LOOKUP: LookupTuning = {
  maxNgram: 5,
  minNgramFloor: 1,
  minNgramCeiling: 4,
  minDraft: 1,
  maxDraft: 16,
  initialDraft: 6,
  maxPause: 8,
  // Measured against add/step with maxDraft 12 (bench/results/spec-cpu-2026-12-06T14-13-11.md): edits 1.54x
  // vs 1.48x per CPU-second; a rejection's wasted rows cost ~0.25-0.35 of a step each on this CPU.
  growth: "double",
  shrink: "accepted",
};

/**
 * The `k` tokens that followed the most recent earlier occurrence of the last
 * `n` tokens of `tokens` (fewer near the end; empty when there is none).
 */
export function continuation(tokens: readonly number[], n: number, k: number): number[] {
  const L = tokens.length;
  if (n <= 0 || k <= 0 || L < n + 1) return [];
  const last = tokens[L - 1];
  // Candidate starts i: tokens[i..i+n) equals the suffix, with i + n < L (something follows).
  for (let i = L - n - 1; i >= 0; i--) {
    if (tokens[i + n - 1] !== last) continue;
    let j = 0;
    while (j < n - 1 && tokens[i + j] === tokens[L - n + j]) j++;
    if (j < n - 1) continue;
    return tokens.slice(i + n, Math.min(L, i + n + k)) as number[];
  }
  return [];
}

export interface Proposal {
  draft: number[];
  /** The n-gram length that matched. */
  ngram: number;
}

/** One sequence's prompt-lookup proposer with its adaptive state. */
export class PromptLookup {
  readonly tuning: LookupTuning;
  #draft: number;
  #minNgram: number;
  #pause = 0;
  #misses = 0;
  #lastNgram = 0;

  constructor(tuning: LookupTuning = DEFAULT_LOOKUP) {
    this.tuning = tuning;
    this.#draft = tuning.initialDraft;
    this.#minNgram = Math.max(tuning.minNgramFloor, Math.min(2, tuning.minNgramCeiling));
  }

  /** The draft length the next proposal aims for. */
  get draftLength(): number {
    return this.#draft;
  }

  get minNgram(): number {
    return this.#minNgram;
  }

  /** Whether this step should look up a draft (false while paused after misses; counts the pause down). */
  ready(): boolean {
    if (this.#pause > 0) {
      this.#pause--;
      return false;
    }
    return true;
  }

  /** A draft of at most min(k, limit) tokens, or null (a miss: lookups pause). */
  propose(tokens: readonly number[], limit: number): Proposal | null {
    const k = Math.min(this.#draft, limit);
    if (k > 0) {
      for (let n = Math.min(this.tuning.maxNgram, tokens.length - 1); n >= this.#minNgram; n--) {
        const draft = continuation(tokens, n, k);
        if (draft.length > 0) {
          this.#lastNgram = n;
          return { draft, ngram: n };
        }
      }
    }
    this.#miss();
    return null;
  }

  /** Adapts to a verified draft: `accepted` of its `drafted` tokens were kept. */
  record(drafted: number, accepted: number): void {
    const t = this.tuning;
    if (accepted === drafted) {
      this.#draft = Math.min(t.maxDraft, t.growth === "double" ? 2 * this.#draft : this.#draft + 2);
    } else {
      const shorter = t.shrink === "accepted" ? Math.min(this.#draft - 1, accepted + 1) : this.#draft - 1;
      this.#draft = Math.max(t.minDraft, shorter);
    }
    if (accepted === 0) {
      this.#minNgram = Math.min(t.minNgramCeiling, Math.max(this.#minNgram, this.#lastNgram + 1));
      this.#miss();
      return;
    }
    if (2 * accepted >= drafted) this.#minNgram = Math.max(t.minNgramFloor, this.#minNgram - 1);
    this.#misses = 0;
  }

  #miss(): void {
    this.#pause = Math.min(this.tuning.maxPause, 2 ** this.#misses);
    this.#misses++;
  }
}

/**
 * Greedy verification: `targets[i]` is the model's pick after the input's
 * i-th token (targets.length = draft.length + 1). Keeps the draft while it
 * agrees, then the model's own token: the tokens greedy decoding gives.
 */
export function acceptGreedy(
  draft: readonly number[],
  targets: ArrayLike<number>,
): { tokens: number[]; accepted: number } {
  let a = 0;
  while (a < draft.length && draft[a] === targets[a]) a++;
  return { tokens: [...draft.slice(0, a), targets[a] as number], accepted: a };
}

/**
 * Sampled verification for a deterministic draft (prompt lookup): draft token
 * d_i is kept with probability p_i(d_i) (uniform[i] < draftProbs[i]); at the
 * first rejection the token is `residual[i]`, a draw from p_i with d_i
 * removed and renormalized; when every draft token is kept, `bonus` (a draw
 * from the distribution after the last one). Each emitted token is then
 * distributed exactly as p (the standard rule with a one-hot draft distribution).
 */
export function acceptSampled(
  draft: readonly number[],
  draftProbs: ArrayLike<number>,
  uniform: ArrayLike<number>,
  residual: ArrayLike<number>,
  bonus: number,
): { tokens: number[]; accepted: number } {
  const tokens: number[] = [];
  for (let i = 0; i < draft.length; i++) {
    if ((uniform[i] as number) < (draftProbs[i] as number)) {
      tokens.push(draft[i] as number);
      continue;
    }
    tokens.push(residual[i] as number);
    return { tokens, accepted: i };
  }
  tokens.push(bonus);
  return { tokens, accepted: draft.length };
}

export function emptySpeculationStats(): SpeculationStats {
  return {
    passes: 0,
    drafted: 0,
    accepted: 0,
    emitted: 0,
    draftModelPasses: 0,
    draftModelDrafted: 0,
    draftModelAccepted: 0,
  };
}
