// How far a speculative verify pass's scores drift from the one-token steps it stands for, on real text: the
// number that GPU_TIE_MARGIN (src/engine/speculative-verify.ts) must exceed for greedy speculation to stay plain
// greedy decoding. Greedy decoding of a code-editing prompt (bench/spec-prompts.ts), L tokens at a time: the L
// steps' logits are kept, the cache cut back, the same L inputs run as one verify pass, and each position's logits
// compared (max |difference| over the vocabulary, argmax agreement); the steps' own top-two gaps say how often a
// given margin would send a position to a step. The model loads as the engine loads it (dense copies on a GPU).
//   bun bench/gpu/verify-drift.ts MODEL [--device gpu|cpu] [--L 4] [--tokens 256] [--prompt py-rename]
// On the CPU (--device cpu): SmolLM2 drifts at most 0.005 of a logit (2026-12-07; the prefill tile sums otherwise).
import { cacheFor, prefill } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";
import { encodeChat, Tokenizer } from "../../src/text";
import { SPEC_PROMPTS } from "../spec-prompts";
import { gpuName } from "./timing";

const args = process.argv.slice(2);
const modelPath = args[0];
if (!modelPath) throw new Error("usage: verify-drift.ts MODEL [--device gpu|cpu] [--L 4] [--tokens 256]");
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const device = option("--device") === "cpu" ? "cpu" : "gpu";
const L = Number(option("--L") ?? 4);
const total = Number(option("--tokens") ?? 256);
const promptName = option("--prompt") ?? "py-rename";
mx.setDevice(device);

const tokenizer = modelPath.endsWith(".gguf") ? Tokenizer.fromGguf(modelPath) : Tokenizer.fromHfFolder(modelPath);
const spec = SPEC_PROMPTS.find((p) => p.name === promptName);
if (!spec) throw new Error(`no prompt "${promptName}" in bench/spec-prompts.ts`);
const prompt = encodeChat(tokenizer, [{ role: "user", content: spec.user }], { addGenerationPrompt: true });
const { model } = loadModel(modelPath, { denseCopies: device === "gpu" });
const cache = cacheFor(model);

/** float32 [V] logits of each input, one-token steps. */
function steps(inputs: number[]): Float32Array[] {
  return inputs.map((t) =>
    mx.tidy(() => {
      const logits = model.forward(mx.int32([t], [1, 1]), cache, { logits: "last" });
      return mx.astype(mx.reshape(logits, [-1]), mx.Dtype.float32).read() as Float32Array;
    }),
  );
}

/** float32 [V] logits of each input, one verify pass. */
function pass(inputs: number[]): Float32Array[] {
  return mx.tidy(() => {
    const logits = model.forward(mx.int32(inputs, [1, inputs.length]), cache, { logits: "all" });
    const all = mx.astype(mx.reshape(logits, [inputs.length, -1]), mx.Dtype.float32).read() as Float32Array;
    const V = all.length / inputs.length;
    return inputs.map((_, i) => all.slice(i * V, (i + 1) * V));
  });
}

const argmax = (a: Float32Array) => a.reduce((best, x, i) => (x > (a[best] as number) ? i : best), 0);
function gap(a: Float32Array): number {
  const best = argmax(a);
  let second = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < a.length; i++) if (i !== best && (a[i] as number) > second) second = a[i] as number;
  return (a[best] as number) - second;
}

const drifts: number[] = [];
const gaps: number[] = [];
let disagreements = 0;
try {
  let next = mx.tidy(() => mx.argmax(prefill(model, cache, prompt), -1).item() as number);
  const eos = new Set(tokenizer.eosIds);
  for (let done = 0; done < total && !eos.has(next); done += L) {
    const start = cache.offset;
    cache.growFor(L); // as verifyDraft does: the pass writes into room made before it
    // L greedy steps from `next`: their inputs and logits.
    const inputs: number[] = [];
    const stepLogits: Float32Array[] = [];
    let t = next;
    for (let i = 0; i < L; i++) {
      inputs.push(t);
      const [logits] = steps([t]) as [Float32Array];
      stepLogits.push(logits);
      t = argmax(logits);
    }
    cache.truncate(start);
    const passLogits = pass(inputs);
    for (let i = 0; i < L; i++) {
      const a = stepLogits[i] as Float32Array;
      const b = passLogits[i] as Float32Array;
      let worst = 0;
      for (let v = 0; v < a.length; v++) worst = Math.max(worst, Math.abs((a[v] as number) - (b[v] as number)));
      drifts.push(worst);
      gaps.push(gap(a));
      if (argmax(a) !== argmax(b)) disagreements++;
    }
    next = t; // the cache holds the L inputs (the pass wrote them as the steps did)
  }
} finally {
  cache.dispose();
  model.dispose();
}

const sorted = [...drifts].sort((a, b) => a - b);
const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
const under = (m: number) => gaps.filter((g) => g < m).length / Math.max(1, gaps.length);
console.log(`# Verify-pass drift, ${new Date().toISOString()}`);
console.log(
  `Device ${device}${device === "gpu" ? ` (${gpuName()})` : ""}. Model ${modelPath}. Prompt ${promptName}, passes of ${L}.`,
);
console.log(`Positions compared: ${drifts.length}; argmax disagreements: ${disagreements}.`);
console.log(
  `Max |step - pass| logit per position: median ${pct(0.5).toFixed(4)}, p99 ${pct(0.99).toFixed(4)}, max ${pct(1).toFixed(4)}.`,
);
console.log("| margin | share of positions whose top two lie within it (would take a tie step) |");
console.log("|---:|---:|");
for (const m of [0.01, 0.05, 0.1, 0.25, 0.5]) console.log(`| ${m} | ${(100 * under(m)).toFixed(1)}% |`);
