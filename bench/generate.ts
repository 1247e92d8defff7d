// Single-stream benchmark: prefill tok/s, decode tok/s, time to first token and
// peak memory, for Pensieve, mlx-lm (mlx_lm's generate_step: same MLX wheel,
// same weights through `pensieve convert`) and llama.cpp (node-llama-cpp, same
// GGUF), side by side in one run. Same prompt token ids everywhere; greedy;
// end-of-sequence ignored.
//
//   bun run bench generate [--model smollm2-135m] [--prompt 256] [--gen 128] [--repeat 3]
//     [--engines pensieve,mlx-lm,llama.cpp] [--pensieve-threads 1,2] [--llama-threads 1,2] [--converted]
//     [--llama-gguf FILE.gguf] [--llama-gpu]
// A GGUF model is converted to an MLX folder (cached per file: path, size and
// modification time) for mlx-lm, and for a Pensieve row on that folder when
// mlx-lm runs too or with --converted. --pensieve-threads adds one Pensieve row
// per thread count (PENSIEVE_THREADS; "auto" for the automatic choice); default:
// one row, automatic threads. --llama-gguf gives llama.cpp its own GGUF beside an
// MLX folder (the GPU benchmark: the same random Phi-3 written as Q4_0 by
// scripts/mlx-to-gguf.ts); --llama-gpu runs llama.cpp's CUDA build (one row, every
// layer on the GPU; bench/engines/llamacpp-generate.mjs gives the settings).
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, realpathSync, statSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { ggufString, readGguf } from "../src/formats/gguf";
import { resolveLocalModel } from "../src/hub/resolve";
import { convertGguf } from "../src/models/gguf-to-mlx";
import { Tokenizer } from "../src/text";
import {
  BENCH_DIR,
  CACHE_DIR,
  ensureMlxLm,
  ensureNodeLlamaCpp,
  gpuName,
  MLX_LM_VERSION,
  machine,
  NODE_LLAMA_CPP_VERSION,
} from "./peers";

export interface GenerateResult {
  engine: string;
  version?: string;
  promptTokens: number;
  generatedTokens: number;
  loadMs: number;
  ttftMs: number;
  prefillTokPerS: number;
  decodeTokPerS: number;
  peakMlxBytes: number | null;
  peakRssBytes: number | null;
  /** With --profile (Pensieve): per unpipelined decode step, graph building vs waiting for the device. */
  hostMsPerStep?: number;
  deviceMsPerStep?: number;
}

const PASSAGE =
  "The history of astronomy is one of the oldest stories of science. Early observers tracked the motions of the Sun, " +
  "the Moon and the planets to keep calendars, to navigate and to predict the seasons. ";

