// The Anthropic Messages API protocol against live servers with tiny random
// models (their text is noise; the prompts, tokens and events are real):
// request shapes Claude Code sends, stop reasons, tool turns, count_tokens,
// keep-alives, cancellation, authentication, strict model names, and every
// error path in Anthropic's error shape.
// Over 400 lines: one live server per model, shared by every case of the protocol.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import type { RunningServer } from "../../src/server/server";
import { expectAnthropicError, parseSse, postJson, waitForIdleEngine } from "../support/anthropic-sse";
import { tinyModel } from "../support/models";
import { startTestServer } from "../support/server";

const weather: Anthropic.Tool = {
  name: "get_weather",
  description: "Current weather for a city",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

/** Sampling fields the SDK's types no longer list; the API still takes them. */
const SAMPLING = { temperature: 0.7, top_p: 0.9, top_k: 40 };

function promptTokens(usage: Anthropic.Usage): number {
  return usage.input_tokens + (usage.cache_read_input_tokens ?? 0);
}

describe("Anthropic API protocol (tiny Phi-3)", () => {
  let server: RunningServer;
  let client: Anthropic;

  beforeAll(async () => {
    // Short keep-alive interval: prefill of a long prompt sends pings.
    server = await startTestServer({ model: tinyModel("tiny-phi3"), server: { keepAliveMs: 50 } });
    client = new Anthropic({ baseURL: server.url, apiKey: "unused", maxRetries: 0 });
  }, 30_000);

  afterAll(async () => {
    await server?.stop();
  });

  test("system as a string or as blocks: the same prompt", async () => {
    const asString = await client.messages.create({
      model: "claude-opus-4-8",
      max_tokens: 4,
      system: "You are terse.\nAnswer in French.",
      messages: [{ role: "user", content: "Hi" }],
    });
    const asBlocks = await client.messages.create({
      model: "claude-opus-4-8",
      max_tokens: 4,
      system: [
        { type: "text", text: "You are terse." },
        { type: "text", text: "Answer in French.", cache_control: { type: "ephemeral" } },
      ],
      messages: [{ role: "user", content: "Hi" }],
    });
    expect(promptTokens(asBlocks.usage)).toBe(promptTokens(asString.usage));
    // Same prompt twice: the second one is (mostly) read from the prefix cache.
    expect(asBlocks.usage.cache_read_input_tokens).toBeGreaterThan(promptTokens(asString.usage) / 2);
    expect(asBlocks.usage.input_tokens).toBeGreaterThanOrEqual(1);
  }, 30_000);

  test("max_tokens ends the reply with stop_reason max_tokens", async () => {
    const message = await client.messages.create({
      model: "claude-opus-4-8",
      max_tokens: 5,
      ...SAMPLING,
      messages: [{ role: "user", content: "Tell me a long story." }],
    });
    expect(message.stop_reason).toBe("max_tokens");
    expect(message.usage.output_tokens).toBe(5);
    expect(message.content).toHaveLength(1);
    expect(message.content[0]?.type).toBe("text");
  }, 30_000);

  test("multi-turn, a system turn inside messages, and a prefill", async () => {
    const messages: Anthropic.MessageParam[] = [
      { role: "user", content: "Hello" },
      { role: "assistant", content: "Hi! How can I help?" },
      {
        role: "user",
        content: [
          { type: "text", text: "<system-reminder>be nice</system-reminder>" },
          { type: "text", text: "Tell me a joke." },
        ],
      },
    ];
    const plain = await client.messages.countTokens({ model: "m", messages });
    const withSystemTurn = [
      ...messages,
      { role: "system", content: [{ type: "text", text: "# Environment\nPlatform: linux" }] },
    ] as unknown as Anthropic.MessageParam[];
    const counted = await client.messages.countTokens({ model: "m", messages: withSystemTurn });
    expect(counted.input_tokens).toBeGreaterThan(plain.input_tokens);
    const answer = await client.messages.create({ model: "m", max_tokens: 3, messages: withSystemTurn });
    expect(promptTokens(answer.usage)).toBe(counted.input_tokens);

    const prefilled = await client.messages.create({
      model: "m",
      max_tokens: 3,
      messages: [...messages, { role: "assistant", content: "Why did the" }],
    });
    expect(prefilled.content[0]?.type).toBe("text");
    expect((prefilled.content[0] as Anthropic.TextBlock).text).not.toStartWith("Why did the");
  }, 30_000);

  test("tool turns: tool_use and tool_result (string, blocks, is_error) round trip; count_tokens matches", async () => {
    const body: Anthropic.MessageCreateParamsNonStreaming = {
      model: "claude-opus-4-8",
      max_tokens: 3,
      system: "You can check the weather.",
      tools: [weather],
      messages: [
        { role: "user", content: "Weather in Paris and Oslo?" },
        {
          role: "assistant",
          content: [
            { type: "text", text: "Checking both." },
            { type: "tool_use", id: "toolu_01A", name: "get_weather", input: { city: "Paris" } },
            { type: "tool_use", id: "toolu_01B", name: "get_weather", input: { city: "Oslo" } },
          ],
        },
        {
          role: "user",
          content: [
            { type: "tool_result", tool_use_id: "toolu_01A", content: "18°C, sunny" },
            {
              type: "tool_result",
              tool_use_id: "toolu_01B",
              content: [{ type: "text", text: "unknown city" }],
              is_error: true,
            },
          ],
        },
      ],
    };
    const message = await client.messages.create(body);
    const { max_tokens: _unused, ...countBody } = body;
    const counted = await client.messages.countTokens(countBody);
    expect(promptTokens(message.usage)).toBe(counted.input_tokens);
    // Without the tools the prompt is shorter: count_tokens includes their descriptions.
    const { tools: _tools, ...noTools } = countBody;
    expect((await client.messages.countTokens(noTools)).input_tokens).toBeLessThan(counted.input_tokens - 50);
    // tool_choice none: no tool call. Sampling is unseeded (temperature 1), so 3 tokens may end the turn.
    const none = await client.messages.create({ ...body, tool_choice: { type: "none" } });
    expect(["max_tokens", "end_turn"]).toContain(none.stop_reason as string);
    expect(none.content.every((b) => b.type !== "tool_use")).toBe(true);
  }, 30_000);

  test("a Claude Code request: odd fields, system blocks with cache_control, a system turn, many tools", async () => {
    const tools = Array.from({ length: 24 }, (_, i) => ({
      name: `Tool${i}`,
      description: `Tool number ${i}.`,
      input_schema: {
        $schema: "https://json-schema.org/draft/2020-12/schema",
        type: "object",
        properties: { path: { type: "string", description: "A path" } },
        required: ["path"],
        additionalProperties: false,
      },
      ...(i === 23 ? { defer_loading: true } : {}),
    }));
    const response = await postJson(
      server,
      "/v1/messages?beta=true",
      {
        model: "claude-opus-4-8",
        max_tokens: 64000,
        stream: true,
        system: [
          { type: "text", text: "x-anthropic-billing-header: cc_version=2.1.332;" },
          { type: "text", text: "You are a Claude agent.", cache_control: { type: "ephemeral" } },
          { type: "text", text: "Be careful.", cache_control: { type: "ephemeral", ttl: "1h" } },
        ],
        messages: [
          {
            role: "user",
            content: [
              { type: "text", text: "<system-reminder>context</system-reminder>" },
              { type: "text", text: "hello", cache_control: { type: "ephemeral" } },
            ],
          },
          { role: "system", content: [{ type: "text", text: "# Environment", cache_control: { type: "ephemeral" } }] },
        ],
        tools,
        thinking: { type: "adaptive", display: "omitted" },
        output_config: { effort: "medium" },
        context_management: { edits: [{ type: "clear_thinking_20251015", keep: "all" }] },
        metadata: { user_id: '{"device_id":"abc"}' },
      },
      { "anthropic-beta": "claude-code-20250219,context-management-2025-06-27", "anthropic-version": "2023-06-01" },
    );
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    // Read until the first content event, then hang up (the reply would run to the context end).
    let body = "";
    while (!body.includes("content_block_delta")) {
      const { value, done } = await reader.read();
      if (done) break;
      body += new TextDecoder().decode(value);
    }
    await reader.cancel();
    const events = parseSse(body.slice(0, body.lastIndexOf("\n\n") + 2));
    const start = events.find((e) => e.event === "message_start")?.data.message as Anthropic.Message;
    expect(start.model).toBe("claude-opus-4-8");
    expect(start.usage.input_tokens).toBeGreaterThan(24 * 20);
    await waitForIdleEngine(server);
  }, 30_000);

  test("count_tokens equals the tokens the engine was given, tools and system included", async () => {
    const body = {
      model: "claude-opus-4-8",
      system: [{ type: "text" as const, text: "Be brief." }],
      tools: [weather],
      tool_choice: { type: "auto" as const },
      messages: [{ role: "user" as const, content: "Weather in Rome?" }],
    };
    const counted = await client.messages.countTokens(body);
    const message = await client.messages.create({ ...body, max_tokens: 1 });
    expect(promptTokens(message.usage)).toBe(counted.input_tokens);
    // An independent count: the rendered prompt includes the tool's JSON schema.
    const schemaTokens = server.session.tokenizer.encode(JSON.stringify(weather.input_schema), {
      addSpecialTokens: false,
    }).length;
    expect(counted.input_tokens).toBeGreaterThan(schemaTokens + 50);
  }, 30_000);

  test("keep-alive pings flow while a long prompt is prefilled", async () => {
    // Its own server with a 2 ms interval: the tiny model prefills 1,500 tokens in well under the file's 50 ms.
    const pinging = await startTestServer({ model: tinyModel("tiny-phi3"), server: { keepAliveMs: 2 } });
    try {
      const long = "The quick brown fox jumps over the lazy dog. ".repeat(150);
      const response = await postJson(pinging, "/v1/messages", {
        model: "m",
        max_tokens: 2,
        stream: true,
        messages: [{ role: "user", content: long }],
      });
      const events = parseSse(await response.text());
      const first = events.findIndex((e) => e.event === "message_start");
      expect(first).toBeGreaterThan(0);
      expect(events.slice(0, first).every((e) => e.event === "ping")).toBe(true);
      expect(events.at(-1)?.event).toBe("message_stop");
      const start = events[first]?.data.message as Anthropic.Message;
      expect(start.usage.input_tokens).toBeGreaterThan(1500);
    } finally {
      await pinging.stop();
    }
  }, 30_000);

  test("a client that aborts a stream stops generation at once", async () => {
    const stream = await client.messages.create({
      model: "m",
      max_tokens: 1500,
      stream: true,
      messages: [{ role: "user", content: "Write forever." }],
    });
    let deltas = 0;
    for await (const event of stream) {
      if (event.type === "content_block_delta") deltas++;
      if (deltas === 3) break; // the SDK aborts the request
    }
    // 1500 tokens would take seconds; the engine lets go within a step or two.
    const ms = await waitForIdleEngine(server);
    expect(ms).toBeLessThan(1000);
    const stats = await server.engine.stats();
    expect(stats.running + stats.prefilling + stats.waiting).toBe(0);
  }, 30_000);

  test("a client that hangs up on a non-streaming request stops generation too", async () => {
    const controller = new AbortController();
    const pending = postJson(
      server,
      "/v1/messages",
      { model: "m", max_tokens: 1500, messages: [{ role: "user", content: "Write forever." }] },
      {},
      controller.signal,
    ).catch((e: Error) => e);
    const deadline = performance.now() + 5000;
    while ((await server.engine.stats()).running === 0 && performance.now() < deadline) await Bun.sleep(20);
    expect((await server.engine.stats()).running).toBe(1);
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    expect(await waitForIdleEngine(server)).toBeLessThan(2000);
  }, 30_000);

  describe("errors in Anthropic's shape, naming the field", () => {
    const valid = { model: "m", max_tokens: 4, messages: [{ role: "user", content: "Hi" }] };

    test("invalid JSON", async () => {
      const message = await expectAnthropicError(
        await postJson(server, "/v1/messages", '{"model": "m", '),
        400,
        "invalid_request_error",
      );
      expect(message).toContain("JSON");
    }, 30_000);

    test("missing or empty messages, missing max_tokens", async () => {
      const { messages: _m, ...noMessages } = valid;
      expect(
        await expectAnthropicError(await postJson(server, "/v1/messages", noMessages), 400, "invalid_request_error"),
      ).toStartWith("messages");
      expect(
        await expectAnthropicError(
          await postJson(server, "/v1/messages", { ...valid, messages: [] }),
          400,
          "invalid_request_error",
        ),
      ).toStartWith("messages");
      const { max_tokens: _t, ...noMax } = valid;
      expect(
        await expectAnthropicError(await postJson(server, "/v1/messages", noMax), 400, "invalid_request_error"),
      ).toStartWith("max_tokens");
    }, 30_000);

    test("deep nesting anywhere (a tool's schema, content, unknown fields): a quick 400, never a 5xx", async () => {
      const deep = (n: number) => `${'{"a":'.repeat(n)}1${"}".repeat(n)}`;
      const head = '{"model":"m","max_tokens":2,';
      for (const [path, body, starts] of [
        ["/v1/messages", `${head}"messages":[{"role":7,"content":${deep(1_000_000)}}]}`, "the request"],
        ["/v1/messages", `${head}"messages":[{"role":"user","content":"hi"}],"metadata":${deep(200)}}`, "the request"],
        [
          "/v1/messages",
          `${head}"messages":[{"role":"user","content":"hi"}],"tools":[{"name":"x","input_schema":${deep(1_000_000)}}]}`,
          "the request",
        ],
        [
          "/v1/messages/count_tokens",
          `{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"name":"x","input_schema":${deep(1_000_000)}}]}`,
          "the request",
        ],
      ] as const) {
        const message = await expectAnthropicError(await postJson(server, path, body), 400, "invalid_request_error");
        expect(message).toStartWith(starts);
      }
      // A realistic tool schema (a few levels) is fine.
      const ok = await postJson(
        server,
        "/v1/messages/count_tokens",
        `{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"name":"x","input_schema":${deep(20)}}]}`,
      );
      expect(ok.status).toBe(200);
    }, 60_000);

    test("wrong types", async () => {
      const cases: Array<[Record<string, unknown>, string]> = [
        [{ max_tokens: "many" }, "max_tokens"],
        [{ max_tokens: 0 }, "max_tokens"],
        [{ temperature: 3 }, "temperature"],
        [{ top_k: -1 }, "top_k"],
        [{ stream: "yes" }, "stream"],
        [{ stop_sequences: "END" }, "stop_sequences"],
        [{ messages: [{ role: 1, content: "x" }] }, "messages.0.role"],
        [{ messages: [{ role: "user" }] }, "messages.0.content"],
        [{ messages: [{ role: "user", content: 5 }] }, "messages.0.content"],
        [{ messages: [{ role: "user", content: [{ type: "text", text: 5 }] }] }, "messages.0.content.0.text"],
        [{ messages: [{ role: "user", content: [{ type: "image", source: {} }] }] }, "messages.0.content.0"],
        [{ system: 7 }, "system"],
        [{ tools: [{ description: "no name" }] }, "tools.0.name"],
        [{ tools: [weather], tool_choice: { type: "tool" } }, "tool_choice.name"],
      ];
      for (const [patch, field] of cases) {
        const message = await expectAnthropicError(
          await postJson(server, "/v1/messages", { ...valid, ...patch }),
          400,
          "invalid_request_error",
        );
        expect(`${field}: ${message}`).toStartWith(`${field}: ${field}`);
      }
    }, 30_000);

    test("the SDK raises BadRequestError", async () => {
      const error = await client.messages
        .create({ model: "m", max_tokens: 4, messages: [{ role: "robot" as "user", content: "x" }] })
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(Anthropic.BadRequestError);
      expect((error as InstanceType<typeof Anthropic.BadRequestError>).message).toContain("messages.0.role");
    }, 30_000);

    test("unknown paths answer 404 in the same shape", async () => {
      await expectAnthropicError(await postJson(server, "/v1/messages/batches", valid), 404, "not_found_error");
    }, 30_000);
  });

  // Last: it kills the engine.
  test("an engine failure after the stream began is an SSE error event", async () => {
    const response = await postJson(server, "/v1/messages", {
      model: "m",
      max_tokens: 1500,
      stream: true,
      messages: [{ role: "user", content: "Write forever." }],
    });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    let body = "";
    while (!body.includes("content_block_delta")) {
      const { value, done } = await reader.read();
      if (done) break;
      body += new TextDecoder().decode(value);
    }
    server.engine.kill(); // as a native crash would
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      body += new TextDecoder().decode(value);
    }
    const events = parseSse(body);
    const last = events.at(-1);
    expect(last?.event).toBe("error");
    expect(last?.data).toMatchObject({ type: "error", error: { type: "overloaded_error" } });
    expect(events.some((e) => e.event === "message_stop")).toBe(false);
    await server.ready;
  }, 30_000);
});

