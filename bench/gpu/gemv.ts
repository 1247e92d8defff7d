// Micro-benchmark: Pensieve's 4-bit GEMV (src/mlx/kernels-gemv.ts) against MLX's
// own quantized_matmul on Phi-3-mini's decode shapes, side by side, same inputs.
//   bun bench/gpu/gemv.ts [--out DIR] [--rows 1,2,4,8] [--ncu]
//
// Each measurement evaluates one graph of ~200 products over enough distinct
// weight copies (>= 256 MB) that the 50 MB L2 cannot hold them, and divides the
// wall time of the evaluation by the count: the per-product time a decode step
// sees, launch gaps and MLX's encoding included. GB/s counts the bytes the
// product must read (4-bit weights, fp16 scales and biases, x) and write (y).
// Implementations alternate within each repeat; the median of 7 repeats is kept.
// --ncu: a short run for Nsight Compute (device time per kernel, caches flushed).
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import { type GemvConfig, gemvConfig, quantizedGemv, quantizedGemvRmsNorm } from "../../src/mlx/kernels-gemv";
import { gpuName, median, timeProducts } from "./timing";

const args = process.argv.slice(2);
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const outDir = flag("--out");
const rowCounts = (flag("--rows") ?? "1,4").split(",").map(Number);
const ncu = args.includes("--ncu");

const SHAPES: Array<{ name: string; n: number; k: number }> = [
  { name: "qkv", n: 9216, k: 3072 },
  { name: "o", n: 3072, k: 3072 },
  { name: "gate|up", n: 16384, k: 3072 },
  { name: "down", n: 3072, k: 8192 },
  { name: "lm_head", n: 32064, k: 3072 },
];
const GROUP = 64;
const H100_PEAK_GBPS = 3350; // datasheet (HBM3, SXM); the copy ceiling is measured below

function bytesOf(n: number, k: number, m: number): number {
  return (n * k) / 2 + 2 * n * (k / GROUP) * 2 + m * k * 2 + m * n * 2;
}

/** A device-to-device copy of 1 GiB: the bandwidth ceiling MLX can reach (read + write). */
function copyCeilingGBps(): number {
  return mx.tidy(() => {
    const a = mx.keep(mx.randomUniform([256 * 1024 * 1024], mx.Dtype.float32, mx.randomKey(3)));
    mx.evaluate(a);
    const times: number[] = [];
    for (let r = 0; r < 6; r++) {
      const y = mx.add(a, 1);
      const t0 = performance.now();
      mx.evaluate(y);
      if (r > 0) times.push((performance.now() - t0) / 1000); // the first allocates; later ones reuse MLX's cache
      y.dispose();
    }
    const bytes = 2 * a.nbytes;
    a.dispose();
    return bytes / median(times) / 1e9;
  });
}

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
  bytes: number;
  pensieveUs: number;
  mlxUs: number;
  pensieveGBps: number;
  mlxGBps: number;
  speedup: number;
  /** The same product through a dequantized float16 copy (rows >= 2). */
  denseUs: number | null;
  /** RMSNorm then the product: MLX's two ops, rms_norm + the GEMV, and the fused kernel (1 row). */
  norm: { mlxUs: number; splitUs: number; fusedUs: number } | null;
  config: GemvConfig;
  sweep: Array<{ rows: number; warps: number; us: number }>;
}

