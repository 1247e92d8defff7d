// Where a step of several rows goes (issues 11 and 13): host time to build the
// graph against the wall time of the evaluated step, for decode steps of R rows
// and for one row's verify pass of L tokens, plus MLX's matrix product alone at
// M rows (one product per evaluation, and 64 in one graph), which separates
// MLX's per-product host cost (a cuBLASLt descriptor and heuristic query for
// every product of more than one row, mlx/backend/cuda/cublas_utils.cpp) from
// our graph; and a prefill chunk against its dense products alone. Prints a markdown table per part.
//   bun bench/gpu/rows-profile.ts MODEL [--rows 1,2,4,8,16,32] [--verify 3,5,9,17] [--prompt 256] [--n 10] [--chunk 2048] [--dense false]
// PENSIEVE_STEP_DEVICE=cpu runs it on the CPU (to check the script; the numbers mean little there).
import { cacheFor } from "../../src/engine/one-sequence";
import * as mx from "../../src/mlx";
import { loadModel } from "../../src/models/loader";

const argv = process.argv.slice(2);
const modelPath = argv[0];
if (!modelPath)
  throw new Error("usage: rows-profile.ts MODEL [--rows 1,2,4,8,16,32] [--verify 3,5,9,17] [--prompt 256] [--n 10]");
const option = (name: string, fallback: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? (argv[i + 1] ?? fallback) : fallback;
};
const list = (name: string, fallback: string) => option(name, fallback).split(",").filter(Boolean).map(Number);
const rowsList = list("rows", "1,2,4,8,16,32");
const verifyList = list("verify", "3,5,9,17");
const promptTokens = Number(option("prompt", "256"));
const n = Number(option("n", "10"));

mx.setDevice(process.env.PENSIEVE_STEP_DEVICE === "cpu" ? "cpu" : "gpu");
// As the engine loads it: on a GPU, dequantized copies for products of several rows (--dense false: none).
const denseCopies = mx.getDevice() === "gpu" && option("dense", "true") !== "false";
const { model } = loadModel(modelPath, { denseCopies });
const ids = (count: number, seed: number) =>
  Array.from({ length: count }, (_, i) => 100 + ((i * 7919 + seed * 104729) % 20000));

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
}

/** Host ms to build fn's graph, and wall ms until its result is read, medians of n after 2 warm-ups. */
function timed(fn: () => mx.MxArray, after: () => void = () => {}): { host: number; wall: number } {
  const host: number[] = [];
  const wall: number[] = [];
  for (let i = 0; i < n + 2; i++) {
    mx.synchronize();
    const t0 = performance.now();
    const out = fn();
    const t1 = performance.now();
    mx.evaluate(out);
    out.dispose();
    mx.synchronize();
    const t2 = performance.now();
    after();
    if (i >= 2) {
      host.push(t1 - t0);
      wall.push(t2 - t0);
    }
  }
  return { host: median(host), wall: median(wall) };
}

const fmt = (x: number) => x.toFixed(2);
const lines: string[] = [];
lines.push(
  `# rows-profile: ${modelPath} on ${mx.getDevice()}${denseCopies ? " (dense copies, as the engine)" : ""}, prompt ${promptTokens} tokens, median of ${n}`,
  "",
);

lines.push("## Decode steps of R rows", "", "| rows | host ms | wall ms | wall ms per row |", "|---:|---:|---:|---:|");
for (const rows of rowsList) {
  const cache = cacheFor(model, rows);
  mx.evaluate(
    mx.tidy(() =>
      model.forward(
        mx.int32(Array.from({ length: rows }, (_, r) => ids(promptTokens, r)).flat(), [rows, promptTokens]),
        cache,
        { logits: "last" },
      ),
    ),
  );
  const start = cache.offset;
  const input = Array.from({ length: rows }, (_, r) => 200 + r);
  const t = timed(
    () => mx.tidy(() => mx.argmax(model.forward(mx.int32(input, [rows, 1]), cache, { logits: "last" }), -1)),
    () => cache.truncate(start),
  );
  lines.push(`| ${rows} | ${fmt(t.host)} | ${fmt(t.wall)} | ${fmt(t.wall / rows)} |`);
  cache.dispose();
}

