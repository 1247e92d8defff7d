// Turns what a user names (nothing, an alias, a path) into a local model path.
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { readLock } from "../mlx/backend";
import { modelsDir } from "../paths";

export const DEFAULT_MODEL_ALIAS = "smollm2-135m";

/** The embedded default model's file (extracted by set-up). */
export function defaultModelPath(): string {
  return join(modelsDir(), readLock().defaultModel.file);
}

/** A local model path for `spec`, or an error that says how to get it. */
export function resolveLocalModel(spec: string | undefined): string {
  if (spec === undefined || spec === DEFAULT_MODEL_ALIAS) {
    const path = defaultModelPath();
    if (!existsSync(path)) throw new Error(`the default model is not extracted yet (${path}): run \`npm run setup\``);
    return path;
  }
  const path = resolve(spec);
  if (existsSync(path)) return path;
  throw new Error(
    `no model at "${spec}": give a model folder, a .gguf file, or run \`pensieve setup --model ${spec}\``,
  );
}
