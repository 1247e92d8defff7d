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
// Over 400 lines: the kernel source (with its tile and split-K variants) and the plan choosing them.
import { Dtype, type MxArray } from "./array";
import { CustomKernel, type KernelPlan, kernelLanguage } from "./kernels";
import { MMA_M16N8K16 } from "./kernels-gemv-mma";
import type { QuantizedWeight } from "./ops";
import * as ops from "./ops";

const HEADER = `${MMA_M16N8K16}
template <typename T> struct PvQ;
template <> struct PvQ<__half> {
  using T2 = __half2;
  static constexpr uint32_t MAGIC = 0x64006400u;  // 1024 in each half
  static constexpr uint32_t BASE = 0x64006400u;   // subtracted: leaves q
  static __device__ __forceinline__ T2 splat(__half v) { return __half2half2(v); }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    pv_mma<__half>(d, a, b0, b1);
  }
};
template <> struct PvQ<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t MAGIC = 0x43004300u;  // 128 in each half
  static constexpr uint32_t BASE = 0x43004300u;
  static __device__ __forceinline__ T2 splat(__nv_bfloat16 v) { return __bfloat162bfloat162(v); }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    pv_mma<__nv_bfloat16>(d, a, b0, b1);
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
__device__ __forceinline__ void pvq_copy_commit() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Waits until at most pending (0..3) of this thread's committed groups are still in flight.
__device__ __forceinline__ void pvq_copy_wait(int pending) {
#ifdef __CUDA_ARCH__
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
  }
#else
  (void)pending;
#endif
}

// 4 consecutive outputs from i (i % 4 == 0): float partial sums are added (split-K), 16-bit ones written.
__device__ __forceinline__ void pvq_out4(float* y, size_t i, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(y + i), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
#else  // one reduction per element before sm_90 (and in the CPU emulation)
  atomicAdd(y + i, v.x);
  atomicAdd(y + i + 1, v.y);
  atomicAdd(y + i + 2, v.z);
  atomicAdd(y + i + 3, v.w);
#endif
}
__device__ __forceinline__ void pvq_store4(__half* y, size_t i, float4 v);
__device__ __forceinline__ void pvq_store4(__nv_bfloat16* y, size_t i, float4 v);
__device__ __forceinline__ void pvq_out4(__half* y, size_t i, float4 v) { pvq_store4(y, i, v); }
__device__ __forceinline__ void pvq_out4(__nv_bfloat16* y, size_t i, float4 v) { pvq_store4(y, i, v); }

// A thread block cluster's barrier and another block's shared memory (distributed shared memory, sm_90).
__device__ __forceinline__ void pvq_cluster_sync() {
#ifdef __CUDA_ARCH__
  cooperative_groups::this_cluster().sync();
#else
  emu_cluster_sync();
#endif
}
template <typename P>
__device__ __forceinline__ P* pvq_cluster_map(P* p, int rank) {
#ifdef __CUDA_ARCH__
  return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
  return emu_cluster_map(p, rank);
#endif
}
__device__ __forceinline__ void pvq_store4(float* y, size_t i, float4 v) { *reinterpret_cast<float4*>(y + i) = v; }
__device__ __forceinline__ void pvq_store4(__half* y, size_t i, float4 v) {
  uint2 u;
  u.x = pvq_word(__floats2half2_rn(v.x, v.y));
  u.y = pvq_word(__floats2half2_rn(v.z, v.w));
  *reinterpret_cast<uint2*>(y + i) = u;
}
__device__ __forceinline__ void pvq_store4(__nv_bfloat16* y, size_t i, float4 v) {
  uint2 u;
  u.x = pvq_word(__floats2bfloat162_rn(v.x, v.y));
  u.y = pvq_word(__floats2bfloat162_rn(v.z, v.w));
  *reinterpret_cast<uint2*>(y + i) = u;
}

// Where x[r][8*c .. 8*c+8) of the staged slice sits (uint4 units): chunk-major,
// rows within a chunk XOR-swizzled so that a warp's fragment loads hit distinct banks.
__device__ __forceinline__ int pvq_slot(int r, int c, int mt) {
  return c * mt + (r ^ (((c >> 2) & 3) << 1));
}
`;

