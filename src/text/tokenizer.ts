// Tokenizer: @huggingface/tokenizers plus what transformers layers on top of tokenizer.json
// (BOS/EOS from tokenizer_config, added-token overrides, stop ids, chat templates), loaded
// from a Hugging Face model folder or from a GGUF file's metadata.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { type GgufValue, readGguf } from "../formats/gguf.ts";
import { tokenizerSpecFromGguf } from "./gguf-tokenizer.ts";
import { PIECEWISE_MIN_CHARS, PieceCache } from "./piece-cache.ts";
import {
  type AddedTokenJson,
  configTokenContent,
  type GenerationConfigJson,
  keepsInputBytes,
  type TokenizerConfigJson,
  type TokenizerJson,
} from "./tokenizer-json.ts";

export interface EncodeOptions {
  /** Add BOS/EOS as the model's config says (default true). */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, chat markers) from the text (default false). */
  skipSpecialTokens?: boolean;
}

/** Paths of a Hugging Face tokenizer's files; only tokenizerJson is required. */
export interface HfTokenizerFiles {
  tokenizerJson: string;
  tokenizerConfig?: string;
  generationConfig?: string;
  specialTokensMap?: string;
  /** chat_template.jinja, which newer repos ship instead of a template inside tokenizer_config.json. */
  chatTemplateJinja?: string;
  /** chat_template.json: {"chat_template": "..."}. */
  chatTemplateJson?: string;
}

interface TokenizerParts {
  hf: HfTokenizer;
  source: string;
  /** When set, BOS/EOS are added here; otherwise tokenizer.json's post-processor decides. */
  addBosToken: boolean | undefined;
  addEosToken: boolean | undefined;
  bosToken: string | undefined;
  eosToken: string | undefined;
  unkToken: string | undefined;
  padToken: string | undefined;
  bosId: number | undefined;
  eosId: number | undefined;
  unkId: number | undefined;
  padId: number | undefined;
  extraEosIds: number[];
  extraSpecialIds?: number[];
  chatTemplate: string | undefined;
  namedChatTemplates: Map<string, string>;
  cleanUpTokenizationSpaces: boolean;
  warnings: string[];
  /** id → token for vocabularies with duplicate texts (GGUF), which the vocab map alone loses. */
  idToTokenOverride?: string[];
  /** The pipeline before the model neither drops nor shrinks input text (see keepsInputBytes). */
  keepsInputBytes: boolean;
}

const SPECIAL_TOKEN_KEYS = ["bos_token", "eos_token", "unk_token", "pad_token"] as const;

function readJson<T>(path: string): T {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch (error) {
    throw new Error(`${path}: cannot read JSON: ${(error as Error).message}`);
  }
}

function optionalFile(dir: string, name: string): string | undefined {
  const path = join(dir, name);
  return existsSync(path) ? path : undefined;
}

/**
 * tokenizer_config.json's added_tokens_decoder overrides the flags of tokenizer.json's added tokens
 * (transformers re-adds them): e.g. Phi-3's July config turns rstrip on for its chat markers.
 * A token stays special if either file says so, as in transformers.
 */
function applyAddedTokenOverrides(tokenizerJson: TokenizerJson, config: TokenizerConfigJson): TokenizerJson {
  const overrides = config.added_tokens_decoder;
  if (!overrides) return tokenizerJson;
  const byId = new Map<number, AddedTokenJson>(tokenizerJson.added_tokens.map((token) => [token.id, { ...token }]));
  for (const [idText, override] of Object.entries(overrides)) {
    const id = Number(idText);
    const existing = byId.get(id);
    if (existing && existing.content !== override.content) continue; // conflicting entry: tokenizer.json wins
    byId.set(id, {
      id,
      content: override.content,
      lstrip: override.lstrip ?? existing?.lstrip ?? false,
      rstrip: override.rstrip ?? existing?.rstrip ?? false,
      single_word: override.single_word ?? existing?.single_word ?? false,
      normalized: override.normalized ?? existing?.normalized ?? !(override.special ?? false),
      special: (existing?.special ?? false) || (override.special ?? false),
    });
  }
  return { ...tokenizerJson, added_tokens: [...byId.values()].sort((a, b) => a.id - b.id) };
}

function pickChatTemplate(value: TokenizerConfigJson["chat_template"], named: Map<string, string>): string | undefined {
  if (typeof value === "string") return value;
  if (!Array.isArray(value)) return undefined;
  for (const entry of value) named.set(entry.name, entry.template);
  return named.get("default");
}

