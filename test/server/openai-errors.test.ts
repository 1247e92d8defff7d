// Guards and error paths of the OpenAI API: authentication, CORS, body size,
// validation naming the field, prompt too long, strict model names, clamping.
// One tiny-model server with every guard on and a 64-token context.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import type { RunningServer } from "../../src/server/server";
import { waitForEngineIdle } from "../support/engine-idle";
import { tinyModel } from "../support/models";
import { startTestServer } from "../support/server";

const KEY = "test-key-123";
const ALLOWED = "http://allowed.example";
const CONTEXT = 64;
/** The engine's test hook fails the forward pass of a prompt holding this token (a rare one). */
const FAULT_TOKEN = 31500;
let server: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  server = await startTestServer({
    model: tinyModel("tiny-llama-f16"),
    // One sequence at a time and one waiting: a third request at once is refused (429).
    engine: { maxContext: CONTEXT, maxConcurrent: 1, queueSize: 1, faultTokenId: FAULT_TOKEN },
    server: { apiKey: KEY, corsOrigins: [ALLOWED], bodyLimitBytes: 64 * 1024, strictModelNames: true },
  });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
}, 120_000);

afterAll(async () => {
  await server?.stop();
});

const MODEL = "tiny-llama-f16";
const hi = [{ role: "user" as const, content: "Hi" }];

function post(path: string, body: string | object, headers: Record<string, string> = {}) {
  return fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** Posts a chat body and returns the status and OpenAI error object. */
async function chatError(body: unknown) {
  const res = await post("/v1/chat/completions", body as object);
  const json = (await res.json()) as { error?: { message: string; type: string; param: string | null } };
  return { status: res.status, error: json.error };
}

describe("authentication", () => {
  test("no key or a wrong key: 401 in OpenAI's shape; the right key works (Bearer)", async () => {
    const wrong = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "nope", maxRetries: 0 });
    const e = await wrong.models.list().catch((x) => x);
    expect(e).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((e as InstanceType<typeof OpenAI.AuthenticationError>).status).toBe(401);
    const bare = await fetch(`${server.url}/v1/models`);
    expect(bare.status).toBe(401);
    const body = (await bare.json()) as { error: { type: string } };
    expect(body.error.type).toBe("authentication_error");
    const ok = await client.chat.completions.create({ model: MODEL, messages: hi, max_tokens: 2 });
    expect(ok.choices).toHaveLength(1);
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
  });
});

