// The contract between architectures (src/models) and whoever drives them
// (src/engine): what a model needs from a KV cache, and what it offers.
import type { MxArray } from "../mlx";
import type { ModelConfig } from "./config";

/** What one forward pass gets from the cache for attention. */
export interface ForwardView {
  /** RoPE position of each row's first new token: a number when all rows agree, else int32 [B]. */
  ropeOffset: number | MxArray;
  /** Attention mask over [cached + new] keys: "causal", a bool keep-mask [B, 1, L, S], or none. */
  mask: "causal" | MxArray | null;
}

/**
 * A batch of sequences with their KV cache. The model calls begin() once per
 * forward, attention() once per layer, and end() after the last layer. The
 * cache decides how keys and values are stored (float or quantized) and how
 * attention runs over them (fused kernel, quantized matmuls, query sub-chunks).
 */
export interface AttentionBatch {
  /** Number of rows (sequences). */
  readonly batchSize: number;
  /** Tokens already cached for each row. */
  rowLengths(): number[];
  begin(newTokens: number): ForwardView;
  /**
   * Stores this layer's new keys/values [B, Hkv, L, D] and returns the attention
   * output [B, H, L, D] of the queries q [B, H, L, D] (RoPE applied) over all
   * cached keys, scores scaled by `scale`, under the view's `mask`.
   */
  attention(
    layer: number,
    q: MxArray,
    keys: MxArray,
    values: MxArray,
    scale: number,
    mask: ForwardView["mask"],
  ): MxArray;
  /**
   * Float caches only (else null or absent): stores this layer's new keys/values
   * [B, Hkv, L, D] and returns the layer's whole cache buffers [B, Hkv, capacity, D],
   * owned by the cache, for a GPU kernel that attends over them itself.
   */
  storeWhole?(layer: number, keys: MxArray, values: MxArray): [MxArray, MxArray] | null;
  /**
   * Float caches in `dtype` only (else null or absent): the layer's whole buffers,
   * grown for this forward's columns but not written, for a GPU kernel that
   * stores the new keys/values in place (row-contiguous buffers the cache owns).
   */
  reserveWhole?(layer: number, dtype: import("../mlx").Dtype): [MxArray, MxArray] | null;
  end(): void;
}

export interface ForwardOptions {
  /** Which positions need logits: "last" (generation), "all" (scoring) or "none" (prefill chunks). */
  logits?: "last" | "all" | "none";
  /**
   * Per row, the sequence length that selects length-dependent RoPE (Phi-3
   * short/long factors). Defaults to cached + new tokens. During a chunked
   * prefill pass the whole prompt's length, so every chunk agrees with one
   * uncached forward pass.
   */
  ropeLengths?: number[];
}

export interface LanguageModel {
  readonly config: ModelConfig;
  /** The float dtype activations and the KV cache use. */
  readonly dtype: import("../mlx").Dtype;
  /**
   * tokens: int32 [B, L]. Returns logits [B, L', vocab] (L' = 1 for "last") in
   * float32, or the final hidden state when logits is "none".
   */
  forward(tokens: MxArray, batch: AttentionBatch, options?: ForwardOptions): MxArray;
  /**
   * Models whose RoPE depends on the sequence length (Phi-3 LongRoPE) return the
   * regime for a length; when a sequence moves to another regime its KV cache
   * must be recomputed. Others return 0 always.
   */
  ropeRegime(sequenceLength: number): number;
  /** Whether a one-row verify pass takes the fused GPU kernels in every layer (absent: no). */
  fusedVerifySupported?(): boolean;
  /** Frees the weights. */
  dispose(): void;
}
