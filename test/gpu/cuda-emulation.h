// Just enough of CUDA to run a warp-level kernel's source on the CPU with g++:
// 16-bit float types and their packed intrinsics (fp16 through _Float16,
// bfloat16 rounded to nearest even), __byte_perm, __ldg, and __shfl_xor_sync
// over 32 threads that stand for a warp's lanes; __syncthreads, dynamic shared
// memory, a 2-D grid, atomicAdd, and the warp-wide tensor-core product
// mma.sync.m16n8k16 (fragments laid out as the PTX ISA specifies). Used by
// test/gpu/*-emulated tests to check a kernel's indexing and arithmetic where
// no GPU is present.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __global__
// Blocks run one after another, so one static array per kernel stands for a block's shared memory.
#define __shared__ static

struct uint4 { uint32_t x, y, z, w; };
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
struct uint2 { uint32_t x, y; };
struct float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct float2 { float x, y; };
struct EmuDim { unsigned x = 0, y = 0, z = 0; };
thread_local EmuDim threadIdx, blockIdx, gridDim;
using std::min;
using std::max;

struct __half { _Float16 v; };
struct __half2 { __half x, y; };
inline __half __ushort_as_half(unsigned short u) { __half h; std::memcpy(&h, &u, 2); return h; }
inline __half2 __half2half2(__half h) { return {h, h}; }
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half(float f) { return {static_cast<_Float16>(f)}; }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half(a), __float2half(b)}; }
inline __half2 __float22half2_rn(float2 v) { return {__float2half(v.x), __float2half(v.y)}; }
inline __half h16(float f) { return {static_cast<_Float16>(f)}; }
inline __half2 __float2half2_rn(float f) { return {h16(f), h16(f)}; }
inline __half2 __hsub2(__half2 a, __half2 b) { return {h16(__half2float(a.x) - __half2float(b.x)), h16(__half2float(a.y) - __half2float(b.y))}; }
inline __half2 __hadd2(__half2 a, __half2 b) { return {h16(__half2float(a.x) + __half2float(b.x)), h16(__half2float(a.y) + __half2float(b.y))}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return {h16(__half2float(a.x) * __half2float(b.x)), h16(__half2float(a.y) * __half2float(b.y))}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return {h16(std::fma(__half2float(a.x), __half2float(b.x), __half2float(c.x))),
          h16(std::fma(__half2float(a.y), __half2float(b.y), __half2float(c.y)))};
}

struct __nv_bfloat16 { uint16_t u; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = static_cast<uint32_t>(b.u) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 b) { return {b, b}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16(a), __float2bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return {__float2bfloat16(v.x), __float2bfloat16(v.y)}; }
inline __nv_bfloat16 b16(float f) { return __float2bfloat16(f); }
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return {b16(f), b16(f)}; }
inline __nv_bfloat162 __hsub2(__nv_bfloat162 a, __nv_bfloat162 b) { return {b16(__bfloat162float(a.x) - __bfloat162float(b.x)), b16(__bfloat162float(a.y) - __bfloat162float(b.y))}; }
inline __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) { return {b16(__bfloat162float(a.x) + __bfloat162float(b.x)), b16(__bfloat162float(a.y) + __bfloat162float(b.y))}; }
inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) { return {b16(__bfloat162float(a.x) * __bfloat162float(b.x)), b16(__bfloat162float(a.y) * __bfloat162float(b.y))}; }
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
  return {b16(std::fma(__bfloat162float(a.x), __bfloat162float(b.x), __bfloat162float(c.x))),
          b16(std::fma(__bfloat162float(a.y), __bfloat162float(b.y), __bfloat162float(c.y)))};
}

inline uint32_t __byte_perm(uint32_t a, uint32_t b, uint32_t s) {
  uint8_t bytes[8];
  std::memcpy(bytes, &a, 4);
  std::memcpy(bytes + 4, &b, 4);
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>(bytes[(s >> (4 * i)) & 7]) << (8 * i);
  return r;
}
template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
inline float rsqrtf(float v) { return 1.f / std::sqrt(v); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }

