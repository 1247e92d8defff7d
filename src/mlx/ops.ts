// Typed MLX operations. Each returns a new MxArray owned by the current scope
// (see array.ts). Numbers passed where arrays are expected become scalars of
// the other operand's dtype, as in MLX's Python API.
// Over 400 lines: one thin typed wrapper per shim entry point, grouped by family: a flat list.

import { type Pointer, ptr } from "bun:ffi";
import { checkStatus, Dtype, handleList, handlesFrom, isFloating, keep, lastError, MlxError, MxArray } from "./array";
import { lib } from "./ffi";

/** An array, or a number that becomes a scalar of the other operand's dtype. */
export type Numeric = MxArray | number;

enum Unary {
  neg = 0,
  exp,
  log,
  sqrt,
  rsqrt,
  abs,
  sigmoid,
  silu,
  tanh,
  sin,
  cos,
  square,
  reciprocal,
  logicalNot,
  isnan,
  stopGradient,
  copy,
  floor,
  ceil,
  log1p,
  erf,
  geluApprox,
  contiguous,
}

enum Binary {
  add = 0,
  subtract,
  multiply,
  divide,
  maximum,
  minimum,
  power,
  equal,
  notEqual,
  less,
  lessEqual,
  greater,
  greaterEqual,
  logicalAnd,
  logicalOr,
  matmul,
  remainder,
  floorDivide,
}

enum Reduce {
  sum = 0,
  mean,
  max,
  min,
  prod,
  any,
  all,
}

function ints(values: readonly number[]): Int32Array {
  return Int32Array.from(values);
}

function cstr(s: string): Buffer {
  return Buffer.from(`${s}\0`, "utf8");
}

// ---- creation ----

/** An array from host data (copied). */
export function fromData(
  data: Float32Array | Int32Array | Uint32Array | Uint8Array | Uint16Array | Float64Array | BigInt64Array,
  shape: readonly number[],
  dtype: Dtype,
): MxArray {
  return new MxArray(lib.pv_from_data(data, ints(shape), shape.length, dtype), "fromData");
}

export function float32(values: ArrayLike<number> | readonly number[], shape?: readonly number[]): MxArray {
  const data = Float32Array.from(values as ArrayLike<number>);
  return fromData(data, shape ?? [data.length], Dtype.float32);
}

export function int32(values: ArrayLike<number> | readonly number[], shape?: readonly number[]): MxArray {
  const data = Int32Array.from(values as ArrayLike<number>);
  return fromData(data, shape ?? [data.length], Dtype.int32);
}

export function uint32(values: ArrayLike<number> | readonly number[], shape?: readonly number[]): MxArray {
  const data = Uint32Array.from(values as ArrayLike<number>);
  return fromData(data, shape ?? [data.length], Dtype.uint32);
}

export function scalar(value: number, dtype: Dtype = Dtype.float32): MxArray {
  return new MxArray(lib.pv_scalar(value, dtype), "scalar");
}

export function full(shape: readonly number[], value: number, dtype: Dtype = Dtype.float32): MxArray {
  return new MxArray(lib.pv_full(ints(shape), shape.length, value, dtype), "full");
}

export function zeros(shape: readonly number[], dtype: Dtype = Dtype.float32): MxArray {
  return full(shape, 0, dtype);
}

export function arange(start: number, stop: number, step = 1, dtype: Dtype = Dtype.int32): MxArray {
  return new MxArray(lib.pv_arange(start, stop, step, dtype), "arange");
}

function asArray(x: Numeric, like: MxArray | null): MxArray {
  if (x instanceof MxArray) return x;
  let dtype = like ? like.dtype : Dtype.float32;
  if (!isFloating(dtype) && !Number.isInteger(x)) dtype = Dtype.float32;
  return scalar(x, dtype);
}

// ---- evaluation ----

export function evaluate(...arrays: MxArray[]): void {
  checkStatus(lib.pv_eval(handleList(arrays), arrays.length), "eval");
}

export function asyncEval(...arrays: MxArray[]): void {
  checkStatus(lib.pv_async_eval(handleList(arrays), arrays.length), "async_eval");
}

export function synchronize(): void {
  checkStatus(lib.pv_synchronize(), "synchronize");
}

/** The unevaluated graph behind `arrays`: its node count and nodes per primitive name (a profiling aid). */
export function graphSummary(...arrays: MxArray[]): { nodes: number; byPrimitive: Record<string, number> } {
  const text = new Uint8Array(16384);
  const nodes = lib.pv_graph_summary(handleList(arrays), arrays.length, text, text.length);
  if (nodes < 0) throw new MlxError("graph_summary", lastError());
  const end = text.indexOf(0);
  const byPrimitive: Record<string, number> = {};
  for (const line of new TextDecoder().decode(text.subarray(0, end < 0 ? text.length : end)).split("\n")) {
    const [name, count] = line.split(" ");
    if (name && count) byPrimitive[name] = Number(count);
  }
  return { nodes, byPrimitive };
}

// ---- elementwise ----

function unary(op: Unary, a: MxArray, name: string): MxArray {
  return new MxArray(lib.pv_unary(op, a.handle), name);
}

function binary(op: Binary, a: Numeric, b: Numeric, name: string): MxArray {
  const x = asArray(a, b instanceof MxArray ? b : null);
  const y = asArray(b, x);
  return new MxArray(lib.pv_binary(op, x.handle, y.handle), name);
}

