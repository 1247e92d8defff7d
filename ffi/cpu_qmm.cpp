// A CPU quantized matmul for MLX's affine format, as a custom MLX primitive.
//
// Why: MLX's CPU backend on x86 runs quantized matmul as a scalar loop on one
// thread, and its cost grows with every row of the batch. This kernel unpacks
// each weight word once for a block of rows, uses AVX2/FMA when the CPU has it
// (checked at run time, so one build runs anywhere), and splits the output
// features across the cores. Same math as mx::quantized_matmul(transpose=true):
//   y[m, n] = sum_g scale[n, g] * sum_{k in g} x[m, k] q[n, k]  +  bias[n, g] * sum_{k in g} x[m, k]
// Inputs: x float32 [M, K] (row-contiguous), w uint32 [N, K*bits/32],
// scales and biases float32 [N, K/group]. bits 4 or 8; group a multiple of 8.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PV_X86 1
#endif

#include "cpu_common.h"

namespace pensieve {

struct QmmShape {
  int M, N, K, group, bits;
};

// Rows of x processed together: each unpacked weight word serves all of them.
constexpr int kRowBlock = 4;

// ---- portable kernel (the compiler vectorizes what it can) ----
static void qmm_rows_generic(const float* x, const float* xsum, const uint32_t* w, const float* scales,
                             const float* biases, float* y, const QmmShape& s, int n0, int n1) {
  const int groups = s.K / s.group;
  const int per_word = 32 / s.bits;
  const int words_per_row = s.K / per_word;
  const uint32_t mask = (1u << s.bits) - 1u;
  std::vector<float> row(s.K);
  for (int n = n0; n < n1; ++n) {
    const uint32_t* wr = w + static_cast<size_t>(n) * words_per_row;
    for (int i = 0; i < words_per_row; ++i) {
      uint32_t word = wr[i];
      for (int j = 0; j < per_word; ++j) row[i * per_word + j] = static_cast<float>((word >> (j * s.bits)) & mask);
    }
    const float* sc = scales + static_cast<size_t>(n) * groups;
    const float* bi = biases + static_cast<size_t>(n) * groups;
    for (int m = 0; m < s.M; ++m) {
      const float* xr = x + static_cast<size_t>(m) * s.K;
      float acc = 0.f;
      for (int g = 0; g < groups; ++g) {
        float dot = 0.f;
        const float* xg = xr + g * s.group;
        const float* qg = row.data() + g * s.group;
        for (int k = 0; k < s.group; ++k) dot += xg[k] * qg[k];
        acc += sc[g] * dot + bi[g] * xsum[static_cast<size_t>(m) * groups + g];
      }
      y[static_cast<size_t>(m) * s.N + n] = acc;
    }
  }
}

#ifdef PV_X86
__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  sums = _mm_add_ss(sums, shuf);
  return _mm_cvtss_f32(sums);
}

// 8 weights as floats: one word of 4-bit values, or two words of 8-bit values.
template <int BITS>
__attribute__((target("avx2,fma"))) static inline __m256 unpack8(const uint32_t* p) {
  if constexpr (BITS == 4) {
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    __m256i q = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(p[0])), shifts);
    return _mm256_cvtepi32_ps(_mm256_and_si256(q, _mm256_set1_epi32(0xF)));
  } else {
    __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
  }
}

