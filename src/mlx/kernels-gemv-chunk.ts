// The 4-bit GEMV's inner step as CUDA source text, shared by kernels-gemv.ts and
// kernels-gemv-split.ts (a module of its own: those two import each other's exports).

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
