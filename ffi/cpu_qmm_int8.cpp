// An integer-dot CPU quantized matmul for MLX's affine format (which is also
// how GGUF Q4_0, Q4_1 and Q8_0 load: group 32, bias = -8d, min, -128d).
//
// Why: the float kernel (cpu_qmm.cpp) spends most of its time turning 4-bit
// weights into floats. Here the activations are quantized instead, once per
// call, in blocks of the weight's group size (32/64/128), and each group's
// dot product is a u8 × s8 integer dot (vpdpbusd with AVX-512 VNNI, maddubs
// with AVX2), so a weight byte is touched by a few instructions.
// Activations are split in two int8 parts: x ≈ dl·(256·xh + xl), with
// xh = round(x·127/max|x|) and xl the rounded remainder in steps 256 times
// finer (about 15 bits in all). One int8 part alone (llama.cpp's Q8 blocks)
// flipped SmolLM2's first answer token on "What is the capital of France?":
// blocks holding one large activation round every other value to 0. The two
// dots combine in int32 as (Σ q·xh << 8) + Σ q·xl:
//   y[m,n] = sum_g s[n,g]·dl[m,g]·Σ_k q[n,k]·X[m,k]  +  b[n,g]·dl[m,g]·Σ_k X[m,k],   X = 256·xh + xl
// which is exactly dequantize(w) · x̂ with x̂ = dl·X (up to float rounding). Paths: VNNI (AVX-512 VL + VNNI, 256-bit vectors: same
// throughput per element as 512-bit on Zen 4, and no tail cases), AVX2, scalar.
// All three quantize activations the same way, so their integer dots are equal.
// The path is picked at run time; pv_cpu_set_isa forces one (tests, bench).

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PV_X86 1
#endif

#include "cpu_qmm_int8.h"

