// The KV cache: per layer a list of storage arrays ("parts"), each
// [B, Hkv, capacity, X] with the token axis at 2, grown in steps and written in
// place with slice_update. Float KV: parts [keys, values] (X = head_dim).
// Quantized KV (kvBits 8 or 4, mlx-lm's QuantizedKVCache layout): parts
// [keys packed uint32, key scales, key biases, values packed, scales, biases]
// (X = head_dim·bits/32 or head_dim/group). Every part has the token axis at 2,
// so slicing, padding and concatenation treat them alike.
//
// Rows are left-padded so that a batch shares one write position; each row's
// own length is `offset - leftPadding[row]`. A single sequence is the batch of
// one with no padding. The cache also decides how to attend (attention()):
// fused sdpa over float KV, or quantized matmuls over quantized KV, with the
// queries split so that no score matrix exceeds a bound (attention-plan.ts).
// Over 400 lines because storage, growth, joins and the attention choice all
// depend on the same private layout (parts, offset, left padding).

import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { AttentionBatch, ForwardView } from "../models/types";
import { ATTENTION_SCORE_BOUND_BYTES, type KvBits, kvTokenBytes, queryChunk } from "./attention-plan";

const WRITTEN_OUT_QUERIES = Number(process.env.PENSIEVE_GPU_WRITTEN_OUT_QUERIES ?? 64);

/** Capacity grows by this many positions at a time. */
export const KV_STEP = 256;

export interface CacheShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  /** The float dtype of keys and values (and of quantization scales and biases). */
  dtype: mx.Dtype;
  /** 0: float KV; 8 or 4: group-quantized. */
  kvBits: KvBits;
  /** Quantization group along head_dim (kvGroupSize(headDim)); unused for float KV. */
  kvGroupSize: number;
}

/**
 * One row's KV for a token range: parts[layer] holds the cache's storage
 * arrays for that layer, each [1, Hkv, length, X] (token axis 2): float →
 * [k, v]; quantized → [kq, kscales, kbiases, vq, vscales, vbiases].
 */
export interface KVState {
  parts: MxArray[][];
  length: number;
}

/** Frees every part of a state. */
export function disposeState(state: KVState): void {
  for (const layer of state.parts) for (const a of layer) a.dispose();
}

/** Bytes a state holds. */
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

const partCount = (shape: CacheShape) => (shape.kvBits === 0 ? 2 : 6);

export class KVCache implements AttentionBatch {
  readonly shape: CacheShape;
  /** parts[layer]: the layer's storage arrays (see the header), or null before the first write. */
  #parts: (MxArray[] | null)[];
  /** Buffers this cache made whole (slice updates, grown buffers): ones a kernel may write in place. */
  readonly #owned = new WeakSet<MxArray>();
  /** Columns written so far (shared by every row). */
  #offset = 0;
  #capacity = 0;
  #leftPadding: number[];
  #pending = 0;
  /**
   * How attention bounds its score matrix: `fused`: float attention runs in a
   * fused kernel (no score matrix), so float KV (and dequantized quantized KV)
   * is attended in one call; otherwise queries are split so each call's float32
   * scores stay within `bytes`. Tests lower the bound to check splitting.
   */
  scoreBound: { bytes: number; fused: boolean };
  /**
   * Quantized KV only: how attention reads it. "matmul": quantized_matmul over
   * the packed keys and values (mlx-lm's way; materializes scores). "dequantize":
   * a float copy of this layer's keys and values, then the fused sdpa (no score
   * matrix; the copy is transient). Default: "dequantize" where a fused float
   * kernel exists on the CPU (MLX's CPU quantized_matmul is a scalar loop), else "matmul".
   */
  quantizedAttention: "matmul" | "dequantize";
  /**
   * On the GPU, forwards of 2 to this many queries over a longer cache attend
   * through plain matmuls (#writtenOut); 0 = always the fused kernel.
   * PENSIEVE_GPU_WRITTEN_OUT_QUERIES overrides the default of 64.
   */
  writtenOutQueries: number;

