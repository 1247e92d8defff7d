// Model output → Anthropic content blocks: realistic outputs of small models
// (text, <tool_call> blocks, bare JSON, invented tools), streamed in chunks of
// every size, and forced calls that end where their JSON object closes.
import { describe, expect, test } from "bun:test";
import {
  type BlockEvent,
  type ContentBlock,
  JsonObjectEnd,
  ReplyAssembler,
  type ReplyOptions,
} from "../../src/server/anthropic/reply";

const TOOLS = ["get_weather", "search"];

function options(partial: Partial<ReplyOptions> = {}): ReplyOptions {
  return { toolNames: TOOLS, continuation: "", forcedCallJson: null, singleCall: false, ...partial };
}

/** Feeds `output` in chunks of `size` characters; returns the events and the final content. */
function assemble(output: string, size: number, opts: ReplyOptions = options()) {
  const reply = new ReplyAssembler(opts);
  const events: BlockEvent[] = [];
  for (let i = 0; i < output.length && !reply.complete; i += size)
    events.push(...reply.push(output.slice(i, i + size)));
  events.push(...reply.finish());
  return { events, content: reply.content, toolCalls: reply.toolCalls, complete: reply.complete };
}

/** What a client rebuilds from the events (as the SDK's MessageStream does). */
function rebuild(events: BlockEvent[]): ContentBlock[] {
  const blocks: ContentBlock[] = [];
  const json: string[] = [];
  for (const e of events) {
    if (e.type === "content_block_start") {
      expect(e.index).toBe(blocks.length);
      blocks.push(structuredClone(e.content_block));
      json.push("");
    } else if (e.type === "content_block_delta") {
      const block = blocks[e.index] as ContentBlock;
      if (e.delta.type === "text_delta" && block.type === "text") block.text += e.delta.text;
      if (e.delta.type === "input_json_delta") json[e.index] += e.delta.partial_json;
    } else if (e.type === "content_block_stop") {
      const block = blocks[e.index] as ContentBlock;
      if (block.type === "tool_use") block.input = JSON.parse(json[e.index] as string);
    }
  }
  return blocks;
}

function withoutIds(content: ContentBlock[]) {
  return content.map((b) => (b.type === "tool_use" ? { ...b, id: b.id.startsWith("toolu_") ? "toolu" : b.id } : b));
}

const CHUNK_SIZES = [1, 3, 7, 1000];

