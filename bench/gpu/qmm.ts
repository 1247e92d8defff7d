// Micro-benchmark: Pensieve's batched 4-bit matmul (src/mlx/kernels-qmm.ts)
// against MLX's quantized_matmul and the float16 dense matmul (the dequantized
// copies batched decode uses without the kernel), on Phi-3-mini's shapes, for
// 2..64 rows of x, side by side on the same inputs.
//   bun bench/gpu/qmm.ts [--out DIR] [--rows 2,4,8,16,32,64] [--dtype float16|bfloat16] [--no-sweep] [--ncu]
//
// As bench/gpu/gemv.ts: each measurement evaluates one graph of ~100 products
// over enough distinct weight copies (>= 256 MB) that the 50 MB L2 cannot hold
// them, and divides the wall time by the count (launch gaps and MLX's encoding
// included); implementations alternate within each repeat; median of 5.
// GB/s: the 4-bit weights' bytes (with fp16 scales and biases) per second, for
// all three (how fast each serves the same model); the dense column's own
// traffic is 3.6x that. The sweep tries other warps / k-slices per shape.
// --ncu: a short run for Nsight Compute (device time per kernel, caches flushed).
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import { type QmmConfig, qmmConfig, qmmGrid, qmmMaxSlice, quantizedMatmulBatched } from "../../src/mlx/kernels-qmm";
import { gpuName, median, timeProducts } from "./timing";

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const outDir = flag("--out");
const rowCounts = (flag("--rows") ?? "2,4,8,16,32,64").split(",").map(Number);
const ncu = args.includes("--ncu");
const dtypeName = flag("--dtype") ?? "float16";
const DTYPE = dtypeName === "bfloat16" ? mx.Dtype.bfloat16 : mx.Dtype.float16; // x, scales, the dense copy
const sweepOn = !ncu && !args.includes("--no-sweep");

const SHAPES: Array<{ name: string; n: number; k: number; perStep: number }> = [
  { name: "qkv", n: 9216, k: 3072, perStep: 32 },
  { name: "o", n: 3072, k: 3072, perStep: 32 },
  { name: "gate|up", n: 16384, k: 3072, perStep: 32 },
  { name: "down", n: 3072, k: 8192, perStep: 32 },
  { name: "lm_head", n: 32064, k: 3072, perStep: 1 },
];
const GROUP = 64;
const PEAK_GBPS = 3350; // H100 SXM datasheet (HBM3)

/** Bytes of the 4-bit weight with its fp16 scales and biases. */
const weightBytes = (n: number, k: number) => (n * k) / 2 + 2 * n * (k / GROUP) * 2;

if (kernelLanguage() !== "cuda" || !mx.gpuAvailable()) {
  console.log(`skipped: custom CUDA kernels are not available here (kernel language: ${kernelLanguage()})`);
  process.exit(0);
}
mx.setDevice("gpu");

interface Row {
  shape: string;
  n: number;
  k: number;
  m: number;
  weightBytes: number;
  pensieveUs: number;
  mlxUs: number;
  denseUs: number;
  pensieveGBps: number;
  config: QmmConfig;
  sweep: Array<{ warps: number; splits: number; blocks: number; atomics: boolean; us: number }>;
}

/** Other configurations worth a try: the model's choice for 4 and 8 warps, one tile per block, half / twice the k-slices. */
function sweepConfigs(n: number, k: number, m: number): QmmConfig[] {
  const { rowTile } = qmmConfig(n, k, m);
  const kBlocks = Math.ceil(k / 128);
  const out = new Map<string, QmmConfig>();
  const add = (c: QmmConfig) => {
    if (c.splits < 1 || c.splits > kBlocks) return;
    if (Math.ceil(kBlocks / c.splits) * 128 > qmmMaxSlice(rowTile)) return;
    out.set(`${c.warps}/${c.splits}/${c.blocks}/${c.cluster}`, c);
  };
  for (const warps of [4, 8]) {
    const tiles = Math.ceil(n / (warps * 32));
    const g = qmmGrid(n, k, m, rowTile, warps);
    add({ rowTile, warps, ...g });
    if (g.splits > 1) add({ rowTile, warps, ...g, cluster: false }); // float atomics + a cast instead
    for (const f of [0.5, 1, 2]) add({ rowTile, warps, splits: Math.round(g.splits * f), blocks: tiles });
  }
  return [...out.values()];
}

