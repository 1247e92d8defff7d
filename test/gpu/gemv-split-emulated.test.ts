// The split-K decode GEMV (src/mlx/kernels-gemv-split.ts, PENSIEVE_GEMV_SPLITK) of every
// GEMV variant (plain, RMSNorm, residual, RMSNorm + SwiGLU, RMSNorm + RoPE, RoPE with q/k/v
// outputs) run on the CPU through the CUDA emulation (cuda-emulation.h, g++), against float64
// and against the unsplit kernel on the same inputs (only the order of float sums differs).
// Small shapes run every block; Phi-3-mini's shapes (o, down, gate|up, q|k|v, lm_head) run a
// few blocks each (the first, the last, those at the q/k and k/v boundaries: an emulated
// block is a thread per GPU thread), the unsplit kernel the blocks covering the same rows.
import { describe, expect, test } from "bun:test";
import { GEMV_KERNEL, GEMV_RMS_NORM_KERNEL, gemvConfig, gemvSource, mmaFromRows } from "../../src/mlx/kernels-gemv";
import {
  GEMV_NORM_ROPE_KERNEL,
  GEMV_NORM_ROPE_QKV_KERNEL,
  GEMV_NORM_SWIGLU_KERNEL,
  GEMV_RESIDUAL_KERNEL,
} from "../../src/mlx/kernels-gemv-fused";
import { GEMV_MMA_HEADER, mmaBucket, mmaWarps } from "../../src/mlx/kernels-gemv-mma";
import { oneRowOverride, splitConfig } from "../../src/mlx/kernels-gemv-split";
import { EMULATION_HEADER, emulationCompiler, ropeTableCode, runEmulated } from "./emulate";

type Variant = "plain" | "norm" | "residual" | "swiglu" | "rope" | "rope-qkv";
interface Case {
  variant: Variant;
  dtype: "f16" | "bf16";
  m: number;
  n: number;
  k: number;
  rows: number;
  split: number;
  groups: number;
  loads?: number;
  group: number;
  hd?: number;
  rotated?: number;
  traditional?: boolean;
  posScale?: number;
  /** Run only these blocks (Phi-3 shapes); default all. */
  some?: boolean;
  /** The tensor-core body (kernels-gemv-mma.ts) with this many warps a tile, instead of split-K (every tile runs). */
  mma?: number;
}

const EPS = 1e-5;
const bits = (v: number) => new Int32Array(Float32Array.of(v).buffer)[0];
const SPECS = {
  plain: GEMV_KERNEL,
  norm: GEMV_RMS_NORM_KERNEL,
  residual: GEMV_RESIDUAL_KERNEL,
  swiglu: GEMV_NORM_SWIGLU_KERNEL,
  rope: GEMV_NORM_ROPE_KERNEL,
  "rope-qkv": GEMV_NORM_ROPE_QKV_KERNEL,
};

