// PENSIEVE_KERNEL_CACHE=mlx (the default on Linux, kernel-cache.ts): pre-fills MLX's own PTX cache so
// that fast::cuda_kernel finds our kernels compiled and skips NVRTC. MLX's
// JitModule (jit_module.cpp) always calls read_cached_ptx(ptx_cache_dir(),
// module_name) first, also for custom kernels (use_disk_cache=false only stops
// the write). For each plan's first launch we build the translation unit MLX's
// build_kernel builds (custom_kernel.cpp, checked against the mirror at
// v0.32.1-26; the wheel is 0.32.4), name it as eval_gpu does,
// "<custom_kernel_X>_<hex std::hash(source)>" (std::hash from the shim, i.e.
// libstdc++'s own), and, if the entry is missing, compile it with MLX's NVRTC
// setup (nvrtc.ts) and write <dir>/<module>.txt ("<name>\t<lowered name>")
// then <dir>/<module>.ptx (the CUBIN), each via temp file + rename. Launches
// stay on MLX's cuda_kernel path (no per-launch cost). Safe by construction:
// a text that differs from MLX's by one byte gives another module name, and
// MLX compiles as before. The entry is trusted as MLX trusts its own cache.
// The text carries the header MLX was given: a long one is an #include of a
// file under MLX's include dir (kernel-header.ts), whose folder the compile adds.

import { dlopen, FFIType, ptr } from "bun:ffi";
import { existsSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pensieveHome } from "../paths";
import { Dtype } from "./array";
import { shimPath } from "./ffi";
import { cudaType, deviceComputeCapability, type InputSignature, MLX_DEFAULT_HEADER } from "./kernel-cache";
import type { KernelSpec, TemplateArg } from "./kernels";
import { compileToCubin, cudaWheelDir, type JitHeaders, mlxCompileOptions, mlxJitHeaders } from "./nvrtc";

// MLX's get_type_string (backend/common/compiled.cpp), used in template_arguments_hash.
const TYPE_STRINGS: Partial<Record<Dtype, string>> = {
  [Dtype.float32]: "float",
  [Dtype.float16]: "float16_t",
  [Dtype.bfloat16]: "bfloat16_t",
  [Dtype.float64]: "double",
  [Dtype.complex64]: "complex64_t",
  [Dtype.bool]: "bool",
  [Dtype.int8]: "int8_t",
  [Dtype.int16]: "int16_t",
  [Dtype.int32]: "int32_t",
  [Dtype.int64]: "int64_t",
  [Dtype.uint8]: "uint8_t",
  [Dtype.uint16]: "uint16_t",
  [Dtype.uint32]: "uint32_t",
  [Dtype.uint64]: "uint64_t",
};

/** MLX's kernel name: "custom_kernel_" + name + template_arguments_hash(template). */
export function mlxKernelName(spec: KernelSpec, template: ReadonlyArray<[string, TemplateArg]>): string {
  const hash = template
    .map(([, v]) => {
      if (typeof v === "number") return `_${v}`;
      if (typeof v === "boolean") return v ? "_t" : "_f";
      const t = TYPE_STRINGS[v.dtype];
      if (!t) throw new Error(`no MLX type string for dtype ${v.dtype}`);
      return `_${t}`;
    })
    .join("");
  return `custom_kernel_${spec.name}${hash}`;
}

/**
 * The text of MLX's build_kernel, byte for byte, for spec.header as MLX got it:
 * a kernel's CustomKernel.header (an include line when it went to a file).
 */
export function mlxKernelSource(
  spec: KernelSpec,
  kernelName: string,
  inputs: readonly InputSignature[],
  outputDtypes: readonly Dtype[],
  template: ReadonlyArray<[string, TemplateArg]>,
): string {
  let out = `${MLX_DEFAULT_HEADER}${spec.header ?? ""}namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n`;
  out += `__global__ void ${kernelName}(\n`;
  spec.inputs.forEach((name, i) => {
    const sig = inputs[i] as InputSignature;
    out += `    const ${cudaType(sig.dtype)}* ${name},\n`;
    if (sig.ndim > 0) {
      if (spec.source.includes(`${name}_shape`)) out += `    const __grid_constant__ Shape ${name}_shape,\n`;
      if (spec.source.includes(`${name}_strides`)) out += `    const __grid_constant__ Strides ${name}_strides,\n`;
      if (spec.source.includes(`${name}_ndim`)) out += `    const __grid_constant__ int ${name}_ndim,\n`;
    }
  });
  spec.outputs.forEach((name, i) => {
    out += `    ${cudaType(outputDtypes[i] as Dtype)}* ${name}`;
    out += i < spec.outputs.length - 1 ? ",\n" : ") {\n";
  });
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

let stdHashFn: ((data: Buffer, bytes: number) => bigint) | null = null;

/** libstdc++'s std::hash<std::string> (computed in the shim, which shares libmlx's libstdc++). */
export function stdHash(text: string): bigint {
  if (!stdHashFn) {
    const lib = dlopen(shimPath(), { pv_std_hash: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.u64 } });
    const fn = lib.symbols.pv_std_hash;
    stdHashFn = (data, bytes) => BigInt(fn(data.length ? ptr(data) : null, bytes));
  }
  const buf = Buffer.from(text, "utf8");
  return stdHashFn(buf, buf.length);
}

/** custom_kernel.cpp: fmt::format("{}_{:x}", name_, std::hash<std::string>{}(source_)). */
export function mlxModuleName(kernelName: string, source: string): string {
  return `${kernelName}_${stdHash(source).toString(16)}`;
}

