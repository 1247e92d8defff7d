// One CUDA kernel per decoder layer for decode (B <= 4 rows of one new token), in
// five phases, each a range of the launch's blocks:
//   P1 RMSNorm -> q|k|v GEMV -> RoPE        q, k, v (scratch); cos/sin from the step's table
//   P2 attention over the cache             stores k/v at column pos[b] of kc/vc,
//                                           splits merged by the last block (MERGE_LAST)
//   P3 o GEMV + residual                    h2 (scratch)
//   P4 RMSNorm -> gate|up GEMV -> SwiGLU    act (scratch)
//   P5 down GEMV + residual                 y (the layer's output)
// A decode step is bound by MLX's per-primitive host work (~7-10 us a graph node),
// so one node a layer instead of five is the point.
//
// Each phase is the fused path's own kernel body (kernels-gemv-fused.ts,
// kernels-attention.ts) turned into a templated device function over a
// "virtual block": blockIdx.x/y and gridDim.y are replaced by arguments, so each
// output is computed by the same code in the same order as the fused path's
// kernels (greedy tokens equal, with the attention at the block's warps). A block
// has 4 warps by default (layerTemplate's blockWarps; the attention's at most): with
// more, the GEMV phases (4 warps a virtual block, as gemvConfig launches them) run
// SUBS = warps/4 virtual blocks side by side, each with its own slice of the shared
// memory, so that every thread meets the same __syncthreads.
//
// Ordering without a grid barrier (the first form, a persistent grid with four
// barriers, ran a step in 6.6 ms against the five kernels' 3.0 on an H200): each
// block takes a ticket (an atomic counter) as it starts, so tickets follow the
// order blocks are running; tickets map to the phases in order, and a block of
// phase p waits until every block of phase p-1 has counted itself done. A block
// only ever waits on lower tickets, already running, so any grid size is safe
// (no co-residency needed), and the next phase's blocks start as SMs free up.
// The grid is layerBlocks()'s: the attention's splits are what it leaves to P2.
//
// Activations of the phases are read through L2 (__ldcg for the GEMVs' __ldg): they
// are written in the same launch. `sync` is a persistent int32 buffer [8 + B*HKV]:
// the ticket, each phase's done count, then the attention's split tickets; the
// last block of P5 puts it back to zero for the next launch.
import type { Dtype } from "./array";
import {
  attentionKeysPerRound,
  attentionWarps,
  DECODE_ATTENTION_MERGED_WRITE_KERNEL,
  DECODE_ATTENTION_WRITE_KERNEL,
} from "./kernels-attention";
import { GEMV_KERNEL, gemvConfig } from "./kernels-gemv";
import {
  GEMV_NORM_ROPE_QKV_KERNEL,
  GEMV_NORM_SWIGLU_KERNEL,
  GEMV_RESIDUAL_KERNEL,
  pairedConfig,
} from "./kernels-gemv-fused";

/** Warps of a GEMV virtual block (gemvConfig's). */
export const LAYER_GEMV_WARPS = 4;
/**
 * Warps of a block (the attention's; GEMV phases run blockWarps/4 virtual blocks side by side): 4 by default,
 * the GEMV kernels' own blocks: o and down are then 192 blocks over every SM, as their kernels are (at 16
 * warps they were 48 blocks on 48 of an H100's 132 SMs).
 */
export const LAYER_BLOCK_WARPS = 4;

// The bodies' launch geometry must all have become virtual-block arguments (a body that
// gains another use of blockIdx/gridDim would silently compute on the physical block).
function checkReplaced(name: string, body: string): void {
  if (/blockIdx|gridDim/.test(body)) throw new Error(`${name}: a launch-geometry use was not replaced`);
}

/** A GEMV body as a device function of a virtual block (pv_vb), its thread (pv_tid) and shared slice (pv_sub). */
function gemvPhase(name: string, source: string, constants: string[], params: string): string {
  // Activations are written earlier in the same launch (other blocks, before a barrier):
  // read them through L2 (__ldcg), never the non-coherent path __ldg takes.
  const body = source
    .replaceAll("blockIdx.x", "pv_vb")
    .replaceAll("threadIdx.x", "pv_tid")
    .replaceAll("__ldg(", "__ldcg(")
    .replace(
      "__shared__ float pv_red[M][WARPS];",
      "__shared__ float pv_red_all[SUBS][M][WARPS];\n    auto& pv_red = pv_red_all[pv_sub];",
    );
  if (source.includes("__shared__") && !body.includes("pv_red_all")) throw new Error(`${name}: unknown shared memory`);
  checkReplaced(name, body);
  const tparams = ["typename T", ...constants.map((c) => (c === "TRADITIONAL" ? "bool TRADITIONAL" : `int ${c}`))];
  return `
template <${tparams.join(", ")}, int SUBS>
__device__ void ${name}(int pv_vb, int pv_tid, int pv_sub, ${params}) {
${body}
}
`;
}

