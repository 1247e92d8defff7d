// The scheduler's policy (src/engine/scheduler-policy.ts) on plain data: no
// model, no MLX. The batch-exactness tests (scheduler.test.ts and friends)
// check that the scheduler still does the same with it on a real model.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { admit, type KvPoolShape, loneBytes } from "../../src/engine/kv-pool";
import { type EngineRequest, samplingParams } from "../../src/engine/protocol";
import {
  batchFootprint,
  checkSubmission,
  compaction,
  demand,
  dropCancelled,
  type GroupCandidate,
  type PolicyLimits,
  type PrefillJob,
  planAdmissions,
  planPreemption,
  planPrefillGroup,
  prefillChunkEnd,
  regimeCrossings,
  type SequenceState,
  type TokenConstraint,
} from "../../src/engine/scheduler-policy";
import { acceptToken, draftLength, maySpeculate, nextMask } from "../../src/engine/token-policy";

const limits: PolicyLimits = {
  maxConcurrent: 4,
  queueSize: 3,
  contextLength: 1000,
  prefillChunk: 64,
  interleavedPrefillChunk: 16,
  maxPrefillBatch: 4,
};
// 100 bytes a token, 4 layers, columns in steps of 16; 1000 tokens' worth.
const pool: KvPoolShape = { budgetBytes: 100 * 1000, bytesPerToken: 100, numLayers: 4, growthStep: 16 };

function req(id: string, promptLength: number, maxTokens: number, stops: number[] = [2]): EngineRequest {
  return {
    id,
    prompt: Array.from({ length: promptLength }, (_, i) => 10 + (i % 50)),
    maxTokens,
    sampling: samplingParams(),
    stopTokenIds: stops,
  };
}

function seq(id: string, promptLength: number, maxTokens: number, more: Partial<SequenceState> = {}): SequenceState {
  const request = req(id, promptLength, maxTokens);
  return {
    request,
    tokens: [...request.prompt],
    generated: 0,
    regime: 0,
    cancelled: false,
    finished: null,
    constraint: null,
    mask: null,
    ...more,
  };
}

describe("submission", () => {
  test("empty, too long, outside the vocabulary, queue full, over the KV budget: each its status and message", () => {
    const check = (r: EngineRequest, waiting = 0) => checkSubmission(r, limits, pool, 100, waiting);
    expect(check(req("a", 0, 4))).toMatchObject({ accept: false, status: 400, message: "the prompt is empty" });
    expect(check(req("a", 1000, 4))).toMatchObject({
      accept: false,
      status: 400,
      message: expect.stringContaining("prompt is too long: 1000 tokens > 999"),
    });
    expect(check({ ...req("a", 4, 4), prompt: [1, 2, 100] })).toMatchObject({
      accept: false,
      status: 400,
      message: "the prompt has token ids outside the vocabulary (0..99)",
    });
    expect(check(req("a", 4, 4), 3)).toEqual({
      accept: false,
      status: 429,
      message: "the server is busy: 3 requests are waiting",
      retryAfterSeconds: 1,
    });
    // 800 + 200 tokens: 1008 columns with the joining layer on top is over 1000 tokens' worth.
    const big = check(req("a", 800, 200));
    expect(big).toMatchObject({
      accept: false,
      status: 400,
      message: expect.stringContaining("needs 1000 tokens of KV cache"),
    });
  });

  test("max_tokens is bounded by what the context leaves", () => {
    expect(checkSubmission(req("a", 100, 5000), { ...limits }, { ...pool, budgetBytes: 1e9 }, 100, 0)).toEqual({
      accept: true,
      maxTokens: 900,
    });
    expect(checkSubmission(req("a", 100, 8), limits, pool, 100, 0)).toEqual({ accept: true, maxTokens: 8 });
  });
});

