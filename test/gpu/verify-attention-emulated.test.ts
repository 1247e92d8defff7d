// The verify pass's attention kernel (src/mlx/kernels-attention-verify.ts) run on
// the CPU through the CUDA emulation (cuda-emulation.h, g++) against float64
// causal softmax attention on the same fp16/bf16 inputs: L new tokens of one row
// whose q, k, v come packed as the q|k|v kernel writes them, over a cache buffer
// whose columns from pos0 on hold garbage (never read). The new keys/values must
// land in the cache exactly, the columns after them untouched, the counters back at 0.
// test/gpu/fused.test.ts runs the real kernel inside a verify pass on the GPU.
import { describe, expect, test } from "bun:test";
import { VERIFY_ATTENTION_KERNEL, verifyQueryChunk, verifyWarps } from "../../src/mlx/kernels-attention-verify";
import { EMULATION_HEADER, emulationCompiler, runEmulated } from "./emulate";

interface Case {
  dtype: "f16" | "bf16";
  h: number;
  hkv: number;
  hd: number;
  /** New tokens. */
  l: number;
  /** Keys already cached (the first new token's position). */
  pos0: number;
  cap: number;
  splits: number;
  /** The splits' merge: 0 serial per element (the default), 1 parallel over the block. */
  merge?: 0 | 1;
}

function program(c: Case): string {
  const T = c.dtype === "bf16" ? "__nv_bfloat16" : "__half";
  const toF = c.dtype === "bf16" ? "__bfloat162float" : "__half2float";
  const fromF = c.dtype === "bf16" ? "__float2bfloat16" : "__float2half";
  const scale = 1 / Math.sqrt(c.hd);
  const scaleBits = new Int32Array(Float32Array.of(scale * Math.LOG2E).buffer)[0];
  const rows = (c.h / c.hkv) * c.l;
  const qc = verifyQueryChunk(rows, c.hd);
  const warps = verifyWarps(qc, c.hd, 4);
  const chunks = Math.ceil(rows / qc);
  return `#include "${EMULATION_HEADER}"
#include <cstdio>
#include <random>
#include <array>
${VERIFY_ATTENTION_KERNEL.header}
namespace mlx::core::cu {
using Shape = std::array<int32_t, 10>;
void attention(const ${T}* qkv, const ${T}* kc, Shape kc_shape, const ${T}* vc, const int32_t* pos, const int* counter,
               ${T}* out, float* part, float* stats) {
  using T = ${T};
  constexpr int H = ${c.h}, HKV = ${c.hkv}, HD = ${c.hd}, L = ${c.l}, QC = ${qc}, WARPS = ${warps}, SCALE_BITS = ${scaleBits}, KB = 4, MERGE = ${c.merge ?? 0};
${VERIFY_ATTENTION_KERNEL.source}
}
}  // namespace mlx::core::cu
int main() {
  constexpr int H = ${c.h}, HKV = ${c.hkv}, HD = ${c.hd}, L = ${c.l}, CAP = ${c.cap}, SPLITS = ${c.splits};
  constexpr int QS = H * HD, KVS = HKV * HD, N = QS + 2 * KVS;
  const int pos0 = ${c.pos0};
  std::vector<int32_t> pos(L);
  for (int i = 0; i < L; ++i) pos[i] = pos0 + i;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<${T}> qkv(L * N), kc(HKV * CAP * HD), vc(HKV * CAP * HD), out(L * QS);
  std::vector<float> part(L * H * SPLITS * HD), stats(L * H * SPLITS * 2);
  for (int i = 0; i < L; ++i)
    for (int n = 0; n < N; ++n) qkv[i * N + n] = ${fromF}((n < QS ? 2.f : 1.f) * normal(rng));
  for (auto& v : kc) v = ${fromF}(normal(rng));
  for (auto& v : vc) v = ${fromF}(normal(rng));
  // Columns from pos0 on: not yet written, garbage that must never be read.
  for (int h = 0; h < HKV; ++h)
    for (int s = pos0; s < CAP; ++s)
      for (int d = 0; d < HD; ++d) kc[(h * CAP + s) * HD + d] = vc[(h * CAP + s) * HD + d] = ${fromF}(30000.f);
  std::vector<${T}> kc0 = kc, vc0 = vc;
  std::vector<int> counter(${c.hkv * chunks}, 0);
  for (auto& v : out) v = ${fromF}(NAN);
  mlx::core::cu::Shape shape{};
  shape[0] = 1; shape[1] = HKV; shape[2] = CAP; shape[3] = HD;
  emu_launch(${c.hkv * chunks * warps * 32}, ${warps * 32}, [&] {
    mlx::core::cu::attention(qkv.data(), kc.data(), shape, vc.data(), pos.data(), counter.data(), out.data(), part.data(), stats.data());
  }, SPLITS);
  int counters = 0;
  for (int v : counter) counters += v != 0;
  // The new keys/values at columns pos0..pos0+L-1, exactly; every other column as it was.
  int stored = 0, touched = 0;
  for (int h = 0; h < HKV; ++h)
    for (int s = 0; s < CAP; ++s)
      for (int d = 0; d < HD; ++d) {
        const size_t at = ((size_t)h * CAP + s) * HD + d;
        if (s >= pos0 && s < pos0 + L) {
          const int i = s - pos0;
          stored += ${toF}(kc[at]) == ${toF}(qkv[i * N + QS + h * HD + d]) && ${toF}(vc[at]) == ${toF}(qkv[i * N + QS + KVS + h * HD + d]);
        } else touched += ${toF}(kc[at]) != ${toF}(kc0[at]) || ${toF}(vc[at]) != ${toF}(vc0[at]);
      }
  auto key = [&](int h, int s, int d) {
    return s < pos0 ? double(${toF}(kc0[((size_t)h * CAP + s) * HD + d])) : double(${toF}(qkv[(s - pos0) * N + QS + h * HD + d]));
  };
  auto value = [&](int h, int s, int d) {
    return s < pos0 ? double(${toF}(vc0[((size_t)h * CAP + s) * HD + d])) : double(${toF}(qkv[(s - pos0) * N + QS + KVS + h * HD + d]));
  };
  double err = 0, ref2 = 0;
  int unwritten = 0;
  const double scale = ${scale};
  for (int i = 0; i < L; ++i)
    for (int h = 0; h < H; ++h) {
      const int kvh = h / (H / HKV);
      const int S = pos0 + i + 1;
      std::vector<double> p(S);
      double mx = -1e300, sum = 0;
      for (int s = 0; s < S; ++s) {
        double d = 0;
        for (int e = 0; e < HD; ++e) d += double(${toF}(qkv[i * N + h * HD + e])) * key(kvh, s, e);
        p[s] = d * scale;
        mx = std::max(mx, p[s]);
      }
      for (int s = 0; s < S; ++s) sum += (p[s] = std::exp(p[s] - mx));
      for (int e = 0; e < HD; ++e) {
        double ref = 0;
        for (int s = 0; s < S; ++s) ref += p[s] / sum * value(kvh, s, e);
        const double got = ${toF}(out[(i * H + h) * HD + e]);
        if (std::isnan(got)) { unwritten++; continue; }
        err += (got - ref) * (got - ref);
        ref2 += ref * ref;
      }
    }
  std::printf("{\\"rel\\": %.3e, \\"unwritten\\": %d, \\"stored\\": %d, \\"touched\\": %d, \\"counters\\": %d}\\n",
              std::sqrt(err / ref2), unwritten, stored, touched, counters);
}
`;
}