export const neg = (a: MxArray) => unary(Unary.neg, a, "negative");
export const exp = (a: MxArray) => unary(Unary.exp, a, "exp");
export const log = (a: MxArray) => unary(Unary.log, a, "log");
export const sqrt = (a: MxArray) => unary(Unary.sqrt, a, "sqrt");
export const rsqrt = (a: MxArray) => unary(Unary.rsqrt, a, "rsqrt");
export const abs = (a: MxArray) => unary(Unary.abs, a, "abs");
export const sigmoid = (a: MxArray) => unary(Unary.sigmoid, a, "sigmoid");
export const silu = (a: MxArray) => unary(Unary.silu, a, "silu");
export const tanh = (a: MxArray) => unary(Unary.tanh, a, "tanh");
export const sin = (a: MxArray) => unary(Unary.sin, a, "sin");
export const cos = (a: MxArray) => unary(Unary.cos, a, "cos");
export const square = (a: MxArray) => unary(Unary.square, a, "square");
export const reciprocal = (a: MxArray) => unary(Unary.reciprocal, a, "reciprocal");
export const logicalNot = (a: MxArray) => unary(Unary.logicalNot, a, "logical_not");
export const isnan = (a: MxArray) => unary(Unary.isnan, a, "isnan");
export const copy = (a: MxArray) => unary(Unary.copy, a, "copy");
export const floor = (a: MxArray) => unary(Unary.floor, a, "floor");
export const ceil = (a: MxArray) => unary(Unary.ceil, a, "ceil");
export const log1p = (a: MxArray) => unary(Unary.log1p, a, "log1p");
export const erf = (a: MxArray) => unary(Unary.erf, a, "erf");
export const geluApprox = (a: MxArray) => unary(Unary.geluApprox, a, "gelu_approx");
export const contiguous = (a: MxArray) => unary(Unary.contiguous, a, "contiguous");

export const add = (a: Numeric, b: Numeric) => binary(Binary.add, a, b, "add");
export const subtract = (a: Numeric, b: Numeric) => binary(Binary.subtract, a, b, "subtract");
export const multiply = (a: Numeric, b: Numeric) => binary(Binary.multiply, a, b, "multiply");
export const divide = (a: Numeric, b: Numeric) => binary(Binary.divide, a, b, "divide");
export const maximum = (a: Numeric, b: Numeric) => binary(Binary.maximum, a, b, "maximum");
export const minimum = (a: Numeric, b: Numeric) => binary(Binary.minimum, a, b, "minimum");
export const power = (a: Numeric, b: Numeric) => binary(Binary.power, a, b, "power");
export const equal = (a: Numeric, b: Numeric) => binary(Binary.equal, a, b, "equal");
export const notEqual = (a: Numeric, b: Numeric) => binary(Binary.notEqual, a, b, "not_equal");
export const less = (a: Numeric, b: Numeric) => binary(Binary.less, a, b, "less");
export const lessEqual = (a: Numeric, b: Numeric) => binary(Binary.lessEqual, a, b, "less_equal");
export const greater = (a: Numeric, b: Numeric) => binary(Binary.greater, a, b, "greater");
export const greaterEqual = (a: Numeric, b: Numeric) => binary(Binary.greaterEqual, a, b, "greater_equal");
export const logicalAnd = (a: Numeric, b: Numeric) => binary(Binary.logicalAnd, a, b, "logical_and");
export const logicalOr = (a: Numeric, b: Numeric) => binary(Binary.logicalOr, a, b, "logical_or");
export const remainder = (a: Numeric, b: Numeric) => binary(Binary.remainder, a, b, "remainder");
export const floorDivide = (a: Numeric, b: Numeric) => binary(Binary.floorDivide, a, b, "floor_divide");

export function where(cond: MxArray, a: Numeric, b: Numeric): MxArray {
  const x = asArray(a, b instanceof MxArray ? b : null);
  const y = asArray(b, x);
  return new MxArray(lib.pv_where(cond.handle, x.handle, y.handle), "where");
}

export function astype(a: MxArray, dtype: Dtype): MxArray {
  if (a.dtype === dtype) return a;
  return new MxArray(lib.pv_astype(a.handle, dtype), "astype");
}

export function clip(a: MxArray, lo: Numeric | null, hi: Numeric | null): MxArray {
  const l = lo === null ? null : asArray(lo, a);
  const h = hi === null ? null : asArray(hi, a);
  return new MxArray(lib.pv_clip(a.handle, l?.handle ?? null, h?.handle ?? null), "clip");
}

// ---- shape ----

export function reshape(a: MxArray, shape: readonly number[]): MxArray {
  return new MxArray(lib.pv_reshape(a.handle, ints(shape), shape.length), "reshape");
}

export function transpose(a: MxArray, axes: readonly number[]): MxArray {
  return new MxArray(lib.pv_transpose(a.handle, ints(axes), axes.length), "transpose");
}

export function expandDims(a: MxArray, axis: number): MxArray {
  return new MxArray(lib.pv_expand_dims(a.handle, axis), "expand_dims");
}

export function squeeze(a: MxArray, axes: readonly number[] = []): MxArray {
  return new MxArray(lib.pv_squeeze(a.handle, ints(axes), axes.length), "squeeze");
}

export function broadcastTo(a: MxArray, shape: readonly number[]): MxArray {
  return new MxArray(lib.pv_broadcast_to(a.handle, ints(shape), shape.length), "broadcast_to");
}

export function concatenate(arrays: readonly MxArray[], axis = 0): MxArray {
  return new MxArray(lib.pv_concatenate(handleList(arrays), arrays.length, axis), "concatenate");
}

