// The real Claude Code CLI (`claude -p hello`) against Pensieve, offline.
//
// (a) A tiny random Phi-3 with the real 128K context shape serves Claude
//     Code's whole request (system blocks, a system turn, its tools: ~13K
//     Phi-3 tokens): the CLI exits 0 and prints exactly the text the server
//     streamed, as a recording proxy between them saw it.
// (b) The embedded SmolLM2 (8K context) cannot hold that prompt: Claude Code
//     gets "prompt is too long" as a 400 before any stream, reports it and
//     exits; the server stays healthy.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RunningServer } from "../../src/server/server";
import { type Exchange, ensureClaudeCode, recordingProxy, runClaude } from "../support/anthropic-claude-code";
import { tinyPhi3ForClaudeCode } from "../support/anthropic-models";
import { parseSse, waitForIdleEngine } from "../support/anthropic-sse";
import { startTestServer } from "../support/server";

let claude: string;

beforeAll(async () => {
  claude = await ensureClaudeCode();
}, 300_000);

function messagesExchanges(exchanges: Exchange[]): Exchange[] {
  return exchanges.filter((e) => e.method === "POST" && e.path.startsWith("/v1/messages"));
}

/** The text a streamed reply carried, and how it ended. */
function streamedReply(exchange: Exchange) {
  const events = parseSse(exchange.response);
  const text = events
    .filter((e) => e.event === "content_block_delta")
    .map((e) => (e.data.delta as { text?: string }).text ?? "")
    .join("");
  const start = events.find((e) => e.event === "message_start")?.data.message as {
    usage: { input_tokens: number; cache_read_input_tokens: number };
  };
  const end = events.find((e) => e.event === "message_delta")?.data as {
    delta: { stop_reason: string };
    usage: { output_tokens: number };
  };
  const pingsBeforeStart = events.findIndex((e) => e.event === "message_start");
  return { events, text, start, end, pingsBeforeStart };
}

describe("Claude Code against a tiny Phi-3 with a 32K context", () => {
  let server: RunningServer;
  let proxy: ReturnType<typeof recordingProxy>;

  beforeAll(async () => {
    server = await startTestServer({
      model: tinyPhi3ForClaudeCode(),
      engine: { maxContext: 32768 },
      // Keep-alives while the long prompt is prefilled (Claude Code must take pings before message_start).
      server: { keepAliveMs: 2000 },
    });
    proxy = recordingProxy(server.url);
  }, 120_000);

  afterAll(async () => {
    proxy?.stop();
    await server?.stop();
  });

  test("claude -p hello exits 0 and prints the text the model generated", async () => {
    let run = await runClaude(claude, proxy.url, "hello", 240_000);
    let exchanges = messagesExchanges(proxy.exchanges);
    await Promise.all(exchanges.map((e) => e.done));
    // The random model ends its reply at once about one run in a hundred: then there is no text to compare.
    // A second run is quick (its prompt comes from the prefix cache).
    // A sampled random reply can also make Claude Code send a second request (seen once in a fresh-clone run, with
    // exit 0): this test is about one clean exchange, so that too gets one more run.
    const empty = exchanges.length > 0 && streamedReply(exchanges.at(-1) as Exchange).text.trim() === "";
    if (run.exitCode === 0 && (empty || exchanges.length !== 1)) {
      proxy.exchanges.length = 0;
      run = await runClaude(claude, proxy.url, "hello", 240_000);
      exchanges = messagesExchanges(proxy.exchanges);
      await Promise.all(exchanges.map((e) => e.done));
    }
    expect(run.stderr).toBe("");
    expect(run.exitCode).toBe(0);
    expect(exchanges).toHaveLength(1);
    const exchange = exchanges[0] as Exchange;

    // What Claude Code sent (see shared/notes/serving.md).
    const body = exchange.body as Record<string, unknown> & { system: unknown[]; messages: Array<{ role: string }> };
    expect(exchange.path).toBe("/v1/messages?beta=true");
    expect(exchange.headers["anthropic-beta"]).toBeTruthy();
    expect(body.stream).toBe(true);
    expect(body.model).toStartWith("claude-");
    expect(body.max_tokens as number).toBeGreaterThanOrEqual(32000);
    expect(body.system.length).toBeGreaterThanOrEqual(2);
    expect(body.messages.some((m) => m.role === "system")).toBe(true);
    expect((body.tools as unknown[]).length).toBeGreaterThanOrEqual(10);
    expect(body.thinking).toBeDefined();

    const reply = streamedReply(exchange);
    expect(exchange.status).toBe(200);
    expect(reply.end.delta.stop_reason).toBe("end_turn");
    expect(reply.text.trim().length).toBeGreaterThan(0);
    expect(run.stdout.trim()).toBe(reply.text.trim());

    const promptTokens = reply.start.usage.input_tokens + reply.start.usage.cache_read_input_tokens;
    expect(promptTokens).toBeGreaterThan(10_000);
    console.log(
      `Claude Code ${JSON.stringify({
        promptTokens,
        cachedTokens: reply.start.usage.cache_read_input_tokens,
        outputTokens: reply.end.usage.output_tokens,
        pingsBeforeMessageStart: reply.pingsBeforeStart,
        requestMs: Math.round(exchange.ms),
        claudeMs: Math.round(run.ms),
      })}`,
    );
    expect(await waitForIdleEngine(server)).toBeLessThan(1000);
  }, 600_000);
});

describe("Claude Code against SmolLM2 with its 8K context", () => {
  let server: RunningServer;
  let proxy: ReturnType<typeof recordingProxy>;

  beforeAll(async () => {
    server = await startTestServer();
    proxy = recordingProxy(server.url);
  }, 120_000);

  afterAll(async () => {
    proxy?.stop();
    await server?.stop();
  });

  test("the prompt is too long: a clean 400, Claude Code reports it and exits, the server stays healthy", async () => {
    const run = await runClaude(claude, proxy.url, "hello", 120_000);
    const exchanges = messagesExchanges(proxy.exchanges);
    await Promise.all(exchanges.map((e) => e.done));
    expect(exchanges.length).toBeGreaterThanOrEqual(1);
    for (const exchange of exchanges) {
      expect(exchange.status).toBe(400);
      const error = JSON.parse(exchange.response) as { type: string; error: { type: string; message: string } };
      expect(error.type).toBe("error");
      expect(error.error.type).toBe("invalid_request_error");
      expect(error.error.message).toMatch(
        /^prompt is too long: \d+ tokens > 8191 maximum\. The loaded model, .+, holds 8192 tokens .*`pensieve setup --model phi3-mini-mlx`\.$/,
      );
    }
    expect(run.exitCode).not.toBe(0);
    expect(`${run.stdout}${run.stderr}`.toLowerCase()).toContain("prompt is too long");
    console.log(
      `Claude Code on SmolLM2: ${JSON.stringify({ exitCode: run.exitCode, ms: Math.round(run.ms), output: run.stdout.trim() })}`,
    );

    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(200);
    expect(await waitForIdleEngine(server)).toBeLessThan(1000);
  }, 180_000);
});
