// The OpenAI-compatible API against a live server, driven by the official
// `openai` client. Protocol tests use a tiny random model (fast; its text is
// noise but deterministic under greedy decoding); one test checks a real
// answer from the embedded SmolLM2.
// Over 400 lines: one live server, shared by every case of the API.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { samplingParams } from "../../src/engine/protocol";
import { chatPlan } from "../../src/server/openai/request-plan";
import type { ChatCompletionBody } from "../../src/server/openai/schema";
import type { RunningServer } from "../../src/server/server";
import { waitForEngineIdle } from "../support/engine-idle";
import { tinyModel } from "../support/models";
import { startTestServer } from "../support/server";

const LONG = 120_000;
const MODEL = "tiny-llama-f16";
let tiny: RunningServer;
let client: OpenAI;

beforeAll(async () => {
  // A short keep-alive interval: streams send `: keep-alive` comments while prefilling.
  tiny = await startTestServer({ model: tinyModel("tiny-llama-f16"), server: { keepAliveMs: 5 } });
  client = new OpenAI({ baseURL: `${tiny.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60_000 });
}, LONG);

afterAll(async () => {
  await tiny?.stop();
});

const ask = (content: string) => [{ role: "user" as const, content }];

async function greedy(
  content: string,
  maxTokens: number,
  extra: Partial<OpenAI.ChatCompletionCreateParamsNonStreaming> = {},
) {
  return client.chat.completions.create({
    model: MODEL,
    messages: ask(content),
    max_tokens: maxTokens,
    temperature: 0,
    ...extra,
  });
}

/** The token id greedy decoding picks first for a chat request (read from the engine directly). */
async function firstGreedyToken(server: RunningServer, body: ChatCompletionBody): Promise<number> {
  const plan = chatPlan(server.session, body);
  for await (const e of server.session.generateText({
    prompt: plan.prompt,
    maxTokens: 1,
    sampling: samplingParams({ logprobs: true }),
  })) {
    if (e.type === "text" && e.logprobs[0]) return e.logprobs[0].token;
  }
  throw new Error("no token");
}

describe("chat completions", () => {
  test("non-streaming: shape, usage, length", async () => {
    const r = await greedy("Hello there", 8);
    expect(r.object).toBe("chat.completion");
    expect(r.id).toStartWith("chatcmpl-");
    expect(r.model).toBe("tiny-llama-f16");
    expect(r.choices).toHaveLength(1);
    const choice = r.choices[0]!;
    expect(choice.message.role).toBe("assistant");
    expect(typeof choice.message.content).toBe("string");
    expect(choice.finish_reason).toBe("length");
    expect(r.usage?.completion_tokens).toBe(8);
    expect(r.usage?.prompt_tokens).toBe(chatPlan(tiny.session, { messages: ask("Hello there") }).prompt.length);
    expect(r.usage?.total_tokens).toBe((r.usage?.prompt_tokens ?? 0) + 8);
    expect(r.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThanOrEqual(0);
  });

  test("the prefix cache shows in usage.prompt_tokens_details.cached_tokens", async () => {
    const content = "A prompt that is sent twice so that the second time it comes from the prefix cache.";
    await greedy(content, 2);
    const again = await greedy(content, 2);
    expect(again.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThan(0);
    expect(again.usage?.prompt_tokens_details?.cached_tokens).toBeLessThan(again.usage?.prompt_tokens ?? 0);
  });

  test("streaming gives the same text, then usage with include_usage, then [DONE]", async () => {
    const whole = await greedy("Tell me a story", 12);
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: ask("Tell me a story"),
      max_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let role: string | undefined;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    let afterUsage = 0;
    for await (const chunk of stream) {
      expect(chunk.object).toBe("chat.completion.chunk");
      if (usage) afterUsage++;
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices[0];
      if (!choice) continue;
      role ??= choice.delta.role;
      text += choice.delta.content ?? "";
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    expect(role).toBe("assistant");
    expect(text).toBe(whole.choices[0]!.message.content!);
    expect(finish).toBe("length");
    expect(usage?.completion_tokens).toBe(12);
    expect(usage?.prompt_tokens).toBe(whole.usage?.prompt_tokens ?? -1);
    expect(afterUsage).toBe(0);
  });

  test("without include_usage no chunk carries usage", async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: ask("Hi"),
      max_tokens: 3,
      stream: true,
    });
    for await (const chunk of stream) expect(chunk.usage ?? null).toBeNull();
  });

  test("SSE framing: keep-alive comments while prefilling, data lines, [DONE]", async () => {
    const res = await fetch(`${tiny.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        messages: ask("word ".repeat(1500)),
        max_tokens: 2,
        stream: true,
        temperature: 0,
      }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toStartWith("text/event-stream");
    const raw = await res.text();
    const events = raw.split("\n\n").filter(Boolean);
    expect(events.some((e) => e === ": keep-alive")).toBe(true);
    expect(events.at(-1)).toBe("data: [DONE]");
    for (const e of events) expect(e.startsWith("data: ") || e.startsWith(": ")).toBe(true);
  });

  test("stop strings end with finish_reason stop, text cut before the stop string", async () => {
    const full = (await greedy("Count for me", 30)).choices[0]!.message.content!;
    const words = full.split(" ").filter((w) => w.length >= 3);
    const stop = words[2] ?? words[0]!;
    const cut = full.slice(0, full.indexOf(stop));
    for (const stopParam of [stop, ["never-appears-xyz", stop]]) {
      const r = await greedy("Count for me", 30, { stop: stopParam });
      expect(r.choices[0]!.finish_reason).toBe("stop");
      expect(r.choices[0]!.message.content).toBe(cut);
    }
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: ask("Count for me"),
      max_tokens: 30,
      temperature: 0,
      stop,
      stream: true,
    });
    let text = "";
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(cut);
    expect(finish).toBe("stop");
  });

  test("max_completion_tokens is max_tokens' newer name", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: ask("Hi"),
      max_completion_tokens: 4,
      temperature: 0,
    });
    expect(r.usage?.completion_tokens).toBe(4);
    expect(r.choices[0]!.finish_reason).toBe("length");
  });

  test("seeds: the same seed repeats the text at temperature 1, another seed does not", async () => {
    const run = async (seed: number) =>
      (await greedy("Seeded", 24, { temperature: 1, seed, top_p: 0.95 })).choices[0]!.message.content;
    const a = await run(42);
    const b = await run(42);
    const c = await run(43);
    expect(a).toBe(b);
    expect(c).not.toBe(a);
  });

  test("extension sampler parameters are accepted (top_k, min_p, repetition_penalty)", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: ask("Hi"),
      max_tokens: 4,
      temperature: 0.8,
      seed: 1,
      // @ts-expect-error extensions beyond OpenAI's parameters
      top_k: 40,
      min_p: 0.05,
      repetition_penalty: 1.1,
    });
    expect(r.usage?.completion_tokens).toBe(4);
  });

  test("logprobs: OpenAI's shape, sorted alternatives, greedy picks the top one, bytes spell the text", async () => {
    const r = await greedy("Logprobs please", 10, { logprobs: true, top_logprobs: 5 });
    const content = r.choices[0]!.logprobs?.content;
    expect(content).toHaveLength(10);
    const bytes: number[] = [];
    for (const entry of content!) {
      expect(typeof entry.token).toBe("string");
      expect(entry.logprob).toBeLessThanOrEqual(0);
      expect(entry.top_logprobs).toHaveLength(5);
      const tops = entry.top_logprobs.map((t) => t.logprob);
      expect([...tops].sort((x, y) => y - x)).toEqual(tops);
      // Greedy, no bias or penalty: the chosen token is the most likely one.
      expect(entry.top_logprobs[0]!.token).toBe(entry.token);
      expect(entry.top_logprobs[0]!.logprob).toBeCloseTo(entry.logprob, 5);
      bytes.push(...entry.bytes!);
    }
    expect(new TextDecoder().decode(new Uint8Array(bytes))).toBe(r.choices[0]!.message.content!);
  });

  test("logprobs in streaming chunks", async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: ask("Logprobs please"),
      max_tokens: 6,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
      stream: true,
    });
    let entries = 0;
    for await (const chunk of stream) {
      for (const e of chunk.choices[0]?.logprobs?.content ?? []) {
        entries++;
        expect(e.top_logprobs).toHaveLength(2);
      }
    }
    expect(entries).toBe(6);
  });

  test("logit_bias: banning greedy's first token changes it; +100 forces a token", async () => {
    const body = { messages: ask("Bias me") };
    const first = await firstGreedyToken(tiny, body);
    const plain = await greedy("Bias me", 4, { logprobs: true });
    const banned = await greedy("Bias me", 4, { logprobs: true, logit_bias: { [first]: -100 } });
    const firstText = plain.choices[0]!.logprobs!.content![0]!.bytes;
    expect(banned.choices[0]!.logprobs!.content![0]!.bytes).not.toEqual(firstText);
    expect(banned.choices[0]!.message.content).not.toBe(plain.choices[0]!.message.content);

    const forcedId = tiny.session.tokenizer.encode("banana", { addSpecialTokens: false })[0]!;
    const forced = await greedy("Bias me", 3, { logprobs: true, logit_bias: { [forcedId]: 100 } });
    const expected = tiny.session.tokenizer.idToToken(forcedId)!.replaceAll("\u2581", " ");
    for (const e of forced.choices[0]!.logprobs!.content!) expect(e.token).toBe(expected);
  });

  test("presence and frequency penalties are accepted and change a repetitive greedy answer", async () => {
    const plain = (await greedy("Repeat", 60)).choices[0]!.message.content;
    const penalized = (await greedy("Repeat", 60, { presence_penalty: 2, frequency_penalty: 2 })).choices[0]!.message
      .content;
    expect(penalized).not.toBe(plain);
  });

  test("response_format json_object and json_schema add the JSON instruction and travel as the constraint", async () => {
    const body: ChatCompletionBody = {
      messages: ask("Give me a person"),
      response_format: {
        type: "json_schema",
        json_schema: { name: "person", schema: { type: "object", properties: { name: { type: "string" } } } },
      },
    };
    const plan = chatPlan(tiny.session, body);
    expect(plan.promptText).toContain("valid JSON");
    expect(plan.promptText).toContain('"properties":{"name":{"type":"string"}}');
    expect(plan.responseFormat).toEqual({
      type: "json_schema",
      schema: body.response_format!.type === "json_schema" ? body.response_format!.json_schema.schema : null,
    });
    for (const response_format of [{ type: "json_object" as const }, { type: "text" as const }]) {
      const r = await greedy("Give me a person", 3, { response_format });
      expect(r.choices[0]!.finish_reason).toBe("length");
    }
  });

  test("message roles and content parts", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [
        { role: "developer", content: "Be brief." },
        { role: "system", content: [{ type: "text", text: "Really brief." }] },
        {
          role: "user",
          content: [
            { type: "text", text: "Part one." },
            { type: "text", text: "Part two." },
          ],
        },
        { role: "assistant", content: "Noted." },
        { role: "user", content: "Go", name: "alice" },
      ],
      max_tokens: 2,
      user: "test-user",
    });
    expect(r.choices[0]!.message.role).toBe("assistant");
    // Phi-3's template (tiny models) drops system messages: they are folded into the first user turn.
    const plan = chatPlan(tiny.session, {
      messages: [
        { role: "developer", content: "Be brief." },
        {
          role: "user",
          content: [
            { type: "text", text: "Part one." },
            { type: "text", text: "Part two." },
          ],
        },
      ],
    });
    expect(plan.promptText).toContain("Be brief.\n\nPart one.\nPart two.");
  });
});

