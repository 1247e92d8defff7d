// `bun run bench claude-code`: Claude Code's real first request replayed
// against a server at default settings (issue 10's acceptance run).
//
//   bun run bench claude-code capture [--out FILE]
//     Here, where npm reaches Claude Code: runs the real CLI (`claude -p`)
//     against a recording stub and keeps its first /v1/messages body in
//     bench/.cache/claude-code-request.json (ignored: its system prompt and
//     tools are Claude Code's, never committed), with the CLI's version.
//   bun run bench claude-code --model M [--device gpu] [--servers pensieve,mlx-lm] [--request FILE]
//     The replay. Pensieve over /v1/messages: turn 1, the same again, a
//     follow-up turn, a second session (same system and tools, another first
//     message), 8 sessions at once, then a restart (after waiting, at most
//     60 s, until the prefix is on disk; --restart-now: at once, so only what
//     the shutdown writes survives) and turn 1 again. The
//     same turns as rendered Phi-3 text over /v1/completions for Pensieve and
//     mlx_lm.server (its prompt cache), so both see the same tokens.
//   Writes JSON (card name included) and a markdown table to --out-dir.
// Over 400 lines: capture, replay, the memory poll and the report are one acceptance run.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { selfCommand } from "../src/paths";
import { ensureClaudeCode, runClaude } from "../test/support/anthropic-claude-code";
import { BENCH_DIR, CACHE_DIR, gpuName, MLX_LM_VERSION, machine } from "./peers";

const REQUEST_FILE = join(CACHE_DIR, "claude-code-request.json");

interface Captured {
  claudeCodeVersion: string;
  body: Record<string, unknown>;
}

async function capture(out: string): Promise<void> {
  const bin = await ensureClaudeCode();
  const version = Bun.spawnSync([bin, "--version"]).stdout.toString().trim();
  let body: Record<string, unknown> | null = null;
  const stub = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const url = new URL(req.url);
      if (req.method === "POST" && url.pathname.startsWith("/v1/messages") && !url.pathname.includes("count")) {
        const parsed = (await req.json()) as Record<string, unknown>;
        if (!body && Array.isArray(parsed.tools) && parsed.tools.length > 0) body = parsed;
        const events = [
          [
            "message_start",
            {
              type: "message_start",
              message: {
                id: "m",
                type: "message",
                role: "assistant",
                model: "stub",
                content: [],
                stop_reason: null,
                usage: { input_tokens: 1, output_tokens: 0 },
              },
            },
          ],
          ["content_block_start", { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } }],
          ["content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "ok" } }],
          ["content_block_stop", { type: "content_block_stop", index: 0 }],
          ["message_delta", { type: "message_delta", delta: { stop_reason: "end_turn" }, usage: { output_tokens: 1 } }],
          ["message_stop", { type: "message_stop" }],
        ];
        const sse = events.map(([e, d]) => `event: ${e}\ndata: ${JSON.stringify(d)}\n\n`).join("");
        return new Response(sse, { headers: { "content-type": "text/event-stream" } });
      }
      return Response.json({ input_tokens: 1 });
    },
  });
  try {
    const run = await runClaude(bin, `http://127.0.0.1:${stub.port}`, "hello", 120_000);
    if (!body)
      throw new Error(`Claude Code sent no /v1/messages request with tools (exit ${run.exitCode}): ${run.stderr}`);
  } finally {
    stub.stop(true);
  }
  mkdirSync(CACHE_DIR, { recursive: true });
  writeFileSync(out, JSON.stringify({ claudeCodeVersion: version, body } satisfies Captured));
  console.log(`captured Claude Code ${version}'s first request (${JSON.stringify(body).length} bytes) in ${out}`);
}

// ---- the replay ----

interface Step {
  name: string;
  api: "messages" | "completions";
  status: number;
  inputTokens: number | null;
  cachedTokens: number | null;
  firstTokenSeconds: number | null;
  seconds: number;
  text: string;
  error?: string;
}

type Message = { role: string; content: unknown };

