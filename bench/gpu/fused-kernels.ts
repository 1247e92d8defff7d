// Micro-benchmark of a decode layer's fused kernels (src/mlx/kernels-gemv-fused.ts) on
// Phi-3-mini's shapes, one row of x, beside the plain GEMV of the same weight, and a
// sweep of launch shapes (rows per warp x warps per block, split-K):
//   bun bench/gpu/fused-kernels.ts [--out DIR] [--quick] [--rows 2,4,9,16,32] [--no-one]
// --rows: also the kernels at several rows of x (verify passes, batches): the scalar body against
// the tensor-core body (kernels-gemv-mma.ts) at its default warps a tile and twice that, and MLX's quantized_matmul.
// --no-one: skip the one-row section.
// --latency: each launch shape 4 times in one graph, once (no median), with a wider sweep, the profiler on for
// those launches only: for Nsight Compute (ncu --profile-from-start off), which runs every kernel alone, so its
// list gives each shape's latency as a decode step's chain of dependent launches sees it (this file's own wall
// times overlap independent launches in MLX's CUDA graph and give throughput instead).
// Why: Nsight Compute put the q|k|v kernel with RMSNorm and RoPE at 27 us against 17.6
// for gate|up with twice its bytes (gpu-h100-2026-12-06e); this says which epilogue or
// launch shape costs what, without the profiler's clocks. Timing as bench/gpu/gemv.ts:
// one evaluated graph of ~200 launches over >= 256 MB of distinct weights, wall / count.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import {
  GEMV_KERNEL,
  type GemvConfig,
  type GemvSpec,
  gemvConfig,
  gemvPlan,
  gemvSource,
  quantizedGemv,
} from "../../src/mlx/kernels-gemv";
import { type FusedRope, fusedPlans, pairedConfig, ropeTable } from "../../src/mlx/kernels-gemv-fused";
import { mmaWarps } from "../../src/mlx/kernels-gemv-mma";
import { gpuName, median, profilerCalls, timeProducts } from "./timing";

const args = process.argv.slice(2);
const outDir = args.includes("--out") ? args[args.indexOf("--out") + 1] : undefined;
const quick = args.includes("--quick");
const latency = args.includes("--latency");
const multiRows = args.includes("--rows") ? (args[args.indexOf("--rows") + 1] as string).split(",").map(Number) : [];
if (kernelLanguage() !== "cuda" || !mx.gpuAvailable()) {
  console.log(`skipped: custom CUDA kernels are not available here (kernel language: ${kernelLanguage()})`);
  process.exit(0);
}
mx.setDevice("gpu");

const GROUP = 64;
const EPS = 1e-5;
const HD = 96;
const HEADS = 32;
const bytesOf = (n: number, k: number) => (n * k) / 2 + 2 * n * (k / GROUP) * 2 + k * 2 + n * 2;

interface Line {
  shape: string;
  kernel: string;
  config: string;
  us: number;
  gbps: number;
}
const lines: Line[] = [];

function weightSets(n: number, k: number): mx.QuantizedWeight[] {
  const sets = Math.min(64, Math.max(2, Math.ceil(256e6 / bytesOf(n, k))));
  return mx.tidy(() =>
    Array.from({ length: sets }, (_, i) => {
      const w = mx.randomNormal([n, k], mx.Dtype.float16, 0, 0.02, mx.randomKey(7 * n + i));
      const q = mx.quantize(w, GROUP, 4);
      for (const a of [q.weight, q.scales, q.biases as mx.MxArray]) mx.keep(a);
      mx.evaluate(q.weight, q.scales, q.biases as mx.MxArray);
      return q;
    }),
  );
}

