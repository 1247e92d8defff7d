// The advertised context at default settings (issue 10, on this CPU): /health's
// contextLength is what a request may really use. A prompt of contextLength
// less max_tokens completes over HTTP, and one token more is a 400 before any
// prefill. tiny-phi3 crosses its LongRoPE threshold (64) on the way, so the
// long-factor regime is in play too. The GPU twin is test/gpu/long-context.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RunningServer } from "../../src/server/server";
import { tinyModel } from "../support/models";
import { startTestServer } from "../support/server";

async function complete(base: string, prompt: number[], maxTokens: number) {
  const res = await fetch(`${base}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe("the advertised context at default settings (tiny-phi3, CPU)", () => {
  let server: RunningServer;
  let context = 0;

  beforeAll(async () => {
    server = await startTestServer({ model: tinyModel("tiny-phi3"), waitForModel: true });
    context = ((await (await fetch(`${server.url}/health`)).json()) as { contextLength: number }).contextLength;
  }, 120_000);

  afterAll(async () => {
    await server?.stop();
  });

  test("a prompt of contextLength less max_tokens completes", async () => {
    expect(context).toBe(2048);
    const prompt = Array.from({ length: context - 8 }, (_, i) => 1 + ((i * 7919) % 30000));
    const r = await complete(server.url, prompt, 8);
    expect(r.status).toBe(200);
    const usage = r.body.usage as { prompt_tokens: number; completion_tokens: number };
    expect(usage.prompt_tokens).toBe(context - 8);
    expect(usage.completion_tokens).toBeGreaterThan(0);
  }, 120_000);

  test("one token more than the context is a 400 naming the limit", async () => {
    const r = await complete(server.url, new Array(context).fill(100), 1);
    expect(r.status).toBe(400);
    expect(JSON.stringify(r.body)).toContain(`> ${context - 1} maximum`);
  }, 60_000);
});
