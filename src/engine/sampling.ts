// Token sampling for one sequence, entirely on the device so that the next
// decode step can be queued before this one's token is read (async_eval
// pipelining): penalties use on-device token counts, seeds use explicit keys.
//
// Order (as llama.cpp and vLLM): logit bias → repetition, presence and
// frequency penalties → constraint mask (constrained decoding) → greedy, or
// temperature → top-k → top-p → min-p → categorical draw. Log-probabilities
// are those of the model's own distribution (raw logits), as OpenAI reports them.

import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { SamplingParams, StepValues } from "./protocol";

/** One step's result for one sequence, as lazy arrays (read after evaluation). */
export interface SampledStep {
  /** int32 [1]: the chosen token. */
  token: MxArray;
  /** float32 [1]: its log-probability (when requested). */
  logprob: MxArray | null;
  /** int32 [k] and float32 [k]: the top-k alternatives (when requested). */
  topIds: MxArray | null;
  topLogprobs: MxArray | null;
}

const NEG_INF = Number.NEGATIVE_INFINITY;

export class SequenceSampler {
  readonly params: SamplingParams;
  readonly vocabSize: number;
  #key: MxArray | null = null;
  #bias: MxArray | null = null;
  /** 1 where a token occurred in the prompt or output (repetition penalty). */
  #seen: MxArray | null = null;
  /** Occurrences in the output (presence and frequency penalties). */
  #counts: MxArray | null = null;
  /** Tokens to rebuild #seen and #counts from at the next sample (resync). */
  #resync: { prompt: number[]; output: number[] } | null = null;

  constructor(params: SamplingParams, vocabSize: number, promptTokens: readonly number[] = []) {
    this.params = params;
    this.vocabSize = vocabSize;
    if (params.temperature > 0) {
      const seed = params.seed ?? Math.floor(Math.random() * 2 ** 52);
      this.#key = mx.keep(mx.randomKey(seed));
    }
    if (params.logitBias && Object.keys(params.logitBias).length > 0) {
      const bias = new Float32Array(vocabSize);
      for (const [id, b] of Object.entries(params.logitBias)) {
        const i = Number(id);
        if (Number.isInteger(i) && i >= 0 && i < vocabSize) bias[i] = b;
      }
      this.#bias = mx.keep(mx.float32(bias));
    }
    if (params.repetitionPenalty !== 1) {
      const seen = new Float32Array(vocabSize);
      for (const t of promptTokens) if (t >= 0 && t < vocabSize) seen[t] = 1;
      this.#seen = mx.keep(mx.float32(seen));
    }
    if (params.presencePenalty !== 0 || params.frequencyPenalty !== 0) {
      this.#counts = mx.keep(mx.zeros([vocabSize]));
    }
  }

  /**
   * Greedy with at most a fixed logit bias: a batch takes one argmax over all
   * such rows (biases stacked), instead of a graph per row.
   */
  get batchableGreedy(): boolean {
    return this.params.temperature <= 0 && !this.#seen && !this.#counts;
  }

  /** The logit bias over the vocabulary [V], or null. */
  get biasVector(): MxArray | null {
    return this.#bias;
  }

  /** Logits plus the logit bias, if any: what greedy decoding takes the argmax of. */
  biased(logits: MxArray): MxArray {
    return this.#bias ? mx.add(logits, this.#bias) : logits;
  }

