// The fused GEMV variants' CUDA source (src/mlx/kernels-gemv-fused.ts: residual
// epilogue, RMSNorm + SwiGLU, RMSNorm + RoPE) run on the CPU through the CUDA
// emulation (cuda-emulation.h, g++) against float64 on the same fp16/bf16
// inputs. test/gpu/fused.test.ts runs the real kernels against MLX's unfused ops.
import { describe, expect, test } from "bun:test";
import {
  GEMV_NORM_ROPE_KERNEL,
  GEMV_NORM_ROPE_QKV_KERNEL,
  GEMV_NORM_SWIGLU_KERNEL,
  GEMV_RESIDUAL_KERNEL,
} from "../../src/mlx/kernels-gemv-fused";
import { EMULATION_HEADER, emulationCompiler, ropeTableCode, runEmulated } from "./emulate";

type Variant = "residual" | "swiglu" | "rope" | "rope-qkv";
interface Case {
  variant: Variant;
  dtype: "f16" | "bf16";
  m: number;
  n: number;
  k: number;
  rows: number;
  warps: number;
  group: number;
  /** rope: head dim, rotated rows, traditional pairs, position scale. */
  hd?: number;
  rotated?: number;
  traditional?: boolean;
  posScale?: number;
  /** Each row's position: 37 + 1000 m (default), or 500 + m as in a verify pass (offset + m). */
  consecutive?: boolean;
}

const EPS = 1e-5;
const bits = (v: number) => new Int32Array(Float32Array.of(v).buffer)[0];

function program(c: Case): string {
  const T = c.dtype === "bf16" ? "__nv_bfloat16" : "__half";
  const spec = {
    residual: GEMV_RESIDUAL_KERNEL,
    swiglu: GEMV_NORM_SWIGLU_KERNEL,
    rope: GEMV_NORM_ROPE_KERNEL,
    "rope-qkv": GEMV_NORM_ROPE_QKV_KERNEL,
  }[c.variant];
  // rope-qkv: q [M, QS], then k and v [M, KVS] one after another in y; rows below ROTATED are q and k.
  const kvs = c.n - (c.rotated ?? 0);
  const qs = (c.rotated ?? 0) - kvs;
  const header = spec.header.replace(
    /__device__ __forceinline__ uint4 pv_load_stream\(const uint4\* p\) \{[\s\S]*?\n\}\n/,
    "__device__ __forceinline__ uint4 pv_load_stream(const uint4* p) { return *p; }\n",
  );
  const toF = c.dtype === "bf16" ? "__bfloat162float" : "__half2float";
  const fromF = c.dtype === "bf16" ? "__float2bfloat16" : "__float2half";
  const normed = c.variant !== "residual";
  const hd = c.hd ?? 2;
  const outN = c.variant === "swiglu" ? c.n / 2 : c.n;
  const constants = `constexpr int M = ${c.m}, N = ${c.n}, K = ${c.k}, ROWS = ${c.rows}, WARPS = ${c.warps}, GROUP = ${c.group};
  constexpr int EPS_BITS = ${bits(EPS)}, HD = ${hd}, ROTATED = ${c.rotated ?? 0}, POS_SCALE_BITS = ${bits(c.posScale ?? 1)};
  constexpr bool TRADITIONAL = ${c.traditional ? "true" : "false"};
  constexpr int QS = ${qs}, KVS = ${kvs};`;
  return `#include "${EMULATION_HEADER}"
#include <cstdio>
#include <random>
${header}
namespace mlx::core::cu {
void kernel(const ${T}* x, const uint32_t* w, const ${T}* scales, const ${T}* biases, const ${T}* res, const ${T}* norm,
            const int32_t* pos, const float* inv_freq, const float* rope_cs, ${T}* y) {
  using T = ${T};
  ${constants}
  ${T}* q = y; ${T}* k = y + M * QS; ${T}* v = y + M * (QS + KVS);
  (void)q; (void)k; (void)v; (void)QS; (void)KVS;
  (void)res; (void)norm; (void)pos; (void)inv_freq; (void)rope_cs; (void)HD; (void)ROTATED; (void)POS_SCALE_BITS; (void)TRADITIONAL; (void)EPS_BITS;
${spec.source}
}
}  // namespace mlx::core::cu
int main() {
  ${constants}
  constexpr int OUT_N = ${outN};
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  std::vector<${T}> x(M * K), s(N * (K / GROUP)), b(N * (K / GROUP)), y(M * OUT_N), g(K), res(M * N);
  std::vector<uint32_t> w(N * (K / 8));
  std::vector<int32_t> pos(M);
  std::vector<float> inv_freq(HD / 2);
  for (auto& v : x) v = ${fromF}(${normed ? "4.f * normal(rng) + 1.f" : "normal(rng)"});
  for (auto& v : g) v = ${fromF}(0.5f + uni(rng));
  for (auto& v : res) v = ${fromF}(2.f * normal(rng));
  for (auto& v : w) v = rng();
  for (int m = 0; m < M; ++m) pos[m] = ${c.consecutive ? "500 + m" : "37 + 1000 * m"};
  for (int i = 0; i < HD / 2; ++i) inv_freq[i] = std::pow(10000.f, -2.f * i / HD);
${ropeTableCode("HD", `float(${c.posScale ?? 1})`)}  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = ${fromF}(0.005f + 0.025f * uni(rng));
    b[i] = ${fromF}(-8.f * ${toF}(s[i]) + 0.1f * normal(rng));
  }
  for (auto& v : y) v = ${fromF}(NAN);
  const int warps_total = N / ROWS;
  const unsigned blocks = (warps_total + WARPS - 1) / WARPS;
  emu_launch(blocks * WARPS * 32, WARPS * 32, [&] {
    mlx::core::cu::kernel(x.data(), w.data(), s.data(), b.data(), res.data(), g.data(), pos.data(), inv_freq.data(), rope_cs.data(), y.data());
  });
  double err = 0, ref2 = 0;
  int unwritten = 0;
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
            : `if (n < ROTATED) {
        const int head = n / HD, d = n % HD;
        const int i = TRADITIONAL ? d / 2 : d % (HD / 2);
        const bool second = TRADITIONAL ? d % 2 == 1 : d >= HD / 2;
        const int partner = head * HD + (TRADITIONAL ? (second ? d - 1 : d + 1) : (second ? d - HD / 2 : d + HD / 2));
        const double theta = double(${c.posScale ?? 1}) * pos[m] * double(inv_freq[i]);
        ref = second ? prod[partner] * std::sin(theta) + prod[n] * std::cos(theta)
                     : prod[n] * std::cos(theta) - prod[partner] * std::sin(theta);
      }`
      }
      const int at = ${
        c.variant === "rope-qkv"
          ? "n < QS ? m * QS + n : n < QS + KVS ? M * QS + m * KVS + n - QS : M * (QS + KVS) + m * KVS + n - QS - KVS"
          : "m * OUT_N + n"
      };
      const double got = ${toF}(y[at]);
      if (std::isnan(got)) { unwritten++; continue; }
      err += (got - ref) * (got - ref);
      ref2 += ref * ref;
    }
  }
  std::printf("{\\"rel\\": %.3e, \\"unwritten\\": %d}\\n", std::sqrt(err / ref2), unwritten);
}
`;
}

