// A real Pensieve server on a free loopback port, for tests: the engine child
// process, a real model, real HTTP.
import type { EngineConfig } from "../../src/engine/protocol";
import type { ServerOptions } from "../../src/server/app";
import { silentLogger } from "../../src/server/log";
import { type RunningServer, startServer } from "../../src/server/server";
import { EMBEDDED_MODEL } from "./models";

export interface TestServerOptions {
  /** Model folder or .gguf (default: the embedded SmolLM2). */
  model?: string;
  modelId?: string;
  server?: Partial<ServerOptions>;
  engine?: Omit<EngineConfig, "model">;
  waitForModel?: boolean;
}

export async function startTestServer(options: TestServerOptions = {}): Promise<RunningServer> {
  return startServer({
    host: "127.0.0.1",
    port: 0,
    modelPath: options.model ?? EMBEDDED_MODEL,
    modelId: options.modelId,
    engine: { device: "cpu", ...options.engine },
    server: options.server,
    log: process.env.PENSIEVE_TEST_LOGS ? undefined : silentLogger,
    waitForModel: options.waitForModel,
  });
}
