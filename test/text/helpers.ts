// Shared paths and fixture loading for the text-layer tests.
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Tokenizer } from "../../src/text/tokenizer.ts";

export const REPO_ROOT = resolve(import.meta.dir, "..", "..");
export const FIXTURES = join(REPO_ROOT, "test", "fixtures", "text");
export const PHI3_DIR = join(REPO_ROOT, "..", "shared", "fixtures", "phi3-mini-128k");
export const SMOLLM2_GGUF = join(REPO_ROOT, ".pensieve", "models", "SmolLM2-135M-Instruct.Q4_1.gguf");
export const PHI3_VOCAB_GGUF = join(FIXTURES, "llama.cpp", "ggml-vocab-phi-3.gguf");

export function fixture<T>(name: string): T {
  return JSON.parse(readFileSync(join(FIXTURES, name), "utf8")) as T;
}

export function testStrings(): string[] {
  return fixture<{ strings: string[] }>("strings.json").strings;
}

// Tokenizers are slow-ish to build (~100 ms): share one of each across test files.
const cache = new Map<string, Tokenizer>();

function cached(key: string, load: () => Tokenizer): Tokenizer {
  let tokenizer = cache.get(key);
  if (!tokenizer) {
    tokenizer = load();
    cache.set(key, tokenizer);
  }
  return tokenizer;
}

export function phi3(config: "april" | "july"): Tokenizer {
  return cached(`phi3-${config}`, () =>
    Tokenizer.fromHfFiles({
      tokenizerJson: join(PHI3_DIR, "tokenizer.json"),
      tokenizerConfig: join(PHI3_DIR, config === "april" ? "tokenizer_config.json" : "tokenizer_config.2024-07.json"),
      generationConfig: join(PHI3_DIR, "generation_config.json"),
    }),
  );
}

export function smollm2(): Tokenizer {
  return cached("smollm2", () => Tokenizer.fromGguf(SMOLLM2_GGUF));
}

export function phi3Gguf(): Tokenizer {
  return cached("phi3-gguf", () => Tokenizer.fromGguf(PHI3_VOCAB_GGUF));
}

/** Shows invisible characters in test names. */
export function label(text: string): string {
  const shown = JSON.stringify(text);
  return shown.length > 60 ? `${shown.slice(0, 57)}...` : shown;
}