function run(c: Case): { rel: number; unwritten: number } {
  const name = `${c.variant}-${c.dtype}-${c.m}-${c.n}-${c.k}-${c.rows}-${c.group}${c.traditional ? "-trad" : ""}${c.consecutive ? "-seq" : ""}`;
  return runEmulated("gemv-fused-emulated", name, program(c));
}

// fp16: packed 16-bit products of 4 terms, then float, and one rounding of the
// product before the epilogue (as MLX's unfused ops round); bf16 keeps 8 bits of mantissa.
const TOLERANCE = { f16: 3e-3, bf16: 2e-2 };

describe.skipIf(!emulationCompiler)("fused 4-bit GEMV variants, emulated on the CPU", () => {
  const cases: Case[] = [
    { variant: "residual", dtype: "f16", m: 1, n: 64, k: 3072, rows: 4, warps: 4, group: 64 },
    { variant: "residual", dtype: "bf16", m: 3, n: 20, k: 1088, rows: 2, warps: 4, group: 64 }, // idle warps
    { variant: "swiglu", dtype: "f16", m: 2, n: 48, k: 3072, rows: 4, warps: 4, group: 64 },
    { variant: "swiglu", dtype: "bf16", m: 1, n: 20, k: 1088, rows: 2, warps: 2, group: 32 },
    // q|k|v of 2 q heads, 1 kv head of 32: rows 0..95 rotated, 96..127 (v) pass through.
    { variant: "rope", dtype: "f16", m: 2, n: 128, k: 1024, rows: 4, warps: 4, group: 64, hd: 32, rotated: 96 },
    {
      variant: "rope",
      dtype: "f16",
      m: 1,
      n: 96,
      k: 512,
      rows: 2,
      warps: 4,
      group: 64,
      hd: 16,
      rotated: 64,
      traditional: true,
      posScale: 0.25,
    },
    { variant: "rope", dtype: "bf16", m: 1, n: 192, k: 3072, rows: 4, warps: 4, group: 64, hd: 96, rotated: 96 }, // Phi-3's head_dim
    // Three outputs (decode): 2 q heads and 1 kv head of 96, two rows.
    { variant: "rope-qkv", dtype: "f16", m: 2, n: 384, k: 1024, rows: 4, warps: 4, group: 64, hd: 96, rotated: 288 },
    // GQA 4:1, head dim 32.
    { variant: "rope-qkv", dtype: "bf16", m: 1, n: 192, k: 512, rows: 2, warps: 4, group: 32, hd: 32, rotated: 160 },
    // A decode step's o and down at N <= 4096 (oneRowConfig): one row of x at 2 rows a warp, down's K.
    { variant: "residual", dtype: "f16", m: 1, n: 48, k: 8192, rows: 2, warps: 4, group: 64 },
    // A speculative verify pass (PENSIEVE_GPU_FUSED_VERIFY): 9 and 16 rows of x at positions offset + m,
    // 2 rows per warp, as gemvConfig / pairedConfig give past 8 rows.
    { variant: "residual", dtype: "f16", m: 16, n: 24, k: 8192, rows: 2, warps: 4, group: 64 },
    { variant: "swiglu", dtype: "bf16", m: 9, n: 24, k: 3072, rows: 2, warps: 4, group: 64 },
    {
      variant: "rope",
      dtype: "f16",
      m: 9,
      n: 384,
      k: 1024,
      rows: 2,
      warps: 4,
      group: 64,
      hd: 96,
      rotated: 288,
      consecutive: true,
    },
    {
      variant: "rope",
      dtype: "bf16",
      m: 16,
      n: 192,
      k: 512,
      rows: 2,
      warps: 4,
      group: 32,
      hd: 32,
      rotated: 160,
      consecutive: true,
    },
  ];
  for (const c of cases) {
    test(`${c.variant} ${c.dtype} M=${c.m} N=${c.n} K=${c.k} rows/warp ${c.rows} group ${c.group}${c.traditional ? " traditional" : ""}`, () => {
      const r = run(c);
      expect(r.unwritten).toBe(0);
      expect(r.rel).toBeLessThan(TOLERANCE[c.dtype]);
    }, 120_000);
  }
});
