// The decode-layer megakernel (src/mlx/kernels-layer.ts) run on the CPU through
// the CUDA emulation, against the fused path's five kernels (q|k|v, attention, o,
// gate|up, down) run one after another through the same emulation on the same
// inputs: the layer's output and the key/value it stores in the cache must be
// bit-identical (same code, same order), and its ticket/count buffer back at zero.
// Its blocks run one after another (as a GPU may dispatch them: the tickets follow
// the order they start in) or, for grids that fit, every block at once
// (emu_launch_all: the waits between phases really wait).
import { describe, expect, test } from "bun:test";
import { Dtype } from "../../src/mlx/array";
import {
  DECODE_ATTENTION_MERGED_WRITE_KERNEL,
  DECODE_ATTENTION_WRITE_KERNEL,
  setKeysPerSplit,
} from "../../src/mlx/kernels-attention";
import {
  GEMV_NORM_ROPE_QKV_KERNEL,
  GEMV_NORM_SWIGLU_KERNEL,
  GEMV_RESIDUAL_KERNEL,
} from "../../src/mlx/kernels-gemv-fused";
import {
  DECODE_LAYER_KERNEL,
  type LayerShape,
  layerBlocks,
  layerSyncWords,
  layerTemplate,
} from "../../src/mlx/kernels-layer";
import { EMULATION_HEADER, emulationCompiler, perBlockShared, runEmulated } from "./emulate";

interface Case {
  dtype: "f16" | "bf16";
  b: number;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  cap: number;
  pos: number[];
  /** Keys per split (several splits past it). */
  keysPerSplit: number;
  /** Warps of a block (the attention's). */
  warps: number;
  /** Every block at once (emu_launch_all) instead of one after another. */
  concurrent: boolean;
}

const stripStream = (header: string) =>
  header.replace(
    /__device__ __forceinline__ uint4 pv_load_stream\(const uint4\* p\) \{[\s\S]*?\n\}\n/,
    "__device__ __forceinline__ uint4 pv_load_stream(const uint4* p) { return *p; }\n",
  );

