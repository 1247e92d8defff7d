// OpenAI request → what the engine runs: the prompt tokens (chat template,
// tool rendering, JSON instructions), the sampling parameters, stop strings
// and the token budget. Shared by /v1/chat/completions, /v1/completions and
// the WebSocket protocol.
// About 410 lines: one request's plan, shared by three routes.
import { type SamplingParams, samplingParams } from "../../engine/protocol";
import type { ChatMessage } from "../../text";
import { grammarFor, isValidPrefix, SchemaError } from "../../text/json-constraint";
import { badRequest } from "../errors";
import { constraintFor, type ResponseFormat, type TextRequest } from "../model-session";
import { checkPromptLength, encodePrompt, type PromptContext, renderChat } from "../prompt";
import { templateTraits } from "../template-traits";
import {
  renderToolCalls,
  renderToolResult,
  TOOL_CALL_OPEN,
  type ToolChoice,
  type ToolSpec,
  toolInstructions,
} from "../tools";
import type { ChatCompletionBody, CompletionBody, OpenAIMessage, OpenAITool } from "./schema";

type SamplingBody = Pick<
  ChatCompletionBody,
  | "temperature"
  | "top_p"
  | "top_k"
  | "min_p"
  | "repetition_penalty"
  | "presence_penalty"
  | "frequency_penalty"
  | "logit_bias"
  | "seed"
  | "stop"
  | "max_tokens"
  | "speculative"
>;

/** What every API turns its request into before generating. */
export interface GenerationPlan {
  prompt: number[];
  /** Requested maximum (null: up to the context); generateText clamps it to the context left. */
  maxTokens: number | null;
  sampling: SamplingParams;
  stop: string[];
}

export interface ChatPlan extends GenerationPlan {
  /** The rendered prompt (tests and logs). */
  promptText: string;
  /** Tools whose calls are parsed out of the answer; null when the request has none (or tool_choice "none"). */
  toolNames: string[] | null;
  /**
   * Text the answer starts with, already in the prompt: a forced tool call's
   * opening or the client's own continued assistant message. The tool-call
   * parser reads it first; it is not sent back as content.
   */
  answerPrefix: string;
  /** The requested format (its instruction is in the prompt). */
  responseFormat: TextRequest["responseFormat"];
  /**
   * The format the engine enforces: the requested one, except with tools in
   * play, where forcing JSON would rule out tool calls (instruction only then).
   */
  enforcedFormat: TextRequest["responseFormat"];
}

/** OpenAI's default temperature (1) unless the caller picks another default. */
function samplingFromBody(
  session: PromptContext,
  body: SamplingBody,
  logprobs: { logprobs: boolean; topLogprobs: number } = { logprobs: false, topLogprobs: 0 },
): SamplingParams {
  const temperature = body.temperature ?? 1;
  return samplingParams({
    // Dividing logits by a near-zero temperature overflows to infinities: that is greedy anyway.
    temperature: temperature < 1e-4 ? 0 : temperature,
    topP: body.top_p ?? 1,
    topK: body.top_k ?? 0,
    minP: body.min_p ?? 0,
    repetitionPenalty: body.repetition_penalty ?? 1,
    presencePenalty: body.presence_penalty ?? 0,
    frequencyPenalty: body.frequency_penalty ?? 0,
    logitBias: logitBias(session, body.logit_bias),
    seed: body.seed === null || body.seed === undefined ? null : normalizeSeed(body.seed),
    logprobs: logprobs.logprobs,
    topLogprobs: logprobs.topLogprobs,
    speculative: body.speculative ?? null,
  });
}

/** The engine's random keys take a non-negative integer: fold any JSON integer into [0, 2^53). */
function normalizeSeed(seed: number): number {
  const range = 2 ** 53;
  return ((seed % range) + range) % range;
}

function logitBias(
  session: PromptContext,
  bias: Record<string, number> | null | undefined,
): Record<number, number> | null {
  if (!bias) return null;
  const vocab = session.vocabSize;
  const out: Record<number, number> = {};
  for (const [key, value] of Object.entries(bias)) {
    const id = /^\d{1,9}$/.test(key) ? Number(key) : -1;
    if (id < 0 || id >= vocab)
      throw badRequest(
        `logit_bias: "${key.slice(0, 40)}" is not a token id of this model (0..${vocab - 1})`,
        "logit_bias",
      );
    out[id] = value;
  }
  return Object.keys(out).length ? out : null;
}

