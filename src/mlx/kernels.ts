// Custom GPU kernels inside MLX's graph: MLX's fast::cuda_kernel (CUDA source
// compiled at run time by NVRTC) or, on Metal builds, fast::metal_kernel, both
// through the shim's pv_kernel_* calls (ffi/gpu_kernels.cpp). A kernel's
// results are ordinary lazy arrays. The shim is opened a second time here with
// only these symbols, so that an older shim without them reads as "none".
import { dlopen, FFIType, type Pointer } from "bun:ffi";
import { type Dtype, handleList, handlesFrom, lastError, MlxError, type MxArray } from "./array";
import { shimPath } from "./ffi";

/** The kernel language of this MLX build; "none" on the CPU build. */
export type KernelLanguage = "none" | "cuda" | "metal";

const P = FFIType.ptr;
const i32 = FFIType.i32;
const symbols = {
  pv_kernel_language: { args: [], returns: i32 },
  pv_kernel_new: { args: [P, P, P, P, P, i32, i32], returns: P },
  pv_kernel_free: { args: [P], returns: FFIType.void },
  pv_kernel_call: {
    args: [P, P, i32, P, P, P, i32, P, P, P, P, P, i32, FFIType.f32, i32, i32, P],
    returns: i32,
  },
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
export function kernelLanguage(): KernelLanguage {
  const { lib } = kernelLib();
  if (!lib) return "none";
  const code = lib.pv_kernel_language();
  return code === 1 ? "cuda" : code === 2 ? "metal" : "none";
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
  #handle: Pointer | null;
  readonly #lib: KernelLib;

  constructor(spec: KernelSpec) {
    const reason = kernelsUnavailableReason();
    const { lib } = kernelLib();
    if (reason || !lib) throw new MlxError(`kernel ${spec.name}`, `custom GPU kernels are not available: ${reason}`);
    this.#lib = lib;
    this.spec = spec;
    const handle = lib.pv_kernel_new(
      cstr(spec.name),
      names(spec.inputs, spec.name),
      names(spec.outputs, spec.name),
      cstr(spec.source),
      cstr(spec.header ?? ""),
      spec.ensureRowContiguous === false ? 0 : 1,
      spec.sharedMemory ?? 0,
    );
    if (!handle) throw new MlxError(`kernel ${spec.name}`, lastError());
    this.#handle = handle as Pointer;
  }

  call(c: KernelCall): MxArray[] {
    if (!this.#handle) throw new Error(`kernel ${this.spec.name} was disposed`);
    const dims = c.outputs.flatMap((o) => o.shape);
    const template = Object.entries(c.template ?? {});
    const kinds = template.map(([, v]) => (typeof v === "number" ? 0 : typeof v === "boolean" ? 1 : 2));
    const values = template.map(([, v]) => (typeof v === "number" ? v : typeof v === "boolean" ? Number(v) : v.dtype));
    const out = new Uint32Array(c.outputs.length * 2);
    const status = this.#lib.pv_kernel_call(
      this.#handle,
      handleList(c.inputs),
      c.inputs.length,
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
      c.verbose ? 1 : 0,
      out,
    );
    if (status !== 0) throw new MlxError(`kernel ${this.spec.name}`, lastError());
    return handlesFrom(out, c.outputs.length, `kernel ${this.spec.name}`);
  }

  dispose(): void {
    if (this.#handle) this.#lib.pv_kernel_free(this.#handle);
    this.#handle = null;
  }
}
