// Attention of a speculative verify pass on CUDA: L new query tokens of one row
// (the last token and L - 1 drafts, L <= 16) against the row's cache, causal
// among the new tokens (query i sees keys 0..pos0 + i), with the new keys and
// values taken from the q|k|v product itself and stored into the cache in place.
// A variant of the writing decode-attention kernels (kernels-attention.ts: read
// their header first); what differs:
//   - q, k and v come as one input, the fused q|k|v kernel's output qkv
//     [1, L, H*HD + 2*HKV*HD] (no split, no reshape: MLX would copy a slice);
//   - a block owns one kv head, a chunk of QC of its G*L query rows (row r is
//     query r / G of head kvh*G + r % G) and one split of the keys: each key and
//     value a warp loads serves all QC rows (the cache is read once per chunk,
//     not once per query: one chunk for Phi-3 up to L = 16);
//   - keys pos0..pos0+L-1 (pos0 = pos[0], the cache's length) are read from qkv,
//     never from the cache; the first split's block of chunk 0 stores them at
//     columns pos0..pos0+L-1 of kc, vc (buffers from KVCache.reserveWhole: owned
//     and row-contiguous, which MLX passes uncopied; written through const_cast);
//   - the splits always merge in the same launch (the last block of a kv head
//     and chunk to finish, on a ticket counter: as DECODE_ATTENTION_MERGED_WRITE_KERNEL).
import { Dtype, type MxArray } from "./array";
import { CustomKernel, type KernelPlan, kernelLanguage } from "./kernels";
import { ATTENTION_HEADER } from "./kernels-attention";

const HEADER = ATTENTION_HEADER;

/** The most splits of a pass (the parallel merge's shared weights are sized by it). */
export const VERIFY_MAX_SPLITS = 64;

