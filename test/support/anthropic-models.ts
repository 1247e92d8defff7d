// A tiny random Phi-3 for Claude Code runs: the real 128K context shape
// (original 4096 positions, LongRoPE up to 131072) so a ~15K-token Claude Code
// prompt fits, and a lean towards its end-of-turn token so that replies end by
// themselves, as a trained model's do. Claude Code treats a reply that ends at
// max_tokens as an error, and a random model would otherwise run until the
// context is full. The text stays noise; every token is still sampled by the
// engine from the model's own logits.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { shrinkConfig, writeRandomModel } from "../../src/models/random";
import { PHI3_FILES, TEST_TMP } from "./models";

/** Phi-3's <|end|>. */
const END_TOKEN = 32007;
/** Residual-stream dimension every token embedding sets to 1, so the final hidden state has a steady component. */
const STEADY_DIM = 0;
/** lm_head weight from that component to <|end|>: a few percent chance per token at temperature 1. */
const END_WEIGHT = 1;

function spec() {
  const { quantization: _float16Weights, ...config } = shrinkConfig(join(PHI3_FILES, "config.json"), {
    hidden_size: 192,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    num_key_value_heads: 2,
    intermediate_size: 256,
  });
  return { config, tokenizerFrom: PHI3_FILES, seed: 1, endWeight: END_WEIGHT };
}

function float16Bits(value: number): number {
  const f16 = new Float16Array([value]);
  return new Uint16Array(f16.buffer)[0] as number;
}

/** Edits float16 tensors of a .safetensors file in place. */
function patchSafetensors(path: string, edit: (name: string, shape: number[], data: Uint16Array) => void): void {
  const file = readFileSync(path);
  const headerLength = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + headerLength).toString("utf8")) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const base = 8 + headerLength;
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__" || info.dtype !== "F16") continue;
    const [start, end] = info.data_offsets;
    const bytes = new Uint8Array(file.buffer, file.byteOffset + base + start, end - start);
    edit(name, info.shape, new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2));
  }
  writeFileSync(path, file);
}

/** Writes (once) and returns the model folder. */
export function tinyPhi3ForClaudeCode(root = join(TEST_TMP, "models")): string {
  const s = spec();
  const dir = join(root, "tiny-phi3-128k-ends");
  const stamp = join(dir, ".spec");
  const digest = createHash("sha256").update(JSON.stringify(s)).digest("hex").slice(0, 16);
  if (existsSync(stamp) && readFileSync(stamp, "utf8") === digest) return dir;
  writeRandomModel(dir, { config: s.config, tokenizerFrom: s.tokenizerFrom, seed: s.seed });
  const one = float16Bits(1);
  const endWeight = float16Bits(s.endWeight);
  patchSafetensors(join(dir, "model.safetensors"), (name, shape, data) => {
    const width = shape[1] as number;
    if (name === "model.embed_tokens.weight")
      for (let row = 0; row < (shape[0] as number); row++) data[row * width + STEADY_DIM] = one;
    if (name === "lm_head.weight") data[END_TOKEN * width + STEADY_DIM] = endWeight;
  });
  writeFileSync(stamp, digest);
  return dir;
}
