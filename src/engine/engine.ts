// The engine: a loaded model plus its scheduler, driven by a loop that yields
// to the event loop between steps (so IPC messages and cancellations arrive).
// All MLX work happens on this one thread.
import { mkdirSync, statfsSync } from "node:fs";
import { basename, join } from "node:path";
import * as mx from "../mlx";
import { distributedGroup } from "../mlx/distributed";
import { fusedVerifyAvailableTokens, holdFusedRowsUntilBuilt } from "../models/gpu-fused";
import { batchedQmmReplacesDenseCopies } from "../models/gpu-qmm";
import { type LoadedModel, loadModel, readModelConfig } from "../models/loader";
import { denseCopyBytes } from "../models/weights";
import { pensieveHome } from "../paths";
import { type ConstraintSpec, JsonConstraintFactory } from "../text/json-constraint";
import { tokenByteTable } from "../text/token-bytes";
import { loadTokenizer } from "../text/tokenizer";
import type { KvBits } from "./attention-plan";
import { draftMismatch } from "./draft-model";
import { bufferCacheLimit, planMemory, schedulerOptions } from "./engine-plan";
import { KVCache } from "./kv-cache";
import { cpuPackedWeightBytes } from "./memory-plan";
import { cacheShape } from "./one-sequence";
import { fileIdentity, modelKey, PrefixStore } from "./prefix-store";
import {
  type EngineConfig,
  type EngineEvent,
  type EngineInfo,
  type EngineRequest,
  type EngineStats,
  samplingParams,
} from "./protocol";
import { Scheduler, type TokenConstraint } from "./scheduler";
import { agreeOnMinimum } from "./tensor-parallel";
import { verifyWarmupLengths, warmDecodeRows, warmupLengths, warmVerifyPass } from "./warmup";

export { warmupLengths };

/** At shutdown, cached prefixes are written for at most this long (the supervisor's grace is 3 s). */
const SHUTDOWN_PERSIST_MS = 2000;
/**
 * Cached prefixes go to disk after this long without work (a piece at a
 * time, yielding to new work between pieces): a client's pause between
 * turns, well before MLX's buffer cache is released.
 */
const PERSIST_QUIET_MS = 1000;

/** The disk budget for cached prefixes: the setting, or up to 16 GiB and a quarter of the free disk. */
export function prefixDiskBudget(setting: number | null, dir: string): number {
  if (setting !== null) return setting;
  try {
    const fs = statfsSync(dir);
    return Math.min(16 * 1024 ** 3, Math.floor((fs.bavail * fs.bsize) / 4));
  } catch {
    return 0;
  }
}

/** The prefix cache on disk for this model, or null when off or unavailable. */
function openPrefixStore(config: EngineConfig, loaded: LoadedModel, kvBits: KvBits): PrefixStore | null {
  if (config.prefixDiskBytes === undefined || config.prefixDiskBytes === 0) return null;
  const root = config.prefixDiskDir ?? join(pensieveHome(), "prefix-cache");
  try {
    const c = loaded.config;
    const layout = `${mx.dtypeName(loaded.model.dtype)}:L${c.numLayers}:H${c.numKvHeads}:D${c.headDim}:kv${kvBits}`;
    const key = modelKey({ model: fileIdentity(config.model), layout, rope: config.alwaysLongRope ? "long" : "hf" });
    mkdirSync(root, { recursive: true });
    const budget = prefixDiskBudget(config.prefixDiskBytes, root);
    if (budget <= 0) return null;
    return new PrefixStore(root, key, budget, layout, c.numLayers, mx.getDevice(), config.prefixDiskPieceBytes);
  } catch {
    // A read-only or missing data folder costs the feature, not the engine.
    return null;
  }
}

const WARMUP_ID = "\u0000warmup-";
const WARMUP_QUIET_MS = 250;

/**
 * Refuses a draft model whose tokenizer differs from the target's (its token
 * ids would mean other text), before any weight loads: the error names both paths.
 */
