// Weights repacked for the VNNI int8 kernel, with 16-bit scales (and biases).
//
// Why: a decode step of a large model streams every weight once, so its speed
// is memory bandwidth. The MLX affine layout makes the kernel read 12 streams
// per 4-row tile (4 weight rows, 4 rows of float32 scales, 4 of biases) and
// 24 bytes per 32 Q4_0 weights; the hardware prefetcher keeps up with few of
// them. Packed, a tile is one stream, read front to back. Two layouts:
// - 4-bit (kLayoutRows16): 16 output rows side by side, per weight group; the
//   tile (cpu_qmm_rows16_vnni.inc) feeds each weight vector to the vpdpbusd of
//   several activation rows, which prefill needs. 18 bytes per 32 weights for
//   Q4_0 and MLX 4-bit g64, 20 for Q4_1. Any N (the last 16 rows padded).
// - 8-bit (kLayoutRows4): one stream per 4 output rows of
//   [4 rows × 256 weight bytes | 4 rows × groups' scales | 4 rows × biases]
//   per 256 inputs (a "chunk"), tiles in cpu_qmm_packed_vnni.inc. N a multiple of 4.
// Scales are float16 or bfloat16, biases left out when every bias is
// -8·scale / -128·scale (GGUF Q4_0 / Q8_0).
//
// Numerics: a weight is packed only when every scale and bias converts to the
// 16-bit type and back exactly (GGUF's are float16 to begin with;
// mlx-community's are the model's float16/bfloat16), else it keeps the plain
// layout. The integer dots are those of cpu_qmm_int8.cpp; the 8-bit tile also
// does its float steps in the same order, the 4-bit one sums in another order
// (equal to float rounding). Group 32/64/128.

#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PV_X86 1
#endif

#include "cpu_qmm_int8.h"

