// Thousands of malformed and hostile requests against a live server (tiny
// model, small context, loopback only), reproducible from one seed
// (FUZZ_SEED=n to try another). Malformed requests must get a 4xx; requests
// that happen to be valid may get 200 (their max_tokens stay tiny); nothing
// may get a 5xx, and afterwards the server must still serve normally with
// nothing left running in the engine.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { RunningServer } from "../../src/server/server";
import { waitForEngineIdle } from "../support/engine-idle";
import { tinyModel } from "../support/models";
import { mulberry32 } from "../support/random";
import { startTestServer } from "../support/server";
import { TestSocket } from "../support/ws-client";

const SEED = Number(process.env.FUZZ_SEED ?? 20251126);
const HTTP_CASES = 3000;
const WS_CASES = 600;
const BODY_LIMIT = 256 * 1024;
const CONCURRENCY = 8;

let server: RunningServer;

beforeAll(async () => {
  server = await startTestServer({
    model: tinyModel("tiny-llama-f16"),
    // A small context bounds what an accidentally valid request with a huge max_tokens can cost.
    engine: { maxContext: 64 },
    server: { bodyLimitBytes: BODY_LIMIT },
  });
}, 120_000);

afterAll(async () => {
  await server?.stop();
});

function prng(seed: number) {
  const next = mulberry32(seed);
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)] as T;
  return { next, int, pick };
}
type Rng = ReturnType<typeof prng>;

const WEIRD_NUMBERS = [0, -0, -1, 1.5, 1e308, -1e308, 2 ** 53 + 2, 1e-320, 4294967297, -2147483649, 3, 0.5];
const WEIRD_STRINGS = [
  "",
  "NaN",
  "Infinity",
  "-Infinity",
  "1e999",
  "0x10",
  " 12 ",
  "١٢",
  "12abc",
  "null",
  "true",
  "\u0000",
  "\ud800",
  "\u202e\u200b",
  "😀".repeat(50),
  "<tool_call>{",
  "{{ raise_exception('x') }}",
  "__proto__",
  "a".repeat(5000),
];

function randomValue(rng: Rng, depth = 0): unknown {
  const kind = rng.int(depth > 3 ? 4 : 7);
  switch (kind) {
    case 0:
      return rng.pick(WEIRD_NUMBERS);
    case 1:
      return rng.pick(WEIRD_STRINGS);
    case 2:
      return rng.pick([true, false, null]);
    case 3:
      return rng.next() * 10 ** rng.int(12) * (rng.next() < 0.5 ? -1 : 1);
    case 4:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      const keys = ["role", "content", "type", "text", "name", "id", "x", "__proto__", "constructor", "tool_calls"];
      for (let i = rng.int(4); i > 0; i--) o[rng.pick(keys)] = randomValue(rng, depth + 1);
      return o;
    }
  }
}

const deepArrays = (n: number) => `${"[".repeat(n)}${"]".repeat(n)}`;
const deepObjects = (n: number) => `${'{"a":'.repeat(n)}1${"}".repeat(n)}`;

const CHAT = "/v1/chat/completions";
const COMPLETIONS = "/v1/completions";
const MESSAGES = "/v1/messages";
const COUNT = "/v1/messages/count_tokens";
const PATHS = [CHAT, COMPLETIONS, MESSAGES, COUNT] as const;

/** A valid request for each endpoint, with a tiny max_tokens. */
function validBase(path: (typeof PATHS)[number]): Record<string, unknown> {
  const messages = [{ role: "user", content: "hi" }];
  if (path === CHAT) return { model: "m", messages, max_tokens: 2 };
  if (path === COMPLETIONS) return { model: "m", prompt: "hi", max_tokens: 2 };
  if (path === MESSAGES) return { model: "m", max_tokens: 2, messages };
  return { model: "m", messages };
}