/** One streamed /v1/messages request: status, usage from message_start, time to first delta. */
async function messages(base: string, name: string, body: Record<string, unknown>): Promise<Step> {
  const start = performance.now();
  const res = await fetch(`${base}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "local" },
    body: JSON.stringify({ ...body, stream: true, max_tokens: 32, temperature: 0 }),
    timeout: false,
  });
  if (!res.ok || !res.body) {
    return {
      name,
      api: "messages",
      status: res.status,
      inputTokens: null,
      cachedTokens: null,
      firstTokenSeconds: null,
      seconds: (performance.now() - start) / 1000,
      text: "",
      error: (await res.text()).slice(0, 300),
    };
  }
  let inputTokens: number | null = null;
  let cachedTokens: number | null = null;
  let first: number | null = null;
  let text = "";
  let buffer = "";
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    buffer += decoder.decode(chunk, { stream: true });
    let cut = buffer.indexOf("\n\n");
    while (cut >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      cut = buffer.indexOf("\n\n");
      const data = block.split("\n").find((l) => l.startsWith("data: "));
      if (!data) continue;
      const e = JSON.parse(data.slice(6)) as Record<string, unknown>;
      if (e.type === "message_start") {
        const u = (e.message as { usage: Record<string, number> }).usage;
        inputTokens = (u.input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0);
        cachedTokens = u.cache_read_input_tokens ?? 0;
      } else if (e.type === "content_block_delta") {
        first ??= performance.now();
        text +=
          (e.delta as { text?: string; partial_json?: string }).text ??
          (e.delta as { partial_json?: string }).partial_json ??
          "";
      }
    }
  }
  const end = performance.now();
  return {
    name,
    api: "messages",
    status: res.status,
    inputTokens,
    cachedTokens,
    firstTokenSeconds: first ? (first - start) / 1000 : null,
    seconds: (end - start) / 1000,
    text,
  };
}

/** One /v1/completions request with a text prompt (both servers). */
async function completion(base: string, name: string, prompt: string): Promise<Step> {
  const start = performance.now();
  const res = await fetch(`${base}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "default_model", prompt, max_tokens: 32, temperature: 0 }),
    timeout: false,
  });
  const seconds = (performance.now() - start) / 1000;
  const body = (await res.json().catch(() => ({}))) as {
    usage?: { prompt_tokens?: number; prompt_tokens_details?: { cached_tokens?: number } };
    choices?: Array<{ text?: string }>;
    error?: unknown;
  };
  return {
    name,
    api: "completions",
    status: res.status,
    inputTokens: body.usage?.prompt_tokens ?? null,
    cachedTokens: body.usage?.prompt_tokens_details?.cached_tokens ?? null,
    firstTokenSeconds: null,
    seconds,
    text: body.choices?.[0]?.text ?? "",
    error: res.ok ? undefined : JSON.stringify(body.error ?? body).slice(0, 300),
  };
}

/** An unrelated ~2K-token prompt, then a pause for the engine's idle warm-ups: what a first request pays once. */
async function warmUp(base: string, name: string): Promise<Step> {
  const text = Array.from({ length: 1800 }, (_, i) => WORDS[(i * 11 + (i >> 2)) % WORDS.length]).join(" ");
  const step = await completion(base, name, `Warm-up. ${text}`);
  await Bun.sleep(WARM_UP_PAUSE_MS);
  return step;
}

const WARM_UP_PAUSE_MS = 10_000;

function textOf(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content.map((b) => (b as { text?: string }).text ?? JSON.stringify(b)).join("\n");
}

/** The request as Phi-3 chat text: system blocks and tools, then the turns (for /v1/completions). */
function phi3Text(body: Record<string, unknown>): string {
  const system = textOf(body.system);
  const tools = JSON.stringify(body.tools ?? []);
  let out = `<|system|>\n${system}\n\nTools:\n${tools}<|end|>\n`;
  for (const m of body.messages as Message[]) out += `<|${m.role}|>\n${textOf(m.content)}<|end|>\n`;
  return `${out}<|assistant|>\n`;
}

function withMessages(body: Record<string, unknown>, messages: Message[]): Record<string, unknown> {
  return { ...body, messages };
}

/** The same request with another first user message (a second session): Claude Code's context blocks stay, the typed text changes. */
function secondSession(body: Record<string, unknown>, n: number): Record<string, unknown> {
  const msgs = structuredClone(body.messages) as Message[];
  const last = msgs.findLastIndex((m) => m.role === "user");
  const typed = `Session ${n}: explain what the file src/index.ts in this project does, briefly.`;
  const msg = msgs[last] as Message;
  if (Array.isArray(msg.content)) {
    const blocks = msg.content as Array<{ type: string; text?: string }>;
    const i = blocks.findLastIndex((b) => b.type === "text");
    if (i >= 0) blocks[i] = { ...blocks[i], type: "text", text: typed };
    else blocks.push({ type: "text", text: typed });
  } else msgs[last] = { role: "user", content: typed };
  return withMessages(body, msgs);
}