const GEMV_CONSTANTS = ["M", "N", "K", "ROWS", "WARPS", "GROUP"];
const QUANT = "const T* x, const uint32_t* w, const T* scales, const T* biases";

/** An attention body as a device function of a virtual block (pv_vb, pv_vby) of pv_splits splits. */
function attentionPhase(name: string, source: string, params: string): string {
  const body = source
    .replaceAll("blockIdx.x", "pv_vb")
    .replaceAll("blockIdx.y", "pv_vby")
    .replaceAll("gridDim.y", "pv_splits");
  checkReplaced(name, body);
  return `
template <typename T, int H, int HKV, int HD, int WARPS, int SCALE_BITS, int KB, typename SHAPE>
__device__ void ${name}(int pv_vb, int pv_vby, int pv_splits, const T* q, const T* kc, const SHAPE& kc_shape,
    const T* vc, const int32_t* pos, const T* kn, const T* vn, ${params}) {
${body}
}
`;
}

// A phase waits for the one before it (its done count reaching that phase's blocks);
// polls are volatile loads (L2, no atomic traffic), backing off from 32 to 256 ns:
// hundreds of blocks may poll one word (one L2 slice) while the phase before them
// runs. A phase's end: every thread's writes, then thread 0's fence and count (as
// cooperative groups' grid sync). ~2^24 polls (seconds) without progress cannot
// happen with a right grid: trap.
/** The longest pause between polls, ns (PENSIEVE_GPU_MEGA_POLL_NS; a measurement knob). */
const POLL_NS = Math.max(32, Number(process.env.PENSIEVE_GPU_MEGA_POLL_NS ?? 256) || 256);
const PHASES = `
__device__ __forceinline__ int pv_poll(int* p) {
#ifdef PV_EMULATION
  return atomicAdd(p, 0);
#else
  return *reinterpret_cast<volatile int*>(p);
#endif
}
__device__ __forceinline__ void pv_phase_wait(int* done, int blocks) {
  if (threadIdx.x == 0) {
    unsigned polls = 0, ns = 32;
    while (pv_poll(done) < blocks) {
      __nanosleep(ns);
      if (ns < ${POLL_NS}) ns *= 2;
      if (++polls == (1u << 24)) __trap();
    }
    __threadfence();
  }
  __syncthreads();
}
// PREFETCH: a block about to wait first asks L2 for its own weight rows (rows r0..r0+n
// of a [N, K] 4-bit matrix, then their scales and biases). Later phases' blocks start,
// and wait, as soon as SM slots free up (up to a wave ahead of the running phase), so
// their weights stream in while the phase before them finishes, instead of after it
// (sm_90's bulk prefetch, 4 KB a thread).
template <typename T, int K, int GROUP>
__device__ __forceinline__ void pv_prefetch_rows(const uint32_t* w, const T* s, const T* b, int r0, int n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // The bulk prefetch takes 16-byte aligned addresses and sizes: the range's start rounded down
  // (still inside the array), its end down (a last few bytes not asked for).
  auto pf = [](const void* base, unsigned bytes) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(base) & ~uintptr_t(15);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(base) + bytes) & ~uintptr_t(15);
    const char* p = reinterpret_cast<const char*>(begin);
    const unsigned total = (unsigned)(end - begin);
    for (unsigned o = threadIdx.x * 4096u; o < total; o += blockDim.x * 4096u) {
      const unsigned size = total - o < 4096u ? total - o : 4096u;
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + o), "r"(size) : "memory");
    }
  };
  if (n <= 0) return;
  pf(reinterpret_cast<const char*>(w) + (size_t)r0 * (K / 2), (unsigned)n * (K / 2));
  pf(s + (size_t)r0 * (K / GROUP), (unsigned)(n * (K / GROUP) * sizeof(T)));
  pf(b + (size_t)r0 * (K / GROUP), (unsigned)(n * (K / GROUP) * sizeof(T)));
#else
  (void)w; (void)s; (void)b; (void)r0; (void)n;
#endif
}
// Returns whether this block was the phase's last.
__device__ __forceinline__ bool pv_phase_done(int* done, int blocks) {
  __shared__ bool pv_last_done;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    pv_last_done = atomicAdd(done, 1) == blocks - 1;
  }
  __syncthreads();
  return pv_last_done;
}
`;

