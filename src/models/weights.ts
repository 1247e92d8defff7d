// Named weights and the two layer kinds every architecture builds on: Linear
// and Embedding, each either plain (float) or MLX-quantized (affine, per tensor).

import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { QuantizationConfig } from "./config";
import { gpuQuantizedProduct } from "./gpu-kernels";
import { gpuBatchedProduct } from "./gpu-qmm";

/** A weight matrix [out, in], plain or quantized (bits and group size per tensor). */
export type LinearWeight =
  | { kind: "dense"; weight: MxArray; bias: MxArray | null }
  | {
      kind: "quantized";
      q: mx.QuantizedWeight;
      bias: MxArray | null;
      /** Run on Pensieve's CPU kernel (ffi/cpu_qmm.cpp) instead of MLX's scalar CPU loop. */
      cpuKernel: boolean;
      /**
       * The same weight dequantized (GPU, when memory allows): products with
       * many rows (batched decode, prefill) run as dense matrix products, which
       * read the weight once for all rows; a single row keeps the 4-bit kernel.
       */
      dense: MxArray | null;
    };

/** Stacked expert matrices [E, out, in] of a mixture-of-experts layer. */
export type ExpertWeight = { kind: "dense"; weight: MxArray } | { kind: "quantized"; q: mx.QuantizedWeight };

/** x [..., 1, in] through the expert each index names: [..., k, 1, out] (gather_mm / gather_qmm). */
export function expertLinear(x: MxArray, w: ExpertWeight, indices: MxArray): MxArray {
  if (w.kind === "quantized") return mx.gatherQmm(x, w.q, indices);
  return mx.gatherMm(x, mx.transpose(w.weight, [0, 2, 1]), indices);
}

/**
 * Rows from which a dequantized copy beats the quantized kernel. On an H100
 * with the full-size Phi-3 a one-row pass of 3 tokens through MLX's quantized
 * kernel took 11.3 ms, against 7.6 for 5 tokens and 7.9 for 4 rows through the
 * copies (bench/results/gpu-h100-2026-12-07c/rows); 2 rows were even (7.55 ms).
 */
export const DENSE_MIN_ROWS = 3;

export function linear(x: MxArray, w: LinearWeight): MxArray {
  let y: MxArray;
  const rows = x.size / x.dim(-1);
  if (w.kind === "dense") y = mx.matmul(x, mx.transpose(w.weight, [1, 0]));
  else if (w.dense && rows >= DENSE_MIN_ROWS) y = mx.matmul(x, mx.transpose(w.dense, [1, 0]));
  else if (w.cpuKernel) y = mx.quantizedMatmulCpu(x, w.q);
  else y = gpuBatchedProduct(x, w.q, rows) ?? gpuQuantizedProduct(x, w.q, rows) ?? mx.quantizedMatmul(x, w.q);
  return w.bias ? mx.add(y, w.bias) : y;
}

/**
 * x [B, L, in] through w one position at a time: each [B, 1, in] takes the product a one-token step of B rows
 * takes. A speculative verify pass's logits must equal those of the steps it stands for (greedy speculation is
 * plain decoding), and on a GPU a product of more rows can take another kernel that sums in another order: the
 * dense copy the engine keeps from DENSE_MIN_ROWS rows, MLX's tiled qmm from 8 (a head the fused kernels don't
 * take, such as the real SmolLM2's tied 8-bit one).
 */
export function linearByPosition(x: MxArray, w: LinearWeight): MxArray {
  const L = x.dim(1);
  if (L === 1) return linear(x, w);
  return mx.concatenate(
    Array.from({ length: L }, (_, i) => linear(mx.sliceAxis(x, 1, i, i + 1), w)),
    1,
  );
}

/** Bytes a model's quantized weights take once dequantized to 16 bits (for memory planning). */
export function denseCopyBytes(quantizedBytes: number, q: { bits: number; groupSize: number }): number {
  // Per weight: bits/8 for the value plus a 16-bit scale and bias per group.
  return Math.ceil((quantizedBytes * 2) / (q.bits / 8 + 4 / q.groupSize));
}

/** PENSIEVE_CPU_KERNEL=0 turns the CPU kernel off (to compare with MLX's own). */
function cpuKernelWanted(q: mx.QuantizedWeight): boolean {
  return process.env.PENSIEVE_CPU_KERNEL !== "0" && mx.getDevice() === "cpu" && mx.cpuKernelSupports(q);
}

