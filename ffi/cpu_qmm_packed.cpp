// 4-bit weights repacked for the VNNI int8 kernel: one sequential stream per
// 4 output rows, with 16-bit scales (and biases).
//
// Why: a decode step of a large model streams every weight once, so its speed
// is memory bandwidth. The MLX affine layout makes the kernel read 12 streams
// per 4-row tile (4 weight rows, 4 rows of float32 scales, 4 of biases) and
// 24 bytes per 32 Q4_0 weights; the hardware prefetcher keeps up with few of
// them. Packed, a tile is one stream, read front to back, of
//   [4 rows × 128 weight bytes | 4 rows × groups' scales | 4 rows × biases]
// per 256 inputs (a "chunk"), with the scales as float16 or bfloat16 and the
// biases left out when every bias is -8·scale (GGUF Q4_0): 18 bytes per 32
// weights for Q4_0, 20 for Q4_1 and MLX 4-bit g32, 18 for g64.
//
// Numerics are unchanged: a weight is packed only when every scale and bias
// converts to the 16-bit type and back exactly (GGUF's are float16 to begin
// with; mlx-community's are the model's float16/bfloat16), else it keeps the
// plain layout. The dots are the VNNI tile's of cpu_qmm_int8_vnni.inc.
// Packed: 4-bit, N a multiple of 4, K a multiple of 256, group 32/64/128.

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PV_X86 1
#endif

#include "cpu_qmm_int8.h"

namespace pensieve {

namespace {

constexpr uint32_t kMagic = 0x34515650;  // "PVQ4"
constexpr int kHeaderBytes = 64;
enum ScaleKind : uint32_t { kFloat16 = 1, kBfloat16 = 2 };

struct PackHeader {
  uint32_t magic, N, K, group, scale_kind, symmetric, chunk_bytes, scale_bytes;
};

// float ⇄ float16 / bfloat16, scalar (packing is once per weight; only where VNNI, hence F16C, exists).
#ifdef PV_X86
#define PV_F16C __attribute__((target("f16c")))
#else
#define PV_F16C
#endif
PV_F16C uint16_t to_half(float f) {
#ifdef PV_X86
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
#else
  return static_cast<uint16_t>(static_cast<_Float16>(f));
#endif
}
PV_F16C float from_half(uint16_t h) {
#ifdef PV_X86
  return _cvtsh_ss(h);
#else
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
#endif
}
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);  // exactness is checked after, so truncation is fine
}
float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

PV_F16C bool exact_in(const float* v, size_t n, uint32_t kind) {
  for (size_t i = 0; i < n; ++i) {
    const float back = kind == kFloat16 ? from_half(to_half(v[i])) : from_bf16(to_bf16(v[i]));
    if (!(back == v[i]) && !(std::isnan(v[i]) && std::isnan(back))) return false;
  }
  return true;
}

const PackHeader* header_of(const mx::array& packed) {
  if (packed.dtype() != mx::uint8 || packed.ndim() != 1 || packed.size() < kHeaderBytes) return nullptr;
  const auto* h = reinterpret_cast<const PackHeader*>(packed.data<uint8_t>());
  return h->magic == kMagic ? h : nullptr;
}

}  // namespace

/**
 * The packed copy of a 4-bit affine weight, or an empty array when it cannot
 * be packed exactly (shape, or scales/biases not exact in 16 bits). Evaluates
 * its inputs.
 */
