// The engine: a loaded model plus its scheduler, driven by a loop that yields
// to the event loop between steps (so IPC messages and cancellations arrive).
// All MLX work happens on this one thread.
import { freemem, totalmem } from "node:os";
import { basename } from "node:path";
import * as mx from "../mlx";
import { type LoadedModel, loadModel } from "../models/loader";
import type { EngineConfig, EngineInfo, EngineStats } from "./protocol";
import { type EngineEvent, type EngineRequest, Scheduler, type SchedulerOptions } from "./scheduler";

const GiB = 1024 ** 3;

/** Device memory the engine may plan with: GPU memory (CUDA), else system memory. */
export function deviceMemoryBytes(device: "cpu" | "gpu"): number {
  if (device === "gpu" && process.platform === "linux") {
    const r = Bun.spawnSync(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"], {
      stdout: "pipe",
      stderr: "ignore",
    });
    const mib = Number.parseInt(r.stdout.toString().trim().split("\n")[0] ?? "", 10);
    if (r.exitCode === 0 && Number.isFinite(mib)) return mib * 1024 * 1024;
  }
  return totalmem();
}

/**
 * Scheduler limits from the config, with defaults derived from memory: the KV
 * budget is what is left after the weights, within a fraction of the device
 * (a quarter of system RAM on the CPU, which also holds everything else).
 */
export function schedulerOptions(
  config: EngineConfig,
  loaded: LoadedModel,
  device: "cpu" | "gpu",
  bytesPerToken: number,
): SchedulerOptions {
  const memory = deviceMemoryBytes(device);
  const share = device === "gpu" ? 0.85 : 0.25;
  const free = device === "cpu" ? Math.min(memory * share, freemem() * 0.6) : memory * share;
  const autoBudget = Math.max(256 * 1024 ** 2, free - loaded.weightBytes);
  const kvBudgetBytes = config.kvBudgetBytes ?? Math.floor(autoBudget * 0.8);
  const maxPositions = loaded.config.maxPositionEmbeddings;
  // Default context: what the model supports, capped so one sequence fits the budget.
  const fits = Math.floor(kvBudgetBytes / bytesPerToken);
  const contextLength = Math.max(16, Math.min(maxPositions, config.maxContext ?? fits, fits));
  return {
    maxConcurrent: config.maxConcurrent ?? (device === "gpu" ? 64 : 16),
    queueSize: config.queueSize ?? 256,
    kvBudgetBytes,
    contextLength,
    prefillChunk: config.prefillChunk ?? 512,
    interleavedPrefillChunk: config.interleavedPrefillChunk ?? (device === "gpu" ? 256 : 32),
    prefixCacheBytes: config.prefixCacheBytes ?? Math.min(4 * GiB, Math.floor(autoBudget * 0.2)),
  };
}

export class Engine {
  readonly loaded: LoadedModel;
  readonly scheduler: Scheduler;
  readonly info: EngineInfo;
  #wake: (() => void) | null = null;
  #running = false;
  #stopped = false;

  constructor(config: EngineConfig, emit: (event: EngineEvent) => void) {
    const started = performance.now();
    const device = config.device ?? (mx.gpuAvailable() ? "gpu" : "cpu");
    mx.setDevice(device);
    this.loaded = loadModel(config.model, { alwaysLongRope: config.alwaysLongRope });
    const c = this.loaded.config;
    const bytesPerToken = c.numLayers * 2 * c.numKvHeads * c.headDim * mx.dtypeBytes(this.loaded.model.dtype);
    const options = schedulerOptions(config, this.loaded, device, bytesPerToken);
    const fault = config.faultTokenId ?? null;
    if (fault !== null) this.#installFault(fault);
    this.scheduler = new Scheduler(this.loaded.model, options, emit);
    this.info = {
      modelPath: config.model,
      modelName: basename(config.model).replace(/\.gguf$/i, ""),
      format: this.loaded.format,
      modelType: c.modelType,
      vocabSize: c.vocabSize,
      contextLength: options.contextLength,
      maxPositionEmbeddings: c.maxPositionEmbeddings,
      dtype: mx.dtypeName(this.loaded.model.dtype),
      device,
      mlxVersion: mx.mlxVersion(),
      weightBytes: this.loaded.weightBytes,
      kvBytesPerToken: bytesPerToken,
      loadMs: performance.now() - started,
      pid: process.pid,
    };
  }

  /** Test hook: a prompt containing `token` makes the forward pass throw, as an MLX failure would. */
  #installFault(token: number): void {
    const model = this.loaded.model;
    const forward = model.forward.bind(model);
    model.forward = (tokens, batch, options) => {
      if (tokens.shape[1] !== 1 && Array.from(tokens.read() as Int32Array).includes(token)) {
        throw new Error(`[fault injection] token ${token} in the prompt`);
      }
      return forward(tokens, batch, options);
    };
  }

  submit(request: EngineRequest): void {
    this.scheduler.submit(request);
    this.#wake?.();
  }

  cancel(id: string): void {
    this.scheduler.cancel(id);
    this.#wake?.();
  }

  stats(): EngineStats {
    return {
      ...this.scheduler.stats(),
      memory: { activeBytes: mx.memory.active(), peakBytes: mx.memory.peak(), cacheBytes: mx.memory.cache() },
    };
  }

  /** Runs steps while there is work; sleeps otherwise. Returns when stop() is called. */
  async run(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    while (!this.#stopped) {
      if (!this.scheduler.hasWork()) {
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
        this.#wake = null;
        continue;
      }
      this.scheduler.step();
      // Let messages (new requests, cancellations) in between steps.
      await new Promise((resolve) => setImmediate(resolve));
    }
    this.#running = false;
  }

  stop(): void {
    this.#stopped = true;
    this.scheduler.dispose();
    this.#wake?.();
  }
}
