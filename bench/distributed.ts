// Beyond one device, measured side by side in one run (issue 16):
//   tp        decode tok/s of one engine against the same engine as N tensor-parallel ranks
//             (lone stream and a batch), engines interleaved A/B/A/B
//   replicas  aggregate output tok/s at S concurrent streams, 1 replica against R
//   allsum    the collective alone: all_sum of a decode step's activations [B, 1, hidden]
//             (2 per layer per step), timed on every rank of a group (run through the supervisor's launcher)
//
//   bun bench/distributed.ts tp --model PATH [--device gpu] [--ranks 2] [--backend nccl] [--gen 64] [--batch 8] [--rounds 2]
//   bun bench/distributed.ts replicas --model PATH [--device gpu] [--replicas 2] [--streams 64] [--gen 64]
//   bun bench/distributed.ts allsum --model PATH [--device gpu] [--ranks 2] [--backend nccl] [--batch 1,8,32]
// Writes JSON and markdown to bench/results/.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { groupLaunch } from "../src/engine/group-launch";
import { type EngineConfig, samplingParams } from "../src/engine/protocol";
import { type EngineHandle, EngineSupervisor } from "../src/engine/supervisor";
import { folderConfig } from "../src/models/model-files";
import { selfCommand } from "../src/paths";
import { ReplicaRouter } from "../src/server/replicas";
import { BENCH_DIR, machine } from "./peers";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const mode = process.argv[2] ?? "tp";
const model = arg("model", "");
const device = arg("device", "cpu") as "cpu" | "gpu";
const gen = Number(arg("gen", "64"));
if (!model && mode !== "help") throw new Error("--model PATH (an MLX model folder) is required");

function prompt(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => 100 + ((i * 7919 + seed * 104729) % 20000));
}

/** Output tokens per second of `streams` concurrent greedy generations of `gen` tokens (end-of-sequence ignored). */
async function decodeRate(engine: EngineHandle, streams: number, promptLength = 64): Promise<number> {
  // A short warm-up request first: shapes built, caches filled.
  for await (const _ of engine.generate({
    prompt: prompt(16, 999),
    maxTokens: 4,
    sampling: samplingParams(),
    stopTokenIds: [],
  })) {
  }
  const started = performance.now();
  let tokens = 0;
  await Promise.all(
    Array.from({ length: streams }, async (_, i) => {
      const stream = engine.generate({
        prompt: prompt(promptLength, i),
        maxTokens: gen,
        sampling: samplingParams(),
        stopTokenIds: [],
      });
      for await (const e of stream) {
        if (e.type === "token") tokens++;
        if (e.type === "error") throw new Error(e.message);
      }
    }),
  );
  return tokens / ((performance.now() - started) / 1000);
}

function engineConfig(extra: Partial<EngineConfig>): EngineConfig {
  return { model, device, ...extra };
}

function write(name: string, json: unknown, table: string): void {
  const dir = join(BENCH_DIR, "results");
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().slice(0, 19).replace(/:/g, "-");
  const base = join(dir, `${name}-${device}-${stamp}`);
  writeFileSync(`${base}.json`, JSON.stringify(json, null, 2));
  writeFileSync(`${base}.md`, table);
  console.log(table);
  console.log(`wrote ${base}.json`);
}

async function benchTensorParallel(): Promise<void> {
  const ranks = Number(arg("ranks", "2"));
  const backend = arg("backend", device === "gpu" ? "nccl" : "ring") as "ring" | "nccl";
  const batch = Number(arg("batch", "8"));
  const rounds = Number(arg("rounds", "2"));
  const rows: Array<{ engine: string; round: number; lone: number; batched: number }> = [];
  for (let round = 0; round < rounds; round++) {
    for (const tp of [1, ranks]) {
      const engine = new EngineSupervisor({
        engine: engineConfig({ tensorParallel: tp > 1 ? { size: tp, backend } : null, maxConcurrent: batch }),
        command: [...selfCommand(), "engine"],
      });
      await engine.start();
      try {
        const lone = await decodeRate(engine, 1);
        const batched = await decodeRate(engine, batch);
        rows.push({ engine: tp > 1 ? `${tp} ranks (${backend})` : "1 process", round, lone, batched });
      } finally {
        await engine.stop();
      }
    }
  }
  const table = [
    `| engine | round | lone decode tok/s | ${batch} streams tok/s |`,
    "|---|---|---|---|",
    ...rows.map((r) => `| ${r.engine} | ${r.round} | ${r.lone.toFixed(1)} | ${r.batched.toFixed(1)} |`),
    "",
  ].join("\n");
  write(`tensor-parallel-${ranks}`, { command: process.argv.slice(1), machine: machine(), model, rows }, table);
}