describe("tools", () => {
  const tools: OpenAI.ChatCompletionFunctionTool[] = [
    {
      type: "function",
      function: {
        name: "get_weather",
        description: "Current weather for a city",
        parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
      },
    },
  ];
  // The tiny model cannot write JSON: the call is the assistant message the request continues
  // (continue_final_message), and a +100 bias on end-of-text makes the model end its turn at once.
  // What is tested is the server's side: parsing, response shapes, finish_reason, rendering.
  const callPrefix = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}';
  const endTurn = () => ({ [tiny.session.tokenizer.eosId!]: 100 });

  test("a <tool_call> block becomes tool_calls (non-streaming)", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [...ask("Weather in Paris?"), { role: "assistant", content: callPrefix }],
      tools,
      temperature: 0,
      max_tokens: 8,
      logit_bias: endTurn(),
      // @ts-expect-error extension (as in vLLM)
      continue_final_message: true,
    });
    const choice = r.choices[0]!;
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.content).toBeNull();
    const calls = choice.message.tool_calls!;
    expect(calls).toHaveLength(1);
    const call = calls[0] as OpenAI.ChatCompletionMessageFunctionToolCall;
    expect(call.type).toBe("function");
    expect(call.id).toStartWith("call_");
    expect(call.function.name).toBe("get_weather");
    expect(JSON.parse(call.function.arguments)).toEqual({ city: "Paris" });
  });

  test("streamed tool calls arrive as delta.tool_calls with index, id, name and arguments", async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [...ask("Weather in Paris?"), { role: "assistant", content: `${callPrefix}\n</tool_call>` }],
      tools,
      temperature: 0,
      max_tokens: 8,
      logit_bias: endTurn(),
      stream: true,
      // @ts-expect-error extension (as in vLLM)
      continue_final_message: true,
    });
    const calls: Array<{ index: number; id?: string; name?: string; arguments: string }> = [];
    let finish: string | null = null;
    for await (const chunk of stream) {
      for (const d of chunk.choices[0]?.delta.tool_calls ?? []) {
        calls[d.index] ??= { index: d.index, arguments: "" };
        const c = calls[d.index]!;
        c.id ??= d.id;
        c.name ??= d.function?.name;
        c.arguments += d.function?.arguments ?? "";
      }
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe("tool_calls");
    expect(calls).toHaveLength(1);
    expect(calls[0]!.name).toBe("get_weather");
    expect(calls[0]!.id).toStartWith("call_");
    expect(JSON.parse(calls[0]!.arguments)).toEqual({ city: "Paris" });
  });

  test("calls and results are rendered back into the prompt in the documented format", async () => {
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      ...ask("Weather in Paris?"),
      {
        role: "assistant",
        content: null,
        tool_calls: [
          { id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } },
        ],
      },
      { role: "tool", tool_call_id: "call_1", content: '{"temp_c": 18}' },
    ];
    const r = await client.chat.completions.create({ model: MODEL, messages, tools, max_tokens: 2, temperature: 0 });
    const plan = chatPlan(tiny.session, { messages: messages as ChatCompletionBody["messages"], tools });
    expect(plan.promptText).toContain("# Tools");
    expect(plan.promptText).toContain('<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>');
    expect(plan.promptText).toContain('<tool_response name="get_weather">\n{"temp_c": 18}\n</tool_response>');
    expect(r.usage?.prompt_tokens).toBe(plan.prompt.length);
  });

  test("a forced tool_choice starts the answer with that call's opening", () => {
    const plan = chatPlan(tiny.session, {
      messages: ask("Weather?"),
      tools,
      tool_choice: { type: "function", function: { name: "get_weather" } },
    });
    expect(plan.promptText.endsWith('<tool_call>\n{"name": "get_weather", "arguments": ')).toBe(true);
    const none = chatPlan(tiny.session, { messages: ask("Weather?"), tools, tool_choice: "none" });
    expect(none.promptText).not.toContain("# Tools");
    expect(none.toolNames).toBeNull();
  });

  test("without a call the answer stays text with finish_reason length/stop", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: ask("Hi"),
      tools,
      max_tokens: 3,
      temperature: 0,
    });
    expect(r.choices[0]!.message.tool_calls ?? []).toHaveLength(0);
    expect(r.choices[0]!.finish_reason).toBe("length");
  });
});

