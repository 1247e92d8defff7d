// A 4-bit GEMV for decode on CUDA (W4A16): y[m, n] = sum_k x[m, k] * w[n, k]
// with w in MLX's affine format (uint32 words of 8 nibbles, element k of a word
// at bits [4k, 4k+4); fp16/bf16 scale and bias per group: w = s*q + b).
//
// One warp owns ROWS output rows. Each lane streams 16-byte chunks of a row
// (32 weights, 4 words): lane l reads chunk l, l+32, ... so a warp's loads are
// coalesced, and up to 8 chunks per lane are loaded before the first is used.
// Nibbles become 16-bit floats by the magic-number trick (q | 0x6400 is the
// half 1024+q; 0x4300 the bfloat16 128+q), minus 1024+8 (128+8), so the packed
// products (q-8)*x stay small; each word's 8 products are summed in packed
// 16-bit arithmetic, then in float. Per chunk (inside one group):
//   sum_k (s*q_k + b) x_k = s * sum_k (q_k - 8) x_k + (b + 8 s) * sum_k x_k.
// x and the weight are read 16 bytes at a time: each row must start 16-byte
// aligned. MLX's allocations are; a contiguous slice of x passed as it is (MLX
// copies only non-contiguous inputs) must start at a multiple of 8 elements,
// as the q|k|v and gate|up splits of real models do.
// PENSIEVE_GEMV_SPLITK (off by default) splits a row's K across several warps for
// one row of x (more warps and loads in flight: kernels-gemv-split.ts, same hooks).
// Over 400 lines: the kernel source, its variant hooks (kernels-gemv-fused.ts)
// and the launch plans are one unit; splitting them would scatter the template constants.
import { Dtype, type MxArray } from "./array";
import { CustomKernel, type KernelPlan, kernelLanguage } from "./kernels";
import { CHUNK_PRODUCTS } from "./kernels-gemv-chunk";
import {
  boundRows,
  GEMV_MMA_HEADER,
  GEMV_MMA_MAX_ROWS,
  GEMV_MMA_SOURCE,
  MMA_RMS_M,
  mmaBucket,
  mmaWarps,
} from "./kernels-gemv-mma";
import { GEMV_SPLIT_SOURCE, oneRowOverride, splitConfig } from "./kernels-gemv-split";
import type { QuantizedWeight } from "./ops";

const HEADER = `
template <typename T> struct PvOps;
template <> struct PvOps<__half> {
  using T2 = __half2;
  static constexpr uint32_t MAGIC = 0x64006400u;  // 1024 in each half
  static __device__ __forceinline__ T2 offset() { return __half2half2(__ushort_as_half((unsigned short)0x6408)); }  // 1032
  static __device__ __forceinline__ float2 to_float2(T2 v) { return __half22float2(v); }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half(v); }
  static __device__ __forceinline__ T2 splat(float v) { return __float2half2_rn(v); }
  static __device__ __forceinline__ T2 from_float2(float2 v) { return __float22half2_rn(v); }
};
template <> struct PvOps<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t MAGIC = 0x43004300u;  // 128 in each half
  static __device__ __forceinline__ T2 offset() { return __bfloat162bfloat162(__ushort_as_bfloat16((unsigned short)0x4308)); }  // 136
  static __device__ __forceinline__ float2 to_float2(T2 v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16(v); }
  static __device__ __forceinline__ T2 splat(float v) { return __float2bfloat162_rn(v); }
  static __device__ __forceinline__ T2 from_float2(float2 v) { return __float22bfloat162_rn(v); }
};

template <typename T2>
__device__ __forceinline__ T2 pv_bits(uint32_t u) {
  return *reinterpret_cast<const T2*>(&u);
}

template <typename T2>
__device__ __forceinline__ uint32_t pv_word(T2 v) {
  return *reinterpret_cast<const uint32_t*>(&v);
}

// RMSNorm of 8 values as MLX's rms_norm rounds it: w * T(float(x) * r).
template <typename T>
__device__ __forceinline__ uint32_t pv_norm2(uint32_t x, uint32_t w, float r) {
  using Ops = PvOps<T>;
  using T2 = typename Ops::T2;
  float2 f = Ops::to_float2(pv_bits<T2>(x));
  f.x *= r;
  f.y *= r;
  return pv_word(__hmul2(pv_bits<T2>(w), Ops::from_float2(f)));
}
template <typename T>
__device__ __forceinline__ uint4 pv_norm8(uint4 x, uint4 w, float r) {
  return make_uint4(pv_norm2<T>(x.x, w.x, r), pv_norm2<T>(x.y, w.y, r), pv_norm2<T>(x.z, w.z, r),
                    pv_norm2<T>(x.w, w.w, r));
}

// 16 bytes of weights, read once: no L1 allocation.
__device__ __forceinline__ uint4 pv_load_stream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// sum over a word's 8 nibbles of (q - 8) * x; xp holds x as pairs (k, k+4).
template <typename T>
__device__ __forceinline__ float pv_dot8(uint32_t w, const typename PvOps<T>::T2 (&xp)[4]) {
  using Ops = PvOps<T>;
  using T2 = typename Ops::T2;
  const T2 off = Ops::offset();
  const T2 q0 = __hsub2(pv_bits<T2>((w & 0x000F000Fu) | Ops::MAGIC), off);
  const T2 q1 = __hsub2(pv_bits<T2>(((w >> 4) & 0x000F000Fu) | Ops::MAGIC), off);
  const T2 q2 = __hsub2(pv_bits<T2>(((w >> 8) & 0x000F000Fu) | Ops::MAGIC), off);
  const T2 q3 = __hsub2(pv_bits<T2>(((w >> 12) & 0x000F000Fu) | Ops::MAGIC), off);
  T2 a = __hmul2(q0, xp[0]);
  a = __hfma2(q1, xp[1], a);
  a = __hfma2(q2, xp[2], a);
  a = __hfma2(q3, xp[3], a);
  const float2 f = Ops::to_float2(a);
  return f.x + f.y;
}
`;