// One warp's lanes as threads; shuffles exchange through a slot per lane.
struct EmuWarp {
  std::barrier<> sync{32};
  float slots[32];
  uint32_t frags[32][6];
};
thread_local EmuWarp* emu_warp = nullptr;
thread_local std::barrier<>* emu_block = nullptr;
inline float __shfl_xor_sync(unsigned, float v, int mask) {
  const int lane = threadIdx.x & 31;
  emu_warp->slots[lane] = v;
  emu_warp->sync.arrive_and_wait();
  const float r = emu_warp->slots[lane ^ mask];
  emu_warp->sync.arrive_and_wait();
  return r;
}
// Every thread of the block must reach it (as on a GPU); a thread that returned
// first drops out of the barrier.
inline void __syncthreads() { emu_block->arrive_and_wait(); }

// Float atomics: blocks run one after another, but a block's threads run at once.
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: D (16x8) += A (16x16) B (16x8)
// over the warp. Lane l = 4*g + t holds A's halves (row, col) in registers
// a[0] (g, 2t..2t+1), a[1] (g+8, 2t..), a[2] (g, 2t+8..), a[3] (g+8, 2t+8..);
// B's (k, col) in b0 (2t..2t+1, g), b1 (2t+8..2t+9, g); D's in d[0..1] (g, 2t..2t+1),
// d[2..3] (g+8, 2t..2t+1); the lower half of a register is the lower column / k.
// Products are summed in double here and rounded to float once (the tensor core
// keeps at least float precision).
inline float emu_half_bits(uint32_t h, bool bf16) {
  if (bf16) return __bfloat162float(__nv_bfloat16{static_cast<uint16_t>(h)});
  __half v;
  const uint16_t u = static_cast<uint16_t>(h);
  std::memcpy(&v, &u, 2);
  return __half2float(v);
}
inline void emu_mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  const int lane = threadIdx.x & 31;
  EmuWarp* w = emu_warp;
  for (int i = 0; i < 4; ++i) w->frags[lane][i] = a[i];
  w->frags[lane][4] = b0;
  w->frags[lane][5] = b1;
  w->sync.arrive_and_wait();
  auto A = [&](int row, int col) {
    const uint32_t r = w->frags[(row % 8) * 4 + (col % 8) / 2][(row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0)];
    return emu_half_bits(col % 2 ? r >> 16 : r & 0xFFFFu, bf16);
  };
  auto B = [&](int k, int col) {
    const uint32_t r = w->frags[col * 4 + (k % 8) / 2][4 + (k >= 8 ? 1 : 0)];
    return emu_half_bits(k % 2 ? r >> 16 : r & 0xFFFFu, bf16);
  };
  const int g = lane / 4, t = lane % 4;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i % 2);
    double s = d[i];
    for (int k = 0; k < 16; ++k) s += double(A(row, k)) * double(B(k, col));
    out[i] = static_cast<float>(s);
  }
  w->sync.arrive_and_wait();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// A block's dynamic shared memory (extern __shared__ on the GPU).
thread_local unsigned char* emu_shared = nullptr;
template <typename T>
inline T* emu_dynamic_shared() { return reinterpret_cast<T*>(emu_shared); }

// A thread block cluster (sm_90): its blocks run at once, share a barrier, and
// reach each other's shared memory (cluster.sync(), cluster.map_shared_rank()).
struct EmuCluster {
  std::barrier<> sync;
  std::vector<unsigned char*> shared;
  explicit EmuCluster(std::ptrdiff_t threads) : sync(threads) {}
};
thread_local EmuCluster* emu_cluster = nullptr;
thread_local unsigned emu_cluster_rank = 0;
inline void emu_cluster_sync() { emu_cluster->sync.arrive_and_wait(); }
template <typename P>
inline P* emu_cluster_map(P* p, int rank) {
  const auto offset = reinterpret_cast<unsigned char*>(p) - emu_cluster->shared[emu_cluster_rank];
  return reinterpret_cast<P*>(emu_cluster->shared[rank] + offset);
}