const results: Row[] = [];
const ceiling = ncu ? 0 : copyCeilingGBps();
for (const s of SHAPES) {
  const setBytes = bytesOf(s.n, s.k, 1);
  const sets = ncu ? 2 : Math.min(64, Math.max(2, Math.ceil(256e6 / setBytes)));
  const weights = mx.tidy(() => {
    const ws: mx.QuantizedWeight[] = [];
    for (let i = 0; i < sets; i++) {
      const w = mx.randomNormal([s.n, s.k], mx.Dtype.float16, 0, 0.02, mx.randomKey(1000 * s.n + i));
      const q = mx.quantize(w, GROUP, 4);
      for (const a of [q.weight, q.scales, q.biases as mx.MxArray]) mx.keep(a);
      mx.evaluate(q.weight, q.scales, q.biases as mx.MxArray);
      ws.push(q);
    }
    return ws;
  });
  for (const m of rowCounts) {
    const x = mx.keep(mx.randomNormal([m, s.k], mx.Dtype.float16, 0, 1, mx.randomKey(m)));
    mx.evaluate(x);
    const config = gemvConfig(s.n, m);
    const count = ncu ? 3 : sets * Math.ceil(192 / sets);
    const ours = (c: GemvConfig) => (i: number) => quantizedGemv(x, weights[i % sets] as mx.QuantizedWeight, c);
    const theirs = (i: number) => mx.quantizedMatmul(x, weights[i % sets] as mx.QuantizedWeight);
    // Warm-up: compiles the kernel (NVRTC) and MLX's plans.
    timeProducts(ours(config), sets);
    timeProducts(theirs, sets);
    const a: number[] = [];
    const b: number[] = [];
    for (let r = 0; r < (ncu ? 1 : 7); r++) {
      a.push(timeProducts(ours(config), count));
      b.push(timeProducts(theirs, count));
    }
    // Several rows of x: also the dequantized float16 copy (what batched decode uses today, weights.ts).
    let denseUs: number | null = null;
    if (!ncu && m >= 2) {
      const denseSets = Math.min(sets, Math.max(2, Math.ceil(256e6 / (s.n * s.k * 2))));
      const dense = mx.tidy(() =>
        weights.slice(0, denseSets).map((q) => {
          const d = mx.keep(mx.dequantize(q, mx.Dtype.float16));
          mx.evaluate(d);
          return d;
        }),
      );
      const run = (i: number) => mx.matmul(x, mx.transpose(dense[i % denseSets] as mx.MxArray, [1, 0]));
      const n = denseSets * Math.ceil(96 / denseSets);
      timeProducts(run, denseSets);
      denseUs = 1e6 * median([0, 1, 2, 3, 4].map(() => timeProducts(run, n)));
      for (const d of dense) d.dispose();
    }
    // The products that follow an RMSNorm in a decoder layer: the norm fused into the GEMV,
    // against rms_norm then either product (two launches).
    let norm: Row["norm"] = null;
    if (!ncu && m === 1 && s.name !== "o" && s.name !== "down") {
      const g = mx.keep(mx.add(mx.randomUniform([s.k], mx.Dtype.float16, mx.randomKey(5)), 0.5));
      const w = (i: number) => weights[i % sets] as mx.QuantizedWeight;
      const variants = {
        mlx: (i: number) => mx.quantizedMatmul(mx.rmsNorm(x, g, 1e-5), w(i)),
        split: (i: number) => quantizedGemv(mx.rmsNorm(x, g, 1e-5), w(i)),
        fused: (i: number) => quantizedGemvRmsNorm(x, g, 1e-5, w(i)),
      };
      for (const f of Object.values(variants)) timeProducts(f, sets);
      const t = { mlx: [] as number[], split: [] as number[], fused: [] as number[] };
      for (let r = 0; r < 5; r++)
        for (const [k, f] of Object.entries(variants)) t[k as keyof typeof t].push(timeProducts(f, count));
      norm = { mlxUs: 1e6 * median(t.mlx), splitUs: 1e6 * median(t.split), fusedUs: 1e6 * median(t.fused) };
      g.dispose();
    }
    const sweep: Row["sweep"] = [];
    if (!ncu && m === 1) {
      for (const rows of [1, 2, 4]) {
        if (s.n % rows) continue;
        for (const warps of [4, 8]) {
          const c = { rows, warps };
          timeProducts(ours(c), sets);
          sweep.push({ rows, warps, us: 1e6 * median([0, 1, 2].map(() => timeProducts(ours(c), count))) });
        }
      }
    }
    const bytes = bytesOf(s.n, s.k, m);
    const pt = median(a);
    const mt = median(b);
    results.push({
      shape: s.name,
      n: s.n,
      k: s.k,
      m,
      bytes,
      pensieveUs: pt * 1e6,
      mlxUs: mt * 1e6,
      pensieveGBps: bytes / pt / 1e9,
      mlxGBps: bytes / mt / 1e9,
      speedup: mt / pt,
      denseUs,
      norm,
      config,
      sweep,
    });
    x.dispose();
  }
  for (const q of weights) for (const a of [q.weight, q.scales, q.biases as mx.MxArray]) a.dispose();
  mx.memory.clearCache();
}

const gpu = gpuName();
const lines = [
  `# 4-bit GEMV (W4A16, group ${GROUP}) vs MLX quantized_matmul, ${new Date().toISOString()}`,
  "",
  `GPU: ${gpu}. MLX ${mx.mlxVersion()}. Copy ceiling through MLX (1 GiB add, read + write): ${ceiling.toFixed(0)} GB/s; datasheet ${H100_PEAK_GBPS} GB/s.`,
  "Per product: wall time of one evaluated graph of ~200 products over >= 256 MB of distinct weights, divided by the count (median of 7).",
  "",
  "| shape | N x K | rows | MB read | Pensieve us | MLX us | Pensieve GB/s | MLX GB/s | Pensieve / datasheet | speed-up | fp16 copy us | rows/warp, warps |",
  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  ...results.map(
    (r) =>
      `| ${r.shape} | ${r.n} x ${r.k} | ${r.m} | ${(r.bytes / 1e6).toFixed(2)} | ${r.pensieveUs.toFixed(2)} | ${r.mlxUs.toFixed(2)} | ${r.pensieveGBps.toFixed(0)} | ${r.mlxGBps.toFixed(0)} | ${((100 * r.pensieveGBps) / H100_PEAK_GBPS).toFixed(0)}% | ${r.speedup.toFixed(2)}x | ${r.denseUs?.toFixed(2) ?? "-"} | ${r.config.rows}, ${r.config.warps} |`,
  ),
  "",
  "RMSNorm then the product, 1 row of x (us per pair, median of 5): MLX rms_norm + quantized_matmul | rms_norm + GEMV | fused",
  ...results
    .filter((r) => r.norm)
    .map(
      (r) =>
        `- ${r.shape}: ${r.norm?.mlxUs.toFixed(2)} | ${r.norm?.splitUs.toFixed(2)} | ${r.norm?.fusedUs.toFixed(2)}`,
    ),
  "",
  "Sweep (1 row of x; us per product, median of 3): rows/warp x warps/block",
  ...results
    .filter((r) => r.sweep.length)
    .map((r) => `- ${r.shape}: ${r.sweep.map((s) => `${s.rows}x${s.warps}=${s.us.toFixed(2)}`).join(" ")}`),
];
console.log(lines.join("\n"));
if (outDir) {
  mkdirSync(outDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const meta = { gpu, mlx: mx.mlxVersion(), date: new Date().toISOString(), copyCeilingGBps: ceiling, ncu };
  writeFileSync(join(outDir, `gemv-${stamp}.json`), JSON.stringify({ ...meta, results }, null, 2));
  writeFileSync(join(outDir, `gemv-${stamp}.md`), `${lines.join("\n")}\n`);
}