function measure(
  shape: string,
  kernel: string,
  config: string,
  bytes: number,
  run: (i: number) => mx.MxArray,
  sets: number,
) {
  const count = latency ? 4 : sets * Math.ceil(192 / sets);
  timeProducts(run, latency ? 2 : sets); // compiles (NVRTC) and makes the plan
  // --latency: only the timed launches under the profiler (ncu --profile-from-start off).
  profiler?.start();
  const us = 1e6 * median(Array.from({ length: latency ? 1 : quick ? 3 : 7 }, () => timeProducts(run, count)));
  profiler?.stop();
  const line = { shape, kernel, config, us, gbps: bytes / us / 1e3 };
  lines.push(line);
  console.log(`${shape}\t${kernel}\t${config}\t${us.toFixed(2)} us\t${line.gbps.toFixed(0)} GB/s`);
}

const profiler = latency ? profilerCalls() : null;
const cfgName = (c: GemvConfig) => `${c.rows}x${c.warps}${c.split ? ` split ${c.split} loads ${c.loads}` : ""}`;
const SWEEP: GemvConfig[] = [
  { rows: 2, warps: 4 },
  { rows: 4, warps: 4 },
  { rows: 2, warps: 8 },
  { rows: 4, warps: 8 },
  { rows: 4, warps: 8, split: 2, loads: 8 },
  { rows: 2, warps: 8, split: 2, loads: 8 },
  { rows: 4, warps: 16, split: 4, loads: 8 },
  { rows: 2, warps: 16, split: 4, loads: 8 },
  // Latency candidates (--latency): more warps a row, more loads in flight.
  ...(latency
    ? [
        { rows: 1, warps: 8, split: 2, loads: 8 },
        { rows: 1, warps: 16, split: 4, loads: 8 },
        { rows: 2, warps: 16, split: 8, loads: 8 },
        { rows: 1, warps: 16, split: 8, loads: 8 },
        { rows: 4, warps: 16, split: 16, loads: 8 },
        { rows: 2, warps: 16, split: 16, loads: 8 },
        { rows: 4, warps: 8, split: 4, loads: 16 },
        { rows: 2, warps: 8, split: 4, loads: 16 },
      ]
    : []),
];

/** The paired variants' sweep (RoPE, SwiGLU: a warp holds both rows of a pair, so even rows a warp). */
const PAIRED_SWEEP = SWEEP.filter((c) => c.rows % 2 === 0);

const x = (k: number) => mx.keep(mx.randomNormal([1, 1, k], mx.Dtype.float16, 0, 1, mx.randomKey(k)));
const norm = (k: number) => mx.keep(mx.add(mx.randomUniform([k], mx.Dtype.float16, mx.randomKey(5)), 0.5));

