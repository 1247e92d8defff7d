// One "engine start" for test/gpu/kernel-cache.test.ts: loads a model on the GPU,
// prefills a prompt and takes greedy decode steps on the fused CUDA path, writes
// every step's logits (float32 bytes) to <out>, and prints the kernel cache's
// counters as JSON on its last stdout line. PENSIEVE_KERNEL_CACHE / PENSIEVE_HOME
// come from the environment.
//   bun test/gpu/kernel-cache-run.ts <model dir> <out.bin>
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { KVCache } from "../../src/engine/kv-cache";
import { cacheShape } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { kernelCacheMode, processKernelCache } from "../../src/mlx/kernel-cache";
import { processMlxPtxCache, useHomePtxCacheDir } from "../../src/mlx/kernel-cache-mlx";
import { loadModel } from "../../src/models/loader";
import { pensieveHome } from "../../src/paths";

const [dir, out] = process.argv.slice(2);
if (!dir || !out) throw new Error("usage: kernel-cache-run.ts <model dir> <out.bin>");
// PENSIEVE_KERNEL_CACHE=mlx: as the engine's main does, before MLX's first JIT.
if (kernelCacheMode() === "mlx") useHomePtxCacheDir();
mx.setDevice("gpu");
const { model } = loadModel(dir);
const cache = new KVCache(cacheShape(model), 1);
const chunks: Buffer[] = [];
const t0 = performance.now();
let firstStepMs = 0;
const prompt = [1, 5, 9, 14, 22, 31, 40, 47, 51, 60, 64, 70];
mx.evaluate(model.forward(mx.int32(prompt, [1, prompt.length]), cache, { logits: "last" }));
let token = 3;
for (let step = 0; step < 8; step++) {
  const s = performance.now();
  const logits = mx.keep(
    mx.astype(model.forward(mx.int32([token], [1, 1]), cache, { logits: "last" }), mx.Dtype.float32),
  );
  mx.evaluate(logits);
  if (step === 0) firstStepMs = performance.now() - s;
  const values = logits.read() as Float32Array;
  chunks.push(Buffer.from(values.buffer, values.byteOffset, values.byteLength));
  let best = 0;
  for (let i = 1; i < values.length; i++) if ((values[i] as number) > (values[best] as number)) best = i;
  token = best;
  logits.dispose();
}
cache.dispose();
writeFileSync(out, Buffer.concat(chunks));
const mode = process.env.PENSIEVE_KERNEL_CACHE;
const kc =
  mode === "1"
    ? processKernelCache(join(pensieveHome(), "kernel-cache"))
    : mode === "mlx"
      ? processMlxPtxCache(mx.mlxVersion())
      : null;
console.log(JSON.stringify({ ms: performance.now() - t0, firstStepMs, stats: kc?.stats ?? null }));