const HEADER = `${GEMV_KERNEL.header}${DECODE_ATTENTION_WRITE_KERNEL.header}${PHASES}${gemvPhase(
  "pv_phase_qkv",
  GEMV_NORM_ROPE_QKV_KERNEL.source,
  [...GEMV_CONSTANTS, "EPS_BITS", "HD", "ROTATED", "TRADITIONAL", "QS", "KVS"],
  `${QUANT}, const T* norm, const float* rope_cs, T* q, T* k, T* v`,
)}${gemvPhase("pv_phase_residual", GEMV_RESIDUAL_KERNEL.source, GEMV_CONSTANTS, `${QUANT}, const T* res, T* y`)}${gemvPhase(
  "pv_phase_swiglu",
  GEMV_NORM_SWIGLU_KERNEL.source,
  [...GEMV_CONSTANTS, "EPS_BITS"],
  `${QUANT}, const T* norm, T* y`,
)}${attentionPhase("pv_phase_attention", DECODE_ATTENTION_WRITE_KERNEL.source, "T* out")}${attentionPhase(
  "pv_phase_attention_merged",
  DECODE_ATTENTION_MERGED_WRITE_KERNEL.source,
  "const int* counter, T* out, float* part, float* stats",
)}`;

// Template: T, B, D (hidden), FF (intermediate), GW (GEMV warps), AW (attention warps = the block's),
// QKV_N/QKV_ROWS/QKV_GROUP, O_ROWS/O_GROUP, GU_ROWS/GU_GROUP, DN_ROWS/DN_GROUP, EPS1_BITS, EPS2_BITS,
// HD, ROTATED, TRADITIONAL, QS, KVS, H, HKV, SCALE_BITS, KB, PREFETCH (0/1).
// The blocks of each phase: as layerBlocks() counts them.
const SOURCE = `
  constexpr int SUBS = AW / GW;
  const int pv_sub = threadIdx.x / (GW * 32);
  const int pv_tid = threadIdx.x % (GW * 32);
  int* sync = const_cast<int*>(sync_state);
  constexpr int P1 = ((QKV_N / QKV_ROWS + GW - 1) / GW + SUBS - 1) / SUBS;
  constexpr int P3 = ((D / O_ROWS + GW - 1) / GW + SUBS - 1) / SUBS;
  constexpr int P4 = ((2 * FF / GU_ROWS + GW - 1) / GW + SUBS - 1) / SUBS;
  constexpr int P5 = ((D / DN_ROWS + GW - 1) / GW + SUBS - 1) / SUBS;
  // The attention's splits, as the fused path's kernel reads them from its grid (layerBlocks).
  const int p2 = (int)gridDim.x - (P1 + P3 + P4 + P5);
  const int splits = p2 / (B * HKV);
  __shared__ int pv_ticket;
  if (threadIdx.x == 0) pv_ticket = atomicAdd(sync, 1);
  __syncthreads();
  int t = pv_ticket;
  if (t < P1) {
    // P1: RMSNorm -> q|k|v -> RoPE.
    pv_phase_qkv<T, B, QKV_N, D, QKV_ROWS, GW, QKV_GROUP, EPS1_BITS, HD, ROTATED, TRADITIONAL, QS, KVS, SUBS>(
        t * SUBS + pv_sub, pv_tid, pv_sub, x, w_qkv, s_qkv, b_qkv, norm1, rope_cs, q, kn, vn);
    pv_phase_done(sync + 1, P1);
    return;
  }
  t -= P1;
  if (t < p2) {
    // P2: attention over keys 0..pos[b]; the new key/value stored at column pos[b].
    pv_phase_wait(sync + 1, P1);
    if (splits == 1)
      pv_phase_attention<T, H, HKV, HD, AW, SCALE_BITS, KB>(t, 0, 1, q, kc, kc_shape, vc, pos, kn, vn, attn);
    else
      pv_phase_attention_merged<T, H, HKV, HD, AW, SCALE_BITS, KB>(t % (B * HKV), t / (B * HKV), splits, q, kc,
          kc_shape, vc, pos, kn, vn, sync + 8, attn, part, stats);
    pv_phase_done(sync + 2, p2);
    return;
  }
  t -= p2;
  // The rows of a GEMV block (SUBS virtual blocks of GW warps of ROWS rows), clipped to N.
  auto rows_of = [&](int rows, int n) { return min(SUBS * GW * rows, n - t * SUBS * GW * rows); };
  if (t < P3) {
    // P3: o product + residual.
    if (PREFETCH) pv_prefetch_rows<T, H * HD, O_GROUP>(w_o, s_o, b_o, t * SUBS * GW * O_ROWS, rows_of(O_ROWS, D));
    pv_phase_wait(sync + 2, p2);
    pv_phase_residual<T, B, D, H * HD, O_ROWS, GW, O_GROUP, SUBS>(t * SUBS + pv_sub, pv_tid, pv_sub, attn, w_o, s_o, b_o, x, h2);
    pv_phase_done(sync + 3, P3);
    return;
  }
  t -= P3;
  if (t < P4) {
    // P4: RMSNorm -> gate|up -> SwiGLU. A block's rows are pairs: gate rows p.. and up rows FF + p..
    if (PREFETCH) {
      const int p0 = t * SUBS * GW * (GU_ROWS / 2);
      const int n = min(SUBS * GW * (GU_ROWS / 2), FF - p0);
      pv_prefetch_rows<T, D, GU_GROUP>(w_gu, s_gu, b_gu, p0, n);
      pv_prefetch_rows<T, D, GU_GROUP>(w_gu, s_gu, b_gu, FF + p0, n);
    }
    pv_phase_wait(sync + 3, P3);
    pv_phase_swiglu<T, B, 2 * FF, D, GU_ROWS, GW, GU_GROUP, EPS2_BITS, SUBS>(t * SUBS + pv_sub, pv_tid, pv_sub, h2, w_gu,
        s_gu, b_gu, norm2, act);
    pv_phase_done(sync + 4, P4);
    return;
  }
  t -= P4;
  // P5: down product + residual. Its last block leaves the counts at zero: every other block has
  // counted itself done by then, and every ticket is taken.
  if (PREFETCH) pv_prefetch_rows<T, FF, DN_GROUP>(w_dn, s_dn, b_dn, t * SUBS * GW * DN_ROWS, rows_of(DN_ROWS, D));
  pv_phase_wait(sync + 4, P4);
  pv_phase_residual<T, B, D, FF, DN_ROWS, GW, DN_GROUP, SUBS>(t * SUBS + pv_sub, pv_tid, pv_sub, act, w_dn, s_dn, b_dn, h2, y);
  if (pv_phase_done(sync + 5, P5) && threadIdx.x == 0) {
    for (int i = 0; i < 6; ++i) atomicExch(sync + i, 0);
    __threadfence();
  }
`;