describe("CORS", () => {
  test("an allowed origin gets Access-Control-Allow-Origin; preflight is 204; others are 403", async () => {
    const res = await fetch(`${server.url}/v1/models`, {
      headers: { origin: ALLOWED, authorization: `Bearer ${KEY}` },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("access-control-allow-origin")).toBe(ALLOWED);

    const preflight = await fetch(`${server.url}/v1/chat/completions`, {
      method: "OPTIONS",
      headers: {
        origin: ALLOWED,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
      },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get("access-control-allow-origin")).toBe(ALLOWED);
    expect(preflight.headers.get("access-control-allow-methods")).toContain("POST");

    // A streamed answer carries the header too.
    const stream = await post(
      "/v1/chat/completions",
      { messages: hi, max_tokens: 2, stream: true },
      { origin: ALLOWED },
    );
    expect(stream.headers.get("access-control-allow-origin")).toBe(ALLOWED);
    await stream.text();

    const denied = await fetch(`${server.url}/v1/models`, {
      headers: { origin: "http://evil.example", authorization: `Bearer ${KEY}` },
    });
    expect(denied.status).toBe(403);
    expect(denied.headers.get("access-control-allow-origin")).toBeNull();
  });
});

describe("request errors", () => {
  test("a body over the limit: 413", async () => {
    // Just over the app's limit: the app's guard answers, in OpenAI's shape.
    const over = await post("/v1/chat/completions", { messages: [{ role: "user", content: "x".repeat(64 * 1024) }] });
    expect(over.status).toBe(413);
    const body = (await over.json()) as { error: { message: string } };
    expect(body.error.message).toContain("limit");
    // Far over it, Bun refuses the body itself (maxRequestBodySize), still with 413.
    const far = await post("/v1/chat/completions", { messages: [{ role: "user", content: "x".repeat(1_000_000) }] });
    expect(far.status).toBe(413);
  });

  test("invalid JSON and non-object bodies: 400", async () => {
    for (const raw of ["{not json", "", "[1,2]", '"text"', "null"]) {
      const res = await post("/v1/chat/completions", raw);
      expect(res.status).toBe(400);
      const body = (await res.json()) as { error: { type: string; message: string } };
      expect(body.error.type).toBe("invalid_request_error");
    }
    const plain = await post("/v1/chat/completions", JSON.stringify({ messages: hi }), {
      "content-type": "text/plain",
    });
    expect(plain.status).toBe(400);
  });

  test("deep nesting in a tool's parameters or a response schema: 400, never a 5xx", async () => {
    // Within this server's 64 KiB body limit; the Anthropic tests send a million levels.
    const deep = `${'{"a":'.repeat(5000)}1${"}".repeat(5000)}`;
    const head = '{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"hi"}],';
    for (const tail of [
      `"tools":[{"type":"function","function":{"name":"x","parameters":${deep}}}]}`,
      `"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":${deep}}}}`,
    ]) {
      const res = await post("/v1/chat/completions", head + tail);
      expect(res.status).toBe(400);
      const body = (await res.json()) as { error: { message: string } };
      expect(body.error.message).toContain("deeper than 128 levels");
    }
  }, 60_000);

  test("each wrong field is named in message and param", async () => {
    const cases: Array<[unknown, string]> = [
      [{}, "messages"],
      [{ messages: [] }, "messages"],
      [{ messages: "hello" }, "messages"],
      [{ messages: [{ role: "user" }] }, "messages[0].content"],
      [{ messages: [{ role: "robot", content: "x" }] }, "messages[0].role"],
      [{ messages: [{ role: "user", content: 5 }] }, "messages[0].content"],
      [
        { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] },
        "messages[0].content[0].type",
      ],
      [{ messages: hi, temperature: "hot" }, "temperature"],
      [{ messages: hi, temperature: 3 }, "temperature"],
      [{ messages: hi, top_p: -1 }, "top_p"],
      [{ messages: hi, max_tokens: -1 }, "max_tokens"],
      [{ messages: hi, max_tokens: 1.5 }, "max_tokens"],
      [{ messages: hi, max_completion_tokens: "10" }, "max_completion_tokens"],
      [{ messages: hi, stop: 5 }, "stop"],
      [{ messages: hi, seed: "abc" }, "seed"],
      [{ messages: hi, stream: "yes" }, "stream"],
      [{ messages: hi, logit_bias: { abc: 1 } }, "logit_bias"],
      [{ messages: hi, logit_bias: { "5": 1000 } }, "logit_bias[5]"],
      [{ messages: hi, logit_bias: { "99999999": 1 } }, "logit_bias"],
      [{ messages: hi, top_logprobs: 3 }, "top_logprobs"],
      [{ messages: hi, top_logprobs: 50, logprobs: true }, "top_logprobs"],
      [{ messages: hi, tools: [{ type: "function" }] }, "tools[0].function"],
      [{ messages: hi, tool_choice: "required" }, "tool_choice"],
      [{ messages: hi, tools: [], tool_choice: { type: "function", function: { name: "x" } } }, "tool_choice"],
      [{ messages: hi, response_format: { type: "xml" } }, "response_format"],
      [{ messages: hi, model: 7 }, "model"],
      [{ messages: hi, n: 2 }, "n"],
      [
        {
          messages: [
            ...hi,
            { role: "assistant", tool_calls: [{ type: "function", function: { name: "f", arguments: "{oops" } }] },
          ],
        },
        "messages[1].tool_calls[0].function.arguments",
      ],
      [{ messages: hi, continue_final_message: true }, "continue_final_message"],
    ];
    for (const [body, param] of cases) {
      const { status, error } = await chatError(body);
      expect({ body, status }).toEqual({ body, status: 400 });
      expect({ body, param: error?.param }).toEqual({ body, param });
      expect(error?.message).toContain(param.split(/[.[]/)[0]!);
    }
  });

  test("n > 1 is refused by the client library path too", async () => {
    const e = await client.chat.completions.create({ model: MODEL, messages: hi, n: 3 }).catch((x) => x);
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
    expect((e as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("n");
  });

  test("a prompt longer than the context: 400 that says so", async () => {
    const long = [{ role: "user" as const, content: "word ".repeat(200) }];
    const e = await client.chat.completions.create({ model: MODEL, messages: long }).catch((x) => x);
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
    expect((e as Error).message).toMatch(/prompt is too long: \d+ tokens > 63 maximum/);
    // Streaming requests fail before the stream starts: a real status, not a 200 with an error inside.
    const res = await post("/v1/chat/completions", { messages: long, stream: true });
    expect(res.status).toBe(400);
    const c = await client.completions.create({ model: MODEL, prompt: "word ".repeat(200) }).catch((x) => x);
    expect(c).toBeInstanceOf(OpenAI.BadRequestError);
    expect((c as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("prompt");
  });

  test("absurd max_tokens is clamped to the context left", async () => {
    for (const max_tokens of [10 ** 9, Number.MAX_SAFE_INTEGER]) {
      const r = await client.chat.completions.create({ model: MODEL, messages: hi, max_tokens, temperature: 0 });
      const u = r.usage!;
      expect(u.prompt_tokens + u.completion_tokens).toBeLessThanOrEqual(CONTEXT);
      if (r.choices[0]!.finish_reason === "length") expect(u.prompt_tokens + u.completion_tokens).toBe(CONTEXT);
    }
  });

  test("strict model names: unknown model → 404 (model_not_found)", async () => {
    const e = await client.chat.completions.create({ model: "gpt-4o", messages: hi, max_tokens: 1 }).catch((x) => x);
    expect(e).toBeInstanceOf(OpenAI.NotFoundError);
    expect((e as InstanceType<typeof OpenAI.NotFoundError>).code).toBe("model_not_found");
    const c = await client.completions.create({ model: "gpt-4o", prompt: "x", max_tokens: 1 }).catch((x) => x);
    expect(c).toBeInstanceOf(OpenAI.NotFoundError);
    const ok = await client.chat.completions.create({ model: MODEL, messages: hi, max_tokens: 1 });
    expect(ok.model).toBe(MODEL);
  });

  test("completions: several prompts, suffix, echo with logprobs, best_of: 400 naming the field", async () => {
    const cases: Array<[unknown, string]> = [
      [{ prompt: ["a", "b"] }, "prompt"],
      [{ prompt: [[1, 2], [3]] }, "prompt"],
      [{ prompt: "a", suffix: "b" }, "suffix"],
      [{ prompt: "a", echo: true, logprobs: 1 }, "echo"],
      [{ prompt: "a", best_of: 3 }, "best_of"],
      [{ prompt: "a", n: 2 }, "n"],
      [{ prompt: [99999999] }, "prompt"],
      [{ prompt: 5 }, "prompt"],
      [{}, "prompt"],
      [{ prompt: "a", logprobs: true }, "logprobs"],
    ];
    for (const [body, param] of cases) {
      const res = await post("/v1/completions", body as object);
      const json = (await res.json()) as { error?: { param: string | null } };
      expect({ body, status: res.status, param: json.error?.param }).toEqual({ body, status: 400, param });
    }
  });

  test("unknown routes are 404 in OpenAI's shape", async () => {
    const res = await fetch(`${server.url}/v1/nothing-here`, { headers: { authorization: `Bearer ${KEY}` } });
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { type: string } }).error.type).toBe("not_found_error");
  });

  test("after all of it the engine is idle", async () => {
    const idle = await waitForEngineIdle(server.engine);
    expect(idle.running + idle.prefilling + idle.waiting).toBe(0);
  });
});

describe("engine failures", () => {
  test("an engine error before any output answers with its status, streaming or not", async () => {
    for (const stream of [false, true]) {
      const res = await post("/v1/completions", { prompt: [1, FAULT_TOKEN, 5], max_tokens: 3, stream });
      expect(res.status).toBe(500);
      const body = (await res.json()) as { error: { type: string; message: string } };
      expect(body.error.type).toBe("server_error");
      expect(body.error.message).toContain("fault injection");
    }
  });

  test("a full queue: 429 with retry-after, in OpenAI's shape", async () => {
    const body = { messages: hi, max_tokens: 10 ** 9, temperature: 0, stream: true };
    const responses = await Promise.all(Array.from({ length: 4 }, () => post("/v1/chat/completions", body)));
    const statuses = responses.map((r) => r.status);
    const refused = responses.filter((r) => r.status === 429);
    expect(refused.length).toBeGreaterThan(0);
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    for (const r of refused) {
      expect(r.headers.get("retry-after")).not.toBeNull();
      const json = (await r.json()) as { error: { type: string; code: string } };
      expect(json.error).toMatchObject({ type: "rate_limit_error", code: "rate_limit_exceeded" });
    }
    for (const r of responses) if (r.status === 200) expect(await r.text()).toEndWith("data: [DONE]\n\n");
  });

  test("the engine dies mid-stream: the stream ends with an error event; the server recovers", async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: hi,
      max_tokens: 10 ** 9,
      temperature: 0,
      stream: true,
    });
    let chunks = 0;
    const failure = await (async () => {
      for await (const _ of stream) {
        if (++chunks === 2) process.kill(server.engine.pid!, "SIGKILL");
      }
    })().catch((e) => e);
    expect(failure).toBeInstanceOf(OpenAI.APIError);
    expect((failure as Error).message).toContain("engine process stopped");
    const deadline = performance.now() + 60_000;
    while ((await fetch(`${server.url}/health`)).status !== 200 && performance.now() < deadline) await Bun.sleep(100);
    const r = await client.chat.completions.create({ model: MODEL, messages: hi, max_tokens: 2 });
    expect(r.choices[0]!.finish_reason).toBe("length");
  }, 120_000);
});
