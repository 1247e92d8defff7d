// Custom GPU kernels inside MLX's graph: MLX's fast::cuda_kernel (CUDA source
// compiled at run time by NVRTC) or, on Metal builds, fast::metal_kernel, both
// through the shim's pv_kernel_* calls (ffi/gpu_kernels.cpp). A kernel's
// results are ordinary lazy arrays. The shim is opened a second time here with
// only these symbols, so that an older shim without them reads as "none".
import { dlopen, FFIType, type Pointer } from "bun:ffi";
import { join } from "node:path";
import { pensieveHome } from "../paths";
import { type Dtype, handleList, handlesFrom, lastError, MlxError, type MxArray } from "./array";
import { lib as shimLib, shimPath } from "./ffi";
import {
  kernelCacheMode,
  kernelCacheUnavailable,
  notPrecompilable,
  precompiledName,
  precompiledSource,
  processKernelCache,
} from "./kernel-cache";
import { mlxKernelName, mlxKernelSource, mlxPtxCacheUnavailable, processMlxPtxCache } from "./kernel-cache-mlx";
import { mlxKernelBody, mlxKernelHeader } from "./kernel-header";

/** The kernel language of this MLX build; "none" on the CPU build. */
export type KernelLanguage = "none" | "cuda" | "metal";

const P = FFIType.ptr;
const i32 = FFIType.i32;
const symbols = {
  pv_kernel_language: { args: [], returns: i32 },
  pv_kernel_new: { args: [P, P, P, P, P, i32, i32], returns: P },
  pv_kernel_free: { args: [P], returns: FFIType.void },
  pv_kernel_plan_new: { args: [P, P, P, P, i32, P, P, P, P, P, i32, FFIType.f32, i32], returns: P },
  pv_kernel_plan_free: { args: [P], returns: FFIType.void },
  pv_kernel_plan_call: { args: [P, P, i32, i32, P], returns: i32 },
  pv_kernel_plan_set_precompiled: { args: [P, P, P, FFIType.i64, P, P, i32], returns: i32 },
} as const;

type KernelLib = ReturnType<typeof dlopen<typeof symbols>>["symbols"];
let opened: { lib: KernelLib | null; why: string } | null = null;

function kernelLib(): { lib: KernelLib | null; why: string } {
  if (!opened) {
    try {
      opened = { lib: dlopen(shimPath(), symbols).symbols, why: "" };
    } catch (e) {
      opened = { lib: null, why: `the shim has no custom-kernel calls (rebuild it: npm run setup): ${e}` };
    }
  }
  return opened;
}

/** Which kernel language this MLX build runs ("none": custom kernels are not available). */
let language: KernelLanguage | null = null;

export function kernelLanguage(): KernelLanguage {
  if (language) return language;
  const { lib } = kernelLib();
  if (!lib) return "none";
  const code = lib.pv_kernel_language();
  language = code === 1 ? "cuda" : code === 2 ? "metal" : "none";
  return language;
}

/** Why custom kernels are not available, or null when they are. */
export function kernelsUnavailableReason(): string | null {
  const { lib, why } = kernelLib();
  if (!lib) return why;
  return kernelLanguage() === "none" ? "this MLX build has no CUDA or Metal backend (CPU build)" : null;
}

export interface KernelSpec {
  name: string;
  inputs: readonly string[];
  outputs: readonly string[];
  /** The kernel body; MLX writes the signature (`const T* input`, `T* output`). */
  source: string;
  /** Helper device functions placed before the kernel. */
  header?: string;
  /** Copy non-contiguous inputs first (MLX's default). */
  ensureRowContiguous?: boolean;
  /** Dynamic shared memory in bytes (CUDA). */
  sharedMemory?: number;
}

/** A compile-time template argument: a number is an int, a boolean a bool, {dtype} a type. */
export type TemplateArg = number | boolean | { dtype: Dtype };

export interface KernelCall {
  inputs: readonly MxArray[];
  outputs: ReadonlyArray<{ shape: readonly number[]; dtype: Dtype }>;
  /** Total threads per axis (MLX's convention, as Metal's dispatchThreads). */
  grid: readonly [number, number, number];
  threadgroup: readonly [number, number, number];
  template?: Readonly<Record<string, TemplateArg>>;
  /** Fill the outputs with this value before the kernel runs. */
  initValue?: number;
  /** Print the generated source (debugging). */
  verbose?: boolean;
}

function cstr(s: string): Buffer {
  return Buffer.from(`${s}\0`, "utf8");
}

const identifier = /^[A-Za-z_][A-Za-z0-9_]*$/;

function names(list: readonly string[], what: string): Buffer {
  for (const n of list) if (!identifier.test(n)) throw new Error(`${what}: "${n}" is not an identifier`);
  return cstr(list.join(","));
}

