// NVRTC through bun:ffi, set up as MLX's CUDA backend runs it
// (mlx/backend/cuda/jit_module.cpp, MLX 0.32): the same libnvrtc (the MLX CUDA
// wheel's nvidia/cu13/lib), the same in-memory device headers (read out of
// libmlx.so, where MLX embeds them as jit_source_* arrays; the wheel has no
// .cuh files), the same options (--device-as-default-execution-space,
// --gpu-architecture=sm_XY[a], the wheel's include paths). Used by the kernel
// cache (kernel-cache.ts) and by tests/benches that compile kernels without a GPU.
// Wheel: PENSIEVE_MLX_CUDA_WHEEL, else vendor/mlx-cuda-<version>, else the tests' vendor/cuda-compile-kit
// (the first with NVRTC beside it: cudaWheelDir).
// Library: PENSIEVE_NVRTC overrides <wheel>/nvidia/cu13/lib/libnvrtc.so.13.
import { CString, dlopen, FFIType, ptr } from "bun:ffi";
import { closeSync, existsSync, openSync, readdirSync, readSync } from "node:fs";
import { dirname, join } from "node:path";
import { VENDOR_DIR } from "../paths";
import { runtimeLayout } from "./backend";

const nvrtcIn = (wheel: string) => join(wheel, "nvidia", "cu13", "lib", "libnvrtc.so.13");

/**
 * The unpacked MLX CUDA wheel (holds mlx/ and nvidia/), or null: the first of
 * PENSIEVE_MLX_CUDA_WHEEL, the backend's wheel and the tests' compile kit
 * (scripts/cuda-compile-kit.ts, whose mlx/ links to that wheel) that has NVRTC
 * beside it, else the first that has libmlx. On a GPU machine the wheel's
 * nvidia/ is Python's packages; without a GPU only the kit has NVRTC.
 */
export function cudaWheelDir(): string | null {
  const candidates = [process.env.PENSIEVE_MLX_CUDA_WHEEL, safeWheelDir(), join(VENDOR_DIR, "cuda-compile-kit")];
  const wheels = candidates.filter((d): d is string => !!d && existsSync(join(d, "mlx", "lib", "libmlx.so")));
  return wheels.find((d) => existsSync(nvrtcIn(d))) ?? wheels[0] ?? null;
}

function safeWheelDir(): string | undefined {
  try {
    return runtimeLayout("cuda").wheelDir;
  } catch {
    return undefined;
  }
}

export function nvrtcPath(): string | null {
  if (process.env.PENSIEVE_NVRTC) return process.env.PENSIEVE_NVRTC;
  const wheel = cudaWheelDir();
  const path = wheel ? nvrtcIn(wheel) : null;
  return path && existsSync(path) ? path : null;
}

export function nvrtcAvailable(): boolean {
  const path = nvrtcPath();
  return path !== null && existsSync(path);
}

/** MLX's include-path options (jit_module.cpp include_path_args) for this wheel. */
export function mlxIncludeOptions(wheel: string): string[] {
  const include = join(wheel, "mlx", "include");
  const cccl = existsSync(join(include, "cccl"))
    ? join(include, "cccl")
    : join(wheel, "nvidia", "cu13", "include", "cccl");
  return [include, cccl, join(wheel, "nvidia", "cu13", "include")]
    .filter((p) => existsSync(p))
    .map((p) => `--include-path=${p}`);
}

/** MLX's options for a device of compute capability major.minor (SASS: NVRTC 12+/13 supports it). */
export function mlxCompileOptions(wheel: string, major: number, minor: number): string[] {
  return [
    "--device-as-default-execution-space",
    `--gpu-architecture=sm_${major}${minor}${major >= 9 ? "a" : ""}`,
    ...mlxIncludeOptions(wheel),
  ];
}

// g_include_names in jit_module.cpp, in its order.
const JIT_HEADERS = [
  "atomic_ops.cuh",
  "binary_ops.cuh",
  "cast_op.cuh",
  "config.h",
  "complex.cuh",
  "cute_dequant.cuh",
  "fp16_math.cuh",
  "gemm_sm70.cuh",
  "hadamard.cuh",
  "indexing.cuh",
  "qmm_naive.cuh",
  "qmm_sm80.cuh",
  "qmm_sm90.cuh",
  "scatter_ops.cuh",
  "unary_ops.cuh",
  "ternary_ops.cuh",
  "utils.cuh",
];

