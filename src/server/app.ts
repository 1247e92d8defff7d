// The HTTP application: guards (API key, CORS allowlist, body size), error
// rendering in each API's shape, health and metrics, and the API routes
// (OpenAI, Anthropic, WebSocket, web page) mounted from their own files.
import { type AnyElysia, Elysia, ValidationError } from "elysia";
import { ApiError, apiFlavor, badRequest, errorBody } from "./errors";
import type { Logger } from "./log";
import type { ServerMetrics } from "./metrics";
import type { EngineSupervisor } from "../engine/supervisor";
import type { ModelSession } from "./model-session";
import { ReplicaRouter } from "./replicas";

export interface ServerOptions {
  /** Required on every endpoint but /health when set (Bearer, x-api-key or ?api_key=). */
  apiKey: string | null;
  /** Origins allowed to call from a browser; the server's own origin always is. "*" allows any. */
  corsOrigins: string[];
  bodyLimitBytes: number;
  /** Reject unknown model names with 404 instead of answering with the loaded model. */
  strictModelNames: boolean;
  /** SSE comment interval while a stream waits for its first token. */
  keepAliveMs: number;
  /** Threads that build prompts (template, tokenizing); null: one per core the engine leaves, 1 to 4; 0: none (measurements only). */
  promptWorkers: number | null;
}

export const DEFAULT_SERVER_OPTIONS: ServerOptions = {
  apiKey: null,
  corsOrigins: [],
  bodyLimitBytes: 8 * 1024 * 1024,
  strictModelNames: false,
  keepAliveMs: 10_000,
  promptWorkers: null,
};

/** What route modules get: the model, the options, logs and metrics. */
export interface AppContext {
  session: ModelSession;
  options: ServerOptions;
  log: Logger;
  metrics: ServerMetrics;
  /** The model a request names: the loaded one, or 404 in strict mode. */
  resolveModel(requested: unknown): string;
}

export type RoutePlugin = (ctx: AppContext) => AnyElysia;

function presentedKey(request: Request, url: URL): string | null {
  const auth = request.headers.get("authorization");
  if (auth?.toLowerCase().startsWith("bearer ")) return auth.slice(7).trim();
  return request.headers.get("x-api-key") ?? url.searchParams.get("api_key");
}

function timingSafeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  if (x.length !== y.length) return false;
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= (x[i] as number) ^ (y[i] as number);
  return diff === 0;
}

/** Is this browser origin allowed? Same-origin (the page we serve) always is. */
function originAllowed(origin: string, host: string | null, allow: readonly string[]): boolean {
  if (allow.includes("*") || allow.includes(origin)) return true;
  try {
    return host !== null && new URL(origin).host === host;
  } catch {
    return false;
  }
}