export function checkDraftModel(targetPath: string, draftPath: string): void {
  const problem = draftMismatch(
    { vocabSize: readModelConfig(targetPath).config.vocabSize, tokenizer: loadTokenizer(targetPath) },
    { vocabSize: readModelConfig(draftPath).config.vocabSize, tokenizer: loadTokenizer(draftPath) },
  );
  if (problem) {
    throw new Error(`draft model ${draftPath} does not share the tokenizer of ${targetPath}: ${problem}`);
  }
}

/** Loads a draft model for `target` (checkDraftModel first), in the target's dtype. */
export function loadDraftModel(targetPath: string, draftPath: string, target: LoadedModel): LoadedModel {
  checkDraftModel(targetPath, draftPath);
  return loadModel(draftPath, { dtype: target.model.dtype });
}

export class Engine {
  readonly loaded: LoadedModel;
  /** The draft model (config.draftModel), or null. */
  readonly draft: LoadedModel | null;
  readonly scheduler: Scheduler;
  readonly info: EngineInfo;
  #wake: (() => void) | null = null;
  /** Built when the first constrained request arrives: most servers never need the tokenizer here. */
  #constraints: JsonConstraintFactory | null = null;
  #running = false;
  #stopped = false;
  readonly #cacheReleaseIdleMs: number;
  /** Prompt lengths still to prefill once while idle, so that real prompts find their shapes built. */
  #warmups: number[] = [];
  #warmupCount = 0;
  /** Id of the warm-up request in flight, whose events clients must not see. */
  #warming: string | null = null;
  /** Fused kernels built while idle, after the prompt warm-ups: batch sizes (holdFusedRowsUntilBuilt), then verify-pass lengths. */
  #kernelWarmups: Array<() => void> = [];