/** Rows of an embedding table: plain take, or take the quantized rows then dequantize. */
export function embed(ids: MxArray, w: LinearWeight, dtype: mx.Dtype): MxArray {
  if (w.kind === "dense") return mx.astype(mx.take(w.weight, ids, 0), dtype);
  const rows = (a: MxArray) => mx.take(a, ids, 0);
  const q = w.q;
  return mx.dequantize(
    {
      weight: rows(q.weight),
      scales: rows(q.scales),
      biases: q.biases ? rows(q.biases) : null,
      groupSize: q.groupSize,
      bits: q.bits,
    },
    dtype,
  );
}

/** Output features of a linear weight. */
export function outFeatures(w: LinearWeight): number {
  return w.kind === "dense" ? w.weight.dim(0) : w.q.weight.dim(0);
}

/** Input features of a linear weight. */
export function inFeatures(w: LinearWeight): number {
  if (w.kind === "dense") return w.weight.dim(1);
  return (w.q.weight.dim(1) * 32) / w.q.bits;
}

/**
 * The weights of one model by name, with the float dtype the model computes in.
 * Architectures take what they need; `assertAllUsed` reports leftovers.
 */
export class WeightStore {
  readonly #arrays: Map<string, MxArray>;
  readonly #used = new Set<string>();
  readonly dtype: mx.Dtype;
  readonly source: string;
  /** What config.json declares; null when the file does not say (GGUF): then it is inferred per tensor. */
  readonly quantization: QuantizationConfig | null;
  /** Keep a dequantized copy of every quantized linear weight (see LinearWeight.dense). */
  readonly denseCopies: boolean;
  readonly #extra: MxArray[] = [];
  /** Quantized linear weights on the CPU kernel (see packForCpu), and those an embedding also reads. */
  readonly #cpuLinears = new Set<mx.QuantizedWeight>();
  readonly #keepPlain = new Set<mx.QuantizedWeight>();

  constructor(
    arrays: Map<string, MxArray>,
    dtype: mx.Dtype,
    source: string,
    quantization: QuantizationConfig | null = null,
    denseCopies = false,
  ) {
    this.#arrays = arrays;
    this.dtype = dtype;
    this.source = source;
    this.quantization = quantization;
    this.denseCopies = denseCopies;
  }

  has(name: string): boolean {
    return this.#arrays.has(name);
  }

  names(): string[] {
    return [...this.#arrays.keys()];
  }

  /** A required tensor, converted to the compute dtype when it is a float tensor. */
  get(name: string): MxArray {
    const a = this.#arrays.get(name);
    if (!a) throw new Error(`${this.source}: missing tensor "${name}"`);
    this.#used.add(name);
    return mx.isFloating(a.dtype) ? this.#cast(name, a) : a;
  }

  #cast(name: string, a: MxArray): MxArray {
    if (a.dtype === this.dtype) return a;
    const c = mx.keep(mx.astype(a, this.dtype));
    a.dispose();
    this.#arrays.set(name, c);
    return c;
  }

  /** A tensor replaced by a function of itself (computed once at load; the store owns the result). */
  derived(name: string, transform: (a: MxArray) => MxArray): MxArray {
    const a = this.get(name);
    const d = mx.keep(transform(a));
    mx.evaluate(d);
    a.dispose();
    this.#arrays.set(name, d);
    return d;
  }

