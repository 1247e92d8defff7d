// Data parallelism: N engine processes (replicas), each its own supervisor
// (on a GPU machine, each pinned to one card with CUDA_VISIBLE_DEVICES), behind
// one router with the supervisor's interface. A request goes to the replica
// whose prefix cache most likely holds the longest prefix of its prompt (so a
// conversation stays where its KV cache is), else to the least loaded one;
// affinity yields to load when that replica has a batch's worth more streams.
// "Most likely": the router keeps a plain-data shadow per replica of the prompt
// blocks it sent there (chained hashes of 32-token blocks), instead of asking
// the replicas: the choice is made at once, on the event loop, with no IPC
// round trip per request. The shadow does not see the engine's evictions; a
// stale entry only sends a request where its prefix was, and the engine then
// computes it again. A replica that restarts starts with an empty shadow. One
// replica's crash costs only its own requests; it restarts alone.
import {
  EngineSupervisor,
  type EngineHandle,
  type EngineState,
  type GenerateInput,
  type GenerationStream,
  type SupervisorOptions,
} from "../engine/supervisor";
import type { EngineInfo, EngineStats } from "../engine/protocol";

export const PREFIX_BLOCK = 32;

/** Hashes of the prompt blocks a replica was sent, oldest first (a bounded LRU). */
export class PrefixShadow {
  readonly #blocks = new Map<bigint, true>();
  readonly #capacity: number;

  constructor(capacityBlocks = 65_536) {
    this.#capacity = capacityBlocks;
  }

  /** Chained hashes of the whole blocks of `tokens`: block i's hash covers tokens [0, 32(i+1)). */
  static hashes(tokens: readonly number[]): bigint[] {
    const out: bigint[] = [];
    let previous = 0n;
    for (let end = PREFIX_BLOCK; end <= tokens.length; end += PREFIX_BLOCK) {
      previous = BigInt(Bun.hash(Int32Array.from(tokens.slice(end - PREFIX_BLOCK, end)), previous));
      out.push(previous);
    }
    return out;
  }

  /** Tokens at the start of the prompt whose blocks this replica was sent. */
  matchTokens(hashes: readonly bigint[]): number {
    let n = 0;
    while (n < hashes.length && this.#blocks.has(hashes[n] as bigint)) n++;
    return n * PREFIX_BLOCK;
  }

  add(hashes: readonly bigint[]): void {
    for (const h of hashes) {
      this.#blocks.delete(h);
      this.#blocks.set(h, true);
    }
    while (this.#blocks.size > this.#capacity) {
      const oldest = this.#blocks.keys().next().value;
      if (oldest === undefined) break;
      this.#blocks.delete(oldest);
    }
  }

  clear(): void {
    this.#blocks.clear();
  }

  get size(): number {
    return this.#blocks.size;
  }
}

export interface ReplicaStatus {
  replica: number;
  state: EngineState;
  pid: number | null;
  restarts: number;
  activeStreams: number;
  lastError: string | null;
  /** Requests routed here by prefix affinity / by load. */
  routedByPrefix: number;
  routedByLoad: number;
  shadowBlocks: number;
}

export interface ReplicaRouterOptions extends Omit<SupervisorOptions, "env" | "onLifecycle"> {
  replicas: number;
  /** Pin replica i to GPU i (CUDA_VISIBLE_DEVICES). */
  pinGpus?: boolean;
  /**
   * Prefix affinity yields to load when the replica holding the prefix has this many more open streams than
   * the least loaded one (default: the engine's batch size, 8 on the CPU and 32 on a GPU): a hot shared
   * prefix then spreads instead of queueing on one replica.
   */
  maxImbalance?: number;
  onLifecycle?: (event: { replica: number; state: EngineState; detail: string }) => void;
}

/** GPUs nvidia-smi lists on this machine (0 without one). */
export function gpuCount(): number {
  if (!Bun.which("nvidia-smi")) return 0;
  const r = Bun.spawnSync(["nvidia-smi", "-L"], { stdout: "pipe", stderr: "ignore" });
  if (r.exitCode !== 0) return 0;
  return r.stdout
    .toString()
    .split("\n")
    .filter((l) => l.startsWith("GPU ")).length;
}

/** `--replicas` as given: a count, or "auto" (one per GPU; one without a GPU). */
export function resolveReplicas(value: string | number): number {
  if (value === "auto") return Math.max(1, gpuCount());
  const n = typeof value === "number" ? value : Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 64)
    throw new Error(`--replicas: expected a count (1-64) or "auto", got ${value}`);
  return n;
}