namespace pensieve {

// ---- which instruction set ----

bool cpu_isa_supported(int isa) {
  switch (isa) {
    case kIsaAuto:
    case kIsaScalar: return true;
#ifdef PV_X86
    case kIsaAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case kIsaVnni:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("avx512bw");
#endif
    default: return false;
  }
}

static int best_isa() {
  static const int best = cpu_isa_supported(kIsaVnni) ? kIsaVnni : cpu_isa_supported(kIsaAvx2) ? kIsaAvx2 : kIsaScalar;
  return best;
}

static int isa_from_env() {
  const char* v = std::getenv("PENSIEVE_CPU_ISA");
  if (v == nullptr) return kIsaAuto;
  const std::string s(v);
  if (s == "scalar") return kIsaScalar;
  if (s == "avx2") return kIsaAvx2;
  if (s == "vnni" || s == "avx512") return kIsaVnni;
  return kIsaAuto;
}

static std::atomic<int> forced_isa{isa_from_env()};

/** Forces a path (kIsa*); kIsaAuto: the best this CPU has. False when the CPU lacks it. */
bool cpu_set_isa(int isa) {
  if (!cpu_isa_supported(isa)) return false;
  forced_isa.store(isa);
  return true;
}

/** The path the next product takes. An unsupported forced path falls back to the best. */
int cpu_isa_in_use() {
  const int f = forced_isa.load();
  return f != kIsaAuto && cpu_isa_supported(f) ? f : best_isa();
}

void cpu_set_threads(int threads) { Pool::get().set_threads(threads); }
int cpu_threads() { return Pool::get().size(); }

// ---- activations, quantized once per call ----
// Per row m and group g: dh = max|x|/127, xh = round(x/dh), dl = dh/256,
// xl = round((x - dh·xh)/dl) clamped to ±127, both int8; d holds dl. Also the
// sum of X = 256·xh + xl (qsum: the AVX2 8-bit path's correction) and of
// x̂ = dl·X (xsum: the bias term). 8-bit
// weights take xq in natural order. For 4-bit weights xq is laid out in the
// order the nibbles unpack: kLayoutBlock32 (scalar, AVX2) stores each 32-block
// as [even elements | odd elements]; kLayoutVnni pairs blocks (see
// cpu_qmm_int8_vnni.inc) and also fills dxb and xsb in the VNNI tiles' lane
// order: each block's dx, and its group's sum of x on the group's first block
// (0 on the others, so that the bias term counts each group once).
// Where input k of a row goes in xq.
static inline int xq_position(int k, int bits, int layout, int blocks) {
  if (bits == 8) return k;
  const int b = k >> 5, j = k & 31;
  if (layout == kLayoutVnni && (b | 1) < blocks) return (b >> 1) * 64 + (j & 1) * 32 + (b & 1) * 16 + (j >> 1);
  return b * 32 + (j & 1) * 16 + (j >> 1);
}

static void quantize_rows(const float* x, ActQ& a, int bits, int m0, int m1) {
  const int blocks = a.K / 32;
  const int full = blocks / 8 * 8;
  const int per = a.group / 32;
  static constexpr int kOrder4[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  for (int m = m0; m < m1; ++m) {
    int8_t* qrow = a.q.data() + static_cast<size_t>(m) * a.K;
    int8_t* lrow = a.ql.data() + static_cast<size_t>(m) * a.K;
    for (int g = 0; g < a.groups; ++g) {
      const float* xg = x + static_cast<size_t>(m) * a.K + static_cast<size_t>(g) * a.group;
      float amax = 0.f;
      for (int k = 0; k < a.group; ++k) amax = std::max(amax, std::fabs(xg[k]));
      const float dh = amax / 127.0f;
      const float ih = dh != 0.f ? 1.0f / dh : 0.f;
      const float d = dh / 256.0f;
      const float il = d != 0.f ? 1.0f / d : 0.f;
      int32_t qs = 0;
      for (int k = 0; k < a.group; ++k) {
        const int v = static_cast<int>(std::floor(xg[k] * ih + 0.5f));  // |v| <= 127: exact
        const float rest = xg[k] - static_cast<float>(v) * dh;
        const int lo = std::clamp(static_cast<int>(std::floor(rest * il + 0.5f)), -127, 127);
        qs += 256 * v + lo;
        const int at = xq_position(g * a.group + k, bits, a.layout, blocks);
        qrow[at] = static_cast<int8_t>(v);
        lrow[at] = static_cast<int8_t>(lo);
      }
      const size_t i = static_cast<size_t>(m) * a.groups + g;
      a.d[i] = d;
      // The bias term takes the sum of the rounded x: then the product is
      // exactly dequantize(w) · x̂, whose error Σ w (x̂ - x) involves the
      // centered weight; the exact sum would leave s·Σ q (x̂ - x), with q
      // in [0, 2^bits) several times larger.
      a.xsum[i] = d * static_cast<float>(qs);
      a.qsum[i] = qs;
    }
    if (a.layout == kLayoutVnni) {
      float* dxb = a.dxb.data() + static_cast<size_t>(m) * blocks;
      const float* dg = a.d.data() + static_cast<size_t>(m) * a.groups;
      float* xsb = a.xsb.data() + static_cast<size_t>(m) * blocks;
      const float* xs = a.xsum.data() + static_cast<size_t>(m) * a.groups;
      for (int b = 0; b < blocks; ++b) {
        const int block = b < full && bits == 4 ? (b & ~7) + kOrder4[b & 7] : b;
        dxb[b] = dg[block / per];
        xsb[b] = block % per == 0 ? xs[block / per] : 0.f;
      }
    }
  }
}

// The bias term (and the AVX2 8-bit correction), added once the scale terms are in y.
static void add_bias_terms(const ActQ& a, const float* scales, const float* biases, float* y, const QShape& s, int n0,
                           int n1, bool signed_correction) {
  for (int m = 0; m < s.M; ++m) {
    const float* xs = a.xsum.data() + static_cast<size_t>(m) * a.groups;
    const float* dd = a.d.data() + static_cast<size_t>(m) * a.groups;
    const int32_t* qs = a.qsum.data() + static_cast<size_t>(m) * a.groups;
    for (int n = n0; n < n1; ++n) {
      const float* bi = biases + static_cast<size_t>(n) * a.groups;
      // Four sums: a single one would wait on each add's latency.
      float t4[4] = {0.f, 0.f, 0.f, 0.f};
      int g = 0;
      for (; g + 4 <= a.groups; g += 4)
        for (int j = 0; j < 4; ++j) t4[j] += bi[g + j] * xs[g + j];
      float t = (t4[0] + t4[1]) + (t4[2] + t4[3]);
      for (; g < a.groups; ++g) t += bi[g] * xs[g];
      if (signed_correction) {
        const float* sc = scales + static_cast<size_t>(n) * a.groups;
        for (int g = 0; g < a.groups; ++g) t += sc[g] * (128.0f * dd[g] * static_cast<float>(qs[g]));
      }
      y[static_cast<size_t>(m) * s.N + n] += t;
    }
  }
}

// ---- scalar path ----
static void rows_scalar(const ActQ& a, const uint32_t* w, const float* scales, float* y, const QShape& s, int n0, int n1) {
  const size_t row_bytes = static_cast<size_t>(s.K) * s.bits / 8;
  const auto* wb = reinterpret_cast<const uint8_t*>(w);
  std::vector<uint8_t> row(s.K);
  for (int n = n0; n < n1; ++n) {
    // The weight row in the activations' order (see ActQ).
    const uint8_t* src = wb + static_cast<size_t>(n) * row_bytes;
    if (s.bits == 8) std::memcpy(row.data(), src, s.K);
    else {
      for (int b = 0; b < s.K / 32; ++b) {
        for (int j = 0; j < 16; ++j) {
          row[b * 32 + j] = src[b * 16 + j] & 0xF;
          row[b * 32 + 16 + j] = src[b * 16 + j] >> 4;
        }
      }
    }
    const float* sc = scales + static_cast<size_t>(n) * a.groups;
    for (int m = 0; m < s.M; ++m) {
      const int8_t* xq = a.q.data() + static_cast<size_t>(m) * s.K;
      const int8_t* xl = a.ql.data() + static_cast<size_t>(m) * s.K;
      const float* dd = a.d.data() + static_cast<size_t>(m) * a.groups;
      float acc = 0.f;
      for (int g = 0; g < a.groups; ++g) {
        int32_t hi = 0, lo = 0;
        for (int k = g * s.group; k < (g + 1) * s.group; ++k) {
          hi += static_cast<int32_t>(row[k]) * xq[k];
          lo += static_cast<int32_t>(row[k]) * xl[k];
        }
        const int32_t dot = hi * 256 + lo;
        acc += sc[g] * dd[g] * static_cast<float>(dot);
      }
      y[static_cast<size_t>(m) * s.N + n] = acc;
    }
  }
}

#ifdef PV_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "cpu_qmm_int8_avx2.inc"
}  // namespace avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")
namespace vnni {
#include "cpu_qmm_int8_vnni.inc"
}  // namespace vnni
#pragma GCC pop_options
#endif

void quantize_activations(const float* x, ActQ& a, const QShape& s, int isa) {
  a.M = s.M;
  a.K = s.K;
  a.group = s.group;
  a.groups = s.K / s.group;
  a.q.resize(static_cast<size_t>(s.M) * s.K);
  a.ql.resize(a.q.size());
  a.d.resize(static_cast<size_t>(s.M) * a.groups);
  a.xsum.resize(a.d.size());
  a.qsum.resize(a.d.size());
  a.layout = isa == kIsaVnni ? kLayoutVnni : kLayoutBlock32;
  if (a.layout == kLayoutVnni) {
    a.dxb.resize(static_cast<size_t>(s.M) * (s.K / 32));
    a.xsb.resize(a.dxb.size());
  }
  auto& pool = Pool::get();
  if (s.M >= 16) {
    pool.run(std::min(pool.size(), s.M / 8), [&](int p, int total) {
      quantize_rows(x, a, s.bits, s.M * p / total, s.M * (p + 1) / total);
    });
  } else {
    quantize_rows(x, a, s.bits, 0, s.M);
  }
}

void qmm_int8_cpu(const float* x, const uint32_t* w, const float* scales, const float* biases, float* y, QShape s,
                  int isa) {
  ActQ a;
  quantize_activations(x, a, s, isa);
  auto& pool = Pool::get();
  using Rows = void (*)(const ActQ&, const uint32_t*, const float*, float*, const QShape&, int, int);
  Rows rows = &rows_scalar;
  bool signed_correction = false;
#ifdef PV_X86
  if (isa == kIsaAvx2) {
    rows = s.bits == 4 ? &avx2::rows<4> : &avx2::rows<8>;
    signed_correction = s.bits == 8;
  }
#endif
  // Split the output features, in multiples of 4 rows (the widest tile); small products stay on this thread
  // (Pool::min_parallel_work).
  const double work = static_cast<double>(s.M) * s.N * s.K;
  const double min_work = pool.min_parallel_work();
  const int parts = work < min_work ? 1 : std::min(pool.size() * 4, std::max(1, s.N / 64));
  pool.run(parts, [&](int p, int total) {
    const int n0 = static_cast<int>(static_cast<int64_t>(s.N / 4) * p / total) * 4;
    const int n1 = p + 1 == total ? s.N : static_cast<int>(static_cast<int64_t>(s.N / 4) * (p + 1) / total) * 4;
    if (n1 <= n0) return;
    if (isa == kIsaVnni) {
#ifdef PV_X86
      (s.bits == 4 ? vnni::rows<4> : vnni::rows<8>)(a, w, scales, biases, y, s, n0, n1);
#endif
      return;
    }
    rows(a, w, scales, y, s, n0, n1);
    add_bias_terms(a, scales, biases, y, s, n0, n1, signed_correction);
  });
}

class CpuQuantizedMatmulInt8 : public mx::UnaryPrimitive {
 public:
  CpuQuantizedMatmulInt8(mx::Stream stream, int group, int bits) : UnaryPrimitive(stream), group_(group), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    const auto& x = inputs[0];
    const int K = static_cast<int>(x.shape(-1));
    const int N = static_cast<int>(out.shape(-1));
    QShape s{static_cast<int>(x.size() / K), N, K, group_, bits_};
    const int isa = cpu_isa_in_use();
    encoder.dispatch([x = inputs[0], w = inputs[1], sc = inputs[2], bi = inputs[3], out, s, isa]() mutable {
      std::vector<float> xs, ss, bs;
      std::vector<uint32_t> ws;
      qmm_int8_cpu(row_major(x, xs), row_major(w, ws), row_major(sc, ss), row_major(bi, bs), out.data<float>(), s, isa);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("PensieveCpuQuantizedMatmulInt8 runs on the CPU only");
  }

  const char* name() const override { return "PensieveCpuQuantizedMatmulInt8"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const CpuQuantizedMatmulInt8*>(&other);
    return o && o->group_ == group_ && o->bits_ == bits_;
  }

 private:
  int group_, bits_;
};

// x [..., K] @ dequantize(w)^T with int8 activations; checks shapes and dtypes.
mx::array cpu_quantized_matmul_int8(const mx::array& x_in, const mx::array& w, const mx::array& scales,
                                    const mx::array& biases, int group, int bits) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("cpu int8 qmm: bits must be 4 or 8");
  if (group != 32 && group != 64 && group != 128) {
    throw std::invalid_argument("cpu int8 qmm: group size must be 32, 64 or 128");
  }
  if (w.dtype() != mx::uint32 || w.ndim() != 2) {
    throw std::invalid_argument("cpu int8 qmm: weight must be uint32 [N, K*bits/32]");
  }
  if (scales.dtype() != mx::float32 || biases.dtype() != mx::float32) {
    throw std::invalid_argument("cpu int8 qmm: scales and biases must be float32");
  }
  const int N = w.shape(0);
  const int K = w.shape(1) * 32 / bits;
  if (x_in.ndim() < 1 || x_in.shape(-1) != K) {
    throw std::invalid_argument("cpu int8 qmm: x has " + std::to_string(x_in.ndim() ? x_in.shape(-1) : 0) +
                                " features, the weight expects " + std::to_string(K));
  }
  if (K % group != 0 || scales.ndim() != 2 || scales.shape(0) != N || scales.shape(1) != K / group ||
      biases.shape() != scales.shape()) {
    throw std::invalid_argument("cpu int8 qmm: scales/biases do not match the weight and group size");
  }
  auto cpu = mx::default_stream(mx::Device::cpu);
  mx::Shape out_shape(x_in.shape().begin(), x_in.shape().end() - 1);
  out_shape.push_back(N);
  auto x = x_in.dtype() == mx::float32 ? x_in : mx::astype(x_in, mx::float32, cpu);
  return mx::array(out_shape, mx::float32, std::make_shared<CpuQuantizedMatmulInt8>(cpu, group, bits),
                   {x, w, scales, biases});
}

}  // namespace pensieve