// Template constants: T (x/scales type), MT (rows of x, padded: 8/16/32/64),
// WARPS (per block; 32 features each), GROUP, F32_OUT (the output is float32:
// split-K partial sums by atomics), CLUSTER (k-slices summed in a thread block
// cluster of this size, 0: none), XBYTES (shared memory for the staged x).
// F32_OUT and CLUSTER also keep kernels whose signature or header differ apart
// in MLX's cache, which is keyed by name and template arguments only.
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
  if (kb0 >= kb1) return;  // the whole block: no barrier is reached (the host keeps every slice of a cluster non-empty)
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int groups = K / GROUP;
  const uint4* wq = reinterpret_cast<const uint4*>(w);
  // Feature tiles of WARPS*32: this block takes tiles blockIdx.x, + gridDim.x, ... over one staged x.
  const int tiles = (N + WARPS * 32 - 1) / (WARPS * 32);
  const int nkb = kb1 - kb0;
  const int steps = (tiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x * nkb;
  auto first_feature = [&](int tile) { return (tile * WARPS + warp) * 32; };

  // Weights of k-block kb of the warp's 32 features from f0: [A tile][feature g | g+8], with scale and bias
  // pairs, PF k-blocks ahead of the one in use (wv[0]): a ring shifted by one each step.
  constexpr int PF = MT >= 32 ? 2 : 3;
  uint4 wv[PF + 1][2][2];
  T2 sv[PF + 1][2][2], bv[PF + 1][2][2];
  auto load = [&](int f0, int kb, uint4 (&ow)[2][2], T2 (&os)[2][2], T2 (&ob)[2][2]) {
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const size_t f = (size_t)(f0 + a * 16 + h * 8 + g);
        if (kb * 128 + t * 32 < K) {
          ow[a][h] = pvq_load_stream(wq + f * (K / 32) + kb * 4 + t);
          const size_t gi = f * groups + (kb * 128 + t * 32) / GROUP;
          os[a][h] = Q::splat(scales[gi]);
          ob[a][h] = Q::splat(biases[gi]);
        } else {  // past K in a partial last k-block: weights 0 (and x 0 in shared memory)
          ow[a][h] = make_uint4(0u, 0u, 0u, 0u);
          os[a][h] = pvq_bits<T2>(0u);
          ob[a][h] = pvq_bits<T2>(0u);
        }
      }
  };
  // The load cursor (tile, k-block), PF steps ahead of the compute cursor.
  int ltile = blockIdx.x, lkb = kb0;
  auto advance = [&](int& tl, int& k) {
    if (++k == kb1) {
      k = kb0;
      tl += gridDim.x;
    }
  };
#pragma unroll
  for (int d = 0; d < PF; ++d) {
    if (d < steps && first_feature(ltile) < N) load(first_feature(ltile), lkb, wv[d], sv[d], bv[d]);
    advance(ltile, lkb);
  }

  // Stage x[:, kb0*128 .. kb1*128) (rows < M) into shared memory, in up to 4 parts by k-block (cp.async
  // groups): the first tile's steps wait only for the part they read, so staging overlaps the weights' stream.
#ifdef __CUDA_ARCH__
  extern __shared__ uint4 pvq_xs[];
#else
  uint4* pvq_xs = emu_dynamic_shared<uint4>();
