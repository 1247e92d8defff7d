// Load benchmark: N concurrent clients streaming chat completions over HTTP,
// with a seeded mix of prompt and output lengths, against Pensieve and
// mlx_lm.server (same MLX version and backend, same model folder), one after
// the other in one run on one machine. Reports time to first token and
// inter-token latency (p50/p95), aggregate output tok/s and errors per
// concurrency level; writes JSON, markdown and a PNG chart to bench/results/.
//
//   bun run bench load [--levels 1,2,4,8,16,32] [--requests-per-client 1] [--servers pensieve,mlx-lm]
//                      [--model smollm2-135m|PATH] [--device cpu|gpu] [--out-tokens 16,32,48] [--prompt-tokens 32,64,128]
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { resolveLocalModel } from "../src/hub/resolve";
import { convertGguf } from "../src/models/gguf-to-mlx";
import { selfCommand } from "../src/paths";
import { renderChartPng } from "./chart";
import { convertedFolder } from "./generate";
import { BENCH_DIR, ensureMlxLm, gpuName, MLX_LM_VERSION, machine } from "./peers";

/** mlx_lm.server serves its --model under this name; Pensieve answers any name with its model. */
const MODEL_NAME = "default_model";

interface LoadOptions {
  levels: number[];
  requestsPerClient: number;
  servers: string[];
  modelSpec: string | undefined;
  device: "cpu" | "gpu";
  outTokens: number[];
  promptTokens: number[];
  seed: number;
  /** Token ids that must not end a stream early (random-weight models). */
  banTokens: number[];
  /** A Python that already has mlx-lm (machines without network). */
  python: string | undefined;
  /** Idle time given to each server between ready and the first request. */
  settleMs: number;
  /** Where results go (default bench/results). */
  outDir: string;
}

interface RequestSpec {
  id: number;
  content: string;
  maxTokens: number;
}

interface RequestResult {
  ok: boolean;
  status: number;
  error?: string;
  ttftMs: number | null;
  gapsMs: number[];
  completionTokens: number;
  totalMs: number;
}

export interface LevelResult {
  concurrency: number;
  requests: number;
  errors: number;
  wallSeconds: number;
  outputTokens: number;
  aggregateTokPerS: number;
  ttftMs: { p50: number; p95: number };
  interTokenMs: { p50: number; p95: number };
}

const WORDS =
  "the of and a to in is you that it he was for on are as with his they at be this have from or one had by word but not what all were we when your can said there use an each which she do how their if will up other about out many then them these so some her would make like him into time has look two more write go see number no way could people my than first water been call who oil its now find long down day did get come made may part".split(
    " ",
  );

function lcg(seed: number) {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
}

/** Distinct prompts (a request number first, so prefix caches cannot share them beyond the template). */
export function workload(count: number, o: Pick<LoadOptions, "outTokens" | "promptTokens" | "seed">): RequestSpec[] {
  const rand = lcg(o.seed);
  const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)] as T;
  return Array.from({ length: count }, (_, id) => {
    const words = Math.round(pick(o.promptTokens) * 0.8);
    const body = Array.from({ length: words }, () => pick(WORDS)).join(" ");
    return { id, content: `Request ${id}. Continue this text: ${body}`, maxTokens: pick(o.outTokens) };
  });
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}