const FIELDS: Record<string, string[]> = {
  [CHAT]: [
    "messages",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "n",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "tools",
    "tool_choice",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "stream_options",
    "model",
    "continue_final_message",
  ],
  [COMPLETIONS]: ["prompt", "temperature", "stop", "stream", "logprobs", "echo", "suffix", "seed", "logit_bias", "n"],
  [MESSAGES]: [
    "messages",
    "system",
    "temperature",
    "top_k",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
  ],
  [COUNT]: ["messages", "system", "tools", "model"],
};

interface Case {
  path: string;
  method: string;
  body: string | Uint8Array<ArrayBuffer> | null;
  contentType: string | null;
  /** "4xx": must be refused; "any": may succeed, must not fail with 5xx. */
  expect: "4xx" | "any";
  label: string;
}

function hostileCase(rng: Rng, i: number): Case {
  const path = rng.pick(PATHS);
  const json = (body: unknown, expect: Case["expect"], label: string): Case => ({
    path,
    method: "POST",
    body: JSON.stringify(body),
    contentType: "application/json",
    expect,
    label,
  });
  const base = validBase(path);
  const r = rng.int(100);
  if (r < 30) {
    // One to three fields set to something odd; the result may still be valid.
    const body: Record<string, unknown> = { ...base };
    for (let k = 1 + rng.int(3); k > 0; k--) body[rng.pick(FIELDS[path]!)] = randomValue(rng);
    return json(body, "any", "mutated field");
  }
  if (r < 40) {
    // Messages of odd shapes (the required field itself broken: always invalid).
    const field = path === COMPLETIONS ? "prompt" : "messages";
    const bad =
      field === "prompt"
        ? rng.pick<unknown>([[], {}, 5, null, [null], [[]], [{}], ["a", 1], [[1], ["a"]], true])
        : rng.pick<unknown>([
            [],
            {},
            "hello",
            5,
            null,
            [null],
            [[]],
            [{}],
            [{ role: 5 }],
            [{ role: "user", content: {} }],
          ]);
    return json({ ...base, [field]: bad }, "4xx", `bad ${field}`);
  }
  if (r < 48) {
    const max = rng.pick<unknown>([-1, 0, 1.5, "1e9", "100", null, true, [], {}, -1e308]);
    // count_tokens has no max_tokens; null means "unset" for OpenAI; Elysia's body schema on
    // /v1/messages turns numeric strings into numbers.
    const lenient =
      path === COUNT || (max === null && path !== MESSAGES) || (path === MESSAGES && typeof max === "string");
    return json({ ...base, max_tokens: max }, lenient ? "any" : "4xx", "bad max_tokens");
  }
  if (r < 50) {
    // Absurd but valid: clamped to the context left (64 tokens here).
    return json({ ...base, max_tokens: rng.pick([1e9, 2 ** 53 - 1, 1e15]) }, "any", "absurd max_tokens");
  }
  if (r < 60) return json(randomValue(rng, 1), "4xx", "random JSON");
  if (r < 66) {
    const text = JSON.stringify(base);
    return {
      path,
      method: "POST",
      body: text.slice(0, rng.int(text.length)),
      contentType: "application/json",
      expect: "4xx",
      label: "truncated JSON",
    };
  }
  if (r < 72) {
    // Invalid UTF-8 spliced into the bytes: invalid JSON, or (inside a string) replacement characters.
    const bytes = [...new TextEncoder().encode(JSON.stringify(base))];
    const junk = rng.pick([[0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xfe, 0xfe]]);
    bytes.splice(rng.int(bytes.length), 0, ...junk);
    return {
      path,
      method: "POST",
      body: new Uint8Array(bytes),
      contentType: "application/json",
      expect: "any",
      label: "invalid UTF-8",
    };
  }
  if (r < 76) {
    const bytes = new Uint8Array(1 + rng.int(2000));
    for (let k = 0; k < bytes.length; k++) bytes[k] = rng.int(256);
    return {
      path,
      method: "POST",
      body: bytes,
      contentType: rng.pick(["application/json", null, "application/octet-stream"]),
      expect: "4xx",
      label: "random bytes",
    };
  }
  if (r < 80) {
    const raw = rng.pick(["", "null", "[]", "0", '""', "true", "{", "}", "{}"]);
    return {
      path,
      method: "POST",
      body: raw,
      contentType: "application/json",
      expect: "4xx",
      label: `body ${raw || "(empty)"}`,
    };
  }
  if (r < 84) {
    const contentType = rng.pick([
      "text/plain",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
      "application/xml",
    ]);
    return {
      path,
      method: "POST",
      body: rng.next() < 0.5 ? "a=1&b=2" : "--x\r\n\r\n--x--",
      contentType,
      expect: "4xx",
      label: `content-type ${contentType}`,
    };
  }
  if (r < 87)
    return {
      path,
      method: rng.pick(["GET", "PUT", "DELETE", "PATCH"]),
      body: null,
      contentType: null,
      expect: "4xx",
      label: "wrong method",
    };
  if (r < 90 && i % 10 === 0) {
    // Deep nesting (bounded in number: some validators spend real time on it).
    const deep = rng.next() < 0.5 ? deepArrays(10_000) : deepObjects(10_000);
    const where = rng.int(3);
    const field = path === COMPLETIONS ? "prompt" : "messages";
    const body =
      where === 0
        ? deep
        : where === 1
          ? `{"model":"m","max_tokens":2,"${field}":${deep}}`
          : `{"model":"m","max_tokens":2,"${field}":[{"role":"user","content":${deep}}]}`;
    return { path, method: "POST", body, contentType: "application/json", expect: "4xx", label: "deep nesting" };
  }
  if (r < 92 && i % 10 === 1) {
    // A giant string just under or over the body limit.
    const over = rng.next() < 0.5;
    const field = path === COMPLETIONS ? "prompt" : "messages";
    const filler = "x".repeat(BODY_LIMIT - 200 + (over ? 1000 : 0));
    const body =
      field === "prompt" ? { ...base, prompt: filler } : { ...base, messages: [{ role: "user", content: filler }] };
    // Under the limit it is valid JSON but far too long a prompt (count_tokens may just count it).
    return json(body, path === COUNT && !over ? "any" : "4xx", over ? "over the body limit" : "near the body limit");
  }
  // Lots of small mutations of nested parts.
  const body = structuredClone(base) as Record<string, unknown>;
  const field = path === COMPLETIONS ? "prompt" : "messages";
  body[field] =
    field === "prompt"
      ? rng.pick<unknown>([[1, 2, 3], [[1, 2]], [-5], [1e12], ["a", 1], [[]]])
      : [{ role: rng.pick(["user", "assistant", "system", "tool", "developer", "bot"]), content: randomValue(rng, 2) }];
  return json(body, "any", "nested mutation");
}

