// Quality and cost of a quantized KV cache (kvBits 8 and 4) against float KV,
// on the CPU backend:
//   - perplexity of a committed public-domain English text, fed through the
//     cache in chunks (later chunks attend to stored, quantized keys);
//   - greedy agreement: 10 prompts × 128 tokens, the common prefix with the
//     float run's tokens;
//   - decode speed at a ~1K-token context and peak memory of a long prefill
//     with and without the score bound (attention-plan.ts).
// Writes bench/results/kv-quality-<device>-<time>.{json,md}.
//
// Text: test/fixtures/text/perplexity-kv.txt — Genesis 1-4, King James
// Version (public domain), printed by Debian's bible-kjv 4.38 (bible-kjv-text),
// verse numbers removed, one paragraph per chapter.
//
//   bun bench/kv-quality.ts [--models smollm2,tiny-llama] [--gen 128] [--skip-memory]
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { KvBits } from "../src/engine/attention-plan";
import { cacheFor, generateTokens } from "../src/engine/one-sequence";
import { samplingParams } from "../src/engine/protocol";
import * as mx from "../src/mlx";
import { loadModel } from "../src/models/loader";
import type { LanguageModel } from "../src/models/types";
import { REPO_ROOT } from "../src/paths";
import { loadTokenizer } from "../src/text/tokenizer";
import { EMBEDDED_MODEL, PHI3_FILES, tinyModel } from "../test/support/models";

const { values: args } = parseArgs({
  options: {
    models: { type: "string", default: "smollm2,tiny-llama" },
    gen: { type: "string", default: "128" },
    chunk: { type: "string", default: "256" },
    "skip-memory": { type: "boolean", default: false },
  },
});
const BITS: KvBits[] = [0, 8, 4];
const GEN = Number(args.gen);
const CHUNK = Number(args.chunk);
const TEXT = readFileSync(join(REPO_ROOT, "test", "fixtures", "text", "perplexity-kv.txt"), "utf8");

const PROMPTS = [
  "The history of the printing press begins",
  "Here is a short recipe for bread. First,",
  "Once upon a time, in a small village by the sea,",
  "The three laws of motion, as stated by Newton, are",
  "Dear hiring manager, I am writing to apply for",
  "Photosynthesis is the process by which plants",
  "def fibonacci(n):\n    ",
  "The capital of France is Paris. The capital of Italy is",
  // Long prompts: most of the attention is over stored keys.
  `${TEXT.slice(0, 2000)}\n\nSummary of the passage above:`,
  `${TEXT.slice(0, 9000)}\n\nThe names of the people in this text are`,
];

interface ModelCase {
  name: string;
  path: string;
  tokenizerPath: string;
}

function modelCases(): ModelCase[] {
  const all: Record<string, () => ModelCase> = {
    smollm2: () => ({ name: "SmolLM2-135M-Instruct Q4_1", path: EMBEDDED_MODEL, tokenizerPath: EMBEDDED_MODEL }),
    "tiny-llama": () => ({
      name: "tiny-llama (random weights)",
      path: tinyModel("tiny-llama"),
      tokenizerPath: PHI3_FILES,
    }),
    "tiny-phi3": () => ({
      name: "tiny-phi3 (random weights)",
      path: tinyModel("tiny-phi3"),
      tokenizerPath: PHI3_FILES,
    }),
  };
  return (args.models as string).split(",").map((m) => {
    const make = all[m];
    if (!make) throw new Error(`unknown model ${m}`);
    return make();
  });
}

