// The 4-bit GEMV family (kernels-gemv.ts) through tensor cores, for 1..32 rows of x: decode,
// a speculative verify pass (1 + drafts rows) or a batch of decode rows. The scalar
// kernel's work grows with the rows of x (each row of x re-runs the 16-bit products:
// ~75 SASS instructions per row of x, output row and 16-byte chunk at 8 rows, so a
// verify pass of 8 drafts was ALU-bound at 2.2x a one-token step on an H100); here a
// weight is dequantized once (s*q + b in 16 bits, as MLX's dequantize) and every row
// of x takes it through mma.sync m16n8k16 with float accumulation.
//
// - A block owns TILES tiles of 16 output rows (1 by default; PENSIEVE_GEMV_MMA_TILES=2 or 4: each
//   x pair a lane unpacks then serves 2-4 tiles' weights); its WARPS warps split the row's K in
//   k-blocks of 128 (warp i takes k-blocks i, i + WARPS, ...), U k-blocks in flight (4 / TILES).
//   Each row sums in the same order at any TILES (the k-blocks of a warp, then the warps in order).
// - Lane (g = lane/4, t = lane%4) loads 16 bytes (32 consecutive k) of tile rows g and
//   g + 8 at k-offset 32 t of a k-block; the mma's k order is free as long as A and B
//   agree: logical k (2t, 2t+1 | 2t+8, 2t+9) are the nibbles (0,4 | 1,5) or (2,6 | 3,7)
//   of one word, which the magic-number trick yields as pairs (kernels-qmm.ts, same layout).
// - x's rows are the mma's N side (NT tiles of 8); lane g of column tile n reads row
//   n*8 + g through the variant's XLOAD (RMSNorm applied there as in the scalar kernel).
// - The variant hooks are the scalar kernel's: the tile's 16 rows are 16/ROWS "virtual
//   warps" of ROWS rows each (ROWS hook, with `warp` the virtual warp), and after the
//   warps' partial sums meet in shared memory (added in warp order: deterministic),
//   lane v of the block's first warp runs the EPILOGUE for virtual warp v with
//   acc[m][r] as the scalar kernel's lane 0 would.
// Numerics: products of the 16-bit dequantized weight and x summed in float (the scalar
// kernel sums 8 products in 16 bits first): within the tests' tolerance of MLX's.

/** Rows of x the tensor-core body takes (NT = 4 column tiles of 8). */
export const GEMV_MMA_MAX_ROWS = 32;

/**
 * The rows of x a tensor-core kernel is compiled for (its template M; the launch's rows are read
 * from x's shape): 1-4 as they are, then 8, 16, 32, so a batch of 5-32 rows or a verify pass of
 * 5-16 tokens shares one of three builds of each kernel instead of one per count (NVRTC, ~1-3 s each).
 */
export function mmaBucket(rows: number): number {
  return rows <= 4 ? rows : rows <= 8 ? 8 : rows <= 16 ? 16 : 32;
}

/** The variant hooks' loops over rows of x, bounded by the launch's rows (MR) inside the bucket (M). */
export function boundRows(hook: string): string {
  return hook.replaceAll("for (int m = 0; m < M; ++m)", "for (int m = 0; m < M; ++m) if (m < MR)");
}

