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
  /**
   * "adaptive": k follows growth/shrink above. "cost": k is chosen per draft
   * to maximize expected tokens per unit of verify cost (draftLengthByCost),
   * with the acceptance estimated per matched n-gram length, and no draft
   * (a miss) where even k = 1 is not expected to pay. "gated": k as
   * "adaptive", but no draft where the cost model says none pays.
   */
  policy?: "adaptive" | "cost" | "gated";
  /** "cost": a verify pass of k drafts costs 1 + rowCost * k decode steps (measured: bench spec-verify-cost). */
  rowCost?: number;
  /** No lookups once the sequence (prompt and output) is longer than this: past it a pass costs more than measured. */
  maxContext?: number;
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
 * The CPU's prompt lookup (engine-plan.ts): k chosen per draft by cost at CPU_ROW_COST. Against the adaptive
 * DEFAULT_LOOKUP in the same runs (bench/results/spec-cpu-2026-12-07T22-19-14.md, …T22-23-16.md, …T22-50-38.md):
 * edits 1.94x / 1.88x / 1.94x against 1.83x / 1.81x / 1.87x; tool calls 1.64x / 1.48x against 1.58x / 1.52x; the
 * story 1.08x / 0.86x against 1.09x / 0.94x, and over 4 repeats 1.03x against 1.01x (…T23-21-24.md: the 0.86x was
 * this shared host's noise); outputs identical.
 */
export function cpuLookupTuning(): LookupTuning {
  return { ...DEFAULT_LOOKUP, policy: "cost", rowCost: CPU_ROW_COST };
}

/**
 * A CPU verify pass's cost per draft token, in one-token steps. SmolLM2-135M after 512 tokens
 * (bench/results/spec-verify-cost-cpu-2026-12-07T22-17-57.json): passes of 2, 4, 8 and 16 drafts cost 1.32x, 1.48x,
 * 2.22x and 3.60x an 8.0 ms step: 0.16, 0.12, 0.15 and 0.16 a draft.
 */
export const CPU_ROW_COST = 0.15;

/**
 * A GPU's prompt lookup (engine-plan.ts): k chosen per draft by cost, at most
 * `maxDraft` (the fused verify path's length less one), and only up to
 * GPU_LOOKUP_MAX_CONTEXT tokens. A verify pass there waits for its tokens, where
 * plain steps are pipelined: its cost per draft is taken against a pipelined step.
 */
export function gpuLookupTuning(maxDraft: number): LookupTuning {
  return {
    ...DEFAULT_LOOKUP,
    policy: "cost",
    rowCost: GPU_ROW_COST,
    maxDraft: Math.max(1, maxDraft),
    initialDraft: 2,
    maxContext: GPU_LOOKUP_MAX_CONTEXT,
  };
}

/**
 * A GPU verify pass's cost per draft token, in pipelined decode steps. H100, full-size Phi-3
 * (bench/results/gpu-h100-2026-12-07d): passes of k = 1, 2, 3 drafts took 4.16, 5.06, 5.86 ms after 512
 * tokens and 5.90, 7.48, 8.86 ms after 4,000, against pipelined steps of ~3.4 and ~4.6 ms: 0.22-0.24 and
 * 0.28-0.31 a draft. With the parallel merge (gpu-h100-2026-12-07e) 0.30-0.34 after 4,000 and 0.23-0.36
 * after 16,000 (k = 1-3, steps ~6.6 ms pipelined there).
 */
export const GPU_ROW_COST = 0.3;

/**
 * Past this context the GPU decodes without lookups. A pass's extra cost per draft, relative to a step,
 * did not grow from 4,000 to 16,000 tokens once its attention's splits merged in parallel (one draft cost
 * 1.23x a one-token step after 4,000 and 1.03-1.08x after 16,000: gpu-h100-2026-12-07e; the serial merge's
 * 4,000-token passes had suggested ~2x a step by Claude Code's 13-20K). 32K covers Claude Code's sessions;
 * past 16,000 it is extrapolated.
 */
export const GPU_LOOKUP_MAX_CONTEXT = 32768;

/** Tokens a pass of k drafts yields when each is kept with probability a (until the first rejection), plus the model's own. */
export function expectedTokens(k: number, a: number): number {
  return a >= 1 ? k + 1 : (1 - a ** (k + 1)) / (1 - a);
}

/**
 * The draft length in [1, max] with the most expected tokens per unit of cost
 * (a pass of k drafts costs 1 + rowCost * k steps; a plain step gives 1 token
 * for 1), or 0 when no length beats plain decoding by `margin`.
 */
export function draftLengthByCost(a: number, max: number, rowCost: number, margin = 0.03): number {
  let best = 0;
  let bestGain = 1 + margin;
  for (let k = 1; k <= max; k++) {
    const gain = expectedTokens(k, a) / (1 + rowCost * k);
    if (gain > bestGain) {
      best = k;
      bestGain = gain;
    }
  }
  return best;
}

/**
 * Per-token acceptance of lookup drafts, kept per matched n-gram length
 * (longer matches copy more faithfully): decayed counts of kept tokens and
 * of rejections, a prior of 2 kept to 1 rejected. The estimate is the
 * geometric model's maximum a posteriori: kept / (kept + rejections).
 */
class AcceptanceByNgram {
  readonly #kept: number[];
  readonly #lost: number[];
  static readonly decay = 0.8;

  constructor(maxNgram: number) {
    this.#kept = new Array(maxNgram + 1).fill(0);
    this.#lost = new Array(maxNgram + 1).fill(0);
  }

  estimate(n: number): number {
    const kept = (this.#kept[n] ?? 0) + 2;
    return kept / (kept + (this.#lost[n] ?? 0) + 1);
  }

  record(n: number, drafted: number, accepted: number): void {
    const d = AcceptanceByNgram.decay;
    this.#kept[n] = d * (this.#kept[n] ?? 0) + accepted;
    this.#lost[n] = d * (this.#lost[n] ?? 0) + (accepted < drafted ? 1 : 0);
  }

  /** A declined lookup forgets some rejections, so that an estimate shut off by a bad patch recovers. */
  forgive(n: number): void {
    this.#lost[n] = 0.7 * (this.#lost[n] ?? 0);
  }
}

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
  readonly #acceptance: AcceptanceByNgram;

  constructor(tuning: LookupTuning = DEFAULT_LOOKUP) {
    this.tuning = tuning;
    this.#acceptance = new AcceptanceByNgram(tuning.maxNgram);
    this.#draft = tuning.initialDraft;
    this.#minNgram = Math.max(tuning.minNgramFloor, Math.min(2, tuning.minNgramCeiling));
  }

  /** The draft length the next proposal aims for. */
  get draftLength(): number {
    return this.tuning.policy === "cost" ? this.tuning.maxDraft : this.#draft;
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
    if (this.tuning.policy === "cost") return this.#proposeByCost(tokens, limit);
    const k = Math.min(this.#draft, limit);
    if (k > 0) {
      for (let n = Math.min(this.tuning.maxNgram, tokens.length - 1); n >= this.#minNgram; n--) {
        const draft = continuation(tokens, n, k);
        if (draft.length === 0) continue;
        const rowCost = this.tuning.rowCost ?? 0.3;
        if (
          this.tuning.policy === "gated" &&
          draftLengthByCost(this.#acceptance.estimate(n), draft.length, rowCost) === 0
        ) {
          this.#acceptance.forgive(n);
          break;
        }
        this.#lastNgram = n;
        return { draft, ngram: n };
      }
    }
    this.#miss();
    return null;
  }

  /** The longest match first; its length is what its n-gram's acceptance estimate says pays best. */
  #proposeByCost(tokens: readonly number[], limit: number): Proposal | null {
    const t = this.tuning;
    const cap = Math.min(limit, t.maxDraft);
    for (let n = Math.min(t.maxNgram, tokens.length - 1); cap > 0 && n >= t.minNgramFloor; n--) {
      const found = continuation(tokens, n, cap);
      if (found.length === 0) continue;
      const k = draftLengthByCost(this.#acceptance.estimate(n), found.length, t.rowCost ?? 0.3);
      // A shorter match copies less faithfully than this one: no draft at all.
      if (k === 0) {
        this.#acceptance.forgive(n);
        break;
      }
      this.#lastNgram = n;
      this.#draft = k;
      return { draft: found.slice(0, k), ngram: n };
    }
    this.#miss();
    return null;
  }

  /** Adapts to a verified draft: `accepted` of its `drafted` tokens were kept. */
  record(drafted: number, accepted: number): void {
    const t = this.tuning;
    this.#acceptance.record(this.#lastNgram, drafted, accepted);
    if (t.policy === "cost") {
      if (accepted === 0) this.#miss();
      else this.#misses = 0;
      return;
    }
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
 * acceptGreedy, except that a position whose top two scores lie within `margin` of each other (gaps[i]) is not
 * decided by the pass: the draft is kept up to the first such position t (at most the one acceptGreedy stops at),
 * and `tiedAt` = t asks the caller for that position's token from a one-token step. A verify pass sums in
 * another order than the steps it stands for (on a GPU its attention kernel, kernels-attention-verify.ts), which
 * can swap two near-equal scores; greedy speculation must still give plain decoding's tokens.
 */
export function acceptGreedyUnlessTied(
  draft: readonly number[],
  targets: ArrayLike<number>,
  gaps: ArrayLike<number>,
  margin: number,
): { tokens: number[]; accepted: number; tiedAt: number | null } {
  const plain = acceptGreedy(draft, targets);
  for (let t = 0; t <= plain.accepted; t++) {
    if ((gaps[t] as number) < margin) return { tokens: draft.slice(0, t), accepted: t, tiedAt: t };
  }
  return { ...plain, tiedAt: null };
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
    tieSteps: 0,
  };
}
