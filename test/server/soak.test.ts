// The soak in small (the full one: `bun run bench soak`, results in
// bench/results/): 200 requests over the OpenAI, Anthropic and WebSocket
// routes against a real `pensieve serve` process, streaming and not, tools and
// JSON mode, ~30% abandoned mid-stream, concurrency up to 2× maxConcurrent.
// No 5xx, no hung request, and an idle second later both processes' memory,
// MLX's active memory and live handles are back within 5% of the baseline.
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
  const options = { ...DEFAULT_SOAK, model: tinyModel("tiny-llama"), maxTokens: [1, 8] as [number, number] };
  const server = await startSoakServer(options);
  proc = server.proc;
  const started = performance.now();
  const result = await runSoak(server.base, { ...options, requests: 200, log: () => {} });
  console.log(
    `soak: ${JSON.stringify(result.counts)} in ${((performance.now() - started) / 1000).toFixed(1)} s; baseline ${JSON.stringify(result.baseline)}; final ${JSON.stringify(result.final)}`,
  );
  expect(result.failures).toEqual([]);
  expect(result.counts.abandoned).toBeGreaterThan(20);
  expect(result.counts["429"]).toBeGreaterThan(0);
}, 180_000);
