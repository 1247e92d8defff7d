// Continuous batching: requests that join a running batch at different times,
// with different prompt lengths, give exactly their single-request outputs.
import { describe, expect, test } from "bun:test";
import type { EngineEvent } from "../../src/engine/protocol";
import { samplingParams } from "../../src/engine/protocol";
import { Scheduler } from "../../src/engine/scheduler";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import {
  request,
  runScheduled,
  single,
  singleWithLogprobs,
  TEST_KV_BITS,
  TEST_SCHEDULER_OPTIONS,
} from "../support/scheduler";

// A quantized KV cache sums attention in another order when rows are padded: slightly looser.
const LOGPROB_TOLERANCE = TEST_KV_BITS === 0 ? 1e-4 : 1e-3;

function expectClose(actual: number[] | undefined, expected: number[], tolerance = LOGPROB_TOLERANCE) {
  expect(actual?.length).toBe(expected.length);
  const worst = Math.max(0, ...expected.map((e, i) => Math.abs(e - ((actual as number[])[i] as number))));
  expect(worst).toBeLessThan(tolerance);
}

const prompts = [promptIds(5, 11), promptIds(40, 12), promptIds(17, 13), promptIds(90, 14), promptIds(3, 15)];
const lengths = [20, 12, 25, 8, 30];
const joinAt = [0, 0, 3, 7, 15];

// Width 16: prompts left-padded as on the GPU (lone rows too), which must not change any output.
for (const [name, prefillWidthMultiple] of [
  ["tiny-llama-f16", 1],
  ["tiny-llama", 1],
  ["tiny-llama", 16],
] as const) {
  const padded = prefillWidthMultiple > 1 ? `, prompts padded to multiples of ${prefillWidthMultiple}` : "";
  test(`${name}: greedy tokens and log-probabilities equal single-request ones, joining at different times${padded}`, () => {
    const { model } = loadModel(tinyModel(name));
    const greedy = samplingParams({ logprobs: true });
    const expected = prompts.map((p, i) => singleWithLogprobs(model, p, lengths[i] as number, greedy));
    const run = runScheduled(
      model,
      prompts.map((p, i) => ({ at: joinAt[i] as number, request: request(`r${i}`, p, lengths[i] as number, greedy) })),
      { ...TEST_SCHEDULER_OPTIONS, prefillWidthMultiple },
    );
    prompts.forEach((_, i) => {
      expect(run.tokens.get(`r${i}`)).toEqual(expected[i]?.tokens as number[]);
      expectClose(run.logprobs.get(`r${i}`), expected[i]?.logprobs as number[]);
    });
    const finished = run.events.filter((e) => e.type === "finished");
    expect(finished.map((e) => (e as { reason: string }).reason)).toEqual([
      "length",
      "length",
      "length",
      "length",
      "length",
    ]);
    expect(run.scheduler.stats().running).toBe(0);
    model.dispose();
  });
}