// Template: T, H, HKV, HD, L, QC (query rows per block), WARPS, SCALE_BITS, KB (keys a warp loads per round),
// MERGE (0: each output element merges the splits alone, serially; 1: the block merges them in parallel).
// Inputs qkv [1, L, H*HD + 2*HKV*HD] (q rotated, k rotated, v), kc, vc [1, HKV, CAP, HD], pos int32 [L]
// (pos[0] = keys already cached), counter int32 [HKV * chunks] (zero between launches).
// Outputs out [1, L, H*HD], part float [L*H, splits, HD], stats float [L*H, splits, 2] (scratch).
// Grid (HKV * chunks blocks, splits).
const SOURCE = `
  constexpr int G = H / HKV;
  constexpr int DL = HD / 32;
  constexpr int QS = H * HD;
  constexpr int KVS = HKV * HD;
  constexpr int NQKV = QS + 2 * KVS;
  constexpr int ROWS = G * L;
  constexpr int CHUNKS = (ROWS + QC - 1) / QC;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int kvh = blockIdx.x / CHUNKS;
  const int chunk = blockIdx.x % CHUNKS;
  const int split = blockIdx.y;
  const int splits = gridDim.y;
  const int pos0 = pos[0];
  const int S = pos0 + L;
  const long cap = kc_shape[2];
  const int per = (S + splits - 1) / splits;
  const int s0 = split * per;
  const int s1 = min(S, s0 + per);
  const float qscale = __int_as_float(SCALE_BITS);
  const float NEG_INF = __int_as_float((int)0xff800000);
  // Row c of this block: query i = r / G of head kvh * G + r % G; it sees keys 0..lim[c] (-1: no row).
  int lim[QC];
  float qr[QC][DL], mx[QC], sm[QC], acc[QC][DL];
#pragma unroll
  for (int c = 0; c < QC; ++c) {
    const int r = chunk * QC + c;
    const int i = r / G;
    const bool valid = r < ROWS;
    lim[c] = valid ? pos0 + i : -1;
#pragma unroll
    for (int j = 0; j < DL; ++j)
      qr[c][j] = valid ? pv_f<T>(qkv[(size_t)i * NQKV + (kvh * G + r % G) * HD + lane + 32 * j]) * qscale : 0.f;
    mx[c] = NEG_INF;
    sm[c] = 0.f;
#pragma unroll
    for (int j = 0; j < DL; ++j) acc[c][j] = 0.f;
  }
  const T* kb = kc + (size_t)kvh * cap * HD;
  const T* vb = vc + (size_t)kvh * cap * HD;
  const T* kn = qkv + QS + kvh * HD;
  const T* vn = qkv + QS + KVS + kvh * HD;
  if (split == 0 && chunk == 0)
    for (int t = threadIdx.x; t < L * HD; t += WARPS * 32) {
      const int i = t / HD;
      const int d = t % HD;
      const_cast<T*>(kb)[(size_t)(pos0 + i) * HD + d] = kn[(size_t)i * NQKV + d];
      const_cast<T*>(vb)[(size_t)(pos0 + i) * HD + d] = vn[(size_t)i * NQKV + d];
    }
  for (int base = s0 + warp * KB; base < s1; base += WARPS * KB) {
    float kf[KB][DL], vf[KB][DL];
#pragma unroll
    for (int u = 0; u < KB; ++u) {
      const int s = base + u;
      const T* kp = s >= pos0 ? kn + (size_t)(s - pos0) * NQKV : kb + (size_t)s * HD;
      const T* vp = s >= pos0 ? vn + (size_t)(s - pos0) * NQKV : vb + (size_t)s * HD;
#pragma unroll
      for (int j = 0; j < DL; ++j) {
        kf[u][j] = s < s1 ? pv_f<T>(kp[lane + 32 * j]) : 0.f;
        vf[u][j] = s < s1 ? pv_f<T>(vp[lane + 32 * j]) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < KB; ++u) {
      const int s = base + u;
      if (s >= s1) break;
#pragma unroll
      for (int c = 0; c < QC; ++c)
        if (s <= lim[c]) pv_softmax_step<DL>(qr[c], kf[u], vf[u], mx[c], sm[c], acc[c]);
    }
  }
  __shared__ float pv_m[WARPS][QC], pv_l[WARPS][QC];
  __shared__ float pv_acc[WARPS][QC][HD];
#pragma unroll
  for (int c = 0; c < QC; ++c) {
    if (lane == 0) {
      pv_m[warp][c] = mx[c];
      pv_l[warp][c] = sm[c];
    }
#pragma unroll
    for (int j = 0; j < DL; ++j) pv_acc[warp][c][lane + 32 * j] = acc[c][j];
  }
  __syncthreads();
  // This split's (max, sum, normalized output) of each row and element.
  for (int t = threadIdx.x; t < QC * HD; t += WARPS * 32) {
    const int c = t / HD;
    const int d = t % HD;
    const int r = chunk * QC + c;
    if (r >= ROWS) continue;
    float m = NEG_INF;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) m = fmaxf(m, pv_m[w][c]);
    float l = 0.f, a = 0.f;
    if (m != NEG_INF) {
#pragma unroll
      for (int w = 0; w < WARPS; ++w) {
        const float f = exp2f(pv_m[w][c] - m);
        l += pv_l[w][c] * f;
        a += pv_acc[w][c][d] * f;
      }
    }
    const size_t row = ((size_t)(r / G) * H + kvh * G + r % G) * splits + split;
    part[row * HD + d] = l > 0.f ? a / l : 0.f;
    if (d == 0) {
      stats[row * 2] = m;
      stats[row * 2 + 1] = l;
    }
  }
  // The last block of this kv head and chunk to finish merges every split.
  __threadfence();
  __syncthreads();
  __shared__ int pv_last;
  if (threadIdx.x == 0) pv_last = atomicAdd(const_cast<int*>(counter) + blockIdx.x, 1) == splits - 1;
  __syncthreads();
  if (!pv_last) return;
  __threadfence();
  if constexpr (MERGE == 1) {
  // Each split's weight exp2(m_s - m) * l_s of each row, from loads spread over the block, then each element's
  // sum over the splits with its part loads unrolled (several in flight): the serial form's 2 x splits
  // dependent L2 round trips per element are what a long context's 64 splits cost.
  __shared__ float pv_w[QC][${VERIFY_MAX_SPLITS}];
  __shared__ float pv_rm[QC], pv_rl[QC];
  // Row c's output row (query x head), or -1 past the last row.
  auto out_row = [&](int c) -> long {
    const int r = chunk * QC + c;
    return r < ROWS ? (long)(r / G) * H + kvh * G + r % G : -1;
  };
  // Pass 0: the splits' maxima, then each row's (pv_rm). Pass 1: the splits' weights, then each row's sum (pv_rl).
  for (int pass = 0; pass < 2; ++pass) {
    for (int t = threadIdx.x; t < QC * splits; t += WARPS * 32) {
      const int c = t / splits;
      const int s = t % splits;
      const long bh = out_row(c);
      if (bh < 0) continue;
      if (pass == 0) pv_w[c][s] = __ldcg(stats + (bh * splits + s) * 2);
      else {
        const float ms = pv_w[c][s];
        pv_w[c][s] = ms == NEG_INF ? 0.f : exp2f(ms - pv_rm[c]) * __ldcg(stats + (bh * splits + s) * 2 + 1);
      }
    }
    __syncthreads();
    if (warp == 0)
      for (int c = 0; c < QC; ++c) {
        float v = pass == 0 ? NEG_INF : 0.f;
        for (int s = lane; s < splits; s += 32) v = pass == 0 ? fmaxf(v, pv_w[c][s]) : v + pv_w[c][s];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
          const float u = __shfl_xor_sync(0xffffffffu, v, o);
          v = pass == 0 ? fmaxf(v, u) : v + u;
        }
        if (lane == 0) (pass == 0 ? pv_rm : pv_rl)[c] = v;
      }
    __syncthreads();
  }
  for (int t = threadIdx.x; t < QC * HD; t += WARPS * 32) {
    const int c = t / HD;
    const int d = t % HD;
    const long bh = out_row(c);
    if (bh < 0) continue;
    float a = 0.f;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) a += pv_w[c][s] * __ldcg(part + (bh * splits + s) * HD + d);
    out[bh * HD + d] = pv_t<T>(a / pv_rl[c]);
  }
  } else {
  for (int t = threadIdx.x; t < QC * HD; t += WARPS * 32) {
    const int c = t / HD;
    const int d = t % HD;
    const int r = chunk * QC + c;
    if (r >= ROWS) continue;
    const size_t bh = (size_t)(r / G) * H + kvh * G + r % G;
    float m = NEG_INF;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, __ldcg(stats + (bh * splits + s) * 2));
    float l = 0.f, a = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ms = __ldcg(stats + (bh * splits + s) * 2);
      if (ms == NEG_INF) continue;
      const float f = exp2f(ms - m) * __ldcg(stats + (bh * splits + s) * 2 + 1);
      l += f;
      a += f * __ldcg(part + (bh * splits + s) * HD + d);
    }
    out[bh * HD + d] = pv_t<T>(a / l);
  }
  }
  if (threadIdx.x == 0) const_cast<int*>(counter)[blockIdx.x] = 0;
`;

