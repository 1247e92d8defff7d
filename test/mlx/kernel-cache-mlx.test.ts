// PENSIEVE_KERNEL_CACHE=mlx (src/mlx/kernel-cache-mlx.ts) without a GPU: the
// shim's std::hash equals libstdc++'s (a g++-built reference program), MLX's
// kernel name / build_kernel text / module name / get_ptx_path / .txt layout,
// and (with the MLX CUDA wheel's NVRTC) that decode kernels compile to a CUBIN
// holding the lowered name written in the .txt, and a second writer compiles
// nothing; a header MLX gets as an #include (kernel-header.ts) gives the text
// with the include line and the same CUBIN as inline. Whether MLX really reads
// these entries needs the GPU (test/gpu/kernel-cache-mlx.test.ts).
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Dtype } from "../../src/mlx/array";
import {
  MlxPtxCache,
  mlxKernelName,
  mlxKernelSource,
  mlxKernelsText,
  mlxModuleName,
  mlxPtxCacheDir,
  mlxPtxPath,
  stdHash,
} from "../../src/mlx/kernel-cache-mlx";
import { asBodyInclude, headerFileName, headerInclude } from "../../src/mlx/kernel-header";
import type { KernelSpec, TemplateArg } from "../../src/mlx/kernels";
import { DECODE_ATTENTION_KERNEL } from "../../src/mlx/kernels-attention";
import { GEMV_KERNEL } from "../../src/mlx/kernels-gemv";
import { GEMV_RESIDUAL_KERNEL } from "../../src/mlx/kernels-gemv-fused";
import { compileToCubin, cudaWheelDir, mlxCompileOptions, mlxJitHeaders, nvrtcAvailable } from "../../src/mlx/nvrtc";

const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), "pv-kcache-mlx-"));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const F16 = Dtype.float16;
const half = { dtype: F16 };
const gemv: KernelSpec = { ...GEMV_KERNEL, outputs: ["y"] };
const gemvInputs = [
  { dtype: F16, ndim: 3 },
  { dtype: Dtype.uint32, ndim: 2 },
  { dtype: F16, ndim: 2 },
  { dtype: F16, ndim: 2 },
];
const gemvTemplate: Array<[string, TemplateArg]> = [
  ["T", half],
  ["M", 1],
  ["N", 32064],
  ["K", 3072],
  ["ROWS", 4],
  ["WARPS", 4],
  ["GROUP", 64],
  ["EPS_BITS", 925353388],
];
const attention: KernelSpec = { ...DECODE_ATTENTION_KERNEL, outputs: [...DECODE_ATTENTION_KERNEL.outputs] };
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

describe("std::hash from the shim", () => {
  const gxx = Bun.which("g++");
  test.skipIf(!gxx)("equals libstdc++'s std::hash<std::string> (g++ reference program)", () => {
    const dir = tempDir();
    writeFileSync(
      join(dir, "h.cpp"),
      `#include <cstdio>\n#include <fstream>\n#include <sstream>\n#include <string>\n
int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::ifstream f(argv[i], std::ios::binary); std::stringstream s; s << f.rdbuf();
    std::printf("%zx\\n", std::hash<std::string>{}(s.str()));
  }
}\n`,
    );
    const build = Bun.spawnSync([gxx as string, "-O1", "-o", join(dir, "h"), join(dir, "h.cpp")]);
    expect(build.exitCode).toBe(0);
    const texts = [
      "",
      "a",
      "custom_kernel_gemv",
      mlxKernelSource(gemv, mlxKernelName(gemv, gemvTemplate), gemvInputs, [F16], gemvTemplate),
      "ü utf-8 ✓",
    ];
    const files = texts.map((t, i) => {
      const p = join(dir, `t${i}`);
      writeFileSync(p, t);
      return p;
    });
    const run = Bun.spawnSync([join(dir, "h"), ...files]);
    const reference = run.stdout.toString().trim().split("\n");
    expect(texts.map((t) => stdHash(t).toString(16))).toEqual(reference);
  });
});

