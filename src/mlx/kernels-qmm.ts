// A batched 4-bit matrix product on CUDA (W4A16) for 2..64 rows of x, as in
// batched decode: y[m, n] = sum_k x[m, k] * w[n, k], w in MLX's affine format
// (uint32 words of 8 nibbles, element k of a word at bits [4k, 4k+4); fp16 or
// bf16 scale and bias per group of 32/64/128: w = s*q + b). Each weight is read
// once from memory for all rows and dequantized once per block, and the rows go
// through tensor cores (mma.sync m16n8k16, float accumulation):
//
// - A warp owns 32 output features (two 16-row A tiles of the mma); rows of x
//   are the mma's N side, padded to MT (8, 16, 32 or 64: the only instantiations).
// - Block (blockIdx.x, blockIdx.y): WARPS*32 features, k-slice blockIdx.y of
//   gridDim.y (split-K). Its slice of x (MT rows) is staged once into shared
//   memory (cp.async, 16 bytes per copy) while the first weights are in flight.
// - Per 128 k (a "k-block"), lane (g = lane/4, t = lane%4) loads 16 bytes (32
//   consecutive k) of features g and g+8 of each A tile at k-offset 32*t: the
//   four lanes of a group read 64 contiguous bytes. The mma's k order is free
//   as long as A and B agree: logical k (2t, 2t+1 | 2t+8, 2t+9) of one mma are
//   the physical nibbles (0,4 | 1,5) or (2,6 | 3,7) of one word, which the
//   magic-number trick yields as pairs (q | 0x6400 is the half 1024+q; 0x4300
//   the bfloat16 128+q); x's pairs come from one 16-byte shared load by
//   __byte_perm. A weight becomes s*q + b in 16-bit, as MLX's dequantize does.
// - Split-K (gridDim.y > 1) adds float partial sums into a zeroed float32 output
//   (atomics); the host casts it. One k-slice writes T directly.
// x's rows (and the weight's) must start 16-byte aligned: K % 32 == 0 here (a
// partial last k-block reads zero weights against zero x).
import { Dtype, type MxArray } from "./array";
import { CustomKernel, type KernelPlan, kernelLanguage } from "./kernels";
import type { QuantizedWeight } from "./ops";
import * as ops from "./ops";

const HEADER = `
template <typename T> struct PvQ;
template <> struct PvQ<__half> {
  using T2 = __half2;
  static constexpr uint32_t MAGIC = 0x64006400u;  // 1024 in each half
  static constexpr uint32_t BASE = 0x64006400u;   // subtracted: leaves q
  static __device__ __forceinline__ T2 splat(__half v) { return __half2half2(v); }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef __CUDA_ARCH__
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    emu_mma_m16n8k16(d, a, b0, b1, false);
#endif
  }
};
template <> struct PvQ<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t MAGIC = 0x43004300u;  // 128 in each half
  static constexpr uint32_t BASE = 0x43004300u;
  static __device__ __forceinline__ T2 splat(__nv_bfloat16 v) { return __bfloat162bfloat162(v); }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef __CUDA_ARCH__
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    emu_mma_m16n8k16(d, a, b0, b1, true);
#endif
  }
};

template <typename T2>
__device__ __forceinline__ T2 pvq_bits(uint32_t u) {
  return *reinterpret_cast<const T2*>(&u);
}
template <typename T2>
__device__ __forceinline__ uint32_t pvq_word(T2 v) {
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Nibbles (shift/4, shift/4 + 4) of a word as the pair s*q + b.
template <typename T>
__device__ __forceinline__ uint32_t pvq_deq(uint32_t w, int shift, typename PvQ<T>::T2 s, typename PvQ<T>::T2 b) {
  using T2 = typename PvQ<T>::T2;
  const T2 q = __hsub2(pvq_bits<T2>(((w >> shift) & 0x000F000Fu) | PvQ<T>::MAGIC), pvq_bits<T2>(PvQ<T>::BASE));
  return pvq_word(__hfma2(q, s, b));
}

// 16 bytes of weights, read once: no L1 allocation.
__device__ __forceinline__ uint4 pvq_load_stream(const uint4* p) {
#ifdef __CUDA_ARCH__
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
#else
  return *p;
#endif
}

// 16 bytes global -> shared without registers (sm_80+), then wait for all.
__device__ __forceinline__ void pvq_copy16(uint4* dst, const uint4* src) {
#ifdef __CUDA_ARCH__
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src));
#else
  *dst = *src;
#endif
}
__device__ __forceinline__ void pvq_copy_wait() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.commit_group;\\ncp.async.wait_group 0;" ::: "memory");
#endif
}

__device__ __forceinline__ void pvq_out(float* y, size_t i, float v) { atomicAdd(y + i, v); }
__device__ __forceinline__ void pvq_out(__half* y, size_t i, float v) { y[i] = __float2half(v); }
__device__ __forceinline__ void pvq_out(__nv_bfloat16* y, size_t i, float v) { y[i] = __float2bfloat16(v); }

// Where x[r][8*c .. 8*c+8) of the staged slice sits (uint4 units): chunk-major,
// rows within a chunk XOR-swizzled so that a warp's fragment loads hit distinct banks.
__device__ __forceinline__ int pvq_slot(int r, int c, int mt) {
  return c * mt + (r ^ (((c >> 2) & 3) << 1));
}
`;