namespace pensieve {

namespace {

constexpr uint32_t kMagic = 0x4b515650;  // "PVQK"
constexpr int kHeaderBytes = 64;
constexpr size_t kPackReserveBytes = size_t{256} << 20;  // room kept free under MLX's memory limit
enum ScaleKind : uint32_t { kFloat16 = 1, kBfloat16 = 2 };

enum PackLayout : uint32_t { kLayoutRows4 = 0, kLayoutRows16 = 1 };

struct PackHeader {
  uint32_t magic, N, K, group, scale_kind, symmetric, chunk_bytes, scale_bytes, bits, tail_blocks, tail_bytes, layout;
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

// Room under MLX's memory limit for a copy of `total` bytes beside the plain
// arrays: where the limit leaves little (an engine capped for tests or a small
// machine), the room is for the KV cache and activations, so the weight stays unpacked.
bool room_for(size_t total) {
  const size_t limit = mx::get_memory_limit(), active = mx::get_active_memory();
  return limit >= active && limit - active >= total + kPackReserveBytes;
}

uint8_t* alloc_packed(size_t total) {
  auto* out = static_cast<uint8_t*>(std::aligned_alloc(64, (total + 63) / 64 * 64));
  if (out == nullptr) throw std::runtime_error("cpu pack: out of memory");
  std::memset(out, 0, kHeaderBytes);
  return out;
}

// 4-bit weights, 16 rows side by side (the layout is described in cpu_qmm_rows16_vnni.inc).
mx::array pack_rows16(const uint8_t* wb, const float* s, const float* b, int N, int K, int group, uint32_t kind,
                      bool symmetric) {
  const int groups = K / group, steps = group / 8, tiles = (N + 15) / 16;
  const size_t group_bytes = static_cast<size_t>(steps) * 64 + 32 * (symmetric ? 1 : 2);
  const size_t tile_bytes = group_bytes * groups;
  const size_t total = kHeaderBytes + tile_bytes * tiles;
  if (!room_for(total)) return mx::zeros({0}, mx::uint8);
  uint8_t* out = alloc_packed(total);
  PackHeader h{kMagic, static_cast<uint32_t>(N), static_cast<uint32_t>(K), static_cast<uint32_t>(group), kind,
               symmetric ? 1u : 0u, static_cast<uint32_t>(group_bytes), 0, 4, 0, 0, kLayoutRows16};
  std::memcpy(out, &h, sizeof h);
  const size_t row_bytes = static_cast<size_t>(K) / 2;
  // 8 inputs' nibbles, in order in a little-endian uint32 (MLX: input k at bits 4k),
  // to the tile's order: byte i holds inputs i (low) and i + 4 (high).
  auto interleave = [](uint32_t w) {
    auto spread = [](uint32_t x) {  // nibbles 0-3 to nibble positions 0, 2, 4, 6
      return (x & 0xFu) | ((x & 0xF0u) << 4) | ((x & 0xF00u) << 8) | ((x & 0xF000u) << 12);
    };
    return spread(w & 0xFFFFu) | (spread(w >> 16) << 4);
  };
  auto put = [&](uint8_t* dst, float v) {
    const uint16_t h16 = kind == kFloat16 ? to_half(v) : to_bf16(v);
    std::memcpy(dst, &h16, 2);
  };
  Pool::get().run(std::min(Pool::get().capacity(), tiles), [&](int p, int parts) {
    for (int t = tiles * p / parts; t < tiles * (p + 1) / parts; ++t) {
      uint8_t* tile = out + kHeaderBytes + static_cast<size_t>(t) * tile_bytes;
      std::memset(tile, 0, tile_bytes);
      for (int j = 0; j < 16 && t * 16 + j < N; ++j) {
        const size_t n = static_cast<size_t>(t) * 16 + j;
        const uint8_t* src = wb + n * row_bytes;
        uint8_t* dst = tile;
        for (int g = 0; g < groups; ++g, dst += group_bytes) {
          for (int v = 0; v < steps; ++v) {
            uint32_t w;
            std::memcpy(&w, src + (static_cast<size_t>(g) * steps + v) * 4, 4);
            const uint32_t o = interleave(w);
            std::memcpy(dst + v * 64 + j * 4, &o, 4);
          }
          put(dst + steps * 64 + j * 2, s[n * groups + g]);
          if (!symmetric) put(dst + steps * 64 + 32 + j * 2, b[n * groups + g]);
        }
      }
    }
  });
  return mx::array(out, mx::Shape{static_cast<int>(total)}, mx::uint8, [](void* p) { std::free(p); });
}

}  // namespace

/**
 * The packed copy of a 4- or 8-bit affine weight, or an empty array when it
 * cannot be packed exactly (shape, or scales/biases not exact in 16 bits).
 * Evaluates its inputs.
 */
mx::array cpu_pack(const mx::array& w_in, const mx::array& sc_in, const mx::array& bi_in, int group, int bits) {
  const mx::array empty = mx::zeros({0}, mx::uint8);
  if (!cpu_isa_supported(kIsaVnni)) return empty;
  if (w_in.dtype() != mx::uint32 || w_in.ndim() != 2 || sc_in.ndim() != 2) return empty;
  if ((group != 32 && group != 64 && group != 128) || (bits != 4 && bits != 8)) return empty;
  const int N = w_in.shape(0), K = w_in.shape(1) * 32 / bits;
  if ((bits == 8 && N % 4 != 0) || K % group != 0 || sc_in.shape(0) != N || sc_in.shape(1) * group != K ||
      bi_in.shape() != sc_in.shape())
    return empty;
  auto cpu = mx::default_stream(mx::Device::cpu);
  auto sc = mx::astype(sc_in, mx::float32, cpu), bi = mx::astype(bi_in, mx::float32, cpu);
  mx::eval({w_in, sc, bi});
  std::vector<float> sbuf, bbuf;
  std::vector<uint32_t> wbuf;
  const float* s = row_major(sc, sbuf);
  const float* b = row_major(bi, bbuf);
  const auto* wb = reinterpret_cast<const uint8_t*>(row_major(w_in, wbuf));
  const int groups = K / group;
  const size_t groups_total = static_cast<size_t>(N) * groups;
  uint32_t kind = 0;
  for (uint32_t k : {static_cast<uint32_t>(kFloat16), static_cast<uint32_t>(kBfloat16)}) {
    if (exact_in(s, groups_total, k) && exact_in(b, groups_total, k)) {
      kind = k;
      break;
    }
  }
  if (kind == 0) return empty;
  const float offset = bits == 4 ? -8.0f : -128.0f;  // GGUF Q4_0 / Q8_0: bias = offset·scale
  bool symmetric = true;
  for (size_t i = 0; i < groups_total && symmetric; ++i) symmetric = b[i] == offset * s[i];
  if (bits == 4) return pack_rows16(wb, s, b, N, K, group, kind, symmetric);
  const int block_bytes = 32 * bits / 8;
  const int blocks = K / 32, chunks = blocks / 8, tail = blocks % 8;
  const int per_chunk = 256 / group;  // a full chunk's groups per row
  const uint32_t scale_bytes = 4 * per_chunk * 2;
  const uint32_t chunk_bytes = 4 * 8 * block_bytes + scale_bytes * (symmetric ? 1 : 2);
  // The tail chunk (K not a multiple of 256): its blocks' bytes, then a 16-bit scale (and bias) per block.
  const uint32_t tail_bytes = tail == 0 ? 0 : (4 * tail * block_bytes + 4 * tail * 2 * (symmetric ? 1 : 2) + 63) / 64 * 64;
  const size_t tile_bytes = static_cast<size_t>(chunks) * chunk_bytes + tail_bytes;
  const int tiles = N / 4;
  const size_t total = kHeaderBytes + tile_bytes * tiles;
  if (!room_for(total)) return empty;
  uint8_t* out = alloc_packed(total);
  PackHeader h{kMagic, static_cast<uint32_t>(N), static_cast<uint32_t>(K), static_cast<uint32_t>(group), kind,
               symmetric ? 1u : 0u, chunk_bytes, scale_bytes, static_cast<uint32_t>(bits), static_cast<uint32_t>(tail),
               tail_bytes, kLayoutRows4};
  std::memcpy(out, &h, sizeof h);
  const size_t row_bytes = static_cast<size_t>(K) * bits / 8;
  auto put = [&](uint16_t* dst, float v) { *dst = kind == kFloat16 ? to_half(v) : to_bf16(v); };
  Pool::get().run(std::min(Pool::get().capacity(), tiles), [&](int p, int parts) {
    for (int tile = tiles * p / parts; tile < tiles * (p + 1) / parts; ++tile) {
      uint8_t* base = out + kHeaderBytes + static_cast<size_t>(tile) * tile_bytes;
      for (int c = 0; c < chunks; ++c) {
        uint8_t* dst = base + static_cast<size_t>(c) * chunk_bytes;
        auto* ds = reinterpret_cast<uint16_t*>(dst + 4 * 8 * block_bytes);
        for (int t = 0; t < 4; ++t) {
          const size_t n = static_cast<size_t>(tile) * 4 + t;
          std::memcpy(dst + t * 8 * block_bytes, wb + n * row_bytes + static_cast<size_t>(c) * 8 * block_bytes,
                      8 * block_bytes);
          for (int i = 0; i < per_chunk; ++i) {
            put(ds + t * per_chunk + i, s[n * groups + c * per_chunk + i]);
            if (!symmetric) put(ds + 4 * per_chunk + t * per_chunk + i, b[n * groups + c * per_chunk + i]);
          }
        }
      }
      if (tail == 0) continue;
      uint8_t* dst = base + static_cast<size_t>(chunks) * chunk_bytes;
      std::memset(dst, 0, tail_bytes);
      auto* ds = reinterpret_cast<uint16_t*>(dst + 4 * tail * block_bytes);
      for (int t = 0; t < 4; ++t) {
        const size_t n = static_cast<size_t>(tile) * 4 + t;
        std::memcpy(dst + t * tail * block_bytes, wb + n * row_bytes + static_cast<size_t>(chunks) * 8 * block_bytes,
                    static_cast<size_t>(tail) * block_bytes);
        for (int j = 0; j < tail; ++j) {
          const int g = (chunks * 8 + j) * 32 / group;
          put(ds + t * tail + j, s[n * groups + g]);
          if (!symmetric) put(ds + 4 * tail + t * tail + j, b[n * groups + g]);
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
namespace rows16_vnni {
#include "cpu_qmm_rows16_vnni.inc"
}  // namespace rows16_vnni
#pragma GCC pop_options
#endif

// What a packed product does around the product itself, each step the very code of the separate op it replaces
// (so the result is bit-equal): RMSNorm of x first (cpu_norm.cpp's rows), SwiGLU of the product's two halves
// after it (gate | up), then + a residual. Each fused step is one graph node and one CPU-stream task fewer.
struct PackedFusion {
  bool norm = false;
  float eps = 0.f;
  bool swiglu = false;
  bool residual = false;

  bool operator==(const PackedFusion& o) const {
    return norm == o.norm && eps == o.eps && swiglu == o.swiglu && residual == o.residual;
  }
};

// y [M, N] = x [M, K] @ dequantize(packed)^T.
static void packed_product(const float* xp, const mx::array& packed, float* y, int M) {
  const PackHeader* h = header_of(packed);
  const int K = static_cast<int>(h->K), bits = static_cast<int>(h->bits);
  QShape s{M, static_cast<int>(h->N), K, static_cast<int>(h->group), bits};
  ActQ a;
#ifdef PV_X86
  if (h->layout == kLayoutRows16) {
    rows16_vnni::Rows16 pk{packed.data<uint8_t>() + kHeaderBytes,
                           s.N,
                           K,
                           s.group,
                           K / s.group,
                           static_cast<size_t>(h->chunk_bytes) * (K / s.group),
                           h->chunk_bytes,
                           h->scale_kind == kBfloat16,
                           h->symmetric != 0};
    rows16_vnni::product(xp, pk, y, s);
    return;
  }
#endif
  quantize_activations(xp, a, s, kIsaVnni);
#ifdef PV_X86
  packed_vnni::Packed pk{packed.data<uint8_t>() + kHeaderBytes,
                         static_cast<int>(h->chunk_bytes),
                         static_cast<int>(h->scale_bytes),
                         static_cast<int>(h->tail_blocks),
                         static_cast<size_t>(K / 256) * h->chunk_bytes + h->tail_bytes,
                         h->scale_kind == kBfloat16,
                         h->symmetric != 0};
  (bits == 4 ? packed_vnni::product<4> : packed_vnni::product<8>)(a, pk, y, s);
#endif
}

// Inputs: x, packed, then the norm's weight (fusion.norm), then the residual (fusion.residual).
class CpuQuantizedMatmulPacked : public mx::UnaryPrimitive {
 public:
  CpuQuantizedMatmulPacked(mx::Stream stream, PackedFusion fusion) : UnaryPrimitive(stream), fusion_(fusion) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    encoder.dispatch([inputs, out, f = fusion_]() mutable {
      const auto& x = inputs[0];
      const auto& packed = inputs[1];
      const PackHeader* h = header_of(packed);
      const int K = static_cast<int>(h->K), N = static_cast<int>(h->N);
      const int M = static_cast<int>(x.size() / K);
      std::vector<float> xs, ws, rs;
      // Scratch left uninitialized (every element is written before it is read): zeroing MBs cost prefill ~3%.
      std::unique_ptr<float[]> normed, halves;
      const float* xp = row_major(x, xs);
      if (f.norm) {
        normed.reset(new float[static_cast<size_t>(M) * K]);
        rms_norm_rows(xp, K, row_major(inputs[2], ws), normed.get(), M, K, f.eps);
        xp = normed.get();
      }
      float* y = out.data<float>();
      if (f.swiglu) halves.reset(new float[static_cast<size_t>(M) * N]);
      packed_product(xp, packed, f.swiglu ? halves.get() : y, M);
      const int width = f.swiglu ? N / 2 : N;
      if (f.swiglu) swiglu_rows(halves.get(), N, halves.get() + width, N, y, M, width);
      if (f.residual) {
        const float* r = row_major(inputs.back(), rs);
        const size_t n = static_cast<size_t>(M) * width;
        for (size_t i = 0; i < n; ++i) y[i] = r[i] + y[i];
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("PensieveCpuQuantizedMatmulPacked runs on the CPU only");
  }

  const char* name() const override { return "PensieveCpuQuantizedMatmulPacked"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const CpuQuantizedMatmulPacked*>(&other);
    return o != nullptr && o->fusion_ == fusion_;
  }

 private:
  PackedFusion fusion_;
};

// The plain arrays of a 16-row packed weight, rebuilt from it (lazily; exact,
// since packing is): 0 the uint32 weight [N, K/8], 1 the float32 scales, 2 the biases.
class CpuUnpackRows16 : public mx::UnaryPrimitive {
 public:
  CpuUnpackRows16(mx::Stream stream, int which) : UnaryPrimitive(stream), which_(which) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(inputs[0]);
    encoder.set_output_array(out);
    encoder.dispatch([packed = inputs[0], out, which = which_]() mutable {
      const PackHeader* h = header_of(packed);
      const int N = static_cast<int>(h->N), K = static_cast<int>(h->K), group = static_cast<int>(h->group);
      const int groups = K / group, steps = group / 8;
      const size_t group_bytes = h->chunk_bytes, tile_bytes = group_bytes * groups;
      const uint8_t* base = packed.data<uint8_t>() + kHeaderBytes;
      for (int n = 0; n < N; ++n) {
        const uint8_t* tp = base + static_cast<size_t>(n / 16) * tile_bytes;
        const int j = n % 16;
        for (int g = 0; g < groups; ++g) {
          const uint8_t* gp = tp + static_cast<size_t>(g) * group_bytes;
          if (which == 0) {
            auto* row = reinterpret_cast<uint8_t*>(out.data<uint32_t>()) + static_cast<size_t>(n) * K / 2;
            for (int v = 0; v < steps; ++v) {
              for (int i = 0; i < 4; ++i) {
                const uint8_t b = gp[v * 64 + j * 4 + i];
                const int k = g * group + v * 8 + i;  // low nibble: input k, high: k + 4
                for (const auto& [kk, q] : {std::pair{k, b & 0xF}, std::pair{k + 4, b >> 4}}) {
                  uint8_t& dst = row[kk / 2];
                  dst = (kk & 1) ? static_cast<uint8_t>((dst & 0x0F) | (q << 4)) : static_cast<uint8_t>((dst & 0xF0) | q);
                }
              }
            }
            continue;
          }
          uint16_t v16;
          const bool bias_stored = h->symmetric == 0;
          std::memcpy(&v16, gp + steps * 64 + (which == 2 && bias_stored ? 32 : 0) + j * 2, 2);
          float v = h->scale_kind == kBfloat16 ? from_bf16(v16) : from_half(v16);
          if (which == 2 && !bias_stored) v *= -8.0f;
          out.data<float>()[static_cast<size_t>(n) * groups + g] = v;
        }
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("PensieveCpuUnpackRows16 runs on the CPU only");
  }

  const char* name() const override { return "PensieveCpuUnpackRows16"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const CpuUnpackRows16*>(&other);
    return o != nullptr && o->which_ == which_;
  }

 private:
  int which_;
};

/**
 * Replaces a 4-bit weight's plain arrays (evaluated) by lazy rebuilds from its
 * 16-row packed copy, so their memory goes; a path that still reads them (the
 * exact float kernel, another ISA) gets them back, equal, on first use.
 * Returns false, changing nothing, for other packed layouts.
 */
bool cpu_drop_plain(mx::array& w, mx::array& scales, mx::array& biases, const mx::array& packed) {
  const PackHeader* h = header_of(packed);
  if (h == nullptr || h->layout != kLayoutRows16) return false;
  const int N = static_cast<int>(h->N), K = static_cast<int>(h->K), groups = K / static_cast<int>(h->group);
  if (w.shape() != mx::Shape{N, K / 8} || scales.shape() != mx::Shape{N, groups} || biases.shape() != scales.shape() ||
      w.dtype() != mx::uint32 || scales.dtype() != mx::float32 || biases.dtype() != mx::float32)
    return false;
  auto cpu = mx::default_stream(mx::Device::cpu);
  auto rebuilt = [&](int which, mx::Shape shape, mx::Dtype dtype) {
    return mx::array(std::move(shape), dtype, std::make_shared<CpuUnpackRows16>(cpu, which), {packed});
  };
  w = rebuilt(0, {N, K / 8}, mx::uint32);
  scales = rebuilt(1, {N, groups}, mx::float32);
  biases = rebuilt(2, {N, groups}, mx::float32);
  return true;
}

/**
 * x [..., K] @ dequantize(w)^T from cpu_pack's packed weight (VNNI path only); with `norm_weight`, x goes through
 * RMSNorm first; with `swiglu`, the result is silu(gate) * up of its halves [..., N/2]; with `residual` (the
 * result's shape), that is added. Each as the separate float32 op computes it.
 */
mx::array cpu_quantized_matmul_packed_fused(const mx::array& x_in, const mx::array& packed,
                                            const std::optional<mx::array>& norm_weight, float eps,
                                            const std::optional<mx::array>& residual, bool swiglu) {
  if (!cpu_isa_supported(kIsaVnni)) throw std::invalid_argument("cpu packed qmm: this CPU lacks AVX-512 VNNI");
  mx::eval({packed});
  const PackHeader* h = header_of(packed);
  if (h == nullptr) throw std::invalid_argument("cpu packed qmm: not a packed weight (see cpu_pack)");
  const int K = static_cast<int>(h->K), N = static_cast<int>(h->N);
  if (x_in.ndim() < 1 || x_in.shape(-1) != K) {
    throw std::invalid_argument("cpu packed qmm: x has " + std::to_string(x_in.ndim() ? x_in.shape(-1) : 0) +
                                " features, the weight expects " + std::to_string(K));
  }
  if (swiglu && N % 2 != 0) throw std::invalid_argument("cpu packed qmm: swiglu needs an even output width");
  auto cpu = mx::default_stream(mx::Device::cpu);
  mx::Shape out_shape(x_in.shape().begin(), x_in.shape().end() - 1);
  out_shape.push_back(swiglu ? N / 2 : N);
  PackedFusion fusion;
  fusion.swiglu = swiglu;
  auto x = x_in.dtype() == mx::float32 ? x_in : mx::astype(x_in, mx::float32, cpu);
  std::vector<mx::array> inputs{x, packed};
  if (norm_weight) {
    if (x_in.dtype() != mx::float32 || norm_weight->dtype() != mx::float32 || norm_weight->ndim() != 1 ||
        norm_weight->shape(0) != K)
      throw std::invalid_argument("cpu packed qmm: the norm takes float32 x and a float32 weight [K]");
    fusion.norm = true;
    fusion.eps = eps;
    inputs.push_back(*norm_weight);
  }
  if (residual) {
    if (residual->shape() != out_shape || residual->dtype() != mx::float32)
      throw std::invalid_argument("cpu packed qmm: the residual must be float32 in the result's shape");
    fusion.residual = true;
    inputs.push_back(*residual);
  }
  return mx::array(out_shape, mx::float32, std::make_shared<CpuQuantizedMatmulPacked>(cpu, fusion), inputs);
}

mx::array cpu_quantized_matmul_packed(const mx::array& x, const mx::array& packed) {
  return cpu_quantized_matmul_packed_fused(x, packed, std::nullopt, 0.f, std::nullopt, false);
}

}  // namespace pensieve
