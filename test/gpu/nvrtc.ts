// Compiles a custom kernel's source as MLX's cuda_kernel would generate it
// (mlx/backend/cuda/custom_kernel.cpp: default header, `namespace mlx::core::cu`,
// the signature from the inputs' dtypes, template constants), with NVRTC on
// this machine (no GPU needed), for sm_90a, through the engine's binding
// (src/mlx/nvrtc.ts: MLX's wheel, its embedded device headers and options).
// Without the wheel's libmlx.so, MLX's device/utils.cuh is stood in for by the
// CUDA headers it includes plus its Shape/Strides types.
// Library: PENSIEVE_NVRTC or the MLX CUDA wheel's libnvrtc.so.13 (src/mlx/nvrtc.ts).
import { join } from "node:path";
import {
  compileToCubin,
  cudaWheelDir,
  type JitHeaders,
  mlxCompileOptions,
  mlxJitHeaders,
  nvrtcPath,
  nvrtcAvailable as present,
} from "../../src/mlx/nvrtc";

export const NVRTC_PATH = nvrtcPath() ?? "vendor/cuda-compile-kit/nvidia/cu13/lib/libnvrtc.so.13 (npm test makes it)";
export const nvrtcAvailable = present();

const wheel = cudaWheelDir();
let jitHeaders: JitHeaders | null = null;
try {
  jitHeaders = wheel ? mlxJitHeaders(join(wheel, "mlx", "lib", "libmlx.so")) : null;
} catch {
  jitHeaders = null;
}
const mlxHeaders = jitHeaders !== null;
const MLX_DEFAULT_HEADER = `
#include "mlx/backend/cuda/device/utils.cuh"

#include <cooperative_groups.h>

`;

const STANDIN = `
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/std/array>
#include <cooperative_groups.h>
namespace mlx::core::cu {
constexpr int MAX_NDIM = 10;
using Shape = cuda::std::array<int32_t, MAX_NDIM>;
using Strides = cuda::std::array<int64_t, MAX_NDIM>;
}
`;

export type CudaType = "__half" | "__nv_bfloat16" | "float" | "int32_t" | "uint32_t";

export interface NvrtcKernel {
  name: string;
  header: string;
  source: string;
  inputs: ReadonlyArray<{ name: string; type: CudaType; shape?: boolean; strides?: boolean; ndim?: boolean }>;
  outputs: ReadonlyArray<{ name: string; type: CudaType }>;
  /** Template constants: number -> int, boolean -> bool, string -> type alias. */
  template: Readonly<Record<string, number | boolean | string>>;
}

/** The whole translation unit, as MLX writes it. */
export function mlxKernelSource(k: NvrtcKernel): string {
  const params = [
    ...k.inputs.flatMap((i) => [
      `    const ${i.type}* ${i.name}`,
      ...(i.shape ? [`    const __grid_constant__ Shape ${i.name}_shape`] : []),
      ...(i.strides ? [`    const __grid_constant__ Strides ${i.name}_strides`] : []),
      ...(i.ndim ? [`    const __grid_constant__ int ${i.name}_ndim`] : []),
    ]),
    ...k.outputs.map((o) => `    ${o.type}* ${o.name}`),
  ];
  const constants = Object.entries(k.template).map(([n, v]) =>
    typeof v === "string"
      ? `  using ${n} = ${v};`
      : `  constexpr ${typeof v === "boolean" ? "bool" : "int"} ${n} = ${v};`,
  );
  return `${mlxHeaders ? MLX_DEFAULT_HEADER : STANDIN}${k.header}namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n__global__ void ${k.name}(\n${params.join(",\n")}) {\n${constants.join("\n")}\n\n${k.source}\n}\n\n} // namespace mlx::core::cu\n`;
}

/** ptxas's registers per thread and spill bytes (stores) from a compile's log, when it printed them. */
export function ptxasResources(log: string): { registers: number; spills: number } | null {
  const regs = log.match(/Used (\d+) registers/);
  if (!regs) return null;
  const spill = log.match(/(\d+) bytes spill stores/);
  return { registers: Number(regs[1]), spills: spill ? Number(spill[1]) : 0 };
}

/**
 * Compiles for sm_90a; returns ok, the log (with ptxas's resource lines), the compile time and the CUBIN.
 * `extra`: more NVRTC options.
 */
export function nvrtcCompile(
  k: NvrtcKernel,
  extra: string[] = [],
): { ok: boolean; log: string; ms: number; cubin: Buffer | null } {
  const include = join(NVRTC_PATH, "..", "..", "include");
  const base = wheel
    ? mlxCompileOptions(wheel, 9, 0)
    : [
        "--device-as-default-execution-space",
        "--gpu-architecture=sm_90a",
        `--include-path=${include}`,
        `--include-path=${join(include, "cccl")}`,
      ];
  const options = [
    ...base,
    // ptxas's resource lines (registers, spills) in the log.
    ...(extra.includes("--ptxas-options=-v") ? [] : ["--ptxas-options=-v"]),
    ...extra,
  ];
  return compileToCubin(mlxKernelSource(k), k.name, options, jitHeaders ?? undefined, NVRTC_PATH);
}