  constructor(config: EngineConfig, emit: (event: EngineEvent) => void) {
    const started = performance.now();
    this.#cacheReleaseIdleMs = config.cacheReleaseIdleMs ?? 5000;
    const device = config.device ?? (mx.gpuAvailable() ? "gpu" : "cpu");
    mx.setDevice(device);
    // Freed buffers above this go back to the device: a long prompt's KV growth otherwise fills the card
    // with cached buffers no later allocation fits (an H100 ran out at 120K tokens).
    mx.memory.setCacheLimit(bufferCacheLimit(device));
    if (config.threads) mx.setCpuThreads(config.threads);
    // Plan memory before loading: refuse what cannot fit.
    const planned = readModelConfig(config.model);
    if (config.draftModel) checkDraftModel(config.model, config.draftModel);
    const drafter = config.draftModel ? readModelConfig(config.draftModel) : null;
    // The draft model's weights come out of the same memory (its small KV caches are not planned).
    // On the CPU, quantized weights are packed for the int8 kernel at load, and the packed copies
    // replace most plain arrays (cpuPackedWeightBytes). A GGUF's quantization is per tensor, not in
    // its config: counted as quantized.
    const packed = (path: string, c: typeof planned) =>
      device === "cpu" && mx.cpuPackingActive() && (c.config.quantization !== null || /\.gguf$/i.test(path));
    const resident = (path: string, c: typeof planned) =>
      packed(path, c) ? cpuPackedWeightBytes(c.weightBytes, c.config) : c.weightBytes;
    const weightBytes =
      resident(config.model, planned) + (drafter && config.draftModel ? resident(config.draftModel, drafter) : 0);
    const elementBytes = device === "cpu" ? 4 : 2;
    let plan = planMemory(config, planned.config, weightBytes, device, elementBytes);
    // On the GPU, dequantized copies of the weights make batched steps and
    // prefill dense products (read once for all rows); only when they fit, and
    // not when the batched 4-bit kernel serves those steps (PENSIEVE_GPU_QMM=1).
    let denseCopies = false;
    const q = planned.config.quantization;
    if (device === "gpu" && q && config.denseWeights !== false && !batchedQmmReplacesDenseCopies(q)) {
      const withDense = weightBytes + denseCopyBytes(planned.weightBytes, q);
      try {
        plan = planMemory(config, planned.config, withDense, device, elementBytes);
        denseCopies = true;
      } catch {
        // Not enough memory for the copies: the quantized kernels serve every batch size.
      }
    }
    // Tensor parallelism: this rank's share of the weights. Every rank's scheduler must decide alike, so all take
    // the smallest context, KV budget and KV bits any rank planned (memory differs between machines and moments).
    const group = (config.tensorParallel?.size ?? 1) > 1 ? distributedGroup() : null;
    if (group) {
      const [contextLength, budgetMiB, kvBits] = agreeOnMinimum([
        plan.contextLength,
        Math.floor(plan.kvBudgetBytes / 2 ** 20),
        plan.kvBits,
      ]) as [number, number, KvBits];
      plan = { ...plan, contextLength, kvBudgetBytes: budgetMiB * 2 ** 20, kvBits };
    }
    const shard = group ? { rank: group.rank, size: group.size } : undefined;
    this.loaded = loadModel(config.model, { alwaysLongRope: config.alwaysLongRope, denseCopies, shard });
    const c = this.loaded.config;
    // GPU lookup only where a verify pass takes the fused kernels (measured 1.1-1.8x a step for 1-3 drafts; MLX's
    // ops ~2.3x at any length, which no acceptance repays).
    const verifyTokens =
      device === "gpu" && this.loaded.model.fusedVerifySupported?.() ? fusedVerifyAvailableTokens() : 0;
    const options = schedulerOptions(config, plan, device, verifyTokens);
    const bytesPerToken = KVCache.bytesPerToken(cacheShape(this.loaded.model, options.kvBits));
    const fault = config.faultTokenId ?? null;
    if (fault !== null) this.#installFault(fault);
    this.scheduler = new Scheduler(
      this.loaded.model,
      options,
      (e) => this.#forward(e, emit),
      (spec, endIds) => this.#constraint(config.model, spec, endIds),
    );
    // A rank's cached prefixes are its share of the KV heads: no disk cache under tensor parallelism yet.
    if (!group) this.scheduler.attachPrefixStore(openPrefixStore(config, this.loaded, options.kvBits ?? 0));
    // Drafting switches itself off by measured time, which ranks would not agree on: none under tensor parallelism.
    this.draft = config.draftModel && !group ? loadModel(config.draftModel, { dtype: this.loaded.model.dtype }) : null;
    this.scheduler.attachDraftModel(this.draft?.model ?? null);
    this.#warmups = warmupLengths(options);
    this.#warmupCount = this.#warmups.length;
    const model = this.loaded.model;
    const kvBits = options.kvBits ?? 0;
    // Tensor-parallel forwards never take the fused path (and a rank must not run steps alone).
    const rows = device === "gpu" && !group ? holdFusedRowsUntilBuilt() : [];
    const verifyLengths = options.speculative ? verifyWarmupLengths(verifyTokens) : [];
    this.#kernelWarmups = [
      ...rows.map((r, i) => () => warmDecodeRows(model, kvBits, r, rows[i - 1] ?? 1)),
      ...verifyLengths.map((t) => () => warmVerifyPass(model, kvBits, t)),
    ];
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
      kvBits: options.kvBits ?? 0,
      loadMs: performance.now() - started,
      pid: process.pid,
    };
  }

  /** Passes events on, less those of the warm-up in flight (at most one runs at a time). */
  #forward(e: EngineEvent, emit: (event: EngineEvent) => void): void {
    const warming = this.#warming;
    if (warming === null) {
      emit(e);
    } else if (e.type === "tokens") {
      const items = e.items.filter((t) => t.id !== warming);
      if (items.length > 0) emit(items.length === e.items.length ? e : { ...e, items });
    } else if (e.id !== warming) {
      emit(e);
    } else if (e.type === "finished" || e.type === "rejected") {
      this.#warming = null;
    }
  }

  /** Warm-up prefills not yet run. */
  get warmupsLeft(): number {
    return this.#warmups.length;
  }

  /** Queues the next warm-up prefill. */
  #warmNext(): void {
    const first = this.#warmups.length === this.#warmupCount;
    const length = this.#warmups.shift();
    if (length === undefined) return;
    this.#warming = `${WARMUP_ID}${length}`;
    this.scheduler.submit({
      id: this.#warming,
      prompt: new Array(length).fill(0),
      // The first also runs a decode step: its kernels compile here, not on the first request (the fused CUDA
      // step's NVRTC compiles took 9 s on an H200, and MLX does not keep custom kernels across processes).
      maxTokens: first ? 2 : 1,
      sampling: samplingParams(),
      stopTokenIds: [],
      internal: true,
    });
  }

  #constraint(modelPath: string, spec: ConstraintSpec, endIds: readonly number[]): TokenConstraint {
    this.#constraints ??= new JsonConstraintFactory(tokenByteTable(loadTokenizer(modelPath)));
    return this.#constraints.create(spec, endIds);
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

  /**
   * Runs steps while there is work; sleeps otherwise. Returns when stop() is
   * called, or when a step lost the device (Scheduler.deviceLost): then every
   * request has failed with the error, and the caller ends the process.
   */
  async run(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    let cacheHeld = false;
    let persistDue = false;
    let idleSince: number | null = null;
    while (!this.#stopped) {
      if (!this.scheduler.hasWork()) {
        // Idle. Warm-ups go in a quiet spell (between a client's back-to-back requests they would
        // delay the next); so do prefix writes, after a longer one; MLX's buffer cache stays for the
        // next request unless none comes for a while.
        idleSince ??= performance.now();
        const since = idleSince;
        const warm = this.#warmups.length > 0 || this.#kernelWarmups.length > 0;
        const persistAt = persistDue ? PERSIST_QUIET_MS : Number.POSITIVE_INFINITY;
        const releaseAt = cacheHeld ? this.#cacheReleaseIdleMs : Number.POSITIVE_INFINITY;
        const next = Math.min(persistAt, releaseAt);
        const wait = warm
          ? WARMUP_QUIET_MS
          : Number.isFinite(next)
            ? Math.max(0, next - (performance.now() - since))
            : null;
        const woken = await this.#sleep(wait);
        if (woken) continue;
        if (warm) {
          if (this.#warmups.length > 0) this.#warmNext();
          else {
            // A warm-up that fails (out of memory beside another process, say) costs only its kernels' first use
            // (a batch size's stays on MLX's ops).
            try {
              this.#kernelWarmups.shift()?.();
            } catch (e) {
              console.error(`[engine] kernel warm-up failed: ${(e as Error).message}`);
            }
          }
          continue;
        }
        if (persistDue && performance.now() - since >= persistAt) {
          persistDue = false;
          await this.#persistQuietly();
        }
        if (cacheHeld && !this.scheduler.hasWork() && performance.now() - since >= releaseAt) {
          mx.memory.clearCache();
          cacheHeld = false;
        }
        continue;
      }
      idleSince = null;
      cacheHeld = true;
      persistDue = true;
      this.scheduler.step();
      if (this.scheduler.deviceLost !== null) break;
      // Let messages (new requests, cancellations) in between steps.
      await new Promise((resolve) => setImmediate(resolve));
    }
    this.#running = false;
  }

  /**
   * Writes cached prefixes to disk, a piece at a time, while nothing else
   * needs the engine: new work waits at most one piece (PIECE_BYTES of KV).
   */
  async #persistQuietly(): Promise<void> {
    while (!this.#stopped && !this.scheduler.hasWork()) {
      try {
        if (!this.scheduler.persistStep()) return;
      } catch (e) {
        console.error(`[engine] writing the prefix cache failed: ${(e as Error).message}`);
        return;
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** Waits for work (true) or for `timeoutMs` to pass (false). */
  #sleep(timeoutMs: number | null): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const timer = timeoutMs === null ? null : setTimeout(() => done(false), timeoutMs);
      const done = (woken: boolean) => {
        if (timer) clearTimeout(timer);
        this.#wake = null;
        resolve(woken);
      };
      this.#wake = () => done(true);
    });
  }

  stop(): void {
    this.#stopped = true;
    this.scheduler.cancelAll();
    this.scheduler.step();
    // Pieces are short: what fits in the time is written, each piece whole, and a restart reads the chains they make.
    const deadline = performance.now() + SHUTDOWN_PERSIST_MS;
    try {
      while (performance.now() < deadline && this.scheduler.persistStep()) {}
    } catch (e) {
      console.error(`[engine] writing the prefix cache failed: ${(e as Error).message}`);
    }
    this.scheduler.dispose();
    this.#wake?.();
  }
}
