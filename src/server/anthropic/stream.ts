// The streaming form of a reply, as Anthropic sends it:
//   message_start, content_block_start, ping, content_block_delta...,
//   content_block_stop, (more blocks), message_delta, message_stop.
// `ping` may come at any time: Pensieve also sends it while a long prompt is
// prefilled, so proxies and clients see a live connection. An error after
// the stream began is an `error` event in the API's error shape.

import { ApiError, anthropicErrorBody } from "../errors";
import type { Logger } from "../log";
import type { Usage } from "../model-session";
import type { SseItem } from "../sse";
import type { Generation } from "./messages";
import { anthropicUsage } from "./reply";

function sseEvent(event: string, data: unknown): SseItem {
  return { event, data };
}

const PING = sseEvent("ping", { type: "ping" });

function messageStart(id: string, model: string, usage: Usage): SseItem {
  return sseEvent("message_start", {
    type: "message_start",
    message: {
      id,
      type: "message",
      role: "assistant",
      model,
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage: anthropicUsage(usage),
    },
  });
}

/** A reply's SSE events, one by one. */
export async function* replyStream(generation: Generation, id: string, log: Logger): AsyncGenerator<SseItem> {
  const { events, model, plan } = generation;
  let started = false;
  let pinged = false;
  const start = (usage: Usage) => {
    started = true;
    return messageStart(id, model, usage);
  };
  try {
    for await (const event of events) {
      if (event.type === "waiting") yield PING;
      else if (event.type === "started") yield start(event.usage);
      else if (event.type === "blocks") {
        if (!started) yield start({ promptTokens: plan.tokens.length, cachedTokens: 0, completionTokens: 0 });
        for (const block of event.events) {
          yield sseEvent(block.type, block);
          if (block.type === "content_block_start" && !pinged) {
            pinged = true;
            yield PING;
          }
        }
      } else if (event.type === "done") {
        log.debug("anthropic reply", { id, stop: event.stopReason, usage: event.usage });
        if (!started) yield start({ ...event.usage, completionTokens: 0 });
        yield sseEvent("message_delta", {
          type: "message_delta",
          delta: { stop_reason: event.stopReason, stop_sequence: event.stopSequence },
          // Whole-message totals: the cache figures are final only now.
          usage: anthropicUsage(event.usage),
        });
        yield sseEvent("message_stop", { type: "message_stop" });
      }
    }
  } catch (e) {
    const error = e instanceof ApiError ? e : new ApiError(500, "api_error", "internal server error");
    if (!(e instanceof ApiError)) log.error("stream failed", { error: (e as Error)?.stack ?? String(e) });
    yield sseEvent("error", anthropicErrorBody(error));
  }
}
