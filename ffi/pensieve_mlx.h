/*
 * Pensieve's flat C ABI over the MLX C++ API, built for bun:ffi.
 *
 * Rules (bun:ffi has no structs by value):
 *   - Arrays are opaque handles (pv_array). Every handle returned to the caller
 *     is owned by the caller and must be released with pv_free / pv_free_many.
 *   - Functions returning a handle return NULL on failure; functions returning
 *     int return 0 on success and -1 on failure. pv_last_error() then holds the
 *     message (thread-local). No C++ exception ever crosses this boundary.
 *   - Shapes, axes and handle lists are passed as pointer + count.
 *   - Optional arrays are passed as NULL; optional scalars as value + has_value.
 *   - Strings are NUL-terminated UTF-8.
 *   - Call everything from one thread (MLX streams are thread-local).
 */
#ifndef PENSIEVE_MLX_H
#define PENSIEVE_MLX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define PV_API __declspec(dllexport)
#else
#define PV_API __attribute__((visibility("default")))
#endif

typedef void* pv_array;
typedef void* pv_map; /* result of a load: named arrays plus metadata */

/* dtype codes: identical to mlx::core::Dtype::Val order */
enum pv_dtype {
  PV_BOOL = 0, PV_UINT8, PV_UINT16, PV_UINT32, PV_UINT64,
  PV_INT8, PV_INT16, PV_INT32, PV_INT64,
  PV_FLOAT16, PV_FLOAT32, PV_FLOAT64, PV_BFLOAT16, PV_COMPLEX64
};

enum pv_unary {
  PV_NEG = 0, PV_EXP, PV_LOG, PV_SQRT, PV_RSQRT, PV_ABS, PV_SIGMOID, PV_SILU,
  PV_TANH, PV_SIN, PV_COS, PV_SQUARE, PV_RECIPROCAL, PV_LOGICAL_NOT, PV_ISNAN,
  PV_STOP_GRADIENT, PV_COPY, PV_FLOOR, PV_CEIL, PV_LOG1P, PV_ERF, PV_GELU_APPROX,
  PV_CONTIGUOUS
};

enum pv_binary {
  PV_ADD = 0, PV_SUBTRACT, PV_MULTIPLY, PV_DIVIDE, PV_MAXIMUM, PV_MINIMUM, PV_POWER,
  PV_EQUAL, PV_NOT_EQUAL, PV_LESS, PV_LESS_EQUAL, PV_GREATER, PV_GREATER_EQUAL,
  PV_LOGICAL_AND, PV_LOGICAL_OR, PV_MATMUL, PV_REMAINDER, PV_FLOOR_DIVIDE
};

enum pv_reduce { PV_SUM = 0, PV_MEAN, PV_MAX, PV_MIN, PV_PROD, PV_ANY, PV_ALL };

/* ---- errors and library ---- */
PV_API const char* pv_last_error(void);
PV_API const char* pv_mlx_version(void);
PV_API int pv_abi_version(void);
PV_API uint64_t pv_std_hash(const char* data, uint64_t bytes);

/* ---- lifetime ---- */
PV_API void pv_free(pv_array a);
PV_API void pv_free_many(pv_array* arrays, int n);
PV_API pv_array pv_retain(pv_array a); /* a second handle to the same array */

/* ---- creation and readback ---- */
PV_API pv_array pv_from_data(const void* data, const int32_t* shape, int ndim, int dtype);
PV_API pv_array pv_full(const int32_t* shape, int ndim, double value, int dtype);
PV_API pv_array pv_scalar(double value, int dtype);
PV_API pv_array pv_arange(double start, double stop, double step, int dtype);
PV_API int pv_ndim(pv_array a);
PV_API int pv_shape(pv_array a, int32_t* out, int max);
PV_API int pv_dtype(pv_array a);
PV_API int64_t pv_size(pv_array a);
PV_API int64_t pv_nbytes(pv_array a);
/* Evaluates `a` and copies its elements (row-major) into `out` (nbytes must match). */
PV_API int pv_read(pv_array a, void* out, int64_t nbytes);

/* ---- evaluation ---- */
PV_API int pv_eval(pv_array* arrays, int n);
PV_API int pv_async_eval(pv_array* arrays, int n);
PV_API int pv_synchronize(void);
/* The unevaluated graph behind `arrays`: how many primitives (one per node, siblings counted once) it would run,
   and "<name> <count>\n" per primitive name into out (truncated to cap bytes, NUL-terminated). -1 on error. */
PV_API int pv_graph_summary(pv_array* arrays, int n, char* out, int64_t cap);

