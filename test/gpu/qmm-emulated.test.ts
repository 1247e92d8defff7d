// The batched 4-bit matrix product's CUDA source (src/mlx/kernels-qmm.ts), run
// on the CPU through the CUDA emulation (cuda-emulation.h, g++: warps as 32
// threads, the tensor-core mma.sync with the PTX ISA's fragment layout, shared
// memory, a 2-D grid, atomics), against a float64 reference on the same
// fp16/bf16 inputs. This checks the fragment mapping, nibble order, staging,
// split-K and edges where there is no GPU; test/gpu/qmm.test.ts runs the real
// kernel against MLX's quantized_matmul on the device.
import { describe, expect, test } from "bun:test";
import { QMM_KERNEL, qmmConfig, qmmMaxSlice } from "../../src/mlx/kernels-qmm";
import { EMULATION_HEADER, emulationCompiler, runEmulated } from "./emulate";

interface Case {
  dtype: "f16" | "bf16";
  m: number;
  n: number;
  k: number;
  group: number;
  rowTile: number;
  warps: number;
  splits: number;
  /** Blocks along the features (fewer than the tiles: each takes several). */
  blocks?: number;
  /** k-slices summed in a thread block cluster (16-bit output) rather than by float atomics. */
  cluster?: boolean;
}

function program(c: Case): string {
  const T = c.dtype === "bf16" ? "__nv_bfloat16" : "__half";
  const atomics = c.splits > 1 && !c.cluster;
  const OUT = atomics ? "float" : T;
  const xBytes = qmmMaxSlice(c.rowTile) * c.rowTile * 2;
  const shared = xBytes + (c.cluster ? c.rowTile * 256 * 4 : 0);
  const toF = c.dtype === "bf16" ? "__bfloat162float" : "__half2float";
  const fromF = c.dtype === "bf16" ? "__float2bfloat16" : "__float2half";
  const outToF = atomics ? "" : toF;
  return `#include "${EMULATION_HEADER}"
#include <cstdio>
#include <random>
${QMM_KERNEL.header}
namespace mlx::core::cu {
void kernel(const ${T}* x, const int* x_shape, int x_ndim, const uint32_t* w, const int* w_shape,
            const ${T}* scales, const ${T}* biases, ${OUT}* y) {
  using T = ${T};
  constexpr int MT = ${c.rowTile}, WARPS = ${c.warps}, GROUP = ${c.group};
  constexpr bool F32_OUT = ${atomics};
  constexpr int CLUSTER = ${c.cluster ? c.splits : 0}, XBYTES = ${xBytes};
${QMM_KERNEL.source}
}
}  // namespace mlx::core::cu
int main() {
  constexpr int M = ${c.m}, N = ${c.n}, K = ${c.k}, GROUP = ${c.group};
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  std::vector<${T}> x(M * K), s(N * (K / GROUP)), b(N * (K / GROUP));
  std::vector<${OUT}> y(M * N);
  std::vector<uint32_t> w(N * (K / 8));
  for (auto& v : x) v = ${fromF}(normal(rng));
  for (auto& v : w) v = rng();
  for (size_t i = 0; i < s.size(); ++i) {
    s[i] = ${fromF}(0.005f + 0.025f * uni(rng));
    b[i] = ${fromF}(-8.f * ${toF}(s[i]) + 0.1f * normal(rng));
  }
  for (auto& v : y) v = ${atomics ? "0.f" : `${fromF}(NAN)`};
  const int x_shape[2] = {M, K};
  const int w_shape[2] = {N, K / 8};
  const unsigned threads = WARPS_TOTAL_THREADS;
  const unsigned blocks = ${c.blocks ?? Math.ceil(c.n / (c.warps * 32))};
  emu_launch(blocks * threads, threads,
             [&] { mlx::core::cu::kernel(x.data(), x_shape, 2, w.data(), w_shape, s.data(), b.data(), y.data()); },
             ${c.splits}, ${shared}, ${c.cluster ? c.splits : 1});
  double err = 0, ref2 = 0;
  int unwritten = 0;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double ref = 0;
      for (int k = 0; k < K; ++k) {
        const uint32_t q = (w[n * (K / 8) + k / 8] >> (4 * (k % 8))) & 15u;
        const int gi = n * (K / GROUP) + k / GROUP;
        ref += (double(${toF}(s[gi])) * q + double(${toF}(b[gi]))) * double(${toF}(x[m * K + k]));
      }
      const double got = ${outToF}(y[m * N + n]);
      if (std::isnan(got)) { unwritten++; continue; }
      err += (got - ref) * (got - ref);
      ref2 += ref * ref;
    }
  std::printf("{\\"rel\\": %.3e, \\"unwritten\\": %d}\\n", std::sqrt(err / ref2), unwritten);
}
`.replace("WARPS_TOTAL_THREADS", String(c.warps * 32));
}

