// The kernel cache (src/mlx/kernel-cache.ts, PENSIEVE_KERNEL_CACHE=1) without a
// GPU: the precompiled translation unit of every kernel the decode path uses
// compiles with MLX's NVRTC, headers and options to a CUBIN that exports the
// kernel by its plain name; entries are written, read back by a second cache
// (a later engine start) without compiling, and a damaged entry is deleted and
// compiled again; keys change with source, options, NVRTC version and arch.
// NVRTC cases skip without the MLX CUDA wheel (src/mlx/nvrtc.ts finds it).
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Dtype } from "../../src/mlx/array";
import {
  KernelCache,
  kernelCacheMode,
  notPrecompilable,
  precompiledName,
  precompiledSource,
} from "../../src/mlx/kernel-cache";
import type { KernelSpec, TemplateArg } from "../../src/mlx/kernels";
import {
  DECODE_ATTENTION_COMBINE_KERNEL,
  DECODE_ATTENTION_KERNEL,
  DECODE_ATTENTION_MERGED_WRITE_KERNEL,
} from "../../src/mlx/kernels-attention";
import { GEMV_KERNEL, GEMV_RMS_NORM_KERNEL } from "../../src/mlx/kernels-gemv";
import {
  GEMV_NORM_ROPE_QKV_KERNEL,
  GEMV_NORM_SWIGLU_KERNEL,
  GEMV_RESIDUAL_KERNEL,
} from "../../src/mlx/kernels-gemv-fused";
import { DECODE_LAYER_KERNEL, layerKernel, layerTemplate } from "../../src/mlx/kernels-layer";
import { cudaWheelDir, mlxCompileOptions, mlxJitHeaders, nvrtcAvailable, nvrtcVersion } from "../../src/mlx/nvrtc";

const wheel = cudaWheelDir();
const ready = wheel !== null && nvrtcAvailable();
const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), "pv-kernel-cache-"));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const F16 = Dtype.float16;
const half = { dtype: F16 };
interface Case {
  label: string;
  spec: KernelSpec;
  inputs: Array<{ dtype: Dtype; ndim: number }>;
  outputs: Dtype[];
  template: Array<[string, TemplateArg]>;
}
const gemvInputs = (extra: Array<{ dtype: Dtype; ndim: number }> = []) => [
  { dtype: F16, ndim: 3 },
  { dtype: Dtype.uint32, ndim: 2 },
  { dtype: F16, ndim: 2 },
  { dtype: F16, ndim: 2 },
  ...extra,
];
const gemvTemplate = (n: number, k: number, rows: number): Array<[string, TemplateArg]> => [
  ["T", half],
  ["M", 1],
  ["N", n],
  ["K", k],
  ["ROWS", rows],
  ["WARPS", 4],
  ["GROUP", 64],
  ["EPS_BITS", 925353388],
];
const spec = (s: { name: string; header?: string; source: string; inputs: readonly string[] }, outputs: string[]) => ({
  ...s,
  outputs,
});
const attentionInputs = [
  { dtype: F16, ndim: 4 },
  { dtype: F16, ndim: 4 },
  { dtype: F16, ndim: 4 },
  { dtype: Dtype.int32, ndim: 1 },
];
const attentionTemplate: Array<[string, TemplateArg]> = [
  ["T", half],
  ["H", 32],
  ["HKV", 32],
  ["HD", 96],
  ["WARPS", 16],
  ["SCALE_BITS", 1041864704],
  ["KB", 4],
];
const norm = { dtype: F16, ndim: 1 };
const ropeExtra = [norm, { dtype: Dtype.float32, ndim: 2 }];

function layerCase(): Case {
  const template = layerTemplate(
    { dtype: F16, rows: 1, hidden: 3072, intermediate: 8192, heads: 32, kvHeads: 32, headDim: 96 },
    { groups: [64, 64, 64, 64], eps1: 1e-5, eps2: 1e-5, traditional: false, scale: 96 ** -0.5 },
  );
  const base = layerKernel(template.AW as number, 1);
  const dtypeOf = (name: string) =>
    name.startsWith("w_")
      ? Dtype.uint32
      : name === "pos" || name === "sync_state"
        ? Dtype.int32
        : name === "rope_cs"
          ? Dtype.float32
          : F16;
  return {
    label: "decode-layer megakernel (Phi-3, fp16, 1 row)",
    spec: { ...base, inputs: DECODE_LAYER_KERNEL.inputs, outputs: [...DECODE_LAYER_KERNEL.outputs] },
    inputs: DECODE_LAYER_KERNEL.inputs.map((n) => ({
      dtype: dtypeOf(n),
      ndim: n === "kc" || n === "vc" ? 4 : n.startsWith("w_") || n.startsWith("s_") || n.startsWith("b_") ? 2 : 1,
    })),
    outputs: DECODE_LAYER_KERNEL.outputs.map((n) => (n === "part" || n === "stats" ? Dtype.float32 : F16)),
    template: [["T", half], ...(Object.entries(template) as Array<[string, TemplateArg]>)],
  };
}