/* ---- elementwise ---- */
PV_API pv_array pv_unary(int op, pv_array a);
PV_API pv_array pv_binary(int op, pv_array a, pv_array b);
PV_API pv_array pv_where(pv_array cond, pv_array a, pv_array b);
PV_API pv_array pv_astype(pv_array a, int dtype);
PV_API pv_array pv_clip(pv_array a, pv_array lo /*nullable*/, pv_array hi /*nullable*/);

/* ---- shape ---- */
PV_API pv_array pv_reshape(pv_array a, const int32_t* shape, int ndim);
PV_API pv_array pv_transpose(pv_array a, const int32_t* axes, int naxes);
PV_API pv_array pv_expand_dims(pv_array a, int axis);
PV_API pv_array pv_squeeze(pv_array a, const int32_t* axes, int naxes);
PV_API pv_array pv_broadcast_to(pv_array a, const int32_t* shape, int ndim);
PV_API pv_array pv_concatenate(pv_array* arrays, int n, int axis);
PV_API pv_array pv_stack(pv_array* arrays, int n, int axis);
/* Splits at the given indices along axis; writes n_indices+1 handles into out. */
PV_API int pv_split(pv_array a, const int32_t* indices, int n_indices, int axis, pv_array* out);
PV_API pv_array pv_pad(pv_array a, const int32_t* axes, const int32_t* low, const int32_t* high, int n, double value);
PV_API pv_array pv_slice(pv_array a, const int32_t* start, const int32_t* stop, const int32_t* strides, int ndim);
PV_API pv_array pv_slice_dynamic(pv_array a, pv_array start, const int32_t* axes, int naxes, const int32_t* size, int ndim);
PV_API pv_array pv_slice_update(pv_array src, pv_array update, const int32_t* start, const int32_t* stop, const int32_t* strides, int ndim);
PV_API pv_array pv_slice_update_dynamic(pv_array src, pv_array update, pv_array start, const int32_t* axes, int naxes);

/* ---- indexing ---- */
PV_API pv_array pv_take(pv_array a, pv_array indices, int axis);
PV_API pv_array pv_take_along_axis(pv_array a, pv_array indices, int axis);
PV_API pv_array pv_put_along_axis(pv_array a, pv_array indices, pv_array values, int axis);

/* ---- reductions and sorting ---- */
PV_API pv_array pv_reduce(int op, pv_array a, const int32_t* axes, int naxes, int keepdims);
PV_API pv_array pv_argmax(pv_array a, int axis, int keepdims);
PV_API pv_array pv_argmin(pv_array a, int axis, int keepdims);
PV_API pv_array pv_softmax(pv_array a, const int32_t* axes, int naxes, int precise);
PV_API pv_array pv_logsumexp(pv_array a, const int32_t* axes, int naxes, int keepdims);
PV_API pv_array pv_topk(pv_array a, int k, int axis);
PV_API pv_array pv_argpartition(pv_array a, int kth, int axis);
PV_API pv_array pv_sort(pv_array a, int axis);
PV_API pv_array pv_argsort(pv_array a, int axis);
PV_API pv_array pv_cumsum(pv_array a, int axis, int reverse, int inclusive);

/* ---- linear algebra and quantization ---- */
PV_API pv_array pv_matmul(pv_array a, pv_array b);
PV_API pv_array pv_quantized_matmul(pv_array x, pv_array w, pv_array scales, pv_array biases /*nullable*/,
                             int transpose, int group_size, int bits);
/* The same product through Pensieve's CPU kernel (ffi/cpu_qmm.cpp): SIMD and
   multi-threaded. float32 x, scales and biases; bits 4 or 8; group a multiple of 8. */
PV_API pv_array pv_quantized_matmul_cpu(pv_array x, pv_array w, pv_array scales, pv_array biases, int group_size, int bits);
/* The same product with int8 activations and integer dot products
   (ffi/cpu_qmm_int8.cpp): group 32, 64 or 128. Not bit-exact: see the file. */
PV_API pv_array pv_quantized_matmul_cpu_int8(pv_array x, pv_array w, pv_array scales, pv_array biases, int group_size, int bits);
/* A 4- or 8-bit affine weight repacked for the VNNI int8 kernel (ffi/cpu_qmm_packed.cpp):
   a uint8 array, empty when the weight cannot be packed exactly. */
PV_API pv_array pv_cpu_pack(pv_array w, pv_array scales, pv_array biases, int group_size, int bits);
/* x @ dequantize(w)^T from a packed weight: the int8 kernel's sums (AVX-512 VNNI only). */
PV_API pv_array pv_quantized_matmul_cpu_packed(pv_array x, pv_array packed);
/* The packed product with its neighbours folded in, each bit-equal to the separate float32 op: RMSNorm of x by
   norm_weight (nullable) first, silu(gate) * up of the result's halves when swiglu, + residual (nullable, the
   result's shape) last. */
