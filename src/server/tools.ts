// Tool use, shared by the OpenAI and Anthropic APIs.
//
// Rendering: a model whose chat template handles `tools` gets them through the
// template. Otherwise Pensieve describes the tools in the system message in a
// documented format (the widely used <tool_call> JSON blocks) and renders past
// calls and results in the same format, so the conversation stays consistent.
//
// Parsing: ToolCallParser scans streamed model output for
//   <tool_call>{"name": "...", "arguments": {...}}</tool_call>
// blocks (also ```json fenced or bare JSON objects with "name" and
// "arguments" when the whole answer is one call) and turns them into calls;
// the text around them stays text.

/** A tool as both APIs describe it: a name, a description, a JSON Schema for the input. */
export interface ToolSpec {
  name: string;
  description?: string;
  inputSchema: Record<string, unknown>;
}

/** A call the model made. `arguments` is the parsed JSON object. */
export interface ToolCall {
  id: string;
  name: string;
  arguments: Record<string, unknown>;
}

/** "auto" (may call), "none" (must not), "required" (must call one), or one tool by name. */
export type ToolChoice = { type: "auto" } | { type: "none" } | { type: "required" } | { type: "tool"; name: string };

export const TOOL_CALL_OPEN = "<tool_call>";
export const TOOL_CALL_CLOSE = "</tool_call>";

/** Whether a chat template renders `tools` itself. */
export function templateSupportsTools(template: string | undefined): boolean {
  return template !== undefined && /\btools\b/.test(template);
}

/** The system-prompt section that teaches a model without tool support how to call tools. */
export function toolInstructions(tools: readonly ToolSpec[], choice: ToolChoice): string {
  const list = tools
    .map((t) => JSON.stringify({ name: t.name, description: t.description ?? "", parameters: t.inputSchema }))
    .join("\n");
  let rule = "Call a tool only when it helps answer the user.";
  if (choice.type === "required") rule = "You must call at least one tool before answering.";
  if (choice.type === "tool") rule = `You must call the tool "${choice.name}".`;
  return [
    "# Tools",
    "",
    "You can call these tools (JSON Schema for each one's arguments):",
    "<tools>",
    list,
    "</tools>",
    "",
    "To call a tool, reply with one block per call, exactly in this form:",
    `${TOOL_CALL_OPEN}`,
    '{"name": "<tool name>", "arguments": {<arguments as JSON>}}',
    `${TOOL_CALL_CLOSE}`,
    `Results come back in <tool_response> blocks. ${rule}`,
  ].join("\n");
}

/** An assistant turn that made calls, in the documented format. */
export function renderToolCalls(calls: readonly Pick<ToolCall, "name" | "arguments">[]): string {
  return calls
    .map((c) => `${TOOL_CALL_OPEN}\n${JSON.stringify({ name: c.name, arguments: c.arguments })}\n${TOOL_CALL_CLOSE}`)
    .join("\n");
}

/** A tool result, in the documented format. */
export function renderToolResult(name: string | null, content: string, isError = false): string {
  const head = name ? ` name="${name}"` : "";
  return `<tool_response${head}${isError ? ' error="true"' : ""}>\n${content}\n</tool_response>`;
}

let callCounter = 0;
function newToolCallId(prefix = "call"): string {
  callCounter = (callCounter + 1) % 1_000_000;
  return `${prefix}_${Date.now().toString(36)}${callCounter.toString(36).padStart(4, "0")}${Math.random().toString(36).slice(2, 8)}`;
}

/** Parses {"name", "arguments"|"parameters"|"input"} JSON into a call, or null. */
function parseToolCallJson(text: string, idPrefix = "call"): ToolCall | null {
  let value: unknown;
  try {
    value = JSON.parse(text.trim());
  } catch {
    return null;
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) return null;
  const v = value as Record<string, unknown>;
  const name = v.name;
  if (typeof name !== "string" || name.length === 0) return null;
  let args = v.arguments ?? v.parameters ?? v.input ?? {};
  if (typeof args === "string") {
    try {
      args = JSON.parse(args);
    } catch {
      return null;
    }
  }
  if (!args || typeof args !== "object" || Array.isArray(args)) return null;
  return { id: newToolCallId(idPrefix), name, arguments: args as Record<string, unknown> };
}

