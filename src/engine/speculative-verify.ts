// The verify pass of speculative decoding for one row: [last token, draft...]
// through the row's KV cache in one forward pass (logits at every position),
// the acceptance rule of speculation.ts, then the cache rolled back to the
// accepted tokens. Called by the scheduler for a lone decoding row. A draft
// is deterministic (prompt lookup, a greedy draft model) or drawn from a known
// distribution q (a sampling draft model: draft-model.ts).
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { LanguageModel } from "../models/types";
import type { KVCache } from "./kv-cache";
import type { StepValues } from "./protocol";
import type { SequenceSampler } from "./sampling";
import { acceptGreedy, acceptGreedyUnlessTied, acceptSampled } from "./speculation";

export interface Verified {
  /** The tokens to emit: the accepted draft tokens, then one of the model's own. */
  values: StepValues[];
  accepted: number;
  /** A near tie left a position to a one-token step (acceptGreedyUnlessTied). */
  tied: boolean;
}

const NEG_INF = Number.NEGATIVE_INFINITY;

/** Tokens to emit, drafts accepted; tiedAt: a position left to a one-token step (acceptGreedyUnlessTied). */
type Decision = { tokens: number[]; accepted: number; tiedAt?: number | null };

/**
 * Greedy verification leaves a position to a one-token step when its top two scores are this close
 * (acceptGreedyUnlessTied): a verify pass's kernels sum in another order than a step's (attention, the CPU's
 * prefill tile), so its scores differ by rounding. CPU, SmolLM2 on real text (bench/gpu/verify-drift.ts): at most
 * 0.005 of a logit; 0.01 sends 0-0.8% of positions to a step. GPU: 0.25 is a first guess, not yet measured
 * (verify-drift.ts there; `bench spec`'s tie steps and identical column); a story has 18% of its positions within
 * it, an edit none. PENSIEVE_SPEC_TIE_MARGIN overrides; setTieMargin for tests.
 */
const GPU_TIE_MARGIN = 0.25;
const CPU_TIE_MARGIN = 0.01;
let tieMarginSet: number | null = null;

export function setTieMargin(margin: number | null): void {
  tieMarginSet = margin;
}

function tieMargin(): number {
  if (tieMarginSet !== null) return tieMarginSet;
  const env = Number(process.env.PENSIEVE_SPEC_TIE_MARGIN);
  if (process.env.PENSIEVE_SPEC_TIE_MARGIN && Number.isFinite(env) && env >= 0) return env;
  return mx.getDevice() === "gpu" ? GPU_TIE_MARGIN : CPU_TIE_MARGIN;
}

/** Each row's best score less its second best: float32 [rows]. */
function topTwoGap(scores: MxArray, best: MxArray): MxArray {
  const first = mx.max(scores, -1);
  const isBest = mx.equal(mx.reshape(mx.arange(0, scores.dim(-1)), [1, -1]), mx.reshape(best, [-1, 1]));
  return mx.subtract(first, mx.max(mx.where(isBest, NEG_INF, scores), -1));
}

/**
 * Verifies `draft` after `last` (the row's newest token, not yet in `cache`).
 * The sampler must be unpenalized (its state would follow every token).
 * Afterwards `cache` holds `last` and the accepted draft tokens; the last
 * emitted token is the next input, as after a normal step.
 * `draftDistribution` (float32 [k, V]): the q each draft token was drawn
 * from; d_i is then kept with probability min(1, p(d_i)/q(d_i)), and at a
 * rejection the token is drawn from max(0, p - q) (the standard rule). Null:
 * a deterministic draft (q one-hot).
 */