const cases: Case[] = [
  {
    label: "gemv (lm_head)",
    spec: spec(GEMV_KERNEL, ["y"]),
    inputs: gemvInputs(),
    outputs: [F16],
    template: gemvTemplate(32064, 3072, 4),
  },
  {
    label: "rms_norm gemv",
    spec: spec(GEMV_RMS_NORM_KERNEL, ["y"]),
    inputs: gemvInputs([norm]),
    outputs: [F16],
    template: gemvTemplate(32064, 3072, 4),
  },
  {
    label: "gemv + residual",
    spec: spec(GEMV_RESIDUAL_KERNEL, ["y"]),
    inputs: gemvInputs([{ dtype: F16, ndim: 3 }]),
    outputs: [F16],
    template: gemvTemplate(3072, 8192, 2),
  },
  {
    label: "rms_norm + swiglu",
    spec: spec(GEMV_NORM_SWIGLU_KERNEL, ["y"]),
    inputs: gemvInputs([norm]),
    outputs: [F16],
    template: gemvTemplate(16384, 3072, 4),
  },
  {
    label: "rms_norm + rope q/k/v",
    spec: spec(GEMV_NORM_ROPE_QKV_KERNEL, ["q", "k", "v"]),
    inputs: gemvInputs(ropeExtra),
    outputs: [F16, F16, F16],
    template: [
      ...gemvTemplate(9216, 3072, 4),
      ["HD", 96],
      ["ROTATED", 6144],
      ["TRADITIONAL", false],
      ["POS_SCALE_BITS", 1065353216],
      ["QS", 3072],
      ["KVS", 3072],
    ],
  },
  {
    label: "decode attention (reads kc_shape)",
    spec: spec(DECODE_ATTENTION_KERNEL, ["out"]),
    inputs: attentionInputs,
    outputs: [F16],
    template: attentionTemplate,
  },
  {
    label: "decode attention, merged splits with the key/value write",
    spec: spec(DECODE_ATTENTION_MERGED_WRITE_KERNEL, ["out", "part", "stats"]),
    inputs: [...attentionInputs, { dtype: F16, ndim: 4 }, { dtype: F16, ndim: 4 }, { dtype: Dtype.int32, ndim: 1 }],
    outputs: [F16, Dtype.float32, Dtype.float32],
    template: attentionTemplate,
  },
  {
    label: "decode attention, merge of splits",
    spec: spec(DECODE_ATTENTION_COMBINE_KERNEL, ["out"]),
    inputs: [
      { dtype: Dtype.float32, ndim: 4 },
      { dtype: Dtype.float32, ndim: 4 },
    ],
    outputs: [F16],
    template: [
      ["T", half],
      ["HD", 96],
      ["SPLITS", 8],
    ],
  },
  layerCase(),
];

describe("precompiled kernel source", () => {
  test('extern "C", MLX\'s name, shapes read by the source as trailing int parameters', () => {
    const c = cases.find((x) => x.spec.name === DECODE_ATTENTION_KERNEL.name) as Case;
    const name = precompiledName(c.spec, c.template);
    expect(name).toBe("custom_kernel_pv_decode_attention_float16_32_32_96_16_1041864704_4");
    const src = precompiledSource(c.spec, name, c.inputs, c.outputs, c.template);
    expect(src).toContain(`extern "C" __global__ void ${name}(\n    const __half* q,\n    const __half* kc,`);
    expect(src).toContain(
      "    __half* out,\n    int kc_shape_0,\n    int kc_shape_1,\n    int kc_shape_2,\n    int kc_shape_3) {",
    );
    expect(src).toContain("  const Shape kc_shape = {{kc_shape_0, kc_shape_1, kc_shape_2, kc_shape_3}};");
    expect(src).not.toContain("__grid_constant__");
    expect(src.endsWith(`${c.spec.source}\n}\n\n} // namespace mlx::core::cu\n`)).toBe(true);
  });

  test("every decode kernel can go through precompiled_cuda_kernel (no strides read)", () => {
    for (const c of cases) expect(notPrecompilable(c.spec)).toBeNull();
    expect(notPrecompilable({ name: "k", inputs: ["a"], outputs: ["b"], source: "b[0] = a_strides[0];" })).toContain(
      "a_strides",
    );
  });
});