// Template constants: T (x/scales/output type), M (rows of x), N, K, ROWS (per
// warp), WARPS (per block), GROUP (quantization group size); with the RMSNorm
// prologue also EPS_BITS (epsilon's float32 bits) and the input `norm` [K].
// The prologue: each block sums x^2 per row of x (all its threads, then shared
// memory), and x is used as x * norm * rsqrt(mean(x^2) + eps) in 16-bit.
const NORM_PROLOGUE = `
  float rms[M];
  {
    __shared__ float pv_red[M][WARPS];
    const uint4* xs = reinterpret_cast<const uint4*>(x);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float ss = 0.f;
      for (int i = threadIdx.x; i < K / 8; i += WARPS * 32) {
        const uint4 v = __ldg(xs + (size_t)m * (K / 8) + i);
        const float2 a = Ops::to_float2(pv_bits<T2>(v.x));
        const float2 b = Ops::to_float2(pv_bits<T2>(v.y));
        const float2 c2 = Ops::to_float2(pv_bits<T2>(v.z));
        const float2 d = Ops::to_float2(pv_bits<T2>(v.w));
        ss += a.x * a.x + a.y * a.y + b.x * b.x + b.y * b.y + c2.x * c2.x + c2.y * c2.y + d.x * d.x + d.y * d.y;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      if ((threadIdx.x & 31) == 0) pv_red[m][threadIdx.x >> 5] = ss;
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float ss = 0.f;
#pragma unroll
      for (int i = 0; i < WARPS; ++i) ss += pv_red[m][i];
      rms[m] = rsqrtf(ss / K + __int_as_float(EPS_BITS));
    }
  }
`;

/**
 * Where the GEMV's source is specialized (kernels-gemv-fused.ts): `rows` maps a
 * warp's slot r to an output row (`rowi[r] = ...;` given warp and r), `epilogue`
 * stores the sums acc[m][r] (lane 0; the default writes y[m, rowi[r]]).
 */
export interface GemvVariant {
  norm?: boolean;
  rows?: string;
  epilogue?: string;
}

const PLAIN_ROWS = "rowi[r] = warp * ROWS + r;";

/** Every body's `int rowi[ROWS]`: the output row of each of a warp's slots, by the variant's ROWS hook. */
const rowSlots = (hook: string) => `int rowi[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    ${hook}
  }`;
const PLAIN_EPILOGUE = `
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) y[(size_t)m * N + rowi[r]] = Ops::from_float(acc[m][r]);
`;