function run(c: Case): { rel: number; unwritten: number } {
  const name = `${c.dtype}-${c.m}-${c.n}-${c.k}-${c.group}-${c.rowTile}-${c.warps}-${c.splits}-${c.blocks ?? 0}${c.cluster ? "-cl" : ""}`;
  return runEmulated("qmm-emulated", name, program(c));
}

// The weight is rounded to 16 bits once (s*q + b, as MLX's dequantize), products summed in float.
const TOLERANCE = { f16: 3e-3, bf16: 2e-2 };

describe.skipIf(!emulationCompiler)("batched 4-bit matmul source (tensor cores), emulated on the CPU", () => {
  const cases: Case[] = [
    // 5 rows padded to 8, one k-slice: fp16 written directly (NaN-poisoned output).
    { dtype: "f16", m: 5, n: 64, k: 384, group: 64, rowTile: 8, warps: 2, splits: 1 },
    // 13 rows in a 16-row tile, group 32, 3 uneven k-slices (3, 3, 2 k-blocks), float partial sums;
    // 96 features over blocks of 64: the second block's last warp idle.
    { dtype: "f16", m: 13, n: 96, k: 1024, group: 32, rowTile: 16, warps: 2, splits: 3 },
    // bf16, 33 rows in a 64-row tile, group 128, 2 k-slices.
    { dtype: "bf16", m: 33, n: 64, k: 768, group: 128, rowTile: 64, warps: 2, splits: 2 },
    // A full 64-row tile, one k-slice; a 32-row tile with 2 rows.
    { dtype: "f16", m: 64, n: 32, k: 256, group: 64, rowTile: 64, warps: 1, splits: 1 },
    { dtype: "bf16", m: 2, n: 32, k: 512, group: 64, rowTile: 32, warps: 1, splits: 1 },
    // K not a multiple of 128 (tiny Phi-3's 192; 288 over 2 k-slices): a partial last k-block.
    { dtype: "f16", m: 7, n: 64, k: 192, group: 64, rowTile: 8, warps: 2, splits: 1 },
    { dtype: "f16", m: 20, n: 32, k: 288, group: 32, rowTile: 32, warps: 1, splits: 2 },
    // Blocks taking several feature tiles over one staged x; the weight prefetch runs across tiles.
    // 3 tiles over 2 blocks (tiles 0, 2 | 1), 5 k-blocks in slices of 3 and 2:
    { dtype: "f16", m: 9, n: 160, k: 640, group: 64, rowTile: 16, warps: 2, splits: 2, blocks: 2 },
    // 3 tiles in one block, 2 k-blocks each; one k-block, one step (fewer than the prefetch depth):
    { dtype: "bf16", m: 40, n: 96, k: 256, group: 64, rowTile: 64, warps: 1, splits: 1, blocks: 1 },
    { dtype: "f16", m: 3, n: 32, k: 128, group: 128, rowTile: 8, warps: 1, splits: 1 },
    // k-slices summed in a thread block cluster through distributed shared memory, 16-bit output written once
    // (NaN-poisoned): uneven slices (3, 3, 2 k-blocks), blocks with several tiles, idle warps in the last tile.
    { dtype: "f16", m: 13, n: 96, k: 1024, group: 32, rowTile: 16, warps: 2, splits: 3, cluster: true },
    { dtype: "f16", m: 9, n: 160, k: 640, group: 64, rowTile: 16, warps: 2, splits: 2, blocks: 2, cluster: true },
    { dtype: "bf16", m: 37, n: 96, k: 1024, group: 64, rowTile: 64, warps: 2, splits: 4, blocks: 1, cluster: true },
  ];
  for (const c of cases) {
    test(`${c.dtype} M=${c.m} N=${c.n} K=${c.k} group ${c.group}, tile ${c.rowTile}, ${c.warps} warps, ${c.splits} k-slices${c.blocks ? `, ${c.blocks} blocks` : ""}${c.cluster ? ", cluster" : ""}`, () => {
      const r = run(c);
      expect(r.unwritten).toBe(0);
      expect(r.rel).toBeLessThan(TOLERANCE[c.dtype]);
    }, 180_000);
  }

  test("the default configuration fits shared memory and keeps the H100 busy on Phi-3-mini's shapes", () => {
    for (const [n, k] of [
      [9216, 3072],
      [3072, 3072],
      [16384, 3072],
      [3072, 8192],
      [32064, 3072],
    ] as const) {
      for (const m of [2, 4, 8, 16, 32, 64]) {
        const c = qmmConfig(n, k, m);
        expect(c.rowTile).toBeGreaterThanOrEqual(m);
        expect(Math.ceil(k / 128 / c.splits) * 128).toBeLessThanOrEqual(qmmMaxSlice(c.rowTile));
        expect(c.splits).toBeLessThanOrEqual(k / 128);
        const tiles = Math.ceil(n / (c.warps * 32));
        expect(c.blocks).toBeLessThanOrEqual(tiles);
        // At least half the SMs busy.
        expect((c.blocks ?? tiles) * c.splits).toBeGreaterThanOrEqual(66);
      }
    }
  });
});