export class Tokenizer {
  /** Where it was loaded from (folder or file), for messages. */
  readonly source: string;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  readonly unkToken: string | undefined;
  readonly padToken: string | undefined;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly unkId: number | undefined;
  readonly padId: number | undefined;
  /** Every id that ends generation: eos_token plus generation_config's list (or GGUF end-of-turn tokens). */
  readonly eosIds: ReadonlySet<number>;
  /** Ids of special tokens: added tokens marked special, bos/eos/unk/pad, additional_special_tokens. */
  readonly specialIds: ReadonlySet<number>;
  /** Ids of added tokens (special or not): decode writes their content as is, not through the model's decoder. */
  readonly addedIds: ReadonlySet<number>;
  /** Number of token ids the tokenizer knows (the model's embedding may have more rows). */
  readonly vocabSize: number;
  /** Whether encode() with addSpecialTokens puts BOS first. */
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;
  /** The default chat template (Jinja source), if the model has one. */
  readonly chatTemplate: string | undefined;
  /** Other named templates, e.g. "tool_use". */
  readonly namedChatTemplates: ReadonlyMap<string, string>;
  /** Notes about guesses made while loading (unknown GGUF pre-tokenizer...), for logging. */
  readonly warnings: readonly string[];
  /**
   * Every input byte reaches a token piece: the normalizer and pre-tokenizer
   * only prepend, map spaces to "▁" or split, and unknown text cannot fuse
   * into one token. Then a token covers at most its piece's bytes of input.
   */
  readonly keepsInputBytes: boolean;

  private readonly hf: HfTokenizer;
  private readonly ownSpecialTokens: boolean;
  private readonly cleanUpTokenizationSpaces: boolean;
  private readonly idToTokenTable: (string | undefined)[];
  private readonly tokenToIdTable: Map<string, number>;
  /** Long prompts are tokenized piece by piece, and the pieces remembered (piece-cache.ts). */
  readonly pieces: PieceCache;
  /** The post-processor wraps any text as it wraps "" (BOS/EOS around it), so pieces may be wrapped here. */
  readonly #wrapsLikeEmpty: boolean;

  private constructor(parts: TokenizerParts) {
    this.hf = parts.hf;
    this.source = parts.source;
    this.ownSpecialTokens = parts.addBosToken !== undefined || parts.addEosToken !== undefined;
    this.cleanUpTokenizationSpaces = parts.cleanUpTokenizationSpaces;
    this.bosToken = parts.bosToken;
    this.eosToken = parts.eosToken;
    this.unkToken = parts.unkToken;
    this.padToken = parts.padToken;
    this.bosId = parts.bosId;
    this.eosId = parts.eosId;
    this.unkId = parts.unkId;
    this.padId = parts.padId;
    this.chatTemplate = parts.chatTemplate;
    this.namedChatTemplates = parts.namedChatTemplates;
    this.warnings = parts.warnings;
    this.keepsInputBytes = parts.keepsInputBytes;

    this.tokenToIdTable = this.hf.get_vocab(true);
    const table: (string | undefined)[] = parts.idToTokenOverride ? [...parts.idToTokenOverride] : [];
    for (const [token, id] of this.tokenToIdTable) table[id] ??= token;
    this.idToTokenTable = table;
    this.vocabSize = table.length;
    // The library decodes through its own id → token array; give it the complete table.
    const model = this.hf.model;
    if (model && parts.idToTokenOverride) {
      parts.idToTokenOverride.forEach((token, id) => {
        model.vocab[id] = token;
      });
    }

    const specialIds = new Set<number>();
    const addedIds = new Set<number>();
    for (const [id, token] of this.hf.get_added_tokens_decoder()) {
      addedIds.add(id);
      if (token.special) specialIds.add(id);
    }
    this.addedIds = addedIds;
    for (const id of [parts.bosId, parts.eosId, parts.unkId, parts.padId, ...(parts.extraSpecialIds ?? [])]) {
      if (id !== undefined) specialIds.add(id);
    }
    this.specialIds = specialIds;

    const eosIds = new Set<number>(parts.extraEosIds);
    if (parts.eosId !== undefined) eosIds.add(parts.eosId);
    this.eosIds = eosIds;
    const hf = this.hf;
    this.pieces = new PieceCache({
      encodePlain: (text) => hf.encode(text, { add_special_tokens: false }).ids,
      addedTokens: () => hf.get_added_tokens_decoder().values(),
    });

    if (this.ownSpecialTokens) {
      this.addBosToken = (parts.addBosToken ?? false) && parts.bosId !== undefined;
      this.addEosToken = (parts.addEosToken ?? false) && parts.eosId !== undefined;
    } else {
      // Let tokenizer.json's post-processor speak: what does it wrap around nothing?
      const wrapped = this.hf.encode("", { add_special_tokens: true }).ids;
      this.addBosToken = parts.bosId !== undefined && wrapped[0] === parts.bosId;
      this.addEosToken = parts.eosId !== undefined && wrapped.at(-1) === parts.eosId;
    }
    const probe = "Hello there, a short probe.";
    const plain = this.hf.encode(probe, { add_special_tokens: false }).ids;
    const expected = [
      ...(this.addBosToken ? [this.bosId as number] : []),
      ...plain,
      ...(this.addEosToken ? [this.eosId as number] : []),
    ];
    const wrapped = this.hf.encode(probe, { add_special_tokens: true }).ids;
    this.#wrapsLikeEmpty = wrapped.length === expected.length && wrapped.every((id, i) => id === expected[i]);
  }