function followUp(body: Record<string, unknown>, answer: string): Record<string, unknown> {
  return withMessages(body, [
    ...(body.messages as Message[]),
    { role: "assistant", content: answer || "Hello! How can I help?" },
    { role: "user", content: "Now list the files in the current directory." },
  ]);
}

async function waitReady(url: string, proc: Subprocess, timeoutMs = 900_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (proc.exitCode !== null) throw new Error(`server exited (${proc.exitCode}) before it was ready`);
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not listening yet
    }
    await Bun.sleep(300);
  }
  throw new Error(`server at ${url} not ready in time`);
}

async function metric(base: string, name: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(" ").at(-1)) : Number.NaN;
}

interface Options {
  model: string;
  device: "cpu" | "gpu";
  servers: string[];
  request: string;
  python: string;
  outDir: string;
  concurrent: number;
  home: string;
  /** Tokens of a long text prompt sent after the restart (0: none). */
  long: number;
  /** Only turn 1, the same again and the restart. */
  quick: boolean;
  /** Restart at once after the last turn (no pause): only what the shutdown writes survives. */
  restartNow: boolean;
}

const WORDS =
  "the of and a to in is you that it he was for on are as with his they at be this have from or one had by word but not what all were we when your can said there use an each which she do how their if will up other about out many then them".split(
    " ",
  );

/** About `tokens` tokens of text; shrunk and sent again while the server says it is too long. */
async function longPrompt(base: string, tokens: number): Promise<Step> {
  let words = Math.round(tokens * 0.9);
  let step: Step | null = null;
  for (let attempt = 0; attempt < 4; attempt++) {
    const text = Array.from({ length: words }, (_, i) => WORDS[(i * 7 + (i >> 3)) % WORDS.length]).join(" ");
    step = await completion(base, `long prompt (~${tokens} tokens)`, text);
    if (step.status !== 400 || !step.error?.includes("too long")) return step;
    const m = /(\d+) tokens > (\d+)/.exec(step.error ?? "");
    words = m ? Math.floor(((words * Number(m[2])) / Number(m[1])) * 0.98) : Math.floor(words * 0.9);
  }
  return step as Step;
}

function startPensieve(o: Options, port: number, log: string): Subprocess {
  return Bun.spawn(
    [
      ...selfCommand(),
      "serve",
      "--model",
      o.model,
      "--port",
      String(port),
      ...(o.device === "cpu" ? ["--backend", "cpu"] : []),
    ],
    { stdout: "ignore", stderr: Bun.file(log), env: { ...process.env, PENSIEVE_HOME: o.home } },
  );
}

async function stop(proc: Subprocess): Promise<void> {
  proc.kill("SIGTERM");
  const done = await Promise.race([proc.exited.then(() => true), Bun.sleep(30_000).then(() => false)]);
  if (!done) proc.kill("SIGKILL");
  await proc.exited;
}

