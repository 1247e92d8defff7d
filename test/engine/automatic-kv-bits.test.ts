// Automatic KV storage in the engine's memory plan, at the flagship's real dimensions
// (Phi-3-mini-128k's config: 32 layers, 32 KV heads of 96, 384 KiB of fp16 KV a token).
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { planMemory } from "../../src/engine/engine-plan";
import { AUTOMATIC_KV8_BELOW_SESSIONS, CLAUDE_CODE_SESSION_TOKENS, concurrentFit } from "../../src/engine/kv-pool";
import { configFromHf } from "../../src/models/config";

const PHI3 = join(import.meta.dir, "..", "..", "..", "shared", "fixtures", "phi3-mini-128k", "config.json");
const phi3 = configFromHf(JSON.parse(readFileSync(PHI3, "utf8")));
const WEIGHTS = 2.2e9; // the 4-bit file
type Settings = Omit<Parameters<typeof planMemory>[0], "model">;
const plan = (settings: Settings) => planMemory({ model: PHI3, ...settings }, phi3, WEIGHTS, "cpu", 2);
const sessions = (p: ReturnType<typeof planMemory>) =>
  concurrentFit(
    { budgetBytes: p.kvBudgetBytes, bytesPerToken: p.bytesPerToken, numLayers: 32, growthStep: 256 },
    Math.min(CLAUDE_CODE_SESSION_TOKENS, p.contextLength),
  );

test("8-bit exactly where the float pool holds fewer than two Claude Code sessions, and then it holds more", () => {
  const float = plan({ kvBits: 0 });
  const auto = plan({});
  expect(float.bytesPerToken).toBe(384 * 1024);
  if (sessions(float) < AUTOMATIC_KV8_BELOW_SESSIONS) {
    expect(auto.kvBits).toBe(8);
    expect(auto.bytesPerToken).toBe(216 * 1024);
    expect(sessions(auto)).toBeGreaterThan(sessions(float));
    expect(auto.estimate.message).toContain("8-bit KV (automatic");
  } else {
    expect(auto.kvBits).toBe(0);
  }
});

test("a budget small enough to need it switches to 8-bit; explicit settings are kept", () => {
  // A machine whose pool holds one fp16 session: the plan's budget comes from memory, not a setting.
  const small = plan({ maxContext: 32_768 });
  if (sessions(plan({ kvBits: 0, maxContext: 32_768 })) < 2) expect(small.kvBits).toBe(8);
  expect(plan({ kvBits: 0 }).kvBits).toBe(0);
  expect(plan({ kvBits: 4 }).kvBits).toBe(4);
  // An explicit KV budget (the tests' small pools) keeps float unless bits are set.
  expect(plan({ kvBudgetBytes: 4 * 1024 ** 3 }).kvBits).toBe(0);
});