/** Which kernel body: the scalar one (default), split-K (kernels-gemv-split.ts) or tensor cores (kernels-gemv-mma.ts). */
export type GemvBody = "scalar" | "split" | "mma";

/**
 * The GEMV's kernel body for a variant (see GemvVariant); `kind`: split-K (template
 * constants SPLIT and LOADS besides) or tensor cores (1..32 rows of x).
 */
export function gemvSource(variant: GemvVariant = {}, kind: GemvBody = "scalar", tiles = 1): string {
  const mmaSource =
    process.env.PENSIEVE_GEMV_MMA_PRELOAD === "1"
      ? GEMV_MMA_SOURCE
      : GEMV_MMA_SOURCE.replace("  load_round(wib);\n/*PROLOGUE*/", "/*PROLOGUE*/\n  load_round(wib);");
  const source =
    kind === "split" ? GEMV_SPLIT_SOURCE : kind === "mma" ? mmaSource.replace("/*TILES*/1", String(tiles)) : SOURCE;
  const bound = kind === "mma" ? boundRows : (hook: string) => hook;
  return source
    .replace("/*PROLOGUE*/", variant.norm ? bound(NORM_PROLOGUE) : "")
    .replaceAll("/*ROW_SLOTS*/", rowSlots(variant.rows ?? PLAIN_ROWS))
    .replace("/*EPILOGUE*/", bound(variant.epilogue ?? PLAIN_EPILOGUE))
    .replace("/*RMS_M*/", variant.norm ? MMA_RMS_M : "")
    .replace(
      "/*XLOAD*/",
      variant.norm
        ? `const uint4 v = pv_norm8<T>(__ldg(xc + j), __ldg(reinterpret_cast<const uint4*>(norm) + c * 4 + j), ${kind === "mma" ? "rms_m" : "rms[m]"});`
        : "const uint4 v = __ldg(xc + j);",
    );
}

const SOURCE = `
  using Ops = PvOps<T>;
  using T2 = typename Ops::T2;
  constexpr int CHUNKS = K / 32;              // 16-byte weight chunks per row
  constexpr int ITERS = (CHUNKS + 31) / 32;   // chunks per lane
  constexpr int U0 = 8 / ROWS;
  constexpr int U = U0 < 1 ? 1 : (U0 > ITERS ? ITERS : U0);  // chunks per lane in flight
  constexpr int GROUPS = K / GROUP;
  const int lane = threadIdx.x & 31;
  const int warp = blockIdx.x * WARPS + (threadIdx.x >> 5);
/*PROLOGUE*/
  if (warp * ROWS >= N) return;
  /*ROW_SLOTS*/
  float acc[M][ROWS];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[m][r] = 0.f;
  const uint4* wbase = reinterpret_cast<const uint4*>(w);
  // Past 8 rows of x the rounds of U chunks stay a loop (the body is M times larger: fully unrolled,
  // K = 8192 at 16 rows took NVRTC 10-18 s); up to 8, fully unrolled.
  constexpr int ROUND_UNROLL = M > 8 ? 1 : (ITERS + U - 1) / U;
#pragma unroll ROUND_UNROLL
  for (int it0 = 0; it0 < ITERS; it0 += U) {
    uint4 wv[U][ROWS];
    float sc[U][ROWS];
    float bo[U][ROWS];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = (it0 + u) * 32 + lane;
      if (it0 + u < ITERS && (CHUNKS % 32 == 0 || c < CHUNKS)) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          wv[u][r] = pv_load_stream(wbase + (size_t)rowi[r] * CHUNKS + c);
          const size_t g = (size_t)rowi[r] * GROUPS + (c * 32) / GROUP;
          const float s = Ops::to_float(scales[g]);
          sc[u][r] = s;
          bo[u][r] = Ops::to_float(biases[g]) + 8.f * s;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = (it0 + u) * 32 + lane;
      if (it0 + u < ITERS && (CHUNKS % 32 == 0 || c < CHUNKS)) {
${CHUNK_PRODUCTS}      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      acc[m][r] = v;
    }
  if (lane == 0) {
/*EPILOGUE*/
  }
`;

