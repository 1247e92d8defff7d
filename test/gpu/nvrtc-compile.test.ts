// Every custom kernel source compiles with NVRTC 13 for sm_90a (the H100) as MLX
// would generate it, at the instantiations the decoder uses for Phi-3-mini, and
// each compile stays short (MLX compiles each instantiation on first use, in the
// decode path). Runs where libnvrtc is present (test/gpu/nvrtc.ts), else skips.
import { describe, expect, test } from "bun:test";
import {
  DECODE_ATTENTION_COMBINE_KERNEL,
  DECODE_ATTENTION_KERNEL,
  DECODE_ATTENTION_MERGED_WRITE_KERNEL,
  DECODE_ATTENTION_SPLIT_KERNEL,
  DECODE_ATTENTION_WRITE_KERNEL,
} from "../../src/mlx/kernels-attention";
import { VERIFY_ATTENTION_KERNEL, verifyQueryChunk, verifyWarps } from "../../src/mlx/kernels-attention-verify";
import { GEMV_KERNEL, GEMV_RMS_NORM_KERNEL, mmaSpec } from "../../src/mlx/kernels-gemv";
import {
  GEMV_NORM_ROPE_KERNEL,
  GEMV_NORM_ROPE_QKV_KERNEL,
  GEMV_NORM_SWIGLU_KERNEL,
  GEMV_RESIDUAL_KERNEL,
  ROPE_TABLE_KERNEL,
} from "../../src/mlx/kernels-gemv-fused";
import { type CudaType, type NvrtcKernel, nvrtcAvailable, nvrtcCompile, ptxasResources } from "./nvrtc";

const H = "__half" as CudaType;
const gemvInputs = (extra: NvrtcKernel["inputs"] = []) => [
  { name: "x", type: H },
  { name: "w", type: "uint32_t" as CudaType },
  { name: "scales", type: H },
  { name: "biases", type: H },
  ...extra,
];
const gemvTemplate = (m: number, n: number, k: number, rows: number) => ({
  T: "__half",
  M: m,
  N: n,
  K: k,
  ROWS: rows,
  WARPS: 4,
  GROUP: 64,
  EPS_BITS: 925353388,
});
const out = [{ name: "y", type: H }];

const cases: Array<{ label: string; kernel: NvrtcKernel }> = [];
// 1 row of x (decode), 4 (a batch), 9 and 16 (speculative verify passes of 8 and 15 drafts).
for (const m of [1, 4, 9, 16]) {
  const rows = m === 1 ? 4 : m > 8 ? 2 : 1;
  const paired = m === 1 ? 4 : 2;
  cases.push(
    {
      label: `gemv lm_head M=${m}`,
      kernel: { ...GEMV_KERNEL, inputs: gemvInputs(), outputs: out, template: gemvTemplate(m, 32064, 3072, rows) },
    },
    {
      label: `rms_norm gemv M=${m}`,
      kernel: {
        ...GEMV_RMS_NORM_KERNEL,
        inputs: gemvInputs([{ name: "norm", type: H }]),
        outputs: out,
        template: gemvTemplate(m, 32064, 3072, rows),
      },
    },
    {
      label: `residual (down) M=${m}`,
      kernel: {
        ...GEMV_RESIDUAL_KERNEL,
        inputs: gemvInputs([{ name: "res", type: H }]),
        outputs: out,
        template: gemvTemplate(m, 3072, 8192, m === 1 ? 2 : m > 8 ? 2 : 1),
      },
    },
    {
      label: `rms_norm + swiglu (gate|up) M=${m}`,
      kernel: {
        ...GEMV_NORM_SWIGLU_KERNEL,
        inputs: gemvInputs([{ name: "norm", type: H }]),
        outputs: out,
        template: gemvTemplate(m, 16384, 3072, paired),
      },
    },
    {
      label: `rms_norm + rope (q|k|v) M=${m}`,
      kernel: {
        ...GEMV_NORM_ROPE_KERNEL,
        inputs: gemvInputs([
          { name: "norm", type: H },
          { name: "rope_cs", type: "float" },
        ]),
        outputs: out,
        template: {
          ...gemvTemplate(m, 9216, 3072, paired),
          HD: 96,
          ROTATED: 6144,
          TRADITIONAL: false,
          POS_SCALE_BITS: 1065353216,
        },
      },
    },
  );
}

