// listModels / removeModel (src/cli/models.ts) over a temp modelsDir and a temp HF
// cache filled through the fake hub.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatModelList, listModels, removeModel } from "../../src/cli/models";
import { writeConfig } from "../../src/config";
import { EMBEDDED_MODEL_FILE } from "../../src/hub/aliases";
import { downloadModel, downloadRepoFile } from "../../src/hub/download";
import { type FakeHub, startFakeHub } from "../support/fake-hub";
import { FAST_RETRY, makeModelFolder, tempDir } from "./hub-fixtures";

const REPO = "test-org/tiny-llama-4bit";
const GGUF_REPO = "test-org/tiny-gguf";
let hub: FakeHub;
let source: ReturnType<typeof tempDir>;
let root: ReturnType<typeof tempDir>;
let env: Record<string, string>;

beforeAll(async () => {
  source = tempDir("models-src");
  makeModelFolder(source.path);
  hub = await startFakeHub({
    repos: {
      [REPO]: { dir: source.path },
      [GGUF_REPO]: { files: { "a.Q4_0.gguf": new Uint8Array(5000), "b.Q8_0.gguf": new Uint8Array(9000) } },
    },
  });
});
afterAll(async () => {
  await hub.stop();
  source.cleanup();
});

beforeEach(async () => {
  root = tempDir("models");
  env = {
    HOME: root.path,
    PENSIEVE_HOME: join(root.path, "pensieve"),
    HF_HOME: join(root.path, "hf"),
    HF_ENDPOINT: hub.url,
    XDG_CONFIG_HOME: join(root.path, "cfg"),
  };
  const models = join(root.path, "pensieve", "models");
  mkdirSync(join(models, "my-folder"), { recursive: true });
  writeFileSync(join(models, EMBEDDED_MODEL_FILE), new Uint8Array(1234));
  writeFileSync(join(models, "extra.Q8_0.gguf"), new Uint8Array(100));
  writeFileSync(join(models, "my-folder", "config.json"), "{}");
  writeFileSync(join(models, "my-folder", "model.safetensors"), new Uint8Array(10));
  mkdirSync(join(models, ".extract"));
  await downloadModel(REPO, { env, retry: FAST_RETRY });
  await downloadRepoFile(GGUF_REPO, "a.Q4_0.gguf", { env, retry: FAST_RETRY });
  await downloadRepoFile(GGUF_REPO, "b.Q8_0.gguf", { env, retry: FAST_RETRY });
});
afterEach(() => root.cleanup());

const cacheRepo = (repoId: string) => join(root.path, "hf", "hub", `models--${repoId.replace("/", "--")}`);

describe("listModels", () => {
  test("lists modelsDir and the HF cache, with sizes, aliases and the selected model", () => {
    const list = listModels({ env, selected: REPO });
    const byName = new Map(list.models.map((m) => [m.name, m]));
    const models = join(root.path, "pensieve", "models");
    expect([...byName.keys()].sort()).toEqual(
      [
        join(models, EMBEDDED_MODEL_FILE),
        join(models, "extra.Q8_0.gguf"),
        join(models, "my-folder"),
        REPO,
        `${GGUF_REPO}/a.Q4_0.gguf`,
        `${GGUF_REPO}/b.Q8_0.gguf`,
      ].sort(),
    );
    const embedded = byName.get(join(models, EMBEDDED_MODEL_FILE))!;
    expect(embedded).toMatchObject({ kind: "embedded", format: "gguf", sizeBytes: 1234, aliases: ["smollm2-135m"] });
    const cached = byName.get(REPO)!;
    expect(cached).toMatchObject({
      kind: "hub-cache",
      format: "folder",
      selected: true,
      commit: hub.commitOf(REPO),
      refs: ["main"],
      problems: [],
    });
    expect(cached.sizeBytes).toBe(
      readdirSync(join(cacheRepo(REPO), "blobs")).reduce(
        (n, f) => n + Bun.file(join(cacheRepo(REPO), "blobs", f)).size,
        0,
      ),
    );
    expect(byName.get(`${GGUF_REPO}/b.Q8_0.gguf`)).toMatchObject({ format: "gguf", sizeBytes: 9000 });
    expect(byName.get(join(models, "my-folder"))?.problems).toEqual([]);
    expect(list.selected).toEqual({ spec: REPO, present: true, error: null });
    expect(list.models.filter((m) => m.selected).length).toBe(1);
    expect(formatModelList(list)).toContain(`* ${REPO}`);
  });

  test("the selection comes from the configuration by default", () => {
    writeConfig(join(root.path, "cfg", "pensieve", "config.json"), { model: "smollm2-135m" });
    const list = listModels({ env });
    expect(list.models.find((m) => m.selected)?.kind).toBe("embedded");
    expect(list.selected.spec).toBe("smollm2-135m");
  });

  test("an incomplete snapshot is flagged, and a missing selected model is reported", () => {
    const snap = join(cacheRepo(REPO), "snapshots", hub.commitOf(REPO));
    rmSync(join(snap, "model-00002-of-00002.safetensors"));
    const list = listModels({ env, selected: "phi3-mini-mlx" });
    expect(list.models.find((m) => m.name === REPO)?.problems).toEqual([
      "missing weight shards: model-00002-of-00002.safetensors",
    ]);
    expect(list.selected.present).toBe(false);
    expect(formatModelList(list)).toContain('configured model "phi3-mini-mlx" is not on this machine');
  });
});

