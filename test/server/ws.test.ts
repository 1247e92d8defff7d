// The WebSocket protocol at /v1/ws against a live server (tiny random model:
// the protocol is what matters), plus backpressure through a test sink.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type AppContext, DEFAULT_SERVER_OPTIONS, modelResolver } from "../../src/server/app";
import { silentLogger } from "../../src/server/log";
import { ServerMetrics } from "../../src/server/metrics";
import type { RunningServer } from "../../src/server/server";
import { Connection, MAX_LIVE_CONVERSATIONS } from "../../src/server/ws/connection";
import type { ServerMessage } from "../../src/server/ws/protocol";
import { engineLoad, waitForEngineIdle } from "../support/engine-idle";
import { tinyModel } from "../support/models";
import { startTestServer } from "../support/server";
import { TestSocket, upgradeStatus } from "../support/ws-client";

const LONG = 120_000;
let server: RunningServer;
let wsUrl: string;

beforeAll(async () => {
  server = await startTestServer({ model: tinyModel("tiny-llama-f16") });
  wsUrl = `${server.url.replace("http", "ws")}/v1/ws`;
}, LONG);

afterAll(async () => {
  await server?.stop();
});

const chat = (id: string, content: string, extra: Record<string, unknown> = {}) => ({
  type: "chat",
  id,
  messages: [{ role: "user", content }],
  temperature: 0,
  max_tokens: 10,
  ...extra,
});

/** The same request over HTTP, for comparison. */
async function httpText(content: string, maxTokens: number, extra: Record<string, unknown> = {}): Promise<string> {
  const res = await fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content }], temperature: 0, max_tokens: maxTokens, ...extra }),
  });
  const body = (await res.json()) as { choices: Array<{ message: { content: string } }> };
  return body.choices[0]!.message.content;
}

