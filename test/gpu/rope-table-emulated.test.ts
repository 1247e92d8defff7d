// RoPE's cos/sin table (src/mlx/kernels-gemv-fused.ts ROPE_TABLE_KERNEL, one launch a decode step for every
// layer's q|k|v kernel) run on the CPU through the CUDA emulation (cuda-emulation.h, g++) against float64:
// every row's position, every pair, a position scale, and angles past the sine's fast range (105,615 rad).
import { describe, expect, test } from "bun:test";
import { ROPE_TABLE_KERNEL } from "../../src/mlx/kernels-gemv-fused";
import { EMULATION_HEADER, emulationCompiler, runEmulated } from "./emulate";

const bits = (v: number) => new Int32Array(Float32Array.of(v).buffer)[0] as number;

function program(positions: number[], hd: number, scale: number): string {
  const m = positions.length;
  return `#include "${EMULATION_HEADER}"
#include <cstdio>
#include <cmath>
#include <vector>
namespace mlx::core::cu {
void kernel(const int32_t* pos, const float* inv_freq, float* rope_cs) {
  constexpr int HD = ${hd}, POS_SCALE_BITS = ${bits(scale)};
  const int pos_shape[1] = {${m}};
  const struct {
    unsigned x;
  } blockDim{64};  // the launch's 64 threads a block
${ROPE_TABLE_KERNEL.source}
}
}  // namespace mlx::core::cu
int main() {
  constexpr int M = ${m}, HD = ${hd};
  std::vector<int32_t> pos = {${positions.join(", ")}};
  std::vector<float> inv_freq(HD / 2), cs(M * HD, NAN);
  for (int i = 0; i < HD / 2; ++i) inv_freq[i] = std::pow(10000.f, -2.f * i / HD);
  emu_launch((M * HD / 2 + 63) / 64 * 64, 64, [&] { mlx::core::cu::kernel(pos.data(), inv_freq.data(), cs.data()); });
  double worst = 0;
  int unwritten = 0;
  for (int m = 0; m < M; ++m)
    for (int i = 0; i < HD / 2; ++i) {
      const float theta = ((float)${scale} * (float)pos[m]) * inv_freq[i];
      const double c = cs[m * HD + i], s = cs[m * HD + HD / 2 + i];
      if (std::isnan(c) || std::isnan(s)) { ++unwritten; continue; }
      worst = std::fmax(worst, std::fmax(std::fabs(c - std::cos((double)theta)), std::fabs(s - std::sin((double)theta))));
    }
  std::printf("{\\"worst\\": %.3g, \\"unwritten\\": %d}\\n", worst, unwritten);
}
`;
}

describe.skipIf(!emulationCompiler)("RoPE table, emulated on the CPU", () => {
  const cases: Array<[string, number[], number, number]> = [
    ["one row, Phi-3's head dim", [300], 96, 1],
    ["a verify pass's rows, position scale 0.5", [500, 501, 502, 503, 504], 64, 0.5],
    ["positions past the sine's fast range", [120_000, 131_071], 96, 1],
  ];
  for (const [label, positions, hd, scale] of cases) {
    test(label, () => {
      const r = runEmulated<{ worst: number; unwritten: number }>(
        "rope-table",
        `m${positions.length}-hd${hd}`,
        program(positions, hd, scale),
      );
      expect(r.unwritten).toBe(0);
      // cosf / sinf of the float angle, against float64 of the same angle: a few float ulps.
      expect(r.worst).toBeLessThan(1e-6);
    });
  }
});