export type ParsedPiece = { type: "text"; text: string } | { type: "tool_call"; call: ToolCall };

/**
 * Splits streamed text into text and tool calls. Text that may be the start
 * of a <tool_call> tag is held back until it is settled. A block that does not
 * parse as a call is given back as text.
 */
export class ToolCallParser {
  readonly #known: ReadonlySet<string> | null;
  readonly #idPrefix: string;
  #buffer = "";
  #inCall = false;
  #sawText = false;
  #calls = 0;

  /** `knownNames`: when given, calls to other names stay text. */
  constructor(knownNames: Iterable<string> | null = null, idPrefix = "call") {
    this.#known = knownNames ? new Set(knownNames) : null;
    this.#idPrefix = idPrefix;
  }

  get callCount(): number {
    return this.#calls;
  }

  push(chunk: string): ParsedPiece[] {
    this.#buffer += chunk;
    const out: ParsedPiece[] = [];
    while (true) {
      if (this.#inCall) {
        const end = this.#buffer.indexOf(TOOL_CALL_CLOSE);
        if (end < 0) return out;
        const body = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + TOOL_CALL_CLOSE.length);
        this.#inCall = false;
        this.#emitCall(body, `${TOOL_CALL_OPEN}${body}${TOOL_CALL_CLOSE}`, out);
        continue;
      }
      const start = this.#buffer.indexOf(TOOL_CALL_OPEN);
      if (start >= 0) {
        this.#text(this.#buffer.slice(0, start), out);
        this.#buffer = this.#buffer.slice(start + TOOL_CALL_OPEN.length);
        this.#inCall = true;
        continue;
      }
      // Hold back a tail that could begin the opening tag.
      let keep = 0;
      for (let n = Math.min(TOOL_CALL_OPEN.length - 1, this.#buffer.length); n > 0; n--) {
        if (TOOL_CALL_OPEN.startsWith(this.#buffer.slice(-n))) {
          keep = n;
          break;
        }
      }
      this.#text(this.#buffer.slice(0, this.#buffer.length - keep), out);
      this.#buffer = this.#buffer.slice(this.#buffer.length - keep);
      return out;
    }
  }

  /** End of output: an unclosed block is tried as a call, then given back as text. */
  flush(): ParsedPiece[] {
    const out: ParsedPiece[] = [];
    const rest = this.#buffer;
    this.#buffer = "";
    if (this.#inCall) {
      this.#inCall = false;
      const body = rest.replace(/<\/tool_call?>?\s*$/, "");
      this.#emitCall(body, `${TOOL_CALL_OPEN}${rest}`, out);
    } else {
      this.#text(rest, out);
    }
    return out;
  }

  #text(text: string, out: ParsedPiece[]): void {
    if (!text) return;
    if (text.trim()) this.#sawText = true;
    const last = out.at(-1);
    if (last?.type === "text") last.text += text;
    else out.push({ type: "text", text });
  }

  #emitCall(body: string, raw: string, out: ParsedPiece[]): void {
    const call = parseToolCallJson(stripFence(body), this.#idPrefix);
    if (call && (!this.#known || this.#known.has(call.name))) {
      this.#calls++;
      out.push({ type: "tool_call", call });
    } else {
      this.#text(raw, out);
    }
  }

  /** Whether any non-blank text came out (besides calls). */
  get sawText(): boolean {
    return this.#sawText;
  }
}

function stripFence(body: string): string {
  const m = /^\s*```(?:json)?\s*([\s\S]*?)\s*```\s*$/.exec(body);
  return m ? (m[1] as string) : body;
}

/**
 * Models without tool training sometimes answer with the call as a bare JSON
 * object (possibly fenced) instead of a <tool_call> block. When the whole
 * answer is one such object naming a known tool, it is a call.
 */
export function wholeAnswerAsCall(text: string, knownNames: Iterable<string>, idPrefix = "call"): ToolCall | null {
  const call = parseToolCallJson(stripFence(text), idPrefix);
  if (!call) return null;
  return new Set(knownNames).has(call.name) ? call : null;
}