function stopStrings(stop: string | string[] | null | undefined): string[] {
  if (stop === null || stop === undefined) return [];
  return (typeof stop === "string" ? [stop] : stop).filter((s) => s.length > 0);
}

// ---- chat ----

function contentText(content: OpenAIMessage["content"], field: string): string {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  return content
    .map((part, j) => {
      if (part.type !== "text")
        throw badRequest(
          `${field}[${j}]: content of type "${part.type.slice(0, 40)}" is not supported (this server reads text only)`,
          `${field}[${j}].type`,
        );
      if (typeof part.text !== "string") throw badRequest(`${field}[${j}].text: is required`, `${field}[${j}].text`);
      return part.text;
    })
    .join("\n");
}

function callArguments(args: string | Record<string, unknown> | undefined, field: string): Record<string, unknown> {
  if (args === undefined || args === "") return {};
  if (typeof args !== "string") return args;
  let value: unknown;
  try {
    value = JSON.parse(args);
  } catch {
    throw badRequest(`${field}: is not valid JSON`, field);
  }
  if (!value || typeof value !== "object" || Array.isArray(value))
    throw badRequest(`${field}: must be a JSON object`, field);
  return value as Record<string, unknown>;
}

function toolSpecs(tools: OpenAITool[]): ToolSpec[] {
  return tools.map((t) => ({
    name: t.function.name,
    description: t.function.description ?? undefined,
    inputSchema: t.function.parameters ?? { type: "object", properties: {} },
  }));
}

function toolChoice(body: ChatCompletionBody, names: string[]): ToolChoice {
  const choice = body.tool_choice;
  if (choice === null || choice === undefined || choice === "auto") return { type: "auto" };
  if (choice === "none") return { type: "none" };
  if (names.length === 0) throw badRequest("tool_choice: requires tools", "tool_choice");
  if (choice === "required") return { type: "required" };
  const name = choice.function.name;
  if (!names.includes(name))
    throw badRequest(`tool_choice: no tool named "${name.slice(0, 128)}" in tools`, "tool_choice.function.name");
  return { type: "tool", name };
}

/** The request's response_format as ours (null for text), checked: a malformed schema is a 400. */
function responseFormatOf(
  rf: ChatCompletionBody["response_format"],
  param = "response_format",
): ResponseFormat | undefined {
  let format: ResponseFormat | undefined;
  if (rf?.type === "json_object") format = { type: "json_object" };
  else if (rf?.type === "json_schema") format = { type: "json_schema", schema: rf.json_schema.schema ?? null };
  if (format) grammarOf(format, "", `${param}${format.type === "json_schema" ? ".json_schema.schema" : ""}`);
  return format;
}

function grammarOf(format: ResponseFormat, answerPrefix: string, param: string) {
  try {
    const grammar = grammarFor(constraintFor(format));
    if (answerPrefix && !isValidPrefix(grammar, answerPrefix))
      throw badRequest(
        "continue_final_message: the assistant message is not a valid start of the response_format's JSON",
        "continue_final_message",
      );
    return grammar;
  } catch (e) {
    if (e instanceof SchemaError) throw badRequest(`${param}: ${e.message}`, param);
    throw e;
  }
}

function jsonInstruction(format: NonNullable<TextRequest["responseFormat"]>): string {
  const base = "Answer with one valid JSON value and nothing else: no prose before or after it, no code fences.";
  if (format.type === "json_object") return base.replace("JSON value", "JSON object");
  if (format.schema === undefined || format.schema === null) return base;
  return `${base}\nIt must follow this JSON Schema:\n${JSON.stringify(format.schema)}`;
}

