// Writes a random-weight llama-architecture GGUF with Q4_0 linear weights, for
// benchmarks against llama.cpp on a model of real size (default: Phi-3-mini's
// shape, 3.8B parameters: hidden 3072, 32 layers of 32 heads, MLP 8192). The
// tokenizer (and so the vocabulary size) is copied from another GGUF, by
// default the embedded SmolLM2. Weights are random Q4_0 blocks: nibbles
// uniform, block scales d in [0.004, 0.012) as float16; norms are ones.
// (Phi-3 itself, with the same weights as an MLX random model: scripts/mlx-to-gguf.ts.)
//
//   bun scripts/make-random-gguf.ts --out FILE.gguf [--tokenizer-from X.gguf] [--layers 32]
//     [--hidden 3072] [--intermediate 8192] [--heads 32] [--kv-heads 32] [--seed 1]
import { join } from "node:path";
import { type GgufValue, GgufValueType, readGguf } from "../src/formats/gguf";
import { REPO_ROOT } from "../src/paths";
import { elementCount, GGML_F32, GGML_Q4_0, type GgufKv, type GgufTensorOut, writeGguf } from "./gguf-writer";

const args = process.argv.slice(2);
const flag = (name: string, fallback?: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const out = flag("out");
if (!out) {
  console.error("usage: bun scripts/make-random-gguf.ts --out FILE.gguf [--tokenizer-from X.gguf] [--layers N] ...");
  process.exit(2);
}
const tokenizerFrom = flag(
  "tokenizer-from",
  join(REPO_ROOT, ".pensieve/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
) as string;
const layers = Number(flag("layers", "32"));
const hidden = Number(flag("hidden", "3072"));
const intermediate = Number(flag("intermediate", "8192"));
const heads = Number(flag("heads", "32"));
const kvHeads = Number(flag("kv-heads", String(heads)));
let seed = Number(flag("seed", "1")) >>> 0 || 1;

const source = readGguf(tokenizerFrom);
const vocab = (source.metadata.get("tokenizer.ggml.tokens") as GgufValue[]).length;
const headDim = hidden / heads;

// ---- metadata: the architecture, then the source's tokenizer keys ----
const kv: GgufKv[] = [
  ["general.architecture", GgufValueType.STRING, "llama"],
  // No "phi" in the name: llama.cpp then looks for Phi-3's <|end|> token, which this vocabulary lacks.
  ["general.name", GgufValueType.STRING, `random llama ${layers}x${hidden} Q4_0`],
  ["general.file_type", GgufValueType.UINT32, 2], // MOSTLY_Q4_0
  ["llama.context_length", GgufValueType.UINT32, 4096],
  ["llama.embedding_length", GgufValueType.UINT32, hidden],
  ["llama.block_count", GgufValueType.UINT32, layers],
  ["llama.feed_forward_length", GgufValueType.UINT32, intermediate],
  ["llama.rope.dimension_count", GgufValueType.UINT32, headDim],
  ["llama.attention.head_count", GgufValueType.UINT32, heads],
  ["llama.attention.head_count_kv", GgufValueType.UINT32, kvHeads],
  ["llama.attention.layer_norm_rms_epsilon", GgufValueType.FLOAT32, 1e-5],
  ["llama.rope.freq_base", GgufValueType.FLOAT32, 10000],
  ["general.quantization_version", GgufValueType.UINT32, 2],
];
for (const [key, value] of source.metadata) {
  if (!key.startsWith("tokenizer.")) continue;
  kv.push([key, source.types.get(key) as GgufValueType, value, source.arrayTypes.get(key)]);
}

// ---- tensors (ggml dims: row length first) ----
type Tensor = Omit<GgufTensorOut, "write">;
const tensors: Tensor[] = [{ name: "token_embd.weight", dims: [hidden, vocab], type: GGML_Q4_0 }];
for (let l = 0; l < layers; l++) {
  const p = `blk.${l}`;
  tensors.push(
    { name: `${p}.attn_norm.weight`, dims: [hidden], type: GGML_F32 },
    { name: `${p}.attn_q.weight`, dims: [hidden, heads * headDim], type: GGML_Q4_0 },
    { name: `${p}.attn_k.weight`, dims: [hidden, kvHeads * headDim], type: GGML_Q4_0 },
    { name: `${p}.attn_v.weight`, dims: [hidden, kvHeads * headDim], type: GGML_Q4_0 },
    { name: `${p}.attn_output.weight`, dims: [heads * headDim, hidden], type: GGML_Q4_0 },
    { name: `${p}.ffn_norm.weight`, dims: [hidden], type: GGML_F32 },
    { name: `${p}.ffn_gate.weight`, dims: [hidden, intermediate], type: GGML_Q4_0 },
    { name: `${p}.ffn_up.weight`, dims: [hidden, intermediate], type: GGML_Q4_0 },
    { name: `${p}.ffn_down.weight`, dims: [intermediate, hidden], type: GGML_Q4_0 },
  );
}
tensors.push({ name: "output_norm.weight", dims: [hidden], type: GGML_F32 });
tensors.push({ name: "output.weight", dims: [hidden, vocab], type: GGML_Q4_0 });

// xorshift32: fast, seeded.
const next = () => {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed;
};
/** float16 bits of a positive value in [2^-14, 65504). */
const f16 = (v: number) => {
  const e = Math.floor(Math.log2(v));
  const m = Math.round((v / 2 ** e - 1) * 1024);
  return ((e + 15) << 10) | Math.min(m, 1023);
};
/** Norms are ones; matrices random Q4_0 blocks (uniform nibbles, d in [0.004, 0.012)). */
const write = (t: Tensor) => (put: (bytes: Uint8Array) => void) => {
  if (t.type === GGML_F32) {
    put(new Uint8Array(new Float32Array(elementCount(t)).fill(1).buffer));
    return;
  }
  const blocksPerChunk = 1 << 16;
  const blocks = elementCount(t) / 32;
  for (let b0 = 0; b0 < blocks; b0 += blocksPerChunk) {
    const n = Math.min(blocksPerChunk, blocks - b0);
    const buf = Buffer.alloc(n * 18);
    for (let i = 0; i < n; i++) {
      const o = i * 18;
      buf.writeUInt16LE(f16(0.004 + (next() / 2 ** 32) * 0.008), o);
      for (let j = 0; j < 16; j += 4) buf.writeUInt32LE(next(), o + 2 + j);
    }
    put(buf);
  }
};
const started = performance.now();
const written = writeGguf(
  out,
  kv,
  tensors.map((t) => ({ ...t, write: write(t) })),
);
const params = tensors.reduce((s, t) => s + elementCount(t), 0);
console.log(
  `wrote ${out}: ${tensors.length} tensors, ${(params / 1e9).toFixed(2)}B parameters, ${(written / 1e9).toFixed(2)} GB of tensor data in ${((performance.now() - started) / 1000).toFixed(0)} s`,
);
