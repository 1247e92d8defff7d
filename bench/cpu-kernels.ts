// CPU quantized-matmul kernels alone: the float kernel (ffi/cpu_qmm.cpp) and
// the int8 one (ffi/cpu_qmm_int8.cpp) on each instruction set, at 1 and 2
// threads, on SmolLM2's and Phi-3-mini's layer shapes, decode (1 row) and
// prefill (rows = --rows). Reports the fastest of --repeat runs (the machine
// is shared: the minimum is the least disturbed), as ms and weight GB/s.
//
//   bun bench/cpu-kernels.ts [--rows 64] [--repeat 7] [--model smollm2|phi3]
import * as mx from "../src/mlx";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] ?? fallback) : fallback;
};
const rows = Number(flag("rows", "64"));
const repeat = Number(flag("repeat", "7"));
const modelName = flag("model", "smollm2");
// Filters (to profile one case): --packings 4g32,8g32 --threads 1,2 --kernels exact,avx2,vnni --modes decode,prefill
const packingFilter = flag("packings", "4g32,4g64,8g32").split(",");
const threadList = flag("threads", "1,2").split(",").map(Number);
const kernelFilter = flag("kernels", "exact,scalar,avx2,vnni,packed").split(",");
const modeFilter = flag("modes", "decode,prefill").split(",");

// [name, N, K] of one layer's products (q|k|v and gate|up fused, as the models run them).
const SHAPES: Record<string, Array<[string, number, number]>> = {
  smollm2: [
    ["qkv", 576 + 2 * 192, 576],
    ["o", 576, 576],
    ["gate|up", 2 * 1536, 576],
    ["down", 576, 1536],
  ],
  phi3: [
    ["qkv", 3 * 3072, 3072],
    ["o", 3072, 3072],
    ["gate|up", 2 * 8192, 3072],
    ["down", 3072, 8192],
  ],
};
const shapes = SHAPES[modelName] ?? SHAPES.smollm2 ?? [];
mx.setDevice("cpu");

function weight(n: number, k: number, group: number, bits: number): mx.QuantizedWeight {
  const q = mx.quantize(mx.randomNormal([n, k], mx.Dtype.float32, 0, 0.05, mx.randomKey(n + k)), group, bits);
  // Scales and biases rounded through float16, as GGUF's and mlx-community's are (so they pack).
  const f16 = (a: mx.MxArray) => mx.keep(mx.astype(mx.astype(a, mx.Dtype.float16), mx.Dtype.float32));
  const out = {
    ...q,
    scales: f16(q.scales),
    biases: f16(q.biases as mx.MxArray),
    weight: mx.keep(q.weight),
  };
  mx.evaluate(out.weight, out.scales, out.biases);
  return out;
}

// --clock cpu: the process's CPU time (user + system) instead of wall time. On a
// machine shared with other work, CPU time leaves out the time other processes
// hold our core; with n threads it is divided by n (what the threads would take
// side by side). Memory stalls still count (the core is ours while it waits).
const clock = flag("clock", "wall");
function time(fn: () => mx.MxArray, threads: number): number {
  let best = Number.POSITIVE_INFINITY;
  for (let i = 0; i < repeat; i++) {
    const t = performance.now();
    const c = process.cpuUsage();
    mx.tidy(() => mx.evaluate(fn()));
    const used = process.cpuUsage(c);
    const ms = clock === "cpu" ? (used.user + used.system) / 1000 / threads : performance.now() - t;
    best = Math.min(best, ms);
  }
  return best;
}

const lines: string[] = [];
const PACKINGS: Array<[group: number, bits: number]> = [
  [32, 4],
  [64, 4],
  [32, 8],
];
for (const [group, bits] of PACKINGS) {
  if (!packingFilter.includes(`${bits}g${group}`)) continue;
  for (const m of [1, rows]) {
    if (!modeFilter.includes(m === 1 ? "decode" : "prefill")) continue;
    const ws = shapes.map(([, n, k]) => weight(n, k, group, bits));
    const xs = shapes.map(([, , k]) => mx.keep(mx.randomNormal([m, k], mx.Dtype.float32, 0, 1, mx.randomKey(k))));
    const bytes = ws.reduce((s, w) => s + w.weight.size * 4 + w.scales.size * 8, 0);
    // Multiply-adds per activation row (the weights' element count; before this, bytes·8/bits, which
    // counted the float32 scales and biases as weights: 1.5x too high for 4-bit g32).
    const macs = shapes.reduce((s, [, n, k]) => s + n * k, 0);
    for (const threads of threadList) {
      mx.setCpuThreads(threads);
      const row = (name: string, fn: (x: mx.MxArray, w: mx.QuantizedWeight) => mx.MxArray) => {
        const ms = shapes.reduce(
          (s, _, i) => s + time(() => fn(xs[i] as mx.MxArray, ws[i] as mx.QuantizedWeight), threads),
          0,
        );
        const gbs = bytes / (ms / 1000) / 1e9;
        lines.push(
          `| ${bits}-bit g${group} | ${m} | ${threads} | ${name} | ${ms.toFixed(2)} | ${gbs.toFixed(1)} | ${((m * macs) / (ms / 1000) / 1e9).toFixed(1)} |`,
        );
      };
      if (kernelFilter.includes("exact")) row("float (exact)", (x, w) => mx.quantizedMatmulCpuExact(x, w));
      for (const isa of ["scalar", "avx2", "vnni"] as const) {
        if (!kernelFilter.includes(isa) || !mx.cpuIsaSupported(isa) || (isa === "scalar" && m > 1)) continue;
        mx.setCpuIsa(isa);
        row(`int8 ${isa}`, (x, w) => mx.quantizedMatmulCpuInt8(x, w));
      }
      mx.setCpuIsa("auto");
      const packed = kernelFilter.includes("packed") ? ws.map((w) => mx.cpuPack(w)) : [];
      if (packed.length && packed.every((p) => p !== null)) {
        // What the packed layout reads: 128 weight bytes + 16-bit scales (and biases) per 256 inputs and row.
        const ms = shapes.reduce(
          (s, _, i) =>
            s + time(() => mx.quantizedMatmulCpuPacked(xs[i] as mx.MxArray, packed[i] as mx.MxArray), threads),
          0,
        );
        const packedBytes = packed.reduce((s, p) => s + (p as mx.MxArray).size, 0);
        lines.push(
          `| ${bits}-bit g${group} | ${m} | ${threads} | int8 vnni packed (${(packedBytes / 2 ** 20).toFixed(0)} MiB) | ${ms.toFixed(2)} | ${(packedBytes / (ms / 1000) / 1e9).toFixed(1)} | ${((m * macs) / (ms / 1000) / 1e9).toFixed(1)} |`,
        );
      }
      mx.disposeAll(packed);
    }
    mx.disposeAll([ws, xs]);
  }
}
console.log(`${modelName} layer (${shapes.map(([n]) => n).join(", ")}), best of ${repeat}, ${clock} clock`);
console.log("| weights | rows | threads | kernel | ms / layer | weight GB/s | G MAC/s |");
console.log("|---|---:|---:|---|---:|---:|---:|");
for (const l of lines) console.log(l);
