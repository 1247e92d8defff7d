import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  claudeCodeAliases,
  DEFAULT_MODEL_ALIAS,
  EMBEDDED_MODEL_FILE,
  FLAGSHIP_MODEL_ALIAS,
  MODEL_ALIASES,
  resolveModelSpec,
} from "../../src/hub/aliases";
import { readLock } from "../../src/mlx/backend";
import { supportedArchitectures } from "../../src/models/registry";

let dir: string;
let env: Record<string, string>;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "pensieve-aliases-"));
  env = { HOME: dir, PENSIEVE_HOME: join(dir, "home") };
  mkdirSync(join(dir, "home", "models"), { recursive: true });
  writeFileSync(join(dir, "home", "models", "extra.Q8_0.gguf"), "gguf");
  mkdirSync(join(dir, "work", "my-org", "my-model"), { recursive: true });
  writeFileSync(join(dir, "work", "my-org", "my-model", "config.json"), "{}");
  writeFileSync(join(dir, "work", "single.gguf"), "gguf");
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const resolve = (spec: string) => resolveModelSpec(spec, { env, cwd: join(dir, "work") });

describe("aliases", () => {
  test("the table: unique lowercase names, architectures Pensieve runs, org/name repos", () => {
    const names = MODEL_ALIASES.map((a) => a.name);
    expect(new Set(names).size).toBe(names.length);
    for (const alias of MODEL_ALIASES) {
      expect(alias.name).toBe(alias.name.toLowerCase());
      expect(supportedArchitectures()).toContain(alias.modelType);
      if (alias.source.kind === "hub") expect(alias.source.repoId).toMatch(/^mlx-community\/[\w.-]+$/);
    }
  });

  test("Claude Code: the aliases that hold it have at least a 24K context; the embedded SmolLM2 does not", () => {
    const holding = claudeCodeAliases().map((a) => a.name);
    expect(holding).toContain(FLAGSHIP_MODEL_ALIAS);
    expect(holding).toContain("qwen3-30b-a3b-mlx");
    expect(holding).not.toContain("smollm2-135m");
    expect(holding).not.toContain("phi3-mini-4k-mlx");
  });

  test("phi3-mini-mlx is the flagship Phi-3 mini 128K 4-bit", () => {
    const r = resolve(FLAGSHIP_MODEL_ALIAS);
    expect(r.kind).toBe("alias");
    if (r.kind !== "alias") throw new Error();
    expect(r.target).toEqual({
      kind: "hub",
      spec: "phi3-mini-mlx",
      repoId: "mlx-community/Phi-3-mini-128k-instruct-4bit",
      revision: "main",
      filename: null,
    });
    expect(resolve("PHI3-Mini-MLX").kind).toBe("alias");
  });

  test("smollm2-135m is the embedded GGUF in modelsDir, never a download", () => {
    expect(EMBEDDED_MODEL_FILE).toBe(readLock().defaultModel.file);
    const r = resolve(DEFAULT_MODEL_ALIAS);
    if (r.kind !== "alias") throw new Error("expected an alias");
    expect(r.target.kind).toBe("local");
    if (r.target.kind !== "local") throw new Error();
    expect(r.target.path).toBe(join(dir, "home", "models", EMBEDDED_MODEL_FILE));
    expect(r.target.format).toBe("gguf");
    expect(r.target.exists).toBe(false);
  });
});

describe("resolveModelSpec", () => {
  test("hub repo ids, revisions and GGUF files", () => {
    expect(resolve("mlx-community/Llama-3.2-1B-Instruct-4bit")).toMatchObject({
      kind: "hub",
      repoId: "mlx-community/Llama-3.2-1B-Instruct-4bit",
      revision: "main",
      filename: null,
    });
    expect(resolve("org/name@v1.0")).toMatchObject({ kind: "hub", repoId: "org/name", revision: "v1.0" });
    expect(resolve("org/name/sub/model.Q4_K_M.gguf@refs/pr/3")).toMatchObject({
      repoId: "org/name",
      filename: "sub/model.Q4_K_M.gguf",
      revision: "refs/pr/3",
    });
    expect(resolve("https://huggingface.co/org/name")).toMatchObject({ kind: "hub", repoId: "org/name" });
    expect(resolve("hf.co/org/name/m.gguf")).toMatchObject({ repoId: "org/name", filename: "m.gguf" });
    expect(resolve("https://huggingface.co/org/name/blob/dev/m.gguf")).toMatchObject({
      repoId: "org/name",
      filename: "m.gguf",
      revision: "dev",
    });
  });

  test("local paths: explicit, relative that exist, and files in modelsDir", () => {
    expect(resolve("./single.gguf")).toMatchObject({
      kind: "local",
      path: join(dir, "work", "single.gguf"),
      format: "gguf",
      exists: true,
    });
    // Exists relative to cwd: a folder, even though it looks like org/name.
    expect(resolve("my-org/my-model")).toMatchObject({ kind: "local", format: "folder", exists: true });
    expect(resolve("extra.Q8_0.gguf")).toMatchObject({
      kind: "local",
      path: join(dir, "home", "models", "extra.Q8_0.gguf"),
    });
    expect(resolve("~/x")).toMatchObject({ kind: "local", path: join(dir, "x"), exists: false });
    expect(resolve("/nowhere/model")).toMatchObject({ kind: "local", exists: false, format: "folder" });
  });

  test("what is none of these says what is accepted", () => {
    expect(() => resolve("not-a-model")).toThrow(/not an alias \(smollm2-135m, phi3-mini-mlx, .*org\/name/);
    expect(() => resolve("  ")).toThrow("empty model name");
    expect(() => resolve("org/name/pytorch_model.bin")).toThrow("only a .gguf file can be named inside a repo");
    expect(() => resolve("org/../etc")).toThrow(/not an alias/);
  });
});
