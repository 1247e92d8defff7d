// Pensieve's C shim over the MLX C++ API. See pensieve_mlx.h for the ABI rules.
// Every exported function catches every exception: nothing may unwind into Bun.
// Over 400 lines: the flat C ABI, one short wrapper per MLX entry point, each with its catch.

#include "pensieve_mlx.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <unordered_set>
#include <string>
#include <utility>
#include <vector>

#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace pensieve {
mx::array cpu_quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
                               int group, int bits);
bool cpu_kernels_apply(const std::vector<mx::array>& arrays);
mx::array cpu_quantized_matmul_int8(const mx::array& x, const mx::array& w, const mx::array& scales,
                                    const mx::array& biases, int group, int bits);
mx::array cpu_pack(const mx::array& w, const mx::array& scales, const mx::array& biases, int group, int bits);
mx::array cpu_quantized_matmul_packed(const mx::array& x, const mx::array& packed);
mx::array cpu_quantized_matmul_packed_fused(const mx::array& x, const mx::array& packed,
                                            const std::optional<mx::array>& norm_weight, float eps,
                                            const std::optional<mx::array>& residual, bool swiglu);
bool cpu_drop_plain(mx::array& w, mx::array& scales, mx::array& biases, const mx::array& packed);
bool cpu_set_isa(int isa);
int cpu_isa_in_use();
bool cpu_isa_supported(int isa);
void cpu_set_threads(int threads);
int cpu_threads();
mx::array cpu_rms_norm(const mx::array& x, const std::optional<mx::array>& weight, float eps);
mx::array cpu_swiglu(const mx::array& gate, const mx::array& up);
std::vector<mx::array> cpu_cache_sdpa(const mx::array& q, const mx::array& k, const mx::array& v, const mx::array& kc,
                         const mx::array& vc, int offset, int keys, float scale, int mask_mode,
                         const std::optional<mx::array>& mask);
mx::array cpu_rope(const mx::array& x, int dims, bool traditional, std::optional<float> base, float scale, int offset,
                   const std::optional<mx::array>& offset_array, const std::optional<mx::array>& freqs);
mx::array cpu_sdpa(const mx::array& q, const mx::array& k, const mx::array& v, float scale, int mask_mode,
                   const std::optional<mx::array>& mask);
}

namespace {

thread_local std::string last_error;
std::atomic<int64_t> live_handles{0};

constexpr int kAbiVersion = 4;

pv_array wrap(mx::array a) {
  live_handles.fetch_add(1, std::memory_order_relaxed);
  return new mx::array(std::move(a));
}

mx::array& unwrap(pv_array h) {
  if (h == nullptr) throw std::invalid_argument("null array handle");
  return *static_cast<mx::array*>(h);
}

std::optional<mx::array> optional_of(pv_array h) {
  if (h == nullptr) return std::nullopt;
  return unwrap(h);
}

mx::Shape shape_of(const int32_t* dims, int n) {
  if (n < 0) throw std::invalid_argument("negative dimension count");
  if (n > 0 && dims == nullptr) throw std::invalid_argument("null shape pointer");
  return mx::Shape(dims, dims + n);
}

std::vector<int> ints_of(const int32_t* values, int n) {
  if (n < 0) throw std::invalid_argument("negative count");
  if (n > 0 && values == nullptr) throw std::invalid_argument("null int list");
  return std::vector<int>(values, values + n);
}

std::vector<mx::array> arrays_of(pv_array* handles, int n) {
  if (n < 0) throw std::invalid_argument("negative array count");
  if (n > 0 && handles == nullptr) throw std::invalid_argument("null array list");
  std::vector<mx::array> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(unwrap(handles[i]));
  return out;
}

mx::Dtype dtype_of(int code) {
  if (code < PV_BOOL || code > PV_COMPLEX64) {
    throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  }
  static const mx::Dtype table[] = {
      mx::bool_,   mx::uint8,   mx::uint16,  mx::uint32,  mx::uint64,
      mx::int8,    mx::int16,   mx::int32,   mx::int64,   mx::float16,
      mx::float32, mx::float64, mx::bfloat16, mx::complex64};
  return table[code];
}

int code_of(mx::Dtype d) { return static_cast<int>(d.val()); }

void set_error(const char* what) { last_error = what ? what : "unknown error"; }

// Runs f, turning any exception into (fallback, last_error).
template <typename F, typename R>
R guarded(F&& f, R fallback) {
  try {
    return f();
  } catch (const std::exception& e) {
    set_error(e.what());
  } catch (...) {
    set_error("unknown C++ exception in MLX");
  }
  return fallback;
}

template <typename F>
pv_array guard_array(F&& f) {
  return guarded([&]() -> pv_array { return wrap(f()); }, static_cast<pv_array>(nullptr));
}

template <typename F>
int guard_status(F&& f) {
  return guarded([&]() -> int { f(); return 0; }, -1);
}

// A loaded file: named arrays plus metadata (safetensors: strings; GGUF: variants).
struct LoadedMap {
  std::vector<std::pair<std::string, mx::array>> arrays;
  std::vector<std::pair<std::string, mx::GGUFMetaData>> meta;
};

LoadedMap& unwrap_map(pv_map m) {
  if (m == nullptr) throw std::invalid_argument("null map handle");
  return *static_cast<LoadedMap*>(m);
}

template <typename T>
const T& at_index(const std::vector<T>& v, int i) {
  if (i < 0 || static_cast<size_t>(i) >= v.size()) throw std::out_of_range("index out of range");
  return v[i];
}

}  // namespace

