// doctor() over temp folders; the MLX-free guarantee is checked in a child
// process whose shim path is broken, so importing MLX would crash it.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type DoctorReport, doctor, formatDoctorReport, printDoctorReport } from "../../src/cli/doctor";
import { writeConfig } from "../../src/config";
import { downloadModel } from "../../src/hub/download";
import { REPO_ROOT } from "../../src/paths";
import { type FakeHub, startFakeHub } from "../support/fake-hub";
import { FAST_RETRY, makeModelFolder, tempDir } from "./hub-fixtures";

const REPO = "test-org/tiny-llama-4bit";
let hub: FakeHub;
let source: ReturnType<typeof tempDir>;
let root: ReturnType<typeof tempDir>;
let env: Record<string, string>;

beforeAll(async () => {
  source = tempDir("doctor-src");
  makeModelFolder(source.path);
  hub = await startFakeHub({ repos: { [REPO]: { dir: source.path } } });
});
afterAll(async () => {
  await hub.stop();
  source.cleanup();
  root?.cleanup();
});
beforeEach(() => {
  root?.cleanup();
  root = tempDir("doctor");
  env = {
    HOME: root.path,
    PATH: process.env.PATH ?? "",
    PENSIEVE_HOME: join(root.path, "pensieve"),
    HF_HOME: join(root.path, "hf"),
    HF_ENDPOINT: hub.url,
    XDG_CONFIG_HOME: join(root.path, "cfg"),
  };
});

const check = (report: DoctorReport, id: string) => report.checks.find((c) => c.id === id);