describe("removeModel", () => {
  test("removes a cached repo, every revision and blob", () => {
    const result = removeModel(REPO, { env });
    expect(result.removed).toEqual([cacheRepo(REPO)]);
    expect(result.freedBytes).toBeGreaterThan(500_000);
    expect(existsSync(cacheRepo(REPO))).toBe(false);
    expect(listModels({ env, selected: REPO }).selected.present).toBe(false);
  });

  test("removes one GGUF of a cached repo and only its blob", () => {
    const result = removeModel(`${GGUF_REPO}/a.Q4_0.gguf`, { env });
    expect(result.freedBytes).toBe(5000);
    const names = listModels({ env }).models.map((m) => m.name);
    expect(names).not.toContain(`${GGUF_REPO}/a.Q4_0.gguf`);
    expect(names).toContain(`${GGUF_REPO}/b.Q8_0.gguf`);
    expect(readdirSync(join(cacheRepo(GGUF_REPO), "blobs")).length).toBe(1);
  });

  test("removes files and folders under modelsDir, by alias, name or path", () => {
    const models = join(root.path, "pensieve", "models");
    expect(removeModel("extra.Q8_0.gguf", { env }).removed).toEqual([join(models, "extra.Q8_0.gguf")]);
    expect(removeModel(join(models, "my-folder"), { env }).freedBytes).toBe(12);
    expect(removeModel("smollm2-135m", { env }).removed).toEqual([join(models, EMBEDDED_MODEL_FILE)]);
    expect(readdirSync(models)).toEqual([".extract"]);
  });

  test("a link in modelsDir is removed as a link, never its target", () => {
    const outside = join(root.path, "precious.gguf");
    writeFileSync(outside, "keep me");
    const link = join(root.path, "pensieve", "models", "linked.gguf");
    symlinkSync(outside, link);
    removeModel(link, { env });
    expect(existsSync(link)).toBe(false);
    expect(existsSync(outside)).toBe(true);
  });

  test("refuses paths outside modelsDir and the HF cache, and models that are not there", () => {
    const outside = join(root.path, "elsewhere.gguf");
    writeFileSync(outside, "x");
    expect(() => removeModel(outside, { env })).toThrow(/^refusing to remove .*elsewhere\.gguf: Pensieve only deletes/);
    expect(existsSync(outside)).toBe(true);
    expect(() => removeModel(join(root.path, "pensieve", "models"), { env })).toThrow("refusing to remove");
    expect(() => removeModel("phi3-mini-mlx", { env })).toThrow(
      "mlx-community/Phi-3-mini-128k-instruct-4bit is not in the Hugging Face cache",
    );
    expect(() => removeModel(`${GGUF_REPO}/zzz.gguf`, { env })).toThrow("is not in the Hugging Face cache");
    expect(() => removeModel("./nope.gguf", { env, cwd: root.path })).toThrow("no such model file or folder");
  });
});
