// Model output → Anthropic content blocks, as a sequence of block events that
// the streaming route sends as they come and the non-streaming route collects.
// Tool calls are parsed from the text (<tool_call> JSON blocks, see tools.ts)
// into tool_use blocks; the text around them stays text blocks.
import type { Usage } from "../model-session";
import { type ParsedPiece, TOOL_CALL_CLOSE, ToolCallParser, wholeAnswerAsCalls } from "../tools";

export interface TextBlock {
  type: "text";
  text: string;
}

export interface ToolUseBlock {
  type: "tool_use";
  id: string;
  name: string;
  input: Record<string, unknown>;
}

export type ContentBlock = TextBlock | ToolUseBlock;

export type BlockEvent =
  | { type: "content_block_start"; index: number; content_block: ContentBlock }
  | {
      type: "content_block_delta";
      index: number;
      delta: { type: "text_delta"; text: string } | { type: "input_json_delta"; partial_json: string };
    }
  | { type: "content_block_stop"; index: number };

export type StopReason = "end_turn" | "max_tokens" | "stop_sequence" | "tool_use" | "model_context_window_exceeded";

export interface AnthropicUsage {
  /** Prompt tokens not read from the prefix cache (Anthropic counts cached ones apart). */
  input_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
  output_tokens: number;
}

export function anthropicUsage(usage: Usage): AnthropicUsage {
  return {
    input_tokens: usage.promptTokens - usage.cachedTokens,
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: usage.cachedTokens,
    output_tokens: usage.completionTokens,
  };
}

/**
 * Follows a JSON object through streamed text and says where it closes: a
 * forced tool call ends there, whatever the model would write next.
 */
export class JsonObjectEnd {
  #depth = 0;
  #inString = false;
  #escaped = false;
  #opened = false;

  /** Feeds text; returns the index just after the closing brace, or -1. */
  feed(text: string): number {
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (this.#inString) {
        if (this.#escaped) this.#escaped = false;
        else if (c === "\\") this.#escaped = true;
        else if (c === '"') this.#inString = false;
        continue;
      }
      if (c === '"') this.#inString = true;
      else if (c === "{" || c === "[") {
        this.#depth++;
        this.#opened = true;
      } else if (c === "}" || c === "]") {
        this.#depth--;
        if (this.#opened && this.#depth === 0) return i + 1;
      }
    }
    return -1;
  }
}

export interface ReplyOptions {
  /** Tool names the reply may call; empty turns tool parsing off. */
  toolNames: string[];
  /** What the prompt already holds of the reply (prefill, forced call opening): parsed, not sent. */
  continuation: string;
  /** The reply starts inside a tool call whose JSON object begins with this text. */
  forcedCallJson: string | null;
  singleCall: boolean;
}

/**
 * Turns streamed text into block events. With tools on, whitespace between
 * blocks is dropped, and an answer that starts like bare JSON is held until
 * the end, when it may turn out to be one whole tool call.
 */
export class ReplyAssembler {
  readonly #parser: ToolCallParser | null;
  readonly #toolNames: string[];
  readonly #singleCall: boolean;
  readonly #blocks: ContentBlock[] = [];
  #open: TextBlock | null = null;
  #pendingSpace = "";
  /** Text held while it may be a bare JSON call. */
  #held: string | null = null;
  #sawText = false;
  #forcedEnd: JsonObjectEnd | null = null;
  #done = false;

