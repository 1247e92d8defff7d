// RoPE and scaled dot-product attention as CPU primitives (float32).
//
// Why: on the CPU, MLX has no fused kernels for these; it runs them as chains
// of small ops (for attention, matrix products through the reference BLAS), at
// 80-200 µs a call for a decode step of a small model, several times the
// arithmetic. These compute the same functions directly, on strided inputs (q
// and k arrive transposed), across the thread pool.
//
// Semantics follow mx::fast:
//   rope: pairs (i, i + dims/2), or (2i, 2i+1) when traditional; angle =
//     scale * position * inv_freq_i, inv_freq_i = base^(-2i/dims) or 1/freqs[i];
//     position = offset + row, offset an int or one per batch entry.
//   sdpa: q [B, Hq, L, D], k and v [B, Hkv, S, D] (Hq a multiple of Hkv);
//     causal masks are aligned bottom-right (query i sees keys j <= S - L + i);
//     an array mask is a boolean keep-mask broadcastable to [B, Hq, L, S].

#include <array>
#include <cmath>
#include <cstring>
#include <memory>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "cpu_common.h"

namespace pensieve {

namespace {

// Contiguous dot product and y += a*x, with AVX2/FMA when the CPU has it.
#if defined(__x86_64__) || defined(_M_X64)
__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, int n) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  float sum = _mm_cvtss_f32(lo);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}
__attribute__((target("avx2,fma"))) void axpy_avx2(float* y, float a, const float* x, int n) {
  const __m256 av = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}
bool has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#else
bool has_avx2() { return false; }
float dot_avx2(const float*, const float*, int) { return 0.f; }
void axpy_avx2(float*, float, const float*, int) {}
#endif

