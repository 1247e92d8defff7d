// Prompt-lookup speculation inside the scheduler (speculation.ts proposes,
// speculative-verify.ts verifies). Only a lone decoding row with no prefill
// pending speculates: batched rows share one left-padded write position, so
// per-row draft lengths would need per-row holes or masks in the cache (not
// built yet). With more rows, or a prefill waiting, a step decodes exactly as
// without speculation.

import type { LanguageModel } from "../models/types";
import { type DecodingRow, knownRowStep, type RowStep, releaseRowStep } from "./batch-step";
import type { KVCache } from "./kv-cache";
import type { SpeculationStats, StepValues } from "./protocol";
import type { SequenceState } from "./scheduler-policy";
import type { PromptLookup } from "./speculation";
import { draftLength } from "./token-policy";
import { verifyDraft } from "./speculative-verify";

export interface SpeculatingRow extends SequenceState, DecodingRow {
  step: RowStep | null;
  unread: boolean;
  lookup: PromptLookup | null;
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
): boolean {
  const lookup = s.lookup;
  if (!lookup || s.finished !== null || !lookup.ready()) return false;
  // The step in flight holds the newest token, the draft's context: read it (a sync).
  rows.read(s);
  if (s.finished !== null) return true;
  const k = draftLength(s, lookup.draftLength, contextLength, (n) => model.ropeRegime(n));
  const proposal = k > 0 ? lookup.propose(s.tokens, k) : null;
  if (!proposal) return false;
  const last = s.tokens[s.tokens.length - 1] as number;
  const { values, accepted } = verifyDraft(model, batch, s.sampler, last, proposal.draft);
  lookup.record(proposal.draft.length, accepted);
  stats.passes++;
  stats.drafted += proposal.draft.length;
  stats.accepted += accepted;
  stats.emitted += values.length;
  // The last token is the next input, already taken here (a read step).
  releaseRowStep(s.step);
  s.step = knownRowStep((values[values.length - 1] as StepValues).token);
  s.unread = false;
  for (const v of values) if (s.finished === null) rows.accept(s, v);
  return true;
}