function program(c: Case): string {
  const T = c.dtype === "bf16" ? "__nv_bfloat16" : "__half";
  const spec = SPECS[c.variant];
  const header = spec.header.replace(
    /__device__ __forceinline__ uint4 pv_load_stream\(const uint4\* p\) \{[\s\S]*?\n\}\n/,
    "__device__ __forceinline__ uint4 pv_load_stream(const uint4* p) { return *p; }\n",
  );
  if (header === spec.header) throw new Error("pv_load_stream not found in the kernel header");
  const kvs = c.n - (c.rotated ?? 0);
  const qs = (c.rotated ?? 0) - kvs;
  const toF = c.dtype === "bf16" ? "__bfloat162float" : "__half2float";
  const fromF = c.dtype === "bf16" ? "__float2bfloat16" : "__float2half";
  const normed = !["plain", "residual"].includes(c.variant);
  const hd = c.hd ?? 2;
  const outN = c.variant === "swiglu" ? c.n / 2 : c.n;
  const constants = `constexpr int M = ${c.m}, N = ${c.n}, K = ${c.k}, ROWS = ${c.rows}, GROUP = ${c.group};
  constexpr int EPS_BITS = ${bits(EPS)}, HD = ${hd}, ROTATED = ${c.rotated ?? 0}, POS_SCALE_BITS = ${bits(c.posScale ?? 1)};
  constexpr bool TRADITIONAL = ${c.traditional ? "true" : "false"};
  constexpr int QS = ${qs}, KVS = ${kvs};`;
  const kernel = (name: string, warps: string, source: string, bucket = c.m) => `
void ${name}(const ${T}* x, const uint32_t* w, const ${T}* scales, const ${T}* biases, const ${T}* res, const ${T}* norm,
            const int32_t* pos, const float* inv_freq, const float* rope_cs, ${T}* y) {
  using T = ${T};
  ${constants.replace(`M = ${c.m},`, `M = ${bucket},`)}
  const int x_shape[2] = {${c.m}, ${c.k}};
  constexpr int x_ndim = 2;
  (void)x_shape;
  ${warps}
  ${T}* q = y; ${T}* k = y + ${c.m} * QS; ${T}* v = y + ${c.m} * (QS + KVS);
  (void)q; (void)k; (void)v; (void)QS; (void)KVS; (void)res; (void)norm; (void)pos; (void)inv_freq; (void)rope_cs;
  (void)HD; (void)ROTATED; (void)POS_SCALE_BITS; (void)TRADITIONAL; (void)EPS_BITS;
${source}
}`;
  const variant = spec.variant ?? {};
  const other = c.mma
    ? kernel("split", `constexpr int WARPS = ${c.mma};`, gemvSource(variant, "mma"), mmaBucket(c.m))
    : kernel(
        "split",
        `constexpr int SPLIT = ${c.split}, WARPS = ${c.groups * c.split}, LOADS = ${c.loads ?? 8};`,
        gemvSource(variant, "split"),
      );
  return `#include "${EMULATION_HEADER}"
#include <cstdio>
#include <random>
#include <set>
#include <tuple>
${header}${c.mma ? GEMV_MMA_HEADER : ""}
namespace mlx::core::cu {
${kernel("unsplit", "constexpr int WARPS = 4;", spec.source)}
${other}
}  // namespace mlx::core::cu
int main() {
  ${constants}
  constexpr int OUT_N = ${outN}, G = ${c.groups}, SPLIT = ${c.split};
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  std::vector<${T}> x(M * K), s(N * (K / GROUP)), b(N * (K / GROUP)), ys(M * OUT_N), yu(M * OUT_N), g(K), res(M * N);
  std::vector<uint32_t> w(N * (K / 8));
  std::vector<int32_t> pos(M);
  std::vector<float> inv_freq(HD / 2);
  for (auto& v : x) v = ${fromF}(${normed ? "4.f * normal(rng) + 1.f" : "normal(rng)"});
  for (auto& v : g) v = ${fromF}(0.5f + uni(rng));
  for (auto& v : res) v = ${fromF}(2.f * normal(rng));
  for (auto& v : w) v = rng();
  for (int m = 0; m < M; ++m) pos[m] = 37 + 1000 * m;
  for (int i = 0; i < HD / 2; ++i) inv_freq[i] = std::pow(10000.f, -2.f * i / HD);
${ropeTableCode("HD", `float(${c.posScale ?? 1})`)}  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = ${fromF}(0.005f + 0.025f * uni(rng));
    b[i] = ${fromF}(-8.f * ${toF}(s[i]) + 0.1f * normal(rng));
  }
  for (auto& v : ys) v = ${fromF}(NAN);
  for (auto& v : yu) v = ${fromF}(NAN);
  // Split blocks to run (all, or a few), and the unsplit blocks (4 warps of ROWS rows) over the same row groups.
  const int groups_total = N / ROWS;
  const int nb = (groups_total + G - 1) / G;
  std::set<int> pick;
  if (${c.some ? "true" : "false"}) {
    for (int p : {0, 1, nb / 3 - 1, nb / 3, 2 * nb / 3 - 1, 2 * nb / 3, nb / 2, nb - 2, nb - 1}) if (p >= 0 && p < nb) pick.insert(p);
  } else {
    for (int p = 0; p < nb; ++p) pick.insert(p);
  }
  std::vector<int> sp(pick.begin(), pick.end());
  std::set<int> upick;
  int expected = 0;
  for (int p : sp)
    for (int gi = 0; gi < G; ++gi)
      if ((p * G + gi) * ROWS < N) { upick.insert((p * G + gi) / 4); expected += M * ${c.variant === "swiglu" ? "ROWS / 2" : "ROWS"}; }
  std::vector<int> up(upick.begin(), upick.end());
  auto args = [&](std::vector<${T}>& y) { return std::make_tuple(x.data(), w.data(), s.data(), b.data(), res.data(), g.data(), pos.data(), inv_freq.data(), rope_cs.data(), y.data()); };
  ${
    c.mma
      ? `emu_launch(N / 16 * ${c.mma} * 32, ${c.mma} * 32, [&] { std::apply(mlx::core::cu::split, args(ys)); });`
      : `emu_launch(sp.size() * G * SPLIT * 32, G * SPLIT * 32, [&] {
    blockIdx.x = sp[blockIdx.x];
    std::apply(mlx::core::cu::split, args(ys));
  });`
  }
  emu_launch(up.size() * 4 * 32, 4 * 32, [&] {
    blockIdx.x = up[blockIdx.x];
    std::apply(mlx::core::cu::unsplit, args(yu));
  });
  double err = 0, ref2 = 0, dbase = 0, base2 = 0;
  int written = 0, bad = 0;
  std::vector<double> prod(N);
  for (int m = 0; m < M; ++m) {
    double ss = 0;
    for (int k = 0; k < K; ++k) ss += double(${toF}(x[m * K + k])) * double(${toF}(x[m * K + k]));
    const double r = ${normed ? `1.0 / std::sqrt(ss / K + ${EPS})` : "1.0"};
    for (int n = 0; n < N; ++n) {
      double acc = 0;
      for (int k = 0; k < K; ++k) {
        const uint32_t q = (w[n * (K / 8) + k / 8] >> (4 * (k % 8))) & 15u;
        const int gi = n * (K / GROUP) + k / GROUP;
        const double xn = double(${toF}(x[m * K + k])) * ${normed ? `double(${toF}(g[k])) * r` : "1.0"};
        acc += (double(${toF}(s[gi])) * q + double(${toF}(b[gi]))) * xn;
      }
      prod[n] = acc;
    }
    for (int n = 0; n < OUT_N; ++n) {
      double ref = prod[n];
      ${
        c.variant === "residual"
          ? `ref += double(${toF}(res[m * N + n]));`
          : c.variant === "swiglu"
            ? "ref = prod[n] / (1.0 + std::exp(-prod[n])) * prod[n + N / 2];"
            : c.variant === "rope" || c.variant === "rope-qkv"
              ? `if (n < ROTATED) {
        const int head = n / HD, d = n % HD;
        const int i = TRADITIONAL ? d / 2 : d % (HD / 2);
        const bool second = TRADITIONAL ? d % 2 == 1 : d >= HD / 2;
        const int partner = head * HD + (TRADITIONAL ? (second ? d - 1 : d + 1) : (second ? d - HD / 2 : d + HD / 2));
        const double theta = double(${c.posScale ?? 1}) * pos[m] * double(inv_freq[i]);
        ref = second ? prod[partner] * std::sin(theta) + prod[n] * std::cos(theta)
                     : prod[n] * std::cos(theta) - prod[partner] * std::sin(theta);
      }`
              : ""
      }
      const int at = ${
        c.variant === "rope-qkv"
          ? "n < QS ? m * QS + n : n < QS + KVS ? M * QS + m * KVS + n - QS : M * (QS + KVS) + m * KVS + n - QS - KVS"
          : "m * OUT_N + n"
      };
      const double got = ${toF}(ys[at]);
      if (std::isnan(got)) continue;
      written++;
      const double base = ${toF}(yu[at]);
      if (std::isnan(base)) { bad++; continue; }
      err += (got - ref) * (got - ref);
      ref2 += ref * ref;
      dbase += (got - base) * (got - base);
      base2 += base * base;
    }
  }
  std::printf("{\\"rel\\": %.3e, \\"relBase\\": %.3e, \\"written\\": %d, \\"expected\\": %d, \\"bad\\": %d}\\n",
              std::sqrt(err / ref2), std::sqrt(dbase / base2), written, expected, bad);
}
`;
}

