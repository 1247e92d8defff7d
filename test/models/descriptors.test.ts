// One file per architecture: the registry's descriptors are consistent, each
// tiny model's build reads exactly the tensors its descriptor lists, and the
// shared model code names no architecture (a new one is its file plus a
// registry line).
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { configFromHf, configToHf } from "../../src/models/config";
import { loadModel } from "../../src/models/loader";
import { weightShapes } from "../../src/models/random";
import {
  architectureFor,
  findGgufArchitecture,
  supportedArchitectures,
  supportedGgufArchitectures,
} from "../../src/models/registry";
import { REPO_ROOT } from "../../src/paths";
import { TINY_SPECS, tinyModel } from "../support/models";

describe("the architecture registry", () => {
  test("every model_type and GGUF architecture names one descriptor", () => {
    const types = supportedArchitectures();
    expect(new Set(types).size).toBe(types.length);
    const ggufs = supportedGgufArchitectures();
    expect(new Set(ggufs).size).toBe(ggufs.length);
    for (const g of ggufs) {
      const arch = findGgufArchitecture(g);
      expect(arch && architectureFor(arch.modelTypes[0] as string)).toBe(arch);
    }
  });

  test("the shared model code names no architecture", () => {
    const names = new Set<string>([...supportedArchitectures(), ...supportedGgufArchitectures()]);
    for (const t of supportedArchitectures()) names.add(architectureFor(t).hfClass);
    const shared = ["config", "loader", "random", "gguf-to-mlx", "model-files", "decoder", "weights", "rope"];
    for (const file of shared) {
      const source = readFileSync(join(REPO_ROOT, "src", "models", `${file}.ts`), "utf8");
      const quoted = [...source.matchAll(/"([^"\n]*)"/g)].map((m) => m[1] as string);
      expect({ file, names: quoted.filter((q) => names.has(q)) }).toEqual({ file, names: [] });
    }
  });
});

describe("each tiny model: its descriptor's tensors are exactly what its build reads", () => {
  for (const [name, spec] of Object.entries(TINY_SPECS)) {
    test(name, () => {
      const { config } = spec();
      const listed = weightShapes(config).length;
      expect(listed).toBeGreaterThan(0);
      // The build fails on a missing tensor, and on any tensor it left unread.
      const loaded = loadModel(tinyModel(name));
      try {
        expect(loaded.config.modelType).toBe(config.model_type as string);
        // convert writes the class the descriptor names, and the config reads back the same.
        const written = configToHf(loaded.config);
        expect(written.architectures).toEqual([architectureFor(loaded.config.modelType).hfClass]);
        expect(configFromHf(written)).toEqual(loaded.config);
      } finally {
        loaded.model.dispose();
      }
    });
  }
});
