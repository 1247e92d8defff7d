// Prompt-lookup speculation as plain data: the n-gram lookup, the adaptation
// of draft and n-gram lengths, and the greedy and sampled acceptance rules.
import { describe, expect, test } from "bun:test";
import {
  acceptGreedy,
  acceptGreedyUnlessTied,
  acceptSampled,
  continuation,
  DEFAULT_LOOKUP,
  draftLengthByCost,
  expectedTokens,
  PromptLookup,
} from "../../src/engine/speculation";

describe("continuation", () => {
  test("follows the most recent earlier occurrence of the last n tokens", () => {
    const tokens = [1, 2, 3, 9, 1, 2, 3, 8, 7, 1, 2, 3];
    expect(continuation(tokens, 3, 2)).toEqual([8, 7]);
    expect(continuation(tokens, 3, 10)).toEqual([8, 7, 1, 2, 3]);
    expect(continuation(tokens, 1, 3)).toEqual([8, 7, 1]);
  });

  test("nothing without an earlier occurrence, or with nothing after it", () => {
    expect(continuation([1, 2, 3, 4], 2, 3)).toEqual([]);
    expect(continuation([5], 1, 3)).toEqual([]);
    expect(continuation([5, 5], 1, 3)).toEqual([5]);
    expect(continuation([1, 2, 1, 2], 0, 3)).toEqual([]);
  });
});

describe("PromptLookup", () => {
  test("prefers the longest n-gram and caps the draft at the limit", () => {
    const lookup = new PromptLookup();
    // The 1-gram [3] last occurs at 5 (→ 6), the 3-gram [1, 2, 3] at 0 (→ 4).
    const tokens = [1, 2, 3, 4, 4, 3, 6, 1, 2, 3];
    expect(lookup.propose(tokens, 2)).toEqual({ draft: [4, 4], ngram: 3 });
  });

  test("draft length grows with full acceptance and shrinks with rejections (add / step)", () => {
    const lookup = new PromptLookup({ ...DEFAULT_LOOKUP, growth: "add", shrink: "step" });
    const k0 = lookup.draftLength;
    lookup.record(k0, k0);
    expect(lookup.draftLength).toBe(k0 + 2);
    lookup.record(k0 + 2, 1);
    expect(lookup.draftLength).toBe(k0 + 1);
    for (let i = 0; i < 40; i++) lookup.record(12, 12);
    expect(lookup.draftLength).toBe(DEFAULT_LOOKUP.maxDraft);
  });

  test("tuning: k doubles after full acceptance and shrinks to the accepted length + 1", () => {
    const lookup = new PromptLookup(); // the default: double / accepted
    const k0 = lookup.draftLength;
    lookup.record(k0, k0);
    expect(lookup.draftLength).toBe(Math.min(DEFAULT_LOOKUP.maxDraft, 2 * k0));
    lookup.record(lookup.draftLength, 2);
    expect(lookup.draftLength).toBe(3);
    // A rejection never lengthens k.
    lookup.record(3, 2);
    expect(lookup.draftLength).toBe(2);
  });

  test("a draft with nothing accepted raises the shortest n-gram and pauses lookups, doubling", () => {
    const lookup = new PromptLookup();
    const tokens = [7, 1, 2, 7, 1, 2, 7];
    const first = lookup.propose(tokens, 4);
    expect(first?.ngram).toBeGreaterThanOrEqual(2);
    lookup.record(first?.draft.length ?? 0, 0);
    expect(lookup.minNgram).toBe(Math.min(DEFAULT_LOOKUP.minNgramCeiling, (first?.ngram ?? 0) + 1));
    // Paused one step, then ready; the next miss pauses two.
    expect(lookup.ready()).toBe(false);
    expect(lookup.ready()).toBe(true);
    expect(lookup.propose([1, 2, 3], 4)).toBeNull();
    expect([lookup.ready(), lookup.ready(), lookup.ready()]).toEqual([false, false, true]);
    // An accepted draft ends the run of misses.
    lookup.record(4, 3);
    expect(lookup.propose([1, 2, 3], 4)).toBeNull();
    expect([lookup.ready(), lookup.ready()]).toEqual([false, true]);
  });
});