const results: Row[] = [];
for (const s of SHAPES) {
  const bytes = weightBytes(s.n, s.k);
  const sets = ncu ? 2 : Math.min(32, Math.max(2, Math.ceil(256e6 / bytes)));
  const denseSets = ncu ? 2 : Math.min(sets, Math.max(2, Math.ceil(256e6 / (s.n * s.k * 2))));
  const weights = mx.tidy(() => {
    const ws: mx.QuantizedWeight[] = [];
    for (let i = 0; i < sets; i++) {
      const w = mx.randomNormal([s.n, s.k], DTYPE, 0, 0.02, mx.randomKey(1000 * s.n + i));
      const q = mx.quantize(w, GROUP, 4);
      for (const a of [q.weight, q.scales, q.biases as mx.MxArray]) mx.keep(a);
      mx.evaluate(q.weight, q.scales, q.biases as mx.MxArray);
      ws.push(q);
    }
    return ws;
  });
  const dense = mx.tidy(() =>
    weights.slice(0, denseSets).map((q) => {
      const d = mx.keep(mx.dequantize(q, DTYPE));
      mx.evaluate(d);
      return d;
    }),
  );
  for (const m of rowCounts) {
    const x = mx.keep(mx.randomNormal([m, s.k], DTYPE, 0, 1, mx.randomKey(m)));
    mx.evaluate(x);
    const config = qmmConfig(s.n, s.k, m);
    const count = ncu ? 3 : sets * Math.ceil(96 / sets);
    const denseCount = ncu ? 3 : denseSets * Math.ceil(96 / denseSets);
    const ours = (c: QmmConfig) => (i: number) => quantizedMatmulBatched(x, weights[i % sets] as mx.QuantizedWeight, c);
    const theirs = (i: number) => mx.quantizedMatmul(x, weights[i % sets] as mx.QuantizedWeight);
    const viaDense = (i: number) => mx.matmul(x, mx.transpose(dense[i % denseSets] as mx.MxArray, [1, 0]));
    // Warm-up: compiles the kernel (NVRTC) and MLX's plans.
    timeProducts(ours(config), sets);
    timeProducts(theirs, sets);
    timeProducts(viaDense, denseSets);
    const a: number[] = [];
    const b: number[] = [];
    const d: number[] = [];
    for (let r = 0; r < (ncu ? 1 : 5); r++) {
      a.push(timeProducts(ours(config), count));
      b.push(timeProducts(theirs, count));
      d.push(timeProducts(viaDense, denseCount));
    }
    const sweep: Row["sweep"] = [];
    if (sweepOn && [8, 32, 64].includes(m)) {
      for (const c of sweepConfigs(s.n, s.k, m)) {
        timeProducts(ours(c), sets);
        sweep.push({
          warps: c.warps,
          splits: c.splits,
          blocks: c.blocks ?? 0,
          atomics: c.cluster === false || c.splits > 8,
          us: 1e6 * median([0, 1, 2].map(() => timeProducts(ours(c), count))),
        });
      }
    }
    const pt = median(a);
    results.push({
      shape: s.name,
      n: s.n,
      k: s.k,
      m,
      weightBytes: bytes,
      pensieveUs: pt * 1e6,
      mlxUs: median(b) * 1e6,
      denseUs: median(d) * 1e6,
      pensieveGBps: bytes / pt / 1e9,
      config,
      sweep,
    });
    console.error(
      `[qmm] ${s.name} m=${m}: ${(pt * 1e6).toFixed(2)} us (MLX ${(median(b) * 1e6).toFixed(2)}, dense ${(median(d) * 1e6).toFixed(2)})`,
    );
    x.dispose();
  }
  for (const q of weights) for (const a of [q.weight, q.scales, q.biases as mx.MxArray]) a.dispose();
  for (const a of dense) a.dispose();
  mx.memory.clearCache();
}

