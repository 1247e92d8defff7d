// pensieve serve: the HTTP server on the configured model.
import { resolveLocalModel } from "../models/resolve";
import { createLogger } from "../server/log";
import { startServer } from "../server/server";
import { numberFlag, parseArgs, stringFlag } from "./args";

export async function runServe(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  const log = createLogger({ level: "info", format: process.stderr.isTTY ? "pretty" : "json" });
  const modelPath = resolveLocalModel(stringFlag(args, "model"));
  const cors = stringFlag(args, "cors-origin");
  const device = stringFlag(args, "device");
  await startServer({
    host: stringFlag(args, "host") ?? "127.0.0.1",
    port: numberFlag(args, "port") ?? 7777,
    modelPath,
    engine: {
      device: device === "cpu" || device === "gpu" ? device : undefined,
      maxContext: numberFlag(args, "max-context") ?? null,
      maxConcurrent: numberFlag(args, "max-concurrent"),
      queueSize: numberFlag(args, "queue-size"),
    },
    server: {
      apiKey: stringFlag(args, "api-key") ?? process.env.PENSIEVE_API_KEY ?? null,
      corsOrigins: cors ? cors.split(",") : [],
    },
    log,
    waitForModel: false,
    handleSignals: true,
  });
  // Serve until a signal stops the process.
  await new Promise(() => {});
  return 0;
}