// A tile of NR weight rows × ROWS rows of x. Each unpacked weight vector,
// scaled by its group's scale, serves all ROWS rows; each x vector serves NR
// weight rows. The bias term needs only the per-group sums of x.
template <int BITS, int ROWS, int NR>
__attribute__((target("avx2,fma"))) static void tile_avx2(const float* x, const float* xsum, const uint32_t* w,
                                                         const float* scales, const float* biases, float* y,
                                                         const QmmShape& s, int n, int m0) {
  const int groups = s.K / s.group;
  const size_t words_per_row = static_cast<size_t>(s.K) * BITS / 32;
  constexpr int words_per_8 = BITS / 4;
  __m256 acc[NR][ROWS];
  float bias_acc[NR][ROWS];
  for (int t = 0; t < NR; ++t) {
    for (int r = 0; r < ROWS; ++r) {
      acc[t][r] = _mm256_setzero_ps();
      bias_acc[t][r] = 0.f;
    }
  }
  for (int g = 0; g < groups; ++g) {
    __m256 scale[NR];
    for (int t = 0; t < NR; ++t) scale[t] = _mm256_set1_ps(scales[static_cast<size_t>(n + t) * groups + g]);
    for (int j = 0; j < s.group / 8; ++j) {
      const size_t col = static_cast<size_t>(g) * s.group + static_cast<size_t>(j) * 8;
      __m256 xv[ROWS];
      for (int r = 0; r < ROWS; ++r) xv[r] = _mm256_loadu_ps(x + static_cast<size_t>(m0 + r) * s.K + col);
      for (int t = 0; t < NR; ++t) {
        const uint32_t* wp = w + static_cast<size_t>(n + t) * words_per_row + (col / 8) * words_per_8;
        __m256 q = _mm256_mul_ps(unpack8<BITS>(wp), scale[t]);
        for (int r = 0; r < ROWS; ++r) acc[t][r] = _mm256_fmadd_ps(q, xv[r], acc[t][r]);
      }
    }
    for (int t = 0; t < NR; ++t) {
      const float b = biases[static_cast<size_t>(n + t) * groups + g];
      for (int r = 0; r < ROWS; ++r) bias_acc[t][r] += b * xsum[static_cast<size_t>(m0 + r) * groups + g];
    }
  }
  for (int t = 0; t < NR; ++t) {
    for (int r = 0; r < ROWS; ++r) y[static_cast<size_t>(m0 + r) * s.N + n + t] = hsum256(acc[t][r]) + bias_acc[t][r];
  }
}

template <int BITS, int NR>
__attribute__((target("avx2,fma"))) static void rows_avx2(const float* x, const float* xsum, const uint32_t* w,
                                                         const float* scales, const float* biases, float* y,
                                                         const QmmShape& s, int n) {
  int m0 = 0;
  for (; m0 + kRowBlock <= s.M; m0 += kRowBlock) tile_avx2<BITS, kRowBlock, NR>(x, xsum, w, scales, biases, y, s, n, m0);
  switch (s.M - m0) {
    case 3: tile_avx2<BITS, 3, NR>(x, xsum, w, scales, biases, y, s, n, m0); break;
    case 2: tile_avx2<BITS, 2, NR>(x, xsum, w, scales, biases, y, s, n, m0); break;
    case 1: tile_avx2<BITS, 1, NR>(x, xsum, w, scales, biases, y, s, n, m0); break;
    default: break;
  }
}

template <int BITS>
__attribute__((target("avx2,fma"))) static void qmm_rows_avx2_bits(const float* x, const float* xsum, const uint32_t* w,
                                                                  const float* scales, const float* biases, float* y,
                                                                  const QmmShape& s, int n0, int n1) {
  int n = n0;
  for (; n + 2 <= n1; n += 2) rows_avx2<BITS, 2>(x, xsum, w, scales, biases, y, s, n);
  if (n < n1) rows_avx2<BITS, 1>(x, xsum, w, scales, biases, y, s, n);
}

static void qmm_rows_avx2(const float* x, const float* xsum, const uint32_t* w, const float* scales,
                          const float* biases, float* y, const QmmShape& s, int n0, int n1) {
  if (s.bits == 4) qmm_rows_avx2_bits<4>(x, xsum, w, scales, biases, y, s, n0, n1);
  else qmm_rows_avx2_bits<8>(x, xsum, w, scales, biases, y, s, n0, n1);
}

static bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

