// Custom GPU kernels through MLX's own fast::cuda_kernel (NVRTC at run time) or,
// on Metal builds, fast::metal_kernel: one calling shape for both. The kernel
// sources live in TypeScript (src/mlx/kernels*.ts); this file only forwards.
// See pensieve_mlx.h for the ABI rules. No exception leaves these functions.

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "mlx/backend/cuda/cuda.h"
#include "mlx/backend/metal/metal.h"
#include "mlx/fast.h"
#include "mlx/mlx.h"
#include "abi.h"
#include "pensieve_mlx.h"

namespace mx = mlx::core;


namespace {

enum Language { kNone = 0, kCuda = 1, kMetal = 2 };

int language() {
  if (mx::cu::is_available()) return kCuda;
  if (mx::metal::is_available()) return kMetal;
  return kNone;
}

struct Kernel {
  std::string name;
  size_t n_inputs;
  size_t n_outputs;
  mx::fast::CustomKernelFunction fn;
  // For the precompiled path (pv_kernel_plan_set_precompiled): which inputs'
  // shapes the source reads (MLX's test: the source mentions <name>_shape).
  std::vector<bool> reads_shape;
  bool ensure_row_contiguous = true;
  int shared_memory = 0;
};

// A CUBIN compiled by us (src/mlx/kernel-cache.ts) for one input signature.
// MLX's precompiled_cuda_kernel passes inputs, outputs, then scalars: the
// shapes the source reads become trailing int scalars (see kernel-cache.ts).
struct Precompiled {
  std::string name;
  std::string cubin;
  std::vector<std::pair<mx::Dtype, int>> signature;
  std::vector<mx::fast::ScalarArg> scalars;  // of the last primitive made
};

// One launch configuration of a kernel, parsed once: decode steps repeat the
// same launches, so a call then only passes the inputs. After the first call
// the plan keeps MLX's primitive (the kernel's generated source, grid and
// arguments) and gives it to the next calls' outputs, as MLX gives one
// primitive to sibling outputs: MLX's cuda_kernel would otherwise write the
// whole source string again for every launch. Inputs whose dtypes or ranks
// differ from the first call's (the generated signature) get a new primitive.
struct Plan {
  Kernel* kernel = nullptr;
  std::vector<mx::Shape> shapes;
  std::vector<mx::Dtype> dtypes;
  std::tuple<int, int, int> grid;
  std::tuple<int, int, int> threadgroup;
  std::vector<std::pair<std::string, mx::fast::TemplateArg>> targs;
  std::optional<float> init;
  std::shared_ptr<mx::Primitive> primitive;
  std::vector<std::pair<mx::Dtype, int>> signature;  // the inputs' dtypes and ranks the primitive was made for
  std::unique_ptr<Precompiled> precompiled;
};

std::vector<std::string> split_names(const char* list) {
  std::vector<std::string> out;
  if (list == nullptr || *list == 0) return out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) throw std::invalid_argument("empty name in a comma-separated list");
    out.push_back(item);
  }
  return out;
}

mx::Dtype dtype_of(int code) {
  static const mx::Dtype table[] = {mx::bool_,   mx::uint8,   mx::uint16,  mx::uint32,  mx::uint64,
                                    mx::int8,    mx::int16,   mx::int32,   mx::int64,   mx::float16,
                                    mx::float32, mx::float64, mx::bfloat16, mx::complex64};
  if (code < 0 || code > PV_COMPLEX64) throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  return table[code];
}

template <typename F, typename R>
R guarded(F&& f, R fallback) {
  return pensieve::abi::guarded(f, fallback, "unknown C++ exception in a custom kernel");
}

}  // namespace

