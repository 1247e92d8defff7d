// Speculation inside the scheduler: prompt lookup (speculation.ts) proposes,
// or where it finds nothing a draft model (draft-model.ts); speculative-verify.ts
// verifies. Only a lone decoding row with no prefill
// pending speculates: batched rows share one left-padded write position, so
// per-row draft lengths would need per-row holes or masks in the cache (not
// built yet). With more rows, or a prefill waiting, a step decodes exactly as
// without speculation.

import type { MxArray } from "../mlx";
import type { LanguageModel } from "../models/types";
import { type DecodingRow, knownRowStep, type RowStep, releaseRowStep } from "./batch-step";
import type { KVCache } from "./kv-cache";
import type { SpeculationStats, StepValues } from "./protocol";
import type { SequenceState } from "./scheduler-policy";
import { DraftSession } from "./draft-model";
import type { PromptLookup } from "./speculation";
import { draftLength } from "./token-policy";
import { verifyDraft } from "./speculative-verify";

export interface SpeculatingRow extends SequenceState, DecodingRow {
  step: RowStep | null;
  unread: boolean;
  lookup: PromptLookup | null;
  draft: DraftSession | null;
  plainSince: { at: number; step: number } | null;
}

/** The draft model, when one is attached, and how this iteration is numbered (timing). */
export interface Drafting {
  model: LanguageModel | null;
  /** False: the draft model alone, no prompt lookup (SchedulerOptions.promptLookup). */
  promptLookup: boolean;
  /** The scheduler's iteration number. */
  step: number;
}

/** How the scheduler reads a row's pending step and takes a token (emitting it or finishing the row). */
export interface RowTokens<S> {
  read(s: S): void;
  accept(s: S, v: StepValues): void;
}

/**
 * One verify pass in place of a lone row's decode step. False: decode as
 * usual; true: the step is taken (the row may have finished; compact after).
 */
export function speculateLoneRow<S extends SpeculatingRow>(
  model: LanguageModel,
  contextLength: number,
  s: S,
  batch: KVCache,
  stats: SpeculationStats,
  rows: RowTokens<S>,
  drafting: Drafting = { model: null, promptLookup: true, step: 0 },
): boolean {
  const began = performance.now();
  // The previous iteration was a plain step of this row alone: its time is the draft model's yardstick.
  const plain = s.plainSince;
  if (plain !== null && plain.step === drafting.step - 1) s.draft?.observePlain(began - plain.at);
  s.plainSince = null;
  const spoke = speculateOnce(model, contextLength, s, batch, stats, rows, drafting, began);
  if (!spoke && s.draft) s.plainSince = { at: began, step: drafting.step };
  return spoke;
}

function speculateOnce<S extends SpeculatingRow>(
  model: LanguageModel,
  contextLength: number,
  s: S,
  batch: KVCache,
  stats: SpeculationStats,
  rows: RowTokens<S>,
  drafting: Drafting,
  began: number,
): boolean {
  const lookup = s.lookup;
  if (!lookup || s.finished !== null) return false;
  // Prompt lookup first (free when it matches); the draft model, when there is one, where it finds nothing.
  const short = s.tokens.length <= (lookup.tuning.maxContext ?? Number.POSITIVE_INFINITY);
  const looks = (drafting.promptLookup || !drafting.model) && short && lookup.ready();
  if (drafting.model) s.draft ??= new DraftSession(drafting.model);
  const drafts = s.draft?.ready() ?? false;
  if (!looks && !drafts) return false;
  // The step in flight holds the newest token, the draft's context: read it (a sync).
  rows.read(s);
  if (s.finished !== null) return true;
  const longest = Math.max(lookup.draftLength, s.draft?.draftLength ?? 0);
  const k = draftLength(s, longest, contextLength, (n) => model.ropeRegime(n));
  const looked = looks && k > 0 ? lookup.propose(s.tokens, k) : null;
  let draft = looked?.draft ?? null;
  let q: MxArray | null = null;
  if (!draft && s.draft && drafts && k > 0) {
    const proposal = s.draft.propose(s.tokens, k, s.sampler, model.config.vocabSize);
    draft = proposal.draft;
    q = proposal.probs;
  }
  if (!draft || draft.length === 0) return false;
  const last = s.tokens[s.tokens.length - 1] as number;
  let verified: ReturnType<typeof verifyDraft>;
  try {
    verified = verifyDraft(model, batch, s.sampler, last, draft, q);
  } finally {
    q?.dispose();
  }
  const { values, accepted } = verified;
  if (looked) lookup.record(draft.length, accepted);
  else {
    s.draft?.record(draft.length, accepted);
    s.draft?.observeDraft(performance.now() - began, values.length);
    stats.draftModelPasses++;
    stats.draftModelDrafted += draft.length;
    stats.draftModelAccepted += accepted;
  }
  stats.passes++;
  if (verified.tied) stats.tieSteps++;
  stats.drafted += draft.length;
  stats.accepted += accepted;
  stats.emitted += values.length;
  // The last token is the next input, already taken here (a read step).
  releaseRowStep(s.step);
  s.step = knownRowStep((values[values.length - 1] as StepValues).token);
  s.unread = false;
  for (const v of values) if (s.finished === null) rows.accept(s, v);
  return true;
}
