// The embedded default model (SmolLM2-135M-Instruct, real trained weights,
// Q4_1 GGUF): it answers real questions, the GGUF → MLX conversion keeps it
// identical, and mlx-lm agrees on the converted folder.
import { describe, expect, test } from "bun:test";
import { existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { generateTokens } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import { convertGguf } from "../../src/models/gguf-to-mlx";
import { loadModel } from "../../src/models/loader";
import { encodeChat, StreamingDetokenizer, Tokenizer } from "../../src/text";
import { EMBEDDED_MODEL, TEST_TMP } from "../support/models";

const QUESTION = "What is the capital of France?";

function answer(modelPath: string, tokenizer: Tokenizer, question: string, maxTokens = 24) {
  const { model } = loadModel(modelPath);
  try {
    const prompt = encodeChat(tokenizer, [{ role: "user", content: question }], { addGenerationPrompt: true });
    const detok = new StreamingDetokenizer(tokenizer, { skipSpecialTokens: true });
    const tokens: number[] = [];
    let text = "";
    for (const step of generateTokens(model, prompt, {
      maxTokens,
      sampling: samplingParams(),
      stopTokenIds: [...tokenizer.eosIds],
    })) {
      tokens.push(step.token);
      text += detok.push(step.token);
    }
    return { prompt, tokens, text: text + detok.flush() };
  } finally {
    model.dispose();
  }
}

describe("SmolLM2-135M-Instruct (embedded default)", () => {
  const tokenizer = Tokenizer.fromGguf(EMBEDDED_MODEL);
  const fromGguf = answer(EMBEDDED_MODEL, tokenizer, QUESTION);

  test("answers the capital of France with Paris (greedy)", () => {
    expect(fromGguf.text).toContain("Paris");
  });

  test("`pensieve convert` writes a folder that generates the same tokens", () => {
    const dir = join(TEST_TMP, "smollm2-mlx");
    rmSync(dir, { recursive: true, force: true });
    const r = convertGguf(EMBEDDED_MODEL, dir);
    expect(r.quantization).toEqual({ groupSize: 32, bits: 4 });
    expect(existsSync(join(dir, "tokenizer.json"))).toBe(true);
    const folderTokenizer = Tokenizer.fromHfFolder(dir);
    const fromFolder = answer(dir, folderTokenizer, QUESTION);
    expect(fromFolder.prompt).toEqual(fromGguf.prompt);
    expect(fromFolder.tokens).toEqual(fromGguf.tokens);
  });
});