/** A chat request as the engine's prompt, with everything needed to read the answer. */
export function chatPlan(session: PromptContext, body: ChatCompletionBody): ChatPlan {
  if (body.n !== null && body.n !== undefined && body.n !== 1)
    throw badRequest("n: only n=1 is supported (one choice per request)", "n");
  if ((body.top_logprobs ?? 0) > 0 && !body.logprobs)
    throw badRequest("top_logprobs: requires logprobs: true", "top_logprobs");

  const tools = body.tools ?? [];
  const names = tools.map((t) => t.function.name);
  const choice = toolChoice(body, names);
  const useTools = tools.length > 0 && choice.type !== "none";
  const nativeTools = useTools && templateTraits(session.tokenizer).tools;

  const responseFormat = responseFormatOf(body.response_format);

  let history = body.messages;
  let answerPrefix = "";
  if (body.continue_final_message) {
    const last = history.at(-1);
    if (last?.role !== "assistant")
      throw badRequest(
        "continue_final_message: the last message must be an assistant message",
        "continue_final_message",
      );
    const i = history.length - 1;
    const calls = (last.tool_calls ?? []).map((c, j) => ({
      name: c.function.name,
      arguments: callArguments(c.function.arguments, `messages[${i}].tool_calls[${j}].function.arguments`),
    }));
    answerPrefix = [contentText(last.content, `messages[${i}].content`), calls.length ? renderToolCalls(calls) : ""]
      .filter(Boolean)
      .join("\n");
    history = history.slice(0, -1);
    if (history.length === 0)
      throw badRequest("messages: a conversation needs a message before the continued one", "messages");
  } else if (useTools && choice.type === "tool") {
    // No constrained decoding yet: a forced call starts the answer with its opening.
    answerPrefix = `${TOOL_CALL_OPEN}\n{"name": ${JSON.stringify(choice.name)}, "arguments": `;
  } else if (useTools && choice.type === "required") {
    answerPrefix = `${TOOL_CALL_OPEN}\n{"name": "`;
  }

  const enforcedFormat = useTools ? undefined : responseFormat;
  if (enforcedFormat && answerPrefix) grammarOf(enforcedFormat, answerPrefix, "response_format");

  const messages = renderMessages(history, nativeTools);
  const instructions: string[] = [];
  if (useTools && !nativeTools) instructions.push(toolInstructions(toolSpecs(tools), choice));
  if (responseFormat) instructions.push(jsonInstruction(responseFormat));
  addSystemText(messages, instructions.join("\n\n"));
  // Some templates drop system turns (Phi-3's April 2024 one): instructions must still reach the model.
  if (!templateTraits(session.tokenizer).leadingSystem) foldSystemIntoUser(messages);

  const promptText = renderChat(session.tokenizer, messages, { tools: nativeTools ? tools : undefined }) + answerPrefix;
  // The template already places BOS where the model wants it.
  const prompt = encodePrompt(session, promptText, { addSpecialTokens: false, param: "messages" });

  const logprobs = { logprobs: body.logprobs === true, topLogprobs: body.logprobs ? (body.top_logprobs ?? 0) : 0 };
  return {
    prompt,
    promptText,
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? null,
    sampling: samplingFromBody(session, body, logprobs),
    stop: stopStrings(body.stop),
    toolNames: useTools ? names : null,
    answerPrefix,
    responseFormat,
    enforcedFormat,
  };
}

/** OpenAI messages → template messages. Without native tool support, calls and results use the documented <tool_call> format. */
function renderMessages(messages: OpenAIMessage[], nativeTools: boolean): ChatMessage[] {
  const out: ChatMessage[] = [];
  const callNames = new Map<string, string>();
  let pendingResults: string[] = [];
  const flushResults = () => {
    if (pendingResults.length) out.push({ role: "user", content: pendingResults.join("\n") });
    pendingResults = [];
  };
  messages.forEach((m, i) => {
    const field = `messages[${i}]`;
    const text = contentText(m.content, `${field}.content`);
    if (m.role === "tool" || m.role === "function") {
      const name = (m.tool_call_id ? callNames.get(m.tool_call_id) : undefined) ?? m.name ?? null;
      if (nativeTools) out.push({ role: "tool", content: text, tool_call_id: m.tool_call_id ?? undefined, name });
      else pendingResults.push(renderToolResult(name, text));
      return;
    }
    flushResults();
    if (m.role === "assistant") {
      const calls = (m.tool_calls ?? []).map((c, j) => {
        const args = callArguments(c.function.arguments, `${field}.tool_calls[${j}].function.arguments`);
        if (c.id) callNames.set(c.id, c.function.name);
        return { id: c.id, name: c.function.name, arguments: args };
      });
      if (m.content === null || m.content === undefined) {
        if (calls.length === 0) throw badRequest(`${field}.content: is required`, `${field}.content`);
      }
      if (nativeTools) {
        out.push({
          role: "assistant",
          content: text,
          ...(calls.length
            ? {
                tool_calls: calls.map((c) => ({
                  id: c.id,
                  type: "function",
                  function: { name: c.name, arguments: c.arguments },
                })),
              }
            : {}),
        });
      } else {
        out.push({
          role: "assistant",
          content: [text, calls.length ? renderToolCalls(calls) : ""].filter(Boolean).join("\n"),
        });
      }
      return;
    }
    if (m.content === null || m.content === undefined)
      throw badRequest(`${field}.content: is required`, `${field}.content`);
    out.push({ role: m.role === "developer" ? "system" : m.role, content: text });
  });
  flushResults();
  return out;
}