describe("protocol", () => {
  test("ping, and bad messages get errors while the socket stays open", async () => {
    const ws = await TestSocket.open(wsUrl);
    ws.send({ type: "ping" });
    expect((await ws.next((m) => m.type === "pong")).type).toBe("pong");
    const bad: Array<[string | Uint8Array<ArrayBuffer>, RegExp]> = [
      ["{not json", /not valid JSON/],
      ["42", /JSON object/],
      ['"hello"', /JSON/],
      [new TextEncoder().encode('{"type":"ping"}'), /binary/],
      ["[1,2]", /JSON object/],
      [JSON.stringify({ type: "dance" }), /unknown message type "dance"/],
      [JSON.stringify({ id: "x" }), /unknown message type missing/],
      [JSON.stringify({ type: "chat", id: "v1", messages: [] }), /messages/],
      [JSON.stringify({ type: "chat", id: "v2", messages: [{ role: "user", content: 1 }] }), /messages\[0\]\.content/],
      [JSON.stringify(chat("v3", "hi", { temperature: "warm" })), /temperature/],
      [JSON.stringify({ type: "chat", messages: [{ role: "user", content: "x" }] }), /id/],
      [JSON.stringify({ type: "cancel" }), /id/],
    ];
    for (const [raw, pattern] of bad) {
      const from = ws.messages.length;
      ws.socket.send(raw);
      const error = await ws.next((m) => m.type === "error", 5000, from);
      expect(error.status).toBe(400);
      expect(error.message as string).toMatch(pattern);
    }
    const from = ws.messages.length;
    ws.send({ type: "ping" });
    await ws.next((m) => m.type === "pong", 5000, from);
    expect(ws.closed).toBeNull();
    ws.close();
  });

  test("a conversation: start, deltas, done with usage; the text matches the HTTP API", async () => {
    const ws = await TestSocket.open(wsUrl);
    ws.send(chat("c1", "Hello over a socket", { max_tokens: 12 }));
    const done = await ws.next((m) => m.type === "done" && m.id === "c1");
    const start = ws.messages.find((m) => m.type === "start")!;
    expect(start).toEqual({ type: "start", id: "c1", model: "tiny-llama-f16" });
    expect(ws.messages.indexOf(start)).toBeLessThan(ws.messages.findIndex((m) => m.type === "delta"));
    expect(done.finish_reason).toBe("length");
    const usage = done.usage as { prompt_tokens: number; completion_tokens: number; cached_tokens: number };
    expect(usage.completion_tokens).toBe(12);
    expect(usage.prompt_tokens).toBeGreaterThan(0);
    expect(usage.cached_tokens).toBeGreaterThanOrEqual(0);
    expect(ws.text("c1")).toBe(await httpText("Hello over a socket", 12));
    ws.close();
  });

  test("response_format: the conversation's text is a document of the schema, as over HTTP", async () => {
    const response_format = {
      type: "json_schema",
      json_schema: {
        name: "answer",
        schema: {
          type: "object",
          properties: { answer: { enum: ["yes", "no"] } },
          required: ["answer"],
          additionalProperties: false,
        },
      },
    };
    const ws = await TestSocket.open(wsUrl);
    ws.send(chat("j1", "Yes or no?", { max_tokens: 300, response_format }));
    const done = await ws.next((m) => m.type === "done" && m.id === "j1");
    expect(done.finish_reason).toBe("stop");
    const value = JSON.parse(ws.text("j1")) as { answer: string };
    expect(Object.keys(value)).toEqual(["answer"]);
    expect(["yes", "no"]).toContain(value.answer);
    expect(ws.text("j1")).toBe(await httpText("Yes or no?", 300, { response_format }));
    ws.close();
  });

  test("several conversations at once on one socket, multiplexed by id", async () => {
    const ws = await TestSocket.open(wsUrl);
    ws.send(chat("a", "First conversation", { max_tokens: 40 }));
    ws.send(chat("b", "Second conversation", { max_tokens: 40 }));
    await ws.next((m) => m.type === "done" && m.id === "a");
    await ws.next((m) => m.type === "done" && m.id === "b");
    // Deltas of both arrive before either finishes: they ran together.
    const firstDone = ws.messages.findIndex((m) => m.type === "done");
    const before = new Set(
      ws.messages
        .slice(0, firstDone)
        .filter((m) => m.type === "delta")
        .map((m) => m.id),
    );
    expect([...before].sort()).toEqual(["a", "b"]);
    expect(ws.text("a")).toBe(await httpText("First conversation", 40));
    expect(ws.text("b")).toBe(await httpText("Second conversation", 40));
    ws.close();
  });

  test("a duplicate live id is refused (409); the first conversation carries on", async () => {
    const ws = await TestSocket.open(wsUrl);
    ws.send(chat("dup", "One", { max_tokens: 30 }));
    ws.send(chat("dup", "Two", { max_tokens: 30 }));
    const error = await ws.next((m) => m.type === "error");
    expect(error).toMatchObject({ id: "dup", status: 409 });
    const done = await ws.next((m) => m.type === "done" && m.id === "dup");
    expect(done.finish_reason).toBe("length");
    expect(ws.text("dup")).toBe(await httpText("One", 30));
    // Once finished, the id may be used again.
    const from = ws.messages.length;
    ws.send(chat("dup", "Three", { max_tokens: 2 }));
    await ws.next((m) => m.type === "done" && m.id === "dup", 30_000, from);
    ws.close();
  });

  test("cancel by id ends that conversation only, with finish_reason cancelled", async () => {
    const ws = await TestSocket.open(wsUrl);
    ws.send(chat("long", "Keep going", { max_tokens: 1500 }));
    ws.send(chat("short", "Stop soon", { max_tokens: 20 }));
    await ws.next((m) => m.type === "delta" && m.id === "long");
    ws.send({ type: "cancel", id: "long" });
    ws.send({ type: "cancel", id: "no-such-conversation" });
    const done = await ws.next((m) => m.type === "done" && m.id === "long", 5000);
    expect(done.finish_reason).toBe("cancelled");
    expect((done.usage as { completion_tokens: number }).completion_tokens).toBeLessThan(1500);
    const short = await ws.next((m) => m.type === "done" && m.id === "short");
    expect(short.finish_reason).toBe("length");
    expect(ws.messages.filter((m) => m.type === "error")).toHaveLength(0);
    const idle = await waitForEngineIdle(server.engine);
    expect(idle.running + idle.prefilling + idle.waiting).toBe(0);
    ws.close();
  });

  test("closing the socket cancels all its generations", async () => {
    const ws = await TestSocket.open(wsUrl);
    ws.send(chat("x", "Forever one", { max_tokens: 1800 }));
    ws.send(chat("y", "Forever two", { max_tokens: 1800 }));
    await ws.next((m) => m.type === "delta" && m.id === "x");
    await ws.next((m) => m.type === "delta" && m.id === "y");
    ws.close();
    const idle = await waitForEngineIdle(server.engine, 3000);
    expect(idle.running + idle.prefilling + idle.waiting).toBe(0);
  });

  test(`at most ${MAX_LIVE_CONVERSATIONS} live conversations per socket`, async () => {
    const ws = await TestSocket.open(wsUrl);
    for (let i = 0; i <= MAX_LIVE_CONVERSATIONS; i++) ws.send(chat(`n${i}`, "Many", { max_tokens: 200 }));
    const error = await ws.next((m) => m.type === "error");
    expect(error).toMatchObject({ id: `n${MAX_LIVE_CONVERSATIONS}`, status: 429 });
    ws.close();
    await waitForEngineIdle(server.engine, 5000);
  });
});

