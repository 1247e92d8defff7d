// The GPU out-of-memory test's card filler (hold-gpu-memory.ts) off the GPU:
// its probe says what it found or why it cannot run, and its fill / give back /
// hold / exit sequence runs against a stand-in CUDA runtime (a 16 GiB "card"
// compiled here with cc), so the one H100 run does not find a bug in it.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const holder = join(import.meta.dir, "hold-gpu-memory.ts");

test("the probe says which libcudart and device it found, or why it cannot run", () => {
  const r = Bun.spawnSync([process.execPath, holder, "--probe"], { stdout: "pipe", stderr: "pipe" });
  const out = r.stdout.toString();
  if (r.exitCode === 0) expect(out).toMatch(/cuda: \d+ device\(s\), libcudart /);
  else if (r.exitCode === 2) expect(out).toMatch(/error: no libcudart\.so\.13 could be opened; tried: .*\(absent\)/);
  else {
    expect(r.exitCode).toBe(3);
    expect(out).toMatch(/error: no CUDA device \(libcudart .*\): /);
  }
});

// A card of 16 GiB; cudaMalloc refuses what would leave less than 300 MiB (as a real card keeps some).
const FAKE_CUDART = `
#include <stddef.h>
#include <stdint.h>
static size_t total = (size_t)16 << 30, used = 0, sizes[4096];
static int n = 0;
int cudaGetDeviceCount(int* c) { *c = 1; return 0; }
int cudaSetDevice(int d) { return 0; }
int cudaMemGetInfo(size_t* f, size_t* t) { *f = total - used; *t = total; return 0; }
int cudaMalloc(void** p, size_t s) {
  if (used + s > total - ((size_t)300 << 20)) return 2;
  used += s; sizes[n] = s; *p = (void*)(uintptr_t)(0x1000 + n++); return 0;
}
int cudaFree(void* p) { used -= sizes[(uintptr_t)p - 0x1000]; return 0; }
int cudaGetLastError(void) { return 0; }
const char* cudaGetErrorString(int e) { return e == 2 ? "out of memory" : "other error"; }
`;

describe.skipIf(!Bun.which("cc"))("against a stand-in CUDA runtime", () => {
  test("takes the card, gives back what it was asked to leave, holds until stdin closes", async () => {
    const dir = mkdtempSync(join(tmpdir(), "fake-cudart-"));
    try {
      writeFileSync(join(dir, "fake.c"), FAKE_CUDART);
      const lib = join(dir, "libcudart.so.13");
      const cc = Bun.spawnSync(["cc", "-shared", "-fPIC", "-o", lib, join(dir, "fake.c")], { stderr: "pipe" });
      expect(cc.stderr.toString()).toBe("");
      const proc = Bun.spawn([process.execPath, holder, String(2 * 2 ** 30)], {
        stdin: "pipe",
        stdout: "pipe",
        env: { ...process.env, PENSIEVE_CUDART: lib },
      });
      const reader = proc.stdout.getReader();
      let text = "";
      while (!text.includes("] held ")) {
        const r = await reader.read();
        if (r.done) break;
        text += new TextDecoder().decode(r.value);
      }
      expect(text).toContain("before: free 16.00 GiB of 16.00 GiB");
      // 15 blocks of 1 GiB, then 5 of 128 MiB, until fewer than 300 MiB are left.
      expect(text).toContain("took 15.63 GiB (20 blocks) until cudaMalloc said out of memory (2); now free 0.38 GiB");
      expect(text).toContain("held 13.63 GiB after giving back 2.00 GiB; free 2.38 GiB of 16.00 GiB");
      expect(proc.exitCode).toBeNull(); // holding
      proc.stdin.end();
      expect(await proc.exited).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