async function send(c: Case): Promise<number> {
  const headers: Record<string, string> = {};
  if (c.contentType) headers["content-type"] = c.contentType;
  const res = await fetch(`${server.url}${c.path}`, { method: c.method, headers, body: c.body });
  // Read everything (a valid streaming request streams until done).
  await res.arrayBuffer();
  return res.status;
}

describe("fuzz", () => {
  test(`${HTTP_CASES} hostile HTTP requests: 4xx for malformed ones, no 5xx, the server keeps serving`, async () => {
    const rng = prng(SEED);
    const cases = Array.from({ length: HTTP_CASES }, (_, i) => hostileCase(rng, i));
    const failures: string[] = [];
    const byStatus = new Map<number, number>();
    let next = 0;
    const worker = async () => {
      while (next < cases.length) {
        const index = next++;
        const c = cases[index]!;
        let status: number;
        try {
          status = await send(c);
        } catch (e) {
          status = 0;
          failures.push(`#${index} ${c.label} ${c.method} ${c.path}: ${(e as Error).message}`);
        }
        byStatus.set(status, (byStatus.get(status) ?? 0) + 1);
        const ok = c.expect === "4xx" ? status >= 400 && status < 500 : status > 0 && status < 500;
        if (!ok && status !== 0) failures.push(`#${index} ${c.label} ${c.method} ${c.path} → ${status}`);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    if (failures.length) console.error(failures.slice(0, 20).join("\n"));
    expect(failures).toEqual([]);
    expect([...byStatus.keys()].every((s) => s < 500)).toBe(true);

    // Still serving.
    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(200);
    const res = await fetch(`${server.url}${CHAT}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "still there?" }], max_tokens: 3 }),
    });
    expect(res.status).toBe(200);
    const idle = await waitForEngineIdle(server.engine, 5000);
    expect(idle.running + idle.prefilling + idle.waiting).toBe(0);
  }, 300_000);

  test(`${WS_CASES} hostile WebSocket messages: error replies, the socket stays open`, async () => {
    const rng = prng(SEED + 1);
    const ws = await TestSocket.open(`${server.url.replace("http", "ws")}/v1/ws`);
    let sentPings = 0;
    for (let i = 0; i < WS_CASES; i++) {
      const r = rng.int(10);
      if (r === 0) ws.socket.send(rng.pick(["{", "nope", "", " ", "[", "\u0000", "{}garbage"]));
      else if (r === 1) ws.socket.send(rng.next() < 0.5 ? deepArrays(10_000) : deepObjects(10_000));
      else if (r === 2) {
        const bytes = new Uint8Array(1 + rng.int(512));
        for (let k = 0; k < bytes.length; k++) bytes[k] = rng.int(256);
        ws.socket.send(bytes);
      } else if (r === 3) ws.send(randomValue(rng));
      else if (r === 4) {
        const type = rng.pick(["chat", "cancel", "ping", "pong", "", 5, null]);
        if (type === "ping") sentPings++;
        ws.send({ type, id: randomValue(rng) });
      } else if (r === 5) ws.send({ type: "cancel", id: rng.pick(["x", "", "a".repeat(200), `z${i}`]) });
      else if (r === 6)
        ws.send({
          type: "chat",
          id: `big${i}`,
          messages: [{ role: "user", content: "x".repeat(100_000) }],
          max_tokens: 2,
        });
      else {
        // A chat with one field made odd: valid ones run (tiny max_tokens), invalid ones get errors.
        const id = `c${i}`;
        const body: Record<string, unknown> = {
          type: "chat",
          id,
          messages: [{ role: "user", content: "hi" }],
          max_tokens: 2,
        };
        const field = rng.pick([
          "messages",
          "temperature",
          "stop",
          "seed",
          "top_p",
          "logit_bias",
          "max_tokens",
          "model",
        ]);
        body[field] = field === "max_tokens" ? rng.pick<unknown>([1e15, -1, "2", 0, 3]) : randomValue(rng);
        ws.send(body);
      }
    }
    // Pongs answer pings in order: the last one answers this ping, after every message above.
    ws.send({ type: "ping" });
    const pings = sentPings + 1;
    await ws.next(() => ws.messages.filter((m) => m.type === "pong").length === pings, 120_000);
    expect(ws.closed).toBeNull();
    // Every error is a client error, and every accepted chat finishes.
    const statuses = ws.messages.filter((m) => m.type === "error").map((m) => m.status as number);
    expect(statuses.length).toBeGreaterThan(WS_CASES / 3);
    expect(statuses.filter((s) => s < 400 || s >= 500)).toEqual([]);
    const started = ws.messages.filter((m) => m.type === "start").map((m) => m.id as string);
    for (const id of started) await ws.next((m) => (m.type === "done" || m.type === "error") && m.id === id, 60_000);

    const from = ws.messages.length;
    ws.send({ type: "chat", id: "final", messages: [{ role: "user", content: "hello" }], max_tokens: 3 });
    const done = await ws.next((m) => m.type === "done" && m.id === "final", 30_000, from);
    expect(done.finish_reason).toBe("length");
    ws.close();
    const idle = await waitForEngineIdle(server.engine, 5000);
    expect(idle.running + idle.prefilling + idle.waiting).toBe(0);
  }, 300_000);
});