PV_API pv_array pv_cpu_packed_product(pv_array x, pv_array packed, pv_array norm_weight /*nullable*/, float eps,
                                      pv_array residual /*nullable*/, int swiglu);
/* A 4-bit weight's plain arrays replaced, in place, by lazy rebuilds from its packed copy: 1, or 0 when the layout has none; -1 on error. */
PV_API int pv_cpu_drop_plain(pv_array w, pv_array scales, pv_array biases, pv_array packed);
/* Instruction set of the int8 kernel: 0 auto (best available), 1 scalar, 2 AVX2,
   3 AVX-512 VNNI. pv_cpu_set_isa fails (status) when the CPU lacks it. */
PV_API int pv_cpu_set_isa(int isa);
PV_API int pv_cpu_isa(void);
PV_API int pv_cpu_isa_supported(int isa);
/* Threads of the CPU kernels' pool (0: all; also PENSIEVE_THREADS at first use). */
PV_API void pv_cpu_set_threads(int threads);
PV_API int pv_cpu_threads(void);
/* Writes 3 handles (weight, scales, biases) into out. */
PV_API int pv_quantize(pv_array w, int group_size, int bits, pv_array* out);
PV_API pv_array pv_dequantize(pv_array w, pv_array scales, pv_array biases /*nullable*/, int group_size, int bits, int dtype /* -1: default */);

/* ---- mixture of experts (issue 15): per-row expert products ---- */
/* x [..., M, K] times b [E, K, N] (or quantized w [E, N, K*bits/32] with
   transpose): each leading index of x uses the expert rhs_indices names. */
PV_API pv_array pv_gather_mm(pv_array a, pv_array b, pv_array rhs_indices, int sorted_indices);
PV_API pv_array pv_gather_qmm(pv_array x, pv_array w, pv_array scales, pv_array biases /*nullable*/,
                              pv_array rhs_indices, int transpose, int group_size, int bits, int sorted_indices);

/* ---- fast transformer ops ---- */
PV_API pv_array pv_rms_norm(pv_array x, pv_array weight /*nullable*/, float eps);
PV_API pv_array pv_layer_norm(pv_array x, pv_array weight /*nullable*/, pv_array bias /*nullable*/, float eps);
/* RoPE. Either base (has_base=1) or freqs (non-NULL). offset_arr overrides offset when non-NULL. */
PV_API pv_array pv_rope(pv_array x, int dims, int traditional, float base, int has_base, float scale,
                 int offset, pv_array offset_arr, pv_array freqs);
/* mask_mode: 0 none, 1 causal, 2 array (mask non-NULL: bool keep-mask or additive float). */
/* CPU, float32: stores k, v [B, Hkv, L, D] into the cache buffers kc, vc [B, Hkv, capacity, D] in place at columns
   offset..offset+L-1 (keys = offset + L), then sdpa of q over their first `keys` columns (mask modes as pv_sdpa,
   a boolean mask only). Writes 3 handles into out: the attention, then kc and vc as written (sharing their
   buffers: keep these as the cache). 0 on success, -1 on error. */
PV_API int pv_cpu_cache_sdpa(pv_array q, pv_array k, pv_array v, pv_array kc, pv_array vc, int offset, int keys,
                             float scale, int mask_mode, pv_array mask /*nullable*/, pv_array* out);
PV_API pv_array pv_sdpa(pv_array q, pv_array k, pv_array v, float scale, int mask_mode, pv_array mask);

/* silu(gate) * up. fused != 0: one compiled kernel (mx::compile, shapeless);
   the GPU wants it; on the CPU compile would run a C++ compiler at run time. */
PV_API pv_array pv_swiglu(pv_array gate, pv_array up, int fused);

/* ---- random ---- */
PV_API pv_array pv_random_key(uint64_t seed);
/* Writes num keys into out[0..num). */
PV_API int pv_random_split(pv_array key, int num, pv_array* out);
PV_API pv_array pv_random_categorical(pv_array logits, int axis, pv_array key /*nullable*/);
PV_API pv_array pv_random_uniform(const int32_t* shape, int ndim, int dtype, pv_array key /*nullable*/);
PV_API pv_array pv_random_normal(const int32_t* shape, int ndim, int dtype, float loc, float scale, pv_array key /*nullable*/);