describe("MLX's names and layout", () => {
  test("kernel name uses MLX's get_type_string in the template hash", () => {
    expect(mlxKernelName(gemv, gemvTemplate)).toBe("custom_kernel_pv_gemv_w4_float16_t_1_32064_3072_4_4_64_925353388");
    const mixed: Array<[string, TemplateArg]> = [
      ["A", { dtype: Dtype.float32 }],
      ["B", true],
      ["C", false],
      ["D", { dtype: Dtype.bfloat16 }],
    ];
    expect(mlxKernelName({ ...gemv, name: "k" }, mixed)).toBe("custom_kernel_k_float_t_f_bfloat16_t");
  });

  test("build_kernel text: shape/strides/ndim parameters, outputs, template constants", () => {
    const spec: KernelSpec = {
      name: "demo",
      inputs: ["a", "b", "s"],
      outputs: ["o", "p"],
      header: "#define X 1\n",
      source: "o[0] = a[a_shape[0] + a_ndim] + b[b_strides[0]];",
    };
    const text = mlxKernelSource(
      spec,
      "custom_kernel_demo_4",
      [
        { dtype: F16, ndim: 2 },
        { dtype: Dtype.float32, ndim: 1 },
        { dtype: Dtype.int32, ndim: 0 },
      ],
      [F16, Dtype.uint32],
      [["N", 4]],
    );
    expect(text).toBe(
      `
#include "mlx/backend/cuda/device/utils.cuh"

#include <cooperative_groups.h>

#define X 1
namespace mlx::core::cu {

namespace cg = cooperative_groups;

__global__ void custom_kernel_demo_4(
    const __half* a,
    const __grid_constant__ Shape a_shape,
    const __grid_constant__ int a_ndim,
    const float* b,
    const __grid_constant__ Strides b_strides,
    const int32_t* s,
    __half* o,
    uint32_t* p) {
  constexpr int N = 4;

o[0] = a[a_shape[0] + a_ndim] + b[b_strides[0]];
}

} // namespace mlx::core::cu
`,
    );
  });

  test("build_kernel text with the header MLX was given as an #include (kernel-header.ts)", () => {
    const long = `#define PV_LONG 1\n${"// filler\n".repeat(40)}`;
    const spec: KernelSpec = { name: "demo", inputs: ["a"], outputs: ["o"], header: long, source: "o[0] = a[0];" };
    const given = headerInclude(long, tempDir(), {});
    expect(given.header).toBe(`#include "${headerFileName(long)}"\n`);
    const text = mlxKernelSource(
      { ...spec, header: given.header },
      "custom_kernel_demo",
      [{ dtype: F16, ndim: 1 }],
      [F16],
      [],
    );
    expect(text).toBe(
      `
#include "mlx/backend/cuda/device/utils.cuh"

#include <cooperative_groups.h>

#include "${headerFileName(long)}"
namespace mlx::core::cu {

namespace cg = cooperative_groups;

__global__ void custom_kernel_demo(
    const __half* a,
    __half* o) {
o[0] = a[0];
}

} // namespace mlx::core::cu
`,
    );
    // The include line stands where the header stood: nothing else in the text moves.
    const inline = mlxKernelSource(spec, "custom_kernel_demo", [{ dtype: F16, ndim: 1 }], [F16], []);
    expect(text.replace(given.header, long)).toBe(inline);
    expect(mlxModuleName("custom_kernel_demo", text)).not.toBe(mlxModuleName("custom_kernel_demo", inline));
  });

  test("a body MLX gets as an #include keeps the shape parameters it reads (kernel-header.ts asBodyInclude)", () => {
    const body = `o[0] = a[a_shape[0] + a_ndim] + b[0];\n${"// filler\n".repeat(40)}`;
    const spec: KernelSpec = { name: "demo", inputs: ["a", "b"], outputs: ["o"], source: body };
    const given = asBodyInclude(headerInclude(body, tempDir(), {}), body, spec.inputs);
    expect(given.header).toBe(`  // reads a_shape a_ndim\n  #include "${headerFileName(body)}"\n`);
    const sig = [
      { dtype: F16, ndim: 2 },
      { dtype: F16, ndim: 1 },
    ];
    const text = mlxKernelSource({ ...spec, source: given.header }, "custom_kernel_demo", sig, [F16], []);
    const inline = mlxKernelSource(spec, "custom_kernel_demo", sig, [F16], []);
    // Same signature (a's shape and ndim, not b's): only the body's text differs.
    expect(text.replace(given.header, body)).toBe(inline);
    expect(text).toContain("const __grid_constant__ Shape a_shape,\n    const __grid_constant__ int a_ndim,");
  });

  test("module name, get_ptx_path (245-byte folders) and the .txt lines", () => {
    const source = mlxKernelSource(gemv, "custom_kernel_gemv", gemvInputs, [F16], gemvTemplate);
    expect(mlxModuleName("custom_kernel_gemv", source)).toBe(`custom_kernel_gemv_${stdHash(source).toString(16)}`);
    expect(mlxPtxPath("/c", "short")).toBe("/c/short.ptx");
    const long = "x".repeat(245);
    expect(mlxPtxPath("/c", long)).toBe(`/c/${long}.ptx`);
    const name = `${"a".repeat(245)}${"b".repeat(245)}tail`;
    expect(mlxPtxPath("/c", name)).toBe(`/c/${"a".repeat(245)}/${"b".repeat(245)}/tail.ptx`);
    expect(mlxKernelsText([["mlx::core::cu::k", "_Z1kv"]])).toBe("mlx::core::cu::k\t_Z1kv\n");
    expect(mlxPtxCacheDir("0.32.4", { MLX_PTX_CACHE_DIR: "/x" })).toBe("/x");
    expect(mlxPtxCacheDir("0.32.4", { TMPDIR: "/t" })).toBe("/t/mlx/0.32.4/ptx");
    expect(mlxPtxCacheDir("0.32.4", {})).toBe("/tmp/mlx/0.32.4/ptx");
  });
});

