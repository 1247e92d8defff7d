// The soak in small (the full one: `bun run bench soak`, results in
// bench/results/): 200 requests over the OpenAI, Anthropic and WebSocket
// routes against a real `pensieve serve` process, streaming and not, tools and
// JSON mode, ~30% abandoned mid-stream, concurrency up to 2× maxConcurrent.
// No 5xx, no hung request, nothing left open, and an idle second later MLX's
// active memory and live handles are back within 5% of the baseline. Resident
// memory gets 25% here: at this scale (a 150 MB process, seconds of load) one
// garbage collection more or less moves it by up to ~20% (measured: 147 → 174
// MB in one run of five, 137 → 141 in the others); the bench's 1,000-request
// soak holds it to 5%.
import { afterAll, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { DEFAULT_SOAK, runSoak, startSoakServer } from "../../bench/soak";
import { tinyModel } from "../support/models";

let proc: Subprocess | null = null;
afterAll(async () => {
  proc?.kill("SIGTERM");
  await proc?.exited;
});

test("200 mixed requests leave nothing behind", async () => {
  const options = {
    ...DEFAULT_SOAK,
    model: tinyModel("tiny-llama"),
    maxTokens: [1, 8] as [number, number],
    rssTolerance: 0.25,
    idleMs: 2000,
  };
  const server = await startSoakServer(options);
  proc = server.proc;
  const started = performance.now();
  const result = await runSoak(server.base, { ...options, requests: 200, log: () => {} });
  console.log(
    `soak: ${JSON.stringify(result.counts)} in ${((performance.now() - started) / 1000).toFixed(1)} s; baseline ${JSON.stringify(result.baseline)}; final ${JSON.stringify(result.final)}`,
  );
  if (result.failures.length) console.log(result.failures.join("\n"));
  expect(result.failures).toEqual([]);
  expect(result.counts.abandoned).toBeGreaterThan(20);
  expect(result.counts["429"]).toBeGreaterThan(0);
}, 180_000);
