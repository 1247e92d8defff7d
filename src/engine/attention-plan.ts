// Memory arithmetic of attention, without MLX (the memory plan in
// src/engine/memory-plan.ts runs before anything is loaded):
//   - KV bytes per token, float or group-quantized (kvBits 8 or 4);
//   - the bound on the attention score matrix: where scores [B, H, L, S] are
//     materialized (quantized KV through quantized matmuls; float KV on a path
//     without a fused kernel), the cache splits a forward's queries into
//     sub-chunks of at most ATTENTION_SCORE_BOUND_BYTES of float32 scores
//     (src/engine/kv-cache.ts);
//   - the transient float copy of one layer's K/V where quantized KV is
//     dequantized for a fused kernel (the CPU).

/** Float32 scores of one attention call at most (one query sub-chunk against all keys). */
export const ATTENTION_SCORE_BOUND_BYTES = 256 * 1024 ** 2;
const SCORE_BYTES = 4;

/** KV cache element storage: 0 = float (the model's dtype), else group-quantized with this many bits. */
export type KvBits = 0 | 4 | 8;

export function isKvBits(n: unknown): n is KvBits {
  return n === 0 || n === 4 || n === 8;
}

/**
 * Quantization group along head_dim: 64 where head_dim allows, else 32 (Phi-3's
 * head_dim 96); null when neither divides it (MLX quantizes in groups of 32, 64
 * or 128). mlx-lm's default kv_group_size is 64 whatever the head size, and
 * mx.quantize refuses head_dim 96 with it, so mlx-lm needs --kv-group-size 32 there.
 */
export function kvGroupSize(headDim: number): number | null {
  if (headDim % 64 === 0) return 64;
  if (headDim % 32 === 0) return 32;
  return null;
}

/** The KV storage a model gets: the requested bits, or float where no quantization group divides head_dim. */
export function effectiveKvBits(requested: KvBits, headDim: number): KvBits {
  return requested !== 0 && kvGroupSize(headDim) !== null ? requested : 0;
}

export interface KvLayout {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
}

/**
 * KV bytes of one token of one sequence, all layers, keys and values. Float:
 * headDim elements of floatBytes. Quantized: headDim·bits/8 bytes packed plus a
 * scale and a bias per group, both in the cache's float dtype (floatBytes).
 * Phi-3 mini (32 layers, 32 KV heads, 96): fp16 384 KiB, 8-bit 216 KiB, 4-bit 120 KiB.
 */
export function kvTokenBytes(layout: KvLayout, floatBytes: number, bits: KvBits = 0, groupSize?: number): number {
  const perHead =
    bits === 0
      ? layout.headDim * floatBytes
      : (layout.headDim * bits) / 8 +
        2 * (layout.headDim / (groupSize ?? kvGroupSize(layout.headDim) ?? layout.headDim)) * floatBytes;
  return layout.numLayers * 2 * layout.numKvHeads * perHead;
}

/** Queries per attention call so that batch·heads·queries·keys float32 scores stay within the bound (≥ 1). */
export function queryChunk(
  batch: number,
  heads: number,
  keys: number,
  boundBytes = ATTENTION_SCORE_BOUND_BYTES,
): number {
  return Math.max(1, Math.floor(boundBytes / (batch * heads * Math.max(1, keys) * SCORE_BYTES)));
}

/**
 * Quantized KV attended through a float copy (the CPU default, kv-cache.ts
 * `quantizedAttention: "dequantize"`): the transient copy of one layer's keys
 * and values, batch × 2 × kv_heads × head_dim × keys × floatBytes.
 */
export function dequantizedLayerBytes(o: {
  batch: number;
  kvHeads: number;
  headDim: number;
  keys: number;
  floatBytes: number;
}): number {
  return o.batch * 2 * o.kvHeads * o.headDim * o.keys * o.floatBytes;
}

/**
 * Bytes of the score matrix one attention call materializes for a forward of
 * `queries` new tokens over `keys` keys (after sub-chunking): at most the bound,
 * or one query row per head when a single row already exceeds it. Zero where a
 * fused kernel needs no score matrix (fused = true). The live peak is about twice
 * this (masked scores and probabilities).
 */
export function attentionScoreBytes(
  o: { batch: number; heads: number; queries: number; keys: number; fused?: boolean },
  boundBytes = ATTENTION_SCORE_BOUND_BYTES,
): number {
  if (o.fused) return 0;
  const rows = Math.min(o.queries, queryChunk(o.batch, o.heads, o.keys, boundBytes));
  return o.batch * o.heads * rows * o.keys * SCORE_BYTES;
}