function runJson(argv: string[], env: Record<string, string> = {}, cwd = BENCH_DIR): GenerateResult {
  // Bundles (dist/) run where node_modules is absent: the engines need no cwd of their own.
  const r = Bun.spawnSync(argv, { cwd, stdout: "pipe", stderr: "pipe", env: { ...process.env, ...env } });
  const out = r.stdout.toString().trim().split("\n").at(-1) ?? "";
  if (r.exitCode !== 0) throw new Error(`${argv.join(" ")} failed:\n${r.stderr.toString().slice(-2000)}`);
  return JSON.parse(out) as GenerateResult;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

function summarize(runs: GenerateResult[]): GenerateResult {
  const first = runs[0] as GenerateResult;
  return {
    ...first,
    ttftMs: median(runs.map((r) => r.ttftMs)),
    prefillTokPerS: median(runs.map((r) => r.prefillTokPerS)),
    decodeTokPerS: median(runs.map((r) => r.decodeTokPerS)),
    loadMs: median(runs.map((r) => r.loadMs)),
  };
}

interface GenerateOptions {
  promptLength: number;
  gen: number;
  repeat: number;
  /** Model spec; default the embedded SmolLM2 (GGUF, plus its converted MLX folder for mlx-lm). */
  model: string | undefined;
  device: "cpu" | "gpu";
  engines: string[];
  /** A Python that already has mlx-lm (e.g. on a machine without network). */
  python: string | undefined;
  /** Where results go (default bench/results). */
  outDir: string;
  /** Report host (graph building) vs device time per decode step. */
  profile: boolean;
  /** The Pensieve engine script (a bundle under dist/ where node_modules is absent). */
  pensieveEngine: string;
  /** One Pensieve row per thread count; empty: one row with automatic threads. */
  pensieveThreads: number[];
  /** Also run Pensieve on the converted MLX folder of a GGUF (always when mlx-lm runs). */
  converted: boolean;
  /** llama.cpp thread counts, one row each (default 1 and 2). */
  llamaThreads: number[];
  /** The GGUF llama.cpp loads when the model is an MLX folder. */
  llamaGguf: string | undefined;
  /** llama.cpp's CUDA build, all layers on the GPU (one row). */
  llamaGpu: boolean;
}

/** The MLX folder a GGUF converts to: one per file (its real path, size and modification time). */
export function convertedFolder(gguf: string): string {
  const st = statSync(gguf);
  const identity = `${realpathSync(gguf)}\0${st.size}\0${st.mtimeMs}`;
  const hash = createHash("sha256").update(identity).digest("hex").slice(0, 12);
  const stem = basename(gguf)
    .replace(/\.gguf$/i, "")
    .replace(/[^A-Za-z0-9._-]+/g, "-");
  return join(CACHE_DIR, `${stem}-${hash}-mlx`);
}

/** The model a report names: the GGUF's general.name and file, or the folder. */
export function modelLabel(modelPath: string, folder: string | null): string {
  if (!modelPath.toLowerCase().endsWith(".gguf")) return modelPath;
  const meta = readGguf(modelPath).metadata;
  const name = ggufString(meta, "general.name");
  const file = basename(modelPath);
  const converted = folder ? "; MLX folder from `pensieve convert`" : "";
  return `${name ? `${name} (${file})` : file}${converted}`;
}

function parseGenerateOptions(argv: string[]): GenerateOptions {
  const get = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  return {
    promptLength: Number(get("prompt") ?? 256),
    gen: Number(get("gen") ?? 128),
    repeat: Number(get("repeat") ?? 3),
    model: get("model"),
    device: get("device") === "gpu" ? "gpu" : "cpu",
    engines: (get("engines") ?? "pensieve,mlx-lm,llama.cpp").split(","),
    python: get("python"),
    outDir: get("out-dir") ?? join(BENCH_DIR, "results"),
    profile: argv.includes("--profile"),
    pensieveEngine: resolve(get("pensieve-engine") ?? join(BENCH_DIR, "engines", "pensieve-generate.ts")),
    pensieveThreads: (get("pensieve-threads") ?? "")
      .split(",")
      .filter((t) => t !== "")
      .map((t) => (t === "auto" ? 0 : Number(t))),
    converted: argv.includes("--converted"),
    llamaThreads: (get("llama-threads") ?? "1,2").split(",").map(Number),
    llamaGguf: get("llama-gguf"),
    llamaGpu: argv.includes("--llama-gpu"),
  };
}

export async function benchGenerate(argv: string[]) {
  const o = parseGenerateOptions(argv);
  const { promptLength, gen, repeat } = o;
  const modelPath = resolveLocalModel(o.model);
  const gguf = modelPath.endsWith(".gguf") ? modelPath : null;
  // mlx-lm loads MLX folders: a GGUF goes through `pensieve convert`.
  const needFolder = o.engines.includes("mlx-lm") || o.converted;
  let folder: string | null = gguf ? null : modelPath;
  if (gguf && needFolder) {
    folder = convertedFolder(gguf);
    if (!existsSync(join(folder, "config.json"))) convertGguf(gguf, folder);
  }
  const tokenizer = gguf ? Tokenizer.fromGguf(gguf) : Tokenizer.fromHfFolder(modelPath);
  // The passage repeated to the length in a step or two (re-encoding a text grown one passage at a time took
  // minutes at 120,000 tokens: an H100 run timed out before its first engine started).
  let copies = Math.ceil(promptLength / Math.max(1, tokenizer.encode(PASSAGE).length)) + 1;
  let ids = tokenizer.encode(PASSAGE.repeat(copies));
  while (ids.length < promptLength) {
    copies = Math.ceil((copies * promptLength) / Math.max(1, ids.length)) + 1;
    ids = tokenizer.encode(PASSAGE.repeat(copies));
  }
  const prompt = ids.slice(0, promptLength);
  mkdirSync(CACHE_DIR, { recursive: true });
  const promptFile = join(CACHE_DIR, `prompt-${promptLength}.json`);
  writeFileSync(promptFile, JSON.stringify(prompt));

  const engines: Array<{ name: string; argv: string[]; env?: Record<string, string> }> = [];
  const pensieve = [process.execPath, o.pensieveEngine];
  const extra = [o.device, ...(o.profile ? ["--profile"] : [])];
  if (o.engines.includes("pensieve")) {
    const threadRows = o.pensieveThreads.length ? o.pensieveThreads : [0];
    for (const threads of threadRows) {
      const suffix = threads
        ? `, ${threads} thread${threads > 1 ? "s" : ""}`
        : o.pensieveThreads.length
          ? ", auto threads"
          : "";
      const env: Record<string, string> = threads ? { PENSIEVE_THREADS: String(threads) } : {};
      if (gguf) {
        engines.push({
          name: `pensieve (GGUF${suffix})`,
          argv: [...pensieve, gguf, promptFile, String(gen), ...extra],
          env,
        });
      }
      if (folder) {
        engines.push({
          name: gguf ? `pensieve (converted MLX folder${suffix})` : `pensieve${suffix}`,
          argv: [...pensieve, folder, promptFile, String(gen), ...extra],
          env,
        });
      }
    }
  }
  if (o.engines.includes("mlx-lm") && folder) {
    const python = o.python ?? ensureMlxLm(o.device === "gpu" ? "cuda" : "cpu");
    const script = join(BENCH_DIR, "engines", "mlx_lm_generate.py");
    engines.push({ name: "mlx-lm", argv: [python, script, folder, promptFile, String(gen), o.device] });
  }
  const llamaGguf = o.llamaGguf ? resolve(o.llamaGguf) : gguf;
  if (o.engines.includes("llama.cpp") && llamaGguf) {
    // PENSIEVE_NODE_LLAMA_CPP: a node-llama-cpp carried to a machine without network.
    if (!process.env.PENSIEVE_NODE_LLAMA_CPP) ensureNodeLlamaCpp();
    const script = join(BENCH_DIR, "engines", "llamacpp-generate.mjs");
    // node-llama-cpp runs under Bun too (the GPU machine has no Node).
    const runtime = Bun.which("node") ?? process.execPath;
    const rows = o.llamaGpu
      ? [{ name: "llama.cpp CUDA", threads: 1, backend: "cuda" }]
      : o.llamaThreads.map((t) => ({ name: `llama.cpp ${t} thread${t > 1 ? "s" : ""}`, threads: t, backend: "cpu" }));
    // PENSIEVE_LLAMA_LIBRARY_PATH: where the CUDA runtime and cuBLAS are, for llama.cpp's process only
    // (Pensieve's and mlx-lm's MLX find their own copies).
    const libs = process.env.PENSIEVE_LLAMA_LIBRARY_PATH;
    const env: Record<string, string> = libs
      ? { LD_LIBRARY_PATH: [libs, process.env.LD_LIBRARY_PATH].filter(Boolean).join(":") }
      : {};
    for (const r of rows) {
      engines.push({
        name: r.name,
        argv: [runtime, script, llamaGguf, promptFile, String(gen), String(r.threads), r.backend],
        env,
      });
    }
  }
  const results: Array<GenerateResult & { label: string; runs: GenerateResult[] }> = [];
  // Interleave engines across repeats so drift on the machine hits all of them alike.
  const runs = new Map<string, GenerateResult[]>();
  for (let i = 0; i < repeat; i++) {
    for (const e of engines) {
      console.error(`[bench] ${e.name}, run ${i + 1}/${repeat}`);
      runs.set(e.name, [...(runs.get(e.name) ?? []), runJson(e.argv, e.env)]);
    }
  }
  for (const e of engines) {
    const r = runs.get(e.name) as GenerateResult[];
    results.push({ ...summarize(r), label: e.name, runs: r });
  }
  const baseline = results[0] as GenerateResult;
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const report = {
    benchmark: "single-stream generation",
    date: new Date().toISOString(),
    command: `bun run bench generate ${argv.join(" ")}`.trim(),
    machine: machine(),
    device: o.device,
    ...(o.device === "gpu" ? { gpu: gpuName() } : {}),
    model: modelLabel(modelPath, gguf ? folder : null),
    ...(o.llamaGguf && llamaGguf ? { llamaModel: modelLabel(llamaGguf, null) } : {}),
    settings: {
      promptTokens: promptLength,
      generatedTokens: gen,
      sampling: "greedy, EOS ignored",
      repeat,
      statistic: "median",
      // Each engine's warm-up before the timed run (bench/engines/*): 8 tokens, or the whole prompt.
      warmup: process.env.BENCH_WARMUP === "full" ? "the whole prompt" : "8 tokens",
    },
    versions: { mlxLm: MLX_LM_VERSION, nodeLlamaCpp: NODE_LLAMA_CPP_VERSION },
    ...(o.llamaGpu
      ? {
          llamaCpp:
            "CUDA build, every layer on the GPU, flash attention on, batch 512 (n_batch = n_ubatch), KV float16",
        }
      : {}),
    results: results.map(({ runs: _runs, ...r }) => ({
      ...r,
      decodeVsPensieve: r.decodeTokPerS / baseline.decodeTokPerS,
      prefillVsPensieve: r.prefillTokPerS / baseline.prefillTokPerS,
    })),
  };
  const dir = o.outDir;
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `generate-${o.device}-p${promptLength}-${stamp}`);
  writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
  const mib = (b: number | null) => (b === null ? "-" : `${(b / 2 ** 20).toFixed(0)}`);
  const lines = [
    `# Single-stream generation, ${report.date.slice(0, 10)}`,
    "",
    `Machine: ${report.machine.cpu}, ${report.machine.cores} cores, ${report.machine.memoryGiB} GiB. Model: ${report.model}.`,
    ...(report.llamaModel ? [`llama.cpp model: ${report.llamaModel}.`] : []),
    `Prompt ${promptLength} tokens, ${gen} generated (greedy, EOS ignored), median of ${repeat} runs, warm-up ${report.settings.warmup}. Command: \`${report.command}\`.`,
    "",
    "| engine | prefill tok/s | decode tok/s | first token ms | peak MLX MiB | peak RSS MiB | decode vs first row | host ms/step | device ms/step |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...report.results.map(
      (r) =>
        `| ${r.label} | ${r.prefillTokPerS.toFixed(1)} | ${r.decodeTokPerS.toFixed(2)} | ${r.ttftMs.toFixed(0)} | ${mib(r.peakMlxBytes)} | ${mib(r.peakRssBytes)} | ${r.decodeVsPensieve.toFixed(2)}x | ${r.hostMsPerStep?.toFixed(2) ?? "-"} | ${r.deviceMsPerStep?.toFixed(2) ?? "-"} |`,
    ),
    "",
  ];
  writeFileSync(`${base}.md`, lines.join("\n"));
  console.log(lines.join("\n"));
  console.log(`results: ${base}.json`);
}
