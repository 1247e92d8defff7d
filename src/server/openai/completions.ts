// POST /v1/completions (the legacy text API): one raw prompt, one choice.
import type { AppContext } from "../app";
import { ApiError } from "../errors";
import type { TextEvent, TokenLogprob } from "../model-session";
import { type SseItem, sseResponse } from "../sse";
import { requireObject, validate } from "../validate";
import {
  finishReason,
  legacyLogprobs,
  type ResponseMeta,
  responseId,
  streamChunk,
  unixSeconds,
  usageBody,
} from "./format";
import type { CompletionPlan } from "./request-plan";
import { CompletionRequest } from "./schema";
import { sseError, startGeneration, streamFailure } from "./stream";

type Meta = ResponseMeta;

export async function completions(ctx: AppContext, rawBody: unknown, request: Request): Promise<Response | object> {
  const body = validate(CompletionRequest, requireObject(rawBody));
  const model = ctx.resolveModel(body.model);
  const plan = await ctx.session.prompts.run({ op: "completion", body });
  const stream = body.stream === true;
  const events = await startGeneration(ctx.session, {
    prompt: plan.prompt,
    maxTokens: plan.maxTokens,
    sampling: plan.sampling,
    stop: plan.stop,
    signal: request.signal,
    keepAliveMs: stream ? ctx.options.keepAliveMs : undefined,
    responseFormat: plan.responseFormat,
  });
  const meta = { id: responseId("cmpl"), created: unixSeconds(), model };
  if (stream)
    return sseResponse(completionChunks(ctx, events, plan, meta, body.stream_options?.include_usage === true));
  return await completionResult(ctx, events, plan, meta);
}

async function completionResult(ctx: AppContext, events: AsyncGenerator<TextEvent>, plan: CompletionPlan, meta: Meta) {
  let text = plan.echo ? plan.promptText : "";
  const logprobs: TokenLogprob[] = [];
  for await (const e of events) {
    if (e.type === "text") {
      text += e.text;
      logprobs.push(...e.logprobs);
    } else if (e.type === "done") {
      return {
        id: meta.id,
        object: "text_completion",
        created: meta.created,
        model: meta.model,
        system_fingerprint: null,
        choices: [
          {
            index: 0,
            text,
            logprobs: plan.logprobs === null ? null : legacyLogprobs(ctx.session.tokenizer, logprobs, 0),
            finish_reason: finishReason(e.reason, false),
          },
        ],
        usage: usageBody(e.usage),
      };
    }
  }
  throw new ApiError(500, "api_error", "the generation ended without a result");
}

async function* completionChunks(
  ctx: AppContext,
  events: AsyncGenerator<TextEvent>,
  plan: CompletionPlan,
  meta: Meta,
  includeUsage: boolean,
): AsyncGenerator<SseItem> {
  const tokenizer = ctx.session.tokenizer;
  let offset = 0;
  const chunk = (text: string, entries: TokenLogprob[], finish: string | null): SseItem => {
    const logprobs = plan.logprobs === null ? null : legacyLogprobs(tokenizer, entries, offset);
    offset += text.length;
    return streamChunk(
      meta,
      "text_completion",
      [{ index: 0, text, logprobs, finish_reason: finish }],
      includeUsage ? null : undefined,
    );
  };
  if (plan.echo && plan.promptText) yield chunk(plan.promptText, [], null);
  try {
    for await (const e of events) {
      if (e.type === "waiting") yield { comment: "keep-alive" };
      else if (e.type === "text") {
        if (e.text || e.logprobs.length) yield chunk(e.text, e.logprobs, null);
      } else if (e.type === "done") {
        if (e.reason === "cancelled") return;
        yield chunk("", [], finishReason(e.reason, false));
        if (includeUsage) yield streamChunk(meta, "text_completion", [], usageBody(e.usage));
        yield { done: true };
        return;
      }
    }
  } catch (e) {
    yield sseError(streamFailure(ctx, e));
  }
}
