// The fused decode kernels on a real GPU (skipped without CUDA): each fused
// GEMV variant against MLX's unfused ops on the same inputs, and greedy tokens
// of the tiny Llama and Phi-3 with the fused path (PENSIEVE_GPU_FUSED) on and off.
//
// Tolerance (fp16), relative L2 to MLX's result: the GEMV alone is within 3e-3
// (gemv.test.ts); the fused epilogues round once where MLX rounds after each op,
// and the RMSNorm prologue rounds x twice (x*norm, *rsqrt): under 5e-3. bf16: 3e-2.
// Over 400 lines: one file, so one bundle and one process on a short GPU lease
// (bench/gpu/pack.sh bundles each GPU test file, and every process pays its NVRTC compiles).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { KVCache } from "../../src/engine/kv-cache";
import { cacheShape, generateTokens } from "../../src/engine/one-sequence";
import { samplingParams } from "../../src/engine/protocol";
import { gpuLookupTuning } from "../../src/engine/speculation";
import * as mx from "../../src/mlx";
import { kernelLanguage } from "../../src/mlx/kernels";
import { setGemvMmaFromRows } from "../../src/mlx/kernels-gemv";
import {
  attentionWarps,
  decodeAttention,
  mergedAttentionSplits,
  setKeysPerSplit,
} from "../../src/mlx/kernels-attention";
import {
  quantizedGemvNormRope,
  quantizedGemvNormRopeQkv,
  quantizedGemvNormSwiglu,
  quantizedGemvResidual,
  ropeTable,
} from "../../src/mlx/kernels-gemv-fused";
import {
  FUSED_VERIFY_DEFAULT_TOKENS,
  fusedLaunchCount,
  gpuFusedEnabled,
  setFusedRowLimit,
  fusedRowsBuilt,
  FUSED_MAX_ROWS,
  setFusedVerify,
  setGpuFused,
  setFusedAttentionWarps,
  setKernelWritesKv,
} from "../../src/models/gpu-fused";
import { layerSyncWords } from "../../src/mlx/kernels-layer";
import { layerPlan, megaBlockWarps, megaLaunchCount, setGpuMega } from "../../src/models/gpu-mega";
import { loadModel } from "../../src/models/loader";
import { tinyModel } from "../support/models";
import { promptIds } from "../support/reference";
import { request, runScheduled, singleWithLogprobs, TEST_SCHEDULER_OPTIONS } from "../support/scheduler";

const cuda = mx.gpuAvailable() && kernelLanguage() === "cuda";
const tolerance = (dtype: mx.Dtype) => (dtype === mx.Dtype.float16 ? 5e-3 : 3e-2);
const label = (dtype: mx.Dtype) => (dtype === mx.Dtype.float16 ? "fp16" : "bf16");

function relativeDistance(a: mx.MxArray, b: mx.MxArray): number {
  return mx.tidy(() => {
    const fa = mx.astype(a, mx.Dtype.float32);
    const fb = mx.astype(b, mx.Dtype.float32);
    const d = mx.sqrt(mx.sum(mx.square(mx.subtract(fa, fb))));
    const r = mx.sqrt(mx.sum(mx.square(fb)));
    return (d.item() as number) / (r.item() as number);
  });
}

const weight = (n: number, k: number, dtype: mx.Dtype, seed: number) =>
  mx.quantize(mx.multiply(mx.randomNormal([n, k], dtype, 0, 1, mx.randomKey(seed)), 0.02), 64, 4);
const hidden = (m: number, k: number, dtype: mx.Dtype, seed: number) =>
  mx.add(mx.multiply(mx.randomNormal([m, 1, k], dtype, 0, 1, mx.randomKey(seed)), 4), 1);
const normWeight = (k: number, dtype: mx.Dtype, seed: number) =>
  mx.add(mx.randomUniform([k], dtype, mx.randomKey(seed)), 0.5);

