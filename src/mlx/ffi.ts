// The raw bun:ffi binding to ffi/pensieve_mlx.h. Only src/mlx/ touches this;
// everything else uses the typed wrappers in array.ts and ops.ts.
import { dlopen, FFIType } from "bun:ffi";
import { existsSync } from "node:fs";
import { COMPILED } from "../paths";
import { installedBackend, runtimeLayout } from "./backend";
import { applyMlxEnvDefaults } from "./mlx-env";
import { extractRuntime } from "./runtime";

const P = FFIType.ptr;
const i32 = FFIType.i32;
const i64_fast = FFIType.i64_fast;
const f32 = FFIType.f32;
const f64 = FFIType.f64;
const u64 = FFIType.u64;
const cstring = FFIType.cstring;
const V = FFIType.void;

const symbols = {
  pv_last_error: { args: [], returns: cstring },
  pv_mlx_version: { args: [], returns: cstring },
  pv_abi_version: { args: [], returns: i32 },
  pv_free: { args: [P], returns: V },
  pv_free_many: { args: [P, i32], returns: V },
  pv_retain: { args: [P], returns: P },
  pv_from_data: { args: [P, P, i32, i32], returns: P },
  pv_full: { args: [P, i32, f64, i32], returns: P },
  pv_scalar: { args: [f64, i32], returns: P },
  pv_arange: { args: [f64, f64, f64, i32], returns: P },
  pv_ndim: { args: [P], returns: i32 },
  pv_shape: { args: [P, P, i32], returns: i32 },
  pv_dtype: { args: [P], returns: i32 },
  pv_size: { args: [P], returns: i64_fast },
  pv_nbytes: { args: [P], returns: i64_fast },
  pv_read: { args: [P, P, i64_fast], returns: i32 },
  pv_eval: { args: [P, i32], returns: i32 },
  pv_async_eval: { args: [P, i32], returns: i32 },
  pv_synchronize: { args: [], returns: i32 },
  pv_graph_summary: { args: [P, i32, P, i64_fast], returns: i32 },
  pv_unary: { args: [i32, P], returns: P },
  pv_binary: { args: [i32, P, P], returns: P },
  pv_where: { args: [P, P, P], returns: P },
  pv_astype: { args: [P, i32], returns: P },
  pv_clip: { args: [P, P, P], returns: P },
  pv_reshape: { args: [P, P, i32], returns: P },
  pv_transpose: { args: [P, P, i32], returns: P },
  pv_expand_dims: { args: [P, i32], returns: P },
  pv_squeeze: { args: [P, P, i32], returns: P },
  pv_broadcast_to: { args: [P, P, i32], returns: P },
  pv_concatenate: { args: [P, i32, i32], returns: P },
  pv_stack: { args: [P, i32, i32], returns: P },
  pv_split: { args: [P, P, i32, i32, P], returns: i32 },
  pv_pad: { args: [P, P, P, P, i32, f64], returns: P },
  pv_slice: { args: [P, P, P, P, i32], returns: P },
  pv_slice_dynamic: { args: [P, P, P, i32, P, i32], returns: P },
  pv_slice_update: { args: [P, P, P, P, P, i32], returns: P },
  pv_slice_update_dynamic: { args: [P, P, P, P, i32], returns: P },
  pv_take: { args: [P, P, i32], returns: P },
  pv_take_along_axis: { args: [P, P, i32], returns: P },
  pv_put_along_axis: { args: [P, P, P, i32], returns: P },
  pv_reduce: { args: [i32, P, P, i32, i32], returns: P },
  pv_argmax: { args: [P, i32, i32], returns: P },
  pv_argmin: { args: [P, i32, i32], returns: P },
  pv_softmax: { args: [P, P, i32, i32], returns: P },
  pv_logsumexp: { args: [P, P, i32, i32], returns: P },
  pv_topk: { args: [P, i32, i32], returns: P },
  pv_argpartition: { args: [P, i32, i32], returns: P },
  pv_sort: { args: [P, i32], returns: P },
  pv_argsort: { args: [P, i32], returns: P },
  pv_cumsum: { args: [P, i32, i32, i32], returns: P },
  pv_matmul: { args: [P, P], returns: P },
  pv_quantized_matmul: { args: [P, P, P, P, i32, i32, i32], returns: P },
  pv_quantized_matmul_cpu: { args: [P, P, P, P, i32, i32], returns: P },
  pv_quantized_matmul_cpu_int8: { args: [P, P, P, P, i32, i32], returns: P },
  pv_cpu_pack: { args: [P, P, P, i32, i32], returns: P },
  pv_quantized_matmul_cpu_packed: { args: [P, P], returns: P },
  pv_cpu_packed_product: { args: [P, P, P, f32, P, i32], returns: P },
  pv_cpu_drop_plain: { args: [P, P, P, P], returns: i32 },
  pv_cpu_set_isa: { args: [i32], returns: i32 },
  pv_cpu_isa: { args: [], returns: i32 },
  pv_cpu_isa_supported: { args: [i32], returns: i32 },
  pv_cpu_set_threads: { args: [i32], returns: V },
  pv_cpu_threads: { args: [], returns: i32 },
  pv_quantize: { args: [P, i32, i32, P], returns: i32 },
  pv_dequantize: { args: [P, P, P, i32, i32, i32], returns: P },
  // mixture of experts (issue 15)
  pv_gather_mm: { args: [P, P, P, i32], returns: P },
  pv_gather_qmm: { args: [P, P, P, P, P, i32, i32, i32, i32], returns: P },
  pv_rms_norm: { args: [P, P, f32], returns: P },
  pv_layer_norm: { args: [P, P, P, f32], returns: P },
  pv_rope: { args: [P, i32, i32, f32, i32, f32, i32, P, P], returns: P },
  pv_sdpa: { args: [P, P, P, f32, i32, P], returns: P },
  pv_cpu_cache_sdpa: { args: [P, P, P, P, P, i32, i32, f32, i32, P, P], returns: i32 },
  pv_swiglu: { args: [P, P, i32], returns: P },
  pv_random_key: { args: [u64], returns: P },
  pv_random_split: { args: [P, i32, P], returns: i32 },
  pv_random_categorical: { args: [P, i32, P], returns: P },
  pv_random_uniform: { args: [P, i32, i32, P], returns: P },
  pv_random_normal: { args: [P, i32, i32, f32, f32, P], returns: P },
  pv_load_safetensors: { args: [P], returns: P },
  pv_load_gguf: { args: [P], returns: P },
  pv_map_free: { args: [P], returns: V },
  pv_map_count: { args: [P], returns: i32 },
  pv_map_name: { args: [P, i32], returns: cstring },
  pv_map_array: { args: [P, i32], returns: P },
  pv_map_meta_count: { args: [P], returns: i32 },
  pv_map_meta_key: { args: [P, i32], returns: cstring },
  pv_map_meta_kind: { args: [P, i32], returns: i32 },
  pv_map_meta_string: { args: [P, i32], returns: cstring },
  pv_map_meta_strings_count: { args: [P, i32], returns: i32 },
  pv_map_meta_strings_get: { args: [P, i32, i32], returns: cstring },
  pv_map_meta_array: { args: [P, i32], returns: P },
  pv_save_safetensors: { args: [P, P, P, i32, P, P, i32], returns: i32 },
  pv_gpu_available: { args: [], returns: i32 },
  pv_set_device: { args: [i32], returns: i32 },
  pv_get_device: { args: [], returns: i32 },
  pv_active_memory: { args: [], returns: i64_fast },
  pv_peak_memory: { args: [], returns: i64_fast },
  pv_cache_memory: { args: [], returns: i64_fast },
  pv_reset_peak_memory: { args: [], returns: i32 },
  pv_set_memory_limit: { args: [i64_fast], returns: i64_fast },
  pv_set_cache_limit: { args: [i64_fast], returns: i64_fast },
  pv_clear_cache: { args: [], returns: i32 },
  pv_live_handles: { args: [], returns: i64_fast },
  pv_device_free_memory: { args: [], returns: i64_fast },
} as const;

