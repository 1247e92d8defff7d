import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { fixture, label, PHI3_DIR, PHI3_VOCAB_GGUF, phi3, phi3Gguf, SMOLLM2_GGUF, smollm2 } from "./helpers.ts";

// References: scripts/fixtures/text/make-fixtures.sh (Python tokenizers/transformers, llama.cpp).
interface Phi3Case {
  text: string;
  tokenizers: number[];
  april: number[];
  aprilDecoded: string;
  aprilDecodedSkipSpecial: string;
  july: number[];
  julyDecoded: string;
  julyDecodedSkipSpecial: string;
}
interface IdsCase {
  text: string;
  ids: number[];
  decoded: string;
}
interface LlamaCppModel {
  eogIds: number[];
  cases: IdsCase[];
}

const phi3Cases = fixture<{ cases: Phi3Case[] }>("phi3-tokens.json").cases;
const llamaCpp = fixture<{ models: Record<string, LlamaCppModel> }>("llamacpp-tokens.json").models;
const smolLlamaCpp = llamaCpp["SmolLM2-135M-Instruct.Q4_1.gguf"]!;
const phi3LlamaCpp = llamaCpp["ggml-vocab-phi-3.gguf"]!;
const smolTransformers = fixture<{ cases: IdsCase[] }>("smollm2-transformers-tokens.json").cases;

describe("Phi-3 tokenizer.json (reference: Python tokenizers + transformers 4.x)", () => {
  test("special ids, stop ids, vocabulary, template", () => {
    const tokenizer = phi3("april");
    expect(tokenizer.vocabSize).toBe(32011);
    expect(tokenizer.bosId).toBe(1);
    expect(tokenizer.bosToken).toBe("<s>");
    expect(tokenizer.eosId).toBe(32000);
    expect(tokenizer.eosToken).toBe("<|endoftext|>");
    expect(tokenizer.unkId).toBe(0);
    expect(tokenizer.padId).toBe(32000);
    expect([...tokenizer.eosIds].sort((a, b) => a - b)).toEqual([32000, 32001, 32007]);
    expect(tokenizer.addBosToken).toBe(true);
    expect(phi3("july").addBosToken).toBe(false);
    for (const id of [0, 1, 2, 32000, 32001, 32007, 32010]) expect(tokenizer.isSpecial(id)).toBe(true);
    expect(tokenizer.isSpecial(15043)).toBe(false);
    expect(tokenizer.idToToken(15043)).toBe("▁Hello");
    expect(tokenizer.tokenToId("<|user|>")).toBe(32010);
    expect(tokenizer.idToToken(32011)).toBeUndefined();
    const config = JSON.parse(readFileSync(join(PHI3_DIR, "tokenizer_config.json"), "utf8"));
    expect(tokenizer.chatTemplate).toBe(config.chat_template);
  });

  for (const c of phi3Cases) {
    test(`encode/decode ${label(c.text)}`, () => {
      const april = phi3("april");
      const july = phi3("july");
      expect(april.encode(c.text, { addSpecialTokens: false })).toEqual(c.tokenizers);
      expect(april.encode(c.text)).toEqual(c.april);
      expect(july.encode(c.text)).toEqual(c.july);
      expect(april.decode(c.april)).toBe(c.aprilDecoded);
      expect(april.decode(c.april, { skipSpecialTokens: true })).toBe(c.aprilDecodedSkipSpecial);
      expect(july.decode(c.july)).toBe(c.julyDecoded);
      expect(july.decode(c.july, { skipSpecialTokens: true })).toBe(c.julyDecodedSkipSpecial);
    });
  }

  test("ids past the tokenizer (embedding padding rows) decode to nothing", () => {
    expect(phi3("april").decode([15043, 32050, 3186])).toBe("Hello world");
    expect(phi3("april").decode([])).toBe("");
  });

  test("a folder load finds tokenizer_config.json and generation_config.json", () => {
    const tokenizer = Tokenizer.fromHfFolder(PHI3_DIR);
    expect(tokenizer.addBosToken).toBe(true);
    expect([...tokenizer.eosIds].sort((a, b) => a - b)).toEqual([32000, 32001, 32007]);
    expect(() => Tokenizer.fromHfFolder(join(PHI3_DIR, "missing"))).toThrow(/no tokenizer\.json/);
  });
});

describe("Hugging Face folder variants", () => {
  const dir = mkdtempSync(join(tmpdir(), "pensieve-tokenizer-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const tokenizerJson = JSON.parse(readFileSync(join(PHI3_DIR, "tokenizer.json"), "utf8"));

  test("without add_bos_token in the config, tokenizer.json's post-processor decides", () => {
    const withBos = {
      ...tokenizerJson,
      post_processor: {
        type: "TemplateProcessing",
        single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
        pair: [{ Sequence: { id: "A", type_id: 0 } }, { Sequence: { id: "B", type_id: 1 } }],
        special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
      },
    };
    const tokenizer = Tokenizer.fromHfJson(withBos, { bos_token: "<s>", eos_token: "</s>" });
    expect(tokenizer.addBosToken).toBe(true);
    expect(tokenizer.encode("Hello")).toEqual([1, 15043]);
    expect(tokenizer.encode("Hello", { addSpecialTokens: false })).toEqual([15043]);
    // An explicit add_bos_token wins over the post-processor, as in transformers' Llama tokenizers.
    expect(Tokenizer.fromHfJson(withBos, { bos_token: "<s>", add_bos_token: false }).encode("Hello")).toEqual([15043]);
  });

  test("special_tokens_map.json, chat_template.jinja and additional_special_tokens", () => {
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tokenizerJson));
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ eos_token: "</s>", chat_template: "old" }));
    writeFileSync(
      join(dir, "special_tokens_map.json"),
      JSON.stringify({ eos_token: { content: "<|end|>" }, additional_special_tokens: ["<|user|>"] }),
    );
    writeFileSync(join(dir, "chat_template.jinja"), "{{ messages[0]['content'] }}");
    const tokenizer = Tokenizer.fromHfFolder(dir);
    expect(tokenizer.eosId).toBe(32007);
    expect([...tokenizer.eosIds]).toEqual([32007]);
    expect(tokenizer.chatTemplate).toBe("{{ messages[0]['content'] }}");
    expect(tokenizer.isSpecial(32010)).toBe(true);
    expect(tokenizer.addBosToken).toBe(false);
  });

  test("a broken tokenizer.json names the file", () => {
    const path = join(dir, "broken.json");
    writeFileSync(path, "{");
    expect(() => Tokenizer.fromHfFiles({ tokenizerJson: path })).toThrow(path);
  });
});