interface Result {
  rel: number;
  relBase: number;
  written: number;
  expected: number;
  bad: number;
}

function run(c: Case): Result {
  const name = `${c.variant}-${c.dtype}-${c.m}-${c.n}-${c.k}-r${c.rows}-s${c.split}-g${c.groups}-l${c.loads ?? 8}-${c.group}${c.mma ? `-mma${c.mma}` : ""}`;
  return runEmulated("gemv-split-emulated", name, program(c));
}

// As the unsplit kernel's tests (float64 reference); split vs unsplit: a few ulps of the sums' order.
const TOLERANCE = { f16: 3e-3, bf16: 2e-2 };
const BASE_TOLERANCE = { f16: 2e-3, bf16: 1e-2 };

const phi3 = { dtype: "f16" as const, m: 1, rows: 4, group: 64, some: true };
const phi3Rope = { hd: 96, rotated: 6144 };

describe.skipIf(!emulationCompiler)("split-K 4-bit GEMV (decode), emulated on the CPU", () => {
  const cases: Case[] = [
    // Every block: ragged chunks (34 per row), idle threads (SPAN 128 > 96 chunks), idle row groups, several rounds.
    { variant: "plain", dtype: "f16", m: 1, n: 64, k: 3072, rows: 4, split: 3, groups: 4, group: 64 },
    { variant: "plain", dtype: "bf16", m: 2, n: 20, k: 1088, rows: 2, split: 2, groups: 4, group: 64 },
    { variant: "norm", dtype: "f16", m: 1, n: 40, k: 3072, rows: 2, split: 4, groups: 2, group: 64 },
    { variant: "residual", dtype: "f16", m: 1, n: 64, k: 8192, rows: 4, split: 2, groups: 4, loads: 16, group: 64 },
    { variant: "residual", dtype: "bf16", m: 1, n: 24, k: 8192, rows: 4, split: 2, groups: 2, group: 128 },
    { variant: "swiglu", dtype: "f16", m: 1, n: 48, k: 3072, rows: 4, split: 3, groups: 4, group: 64 },
    { variant: "swiglu", dtype: "bf16", m: 2, n: 20, k: 1088, rows: 2, split: 2, groups: 2, group: 32 },
    {
      ...{
        variant: "rope" as const,
        dtype: "f16" as const,
        m: 1,
        n: 96,
        k: 512,
        rows: 2,
        split: 2,
        groups: 4,
        group: 64,
      },
      ...{ hd: 16, rotated: 64, traditional: true, posScale: 0.25 },
    },
    {
      ...{ variant: "rope-qkv" as const, dtype: "f16" as const, m: 1, n: 384, k: 1024, rows: 4, split: 2, groups: 4 },
      ...{ group: 64, hd: 96, rotated: 288 },
    },
    {
      ...{ variant: "rope-qkv" as const, dtype: "bf16" as const, m: 1, n: 192, k: 512, rows: 2, split: 2, groups: 4 },
      ...{ group: 32, hd: 32, rotated: 160 },
    },
    // Phi-3-mini (a few blocks each) at the splits PENSIEVE_GEMV_SPLITK gives: auto (3 at K = 3072, 8 at 8192), 2, 4, 8.
    { ...phi3, variant: "residual", n: 3072, k: 3072, split: 3, groups: 4 }, // o
    { ...phi3, variant: "residual", n: 3072, k: 3072, split: 8, groups: 2 },
    { ...phi3, variant: "residual", n: 3072, k: 8192, split: 8, groups: 2 }, // down
    { ...phi3, variant: "residual", n: 3072, k: 8192, split: 2, groups: 4 },
    { ...phi3, variant: "residual", n: 3072, k: 8192, split: 4, groups: 4, loads: 16 },
    { ...phi3, variant: "swiglu", n: 16384, k: 3072, split: 3, groups: 4 }, // gate|up
    { ...phi3, variant: "swiglu", n: 16384, k: 3072, split: 4, groups: 4 },
    { ...phi3, ...phi3Rope, variant: "rope-qkv", n: 9216, k: 3072, split: 3, groups: 4 }, // q|k|v, decode
    { ...phi3, ...phi3Rope, variant: "rope-qkv", n: 9216, k: 3072, split: 2, groups: 4 },
    { ...phi3, ...phi3Rope, variant: "rope", dtype: "bf16", n: 9216, k: 3072, split: 8, groups: 2 },
    { ...phi3, variant: "norm", n: 32064, k: 3072, split: 3, groups: 4 }, // lm_head
  ];
  for (const c of cases) {
    const label = `${c.variant} ${c.dtype} M=${c.m} N=${c.n} K=${c.k} rows ${c.rows} split ${c.split} x ${c.groups} groups${c.loads ? `, ${c.loads} loads` : ""}${c.some ? " (some blocks)" : ""}`;
    test(label, () => {
      const r = run(c);
      expect(r.written).toBe(r.expected);
      expect(r.bad).toBe(0);
      expect(r.rel).toBeLessThan(TOLERANCE[c.dtype]);
      expect(r.relBase).toBeLessThan(BASE_TOLERANCE[c.dtype]);
    }, 120_000);
  }
});