  /** Load tokenizer.json (+ tokenizer_config.json, generation_config.json, special_tokens_map.json, chat_template.*) from a model folder. */
  static fromHfFolder(dir: string): Tokenizer {
    const tokenizerJson = join(dir, "tokenizer.json");
    if (!existsSync(tokenizerJson))
      throw new Error(`${dir}: no tokenizer.json (only tokenizer.json-based models are supported)`);
    return Tokenizer.fromHfFiles(
      {
        tokenizerJson,
        tokenizerConfig: optionalFile(dir, "tokenizer_config.json"),
        generationConfig: optionalFile(dir, "generation_config.json"),
        specialTokensMap: optionalFile(dir, "special_tokens_map.json"),
        chatTemplateJinja: optionalFile(dir, "chat_template.jinja"),
        chatTemplateJson: optionalFile(dir, "chat_template.json"),
      },
      dir,
    );
  }

  static fromHfFiles(files: HfTokenizerFiles, source = files.tokenizerJson): Tokenizer {
    const config: TokenizerConfigJson = files.tokenizerConfig ? readJson(files.tokenizerConfig) : {};
    if (files.specialTokensMap) {
      // transformers lets special_tokens_map.json win over tokenizer_config.json.
      const map = readJson<TokenizerConfigJson>(files.specialTokensMap);
      for (const key of SPECIAL_TOKEN_KEYS) if (map[key] !== undefined) config[key] = map[key];
      if (map.additional_special_tokens) config.additional_special_tokens = map.additional_special_tokens;
    }
    // Newer repos keep the template beside the config; transformers prefers the .jinja file.
    if (files.chatTemplateJinja) config.chat_template = readFileSync(files.chatTemplateJinja, "utf8");
    else if (files.chatTemplateJson)
      config.chat_template = readJson<TokenizerConfigJson>(files.chatTemplateJson).chat_template;
    const generationConfig: GenerationConfigJson | undefined = files.generationConfig
      ? readJson(files.generationConfig)
      : undefined;
    return Tokenizer.fromHfJson(readJson<TokenizerJson>(files.tokenizerJson), config, generationConfig, source);
  }

