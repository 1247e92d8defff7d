// One persistent CUDA kernel per decoder layer for decode (B <= 4 rows of one new
// token), in five phases separated by a software grid barrier:
//   P1 RMSNorm -> q|k|v GEMV -> RoPE        q, k, v (scratch)
//   P2 attention over the cache             stores k/v at column pos[b] of kc/vc,
//                                           splits merged by the last block (MERGE_LAST)
//   P3 o GEMV + residual                    h2 (scratch)
//   P4 RMSNorm -> gate|up GEMV -> SwiGLU    act (scratch)
//   P5 down GEMV + residual                 y (the layer's output)
// A decode step is bound by MLX's per-primitive host work (~10-14 us a graph node),
// so one node a layer instead of five is the point.
//
// Each phase is the fused path's own kernel body (kernels-gemv-fused.ts,
// kernels-attention.ts) turned into a templated device function over a
// "virtual block": blockIdx.x/y and gridDim.y are replaced by arguments, so each
// output is computed by the same code in the same order as the fused path's
// kernels (greedy tokens equal). The grid is as many blocks as can be resident at
// once (one per SM); each block loops over the phase's virtual blocks. A block has
// the attention's warps (16 for Phi-3); the GEMV phases (4 warps a virtual block,
// as gemvConfig launches them) run SUBS = warps/4 virtual blocks side by side,
// each with its own slice of the shared memory, in rounds of equal length so that
// every thread meets the same __syncthreads.
//
// Activations of the phases are read through L2 (__ldcg for the GEMVs' __ldg): they
// are written in the same launch. The grid barrier: counter and generation in a persistent int32 buffer `sync`
// ([2 + B*HKV]: then the attention's split tickets), zero between launches; it
// traps instead of hanging when the grid is not co-resident (too many blocks).
import type { Dtype } from "./array";
import {
  ATTENTION_MAX_SPLITS,
  attentionKeysPerRound,
  attentionWarps,
  DECODE_ATTENTION_MERGED_WRITE_KERNEL,
  DECODE_ATTENTION_WRITE_KERNEL,
  mergedKeysPerSplit,
} from "./kernels-attention";
import { GEMV_KERNEL, gemvConfig } from "./kernels-gemv";
import {
  GEMV_NORM_ROPE_QKV_POS_KERNEL,
  GEMV_NORM_SWIGLU_KERNEL,
  GEMV_RESIDUAL_KERNEL,
  pairedConfig,
} from "./kernels-gemv-fused";

/** Warps of a GEMV virtual block (gemvConfig's). */
export const LAYER_GEMV_WARPS = 4;

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

// As cooperative groups' grid sync: the last block to arrive resets the count and bumps the
// generation the others poll (volatile loads: L2, no atomic traffic); ~2^22 polls (seconds; a phase takes microseconds)
// mean a grid that is not co-resident: trap rather than hang.
const BARRIER = `
__device__ __forceinline__ int pv_poll(int* p) {
#ifdef PV_EMULATION
  return atomicAdd(p, 0);
#else
  return *reinterpret_cast<volatile int*>(p);
#endif
}
__device__ __forceinline__ void pv_grid_sync(int* sync) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const int gen = pv_poll(sync + 1);
    __threadfence();
    if (atomicAdd(sync, 1) == (int)gridDim.x - 1) {
      atomicExch(sync, 0);
      __threadfence();
      atomicAdd(sync + 1, 1);
    } else {
      unsigned polls = 0;
      while (pv_poll(sync + 1) == gen) {
        __nanosleep(64);
        if (++polls == (1u << 22)) __trap();
      }
    }
    __threadfence();
  }
  __syncthreads();
}
`;

