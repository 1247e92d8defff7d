// The server side of the engine: starts the engine child process, routes its
// per-step messages to per-request streams, and restarts it when it dies. A
// native crash in MLX then costs the in-flight requests (they end with a 503
// error), never the server. Runs in the server process: no MLX imports here.
// About 420 lines: the child's lifecycle (start, ready, restart, shutdown) and its message routing.
import type { Subprocess } from "bun";
import { groupLaunch } from "./group-launch";
import {
  type ConstraintSpec,
  type EngineConfig,
  type EngineInfo,
  type EngineRequest,
  type EngineStats,
  type FinishReason,
  type FromEngine,
  type SamplingParams,
  samplingProblem,
  type ToEngine,
} from "./protocol";

export type StreamEvent =
  | { type: "started"; promptTokens: number; cachedTokens: number; queuedMs: number }
  | { type: "token"; token: number; logprob: number | null; top: Array<{ token: number; logprob: number }> | null }
  | { type: "finished"; reason: FinishReason; completionTokens: number; message?: string }
  | { type: "error"; status: number; message: string; retryAfterSeconds?: number };

export interface GenerateInput {
  prompt: number[];
  maxTokens: number;
  sampling: SamplingParams;
  stopTokenIds: number[];
  /** Constrained decoding (response_format); the engine loads the tokenizer the first time. */
  constraint?: ConstraintSpec;
}

/** One request's events, in order; ends after "finished" or "error". */
export class GenerationStream implements AsyncIterable<StreamEvent> {
  readonly id: string;
  #queue: StreamEvent[] = [];
  #waiter: (() => void) | null = null;
  #ended = false;
  #onCancel: () => void;

  constructor(id: string, onCancel: () => void) {
    this.id = id;
    this.#onCancel = onCancel;
  }

  get ended(): boolean {
    return this.#ended;
  }

  push(event: StreamEvent): void {
    if (this.#ended) return;
    this.#queue.push(event);
    if (event.type === "finished" || event.type === "error") this.#ended = true;
    this.#waiter?.();
  }

  /** Stops generation (the engine frees the sequence at its next step). */
  cancel(): void {
    if (!this.#ended) this.#onCancel();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<StreamEvent> {
    while (true) {
      const next = this.#queue.shift();
      if (next) {
        yield next;
        if (next.type === "finished" || next.type === "error") return;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
      });
      this.#waiter = null;
    }
  }
}

export type EngineState = "starting" | "ready" | "restarting" | "stopped" | "failed";

export interface SupervisorOptions {
  engine: EngineConfig;
  /** Command that starts the engine; `--config-json <json>` is appended. */
  command: string[];
  restartDelayMs?: number;
  maxRestartDelayMs?: number;
  /** Every message from the engine, for metrics and logs. */
  onMessage?: (message: FromEngine) => void;
  /** Lifecycle notes (started, crashed, restarting). */
  onLifecycle?: (event: { state: EngineState; detail: string }) => void;
  /** Extra environment for the engine (a replica's CUDA_VISIBLE_DEVICES). */
  env?: Record<string, string>;
  /** Tensor parallelism on a GPU machine: the group's first card (a replica's share). */
  gpuOffset?: number;
}

/** What the server uses of an engine: one supervised engine, or a router over replicas (src/server/replicas.ts). */
export interface EngineHandle {
  readonly state: EngineState;
  readonly info: EngineInfo | null;
  readonly lastError: string | null;
  readonly restarts: number;
  readonly pid: number | null;
  readonly activeStreams: number;
  start(): Promise<EngineInfo>;
  generate(input: GenerateInput, signal?: AbortSignal): GenerationStream;
  stats(timeoutMs?: number): Promise<EngineStats>;
  stop(graceMs?: number): Promise<void>;
  kill(signal?: NodeJS.Signals, which?: number): void;
}

export class EngineSupervisor implements EngineHandle {
  readonly options: SupervisorOptions;
  #child: Subprocess | null = null;
  /** Tensor parallelism: ranks 1..N-1 of the current group (rank 0 is #child). */
  #followers: Subprocess[] = [];
  #cleanupGroup: (() => void) | null = null;
  #state: EngineState = "stopped";
  #info: EngineInfo | null = null;
  #lastError: string | null = null;
  #streams = new Map<string, GenerationStream>();
  #stats = new Map<number, { resolve: (s: EngineStats) => void; reject: (e: Error) => void }>();
  #nonce = 0;
  #counter = 0;
  #restarts = 0;
  #delay: number;
  #firstReady: { resolve: (i: EngineInfo) => void; reject: (e: Error) => void } | null = null;
  #restartTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(options: SupervisorOptions) {
    this.options = options;
    this.#delay = options.restartDelayMs ?? 500;
  }

  get state(): EngineState {
    return this.#state;
  }

  get info(): EngineInfo | null {
    return this.#info;
  }

  get lastError(): string | null {
    return this.#lastError;
  }

  get restarts(): number {
    return this.#restarts;
  }

