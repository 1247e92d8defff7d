// The decode attention kernels' CUDA source (src/mlx/kernels-attention.ts: one
// split, and several splits merged by the combine kernel) run on the CPU through
// the CUDA emulation (cuda-emulation.h, g++) against float64 softmax attention
// on the same fp16/bf16 inputs, over a cache buffer longer than the rows' keys.
// test/gpu/fused.test.ts runs the real kernels against MLX's sdpa.
import { describe, expect, test } from "bun:test";
import {
  DECODE_ATTENTION_COMBINE_KERNEL,
  DECODE_ATTENTION_KERNEL,
  DECODE_ATTENTION_MERGED_WRITE_KERNEL,
  DECODE_ATTENTION_SPLIT_KERNEL,
  DECODE_ATTENTION_SPLIT_WRITE_KERNEL,
  DECODE_ATTENTION_WRITE_KERNEL,
} from "../../src/mlx/kernels-attention";
import { EMULATION_HEADER, emulationCompiler, runEmulated } from "./emulate";

interface Case {
  dtype: "f16" | "bf16";
  b: number;
  h: number;
  hkv: number;
  hd: number;
  cap: number;
  /** Each row's position (S = pos + 1). */
  pos: number[];
  splits: number;
  warps: number;
  /** Keys per warp per round (default 4). */
  kb?: number;
  /** The writing variant: the new key/value come from kn/vn and are stored at column pos[b]. */
  write?: boolean;
  /** The merged variant (writing, several splits): the last block of each row and kv head merges the splits. */
  merged?: boolean;
}

function program(c: Case): string {
  const T = c.dtype === "bf16" ? "__nv_bfloat16" : "__half";
  const toF = c.dtype === "bf16" ? "__bfloat162float" : "__half2float";
  const fromF = c.dtype === "bf16" ? "__float2bfloat16" : "__float2half";
  const scale = 1 / Math.sqrt(c.hd);
  const scaleBits = new Int32Array(Float32Array.of(scale * Math.LOG2E).buffer)[0];
  const split = c.splits > 1;
  const main = c.merged
    ? DECODE_ATTENTION_MERGED_WRITE_KERNEL
    : c.write
      ? split
        ? DECODE_ATTENTION_SPLIT_WRITE_KERNEL
        : DECODE_ATTENTION_WRITE_KERNEL
      : split
        ? DECODE_ATTENTION_SPLIT_KERNEL
        : DECODE_ATTENTION_KERNEL;
  const constants = `using T = ${T};
  constexpr int H = ${c.h}, HKV = ${c.hkv}, HD = ${c.hd}, WARPS = ${c.warps}, SCALE_BITS = ${scaleBits}, KB = ${c.kb ?? 4};`;
  return `#include "${EMULATION_HEADER}"
#include <cstdio>
#include <random>
#include <array>
${main.header}
namespace mlx::core::cu {
using Shape = std::array<int32_t, 10>;
void attention(const ${T}* q, const ${T}* kc, Shape kc_shape, const ${T}* vc, const int32_t* pos, const ${T}* kn, const ${T}* vn, const int* counter, ${T}* out, float* part, float* stats) {
  ${constants}
  (void)out; (void)part; (void)stats; (void)kn; (void)vn; (void)counter;
${main.source}
}
void combine(const float* part, const float* stats, ${T}* out) {
  using T = ${T};
  constexpr int HD = ${c.hd}, SPLITS = ${c.splits};
${DECODE_ATTENTION_COMBINE_KERNEL.source}
}
}  // namespace mlx::core::cu
int main() {
  constexpr int B = ${c.b}, H = ${c.h}, HKV = ${c.hkv}, HD = ${c.hd}, CAP = ${c.cap}, SPLITS = ${c.splits}, WARPS = ${c.warps};
  const int pos[B] = {${c.pos.join(", ")}};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<${T}> q(B * H * HD), kc(B * HKV * CAP * HD), vc(B * HKV * CAP * HD), out(B * H * HD);
  std::vector<float> part(B * H * SPLITS * HD), stats(B * H * SPLITS * 2);
  for (auto& v : q) v = ${fromF}(2.f * normal(rng));
  for (auto& v : kc) v = ${fromF}(normal(rng));
  for (auto& v : vc) v = ${fromF}(normal(rng));
  // Unwritten cache columns past each row's keys: huge values that must not be read.
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < HKV; ++h)
      for (int s = pos[b] + 1; s < CAP; ++s)
        for (int d = 0; d < HD; ++d) kc[((b * HKV + h) * CAP + s) * HD + d] = vc[((b * HKV + h) * CAP + s) * HD + d] = ${fromF}(30000.f);
  // The writing variant: the new token's key/value arrive in kn/vn; column pos[b] holds garbage until the kernel stores them.
  const bool write = ${c.write || c.merged ? "true" : "false"};
  std::vector<int> counter(B * HKV, 0);
  std::vector<${T}> kn(B * HKV * HD), vn(B * HKV * HD);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < HKV; ++h)
      for (int d = 0; d < HD; ++d) {
        const size_t col = ((size_t)(b * HKV + h) * CAP + pos[b]) * HD + d;
        kn[(b * HKV + h) * HD + d] = kc[col];
        vn[(b * HKV + h) * HD + d] = vc[col];
        if (write) kc[col] = vc[col] = ${fromF}(30000.f);
      }
  for (auto& v : out) v = ${fromF}(NAN);
  mlx::core::cu::Shape shape{};
  shape[0] = B; shape[1] = HKV; shape[2] = CAP; shape[3] = HD;
  emu_launch(B * HKV * WARPS * 32, WARPS * 32, [&] {
    mlx::core::cu::attention(q.data(), kc.data(), shape, vc.data(), pos, kn.data(), vn.data(), counter.data(), out.data(), part.data(), stats.data());
  }, SPLITS);
  int counters = 0;
  for (int v : counter) counters += v != 0;
  if (SPLITS > 1 && !${c.merged ? "true" : "false"}) emu_launch(B * H * HD, HD, [&] { mlx::core::cu::combine(part.data(), stats.data(), out.data()); });
  // Written back: column pos[b] of the cache must now hold kn/vn exactly.
  int stored = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < HKV; ++h)
      for (int d = 0; d < HD; ++d) {
        const size_t col = ((size_t)(b * HKV + h) * CAP + pos[b]) * HD + d;
        const size_t n = (b * HKV + h) * HD + d;
        stored += ${toF}(kc[col]) == ${toF}(kn[n]) && ${toF}(vc[col]) == ${toF}(vn[n]);
      }
  double err = 0, ref2 = 0;
  int unwritten = 0;
  const double scale = ${scale};
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int kvh = h / (H / HKV);
      const int S = pos[b] + 1;
      std::vector<double> p(S);
      double mx = -1e300, sum = 0;
      for (int s = 0; s < S; ++s) {
        double d = 0;
        for (int e = 0; e < HD; ++e)
          d += double(${toF}(q[(b * H + h) * HD + e])) * double(${toF}(kc[((b * HKV + kvh) * CAP + s) * HD + e]));
        p[s] = d * scale;
        mx = std::max(mx, p[s]);
      }
      for (int s = 0; s < S; ++s) sum += (p[s] = std::exp(p[s] - mx));
      for (int e = 0; e < HD; ++e) {
        double ref = 0;
        for (int s = 0; s < S; ++s) ref += p[s] / sum * double(${toF}(vc[((b * HKV + kvh) * CAP + s) * HD + e]));
        const double got = ${toF}(out[(b * H + h) * HD + e]);
        if (std::isnan(got)) { unwritten++; continue; }
        err += (got - ref) * (got - ref);
        ref2 += ref * ref;
      }
    }
  std::printf("{\\"rel\\": %.3e, \\"unwritten\\": %d, \\"stored\\": %d, \\"counters\\": %d}\\n", std::sqrt(err / ref2), unwritten, stored, counters);
}
`;
}

