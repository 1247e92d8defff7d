// Batch exactness for the issue-15 families (as test/engine/scheduler.test.ts
// checks llama): rows joining a running batch at different times, padded
// prefill groups, and prefix-cache reuse give exactly their single-request
// greedy tokens, and log-probabilities within 1e-4. For Qwen3-MoE every row
// routes its own tokens; for the windowed models (Gemma 3, Mistral with a
// window of 16) the prompts run well past the window, so the window mask meets
// left padding, chunked prefill and reused prefixes (and, with PENSIEVE_TEST_KV_BITS, a quantized KV cache).
import { describe, expect, test } from "bun:test";
import { samplingParams } from "../../src/engine/protocol";
import type { EngineEvent } from "../../src/engine/protocol";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { runScheduled, singleWithLogprobs as single, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

function expectClose(actual: number[] | undefined, expected: number[], tolerance = 1e-4) {
  expect(actual?.length).toBe(expected.length);
  const worst = Math.max(0, ...expected.map((e, i) => Math.abs(e - ((actual as number[])[i] as number))));
  expect(worst).toBeLessThan(tolerance);
}

const prompts = [promptIds(5, 11), promptIds(40, 12), promptIds(17, 13), promptIds(90, 14), promptIds(3, 15)];
const lengths = [20, 12, 25, 8, 30];
const joinAt = [0, 0, 3, 7, 15];

for (const name of ["tiny-qwen3-moe", "tiny-gemma3", "tiny-mistral-swa", "tiny-mixtral"]) {
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
      // Whole 16-token blocks of the radix cache: 48 of the 59 shared tokens (well past the window of 16).
      expect(started.cachedTokens).toBeGreaterThanOrEqual(48);
      expect(run.tokens.get("second")).toEqual(expected.tokens);
      expectClose(run.logprobs.get("second"), expected.logprobs);
      run.scheduler.dispose();
    });
  });
}