describe("cancellation and compaction", () => {
  test("cancelled sequences leave the queue and the line in place; all are returned in event order", () => {
    const w = [seq("w1", 4, 4), seq("w2", 4, 4, { cancelled: true })];
    const line: PrefillJob[] = [{ seq: seq("l1", 4, 4, { cancelled: true }), recompute: false }];
    const group = [seq("g1", 4, 4, { cancelled: true })];
    const rows = [seq("r1", 4, 4), seq("r2", 4, 4, { cancelled: true })];
    const out = dropCancelled(w, line, group, rows);
    expect(out.map((s) => s.request.id)).toEqual(["w2", "l1", "g1", "r2"]);
    expect(w.map((s) => s.request.id)).toEqual(["w1"]);
    expect(line).toEqual([]);
    // Group and batch rows stay until the group joins or the batch is compacted.
    expect(group).toHaveLength(1);
    expect(rows).toHaveLength(2);
  });

  test("the batch is compacted once a quarter of its rows are finished, or when forced", () => {
    const rows = Array.from({ length: 8 }, (_, i) => seq(`r${i}`, 4, 4));
    const [r3, r5] = [rows[3] as SequenceState, rows[5] as SequenceState];
    expect(compaction(rows, false)).toEqual([]);
    r3.finished = "stop";
    expect(compaction(rows, false)).toEqual([]);
    expect(compaction(rows, true)).toEqual([r3]);
    r5.finished = "cancelled";
    expect(compaction(rows, false)).toEqual([r3, r5]);
  });
});

describe("admission through the KV pool", () => {
  test("a sequence's demand, and the batch's footprint (finished rows hold memory but add nothing)", () => {
    const s = seq("a", 10, 20);
    s.tokens.push(1, 1, 1);
    s.generated = 3;
    expect(demand(s)).toEqual({ tokens: 13, remaining: 17 });
    const done = seq("b", 40, 100, { finished: "stop" });
    expect(batchFootprint([s, done], 48)).toEqual({ rows: 2, columns: 48, remaining: 17 });
    expect(batchFootprint([s], null)).toBeNull();
    expect(batchFootprint([], 48)).toBeNull();
  });

  test("FIFO: admission stops at the first request that does not fit, and at maxConcurrent", () => {
    // 300 + 100 tokens each: two fill the pool exactly, a third does not fit.
    const waiting = [seq("a", 300, 100), seq("b", 300, 100), seq("c", 10, 10), seq("d", 10, 10)];
    const limitsOut = planAdmissions(limits, pool, null, 0, [], waiting);
    expect(limitsOut).toHaveLength(2);
    // Each verdict's cache limit is the pool's own answer for that admission.
    const first = admit(pool, null, [], demand(waiting[0] as SequenceState));
    const second = admit(pool, null, [demand(waiting[0] as SequenceState)], demand(waiting[1] as SequenceState));
    expect(limitsOut).toEqual([
      (first as { cacheLimit: number }).cacheLimit,
      (second as { cacheLimit: number }).cacheLimit,
    ]);
    // "small" would fit beside "a", but does not overtake "big".
    const queue = [seq("a", 300, 100), seq("big", 600, 100), seq("small", 10, 10)];
    expect(planAdmissions(limits, pool, null, 0, [], queue)).toHaveLength(1);
    expect(
      planAdmissions(limits, pool, null, 0, [queue[0] as SequenceState], [queue[2] as SequenceState]),
    ).toHaveLength(1);
    // Rows in the batch (finished ones too) count against maxConcurrent.
    const small = [seq("x", 4, 4), seq("y", 4, 4), seq("z", 4, 4)];
    expect(planAdmissions(limits, pool, { rows: 3, columns: 16, remaining: 4 }, 3, [], small)).toHaveLength(1);
  });

  test("a lone request that passed submission is always admitted into an empty pool", () => {
    const s = seq("a", 700, 0);
    expect(loneBytes(pool, demand(s))).toBeLessThanOrEqual(pool.budgetBytes);
    expect(planAdmissions(limits, pool, null, 0, [], [s])).toEqual([pool.budgetBytes - loneBytes(pool, demand(s))]);
  });
});

describe("admission by current need, and preemption (growthAllowance)", () => {
  const growing = { ...limits, growthAllowance: 16 };

  test("the pool reserves a sequence's tokens and at most the allowance more", () => {
    const s = seq("a", 100, 500);
    expect(demand(s)).toEqual({ tokens: 100, remaining: 500 });
    expect(demand(s, 16)).toEqual({ tokens: 100, remaining: 16 });
    expect(demand(seq("b", 100, 4), 16)).toEqual({ tokens: 100, remaining: 4 });
    // 300 + 500 each: one at a time by whole max_tokens, two by current need.
    const waiting = [seq("a", 300, 500), seq("b", 300, 500)];
    expect(planAdmissions(limits, pool, null, 0, [], waiting)).toHaveLength(1);
    expect(planAdmissions(growing, pool, null, 0, [], waiting)).toHaveLength(2);
  });

  test("the newest rows give way when the next column does not fit; never the last live row", () => {
    const rows = [seq("a", 300, 500), seq("b", 300, 500), seq("c", 300, 500)];
    // 125 bytes per row and column (a layer's copy included): 3 rows × 208 columns fit 100,000 (column 200), × 304 do not.
    expect(planPreemption(growing, pool, rows, 200, [])).toEqual([]);
    expect(planPreemption(growing, pool, rows, 300, []).map((s) => s.request.id)).toEqual(["c"]);
    expect(planPreemption(growing, pool, rows, 500, []).map((s) => s.request.id)).toEqual(["c", "b"]);
    expect(planPreemption(growing, pool, rows, 900, []).map((s) => s.request.id)).toEqual(["c", "b"]);
    // A finished row is not preempted (it leaves with the compaction); a prefilling sequence's need counts.
    const done = [seq("a", 300, 500), seq("b", 300, 500, { finished: "stop" })];
    expect(planPreemption(growing, pool, done, 300, [])).toEqual([]);
    expect(planPreemption(growing, pool, rows.slice(0, 2), 300, [seq("p", 300, 500)]).map((s) => s.request.id)).toEqual(
      ["b"],
    );
    // Reserving whole max_tokens never preempts.
    expect(planPreemption(limits, pool, rows, 900, [])).toEqual([]);
  });
});

