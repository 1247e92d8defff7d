// POST /v1/chat/completions: one choice, streamed as SSE chunks or returned
// whole. Tool calls are parsed out of the answer as it streams.
import type { AppContext } from "../app";
import { ApiError } from "../errors";
import type { TextEvent, TokenLogprob } from "../model-session";
import { type SseItem, sseResponse } from "../sse";
import { type ToolCall, ToolCallParser, wholeAnswerAsCalls } from "../tools";
import { requireObject, validate } from "../validate";
import {
  chatLogprobs,
  finishReason,
  type ResponseMeta,
  responseId,
  streamChunk,
  unixSeconds,
  usageBody,
} from "./format";
import type { ChatPlan } from "./request-plan";
import { ChatCompletionRequest } from "./schema";
import { sseError, startGeneration, streamFailure } from "./stream";

type AnswerPiece = { type: "text"; text: string } | { type: "tool_call"; call: ToolCall };

/**
 * Reads the model's answer into text and tool calls. The answer prefix (a
 * forced call's opening, or a continued assistant message) is read first but
 * its text is not given back: the client has it already. An answer that
 * starts like bare JSON is held to the end, when it may be the call(s) whole:
 * Mistral's and Phi-4-mini's JSON arrays once their special marker tokens are
 * left out of the text, Llama's bare object.
 */
export class AnswerReader {
  readonly #parser: ToolCallParser | null;
  readonly #toolNames: string[] | null;
  /** Calls completed inside the answer prefix, given out with the first pieces. */
  #pending: AnswerPiece[] = [];
  #calls = 0;
  /** Leading text held while the answer may be a bare JSON call; null once it is known not to be. */
  #held: string | null = "";

  constructor(toolNames: string[] | null, answerPrefix: string) {
    this.#toolNames = toolNames;
    this.#parser = toolNames ? new ToolCallParser(toolNames) : null;
    if (this.#parser && answerPrefix) {
      this.#held = null;
      for (const piece of this.#parser.push(answerPrefix)) if (piece.type === "tool_call") this.#pending.push(piece);
    }
  }

  get madeCalls(): boolean {
    return this.#calls > 0;
  }

  push(text: string): AnswerPiece[] {
    const pieces: AnswerPiece[] = this.#pending.concat(
      this.#parser ? this.#parser.push(text) : [{ type: "text", text }],
    );
    this.#pending = [];
    return this.#count(this.#hold(pieces));
  }

