// The OpenAI-compatible API: chat completions, completions and models.
// Request bodies are validated by the handlers (see validate.ts for why).
//
// What differs from OpenAI, on purpose or for now:
// - One choice per request (n, best_of > 1: 400). Text only (image/audio parts: 400).
// - max_tokens beyond the context left is clamped, not refused; a prompt that
//   fills the context is a 400 ("prompt is too long: N tokens > M maximum").
// - response_format json_object/json_schema: a system instruction asks for JSON
//   (with the schema) and the engine constrains decoding to it (a subset of JSON
//   Schema, src/text/json-schema-grammar.ts); with tools in play only the
//   instruction applies (forcing JSON would rule out tool calls).
// - Tools use the model's template when it renders `tools`, else the documented
//   <tool_call> format (src/server/tools.ts). A forced tool_choice starts the
//   answer with the call's opening; without constrained decoding a small model
//   may still fail to finish it, and then the text comes back as content.
// - Extensions: top_k, min_p, repetition_penalty; continue_final_message (the
//   last assistant message is continued, as in vLLM); models' context_length.
// - /v1/completions: one prompt (string, token ids); no suffix; echo without
//   logprobs; max_tokens defaults to 16 as in OpenAI's legacy API.
import { Elysia } from "elysia";
import type { AppContext } from "../app";
import { ApiError } from "../errors";
import { chatCompletions } from "./chat";
import { completions } from "./completions";

export function openaiRoutes(ctx: AppContext) {
  const created = Math.floor(Date.now() / 1000);
  const modelCard = () => ({
    id: ctx.session.modelId,
    object: "model",
    created,
    owned_by: "pensieve",
    // Extension: the longest prompt + output a request may use.
    context_length: ctx.session.contextLength,
  });
  return new Elysia()
    .post("/v1/chat/completions", ({ body, request }) => chatCompletions(ctx, body, request))
    .post("/v1/completions", ({ body, request }) => completions(ctx, body, request))
    .get("/v1/models", () => ({ object: "list", data: [modelCard()] }))
    .get("/v1/models/*", ({ params }) => {
      let id = params["*"];
      try {
        id = decodeURIComponent(id);
      } catch {
        // Not percent-encoded: use as is.
      }
      if (id !== ctx.session.modelId)
        throw new ApiError(
          404,
          "not_found",
          `model "${id}" is not served here; this server serves "${ctx.session.modelId}"`,
          "model",
        );
      return modelCard();
    });
}