describe("prefill groups", () => {
  const c = (tokens: number, more: Partial<GroupCandidate> = {}): GroupCandidate => ({
    tokens,
    regime: 0,
    recompute: false,
    cachedPrefix: 0,
    ...more,
  });

  test("a prefix-cache hit, a recompute, or a prompt longer than a chunk goes alone and unpadded", () => {
    expect(planPrefillGroup(limits, c(40), 32, [c(40)])).toEqual({ alone: true, width: 40, done: 32 });
    expect(planPrefillGroup(limits, c(40, { recompute: true }), null, [c(40)])).toEqual({
      alone: true,
      width: 40,
      done: 0,
    });
    expect(planPrefillGroup(limits, c(65), null, [c(40)])).toEqual({ alone: true, width: 65, done: 0 });
  });

  test("following prompts join while padding stays under half of the real tokens", () => {
    // 30, 40, 20: width 40; 3 rows × 40 = 120 ≤ 1.5 × 90. A fourth of 10: 160 > 1.5 × 100.
    expect(planPrefillGroup(limits, c(30), null, [c(40), c(20), c(10)])).toEqual({
      alone: false,
      take: 3,
      width: 40,
      padding: [10, 0, 20],
    });
  });

  test("a cached prefix, another regime, a recompute, a long prompt, or the batch limit ends the group", () => {
    const take = (following: GroupCandidate[], l = limits) =>
      (planPrefillGroup(l, c(30), null, following) as { take: number }).take;
    expect(take([c(30, { cachedPrefix: 16 }), c(30)])).toBe(1);
    expect(take([c(30, { regime: 1 })])).toBe(1);
    expect(take([c(30, { recompute: true })])).toBe(1);
    expect(take([c(30), c(65)])).toBe(2);
    expect(take([c(30), c(30), c(30), c(30)])).toBe(4);
    expect(take([c(30), c(30)], { ...limits, maxPrefillBatch: undefined })).toBe(1);
  });

  test("widths round up to prefillWidthMultiple, padding with them", () => {
    expect(planPrefillGroup({ ...limits, prefillWidthMultiple: 32 }, c(30), null, [c(28)])).toEqual({
      alone: false,
      take: 2,
      width: 32,
      padding: [2, 4],
    });
  });

  test("a chunk is the full prefill chunk when nothing decodes, the interleaved one otherwise, split over rows", () => {
    expect(prefillChunkEnd(limits, 0, 1, 200, 0)).toBe(64);
    expect(prefillChunkEnd(limits, 2, 1, 200, 64)).toBe(80);
    expect(prefillChunkEnd(limits, 0, 3, 200, 0)).toBe(21);
    expect(prefillChunkEnd(limits, 5, 32, 200, 10)).toBe(11);
    expect(prefillChunkEnd(limits, 0, 1, 50, 40)).toBe(50);
  });
});

