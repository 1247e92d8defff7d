// Constrained decoding inside the engine's scheduler (in process, tiny random
// models): the mask reaches sampling in every path (prefill's first token,
// batched greedy, per-row sampling, Phi-3 rows that recompute their cache at
// the LongRoPE boundary), unconstrained rows sharing the batch are unchanged,
// and nothing leaks.
import { describe, expect, test } from "bun:test";
import { generateTokens } from "../../src/engine/one-sequence";
import type { EngineEvent, EngineRequest } from "../../src/engine/protocol";
import { type SamplingParams, samplingParams } from "../../src/engine/protocol";
import { Scheduler } from "../../src/engine/scheduler";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import type { LanguageModel } from "../../src/models/types";
import {
  type ConstraintSpec,
  canEnd,
  grammarFor,
  initialState,
  JsonConstraintFactory,
  stepBytes,
} from "../../src/text/json-constraint";
import { tokenByteTable } from "../../src/text/token-bytes";
import { loadTokenizer, type Tokenizer } from "../../src/text/tokenizer";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { TEST_SCHEDULER_OPTIONS } from "../support/scheduler";
import { validate } from "../text/json-schema-check";

const SCHEMA = {
  type: "object",
  properties: {
    id: { type: "integer" },
    tag: { enum: ["a", "b", "c"] },
    ok: { type: "boolean" },
    list: { type: "array", items: { type: "string", maxLength: 3 }, maxItems: 2 },
  },
  required: ["id", "tag", "ok", "list"],
  additionalProperties: false,
};
const schemaSpec: ConstraintSpec = { kind: "json_schema", schema: SCHEMA };

interface Loaded {
  model: LanguageModel;
  tokenizer: Tokenizer;
  factory: JsonConstraintFactory;
}
const cache = new Map<string, Loaded>();
function load(name: string): Loaded {
  let l = cache.get(name);
  if (!l) {
    const dir = tinyModel(name);
    const tokenizer = loadTokenizer(dir);
    l = { model: loadModel(dir).model, tokenizer, factory: new JsonConstraintFactory(tokenByteTable(tokenizer)) };
    cache.set(name, l);
  }
  return l;
}

interface Run {
  tokens: Map<string, number[]>;
  logprobs: Map<
    string,
    Array<{ token: number; logprob: number | null; top: Array<{ token: number; logprob: number }> }>
  >;
  finished: Map<string, string>;
}

function run(l: Loaded, schedule: Array<{ at: number; request: EngineRequest }>): Run {
  const out: Run = { tokens: new Map(), logprobs: new Map(), finished: new Map() };
  const scheduler = new Scheduler(
    l.model,
    TEST_SCHEDULER_OPTIONS,
    (e: EngineEvent) => {
      if (e.type === "tokens") {
        for (const t of e.items) {
          out.tokens.set(t.id, [...(out.tokens.get(t.id) ?? []), t.token]);
          out.logprobs.set(t.id, [
            ...(out.logprobs.get(t.id) ?? []),
            { token: t.token, logprob: t.logprob, top: t.top ?? [] },
          ]);
        }
      } else if (e.type === "finished") out.finished.set(e.id, e.message ? `${e.reason}: ${e.message}` : e.reason);
      else if (e.type === "rejected") out.finished.set(e.id, `rejected ${e.status}: ${e.message}`);
    },
    (spec, endIds) => l.factory.create(spec, endIds),
  );
  const pending = [...schedule];
  for (let step = 0; pending.length > 0 || scheduler.hasWork(); step++) {
    for (const p of pending.filter((p) => p.at <= step)) scheduler.submit(p.request);
    for (let i = pending.length - 1; i >= 0; i--) if ((pending[i] as { at: number }).at <= step) pending.splice(i, 1);
    scheduler.step();
    if (step > 5000) throw new Error("scheduler did not finish");
  }
  scheduler.dispose();
  return out;
}

function request(
  l: Loaded,
  id: string,
  prompt: number[],
  maxTokens: number,
  sampling: SamplingParams = samplingParams(),
  constraint?: ConstraintSpec,
): EngineRequest {
  return { id, prompt, maxTokens, sampling, stopTokenIds: [...l.tokenizer.eosIds], constraint };
}

function single(model: LanguageModel, prompt: number[], maxTokens: number, sampling = samplingParams()): number[] {
  return [...generateTokens(model, prompt, { maxTokens, sampling, stopTokenIds: [], prefillChunk: 64 })].map(
    (v) => v.token,
  );
}

const text = (l: Loaded, ids: number[] | undefined) => l.tokenizer.decode(ids ?? [], { skipSpecialTokens: true });