export function stack(arrays: readonly MxArray[], axis = 0): MxArray {
  return new MxArray(lib.pv_stack(handleList(arrays), arrays.length, axis), "stack");
}

/** Splits at the given indices along axis (indices.length + 1 parts). */
export function split(a: MxArray, indices: readonly number[], axis = 0): MxArray[] {
  const out = new Uint32Array((indices.length + 1) * 2);
  checkStatus(lib.pv_split(a.handle, ints(indices), indices.length, axis, out), "split");
  return handlesFrom(out, indices.length + 1, "split");
}

/** Pads the given axes with a constant. */
export function pad(
  a: MxArray,
  axes: readonly number[],
  low: readonly number[],
  high: readonly number[],
  value = 0,
): MxArray {
  return new MxArray(lib.pv_pad(a.handle, ints(axes), ints(low), ints(high), axes.length, value), "pad");
}

/** Static slice: start/stop per axis (all axes). */
export function slice(
  a: MxArray,
  start: readonly number[],
  stop: readonly number[],
  strides?: readonly number[],
): MxArray {
  return new MxArray(
    lib.pv_slice(a.handle, ints(start), ints(stop), strides ? ints(strides) : null, start.length),
    "slice",
  );
}

/** Slice along one axis, [start, stop). */
export function sliceAxis(a: MxArray, axis: number, start: number, stop: number): MxArray {
  const shape = a.shape;
  const ax = axis < 0 ? shape.length + axis : axis;
  const lo = shape.map(() => 0);
  const hi = [...shape];
  lo[ax] = start;
  hi[ax] = stop;
  return slice(a, lo, hi);
}

/** Slice whose start is an array (evaluated lazily), for the given axes. */
export function sliceDynamic(a: MxArray, start: MxArray, axes: readonly number[], size: readonly number[]): MxArray {
  return new MxArray(
    lib.pv_slice_dynamic(a.handle, start.handle, ints(axes), axes.length, ints(size), size.length),
    "slice(dynamic)",
  );
}

export function sliceUpdate(
  src: MxArray,
  update: MxArray,
  start: readonly number[],
  stop: readonly number[],
  strides?: readonly number[],
): MxArray {
  return new MxArray(
    lib.pv_slice_update(
      src.handle,
      update.handle,
      ints(start),
      ints(stop),
      strides ? ints(strides) : null,
      start.length,
    ),
    "slice_update",
  );
}

export function sliceUpdateDynamic(src: MxArray, update: MxArray, start: MxArray, axes: readonly number[]): MxArray {
  return new MxArray(
    lib.pv_slice_update_dynamic(src.handle, update.handle, start.handle, ints(axes), axes.length),
    "slice_update(dynamic)",
  );
}

// ---- indexing ----

export function take(a: MxArray, indices: MxArray, axis: number): MxArray {
  return new MxArray(lib.pv_take(a.handle, indices.handle, axis), "take");
}

export function takeAlongAxis(a: MxArray, indices: MxArray, axis: number): MxArray {
  return new MxArray(lib.pv_take_along_axis(a.handle, indices.handle, axis), "take_along_axis");
}

export function putAlongAxis(a: MxArray, indices: MxArray, values: MxArray, axis: number): MxArray {
  return new MxArray(lib.pv_put_along_axis(a.handle, indices.handle, values.handle, axis), "put_along_axis");
}

// ---- reductions and sorting ----

function reduce(op: Reduce, a: MxArray, axes: number | readonly number[] | undefined, keepdims: boolean, name: string) {
  const ax = axes === undefined ? [] : typeof axes === "number" ? [axes] : axes;
  return new MxArray(lib.pv_reduce(op, a.handle, ints(ax), ax.length, keepdims ? 1 : 0), name);
}

export const sum = (a: MxArray, axes?: number | readonly number[], keepdims = false) =>
  reduce(Reduce.sum, a, axes, keepdims, "sum");
export const mean = (a: MxArray, axes?: number | readonly number[], keepdims = false) =>
  reduce(Reduce.mean, a, axes, keepdims, "mean");
export const max = (a: MxArray, axes?: number | readonly number[], keepdims = false) =>
  reduce(Reduce.max, a, axes, keepdims, "max");
export const min = (a: MxArray, axes?: number | readonly number[], keepdims = false) =>
  reduce(Reduce.min, a, axes, keepdims, "min");
export const any = (a: MxArray, axes?: number | readonly number[], keepdims = false) =>
  reduce(Reduce.any, a, axes, keepdims, "any");
export const all = (a: MxArray, axes?: number | readonly number[], keepdims = false) =>
  reduce(Reduce.all, a, axes, keepdims, "all");

export function argmax(a: MxArray, axis = -1, keepdims = false): MxArray {
  return new MxArray(lib.pv_argmax(a.handle, axis, keepdims ? 1 : 0), "argmax");
}

export function argmin(a: MxArray, axis = -1, keepdims = false): MxArray {
  return new MxArray(lib.pv_argmin(a.handle, axis, keepdims ? 1 : 0), "argmin");
}

export function softmax(a: MxArray, axes: number | readonly number[] = -1, precise = true): MxArray {
  const ax = typeof axes === "number" ? [axes] : axes;
  return new MxArray(lib.pv_softmax(a.handle, ints(ax), ax.length, precise ? 1 : 0), "softmax");
}

