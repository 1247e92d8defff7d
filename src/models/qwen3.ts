// Qwen3 (dense, and Qwen3-Coder's dense sizes): the Llama block with a
// per-head RMSNorm on q and on k before RoPE, no q/k/v bias, explicit head_dim.
// Reads side by side with mlx-lm's models/qwen3.py.
import type { ModelConfig } from "./config";
import { buildLlama } from "./llama";
import type { LanguageModel } from "./types";
import type { WeightStore } from "./weights";

export function buildQwen3(config: ModelConfig, store: WeightStore): LanguageModel {
  return buildLlama({ ...config, slidingWindow: null }, store, { qkNorm: true });
}