  constructor(options: ReplyOptions) {
    this.#toolNames = options.toolNames;
    this.#singleCall = options.singleCall;
    this.#parser = options.toolNames.length > 0 ? new ToolCallParser(options.toolNames, "toolu") : null;
    // The prompt's part of the reply puts the parser in the right state; its pieces are not ours to send.
    if (this.#parser && options.continuation) this.#parser.push(options.continuation);
    if (options.forcedCallJson !== null) {
      this.#forcedEnd = new JsonObjectEnd();
      this.#forcedEnd.feed(options.forcedCallJson);
    }
  }

  /** Content so far (complete after finish()). */
  get content(): ContentBlock[] {
    return this.#blocks;
  }

  get toolCalls(): number {
    return this.#blocks.filter((b) => b.type === "tool_use").length;
  }

  /** True once the reply is complete by itself (a forced call closed, or the single allowed call came). */
  get complete(): boolean {
    return this.#done;
  }

  push(text: string): BlockEvent[] {
    if (this.#done || !text) return [];
    if (!this.#parser) return this.#text(text);
    let chunk = text;
    let closesForcedCall = false;
    if (this.#forcedEnd) {
      const end = this.#forcedEnd.feed(text);
      if (end >= 0) {
        // The forced call is complete: close its block ourselves and ignore what follows.
        chunk = `${text.slice(0, end)}\n${TOOL_CALL_CLOSE}`;
        closesForcedCall = true;
      }
    }
    const events = this.#pieces(this.#parser.push(chunk));
    if (closesForcedCall) this.#done = true;
    return events;
  }

  finish(): BlockEvent[] {
    const events = this.#parser ? this.#pieces(this.#parser.flush()) : [];
    if (this.#held !== null) {
      const held = this.#held;
      this.#held = null;
      const calls = wholeAnswerAsCalls(held, this.#toolNames, "toolu");
      if (calls)
        for (const call of this.#singleCall ? calls.slice(0, 1) : calls)
          events.push(...this.#call(call.id, call.name, call.arguments));
      else events.push(...this.#emitText(held));
    }
    if (this.#blocks.length === 0) events.push(...this.#emitText(this.#pendingSpace));
    events.push(...this.#close());
    return events;
  }

  #pieces(pieces: ParsedPiece[]): BlockEvent[] {
    const events: BlockEvent[] = [];
    for (const piece of pieces) {
      if (this.#done) break;
      if (piece.type === "text") events.push(...this.#text(piece.text));
      else {
        events.push(...this.#call(piece.call.id, piece.call.name, piece.call.arguments));
        if (this.#singleCall) this.#done = true;
      }
    }
    return events;
  }

  #text(text: string): BlockEvent[] {
    if (!this.#parser) return this.#emitText(text);
    if (this.#held !== null) {
      this.#held += text;
      return [];
    }
    if (!this.#open) {
      // Whitespace between tool calls is no block of its own.
      if (!text.trim()) {
        this.#pendingSpace += text;
        return [];
      }
      const start = (this.#pendingSpace + text).trimStart();
      if (!this.#sawText && this.toolCalls === 0 && (start.startsWith("{") || start.startsWith("```"))) {
        this.#held = this.#pendingSpace + text;
        this.#pendingSpace = "";
        return [];
      }
    }
    this.#sawText = true;
    const events = this.#emitText(this.#pendingSpace + text);
    this.#pendingSpace = "";
    return events;
  }

  #emitText(text: string): BlockEvent[] {
    const events: BlockEvent[] = [];
    if (!this.#open) {
      this.#open = { type: "text", text: "" };
      this.#blocks.push(this.#open);
      events.push({
        type: "content_block_start",
        index: this.#blocks.length - 1,
        content_block: { type: "text", text: "" },
      });
    }
    if (text) {
      this.#open.text += text;
      events.push({ type: "content_block_delta", index: this.#blocks.length - 1, delta: { type: "text_delta", text } });
    }
    return events;
  }

  #call(id: string, name: string, input: Record<string, unknown>): BlockEvent[] {
    const events = this.#close();
    this.#pendingSpace = "";
    const index = this.#blocks.length;
    this.#blocks.push({ type: "tool_use", id, name, input });
    events.push(
      { type: "content_block_start", index, content_block: { type: "tool_use", id, name, input: {} } },
      { type: "content_block_delta", index, delta: { type: "input_json_delta", partial_json: JSON.stringify(input) } },
      { type: "content_block_stop", index },
    );
    return events;
  }

  #close(): BlockEvent[] {
    if (!this.#open) return [];
    this.#open = null;
    return [{ type: "content_block_stop", index: this.#blocks.length - 1 }];
  }
}
