// RMSNorm and SwiGLU as single CPU primitives.
//
// Why: MLX's CPU backend runs fast::rms_norm as its fallback chain of basic
// ops (square, mean, add, rsqrt, multiply, multiply), and silu(g)·u is three
// more; in a decode step of a 30-layer model that is over 300 tiny ops, each
// with its own scheduling cost. Same arithmetic in float32:
//   rms_norm(x, w)[i] = x[i] · rsqrt(mean(x²) + eps) · w[i]
//   swiglu(g, u)[i]   = g[i] · sigmoid(g[i]) · u[i],  sigmoid(v) = 1 / (1 + exp(-v))
// Inputs may be strided views whose rows are contiguous (the halves of a fused
// gate|up product): they are read in place.

#include <cmath>
#include <optional>
#include <stdexcept>

#include "cpu_common.h"

namespace pensieve {

// Rows of `cols` contiguous floats with a uniform row stride, if `a` is laid out so.
struct Rows {
  const float* data;
  int64_t stride;
};

static std::optional<Rows> uniform_rows(const mx::array& a) {
  const int nd = static_cast<int>(a.ndim());
  if (nd == 0 || (a.shape(nd - 1) != 1 && a.strides()[nd - 1] != 1)) return std::nullopt;
  // The innermost non-1 outer axis gives the row stride; every axis outside it
  // must step over whole blocks of rows.
  int64_t row_stride = -1, expected = 0;
  for (int d = nd - 2; d >= 0; --d) {
    if (a.shape(d) == 1) continue;
    if (row_stride < 0) {
      row_stride = a.strides()[d];
      expected = row_stride * a.shape(d);
    } else if (a.strides()[d] != expected) {
      return std::nullopt;
    } else {
      expected *= a.shape(d);
    }
  }
  return Rows{a.data<float>(), row_stride < 0 ? a.shape(nd - 1) : row_stride};
}

static void run_rows(int64_t rows, int64_t cols, const std::function<void(int64_t, int64_t)>& fn) {
  auto& pool = Pool::get();
  const int parts = rows * cols < (1 << 16) ? 1 : static_cast<int>(std::min<int64_t>(pool.size(), rows));
  pool.run(parts, [&](int p, int total) { fn(rows * p / total, rows * (p + 1) / total); });
}

void rms_norm_rows(const float* x, int64_t x_stride, const float* w, float* y, int64_t rows, int64_t cols, float eps) {
  run_rows(rows, cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xi = x + r * x_stride;
      float* yi = y + r * cols;
      float ss = 0.f;
      for (int64_t i = 0; i < cols; ++i) ss += xi[i] * xi[i];
      const float scale = 1.0f / std::sqrt(ss / static_cast<float>(cols) + eps);
      if (w) {
        for (int64_t i = 0; i < cols; ++i) yi[i] = xi[i] * scale * w[i];
      } else {
        for (int64_t i = 0; i < cols; ++i) yi[i] = xi[i] * scale;
      }
    }
  });
}

void swiglu_rows(const float* g, int64_t g_stride, const float* u, int64_t u_stride, float* y, int64_t rows,
                 int64_t cols) {
  run_rows(rows, cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* gi = g + r * g_stride;
      const float* ui = u + r * u_stride;
      float* yi = y + r * cols;
      for (int64_t i = 0; i < cols; ++i) yi[i] = gi[i] * (1.0f / (1.0f + std::exp(-gi[i]))) * ui[i];
    }
  });
}

class CpuRmsNorm : public mx::UnaryPrimitive {
 public:
  CpuRmsNorm(mx::Stream stream, float eps, bool has_weight) : UnaryPrimitive(stream), eps_(eps), has_weight_(has_weight) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    encoder.dispatch([inputs, out, eps = eps_, has_weight = has_weight_]() mutable {
      const auto& x = inputs[0];
      const int64_t cols = x.shape(-1);
      const int64_t rows = cols == 0 ? 0 : static_cast<int64_t>(x.size()) / cols;
      std::vector<float> xs, ws;
      auto view = uniform_rows(x);
      const Rows xr = view ? *view : Rows{row_major(x, xs), cols};
      const float* w = has_weight ? row_major(inputs[1], ws) : nullptr;
      float* y = out.data<float>();
      rms_norm_rows(xr.data, xr.stride, w, y, rows, cols, eps);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("PensieveCpuRmsNorm runs on the CPU only");
  }
  const char* name() const override { return "PensieveCpuRmsNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const CpuRmsNorm*>(&other);
    return o && o->eps_ == eps_ && o->has_weight_ == has_weight_;
  }

 private:
  float eps_;
  bool has_weight_;
};

class CpuSwiglu : public mx::UnaryPrimitive {
 public:
  explicit CpuSwiglu(mx::Stream stream) : UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    encoder.dispatch([g = inputs[0], u = inputs[1], out]() mutable {
      const int64_t cols = g.shape(-1);
      const int64_t rows = cols == 0 ? 0 : static_cast<int64_t>(g.size()) / cols;
      std::vector<float> gs, us;
      auto gv = uniform_rows(g);
      auto uv = uniform_rows(u);
      const Rows gr = gv ? *gv : Rows{row_major(g, gs), cols};
      const Rows ur = uv ? *uv : Rows{row_major(u, us), cols};
      float* y = out.data<float>();
      swiglu_rows(gr.data, gr.stride, ur.data, ur.stride, y, rows, cols);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("PensieveCpuSwiglu runs on the CPU only");
  }
  const char* name() const override { return "PensieveCpuSwiglu"; }
  bool is_equivalent(const mx::Primitive& other) const override { return dynamic_cast<const CpuSwiglu*>(&other); }
};

mx::array cpu_rms_norm(const mx::array& x, const std::optional<mx::array>& weight, float eps) {
  if (x.ndim() < 1) throw std::invalid_argument("rms_norm: x needs at least one dimension");
  if (weight && (weight->ndim() != 1 || weight->shape(0) != x.shape(-1))) {
    throw std::invalid_argument("rms_norm: weight must be 1-D with the last dimension of x");
  }
  auto cpu = mx::default_stream(mx::Device::cpu);
  std::vector<mx::array> inputs{x};
  if (weight) inputs.push_back(*weight);
  return mx::array(x.shape(), mx::float32, std::make_shared<CpuRmsNorm>(cpu, eps, weight.has_value()), inputs);
}

mx::array cpu_swiglu(const mx::array& gate, const mx::array& up) {
  if (gate.shape() != up.shape()) throw std::invalid_argument("swiglu: gate and up must have the same shape");
  auto cpu = mx::default_stream(mx::Device::cpu);
  return mx::array(gate.shape(), mx::float32, std::make_shared<CpuSwiglu>(cpu), {gate, up});
}

}  // namespace pensieve