/** A compiled-on-first-use kernel; call() adds one launch to the graph. */
export class CustomKernel {
  readonly spec: KernelSpec;
  /**
   * The header MLX was given: on CUDA a long one is an #include of its file
   * (kernel-header.ts: MLX hashes the whole source at every launch), else
   * spec.header. Whatever rebuilds MLX's text (kernel-cache-mlx.ts) uses this.
   */
  readonly header: string;
  /** The body MLX was given: likewise an #include of its file on CUDA (kernel-header.ts mlxKernelBody). */
  readonly source: string;
  /** The folder holding the included files (a compile of MLX's text searches it), or null (inline). */
  readonly headerIncludeDir: string | null;
  #handle: Pointer | null;
  readonly #lib: KernelLib;
  readonly #plans = new Set<Pointer>();

  constructor(spec: KernelSpec) {
    const reason = kernelsUnavailableReason();
    const { lib } = kernelLib();
    if (reason || !lib) throw new MlxError(`kernel ${spec.name}`, `custom GPU kernels are not available: ${reason}`);
    this.#lib = lib;
    this.spec = spec;
    const header = spec.header ?? "";
    const cuda = kernelLanguage() === "cuda";
    const delivered = cuda ? mlxKernelHeader(header) : null;
    const body = cuda ? mlxKernelBody(spec.source, spec.inputs) : null;
    this.header = delivered?.header ?? header;
    this.source = body?.header ?? spec.source;
    this.headerIncludeDir = delivered?.includeDir ?? body?.includeDir ?? null;
    const handle = lib.pv_kernel_new(
      cstr(spec.name),
      names(spec.inputs, spec.name),
      names(spec.outputs, spec.name),
      cstr(this.source),
      cstr(this.header),
      spec.ensureRowContiguous === false ? 0 : 1,
      spec.sharedMemory ?? 0,
    );
    if (!handle) throw new MlxError(`kernel ${spec.name}`, lastError());
    this.#handle = handle as Pointer;
  }

  /** Adds one launch to the graph (a plan made and dropped: use plan() for launches that repeat). */
  call(c: KernelCall): MxArray[] {
    const p = this.plan(c);
    try {
      return p.run(c.inputs, c.verbose);
    } finally {
      p.dispose();
    }
  }

