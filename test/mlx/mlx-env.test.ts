// MLX's environment defaults (src/mlx/mlx-env.ts) reach the C environment MLX reads with getenv,
// and a value the user set stays: checked in a child process through libc's getenv.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";

const probe = `
import { CString, dlopen, FFIType } from "bun:ffi";
import { applyMlxEnvDefaults } from ${JSON.stringify(join(import.meta.dir, "../../src/mlx/mlx-env.ts"))};
applyMlxEnvDefaults();
const { getenv } = dlopen("libc.so.6", { getenv: { args: [FFIType.ptr], returns: FFIType.ptr } }).symbols;
const p = getenv(Buffer.from("MLX_MAX_OPS_PER_BUFFER\\0"));
console.log(JSON.stringify({ c: p ? new CString(p).toString() : null, js: process.env.MLX_MAX_OPS_PER_BUFFER }));
`;

function run(extra: Record<string, string>): { c: string | null; js: string | undefined } {
  const env: Record<string, string | undefined> = { ...process.env, ...extra };
  if (!("MLX_MAX_OPS_PER_BUFFER" in extra)) delete env.MLX_MAX_OPS_PER_BUFFER;
  const r = Bun.spawnSync([process.execPath, "-e", probe], { env, stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(r.stderr.toString());
  return JSON.parse(r.stdout.toString().trim());
}

describe.skipIf(process.platform !== "linux")("MLX environment defaults", () => {
  test("MLX_MAX_OPS_PER_BUFFER defaults to 25 where MLX reads it", () => {
    expect(run({})).toEqual({ c: "25", js: "25" });
  });
  test("a value the user set stays", () => {
    expect(run({ MLX_MAX_OPS_PER_BUFFER: "100" })).toEqual({ c: "100", js: "100" });
  });
});
