// Decode attention on CUDA over a float KV cache, in the flash-decoding style:
// one new query token per row (q already rotated) against the row's first S
// cached keys (the new token's included: the cache was written first).
//
// A block owns one (row, kv head, split of the keys); its warps walk the
// split's keys, each lane holding HD/32 elements of every query head of the
// group (GQA) and of the key/value rows; per key one warp reduction gives the
// score, and an online softmax (base 2, scale folded into q) accumulates the
// values. The warps' partial results merge in shared memory. With one split
// the block writes the output [B, 1, H*HD]; with several it writes each split's
// normalized output and (max, sum), and a second kernel merges the splits (or,
// in the merged variant, the last block of each row and kv head to finish).
//
// The cache buffers are read whole ([B, Hkv, capacity, HD], the capacity from
// their shape at run time) and S comes from pos (each row's position: S = pos + 1),
// so neither a slice of the cache nor a recompile is needed as the sequence grows.
//
// The writing variants also take the new token's key and value (kn, vn
// [B, HKV, 1, HD]) and store them at column pos[b] of the cache buffers
// themselves (the first split's block of each row and kv head), which MLX passes
// uncopied (row-contiguous): no slice update per layer and step (two graph nodes
// of ~7 a layer). Every block reads the new key from kn/vn, never from that column.
// Over 400 lines: the kernel source in its three forms (split, merged, writing the new k/v) and the
// launch plans that choose between them belong together.
import { Dtype, type MxArray } from "./array";
import { CustomKernel, type KernelPlan, kernelLanguage } from "./kernels";

/** The attention kernels' shared device code (kernels-attention-verify.ts too). */
export const ATTENTION_HEADER = `
template <typename T> __device__ __forceinline__ float pv_f(T v);
template <> __device__ __forceinline__ float pv_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float pv_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T pv_t(float v);
template <> __device__ __forceinline__ __half pv_t<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 pv_t<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
// One key of the online softmax for one query row (base 2, scale folded into q): the warp's score, then the
// running max, sum and value accumulator rescaled. Each lane holds DL elements of q, k, v and acc.
template <int DL>
__device__ __forceinline__ void pv_softmax_step(const float (&q)[DL], const float (&k)[DL], const float (&v)[DL],
                                                float& mx, float& sm, float (&acc)[DL]) {
  float d = 0.f;
#pragma unroll
  for (int j = 0; j < DL; ++j) d += q[j] * k[j];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
  const float m2 = fmaxf(mx, d);
  const float c = exp2f(mx - m2);
  const float p = exp2f(d - m2);
  sm = sm * c + p;
#pragma unroll
  for (int j = 0; j < DL; ++j) acc[j] = acc[j] * c + p * v[j];
  mx = m2;
}
`;
const HEADER = ATTENTION_HEADER;

