// Batch exactness for the issue-15 families (as test/engine/scheduler.test.ts
// checks llama): rows joining a running batch at different times, padded
// prefill groups, and prefix-cache reuse give exactly their single-request
// greedy tokens, and log-probabilities within 1e-4. For Qwen3-MoE every row
// routes its own tokens; for the windowed models (Gemma 3, Mistral with a
// window of 16) the prompts run well past the window, so the window mask meets
// left padding, chunked prefill and reused prefixes.
import { describe, expect, test } from "bun:test";
import { generateTokens } from "../../src/engine/generate";
import { type SamplingParams, samplingParams } from "../../src/engine/sampling";
import { type EngineEvent, type EngineRequest, Scheduler } from "../../src/engine/scheduler";
import { loadModel } from "../../src/models/loader";
import type { LanguageModel } from "../../src/models/types";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

function single(model: LanguageModel, prompt: number[], maxTokens: number, sampling: SamplingParams) {
  const tokens: number[] = [];
  const logprobs: number[] = [];
  for (const v of generateTokens(model, prompt, { maxTokens, sampling, prefillChunk: 64 })) {
    tokens.push(v.token);
    logprobs.push(v.logprob ?? Number.NaN);
  }
  return { tokens, logprobs };
}

function runScheduled(
  model: LanguageModel,
  schedule: Array<{ at: number; request: EngineRequest }>,
  options = TEST_SCHEDULER_OPTIONS,
) {
  const events: EngineEvent[] = [];
  const tokens = new Map<string, number[]>();
  const logprobs = new Map<string, number[]>();
  const scheduler = new Scheduler(model, options, (e) => {
    events.push(e);
    if (e.type !== "tokens") return;
    for (const t of e.items) {
      tokens.set(t.id, [...(tokens.get(t.id) ?? []), t.token]);
      logprobs.set(t.id, [...(logprobs.get(t.id) ?? []), t.logprob ?? Number.NaN]);
    }
  });
  let step = 0;
  const pending = [...schedule];
  while (pending.length > 0 || scheduler.hasWork()) {
    for (let i = pending.length - 1; i >= 0; i--) {
      const p = pending[i] as { at: number; request: EngineRequest };
      if (p.at > step) continue;
      scheduler.submit(p.request);
      pending.splice(i, 1);
    }
    scheduler.step();
    if (++step > 5000) throw new Error("scheduler did not finish");
  }
  return { tokens, logprobs, events, scheduler };
}

function expectClose(actual: number[] | undefined, expected: number[], tolerance = 1e-4) {
  expect(actual?.length).toBe(expected.length);
  const worst = Math.max(0, ...expected.map((e, i) => Math.abs(e - ((actual as number[])[i] as number))));
  expect(worst).toBeLessThan(tolerance);
}

const prompts = [promptIds(5, 11), promptIds(40, 12), promptIds(17, 13), promptIds(90, 14), promptIds(3, 15)];
const lengths = [20, 12, 25, 8, 30];
const joinAt = [0, 0, 3, 7, 15];

for (const name of ["tiny-qwen3-moe", "tiny-gemma3", "tiny-mistral-swa"]) {
  describe(name, () => {
    const { model } = loadModel(tinyModel(name));
    const greedy = samplingParams({ logprobs: true });

    for (const prefillWidthMultiple of [1, 16]) {
      const padded = prefillWidthMultiple > 1 ? `, prompts padded to multiples of ${prefillWidthMultiple}` : "";
      test(`greedy tokens and log-probabilities equal single-request ones, joining at different times${padded}`, () => {
        const expected = prompts.map((p, i) => single(model, p, lengths[i] as number, greedy));
        const run = runScheduled(
          model,
          prompts.map((p, i) => ({
            at: joinAt[i] as number,
            request: { id: `r${i}`, prompt: p, maxTokens: lengths[i] as number, sampling: greedy, stopTokenIds: [] },
          })),
          { ...TEST_SCHEDULER_OPTIONS, prefillWidthMultiple },
        );
        prompts.forEach((_, i) => {
          expect(run.tokens.get(`r${i}`)).toEqual(expected[i]?.tokens as number[]);
          expectClose(run.logprobs.get(`r${i}`), expected[i]?.logprobs as number[]);
        });
        expect(run.scheduler.stats().running).toBe(0);
        run.scheduler.dispose();
      });
    }

    test("prefix cache: a longer prompt reuses the shared prefix (past the window) and gives the same tokens", () => {
      const base = promptIds(60, 21);
      const extended = [...base, ...promptIds(10, 22).slice(1)];
      const expected = single(model, extended, 10, greedy);
      const run = runScheduled(
        model,
        [
          { at: 0, request: { id: "first", prompt: base, maxTokens: 5, sampling: greedy, stopTokenIds: [] } },
          { at: 40, request: { id: "second", prompt: extended, maxTokens: 10, sampling: greedy, stopTokenIds: [] } },
        ],
        { ...TEST_SCHEDULER_OPTIONS, prefixCacheBytes: 64 << 20 },
      );
      const started = run.events.find((e) => e.type === "started" && e.id === "second") as Extract<
        EngineEvent,
        { type: "started" }
      >;
      expect(started.cachedTokens).toBeGreaterThanOrEqual(59);
      expect(run.tokens.get("second")).toEqual(expected.tokens);
      expectClose(run.logprobs.get("second"), expected.logprobs);
      run.scheduler.dispose();
    });
  });
}