describe.skipIf(!cuda)("fused decode kernels on the GPU", () => {
  let wasEnabled = false;
  beforeAll(() => {
    mx.setDevice("gpu");
    wasEnabled = gpuFusedEnabled();
  });
  afterAll(() => setGpuFused(wasEnabled));

  let seed = 500;
  for (const dtype of [mx.Dtype.float16, mx.Dtype.bfloat16]) {
    for (const m of [1, 3]) {
      seed += 10;
      const s = seed;
      test(`${label(dtype)} M=${m}: o/down product + residual equals quantized_matmul + add`, () => {
        mx.tidy(() => {
          for (const [n, k] of [
            [3072, 3072],
            [3072, 8192],
          ] as Array<[number, number]>) {
            const q = weight(n, k, dtype, s);
            const x = mx.randomNormal([m, 1, k], dtype, 0, 1, mx.randomKey(s + 1));
            const res = mx.randomNormal([m, 1, n], dtype, 0, 2, mx.randomKey(s + 2));
            const ours = quantizedGemvResidual(x, q, res);
            expect(ours.shape).toEqual([m, 1, n]);
            expect(relativeDistance(ours, mx.add(res, mx.quantizedMatmul(x, q)))).toBeLessThan(tolerance(dtype));
          }
        });
      });
      test(`${label(dtype)} M=${m}: RMSNorm + gate|up + SwiGLU equals rms_norm, quantized_matmul, swiglu`, () => {
        mx.tidy(() => {
          const [ffn, k] = [8192, 3072];
          const q = weight(2 * ffn, k, dtype, s + 3);
          const x = hidden(m, k, dtype, s + 4);
          const g = normWeight(k, dtype, s + 5);
          const ours = quantizedGemvNormSwiglu(x, g, 1e-5, q);
          expect(ours.shape).toEqual([m, 1, ffn]);
          const [gate, up] = mx.split(mx.quantizedMatmul(mx.rmsNorm(x, g, 1e-5), q), [ffn], -1) as [
            mx.MxArray,
            mx.MxArray,
          ];
          expect(relativeDistance(ours, mx.swiglu(gate, up, false))).toBeLessThan(tolerance(dtype));
        });
      });
      for (const traditional of [false, true]) {
        test(`${label(dtype)} M=${m}: RMSNorm + q|k|v + RoPE${traditional ? " (traditional)" : ""} equals rms_norm, quantized_matmul, rope`, () => {
          mx.tidy(() => {
            // Phi-3-mini: 32 heads of 96, no GQA; position 1000 (scale 0.5: linear scaling).
            const [heads, kvHeads, hd, k] = [32, 32, 96, 3072];
            const n = (heads + 2 * kvHeads) * hd;
            const q = weight(n, k, dtype, s + 6);
            const x = hidden(m, k, dtype, s + 7);
            const g = normWeight(k, dtype, s + 8);
            const base = 10000;
            const invFreq = mx.divide(
              1,
              mx.power(mx.scalar(base), mx.divide(mx.arange(0, hd, 2, mx.Dtype.float32), hd)),
            );
            const offset = 1000;
            const pos = mx.int32(Array.from({ length: m }, () => offset));
            const rope = { headDim: hd, rotated: (heads + kvHeads) * hd, traditional, invFreq, positionScale: 0.5 };
            const ours = quantizedGemvNormRope(x, g, 1e-5, q, pos, rope);
            const y = mx.quantizedMatmul(mx.rmsNorm(x, g, 1e-5), q);
            const [q0, k0, v0] = mx.split(y, [heads * hd, (heads + kvHeads) * hd], -1) as [
              mx.MxArray,
              mx.MxArray,
              mx.MxArray,
            ];
            const rot = (t: mx.MxArray, h: number) => {
              const r = mx.rope(mx.transpose(mx.reshape(t, [m, 1, h, hd]), [0, 2, 1, 3]), {
                dims: hd,
                traditional,
                base,
                scale: 0.5,
                offset,
              });
              return mx.reshape(mx.transpose(r, [0, 2, 1, 3]), [m, 1, h * hd]);
            };
            const theirs = mx.concatenate([rot(q0, heads), rot(k0, kvHeads), v0], -1);
            expect(relativeDistance(ours, theirs)).toBeLessThan(tolerance(dtype));
          });
        });
      }
    }
  }

  test("decode q|k|v as three outputs equals the one-output kernel", () => {
    mx.tidy(() => {
      const [heads, kvHeads, hd, k, B] = [8, 2, 64, 1024, 2];
      const n = (heads + 2 * kvHeads) * hd;
      const q = weight(n, k, mx.Dtype.float16, 900);
      const x = hidden(B, k, mx.Dtype.float16, 901);
      const g = normWeight(k, mx.Dtype.float16, 902);
      const invFreq = mx.divide(1, mx.power(mx.scalar(10000), mx.divide(mx.arange(0, hd, 2, mx.Dtype.float32), hd)));
      const pos = mx.int32([77, 77]);
      const rope = { headDim: hd, rotated: (heads + kvHeads) * hd, traditional: false, invFreq };
      const [q3, k3, v3] = quantizedGemvNormRopeQkv(x, g, 1e-5, q, pos, rope, kvHeads);
      expect(q3.shape).toEqual([B, 1, heads * hd]);
      expect(k3.shape).toEqual([B, kvHeads, 1, hd]);
      const one = quantizedGemvNormRope(x, g, 1e-5, q, pos, rope);
      const joined = mx.concatenate(
        [q3, mx.reshape(k3, [B, 1, kvHeads * hd]), mx.reshape(v3, [B, 1, kvHeads * hd])],
        -1,
      );
      expect(relativeDistance(joined, one)).toBe(0);
    });
  });

  // Decode attention against MLX's sdpa over the same keys: scores and softmax in float, one rounding of the output.
  for (const [heads, kvHeads, hd, keys, splits] of [
    [32, 32, 96, 300, 1], // Phi-3-mini
    [32, 32, 96, 3000, 6],
    [32, 8, 128, 1000, 3], // Llama 3 8B
    [8, 2, 64, 17, 4], // more splits than a short context fills
  ] as Array<[number, number, number, number, number]>) {
    for (const dtype of [mx.Dtype.float16, mx.Dtype.bfloat16]) {
      test(`${label(dtype)} decode attention H=${heads}/${kvHeads} D=${hd}, ${keys} keys, ${splits} split(s) equals sdpa`, () => {
        mx.tidy(() => {
          const B = 2;
          const cap = keys + 50;
          const kc = mx.randomNormal([B, kvHeads, cap, hd], dtype, 0, 1, mx.randomKey(keys));
          const vc = mx.randomNormal([B, kvHeads, cap, hd], dtype, 0, 1, mx.randomKey(keys + 1));
          const q = mx.randomNormal([B, 1, heads * hd], dtype, 0, 2, mx.randomKey(keys + 2));
          const scale = 1 / Math.sqrt(hd);
          const pos = mx.int32([keys - 1, keys - 1]);
          const ours = decodeAttention(q, kc, vc, pos, scale, heads, keys, splits);
          const q4 = mx.transpose(mx.reshape(q, [B, 1, heads, hd]), [0, 2, 1, 3]);
          const ref = mx.sdpa(q4, mx.sliceAxis(kc, 2, 0, keys), mx.sliceAxis(vc, 2, 0, keys), scale, null);
          const theirs = mx.reshape(mx.transpose(ref, [0, 2, 1, 3]), [B, 1, heads * hd]);
          expect(relativeDistance(ours, theirs)).toBeLessThan(dtype === mx.Dtype.float16 ? 2e-3 : 1.5e-2);

          // The writing kernel: the last key/value come from kn/vn (their cache column holds garbage) and are stored there.
          const col = (a: mx.MxArray) => mx.contiguous(mx.sliceAxis(a, 2, keys - 1, keys));
          const [kn, vn] = [col(kc), col(vc)];
          const junk = mx.full([B, kvHeads, 1, hd], 30000, dtype);
          const spoil = (a: mx.MxArray) => mx.sliceUpdate(a, junk, [0, 0, keys - 1, 0], [B, kvHeads, keys, hd]);
          const [kw, vw] = [spoil(kc), spoil(vc)];
          mx.evaluate(kn, vn, kw, vw);
          const written = decodeAttention(q, kw, vw, pos, scale, heads, keys, splits, [kn, vn]);
          mx.evaluate(written);
          expect(relativeDistance(written, theirs)).toBeLessThan(dtype === mx.Dtype.float16 ? 2e-3 : 1.5e-2);
          expect(relativeDistance(col(kw), kn)).toBe(0);
          expect(relativeDistance(col(vw), vn)).toBe(0);
          if (splits > 1) {
            // Merged in one launch on a ticket counter, which must be back at 0 afterwards.
            const counter = mx.zeros([B * kvHeads], mx.Dtype.int32);
            const [km, vm] = [spoil(kc), spoil(vc)];
            mx.evaluate(counter, km, vm);
            const one = decodeAttention(q, km, vm, pos, scale, heads, keys, splits, [kn, vn], counter);
            mx.evaluate(one);
            expect(relativeDistance(one, theirs)).toBeLessThan(dtype === mx.Dtype.float16 ? 2e-3 : 1.5e-2);
            expect(relativeDistance(col(km), kn)).toBe(0);
            expect(Array.from(counter.read() as Int32Array).every((c) => c === 0)).toBe(true);
          }
        });
      });
    }
  }

  // tiny-phi3's LongRoPE switches to the long factors past 64 tokens: 50 + 24 crosses it.
  for (const [name, promptLength] of [
    ["tiny-llama", 20],
    ["tiny-phi3", 50],
  ] as Array<[string, number]>) {
    test(`${name}: greedy tokens with the fused path equal those without (attention in one and in several splits)`, () => {
      const dir = tinyModel(name);
      const prompt = Array.from({ length: promptLength }, (_, i) => 100 + ((i * 37) % 900));
      const tokens = (on: boolean, perSplit = 512) => {
        setGpuFused(on);
        setKeysPerSplit(perSplit);
        const { model } = loadModel(dir);
        try {
          const before = fusedLaunchCount();
          const out: number[] = [];
          for (const step of generateTokens(model, prompt, { maxTokens: 24, sampling: samplingParams() })) {
            out.push(step.token);
          }
          return { out, launches: fusedLaunchCount() - before };
        } finally {
          model.dispose();
          setKeysPerSplit(null);
        }
      };
      const without = tokens(false);
      setKernelWritesKv(false);
      const withFused = tokens(true);
      const splitFused = tokens(true, 16);
      setKernelWritesKv(true);
      const inPlace = tokens(true);
      const inPlaceSplit = tokens(true, 16);
      setKernelWritesKv(null);
      expect(without.launches).toBe(0);
      expect(withFused.launches).toBeGreaterThan(0);
      expect(withFused.out).toEqual(without.out);
      expect(splitFused.out).toEqual(without.out);
      expect(inPlace.out).toEqual(without.out);
      expect(inPlaceSplit.out).toEqual(without.out);
    }, 240_000);
  }

  // Concurrent rows: steps of up to 4 rows take the fused kernels by default (once an engine has built them:
  // fusedRowsBuilt); with the limit at 1 (PENSIEVE_GPU_FUSED_MAX_ROWS=1) three rows run MLX's ops. The fused
  // logits stay within the verify tests' tolerance of MLX's ops.
  test("tiny-llama: a step of 3 rows runs the fused kernels by default, MLX's ops with PENSIEVE_GPU_FUSED_MAX_ROWS=1", () => {
    const { model } = loadModel(tinyModel("tiny-llama"));
    const B = 3;
    const prompt = [promptIds(20, 1), promptIds(20, 2), promptIds(20, 3)].flat();
    const step = (rows: number, limit: number | null) => {
      setFusedRowLimit(limit);
      fusedRowsBuilt(FUSED_MAX_ROWS);
      const cache = new KVCache(cacheShape(model), rows);
      try {
        const p = mx.int32(prompt.slice(0, rows * 20), [rows, 20]);
        mx.evaluate(model.forward(p, cache, { logits: "last" }));
        const before = fusedLaunchCount();
        const logits = mx.keep(model.forward(mx.int32([7, 8, 9].slice(0, rows), [rows, 1]), cache, { logits: "last" }));
        mx.evaluate(logits);
        return { logits, launches: fusedLaunchCount() - before };
      } finally {
        cache.dispose();
        setFusedRowLimit(null);
      }
    };
    try {
      setGpuFused(true);
      const lone = step(1, 1);
      const batched = step(B, 1);
      const raised = step(B, null);
      setGpuFused(false);
      const unfused = step(B, null);
      expect(lone.launches).toBeGreaterThan(0);
      expect(batched.launches).toBe(0);
      expect(raised.launches).toBeGreaterThan(0);
      expect(unfused.launches).toBe(0);
      expect(relativeDistance(batched.logits, unfused.logits)).toBeLessThan(1e-6);
      expect(relativeDistance(raised.logits, unfused.logits)).toBeLessThan(2e-2);
      for (const a of [lone.logits, batched.logits, raised.logits, unfused.logits]) a.dispose();
    } finally {
      setGpuFused(wasEnabled);
      model.dispose();
    }
  }, 240_000);

  // Requests of different lengths decoded together through the scheduler (2..4 rows a step, each row at its
  // own position; 5..8 with the fused limit at 8, where the GEMVs past 4 rows take tensor cores), fused kernels
  // against MLX's ops (limit 1): the same greedy tokens.
  for (const name of ["tiny-llama", "tiny-phi3"]) {
    for (const [lengths, limit] of [
      [[3, 17, 40, 9], 4],
      [[3, 17, 40, 9, 25, 6, 33, 12], 8],
    ] as const) {
      const label = limit === 4 ? "2-4 rows" : "5-8 rows (fused limit 8)";
      test(`${name}: greedy tokens of a ragged batch of ${label}, fused kernels equal MLX's ops`, () => {
        const dir = tinyModel(name);
        const prompts = lengths.map((n, i) => promptIds(n, 60 + i));
        const greedy = samplingParams();
        const run = (rows: number) => {
          setFusedRowLimit(rows);
          fusedRowsBuilt(rows);
          const { model } = loadModel(dir);
          try {
            const before = fusedLaunchCount();
            const r = runScheduled(
              model,
              prompts.map((p, i) => ({ at: i % 2, request: request(`r${i}`, p, 24, greedy) })),
              { ...TEST_SCHEDULER_OPTIONS, speculative: false },
            );
            return { tokens: prompts.map((_, i) => r.tokens.get(`r${i}`)), launches: fusedLaunchCount() - before };
          } finally {
            model.dispose();
            setFusedRowLimit(null);
            fusedRowsBuilt(FUSED_MAX_ROWS);
          }
        };
        try {
          setGpuFused(true);
          const lone = run(1);
          const batched = run(limit);
          expect(batched.launches).toBeGreaterThan(lone.launches);
          expect(batched.tokens).toEqual(lone.tokens);
        } finally {
          setGpuFused(wasEnabled);
        }
      }, 240_000);
    }
  }

  // The engine drafts on a GPU only for models whose verify passes take the fused kernels in every layer.
  test("verify passes take the fused kernels for the Llama and Phi-3 layers, not with q/k norms, biases or post norms", () => {
    const supported = (name: string) => {
      const { model } = loadModel(tinyModel(name));
      try {
        return model.fusedVerifySupported?.() ?? false;
      } finally {
        model.dispose();
      }
    };
    expect(supported("tiny-llama")).toBe(true);
    expect(supported("tiny-phi3")).toBe(true);
    expect(supported("tiny-qwen3")).toBe(false);
    expect(supported("tiny-qwen2")).toBe(false);
    expect(supported("tiny-gemma3")).toBe(false);
  }, 120_000);

  // Speculative verify passes (PENSIEVE_GPU_FUSED_VERIFY): one row of L = k + 1 tokens after a cached prompt.
  // Tolerance: the logits' relative L2 distance to the unfused path's (MLX's ops, as with the flag off)
  // under 2e-2: each layer's fused kernels are within ~5e-3 of MLX's ops (above), the tiny models have few layers.
  /** `tokens` in one pass after `cached` (none: an empty cache), then a one-token step, fused verify path off vs on. */
  function expectVerifyPathMatches(name: string, cached: number[], tokens: number[]): void {
    const { model } = loadModel(tinyModel(name));
    const pass = (on: boolean) => {
      setFusedVerify(on);
      const cache = new KVCache(cacheShape(model), 1);
      try {
        if (cached.length > 0)
          mx.evaluate(model.forward(mx.int32(cached, [1, cached.length]), cache, { logits: "last" }));
        const before = fusedLaunchCount();
        const logits = mx.keep(model.forward(mx.int32(tokens, [1, tokens.length]), cache, { logits: "all" }));
        mx.evaluate(logits);
        const launches = fusedLaunchCount() - before;
        // The next one-token step reads the pass's keys/values from the cache.
        const next = mx.keep(model.forward(mx.int32([tokens[0] as number], [1, 1]), cache, { logits: "last" }));
        mx.evaluate(next);
        return { logits, next, launches };
      } finally {
        cache.dispose();
        setFusedVerify(FUSED_VERIFY_DEFAULT_TOKENS);
      }
    };
    try {
      const off = pass(false);
      const on = pass(true);
      expect(on.launches).toBeGreaterThan(off.launches);
      expect(relativeDistance(on.logits, off.logits)).toBeLessThan(2e-2);
      expect(relativeDistance(on.next, off.next)).toBeLessThan(2e-2);
      for (const a of [on.logits, on.next, off.logits, off.next]) a.dispose();
    } finally {
      model.dispose();
    }
  }

  for (const name of ["tiny-llama", "tiny-phi3"]) {
    for (const L of [2, 4, 9, 16]) {
      test(`${name}: a verify pass of ${L} tokens, fused verify path on vs off (logits, the cache after it)`, () => {
        expectVerifyPathMatches(name, promptIds(40, 3), promptIds(L, 9));
      }, 240_000);
    }

    // On by default up to FUSED_VERIFY_DEFAULT_TOKENS: any one-row forward that short takes it, a whole prompt too.
    test(`${name}: a ${FUSED_VERIFY_DEFAULT_TOKENS}-token prompt with nothing cached, fused verify path on vs off (logits, next step)`, () => {
      expectVerifyPathMatches(name, [], promptIds(FUSED_VERIFY_DEFAULT_TOKENS, 4));
    }, 240_000);

    // Every fused length with the CPU's lookup; then the GPU's defaults (engine-plan.ts): passes of up to
    // FUSED_VERIFY_DEFAULT_TOKENS tokens, drafts chosen by cost.
    for (const [what, verify, tuning] of [
      ["every fused length, adaptive drafts", true, undefined],
      ["the GPU defaults", FUSED_VERIFY_DEFAULT_TOKENS, gpuLookupTuning(FUSED_VERIFY_DEFAULT_TOKENS - 1)],
    ] as const) {
      test(`${name}: greedy prompt-lookup speculation with the fused verify path (${what}) equals plain greedy decoding`, () => {
        const { model } = loadModel(tinyModel(name));
        const base = promptIds(12, 7);
        const prompt = [...base, ...base.slice(1), ...base.slice(1)]; // repeats itself: the lookup drafts
        try {
          setFusedVerify(false);
          const plain = singleWithLogprobs(model, prompt, 40, samplingParams()).tokens;
          setFusedVerify(verify);
          const before = fusedLaunchCount();
          const r = request("v", prompt, 40);
          const options = { ...TEST_SCHEDULER_OPTIONS, speculative: true, lookupTuning: tuning };
          const run = runScheduled(model, [{ at: 0, request: r }], options);
          expect(fusedLaunchCount()).toBeGreaterThan(before);
          expect(run.scheduler.speculation.passes).toBeGreaterThan(0);
          expect(run.tokens.get("v")).toEqual(plain);
        } finally {
          setFusedVerify(FUSED_VERIFY_DEFAULT_TOKENS);
          model.dispose();
        }
      }, 240_000);
    }
  }

  // The layer megakernel against the fused path's five kernels on the same inputs (the attention at the
  // megakernel's block of warps): the same code in the same order, so the output and the stored key/value are
  // bit-identical (Phi-3's heads, GQA; one and merged splits). Its GEMV phases are the scalar body, so the fused
  // kernels compared take it too: by default they take tensor cores from 3 rows, which sum in another order (B=3
  // differed by 4e-4 in fp16 on the H100, bench/results/gpu-h100-2026-12-07j).
  for (const [heads, kvHeads, hd, keysPerSplit, B] of [
    [32, 32, 96, 128, 1],
    [32, 32, 96, 16, 2],
    [16, 4, 128, 64, 3],
  ] as Array<[number, number, number, number, number]>) {
    for (const dtype of [mx.Dtype.float16, mx.Dtype.bfloat16]) {
      test(`${label(dtype)} B=${B} H=${heads}/${kvHeads} D=${hd}: the layer megakernel equals the fused kernels bit for bit (${keysPerSplit} keys a split)`, () => {
        setKeysPerSplit(keysPerSplit);
        setGemvMmaFromRows(Number.POSITIVE_INFINITY);
        try {
          mx.tidy(() => {
            const [D, FF, cap] = [3072, 8192, 256];
            const qs = heads * hd;
            const wqkv = weight(qs + 2 * kvHeads * hd, D, dtype, 1);
            const [wo, wgu, wd] = [weight(D, qs, dtype, 2), weight(2 * FF, D, dtype, 3), weight(D, FF, dtype, 4)];
            const x = hidden(B, D, dtype, 5);
            const [n1, n2] = [normWeight(D, dtype, 6), normWeight(D, dtype, 7)];
            const positions = Array.from({ length: B }, (_, b) => 90 + 37 * b);
            const pos = mx.int32(positions);
            const invFreq = mx.divide(
              1,
              mx.power(mx.scalar(10000), mx.divide(mx.arange(0, hd, 2, mx.Dtype.float32), hd)),
            );
            const rope = { headDim: hd, rotated: (heads + kvHeads) * hd, traditional: false, invFreq };
            const scale = 1 / Math.sqrt(hd);
            const cache = () => mx.randomNormal([B, kvHeads, cap, hd], dtype, 0, 1, mx.randomKey(9));
            const [kc1, vc1, kc2, vc2] = [cache(), cache(), cache(), cache()];
            const counter = mx.zeros([B * kvHeads], mx.Dtype.int32);
            const sync = mx.zeros([layerSyncWords(B, kvHeads)], mx.Dtype.int32);
            mx.evaluate(kc1, vc1, kc2, vc2, counter, sync, pos, invFreq);
            // The fused path: five launches.
            const [q, k, v] = quantizedGemvNormRopeQkv(x, n1, 1e-5, wqkv, pos, rope, kvHeads);
            const keys = Math.max(...positions) + 1;
            const attn = decodeAttention(
              q,
              kc1,
              vc1,
              pos,
              scale,
              heads,
              keys,
              mergedAttentionSplits(keys),
              [k, v],
              counter,
              attentionWarps(heads, kvHeads, hd, megaBlockWarps()),
            );
            const h2 = quantizedGemvResidual(attn, wo, x);
            const y1 = quantizedGemvResidual(quantizedGemvNormSwiglu(h2, n2, 1e-5, wgu), wd, h2);
            mx.evaluate(y1);
            // The megakernel: one launch.
            const plan = layerPlan(
              { dtype, rows: B, hidden: D, intermediate: FF, heads, kvHeads, headDim: hd },
              { groups: [64, 64, 64, 64], eps1: 1e-5, eps2: 1e-5, traditional: false, scale },
              mergedAttentionSplits(keys),
            );
            const qw = (w: mx.QuantizedWeight) => [w.weight, w.scales, w.biases as mx.MxArray];
            const y2 = plan.run([
              x,
              n1,
              ...qw(wqkv),
              pos,
              ropeTable(pos, rope),
              kc2,
              vc2,
              ...qw(wo),
              n2,
              ...qw(wgu),
              ...qw(wd),
              sync,
            ])[0] as mx.MxArray;
            mx.evaluate(y2);
            expect(relativeDistance(y2, y1)).toBe(0);
            expect(relativeDistance(kc2, kc1)).toBe(0);
            expect(relativeDistance(vc2, vc1)).toBe(0);
            // Tickets, phase counts and split tickets back at zero for the next launch.
            expect(Array.from(sync.read() as Int32Array).every((c) => c === 0)).toBe(true);
          });
        } finally {
          setKeysPerSplit(null);
          setGemvMmaFromRows(null);
        }
      });
    }
  }

  // The layer megakernel (PENSIEVE_GPU_MEGA=1) runs the fused kernels' code as one launch: same tokens as the
  // fused path with the kernel writing the cache and the attention at the megakernel's warps.
  for (const [name, promptLength] of [
    ["tiny-llama", 20],
    ["tiny-phi3", 50],
  ] as Array<[string, number]>) {
    test(`${name}: greedy tokens with the layer megakernel equal the fused path's (one split and several)`, () => {
      const dir = tinyModel(name);
      const prompt = Array.from({ length: promptLength }, (_, i) => 100 + ((i * 37) % 900));
      // The fused path compared is the one whose numerics the megakernel shares: the kernel writes the cache, splits merge.
      const tokens = (mega: boolean, perSplit: number | null = null) => {
        setGpuFused(true);
        setKernelWritesKv(true);
        setFusedAttentionWarps(megaBlockWarps());
        setGpuMega(mega);
        setKeysPerSplit(perSplit);
        const { model } = loadModel(dir);
        try {
          const before = megaLaunchCount();
          const out: number[] = [];
          for (const step of generateTokens(model, prompt, { maxTokens: 24, sampling: samplingParams() })) {
            out.push(step.token);
          }
          return { out, launches: megaLaunchCount() - before };
        } finally {
          model.dispose();
          setKeysPerSplit(null);
          setGpuMega(false);
          setFusedAttentionWarps(null);
          setKernelWritesKv(null);
        }
      };
      const fusedOnly = tokens(false);
      const mega = tokens(true);
      const fusedSplit = tokens(false, 16);
      const megaSplit = tokens(true, 16);
      expect(fusedOnly.launches).toBe(0);
      expect(mega.launches).toBeGreaterThan(0);
      expect(mega.out).toEqual(fusedOnly.out);
      expect(megaSplit.out).toEqual(fusedSplit.out);
    }, 240_000);
  }
});
