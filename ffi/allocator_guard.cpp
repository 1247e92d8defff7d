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
