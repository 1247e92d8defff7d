// Quality and cost of a quantized KV cache (kvBits 8 and 4) against float KV,
// on the CPU backend:
//   - perplexity of a committed public-domain English text, fed through the
//     cache in chunks (later chunks attend to stored, quantized keys);
//   - greedy agreement: 10 prompts × 128 tokens, the common prefix with the
//     float run's tokens;
//   - prefill and decode cost at a 1K-token context (float; 8-bit dequantized
//     or through quantized matmuls; 4-bit) and peak memory of a long prefill
//     forward, with and without the score bound (attention-plan.ts).
// Writes bench/results/kv-quality-<device>-<time>.{json,md}.
//
// Text: test/fixtures/text/perplexity-kv.txt — Genesis 1-4, King James
// Version (public domain), printed by Debian's bible-kjv 4.38 (bible-kjv-text),
// verse numbers removed, one paragraph per chapter.
//
//   bun bench/kv-quality.ts [--models smollm2,tiny-llama] [--gen 128] [--skip-memory]
//     [--text-tokens N (default all)] [--speed-context 1024] [--rounds 2]
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
    "text-tokens": { type: "string", default: "0" },
    "speed-context": { type: "string", default: "1024" },
    rounds: { type: "string", default: "2" },
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
  `${TEXT.slice(0, 4500)}\n\nThe names of the people in this text are`,
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

type Attend = "float" | "8-dequantize" | "8-matmul" | "4-dequantize";
const ATTENDS: Attend[] = ["float", "8-dequantize", "8-matmul", "4-dequantize"];

function attendCache(model: LanguageModel, attend: Attend) {
  const cache = cacheFor(model, 1, attend === "float" ? 0 : attend.startsWith("8") ? 8 : 4);
  if (attend !== "float") cache.quantizedAttention = attend.endsWith("matmul") ? "matmul" : "dequantize";
  return cache;
}

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** Wall and process-CPU ms of a prefill in 256-token chunks, and per decode step after it. */
function speed(model: LanguageModel, prompt: number[], attend: Attend, steps = 16) {
  const cache = attendCache(model, attend);
  let wall = performance.now();
  let cpu = cpuMs();
  for (let s = 0; s < prompt.length; s += 256) {
    const part = prompt.slice(s, s + 256);
    mx.tidy(() => {
      model.forward(mx.int32(part, [1, part.length]), cache, { logits: "none" });
      mx.evaluate(...cache.arrays());
    });
  }
  const prefill = { wallMs: Math.round(performance.now() - wall), cpuMs: Math.round(cpuMs() - cpu) };
  wall = performance.now();
  cpu = cpuMs();
  for (let i = 0; i < steps; i++) {
    mx.tidy(() => {
      const logits = model.forward(mx.int32([prompt[i] as number], [1, 1]), cache, { logits: "last" });
      mx.evaluate(logits, ...cache.arrays());
    });
  }
  const decode = {
    wallMs: +((performance.now() - wall) / steps).toFixed(1),
    cpuMs: +((cpuMs() - cpu) / steps).toFixed(1),
  };
  cache.dispose();
  return { prefill, decode };
}

/** Peak MLX memory of one prefill forward of `tokens` (no logits). */
function prefillPeak(model: LanguageModel, tokens: number[], attend: Attend, boundBytes: number | null): number {
  mx.memory.clearCache();
  mx.memory.resetPeak();
  const base = mx.memory.active();
  const cache = attendCache(model, attend);
  if (boundBytes !== null) cache.scoreBound = { ...cache.scoreBound, bytes: boundBytes };
  mx.tidy(() => {
    model.forward(mx.int32(tokens, [1, tokens.length]), cache, { logits: "none" });
    mx.evaluate(...cache.arrays());
  });
  const peak = mx.memory.peak() - base;
  cache.dispose();
  return peak;
}