describe("kernel cache entries", () => {
  const fakeCubin = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.from("not really a cubin")]);
  const cache = (dir: string, options = ["--gpu-architecture=sm_90a"], nvrtc = "13.0", arch = "9.0") =>
    new KernelCache(dir, options, nvrtc, arch, { names: ["a.cuh"], sources: ["// a"] });

  test("keys change with source, options, NVRTC version, arch and MLX's headers", () => {
    const dir = tempDir();
    const k = cache(dir).key("src");
    expect(cache(dir).key("src")).toBe(k);
    expect(cache(dir).key("src2")).not.toBe(k);
    expect(cache(dir, ["--gpu-architecture=sm_100a"]).key("src")).not.toBe(k);
    expect(cache(dir, undefined, "13.1").key("src")).not.toBe(k);
    expect(cache(dir, undefined, undefined, "10.0").key("src")).not.toBe(k);
    const otherHeaders = new KernelCache(dir, ["--gpu-architecture=sm_90a"], "13.0", "9.0", {
      names: ["a.cuh"],
      sources: ["// b"],
    });
    expect(otherHeaders.key("src")).not.toBe(k);
  });

  test("written atomically, read back, a damaged entry deleted", () => {
    const dir = tempDir();
    const c = cache(dir);
    const key = c.key("kernel");
    expect(c.read(key)).toBeNull();
    c.write(key, fakeCubin);
    expect(readdirSync(dir)).toEqual([`${key}.cubin`]);
    expect(c.read(key)?.equals(fakeCubin)).toBe(true);

    const bytes = readFileSync(c.path(key));
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 1, bytes.length - 1);
    writeFileSync(c.path(key), bytes);
    expect(c.read(key)).toBeNull();
    expect(existsSync(c.path(key))).toBe(false);
    expect(c.stats.rejected).toBe(1);

    writeFileSync(c.path(key), Buffer.from("PVCUBIN1"));
    expect(c.read(key)).toBeNull();
    expect(existsSync(c.path(key))).toBe(false);
  });
});

describe.skipIf(!ready)("decode kernels compile to CUBIN with MLX's NVRTC, headers and options", () => {
  const w = wheel as string;
  const headers = ready ? mlxJitHeaders(join(w, "mlx", "lib", "libmlx.so")) : { names: [], sources: [] };
  const options = ready ? mlxCompileOptions(w, 9, 0) : [];
  const version = ready ? nvrtcVersion() : "";
  const dir = tempDir();

  test("MLX's options and embedded headers", () => {
    expect(options.slice(0, 2)).toEqual(["--device-as-default-execution-space", "--gpu-architecture=sm_90a"]);
    expect(headers.names).toContain("mlx/backend/cuda/device/utils.cuh");
    expect(headers.sources[headers.names.indexOf("mlx/backend/cuda/device/utils.cuh")]).toContain("Shape");
  });

  for (const c of cases) {
    test(c.label, () => {
      const cache = new KernelCache(dir, options, version, "9.0", headers);
      const name = precompiledName(c.spec, c.template);
      const source = precompiledSource(c.spec, name, c.inputs, c.outputs, c.template);
      const got = cache.get(source, name);
      expect(got.fromDisk).toBe(false);
      expect(cache.stats.compiles).toBe(1);
      expect(got.cubin.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))).toBe(true);
      // extern "C": the plain name is a symbol of the CUBIN.
      expect(got.cubin.includes(Buffer.from(`${name}\0`))).toBe(true);

      // A later start: read from disk, nothing compiled.
      const later = new KernelCache(dir, options, version, "9.0", headers);
      const again = later.get(source, name);
      expect(again.fromDisk).toBe(true);
      expect(again.cubin.equals(got.cubin)).toBe(true);
      expect(later.stats).toMatchObject({ compiles: 0, hits: 1 });
    }, 300_000);
  }

  test("a damaged entry is compiled again", () => {
    const c = cases[0] as Case;
    const cache = new KernelCache(dir, options, version, "9.0", headers);
    const name = precompiledName(c.spec, c.template);
    const source = precompiledSource(c.spec, name, c.inputs, c.outputs, c.template);
    const first = cache.get(source, name);
    writeFileSync(cache.path(first.key), Buffer.from("garbage"));
    const later = new KernelCache(dir, options, version, "9.0", headers);
    const again = later.get(source, name);
    expect(again.fromDisk).toBe(false);
    expect(again.cubin.equals(first.cubin)).toBe(true);
    expect(later.stats).toMatchObject({ rejected: 1, compiles: 1 });
    expect(cache.get(source, name).cubin).toBe(first.cubin); // this process's copy, no disk
  }, 300_000);
});

test("PENSIEVE_KERNEL_CACHE: MLX's PTX cache by default on Linux, CUBINs with 1, off with 0", () => {
  expect(kernelCacheMode({})).toBe(process.platform === "linux" ? "mlx" : null);
  expect(kernelCacheMode({ PENSIEVE_KERNEL_CACHE: "mlx" })).toBe("mlx");
  expect(kernelCacheMode({ PENSIEVE_KERNEL_CACHE: "1" })).toBe("cubin");
  expect(kernelCacheMode({ PENSIEVE_KERNEL_CACHE: "0" })).toBeNull();
});