float dot(const float* a, const float* b, int n) {
  if (has_avx2()) return dot_avx2(a, b, n);
  float sum = 0.f;
  for (int i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy(float* y, float a, const float* x, int n) {
  if (has_avx2()) return axpy_avx2(y, a, x, n);
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

#include "cpu_attention_tiled.inc"

/** Strides (in elements) of `a` broadcast to `shape` (size-1 axes read with stride 0). */
std::vector<int64_t> broadcast_strides(const mx::array& a, const mx::Shape& shape) {
  std::vector<int64_t> out(shape.size(), 0);
  const int off = static_cast<int>(shape.size()) - static_cast<int>(a.ndim());
  for (int d = 0; d < static_cast<int>(a.ndim()); ++d) {
    out[off + d] = a.shape(d) == 1 ? 0 : a.strides()[d];
  }
  return out;
}

/** PENSIEVE_CPU_ATTENTION=per-row: the per-row path even where the tiled one applies (to compare them). */
bool per_row_forced() {
  static const bool on = [] {
    const char* v = std::getenv("PENSIEVE_CPU_ATTENTION");
    return v != nullptr && std::string(v) == "per-row";
  }();
  return on;
}

struct RopeParams {
  int dims;
  bool traditional;
  float base;
  float scale;
  int offset;
  bool offset_array;
  bool has_freqs;
};

void rope_compute(const RopeParams& p, const std::vector<mx::array>& inputs, mx::array& out) {
  const auto& x = inputs[0];
  const int nd = static_cast<int>(x.ndim());
  const int L = x.shape(nd - 2);
  const int D = x.shape(nd - 1);
  const int64_t batch = x.shape(0);
  const int64_t rows = x.size() / D;  // every (..., l) row
  const int64_t per_batch = rows / std::max<int64_t>(1, batch);
  const int half = p.dims / 2;
  std::vector<float> inv_freq(half);
  int next = 1;
  const float* freqs = p.has_freqs ? inputs[next++].data<float>() : nullptr;
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = p.has_freqs ? 1.0f / freqs[i] : std::pow(p.base, -2.0f * static_cast<float>(i) / p.dims);
  }
  std::vector<int32_t> offsets;
  if (p.offset_array) {
    std::vector<int32_t> scratch;
    const auto& o = inputs[next];
    const int32_t* op = row_major(o, scratch);
    offsets.assign(op, op + o.size());
  }
  std::vector<float> scratch;
  const float* src = row_major(x, scratch);
  float* dst = out.data<float>();
  auto& pool = Pool::get();
  // cos and sin once per (batch entry, position), not once per head: the same theta, so the same values.
  const int64_t positions = std::max<int64_t>(1, batch) * L;
  std::unique_ptr<float[]> table(new float[static_cast<size_t>(positions) * half * 2]);
  pool.run(positions * half < 16384 ? 1 : pool.size(), [&](int part, int total) {
    for (int64_t bl = positions * part / total; bl < positions * (part + 1) / total; ++bl) {
      const int64_t b = bl / L;
      const int l = static_cast<int>(bl % L);
      const int64_t start = p.offset_array ? offsets[offsets.size() == 1 ? 0 : b] : p.offset;
      const float pos = static_cast<float>(start + l);
      float* cs = table.get() + bl * half * 2;
      for (int i = 0; i < half; ++i) {
        const float theta = p.scale * pos * inv_freq[i];
        cs[2 * i] = std::cos(theta);
        cs[2 * i + 1] = std::sin(theta);
      }
    }
  });
  const int parts = rows * D < 65536 ? 1 : pool.size();
  pool.run(parts, [&](int part, int total) {
    for (int64_t r = rows * part / total; r < rows * (part + 1) / total; ++r) {
      const int64_t b = r / per_batch;
      const int l = static_cast<int>(r % L);
      const float* cs = table.get() + (b * L + l) * half * 2;
      const float* in = src + r * D;
      float* o = dst + r * D;
      for (int i = 0; i < half; ++i) {
        const float c = cs[2 * i], sn = cs[2 * i + 1];
        const int a = p.traditional ? 2 * i : i;
        const int bi = p.traditional ? 2 * i + 1 : i + half;
        const float x1 = in[a], x2 = in[bi];
        o[a] = x1 * c - x2 * sn;
        o[bi] = x1 * sn + x2 * c;
      }
      for (int i = p.dims; i < D; ++i) o[i] = in[i];
    }
  });
}

class CpuRope : public mx::UnaryPrimitive {
 public:
  CpuRope(mx::Stream s, RopeParams p) : UnaryPrimitive(s), p_(p) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    encoder.dispatch([inputs, out, p = p_]() mutable { rope_compute(p, inputs, out); });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("PensieveCpuRope runs on the CPU only");
  }
  const char* name() const override { return "PensieveCpuRope"; }

 private:
  RopeParams p_;
};

// A 4-D float32 view: data, shape and strides in elements.
struct View4 {
  const float* data;
  std::array<int, 4> shape;
  std::array<int64_t, 4> strides;
};

View4 view_of(const mx::array& a) {
  return {a.data<float>(),
          {a.shape(0), a.shape(1), a.shape(2), a.shape(3)},
          {a.strides()[0], a.strides()[1], a.strides()[2], a.strides()[3]}};
}

void sdpa_compute(const View4& q, const View4& k, const View4& v, const mx::array* mask, float* op, float scale,
                int mode) {
  const int B = q.shape[0], Hq = q.shape[1], L = q.shape[2], D = q.shape[3];
  const int Hkv = k.shape[1], S = k.shape[2], Dv = v.shape[3];
  const int group = Hq / Hkv;
  const auto &qs = q.strides, &ks = k.strides, &vs = v.strides;
  const float* qp = q.data;
  const float* kp = k.data;
  const float* vp = v.data;
  const bool* mp = nullptr;
  std::vector<int64_t> ms;
  if (mode == 2) {
    mp = mask->data<bool>();
    ms = broadcast_strides(*mask, {B, Hq, L, S});
  }
  if (tiled::applies(qs[3], ks[3], vs[3], D, Dv, group * L) && !per_row_forced()) {
    tiled::Problem p{};
    p.q = qp, p.k = kp, p.v = vp, p.mask = mp, p.out = op;
    for (int d = 0; d < 4; ++d) {
      p.qs[d] = qs[d], p.ks[d] = ks[d], p.vs[d] = vs[d];
      p.ms[d] = mode == 2 ? ms[d] : 0;
    }
    p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.L = L, p.S = S, p.D = D, p.Dv = Dv, p.group = group, p.mode = mode;
    p.scale = scale;
    tiled::compute(p);
    return;
  }
  const int64_t tasks = static_cast<int64_t>(B) * Hq;
  const int parts = static_cast<double>(tasks) * L * S * D < 2e5 ? 1 : Pool::get().size() * 2;
  Pool::get().run(parts, [&](int part, int total) {
    std::vector<float> scores(S);
    std::vector<float> acc(Dv);
    for (int64_t t = tasks * part / total; t < tasks * (part + 1) / total; ++t) {
      const int b = static_cast<int>(t / Hq), h = static_cast<int>(t % Hq), hk = h / group;
      for (int i = 0; i < L; ++i) {
        const float* qrow = qp + b * qs[0] + h * qs[1] + i * qs[2];
        const int last = mode == 1 ? S - L + i : S - 1;  // causal: bottom-right aligned
        float mx_score = -INFINITY;
        for (int j = 0; j <= last; ++j) {
          if (mode == 2 && !mp[b * ms[0] + h * ms[1] + i * ms[2] + j * ms[3]]) {
            scores[j] = -INFINITY;
            continue;
          }
          const float* krow = kp + b * ks[0] + hk * ks[1] + j * ks[2];
          float qk = 0.f;
          if (qs[3] == 1 && ks[3] == 1) {
            qk = dot(qrow, krow, D);
          } else {
            for (int d = 0; d < D; ++d) qk += qrow[d * qs[3]] * krow[d * ks[3]];
          }
          scores[j] = qk * scale;
          mx_score = std::max(mx_score, scores[j]);
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        float total_weight = 0.f;
        if (mx_score != -INFINITY) {
          for (int j = 0; j <= last; ++j) {
            if (scores[j] == -INFINITY) continue;
            const float p = std::exp(scores[j] - mx_score);
            total_weight += p;
            const float* vrow = vp + b * vs[0] + hk * vs[1] + j * vs[2];
            if (vs[3] == 1) {
              axpy(acc.data(), p, vrow, Dv);
            } else {
              for (int d = 0; d < Dv; ++d) acc[d] += p * vrow[d * vs[3]];
            }
          }
        }
        float* orow = op + ((static_cast<int64_t>(b) * Hq + h) * L + i) * Dv;
        const float inv = total_weight > 0.f ? 1.f / total_weight : 0.f;
        for (int d = 0; d < Dv; ++d) orow[d] = acc[d] * inv;
      }
    }
  });
}


class CpuSdpa : public mx::UnaryPrimitive {
 public:
  CpuSdpa(mx::Stream s, float scale, int mask_mode) : UnaryPrimitive(s), scale_(scale), mask_mode_(mask_mode) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    encoder.dispatch([inputs, out, scale = scale_, mode = mask_mode_]() mutable {
      sdpa_compute(view_of(inputs[0]), view_of(inputs[1]), view_of(inputs[2]), mode == 2 ? &inputs[3] : nullptr,
                   out.data<float>(), scale, mode);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("PensieveCpuSdpa runs on the CPU only");
  }
  const char* name() const override { return "PensieveCpuSdpa"; }

 private:
  float scale_;
  int mask_mode_;
};

// The new keys/values [B, Hkv, L, D] stored into a KV cache's whole buffers kc, vc [B, Hkv, capacity, D] at
// columns offset..offset+L-1, then attention over columns 0..S-1 of them: what the cache's slice updates and
// CpuSdpa over their first S columns computed (same views, same strides), in one task. Outputs: the attention
// [B, Hq, L, Dv], then kc and vc again, sharing their buffers (the writes land there, as a donated slice update's
// would): the cache keeps those, so whatever reads the cache later depends on the write. Inputs: q, k, v, kc, vc,
// then the mask (mode 2).
class CpuCacheSdpa : public mx::Primitive {
 public:
  CpuCacheSdpa(mx::Stream s, float scale, int mask_mode, int offset, int keys)
      : Primitive(s), scale_(scale), mask_mode_(mask_mode), offset_(offset), keys_(keys) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    // The writes assume whole row-contiguous buffers (the cache's own: KVCache.reserveWhole).
    if (!inputs[3].flags().row_contiguous || !inputs[4].flags().row_contiguous)
      throw std::invalid_argument("cache sdpa: the cache buffers must be row-contiguous");
    auto& out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    outputs[1].copy_shared_buffer(inputs[3]);
    outputs[2].copy_shared_buffer(inputs[4]);
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    for (auto& o : outputs) encoder.set_output_array(o);
    encoder.dispatch([inputs, out, kc = outputs[1], vc = outputs[2], scale = scale_, mode = mask_mode_,
                      offset = offset_, S = keys_]() mutable {
      store(inputs[1], kc, offset);
      store(inputs[2], vc, offset);
      View4 kv = view_of(kc), vv = view_of(vc);
      kv.shape[2] = S;
      vv.shape[2] = S;
      sdpa_compute(view_of(inputs[0]), kv, vv, mode == 2 ? &inputs[5] : nullptr, out.data<float>(), scale, mode);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("PensieveCpuCacheSdpa runs on the CPU only");
  }
  const char* name() const override { return "PensieveCpuCacheSdpa"; }

 private:
  // Rows of x [B, H, L, W] into buf [B, H, capacity, W] (row-contiguous) from column `offset`.
  static void store(const mx::array& x, mx::array& buf, int offset) {
    std::vector<float> scratch;
    const float* src = row_major(x, scratch);
    const int B = x.shape(0), H = x.shape(1), L = x.shape(2), W = x.shape(3);
    const int64_t cap = buf.shape(2);
    float* dst = buf.data<float>();
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        std::memcpy(dst + ((static_cast<int64_t>(b) * H + h) * cap + offset) * W,
                    src + (static_cast<int64_t>(b) * H + h) * L * W, sizeof(float) * L * W);
  }

  float scale_;
  int mask_mode_;
  int offset_;
  int keys_;
};

}  // namespace

/** True when the CPU primitives take this call (float32 on the CPU device, kernels on). */
bool cpu_kernels_apply(const std::vector<mx::array>& arrays) {
  if (!cpu_kernels_enabled() || mx::default_device() != mx::Device::cpu) return false;
  for (const auto& a : arrays) {
    if (a.dtype() != mx::float32) return false;
  }
  return true;
}

mx::array cpu_rope(const mx::array& x, int dims, bool traditional, std::optional<float> base, float scale, int offset,
                   const std::optional<mx::array>& offset_array, const std::optional<mx::array>& freqs) {
  if (x.ndim() < 3) throw std::invalid_argument("rope: x needs at least 3 dimensions");
  if (dims % 2 != 0 || dims > x.shape(-1)) throw std::invalid_argument("rope: dims must be even and at most the last dimension");
  auto cpu = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs{x};
  if (freqs) inputs.push_back(mx::astype(*freqs, mx::float32, cpu));
  if (offset_array) inputs.push_back(mx::astype(*offset_array, mx::int32, cpu));
  RopeParams p{dims, traditional, base.value_or(10000.f), scale, offset, offset_array.has_value(), freqs.has_value()};
  return mx::array(x.shape(), mx::float32, std::make_shared<CpuRope>(cpu, p), std::move(inputs));
}

mx::array cpu_sdpa(const mx::array& q, const mx::array& k, const mx::array& v, float scale, int mask_mode,
                   const std::optional<mx::array>& mask) {
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4) throw std::invalid_argument("sdpa: q, k, v must be 4-D");
  if (q.shape(1) % k.shape(1) != 0) throw std::invalid_argument("sdpa: query heads must be a multiple of key heads");
  if (k.shape(2) != v.shape(2) || q.shape(3) != k.shape(3)) throw std::invalid_argument("sdpa: shapes do not match");
  auto cpu = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs{q, k, v};
  if (mask_mode == 2) inputs.push_back(*mask);
  mx::Shape shape{q.shape(0), q.shape(1), q.shape(2), v.shape(3)};
  return mx::array(shape, mx::float32, std::make_shared<CpuSdpa>(cpu, scale, mask_mode), std::move(inputs));
}

std::vector<mx::array> cpu_cache_sdpa(const mx::array& q, const mx::array& k, const mx::array& v, const mx::array& kc,
                         const mx::array& vc, int offset, int keys, float scale, int mask_mode,
                         const std::optional<mx::array>& mask) {
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4 || kc.ndim() != 4 || vc.ndim() != 4)
    throw std::invalid_argument("cache sdpa: q, k, v and the buffers must be 4-D");
  const int L = k.shape(2);
  if (q.shape(1) % k.shape(1) != 0) throw std::invalid_argument("cache sdpa: query heads must be a multiple of key heads");
  if (v.shape(2) != L || q.shape(3) != k.shape(3) || kc.shape(3) != k.shape(3) || vc.shape(3) != v.shape(3) ||
      kc.shape(0) != k.shape(0) || kc.shape(1) != k.shape(1) || vc.shape(0) != v.shape(0) || vc.shape(1) != v.shape(1))
    throw std::invalid_argument("cache sdpa: shapes do not match");
  if (offset < 0 || keys != offset + L || keys > kc.shape(2) || keys > vc.shape(2))
    throw std::invalid_argument("cache sdpa: the new columns do not fit the buffers");
  for (const auto& a : {q, k, v, kc, vc})
    if (a.dtype() != mx::float32) throw std::invalid_argument("cache sdpa: float32 only");
  auto cpu = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs{q, k, v, kc, vc};
  if (mask_mode == 2) inputs.push_back(*mask);
  mx::Shape shape{q.shape(0), q.shape(1), q.shape(2), v.shape(3)};
  return mx::array::make_arrays({shape, kc.shape(), vc.shape()}, {mx::float32, mx::float32, mx::float32},
                                std::make_shared<CpuCacheSdpa>(cpu, scale, mask_mode, offset, keys), inputs);
}

}  // namespace pensieve
