// The Anthropic Messages API against a live server with the embedded
// SmolLM2-135M-Instruct, where real answers matter: the official SDK, the raw
// SSE event order, stop sequences, a tool call the model writes itself and the
// round trip back, and usage counts (prefix-cache reads included). Greedy
// decoding; prompts stay short (prefill runs at ~100 ms a token on this CPU).

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import type { RunningServer } from "../../src/server/server";
import { parseSse, postJson } from "../support/anthropic-sse";
import { startTestServer } from "../support/server";

/** Sampling fields the SDK's types no longer list (newer models ignore them); the API still takes them. */
const GREEDY = { temperature: 0 };
const QUESTION = "What is the capital of France?";
const DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

const weather: Anthropic.Tool = {
  name: "get_weather",
  description: "Current weather for a city",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

let server: RunningServer;
let client: Anthropic;

beforeAll(async () => {
  server = await startTestServer();
  client = new Anthropic({ baseURL: server.url, apiKey: "unused", maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await server?.stop();
});

function textOf(message: Anthropic.Message): string {
  return message.content.map((b) => (b.type === "text" ? b.text : "")).join("");
}

describe("Anthropic API with SmolLM2", () => {
  let firstAnswer: Anthropic.Message;

  test("answers a question; usage counts the real prompt tokens", async () => {
    firstAnswer = await client.messages.create({
      model: "claude-opus-4-8",
      max_tokens: 24,
      ...GREEDY,
      messages: [{ role: "user", content: QUESTION }],
    });
    expect(textOf(firstAnswer)).toContain("Paris");
    expect(firstAnswer.id).toMatch(/^msg_/);
    expect(firstAnswer.type).toBe("message");
    expect(firstAnswer.role).toBe("assistant");
    expect(firstAnswer.model).toBe("claude-opus-4-8");
    expect(firstAnswer.stop_reason).toBe("end_turn");
    expect(firstAnswer.stop_sequence).toBeNull();

    // The prompt as SmolLM2's template writes it, counted by its own tokenizer.
    const prompt = `<|im_start|>system\n${DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n${QUESTION}<|im_end|>\n<|im_start|>assistant\n`;
    const promptTokens = server.session.tokenizer.encode(prompt, { addSpecialTokens: false }).length;
    const usage = firstAnswer.usage;
    expect(usage.input_tokens + (usage.cache_read_input_tokens ?? 0)).toBe(promptTokens);
    expect(usage.output_tokens).toBeGreaterThan(0);
    expect(usage.output_tokens).toBeLessThanOrEqual(24);

    const counted = await client.messages.countTokens({
      model: "claude-opus-4-8",
      messages: [{ role: "user", content: QUESTION }],
    });
    expect(counted.input_tokens).toBe(promptTokens);
  }, 60_000);

  test("streams through the SDK; the repeated prompt is read from the prefix cache", async () => {
    const stream = client.messages.stream({
      model: "claude-opus-4-8",
      max_tokens: 24,
      ...GREEDY,
      messages: [{ role: "user", content: QUESTION }],
    });
    let deltas = "";
    stream.on("text", (text) => {
      deltas += text;
    });
    const message = await stream.finalMessage();
    expect(textOf(message)).toContain("Paris");
    expect(deltas).toBe(textOf(message));
    expect(message.stop_reason).toBe("end_turn");
    const total = firstAnswer.usage.input_tokens + (firstAnswer.usage.cache_read_input_tokens ?? 0);
    expect(message.usage.cache_read_input_tokens).toBeGreaterThan(0);
    expect(message.usage.input_tokens + (message.usage.cache_read_input_tokens ?? 0)).toBe(total);
  }, 60_000);

  test("raw SSE: the exact event sequence, with a query string and beta header", async () => {
    const response = await postJson(
      server,
      "/v1/messages?beta=true",
      {
        model: "claude-opus-4-8",
        max_tokens: 24,
        ...GREEDY,
        stream: true,
        messages: [{ role: "user", content: QUESTION }],
      },
      { "anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14" },
    );
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toStartWith("text/event-stream");
    const events = parseSse(await response.text());
    const names = events.map((e) => e.event);
    const deltas = names.filter((n) => n === "content_block_delta").length;
    expect(deltas).toBeGreaterThan(0);
    expect(names).toEqual([
      "message_start",
      "content_block_start",
      "ping",
      ...Array<string>(deltas).fill("content_block_delta"),
      "content_block_stop",
      "message_delta",
      "message_stop",
    ]);
    for (const e of events) expect(e.data.type).toBe(e.event);
    const start = events[0]?.data.message as Anthropic.Message;
    expect(start).toMatchObject({ type: "message", role: "assistant", model: "claude-opus-4-8", content: [] });
    expect(start.stop_reason).toBeNull();
    expect(events[1]?.data).toEqual({
      type: "content_block_start",
      index: 0,
      content_block: { type: "text", text: "" },
    });
    const text = events
      .filter((e) => e.event === "content_block_delta")
      .map((e) => {
        const delta = e.data.delta as { type: string; text: string };
        expect(delta.type).toBe("text_delta");
        expect(e.data.index).toBe(0);
        return delta.text;
      })
      .join("");
    expect(text).toContain("Paris");
    const end = events.at(-2)?.data as { delta: { stop_reason: string }; usage: Anthropic.Usage };
    expect(end.delta.stop_reason).toBe("end_turn");
    expect(end.usage.output_tokens).toBeGreaterThan(0);
  }, 60_000);

  test("stop_sequences end the reply before the sequence", async () => {
    const message = await client.messages.create({
      model: "claude-opus-4-8",
      max_tokens: 24,
      ...GREEDY,
      stop_sequences: ["Paris"],
      messages: [{ role: "user", content: QUESTION }],
    });
    expect(message.stop_reason).toBe("stop_sequence");
    expect(message.stop_sequence).toBe("Paris");
    expect(textOf(message)).not.toContain("Paris");
    expect(textOf(firstAnswer)).toStartWith(textOf(message));
  }, 60_000);

  let toolTurn: Anthropic.Message;

  test("a tool call the model writes comes out as a tool_use block (streamed as input_json_delta)", async () => {
    const stream = client.messages.stream({
      model: "claude-opus-4-8",
      max_tokens: 64,
      ...GREEDY,
      tools: [weather],
      tool_choice: { type: "tool", name: "get_weather" },
      messages: [{ role: "user", content: "What is the weather in Paris?" }],
    });
    const jsonDeltas: string[] = [];
    stream.on("inputJson", (partial) => {
      jsonDeltas.push(partial);
    });
    toolTurn = await stream.finalMessage();
    expect(toolTurn.stop_reason).toBe("tool_use");
    expect(toolTurn.content).toHaveLength(1);
    const call = toolTurn.content[0] as Anthropic.ToolUseBlock;
    expect(call.type).toBe("tool_use");
    expect(call.id).toMatch(/^toolu_/);
    expect(call.name).toBe("get_weather");
    // The arguments are the model's own JSON (a 135M model's, so their content is not checked).
    expect(typeof call.input).toBe("object");
    expect(JSON.parse(jsonDeltas.join(""))).toEqual(call.input);
    expect(toolTurn.usage.output_tokens).toBeGreaterThan(1);
  }, 60_000);

  test("the tool result goes back and the model answers; the system+tools prefix comes from the cache", async () => {
    const call = toolTurn.content[0] as Anthropic.ToolUseBlock;
    const message = await client.messages.create({
      model: "claude-opus-4-8",
      max_tokens: 24,
      ...GREEDY,
      tools: [weather],
      messages: [
        { role: "user", content: "What is the weather in Paris?" },
        { role: "assistant", content: toolTurn.content },
        {
          role: "user",
          content: [{ type: "tool_result", tool_use_id: call.id, content: [{ type: "text", text: "18°C and sunny" }] }],
        },
      ],
    });
    expect(["end_turn", "tool_use", "max_tokens"]).toContain(message.stop_reason as string);
    expect(message.content.length).toBeGreaterThan(0);
    // Tool descriptions and the first user turn were prefilled by the previous request.
    expect(message.usage.cache_read_input_tokens).toBeGreaterThan(100);
    const counted = await client.messages.countTokens({
      model: "claude-opus-4-8",
      tools: [weather],
      messages: [
        { role: "user", content: "What is the weather in Paris?" },
        { role: "assistant", content: toolTurn.content },
        { role: "user", content: [{ type: "tool_result", tool_use_id: call.id, content: "18°C and sunny" }] },
      ],
    });
    expect(counted.input_tokens).toBe(message.usage.input_tokens + (message.usage.cache_read_input_tokens ?? 0));
  }, 60_000);
});