/** Mean negative log-likelihood of tokens[1..] fed through a cache in chunks. */
function perplexity(model: LanguageModel, tokens: number[], kvBits: KvBits): { ppl: number; nll: number } {
  const cache = cacheFor(model, 1, kvBits);
  let total = 0;
  let count = 0;
  try {
    for (let start = 0; start < tokens.length - 1; start += CHUNK) {
      const input = tokens.slice(start, Math.min(tokens.length - 1, start + CHUNK));
      const targets = tokens.slice(start + 1, start + 1 + input.length);
      total += mx.tidy(() => {
        const logits = model.forward(mx.int32(input, [1, input.length]), cache, { logits: "all" });
        const flat = mx.reshape(logits, [input.length, -1]);
        const lse = mx.logsumexp(flat, -1);
        const picked = mx.reshape(mx.takeAlongAxis(flat, mx.int32(targets, [targets.length, 1]), 1), [-1]);
        const nll = mx.sum(mx.subtract(lse, picked));
        mx.evaluate(nll, ...cache.arrays());
        return (nll.read() as Float32Array)[0] as number;
      });
      count += targets.length;
    }
  } finally {
    cache.dispose();
  }
  return { ppl: Math.exp(total / count), nll: total / count };
}

function greedy(model: LanguageModel, prompt: number[], kvBits: KvBits): { tokens: number[]; ms: number } {
  const started = performance.now();
  const tokens = [...generateTokens(model, prompt, { maxTokens: GEN, sampling: samplingParams(), kvBits })].map(
    (s) => s.token,
  );
  return { tokens, ms: performance.now() - started };
}

