// Writes an MLX Phi-3 folder (mlx-community format: config.json, safetensors with
// 4-bit affine weights + float16 scales/biases, tokenizer.json) as a GGUF with
// Q4_0 linear weights, the format llama.cpp users run, for the llama.cpp CUDA
// anchor of the GPU benchmark (bench/gpu/device.sh llama-build). Same weights as
// far as the formats allow: each MLX group is dequantized and requantized to
// Q4_0 blocks of 32 (ggml's reference rounding), so every weight moves by at
// most half a Q4_0 step; norms are copied exactly (float16 → float32).
// Architecture `phi3`, as llama.cpp's convert_hf_to_gguf.py writes it: fused
// attn_qkv and ffn_up (gate | up), LongRoPE factors as rope_factors_{long,short}
// tensors with the original context length and attention factor as keys. The
// vocabulary (padded to vocab_size with [PADn], as the converter does) and
// merges come from tokenizer.json; scores are -id (the benchmark feeds ids).
//
//   bun scripts/mlx-to-gguf.ts --model DIR --out FILE.gguf
import { existsSync, readFileSync, closeSync, openSync, readSync } from "node:fs";
import { join } from "node:path";
import { GgufValueType } from "../src/formats/gguf";
import { GGML_F32, GGML_Q4_0, type GgufKv, type GgufTensorOut, quantizeQ4_0, writeGguf } from "./gguf-writer";

interface SafeTensor {
  file: string;
  dtype: string;
  shape: number[];
  start: number;
  end: number;
}

/** Every tensor of the folder's safetensors files (one file or an index of shards). */
function readSafetensorsIndex(dir: string): Map<string, SafeTensor> {
  const index = join(dir, "model.safetensors.index.json");
  const files = existsSync(index)
    ? [
        ...new Set(
          Object.values((JSON.parse(readFileSync(index, "utf8")) as { weight_map: Record<string, string> }).weight_map),
        ),
      ]
    : ["model.safetensors"];
  const out = new Map<string, SafeTensor>();
  for (const f of files) {
    const file = join(dir, f);
    const fd = openSync(file, "r");
    const len = Buffer.alloc(8);
    readSync(fd, len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE());
    const json = Buffer.alloc(n);
    readSync(fd, json, 0, n, 8);
    closeSync(fd);
    const header = JSON.parse(json.toString("utf8")) as Record<
      string,
      { dtype: string; shape: number[]; data_offsets: [number, number] }
    >;
    for (const [name, t] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      out.set(name, {
        file,
        dtype: t.dtype,
        shape: t.shape,
        start: 8 + n + t.data_offsets[0],
        end: 8 + n + t.data_offsets[1],
      });
    }
  }
  return out;
}

function readBytes(t: SafeTensor, from = 0, length = t.end - t.start): Uint8Array {
  const buf = new Uint8Array(length);
  const fd = openSync(t.file, "r");
  try {
    let done = 0;
    while (done < length) done += readSync(fd, buf, done, length - done, t.start + from + done);
  } finally {
    closeSync(fd);
  }
  return buf;
}

/** float16 / bfloat16 / float32 tensor → float32 values. */
function readFloats(t: SafeTensor, rowFrom = 0, rows = t.shape[0] ?? 1): Float32Array {
  const rowLen = t.shape.slice(1).reduce((a, b) => a * b, 1);
  const size = t.dtype === "F32" ? 4 : 2;
  const bytes = readBytes(t, rowFrom * rowLen * size, rows * rowLen * size);
  if (t.dtype === "F32") return new Float32Array(bytes.buffer);
  if (t.dtype === "F16") return Float32Array.from(new Float16Array(bytes.buffer));
  if (t.dtype === "BF16") {
    const u16 = new Uint16Array(bytes.buffer);
    const u32 = new Uint32Array(u16.length);
    for (let i = 0; i < u16.length; i++) u32[i] = (u16[i] as number) << 16;
    return new Float32Array(u32.buffer);
  }
  throw new Error(`unsupported dtype ${t.dtype}`);
}

