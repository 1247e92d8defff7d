// The KV cache: one buffer pair per layer, [B, Hkv, capacity, D], grown in
// steps and written in place with slice_update. Rows are left-padded so that a
// batch shares one write position; each row's own length is `offset -
// leftPadding[row]`. A single sequence is the batch of one with no padding.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { AttentionBatch, ForwardView } from "../models/types";

/** Capacity grows by this many positions at a time. */
export const KV_STEP = 256;

export interface CacheShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  dtype: mx.Dtype;
}

export class KVCache implements AttentionBatch {
  readonly shape: CacheShape;
  #keys: (MxArray | null)[];
  #values: (MxArray | null)[];
  /** Columns written so far (shared by every row). */
  #offset = 0;
  #capacity = 0;
  #leftPadding: number[];
  #pending = 0;

  constructor(shape: CacheShape, batchSize = 1) {
    this.shape = shape;
    this.#keys = new Array(shape.numLayers).fill(null);
    this.#values = new Array(shape.numLayers).fill(null);
    this.#leftPadding = new Array(batchSize).fill(0);
  }

  get batchSize(): number {
    return this.#leftPadding.length;
  }

  /** Columns in use (the longest row plus padding). */
  get offset(): number {
    return this.#offset;
  }

  get leftPadding(): readonly number[] {
    return this.#leftPadding;
  }

  rowLengths(): number[] {
    return this.#leftPadding.map((p) => this.#offset - p);
  }

  /** Bytes held by the buffers (capacity, not just the used part). */
  get nbytes(): number {
    let n = 0;
    for (const a of [...this.#keys, ...this.#values]) if (a) n += a.nbytes;
    return n;
  }

  begin(newTokens: number): ForwardView {
    if (this.#pending !== 0) throw new Error("KVCache.begin called twice without end");
    this.#pending = newTokens;
    const padded = this.#leftPadding.some((p) => p > 0);
    const ropeOffset = padded ? mx.int32(this.rowLengths()) : this.#offset;
    let mask: ForwardView["mask"] = null;
    if (padded) mask = this.#paddedMask(newTokens);
    else if (newTokens > 1) mask = "causal";
    return { ropeOffset, mask };
  }

  /** keep[b, 0, i, j] = key j is a real token of row b and not after query i. */
  #paddedMask(L: number): MxArray {
    const S = this.#offset + L;
    const cols = mx.reshape(mx.arange(0, S), [1, 1, 1, S]);
    const rows = mx.reshape(mx.arange(this.#offset, S), [1, 1, L, 1]);
    const pads = mx.reshape(mx.int32(this.#leftPadding), [this.batchSize, 1, 1, 1]);
    return mx.logicalAnd(mx.lessEqual(cols, rows), mx.greaterEqual(cols, pads));
  }

  update(layer: number, keys: MxArray, values: MxArray): [MxArray, MxArray] {
    const L = this.#pending;
    const end = this.#offset + L;
    if (end > this.#capacity) this.#grow(end);
    const k = this.#write(this.#keys, layer, keys, keys.dim(1), keys.dim(3));
    const v = this.#write(this.#values, layer, values, values.dim(1), values.dim(3));
    return [k, v];
  }

  #write(buffers: (MxArray | null)[], layer: number, update: MxArray, heads: number, dim: number): MxArray {
    const B = this.batchSize;
    let buf = buffers[layer] ?? null;
    if (buf === null || buf.dim(2) < this.#capacity) {
      const fresh = mx.zeros([B, heads, this.#capacity, dim], this.shape.dtype);
      buf = buf === null ? fresh : mx.sliceUpdate(fresh, buf, [0, 0, 0, 0], [B, heads, buf.dim(2), dim]);
    }
    const start = this.#offset;
    const end = start + this.#pending;
    const next = mx.keep(
      mx.sliceUpdate(buf, mx.astype(update, this.shape.dtype), [0, 0, start, 0], [B, heads, end, dim]),
    );
    // Drop our handle to the old buffer now, so MLX can write the new one in place.
    buffers[layer]?.dispose();
    if (buf !== buffers[layer]) buf.dispose();
    buffers[layer] = next;
    return mx.slice(next, [0, 0, 0, 0], [B, heads, end, dim]);
  }

  #grow(needed: number): void {
    this.#capacity = Math.ceil(needed / KV_STEP) * KV_STEP;
  }

  end(): void {
    this.#offset += this.#pending;
    this.#pending = 0;
  }

  /** The current buffers (for evaluation after a prefill chunk). */
  arrays(): MxArray[] {
    return [...this.#keys, ...this.#values].filter((a): a is MxArray => a !== null);
  }

  /** Forgets everything (keeps nothing allocated). */
  reset(): void {
    this.dispose();
    this.#offset = 0;
    this.#capacity = 0;
    this.#leftPadding = this.#leftPadding.map(() => 0);
  }

  dispose(): void {
    for (const a of [...this.#keys, ...this.#values]) a?.dispose();
    this.#keys.fill(null);
    this.#values.fill(null);
  }
}
