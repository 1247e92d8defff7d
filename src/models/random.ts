// Writes a random-weight model folder in the real mlx-community format (the
// tensors the architecture's file lists in weightShapes):
// config.json (with a `quantization` block), model.safetensors (+ index),
// tokenizer files copied from a reference folder. Tests use shrunk configs,
// benchmarks the full-size Phi-3-mini. Weights come from a seeded MLX key, so
// the same call writes the same bytes.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { TensorSpec } from "./architecture";
import { configFromHf } from "./config";
import { architectureFor } from "./registry";

export interface RandomModelSpec {
  /** The config.json to write (Hugging Face keys; `quantization` decides the format). */
  config: Record<string, unknown>;
  /** Folder with tokenizer.json, tokenizer_config.json, generation_config.json to copy. */
  tokenizerFrom: string;
  seed: number;
  /** Float dtype of scales, biases and norms (mlx-community ships float16). */
  floatDtype?: mx.Dtype;
  /** Standard deviation of the weights. */
  std?: number;
}

const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "generation_config.json",
  "special_tokens_map.json",
];

export type { TensorKind } from "./architecture";

/** Tensor names, shapes ([out, in], or [experts, out, in]) and kinds: what the config's architecture reads. */
export function weightShapes(config: Record<string, unknown>): TensorSpec[] {
  const normalized = configFromHf(config);
  return architectureFor(normalized.modelType).weightShapes(normalized);
}

/** Writes the folder; returns the tensor count. Large models are generated tensor by tensor. */
export function writeRandomModel(dir: string, spec: RandomModelSpec): number {
  mkdirSync(dir, { recursive: true });
  const floatDtype = spec.floatDtype ?? mx.Dtype.float16;
  const std = spec.std ?? 0.02;
  const q = spec.config.quantization as Record<string, unknown> | undefined;
  /** The config's quantization for a module: its own override, else the default. */
  const packing = (name: string) => {
    const own = q?.[name] as { group_size: number; bits: number } | undefined;
    return own ?? (q as { group_size: number; bits: number } | undefined);
  };
  const tensors = new Map<string, MxArray>();
  let key = mx.keep(mx.randomKey(spec.seed));
  const nextKey = () => {
    const [k, sub] = mx.randomSplit(key, 2) as [MxArray, MxArray];
    key.dispose();
    key = mx.keep(k);
    return sub;
  };
  try {
    for (const [name, shape, kind] of weightShapes(spec.config)) {
      mx.tidy(() => {
        if (kind !== "matrix") {
          const noise = mx.randomNormal(shape, mx.Dtype.float32, 0, kind === "bias" ? std : 0.1, nextKey());
          const w = kind === "norm" ? mx.add(1, noise) : noise;
          const full = kind === "bias" ? name : `${name}.weight`;
          tensors.set(full, mx.keep(mx.astype(w, floatDtype)));
          mx.evaluate(tensors.get(full) as MxArray);
          return;
        }
        const w = mx.randomNormal(shape, mx.Dtype.float32, 0, std, nextKey());
        const pack = packing(name);
        if (pack) {
          const packed = mx.quantize(w, pack.group_size, pack.bits);
          const parts: Array<[string, MxArray]> = [
            [`${name}.weight`, packed.weight],
            [`${name}.scales`, mx.astype(packed.scales, floatDtype)],
            [`${name}.biases`, mx.astype(packed.biases as MxArray, floatDtype)],
          ];
          for (const [n, a] of parts) tensors.set(n, mx.keep(a));
          mx.evaluate(...parts.map(([, a]) => a));
        } else {
          const a = mx.keep(mx.astype(w, floatDtype));
          tensors.set(`${name}.weight`, a);
          mx.evaluate(a);
        }
      });
    }
    mx.saveSafetensors(join(dir, "model.safetensors"), tensors, { format: "mlx" });
    let total = 0;
    for (const a of tensors.values()) total += a.nbytes;
    const weightMap = Object.fromEntries([...tensors.keys()].sort().map((n) => [n, "model.safetensors"]));
    writeFileSync(
      join(dir, "model.safetensors.index.json"),
      `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`,
    );
    writeFileSync(join(dir, "config.json"), `${JSON.stringify(spec.config, null, 2)}\n`);
    for (const f of TOKENIZER_FILES) {
      const src = join(spec.tokenizerFrom, f);
      if (existsSync(src)) copyFileSync(src, join(dir, f));
    }
    return tensors.size;
  } finally {
    key.dispose();
    for (const a of tensors.values()) a.dispose();
  }
}

/** Reads a JSON config and applies overrides (for shrunk test models). */
export function shrinkConfig(path: string, overrides: Record<string, unknown>): Record<string, unknown> {
  const base = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  return { ...base, ...overrides };
}
