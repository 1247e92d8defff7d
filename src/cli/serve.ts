// pensieve serve: the HTTP server on the configured model. Configuration comes
// from the file, then PENSIEVE_* variables, then flags (src/config).
import { readFileSync } from "node:fs";
import { loadConfig } from "../config";
import type { GroupHost } from "../engine/group-launch";
import { resolveLocalModel } from "../hub/resolve";
import { createLogger } from "../server/log";
import { gpuCount, resolveReplicas } from "../server/replicas";
import { startServer } from "../server/server";

const BACKENDS = ["ring", "nccl", "mpi", "jaccl", "any"] as const;
type Backend = (typeof BACKENDS)[number];

export interface ParallelFlags {
  /** Ranks of one tensor-parallel engine (1: off). */
  tensorParallel: number;
  /** Their MLX distributed backend (default: nccl on a GPU, ring on the CPU). */
  distributedBackend: Backend | null;
  /** Engine replicas behind the router, or "auto" (one per GPU). */
  replicas: string;
  /** mlx.launch's host file: the machines of a tensor-parallel group, rank order (rank 0 is this one). */
  hosts: string | null;
}

/** Reads an mlx.launch host file: [{"ssh": "host", "ips": ["10.0.0.2"]}, ...]; the first entry is this machine. */
export function readHostfile(path: string): GroupHost[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new Error(`--hosts ${path}: ${(e as Error).message}`);
  }
  if (!Array.isArray(parsed) || parsed.length < 2)
    throw new Error(`--hosts ${path}: expected a list of 2 or more hosts`);
  return parsed.map((h, i) => {
    const host = h as Partial<GroupHost>;
    if (typeof host.ssh !== "string" || !Array.isArray(host.ips) || host.ips.some((ip) => typeof ip !== "string")) {
      throw new Error(`--hosts ${path}: host ${i} needs "ssh" (a string) and "ips" (a list of addresses)`);
    }
    if (
      host.command !== undefined &&
      !(Array.isArray(host.command) && host.command.every((c) => typeof c === "string"))
    ) {
      throw new Error(`--hosts ${path}: host ${i}: "command" must be a list of strings`);
    }
    return host as GroupHost;
  });
}

/**
 * Takes the parallelism flags out of argv: --tensor-parallel N,
 * --distributed-backend ring|nccl|mpi|any, --replicas N|auto (also --flag=value).
 */
export function takeParallelFlags(argv: string[]): { flags: ParallelFlags; rest: string[] } {
  const flags: ParallelFlags = { tensorParallel: 1, distributedBackend: null, replicas: "1", hosts: null };
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const m = /^--(tensor-parallel|distributed-backend|replicas|hosts)(?:=(.*))?$/.exec(arg);
    if (!m) {
      rest.push(arg);
      continue;
    }
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new Error(`serve: --${m[1]} needs a value`);
    if (m[1] === "tensor-parallel") {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1 || n > 64)
        throw new Error(`serve: --tensor-parallel: expected 1-64, got ${value}`);
      flags.tensorParallel = n;
    } else if (m[1] === "distributed-backend") {
      if (!(BACKENDS as readonly string[]).includes(value)) {
        throw new Error(`serve: --distributed-backend: expected one of ${BACKENDS.join(", ")}, got ${value}`);
      }
      flags.distributedBackend = value as Backend;
    } else if (m[1] === "hosts") {
      flags.hosts = value;
    } else {
      resolveReplicas(value);
      flags.replicas = value;
    }
  }
  return { flags, rest };
}

/** NCCL where the engines run on NVIDIA GPUs, else the ring backend (TCP). */
function defaultBackend(backend: string): Backend {
  if (backend === "cuda") return "nccl";
  if (backend === "auto" && process.platform === "linux" && gpuCount() > 0) return "nccl";
  return "ring";
}

export async function runServe(args: string[]): Promise<number> {
  const { flags: parallel, rest: argv } = takeParallelFlags(args);
  const { config, flags, file } = loadConfig({ argv });
  const hosts = parallel.hosts ? readHostfile(parallel.hosts) : null;
  if (hosts && parallel.tensorParallel > 1 && parallel.tensorParallel !== hosts.length) {
    throw new Error(`serve: --tensor-parallel ${parallel.tensorParallel} but --hosts lists ${hosts.length} machines`);
  }
  const ranks = hosts?.length ?? parallel.tensorParallel;
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
      tensorParallel:
        ranks > 1
          ? {
              size: ranks,
              // Across machines: TCP (ring) unless told otherwise; NCCL across hosts also works with --distributed-backend nccl.
              backend: parallel.distributedBackend ?? (hosts ? "ring" : defaultBackend(config.backend)),
              hosts,
            }
          : null,
    },
    replicas: resolveReplicas(parallel.replicas),
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