  finish(): AnswerPiece[] {
    const pieces = this.#hold(this.#pending.concat(this.#parser ? this.#parser.flush() : []));
    this.#pending = [];
    if (this.#held) {
      const calls = wholeAnswerAsCalls(this.#held, this.#toolNames ?? []);
      pieces.push(
        ...(calls
          ? calls.map((call) => ({ type: "tool_call" as const, call }))
          : [{ type: "text" as const, text: this.#held }]),
      );
      this.#held = null;
    }
    return this.#count(pieces);
  }

  /** Keeps back text while the answer so far is blank or starts with "{" or "["; gives it back once it cannot be a bare call. */
  #hold(pieces: AnswerPiece[]): AnswerPiece[] {
    if (!this.#parser || this.#held === null) return pieces;
    const out: AnswerPiece[] = [];
    for (const p of pieces) {
      if (this.#held !== null && p.type === "text") {
        const candidate: string = this.#held + p.text;
        if (/^\s*$|^\s*[[{]/.test(candidate)) {
          this.#held = candidate;
          continue;
        }
        out.push({ type: "text", text: candidate });
        this.#held = null;
        continue;
      }
      if (this.#held !== null) {
        if (this.#held) out.push({ type: "text", text: this.#held });
        this.#held = null;
      }
      out.push(p);
    }
    return out;
  }

  #count(pieces: AnswerPiece[]): AnswerPiece[] {
    for (const p of pieces) if (p.type === "tool_call") this.#calls++;
    return pieces.filter((p) => p.type === "tool_call" || p.text.length > 0);
  }
}

function toolCallBody(call: ToolCall) {
  return {
    id: call.id,
    type: "function" as const,
    function: { name: call.name, arguments: JSON.stringify(call.arguments) },
  };
}

export async function chatCompletions(ctx: AppContext, rawBody: unknown, request: Request): Promise<Response | object> {
  const body = validate(ChatCompletionRequest, requireObject(rawBody));
  const model = ctx.resolveModel(body.model);
  const plan = await ctx.session.prompts.run({ op: "chat", body });
  const stream = body.stream === true;
  const events = await startGeneration(ctx.session, {
    prompt: plan.prompt,
    maxTokens: plan.maxTokens,
    sampling: plan.sampling,
    stop: plan.stop,
    signal: request.signal,
    keepAliveMs: stream ? ctx.options.keepAliveMs : undefined,
    responseFormat: plan.enforcedFormat,
    answerPrefix: plan.answerPrefix,
  });
  const meta = { id: responseId("chatcmpl"), created: unixSeconds(), model };
  if (stream) {
    return sseResponse(chatChunks(ctx, events, plan, meta, body.stream_options?.include_usage === true));
  }
  return await chatResult(ctx, events, plan, meta);
}

type Meta = ResponseMeta;

async function chatResult(ctx: AppContext, events: AsyncGenerator<TextEvent>, plan: ChatPlan, meta: Meta) {
  const reader = new AnswerReader(plan.toolNames, plan.answerPrefix);
  let content = "";
  const calls: ToolCall[] = [];
  const logprobs: TokenLogprob[] = [];
  const take = (pieces: AnswerPiece[]) => {
    for (const p of pieces) {
      if (p.type === "text") content += p.text;
      else calls.push(p.call);
    }
  };
  for await (const e of events) {
    if (e.type === "text") {
      logprobs.push(...e.logprobs);
      take(reader.push(e.text));
    } else if (e.type === "done") {
      take(reader.finish());
      const wantLogprobs = plan.sampling.logprobs;
      return {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        system_fingerprint: null,
        choices: [
          {
            index: 0,
            message: {
              role: "assistant",
              // OpenAI: content is null when the answer is only tool calls.
              content: calls.length && !content.trim() ? null : content,
              refusal: null,
              ...(calls.length ? { tool_calls: calls.map(toolCallBody) } : {}),
            },
            logprobs: wantLogprobs ? { content: chatLogprobs(ctx.session.tokenizer, logprobs), refusal: null } : null,
            finish_reason: finishReason(e.reason, reader.madeCalls),
          },
        ],
        usage: usageBody(e.usage),
      };
    }
  }
  throw new ApiError(500, "api_error", "the generation ended without a result");
}

async function* chatChunks(
  ctx: AppContext,
  events: AsyncGenerator<TextEvent>,
  plan: ChatPlan,
  meta: Meta,
  includeUsage: boolean,
): AsyncGenerator<SseItem> {
  const reader = new AnswerReader(plan.toolNames, plan.answerPrefix);
  const wantLogprobs = plan.sampling.logprobs;
  const tokenizer = ctx.session.tokenizer;
  let pendingLogprobs: TokenLogprob[] = [];
  let toolIndex = 0;
  const chunk = (delta: object, finish: string | null = null): SseItem => {
    let logprobs = null;
    if (wantLogprobs && (pendingLogprobs.length || finish)) {
      logprobs = { content: chatLogprobs(tokenizer, pendingLogprobs), refusal: null };
      pendingLogprobs = [];
    }
    return streamChunk(
      meta,
      "chat.completion.chunk",
      [{ index: 0, delta, logprobs, finish_reason: finish }],
      includeUsage ? null : undefined,
    );
  };
  function* emit(pieces: AnswerPiece[]): Generator<SseItem> {
    for (const p of pieces) {
      if (p.type === "text") yield chunk({ content: p.text });
      else yield chunk({ tool_calls: [{ index: toolIndex++, ...toolCallBody(p.call) }] });
    }
  }

  yield chunk({ role: "assistant", content: "" });
  try {
    for await (const e of events) {
      if (e.type === "waiting") yield { comment: "keep-alive" };
      else if (e.type === "text") {
        pendingLogprobs.push(...e.logprobs);
        yield* emit(reader.push(e.text));
      } else if (e.type === "done") {
        yield* emit(reader.finish());
        if (e.reason === "cancelled") return;
        yield chunk({}, finishReason(e.reason, reader.madeCalls));
        if (includeUsage) yield streamChunk(meta, "chat.completion.chunk", [], usageBody(e.usage));
        yield { done: true };
        return;
      }
    }
  } catch (e) {
    yield sseError(streamFailure(ctx, e));
  }
}
