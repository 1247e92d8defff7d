// `bun run bench soak`: many requests against one `pensieve serve` process over
// the OpenAI, Anthropic and WebSocket routes, streaming and not, with tools and
// JSON mode, ~30% abandoned mid-stream, and concurrency swinging up to 2× the
// engine's maxConcurrent (so the queue fills and 429s come back). Samples both
// processes' resident memory, MLX active memory, live MLX handles and open
// sequences over time (from /metrics), and passes when, after the run and an
// idle second, they are back within 5% of the post-warm-up baseline, with no
// 5xx and no hung request (open sequences and streams: back to zero). The
// warm-up is every route and feature once, then a fifth of the run's mix (at
// least 100 requests) so that garbage-collected heaps reach their working
// size. Writes JSON, markdown and a PNG chart.
//
//   bun run bench soak [--requests 1000] [--max-concurrent 4] [--queue-size 2] [--model PATH] [--seed 1] [--hang-ms 60000]
//
// Over 400 lines: one procedure (workload, its three clients, sampling, the
// checks, the report) that reads top to bottom; the suite's test imports it.
import { mkdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { REPO_ROOT, selfCommand } from "../src/paths";
import { renderTimeSeriesPng } from "./chart";
import { machine } from "./peers";

export interface SoakOptions {
  requests: number;
  maxConcurrent: number;
  queueSize: number;
  model: string;
  seed: number;
  /** Fraction of requests the client abandons mid-stream. */
  abandon: number;
  /** A request not answered in this time counts as hung. */
  hangMs: number;
  sampleMs: number;
  /** Relative tolerance of the memory checks. */
  tolerance: number;
  /** Relative tolerance for resident memory (the suite's short soak uses a wider one: see its test). */
  rssTolerance: number;
  /** The idle time before the baseline and the final state are read (the issue's "idle second"). */
  idleMs: number;
  /** Each request's max_tokens is drawn from this range. */
  maxTokens: [number, number];
  log: (line: string) => void;
}

export const DEFAULT_SOAK: SoakOptions = {
  requests: 1000,
  maxConcurrent: 4,
  queueSize: 2,
  model: join(REPO_ROOT, ".pensieve", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
  seed: 1,
  abandon: 0.3,
  hangMs: 60_000,
  sampleMs: 250,
  tolerance: 0.05,
  rssTolerance: 0.05,
  maxTokens: [4, 32],
  idleMs: 1000,
  log: console.log,
};

export interface Sample {
  ms: number;
  serverRssBytes: number;
  engineRssBytes: number;
  mlxActiveBytes: number;
  prefixCacheBytes: number;
  liveHandles: number;
  openSequences: number;
  openStreams: number;
}

type Route = "openai" | "anthropic" | "ws";

interface Spec {
  route: Route;
  stream: boolean;
  feature: "plain" | "tools" | "json";
  abandonAfterChunks: number | null;
  maxTokens: number;
  prompt: string;
}

/** When a request's answer arrived, in ms from its start: tells a hang (nothing for long) from a slow stream. */
interface Timing {
  /** Response headers (HTTP) or the socket's open (WebSocket). */
  headersMs: number | null;
  /** Body chunks with data (HTTP) or deltas (WebSocket). */
  chunks: number;
  /**
   * SSE keep-alive comments: the server sends one every 10 s until the first
   * token, so a request stuck in the engine's queue still gets bytes. They do
   * not count as chunks (nor for the times below).
   */
  keepAlives: number;
  firstChunkMs: number | null;
  lastChunkMs: number | null;
  /** The longest wait between two chunks (or from the headers to the first). */
  maxGapMs: number;
}

interface Outcome extends Timing {
  spec: Spec;
  status: number;
  /** The error's text for a 5xx. */
  error?: string;
  abandoned: boolean;
  hung: boolean;
  ms: number;
  /** For a hung request: the server's state when the hang limit struck. */
  atHang?: Pick<Sample, "openSequences" | "openStreams">;
}

type Answer = Omit<Outcome, "spec" | "ms" | keyof Timing | "atHang">;

function newTiming(): Timing & { start: number; chunk(): void; keepAlive(): void; headers(): void } {
  const start = performance.now();
  let previous: number | null = null;
  const t = {
    start,
    headersMs: null as number | null,
    chunks: 0,
    keepAlives: 0,
    firstChunkMs: null as number | null,
    lastChunkMs: null as number | null,
    maxGapMs: 0,
    headers() {
      t.headersMs = performance.now() - start;
      previous = t.headersMs;
    },
    keepAlive() {
      t.keepAlives++;
    },
    chunk() {
      const now = performance.now() - start;
      t.chunks++;
      t.firstChunkMs ??= now;
      t.maxGapMs = Math.max(t.maxGapMs, now - (previous ?? 0));
      t.lastChunkMs = now;
      previous = now;
    },
  };
  return t;
}

function timingOf(t: Timing): Timing {
  return {
    headersMs: t.headersMs,
    chunks: t.chunks,
    keepAlives: t.keepAlives,
    firstChunkMs: t.firstChunkMs,
    lastChunkMs: t.lastChunkMs,
    maxGapMs: Math.round(t.maxGapMs),
  };
}

/** One request's record in the results: what it was, how it ended, and when its chunks came. */
export type RequestRecord = Omit<Outcome, "spec"> & Pick<Spec, "route" | "stream" | "feature" | "maxTokens">;

export interface SoakResult {
  ok: boolean;
  failures: string[];
  durationMs: number;
  /** The hung requests, then the slowest others (by duration), with their chunk times. */
  slowest: RequestRecord[];
  /** The machine's 1-minute load average at the start and the end of the run. */
  loadAverage: [number, number];
  /**
   * Where the time went, means in ms over the run: the server's own measures
   * (time to first token and engine queue wait count from the prompt's
   * hand-over to the engine, so they leave out prompt building) beside the
   * client's first chunk of a streamed answer.
   */
  meanMs: Record<string, number>;
  counts: Record<string, number>;
  byRoute: Record<string, Record<string, number>>;
  baseline: Sample;
  final: Sample;
  samples: Sample[];
}

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TOPICS = [
  "the sea",
  "a lighthouse",
  "bread",
  "winter",
  "a robot",
  "the moon",
  "tea",
  "a library",
  "rain",
  "bees",
];
const SYSTEM = "You are a helpful assistant. Keep answers short. ".repeat(8);
const WEATHER_TOOL = {
  name: "get_weather",
  description: "Current weather for a city",
  schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

function workload(o: SoakOptions): Spec[] {
  const rnd = prng(o.seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)] as T;
  return Array.from({ length: o.requests }, (_, i) => {
    const route = pick<Route>(["openai", "openai", "anthropic", "anthropic", "ws"]);
    const stream = route === "ws" || rnd() < 0.6;
    const f = rnd();
    const feature = f < 0.2 ? "tools" : f < 0.4 && route !== "anthropic" ? "json" : "plain";
    const abandonAfterChunks = rnd() < o.abandon ? 1 + Math.floor(rnd() * 3) : null;
    const topic = pick(TOPICS);
    const prompt =
      feature === "tools"
        ? `What is the weather in ${pick(["Paris", "Lima", "Oslo", "Kyoto"])}?`
        : feature === "json"
          ? `Describe ${topic} as a JSON object with a name and a color.`
          : `Request ${i}: write two sentences about ${topic}.`;
    const [lo, hi] = o.maxTokens;
    return { route, stream, feature, abandonAfterChunks, maxTokens: lo + Math.floor(rnd() * (hi - lo + 1)), prompt };
  });
}

function openaiBody(s: Spec) {
  return {
    messages: [
      { role: "system", content: SYSTEM },
      { role: "user", content: s.prompt },
    ],
    max_tokens: s.maxTokens,
    stream: s.stream,
    temperature: 0.7,
    seed: 1,
    ...(s.feature === "json" ? { response_format: { type: "json_object" } } : {}),
    ...(s.feature === "tools"
      ? {
          tools: [
            {
              type: "function",
              function: {
                name: WEATHER_TOOL.name,
                description: WEATHER_TOOL.description,
                parameters: WEATHER_TOOL.schema,
              },
            },
          ],
        }
      : {}),
  };
}

function anthropicBody(s: Spec) {
  return {
    model: "soak",
    system: SYSTEM,
    messages: [{ role: "user", content: s.prompt }],
    max_tokens: s.maxTokens,
    stream: s.stream,
    temperature: 0.7,
    ...(s.feature === "tools"
      ? {
          tools: [
            { name: WEATHER_TOOL.name, description: WEATHER_TOOL.description, input_schema: WEATHER_TOOL.schema },
          ],
        }
      : {}),
  };
}

/** Reads a response, abandoning it (abort) after `chunks` chunks when asked. */
async function consume(
  res: Response,
  abandonAfter: number | null,
  abort: AbortController,
  timing: { chunk(): void; keepAlive(): void },
): Promise<boolean> {
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let chunks = 0;
  try {
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      // Only SSE comment lines (": keep-alive"): the server is waiting for the first token.
      const text = decoder.decode(r.value, { stream: true });
      if (/^(?:\s*:[^\n]*(?:\n|$))+\s*$/.test(text)) timing.keepAlive();
      else timing.chunk();
      if (abandonAfter !== null && ++chunks >= abandonAfter) {
        abort.abort();
        return true;
      }
    }
  } catch {
    if (abort.signal.aborted) return true;
    throw new Error("the response broke off");
  }
  return false;
}

async function httpRequest(base: string, s: Spec, hangMs: number): Promise<Omit<Outcome, "spec" | "ms">> {
  const timing = newTiming();
  const answer = (a: Answer) => ({ ...a, ...timingOf(timing) });
  const abort = new AbortController();
  const path = s.route === "openai" ? "/v1/chat/completions" : "/v1/messages";
  const body = s.route === "openai" ? openaiBody(s) : anthropicBody(s);
  let hung = false;
  const timer = setTimeout(() => {
    hung = true;
    abort.abort();
  }, hangMs);
  try {
    // A non-streaming request is abandoned by hanging up before its answer.
    if (!s.stream && s.abandonAfterChunks !== null) setTimeout(() => abort.abort(), 20 + s.abandonAfterChunks * 40);
    const res = await fetch(`${base}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: abort.signal,
    });
    timing.headers();
    if (res.status >= 500) return answer({ status: res.status, abandoned: false, hung, error: await res.text() });
    const abandoned = await consume(res, s.stream ? s.abandonAfterChunks : null, abort, timing);
    return answer({ status: res.status, abandoned, hung });
  } catch (e) {
    if (hung) return answer({ status: 0, abandoned: false, hung: true });
    if (abort.signal.aborted) return answer({ status: 0, abandoned: true, hung: false });
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** One conversation on its own socket; abandoning closes the socket mid-stream. */
function wsRequest(base: string, s: Spec, hangMs: number): Promise<Omit<Outcome, "spec" | "ms">> {
  return new Promise((resolve) => {
    const timing = newTiming();
    const socket = new WebSocket(`${base.replace(/^http/, "ws")}/v1/ws`);
    let deltas = 0;
    let settled = false;
    const done = (r: Answer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.close();
      resolve({ ...r, ...timingOf(timing) });
    };
    const timer = setTimeout(() => done({ status: 0, abandoned: false, hung: true }), hangMs);
    socket.onopen = () => {
      timing.headers();
      const { stream: _stream, ...body } = openaiBody(s);
      socket.send(JSON.stringify({ type: "chat", id: "soak", ...body }));
    };
    socket.onmessage = (event) => {
      const m = JSON.parse(String(event.data)) as { type: string; status?: number; message?: string };
      if (m.type === "delta") timing.chunk();
      if (m.type === "delta" && s.abandonAfterChunks !== null && ++deltas >= s.abandonAfterChunks)
        done({ status: 200, abandoned: true, hung: false });
      else if (m.type === "done") done({ status: 200, abandoned: false, hung: false });
      else if (m.type === "error") done({ status: m.status ?? 500, abandoned: false, hung: false, error: m.message });
    };
    socket.onerror = () => done({ status: 599, abandoned: false, hung: false });
  });
}

/** Runs the requests, concurrency swinging block by block between 1 and 2× maxConcurrent. */
function drive(base: string, specs: Spec[], o: SoakOptions, progress: (done: number) => void): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  const limitAt = (i: number) => 1 + ((Math.floor(i / 25) * 5) % (2 * o.maxConcurrent));
  let next = 0;
  let inFlight = 0;
  return new Promise<Outcome[]>((resolve, reject) => {
    const launch = () => {
      while (next < specs.length && inFlight < limitAt(next)) {
        const s = specs[next++] as Spec;
        inFlight++;
        const t = performance.now();
        (s.route === "ws" ? wsRequest(base, s, o.hangMs) : httpRequest(base, s, o.hangMs))
          .then(async (r) => {
            const ms = performance.now() - t;
            // What the server holds open when the hang limit strikes: a stream the engine already let go of is lost.
            const atHang = r.hung
              ? await sample(base, t).then(
                  (x) => ({ openSequences: x.openSequences, openStreams: x.openStreams }),
                  () => undefined,
                )
              : undefined;
            outcomes.push({ spec: s, ...r, ms, ...(atHang ? { atHang } : {}) });
            progress(outcomes.length);
          }, reject)
          .finally(() => {
            inFlight--;
            if (outcomes.length === specs.length) resolve(outcomes);
            else launch();
          });
      }
    };
    if (specs.length === 0) resolve(outcomes);
    else launch();
  });
}

const SERVER_TIMES = {
  timeToFirstToken: "pensieve_time_to_first_token_seconds",
  engineQueueWait: "pensieve_queue_wait_seconds",
  interTokenLatency: "pensieve_inter_token_latency_seconds",
  requestDuration: "pensieve_request_duration_seconds",
} as const;

/** The server's latency histograms' sums and counts (seconds), to take means over the run from. */
async function serverHistograms(base: string): Promise<Record<string, { sum: number; count: number }>> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const read = (name: string) => Number(text.match(new RegExp(`^${name} (\\S+)$`, "m"))?.[1] ?? Number.NaN);
  const out: Record<string, { sum: number; count: number }> = {};
  for (const [key, name] of Object.entries(SERVER_TIMES)) {
    out[key] = { sum: read(`${name}_sum`), count: read(`${name}_count`) };
  }
  return out;
}

async function sample(base: string, t0: number): Promise<Sample> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const value = (name: string) => {
    const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
    return line ? Number(line.split(" ").at(-1)) : Number.NaN;
  };
  return {
    ms: Math.round(performance.now() - t0),
    serverRssBytes: value("pensieve_server_resident_bytes"),
    // Less MLX's buffer cache: freed buffers kept for reuse (capped, and released after 5 s idle), not a leak.
    engineRssBytes: value("pensieve_engine_resident_bytes") - (value("pensieve_mlx_cache_memory_bytes") || 0),
    mlxActiveBytes: value("pensieve_mlx_active_memory_bytes"),
    prefixCacheBytes: value("pensieve_prefix_cache_bytes"),
    liveHandles: value("pensieve_mlx_live_handles"),
    openSequences:
      value("pensieve_active_sequences") + value("pensieve_prefilling_sequences") + value("pensieve_queue_depth"),
    openStreams: value("pensieve_open_streams"),
  };
}

/**
 * The state after an idle second: the median of four samples in its last 800 ms
 * (resident memory of a garbage-collected process moves by several percent
 * from one collection to the next; one sample would measure that).
 */
async function idleSecond(base: string, t0: number, idleMs: number): Promise<Sample> {
  const samples: Sample[] = [];
  await Bun.sleep(idleMs / 5);
  for (let i = 0; i < 4; i++) {
    await Bun.sleep(idleMs / 5);
    samples.push(await sample(base, t0));
  }
  const median = (key: keyof Sample) => {
    const sorted = samples.map((s) => s[key]).sort((a, b) => a - b);
    return ((sorted[1] as number) + (sorted[2] as number)) / 2;
  };
  const last = samples.at(-1) as Sample;
  return {
    ...last,
    serverRssBytes: median("serverRssBytes"),
    engineRssBytes: median("engineRssBytes"),
    mlxActiveBytes: median("mlxActiveBytes"),
    liveHandles: median("liveHandles"),
  };
}

function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

export async function startSoakServer(o: SoakOptions): Promise<{ base: string; proc: Subprocess }> {
  const port = freePort();
  const proc = Bun.spawn(
    [
      ...selfCommand(),
      "serve",
      "--port",
      String(port),
      "--model",
      o.model,
      "--backend",
      "cpu",
      "--max-concurrent",
      String(o.maxConcurrent),
      "--queue-size",
      String(o.queueSize),
      "--log-level",
      "warn",
      // Off: an LRU that fills as prompts come would hide a leak in its growth (see the note in the results).
      "--prefix-cache-bytes",
      "0",
    ],
    { cwd: REPO_ROOT, stdin: "ignore", stdout: "ignore", stderr: "inherit" },
  );
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    if (proc.exitCode !== null) throw new Error(`the server exited (${proc.exitCode})`);
    const ok = await fetch(`${base}/health`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return { base, proc };
    await Bun.sleep(100);
  }
  proc.kill();
  throw new Error("the server did not become healthy");
}

export async function runSoak(base: string, options: Partial<SoakOptions> = {}): Promise<SoakResult> {
  const o = { ...DEFAULT_SOAK, ...options };
  const specs = workload(o);
  const t0 = performance.now();
  const samples: Sample[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      samples.push(await sample(base, t0));
      await Bun.sleep(o.sampleMs);
    }
  })();

  // Warm-up: every route and feature once, so that lazily built things (templates, grammars, the
  // engine's JSON tokenizer tables, kernel shapes) exist before the baseline.
  const warm = specs.slice(0, 0);
  for (const route of ["openai", "anthropic", "ws"] as const)
    for (const feature of ["plain", "tools", "json"] as const)
      for (const stream of [true, false])
        warm.push({
          route,
          feature,
          stream,
          abandonAfterChunks: null,
          maxTokens: o.maxTokens[1],
          prompt: `Warm up: ${feature}.`,
        });
  for (const s of warm) await (s.route === "ws" ? wsRequest(base, s, o.hangMs) : httpRequest(base, s, o.hangMs));
  // Then a slice of the mixed load itself (another seed), so that both processes' heaps have grown to
  // their working size: a leak is growth over the run, not the first expansion of a garbage-collected heap.
  const mixed = workload({ ...o, requests: Math.max(100, Math.round(o.requests / 5)), seed: o.seed + 1000 });
  await drive(base, mixed, o, () => {});
  const baseline = await idleSecond(base, t0, o.idleMs);
  o.log(`baseline after warm-up: ${JSON.stringify(baseline)}`);

  const loadAtStart = loadavg()[0] as number;
  const histogramsBefore = await serverHistograms(base);
  const started = performance.now();
  const outcomes = await drive(base, specs, o, (n) => {
    if (n % 100 === 0) o.log(`${n}/${specs.length} requests`);
  });
  const durationMs = performance.now() - started;
  const final = await idleSecond(base, t0, o.idleMs);
  const histogramsAfter = await serverHistograms(base);
  sampling = false;
  await sampler;
  samples.push(final);

  const counts: Record<string, number> = { requests: outcomes.length, abandoned: 0, hung: 0, "5xx": 0, "429": 0 };
  const byRoute: Record<string, Record<string, number>> = {};
  for (const r of outcomes) {
    if (r.abandoned) counts.abandoned = (counts.abandoned ?? 0) + 1;
    if (r.hung) counts.hung = (counts.hung ?? 0) + 1;
    if (r.status >= 500) counts["5xx"] = (counts["5xx"] ?? 0) + 1;
    if (r.status === 429) counts["429"] = (counts["429"] ?? 0) + 1;
    const key = `${r.spec.route}${r.spec.stream ? " stream" : ""}`;
    const route = byRoute[key] ?? {};
    byRoute[key] = route;
    const status = r.abandoned ? "abandoned" : String(r.status);
    route[status] = (route[status] ?? 0) + 1;
  }

  const failures: string[] = [];
  if (counts["5xx"])
    failures.push(
      `${counts["5xx"]} responses with a 5xx status: ${outcomes
        .filter((r) => r.status >= 500)
        .slice(0, 3)
        .map((r) => `${r.spec.route} ${r.status} ${r.error?.slice(0, 300)}`)
        .join("; ")}`,
    );
  if (counts.hung) {
    // Silent for the last 10 s before the limit: stuck; chunks still coming: a slow stream, not a lost one.
    const silent = (r: Outcome) => o.hangMs - (r.lastChunkMs ?? r.headersMs ?? 0);
    const stuck = outcomes.filter((r) => r.hung && silent(r) > 10_000).length;
    failures.push(
      `${counts.hung} hung requests (${stuck} silent for over 10 s before the limit, ${counts.hung - stuck} still streaming)`,
    );
  }
  if (final.openSequences !== 0) failures.push(`${final.openSequences} sequences still open`);
  if (final.openStreams !== 0) failures.push(`${final.openStreams} streams still open`);
  const within = (name: string, before: number, after: number, tolerance = o.tolerance) => {
    if (!(after <= before * (1 + tolerance)))
      failures.push(`${name}: ${after} after vs ${before} at the baseline (over ${tolerance * 100}%)`);
  };
  within("server resident memory", baseline.serverRssBytes, final.serverRssBytes, o.rssTolerance);
  within("engine resident memory", baseline.engineRssBytes, final.engineRssBytes, o.rssTolerance);
  within("MLX active memory", baseline.mlxActiveBytes, final.mlxActiveBytes);
  within("live MLX handles", baseline.liveHandles, final.liveHandles);
  const record = (r: Outcome): RequestRecord => {
    const { spec, ...rest } = r;
    return { route: spec.route, stream: spec.stream, feature: spec.feature, maxTokens: spec.maxTokens, ...rest };
  };
  const slowest = [
    ...outcomes.filter((r) => r.hung),
    ...outcomes
      .filter((r) => !r.hung)
      .sort((a, b) => b.ms - a.ms)
      .slice(0, 10),
  ].map(record);
  const loadAverage: [number, number] = [loadAtStart, loadavg()[0] as number];
  const meanMs: Record<string, number> = {};
  for (const key of Object.keys(SERVER_TIMES)) {
    const a = histogramsBefore[key] as { sum: number; count: number };
    const b = histogramsAfter[key] as { sum: number; count: number };
    meanMs[`server ${key}`] = Math.round(((b.sum - a.sum) / Math.max(1, b.count - a.count)) * 1000);
  }
  const streamed = outcomes.filter((r) => r.spec.stream && r.status === 200 && r.firstChunkMs !== null);
  meanMs["client first chunk (streams)"] = Math.round(
    streamed.reduce((n, r) => n + (r.firstChunkMs as number), 0) / Math.max(1, streamed.length),
  );
  meanMs["client total (answered 200)"] = Math.round(
    outcomes.filter((r) => r.status === 200).reduce((n, r) => n + r.ms, 0) /
      Math.max(1, outcomes.filter((r) => r.status === 200).length),
  );
  return {
    ok: failures.length === 0,
    failures,
    durationMs,
    slowest,
    loadAverage,
    meanMs,
    counts,
    byRoute,
    baseline,
    final,
    samples,
  };
}

function parseOptions(argv: string[]): SoakOptions {
  const get = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const num = (name: string, fallback: number) => Number(get(name) ?? fallback);
  return {
    ...DEFAULT_SOAK,
    requests: num("requests", DEFAULT_SOAK.requests),
    maxConcurrent: num("max-concurrent", DEFAULT_SOAK.maxConcurrent),
    queueSize: num("queue-size", DEFAULT_SOAK.queueSize),
    seed: num("seed", DEFAULT_SOAK.seed),
    hangMs: num("hang-ms", DEFAULT_SOAK.hangMs),
    model: get("model") ?? DEFAULT_SOAK.model,
  };
}

export async function benchSoak(argv: string[]): Promise<void> {
  const o = parseOptions(argv);
  const { base, proc } = await startSoakServer(o);
  let result: SoakResult;
  try {
    result = await runSoak(base, o);
  } finally {
    proc.kill("SIGTERM");
    await proc.exited;
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const dir = join(REPO_ROOT, "bench", "results");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `soak-cpu-${stamp}`);
  const command = `bun run bench soak ${argv.join(" ")}`.trim();
  writeFileSync(
    `${file}.json`,
    `${JSON.stringify({ benchmark: "soak", date: new Date().toISOString(), command, machine: machine(), options: { ...o, log: undefined }, ...result }, null, 2)}\n`,
  );
  const MiB = (b: number) => (b / 2 ** 20).toFixed(1);
  const row = (name: string, f: (s: Sample) => number, unit: (n: number) => string = String) =>
    `| ${name} | ${unit(f(result.baseline))} | ${unit(f(result.final))} | ${unit(Math.max(...result.samples.map(f)))} |`;
  const lines = [
    `# Soak, ${new Date().toISOString().slice(0, 10)} (CPU): ${result.ok ? "PASS" : "FAIL"}`,
    "",
    `Command: \`${command}\`. Model: ${o.model}. maxConcurrent ${o.maxConcurrent}, queue ${o.queueSize}, concurrency 1..${2 * o.maxConcurrent}, prefix cache off.`,
    `Duration ${(result.durationMs / 1000).toFixed(1)} s. Counts: ${JSON.stringify(result.counts)}. Load average (1 min) ${result.loadAverage.map((l) => l.toFixed(1)).join(" at the start, ")} at the end.`,
    "",
    "| measure | baseline (after warm-up + 1 s idle) | after the run + 1 s idle | peak during the run |",
    "|---|---:|---:|---:|",
    row("server RSS MiB", (s) => s.serverRssBytes, MiB),
    row("engine RSS MiB", (s) => s.engineRssBytes, MiB),
    row("MLX active MiB", (s) => s.mlxActiveBytes, MiB),
    row("prefix cache MiB", (s) => s.prefixCacheBytes, MiB),
    row("live MLX handles", (s) => s.liveHandles),
    row("open sequences", (s) => s.openSequences),
    row("open streams", (s) => s.openStreams),
    "",
    "| route | outcomes |",
    "|---|---|",
    ...Object.entries(result.byRoute).map(([route, c]) => `| ${route} | ${JSON.stringify(c)} |`),
    "",
    ...(result.failures.length ? ["Failures:", ...result.failures.map((f) => `- ${f}`), ""] : []),
    `Where the time went (means, ms): ${Object.entries(result.meanMs)
      .map(([k, v]) => `${k} ${v}`)
      .join(", ")}.`,
    "",
    "Hung requests, then the slowest others (ms from the request's start; gap: the longest wait for a chunk):",
    "",
    "| route | feature | max_tokens | outcome | total | headers | chunks | keep-alives | first chunk | last chunk | longest gap | open at the hang |",
    "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ...result.slowest.map((r) => {
      const ms = (n: number | null) => (n === null ? "-" : String(Math.round(n)));
      const outcome = r.hung ? "HUNG" : r.abandoned ? "abandoned" : String(r.status);
      const open = r.atHang ? `${r.atHang.openSequences} sequences, ${r.atHang.openStreams} streams` : "";
      return `| ${r.route}${r.stream ? " stream" : ""} | ${r.feature} | ${r.maxTokens} | ${outcome} | ${ms(r.ms)} | ${ms(r.headersMs)} | ${r.chunks} | ${r.keepAlives} | ${ms(r.firstChunkMs)} | ${ms(r.lastChunkMs)} | ${r.maxGapMs} | ${open} |`;
    }),
    "",
  ];
  writeFileSync(`${file}.md`, lines.join("\n"));
  const png = await renderTimeSeriesPng(
    [
      { title: "resident memory (MiB)", unit: 2 ** 20, keys: ["serverRssBytes", "engineRssBytes"] },
      { title: "MLX memory (MiB)", unit: 2 ** 20, keys: ["mlxActiveBytes", "prefixCacheBytes"] },
      { title: "live handles, open sequences", unit: 1, keys: ["liveHandles", "openSequences", "openStreams"] },
    ],
    result.samples as unknown as Array<Record<string, number>>,
    `${file}.png`,
  );
  console.log(lines.join("\n"));
  console.log(`results: ${file}.json${png ? `, chart ${png}` : ""}`);
  if (!result.ok) process.exitCode = 1;
}
