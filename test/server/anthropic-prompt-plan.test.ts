// Anthropic request → prompt, with real tokenizers and chat templates (no
// engine): system prompts and system turns in every template family, the
// stable system+tools prefix, tool calls and results in the documented format
// and through a template that handles tools, prefill and forced tool calls.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { buildPrompt } from "../../src/server/anthropic/prompt-plan";
import type { ConversationRequest } from "../../src/server/anthropic/schema";
import { ApiError } from "../../src/server/errors";
import { ModelSession } from "../../src/server/model-session";
import { templateTraits } from "../../src/server/template-traits";
import { renderToolCalls, renderToolResult } from "../../src/server/tools";
import { Tokenizer } from "../../src/text";
import { EMBEDDED_MODEL, PHI3_FILES } from "../support/models";

const smol = ModelSession.loadTokenizer(EMBEDDED_MODEL);
/** April 2024 Phi-3 template: no system role at all. */
const phi3April = Tokenizer.fromHfFolder(PHI3_FILES);
const phi3Json = JSON.parse(readFileSync(join(PHI3_FILES, "tokenizer.json"), "utf8"));
const phi3Config = (file: string) => JSON.parse(readFileSync(join(PHI3_FILES, file), "utf8"));
/** July 2024 Phi-3 template: system turns rendered. */
const phi3July = Tokenizer.fromHfJson(phi3Json, phi3Config("tokenizer_config.2024-07.json"));
/** A template in the style of tool-trained models: tools, tool_calls and tool turns, <tool_call> tags. */
const TOOLS_TEMPLATE = `{%- if tools %}<|system|>
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}Tools:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}Call with <tool_call>{"name": ..., "arguments": ...}</tool_call><|end|>
{% elif messages[0].role == 'system' %}<|system|>
{{ messages[0].content }}<|end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'tool' %}<|user|>
<tool_response>{{ message.content }}</tool_response><|end|>
{% else %}<|{{ message.role }}|>
{{ message.content }}
{%- if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>{{ call.function | tojson }}</tool_call>{% endfor %}{% endif %}<|end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|assistant|>
{% endif %}`;
const withTools = Tokenizer.fromHfJson(phi3Json, {
  ...phi3Config("tokenizer_config.json"),
  chat_template: TOOLS_TEMPLATE,
});

const weather = {
  name: "get_weather",
  description: "Current weather for a city",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

function request(partial: Partial<ConversationRequest>): ConversationRequest {
  return { messages: [{ role: "user", content: "Hi" }], ...partial };
}

function rejects(body: ConversationRequest, tokenizer: Tokenizer, message: RegExp): void {
  let error: unknown;
  try {
    buildPrompt(body, tokenizer);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(ApiError);
  expect((error as ApiError).status).toBe(400);
  expect((error as ApiError).message).toMatch(message);
}

describe("template probing", () => {
  test("tells which templates render system turns and tools", () => {
    expect(templateTraits(smol)).toMatchObject({ leadingSystem: true, systemAnywhere: true, tools: false });
    expect(templateTraits(phi3April)).toMatchObject({ leadingSystem: false, systemAnywhere: false, tools: false });
    expect(templateTraits(phi3July)).toMatchObject({ leadingSystem: true, systemAnywhere: true, tools: false });
    expect(templateTraits(withTools)).toMatchObject({ leadingSystem: true, tools: true, toolCallTags: true });
  });
});

describe("system prompts", () => {
  test("as a string or as text blocks (with cache_control) render the same", () => {
    const asString = buildPrompt(request({ system: "You are terse.\nAnswer in French." }), smol);
    const asBlocks = buildPrompt(
      request({
        system: [
          { type: "text", text: "You are terse." },
          { type: "text", text: "Answer in French.", cache_control: { type: "ephemeral" } },
        ],
      }),
      smol,
    );
    expect(asBlocks.text).toBe(asString.text);
    expect(asString.text).toBe(
      "<|im_start|>system\nYou are terse.\nAnswer in French.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
    expect(asString.tokens).toEqual(smol.encode(asString.text, { addSpecialTokens: false }));
  });

  test("a template without a system role gets it at the top of the first user turn", () => {
    const plan = buildPrompt(request({ system: "Be brief." }), phi3April);
    expect(plan.text).toBe("<s><|user|>\nBe brief.\n\nHi<|end|>\n<|assistant|>\n");
  });

  test("a system turn inside messages stays in place where the template allows it", () => {
    const body = request({
      system: "Top.",
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "<reminder>" },
            { type: "text", text: "hello" },
          ],
        },
        { role: "system", content: [{ type: "text", text: "# Environment", cache_control: { type: "ephemeral" } }] },
      ],
    });
    expect(buildPrompt(body, smol).text).toBe(
      "<|im_start|>system\nTop.<|im_end|>\n<|im_start|>user\n<reminder>\nhello<|im_end|>\n" +
        "<|im_start|>system\n# Environment<|im_end|>\n<|im_start|>assistant\n",
    );
    expect(buildPrompt(body, phi3July).text).toBe(
      "<|system|>\nTop.<|end|>\n<|user|>\n<reminder>\nhello<|end|>\n<|system|>\n# Environment<|end|>\n<|assistant|>\n",
    );
    // Phi-3 April drops system turns: their text joins the user's.
    expect(buildPrompt(body, phi3April).text).toBe(
      "<s><|user|>\nTop.\n\n<reminder>\nhello\n\n# Environment<|end|>\n<|assistant|>\n",
    );
  });

  test("system text must be text", () => {
    rejects(request({ system: 42 }), smol, /^system: expected a string or an array of content blocks/);
    rejects(request({ system: [{ type: "text" }] }), smol, /^system\.0\.text: expected a string/);
    rejects(
      request({ messages: [{ role: "system", content: [{ type: "image", source: {} }] }] }),
      smol,
      /^messages\.0\.content\.0: image blocks are not supported/,
    );
  });
});