describe("tiny-llama-f16", () => {
  test("constrained rows (greedy, sampled, penalized) beside plain ones: JSON for them, unchanged output for the others", () => {
    const l = load("tiny-llama-f16");
    const plainA = promptIds(12, 1);
    const plainB = promptIds(30, 2);
    const expectedA = single(l.model, plainA, 25);
    const expectedB = single(l.model, plainB, 25);
    const sampled = samplingParams({ temperature: 1, seed: 3, topP: 0.9, presencePenalty: 0.5 });
    const r = run(l, [
      { at: 0, request: request(l, "plainA", plainA, 25) },
      { at: 0, request: request(l, "json-greedy", promptIds(9, 3), 400, samplingParams(), schemaSpec) },
      { at: 2, request: request(l, "json-sampled", promptIds(20, 4), 400, sampled, schemaSpec) },
      { at: 3, request: request(l, "plainB", plainB, 25) },
      { at: 5, request: request(l, "json-object", promptIds(7, 5), 400, samplingParams(), { kind: "json" }) },
    ]);
    expect(r.tokens.get("plainA")).toEqual(expectedA);
    expect(r.tokens.get("plainB")).toEqual(expectedB);
    for (const id of ["json-greedy", "json-sampled"]) {
      expect(r.finished.get(id)).toBe("stop");
      expect(validate(JSON.parse(text(l, r.tokens.get(id))), SCHEMA)).toEqual([]);
    }
    // json_object on a random model may run to max_tokens; its text is then a valid prefix.
    const obj = text(l, r.tokens.get("json-object"));
    const reason = r.finished.get("json-object");
    expect(["stop", "length"]).toContain(reason as string);
    if (reason === "stop") expect(typeof JSON.parse(obj)).toBe("object");
    else
      expect(stepBytes(initialState(grammarFor({ kind: "json" }).root), new TextEncoder().encode(obj))).not.toBeNull();
  });

  test("greedy under a constraint picks the most likely allowed token at every step", () => {
    const l = load("tiny-llama-f16");
    const r = run(l, [
      {
        at: 0,
        request: request(
          l,
          "j",
          promptIds(15, 6),
          400,
          samplingParams({ logprobs: true, topLogprobs: 20 }),
          schemaSpec,
        ),
      },
    ]);
    expect(r.finished.get("j")).toBe("stop");
    const grammar = grammarFor(schemaSpec);
    const table = tokenByteTable(l.tokenizer);
    let state = initialState(grammar.root);
    let checked = 0;
    for (const step of r.logprobs.get("j") ?? []) {
      const allowed = (id: number) => {
        const bytes = table[id];
        return bytes ? stepBytes(state, bytes) !== null : l.tokenizer.eosIds.has(id) && canEnd(state);
      };
      expect(allowed(step.token)).toBe(true);
      // Any alternative the model likes better must be one the constraint ruled out.
      for (const t of step.top) if (t.logprob > (step.logprob as number) + 1e-6) expect(allowed(t.token)).toBe(false);
      checked += step.top.length;
      state = stepBytes(state, table[step.token] as Uint8Array) as typeof state;
    }
    expect(checked).toBeGreaterThan(100);
  });

  test("a malformed schema is rejected at submission (400)", () => {
    const l = load("tiny-llama-f16");
    const r = run(l, [
      {
        at: 0,
        request: request(l, "bad", promptIds(5, 7), 10, samplingParams(), {
          kind: "json_schema",
          schema: { type: "object", properties: { a: { type: "nope" } } },
        }),
      },
    ]);
    expect(r.finished.get("bad")).toStartWith("rejected 400: response_format:");
  });

  test("memory: no MLX arrays leak across constrained runs", () => {
    const l = load("tiny-llama-f16");
    const go = () =>
      run(l, [
        { at: 0, request: request(l, "a", promptIds(10, 8), 60, samplingParams(), schemaSpec) },
        { at: 1, request: request(l, "b", promptIds(11, 9), 20) },
        { at: 2, request: request(l, "c", promptIds(12, 10), 60, samplingParams({ temperature: 0.7 }), schemaSpec) },
      ]);
    go();
    const arrays = mx.liveArrayCount();
    go();
    expect(mx.liveArrayCount()).toBe(arrays);
  });
});

describe("tiny-phi3", () => {
  test("constrained rows that cross the LongRoPE boundary (cache recomputed) stay valid", () => {
    const l = load("tiny-phi3");
    // The original context is 64: these rows cross it while generating.
    const plain = promptIds(58, 11);
    const expected = single(l.model, plain, 20);
    const r = run(l, [
      { at: 0, request: request(l, "j1", promptIds(55, 12), 400, samplingParams(), schemaSpec) },
      { at: 1, request: request(l, "p", plain, 20) },
      {
        at: 2,
        request: request(l, "j2", promptIds(61, 13), 400, samplingParams({ temperature: 1, seed: 1 }), schemaSpec),
      },
    ]);
    expect(r.tokens.get("p")).toEqual(expected);
    for (const id of ["j1", "j2"]) {
      expect(r.finished.get(id)).toBe("stop");
      expect(r.tokens.get(id)?.length).toBeGreaterThan(10);
      expect(validate(JSON.parse(text(l, r.tokens.get(id))), SCHEMA)).toEqual([]);
    }
  });
});