function program(c: Case): string {
  const T = c.dtype === "bf16" ? "__nv_bfloat16" : "__half";
  const fromF = c.dtype === "bf16" ? "__float2bfloat16" : "__float2half";
  const toF = c.dtype === "bf16" ? "__bfloat162float" : "__half2float";
  const shape: LayerShape = {
    dtype: c.dtype === "bf16" ? Dtype.bfloat16 : Dtype.float16,
    rows: c.b,
    hidden: c.hidden,
    intermediate: c.intermediate,
    heads: c.heads,
    kvHeads: c.kvHeads,
    headDim: c.headDim,
  };
  setKeysPerSplit(c.keysPerSplit);
  const t = layerTemplate(
    shape,
    {
      groups: [64, 64, 64, 64],
      eps1: 1e-5,
      eps2: 1e-6,
      traditional: false,

      scale: 1 / Math.sqrt(c.headDim),
    },
    c.warps,
  );
  setKeysPerSplit(null);
  const consts = Object.entries(t)
    .map(([k, v]) => `constexpr ${typeof v === "boolean" ? "bool" : "int"} ${k} = ${v};`)
    .join(" ");
  const longest = Math.max(...c.pos) + 1;
  const splits = Math.min(64, Math.max(1, Math.ceil(longest / c.keysPerSplit)));
  const attention = splits === 1 ? DECODE_ATTENTION_WRITE_KERNEL : DECODE_ATTENTION_MERGED_WRITE_KERNEL;
  const grid = layerBlocks(t, splits);
  // The fused path's launches, one constant set each (as gemvPlan / DecodeAttention make them).
  const gemv = (n: string, k: string, rows: string, group: string, eps: string) =>
    `using T = ${T}; constexpr int M = B, N = ${n}, K = ${k}, ROWS = ${rows}, WARPS = GW, GROUP = ${group}, EPS_BITS = ${eps};`;
  return `#include "${EMULATION_HEADER}"
#include <cstdio>
#include <random>
#include <array>
#include <cstring>
namespace mlx::core::cu {
using Shape = std::array<int32_t, 10>;
${perBlockShared(stripStream(DECODE_LAYER_KERNEL.header))}
namespace ref {
${consts}
void qkv(const ${T}* x, const uint32_t* w, const ${T}* scales, const ${T}* biases, const ${T}* norm, const float* rope_cs, ${T}* q, ${T}* k, ${T}* v) {
  ${gemv("QKV_N", "D", "QKV_ROWS", "QKV_GROUP", "EPS1_BITS")}
${GEMV_NORM_ROPE_QKV_KERNEL.source}
}
void residual_o(const ${T}* x, const uint32_t* w, const ${T}* scales, const ${T}* biases, const ${T}* res, ${T}* y) {
  ${gemv("D", "H * HD", "O_ROWS", "O_GROUP", "0")}
${GEMV_RESIDUAL_KERNEL.source}
}
void swiglu(const ${T}* x, const uint32_t* w, const ${T}* scales, const ${T}* biases, const ${T}* norm, ${T}* y) {
  ${gemv("2 * FF", "D", "GU_ROWS", "GU_GROUP", "EPS2_BITS")}
${GEMV_NORM_SWIGLU_KERNEL.source}
}
void residual_down(const ${T}* x, const uint32_t* w, const ${T}* scales, const ${T}* biases, const ${T}* res, ${T}* y) {
  ${gemv("D", "FF", "DN_ROWS", "DN_GROUP", "0")}
${GEMV_RESIDUAL_KERNEL.source}
}
void attention(const ${T}* q, const ${T}* kc, Shape kc_shape, const ${T}* vc, const int32_t* pos, const ${T}* kn, const ${T}* vn, const int* counter, ${T}* out, float* part, float* stats) {
  using T = ${T}; constexpr int WARPS = AW;
  (void)counter; (void)part; (void)stats;
${attention.source}
}
}  // namespace ref
void layer(const ${T}* x, const ${T}* norm1, const uint32_t* w_qkv, const ${T}* s_qkv, const ${T}* b_qkv, const int32_t* pos,
    const float* rope_cs, const ${T}* kc, Shape kc_shape, const ${T}* vc, const uint32_t* w_o, const ${T}* s_o, const ${T}* b_o,
    const ${T}* norm2, const uint32_t* w_gu, const ${T}* s_gu, const ${T}* b_gu, const uint32_t* w_dn, const ${T}* s_dn,
    const ${T}* b_dn, const int* sync_state, ${T}* y, ${T}* q, ${T}* kn, ${T}* vn, ${T}* attn, float* part, float* stats,
    ${T}* h2, ${T}* act) {
  using T = ${T};
  ${consts}
${perBlockShared(DECODE_LAYER_KERNEL.source)}
}
}  // namespace mlx::core::cu
namespace cu = mlx::core::cu;
using T = ${T};
std::mt19937 rng(7);
std::normal_distribution<float> normal(0.f, 1.f);
std::uniform_real_distribution<float> uni(0.f, 1.f);
struct Q { std::vector<uint32_t> w; std::vector<T> s, b; };
Q quant(int n, int k) {
  Q q{std::vector<uint32_t>(n * k / 8), std::vector<T>(n * k / 64), std::vector<T>(n * k / 64)};
  for (auto& v : q.w) v = rng();
  for (size_t i = 0; i < q.s.size(); ++i) {
    q.s[i] = ${fromF}(0.005f + 0.02f * uni(rng));
    q.b[i] = ${fromF}(-8.f * ${toF}(q.s[i]) + 0.05f * normal(rng));
  }
  return q;
}
int main() {
  using namespace cu::ref;
  constexpr int CAP = ${c.cap}, SPLITS = ${splits}, GRID = ${grid}, MAX_SPLITS = 64;
  const int32_t pos[B] = {${c.pos.join(", ")}};
  std::vector<T> x(B * D), norm1(D), norm2(D);
  for (auto& v : x) v = ${fromF}(normal(rng));
  for (auto& v : norm1) v = ${fromF}(0.5f + uni(rng));
  for (auto& v : norm2) v = ${fromF}(0.5f + uni(rng));
  Q qkvw = quant(QKV_N, D), ow = quant(D, H * HD), guw = quant(2 * FF, D), dnw = quant(D, FF);
  std::vector<float> inv_freq(HD / 2);
  for (int i = 0; i < HD / 2; ++i) inv_freq[i] = std::pow(10000.f, -2.f * i / HD);
  // The fused path's RoPE table (ropeTable's arithmetic: the angle in float, then cosf / sinf).
  std::vector<float> rope_cs(B * HD);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < HD / 2; ++i) {
      const float scale = 1.f;
      const float theta = (scale * (float)pos[b]) * inv_freq[i];
      rope_cs[b * HD + i] = cosf(theta);
      rope_cs[b * HD + HD / 2 + i] = sinf(theta);
    }
  std::vector<T> kc(B * HKV * CAP * HD), vc(B * HKV * CAP * HD);
  for (auto& v : kc) v = ${fromF}(normal(rng));
  for (auto& v : vc) v = ${fromF}(normal(rng));
  std::vector<T> kc2 = kc, vc2 = vc, kc0 = kc;
  cu::Shape shape{};
  shape[0] = B; shape[1] = HKV; shape[2] = CAP; shape[3] = HD;
  // The fused path: five launches.
  std::vector<T> q(B * QS), kn(B * KVS), vn(B * KVS), attn(B * QS), h2(B * D), act(B * FF), y(B * D);
  std::vector<float> part(B * H * SPLITS * HD), stats(B * H * SPLITS * 2);
  std::vector<int> counter(B * HKV, 0);
  auto blocks = [](int n, int rows) { return (n / rows + GW - 1) / GW; };
  emu_launch(blocks(QKV_N, QKV_ROWS) * GW * 32, GW * 32, [&] { qkv(x.data(), qkvw.w.data(), qkvw.s.data(), qkvw.b.data(), norm1.data(), rope_cs.data(), q.data(), kn.data(), vn.data()); });
  emu_launch(B * HKV * AW * 32, AW * 32, [&] { attention(q.data(), kc.data(), shape, vc.data(), pos, kn.data(), vn.data(), counter.data(), attn.data(), part.data(), stats.data()); }, SPLITS);
  emu_launch(blocks(D, O_ROWS) * GW * 32, GW * 32, [&] { residual_o(attn.data(), ow.w.data(), ow.s.data(), ow.b.data(), x.data(), h2.data()); });
  emu_launch(blocks(2 * FF, GU_ROWS) * GW * 32, GW * 32, [&] { swiglu(h2.data(), guw.w.data(), guw.s.data(), guw.b.data(), norm2.data(), act.data()); });
  emu_launch(blocks(D, DN_ROWS) * GW * 32, GW * 32, [&] { residual_down(act.data(), dnw.w.data(), dnw.s.data(), dnw.b.data(), h2.data(), y.data()); });
  // The megakernel: one launch.
  std::vector<T> y2(B * D, ${fromF}(NAN)), q2(B * QS), kn2(B * KVS), vn2(B * KVS), attn2(B * QS), h22(B * D), act2(B * FF);
  std::vector<float> part2(B * H * MAX_SPLITS * HD), stats2(B * H * MAX_SPLITS * 2);
  std::vector<int> sync(${layerSyncWords(c.b, c.kvHeads)}, 0);
  ${c.concurrent ? "emu_launch_all" : "emu_launch"}(GRID * AW * 32, AW * 32, [&] {
    cu::layer(x.data(), norm1.data(), qkvw.w.data(), qkvw.s.data(), qkvw.b.data(), pos, rope_cs.data(), kc2.data(), shape,
              vc2.data(), ow.w.data(), ow.s.data(), ow.b.data(), norm2.data(), guw.w.data(), guw.s.data(), guw.b.data(),
              dnw.w.data(), dnw.s.data(), dnw.b.data(), sync.data(), y2.data(), q2.data(), kn2.data(), vn2.data(),
              attn2.data(), part2.data(), stats2.data(), h22.data(), act2.data());
  });
  auto differ = [](const std::vector<T>& a, const std::vector<T>& b) {
    int n = 0;
    for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
    return n;
  };
  double diff = 0;
  for (int i = 0; i < B * D; ++i) diff = std::max(diff, (double)std::fabs(${toF}(y[i]) - ${toF}(y2[i])));
  // Sanity: finite outputs, and the cache changed exactly at the new columns.
  int finite = 0;
  for (int i = 0; i < B * D; ++i) finite += std::isfinite(${toF}(y2[i])) ? 1 : 0;
  const int stored = differ(kc0, kc2);
  int nonzero = 0;
  for (int v : sync) nonzero += v != 0 ? 1 : 0;
  std::printf("{\\"y\\": %d, \\"attn\\": %d, \\"act\\": %d, \\"kc\\": %d, \\"vc\\": %d, \\"maxdiff\\": %g, \\"counters\\": %d, \\"splits\\": %d, \\"blocks\\": %d, \\"finite\\": %d, \\"stored\\": %d}\\n",
      differ(y, y2), differ(attn, attn2), differ(act, act2), differ(kc, kc2), differ(vc, vc2), diff, nonzero, SPLITS, GRID, finite, stored);
}
`;
}

