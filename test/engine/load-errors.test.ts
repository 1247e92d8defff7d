// Broken model files give clear errors, never a crash.
import { describe, expect, test } from "bun:test";
import { copyFileSync, cpSync, mkdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadModel } from "../../src/models/loader";
import { EMBEDDED_MODEL, TEST_TMP, tinyModel } from "../support/models";

const ROOT = join(TEST_TMP, "broken-models");

function copyOf(name: string, mutate: (dir: string) => void): string {
  const dir = join(ROOT, name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(ROOT, { recursive: true });
  cpSync(tinyModel("tiny-llama"), dir, { recursive: true });
  mutate(dir);
  return dir;
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void) {
  const path = join(dir, "config.json");
  const c = JSON.parse(readFileSync(path, "utf8"));
  edit(c);
  writeFileSync(path, JSON.stringify(c));
}

describe("model loading errors", () => {
  test("missing path", () => {
    expect(() => loadModel(join(ROOT, "nothing-here"))).toThrow(/no model at/);
  });

  test("unknown architecture", () => {
    const dir = copyOf("unknown-arch", (d) => editConfig(d, (c) => (c.model_type = "mamba2")));
    expect(() => loadModel(dir)).toThrow(/unsupported architecture "mamba2": Pensieve runs llama, mistral, phi3/);
  });

  test("config.json that is not JSON", () => {
    const dir = copyOf("bad-config", (d) => writeFileSync(join(d, "config.json"), "{ not json"));
    expect(() => loadModel(dir)).toThrow(/config\.json is not valid JSON/);
  });

  test("config that does not match the weights (hidden size)", () => {
    const dir = copyOf("mismatch", (d) => editConfig(d, (c) => (c.hidden_size = 256)));
    expect(() => loadModel(dir)).toThrow(/input features|unsupported quantization/);
  });

  test("config with more layers than the weights", () => {
    const dir = copyOf("missing-layer", (d) => editConfig(d, (c) => (c.num_hidden_layers = 3)));
    expect(() => loadModel(dir)).toThrow(/missing tensor "model\.layers\.2\./);
  });

  test("truncated safetensors", () => {
    const dir = copyOf("truncated", (d) => truncateSync(join(d, "model.safetensors"), 100_000));
    expect(() => loadModel(dir)).toThrow(/model\.safetensors/);
  });

  test("corrupt safetensors header", () => {
    const dir = copyOf("corrupt", (d) => {
      const path = join(d, "model.safetensors");
      const bytes = readFileSync(path);
      bytes.write("garbage!", 8);
      writeFileSync(path, bytes);
    });
    expect(() => loadModel(dir)).toThrow(/cannot load weights/);
  });

  test("index naming a missing shard", () => {
    const dir = copyOf("missing-shard", (d) => {
      writeFileSync(
        join(d, "model.safetensors.index.json"),
        JSON.stringify({ weight_map: { a: "model-00002.safetensors" } }),
      );
    });
    expect(() => loadModel(dir)).toThrow(/names model-00002\.safetensors, which is not in/);
  });

  test("truncated GGUF", () => {
    mkdirSync(ROOT, { recursive: true });
    const path = join(ROOT, "truncated.gguf");
    copyFileSync(EMBEDDED_MODEL, path);
    truncateSync(path, 50_000_000);
    expect(() => loadModel(path)).toThrow(/GGUF/);
  });

  test("a file that is not a model", () => {
    mkdirSync(ROOT, { recursive: true });
    const path = join(ROOT, "notes.gguf");
    writeFileSync(path, "hello, not a gguf file at all");
    expect(() => loadModel(path)).toThrow(/GGUF/);
  });

  test("the process is still healthy after all of that", () => {
    const { model } = loadModel(tinyModel("tiny-llama"));
    expect(model.config.modelType).toBe("llama");
    model.dispose();
  });
});