const HEADER = `${GEMV_KERNEL.header}${DECODE_ATTENTION_WRITE_KERNEL.header}${BARRIER}${gemvPhase(
  "pv_phase_qkv",
  GEMV_NORM_ROPE_QKV_POS_KERNEL.source,
  [...GEMV_CONSTANTS, "EPS_BITS", "HD", "ROTATED", "TRADITIONAL", "POS_SCALE_BITS", "QS", "KVS"],
  `${QUANT}, const T* norm, const int32_t* pos, const float* inv_freq, T* q, T* k, T* v`,
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
// HD, ROTATED, TRADITIONAL, POS_SCALE_BITS, QS, KVS, H, HKV, SCALE_BITS, KB, KPS (keys per split), MAX_SPLITS.
const SOURCE = `
  constexpr int SUBS = AW / GW;
  const int pv_sub = threadIdx.x / (GW * 32);
  const int pv_tid = threadIdx.x % (GW * 32);
  int* sync = const_cast<int*>(sync_state);
  const int nb = gridDim.x;
  // Rounds of SUBS virtual blocks a block: every thread runs the same rounds (a virtual block past
  // the phase's end returns after its prologue, as a real block past N does).
  auto gemv_rounds = [&](int vbs) { return (vbs + nb * SUBS - 1) / (nb * SUBS); };
  auto gemv_vb = [&](int r) { return (r * nb + (int)blockIdx.x) * SUBS + pv_sub; };
  // P1: RMSNorm -> q|k|v -> RoPE.
  {
    constexpr int VBS = (QKV_N / QKV_ROWS + GW - 1) / GW;
    for (int r = 0; r < gemv_rounds(VBS); ++r) {
      pv_phase_qkv<T, B, QKV_N, D, QKV_ROWS, GW, QKV_GROUP, EPS1_BITS, HD, ROTATED, TRADITIONAL, POS_SCALE_BITS, QS, KVS, SUBS>(
          gemv_vb(r), pv_tid, pv_sub, x, w_qkv, s_qkv, b_qkv, norm1, pos, inv_freq, q, kn, vn);
      __syncthreads();
    }
  }
  pv_grid_sync(sync);
  // P2: attention over keys 0..pos[b]; the new key/value stored at column pos[b]. Splits as the fused
  // path picks them (mergedAttentionSplits: KPS keys a split over the longest row).
  {
    int longest = 0;
    for (int b = 0; b < B; ++b) longest = max(longest, pos[b] + 1);
    const int splits = min(MAX_SPLITS, max(1, (longest + KPS - 1) / KPS));
    const int vbs = B * HKV * splits;
    for (int vb = blockIdx.x; vb < vbs; vb += nb) {
      if (splits == 1)
        pv_phase_attention<T, H, HKV, HD, AW, SCALE_BITS, KB>(vb, 0, 1, q, kc, kc_shape, vc, pos, kn, vn, attn);
      else
        pv_phase_attention_merged<T, H, HKV, HD, AW, SCALE_BITS, KB>(vb % (B * HKV), vb / (B * HKV), splits, q, kc,
            kc_shape, vc, pos, kn, vn, sync + 2, attn, part, stats);
      __syncthreads();
    }
  }
  pv_grid_sync(sync);
  // P3: o product + residual.
  {
    constexpr int VBS = (D / O_ROWS + GW - 1) / GW;
    for (int r = 0; r < gemv_rounds(VBS); ++r) {
      pv_phase_residual<T, B, D, H * HD, O_ROWS, GW, O_GROUP, SUBS>(gemv_vb(r), pv_tid, pv_sub, attn, w_o, s_o, b_o, x, h2);
      __syncthreads();
    }
  }
  pv_grid_sync(sync);
  // P4: RMSNorm -> gate|up -> SwiGLU.
  {
    constexpr int VBS = (2 * FF / GU_ROWS + GW - 1) / GW;
    for (int r = 0; r < gemv_rounds(VBS); ++r) {
      pv_phase_swiglu<T, B, 2 * FF, D, GU_ROWS, GW, GU_GROUP, EPS2_BITS, SUBS>(gemv_vb(r), pv_tid, pv_sub, h2, w_gu, s_gu,
          b_gu, norm2, act);
      __syncthreads();
    }
  }
  pv_grid_sync(sync);
  // P5: down product + residual.
  {
    constexpr int VBS = (D / DN_ROWS + GW - 1) / GW;
    for (int r = 0; r < gemv_rounds(VBS); ++r) {
      pv_phase_residual<T, B, D, FF, DN_ROWS, GW, DN_GROUP, SUBS>(gemv_vb(r), pv_tid, pv_sub, act, w_dn, s_dn, b_dn, h2, y);
      __syncthreads();
    }
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
    "inv_freq",
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
  positionScale: number;
  scale: number;
}

const floatBits = (v: number) => new Int32Array(Float32Array.of(v).buffer)[0] as number;

/**
 * The template constants, chosen as the fused path's kernels are launched
 * (rows per warp by gemvConfig / pairedConfig, the attention's warps, keys per
 * round and keys per split), so each phase computes what its kernel would.
 */
export function layerTemplate(s: LayerShape, c: LayerConstants): Record<string, number | boolean> {
  const { rows: B, heads: H, kvHeads: HKV, headDim: HD } = s;
  const qs = H * HD;
  const kvs = HKV * HD;
  const qkvN = qs + 2 * kvs;
  const aw = attentionWarps(H, HKV, HD);
  if (aw % LAYER_GEMV_WARPS !== 0) throw new Error(`layer kernel: ${aw} attention warps`);
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
    POS_SCALE_BITS: floatBits(c.positionScale),
    QS: qs,
    KVS: kvs,
    H,
    HKV,
    SCALE_BITS: floatBits(c.scale * Math.LOG2E),
    KB: attentionKeysPerRound(),
    KPS: mergedKeysPerSplit(),
    MAX_SPLITS: ATTENTION_MAX_SPLITS,
  };
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