// Template constants: T (x/scales type), MT (rows of x, padded: 8/16/32/64),
// WARPS (per block; 32 features each), GROUP, F32_OUT (the output is float32:
// split-K partial sums; also keeps the two output types' kernels apart in
// MLX's cache, which is keyed by name and template arguments only).
const SOURCE = `
  using Q = PvQ<T>;
  using T2 = typename Q::T2;
  (void)F32_OUT;
  constexpr int NT = MT / 8;  // mma column tiles
  const int M = [&] { int m = 1; for (int i = 0; i + 1 < x_ndim; ++i) m *= x_shape[i]; return m; }();
  const int N = w_shape[0];
  const int K = w_shape[1] * 8;
  const int KB = (K + 127) / 128;               // k-blocks of the whole row (the last may be partial)
  const int per = (KB + gridDim.y - 1) / gridDim.y;
  const int kb0 = blockIdx.y * per;
  const int kb1 = min(KB, kb0 + per);
  if (kb0 >= kb1) return;                       // the whole block: no barrier is reached
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int f0 = (blockIdx.x * WARPS + warp) * 32;
  const bool active = f0 < N;
  const int groups = K / GROUP;
  const uint4* wq = reinterpret_cast<const uint4*>(w);

  // Weights of k-block kb: [A tile][feature g | g+8], with their scale and bias pairs.
  uint4 wcur[2][2], wnxt[2][2];
  T2 scur[2][2], bcur[2][2], snxt[2][2], bnxt[2][2];
  auto load = [&](int kb, uint4 (&wv)[2][2], T2 (&sv)[2][2], T2 (&bv)[2][2]) {
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const size_t f = (size_t)(f0 + a * 16 + h * 8 + g);
        if (kb * 128 + t * 32 < K) {
          wv[a][h] = pvq_load_stream(wq + f * (K / 32) + kb * 4 + t);
          const size_t gi = f * groups + (kb * 128 + t * 32) / GROUP;
          sv[a][h] = Q::splat(scales[gi]);
          bv[a][h] = Q::splat(biases[gi]);
        } else {  // past K in a partial last k-block: weights 0 (and x 0 in shared memory)
          wv[a][h] = make_uint4(0u, 0u, 0u, 0u);
          sv[a][h] = pvq_bits<T2>(0u);
          bv[a][h] = pvq_bits<T2>(0u);
        }
      }
  };
  if (active) load(kb0, wcur, scur, bcur);

  // Stage x[:, kb0*128 .. kb1*128) (rows < M) into shared memory.
#ifdef __CUDA_ARCH__
  extern __shared__ uint4 pvq_xs[];
#else
  uint4* pvq_xs = emu_dynamic_shared<uint4>();
#endif
  {
    const int chunks = (kb1 - kb0) * 16;                // 16-byte chunks per row
    const int valid = min(chunks, K / 8 - kb0 * 16);    // those inside K
    const uint4* xg = reinterpret_cast<const uint4*>(x);
    for (int i = threadIdx.x; i < M * chunks; i += WARPS * 32) {
      const int r = i / chunks;
      const int c = i - r * chunks;
      if (c < valid) pvq_copy16(pvq_xs + pvq_slot(r, c, MT), xg + (size_t)r * (K / 8) + kb0 * 16 + c);
      else pvq_xs[pvq_slot(r, c, MT)] = make_uint4(0u, 0u, 0u, 0u);
    }
    pvq_copy_wait();
    __syncthreads();
  }
  if (!active) return;

  float acc[2][NT][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[a][n][i] = 0.f;

  for (int kb = kb0; kb < kb1; ++kb) {
    if (kb + 1 < kb1) load(kb + 1, wnxt, snxt, bnxt);
    const int cbase = (kb - kb0) * 16 + t * 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      // x pairs (0,4) (1,5) | (2,6) (3,7) of chunk cbase + j, for each column tile.
      uint32_t bx[NT][4];
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const uint4 v = pvq_xs[pvq_slot(n * 8 + g, cbase + j, MT)];
        bx[n][0] = __byte_perm(v.x, v.z, 0x5410);
        bx[n][1] = __byte_perm(v.x, v.z, 0x7632);
        bx[n][2] = __byte_perm(v.y, v.w, 0x5410);
        bx[n][3] = __byte_perm(v.y, v.w, 0x7632);
      }
#pragma unroll
      for (int a = 0; a < 2; ++a) {
        const uint32_t w0 = j == 0 ? wcur[a][0].x : j == 1 ? wcur[a][0].y : j == 2 ? wcur[a][0].z : wcur[a][0].w;
        const uint32_t w1 = j == 0 ? wcur[a][1].x : j == 1 ? wcur[a][1].y : j == 2 ? wcur[a][1].z : wcur[a][1].w;
        const uint32_t lo[4] = {pvq_deq<T>(w0, 0, scur[a][0], bcur[a][0]), pvq_deq<T>(w1, 0, scur[a][1], bcur[a][1]),
                                pvq_deq<T>(w0, 4, scur[a][0], bcur[a][0]), pvq_deq<T>(w1, 4, scur[a][1], bcur[a][1])};
        const uint32_t hi[4] = {pvq_deq<T>(w0, 8, scur[a][0], bcur[a][0]), pvq_deq<T>(w1, 8, scur[a][1], bcur[a][1]),
                                pvq_deq<T>(w0, 12, scur[a][0], bcur[a][0]), pvq_deq<T>(w1, 12, scur[a][1], bcur[a][1])};
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          Q::mma(acc[a][n], lo, bx[n][0], bx[n][1]);
          Q::mma(acc[a][n], hi, bx[n][2], bx[n][3]);
        }
      }
    }
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        wcur[a][h] = wnxt[a][h];
        scur[a][h] = snxt[a][h];
        bcur[a][h] = bnxt[a][h];
      }
  }

  // acc[a][n]: features f0 + 16a + g (+8 for [2], [3]), rows 8n + 2t (+1 for [1], [3]).
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int r = n * 8 + 2 * t;
      const size_t f = (size_t)(f0 + a * 16 + g);
      if (r < M) {
        pvq_out(y, (size_t)r * N + f, acc[a][n][0]);
        pvq_out(y, (size_t)r * N + f + 8, acc[a][n][2]);
      }
      if (r + 1 < M) {
        pvq_out(y, (size_t)(r + 1) * N + f, acc[a][n][1]);
        pvq_out(y, (size_t)(r + 1) * N + f + 8, acc[a][n][3]);
      }
    }
`;