describe("tokens", () => {
  /** Accepts tokens that keep an even count of 7s, nothing after two tokens. */
  function constraint(): TokenConstraint {
    let n = 0;
    return {
      accept: (t) => {
        n++;
        return t !== 99;
      },
      allowed: (out) => {
        if (n >= 2) return 0;
        out[7] = 1;
        return 1;
      },
      get done() {
        return n >= 3;
      },
      get complete() {
        return n >= 2;
      },
    };
  }
  const v = (token: number) => ({ token, logprob: null, top: null });

  test("a stop token finishes without going out; the last allowed token goes out and finishes with length", () => {
    const s = seq("a", 4, 2);
    expect(acceptToken(s, v(2), limits.contextLength)).toEqual({ emit: false, finish: { reason: "stop" } });
    expect(s.tokens).toHaveLength(5);
    expect(s.generated).toBe(0);
    const t = seq("b", 4, 2);
    expect(acceptToken(t, v(5), limits.contextLength)).toEqual({ emit: true, finish: null });
    expect(acceptToken(t, v(6), limits.contextLength)).toEqual({ emit: true, finish: { reason: "length" } });
    // The context ends a sequence too.
    const u = seq("c", 9, 100);
    expect(acceptToken(u, v(5), 10)).toEqual({ emit: true, finish: { reason: "length" } });
  });

  test("a constraint refuses a token (error), completes (stop), or leaves no token (stop when complete)", () => {
    const a = seq("a", 4, 10, { constraint: constraint(), mask: new Uint8Array(16) });
    expect(acceptToken(a, v(99), 1000)).toEqual({
      emit: true,
      finish: { reason: "error", message: "constrained decoding: token 99 is not allowed here" },
    });
    const b = seq("b", 4, 10, { constraint: constraint(), mask: new Uint8Array(16) });
    const m = nextMask(b);
    expect("mask" in m && m.mask?.[7]).toBe(1);
    acceptToken(b, v(7), 1000);
    acceptToken(b, v(7), 1000);
    expect(nextMask(b)).toEqual({ finish: "stop" });
    expect(acceptToken(b, v(7), 1000)).toEqual({ emit: true, finish: { reason: "stop" } });
    expect(nextMask(seq("c", 4, 10))).toEqual({ mask: null });
  });
});

describe("RoPE regimes and speculation", () => {
  // Two regimes: up to 100 tokens, and beyond.
  const regime = (n: number) => (n > 100 ? 1 : 0);

  test("rows whose next token crosses into another regime are the ones to recompute", () => {
    const rows = [seq("a", 99, 10), seq("b", 100, 10), seq("c", 150, 10, { regime: 1 })];
    expect(regimeCrossings(rows, regime).map((s) => s.request.id)).toEqual(["b"]);
  });

  test("a draft stays within max_tokens, the context and the row's regime", () => {
    expect(draftLength(seq("a", 10, 100), 8, 1000, regime)).toBe(8);
    expect(draftLength(seq("a", 10, 5), 8, 1000, regime)).toBe(4);
    expect(draftLength(seq("a", 10, 100), 8, 15, regime)).toBe(4);
    expect(draftLength(seq("a", 95, 100), 8, 1000, regime)).toBe(4);
  });

  test("who may speculate", () => {
    const base = {
      enabled: true,
      asked: null,
      internal: false,
      constrained: false,
      penalized: false,
      temperature: 0.7,
      seed: null,
    };
    expect(maySpeculate(base)).toBe(true);
    expect(maySpeculate({ ...base, seed: 3 })).toBe(false);
    expect(maySpeculate({ ...base, seed: 3, asked: true })).toBe(true);
    expect(maySpeculate({ ...base, seed: 3, temperature: 0 })).toBe(true);
    expect(maySpeculate({ ...base, enabled: false })).toBe(false);
    expect(maySpeculate({ ...base, asked: false })).toBe(false);
    expect(maySpeculate({ ...base, internal: true })).toBe(false);
    expect(maySpeculate({ ...base, constrained: true, asked: true })).toBe(false);
    expect(maySpeculate({ ...base, penalized: true })).toBe(false);
  });
});

test("the policy's imports reach no MLX (src/mlx, bun:ffi)", () => {
  const roots = ["scheduler-policy.ts", "token-policy.ts"].map((f) => resolve(import.meta.dir, "../../src/engine", f));
  const seen = new Set<string>();
  const reached: string[] = [];
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/(?:import|export)[^"']*?from\s+["']([^"']+)["']/g)) {
      const spec = m[1] as string;
      reached.push(spec);
      if (!spec.startsWith(".")) continue;
      const base = join(dirname(file), spec);
      const path = [`${base}.ts`, join(base, "index.ts")].find((p) => existsSync(p));
      if (path) visit(path);
    }
  };
  for (const root of roots) visit(root);
  expect(reached.length).toBeGreaterThan(0);
  expect(reached.filter((s) => s === "bun:ffi" || /(^|\/)mlx(\/|$)/.test(s))).toEqual([]);
  expect([...seen].filter((f) => f.includes("/src/mlx/"))).toEqual([]);
});
