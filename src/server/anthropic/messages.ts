// One Messages request through the engine: the prompt, the sampling
// parameters, and the reply as events both routes share (the streaming route
// sends them as SSE, the other collects them into one message).
import { samplingParams } from "../../engine/protocol";
import type { AppContext } from "../app";
import type { TextEvent, Usage } from "../model-session";
import type { PromptPlan } from "./prompt-plan";
import { type BlockEvent, type ContentBlock, ReplyAssembler, type StopReason } from "./reply";
import type { MessagesRequest } from "./schema";

/** A model that invents the tool's answer has finished its turn: stop there. */
const HALLUCINATED_RESULT = "<tool_response>";

export type ReplyEvent =
  /** Prefill still running: time for a keep-alive. */
  | { type: "waiting" }
  | { type: "started"; usage: Usage }
  | { type: "blocks"; events: BlockEvent[] }
  | { type: "done"; stopReason: StopReason; stopSequence: string | null; usage: Usage; content: ContentBlock[] };

export interface Generation {
  plan: PromptPlan;
  /** The model name the response carries: what the client asked for (see index.ts). */
  model: string;
  /** The reply. Its first event was already awaited: admission errors were thrown by startGeneration(). */
  events: AsyncGenerator<ReplyEvent>;
}

export function newMessageId(): string {
  return `msg_${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;
}

/**
 * Validates and renders the request, starts generation and waits for its
 * first event: a prompt that is too long, a full queue or a restarting engine
 * fail here, as an HTTP error, before any stream begins.
 */
export async function startGeneration(ctx: AppContext, body: MessagesRequest, request: Request): Promise<Generation> {
  ctx.resolveModel(body.model);
  const model = typeof body.model === "string" && body.model ? body.model : ctx.session.modelId;
  const session = ctx.session;
  const plan = await session.prompts.run({ op: "messages", body });
  const maxTokens = session.clampMaxTokens(plan.tokens.length, body.max_tokens);
  const contextLimited = maxTokens < body.max_tokens;

  const userStops = (body.stop_sequences ?? []).filter((s) => s.length > 0);
  const stops = [...userStops];
  if (plan.toolNames.length > 0 && plan.toolFormat === "documented") stops.push(HALLUCINATED_RESULT);

  // Ends generation when the reply is complete by itself (a forced tool call closed).
  const replyComplete = new AbortController();
  const text = session.generateText({
    prompt: plan.tokens,
    maxTokens,
    sampling: samplingParams({
      temperature: body.temperature ?? 1,
      topP: body.top_p ?? 1,
      topK: body.top_k ?? 0,
      speculative: body.speculative ?? null,
    }),
    stop: stops,
    signal: AbortSignal.any([request.signal, replyComplete.signal]),
    // Keep-alives are for streams; a plain response has nothing to send meanwhile.
    keepAliveMs: body.stream ? ctx.options.keepAliveMs : undefined,
  });
  const assembler = new ReplyAssembler({
    toolNames: plan.toolNames,
    continuation: plan.continuation,
    forcedCallJson: plan.forcedCallJson,
    singleCall: plan.singleCall,
  });

  async function* reply(first: IteratorResult<TextEvent>): AsyncGenerator<ReplyEvent> {
    let next = first;
    try {
      while (!next.done) {
        const event = next.value;
        if (event.type === "waiting") yield { type: "waiting" };
        else if (event.type === "started")
          yield {
            type: "started",
            usage: { promptTokens: event.promptTokens, cachedTokens: event.cachedTokens, completionTokens: 0 },
          };
        else if (event.type === "text") {
          const events = assembler.push(event.text);
          if (assembler.complete) replyComplete.abort();
          if (events.length > 0) yield { type: "blocks", events };
        } else if (event.type === "done") {
          const events = assembler.finish();
          if (events.length > 0) yield { type: "blocks", events };
          const userStop = event.reason === "stop_string" && userStops.includes(event.stopString ?? "");
          let stopReason: StopReason = "end_turn";
          if (assembler.toolCalls > 0) stopReason = "tool_use";
          else if (userStop) stopReason = "stop_sequence";
          else if (event.reason === "length")
            stopReason = contextLimited ? "model_context_window_exceeded" : "max_tokens";
          yield {
            type: "done",
            stopReason,
            stopSequence: stopReason === "stop_sequence" ? event.stopString : null,
            usage: event.usage,
            content: assembler.content,
          };
          return;
        }
        // A client that went away stops everything now (the signal already told the engine).
        if (request.signal.aborted) return;
        next = await text.next();
      }
    } finally {
      await text.return(undefined);
    }
  }

  const first = await text.next();
  return { plan, model, events: reply(first) };
}