describe("ReplyAssembler", () => {
  test("plain text is one text block, in any chunking", () => {
    for (const size of CHUNK_SIZES) {
      const { events, content } = assemble("The capital of France is Paris.", size);
      expect(content).toEqual([{ type: "text", text: "The capital of France is Paris." }]);
      expect(rebuild(events)).toEqual(content);
    }
  });

  test("text, then a call (Qwen/Hermes style), in any chunking", () => {
    const output =
      'I will look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n';
    for (const size of CHUNK_SIZES) {
      const { events, content, toolCalls } = assemble(output, size);
      expect(withoutIds(content)).toEqual([
        { type: "text", text: "I will look that up.\n" },
        { type: "tool_use", id: "toolu", name: "get_weather", input: { city: "Paris" } },
      ]);
      expect(toolCalls).toBe(1);
      expect(rebuild(events)).toEqual(content);
    }
  });

  test("parallel calls without text between them are two tool_use blocks", () => {
    const output =
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' +
      '<tool_call>\n{"name": "search", "arguments": {"query": "Paris {events}"}}\n</tool_call>';
    const { content } = assemble(output, 5);
    expect(withoutIds(content)).toEqual([
      { type: "tool_use", id: "toolu", name: "get_weather", input: { city: "Paris" } },
      { type: "tool_use", id: "toolu", name: "search", input: { query: "Paris {events}" } },
    ]);
    const ids = content.map((b) => (b.type === "tool_use" ? b.id : ""));
    expect(ids[0]).toMatch(/^toolu_[a-z0-9]+$/);
    expect(new Set(ids).size).toBe(2);
  });

  test("single-call mode (disable_parallel_tool_use) ends after the first call", () => {
    const output =
      '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' +
      '<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call>';
    const { content, complete } = assemble(output, 4, options({ singleCall: true }));
    expect(content.map((b) => b.type)).toEqual(["tool_use"]);
    expect(complete).toBe(true);
  });

  test("a call to a tool that does not exist stays text", () => {
    const output = '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>';
    const { content } = assemble(output, 3);
    expect(content).toEqual([{ type: "text", text: output }]);
  });

  test("broken JSON inside the tags stays text", () => {
    const output = 'Sure <tool_call>{"name": "get_weather", "arguments": {city: Paris}}</tool_call>';
    expect(assemble(output, 2).content).toEqual([{ type: "text", text: output }]);
  });

  test("an unclosed call at the end of the output is still a call", () => {
    const { content } = assemble('<tool_call>\n{"name": "search", "arguments": {"query": "mlx"}}\n', 6);
    expect(withoutIds(content)).toEqual([{ type: "tool_use", id: "toolu", name: "search", input: { query: "mlx" } }]);
  });

  test("a whole answer that is a bare or fenced JSON call is a call; other JSON stays text", () => {
    for (const output of [
      '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
      '```json\n{"name": "get_weather", "parameters": {"city": "Oslo"}}\n```',
    ]) {
      const { content, events } = assemble(output, 4);
      expect(withoutIds(content)).toEqual([
        { type: "tool_use", id: "toolu", name: "get_weather", input: { city: "Oslo" } },
      ]);
      expect(rebuild(events)).toEqual(content);
    }
    const json = '{"answer": 42}';
    expect(assemble(json, 4).content).toEqual([{ type: "text", text: json }]);
  });

  test("without tools, tags are just text", () => {
    const output = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>';
    expect(assemble(output, 3, options({ toolNames: [] })).content).toEqual([{ type: "text", text: output }]);
  });

  test("an empty reply is one empty text block", () => {
    const { content, events } = assemble("", 1);
    expect(content).toEqual([{ type: "text", text: "" }]);
    expect(events.map((e) => e.type)).toEqual(["content_block_start", "content_block_stop"]);
  });

  test("a forced call ends where its JSON object closes, whatever follows", () => {
    const continuation = '<tool_call>\n{"name": "get_weather", "arguments": ';
    for (const size of CHUNK_SIZES) {
      const { content, complete } = assemble(
        '{"city": "Paris \\"}\\" {x}"}}\n</tool_call> and then the model rambles on',
        size,
        options({ continuation, forcedCallJson: '{"name": "get_weather", "arguments": ' }),
      );
      expect(complete).toBe(true);
      expect(withoutIds(content)).toEqual([
        { type: "tool_use", id: "toolu", name: "get_weather", input: { city: 'Paris "}" {x}' } },
      ]);
    }
  });

  test('tool_choice "any": the model names the tool', () => {
    const { content } = assemble(
      'search", "arguments": {"query": "weather"}}',
      2,
      options({ continuation: '<tool_call>\n{"name": "', forcedCallJson: '{"name": "' }),
    );
    expect(withoutIds(content)).toEqual([
      { type: "tool_use", id: "toolu", name: "search", input: { query: "weather" } },
    ]);
  });

  test("a prefill that opened a call lets the model finish it", () => {
    const { content } = assemble(
      '"Paris"}}\n</tool_call>',
      3,
      options({ continuation: 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": ' }),
    );
    expect(withoutIds(content)).toEqual([
      { type: "tool_use", id: "toolu", name: "get_weather", input: { city: "Paris" } },
    ]);
  });
});

describe("JsonObjectEnd", () => {
  test("finds the closing brace across chunks, strings and escapes", () => {
    const end = new JsonObjectEnd();
    expect(end.feed('{"a": "}')).toBe(-1);
    expect(end.feed('\\"", "b": [1, {"c": 2}]')).toBe(-1);
    expect(end.feed("} trailing")).toBe(1);
  });
});