#endif
  // Cluster split-K: the block's partial tile [M rows][WARPS*32 features] (float) after the staged x.
  float* pvq_red = reinterpret_cast<float*>(pvq_xs + XBYTES / 16);
  (void)pvq_red;
  const int parts = min(4, nkb);
  auto part_start = [&](int p) { return kb0 + (p * nkb) / parts; };  // first k-block of part p
  {
    const int chunks = nkb * 16;                        // 16-byte chunks per row
    const int valid = min(chunks, K / 8 - kb0 * 16);    // those inside K
    const uint4* xg = reinterpret_cast<const uint4*>(x);
    for (int p = 0; p < parts; ++p) {
      const int c0 = (part_start(p) - kb0) * 16;
      const int width = (part_start(p + 1) - kb0) * 16 - c0;
      for (int i = threadIdx.x; i < M * width; i += WARPS * 32) {
        const int r = i / width;
        const int c = c0 + (i - r * width);
        if (c < valid) pvq_copy16(pvq_xs + pvq_slot(r, c, MT), xg + (size_t)r * (K / 8) + kb0 * 16 + c);
        else pvq_xs[pvq_slot(r, c, MT)] = make_uint4(0u, 0u, 0u, 0u);
      }
      pvq_copy_commit();
    }
  }
  // Barriers below only in the first tile's pass, reached by every thread; warps past N skip their work.

  float acc[2][NT][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[a][n][i] = 0.f;

  int tile = blockIdx.x, kb = kb0;
  int part = 0;
  for (int step = 0; step < steps; ++step) {
    if (step < nkb && part < parts && kb == part_start(part)) {
      pvq_copy_wait(parts - 1 - part);  // this thread's copies of parts 0..part have landed
      __syncthreads();                  // and everyone's
      ++part;
    }
    const int f0 = first_feature(tile);
    if (step + PF < steps && first_feature(ltile) < N) load(first_feature(ltile), lkb, wv[PF], sv[PF], bv[PF]);
    advance(ltile, lkb);
    if (f0 < N) {
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
          const uint4& c0 = wv[0][a][0];
          const uint4& c1 = wv[0][a][1];
          const uint32_t w0 = j == 0 ? c0.x : j == 1 ? c0.y : j == 2 ? c0.z : c0.w;
          const uint32_t w1 = j == 0 ? c1.x : j == 1 ? c1.y : j == 2 ? c1.z : c1.w;
          const T2 s0 = sv[0][a][0], s1 = sv[0][a][1], b0 = bv[0][a][0], b1 = bv[0][a][1];
          const uint32_t lo[4] = {pvq_deq<T>(w0, 0, s0, b0), pvq_deq<T>(w1, 0, s1, b1), pvq_deq<T>(w0, 4, s0, b0),
                                  pvq_deq<T>(w1, 4, s1, b1)};
          const uint32_t hi[4] = {pvq_deq<T>(w0, 8, s0, b0), pvq_deq<T>(w1, 8, s1, b1), pvq_deq<T>(w0, 12, s0, b0),
                                  pvq_deq<T>(w1, 12, s1, b1)};
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            Q::mma(acc[a][n], lo, bx[n][0], bx[n][1]);
            Q::mma(acc[a][n], hi, bx[n][2], bx[n][3]);
          }
        }
      }
    }
    if (kb + 1 == kb1) {
      // The tile's sums. acc[a][n]: features f0 + 16a + g (+8 for [2], [3]), rows 8n + 2t (+1 for [1], [3]).
      // Two exchanges give each lane 4 consecutive features of one row (one 16- or 8-byte write): lanes g, g^1
      // swap rows, then g, g^2 swap the +8 halves. The lane's row is 8n + 2t + (g & 1), its features
      // f0 + 16a + (g & 4) + ((g & 2) ? 8 : 0) + 0..3.
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          const bool odd = g & 1;
          const float p0 = __shfl_xor_sync(0xffffffffu, odd ? acc[a][n][0] : acc[a][n][1], 4);
          const float p1 = __shfl_xor_sync(0xffffffffu, odd ? acc[a][n][2] : acc[a][n][3], 4);
          // Row 8n + 2t + odd: features (g & ~1) + 0..1 in lo, (g & ~1) + 8 + 0..1 in hi.
          const float lo0 = odd ? p0 : acc[a][n][0], lo1 = odd ? acc[a][n][1] : p0;
          const float hi0 = odd ? p1 : acc[a][n][2], hi1 = odd ? acc[a][n][3] : p1;
          const bool upper = g & 2;
          const float q0 = __shfl_xor_sync(0xffffffffu, upper ? lo0 : hi0, 8);
          const float q1 = __shfl_xor_sync(0xffffffffu, upper ? lo1 : hi1, 8);
          // Lower lanes: own lo (features +0..1), partner's lo (+2..3). Upper: partner's hi (+8..9), own hi (+10..11).
          const float4 v = upper ? make_float4(q0, q1, hi0, hi1) : make_float4(lo0, lo1, q0, q1);
          const int r = n * 8 + 2 * t + (odd ? 1 : 0);
          const int fl = warp * 32 + a * 16 + (g & 4) + (upper ? 8 : 0);  // feature within the tile
          if (CLUSTER > 1) {
            if (r < M) reinterpret_cast<float4*>(pvq_red)[(r * WARPS * 32 + fl) / 4] = v;
          } else if (f0 < N && r < M) {
            pvq_out4(y, (size_t)r * N + f0 - warp * 32 + fl, v);
          }
          acc[a][n][0] = acc[a][n][1] = acc[a][n][2] = acc[a][n][3] = 0.f;
        }
      if (CLUSTER > 1) {
        // Split-K inside a thread block cluster: the k-slices' blocks sum their partial tiles through
        // distributed shared memory, each block a share of the tile, and write T (no float output, no atomics).
        pvq_cluster_sync();
        const int quads = M * WARPS * 8;  // float4s of the tile's rows < M
        const int tile0 = tile * WARPS * 32;
        for (int i = threadIdx.x + blockIdx.y * WARPS * 32; i < quads; i += CLUSTER * WARPS * 32) {
          const int r = i / (WARPS * 8);
          const int fl = (i - r * (WARPS * 8)) * 4;
          if (tile0 + fl >= N) continue;
          float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
          for (int q = 0; q < CLUSTER; ++q) {
            const float4 p = pvq_cluster_map(reinterpret_cast<float4*>(pvq_red), q)[i];
            sum.x += p.x;
            sum.y += p.y;
            sum.z += p.z;
            sum.w += p.w;
          }
          pvq_store4(y, (size_t)r * N + tile0 + fl, sum);
        }
        pvq_cluster_sync();  // every block's share read before the buffers are written again (or the blocks exit)
      }
    }
