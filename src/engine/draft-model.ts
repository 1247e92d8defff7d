// Draft-model speculation: a second, small model of the same tokenizer drafts
// k tokens for a lone decoding row, which the target then verifies in one
// pass (speculative-verify.ts). The draft model runs on the engine's MLX
// thread with its own KV cache per sequence.
//
// The draft cache follows the sequence lazily: before each proposal it is cut
// back to the longest prefix it shares with the sequence's tokens (rejected
// draft tokens go, with no copy: KVCache.truncate) and the tokens it lacks
// are fed in one chunk (the prompt on the first proposal; after a prompt-lookup
// pass, the tokens that pass accepted). Drafting itself is k one-token steps
// built as one lazy graph (each step's token feeds the next without a sync)
// and read once.
//
// Greedy rows draft greedily (argmax, logit bias included). Sampled rows draw
// each draft token from q = the row's own sampling filter over the draft's
// logits; the verifier then keeps d with probability min(1, p(d)/q(d)) and
// otherwise draws from max(0, p - q), which keeps the target distribution.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { LanguageModel } from "../models/types";
import type { KVCache } from "./kv-cache";
import { cacheFor } from "./one-sequence";
import type { SequenceSampler } from "./sampling";

/** The draft length k adapts to acceptance within these bounds. */
export interface DraftTuning {
  minDraft: number;
  maxDraft: number;
  initialDraft: number;
  /** Longest pause (steps) after consecutive drafts with nothing accepted. */
  maxPause: number;
  /** Steps without drafting once drafting is measured slower per token than plain steps (then it probes again). */
  slowPause: number;
}

export const DEFAULT_DRAFT: DraftTuning = { minDraft: 1, maxDraft: 8, initialDraft: 4, maxPause: 16, slowPause: 64 };

/** Weight of the newest sample in the running time estimates. */
const EWMA = 0.3;
/** Draft passes between plain steps taken to re-measure the plain step's time (and before any: up to 2). */
const PROBE_EVERY = 32;

/** Tokens fed to the draft model per forward pass while it catches up (prompt, lookup-accepted text). */
const CATCH_UP_CHUNK = 512;

/** What the caller needs of a tokenizer to compare two of them (src/text/tokenizer.ts's Tokenizer). */
export interface VocabularyView {
  readonly vocabSize: number;
  idToToken(id: number): string | undefined;
  readonly eosIds: ReadonlySet<number>;
}

/**
 * Why a draft model cannot draft for a target (null: it can): the token ids
 * must mean the same text in both, or the draft's proposals are nonsense to
 * the target (still exact, but never accepted).
 */
export function draftMismatch(
  target: { vocabSize: number; tokenizer: VocabularyView },
  draft: { vocabSize: number; tokenizer: VocabularyView },
): string | null {
  const a = target.tokenizer;
  const b = draft.tokenizer;
  if (a.vocabSize !== b.vocabSize) {
    return `its tokenizer has ${b.vocabSize} tokens, the model's has ${a.vocabSize}`;
  }
  for (let id = 0; id < a.vocabSize; id++) {
    const x = a.idToToken(id);
    const y = b.idToToken(id);
    if (x !== y) return `token ${id} is ${JSON.stringify(y)} in its tokenizer, ${JSON.stringify(x)} in the model's`;
  }
  // The embedding may have padding rows past the tokenizer; drafts only use real ids, but the
  // draft's logits must cover every id the target may emit.
  if (draft.vocabSize < a.vocabSize) {
    return `its output covers ${draft.vocabSize} token ids, fewer than the tokenizer's ${a.vocabSize}`;
  }
  return null;
}

export interface DraftProposal {
  draft: number[];
  /**
   * Sampled rows: q, the draft's sampling distribution at each draft position
   * (float32 [k, V_target]), kept; the caller disposes it. Greedy rows: null
   * (a deterministic draft).
   */
  probs: MxArray | null;
}

/** One sequence's draft model state: its KV cache and the tokens in it. */
export class DraftSession {
  readonly model: LanguageModel;
  readonly tuning: DraftTuning;
  #cache: KVCache;
  /** The tokens whose keys and values the cache holds, in order. */
  #fed: number[] = [];
  #draft: number;
  #pause = 0;
  #misses = 0;
  /** Running estimates (ms per token) of plain decode steps and of draft passes (proposal + verify). */
  #plainMs: number | null = null;
  #draftMs: number | null = null;
  #sinceProbe = 0;
  #probes = 0;

  constructor(model: LanguageModel, tuning: DraftTuning = DEFAULT_DRAFT) {
    this.model = model;
    this.tuning = tuning;
    this.#cache = cacheFor(model);
    this.#draft = tuning.initialDraft;
  }

  /** The draft length the next proposal aims for. */
  get draftLength(): number {
    return this.#draft;
  }

  /**
   * Whether this step should draft (false while paused after drafts with
   * nothing accepted, so that a draft model that does not fit the text costs
   * little; counts the pause down).
   */
  ready(): boolean {
    if (this.#pause > 0) {
      this.#pause--;
      return false;
    }
    // A plain step now and then (the first ones before drafting at all) measures what drafting must beat.
    const probe = this.#plainMs === null ? this.#probes < 2 : this.#sinceProbe >= PROBE_EVERY;
    if (probe) {
      this.#probes++;
      this.#sinceProbe = 0;
      return false;
    }
    this.#sinceProbe++;
    return true;
  }