extern "C" {

int pv_kernel_language(void) {
  return guarded([] { return language(); }, 0);
}

pv_kernel pv_kernel_new(const char* name, const char* input_names, const char* output_names, const char* source,
                        const char* header, int ensure_row_contiguous, int shared_memory) {
  return guarded(
      [&]() -> pv_kernel {
        if (name == nullptr || source == nullptr) throw std::invalid_argument("kernel name and source are required");
        auto inputs = split_names(input_names);
        auto outputs = split_names(output_names);
        if (outputs.empty()) throw std::invalid_argument("a kernel needs at least one output");
        std::string head = header ? header : "";
        mx::fast::CustomKernelFunction fn;
        switch (language()) {
          case kCuda:
            fn = mx::fast::cuda_kernel(name, inputs, outputs, source, head, ensure_row_contiguous != 0, shared_memory);
            break;
          case kMetal:
            fn = mx::fast::metal_kernel(name, inputs, outputs, source, head, ensure_row_contiguous != 0);
            break;
          default:
            throw std::runtime_error("custom GPU kernels are not available: this MLX build has no CUDA or Metal backend");
        }
        std::string body = source;
        std::vector<bool> reads_shape;
        for (auto& n : inputs) reads_shape.push_back(body.find(n + "_shape") != std::string::npos);
        return new Kernel{name,          inputs.size(), outputs.size(), std::move(fn), std::move(reads_shape),
                          ensure_row_contiguous != 0, shared_memory};
      },
      static_cast<pv_kernel>(nullptr));
}

void pv_kernel_free(pv_kernel k) { delete static_cast<Kernel*>(k); }

pv_kernel_plan pv_kernel_plan_new(pv_kernel k, const int32_t* out_shapes, const int32_t* out_ndims,
                                  const int32_t* out_dtypes, int n_outputs, const int32_t* grid,
                                  const int32_t* threadgroup, const char* template_names,
                                  const int32_t* template_kinds, const int32_t* template_values, int n_template,
                                  float init_value, int has_init_value) {
  return guarded(
      [&]() -> pv_kernel_plan {
        if (k == nullptr) throw std::invalid_argument("null kernel handle");
        auto& kernel = *static_cast<Kernel*>(k);
        if (n_outputs < 0 || static_cast<size_t>(n_outputs) != kernel.n_outputs)
          throw std::invalid_argument(kernel.name + ": expected " + std::to_string(kernel.n_outputs) + " outputs");
        if (grid == nullptr || threadgroup == nullptr || (n_outputs > 0 && (!out_ndims || !out_dtypes)))
          throw std::invalid_argument("null pointer argument");
        auto plan = std::make_unique<Plan>();
        plan->kernel = &kernel;
        const int32_t* dims = out_shapes;
        for (int i = 0; i < n_outputs; ++i) {
          int nd = out_ndims[i];
          if (nd < 0 || (nd > 0 && dims == nullptr)) throw std::invalid_argument("bad output shape");
          plan->shapes.emplace_back(dims, dims + nd);
          dims += nd;
          plan->dtypes.push_back(dtype_of(out_dtypes[i]));
        }
        auto names = split_names(template_names);
        if (n_template < 0 || names.size() != static_cast<size_t>(n_template))
          throw std::invalid_argument("template argument names and count differ");
        for (int i = 0; i < n_template; ++i) {
          switch (template_kinds[i]) {
            case 0: plan->targs.emplace_back(names[i], static_cast<int>(template_values[i])); break;
            case 1: plan->targs.emplace_back(names[i], template_values[i] != 0); break;
            case 2: plan->targs.emplace_back(names[i], dtype_of(template_values[i])); break;
            default: throw std::invalid_argument("template argument kind must be 0 (int), 1 (bool) or 2 (dtype)");
          }
        }
        plan->grid = {grid[0], grid[1], grid[2]};
        plan->threadgroup = {threadgroup[0], threadgroup[1], threadgroup[2]};
        if (has_init_value) plan->init = init_value;
        return plan.release();
      },
      static_cast<pv_kernel_plan>(nullptr));
}

void pv_kernel_plan_free(pv_kernel_plan p) { delete static_cast<Plan*>(p); }

int pv_kernel_plan_set_precompiled(pv_kernel_plan p, const char* name, const uint8_t* cubin, int64_t cubin_bytes,
                                   const int32_t* input_dtypes, const int32_t* input_ndims, int n_inputs) {
  return guarded(
      [&]() -> int {
        if (p == nullptr || name == nullptr || cubin == nullptr || cubin_bytes <= 0)
          throw std::invalid_argument("null plan, name or CUBIN");
        auto& plan = *static_cast<Plan*>(p);
        if (language() != kCuda) throw std::runtime_error("precompiled kernels need the CUDA backend");
        if (n_inputs < 0 || static_cast<size_t>(n_inputs) != plan.kernel->n_inputs)
          throw std::invalid_argument(plan.kernel->name + ": precompiled signature has the wrong input count");
        auto pre = std::make_unique<Precompiled>();
        pre->name = name;
        pre->cubin.assign(reinterpret_cast<const char*>(cubin), static_cast<size_t>(cubin_bytes));
        for (int i = 0; i < n_inputs; ++i) pre->signature.emplace_back(dtype_of(input_dtypes[i]), input_ndims[i]);
        plan.precompiled = std::move(pre);
        plan.primitive = nullptr;
        return 0;
      },
      -1);
}

int pv_kernel_plan_call(pv_kernel_plan p, pv_array* inputs, int n_inputs, int verbose, pv_array* out) {
  return guarded(
      [&]() -> int {
        if (p == nullptr || out == nullptr) throw std::invalid_argument("null plan or output list");
        auto& plan = *static_cast<Plan*>(p);
        auto& kernel = *plan.kernel;
        if (n_inputs < 0 || static_cast<size_t>(n_inputs) != kernel.n_inputs)
          throw std::invalid_argument(kernel.name + ": expected " + std::to_string(kernel.n_inputs) + " inputs");
        std::vector<mx::array> in;
        in.reserve(n_inputs);
        for (int i = 0; i < n_inputs; ++i) in.push_back(pensieve::abi::unwrap_array(inputs[i]));
        std::vector<std::pair<mx::Dtype, int>> signature;
        signature.reserve(in.size());
        for (auto& a : in) signature.emplace_back(a.dtype(), static_cast<int>(a.ndim()));
        std::vector<mx::array> results;
        if (plan.precompiled) {
          auto& pre = *plan.precompiled;
          if (signature != pre.signature)
            throw std::invalid_argument(kernel.name + ": inputs' dtypes or ranks differ from the precompiled kernel's");
          std::vector<mx::fast::ScalarArg> scalars;
          for (size_t i = 0; i < in.size(); ++i)
            if (kernel.reads_shape[i])
              for (auto d : in[i].shape()) scalars.emplace_back(static_cast<int>(d));
          auto same = [](const std::vector<mx::fast::ScalarArg>& a, const std::vector<mx::fast::ScalarArg>& b) {
            if (a.size() != b.size()) return false;
            for (size_t i = 0; i < a.size(); ++i)
              if (std::get<int>(a[i]) != std::get<int>(b[i])) return false;
            return true;
          };
          if (plan.primitive && same(scalars, pre.scalars)) {
            results = mx::array::make_arrays(plan.shapes, plan.dtypes, plan.primitive, in);
          } else {
            results = mx::fast::precompiled_cuda_kernel(pre.name, pre.cubin, in, plan.shapes, plan.dtypes, scalars,
                                                        plan.grid, plan.threadgroup, kernel.shared_memory, plan.init,
                                                        kernel.ensure_row_contiguous, {});
            plan.primitive = results.empty() ? nullptr : results[0].primitive_ptr();
            pre.scalars = std::move(scalars);
          }
        } else if (plan.primitive && signature == plan.signature && !verbose) {
          results = mx::array::make_arrays(plan.shapes, plan.dtypes, plan.primitive, in);
        } else {
          results = kernel.fn(in, plan.shapes, plan.dtypes, plan.grid, plan.threadgroup, plan.targs, plan.init,
                              verbose != 0, {});
          plan.primitive = results.empty() ? nullptr : results[0].primitive_ptr();
          plan.signature = std::move(signature);
        }
        for (size_t i = 0; i < results.size(); ++i) out[i] = pensieve::abi::wrap_array(std::move(results[i]));
        return 0;
      },
      -1);
}

int pv_kernel_call(pv_kernel k, pv_array* inputs, int n_inputs, const int32_t* out_shapes, const int32_t* out_ndims,
                   const int32_t* out_dtypes, int n_outputs, const int32_t* grid, const int32_t* threadgroup,
                   const char* template_names, const int32_t* template_kinds, const int32_t* template_values,
                   int n_template, float init_value, int has_init_value, int verbose, pv_array* out) {
  pv_kernel_plan plan = pv_kernel_plan_new(k, out_shapes, out_ndims, out_dtypes, n_outputs, grid, threadgroup,
                                           template_names, template_kinds, template_values, n_template, init_value,
                                           has_init_value);
  if (plan == nullptr) return -1;
  int status = pv_kernel_plan_call(plan, inputs, n_inputs, verbose, out);
  pv_kernel_plan_free(plan);
  return status;
}

}  // extern "C"
