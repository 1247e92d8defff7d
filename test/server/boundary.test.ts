// The server process never loads MLX: it is checked from the outside, in the
// process's own memory map while a request streams, and by running the
// commands that must work without MLX (serve, models, doctor) with the shim's
// path pointing at nothing.
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT, selfCommand } from "../../src/paths";
import { EMBEDDED_MODEL, TEST_TMP } from "../support/models";

const MLX_LIBRARY = /libmlx|libpensieve_mlx/;

function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

function mappedMlx(pid: number): string[] {
  const maps = readFileSync(`/proc/${pid}/maps`, "utf8");
  return [
    ...new Set(
      maps
        .split("\n")
        .filter((l) => MLX_LIBRARY.test(l))
        .map((l) => l.split(/\s+/).at(-1) as string),
    ),
  ];
}

function childrenOf(pid: number): number[] {
  const text = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim();
  return text ? text.split(/\s+/).map(Number) : [];
}

async function health(port: number): Promise<{ status: number; body: Record<string, unknown> } | null> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}/health`);
    return { status: r.status, body: (await r.json()) as Record<string, unknown> };
  } catch {
    return null;
  }
}

interface Served {
  proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  port: number;
  logs(): string;
}

function serve(env: Record<string, string | undefined> = {}): Served {
  const port = freePort();
  const proc = Bun.spawn(
    [...selfCommand(), "serve", "--port", String(port), "--model", EMBEDDED_MODEL, "--backend", "cpu"],
    {
      cwd: REPO_ROOT,
      env: { ...process.env, XDG_CONFIG_HOME: join(TEST_TMP, "no-config"), ...env },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    },
  );
  let text = "";
  const decoder = new TextDecoder();
  for (const stream of [proc.stdout, proc.stderr]) {
    (async () => {
      for await (const chunk of stream) text += decoder.decode(chunk);
    })();
  }
  return { proc, port, logs: () => text };
}

const started: Served[] = [];
afterAll(() => {
  for (const s of started) s.proc.kill("SIGKILL");
});

describe("the server process", () => {
  test("maps no MLX library while a request streams; its engine child does", async () => {
    const s = serve();
    started.push(s);
    let h = await health(s.port);
    for (let i = 0; i < 300 && h?.status !== 200; i++) {
      await Bun.sleep(100);
      h = await health(s.port);
    }
    expect(h?.status).toBe(200);
    const res = await fetch(`http://127.0.0.1:${s.port}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Count to fifty." }], max_tokens: 64, stream: true }),
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    expect(first.done).toBe(false);
    // Mid-stream: the server has tokenized, templated and streamed.
    const serverMaps = mappedMlx(s.proc.pid);
    const engines = childrenOf(s.proc.pid);
    const engineMaps = engines.flatMap(mappedMlx);
    let body = new TextDecoder().decode(first.value);
    for (let r = await reader.read(); !r.done; r = await reader.read()) body += new TextDecoder().decode(r.value);
    expect(body).toContain("data: [DONE]");
    expect(serverMaps).toEqual([]);
    expect(engines.length).toBeGreaterThan(0);
    expect(engineMaps.some((p) => p.includes("libpensieve_mlx"))).toBe(true);
    expect(engineMaps.some((p) => p.includes("libmlx"))).toBe(true);
    s.proc.kill("SIGTERM");
    expect(await s.proc.exited).toBe(0);
  });
});

describe("with the shim missing", () => {
  const missing = join(TEST_TMP, "no-such-dir", "libpensieve_mlx.so");

  test("serve stays up and reports the engine failure through /health and its logs", async () => {
    const s = serve({ PENSIEVE_SHIM: missing });
    started.push(s);
    let h = await health(s.port);
    for (let i = 0; i < 300 && h?.body.status !== "failed"; i++) {
      await Bun.sleep(100);
      h = await health(s.port);
    }
    expect(h?.status).toBe(503);
    expect(h?.body).toMatchObject({ status: "failed", engine: "failed" });
    expect(String(h?.body.error)).toContain(missing);
    // A request gets a clean 503 naming the problem, not a hang or a crash.
    const res = await fetch(`http://127.0.0.1:${s.port}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 4 }),
    });
    expect(res.status).toBe(503);
    expect(JSON.stringify(await res.json())).toContain(missing);
    const failure = s
      .logs()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((r) => r.msg === "the model failed to load");
    expect(failure?.level).toBe("error");
    expect(String(failure?.error)).toContain(missing);
    s.proc.kill("SIGTERM");
    await s.proc.exited;
  });

  test("models lists the models and doctor says what to fix", () => {
    const env = { ...process.env, PENSIEVE_SHIM: missing, XDG_CONFIG_HOME: join(TEST_TMP, "no-config") };
    const models = Bun.spawnSync([...selfCommand(), "models"], { cwd: REPO_ROOT, env });
    expect(models.stderr.toString()).toBe("");
    expect(models.exitCode).toBe(0);
    expect(models.stdout.toString()).toContain("SmolLM2-135M-Instruct");

    const doctor = Bun.spawnSync([...selfCommand(), "doctor"], { cwd: REPO_ROOT, env });
    const out = doctor.stdout.toString() + doctor.stderr.toString();
    expect(doctor.exitCode).toBe(1);
    expect(out).toContain(`PENSIEVE_SHIM names ${missing}, which does not exist`);
    expect(out).toContain("unset PENSIEVE_SHIM");
    expect(out).toContain(missing);
  });
});