const wheel = cudaWheelDir();
const ready = wheel !== null && nvrtcAvailable();

describe.skipIf(!ready)("entries compiled with MLX's NVRTC setup", () => {
  const options = ready ? mlxCompileOptions(wheel as string, 9, 0) : [];
  const headers = ready ? mlxJitHeaders(join(wheel as string, "mlx", "lib", "libmlx.so")) : { names: [], sources: [] };
  const dir = tempDir();
  const cases = [
    { spec: gemv, inputs: gemvInputs, outputs: [F16], template: gemvTemplate },
    { spec: attention, inputs: attentionInputs, outputs: [F16], template: attentionTemplate },
  ];
  for (const c of cases) {
    test(`${c.spec.name}: CUBIN + .txt with the lowered name; a second writer compiles nothing`, () => {
      const name = mlxKernelName(c.spec, c.template);
      const outputs = c.spec.outputs.map(() => F16);
      const source = mlxKernelSource(c.spec, name, c.inputs, outputs, c.template);
      const first = new MlxPtxCache(dir, options, headers);
      const path = first.ensure(name, source);
      expect(first.stats.compiles).toBe(1);
      expect(path).toBe(mlxPtxPath(dir, mlxModuleName(name, source)));
      const cubin = readFileSync(path);
      expect([...cubin.subarray(0, 4)]).toEqual([0x7f, 0x45, 0x4c, 0x46]);
      const txt = readFileSync(path.replace(/\.ptx$/, ".txt"), "utf8");
      const m = txt.match(/^mlx::core::cu::(\S+)\t(_Z\S+)\n$/);
      expect(m?.[1]).toBe(name);
      const lowered = m?.[2] as string;
      expect(lowered).toContain(name);
      expect(cubin.includes(Buffer.from(`${lowered}\0`))).toBe(true);
      const second = new MlxPtxCache(dir, options, headers);
      expect(second.ensure(name, source)).toBe(path);
      expect(second.stats).toMatchObject({ compiles: 0, present: 1 });
      expect(existsSync(`${path}.tmp`)).toBe(false);
    }, 120_000);
  }

  // What CustomKernel hands MLX on CUDA: the fused GEMV's ~9 KB header as an
  // #include of its file. The text compiles only where that folder is searched,
  // and to the same machine code as the inline header.
  test("GEMV_RESIDUAL_KERNEL, header by #include: same CUBIN and lowered name as inline", () => {
    const spec: KernelSpec = { ...GEMV_RESIDUAL_KERNEL, outputs: ["y"] };
    const inputs = [...gemvInputs, { dtype: F16, ndim: 3 }];
    const template: Array<[string, TemplateArg]> = gemvTemplate.map(([k, v]) =>
      k === "N" ? [k, 3072] : k === "K" ? [k, 8192] : k === "ROWS" ? [k, 2] : [k, v],
    );
    const name = mlxKernelName(spec, template);
    const expr = `mlx::core::cu::${name}`;
    const include = tempDir();
    const given = headerInclude(spec.header as string, include, {});
    expect(given.file).not.toBeNull();
    const inlineText = mlxKernelSource(spec, name, inputs, [F16], template);
    const includeText = mlxKernelSource({ ...spec, header: given.header }, name, inputs, [F16], template);
    expect(inlineText.length - includeText.length).toBe((spec.header as string).length - given.header.length);

    // NVRTC writes the program name into the CUBIN: all three compile under the one MLX uses, the module name.
    const program = mlxModuleName(name, includeText);
    const missing = compileToCubin(includeText, program, options, headers, undefined, [expr]);
    expect(missing.ok).toBe(false);
    expect(missing.log).toContain(headerFileName(spec.header as string));

    const a = compileToCubin(inlineText, program, options, headers, undefined, [expr]);
    const searched = [...options, `--include-path=${include}`];
    const b = compileToCubin(includeText, program, searched, headers, undefined, [expr]);
    expect(a.ok).toBe(true);
    expect(b.ok).toBe(true);
    expect(b.lowered).toEqual(a.lowered);
    expect((b.cubin as Buffer).equals(a.cubin as Buffer)).toBe(true);

    // The pre-fill writer, told the folder, stores it under the module name of the text MLX hashes.
    const cache = new MlxPtxCache(tempDir(), options, headers);
    const path = cache.ensure(name, includeText, [include]);
    expect(path).toBe(mlxPtxPath(cache.dir, mlxModuleName(name, includeText)));
    expect(readFileSync(path.replace(/\.ptx$/, ".txt"), "utf8")).toBe(mlxKernelsText([[expr, a.lowered[0] as string]]));
    expect(readFileSync(path).equals(a.cubin as Buffer)).toBe(true);

    // The body by #include too (what CustomKernel hands MLX on CUDA): the same machine code again.
    const body = asBodyInclude(headerInclude(spec.source, include, {}), spec.source, spec.inputs);
    expect(body.file).not.toBeNull();
    const bothText = mlxKernelSource(
      { ...spec, header: given.header, source: body.header },
      name,
      inputs,
      [F16],
      template,
    );
    expect(bothText.length).toBeLessThan(1500);
    const both = compileToCubin(bothText, program, searched, headers, undefined, [expr]);
    expect(both.ok).toBe(true);
    expect(both.lowered).toEqual(a.lowered);
    expect((both.cubin as Buffer).equals(a.cubin as Buffer)).toBe(true);
  }, 180_000);
});