  /** Frees tensors the text model does not use (a multimodal checkpoint's vision tower). */
  discard(unwanted: (name: string) => boolean): void {
    for (const [name, a] of [...this.#arrays]) {
      if (!unwanted(name)) continue;
      a.dispose();
      this.#arrays.delete(name);
    }
  }

  optional(name: string): MxArray | null {
    return this.#arrays.has(name) ? this.get(name) : null;
  }

  /**
   * A linear layer at `prefix` (prefix.weight [+ .scales/.biases] [+ .bias]).
   * Quantized when `.scales` exists; bits come from the packed width and the
   * group size from the scales, checked against the expected input size.
   */
  linear(prefix: string, inFeaturesExpected?: number): LinearWeight {
    const bias = this.optional(`${prefix}.bias`);
    if (!this.has(`${prefix}.scales`)) {
      const weight = this.get(`${prefix}.weight`);
      if (weight.ndim !== 2) throw new Error(`${this.source}: "${prefix}.weight" must be 2-D, got [${weight.shape}]`);
      if (inFeaturesExpected !== undefined && weight.dim(1) !== inFeaturesExpected) {
        throw new Error(
          `${this.source}: "${prefix}.weight" has ${weight.dim(1)} input features, the config says ${inFeaturesExpected}`,
        );
      }
      return { kind: "dense", weight, bias };
    }
    const weight = this.get(`${prefix}.weight`);
    const scales = this.get(`${prefix}.scales`);
    const biases = this.optional(`${prefix}.biases`);
    if (weight.dtype !== mx.Dtype.uint32 || weight.ndim !== 2 || scales.ndim !== 2) {
      throw new Error(`${this.source}: "${prefix}" is not an MLX-quantized weight (uint32 [out, in*bits/32] + scales)`);
    }
    const [outW, words] = weight.shape as [number, number];
    const [outS, groups] = scales.shape as [number, number];
    if (outW !== outS) throw new Error(`${this.source}: "${prefix}" scales have ${outS} rows, weight has ${outW}`);
    const inputs = inFeaturesExpected;
    let bits: number;
    let groupSize: number;
    const declared = this.quantization ? (this.quantization.overrides?.[prefix] ?? this.quantization) : null;
    if (declared && inputs !== undefined) {
      // The config says how this module is packed: the shapes must agree with it.
      bits = declared.bits;
      groupSize = declared.groupSize;
      if (words * 32 !== inputs * bits || groups * groupSize !== inputs) {
        throw new Error(
          `${this.source}: "${prefix}" is packed as [${outW}, ${words}] with ${groups} groups, which does not match ${inputs} input features at ${bits} bits, group size ${groupSize}`,
        );
      }
    } else if (inputs !== undefined) {
      bits = (words * 32) / inputs;
      groupSize = inputs / groups;
    } else {
      // Without a known input size, assume the most common packing: 4 bits.
      bits = 4;
      groupSize = (words * 8) / groups;
    }
    if (![2, 3, 4, 5, 6, 8].includes(bits) || ![32, 64, 128].includes(groupSize)) {
      throw new Error(
        `${this.source}: "${prefix}" has an unsupported quantization (bits ${bits}, group size ${groupSize}) for ${inputs} inputs`,
      );
    }
    const q = { weight, scales, biases, groupSize, bits };
    let dense: MxArray | null = null;
    if (this.denseCopies) {
      dense = mx.keep(mx.dequantize(q, this.dtype));
      mx.evaluate(dense);
      this.#extra.push(dense);
    }
    const cpuKernel = cpuKernelWanted(q);
    if (cpuKernel) this.#cpuLinears.add(q);
    return { kind: "quantized", q, bias, cpuKernel, dense };
  }

  /** A weight an embedding reads by rows: packForCpu leaves its plain arrays. */
  keepPlain(w: LinearWeight): void {
    if (w.kind === "quantized") this.#keepPlain.add(w.q);
  }

  /**
   * Packs every quantized linear weight for the CPU int8 kernel now (not on the
   * first request), dropping the plain arrays the packed copy replaces
   * (mx.cpuPackDroppingPlain; not an embedding's), one weight at a time so the
   * two never all sit side by side. Returns the bytes freed.
   */
  packForCpu(): number {
    let freed = 0;
    for (const q of this.#cpuLinears) {
      if (this.#keepPlain.has(q)) mx.cpuPackedWeight(q);
      else freed += mx.cpuPackDroppingPlain(q);
    }
    return freed;
  }

  /**
   * The stacked expert weights of a mixture-of-experts projection [E, out, in]
   * at `${prefix}.weight` (mlx-community's switch_mlp layout), quantized when
   * `.scales` exists; or, from Hugging Face's per-expert layout
   * (`${expertsPrefix}.{e}.${name}`), stacked here.
   */
  experts(
    prefix: string,
    inFeaturesExpected: number,
    perExpert?: { prefix: string; name: string; count: number },
  ): ExpertWeight {
    if (!this.has(`${prefix}.weight`) && perExpert) {
      const parts: MxArray[] = [];
      for (let e = 0; e < perExpert.count; e++)
        parts.push(this.get(`${perExpert.prefix}.${e}.${perExpert.name}.weight`));
      const weight = mx.keep(mx.stack(parts, 0));
      mx.evaluate(weight);
      this.#extra.push(weight);
      for (const [name, a] of this.#arrays) if (parts.includes(a)) this.#arrays.delete(name);
      for (const a of parts) a.dispose();
      return { kind: "dense", weight };
    }
    const weight = this.get(`${prefix}.weight`);
    if (weight.ndim !== 3) throw new Error(`${this.source}: "${prefix}.weight" must be 3-D [experts, out, in]`);
    if (!this.has(`${prefix}.scales`)) {
      if (weight.dim(2) !== inFeaturesExpected) {
        throw new Error(
          `${this.source}: "${prefix}.weight" has ${weight.dim(2)} input features, expected ${inFeaturesExpected}`,
        );
      }
      return { kind: "dense", weight };
    }
    const scales = this.get(`${prefix}.scales`);
    const biases = this.optional(`${prefix}.biases`);
    const declared = this.quantization ? (this.quantization.overrides?.[prefix] ?? this.quantization) : null;
    const bits = declared?.bits ?? (weight.dim(2) * 32) / inFeaturesExpected;
    const groupSize = declared?.groupSize ?? inFeaturesExpected / scales.dim(2);
    if (weight.dim(2) * 32 !== inFeaturesExpected * bits || scales.dim(2) * groupSize !== inFeaturesExpected) {
      throw new Error(
        `${this.source}: "${prefix}" is not packed for ${inFeaturesExpected} inputs at ${bits} bits, group ${groupSize}`,
      );
    }
    return { kind: "quantized", q: { weight, scales, biases, groupSize, bits } };
  }

  /**
   * Linear layers that read the same input, as one with their output rows
   * stacked (q|k|v, gate|up): one product instead of several, so fewer
   * kernels and CPU thread-pool rounds per step. Null when the parts differ
   * in kind or packing (then use them apart). The parts' arrays are released.
   */
  fuse(parts: LinearWeight[]): LinearWeight | null {
    const first = parts[0];
    if (!first || parts.length < 2) return null;
    const allBias = parts.every((p) => p.bias !== null);
    if (!allBias && parts.some((p) => p.bias !== null)) return null;
    const created: MxArray[] = [];
    const stack = (arrays: MxArray[]) => {
      const a = mx.keep(mx.concatenate(arrays, 0));
      created.push(a);
      return a;
    };
    let fused: LinearWeight;
    if (first.kind === "dense") {
      if (!parts.every((p) => p.kind === "dense")) return null;
      const dense = parts as Array<Extract<LinearWeight, { kind: "dense" }>>;
      fused = { kind: "dense", weight: stack(dense.map((p) => p.weight)), bias: null };
    } else {
      const quantized = parts as Array<Extract<LinearWeight, { kind: "quantized" }>>;
      const same = (p: LinearWeight) =>
        p.kind === "quantized" &&
        p.q.bits === first.q.bits &&
        p.q.groupSize === first.q.groupSize &&
        p.q.weight.dim(1) === first.q.weight.dim(1) &&
        p.q.scales.dtype === first.q.scales.dtype &&
        (p.q.biases === null) === (first.q.biases === null) &&
        (p.dense === null) === (first.dense === null) &&
        p.cpuKernel === first.cpuKernel;
      if (!parts.every(same)) return null;
      const q = {
        weight: stack(quantized.map((p) => p.q.weight)),
        scales: stack(quantized.map((p) => p.q.scales)),
        biases: first.q.biases ? stack(quantized.map((p) => p.q.biases as MxArray)) : null,
        groupSize: first.q.groupSize,
        bits: first.q.bits,
      };
      const dense = first.dense ? stack(quantized.map((p) => p.dense as MxArray)) : null;
      fused = { kind: "quantized", q, bias: null, cpuKernel: first.cpuKernel, dense };
      if (first.cpuKernel) this.#cpuLinears.add(q);
    }
    if (allBias) fused.bias = stack(parts.map((p) => p.bias as MxArray));
    // Computed now, so that the parts can go.
    mx.evaluate(...created);
    this.#extra.push(...created);
    this.#release(parts);
    return fused;
  }

  /** Frees the arrays of linear layers that were fused into another. */
  #release(parts: LinearWeight[]): void {
    const gone = new Set<MxArray>();
    for (const p of parts) {
      if (p.bias) gone.add(p.bias);
      if (p.kind === "dense") gone.add(p.weight);
      else {
        for (const a of [p.q.weight, p.q.scales, p.q.biases, p.dense]) if (a) gone.add(a);
        this.#cpuLinears.delete(p.q);
      }
    }
    for (const [name, a] of this.#arrays) if (gone.has(a)) this.#arrays.delete(name);
    for (let i = this.#extra.length - 1; i >= 0; i--) if (gone.has(this.#extra[i] as MxArray)) this.#extra.splice(i, 1);
    for (const a of gone) a.dispose();
  }

  /** Names never asked for (unexpected tensors in the file). */
  unused(): string[] {
    return this.names().filter((n) => !this.#used.has(n));
  }

  /** Every array, for disposal when the model is unloaded. */
  dispose(): void {
    for (const a of [...this.#arrays.values(), ...this.#extra]) a.dispose();
    this.#arrays.clear();
    this.#extra.length = 0;
  }
}
