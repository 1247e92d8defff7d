// The KV cache: one buffer pair per layer, [B, Hkv, capacity, D], grown in
// steps and written in place with slice_update. Rows are left-padded so that a
// batch shares one write position; each row's own length is `offset -
// leftPadding[row]`. A single sequence is the batch of one with no padding.
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import type { AttentionBatch, ForwardView } from "../models/types";

/** Capacity grows by this many positions at a time. */
export const KV_STEP = 256;

/**
 * A row's KV over a token range: per layer, the cache's storage arrays, each
 * with the token axis at 2 ([1, Hkv, length, X]); float caches store [k, v].
 */
export interface KVState {
  parts: MxArray[][];
  length: number;
}

export function disposeState(state: KVState): void {
  for (const layer of state.parts) for (const a of layer) a.dispose();
}

export function stateBytes(state: KVState): number {
  let n = 0;
  for (const layer of state.parts) for (const a of layer) n += a.nbytes;
  return n;
}

/** Lazy views of a state's tokens [start, end) (new handles; no copy until evaluated). */
export function sliceState(state: KVState, start: number, end: number): KVState {
  if (start === 0 && end === state.length) return state;
  return { parts: state.parts.map((layer) => layer.map((a) => mx.sliceAxis(a, 2, start, end))), length: end - start };
}

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

  /**
   * Appends the rows of `other` (which is consumed). Both sides are
   * left-padded to the longer one so the batch keeps one write position.
   */
  appendRows(other: KVCache): void {
    const T = this.#offset;
    const U = other.#offset;
    const width = Math.max(T, U);
    mx.tidy(() => {
      for (const buffers of ["keys", "values"] as const) {
        const mine = buffers === "keys" ? this.#keys : this.#values;
        const theirs = buffers === "keys" ? other.#keys : other.#values;
        for (let l = 0; l < this.shape.numLayers; l++) {
          const a = mine[l] ?? null;
          const b = theirs[l] ?? null;
          if (!a || !b) throw new Error("appendRows: both caches need every layer filled");
          const merged = mx.concatenate([leftPadded(a, T, width), leftPadded(b, U, width)], 0);
          // One layer at a time: the old buffers go before the next layer's copy (the KV pool counts one layer extra).
          mx.evaluate(merged);
          a.dispose();
          b.dispose();
          theirs[l] = null;
          mine[l] = mx.keep(merged);
        }
      }
    });
    this.#leftPadding = [
      ...this.#leftPadding.map((p) => p + width - T),
      ...other.#leftPadding.map((p) => p + width - U),
    ];
    this.#offset = width;
    this.#capacity = width;
    other.dispose();
  }

  /** Keeps only the given rows (in that order), then trims padding they no longer need. */
  keepRows(rows: readonly number[]): void {
    if (rows.length === 0) {
      this.dispose();
      this.#leftPadding = [];
      this.#offset = this.#capacity = 0;
      return;
    }
    const pads = rows.map((r) => {
      const p = this.#leftPadding[r];
      if (p === undefined) throw new RangeError(`keepRows: no row ${r}`);
      return p;
    });
    const trim = Math.min(...pads);
    const width = this.#offset - trim;
    mx.tidy(() => {
      const index = mx.int32(rows);
      for (const buffers of [this.#keys, this.#values]) {
        for (let l = 0; l < buffers.length; l++) {
          const a = buffers[l];
          if (!a) continue;
          const picked = mx.contiguous(mx.sliceAxis(mx.take(a, index, 0), 2, trim, this.#offset));
          mx.evaluate(picked);
          buffers[l] = mx.keep(picked);
          a.dispose();
        }
      }
    });
    this.#leftPadding = pads.map((p) => p - trim);
    this.#offset = width;
    this.#capacity = width;
  }

  /**
   * One row's tokens [start, end) as contiguous copies: per layer the cache's
   * storage arrays ([k, v]), each [1, Hkv, end - start, D] (new arrays).
   */
  rowState(row: number, start = 0, end?: number): KVState {
    const pad = this.#leftPadding[row];
    if (pad === undefined) throw new RangeError(`rowState: no row ${row}`);
    const stop = end ?? this.#offset - pad;
    const take = (a: MxArray | null) => {
      if (!a) throw new Error("rowState: empty cache");
      return mx.keep(mx.contiguous(mx.sliceAxis(mx.sliceAxis(a, 0, row, row + 1), 2, pad + start, pad + stop)));
    };
    const state = mx.tidy(() => ({
      parts: this.#keys.map((k, l) => [take(k), take(this.#values[l] ?? null)]),
      length: stop - start,
    }));
    // Copy now: a pending copy would pin the whole source buffer.
    mx.asyncEval(...state.parts.flat());
    return state;
  }

  /**
   * An empty cache for a batch of prompts of different lengths that are
   * prefilled together: row i is left-padded by leftPadding[i] columns.
   */
  static padded(shape: CacheShape, leftPadding: readonly number[]): KVCache {
    const cache = new KVCache(shape, leftPadding.length);
    cache.#leftPadding = [...leftPadding];
    return cache;
  }

  /** A one-row cache holding the concatenation of consecutive states (prefix reuse). */
  static fromStates(shape: CacheShape, states: readonly KVState[]): KVCache {
    const cache = new KVCache(shape, 1);
    const n = states.reduce((t, s) => t + s.length, 0);
    mx.tidy(() => {
      for (let l = 0; l < shape.numLayers; l++) {
        const layer = states.map((s) => s.parts[l]);
        if (layer.some((p) => p?.length !== 2)) throw new Error("fromStates: missing layer");
        const join = (i: number) => {
          const arrays = layer.map((p) => (p as MxArray[])[i] as MxArray);
          return mx.keep(arrays.length === 1 ? mx.copy(arrays[0] as MxArray) : mx.concatenate(arrays, 2));
        };
        cache.#keys[l] = join(0);
        cache.#values[l] = join(1);
      }
    });
    cache.#offset = n;
    cache.#capacity = n;
    return cache;
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

/** The used columns [0, used) of a buffer, left-padded with zeros to `width`. */
function leftPadded(buffer: MxArray, used: number, width: number): MxArray {
  const body = buffer.dim(2) === used ? buffer : mx.sliceAxis(buffer, 2, 0, used);
  return width === used ? body : mx.pad(body, [2], [width - used], [0]);
}
