// A disk cache of our CUDA kernels compiled to CUBIN (PENSIEVE_KERNEL_CACHE=1;
// off by default). MLX 0.32's fast::cuda_kernel compiles with NVRTC in every
// process and never writes custom kernels to its PTX cache (custom_kernel.cpp:
// get_jit_module(..., false)): the fused decode kernels cost ~9 s per engine
// start on an H200. Here a kernel plan's first launch writes the translation
// unit exactly as MLX's build_kernel does, except that the kernel is extern "C"
// (precompiled kernels are looked up by plain name) and the input shapes the
// source reads arrive as trailing int scalars (precompiled_cuda_kernel passes
// inputs, outputs, scalars; no Shape arguments). It is compiled with MLX's own
// NVRTC, headers and options (nvrtc.ts), stored under
// <home>/kernel-cache/<sha256>.cubin (temp file + rename) and handed to the
// shim's pv_kernel_plan_set_precompiled. An entry that fails its checksum is
// deleted and compiled again. Kernels that read <input>_strides are not cached.
// The text keeps spec.header inline even where MLX was given an include line
// (kernel-header.ts): it is our own compile of our own text, keyed by its
// sha256, and MLX hashes the CUBIN here, not this text.

import { dlopen, FFIType, ptr } from "bun:ffi";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Dtype, dtypeName } from "./array";
import type { KernelSpec, TemplateArg } from "./kernels";
import { compileToCubin, cudaWheelDir, type JitHeaders, mlxCompileOptions, mlxJitHeaders, nvrtcVersion } from "./nvrtc";

/**
 * PENSIEVE_KERNEL_CACHE: "mlx" (the default on Linux: MLX's own PTX cache
 * pre-filled, kernel-cache-mlx.ts; on an H100 a short generation's start fell
 * from 10.7 s to 1.9 s with the decode rate unchanged,
 * bench/results/gpu-h100-2026-12-07/), "1" (CUBINs launched as precompiled
 * kernels, this file) or "0" (off: MLX compiles with NVRTC at every start).
 */
export function kernelCacheMode(env: Record<string, string | undefined> = process.env): "mlx" | "cubin" | null {
  const setting = env.PENSIEVE_KERNEL_CACHE;
  if (setting === "1") return "cubin";
  if (setting === "mlx" || (setting === undefined && process.platform === "linux")) return "mlx";
  return null;
}

const CUDA_TYPES: Partial<Record<Dtype, string>> = {
  [Dtype.bool]: "bool",
  [Dtype.int8]: "int8_t",
  [Dtype.int16]: "int16_t",
  [Dtype.int32]: "int32_t",
  [Dtype.int64]: "int64_t",
  [Dtype.uint8]: "uint8_t",
  [Dtype.uint16]: "uint16_t",
  [Dtype.uint32]: "uint32_t",
  [Dtype.uint64]: "uint64_t",
  [Dtype.float16]: "__half",
  [Dtype.bfloat16]: "__nv_bfloat16",
  [Dtype.float32]: "float",
  [Dtype.float64]: "double",
  [Dtype.complex64]: "mlx::core::cu::complex64_t",
};

/** MLX's dtype_to_cuda_type. */
export function cudaType(d: Dtype): string {
  return CUDA_TYPES[d] ?? "unknown";
}

/** Why a kernel cannot go through precompiled_cuda_kernel, or null. */
export function notPrecompilable(spec: KernelSpec): string | null {
  const strides = spec.inputs.find((n) => spec.source.includes(`${n}_strides`));
  return strides ? `reads ${strides}_strides (precompiled kernels get no strides)` : null;
}

/** The kernel's name: MLX's custom_kernel_<name><template hash>. */
export function precompiledName(spec: KernelSpec, template: ReadonlyArray<[string, TemplateArg]>): string {
  const hash = template
    .map(([, v]) =>
      typeof v === "number" ? `_${v}` : typeof v === "boolean" ? (v ? "_t" : "_f") : `_${dtypeName(v.dtype)}`,
    )
    .join("");
  return `custom_kernel_${spec.name}${hash}`;
}

export interface InputSignature {
  dtype: Dtype;
  ndim: number;
}