// Runs kernel() over grid (total threads, MLX's convention) in blocks of `block`
// threads, gridY blocks deep (blockIdx.y), with `shared` bytes of dynamic shared
// memory per block (filled with NaN bytes). A block's threads all run at once,
// blocks one after another; with clusterY > 1 the clusterY blocks of a cluster
// (consecutive blockIdx.y) run at once.
inline void emu_launch(unsigned grid, unsigned block, const std::function<void()>& kernel, unsigned gridY = 1,
                       size_t shared = 0, unsigned clusterY = 1) {
  const unsigned blocks = (grid + block - 1) / block;
  for (unsigned by0 = 0; by0 < gridY; by0 += clusterY) {
    for (unsigned b = 0; b < blocks; ++b) {
      const unsigned n = std::min(clusterY, gridY - by0);
      std::vector<std::vector<EmuWarp>> warps(n);
      std::vector<std::vector<unsigned char>> smem(n, std::vector<unsigned char>(shared, 0xFF));
      std::vector<std::unique_ptr<std::barrier<>>> syncs;
      EmuCluster cluster(static_cast<std::ptrdiff_t>(n * block));
      for (unsigned q = 0; q < n; ++q) {
        warps[q] = std::vector<EmuWarp>(block / 32);
        syncs.push_back(std::make_unique<std::barrier<>>(block));
        cluster.shared.push_back(smem[q].data());
      }
      std::vector<std::thread> threads;
      for (unsigned q = 0; q < n; ++q) {
        for (unsigned t = 0; t < block; ++t) {
          threads.emplace_back([&, q, t] {
            emu_warp = &warps[q][t / 32];
            emu_block = syncs[q].get();
            emu_shared = smem[q].data();
            emu_cluster = &cluster;
            emu_cluster_rank = q;
            threadIdx.x = t;
            blockIdx.x = b;
            blockIdx.y = by0 + q;
            gridDim.x = blocks;
            gridDim.y = gridY;
            gridDim.z = 1;
            kernel();
            syncs[q]->arrive_and_drop();
            cluster.sync.arrive_and_drop();
          });
        }
      }
      for (auto& t : threads) t.join();
    }
  }
}

// Grid-wide mode (emu_launch_all): every block of a launch runs at once, so a
// block can wait on others (the layer megakernel's phases). Small grids only
// (a thread per GPU thread). A kernel's __shared__ declarations must then be
// per block: emulate.ts (perBlockShared) rewrites each into an array of
// EMU_MAX_BLOCKS copies indexed by emu_block_id.
#define PV_EMULATION 1
constexpr unsigned EMU_MAX_BLOCKS = 64;
thread_local unsigned emu_block_id = 0;
inline int atomicExch(int* p, int v) { return std::atomic_ref<int>(*p).exchange(v); }
inline void __nanosleep(unsigned) { std::this_thread::yield(); }
[[noreturn]] inline void __trap() { std::abort(); }
inline void emu_launch_all(unsigned grid, unsigned block, const std::function<void()>& kernel) {
  const unsigned blocks = (grid + block - 1) / block;
  if (blocks > EMU_MAX_BLOCKS) std::abort();
  std::vector<std::vector<EmuWarp>> warps(blocks);
  std::vector<std::unique_ptr<std::barrier<>>> syncs;
  for (unsigned b = 0; b < blocks; ++b) {
    warps[b] = std::vector<EmuWarp>(block / 32);
    syncs.push_back(std::make_unique<std::barrier<>>(block));
  }
  std::vector<std::thread> threads;
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([&, b, t] {
        emu_warp = &warps[b][t / 32];
        emu_block = syncs[b].get();
        emu_block_id = b;
        threadIdx.x = t;
        blockIdx.x = b;
        blockIdx.y = 0;
        gridDim.x = blocks;
        gridDim.y = 1;
        gridDim.z = 1;
        kernel();
        syncs[b]->arrive_and_drop();
      });
  for (auto& t : threads) t.join();
}
