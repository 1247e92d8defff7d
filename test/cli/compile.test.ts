// The single binary: `bun run compile`, then the binary alone in an empty
// folder, run from another working directory with a fresh home: it writes its
// runtime out, serves the embedded model, answers a real request, stops on SIGTERM.
import { afterAll, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "../../src/paths";

const root = mkdtempSync(join(tmpdir(), "pensieve-binary-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

test("the compiled binary serves the embedded model from an empty folder", async () => {
  const built = join(root, "build", "pensieve");
  const compile = Bun.spawnSync([process.execPath, join(REPO_ROOT, "scripts", "compile.ts"), "--out", built], {
    stdout: "pipe",
    stderr: "pipe",
  });
  expect(compile.exitCode, compile.stderr.toString()).toBe(0);

  const binDir = join(root, "bin");
  const cwd = join(root, "elsewhere");
  const home = join(root, "home");
  for (const d of [binDir, cwd, home]) mkdirSync(d, { recursive: true });
  const binary = join(binDir, "pensieve");
  copyFileSync(built, binary);
  Bun.spawnSync(["chmod", "+x", binary]);
  expect(readdirSync(binDir)).toEqual(["pensieve"]);

  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: home,
    XDG_CACHE_HOME: join(home, ".cache"),
    XDG_DATA_HOME: join(home, ".local", "share"),
    XDG_CONFIG_HOME: join(home, ".config"),
  };
  const port = 18677;
  const started = performance.now();
  const server = Bun.spawn([binary, "serve", "--port", String(port)], { cwd, env, stdout: "ignore", stderr: "pipe" });
  try {
    let healthy = false;
    for (let i = 0; i < 240 && !healthy; i++) {
      await Bun.sleep(100);
      healthy = await fetch(`http://127.0.0.1:${port}/health`).then(
        (r) => r.ok,
        () => false,
      );
    }
    const startupMs = performance.now() - started;
    expect(healthy).toBe(true);
    const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        messages: [{ role: "user", content: "What is the capital of France?" }],
        max_tokens: 20,
        temperature: 0,
      }),
    });
    expect(r.status).toBe(200);
    const body = (await r.json()) as { choices: Array<{ message: { content: string } }> };
    expect(body.choices[0]?.message.content).toContain("Paris");
    // Its runtime went to the cache, its model to the data folder; nothing into the working directory.
    expect(existsSync(join(home, ".cache", "pensieve", "runtime"))).toBe(true);
    expect(readdirSync(cwd)).toEqual([]);
    console.log(
      `binary: ${(statSync(binary).size / 2 ** 20).toFixed(1)} MiB; first start to /health ok: ${startupMs.toFixed(0)} ms`,
    );
  } finally {
    server.kill("SIGTERM");
  }
  expect(await server.exited).toBe(0);
});
