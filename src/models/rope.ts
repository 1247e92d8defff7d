// RoPE variants: plain (base), linear scaling, Llama 3 frequency smoothing, and
// Phi-3 LongRoPE ("su"/"longrope") with its length-dependent factors.

import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import type { ModelConfig } from "./config";

/** Applies RoPE to q or k [B, H, L, D] for one forward; `regimes` has one entry per row. */
export type RopeFn = (x: MxArray, offset: number | MxArray, regimes: number[]) => MxArray;

/** base^(2i/dims) for i < dims/2, computed in MLX float32 as mlx-lm does. */
function baseWavelengths(base: number, dims: number): MxArray {
  return mx.power(mx.scalar(base), mx.divide(mx.arange(0, dims, 2, mx.Dtype.float32), dims));
}

function llama3Wavelengths(c: ModelConfig, dims: number): MxArray {
  const rs = c.ropeScaling;
  if (rs?.type !== "llama3") throw new Error("llama3 RoPE without llama3 scaling");
  const lowWavelen = rs.originalMaxPositionEmbeddings / rs.lowFreqFactor;
  const highWavelen = rs.originalMaxPositionEmbeddings / rs.highFreqFactor;
  const freqs = baseWavelengths(c.ropeTheta, dims);
  const wavelens = mx.multiply(freqs, 2 * Math.PI);
  const scaled = mx.where(mx.greater(wavelens, lowWavelen), mx.multiply(freqs, rs.factor), freqs);
  const medium = mx.logicalAnd(mx.greater(wavelens, highWavelen), mx.less(wavelens, lowWavelen));
  const smooth = mx.divide(
    mx.subtract(mx.divide(rs.originalMaxPositionEmbeddings, wavelens), rs.lowFreqFactor),
    rs.highFreqFactor - rs.lowFreqFactor,
  );
  const smoothFreqs = mx.divide(scaled, mx.add(mx.divide(mx.subtract(1, smooth), rs.factor), smooth));
  return mx.where(medium, smoothFreqs, scaled);
}

/**
 * base^(-i/(dims/2)) as MLX's CUDA rope kernel computes it (exp2(-d * log2(base))
 * in float32), so a kernel given these matches mx.rope with `base`.
 */
function baseInvFrequencies(base: number, dims: number): MxArray {
  const half = dims / 2;
  const log2Base = Math.fround(Math.log2(base));
  const inv = Float32Array.from({ length: half }, (_, i) => 2 ** Math.fround(-Math.fround(i / half) * log2Base));
  return mx.float32(inv);
}

export interface Rope {
  apply: RopeFn;
  regime: (length: number) => number;
  /** Multiplies the attention scale (LongRoPE's factor on q and k, folded into q·k). */
  scoreScale: number;
  /** Arrays the RoPE owns (freed with the model). */
  arrays: MxArray[];
  /**
   * The rotation as a GPU kernel takes it (src/mlx/kernels-gemv-fused.ts), for
   * rows all in one regime, or null where a kernel cannot do it (partial rotary,
   * LongRoPE's input scale). Absent: never.
   */
  kernel?: (regime: number) => RopeKernelSpec | null;
}

/** RoPE over whole heads: theta = positionScale * position * invFreq[i] (float32 [headDim/2]). */
export interface RopeKernelSpec {
  invFreq: MxArray;
  traditional: boolean;
  positionScale: number;
}

/** Inverse frequencies per regime, made on first use and kept with the RoPE's arrays. */
function kernelSpecs(
  arrays: MxArray[],
  invFrequencies: () => MxArray[],
  traditional: boolean,
  positionScale: number,
): (regime: number) => RopeKernelSpec {
  let specs: RopeKernelSpec[] | null = null;
  return (regime) => {
    if (!specs) {
      specs = invFrequencies().map((f) => ({ invFreq: mx.keep(f), traditional, positionScale }));
      arrays.push(...specs.map((p) => p.invFreq));
    }
    return specs[Math.min(regime, specs.length - 1)] as RopeKernelSpec;
  };
}