// The tensor-core body (kernels-gemv-mma.ts) at 2, 9 and 32 rows of x: every variant, 4 warps a tile
// (x's shape and ndim passed, as MLX adds them for a source that reads them).
const withShape = (inputs: NvrtcKernel["inputs"]) =>
  inputs.map((i) => (i.name === "x" ? { ...i, shape: true, ndim: true } : i));
for (const m of [2, 9, 32]) {
  const rope = { HD: 96, ROTATED: 6144, TRADITIONAL: false, POS_SCALE_BITS: 1065353216 };
  const ropeInputs = withShape(
    gemvInputs([
      { name: "norm", type: H },
      { name: "rope_cs", type: "float" },
    ]),
  );
  cases.push(
    {
      label: `tensor cores: rms_norm gemv (lm_head) M=${m}`,
      kernel: {
        ...mmaSpec(GEMV_RMS_NORM_KERNEL),
        inputs: withShape(gemvInputs([{ name: "norm", type: H }])),
        outputs: out,
        template: gemvTemplate(m, 32064, 3072, 2),
      },
    },
    {
      label: `tensor cores: residual (down) M=${m}`,
      kernel: {
        ...mmaSpec(GEMV_RESIDUAL_KERNEL),
        inputs: withShape(gemvInputs([{ name: "res", type: H }])),
        outputs: out,
        template: gemvTemplate(m, 3072, 8192, 2),
      },
    },
    {
      label: `tensor cores: rms_norm + swiglu (gate|up) M=${m}`,
      kernel: {
        ...mmaSpec(GEMV_NORM_SWIGLU_KERNEL),
        inputs: withShape(gemvInputs([{ name: "norm", type: H }])),
        outputs: out,
        template: gemvTemplate(m, 16384, 3072, 2),
      },
    },
    {
      label: `tensor cores: rms_norm + rope, q/k/v outputs M=${m}`,
      kernel: {
        ...mmaSpec(GEMV_NORM_ROPE_QKV_KERNEL),
        inputs: ropeInputs,
        outputs: ["q", "k", "v"].map((name) => ({ name, type: H })),
        template: { ...gemvTemplate(m, 9216, 3072, 2), ...rope, QS: 3072, KVS: 3072 },
      },
    },
  );
}

// RoPE's cos/sin table (one launch a step; its rows from pos's shape).
cases.push({
  label: "RoPE table (cos, sin at each row's position)",
  kernel: {
    ...ROPE_TABLE_KERNEL,
    header: "",
    inputs: [
      { name: "pos", type: "int32_t", shape: true },
      { name: "inv_freq", type: "float" },
    ],
    outputs: [{ name: "rope_cs", type: "float" }],
    template: { HD: 96, POS_SCALE_BITS: 1065353216 },
  },
});

