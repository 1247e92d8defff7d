// What the int8-activation kernels share (cpu_qmm_int8.cpp, cpu_qmm_packed.cpp):
// the instruction-set choice, the quantized activations and the product's shape.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu_common.h"

namespace pensieve {

enum Isa : int { kIsaAuto = 0, kIsaScalar = 1, kIsaAvx2 = 2, kIsaVnni = 3 };

bool cpu_isa_supported(int isa);
int cpu_isa_in_use();

struct QShape {
  int M, N, K, group, bits;
};

// Activations, quantized once per call (see quantize_rows in cpu_qmm_int8.cpp).
enum Layout : int { kLayoutBlock32 = 0, kLayoutVnni = 1 };

struct ActQ {
  int M, K, group, groups, layout;
  std::vector<int8_t> q, ql;  // xh and xl, in the same layout
  std::vector<float> d, xsum, dxb, xsb;
  std::vector<int32_t> qsum;
};

/** Quantizes x [M, K] for a product of shape s on path isa (sizes a, picks its layout). */
void quantize_activations(const float* x, ActQ& a, const QShape& s, int isa);

}  // namespace pensieve