async function streamOne(baseUrl: string, model: string, r: RequestSpec, ban: number[]): Promise<RequestResult> {
  const start = performance.now();
  const logitBias = Object.fromEntries(ban.map((t) => [String(t), -100]));
  let res: Response;
  try {
    res = await fetch(`${baseUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model,
        messages: [{ role: "user", content: r.content }],
        max_tokens: r.maxTokens,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
        logit_bias: logitBias,
      }),
    });
  } catch (e) {
    return {
      ok: false,
      status: 0,
      error: (e as Error).message,
      ttftMs: null,
      gapsMs: [],
      completionTokens: 0,
      totalMs: 0,
    };
  }
  if (!res.ok || !res.body) {
    return {
      ok: false,
      status: res.status,
      error: await res.text(),
      ttftMs: null,
      gapsMs: [],
      completionTokens: 0,
      totalMs: 0,
    };
  }
  let ttft: number | null = null;
  let last = 0;
  const gaps: number[] = [];
  let tokens = 0;
  let chunks = 0;
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const part of res.body) {
    buffer += decoder.decode(part, { stream: true });
    let nl = buffer.indexOf("\n\n");
    while (nl >= 0) {
      const event = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 2);
      nl = buffer.indexOf("\n\n");
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const msg = JSON.parse(line.slice(6)) as {
          choices?: Array<{ delta?: { content?: string | null } }>;
          usage?: { completion_tokens?: number };
        };
        if (msg.usage?.completion_tokens !== undefined) tokens = msg.usage.completion_tokens;
        const content = msg.choices?.[0]?.delta?.content;
        if (!content) continue;
        const now = performance.now();
        if (ttft === null) ttft = now - start;
        else gaps.push(now - last);
        last = now;
        chunks++;
      }
    }
  }
  return {
    ok: true,
    status: 200,
    ttftMs: ttft,
    gapsMs: gaps,
    completionTokens: tokens || chunks,
    totalMs: performance.now() - start,
  };
}

async function runLevel(baseUrl: string, model: string, level: number, o: LoadOptions): Promise<LevelResult> {
  const requests = workload(level * o.requestsPerClient, { ...o, seed: o.seed + level });
  const results: RequestResult[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: level }, async () => {
      while (next < requests.length) {
        const r = requests[next++] as RequestSpec;
        results.push(await streamOne(baseUrl, model, r, o.banTokens));
      }
    }),
  );
  const wallSeconds = (performance.now() - started) / 1000;
  const ok = results.filter((r) => r.ok);
  const outputTokens = ok.reduce((n, r) => n + r.completionTokens, 0);
  const ttfts = ok.map((r) => r.ttftMs).filter((t): t is number => t !== null);
  const gaps = ok.flatMap((r) => r.gapsMs);
  for (const bad of results.filter((r) => !r.ok))
    console.error(`[load] error ${bad.status}: ${bad.error?.slice(0, 200)}`);
  return {
    concurrency: level,
    requests: results.length,
    errors: results.length - ok.length,
    wallSeconds,
    outputTokens,
    aggregateTokPerS: outputTokens / wallSeconds,
    ttftMs: { p50: percentile(ttfts, 50), p95: percentile(ttfts, 95) },
    interTokenMs: { p50: percentile(gaps, 50), p95: percentile(gaps, 95) },
  };
}

async function waitReady(url: string, proc: Subprocess, timeoutMs = 600_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (proc.exitCode !== null) throw new Error(`server exited (${proc.exitCode}) before it was ready`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await Bun.sleep(500);
  }
  throw new Error(`server at ${url} not ready in time`);
}

interface ServerUnderTest {
  name: string;
  version: string;
  start(port: number, logFile: string): { proc: Subprocess; ready: string };
}

function servers(o: LoadOptions, paths: { pensieveModel: string; mlxFolder: string }, python: string | null) {
  const all: Record<string, ServerUnderTest> = {
    pensieve: {
      name: "pensieve",
      version: "this checkout",
      start: (port, logFile) => ({
        proc: Bun.spawn(
          [
            ...selfCommand(),
            "serve",
            "--model",
            paths.pensieveModel,
            "--port",
            String(port),
            ...(o.device === "cpu" ? ["--backend", "cpu"] : []),
            "--max-concurrent",
            String(Math.max(...o.levels)),
            "--queue-size",
            "1024",
          ],
          { stdout: "ignore", stderr: Bun.file(logFile) },
        ),
        ready: `http://127.0.0.1:${port}/health`,
      }),
    },
    "mlx-lm": {
      name: "mlx_lm.server",
      version: `mlx-lm ${MLX_LM_VERSION}`,
      start: (port, logFile) => ({
        proc: Bun.spawn(
          [
            python as string,
            "-m",
            "mlx_lm",
            "server",
            "--model",
            paths.mlxFolder,
            "--port",
            String(port),
            "--decode-concurrency",
            String(Math.max(...o.levels)),
            "--prompt-concurrency",
            String(Math.max(...o.levels)),
            "--log-level",
            "WARNING",
          ],
          { stdout: "ignore", stderr: Bun.file(logFile) },
        ),
        ready: `http://127.0.0.1:${port}/v1/models`,
      }),
    },
  };
  return o.servers.map((s) => {
    const server = all[s];
    if (!server) throw new Error(`unknown server "${s}" (pensieve, mlx-lm)`);
    return server;
  });
}

function parseOptions(argv: string[]): LoadOptions {
  const get = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const list = (name: string, fallback: number[]) => get(name)?.split(",").map(Number) ?? fallback;
  return {
    levels: list("levels", [1, 2, 4, 8, 16, 32]),
    requestsPerClient: Number(get("requests-per-client") ?? 1),
    servers: (get("servers") ?? "pensieve,mlx-lm").split(","),
    modelSpec: get("model"),
    device: get("device") === "gpu" ? "gpu" : "cpu",
    outTokens: list("out-tokens", [16, 32, 48]),
    promptTokens: list("prompt-tokens", [32, 64, 128]),
    seed: Number(get("seed") ?? 7),
    banTokens: list("ban-tokens", []),
    python: get("python"),
    outDir: get("out-dir") ?? join(BENCH_DIR, "results"),
    settleMs: Number(get("settle-ms") ?? 10_000),
  };
}