async function replayPensieve(
  o: Options,
  captured: Captured,
  log: (s: Step) => void,
): Promise<Record<string, unknown>> {
  const port = 7800;
  const base = `http://127.0.0.1:${port}`;
  let proc = startPensieve(o, port, join(o.outDir, "pensieve-claude-code.log"));
  await waitReady(`${base}/health`, proc);
  const health = await (await fetch(`${base}/health`)).json();
  const body = captured.body;
  // The first request of a fresh engine also builds kernels and cuDNN graphs; it is shown, then turn 1
  // runs on a warm engine, so that "a turn against turn 1" compares caching, not start-up.
  log(await warmUp(base, "warm-up (cold engine, unrelated prompt)"));
  const t1 = await messages(base, "turn 1", body);
  log(t1);
  log(await messages(base, "same again", body));
  const memoryLine = o.quick ? null : await moreTurns(o, base, body, t1.text, log);
  // Restart, after the pause a Claude Code user gives between turns: wait until the idle engine has
  // written the cache to disk, then stop and start again (--restart-now: no pause, the shutdown writes).
  const disk = await waitForDisk(base, o.restartNow ? 0 : DISK_WAIT_MS);
  console.log(`[pensieve] ${disk.line}`);
  const stopping = performance.now();
  await stop(proc);
  const stopSeconds = (performance.now() - stopping) / 1000;
  console.log(`[pensieve] stopped in ${stopSeconds.toFixed(2)} s`);
  proc = startPensieve(o, port, join(o.outDir, "pensieve-claude-code-restart.log"));
  await waitReady(`${base}/health`, proc);
  const kept = `${await metric(base, "pensieve_prefix_disk_files")} files, ${await metric(base, "pensieve_prefix_disk_bytes")} bytes`;
  console.log(`[pensieve] disk after the restart: ${kept}`);
  log(await warmUp(base, "after restart: warm-up (unrelated prompt)"));
  log(await messages(base, "after restart: turn 1", body));
  if (o.long > 0) log(await longPrompt(base, o.long));
  const peak = await metric(base, "pensieve_mlx_peak_memory_bytes");
  await stop(proc);
  return {
    health,
    prefixDiskFiles: disk.files,
    prefixDiskBytes: disk.bytes,
    prefixDiskWaitSeconds: disk.waitSeconds,
    prefixDiskPendingBytes: disk.pendingBytes,
    prefixDiskSkippedWrites: disk.skippedWrites,
    prefixDiskLine: disk.line,
    memoryLine,
    prefixDiskAfterRestart: kept,
    stopSeconds,
    peakMlxBytesAfterRestart: peak,
  };
}

/** Longest wait for the prefix cache to reach the disk before the restart. */
const DISK_WAIT_MS = 60_000;
/** Done when nothing is pending and the disk has not changed for this long (writing starts after 1 s idle). */
const DISK_STABLE_MS = 3_000;

/**
 * Polls /metrics until the engine has written what it will (nothing pending,
 * files and bytes unchanged for DISK_STABLE_MS), at most DISK_WAIT_MS.
 */
async function waitForDisk(base: string, maxMs: number) {
  const started = Date.now();
  let last = "";
  let stableSince = Date.now();
  let files = 0;
  let bytes = 0;
  let pendingBytes = 0;
  let skippedWrites = 0;
  for (let first = true; first || Date.now() - started < maxMs; first = false) {
    if (!first) await Bun.sleep(250);
    files = await metric(base, "pensieve_prefix_disk_files");
    bytes = await metric(base, "pensieve_prefix_disk_bytes");
    pendingBytes = await metric(base, "pensieve_prefix_disk_pending_bytes");
    skippedWrites = await metric(base, "pensieve_prefix_disk_skipped_writes");
    const now = `${files}:${bytes}:${pendingBytes}`;
    if (now !== last || pendingBytes > 0) stableSince = Date.now();
    last = now;
    if (Date.now() - stableSince >= DISK_STABLE_MS) break;
  }
  const waitSeconds = (Date.now() - started) / 1000;
  const line =
    `disk before the restart: ${files} files, ${bytes} bytes (waited ${waitSeconds.toFixed(1)} s, ` +
    `${pendingBytes} bytes still pending${skippedWrites > 0 ? `; ${skippedWrites} plans skipped: prefilling again is quicker than reading back here` : ""})`;
  return { files, bytes, pendingBytes, skippedWrites, waitSeconds, line };
}

const MEMORY_GAUGES = [
  "pensieve_mlx_active_memory_bytes",
  "pensieve_mlx_peak_memory_bytes",
  "pensieve_mlx_cache_memory_bytes",
  "pensieve_kv_reserved_bytes",
  "pensieve_kv_cache_bytes",
  "pensieve_prefix_cache_bytes",
  "pensieve_kv_budget_bytes",
  "pensieve_out_of_memory_failures",
  "pensieve_out_of_memory_requeued",
];