export const VERIFY_ATTENTION_KERNEL = {
  name: "pv_verify_attention",
  header: HEADER,
  source: SOURCE,
  inputs: ["qkv", "kc", "vc", "pos", "counter"],
  outputs: ["out", "part", "stats"],
};

/** The most new tokens a verify pass's attention takes (the GEMVs' limit: GEMV_MAX_ROWS). */
export const VERIFY_MAX_TOKENS = 16;

/**
 * Query rows per block: all G*L rows of a kv head when they fit the registers
 * (q and the running output, 2 x QC x HD/32 floats a lane: at most 96), else the
 * fewest equal chunks that do (each chunk reads the keys once more).
 */
export function verifyQueryChunk(rows: number, headDim: number): number {
  const cap = Math.max(1, Math.floor(96 / (2 * (headDim / 32))));
  const chunks = Math.ceil(rows / Math.min(cap, 16));
  return Math.ceil(rows / chunks);
}

/**
 * Warps per block: up to 8, as the merge's shared memory (WARPS x QC x HD floats,
 * <= 32 KiB) and the registers (~2 QC HD/32 + 3 QC + 2 KB HD/32 + 40 a thread,
 * <= 64 Ki a block) allow. Many splits of 64 keys give the blocks; the warps of
 * one block walk its split's keys.
 */
export function verifyWarps(queryChunk: number, headDim: number, keysPerRound: number): number {
  const dl = headDim / 32;
  const registers = 2 * queryChunk * dl + 3 * queryChunk + 2 * keysPerRound * dl + 40;
  for (const w of [8, 4, 2, 1])
    if (w * queryChunk * headDim * 4 <= 32 * 1024 && w * 32 * registers <= 64 * 1024) return w;
  return 0;
}

/** Keys per split (each split one block per kv head and chunk); PENSIEVE_FUSED_VERIFY_KEYS_PER_SPLIT overrides. */
const KEYS_PER_SPLIT = Number(process.env.PENSIEVE_FUSED_VERIFY_KEYS_PER_SPLIT ?? 64);
const MAX_SPLITS = VERIFY_MAX_SPLITS;
/**
 * The splits' merge: in parallel over the block (1, the default) or serial per output element (0,
 * PENSIEVE_FUSED_VERIFY_MERGE=serial). On the H100 (bench/results/gpu-h100-2026-12-07e/) a pass after 16,000
 * tokens cost 1.03-1.08x, 1.42-1.45x, 1.76-1.82x a step for 1-3 drafts merged in parallel against 1.17-1.19x,
 * 1.57-1.58x, 1.93-1.94x serially; the same within noise after 512 and 4,000; the GPU tests pass with it.
 */