  /** Build from already-parsed tokenizer.json / tokenizer_config.json / generation_config.json objects. */
  static fromHfJson(
    tokenizerJson: TokenizerJson,
    config: TokenizerConfigJson = {},
    generationConfig?: GenerationConfigJson,
    source = "tokenizer.json",
  ): Tokenizer {
    const cleanUpTokenizationSpaces = config.clean_up_tokenization_spaces ?? false;
    // Tokens the config lists as additional specials are skipped by decode(skipSpecialTokens) too.
    const additionalSpecialTokens = (config.additional_special_tokens ?? [])
      .map(configTokenContent)
      .filter((token): token is string => token !== undefined);
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(applyAddedTokenOverrides(tokenizerJson, config), {
        additional_special_tokens: additionalSpecialTokens,
        clean_up_tokenization_spaces: cleanUpTokenizationSpaces,
      });
    } catch (error) {
      throw new Error(`${source}: cannot build the tokenizer: ${(error as Error).message}`);
    }
    const idOf = (token: string | undefined) => (token === undefined ? undefined : hf.token_to_id(token));
    const bosToken = configTokenContent(config.bos_token);
    const eosToken = configTokenContent(config.eos_token);
    const unkToken = configTokenContent(config.unk_token);
    const padToken = configTokenContent(config.pad_token);
    const generationEos = generationConfig?.eos_token_id;
    const namedChatTemplates = new Map<string, string>();
    return new Tokenizer({
      hf,
      source,
      addBosToken: config.add_bos_token,
      addEosToken: config.add_eos_token,
      bosToken,
      eosToken,
      unkToken,
      padToken,
      bosId: idOf(bosToken) ?? generationConfig?.bos_token_id,
      eosId: idOf(eosToken) ?? (typeof generationEos === "number" ? generationEos : generationEos?.[0]),
      unkId: idOf(unkToken),
      padId: idOf(padToken) ?? generationConfig?.pad_token_id,
      extraEosIds: generationEos === undefined ? [] : [generationEos].flat(),
      extraSpecialIds: additionalSpecialTokens.map((token) => hf.token_to_id(token)).filter((id) => id !== undefined),
      chatTemplate: pickChatTemplate(config.chat_template, namedChatTemplates),
      namedChatTemplates,
      cleanUpTokenizationSpaces,
      warnings: [],
      keepsInputBytes: keepsInputBytes(tokenizerJson),
    });
  }

  /** Load the tokenizer stored in a GGUF file's metadata (reads only the header). */
  static fromGguf(path: string): Tokenizer {
    return Tokenizer.fromGgufMetadata(readGguf(path, { allowMissingData: true }).metadata, path);
  }

  static fromGgufMetadata(metadata: Map<string, GgufValue>, source = "GGUF"): Tokenizer {
    const spec = tokenizerSpecFromGguf(metadata, source);
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(spec.tokenizerJson, { clean_up_tokenization_spaces: false });
    } catch (error) {
      throw new Error(`${source}: cannot build the tokenizer: ${(error as Error).message}`);
    }
    const text = (id: number | undefined) => (id === undefined ? undefined : spec.tokens[id]);
    return new Tokenizer({
      hf,
      source,
      addBosToken: spec.addBosToken,
      addEosToken: spec.addEosToken,
      bosToken: text(spec.bosId),
      eosToken: text(spec.eosId),
      unkToken: text(spec.unkId),
      padToken: text(spec.padId),
      bosId: spec.bosId,
      eosId: spec.eosId,
      unkId: spec.unkId,
      padId: spec.padId,
      extraEosIds: spec.endOfGenerationIds,
      chatTemplate: spec.chatTemplate,
      namedChatTemplates: spec.namedChatTemplates,
      cleanUpTokenizationSpaces: false,
      warnings: spec.warnings,
      idToTokenOverride: spec.tokens,
      keepsInputBytes: keepsInputBytes(spec.tokenizerJson),
    });
  }

  /** Text → token ids. Special-token texts inside `text` (e.g. "<|end|>") become their ids, as in transformers. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const addSpecialTokens = options.addSpecialTokens ?? true;
    const long = this.pieces.enabled && text.length >= PIECEWISE_MIN_CHARS;
    if (!this.ownSpecialTokens && !(long && this.#wrapsLikeEmpty)) {
      return this.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    }
    // Where tokenizer.json's post-processor adds BOS/EOS, the constructor read which from an empty encode.
    const ids = this.pieces.encode(text);
    if (addSpecialTokens && this.addBosToken && this.bosId !== undefined) ids.unshift(this.bosId);
    if (addSpecialTokens && this.addEosToken && this.eosId !== undefined) ids.push(this.eosId);
    return ids;
  }

  /** Token ids → text. Ids the tokenizer does not know (padding rows of the embedding) are dropped, as in Python. */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const known = ids.filter((id) => this.idToTokenTable[id] !== undefined);
    if (known.length === 0) return "";
    return this.hf.decode(known, {
      skip_special_tokens: options.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: this.cleanUpTokenizationSpaces,
    });
  }

  idToToken(id: number): string | undefined {
    return this.idToTokenTable[id];
  }

  tokenToId(token: string): number | undefined {
    return this.tokenToIdTable.get(token);
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  isEos(id: number): boolean {
    return this.eosIds.has(id);
  }
}

/** The tokenizer of a model folder (tokenizer.json) or a GGUF file (its metadata). */
export function loadTokenizer(modelPath: string): Tokenizer {
  return modelPath.toLowerCase().endsWith(".gguf") ? Tokenizer.fromGguf(modelPath) : Tokenizer.fromHfFolder(modelPath);
}