/* ---- I/O ---- */
PV_API pv_map pv_load_safetensors(const char* path);
PV_API pv_map pv_load_gguf(const char* path);
PV_API void pv_map_free(pv_map m);
PV_API int pv_map_count(pv_map m);
PV_API const char* pv_map_name(pv_map m, int i);
PV_API pv_array pv_map_array(pv_map m, int i);
PV_API int pv_map_meta_count(pv_map m);
PV_API const char* pv_map_meta_key(pv_map m, int i);
/* 0 none, 1 array, 2 string, 3 list of strings */
PV_API int pv_map_meta_kind(pv_map m, int i);
PV_API const char* pv_map_meta_string(pv_map m, int i);
PV_API int pv_map_meta_strings_count(pv_map m, int i);
PV_API const char* pv_map_meta_strings_get(pv_map m, int i, int j);
PV_API pv_array pv_map_meta_array(pv_map m, int i);
/* names[i] is a NUL-terminated string; meta_keys/meta_values may be NULL when n_meta is 0. */
PV_API int pv_save_safetensors(const char* path, const char** names, pv_array* arrays, int n,
                        const char** meta_keys, const char** meta_values, int n_meta);

/* ---- device and memory ---- */
/* kind: 0 cpu, 1 gpu */
PV_API int pv_gpu_available(void);
PV_API int pv_set_device(int kind);
PV_API int pv_get_device(void);
PV_API int64_t pv_active_memory(void);
PV_API int64_t pv_peak_memory(void);
PV_API int64_t pv_cache_memory(void);
PV_API int pv_reset_peak_memory(void);
PV_API int64_t pv_set_memory_limit(int64_t bytes);
PV_API int64_t pv_set_cache_limit(int64_t bytes);
PV_API int pv_clear_cache(void);
/* Live handles created through this ABI and not yet freed (a leak detector). */
PV_API int64_t pv_live_handles(void);
/* A CUDA card's memory still free for allocations (the driver's free plus the pool's unused reserve); -1 without CUDA. */
PV_API int64_t pv_device_free_memory(void);

/* ---- custom GPU kernels (ffi/gpu_kernels.cpp) ----
   MLX's fast::cuda_kernel (CUDA source compiled at run time by NVRTC); the same
   calls admit fast::metal_kernel on Metal builds. A kernel's results are
   ordinary lazy arrays in the graph. */
typedef void* pv_kernel;
/* The kernel language this MLX build runs: 0 none (CPU build), 1 CUDA, 2 Metal. */
PV_API int pv_kernel_language(void);
/* A kernel from its body (MLX writes the signature: inputs as `const T* name`,
   outputs as `T* name`). input_names/output_names: comma-separated identifiers.
   NULL on failure, and always when pv_kernel_language() is 0. shared_memory: CUDA only. */
PV_API pv_kernel pv_kernel_new(const char* name, const char* input_names, const char* output_names,
                               const char* source, const char* header, int ensure_row_contiguous, int shared_memory);
PV_API void pv_kernel_free(pv_kernel k);
/* Adds one launch to the graph and writes n_outputs handles into out.
   out_shapes: all outputs' dims back to back, out_ndims[i] of them for output i.
   grid: total threads per axis (MLX's convention), threadgroup: threads per block.
   Template arguments: template_names comma-separated; kinds 0 int, 1 bool,
   2 dtype (value = pv_dtype code). has_init_value: fill the outputs first. */
/* A launch configuration (the arguments of pv_kernel_call but the inputs), parsed
   once: pv_kernel_plan_call then adds a launch with only the inputs. A plan
   refers to its kernel: free plans before the kernel. NULL on failure. */
typedef void* pv_kernel_plan;
PV_API pv_kernel_plan pv_kernel_plan_new(pv_kernel k, const int32_t* out_shapes, const int32_t* out_ndims,
                                         const int32_t* out_dtypes, int n_outputs, const int32_t* grid,
                                         const int32_t* threadgroup, const char* template_names,
                                         const int32_t* template_kinds, const int32_t* template_values,
                                         int n_template, float init_value, int has_init_value);
PV_API void pv_kernel_plan_free(pv_kernel_plan p);
/* CUDA: the plan's launches run this CUBIN (kernel `name`, extern "C", compiled by the
   caller for these input dtypes and ranks; see src/mlx/kernel-cache.ts) through MLX's
   fast::precompiled_cuda_kernel instead of MLX's NVRTC. 0 on success, -1 on error. */
PV_API int pv_kernel_plan_set_precompiled(pv_kernel_plan p, const char* name, const uint8_t* cubin,
                                          int64_t cubin_bytes, const int32_t* input_dtypes,
                                          const int32_t* input_ndims, int n_inputs);
PV_API int pv_kernel_plan_call(pv_kernel_plan p, pv_array* inputs, int n_inputs, int verbose, pv_array* out);
PV_API int pv_kernel_call(pv_kernel k, pv_array* inputs, int n_inputs, const int32_t* out_shapes,
                          const int32_t* out_ndims, const int32_t* out_dtypes, int n_outputs, const int32_t* grid,
                          const int32_t* threadgroup, const char* template_names, const int32_t* template_kinds,
                          const int32_t* template_values, int n_template, float init_value, int has_init_value,
                          int verbose, pv_array* out);

#ifdef __cplusplus
}
#endif
#endif