/** The sources as MLX compiles them (tests compile and emulate them elsewhere). */
export const QMM_KERNEL = {
  name: "pv_qmm_w4",
  header: HEADER,
  source: SOURCE,
  inputs: ["x", "w", "scales", "biases"],
};

/** Rows of x one launch takes. */
export const QMM_MIN_ROWS = 2;
export const QMM_MAX_ROWS = 64;
/** Row paddings compiled (each is one NVRTC instantiation per dtype and group). */
export const QMM_ROW_TILES = [8, 16, 32, 64] as const;
/** Shared memory for x per block, by row tile: at most 48 KB below 32 rows (occupancy), 96 KB above. */
const SHARED_BYTES: Record<number, number> = { 8: 49152, 16: 49152, 32: 98304, 64: 98304 };

export interface QmmConfig {
  /** Rows of x padded: 8, 16, 32 or 64. */
  rowTile: number;
  /** Warps per block (32 output features each). */
  warps: number;
  /** k-slices (split-K): > 1 adds float partial sums, then casts. */
  splits: number;
  /** Fill the output with NaN first (tests: every element must be written; one slice only). */
  poison?: boolean;
}

/** The longest k-slice (in k) a block stages for this row tile. */
export function qmmMaxSlice(rowTile: number): number {
  return (SHARED_BYTES[rowTile] as number) / (rowTile * 2);
}

/** Streaming multiprocessors to fill (H100 SXM and H200: 132). */
const SMS = 132;

/**
 * Rows padded to the next tile; 8 warps (256 features) per block from 32 rows
 * (x is read from L2 once per block: fewer, wider blocks read it less), else 4;
 * k-slices as the shared memory needs, and more until the blocks fill the SMs.
 */