describe("tools", () => {
  const history: ConversationRequest["messages"] = [
    { role: "user", content: "Weather in Paris?" },
    {
      role: "assistant",
      content: [
        { type: "text", text: "Let me check." },
        { type: "tool_use", id: "toolu_01", name: "get_weather", input: { city: "Paris" } },
      ],
    },
    {
      role: "user",
      content: [
        { type: "tool_result", tool_use_id: "toolu_01", content: [{ type: "text", text: "18°C, sunny" }] },
        { type: "text", text: "And tomorrow?" },
      ],
    },
  ];

  test("the documented format: instructions after the system prompt, calls and results as blocks", () => {
    const plan = buildPrompt(request({ system: "Be brief.", tools: [weather], messages: history }), smol);
    expect(plan.toolFormat).toBe("documented");
    expect(plan.toolNames).toEqual(["get_weather"]);
    expect(plan.text.startsWith("<|im_start|>system\nBe brief.\n\n# Tools\n")).toBe(true);
    expect(plan.text).toContain(JSON.stringify(weather.input_schema));
    expect(plan.text).toContain(
      `<|im_start|>assistant\nLet me check.\n${renderToolCalls([{ name: "get_weather", arguments: { city: "Paris" } }])}<|im_end|>`,
    );
    expect(plan.text).toContain(
      `<|im_start|>user\n${renderToolResult("get_weather", "18°C, sunny")}\nAnd tomorrow?<|im_end|>\n<|im_start|>assistant\n`,
    );
  });

  test("error results and string content", () => {
    const messages = structuredClone(history);
    messages[2] = {
      role: "user",
      content: [{ type: "tool_result", tool_use_id: "toolu_01", content: "city not found", is_error: true }],
    };
    const plan = buildPrompt(request({ tools: [weather], messages }), phi3April);
    expect(plan.text).toContain(renderToolResult("get_weather", "city not found", true));
  });

  test("the system and tools part is a stable prefix across the turns of a session", () => {
    const turn1 = buildPrompt(request({ system: "Be brief.", tools: [weather], messages: history.slice(0, 1) }), smol);
    const turn2 = buildPrompt(request({ system: "Be brief.", tools: [weather], messages: history }), smol);
    const shared = turn1.text.slice(0, turn1.text.lastIndexOf("<|im_start|>assistant"));
    expect(turn2.text.startsWith(shared)).toBe(true);
    const sharedTokens = smol.encode(shared, { addSpecialTokens: false });
    expect(turn2.tokens.slice(0, sharedTokens.length)).toEqual(sharedTokens);
  });

  test("a template with tool support gets tools, tool_calls and tool turns", () => {
    const plan = buildPrompt(request({ system: "Be brief.", tools: [weather], messages: history }), withTools);
    expect(plan.toolFormat).toBe("template");
    expect(plan.text).not.toContain("# Tools");
    expect(plan.text).toStartWith("<|system|>\nBe brief.\n\nTools:\n");
    expect(plan.text).toContain('"name": "get_weather"');
    expect(plan.text).toContain(
      '<|assistant|>\nLet me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|end|>',
    );
    expect(plan.text).toContain("<|user|>\n<tool_response>18°C, sunny</tool_response><|end|>\n<|user|>\nAnd tomorrow?");
  });

  test("tool_choice none leaves the tools out; deferred tools are callable but not described", () => {
    const none = buildPrompt(request({ tools: [weather], tool_choice: { type: "none" } }), smol);
    expect(none.text).not.toContain("# Tools");
    expect(none.toolNames).toEqual([]);
    const deferred = buildPrompt(
      request({ tools: [weather, { name: "rare_tool", input_schema: { type: "object" }, defer_loading: true }] }),
      smol,
    );
    expect(deferred.text).not.toContain("rare_tool");
    expect(deferred.toolNames).toEqual(["get_weather", "rare_tool"]);
  });

  test('tool_choice "tool" and "any" open the call in the prompt', () => {
    const one = buildPrompt(request({ tools: [weather], tool_choice: { type: "tool", name: "get_weather" } }), smol);
    expect(one.forcedCallJson).toBe('{"name": "get_weather", "arguments": ');
    expect(one.text).toEndWith('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": ');
    expect(one.text).toContain('You must call the tool "get_weather".');
    const any = buildPrompt(request({ tools: [weather], tool_choice: { type: "any" } }), smol);
    expect(any.text).toEndWith('<tool_call>\n{"name": "');
    rejects(
      request({ tools: [weather], tool_choice: { type: "tool", name: "nope" } }),
      smol,
      /^tool_choice\.name: no tool/,
    );
    rejects(request({ tools: [weather], tool_choice: { type: "sometimes" } }), smol, /^tool_choice\.type: expected/);
  });
});