/** A linear weight (MLX affine-quantized or float) → Q4_0, streamed in row chunks. */
function q4Tensor(st: Map<string, SafeTensor>, prefix: string, ggufName: string): GgufTensorOut {
  const w = st.get(`${prefix}.weight`);
  if (!w) throw new Error(`missing ${prefix}.weight`);
  const scales = st.get(`${prefix}.scales`);
  const biases = st.get(`${prefix}.biases`);
  const rows = w.shape[0] as number;
  const cols = scales ? ((w.shape[1] as number) * 32) / 4 : (w.shape[1] as number);
  if (scales && (w.dtype !== "U32" || !biases || ((w.shape[1] as number) * 32) / cols !== 4)) {
    throw new Error(`${prefix}: only 4-bit affine MLX quantization is converted`);
  }
  if (cols % 32 !== 0) throw new Error(`${prefix}: ${cols} columns is not a multiple of Q4_0's 32`);
  return {
    name: ggufName,
    dims: [cols, rows],
    type: GGML_Q4_0,
    write: (put) => {
      const chunk = Math.max(1, Math.floor((1 << 22) / cols));
      const values = new Float32Array(chunk * cols);
      for (let r0 = 0; r0 < rows; r0 += chunk) {
        const n = Math.min(chunk, rows - r0);
        const x = values.subarray(0, n * cols);
        if (scales && biases) {
          const groups = scales.shape[1] as number;
          const group = cols / groups;
          const packed = new Uint32Array(readBytes(w, r0 * (cols / 8) * 4, n * (cols / 8) * 4).buffer);
          const s = readFloats(scales, r0, n);
          const b = readFloats(biases, r0, n);
          for (let r = 0; r < n; r++) {
            for (let g = 0; g < groups; g++) {
              const scale = s[r * groups + g] as number;
              const bias = b[r * groups + g] as number;
              const base = r * cols + g * group;
              for (let k = 0; k < group; k += 8) {
                const word = packed[(base + k) >> 3] as number;
                for (let j = 0; j < 8; j++) x[base + k + j] = scale * ((word >>> (4 * j)) & 15) + bias;
              }
            }
          }
        } else {
          x.set(readFloats(w, r0, n));
        }
        const out = new Uint8Array((x.length / 32) * 18);
        quantizeQ4_0(x, out);
        put(out);
      }
    },
  };
}

function f32Tensor(name: string, values: Float32Array): GgufTensorOut {
  return {
    name,
    dims: [values.length],
    type: GGML_F32,
    write: (put) => put(new Uint8Array(values.buffer, values.byteOffset, values.byteLength)),
  };
}

/** tokenizer.json (SentencePiece-BPE, as Phi-3 ships it) → llama.cpp's "llama" vocabulary keys. */
function tokenizerKv(dir: string, vocabSize: number, config: Record<string, unknown>): GgufKv[] {
  const tj = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8")) as {
    model: { vocab: Record<string, number>; merges?: Array<string | [string, string]> };
    added_tokens?: Array<{ id: number; content: string; special: boolean }>;
  };
  const tc = existsSync(join(dir, "tokenizer_config.json"))
    ? (JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8")) as Record<string, unknown>)
    : {};
  const tokens: string[] = [];
  const types: number[] = [];
  for (let i = 0; i < vocabSize; i++) {
    tokens.push(`[PAD${i}]`);
    types.push(5); // UNUSED
  }
  for (const [piece, id] of Object.entries(tj.model.vocab)) {
    if (id >= vocabSize) continue;
    tokens[id] = piece;
    types[id] = /^<0x[0-9A-F]{2}>$/.test(piece) ? 6 : 1; // BYTE / NORMAL
  }
  for (const t of tj.added_tokens ?? []) {
    if (t.id >= vocabSize) continue;
    tokens[t.id] = t.content;
    types[t.id] = t.content === "<unk>" ? 2 : t.special ? 3 : 4; // UNKNOWN / CONTROL / USER_DEFINED
  }
  const scores = tokens.map((_, id) => (types[id] === 1 ? -id : 0));
  const merges = (tj.model.merges ?? []).map((m) => (Array.isArray(m) ? m.join(" ") : m));
  const idOf = (content: unknown) =>
    typeof content === "string" ? (tj.added_tokens ?? []).find((t) => t.content === content)?.id : undefined;
  const eos = (config.eos_token_id as number | undefined) ?? idOf(tc.eos_token) ?? 2;
  const kv: GgufKv[] = [
    ["tokenizer.ggml.model", GgufValueType.STRING, "llama"],
    ["tokenizer.ggml.tokens", GgufValueType.ARRAY, tokens, GgufValueType.STRING],
    ["tokenizer.ggml.scores", GgufValueType.ARRAY, scores, GgufValueType.FLOAT32],
    ["tokenizer.ggml.token_type", GgufValueType.ARRAY, types, GgufValueType.INT32],
    ["tokenizer.ggml.bos_token_id", GgufValueType.UINT32, (config.bos_token_id as number | undefined) ?? 1],
    ["tokenizer.ggml.eos_token_id", GgufValueType.UINT32, Array.isArray(eos) ? (eos[0] as number) : eos],
    ["tokenizer.ggml.unknown_token_id", GgufValueType.UINT32, 0],
    ["tokenizer.ggml.padding_token_id", GgufValueType.UINT32, idOf(tc.pad_token) ?? 0],
    ["tokenizer.ggml.add_bos_token", GgufValueType.BOOL, tc.add_bos_token !== false],
    ["tokenizer.ggml.add_eos_token", GgufValueType.BOOL, tc.add_eos_token === true],
  ];
  if (merges.length) kv.push(["tokenizer.ggml.merges", GgufValueType.ARRAY, merges, GgufValueType.STRING]);
  if (typeof tc.chat_template === "string")
    kv.push(["tokenizer.chat_template", GgufValueType.STRING, tc.chat_template]);
  return kv;
}

