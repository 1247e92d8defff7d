// Kernel headers delivered by #include (src/mlx/kernel-header.ts), on real temp
// folders: the file is written once with the header's exact bytes and not
// rewritten, short headers and PENSIEVE_KERNEL_HEADER_FILES=0 stay inline, and
// a folder that cannot be written leaves the header inline. Whether MLX's NVRTC
// finds the file is in kernel-cache-mlx.test.ts (compiles) and, on a GPU,
// test/gpu/kernel-cache-mlx.test.ts.
import { afterAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { installedBackend, runtimeLayout } from "../../src/mlx/backend";
import { HEADER_FILE_MIN_BYTES, headerFileName, headerInclude, loadedMlxIncludeDir } from "../../src/mlx/kernel-header";
import { GEMV_RESIDUAL_KERNEL } from "../../src/mlx/kernels-gemv-fused";

const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), "pv-kheader-"));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) {
    for (const p of [d, join(d, "pensieve")]) if (existsSync(p) && statSync(p).isDirectory()) chmodSync(p, 0o755);
    rmSync(d, { recursive: true, force: true });
  }
});

const header = GEMV_RESIDUAL_KERNEL.header;
const env = {};

describe("headerInclude", () => {
  test("writes the header once, byte for byte, and returns the include line", () => {
    const dir = tempDir();
    const h = headerInclude(header, dir, env);
    const name = headerFileName(header);
    expect(name).toMatch(/^pensieve\/[0-9a-f]{16}\.cuh$/);
    expect(h).toEqual({ header: `#include "${name}"\n`, file: join(dir, name), includeDir: dir, failure: null });
    expect(readFileSync(h.file as string, "utf8")).toBe(header);
    expect(readdirSync(join(dir, "pensieve"))).toEqual([name.slice("pensieve/".length)]);

    const before = statSync(h.file as string);
    const again = headerInclude(header, dir, env);
    expect(again).toEqual(h);
    const after = statSync(h.file as string);
    expect(after.ino).toBe(before.ino);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    expect(readdirSync(join(dir, "pensieve"))).toHaveLength(1);
  });

  test("the name follows the content: another header, another file", () => {
    const dir = tempDir();
    const a = headerInclude(header, dir, env);
    const b = headerInclude(`${header}// changed\n`, dir, env);
    expect(b.file).not.toBe(a.file);
    expect(b.header).not.toBe(a.header);
    expect(readdirSync(join(dir, "pensieve"))).toHaveLength(2);
  });

  test("a file at that name with other bytes is replaced", () => {
    const dir = tempDir();
    mkdirSync(join(dir, "pensieve"));
    writeFileSync(join(dir, headerFileName(header)), "garbage");
    const h = headerInclude(header, dir, env);
    expect(h.failure).toBeNull();
    expect(readFileSync(h.file as string, "utf8")).toBe(header);
  });

  test("short headers stay inline and write nothing", () => {
    const dir = tempDir();
    for (const short of ["", "#define X 1\n", "x".repeat(HEADER_FILE_MIN_BYTES - 1)]) {
      expect(headerInclude(short, dir, env)).toEqual({ header: short, file: null, includeDir: null, failure: null });
    }
    expect(headerInclude("x".repeat(HEADER_FILE_MIN_BYTES), dir, env).file).not.toBeNull();
  });

  test("PENSIEVE_KERNEL_HEADER_FILES=0 keeps it inline, with no note", () => {
    const dir = tempDir();
    const h = headerInclude(header, dir, { PENSIEVE_KERNEL_HEADER_FILES: "0" });
    expect(h).toEqual({ header, file: null, includeDir: null, failure: null });
    expect(readdirSync(dir)).toEqual([]);
  });

  test("no include dir, or a missing one: inline, with the reason", () => {
    expect(headerInclude(header, null, env)).toMatchObject({ header, file: null });
    expect(headerInclude(header, null, env).failure).toContain("no MLX include dir");
    const missing = join(tempDir(), "absent");
    expect(headerInclude(header, missing, env)).toMatchObject({ header, file: null });
    expect(headerInclude(header, missing, env).failure).toContain("does not exist");
  });

  // Root writes through chmod 555: these run as another user only.
  const root = process.getuid?.() === 0;
  test.skipIf(root)("a folder that is not writable (chmod 555): inline, with the reason, nothing left", () => {
    const dir = tempDir();
    chmodSync(dir, 0o555);
    const h = headerInclude(header, dir, env);
    expect(h).toMatchObject({ header, file: null, includeDir: null });
    expect(h.failure).toContain("cannot write");
    const ready = tempDir();
    mkdirSync(join(ready, "pensieve"));
    chmodSync(join(ready, "pensieve"), 0o555);
    expect(headerInclude(header, ready, env)).toMatchObject({ header, file: null });
    expect(readdirSync(join(ready, "pensieve"))).toEqual([]);
  });

  test("pensieve/ cannot be made (a file stands there): inline, with the reason, nothing left", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "pensieve"), "");
    const h = headerInclude(header, dir, env);
    expect(h).toMatchObject({ header, file: null, includeDir: null });
    expect(h.failure).toContain("cannot write");
    expect(readdirSync(dir)).toEqual(["pensieve"]);
  });
});

describe("loadedMlxIncludeDir", () => {
  test("<libmlx.so's folder>/../include from a maps listing; null without libmlx", () => {
    const maps = [
      "7f00-7f01 r-xp 00000000 08:01 12 /usr/lib/x86_64-linux-gnu/libc.so.6",
      "7f02-7f03 r-xp 00000000 08:01 34 /opt/w/mlx/lib/libmlx.so",
      "7f04-7f05 rw-p 00000000 00:00 0 ",
    ].join("\n");
    expect(loadedMlxIncludeDir(maps)).toBe("/opt/w/mlx/include");
    expect(loadedMlxIncludeDir("7f00-7f01 r-xp 00000000 08:01 12 /usr/lib/libc.so.6\n")).toBeNull();
  });

  test("in this process, once MLX is loaded: the installed wheel's mlx/include", async () => {
    const backend = installedBackend();
    if (!backend) return;
    await import("../../src/mlx/ffi");
    const dir = loadedMlxIncludeDir();
    expect(dir).not.toBeNull();
    expect(realpathSync(dir as string)).toBe(realpathSync(runtimeLayout(backend).includeDir));
  });
});
