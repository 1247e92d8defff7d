// Just enough of CUDA to run a warp-level kernel's source on the CPU with g++:
// 16-bit float types and their packed intrinsics (fp16 through _Float16,
// bfloat16 rounded to nearest even), __byte_perm, __ldg, and __shfl_xor_sync
// over 32 threads that stand for a warp's lanes. Used by test/gpu/*-emulated
// tests to check a kernel's indexing and arithmetic where no GPU is present.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#define __device__
#define __forceinline__ inline
#define __global__
// Blocks run one after another, so one static array per kernel stands for a block's shared memory.
#define __shared__ static

struct uint4 { uint32_t x, y, z, w; };
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
struct float2 { float x, y; };
struct EmuDim { unsigned x = 0, y = 0, z = 0; };
thread_local EmuDim threadIdx, blockIdx, gridDim;

struct __half { _Float16 v; };
struct __half2 { __half x, y; };
inline __half __ushort_as_half(unsigned short u) { __half h; std::memcpy(&h, &u, 2); return h; }
inline __half2 __half2half2(__half h) { return {h, h}; }
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half(float f) { return {static_cast<_Float16>(f)}; }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
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
inline float rsqrtf(float v) { return 1.f / std::sqrt(v); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int min(int a, int b) { return a < b ? a : b; }

// One warp's lanes as threads; shuffles exchange through a slot per lane.
struct EmuWarp {
  std::barrier<> sync{32};
  float slots[32];
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

// Runs kernel() over grid (total threads, MLX's convention) in blocks of `block`
// threads; a block's threads all run at once, blocks one after another.
// gridY: blocks along y (MLX: grid[1] total threads with threadgroup y = 1).
inline void emu_launch(unsigned grid, unsigned block, const std::function<void()>& kernel, unsigned gridY = 1) {
  const unsigned blocks = (grid + block - 1) / block;
  for (unsigned b = 0; b < blocks * gridY; ++b) {
    std::vector<EmuWarp> warps(block / 32);
    std::barrier<> sync(block);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t) {
      threads.emplace_back([&, t] {
        emu_warp = &warps[t / 32];
        emu_block = &sync;
        threadIdx.x = t;
        blockIdx.x = b % blocks;
        blockIdx.y = b / blocks;
        gridDim.x = blocks;
        gridDim.y = gridY;
        kernel();
        sync.arrive_and_drop();
      });
    }
    for (auto& t : threads) t.join();
  }
}
