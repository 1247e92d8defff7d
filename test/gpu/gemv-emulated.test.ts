// The 4-bit GEMV's CUDA source (src/mlx/kernels-gemv.ts), run on the CPU through
// a small CUDA emulation (cuda-emulation.h, g++), against a float64 reference
// on the same fp16/bf16 inputs. This checks indexing, nibble order and the
// arithmetic where there is no GPU; test/gpu/gemv.test.ts runs the real kernel
// against MLX's quantized_matmul on the device.
import { describe, expect, test } from "bun:test";
import { GEMV_KERNEL, GEMV_RMS_NORM_KERNEL } from "../../src/mlx/kernels-gemv";
import { EMULATION_HEADER, emulationCompiler, runEmulated } from "./emulate";

interface Case {
  dtype: "f16" | "bf16";
  m: number;
  n: number;
  k: number;
  rows: number;
  warps: number;
  group: number;
  /** RMSNorm fused in front (GEMV_RMS_NORM_KERNEL). */
  norm?: boolean;
}

const EPS = 1e-5;
const EPS_BITS = new Int32Array(Float32Array.of(EPS).buffer)[0];

function program(c: Case): string {
  const T = c.dtype === "bf16" ? "__nv_bfloat16" : "__half";
  const spec = c.norm ? GEMV_RMS_NORM_KERNEL : GEMV_KERNEL;
  const header = spec.header.replace(
    /__device__ __forceinline__ uint4 pv_load_stream\(const uint4\* p\) \{[\s\S]*?\n\}\n/,
    "__device__ __forceinline__ uint4 pv_load_stream(const uint4* p) { return *p; }\n",
  );
  if (header === spec.header) throw new Error("pv_load_stream not found in the kernel header");
  const toF = c.dtype === "bf16" ? "__bfloat162float" : "__half2float";
  const fromF = c.dtype === "bf16" ? "__float2bfloat16" : "__float2half";
  return `#include "${EMULATION_HEADER}"
#include <cstdio>
#include <random>
${header}
namespace mlx::core::cu {
void kernel(const ${T}* x, const uint32_t* w, const ${T}* scales, const ${T}* biases, const ${T}* norm, ${T}* y) {
  using T = ${T};
  constexpr int M = ${c.m}, N = ${c.n}, K = ${c.k}, ROWS = ${c.rows}, WARPS = ${c.warps}, GROUP = ${c.group};
  constexpr int EPS_BITS = ${EPS_BITS};
  (void)norm;
${spec.source}
}
}  // namespace mlx::core::cu
int main() {
  constexpr int M = ${c.m}, N = ${c.n}, K = ${c.k}, ROWS = ${c.rows}, WARPS = ${c.warps}, GROUP = ${c.group};
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  std::vector<${T}> x(M * K), s(N * (K / GROUP)), b(N * (K / GROUP)), y(M * N), g(K);
  std::vector<uint32_t> w(N * (K / 8));
  for (auto& v : x) v = ${fromF}(${c.norm ? "4.f * normal(rng) + 1.f" : "normal(rng)"});
  for (auto& v : g) v = ${fromF}(0.5f + uni(rng));
  for (auto& v : w) v = rng();
  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = ${fromF}(0.005f + 0.025f * uni(rng));
    b[i] = ${fromF}(-8.f * ${toF}(s[i]) + 0.1f * normal(rng));
  }
  for (auto& v : y) v = ${fromF}(NAN);
  const int warps_total = N / ROWS;
  const unsigned blocks = (warps_total + WARPS - 1) / WARPS;
  emu_launch(blocks * WARPS * 32, WARPS * 32, [&] { mlx::core::cu::kernel(x.data(), w.data(), s.data(), b.data(), g.data(), y.data()); });
  double err = 0, ref2 = 0;
  int unwritten = 0;
  for (int m = 0; m < M; ++m) {
    double ss = 0;
    for (int k = 0; k < K; ++k) ss += double(${toF}(x[m * K + k])) * double(${toF}(x[m * K + k]));
    const double r = ${c.norm ? `1.0 / std::sqrt(ss / K + ${EPS})` : "1.0"};
    for (int n = 0; n < N; ++n) {
      double ref = 0;
      for (int k = 0; k < K; ++k) {
        const uint32_t q = (w[n * (K / 8) + k / 8] >> (4 * (k % 8))) & 15u;
        const int gi = n * (K / GROUP) + k / GROUP;
        const double xn = double(${toF}(x[m * K + k])) * ${c.norm ? `double(${toF}(g[k])) * r` : "1.0"};
        ref += (double(${toF}(s[gi])) * q + double(${toF}(b[gi]))) * xn;
      }
      const double got = ${toF}(y[m * N + n]);
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
  const name = `${c.dtype}-${c.m}-${c.n}-${c.k}-${c.rows}-${c.group}${c.norm ? "-norm" : ""}`;
  return runEmulated("gemv-emulated", name, program(c));
}

// fp16: packed 16-bit products of 4 terms, then float; bf16 keeps 8 bits of mantissa.
const TOLERANCE = { f16: 3e-3, bf16: 2e-2 };

describe.skipIf(!emulationCompiler)("4-bit GEMV source, emulated on the CPU", () => {
  const cases: Case[] = [
    { dtype: "f16", m: 1, n: 64, k: 3072, rows: 4, warps: 4, group: 64 }, // 3 chunks per lane, 4 rows per warp
    { dtype: "f16", m: 2, n: 20, k: 1088, rows: 2, warps: 4, group: 64 }, // ragged chunks (34 per row), idle warps
    { dtype: "bf16", m: 3, n: 8, k: 8192, rows: 2, warps: 4, group: 128 }, // 8 chunks per lane, loads in two rounds
    { dtype: "f16", m: 1, n: 16, k: 256, rows: 4, warps: 2, group: 32 },
    // RMSNorm in front: x with mean 1 and spread 4 (not normed), norm weights 0.5..1.5.
    { dtype: "f16", m: 2, n: 40, k: 3072, rows: 2, warps: 4, group: 64, norm: true }, // 20 warps: idle warps in the last block
    { dtype: "bf16", m: 1, n: 16, k: 1088, rows: 4, warps: 2, group: 64, norm: true },
    // A speculative verify pass (PENSIEVE_GPU_FUSED_VERIFY): 9 and 16 rows of x, 2 rows per warp (gemvConfig), or 1.
    { dtype: "f16", m: 9, n: 24, k: 3072, rows: 2, warps: 4, group: 64, norm: true },
    { dtype: "bf16", m: 16, n: 12, k: 1088, rows: 1, warps: 4, group: 64 },
    { dtype: "f16", m: 16, n: 8, k: 8192, rows: 2, warps: 4, group: 64 },
  ];
  for (const c of cases) {
    test(`${c.dtype} M=${c.m} N=${c.n} K=${c.k} rows/warp ${c.rows} group ${c.group}${c.norm ? ", RMSNorm fused" : ""}`, () => {
      const r = run(c);
      expect(r.unwritten).toBe(0);
      expect(r.rel).toBeLessThan(TOLERANCE[c.dtype]);
    }, 120_000);
  }
});