function validationMessage(error: ValidationError): { message: string; param: string | null } {
  const first = error.all[0] as { path?: string; summary?: string; message?: string } | undefined;
  const param = first?.path ? first.path.replace(/^\//, "").replace(/\//g, ".") : null;
  const what = first?.summary ?? first?.message ?? "invalid value";
  return { message: param ? `${param}: ${what}` : `invalid request body: ${what}`, param };
}

export function createApp(ctx: AppContext, routes: RoutePlugin[] = []) {
  const { options, log, metrics } = ctx;
  const started = new WeakMap<Request, number>();

  const app = new Elysia()
    .onRequest(({ request, set }) => {
      started.set(request, performance.now());
      const url = new URL(request.url);
      const origin = request.headers.get("origin");
      if (origin) {
        if (!originAllowed(origin, request.headers.get("host"), options.corsOrigins)) {
          set.status = 403;
          return errorBody(
            new ApiError(403, "permission", `origin ${origin} is not allowed (see corsOrigins)`),
            url.pathname,
          );
        }
        set.headers["access-control-allow-origin"] = origin;
        set.headers.vary = "Origin";
        if (request.method === "OPTIONS") {
          set.status = 204;
          set.headers["access-control-allow-methods"] = "GET, POST, OPTIONS";
          set.headers["access-control-allow-headers"] =
            request.headers.get("access-control-request-headers") ?? "authorization, content-type, x-api-key";
          set.headers["access-control-max-age"] = "600";
          return "";
        }
      }
      if (options.apiKey && url.pathname !== "/health") {
        const key = presentedKey(request, url);
        if (!key || !timingSafeEqual(key, options.apiKey)) {
          set.status = 401;
          return errorBody(new ApiError(401, "authentication", "invalid or missing API key"), url.pathname);
        }
      }
      const length = Number(request.headers.get("content-length") ?? 0);
      if (length > options.bodyLimitBytes) {
        set.status = 413;
        return errorBody(
          new ApiError(
            413,
            "request_too_large",
            `request body of ${length} bytes exceeds the ${options.bodyLimitBytes} byte limit`,
          ),
          url.pathname,
        );
      }
    })
    .onError(({ code, error, request, set }) => {
      const path = new URL(request.url).pathname;
      let apiError: ApiError;
      if (error instanceof ApiError) apiError = error;
      else if (code === "VALIDATION" && error instanceof ValidationError) {
        const { message, param } = validationMessage(error);
        apiError = badRequest(message, param);
      } else if (code === "PARSE") apiError = badRequest("the request body is not valid JSON");
      else if (code === "NOT_FOUND")
        apiError = new ApiError(404, "not_found", `no route for ${request.method} ${path}`);
      else {
        log.error("unhandled error", { path, error: (error as Error)?.stack ?? String(error) });
        apiError = new ApiError(500, "api_error", "internal server error");
      }
      set.status = apiError.status;
      if (apiError.retryAfterSeconds !== undefined) set.headers["retry-after"] = String(apiError.retryAfterSeconds);
      set.headers["content-type"] = "application/json";
      return errorBody(apiError, path);
    })
    .onAfterResponse(({ request, set }) => {
      const path = new URL(request.url).pathname;
      const status = typeof set.status === "number" ? set.status : 200;
      const ms = performance.now() - (started.get(request) ?? performance.now());
      metrics.requests.inc({ endpoint: routeLabel(path), status: String(status) });
      log.info("request", { method: request.method, path, status, ms: Math.round(ms * 10) / 10, api: apiFlavor(path) });
    })
    .get("/health", async ({ set }) => {
      const engine = ctx.session.engine;
      const info = engine.info;
      if (engine.state !== "ready" || !info) {
        set.status = 503;
        set.headers["retry-after"] = "2";
        return {
          status: engine.state === "failed" ? "failed" : "loading",
          engine: engine.state,
          error: engine.lastError,
        };
      }
      const replicas = engine instanceof ReplicaRouter ? { replicas: engine.status() } : {};
      return {
        status: "ok",
        model: ctx.session.modelId,
        contextLength: info.contextLength,
        device: info.device,
        ...replicas,
      };
    })
    .get("/metrics", async ({ set }) => {
      await refreshEngineGauges(ctx);
      set.headers["content-type"] = "text/plain; version=0.0.4; charset=utf-8";
      return metrics.render();
    });
  for (const plugin of routes) app.use(plugin(ctx));
  return app;
}

const KNOWN_ROUTES = [
  "/v1/chat/completions",
  "/v1/completions",
  "/v1/models",
  "/v1/messages/count_tokens",
  "/v1/messages",
  "/v1/ws",
  "/health",
  "/metrics",
];

/** A bounded label set for the requests counter (no per-URL cardinality). */
function routeLabel(path: string): string {
  if (path === "/") return "/";
  return KNOWN_ROUTES.find((r) => path === r || path.startsWith(`${r}/`)) ?? "other";
}

async function refreshEngineGauges(ctx: AppContext): Promise<void> {
  const { metrics, session } = ctx;
  const engine = session.engine;
  metrics.engineUp.set(engine.state === "ready" ? 1 : 0);
  metrics.streamsOpen.set(engine.activeStreams);
  metrics.serverRssBytes.set(process.memoryUsage.rss());
  if (engine instanceof ReplicaRouter) await refreshReplicaGauges(metrics, engine);
  const restarts = engine.restarts - metrics.engineRestarts.get();
  if (restarts > 0) metrics.engineRestarts.inc({}, restarts);
  if (engine.state !== "ready") return;
  try {
    const s = await engine.stats(2000);
    metrics.queueDepth.set(s.waiting);
    metrics.activeSequences.set(s.running);
    metrics.prefilling.set(s.prefilling);
    metrics.kvCacheBytes.set(s.kvCacheBytes);
    metrics.kvBudgetBytes.set(s.kvBudgetBytes);
    metrics.prefixCacheBytes.set(s.prefixCache.bytes);
    metrics.kvReservedBytes.set(s.kvReservedBytes);
    metrics.outOfMemoryFailures.set(s.outOfMemory.failures);
    metrics.outOfMemoryRequeued.set(s.outOfMemory.requeued);
    metrics.prefixDiskBytes.set(s.prefixDisk?.bytes ?? 0);
    metrics.prefixDiskFiles.set(s.prefixDisk?.files ?? 0);
    metrics.prefixDiskPendingBytes.set(s.prefixDisk?.pendingBytes ?? 0);
    metrics.prefixDiskSkippedWrites.set(s.prefixDisk?.skippedWrites ?? 0);
    metrics.mlxActiveBytes.set(s.memory.activeBytes);
    metrics.mlxPeakBytes.set(s.memory.peakBytes);
    metrics.mlxCacheBytes.set(s.memory.cacheBytes);
    if (s.process) {
      metrics.mlxLiveHandles.set(s.process.liveHandles);
      metrics.engineRssBytes.set(s.process.rssBytes);
    }
  } catch {
    // The engine is restarting: keep the last values.
  }
}

/** Per-replica gauges (data parallelism). */
async function refreshReplicaGauges(metrics: ServerMetrics, router: ReplicaRouter): Promise<void> {
  const status = router.status();
  await Promise.all(
    status.map(async (r) => {
      const replica = { replica: String(r.replica) };
      metrics.replicaUp.set(r.state === "ready" ? 1 : 0, replica);
      metrics.replicaStreams.set(r.activeStreams, replica);
      metrics.replicaRestarts.set(r.restarts, replica);
      metrics.replicaRouted.set(r.routedByPrefix, { ...replica, by: "prefix" });
      metrics.replicaRouted.set(r.routedByLoad, { ...replica, by: "load" });
      if (r.state !== "ready") return;
      try {
        const s = await (router.replicas[r.replica] as EngineSupervisor).stats(2000);
        metrics.replicaRunning.set(s.running, replica);
        metrics.replicaWaiting.set(s.waiting, replica);
        metrics.replicaKvCacheBytes.set(s.kvCacheBytes, replica);
        metrics.replicaPrefixCacheBytes.set(s.prefixCache.bytes, replica);
      } catch {
        // restarting: keep the last values
      }
    }),
  );
}

/** The model-name rule shared by every API. */
export function modelResolver(session: ModelSession, strict: boolean): (requested: unknown) => string {
  return (requested) => {
    if (requested === undefined || requested === null || requested === "" || requested === session.modelId)
      return session.modelId;
    if (typeof requested !== "string") throw badRequest("model must be a string", "model");
    if (strict)
      throw new ApiError(
        404,
        "not_found",
        `model "${requested}" is not served here; this server serves "${session.modelId}"`,
        "model",
      );
    return session.modelId;
  };
}