/** Polls Pensieve's /metrics while `work` runs: each gauge's largest value (none from a server without them). */
async function watchMemory<T>(base: string, work: Promise<T>): Promise<{ result: T; line: string | null }> {
  const most = new Map<string, number>();
  let done = false;
  const poll = (async () => {
    while (!done) {
      try {
        const text = await (await fetch(`${base}/metrics`)).text();
        for (const name of MEMORY_GAUGES) {
          const value = Number(
            text
              .split("\n")
              .find((l) => l.startsWith(`${name} `))
              ?.split(" ")
              .at(-1),
          );
          if (Number.isFinite(value)) most.set(name, Math.max(most.get(name) ?? 0, value));
        }
      } catch {
        // not Pensieve, or restarting
      }
      // The card's own count: what MLX's numbers miss (CUDA context, libraries' workspaces, loaded kernels).
      try {
        // Spawned, not run synchronously: the streams being timed share this event loop.
        const smi = Bun.spawn(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], {
          stdout: "pipe",
          stderr: "ignore",
        });
        const usedMiB = Number.parseInt((await new Response(smi.stdout).text()).trim().split("\n")[0] ?? "", 10);
        if ((await smi.exited) === 0 && Number.isFinite(usedMiB)) {
          most.set("card", Math.max(most.get("card") ?? 0, usedMiB * 2 ** 20));
        }
      } catch {
        // no nvidia-smi (the CPU)
      }
      await Bun.sleep(250);
    }
  })();
  const result = await work.finally(() => {
    done = true;
  });
  await poll;
  if (!MEMORY_GAUGES.some((n) => most.has(n))) return { result, line: null };
  const gib = (n: string) => `${((most.get(n) ?? 0) / 2 ** 30).toFixed(1)} GiB`;
  const line =
    `memory while the concurrent sessions ran (largest of /metrics every 250 ms): MLX active ${gib(MEMORY_GAUGES[0] as string)}, ` +
    `peak ${gib(MEMORY_GAUGES[1] as string)}, buffer cache ${gib(MEMORY_GAUGES[2] as string)}; KV reserved ${gib(MEMORY_GAUGES[3] as string)}, ` +
    `in caches ${gib(MEMORY_GAUGES[4] as string)}, cached prefixes ${gib(MEMORY_GAUGES[5] as string)}, budget ${gib(MEMORY_GAUGES[6] as string)}; ` +
    `out of memory ${most.get(MEMORY_GAUGES[7] as string) ?? 0} times, ${most.get(MEMORY_GAUGES[8] as string) ?? 0} sequences sent back to recompute` +
    (most.has("card") ? `; the card's used memory (nvidia-smi, all processes) ${gib("card")}` : "");
  return { result, line };
}

/** The follow-up, a second session, N sessions at once, and the text turns; returns the memory line (Pensieve). */
async function moreTurns(
  o: Options,
  base: string,
  body: Record<string, unknown>,
  answer: string,
  log: (s: Step) => void,
): Promise<string | null> {
  log(await messages(base, "follow-up", followUp(body, answer)));
  log(await messages(base, "second session", secondSession(body, 2)));
  const { result: together, line } = await watchMemory(
    base,
    Promise.all(
      Array.from({ length: o.concurrent }, (_, i) =>
        messages(base, `concurrent ${i + 1}/${o.concurrent}`, secondSession(body, 100 + i)),
      ),
    ),
  );
  for (const s of together) log(s);
  if (line) console.log(`[pensieve] ${line}`);
  // The same turns as text over /v1/completions, for the side-by-side with mlx_lm.server.
  await textTurns(base, body, log);
  return line;
}

/** Turn 1, the same again and a follow-up as rendered Phi-3 text over /v1/completions (either server). */
async function textTurns(base: string, body: Record<string, unknown>, log: (s: Step) => void) {
  const text = phi3Text(body);
  log(await completion(base, "text: turn 1", text));
  log(await completion(base, "text: same again", text));
  const followUpText = `${text}Hello! How can I help?<|end|>\n<|user|>\nNow list the files.<|end|>\n<|assistant|>\n`;
  log(await completion(base, "text: follow-up", followUpText));
}

async function replayMlxLm(o: Options, captured: Captured, log: (s: Step) => void): Promise<void> {
  const port = 7801;
  const base = `http://127.0.0.1:${port}`;
  const proc = Bun.spawn(
    [o.python, "-m", "mlx_lm", "server", "--model", o.model, "--port", String(port), "--log-level", "WARNING"],
    {
      stdout: "ignore",
      stderr: Bun.file(join(o.outDir, "mlx-lm-claude-code.log")),
    },
  );
  try {
    await waitReady(`${base}/v1/models`, proc);
    await textTurns(base, captured.body, log);
  } finally {
    await stop(proc);
  }
}

