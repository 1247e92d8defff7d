// Token bytes and the token mask of constrained decoding, on the real
// vocabularies of Phi-3 (SentencePiece with byte fallback, 32K) and SmolLM2
// (GGUF byte-level BPE, 49K): the bytes agree with the tokenizer's own
// decoding, the trie walk allows exactly the tokens a brute-force check over
// the whole vocabulary allows, and it is fast enough to run every step.
import { describe, expect, test } from "bun:test";
import {
  canEnd,
  grammarFor,
  initialState,
  JsonConstraint,
  type JsonGrammar,
  markAllowed,
  stepBytes,
  VocabTrie,
} from "../../src/text/json-constraint";
import { type PieceStyle, pieceStyle, tokenByteTable } from "../../src/text/token-bytes";
import type { Tokenizer } from "../../src/text/tokenizer";
import { mulberry32 } from "../support/random";
import { phi3, smollm2 } from "./helpers";

// ignoreBOM: keep a U+FEFF token's character (the tokenizer does).
const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

const CLOSING = new Set([...' \n"}]0123456789,:'].map((c) => c.charCodeAt(0)));

const vocabularies: Array<[string, () => Tokenizer, PieceStyle]> = [
  ["Phi-3", () => phi3("july"), "sentencepiece"],
  ["SmolLM2", smollm2, "byte-level"],
];

const tries = new Map<string, VocabTrie>();
function trieOf(name: string, tokenizer: Tokenizer): VocabTrie {
  let trie = tries.get(name);
  if (!trie) {
    trie = new VocabTrie(tokenByteTable(tokenizer));
    tries.set(name, trie);
  }
  return trie;
}

const grammars: Array<[string, JsonGrammar]> = [
  ["json_object", grammarFor({ kind: "json" })],
  [
    "schema",
    grammarFor({
      kind: "json_schema",
      schema: {
        type: "object",
        properties: {
          name: { type: "string", maxLength: 12 },
          age: { type: "integer" },
          city: { enum: ["Paris", "Oslo", "São Paulo"] },
          tags: { type: "array", items: { type: "string" }, maxItems: 4 },
          extra: { anyOf: [{ type: "null" }, { type: "number" }, { type: "object" }] },
        },
        required: ["name", "age", "city"],
        additionalProperties: false,
      },
    }),
  ],
];