export interface JitHeaders {
  names: string[];
  sources: string[];
}

const headerCache = new Map<string, JitHeaders>();

/**
 * MLX's in-memory device headers, read from libmlx.so's symbol table
 * (mlx::core::jit_source_<stem>, local NUL-terminated char arrays).
 */
export function mlxJitHeaders(libmlx: string): JitHeaders {
  const cached = headerCache.get(libmlx);
  if (cached) return cached;
  const fd = openSync(libmlx, "r");
  try {
    const read = (offset: number, length: number) => {
      const b = Buffer.alloc(length);
      readSync(fd, b, 0, length, offset);
      return b;
    };
    const eh = read(0, 64);
    if (eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2) throw new Error(`${libmlx}: not a 64-bit ELF file`);
    const shoff = Number(eh.readBigUInt64LE(0x28));
    const shnum = eh.readUInt16LE(0x3c);
    const sections = read(shoff, shnum * 64);
    const sec = (i: number) => ({
      type: sections.readUInt32LE(i * 64 + 4),
      addr: Number(sections.readBigUInt64LE(i * 64 + 0x10)),
      offset: Number(sections.readBigUInt64LE(i * 64 + 0x18)),
      size: Number(sections.readBigUInt64LE(i * 64 + 0x20)),
      link: sections.readUInt32LE(i * 64 + 0x28),
    });
    let symtab = -1;
    for (let i = 0; i < shnum; i++) if (sec(i).type === 2) symtab = i;
    if (symtab < 0) throw new Error(`${libmlx}: no symbol table (stripped?)`);
    const st = sec(symtab);
    const strtab = read(sec(st.link).offset, sec(st.link).size);
    const syms = read(st.offset, st.size);
    const found = new Map<string, string>();
    for (let off = 0; off + 24 <= syms.length; off += 24) {
      const nameAt = syms.readUInt32LE(off);
      const end = strtab.indexOf(0, nameAt);
      const name = strtab.toString("latin1", nameAt, end);
      const m = name.match(/^_ZN3mlx4coreL\d+jit_source_(\w+)E$/);
      if (!m || found.has(m[1] as string)) continue;
      const shndx = syms.readUInt16LE(off + 6);
      const value = Number(syms.readBigUInt64LE(off + 8));
      const size = Number(syms.readBigUInt64LE(off + 16));
      const s = sec(shndx);
      const bytes = read(s.offset + (value - s.addr), size);
      const nul = bytes.indexOf(0);
      found.set(m[1] as string, bytes.toString("utf8", 0, nul < 0 ? bytes.length : nul));
    }
    const names: string[] = [];
    const sources: string[] = [];
    for (const file of JIT_HEADERS) {
      const source = found.get(file.replace(/\.(cuh|h)$/, ""));
      if (source === undefined) throw new Error(`${libmlx}: no embedded header ${file}`);
      names.push(`mlx/backend/cuda/device/${file}`);
      sources.push(source);
    }
    const headers = { names, sources };
    headerCache.set(libmlx, headers);
    return headers;
  } finally {
    closeSync(fd);
  }
}

const symbols = {
  nvrtcVersion: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
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
  nvrtcAddNameExpression: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  nvrtcGetLoweredName: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
} as const;

type NvrtcLib = ReturnType<typeof dlopen<typeof symbols>>["symbols"];
const builtins: unknown[] = [];

/**
 * NVRTC opens libnvrtc-builtins.so.X.Y by its name at the first compile, and the
 * NVRTC wheel's folder (libnvrtc has no RPATH) is not on the loader's path unless
 * something put it there: opened first by its full path, the name is found loaded.
 */
function preloadBuiltins(dir: string): void {
  if (!existsSync(dir)) return;
  for (const file of readdirSync(dir)) {
    const m = /^libnvrtc-builtins\.so\.(\d+)\.(\d+)$/.exec(file);
    if (!m) continue;
    try {
      const entry = `__nvrtc_builtins__${m[1]}_${m[2]}_getArchBuiltins`;
      builtins.push(dlopen(join(dir, file), { [entry]: { args: [], returns: FFIType.ptr } }));
    } catch {
      // Not loadable here: NVRTC then reports what it misses.
    }
  }
}
const opened = new Map<string, NvrtcLib>();