mx::array cpu_pack_q4(const mx::array& w_in, const mx::array& sc_in, const mx::array& bi_in, int group) {
  const mx::array empty = mx::zeros({0}, mx::uint8);
  if (!cpu_isa_supported(kIsaVnni)) return empty;
  if (w_in.dtype() != mx::uint32 || w_in.ndim() != 2 || sc_in.ndim() != 2) return empty;
  if (group != 32 && group != 64 && group != 128) return empty;
  const int N = w_in.shape(0), K = w_in.shape(1) * 8;
  if (N % 4 != 0 || K % 256 != 0 || sc_in.shape(0) != N || sc_in.shape(1) * group != K || bi_in.shape() != sc_in.shape())
    return empty;
  auto cpu = mx::default_stream(mx::Device::cpu);
  auto sc = mx::astype(sc_in, mx::float32, cpu), bi = mx::astype(bi_in, mx::float32, cpu);
  mx::eval({w_in, sc, bi});
  std::vector<float> sbuf, bbuf;
  std::vector<uint32_t> wbuf;
  const float* s = row_major(sc, sbuf);
  const float* b = row_major(bi, bbuf);
  const auto* wb = reinterpret_cast<const uint8_t*>(row_major(w_in, wbuf));
  const size_t groups_total = static_cast<size_t>(N) * (K / group);
  uint32_t kind = 0;
  for (uint32_t k : {static_cast<uint32_t>(kFloat16), static_cast<uint32_t>(kBfloat16)}) {
    if (exact_in(s, groups_total, k) && exact_in(b, groups_total, k)) {
      kind = k;
      break;
    }
  }
  if (kind == 0) return empty;
  bool symmetric = true;
  for (size_t i = 0; i < groups_total && symmetric; ++i) symmetric = b[i] == -8.0f * s[i];
  const int per_chunk = 256 / group;  // groups per chunk and row
  const uint32_t scale_bytes = 4 * per_chunk * 2;
  const uint32_t chunk_bytes = 512 + scale_bytes * (symmetric ? 1 : 2);
  const int chunks = K / 256, tiles = N / 4;
  const size_t total = kHeaderBytes + static_cast<size_t>(tiles) * chunks * chunk_bytes;
  auto* out = static_cast<uint8_t*>(std::aligned_alloc(64, (total + 63) / 64 * 64));
  if (out == nullptr) throw std::runtime_error("cpu pack: out of memory");
  std::memset(out, 0, kHeaderBytes);
  PackHeader h{kMagic,
               static_cast<uint32_t>(N),
               static_cast<uint32_t>(K),
               static_cast<uint32_t>(group),
               kind,
               symmetric ? 1u : 0u,
               chunk_bytes,
               scale_bytes};
  std::memcpy(out, &h, sizeof h);
  const size_t row_bytes = K / 2;
  const int groups = K / group;
  auto put = [&](uint16_t* dst, const float* src) {
    for (int i = 0; i < per_chunk; ++i) dst[i] = kind == kFloat16 ? to_half(src[i]) : to_bf16(src[i]);
  };
  Pool::get().run(std::min(Pool::get().capacity(), tiles), [&](int p, int parts) {
    for (int tile = tiles * p / parts; tile < tiles * (p + 1) / parts; ++tile) {
      for (int c = 0; c < chunks; ++c) {
        uint8_t* dst = out + kHeaderBytes + (static_cast<size_t>(tile) * chunks + c) * chunk_bytes;
        for (int t = 0; t < 4; ++t) {
          const size_t n = static_cast<size_t>(tile) * 4 + t;
          std::memcpy(dst + t * 128, wb + n * row_bytes + static_cast<size_t>(c) * 128, 128);
          put(reinterpret_cast<uint16_t*>(dst + 512) + t * per_chunk, s + n * groups + c * per_chunk);
          if (!symmetric)
            put(reinterpret_cast<uint16_t*>(dst + 512 + scale_bytes) + t * per_chunk, b + n * groups + c * per_chunk);
        }
      }
    }
  });
  return mx::array(out, mx::Shape{static_cast<int>(total)}, mx::uint8, [](void* p) { std::free(p); });
}

#ifdef PV_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
namespace packed_vnni {
#include "cpu_qmm_packed_vnni.inc"
}  // namespace packed_vnni
#pragma GCC pop_options
#endif

class CpuQuantizedMatmulPacked : public mx::UnaryPrimitive {
 public:
  explicit CpuQuantizedMatmulPacked(mx::Stream stream) : UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    encoder.dispatch([x = inputs[0], packed = inputs[1], out]() mutable {
      const PackHeader* h = header_of(packed);
      const int K = static_cast<int>(h->K);
      QShape s{static_cast<int>(x.size() / K), static_cast<int>(h->N), K, static_cast<int>(h->group), 4};
      std::vector<float> xs;
      const float* xp = row_major(x, xs);
      ActQ a;
      quantize_activations(xp, a, s, kIsaVnni);
#ifdef PV_X86
      packed_vnni::Packed pk{packed.data<uint8_t>() + kHeaderBytes, static_cast<int>(h->chunk_bytes),
                             static_cast<int>(h->scale_bytes), h->scale_kind == kBfloat16, h->symmetric != 0};
      packed_vnni::product(a, pk, out.data<float>(), s);
#endif
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("PensieveCpuQuantizedMatmulPacked runs on the CPU only");
  }

  const char* name() const override { return "PensieveCpuQuantizedMatmulPacked"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return dynamic_cast<const CpuQuantizedMatmulPacked*>(&other) != nullptr;
  }
};

/** x [..., K] @ dequantize(w)^T from cpu_pack_q4's packed weight (VNNI path only). */
mx::array cpu_quantized_matmul_packed(const mx::array& x_in, const mx::array& packed) {
  if (!cpu_isa_supported(kIsaVnni)) throw std::invalid_argument("cpu packed qmm: this CPU lacks AVX-512 VNNI");
  mx::eval({packed});
  const PackHeader* h = header_of(packed);
  if (h == nullptr) throw std::invalid_argument("cpu packed qmm: not a packed weight (see cpu_pack_q4)");
  const int K = static_cast<int>(h->K);
  if (x_in.ndim() < 1 || x_in.shape(-1) != K) {
    throw std::invalid_argument("cpu packed qmm: x has " + std::to_string(x_in.ndim() ? x_in.shape(-1) : 0) +
                                " features, the weight expects " + std::to_string(K));
  }
  auto cpu = mx::default_stream(mx::Device::cpu);
  mx::Shape out_shape(x_in.shape().begin(), x_in.shape().end() - 1);
  out_shape.push_back(static_cast<int>(h->N));
  auto x = x_in.dtype() == mx::float32 ? x_in : mx::astype(x_in, mx::float32, cpu);
  return mx::array(out_shape, mx::float32, std::make_shared<CpuQuantizedMatmulPacked>(cpu), {x, packed});
}

}  // namespace pensieve
