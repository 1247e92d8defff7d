// The cost of a speculative verify pass against a one-token decode step
// (issue 13): after a prompt of P tokens, one row runs [last, draft x k]
// through the model with logits at every position (argmax per position, as
// greedy verification does) and the cache is cut back, against a one-token
// step (logits at the last position, argmax). Alternating, median of N each.
// Random weights give no real acceptance, so the output is the cost ratio per
// k and the speedup it implies at per-token acceptance rates a of 50/70/90%:
// a pass of k drafts yields (1 - a^(k+1)) / (1 - a) tokens on average
// (drafts accepted independently with probability a), so
//   speedup(k, a) = tokens per pass / (cost of the pass / cost of a step)
// (the draft's own cost is left out: prompt lookup drafts for free).
//
//   bun run bench spec-verify-cost [--model smollm2-135m] [--device cpu|gpu] [--prompt 512] [--ks 2,4,8,16] [--n 20]
//                                  [--dense false] [--out-dir DIR]
//
// On the H100: bun dist/bench/run.js spec-verify-cost --model <full-size random Phi-3> --device gpu
import { mkdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { KVCache } from "../src/engine/kv-cache";
import { cacheShape } from "../src/engine/one-sequence";
import { resolveLocalModel } from "../src/hub/resolve";
import * as mx from "../src/mlx";
import { loadModel } from "../src/models/loader";
import type { LanguageModel } from "../src/models/types";
import { BENCH_DIR, knobs, machine } from "./peers";

function option(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
}

/** Milliseconds for one forward pass of `tokens` after the cache's contents, argmax read back; the cache is cut back. */
function timedPass(model: LanguageModel, cache: KVCache, tokens: number[]): number {
  const start = cache.offset;
  const t0 = performance.now();
  mx.tidy(() => {
    const logits = model.forward(mx.int32(tokens, [1, tokens.length]), cache, {
      logits: tokens.length === 1 ? "last" : "all",
    });
    mx.astype(mx.argmax(logits, -1), mx.Dtype.int32).read();
  });
  const ms = performance.now() - t0;
  cache.truncate(start);
  return ms;
}

/** Tokens a pass of k drafts yields when each is accepted with probability a (until the first rejection), plus the model's own. */
export function tokensPerPass(k: number, a: number): number {
  return a >= 1 ? k + 1 : (1 - a ** (k + 1)) / (1 - a);
}

export async function benchSpecVerifyCost(argv: string[]): Promise<void> {
  const device = option(argv, "device") === "gpu" ? "gpu" : "cpu";
  mx.setDevice(device);
  const modelName = option(argv, "model") ?? "smollm2-135m";
  const promptTokens = Number(option(argv, "prompt") ?? 512);
  const ks = (option(argv, "ks") ?? "2,4,8,16").split(",").map(Number);
  const n = Number(option(argv, "n") ?? 20);
  const modelPath = resolveLocalModel(modelName);
  // As the engine loads it: on a GPU, dequantized copies for products of several rows (--dense false: none).
  const denseCopies = device === "gpu" && option(argv, "dense") !== "false";
  const { model } = loadModel(modelPath, { denseCopies });
  const vocab = model.config.vocabSize;
  // Token ids from a fixed generator, below 32000 (no special tokens, no padding rows).
  let seed = 12345;
  const next = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % Math.min(vocab, 32000);
  };
  const prompt = Array.from({ length: promptTokens }, next);
  const cache = new KVCache(cacheShape(model, 0));
  mx.tidy(() => {
    for (let s = 0; s < prompt.length; s += 512) {
      const part = prompt.slice(s, s + 512);
      model.forward(mx.int32(part, [1, part.length]), cache, { logits: "none" });
      mx.evaluate(...cache.arrays());
    }
  });
  const passes = ks.map((k) => Array.from({ length: k + 1 }, next));
  // Warm-up: every shape once (kernels, graphs, buffers).
  for (let w = 0; w < 3; w++) {
    timedPass(model, cache, [next()]);
    for (const p of passes) timedPass(model, cache, p);
  }
  const step: number[] = [];
  const verify = ks.map(() => [] as number[]);
  for (let i = 0; i < n; i++) {
    step.push(timedPass(model, cache, [next()]));
    for (const [j, p] of passes.entries()) verify[j]?.push(timedPass(model, cache, p));
  }
  const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] as number;
  const stepMs = median(step);
  const rates = [0.5, 0.7, 0.9];
  const rows = ks.map((k, j) => {
    const ms = median(verify[j] as number[]);
    const ratio = ms / stepMs;
    return {
      k,
      tokens: k + 1,
      verifyMs: ms,
      ratio,
      impliedSpeedup: Object.fromEntries(rates.map((a) => [`${a * 100}%`, tokensPerPass(k, a) / ratio])),
    };
  });
  const report = {
    benchmark: "speculative verify pass vs one-token step",
    date: new Date().toISOString(),
    command: `bun run bench spec-verify-cost ${argv.join(" ")}`.trim(),
    machine: machine(),
    loadAverage: loadavg(),
    device,
    // Which CPU attention path ran (ffi/cpu_attention.cpp; PENSIEVE_CPU_ATTENTION=per-row forces the old one).
    cpuAttention: device === "cpu" ? (process.env.PENSIEVE_CPU_ATTENTION ?? "tiled") : null,
    denseCopies,
    model: modelPath,
    promptTokens,
    samples: n,
    stepMs,
    rows,
  };
  mx.memory.clearCache();
  cache.dispose();
  model.dispose();
  const f = (x: number, d = 2) => x.toFixed(d);
  const lines = [
    `# Verify pass vs one-token step, ${device}, ${report.date.slice(0, 10)}`,
    "",
    `Model ${modelPath}${denseCopies ? " (with dense copies, as the engine on a GPU)" : ""}, after a ${promptTokens}-token prompt; median of ${n} alternating samples. One-token step: ${f(stepMs)} ms.`,
    `Load average ${report.loadAverage.map((x) => x.toFixed(1)).join(", ")}.${report.cpuAttention ? ` CPU attention: ${report.cpuAttention}.` : ""} Command: \`${report.command}\`${knobs().length ? ` with ${knobs().join(" ")}` : ""}.`,
    "Implied speedup = tokens per pass at acceptance a, (1 - a^(k+1)) / (1 - a), over the cost ratio (draft cost left out).",
    "",
    "| k drafts | tokens in pass | verify ms | cost / step | speedup at 50% | at 70% | at 90% |",
    "|---:|---:|---:|---:|---:|---:|---:|",
    ...rows.map(
      (r) =>
        `| ${r.k} | ${r.tokens} | ${f(r.verifyMs)} | ${f(r.ratio)}x | ${f(r.impliedSpeedup["50%"] as number)}x | ${f(r.impliedSpeedup["70%"] as number)}x | ${f(r.impliedSpeedup["90%"] as number)}x |`,
    ),
    "",
  ];
  const outDir = option(argv, "out-dir") ?? join(BENCH_DIR, "results");
  mkdirSync(outDir, { recursive: true });
  const base = join(outDir, `spec-verify-cost-${device}-${report.date.replace(/[:.]/g, "-").slice(0, 19)}`);
  writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(`${base}.md`, lines.join("\n"));
  console.log(lines.join("\n"));
  console.log(`results: ${base}.json`);
}
