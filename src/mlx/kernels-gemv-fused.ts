// The 4-bit GEMV (kernels-gemv.ts) with a decoder step's neighbours fused in,
// so that a transformer layer's decode is a few launches (src/models/gpu-fused.ts):
//   - residual: y = res + x @ W.T (o_proj, down_proj);
//   - RMSNorm in front and SwiGLU behind: y = silu(g) * u of the normed x's
//     gate|up product (a warp owns gate row i and up row i of the same output);
//   - RMSNorm in front and RoPE behind: the normed x's q|k|v product with q and k
//     rotated at each row's position (a warp owns both rows of a RoPE pair).
// Paired variants use an even ROWS: slot r < ROWS/2 holds pair p's first row,
// slot r + ROWS/2 its partner. Values are rounded to T where MLX's unfused ops
// round (the product, then the activation / rotation in float), so the fused
// path stays within an ulp or two of MLX's.
import type { MxArray } from "./array";
import { Dtype } from "./array";
import { CustomKernel, type KernelPlan } from "./kernels";
import {
  GEMV_KERNEL,
  GEMV_RMS_NORM_KERNEL,
  type GemvConfig,
  type GemvSpec,
  type GemvVariant,
  gemvConfig,
  gemvPlan,
  gemvSource,
} from "./kernels-gemv";
import { type QuantizedWeight, reshape } from "./ops";

const RESIDUAL_EPILOGUE = `
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const size_t o = (size_t)m * N + rowi[r];
        y[o] = Ops::from_float(Ops::to_float(Ops::from_float(acc[m][r])) + Ops::to_float(res[o]));
      }
`;

// Pair p = warp * ROWS/2 + r % (ROWS/2); half 0 or 1 (which row of the pair).
const PAIR = "const int p = warp * (ROWS / 2) + r % (ROWS / 2); const int half = r / (ROWS / 2);";

const SWIGLU_ROWS = `${PAIR} rowi[r] = p + half * (N / 2);`;
const SWIGLU_EPILOGUE = `
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < ROWS / 2; ++r) {
        // MLX's g * sigmoid(g) * u in T, rounded where its ops round: sigmoid(g) = 1 / (1 + exp(|g|)), or 1 minus it.
        auto t = [](float v) { return Ops::to_float(Ops::from_float(v)); };
        const float g = t(acc[m][r]);
        const float u = t(acc[m][r + ROWS / 2]);
        const float e = t(1.f / t(1.f + t(expf(fabsf(g)))));
        const float sig = g < 0.f ? e : t(1.f - e);
        y[(size_t)m * (N / 2) + rowi[r]] = Ops::from_float(t(g * sig) * u);
      }
`;

// Head h's pair i: rows h*HD + i and h*HD + i + HD/2, or adjacent rows (TRADITIONAL).
const ROPE_ROWS = `${PAIR} const int head = p / (HD / 2); const int i = p % (HD / 2);
    rowi[r] = head * HD + (TRADITIONAL ? 2 * i + half : i + half * (HD / 2));`;
// A pair's rotation, its cos and sin from rope_cs [M, HD] float32 (ropeTable: cos of pair i at column i, sin at
// HD/2 + i), made once a step for every layer. Computed here (precise cosf / sinf in the GEMV's epilogue) they cost
// the q|k|v kernel half its time (H100, Nsight Compute: 25.6 us against 12.7 for the same kernel without RoPE; its
// sin/cos slow path for large angles gives it a stack frame and 70 registers against 56; gpu-h100-2026-12-07g).
// pv_store(m, row, value) writes.
const ropeEpilogue = (store: string) => `
    auto pv_store = [&](int m, int row, float value) { ${store} };
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int r = 0; r < ROWS / 2; ++r) {
        float a = Ops::to_float(Ops::from_float(acc[m][r]));
        float b = Ops::to_float(Ops::from_float(acc[m][r + ROWS / 2]));
        if (rowi[r] < ROTATED) {
          const int i = (warp * (ROWS / 2) + r) % (HD / 2);
          const float c = rope_cs[m * HD + i], s = rope_cs[m * HD + HD / 2 + i];
          const float a2 = a * c - b * s;
          b = a * s + b * c;
          a = a2;
        }
        pv_store(m, rowi[r], a);
        pv_store(m, rowi[r + ROWS / 2], b);
      }
    }
`;

