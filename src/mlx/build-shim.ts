// Builds ffi/ (the C shim) against an unpacked MLX wheel. Needs only that folder
// and a C++20 compiler. Skips the build when sources and flags are unchanged.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { REPO_ROOT } from "../paths";
import { type Backend, runtimeLayout } from "./backend";

const SOURCES = [
  "ffi/pensieve_mlx.cpp",
  "ffi/cpu_qmm.cpp",
  "ffi/cpu_qmm_int8.cpp",
  "ffi/cpu_qmm_int8_avx2.inc",
  "ffi/cpu_qmm_int8_vnni.inc",
  "ffi/cpu_qmm_int8.h",
  "ffi/cpu_qmm_packed.cpp",
  "ffi/cpu_qmm_packed_vnni.inc",
  "ffi/cpu_qmm_rows16_vnni.inc",
  "ffi/cpu_attention.cpp",
  "ffi/cpu_attention_tiled.inc",
  "ffi/cpu_norm.cpp",
  "ffi/allocator_guard.cpp",
  "ffi/cpu_common.h",
  "ffi/pensieve_mlx.h",
  "ffi/abi.h",
  "ffi/gpu_kernels.cpp",
  "ffi/distributed.cpp",
];

function compiler(): string {
  for (const c of [process.env.CXX, "c++", "g++", "clang++"]) {
    if (c && Bun.which(c)) return c;
  }
  throw new Error("no C++ compiler found: install g++ (Debian: apt-get install g++) or set CXX");
}

function shimCommand(backend: Backend): { argv: string[]; output: string } {
  const layout = runtimeLayout(backend);
  const darwin = process.platform === "darwin";
  const origin = darwin ? "@loader_path" : "$ORIGIN";
  // RUNPATH: the vendored wheel relative to the shim, and a lib/ beside it (the
  // layout a compiled binary extracts into).
  const rpathVendor = `${origin}/${relative(layout.shimDir, layout.libDir)}`;
  const argv = [
    compiler(),
    "-std=c++20",
    "-O3",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    `-I${layout.includeDir}`,
    join(REPO_ROOT, "ffi", "pensieve_mlx.cpp"),
    join(REPO_ROOT, "ffi", "cpu_qmm.cpp"),
    join(REPO_ROOT, "ffi", "cpu_qmm_int8.cpp"),
    join(REPO_ROOT, "ffi", "cpu_qmm_packed.cpp"),
    join(REPO_ROOT, "ffi", "cpu_attention.cpp"),
    join(REPO_ROOT, "ffi", "gpu_kernels.cpp"),
    join(REPO_ROOT, "ffi", "allocator_guard.cpp"),
    join(REPO_ROOT, "ffi", "cpu_norm.cpp"),
    join(REPO_ROOT, "ffi", "distributed.cpp"),
    "-pthread",
    `-L${layout.libDir}`,
    "-lmlx",
    `-Wl,-rpath,${rpathVendor}`,
    `-Wl,-rpath,${origin}/mlx/lib`,
    "-o",
    `${layout.shimPath}.tmp`,
  ];
  if (!darwin) argv.splice(argv.length - 2, 0, "-Wl,--enable-new-dtags");
  return { argv, output: layout.shimPath };
}

export function buildShim(backend: Backend, log: (s: string) => void = console.log): string {
  const layout = runtimeLayout(backend);
  if (!existsSync(join(layout.libDir))) {
    throw new Error(`MLX for ${backend} is not unpacked at ${layout.wheelDir}: run set-up first`);
  }
  const { argv, output } = shimCommand(backend);
  const hash = createHash("sha256");
  for (const s of SOURCES) hash.update(readFileSync(join(REPO_ROOT, s)));
  hash.update(argv.join("\0"));
  const stamp = `${output}.stamp`;
  const digest = hash.digest("hex");
  if (existsSync(output) && existsSync(stamp) && readFileSync(stamp, "utf8") === digest) {
    return output;
  }
  mkdirSync(layout.shimDir, { recursive: true });
  log(`building the MLX shim for ${backend} (${argv[0]}) ...`);
  const r = Bun.spawnSync(argv, { stdout: "inherit", stderr: "inherit" });
  if (r.exitCode !== 0) throw new Error(`shim build failed (exit ${r.exitCode}): ${argv.join(" ")}`);
  // Rename into place: running engines keep the old file mapped, untouched.
  renameSync(`${output}.tmp`, output);
  writeFileSync(stamp, digest);
  return output;
}

if (import.meta.main) {
  const { chooseBackend } = await import("./backend");
  const backend = chooseBackend(process.argv[2]).backend;
  console.log(buildShim(backend));
}