export async function benchClaudeCode(argv: string[]): Promise<void> {
  const get = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  if (argv[0] === "capture") return capture(get("out") ?? REQUEST_FILE);
  const model = get("model");
  if (!model)
    throw new Error(
      "usage: bun run bench claude-code --model MODEL_FOLDER [--device gpu] [--servers pensieve,mlx-lm] [--quick] [--restart-now]",
    );
  const o: Options = {
    model,
    device: get("device") === "gpu" ? "gpu" : "cpu",
    servers: (get("servers") ?? "pensieve,mlx-lm").split(","),
    request: get("request") ?? REQUEST_FILE,
    python: get("python") ?? "python3",
    outDir: get("out-dir") ?? join(BENCH_DIR, "results"),
    concurrent: Number(get("concurrent") ?? 8),
    home: get("home") ?? join(CACHE_DIR, "claude-code-home"),
    long: Number(get("long") ?? 0),
    quick: argv.includes("--quick"),
    restartNow: argv.includes("--restart-now"),
  };
  mkdirSync(o.outDir, { recursive: true });
  const captured = JSON.parse(readFileSync(o.request, "utf8")) as Captured;
  const results: Record<string, Step[]> = {};
  const extra: Record<string, unknown> = {};
  for (const server of o.servers) {
    const steps: Step[] = [];
    results[server] = steps;
    const log = (s: Step) => {
      steps.push(s);
      console.log(
        `[${server}] ${s.name}: ${s.status} in ${s.seconds.toFixed(2)} s` +
          (s.firstTokenSeconds !== null ? ` (first token ${s.firstTokenSeconds.toFixed(2)} s)` : "") +
          `, input ${s.inputTokens ?? "?"}, cached ${s.cachedTokens ?? "?"}${s.error ? `: ${s.error}` : ""}`,
      );
    };
    try {
      if (server === "pensieve") extra.pensieve = await replayPensieve(o, captured, log);
      else if (server === "mlx-lm") await replayMlxLm(o, captured, log);
      else throw new Error(`unknown server ${server}`);
    } catch (e) {
      console.error(`[${server}] failed: ${(e as Error).message}`);
      extra[`${server}Error`] = (e as Error).message;
    }
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const report = {
    bench: "claude-code",
    date: new Date().toISOString(),
    gpu: gpuName(),
    machine: machine(),
    claudeCodeVersion: captured.claudeCodeVersion,
    model: o.model,
    device: o.device,
    mlxLm: MLX_LM_VERSION,
    /** Pensieve's KV storage for this run (PENSIEVE_KV_BITS; unset: the default). */
    kvBits: process.env.PENSIEVE_KV_BITS ?? "default",
    command: `bun run bench claude-code ${argv.join(" ")}`,
    results,
    extra,
  };
  const base = join(o.outDir, `claude-code-${o.device}-${stamp}`);
  writeFileSync(`${base}.json`, JSON.stringify(report, null, 2));
  const rows = Object.entries(results).flatMap(([server, steps]) =>
    steps.map(
      (s) =>
        `| ${server} | ${s.name} | ${s.api} | ${s.status} | ${s.inputTokens ?? "–"} | ${s.cachedTokens ?? "–"} | ${s.firstTokenSeconds?.toFixed(2) ?? "–"} | ${s.seconds.toFixed(2)} |`,
    ),
  );
  writeFileSync(
    `${base}.md`,
    [
      `# Claude Code replay (${o.device}${report.gpu ? `, ${report.gpu}` : ""}, Pensieve KV ${report.kvBits})`,
      "",
      `Claude Code ${captured.claudeCodeVersion}'s first request, replayed with max_tokens 32, greedy; model ${o.model}; default settings.`,
      `Command: \`${report.command}\``,
      "",
      "| server | step | API | status | input tokens | cached | first token s | total s |",
      "|---|---|---|---:|---:|---:|---:|---:|",
      ...rows,
      "",
      ...(typeof (extra.pensieve as { prefixDiskLine?: string } | undefined)?.prefixDiskLine === "string"
        ? [`Pensieve ${(extra.pensieve as { prefixDiskLine: string }).prefixDiskLine}.`, ""]
        : []),
      ...(typeof (extra.pensieve as { memoryLine?: string } | undefined)?.memoryLine === "string"
        ? [`Pensieve ${(extra.pensieve as { memoryLine: string }).memoryLine}.`, ""]
        : []),
    ].join("\n"),
  );
  console.log(`wrote ${base}.json and .md`);
}
