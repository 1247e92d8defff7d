// Short names for models Pensieve runs, and the reading of a model spec: an
// alias, a local path, or a Hub repo id. The issue-15 repos (Qwen3, Qwen2.5-Coder,
// Gemma 3, Phi-4-mini, Mistral) could not be checked against the Hub from here:
// each name is one that public projects' code and docs load with mlx-lm.
//
// Spec forms:
//   phi3-mini-mlx                       an alias below
//   ./models/my-model, /abs/x.gguf, ~/m a local folder (config.json + safetensors) or GGUF file
//   org/name[@revision]                 a Hub repo with safetensors weights
//   org/name/file.gguf[@revision]       one GGUF file of a Hub repo
// A leading https://huggingface.co/ or hf.co/ is accepted and dropped.
import { existsSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { modelsDir } from "../paths";
import type { Env } from "./settings";

/** The embedded default model's file in modelsDir() (see scripts/mlx.lock.json, defaultModel.file). */
export const EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf";
export const DEFAULT_MODEL_ALIAS = "smollm2-135m";
export const FLAGSHIP_MODEL_ALIAS = "phi3-mini-mlx";

export interface ModelAlias {
  name: string;
  description: string;
  /** "embedded": a file shipped in modelsDir() by setup, never downloaded. */
  source: { kind: "hub"; repoId: string } | { kind: "embedded"; file: string };
  modelType: "llama" | "phi3" | "mistral" | "qwen2" | "qwen3" | "qwen3_moe" | "gemma3_text";
  /** max_position_embeddings of the model's config.json (the most it can hold before memory caps it). */
  contextLength: number;
}

/** Tokens in Claude Code's first request (system prompt and tool definitions), measured as about 20K. */
export const CLAUDE_CODE_FIRST_REQUEST_TOKENS = 20_000;
/**
 * The context a model needs for Claude Code: its first request plus room to
 * answer (the same as CLAUDE_CODE_SESSION_TOKENS in src/engine/engine.ts, which
 * this module cannot import: that one loads MLX).
 */
export const CLAUDE_CODE_MIN_CONTEXT = 24_576;

/** Aliases whose model holds a Claude Code session (by their own context; memory may cap it lower). */
export function claudeCodeAliases(): ModelAlias[] {
  return MODEL_ALIASES.filter((a) => a.contextLength >= CLAUDE_CODE_MIN_CONTEXT);
}

export const MODEL_ALIASES: readonly ModelAlias[] = [
  {
    name: DEFAULT_MODEL_ALIAS,
    description: "SmolLM2 135M Instruct, Q4_1 GGUF, embedded default (no download)",
    source: { kind: "embedded", file: EMBEDDED_MODEL_FILE },
    modelType: "llama",
    contextLength: 8192,
  },
  {
    name: FLAGSHIP_MODEL_ALIAS,
    description: "Phi-3 mini 128K instruct, MLX 4-bit (about 2.1 GB)",
    source: { kind: "hub", repoId: "mlx-community/Phi-3-mini-128k-instruct-4bit" },
    modelType: "phi3",
    contextLength: 131072,
  },
  {
    name: "phi3-mini-4k-mlx",
    description: "Phi-3 mini 4K instruct, MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/Phi-3-mini-4k-instruct-4bit" },
    modelType: "phi3",
    contextLength: 4096,
  },
  {
    name: "phi3.5-mini-mlx",
    description: "Phi-3.5 mini instruct (128K), MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/Phi-3.5-mini-instruct-4bit" },
    modelType: "phi3",
    contextLength: 131072,
  },
  {
    name: "llama3.2-1b-mlx",
    description: "Llama 3.2 1B instruct, MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/Llama-3.2-1B-Instruct-4bit" },
    modelType: "llama",
    contextLength: 131072,
  },
  {
    name: "llama3.2-3b-mlx",
    description: "Llama 3.2 3B instruct, MLX 4-bit (about 1.8 GB)",
    source: { kind: "hub", repoId: "mlx-community/Llama-3.2-3B-Instruct-4bit" },
    modelType: "llama",
    contextLength: 131072,
  },
  {
    name: "llama3.1-8b-mlx",
    description: "Llama 3.1 8B instruct, MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/Meta-Llama-3.1-8B-Instruct-4bit" },
    modelType: "llama",
    contextLength: 131072,
  },
  {
    name: "smollm2-1.7b-mlx",
    description: "SmolLM2 1.7B instruct, MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/SmolLM2-1.7B-Instruct-4bit" },
    modelType: "llama",
    contextLength: 8192,
  },
  {
    name: "qwen3-0.6b-mlx",
    description: "Qwen3 0.6B, MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/Qwen3-0.6B-4bit" },
    modelType: "qwen3",
    contextLength: 40960,
  },
  {
    name: "qwen3-1.7b-mlx",
    description: "Qwen3 1.7B, MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/Qwen3-1.7B-4bit" },
    modelType: "qwen3",
    contextLength: 40960,
  },
  {
    name: "qwen3-4b-mlx",
    description: "Qwen3 4B, MLX 4-bit (about 2.3 GB)",
    source: { kind: "hub", repoId: "mlx-community/Qwen3-4B-4bit" },
    modelType: "qwen3",
    contextLength: 40960,
  },
  {
    name: "qwen3-8b-mlx",
    description: "Qwen3 8B, MLX 4-bit (about 4.6 GB)",
    source: { kind: "hub", repoId: "mlx-community/Qwen3-8B-4bit" },
    modelType: "qwen3",
    contextLength: 40960,
  },
  {
    name: "qwen3-30b-a3b-mlx",
    description: "Qwen3 30B-A3B mixture of experts, MLX 4-bit (about 17 GB, all experts resident)",
    source: { kind: "hub", repoId: "mlx-community/Qwen3-30B-A3B-4bit" },
    modelType: "qwen3_moe",
    contextLength: 40960,
  },
  {
    name: "qwen2.5-coder-1.5b-mlx",
    description: "Qwen2.5-Coder 1.5B instruct, MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/Qwen2.5-Coder-1.5B-Instruct-4bit" },
    modelType: "qwen2",
    contextLength: 32768,
  },
  {
    name: "qwen2.5-coder-7b-mlx",
    description: "Qwen2.5-Coder 7B instruct, MLX 4-bit (about 4.3 GB)",
    source: { kind: "hub", repoId: "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit" },
    modelType: "qwen2",
    contextLength: 32768,
  },
  {
    name: "gemma3-1b-mlx",
    description: "Gemma 3 1B instruct, MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/gemma-3-1b-it-4bit" },
    modelType: "gemma3_text",
    contextLength: 32768,
  },
  {
    name: "gemma3-4b-mlx",
    description: "Gemma 3 4B instruct, text only, MLX 4-bit",
    source: { kind: "hub", repoId: "mlx-community/gemma-3-text-4b-it-4bit" },
    modelType: "gemma3_text",
    contextLength: 131072,
  },
  {
    name: "gemma3-12b-mlx",
    description: "Gemma 3 12B instruct, text only, MLX 4-bit (about 7 GB)",
    source: { kind: "hub", repoId: "mlx-community/gemma-3-text-12b-it-4bit" },
    modelType: "gemma3_text",
    contextLength: 131072,
  },
  {
    name: "phi4-mini-mlx",
    description: "Phi-4-mini instruct (128K), MLX 4-bit (about 2.2 GB)",
    source: { kind: "hub", repoId: "mlx-community/Phi-4-mini-instruct-4bit" },
    modelType: "phi3",
    contextLength: 131072,
  },
  {
    name: "mistral-7b-mlx",
    description: "Mistral 7B instruct v0.3, MLX 4-bit (about 4 GB)",
    source: { kind: "hub", repoId: "mlx-community/Mistral-7B-Instruct-v0.3-4bit" },
    modelType: "mistral",
    contextLength: 32768,
  },
];