export function logsumexp(a: MxArray, axes: number | readonly number[] = -1, keepdims = false): MxArray {
  const ax = typeof axes === "number" ? [axes] : axes;
  return new MxArray(lib.pv_logsumexp(a.handle, ints(ax), ax.length, keepdims ? 1 : 0), "logsumexp");
}

/** The k largest values along axis (unordered). */
export function topk(a: MxArray, k: number, axis = -1): MxArray {
  return new MxArray(lib.pv_topk(a.handle, k, axis), "topk");
}

export function argpartition(a: MxArray, kth: number, axis = -1): MxArray {
  return new MxArray(lib.pv_argpartition(a.handle, kth, axis), "argpartition");
}

export function sort(a: MxArray, axis = -1): MxArray {
  return new MxArray(lib.pv_sort(a.handle, axis), "sort");
}

export function argsort(a: MxArray, axis = -1): MxArray {
  return new MxArray(lib.pv_argsort(a.handle, axis), "argsort");
}

export function cumsum(a: MxArray, axis = -1, reverse = false, inclusive = true): MxArray {
  return new MxArray(lib.pv_cumsum(a.handle, axis, reverse ? 1 : 0, inclusive ? 1 : 0), "cumsum");
}

// ---- linear algebra and quantization ----

export function matmul(a: MxArray, b: MxArray): MxArray {
  return new MxArray(lib.pv_matmul(a.handle, b.handle), "matmul");
}

export interface QuantizedWeight {
  weight: MxArray;
  scales: MxArray;
  biases: MxArray | null;
  groupSize: number;
  bits: number;
}

/** x @ dequantize(w).T (transpose = true, the Linear layout). */
export function quantizedMatmul(x: MxArray, q: QuantizedWeight, transpose = true): MxArray {
  return new MxArray(
    lib.pv_quantized_matmul(
      x.handle,
      q.weight.handle,
      q.scales.handle,
      q.biases?.handle ?? null,
      transpose ? 1 : 0,
      q.groupSize,
      q.bits,
    ),
    "quantized_matmul",
  );
}

/** Whether Pensieve's CPU kernel handles this weight (affine, float32 scales, 4 or 8 bits). */
export function cpuKernelSupports(q: QuantizedWeight): boolean {
  return (
    (q.bits === 4 || q.bits === 8) &&
    q.groupSize % 8 === 0 &&
    q.biases !== null &&
    q.scales.dtype === Dtype.float32 &&
    q.biases.dtype === Dtype.float32
  );
}

/**
 * x @ dequantize(w).T through Pensieve's CPU kernels: the int8-activation one
 * (ffi/cpu_qmm_int8.cpp) unless the exact float path is selected (see
 * setCpuMatmul) or the group size is not 32/64/128; else ffi/cpu_qmm.cpp.
 */
export function quantizedMatmulCpu(x: MxArray, q: QuantizedWeight): MxArray {
  // The kernel takes 2-D weights; batched ones (a quantized KV cache's) go to MLX's own op.
  if (q.weight.ndim !== 2) return quantizedMatmul(x, q);
  if (cpuMatmulMode !== "int8" || !INT8_GROUPS.has(q.groupSize)) return quantizedMatmulCpuExact(x, q);
  const packed = cpuPackedWeight(q);
  return packed ? quantizedMatmulCpuPacked(x, packed) : quantizedMatmulCpuInt8(x, q);
}

/** The packed copy quantizedMatmulCpu reads for this weight, or null where it takes another kernel. */
export function cpuProductPacked(q: QuantizedWeight): MxArray | null {
  if (q.weight.ndim !== 2 || cpuMatmulMode !== "int8" || !INT8_GROUPS.has(q.groupSize)) return null;
  return cpuPackedWeight(q);
}

// Each 4- or 8-bit weight's packed copy (see cpuPack), made on its first product;
// null: it cannot be packed exactly. Keyed by the weight array, so a weight
// that goes is unpacked with it (the copy is kept, hence freed by the finalizer).
const packedWeights = new WeakMap<MxArray, MxArray | null>();

/** The packed copy the int8 VNNI path reads, when the weight packs exactly and VNNI is the path in use. */
export function cpuPackedWeight(q: QuantizedWeight): MxArray | null {
  if ((q.bits !== 4 && q.bits !== 8) || !cpuPacking || cpuIsa() !== "vnni" || q.weight.ndim !== 2) return null;
  let packed = packedWeights.get(q.weight);
  if (packed === undefined) {
    packed = cpuPack(q);
    packedWeights.set(q.weight, packed);
  }
  return packed;
}

let cpuPacking = process.env.PENSIEVE_CPU_PACK !== "0";

/** Quantized products on the CPU will make packed copies (int8 path, VNNI, packing on): the memory plan counts them. */
export function cpuPackingActive(): boolean {
  return cpuPacking && cpuMatmulMode === "int8" && cpuIsa() === "vnni";
}

/** Turns the packed path on or off for products built from now on (PENSIEVE_CPU_PACK=0 at start: off). */
export function setCpuPacking(on: boolean): void {
  cpuPacking = on;
}

/**
 * A 4- or 8-bit affine weight repacked for the VNNI int8 kernel (ffi/cpu_qmm_packed.cpp):
 * one stream per 4 rows, scales as float16/bfloat16. Null when it cannot be
 * packed exactly (shape, scales not exact in 16 bits, or no VNNI).
 */
