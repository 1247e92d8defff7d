// Shared by Pensieve's CPU primitives (cpu_qmm.cpp, cpu_attention.cpp): a small
// persistent thread pool and a row-major view of evaluated arrays.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <memory>
#include <mutex>
#include <cstring>
#include <thread>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace pensieve {

// With automatic threads, products under this many multiply-adds stay on the calling thread. It was 4e6 (every
// SmolLM2 decode product on one thread) when waking the second thread went through the kernel for each run; with
// the spin below, on a 2-core Intel Sapphire Rapids VM, 2e5 (each product split) took a SmolLM2 decode step from
// 23.9-24.0 ms to 19.2-19.9 (bench/results/cpu-fused-2026-12-08.md). Not re-measured on the AMD EPYC host.
constexpr double kAutoParallelMin = 2e5;

// ---- a small persistent pool: the calling thread plus (cores - 1) workers ----
// Each run gets its own counters, so a worker that wakes late for an old run
// finds nothing left to do there instead of taking parts of the next one.
// A decode step is ~300 small runs ~25 us apart: waking a sleeping worker through
// the kernel (futex) for each cost more than the parts themselves. So workers and
// the caller spin for a while (PENSIEVE_POOL_SPIN_US, default 50) before they block,
// and a run wakes workers through the condition variable only if one sleeps.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: workers live as long as the process
    return *pool;
  }

  /** Threads a run uses: the calling thread plus the active workers. */
  int size() const { return active_.load(std::memory_order_relaxed); }

  /** Threads the pool has (hardware threads, at most 8). */
  int capacity() const { return workers_ + 1; }

  /** Uses n threads from now on (clamped to [1, capacity]); 0: all of them, chosen per product (automatic). */
  void set_threads(int n) {
    active_.store(n <= 0 ? capacity() : std::clamp(n, 1, capacity()));
    automatic_.store(n <= 0);
  }

  /** No thread count was set: small products run on the calling thread alone (see min_parallel_work). */
  bool automatic() const { return automatic_.load(std::memory_order_relaxed); }

  /**
   * Multiply-adds under which a product runs on the calling thread alone: 2e5 with a set thread count; with
   * automatic threads PENSIEVE_PARALLEL_MIN_WORK, else kAutoParallelMin.
   */
  double min_parallel_work() const { return automatic() ? auto_min_work_ : 2e5; }

  // Runs fn(part, parts) for part in [0, parts) across the pool and waits.
  void run(int parts, const std::function<void(int, int)>& fn) {
    if (parts <= 1 || size() <= 1) {
      for (int p = 0; p < parts; ++p) fn(p, parts);
      return;
    }
    auto job = std::make_shared<Job>(&fn, parts);
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    // A worker counts itself asleep under mu_ before it waits: either it saw the new generation, or this sees it.
    if (sleepers_.load() > 0) cv_.notify_all();
    execute(*job);
    if (!spin_until([&] { return job->pending.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(job->mu);
      job->done.wait(lock, [&] { return job->pending.load() == 0; });
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (current_ == job) current_.reset();
  }

 private:
  struct Job {
    Job(const std::function<void(int, int)>* f, int n) : fn(f), parts(n), pending(n) {}
    const std::function<void(int, int)>* fn;
    const int parts;
    std::atomic<int> next{0};
    std::atomic<int> pending;
    std::mutex mu;
    std::condition_variable done;
  };

  // Polls ready() for up to spin_us_ microseconds (the clock read every 64 polls); whether it became true.
  template <typename Ready>
  bool spin_until(const Ready& ready) const {
    if (ready()) return true;
    if (spin_us_ <= 0) return false;
    const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
    for (unsigned i = 1;; ++i) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
      if (ready()) return true;
      if ((i & 63) == 0 && std::chrono::steady_clock::now() >= end) return false;
    }
  }

  Pool() {
    const char* spin = std::getenv("PENSIEVE_POOL_SPIN_US");
    spin_us_ = spin != nullptr ? std::atoi(spin) : 50;
    const char* min_work = std::getenv("PENSIEVE_PARALLEL_MIN_WORK");
    if (min_work != nullptr && std::atof(min_work) > 0) auto_min_work_ = std::atof(min_work);
    unsigned n = std::thread::hardware_concurrency();
    workers_ = static_cast<int>(std::min(8u, n == 0 ? 1u : n)) - 1;
    // PENSIEVE_THREADS: the engine passes the configured count this way.
    const char* env = std::getenv("PENSIEVE_THREADS");
    const int wanted = env != nullptr ? std::atoi(env) : 0;
    set_threads(wanted);
    for (int i = 0; i < workers_; ++i) std::thread([this, i] { loop(i); }).detach();
  }

  static void execute(Job& job) {
    while (true) {
      const int p = job.next.fetch_add(1);
      if (p >= job.parts) return;
      (*job.fn)(p, job.parts);
      if (job.pending.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(job.mu);
        job.done.notify_all();
      }
    }
  }

  // Worker i takes part in runs while i + 1 < size() (the caller is thread 0).
  void loop(int index) {
    uint64_t seen = 0;
    while (true) {
      const bool woke = spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (!woke) {
          sleepers_.fetch_add(1);
          cv_.wait(lock, [&] { return generation_.load() != seen; });
          sleepers_.fetch_sub(1);
        }
        seen = generation_.load();
        job = current_;
      }
      if (job && index + 1 < size()) execute(*job);
    }
  }

  int workers_ = 0;
  std::atomic<int> active_{1};
  std::atomic<bool> automatic_{true};
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Job> current_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleepers_{0};
  int spin_us_ = 50;
  double auto_min_work_ = kAutoParallelMin;
};