function run(c: Case): { rel: number; unwritten: number; stored: number; counters: number } {
  const variant = c.merged ? "-merged" : c.write ? "-write" : "";
  const name = `${c.dtype}-${c.b}-${c.h}-${c.hkv}-${c.hd}-${c.cap}-${c.splits}-kb${c.kb ?? 4}${variant}`;
  return runEmulated("attention-emulated", name, program(c));
}

// Scores and softmax in float from 16-bit inputs; the output rounds once to fp16 (~5e-4) or bf16 (~4e-3).
const TOLERANCE = { f16: 2e-3, bf16: 1.5e-2 };

describe.skipIf(!emulationCompiler)("decode attention source, emulated on the CPU", () => {
  const cases: Case[] = [
    // Phi-3: head dim 96, no GQA; rows at different lengths, keys not a multiple of the warps' rounds.
    { dtype: "f16", b: 2, h: 2, hkv: 2, hd: 96, cap: 256, pos: [130, 37], splits: 1, warps: 16 },
    // GQA 4:1, head dim 64, split in 3 (the last split shorter), bf16.
    { dtype: "bf16", b: 1, h: 8, hkv: 2, hd: 64, cap: 512, pos: [300], splits: 3, warps: 4 },
    // More splits than some rows have keys for: empty splits merge to nothing.
    { dtype: "f16", b: 2, h: 4, hkv: 4, hd: 128, cap: 64, pos: [5, 60], splits: 8, warps: 2 },
    // 8 keys per round (PENSIEVE_FUSED_ATTENTION_KB=8).
    { dtype: "f16", b: 1, h: 2, hkv: 2, hd: 96, cap: 256, pos: [200], splits: 1, warps: 16, kb: 8 },
    // The writing variants: the new key/value from kn/vn (their cache column holds garbage), stored by the kernel.
    { dtype: "f16", b: 2, h: 2, hkv: 2, hd: 96, cap: 256, pos: [130, 37], splits: 1, warps: 16, write: true },
    { dtype: "bf16", b: 2, h: 8, hkv: 2, hd: 64, cap: 512, pos: [300, 0], splits: 3, warps: 4, write: true },
    // Merged in one launch: the last block of each row and kv head merges; empty splits; counters back at 0.
    { dtype: "f16", b: 2, h: 4, hkv: 4, hd: 128, cap: 64, pos: [5, 60], splits: 8, warps: 2, merged: true },
    { dtype: "bf16", b: 1, h: 8, hkv: 2, hd: 96, cap: 512, pos: [400], splits: 4, warps: 16, merged: true },
  ];
  for (const c of cases) {
    const label = `${c.dtype} B=${c.b} H=${c.h}/${c.hkv} HD=${c.hd} positions ${c.pos.join(",")} splits ${c.splits}`;
    const variant = c.merged
      ? ", storing the new key/value, merged in one launch"
      : c.write
        ? ", storing the new key/value"
        : "";
    test(`${label}${variant}`, () => {
      const r = run(c);
      expect(r.unwritten).toBe(0);
      expect(r.stored).toBe(c.b * c.hkv * c.hd);
      expect(r.counters).toBe(0);
      expect(r.rel).toBeLessThan(TOLERANCE[c.dtype]);
    }, 120_000);
  }
});
