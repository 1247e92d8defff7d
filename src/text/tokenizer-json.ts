// The subset of Hugging Face's tokenizer.json / tokenizer_config.json shapes that Pensieve reads or builds.

export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

export interface BpeModelJson {
  type: "BPE";
  vocab: Record<string, number>;
  /** [left, right] pairs, best first. */
  merges: [string, string][] | string[];
  unk_token?: string | null;
  byte_fallback?: boolean;
  fuse_unk?: boolean;
  ignore_merges?: boolean;
  [key: string]: unknown;
}

export interface TokenizerJson {
  version?: string;
  added_tokens: AddedTokenJson[];
  normalizer: unknown;
  pre_tokenizer: unknown;
  post_processor: unknown;
  decoder: unknown;
  model: { type: string; vocab: unknown; [key: string]: unknown };
  [key: string]: unknown;
}

/** A special token as tokenizer_config.json writes it: a string or an AddedToken-like object. */
export type ConfigToken = string | { content: string; [key: string]: unknown } | null;

export interface AddedTokenConfig {
  content: string;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
  single_word?: boolean;
  special?: boolean;
}

export interface TokenizerConfigJson {
  add_bos_token?: boolean;
  add_eos_token?: boolean;
  bos_token?: ConfigToken;
  eos_token?: ConfigToken;
  unk_token?: ConfigToken;
  pad_token?: ConfigToken;
  /** A single template, or named templates ("default", "tool_use", ...). */
  chat_template?: string | { name: string; template: string }[];
  clean_up_tokenization_spaces?: boolean;
  added_tokens_decoder?: Record<string, AddedTokenConfig>;
  additional_special_tokens?: ConfigToken[];
  [key: string]: unknown;
}

export interface GenerationConfigJson {
  bos_token_id?: number;
  eos_token_id?: number | number[];
  pad_token_id?: number;
  [key: string]: unknown;
}

export function configTokenContent(token: ConfigToken | undefined): string | undefined {
  if (token === undefined || token === null) return undefined;
  return typeof token === "string" ? token : token.content;
}

// ---- what the pipeline keeps of the input ----

type Step = { type?: string; [key: string]: unknown } | null | undefined;

/** Normalizers that keep every input byte: prepending "▁", and spaces written as "▁" (SentencePiece). */
function normalizerKeepsBytes(step: Step): boolean {
  if (!step) return true;
  if (step.type === "Sequence") return ((step.normalizers as Step[]) ?? []).every(normalizerKeepsBytes);
  if (step.type === "Prepend") return true;
  if (step.type === "Replace") {
    const pattern = step.pattern as { String?: string } | undefined;
    return pattern?.String === " " && step.content === "\u2581";
  }
  // NFC/NFKC compose, Lowercase and StripAccents may shrink text, Strip drops it.
  return false;
}

/** Pre-tokenizers that split without dropping anything. */
function preTokenizerKeepsBytes(step: Step): boolean {
  if (!step) return true;
  if (step.type === "Sequence") return ((step.pretokenizers as Step[]) ?? []).every(preTokenizerKeepsBytes);
  if (step.type === "Split") return step.behavior !== "Removed";
  // Whitespace, WhitespaceSplit and BertPreTokenizer drop the spaces.
  return ["ByteLevel", "Metaspace", "Digits", "Punctuation", "UnicodeScripts"].includes(step.type ?? "");
}

/** Whether a token covers at most its piece's bytes of input (the exact prompt-length bound rests on it). */
export function keepsInputBytes(json: TokenizerJson): boolean {
  const model = json.model as { type?: string; byte_fallback?: boolean; fuse_unk?: boolean } | undefined;
  const preTokenizer = json.pre_tokenizer as Step;
  const byteLevel = JSON.stringify(preTokenizer ?? null).includes('"ByteLevel"');
  // A fused unknown token may stand for any run of characters it cannot spell.
  const unknownFuses = model?.type !== "BPE" || (model.fuse_unk === true && !model.byte_fallback && !byteLevel);
  return !unknownFuses && normalizerKeepsBytes(json.normalizer as Step) && preTokenizerKeepsBytes(preTokenizer);
}