describe("completions", () => {
  test("non-streaming and streaming agree; legacy logprobs", async () => {
    const r = await client.completions.create({
      model: "tiny-llama-f16",
      prompt: "Once upon a time",
      max_tokens: 6,
      temperature: 0,
      logprobs: 3,
    });
    expect(r.object).toBe("text_completion");
    expect(r.id).toStartWith("cmpl-");
    const choice = r.choices[0]!;
    expect(choice.finish_reason).toBe("length");
    expect(r.usage?.completion_tokens).toBe(6);
    expect(choice.logprobs?.tokens).toHaveLength(6);
    expect(choice.logprobs?.tokens?.join("")).toBe(choice.text);
    for (const [i, top] of (choice.logprobs?.top_logprobs ?? []).entries()) {
      expect(Object.keys(top).length).toBeGreaterThan(0);
      expect(top[choice.logprobs!.tokens![i]!]).toBeCloseTo(choice.logprobs!.token_logprobs![i]!, 5);
    }
    expect(choice.logprobs?.text_offset?.[0]).toBe(0);

    const stream = await client.completions.create({
      prompt: "Once upon a time",
      model: "x",
      max_tokens: 6,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(choice.text);
    expect(usage?.completion_tokens).toBe(6);
  });

  test("prompt as token ids, echo, stop", async () => {
    const ids = tiny.session.rawPrompt("Once upon a time");
    const byIds = await client.completions.create({ model: "m", prompt: ids, max_tokens: 5, temperature: 0 });
    const byText = await client.completions.create({
      model: "m",
      prompt: "Once upon a time",
      max_tokens: 5,
      temperature: 0,
    });
    expect(byIds.choices[0]!.text).toBe(byText.choices[0]!.text);
    const nested = await client.completions.create({ model: "m", prompt: [ids], max_tokens: 5, temperature: 0 });
    expect(nested.choices[0]!.text).toBe(byText.choices[0]!.text);
    const echo = await client.completions.create({
      model: "m",
      prompt: "Once upon a time",
      max_tokens: 5,
      temperature: 0,
      echo: true,
    });
    expect(echo.choices[0]!.text).toBe(`Once upon a time${byText.choices[0]!.text}`);
    const text = byText.choices[0]!.text;
    const stop = text.trim().slice(0, 3);
    const stopped = await client.completions.create({
      model: "m",
      prompt: ["Once upon a time"],
      max_tokens: 5,
      temperature: 0,
      stop: [stop],
    });
    expect(stopped.choices[0]!.finish_reason).toBe("stop");
    expect(stopped.choices[0]!.text).toBe(text.slice(0, text.indexOf(stop)));
  });

  test("max_tokens defaults to 16 as in OpenAI's legacy API", async () => {
    const r = await client.completions.create({ model: "m", prompt: "Hi", temperature: 0 });
    expect(r.usage?.completion_tokens).toBeLessThanOrEqual(16);
  });
});

describe("models", () => {
  test("list and retrieve", async () => {
    const list = await client.models.list();
    expect(list.data).toHaveLength(1);
    const m = list.data[0]!;
    expect(m.id).toBe("tiny-llama-f16");
    expect(m.object).toBe("model");
    expect(m.owned_by).toBe("pensieve");
    expect((m as unknown as { context_length: number }).context_length).toBe(tiny.session.contextLength!);
    const one = await client.models.retrieve("tiny-llama-f16");
    expect(one.id).toBe("tiny-llama-f16");
    const missing = await client.models.retrieve("gpt-4o").catch((e) => e);
    expect(missing).toBeInstanceOf(OpenAI.NotFoundError);
  });
});

describe("cancellation", () => {
  test("aborting a stream stops generation at once", async () => {
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      { model: MODEL, messages: ask("Go on forever"), max_tokens: 1500, temperature: 0, stream: true },
      { signal: controller.signal },
    );
    let chunks = 0;
    try {
      for await (const _ of stream) {
        if (++chunks === 5) controller.abort();
      }
    } catch (e) {
      expect((e as Error).name).toMatch(/Abort/);
    }
    const idle = await waitForEngineIdle(tiny.engine, 2000);
    expect(idle.running + idle.prefilling + idle.waiting).toBe(0);
    // Nothing keeps stepping afterwards.
    await Bun.sleep(100);
    const later = await waitForEngineIdle(tiny.engine);
    expect(later.steps).toBe(idle.steps);
  });

  test("a non-streaming client that goes away cancels too", async () => {
    const controller = new AbortController();
    const pending = client.chat.completions
      .create(
        { model: MODEL, messages: ask("Go on forever"), max_tokens: 1800, temperature: 0 },
        { signal: controller.signal },
      )
      .catch((e) => e);
    await Bun.sleep(150);
    controller.abort();
    expect(await pending).toBeInstanceOf(Error);
    const idle = await waitForEngineIdle(tiny.engine, 2000);
    expect(idle.running + idle.prefilling + idle.waiting).toBe(0);
  });
});

describe("SmolLM2 (the embedded model)", () => {
  let smol: RunningServer;
  beforeAll(async () => {
    smol = await startTestServer();
  }, LONG);
  afterAll(async () => {
    await smol?.stop();
  });

  test(
    "answers a question; the repeated prompt streams from the prefix cache",
    async () => {
      const c = new OpenAI({ baseURL: `${smol.url}/v1`, apiKey: "unused", maxRetries: 0 });
      const messages = ask("What is the capital of France?");
      const r = await c.chat.completions.create({ model: "smol", messages, temperature: 0, max_tokens: 12 });
      expect(r.choices[0]!.message.content).toContain("Paris");
      expect(r.choices[0]!.finish_reason).toBe("stop");
      const stream = await c.chat.completions.create({
        model: "smol",
        messages,
        temperature: 0,
        max_tokens: 12,
        stream: true,
        stream_options: { include_usage: true },
      });
      let text = "";
      let cached = 0;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta.content ?? "";
        cached = chunk.usage?.prompt_tokens_details?.cached_tokens ?? cached;
      }
      expect(text).toBe(r.choices[0]!.message.content!);
      expect(cached).toBeGreaterThan(0);
    },
    LONG,
  );
});