export function cpuPack(q: QuantizedWeight): MxArray | null {
  if ((q.bits !== 4 && q.bits !== 8) || !q.biases) return null;
  const packed = keep(
    new MxArray(lib.pv_cpu_pack(q.weight.handle, q.scales.handle, q.biases.handle, q.groupSize, q.bits), "cpu pack"),
  );
  if (packed.size > 0) return packed;
  packed.dispose();
  return null;
}

/**
 * Packs a weight for the CPU now (see cpuPackedWeight) and, where its packed
 * layout can rebuild them (4-bit), replaces its plain arrays in place by lazy
 * rebuilds from the copy, so their memory goes: only the copy stays resident.
 * A path that reads them later (the exact float kernel, another ISA, an
 * embedding lookup) gets them back, equal, on first use. Returns the bytes freed.
 */
export function cpuPackDroppingPlain(q: QuantizedWeight): number {
  const packed = cpuPackedWeight(q);
  if (!packed || !q.biases) return 0;
  const before = q.weight.nbytes + q.scales.nbytes + q.biases.nbytes;
  const dropped = lib.pv_cpu_drop_plain(q.weight.handle, q.scales.handle, q.biases.handle, packed.handle);
  if (dropped < 0) throw new MlxError("cpu drop plain", lastError());
  return dropped === 1 ? before : 0;
}

/** x @ dequantize(w).T from a packed weight (cpuPack): the int8 kernel's sums. */
export function quantizedMatmulCpuPacked(x: MxArray, packed: MxArray): MxArray {
  return new MxArray(lib.pv_quantized_matmul_cpu_packed(x.handle, packed.handle), "quantized_matmul (cpu packed)");
}

/** What a packed product (cpuProductPacked) folds in: each step equal to the separate float32 op. */
export interface PackedFusion {
  /** RMSNorm of x first (float32 x and weight). */
  norm?: { weight: MxArray; eps: number };
  /** silu(gate) * up of the product's halves (gate | up): [..., N/2]. */
  swiglu?: boolean;
  /** Added last (float32, the result's shape). */
  residual?: MxArray;
}

/** x @ dequantize(w).T from a packed weight with its neighbours folded in: one graph node (ffi/cpu_qmm_packed.cpp). */
export function cpuPackedProduct(x: MxArray, packed: MxArray, f: PackedFusion): MxArray {
  return new MxArray(
    lib.pv_cpu_packed_product(
      x.handle,
      packed.handle,
      f.norm?.weight.handle ?? null,
      f.norm?.eps ?? 0,
      f.residual?.handle ?? null,
      f.swiglu ? 1 : 0,
    ),
    "quantized_matmul (cpu packed, fused)",
  );
}

/** The float kernel (ffi/cpu_qmm.cpp): the same sums as mx.quantized_matmul, to float rounding. */
export function quantizedMatmulCpuExact(x: MxArray, q: QuantizedWeight): MxArray {
  return cpuKernelProduct(lib.pv_quantized_matmul_cpu, x, q, "quantized_matmul (cpu kernel)");
}

/** The int8-activation kernel (ffi/cpu_qmm_int8.cpp): x quantized per group to int8, integer dots. */
export function quantizedMatmulCpuInt8(x: MxArray, q: QuantizedWeight): MxArray {
  return cpuKernelProduct(lib.pv_quantized_matmul_cpu_int8, x, q, "quantized_matmul (cpu int8 kernel)");
}

/** One of the shim's CPU quantized-matmul entry points (same arguments) applied to x and q. */
function cpuKernelProduct(
  entry: typeof lib.pv_quantized_matmul_cpu,
  x: MxArray,
  q: QuantizedWeight,
  name: string,
): MxArray {
  return new MxArray(
    entry(x.handle, q.weight.handle, q.scales.handle, q.biases?.handle ?? null, q.groupSize, q.bits),
    name,
  );
}

// ---- mixture of experts (issue 15): per-row expert products ----

/** a [..., M, K] @ b[rhsIndices] where b is [E, K, N]; indices broadcast with a's leading axes. */
export function gatherMm(a: MxArray, b: MxArray, rhsIndices: MxArray, sortedIndices = false): MxArray {
  return new MxArray(lib.pv_gather_mm(a.handle, b.handle, rhsIndices.handle, sortedIndices ? 1 : 0), "gather_mm");
}

/** The quantized form: x @ w[rhsIndices]^T for w [E, N, K*bits/32] with per-expert scales/biases. */
export function gatherQmm(x: MxArray, q: QuantizedWeight, rhsIndices: MxArray, sortedIndices = false): MxArray {
  return new MxArray(
    lib.pv_gather_qmm(
      x.handle,
      q.weight.handle,
      q.scales.handle,
      q.biases?.handle ?? null,
      rhsIndices.handle,
      1,
      q.groupSize,
      q.bits,
      sortedIndices ? 1 : 0,
    ),
    "gather_qmm",
  );
}

const INT8_GROUPS = new Set([32, 64, 128]);

/** "int8": activations quantized to int8 (fast; logits move slightly). "exact": float sums. */
export type CpuMatmulMode = "int8" | "exact";

let cpuMatmulMode: CpuMatmulMode = process.env.PENSIEVE_CPU_MATMUL === "exact" ? "exact" : "int8";

/** Selects the CPU matmul for products built from now on (PENSIEVE_CPU_MATMUL=exact at start). */
export function setCpuMatmul(mode: CpuMatmulMode): void {
  cpuMatmulMode = mode;
}

export function cpuMatmul(): CpuMatmulMode {
  return cpuMatmulMode;
}

