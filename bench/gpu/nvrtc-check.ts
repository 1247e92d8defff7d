// Compiles the batched 4-bit matmul's CUDA source (src/mlx/kernels-qmm.ts) with
// NVRTC for sm_90a as MLX's cuda_kernel would build it (MLX's default header,
// the signature with x_shape/x_ndim/w_shape, template constants as constexpr),
// without a GPU: per row tile the compile time and ptxas's registers / spills.
//   bun bench/gpu/nvrtc-check.ts [--nvrtc /path/libnvrtc.so.13] [--mlx-include DIR] [--cuda-include DIR]
// Defaults point at an unpacked mlx-cuda-13 wheel and nvidia-cuda-nvrtc/runtime wheels under /tmp/cu/w.
import { CString, dlopen, FFIType, ptr } from "bun:ffi";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QMM_KERNEL, QMM_ROW_TILES, qmmHeader, qmmMaxSlice } from "../../src/mlx/kernels-qmm";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? (args[i + 1] as string) : fallback;
};
const nvrtcPath = flag("--nvrtc", "/tmp/cu/w/nvidia/cu13/lib/libnvrtc.so.13");
const mlxInclude = flag("--mlx-include", "/tmp/cu/w/mlx/include");
const cudaInclude = flag("--cuda-include", "/tmp/cu/w/nvidia/cu13/include");

// The wheel embeds MLX's device headers in libmlx (not as files): a stand-in with
// what utils.cuh declares that generated kernels see (its includes and Shape/Strides).
const standIn = join(tmpdir(), "pv-nvrtc-include");
if (!existsSync(join(mlxInclude, "mlx/backend/cuda/device/utils.cuh"))) {
  mkdirSync(join(standIn, "mlx/backend/cuda/device"), { recursive: true });
  writeFileSync(
    join(standIn, "mlx/backend/cuda/device/utils.cuh"),
    `#pragma once
#include "mlx/backend/cuda/device/config.h"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/std/array>
#include <cuda/std/limits>
#include <cuda/std/tuple>
namespace mlx::core::cu {
using Shape = cuda::std::array<int32_t, MAX_NDIM>;
using Strides = cuda::std::array<int64_t, MAX_NDIM>;
}
`,
  );
}

const P = FFIType.ptr;
const lib = dlopen(nvrtcPath, {
  nvrtcCreateProgram: { args: [P, P, P, FFIType.i32, P, P], returns: FFIType.i32 },
  nvrtcCompileProgram: { args: [P, FFIType.i32, P], returns: FFIType.i32 },
  nvrtcGetProgramLogSize: { args: [P, P], returns: FFIType.i32 },
  nvrtcGetProgramLog: { args: [P, P], returns: FFIType.i32 },
  nvrtcDestroyProgram: { args: [P], returns: FFIType.i32 },
}).symbols;

const cstr = (s: string) => Buffer.from(`${s}\0`);

/** The source MLX 0.32's cuda_kernel generates (mlx/backend/cuda/custom_kernel.cpp, build_kernel). */
function mlxSource(T: string, out: string, constants: Record<string, string>, cluster: number): string {
  const consts = Object.entries(constants)
    .map(([k, v]) =>
      v.startsWith("__")
        ? `  using ${k} = ${v};`
        : `  constexpr ${v === "true" || v === "false" ? "bool" : "int"} ${k} = ${v};`,
    )
    .join("\n");
  return `
#include "mlx/backend/cuda/device/utils.cuh"

#include <cooperative_groups.h>

#define inf cuda::std::numeric_limits<float>::infinity()

${qmmHeader(cluster)}namespace mlx::core::cu {

namespace cg = cooperative_groups;

__global__ void custom_kernel_pv_qmm_w4(
    const ${T}* x,
    const __grid_constant__ Shape x_shape,
    const __grid_constant__ int x_ndim,
    const uint32_t* w,
    const __grid_constant__ Shape w_shape,
    const ${T}* scales,
    const ${T}* biases,
    ${out}* y) {
${consts}

${QMM_KERNEL.source}
}

} // namespace mlx::core::cu
`;
}

function compile(name: string, source: string): { ok: boolean; ms: number; log: string } {
  const prog = new BigUint64Array(1);
  if (lib.nvrtcCreateProgram(ptr(prog), cstr(source), cstr(`${name}.cu`), 0, null, null) !== 0) {
    throw new Error("nvrtcCreateProgram failed");
  }
  const handle = Number(prog[0]);
  const opts = [
    "--gpu-architecture=sm_90a",
    "--std=c++17",
    "-default-device",
    `-I${mlxInclude}`,
    `-I${standIn}`,
    `-I${cudaInclude}`,
    `-I${cudaInclude}/cccl`,
    `-I${mlxInclude}/cccl`,
    "--ptxas-options=-v",
  ].map(cstr);
  const ptrs = new BigUint64Array(opts.map((o) => BigInt(ptr(o))));
  const t0 = performance.now();
  const rc = lib.nvrtcCompileProgram(handle as never, opts.length, ptr(ptrs));
  const ms = performance.now() - t0;
  const size = new BigUint64Array(1);
  lib.nvrtcGetProgramLogSize(handle as never, ptr(size));
  const buf = Buffer.alloc(Number(size[0]) + 1);
  lib.nvrtcGetProgramLog(handle as never, ptr(buf));
  lib.nvrtcDestroyProgram(ptr(prog));
  return { ok: rc === 0, ms, log: new CString(ptr(buf)).toString() };
}

let failed = 0;
for (const [T, tname] of [
  ["__half", "f16"],
  ["__nv_bfloat16", "bf16"],
] as const) {
  for (const mt of QMM_ROW_TILES) {
    for (const mode of ["one slice", "float atomics", "cluster of 4"] as const) {
      if (tname === "bf16" && mode === "float atomics") continue; // the float output differs only in the store
      const warps = mt >= 32 ? 8 : 4;
      const split = mode === "float atomics";
      const cluster = mode === "cluster of 4" ? 4 : 0;
      const src = mlxSource(
        T,
        split ? "float" : T,
        {
          T,
          MT: String(mt),
          WARPS: String(warps),
          GROUP: "64",
          F32_OUT: String(split),
          CLUSTER: String(cluster),
          XBYTES: String(qmmMaxSlice(mt) * mt * 2),
        },
        cluster,
      );
      const r = compile(`qmm_${tname}_${mt}`, src);
      const regs = /Used (\d+) registers/.exec(r.log)?.[1] ?? "?";
      const spill = /(\d+) bytes spill stores/.exec(r.log)?.[1] ?? "?";
      console.log(
        `${tname} MT=${mt} warps=${warps} ${mode}: ${r.ok ? "ok" : "FAILED"} ${r.ms.toFixed(0)} ms, ${regs} registers, ${spill} bytes spilled`,
      );
      if (!r.ok || /error/i.test(r.log)) {
        failed++;
        console.log(r.log.slice(0, 6000));
      } else if (/warning/i.test(r.log))
        console.log(
          r.log
            .split("\n")
            .filter((l) => /warning/i.test(l))
            .join("\n"),
        );
    }
  }
}
process.exit(failed ? 1 : 0);