describe("doctor", () => {
  test("reports the machine, the backend and where things live", async () => {
    const report = await doctor({ env });
    const ids = report.checks.map((c) => c.id);
    for (const id of ["bun", "config", "backend", "mlx", "shim", "default-model", "model", "cpu", "memory", "hub"]) {
      expect(ids).toContain(id);
    }
    expect(report.backend.choice).not.toBeNull();
    expect(report.backend.reason.length).toBeGreaterThan(0);
    expect(report.backend.mlxVersion).toMatch(/^\d+\.\d+\.\d+$/);
    expect(report.system.bunVersion).toBe(Bun.version);
    expect(report.system.totalMemoryBytes).toBeGreaterThan(0);
    expect(report.paths).toEqual({
      pensieveHome: join(root.path, "pensieve"),
      modelsDir: join(root.path, "pensieve", "models"),
      configFile: null,
      hfHome: join(root.path, "hf"),
      hfCache: join(root.path, "hf", "hub"),
    });
    expect(report.disk.map((d) => d.path)).toEqual([report.paths.modelsDir, report.paths.hfCache]);
    expect(report.disk.every((d) => (d.freeBytes ?? 0) > 0)).toBe(true);
    expect(report.mlx).toBeNull();
  });

  test("a missing default model is a problem with its fix", async () => {
    const report = await doctor({ env });
    const missing = check(report, "default-model")!;
    expect(missing.status).toBe("warn");
    expect(missing.detail).toContain("SmolLM2-135M-Instruct.Q4_1.gguf is missing");
    expect(missing.fix).toContain("npm run setup");
    // The default config selects the embedded model: missing too.
    expect(check(report, "model")).toMatchObject({ status: "fail" });
    expect(report.ok).toBe(false);
    const text = formatDoctorReport(report);
    expect(text).toContain("[WARN] Default model");
    expect(text).toMatch(/is missing from .* → run `npm run setup`/);
    expect(text).toMatch(/\d+ problems?, \d+ warnings?\.$/);
  });

  test("a bad configuration value fails the config check with its source", async () => {
    const report = await doctor({ env: { ...env, PENSIEVE_PORT: "abc" } });
    expect(check(report, "config")).toMatchObject({
      status: "fail",
      detail: 'config: port (from PENSIEVE_PORT): expected an integer between 1 and 65535, got "abc"',
    });
    expect(report.ok).toBe(false);
  });

  test("a configured Hub model: not downloaded, offline, then cached with a memory estimate", async () => {
    writeConfig(join(root.path, "cfg", "pensieve", "config.json"), { model: REPO, maxContext: 1024 });
    const notYet = await doctor({ env });
    expect(notYet.paths.configFile).toBe(join(root.path, "cfg", "pensieve", "config.json"));
    expect(check(notYet, "model")).toMatchObject({ status: "info" });
    expect(check(notYet, "model")?.detail).toContain("is not downloaded");

    const offline = await doctor({ env: { ...env, HF_HUB_OFFLINE: "1" } });
    expect(check(offline, "model")).toMatchObject({
      status: "fail",
      fix: "unset HF_HUB_OFFLINE so it can be downloaded",
    });
    expect(check(offline, "hub")?.detail).toContain("HF_HUB_OFFLINE");

    await downloadModel(REPO, { env, retry: FAST_RETRY });
    const cached = await doctor({ env });
    expect(check(cached, "model")).toMatchObject({ status: "ok" });
    expect(check(cached, "model-memory")).toMatchObject({ status: "ok" });
    expect(check(cached, "model-memory")?.detail).toContain("context 1024 needs");
  });

  test("the embedded model present passes", async () => {
    mkdirSync(join(root.path, "pensieve", "models"), { recursive: true });
    writeFileSync(join(root.path, "pensieve", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"), "gguf");
    const report = await doctor({ env });
    expect(check(report, "default-model")?.status).toBe("ok");
    expect(check(report, "model")?.status).toBe("ok");
    // That file is no GGUF: its memory cannot be sized, and doctor says why.
    expect(check(report, "model-memory")).toMatchObject({ status: "fail" });
    expect(check(report, "model-memory")?.detail).toContain("cannot read GGUF");
  });

  test("a local model (GGUF file or folder) gets a memory estimate too", async () => {
    const gguf = join(REPO_ROOT, ".pensieve", "models", "SmolLM2-135M-Instruct.Q4_1.gguf");
    const folder = join(root.path, "local-model");
    makeModelFolder(folder);
    for (const model of [gguf, folder]) {
      const report = await doctor({ env: { ...env, PENSIEVE_MODEL: model, PENSIEVE_MAX_CONTEXT: "2048" } });
      expect(check(report, "model")).toMatchObject({ status: "ok" });
      expect(check(report, "model-memory")).toMatchObject({ status: "ok" });
      expect(check(report, "model-memory")?.detail).toContain("context 2048 needs");
      // 2048 tokens cannot hold Claude Code's ~20K-token first request: doctor says so and what to run.
      expect(check(report, "claude-code")).toMatchObject({ status: "warn" });
      expect(check(report, "claude-code")?.detail).toContain("holds 2048 tokens");
      expect(check(report, "claude-code")?.fix).toContain("pensieve setup --model phi3-mini-mlx");
    }
  });

  test("printDoctorReport writes the formatted text", async () => {
    const report = await doctor({ env });
    let written = "";
    printDoctorReport(report, { write: (s: string) => (written += s) });
    expect(written).toBe(`${formatDoctorReport(report)}\n`);
  });

  test("doctor does not load MLX, unless asked, and then reports a load failure instead of crashing", async () => {
    const script = `
      import { doctor } from "./src/cli/doctor";
      const plain = await doctor();
      const loaded = await doctor({ loadMlx: true });
      console.log(JSON.stringify({ plain: plain.mlx, loaded: loaded.checks.find((c) => c.id === "mlx-load") }));
    `;
    const child = Bun.spawnSync([process.execPath, "-e", script], {
      cwd: REPO_ROOT,
      env: { ...env, PENSIEVE_SHIM: join(root.path, "no-such-shim.so") },
    });
    expect(child.stderr.toString()).toBe("");
    expect(child.exitCode).toBe(0);
    const out = JSON.parse(child.stdout.toString()) as { plain: unknown; loaded: { status: string; detail: string } };
    expect(out.plain).toBeNull();
    expect(out.loaded.status).toBe("fail");
    expect(out.loaded.detail).toContain("no-such-shim.so");
  });
});