interface Result {
  rel: number;
  unwritten: number;
  stored: number;
  touched: number;
  counters: number;
}

function run(c: Case): Result {
  const name = `${c.dtype}-${c.h}-${c.hkv}-${c.hd}-L${c.l}-${c.pos0}-${c.cap}-${c.splits}-m${c.merge ?? 0}`;
  return runEmulated("verify-attention-emulated", name, program(c));
}

// Scores and softmax in float from 16-bit inputs; the output rounds once to fp16 (~5e-4) or bf16 (~4e-3).
const TOLERANCE = { f16: 2e-3, bf16: 1.5e-2 };

describe.skipIf(!emulationCompiler)("verify pass attention source, emulated on the CPU", () => {
  const cases: Case[] = [
    // Phi-3 (32/32 heads of 96): L = 2 in one split; L = 9 and 16 over several splits (64 keys each, as on the GPU).
    { dtype: "f16", h: 32, hkv: 32, hd: 96, l: 2, pos0: 40, cap: 128, splits: 1 },
    { dtype: "f16", h: 32, hkv: 32, hd: 96, l: 9, pos0: 60, cap: 128, splits: 2 },
    { dtype: "bf16", h: 32, hkv: 32, hd: 96, l: 16, pos0: 40, cap: 128, splits: 2 },
    // More splits than the first queries have keys for (empty and partly masked splits), a short cache.
    { dtype: "f16", h: 2, hkv: 2, hd: 96, l: 16, pos0: 5, cap: 64, splits: 8 },
    // GQA 4:1, head dim 64: 36 query rows per kv head in 3 chunks of 12 (the keys read once per chunk).
    { dtype: "bf16", h: 8, hkv: 2, hd: 64, l: 9, pos0: 120, cap: 256, splits: 3 },
    // GQA 4:1, head dim 128 (Llama 3 8B's shape): 16 rows in 2 chunks of 8.
    { dtype: "f16", h: 8, hkv: 2, hd: 128, l: 4, pos0: 77, cap: 128, splits: 2 },
    // The parallel merge (PENSIEVE_FUSED_VERIFY_MERGE=parallel): 40 splits (more than a warp's lanes), some empty
    // for the first queries; Phi-3's heads at L = 2 and 16; GQA with 3 chunks.
    { dtype: "f16", h: 2, hkv: 2, hd: 96, l: 2, pos0: 300, cap: 320, splits: 40, merge: 1 },
    { dtype: "bf16", h: 32, hkv: 32, hd: 96, l: 16, pos0: 40, cap: 128, splits: 2, merge: 1 },
    { dtype: "f16", h: 2, hkv: 2, hd: 96, l: 16, pos0: 5, cap: 64, splits: 8, merge: 1 },
    { dtype: "bf16", h: 8, hkv: 2, hd: 64, l: 9, pos0: 120, cap: 256, splits: 3, merge: 1 },
    // The serial merge over the same 40 splits.
    { dtype: "f16", h: 2, hkv: 2, hd: 96, l: 2, pos0: 300, cap: 320, splits: 40 },
  ];
  for (const c of cases) {
    const merge = c.merge === 1 ? ", parallel merge" : "";
    const label = `${c.dtype} H=${c.h}/${c.hkv} HD=${c.hd} L=${c.l} after ${c.pos0} keys, splits ${c.splits}${merge}`;
    test(label, () => {
      const r = run(c);
      console.log(`[verify attention] ${label}: rel ${r.rel.toExponential(2)}`);
      expect(r.unwritten).toBe(0);
      expect(r.stored).toBe(c.hkv * c.l * c.hd);
      expect(r.touched).toBe(0);
      expect(r.counters).toBe(0);
      expect(r.rel).toBeLessThan(TOLERANCE[c.dtype]);
    }, 300_000);
  }
});