// Decode: q|k|v written as three outputs; attention over the cache (one split, several, the merge).
cases.push({
  label: "rms_norm + rope, q/k/v outputs (decode) M=1",
  kernel: {
    ...GEMV_NORM_ROPE_QKV_KERNEL,
    inputs: gemvInputs([
      { name: "norm", type: H },
      { name: "rope_cs", type: "float" },
    ]),
    outputs: [
      { name: "q", type: H },
      { name: "k", type: H },
      { name: "v", type: H },
    ],
    template: {
      ...gemvTemplate(1, 9216, 3072, 4),
      HD: 96,
      ROTATED: 6144,
      TRADITIONAL: false,
      POS_SCALE_BITS: 1065353216,
      QS: 3072,
      KVS: 3072,
    },
  },
});
const attentionInputs = [
  { name: "q", type: H },
  { name: "kc", type: H, shape: true },
  { name: "vc", type: H },
  { name: "pos", type: "int32_t" as CudaType },
];
const attentionTemplate = { T: "__half", H: 32, HKV: 32, HD: 96, WARPS: 16, SCALE_BITS: 1041864704, KB: 4 };
cases.push(
  {
    label: "decode attention, one split (Phi-3)",
    kernel: {
      ...DECODE_ATTENTION_KERNEL,
      inputs: attentionInputs,
      outputs: out.map((o) => ({ ...o, name: "out" })),
      template: attentionTemplate,
    },
  },
  {
    label: "decode attention, splits (Llama 3 8B: GQA 4, head 128)",
    kernel: {
      ...DECODE_ATTENTION_SPLIT_KERNEL,
      inputs: attentionInputs,
      outputs: [
        { name: "part", type: "float" },
        { name: "stats", type: "float" },
      ],
      template: { ...attentionTemplate, H: 32, HKV: 8, HD: 128 },
    },
  },
  {
    label: "decode attention storing the new key/value, one split (Phi-3)",
    kernel: {
      ...DECODE_ATTENTION_WRITE_KERNEL,
      inputs: [...attentionInputs, { name: "kn", type: H }, { name: "vn", type: H }],
      outputs: out.map((o) => ({ ...o, name: "out" })),
      template: attentionTemplate,
    },
  },
  {
    label: "decode attention storing the new key/value, splits merged in one launch (Phi-3)",
    kernel: {
      ...DECODE_ATTENTION_MERGED_WRITE_KERNEL,
      inputs: [
        ...attentionInputs,
        { name: "kn", type: H },
        { name: "vn", type: H },
        { name: "counter", type: "int32_t" as CudaType },
      ],
      outputs: [
        { name: "out", type: H },
        { name: "part", type: "float" },
        { name: "stats", type: "float" },
      ],
      template: attentionTemplate,
    },
  },
  {
    label: "decode attention, merge of splits",
    kernel: {
      ...DECODE_ATTENTION_COMBINE_KERNEL,
      inputs: [
        { name: "part", type: "float" },
        { name: "stats", type: "float" },
      ],
      outputs: [{ name: "out", type: H }],
      template: { T: "__half", HD: 96, SPLITS: 8 },
    },
  },
);

// A verify pass's attention (kernels-attention-verify.ts) at the template the decoder gives it.
const verifyOutputs = [
  { name: "out", type: H },
  { name: "part", type: "float" as CudaType },
  { name: "stats", type: "float" as CudaType },
];
for (const [heads, kvHeads, hd, l, label, merge] of [
  [32, 32, 96, 2, "Phi-3", 0],
  [32, 32, 96, 9, "Phi-3", 0],
  [32, 32, 96, 16, "Phi-3", 0],
  [32, 8, 128, 9, "Llama 3 8B: GQA 4, head 128", 0],
  // The parallel merge (PENSIEVE_FUSED_VERIFY_MERGE=parallel): the default's lengths and the largest query chunk.
  [32, 32, 96, 4, "Phi-3", 1],
  [32, 32, 96, 16, "Phi-3", 1],
] as const) {
  const qc = verifyQueryChunk((heads / kvHeads) * l, hd);
  cases.push({
    label: `verify attention L=${l} (${label}), ${qc} query rows per block${merge ? ", parallel merge" : ""}`,
    kernel: {
      ...VERIFY_ATTENTION_KERNEL,
      inputs: [
        { name: "qkv", type: H },
        { name: "kc", type: H, shape: true },
        { name: "vc", type: H },
        { name: "pos", type: "int32_t" },
        { name: "counter", type: "int32_t" },
      ],
      outputs: verifyOutputs,
      template: {
        T: "__half",
        H: heads,
        HKV: kvHeads,
        HD: hd,
        L: l,
        QC: qc,
        WARPS: verifyWarps(qc, hd, 4),
        SCALE_BITS: 1041864704,
        KB: 4,
        MERGE: merge,
      },
    },
  });
}

describe.skipIf(!nvrtcAvailable)("custom kernels compile with NVRTC (sm_90a)", () => {
  for (const c of cases) {
    test(c.label, () => {
      const r = nvrtcCompile(c.kernel);
      if (!r.ok) console.error(r.log);
      expect(r.ok).toBe(true);
      const res = ptxasResources(r.log);
      const regs = res ? `, ${res.registers} registers, ${res.spills} bytes spilled` : "";
      console.log(`[nvrtc] ${c.label}: ${r.ms.toFixed(0)} ms${regs}`);
      // MLX compiles on first use in the decode path: keep each instantiation quick. The GEMVs at 9-16 rows
      // (the opt-in verify path, PENSIEVE_GPU_FUSED_VERIFY) take 3-10 s here under load: 25 s for those.
      expect(r.ms).toBeLessThan(/M=(9|16)$/.test(c.label) ? 25_000 : 15_000);
    }, 60_000);
  }
});
