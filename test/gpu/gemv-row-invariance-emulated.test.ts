// Greedy speculation on a GPU is exactly plain decoding only if a verify pass (one row of L tokens: the
// GEMVs at M = L rows of x) sums every output as the one-token step (M = 1) does. This checks that each
// GEMV body does so bit for bit at the launch shapes the decoder gives it — the scalar body at 4 rows a
// warp (one row of x) against 2 (several), the tensor-core body at its one-row build against a bucketed
// one (rows read from x's shape) — and that the two bodies do not agree with each other bit for bit, which
// is why src/models/gpu-fused.ts keeps verify passes on the scalar body unless one-token steps take tensor
// cores too. Run on the CPU through the CUDA emulation (cuda-emulation.h, g++), whose 16-bit and float
// arithmetic is the GPU's; its mma sums in double and rounds once, so for the tensor-core body this checks the
// kernel's own order only (on the GPU, test/gpu/fused.test.ts's greedy speculation against plain decoding).
import { describe, expect, test } from "bun:test";
import { gemvSource } from "../../src/mlx/kernels-gemv";
import { GEMV_NORM_ROPE_KERNEL, GEMV_NORM_SWIGLU_KERNEL } from "../../src/mlx/kernels-gemv-fused";
import { GEMV_MMA_HEADER, mmaBucket } from "../../src/mlx/kernels-gemv-mma";
import { EMULATION_HEADER, emulationCompiler, ropeTableCode, runEmulated } from "./emulate";

const EPS_BITS = new Int32Array(Float32Array.of(1e-5).buffer)[0];
type Body = { kind: "scalar"; rows: number } | { kind: "mma"; warps: number; tiles?: number };

interface Case {
  variant: "swiglu" | "rope";
  m: number;
  n: number;
  k: number;
  one: Body;
  many: Body;
}

function program(c: Case): string {
  const spec = c.variant === "swiglu" ? GEMV_NORM_SWIGLU_KERNEL : GEMV_NORM_ROPE_KERNEL;
  const header = spec.header.replace(
    /__device__ __forceinline__ uint4 pv_load_stream\(const uint4\* p\) \{[\s\S]*?\n\}\n/,
    "__device__ __forceinline__ uint4 pv_load_stream(const uint4* p) { return *p; }\n",
  );
  const outN = c.variant === "swiglu" ? c.n / 2 : c.n;
  const variant = spec.variant ?? {};
  // One kernel function per (name, rows of x, body); x and pos point at the launch's first row.
  const kernel = (name: string, m: number, body: Body) => `
void ${name}(const __half* x, const uint32_t* w, const __half* scales, const __half* biases, const __half* norm,
             const int32_t* pos, const float* inv_freq, const float* rope_cs, __half* y) {
  using T = __half;
  constexpr int M = ${body.kind === "mma" ? mmaBucket(m) : m}, N = ${c.n}, K = ${c.k}, GROUP = 64;
  constexpr int ROWS = ${body.kind === "mma" ? 2 : body.rows}, WARPS = ${body.kind === "mma" ? body.warps : 4};
  constexpr int EPS_BITS = ${EPS_BITS}, HD = 32, ROTATED = ${c.n / 3}, POS_SCALE_BITS = 1065353216;
  constexpr bool TRADITIONAL = false;
  const int x_shape[2] = {${m}, ${c.k}};
  constexpr int x_ndim = 2;
  (void)x_shape; (void)HD; (void)ROTATED; (void)POS_SCALE_BITS; (void)TRADITIONAL; (void)pos; (void)inv_freq; (void)rope_cs;
${body.kind === "mma" ? gemvSource(variant, "mma", body.tiles ?? 1) : gemvSource(variant, "scalar")}
}`;
  const launch = (name: string, body: Body, xOff: string, posOff: string, yOff: string) =>
    body.kind === "mma"
      ? `emu_launch(N / 16 / ${body.tiles ?? 1} * ${body.warps} * 32, ${body.warps} * 32, [&] { ${name}(x.data() + ${xOff}, w.data(), s.data(), b.data(), g.data(), pos.data() + ${posOff}, inv_freq.data(), rope_cs.data() + (${posOff}) * 32, ${yOff}); });`
      : `emu_launch((N / ${body.rows} + 3) / 4 * 128, 128, [&] { ${name}(x.data() + ${xOff}, w.data(), s.data(), b.data(), g.data(), pos.data() + ${posOff}, inv_freq.data(), rope_cs.data() + (${posOff}) * 32, ${yOff}); });`;
  return `#include "${EMULATION_HEADER}"
#include <cstdio>
#include <random>
${header}${c.one.kind === "mma" || c.many.kind === "mma" ? GEMV_MMA_HEADER : ""}
namespace mlx::core::cu {
${kernel("one", 1, c.one)}
${kernel("many", c.m, c.many)}
}  // namespace mlx::core::cu
int main() {
  constexpr int M = ${c.m}, N = ${c.n}, K = ${c.k}, OUT_N = ${outN};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  std::vector<__half> x(M * K), s(N * (K / 64)), b(N * (K / 64)), g(K), ya(M * OUT_N), yb(M * OUT_N);
  std::vector<uint32_t> w(N * (K / 8));
  std::vector<int32_t> pos(M);
  std::vector<float> inv_freq(16);
  for (auto& v : x) v = __float2half(4.f * normal(rng) + 1.f);
  for (auto& v : g) v = __float2half(0.5f + uni(rng));
  for (auto& v : w) v = rng();
  for (int m = 0; m < M; ++m) pos[m] = 500 + m;
  for (int i = 0; i < 16; ++i) inv_freq[i] = std::pow(10000.f, -2.f * i / 32);
${ropeTableCode("32", "1.f")}  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = __float2half(0.005f + 0.025f * uni(rng));
    b[i] = __float2half(-8.f * __half2float(s[i]) + 0.1f * normal(rng));
  }
  using namespace mlx::core::cu;
  for (int m = 0; m < M; ++m) ${launch("one", c.one, "m * K", "m", "ya.data() + m * OUT_N")}
  ${launch("many", c.many, "0", "0", "yb.data()")}
  int differ = 0;
  for (int i = 0; i < M * OUT_N; ++i) {
    uint16_t a, bb;
    std::memcpy(&a, &ya[i], 2);
    std::memcpy(&bb, &yb[i], 2);
    differ += a != bb;
  }
  std::printf("{\\"differ\\": %d, \\"total\\": %d}\\n", differ, M * OUT_N);
}
`;
}

