// Prompt-lookup speculation inside the scheduler, on real MLX: a lone row's
// greedy tokens and log-probabilities are those of decoding without it (stop
// tokens, max_tokens, Phi-3's LongRoPE crossing, the prefix cache, quantized
// KV, SmolLM2), and its sampled tokens follow the same distribution (a
// chi-square test with fixed seeds, for temperature, top-k and top-p).
import { describe, expect, test } from "bun:test";
import { KVCache } from "../../src/engine/kv-cache";
import { cacheShape } from "../../src/engine/one-sequence";
import { type EngineRequest, type SamplingParams, samplingParams } from "../../src/engine/protocol";
import { SequenceSampler } from "../../src/engine/sampling";
import { gpuLookupTuning } from "../../src/engine/speculation";
import type { SchedulerOptions } from "../../src/engine/scheduler";
import { setTieMargin, verifyDraft } from "../../src/engine/speculative-verify";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import type { LanguageModel } from "../../src/models/types";
import { encodeChat, Tokenizer } from "../../src/text";
import { EMBEDDED_MODEL, tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, singleWithLogprobs, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

/** A prompt that repeats itself: the tiny models' greedy output then loops, which the lookup copies. */
function repetitive(seed: number): number[] {
  const base = promptIds(12, seed);
  return [...base, ...base.slice(1), ...base.slice(1)];
}

function lone(model: LanguageModel, req: EngineRequest, options: SchedulerOptions = TEST_SCHEDULER_OPTIONS) {
  const run = runScheduled(model, [{ at: 0, request: req }], options);
  return {
    tokens: run.tokens.get(req.id) ?? [],
    logprobs: run.logprobs.get(req.id) ?? [],
    speculation: run.scheduler.speculation,
    events: run.events,
    scheduler: run.scheduler,
  };
}

describe("greedy speculation equals decoding without it", () => {
  const llama = loadModel(tinyModel("tiny-llama")).model;
  const phi3 = loadModel(tinyModel("tiny-phi3")).model;

  test("tiny-llama: tokens and log-probabilities, drafts accepted", () => {
    const greedy = samplingParams({ logprobs: true, topLogprobs: 3 });
    const prompt = repetitive(7);
    const expected = singleWithLogprobs(llama, prompt, 40, greedy);
    const got = lone(llama, request("a", prompt, 40, greedy));
    expect(got.tokens).toEqual(expected.tokens);
    const worst = Math.max(...expected.logprobs.map((e, i) => Math.abs(e - (got.logprobs[i] as number))));
    expect(worst).toBeLessThan(1e-4);
    expect(got.speculation.accepted).toBeGreaterThan(10);
    const tops = got.events.flatMap((e) => (e.type === "tokens" ? e.items.map((t) => t.top?.length) : []));
    expect(tops.every((n) => n === 3)).toBe(true);
    // Off per request: the same tokens, no verify pass.
    const off = lone(llama, request("b", prompt, 40, { ...greedy, speculative: false }));
    expect(off.tokens).toEqual(expected.tokens);
    expect(off.speculation.passes).toBe(0);
    // Off for the scheduler.
    const offAll = lone(llama, request("c", prompt, 40, greedy), { ...TEST_SCHEDULER_OPTIONS, speculative: false });
    expect(offAll.speculation.passes).toBe(0);
  });

  test("the GPU's lookup (cost policy, at most 3 drafts): the same tokens, and none past its context limit", () => {
    const prompt = repetitive(7);
    const expected = singleWithLogprobs(llama, prompt, 40, samplingParams()).tokens;
    const gpu = gpuLookupTuning(3);
    const on = lone(llama, request("g", prompt, 40), { ...TEST_SCHEDULER_OPTIONS, lookupTuning: gpu });
    expect(on.tokens).toEqual(expected);
    expect(on.speculation.passes).toBeGreaterThan(0);
    expect(on.speculation.drafted).toBeLessThanOrEqual(3 * on.speculation.passes);
    // A context limit below the prompt: plain decoding, no verify pass.
    const tuning = { ...gpu, maxContext: prompt.length - 1 };
    const off = lone(llama, request("h", prompt, 40), { ...TEST_SCHEDULER_OPTIONS, lookupTuning: tuning });
    expect(off.tokens).toEqual(expected);
    expect(off.speculation.passes).toBe(0);
  });

  test("max_tokens cuts inside an accepted draft", () => {
    const prompt = repetitive(7);
    const free = singleWithLogprobs(llama, prompt, 30, samplingParams()).tokens;
    for (const n of [1, 2, 3, 5, 8, 13]) {
      const got = lone(llama, request(`m${n}`, prompt, n));
      expect(got.tokens).toEqual(free.slice(0, n));
      const finished = got.events.find((e) => e.type === "finished");
      expect(finished).toMatchObject({ reason: "length", completionTokens: n });
    }
  });

  test("tiny-phi3: stop tokens inside a draft and the LongRoPE crossing (original context 64)", () => {
    const prompt = repetitive(7); // 34 tokens: 40 more cross position 64
    const free = singleWithLogprobs(phi3, prompt, 40, samplingParams()).tokens;
    const run = lone(phi3, request("p", prompt, 40));
    expect(run.tokens).toEqual(free);
    expect(run.speculation.passes).toBeGreaterThan(0);
    // Each distinct token after the first as a stop token: output up to it, unchanged.
    for (const stop of [...new Set(free.slice(1))].slice(0, 8)) {
      const got = lone(phi3, request(`s${stop}`, prompt, 40, samplingParams(), [stop]));
      expect(got.tokens).toEqual(free.slice(0, free.indexOf(stop)));
    }
  });

  test("the prefix cache keeps only accepted tokens: a follow-up prompt over a speculated answer", () => {
    const options = { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: 64 << 20, prefixBlockTokens: 8 };
    const prompt = repetitive(9);
    const first = lone(llama, request("first", prompt, 40), options);
    expect(first.speculation.accepted).toBeGreaterThan(0);
    const followUp = [...prompt, ...first.tokens, ...promptIds(6, 3).slice(1)];
    const expected = singleWithLogprobs(llama, followUp, 12, samplingParams()).tokens;
    const run = runScheduled(
      llama,
      [
        { at: 0, request: request("first", prompt, 40) },
        { at: 60, request: request("second", followUp, 12) },
      ],
      options,
    );
    const started = run.events.find((e) => e.type === "started" && e.id === "second") as { cachedTokens: number };
    expect(started.cachedTokens).toBeGreaterThanOrEqual(64);
    expect(run.tokens.get("second")).toEqual(expected);
    run.scheduler.dispose();
  });

  test("8-bit KV cache: the same tokens with and without speculation", () => {
    const options = { ...TEST_SCHEDULER_OPTIONS, kvBits: 8 as const };
    const prompt = repetitive(7);
    const on = lone(llama, request("q", prompt, 40), options);
    const off = lone(llama, request("q", prompt, 40, samplingParams({ speculative: false })), options);
    expect(on.speculation.accepted).toBeGreaterThan(0);
    expect(on.tokens).toEqual(off.tokens);
  });

  test("two rows at once decode without speculation and match single requests", () => {
    const prompts = [repetitive(7), repetitive(8)];
    const expected = prompts.map((p) => singleWithLogprobs(llama, p, 20, samplingParams()).tokens);
    const run = runScheduled(
      llama,
      prompts.map((p, i) => ({ at: 0, request: request(`r${i}`, p, 20) })),
    );
    prompts.forEach((_, i) => {
      expect(run.tokens.get(`r${i}`)).toEqual(expected[i] as number[]);
    });
  });

  // A position whose two best scores are within a margin goes to a one-token step (acceptGreedyUnlessTied; 0.01 on
  // the CPU, 0.25 on a GPU), forced wider here: every position (an infinite margin: no draft is kept), and some.
  for (const [what, margin] of [
    ["every position", Number.POSITIVE_INFINITY],
    ["positions within 0.5: a tiny model's scores lie close", 0.5],
  ] as const) {
    test(`near ties left to a one-token step (${what}): the same tokens and log-probabilities`, () => {
      const greedy = samplingParams({ logprobs: true, topLogprobs: 2 });
      const prompt = repetitive(7);
      const expected = singleWithLogprobs(llama, prompt, 40, greedy);
      setTieMargin(margin);
      try {
        const got = lone(llama, request("tie", prompt, 40, greedy));
        expect(got.tokens).toEqual(expected.tokens);
        const worst = Math.max(...expected.logprobs.map((e, i) => Math.abs(e - (got.logprobs[i] as number))));
        expect(worst).toBeLessThan(1e-4);
        expect(got.speculation.passes).toBeGreaterThan(0);
        expect(got.speculation.tieSteps).toBeGreaterThan(0);
        if (margin === Number.POSITIVE_INFINITY) expect(got.speculation.tieSteps).toBe(got.speculation.passes);
        if (margin === Number.POSITIVE_INFINITY) expect(got.speculation.accepted).toBe(0);
        else expect(got.speculation.accepted).toBeGreaterThan(0);
      } finally {
        setTieMargin(null);
      }
    });
  }

  test("no MLX arrays leak across speculating runs", () => {
    const go = () =>
      lone(llama, request("leak", repetitive(7), 30, samplingParams({ logprobs: true, topLogprobs: 2 })));
    go();
    const arrays = mx.liveArrayCount();
    go();
    expect(mx.liveArrayCount()).toBe(arrays);
  });
});

test("SmolLM2-135M: greedy output with speculation equals output without it (a code edit)", () => {
  const tokenizer = Tokenizer.fromGguf(EMBEDDED_MODEL);
  const { model } = loadModel(EMBEDDED_MODEL);
  try {
    const file =
      "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n";
    const prompt = encodeChat(
      tokenizer,
      [
        {
          role: "user",
          content: `Here is a file:\n\n${file}\nRename the function sub to subtract. Reply with the whole file.`,
        },
      ],
      { addGenerationPrompt: true },
    );
    const req = request("edit", prompt, 48, samplingParams(), [...tokenizer.eosIds]);
    const on = lone(model, req);
    const off = lone(model, { ...req, sampling: samplingParams({ speculative: false }) });
    expect(on.tokens).toEqual(off.tokens);
    expect(on.speculation.passes).toBeGreaterThan(0);
  } finally {
    model.dispose();
  }
}, 120_000);

// ---- Sampled verification keeps the target distribution ----

/** Pearson's chi-square for two samples (sizes may differ) over shared bins, rare tokens merged. */
function chiSquare(a: Map<number, number>, b: Map<number, number>): { statistic: number; df: number } {
  const total = (m: Map<number, number>) => [...m.values()].reduce((x, y) => x + y, 0);
  const [na, nb] = [total(a), total(b)];
  const bins: Array<[number, number]> = [];
  let rest: [number, number] = [0, 0];
  for (const k of new Set([...a.keys(), ...b.keys()])) {
    const x = a.get(k) ?? 0;
    const y = b.get(k) ?? 0;
    if (x + y >= 20) bins.push([x, y]);
    else rest = [rest[0] + x, rest[1] + y];
  }
  if (rest[0] + rest[1] > 0) bins.push(rest);
  const statistic = bins.reduce((s, [x, y]) => s + (x * Math.sqrt(nb / na) - y * Math.sqrt(na / nb)) ** 2 / (x + y), 0);
  return { statistic, df: bins.length - 1 };
}

/** The chi-square quantile at p = 0.001 (Wilson–Hilferty). */
function critical(df: number): number {
  const z = 3.09;
  const c = 2 / (9 * df);
  return df * (1 - c + z * Math.sqrt(c)) ** 3;
}

function count(map: Map<number, number>, token: number): void {
  map.set(token, (map.get(token) ?? 0) + 1);
}

describe("sampled speculation keeps the distribution (tiny-llama, chi-square at p = 0.001)", () => {
  const { model } = loadModel(tinyModel("tiny-llama"));
  const prompt = promptIds(20, 3);
  // Samples per side: top-p sorts the vocabulary at every draw (slow on 2 shared cores).
  const cases: Array<[string, Partial<SamplingParams>, number]> = [
    ["temperature", { temperature: 0.1 }, 2000],
    ["top-k", { temperature: 0.3, topK: 5 }, 1500],
    ["top-p", { temperature: 0.08, topP: 0.8 }, 600],
  ];
  for (const [name, params, N] of cases) {
    test(name, () => {
      const sampling = samplingParams({ ...params, seed: 11 });
      const shape = cacheShape(model, 0);
      const cache = new KVCache(shape);
      const context = mx.tidy(() =>
        mx.keep(mx.reshape(model.forward(mx.int32(prompt, [1, prompt.length]), cache, { logits: "last" }), [-1])),
      );
      mx.evaluate(...cache.arrays());
      const base = cache.offset;
      // The draft: the likeliest token, then the likeliest after it (mostly accepted, sometimes not).
      const d1 = mx.argmax(context, -1).item();
      const after = mx.tidy(() => {
        const logits = mx.keep(mx.reshape(model.forward(mx.int32([d1], [1, 1]), cache, { logits: "last" }), [-1]));
        return logits;
      });
      const d2 = mx.argmax(after, -1).item();
      cache.truncate(base);

      // Without speculation: first tokens from the context's logits, second tokens after d1.
      const plain = new SequenceSampler(sampling, model.config.vocabSize);
      const firstPlain = new Map<number, number>();
      const secondPlain = new Map<number, number>();
      for (let i = 0; i < N; i++) {
        count(
          firstPlain,
          mx.tidy(() => plain.sample(context).token.item()),
        );
        count(
          secondPlain,
          mx.tidy(() => plain.sample(after).token.item()),
        );
      }
      // With it: the draft [d1, d2] verified after the prompt's last token.
      const last = prompt[prompt.length - 1] as number;
      const cacheSpec = new KVCache(shape);
      mx.tidy(() => {
        model.forward(mx.int32(prompt.slice(0, -1), [1, prompt.length - 1]), cacheSpec, { logits: "none" });
        mx.evaluate(...cacheSpec.arrays());
      });
      const start = cacheSpec.offset;
      const spec = new SequenceSampler({ ...sampling, seed: 12 }, model.config.vocabSize);
      const firstSpec = new Map<number, number>();
      const secondSpec = new Map<number, number>();
      let accepted = 0;
      for (let i = 0; i < N; i++) {
        const v = verifyDraft(model, cacheSpec, spec, last, [d1, d2]);
        cacheSpec.truncate(start);
        accepted += v.accepted;
        const [t1, t2] = v.values.map((x) => x.token);
        count(firstSpec, t1 as number);
        if (t1 === d1) count(secondSpec, t2 as number);
      }
      const first = chiSquare(firstPlain, firstSpec);
      const second = chiSquare(secondPlain, secondSpec);
      console.log(
        `${name}: first token chi2 ${first.statistic.toFixed(1)} (df ${first.df}), second ${second.statistic.toFixed(1)} (df ${second.df}), accepted ${accepted}`,
      );
      expect(first.df).toBeGreaterThanOrEqual(2);
      expect(first.statistic).toBeLessThan(critical(first.df));
      expect(second.statistic).toBeLessThan(critical(Math.max(1, second.df)));
      expect(accepted).toBeGreaterThan(N / 4);
      for (const a of [context, after]) a.dispose();
      cache.dispose();
      cacheSpec.dispose();
      plain.dispose();
      spec.dispose();
    }, 300_000);
  }
});