// Template: T, H, HKV, HD, WARPS, SCALE_BITS (scale * log2(e) as float bits), KB (keys a warp loads per round).
// Inputs q [B, H*HD], kc, vc [B, HKV, CAP, HD], pos int32 [B]. Grid (B*HKV blocks, splits).
// /*STORE*/: writes the merged (m, l, a) of head h, element d.
const SOURCE = `
  constexpr int G = H / HKV;
  constexpr int DL = HD / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int b = blockIdx.x / HKV;
  const int kvh = blockIdx.x % HKV;
  const int split = blockIdx.y;
  const int splits = gridDim.y;
  const int S = pos[b] + 1;
  const long cap = kc_shape[2];
  const int chunk = (S + splits - 1) / splits;
  const int s0 = split * chunk;
  const int s1 = min(S, s0 + chunk);
  const float qscale = __int_as_float(SCALE_BITS);
  const float NEG_INF = __int_as_float((int)0xff800000);
  float qr[G][DL];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int j = 0; j < DL; ++j) qr[g][j] = pv_f<T>(q[((size_t)b * H + kvh * G + g) * HD + lane + 32 * j]) * qscale;
  float mx[G], sm[G], acc[G][DL];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    mx[g] = NEG_INF;
    sm[g] = 0.f;
#pragma unroll
    for (int j = 0; j < DL; ++j) acc[g][j] = 0.f;
  }
  const T* kb = kc + ((size_t)b * HKV + kvh) * cap * HD;
  const T* vb = vc + ((size_t)b * HKV + kvh) * cap * HD;
/*NEWKV*/
  for (int base = s0 + warp * KB; base < s1; base += WARPS * KB) {
    float kf[KB][DL], vf[KB][DL];
#pragma unroll
    for (int u = 0; u < KB; ++u) {
      const int s = base + u;
#pragma unroll
      for (int j = 0; j < DL; ++j) {
        const T* kp = s == fresh ? knb : kb + (size_t)s * HD;
        const T* vp = s == fresh ? vnb : vb + (size_t)s * HD;
        kf[u][j] = s < s1 ? pv_f<T>(kp[lane + 32 * j]) : 0.f;
        vf[u][j] = s < s1 ? pv_f<T>(vp[lane + 32 * j]) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < KB; ++u) {
      if (base + u >= s1) break;
#pragma unroll
      for (int g = 0; g < G; ++g) pv_softmax_step<DL>(qr[g], kf[u], vf[u], mx[g], sm[g], acc[g]);
    }
  }
  __shared__ float pv_m[WARPS][G], pv_l[WARPS][G];
  __shared__ float pv_acc[WARPS][G][HD];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      pv_m[warp][g] = mx[g];
      pv_l[warp][g] = sm[g];
    }
#pragma unroll
    for (int j = 0; j < DL; ++j) pv_acc[warp][g][lane + 32 * j] = acc[g][j];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * HD; i += WARPS * 32) {
    const int g = i / HD;
    const int d = i % HD;
    float m = NEG_INF;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) m = fmaxf(m, pv_m[w][g]);
    float l = 0.f, a = 0.f;
    if (m != NEG_INF) {
#pragma unroll
      for (int w = 0; w < WARPS; ++w) {
        const float f = exp2f(pv_m[w][g] - m);
        l += pv_l[w][g] * f;
        a += pv_acc[w][g][d] * f;
      }
    }
    const int h = kvh * G + g;
    /*STORE*/
  }
/*MERGE*/
`;
// The cache holds every key already: none comes from elsewhere.
const READ_ONLY = "const int fresh = -1; const T* knb = kb; const T* vnb = vb;";
// The new token's key/value (column S - 1) come from kn/vn and are written into the cache.
const WRITE_NEW = `const int fresh = S - 1;
  const T* knb = kn + ((size_t)b * HKV + kvh) * HD;
  const T* vnb = vn + ((size_t)b * HKV + kvh) * HD;
  if (split == 0)
    for (int i = threadIdx.x; i < HD; i += WARPS * 32) {
      const_cast<T*>(kb)[(size_t)fresh * HD + i] = knb[i];
      const_cast<T*>(vb)[(size_t)fresh * HD + i] = vnb[i];
    }`;
const STORE_OUT = "out[((size_t)b * H + h) * HD + d] = pv_t<T>(a / l);";
const STORE_SPLIT = `const size_t row = ((size_t)b * H + h) * splits + split;
    part[row * HD + d] = l > 0.f ? a / l : 0.f;
    if (d == 0) {
      stats[row * 2] = m;
      stats[row * 2 + 1] = l;
    }`;

// The splits merged inside the split kernel: the last block of a (row, kv head) to
// finish (a ticket from its counter, which that block sets back to 0 for the next
// launch) merges every split's (m, l, a) of its heads, as COMBINE does. One launch
// instead of two; counter int32 [B*HKV] starts at 0 and belongs to one call site.
const MERGE_LAST = `
  __threadfence();
  __syncthreads();
  __shared__ int pv_last;
  if (threadIdx.x == 0) pv_last = atomicAdd(const_cast<int*>(counter) + blockIdx.x, 1) == splits - 1;
  __syncthreads();
  if (!pv_last) return;
  __threadfence();
  for (int i = threadIdx.x; i < G * HD; i += WARPS * 32) {
    const int g = i / HD;
    const int d = i % HD;
    const size_t bh = (size_t)b * H + kvh * G + g;
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
  if (threadIdx.x == 0) const_cast<int*>(counter)[blockIdx.x] = 0;
`;