export function qmmConfig(n: number, k: number, m: number): QmmConfig {
  const rowTile = QMM_ROW_TILES.find((r) => r >= m) ?? 64;
  const warps = rowTile >= 32 ? 8 : 4;
  const tiles = Math.ceil(n / (warps * 32));
  const kBlocks = Math.ceil(k / 128);
  let splits = Math.ceil(k / qmmMaxSlice(rowTile));
  while (tiles * splits < SMS && splits * 2 <= kBlocks) splits *= 2;
  return { rowTile, warps, splits: Math.min(splits, kBlocks) };
}

/** Whether the kernel handles this weight: CUDA, 4 bits, affine with biases, fp16/bf16, K % 32, N % 32. */
export function qmmSupports(q: QuantizedWeight): boolean {
  const n = q.weight.dim(0);
  const k = (q.weight.dim(1) * 32) / q.bits;
  return (
    q.bits === 4 &&
    [32, 64, 128].includes(q.groupSize) &&
    q.biases !== null &&
    (q.scales.dtype === Dtype.float16 || q.scales.dtype === Dtype.bfloat16) &&
    q.biases.dtype === q.scales.dtype &&
    k % 32 === 0 &&
    n % 32 === 0 &&
    kernelLanguage() === "cuda"
  );
}

const kernels = new Map<number, CustomKernel>();
/** Launch plans by shape and configuration: batched decode repeats the same launches. */
const plans = new Map<string, KernelPlan>();

function kernelFor(rowTile: number): CustomKernel {
  let k = kernels.get(rowTile);
  if (!k) {
    k = new CustomKernel({ ...QMM_KERNEL, outputs: ["y"], sharedMemory: SHARED_BYTES[rowTile] });
    kernels.set(rowTile, k);
  }
  return k;
}

/** x [..., K] @ dequantize(q).T for QMM_MIN_ROWS..QMM_MAX_ROWS rows of x (x in the scales' dtype). */
export function quantizedMatmulBatched(x: MxArray, q: QuantizedWeight, config?: QmmConfig): MxArray {
  const n = q.weight.dim(0);
  const k = (q.weight.dim(1) * 32) / q.bits;
  const m = x.size / k;
  if (x.dim(-1) !== k) throw new Error(`pv_qmm_w4: x has ${x.dim(-1)} features, the weight ${k}`);
  if (!Number.isInteger(m) || m < 1 || m > QMM_MAX_ROWS) throw new Error(`pv_qmm_w4: ${m} rows (1..${QMM_MAX_ROWS})`);
  if (x.dtype !== q.scales.dtype) throw new Error("pv_qmm_w4: x must have the scales' dtype");
  if (!q.biases) throw new Error("pv_qmm_w4: the weight has no biases");
  const c = config ?? qmmConfig(n, k, m);
  if (c.rowTile < m || !QMM_ROW_TILES.includes(c.rowTile as 8)) throw new Error(`pv_qmm_w4: row tile ${c.rowTile}`);
  if (Math.ceil(Math.ceil(k / 128) / c.splits) * 128 > qmmMaxSlice(c.rowTile)) {
    throw new Error(`pv_qmm_w4: a k-slice of ${k}/${c.splits} does not fit shared memory at ${c.rowTile} rows`);
  }
  const split = c.splits > 1;
  const key = `${x.shape.join("x")}|${n}|${x.dtype}|${q.groupSize}|${c.rowTile}|${c.warps}|${c.splits}|${c.poison ? 1 : 0}`;
  let plan = plans.get(key);
  if (!plan) {
    const blocks = Math.ceil(n / (c.warps * 32));
    plan = kernelFor(c.rowTile).plan({
      outputs: [{ shape: [...x.shape.slice(0, -1), n], dtype: split ? Dtype.float32 : x.dtype }],
      grid: [blocks * c.warps * 32, c.splits, 1],
      threadgroup: [c.warps * 32, 1, 1],
      template: { T: { dtype: x.dtype }, MT: c.rowTile, WARPS: c.warps, GROUP: q.groupSize, F32_OUT: split },
      initValue: split ? 0 : c.poison ? Number.NaN : undefined,
    });
    plans.set(key, plan);
  }
  const y = plan.run([x, q.weight, q.scales, q.biases])[0] as MxArray;
  if (!split) return y;
  const cast = ops.astype(y, x.dtype);
  y.dispose();
  return cast;
}
