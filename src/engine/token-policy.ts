// A sequence's token-level decisions, plain data like the rest of the
// scheduler's policy (scheduler-policy.ts): what a sampled token does to its
// sequence (emitted, finished, or both), the constraint's mask for the next
// one, and whether and how far a lone row speculates. No MLX.

import type { FinishReason, StepValues } from "./protocol";
import type { SequenceState } from "./scheduler-policy";

export type TokenOutcome = {
  /** Goes out to the client (a stop token does not). */
  emit: boolean;
  finish: { reason: FinishReason; message?: string } | null;
};

/** Takes a sequence's next token (updates its tokens, count and constraint): emitted, finished, or both. */
export function acceptToken(s: SequenceState, v: StepValues, contextLength: number): TokenOutcome {
  s.tokens.push(v.token);
  if (s.request.stopTokenIds.includes(v.token)) return { emit: false, finish: { reason: "stop" } };
  s.generated++;
  if (s.constraint) {
    if (!s.constraint.accept(v.token)) {
      return {
        emit: true,
        finish: { reason: "error", message: `constrained decoding: token ${v.token} is not allowed here` },
      };
    }
    // Only a stop token may follow: end now rather than spend a step on it.
    if (s.constraint.done) return { emit: true, finish: { reason: "stop" } };
  }
  if (s.generated >= s.request.maxTokens || s.tokens.length >= contextLength) {
    return { emit: true, finish: { reason: "length" } };
  }
  return { emit: true, finish: null };
}

export type MaskDecision = { mask: Uint8Array | null } | { finish: FinishReason; message?: string };

/**
 * The constraint's mask for a sequence's next token (null: unconstrained). A
 * sequence with no token allowed ends: "stop" when its value is complete (a
 * grammar with no stop token), else "error" (a schema nothing satisfies).
 */
export function nextMask(s: SequenceState): MaskDecision {
  if (!s.constraint || !s.mask || s.finished !== null) return { mask: null };
  s.mask.fill(0);
  if (s.constraint.allowed(s.mask) > 0) return { mask: s.mask };
  if (s.constraint.complete) return { finish: "stop" };
  return { finish: "error", message: "constrained decoding: no token can continue the response format" };
}

/** What decides whether a request speculates (prompt lookup; src/engine/speculation.ts). */
export interface SpeculationAsk {
  /** The engine's setting (SchedulerOptions.speculative). */
  enabled: boolean | undefined;
  /** The request's own (sampling.speculative). */
  asked: boolean | null | undefined;
  internal: boolean;
  constrained: boolean;
  penalized: boolean;
  temperature: number;
  seed: number | null;
}

/** Whether a request may speculate at all. */
export function maySpeculate(a: SpeculationAsk): boolean {
  if (a.enabled === false || a.asked === false || a.internal) return false;
  // A constraint's mask and the penalties follow every token: those rows decode one token at a time.
  if (a.constrained || a.penalized) return false;
  // Seeded sampling draws differently when it speculates: it keeps the tokens a batch gives unless asked.
  return a.asked === true || a.temperature <= 0 || a.seed === null;
}

/**
 * How many draft tokens a lone row may verify in one pass: within its
 * max_tokens, the context, and its RoPE regime (crossing one, as Phi-3's
 * LongRoPE does, recomputes the cache token by token instead).
 */
export function draftLength(
  s: SequenceState,
  longest: number,
  contextLength: number,
  ropeRegime: (length: number) => number,
): number {
  let k = Math.min(longest, s.request.maxTokens - s.generated - 1, contextLength - s.tokens.length - 1);
  while (k > 0 && ropeRegime(s.tokens.length + k + 1) !== s.regime) k--;
  return k;
}
