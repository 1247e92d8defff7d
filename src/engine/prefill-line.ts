// The prefill line: admitted sequences waiting for their prompt's prefill,
// and the group being prefilled. A group forms at the head of the line as the
// policy plans it (scheduler-policy.ts, planPrefillGroup), runs one chunk per
// scheduler iteration (batch-step.ts), and when its last chunk has sampled
// each row's first token, hands its rows and their cache to the decode batch.

import * as mx from "../mlx";
import type { LanguageModel } from "../models/types";
import { buildPrefillGroup, type PrefillGroup, prefillChunk, type RowStep, releaseRowStep } from "./batch-step";
import { forwardWorkingBytes } from "./device-headroom";
import type { KVCache } from "./kv-cache";
import { cacheShape } from "./one-sequence";
import {
  type GroupCandidate,
  type PrefillJob,
  planPrefillGroup,
  prefillChunkEnd,
  type SchedulerOptions,
} from "./scheduler-policy";
import type { PrefixKeeper } from "./scheduler-prefix";
import type { Sequence } from "./scheduler-sequence";

/** What the line asks of the scheduler. */
export interface PrefillHooks<S extends Sequence> {
  /** Whether a sequence takes part in the prefix cache. */
  caches(s: S): boolean;
  /** The constraint's mask for a sequence's first token (null: none, or the sequence just ended). */
  nextMask(s: S): Uint8Array | null;
  /** A prompt is prefilled and its first token sampled (not for a recompute: that sequence had started). */
  started(s: S): void;
  /** Throws an out-of-memory error, before anything runs, when the device cannot hold `bytes` more. */
  ensureRoom(bytes: number, what: string): void;
}

export class PrefillLine<S extends Sequence> {
  /** Waiting for a group, in order (a recompute or a resumed sequence goes to the front). */
  jobs: PrefillJob<S>[] = [];
  group: PrefillGroup<S> | null = null;
  readonly #model: LanguageModel;
  readonly #options: SchedulerOptions;
  readonly #prefix: PrefixKeeper;
  readonly #hooks: PrefillHooks<S>;

  constructor(model: LanguageModel, options: SchedulerOptions, prefix: PrefixKeeper, hooks: PrefillHooks<S>) {
    this.#model = model;
    this.#options = options;
    this.#prefix = prefix;
    this.#hooks = hooks;
  }

  get empty(): boolean {
    return this.jobs.length === 0 && this.group === null;
  }

  groupSequences(): S[] {
    return this.group?.jobs.map((j) => j.seq) ?? [];
  }

  /** Every sequence in the line and the group. */
  sequences(): S[] {
    return [...this.jobs.map((j) => j.seq), ...this.groupSequences()];
  }

  /** Drops failed sequences (an MLX failure); a group with one of them goes, its cache freed. */
  fail(failed: ReadonlySet<S>): void {
    this.jobs = this.jobs.filter((j) => !failed.has(j.seq));
    if (this.group?.jobs.some((j) => failed.has(j.seq))) {
      this.group.cache.dispose();
      this.group = null;
    }
  }

  /**
   * Takes out the sequences admitted but not yet in a group (they hold no
   * memory), in order, to queue again; a recompute among them is marked to
   * resume as one.
   */
  unadmit(): S[] {
    const out = this.jobs.map((j) => {
      if (j.recompute) j.seq.resumes = true;
      return j.seq;
    });
    this.jobs = [];
    return out;
  }