describe("continuous batching (tiny-llama-f16, float32 CPU)", () => {
  const { model } = loadModel(tinyModel("tiny-llama-f16"));

  test("prompts arriving together are prefilled as one padded group and match single-request output", () => {
    const group = [promptIds(30, 41), promptIds(24, 42), promptIds(33, 43), promptIds(28, 44), promptIds(31, 45)];
    const greedy = samplingParams({ logprobs: true });
    const expected = group.map((p) => singleWithLogprobs(model, p, 12, greedy));
    const run = runScheduled(
      model,
      group.map((p, i) => ({ at: 0, request: request(`g${i}`, p, 12, greedy) })),
    );
    for (let i = 0; i < group.length; i++) {
      expect(run.tokens.get(`g${i}`)).toEqual(expected[i]?.tokens as number[]);
      expectClose(run.logprobs.get(`g${i}`), expected[i]?.logprobs as number[]);
    }
    // The first four (maxPrefillBatch) started together, as one group: consecutive events.
    const startedAt = (id: string) => run.events.findIndex((e) => e.type === "started" && e.id === id);
    const first = startedAt("g0");
    expect([1, 2, 3].map((i) => startedAt(`g${i}`) - first)).toEqual([1, 2, 3]);
    expect(startedAt("g4")).toBeGreaterThan(first + 3);
  });

  test("seeded sampling is reproducible and matches single-request sampling", () => {
    const sampling = samplingParams({ temperature: 0.9, topP: 0.9, topK: 50, seed: 1234 });
    const expected = prompts.slice(0, 3).map((p) => single(model, p, 15, sampling));
    const run = runScheduled(
      model,
      prompts.slice(0, 3).map((p, i) => ({ at: i * 2, request: request(`s${i}`, p, 15, sampling) })),
    );
    for (let i = 0; i < 3; i++) expect(run.tokens.get(`s${i}`)).toEqual(expected[i] as number[]);
  });

  test("greedy rows with logit biases batch together and match single-request output", () => {
    const free = single(model, prompts[0] as number[], 10, samplingParams());
    const banned = samplingParams({ logitBias: { [free[0] as number]: -100, [free[1] as number]: -100 } });
    const expected = [
      single(model, prompts[0] as number[], 10, banned),
      single(model, prompts[1] as number[], 10, samplingParams()),
    ];
    const run = runScheduled(model, [
      { at: 0, request: request("biased", prompts[0] as number[], 10, banned) },
      { at: 0, request: request("plain", prompts[1] as number[], 10) },
    ]);
    expect(run.tokens.get("biased")).toEqual(expected[0] as number[]);
    expect(run.tokens.get("biased")?.[0]).not.toBe(free[0]);
    expect(run.tokens.get("plain")).toEqual(expected[1] as number[]);
  });

  test("stop tokens end a row without disturbing the others", () => {
    const free = single(model, prompts[2] as number[], 25, samplingParams());
    const stopAt = free[6] as number;
    const expectedStopped = free.slice(0, free.indexOf(stopAt));
    const expectedOther = single(model, prompts[1] as number[], 20, samplingParams());
    const run = runScheduled(model, [
      { at: 0, request: request("stopper", prompts[2] as number[], 25, samplingParams(), [stopAt]) },
      { at: 1, request: request("other", prompts[1] as number[], 20) },
    ]);
    expect(run.tokens.get("stopper") ?? []).toEqual(expectedStopped);
    expect(run.tokens.get("other")).toEqual(expectedOther);
  });

  test("a cancelled row leaves at the next step and frees its memory", () => {
    const events: EngineEvent[] = [];
    const s = new Scheduler(model, TEST_SCHEDULER_OPTIONS, (e) => events.push(e));
    for (let i = 0; i < 3; i++) s.submit(request(`c${i}`, prompts[i] as number[], 200));
    while (s.stats().running < 3) s.step();
    for (let i = 0; i < 3; i++) s.step();
    const before = s.stats().kvCacheBytes;
    s.cancel("c1");
    s.step();
    expect(events.some((e) => e.type === "finished" && e.id === "c1" && e.reason === "cancelled")).toBe(true);
    expect(s.stats().running).toBe(2);
    expect(s.stats().kvCacheBytes).toBeLessThan(before);
    s.cancel("c0");
    s.cancel("c2");
    s.step();
    expect(s.stats().running).toBe(0);
    expect(s.stats().kvCacheBytes).toBe(0);
    expect(s.hasWork()).toBe(false);
  });

  test("admission: a full queue rejects with 429, an overlong prompt with 400", () => {
    const events: EngineEvent[] = [];
    const s = new Scheduler(
      model,
      { ...TEST_SCHEDULER_OPTIONS, maxConcurrent: 1, queueSize: 2, contextLength: 64 },
      (e) => events.push(e),
    );
    s.submit(request("long", promptIds(64, 1), 4));
    for (let i = 0; i < 4; i++) s.submit(request(`q${i}`, promptIds(4, i), 4));
    const rejected = events.filter((e) => e.type === "rejected") as Array<Extract<EngineEvent, { type: "rejected" }>>;
    expect(rejected.find((e) => e.id === "long")?.status).toBe(400);
    expect(rejected.find((e) => e.id === "long")?.message).toContain("prompt is too long: 64 tokens > 63 maximum");
    expect(rejected.filter((e) => e.status === 429).map((e) => e.id)).toEqual(["q2", "q3"]);
    expect(s.stats().waiting).toBe(2);
    while (s.hasWork()) s.step();
  });

  test("prefix cache: a longer prompt reuses the shared prefix and gives the same tokens", () => {
    const base = promptIds(60, 21);
    const extended = [...base, ...promptIds(10, 22).slice(1)];
    const expected = single(model, extended, 10, samplingParams());
    const run = runScheduled(
      model,
      [
        { at: 0, request: request("first", base, 5) },
        { at: 40, request: request("second", extended, 10) },
      ],
      { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: 64 << 20 },
    );
    const started = run.events.find((e) => e.type === "started" && e.id === "second") as Extract<
      EngineEvent,
      { type: "started" }
    >;
    // Whole 16-token blocks: 48 of the 59 shared tokens.
    expect(started.cachedTokens).toBeGreaterThanOrEqual(48);
    expect(run.tokens.get("second")).toEqual(expected);
    expect(run.scheduler.stats().prefixCache.hits).toBeGreaterThanOrEqual(1);
    run.scheduler.dispose();
  });
});

describe("continuous batching with Phi-3 LongRoPE crossings", () => {
  const { model } = loadModel(tinyModel("tiny-phi3"));
  test("rows crossing original_max_position_embeddings mid-batch match single-request output", () => {
    // original context is 64: these rows cross it at different steps.
    const prompts = [promptIds(55, 31), promptIds(20, 32), promptIds(61, 33)];
    const expected = prompts.map((p) => single(model, p, 20, samplingParams()));
    const run = runScheduled(
      model,
      prompts.map((p, i) => ({ at: i, request: request(`p${i}`, p, 20) })),
    );
    for (let i = 0; i < prompts.length; i++) expect(run.tokens.get(`p${i}`)).toEqual(expected[i] as number[]);
  });
});

test("memory: no MLX arrays leak across scheduler runs", () => {
  const { model } = loadModel(tinyModel("tiny-llama-f16"));
  const run = () =>
    runScheduled(
      model,
      [0, 1, 2].map((i) => ({ at: i, request: request(`m${i}`, promptIds(10 + i, i), 10) })),
    );
  run();
  const arrays = mx.liveArrayCount();
  run();
  expect(mx.liveArrayCount()).toBe(arrays);
});