describe("guards on the upgrade request", () => {
  let guarded: RunningServer;
  let url: string;
  beforeAll(async () => {
    guarded = await startTestServer({
      model: tinyModel("tiny-llama-f16"),
      server: { apiKey: "ws-key", corsOrigins: ["http://ok.example"] },
    });
    url = `${guarded.url.replace("http", "ws")}/v1/ws`;
  }, LONG);
  afterAll(async () => {
    await guarded?.stop();
  });

  test("the API key is required (?api_key= for browsers, or a header)", async () => {
    expect(await upgradeStatus(url.replace("ws", "http"))).toBe(401);
    expect(await upgradeStatus(`${url.replace("ws", "http")}?api_key=wrong`)).toBe(401);
    await expect(TestSocket.open(url)).rejects.toThrow();
    const ws = await TestSocket.open(`${url}?api_key=ws-key`);
    ws.send({ type: "ping" });
    await ws.next((m) => m.type === "pong");
    ws.close();
  });

  test("a disallowed browser origin is refused", async () => {
    const http = `${url.replace("ws", "http")}?api_key=ws-key`;
    expect(await upgradeStatus(http, { origin: "http://evil.example" })).toBe(403);
  });
});

describe("backpressure", () => {
  function context(): AppContext {
    return {
      session: server.session,
      options: { ...DEFAULT_SERVER_OPTIONS },
      log: silentLogger,
      metrics: new ServerMetrics(),
      resolveModel: modelResolver(server.session, false),
    };
  }

  /** A sink that records what was sent and answers each send as `status(n)` says (n counts from 1). */
  function sink(status: (n: number) => number) {
    const sent: ServerMessage[] = [];
    return {
      sent,
      send(data: string) {
        sent.push(JSON.parse(data) as ServerMessage);
        return status(sent.length);
      },
    };
  }

  const deltas = (sent: ServerMessage[]) =>
    sent
      .filter((m) => m.type === "delta")
      .map((m) => (m as { text: string }).text)
      .join("");

  test("after a -1 (queued) nothing more is pulled until drain; then the rest follows, nothing lost", async () => {
    const out = sink((n) => (n === 2 ? -1 : 1));
    const connection = new Connection(context(), out);
    connection.receive(chat("bp", "Backpressure", { max_tokens: 30 }));
    const deadline = performance.now() + 10_000;
    while (out.sent.length < 2 && performance.now() < deadline) await Bun.sleep(5);
    await Bun.sleep(300);
    // start + the delta that was queued; the engine may run on, but the connection waits.
    expect(out.sent.map((m) => m.type)).toEqual(["start", "delta"]);
    connection.drain();
    while (!out.sent.some((m) => m.type === "done") && performance.now() < deadline) await Bun.sleep(5);
    const done = out.sent.at(-1) as { type: string; finish_reason: string };
    expect(done).toMatchObject({ type: "done", finish_reason: "length" });
    expect(deltas(out.sent)).toBe(await httpText("Backpressure", 30));
    expect(connection.liveConversations).toBe(0);
  });

  test("a 0 (dropped) ends the conversation with an error and cancels generation", async () => {
    const out = sink((n) => (n === 3 ? 0 : 1));
    const connection = new Connection(context(), out);
    connection.receive(chat("drop", "Dropped", { max_tokens: 1500 }));
    const deadline = performance.now() + 10_000;
    while (!out.sent.some((m) => m.type === "error") && performance.now() < deadline) await Bun.sleep(5);
    const error = out.sent.find((m) => m.type === "error");
    expect(error).toMatchObject({ type: "error", id: "drop", status: 503 });
    expect(out.sent.some((m) => m.type === "done")).toBe(false);
    const idle = await waitForEngineIdle(server.engine, 3000);
    expect(idle.running + idle.prefilling + idle.waiting).toBe(0);
    expect(connection.liveConversations).toBe(0);
    const count = out.sent.length;
    await Bun.sleep(100);
    expect(out.sent.length).toBe(count);
    expect((await engineLoad(server.engine)).steps).toBe(idle.steps);
  });
});
