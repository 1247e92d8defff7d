// The decode-layer megakernel (src/mlx/kernels-layer.ts) compiles with NVRTC 13
// for sm_90a as MLX would generate it, at Phi-3-mini's shapes (fp16, bf16; 1 and
// 4 rows), and ptxas's registers per thread stay within what the launch bounds
// ask: blocks of 4 warps, 4 an SM (<= 128 registers: 65536 per SM) by default,
// 8 an SM (64 registers, PENSIEVE_GPU_MEGA_BLOCKS_PER_SM=8), and one block of 16
// warps (PENSIEVE_GPU_MEGA_WARPS=16); and with the L2 prefetch (PENSIEVE_GPU_MEGA_PREFETCH=1). Skips without libnvrtc.
import { describe, expect, test } from "bun:test";
import { Dtype } from "../../src/mlx/array";
import { DECODE_LAYER_KERNEL, layerKernel, layerTemplate } from "../../src/mlx/kernels-layer";
import { type CudaType, nvrtcAvailable, nvrtcCompile } from "./nvrtc";

function phi3(T: "__half" | "__nv_bfloat16", rows: number, warps: number, perSm: number, prefetch = false) {
  const template = layerTemplate(
    {
      dtype: T === "__half" ? Dtype.float16 : Dtype.bfloat16,
      rows,
      hidden: 3072,
      intermediate: 8192,
      heads: 32,
      kvHeads: 32,
      headDim: 96,
    },
    { groups: [64, 64, 64, 64], eps1: 1e-5, eps2: 1e-5, traditional: false, scale: 96 ** -0.5 },
    warps,
    prefetch,
  );
  const type = (name: string): CudaType =>
    name.startsWith("w_")
      ? "uint32_t"
      : name === "pos" || name === "sync_state"
        ? "int32_t"
        : name === "rope_cs"
          ? "float"
          : T;
  return {
    ...layerKernel(template.AW as number, perSm),
    inputs: DECODE_LAYER_KERNEL.inputs.map((name) => ({ name, type: type(name), shape: name === "kc" })),
    outputs: DECODE_LAYER_KERNEL.outputs.map((name) => ({
      name,
      type: (name === "part" || name === "stats" ? "float" : T) as CudaType,
    })),
    template: { T, ...template },
    warps: template.AW as number,
  };
}

describe.skipIf(!nvrtcAvailable)("decode-layer megakernel compiles with NVRTC (sm_90a)", () => {
  for (const [T, rows, warps, perSm, prefetch] of [
    ["__half", 1, 4, 4],
    ["__nv_bfloat16", 1, 4, 4],
    ["__half", 4, 4, 4],
    ["__half", 1, 4, 8],
    ["__half", 1, 16, 1],
    ["__half", 1, 4, 4, true],
  ] as Array<["__half" | "__nv_bfloat16", number, number, number, boolean?]>) {
    test(`Phi-3-mini ${T} rows ${rows}, blocks of ${warps} warps, ${perSm} an SM${prefetch ? ", L2 prefetch" : ""}`, () => {
      const k = phi3(T, rows, warps, perSm, prefetch);
      const r = nvrtcCompile(k, ["--ptxas-options=-v"]);
      if (!r.ok) console.error(r.log);
      expect(r.ok).toBe(true);
      const registers = Number(/Used (\d+) registers/.exec(r.log)?.[1] ?? Number.NaN);
      const spilled = Number(/(\d+) bytes spill stores/.exec(r.log)?.[1] ?? 0);
      const shared = /(\d+) bytes smem/.exec(r.log)?.[1] ?? "?";
      console.log(
        `[nvrtc] layer ${T} rows ${rows}: ${r.ms.toFixed(0)} ms, ${registers} registers, ${spilled} bytes spilled, ${shared} bytes shared, ${k.warps} warps a block`,
      );
      expect(registers * k.warps * 32 * perSm).toBeLessThanOrEqual(65536);
    }, 120_000);
  }
});
