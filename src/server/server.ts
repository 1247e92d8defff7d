// Starts Pensieve: the engine child process (supervised), the tokenizer, and
// the HTTP server on 127.0.0.1:7777 by default. SIGTERM/SIGINT shut down
// gracefully: stop accepting, let streams finish (bounded), stop the engine.
import type { EngineConfig, FromEngine } from "../engine/protocol";
import { type EngineHandle, EngineSupervisor } from "../engine/supervisor";
import { selfCommand } from "../paths";
import {
  type AppContext,
  createApp,
  DEFAULT_SERVER_OPTIONS,
  modelResolver,
  type RoutePlugin,
  type ServerOptions,
} from "./app";
import { createLogger, type Logger } from "./log";
import { ServerMetrics } from "./metrics";
import { ModelSession } from "./model-session";
import { PromptWorkers } from "./prompt-workers";
import { ReplicaRouter } from "./replicas";
import { serverRoutes } from "./routes";

export interface StartOptions {
  host?: string;
  port?: number;
  /** Resolved model folder or .gguf file. */
  modelPath: string;
  /** The id clients see; default from the file name. */
  modelId?: string;
  engine?: Omit<EngineConfig, "model">;
  server?: Partial<ServerOptions>;
  log?: Logger;
  /** Wait for the model before resolving (default true); false serves /health 503 while loading. */
  waitForModel?: boolean;
  routes?: RoutePlugin[];
  /** Install SIGTERM/SIGINT handlers (default false; the CLI turns it on). */
  handleSignals?: boolean;
  /** Data parallelism: engine processes behind one router (src/server/replicas.ts); default 1. */
  replicas?: number;
}

export interface RunningServer {
  url: string;
  port: number;
  session: ModelSession;
  engine: EngineHandle;
  ready: Promise<unknown>;
  /** Graceful stop: new requests refused, streams get `graceMs` to finish, then the engine stops. */
  stop(graceMs?: number): Promise<void>;
}

export async function startServer(opts: StartOptions): Promise<RunningServer> {
  const log = opts.log ?? createLogger();
  const metrics = new ServerMetrics();
  const options: ServerOptions = { ...DEFAULT_SERVER_OPTIONS, ...opts.server };
  const tokenizer = ModelSession.loadTokenizer(opts.modelPath);
  const engineOptions = {
    engine: { ...opts.engine, model: opts.modelPath },
    command: [...selfCommand(), "engine"],
    // A request the engine failed (an MLX error, out of memory): the engine goes on; the reason is logged.
    onMessage: (m: FromEngine) => {
      if (m.type === "finished" && m.reason === "error") log.error("engine request failed", { error: m.message });
    },
  };
  const replicas = opts.replicas ?? 1;
  const engine: EngineHandle =
    replicas > 1
      ? new ReplicaRouter({
          ...engineOptions,
          replicas,
          // One GPU per replica (a tensor-parallel replica: one per rank), unless its ranks span machines.
          pinGpus: opts.engine?.device !== "cpu" && !opts.engine?.tensorParallel?.hosts,
          onLifecycle: (e) => log.info("engine", { replica: e.replica, state: e.state, detail: e.detail }),
        })
      : new EngineSupervisor({
          ...engineOptions,
          onLifecycle: (e) => log.info("engine", { state: e.state, detail: e.detail }),
        });
  // promptWorkers 0 builds prompts on the event loop (only to measure what the workers save).
  const prompts =
    options.promptWorkers === 0
      ? null
      : new PromptWorkers(
          opts.modelPath,
          () => ({
            contextLength: engine.info?.contextLength ?? null,
            vocabSize: session.vocabSize,
            modelId: session.modelId,
          }),
          options.promptWorkers ?? undefined,
        );
  const session = new ModelSession(
    tokenizer,
    engine,
    opts.modelId ?? ModelSession.defaultModelId(opts.modelPath),
    metrics,
    prompts,
  );
  const ctx: AppContext = {
    session,
    options,
    log,
    metrics,
    resolveModel: modelResolver(session, options.strictModelNames),
  };
  const app = createApp(ctx, opts.routes ?? serverRoutes());
  const ready = engine.start();
  ready.catch((e: Error) => log.error("the model failed to load", { model: opts.modelPath, error: e.message }));
  if (opts.waitForModel !== false) await ready;

  app.listen({
    hostname: opts.host ?? "127.0.0.1",
    port: opts.port ?? 7777,
    // A second process must not silently share the port.
    reusePort: false,
    // Long generations: no idle timeout cuts a live stream (keep-alives also flow).
    idleTimeout: 0,
    maxRequestBodySize: options.bodyLimitBytes + 1024,
  });
  const server = app.server;
  if (!server) throw new Error("the HTTP server did not start");
  const url = `http://${server.hostname}:${server.port}`;
  log.info("listening", { url, model: session.modelId });

  let stopping: Promise<void> | null = null;
  const stop = (graceMs = 10_000) => {
    stopping ??= (async () => {
      log.info("shutting down", { openStreams: engine.activeStreams });
      // Stop accepting; open streams get graceMs to finish, then are cut.
      const drained = server.stop(false).then(() => true);
      const timeout = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), graceMs));
      if (!(await Promise.race([drained, timeout]))) await server.stop(true);
      await engine.stop();
      await session.prompts.close();
      log.info("stopped");
    })();
    return stopping;
  };
  if (opts.handleSignals) {
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      process.once(signal, () => {
        stop().then(() => process.exit(0));
      });
    }
  }
  return { url, port: server.port as number, session, engine, ready, stop };
}