#pragma unroll
    for (int d = 0; d < PF; ++d)
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          wv[d][a][h] = wv[d + 1][a][h];
          sv[d][a][h] = sv[d + 1][a][h];
          bv[d][a][h] = bv[d + 1][a][h];
        }
    advance(tile, kb);
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
/** Shared memory for x per block, by row tile: 48 KB below 32 rows (occupancy), 96 KB at 32, 128 KB at 64 (K 8192 in 8 slices). */
const SHARED_BYTES: Record<number, number> = { 8: 49152, 16: 49152, 32: 98304, 64: 131072 };

export interface QmmConfig {
  /** Rows of x padded: 8, 16, 32 or 64. */
  rowTile: number;
  /** Warps per block (32 output features each). */
  warps: number;
  /** k-slices (split-K), summed in a cluster or by float atomics (see cluster). */
  splits: number;
  /** Blocks along the features (default: one per tile of warps*32); fewer take several tiles each over one staged x. */
  blocks?: number;
  /**
   * With k-slices: sum them inside a thread block cluster (one per feature block, its k-slices as its blocks;
   * at most QMM_MAX_CLUSTER) through distributed shared memory and write the 16-bit output directly, rather
   * than float atomics into a float32 output and a cast (two more MLX primitives per product). Default: on
   * when the slices fit a cluster, unless PENSIEVE_GPU_QMM_CLUSTER=0.
   */
  cluster?: boolean;
  /** Fill the output with NaN first (tests: every element must be written; not with float atomics). */
  poison?: boolean;
}

