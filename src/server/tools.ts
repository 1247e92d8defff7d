// Tool use, shared by the OpenAI and Anthropic APIs.
//
// Rendering: a model whose chat template handles `tools` gets them through the
// template. Otherwise Pensieve describes the tools in the system message in a
// documented format (the widely used <tool_call> JSON blocks) and renders past
// calls and results in the same format, so the conversation stays consistent.
//
// Parsing: ToolCallParser scans streamed model output for each family's form
// (TOOL_CALL_FORMATS) and turns it into calls; the text around stays text:
//   Qwen / Hermes   <tool_call>{"name": "...", "arguments": {...}}</tool_call>
//   Phi-4-mini      <|tool_call|>[{"name": "...", "arguments": {...}}]<|/tool_call|>
//   Mistral         [TOOL_CALLS][{"name": "...", "arguments": {...}}]  or  [TOOL_CALLS]name[ARGS]{...}
//   Llama 3.x       <|python_tag|>{"name": "...", "parameters": {...}}  or the bare JSON object
// Also ```json fenced or bare JSON (an object, or an array of objects) with
// "name" and "arguments"/"parameters" when the whole answer is the call(s):
// Gemma has no call syntax of its own and follows the template's instructions.

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

/** A family's call markers; `close` null: the call runs to the end of the output. */
export interface ToolCallFormat {
  family: string;
  open: string;
  close: string | null;
}

export const TOOL_CALL_FORMATS: readonly ToolCallFormat[] = [
  { family: "hermes", open: TOOL_CALL_OPEN, close: TOOL_CALL_CLOSE },
  { family: "phi4", open: "<|tool_call|>", close: "<|/tool_call|>" },
  { family: "mistral", open: "[TOOL_CALLS]", close: null },
  { family: "llama3", open: "<|python_tag|>", close: null },
];

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

/**
 * One body's calls: a JSON object, a JSON array of objects, or Mistral's
 * `name[ARGS]{...}` (repeated for several calls). Null when it is none of these.
 */
export function parseToolCalls(body: string, idPrefix = "call"): ToolCall[] | null {
  const text = stripFence(body).trim();
  if (text.startsWith("[")) {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return null;
    }
    if (!Array.isArray(value) || value.length === 0) return null;
    const calls = value.map((v) => parseToolCallJson(JSON.stringify(v), idPrefix));
    return calls.every((c) => c !== null) ? (calls as ToolCall[]) : null;
  }
  if (text.includes("[ARGS]")) {
    const calls: ToolCall[] = [];
    for (const part of text.split("[TOOL_CALLS]")) {
      const at = part.indexOf("[ARGS]");
      if (at < 0) return null;
      const call = parseToolCallJson(
        JSON.stringify({ name: part.slice(0, at).trim(), arguments: safeJson(part.slice(at + 6)) }),
        idPrefix,
      );
      if (!call) return null;
      calls.push(call);
    }
    return calls;
  }
  const one = parseToolCallJson(text, idPrefix);
  return one ? [one] : null;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
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
  readonly #formats: readonly ToolCallFormat[];
  #buffer = "";
  /** The format of the call being read, or null outside a call. */
  #inCall: ToolCallFormat | null = null;
  #sawText = false;
  #calls = 0;

  /** `knownNames`: when given, calls to other names stay text. */
  constructor(knownNames: Iterable<string> | null = null, idPrefix = "call", formats = TOOL_CALL_FORMATS) {
    this.#known = knownNames ? new Set(knownNames) : null;
    this.#idPrefix = idPrefix;
    this.#formats = formats;
  }

  get callCount(): number {
    return this.#calls;
  }

  push(chunk: string): ParsedPiece[] {
    this.#buffer += chunk;
    const out: ParsedPiece[] = [];
    while (true) {
      const format = this.#inCall;
      if (format) {
        // A call that runs to the end of the output is read in flush().
        if (format.close === null) return out;
        const end = this.#buffer.indexOf(format.close);
        if (end < 0) return out;
        const body = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + format.close.length);
        this.#inCall = null;
        this.#emitCalls(body, `${format.open}${body}${format.close}`, out);
        continue;
      }
      let first: { at: number; format: ToolCallFormat } | null = null;
      for (const f of this.#formats) {
        const at = this.#buffer.indexOf(f.open);
        if (at >= 0 && (first === null || at < first.at)) first = { at, format: f };
      }
      if (first) {
        this.#text(this.#buffer.slice(0, first.at), out);
        this.#buffer = this.#buffer.slice(first.at + first.format.open.length);
        this.#inCall = first.format;
        continue;
      }
      // Hold back a tail that could begin an opening tag.
      let keep = 0;
      for (const f of this.#formats) {
        for (let n = Math.min(f.open.length - 1, this.#buffer.length); n > keep; n--) {
          if (f.open.startsWith(this.#buffer.slice(-n))) {
            keep = n;
            break;
          }
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
    const format = this.#inCall;
    if (format) {
      this.#inCall = null;
      const body = format.close === null ? rest : stripPartialClose(rest, format.close);
      this.#emitCalls(body, `${format.open}${rest}`, out);
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

  #emitCalls(body: string, raw: string, out: ParsedPiece[]): void {
    const calls = parseToolCalls(body, this.#idPrefix);
    if (calls?.every((c) => !this.#known || this.#known.has(c.name))) {
      for (const call of calls) {
        this.#calls++;
        out.push({ type: "tool_call", call });
      }
    } else {
      this.#text(raw, out);
    }
  }

  /** Whether any non-blank text came out (besides calls). */
  get sawText(): boolean {
    return this.#sawText;
  }
}

/** A closing tag cut short at the end of the output ("</tool_ca"). */
function stripPartialClose(rest: string, close: string): string {
  const trimmed = rest.replace(/\s+$/, "");
  for (let n = close.length; n > 1; n--) {
    if (trimmed.endsWith(close.slice(0, n))) return trimmed.slice(0, -n);
  }
  return rest;
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
  const calls = wholeAnswerAsCalls(text, knownNames, idPrefix);
  return calls?.length === 1 ? (calls[0] as ToolCall) : null;
}

/**
 * The same for several calls: a bare JSON array of calls is what Mistral
 * ([TOOL_CALLS]) and Phi-4-mini (<|tool_call|>) write once their special
 * marker tokens are left out of the text.
 */
export function wholeAnswerAsCalls(text: string, knownNames: Iterable<string>, idPrefix = "call"): ToolCall[] | null {
  const calls = parseToolCalls(text, idPrefix);
  if (!calls) return null;
  const known = new Set(knownNames);
  return calls.every((c) => known.has(c.name)) ? calls : null;
}