/** The default header MLX puts before every custom kernel (custom_kernel.cpp). */
export const MLX_DEFAULT_HEADER = `
#include "mlx/backend/cuda/device/utils.cuh"

#include <cooperative_groups.h>

`;

/**
 * The translation unit of MLX's build_kernel (custom_kernel.cpp) with the kernel
 * extern "C" and the shapes the source reads as trailing `int <input>_shape_<i>`
 * parameters, gathered into a local Shape of the same name.
 */
export function precompiledSource(
  spec: KernelSpec,
  kernelName: string,
  inputs: readonly InputSignature[],
  outputDtypes: readonly Dtype[],
  template: ReadonlyArray<[string, TemplateArg]>,
): string {
  const params: string[] = [];
  const shapeParams: string[] = [];
  const prologue: string[] = [];
  spec.inputs.forEach((name, i) => {
    const sig = inputs[i] as InputSignature;
    params.push(`    const ${cudaType(sig.dtype)}* ${name}`);
    if (sig.ndim > 0 && spec.source.includes(`${name}_shape`)) {
      const dims = Array.from({ length: sig.ndim }, (_, d) => `${name}_shape_${d}`);
      for (const d of dims) shapeParams.push(`    int ${d}`);
      prologue.push(`  const Shape ${name}_shape = {{${dims.join(", ")}}};`);
    }
    if (sig.ndim > 0 && spec.source.includes(`${name}_ndim`))
      prologue.push(`  constexpr int ${name}_ndim = ${sig.ndim};`);
  });
  spec.outputs.forEach((name, i) => {
    params.push(`    ${cudaType(outputDtypes[i] as Dtype)}* ${name}`);
  });
  params.push(...shapeParams);
  let out = `${MLX_DEFAULT_HEADER}${spec.header ?? ""}namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n`;
  out += `extern "C" __global__ void ${kernelName}(\n${params.join(",\n")}) {\n`;
  if (prologue.length) out += `${prologue.join("\n")}\n`;
  if (template.length) {
    for (const [n, v] of template) {
      out +=
        typeof v === "number"
          ? `  constexpr int ${n} = ${v};\n`
          : typeof v === "boolean"
            ? `  constexpr bool ${n} = ${v};\n`
            : `  using ${n} = ${cudaType(v.dtype)};\n`;
    }
    out += "\n";
  }
  return `${out}${spec.source}\n}\n\n} // namespace mlx::core::cu\n`;
}

const MAGIC = Buffer.from("PVCUBIN1", "latin1");
const ELF = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

export interface CacheStats {
  compiles: number;
  hits: number;
  rejected: number;
  compileMs: number;
}

export interface CompiledKernel {
  cubin: Buffer;
  key: string;
  fromDisk: boolean;
}

/** CUBINs on disk keyed by sha256(source, options, NVRTC version, arch, MLX's headers). */
export class KernelCache {
  readonly stats: CacheStats = { compiles: 0, hits: 0, rejected: 0, compileMs: 0 };
  readonly #salt: string;
  /** CUBINs this process already has (plans made again for the same source skip the disk). */
  readonly #loaded = new Map<string, Buffer>();

  constructor(
    readonly dir: string,
    readonly options: readonly string[],
    readonly nvrtc: string,
    readonly arch: string,
    readonly headers: JitHeaders,
    readonly nvrtcLib?: string,
  ) {
    const h = createHash("sha256");
    for (const s of headers.sources) h.update(s).update("\0");
    this.#salt = [options.join("\n"), nvrtc, arch, h.digest("hex")].join("\0");
  }