  /** The group in progress, or a new one from the head of the line as the policy plans it. */
  formGroup(): PrefillGroup<S> | null {
    if (this.group) return this.group;
    const first = this.jobs.shift();
    if (!first) return null;
    const { caches } = this.#hooks;
    const cache = this.#prefix.cache;
    const s = first.seq;
    if (caches(s) && !first.recompute) this.#prefix.loadFromDisk(s.tokens, s.regime);
    const hit = caches(s) ? cache.lookup(s.tokens, s.regime) : null;
    if (hit && !first.recompute) s.cachedTokens = hit.length;
    const candidate = (j: PrefillJob<S>): GroupCandidate => ({
      tokens: j.seq.tokens.length,
      regime: j.seq.regime,
      recompute: j.recompute,
      cachedPrefix: caches(j.seq) ? cache.peek(j.seq.tokens, j.seq.regime) : 0,
    });
    const limit = Math.max(0, (this.#options.maxPrefillBatch ?? 1) - 1);
    const following = hit ? [] : this.jobs.slice(0, limit).map(candidate);
    const plan = planPrefillGroup(this.#options, candidate(first), hit?.length ?? null, following);
    const jobs = [first, ...this.jobs.splice(0, plan.alone ? 0 : plan.take - 1)];
    const shape = cacheShape(this.#model, this.#options.kvBits);
    this.group = buildPrefillGroup(shape, jobs, plan, hit?.segments ?? null);
    return this.group;
  }

  /**
   * One chunk of the group's prefill (`decodingRows`: the batch's rows, which
   * make the chunk smaller, as `small` does: memory ran out lately). After the last, the rows still running and their
   * cache (trimmed to them) are returned to join the decode batch.
   */
  runChunk(group: PrefillGroup<S>, decodingRows: number, small = false): { rows: S[]; cache: KVCache } | null {
    const n = group.jobs.length;
    const end = prefillChunkEnd(this.#options, decodingRows, n, group.width, group.done, small);
    const columns = end - group.done;
    const last = end >= group.width;
    this.#hooks.ensureRoom(
      group.cache.growthBytes(columns) +
        forwardWorkingBytes(this.#model.config, n * columns, last ? n : 0, mx.dtypeBytes(this.#model.dtype)),
      `a prefill chunk of ${n * columns} tokens (with the KV it adds)`,
    );
    if (!last) {
      const started = performance.now();
      prefillChunk(this.#model, group, end, []);
      // The disk store's load-or-prefill choice learns this device's prefill rate (load-or-prefill.ts).
      this.#prefix.disk?.choice.recordPrefill(n * columns, performance.now() - started);
      return null;
    }
    const masks = group.jobs.map((j) => this.#hooks.nextMask(j.seq));
    const joining = group.jobs.map((j) => j.seq);
    const steps = prefillChunk(this.#model, group, end, masks) ?? [];
    const cache = group.cache;
    this.group = null;
    try {
      return this.#handOver(group, steps, joining, cache);
    } catch (e) {
      // Copying the cache failed (out of memory): it goes; the scheduler decides what becomes of the rows.
      cache.dispose();
      for (const s of joining) s.inBatch = false;
      throw e;
    }
  }

  /** The rows still running after their prefill, and their cache trimmed to them (null: none left). */
  #handOver(
    group: PrefillGroup<S>,
    steps: readonly (RowStep | null)[],
    joining: readonly S[],
    cache: KVCache,
  ): { rows: S[]; cache: KVCache } | null {
    const n = group.jobs.length;
    const keep: number[] = [];
    group.jobs.forEach((j, i) => {
      const s = j.seq;
      const step = steps[i] ?? null;
      if (s.finished || !step) {
        releaseRowStep(step);
        return;
      }
      keep.push(i);
      if (!j.recompute && this.#hooks.caches(s)) {
        this.#prefix.store(s.tokens, s.regime, cache, i, s.tokens.length, joining);
      }
      s.step = step;
      s.unread = true;
      s.inBatch = true;
      if (!j.recompute) this.#hooks.started(s);
    });
    if (keep.length === 0) {
      cache.dispose();
      return null;
    }
    // Padding every row shares goes now (a lone row then decodes without a mask).
    if (keep.length < n || Math.min(...keep.map((i) => cache.leftPadding[i] ?? 0)) > 0) cache.keepRows(keep);
    return { rows: keep.map((i) => (group.jobs[i] as PrefillJob<S>).seq), cache };
  }
}