/** The most k-slices one cluster holds (the portable cluster size). */
export const QMM_MAX_CLUSTER = 8;
const clusterDefault = process.env.PENSIEVE_GPU_QMM_CLUSTER !== "0";

/** Bytes of shared memory a block needs: the staged x, and with a cluster the partial tile (8 warps' worth). */
function sharedBytes(rowTile: number, cluster: number): number {
  return (SHARED_BYTES[rowTile] as number) + (cluster > 1 ? rowTile * 256 * 4 : 0);
}

/** The longest k-slice (in k) a block stages for this row tile. */
export function qmmMaxSlice(rowTile: number): number {
  return (SHARED_BYTES[rowTile] as number) / (rowTile * 2);
}

/** Streaming multiprocessors (H100 SXM and H200: 132). */
const SMS = 132;
/** Registers per thread by row tile, as ptxas allocates them for sm_90a (bench/gpu/nvrtc-check.ts). */
const REGISTERS: Record<number, number> = { 8: 160, 16: 160, 32: 168, 64: 216 };
/** Weight k-blocks each thread has in flight (PF in the source). */
const prefetch = (rowTile: number) => (rowTile >= 32 ? 2 : 3);

/** Blocks of this shape one SM holds at once (registers and shared memory). */
function residentBlocks(rowTile: number, warps: number): number {
  const byRegisters = Math.floor(65536 / ((REGISTERS[rowTile] as number) * warps * 32));
  const byShared = Math.floor((228 * 1024) / (sharedBytes(rowTile, QMM_MAX_CLUSTER) + 1024));
  return Math.max(1, Math.min(byRegisters, byShared, 32 / warps));
}

/**
 * Rows padded to the next tile; 8 warps (256 features) per block from 32 rows
 * (x is read from L2 once per block: wider blocks read it less), else 4. Then
 * k-slices and tiles per block by a small model of the time: an SM's rate is
 * its fair share of bandwidth when ~20 KB of weights are in flight on it (up to
 * 1.5 times that; a guess until measured), and time is the larger of the busiest SM's bytes at its rate and
 * all bytes at the full bandwidth; a block's bytes are its weights (with
 * scales), its staged x, and its float partial sums when split. This captures
 * wave quantization (blocks that do not divide evenly over 132 SMs), latency
 * hiding (too few blocks per SM) and what split-K and narrow blocks cost;
 * bench/gpu/qmm.ts sweeps around it.
 */
export function qmmConfig(n: number, k: number, m: number): QmmConfig {
  const rowTile = QMM_ROW_TILES.find((r) => r >= m) ?? 64;
  const warps = rowTile >= 32 ? 8 : 4;
  return { rowTile, warps, ...qmmGrid(n, k, m, rowTile, warps) };
}

