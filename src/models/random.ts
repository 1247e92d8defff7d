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

/**
 * How a tensor is drawn: a matrix N(0, std) (quantized when the config says),
 * a norm weight 1 + N(0, 0.1), a Gemma norm N(0, 0.1) (it scales by 1 + w), or
 * a bias N(0, std).
 */
export type TensorKind = "matrix" | "norm" | "offset-norm" | "bias";

/** Tensor names, shapes ([out, in], or [experts, out, in]) and kinds for the architecture in the config. */
export function weightShapes(config: Record<string, unknown>): Array<[string, number[], TensorKind]> {
  const n = (k: string) => config[k] as number;
  const type = config.model_type as string;
  if (type === "gemma3_text") return gemmaShapes(config);
  const hidden = n("hidden_size");
  const heads = n("num_attention_heads");
  const kvHeads = (config.num_key_value_heads as number | undefined) ?? heads;
  const headDim = (config.head_dim as number | undefined) ?? hidden / heads;
  const ffn = n("intermediate_size");
  const vocab = n("vocab_size");
  const phi3 = type === "phi3";
  const shapes: Array<[string, number[], TensorKind]> = [["model.embed_tokens", [vocab, hidden], "matrix"]];
  for (let i = 0; i < n("num_hidden_layers"); i++) {
    const p = `model.layers.${i}`;
    if (phi3) {
      shapes.push([`${p}.self_attn.qkv_proj`, [(heads + 2 * kvHeads) * headDim, hidden], "matrix"]);
      shapes.push([`${p}.mlp.gate_up_proj`, [2 * ffn, hidden], "matrix"]);
    } else {
      shapes.push([`${p}.self_attn.q_proj`, [heads * headDim, hidden], "matrix"]);
      shapes.push([`${p}.self_attn.k_proj`, [kvHeads * headDim, hidden], "matrix"]);
      shapes.push([`${p}.self_attn.v_proj`, [kvHeads * headDim, hidden], "matrix"]);
      if (type === "qwen2") {
        shapes.push([`${p}.self_attn.q_proj.bias`, [heads * headDim], "bias"]);
        shapes.push([`${p}.self_attn.k_proj.bias`, [kvHeads * headDim], "bias"]);
        shapes.push([`${p}.self_attn.v_proj.bias`, [kvHeads * headDim], "bias"]);
      }
      if (type === "qwen3" || type === "qwen3_moe") {
        shapes.push([`${p}.self_attn.q_norm`, [headDim], "norm"]);
        shapes.push([`${p}.self_attn.k_norm`, [headDim], "norm"]);
      }
      if (type === "qwen3_moe" && isSparse(config, i)) {
        const experts = n("num_experts");
        const f = n("moe_intermediate_size");
        shapes.push([`${p}.mlp.gate`, [experts, hidden], "matrix"]);
        shapes.push([`${p}.mlp.switch_mlp.gate_proj`, [experts, f, hidden], "matrix"]);
        shapes.push([`${p}.mlp.switch_mlp.up_proj`, [experts, f, hidden], "matrix"]);
        shapes.push([`${p}.mlp.switch_mlp.down_proj`, [experts, hidden, f], "matrix"]);
      } else {
        shapes.push([`${p}.mlp.gate_proj`, [ffn, hidden], "matrix"]);
        shapes.push([`${p}.mlp.up_proj`, [ffn, hidden], "matrix"]);
      }
    }
    shapes.push([`${p}.self_attn.o_proj`, [hidden, heads * headDim], "matrix"]);
    if (!(type === "qwen3_moe" && isSparse(config, i))) shapes.push([`${p}.mlp.down_proj`, [hidden, ffn], "matrix"]);
    shapes.push([`${p}.input_layernorm`, [hidden], "norm"]);
    shapes.push([`${p}.post_attention_layernorm`, [hidden], "norm"]);
  }
  shapes.push(["model.norm", [hidden], "norm"]);
  if (config.tie_word_embeddings !== true) shapes.push(["lm_head", [vocab, hidden], "matrix"]);
  return shapes;
}

function isSparse(config: Record<string, unknown>, i: number): boolean {
  const only = (config.mlp_only_layers as number[] | undefined) ?? [];
  const step = (config.decoder_sparse_step as number | undefined) ?? 1;
  return !only.includes(i) && (i + 1) % step === 0;
}

function gemmaShapes(config: Record<string, unknown>): Array<[string, number[], TensorKind]> {
  const n = (k: string) => config[k] as number;
  const hidden = n("hidden_size");
  const heads = n("num_attention_heads");
  const kvHeads = n("num_key_value_heads");
  const headDim = n("head_dim");
  const ffn = n("intermediate_size");
  const shapes: Array<[string, number[], TensorKind]> = [["model.embed_tokens", [n("vocab_size"), hidden], "matrix"]];
  for (let i = 0; i < n("num_hidden_layers"); i++) {
    const p = `model.layers.${i}`;
    shapes.push([`${p}.self_attn.q_proj`, [heads * headDim, hidden], "matrix"]);
    shapes.push([`${p}.self_attn.k_proj`, [kvHeads * headDim, hidden], "matrix"]);
    shapes.push([`${p}.self_attn.v_proj`, [kvHeads * headDim, hidden], "matrix"]);
    shapes.push([`${p}.self_attn.o_proj`, [hidden, heads * headDim], "matrix"]);
    shapes.push([`${p}.self_attn.q_norm`, [headDim], "offset-norm"]);
    shapes.push([`${p}.self_attn.k_norm`, [headDim], "offset-norm"]);
    shapes.push([`${p}.mlp.gate_proj`, [ffn, hidden], "matrix"]);
    shapes.push([`${p}.mlp.up_proj`, [ffn, hidden], "matrix"]);
    shapes.push([`${p}.mlp.down_proj`, [hidden, ffn], "matrix"]);
    for (const norm of ["input", "post_attention", "pre_feedforward", "post_feedforward"]) {
      shapes.push([`${p}.${norm}_layernorm`, [hidden], "offset-norm"]);
    }
  }
  shapes.push(["model.norm", [hidden], "offset-norm"]);
  return shapes;
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
