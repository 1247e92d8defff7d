// MxArray: a typed, owned handle to an MLX array, and the scopes that free them.
//
// Lifetimes are deterministic. Every array created while a `tidy` scope runs
// belongs to that scope and is freed when it ends, unless it is returned from
// the scope (it then moves to the enclosing scope) or `keep`-ed (the caller
// owns it and calls dispose()). A FinalizationRegistry frees anything leaked,
// as a safety net only.
import type { Pointer } from "bun:ffi";
import { lib } from "./ffi";

export enum Dtype {
  bool = 0,
  uint8 = 1,
  uint16 = 2,
  uint32 = 3,
  uint64 = 4,
  int8 = 5,
  int16 = 6,
  int32 = 7,
  int64 = 8,
  float16 = 9,
  float32 = 10,
  float64 = 11,
  bfloat16 = 12,
  complex64 = 13,
}

const DTYPE_BYTES: Record<Dtype, number> = {
  [Dtype.bool]: 1,
  [Dtype.uint8]: 1,
  [Dtype.uint16]: 2,
  [Dtype.uint32]: 4,
  [Dtype.uint64]: 8,
  [Dtype.int8]: 1,
  [Dtype.int16]: 2,
  [Dtype.int32]: 4,
  [Dtype.int64]: 8,
  [Dtype.float16]: 2,
  [Dtype.float32]: 4,
  [Dtype.float64]: 8,
  [Dtype.bfloat16]: 2,
  [Dtype.complex64]: 8,
};

export function dtypeBytes(d: Dtype): number {
  return DTYPE_BYTES[d];
}

export function isFloating(d: Dtype): boolean {
  return d === Dtype.float16 || d === Dtype.float32 || d === Dtype.float64 || d === Dtype.bfloat16;
}

export function dtypeName(d: Dtype): string {
  return Dtype[d] ?? `dtype(${d})`;
}

/** An MLX error surfaced through the shim's last-error text. */
export class MlxError extends Error {
  constructor(op: string, detail: string) {
    super(`${op}: ${detail}`);
    this.name = "MlxError";
  }
}

export function lastError(): string {
  return String(lib.pv_last_error() ?? "unknown MLX error");
}

/** Throws MlxError when an int-status call failed. */
export function checkStatus(status: number, op: string): void {
  if (status !== 0) throw new MlxError(op, lastError());
}

const finalizer = new FinalizationRegistry<Pointer>((handle) => lib.pv_free(handle));

class Scope {
  readonly arrays: MxArray[] = [];
}

const scopes: Scope[] = [];
let liveArrays = 0;

export class MxArray {
  #handle: Pointer | 0;
  #shape: number[] | undefined;
  #dtype: Dtype | undefined;
  /** The scope that will free this array, or null when the caller owns it. */
  scope: Scope | null;

  /** Wraps a handle the shim just returned (0/null means the op failed). */
  constructor(handle: unknown, op = "mlx op") {
    if (!handle) throw new MlxError(op, lastError());
    this.#handle = handle as Pointer;
    const scope = scopes[scopes.length - 1] ?? null;
    this.scope = scope;
    // Scoped arrays are freed by their scope; only unowned ones need the safety net.
    if (scope) scope.arrays.push(this);
    else finalizer.register(this, handle as Pointer, this);
    liveArrays++;
  }

