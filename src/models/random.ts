// Writes a random-weight model folder in the real mlx-community format:
// config.json (with a `quantization` block), model.safetensors (+ index),
// tokenizer files copied from a reference folder. Tests use shrunk configs,
// benchmarks the full-size Phi-3-mini. Weights come from a seeded MLX key, so
// the same call writes the same bytes.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { MxArray } from "../mlx";
import * as mx from "../mlx";

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

/** Tensor names and shapes [out, in] for the architecture in the config. */
export function weightShapes(config: Record<string, unknown>): Array<[string, number[]]> {
  const n = (k: string) => config[k] as number;
  const hidden = n("hidden_size");
  const heads = n("num_attention_heads");
  const kvHeads = (config.num_key_value_heads as number | undefined) ?? heads;
  const headDim = (config.head_dim as number | undefined) ?? hidden / heads;
  const ffn = n("intermediate_size");
  const vocab = n("vocab_size");
  const phi3 = config.model_type === "phi3";
  const shapes: Array<[string, number[]]> = [["model.embed_tokens", [vocab, hidden]]];
  for (let i = 0; i < n("num_hidden_layers"); i++) {
    const p = `model.layers.${i}`;
    if (phi3) {
      shapes.push([`${p}.self_attn.qkv_proj`, [(heads + 2 * kvHeads) * headDim, hidden]]);
      shapes.push([`${p}.mlp.gate_up_proj`, [2 * ffn, hidden]]);
    } else {
      shapes.push([`${p}.self_attn.q_proj`, [heads * headDim, hidden]]);
      shapes.push([`${p}.self_attn.k_proj`, [kvHeads * headDim, hidden]]);
      shapes.push([`${p}.self_attn.v_proj`, [kvHeads * headDim, hidden]]);
      shapes.push([`${p}.mlp.gate_proj`, [ffn, hidden]]);
      shapes.push([`${p}.mlp.up_proj`, [ffn, hidden]]);
    }
    shapes.push([`${p}.self_attn.o_proj`, [hidden, heads * headDim]]);
    shapes.push([`${p}.mlp.down_proj`, [hidden, ffn]]);
    shapes.push([`${p}.input_layernorm`, [hidden]]);
    shapes.push([`${p}.post_attention_layernorm`, [hidden]]);
  }
  shapes.push(["model.norm", [hidden]]);
  if (config.tie_word_embeddings !== true) shapes.push(["lm_head", [vocab, hidden]]);
  return shapes;
}

/** Writes the folder; returns the tensor count. Large models are generated tensor by tensor. */
export function writeRandomModel(dir: string, spec: RandomModelSpec): number {
  mkdirSync(dir, { recursive: true });
  const floatDtype = spec.floatDtype ?? mx.Dtype.float16;
  const std = spec.std ?? 0.02;
  const q = spec.config.quantization as { group_size: number; bits: number } | undefined;
  const tensors = new Map<string, MxArray>();
  let key = mx.keep(mx.randomKey(spec.seed));
  const nextKey = () => {
    const [k, sub] = mx.randomSplit(key, 2) as [MxArray, MxArray];
    key.dispose();
    key = mx.keep(k);
    return sub;
  };
  try {
    for (const [name, shape] of weightShapes(spec.config)) {
      mx.tidy(() => {
        if (shape.length === 1) {
          const w = mx.add(1, mx.randomNormal(shape, mx.Dtype.float32, 0, 0.1, nextKey()));
          tensors.set(`${name}.weight`, mx.keep(mx.astype(w, floatDtype)));
          mx.evaluate(tensors.get(`${name}.weight`) as MxArray);
          return;
        }
        const w = mx.randomNormal(shape, mx.Dtype.float32, 0, std, nextKey());
        if (q) {
          const packed = mx.quantize(w, q.group_size, q.bits);
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
