// A request inside the scheduler: what the policy knows of it
// (scheduler-policy.ts's SequenceState) plus its device side — its sampler,
// its last sampled step — and its constraint and prompt-lookup proposer,
// built once it has passed the policy's checks.

import type { LanguageModel } from "../models/types";
import type { ConstraintSpec } from "../text/json-constraint";
import type { DecodingRow, RowStep } from "./batch-step";
import type { EngineRequest } from "./protocol";
import { SequenceSampler } from "./sampling";
import type { SchedulerOptions, SequenceState, TokenConstraint } from "./scheduler-policy";
import type { DraftSession } from "./draft-model";
import type { OutOfMemoryCounts } from "./memory-pressure";
import { PromptLookup } from "./speculation";
import { maySpeculate } from "./token-policy";

/** Builds a request's constraint; `endIds` are its stop tokens. Throws a SchemaError (→ 400) for a bad spec. */
export type ConstraintFactory = (spec: ConstraintSpec, endIds: readonly number[]) => TokenConstraint;

export interface Sequence extends SequenceState, DecodingRow {
  /** The last sampled step: its token is the next input; `unread` until emitted. */
  step: RowStep | null;
  unread: boolean;
  /** Prompt tokens a prefix-cache hit covered. */
  cachedTokens: number;
  enqueuedAt: number;
  /** In the decode batch. A finished row stays there, idle, until the batch is compacted. */
  inBatch: boolean;
  /** Its prompt-lookup proposer (null: it does not speculate). */
  lookup: PromptLookup | null;
  /** Its draft-model state (draft-model.ts), made at its first draft-model proposal. */
  draft: DraftSession | null;
  /** When (ms, scheduler step) its last plain, not speculated, lone decode step began: the draft model's yardstick. */
  plainSince: { at: number; step: number } | null;
  /** Preempted, waiting to resume (SchedulerOptions.growthAllowance). */
  resumes: boolean;
  /** Its "started" event went out (a recompute must not send another). */
  started: boolean;
  /** Out-of-memory failures it took part in, beside others and alone (src/engine/memory-pressure.ts). */
  outOfMemoryFailures: OutOfMemoryCounts;
}

/**
 * A new sequence for an accepted request (`maxTokens` already bounded), or
 * why it cannot run: its response_format does not compile, or constrained
 * decoding is not available.
 */
export function newSequence(
  model: LanguageModel,
  options: SchedulerOptions,
  request: EngineRequest,
  maxTokens: number,
  constrain: ConstraintFactory | null,
): Sequence | { status: number; message: string } {
  const vocab = model.config.vocabSize;
  let constraint: TokenConstraint | null = null;
  if (request.constraint) {
    if (!constrain) return { status: 400, message: "constrained decoding (response_format) is not available" };
    try {
      const endIds = request.stopTokenIds.filter((t) => Number.isInteger(t) && t >= 0 && t < vocab);
      constraint = constrain(request.constraint, endIds);
    } catch (e) {
      // A bad schema is the client's; anything else (the tokenizer failed to load) is ours.
      const bad = (e as Error).name === "SchemaError";
      return { status: bad ? 400 : 500, message: `response_format: ${(e as Error).message}` };
    }
  }
  const sampler = new SequenceSampler(request.sampling, vocab, request.prompt);
  const speculates = maySpeculate({
    enabled: options.speculative,
    asked: request.sampling.speculative,
    internal: request.internal === true,
    constrained: constraint !== null,
    penalized: sampler.penalized,
    temperature: sampler.params.temperature,
    seed: sampler.params.seed,
  });
  return {
    request: { ...request, maxTokens },
    sampler,
    constraint,
    mask: constraint ? new Uint8Array(vocab) : null,
    tokens: [...request.prompt],
    generated: 0,
    step: null,
    unread: false,
    regime: model.ropeRegime(request.prompt.length),
    cachedTokens: 0,
    enqueuedAt: performance.now(),
    cancelled: false,
    finished: null,
    inBatch: false,
    lookup: speculates ? new PromptLookup(options.lookupTuning) : null,
    draft: null,
    plainSince: null,
    resumes: false,
    started: false,
    outOfMemoryFailures: { crowded: 0, alone: 0 },
  };
}