  /** A plain decode step of this sequence took `ms` (one token). */
  observePlain(ms: number): void {
    this.#plainMs = this.#plainMs === null ? ms : this.#plainMs + EWMA * (ms - this.#plainMs);
  }

  /**
   * A draft pass (proposal and verification) took `ms` for `tokens` emitted.
   * When drafting is slower per token than plain steps (a draft model not
   * cheap enough against its target, or text it does not predict), drafting
   * stops for `slowPause` steps, then probes again.
   */
  observeDraft(ms: number, tokens: number): void {
    const perToken = ms / Math.max(1, tokens);
    this.#draftMs = this.#draftMs === null ? perToken : this.#draftMs + EWMA * (perToken - this.#draftMs);
    if (this.#plainMs !== null && this.#draftMs > this.#plainMs) {
      this.#pause = Math.max(this.#pause, this.tuning.slowPause);
      this.#draftMs = null; // the next probe starts afresh
    }
  }

  /** Tokens in the draft cache (tests). */
  get cachedTokens(): number {
    return this.#cache.offset;
  }

  /**
   * Drafts at most min(k, limit) tokens after `tokens` (the sequence so far;
   * its last token is the next input). `targetVocab` is the target's logits
   * width (q is padded to it when the draft's head is narrower).
   */
  propose(tokens: readonly number[], limit: number, sampler: SequenceSampler, targetVocab: number): DraftProposal {
    const k = Math.min(this.#draft, limit);
    if (k <= 0 || tokens.length === 0) return { draft: [], probs: null };
    this.#sync(tokens);
    const greedy = sampler.params.temperature <= 0;
    const held: { probs: MxArray | null } = { probs: null };
    const draft = mx.tidy(() => {
      let input = mx.int32([tokens[tokens.length - 1] as number], [1, 1]);
      const picks: MxArray[] = [];
      const dists: MxArray[] = [];
      for (let i = 0; i < k; i++) {
        // The last draft token is not fed: it is the verifier's to judge, and the next sync feeds it if kept.
        if (i > 0) input = mx.reshape(picks[i - 1] as MxArray, [1, 1]);
        let logits = mx.reshape(this.model.forward(input, this.#cache, { logits: "last" }), [1, -1]);
        logits = widen(logits, targetVocab);
        if (greedy) {
          picks.push(mx.astype(mx.argmax(sampler.biased(logits), -1), mx.Dtype.int32));
        } else {
          const scaled = sampler.filtered(logits);
          picks.push(mx.astype(mx.categorical(scaled, -1, sampler.nextKey()), mx.Dtype.int32));
          dists.push(mx.softmax(scaled, -1));
        }
      }
      const ids = mx.concatenate(picks, 0);
      if (!greedy) {
        held.probs = mx.keep(mx.concatenate(dists, 0));
        mx.evaluate(ids, held.probs);
      }
      return Array.from(ids.read() as Int32Array);
    });
    // The cache now holds the last token and draft[0..k-1) after the synced tokens.
    this.#fed.push(tokens[tokens.length - 1] as number, ...draft.slice(0, k - 1));
    return { draft, probs: held.probs };
  }

  /** Adapts k to a verified draft: `accepted` of its `drafted` tokens were kept. */
  record(drafted: number, accepted: number): void {
    const t = this.tuning;
    if (accepted === drafted) this.#draft = Math.min(t.maxDraft, this.#draft + 1);
    else if (2 * accepted < drafted) this.#draft = Math.max(t.minDraft, this.#draft - 1);
    if (accepted > 0) {
      this.#misses = 0;
      return;
    }
    this.#pause = Math.min(t.maxPause, 2 ** this.#misses);
    this.#misses++;
  }

  /** Cuts the cache back to its common prefix with tokens[0, L-1) and feeds the rest of them. */
  #sync(tokens: readonly number[]): void {
    const want = tokens.length - 1;
    const fed = this.#fed;
    let common = 0;
    const limit = Math.min(fed.length, want);
    while (common < limit && fed[common] === tokens[common]) common++;
    if (common < fed.length) {
      this.#cache.truncate(common);
      fed.length = common;
    }
    for (let start = common; start < want; start += CATCH_UP_CHUNK) {
      const part = tokens.slice(start, Math.min(want, start + CATCH_UP_CHUNK));
      mx.tidy(() => {
        this.model.forward(mx.int32(part, [1, part.length]), this.#cache, { logits: "none" });
        mx.evaluate(...this.#cache.arrays());
      });
      fed.push(...part);
    }
  }

  dispose(): void {
    this.#cache.dispose();
    this.#fed = [];
  }
}

/** Logits [1, V_draft] padded with -inf to the target's width (a draft head narrower than the target's). */
function widen(logits: MxArray, width: number): MxArray {
  const v = logits.dim(1);
  if (v === width) return logits;
  if (v > width) return mx.sliceAxis(logits, 1, 0, width);
  return mx.concatenate([logits, mx.full([1, width - v], Number.NEGATIVE_INFINITY)], 1);
}
