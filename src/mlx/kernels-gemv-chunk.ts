// The 4-bit GEMV's inner step and its L2 prefetch as CUDA source text, shared by kernels-gemv.ts,
// kernels-gemv-split.ts and kernels-gemv-prefetch.ts (a module of its own: those import each other's exports).

/**
 * One 16-byte weight chunk (u) of every row (r) against every row of x (m): x's
 * chunk loaded (XLOAD, per variant) and unpacked, the products summed into acc.
 * Shared by the kernel and its split-K variant (kernels-gemv-split.ts).
 */
export const CHUNK_PRODUCTS = `#pragma unroll
        for (int m = 0; m < M; ++m) {
          const uint4* xc = reinterpret_cast<const uint4*>(x + (size_t)m * K) + c * 4;
          T2 xp[4][4];
          float xsum = 0.f;
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            /*XLOAD*/
            xp[j][0] = pv_bits<T2>(__byte_perm(v.x, v.z, 0x5410));
            xp[j][1] = pv_bits<T2>(__byte_perm(v.x, v.z, 0x7632));
            xp[j][2] = pv_bits<T2>(__byte_perm(v.y, v.w, 0x5410));
            xp[j][3] = pv_bits<T2>(__byte_perm(v.y, v.w, 0x7632));
            const float2 f = Ops::to_float2(__hadd2(__hadd2(xp[j][0], xp[j][1]), __hadd2(xp[j][2], xp[j][3])));
            xsum += f.x + f.y;
          }
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
            const float d = pv_dot8<T>(wv[u][r].x, xp[0]) + pv_dot8<T>(wv[u][r].y, xp[1]) +
                            pv_dot8<T>(wv[u][r].z, xp[2]) + pv_dot8<T>(wv[u][r].w, xp[3]);
            acc[m][r] += sc[u][r] * d + bo[u][r] * xsum;
          }
        }
`;

/**
 * Prepended to a GEMV body: every thread of the grid takes 4 KB pieces of pf_w (PF_W bytes), pf_s and pf_b
 * (PF_S bytes each) in turn. sm_90: one bulk prefetch a piece (cp.async.bulk.prefetch.L2, 16-byte multiples);
 * older GPUs: prefetch.global.L2 a 128-byte line.
 */
export const PREFETCH_SOURCE = `
  {
    auto pv_prefetch = [](const void* base, long long bytes, long long t, long long n) {
      const char* p = static_cast<const char*>(base);
      for (long long o = t * 4096; o < bytes; o += n * 4096) {
        const unsigned size = (unsigned)(bytes - o < 4096 ? bytes - o : 4096);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + o), "r"(size) : "memory");
#elif defined(__CUDA_ARCH__)
        for (unsigned i = 0; i < size; i += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o + i));
#else
        (void)p; (void)size;
#endif
      }
    };
    const long long pf_n = (long long)gridDim.x * blockDim.x;
    const long long pf_t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    pv_prefetch(pf_w, PF_W, pf_t, pf_n);
    pv_prefetch(pf_s, PF_S, pf_t, pf_n);
    pv_prefetch(pf_b, PF_S, pf_t, pf_n);
  }
`;