  key(source: string): string {
    return createHash("sha256").update(source).update("\0").update(this.#salt).digest("hex");
  }

  path(key: string): string {
    return join(this.dir, `${key}.cubin`);
  }

  /** The entry's CUBIN, or null (a damaged entry is deleted). */
  read(key: string): Buffer | null {
    const path = this.path(key);
    if (!existsSync(path)) return null;
    let data: Buffer;
    try {
      data = readFileSync(path);
    } catch {
      return null;
    }
    const cubin = data.subarray(MAGIC.length + 32);
    const ok =
      data.length > MAGIC.length + 32 + ELF.length &&
      data.subarray(0, MAGIC.length).equals(MAGIC) &&
      createHash("sha256")
        .update(cubin)
        .digest()
        .equals(data.subarray(MAGIC.length, MAGIC.length + 32)) &&
      cubin.subarray(0, ELF.length).equals(ELF);
    if (ok) return Buffer.from(cubin);
    this.stats.rejected++;
    try {
      unlinkSync(path);
    } catch {
      // already gone (another process)
    }
    return null;
  }

  write(key: string, cubin: Buffer): void {
    mkdirSync(this.dir, { recursive: true });
    const path = this.path(key);
    const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    writeFileSync(tmp, Buffer.concat([MAGIC, createHash("sha256").update(cubin).digest(), cubin]));
    renameSync(tmp, path);
  }

  /** The CUBIN for this source: from disk, else compiled and stored. Throws on a compile error. */
  get(source: string, programName: string): CompiledKernel {
    const key = this.key(source);
    const known = this.#loaded.get(key);
    if (known) return { cubin: known, key, fromDisk: true };
    const hit = this.read(key);
    if (hit) {
      this.stats.hits++;
      this.#loaded.set(key, hit);
      return { cubin: hit, key, fromDisk: true };
    }
    const r = compileToCubin(source, programName, this.options, this.headers, this.nvrtcLib);
    this.stats.compiles++;
    this.stats.compileMs += r.ms;
    if (!r.ok || !r.cubin) throw new Error(`NVRTC failed for ${programName}: ${r.log.slice(0, 2000)}`);
    this.write(key, r.cubin);
    this.#loaded.set(key, r.cubin);
    if (process.env.PENSIEVE_KERNEL_CACHE_LOG === "1") {
      process.stderr.write(`[kernel-cache] compiled ${programName} in ${r.ms.toFixed(0)} ms -> ${key.slice(0, 12)}\n`);
    }
    return { cubin: r.cubin, key, fromDisk: false };
  }
}

/** The current CUDA device's compute capability (PENSIEVE_CUDA_ARCH="9.0" overrides), via libcudart. */
export function deviceComputeCapability(wheel: string): [number, number] {
  const forced = process.env.PENSIEVE_CUDA_ARCH?.match(/^(\d+)\.(\d+)$/);
  if (forced) return [Number(forced[1]), Number(forced[2])];
  const lib = dlopen(join(wheel, "nvidia", "cu13", "lib", "libcudart.so.13"), {
    cudaGetDevice: { args: [FFIType.ptr], returns: FFIType.i32 },
    cudaDeviceGetAttribute: { args: [FFIType.ptr, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
  });
  try {
    const dev = new Int32Array(1);
    const v = new Int32Array(1);
    if (lib.symbols.cudaGetDevice(ptr(dev)) !== 0) throw new Error("cudaGetDevice failed");
    // cudaDevAttrComputeCapabilityMajor = 75, Minor = 76
    if (lib.symbols.cudaDeviceGetAttribute(ptr(v), 75, dev[0] as number) !== 0)
      throw new Error("no compute capability");
    const major = v[0] as number;
    if (lib.symbols.cudaDeviceGetAttribute(ptr(v), 76, dev[0] as number) !== 0)
      throw new Error("no compute capability");
    return [major, v[0] as number];
  } finally {
    lib.close();
  }
}

let shared: KernelCache | null | undefined;
let sharedWhy = "";

/** The process's cache (built on first use), or null with the reason in kernelCacheUnavailable(). */
export function processKernelCache(dir: string): KernelCache | null {
  if (shared !== undefined) return shared;
  try {
    const wheel = cudaWheelDir();
    if (!wheel) throw new Error("no MLX CUDA wheel found (PENSIEVE_MLX_CUDA_WHEEL)");
    const [major, minor] = deviceComputeCapability(wheel);
    const headers = mlxJitHeaders(join(wheel, "mlx", "lib", "libmlx.so"));
    shared = new KernelCache(dir, mlxCompileOptions(wheel, major, minor), nvrtcVersion(), `${major}.${minor}`, headers);
  } catch (e) {
    sharedWhy = String(e);
    shared = null;
  }
  return shared;
}

export function kernelCacheUnavailable(): string {
  return sharedWhy;
}