/** Instruction sets of the int8 kernel, by the shim's numbers (pv_cpu_set_isa). */
export const CPU_ISAS = { auto: 0, scalar: 1, avx2: 2, vnni: 3 } as const;
export type CpuIsa = keyof typeof CPU_ISAS;

export function cpuIsaSupported(isa: CpuIsa): boolean {
  return lib.pv_cpu_isa_supported(CPU_ISAS[isa]) === 1;
}

/** Forces the int8 kernel's instruction set ("auto": the best this CPU has); throws if the CPU lacks it. */
export function setCpuIsa(isa: CpuIsa): void {
  checkStatus(lib.pv_cpu_set_isa(CPU_ISAS[isa]), "cpu isa");
}

/** The instruction set the int8 kernel uses now. */
export function cpuIsa(): Exclude<CpuIsa, "auto"> {
  const n = lib.pv_cpu_isa();
  const name = (Object.keys(CPU_ISAS) as CpuIsa[]).find((k) => CPU_ISAS[k] === n);
  return name && name !== "auto" ? name : "scalar";
}

/** Threads of the CPU kernels (0: every core the pool has). */
export function setCpuThreads(threads: number): void {
  lib.pv_cpu_set_threads(threads);
}

export function cpuThreads(): number {
  return lib.pv_cpu_threads();
}

export function quantize(w: MxArray, groupSize: number, bits: number): QuantizedWeight {
  const out = new Uint32Array(6);
  checkStatus(lib.pv_quantize(w.handle, groupSize, bits, out), "quantize");
  const [weight, scales, biases] = handlesFrom(out, 3, "quantize") as [MxArray, MxArray, MxArray];
  return { weight, scales, biases, groupSize, bits };
}

export function dequantize(q: QuantizedWeight, dtype?: Dtype): MxArray {
  return new MxArray(
    lib.pv_dequantize(q.weight.handle, q.scales.handle, q.biases?.handle ?? null, q.groupSize, q.bits, dtype ?? -1),
    "dequantize",
  );
}

// ---- fast transformer ops ----

export function rmsNorm(x: MxArray, weight: MxArray | null, eps: number): MxArray {
  return new MxArray(lib.pv_rms_norm(x.handle, weight?.handle ?? null, eps), "rms_norm");
}

export function layerNorm(x: MxArray, weight: MxArray | null, bias: MxArray | null, eps: number): MxArray {
  return new MxArray(lib.pv_layer_norm(x.handle, weight?.handle ?? null, bias?.handle ?? null, eps), "layer_norm");
}

export interface RopeOptions {
  dims: number;
  traditional: boolean;
  /** Rotary base; give base or freqs, not both. */
  base?: number;
  /** Per-pair frequencies (dims/2), used instead of base. */
  freqs?: MxArray;
  scale?: number;
  /** Position of the first query: a number, or an array with one offset per batch row. */
  offset: number | MxArray;
}

export function rope(x: MxArray, o: RopeOptions): MxArray {
  if ((o.base === undefined) === (o.freqs === undefined)) {
    throw new MlxError("rope", "give exactly one of base and freqs");
  }
  const offsetArr = o.offset instanceof MxArray ? o.offset.handle : null;
  const offset = typeof o.offset === "number" ? o.offset : 0;
  return new MxArray(
    lib.pv_rope(
      x.handle,
      o.dims,
      o.traditional ? 1 : 0,
      o.base ?? 0,
      o.base === undefined ? 0 : 1,
      o.scale ?? 1,
      offset,
      offsetArr,
      o.freqs?.handle ?? null,
    ),
    "rope",
  );
}

/**
 * Fused attention. mask: "causal" (aligned bottom-right), an array (bool
 * keep-mask or additive float), or null for none.
 */
export function sdpa(q: MxArray, k: MxArray, v: MxArray, scale: number, mask: "causal" | MxArray | null): MxArray {
  const mode = mask === null ? 0 : mask === "causal" ? 1 : 2;
  const m = mask instanceof MxArray ? mask.handle : null;
  return new MxArray(lib.pv_sdpa(q.handle, k.handle, v.handle, scale, mode, m), "scaled_dot_product_attention");
}

// PENSIEVE_CPU_FUSE=0 turns the CPU folds off: the packed products' norm / SwiGLU / residual (src/models/cpu-fused.ts)
// and the KV write in the cache's attention (cpuCacheSdpa).
const cpuFoldsDefault = () => process.env.PENSIEVE_CPU_FUSE !== "0";
let cpuFolds = cpuFoldsDefault();

/** Turns the CPU folds on or off for graphs built from now on (null: the default). */
export function setCpuFolds(on: boolean | null): void {
  cpuFolds = on ?? cpuFoldsDefault();
}

export function cpuFoldsEnabled(): boolean {
  return cpuFolds;
}

/** Whether cpuCacheSdpa takes these arrays: folds on, the CPU, Pensieve's CPU kernels, float32, a boolean mask. */
export function cpuCacheSdpaApplies(arrays: MxArray[], mask: "causal" | MxArray | null): boolean {
  return (
    cpuFolds &&
    process.env.PENSIEVE_CPU_KERNEL !== "0" &&
    getDevice() === "cpu" &&
    arrays.every((a) => a.dtype === Dtype.float32) &&
    (!(mask instanceof MxArray) || mask.dtype === Dtype.bool)
  );
}

/**
 * k, v [B, Hkv, L, D] stored into the cache buffers kc, vc [B, Hkv, capacity, D] in place at columns
 * offset..offset+L-1, then sdpa of q over their first offset + L columns: the cache's slice updates and sdpa over
 * its slices in one CPU task, equal to them (ffi/cpu_attention.cpp). Returns the attention and the buffers as
 * written (sharing kc's and vc's memory): the cache keeps those, so later reads depend on the write. The buffers
 * must be the cache's own.
 */