function qkv(): void {
  const [n, k] = [3 * HEADS * HD, 3072];
  const ws = weightSets(n, k);
  const xs = x(k);
  const g = norm(k);
  const invFreq = mx.keep(mx.float32(Array.from({ length: HD / 2 }, (_, i) => 10000 ** (-(2 * i) / HD))));
  const rope: FusedRope = { headDim: HD, rotated: 2 * HEADS * HD, traditional: false, invFreq };
  const bytes = bytesOf(n, k);
  const w = (i: number) => ws[i % ws.length] as mx.QuantizedWeight;
  measure(
    "qkv",
    "plain",
    cfgName(gemvConfig(n, 1)),
    bytes,
    (i) => quantizedGemv(xs, w(i), { rows: 4, warps: 4 }),
    ws.length,
  );
  measure(
    "qkv",
    "norm",
    "4x4",
    bytes,
    (i) =>
      fusedPlans
        .norm(xs.shape, xs.dtype, w(i), EPS)
        .run([xs, w(i).weight, w(i).scales, w(i).biases as mx.MxArray, g])[0] as mx.MxArray,
    ws.length,
  );
  // The RoPE kernels' row order (a warp holds rows i and i + HD/2 of a head) with the plain epilogue: the order alone.
  const pairRows: GemvSpec = {
    name: "pv_bench_pair_rows",
    header: GEMV_KERNEL.header,
    source: gemvSource({
      norm: true,
      rows: `const int p = warp * (ROWS / 2) + r % (ROWS / 2); const int half = r / (ROWS / 2);
    const int head = p / (HD / 2); const int i = p % (HD / 2); rowi[r] = head * HD + i + half * (HD / 2);`,
    }),
    inputs: [...GEMV_KERNEL.inputs, "norm"],
  };
  const epsBits = new Int32Array(Float32Array.of(EPS).buffer)[0] as number;
  const qIn = (i: number) => [xs, w(i).weight, w(i).scales, w(i).biases as mx.MxArray];
  measure(
    "qkv",
    "norm, RoPE's row order",
    "4x4",
    bytes,
    (i) =>
      gemvPlan(pairRows, xs.shape, xs.dtype, w(i), { EPS_BITS: epsBits, HD }, pairedConfig(n, 1)).run([
        ...qIn(i),
        g,
      ])[0] as mx.MxArray,
    ws.length,
  );
  // RoPE's cos/sin table (ropeTable: one launch a step, outside these timings).
  const table = (position: number) => mx.keep(mx.tidy(() => ropeTable(mx.int32([position]), rope)));
  const table300 = table(300);
  measure(
    "qkv",
    "norm+rope, one output (pos 300)",
    "default",
    bytes,
    (i) => fusedPlans.normRope(xs.shape, xs.dtype, w(i), EPS, rope).run([...qIn(i), g, table300])[0] as mx.MxArray,
    ws.length,
  );
  table300.dispose();
  for (const position of latency ? [300] : [300, 100_000]) {
    const cs = table(position);
    for (const c of quick ? [undefined] : [undefined, ...PAIRED_SWEEP]) {
      const run = (i: number) =>
        fusedPlans
          .normRopeQkv(1, xs.dtype, w(i), EPS, rope, HEADS, c)
          .run([xs, w(i).weight, w(i).scales, w(i).biases as mx.MxArray, g, cs])[0] as mx.MxArray;
      measure("qkv", `norm+rope+split (pos ${position})`, c ? cfgName(c) : "default", bytes, run, ws.length);
    }
    cs.dispose();
  }
  free(ws, [xs, g, invFreq]);
}

function gateUp(): void {
  const [n, k] = [16384, 3072];
  const ws = weightSets(n, k);
  const xs = x(k);
  const g = norm(k);
  const w = (i: number) => ws[i % ws.length] as mx.QuantizedWeight;
  const bytes = bytesOf(n, k);
  measure("gate|up", "plain", "4x4", bytes, (i) => quantizedGemv(xs, w(i), { rows: 4, warps: 4 }), ws.length);
  for (const c of quick ? [undefined] : [undefined, ...PAIRED_SWEEP]) {
    const run = (i: number) =>
      fusedPlans
        .normSwiglu(xs.shape, xs.dtype, w(i), EPS, c)
        .run([xs, w(i).weight, w(i).scales, w(i).biases as mx.MxArray, g])[0] as mx.MxArray;
    measure("gate|up", "norm+swiglu", c ? cfgName(c) : "default", bytes, run, ws.length);
  }
  free(ws, [xs, g]);
}

function residual(shape: string, n: number, k: number): void {
  const ws = weightSets(n, k);
  const xs = x(k);
  const res = mx.keep(mx.randomNormal([1, 1, n], mx.Dtype.float16, 0, 1, mx.randomKey(9)));
  const w = (i: number) => ws[i % ws.length] as mx.QuantizedWeight;
  const bytes = bytesOf(n, k);
  measure(shape, "plain", "4x4", bytes, (i) => quantizedGemv(xs, w(i), { rows: 4, warps: 4 }), ws.length);
  for (const c of quick ? [undefined] : [undefined, ...SWEEP]) {
    const run = (i: number) =>
      fusedPlans
        .residual(xs.shape, xs.dtype, w(i), c)
        .run([xs, w(i).weight, w(i).scales, w(i).biases as mx.MxArray, res])[0] as mx.MxArray;
    measure(shape, "residual", c ? cfgName(c) : "default", bytes, run, ws.length);
  }
  free(ws, [xs, res]);
}

function free(ws: mx.QuantizedWeight[], arrays: mx.MxArray[]): void {
  for (const q of ws) for (const a of [q.weight, q.scales, q.biases as mx.MxArray]) a.dispose();
  for (const a of arrays) a.dispose();
  mx.memory.clearCache();
}