function run(c: Case, label: string): { differ: number; total: number } {
  return runEmulated("gemv-row-invariance", label, program(c));
}

const scalarOne: Body = { kind: "scalar", rows: 4 };
describe.skipIf(!emulationCompiler)("a GEMV body sums each row of x as it does alone (emulated)", () => {
  const shapes = [
    { variant: "swiglu" as const, n: 64, k: 1088 },
    { variant: "rope" as const, n: 96, k: 512 },
  ];
  for (const s of shapes) {
    for (const m of [3, 9]) {
      test(`scalar body, ${s.variant}: ${m} rows at 2 rows a warp equal each row alone at 4`, () => {
        const r = run({ ...s, m, one: scalarOne, many: { kind: "scalar", rows: 2 } }, `scalar-${s.variant}-${m}`);
        expect(r.total).toBe(m * (s.variant === "swiglu" ? s.n / 2 : s.n));
        expect(r.differ).toBe(0);
      }, 120_000);
      test(`tensor-core body, ${s.variant}: ${m} rows (build for ${mmaBucket(m)}) equal each row alone`, () => {
        const mma: Body = { kind: "mma", warps: 2 };
        const r = run({ ...s, m, one: mma, many: mma }, `mma-${s.variant}-${m}`);
        expect(r.differ).toBe(0);
      }, 120_000);
    }
  }
  // Tiles a block (PENSIEVE_GEMV_MMA_TILES): each row still sums its warps' k-blocks in the same order.
  for (const [variant, n, tiles] of [
    ["swiglu", 64, 2],
    ["swiglu", 64, 4],
    ["rope", 96, 2],
  ] as const) {
    test(`tensor-core body, ${variant}: 9 rows at ${tiles} tiles a block equal each row alone at one`, () => {
      const one: Body = { kind: "mma", warps: 2 };
      const many: Body = { kind: "mma", warps: 2, tiles };
      const k = variant === "swiglu" ? 1088 : 512;
      const r = run({ variant, n, k, m: 9, one, many }, `mma-${variant}-9-t${tiles}`);
      expect(r.total).toBe(9 * (variant === "swiglu" ? n / 2 : n));
      expect(r.differ).toBe(0);
    }, 120_000);
  }
  test("the two bodies do not agree bit for bit (so a verify pass keeps the one-token step's body)", () => {
    const r = run(
      { variant: "swiglu", n: 64, k: 1088, m: 3, one: scalarOne, many: { kind: "mma", warps: 2 } },
      "scalar-vs-mma",
    );
    expect(r.differ).toBeGreaterThan(0);
  }, 120_000);
});