export function verifyDraft(
  model: LanguageModel,
  cache: KVCache,
  sampler: SequenceSampler,
  last: number,
  draft: readonly number[],
  draftDistribution: MxArray | null = null,
): Verified {
  const k = draft.length;
  const start = cache.offset;
  const p = sampler.params;
  const held: { logprobs: MxArray | null } = { logprobs: null };
  cache.growFor(k + 1);
  const decision: Decision = mx.tidy((): Decision => {
    const logits = model.forward(mx.int32([last, ...draft], [1, k + 1]), cache, { logits: "all" });
    const flat = mx.reshape(logits, [k + 1, -1]);
    if (p.logprobs || p.topLogprobs > 0) held.logprobs = mx.keep(mx.subtract(flat, mx.logsumexp(flat, -1, true)));
    if (p.temperature <= 0) {
      const scores = sampler.biased(flat);
      const targets = mx.astype(mx.argmax(scores, -1), mx.Dtype.int32);
      const margin = tieMargin();
      if (margin <= 0) return acceptGreedy(draft, targets.read() as Int32Array);
      const gaps = topTwoGap(scores, targets);
      mx.evaluate(targets, gaps);
      return acceptGreedyUnlessTied(draft, targets.read() as Int32Array, gaps.read() as Float32Array, margin);
    }
    const scaled = sampler.filtered(flat);
    const head = mx.sliceAxis(scaled, 0, 0, k);
    const ids = mx.int32(draft, [k, 1]);
    const probs = mx.softmax(head, -1);
    const pick = (x: MxArray) => mx.reshape(mx.takeAlongAxis(x, ids, 1), [k]);
    const [uKey, rKey, bKey] = mx.randomSplit(sampler.nextKey(), 3) as [MxArray, MxArray, MxArray];
    const uniform = mx.randomUniform([k], mx.Dtype.float32, uKey);
    let draftProbs: MxArray;
    let residualLogits: MxArray;
    if (draftDistribution) {
      // Keep with probability p(d)/q(d) (uniform < ratio); else draw from max(0, p - q).
      draftProbs = mx.divide(pick(probs), pick(draftDistribution));
      residualLogits = mx.log(mx.maximum(mx.subtract(probs, draftDistribution), 0));
    } else {
      draftProbs = pick(probs);
      const isDraft = mx.equal(mx.reshape(mx.arange(0, sampler.vocabSize), [1, -1]), ids);
      residualLogits = mx.where(isDraft, NEG_INF, head);
    }
    const residual = mx.astype(mx.categorical(residualLogits, -1, rKey), mx.Dtype.int32);
    const bonus = mx.astype(mx.categorical(mx.sliceAxis(scaled, 0, k, k + 1), -1, bKey), mx.Dtype.int32);
    mx.evaluate(draftProbs, uniform, residual, bonus);
    return acceptSampled(
      draft,
      draftProbs.read() as Float32Array,
      uniform.read() as Float32Array,
      residual.read() as Int32Array,
      bonus.item(),
    );
  });
  // A near tie at position t: the step that position stands for decides it, after the inputs before it.
  const t = decision.tiedAt ?? null;
  if (t !== null) {
    cache.truncate(start + t);
    const input = t === 0 ? last : (draft[t - 1] as number);
    mx.tidy(() => {
      const step = mx.reshape(model.forward(mx.int32([input], [1, 1]), cache, { logits: "last" }), [1, -1]);
      decision.tokens.push(mx.astype(mx.argmax(sampler.biased(step), -1), mx.Dtype.int32).item() as number);
      if (held.logprobs) {
        const passRows = mx.sliceAxis(held.logprobs, 0, 0, t);
        const stepRow = mx.subtract(step, mx.logsumexp(step, -1, true));
        const joined = mx.keep(mx.concatenate([passRows, stepRow], 0));
        held.logprobs.dispose();
        held.logprobs = joined;
      }
    });
  }
  cache.truncate(start + 1 + decision.accepted);
  const values: StepValues[] = decision.tokens.map((token) => ({ token, logprob: null, top: null }));
  const lp = held.logprobs;
  if (lp) {
    mx.tidy(() => {
      const m = values.length;
      const rows = mx.sliceAxis(lp, 0, 0, m);
      const chosen = mx.takeAlongAxis(rows, mx.int32(decision.tokens, [m, 1]), 1).read() as Float32Array;
      values.forEach((v, i) => {
        v.logprob = chosen[i] as number;
      });
      const topK = Math.min(p.topLogprobs, sampler.vocabSize);
      if (topK > 0) {
        const order = mx.sliceAxis(mx.argsort(mx.neg(rows), -1), 1, 0, topK);
        const ids = mx.astype(order, mx.Dtype.int32).read() as Int32Array;
        const lps = mx.takeAlongAxis(rows, order, 1).read() as Float32Array;
        values.forEach((v, i) => {
          v.top = Array.from(ids.subarray(i * topK, (i + 1) * topK), (id, j) => ({
            token: id,
            logprob: lps[i * topK + j] as number,
          }));
        });
      }
    });
    lp.dispose();
  }
  return { values, accepted: decision.accepted, tied: t !== null };
}