/** The tensor-core body; gemvSource fills PROLOGUE, ROW_SLOTS, XLOAD and EPILOGUE (and RMS_M for norm variants). */
export const GEMV_MMA_SOURCE = `
  using Ops = PvOps<T>;
  using T2 = typename Ops::T2;
  constexpr int NT = (M + 7) / 8;            // mma column tiles (rows of x)
  constexpr int CHUNKS = K / 32;             // 16-byte weight chunks per row
  constexpr int KB = (CHUNKS + 3) / 4;       // k-blocks of 128
  constexpr int PER = (KB + WARPS - 1) / WARPS;
  constexpr int TILES = /*TILES*/1;         // tiles of 16 output rows a block (gemvSource's tiles)
  constexpr int UMAX = 4 / TILES < 1 ? 1 : 4 / TILES;
  constexpr int U = PER < UMAX ? PER : UMAX; // k-blocks in flight per warp (and tile)
  constexpr int VW = 16 * TILES / ROWS;      // virtual warps per block
  constexpr int GROUPS = K / GROUP;
  const int lane = threadIdx.x & 31;
  const int wib = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  // Rows of x at run time (M is the kernel's bucket: mmaBucket): rows MR..M-1 are zero and not written.
  const int MR = [&] { int r = 1; for (int i = 0; i + 1 < x_ndim; ++i) r *= x_shape[i]; return r; }();
  // The rows this lane loads: rows g and g + 8 of each of the block's TILES tiles, through the variant's row order.
  int trow[TILES][2];
#pragma unroll
  for (int ti = 0; ti < TILES; ++ti)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int tr = 16 * ti + g + 8 * h;
      const int warp = blockIdx.x * VW + tr / ROWS;
      /*ROW_SLOTS*/
      trow[ti][h] = rowi[0];
#pragma unroll
      for (int r = 1; r < ROWS; ++r)
        if (tr % ROWS == r) trow[ti][h] = rowi[r];
    }
  const uint4* wbase = reinterpret_cast<const uint4*>(w);
  uint4 wv[U][TILES][2];
  T2 sv[U][TILES][2], bv[U][TILES][2];
  // One round: U k-blocks of this lane's rows, with their scales and biases.
  auto load_round = [&](int kb0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = (kb0 + u * WARPS) * 4 + t;
#pragma unroll
      for (int ti = 0; ti < TILES; ++ti)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (kb0 + u * WARPS < KB && c < CHUNKS) {
            wv[u][ti][h] = pv_load_stream(wbase + (size_t)trow[ti][h] * CHUNKS + c);
            const size_t gi = (size_t)trow[ti][h] * GROUPS + (c * 32) / GROUP;
            sv[u][ti][h] = Ops::splat(Ops::to_float(scales[gi]));
            bv[u][ti][h] = Ops::splat(Ops::to_float(biases[gi]));
          } else {
            wv[u][ti][h] = make_uint4(0u, 0u, 0u, 0u);
            sv[u][ti][h] = Ops::splat(0.f);
            bv[u][ti][h] = Ops::splat(0.f);
          }
        }
    }
  };
  // PENSIEVE_GEMV_MMA_PRELOAD=1: the first round is asked for before the prologue (the norm variants' pass over
  // every row of x), so its DRAM latency overlaps that pass; by default (gemvSource) after it, as GPU-tested.
  // Same registers either way (NVRTC, sm_90a); on a GPU only the 9-token verify cost has run with it
  // (bench/results/gpu-h100-2026-12-08), no A/B yet (bench/gpu/device.sh verify-mma).
  load_round(wib);
/*PROLOGUE*/
  float mac[TILES][NT][4];
#pragma unroll
  for (int ti = 0; ti < TILES; ++ti)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) mac[ti][n][i] = 0.f;
  for (int kb0 = wib; kb0 < KB; kb0 += WARPS * U) {
    if (kb0 != wib) load_round(kb0);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = (kb0 + u * WARPS) * 4 + t;
      if (kb0 + u * WARPS >= KB) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        // x pairs (0,4) (1,5) | (2,6) (3,7) of this lane's chunk c, word j, for each column tile.
        uint32_t bx[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          const int m = n * 8 + g;
          if (m < MR && c < CHUNKS) {
            const uint4* xc = reinterpret_cast<const uint4*>(x + (size_t)m * K) + c * 4;
/*RMS_M*/
            /*XLOAD*/
            bx[n][0] = __byte_perm(v.x, v.z, 0x5410);
            bx[n][1] = __byte_perm(v.x, v.z, 0x7632);
            bx[n][2] = __byte_perm(v.y, v.w, 0x5410);
            bx[n][3] = __byte_perm(v.y, v.w, 0x7632);
          } else {
            bx[n][0] = bx[n][1] = bx[n][2] = bx[n][3] = 0u;
          }
        }
        // x's pairs serve every tile of the block (TILES > 1 divides x's loads and unpacking per weight).
#pragma unroll
        for (int ti = 0; ti < TILES; ++ti) {
          const uint4& a0 = wv[u][ti][0];
          const uint4& a1 = wv[u][ti][1];
          const uint32_t w0 = j == 0 ? a0.x : j == 1 ? a0.y : j == 2 ? a0.z : a0.w;
          const uint32_t w1 = j == 0 ? a1.x : j == 1 ? a1.y : j == 2 ? a1.z : a1.w;
          const T2 s0 = sv[u][ti][0], s1 = sv[u][ti][1], b0 = bv[u][ti][0], b1 = bv[u][ti][1];
          const uint32_t lo[4] = {pv_deq2<T>(w0, 0, s0, b0), pv_deq2<T>(w1, 0, s1, b1), pv_deq2<T>(w0, 4, s0, b0),
                                  pv_deq2<T>(w1, 4, s1, b1)};
          const uint32_t hi[4] = {pv_deq2<T>(w0, 8, s0, b0), pv_deq2<T>(w1, 8, s1, b1), pv_deq2<T>(w0, 12, s0, b0),
                                  pv_deq2<T>(w1, 12, s1, b1)};
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            pv_mma<T>(mac[ti][n], lo, bx[n][0], bx[n][1]);
            pv_mma<T>(mac[ti][n], hi, bx[n][2], bx[n][3]);
          }
        }
      }
    }
  }
  // Each warp's (16 * TILES) x (NT*8) partial sums, then the block's first warp adds them in warp order.
  __shared__ float pv_tile[WARPS][16 * TILES][NT * 8];
#pragma unroll
  for (int ti = 0; ti < TILES; ++ti)
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      pv_tile[wib][16 * ti + g][n * 8 + 2 * t] = mac[ti][n][0];
      pv_tile[wib][16 * ti + g][n * 8 + 2 * t + 1] = mac[ti][n][1];
      pv_tile[wib][16 * ti + g + 8][n * 8 + 2 * t] = mac[ti][n][2];
      pv_tile[wib][16 * ti + g + 8][n * 8 + 2 * t + 1] = mac[ti][n][3];
    }
  __syncthreads();
  if (wib == 0 && lane < VW) {
    const int warp = blockIdx.x * VW + lane;
    /*ROW_SLOTS*/
    float acc[M][ROWS];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < WARPS; ++i) s += pv_tile[i][lane * ROWS + r][m];
        acc[m][r] = s;
      }
/*EPILOGUE*/
  }
`;