function nvrtc(path?: string): NvrtcLib {
  const p = path ?? nvrtcPath();
  if (!p) throw new Error("libnvrtc.so.13 not found (set PENSIEVE_NVRTC or PENSIEVE_MLX_CUDA_WHEEL)");
  let lib = opened.get(p);
  if (!lib) {
    preloadBuiltins(dirname(p));
    lib = dlopen(p, symbols).symbols;
    opened.set(p, lib);
  }
  return lib;
}

/** NVRTC's version, "major.minor". */
export function nvrtcVersion(path?: string): string {
  const major = new Int32Array(1);
  const minor = new Int32Array(1);
  const status = nvrtc(path).nvrtcVersion(ptr(major), ptr(minor));
  if (status !== 0) throw new Error(`nvrtcVersion: ${status}`);
  return `${major[0]}.${minor[0]}`;
}

const cstr = (s: string) => Buffer.from(`${s}\0`, "utf8");
const pointers = (bufs: Buffer[]) => BigUint64Array.from(bufs.map((b) => BigInt(ptr(b))));

export interface CompileResult {
  ok: boolean;
  log: string;
  ms: number;
  cubin: Buffer | null;
  /** nvrtcGetLoweredName of each name expression asked for (MLX's compile() does the same). */
  lowered: string[];
}

/** Compiles one translation unit to a CUBIN (the options must name an sm_ architecture). */
export function compileToCubin(
  source: string,
  programName: string,
  options: readonly string[],
  headers: JitHeaders = { names: [], sources: [] },
  libPath?: string,
  nameExpressions: readonly string[] = [],
): CompileResult {
  const lib = nvrtc(libPath);
  const prog = new BigUint64Array(1);
  const headerBufs = headers.sources.map(cstr);
  const nameBufs = headers.names.map(cstr);
  const n = headerBufs.length;
  const headerPtrs = pointers(headerBufs);
  const namePtrs = pointers(nameBufs);
  const src = cstr(source);
  const created = lib.nvrtcCreateProgram(
    ptr(prog),
    src,
    cstr(`${programName}.cu`),
    n,
    n ? ptr(headerPtrs) : null,
    n ? ptr(namePtrs) : null,
  );
  if (created !== 0) throw new Error(`nvrtcCreateProgram: ${created}`);
  const exprBufs = nameExpressions.map(cstr);
  for (const e of exprBufs) {
    const added = lib.nvrtcAddNameExpression(Number(prog[0]) as never, e);
    if (added !== 0) throw new Error(`nvrtcAddNameExpression: ${added}`);
  }
  const optionBufs = options.map(cstr);
  const optionPtrs = pointers(optionBufs);
  const handle = Number(prog[0]);
  const t0 = performance.now();
  const status = lib.nvrtcCompileProgram(handle as never, options.length, ptr(optionPtrs));
  const ms = performance.now() - t0;
  const size = new BigUint64Array(1);
  lib.nvrtcGetProgramLogSize(handle as never, ptr(size));
  const log = Buffer.alloc(Number(size[0]) + 1);
  lib.nvrtcGetProgramLog(handle as never, log);
  let cubin: Buffer | null = null;
  const lowered: string[] = [];
  if (status === 0) {
    const out = new BigUint64Array(1);
    for (const e of exprBufs) {
      if (lib.nvrtcGetLoweredName(handle as never, e, ptr(out)) !== 0 || !out[0]) break;
      lowered.push(new CString(Number(out[0]) as never).toString());
    }
  }
  if (status === 0 && lib.nvrtcGetCUBINSize(handle as never, ptr(size)) === 0 && size[0]) {
    cubin = Buffer.alloc(Number(size[0]));
    if (lib.nvrtcGetCUBIN(handle as never, cubin) !== 0) cubin = null;
  }
  lib.nvrtcDestroyProgram(ptr(prog));
  const named = lowered.length === nameExpressions.length;
  return {
    ok: status === 0 && cubin !== null && named,
    lowered,
    log: log.toString("utf8").replace(/\0+$/, ""),
    ms,
    cubin,
  };
}