// The tensor-core body for 1..32 rows of x (decode, a verify pass, a batch): every variant against float64
// and the scalar kernel; the sums differ in order and in where they round (16-bit weights, float sums).
const MMA_TOLERANCE = { f16: 3e-3, bf16: 2e-2 };
const MMA_BASE_TOLERANCE = { f16: 3e-3, bf16: 2e-2 };
describe.skipIf(!emulationCompiler)("tensor-core 4-bit GEMV (1-32 rows of x), emulated on the CPU", () => {
  const all = { split: 1, groups: 4 };
  const cases: Case[] = [
    { ...all, variant: "plain", dtype: "f16", m: 2, n: 32, k: 3072, rows: 2, group: 64, mma: 4 },
    { ...all, variant: "residual", dtype: "f16", m: 1, n: 32, k: 8192, rows: 2, group: 64, mma: 8 },
    {
      ...{ ...all, variant: "rope-qkv" as const, dtype: "f16" as const, m: 1, n: 288, k: 1024, rows: 2 },
      ...{ group: 64, hd: 96, rotated: 192, mma: 4 },
    },
    { ...all, variant: "plain", dtype: "bf16", m: 9, n: 48, k: 1088, rows: 4, group: 64, mma: 2 },
    { ...all, variant: "norm", dtype: "f16", m: 5, n: 32, k: 576, rows: 2, group: 32, mma: 1 },
    { ...all, variant: "norm", dtype: "f16", m: 16, n: 16, k: 3072, rows: 2, group: 64, mma: 8 },
    { ...all, variant: "residual", dtype: "f16", m: 3, n: 32, k: 8192, rows: 2, group: 64, mma: 8 },
    { ...all, variant: "residual", dtype: "bf16", m: 32, n: 16, k: 1024, rows: 4, group: 128, mma: 2 },
    { ...all, variant: "residual", dtype: "f16", m: 20, n: 32, k: 1024, rows: 2, group: 64, mma: 2 }, // bucket 32
    { ...all, variant: "swiglu", dtype: "f16", m: 4, n: 64, k: 3072, rows: 2, group: 64, mma: 4 },
    { ...all, variant: "swiglu", dtype: "bf16", m: 12, n: 32, k: 1088, rows: 4, group: 32, mma: 2 },
    {
      ...{ ...all, variant: "rope" as const, dtype: "f16" as const, m: 7, n: 96, k: 512, rows: 2, group: 64, mma: 2 },
      ...{ hd: 16, rotated: 64, traditional: true, posScale: 0.25 },
    },
    {
      ...{ ...all, variant: "rope-qkv" as const, dtype: "f16" as const, m: 9, n: 288, k: 1024, rows: 2 },
      ...{ group: 64, hd: 96, rotated: 192, mma: 4 },
    },
    {
      ...{ ...all, variant: "rope-qkv" as const, dtype: "bf16" as const, m: 2, n: 192, k: 512, rows: 4 },
      ...{ group: 32, hd: 32, rotated: 128, mma: 2 },
    },
  ];
  for (const c of cases) {
    const label = `${c.variant} ${c.dtype} M=${c.m} N=${c.n} K=${c.k} rows ${c.rows}, ${c.mma} warps a tile`;
    test(label, () => {
      const r = run(c);
      expect(r.written).toBe(r.expected);
      expect(r.bad).toBe(0);
      expect(r.rel).toBeLessThan(MMA_TOLERANCE[c.dtype]);
      expect(r.relBase).toBeLessThan(MMA_BASE_TOLERANCE[c.dtype]);
    }, 120_000);
  }
});