/** jit_module.cpp get_ptx_path: names over 245 bytes are split into folders. */
export function mlxPtxPath(cacheDir: string, moduleName: string): string {
  const max = 245;
  if (moduleName.length <= max) return join(cacheDir, `${moduleName}.ptx`);
  let path = cacheDir;
  let offset = 0;
  while (moduleName.length - offset > max) {
    path = join(path, moduleName.slice(offset, offset + max));
    offset += max;
  }
  return join(path, `${moduleName.slice(offset)}.ptx`);
}

/** The .txt MLX reads beside the .ptx: "<kernel name>\t<lowered name>" lines. */
export function mlxKernelsText(entries: ReadonlyArray<[string, string]>): string {
  return entries.map(([n, m]) => `${n}\t${m}\n`).join("");
}

/** ptx_cache_dir(): $MLX_PTX_CACHE_DIR, else temp_directory_path()/mlx/<version>/ptx. */
export function mlxPtxCacheDir(version: string, env: Record<string, string | undefined> = process.env): string {
  if (env.MLX_PTX_CACHE_DIR) return env.MLX_PTX_CACHE_DIR;
  const tmp = env.TMPDIR || env.TMP || env.TEMP || env.TEMPDIR || "/tmp";
  return join(tmp, "mlx", version, "ptx");
}

/**
 * Sets MLX_PTX_CACHE_DIR in the C environment (Bun's process.env does not reach
 * getenv) unless already set; MLX reads it once, at its first JIT module.
 */
export function setMlxPtxCacheDir(dir: string): void {
  if (process.env.MLX_PTX_CACHE_DIR) return;
  const libc = dlopen("libc.so.6", { setenv: { args: [FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 } });
  try {
    if (libc.symbols.setenv(Buffer.from("MLX_PTX_CACHE_DIR\0"), Buffer.from(`${dir}\0`), 0) !== 0)
      throw new Error("setenv failed");
  } finally {
    libc.close();
  }
  process.env.MLX_PTX_CACHE_DIR = dir;
}

/** The engine's choice: <home>/kernel-cache/mlx-ptx (kept across reboots, unlike /tmp), unless set. */
export function useHomePtxCacheDir(): void {
  setMlxPtxCacheDir(join(pensieveHome(), "kernel-cache", "mlx-ptx"));
}

function writeAtomic(path: string, data: string | Buffer): void {
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

export interface PtxCacheStats {
  compiles: number;
  present: number;
  compileMs: number;
}

/** Writes MLX PTX-cache entries for our kernels. */
export class MlxPtxCache {
  readonly stats: PtxCacheStats = { compiles: 0, present: 0, compileMs: 0 };
  readonly #done = new Set<string>();

  constructor(
    readonly dir: string,
    readonly options: readonly string[],
    readonly headers: JitHeaders,
    readonly nvrtcLib?: string,
  ) {}

  /**
   * Makes sure MLX will find this kernel compiled; returns the .ptx path. Throws on a compile error.
   * includeDirs: folders the text's own #include lines need beyond MLX's (kernel-header.ts).
   */
  ensure(kernelName: string, source: string, includeDirs: readonly string[] = []): string {
    const moduleName = mlxModuleName(kernelName, source);
    const path = mlxPtxPath(this.dir, moduleName);
    if (this.#done.has(path)) return path;
    if (existsSync(path)) {
      this.stats.present++;
      this.#done.add(path);
      return path;
    }
    const expr = `mlx::core::cu::${kernelName}`;
    const extra = includeDirs.map((d) => `--include-path=${d}`).filter((o) => !this.options.includes(o));
    const options = [...this.options, ...extra];
    const r = compileToCubin(source, moduleName, options, this.headers, this.nvrtcLib, [expr]);
    this.stats.compiles++;
    this.stats.compileMs += r.ms;
    if (!r.ok || !r.cubin) throw new Error(`NVRTC failed for ${kernelName}: ${r.log.slice(0, 2000)}`);
    mkdirSync(dirname(path), { recursive: true });
    // .txt first: MLX opens the .ptx and then reads the names beside it.
    writeAtomic(path.replace(/\.ptx$/, ".txt"), mlxKernelsText([[expr, r.lowered[0] as string]]));
    writeAtomic(path, r.cubin);
    this.#done.add(path);
    if (process.env.PENSIEVE_KERNEL_CACHE_LOG === "1") {
      process.stderr.write(`[kernel-cache] compiled ${kernelName} in ${r.ms.toFixed(0)} ms -> ${path}\n`);
    }
    return path;
  }
}

let shared: MlxPtxCache | null | undefined;
let sharedWhy = "";

/** The process's writer (built on first use), or null with the reason in mlxPtxCacheUnavailable(). */
export function processMlxPtxCache(version: string): MlxPtxCache | null {
  if (shared !== undefined) return shared;
  try {
    const wheel = cudaWheelDir();
    if (!wheel) throw new Error("no MLX CUDA wheel found (PENSIEVE_MLX_CUDA_WHEEL)");
    const [major, minor] = deviceComputeCapability(wheel);
    const headers = mlxJitHeaders(join(wheel, "mlx", "lib", "libmlx.so"));
    shared = new MlxPtxCache(mlxPtxCacheDir(version), mlxCompileOptions(wheel, major, minor), headers);
  } catch (e) {
    sharedWhy = String(e);
    shared = null;
  }
  return shared;
}

export function mlxPtxCacheUnavailable(): string {
  return sharedWhy;
}
