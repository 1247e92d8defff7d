// Long prompts are tokenized piece by piece with remembered pieces (src/text/piece-cache.ts).
// The oracle is the library's whole-text encode, which test/text/tokenizer.test.ts and
// family-tokenizers.test.ts check against Python `tokenizers`: piecewise must equal it exactly.
import { describe, expect, test } from "bun:test";
import { PIECEWISE_MIN_CHARS } from "../../src/text/piece-cache";
import type { Tokenizer } from "../../src/text/tokenizer";
import { phi3, phi3Gguf, smollm2, testStrings } from "./helpers";

const tokenizers: Record<string, () => Tokenizer> = {
  "Phi-3 (April config)": () => phi3("april"),
  "Phi-3 (July config: rstrip on its chat markers)": () => phi3("july"),
  "SmolLM2 (GGUF)": smollm2,
  "Phi-3 vocabulary (GGUF)": phi3Gguf,
};

/** The library's own whole-text encode, with BOS/EOS as the tokenizer adds them where the config (not tokenizer.json) says. */
function whole(tokenizer: Tokenizer, text: string, addSpecialTokens: boolean): number[] {
  const inner = tokenizer as unknown as {
    hf: { encode(t: string, o: object): { ids: number[] } };
    ownSpecialTokens: boolean;
  };
  if (!inner.ownSpecialTokens) return inner.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  const ids = inner.hf.encode(text, { add_special_tokens: false }).ids;
  if (addSpecialTokens && tokenizer.addBosToken) ids.unshift(tokenizer.bosId as number);
  if (addSpecialTokens && tokenizer.addEosToken) ids.push(tokenizer.eosId as number);
  return ids;
}

/** A long conversation in the model's own markers, with the test strings (unicode, spaces, code) as turns. */
function conversation(tokenizer: Tokenizer, turns: number): string {
  const special = [...tokenizer.specialIds].map((id) => tokenizer.idToToken(id) ?? "").filter((t) => t.length > 2);
  const strings = testStrings();
  let text = "You are a coding agent. ".repeat(200);
  for (let i = 0; i < turns; i++) {
    const marker = special[i % special.length] as string;
    text += `${marker}\n${strings[i % strings.length]} ${strings[(i * 7 + 3) % strings.length]}  \n`;
  }
  return text;
}

describe("piecewise tokenizing equals the whole encode", () => {
  for (const [name, load] of Object.entries(tokenizers)) {
    test(name, () => {
      const tokenizer = load();
      expect(tokenizer.pieces.enabled).toBe(true);
      for (const turns of [5, 40, 120]) {
        const text = conversation(tokenizer, turns);
        expect(text.length).toBeGreaterThan(PIECEWISE_MIN_CHARS);
        for (const addSpecialTokens of [false, true]) {
          const expected = whole(tokenizer, text, addSpecialTokens);
          expect(tokenizer.encode(text, { addSpecialTokens })).toEqual(expected);
          // The second time from remembered pieces, still equal.
          expect(tokenizer.encode(text, { addSpecialTokens })).toEqual(expected);
        }
      }
    });
  }
});

test("a follow-up turn tokenizes only its new pieces", () => {
  const tokenizer = phi3("july");
  const system = `<|system|>\n${"Tools and instructions: read files, edit them, run commands. ".repeat(400)}<|end|>\n`;
  const turn1 = `${system}<|user|>\nFix the bug in parse.ts<|end|>\n<|assistant|>\n`;
  const turn2 = `${turn1}I fixed it.<|end|>\n<|user|>\nNow add a test<|end|>\n<|assistant|>\n`;
  tokenizer.encode(turn1);
  const { hits, misses } = tokenizer.pieces;
  expect(tokenizer.encode(turn2)).toEqual(whole(tokenizer, turn2, true));
  expect(tokenizer.pieces.hits).toBeGreaterThan(hits); // the system piece was remembered
  expect(tokenizer.pieces.misses).toBe(misses); // the rest is short: encoded, not remembered
});