  get handle(): Pointer {
    if (this.#handle === 0) throw new Error("use of a disposed MxArray");
    return this.#handle;
  }

  get disposed(): boolean {
    return this.#handle === 0;
  }

  get shape(): number[] {
    if (this.#shape === undefined) {
      const n = lib.pv_shape(this.handle, shapeBuffer, shapeBuffer.length);
      if (n < 0) throw new MlxError("shape", lastError());
      this.#shape = Array.from(shapeBuffer.subarray(0, n));
    }
    return this.#shape;
  }

  get ndim(): number {
    return this.shape.length;
  }

  get size(): number {
    let n = 1;
    for (const d of this.shape) n *= d;
    return n;
  }

  get dtype(): Dtype {
    if (this.#dtype === undefined) {
      const d = lib.pv_dtype(this.handle);
      if (d < 0) throw new MlxError("dtype", lastError());
      this.#dtype = d as Dtype;
    }
    return this.#dtype;
  }

  get nbytes(): number {
    return this.size * dtypeBytes(this.dtype);
  }

  /** Leaves its scope: the caller owns it now (the finalizer is the safety net). */
  release(): void {
    if (this.scope === null || this.#handle === 0) return;
    this.scope = null;
    finalizer.register(this, this.#handle, this);
  }

  /** Dimension i (negative counts from the end). */
  dim(i: number): number {
    const s = this.shape;
    const d = s[i < 0 ? s.length + i : i];
    if (d === undefined) throw new RangeError(`axis ${i} out of range for shape [${s}]`);
    return d;
  }

  dispose(): void {
    if (this.#handle === 0) return;
    if (this.scope === null) finalizer.unregister(this);
    lib.pv_free(this.#handle);
    this.#handle = 0;
    this.scope = null;
    liveArrays--;
  }

  /** Evaluates and copies the elements out, in a typed array matching the dtype. */
  read(): TypedArrayOf {
    const Ctor = READERS[this.dtype];
    if (!Ctor) throw new Error(`read: unsupported dtype ${dtypeName(this.dtype)}`);
    const out = new Ctor(this.size);
    checkStatus(lib.pv_read(this.handle, out, out.byteLength), "read");
    return out;
  }

  /** The first element as a number (bool → 0/1, int64 → number). */
  item(): number {
    const v = this.read()[0];
    return typeof v === "bigint" ? Number(v) : (v as number);
  }

  toString(): string {
    return this.disposed ? "MxArray(disposed)" : `MxArray(${dtypeName(this.dtype)}, [${this.shape}])`;
  }
}

type TypedArrayOf =
  | Uint8Array
  | Uint16Array
  | Uint32Array
  | BigUint64Array
  | Int8Array
  | Int16Array
  | Int32Array
  | BigInt64Array
  | Float32Array
  | Float64Array;

const READERS: Partial<Record<Dtype, new (n: number) => TypedArrayOf>> = {
  [Dtype.bool]: Uint8Array,
  [Dtype.uint8]: Uint8Array,
  [Dtype.uint16]: Uint16Array,
  [Dtype.uint32]: Uint32Array,
  [Dtype.uint64]: BigUint64Array,
  [Dtype.int8]: Int8Array,
  [Dtype.int16]: Int16Array,
  [Dtype.int32]: Int32Array,
  [Dtype.int64]: BigInt64Array,
  [Dtype.float16]: Uint16Array,
  [Dtype.bfloat16]: Uint16Array,
  [Dtype.float32]: Float32Array,
  [Dtype.float64]: Float64Array,
};

const shapeBuffer = new Int32Array(16);

/** Handle lists for the shim (pointer arrays), reused between calls. */
let handleWords = new Uint32Array(64);
export function handleList(arrays: readonly MxArray[]): Uint32Array {
  if (arrays.length * 2 > handleWords.length) handleWords = new Uint32Array(arrays.length * 4);
  for (let i = 0; i < arrays.length; i++) {
    const h = (arrays[i] as MxArray).handle as unknown as number;
    handleWords[2 * i] = h % 0x100000000;
    handleWords[2 * i + 1] = Math.floor(h / 0x100000000);
  }
  return handleWords;
}

/** Reads pointers the shim wrote into an out-array of n handles. */
export function handlesFrom(words: Uint32Array, n: number, op: string): MxArray[] {
  const out: MxArray[] = [];
  for (let i = 0; i < n; i++) {
    const h = (words[2 * i] as number) + (words[2 * i + 1] as number) * 0x100000000;
    out.push(new MxArray(h, op));
  }
  return out;
}

function collectArrays(value: unknown, into: Set<MxArray>, depth = 0): void {
  if (value instanceof MxArray) {
    into.add(value);
  } else if (depth < 4 && value !== null && typeof value === "object") {
    const children =
      Array.isArray(value) || value instanceof Set
        ? value
        : value instanceof Map
          ? value.values()
          : Object.values(value);
    for (const v of children) collectArrays(v, into, depth + 1);
  }
}

/**
 * Runs fn in a new scope. Arrays it creates are freed when it returns, except
 * those in its result (searched through arrays, maps, sets and plain objects), which move
 * to the enclosing scope. fn must be synchronous.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Scope();
  scopes.push(scope);
  let result: T | undefined;
  let ok = false;
  try {
    result = fn();
    ok = true;
  } finally {
    scopes.pop();
    const survivors = new Set<MxArray>();
    if (ok) collectArrays(result, survivors);
    const parent = scopes[scopes.length - 1] ?? null;
    for (const a of scope.arrays) {
      if (a.scope !== scope) continue;
      if (survivors.has(a)) {
        if (parent) {
          a.scope = parent;
          parent.arrays.push(a);
        } else a.release();
      } else {
        a.dispose();
      }
    }
  }
  return result as T;
}

/** Takes arrays out of every scope: the caller now owns them and must dispose them. */
export function keep<T extends MxArray | MxArray[]>(value: T): T {
  for (const a of Array.isArray(value) ? value : [value]) a.release();
  return value;
}

/** Disposes every array in a value (arrays, plain objects). */
export function disposeAll(value: unknown): void {
  const set = new Set<MxArray>();
  collectArrays(value, set);
  for (const a of set) a.dispose();
}

/** Arrays alive on the JS side (for leak tests). */
export function liveArrayCount(): number {
  return liveArrays;
}

/** Handles alive in the shim (for leak tests). */
export function liveHandleCount(): number {
  return Number(lib.pv_live_handles());
}