describe("PENSIEVE_GEMV_SPLITK (splitConfig)", () => {
  const base = { rows: 4, warps: 4 };
  test("off unless set", () => {
    expect(splitConfig(base, 3072, {})).toEqual(base);
    expect(splitConfig(base, 3072, { PENSIEVE_GEMV_SPLITK: "1" })).toEqual(base);
  });
  test("auto: K/1024 warps a row group, at most 8, none below K = 2048", () => {
    expect(splitConfig(base, 3072, { PENSIEVE_GEMV_SPLITK: "auto" })).toEqual({
      rows: 4,
      warps: 12,
      split: 3,
      loads: 8,
    });
    expect(splitConfig(base, 8192, { PENSIEVE_GEMV_SPLITK: "auto" })).toEqual({
      rows: 4,
      warps: 16,
      split: 8,
      loads: 8,
    });
    expect(splitConfig(base, 1024, { PENSIEVE_GEMV_SPLITK: "auto" })).toEqual(base);
  });
  test("explicit split, groups, loads, rows; bad values throw", () => {
    const env = { PENSIEVE_GEMV_SPLITK: "4", PENSIEVE_GEMV_SPLITK_GROUPS: "2", PENSIEVE_GEMV_SPLITK_LOADS: "16" };
    expect(splitConfig(base, 3072, env)).toEqual({ rows: 4, warps: 8, split: 4, loads: 16 });
    expect(splitConfig(base, 3072, { ...env, PENSIEVE_GEMV_SPLITK_ROWS: "2" }).rows).toBe(2);
    expect(() => splitConfig(base, 3072, { PENSIEVE_GEMV_SPLITK: "x" })).toThrow();
    expect(() => splitConfig(base, 3072, { PENSIEVE_GEMV_SPLITK: "8", PENSIEVE_GEMV_SPLITK_GROUPS: "8" })).toThrow();
  });
});

