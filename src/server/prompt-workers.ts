// Prompt building off the event loop. A template render plus tokenizing takes
// seconds for a multi-megabyte prompt, and on the event loop every running
// stream would stall that long; the workers (threads, each with its own
// tokenizer) keep streams moving. Sized to the machine: one per core the
// engine does not need, 1 to 4.
import { availableParallelism } from "node:os";
import { COMPILED } from "../paths";
import { ApiError } from "./errors";
import type { PromptContext } from "./prompt";
import { apiErrorOf, type PromptJob, type PromptLimits, type PromptResults, runPromptJob } from "./prompt-jobs";
import type { FromWorker, ToWorker } from "./prompt-worker";

type Op = PromptJob["op"];

// The compiled binary holds the worker as an entry point of its own, named by
// its path under src/ (scripts/compile.ts); from source it sits next to this file.
const WORKER_ENTRY = COMPILED ? "./server/prompt-worker.ts" : new URL("./prompt-worker.ts", import.meta.url).href;
type JobOf<O extends Op> = Extract<PromptJob, { op: O }>;

/** Builds prompts for the routes: in workers, or in process (tests, tools). */
export interface PromptBuilder {
  run<O extends Op>(job: JobOf<O>): Promise<PromptResults[O]>;
  close(): Promise<void>;
}

function defaultPromptWorkers(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

/** Runs jobs on the calling thread (for callers that own no workers). */
export class InProcessPrompts implements PromptBuilder {
  readonly #context: () => PromptContext;

  constructor(context: () => PromptContext) {
    this.#context = context;
  }

  async run<O extends Op>(job: JobOf<O>): Promise<PromptResults[O]> {
    return runPromptJob(this.#context(), job) as PromptResults[O];
  }

  async close(): Promise<void> {}
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

interface Slot {
  worker: Worker;
  ready: Promise<void>;
  pending: Map<number, Pending>;
}

/** A small hash of how a job's prompt starts (system prompt, first message or prompt text). */
export function affinity(job: PromptJob): number {
  const b = job.body as { system?: unknown; messages?: unknown[]; prompt?: unknown };
  const text = firstText(b.system ?? b.messages?.[0] ?? b.prompt, 4).slice(0, 1024);
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** The first string inside a value (depth-first, a few levels), without serializing it. */
function firstText(value: unknown, depth: number): string {
  if (typeof value === "string") return value;
  if (depth === 0 || value === null || typeof value !== "object") return "";
  const o = value as { content?: unknown; text?: unknown };
  const values = Array.isArray(value) ? value : [o.content, o.text, ...Object.values(value)];
  for (const v of values) {
    const t = firstText(v, depth - 1);
    if (t.length > 0) return t;
  }
  return "";
}

export class PromptWorkers implements PromptBuilder {
  readonly size: number;
  readonly #modelPath: string;
  readonly #limits: () => PromptLimits;
  #slots: Slot[] = [];
  #next = 0;
  #closed = false;

  constructor(modelPath: string, limits: () => PromptLimits, size = defaultPromptWorkers()) {
    this.#modelPath = modelPath;
    this.#limits = limits;
    this.size = size;
    for (let i = 0; i < size; i++) this.#slots.push(this.#spawn());
  }

  /** Resolves when every worker has its tokenizer. */
  ready(): Promise<void> {
    return Promise.all(this.#slots.map((s) => s.ready)).then(() => {});
  }

  #spawn(): Slot {
    const worker = new Worker(WORKER_ENTRY);
    const pending = new Map<number, Pending>();
    let loaded: (() => void) | null = null;
    let failed: ((e: Error) => void) | null = null;
    const ready = new Promise<void>((resolve, reject) => {
      loaded = resolve;
      failed = reject;
    });
    ready.catch(() => {});
    const slot: Slot = { worker, ready, pending };
    worker.onmessage = (event: MessageEvent<FromWorker>) => {
      const m = event.data;
      if (m.type === "loaded") loaded?.();
      else if (m.type === "load-failed") failed?.(new Error(m.message));
      else {
        const job = pending.get(m.id);
        pending.delete(m.id);
        if (m.type === "done") job?.resolve(m.result);
        else job?.reject(apiErrorOf(m.error));
      }
    };
    // A worker that dies fails its jobs (500) and is replaced.
    const lost = (why: string) => {
      for (const job of pending.values()) job.reject(new ApiError(500, "api_error", `the prompt worker ${why}`));
      pending.clear();
      failed?.(new Error(`the prompt worker ${why}`));
      const at = this.#slots.indexOf(slot);
      if (at >= 0 && !this.#closed) this.#slots[at] = this.#spawn();
    };
    worker.addEventListener("error", (e) => lost(`failed: ${(e as ErrorEvent).message}`));
    worker.addEventListener("close", () => lost("stopped"));
    worker.postMessage({ type: "load", modelPath: this.#modelPath } satisfies ToWorker);
    return slot;
  }

  async run<O extends Op>(job: JobOf<O>): Promise<PromptResults[O]> {
    if (this.#closed) throw new ApiError(503, "overloaded", "the server is shutting down");
    // The worker that built this conversation's start before (its tokenizer
    // remembers those pieces), unless it is busier than the least busy one.
    let least = this.#slots[this.#next++ % this.#slots.length] as Slot;
    for (const s of this.#slots) if (s.pending.size < least.pending.size) least = s;
    const home = this.#slots[affinity(job) % this.#slots.length] as Slot;
    const best = home.pending.size <= least.pending.size ? home : least;
    await best.ready;
    const id = this.#next++;
    return new Promise<PromptResults[O]>((resolve, reject) => {
      best.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      best.worker.postMessage({ type: "job", id, job, limits: this.#limits() } satisfies ToWorker);
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const s of this.#slots) s.worker.terminate();
    this.#slots = [];
  }
}