  /**
   * Samples from logits [V] (float32) and records the token for the penalties.
   * `allowed` (bool [V]), when given, rules out every other token (constrained decoding).
   */
  sample(rawLogits: MxArray, allowed: MxArray | null = null): SampledStep {
    this.#applyResync();
    const p = this.params;
    const logits0 = mx.reshape(rawLogits, [this.vocabSize]);
    let logits = logits0;
    if (this.#bias) logits = mx.add(logits, this.#bias);
    if (this.#seen) {
      const seen = mx.greater(this.#seen, 0);
      const penalized = mx.where(
        mx.greater(logits, 0),
        mx.divide(logits, p.repetitionPenalty),
        mx.multiply(logits, p.repetitionPenalty),
      );
      logits = mx.where(seen, penalized, logits);
    }
    if (this.#counts) {
      const present = mx.astype(mx.greater(this.#counts, 0), mx.Dtype.float32);
      logits = mx.subtract(
        logits,
        mx.add(mx.multiply(present, p.presencePenalty), mx.multiply(this.#counts, p.frequencyPenalty)),
      );
    }
    // After the penalties, which could lift a ruled-out token back (repetition divides by a factor).
    if (allowed) logits = mx.where(allowed, logits, NEG_INF);
    // A disposed sampler (its sequence finished, e.g. cancelled while in a prefill group that still
    // samples every row) answers greedily: the scheduler ignores that token.
    const token = mx.reshape(p.temperature > 0 && this.#key ? this.#draw(logits) : mx.argmax(logits, -1), [1]);
    const tokenI32 = mx.astype(token, mx.Dtype.int32);
    this.#record(tokenI32);

    let logprob: MxArray | null = null;
    let topIds: MxArray | null = null;
    let topLogprobs: MxArray | null = null;
    if (p.logprobs || p.topLogprobs > 0) {
      const lp = mx.subtract(logits0, mx.logsumexp(logits0, -1, true));
      logprob = mx.take(lp, tokenI32, 0);
      if (p.topLogprobs > 0) {
        const k = Math.min(p.topLogprobs, this.vocabSize);
        topIds = mx.astype(mx.sliceAxis(mx.argsort(mx.neg(lp), -1), 0, 0, k), mx.Dtype.int32);
        topLogprobs = mx.take(lp, topIds, 0);
      }
    }
    return { token: tokenI32, logprob, topIds, topLogprobs };
  }

  /** Greedy or sampled, with logit bias at most: no penalties (whose state follows every token). */
  get penalized(): boolean {
    return this.#seen !== null || this.#counts !== null;
  }

  /**
   * The sampling distribution's logits for rows of logits [..., V]: bias,
   * then temperature, top-k, top-p and min-p (ruled-out tokens at -inf), as a
   * draw sees them. For an unpenalized sampler (speculative verification).
   */
  filtered(logits: MxArray): MxArray {
    const biased = this.#bias ? mx.add(logits, this.#bias) : logits;
    return this.#filter(biased);
  }

  /** A fresh random key (the sampler's own advances): speculative verification draws with it. */
  nextKey(): MxArray {
    const [next, sub] = mx.randomSplit(this.#key as MxArray, 2) as [MxArray, MxArray];
    this.#key?.dispose();
    this.#key = mx.keep(next);
    return sub;
  }

  #draw(logits: MxArray): MxArray {
    const scaled = this.#filter(logits);
    return mx.categorical(scaled, -1, this.nextKey());
  }

  /** Temperature, top-k, top-p, min-p over the last axis. */
  #filter(logits: MxArray): MxArray {
    const p = this.params;
    let scaled = mx.divide(logits, p.temperature);
    const V = this.vocabSize;
    if (p.topK > 0 && p.topK < V) {
      // The k-th largest value is the threshold; ties at it are kept.
      const kth = mx.min(mx.topk(scaled, p.topK, -1), -1, true);
      scaled = mx.where(mx.less(scaled, kth), NEG_INF, scaled);
    }
    if (p.topP < 1 || p.minP > 0) {
      const probs = mx.softmax(scaled, -1);
      if (p.topP < 1) {
        // Keep the smallest set of most likely tokens whose mass reaches top_p.
        const order = mx.argsort(mx.neg(probs), -1);
        const sorted = mx.takeAlongAxis(probs, order, -1);
        const before = mx.subtract(mx.cumsum(sorted, -1), sorted);
        const keepSorted = mx.less(before, p.topP);
        const keep = mx.putAlongAxis(mx.zeros(probs.shape, mx.Dtype.bool), order, keepSorted, -1);
        scaled = mx.where(keep, scaled, NEG_INF);
      }
      if (p.minP > 0) {
        const threshold = mx.multiply(mx.max(probs, -1, true), p.minP);
        scaled = mx.where(mx.less(probs, threshold), NEG_INF, scaled);
      }
    }
    return scaled;
  }

  /**
   * Rebuilds the penalties' state from the tokens kept (`prompt`, `output`):
   * after a failed step, whose token was recorded lazily but never kept (and
   * whose graph the lazy state would otherwise hold on to). The old state
   * goes now; the new one is built at the next sample (memory just ran out:
   * nothing is allocated here).
   */
  resync(prompt: readonly number[], output: readonly number[]): void {
    if (!this.#seen && !this.#counts) return;
    this.#seen?.dispose();
    this.#counts?.dispose();
    this.#resync = { prompt: [...prompt], output: [...output] };
  }

  #applyResync(): void {
    const pending = this.#resync;
    if (!pending) return;
    const valid = (t: number) => Number.isInteger(t) && t >= 0 && t < this.vocabSize;
    if (this.#seen) {
      const seen = new Float32Array(this.vocabSize);
      for (const t of [...pending.prompt, ...pending.output]) if (valid(t)) seen[t] = 1;
      this.#seen = mx.keep(mx.float32(seen));
    }
    if (this.#counts) {
      const counts = new Float32Array(this.vocabSize);
      for (const t of pending.output) if (valid(t)) counts[t] = (counts[t] ?? 0) + 1;
      this.#counts = mx.keep(mx.float32(counts));
    }
    this.#resync = null;
  }

  #record(token: MxArray): void {
    const one = mx.full([1], 1);
    if (this.#seen) {
      const updated = mx.keep(mx.putAlongAxis(this.#seen, token, one, 0));
      this.#seen.dispose();
      this.#seen = updated;
    }
    if (this.#counts) {
      const updated = mx.keep(mx.putAlongAxis(this.#counts, token, mx.add(mx.take(this.#counts, token, 0), 1), 0));
      this.#counts.dispose();
      this.#counts = updated;
    }
  }

  dispose(): void {
    for (const a of [this.#key, this.#bias, this.#seen, this.#counts]) a?.dispose();
    this.#key = this.#bias = this.#seen = this.#counts = null;
  }
}

/** Reads one step's values (evaluates if needed). */
export function readStep(step: SampledStep): StepValues {
  const token = step.token.item();
  const logprob = step.logprob ? step.logprob.item() : null;
  let top: StepValues["top"] = null;
  if (step.topIds && step.topLogprobs) {
    const ids = step.topIds.read();
    const lps = step.topLogprobs.read();
    top = Array.from(ids as Int32Array, (id, i) => ({ token: id, logprob: (lps as Float32Array)[i] as number }));
  }
  return { token, logprob, top };
}

/** The arrays of a step, for async evaluation. */
export function stepArrays(step: SampledStep): MxArray[] {
  return [step.token, step.logprob, step.topIds, step.topLogprobs].filter((a): a is MxArray => a !== null);
}
