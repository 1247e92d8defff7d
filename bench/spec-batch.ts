// Speculation with a batch of streams (issue 13: "a batch of 8 on the CPU:
// throughput no worse than without"): N greedy requests over the spec prompts
// at once, total decode tok/s (wall clock and per CPU-second of this process)
// with speculation off, with prompt lookup, and with the draft model when
// given; runs take turns. Speculation runs only for a lone row (scheduler.ts),
// so in a full batch it is off by itself; it runs again in the tail, when one
// stream is left. Reports the verify passes too.
//
//   bun run bench spec --batch 8 [--gen 128] [--repeat 2] [--draft-model PATH]
import { mkdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { checkDraftModel } from "../src/engine/engine";
import { type EngineEvent, samplingParams } from "../src/engine/protocol";
import { Scheduler, type SchedulerOptions } from "../src/engine/scheduler";
import { resolveLocalModel } from "../src/hub/resolve";
import * as mx from "../src/mlx";
import { loadModel } from "../src/models/loader";
import type { LanguageModel } from "../src/models/types";
import { encodeChat, Tokenizer } from "../src/text";
import { BENCH_DIR, machine } from "./peers";
import { SPEC_PROMPTS } from "./spec-prompts";

type Mode = "off" | "lookup" | "draft";

interface BatchRun {
  tokens: number[][];
  decodeMs: number;
  decodeCpuMs: number;
  passes: number;
  accepted: number;
}

function runBatch(
  model: LanguageModel,
  options: SchedulerOptions,
  prompts: number[][],
  gen: number,
  stops: number[],
  mode: Mode,
  draft: LanguageModel | null,
): BatchRun {
  const cpu = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const tokens = prompts.map(() => [] as number[]);
  let first = 0;
  let last = 0;
  let cpuFirst = 0;
  let cpuLast = 0;
  const scheduler = new Scheduler(
    model,
    { ...options, speculative: mode !== "off", promptLookup: mode !== "draft" },
    (e: EngineEvent) => {
      if (e.type !== "tokens") return;
      const now = performance.now();
      if (first === 0) {
        first = now;
        cpuFirst = cpu();
      }
      last = now;
      cpuLast = cpu();
      for (const t of e.items) tokens[Number(t.id)]?.push(t.token);
    },
  );
  if (mode === "draft") scheduler.attachDraftModel(draft);
  prompts.forEach((prompt, i) => {
    scheduler.submit({ id: String(i), prompt, maxTokens: gen, sampling: samplingParams(), stopTokenIds: stops });
  });
  while (scheduler.step()) {}
  scheduler.dispose();
  const s = scheduler.speculation;
  return { tokens, decodeMs: last - first, decodeCpuMs: cpuLast - cpuFirst, passes: s.passes, accepted: s.accepted };
}

export async function benchSpecBatch(argv: string[], options: SchedulerOptions): Promise<void> {
  const option = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const batch = Number(option("batch") ?? 8);
  const gen = Number(option("gen") ?? 128);
  const repeat = Number(option("repeat") ?? 2);
  const modelPath = resolveLocalModel(option("model") ?? "smollm2-135m");
  const draftPath = option("draft-model") ? resolveLocalModel(option("draft-model") as string) : null;
  if (draftPath) checkDraftModel(modelPath, draftPath);
  const tokenizer = modelPath.endsWith(".gguf") ? Tokenizer.fromGguf(modelPath) : Tokenizer.fromHfFolder(modelPath);
  const { model } = loadModel(modelPath);
  const draft = draftPath ? loadModel(draftPath, { dtype: model.dtype }).model : null;
  const stops = [...tokenizer.eosIds];
  const prompts = Array.from({ length: batch }, (_, i) => {
    const p = SPEC_PROMPTS[i % SPEC_PROMPTS.length] as (typeof SPEC_PROMPTS)[number];
    return encodeChat(tokenizer, [{ role: "user", content: p.user }], { addGenerationPrompt: true });
  });
  const modes: Mode[] = draft ? ["off", "lookup", "draft"] : ["off", "lookup"];
  const opts = { ...options, maxConcurrent: Math.max(options.maxConcurrent, batch) };
  for (const mode of modes) runBatch(model, opts, prompts.slice(0, 2), 8, stops, mode, draft);
  const runs = new Map<Mode, BatchRun[]>(modes.map((m) => [m, []]));
  for (let r = 0; r < repeat; r++) {
    const order = [...modes.slice(r % modes.length), ...modes.slice(0, r % modes.length)];
    for (const mode of order) {
      const run = runBatch(model, opts, prompts, gen, stops, mode, draft);
      runs.get(mode)?.push(run);
      const n = run.tokens.reduce((a, t) => a + t.length, 0);
      console.error(
        `batch ${batch} ${mode.padEnd(6)} ${n} tokens ${((n / run.decodeMs) * 1000).toFixed(1)} tok/s, ${run.passes} verify passes`,
      );
    }
  }
  model.dispose();
  draft?.dispose();
  const reference = runs.get("off")?.[0]?.tokens ?? [];
  const pooled = (list: BatchRun[]) => {
    const n = list.reduce((a, x) => a + x.tokens.reduce((b, t) => b + t.length, 0), 0);
    return {
      tokPerS: (n / list.reduce((a, x) => a + x.decodeMs, 0)) * 1000,
      tokPerCpuS: (n / list.reduce((a, x) => a + x.decodeCpuMs, 0)) * 1000,
      passes: list.reduce((a, x) => a + x.passes, 0) / list.length,
      accepted: list.reduce((a, x) => a + x.accepted, 0) / list.length,
      identical: list.every((x) => JSON.stringify(x.tokens) === JSON.stringify(reference)),
    };
  };
  const off = pooled(runs.get("off") ?? []);
  const table = modes.map((m) => ({ mode: m, ...pooled(runs.get(m) ?? []) }));
  const date = new Date().toISOString();
  const command = `bun run bench spec ${argv.join(" ")}`;
  const f = (x: number, d = 1) => x.toFixed(d);
  const lines = [
    `# Speculation with a batch of ${batch} streams, ${mx.getDevice()}, ${date.slice(0, 10)}`,
    "",
    `Model ${modelPath}${draftPath ? `, draft ${draftPath}` : ""}. ${batch} greedy requests at once (the spec prompts in turn), up to ${gen} tokens each, ${repeat} runs per mode taking turns.`,
    `Load average at the end ${loadavg()
      .map((x) => x.toFixed(1))
      .join(", ")} (2 shared cores). Command: \`${command}\`.`,
    "",
    "| mode | decode tok/s (all streams) | ratio | tok/CPU-s | ratio | verify passes per run | accepted per run | identical |",
    "|---|---:|---:|---:|---:|---:|---:|---|",
    ...table.map(
      (r) =>
        `| ${r.mode} | ${f(r.tokPerS)} | ${f(r.tokPerS / off.tokPerS, 2)}x | ${f(r.tokPerCpuS)} | ${f(r.tokPerCpuS / off.tokPerCpuS, 2)}x | ${f(r.passes)} | ${f(r.accepted)} | ${r.identical ? "yes" : "NO"} |`,
    ),
    "",
  ];
  const dir = join(BENCH_DIR, "results");
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `spec-batch${batch}-${mx.getDevice()}-${date.replace(/[:.]/g, "-").slice(0, 19)}`);
  writeFileSync(
    `${base}.json`,
    `${JSON.stringify({ date, command, machine: machine(), loadAverage: loadavg(), batch, gen, repeat, modelPath, draftPath, table }, null, 2)}\n`,
  );
  writeFileSync(`${base}.md`, lines.join("\n"));
  console.log(lines.join("\n"));
  console.log(`results: ${base}.json`);
}
