// The Anthropic Messages API: POST /v1/messages (streaming or not) and
// POST /v1/messages/count_tokens. Paths may carry a query string (Claude Code
// sends ?beta=true); errors come out in Anthropic's shape (app.ts renders them).
// Bodies are validated by the handlers, not Elysia's schema (see ../validate.ts).
//
// Choices: `model` in responses echoes the name the client sent (Claude Code
// sends its own model names; strict mode answers 404 for those instead).
// usage.input_tokens counts the prompt tokens the engine computed, and
// cache_read_input_tokens those it took from its prefix cache, as Anthropic
// splits them (their sum is the prompt length).
import { Elysia } from "elysia";
import type { AppContext } from "../app";
import { sseResponse } from "../sse";
import { requireObject, validate } from "../validate";
import { newMessageId, startGeneration } from "./messages";
import { anthropicUsage } from "./reply";
import { CountTokensBody, MessagesBody } from "./schema";
import { replyStream } from "./stream";

export function anthropicRoutes(ctx: AppContext) {
  return new Elysia()
    .post("/v1/messages", async ({ body: raw, request, set }) => {
      const body = validate(MessagesBody, requireObject(raw), "", "dots");
      const generation = await startGeneration(ctx, body, request);
      const id = newMessageId();
      const requestId = `req_${id.slice(4)}`;
      if (body.stream) return sseResponse(replyStream(generation, id, ctx.log), { "request-id": requestId });

      for await (const event of generation.events) {
        if (event.type !== "done") continue;
        ctx.log.debug("anthropic reply", { id, stop: event.stopReason, usage: event.usage });
        set.headers["request-id"] = requestId;
        return {
          id,
          type: "message",
          role: "assistant",
          model: generation.model,
          content: event.content,
          stop_reason: event.stopReason,
          stop_sequence: event.stopSequence,
          usage: anthropicUsage(event.usage),
        };
      }
      // Only a client that went away ends without a "done": nobody reads this.
      set.status = 499;
      return "";
    })
    .post("/v1/messages/count_tokens", async ({ body: raw }) => {
      const body = validate(CountTokensBody, requireObject(raw), "", "dots");
      ctx.resolveModel(body.model);
      return { input_tokens: await ctx.session.prompts.run({ op: "count", body }) };
    });
}
