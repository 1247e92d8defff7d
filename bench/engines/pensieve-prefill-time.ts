// Prefill of one sequence, repeated (after a warm-up that packs the weights),
// timed by wall clock and process CPU time: for A/B of the CPU prefill kernels.
//   bun bench/engines/pensieve-prefill-time.ts MODEL [--prompt 64] [--repeat 3]
import { cacheFor, prefill } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] ?? fallback) : fallback;
};
const modelPath = args[0];
if (!modelPath) throw new Error("usage: MODEL [--prompt 64] [--repeat 3]");
mx.setDevice("cpu");
const promptLength = Number(flag("prompt", "64"));
const repeat = Number(flag("repeat", "3"));
const { model } = loadModel(modelPath);
const prompt = Array.from({ length: promptLength }, (_, i) => 100 + ((i * 37) % 1000));

function once(tokens: number[]) {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  mx.tidy(() => {
    const cache = cacheFor(model);
    mx.evaluate(prefill(model, cache, tokens));
    cache.dispose?.();
  });
  const c = process.cpuUsage(c0);
  return { wall: performance.now() - t0, cpu: (c.user + c.system) / 1000 };
}

once(prompt.slice(0, 8));
once(prompt);
if (process.env.PV_READY_FILE) await Bun.write(process.env.PV_READY_FILE, "ready");
for (let i = 0; i < repeat; i++) {
  const r = once(prompt);
  console.log(
    `prefill ${promptLength}: wall ${r.wall.toFixed(1)} ms (${((promptLength / r.wall) * 1000).toFixed(1)} tok/s), cpu ${r.cpu.toFixed(1)} ms | THREADS=${process.env.PENSIEVE_THREADS ?? "auto"}`,
  );
}