/** The megakernel as MLX compiles it (inputs and outputs in this order). */
export const DECODE_LAYER_KERNEL = {
  name: "pv_decode_layer",
  header: HEADER,
  source: SOURCE,
  inputs: [
    "x",
    "norm1",
    "w_qkv",
    "s_qkv",
    "b_qkv",
    "pos",
    "rope_cs",
    "kc",
    "vc",
    "w_o",
    "s_o",
    "b_o",
    "norm2",
    "w_gu",
    "s_gu",
    "b_gu",
    "w_dn",
    "s_dn",
    "b_dn",
    "sync_state",
  ],
  outputs: ["y", "q", "kn", "vn", "attn", "part", "stats", "h2", "act"],
} as const;

// MLX writes the kernel's signature itself (no attributes): the header redefines __global__
// for the one kernel that follows it, so ptxas keeps registers within one block of THREADS
// per SM (else 4 rows of x take 138 a thread and a 512-thread block cannot launch).
// Two blocks an SM (PENSIEVE_GPU_MEGA_BLOCKS_PER_SM=2): 64 registers (one row: 24 bytes spilled).
const launchBounds = (threads: number, perSm: number) => `
#pragma push_macro("__global__")
#undef __global__
#define __global__ __location__(global) __launch_bounds__(${threads}, ${perSm})
`;

/** DECODE_LAYER_KERNEL for blocks of `warps` warps (the attention's), register-bounded for `perSm` of them an SM. */
export function layerKernel(warps: number, perSm = 1) {
  return {
    ...DECODE_LAYER_KERNEL,
    name: `pv_decode_layer_w${warps}_b${perSm}`,
    header: HEADER + launchBounds(warps * 32, perSm),
  };
}