function findAlias(name: string): ModelAlias | null {
  const lower = name.trim().toLowerCase();
  return MODEL_ALIASES.find((a) => a.name === lower) ?? null;
}

export interface LocalModelSpec {
  kind: "local";
  spec: string;
  path: string;
  format: "gguf" | "folder";
  exists: boolean;
}

export interface HubModelSpec {
  kind: "hub";
  spec: string;
  repoId: string;
  revision: string;
  /** A single file to fetch (GGUF), or null for the repo's model files. */
  filename: string | null;
}

export interface AliasModelSpec {
  kind: "alias";
  spec: string;
  alias: ModelAlias;
  /** Where the alias leads. */
  target: LocalModelSpec | HubModelSpec;
}

export type ResolvedModelSpec = AliasModelSpec | LocalModelSpec | HubModelSpec;

export interface ResolveOptions {
  env?: Env;
  /** For relative paths (default process.cwd()). */
  cwd?: string;
}

const HUB_PREFIXES = [
  /^https?:\/\/(www\.)?huggingface\.co\//i,
  /^https?:\/\/hf\.co\//i,
  /^hf\.co\//i,
  /^huggingface\.co\//i,
];
const HUB_SPEC = /^([A-Za-z0-9][\w.-]*)\/([\w.-]+)((?:\/[^@]+)?)(?:@(.+))?$/;

