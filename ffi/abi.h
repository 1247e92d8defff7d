// What the shim's other translation units (custom kernels, distributed ops)
// share with pensieve_mlx.cpp: handle wrapping and the last-error slot, and a
// guard so that no C++ exception crosses the C ABI.
#pragma once

#include <exception>

#include "mlx/mlx.h"
#include "pensieve_mlx.h"

namespace pensieve::abi {
pv_array wrap_array(mlx::core::array a);
mlx::core::array& unwrap_array(pv_array h);
void set_last_error(const char* what);

/** Runs f; an exception becomes the last error (`unknown` names its source) and `fallback` is returned. */
template <typename F, typename R>
R guarded(F&& f, R fallback, const char* unknown) {
  try {
    return f();
  } catch (const std::exception& e) {
    set_last_error(e.what());
  } catch (...) {
    set_last_error(unknown);
  }
  return fallback;
}
}  // namespace pensieve::abi
