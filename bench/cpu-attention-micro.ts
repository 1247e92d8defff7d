// The CPU attention primitive alone (ffi/cpu_attention.cpp) at the shapes of a
// verify pass: L new query rows over S cached keys, median µs per call and the
// ratio to L = 1. PENSIEVE_CPU_ATTENTION=per-row selects the per-row path.
//   bun bench/cpu-attention-micro.ts Hq,Hkv,D,S,reps [L,L,...]
// e.g. SmolLM2: 9,3,64,512,300; the 3.9B random Llama: 32,32,96,512,100.
import * as mx from "../src/mlx";
mx.setDevice("cpu");
const [Hq, Hkv, D, S0, reps] = (process.argv[2] ?? "9,3,64,512,200").split(",").map(Number) as [
  number,
  number,
  number,
  number,
  number,
];
const ls = (process.argv[3] ?? "1,2,3,5,9,17").split(",").map(Number);
const rand = (shape: number[], seed: number) => mx.randomNormal(shape, mx.Dtype.float32, 0, 1, mx.randomKey(seed));
const kbuf = rand([1, Hkv, S0 + 256, D], 1);
const vbuf = rand([1, Hkv, S0 + 256, D], 2);
mx.evaluate(kbuf, vbuf);
const out: string[] = [];
const base: Record<number, number> = {};
for (const L of ls) {
  const qraw = rand([1, L, Hq, D], 3 + L);
  const q = mx.transpose(qraw, [0, 2, 1, 3]);
  const k = mx.sliceAxis(kbuf, 2, 0, S0 + L);
  const v = mx.sliceAxis(vbuf, 2, 0, S0 + L);
  mx.evaluate(q, k, v);
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    mx.tidy(() => mx.evaluate(mx.sdpa(q, k, v, 0.125, L === 1 ? null : "causal")));
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const med = times[Math.floor(times.length / 2)] as number;
  base[L] = med;
  out.push(`L=${L}: ${(med * 1000).toFixed(1)} us (${(med / (base[1] ?? med)).toFixed(2)}x L=1)`);
}
console.log(`Hq ${Hq} Hkv ${Hkv} D ${D} S ${S0}`);
console.log(out.join("\n"));
