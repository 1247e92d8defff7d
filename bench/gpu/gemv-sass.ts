// SASS instructions of the fused GEMV and the verify attention at given rows, without a GPU:
// each instantiation compiled by NVRTC for sm_90a (test/gpu/nvrtc.ts, as MLX builds it), its
// CUBIN disassembled by nvdisasm, instructions counted by opcode. With K = 3072 the GEMV's loop
// is fully unrolled, so the count is the work of one warp: per row of x, output row and
// 16-byte chunk it says how ALU-bound a shape is (issue 13: verify passes at 9-16 rows).
//   bun bench/gpu/gemv-sass.ts [--nvdisasm PATH] [--shapes 1:4,4:2,9:1,9:2,16:2]   (M:rows per warp)
// --mma W [--tiles T]: the tensor-core body (kernels-gemv-mma.ts) at W warps a block (T tiles) instead; "per ..." is then per
// warp and 16-byte chunk of one tile row (a lane loads two rows' chunks per k-block).
// nvdisasm: the nvidia-cuda-nvdisasm wheel (pip download nvidia-cuda-nvdisasm; unzip), default
// /tmp/gv-disasm/nvidia/cu13/bin/nvdisasm.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mmaSpec } from "../../src/mlx/kernels-gemv";
import { mmaBucket } from "../../src/mlx/kernels-gemv-mma";
import { GEMV_NORM_SWIGLU_KERNEL, GEMV_RESIDUAL_KERNEL, prenormedSpec } from "../../src/mlx/kernels-gemv-fused";
import { type CudaType, nvrtcAvailable, nvrtcCompile, ptxasResources } from "../../test/gpu/nvrtc";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? (args[i + 1] as string) : fallback;
};
const nvdisasm = flag("--nvdisasm", "/tmp/gv-disasm/nvidia/cu13/bin/nvdisasm");
const shapes = flag("--shapes", "1:4,4:2,9:1,9:2,9:4,16:1,16:2")
  .split(",")
  .map((s) => s.split(":").map(Number));
if (!nvrtcAvailable) throw new Error("libnvrtc not found (PENSIEVE_NVRTC)");
const dir = mkdtempSync(join(tmpdir(), "gemv-sass-"));
const H = "__half" as CudaType;
const K = 3072;
const CHUNK_ROUNDS = K / 32 / 32; // 16-byte chunks per lane
const mmaWarpsArg = Number(flag("--mma", "0"));
// --tiles T: tiles of 16 output rows a tensor-core block (PENSIEVE_GEMV_MMA_TILES).
const mmaTiles = Number(flag("--tiles", "1"));
// --swiglu: the RMSNorm + gate|up + SwiGLU kernel (its prologue reads every row of x) instead of down + residual.
const swiglu = args.includes("--swiglu");
// --prenormed (with --swiglu): that kernel without its RMSNorm (PENSIEVE_GEMV_MMA_PRENORM: x arrives normed).
const prenormed = args.includes("--prenormed");
console.log("| M | rows/warp | SASS | per row of x, output row and chunk | registers | HFMA2 | HADD2 | PRMT | FADD |");
console.log("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
for (const [m, rows] of shapes as Array<[number, number]>) {
  const base = swiglu
    ? prenormed
      ? prenormedSpec(GEMV_NORM_SWIGLU_KERNEL)
      : GEMV_NORM_SWIGLU_KERNEL
    : GEMV_RESIDUAL_KERNEL;
  const spec = mmaWarpsArg ? mmaSpec(base, mmaTiles) : base;
  const r = nvrtcCompile({
    ...spec,
    // x's shape and ndim, as MLX passes them to a source that reads them (the tensor-core body's rows at run time).
    inputs: ["x", "w", "scales", "biases", swiglu ? "norm" : "res"].map((name) => ({
      name,
      type: name === "w" ? "uint32_t" : H,
      ...(name === "x" && mmaWarpsArg ? { shape: true, ndim: true } : {}),
    })),
    outputs: [{ name: "y", type: H }],
    template: {
      T: "__half",
      M: mmaWarpsArg ? mmaBucket(m) : m,
      N: 3072,
      K,
      ROWS: rows,
      WARPS: mmaWarpsArg || 4,
      GROUP: 64,
      ...(swiglu ? { EPS_BITS: 0 } : {}),
    },
  });
  if (!r.ok || !r.cubin) throw new Error(r.log);
  const file = join(dir, `m${m}-r${rows}.cubin`);
  writeFileSync(file, r.cubin);
  const sass = Bun.spawnSync([nvdisasm, file]).stdout.toString();
  const ops: Record<string, number> = {};
  let n = 0;
  for (const x of sass.matchAll(/\/\*[0-9a-f]{4,}\*\/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)/g)) {
    const op = x[1] as string;
    ops[op] = (ops[op] ?? 0) + 1;
    n++;
  }
  const per = (n / m / rows / CHUNK_ROUNDS).toFixed(0);
  if (process.env.SASS_OPS)
    console.error(
      Object.entries(ops)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 24)
        .map(([o, c]) => `${o} ${c}`)
        .join(", "),
    );
  const regs = ptxasResources(r.log)?.registers ?? "?";
  console.log(
    `| ${m} | ${rows} | ${n} | ${per} | ${regs} | ${ops.HFMA2 ?? 0} | ${ops.HADD2 ?? 0} | ${ops.PRMT ?? 0} | ${ops.FADD ?? 0} |`,
  );
}
