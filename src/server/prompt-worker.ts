// A prompt worker (a thread of the server process): loads the tokenizer once,
// then builds prompts for prompt-workers.ts. No MLX here either.
import { readlinkSync } from "node:fs";
import { setPriority } from "node:os";
import { loadTokenizer, type Tokenizer } from "../text";
import { maxInputBytesPerToken } from "../text/token-bytes";
import { jobError, type PromptJob, type PromptLimits, runPromptJob } from "./prompt-jobs";

declare const self: Worker;

export type ToWorker =
  | { type: "load"; modelPath: string }
  | { type: "job"; id: number; job: PromptJob; limits: PromptLimits };
export type FromWorker =
  | { type: "loaded" }
  | { type: "load-failed"; message: string }
  | { type: "done"; id: number; result: unknown }
  | { type: "failed"; id: number; error: ReturnType<typeof jobError> };

let tokenizer: Tokenizer | null = null;

/**
 * Prompt building is background work next to the streams: on Linux this
 * thread runs at nice 10, so on a busy machine the engine process (and the
 * server's event loop) get the cores first. Best effort.
 */
function lowerThreadPriority(): void {
  try {
    const tid = Number(readlinkSync("/proc/thread-self").split("/").at(-1));
    if (Number.isInteger(tid) && tid !== process.pid) setPriority(tid, 10);
  } catch {
    // not Linux, or not allowed: keep the default priority
  }
}
lowerThreadPriority();

self.onmessage = (event: MessageEvent<ToWorker>) => {
  const m = event.data;
  if (m.type === "load") {
    try {
      tokenizer = loadTokenizer(m.modelPath);
      // Built now, not on the first long prompt.
      maxInputBytesPerToken(tokenizer);
      self.postMessage({ type: "loaded" } satisfies FromWorker);
    } catch (e) {
      self.postMessage({ type: "load-failed", message: (e as Error).message } satisfies FromWorker);
    }
    return;
  }
  try {
    if (!tokenizer) throw new Error("the prompt worker has no tokenizer");
    const result = runPromptJob({ tokenizer, ...m.limits }, m.job);
    self.postMessage({ type: "done", id: m.id, result } satisfies FromWorker);
  } catch (e) {
    self.postMessage({ type: "failed", id: m.id, error: jobError(e) } satisfies FromWorker);
  }
};