export function cpuCacheSdpa(
  q: MxArray,
  k: MxArray,
  v: MxArray,
  kc: MxArray,
  vc: MxArray,
  offset: number,
  scale: number,
  mask: "causal" | MxArray | null,
): [MxArray, MxArray, MxArray] {
  const mode = mask === null ? 0 : mask === "causal" ? 1 : 2;
  const m = mask instanceof MxArray ? mask.handle : null;
  const keys = offset + k.dim(2);
  const out = new Uint32Array(6);
  checkStatus(
    lib.pv_cpu_cache_sdpa(q.handle, k.handle, v.handle, kc.handle, vc.handle, offset, keys, scale, mode, m, out),
    "cache attention (cpu)",
  );
  return handlesFrom(out, 3, "cache attention (cpu)") as [MxArray, MxArray, MxArray];
}

// ---- attention over a quantized KV cache ----

/** Most negative finite value of a float dtype (masked scores, as mlx-lm's finfo(dtype).min). */
function lowestFinite(dtype: Dtype): number {
  return dtype === Dtype.float16 ? -65504 : dtype === Dtype.bfloat16 ? -3.3895313892515355e38 : -3.4028234663852886e38;
}

/**
 * Attention written out: scores = (q·scale) @ Kᵀ, a precise softmax, then @ V.
 * Grouped-query heads: q [B, H, L, D] becomes [B, Hkv, H/Hkv, L, D] against K
 * and V with a broadcast axis (`product` gets grouped = true). mask: "causal"
 * (bottom-right aligned), a bool keep-mask broadcastable to [B, 1, L, S], or
 * null. Materializes the scores [B, H, L, S]: callers bound L.
 */
function writtenOutAttention(
  q: MxArray,
  kvHeads: number,
  keys: number,
  scale: number,
  mask: "causal" | MxArray | null,
  product: { scores(queries: MxArray, grouped: boolean): MxArray; out(probs: MxArray, grouped: boolean): MxArray },
): MxArray {
  const [B, H, L, D] = q.shape as [number, number, number, number];
  const repeats = H / kvHeads;
  const grouped = repeats > 1;
  const queries = grouped ? reshape(multiply(q, scale), [B, kvHeads, repeats, L, D]) : multiply(q, scale);
  let scores = product.scores(queries, grouped);
  if (mask !== null) {
    let keepMask =
      mask === "causal"
        ? greaterEqual(reshape(arange(keys - L, keys), [L, 1]), reshape(arange(0, keys), [1, keys]))
        : mask;
    if (grouped && keepMask.ndim > 3) keepMask = expandDims(keepMask, 2);
    scores = where(keepMask, scores, lowestFinite(scores.dtype));
  }
  const out = product.out(softmax(scores, -1, true), grouped);
  return grouped ? reshape(out, [B, H, L, out.dim(-1)]) : out;
}

/**
 * Attention over group-quantized keys and values [B, Hkv, S, X] (packed uint32,
 * scales, biases), as mlx-lm's quantized_scaled_dot_product_attention: the
 * products through quantized_matmul (keys transposed).
 */
export function quantizedSdpa(
  q: MxArray,
  k: QuantizedWeight,
  v: QuantizedWeight,
  scale: number,
  mask: "causal" | MxArray | null,
): MxArray {
  const broadcast = (w: QuantizedWeight): QuantizedWeight => ({
    ...w,
    weight: expandDims(w.weight, 2),
    scales: expandDims(w.scales, 2),
    biases: w.biases ? expandDims(w.biases, 2) : null,
  });
  return writtenOutAttention(q, k.weight.dim(1), k.weight.dim(2), scale, mask, {
    scores: (queries, grouped) => quantizedMatmul(queries, grouped ? broadcast(k) : k, true),
    out: (probs, grouped) => quantizedMatmul(probs, grouped ? broadcast(v) : v, false),
  });
}

/**
 * Float attention without the fused kernel: plain matmuls. On CUDA, MLX's fused
 * path for more than 3 queries is cuDNN, which builds a graph for every new
 * (queries, keys) shape; a few queries over a long cached prefix (a cache hit's
 * remainder) are cheaper this way.
 */
export function writtenOutSdpa(
  q: MxArray,
  k: MxArray,
  v: MxArray,
  scale: number,
  mask: "causal" | MxArray | null,
): MxArray {
  const keysT = transpose(k, [0, 1, 3, 2]);
  return writtenOutAttention(q, k.dim(1), k.dim(2), scale, mask, {
    scores: (queries, grouped) => matmul(queries, grouped ? expandDims(keysT, 2) : keysT),
    out: (probs, grouped) => matmul(probs, grouped ? expandDims(v, 2) : v),
  });
}

/** silu(gate) * up; `fused` compiles it into one kernel (use on the GPU). */
export function swiglu(gate: MxArray, up: MxArray, fused: boolean): MxArray {
  return new MxArray(lib.pv_swiglu(gate.handle, up.handle, fused ? 1 : 0), "swiglu");
}

// ---- random ----

export function randomKey(seed: number | bigint): MxArray {
  return new MxArray(lib.pv_random_key(BigInt(seed)), "random.key");
}