/**
 * The most rows of x one launch takes (registers hold every row's sums): 16, for
 * a speculative verify pass of up to 15 drafts (PENSIEVE_GPU_FUSED_VERIFY). Past 8
 * rows of x, 2 output rows per warp (gemvConfig): M x ROWS sums per lane (up to 32
 * registers) and unrolled code that grows with M x ROWS, so M = 16 at 2 rows per warp
 * compiles about as M = 8 at 4 (NVRTC 3-11 s here at M = 9-16, ptxas 100-180 registers,
 * no spills: test/gpu/nvrtc-compile.test.ts); 4 rows per warp would cut the instructions
 * per output another ~18% at twice the registers and compile time. Each weight chunk is
 * still read once for all M rows (no split of M: one pass over the weights, which is
 * what a verify pass must cost). At 9-16 rows the GEMV is ALU-bound, not memory-bound.
 */
export const GEMV_MAX_ROWS = 16;

export interface GemvConfig {
  /** Output rows per warp. */
  rows: number;
  /** Warps per block. */
  warps: number;
  /** Fill the output with NaN first (tests: every element must be written). */
  poison?: boolean;
  /**
   * Split-K (kernels-gemv-split.ts): warps sharing a row group's K (then `warps` is the
   * block's warps, warps / split row groups of `rows` rows). Absent or 1: unsplit.
   */
  split?: number;
  /** With split: 16-byte weight loads in flight a thread (default 8). */
  loads?: number;
  /**
   * Tensor cores (kernels-gemv-mma.ts; gemvConfig from mmaFromRows() rows of x): blocks of `warps` warps
   * on one tile of 16 output rows (K split between the warps); `rows` is then the hooks' rows per virtual warp.
   */
  mma?: boolean;
  /** With mma: tiles of 16 output rows a block (1 by default; N divisible by 16 * tiles). */
  tiles?: number;
}

/**
 * Rows of x from which gemvConfig takes the tensor-core body: 3 by default, PENSIEVE_GEMV_MMA=N (1..32), 0: never.
 * H100, full-size Phi-3 (bench/results/gpu-h100-2026-12-07f): per product at 9 rows of x 1.9-3.0x faster than
 * the scalar body (q|k|v 21.8 against 64.3 us, gate|up 35.0 against 102.9), at one row 1.2-1.7x slower (q|k|v
 * 13.2 against 8.4); fused decode steps of 2 rows 4.61 ms against 4.23, of 4 rows 4.74 against 5.34. 3 sits
 * between (the scalar 3-row step took 5.2-5.5 ms in gpu-h100-2026-12-07e). Verify passes ask for the scalar
 * body unless this is 1 (src/models/gpu-fused.ts: a pass must sum as the one-token step does).
 */
export function mmaFromRows(env: Record<string, string | undefined> = process.env): number {
  const n = Number(env.PENSIEVE_GEMV_MMA ?? 3);
  return Number.isInteger(n) && n > 0 ? n : Number.POSITIVE_INFINITY;
}
let mmaFrom = mmaFromRows();

/** The rows of x from which launches planned from now on take tensor cores (null: PENSIEVE_GEMV_MMA's). */
export function setGemvMmaFromRows(rows: number | null): void {
  mmaFrom = rows === null ? mmaFromRows() : rows;
}

/** Rows of x from which gemvConfig takes the tensor-core body (Infinity: never). */
export function gemvMmaFromRows(): number {
  return mmaFrom;
}

/**
 * One row of x (a decode step), N divisible by 4: a step is a chain of dependent launches, so each launch's
 * latency counts, not its throughput. Nsight Compute, each launch shape alone (H100, Phi-3-mini 4-bit,
 * bench/results/gpu-h100-2026-12-07h): 4 rows a warp, 4 warps a block is the shortest for the wide products
 * (q|k|v + RoPE 11.6 us, gate|up + SwiGLU 16.7), but few output rows (N <= 4096) leave most SMs idle at 4:
 * down (3072 x 8192) 15.7 us against 10.9 at 2 rows a warp, o (3072 x 3072) 8.0 against 6.0. (Down split 4
 * ways along K takes 10.0, but sums in another order than a verify pass, which must sum as the step does.)
 */
export function oneRowConfig(n: number): GemvConfig {
  return n > 4096 ? { rows: 4, warps: 4 } : { rows: 2, warps: 4 };
}

