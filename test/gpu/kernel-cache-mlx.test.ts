// PENSIEVE_KERNEL_CACHE=mlx on a real GPU (skipped without CUDA): processes
// decode the same prompt on the fused path (test/gpu/kernel-cache-run.ts):
// MLX's own NVRTC (flag off), then the mode twice on one empty home. Launches
// stay on MLX's cuda_kernel path, so logits are bit-equal; the second start
// writes nothing (compiles 0). Then every .ptx we wrote is overwritten with
// garbage and a flag-off process must fail to load "compiled" kernels: the
// proof that MLX looks our entries up under exactly our module names (a name
// that differed by a byte would make MLX compile and succeed).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import { tinyModel } from "../support/models";

const cuda = mx.gpuAvailable() && kernelLanguage() === "cuda";
const home = mkdtempSync(join(tmpdir(), "pv-kcache-mlx-gpu-"));
afterAll(() => rmSync(home, { recursive: true, force: true }));
const ptxDir = join(home, "kernel-cache", "mlx-ptx");

function start(model: string, label: string, mode: string, extraEnv: Record<string, string> = {}) {
  const out = join(home, `${label}.bin`);
  const env: Record<string, string | undefined> = { ...process.env, PENSIEVE_HOME: home, PENSIEVE_KERNEL_CACHE: mode, PENSIEVE_KERNEL_CACHE_LOG: "1" };
  delete env.MLX_PTX_CACHE_DIR;
  const r = Bun.spawnSync([process.execPath, join(import.meta.dir, "kernel-cache-run.ts"), model, out], {
    env: { ...env, ...extraEnv },
    stdout: "pipe",
    stderr: "pipe",
  });
  const stdout = r.stdout.toString();
  const stderr = r.stderr.toString();
  if (r.exitCode !== 0) return { ok: false as const, stderr };
  const last = stdout.trim().split("\n").at(-1) ?? "{}";
  const result = JSON.parse(last) as { ms: number; firstStepMs: number; stats: { compiles: number } | null };
  console.log(`${label}: ${result.ms.toFixed(0)} ms (first step ${result.firstStepMs.toFixed(0)} ms)`, result.stats);
  return { ok: true as const, logits: readFileSync(out), stderr, ...result };
}

const ptxFiles = (dir: string): string[] =>
  readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".ptx"))
    .map((f) => join(dir, f));

describe.skipIf(!cuda)("PENSIEVE_KERNEL_CACHE=mlx on the GPU", () => {
  test("tiny-phi3: same logits bit for bit; a second start compiles nothing; MLX reads our entries", () => {
    const model = tinyModel("tiny-phi3");
    const off = start(model, "off", "0");
    const first = start(model, "first", "mlx");
    const second = start(model, "second", "mlx");
    if (!off.ok || !first.ok || !second.ok) throw new Error(`a run failed: ${off.stderr}${first.stderr}`);
    expect(first.stderr).not.toContain("not cached");
    expect(first.stats?.compiles ?? 0).toBeGreaterThan(0);
    expect(second.stats).toMatchObject({ compiles: 0 });
    expect(first.logits.equals(off.logits)).toBe(true);
    expect(second.logits.equals(off.logits)).toBe(true);
    const files = ptxFiles(ptxDir).filter((f) => f.includes("custom_kernel_"));
    expect(files.length).toBe(first.stats?.compiles ?? -1);
    for (const f of files) writeFileSync(f, "not a cubin");
    const broken = start(model, "broken", "0", { MLX_PTX_CACHE_DIR: ptxDir });
    expect(broken.ok).toBe(false);
    expect(broken.stderr).toContain("Failed to load compiled");
  }, 600_000);
});