describe("Anthropic API with an API key, strict model names and a 64-token context", () => {
  let server: RunningServer;
  const key = "sk-test-0123456789";

  beforeAll(async () => {
    server = await startTestServer({
      model: tinyModel("tiny-llama-f16"),
      modelId: "tiny-llama",
      server: { apiKey: key, strictModelNames: true },
      engine: { maxContext: 64 },
    });
  }, 30_000);

  afterAll(async () => {
    await server?.stop();
  });

  const body = { model: "tiny-llama", max_tokens: 4, messages: [{ role: "user", content: "Hi" }] };

  test("401 without a key or with a wrong one; the SDK works with the right one (x-api-key)", async () => {
    await expectAnthropicError(await postJson(server, "/v1/messages", body), 401, "authentication_error");
    await expectAnthropicError(
      await postJson(server, "/v1/messages", body, { "x-api-key": "wrong" }),
      401,
      "authentication_error",
    );
    const wrong = new Anthropic({ baseURL: server.url, apiKey: "wrong", maxRetries: 0 });
    expect(
      await wrong.messages.create(body as Anthropic.MessageCreateParamsNonStreaming).catch((e) => e),
    ).toBeInstanceOf(Anthropic.AuthenticationError);
    const right = new Anthropic({ baseURL: server.url, apiKey: key, maxRetries: 0 });
    const message = await right.messages.create(body as Anthropic.MessageCreateParamsNonStreaming);
    expect(message.model).toBe("tiny-llama");
    expect(
      (await right.messages.countTokens({ model: "tiny-llama", messages: body.messages as Anthropic.MessageParam[] }))
        .input_tokens,
    ).toBe(promptTokens(message.usage));
  }, 30_000);

  test("an unknown model is 404 in strict mode", async () => {
    const message = await expectAnthropicError(
      await postJson(server, "/v1/messages", { ...body, model: "claude-opus-4-8" }, { "x-api-key": key }),
      404,
      "not_found_error",
    );
    expect(message).toContain("claude-opus-4-8");
  }, 30_000);

  test("a prompt longer than the context: 400 before any stream, streaming or not", async () => {
    const long = { ...body, messages: [{ role: "user", content: "word ".repeat(100) }] };
    for (const stream of [false, true]) {
      const message = await expectAnthropicError(
        await postJson(server, "/v1/messages", { ...long, stream }, { "x-api-key": key }),
        400,
        "invalid_request_error",
      );
      expect(message).toMatch(
        /^prompt is too long: \d+ tokens > 63 maximum\. The loaded model, .+, holds 64 tokens .*`pensieve setup --model phi3-mini-mlx`\.$/,
      );
    }
    // count_tokens still counts it (clients use it to decide when to compact).
    const counted = await postJson(server, "/v1/messages/count_tokens", long, { "x-api-key": key });
    expect(((await counted.json()) as { input_tokens: number }).input_tokens).toBeGreaterThan(64);
  }, 30_000);

  test("max_tokens beyond the context left is clamped, not refused", async () => {
    const right = new Anthropic({ baseURL: server.url, apiKey: key, maxRetries: 0 });
    // (The SDK wants streaming for a max_tokens this large.)
    const message = await right.messages
      .stream({ ...(body as Anthropic.MessageCreateParamsNonStreaming), max_tokens: 64000 })
      .finalMessage();
    const used = promptTokens(message.usage) + message.usage.output_tokens;
    expect(used).toBeLessThanOrEqual(64);
    if (message.stop_reason !== "end_turn") {
      expect(message.stop_reason).toBe("model_context_window_exceeded");
      expect(used).toBe(64);
    }
  }, 30_000);
});