describe("messages", () => {
  test("a final assistant turn is a prefill the reply continues", () => {
    const plan = buildPrompt(
      request({
        messages: [
          { role: "user", content: "Count to three." },
          { role: "assistant", content: [{ type: "text", text: "One, two," }] },
        ],
      }),
      smol,
    );
    expect(plan.continuation).toBe("One, two,");
    expect(plan.text).toEndWith("<|im_start|>user\nCount to three.<|im_end|>\n<|im_start|>assistant\nOne, two,");
  });

  test("neighbouring user turns merge; thinking blocks are dropped", () => {
    const plan = buildPrompt(
      request({
        messages: [
          { role: "user", content: "A" },
          { role: "user", content: "B" },
          {
            role: "assistant",
            content: [
              { type: "thinking", thinking: "hmm", signature: "x" },
              { type: "text", text: "C" },
            ],
          },
          { role: "user", content: "D" },
        ],
      }),
      smol,
    );
    expect(plan.text).toContain("<|im_start|>user\nA\n\nB<|im_end|>\n<|im_start|>assistant\nC<|im_end|>\n");
    expect(plan.text).not.toContain("hmm");
  });

  test("unreadable blocks in a tool result become a note; images elsewhere are refused by field", () => {
    const plan = buildPrompt(
      request({
        tools: [weather],
        messages: [
          { role: "user", content: "Look" },
          { role: "assistant", content: [{ type: "tool_use", id: "t1", name: "get_weather", input: {} }] },
          {
            role: "user",
            content: [
              {
                type: "tool_result",
                tool_use_id: "t1",
                content: [
                  { type: "image", source: { type: "base64" } },
                  { type: "tool_reference", tool_name: "Read" },
                ],
              },
            ],
          },
        ],
      }),
      smol,
    );
    expect(plan.text).toContain("[image omitted: this model reads text only]\n[tool_reference omitted]");
    rejects(
      request({
        messages: [
          {
            role: "user",
            content: [
              { type: "text", text: "x" },
              { type: "image", source: {} },
            ],
          },
        ],
      }),
      smol,
      /^messages\.0\.content\.1: image blocks are not supported/,
    );
  });

  test("malformed content names the field", () => {
    rejects(
      request({ messages: [{ role: "user", content: 5 }] }),
      smol,
      /^messages\.0\.content: expected a string or an array/,
    );
    rejects(
      request({ messages: [{ role: "user", content: [{ text: "x" }] }] }),
      smol,
      /^messages\.0\.content\.0\.type/,
    );
    rejects(
      request({ messages: [{ role: "user", content: [{ type: "text", text: 1 }] }] }),
      smol,
      /^messages\.0\.content\.0\.text/,
    );
    rejects(request({ messages: [{ role: "robot", content: "x" }] }), smol, /^messages\.0\.role: expected "user"/);
    rejects(
      request({ messages: [{ role: "user", content: [{ type: "tool_result", content: "x" }] }] }),
      smol,
      /^messages\.0\.content\.0\.tool_use_id: expected a string/,
    );
    rejects(
      request({
        messages: [
          { role: "user", content: "x" },
          { role: "assistant", content: [{ type: "tool_use", id: "a", name: "b", input: [1] }] },
        ],
      }),
      smol,
      /^messages\.1\.content\.0\.input: expected an object/,
    );
  });
});
