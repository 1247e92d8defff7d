// Operations: /health while loading, /metrics in Prometheus text, structured
// logs, and graceful shutdown on SIGTERM with a stream in flight.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { selfCommand } from "../../src/paths";
import { createLogger } from "../../src/server/log";
import type { RunningServer } from "../../src/server/server";
import { startServer } from "../../src/server/server";
import { tinyModel } from "../support/models";

describe("health, metrics and logs", () => {
  let server: RunningServer;
  const lines: string[] = [];
  let healthWhileLoading = 0;

  beforeAll(async () => {
    server = await startServer({
      host: "127.0.0.1",
      port: 0,
      modelPath: tinyModel("tiny-llama-f16"),
      engine: { device: "cpu", maxContext: 512 },
      log: createLogger({ write: (l) => lines.push(l) }),
      waitForModel: false,
    });
    healthWhileLoading = (await fetch(`${server.url}/health`)).status;
    await server.ready;
  });
  afterAll(async () => {
    await server.stop();
  });

  test("/health is 503 while the model loads, then 200", async () => {
    expect(healthWhileLoading).toBe(503);
    const r = await fetch(`${server.url}/health`);
    expect(r.status).toBe(200);
    expect(((await r.json()) as { status: string }).status).toBe("ok");
  });

  test("/metrics serves requests, tokens, latency histograms, queue, sequences and memory", async () => {
    const r = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Hello" }], max_tokens: 5, stream: true }),
    });
    await r.text();
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const value = (name: string) => {
      const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
      return line ? Number(line.split(" ").at(-1)) : Number.NaN;
    };
    expect(text).toContain('pensieve_requests_total{endpoint="/v1/chat/completions",status="200"} 1');
    expect(value("pensieve_prompt_tokens_total")).toBeGreaterThan(0);
    expect(value("pensieve_completion_tokens_total")).toBe(5);
    expect(value("pensieve_time_to_first_token_seconds_count")).toBe(1);
    expect(value("pensieve_inter_token_latency_seconds_count")).toBe(4);
    expect(value("pensieve_queue_wait_seconds_count")).toBe(1);
    for (const gauge of ["pensieve_queue_depth", "pensieve_active_sequences", "pensieve_kv_cache_bytes"]) {
      expect(value(gauge)).toBe(0);
    }
    expect(value("pensieve_mlx_active_memory_bytes")).toBeGreaterThan(0);
    expect(value("pensieve_kv_budget_bytes")).toBeGreaterThan(0);
    expect(value("pensieve_engine_up")).toBe(1);
    expect(text).toContain("# TYPE pensieve_time_to_first_token_seconds histogram");
  });

  test("logs are one JSON object per line, with request fields", () => {
    const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const request = records.find((r) => r.msg === "request" && r.path === "/v1/chat/completions");
    expect(request).toMatchObject({ level: "info", method: "POST", status: 200 });
    expect(typeof request?.ms).toBe("number");
    expect(records.some((r) => r.msg === "engine" && r.state === "ready")).toBe(true);
  });
});

test("SIGTERM lets a stream in flight finish, then the process exits 0", async () => {
  const port = 18688;
  const proc = Bun.spawn(
    [...selfCommand(), "serve", "--port", String(port), "--model", tinyModel("tiny-llama-f16"), "--backend", "cpu"],
    { stdout: "ignore", stderr: "ignore" },
  );
  try {
    for (let i = 0; i < 200; i++) {
      if (
        await fetch(`http://127.0.0.1:${port}/health`).then(
          (r) => r.ok,
          () => false,
        )
      )
        break;
      await Bun.sleep(100);
    }
    const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      // Greedy: a sampled end-of-turn token on the random model once ended the stream early ("stop").
      body: JSON.stringify({
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 40,
        stream: true,
        temperature: 0,
      }),
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    expect(first.done).toBe(false);
    proc.kill("SIGTERM");
    let body = new TextDecoder().decode(first.value);
    for (let r = await reader.read(); !r.done; r = await reader.read()) body += new TextDecoder().decode(r.value);
    expect(body).toContain("data: [DONE]");
    expect(body).toContain('"finish_reason":"length"');
    expect(await proc.exited).toBe(0);
    // Stopped: new connections are refused.
    expect(
      await fetch(`http://127.0.0.1:${port}/health`).then(
        () => "up",
        () => "down",
      ),
    ).toBe("down");
  } finally {
    proc.kill("SIGKILL");
  }
});
