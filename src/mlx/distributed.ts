// MLX's own distributed group (mlx::core::distributed) through ffi/distributed.cpp:
// init with a backend by name, rank and size, and the collective ops (lazy arrays
// like any other op). One group per process. The backends read their addresses
// from the environment as mlx.launch sets them: ring wants MLX_RANK and
// MLX_HOSTFILE (a JSON list of ["ip:port", ...] per rank); nccl wants MLX_RANK,
// MLX_WORLD_SIZE, NCCL_HOST_IP and NCCL_PORT. The shim is opened a second time
// with only these symbols, so that an older shim without them reads as "none".
import { dlopen, FFIType } from "bun:ffi";
import { type Dtype, lastError, MlxError, MxArray } from "./array";
import { shimPath } from "./ffi";

/** A backend of MLX's distributed module; "any" takes the first that initialises. */
export type DistributedBackend = "ring" | "nccl" | "mpi" | "jaccl" | "any";
export const DISTRIBUTED_BACKENDS: readonly DistributedBackend[] = ["ring", "nccl", "mpi", "jaccl", "any"];

const P = FFIType.ptr;
const i32 = FFIType.i32;
const symbols = {
  pv_dist_is_available: { args: [P], returns: i32 },
  pv_dist_init: { args: [P, i32], returns: i32 },
  pv_dist_rank: { args: [], returns: i32 },
  pv_dist_size: { args: [], returns: i32 },
  pv_dist_all_sum: { args: [P], returns: P },
  pv_dist_all_max: { args: [P], returns: P },
  pv_dist_all_gather: { args: [P], returns: P },
  pv_dist_send: { args: [P, i32], returns: P },
  pv_dist_recv: { args: [P, i32, i32, i32], returns: P },
  pv_dist_recv_like: { args: [P, i32], returns: P },
} as const;

type DistLib = ReturnType<typeof dlopen<typeof symbols>>["symbols"];
let opened: DistLib | null = null;

function distLib(): DistLib {
  if (!opened) {
    try {
      opened = dlopen(shimPath(), symbols).symbols;
    } catch (e) {
      throw new Error(`the shim has no distributed calls (rebuild it: npm run setup): ${e}`);
    }
  }
  return opened;
}

function cstr(s: string): Buffer {
  return Buffer.from(`${s}\0`, "utf8");
}

/** Whether this MLX build carries the backend (the CPU wheel: ring and mpi). */
export function distributedAvailable(backend: DistributedBackend): boolean {
  const r = distLib().pv_dist_is_available(cstr(backend));
  if (r < 0) throw new MlxError("distributed.is_available", lastError());
  return r === 1;
}

export interface Group {
  readonly rank: number;
  readonly size: number;
  readonly backend: DistributedBackend;
}

let current: Group | null = null;

/**
 * Joins the group the environment describes. strict: fail when the backend cannot
 * start (else MLX gives a group of one). Blocks until every rank has joined (the
 * ring backend connects to its neighbours, retrying for a while).
 */
export function initDistributed(backend: DistributedBackend, strict = true): Group {
  const lib = distLib();
  if (lib.pv_dist_init(cstr(backend), strict ? 1 : 0) !== 0) {
    throw new MlxError(`distributed.init(${backend})`, lastError());
  }
  const rank = lib.pv_dist_rank();
  const size = lib.pv_dist_size();
  if (rank < 0 || size < 0) throw new MlxError("distributed.init", lastError());
  current = { rank, size, backend };
  return current;
}

/** The group init made, or null before init. */
export function distributedGroup(): Group | null {
  return current;
}

/** Sum of x over every rank (each rank gets the sum). */
export function allSum(x: MxArray): MxArray {
  return new MxArray(distLib().pv_dist_all_sum(x.handle), "all_sum");
}

/** Elementwise max of x over every rank. */
export function allMax(x: MxArray): MxArray {
  return new MxArray(distLib().pv_dist_all_max(x.handle), "all_max");
}

/** Every rank's x concatenated along axis 0, in rank order. */
export function allGather(x: MxArray): MxArray {
  return new MxArray(distLib().pv_dist_all_gather(x.handle), "all_gather");
}

/** Sends x to rank dst when evaluated; the result is x (evaluate it to send). */
export function send(x: MxArray, dst: number): MxArray {
  return new MxArray(distLib().pv_dist_send(x.handle, dst), "send");
}

/** Receives an array of this shape and dtype from rank src when evaluated. */
export function recv(shape: readonly number[], dtype: Dtype, src: number): MxArray {
  const dims = Int32Array.from(shape);
  return new MxArray(distLib().pv_dist_recv(dims, shape.length, dtype, src), "recv");
}

/** Receives an array shaped like `like` from rank src when evaluated. */
export function recvLike(like: MxArray, src: number): MxArray {
  return new MxArray(distLib().pv_dist_recv_like(like.handle, src), "recv_like");
}