// The elements of an evaluated array in row-major order: its own buffer when it
// is row-contiguous, else a strided gather into `scratch` (kernels take plain rows).
template <typename T>
const T* row_major(const mx::array& a, std::vector<T>& scratch) {
  if (a.flags().row_contiguous) return a.data<T>();
  scratch.resize(a.size());
  const T* src = a.data<T>();
  const auto& shape = a.shape();
  const auto& strides = a.strides();
  const int nd = static_cast<int>(a.ndim());
  std::vector<int64_t> index(nd, 0);
  // Rows contiguous along the last axis (heads split from a product, a transposed view of them): one copy a row.
  const int64_t run = nd > 0 && strides[nd - 1] == 1 ? shape[nd - 1] : 1;
  const int outer = run > 1 ? nd - 1 : nd;
  for (size_t i = 0; i < a.size(); i += run) {
    int64_t offset = 0;
    for (int d = 0; d < outer; ++d) offset += index[d] * strides[d];
    if (run > 1)
      std::memcpy(scratch.data() + i, src + offset, sizeof(T) * run);
    else
      scratch[i] = src[offset];
    for (int d = outer - 1; d >= 0; --d) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
  return scratch.data();
}


/** PENSIEVE_CPU_KERNEL=0 turns Pensieve's CPU kernels off (to compare with MLX's own). */
inline bool cpu_kernels_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("PENSIEVE_CPU_KERNEL");
    return v == nullptr || std::string(v) != "0";
  }();
  return on;
}

// Row loops shared by the norm/SwiGLU primitives and the fused packed product (cpu_norm.cpp): one code, one result.
/** y[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w (w may be null), rows of `cols` floats, x rows `x_stride` apart. */
void rms_norm_rows(const float* x, int64_t x_stride, const float* w, float* y, int64_t rows, int64_t cols, float eps);
/** y[r] = g[r] * sigmoid(g[r]) * u[r], rows of `cols` floats. */
void swiglu_rows(const float* g, int64_t g_stride, const float* u, int64_t u_stride, float* y, int64_t rows,
                 int64_t cols);

}  // namespace pensieve
