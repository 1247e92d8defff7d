// Allocation failures become exceptions, not crashes. MLX 0.32's
// allocator::malloc() does not check the buffer its allocator returns: on the
// CPU backend a failed std::malloc gives a null buffer that the next kernel
// writes through (SIGSEGV). And the CPU allocator keeps no memory limit: MLX's
// limit only throttles GPU evaluation.
//
// libmlx calls allocator::allocator() through its PLT, and this shim comes
// before libmlx in the lookup scope of the library Bun opens, so the
// definition below is the one MLX uses. It wraps MLX's own allocator (found
// with dlsym(RTLD_NEXT)): a null buffer throws, and on a CPU-only build an
// allocation past mx::get_memory_limit() throws too. The exception unwinds
// through eval to the shim's entry points, which report it as an error.
#include <dlfcn.h>

#include "pensieve_mlx.h"

#include <sstream>
#include <stdexcept>

#include "mlx/allocator.h"
#include "mlx/device.h"
#include "mlx/memory.h"

namespace mx = mlx::core;

namespace {

mx::allocator::Allocator& mlx_allocator() {
  using Getter = mx::allocator::Allocator& (*)();
  static Getter next = reinterpret_cast<Getter>(dlsym(RTLD_NEXT, "_ZN3mlx4core9allocator9allocatorEv"));
  if (!next) throw std::runtime_error("pensieve: MLX's allocator is not found");
  return next();
}

[[noreturn]] void out_of_memory(size_t size, const char* why) {
  std::ostringstream msg;
  msg << "[malloc] out of memory: cannot allocate " << size << " bytes (" << why << "; "
      << mx::get_active_memory() << " bytes in use, limit " << mx::get_memory_limit() << ")";
  throw std::runtime_error(msg.str());
}

class GuardedAllocator : public mx::allocator::Allocator {
 public:
  GuardedAllocator(mx::allocator::Allocator& inner, bool enforce_limit)
      : inner_(inner), enforce_limit_(enforce_limit) {}

  mx::allocator::Buffer malloc(size_t size) override {
    if (enforce_limit_ && size > 0 && mx::get_active_memory() + size > mx::get_memory_limit())
      out_of_memory(size, "over MLX's memory limit");
    auto buffer = inner_.malloc(size);
    if (size > 0 && buffer.ptr() == nullptr) out_of_memory(size, "the system refused");
    return buffer;
  }
  void free(mx::allocator::Buffer buffer) override { inner_.free(buffer); }
  size_t size(mx::allocator::Buffer buffer) const override { return inner_.size(buffer); }
  mx::allocator::Buffer make_buffer(void* ptr, size_t size) override { return inner_.make_buffer(ptr, size); }
  void release(mx::allocator::Buffer buffer) override { inner_.release(buffer); }

 private:
  mx::allocator::Allocator& inner_;
  bool enforce_limit_;
};

}  // namespace

namespace mlx::core::allocator {

Allocator& allocator() {
  // GPU allocators keep their own limits (Metal waits, CUDA frees its cache); there only the null check.
  static GuardedAllocator guarded(mlx_allocator(), !mx::is_available(mx::Device::gpu));
  return guarded;
}

}  // namespace mlx::core::allocator

// The CUDA card's memory a new allocation can still get: what the driver has
// free plus what the default memory pool (cudaMallocAsync's, which MLX uses)
// holds reserved but unused. -1 without CUDA (CPU and Metal builds), or before
// this thread has a CUDA context. No CUDA headers: the driver's functions are
// looked up in libcuda (mlx-cuda-13's libmlx links the CUDA runtime statically
// and exports none of it); they take the thread's current context. The
// scheduler asks before work that a full card would fail inside MLX's
// evaluation (issue 14).
extern "C" int64_t pv_device_free_memory(void) {
  using MemGetInfo = int (*)(size_t*, size_t*);
  using CtxGetDevice = int (*)(int*);
  using DefaultPool = int (*)(void**, int);
  using PoolAttribute = int (*)(void*, int, void*);
  struct Api {
    MemGetInfo mem_get_info = nullptr;
    CtxGetDevice get_device = nullptr;
    DefaultPool default_pool = nullptr;
    PoolAttribute pool_attribute = nullptr;
  };
  static const Api api = [] {
    Api a;
    void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (!driver) return a;
    a.mem_get_info = reinterpret_cast<MemGetInfo>(dlsym(driver, "cuMemGetInfo_v2"));
    a.get_device = reinterpret_cast<CtxGetDevice>(dlsym(driver, "cuCtxGetDevice"));
    a.default_pool = reinterpret_cast<DefaultPool>(dlsym(driver, "cuDeviceGetDefaultMemPool"));
    a.pool_attribute = reinterpret_cast<PoolAttribute>(dlsym(driver, "cuMemPoolGetAttribute"));
    return a;
  }();
  if (!api.mem_get_info || !mx::is_available(mx::Device::gpu)) return -1;
  size_t free = 0, total = 0;
  if (api.mem_get_info(&free, &total) != 0) return -1;
  int device = 0;
  void* pool = nullptr;
  if (api.get_device && api.default_pool && api.pool_attribute && api.get_device(&device) == 0 &&
      api.default_pool(&pool, device) == 0) {
    // CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT and _USED_MEM_CURRENT.
    constexpr int kReservedMemCurrent = 5, kUsedMemCurrent = 7;
    uint64_t reserved = 0, used = 0;
    if (api.pool_attribute(pool, kReservedMemCurrent, &reserved) == 0 &&
        api.pool_attribute(pool, kUsedMemCurrent, &used) == 0 && reserved > used)
      free += reserved - used;
  }
  return static_cast<int64_t>(free);
}
