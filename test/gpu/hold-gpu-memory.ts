// Takes a GPU's memory as another program would, without MLX: raw cudaMalloc
// through bun:ffi on libcudart. Run by test/gpu/out-of-memory.test.ts as a
// child process (bench/gpu/pack.sh bundles it beside that test).
//
//   bun test/gpu/hold-gpu-memory.ts --probe        prints "cuda: N device(s) ..." (exit 0) or why not (exit 2/3)
//   bun test/gpu/hold-gpu-memory.ts LEAVE_BYTES    takes 1 GiB blocks until cudaMalloc refuses, then 128 MiB
//                                                  ones, gives back LEAVE_BYTES, prints "held N GiB ...", and
//                                                  holds until its stdin closes or it is killed (the driver
//                                                  frees a dead process's memory)
//
// libcudart is looked for where MLX finds it: PENSIEVE_CUDART if set, the
// NVIDIA libraries set-up links beside the unpacked mlx-cuda wheel
// (vendor/<tag>/nvidia/cu13/lib, src/mlx/provision.ts), then ld.so's paths and
// the toolkit's usual folders.
import { dlopen, FFIType, ptr } from "bun:ffi";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { runtimeLayout } from "../../src/mlx/backend";

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const say = (line: string) => process.stdout.write(`[hold-gpu ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

function cudartCandidates(): string[] {
  const list: string[] = [];
  if (process.env.PENSIEVE_CUDART) list.push(process.env.PENSIEVE_CUDART);
  try {
    list.push(join(runtimeLayout("cuda").wheelDir, "nvidia", "cu13", "lib", "libcudart.so.13"));
  } catch {
    // no lock file next to this bundle: the other places only
  }
  list.push(
    "libcudart.so.13",
    "/usr/local/cuda/lib64/libcudart.so.13",
    "/usr/local/cuda/targets/x86_64-linux/lib/libcudart.so.13",
  );
  return list;
}

const symbols = {
  cudaGetDeviceCount: { args: [FFIType.ptr], returns: FFIType.i32 },
  cudaSetDevice: { args: [FFIType.i32], returns: FFIType.i32 },
  cudaMemGetInfo: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  cudaMalloc: { args: [FFIType.ptr, FFIType.u64], returns: FFIType.i32 },
  cudaFree: { args: [FFIType.u64], returns: FFIType.i32 },
  cudaGetLastError: { args: [], returns: FFIType.i32 },
  cudaGetErrorString: { args: [FFIType.i32], returns: FFIType.cstring },
} as const;

function openCudart() {
  const tried: string[] = [];
  for (const path of cudartCandidates()) {
    if (path.startsWith("/") && !existsSync(path)) {
      tried.push(`${path} (absent)`);
      continue;
    }
    try {
      return { path, lib: dlopen(path, symbols) };
    } catch (e) {
      tried.push(`${path} (${(e as Error).message.split("\n")[0]})`);
    }
  }
  say(`error: no libcudart.so.13 could be opened; tried: ${tried.join("; ")}`);
  process.exit(2);
}

const { path, lib } = openCudart();
const cuda = lib.symbols;
const errorText = (code: number) => `${cuda.cudaGetErrorString(code)} (${code})`;

const count = new Int32Array(1);
const countStatus = cuda.cudaGetDeviceCount(ptr(count));
if (countStatus !== 0 || count[0] === 0) {
  say(`error: no CUDA device (libcudart ${path}): ${countStatus !== 0 ? errorText(countStatus) : "0 devices"}`);
  process.exit(3);
}
if (process.argv[2] === "--probe") {
  say(`cuda: ${count[0]} device(s), libcudart ${path}`);
  process.exit(0);
}

const leave = Number(process.argv[2] ?? 2 * GiB);
const setStatus = cuda.cudaSetDevice(0);
if (setStatus !== 0) {
  say(`error: cudaSetDevice(0): ${errorText(setStatus)}`);
  process.exit(3);
}
function memInfo(): string {
  const free = new BigUint64Array(1);
  const total = new BigUint64Array(1);
  const status = cuda.cudaMemGetInfo(ptr(free), ptr(total));
  if (status !== 0) return `cudaMemGetInfo: ${errorText(status)}`;
  return `free ${(Number(free[0]) / GiB).toFixed(2)} GiB of ${(Number(total[0]) / GiB).toFixed(2)} GiB`;
}
say(`libcudart ${path}; before: ${memInfo()}`);

const held: { address: bigint; size: number }[] = [];
const out = new BigUint64Array(1);
let refusal = "";
for (const block of [GiB, 128 * MiB]) {
  for (;;) {
    const status = cuda.cudaMalloc(ptr(out), block);
    if (status !== 0) {
      cuda.cudaGetLastError(); // out of memory is not sticky; clear it
      refusal ||= errorText(status);
      break;
    }
    held.push({ address: out[0] as bigint, size: block });
  }
}
const took = held.reduce((s, b) => s + b.size, 0);
say(`took ${(took / GiB).toFixed(2)} GiB (${held.length} blocks) until cudaMalloc said ${refusal}; now ${memInfo()}`);
// Give back the largest blocks first (they come first), until `leave` bytes are free again.
let given = 0;
while (given < leave && held.length > 0) {
  const block = held.shift() as { address: bigint; size: number };
  cuda.cudaFree(block.address);
  given += block.size;
}
const holding = took - given;
say(`held ${(holding / GiB).toFixed(2)} GiB after giving back ${(given / GiB).toFixed(2)} GiB; ${memInfo()}`);

process.on("SIGTERM", () => process.exit(0));
// Hold until the parent closes our stdin (or dies); the driver frees the memory when this process ends.
for await (const _ of Bun.stdin.stream()) {
  // ignore input
}
say("stdin closed: exiting (the driver frees the memory)");
process.exit(0);