// ---- bridge for ffi/gpu_kernels.cpp (custom GPU kernels): the handle and error
// helpers above, so that its exports count handles and report errors alike ----
namespace pensieve::abi {
pv_array wrap_array(mx::array a) { return wrap(std::move(a)); }
mx::array& unwrap_array(pv_array h) { return unwrap(h); }
void set_last_error(const char* what) { set_error(what); }
}  // namespace pensieve::abi

extern "C" {

// ---- errors and library ----
const char* pv_last_error(void) { return last_error.c_str(); }
const char* pv_mlx_version(void) {
  static std::string v = mx::version();
  return v.c_str();
}
int pv_abi_version(void) { return kAbiVersion; }
// libstdc++'s std::hash<std::string> of these bytes: MLX names a JIT module
// "<kernel>_<hex std::hash(source)>" (custom_kernel.cpp), so a pre-filled PTX
// cache entry needs the very same hash (kernel-cache-mlx.ts).
uint64_t pv_std_hash(const char* data, uint64_t bytes) {
  return static_cast<uint64_t>(std::hash<std::string>{}(std::string(data, bytes)));
}

// ---- lifetime ----
void pv_free(pv_array a) {
  if (a == nullptr) return;
  live_handles.fetch_sub(1, std::memory_order_relaxed);
  delete static_cast<mx::array*>(a);
}
void pv_free_many(pv_array* arrays, int n) {
  if (arrays == nullptr) return;
  for (int i = 0; i < n; ++i) pv_free(arrays[i]);
}
pv_array pv_retain(pv_array a) {
  return guard_array([&] { return unwrap(a); });
}

// ---- creation and readback ----
pv_array pv_from_data(const void* data, const int32_t* shape, int ndim, int dtype) {
  return guard_array([&] {
    auto s = shape_of(shape, ndim);
    auto dt = dtype_of(dtype);
    size_t count = 1;
    for (auto d : s) {
      if (d < 0) throw std::invalid_argument("negative dimension");
      count *= static_cast<size_t>(d);
    }
    size_t nbytes = count * dt.size();
    if (nbytes > 0 && data == nullptr) throw std::invalid_argument("null data pointer");
    // Copy: the caller's buffer belongs to the JS heap and may move or be freed.
    void* copy = std::malloc(nbytes > 0 ? nbytes : 1);
    if (copy == nullptr) throw std::bad_alloc();
    if (nbytes > 0) std::memcpy(copy, data, nbytes);
    return mx::array(copy, std::move(s), dt, [](void* p) { std::free(p); });
  });
}
pv_array pv_full(const int32_t* shape, int ndim, double value, int dtype) {
  return guard_array([&] {
    auto dt = dtype_of(dtype);
    return mx::full(shape_of(shape, ndim), mx::astype(mx::array(value), dt), dt);
  });
}
pv_array pv_scalar(double value, int dtype) {
  return guard_array([&] { return mx::astype(mx::array(value), dtype_of(dtype)); });
}
pv_array pv_arange(double start, double stop, double step, int dtype) {
  return guard_array([&] { return mx::arange(start, stop, step, dtype_of(dtype)); });
}
int pv_ndim(pv_array a) {
  return guarded([&]() -> int { return static_cast<int>(unwrap(a).ndim()); }, -1);
}
int pv_shape(pv_array a, int32_t* out, int max) {
  return guarded([&]() -> int {
    const auto& s = unwrap(a).shape();
    if (static_cast<int>(s.size()) > max) throw std::invalid_argument("shape buffer too small");
    for (size_t i = 0; i < s.size(); ++i) out[i] = s[i];
    return static_cast<int>(s.size());
  }, -1);
}
int pv_dtype(pv_array a) {
  return guarded([&]() -> int { return code_of(unwrap(a).dtype()); }, -1);
}
int64_t pv_size(pv_array a) {
  return guarded([&]() -> int64_t { return static_cast<int64_t>(unwrap(a).size()); }, int64_t{-1});
}
int64_t pv_nbytes(pv_array a) {
  return guarded([&]() -> int64_t { return static_cast<int64_t>(unwrap(a).nbytes()); }, int64_t{-1});
}
int pv_read(pv_array a, void* out, int64_t nbytes) {
  return guard_status([&] {
    // Evaluate the array itself first: a contiguous() node made up front would be queued behind everything
    // already queued on its stream (a pipelined decode's next step), so reading step n's token waited for
    // step n+1. A copy only when the evaluated array is not row-contiguous.
    // PENSIEVE_READ_VIA_COPY=1: the old order (contiguous() first), kept to A/B it on a GPU.
    static const bool via_copy = [] {
      const char* v = std::getenv("PENSIEVE_READ_VIA_COPY");
      return v != nullptr && std::string(v) == "1";
    }();
    auto c = via_copy ? mx::contiguous(unwrap(a)) : unwrap(a);
    mx::eval(c);
    if (!c.flags().row_contiguous) {
      c = mx::contiguous(c);
      mx::eval(c);
    }
    if (static_cast<int64_t>(c.nbytes()) != nbytes) {
      throw std::invalid_argument("read: expected " + std::to_string(c.nbytes()) + " bytes, buffer has " +
                                  std::to_string(nbytes));
    }
    if (nbytes > 0) std::memcpy(out, c.data<void>(), nbytes);
  });
}

// ---- evaluation ----
int pv_eval(pv_array* arrays, int n) {
  return guard_status([&] { mx::eval(arrays_of(arrays, n)); });
}
int pv_async_eval(pv_array* arrays, int n) {
  return guard_status([&] { mx::async_eval(arrays_of(arrays, n)); });
}
int pv_synchronize(void) {
  return guard_status([&] { mx::synchronize(); });
}
int pv_graph_summary(pv_array* arrays, int n, char* out, int64_t cap) {
  return guarded(
      [&]() -> int {
        std::unordered_set<std::uintptr_t> seen;
        std::map<std::string, int> counts;
        std::vector<mx::array> stack = arrays_of(arrays, n);
        int nodes = 0;
        while (!stack.empty()) {
          mx::array a = std::move(stack.back());
          stack.pop_back();
          if (!a.has_primitive() || a.is_available()) continue;
          if (!seen.insert(a.primitive_id()).second) continue;
          counts[a.primitive().name()]++;
          ++nodes;
          for (const auto& in : a.inputs()) stack.push_back(in);
        }
        std::string text;
        for (const auto& [name, count] : counts) text += name + " " + std::to_string(count) + "\n";
        if (out != nullptr && cap > 0) {
          size_t len = std::min<size_t>(text.size(), static_cast<size_t>(cap - 1));
          std::memcpy(out, text.data(), len);
          out[len] = '\0';
        }
        return nodes;
      },
      -1);
}

// ---- elementwise ----
pv_array pv_unary(int op, pv_array h) {
  return guard_array([&]() -> mx::array {
    const auto& a = unwrap(h);
    switch (op) {
      case PV_NEG: return mx::negative(a);
      case PV_EXP: return mx::exp(a);
      case PV_LOG: return mx::log(a);
      case PV_SQRT: return mx::sqrt(a);
      case PV_RSQRT: return mx::rsqrt(a);
      case PV_ABS: return mx::abs(a);
      case PV_SIGMOID: return mx::sigmoid(a);
      case PV_SILU: return mx::multiply(a, mx::sigmoid(a));
      case PV_TANH: return mx::tanh(a);
      case PV_SIN: return mx::sin(a);
      case PV_COS: return mx::cos(a);
      case PV_SQUARE: return mx::square(a);
      case PV_RECIPROCAL: return mx::reciprocal(a);
      case PV_LOGICAL_NOT: return mx::logical_not(a);
      case PV_ISNAN: return mx::isnan(a);
      case PV_STOP_GRADIENT: return mx::stop_gradient(a);
      case PV_COPY: return mx::copy(a);
      case PV_FLOOR: return mx::floor(a);
      case PV_CEIL: return mx::ceil(a);
      case PV_LOG1P: return mx::log1p(a);
      case PV_ERF: return mx::erf(a);
      case PV_GELU_APPROX: {
        // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        auto c = mx::astype(mx::array(0.7978845608028654), a.dtype());
        auto k = mx::astype(mx::array(0.044715), a.dtype());
        auto half = mx::astype(mx::array(0.5), a.dtype());
        auto one = mx::astype(mx::array(1.0), a.dtype());
        auto inner = mx::multiply(c, mx::add(a, mx::multiply(k, mx::multiply(a, mx::square(a)))));
        return mx::multiply(mx::multiply(half, a), mx::add(one, mx::tanh(inner)));
      }
      case PV_CONTIGUOUS: return mx::contiguous(a);
      default: throw std::invalid_argument("unknown unary op " + std::to_string(op));
    }
  });
}
pv_array pv_binary(int op, pv_array ha, pv_array hb) {
  return guard_array([&]() -> mx::array {
    const auto& a = unwrap(ha);
    const auto& b = unwrap(hb);
    switch (op) {
      case PV_ADD: return mx::add(a, b);
      case PV_SUBTRACT: return mx::subtract(a, b);
      case PV_MULTIPLY: return mx::multiply(a, b);
      case PV_DIVIDE: return mx::divide(a, b);
      case PV_MAXIMUM: return mx::maximum(a, b);
      case PV_MINIMUM: return mx::minimum(a, b);
      case PV_POWER: return mx::power(a, b);
      case PV_EQUAL: return mx::equal(a, b);
      case PV_NOT_EQUAL: return mx::not_equal(a, b);
      case PV_LESS: return mx::less(a, b);
      case PV_LESS_EQUAL: return mx::less_equal(a, b);
      case PV_GREATER: return mx::greater(a, b);
      case PV_GREATER_EQUAL: return mx::greater_equal(a, b);
      case PV_LOGICAL_AND: return mx::logical_and(a, b);
      case PV_LOGICAL_OR: return mx::logical_or(a, b);
      case PV_MATMUL: return mx::matmul(a, b);
      case PV_REMAINDER: return mx::remainder(a, b);
      case PV_FLOOR_DIVIDE: return mx::floor_divide(a, b);
      default: throw std::invalid_argument("unknown binary op " + std::to_string(op));
    }
  });
}
pv_array pv_where(pv_array c, pv_array a, pv_array b) {
  return guard_array([&] { return mx::where(unwrap(c), unwrap(a), unwrap(b)); });
}
pv_array pv_astype(pv_array a, int dtype) {
  return guard_array([&] { return mx::astype(unwrap(a), dtype_of(dtype)); });
}
pv_array pv_clip(pv_array a, pv_array lo, pv_array hi) {
  return guard_array([&] { return mx::clip(unwrap(a), optional_of(lo), optional_of(hi)); });
}

// ---- shape ----
pv_array pv_reshape(pv_array a, const int32_t* shape, int ndim) {
  return guard_array([&] { return mx::reshape(unwrap(a), shape_of(shape, ndim)); });
}
pv_array pv_transpose(pv_array a, const int32_t* axes, int naxes) {
  return guard_array([&] { return mx::transpose(unwrap(a), ints_of(axes, naxes)); });
}
pv_array pv_expand_dims(pv_array a, int axis) {
  return guard_array([&] { return mx::expand_dims(unwrap(a), axis); });
}
pv_array pv_squeeze(pv_array a, const int32_t* axes, int naxes) {
  return guard_array([&] {
    if (naxes == 0) return mx::squeeze(unwrap(a));
    return mx::squeeze(unwrap(a), ints_of(axes, naxes));
  });
}
pv_array pv_broadcast_to(pv_array a, const int32_t* shape, int ndim) {
  return guard_array([&] { return mx::broadcast_to(unwrap(a), shape_of(shape, ndim)); });
}
pv_array pv_concatenate(pv_array* arrays, int n, int axis) {
  return guard_array([&] { return mx::concatenate(arrays_of(arrays, n), axis); });
}
pv_array pv_stack(pv_array* arrays, int n, int axis) {
  return guard_array([&] { return mx::stack(arrays_of(arrays, n), axis); });
}
int pv_split(pv_array a, const int32_t* indices, int n_indices, int axis, pv_array* out) {
  return guard_status([&] {
    auto parts = mx::split(unwrap(a), shape_of(indices, n_indices), axis);
    for (size_t i = 0; i < parts.size(); ++i) out[i] = wrap(std::move(parts[i]));
  });
}
pv_array pv_pad(pv_array a, const int32_t* axes, const int32_t* low, const int32_t* high, int n, double value) {
  return guard_array([&] {
    const auto& x = unwrap(a);
    return mx::pad(x, ints_of(axes, n), shape_of(low, n), shape_of(high, n), mx::astype(mx::array(value), x.dtype()));
  });
}
pv_array pv_slice(pv_array a, const int32_t* start, const int32_t* stop, const int32_t* strides, int ndim) {
  return guard_array([&] {
    auto st = strides ? shape_of(strides, ndim) : mx::Shape(ndim, 1);
    return mx::slice(unwrap(a), shape_of(start, ndim), shape_of(stop, ndim), std::move(st));
  });
}
pv_array pv_slice_dynamic(pv_array a, pv_array start, const int32_t* axes, int naxes, const int32_t* size, int ndim) {
  return guard_array([&] { return mx::slice(unwrap(a), unwrap(start), ints_of(axes, naxes), shape_of(size, ndim)); });
}
pv_array pv_slice_update(pv_array src, pv_array update, const int32_t* start, const int32_t* stop, const int32_t* strides,
                         int ndim) {
  return guard_array([&] {
    auto st = strides ? shape_of(strides, ndim) : mx::Shape(ndim, 1);
    return mx::slice_update(unwrap(src), unwrap(update), shape_of(start, ndim), shape_of(stop, ndim), std::move(st));
  });
}
pv_array pv_slice_update_dynamic(pv_array src, pv_array update, pv_array start, const int32_t* axes, int naxes) {
  return guard_array([&] { return mx::slice_update(unwrap(src), unwrap(update), unwrap(start), ints_of(axes, naxes)); });
}

// ---- indexing ----
pv_array pv_take(pv_array a, pv_array indices, int axis) {
  return guard_array([&] { return mx::take(unwrap(a), unwrap(indices), axis); });
}
pv_array pv_take_along_axis(pv_array a, pv_array indices, int axis) {
  return guard_array([&] { return mx::take_along_axis(unwrap(a), unwrap(indices), axis); });
}
pv_array pv_put_along_axis(pv_array a, pv_array indices, pv_array values, int axis) {
  return guard_array([&] { return mx::put_along_axis(unwrap(a), unwrap(indices), unwrap(values), axis); });
}

// ---- reductions and sorting ----
pv_array pv_reduce(int op, pv_array h, const int32_t* axes, int naxes, int keepdims) {
  return guard_array([&]() -> mx::array {
    const auto& a = unwrap(h);
    std::vector<int> ax = ints_of(axes, naxes);
    if (naxes == 0) {
      ax.resize(a.ndim());
      for (size_t i = 0; i < a.ndim(); ++i) ax[i] = static_cast<int>(i);
    }
    bool keep = keepdims != 0;
    switch (op) {
      case PV_SUM: return mx::sum(a, ax, keep);
      case PV_MEAN: return mx::mean(a, ax, keep);
      case PV_MAX: return mx::max(a, ax, keep);
      case PV_MIN: return mx::min(a, ax, keep);
      case PV_PROD: return mx::prod(a, ax, keep);
      case PV_ANY: return mx::any(a, ax, keep);
      case PV_ALL: return mx::all(a, ax, keep);
      default: throw std::invalid_argument("unknown reduction " + std::to_string(op));
    }
  });
}
pv_array pv_argmax(pv_array a, int axis, int keepdims) {
  return guard_array([&] { return mx::argmax(unwrap(a), axis, keepdims != 0); });
}
pv_array pv_argmin(pv_array a, int axis, int keepdims) {
  return guard_array([&] { return mx::argmin(unwrap(a), axis, keepdims != 0); });
}
pv_array pv_softmax(pv_array a, const int32_t* axes, int naxes, int precise) {
  return guard_array([&] { return mx::softmax(unwrap(a), ints_of(axes, naxes), precise != 0); });
}
pv_array pv_logsumexp(pv_array a, const int32_t* axes, int naxes, int keepdims) {
  return guard_array([&] { return mx::logsumexp(unwrap(a), ints_of(axes, naxes), keepdims != 0); });
}
pv_array pv_topk(pv_array a, int k, int axis) {
  return guard_array([&] { return mx::topk(unwrap(a), k, axis); });
}
pv_array pv_argpartition(pv_array a, int kth, int axis) {
  return guard_array([&] { return mx::argpartition(unwrap(a), kth, axis); });
}
pv_array pv_sort(pv_array a, int axis) {
  return guard_array([&] { return mx::sort(unwrap(a), axis); });
}
pv_array pv_argsort(pv_array a, int axis) {
  return guard_array([&] { return mx::argsort(unwrap(a), axis); });
}
pv_array pv_cumsum(pv_array a, int axis, int reverse, int inclusive) {
  return guard_array([&] { return mx::cumsum(unwrap(a), axis, reverse != 0, inclusive != 0); });
}

// ---- linear algebra and quantization ----
pv_array pv_matmul(pv_array a, pv_array b) {
  return guard_array([&] { return mx::matmul(unwrap(a), unwrap(b)); });
}
pv_array pv_quantized_matmul(pv_array x, pv_array w, pv_array scales, pv_array biases, int transpose, int group_size,
                             int bits) {
  return guard_array([&] {
    return mx::quantized_matmul(unwrap(x), unwrap(w), unwrap(scales), optional_of(biases), transpose != 0, group_size,
                                bits, "affine");
  });
}
pv_array pv_quantized_matmul_cpu(pv_array x, pv_array w, pv_array scales, pv_array biases, int group_size, int bits) {
  return guard_array([&] {
    if (biases == nullptr) throw std::invalid_argument("cpu qmm: biases are required (affine quantization)");
    return pensieve::cpu_quantized_matmul(unwrap(x), unwrap(w), unwrap(scales), unwrap(biases), group_size, bits);
  });
}
// ---- mixture of experts (issue 15): per-row expert products ----
pv_array pv_gather_mm(pv_array a, pv_array b, pv_array rhs_indices, int sorted_indices) {
  return guard_array(
      [&] { return mx::gather_mm(unwrap(a), unwrap(b), std::nullopt, unwrap(rhs_indices), sorted_indices != 0); });
}
pv_array pv_gather_qmm(pv_array x, pv_array w, pv_array scales, pv_array biases, pv_array rhs_indices, int transpose,
                       int group_size, int bits, int sorted_indices) {
  return guard_array([&] {
    return mx::gather_qmm(unwrap(x), unwrap(w), unwrap(scales), optional_of(biases), std::nullopt,
                          unwrap(rhs_indices), transpose != 0, group_size, bits, "affine", std::nullopt,
                          sorted_indices != 0);
  });
}
pv_array pv_quantized_matmul_cpu_int8(pv_array x, pv_array w, pv_array scales, pv_array biases, int group_size,
                                      int bits) {
  return guard_array([&] {
    if (biases == nullptr) throw std::invalid_argument("cpu int8 qmm: biases are required (affine quantization)");
    return pensieve::cpu_quantized_matmul_int8(unwrap(x), unwrap(w), unwrap(scales), unwrap(biases), group_size, bits);
  });
}
pv_array pv_cpu_pack(pv_array w, pv_array scales, pv_array biases, int group_size, int bits) {
  return guard_array([&] {
    if (biases == nullptr) throw std::invalid_argument("cpu pack: biases are required (affine quantization)");
    return pensieve::cpu_pack(unwrap(w), unwrap(scales), unwrap(biases), group_size, bits);
  });
}
int pv_cpu_drop_plain(pv_array w, pv_array scales, pv_array biases, pv_array packed) {
  int dropped = 0;
  const int status = guard_status([&] {
    dropped = pensieve::cpu_drop_plain(unwrap(w), unwrap(scales), unwrap(biases), unwrap(packed)) ? 1 : 0;
  });
  return status != 0 ? -1 : dropped;
}
pv_array pv_quantized_matmul_cpu_packed(pv_array x, pv_array packed) {
  return guard_array([&] { return pensieve::cpu_quantized_matmul_packed(unwrap(x), unwrap(packed)); });
}
pv_array pv_cpu_packed_product(pv_array x, pv_array packed, pv_array norm_weight, float eps, pv_array residual,
                               int swiglu) {
  return guard_array([&] {
    return pensieve::cpu_quantized_matmul_packed_fused(unwrap(x), unwrap(packed), optional_of(norm_weight), eps,
                                                       optional_of(residual), swiglu != 0);
  });
}
int pv_cpu_set_isa(int isa) {
  return guard_status([&] {
    if (!pensieve::cpu_set_isa(isa)) throw std::invalid_argument("this CPU lacks instruction set " + std::to_string(isa));
  });
}
int pv_cpu_isa(void) { return pensieve::cpu_isa_in_use(); }
int pv_cpu_isa_supported(int isa) { return pensieve::cpu_isa_supported(isa) ? 1 : 0; }
void pv_cpu_set_threads(int threads) { pensieve::cpu_set_threads(threads); }
int pv_cpu_threads(void) { return pensieve::cpu_threads(); }
int pv_quantize(pv_array w, int group_size, int bits, pv_array* out) {
  return guard_status([&] {
    auto parts = mx::quantize(unwrap(w), group_size, bits, "affine");
    if (parts.size() != 3) throw std::runtime_error("quantize: expected weight, scales and biases");
    for (int i = 0; i < 3; ++i) out[i] = wrap(std::move(parts[i]));
  });
}
pv_array pv_dequantize(pv_array w, pv_array scales, pv_array biases, int group_size, int bits, int dtype) {
  return guard_array([&] {
    std::optional<mx::Dtype> dt;
    if (dtype >= 0) dt = dtype_of(dtype);
    return mx::dequantize(unwrap(w), unwrap(scales), optional_of(biases), group_size, bits, "affine", std::nullopt, dt);
  });
}

// ---- fast transformer ops ----
pv_array pv_rms_norm(pv_array x, pv_array weight, float eps) {
  return guard_array([&] {
    // On the CPU in float32, one primitive (ffi/cpu_norm.cpp) instead of MLX's chain of ops.
    auto w = optional_of(weight);
    if (pensieve::cpu_kernels_apply({unwrap(x)}) && (!w || w->dtype() == mx::float32)) {
      return pensieve::cpu_rms_norm(unwrap(x), w, eps);
    }
    return mx::fast::rms_norm(unwrap(x), w, eps);
  });
}
pv_array pv_layer_norm(pv_array x, pv_array weight, pv_array bias, float eps) {
  return guard_array([&] { return mx::fast::layer_norm(unwrap(x), optional_of(weight), optional_of(bias), eps); });
}
pv_array pv_rope(pv_array x, int dims, int traditional, float base, int has_base, float scale, int offset,
                 pv_array offset_arr, pv_array freqs) {
  return guard_array([&] {
    std::optional<float> b;
    if (has_base) b = base;
    // On the CPU in float32, Pensieve's own primitive (ffi/cpu_attention.cpp).
    if (pensieve::cpu_kernels_apply({unwrap(x)})) {
      return pensieve::cpu_rope(unwrap(x), dims, traditional != 0, b, scale, offset, optional_of(offset_arr),
                                optional_of(freqs));
    }
    if (offset_arr != nullptr) {
      return mx::fast::rope(unwrap(x), dims, traditional != 0, b, scale, unwrap(offset_arr), optional_of(freqs));
    }
    return mx::fast::rope(unwrap(x), dims, traditional != 0, b, scale, offset, optional_of(freqs));
  });
}
pv_array pv_sdpa(pv_array q, pv_array k, pv_array v, float scale, int mask_mode, pv_array mask) {
  return guard_array([&] {
    std::string mode;
    std::optional<mx::array> m;
    if (mask_mode == 1) {
      mode = "causal";
    } else if (mask_mode == 2) {
      if (mask == nullptr) throw std::invalid_argument("sdpa: array mask mode without a mask");
      mode = "array";
      m = unwrap(mask);
    } else if (mask_mode != 0) {
      throw std::invalid_argument("sdpa: unknown mask mode");
    }
    const bool bool_mask = mask_mode != 2 || m->dtype() == mx::bool_;
    if (bool_mask && pensieve::cpu_kernels_apply({unwrap(q), unwrap(k), unwrap(v)})) {
      return pensieve::cpu_sdpa(unwrap(q), unwrap(k), unwrap(v), scale, mask_mode, m);
    }
    return mx::fast::scaled_dot_product_attention(unwrap(q), unwrap(k), unwrap(v), scale, mode, m);
  });
}

int pv_cpu_cache_sdpa(pv_array q, pv_array k, pv_array v, pv_array kc, pv_array vc, int offset, int keys, float scale,
                      int mask_mode, pv_array mask, pv_array* out) {
  return guard_status([&] {
    if (mask_mode == 2 && (mask == nullptr || unwrap(mask).dtype() != mx::bool_))
      throw std::invalid_argument("cache sdpa: array mask mode needs a boolean mask");
    if (mask_mode < 0 || mask_mode > 2) throw std::invalid_argument("cache sdpa: unknown mask mode");
    auto results = pensieve::cpu_cache_sdpa(unwrap(q), unwrap(k), unwrap(v), unwrap(kc), unwrap(vc), offset, keys,
                                            scale, mask_mode, mask_mode == 2 ? optional_of(mask) : std::nullopt);
    for (int i = 0; i < 3; ++i) out[i] = wrap(results[i]);
  });
}

namespace {
std::vector<mx::array> swiglu_impl(const std::vector<mx::array>& in) {
  const auto& g = in[0];
  return {mx::multiply(mx::multiply(g, mx::sigmoid(g)), in[1])};
}
}  // namespace

pv_array pv_swiglu(pv_array gate, pv_array up, int fused) {
  return guard_array([&] {
    if (pensieve::cpu_kernels_apply({unwrap(gate), unwrap(up)})) return pensieve::cpu_swiglu(unwrap(gate), unwrap(up));
    if (fused) {
      static auto compiled = mx::compile(swiglu_impl, /*shapeless=*/true);
      return compiled({unwrap(gate), unwrap(up)})[0];
    }
    return swiglu_impl({unwrap(gate), unwrap(up)})[0];
  });
}

// ---- random ----
pv_array pv_random_key(uint64_t seed) {
  return guard_array([&] { return mx::random::key(seed); });
}
int pv_random_split(pv_array key, int num, pv_array* out) {
  return guard_status([&] {
    auto keys = mx::random::split(unwrap(key), num);
    for (int i = 0; i < num; ++i) out[i] = wrap(mx::take(keys, i, 0));
  });
}
pv_array pv_random_categorical(pv_array logits, int axis, pv_array key) {
  return guard_array([&] { return mx::random::categorical(unwrap(logits), axis, optional_of(key)); });
}
pv_array pv_random_uniform(const int32_t* shape, int ndim, int dtype, pv_array key) {
  return guard_array([&] {
    auto dt = dtype_of(dtype);
    return mx::random::uniform(mx::array(0.0f, dt), mx::array(1.0f, dt), shape_of(shape, ndim), dt, optional_of(key));
  });
}
pv_array pv_random_normal(const int32_t* shape, int ndim, int dtype, float loc, float scale, pv_array key) {
  return guard_array([&] {
    return mx::random::normal(shape_of(shape, ndim), dtype_of(dtype), loc, scale, optional_of(key));
  });
}

// ---- I/O ----
pv_map pv_load_safetensors(const char* path) {
  return guarded([&]() -> pv_map {
    if (path == nullptr) throw std::invalid_argument("null path");
    auto loaded = mx::load_safetensors(std::string(path));
    auto* m = new LoadedMap();
    for (auto& [name, arr] : loaded.first) m->arrays.emplace_back(name, std::move(arr));
    for (auto& [key, value] : loaded.second) m->meta.emplace_back(key, mx::GGUFMetaData(value));
    return m;
  }, static_cast<pv_map>(nullptr));
}
pv_map pv_load_gguf(const char* path) {
  return guarded([&]() -> pv_map {
    if (path == nullptr) throw std::invalid_argument("null path");
    auto loaded = mx::load_gguf(std::string(path));
    auto* m = new LoadedMap();
    for (auto& [name, arr] : loaded.first) m->arrays.emplace_back(name, std::move(arr));
    for (auto& [key, value] : loaded.second) m->meta.emplace_back(key, std::move(value));
    return m;
  }, static_cast<pv_map>(nullptr));
}
void pv_map_free(pv_map m) { delete static_cast<LoadedMap*>(m); }
int pv_map_count(pv_map m) {
  return guarded([&]() -> int { return static_cast<int>(unwrap_map(m).arrays.size()); }, -1);
}
const char* pv_map_name(pv_map m, int i) {
  return guarded([&]() -> const char* { return at_index(unwrap_map(m).arrays, i).first.c_str(); },
                 static_cast<const char*>(nullptr));
}
pv_array pv_map_array(pv_map m, int i) {
  return guard_array([&] { return at_index(unwrap_map(m).arrays, i).second; });
}
int pv_map_meta_count(pv_map m) {
  return guarded([&]() -> int { return static_cast<int>(unwrap_map(m).meta.size()); }, -1);
}
const char* pv_map_meta_key(pv_map m, int i) {
  return guarded([&]() -> const char* { return at_index(unwrap_map(m).meta, i).first.c_str(); },
                 static_cast<const char*>(nullptr));
}
int pv_map_meta_kind(pv_map m, int i) {
  return guarded([&]() -> int { return static_cast<int>(at_index(unwrap_map(m).meta, i).second.index()); }, -1);
}
const char* pv_map_meta_string(pv_map m, int i) {
  return guarded([&]() -> const char* {
    return std::get<std::string>(at_index(unwrap_map(m).meta, i).second).c_str();
  }, static_cast<const char*>(nullptr));
}
int pv_map_meta_strings_count(pv_map m, int i) {
  return guarded([&]() -> int {
    return static_cast<int>(std::get<std::vector<std::string>>(at_index(unwrap_map(m).meta, i).second).size());
  }, -1);
}
const char* pv_map_meta_strings_get(pv_map m, int i, int j) {
  return guarded([&]() -> const char* {
    return at_index(std::get<std::vector<std::string>>(at_index(unwrap_map(m).meta, i).second), j).c_str();
  }, static_cast<const char*>(nullptr));
}
pv_array pv_map_meta_array(pv_map m, int i) {
  return guard_array([&] { return std::get<mx::array>(at_index(unwrap_map(m).meta, i).second); });
}
int pv_save_safetensors(const char* path, const char** names, pv_array* arrays, int n, const char** meta_keys,
                        const char** meta_values, int n_meta) {
  return guard_status([&] {
    if (path == nullptr) throw std::invalid_argument("null path");
    std::unordered_map<std::string, mx::array> tensors;
    for (int i = 0; i < n; ++i) tensors.emplace(std::string(names[i]), unwrap(arrays[i]));
    std::unordered_map<std::string, std::string> meta;
    for (int i = 0; i < n_meta; ++i) meta.emplace(std::string(meta_keys[i]), std::string(meta_values[i]));
    mx::save_safetensors(std::string(path), std::move(tensors), std::move(meta));
  });
}

// ---- device and memory ----
int pv_gpu_available(void) {
  return guarded([&]() -> int { return mx::is_available(mx::Device::gpu) ? 1 : 0; }, 0);
}
int pv_set_device(int kind) {
  return guard_status([&] {
    if (kind != 0 && kind != 1) throw std::invalid_argument("device kind must be 0 (cpu) or 1 (gpu)");
    mx::Device d = kind == 1 ? mx::Device::gpu : mx::Device::cpu;
    if (!mx::is_available(d)) throw std::runtime_error("device not available in this MLX build");
    mx::set_default_device(d);
  });
}
int pv_get_device(void) {
  return guarded([&]() -> int { return mx::default_device().type == mx::Device::gpu ? 1 : 0; }, -1);
}
int64_t pv_active_memory(void) {
  return guarded([&]() -> int64_t { return static_cast<int64_t>(mx::get_active_memory()); }, int64_t{-1});
}
int64_t pv_peak_memory(void) {
  return guarded([&]() -> int64_t { return static_cast<int64_t>(mx::get_peak_memory()); }, int64_t{-1});
}
int64_t pv_cache_memory(void) {
  return guarded([&]() -> int64_t { return static_cast<int64_t>(mx::get_cache_memory()); }, int64_t{-1});
}
int pv_reset_peak_memory(void) {
  return guard_status([&] { mx::reset_peak_memory(); });
}
int64_t pv_set_memory_limit(int64_t bytes) {
  return guarded([&]() -> int64_t { return static_cast<int64_t>(mx::set_memory_limit(static_cast<size_t>(bytes))); },
                 int64_t{-1});
}
int64_t pv_set_cache_limit(int64_t bytes) {
  return guarded([&]() -> int64_t { return static_cast<int64_t>(mx::set_cache_limit(static_cast<size_t>(bytes))); },
                 int64_t{-1});
}
int pv_clear_cache(void) {
  return guard_status([&] { mx::clear_cache(); });
}
int64_t pv_live_handles(void) { return live_handles.load(std::memory_order_relaxed); }

}  // extern "C"