lines.push(
  "",
  "## One row's verify pass of L tokens (logits at every position)",
  "",
  "| L | host ms | wall ms | growing cache: host ms | wall ms |",
  "|---:|---:|---:|---:|---:|",
);
{
  const cache = cacheFor(model, 1);
  mx.evaluate(
    mx.tidy(() => model.forward(mx.int32(ids(promptTokens, 7), [1, promptTokens]), cache, { logits: "last" })),
  );
  const start = cache.offset;
  for (const L of [1, ...verifyList]) {
    const t = timed(
      () =>
        mx.tidy(() =>
          mx.argmax(model.forward(mx.int32(ids(L, 9), [1, L]), cache, { logits: L === 1 ? "last" : "all" }), -1),
        ),
      () => cache.truncate(start),
    );
    // As speculation runs it: the cache keeps each pass, so every pass meets a new key length (cuDNN's
    // SDPA graphs are keyed by shapes; a new graph per length would be a fixed per-pass cost).
    const growing = timed(() =>
      mx.tidy(() =>
        mx.argmax(model.forward(mx.int32(ids(L, 9), [1, L]), cache, { logits: L === 1 ? "last" : "all" }), -1),
      ),
    );
    cache.truncate(start);
    lines.push(`| ${L} | ${fmt(t.host)} | ${fmt(t.wall)} | ${fmt(growing.host)} | ${fmt(growing.wall)} |`);
  }
  cache.dispose();
}

// MLX's product alone: x [M, K] @ w [K, N]^T in the model's dtype, the shapes of Phi-3's q|k|v.
const [K, N] = [model.config.hiddenSize, 3 * model.config.hiddenSize];
lines.push(
  "",
  `## MLX's matrix product alone, x [M, ${K}] @ w^T, w [${N}, ${K}] (${mx.Dtype[model.dtype]})`,
  "",
  "| M | one product: wall ms | 64 in one graph: wall ms per product | host ms per product |",
  "|---:|---:|---:|---:|",
);
{
  const w = mx.keep(mx.randomNormal([N, K], model.dtype));
  mx.evaluate(w);
  for (const M of [1, 2, 4, 8, 16, 32]) {
    const x = mx.keep(mx.randomNormal([M, K], model.dtype));
    mx.evaluate(x);
    const one = timed(() => mx.tidy(() => mx.matmul(x, mx.transpose(w, [1, 0]))));
    const many = timed(() =>
      mx.tidy(() => {
        let acc = mx.matmul(x, mx.transpose(w, [1, 0]));
        for (let i = 1; i < 64; i++) acc = mx.add(acc, mx.matmul(x, mx.transpose(w, [1, 0])));
        return acc;
      }),
    );
    lines.push(`| ${M} | ${fmt(one.wall)} | ${fmt(many.wall / 64)} | ${fmt(many.host / 64)} |`);
    x.dispose();
  }
  w.dispose();
}
// A prefill chunk against its products alone: the model's dense products of every layer at M = chunk rows
// (q|k|v, o, gate|up, down), one graph, as a floor for the chunk's time (issue 11: prefill at 0.61x mlx-lm).
const chunk = Number(option("chunk", "2048"));
if (chunk > 0) {
  const c = model.config;
  lines.push(
    "",
    `## A prefill chunk of ${chunk} tokens (after ${chunk} cached) against its products alone`,
    "",
    "| what | host ms | wall ms |",
    "|---|---:|---:|",
  );
  const cache = cacheFor(model, 1);
  mx.evaluate(mx.tidy(() => model.forward(mx.int32(ids(chunk, 3), [1, chunk]), cache, { logits: "last" })));
  const start = cache.offset;
  const forward = timed(
    () => mx.tidy(() => model.forward(mx.int32(ids(chunk, 4), [1, chunk]), cache, { logits: "last" })),
    () => cache.truncate(start),
  );
  lines.push(`| model.forward | ${fmt(forward.host)} | ${fmt(forward.wall)} |`);
  cache.dispose();
  const kv = 2 * c.numKvHeads * c.headDim;
  const shapes: Array<[number, number]> = [
    [c.numHeads * c.headDim + kv, c.hiddenSize],
    [c.hiddenSize, c.numHeads * c.headDim],
    [2 * c.intermediateSize, c.hiddenSize],
    [c.hiddenSize, c.intermediateSize],
  ];
  const weights = shapes.map(([out, inp]) => mx.keep(mx.randomNormal([out, inp], model.dtype)));
  const inputs = shapes.map(([, inp]) => mx.keep(mx.randomNormal([chunk, inp], model.dtype)));
  mx.evaluate(...weights, ...inputs);
  const products = timed(() =>
    mx.tidy(() => {
      let acc: mx.MxArray | null = null;
      for (let layer = 0; layer < c.numLayers; layer++) {
        for (const [i, w] of weights.entries()) {
          const y = mx.sum(mx.matmul(inputs[i] as mx.MxArray, mx.transpose(w, [1, 0])));
          acc = acc ? mx.add(acc, y) : y;
        }
      }
      return acc as mx.MxArray;
    }),
  );
  lines.push(
    `| its dense products alone (${c.numLayers} layers x 4) | ${fmt(products.host)} | ${fmt(products.wall)} |`,
  );
  for (const a of [...weights, ...inputs]) a.dispose();
}
console.log(lines.join("\n"));
model.dispose();
