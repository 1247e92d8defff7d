// The kernel cache on a real GPU (skipped without CUDA): three processes decode
// the same prompt on the fused path (test/gpu/kernel-cache-run.ts): MLX's own
// NVRTC (flag off), then PENSIEVE_KERNEL_CACHE=1 twice on one empty home. The
// cached kernels are the same source compiled with the same NVRTC, headers and
// options, so every step's logits equal the flag-off run's bit for bit; the
// first cached start compiles, the second compiles nothing (all from disk).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import { tinyModel } from "../support/models";

const cuda = mx.gpuAvailable() && kernelLanguage() === "cuda";
const home = mkdtempSync(join(tmpdir(), "pv-kernel-cache-gpu-"));
afterAll(() => rmSync(home, { recursive: true, force: true }));

function start(model: string, label: string, cached: boolean) {
  const out = join(home, `${label}.bin`);
  const r = Bun.spawnSync([process.execPath, join(import.meta.dir, "kernel-cache-run.ts"), model, out], {
    env: {
      ...process.env,
      PENSIEVE_HOME: home,
      PENSIEVE_KERNEL_CACHE: cached ? "1" : "0",
      PENSIEVE_KERNEL_CACHE_LOG: "1",
    },
    stdout: "pipe",
    stderr: "pipe",
  });
  const stdout = r.stdout.toString();
  const stderr = r.stderr.toString();
  if (r.exitCode !== 0) throw new Error(`${label} failed (${r.exitCode}): ${stderr}`);
  const last = stdout.trim().split("\n").at(-1) ?? "{}";
  const result = JSON.parse(last) as {
    ms: number;
    firstStepMs: number;
    stats: { compiles: number; hits: number } | null;
  };
  console.log(`${label}: ${result.ms.toFixed(0)} ms (first step ${result.firstStepMs.toFixed(0)} ms)`, result.stats);
  return { logits: readFileSync(out), stderr, ...result };
}

describe.skipIf(!cuda)("kernel cache on the GPU", () => {
  for (const name of ["tiny-llama", "tiny-phi3"]) {
    test(`${name}: cached kernels give the same logits bit for bit; a second start compiles nothing`, () => {
      const model = tinyModel(name);
      const off = start(model, `${name}-off`, false);
      const first = start(model, `${name}-first`, true);
      const second = start(model, `${name}-second`, true);
      expect(first.stderr).not.toContain("not cached");
      expect(first.stats?.compiles ?? 0).toBeGreaterThan(0);
      expect(second.stats).toMatchObject({ compiles: 0 });
      expect(second.stats?.hits).toBe((first.stats?.compiles ?? 0) + (first.stats?.hits ?? 0));
      expect(first.logits.length).toBe(off.logits.length);
      expect(first.logits.equals(off.logits)).toBe(true);
      expect(second.logits.equals(off.logits)).toBe(true);
    }, 600_000);
  }
});
