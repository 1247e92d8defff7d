// A real out-of-memory error: the engine is capped just above what it uses
// after loading (MLX's limit and, on the CPU, the process's data limit, since
// MLX's CPU allocator does not enforce its own), then asked for a prompt whose
// KV cache and prefill cannot fit. The request gets a 5xx that says so, a
// stream already running goes on, and the engine serves the next request.
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { RunningServer } from "../../src/server/server";
import { startTestServer } from "../support/server";

let server: RunningServer;
const MiB = 2 ** 20;

beforeAll(async () => {
  server = await startTestServer({ engine: { memoryHeadroomBytes: 48 * MiB, maxContext: 8192 } });
});
afterAll(async () => {
  await server?.stop();
});

const post = (path: string, body: unknown, signal?: AbortSignal) =>
  fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });

test("a request that cannot fit in memory gets a 5xx naming it; other streams continue; the engine recovers", async () => {
  const eos = Object.fromEntries([...server.session.tokenizer.eosIds].map((id) => [id, -100]));
  const running = await post("/v1/chat/completions", {
    messages: [{ role: "user", content: "Tell me a story." }],
    max_tokens: 120,
    stream: true,
    logit_bias: eos,
  });
  expect(running.status).toBe(200);
  const reader = (running.body as ReadableStream<Uint8Array>).getReader();
  let streamed = new TextDecoder().decode((await reader.read()).value);

  // ~6000 tokens: its KV cache alone (float32 on the CPU) is several times the headroom.
  const long = Array.from({ length: 1500 }, (_, i) => `w${i % 500}`).join(" ");
  const big = await post("/v1/chat/completions", { messages: [{ role: "user", content: long }], max_tokens: 8 });
  const error = (await big.json()) as { error: { message: string } };
  console.log(`out of memory: ${big.status} ${error.error.message}`);
  expect(big.status).toBeGreaterThanOrEqual(500);
  expect(error.error.message).toMatch(/out of memory/i);

  for (let r = await reader.read(); !r.done; r = await reader.read()) streamed += new TextDecoder().decode(r.value);
  expect(streamed).toContain('"finish_reason":"length"');
  expect(streamed).toContain("data: [DONE]");

  const after = await post("/v1/chat/completions", { messages: [{ role: "user", content: "Hi" }], max_tokens: 4 });
  expect(after.status).toBe(200);
  const health = await fetch(`${server.url}/health`);
  expect(health.status).toBe(200);
  console.log(`engine restarts: ${server.engine.restarts}`);
}, 120_000);