export async function benchLoad(argv: string[]): Promise<void> {
  const o = parseOptions(argv);
  const modelPath = resolveLocalModel(o.modelSpec);
  // mlx_lm.server loads MLX folders: a GGUF goes through `pensieve convert` first.
  let mlxFolder = modelPath;
  if (modelPath.endsWith(".gguf")) {
    mlxFolder = convertedFolder(modelPath);
    if (!existsSync(join(mlxFolder, "config.json"))) convertGguf(modelPath, mlxFolder);
  }
  const python = o.servers.includes("mlx-lm") ? (o.python ?? ensureMlxLm(o.device === "gpu" ? "cuda" : "cpu")) : null;
  const results: Array<{ server: string; version: string; levels: LevelResult[] }> = [];
  let port = 18_700;
  for (const s of servers(o, { pensieveModel: modelPath, mlxFolder }, python)) {
    port++;
    console.error(`[load] starting ${s.name} on port ${port}`);
    mkdirSync(o.outDir, { recursive: true });
    const { proc, ready } = s.start(port, join(o.outDir, `${s.name}.log`));
    try {
      await waitReady(ready, proc);
      // Idle time after start, as a server started before use gets (Pensieve warms prompt shapes then on a GPU).
      await Bun.sleep(o.settleMs);
      const base = `http://127.0.0.1:${port}`;
      // Warm-up outside the measurement: a burst at the highest concurrency, so
      // kernels for every batch size are compiled (GPU JIT) before timing.
      const top = Math.max(...o.levels);
      await Promise.all(
        workload(top, { ...o, outTokens: [8], seed: 999 }).map((r) => streamOne(base, MODEL_NAME, r, o.banTokens)),
      );
      // A lone request too: single-row prefill shapes differ from grouped ones.
      for (const r of workload(1, { ...o, outTokens: [8], seed: 998 }))
        await streamOne(base, MODEL_NAME, r, o.banTokens);
      const levels: LevelResult[] = [];
      for (const level of o.levels) {
        console.error(`[load] ${s.name}: ${level} concurrent`);
        const r = await runLevel(base, MODEL_NAME, level, o);
        console.error(
          `[load]   ${r.aggregateTokPerS.toFixed(1)} tok/s, TTFT p50 ${r.ttftMs.p50.toFixed(0)} ms, ITL p50 ${r.interTokenMs.p50.toFixed(1)} ms, errors ${r.errors}`,
        );
        levels.push(r);
      }
      results.push({ server: s.name, version: s.version, levels });
    } finally {
      proc.kill("SIGTERM");
      await proc.exited;
    }
  }
  await writeReport(o, modelPath, results, argv);
}

async function writeReport(
  o: LoadOptions,
  modelPath: string,
  results: Array<{ server: string; version: string; levels: LevelResult[] }>,
  argv: string[],
) {
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const dir = o.outDir;
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `load-${o.device}-${stamp}`);
  const report = {
    benchmark: "concurrent streaming chat completions",
    date: new Date().toISOString(),
    command: `bun run bench load ${argv.join(" ")}`.trim(),
    machine: machine(),
    ...(o.device === "gpu" ? { gpu: gpuName() } : {}),
    model: modelPath,
    options: o,
    results,
  };
  writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
  const [a, b] = results;
  const lines = [
    `# Load: concurrent streaming clients, ${report.date.slice(0, 10)} (${o.device})`,
    "",
    `Machine: ${report.machine.cpu}, ${report.machine.cores} cores, ${report.machine.memoryGiB} GiB. Model: ${modelPath}.`,
    `Command: \`${report.command}\`. Prompts ${o.promptTokens.join("/")} tokens, outputs ${o.outTokens.join("/")} tokens (seeded mix), greedy.`,
    "",
    "| server | concurrency | requests | errors | output tok/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...results.flatMap((r) =>
      r.levels.map(
        (l) =>
          `| ${r.server} | ${l.concurrency} | ${l.requests} | ${l.errors} | ${l.aggregateTokPerS.toFixed(1)} | ${l.ttftMs.p50.toFixed(0)} | ${l.ttftMs.p95.toFixed(0)} | ${l.interTokenMs.p50.toFixed(1)} | ${l.interTokenMs.p95.toFixed(1)} |`,
      ),
    ),
  ];
  if (a && b) {
    lines.push(
      "",
      `| concurrency | ${a.server} / ${b.server} tok/s | TTFT p50 ratio (lower is better) |`,
      "|---:|---:|---:|",
    );
    a.levels.forEach((l, i) => {
      const m = b.levels[i];
      if (m)
        lines.push(
          `| ${l.concurrency} | ${(l.aggregateTokPerS / m.aggregateTokPerS).toFixed(2)}x | ${(l.ttftMs.p50 / m.ttftMs.p50).toFixed(2)} |`,
        );
    });
  }
  lines.push("");
  writeFileSync(`${base}.md`, lines.join("\n"));
  const png = await renderChartPng(
    results.map((r) => ({ name: r.server, points: r.levels })),
    `${base}.png`,
  );
  console.log(lines.join("\n"));
  console.log(`results: ${base}.json${png ? `, chart ${png}` : ""}`);
}