const MiB = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;
const report: Record<string, unknown>[] = [];
const md: string[] = [];
for (const m of modelCases()) {
  const { model } = loadModel(m.path);
  const tokenizer = loadTokenizer(m.tokenizerPath);
  const all = tokenizer.encode(TEXT, { addSpecialTokens: true });
  const text = Number(args["text-tokens"]) > 0 ? all.slice(0, Number(args["text-tokens"])) : all;
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

  const long = all.slice(0, Number(args["speed-context"]));
  // Rounds with the ways interleaved (the machine is shared and drifts); the last round is reported.
  let speeds: Record<string, ReturnType<typeof speed>> = {};
  for (let round = 0; round < Number(args.rounds); round++) {
    speeds = Object.fromEntries(ATTENDS.map((a) => [a, speed(model, long, a)]));
  }
  for (const a of ATTENDS) console.log(`  ${a}: ${JSON.stringify(speeds[a])}`);

  let memory: Record<string, number> | null = null;
  if (!args["skip-memory"]) {
    const tokens = text.slice(0, Math.min(text.length, 3072));
    memory = {
      tokens: tokens.length,
      float: prefillPeak(model, tokens, "float", null),
      kv8Dequantize: prefillPeak(model, tokens, "8-dequantize", null),
      kv8MatmulBound256MiB: prefillPeak(model, tokens, "8-matmul", null),
      kv8MatmulBound32MiB: prefillPeak(model, tokens, "8-matmul", 32 * 1024 ** 2),
      kv8MatmulUnbounded: prefillPeak(model, tokens, "8-matmul", Number.POSITIVE_INFINITY),
    };
    console.log(
      "  peak:",
      Object.fromEntries(Object.entries(memory).map(([k, v]) => [k, k === "tokens" ? v : MiB(v)])),
    );
  }

  report.push({
    model: m.name,
    path: m.path,
    textTokens: text.length,
    promptTokens: prompts.map((p) => p.length),
    perplexity: ppl,
    agreement,
    speed: speeds,
    memory,
  });
  const base = ppl[0]?.ppl as number;
  md.push(
    `### ${m.name} (perplexity over ${text.length} of the text's ${all.length} tokens, in chunks of ${CHUNK})`,
    "",
    `| KV | perplexity | Δ vs float | greedy common prefix with float (10 prompts, of ${GEN}) | mean |`,
    "| --- | --- | --- | --- | --- |",
    ...BITS.map((b) => {
      const p = ppl[b]?.ppl as number;
      const agree = b === 0 ? null : (agreement[b] as number[]);
      const mean = agree ? (agree.reduce((s, x) => s + x, 0) / agree.length).toFixed(1) : "—";
      const delta = b === 0 ? "—" : `${(((p - base) / base) * 100).toFixed(2)} %`;
      return `| ${b === 0 ? "float" : `${b}-bit`} | ${p.toFixed(4)} | ${delta} | ${agree ? agree.join(", ") : "—"} | ${mean} |`;
    }),
    "",
    `Speed at a ${long.length}-token context (last of ${args.rounds} interleaved rounds; wall ms / process CPU ms):`,
    "",
    "| KV, attention | prefill (256-token chunks) | decode, per step |",
    "| --- | --- | --- |",
    ...ATTENDS.map((a) => {
      const s = speeds[a] as ReturnType<typeof speed>;
      return `| ${a} | ${s.prefill.wallMs} / ${s.prefill.cpuMs} | ${s.decode.wallMs} / ${s.decode.cpuMs} |`;
    }),
    "",
  );
  if (memory) {
    md.push(
      `Peak MLX memory of one ${memory.tokens}-token prefill forward (no logits): float ${MiB(memory.float ?? 0)}; ` +
        `8-bit dequantized for the fused kernel ${MiB(memory.kv8Dequantize ?? 0)}; 8-bit quantized matmuls with the ` +
        `256 MiB score bound ${MiB(memory.kv8MatmulBound256MiB ?? 0)}, a 32 MiB bound ${MiB(memory.kv8MatmulBound32MiB ?? 0)}, ` +
        `unbounded ${MiB(memory.kv8MatmulUnbounded ?? 0)}.`,
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
    `\`${command}\` — MLX ${mx.mlxVersion()}, ${machine}. Shared 2-core machine under load from other`,
    "sessions: speeds are indicative; process CPU time is the steadier figure.",
    "",
    ...md,
  ].join("\n"),
);
console.log(`written ${out}.{json,md}`);
