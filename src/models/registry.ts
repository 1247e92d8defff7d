// The architectures Pensieve runs, one descriptor file each (see
// architecture.ts). A new architecture: write its file, add it here.
// MLX-free: config mapping and doctor read it without loading MLX.
import type { Architecture } from "./architecture";
import { gemma3 } from "./gemma3";
import { llama } from "./llama";
import { mistral } from "./mistral";
import { mixtral } from "./mixtral";
import { phi3 } from "./phi3";
import { qwen2 } from "./qwen2";
import { qwen3 } from "./qwen3";
import { qwen3Moe } from "./qwen3-moe";

const ARCHITECTURES: readonly Architecture[] = [llama, mistral, phi3, qwen2, qwen3, qwen3Moe, gemma3, mixtral];

/** Every model_type Pensieve runs. */
export function supportedArchitectures(): string[] {
  return ARCHITECTURES.flatMap((a) => a.modelTypes);
}

/** The architecture of a config.json model_type, or null. */
export function findArchitecture(modelType: string): Architecture | null {
  return ARCHITECTURES.find((a) => a.modelTypes.includes(modelType)) ?? null;
}

/** The architecture of a config.json model_type; throws with the list of those Pensieve runs. */
export function architectureFor(modelType: string): Architecture {
  const found = findArchitecture(modelType);
  if (!found) {
    throw new Error(`unsupported architecture "${modelType}": Pensieve runs ${supportedArchitectures().join(", ")}`);
  }
  return found;
}

/** The architecture of a GGUF file's general.architecture, or null. */
export function findGgufArchitecture(ggufArchitecture: string): Architecture | null {
  return ARCHITECTURES.find((a) => a.gguf?.architecture === ggufArchitecture) ?? null;
}

/** The general.architecture values Pensieve reads. */
export function supportedGgufArchitectures(): string[] {
  return ARCHITECTURES.flatMap((a) => (a.gguf ? [a.gguf.architecture] : []));
}
