// Rebuild a Hugging Face tokenizer.json (in memory) from the tokenizer stored in GGUF metadata,
// following llama.cpp's reading of the same keys so ids match what llama.cpp would produce.
import { type GgufValue, ggufBool, ggufNumber, ggufNumberArray, ggufString, ggufStringArray } from "../formats/gguf.ts";
import type { AddedTokenJson, BpeModelJson, TokenizerJson } from "./tokenizer-json.ts";

/** llama.cpp's token types (tokenizer.ggml.token_type). */
export enum GgufTokenType {
  UNDEFINED = 0,
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
}

export interface GgufTokenizerSpec {
  tokenizerJson: TokenizerJson;
  /** id → token text exactly as stored (including duplicates the vocab map cannot hold). */
  tokens: string[];
  bosId: number | undefined;
  eosId: number | undefined;
  unkId: number | undefined;
  padId: number | undefined;
  /** Ids that end generation: eos, eot, eom and end-of-turn tokens llama.cpp also treats so. */
  endOfGenerationIds: number[];
  addBosToken: boolean;
  addEosToken: boolean;
  chatTemplate: string | undefined;
  /** Named chat templates (tokenizer.chat_template.<name>). */
  namedChatTemplates: Map<string, string>;
  /** Things that were guessed rather than read, for the caller to log. */
  warnings: string[];
}

// How byte-level BPE vocabularies split text before merging, by tokenizer.ggml.pre. Like llama.cpp,
// each regex in turn cuts the pieces left by the previous one (matches and gaps both kept).
// Case-insensitive contractions are spelled out so the regexes need no modifier support.
const CONTRACTIONS_ANY_CASE = "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]";
const GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const LLAMA3_SPLIT = `(?:${CONTRACTIONS_ANY_CASE})|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`;
const QWEN2_SPLIT = `(?:${CONTRACTIONS_ANY_CASE})|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`;
const QWEN35_SPLIT = `(?:${CONTRACTIONS_ANY_CASE})|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`;

interface SplitRule {
  pre: string[];
  regexes: string[];
  /** Llama 3's tokenizer.json sets ignore_merges: a whole pre-token found in the vocabulary wins. */
  ignoreMerges?: boolean;
}