// Merges the splits: one block per (row, head), HD threads. Inputs part float
// [B, H, SPLITS, HD], stats float [B, H, SPLITS, 2]; template T, HD, SPLITS.
const COMBINE = `
  const size_t bh = blockIdx.x;
  const int d = threadIdx.x;
  if (d >= HD) return;
  const float NEG_INF = __int_as_float((int)0xff800000);
  float m = NEG_INF;
  for (int s = 0; s < SPLITS; ++s) m = fmaxf(m, stats[(bh * SPLITS + s) * 2]);
  float l = 0.f, a = 0.f;
  for (int s = 0; s < SPLITS; ++s) {
    const float ms = stats[(bh * SPLITS + s) * 2];
    if (ms == NEG_INF) continue;
    const float f = exp2f(ms - m) * stats[(bh * SPLITS + s) * 2 + 1];
    l += f;
    a += f * part[(bh * SPLITS + s) * HD + d];
  }
  out[bh * HD + d] = pv_t<T>(a / l);
`;

interface Spec {
  name: string;
  header: string;
  source: string;
  inputs: string[];
  outputs: string[];
}

const source = (store: string, newKv: string, merge = "") =>
  SOURCE.replace("/*STORE*/", store).replace("/*NEWKV*/", newKv).replace("/*MERGE*/", merge);
/** One split: writes out [B, 1, H*HD]. */
export const DECODE_ATTENTION_KERNEL: Spec = {
  name: "pv_decode_attention",
  header: HEADER,
  source: source(STORE_OUT, READ_ONLY),
  inputs: ["q", "kc", "vc", "pos"],
  outputs: ["out"],
};
/** Several splits: writes part float [B, H, splits, HD] (normalized) and stats float [B, H, splits, 2] (max, sum). */
export const DECODE_ATTENTION_SPLIT_KERNEL: Spec = {
  name: "pv_decode_attention_split",
  header: HEADER,
  source: source(STORE_SPLIT, READ_ONLY),
  inputs: ["q", "kc", "vc", "pos"],
  outputs: ["part", "stats"],
};
/** DECODE_ATTENTION_KERNEL that also stores kn, vn [B, HKV, 1, HD] at column pos[b] of kc, vc. */
export const DECODE_ATTENTION_WRITE_KERNEL: Spec = {
  name: "pv_decode_attention_write",
  header: HEADER,
  source: source(STORE_OUT, WRITE_NEW),
  inputs: ["q", "kc", "vc", "pos", "kn", "vn"],
  outputs: ["out"],
};
/**
 * DECODE_ATTENTION_SPLIT_WRITE_KERNEL whose last block per (row, kv head) merges the splits into out
 * [B, 1, H*HD] (part and stats are scratch). Extra input counter int32 [B*HKV], zero between launches.
 */
export const DECODE_ATTENTION_MERGED_WRITE_KERNEL: Spec = {
  name: "pv_decode_attention_merged_write",
  header: HEADER,
  source: source(STORE_SPLIT, WRITE_NEW, MERGE_LAST),
  inputs: ["q", "kc", "vc", "pos", "kn", "vn", "counter"],
  outputs: ["out", "part", "stats"],
};
/** DECODE_ATTENTION_SPLIT_KERNEL that also stores kn, vn at column pos[b] of kc, vc. */
export const DECODE_ATTENTION_SPLIT_WRITE_KERNEL: Spec = {
  name: "pv_decode_attention_split_write",
  header: HEADER,
  source: source(STORE_SPLIT, WRITE_NEW),
  inputs: ["q", "kc", "vc", "pos", "kn", "vn"],
  outputs: ["part", "stats"],
};
export const DECODE_ATTENTION_COMBINE_KERNEL: Spec = {
  name: "pv_decode_attention_combine",
  header: HEADER,
  source: COMBINE,
  inputs: ["part", "stats"],
  outputs: ["out"],
};

/**
 * Warps per block: as many as the shared memory of the merge allows, up to `most`
 * (16: one block per row and kv head is only 32 blocks for Phi-3 at one row: more
 * warps each walk fewer keys, which is the latency of a short context).
 */
export function attentionWarps(heads: number, kvHeads: number, headDim: number, most = 16): number {
  const g = heads / kvHeads;
  for (const w of [16, 8, 4]) if (w <= most && w * g * headDim * 4 <= 32 * 1024) return w;
  return 0;
}
/** Keys per split: longer contexts get more blocks (flash-decoding); PENSIEVE_FUSED_KEYS_PER_SPLIT overrides. */
const KEYS_PER_SPLIT = Number(process.env.PENSIEVE_FUSED_KEYS_PER_SPLIT ?? 512);
/**
 * Keys per split when the splits merge in the same launch (no second kernel to pay
 * for): 64 spreads even a short context over many blocks (Phi-3 at 384 keys: 6 splits,
 * 192 blocks instead of 32). PENSIEVE_FUSED_MERGED_KEYS_PER_SPLIT overrides.
 */