/**
 * Rows per warp. One row of x: oneRowConfig's. More rows of
 * x: fewer rows per warp (each row of x multiplies the registers and the
 * unrolled code: 8 rows of x at 4 rows per warp took NVRTC 20-34 s), as many
 * as keep ~2048 warps busy; 2 up to 4 rows of x (1 row per warp was slower
 * than MLX's dense float16 product at 4 rows).
 */
const VERIFY_ROWS = Number(process.env.PENSIEVE_GEMV_VERIFY_ROWS ?? 2);
const VERIFY_WARPS = Number(process.env.PENSIEVE_GEMV_VERIFY_WARPS ?? 4);

/**
 * Tiles of 16 output rows a tensor-core block takes: PENSIEVE_GEMV_MMA_TILES (1, 2 or 4; 1 by default, as
 * GPU-measured) where N divides into them. More tiles a block unpack each row of x once for more weights (the
 * x side of the body grows with the rows of x: gate|up took 35 us at 9 rows and 92 at 32 for the same weights,
 * bench/results/gpu-h100-2026-12-07f/mma-kernels); not yet measured on a GPU.
 */
export function mmaTilesFor(n: number, env: Record<string, string | undefined> = process.env): number {
  const t = Number(env.PENSIEVE_GEMV_MMA_TILES ?? 1);
  return [2, 4].includes(t) && n % (16 * t) === 0 ? t : 1;
}

export function gemvConfig(n: number, m = 1, k?: number, tensorCores = true): GemvConfig {
  if (tensorCores && m >= mmaFrom && k !== undefined && n % 16 === 0 && m <= GEMV_MMA_MAX_ROWS) {
    // The block's partial sums (warps x 16 tiles x 32 floats at most) stay within 48 KB of shared memory.
    const tiles = mmaTilesFor(n);
    return { rows: 2, warps: Math.min(mmaWarps(n / tiles, k), 16 / tiles), mma: true, tiles };
  }
  // One row of x and K known: PENSIEVE_GEMV_ONE_ROW may set a shape's launch, PENSIEVE_GEMV_SPLITK split K
  // (kernels-gemv-split.ts; both off by default).
  if (m <= 1 && k !== undefined) {
    const chosen = oneRowOverride(n, k);
    if (chosen && n % chosen.rows === 0) return chosen;
  }
  if (m <= 1 && n % 4 === 0) return k === undefined ? { rows: 4, warps: 4 } : splitConfig(oneRowConfig(n), k);
  // 9-16 rows of x (verify passes): ALU-bound, and a warp's 2 output rows share each row of x's unpacking
  // (~74 SASS instructions per row of x, output row and 16-byte chunk vs ~100 at 1 row per warp; sm_90a:
  // bench/gpu/gemv-sass.ts). PENSIEVE_GEMV_VERIFY_ROWS / _WARPS override (a sweep on the GPU: more warps per
  // block repeat the RMSNorm prologue's read of x in fewer blocks).
  if (m > 8 && n % VERIFY_ROWS === 0) return { rows: VERIFY_ROWS, warps: VERIFY_WARPS };
  const cap = m <= 1 ? 4 : m <= 4 ? 2 : 1;
  for (const rows of [4, 2]) if (rows <= cap && n % rows === 0 && n / rows >= 2048) return { rows, warps: 4 };
  return { rows: cap >= 2 && n % 2 === 0 && n >= 2048 ? 2 : 1, warps: 4 };
}

/** The sources as MLX compiles them (for tests that compile them elsewhere). */
export const GEMV_KERNEL: GemvSpec = {
  name: "pv_gemv_w4",
  header: HEADER,
  source: gemvSource(),
  inputs: ["x", "w", "scales", "biases"],
  variant: {},
};
/** The GEMV with RMSNorm of x fused in front: y = rms_norm(x, norm, eps) @ dequantize(w).T. */
export const GEMV_RMS_NORM_KERNEL: GemvSpec = {
  name: "pv_gemv_w4_rms_norm",
  header: HEADER,
  source: gemvSource({ norm: true }),
  inputs: ["x", "w", "scales", "biases", "norm"],
  variant: { norm: true },
};

