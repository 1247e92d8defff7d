// A low memory cap for the engine process (tests and investigations of real
// out-of-memory errors). MLX's own limit is set: the shim's allocator guard
// (ffi/allocator_guard.cpp) enforces it on the CPU, where MLX itself does not,
// and GPU allocators keep it their way. On Linux the process's data limit
// (RLIMIT_DATA) goes down too, with some slack for the JavaScript heap: a
// backstop under which malloc itself fails (and the guard reports it).
import { dlopen, FFIType, ptr } from "bun:ffi";
import { readFileSync } from "node:fs";
import * as mx from "../mlx";

const RLIMIT_DATA = 2;
/** Room for the engine's JavaScript heap above the cap: JSC aborts the process when it cannot grow. */
const JS_SLACK_BYTES = 256 * 2 ** 20;

/** The process's data size now (what RLIMIT_DATA is compared with), in bytes; null off Linux. */
function dataBytes(): number | null {
  try {
    const kb = /^VmData:\s+(\d+) kB/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
    return kb ? Number(kb) * 1024 : null;
  } catch {
    return null;
  }
}

/** Caps the engine at what it uses now plus `headroomBytes`; returns a description for the logs. */
export function capMemory(headroomBytes: number): string {
  const active = mx.memory.active();
  mx.memory.setLimit(active + headroomBytes);
  const data = dataBytes();
  if (data === null) return `MLX memory limit ${active + headroomBytes} bytes (no process limit on this system)`;
  const limit = BigInt(data + headroomBytes + JS_SLACK_BYTES);
  const libc = dlopen(process.platform === "darwin" ? "libc.dylib" : "libc.so.6", {
    setrlimit: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  });
  const rlimit = new BigUint64Array([limit, limit]);
  const rc = libc.symbols.setrlimit(RLIMIT_DATA, ptr(rlimit));
  libc.close();
  if (rc !== 0) throw new Error("setrlimit(RLIMIT_DATA) failed");
  return `MLX memory limit ${active + headroomBytes} bytes, process data limit ${limit} bytes`;
}