export function mlxPhi3ToGguf(dir: string, out: string): { tensors: number; bytes: number } {
  const c = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  if (c.model_type !== "phi3") throw new Error(`${dir}: model_type ${String(c.model_type)}, expected phi3`);
  const n = (k: string, fallback?: number) => {
    const v = c[k] ?? fallback;
    if (typeof v !== "number") throw new Error(`config.json: ${k} missing`);
    return v;
  };
  const hidden = n("hidden_size");
  const layers = n("num_hidden_layers");
  const heads = n("num_attention_heads");
  const kvHeads = n("num_key_value_heads", heads);
  const headDim = hidden / heads;
  const rotary = Math.round(headDim * n("partial_rotary_factor", 1));
  const context = n("max_position_embeddings");
  const rs = c.rope_scaling as {
    type?: string;
    rope_type?: string;
    long_factor?: number[];
    short_factor?: number[];
  } | null;
  const original = n("original_max_position_embeddings", context);
  const st = readSafetensorsIndex(dir);
  const vocab = (st.get("model.embed_tokens.weight")?.shape[0] as number) ?? n("vocab_size");
  const name = `random Phi-3 ${layers}x${hidden} Q4_0 (from ${dir.split("/").filter(Boolean).at(-1)})`;
  const kv: GgufKv[] = [
    ["general.architecture", GgufValueType.STRING, "phi3"],
    ["general.name", GgufValueType.STRING, name],
    ["general.file_type", GgufValueType.UINT32, 2], // MOSTLY_Q4_0
    ["general.quantization_version", GgufValueType.UINT32, 2],
    ["phi3.context_length", GgufValueType.UINT32, context],
    ["phi3.rope.scaling.original_context_length", GgufValueType.UINT32, original],
    ["phi3.embedding_length", GgufValueType.UINT32, hidden],
    ["phi3.feed_forward_length", GgufValueType.UINT32, n("intermediate_size")],
    ["phi3.block_count", GgufValueType.UINT32, layers],
    ["phi3.attention.head_count", GgufValueType.UINT32, heads],
    ["phi3.attention.head_count_kv", GgufValueType.UINT32, kvHeads],
    ["phi3.attention.layer_norm_rms_epsilon", GgufValueType.FLOAT32, n("rms_norm_eps", 1e-5)],
    ["phi3.rope.dimension_count", GgufValueType.UINT32, rotary],
    ["phi3.rope.freq_base", GgufValueType.FLOAT32, n("rope_theta", 10000)],
    ["phi3.attention.sliding_window", GgufValueType.UINT32, (c.sliding_window as number | null) ?? 0],
  ];
  const tensors: GgufTensorOut[] = [];
  const longrope = rs && (rs.type ?? rs.rope_type) !== "default" && rs.long_factor && rs.short_factor;
  if (longrope && rs.long_factor && rs.short_factor) {
    // convert_hf_to_gguf.py's Phi3MiniModel: attention factor sqrt(1 + ln(scale) / ln(original)).
    const scale = context / original;
    const attn = scale <= 1 ? 1 : Math.sqrt(1 + Math.log(scale) / Math.log(original));
    kv.push(["phi3.rope.scaling.attn_factor", GgufValueType.FLOAT32, attn]);
    tensors.push(f32Tensor("rope_factors_long.weight", Float32Array.from(rs.long_factor)));
    tensors.push(f32Tensor("rope_factors_short.weight", Float32Array.from(rs.short_factor)));
  }
  kv.push(...tokenizerKv(dir, vocab, c));
  const norm = (hf: string, gguf: string) => {
    const t = st.get(`${hf}.weight`);
    if (!t) throw new Error(`missing ${hf}.weight`);
    return f32Tensor(gguf, readFloats(t));
  };
  tensors.push(q4Tensor(st, "model.embed_tokens", "token_embd.weight"));
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    tensors.push(
      norm(`${p}.input_layernorm`, `blk.${l}.attn_norm.weight`),
      q4Tensor(st, `${p}.self_attn.qkv_proj`, `blk.${l}.attn_qkv.weight`),
      q4Tensor(st, `${p}.self_attn.o_proj`, `blk.${l}.attn_output.weight`),
      norm(`${p}.post_attention_layernorm`, `blk.${l}.ffn_norm.weight`),
      q4Tensor(st, `${p}.mlp.gate_up_proj`, `blk.${l}.ffn_up.weight`),
      q4Tensor(st, `${p}.mlp.down_proj`, `blk.${l}.ffn_down.weight`),
    );
  }
  tensors.push(norm("model.norm", "output_norm.weight"));
  tensors.push(q4Tensor(st, st.has("lm_head.weight") ? "lm_head" : "model.embed_tokens", "output.weight"));
  return { tensors: tensors.length, bytes: writeGguf(out, kv, tensors) };
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const flag = (name: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const model = flag("model");
  const out = flag("out");
  if (!model || !out) {
    console.error("usage: bun scripts/mlx-to-gguf.ts --model MLX_PHI3_DIR --out FILE.gguf");
    process.exit(2);
  }
  const started = performance.now();
  const r = mlxPhi3ToGguf(model, out);
  console.log(
    `wrote ${out}: ${r.tensors} tensors, ${(r.bytes / 1e9).toFixed(2)} GB of tensor data in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
}
