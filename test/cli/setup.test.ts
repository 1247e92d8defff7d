// `pensieve setup --model org/name` end to end against a local fake Hub serving
// a real (tiny, random) Phi-3 in the mlx-community format: download into a
// fresh Hugging Face cache, memory estimate, load + generate, config written;
// then `pensieve serve` reads that config and answers a request.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { selfCommand } from "../../src/paths";
import { type FakeHub, startFakeHub } from "../support/fake-hub";
import { tinyModel } from "../support/models";

const REPO = "test-org/tiny-phi3-4bit";
let hub: FakeHub;
let home: string;

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), "pensieve-setup-"));
  hub = await startFakeHub({ repos: { [REPO]: { dir: tinyModel("tiny-phi3") } } });
});

afterAll(async () => {
  await hub.stop();
  rmSync(home, { recursive: true, force: true });
});

/** Runs the CLI without blocking this process (the fake Hub answers from here). */
async function cli(args: string[]): Promise<{ exitCode: number; stderr: string }> {
  const proc = Bun.spawn([...selfCommand(), ...args], { env: env(), stdout: "ignore", stderr: "pipe" });
  const stderr = await new Response(proc.stderr).text();
  return { exitCode: await proc.exited, stderr };
}

function env(): Record<string, string> {
  return {
    ...(process.env as Record<string, string>),
    HOME: home,
    XDG_CONFIG_HOME: join(home, "config"),
    HF_HOME: join(home, "hf"),
    HF_ENDPOINT: hub.url,
    PENSIEVE_BACKEND: "cpu",
  };
}

test("setup downloads, checks memory, validates and writes the config; serve then uses it", async () => {
  const setup = await cli(["setup", "--model", REPO]);
  const log = setup.stderr;
  expect(setup.exitCode, log).toBe(0);
  expect(log).toContain(`downloading ${REPO}`);
  expect(log).toContain("context capped at");
  expect(log).toMatch(/ok in [\d.]+ s/);
  const configPath = join(home, "config", "pensieve", "config.json");
  expect(JSON.parse(readFileSync(configPath, "utf8")).model).toBe(REPO);
  expect(existsSync(join(home, "hf", "hub", `models--${REPO.replace("/", "--")}`))).toBe(true);

  // A second setup reuses the cache: no file is transferred again.
  const before = hub.requests.filter((r) => r.method === "GET" && r.path.includes("/resolve/")).length;
  const again = await cli(["setup", "--model", REPO]);
  expect(again.exitCode, again.stderr).toBe(0);
  expect(hub.requests.filter((r) => r.method === "GET" && r.path.includes("/resolve/")).length).toBe(before);

  const server = Bun.spawn([...selfCommand(), "serve", "--port", "18655"], {
    env: env(),
    stdout: "ignore",
    stderr: "pipe",
  });
  try {
    let healthy = false;
    for (let i = 0; i < 120 && !healthy; i++) {
      await Bun.sleep(250);
      healthy = await fetch("http://127.0.0.1:18655/health").then(
        (r) => r.ok,
        () => false,
      );
    }
    expect(healthy).toBe(true);
    const models = (await (await fetch("http://127.0.0.1:18655/v1/models")).json()) as { data: Array<{ id: string }> };
    expect(models.data[0]?.id).toBeTruthy();
    const r = await fetch("http://127.0.0.1:18655/v1/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "Hello", max_tokens: 3 }),
    });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBeGreaterThan(0);
  } finally {
    server.kill("SIGTERM");
    await server.exited;
  }
});

test("a model that cannot fit is refused with a clear message", async () => {
  const r = await cli(["setup", "--model", REPO, "--max-context", "2048", "--kv-budget-bytes", "1024"]);
  expect(r.exitCode).toBe(1);
  expect(r.stderr).toMatch(/does not fit.*KV budget|KV budget.*does not fit/);
});

test("an unknown repo gives the Hub's 404 as a clear error", async () => {
  const r = await cli(["setup", "--model", "test-org/nothing-here"]);
  expect(r.exitCode).toBe(1);
  expect(r.stderr).toMatch(/not found|404/i);
});