const ROPE_STORE_QKV = `const T v16 = Ops::from_float(value);
      if (row < QS) q[(size_t)m * QS + row] = v16;
      else if (row < QS + KVS) k[(size_t)m * KVS + row - QS] = v16;
      else v[(size_t)m * KVS + row - QS - KVS] = v16;`;

const base = (name: string, extra: string[], variant: GemvVariant): GemvSpec => ({
  name,
  header: GEMV_KERNEL.header,
  source: gemvSource(variant),
  inputs: [...GEMV_KERNEL.inputs, ...extra],
  variant,
});

/** y = res + x @ W.T. Extra input res [..., N]. */
export const GEMV_RESIDUAL_KERNEL = base("pv_gemv_w4_residual", ["res"], { epilogue: RESIDUAL_EPILOGUE });
/** y = silu(g) * u with [g | u] = rms_norm(x) @ W.T. Extra input norm [K]; template EPS_BITS. */
export const GEMV_NORM_SWIGLU_KERNEL = base("pv_gemv_w4_rms_norm_swiglu", ["norm"], {
  norm: true,
  rows: SWIGLU_ROWS,
  epilogue: SWIGLU_EPILOGUE,
});
/**
 * rms_norm(x) @ W.T with RoPE on its first ROTATED rows (q and k heads of HD).
 * Extra inputs norm [K], rope_cs float32 [M, HD] (ropeTable: each row's cos and
 * sin); template EPS_BITS, HD, ROTATED, TRADITIONAL.
 */
export const GEMV_NORM_ROPE_KERNEL = base("pv_gemv_w4_rms_norm_rope", ["norm", "rope_cs"], {
  norm: true,
  rows: ROPE_ROWS,
  epilogue: ropeEpilogue("y[(size_t)m * N + row] = Ops::from_float(value);"),
});
/**
 * GEMV_NORM_ROPE_KERNEL for one new token per row (decode), written as three
 * outputs: q [B, 1, QS], and k, v [B, Hkv, 1, HD] as the KV cache stores them
 * (for one token the same memory order as [B, 1, KVS]). Template QS, KVS.
 */
export const GEMV_NORM_ROPE_QKV_KERNEL: GemvSpec = {
  ...base("pv_gemv_w4_rms_norm_rope_qkv", ["norm", "rope_cs"], {
    norm: true,
    rows: ROPE_ROWS,
    epilogue: ropeEpilogue(ROPE_STORE_QKV),
  }),
  outputs: ["q", "k", "v"],
};

/**
 * PENSIEVE_GEMV_MMA_PRENORM=1: launches on the tensor-core body take x already normed (MLX's rms_norm, one
 * node before them) instead of each block summing every row of x's squares and scaling each load: at 9 rows
 * of x the RMSNorm + gate|up kernel compiles to 3.4x the SASS of down + residual (bench/gpu/gemv-sass.ts
 * --swiglu). Not yet measured on a GPU; off by default.
 */
export const mmaPrenorm = process.env.PENSIEVE_GEMV_MMA_PRENORM === "1";

const prenormedSpecs = new Map<string, GemvSpec>();
/** A norm variant without its RMSNorm (x arrives normed); its norm input and EPS_BITS go unused. */
export function prenormedSpec(spec: GemvSpec): GemvSpec {
  let s = prenormedSpecs.get(spec.name);
  if (!s) {
    if (!spec.variant?.norm) throw new Error(`${spec.name}: not a norm variant`);
    const variant = { ...spec.variant, norm: false };
    s = { ...spec, name: `${spec.name}_prenormed`, source: gemvSource(variant), variant };
    prenormedSpecs.set(spec.name, s);
  }
  return s;
}