const ABI_VERSION = 4;

/**
 * Where the shim is: PENSIEVE_SHIM, else (compiled binary) the embedded runtime
 * written out to the cache, else the built shim of the installed backend.
 */
export function shimPath(env: Record<string, string | undefined> = process.env): string {
  if (env.PENSIEVE_SHIM) return env.PENSIEVE_SHIM;
  if (COMPILED) {
    const extracted = extractRuntime(env);
    if (extracted) return extracted;
  }
  const backend = installedBackend();
  if (!backend) throw new Error("MLX is not set up: run `npm run setup` (or `bun scripts/setup.ts`) first");
  return runtimeLayout(backend).shimPath;
}

function open() {
  applyMlxEnvDefaults();
  const path = shimPath();
  if (!existsSync(path)) throw new Error(`the MLX shim is missing at ${path}: run \`npm run setup\``);
  const lib = dlopen(path, symbols);
  const abi = lib.symbols.pv_abi_version();
  if (abi !== ABI_VERSION)
    throw new Error(`shim ABI ${abi} at ${path}, expected ${ABI_VERSION}: rebuild it (npm run setup)`);
  return lib.symbols;
}

/**
 * The shim's symbols, opened when this module is first imported: only the
 * engine process (and tools that mean to run MLX) may import src/mlx.
 */
export const lib: ReturnType<typeof open> = open();