const LLAMA3_RULE: SplitRule = {
  pre: ["llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "dbrx", "smaug-bpe"],
  regexes: [LLAMA3_SPLIT],
  ignoreMerges: true,
};

const SPLIT_RULES: SplitRule[] = [
  { pre: ["gpt2", "default", "gpt-2", "mpt", "olmo", "jais", "trillion"], regexes: [GPT2_SPLIT] },
  // Every digit on its own first (SmolLM's tokenizer.json: Digits(individual_digits) + ByteLevel).
  {
    pre: ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"],
    regexes: ["\\p{N}", GPT2_SPLIT],
  },
  LLAMA3_RULE,
  { pre: ["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"], regexes: [QWEN2_SPLIT] },
  { pre: ["qwen35"], regexes: [QWEN35_SPLIT] },
  {
    pre: ["deepseek-coder"],
    regexes: ["[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", "\\p{N}"],
  },
  { pre: ["falcon"], regexes: ["[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2_SPLIT, "[0-9][0-9][0-9]"] },
];

// Token texts llama.cpp treats as end-of-generation when the file marks them control.
const END_OF_GENERATION_TEXTS = new Set([
  "<|eot_id|>",
  "<|eom_id|>",
  "<|im_end|>",
  "<|end|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "<|end_of_text|>",
  "<EOT>",
  "_<EOT>",
  "<end_of_utterance>",
  "<｜end▁of▁sentence｜>",
  "</s>",
]);

function byteLevelPreTokenizer(
  pre: string | undefined,
  warnings: string[],
): { preTokenizer: unknown; ignoreMerges: boolean } {
  let rule = SPLIT_RULES.find((candidate) => candidate.pre.includes(pre ?? "default"));
  if (!rule) {
    warnings.push(
      `unknown tokenizer.ggml.pre "${pre}": splitting text with the GPT-2 regex, ids may differ from llama.cpp`,
    );
    rule = SPLIT_RULES[0]!;
  }
  const splits = rule.regexes.map((regex) => ({
    type: "Split",
    pattern: { Regex: regex },
    behavior: "Isolated",
    invert: false,
  }));
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false };
  return {
    preTokenizer: { type: "Sequence", pretokenizers: [...splits, byteLevel] },
    ignoreMerges: rule.ignoreMerges ?? false,
  };
}

/** "left right" → [left, right]; the separator search starts at 1 like llama.cpp, so a left part may be a space. */
function parseMerge(merge: string): [string, string] {
  const at = merge.indexOf(" ", 1);
  if (at < 0) throw new Error(`malformed merge "${merge}" in tokenizer.ggml.merges`);
  return [merge.slice(0, at), merge.slice(at + 1)];
}

/**
 * SentencePiece-BPE vocabularies store scores, not merges. Merging the best-scoring adjacent pair
 * (SentencePiece) equals BPE with merges ranked by the merged piece's score, so derive those
 * merges: every split of a normal token into two vocabulary pieces, best score first.
 * Same ordering as transformers' generate_merges (score, then longer left, longer right).
 */
function mergesFromScores(tokens: string[], scores: number[], types: number[] | undefined): [string, string][] {
  const idOf = new Map<string, number>();
  tokens.forEach((token, id) => {
    if (!idOf.has(token)) idOf.set(token, id);
  });
  const candidates: {
    left: string;
    right: string;
    score: number;
    leftLength: number;
    rightLength: number;
    order: number;
  }[] = [];
  tokens.forEach((token, id) => {
    if (types && types[id] !== GgufTokenType.NORMAL) return;
    const chars = Array.from(token);
    const local: { left: string; right: string; leftLength: number; rightLength: number }[] = [];
    for (let cut = 1; cut < chars.length; cut++) {
      const left = chars.slice(0, cut).join("");
      const right = chars.slice(cut).join("");
      if (idOf.has(left) && idOf.has(right))
        local.push({ left, right, leftLength: cut, rightLength: chars.length - cut });
    }
    local.sort((a, b) => idOf.get(a.left)! - idOf.get(b.left)! || idOf.get(a.right)! - idOf.get(b.right)!);
    for (const pair of local) candidates.push({ ...pair, score: scores[id] ?? 0, order: candidates.length });
  });
  candidates.sort(
    (a, b) => b.score - a.score || b.leftLength - a.leftLength || b.rightLength - a.rightLength || a.order - b.order,
  );
  return candidates.map(({ left, right }) => [left, right]);
}

function addedTokens(tokens: string[], types: number[] | undefined, rstripIds: Set<number>): AddedTokenJson[] {
  if (!types) return [];
  const added: AddedTokenJson[] = [];
  tokens.forEach((content, id) => {
    const type = types[id];
    // User-defined tokens are matched whole in text but are not special (llama.cpp, transformers agree),
    // except end-of-turn markers, which llama.cpp promotes to control.
    const special =
      type === GgufTokenType.CONTROL ||
      type === GgufTokenType.UNKNOWN ||
      (type === GgufTokenType.USER_DEFINED && END_OF_GENERATION_TEXTS.has(content));
    if (!special && type !== GgufTokenType.USER_DEFINED) return;
    added.push({
      id,
      content,
      special,
      normalized: false,
      lstrip: false,
      rstrip: rstripIds.has(id),
      single_word: false,
    });
  });
  return added;
}

/**
 * llama.cpp hard-codes rstrip on Phi-3's chat tokens (as Phi-3's July tokenizer_config does),
 * except <unk>, <s> and <|endoftext|>.
 */
function phi3RstripIds(metadata: Map<string, GgufValue>, tokens: string[], types: number[] | undefined): Set<number> {
  const name = (ggufString(metadata, "general.name") ?? "").toLowerCase();
  const ids = new Set<number>();
  if (!types || !(name.includes("phi-3") || name.includes("phi3"))) return ids;
  tokens.forEach((token, id) => {
    const type = types[id];
    const special =
      type === GgufTokenType.CONTROL || type === GgufTokenType.USER_DEFINED || type === GgufTokenType.UNKNOWN;
    if ((special || token === "</s>") && !["<unk>", "<s>", "<|endoftext|>"].includes(token)) ids.add(id);
  });
  return ids;
}

function vocabObject(tokens: string[]): Record<string, number> {
  // A null-prototype object so tokens such as "__proto__" or "constructor" are ordinary keys.
  const vocab: Record<string, number> = Object.create(null);
  tokens.forEach((token, id) => {
    vocab[token] = id;
  });
  return vocab;
}

/** Build the tokenizer.json form and the special-token facts of a GGUF file's tokenizer metadata. */
export function tokenizerSpecFromGguf(metadata: Map<string, GgufValue>, source = "GGUF"): GgufTokenizerSpec {
  const fail = (problem: string): never => {
    throw new Error(`${source}: ${problem}`);
  };
  const model =
    ggufString(metadata, "tokenizer.ggml.model") ?? fail("no tokenizer.ggml.model key: the file has no tokenizer");
  const tokens = ggufStringArray(metadata, "tokenizer.ggml.tokens") ?? fail("no tokenizer.ggml.tokens key");
  const types = ggufNumberArray(metadata, "tokenizer.ggml.token_type");
  const pre = ggufString(metadata, "tokenizer.ggml.pre");
  const warnings: string[] = [];
  const idOrUndefined = (key: string) => {
    const id = ggufNumber(metadata, key);
    return id !== undefined && id >= 0 && id < tokens.length ? id : undefined;
  };
  const bosId = idOrUndefined("tokenizer.ggml.bos_token_id");
  const eosId = idOrUndefined("tokenizer.ggml.eos_token_id");
  let unkId = idOrUndefined("tokenizer.ggml.unknown_token_id");
  const padId = idOrUndefined("tokenizer.ggml.padding_token_id");
  const added = addedTokens(tokens, types, phi3RstripIds(metadata, tokens, types));

  let tokenizerJson: TokenizerJson;
  let addBosDefault: boolean;
  if (model === "gpt2") {
    const merges = (
      ggufStringArray(metadata, "tokenizer.ggml.merges") ?? fail("gpt2 tokenizer without tokenizer.ggml.merges")
    ).map(parseMerge);
    const { preTokenizer, ignoreMerges } = byteLevelPreTokenizer(pre, warnings);
    const bpe: BpeModelJson = {
      type: "BPE",
      vocab: vocabObject(tokens),
      merges,
      byte_fallback: false,
      ignore_merges: ignoreMerges,
    };
    tokenizerJson = {
      version: "1.0",
      added_tokens: added,
      normalizer: null,
      pre_tokenizer: preTokenizer,
      post_processor: null,
      decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: true },
      model: bpe,
    };
    // llama.cpp adds BOS for Llama 3 vocabularies that do not say.
    addBosDefault = LLAMA3_RULE.pre.includes(pre ?? "");
  } else if (model === "llama") {
    const scores =
      ggufNumberArray(metadata, "tokenizer.ggml.scores") ?? fail("llama tokenizer without tokenizer.ggml.scores");
    const givenMerges = ggufStringArray(metadata, "tokenizer.ggml.merges");
    const merges = givenMerges ? givenMerges.map(parseMerge) : mergesFromScores(tokens, scores, types);
    unkId ??= 0;
    const addSpacePrefix = ggufBool(metadata, "tokenizer.ggml.add_space_prefix") ?? true;
    // The tokenizer.json form of a SentencePiece-BPE model (as Llama 2 / Phi-3 ship it): each text
    // segment between added tokens gets a "▁" prefix and spaces become "▁"; decoding reverses both.
    const normalizers: unknown[] = [{ type: "Replace", pattern: { String: " " }, content: "▁" }];
    if (addSpacePrefix) normalizers.unshift({ type: "Prepend", prepend: "▁" });
    const decoders: unknown[] = [
      { type: "Replace", pattern: { String: "▁" }, content: " " },
      { type: "ByteFallback" },
      { type: "Fuse" },
    ];
    if (addSpacePrefix) decoders.push({ type: "Strip", content: " ", start: 1, stop: 0 });
    const bpe: BpeModelJson = {
      type: "BPE",
      vocab: vocabObject(tokens),
      merges,
      unk_token: tokens[unkId] ?? null,
      byte_fallback: true,
      fuse_unk: true,
    };
    tokenizerJson = {
      version: "1.0",
      added_tokens: added,
      normalizer: { type: "Sequence", normalizers },
      pre_tokenizer: null,
      post_processor: null,
      decoder: { type: "Sequence", decoders },
      model: bpe,
    };
    addBosDefault = true;
  } else {
    return fail(`tokenizer.ggml.model "${model}" is not supported (supported: gpt2, llama)`);
  }

  const endOfGeneration = new Set<number>();
  for (const key of ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]) {
    const id = idOrUndefined(key);
    if (id !== undefined) endOfGeneration.add(id);
  }
  tokens.forEach((token, id) => {
    const type = types?.[id];
    if (END_OF_GENERATION_TEXTS.has(token) && (type === GgufTokenType.CONTROL || type === GgufTokenType.USER_DEFINED)) {
      endOfGeneration.add(id);
    }
  });

  const namedChatTemplates = new Map<string, string>();
  for (const [key, value] of metadata) {
    const prefix = "tokenizer.chat_template.";
    if (key.startsWith(prefix) && typeof value === "string") namedChatTemplates.set(key.slice(prefix.length), value);
  }

  return {
    tokenizerJson,
    tokens,
    bosId,
    eosId,
    unkId,
    padId,
    endOfGenerationIds: [...endOfGeneration].sort((a, b) => a - b),
    addBosToken: ggufBool(metadata, "tokenizer.ggml.add_bos_token") ?? addBosDefault,
    addEosToken: ggufBool(metadata, "tokenizer.ggml.add_eos_token") ?? false,
    chatTemplate: ggufString(metadata, "tokenizer.chat_template"),
    namedChatTemplates,
    warnings,
  };
}
