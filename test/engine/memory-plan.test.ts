import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  contextSteps,
  estimateMemory,
  kvBytesPerToken,
  systemMemory,
  weightFilesBytes,
  workingBytes,
} from "../../src/engine/memory-plan";
import { configFromHf } from "../../src/models/config";
import { REPO_ROOT } from "../../src/paths";

const FIXTURE = join(REPO_ROOT, "..", "shared", "fixtures", "phi3-mini-128k");
const phi3 = JSON.parse(readFileSync(join(FIXTURE, "config.json"), "utf8")) as Record<string, unknown>;
const GiB = 1024 ** 3;
/** About the size of mlx-community/Phi-3-mini-128k-instruct-4bit's safetensors. */
const PHI3_WEIGHTS = 2_150_000_000;

describe("per-token and working memory", () => {
  test("Phi-3 mini's fp16 KV cache is 384 KiB a token, 48 GiB at 128K", () => {
    expect(kvBytesPerToken(phi3)).toBe(32 * 2 * 32 * 96 * 2);
    expect(kvBytesPerToken(phi3)).toBe(384 * 1024);
    expect(kvBytesPerToken(phi3) * 131072).toBe(48 * GiB);
    expect(kvBytesPerToken(phi3, 4)).toBe(768 * 1024);
  });

  test("quantized KV: bits/8 bytes an element plus a float scale and bias per group (Phi-3: group 32)", () => {
    // 8-bit: per head 96 B + 2 × 3 groups × 2 B = 108 B, against 192 B in fp16.
    expect(kvBytesPerToken(phi3, 2, 8, 32)).toBe(32 * 2 * 32 * (96 + 2 * 3 * 2));
    expect(kvBytesPerToken(phi3, 2, 8)).toBe(216 * 1024);
    expect(kvBytesPerToken(phi3, 2, 4)).toBe(120 * 1024);
    // Claude Code's 20K-token prefix: 7.5 GiB in fp16, 4.2 GiB at 8 bits, 2.3 GiB at 4 bits.
    expect((kvBytesPerToken(phi3, 2, 8) * 20480) / GiB).toBeCloseTo(4.22, 2);
    // Float32 scales and biases on the CPU.
    expect(kvBytesPerToken(phi3, 4, 8)).toBe(32 * 2 * 32 * (96 + 2 * 3 * 4));
    // The plan uses it: more context fits in the same memory.
    const on16 = (kvBits: 0 | 8) =>
      estimateMemory({ config: phi3, weightBytes: PHI3_WEIGHTS, memory: { totalBytes: 16 * GiB }, kvBits }).context;
    expect(on16(8)).toBeGreaterThan(on16(0));
  });

  test("grouped-query attention shrinks the cache by kv_heads / heads", () => {
    const llama = { ...phi3, model_type: "llama", num_key_value_heads: 8, rope_scaling: null };
    expect(kvBytesPerToken(llama)).toBe(kvBytesPerToken(phi3) / 4);
  });

  test("a normalized config (as from GGUF) gives the same numbers", () => {
    expect(kvBytesPerToken(configFromHf(phi3))).toBe(kvBytesPerToken(phi3));
  });

  test("working memory follows the documented formula", () => {
    // chunk × 4 × (vocab + 4·hidden + 2·intermediate + (heads + 2·kv)·head_dim) + heads × chunk × context × 4
    const perPosition = 32064 + 4 * 3072 + 2 * 8192 + (32 + 2 * 32) * 96;
    expect(workingBytes(phi3, 8192)).toBe(512 * 4 * perPosition + 32 * 512 * 8192 * 4);
    // A context shorter than the chunk only needs that many positions.
    expect(workingBytes(phi3, 256)).toBe(256 * 4 * perPosition + 32 * 256 * 256 * 4);
  });

  test("mixture of experts: a token's MLP is its top-k experts' width plus the router, not the dense width", () => {
    // Qwen3-30B-A3B's shape: 128 experts of width 768, 8 per token, 48 layers, 4 KV heads of 128.
    const moe = {
      model_type: "qwen3_moe",
      hidden_size: 2048,
      num_hidden_layers: 48,
      num_attention_heads: 32,
      num_key_value_heads: 4,
      head_dim: 128,
      intermediate_size: 6144,
      moe_intermediate_size: 768,
      num_experts: 128,
      num_experts_per_tok: 8,
      norm_topk_prob: true,
      vocab_size: 151936,
      max_position_embeddings: 40960,
    };
    const c = configFromHf(moe);
    const dense = configFromHf({ ...moe, num_experts: 0 });
    const perPositionGap = 2 * (6144 - (8 * 768 + 128));
    expect(workingBytes(dense, 1024) - workingBytes(c, 1024)).toBe(512 * 4 * perPositionGap);
    // All experts resident: the weights are what the files hold; windows do not shrink the KV cache.
    const estimate = estimateMemory({
      config: moe,
      weightBytes: 17_200_000_000,
      maxContext: 4096,
      memory: { totalBytes: 64 * GiB },
    });
    expect(estimate.breakdown.weights).toBe(17_200_000_000);
    expect(estimate.kvBytesPerToken).toBe(48 * 2 * 4 * 128 * 2);
  });

  test("context steps are powers of two and 1.5× between, up to the model's maximum", () => {
    expect(contextSteps(4096)).toEqual([4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256]);
    expect(contextSteps(131072).slice(0, 4)).toEqual([131072, 98304, 65536, 49152]);
    expect(contextSteps(40960)[0]).toBe(40960);
  });
});

