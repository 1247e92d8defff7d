// Tool-call parsing for each family's own output form (src/server/tools.ts),
// whole and streamed in small pieces: Qwen/Hermes <tool_call>, Phi-4-mini
// <|tool_call|>, Mistral [TOOL_CALLS] (array and name[ARGS] forms), Llama 3.x
// <|python_tag|> and bare JSON with "parameters", Gemma's instructed JSON.
import { describe, expect, test } from "bun:test";
import { AnswerReader } from "../../src/server/openai/chat";
import { type ParsedPiece, ToolCallParser, wholeAnswerAsCalls } from "../../src/server/tools";

const TOOLS = ["get_weather", "read_file"];

type Simple = { text: string } | { call: string; args: Record<string, unknown> };

function simplify(pieces: ParsedPiece[]): Simple[] {
  const out: Simple[] = [];
  for (const p of pieces) {
    if (p.type === "tool_call") out.push({ call: p.call.name, args: p.call.arguments });
    else {
      const last = out.at(-1);
      if (last && "text" in last) last.text += p.text;
      else out.push({ text: p.text });
    }
  }
  return out.filter((p) => !("text" in p) || p.text.trim() !== "");
}

function parseWhole(output: string): Simple[] {
  const parser = new ToolCallParser(TOOLS);
  return simplify([...parser.push(output), ...parser.flush()]);
}

/** Every split into pieces of `size` characters gives the same result. */
function parseStreamed(output: string, size: number): Simple[] {
  const parser = new ToolCallParser(TOOLS);
  const pieces: ParsedPiece[] = [];
  for (let i = 0; i < output.length; i += size) pieces.push(...parser.push(output.slice(i, i + size)));
  pieces.push(...parser.flush());
  return simplify(pieces);
}

const weather = { call: "get_weather", args: { city: "Paris", unit: "celsius" } };
const readFile = { call: "read_file", args: { path: "src/a.ts" } };

const CASES: Array<{ family: string; output: string; expected: Simple[] }> = [
  {
    family: "Qwen (Hermes <tool_call>)",
    output:
      'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "read_file", "arguments": {"path": "src/a.ts"}}\n</tool_call>',
    expected: [{ text: "Let me check.\n" }, weather, readFile],
  },
  {
    family: "Phi-4-mini (<|tool_call|> with a JSON array)",
    output:
      '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, {"name": "read_file", "arguments": {"path": "src/a.ts"}}]<|/tool_call|>',
    expected: [weather, readFile],
  },
  {
    family: "Mistral ([TOOL_CALLS] JSON array, v3 tokenizer)",
    output: '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
    expected: [weather],
  },
  {
    family: "Mistral ([TOOL_CALLS]name[ARGS]{...}, v11 tokenizer)",
    output:
      '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}[TOOL_CALLS]read_file[ARGS]{"path": "src/a.ts"}',
    expected: [weather, readFile],
  },
  {
    family: "Llama 3.x (<|python_tag|> JSON with parameters)",
    output: '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
    expected: [weather],
  },
  {
    family: "Gemma (the template's instructed <tool_call> form)",
    output: 'Sure.\n\n<tool_call>\n{"name": "read_file", "arguments": {"path": "src/a.ts"}}\n</tool_call>\n',
    expected: [{ text: "Sure.\n\n" }, readFile],
  },
];

describe("tool calls in each family's format", () => {
  for (const c of CASES) {
    test(`${c.family}: whole output`, () => {
      expect(parseWhole(c.output)).toEqual(c.expected);
    });
    test(`${c.family}: streamed in pieces of 1, 3 and 7 characters`, () => {
      for (const size of [1, 3, 7]) expect(parseStreamed(c.output, size)).toEqual(c.expected);
    });
  }

  test("a call to an unknown tool stays text", () => {
    const out = '<|tool_call|>[{"name": "rm_rf", "arguments": {}}]<|/tool_call|>';
    expect(parseWhole(out)).toEqual([{ text: out }]);
  });

  test("a closing tag cut short at the end of the output still gives the call", () => {
    expect(parseWhole('<tool_call>{"name": "read_file", "arguments": {"path": "src/a.ts"}}</tool_ca')).toEqual([
      readFile,
    ]);
  });

  test("bare answers once special markers are left out of the text: Llama's object, Mistral's and Phi-4's arrays", () => {
    const llama = wholeAnswerAsCalls(
      '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
      TOOLS,
    );
    expect(llama?.map((c) => c.name)).toEqual(["get_weather"]);
    const array = wholeAnswerAsCalls(
      '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "read_file", "arguments": {"path": "x"}}]',
      TOOLS,
    );
    expect(array?.map((c) => c.name)).toEqual(["get_weather", "read_file"]);
    expect(wholeAnswerAsCalls("[1, 2]", TOOLS)).toBeNull();
    expect(wholeAnswerAsCalls("The answer is 4.", TOOLS)).toBeNull();
  });
});

describe("OpenAI answers (AnswerReader): bare calls once special markers are left out of the text", () => {
  const read = (chunks: string[]) => {
    const reader = new AnswerReader(TOOLS, "");
    const pieces = [...chunks.flatMap((c) => reader.push(c)), ...reader.finish()];
    return { pieces, calls: reader.madeCalls };
  };

  test("Mistral's / Phi-4-mini's bare JSON array, streamed, becomes calls", () => {
    const out =
      '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "read_file", "arguments": {"path": "x"}}]';
    const { pieces, calls } = read(out.match(/.{1,5}/gs) ?? []);
    expect(calls).toBe(true);
    expect(pieces.map((p) => (p.type === "tool_call" ? p.call.name : p.text))).toEqual(["get_weather", "read_file"]);
  });

  test("Llama's bare object with parameters becomes a call; prose streams at once; JSON that is no call stays text", () => {
    expect(read(['{"name": "read_file", ', '"parameters": {"path": "a"}}']).calls).toBe(true);
    const reader = new AnswerReader(TOOLS, "");
    expect(reader.push("Hello")).toEqual([{ type: "text", text: "Hello" }]);
    const json = read(['  {"answer": ', "42}"]);
    expect(json.calls).toBe(false);
    expect(json.pieces).toEqual([{ type: "text", text: '  {"answer": 42}' }]);
  });
});