/** The spec a norm variant's launch takes: prenormed where x arrives normed. */
const normSpec = (spec: GemvSpec, prenormed: boolean) => (prenormed ? prenormedSpec(spec) : spec);

// One thread per (row, pair): the angle as MLX's rope computes it, then precise cosf / sinf.
export const ROPE_TABLE_KERNEL = {
  name: "pv_rope_table",
  inputs: ["pos", "inv_freq"],
  outputs: ["rope_cs"],
  source: `
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= pos_shape[0] * (HD / 2)) return;
  const int m = t / (HD / 2);
  const int i = t % (HD / 2);
  const float position = __int_as_float(POS_SCALE_BITS) * (float)pos[m];
  const float theta = position * inv_freq[i];
  rope_cs[m * HD + i] = cosf(theta);
  rope_cs[m * HD + HD / 2 + i] = sinf(theta);
`,
};
let ropeTableKernel: CustomKernel | null = null;
const ropeTablePlans = new Map<string, KernelPlan>();

/**
 * RoPE's cos and sin for each row's position (pos int32 [M]): rope_cs float32 [M, headDim], cos of pair i at
 * column i, sin at headDim/2 + i. One launch a step serves every layer's q|k|v kernel.
 */
export function ropeTable(pos: MxArray, rope: FusedRope): MxArray {
  if (pos.dtype !== Dtype.int32) throw new Error("ropeTable: pos must be int32, one position a row");
  if (rope.invFreq.dtype !== Dtype.float32 || rope.invFreq.size !== rope.headDim / 2)
    throw new Error("ropeTable: invFreq must be float32 [headDim/2]");
  const m = pos.size;
  const rows = pos.ndim === 1 ? pos : reshape(pos, [m]);
  const key = `${m}|${rope.headDim}|${rope.positionScale ?? 1}`;
  let plan = ropeTablePlans.get(key);
  if (!plan) {
    ropeTableKernel ??= new CustomKernel(ROPE_TABLE_KERNEL);
    const threads = m * (rope.headDim / 2);
    plan = ropeTableKernel.plan({
      outputs: [{ shape: [m, rope.headDim], dtype: Dtype.float32 }],
      grid: [Math.ceil(threads / 64) * 64, 1, 1],
      threadgroup: [64, 1, 1],
      template: { HD: rope.headDim, POS_SCALE_BITS: floatBits(rope.positionScale ?? 1) },
    });
    ropeTablePlans.set(key, plan);
  }
  return plan.run([rows, rope.invFreq])[0] as MxArray;
}

const floatBits = (v: number) => new Int32Array(Float32Array.of(v).buffer)[0] as number;

/** A paired variant's rows per warp: gemvConfig's, made even (pairs share a warp). k, tensorCores: as gemvConfig's. */
export function pairedConfig(n: number, m: number, k?: number, tensorCores = true): GemvConfig {
  const c = gemvConfig(n, m, k, tensorCores);
  return c.rows % 2 === 0 ? c : { ...c, rows: 2 };
}

const rowsOf = (xShape: readonly number[]) => xShape.reduce((a, b) => a * b, 1) / (xShape.at(-1) as number);

/** How the q|k|v product's first `rotated` rows are rotated (RoPE over whole heads of headDim). */
export interface FusedRope {
  headDim: number;
  /** Rows of q and k: (heads + kv heads) * headDim. */
  rotated: number;
  traditional: boolean;
  /** float32 [headDim/2]: 1 / wavelength per pair. */
  invFreq: MxArray;
  /** Multiplies the position (linear RoPE scaling), default 1. */
  positionScale?: number;
}

/** The RoPE kernels' template (the position scale is the table's, ropeTable). */
const ropeTemplate = (eps: number, rope: Omit<FusedRope, "invFreq">) => ({
  EPS_BITS: floatBits(eps),
  HD: rope.headDim,
  ROTATED: rope.rotated,
  TRADITIONAL: rope.traditional,
});