describe("estimateMemory", () => {
  const phi3On = (totalGiB: number, extra: Partial<Parameters<typeof estimateMemory>[0]> = {}) =>
    estimateMemory({
      config: phi3,
      weightBytes: PHI3_WEIGHTS,
      name: "phi3-mini-mlx",
      memory: { totalBytes: totalGiB * GiB, availableBytes: totalGiB * GiB },
      ...extra,
    });

  test("the automatic cap is the largest step that fits, and the next one does not", () => {
    const on16 = phi3On(16);
    expect(on16.fits).toBe(true);
    expect(on16.automatic).toBe(true);
    expect(on16.context).toBe(16384);
    expect(on16.breakdown.total).toBeLessThanOrEqual(on16.memory.usableBytes);
    expect(phi3On(16, { maxContext: 24576 }).fits).toBe(false);
    expect(on16.memory.usableBytes).toBe(12 * GiB);
    expect(on16.breakdown.kvCache).toBe(16384 * 384 * 1024);
    expect(on16.message).toStartWith("phi3-mini-mlx: context capped at 16384 of 131072: context 16384 needs");

    expect(phi3On(64).context).toBe(98304);
    // Enough memory: the full 128K.
    const on128 = phi3On(128);
    expect(on128.context).toBe(131072);
    expect(on128.message).toStartWith("phi3-mini-mlx: context capped at 131072: ");
  });

  test("the full 128K context is refused where it cannot fit, with the largest context that can", () => {
    const full = phi3On(32, { maxContext: 131072 });
    expect(full.fits).toBe(false);
    expect(full.automatic).toBe(false);
    expect(full.breakdown.kvCache).toBe(48 * GiB);
    expect(full.message).toContain("context 131072 needs");
    expect(full.message).toContain("KV cache 48.0 GiB");
    expect(full.message).toContain("24.0 GiB is usable (75% of 32.0 GiB of RAM)");
    expect(full.message).toEndWith("set maxContext to 49152 or less");
    expect(phi3On(32, { maxContext: 49152 }).fits).toBe(true);
  });

  test("concurrent sequences at full context multiply the KV cache", () => {
    const eight = phi3On(64, { sequences: 8 });
    expect(eight.context).toBe(12288);
    expect(eight.breakdown.kvCache).toBe(8 * 12288 * 384 * 1024);
    expect(eight.message).toContain("for 8 sequences");
  });

  test("float32 caches (CPU backend) shorten the context", () => {
    expect(phi3On(16, { kvBytesPerElement: 4 }).context).toBe(12288);
  });

  test("a KV budget and a prefix cache reserve are respected", () => {
    expect(phi3On(64, { kvBudgetBytes: 1 * GiB }).context).toBe(2048);
    const reserved = phi3On(16, { prefixCacheBytes: 6 * GiB });
    expect(reserved.context).toBe(8192);
    expect(reserved.breakdown.prefixCache).toBe(6 * GiB);
    expect(reserved.message).toContain("prefix cache 6.00 GiB");
  });

  test("a model too large for the machine is refused", () => {
    const tiny = phi3On(2);
    expect(tiny.fits).toBe(false);
    expect(tiny.message).toContain("does not fit even at a 1024-token context");
    expect(tiny.message).toContain("smaller or more quantized model");
  });

  test("a context above the model's maximum is clamped with a warning", () => {
    const over = phi3On(256, { maxContext: 1_000_000 });
    expect(over.context).toBe(131072);
    expect(over.fits).toBe(true);
    expect(over.warnings[0]).toContain("above phi3-mini-mlx's max_position_embeddings (131072)");
  });

  test("little free memory right now is a warning, not a refusal", () => {
    const busy = phi3On(16, { memory: { totalBytes: 16 * GiB, availableBytes: 3 * GiB } });
    expect(busy.fits).toBe(true);
    expect(busy.warnings.some((w) => w.startsWith("only 3.00 GiB is free now"))).toBe(true);
  });

  test("device memory (a GPU) can be passed instead of RAM", () => {
    const gpu = phi3On(0, { memory: { totalBytes: 80 * GiB, label: "of GPU memory" }, usableFraction: 0.9 });
    expect(gpu.memory.usableBytes).toBe(Math.floor(80 * GiB * 0.9));
    expect(gpu.context).toBe(131072);
    expect(gpu.message).toContain("of GPU memory");
  });

  test("by default it reads this machine's memory", () => {
    const mem = systemMemory();
    expect(mem.totalBytes).toBeGreaterThan(0);
    expect(mem.availableBytes).toBeGreaterThan(0);
    expect(mem.availableBytes).toBeLessThanOrEqual(mem.totalBytes);
    const here = estimateMemory({ config: phi3, weightBytes: PHI3_WEIGHTS });
    expect(here.memory.totalBytes).toBe(mem.totalBytes);
    expect(here.context).toBeLessThanOrEqual(131072);
  });
});

test("weightFilesBytes sums a folder's safetensors (through links) or a GGUF file's size", () => {
  const dir = mkdtempSync(join(tmpdir(), "pensieve-weights-"));
  try {
    writeFileSync(join(dir, "a.safetensors"), new Uint8Array(1000));
    writeFileSync(join(dir, "blob"), new Uint8Array(500));
    symlinkSync("blob", join(dir, "b.safetensors"));
    writeFileSync(join(dir, "config.json"), "{}");
    writeFileSync(join(dir, "m.gguf"), new Uint8Array(300));
    expect(weightFilesBytes(dir)).toBe(1500);
    expect(weightFilesBytes(join(dir, "m.gguf"))).toBe(300);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
