// Prefill and decode of one sequence with Pensieve's engine, timed by wall
// clock and by the process's CPU time (user + system). On a machine shared with
// other work, CPU time per token is the steadier figure for comparing kernel
// variants (A/B with environment variables); wall time is what users see.
//   bun bench/engines/pensieve-cpu-time.ts MODEL [--prompt 64] [--gen 16]
import { generateTokens } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] ?? fallback) : fallback;
};
const modelPath = args[0];
if (!modelPath) throw new Error("usage: MODEL [--prompt 64] [--gen 16]");
mx.setDevice("cpu");
const promptLength = Number(flag("prompt", "64"));
const gen = Number(flag("gen", "16"));
const { model } = loadModel(modelPath);
const prompt = Array.from({ length: promptLength }, (_, i) => 100 + ((i * 37) % 1000));

function run(tokens: number[], n: number) {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  let t1 = 0;
  let c1 = c0;
  let count = 0;
  for (const _ of generateTokens(model, tokens, { maxTokens: n, sampling: samplingParams() })) {
    if (count === 0) {
      t1 = performance.now();
      c1 = process.cpuUsage();
    }
    count++;
  }
  const t2 = performance.now();
  const c2 = process.cpuUsage();
  const cpu = (a: NodeJS.CpuUsage, b: NodeJS.CpuUsage) => (b.user - a.user + b.system - a.system) / 1000;
  return {
    prefillWallMs: t1 - t0,
    prefillCpuMs: cpu(c0, c1),
    decodeWallMsPerToken: (t2 - t1) / (count - 1),
    decodeCpuMsPerToken: cpu(c1, c2) / (count - 1),
  };
}

run(prompt.slice(0, 8), 4); // warm-up (packs the weights)
const r = run(prompt, gen);
const fmt = (v: number) => v.toFixed(1);
console.log(
  `prefill ${promptLength}: wall ${fmt(r.prefillWallMs)} ms, cpu ${fmt(r.prefillCpuMs)} ms | decode/token: wall ${fmt(r.decodeWallMsPerToken)} ms, cpu ${fmt(r.decodeCpuMsPerToken)} ms | env PACK=${process.env.PENSIEVE_CPU_PACK ?? "1"} THREADS=${process.env.PENSIEVE_THREADS ?? "auto"}`,
);
