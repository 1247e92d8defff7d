// MLX's peak memory when a KV cache of Phi-3-mini's real dimensions (32 layers,
// 32 KV heads of 96, fp16: 384 KiB a token) must grow by one KV_STEP for the
// next token: grown inside the forward (every layer's write in one graph, as a
// decode step did before KVCache.growFor) against grown first, one layer at a time.
//   bun bench/kv-growth-peak.ts [--rows 4] [--columns 2048]
import { KVCache } from "../src/engine/kv-cache";
import * as mx from "../src/mlx";

const argv = process.argv.slice(2);
const option = (name: string, fallback: number) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? Number(argv[i + 1]) : fallback;
};
const rows = option("rows", 2);
const columns = option("columns", 2048);
const shape = {
  numLayers: 32,
  numKvHeads: 32,
  headDim: 96,
  dtype: mx.Dtype.float16,
  kvBits: 0 as const,
  kvGroupSize: 0,
};
const MiB = 2 ** 20;

/** One forward's KV writes over every layer for `L` new columns, evaluated together (no attention: only memory matters). */
function write(cache: KVCache, L: number): void {
  mx.tidy(() => {
    cache.begin(L);
    const outs: mx.MxArray[] = [];
    for (let layer = 0; layer < shape.numLayers; layer++) {
      const kv = () => mx.randomNormal([rows, shape.numKvHeads, L, shape.headDim], shape.dtype);
      outs.push(...(cache.storeWhole(layer, kv(), kv()) ?? []));
    }
    mx.evaluate(...outs, ...cache.arrays());
    cache.end();
  });
}

const lines = [
  `# KV growth peak, Phi-3-mini dimensions, ${rows} rows x ${columns} columns (fp16, ${mx.getDevice()})`,
  "",
];
lines.push("| growth | cache before MiB | after MiB | MLX peak above the start MiB |", "|---|---:|---:|---:|");
for (const first of [false, true]) {
  const cache = new KVCache(shape, rows);
  for (let c = 0; c < columns; c += 256) write(cache, 256);
  mx.memory.clearCache();
  const before = cache.nbytes;
  const start = mx.memory.active();
  mx.memory.resetPeak();
  if (first) cache.growFor(1);
  write(cache, 1);
  const peak = mx.memory.peak() - start;
  lines.push(
    `| ${first ? "growFor, one layer at a time" : "inside the forward"} | ${(before / MiB).toFixed(0)} | ${(cache.nbytes / MiB).toFixed(0)} | ${(peak / MiB).toFixed(0)} |`,
  );
  cache.dispose();
  mx.memory.clearCache();
}
console.log(lines.join("\n"));
