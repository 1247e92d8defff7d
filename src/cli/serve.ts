// pensieve serve: the HTTP server on the configured model. Configuration comes
// from the file, then PENSIEVE_* variables, then flags (src/config).
import { loadConfig } from "../config";
import { resolveLocalModel } from "../hub/resolve";
import { createLogger } from "../server/log";
import { startServer } from "../server/server";

export async function runServe(argv: string[]): Promise<number> {
  const { config, flags, file } = loadConfig({ argv });
  if (flags.unknown.length) throw new Error(`serve: unknown option ${flags.unknown[0]} (see \`pensieve help\`)`);
  const log = createLogger({ level: config.logLevel, format: config.logFormat });
  const modelPath = resolveLocalModel(config.model);
  const draftModelPath = config.draftModel === null ? null : resolveLocalModel(config.draftModel);
  log.info("starting", { model: config.model, path: modelPath, config: file ?? "defaults, environment and flags" });
  await startServer({
    host: config.host,
    port: config.port,
    modelPath,
    engine: {
      device: config.backend === "cpu" ? "cpu" : undefined,
      maxContext: config.maxContext,
      kvBudgetBytes: config.kvBudgetBytes,
      maxConcurrent: config.maxConcurrent,
      queueSize: config.queueSize,
      prefixCacheBytes: config.prefixCacheBytes,
      prefixDiskBytes: config.prefixDiskBytes,
      kvBits: config.kvBits,
      speculative: config.speculative,
      draftModel: draftModelPath,
      threads: config.threads,
    },
    server: {
      apiKey: config.apiKey,
      corsOrigins: config.corsOrigins,
      bodyLimitBytes: config.bodyLimitBytes,
      strictModelNames: config.strictModelNames,
    },
    log,
    waitForModel: false,
    handleSignals: true,
  });
  // Serve until a signal stops the process.
  await new Promise(() => {});
  return 0;
}
