// The byte bound that refuses impossible prompts before tokenizing: a token
// stands for at most maxInputBytesPerToken() input bytes, so no text that
// would fit the context is refused by it. Checked on real tokenizers (byte-level
// BPE, SentencePiece BPE with byte fallback, their GGUF forms) over texts built
// to pack many bytes into few tokens.
import { describe, expect, test } from "bun:test";
import { checkPromptBytes, utf8Length } from "../../src/server/prompt";
import { maxInputBytesPerToken } from "../../src/text/token-bytes";
import type { Tokenizer } from "../../src/text/tokenizer";
import { keepsInputBytes, type TokenizerJson } from "../../src/text/tokenizer-json";
import { mulberry32 } from "../support/random";
import { phi3, phi3Gguf, smollm2, testStrings } from "./helpers";

const tokenizers: Array<[string, () => Tokenizer]> = [
  ["SmolLM2 (GGUF, byte-level BPE)", smollm2],
  ["Phi-3 (tokenizer.json, SentencePiece BPE)", () => phi3("july")],
  ["Phi-3 (GGUF)", phi3Gguf],
];

/** Texts that stress the bound: the longest pieces repeated, whitespace runs, special-token texts, emoji, CJK. */
function stressTexts(t: Tokenizer, bound: number): string[] {
  const longest: string[] = [];
  for (let id = 0; id < t.vocabSize && longest.length < 40; id++) {
    const text = t.decode([id], { skipSpecialTokens: false });
    if (utf8Length(text) >= bound - 2) longest.push(text);
  }
  const rng = mulberry32(7);
  const pick = <T>(xs: T[]) => xs[Math.floor(rng() * xs.length)] as T;
  const specials = [...t.specialIds].map((id) => t.decode([id], { skipSpecialTokens: false }));
  const out = [
    ...testStrings(),
    " ".repeat(5000),
    "\n".repeat(3000),
    "\t".repeat(2000),
    "=".repeat(4000),
    "😀".repeat(500),
    "漢字".repeat(800),
    longest.join(""),
    longest.join(" "),
    specials.join(""),
  ];
  for (let i = 0; i < 20; i++) {
    out.push(
      Array.from({ length: 200 }, () => pick([...longest, ...specials, " ", "a", "é", "😀", "\u0301"])).join(""),
    );
  }
  return out.filter((s) => s.length > 0);
}

describe.each(tokenizers)("%s", (_name, load) => {
  test("no text needs fewer tokens than its bytes / the bound", () => {
    const t = load();
    const bound = maxInputBytesPerToken(t);
    expect(bound).not.toBeNull();
    for (const text of stressTexts(t, bound as number)) {
      const tokens = t.encode(text, { addSpecialTokens: false }).length;
      const bytes = utf8Length(text);
      expect(bytes).toBe(new TextEncoder().encode(text).length);
      if (bytes > tokens * (bound as number))
        throw new Error(`${JSON.stringify(text.slice(0, 60))}: ${bytes} bytes in ${tokens} tokens`);
    }
  });

  test("the check refuses only what cannot fit, and lets through what fits", () => {
    const t = load();
    const bound = maxInputBytesPerToken(t) as number;
    const ctx = (contextLength: number) => ({ tokenizer: t, contextLength, vocabSize: t.vocabSize });
    const text = "x".repeat(10 * bound + 1);
    // 10·bound + 1 bytes need at least 11 tokens: refused with a context of 11 (10 usable), not with 12.
    expect(() => checkPromptBytes(ctx(11), text)).toThrow(/prompt is too long: 11 tokens > 10 maximum/);
    expect(() => checkPromptBytes(ctx(12), text)).not.toThrow();
  });
});

test("pipelines that may drop or shrink text get no bound", () => {
  const base = { added_tokens: [], post_processor: null, decoder: null, model: { type: "BPE", vocab: {}, merges: [] } };
  const json = (normalizer: unknown, pre_tokenizer: unknown, model: TokenizerJson["model"] = base.model) =>
    ({ ...base, normalizer, pre_tokenizer, model }) as TokenizerJson;
  expect(keepsInputBytes(json(null, { type: "ByteLevel" }))).toBe(true);
  expect(keepsInputBytes(json({ type: "Sequence", normalizers: [{ type: "Prepend", prepend: "\u2581" }] }, null))).toBe(
    true,
  );
  expect(keepsInputBytes(json({ type: "NFC" }, null))).toBe(false);
  expect(keepsInputBytes(json({ type: "Lowercase" }, null))).toBe(false);
  expect(keepsInputBytes(json(null, { type: "Whitespace" }))).toBe(false);
  expect(keepsInputBytes(json(null, { type: "Split", behavior: "Removed" }))).toBe(false);
  expect(keepsInputBytes(json(null, null, { type: "WordPiece", vocab: {} }))).toBe(false);
  expect(keepsInputBytes(json(null, null, { type: "BPE", vocab: {}, fuse_unk: true }))).toBe(false);
  expect(keepsInputBytes(json(null, null, { type: "BPE", vocab: {}, fuse_unk: true, byte_fallback: true }))).toBe(true);
});
