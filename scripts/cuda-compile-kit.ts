// `bun scripts/cuda-compile-kit.ts` (npm test runs it after set-up): the
// test-only kit for compiling our CUDA kernels on a machine without a GPU.
// The kernel compile checks (test/gpu/nvrtc-compile.test.ts and the others that
// use test/gpu/nvrtc.ts) build each kernel as MLX's cuda_kernel would, with
// NVRTC 13 for sm_90a and MLX's JIT headers (read from the mlx-cuda-13 wheel's
// libmlx.so). Without this kit they skip, and a kernel that does not compile is
// found only on the lent GPU. Pinned wheels (scripts/mlx.lock.json), sha256
// checked, unpacked under vendor/cuda-compile-kit: nvidia/cu13 from NVRTC, the
// CUDA runtime's headers and CCCL, and a link to the mlx-cuda-13 wheel's mlx/.
// Linux x86_64 only (the wheels' platform); elsewhere it says so and exits 0.
import { existsSync, mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { readLock } from "../src/mlx/backend";
import { downloadWheel, ensureMlx, unzip } from "../src/mlx/provision";
import { VENDOR_DIR } from "../src/paths";

const log = (line: string) => console.log(`[cuda-compile-kit] ${line}`);
const kit = join(VENDOR_DIR, "cuda-compile-kit");

if (process.platform !== "linux" || process.arch !== "x64") {
  log(`not on Linux x86_64 (${process.platform} ${process.arch}): the kernel compile checks will skip`);
} else if (!existsSync(join(kit, ".complete"))) {
  const wheelDir = await ensureMlx("cuda", log);
  const tmp = `${kit}.partial`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const wheels = readLock().cudaCompileKit.wheels;
  for (const w of wheels) {
    unzip(await downloadWheel(w.package, w.version, w.file, w.sha256, { log }), tmp, ["nvidia/*"]);
  }
  symlinkSync(relative(tmp, join(wheelDir, "mlx")), join(tmp, "mlx"));
  rmSync(kit, { recursive: true, force: true });
  renameSync(tmp, kit);
  writeFileSync(join(kit, ".complete"), `${wheels.map((w) => `${w.file} ${w.sha256}`).join("\n")}\n`);
  log(`ready in ${kit}`);
}
