// Tensor parallelism: each rank of an MLX distributed group holds 1/N of every
// layer, as mlx-lm shards them (mlx.nn.layers.distributed: shard_linear /
// shard_inplace; models/llama.py and phi3.py `shard`). q/k/v and gate|up are
// split by output (whole heads, whole FFN columns), o_proj and down_proj by
// input; their partial outputs are summed over the group (all_sum) before the
// residual add. Embedding, norms and lm_head stay whole on every rank. Each rank
// then attends over its own heads, so its KV cache holds 1/N of the KV heads.
import * as mx from "../mlx";
import { allSum } from "../mlx/distributed";
import type { ModelConfig } from "./config";
import { DecoderModel } from "./decoder";
import type { LanguageModel } from "./types";

export interface ShardSpec {
  rank: number;
  size: number;
}

/** Architectures whose layers are plain attention + SwiGLU MLP with no norm on a partial output. */
const SHARDABLE = new Set(["llama", "mistral", "phi3", "qwen2", "qwen3"]);

/** Why this model cannot run over `size` ranks, or null when it can. */
export function shardProblem(c: ModelConfig, size: number): string | null {
  if (!SHARDABLE.has(c.modelType)) {
    return `tensor parallelism supports ${[...SHARDABLE].join(", ")}; this model is ${c.modelType}`;
  }
  const parts: Array<[string, number]> = [
    ["attention heads", c.numHeads],
    ["KV heads", c.numKvHeads],
    ["intermediate size", c.intermediateSize],
  ];
  for (const [what, n] of parts) {
    if (n % size !== 0) return `${what} (${n}) do not divide over ${size} ranks`;
  }
  return null;
}

/** The config one rank runs: 1/N of the heads, KV heads and FFN width. */
export function shardedConfig(c: ModelConfig, size: number): ModelConfig {
  const problem = shardProblem(c, size);
  if (problem) throw new Error(problem);
  return {
    ...c,
    numHeads: c.numHeads / size,
    numKvHeads: c.numKvHeads / size,
    intermediateSize: c.intermediateSize / size,
  };
}

type Split =
  /** By output rows; `segments` are row counts of fused projections (q|k|v, gate|up), each split alone. */
  | { kind: "output"; segments: number[] }
  /** By input columns (packed words, scale groups); an additive bias stays on rank 0 only. */
  | { kind: "input" };

function splitFor(name: string, c: ModelConfig): Split | null {
  const m = /^model\.layers\.\d+\.(self_attn|mlp)\.([a-z_]+)\.(weight|scales|biases|bias)$/.exec(name);
  if (!m) return null;
  const proj = m[2] as string;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  switch (proj) {
    case "q_proj":
      return { kind: "output", segments: [q] };
    case "k_proj":
    case "v_proj":
      return { kind: "output", segments: [kv] };
    case "qkv_proj":
      return { kind: "output", segments: [q, kv, kv] };
    case "gate_proj":
    case "up_proj":
      return { kind: "output", segments: [c.intermediateSize] };
    case "gate_up_proj":
      return { kind: "output", segments: [c.intermediateSize, c.intermediateSize] };
    case "o_proj":
    case "down_proj":
      return { kind: "input" };
    default:
      return null;
  }
}

/** A fresh copy of part of an array, so that the whole tensor's buffer can go. */
function ownedCopy(a: mx.MxArray): mx.MxArray {
  const data = a.read();
  return mx.keep(mx.fromData(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), a.shape, a.dtype));
}

function shardArray(name: string, a: mx.MxArray, split: Split, spec: ShardSpec): mx.MxArray {
  const { rank, size } = spec;
  if (split.kind === "input") {
    if (name.endsWith(".bias")) return rank === 0 ? a : mx.keep(mx.zeros(a.shape, a.dtype));
    const cols = a.dim(-1);
    if (cols % size !== 0) {
      throw new Error(`${name}: ${cols} columns (packed words or scale groups) do not divide over ${size} ranks`);
    }
    const part = cols / size;
    return mx.tidy(() => ownedCopy(mx.sliceAxis(a, a.ndim - 1, rank * part, (rank + 1) * part)));
  }
  const total = split.segments.reduce((s, n) => s + n, 0);
  if (a.dim(0) !== total) throw new Error(`${name}: ${a.dim(0)} rows, expected ${total}`);
  return mx.tidy(() => {
    const pieces: mx.MxArray[] = [];
    let start = 0;
    for (const rows of split.segments) {
      const part = rows / size;
      pieces.push(mx.sliceAxis(a, 0, start + rank * part, start + (rank + 1) * part));
      start += rows;
    }
    return ownedCopy(pieces.length === 1 ? (pieces[0] as mx.MxArray) : mx.concatenate(pieces, 0));
  });
}

/**
 * This rank's share of a model's tensors (the full-size ones are disposed) and
 * the config it runs with. `config` is the whole model's.
 */
export function shardWeights(
  config: ModelConfig,
  arrays: Map<string, mx.MxArray>,
  spec: ShardSpec,
): { config: ModelConfig; arrays: Map<string, mx.MxArray> } {
  const sharded = shardedConfig(config, spec.size);
  const out = new Map<string, mx.MxArray>();
  try {
    for (const [name, a] of arrays) {
      const split = splitFor(name, config);
      if (!split) {
        out.set(name, a);
        continue;
      }
      const part = shardArray(name, a, split, spec);
      out.set(name, part);
      if (part !== a) a.dispose();
    }
  } catch (e) {
    for (const a of out.values()) if (!a.disposed) a.dispose();
    for (const a of arrays.values()) if (!a.disposed) a.dispose();
    throw e;
  }
  return { config: sharded, arrays: out };
}

/** Sums o_proj's and down_proj's partial outputs over the group (mlx-lm's ShardedToAllLinear). */
export function reduceAcrossShards(model: LanguageModel): void {
  if (!(model instanceof DecoderModel)) throw new Error("tensor parallelism needs a decoder model");
  model.reducePartial = allSum;
}
