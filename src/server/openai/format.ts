// Pieces of OpenAI responses: ids, usage, finish reasons and log-probabilities
// (token text and raw bytes, as OpenAI reports them).
import { tokenBytes as rawTokenBytes, type Tokenizer } from "../../text";
import type { TokenLogprob, Usage } from "../model-session";

export function responseId(prefix: "chatcmpl" | "cmpl"): string {
  return `${prefix}-${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;
}

export const unixSeconds = () => Math.floor(Date.now() / 1000);

/** What every response of one request repeats: its id, creation time and model name. */
export interface ResponseMeta {
  id: string;
  created: number;
  model: string;
}

/**
 * One streamed chunk (`chat.completion.chunk` or `text_completion`). With
 * include_usage, every chunk has `usage: null` and a last one carries the usage.
 */
export function streamChunk(
  meta: ResponseMeta,
  object: "chat.completion.chunk" | "text_completion",
  choices: unknown[],
  usage: OpenAIUsage | null | undefined,
): { data: object } {
  return {
    data: {
      id: meta.id,
      object,
      created: meta.created,
      model: meta.model,
      system_fingerprint: null,
      choices,
      ...(usage !== undefined ? { usage } : {}),
    },
  };
}

export interface OpenAIUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export function usageBody(u: Usage): OpenAIUsage {
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
    prompt_tokens_details: { cached_tokens: u.cachedTokens },
  };
}

/** OpenAI's finish_reason on the wire. */
type OpenAIFinishReason = "stop" | "length" | "tool_calls";

export function finishReason(
  reason: "stop" | "stop_string" | "length" | "cancelled",
  madeCalls: boolean,
): OpenAIFinishReason {
  if (madeCalls) return "tool_calls";
  return reason === "length" ? "length" : "stop";
}

// ---- token bytes ----

const utf8Lenient = new TextDecoder("utf-8", { fatal: false });

/** The raw bytes one token stands for. */
export function tokenBytes(tokenizer: Tokenizer, id: number): number[] {
  return [...rawTokenBytes(tokenizer, id)];
}

/** A token's text as OpenAI shows it: its bytes as UTF-8 (a partial character shows as U+FFFD). */
function tokenString(tokenizer: Tokenizer, id: number): string {
  return utf8Lenient.decode(rawTokenBytes(tokenizer, id));
}

/** JSON has no -Infinity; a token the model rules out gets a very low finite value. */
const finite = (x: number) => (Number.isFinite(x) ? x : -9999);

export interface ChatLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>;
}

export function chatLogprobs(tokenizer: Tokenizer, entries: readonly TokenLogprob[]): ChatLogprob[] {
  return entries.map((e) => ({
    token: tokenString(tokenizer, e.token),
    logprob: finite(e.logprob),
    bytes: tokenBytes(tokenizer, e.token),
    top_logprobs: e.top.map((t) => ({
      token: tokenString(tokenizer, t.token),
      logprob: finite(t.logprob),
      bytes: tokenBytes(tokenizer, t.token),
    })),
  }));
}

/** The legacy completions shape: parallel arrays and one {token: logprob} map per position. */
export interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Array<Record<string, number>>;
  text_offset: number[];
}

export function legacyLogprobs(tokenizer: Tokenizer, entries: readonly TokenLogprob[], offset: number): LegacyLogprobs {
  const out: LegacyLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  let at = offset;
  for (const e of entries) {
    const text = tokenString(tokenizer, e.token);
    out.tokens.push(text);
    out.token_logprobs.push(finite(e.logprob));
    const top: Record<string, number> = {};
    for (const t of e.top) {
      const key = tokenString(tokenizer, t.token);
      if (!(key in top)) top[key] = finite(t.logprob);
    }
    out.top_logprobs.push(top);
    out.text_offset.push(at);
    at += text.length;
  }
  return out;
}