function localSpec(spec: string, path: string): LocalModelSpec {
  const exists = existsSync(path);
  const isDir = exists && statSync(path).isDirectory();
  return { kind: "local", spec, path, format: !isDir && path.endsWith(".gguf") ? "gguf" : "folder", exists };
}

/** Reads a model spec (see the header comment); throws with the accepted forms when it is none of them. */
export function resolveModelSpec(spec: string, options: ResolveOptions = {}): ResolvedModelSpec {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const text = spec.trim();
  if (!text) throw new Error("empty model name: use an alias (e.g. phi3-mini-mlx), a path, or org/name");

  const alias = findAlias(text);
  if (alias) {
    const target: LocalModelSpec | HubModelSpec =
      alias.source.kind === "embedded"
        ? localSpec(text, join(modelsDir(env), alias.source.file))
        : { kind: "hub", spec: text, repoId: alias.source.repoId, revision: "main", filename: null };
    return { kind: "alias", spec: text, alias, target };
  }

  if (text === "~" || text.startsWith("~/")) return localSpec(text, join(env.HOME || homedir(), text.slice(1)));
  if (isAbsolute(text) || text.startsWith("./") || text.startsWith("../") || text === ".") {
    return localSpec(text, resolve(cwd, text));
  }
  // A relative path that exists wins over a repo id of the same shape.
  const relative = resolve(cwd, text);
  if (existsSync(relative)) return localSpec(text, relative);
  // A bare file name of something in modelsDir (e.g. another GGUF put there by hand).
  if (!text.includes("/") && existsSync(join(modelsDir(env), text))) return localSpec(text, join(modelsDir(env), text));

  let hub = text;
  for (const prefix of HUB_PREFIXES) hub = hub.replace(prefix, "");
  const m = HUB_SPEC.exec(hub);
  if (m && !hub.includes("..")) {
    const file = m[3] ? m[3].slice(1) : "";
    // A web URL to a file (…/blob/main/x.gguf or …/resolve/main/x.gguf) names the revision in the path.
    const web = /^(?:blob|resolve)\/([^/]+)\/(.+)$/.exec(file);
    const filename = web ? web[2]! : file;
    if (filename && !filename.endsWith(".gguf")) {
      throw new Error(
        `model "${text}": only a .gguf file can be named inside a repo; for safetensors models use org/name`,
      );
    }
    return {
      kind: "hub",
      spec: text,
      repoId: `${m[1]}/${m[2]}`,
      revision: m[4] ?? web?.[1] ?? "main",
      filename: filename || null,
    };
  }
  throw new Error(
    `model "${text}" is not an alias (${MODEL_ALIASES.map((a) => a.name).join(", ")}), ` +
      "an existing path, or a Hugging Face repo id (org/name, org/name/file.gguf)",
  );
}
