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
// holds reserved but unused. -1 without a CUDA runtime (CPU and Metal builds).
// The runtime is libmlx's dependency, so it is looked up next to it, with no
// CUDA headers: the scheduler asks before work that a full card would fail
// inside MLX's evaluation (issue 14: after such a failure on an H100 the next
// kernels hit an illegal address, a sticky error that ends the process).
extern "C" int64_t pv_device_free_memory(void) {
  using MemGetInfo = int (*)(size_t*, size_t*);
  using GetDevice = int (*)(int*);
  using DefaultPool = int (*)(void**, int);
  using PoolAttribute = int (*)(void*, int, void*);
  static void* cudart = [] {
    void* h = dlopen("libcudart.so.13", RTLD_LAZY | RTLD_NOLOAD);
    return h ? h : RTLD_NEXT;
  }();
  static auto mem_get_info = reinterpret_cast<MemGetInfo>(dlsym(cudart, "cudaMemGetInfo"));
  static auto get_device = reinterpret_cast<GetDevice>(dlsym(cudart, "cudaGetDevice"));
  static auto default_pool = reinterpret_cast<DefaultPool>(dlsym(cudart, "cudaDeviceGetDefaultMemPool"));
  static auto pool_attribute = reinterpret_cast<PoolAttribute>(dlsym(cudart, "cudaMemPoolGetAttribute"));
  if (!mem_get_info || !mx::is_available(mx::Device::gpu)) return -1;
  size_t free = 0, total = 0;
  if (mem_get_info(&free, &total) != 0) return -1;
  int device = 0;
  void* pool = nullptr;
  if (get_device && default_pool && pool_attribute && get_device(&device) == 0 && default_pool(&pool, device) == 0) {
    constexpr int kReservedMemCurrent = 5, kUsedMemCurrent = 7;  // cudaMemPoolAttr
    uint64_t reserved = 0, used = 0;
    if (pool_attribute(pool, kReservedMemCurrent, &reserved) == 0 && pool_attribute(pool, kUsedMemCurrent, &used) == 0 &&
        reserved > used)
      free += reserved - used;
  }
  return static_cast<int64_t>(free);
}
