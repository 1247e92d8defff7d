// The llama.cpp anchor's model (issue 11, bench/gpu/device.sh llama-build): an MLX
// Phi-3 folder written as a Q4_0 GGUF by scripts/mlx-to-gguf.ts. Pensieve loads
// the file as phi3 with the folder's LongRoPE; the Q4_0 weights stay within one
// Q4_0 step of the MLX ones; and llama.cpp (node-llama-cpp's CPU build, the
// outside oracle, run when bench/.cache/node has it: `bun run bench generate`
// installs it) loads it as arch phi3 and its greedy tokens equal Pensieve's on
// the same file.
import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateTokens } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import { readGguf } from "../../src/formats/gguf";
import { loadModel } from "../../src/models/loader";
import { REPO_ROOT } from "../../src/paths";
import { quantizeQ4_0 } from "../../scripts/gguf-writer";
import { mlxPhi3ToGguf } from "../../scripts/mlx-to-gguf";
import { TEST_TMP, tinyModel } from "../support/models";
import { useExactCpuMatmul } from "../support/oracle";

useExactCpuMatmul();
const PEER = join(REPO_ROOT, "bench", ".cache", "node", "node_modules", "node-llama-cpp");
// Longer than the tiny model's original context (64): both engines then use LongRoPE's long factors
// (llama.cpp picks them by its context size, Pensieve by the sequence length).
const PROMPT = [1, ...Array.from({ length: 99 }, (_, i) => 300 + ((i * 7919) % 20000))];
const GREEDY = 16;
const dir = join(TEST_TMP, "phi3-gguf");

describe("MLX Phi-3 → Q4_0 GGUF (the llama.cpp anchor's model)", () => {
  test("Q4_0 blocks round-trip within half a step (one step where a block's far end clamps at 15)", () => {
    const x = Float32Array.from({ length: 32 * 64 }, (_, i) => Math.sin(i * 12.9898) * (1 + (i % 7)));
    const q = new Uint8Array(64 * 18);
    quantizeQ4_0(x, q);
    const view = new DataView(q.buffer);
    for (let b = 0; b < 64; b++) {
      const d = view.getFloat16(b * 18, true);
      for (let j = 0; j < 32; j++) {
        const byte = q[b * 18 + 2 + (j % 16)] as number;
        const nibble = j < 16 ? byte & 15 : byte >> 4;
        const err = Math.abs((x[b * 32 + j] as number) - d * (nibble - 8));
        expect(err).toBeLessThanOrEqual(Math.abs(d) * (nibble === 15 ? 1.01 : 0.51));
      }
    }
  });

  test("tiny Phi-3 (4-bit MLX, LongRoPE): loads as phi3; greedy tokens equal llama.cpp's on the same file", () => {
    mkdirSync(dir, { recursive: true });
    const gguf = join(dir, "tiny-phi3-q4_0.gguf");
    const folder = tinyModel("tiny-phi3");
    mlxPhi3ToGguf(folder, gguf);
    const meta = readGguf(gguf).metadata;
    expect(meta.get("general.architecture")).toBe("phi3");
    expect(meta.get("phi3.rope.scaling.original_context_length")).toBe(64);

    const loaded = loadModel(gguf);
    let ours: number[];
    try {
      expect(loaded.config.modelType).toBe("phi3");
      expect(loaded.config.ropeScaling?.type).toBe("longrope");
      ours = [];
      for (const step of generateTokens(loaded.model, PROMPT, { maxTokens: GREEDY, sampling: samplingParams() })) {
        ours.push(step.token);
      }
    } finally {
      loaded.model.dispose();
    }
    expect(ours).toHaveLength(GREEDY);
    if (!existsSync(PEER)) {
      console.warn(`node-llama-cpp is not in ${PEER}: llama.cpp's side skipped`);
      return;
    }
    const promptFile = join(dir, "prompt.json");
    writeFileSync(promptFile, JSON.stringify(PROMPT));
    const engine = join(REPO_ROOT, "bench", "engines", "llamacpp-generate.mjs");
    const r = Bun.spawnSync([process.execPath, engine, gguf, promptFile, String(GREEDY), "1", "cpu"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(r.exitCode, r.stderr.toString().slice(-2000)).toBe(0);
    const theirs = JSON.parse(r.stdout.toString().trim().split("\n").at(-1) as string) as { tokens: number[] };
    expect(ours).toEqual(theirs.tokens);
    expect(readFileSync(gguf).length).toBeGreaterThan(0);
  }, 120_000);
});