const MERGED_KEYS_PER_SPLIT = Number(process.env.PENSIEVE_FUSED_MERGED_KEYS_PER_SPLIT ?? 64);
let keysPerSplit = KEYS_PER_SPLIT;
let mergedKeysPerSplitNow = MERGED_KEYS_PER_SPLIT;

/** Sets the keys per split of both forms from now on (tests force several splits on short contexts); null: the defaults. */
export function setKeysPerSplit(n: number | null): void {
  keysPerSplit = n ?? KEYS_PER_SPLIT;
  mergedKeysPerSplitNow = n ?? MERGED_KEYS_PER_SPLIT;
}
/** The most splits of a launch. */
export const ATTENTION_MAX_SPLITS = 64;
const MAX_SPLITS = ATTENTION_MAX_SPLITS;
/**
 * Keys each warp loads before using them (4, as measured on the H100 on 2026-12-06;
 * PENSIEVE_FUSED_ATTENTION_KB overrides it for a sweep: more keys in flight, more registers).
 */
const KEYS_PER_ROUND = Number(process.env.PENSIEVE_FUSED_ATTENTION_KB ?? 4);

/** Whether the kernel takes these heads (head dim a multiple of 32, GQA group's shared memory small). */
export function decodeAttentionSupports(heads: number, kvHeads: number, headDim: number, dtype: Dtype): boolean {
  const g = heads / kvHeads;
  return (
    kernelLanguage() === "cuda" &&
    Number.isInteger(g) &&
    headDim % 32 === 0 &&
    headDim <= 256 &&
    attentionWarps(heads, kvHeads, headDim) > 0 &&
    (dtype === Dtype.float16 || dtype === Dtype.bfloat16)
  );
}

/** Keys each warp loads per round (KB), as DecodeAttention instantiates it. */
export function attentionKeysPerRound(): number {
  return KEYS_PER_ROUND;
}

/** The number of splits for a context of `keys` keys. */
export function attentionSplits(keys: number, perSplit = keysPerSplit): number {
  return Math.max(1, Math.min(MAX_SPLITS, Math.ceil(keys / perSplit)));
}

/** The number of splits for a context of `keys` keys when they merge in one launch. */
export function mergedAttentionSplits(keys: number): number {
  return attentionSplits(keys, mergedKeysPerSplitNow);
}

const kernels = new Map<string, CustomKernel>();

function kernel(spec: Spec): CustomKernel {
  let k = kernels.get(spec.name);
  if (!k) {
    k = new CustomKernel(spec);
    kernels.set(spec.name, k);
  }
  return k;
}

/**
 * Decode attention for one shape of heads and one scale, with its launch plans
 * kept by (rows, splits): a decode step only runs them.
 */
export class DecodeAttention {
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly dtype: Dtype;
  readonly warps: number;
  /** The scores' scale (before the log2(e) the kernel folds in). */
  readonly scale: number;
  readonly #template: Record<string, number | { dtype: Dtype }>;
  readonly #plans = new Map<number, { main: KernelPlan; combine: KernelPlan | null }>();