/** A norm variant's plan arguments: x's shape and dtype, the weight, RMSNorm's eps, the launch, x already normed. */
type NormPlanArgs = [
  xShape: readonly number[],
  dtype: Dtype,
  q: QuantizedWeight,
  eps: number,
  config?: GemvConfig,
  prenormed?: boolean,
];

/**
 * Launch plans of the fused variants for x of a given shape and dtype. A decoder
 * keeps them per weight and rows, so a step only runs them (no key, no checks):
 * run([x, q.weight, q.scales, q.biases, ...the variant's inputs]).
 */
export const fusedPlans = {
  /** Inputs + res. */
  residual: (xShape: readonly number[], dtype: Dtype, q: QuantizedWeight, config?: GemvConfig): KernelPlan =>
    gemvPlan(GEMV_RESIDUAL_KERNEL, xShape, dtype, q, {}, config),
  /** Inputs + norm; output [..., N/2]. */
  normSwiglu: (...[xShape, dtype, q, eps, config, prenormed = false]: NormPlanArgs) => {
    const n = q.weight.dim(0);
    if (n % 2 !== 0) throw new Error("quantizedGemvNormSwiglu: the weight needs an even row count");
    const shapes = [[...xShape.slice(0, -1), n / 2]];
    const template = { EPS_BITS: floatBits(eps) };
    return gemvPlan(
      normSpec(GEMV_NORM_SWIGLU_KERNEL, prenormed),
      xShape,
      dtype,
      q,
      template,
      config ?? pairedConfig(n, rowsOf(xShape), xShape.at(-1)),
      shapes,
    );
  },
  /** Inputs + norm, rope_cs (ropeTable). */
  normRope: (
    xShape: readonly number[],
    dtype: Dtype,
    q: QuantizedWeight,
    eps: number,
    rope: Omit<FusedRope, "invFreq">,
    config?: GemvConfig,
    prenormed = false,
  ) => {
    const n = q.weight.dim(0);
    const hd = rope.headDim;
    if (hd % 2 !== 0 || n % hd !== 0 || rope.rotated % hd !== 0 || rope.rotated > n)
      throw new Error(`quantizedGemvNormRope: ${n} rows are not whole heads of ${hd}`);
    const config2 = config ?? pairedConfig(n, rowsOf(xShape), xShape.at(-1));
    return gemvPlan(normSpec(GEMV_NORM_ROPE_KERNEL, prenormed), xShape, dtype, q, ropeTemplate(eps, rope), config2);
  },
  /** Inputs + norm, rope_cs (ropeTable); outputs q [B, 1, QS], k and v [B, Hkv, 1, HD]. */
  normRopeQkv: (
    rows: number,
    dtype: Dtype,
    q: QuantizedWeight,
    eps: number,
    rope: Omit<FusedRope, "invFreq">,
    kvHeads: number,
    config?: GemvConfig,
    prenormed = false,
  ) => {
    const n = q.weight.dim(0);
    const k = (q.weight.dim(1) * 32) / q.bits;
    const hd = rope.headDim;
    const kvs = kvHeads * hd;
    const qs = n - 2 * kvs;
    if (hd % 2 !== 0 || qs <= 0 || qs % hd !== 0 || rope.rotated !== qs + kvs)
      throw new Error(`quantizedGemvNormRopeQkv: ${n} rows are not q, k, v heads of ${hd}`);
    const shapes = [
      [rows, 1, qs],
      [rows, kvHeads, 1, hd],
      [rows, kvHeads, 1, hd],
    ];
    const template = { ...ropeTemplate(eps, rope), QS: qs, KVS: kvs };
    return gemvPlan(
      normSpec(GEMV_NORM_ROPE_QKV_KERNEL, prenormed),
      [rows, 1, k],
      dtype,
      q,
      template,
      config ?? pairedConfig(n, rows, k),
      shapes,
    );
  },
  /** Inputs + norm (GEMV_RMS_NORM_KERNEL). */
  norm: (...[xShape, dtype, q, eps, config, prenormed = false]: NormPlanArgs) =>
    gemvPlan(normSpec(GEMV_RMS_NORM_KERNEL, prenormed), xShape, dtype, q, { EPS_BITS: floatBits(eps) }, config),
};