export interface RouteCandidate {
  ready: boolean;
  /** Open streams. */
  load: number;
  /** Prompt tokens its shadow holds, from the start. */
  match: number;
}

/**
 * The longest prefix match among ready replicas; ties and misses go to the fewest open streams. Affinity yields
 * to load when its replica has `maxImbalance` more open streams than the least loaded. None ready: replica 0
 * (its stream carries the 503 and retry-after).
 */
export function chooseReplica(
  candidates: readonly RouteCandidate[],
  maxImbalance: number,
): { replica: number; matchedTokens: number } {
  let best = -1;
  let least = -1;
  candidates.forEach((c, i) => {
    if (!c.ready) return;
    const b = candidates[best];
    if (!b || c.match > b.match || (c.match === b.match && c.load < b.load)) best = i;
    const l = candidates[least];
    if (!l || c.load < l.load) least = i;
  });
  const b = candidates[best];
  const l = candidates[least];
  if (!b || !l) return { replica: 0, matchedTokens: 0 };
  if (b.match > 0 && b.load - l.load >= maxImbalance) return { replica: least, matchedTokens: 0 };
  return { replica: best, matchedTokens: b.match };
}

/** Adds b's numbers into a's shape (stats of several replicas); contextLength stays the smallest. */
function sumStats(a: unknown, b: unknown, key = ""): unknown {
  if (typeof a === "number" && typeof b === "number") return key === "contextLength" ? Math.min(a, b) : a + b;
  if (a && b && typeof a === "object" && typeof b === "object" && !Array.isArray(a)) {
    const out: Record<string, unknown> = { ...(a as Record<string, unknown>) };
    for (const [k, v] of Object.entries(b as Record<string, unknown>)) out[k] = k in out ? sumStats(out[k], v, k) : v;
    return out;
  }
  return a ?? b;
}

export class ReplicaRouter implements EngineHandle {
  readonly replicas: EngineSupervisor[];
  readonly #shadows: PrefixShadow[];
  readonly #restartsSeen: number[];
  readonly #byPrefix: number[];
  readonly #byLoad: number[];
  readonly #maxImbalance: number;

  constructor(options: ReplicaRouterOptions) {
    const { replicas: count, pinGpus, onLifecycle, maxImbalance, ...rest } = options;
    this.#maxImbalance = maxImbalance ?? rest.engine.maxConcurrent ?? (rest.engine.device === "cpu" ? 8 : 32);
    const tp = rest.engine.tensorParallel && rest.engine.tensorParallel.size > 1 ? rest.engine.tensorParallel : null;
    this.replicas = Array.from(
      { length: count },
      (_, i) =>
        new EngineSupervisor({
          ...rest,
          // A tensor-parallel replica takes `size` cards from i * size; a plain one card i.
          env: pinGpus && !tp ? { CUDA_VISIBLE_DEVICES: String(i) } : undefined,
          gpuOffset: pinGpus && tp ? i * tp.size : 0,
          onLifecycle: (e) => onLifecycle?.({ replica: i, ...e }),
        }),
    );
    this.#shadows = this.replicas.map(() => new PrefixShadow());
    this.#restartsSeen = this.replicas.map(() => 0);
    this.#byPrefix = this.replicas.map(() => 0);
    this.#byLoad = this.replicas.map(() => 0);
  }

