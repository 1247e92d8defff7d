// Pieces of OpenAI responses: ids, usage, finish reasons and log-probabilities
// (token text and raw bytes, as OpenAI reports them).
import type { Tokenizer } from "../../text";
import type { TokenLogprob, Usage } from "../model-session";

export function responseId(prefix: "chatcmpl" | "cmpl"): string {
  return `${prefix}-${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;
}

export const unixSeconds = () => Math.floor(Date.now() / 1000);

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

export type FinishReason = "stop" | "length" | "tool_calls";

export function finishReason(
  reason: "stop" | "stop_string" | "length" | "cancelled",
  madeCalls: boolean,
): FinishReason {
  if (madeCalls) return "tool_calls";
  return reason === "length" ? "length" : "stop";
}

// ---- token bytes ----

type PieceStyle = "byte-level" | "sentencepiece" | "plain";
const styles = new WeakMap<Tokenizer, PieceStyle>();

/** How the vocabulary writes bytes: GPT-2 byte-level ("Ġ" for a space), SentencePiece ("▁", <0xNN>), or plain text. */
function pieceStyle(tokenizer: Tokenizer): PieceStyle {
  let style = styles.get(tokenizer);
  if (!style) {
    const pieces = tokenizer.encode(" a b", { addSpecialTokens: false }).map((id) => tokenizer.idToToken(id) ?? "");
    style = pieces.some((p) => p.includes("\u2581"))
      ? "sentencepiece"
      : pieces.some((p) => p.includes("\u0120"))
        ? "byte-level"
        : "plain";
    styles.set(tokenizer, style);
  }
  return style;
}

/** GPT-2's byte → printable character table, inverted. */
const byteLevelDecoder: Map<string, number> = (() => {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const code = printable(b) ? b : 256 + extra++;
    map.set(String.fromCodePoint(code), b);
  }
  return map;
})();

const utf8 = new TextEncoder();
const utf8Lenient = new TextDecoder("utf-8", { fatal: false });

/** The raw bytes one token stands for. */
export function tokenBytes(tokenizer: Tokenizer, id: number): number[] {
  const piece = tokenizer.idToToken(id);
  if (piece === undefined) return [];
  if (tokenizer.isSpecial(id)) return [...utf8.encode(piece)];
  const style = pieceStyle(tokenizer);
  if (style === "byte-level") {
    const bytes: number[] = [];
    for (const ch of piece) {
      const b = byteLevelDecoder.get(ch);
      if (b === undefined) return [...utf8.encode(piece)];
      bytes.push(b);
    }
    return bytes;
  }
  if (style === "sentencepiece") {
    const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
    if (byte) return [Number.parseInt(byte[1] as string, 16)];
    return [...utf8.encode(piece.replaceAll("\u2581", " "))];
  }
  return [...utf8.encode(piece)];
}

/** A token's text as OpenAI shows it: its bytes as UTF-8 (a partial character shows as U+FFFD). */
export function tokenString(tokenizer: Tokenizer, id: number): string {
  return utf8Lenient.decode(new Uint8Array(tokenBytes(tokenizer, id)));
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