function addSystemText(messages: ChatMessage[], text: string): void {
  if (!text) return;
  const first = messages[0];
  if (first?.role === "system") first.content = first.content ? `${first.content}\n\n${text}` : text;
  else messages.unshift({ role: "system", content: text });
}

function foldSystemIntoUser(messages: ChatMessage[]): void {
  const system = messages.filter((m) => m.role === "system").map((m) => m.content as string);
  if (system.length === 0) return;
  const rest = messages.filter((m) => m.role !== "system");
  const firstUser = rest.find((m) => m.role === "user");
  if (firstUser) firstUser.content = `${system.join("\n\n")}\n\n${firstUser.content as string}`;
  else rest.unshift({ role: "user", content: system.join("\n\n") });
  messages.splice(0, messages.length, ...rest);
}

// ---- completions ----

export interface CompletionPlan extends GenerationPlan {
  /** The prompt's text, for echo. */
  promptText: string;
  echo: boolean;
  /** Legacy logprobs: alternatives per token (null: none). */
  logprobs: number | null;
  /** Extension (as vLLM): output constrained to JSON; no instruction is added to a raw prompt. */
  responseFormat: TextRequest["responseFormat"];
}

export function completionPlan(session: PromptContext, body: CompletionBody): CompletionPlan {
  if (body.n !== null && body.n !== undefined && body.n !== 1)
    throw badRequest("n: only n=1 is supported (one choice per request)", "n");
  if (body.best_of !== null && body.best_of !== undefined && body.best_of !== 1)
    throw badRequest("best_of: only best_of=1 is supported", "best_of");
  if (body.suffix) throw badRequest("suffix: is not supported (no fill-in-the-middle)", "suffix");
  const logprobs = body.logprobs ?? null;
  if (body.echo && logprobs !== null)
    throw badRequest("echo: cannot be combined with logprobs (prompt log-probabilities are not computed)", "echo");

  let prompt: number[];
  let promptText: string;
  const p = body.prompt;
  if (typeof p === "string" || (Array.isArray(p) && typeof p[0] === "string")) {
    const texts = typeof p === "string" ? [p] : (p as string[]);
    if (texts.length !== 1) throw badRequest("prompt: only a single prompt per request is supported", "prompt");
    promptText = texts[0] as string;
    prompt = encodePrompt(session, promptText, { addSpecialTokens: true, param: "prompt" });
  } else {
    const lists = Array.isArray(p[0]) ? (p as number[][]) : [p as number[]];
    if (lists.length !== 1) throw badRequest("prompt: only a single prompt per request is supported", "prompt");
    prompt = lists[0] as number[];
    const vocab = session.vocabSize;
    const bad = prompt.find((t) => t < 0 || t >= vocab);
    if (bad !== undefined)
      throw badRequest(`prompt: token id ${bad} is outside the vocabulary (0..${vocab - 1})`, "prompt");
    promptText = session.tokenizer.decode(prompt);
  }
  if (prompt.length === 0) throw badRequest("prompt: is empty", "prompt");
  checkPromptLength(session, prompt.length, "prompt");
  return {
    prompt,
    promptText,
    maxTokens: body.max_tokens ?? 16,
    sampling: samplingFromBody(session, body, {
      logprobs: logprobs !== null,
      topLogprobs: logprobs ?? 0,
    }),
    stop: stopStrings(body.stop),
    echo: body.echo === true,
    logprobs,
    responseFormat: responseFormatOf(body.response_format),
  };
}
