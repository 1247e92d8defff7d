// `pensieve convert`: writes a GGUF model out as an MLX model folder that
// Pensieve and mlx-lm both load: config.json (with MLX quantization, per-module
// overrides where a tensor differs from the default), model.safetensors, and
// the tokenizer rebuilt from GGUF metadata (tokenizer.json, tokenizer_config.json,
// generation_config.json). Q4_0/Q4_1/Q8_0 stay quantized as MLX affine groups of 32.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readGguf } from "../formats/gguf";
import type { MxArray } from "../mlx";
import * as mx from "../mlx";
import { tokenizerSpecFromGguf } from "../text/gguf-tokenizer";
import { configToHf, type ModelConfig } from "./config";
import { readGgufWeights } from "./loader";
import { architectureFor } from "./registry";

export interface ConvertResult {
  tensors: number;
  bytes: number;
  quantization: { groupSize: number; bits: number } | null;
}

/** Input features of each module the architecture reads (the last axis of its shape). */
function moduleInputs(c: ModelConfig): Map<string, number> {
  return new Map(
    architectureFor(c.modelType)
      .weightShapes(c)
      .map(([name, shape]) => [name, shape.at(-1) as number]),
  );
}

/** Bits and group size of each quantized module (prefix → spec); 3-D expert stacks read their last axes. */
function quantizedModules(
  arrays: Map<string, MxArray>,
  c: ModelConfig,
): Map<string, { groupSize: number; bits: number }> {
  const out = new Map<string, { groupSize: number; bits: number }>();
  const inputsOf = moduleInputs(c);
  for (const [name, scales] of arrays) {
    if (!name.endsWith(".scales")) continue;
    const prefix = name.slice(0, -".scales".length);
    const weight = arrays.get(`${prefix}.weight`);
    if (!weight) continue;
    // A module the architecture does not list (an untied Gemma head) reads the hidden state.
    const inputs = inputsOf.get(prefix) ?? c.hiddenSize;
    const groupSize = inputs / scales.dim(-1);
    const bits = (weight.dim(-1) * 32) / inputs;
    out.set(prefix, { groupSize, bits });
  }
  return out;
}

export function convertGguf(input: string, outDir: string): ConvertResult {
  const { config, arrays } = readGgufWeights(input);
  try {
    const modules = quantizedModules(arrays, config);
    // The most common spec is the default; the others become per-module overrides (mlx-lm's format).
    const counts = new Map<string, number>();
    for (const q of modules.values()) counts.set(JSON.stringify(q), (counts.get(JSON.stringify(q)) ?? 0) + 1);
    const common = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0];
    const quantization = common ? (JSON.parse(common) as { groupSize: number; bits: number }) : null;
    const hfConfig = configToHf({ ...config, quantization });
    if (quantization) {
      const block: Record<string, unknown> = { group_size: quantization.groupSize, bits: quantization.bits };
      for (const [prefix, q] of modules) {
        if (q.groupSize !== quantization.groupSize || q.bits !== quantization.bits) {
          block[prefix] = { group_size: q.groupSize, bits: q.bits };
        }
      }
      hfConfig.quantization = block;
      hfConfig.quantization_config = block;
    }
    mkdirSync(outDir, { recursive: true });
    mx.saveSafetensors(join(outDir, "model.safetensors"), arrays, { format: "mlx" });
    writeFileSync(join(outDir, "config.json"), `${JSON.stringify(hfConfig, null, 2)}\n`);

    const meta = readGguf(input, { allowMissingData: true }).metadata;
    const spec = tokenizerSpecFromGguf(meta, input);
    const text = (id: number | undefined) => (id === undefined ? null : (spec.tokens[id] ?? null));
    writeFileSync(join(outDir, "tokenizer.json"), JSON.stringify(spec.tokenizerJson));
    const tokenizerConfig: Record<string, unknown> = {
      add_bos_token: spec.addBosToken,
      add_eos_token: spec.addEosToken,
      bos_token: text(spec.bosId),
      eos_token: text(spec.eosId),
      unk_token: text(spec.unkId),
      pad_token: text(spec.padId),
      clean_up_tokenization_spaces: false,
      model_max_length: config.maxPositionEmbeddings,
      tokenizer_class: "PreTrainedTokenizerFast",
    };
    if (spec.chatTemplate) tokenizerConfig.chat_template = spec.chatTemplate;
    writeFileSync(join(outDir, "tokenizer_config.json"), `${JSON.stringify(tokenizerConfig, null, 2)}\n`);
    const eos = [...new Set([...(spec.eosId === undefined ? [] : [spec.eosId]), ...spec.endOfGenerationIds])];
    const generation: Record<string, unknown> = { eos_token_id: eos.length === 1 ? eos[0] : eos };
    if (spec.bosId !== undefined) generation.bos_token_id = spec.bosId;
    writeFileSync(join(outDir, "generation_config.json"), `${JSON.stringify(generation, null, 2)}\n`);
    let bytes = 0;
    for (const a of arrays.values()) bytes += a.nbytes;
    return { tensors: arrays.size, bytes, quantization };
  } finally {
    for (const a of arrays.values()) a.dispose();
  }
}
