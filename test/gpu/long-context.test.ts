// The advertised context on the GPU (issue 10): the full-size Phi-3 at default
// settings serves a prompt of contextLength - max_tokens tokens over HTTP, and
// a request that cannot fit is a 400 before any prefill, never a 500.
// Skipped without CUDA or without the full-size model: bench/gpu/device.sh
// makes it (random weights, /tmp/pv/phi3-mini-128k-4bit-random) and passes its
// folder in PENSIEVE_GPU_PHI3.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import * as mx from "../../src/mlx";
import { silentLogger } from "../../src/server/log";
import type { RunningServer } from "../../src/server/server";
import { startServer } from "../../src/server/server";

const model = process.env.PENSIEVE_GPU_PHI3 ?? "";
const ready = mx.gpuAvailable() && model !== "" && existsSync(join(model, "config.json"));

async function complete(base: string, prompt: number[], maxTokens: number) {
  const started = performance.now();
  const res = await fetch(`${base}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0 }),
    timeout: false,
  });
  return {
    status: res.status,
    body: (await res.json()) as Record<string, unknown>,
    seconds: (performance.now() - started) / 1000,
  };
}

describe.skipIf(!ready)("the advertised context on the GPU (full-size Phi-3, default settings)", () => {
  let server: RunningServer;
  let context = 0;

  beforeAll(async () => {
    server = await startServer({
      host: "127.0.0.1",
      port: 0,
      modelPath: model,
      engine: {},
      log: silentLogger,
      waitForModel: true,
    });
    const health = (await (await fetch(`${server.url}/health`)).json()) as { contextLength: number };
    context = health.contextLength;
  }, 300_000);

  afterAll(async () => {
    await server?.stop();
  });

  test("a prompt of the advertised length less max_tokens completes", async () => {
    const maxTokens = 16;
    // Random ids below the padding rows (32011+ have no token).
    let x = 7;
    const prompt = Array.from({ length: context - maxTokens }, () => {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      return 1 + (x % 32000);
    });
    const r = await complete(server.url, prompt, maxTokens);
    console.log(`${prompt.length} tokens: ${r.status} in ${r.seconds.toFixed(1)} s`);
    expect(r.status).toBe(200);
    expect((r.body.usage as { prompt_tokens: number }).prompt_tokens).toBe(prompt.length);
  }, 600_000);

  test("one token more than the context is a 400 before any prefill", async () => {
    const r = await complete(server.url, new Array(context + 1).fill(100), 1);
    expect(r.status).toBe(400);
  }, 120_000);
});