const MERGE = process.env.PENSIEVE_FUSED_VERIFY_MERGE === "serial" ? 0 : 1;
/** Keys a warp loads per round (PENSIEVE_FUSED_VERIFY_KB overrides). */
const KEYS_PER_ROUND = Number(process.env.PENSIEVE_FUSED_VERIFY_KB ?? 4);
let keysPerSplit = KEYS_PER_SPLIT;

/** Sets the keys per split from now on (tests force several splits on short contexts); null: the default. */
export function setVerifyKeysPerSplit(n: number | null): void {
  keysPerSplit = n ?? KEYS_PER_SPLIT;
}

/** The splits for a pass ending at `keys` keys. */
export function verifySplits(keys: number): number {
  return Math.max(1, Math.min(MAX_SPLITS, Math.ceil(keys / keysPerSplit)));
}

/** Whether the kernel takes these heads for passes of up to VERIFY_MAX_TOKENS tokens. */
export function verifyAttentionSupports(heads: number, kvHeads: number, headDim: number, dtype: Dtype): boolean {
  const g = heads / kvHeads;
  if (kernelLanguage() !== "cuda" || !Number.isInteger(g) || headDim % 32 !== 0 || headDim > 256) return false;
  if (dtype !== Dtype.float16 && dtype !== Dtype.bfloat16) return false;
  const qc = verifyQueryChunk(g * VERIFY_MAX_TOKENS, headDim);
  return verifyWarps(qc, headDim, KEYS_PER_ROUND) > 0;
}

let kernel: CustomKernel | null = null;

/**
 * The verify pass's attention for one shape of heads and one scale, with its
 * launch plans kept by (tokens, splits).
 */
export class VerifyAttention {
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly dtype: Dtype;
  readonly #scaleBits: number;
  readonly #plans = new Map<number, KernelPlan>();

  constructor(heads: number, kvHeads: number, headDim: number, dtype: Dtype, scale: number) {
    if (!verifyAttentionSupports(heads, kvHeads, headDim, dtype))
      throw new Error(`verify attention: ${heads}/${kvHeads} heads of ${headDim} are not supported`);
    this.heads = heads;
    this.kvHeads = kvHeads;
    this.headDim = headDim;
    this.dtype = dtype;
    this.#scaleBits = new Int32Array(Float32Array.of(scale * Math.LOG2E).buffer)[0] as number;
  }

  /** The counter's size (int32, zeros) for passes of `tokens` new tokens. */
  counterSize(tokens: number): number {
    const rows = (this.heads / this.kvHeads) * tokens;
    return this.kvHeads * Math.ceil(rows / verifyQueryChunk(rows, this.headDim));
  }

  /**
   * softmax(scale q k^T) v of `tokens` new tokens (2..16): qkv [1, tokens, (H + 2 Hkv) HD]
   * (q, k rotated), kc, vc the layer's cache buffers [1, Hkv, capacity, HD] holding
   * keys 0..pos[0]-1 (pos int32 [tokens], pos[0] the cache's length); stores the new
   * k, v at columns pos[0].. of kc, vc in place. counter: int32 [counterSize(tokens)],
   * zeros, one per call site. Returns [1, tokens, H*HD].
   */
  run(qkv: MxArray, kc: MxArray, vc: MxArray, pos: MxArray, counter: MxArray, tokens: number, keys: number): MxArray {
    const splits = verifySplits(keys);
    const slot = tokens * 1024 + splits;
    let plan = this.#plans.get(slot);
    if (!plan) {
      plan = this.#make(tokens, splits);
      this.#plans.set(slot, plan);
    }
    return plan.run([qkv, kc, vc, pos, counter])[0] as MxArray;
  }

  #make(tokens: number, splits: number): KernelPlan {
    const { heads, kvHeads, headDim: hd, dtype } = this;
    const rows = (heads / kvHeads) * tokens;
    const qc = verifyQueryChunk(rows, hd);
    const warps = verifyWarps(qc, hd, KEYS_PER_ROUND);
    const chunks = Math.ceil(rows / qc);
    kernel ??= new CustomKernel(VERIFY_ATTENTION_KERNEL);
    return kernel.plan({
      outputs: [
        { shape: [1, tokens, heads * hd], dtype },
        { shape: [tokens * heads, splits, hd], dtype: Dtype.float32 },
        { shape: [tokens * heads, splits, 2], dtype: Dtype.float32 },
      ],
      grid: [kvHeads * chunks * warps * 32, splits, 1],
      threadgroup: [warps * 32, 1, 1],
      template: {
        T: { dtype },
        H: heads,
        HKV: kvHeads,
        HD: hd,
        L: tokens,
        QC: qc,
        WARPS: warps,
        SCALE_BITS: this.#scaleBits,
        KB: KEYS_PER_ROUND,
        MERGE,
      },
    });
  }
}