// The matrix products of one Phi-3-mini decode step (32 layers + lm_head) per row count.
const perStep = rowCounts.map((m) => {
  const sum = (f: (r: Row) => number) =>
    SHAPES.reduce((t, s) => {
      const r = results.find((x) => x.shape === s.name && x.m === m);
      return t + (r ? f(r) * s.perStep : 0);
    }, 0);
  return { m, pensieveUs: sum((r) => r.pensieveUs), mlxUs: sum((r) => r.mlxUs), denseUs: sum((r) => r.denseUs) };
});

const gpu = gpuName();
const lines = [
  `# Batched 4-bit matmul (W4A16, group ${GROUP}, ${dtypeName}, tensor cores) vs MLX quantized_matmul vs ${dtypeName} dense, ${new Date().toISOString()}`,
  "",
  `GPU: ${gpu}. MLX ${mx.mlxVersion()}. Datasheet ${PEAK_GBPS} GB/s (H100 SXM).`,
  "Per product: wall time of one evaluated graph of ~100 products over >= 256 MB of distinct weights, divided by the count (median of 5). GB/s: the 4-bit weight's bytes (with scales and biases) per second.",
  "",
  "| shape | N x K | rows | 4-bit MB | Pensieve us | MLX qmm us | fp16 dense us | Pensieve GB/s | of datasheet | vs MLX | vs dense | tile, warps, k-slices, blocks |",
  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  ...results.map(
    (r) =>
      `| ${r.shape} | ${r.n} x ${r.k} | ${r.m} | ${(r.weightBytes / 1e6).toFixed(2)} | ${r.pensieveUs.toFixed(2)} | ${r.mlxUs.toFixed(2)} | ${r.denseUs.toFixed(2)} | ${r.pensieveGBps.toFixed(0)} | ${((100 * r.pensieveGBps) / PEAK_GBPS).toFixed(0)}% | ${(r.mlxUs / r.pensieveUs).toFixed(2)}x | ${(r.denseUs / r.pensieveUs).toFixed(2)}x | ${r.config.rowTile}, ${r.config.warps}, ${r.config.splits}, ${r.config.blocks} |`,
  ),
  "",
  "Matrix products of one Phi-3-mini decode step (32 x (qkv + o + gate|up + down) + lm_head), us:",
  "",
  "| rows | Pensieve | MLX qmm | fp16 dense |",
  "|---:|---:|---:|---:|",
  ...perStep.map((p) => `| ${p.m} | ${p.pensieveUs.toFixed(0)} | ${p.mlxUs.toFixed(0)} | ${p.denseUs.toFixed(0)} |`),
  "",
  "Sweep (us per product, median of 3): warps x k-slices x feature blocks; k-slices summed in a cluster unless (atomics)",
  ...results
    .filter((r) => r.sweep.length)
    .map(
      (r) =>
        `- ${r.shape} rows ${r.m}: ${r.sweep.map((s) => `${s.warps}x${s.splits}x${s.blocks}${s.atomics && s.splits > 1 ? "(atomics)" : ""}=${s.us.toFixed(2)}`).join(" ")}`,
    ),
];
console.log(lines.join("\n"));
if (outDir) {
  mkdirSync(outDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const meta = { gpu, mlx: mx.mlxVersion(), date: new Date().toISOString(), dtype: dtypeName, ncu };
  writeFileSync(join(outDir, `qmm-${dtypeName}-${stamp}.json`), JSON.stringify({ ...meta, results, perStep }, null, 2));
  writeFileSync(join(outDir, `qmm-${dtypeName}-${stamp}.md`), `${lines.join("\n")}\n`);
}
