// Compiles a custom kernel's source as MLX's cuda_kernel would generate it
// (mlx/backend/cuda/custom_kernel.cpp: default header, `namespace mlx::core::cu`,
// the signature from the inputs' dtypes, template constants), with NVRTC on
// this machine (no GPU needed), for sm_90a. MLX's device/utils.cuh is stood in
// for by the CUDA headers it includes plus its Shape/Strides types.
// Library: PENSIEVE_NVRTC or /tmp/cu/w/nvidia/cu13/lib/libnvrtc.so.13; headers beside it.
import { dlopen, FFIType, ptr } from "bun:ffi";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";

export const NVRTC_PATH = process.env.PENSIEVE_NVRTC ?? "/tmp/cu/w/nvidia/cu13/lib/libnvrtc.so.13";
export const nvrtcAvailable = existsSync(NVRTC_PATH);

/**
 * MLX's own device headers (mlx/backend/cuda/device/*.cuh from the MLX source of
 * the pinned minor version), when present: then the real default header is used.
 */
export const MLX_INCLUDE = process.env.PENSIEVE_MLX_CUDA_INCLUDE ?? "/tmp/mlxinc";
const mlxHeaders = existsSync(join(MLX_INCLUDE, "mlx/backend/cuda/device/utils.cuh"));
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
  inputs: ReadonlyArray<{ name: string; type: CudaType; shape?: boolean; strides?: boolean }>;
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

const symbols = {
  nvrtcCreateProgram: {
    args: [FFIType.ptr, FFIType.ptr, FFIType.ptr, FFIType.i32, FFIType.ptr, FFIType.ptr],
    returns: FFIType.i32,
  },
  nvrtcCompileProgram: { args: [FFIType.ptr, FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  nvrtcGetProgramLogSize: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  nvrtcGetProgramLog: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  nvrtcDestroyProgram: { args: [FFIType.ptr], returns: FFIType.i32 },
  nvrtcGetCUBINSize: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  nvrtcGetCUBIN: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
} as const;

let lib: ReturnType<typeof dlopen<typeof symbols>>["symbols"] | null = null;

const cstr = (s: string) => Buffer.from(`${s}\0`, "utf8");

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
  lib ??= dlopen(NVRTC_PATH, symbols).symbols;
  const include = join(dirname(NVRTC_PATH), "..", "include");
  const prog = new BigUint64Array(1);
  const src = cstr(mlxKernelSource(k));
  const created = lib.nvrtcCreateProgram(ptr(prog), src, cstr(`${k.name}.cu`), 0, null, null);
  if (created !== 0) throw new Error(`nvrtcCreateProgram: ${created}`);
  const optionList = [
    "--device-as-default-execution-space",
    "--gpu-architecture=sm_90a",
    `--include-path=${include}`,
    `--include-path=${join(include, "cccl")}`,
    ...(mlxHeaders ? [`--include-path=${MLX_INCLUDE}`] : []),
    // ptxas's resource lines (registers, spills) in the log.
    ...(extra.includes("--ptxas-options=-v") ? [] : ["--ptxas-options=-v"]),
    ...extra,
  ];
  const optionBufs = optionList.map(cstr);
  const optionPtrs = BigUint64Array.from(optionBufs.map((b) => BigInt(ptr(b))));
  const handle = Number(prog[0]);
  const t0 = performance.now();
  const status = lib.nvrtcCompileProgram(handle as never, optionList.length, ptr(optionPtrs));
  const ms = performance.now() - t0;
  const size = new BigUint64Array(1);
  lib.nvrtcGetProgramLogSize(handle as never, ptr(size));
  const log = Buffer.alloc(Number(size[0]) + 1);
  lib.nvrtcGetProgramLog(handle as never, log);
  let cubin: Buffer | null = null;
  if (status === 0 && lib.nvrtcGetCUBINSize(handle as never, ptr(size)) === 0) {
    cubin = Buffer.alloc(Number(size[0]));
    if (lib.nvrtcGetCUBIN(handle as never, cubin) !== 0) cubin = null;
  }
  lib.nvrtcDestroyProgram(ptr(prog));
  return { ok: status === 0, log: log.toString("utf8").replace(/\0+$/, ""), ms, cubin };
}
