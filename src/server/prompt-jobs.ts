// The jobs the prompt workers run: each API's request → the engine's prompt
// (template probes, tool rendering, response_format grammars, tokenizing and
// the length checks). runPromptJob() is the same code in a worker and in
// process; errors come back as data (ApiError fields) across the worker line.
import { buildPrompt, type PromptPlan } from "./anthropic/prompt-plan";
import type { ConversationRequest } from "./anthropic/schema";
import { ApiError, type ErrorKind } from "./errors";
import { type ChatPlan, type CompletionPlan, chatPlan, completionPlan } from "./openai/request-plan";
import type { ChatCompletionBody, CompletionBody } from "./openai/schema";
import type { PromptContext } from "./prompt";

export type PromptJob =
  | { op: "chat"; body: ChatCompletionBody }
  | { op: "completion"; body: CompletionBody }
  | { op: "messages"; body: ConversationRequest }
  | { op: "count"; body: ConversationRequest };

export interface PromptResults {
  chat: ChatPlan;
  completion: CompletionPlan;
  messages: PromptPlan;
  count: number;
}

/** What the engine accepts, sent with every job (it changes when the engine restarts). */
export interface PromptLimits {
  contextLength: number | null;
  vocabSize: number;
  modelId?: string;
}

export interface JobError {
  status: number;
  kind: ErrorKind;
  message: string;
  param: string | null;
}

export function runPromptJob(ctx: PromptContext, job: PromptJob): PromptResults[PromptJob["op"]] {
  switch (job.op) {
    case "chat":
      return chatPlan(ctx, job.body);
    case "completion":
      return completionPlan(ctx, job.body);
    case "messages":
      return buildPrompt(job.body, ctx.tokenizer, ctx.contextLength, ctx.modelId);
    case "count":
      return buildPrompt(job.body, ctx.tokenizer, null).tokens.length;
  }
}

export function jobError(e: unknown): JobError {
  if (e instanceof ApiError) return { status: e.status, kind: e.kind, message: e.message, param: e.param };
  return {
    status: 500,
    kind: "api_error",
    message: `building the prompt failed: ${(e as Error)?.message ?? e}`,
    param: null,
  };
}

export function apiErrorOf(e: JobError): ApiError {
  return new ApiError(e.status, e.kind, e.message, e.param);
}