void qmm_cpu(const float* x, const uint32_t* w, const float* scales, const float* biases, float* y, QmmShape s) {
  const int groups = s.K / s.group;
  // Per row and group, the sum of x: the bias term needs only that.
  std::vector<float> xsum(static_cast<size_t>(s.M) * groups);
  for (int m = 0; m < s.M; ++m) {
    for (int g = 0; g < groups; ++g) {
      const float* xg = x + static_cast<size_t>(m) * s.K + static_cast<size_t>(g) * s.group;
      float t = 0.f;
      for (int k = 0; k < s.group; ++k) t += xg[k];
      xsum[static_cast<size_t>(m) * groups + g] = t;
    }
  }
  auto kernel = &qmm_rows_generic;
#ifdef PV_X86
  if (cpu_has_avx2_fma()) kernel = &qmm_rows_avx2;
#endif
  // Split the output features: enough work per part to pay for the hand-off.
  const double work = static_cast<double>(s.M) * s.N * s.K;
  const int parts = work < 2e5 ? 1 : std::min(Pool::get().size() * 4, std::max(1, s.N / 16));
  Pool::get().run(parts, [&](int p, int total) {
    const int n0 = static_cast<int>(static_cast<int64_t>(s.N) * p / total);
    const int n1 = static_cast<int>(static_cast<int64_t>(s.N) * (p + 1) / total);
    if (n1 > n0) kernel(x, xsum.data(), w, scales, biases, y, s, n0, n1);
  });
}

class CpuQuantizedMatmul : public mx::UnaryPrimitive {
 public:
  CpuQuantizedMatmul(mx::Stream stream, int group, int bits) : UnaryPrimitive(stream), group_(group), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    const auto& x = inputs[0];
    const int K = static_cast<int>(x.shape(-1));
    const int N = static_cast<int>(out.shape(-1));
    QmmShape s{static_cast<int>(x.size() / K), N, K, group_, bits_};
    // The task holds references so the buffers outlive it. Inputs are taken as
    // they are (no contiguous() op in the graph): strided ones are gathered here.
    encoder.dispatch([x = inputs[0], w = inputs[1], sc = inputs[2], bi = inputs[3], out, s]() mutable {
      std::vector<float> xs, ss, bs;
      std::vector<uint32_t> ws;
      qmm_cpu(row_major(x, xs), row_major(w, ws), row_major(sc, ss), row_major(bi, bs), out.data<float>(), s);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("PensieveCpuQuantizedMatmul runs on the CPU only");
  }

  const char* name() const override { return "PensieveCpuQuantizedMatmul"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const CpuQuantizedMatmul*>(&other);
    return o && o->group_ == group_ && o->bits_ == bits_;
  }

 private:
  int group_, bits_;
};

// x [..., K] @ dequantize(w)^T with the CPU kernel; checks shapes and dtypes.
mx::array cpu_quantized_matmul(const mx::array& x_in, const mx::array& w, const mx::array& scales,
                               const mx::array& biases, int group, int bits) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("cpu qmm: bits must be 4 or 8");
  if (group % 8 != 0 || group <= 0) throw std::invalid_argument("cpu qmm: group size must be a multiple of 8");
  if (w.dtype() != mx::uint32 || w.ndim() != 2) throw std::invalid_argument("cpu qmm: weight must be uint32 [N, K*bits/32]");
  if (scales.dtype() != mx::float32 || biases.dtype() != mx::float32) {
    throw std::invalid_argument("cpu qmm: scales and biases must be float32");
  }
  const int N = w.shape(0);
  const int K = w.shape(1) * 32 / bits;
  if (x_in.ndim() < 1 || x_in.shape(-1) != K) {
    throw std::invalid_argument("cpu qmm: x has " + std::to_string(x_in.ndim() ? x_in.shape(-1) : 0) +
                                " features, the weight expects " + std::to_string(K));
  }
  if (K % group != 0 || scales.ndim() != 2 || scales.shape(0) != N || scales.shape(1) != K / group ||
      biases.shape() != scales.shape()) {
    throw std::invalid_argument("cpu qmm: scales/biases do not match the weight and group size");
  }
  auto cpu = mx::default_stream(mx::Device::cpu);
  mx::Shape out_shape(x_in.shape().begin(), x_in.shape().end() - 1);
  out_shape.push_back(N);
  auto x = x_in.dtype() == mx::float32 ? x_in : mx::astype(x_in, mx::float32, cpu);
  return mx::array(out_shape, mx::float32, std::make_shared<CpuQuantizedMatmul>(cpu, group, bits), {x, w, scales, biases});
}

}  // namespace pensieve