const qInputs = (x: MxArray, q: QuantizedWeight) => [x, q.weight, q.scales, q.biases as MxArray];

function checkNorm(what: string, x: MxArray, norm: MxArray): void {
  if (norm.ndim !== 1 || norm.dim(0) !== x.dim(-1) || norm.dtype !== x.dtype)
    throw new Error(`${what}: norm must be [K] in x's dtype`);
}

/** res + x @ dequantize(q).T in one kernel (res [..., N] in x's dtype). */
export function quantizedGemvResidual(x: MxArray, q: QuantizedWeight, res: MxArray, config?: GemvConfig): MxArray {
  if (res.dtype !== x.dtype || res.dim(-1) !== q.weight.dim(0) || res.size !== (x.size / x.dim(-1)) * res.dim(-1)) {
    throw new Error("quantizedGemvResidual: res must be [..., N] in x's dtype with x's rows");
  }
  return fusedPlans.residual(x.shape, x.dtype, q, config).run([...qInputs(x, q), res])[0] as MxArray;
}

/** silu(g) * u of [g | u] = rms_norm(x, norm, eps) @ dequantize(q).T: output [..., N/2]. */
export function quantizedGemvNormSwiglu(
  x: MxArray,
  norm: MxArray,
  eps: number,
  q: QuantizedWeight,
  config?: GemvConfig,
): MxArray {
  checkNorm("quantizedGemvNormSwiglu", x, norm);
  return fusedPlans.normSwiglu(x.shape, x.dtype, q, eps, config).run([...qInputs(x, q), norm])[0] as MxArray;
}

function checkRopeInputs(x: MxArray, pos: MxArray, rope: FusedRope): void {
  const m = x.size / x.dim(-1);
  if (pos.dtype !== Dtype.int32 || pos.size !== m) throw new Error("quantizedGemvNormRope: pos must be int32 [rows]");
  if (rope.invFreq.dtype !== Dtype.float32 || rope.invFreq.size !== rope.headDim / 2)
    throw new Error("quantizedGemvNormRope: invFreq must be float32 [headDim/2]");
}

/**
 * rms_norm(x, norm, eps) @ dequantize(q).T with RoPE on the q and k rows at each
 * row's position (pos int32 [M]); the v rows pass through.
 */
export function quantizedGemvNormRope(
  x: MxArray,
  norm: MxArray,
  eps: number,
  q: QuantizedWeight,
  pos: MxArray,
  rope: FusedRope,
  config?: GemvConfig,
): MxArray {
  checkNorm("quantizedGemvNormRope", x, norm);
  checkRopeInputs(x, pos, rope);
  const plan = fusedPlans.normRope(x.shape, x.dtype, q, eps, rope, config);
  return plan.run([...qInputs(x, q), norm, ropeTable(pos, rope)])[0] as MxArray;
}

/**
 * quantizedGemvNormRope for decode (x [B, 1, K]): returns q [B, 1, H*HD] and the
 * new token's k, v [B, Hkv, 1, HD], ready for the KV cache, from one kernel.
 */
export function quantizedGemvNormRopeQkv(
  x: MxArray,
  norm: MxArray,
  eps: number,
  q: QuantizedWeight,
  pos: MxArray,
  rope: FusedRope,
  kvHeads: number,
  config?: GemvConfig,
): [MxArray, MxArray, MxArray] {
  if (x.ndim !== 3 || x.dim(1) !== 1) throw new Error("quantizedGemvNormRopeQkv: x must be [B, 1, K]");
  checkNorm("quantizedGemvNormRopeQkv", x, norm);
  checkRopeInputs(x, pos, rope);
  const plan = fusedPlans.normRopeQkv(x.dim(0), x.dtype, q, eps, rope, kvHeads, config);
  return plan.run([...qInputs(x, q), norm, ropeTable(pos, rope)]) as [MxArray, MxArray, MxArray];
}
