// What a model is, read from its files without loading weights or MLX:
// config, stop ids and weight size of a folder (config.json + safetensors) or
// a GGUF file. Doctor, setup and the engine's memory plan use it before any load.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { readGguf } from "../formats/gguf";
import { configFromGguf, configFromHf, type ModelConfig } from "./config";

export class ModelLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ModelLoadError";
  }
}

function readJson(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new ModelLoadError(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v as Record<string, unknown>;
  } catch (e) {
    throw new ModelLoadError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

/** The safetensors files of a folder: from the index when there is one, else every *.safetensors. */
export function safetensorsFiles(dir: string): string[] {
  const index = join(dir, "model.safetensors.index.json");
  if (existsSync(index)) {
    const map = readJson(index).weight_map as Record<string, string> | undefined;
    if (!map || typeof map !== "object") throw new ModelLoadError(`${index}: "weight_map" is missing`);
    const files = [...new Set(Object.values(map))];
    for (const f of files) {
      if (!existsSync(join(dir, f))) throw new ModelLoadError(`${index} names ${f}, which is not in ${dir}`);
    }
    return files.map((f) => join(dir, f));
  }
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".safetensors"))
    .sort();
  if (files.length === 0) throw new ModelLoadError(`no .safetensors weights in ${dir}`);
  return files.map((f) => join(dir, f));
}

/** A folder's config.json (with generation_config.json's stop ids), normalized. */
export function folderConfig(dir: string): ModelConfig {
  const configPath = join(dir, "config.json");
  if (!existsSync(configPath)) throw new ModelLoadError(`${dir} has no config.json`);
  const genPath = join(dir, "generation_config.json");
  try {
    return configFromHf(readJson(configPath), existsSync(genPath) ? readJson(genPath) : null);
  } catch (e) {
    if (e instanceof ModelLoadError) throw e;
    throw new ModelLoadError(`${configPath}: ${(e as Error).message}`);
  }
}

/**
 * A model's config and weight size without loading any weights (the engine
 * plans memory with it before it loads).
 */
export function readModelConfig(path: string): { config: ModelConfig; weightBytes: number } {
  if (!existsSync(path)) throw new ModelLoadError(`no model at ${path}`);
  if (statSync(path).isDirectory()) {
    const config = folderConfig(path);
    const weightBytes = safetensorsFiles(path).reduce((n, f) => n + statSync(f).size, 0);
    return { config, weightBytes };
  }
  let info: ReturnType<typeof readGguf>;
  try {
    info = readGguf(path, { allowMissingData: true });
  } catch (e) {
    throw new ModelLoadError(`cannot read GGUF ${path}: ${(e as Error).message}`);
  }
  const embed = info.tensors.find((t) => t.name === "token_embd.weight");
  if (!embed) throw new ModelLoadError(`${path}: no token_embd tensor`);
  const meta = new Map<string, unknown>();
  for (const [k, v] of info.metadata) meta.set(k, typeof v === "bigint" ? Number(v) : v);
  try {
    const config = configFromGguf(meta, embed.shape[0] as number);
    // As the loader decides (readGgufWeights): no output tensor, the head is the embedding.
    config.tieWordEmbeddings = !info.tensors.some((t) => t.name === "output.weight");
    return { config, weightBytes: statSync(path).size };
  } catch (e) {
    throw new ModelLoadError(`${path}: ${(e as Error).message}`);
  }
}
