// The split-K decode GEMV (src/mlx/kernels-gemv-split.ts, PENSIEVE_GEMV_SPLITK) of every
// variant compiles with NVRTC 13 for sm_90a as MLX would generate it, at Phi-3-mini's decode
// shapes and the configurations PENSIEVE_GEMV_SPLITK gives (auto, 2, 4, 8): no spills, a block's
// registers within an SM's 64K (else the launch fails), and each compile short (MLX compiles on
// first use, in the decode path). Prints registers, blocks an SM by registers, compile time.
import { describe, expect, test } from "bun:test";
import { GEMV_KERNEL, GEMV_RMS_NORM_KERNEL, type GemvSpec, splitSpec } from "../../src/mlx/kernels-gemv";
import {
  GEMV_NORM_ROPE_KERNEL,
  GEMV_NORM_ROPE_QKV_KERNEL,
  GEMV_NORM_SWIGLU_KERNEL,
  GEMV_RESIDUAL_KERNEL,
} from "../../src/mlx/kernels-gemv-fused";
import { splitConfig } from "../../src/mlx/kernels-gemv-split";
import { type CudaType, nvrtcAvailable, nvrtcCompile, ptxasResources } from "./nvrtc";

const H = "__half" as CudaType;
const inputs = (extra: string[]) => [
  { name: "x", type: H },
  { name: "w", type: "uint32_t" as CudaType },
  { name: "scales", type: H },
  { name: "biases", type: H },
  ...extra.map((name) => ({
    name,
    type: (name === "pos" ? "int32_t" : name === "inv_freq" || name === "rope_cs" ? "float" : H) as CudaType,
  })),
];
const rope = { HD: 96, ROTATED: 6144, TRADITIONAL: false, POS_SCALE_BITS: 1065353216 };

// Phi-3-mini's decode launches: label, spec, N, K, extra template constants.
const shapes: Array<[string, GemvSpec, number, number, Record<string, number | boolean>]> = [
  ["q|k|v + rms_norm + rope, q/k/v outputs", GEMV_NORM_ROPE_QKV_KERNEL, 9216, 3072, { ...rope, QS: 3072, KVS: 3072 }],
  ["o + residual", GEMV_RESIDUAL_KERNEL, 3072, 3072, {}],
  ["gate|up + rms_norm + swiglu", GEMV_NORM_SWIGLU_KERNEL, 16384, 3072, {}],
  ["down + residual", GEMV_RESIDUAL_KERNEL, 3072, 8192, {}],
  ["lm_head + rms_norm", GEMV_RMS_NORM_KERNEL, 32064, 3072, {}],
  ["lm_head", GEMV_KERNEL, 32064, 3072, {}],
  ["q|k|v + rms_norm + rope (one output: verify passes, prefill)", GEMV_NORM_ROPE_KERNEL, 9216, 3072, rope],
];
// auto (3 at K = 3072, 8 at 8192), 2 and 8 for each launch; 4 (4 and 16 loads) for down, whose 2 chunks a thread
// at 4 rows are the most registers (76 here: one 512-thread block an SM). ~2 s a compile here.
const settings = (k: number): Record<string, string>[] => [
  { PENSIEVE_GEMV_SPLITK: "auto" },
  { PENSIEVE_GEMV_SPLITK: "2" },
  { PENSIEVE_GEMV_SPLITK: "8" },
  ...(k === 8192
    ? [{ PENSIEVE_GEMV_SPLITK: "4" }, { PENSIEVE_GEMV_SPLITK: "4", PENSIEVE_GEMV_SPLITK_LOADS: "16" }]
    : []),
];

describe.skipIf(!nvrtcAvailable)("split-K GEMV compiles with NVRTC (sm_90a), Phi-3-mini decode", () => {
  for (const [label, spec, n, k, extra] of shapes) {
    for (const env of settings(k)) {
      const c = splitConfig({ rows: 4, warps: 4 }, k, env);
      const split = c.split ?? 1;
      const name = `${label} N=${n} K=${k}: split ${split} x ${c.warps / split} groups, ${c.loads} loads (${Object.values(env).join(" ")})`;
      test(name, () => {
        const s = splitSpec(spec);
        const outputs = (spec.outputs ?? ["y"]).map((o) => ({ name: o, type: H }));
        const template = {
          ...{ T: "__half", M: 1, N: n, K: k, ROWS: c.rows, WARPS: c.warps, GROUP: 64, EPS_BITS: 925353388 },
          ...{ SPLIT: split, LOADS: c.loads ?? 8, ...extra },
        };
        const r = nvrtcCompile({ ...s, inputs: inputs(spec.inputs.slice(4)), outputs, template });
        if (!r.ok) console.error(r.log);
        expect(r.ok).toBe(true);
        const res = ptxasResources(r.log);
        expect(res).not.toBeNull();
        const { registers, spills } = res as { registers: number; spills: number };
        const threads = c.warps * 32;
        // Registers are given a warp at a time in units of 256 (8 a thread).
        const perBlock = Math.ceil(registers / 8) * 8 * threads;
        const blocks = Math.min(Math.floor(65536 / perBlock), Math.floor(2048 / threads));
        console.log(
          `[nvrtc] split ${name}: ${r.ms.toFixed(0)} ms, ${registers} registers, ${spills} bytes spilled, ` +
            `${threads} threads a block, ${blocks} blocks (${(blocks * threads) / 32} warps) an SM by registers`,
        );
        expect(spills).toBe(0);
        expect(blocks).toBeGreaterThanOrEqual(1);
        expect(r.ms).toBeLessThan(15_000);
      }, 60_000);
    }
  }
});
