// Architectures by model_type. Add a file per architecture and register it here.
import type { ModelConfig } from "./config";
import { buildGemma3 } from "./gemma3";
import { buildLlama } from "./llama";
import { buildPhi3 } from "./phi3";
import { buildQwen2 } from "./qwen2";
import { buildQwen3 } from "./qwen3";
import { buildQwen3Moe } from "./qwen3-moe";
import type { LanguageModel } from "./types";
import type { WeightStore } from "./weights";

export interface BuildOptions {
  alwaysLongRope?: boolean;
}

type Builder = (config: ModelConfig, store: WeightStore, options: BuildOptions) => LanguageModel;

const ARCHITECTURES: Record<string, Builder> = {
  llama: (c, s) => buildLlama(c, s),
  mistral: (c, s) => buildLlama(c, s),
  phi3: (c, s, o) => buildPhi3(c, s, { alwaysLongRope: o.alwaysLongRope }),
  qwen2: (c, s) => buildQwen2(c, s),
  qwen3: (c, s) => buildQwen3(c, s),
  qwen3_moe: (c, s) => buildQwen3Moe(c, s),
  gemma3_text: (c, s) => buildGemma3(c, s),
  gemma3: (c, s) => buildGemma3(c, s),
};

export function supportedArchitectures(): string[] {
  return Object.keys(ARCHITECTURES);
}

export function buildArchitecture(config: ModelConfig, store: WeightStore, options: BuildOptions = {}): LanguageModel {
  const build = ARCHITECTURES[config.modelType];
  if (!build) {
    throw new Error(
      `unsupported architecture "${config.modelType}": Pensieve runs ${supportedArchitectures().join(", ")}`,
    );
  }
  return build(config, store, options);
}