const kernels = new Map<string, CustomKernel>();
/** Launch plans by kernel, shape and configuration: a decode step repeats the same few launches. */
const plans = new Map<string, KernelPlan>();

/** Whether the GEMV handles this weight: CUDA, 4 bits, affine with biases, fp16/bf16 scales. */
export function gemvSupports(q: QuantizedWeight): boolean {
  const k = (q.weight.dim(1) * 32) / q.bits;
  return (
    q.bits === 4 &&
    [32, 64, 128].includes(q.groupSize) &&
    q.biases !== null &&
    (q.scales.dtype === Dtype.float16 || q.scales.dtype === Dtype.bfloat16) &&
    q.biases.dtype === q.scales.dtype &&
    k % 32 === 0 &&
    kernelLanguage() === "cuda"
  );
}

/** x [..., K] @ dequantize(q).T for at most GEMV_MAX_ROWS rows of x (x in the scales' dtype). */
export function quantizedGemv(x: MxArray, q: QuantizedWeight, config?: GemvConfig): MxArray {
  return gemvLaunch(GEMV_KERNEL, x, q, [], {}, config);
}

/**
 * rms_norm(x, norm, eps) @ dequantize(q).T in one kernel: the normed x is never
 * written out (one launch instead of two). norm [K] in x's dtype.
 */
export function quantizedGemvRmsNorm(
  x: MxArray,
  norm: MxArray,
  eps: number,
  q: QuantizedWeight,
  config?: GemvConfig,
): MxArray {
  if (norm.ndim !== 1 || norm.dim(0) !== x.dim(-1) || norm.dtype !== x.dtype) {
    throw new Error("quantizedGemvRmsNorm: norm must be [K] in x's dtype");
  }
  const epsBits = new Int32Array(Float32Array.of(eps).buffer)[0] as number;
  return gemvLaunch(GEMV_RMS_NORM_KERNEL, x, q, [norm], { EPS_BITS: epsBits }, config);
}

/** A kernel spec of the GEMV family (the GEMV's inputs first, then the variant's). */
export interface GemvSpec {
  name: string;
  header: string;
  source: string;
  inputs: string[];
  /** Output names (default ["y"]). */
  outputs?: string[];
  /** The variant `source` was made from (gemvSource): the split-K launch makes its body from it. */
  variant?: GemvVariant;
}

const mmaSpecs = new Map<string, GemvSpec>();
/** A spec's tensor-core kernel (its own name and header). */
export function mmaSpec(spec: GemvSpec, tiles = 1): GemvSpec {
  const name = tiles === 1 ? `${spec.name}_mma` : `${spec.name}_mma_t${tiles}`;
  let s = mmaSpecs.get(name);
  if (!s) {
    if (!spec.variant) throw new Error(`${spec.name}: no variant to make a tensor-core kernel from`);
    s = {
      ...spec,
      name,
      header: spec.header + GEMV_MMA_HEADER,
      source: gemvSource(spec.variant, "mma", tiles),
    };
    mmaSpecs.set(name, s);
  }
  return s;
}

const splitSpecs = new Map<string, GemvSpec>();
/** A spec's split-K kernel (its own name: MLX keys compiled kernels by name). */
export function splitSpec(spec: GemvSpec): GemvSpec {
  let s = splitSpecs.get(spec.name);
  if (!s) {
    if (!spec.variant) throw new Error(`${spec.name}: no variant to make a split-K kernel from`);
    s = { ...spec, name: `${spec.name}_splitk`, source: gemvSource(spec.variant, "split") };
    splitSpecs.set(spec.name, s);
  }
  return s;
}

/**
 * Adds one launch of a GEMV-family kernel: x [..., K] times q's rows, with the
 * variant's extra inputs and template constants; `outFeatures` is the output's
 * last axis (default: q's rows). Plans are kept by everything that shapes the launch.
 */
export function gemvLaunch(
  spec: GemvSpec,
  x: MxArray,
  q: QuantizedWeight,
  extra: MxArray[],
  extraTemplate: Record<string, number | boolean>,
  config?: GemvConfig,
  outFeatures?: number,
): MxArray {
  const shapes = outFeatures === undefined ? undefined : [[...x.shape.slice(0, -1), outFeatures]];
  return gemvLaunchAll(spec, x, q, extra, extraTemplate, config, shapes)[0] as MxArray;
}