/** The shapes of a launch: everything the template constants and outputs depend on. */
export interface LayerShape {
  dtype: Dtype;
  rows: number;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** What else fixes an instantiation: group sizes, norms' epsilons, RoPE, the attention's scale. */
export interface LayerConstants {
  /** Quantization group of q|k|v, o, gate|up, down. */
  groups: [number, number, number, number];
  eps1: number;
  eps2: number;
  traditional: boolean;
  scale: number;
}

const floatBits = (v: number) => new Int32Array(Float32Array.of(v).buffer)[0] as number;

/**
 * The template constants, chosen as the fused path's kernels are launched
 * (rows per warp by gemvConfig / pairedConfig, the attention's warps, keys per
 * round and keys per split), so each phase computes what its kernel would.
 */
export function layerTemplate(
  s: LayerShape,
  c: LayerConstants,
  blockWarps = LAYER_BLOCK_WARPS,
  prefetch = false,
): Record<string, number | boolean> {
  const { rows: B, heads: H, kvHeads: HKV, headDim: HD } = s;
  const qs = H * HD;
  const kvs = HKV * HD;
  const qkvN = qs + 2 * kvs;
  const aw = attentionWarps(H, HKV, HD, blockWarps);
  if (aw === 0 || aw % LAYER_GEMV_WARPS !== 0) throw new Error(`layer kernel: ${aw} attention warps`);
  return {
    B,
    D: s.hidden,
    FF: s.intermediate,
    GW: LAYER_GEMV_WARPS,
    AW: aw,
    QKV_N: qkvN,
    QKV_ROWS: pairedConfig(qkvN, B).rows,
    QKV_GROUP: c.groups[0],
    O_ROWS: gemvConfig(s.hidden, B).rows,
    O_GROUP: c.groups[1],
    GU_ROWS: pairedConfig(2 * s.intermediate, B).rows,
    GU_GROUP: c.groups[2],
    DN_ROWS: gemvConfig(s.hidden, B).rows,
    DN_GROUP: c.groups[3],
    EPS1_BITS: floatBits(c.eps1),
    EPS2_BITS: floatBits(c.eps2),
    HD,
    ROTATED: qs + kvs,
    TRADITIONAL: c.traditional,
    QS: qs,
    KVS: kvs,
    H,
    HKV,
    SCALE_BITS: floatBits(c.scale * Math.LOG2E),
    KB: attentionKeysPerRound(),
    PREFETCH: prefetch,
  };
}

/**
 * The blocks of a launch with `splits` attention splits (mergedAttentionSplits of the longest row's keys, as the
 * fused path's attention launch): each phase's, in ticket order. The kernel reads the splits back from the grid.
 */
export function layerBlocks(t: Record<string, number | boolean>, splits: number): number {
  const n = (k: string) => t[k] as number;
  const subs = n("AW") / n("GW");
  // A GEMV phase: gemvConfig's blocks (rows a warp, GW warps a block), SUBS of them a block.
  const gemv = (outputs: number, rows: number) => Math.ceil(Math.ceil(Math.floor(outputs / rows) / n("GW")) / subs);
  return (
    gemv(n("QKV_N"), n("QKV_ROWS")) +
    n("B") * n("HKV") * splits +
    gemv(n("D"), n("O_ROWS")) +
    gemv(2 * n("FF"), n("GU_ROWS")) +
    gemv(n("D"), n("DN_ROWS"))
  );
}

/** Int32 words of the launch's `sync` buffer (zero between launches): ticket, 5 phase counts, 2 spare, split tickets. */
export function layerSyncWords(rows: number, kvHeads: number): number {
  return 8 + rows * kvHeads;
}

/** Output shapes, in DECODE_LAYER_KERNEL.outputs' order (part/stats sized for maxSplits). */
export function layerOutputs(s: LayerShape, maxSplits: number, float32: Dtype) {
  const { rows: B, heads: H, kvHeads: HKV, headDim: HD, dtype } = s;
  return [
    { shape: [B, 1, s.hidden], dtype },
    { shape: [B, 1, H * HD], dtype },
    { shape: [B, HKV, 1, HD], dtype },
    { shape: [B, HKV, 1, HD], dtype },
    { shape: [B, 1, H * HD], dtype },
    { shape: [B, H, maxSplits, HD], dtype: float32 },
    { shape: [B, H, maxSplits, 2], dtype: float32 },
    { shape: [B, 1, s.hidden], dtype },
    { shape: [B, 1, s.intermediate], dtype },
  ];
}