  /** Ready while any replica serves. */
  get state(): EngineState {
    const states = this.replicas.map((r) => r.state);
    if (states.includes("ready")) return "ready";
    if (states.every((s) => s === "failed")) return "failed";
    if (states.every((s) => s === "stopped")) return "stopped";
    return states.includes("restarting") ? "restarting" : "starting";
  }

  get info(): EngineInfo | null {
    return (this.replicas.find((r) => r.state === "ready") ?? this.replicas[0])?.info ?? null;
  }

  get lastError(): string | null {
    const errors = this.replicas.flatMap((r, i) => (r.lastError ? [`replica ${i}: ${r.lastError}`] : []));
    return errors.length ? errors.join("; ") : null;
  }

  get restarts(): number {
    return this.replicas.reduce((n, r) => n + r.restarts, 0);
  }

  get pid(): number | null {
    return this.replicas[0]?.pid ?? null;
  }

  get activeStreams(): number {
    return this.replicas.reduce((n, r) => n + r.activeStreams, 0);
  }

  /** Resolves when every replica has loaded; rejects when one cannot load. */
  async start(): Promise<EngineInfo> {
    const infos = await Promise.all(this.replicas.map((r) => r.start()));
    return infos[0] as EngineInfo;
  }

  /** The replica for a prompt (see chooseReplica), and the prompt's block hashes. */
  route(prompt: readonly number[]): { replica: number; matchedTokens: number; hashes: bigint[] } {
    const hashes = PrefixShadow.hashes(prompt);
    const candidates = this.replicas.map((r, i) => {
      if (r.restarts !== this.#restartsSeen[i]) {
        // A restarted replica lost its cache.
        this.#restartsSeen[i] = r.restarts;
        this.#shadows[i]?.clear();
      }
      const ready = r.state === "ready";
      return {
        ready,
        load: r.activeStreams,
        match: ready ? (this.#shadows[i] as PrefixShadow).matchTokens(hashes) : 0,
      };
    });
    return { ...chooseReplica(candidates, this.#maxImbalance), hashes };
  }

  generate(input: GenerateInput, signal?: AbortSignal): GenerationStream {
    const { replica, matchedTokens, hashes } = this.route(input.prompt);
    if (matchedTokens > 0) this.#byPrefix[replica] = (this.#byPrefix[replica] ?? 0) + 1;
    else this.#byLoad[replica] = (this.#byLoad[replica] ?? 0) + 1;
    this.#shadows[replica]?.add(hashes);
    return (this.replicas[replica] as EngineSupervisor).generate(input, signal);
  }

  /** The replicas' statistics added up (those not ready are left out). */
  async stats(timeoutMs = 5000): Promise<EngineStats> {
    const ready = this.replicas.filter((r) => r.state === "ready");
    if (ready.length === 0) throw new Error(`no replica is ready (${this.state})`);
    const all = await Promise.all(ready.map((r) => r.stats(timeoutMs)));
    return all.reduce((a, b) => sumStats(a, b) as EngineStats);
  }

  /** Per-replica state for /health and /metrics. */
  status(): ReplicaStatus[] {
    return this.replicas.map((r, i) => ({
      replica: i,
      state: r.state,
      pid: r.pid,
      restarts: r.restarts,
      activeStreams: r.activeStreams,
      lastError: r.lastError,
      routedByPrefix: this.#byPrefix[i] ?? 0,
      routedByLoad: this.#byLoad[i] ?? 0,
      shadowBlocks: this.#shadows[i]?.size ?? 0,
    }));
  }

  async stop(graceMs?: number): Promise<void> {
    await Promise.all(this.replicas.map((r) => r.stop(graceMs)));
  }

  /** Kills one replica's engine (tests: a crash of one replica). */
  kill(signal: NodeJS.Signals = "SIGKILL", replica = 0): void {
    this.replicas[replica]?.kill(signal);
  }
}