export function randomSplit(key: MxArray, num = 2): MxArray[] {
  const out = new Uint32Array(num * 2);
  checkStatus(lib.pv_random_split(key.handle, num, out), "random.split");
  return handlesFrom(out, num, "random.split");
}

export function categorical(logits: MxArray, axis = -1, key: MxArray | null = null): MxArray {
  return new MxArray(lib.pv_random_categorical(logits.handle, axis, key?.handle ?? null), "random.categorical");
}

export function randomUniform(shape: readonly number[], dtype = Dtype.float32, key: MxArray | null = null): MxArray {
  return new MxArray(lib.pv_random_uniform(ints(shape), shape.length, dtype, key?.handle ?? null), "random.uniform");
}

export function randomNormal(
  shape: readonly number[],
  dtype = Dtype.float32,
  loc = 0,
  scale = 1,
  key: MxArray | null = null,
): MxArray {
  return new MxArray(
    lib.pv_random_normal(ints(shape), shape.length, dtype, loc, scale, key?.handle ?? null),
    "random.normal",
  );
}

// ---- I/O ----

export type GgufMetaValue = MxArray | string | string[] | null;

export interface LoadedFile {
  arrays: Map<string, MxArray>;
  /** safetensors: string values; GGUF: arrays, strings or string lists. */
  metadata: Map<string, GgufMetaValue>;
}

function readMap(result: unknown, op: string, path: string): LoadedFile {
  const handle = result as Pointer | null;
  if (!handle) throw new MlxError(op, `${path}: ${String(lib.pv_last_error())}`);
  try {
    const arrays = new Map<string, MxArray>();
    const n = lib.pv_map_count(handle);
    for (let i = 0; i < n; i++) {
      arrays.set(String(lib.pv_map_name(handle, i)), new MxArray(lib.pv_map_array(handle, i), op));
    }
    const metadata = new Map<string, GgufMetaValue>();
    const m = lib.pv_map_meta_count(handle);
    for (let i = 0; i < m; i++) {
      const key = String(lib.pv_map_meta_key(handle, i));
      const kind = lib.pv_map_meta_kind(handle, i);
      if (kind === 1) metadata.set(key, new MxArray(lib.pv_map_meta_array(handle, i), op));
      else if (kind === 2) metadata.set(key, String(lib.pv_map_meta_string(handle, i)));
      else if (kind === 3) {
        const count = lib.pv_map_meta_strings_count(handle, i);
        const list: string[] = new Array(count);
        for (let j = 0; j < count; j++) list[j] = String(lib.pv_map_meta_strings_get(handle, i, j));
        metadata.set(key, list);
      } else metadata.set(key, null);
    }
    return { arrays, metadata };
  } finally {
    lib.pv_map_free(handle);
  }
}

/** Loads a .safetensors file (lazily: data is read when first evaluated). */
export function loadSafetensors(path: string): LoadedFile {
  return readMap(lib.pv_load_safetensors(cstr(path)), "load_safetensors", path);
}

/** Loads a .gguf file: tensors (Q4_0/Q4_1/Q8_0 stay quantized) and metadata. */
export function loadGguf(path: string): LoadedFile {
  return readMap(lib.pv_load_gguf(cstr(path)), "load_gguf", path);
}

export function saveSafetensors(path: string, tensors: Map<string, MxArray>, metadata: Record<string, string> = {}) {
  const names = [...tensors.keys()];
  const arrays = names.map((n) => tensors.get(n) as MxArray);
  const keepAlive = names.map(cstr);
  const metaKeys = Object.keys(metadata).map(cstr);
  const metaValues = Object.values(metadata).map(cstr);
  const pointers = (bufs: Buffer[]) => {
    // Pointers to the NUL-terminated names; bufs stay referenced until the call returns.
    const words = new BigUint64Array(Math.max(1, bufs.length));
    bufs.forEach((b, i) => {
      words[i] = BigInt(ptr(b));
    });
    return words;
  };
  const status = lib.pv_save_safetensors(
    cstr(path),
    pointers(keepAlive),
    handleList(arrays),
    arrays.length,
    pointers(metaKeys),
    pointers(metaValues),
    metaKeys.length,
  );
  checkStatus(status, `save_safetensors ${path}`);
}

// ---- device and memory ----

export type DeviceKind = "cpu" | "gpu";

export function gpuAvailable(): boolean {
  return lib.pv_gpu_available() === 1;
}

export function setDevice(kind: DeviceKind): void {
  checkStatus(lib.pv_set_device(kind === "gpu" ? 1 : 0), `set_default_device(${kind})`);
}

export function getDevice(): DeviceKind {
  return lib.pv_get_device() === 1 ? "gpu" : "cpu";
}

export const memory = {
  active: (): number => Number(lib.pv_active_memory()),
  peak: (): number => Number(lib.pv_peak_memory()),
  cache: (): number => Number(lib.pv_cache_memory()),
  resetPeak: (): void => checkStatus(lib.pv_reset_peak_memory(), "reset_peak_memory"),
  setLimit: (bytes: number): number => Number(lib.pv_set_memory_limit(bytes)),
  setCacheLimit: (bytes: number): number => Number(lib.pv_set_cache_limit(bytes)),
  clearCache: (): void => checkStatus(lib.pv_clear_cache(), "clear_cache"),
  /** A CUDA card's memory still free for allocations (beside MLX's own cache); null without CUDA. */
  deviceFree: (): number | null => {
    const free = Number(lib.pv_device_free_memory());
    return free < 0 ? null : free;
  },
};

export function mlxVersion(): string {
  return String(lib.pv_mlx_version());
}