describe("cost model (verify pass of k drafts = 1 + rowCost * k steps)", () => {
  test("expected tokens per pass: geometric acceptance until the first rejection, plus the model's own", () => {
    expect(expectedTokens(3, 1)).toBe(4);
    expect(expectedTokens(1, 0.5)).toBeCloseTo(1.5, 12);
    expect(expectedTokens(2, 0.5)).toBeCloseTo(1.75, 12);
  });

  test("the best draft length grows with acceptance and shrinks with the row cost; none below break-even", () => {
    // 90 %, rows at 0.3 of a step: 4.69 / 2.5 at k = 5 beats its neighbours.
    expect(draftLengthByCost(0.9, 16, 0.3)).toBe(5);
    expect(draftLengthByCost(0.99, 16, 0.05)).toBe(16);
    expect(draftLengthByCost(0.9, 3, 0.3)).toBe(3); // capped by what the lookup found
    // k = 1 pays only when a > rowCost (plus the margin).
    expect(draftLengthByCost(0.3, 16, 0.3)).toBe(0);
    expect(draftLengthByCost(0.5, 16, 0.3)).toBeGreaterThan(0);
  });

  test("gated: an n-gram length whose drafts keep failing stops drafting, then recovers", () => {
    const lookup = new PromptLookup({ ...DEFAULT_LOOKUP, policy: "gated" });
    const tokens = [7, 1, 2, 7, 1, 2, 7, 1, 2, 7];
    const first = lookup.propose(tokens, 4);
    expect(first).not.toBeNull();
    // Rejected at once, again and again: the estimate for that n falls under the break-even.
    for (let i = 0; i < 6; i++) lookup.record(first?.draft.length ?? 0, 0);
    while (!lookup.ready());
    expect(lookup.propose(tokens, 4)).toBeNull();
    // Each decline forgives some rejections: drafting resumes after a few.
    let resumed = false;
    for (let i = 0; i < 40 && !resumed; i++) {
      if (!lookup.ready()) continue;
      resumed = lookup.propose(tokens, 4) !== null;
    }
    expect(resumed).toBe(true);
  });

  test("cost: the draft is as long as the n-gram's acceptance estimate makes worth it", () => {
    const lookup = new PromptLookup({ ...DEFAULT_LOOKUP, policy: "cost", rowCost: 0.3 });
    const tokens = [...Array.from({ length: 40 }, (_, i) => i), 100, ...Array.from({ length: 5 }, (_, i) => 35 + i)];
    // [35..39] matched (n 5): the prior (2 kept : 1 rejected) gives a short draft.
    const first = lookup.propose(tokens, 16);
    expect(first?.ngram).toBe(5);
    const k0 = first?.draft.length ?? 0;
    expect(k0).toBeGreaterThan(0);
    for (let i = 0; i < 10; i++) lookup.record(k0, k0);
    // Nothing rejected: longer drafts pay.
    expect(lookup.propose(tokens, 16)?.draft.length).toBeGreaterThan(k0);
  });
});

describe("acceptance", () => {
  test("greedy keeps the agreeing prefix plus the model's own token", () => {
    expect(acceptGreedy([5, 6, 7], [5, 6, 7, 8])).toEqual({ tokens: [5, 6, 7, 8], accepted: 3 });
    expect(acceptGreedy([5, 6, 7], [5, 9, 7, 8])).toEqual({ tokens: [5, 9], accepted: 1 });
    expect(acceptGreedy([5, 6, 7], [4, 6, 7, 8])).toEqual({ tokens: [4], accepted: 0 });
  });

  test("greedy unless tied: a near tie up to where greedy stops ends the pass there, for a one-token step", () => {
    const gaps = [1, 1, 1, 1];
    expect(acceptGreedyUnlessTied([5, 6, 7], [5, 6, 7, 8], gaps, 0.5)).toEqual({
      tokens: [5, 6, 7, 8],
      accepted: 3,
      tiedAt: null,
    });
    expect(acceptGreedyUnlessTied([5, 6, 7], [5, 6, 7, 8], [1, 0.1, 1, 1], 0.5)).toEqual({
      tokens: [5],
      accepted: 1,
      tiedAt: 1,
    });
    // The tie at 0 comes first: nothing kept.
    expect(acceptGreedyUnlessTied([5, 6, 7], [5, 9, 7, 8], [0.2, 1, 0.1, 1], 0.5)).toEqual({
      tokens: [],
      accepted: 0,
      tiedAt: 0,
    });
    // Past where greedy stops, a tie does not matter.
    expect(acceptGreedyUnlessTied([5, 6, 7], [5, 9, 7, 8], [1, 1, 0.1, 0.1], 0.5)).toEqual({
      tokens: [5, 9],
      accepted: 1,
      tiedAt: null,
    });
  });

  test("sampled keeps a draft token when the uniform falls under its probability", () => {
    const draft = [5, 6, 7];
    const residual = [50, 60, 70];
    expect(acceptSampled(draft, [0.9, 0.5, 0.2], [0.1, 0.4, 0.1], residual, 80)).toEqual({
      tokens: [5, 6, 7, 80],
      accepted: 3,
    });
    expect(acceptSampled(draft, [0.9, 0.5, 0.2], [0.1, 0.6, 0.1], residual, 80)).toEqual({
      tokens: [5, 60],
      accepted: 1,
    });
    expect(acceptSampled(draft, [0, 1, 1], [0, 0, 0], residual, 80)).toEqual({ tokens: [50], accepted: 0 });
  });

  test("the sampled rule keeps the target distribution (exact enumeration over a 3-token vocabulary)", () => {
    // Target p; the draft is token 0. Emitted: 0 with probability p0 (accepted), else
    // residual ∝ p without 0: (1 - p0) · p_j / (1 - p0) = p_j.
    const p = [0.5, 0.3, 0.2];
    const out = [0, 0, 0];
    const grid = 1000;
    for (let u = 0; u < grid; u++) {
      const uniform = (u + 0.5) / grid;
      for (const [j, pj] of [
        [1, p[1] as number],
        [2, p[2] as number],
      ] as const) {
        // The residual draw is j with probability p_j / (1 - p0) (independent of the uniform).
        const r = acceptSampled([0], [p[0] as number], [uniform], [j], 9);
        const weight = pj / (1 - (p[0] as number)) / grid;
        const token = r.tokens[0] as number;
        out[token] = (out[token] as number) + weight;
      }
    }
    expect(out[0]).toBeCloseTo(0.5, 6);
    expect(out[1]).toBeCloseTo(0.3, 6);
    expect(out[2]).toBeCloseTo(0.2, 6);
  });
});
