// Waits until the engine has nothing running, prefilling or queued: what a
// test checks after cancelling, disconnecting or fuzzing.
import type { EngineHandle } from "../../src/engine/supervisor";

export interface EngineLoad {
  running: number;
  prefilling: number;
  waiting: number;
  steps: number;
}

export async function engineLoad(engine: EngineHandle): Promise<EngineLoad> {
  const s = await engine.stats();
  return { running: s.running, prefilling: s.prefilling, waiting: s.waiting, steps: s.steps };
}

/** Polls stats until running + prefilling + waiting == 0; returns the last stats (the caller asserts). */
export async function waitForEngineIdle(engine: EngineHandle, timeoutMs = 3000): Promise<EngineLoad> {
  const deadline = performance.now() + timeoutMs;
  while (true) {
    const load = await engineLoad(engine);
    if (load.running + load.prefilling + load.waiting === 0 || performance.now() > deadline) return load;
    await Bun.sleep(20);
  }
}
