// Entry of the engine child process (`pensieve engine --config-json '{...}'`).
// It loads the model, then serves generate/cancel/stats messages over IPC
// until told to shut down or until its parent goes away. MLX is imported
// inside the load step, so that a shim that cannot load (missing, wrong ABI,
// broken library) is reported to the server as a load failure.
import type { Engine } from "./engine";
import type { EngineConfig, FromEngine, ToEngine } from "./protocol";

function send(message: FromEngine): void {
  process.send?.(message);
}

export async function runEngineProcess(config: EngineConfig): Promise<void> {
  if (config.tensorParallel && config.tensorParallel.size <= 1) config = { ...config, tensorParallel: null };
  // Tensor parallelism: ranks other than 0 have no IPC; they follow rank 0's steps until it stops.
  const rank = config.tensorParallel ? Number(process.env.MLX_RANK ?? 0) : 0;
  if (rank > 0) return runFollower(config);
  if (!process.send) throw new Error("the engine runs as a child of `pensieve serve` (no IPC channel)");
  let engine: Engine;
  let stopGroup: (() => void) | null = null;
  // Benchmarks and investigations only: engine settings the server has no flag for.
  const overrides = process.env.PENSIEVE_ENGINE_OVERRIDES;
  try {
    if (overrides) config = { ...config, ...(JSON.parse(overrides) as Partial<EngineConfig>) };
    // Before MLX's first JIT module: MLX reads MLX_PTX_CACHE_DIR once.
    if ((await import("../mlx/kernel-cache")).kernelCacheMode() === "mlx") {
      (await import("../mlx/kernel-cache-mlx")).useHomePtxCacheDir();
    }
    const { Engine } = await import("./engine");
    const tp = config.tensorParallel ? await import("./tensor-parallel") : null;
    const group = tp && config.tensorParallel ? tp.joinGroup(config.tensorParallel) : null;
    engine = new Engine(config, (event) => send(event));
    if (tp && group) stopGroup = tp.leadGroup(group, engine.scheduler);
    if (config.memoryHeadroomBytes != null) {
      const { capMemory } = await import("./memory-cap");
      console.error(`[engine] ${capMemory(config.memoryHeadroomBytes)}`);
    }
  } catch (e) {
    send({ type: "load-failed", message: (e as Error).message });
    // Give the IPC message time to leave before exiting.
    setTimeout(() => process.exit(3), 100);
    return;
  }
  const { liveHandleCount } = await import("../mlx");
  const { startIdleTrim } = await import("./idle-trim");
  // Busy while any sequence runs, prefills or waits (finished rows may sit in the batch until compaction).
  startIdleTrim(() => engine.scheduler.busy());
  const processStats = () => ({
    pid: process.pid,
    rssBytes: process.memoryUsage.rss(),
    liveHandles: liveHandleCount(),
  });
  process.on("message", (raw) => {
    const m = raw as ToEngine;
    switch (m.type) {
      case "generate":
        engine.submit(m.request);
        break;
      case "cancel":
        engine.cancel(m.id);
        break;
      case "stats":
        // A failure here must not end the engine (the server keeps its last values when no answer comes).
        try {
          send({ type: "stats", nonce: m.nonce, stats: { ...engine.stats(), process: processStats() } });
        } catch (e) {
          console.error(`[engine] stats failed: ${(e as Error).message}`);
        }
        break;
      case "shutdown":
        engine.stop();
        stopGroup?.();
        setTimeout(() => process.exit(0), 50);
        break;
    }
  });
  // An orphaned engine must not linger: exit when the parent disconnects or dies.
  const parent = process.ppid;
  process.on("disconnect", () => process.exit(0));
  setInterval(() => {
    if (process.ppid !== parent) process.exit(0);
  }, 1000).unref();
  send({ type: "ready", info: engine.info });
  await engine.run();
  // The device is lost for this process (a sticky CUDA error): exit, after the failures' events have left, so
  // that the supervisor starts a fresh engine.
  const lost = engine.scheduler.deviceLost;
  if (lost !== null) {
    console.error(`[engine] the device failed and cannot recover in this process; exiting for a restart (${lost})`);
    setTimeout(() => process.exit(4), 100);
  }
}

/** A tensor-parallel rank other than 0: loads its share, then runs rank 0's steps (blocking) until told to stop. */
async function runFollower(config: EngineConfig): Promise<void> {
  const tp = await import("./tensor-parallel");
  const { Engine } = await import("./engine");
  // The same settings as rank 0, overrides included: every rank's scheduler must decide alike.
  const overrides = process.env.PENSIEVE_ENGINE_OVERRIDES;
  if (overrides) config = { ...config, ...(JSON.parse(overrides) as Partial<EngineConfig>) };
  if (!config.tensorParallel) return;
  const group = tp.joinGroup(config.tensorParallel);
  const engine = new Engine(config, () => {});
  await tp.followGroup(group, engine.scheduler);
  process.exit(0);
}