interface Result {
  y: number;
  attn: number;
  act: number;
  kc: number;
  vc: number;
  maxdiff: number;
  counters: number;
  splits: number;
  blocks: number;
  finite: number;
  stored: number;
}

describe.skipIf(!emulationCompiler)("decode-layer megakernel, emulated on the CPU", () => {
  const cases: Array<Case & { label: string; splits: number }> = [
    {
      label: "fp16 B=1, GQA 4/2 heads of 32, one split, 16 warps (4 GEMV blocks a block), one block after another",
      dtype: "f16",
      b: 1,
      hidden: 256,
      intermediate: 256,
      heads: 4,
      kvHeads: 2,
      headDim: 32,
      cap: 64,
      pos: [37],
      keysPerSplit: 64,
      warps: 16,
      concurrent: false,
      splits: 1,
    },
    {
      label: "bf16 B=2, GQA 4/2 heads of 32, 5 splits merged by the last block, 4 warps, one block after another",
      dtype: "bf16",
      b: 2,
      hidden: 256,
      intermediate: 256,
      heads: 4,
      kvHeads: 2,
      headDim: 32,
      cap: 64,
      pos: [37, 11],
      keysPerSplit: 8,
      warps: 4,
      concurrent: false,
      splits: 5,
    },
    {
      label: "fp16 B=2, 8/1 heads of 96 (8 warps: 2 GEMV blocks a block), 3 splits, one block after another",
      dtype: "f16",
      b: 2,
      hidden: 256,
      intermediate: 192,
      heads: 8,
      kvHeads: 1,
      headDim: 96,
      cap: 48,
      pos: [20, 40],
      keysPerSplit: 16,
      warps: 8,
      concurrent: false,
      splits: 3,
    },
    {
      label: "bf16 B=1, 8/1 heads of 96, one split, 4 warps, one block after another",
      dtype: "bf16",
      b: 1,
      hidden: 256,
      intermediate: 192,
      heads: 8,
      kvHeads: 1,
      headDim: 96,
      cap: 48,
      pos: [5],
      keysPerSplit: 64,
      warps: 4,
      concurrent: false,
      splits: 1,
    },
    {
      label: "fp16 B=1, 2/1 heads of 32, 2 splits merged, 4 warps, every block at once",
      dtype: "f16",
      b: 1,
      hidden: 256,
      intermediate: 128,
      heads: 2,
      kvHeads: 1,
      headDim: 32,
      cap: 64,
      pos: [40],
      keysPerSplit: 32,
      warps: 4,
      concurrent: true,
      splits: 2,
    },
  ];
  for (const c of cases) {
    test(c.label, () => {
      const name = `${c.dtype}-b${c.b}-${c.heads}x${c.kvHeads}x${c.headDim}-s${c.keysPerSplit}-w${c.warps}${c.concurrent ? "-all" : ""}`;
      const r = runEmulated<Result>("layer-emulated", name, program(c));
      expect(r.splits).toBe(c.splits);
      expect(r).toMatchObject({ y: 0, attn: 0, act: 0, kc: 0, vc: 0, maxdiff: 0, counters: 0 });
      expect(r.finite).toBe(c.b * c.hidden);
      // The new keys (random values: a few may equal the old ones by chance).
      expect(r.stored).toBeGreaterThan(c.b * c.kvHeads * c.headDim * 0.9);
    }, 300_000);
  }
});