/** What the norm variants' XLOAD reads as the row's RMS scale (rms[m] with m known only at run time here). */
export const MMA_RMS_M = `            float rms_m = rms[0];
#pragma unroll
            for (int i = 1; i < M; ++i)
              if (m == i) rms_m = rms[i];`;

/**
 * mma.sync m16n8k16 with float accumulation, fp16 or bf16 (CUDA), or the emulation's on the CPU
 * (test/gpu/cuda-emulation.h). Shared with the batched W4A16 kernel's header (kernels-qmm.ts).
 */
export const MMA_M16N8K16 = `
// D (16x8, float) += A (16x16) B (16x8) over the warp, A and B in T.
template <typename T>
__device__ __forceinline__ void pv_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void pv_mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef __CUDA_ARCH__
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  emu_mma_m16n8k16(d, a, b0, b1, false);
#endif
}
template <>
__device__ __forceinline__ void pv_mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef __CUDA_ARCH__
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  emu_mma_m16n8k16(d, a, b0, b1, true);
#endif
}
`;

/** Header additions: the dequantized pair and the mma (CUDA), or the emulation's mma on the CPU. */
export const GEMV_MMA_HEADER = `
// Nibbles (shift/4, shift/4 + 4) of a word as the 16-bit pair s*q + b.
template <typename T>
__device__ __forceinline__ uint32_t pv_deq2(uint32_t w, int shift, typename PvOps<T>::T2 s, typename PvOps<T>::T2 b) {
  using Ops = PvOps<T>;
  using T2 = typename Ops::T2;
  const T2 q = __hsub2(pv_bits<T2>(((w >> shift) & 0x000F000Fu) | Ops::MAGIC), pv_bits<T2>(Ops::MAGIC));
  return pv_word(__hfma2(q, s, b));
}
${MMA_M16N8K16}`;

/** Warps per block (k-split) for a tile of 16 rows: doubled until a launch has 2,048, at most 8 and the k-blocks. */
export function mmaWarps(n: number, k: number): number {
  const tiles = n / 16;
  const kblocks = Math.ceil(k / 128);
  let warps = 1;
  while (warps < 8 && warps * 2 <= kblocks && tiles * warps < 2048) warps *= 2;
  return warps;
}