/** k-slices and feature blocks for a row tile and warps per block (see qmmConfig). */
export function qmmGrid(n: number, k: number, m: number, rowTile: number, warps: number) {
  const features = warps * 32;
  const tiles = Math.ceil(n / features);
  const kBlocks = Math.ceil(k / 128);
  const maxPer = Math.floor(qmmMaxSlice(rowTile) / 128);
  const resident = residentBlocks(rowTile, warps);
  const inFlightPerBlock = features * prefetch(rowTile) * 64;
  let best = { time: Number.POSITIVE_INFINITY, splits: 1, blocks: tiles };
  // k-slices summed in a cluster when they fit one (float atomics and a cast otherwise: two more primitives).
  const maxSplits = clusterDefault && Math.ceil(kBlocks / maxPer) <= QMM_MAX_CLUSTER ? QMM_MAX_CLUSTER : kBlocks;
  for (let per = Math.min(maxPer, kBlocks); per >= 1; per--) {
    const splits = Math.ceil(kBlocks / per);
    if (Math.ceil(kBlocks / splits) !== per) continue; // the same slices as a larger `per`
    if (splits > maxSplits) break;
    if (splits & (splits - 1)) continue; // 1, 2, 4, 8: fewer cluster sizes to compile
    for (let perBlock = 1; perBlock <= 4; perBlock++) {
      const blocks = Math.ceil(tiles / perBlock);
      if (Math.ceil(tiles / blocks) !== perBlock) continue;
      const units = blocks * splits;
      const bytes =
        perBlock * per * 128 * features * (0.5 + 4 / 64) +
        rowTile * per * 128 * 2 +
        (splits > 1 ? perBlock * m * features * 4 : 0);
      const assigned = Math.ceil(units / SMS);
      const rate = Math.min(1.5, (Math.min(assigned, resident) * inFlightPerBlock) / 20480);
      const time = Math.max((assigned * bytes) / rate, (units * bytes) / SMS);
      if (time < best.time * 0.99) best = { time, splits, blocks };
    }
  }
  return { splits: best.splits, blocks: best.blocks };
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

/**
 * The header for a cluster size (0: none). MLX writes the kernel's signature after the header, so a
 * redefined __global__ carries the cluster's shape (__cluster_dims__) onto it.
 */
export function qmmHeader(cluster: number): string {
  return cluster > 1
    ? `${HEADER}\n#undef __global__\n#define __global__ __location__(global) __cluster_dims__(1, ${cluster}, 1)\n`
    : HEADER;
}

/** The kernel for a row tile; with a cluster of k-slices its size is compiled in. */
function kernelFor(rowTile: number, cluster: number): CustomKernel {
  const key = rowTile * 100 + cluster;
  let k = kernels.get(key);
  if (!k) {
    k = new CustomKernel({
      ...QMM_KERNEL,
      header: qmmHeader(cluster),
      outputs: ["y"],
      sharedMemory: sharedBytes(rowTile, cluster),
    });
    kernels.set(key, k);
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
  const kBlocks = Math.ceil(k / 128);
  const per = Math.ceil(kBlocks / c.splits);
  if (per * 128 > qmmMaxSlice(c.rowTile)) {
    throw new Error(`pv_qmm_w4: a k-slice of ${k}/${c.splits} does not fit shared memory at ${c.rowTile} rows`);
  }
  // A cluster's blocks must all have k-blocks (an empty slice would leave the others waiting).
  const cluster =
    c.splits > 1 &&
    (c.cluster ?? clusterDefault) &&
    c.splits <= QMM_MAX_CLUSTER &&
    Math.ceil(kBlocks / per) === c.splits
      ? c.splits
      : 0;
  const atomics = c.splits > 1 && cluster === 0;
  const tiles = Math.ceil(n / (c.warps * 32));
  const blocks = Math.min(tiles, c.blocks ?? tiles);
  const key = `${x.shape.join("x")}|${n}|${x.dtype}|${q.groupSize}|${c.rowTile}|${c.warps}|${c.splits}|${blocks}|${cluster}|${c.poison ? 1 : 0}`;
  let plan = plans.get(key);
  if (!plan) {
    plan = kernelFor(c.rowTile, cluster).plan({
      outputs: [{ shape: [...x.shape.slice(0, -1), n], dtype: atomics ? Dtype.float32 : x.dtype }],
      grid: [blocks * c.warps * 32, c.splits, 1],
      threadgroup: [c.warps * 32, 1, 1],
      template: {
        T: { dtype: x.dtype },
        MT: c.rowTile,
        WARPS: c.warps,
        GROUP: q.groupSize,
        F32_OUT: atomics,
        CLUSTER: cluster,
        XBYTES: SHARED_BYTES[c.rowTile] as number,
      },
      initValue: atomics ? 0 : c.poison ? Number.NaN : undefined,
    });
    plans.set(key, plan);
  }
  const y = plan.run([x, q.weight, q.scales, q.biases])[0] as MxArray;
  if (!atomics) return y;
  const cast = ops.astype(y, x.dtype);
  y.dispose();
  return cast;
}