function commonPrefix(a: number[], b: number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** Decode tok/s after a ~1K-token prompt (prefill excluded). */
function decodeSpeed(model: LanguageModel, prompt: number[], kvBits: KvBits, steps = 48): number {
  let first = 0;
  let n = 0;
  for (const _ of generateTokens(model, prompt, { maxTokens: steps + 1, sampling: samplingParams(), kvBits })) {
    if (n === 0) first = performance.now();
    n++;
  }
  return (steps / (performance.now() - first)) * 1000;
}

/** Peak MLX memory of one prefill chunk of `tokens` (scores of every layer materialized unless bounded). */
function prefillPeak(model: LanguageModel, tokens: number[], kvBits: KvBits, boundBytes: number | null): number {
  mx.memory.clearCache();
  mx.memory.resetPeak();
  const base = mx.memory.active();
  const cache = cacheFor(model, 1, kvBits);
  if (boundBytes !== null) cache.scoreBound = { ...cache.scoreBound, bytes: boundBytes };
  mx.tidy(() => {
    model.forward(mx.int32(tokens, [1, tokens.length]), cache, { logits: "none" });
    mx.evaluate(...cache.arrays());
  });
  const peak = mx.memory.peak() - base;
  cache.dispose();
  return peak;
}

const report: Record<string, unknown>[] = [];
const md: string[] = [];
for (const m of modelCases()) {
  const { model } = loadModel(m.path);
  const tokenizer = loadTokenizer(m.tokenizerPath);
  const text = tokenizer.encode(TEXT, { addSpecialTokens: true });
  const prompts = PROMPTS.map((p) => tokenizer.encode(p, { addSpecialTokens: true }));
  console.log(`${m.name}: text ${text.length} tokens; prompts ${prompts.map((p) => p.length).join(", ")} tokens`);

  const ppl = Object.fromEntries(BITS.map((b) => [b, perplexity(model, text, b)]));
  for (const b of BITS) console.log(`  kv ${b}: perplexity ${ppl[b]?.ppl.toFixed(4)}`);

  const runs = Object.fromEntries(BITS.map((b) => [b, prompts.map((p) => greedy(model, p, b))]));
  const agreement = Object.fromEntries(
    ([8, 4] as const).map((b) => [
      b,
      prompts.map((_, i) => commonPrefix(runs[0]?.[i]?.tokens ?? [], runs[b]?.[i]?.tokens ?? [])),
    ]),
  );
  for (const b of [8, 4]) console.log(`  kv ${b}: greedy common prefix ${agreement[b]?.join(", ")} of ${GEN}`);

  const long = prompts[9] as number[];
  const speed = Object.fromEntries(BITS.map((b) => [b, decodeSpeed(model, long.slice(0, 1024), b)]));
  for (const b of BITS) console.log(`  kv ${b}: decode ${speed[b]?.toFixed(1)} tok/s at ~1K context`);

  let memory: {
    tokens: number;
    float: number;
    kv8Bounded: number;
    kv8Bounded32MiB: number;
    kv8Unbounded: number;
  } | null = null;
  if (!args["skip-memory"]) {
    const n = Math.min(text.length, 4096);
    memory = {
      tokens: n,
      float: prefillPeak(model, text.slice(0, n), 0, null),
      kv8Bounded: prefillPeak(model, text.slice(0, n), 8, null),
      kv8Bounded32MiB: prefillPeak(model, text.slice(0, n), 8, 32 * 1024 ** 2),
      kv8Unbounded: prefillPeak(model, text.slice(0, n), 8, Number.POSITIVE_INFINITY),
    };
    console.log(
      `  peak MiB of one ${n}-token prefill:`,
      Object.fromEntries(Object.entries(memory).map(([k, v]) => [k, k === "tokens" ? v : (v / 2 ** 20).toFixed(0)])),
    );
  }

  report.push({
    model: m.name,
    path: m.path,
    textTokens: text.length,
    perplexity: ppl,
    agreement,
    decodeTokPerS: speed,
    memory,
    promptTokens: prompts.map((p) => p.length),
  });
  md.push(
    `### ${m.name} (text ${text.length} tokens, chunk ${CHUNK})`,
    "",
    "| KV | perplexity | Δ vs float | greedy common prefix (10 prompts, of " + GEN + ") | mean | decode tok/s @1K |",
    "| --- | --- | --- | --- | --- | --- |",
    ...BITS.map((b) => {
      const p = ppl[b]?.ppl as number;
      const base = ppl[0]?.ppl as number;
      const agree = b === 0 ? null : (agreement[b] as number[]);
      const mean = agree ? (agree.reduce((s, x) => s + x, 0) / agree.length).toFixed(1) : "—";
      return `| ${b === 0 ? "float" : `${b}-bit`} | ${p.toFixed(4)} | ${b === 0 ? "—" : `${(((p - base) / base) * 100).toFixed(2)} %`} | ${agree ? agree.join(", ") : "—"} | ${mean} | ${speed[b]?.toFixed(1)} |`;
    }),
    "",
  );
  if (memory) {
    md.push(
      `Peak MLX memory of one ${memory.tokens}-token prefill (no logits): float ${(memory.float / 2 ** 20).toFixed(0)} MiB; 8-bit with the 256 MiB score bound ${(memory.kv8Bounded / 2 ** 20).toFixed(0)} MiB, with a 32 MiB bound ${(memory.kv8Bounded32MiB / 2 ** 20).toFixed(0)} MiB, unbounded ${(memory.kv8Unbounded / 2 ** 20).toFixed(0)} MiB.`,
      "",
    );
  }
  model.dispose();
}

const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
const device = mx.getDevice();
const out = join(REPO_ROOT, "bench", "results", `kv-quality-${device}-${stamp}`);
mkdirSync(join(REPO_ROOT, "bench", "results"), { recursive: true });
const machine = `${cpus()[0]?.model ?? "?"} × ${cpus().length}, ${process.platform}/${process.arch}`;
const command = `bun bench/kv-quality.ts ${process.argv.slice(2).join(" ")}`.trim();
writeFileSync(
  `${out}.json`,
  `${JSON.stringify({ command, device, mlx: mx.mlxVersion(), machine, gen: GEN, chunk: CHUNK, report }, null, 2)}\n`,
);
writeFileSync(
  `${out}.md`,
  [
    `# KV cache quantization: quality and cost (${device})`,
    "",
    `\`${command}\` — MLX ${mx.mlxVersion()}, ${machine}. Shared, noisy machine: speeds are indicative.`,
    "",
    ...md,
  ].join("\n"),
);
console.log(`written ${out}.{json,md}`);