/** Several rows of x: each layer product's fused kernel, scalar body against tensor cores, and MLX's product. */
function rowsSection(): void {
  const shapes = [
    { name: "qkv (norm)", n: 9216, k: 3072, kind: "norm" },
    { name: "o (residual)", n: 3072, k: 3072, kind: "residual" },
    { name: "gate|up (norm+swiglu)", n: 16384, k: 3072, kind: "swiglu" },
    { name: "down (residual)", n: 3072, k: 8192, kind: "residual" },
  ] as const;
  for (const s of shapes) {
    const ws = weightSets(s.n, s.k);
    const w = (i: number) => ws[i % ws.length] as mx.QuantizedWeight;
    const g = norm(s.k);
    for (const m of multiRows) {
      const xs = mx.keep(mx.randomNormal([m, 1, s.k], mx.Dtype.float16, 0, 1, mx.randomKey(m)));
      const res = mx.keep(mx.randomNormal([m, 1, s.n], mx.Dtype.float16, 0, 1, mx.randomKey(9)));
      const bytes = bytesOf(s.n, s.k) + (m - 1) * 2 * (s.k + s.n);
      const qIn = (i: number) => [xs, w(i).weight, w(i).scales, w(i).biases as mx.MxArray];
      const plan = (i: number, c: GemvConfig) =>
        s.kind === "norm"
          ? fusedPlans.norm(xs.shape, xs.dtype, w(i), EPS, c).run([...qIn(i), g])
          : s.kind === "swiglu"
            ? fusedPlans.normSwiglu(xs.shape, xs.dtype, w(i), EPS, c).run([...qIn(i), g])
            : fusedPlans.residual(xs.shape, xs.dtype, w(i), c).run([...qIn(i), res]);
      const configs: GemvConfig[] = [];
      if (m <= 16) configs.push(pairedConfig(s.n, m, s.k));
      const base = mmaWarps(s.n, s.k);
      for (const warps of new Set([base, Math.min(8, base * 2)])) configs.push({ rows: 2, warps, mma: true });
      for (const c of configs) {
        const label = c.mma
          ? `mma ${c.warps} warps${c.warps === mmaWarps(s.n, s.k) ? " (default)" : ""}`
          : `scalar ${cfgName(c)}`;
        measure(s.name, `M=${m}`, label, bytes, (i) => plan(i, c)[0] as mx.MxArray, ws.length);
      }
      measure(s.name, `M=${m}`, "MLX quantized_matmul", bytes, (i) => mx.quantizedMatmul(xs, w(i)), ws.length);
      xs.dispose();
      res.dispose();
    }
    free(ws, [g]);
  }
}

if (!args.includes("--no-one")) {
  qkv();
  gateUp();
  residual("o", 3072, 3072);
  residual("down", 3072, 8192);
}
if (multiRows.length) rowsSection();

const gpu = gpuName();
const table = [
  `# A decode layer's fused kernels, Phi-3-mini shapes, 1 row of x, ${new Date().toISOString()}`,
  "",
  `GPU: ${gpu}. MLX ${mx.mlxVersion()}. us per launch: wall time of one graph of ~200 launches over >= 256 MB of distinct weights / count (median of ${quick ? 3 : 7}). GB/s: the bytes the product must move.`,
  "",
  "| shape | kernel | launch | us | GB/s |",
  "|---|---|---|---:|---:|",
  ...lines.map((l) => `| ${l.shape} | ${l.kernel} | ${l.config} | ${l.us.toFixed(2)} | ${l.gbps.toFixed(0)} |`),
];
console.log(table.join("\n"));
if (outDir) {
  mkdirSync(outDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  writeFileSync(
    join(outDir, `fused-kernels-${stamp}.json`),
    JSON.stringify({ gpu, mlx: mx.mlxVersion(), lines }, null, 2),
  );
  writeFileSync(join(outDir, `fused-kernels-${stamp}.md`), `${table.join("\n")}\n`);
}
