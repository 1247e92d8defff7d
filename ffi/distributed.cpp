// MLX's own distributed group (mlx::core::distributed) over the flat C ABI:
// init with a backend by name (ring over TCP, nccl on CUDA, mpi, jaccl, any),
// rank and size, and the collective ops, which are lazy arrays like any other.
// A process holds one group (the one init made): the ops use it. The backends
// read their addresses from the environment (MLX_RANK, MLX_HOSTFILE for ring;
// NCCL_HOST_IP, NCCL_PORT, MLX_WORLD_SIZE for nccl), as mlx.launch sets them.
// See pensieve_mlx.h for the ABI rules. No exception leaves these functions.

#include <memory>
#include <optional>
#include <string>

#include "mlx/distributed/distributed.h"
#include "mlx/distributed/ops.h"
#include "mlx/mlx.h"
#include "abi.h"
#include "pensieve_mlx.h"

namespace mx = mlx::core;
namespace dist = mlx::core::distributed;


namespace {

std::optional<dist::Group> group;

const dist::Group& current_group() {
  if (!group) throw std::runtime_error("the distributed group is not initialised: call pv_dist_init first");
  return *group;
}

template <typename F, typename R>
R guarded(F&& f, R fallback) {
  return pensieve::abi::guarded(f, fallback, "unknown C++ exception in MLX distributed");
}

template <typename F>
pv_array guard_array(F&& f) {
  return guarded([&]() -> pv_array { return pensieve::abi::wrap_array(f()); }, static_cast<pv_array>(nullptr));
}

std::string backend_name(const char* backend) { return backend && *backend ? backend : "any"; }

}  // namespace

extern "C" {

PV_API int pv_dist_is_available(const char* backend) {
  return guarded([&]() -> int { return dist::is_available(backend_name(backend)) ? 1 : 0; }, -1);
}

PV_API int pv_dist_init(const char* backend, int strict) {
  return guarded(
      [&]() -> int {
        group = dist::init(strict != 0, backend_name(backend));
        return 0;
      },
      -1);
}

PV_API int pv_dist_rank(void) {
  return guarded([&]() -> int { return current_group().rank(); }, -1);
}

PV_API int pv_dist_size(void) {
  return guarded([&]() -> int { return current_group().size(); }, -1);
}

PV_API pv_array pv_dist_all_sum(pv_array x) {
  return guard_array([&] { return dist::all_sum(pensieve::abi::unwrap_array(x), current_group()); });
}

PV_API pv_array pv_dist_all_max(pv_array x) {
  return guard_array([&] { return dist::all_max(pensieve::abi::unwrap_array(x), current_group()); });
}

PV_API pv_array pv_dist_all_gather(pv_array x) {
  return guard_array([&] { return dist::all_gather(pensieve::abi::unwrap_array(x), current_group()); });
}

PV_API pv_array pv_dist_send(pv_array x, int dst) {
  return guard_array([&] { return dist::send(pensieve::abi::unwrap_array(x), dst, current_group()); });
}

PV_API pv_array pv_dist_recv(const int32_t* shape, int ndim, int dtype, int src) {
  return guard_array([&] {
    if (ndim < 0 || (ndim > 0 && shape == nullptr)) throw std::invalid_argument("bad shape");
    if (dtype < PV_BOOL || dtype > PV_COMPLEX64) throw std::invalid_argument("unknown dtype code");
    static const mx::Dtype table[] = {mx::bool_,   mx::uint8,   mx::uint16,  mx::uint32,   mx::uint64,
                                      mx::int8,    mx::int16,   mx::int32,   mx::int64,    mx::float16,
                                      mx::float32, mx::float64, mx::bfloat16, mx::complex64};
    return dist::recv(mx::Shape(shape, shape + ndim), table[dtype], src, current_group());
  });
}

PV_API pv_array pv_dist_recv_like(pv_array like, int src) {
  return guard_array([&] { return dist::recv_like(pensieve::abi::unwrap_array(like), src, current_group()); });
}

}  // extern "C"