  constructor(shape: CacheShape, batchSize = 1) {
    if (shape.kvBits !== 0 && shape.headDim % shape.kvGroupSize !== 0) {
      throw new Error(`KV group size ${shape.kvGroupSize} does not divide head_dim ${shape.headDim}`);
    }
    this.shape = shape;
    this.#parts = new Array(shape.numLayers).fill(null);
    this.#leftPadding = new Array(batchSize).fill(0);
    const fusedFloat = fusedFloatAttention(shape);
    // MLX 0.32.4's CUDA quantized_matmul has no kernel for Phi-3's head_dim 96 in groups of 32 (measured on an
    // H100: "No implementation for problem shape"), so wherever a fused float kernel exists the layer is dequantized.
    this.quantizedAttention = fusedFloat ? "dequantize" : "matmul";
    this.writtenOutQueries = mx.getDevice() === "gpu" ? WRITTEN_OUT_QUERIES : 0;
    this.scoreBound = {
      bytes: ATTENTION_SCORE_BOUND_BYTES,
      fused: fusedFloat,
    };
  }

  /** KV bytes of one token of one row (all layers, keys and values). */
  static bytesPerToken(shape: CacheShape): number {
    return kvTokenBytes(shape, mx.dtypeBytes(shape.dtype), shape.kvBits, shape.kvGroupSize);
  }

  get batchSize(): number {
    return this.#leftPadding.length;
  }

  /** Columns in use (the longest row plus padding). */
  get offset(): number {
    return this.#offset;
  }

