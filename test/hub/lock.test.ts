import { afterEach, beforeEach, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { withFileLock } from "../../src/hub/lock";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "pensieve-lock-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

test("waits while another live process holds the lock", async () => {
  const holder = Bun.spawn(["sleep", "30"]);
  try {
    const path = join(dir, "locks", "blob.lock");
    await withFileLock(path, async () => {}); // creates the folder
    writeFileSync(path, `${holder.pid} ${hostname()}\n`);
    const started = performance.now();
    setTimeout(() => rmSync(path), 300);
    let ran = false;
    await withFileLock(path, async () => {
      ran = true;
    });
    expect(ran).toBe(true);
    expect(performance.now() - started).toBeGreaterThanOrEqual(250);
  } finally {
    holder.kill();
  }
});

test("takes over a lock whose process is gone, or that holds no pid", async () => {
  const gone = Bun.spawn(["true"]);
  await gone.exited;
  const path = join(dir, "blob.lock");
  for (const content of [`${gone.pid} ${hostname()}\n`, "", "garbage"]) {
    writeFileSync(path, content);
    const started = performance.now();
    expect(await withFileLock(path, async () => "done")).toBe("done");
    expect(performance.now() - started).toBeLessThan(150);
  }
});

test("releases the lock when the work fails, and stops waiting on abort", async () => {
  const path = join(dir, "blob.lock");
  await expect(
    withFileLock(path, async () => {
      throw new Error("work failed");
    }),
  ).rejects.toThrow("work failed");
  expect(existsSync(path)).toBe(false);

  writeFileSync(path, `${process.pid} ${hostname()}\n`);
  const controller = new AbortController();
  setTimeout(() => controller.abort(new Error("cancelled")), 100);
  await expect(withFileLock(path, async () => {}, controller.signal)).rejects.toThrow("cancelled");
});

test("several processes taking over one stale lock: one holder at a time", async () => {
  const path = join(dir, "blob.lock");
  const log = join(dir, "log");
  const child = `
    import { appendFileSync } from "node:fs";
    import { withFileLock } from ${JSON.stringify(join(import.meta.dir, "../../src/hub/lock"))};
    await withFileLock(${JSON.stringify(path)}, async () => {
      appendFileSync(${JSON.stringify(log)}, "enter " + process.pid + "\\n");
      await Bun.sleep(30);
      appendFileSync(${JSON.stringify(log)}, "exit " + process.pid + "\\n");
    });
  `;
  const gone = Bun.spawn(["true"]);
  await gone.exited;
  for (let round = 0; round < 3; round++) {
    writeFileSync(path, `${gone.pid} ${hostname()}\n`);
    writeFileSync(log, "");
    const procs = Array.from({ length: 6 }, () => Bun.spawn([process.execPath, "-e", child], { stderr: "pipe" }));
    const codes = await Promise.all(procs.map((p) => p.exited));
    expect(codes).toEqual(procs.map(() => 0));
    const lines = (await Bun.file(log).text()).trim().split("\n");
    expect(lines).toHaveLength(12);
    // Every "enter" is followed by the same process's "exit": no two holders overlap.
    for (let i = 0; i < lines.length; i += 2) {
      expect(lines[i]?.startsWith("enter ")).toBe(true);
      expect(lines[i + 1]).toBe(`exit ${lines[i]?.slice(6)}`);
    }
    expect(existsSync(path)).toBe(false);
  }
}, 60_000);