/** gemvLaunch for kernels of several outputs (`outShapes`, in x's dtype; default one [..., N]). */
export function gemvLaunchAll(
  spec: GemvSpec,
  x: MxArray,
  q: QuantizedWeight,
  extra: MxArray[],
  extraTemplate: Record<string, number | boolean>,
  config?: GemvConfig,
  outShapes?: number[][],
): MxArray[] {
  const plan = gemvPlan(spec, x.shape, x.dtype, q, extraTemplate, config, outShapes);
  return plan.run([x, q.weight, q.scales, q.biases as MxArray, ...extra]);
}

/**
 * The launch plan gemvLaunchAll uses for x of this shape and dtype (made once,
 * then found by key). Callers that repeat a launch may keep it and call
 * run([x, q.weight, q.scales, q.biases, ...extra]) directly: no key, no checks.
 */
export function gemvPlan(
  spec: GemvSpec,
  xShape: readonly number[],
  dtype: Dtype,
  q: QuantizedWeight,
  extraTemplate: Record<string, number | boolean>,
  config?: GemvConfig,
  outShapes?: number[][],
): KernelPlan {
  const n = q.weight.dim(0);
  const k = (q.weight.dim(1) * 32) / q.bits;
  const m = xShape.reduce((a, b) => a * b, 1) / k;
  if (xShape[xShape.length - 1] !== k)
    throw new Error(`${spec.name}: x has ${xShape.at(-1)} features, the weight ${k}`);
  const { rows, warps, poison, split = 1, loads = 8, mma = false, tiles = 1 } = config ?? gemvConfig(n, m, k);
  const maxRows = mma ? GEMV_MMA_MAX_ROWS : GEMV_MAX_ROWS;
  if (!Number.isInteger(m) || m < 1 || m > maxRows) throw new Error(`${spec.name}: ${m} rows (1..${maxRows})`);
  if (dtype !== q.scales.dtype) throw new Error(`${spec.name}: x must have the scales' dtype`);
  if (!q.biases) throw new Error(`${spec.name}: the weight has no biases`);
  if (n % rows !== 0) throw new Error(`${spec.name}: ${n} outputs is not a multiple of ${rows} rows per warp`);
  if (mma && (n % (16 * tiles) !== 0 || 16 % rows !== 0 || split > 1 || ![1, 2, 4].includes(tiles)))
    throw new Error(
      `${spec.name}: the tensor-core body takes ${tiles} tile(s) of 16 rows (${n}), ${rows} rows a virtual warp`,
    );
  if (split > 1 && warps % split !== 0) throw new Error(`${spec.name}: ${warps} warps is not row groups of ${split}`);
  const shapes = outShapes ?? [[...xShape.slice(0, -1), n]];
  const extraKey = Object.values(extraTemplate).join(",");
  const key = `${spec.name}|${xShape.join("x")}|${n}|${shapes.join(";")}|${dtype}|${q.groupSize}|${rows}|${warps}|${split}|${loads}|${mma ? tiles : 0}|${poison ? 1 : 0}|${extraKey}`;
  let plan = plans.get(key);
  if (!plan) {
    const kspec = mma ? mmaSpec(spec, tiles) : split > 1 ? splitSpec(spec) : spec;
    let kernel = kernels.get(kspec.name);
    if (!kernel) {
      kernel = new CustomKernel({ ...kspec, outputs: kspec.outputs ?? ["y"] });
      kernels.set(kspec.name, kernel);
    }
    const blocks = mma ? n / 16 / tiles : Math.ceil(n / rows / (warps / split));
    plan = kernel.plan({
      outputs: shapes.map((shape) => ({ shape, dtype })),
      grid: [blocks * warps * 32, 1, 1],
      threadgroup: [warps * 32, 1, 1],
      template: {
        T: { dtype },
        M: mma ? mmaBucket(m) : m,
        N: n,
        K: k,
        ROWS: rows,
        WARPS: warps,
        GROUP: q.groupSize,
        ...(split > 1 ? { SPLIT: split, LOADS: loads } : {}),
        ...extraTemplate,
      },
      initValue: poison ? Number.NaN : undefined,
    });
    plans.set(key, plan);
  }
  return plan;
}
