import { describe, expect, test } from "bun:test";
import { StreamingDetokenizer, type TokenDecoder } from "../../src/text/detokenizer.ts";
import type { Tokenizer } from "../../src/text/tokenizer.ts";
import { label, phi3, phi3Gguf, smollm2, testStrings } from "./helpers.ts";

const REPLACEMENT = "\uFFFD";

/** Stream ids one by one; returns the chunks (flush last). */
function stream(decoder: TokenDecoder, ids: number[], skipSpecialTokens = false): string[] {
  const detokenizer = new StreamingDetokenizer(decoder, { skipSpecialTokens });
  const chunks = ids.map((id) => detokenizer.push(id));
  chunks.push(detokenizer.flush());
  return chunks;
}

const tokenizers: [string, () => Tokenizer][] = [
  ["Phi-3 (SentencePiece BPE, byte fallback)", () => phi3("april")],
  ["SmolLM2 GGUF (byte-level BPE)", smollm2],
  ["Phi-3 GGUF vocabulary", phi3Gguf],
];

// Texts whose tokens split characters across tokens, plus the shared fixture strings.
const extraTexts = [
  "\ud83e\udd99\ud83e\udd99 llamas \ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67 family",
  "\u00e9\u00e8\u00ea \u4e2d\u6587\u5b57\u7b26 \ud840\udc00\ud840\udc01",
  "   three leading spaces and\n\n\n  newlines  ",
  "<|user|>\n  spaced <|end|>\n<|assistant|>\n\ud83d\ude00",
  "<|im_start|>assistant\n \ud83e\udd99<|im_end|>",
];

describe("streamed text equals the full decode", () => {
  for (const [name, load] of tokenizers) {
    describe(name, () => {
      for (const text of [...testStrings(), ...extraTexts]) {
        test(label(text), () => {
          const tokenizer = load();
          const ids = tokenizer.encode(text);
          for (const skipSpecialTokens of [false, true]) {
            const chunks = stream(tokenizer, ids, skipSpecialTokens);
            const full = tokenizer.decode(ids, { skipSpecialTokens });
            expect(chunks.join("")).toBe(full);
            // Never a broken character: no chunk carries U+FFFD unless the text itself does.
            if (!full.includes(REPLACEMENT)) for (const chunk of chunks) expect(chunk).not.toContain(REPLACEMENT);
          }
        });
      }
    });
  }
});

describe("StreamingDetokenizer behaviour", () => {
  test("a multi-byte character split over byte tokens comes out whole", () => {
    const tokenizer = smollm2();
    const ids = tokenizer.encode("\ud83e\udd99");
    expect(ids.length).toBeGreaterThan(1);
    const chunks = stream(tokenizer, ids).filter((chunk) => chunk !== "");
    expect(chunks).toEqual(["\ud83e\udd99"]);
  });

  test("SentencePiece spaces survive token-by-token streaming", () => {
    const tokenizer = phi3("april");
    const ids = tokenizer.encode("Hello big world", { addSpecialTokens: false });
    expect(stream(tokenizer, ids).filter((chunk) => chunk !== "")).toEqual(["Hello", " big", " world"]);
  });

  test("context ids keep the first streamed token's leading space", () => {
    const tokenizer = phi3("april");
    const [hello, world] = tokenizer.encode("Hello world", { addSpecialTokens: false }) as [number, number];
    const detokenizer = new StreamingDetokenizer(tokenizer, { contextIds: [1, hello] });
    expect(detokenizer.push(world)).toBe(" world");
    expect(new StreamingDetokenizer(tokenizer).push(world)).toBe("world");
  });

  test("skipSpecialTokens drops chat markers", () => {
    const tokenizer = smollm2();
    const ids = tokenizer.encode("<|im_start|>assistant\nHi!<|im_end|>");
    expect(stream(tokenizer, ids, true).join("")).toBe("assistant\nHi!");
    expect(stream(tokenizer, ids, false).join("")).toBe("<|im_start|>assistant\nHi!<|im_end|>");
  });

  test("an unfinished character is released by flush(), and a stuck one after maxHeldTokens", () => {
    const tokenizer = phi3("april");
    const leadByte = tokenizer.tokenToId("<0xF0>")!;
    const detokenizer = new StreamingDetokenizer(tokenizer, { maxHeldTokens: 3 });
    expect(detokenizer.push(tokenizer.tokenToId("▁a")!)).toBe("a");
    expect(detokenizer.push(leadByte)).toBe("");
    expect(detokenizer.flush()).toBe(REPLACEMENT);
    // Lead bytes that never complete: held for at most maxHeldTokens tokens.
    const chunks = [leadByte, leadByte, leadByte, leadByte].map((id) => detokenizer.push(id));
    expect(chunks.slice(0, 2)).toEqual(["", ""]);
    expect(chunks.join("")).toContain(REPLACEMENT);
  });

  test("work per token stays bounded on a long stream", () => {
    const tokenizer = smollm2();
    let longestDecode = 0;
    let decodedIds = 0;
    const counting: TokenDecoder = {
      decode(ids, options) {
        longestDecode = Math.max(longestDecode, ids.length);
        decodedIds += ids.length;
        return tokenizer.decode(ids, options);
      },
      isSpecial: (id) => tokenizer.isSpecial(id),
    };
    const text = "Streaming \ud83e\udd99 text, with \u4e2d\u6587 and numbers 12345. ".repeat(200);
    const ids = tokenizer.encode(text);
    expect(ids.length).toBeGreaterThan(4000);
    expect(stream(counting, ids).join("")).toBe(text);
    expect(longestDecode).toBeLessThanOrEqual(10);
    expect(decodedIds / ids.length).toBeLessThan(12);
  });
});