for (const [name, load, style] of vocabularies) {
  describe(name, () => {
    test(`token bytes (${style}) spell what the tokenizer decodes`, () => {
      const tokenizer = load();
      expect(pieceStyle(tokenizer)).toBe(style);
      const table = tokenByteTable(tokenizer);
      // In context, so that a SentencePiece leading space is not stripped.
      const ctx = tokenizer.encode("a", { addSpecialTokens: false });
      const base = tokenizer.decode(ctx);
      let compared = 0;
      const wrong: string[] = [];
      for (let id = 0; id < tokenizer.vocabSize; id++) {
        const bytes = table[id];
        if (tokenizer.isSpecial(id)) {
          expect(bytes).toBeNull();
          continue;
        }
        if (!bytes) continue;
        let text: string;
        try {
          text = strict.decode(bytes);
        } catch {
          continue; // part of a character: decode shows U+FFFD
        }
        compared++;
        const decoded = tokenizer.decode([...ctx, id]).slice(base.length);
        if (decoded !== text)
          wrong.push(`${id} ${JSON.stringify(tokenizer.idToToken(id))}: ${JSON.stringify(decoded)}`);
      }
      expect(wrong.slice(0, 10)).toEqual([]);
      expect(compared).toBeGreaterThan(tokenizer.vocabSize * 0.9);
      // Byte-fallback pieces are the raw byte.
      if (style === "sentencepiece") expect([...(table[tokenizer.tokenToId("<0x0A>") as number] ?? [])]).toEqual([10]);
    });

    for (const [gname, grammar] of grammars) {
      test(`${gname}: the trie walk allows exactly the tokens brute force allows, along random generations`, () => {
        const tokenizer = load();
        const trie = trieOf(name, tokenizer);
        const table = trie.bytes;
        const eos = [...tokenizer.eosIds];
        const random = mulberry32(gname.length + name.length);
        let checks = 0;
        for (let run = 0; run < 3; run++) {
          const c = new JsonConstraint(grammar, trie, eos);
          for (let stepNo = 0; stepNo < 30; stepNo++) {
            const out = new Uint8Array(tokenizer.vocabSize);
            const n = c.allowed(out);
            const allowed: number[] = [];
            const differ: number[] = [];
            for (let id = 0; id < out.length; id++) {
              const bytes = table[id];
              const ok = eos.includes(id) ? canEnd(c.state) : bytes ? stepBytes(c.state, bytes) !== null : false;
              if ((out[id] === 1) !== ok) differ.push(id);
              if (ok) allowed.push(id);
            }
            expect(differ).toEqual([]);
            expect(n).toBe(allowed.length);
            checks++;
            if (allowed.length === 0 || c.done) break;
            // Prefer the tokens that close things so that runs also reach nested ends and completion.
            const closing = allowed.filter((id) => table[id]?.every((b) => CLOSING.has(b)));
            const pool = closing.length > 0 && random() < 0.5 ? closing : allowed;
            const id = pool[Math.floor(random() * pool.length)] as number;
            if (eos.includes(id)) break;
            expect(c.accept(id)).toBe(true);
          }
        }
        expect(checks).toBeGreaterThan(20);
      }, 60_000);
    }

    test("the end-of-turn tokens are allowed exactly when the value is complete", () => {
      const tokenizer = load();
      const trie = trieOf(name, tokenizer);
      const eos = [...tokenizer.eosIds];
      const c = new JsonConstraint(grammarFor({ kind: "json" }), trie, eos);
      const out = new Uint8Array(tokenizer.vocabSize);
      for (const id of tokenizer.encode('{"a": [1, "x"]', { addSpecialTokens: false })) expect(c.accept(id)).toBe(true);
      c.allowed(out);
      expect(eos.some((id) => out[id])).toBe(false);
      expect(c.accept(eos[0] as number)).toBe(false);
      const close = tokenizer.encode("}", { addSpecialTokens: false });
      for (const id of close.filter((id) => trie.bytes[id]?.length)) expect(c.accept(id)).toBe(true);
      expect(c.done).toBe(true);
      out.fill(0);
      expect(c.allowed(out)).toBe(eos.length);
      expect(eos.every((id) => out[id] === 1)).toBe(true);
      expect(c.accept(eos[0] as number)).toBe(true);
    });

    test("mask cost per step along a realistic output (reported)", () => {
      const tokenizer = load();
      const trie = trieOf(name, tokenizer);
      const doc = JSON.stringify(
        {
          name: "Felix the Cat",
          age: 7,
          color: "black and white",
          toys: ["mouse", "ball of yarn", "laser pointer"],
          owner: { name: "Ms. Müller", city: "Zürich", since: 2019.5 },
          notes: "Likes to sleep in the sun; dislikes baths — very much.",
        },
        null,
        2,
      );
      const ids = tokenizer.encode(doc, { addSpecialTokens: false });
      const out = new Uint8Array(tokenizer.vocabSize);
      const times: number[] = [];
      for (let round = 0; round < 3; round++) {
        const c = new JsonConstraint(grammarFor({ kind: "json" }), trie, [...tokenizer.eosIds]);
        for (const id of ids) {
          out.fill(0);
          const t0 = performance.now();
          c.allowed(out);
          if (round > 0) times.push(performance.now() - t0);
          expect(out[id]).toBe(1);
          expect(c.accept(id)).toBe(true);
        }
      }
      times.sort((a, b) => a - b);
      const mean = times.reduce((a, b) => a + b, 0) / times.length;
      const p = (q: number) => (times[Math.min(times.length - 1, Math.floor(q * times.length))] as number).toFixed(3);
      console.log(
        `${name} (${tokenizer.vocabSize} tokens, ${trie.nodeCount} trie nodes): mask ${mean.toFixed(3)} ms mean, p50 ${p(0.5)}, p95 ${p(0.95)}, max ${p(1)} over ${times.length} steps`,
      );
      // Generous: the budget is a few ms per step; this box is slow and shared.
      expect(mean).toBeLessThan(10);
    });
  });
}

test("json_object mask at the start: only whitespace and an opening brace", () => {
  const tokenizer = smollm2();
  const trie = trieOf("SmolLM2", tokenizer);
  const out = new Uint8Array(tokenizer.vocabSize);
  markAllowed(trie, initialState(grammarFor({ kind: "json" }).root), out);
  for (let id = 0; id < out.length; id++) {
    if (!out[id]) continue;
    expect(tokenizer.decode([id])).toMatch(/^\s*(\{\s*("|\}|$)?)?$/);
  }
});