  /** `warps`: the block's (attentionWarps up to 16 by default; the layer megakernel's blocks have 4). */
  constructor(
    heads: number,
    kvHeads: number,
    headDim: number,
    dtype: Dtype,
    scale: number,
    warps = attentionWarps(heads, kvHeads, headDim),
  ) {
    if (!decodeAttentionSupports(heads, kvHeads, headDim, dtype))
      throw new Error(`decode attention: ${heads}/${kvHeads} heads of ${headDim} are not supported`);
    this.heads = heads;
    this.kvHeads = kvHeads;
    this.headDim = headDim;
    this.dtype = dtype;
    this.scale = scale;
    const scaleBits = new Int32Array(Float32Array.of(scale * Math.LOG2E).buffer)[0] as number;
    if (warps <= 0 || warps > attentionWarps(heads, kvHeads, headDim))
      throw new Error(`decode attention: ${warps} warps for ${heads}/${kvHeads} heads of ${headDim}`);
    this.warps = warps;
    this.#template = {
      T: { dtype },
      H: heads,
      HKV: kvHeads,
      HD: headDim,
      WARPS: this.warps,
      SCALE_BITS: scaleBits,
      KB: KEYS_PER_ROUND,
    };
  }

  /**
   * softmax(scale * q k^T) v for one new token per row: q [rows, 1, H*HD]
   * (rotated), kc, vc the layer's cache buffers [rows, Hkv, capacity, HD] holding
   * each row's keys 0..pos[b] (the new one included), pos int32 [rows]. `keys`
   * (the longest row's count) picks the splits. Returns [rows, 1, H*HD].
   * With `fresh` = [kn, vn] ([rows, Hkv, 1, HD]) the cache holds keys 0..pos[b]-1
   * and the kernel stores the new ones at column pos[b] of kc, vc (which must be
   * row-contiguous buffers the caller owns: MLX would copy any other input).
   */
  run(
    q: MxArray,
    kc: MxArray,
    vc: MxArray,
    pos: MxArray,
    rows: number,
    keys: number,
    splits = attentionSplits(keys),
    fresh?: [MxArray, MxArray],
    counter?: MxArray,
  ) {
    const merged = splits > 1 && fresh !== undefined && counter !== undefined;
    const slot = (rows * 1024 + splits) * 4 + (fresh ? 1 : 0) + (merged ? 2 : 0);
    let p = this.#plans.get(slot);
    if (!p) {
      p = this.#make(rows, splits, fresh !== undefined, merged);
      this.#plans.set(slot, p);
    }
    const inputs = fresh ? [q, kc, vc, pos, ...fresh] : [q, kc, vc, pos];
    if (merged) inputs.push(counter);
    if (!p.combine) return p.main.run(inputs)[0] as MxArray;
    return p.combine.run(p.main.run(inputs))[0] as MxArray;
  }

  #make(
    rows: number,
    splits: number,
    write: boolean,
    merged: boolean,
  ): { main: KernelPlan; combine: KernelPlan | null } {
    const { heads, kvHeads, headDim: hd, dtype } = this;
    const grid: [number, number, number] = [rows * kvHeads * this.warps * 32, splits, 1];
    const threadgroup: [number, number, number] = [this.warps * 32, 1, 1];
    const template = this.#template;
    if (splits === 1) {
      const main = kernel(write ? DECODE_ATTENTION_WRITE_KERNEL : DECODE_ATTENTION_KERNEL).plan({
        outputs: [{ shape: [rows, 1, heads * hd], dtype }],
        grid,
        threadgroup,
        template,
      });
      return { main, combine: null };
    }
    const scratch = [
      { shape: [rows, heads, splits, hd], dtype: Dtype.float32 },
      { shape: [rows, heads, splits, 2], dtype: Dtype.float32 },
    ];
    if (merged) {
      const main = kernel(DECODE_ATTENTION_MERGED_WRITE_KERNEL).plan({
        outputs: [{ shape: [rows, 1, heads * hd], dtype }, ...scratch],
        grid,
        threadgroup,
        template,
      });
      return { main, combine: null };
    }
    const main = kernel(write ? DECODE_ATTENTION_SPLIT_WRITE_KERNEL : DECODE_ATTENTION_SPLIT_KERNEL).plan({
      outputs: scratch,
      grid,
      threadgroup,
      template,
    });
    const combine = kernel(DECODE_ATTENTION_COMBINE_KERNEL).plan({
      outputs: [{ shape: [rows, 1, heads * hd], dtype }],
      grid: [rows * heads * hd, 1, 1],
      threadgroup: [hd, 1, 1],
      template: { T: { dtype }, HD: hd, SPLITS: splits },
    });
    return { main, combine };
  }
}

const shared = new Map<string, DecodeAttention>();

/** DecodeAttention.run with the instance for these heads and scale (kept; tests and one-off calls). */
export function decodeAttention(
  q: MxArray,
  kc: MxArray,
  vc: MxArray,
  pos: MxArray,
  scale: number,
  heads: number,
  keys: number,
  splits = attentionSplits(keys),
  fresh?: [MxArray, MxArray],
  counter?: MxArray,
  warps?: number,
): MxArray {
  const [B, kvHeads, , hd] = kc.shape as [number, number, number, number];
  const key = `${heads}|${kvHeads}|${hd}|${q.dtype}|${scale}|${warps}`;
  let a = shared.get(key);
  if (!a) {
    a = new DecodeAttention(heads, kvHeads, hd, q.dtype, scale, warps);
    shared.set(key, a);
  }
  return a.run(q, kc, vc, pos, B, keys, splits, fresh, counter);
}