/**
 * RoPE for Llama-family configs (plain, linear, llama3) over the first
 * rotaryDims of each head. `base` and `scaling` override the config's (Gemma's
 * local layers: their own base, no scaling).
 */
export function standardRope(
  c: ModelConfig,
  override: { base?: number; scaling?: ModelConfig["ropeScaling"] } = {},
): Rope {
  const dims = c.rotaryDims;
  const rs = override.scaling === undefined ? c.ropeScaling : override.scaling;
  const base = override.base ?? c.ropeTheta;
  if (rs?.type === "llama3") {
    const freqs = mx.keep(llama3Wavelengths(c, dims));
    const arrays = [freqs];
    return {
      apply: (x, offset) => mx.rope(x, { dims, traditional: c.ropeTraditional, freqs, offset }),
      regime: () => 0,
      scoreScale: 1,
      arrays,
      kernel: dims === c.headDim ? kernelSpecs(arrays, () => [mx.divide(1, freqs)], c.ropeTraditional, 1) : undefined,
    };
  }
  if (rs?.type === "longrope") return longRope(c);
  const scale = rs?.type === "linear" ? 1 / rs.factor : 1;
  const arrays: MxArray[] = [];
  return {
    apply: (x, offset) => mx.rope(x, { dims, traditional: c.ropeTraditional, base, scale, offset }),
    regime: () => 0,
    scoreScale: 1,
    arrays,
    kernel:
      dims === c.headDim
        ? kernelSpecs(arrays, () => [baseInvFrequencies(base, dims)], c.ropeTraditional, scale)
        : undefined,
  };
}

/**
 * Phi-3 LongRoPE with the Hugging Face rule: short factors while the sequence
 * is at most original_max_position_embeddings long, long factors beyond (regime
 * 1). q and k are both scaled by the attention factor; since RoPE is linear,
 * that is the factor squared on q·k, folded into the attention scale (two
 * fewer kernels per layer). A batch whose rows are in different regimes gets
 * both rotations and picks per row.
 */
export function longRope(c: ModelConfig, options: { alwaysLong?: boolean } = {}): Rope {
  const rs = c.ropeScaling;
  if (rs?.type !== "longrope") throw new Error("LongRoPE without longrope scaling");
  const dims = c.rotaryDims;
  const base = mx.keep(baseWavelengths(c.ropeTheta, dims));
  const short = mx.keep(mx.multiply(mx.float32(rs.shortFactor), base));
  const long = mx.keep(mx.multiply(mx.float32(rs.longFactor), base));
  const factor = rs.attentionFactor;
  const regime = (length: number) => (options.alwaysLong || length > rs.originalMaxPositionEmbeddings ? 1 : 0);
  // Partial rotary (Phi-4-mini): the factor multiplies only the rotated
  // dimensions of q and k, so it cannot fold into the attention scale.
  const partial = dims < c.headDim && factor !== 1;
  const inputScale = partial
    ? mx.keep(mx.float32(Array.from({ length: c.headDim }, (_, i) => (i < dims ? factor : 1))))
    : null;
  const rotate = (x: MxArray, offset: number | MxArray, freqs: MxArray) =>
    mx.rope(inputScale ? mx.multiply(x, mx.astype(inputScale, x.dtype)) : x, {
      dims,
      traditional: false,
      freqs,
      offset,
    });
  const apply: RopeFn = (x, offset, regimes) => {
    const first = regimes[0] ?? 0;
    if (regimes.every((r) => r === first)) return rotate(x, offset, first === 1 ? long : short);
    const isLong = mx.reshape(mx.int32(regimes), [regimes.length, 1, 1, 1]);
    return mx.where(mx.equal(isLong, 1), rotate(x, offset, long), rotate(x, offset, short));
  };
  const arrays = inputScale ? [base, short, long, inputScale] : [base, short, long];
  const whole = dims === c.headDim && !inputScale;
  return {
    apply,
    regime,
    scoreScale: partial ? 1 : factor * factor,
    arrays,
    kernel: whole ? kernelSpecs(arrays, () => [mx.divide(1, short), mx.divide(1, long)], false, 1) : undefined,
  };
}