describe("one-row launch shapes (oneRowConfig, gemvConfig)", () => {
  test("one row of x: few output rows (o, down) take 2 rows a warp, the wide products 4", () => {
    expect(gemvConfig(3072, 1, 8192)).toEqual({ rows: 2, warps: 4 });
    expect(gemvConfig(3072, 1, 3072)).toEqual({ rows: 2, warps: 4 });
    expect(gemvConfig(9216, 1, 3072)).toEqual({ rows: 4, warps: 4 });
    expect(gemvConfig(16384, 1, 3072)).toEqual({ rows: 4, warps: 4 });
  });
});

describe("PENSIEVE_GEMV_ONE_ROW (oneRowOverride)", () => {
  const env = { PENSIEVE_GEMV_ONE_ROW: "3072x8192:2:16:8, 3072x3072:2:8" };
  test("a listed shape gets its launch, split or not; others none", () => {
    expect(oneRowOverride(3072, 8192, env)).toEqual({ rows: 2, warps: 16, split: 8, loads: 8 });
    expect(oneRowOverride(3072, 3072, env)).toEqual({ rows: 2, warps: 8 });
    expect(oneRowOverride(9216, 3072, env)).toBeNull();
    expect(oneRowOverride(3072, 8192, {})).toBeNull();
  });
  test("a malformed entry throws, naming it", () => {
    expect(() => oneRowOverride(1, 1, { PENSIEVE_GEMV_ONE_ROW: "3072x8192:3:4" })).toThrow("3072x8192:3:4");
    expect(() => oneRowOverride(1, 1, { PENSIEVE_GEMV_ONE_ROW: "3072x8192:2:6:4" })).toThrow("NxK:rows:warps");
  });
});

describe("PENSIEVE_GEMV_MMA (mmaFromRows, mmaWarps)", () => {
  test("from 3 rows of x by default; N from N; 0 never", () => {
    expect(mmaFromRows({})).toBe(3);
    expect(mmaFromRows({ PENSIEVE_GEMV_MMA: "0" })).toBe(Number.POSITIVE_INFINITY);
    expect(mmaFromRows({ PENSIEVE_GEMV_MMA: "x" })).toBe(Number.POSITIVE_INFINITY);
    expect(mmaFromRows({ PENSIEVE_GEMV_MMA: "1" })).toBe(1);
    expect(mmaFromRows({ PENSIEVE_GEMV_MMA: "2" })).toBe(2);
  });
  test("warps a tile: doubled until a launch has 2,048 warps, at most 8 and at most the k-blocks", () => {
    expect(mmaWarps(3072, 8192)).toBe(8); // down: 192 tiles
    expect(mmaWarps(9216, 3072)).toBe(4); // q|k|v: 576 tiles
    expect(mmaWarps(32064, 3072)).toBe(2); // lm_head: 2,004 tiles
    expect(mmaWarps(64, 256)).toBe(2); // 2 k-blocks
  });
});