  /** A launch configuration parsed once; run() then passes only the inputs (decode steps repeat launches). */
  plan(c: Omit<KernelCall, "inputs">): KernelPlan {
    if (!this.#handle) throw new Error(`kernel ${this.spec.name} was disposed`);
    const dims = c.outputs.flatMap((o) => o.shape);
    const template = Object.entries(c.template ?? {});
    const kinds = template.map(([, v]) => (typeof v === "number" ? 0 : typeof v === "boolean" ? 1 : 2));
    const values = template.map(([, v]) => (typeof v === "number" ? v : typeof v === "boolean" ? Number(v) : v.dtype));
    const handle = this.#lib.pv_kernel_plan_new(
      this.#handle,
      Int32Array.from(dims.length ? dims : [0]),
      Int32Array.from(c.outputs.map((o) => o.shape.length)),
      Int32Array.from(c.outputs.map((o) => o.dtype)),
      c.outputs.length,
      Int32Array.from(c.grid),
      Int32Array.from(c.threadgroup),
      names(
        template.map(([k]) => k),
        this.spec.name,
      ),
      Int32Array.from(kinds.length ? kinds : [0]),
      Int32Array.from(values.length ? values : [0]),
      template.length,
      c.initValue ?? 0,
      c.initValue === undefined ? 0 : 1,
    );
    if (!handle) throw new MlxError(`kernel ${this.spec.name}`, lastError());
    this.#plans.add(handle as Pointer);
    const plan = new KernelPlan(this, this.#lib, handle as Pointer, c.outputs.length, this.#plans);
    const mode = kernelLanguage() !== "cuda" ? null : kernelCacheMode();
    if (mode) plan.cacheSetup = { mode, outputs: c.outputs.map((o) => o.dtype), template };
    return plan;
  }

  /** Frees the kernel and the plans still open on it. */
  dispose(): void {
    for (const p of this.#plans) this.#lib.pv_kernel_plan_free(p);
    this.#plans.clear();
    if (this.#handle) this.#lib.pv_kernel_free(this.#handle);
    this.#handle = null;
  }
}

interface CacheSetup {
  mode: "cubin" | "mlx";
  outputs: Dtype[];
  template: Array<[string, TemplateArg]>;
}

const warned = new Set<string>();
function warnOnce(message: string): void {
  if (warned.has(message)) return;
  warned.add(message);
  process.stderr.write(`[kernel-cache] ${message}\n`);
}

/** One launch configuration of a kernel (see CustomKernel.plan). */
export class KernelPlan {
  readonly kernel: CustomKernel;
  readonly #lib: KernelLib;
  #handle: Pointer | null;
  readonly #out: Uint32Array;
  readonly #outputs: number;
  /** The kernel's open plans: a plan freed with its kernel is no longer there. */
  readonly #open: Set<Pointer>;

  constructor(kernel: CustomKernel, lib: KernelLib, handle: Pointer, outputs: number, open: Set<Pointer>) {
    this.kernel = kernel;
    this.#lib = lib;
    this.#handle = handle;
    this.#outputs = outputs;
    this.#out = new Uint32Array(outputs * 2);
    this.#open = open;
  }

  /**
   * Set when a kernel cache is on, done by the first run: PENSIEVE_KERNEL_CACHE=1 ("cubin") compiles (or loads)
   * the CUBIN for its inputs; =mlx makes sure MLX's PTX cache holds this kernel.
   */
  cacheSetup: CacheSetup | null = null;

  /** Adds one launch with these inputs to the graph; returns the outputs. */
  run(inputs: readonly MxArray[], verbose = false): MxArray[] {
    if (!this.#handle || !this.#open.has(this.#handle)) {
      throw new Error(`a plan of kernel ${this.kernel.spec.name} was disposed`);
    }
    if (this.cacheSetup) {
      const setup = this.cacheSetup;
      this.cacheSetup = null;
      if (setup.mode === "cubin") this.#usePrecompiled(this.#handle, inputs, setup);
      else this.#prefillMlxCache(inputs, setup);
    }
    const status = this.#lib.pv_kernel_plan_call(
      this.#handle,
      handleList(inputs),
      inputs.length,
      verbose ? 1 : 0,
      this.#out,
    );
    if (status !== 0) throw new MlxError(`kernel ${this.kernel.spec.name}`, lastError());
    return handlesFrom(this.#out, this.#outputs, `kernel ${this.kernel.spec.name}`);
  }

  // Any failure leaves the plan on MLX's own NVRTC path (said once on stderr).
  #usePrecompiled(handle: Pointer, inputs: readonly MxArray[], pre: CacheSetup): void {
    const spec = this.kernel.spec;
    const why = notPrecompilable(spec);
    const cache = why ? null : processKernelCache(join(pensieveHome(), "kernel-cache"));
    if (!cache) {
      warnOnce(`kernel ${spec.name}: not cached (${why ?? kernelCacheUnavailable()})`);
      return;
    }
    const signature = inputs.map((a) => ({ dtype: a.dtype, ndim: a.ndim }));
    const name = precompiledName(spec, pre.template);
    try {
      const source = precompiledSource(spec, name, signature, pre.outputs, pre.template);
      const { cubin } = cache.get(source, name);
      const status = this.#lib.pv_kernel_plan_set_precompiled(
        handle,
        Buffer.from(`${name}\0`, "utf8"),
        cubin,
        cubin.length,
        Int32Array.from(signature.length ? signature.map((s) => s.dtype) : [0]),
        Int32Array.from(signature.length ? signature.map((s) => s.ndim) : [0]),
        signature.length,
      );
      if (status !== 0) throw new Error(lastError());
    } catch (e) {
      warnOnce(`kernel ${spec.name}: not cached (${e})`);
    }
  }

  // Any failure leaves MLX to compile the kernel itself, as without the cache.
  // The text is MLX's, so it carries the header MLX was given (an include line
  // when the header went to a file: the compile is told that file's folder).
  #prefillMlxCache(inputs: readonly MxArray[], pre: CacheSetup): void {
    const { spec, header, source: body, headerIncludeDir } = this.kernel;
    const cache = processMlxPtxCache(String(shimLib.pv_mlx_version()));
    if (!cache) {
      warnOnce(`kernel ${spec.name}: not cached (${mlxPtxCacheUnavailable()})`);
      return;
    }
    try {
      const name = mlxKernelName(spec, pre.template);
      const signature = inputs.map((a) => ({ dtype: a.dtype, ndim: a.ndim }));
      const source = mlxKernelSource({ ...spec, header, source: body }, name, signature, pre.outputs, pre.template);
      cache.ensure(name, source, headerIncludeDir ? [headerIncludeDir] : []);
    } catch (e) {
      warnOnce(`kernel ${spec.name}: not cached (${e})`);
    }
  }

  dispose(): void {
    if (this.#handle && this.#open.delete(this.#handle)) this.#lib.pv_kernel_plan_free(this.#handle);
    this.#handle = null;
  }
}