async function benchReplicas(): Promise<void> {
  const replicas = Number(arg("replicas", "2"));
  const streams = Number(arg("streams", "64"));
  const rows: Array<{ replicas: number; tokPerS: number }> = [];
  for (const n of [1, replicas, 1, replicas]) {
    const options = { engine: engineConfig({ maxConcurrent: streams }), command: [...selfCommand(), "engine"] };
    const engine: EngineHandle =
      n > 1 ? new ReplicaRouter({ ...options, replicas: n, pinGpus: device === "gpu" }) : new EngineSupervisor(options);
    await engine.start();
    try {
      rows.push({ replicas: n, tokPerS: await decodeRate(engine, streams) });
    } finally {
      await engine.stop();
    }
  }
  const table = [
    `| replicas | ${streams} streams, aggregate output tok/s |`,
    "|---|---|",
    ...rows.map((r) => `| ${r.replicas} | ${r.tokPerS.toFixed(1)} |`),
    "",
  ].join("\n");
  write(
    `replicas-${replicas}`,
    { command: process.argv.slice(1), machine: machine(), model, streams, gen, rows },
    table,
  );
}

/** Runs as one rank (ALLSUM_RANK set): times all_sum of [B, 1, hidden] in the compute dtype. */
async function allSumRank(): Promise<void> {
  const mx = await import("../src/mlx");
  const { allSum, initDistributed } = await import("../src/mlx/distributed");
  mx.setDevice(device);
  const group = initDistributed(arg("backend", device === "gpu" ? "nccl" : "ring") as "ring" | "nccl");
  const hidden = folderConfig(model).hiddenSize;
  const dtype = device === "gpu" ? mx.Dtype.float16 : mx.Dtype.float32;
  const out: Array<{ batch: number; us: number }> = [];
  for (const batch of arg("batch", "1,8,32").split(",").map(Number)) {
    const x = mx.astype(mx.full([batch, 1, hidden], 1), dtype);
    mx.evaluate(x);
    const repeat = 200;
    for (let i = 0; i < 10; i++) mx.evaluate(allSum(x));
    const started = performance.now();
    for (let i = 0; i < repeat; i++) mx.evaluate(allSum(x));
    out.push({ batch, us: ((performance.now() - started) * 1000) / repeat });
  }
  console.log(JSON.stringify({ rank: group.rank, out }));
}

async function benchAllSum(): Promise<void> {
  const ranks = Number(arg("ranks", "2"));
  const backend = arg("backend", device === "gpu" ? "nccl" : "ring");
  const launch = groupLaunch({ size: ranks, backend });
  const layers = folderConfig(model).numLayers;
  try {
    const procs = Array.from({ length: ranks }, (_, rank) => {
      const { argv, env } = launch.spawn(rank, () => [process.execPath, ...process.argv.slice(1)]);
      return Bun.spawn(argv, { env: { ...process.env, ...env, ALLSUM_RANK: String(rank) }, stdout: "pipe" });
    });
    const outputs = await Promise.all(procs.map((p) => new Response(p.stdout).text()));
    const results = outputs.map((o) => JSON.parse(o.trim().split("\n").at(-1) as string));
    const rank0 = results[0].out as Array<{ batch: number; us: number }>;
    const table = [
      `| batch rows | all_sum µs (rank 0) | per decode step: 2 × ${layers} layers, ms |`,
      "|---|---|---|",
      ...rank0.map((r) => `| ${r.batch} | ${r.us.toFixed(1)} | ${((2 * layers * r.us) / 1000).toFixed(2)} |`),
      "",
    ].join("\n");
    write(`allsum-${ranks}-${backend}`, { command: process.argv.slice(1), machine: machine(), model, results }, table);
  } finally {
    launch.cleanup();
  }
}

if (process.env.ALLSUM_RANK !== undefined) await allSumRank();
else if (mode === "tp") await benchTensorParallel();
else if (mode === "replicas") await benchReplicas();
else if (mode === "allsum") await benchAllSum();
else console.log("modes: tp, replicas, allsum (see the header of bench/distributed.ts)");