  get pid(): number | null {
    return this.#child?.pid ?? null;
  }

  /** Requests the server is streaming now. */
  get activeStreams(): number {
    return this.#streams.size;
  }

  /** Starts the engine; resolves when the model is loaded, rejects if it cannot load. */
  start(): Promise<EngineInfo> {
    const ready = new Promise<EngineInfo>((resolve, reject) => {
      this.#firstReady = { resolve, reject };
    });
    this.#spawn("starting");
    return ready;
  }

  /** Process ids of every rank (one entry without tensor parallelism). */
  get pids(): number[] {
    return [this.#child, ...this.#followers].flatMap((p) => (p ? [p.pid] : []));
  }

  #spawn(state: EngineState): void {
    this.#state = state;
    const engine = this.options.engine;
    const engineArgv = (model?: string) => [
      ...this.options.command,
      "--config-json",
      JSON.stringify(model ? { ...engine, model } : engine),
    ];
    // MLX reads it once, natively: cuDNN attention graphs kept (one per prefill shape; MLX keeps 16).
    const base = { MLX_CUDA_SDPA_CACHE_SIZE: "256", ...process.env, ...this.options.env };
    const tp = engine.tensorParallel;
    const launch = tp && tp.size > 1 ? groupLaunch(tp, this.options.gpuOffset ?? 0) : null;
    this.#cleanupGroup = launch?.cleanup ?? null;
    const leader = launch?.spawn(0, engineArgv) ?? { argv: engineArgv(), env: {} };
    const child = Bun.spawn(leader.argv, {
      stdin: "ignore",
      env: { ...base, ...leader.env },
      stdout: "inherit",
      stderr: "inherit",
      serialization: "json",
      ipc: (message) => this.#onMessage(message as FromEngine),
      onExit: (proc, code, signal) => this.#onExit(proc, code, signal),
    });
    this.#child = child;
    this.#followers = [];
    for (let rank = 1; rank < (launch ? (tp?.size ?? 1) : 1); rank++) {
      const follower = launch?.spawn(rank, engineArgv) ?? { argv: engineArgv(), env: {} };
      this.#followers.push(
        Bun.spawn(follower.argv, {
          stdin: "ignore",
          env: { ...base, ...follower.env },
          stdout: "inherit",
          stderr: "inherit",
          onExit: (proc, code, signal) => this.#onExit(proc, code, signal),
        }),
      );
    }
    const ranks = this.#followers.length ? ` (${this.#followers.length + 1} ranks: ${this.pids.join(", ")})` : "";
    this.options.onLifecycle?.({ state, detail: `engine process ${child.pid} starting${ranks}` });
  }

  /** Kills every rank of the current group but `except` (a group lives and dies as a whole). */
  #killGroup(except: Subprocess | null): void {
    for (const p of [this.#child, ...this.#followers]) if (p && p !== except) p.kill("SIGKILL");
    this.#followers = [];
    this.#cleanupGroup?.();
    this.#cleanupGroup = null;
  }

  #send(message: ToEngine): boolean {
    if (!this.#child || this.#state !== "ready") return false;
    try {
      this.#child.send(message);
      return true;
    } catch {
      return false;
    }
  }

  #onMessage(m: FromEngine): void {
    this.options.onMessage?.(m);
    switch (m.type) {
      case "ready":
        this.#info = m.info;
        this.#state = "ready";
        this.#lastError = null;
        this.#delay = this.options.restartDelayMs ?? 500;
        this.options.onLifecycle?.({
          state: "ready",
          detail: `model ${m.info.modelName} loaded in ${Math.round(m.info.loadMs)} ms`,
        });
        this.#firstReady?.resolve(m.info);
        this.#firstReady = null;
        break;
      case "load-failed":
        this.#lastError = m.message;
        if (this.#firstReady) {
          this.#state = "failed";
          this.#firstReady.reject(new Error(m.message));
          this.#firstReady = null;
        }
        break;
      case "started":
        this.#streams.get(m.id)?.push({
          type: "started",
          promptTokens: m.promptTokens,
          cachedTokens: m.cachedTokens,
          queuedMs: m.queuedMs,
        });
        break;
      case "tokens":
        for (const t of m.items) {
          this.#streams.get(t.id)?.push({ type: "token", token: t.token, logprob: t.logprob, top: t.top });
        }
        break;
      case "finished": {
        const s = this.#streams.get(m.id);
        this.#streams.delete(m.id);
        if (m.reason === "error") s?.push({ type: "error", status: 500, message: m.message ?? "engine error" });
        else s?.push({ type: "finished", reason: m.reason, completionTokens: m.completionTokens });
        break;
      }
      case "rejected": {
        const s = this.#streams.get(m.id);
        this.#streams.delete(m.id);
        s?.push({ type: "error", status: m.status, message: m.message, retryAfterSeconds: m.retryAfterSeconds });
        break;
      }
      case "stats": {
        const waiter = this.#stats.get(m.nonce);
        this.#stats.delete(m.nonce);
        waiter?.resolve(m.stats);
        break;
      }
    }
  }

  #onExit(proc: Subprocess, code: number | null, signal: number | string | null): void {
    const rank = proc === this.#child ? 0 : this.#followers.indexOf(proc) + 1;
    if (rank === 0 && proc !== this.#child) return;
    this.#killGroup(proc);
    this.#child = null;
    const how = `${rank > 0 ? `rank ${rank}: ` : ""}${signal ? `signal ${signal}` : `exit code ${code}`}`;
    const lost = this.#streams.size;
    for (const s of this.#streams.values()) {
      s.push({
        type: "error",
        status: 503,
        message: `the engine process stopped unexpectedly (${how}); the request was lost, please retry`,
        retryAfterSeconds: 1,
      });
    }
    this.#streams.clear();
    for (const w of this.#stats.values()) w.reject(new Error(`engine process stopped (${how})`));
    this.#stats.clear();
    if (this.#state === "stopped" || this.#state === "failed") return;
    if (this.#firstReady) {
      this.#state = "failed";
      this.#firstReady.reject(new Error(this.#lastError ?? `the engine process exited while loading (${how})`));
      this.#firstReady = null;
      return;
    }
    this.#restarts++;
    this.#lastError = `engine process stopped (${how})`;
    this.#state = "restarting";
    this.options.onLifecycle?.({
      state: "restarting",
      detail: `engine process stopped (${how}), ${lost} request(s) failed; restarting in ${this.#delay} ms`,
    });
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = null;
      if (this.#state === "restarting") this.#spawn("restarting");
    }, this.#delay);
    this.#delay = Math.min(this.#delay * 2, this.options.maxRestartDelayMs ?? 30_000);
  }

  /** Starts a generation. The stream reports an error at once when the engine is not ready. */
  generate(input: GenerateInput, signal?: AbortSignal): GenerationStream {
    const id = `g${++this.#counter}`;
    const stream = new GenerationStream(id, () => this.#send({ type: "cancel", id }));
    if (this.#state !== "ready") {
      const loading = this.#state === "starting" || this.#state === "restarting";
      stream.push({
        type: "error",
        status: 503,
        message: loading
          ? "the model is loading, retry shortly"
          : `the engine is not available: ${this.#lastError ?? this.#state}`,
        retryAfterSeconds: loading ? 2 : undefined,
      });
      return stream;
    }
    const problem = samplingProblem(input.sampling, this.#info?.vocabSize ?? Number.MAX_SAFE_INTEGER);
    if (problem) {
      stream.push({ type: "error", status: 400, message: `sampling: ${problem}` });
      return stream;
    }
    if (signal?.aborted) {
      stream.push({ type: "finished", reason: "cancelled", completionTokens: 0 });
      return stream;
    }
    this.#streams.set(id, stream);
    const request: EngineRequest = { id, ...input };
    if (!this.#send({ type: "generate", request })) {
      this.#streams.delete(id);
      stream.push({ type: "error", status: 503, message: "the engine is not available", retryAfterSeconds: 1 });
      return stream;
    }
    signal?.addEventListener("abort", () => stream.cancel(), { once: true });
    return stream;
  }

  /** The engine's scheduler and memory statistics. */
  stats(timeoutMs = 5000): Promise<EngineStats> {
    const nonce = ++this.#nonce;
    return new Promise<EngineStats>((resolve, reject) => {
      if (!this.#send({ type: "stats", nonce })) {
        reject(new Error(`the engine is ${this.#state}`));
        return;
      }
      const timer = setTimeout(() => {
        this.#stats.delete(nonce);
        reject(new Error("the engine did not answer in time"));
      }, timeoutMs);
      this.#stats.set(nonce, {
        resolve: (s) => {
          clearTimeout(timer);
          resolve(s);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  /** Stops the engine (graceful: a shutdown message, then a kill after `graceMs`). */
  async stop(graceMs = 3000): Promise<void> {
    this.#state = "stopped";
    if (this.#restartTimer) clearTimeout(this.#restartTimer);
    const child = this.#child;
    if (!child) return;
    try {
      child.send({ type: "shutdown" } satisfies ToEngine);
    } catch {
      // already gone
    }
    // Rank 0 tells the other ranks to stop; all get the grace period, then are killed.
    const all = [child, ...this.#followers];
    const exited = Promise.all(all.map((p) => p.exited)).then(() => true);
    const timedOut = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), graceMs));
    if (!(await Promise.race([exited, timedOut]))) for (const p of all) p.kill("SIGKILL");
    await Promise.all(all.map((p) => p.exited));
    this.#followers = [];
    this.#cleanupGroup?.();
    this.#cleanupGroup = null;
  }

  /** Kills the engine process abruptly (tests use it to simulate a native crash); `rank` picks a tensor-parallel rank. */
  kill(signal: NodeJS.Signals = "SIGKILL", rank = 0): void {
    (rank === 0 ? this.#child : this.#followers[rank - 1])?.kill(signal);
  }
}