  /** Columns the buffers hold (or are reserved to hold) before they grow again. */
  get capacity(): number {
    return this.#capacity;
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
    // A failed copy may leave disposed arrays behind until the cache goes (stats must not throw).
    for (const a of this.arrays()) if (!a.disposed) n += a.nbytes;
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

  /**
   * Stores this layer's new keys/values [B, Hkv, L, D] and returns the attention
   * output [B, H, L, D] of queries q [B, H, L, D] over every cached key. `mask`
   * is the view's from begin(): causal in structure (query i never sees a key
   * after it), which lets a query sub-chunk skip the keys after its last query.
   */
  attention(layer: number, q: MxArray, keys: MxArray, values: MxArray, scale: number, mask: ForwardView["mask"]) {
    const [B, H, L] = q.shape as [number, number, number];
    const S = this.#offset + L;
    const fused = this.scoreBound.fused && (this.shape.kvBits === 0 || this.quantizedAttention === "dequantize");
    const step = fused ? L : queryChunk(B, H, S, this.scoreBound.bytes);
    // On the CPU: the new columns written and attended in one task (equal to the slice updates and sdpa below).
    if (
      step >= L &&
      this.shape.kvBits === 0 &&
      !this.#writtenOut(q, S) &&
      mx.cpuCacheSdpaApplies([q, keys, values], mask)
    ) {
      const whole = this.reserveWhole(layer, mx.Dtype.float32);
      if (whole) {
        const [out, kc, vc] = mx.cpuCacheSdpa(q, keys, values, whole[0], whole[1], this.#offset, scale, mask);
        // The written buffers (same memory) become the layer's parts: later reads of the cache depend on the write.
        this.#parts[layer] = [kc, vc].map((part, i) => {
          const kept = mx.keep(part);
          this.#owned.add(kept);
          whole[i]?.dispose();
          return kept;
        });
        return out;
      }
    }
    const parts = this.#store(layer, keys, values).map((p) => mx.sliceAxis(p, 2, 0, S));
    if (step >= L) return mx.tidy(() => this.#attend(q, parts, scale, mask));
    const visible = (end: number) => parts.map((p) => mx.sliceAxis(p, 2, 0, end));
    const m = (a: number, b: number, end: number) =>
      mask === null || mask === "causal" ? mask : mx.sliceAxis(mx.sliceAxis(mask, 2, a, b), 3, 0, end);
    const outs: MxArray[] = [];
    for (let a = 0; a < L; a += step) {
      const b = Math.min(L, a + step);
      const end = S - L + b; // keys up to this sub-chunk's last query
      // Our handles to a sub-chunk's scores go now, so MLX frees each once used.
      outs.push(mx.tidy(() => this.#attend(mx.sliceAxis(q, 2, a, b), visible(end), scale, m(a, b, end))));
    }
    return mx.concatenate(outs, 2);
  }

  #attend(q: MxArray, parts: MxArray[], scale: number, mask: ForwardView["mask"]): MxArray {
    const [k, v] = parts as [MxArray, MxArray];
    if (this.shape.kvBits === 0) {
      if (this.#writtenOut(q, k.dim(2))) return mx.writtenOutSdpa(q, k, v, scale, mask);
      return mx.sdpa(q, k, v, scale, mask);
    }
    const { kvBits: bits, kvGroupSize: groupSize } = this.shape;
    const [kq, ks, kb, vq, vs, vb] = parts as [MxArray, MxArray, MxArray, MxArray, MxArray, MxArray];
    const keys: mx.QuantizedWeight = { weight: kq, scales: ks, biases: kb, groupSize, bits };
    const values: mx.QuantizedWeight = { weight: vq, scales: vs, biases: vb, groupSize, bits };
    if (this.quantizedAttention === "dequantize") {
      const dtype = this.shape.dtype;
      return mx.sdpa(q, mx.dequantize(keys, dtype), mx.dequantize(values, dtype), scale, mask);
    }
    return mx.quantizedSdpa(q, keys, values, scale, mask);
  }

  /**
   * A few queries over a cached prefix on the GPU (a prefix-cache hit's
   * remainder, a speculative verify): plain matmuls instead of cuDNN, which
   * builds a graph for each new (queries, keys) shape. Within a quarter of the score bound.
   * From 2 queries: MLX tries cuDNN before its vector kernel for any query length
   * but 1, and on an H100 a verify pass of 3 tokens over a growing cache took
   * 75.6 ms through cuDNN against 10.6 without it (bench/results/gpu-h100-2026-12-07b/).
   */
  #writtenOut(q: MxArray, keys: number): boolean {
    const [B, H, L] = q.shape as [number, number, number];
    if (this.writtenOutQueries < 2 || L < 2 || L > this.writtenOutQueries || keys <= L) return false;
    return B * H * L * keys * 4 <= this.scoreBound.bytes / 4;
  }

  /**
   * Float caches only (else null): stores this layer's new keys/values [B, Hkv, L, D]
   * as attention() does and returns the layer's whole buffers [B, Hkv, capacity, D]
   * (columns from offset + L on unwritten), for a GPU kernel that attends over them
   * itself (src/models/gpu-fused.ts). The cache owns them: do not dispose.
   */
  storeWhole(layer: number, keys: MxArray, values: MxArray): [MxArray, MxArray] | null {
    if (this.shape.kvBits !== 0) return null;
    return this.#store(layer, keys, values) as [MxArray, MxArray];
  }

  /**
   * Float caches in `dtype` only (else null): the layer's whole buffers
   * [B, Hkv, capacity, D], grown to hold this forward's columns but not written:
   * the caller's GPU kernel stores the new keys/values (column offset..offset+L)
   * in place. Each buffer is one this cache made (row-contiguous, owned: never a
   * view or a buffer shared with a prefix entry), so the kernel's writes land in it.
   */
  reserveWhole(layer: number, dtype: mx.Dtype): [MxArray, MxArray] | null {
    if (this.shape.kvBits !== 0 || this.shape.dtype !== dtype) return null;
    const end = this.#offset + this.#pending;
    this.#capacity = this.#capacityFor(end);
    const old = this.#parts[layer] ?? null;
    this.#capacity = Math.max(this.#capacity, ...(old ?? []).map((p) => p.dim(2)));
    const next = [0, 1].map((i) => {
      const part = old?.[i] ?? null;
      if (part && this.#owned.has(part) && part.dim(2) >= this.#capacity) return part;
      const kept = mx.keep(
        part
          ? this.#widened(part)
          : mx.zeros([this.batchSize, this.shape.numKvHeads, this.#capacity, this.shape.headDim], dtype),
      );
      this.#owned.add(kept);
      part?.dispose();
      return kept;
    }) as [MxArray, MxArray];
    this.#parts[layer] = next;
    return next;
  }

  /** Writes the new keys/values of a layer; returns every part's whole buffer [B, Hkv, capacity, X]. */
  #store(layer: number, keys: MxArray, values: MxArray): MxArray[] {
    const end = this.#offset + this.#pending;
    this.#capacity = this.#capacityFor(end);
    const { dtype, kvBits, kvGroupSize } = this.shape;
    let updates: MxArray[];
    if (kvBits === 0) updates = [mx.astype(keys, dtype), mx.astype(values, dtype)];
    else {
      const quantized = (a: MxArray) => {
        const q = mx.quantize(mx.astype(a, dtype), kvGroupSize, kvBits);
        return [q.weight, q.scales, q.biases as MxArray];
      };
      updates = [...quantized(keys), ...quantized(values)];
    }
    const old = this.#parts[layer] ?? null;
    const next = updates.map((u, i) => this.#write(old?.[i] ?? null, u));
    this.#parts[layer] = next;
    return next;
  }

  /** Writes `update` at the write position of a part (grown to capacity first); disposes the old part. */
  #write(part: MxArray | null, update: MxArray): MxArray {
    const B = this.batchSize;
    const [heads, width] = [update.dim(1), update.dim(3)];
    let buf = part;
    if (buf === null) buf = mx.zeros([B, heads, this.#capacity, width], update.dtype);
    else if (buf.dim(2) < this.#capacity) buf = this.#widened(buf);
    const start = this.#offset;
    const end = start + this.#pending;
    const next = mx.keep(mx.sliceUpdate(buf, update, [0, 0, start, 0], [B, heads, end, width]));
    this.#owned.add(next);
    // Drop our handle to the old buffer now, so MLX can write the new one in place.
    part?.dispose();
    if (buf !== part) buf.dispose();
    return next;
  }

  end(): void {
    this.#offset += this.#pending;
    this.#pending = 0;
  }

  /**
   * Forgets the columns from `columns` on (rejected speculative drafts): the
   * write position moves back and the next write overwrites them. Every part,
   * float or quantized, has its token axis at 2, so nothing is copied.
   */
  truncate(columns: number): void {
    if (this.#pending !== 0) throw new Error("KVCache.truncate inside a forward pass");
    if (columns > this.#offset || columns < Math.max(0, ...this.#leftPadding)) {
      throw new RangeError(
        `truncate: ${columns} columns outside [${Math.max(0, ...this.#leftPadding)}, ${this.#offset}]`,
      );
    }
    this.#offset = columns;
  }

  /** The current buffers (for evaluation after a prefill chunk). */
  arrays(): MxArray[] {
    return this.#parts.flatMap((p) => p ?? []);
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
      for (let l = 0; l < this.shape.numLayers; l++) {
        const mine = this.#parts[l] ?? null;
        const theirs = other.#parts[l] ?? null;
        if (!mine || !theirs) throw new Error("appendRows: both caches need every layer filled");
        this.#parts[l] = mine.map((a, i) => {
          const merged = mx.concatenate([leftPadded(a, T, width), leftPadded(theirs[i] as MxArray, U, width)], 0);
          // One layer at a time: the old buffers go before the next copy (the KV pool counts one layer extra).
          mx.evaluate(merged);
          a.dispose();
          (theirs[i] as MxArray).dispose();
          return mx.keep(merged);
        });
        other.#parts[l] = null;
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
      for (let l = 0; l < this.#parts.length; l++) {
        this.#parts[l] =
          this.#parts[l]?.map((a) => {
            const picked = mx.keep(mx.sliceAxis(mx.take(a, index, 0), 2, trim, this.#offset));
            // One layer at a time (the KV pool counts one layer extra while rows leave).
            mx.evaluate(picked);
            a.dispose();
            return picked;
          }) ?? null;
      }
    });
    this.#leftPadding = pads.map((p) => p - trim);
    this.#offset = width;
    this.#capacity = width;
  }

  /** Copies of one row's tokens [start, end) of its own positions, every part [1, Hkv, end - start, X]. */
  rowState(row: number, start = 0, end?: number): KVState {
    const pad = this.#leftPadding[row];
    if (pad === undefined) throw new RangeError(`rowState: no row ${row}`);
    const stop = end ?? this.#offset - pad;
    if (start < 0 || stop < start || pad + stop > this.#offset) {
      throw new RangeError(`rowState: tokens [${start}, ${stop}) outside row ${row} (${this.#offset - pad} tokens)`);
    }
    const take = (a: MxArray) =>
      mx.keep(mx.contiguous(mx.sliceAxis(mx.sliceAxis(a, 0, row, row + 1), 2, pad + start, pad + stop)));
    const parts = mx.tidy(() =>
      this.#parts.map((layer) => {
        if (!layer) throw new Error("rowState: empty cache");
        return layer.map(take);
      }),
    );
    // Copy now: a pending copy would pin the whole source buffer.
    mx.asyncEval(...parts.flat());
    return { parts, length: stop - start };
  }

  /**
   * Tokens [start, end) of a lone, unpadded row as views of its buffers (no
   * copy: the views keep the buffers alive after this cache is disposed, and
   * neither MLX nor reserveWhole's callers write in place into a buffer that views share).
   */
  rowViews(start: number, end: number): KVState | null {
    if (this.batchSize !== 1 || this.#leftPadding[0] !== 0 || end > this.#offset || start < 0 || end < start)
      return null;
    const parts = mx.tidy(() =>
      this.#parts.map((layer) => {
        if (!layer) throw new Error("rowViews: empty cache");
        return layer.map((a) => {
          // Shared with the views from now on: a kernel must not write into it in place (reserveWhole copies it first).
          this.#owned.delete(a);
          return mx.keep(mx.sliceAxis(a, 2, start, end));
        });
      }),
    );
    mx.evaluate(...parts.flat());
    return { parts, length: end - start };
  }

  /**
   * Sizes the buffers for `columns` at their next write, so a long prefill
   * allocates once instead of growing (and copying) at every chunk.
   */
  reserve(columns: number): void {
    this.#capacity = this.#capacityFor(columns);
  }

  /** Bytes the buffers gain for a forward of `newTokens` (grown to the capacity it needs, or to one reserved). */
  growthBytes(newTokens: number): number {
    const end = this.#offset + newTokens;
    const capacity = this.#capacityFor(end);
    const target = KVCache.bytesPerToken(this.shape) * this.batchSize * capacity;
    // Views (a prefix hit's) are copied whole at the first write: only buffers this cache made are kept.
    let owned = 0;
    for (const a of this.arrays()) if (this.#owned.has(a) && !a.disposed) owned += a.nbytes;
    return Math.max(0, target - owned);
  }

  /**
   * Before a forward of `newTokens` that would grow the buffers: grows them now,
   * one layer at a time, each copy evaluated before the next. Grown inside the
   * forward, many layers' old and new buffers were alive at once, every KV_STEP
   * columns: at Phi-3's dimensions, 2 rows x 2,048 columns (1.5 GiB), MLX's peak
   * rose 673 MiB against 216 grown first (CPU, bench/results/kv-growth-peak-cpu-2026-12-07.md).
   */
  growFor(newTokens: number): void {
    const end = this.#offset + newTokens;
    if (end <= this.#capacity || this.#parts.every((p) => p === null)) return;
    this.#capacity = this.#capacityFor(end);
    mx.tidy(() => {
      for (const parts of this.#parts) {
        if (!parts) continue;
        parts.forEach((part, i) => {
          if (part.dim(2) >= this.#capacity) return;
          const grown = mx.keep(this.#widened(part));
          // Our handle goes before the evaluation (the old buffer is freed as soon as it is copied), and the
          // grown one takes its place first: an evaluation that fails (out of memory) leaves no disposed handle here.
          parts[i] = grown;
          this.#owned.add(grown);
          part.dispose();
          mx.evaluate(grown);
        });
      }
    });
  }

  /** The capacity that holds `columns`: the current one, or `columns` rounded up to a KV_STEP. */
  #capacityFor(columns: number): number {
    return Math.max(this.#capacity, Math.ceil(columns / KV_STEP) * KV_STEP);
  }

  /**
   * `part` [B, Hkv, n, X] copied to the front of zeros [B, Hkv, capacity, X] (lazily). The zeros' handle goes
   * at once, so the copy writes into them in place.
   */
  #widened(part: MxArray): MxArray {
    const [B, heads, n, width] = part.shape as [number, number, number, number];
    const fresh = mx.zeros([B, heads, this.#capacity, width], part.dtype);
    const grown = mx.sliceUpdate(fresh, part, [0, 0, 0, 0], [B, heads, n, width]);
    fresh.dispose();
    return grown;
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

  /**
   * A one-row cache holding the concatenation (token axis) of consecutive
   * states, the first `length` tokens of each (their arrays may hold more).
   * The states stay the caller's.
   */
  static fromStates(shape: CacheShape, states: readonly KVState[]): KVCache {
    const cache = new KVCache(shape, 1);
    const count = partCount(shape);
    const n = states.reduce((sum, s) => sum + s.length, 0);
    mx.tidy(() => {
      for (let l = 0; l < shape.numLayers; l++) {
        const layer: MxArray[] = [];
        for (let i = 0; i < count; i++) {
          const pieces = states.map((s) => {
            const a = s.parts[l]?.[i];
            if (!a || (s.parts[l] as MxArray[]).length !== count) {
              throw new Error(`fromStates: layer ${l} needs ${count} parts (kvBits ${shape.kvBits})`);
            }
            return a.dim(2) === s.length ? a : mx.sliceAxis(a, 2, 0, s.length);
          });
          layer.push(mx.keep(pieces.length === 1 ? mx.copy(pieces[0] as MxArray) : mx.concatenate(pieces, 2)));
        }
        cache.#parts[l] = layer;
      }
    });
    cache.#offset = n;
    cache.#capacity = n;
    return cache;
  }

  /** A one-row cache holding copies of one state (for prefix reuse). */
  static fromState(shape: CacheShape, state: KVState): KVCache {
    return KVCache.fromStates(shape, [state]);
  }

  /** Forgets everything (keeps nothing allocated). */
  reset(): void {
    this.dispose();
    this.#offset = 0;
    this.#capacity = 0;
    this.#leftPadding = this.#leftPadding.map(() => 0);
  }

  dispose(): void {
    for (const a of this.arrays()) a.dispose();
    this.#parts.fill(null);
  }
}

/**
 * Whether float attention over this cache runs in a fused kernel that needs no
 * score matrix, following the shim's pv_sdpa dispatch: on the CPU, Pensieve's
 * float32 kernel (ffi/cpu_attention.cpp: one score row per thread) unless
 * PENSIEVE_CPU_KERNEL=0; on CUDA, cuDNN or the vector kernel for float16/bfloat16
 * with head_dim a multiple of 8 up to 128. Elsewhere MLX's fallback builds the
 * scores [B, H, L, S] and the queries are split.
 */
function fusedFloatAttention(shape: CacheShape): boolean {
  if (mx.getDevice() === "cpu") return shape.dtype === mx.Dtype.float32 && process.env.PENSIEVE_CPU_KERNEL !== "0";
  const half = shape.dtype === mx.Dtype.float16 || shape.dtype === mx.Dtype.bfloat16;
  return half && shape.headDim % 8 === 0 && shape.headDim <= 128;
}

/** The used columns [0, used) of a buffer, left-padded with zeros to `width`. */
function leftPadded(buffer: MxArray, used: number, width: number): MxArray {
  const body = buffer.dim(2) === used ? buffer : mx.sliceAxis(buffer, 2, 0, used);
  return width === used ? body : mx.pad(body, [2], [width - used], [0]);
}
