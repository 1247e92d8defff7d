// Writes a random-weight llama-architecture GGUF with Q4_0 linear weights, for
// benchmarks against llama.cpp on a model of real size (default: Phi-3-mini's
// shape, 3.8B parameters: hidden 3072, 32 layers of 32 heads, MLP 8192). The
// tokenizer (and so the vocabulary size) is copied from another GGUF, by
// default the embedded SmolLM2. Weights are random Q4_0 blocks: nibbles
// uniform, block scales d in [0.004, 0.012) as float16; norms are ones.
//
//   bun scripts/make-random-gguf.ts --out FILE.gguf [--tokenizer-from X.gguf] [--layers 32]
//     [--hidden 3072] [--intermediate 8192] [--heads 32] [--kv-heads 32] [--seed 1]
import { closeSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { GgufValueType, type GgufValue, readGguf } from "../src/formats/gguf";
import { REPO_ROOT } from "../src/paths";

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

// ---- little-endian writer into growing chunks ----
class Bytes {
  parts: Buffer[] = [];
  u8(v: number) {
    this.parts.push(Buffer.from([v]));
  }
  u32(v: number) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.parts.push(b);
  }
  i32(v: number) {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.parts.push(b);
  }
  u64(v: number | bigint) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.parts.push(b);
  }
  f32(v: number) {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.parts.push(b);
  }
  str(s: string) {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    this.parts.push(b);
  }
  get length() {
    return this.parts.reduce((n, p) => n + p.length, 0);
  }
  buffer() {
    return Buffer.concat(this.parts);
  }
}

function writeValue(b: Bytes, type: GgufValueType, v: GgufValue, arrayType?: GgufValueType): void {
  const fixed = (size: number, put: (x: Buffer) => void) => {
    const x = Buffer.alloc(size);
    put(x);
    b.parts.push(x);
  };
  switch (type) {
    case GgufValueType.UINT8:
      b.u8(v as number);
      break;
    case GgufValueType.INT8:
      fixed(1, (x) => x.writeInt8(v as number));
      break;
    case GgufValueType.UINT16:
      fixed(2, (x) => x.writeUInt16LE(v as number));
      break;
    case GgufValueType.INT16:
      fixed(2, (x) => x.writeInt16LE(v as number));
      break;
    case GgufValueType.UINT32:
      b.u32(v as number);
      break;
    case GgufValueType.INT32:
      b.i32(v as number);
      break;
    case GgufValueType.FLOAT32:
      b.f32(v as number);
      break;
    case GgufValueType.BOOL:
      b.u8(v ? 1 : 0);
      break;
    case GgufValueType.STRING:
      b.str(v as string);
      break;
    case GgufValueType.UINT64:
      b.u64(v as number | bigint);
      break;
    case GgufValueType.INT64:
      fixed(8, (x) => x.writeBigInt64LE(BigInt(v as number)));
      break;
    case GgufValueType.FLOAT64:
      fixed(8, (x) => x.writeDoubleLE(v as number));
      break;
    case GgufValueType.ARRAY: {
      const items = v as GgufValue[];
      if (arrayType === undefined) throw new Error("array without element type");
      b.u32(arrayType);
      b.u64(items.length);
      for (const item of items) writeValue(b, arrayType, item);
      break;
    }
  }
}

// ---- metadata: the architecture, then the source's tokenizer keys ----
const kv: Array<[string, GgufValueType, GgufValue, GgufValueType?]> = [
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
const Q4_0 = 2;
const F32 = 0;
type Tensor = { name: string; dims: number[]; type: number };
const tensors: Tensor[] = [{ name: "token_embd.weight", dims: [hidden, vocab], type: Q4_0 }];
for (let l = 0; l < layers; l++) {
  const p = `blk.${l}`;
  tensors.push(
    { name: `${p}.attn_norm.weight`, dims: [hidden], type: F32 },
    { name: `${p}.attn_q.weight`, dims: [hidden, heads * headDim], type: Q4_0 },
    { name: `${p}.attn_k.weight`, dims: [hidden, kvHeads * headDim], type: Q4_0 },
    { name: `${p}.attn_v.weight`, dims: [hidden, kvHeads * headDim], type: Q4_0 },
    { name: `${p}.attn_output.weight`, dims: [heads * headDim, hidden], type: Q4_0 },
    { name: `${p}.ffn_norm.weight`, dims: [hidden], type: F32 },
    { name: `${p}.ffn_gate.weight`, dims: [hidden, intermediate], type: Q4_0 },
    { name: `${p}.ffn_up.weight`, dims: [hidden, intermediate], type: Q4_0 },
    { name: `${p}.ffn_down.weight`, dims: [intermediate, hidden], type: Q4_0 },
  );
}
tensors.push({ name: "output_norm.weight", dims: [hidden], type: F32 });
tensors.push({ name: "output.weight", dims: [hidden, vocab], type: Q4_0 });

const ALIGN = 32;
const count = (t: Tensor) => t.dims.reduce((a, b) => a * b, 1);
const byteSize = (t: Tensor) => (t.type === Q4_0 ? (count(t) / 32) * 18 : count(t) * 4);
const pad = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

const header = new Bytes();
header.u32(0x46554747); // "GGUF"
header.u32(3);
header.u64(tensors.length);
header.u64(kv.length);
for (const [key, type, value, arrayType] of kv) {
  header.str(key);
  header.u32(type);
  writeValue(header, type, value, arrayType);
}
let offset = 0;
for (const t of tensors) {
  header.str(t.name);
  header.u32(t.dims.length);
  for (const d of t.dims) header.u64(d);
  header.u32(t.type);
  header.u64(offset);
  offset += pad(byteSize(t));
}
const head = header.buffer();
const fd = openSync(out, "w");
writeSync(fd, head);
writeSync(fd, Buffer.alloc(pad(head.length) - head.length));

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
const started = performance.now();
let written = 0;
for (const t of tensors) {
  const size = byteSize(t);
  if (t.type === F32) {
    const ones = new Float32Array(count(t)).fill(1);
    writeSync(fd, Buffer.from(ones.buffer));
  } else {
    const blocksPerChunk = 1 << 16;
    const blocks = count(t) / 32;
    for (let b0 = 0; b0 < blocks; b0 += blocksPerChunk) {
      const n = Math.min(blocksPerChunk, blocks - b0);
      const buf = Buffer.alloc(n * 18);
      for (let i = 0; i < n; i++) {
        const o = i * 18;
        buf.writeUInt16LE(f16(0.004 + (next() / 2 ** 32) * 0.008), o);
        for (let j = 0; j < 16; j += 4) buf.writeUInt32LE(next(), o + 2 + j);
      }
      writeSync(fd, buf);
    }
  }
  writeSync(fd, Buffer.alloc(pad(size) - size));
  written += size;
}
closeSync(fd);
const params = tensors.reduce((s, t) => s + count(t), 0);
console.log(
  `wrote ${out}: ${tensors.length} tensors, ${(params / 1e9).toFixed(2)}B parameters, ${(written / 1e9).toFixed(2)} GB of tensor data in ${((performance.now() - started) / 1000).toFixed(0)} s`,
);