describe("SmolLM2 GGUF tokenizer (reference: llama.cpp; transformers 5.x GGUF conversion)", () => {
  test("metadata-derived facts", () => {
    const tokenizer = smollm2();
    expect(tokenizer.vocabSize).toBe(49152);
    expect(tokenizer.bosId).toBe(1);
    expect(tokenizer.bosToken).toBe("<|im_start|>");
    expect(tokenizer.eosId).toBe(2);
    expect(tokenizer.eosToken).toBe("<|im_end|>");
    expect(tokenizer.addBosToken).toBe(false);
    expect(tokenizer.chatTemplate).toContain("<|im_start|>");
    expect(tokenizer.warnings).toEqual([]);
    // llama.cpp also stops on its FIM token <reponame> (4); a chat server should not.
    expect([...tokenizer.eosIds].sort((a, b) => a - b)).toEqual(smolLlamaCpp.eogIds.filter((id) => id !== 4));
    for (let id = 0; id <= 16; id++) expect(tokenizer.isSpecial(id)).toBe(true);
  });

  test("loads from the 100 MB file in well under a second", () => {
    const start = performance.now();
    Tokenizer.fromGguf(SMOLLM2_GGUF);
    expect(performance.now() - start).toBeLessThan(1500);
  });

  for (const c of smolLlamaCpp.cases) {
    test(`encode/decode ${label(c.text)}`, () => {
      const tokenizer = smollm2();
      expect(tokenizer.encode(c.text)).toEqual(c.ids);
      expect(tokenizer.decode(c.ids)).toBe(c.decoded);
    });
  }

  test("transformers' GGUF conversion agrees except where it skips SmolLM's digit split", () => {
    // transformers maps tokenizer.ggml.pre "smollm" to plain GPT-2 splitting; llama.cpp (and SmolLM2's
    // own tokenizer.json, Digits(individual_digits)) split every \p{N} first. We follow llama.cpp:
    // the two differ only on non-ASCII digits here, because the vocabulary has no multi-digit tokens.
    const disagreements = smolTransformers
      .filter((c, i) => JSON.stringify(c.ids) !== JSON.stringify(smolLlamaCpp.cases[i]!.ids))
      .map((c) => c.text);
    expect(disagreements).toEqual([
      "superscripts \u00b2\u00b3 fractions \u00bd arabic-indic \u0663\u0664 fullwidth \uff11\uff12",
    ]);
    for (const c of smolTransformers) expect(smollm2().decode(c.ids)).toBe(c.decoded);
  });
});

describe("Phi-3 as a GGUF SentencePiece vocabulary (llama.cpp's ggml-vocab-phi-3.gguf)", () => {
  test("metadata-derived facts", () => {
    const tokenizer = phi3Gguf();
    expect(tokenizer.vocabSize).toBe(32064);
    expect(tokenizer.addBosToken).toBe(true);
    expect(tokenizer.bosId).toBe(1);
    expect(tokenizer.eosId).toBe(32000);
    expect([...tokenizer.eosIds].sort((a, b) => a - b)).toEqual(phi3LlamaCpp.eogIds);
  });

  for (const c of phi3LlamaCpp.cases) {
    test(`encode ${label(c.text)}`, () => {
      const tokenizer = phi3Gguf();
      expect(tokenizer.encode(c.text, { addSpecialTokens: false })).toEqual(c.ids);
      expect(tokenizer.encode(c.text)).toEqual([1, ...c.ids]);
      expect(tokenizer.decode(c.ids)).toBe(c.decoded);
    });
  }

  test("llama.cpp's own test vectors (.inp/.out)", () => {
    const inputs = readFileSync(`${PHI3_VOCAB_GGUF}.inp`, "utf8").split("\n__ggml_vocab_test__\n");
    const outputs = readFileSync(`${PHI3_VOCAB_GGUF}.out`, "utf8").split("\n");
    inputs[inputs.length - 1] = inputs.at(-1)!.replace(/\n__ggml_vocab_test__\n?$/, "");
    expect(inputs.length).toBeGreaterThan(30);
    inputs.forEach((input, i) => {
      const expected = outputs[i]!.trim() === "" ? [] : outputs[i]!.trim().split(/\s+/).map(Number);
      expect({ input, ids: phi3Gguf().encode(input, { addSpecialTokens: false }) }).toEqual({ input, ids: expected });
    });
  });

  test("agrees with the same model's tokenizer.json on the shared strings", () => {
    // The vocabulary stores scores, not merges: merges are derived from them (see gguf-tokenizer.ts).
    for (const c of phi3Cases) {
      // llama.cpp hard-codes rstrip on Phi-3's chat markers, as the July tokenizer_config does.
      expect(phi3Gguf().encode(c.text)).toEqual([1, ...c.july]);
    }
  });
});
